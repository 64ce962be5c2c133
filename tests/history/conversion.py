"""The online conversion scenario: a database from before migration 0026 with `rows` notifications,
the service (gunicorn + worker) running and under load (triggers stored, inboxes read,
notifications marked read), and `flask history partition` converting the table meanwhile.

Run by tests/history/test_convert.py on a small table, and at full size by hand:

    python -m tests.history.conversion --rows 10000000

Every request must succeed, every notification be there once (the seeded ones and every
accepted trigger's), every read mark survive, and the unread counters equal a recount.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import psycopg2
import redis
import requests

from app.migrate import migrate, migration_files, release
from testkit.api import TRIGGER_PATH, trigger_body
from testkit.database import Database, service_env
from testkit.identity import SERVICE, bearer
from testkit.processes import ProcessGroup, REPO_ROOT

LAST_BEFORE = "0025_notification_dependents"
SEED_STATEMENT_ROWS = 500_000


def user_ids(count):
    return [uuid.UUID(hashlib.md5(f"user-{i}".encode()).hexdigest()) for i in range(count)]


def migrate_before_partitioning(url):
    """Apply the migrations up to 0025, as a release before 0026 had."""
    directory = tempfile.mkdtemp(prefix="migrations-before-0026-")
    try:
        for version, path in migration_files():
            if version <= LAST_BEFORE:
                shutil.copy(path, directory)
        migrate(url, directory=directory, echo=lambda *_: None)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def seed(url, rows, users, echo):
    """`rows` chat notifications of `users` users, oldest first, a third of them read."""
    conn = psycopg2.connect(url)
    started = time.monotonic()
    try:
        for start in range(0, rows, SEED_STATEMENT_ROWS):
            end = min(rows, start + SEED_STATEMENT_ROWS)
            with conn.cursor() as cur:
                cur.execute("INSERT INTO notifications (id, user_id, type, event, title, content, created_at, read_at)"
                            " SELECT gen_random_uuid(), md5('user-' || (g %% %s))::uuid, 'chat', 'message_received',"
                            " 'seeded ' || g, '', now() - make_interval(secs => %s - g),"
                            " CASE WHEN g %% 3 = 0 THEN now() END FROM generate_series(%s, %s) g",
                            (users, rows, start, end - 1))
            conn.commit()
            if end % (SEED_STATEMENT_ROWS * 4) == 0 or end == rows:
                echo(f"seeded {end} of {rows} ({end / (time.monotonic() - started):.0f}/s)")
        with conn.cursor() as cur:     # an email sent for every fifth, with its attempt
            cur.execute("INSERT INTO deliveries (id, notification_id, user_id, channel, status, attempts, sent_at)"
                        " SELECT gen_random_uuid(), id, user_id, 'email', 'sent', 1, created_at FROM notifications"
                        " WHERE seq % 5 = 0")
            cur.execute("INSERT INTO delivery_attempts (delivery_id, attempt, outcome, started_at)"
                        " SELECT id, 1, 'sent', sent_at FROM deliveries")
        conn.commit()
        echo(f"seeded {rows // 5} deliveries and attempts")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("VACUUM ANALYZE notifications, deliveries, delivery_attempts")
    finally:
        conn.close()


class Load:
    """Threads doing what users and services do, each request's status and time recorded."""

    def __init__(self, base, users, readers=3):
        self.base, self.users, self.readers = base, users, readers
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.errors, self.times, self.marked, self.accepted = [], [], [], 0
        self.threads = [threading.Thread(target=self._triggers, daemon=True)]
        self.threads += [threading.Thread(target=self._reader, args=(i,), daemon=True) for i in range(readers)]

    def start(self):
        for thread in self.threads:
            thread.start()
        return self

    def finish(self):
        self.stop.set()
        for thread in self.threads:
            thread.join(30)

    def _call(self, session, method, path, expect, **kwargs):
        started = time.perf_counter()
        try:
            response = session.request(method, self.base + path, timeout=30, **kwargs)
        except requests.RequestException as exc:
            with self.lock:
                self.errors.append(f"{method} {path}: {exc}")
            return None
        with self.lock:
            self.times.append(time.perf_counter() - started)
            if response.status_code != expect:
                self.errors.append(f"{method} {path}: {response.status_code} {response.text[:200]}")
                return None
        return response

    def _triggers(self):
        session = requests.Session()
        rng = random.Random(1)
        while not self.stop.is_set():
            body = trigger_body(rng.sample(self.users, 5), title="during the conversion")
            if self._call(session, "POST", TRIGGER_PATH, 202, json=body, headers=SERVICE) is not None:
                with self.lock:
                    self.accepted += 1
            self.stop.wait(0.02)

    def _reader(self, index):
        session = requests.Session()
        rng = random.Random(100 + index)
        while not self.stop.is_set():
            user = rng.choice(self.users)
            headers = bearer(user, exp_in=7200)
            page = self._call(session, "GET", "/v1/notifications?limit=20&status=unread", 200, headers=headers)
            items = page.json()["items"] if page is not None else []
            if items:
                nid = rng.choice(items)["id"]
                if self._call(session, "PATCH", f"/v1/notifications/{nid}/read", 200, json={},
                              headers=headers) is not None:
                    with self.lock:
                        self.marked.append(nid)


def percentile(values, share):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else None


def scalar(conn, sql, *args):
    with conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchone()[0]


_COUNTERS_OFF = ("SELECT count(*) FROM (SELECT user_id, customer_id, type, count(*) AS n FROM notifications"
                 " WHERE deleted_at IS NULL AND in_app AND read_at IS NULL GROUP BY 1, 2, 3) t"
                 " FULL JOIN (SELECT * FROM notification_unread_counts WHERE unread > 0) c"
                 " ON c.user_id = t.user_id AND c.customer_id IS NOT DISTINCT FROM t.customer_id AND c.type = t.type"
                 " WHERE t.n IS DISTINCT FROM c.unread")


def run(server_url, redis_url, rows, log_dir, users=2000, span=None, batch=20_000, echo=print):
    """The scenario; returns (figures, problems)."""
    span = span or max(1000, rows // 5)
    problems = []
    with Database(server_url, prefix="notif_convert", migrated=False) as database:
        migrate_before_partitioning(database.url)
        seed(database.url, rows, users, echo)
        release(database.url, database.app_url, echo=lambda *_: None, partition_rows=span)   # 0026: left as it is
        watch = psycopg2.connect(database.url)
        watch.autocommit = True
        try:
            if scalar(watch, "SELECT EXISTS (SELECT 1 FROM pg_partitioned_table"
                             " WHERE partrelid = 'notifications'::regclass)"):
                problems.append("0026 converted a table that had rows (it must leave it to the online command)")
            # the shipped defaults, rate limits on (the test services' own default is off)
            env = service_env(database.url, redis_url, HISTORY_PARTITION_ROWS=str(span), RATE_LIMITS_ENABLED="true")
            redis.Redis.from_url(redis_url).flushall()
            with ProcessGroup(log_dir) as group:
                group.start_worker(env)
                web = group.start_web(env, workers=1)
                load = Load(web.url, user_ids(users)).start()
                time.sleep(1.0)
                started = time.monotonic()
                converted = subprocess.run(
                    [sys.executable, "-m", "flask", "--app", "wsgi", "history", "partition", "--batch-size", str(batch)],
                    cwd=REPO_ROOT, env=ProcessGroup.environment(env), capture_output=True, text=True, timeout=7200)
                seconds = time.monotonic() - started
                time.sleep(1.0)
                load.finish()
                echo(converted.stdout.strip())
                if converted.returncode != 0:
                    problems.append(f"flask history partition exited {converted.returncode}: {converted.stderr[-2000:]}")
                deadline = time.monotonic() + 120
                while scalar(watch, "SELECT count(*) FROM triggers WHERE status <> 'dispatched'") and \
                        time.monotonic() < deadline:
                    time.sleep(0.2)
            expected = rows + scalar(watch, "SELECT coalesce(sum(users_total), 0) FROM triggers")
            figures = {
                "rate_limits": "on (shipped)", "rows": rows, "users": users, "span": span, "conversion_seconds": round(seconds, 1),
                "swaps": [line for line in converted.stdout.splitlines() if "swapped in" in line],
                "requests": len(load.times), "errors": len(load.errors), "triggers_accepted": load.accepted,
                "marked_read": len(load.marked),
                "p50_ms": round(1000 * percentile(load.times, 0.5), 1) if load.times else None,
                "p99_ms": round(1000 * percentile(load.times, 0.99), 1) if load.times else None,
                "max_ms": round(1000 * max(load.times), 1) if load.times else None,
                "partitioned": scalar(watch, "SELECT count(*) FROM history_tables() WHERE history_is_partitioned(tbl)"),
                "stored": scalar(watch, "SELECT count(*) FROM notifications"), "expected": expected,
                "distinct_ids": scalar(watch, "SELECT count(DISTINCT id) FROM notifications"),
                "pending_triggers": scalar(watch, "SELECT count(*) FROM triggers WHERE status <> 'dispatched'"),
                "trigger_rows_twice": scalar(watch, "SELECT count(*) - count(DISTINCT (trigger_id, user_id))"
                                                    " FROM notifications WHERE trigger_id IS NOT NULL"),
                "read_marks_lost": scalar(watch, "SELECT count(*) FROM notifications WHERE id = ANY(%s::uuid[])"
                                                 " AND read_at IS NULL", load.marked),
                "counters_off": scalar(watch, _COUNTERS_OFF),
                "old_tables_left": scalar(watch, "SELECT count(*) FROM history_tables()"
                                                 " WHERE to_regclass(tbl || '_unpartitioned') IS NOT NULL"),
                "seeded_deliveries": rows // 5,
                "sent_deliveries": scalar(watch, "SELECT count(*) FROM deliveries WHERE status = 'sent'"),
                "sent_attempts": scalar(watch, "SELECT count(*) FROM delivery_attempts WHERE outcome = 'sent'"),
                "deliveries_twice": scalar(watch, "SELECT count(*) - count(DISTINCT (notification_id, channel))"
                                                  " FROM deliveries"),
                "triggered_without_delivery": scalar(watch, "SELECT count(*) FROM notifications n WHERE"
                                                            " n.trigger_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM"
                                                            " deliveries d WHERE d.notification_id = n.id)"),
                "orphans": scalar(watch, "SELECT (SELECT count(*) FROM deliveries d WHERE NOT EXISTS (SELECT 1"
                                         " FROM notifications n WHERE n.id = d.notification_id)) + (SELECT count(*)"
                                         " FROM delivery_attempts a WHERE NOT EXISTS (SELECT 1 FROM deliveries d"
                                         " WHERE d.id = a.delivery_id))"),
            }
        finally:
            watch.close()
    problems += [f"request failed: {e}" for e in load.errors[:20]]
    for name, ok in (("all three tables partitioned", figures["partitioned"] == 3),
                     ("no trigger left pending", not figures["pending_triggers"]),
                     ("every seeded delivery and attempt kept",
                      figures["sent_deliveries"] == figures["sent_attempts"] == figures["seeded_deliveries"]),
                     ("no delivery twice, none missing, none orphaned", figures["deliveries_twice"] ==
                      figures["triggered_without_delivery"] == figures["orphans"] == 0),
                     ("every notification once", figures["stored"] == figures["expected"] == figures["distinct_ids"]),
                     ("no trigger's user stored twice", figures["trigger_rows_twice"] == 0),
                     ("every read mark kept", figures["read_marks_lost"] == 0),
                     ("counters equal a recount", figures["counters_off"] == 0),
                     ("old tables dropped", not figures["old_tables_left"]),
                     ("load ran", figures["triggers_accepted"] > 0 and figures["marked_read"] > 0)):
        if not ok:
            problems.append(f"{name}: {figures}")
    return figures, problems


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--span", type=int, help="values of seq per partition (default: rows / 5)")
    parser.add_argument("--batch", type=int, default=20_000)
    args = parser.parse_args()
    from devtools.services import postgres_url, redis_server
    url, stop = postgres_url()
    server = redis_server()
    log_dir = tempfile.mkdtemp(prefix="conversion-")
    try:
        figures, problems = run(url, server.url, args.rows, log_dir, args.users, args.span, args.batch)
    finally:
        server.stop()
        stop()
    print(figures)
    for problem in problems:
        print("PROBLEM:", problem)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
