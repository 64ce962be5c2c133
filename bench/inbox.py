"""The inbox at 10 M notifications: GET /v1/notifications at a fixed 200 requests/s.

    python -m bench.inbox               # 10,000,000 notifications of 100,000 users (first run: a long load)
    python -m bench.inbox --quick       # 1,000,000 of 10,000
    python -m bench.inbox --rebuild     # load the database again;  --drop: remove the cached one

The database (bench/inbox_data.py): built on the PostgreSQL server of DATABASE_URL (default
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
import bisect
import collections
import json
import os
import random
import re
import signal
import statistics
import sys
import time
import uuid
from dataclasses import dataclass, replace

from bench.inbox_data import (CLASSES, OLD_MONTH, Server, add_old_month, cache_prefix, cached_database,
                              compact_history, connect, describe)
from bench.load import get_request, open_loop_main
from bench.measure import log, machine, percentile, raise_nofile
from bench.rig import SERVER_URL, Bench
from devtools.services import REPO_ROOT
from testkit.identity import JWT_SECRET
from testkit.processes import cpu_seconds

TARGET_P99_MS = 20.0
LIMIT = 50                      # the endpoint's default page size, what clients use
MIX = (("first", 0.45), ("unread", 0.20), ("customer", 0.20), ("deep", 0.15))
CLAIM_SHARE = 0.5               # requests whose token carries the user's `customers` claim


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




# ============================================================ the plans


class _Explaining:
    """A connection stand-in for the repository: each statement it runs is first run under
    EXPLAIN (ANALYZE, BUFFERS), then for real, so the plans are of the endpoint's own SQL."""

    def __init__(self, conn):
        self.conn, self.plans, self.prepared = conn, [], {}

    def cursor(self, *args, **kwargs):
        return _ExplainingCursor(self, self.conn.cursor(*args, **kwargs))


class _ExplainingCursor:
    def __init__(self, owner, cur):
        self._owner, self._cur = owner, cur

    def execute(self, query, params=None):
        """The statement explained, then run. The service's prepared statements (db.execute_prepared):
        a PREPARE just runs (its text is what the plan is shown with); `SET LOCAL ...; EXECUTE`
        sets the plan mode, then EXPLAIN EXECUTE shows the generic plan the service runs."""
        statement = self._cur.mogrify(query, params).decode()
        if statement.startswith("PREPARE "):
            name, _, text = statement.removeprefix("PREPARE ").partition(" AS ")
            self._owner.prepared[name] = text
            return self._cur.execute(query, params)
        setting, _, explained = statement.rpartition("; ")
        with self._owner.conn.cursor() as plain:
            if setting:
                plain.execute(setting)
            plain.execute("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + explained)
            plan = "\n".join(row[0] for row in plain.fetchall())
        name = explained.removeprefix("EXECUTE ").partition("(")[0]
        shown = f"{self._owner.prepared[name]} -- generic plan, run as {explained}" if name in self._owner.prepared \
            else statement
        self._owner.plans.append({"sql": shown, "plan": plan})
        return self._cur.execute(query, params)

    def __getattr__(self, name):
        return getattr(self._cur, name)

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self._cur.close()


SMALL_PARTITION_ROWS = 1000     # a Seq Scan of a partition this small (the empty one ahead) is no problem


def plan_problems(plan, small=frozenset()):
    """What the brief forbids in an inbox plan: a sequential scan (but of a `small` partition:
    the planner rightly reads an empty one that way), or a sort (of a whole inbox)."""
    problems = []
    scanned = re.findall(r"Seq Scan on (\S+)", plan)
    if any(name not in small for name in scanned):
        problems.append("Seq Scan")
    if any(line.strip().lstrip("-> ").startswith("Sort ") for line in plan.splitlines()):
        problems.append("Sort")
    return problems


def partition_order(plan):
    """How the plan reads the partitions for the page: of the Append nodes whose children are scans
    of partitions, the first with its children in descending order of bounds (an ordered Append,
    newest first: it stops at the page's limit) gives 'newest first, K of N scans executed';
    None when no Append reads partitions in either order (e.g. a Sort above the Append)."""
    lines = plan.splitlines()
    for number, line in enumerate(lines):
        node = line.lstrip(" ->")
        if not node.startswith("Append"):
            continue
        depth = line.index("->") + 6 if "->" in line else len(line) - len(line.lstrip()) + 2
        children = []
        for child in lines[number + 1:]:
            arrow = child.find("->")
            if child.strip() and len(child) - len(child.lstrip()) < depth and (arrow < 0 or arrow < depth):
                break
            if arrow == depth:
                found = re.search(r"Scan (?:Backward )?using \S+ on (notifications_p\d+)", child)
                children.append((found.group(1) if found else None, "(never executed)" not in child))
        names = [name for name, _ in children]
        if len(names) > 1 and None not in names and names == sorted(names, reverse=True):
            return f"newest first, {sum(ran for _, ran in children)} of {len(children)} scans executed"
    return None


def _small_partitions(conn):
    with conn.cursor() as cur:
        cur.execute("SELECT c.relname FROM pg_partition_tree('notifications') t JOIN pg_class c ON c.oid = t.relid"
                    " WHERE t.isleaf AND c.reltuples < %s", (SMALL_PARTITION_ROWS,))
        return frozenset(row[0] for row in cur.fetchall())


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
    small = _small_partitions(conn)
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
                            "problems": plan_problems(statement["plan"], small),
                            "partitions": partition_order(statement["plan"]),
                            "ms": _plan_ms(statement["plan"]),
                            "planning_ms": _plan_ms(statement["plan"], "Planning Time:")})
    # not this endpoint's, but the same table by user: where a stream without a cursor starts
    from app.streams import replay
    recorder = _Explaining(conn)
    replay.latest_seq(recorder, uuid.uuid4())
    conn.rollback()
    out += [{"user": "new", "notifications": 0, "use": "stream opened without a cursor (replay.latest_seq)",
             "statement": 1, "sql": p["sql"], "plan": p["plan"], "problems": plan_problems(p["plan"], small),
             "partitions": partition_order(p["plan"]),
             "ms": _plan_ms(p["plan"]), "planning_ms": _plan_ms(p["plan"], "Planning Time:")}
            for p in recorder.plans]
    conn.close()
    return out


def _plan_ms(plan, label="Execution Time:"):
    for line in plan.splitlines():
        if line.startswith(label):
            return float(line.split()[2])
    return None


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
        token = jwt.encode(claims, JWT_SECRET, algorithm="HS256")
        out.append((kinds.index(kind), size_class(n), get_request(path, token)))
    return out


def _backend_cpu(conn):
    """{pid: CPU seconds} of the database's client backends (the pool's connections)."""
    with conn.cursor() as cur:
        cur.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                    " AND backend_type = 'client backend' AND pid <> pg_backend_pid()")
        return {pid: cpu_seconds(pid) for (pid,) in cur.fetchall()}


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
    return {"count": len(ms), "p50_ms": percentile(ms, 0.50), "p95_ms": percentile(ms, 0.95),
            "p99_ms": percentile(ms, 0.99), "max_ms": max(ms)}


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
    return bench.start_ours(workers=workers, worker_connections=1000, cwd=app_dir or REPO_ROOT,
                            RATE_LIMITS_ENABLED="true")


def _maintain(url, name, at, out, action="drop"):
    """At monotonic time `at`, drop partition `name` as retention does (app/history/partitions.py:
    `detach`, 50 ms lock_timeout and retried, then `finish_detached`: counters, dependents, DROP),
    or compact it as a worker's pass does (app/history/compaction.py: copy, catch-up, swap), on a
    connection of its own as the owner; record when each step ran and how long it took
    (`step_end`: the end of the detach, or of the copy)."""
    import psycopg2
    from app.history import compaction, partitions
    try:
        conn = psycopg2.connect(url)
        time.sleep(max(0.0, at - time.monotonic()))
        out["start"] = time.monotonic()
        if action == "drop":
            out["detached"] = partitions.detach(conn, name)
            out["step_end"] = time.monotonic()
            out["held"] = partitions.finish_detached(conn).get(name)
        else:
            out["held"] = compaction.compact(conn, name, after_copy=lambda: out.__setitem__("step_end", time.monotonic()))
        out["end"] = time.monotonic()
        conn.close()
    except Exception as exc:          # reported with the run's figures
        out["error"] = f"{type(exc).__name__}: {exc}"
        out.setdefault("end", time.monotonic())


def _drop_figures(drop, measured_from, done, rate):
    """The drop's (or compaction's) durations and the latency of the requests scheduled while it
    ran (and in the second after)."""
    if "start" not in drop:
        return {"error": drop.get("error", "it never started")}
    first = max(0, int((drop["start"] - measured_from) * rate))
    last = int((drop["end"] - measured_from) * rate) + 1
    after = last + int(rate)
    window = [lat for lat, *_ in done[first:last]]
    return {"detached": drop.get("detached"), "held": drop.get("held"), "error": drop.get("error"),
            "at_s": drop["start"] - measured_from,
            "action": drop["action"],
            "detach_ms": (drop["step_end"] - drop["start"]) * 1000 if "step_end" in drop else None,
            "finish_ms": (drop["end"] - drop["step_end"]) * 1000 if "step_end" in drop else None,
            "during": _summary(window),
            "second_after": _summary([lat for lat, *_ in done[last:after]])}


def measure(url, users, sizes, workers, seed, app_dir=None, drop_partition=None, action="drop"):
    """One run: a fresh gunicorn with `workers` web workers, the schedule, the figures; with
    `drop_partition` (a partition's name), that partition is dropped (or with `action` "compact",
    compacted) a third into the measured run."""
    import multiprocessing
    import threading
    warmup = int(sizes.warmup * sizes.rate)
    requests = schedule(users, warmup + int(sizes.seconds * sizes.rate), seed)
    with Bench(f"inbox-{workers}") as bench:
        bench.start_redis()
        bench.use_database(url)
        server = start_service(bench, workers, app_dir)
        log(f"{workers} web worker(s) (pids {server.worker_pids()}): {len(requests) - warmup} requests at "
            f"{sizes.rate:g}/s after {warmup} warm-up ones")
        ctx = multiprocessing.get_context("spawn")
        pipe, child = ctx.Pipe()
        proc = ctx.Process(target=open_loop_main, daemon=True, args=(
            child, server.port, [r[2] for r in requests], sizes.rate, warmup, sizes.connections))
        bench.callback(lambda: (proc.kill(), proc.join()))
        observer = connect(url)
        bench.callback(observer.close)
        load0 = os.getloadavg()[0]
        proc.start()
        child.close()
        message = _receive(pipe, proc, sizes.warmup + 60)
        if message[0] != "measure":
            raise RuntimeError(f"load process: {message}")
        measured_from, drop = time.monotonic(), {"action": action}   # ~ when the first measured request was due
        if drop_partition:
            dropper = threading.Thread(target=_maintain, daemon=True, args=(
                url, drop_partition, measured_from + sizes.seconds / 3, drop, action))
            dropper.start()
        web0, pg0, blocks0 = server.workers_cpu(), _backend_cpu(observer), _blocks(observer)
        ticks0, writes0 = _machine_ticks(), _backend_writes(observer)
        message = _receive(pipe, proc, 3 * sizes.seconds + 120)   # a starved load process lags
        if message[0] != "done":
            raise RuntimeError(f"load process: {message[1]}")
        web1, pg1, ticks1 = server.workers_cpu(), _backend_cpu(observer), _machine_ticks()
        time.sleep(1.2)              # backends publish their block counters at most once a second
        blocks1, writes1 = _blocks(observer), _backend_writes(observer)
        load1 = os.getloadavg()[0]
        result = message[1]
        if drop_partition:
            dropper.join(sizes.seconds + 300)
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
        "drop": _drop_figures(drop, measured_from, done, sizes.rate) if drop_partition else None,
        "max_ms_per_second": [round(max(lat for lat, *_ in done[i:i + int(sizes.rate)]) * 1000, 1)
                              for i in range(0, count, int(sizes.rate))],
    })
    return out


def benchmark(sizes, workers=(1, 2), rebuild=False, explain=True, app_dir=None, repeat=1, drop_partition=False,
              compact=True, compact_partition=False):
    """Everything: the cached database, its closed partitions compacted as the worker does (unless
    not `compact`), its description, the plans, `repeat` runs per worker count (with
    `drop_partition`, each run first gets an old month to drop, see inbox_data.add_old_month; with
    `compact_partition`, one left in time order, compacted during the run)."""
    server = Server(os.environ.get("DATABASE_URL", SERVER_URL))
    try:
        url, meta = cached_database(server, sizes, rebuild)
    finally:
        server.close()
    if compact:
        compact_history(url)
    report = {"sizes": sizes.__dict__, "meta": meta, "database": describe(url), "machine": machine()}
    report["plans"] = plans(url) if explain else []
    users = load_users(url)
    report["runs"] = []
    for count in workers:
        for run in range(repeat):
            old = None
            if drop_partition or compact_partition:
                rows, seconds = add_old_month(url, sizes, compact and not compact_partition)
                log(f"{OLD_MONTH}: {rows:,} old notifications below the loaded ones, attached in {seconds:.0f} s;"
                    f" {'compacted' if compact_partition else 'dropped'} a third into the run")
                old = OLD_MONTH
            report["runs"].append(measure(url, users, sizes, count, seed=count + 100 * run, app_dir=app_dir,
                                          drop_partition=old, action="compact" if compact_partition else "drop"))
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
        f"(table {gb(table['bytes'])} in {db.get('partitions', 1)} partition(s), {db.get('compacted', 0)} of them"
        f" compacted, {len(indexes)} indexes "
        f"{gb(sum(r['bytes'] for r in indexes))}); built "
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
            if p.get("partitions"):
                verdict += f"; partitions {p['partitions']}"
            lines += ["", f"-- {p['user']} user ({p['notifications']:,} notifications), {p['use']}, statement "
                          f"{p['statement']}: {ms(p['ms'])} ms (planning {ms(p.get('planning_ms'))} ms), {verdict}",
                      p["sql"], p["plan"]]
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
    if len(report["runs"]) > len({r["workers"] for r in report["runs"]}):
        for workers in sorted({r["workers"] for r in report["runs"]}):
            runs = [r for r in report["runs"] if r["workers"] == workers]
            medians = {k: statistics.median(r[k] for r in runs) for k in ("p50_ms", "p95_ms", "p99_ms", "max_ms")}
            lines.append(f"| {workers}, median of {len(runs)} | {sum(r['requests'] for r in runs):,} | "
                         f"{ms(medians['p50_ms'])} / {ms(medians['p95_ms'])} / {ms(medians['p99_ms'])} / "
                         f"{ms(medians['max_ms'])} | {sum(r['errors'] for r in runs)} | | | | | | |")
    for r in report["runs"]:
        if r.get("drop"):
            d = r["drop"]
            steps = ("copy", "catch-up and swap") if d.get("action") == "compact" else ("detach", "finish")
            lines.append(
                f"- partition {d.get('action', 'drop')} ({r['workers']} worker(s)): "
                + (f"FAILED {d['error']}; " if d.get("error") else "")
                + (f"at {d['at_s']:.1f} s, {steps[0]} {ms(d['detach_ms'])} ms, {steps[1]} {ms(d['finish_ms'])} ms "
                   f"({d['held']:,} notifications); requests sent meanwhile: {d['during'].get('count', 0)}, "
                   f"p50 {ms(d['during'].get('p50_ms'))} / max {ms(d['during'].get('max_ms'))} ms; the second "
                   f"after: max {ms(d['second_after'].get('max_ms'))} ms; whole run max {ms(r['max_ms'])} ms, "
                   f"errors {r['errors']}" if "at_s" in d else ""))
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
    parser.add_argument("--warmup", type=float, help="seconds of requests before the measured ones (5; --quick 3)")
    parser.add_argument("--workers", default="1,2", help="web worker counts to run, comma-separated")
    parser.add_argument("--rebuild", action="store_true", help="load the cached database again")
    parser.add_argument("--drop", action="store_true", help="remove the cached database of this size and exit")
    parser.add_argument("--no-explain", action="store_true")
    parser.add_argument("--explain-only", action="store_true", help="build or reuse, print the plans, no run")
    parser.add_argument("--repeat", type=int, default=1, help="runs per worker count (medians reported)")
    parser.add_argument("--drop-partition", action="store_true",
                        help="add an old month below the loaded rows before each run, drop it a third into the run")
    parser.add_argument("--compact-partition", action="store_true",
                        help="add an old month in time order before each run, compact it a third into the run")
    parser.add_argument("--no-compact", action="store_true",
                        help="leave the closed partitions in time order (the worker compacts them: the shipped default)")
    parser.add_argument("--json", help="also write the whole report as JSON here")
    parser.add_argument("--app-dir", help="serve the code of this directory (another checkout) instead")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # unwind: stop the servers
    raise_nofile()
    sizes = QUICK if args.quick else FULL
    for field in ("notifications", "users", "rate", "seconds", "warmup"):
        if getattr(args, field):
            sizes = replace(sizes, **{field: getattr(args, field)})
    if args.drop:
        server = Server(os.environ.get("DATABASE_URL", SERVER_URL))
        for name in server.databases(cache_prefix(sizes)):
            log(f"dropping {name}")
            server.drop(name)
        server.close()
        return
    workers = () if args.explain_only else tuple(int(w) for w in args.workers.split(",") if w.strip())
    report = benchmark(sizes, workers, rebuild=args.rebuild, explain=not args.no_explain, app_dir=args.app_dir,
                       repeat=args.repeat, drop_partition=args.drop_partition, compact=not args.no_compact,
                       compact_partition=args.compact_partition)
    print(render(report))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(report, out, indent=1, default=str)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        log("interrupted")
        sys.exit(130)
