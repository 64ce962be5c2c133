"""What every fault scenario shares: its Result, the Rig of services it starts, polling, the figures
of emails received.

A Rig starts real gunicorn (gevent) and RQ worker processes (testkit.processes) and a real SMTP
server (testkit.providers) against the database and Redis it is given (the test run's, or those
`python -m bench.faults` creates); scenarios read PostgreSQL directly through it.
"""
from __future__ import annotations

import collections
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import psycopg2
import psycopg2.extras
import requests

from testkit.api import TRIGGER_PATH, trigger_body
from testkit.config_files import channel_config, queue_yaml
from testkit.identity import SERVICE, bearer as user_headers
from testkit.processes import ProcessGroup
from testkit.sse import ResumingStream
from testkit.providers import FakeSMTP, SMTPProcess

SENDER = "notifications@example.com"


@dataclass
class Result:
    name: str
    figures: dict = field(default_factory=dict)
    line: str = ""
    problems: list = field(default_factory=list)

    def check(self, ok, problem):
        if not ok:
            self.problems.append(problem)
        return ok

    @property
    def ok(self):
        return not self.problems


def bearer(user_id):
    """A user's headers with a token that outlasts the longest scenario."""
    return user_headers(user_id, exp_in=7200)


def wait_for(predicate, timeout, interval=0.2):
    """Poll until predicate() is truthy; return (value, seconds waited). value is falsy on timeout."""
    started = time.monotonic()
    value = None
    while time.monotonic() - started < timeout:
        value = predicate()
        if value:
            break
        time.sleep(interval)
    return value, time.monotonic() - started


def wait_while_progressing(predicate, progress, stall=30.0, interval=0.5):
    """Poll until predicate() is truthy, for as long as progress() keeps changing (at most `stall`
    seconds without a change): a large run is given the time its throughput needs, a stuck one
    fails as fast as a small one. Returns (value, seconds waited)."""
    started = last_change = time.monotonic()
    seen = progress()
    while True:
        value = predicate()
        if value or time.monotonic() - last_change > stall:
            return value, time.monotonic() - started
        time.sleep(interval)
        now = progress()
        if now != seen:
            seen, last_change = now, time.monotonic()


def resuming_streams(web, users):
    """One EventSource-like client per user (testkit.sse.ResumingStream), all kept reading by one
    thread: returns (clients, stop_reading)."""
    clients = [ResumingStream(web, headers=bearer(u), retry_delay=0.0) for u in users]
    stop = threading.Event()

    def pump():
        while not stop.is_set():
            for client in clients:
                client._pump()
            time.sleep(0.05)
    reader = threading.Thread(target=pump, daemon=True)
    reader.start()

    def stop_reading():
        stop.set()
        reader.join(10)
    return clients, stop_reading


# ------------------------------------------------------------------------------------ the rig


class Rig:
    """One scenario's services: config files, web and worker processes, the SMTP server, a DB watcher."""

    def __init__(self, base_env, redis_server, workdir):
        self.base_env = dict(base_env)
        self.redis = redis_server
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.group = ProcessGroup(str(self.dir))
        self.smtp = None
        self._db = None

    # -- configuration ------------------------------------------------------------------------
    def env(self, email=False, attempts=3, backoff=(1, 2), users_per_chunk=100, relay=(1, 1), start_smtp=True,
            smtp_process=False, **extra):
        channels = {"email": {"enabled": True}} if email else {}
        config = channel_config(self.dir, channels, attempts=attempts, backoff=backoff)
        queue_yaml(self.dir, base=config["QUEUE_CONFIG"],
                   relay={"interval_seconds": relay[0], "stale_after_seconds": relay[1]},
                   batch={"users_per_chunk": users_per_chunk, "max_user_ids": 10_000})
        env = dict(self.base_env, **config, **extra)
        if email:
            self.smtp = SMTPProcess() if smtp_process else FakeSMTP()
            if start_smtp:
                self.smtp.start()
            env.update(MAIL_SERVER="127.0.0.1", MAIL_PORT=str(self.smtp.port), MAIL_DEFAULT_SENDER=SENDER,
                       MAIL_TIMEOUT="5")
        return env

    # -- processes ----------------------------------------------------------------------------
    def web(self, env, **options):
        options.setdefault("workers", 1)
        return self.group.start_web(env, **options)

    def worker(self, env):
        return self.group.start_worker(env)

    def kill_workers(self, env, pool, keep_going, kill_every):
        """The crash loop: SIGKILL the workers of `pool` in turn, one every `kill_every` seconds, each
        replaced at once by a fresh one, for as long as keep_going(kills so far) holds; returns the
        times (time.time()) of the kills."""
        kill_times = []
        next_kill = time.monotonic() + kill_every
        while keep_going(len(kill_times)):
            time.sleep(max(0.0, next_kill - time.monotonic()))
            next_kill = time.monotonic() + kill_every
            slot = len(kill_times) % len(pool)
            kill_times.append(time.time())
            pool[slot].kill()
            self.group.started.remove(pool[slot])
            pool[slot] = self.worker(env)
        return kill_times

    # -- PostgreSQL -----------------------------------------------------------------------------
    @property
    def db(self):
        if self._db is None or self._db.closed:
            self._db = psycopg2.connect(self.base_env["DATABASE_URL"])
            self._db.autocommit = True
        return self._db

    def scalar(self, sql, *args):
        try:
            with self.db.cursor() as cur:
                cur.execute(sql, args)
                return cur.fetchone()[0]
        except psycopg2.OperationalError:
            self._db = None
            raise

    def rows(self, sql, *args):
        with self.db.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall()

    def users_with_email(self, count):
        users = [uuid.uuid4() for _ in range(count)]
        with self.db.cursor() as cur:
            psycopg2.extras.execute_values(cur, "INSERT INTO contacts (user_id, email) VALUES %s",
                                           [(str(u), f"u{i}-{u.hex[:8]}@example.com") for i, u in enumerate(users)],
                                           page_size=1000)
        return users

    def emails_sent(self):
        return self.scalar("SELECT count(*) FROM deliveries WHERE channel = 'email' AND status = 'sent'")

    def drain(self, done, started, timeout, pause=5.0, idle_seconds=10):
        """After a crash loop: wait for done() until `timeout` seconds after `started`; whenever no
        email delivery was marked sent and no email received for `pause` seconds, only the leases of
        killed sends are left, so fast-forward them. Returns how many leases were."""
        expired = 0
        while not done() and time.monotonic() - started < timeout:
            before = (self.emails_sent(), len(self.smtp.messages))
            time.sleep(pause)
            if (self.emails_sent(), len(self.smtp.messages)) == before:
                expired += self.expire_stuck_leases(idle_seconds=idle_seconds)
        return expired

    def expire_stuck_leases(self, idle_seconds=10):
        """Fast-forward the 120 s claim lease of deliveries whose worker died mid-send (no live job
        renews a lease; a send takes milliseconds): what the clock would do two minutes later."""
        with self.db.cursor() as cur:
            cur.execute("UPDATE deliveries SET locked_until = now() - interval '1 second'"
                        " WHERE status = 'sending' AND locked_until > now()"
                        " AND updated_at < now() - make_interval(secs => %s) RETURNING id", (idle_seconds,))
            return cur.rowcount

    def close(self):
        self.group.stop_all()
        if self.smtp is not None:
            self.smtp.stop()
        if self._db is not None:
            self._db.close()


def post_trigger(session, url, user_ids, title, content="", timeout=15, **headers):
    """A trigger over a `requests` session (or the module) to the server at `url`."""
    return session.post(url + TRIGGER_PATH, json=trigger_body(user_ids, title=title, content=content),
                        headers=dict(SERVICE, **headers), timeout=timeout)


def post_many(url, pairs, statuses, threads=8):
    """One trigger per (user, title) pair, from `threads` sessions at once; every answer's status
    (or exception name) counted in `statuses`."""
    def one(chunk):
        with requests.Session() as s:
            for user, title in chunk:
                try:
                    statuses[post_trigger(s, url, [user], title).status_code] += 1
                except requests.RequestException as exc:
                    statuses[type(exc).__name__] += 1
    with ThreadPoolExecutor(threads) as ex:
        list(ex.map(one, [pairs[j::threads] for j in range(threads)]))


def email_figures(smtp):
    """(messages, distinct Message-IDs, raw duplicates by Message-ID, duplicates by recipient+subject,
    Message-IDs that name more than one recipient+subject)."""
    ids, keys, by_id = [], [], collections.defaultdict(set)
    for m in list(smtp.messages):
        msg = m["message"]
        mid, key = msg["Message-ID"], (tuple(m["rcpt_tos"]), str(msg["Subject"]))
        ids.append(mid)
        keys.append(key)
        by_id[mid].add(key)
    ambiguous = sum(1 for v in by_id.values() if len(v) != 1)
    return len(ids), len(set(ids)), len(ids) - len(set(ids)), len(keys) - len(set(keys)), ambiguous, len(set(keys))
