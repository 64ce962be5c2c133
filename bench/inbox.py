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
import signal
import sys
import time
import uuid
from dataclasses import dataclass, replace

from bench.inbox_data import CLASSES, Server, cache_prefix, cached_database, connect, describe
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


def measure(url, users, sizes, workers, seed, app_dir=None):
    """One run: a fresh gunicorn with `workers` web workers, the schedule, the figures."""
    import multiprocessing
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
    server = Server(os.environ.get("DATABASE_URL", SERVER_URL))
    try:
        url, meta = cached_database(server, sizes, rebuild)
    finally:
        server.close()
    report = {"sizes": sizes.__dict__, "meta": meta, "database": describe(url), "machine": machine()}
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
    raise_nofile()
    sizes = QUICK if args.quick else FULL
    for field in ("notifications", "users", "rate", "seconds"):
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
    report = benchmark(sizes, workers, rebuild=args.rebuild, explain=not args.no_explain, app_dir=args.app_dir)
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
