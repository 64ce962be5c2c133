"""Fault scenarios against the real processes: prints figures, exits non-zero when anything is lost
or duplicated.

    python bench/faults.py <scenario> [--full] [--minutes M]
    scenarios: crash, redis, postgres, smtp, slow, shutdown, soak, all

Each scenario starts real gunicorn (gevent) and RQ worker processes (tests/processes.py), a real SMTP
server (aiosmtpd, tests/fake_providers.py), a private redis-server and a database of its own on the
PostgreSQL of DATABASE_URL (embedded when unset); the PostgreSQL scenario starts a private cluster
it can restart (devtools/postgres_server.py). tests/test_faults.py runs the short versions in CI by
calling the same functions with small numbers; `--full` runs the large ones.

Every scenario returns a Result: `figures` (numbers), `line` (the one-line summary) and
`problems` (empty when every guarantee held).
"""
from __future__ import annotations

import argparse
import collections
import os
import secrets
import signal
import socket
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for _p in (str(ROOT / "tests"), str(ROOT)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import psutil  # noqa: E402
import psycopg2  # noqa: E402
import psycopg2.extras  # noqa: E402
import requests  # noqa: E402
import yaml  # noqa: E402

from conftest import API_KEY, OTHER_API_KEY, JWT_SECRET, make_token  # noqa: E402
from fake_providers import FakeSMTP, SMTPProcess, channel_config  # noqa: E402
from processes import ProcessGroup, ResumingStream, RQWorker, WebServer  # noqa: E402

SERVICE = {"X-API-Key": API_KEY}
TRIGGER = "/v1/notifications/trigger"
SENDER = "notifications@example.com"
METRICS_TOKEN = "metrics-token-of-the-fault-bench-0123456789"   # the soak's greenlet count needs it
OPERATOR = {"Authorization": f"Bearer {METRICS_TOKEN}"}

SHORT = {"vanished": dict(), "crash": dict(n=300), "redis": dict(k=50, triggers=12), "postgres": dict(outage=5.0),
         "smtp": dict(n=40, outage=10.0), "slow": dict(pushes=1500), "shutdown": dict(users=600, streams=20)}
FULL = {"vanished": dict(peer_timeout=30.0, keepalive=15.0), "crash": dict(n=10_000), "redis": dict(k=1000, triggers=30), "postgres": dict(outage=20.0, users=50),
        "smtp": dict(n=500, outage=120.0), "slow": dict(pushes=5000), "shutdown": dict(users=10_000, streams=200)}


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
    return {"Authorization": f"Bearer {make_token(user_id, exp_in=7200)}"}


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
        queue = yaml.safe_load(Path(config["QUEUE_CONFIG"]).read_text())
        queue["relay"] = {"interval_seconds": relay[0], "stale_after_seconds": relay[1]}
        queue["batch"].update(users_per_chunk=users_per_chunk, max_user_ids=10_000)
        Path(config["QUEUE_CONFIG"]).write_text(yaml.safe_dump(queue))
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

    @staticmethod
    def kill(process, sig=signal.SIGKILL):
        """The whole process group, as a crashed machine would (RQ's scheduler child too)."""
        try:
            os.killpg(process.proc.pid, sig)
        except ProcessLookupError:
            pass
        process.proc.wait()

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
    body = {"type": "chat", "event": "message_received", "title": title, "content": content,
            "user_ids": [str(u) for u in user_ids]}
    return session.post(url + TRIGGER, json=body, headers=dict(SERVICE, **headers), timeout=timeout)


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


# ------------------------------------------------------------------------------------ 1. crash


def crash(rig, n=300, kill_every=2.0, workers=2, timeout=None, min_kills=6):
    """N triggers, each to one user with an email contact, while an RQ worker is SIGKILLed every
    `kill_every` seconds and a fresh one started; then every notification stored once and every
    email received once (by Message-ID and by recipient + subject)."""
    res = Result("crash")
    timeout = timeout or max(90, n / 8)
    env = rig.env(email=True, attempts=5, backoff=(1, 2, 4, 8), smtp_process=True)
    web = rig.web(env, workers=2 if n > 1000 else 1)
    pool = [rig.worker(env) for _ in range(workers)]
    users = rig.users_with_email(n)
    started = time.monotonic()
    statuses = collections.Counter()
    done = threading.Event()

    def post_all():
        def one(chunk):
            with requests.Session() as s:
                for i, u in chunk:
                    try:
                        statuses[post_trigger(s, web.url, [u], f"crash {i}").status_code] += 1
                    except requests.RequestException as exc:
                        statuses[type(exc).__name__] += 1
        chunks = [list(enumerate(users))[j::8] for j in range(8)]
        with ThreadPoolExecutor(8) as ex:
            list(ex.map(one, chunks))
        done.set()

    poster = threading.Thread(target=post_all, daemon=True)
    poster.start()
    kills, victim, kill_times = 0, 0, []
    next_kill = time.monotonic() + kill_every
    emails_sent = lambda: rig.scalar("SELECT count(*) FROM deliveries WHERE channel = 'email' AND status = 'sent'")
    # kill while the triggers go in and for a while after (the jobs are still running)
    while not done.is_set() or kills < min_kills \
            or (emails_sent() < n * 0.9 and time.monotonic() - started < timeout / 2):
        time.sleep(max(0.0, next_kill - time.monotonic()))
        next_kill = time.monotonic() + kill_every
        old = pool[victim % len(pool)]
        kill_times.append(time.time())
        rig.kill(old)
        rig.group.started.remove(old)
        pool[victim % len(pool)] = rig.worker(env)
        kills += 1
        victim += 1
    load_done = time.monotonic() - started

    def converged():
        return rig.scalar("SELECT count(*) FROM deliveries WHERE channel = 'email' AND status = 'sent'") >= n \
            and email_figures(rig.smtp)[5] >= n
    expired = 0
    while not converged() and time.monotonic() - started < timeout:
        before = (emails_sent(), len(rig.smtp.messages))
        time.sleep(5)
        if (emails_sent(), len(rig.smtp.messages)) == before:     # stalled: only leases of killed sends left
            expired += rig.expire_stuck_leases()
    elapsed = time.monotonic() - started
    time.sleep(1.5)  # a late duplicate would arrive now
    stored = rig.scalar("SELECT count(*) FROM notifications")
    distinct_users = rig.scalar("SELECT count(DISTINCT user_id) FROM notifications")
    sent = emails_sent()
    total, distinct_ids, dup_id, dup_key, ambiguous, distinct_keys = email_figures(rig.smtp)
    resent_attempts = rig.scalar("SELECT count(*) FROM deliveries WHERE channel = 'email' AND attempts > 1")
    windows = record_windows(rig)
    early = sum(1 for w in windows if w <= 0)   # the record left with the final dot (Receipt.submit)
    window = [w for w in windows if w > 0]
    kill_offsets = duplicates_vs_kills(rig, kill_times)
    res.figures = dict(triggers=n, accepted=statuses[202], stored=stored, emails=total, distinct_emails=distinct_ids,
                       duplicates_by_message_id=dup_id, duplicates_by_recipient=dup_key, kills=kills,
                       stuck_leases_fast_forwarded=expired, deliveries_retaken=resent_attempts,
                       load_seconds=round(load_done, 1), seconds=round(elapsed, 1),
                       records_before_the_server_had_it=early, late_record_window_us=quantiles(window),
                       duplicate_kill_offsets_ms=kill_offsets)
    res.line = (f"crash: {n} triggers, {stored} stored, {distinct_ids} emails ({total} received), "
                f"{dup_id} duplicates (all identifiable by Message-ID: {ambiguous == 0 and distinct_keys == distinct_ids}),"
                f" {kills} kills, {expired} stuck leases fast-forwarded, {elapsed:.1f} s; record in PostgreSQL before"
                f" the SMTP server had the message: {early} of {len(windows)}"
                + (f" (the others {quantiles(window)} µs after)" if window else "")
                + (f"; each duplicate's first copy vs the nearest kill (ms): {kill_offsets}" if kill_offsets else ""))
    res.check(statuses[202] == n, f"not every trigger got its 202: {dict(statuses)}")
    res.check(stored == n and distinct_users == n, f"{stored} notifications stored for {distinct_users} users, want {n}")
    res.check(sent == n, f"{sent} email deliveries marked sent, want {n}")
    res.check(distinct_ids == n and distinct_keys == n, f"{distinct_ids} distinct Message-IDs, {distinct_keys} distinct "
                                                        f"recipient+subject, want {n}")
    res.check(ambiguous == 0, f"{ambiguous} Message-IDs shared by different messages")
    # The design's one window (SIGKILL between the final dot leaving and the record leaving, a few
    # µs of code) may still resend; such a copy carries the same Message-ID, which tells it apart
    # from a duplicate we cannot explain. Either is a failure of the guarantee: counted, and red.
    res.check(dup_key == dup_id, f"{dup_key} duplicates by recipient+subject but {dup_id} by Message-ID")
    res.check(dup_id == 0, f"{dup_id} duplicate emails in {kills} kills (first copy vs nearest kill, ms: "
                           f"{kill_offsets})")
    for w in pool:
        res.check(w.alive, f"a worker died by itself:\n{w.output()[-2000:]}")
    return res


def record_windows(rig):
    """µs from the SMTP server having each whole message (just before its 250) to PostgreSQL
    starting the statement that records it sent (`sent_at`, the statement's now()); negative when
    the record, sent with the message's final dot, got there first. One clock (the machine's); the
    last copy of a resent message counts. (The window in which a kill makes a resend, from the
    final dot leaving the worker to the record leaving it, is measured inside the worker by
    bench/accept_window.py.)"""
    sent = dict(rig.rows("SELECT id::text, extract(epoch FROM sent_at)::float8 FROM deliveries"
                         " WHERE channel = 'email' AND status = 'sent'"))
    return sorted((sent[d] - max(ats)) * 1e6 for d, ats in _received_at(rig).items() if d in sent)


def _received_at(rig):
    """delivery id -> the times the SMTP server had a copy of its message (Message-ID <id@domain>)."""
    copies = collections.defaultdict(list)
    for m in list(rig.smtp.messages):
        copies[str(m["message"]["Message-ID"]).strip("<>").partition("@")[0]].append(m["at"])
    return copies


def duplicates_vs_kills(rig, kill_times):
    """For each resent message, ms from the SMTP server having its first copy to the nearest kill:
    a small positive number is a kill inside the window (a negative one: the worker was killed
    with the message already on its way, the server read it afterwards)."""
    offsets = []
    for ats in _received_at(rig).values():
        if len(ats) > 1 and kill_times:
            at = min(ats)
            offsets.append(round(min((k - at for k in kill_times), key=abs) * 1000, 1))
    return sorted(offsets)


def quantiles(values):
    """'p50 … / p99 … / max …' of sorted values."""
    if not values:
        return "p50 - / p99 - / max -"
    pick = lambda q: values[min(len(values) - 1, int(q * len(values)))]  # noqa: E731
    return f"p50 {pick(0.5):.0f} / p99 {pick(0.99):.0f} / max {values[-1]:.0f}"


# ------------------------------------------------------------------------------------ 2. Redis restart


def redis_restart(rig, k=50, triggers=12, down_for=3.0, interval=0.25):
    """K open streams, triggers to all K users flowing; Redis is stopped for `down_for` seconds in the
    middle. Every stream resumes with its cursor and ends with every notification exactly once, in order."""
    res = Result("redis")
    env = rig.env()
    web = rig.web(env, workers=1, keepalive=1)
    rig.worker(env)
    users = [uuid.uuid4() for _ in range(k)]
    clients = [ResumingStream(web, headers=bearer(u), retry_delay=0.0) for u in users]
    stop_pumping = threading.Event()

    def pump():
        while not stop_pumping.is_set():
            for c in clients:
                c._pump()
            time.sleep(0.05)
    pumper = threading.Thread(target=pump, daemon=True)
    pumper.start()
    wait_for(lambda: web.open_streams() >= k, 30)
    started = time.monotonic()
    answers, down_at, up_at = [], None, None
    with requests.Session() as s:
        for i in range(triggers):
            if i == triggers // 3:
                rig.redis.stop()
                down_at = time.monotonic()
            if down_at and not up_at and time.monotonic() - down_at >= down_for:
                rig.redis.start()
                up_at = time.monotonic()
            try:
                r = post_trigger(s, web.url, users, f"r{i}")
                answers.append(r.status_code)
            except requests.RequestException as exc:
                answers.append(type(exc).__name__)
            time.sleep(interval)
        if not up_at:
            time.sleep(max(0, down_for - (time.monotonic() - down_at)))
            rig.redis.start()
            up_at = time.monotonic()
    accepted = answers.count(202)
    complete, waited = wait_for(lambda: all(len(c.events) >= accepted for c in clients), 60 + k / 10)
    time.sleep(1.0)   # a duplicate would show now
    stop_pumping.set()
    pumper.join(10)
    elapsed = time.monotonic() - started
    per_user = dict(rig.rows("SELECT user_id::text, array_agg(seq ORDER BY seq) FROM notifications GROUP BY user_id"))
    exact, lost, dup, disorder, reconnects = 0, 0, 0, 0, 0
    for u, c in zip(users, clients):
        got = [e.seq for e in c.events]
        want = per_user.get(str(u), [])
        reconnects += c.connections - 1
        lost += len(set(want) - set(got))
        dup += len(got) - len(set(got))
        disorder += sum(1 for a, b in zip(got, got[1:]) if b < a)
        exact += got == want and len(want) == accepted
        c.close()
    stored = sum(len(v) for v in per_user.values())
    res.figures = dict(streams=k, triggers=triggers, accepted=accepted, stored=stored, exact_streams=exact,
                       lost_events=lost, duplicate_events=dup, out_of_order=disorder, reconnects=reconnects,
                       redis_down_seconds=round(up_at - down_at, 1), seconds=round(elapsed, 1))
    res.line = (f"redis: {k} streams, {accepted}/{triggers} triggers accepted (202) with Redis down "
                f"{up_at - down_at:.1f} s, {stored} stored, {exact}/{k} streams exact, {lost} lost, {dup} duplicates, "
                f"{disorder} out of order, {reconnects} reconnects, {elapsed:.1f} s")
    res.check(accepted == triggers, f"not every trigger got a 202 (the outbox): {answers}")
    res.check(stored == accepted * k, f"{stored} notifications stored, want {accepted * k}: a 202 was lost")
    res.check(complete and exact == k, f"{k - exact} streams not exact (lost {lost}, duplicates {dup}, "
                                       f"out of order {disorder})")
    return res


# ------------------------------------------------------------------------------------ 3. PostgreSQL restart


def postgres_restart(rig, outage=5.0, users=20, interval=0.05, pg=None):
    """Triggers flow while a private PostgreSQL is stopped (`pg_ctl -m fast stop`) for `outage` seconds and
    started again. During the outage every answer is 503 with a code (a 202 only when durably stored);
    afterwards web and worker recover by themselves and every 202 is stored exactly once."""
    from app.migrate import migrate
    from devtools.postgres_server import PostgresServer
    res = Result("postgres")
    own = pg is None
    pg = pg or PostgresServer().start()
    try:
        url = pg.create_database("faults")
        migrate(url, echo=lambda *_: None)
        rig.base_env["DATABASE_URL"] = url
        env = rig.env()
        web = rig.web(env, workers=1)
        worker = rig.worker(env)
        user_ids = [uuid.uuid4() for _ in range(users)]
        answers = []   # (status, code, trigger_id, at)
        stop = threading.Event()

        def flow():
            with requests.Session() as s:
                i = 0
                while not stop.is_set():
                    at = time.monotonic()
                    try:
                        r = post_trigger(s, web.url, user_ids, f"pg{i}", timeout=20)
                        body = r.json() if r.headers.get("Content-Type", "").startswith("application/json") else {}
                        answers.append((r.status_code, body.get("code"), body.get("trigger_id"), at))
                    except (requests.RequestException, ValueError) as exc:
                        answers.append((type(exc).__name__, None, None, at))
                    i += 1
                    time.sleep(interval)
        poster = threading.Thread(target=flow, daemon=True)
        started = time.monotonic()
        poster.start()
        time.sleep(2)
        down_at = time.monotonic()
        pg.stop("fast")
        time.sleep(outage)
        pg.start()
        up_at = time.monotonic()
        ready, ready_in = wait_for(lambda: _ready(web), 60, 0.1)
        # 202 again, by itself (no restart of web or worker)
        recovered, first_202_in = wait_for(lambda: any(a[0] == 202 and a[3] > up_at for a in list(answers)), 60, 0.1)
        time.sleep(2)
        stop.set()
        poster.join(30)
        accepted = [a[2] for a in answers if a[0] == 202]
        rig._db = None

        def all_dispatched():
            try:
                return rig.scalar("SELECT count(*) FROM triggers WHERE status = 'dispatched'") >= len(accepted)
            except psycopg2.Error:
                return False
        dispatched, _ = wait_for(all_dispatched, 60)
        elapsed = time.monotonic() - started
        stored = rig.scalar("SELECT count(*) FROM notifications")
        distinct = rig.scalar("SELECT count(DISTINCT (trigger_id, user_id)) FROM notifications")
        known = {r[0] for r in rig.rows("SELECT id::text FROM triggers")}
        lost = [t for t in accepted if t not in known]
        during = [a for a in answers if down_at <= a[3] <= up_at]
        kinds = collections.Counter((a[0], a[1]) for a in answers)
        bad = {f"{s} {c}": n for (s, c), n in kinds.items()
               if not (s == 202 or (s == 503 and c == "notifications_m.service_unavailable"))}
        res.figures = dict(requests=len(answers), accepted=len(accepted), refused_503=sum(
            n for (s, c), n in kinds.items() if s == 503), other=bad, during_outage=len(during),
            stored=stored, lost_202=len(lost), ready_after_restart_s=round(ready_in, 1),
            first_202_after_restart_s=round(first_202_in, 1), seconds=round(elapsed, 1))
        res.line = (f"postgres: {len(answers)} triggers in {elapsed:.1f} s with PostgreSQL down {up_at - down_at:.1f} s:"
                    f" {len(accepted)} got 202, {res.figures['refused_503']} got 503 service_unavailable, "
                    f"{sum(bad.values())} other {bad or ''}; {len(lost)} 202s lost, {stored} stored "
                    f"({len(accepted)} x {users} wanted); ready {ready_in:.1f} s after restart, first 202 after "
                    f"{first_202_in:.1f} s")
        res.check(not bad, f"answers other than 202 / 503 service_unavailable: {bad}")
        res.check(any(a[0] == 503 for a in during), "no 503 during the outage (did it happen?)")
        res.check(not lost, f"{len(lost)} triggers answered 202 are not in the database")
        res.check(dispatched and stored == distinct == len(accepted) * users,
                  f"{stored} stored ({distinct} distinct), want {len(accepted) * users}")
        res.check(ready and recovered, "web did not recover by itself (readyz / 202)")
        res.check(worker.alive and web.alive, "a process died during the outage")
    finally:
        rig.close()
        if own:
            pg.destroy()
    return res


def _ready(web):
    try:
        return web.get("/readyz", timeout=2).status_code == 200
    except requests.RequestException:
        return False


# ------------------------------------------------------------------------------------ 4. provider outage


def smtp_outage(rig, n=40, outage=10.0):
    """The SMTP server is down for `outage` seconds while N emails are due, with back-off shortened so
    the attempts outlast the outage; every email arrives once after it returns."""
    res = Result("smtp")
    cap = max(2, int(outage / 4))
    backoff, step = [], 1
    while sum(backoff) < outage * 1.5 + 5:
        backoff.append(min(step, cap))
        step *= 2
    env = rig.env(email=True, attempts=len(backoff) + 1, backoff=tuple(backoff), start_smtp=False)
    web = rig.web(env, workers=1)
    rig.worker(env)
    users = rig.users_with_email(n)
    started = time.monotonic()
    with requests.Session() as s:
        codes = collections.Counter(post_trigger(s, web.url, [u], f"smtp {i}").status_code for i, u in enumerate(users))
    failed_attempts, _ = wait_for(lambda: rig.scalar("SELECT count(*) FROM delivery_attempts WHERE outcome = 'retry'")
                                  >= n, outage)
    time.sleep(max(0.0, outage - (time.monotonic() - started)))
    rig.smtp.start()
    back_at = time.monotonic()
    done, _ = wait_for(lambda: email_figures(rig.smtp)[5] >= n
                       and rig.scalar("SELECT count(*) FROM deliveries WHERE status IN ('pending', 'sending')") == 0,
                       sum(backoff) + 30)
    drained_in = time.monotonic() - back_at
    time.sleep(2)
    total, distinct_ids, dup_id, dup_key, ambiguous, distinct_keys = email_figures(rig.smtp)
    status = dict(rig.rows("SELECT status, count(*) FROM deliveries WHERE channel = 'email' GROUP BY status"))
    retries = rig.scalar("SELECT count(*) FROM delivery_attempts WHERE outcome = 'retry'")
    res.figures = dict(emails_due=n, accepted=codes[202], received=total, distinct=distinct_ids, duplicates=dup_id,
                       delivery_status=status, failed_attempts_during_outage=retries, backoff=backoff,
                       outage_seconds=round(back_at - started, 1), drained_after_return_s=round(drained_in, 1))
    res.line = (f"smtp: {n} emails, SMTP down {back_at - started:.1f} s ({retries} failed attempts, back-off {backoff}),"
                f" {distinct_ids} delivered {drained_in:.1f} s after it returned, {dup_id} duplicates, status {status}")
    res.check(codes[202] == n, f"triggers not accepted: {dict(codes)}")
    res.check(failed_attempts, "the outage caused no failed attempt (was SMTP really down?)")
    res.check(done and distinct_keys == n and distinct_ids == n, f"{distinct_ids} of {n} emails delivered")
    res.check(dup_id == 0 and dup_key == 0, f"{dup_id} duplicate emails")
    if not res.check(status == {"sent": n}, f"deliveries not all sent: {status}"):
        for delivery, attempts in rig.rows(
                "SELECT d.id, array_agg(a.attempt || ' ' || a.outcome || ' +'"
                " || round(extract(epoch FROM a.started_at - d.created_at)::numeric, 1) || 's '"
                " || coalesce(a.error, '') ORDER BY a.id)"
                " FROM deliveries d JOIN delivery_attempts a ON a.delivery_id = d.id"
                " WHERE d.channel = 'email' AND d.status <> 'sent' GROUP BY d.id LIMIT 5"):
            res.problems.append(f"delivery {delivery}: " + "; ".join(attempts))
    return res


# ------------------------------------------------------------------------------------ 5. slow and dead clients


def _raw_stream(web, user_id, rcvbuf=None):
    """A stream opened on a bare socket (optionally with a tiny receive buffer); reads the headers only."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", web.port))
    token = make_token(user_id, exp_in=3600)
    sock.sendall(f"GET /v1/notifications/sse HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
                 f"Accept: text/event-stream\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        if not chunk:
            break
        head += chunk
    assert head.startswith(b"HTTP/1.1 200"), head[:200]
    return sock


def slow_clients(rig, pushes=400, queue_size=16, cut_within=15.0):
    """A stream that stops reading is cut within a bounded time and does not slow a healthy stream; a
    stream whose client vanishes with a reset (SO_LINGER 0) is cleaned up: /healthz streams returns
    to the baseline."""
    res = Result("slow")
    env = rig.env()
    web = rig.web(env, workers=1, keepalive=1, SSE_QUEUE_SIZE=queue_size)
    slow_user, good_user, rst_user = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    good = web.stream(headers=bearer(good_user), read_timeout=30)
    wait_for(lambda: web.open_streams() == 1, 10, 0.05)
    baseline = web.open_streams()                     # 1: the healthy stream
    slow = _raw_stream(web, slow_user, rcvbuf=4096)   # never read again
    wait_for(lambda: web.open_streams() == baseline + 1, 10)
    payload = "x" * 4800          # the server's send buffer autotunes up to tcp_wmem's max (4 MB): push more
    latencies = []
    cut_at = None
    started = time.monotonic()
    local = threading.local()

    def push(i):
        if not hasattr(local, "s"):
            local.s = requests.Session()
        body = {"type": "chat", "event": "message_received", "title": f"slow {i}", "content": payload,
                "user_ids": [str(slow_user)]}
        return local.s.post(web.url + "/v1/notifications/sse", json=body, headers=SERVICE, timeout=10).status_code

    pusher = ThreadPoolExecutor(6)
    pushed = pusher.map(push, range(pushes))
    pushing = threading.Thread(target=lambda: collections.deque(pushed, maxlen=0), daemon=True)
    pushing.start()
    with requests.Session() as s:
        i = 0
        while pushing.is_alive() or (cut_at is None and time.monotonic() - started < cut_within + 30):
            sent = time.monotonic()
            before = len(good.events)
            s.post(web.url + "/v1/notifications/sse", json={"type": "chat", "event": "message_received",
                                                           "title": f"good {i}", "user_ids": [str(good_user)]},
                   headers=SERVICE, timeout=10)
            good.wait_for(lambda st: len(st.events) > before, 10, "the healthy stream's event")
            latencies.append(good.events[before].at - sent)
            if cut_at is None and web.open_streams() == baseline:
                cut_at = time.monotonic()
                if not pushing.is_alive():
                    break
            i += 1
            time.sleep(0.25)
    pusher.shutdown()
    pushed_in = time.monotonic() - started
    slow_cut_in = (cut_at - started) if cut_at else None
    slow.close()
    # a client that vanishes with RST (SO_LINGER 0): counted back to the baseline at once
    rst = _raw_stream(web, rst_user)
    wait_for(lambda: web.open_streams() == baseline + 1, 10)
    rst.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    rst.close()
    rst_at = time.monotonic()
    cleaned, _ = wait_for(lambda: web.open_streams() == baseline, 10, 0.05)
    rst_cleaned_in = time.monotonic() - rst_at
    good.close()
    back_to_zero, _ = wait_for(lambda: web.open_streams() == 0, 10, 0.05)
    worst = max(latencies) if latencies else None
    res.figures = dict(pushes=pushes, queue_size=queue_size, slow_cut_after_s=slow_cut_in and round(slow_cut_in, 2),
                       healthy_latency_max_ms=worst and round(worst * 1000, 1),
                       healthy_latency_median_ms=latencies and round(sorted(latencies)[len(latencies) // 2] * 1000, 1),
                       rst_cleaned_in_s=round(rst_cleaned_in, 2), push_seconds=round(pushed_in, 1))
    res.line = (f"slow: non-reading stream cut after {slow_cut_in and f'{slow_cut_in:.1f} s' or 'NEVER'} "
                f"({pushes} pushes of {len(payload)} B, queue {queue_size}); healthy stream latency max "
                f"{res.figures['healthy_latency_max_ms']} ms; RST client cleaned up in {rst_cleaned_in:.2f} s; "
                f"streams back to 0: {bool(back_to_zero)}")
    res.check(slow_cut_in is not None,
              f"the non-reading stream was not cut within {cut_within} s")
    res.check(worst is not None and worst < 1.0, f"the healthy stream was slowed: worst latency {worst}")
    res.check(cleaned, "a stream reset by its client was not cleaned up")
    res.check(back_to_zero, "open streams did not return to 0")
    return res


# A client on another host: opens its stream, reports, then only reads (argv: host, port, token).
_VANISHING_CLIENT = """
import socket, sys
sock = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
sock.sendall(("GET /v1/notifications/sse HTTP/1.1\\r\\nHost: x\\r\\nAuthorization: Bearer " + sys.argv[3]
              + "\\r\\nAccept: text/event-stream\\r\\n\\r\\n").encode())
head = b""
while b"\\r\\n\\r\\n" not in head:
    head += sock.recv(1024)
print(head.split(b"\\r\\n", 1)[0].decode(), flush=True)
sock.settimeout(None)
while sock.recv(65536):
    pass
"""


def vanished_client(rig, peer_timeout=3.0, keepalive=1.0):
    """A client whose network disappears without FIN or RST (its host's interface goes down; the
    client process lives on) is cut within keep-alive + SSE_PEER_TIMEOUT_SECONDS (TCP_USER_TIMEOUT),
    its per-user slot comes back, and a healthy stream next to it is not disturbed."""
    from isolated_host import IsolatedHost
    res = Result("vanished")
    usable, why = IsolatedHost.available()
    if not res.check(usable, f"cannot make a network namespace here (needs root): {why}"):
        res.line = f"vanished: not run ({why})"
        return res
    env = rig.env()
    with IsolatedHost() as far:
        web = rig.web(env, workers=1, keepalive=keepalive, HOST="0.0.0.0", SSE_PEER_TIMEOUT_SECONDS=peer_timeout)
        good_user, far_user = uuid.uuid4(), uuid.uuid4()
        good = web.stream(headers=bearer(good_user), read_timeout=30)
        client = far.python(_VANISHING_CLIENT, far.server_ip, str(web.port), make_token(far_user, exp_in=3600))
        status = client.stdout.readline().strip()
        res.check(status == "HTTP/1.1 200 OK", f"the far client's stream did not open: {status!r}")
        opened, _ = wait_for(lambda: web.open_streams() == 2, 10, 0.05)
        import redis as redis_lib
        slots = redis_lib.Redis.from_url(env["REDIS_URL"])
        far.cut()
        cut_at = time.monotonic()
        cleaned, _ = wait_for(lambda: web.open_streams() == 1, keepalive + peer_timeout + 30, 0.1)
        cleaned_in = time.monotonic() - cut_at
        released, _ = wait_for(lambda: slots.zcard(f"notif:streams:{far_user}") == 0, 5, 0.05)
        alive = client.poll() is None          # it never learnt: no FIN or RST reached it either
        before = len(good.events)
        web.post("/v1/notifications/sse", headers=SERVICE, json={
            "type": "chat", "event": "message_received", "title": "still here", "user_ids": [str(good_user)]})
        good.wait_for(lambda st: len(st.events) > before, 10, "the healthy stream's event")
        good.close()
    bound = keepalive + peer_timeout + 2.0
    res.figures = dict(peer_timeout_s=peer_timeout, keepalive_s=keepalive, cleaned_in_s=round(cleaned_in, 2),
                       slot_released=bool(released), client_still_running=alive)
    res.line = (f"vanished: stream of a client whose link went down cut after {cleaned_in:.1f} s "
                f"(keep-alive {keepalive:g} s + SSE_PEER_TIMEOUT_SECONDS {peer_timeout:g} s), slot released: "
                f"{bool(released)}, client process unaware (still running): {alive}, healthy stream served")
    res.check(opened, "the far client's stream never counted as open")
    res.check(cleaned and cleaned_in < bound, f"the vanished stream was cut after {cleaned_in:.1f} s (bound {bound} s)")
    res.check(released, "the vanished stream's slot was not released")
    res.check(alive, "the client process ended: it may have said goodbye, so this proved nothing")
    return res


# ------------------------------------------------------------------------------------ 7. graceful shutdown


def shutdown(rig, users=1500, streams=20):
    """SIGTERM to the RQ worker mid-dispatch (one trigger to `users` users with email, chunks of 100):
    the work is finished or returned, a new worker completes it, nothing stored or emailed twice.
    SIGTERM to gunicorn with open streams: after a restart on the same port every client resumes by
    cursor with no lost event."""
    res = Result("shutdown")
    env = rig.env(email=True, attempts=5, backoff=(1, 2, 4, 8), users_per_chunk=100)
    web = rig.web(env, workers=1, keepalive=1)
    side = rig.web(env, workers=1)                    # triggers go through this one while `web` restarts
    worker = rig.worker(env)
    started = time.monotonic()
    targets = rig.users_with_email(users)
    r = post_trigger(requests, side.url, targets, "bulk")
    trigger_id = r.json()["trigger_id"]
    wait_for(lambda: rig.scalar("SELECT count(*) FROM notifications") > 0, 30, 0.005)
    term_at = time.monotonic()
    worker.proc.send_signal(signal.SIGTERM)        # warm shutdown: RQ finishes the job in hand
    try:
        worker.proc.wait(60)
    except Exception:
        pass
    exited_in = time.monotonic() - term_at
    exit_code = worker.proc.returncode
    stored_at_exit = rig.scalar("SELECT count(*) FROM notifications")
    rig.group.started.remove(worker)
    rig.kill(worker)
    rig.worker(env)
    unfinished = "SELECT count(*) FROM deliveries WHERE status IN ('pending','sending')"
    dispatched, _ = wait_while_progressing(
        lambda: rig.scalar("SELECT status FROM triggers WHERE id = %s", trigger_id) == "dispatched"
        and rig.scalar(unfinished) == 0,
        lambda: (rig.scalar("SELECT count(*) FROM notifications"), rig.scalar(unfinished)), stall=60)
    time.sleep(1)
    stored = rig.scalar("SELECT count(*) FROM notifications")
    total, distinct_ids, dup_id, dup_key, ambiguous, distinct_keys = email_figures(rig.smtp)
    res.check(stored == users, f"worker SIGTERM: {stored} of {users} stored")
    res.check(dispatched, f"worker SIGTERM: the trigger or {rig.scalar(unfinished)} deliveries never finished")
    res.check(distinct_keys == users and dup_id == 0 and dup_key == 0,
              f"worker SIGTERM: {distinct_keys} distinct emails, {dup_id} duplicates, want {users} and 0")

    # gunicorn SIGTERM with open streams
    stream_users = [uuid.uuid4() for _ in range(streams)]
    clients = [ResumingStream(web, headers=bearer(u), retry_delay=0.0) for u in stream_users]
    stop_pumping = threading.Event()

    def pump():
        while not stop_pumping.is_set():
            for c in clients:
                c._pump()
            time.sleep(0.05)
    pumper = threading.Thread(target=pump, daemon=True)
    pumper.start()
    wait_for(lambda: web.open_streams() >= streams, 20)
    sent = 0
    for i in range(3):
        post_trigger(requests, side.url, stream_users, f"before {i}")
        sent += 1
    wait_for(lambda: all(len(c.events) >= sent for c in clients), 20)
    web.proc.send_signal(signal.SIGTERM)
    gunicorn_term = time.monotonic()
    for i in range(3):                              # while it drains and is down
        post_trigger(requests, side.url, stream_users, f"during {i}")
        sent += 1
    web.proc.wait(30)
    web_exit_in = time.monotonic() - gunicorn_term
    rig.group.started.remove(web)
    port = web.port
    again = WebServer(ProcessGroup.environment(dict(web.env)), str(rig.dir), workers=1, keepalive=1)
    again.port = port
    again.env["PORT"] = str(port)
    web.port = port
    again.start()
    rig.group.started.append(again)
    for i in range(3):
        post_trigger(requests, side.url, stream_users, f"after {i}")
        sent += 1
    complete, _ = wait_for(lambda: all(len(c.events) >= sent for c in clients), 30)
    time.sleep(1)
    stop_pumping.set()
    pumper.join(10)
    per_user = dict(rig.rows("SELECT user_id::text, array_agg(seq ORDER BY seq) FROM notifications"
                             " WHERE user_id = ANY(%s::uuid[]) GROUP BY user_id", [str(u) for u in stream_users]))
    exact = sum(1 for u, c in zip(stream_users, clients) if [e.seq for e in c.events] == per_user.get(str(u)))
    reconnects = sum(c.connections - 1 for c in clients)
    for c in clients:
        c.close()
    elapsed = time.monotonic() - started
    res.figures = dict(users=users, worker_exit_s=round(exited_in, 1), worker_exit_code=exit_code,
                       stored_when_worker_exited=stored_at_exit, stored=stored, emails=distinct_ids,
                       email_duplicates=dup_id, streams=streams, events_each=sent, exact_streams=exact,
                       reconnects=reconnects, gunicorn_exit_s=round(web_exit_in, 1), seconds=round(elapsed, 1))
    res.line = (f"shutdown: worker SIGTERM mid-dispatch exited in {exited_in:.1f} s (code {exit_code}) with "
                f"{stored_at_exit}/{users} stored; after restart {stored} stored, {distinct_ids} emails, {dup_id} "
                f"duplicates; gunicorn SIGTERM with {streams} streams exited in {web_exit_in:.1f} s, "
                f"{exact}/{streams} streams exact over {sent} events, {reconnects} reconnects, {elapsed:.1f} s")
    res.check(complete and exact == streams, f"gunicorn SIGTERM: {streams - exact} streams lost or repeated events")
    return res


# ------------------------------------------------------------------------------------ 6. soak


def soak(rig, minutes=30.0, streams=50, rate=10.0, sample_every=10.0, warmup_fraction=0.2):
    """Steady triggers while streams connect and disconnect: RSS of web and worker within ±5 % after
    warm-up, no growth in open fds, greenlets or Redis clients."""
    import random

    import redis as redis_lib
    res = Result("soak")
    env = rig.env()
    web = rig.web(env, workers=1, keepalive=5, METRICS_TOKEN=METRICS_TOKEN)   # the greenlet count needs it
    worker = rig.worker(env)
    users = [uuid.uuid4() for _ in range(streams)]
    rds = redis_lib.Redis.from_url(env["REDIS_URL"])
    stop = threading.Event()
    counts = collections.Counter()

    def triggers():
        with requests.Session() as s:
            while not stop.is_set():
                try:
                    counts[post_trigger(s, web.url, random.sample(users, 5), "soak").status_code] += 1
                except requests.RequestException as exc:
                    counts[type(exc).__name__] += 1
                time.sleep(1.0 / rate)

    def churn(u):
        while not stop.is_set():
            try:
                st = web.stream(headers=bearer(u), read_timeout=30)
                stop.wait(random.uniform(1, 10))
                st.close()
                counts["streams"] += 1
            except requests.RequestException:
                counts["stream_errors"] += 1
                stop.wait(1)

    threads = [threading.Thread(target=triggers, daemon=True)] + \
              [threading.Thread(target=churn, args=(u,), daemon=True) for u in users]
    for t in threads:
        t.start()

    def procs():
        out = {"web": [psutil.Process(p) for p in web.worker_pids()]}
        out["worker"] = [psutil.Process(worker.proc.pid)]
        return out
    samples = []
    started = time.monotonic()
    while time.monotonic() - started < minutes * 60:
        time.sleep(sample_every)
        ps = procs()
        samples.append(dict(t=time.monotonic() - started,
                            web_rss=sum(p.memory_info().rss for p in ps["web"]),
                            worker_rss=sum(p.memory_info().rss for p in ps["worker"]),
                            web_fds=sum(p.num_fds() for p in ps["web"]),
                            worker_fds=sum(p.num_fds() for p in ps["worker"]),
                            redis_clients=len(rds.client_list()),
                            web_greenlets=web.get("/healthz?greenlets=1", headers=OPERATOR).json()["greenlets"]))
    stop.set()
    for t in threads:
        t.join(15)
    rds.close()
    after = [s for s in samples if s["t"] >= minutes * 60 * warmup_fraction] or samples
    figures = {"triggers": counts[202], "stream_sessions": counts["streams"], "samples": len(samples)}
    for key in ("web_rss", "worker_rss", "web_fds", "worker_fds", "redis_clients", "web_greenlets"):
        values = [s[key] for s in after]
        base = values[0]
        figures[key] = (base, min(values), max(values), values[-1])
        if key.endswith("rss"):
            drift = max(abs(v - base) for v in values) / base
            figures[key + "_drift_pct"] = round(drift * 100, 1)
            res.check(drift <= 0.05, f"{key} moved {drift:.1%} after warm-up: {values}")
        else:
            # allow the churn's in-flight connections; no upward trend: the last third not above the first
            third = max(1, len(values) // 3)
            res.check(max(values[-third:]) <= max(values[:third]) + streams // 5 + 2,
                      f"{key} grows: {values}")
    res.figures = figures
    res.line = (f"soak: {minutes:g} min, {counts[202]} triggers, {counts['streams']} stream sessions; RSS drift after "
                f"warm-up web {figures['web_rss_drift_pct']} %, worker {figures['worker_rss_drift_pct']} %; fds web "
                f"{figures['web_fds'][0]}->{figures['web_fds'][3]}, worker {figures['worker_fds'][0]}->"
                f"{figures['worker_fds'][3]}; Redis clients {figures['redis_clients'][0]}->{figures['redis_clients'][3]}; "
                f"web greenlets {figures['web_greenlets'][0]}->{figures['web_greenlets'][3]} (max {figures['web_greenlets'][2]})")
    res.check(counts.get("ConnectionError", 0) == 0, f"errors: {dict(counts)}")
    return res


SCENARIOS = {"crash": crash, "redis": redis_restart, "postgres": postgres_restart, "smtp": smtp_outage,
             "slow": slow_clients, "vanished": vanished_client, "shutdown": shutdown, "soak": soak}


# ------------------------------------------------------------------------------------ standalone


def _standalone_env():
    """A database of our own on DATABASE_URL's server (embedded when unset) and a private redis-server."""
    from app.migrate import migrate
    from conftest import _admin_url
    from devtools.services import postgres_url, redis_server
    server_url, stop_pg = postgres_url()
    name = f"notif_faults_{os.getpid()}_{secrets.token_hex(3)}"
    admin = psycopg2.connect(_admin_url(server_url, "postgres"))
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    url = _admin_url(server_url, name)
    migrate(url, echo=lambda *_: None)
    redis = redis_server()
    env = {"DATABASE_URL": url, "REDIS_URL": redis.url, "REDIS_PREFIX": "notif:", "JWT_SECRET": JWT_SECRET,
           "API_KEYS": f"{API_KEY},{OTHER_API_KEY}", "RATE_LIMITS_ENABLED": "false", "DEVELOPMENT": "true"}

    def cleanup():
        redis.stop()
        with admin.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
            cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.close()
        stop_pg()
    return env, redis, cleanup


def _reset(env, redis):
    from conftest import _clean
    try:
        redis.client().ping() if hasattr(redis, "client") else None
    except Exception:
        pass
    import redis as redis_lib
    try:
        redis_lib.Redis.from_url(env["REDIS_URL"], socket_connect_timeout=1).ping()
    except redis_lib.ConnectionError:
        redis.start()
    _clean(env["DATABASE_URL"], env["REDIS_URL"])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenario", choices=[*SCENARIOS, "all"])
    parser.add_argument("--full", action="store_true", help="the large version (default: the CI size)")
    parser.add_argument("--minutes", type=float, default=30.0, help="soak duration")
    parser.add_argument("-n", type=int, help="override the scenario's main count (crash/smtp: n, redis: k)")
    args = parser.parse_args(argv)
    names = [s for s in SCENARIOS if s != "soak"] if args.scenario == "all" else [args.scenario]
    env, redis, cleanup = _standalone_env()
    results = []
    try:
        for name in names:
            _reset(env, redis)
            params = dict((FULL if args.full else SHORT).get(name, {}))
            if name == "soak":
                params["minutes"] = args.minutes
            if args.n:
                params[{"crash": "n", "smtp": "n", "redis": "k", "shutdown": "users", "slow": "pushes"}
                       .get(name, "n")] = args.n
            rig = Rig(env, redis, tempfile.mkdtemp(prefix=f"faults-{name}-"))
            try:
                result = SCENARIOS[name](rig, **params)
            finally:
                rig.close()
            results.append(result)
            print(result.line, flush=True)
            for problem in result.problems:
                print(f"  FAIL {name}: {problem}", flush=True)
    finally:
        cleanup()
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
