"""The inbox at 10 M notifications: GET /v1/notifications at a fixed 200 requests/s.

    python bench/inbox.py               # 10,000,000 notifications of 100,000 users (first run: a long load)
    python bench/inbox.py --quick       # 1,000,000 of 10,000
    python bench/inbox.py --rebuild     # load the database again;  --drop: remove the cached one

The database: built on the PostgreSQL server of DATABASE_URL (default
postgresql://postgres@127.0.0.1:5432/postgres; the URL's own database is never touched) with the
repository's migrations, then loaded with set-based SQL (not through the API), and kept under a
name holding the size and a hash of migrations_sql/, so a rerun reuses it in seconds. A cached
database built with fewer migrations is migrated forward (as an operator would), not reloaded.

The run: the real service (`gunicorn -c gunicorn.conf.py wsgi:app`, rate limits on, as in
production) and a private redis-server; a separate load process (asyncio, keep-alive
connections) sends GET /v1/notifications on a fixed schedule (open loop: latency counts from
the scheduled send time), each request a random user with a mix of the endpoint's uses. Before
it, EXPLAIN (ANALYZE, BUFFERS) of every statement the endpoint runs, for a heavy and a typical
user, taken from the repository's own code on a cold shared_buffers (see `plans`).
"""
import argparse
import asyncio
import bisect
import collections
import contextlib
import hashlib
import io
import json
import math
import os
import random
import resource
import signal
import statistics
import subprocess
import sys
import time
import types
import uuid
from dataclasses import dataclass, replace

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for path in (HERE, ROOT):
    if path not in sys.path:
        sys.path.insert(0, path)

import streams  # noqa: E402  (bench/streams.py: servers, tokens, CPU, percentiles)

TARGET_P99_MS = 20.0
LIMIT = 50                      # the endpoint's default page size, what clients use
MIX = (("first", 0.45), ("unread", 0.20), ("customer", 0.20), ("deep", 0.15))
CLASSES = ((0, "< 100"), (100, "100-999"), (1000, ">= 1,000"))   # users by stored notifications
CLAIM_SHARE = 0.5               # requests whose token carries the user's `customers` claim
EVENT_WEIGHTS = {"message_received": 30, "mention": 8, "task_assigned": 10, "task_due": 8,
                 "task_completed": 8, "payment_received": 15, "payment_failed": 3,
                 "login_alert": 12, "password_changed": 2}   # an event not listed: 5


@dataclass(frozen=True)
class Sizes:
    notifications: int = 10_000_000
    users: int = 100_000
    rate: float = 200.0
    seconds: float = 30.0
    warmup: float = 5.0
    connections: int = 64         # keep-alive connections the load process may open


FULL = Sizes()
QUICK = replace(FULL, notifications=1_000_000, users=10_000, seconds=15.0, warmup=3.0)


def log(message):
    streams.log(message)


def _short(number):
    for unit, size in (("m", 1_000_000), ("k", 1_000)):
        if number >= size and number % size == 0:
            return f"{number // size}{unit}"
    return str(number)


# ============================================================ the cached database


def migration_files():
    """[(version, sha256 of the file)] in order: what a cached database was built with."""
    from app.migrate import migration_files as files
    out = []
    for version, path in files():
        with open(path, "rb") as handle:
            out.append((version, hashlib.sha256(handle.read()).hexdigest()))
    return out


def cache_name(sizes, migrations):
    digest = hashlib.sha256(json.dumps(migrations).encode()).hexdigest()[:8]
    return f"{cache_prefix(sizes)}{digest}"


def cache_prefix(sizes):
    return f"bench_inbox_{_short(sizes.notifications)}_{_short(sizes.users)}_"


class Server:
    """The PostgreSQL server of DATABASE_URL, through its `postgres` database (autocommit)."""

    def __init__(self, url):
        import psycopg2
        self.url = url
        self.admin = psycopg2.connect(streams._admin_dsn(url, "postgres"))
        self.admin.autocommit = True

    def url_of(self, name):
        return streams._admin_dsn(self.url, name)

    def run(self, sql, params=None):
        with self.admin.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall() if cur.description else None

    def databases(self, prefix):
        return [r[0] for r in self.run("SELECT datname FROM pg_database WHERE starts_with(datname, %s)"
                                       " ORDER BY datname", (prefix,))]

    def drop(self, name):
        self.run("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        self.run(f'DROP DATABASE IF EXISTS "{name}"')

    def rename(self, old, new):
        self.run("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (old,))
        self.run(f'ALTER DATABASE "{old}" RENAME TO "{new}"')

    def close(self):
        self.admin.close()


def connect(url):
    import psycopg2
    conn = psycopg2.connect(url)
    conn.autocommit = True
    return conn


def read_meta(url):
    """The build record of a cached database, or None when it is incomplete or not ours."""
    import psycopg2
    try:
        conn = connect(url)
    except psycopg2.Error:
        return None
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT to_regclass('bench_inbox_meta') IS NOT NULL")
            if not cur.fetchone()[0]:
                return None
            cur.execute("SELECT key, value FROM bench_inbox_meta")
            meta = dict(cur.fetchall())
        return meta if meta.get("complete") else None
    finally:
        conn.close()


def cached_database(server, sizes, rebuild=False):
    """The URL of a loaded database of this size and migrations, building or migrating it when needed."""
    migrations = migration_files()
    name = cache_name(sizes, migrations)
    existing = server.databases(cache_prefix(sizes))
    if rebuild:
        for other in existing:
            server.drop(other)
        existing = []
    meta = read_meta(server.url_of(name)) if name in existing else None
    if meta is None:
        meta = _migrate_forward(server, existing, name, migrations)
    if meta is None:
        meta = build(server, sizes, name, migrations)
    for other in server.databases(cache_prefix(sizes)):   # one cached copy per size
        if other != name:
            log(f"dropping the stale cached database {other}")
            server.drop(other)
    return server.url_of(name), meta


def _migrate_forward(server, existing, name, migrations):
    """Reuse a cached database built with an earlier prefix of the migrations: apply the rest."""
    from app.migrate import migrate
    for other in existing:
        if other.endswith("_wip"):
            continue
        meta = read_meta(server.url_of(other))
        done = [tuple(m) for m in (meta or {}).get("migrations", [])]
        if not meta or len(done) >= len(migrations) or migrations[:len(done)] != done:
            continue
        wip = f"{name}_wip"
        server.drop(wip)
        server.rename(other, wip)
        url = server.url_of(wip)
        log(f"migrating the cached database {other} forward: {', '.join(v for v, _ in migrations[len(done):])}")
        timings = {}
        started = time.monotonic()
        for version in migrate(url, echo=lambda *_: None):
            timings[version] = round(time.monotonic() - started, 1)
            started = time.monotonic()
        conn = connect(url)
        with conn.cursor() as cur:
            cur.execute("ANALYZE notifications")
            meta = dict(meta, migrations=migrations, migrated_forward=dict(meta.get("migrated_forward", {}), **timings))
            _write_meta(cur, meta)
        conn.close()
        server.rename(wip, name)
        log(f"migrated forward in {sum(timings.values()):.0f} s: {timings}")
        return meta
    return None


def _write_meta(cur, meta):
    from psycopg2.extras import Json
    cur.execute("CREATE TABLE IF NOT EXISTS bench_inbox_meta (key text PRIMARY KEY, value jsonb NOT NULL)")
    for key, value in meta.items():
        cur.execute("INSERT INTO bench_inbox_meta VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                    (key, Json(value)))


def user_counts(notifications, users, sigma=1.55):
    """Notifications per user: log-normal (median ~30 at 100 on average, a few users with
    thousands), from evenly spaced quantiles so the shape does not depend on luck; sums exactly."""
    normal = statistics.NormalDist()
    raw = [math.exp(sigma * normal.inv_cdf((i + 0.5) / users)) for i in range(users)]
    scale = notifications / sum(raw)
    counts = [max(1, int(r * scale)) for r in raw]
    short = notifications - sum(counts)     # < users: flooring loses less than one per user
    if short >= 0:
        by_fraction = sorted(range(users), key=lambda i: raw[i] * scale - int(raw[i] * scale), reverse=True)
        for i in by_fraction[:short]:
            counts[i] += 1
    else:
        counts[-1] += short                 # the heaviest gives back what the minimum of one added
    return counts


def _users_copy(sizes, seed=9):
    """COPY text of bench_inbox_users: id, notifications, customers, share of them left unread."""
    rng = random.Random(seed)
    counts = user_counts(sizes.notifications, sizes.users)
    rng.shuffle(counts)
    out = io.StringIO()
    for number, n in enumerate(counts):
        user_id = uuid.UUID(int=rng.getrandbits(128), version=4)
        k = rng.randint(3, 6) if n >= 1000 else rng.randint(1, 4)
        customers = ",".join(str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(k))
        unread = rng.choices((0.02, 0.10, 0.60), weights=(55, 30, 15))[0]   # diligent / usual / never reads
        out.write(f"{number}\t{user_id}\t{n}\t{{{customers}}}\t{unread}\n")
    out.seek(0)
    return out


def _events():
    """(groups[], events[]) with each event repeated by its weight: every event of notifications.yaml."""
    from app.domain import load_domain
    domain = load_domain(os.path.join(ROOT, "notifications.yaml"), os.path.join(ROOT, "queue.yaml"))
    groups, events = [], []
    for group in domain.groups.values():
        for event in group.events:
            weight = EVENT_WEIGHTS.get(event, 5)
            groups += [group.name] * weight
            events += [event] * weight
    return groups, events


WEEKS = 52
# One week of every user's notifications, in time order (so `seq` follows `created_at` and a
# user's rows lie scattered over the table as a year of real inserts leaves them). User u's
# i-th of n notifications falls at i/n of the year; a week takes the i of its slice.
LOAD_WEEK = """
INSERT INTO notifications (id, user_id, customer_id, type, event, title, content, link_url, link_text,
                           rec_type, rec_id, read_at, created_at, deleted_at, in_app, trigger_id)
SELECT gen_random_uuid(), user_id,
       CASE WHEN r_customer < 0.2 THEN NULL
            ELSE customers[1 + floor(power(random(), 2) * cardinality(customers))::int] END,
       (%(groups)s::text[])[k], (%(events)s::text[])[k],
       initcap(replace((%(events)s::text[])[k], '_', ' ')),
       'Update ' || i || ' on your ' || (%(groups)s::text[])[k] || ': ' || repeat('more details ', 1 + i %% 9),
       '/' || (%(groups)s::text[])[k] || '/' || i, 'View', (%(groups)s::text[])[k], gen_random_uuid()::text,
       CASE WHEN random() >= CASE WHEN ts > %(end)s::timestamptz - interval '7 days'
                                  THEN least(0.9, unread * 4) ELSE unread END
            THEN least(ts + random() * interval '2 days', %(end)s::timestamptz) END,
       ts,
       CASE WHEN random() < 0.02 THEN least(ts + interval '3 days', %(end)s::timestamptz) END,
       random() >= 0.03,
       gen_random_uuid()
FROM (SELECT u.user_id, u.customers, u.unread, i, random() AS r_customer,
             1 + floor(random() * %(nevents)s)::int AS k,
             %(end)s::timestamptz - interval '365 days' + (i - random()) / u.n * interval '365 days' AS ts
      FROM bench_inbox_users u,
           generate_series(u.n * %(week)s / %(weeks)s + 1, u.n * (%(week)s + 1) / %(weeks)s) i
      OFFSET 0) s
ORDER BY ts
"""


def _detach_indexes(cur, table):
    """Drop the table's indexes, constraints and the foreign keys that point at it; return the
    statements that put them back. Building an index once after the load is many times
    cheaper than keeping eight of them up to date row by row."""
    from psycopg2 import sql
    ident = sql.Identifier(table)
    cur.execute("SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint"
                " WHERE confrelid = %s::regclass", (table,))
    foreign = cur.fetchall()
    cur.execute("SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint"
                " WHERE conrelid = %s::regclass AND contype IN ('p', 'u') ORDER BY contype, conname", (table,))
    constraints = cur.fetchall()
    cur.execute("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' AND tablename = %s"
                " AND indexname NOT IN (SELECT conname FROM pg_constraint WHERE conrelid = %s::regclass)"
                " ORDER BY indexname", (table, table))
    indexes = cur.fetchall()
    for rel, name, _ in foreign:
        cur.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(sql.Identifier(rel), sql.Identifier(name)))
    for name, _ in constraints:
        cur.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(ident, sql.Identifier(name)))
    for name, _ in indexes:
        cur.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(name)))
    restore = [sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} ").format(ident, sql.Identifier(name)) + sql.SQL(definition)
               for name, definition in constraints]
    restore += [sql.SQL(definition) for _, definition in indexes]
    restore += [sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} ").format(sql.Identifier(rel), sql.Identifier(name))
                + sql.SQL(definition) for rel, name, definition in foreign]
    return restore


def _index_definitions(cur):
    cur.execute("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'notifications' ORDER BY 1")
    return cur.fetchall()


def build(server, sizes, name, migrations):
    """Create, migrate and load the database; it gets its final name only when complete."""
    from app.migrate import migrate
    wip = f"{name}_wip"
    server.drop(wip)
    log(f"building {name}: {sizes.notifications:,} notifications for {sizes.users:,} users (takes minutes)")
    started = time.monotonic()
    server.run(f'CREATE DATABASE "{wip}"')
    url = server.url_of(wip)
    migrate(url, echo=lambda *_: None)
    conn = connect(url)
    groups, events = _events()
    end = time.strftime("%Y-%m-%dT00:00:00Z", time.gmtime())
    with conn.cursor() as cur:
        cur.execute("SET synchronous_commit = off; SET maintenance_work_mem = '1GB'; SET work_mem = '512MB'")
        cur.execute("CREATE TABLE bench_inbox_users (user_no integer PRIMARY KEY, user_id uuid NOT NULL UNIQUE,"
                    " n integer NOT NULL, customers uuid[] NOT NULL, unread real NOT NULL)")
        cur.copy_expert("COPY bench_inbox_users FROM STDIN", _users_copy(sizes))
        before = _index_definitions(cur)
        restore = _detach_indexes(cur, "notifications")
        for week in range(WEEKS):
            cur.execute(LOAD_WEEK, {"groups": groups, "events": events, "nevents": len(events), "end": end,
                                    "week": week, "weeks": WEEKS})
            if week % 4 == 3:
                log(f"  week {week + 1}/{WEEKS} loaded, {time.monotonic() - started:.0f} s")
        load_seconds = time.monotonic() - started
        for statement in restore:
            cur.execute(statement)
        if _index_definitions(cur) != before:
            raise RuntimeError("the rebuilt indexes differ from the migrated schema")
        log(f"  indexes rebuilt, {time.monotonic() - started:.0f} s; VACUUM ANALYZE")
        cur.execute("VACUUM ANALYZE")
        cur.execute("SELECT count(*) FROM notifications")
        if cur.fetchone()[0] != sizes.notifications:
            raise RuntimeError("the load did not store the expected number of notifications")
        _contents(cur)
        meta = {"notifications": sizes.notifications, "users": sizes.users, "migrations": migrations,
                "built_at": time.strftime("%Y-%m-%d %H:%M"), "insert_seconds": round(load_seconds),
                "build_seconds": round(time.monotonic() - started), "complete": True}
        _write_meta(cur, meta)
    conn.close()
    server.rename(wip, name)
    log(f"built {name} in {meta['build_seconds']} s")
    return meta


def describe(url):
    """Sizes of the database, the table and its indexes, and how much of them the page cache holds."""
    conn = connect(url)
    with conn.cursor() as cur:
        cur.execute("SELECT pg_database_size(current_database()), current_setting('shared_buffers'),"
                    " current_setting('data_directory')")
        db_bytes, shared_buffers, data_dir = cur.fetchone()
        cur.execute("SELECT c.relname, pg_relation_size(c.oid), pg_relation_filepath(c.oid) FROM pg_class c"
                    " WHERE c.oid = 'notifications'::regclass OR c.oid IN"
                    " (SELECT indexrelid FROM pg_index WHERE indrelid = 'notifications'::regclass) ORDER BY 2 DESC")
        relations = cur.fetchall()
        cur.execute("SELECT value FROM bench_inbox_meta WHERE key = 'contents'")
        found = cur.fetchone()
        contents = found[0] if found else _contents(cur)
    conn.close()
    rels = []
    for relname, size, path in relations:
        rels.append({"name": relname, "bytes": size, "cached": _page_cache_bytes(os.path.join(data_dir, path))})
    return dict(contents, database_bytes=db_bytes, shared_buffers=shared_buffers, relations=rels,
                ram_bytes=_ram_bytes())


def _contents(cur):
    """What the load stored (one pass over the table: kept in bench_inbox_meta, not redone per run)."""
    cur.execute("SELECT n, count(*) FROM (SELECT CASE WHEN n >= 1000 THEN 1000 WHEN n >= 100 THEN 100 ELSE 0 END n"
                " FROM bench_inbox_users) s GROUP BY 1 ORDER BY 1")
    classes = dict(cur.fetchall())
    cur.execute("SELECT max(n), percentile_disc(0.5) WITHIN GROUP (ORDER BY n) FROM bench_inbox_users")
    heaviest, median = cur.fetchone()
    cur.execute("SELECT count(*) FILTER (WHERE read_at IS NULL), count(*) FILTER (WHERE deleted_at IS NOT NULL),"
                " count(*) FILTER (WHERE NOT in_app), count(*) FILTER (WHERE customer_id IS NULL),"
                " count(DISTINCT type || '.' || event) FROM notifications")
    unread, deleted, hidden, no_customer, events = cur.fetchone()
    contents = {"users_by_size": {label: classes.get(low, 0) for low, label in CLASSES},
                "heaviest_user": heaviest, "median_user": median, "unread": unread, "deleted": deleted,
                "hidden": hidden, "no_customer": no_customer, "events": events}
    _write_meta(cur, {"contents": contents})
    return contents


def _page_cache_bytes(path):
    """Bytes of a relation (all its 1 GB segments) in the OS page cache (util-linux fincore), or None."""
    segments = [path] + [f"{path}.{i}" for i in range(1, 1000) if os.path.exists(f"{path}.{i}")]
    try:
        out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", *segments],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    values = [int(v) for v in out.stdout.split() if v.isdigit()]
    return sum(values) if out.returncode == 0 and values else None


def _ram_bytes():
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


# ============================================================ the plans


class _Explaining:
    """A connection stand-in for the repository: each statement it runs is first run under
    EXPLAIN (ANALYZE, BUFFERS), then for real, so the plans are of the endpoint's own SQL."""

    def __init__(self, conn):
        self.conn, self.plans = conn, []

    def cursor(self, *args, **kwargs):
        return _ExplainingCursor(self, self.conn.cursor(*args, **kwargs))


class _ExplainingCursor:
    def __init__(self, owner, cur):
        self._owner, self._cur = owner, cur

    def execute(self, query, params=None):
        statement = self._cur.mogrify(query, params).decode()
        with self._owner.conn.cursor() as plain:
            plain.execute("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + statement)
            plan = "\n".join(row[0] for row in plain.fetchall())
        self._owner.plans.append({"sql": statement, "plan": plan})
        return self._cur.execute(query, params)

    def __getattr__(self, name):
        return getattr(self._cur, name)

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self._cur.close()


def plan_problems(plan):
    """What the brief forbids in an inbox plan: a sequential scan, or a sort (of a whole inbox)."""
    problems = []
    if "Seq Scan" in plan:
        problems.append("Seq Scan")
    if any(line.strip().lstrip("-> ").startswith("Sort ") for line in plan.splitlines()):
        problems.append("Sort")
    return problems


def plans(url, heavy_offset=1000):
    """EXPLAIN of every statement GET /v1/notifications runs, for the heaviest and a median user,
    for each use in the benchmark's mix (and the `customers` claim); and of the stream's starting
    cursor for a user with no notification, which reads the same table by user."""
    from app.notifications import repository
    conn = connect(url)
    conn.autocommit = False
    with conn.cursor() as cur:
        cur.execute("(SELECT user_id, n, customers, 'heavy' FROM bench_inbox_users ORDER BY n DESC LIMIT 1)"
                    " UNION ALL (SELECT user_id, n, customers, 'typical' FROM bench_inbox_users"
                    " WHERE n = (SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY n) FROM bench_inbox_users)"
                    " ORDER BY user_no LIMIT 1)")
        chosen = cur.fetchall()
    conn.rollback()
    out = []
    for user_id, n, customers, who in chosen:
        uses = [("first page", {}), ("status=unread", {"status": "unread"}),
                ("customer_id", {"customer_id": customers[0]}),
                ("first page, token with `customers`", {"customers": customers})]
        if n > LIMIT:
            uses.append((f"offset={min(heavy_offset, LIMIT * ((n - 1) // LIMIT))}",
                         {"offset": min(heavy_offset, LIMIT * ((n - 1) // LIMIT))}))
        for use, kwargs in uses:
            recorder = _Explaining(conn)
            repository.list_inbox(recorder, uuid.UUID(str(user_id)), limit=LIMIT, **kwargs)
            conn.rollback()
            for number, statement in enumerate(recorder.plans):
                out.append({"user": who, "notifications": n, "use": use, "statement": number + 1,
                            "sql": statement["sql"], "plan": statement["plan"],
                            "problems": plan_problems(statement["plan"]),
                            "ms": _execution_ms(statement["plan"])})
    # not this endpoint's, but the same table by user: where a stream without a cursor starts
    from app.streams import replay
    recorder = _Explaining(conn)
    replay.latest_seq(recorder, uuid.uuid4())
    conn.rollback()
    out += [{"user": "new", "notifications": 0, "use": "stream opened without a cursor (replay.latest_seq)",
             "statement": 1, "sql": p["sql"], "plan": p["plan"], "problems": plan_problems(p["plan"]),
             "ms": _execution_ms(p["plan"])} for p in recorder.plans]
    conn.close()
    return out


def _execution_ms(plan):
    for line in plan.splitlines():
        if line.startswith("Execution Time:"):
            return float(line.split()[2])
    return None


# ============================================================ the load process


def _request(path, token):
    return (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
            f"Accept: application/json\r\n\r\n").encode()


async def _exchange(reader, writer, request):
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length, close = 0, False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection" and value.strip().lower() == b"close":
            close = True
    body = await reader.readexactly(length)
    return status, body, close


async def _drive(pipe, port, requests, rate, warmup, max_connections):
    """Send request i at start + i/rate whatever happened before (open loop); a request's latency
    runs from that scheduled time to its last response byte, so waiting for a free connection
    or a stalled server counts."""
    loop = asyncio.get_running_loop()
    idle, slots = [], asyncio.Semaphore(max_connections)
    stats = {"opened": 0, "reconnects": 0, "late": 0, "errors": collections.Counter()}
    results = [None] * len(requests)

    async def one(index, due, request):
        status = None
        async with slots:
            for attempt in (0, 1):
                pair = idle.pop() if idle and not attempt else None   # a retry: a new connection
                fresh = pair is None
                try:
                    if fresh:
                        pair = await asyncio.open_connection("127.0.0.1", port)
                        stats["opened"] += 1
                    status, body, close = await asyncio.wait_for(_exchange(*pair, request), 10)
                except (asyncio.IncompleteReadError, ConnectionError, OSError) as exc:
                    if pair is not None:
                        pair[1].close()
                    if fresh or attempt:         # a kept-alive connection the server closed: once more
                        stats["errors"][type(exc).__name__] += 1
                        break
                    stats["reconnects"] += 1
                    continue
                except asyncio.TimeoutError:
                    pair[1].close()
                    stats["errors"]["timeout (10 s)"] += 1
                    break
                if status == 200 and b'"total"' not in body:
                    status = -1
                if close:
                    pair[1].close()
                else:
                    idle.append(pair)
                break
        results[index] = (loop.time() - due, status)

    start = loop.time() + 0.2
    tasks, cpu0, first_due = [], None, None
    for index, request in enumerate(requests):
        due = start + index / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        if index == warmup:
            pipe.send(("measure",))
            cpu0, first_due = streams.own_cpu(), due
        if index >= warmup and loop.time() - due > 0.005:
            stats["late"] += 1
        tasks.append(asyncio.create_task(one(index, due, request)))
    last_due = start + (len(requests) - 1) / rate
    await asyncio.gather(*tasks)
    cpu = streams.own_cpu() - cpu0
    for _, writer in idle:
        writer.close()
    return {"results": results[warmup:], "cpu": cpu, "send_seconds": last_due - first_due,
            "opened": stats["opened"], "reconnects": stats["reconnects"], "late": stats["late"],
            "errors": dict(stats["errors"])}


def client_main(pipe, port, requests, rate, warmup, max_connections):
    """Entry point of the load process (spawned): run the schedule, send the results back."""
    streams.raise_nofile()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        result = asyncio.run(_drive(pipe, port, requests, rate, warmup, max_connections))
        pipe.send(("done", result))
    except Exception as exc:   # reported to the parent, which raises it
        pipe.send(("error", f"{type(exc).__name__}: {exc}"))


# ============================================================ the run


def load_users(url):
    conn = connect(url)
    with conn.cursor() as cur:
        cur.execute("SELECT user_id, n, customers FROM bench_inbox_users ORDER BY user_no")
        users = cur.fetchall()
    conn.close()
    return users


def size_class(n):
    return bisect.bisect_right([low for low, _ in CLASSES], n) - 1


def schedule(users, count, seed):
    """`count` requests: (kind, size class, request bytes). Each is a random user (the deeper
    page: a random user who has one) and a use drawn from MIX; half the tokens carry the
    user's `customers` claim, as a platform token would, which changes the SQL."""
    import jwt
    rng = random.Random(seed)
    paged = [u for u in users if u[1] > LIMIT]
    kinds, weights = zip(*MIX)
    exp = int(time.time()) + 6 * 3600
    out = []
    for _ in range(count):
        kind = rng.choices(kinds, weights)[0]
        user_id, n, customers = rng.choice(paged if kind == "deep" else users)
        claims = {"sub": str(user_id), "exp": exp}
        if rng.random() < CLAIM_SHARE:
            claims["customers"] = [str(c) for c in customers]
        path = "/v1/notifications"
        if kind == "unread":
            path += "?status=unread"
        elif kind == "customer":
            path += f"?customer_id={rng.choice(customers)}"
        elif kind == "deep":
            path += f"?offset={LIMIT * rng.randint(1, min(20, (n - 1) // LIMIT))}"
        token = jwt.encode(claims, streams.JWT_SECRET, algorithm="HS256")
        out.append((kinds.index(kind), size_class(n), _request(path, token)))
    return out


def _backend_cpu(conn):
    """{pid: CPU seconds} of the database's client backends (the pool's connections)."""
    with conn.cursor() as cur:
        cur.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                    " AND backend_type = 'client backend' AND pid <> pg_backend_pid()")
        return {pid: streams.cpu_seconds(pid) for (pid,) in cur.fetchall()}


def _blocks(conn):
    with conn.cursor() as cur:
        cur.execute("SELECT blks_hit, blks_read FROM pg_stat_database WHERE datname = current_database()")
        return cur.fetchone()


def _machine_ticks():
    """/proc/stat's first line: CPU ticks of the whole machine by kind (user, system, iowait, ...)."""
    with open("/proc/stat") as handle:
        values = [int(v) for v in handle.readline().split()[1:]]
    names = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
    return dict(zip(names, values))


def _machine_share(before, after):
    """Of the machine's CPU time during the run: busy (anyone's), waiting for I/O, stolen."""
    delta = {k: after[k] - before[k] for k in before}
    total = sum(delta.values()) or 1
    busy = total - delta["idle"] - delta["iowait"]
    return {"busy": busy / total, "iowait": delta["iowait"] / total, "steal": delta["steal"] / total}


def _backend_writes(conn):
    """Dirty buffers PostgreSQL backends (anyone's) had to write themselves to find a free one."""
    with conn.cursor() as cur:
        cur.execute("SELECT buffers_backend FROM pg_stat_bgwriter")
        return cur.fetchone()[0]


def _summary(latencies):
    if not latencies:
        return {"count": 0}
    ms = [v * 1000 for v in latencies]
    return {"count": len(ms), "p50_ms": streams.percentile(ms, 0.50), "p95_ms": streams.percentile(ms, 0.95),
            "p99_ms": streams.percentile(ms, 0.99), "max_ms": max(ms)}


def _receive(pipe, proc, timeout):
    """The load process's next message; an error when it died or went silent."""
    deadline = time.monotonic() + timeout
    while not pipe.poll(0.5):
        if not proc.is_alive():
            raise RuntimeError(f"the load process exited (code {proc.exitcode})")
        if time.monotonic() > deadline:
            raise RuntimeError(f"no word from the load process in {timeout:.0f} s")
    return pipe.recv()


def start_service(bench, workers, app_dir=None):
    """The real gunicorn with rate limits on (production's default); `app_dir`: serve the code of
    another checkout (e.g. `git archive` of an older commit) for a before/after comparison."""
    if app_dir is None:
        return bench.start_ours(workers=workers, worker_connections=1000, RATE_LIMITS_ENABLED="true")
    from devtools.services import free_port
    port = free_port()
    env = dict(bench.ours_env(workers, 1000), PORT=str(port), RATE_LIMITS_ENABLED="true")
    server = streams.WebServer("ours", [sys.executable, "-m", "gunicorn", "-c", streams.GUNICORN_CONF, "wsgi:app"],
                               env, bench.workdir, port, workers, cwd=app_dir)
    bench.callback(server.stop)
    return server


def measure(url, users, sizes, workers, seed, app_dir=None):
    """One run: a fresh gunicorn with `workers` web workers, the schedule, the figures."""
    import multiprocessing
    warmup = int(sizes.warmup * sizes.rate)
    requests = schedule(users, warmup + int(sizes.seconds * sizes.rate), seed)
    with streams.Bench(f"inbox-{workers}") as bench:
        bench.start_redis()
        bench.db = types.SimpleNamespace(url=url)
        server = start_service(bench, workers, app_dir)
        log(f"{workers} web worker(s) (pids {server.worker_pids()}): {len(requests) - warmup} requests at "
            f"{sizes.rate:g}/s after {warmup} warm-up ones")
        ctx = multiprocessing.get_context("spawn")
        pipe, child = ctx.Pipe()
        proc = ctx.Process(target=client_main, daemon=True, args=(
            child, server.port, [r[2] for r in requests], sizes.rate, warmup, sizes.connections))
        bench.callback(lambda: (proc.kill(), proc.join()))
        observer = connect(url)
        bench.callback(observer.close)
        load0 = os.getloadavg()[0]
        proc.start()
        child.close()
        message = _receive(pipe, proc, 60)
        if message[0] != "measure":
            raise RuntimeError(f"load process: {message}")
        web0, pg0, blocks0 = server.workers_cpu(), _backend_cpu(observer), _blocks(observer)
        ticks0, writes0 = _machine_ticks(), _backend_writes(observer)
        message = _receive(pipe, proc, sizes.seconds + 60)
        if message[0] != "done":
            raise RuntimeError(f"load process: {message[1]}")
        web1, pg1, ticks1 = server.workers_cpu(), _backend_cpu(observer), _machine_ticks()
        time.sleep(1.2)              # backends publish their block counters at most once a second
        blocks1, writes1 = _blocks(observer), _backend_writes(observer)
        load1 = os.getloadavg()[0]
        result = message[1]
    measured = requests[warmup:]
    done = [(lat, status, kind, cls) for (lat, status), (kind, cls, _) in zip(result["results"], measured)]
    ok = [lat for lat, status, _, _ in done if status == 200]
    count = len(done)
    hits, reads = blocks1[0] - blocks0[0], blocks1[1] - blocks0[1]
    out = dict(_summary([lat for lat, *_ in done]))
    out.update({
        "workers": workers, "requests": count, "ok": len(ok),
        "errors": count - len(ok), "error_kinds": result["errors"],
        "statuses": dict(collections.Counter(status for _, status, _, _ in done)),
        "achieved_rate": (count - 1) / result["send_seconds"] if result["send_seconds"] else None,
        "late_sends": result["late"], "connections_opened": result["opened"], "reconnects": result["reconnects"],
        "web_cpu_ms_per_request": (web1 - web0) / count * 1000,
        "web_cpu_share": (web1 - web0) / result["send_seconds"],
        "pg_cpu_ms_per_request": sum(cpu - pg0.get(pid, 0.0) for pid, cpu in pg1.items()) / count * 1000,
        "client_cpu_s": result["cpu"], "client_cpu_ms_per_request": result["cpu"] / count * 1000,
        "shared_buffers_hit_ratio": hits / (hits + reads) if hits + reads else None,
        "blocks_read_per_request": reads / count,
        "by_kind": {MIX[k][0]: _summary([lat for lat, _, kind, _ in done if kind == k]) for k in range(len(MIX))},
        "by_size": {CLASSES[c][1]: _summary([lat for lat, _, _, cls in done if cls == c]) for c in range(len(CLASSES))},
        "loadavg": [load0, load1], "machine": _machine_share(ticks0, ticks1),
        "backend_buffer_writes": writes1 - writes0,
        "max_ms_per_second": [round(max(lat for lat, *_ in done[i:i + int(sizes.rate)]) * 1000, 1)
                              for i in range(0, count, int(sizes.rate))],
    })
    return out


def benchmark(sizes, workers=(1, 2), rebuild=False, explain=True, app_dir=None):
    """Everything: the cached database, its description, the plans, one run per worker count."""
    server = Server(os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"))
    try:
        url, meta = cached_database(server, sizes, rebuild)
    finally:
        server.close()
    report = {"sizes": sizes.__dict__, "meta": meta, "database": describe(url), "machine": streams.machine()}
    report["plans"] = plans(url) if explain else []
    users = load_users(url)
    report["runs"] = [measure(url, users, sizes, count, seed=count, app_dir=app_dir) for count in workers]
    return report


# ============================================================ the report


def gb(value):
    return "?" if value is None else f"{value / 2 ** 30:.2f} GB"


def ms(value):
    return "—" if value is None else f"{value:.1f}"


def pct(ratio):
    return "—" if ratio is None else f"{ratio * 100:.1f} %"


def render(report):
    """The report as text (markdown-friendly): database, plans, runs."""
    db, meta, sizes = report["database"], report["meta"], report["sizes"]
    rels = db["relations"]
    table = next(r for r in rels if r["name"] == "notifications")
    indexes = [r for r in rels if r is not table]
    cached = [r["cached"] for r in rels]
    total = sum(r["bytes"] for r in rels)
    lines = [
        f"database: {sizes['notifications']:,} notifications of {sizes['users']:,} users, {gb(db['database_bytes'])} "
        f"(table {gb(table['bytes'])}, {len(indexes)} indexes {gb(sum(r['bytes'] for r in indexes))}); built "
        f"{meta['built_at']} in {meta['build_seconds']} s"
        + (f", migrated forward {meta['migrated_forward']} (s)" if meta.get("migrated_forward") else ""),
        f"users: {', '.join(f'{k}: {v:,}' for k, v in db['users_by_size'].items())} notifications each; heaviest "
        f"{db['heaviest_user']:,}, median {db['median_user']:,}; unread {db['unread']:,}, deleted {db['deleted']:,}, "
        f"hidden (in_app false) {db['hidden']:,}, of no customer {db['no_customer']:,}; {db['events']} events",
        f"cache: shared_buffers {db['shared_buffers']}; the OS page cache held "
        + ("?" if None in cached else f"{gb(sum(cached))} of the {gb(total)} of table + indexes") +
        f" before the runs (RAM {gb(db['ram_bytes'])})",
        "",
        "indexes: " + ", ".join(f"{r['name']} {gb(r['bytes'])}" for r in indexes),
    ]
    if report["plans"]:
        lines += ["", "EXPLAIN (ANALYZE, BUFFERS) of every statement GET /v1/notifications runs:"]
        for p in report["plans"]:
            verdict = "; ".join(p["problems"]) or "index scans only"
            lines += ["", f"-- {p['user']} user ({p['notifications']:,} notifications), {p['use']}, statement "
                          f"{p['statement']}: {ms(p['ms'])} ms, {verdict}", p["sql"], p["plan"]]
    lines += ["", "| web workers | requests | p50 / p95 / p99 / max ms | errors | achieved rate | web CPU per request "
                  "| PostgreSQL CPU per request | load generator CPU | shared_buffers hits | load average |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["runs"]:
        lines.append(
            f"| {r['workers']} | {r['requests']:,} | {ms(r['p50_ms'])} / {ms(r['p95_ms'])} / {ms(r['p99_ms'])} / "
            f"{ms(r['max_ms'])} | {r['errors']} | {r['achieved_rate']:.1f}/s | {r['web_cpu_ms_per_request']:.2f} ms "
            f"({r['web_cpu_share'] * 100:.0f} % of a core) | {r['pg_cpu_ms_per_request']:.2f} ms | "
            f"{r['client_cpu_s']:.1f} s ({r['client_cpu_ms_per_request']:.2f} ms/request) | "
            f"{pct(r['shared_buffers_hit_ratio'])} "
            f"({r['blocks_read_per_request']:.1f} reads/request) | {r['loadavg'][0]:.1f} → {r['loadavg'][1]:.1f} |")
    for r in report["runs"]:
        parts = [f"{k} p50 {ms(v.get('p50_ms'))} / p99 {ms(v.get('p99_ms'))} ms (n={v['count']})"
                 for k, v in r["by_kind"].items()]
        sizes_ = [f"{k} {ms(v.get('p99_ms'))} ms (n={v['count']})" for k, v in r["by_size"].items()]
        lines.append(f"- {r['workers']} worker(s): {'; '.join(parts)}. p99 by the user's stored notifications: "
                     f"{'; '.join(sizes_)}. {r['late_sends']} sends > 5 ms late, {r['connections_opened']} "
                     f"connections, {r['reconnects']} reconnects, statuses {r['statuses']}; the machine's CPU "
                     f"{pct(r['machine']['busy'])} busy (everyone), {pct(r['machine']['iowait'])} I/O wait, "
                     f"{r['backend_buffer_writes']:,} dirty buffers written by PostgreSQL backends (server-wide)"
                     + (f", errors {r['error_kinds']}" if r["error_kinds"] else "") + ".")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1,000,000 notifications of 10,000 users")
    parser.add_argument("--notifications", type=int)
    parser.add_argument("--users", type=int)
    parser.add_argument("--rate", type=float, help="requests per second (200)")
    parser.add_argument("--seconds", type=float, help="measured seconds (30; --quick 15)")
    parser.add_argument("--workers", default="1,2", help="web worker counts to run, comma-separated")
    parser.add_argument("--rebuild", action="store_true", help="load the cached database again")
    parser.add_argument("--drop", action="store_true", help="remove the cached database of this size and exit")
    parser.add_argument("--no-explain", action="store_true")
    parser.add_argument("--explain-only", action="store_true", help="build or reuse, print the plans, no run")
    parser.add_argument("--json", help="also write the whole report as JSON here")
    parser.add_argument("--app-dir", help="serve the code of this directory (another checkout) instead")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # unwind: stop the servers
    streams.raise_nofile()
    sizes = QUICK if args.quick else FULL
    for field in ("notifications", "users", "rate", "seconds"):
        if getattr(args, field):
            sizes = replace(sizes, **{field: getattr(args, field)})
    if args.drop:
        server = Server(os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"))
        for name in server.databases(cache_prefix(sizes)):
            log(f"dropping {name}")
            server.drop(name)
        server.close()
        return
    workers = () if args.explain_only else tuple(int(w) for w in args.workers.split(",") if w.strip())
    report = benchmark(sizes, workers, rebuild=args.rebuild, explain=not args.no_explain, app_dir=args.app_dir)
    print(render(report))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(report, out, indent=1, default=str)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        streams.log("interrupted")
        sys.exit(130)
