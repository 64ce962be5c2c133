"""The database behind bench/inbox.py: 10 M notifications loaded with set-based SQL, cached.

Built on the PostgreSQL server of DATABASE_URL with the repository's migrations, loaded week by
week in time order (INSERT ... SELECT ... generate_series), its indexes rebuilt after the load,
VACUUM ANALYZE; kept under a name holding the size and a hash of migrations_sql/ and reused by
the next run, or migrated forward when only new migrations came since (bench/README.md).
"""
import collections
import hashlib
import io
import json
import math
import os
import random
import statistics
import subprocess
import time
import uuid

from bench.measure import log
from devtools.services import REPO_ROOT
from testkit.database import with_dbname

ROOT = str(REPO_ROOT)
CLASSES = ((0, "< 100"), (100, "100-999"), (1000, ">= 1,000"))   # users by stored notifications
EVENT_WEIGHTS = {"message_received": 30, "mention": 8, "task_assigned": 10, "task_due": 8,
                 "task_completed": 8, "payment_received": 15, "payment_failed": 3,
                 "login_alert": 12, "password_changed": 2}   # an event not listed: 5


def _short(number):
    for unit, size in (("m", 1_000_000), ("k", 1_000)):
        if number >= size and number % size == 0:
            return f"{number // size}{unit}"
    return str(number)


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
        self.admin = psycopg2.connect(with_dbname(url, "postgres"))
        self.admin.autocommit = True

    def url_of(self, name):
        return with_dbname(self.url, name)

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
    if meta is not None and not meta.get("partition_span"):
        log(f"the cached database {name} has an unpartitioned `notifications` (migrated forward): built again")
        server.drop(name)
        existing.remove(name)
        meta = None
    if meta is None:
        meta = _migrate_forward(server, existing, name, migrations)
    if meta is None:
        meta = build(server, sizes, name, migrations)
    for other in server.databases(cache_prefix(sizes)):   # one cached copy per size
        if other != name:
            log(f"dropping the stale cached database {other}")
            server.drop(other)
    _grant(server.url_of(name))
    return server.url_of(name), meta


def _grant(url):
    """The application role the service connects as (testkit's), granted its rights as the release
    does (`migrate` alone grants nothing); idempotent, so every run makes sure of it."""
    from app.migrate import grant_application_role
    from testkit.database import as_app_role
    grant_application_role(url, as_app_role(url), echo=lambda *_: None)


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
            if not is_partitioned(cur):     # 0026 converts only an empty table: this one kept its rows
                conn.close()
                log(f"the cached database {other}, migrated forward, has an unpartitioned `notifications`"
                    " (0026 leaves a table with rows as it is): not used, built again instead")
                server.drop(wip)
                return None
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
MONTHS = 12               # partitions of the history: span = ceil(notifications / 12), about a month each


# One slice (a week) of every user's notifications, in time order (so `seq` follows `created_at`
# and a user's rows lie scattered over the table as a year of real inserts leaves them). User u's
# i-th of n notifications falls at i/n of the year from %(start)s; slice `part` of `parts` takes
# the i of its share. {seq}: the column's default (the sequence), or explicit values (old rows).
LOAD_ROWS = """
INSERT INTO {table} ({seq_column}id, user_id, customer_id, type, event, title, content, link_url, link_text,
                     rec_type, rec_id, read_at, created_at, deleted_at, in_app, trigger_id)
SELECT {seq_value}gen_random_uuid(), user_id,
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
             %(start)s::timestamptz + (i - random()) / u.n * interval '365 days' AS ts
      FROM bench_inbox_users u,
           generate_series(u.n * %(part)s / %(parts)s + 1, u.n * (%(part)s + 1) / %(parts)s) i
      OFFSET 0) s
ORDER BY ts
"""


def load_rows(cur, table, part, parts, start, end, first_seq=None):
    """Insert slice `part` of `parts` of every user's year from `start` (the rows' `seq` from the
    sequence, or numbered from `first_seq` in time order)."""
    from psycopg2 import sql
    groups, events = _events()
    explicit = first_seq is not None
    statement = sql.SQL(LOAD_ROWS).format(
        table=sql.Identifier(table), seq_column=sql.SQL("seq, " if explicit else ""),
        seq_value=sql.SQL("%(first_seq)s - 1 + row_number() OVER (ORDER BY ts), " if explicit else ""))
    cur.execute(statement, {"groups": groups, "events": events, "nevents": len(events), "end": end,
                            "start": start, "part": part, "parts": parts, "first_seq": first_seq})


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
    # a partitioned table's index is defined `ON ONLY` the parent (pg_indexes): recreated that way it
    # would be an invalid index of the parent alone; without ONLY it is built on every partition too
    restore += [sql.SQL(definition.replace(" ON ONLY ", " ON ", 1)) for _, definition in indexes]
    restore += [sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} ").format(sql.Identifier(rel), sql.Identifier(name))
                + sql.SQL(definition) for rel, name, definition in foreign]
    return restore


def is_partitioned(cur):
    cur.execute("SELECT EXISTS (SELECT 1 FROM pg_partitioned_table WHERE partrelid = 'notifications'::regclass)")
    return cur.fetchone()[0]


def month_span(sizes):
    """Values of `seq` per partition: a twelfth of the rows, so a partition is about a month of history."""
    return math.ceil(sizes.notifications / MONTHS)


def _monthly_partitions(cur, sizes):
    """Replace the migration's empty partitions (ten million values of `seq` each, of every table of
    the history) by monthly ones, made by the service's own function, enough ahead to hold every
    row; returns how many."""
    from psycopg2 import sql
    cur.execute("SELECT p.partition::text FROM history_tables() t, history_partitions(t.tbl::regclass) p")
    for (name,) in cur.fetchall():
        cur.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(name)))   # empty: a new database
    span = month_span(sizes)
    cur.execute("SELECT history_partitions_ensure('notifications', %s, %s)",
                (span, math.ceil(sizes.notifications / span)))
    return cur.fetchone()[0]


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
    end = time.strftime("%Y-%m-%dT00:00:00Z", time.gmtime())
    year_start = time.strftime("%Y-%m-%dT00:00:00Z", time.gmtime(time.time() // 86400 * 86400 - 365 * 86400))
    with conn.cursor() as cur:
        if not is_partitioned(cur):
            raise RuntimeError("the migrations left `notifications` unpartitioned (migration 0026 missing?)")
        cur.execute("SET synchronous_commit = off; SET maintenance_work_mem = '1GB'; SET work_mem = '512MB'")
        cur.execute("CREATE TABLE bench_inbox_users (user_no integer PRIMARY KEY, user_id uuid NOT NULL UNIQUE,"
                    " n integer NOT NULL, customers uuid[] NOT NULL, unread real NOT NULL)")
        cur.copy_expert("COPY bench_inbox_users FROM STDIN", _users_copy(sizes))
        partitions = _monthly_partitions(cur, sizes)
        log(f"  {partitions} partitions of {month_span(sizes):,} values of seq (about a month each)")
        before = _index_definitions(cur)
        restore = _detach_indexes(cur, "notifications")
        for week in range(WEEKS):
            load_rows(cur, "notifications", week, WEEKS, year_start, end)
            if week % 4 == 3:
                log(f"  week {week + 1}/{WEEKS} loaded, {time.monotonic() - started:.0f} s")
        load_seconds = time.monotonic() - started
        for statement in restore:
            cur.execute(statement)
        if _index_definitions(cur) != before:
            raise RuntimeError("the rebuilt indexes differ from the migrated schema")
        cur.execute("SELECT (SELECT count(*) FROM pg_index WHERE indrelid = 'notifications'::regclass AND NOT indisvalid),"
                    " (SELECT count(*) FROM pg_partition_tree('notifications') WHERE isleaf)"
                    " * (SELECT count(*) FROM pg_index WHERE indrelid = 'notifications'::regclass),"
                    " (SELECT count(*) FROM pg_index i, pg_partition_tree(i.indexrelid) t"
                    "  WHERE i.indrelid = 'notifications'::regclass AND t.isleaf)")
        invalid, expected, leaves = cur.fetchone()
        if invalid or leaves != expected:
            raise RuntimeError(f"the rebuilt indexes are incomplete: {invalid} invalid, {leaves} of {expected}"
                               " indexes of partitions")
        log(f"  indexes rebuilt, {time.monotonic() - started:.0f} s; VACUUM ANALYZE")
        cur.execute("VACUUM ANALYZE")
        contents = _contents(cur)
        if contents["stored"] != sizes.notifications:
            raise RuntimeError("the load did not store the expected number of notifications")
        meta = {"notifications": sizes.notifications, "users": sizes.users, "migrations": migrations,
                "partition_span": month_span(sizes), "partitions": partitions,
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
        # the table and each of its indexes, summed over the partitions (the leaves of their trees)
        cur.execute("SELECT 'notifications', t.relid, pg_relation_size(t.relid), pg_relation_filepath(t.relid)"
                    " FROM pg_partition_tree('notifications') t WHERE t.isleaf UNION ALL"
                    " SELECT c.relname, t.relid, pg_relation_size(t.relid), pg_relation_filepath(t.relid)"
                    " FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid, pg_partition_tree(i.indexrelid) t"
                    " WHERE i.indrelid = 'notifications'::regclass AND t.isleaf")
        leaves = cur.fetchall()
        cur.execute("SELECT value FROM bench_inbox_meta WHERE key = 'contents'")
        found = cur.fetchone()
        contents = found[0] if found else _contents(cur)
        cur.execute("SELECT count(*) FROM history_compacted WHERE done_at IS NOT NULL AND rows > 0")
        compacted = cur.fetchone()[0]
    conn.close()
    sizes, cached, partitions = collections.Counter(), {}, set()
    for relname, relid, size, path in leaves:
        sizes[relname] += size
        held = _page_cache_bytes(os.path.join(data_dir, path))
        cached[relname] = None if held is None or cached.get(relname, 0) is None else cached.get(relname, 0) + held
        if relname == "notifications":
            partitions.add(relid)
    rels = [{"name": name, "bytes": size, "cached": cached[name]} for name, size in sizes.most_common()]
    return dict(contents, database_bytes=db_bytes, shared_buffers=shared_buffers, relations=rels,
                partitions=len(partitions), compacted=compacted, ram_bytes=_ram_bytes())


def _contents(cur):
    """What the load stored (one pass over the table: kept in bench_inbox_meta, not redone per run)."""
    cur.execute("SELECT n, count(*) FROM (SELECT CASE WHEN n >= 1000 THEN 1000 WHEN n >= 100 THEN 100 ELSE 0 END n"
                " FROM bench_inbox_users) s GROUP BY 1 ORDER BY 1")
    classes = dict(cur.fetchall())
    cur.execute("SELECT max(n), percentile_disc(0.5) WITHIN GROUP (ORDER BY n) FROM bench_inbox_users")
    heaviest, median = cur.fetchone()
    cur.execute("SELECT count(*), count(*) FILTER (WHERE read_at IS NULL), count(*) FILTER (WHERE deleted_at IS NOT NULL),"
                " count(*) FILTER (WHERE NOT in_app), count(*) FILTER (WHERE customer_id IS NULL),"
                " count(DISTINCT type || '.' || event) FROM notifications")
    stored, unread, deleted, hidden, no_customer, events = cur.fetchone()
    contents = {"users_by_size": {label: classes.get(low, 0) for low, label in CLASSES},
                "heaviest_user": heaviest, "median_user": median, "stored": stored, "unread": unread, "deleted": deleted,
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


# ============================================================ a month to drop (--drop-partition)

OLD_MONTH = "notifications_bench_old_month"
UNREAD_OF = """SELECT notification_unread_add(array_agg(user_id), array_agg(customer_id), array_agg(type), array_agg(n))
FROM (SELECT user_id, customer_id, type, count(*)::integer AS n FROM {} WHERE deleted_at IS NULL AND in_app
      AND read_at IS NULL GROUP BY 1, 2, 3) d"""


def add_old_month(url, sizes, compact=True):
    """A month of history older than the loaded year, for retention to drop under load, without
    touching the cached rows: every user's share of a month (a twelfth of their notifications,
    in time order) in a partition below the loaded ones, seq -span .. -1, filled as a plain table,
    then attached with its indexes built by the ATTACH (a CHECK of the range spares the scan), its
    unread notifications added to the counters (as the insert trigger would have), VACUUM
    ANALYZEd and checkpointed; then compacted as the worker would have once it closed
    (`compact_history`), and its files taken out of the page cache (`_evict`). One left by an interrupted run is dropped first, by the service's own
    functions. Returns (rows, seconds)."""
    from psycopg2 import sql
    started = time.monotonic()
    span = month_span(sizes)
    table = sql.Identifier(OLD_MONTH)
    conn = connect(url)
    _drop_old_month(conn)
    end = time.strftime("%Y-%m-%dT00:00:00Z", time.gmtime())
    start = time.strftime("%Y-%m-%dT00:00:00Z", time.gmtime(time.time() // 86400 * 86400 - 365 * 86400 * 13 / 12))
    with conn.cursor() as cur:
        cur.execute("SET synchronous_commit = off; SET maintenance_work_mem = '1GB'; SET work_mem = '512MB'")
        cur.execute(sql.SQL("CREATE TABLE {} (LIKE notifications INCLUDING DEFAULTS INCLUDING CONSTRAINTS"
                            " INCLUDING STORAGE INCLUDING COMPRESSION)").format(table))
        load_rows(cur, OLD_MONTH, 0, MONTHS, start, end, first_seq=-span)
        cur.execute(sql.SQL("ALTER TABLE {} ADD CONSTRAINT bench_old_month_range CHECK (seq >= %s AND seq < 0)")
                    .format(table), (-span,))
        cur.execute(sql.SQL("ALTER TABLE notifications ATTACH PARTITION {} FOR VALUES FROM (%s) TO (0)")
                    .format(table), (-span,))
        cur.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT bench_old_month_range").format(table))
        cur.execute(sql.SQL(UNREAD_OF).format(table))
        cur.execute(sql.SQL("VACUUM ANALYZE {}").format(table))
        cur.execute("CHECKPOINT")   # a month that old was written out long ago: not the run's I/O
        cur.execute(sql.SQL("SELECT count(*) FROM {}").format(table))
        rows = cur.fetchone()[0]
    conn.close()
    if compact:
        compact_history(url, [OLD_MONTH])
    _evict(url, OLD_MONTH)
    return rows, time.monotonic() - started


def _evict(url, table):
    """Take `table`'s files (heap and indexes, checkpointed: clean pages) out of the OS page cache,
    as a month written a year ago would be; what they had pushed out stays out."""
    conn = connect(url)
    with conn.cursor() as cur:
        cur.execute("SELECT current_setting('data_directory')")
        data_dir = cur.fetchone()[0]
        cur.execute("SELECT pg_relation_filepath(c) FROM (SELECT %s::regclass AS c UNION ALL"
                    " SELECT indexrelid::regclass FROM pg_index WHERE indrelid = %s::regclass) r", (table, table))
        paths = [os.path.join(data_dir, row[0]) for row in cur.fetchall()]
    conn.close()
    for path in paths:
        for segment in [path] + [f"{path}.{i}" for i in range(1, 1000) if os.path.exists(f"{path}.{i}")]:
            fd = os.open(segment, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def compact_history(url, names=None):
    """The closed partitions (or `names`) compacted as a worker's pass does (app/history/compaction.py,
    the shipped default), each VACUUM ANALYZEd as autovacuum would soon after, then a CHECKPOINT;
    returns {name: seconds}. A cached database keeps its compacted partitions."""
    import psycopg2
    from psycopg2 import sql
    from app.history import compaction
    conn = psycopg2.connect(url)
    took = {}
    try:
        for name in names or compaction.pending(conn):
            started = time.monotonic()
            rows = compaction.compact(conn, name)
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(name)))
            conn.autocommit = False
            took[name] = round(time.monotonic() - started, 1)
            log(f"  {name}: {rows:,} notifications compacted in {took[name]:.0f} s")
        if took:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("CHECKPOINT")
    finally:
        conn.close()
    return took


def _drop_old_month(conn):
    """Detach and drop a month left by an interrupted run (with its counters), as retention would."""
    from app.history import partitions
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass(%s) IS NOT NULL, EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid ="
                    " to_regclass(%s))", (OLD_MONTH, OLD_MONTH))
        exists, attached = cur.fetchone()
    if not exists:
        return
    conn.autocommit = False
    if attached and not partitions.detach(conn, OLD_MONTH):
        raise RuntimeError(f"could not detach the leftover {OLD_MONTH}")
    partitions.finish_detached(conn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {OLD_MONTH}")   # never attached: no counters to take off
