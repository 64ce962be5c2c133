"""Write-path benchmark: triggers accepted per second, notifications stored per second.

    python bench/write_path.py --users 10000 --triggers 10000

Starts its own Redis (devtools.services.redis_server), creates a fresh database
on the server of DATABASE_URL (default postgresql://postgres@127.0.0.1:5432/postgres),
migrates it, and measures:

  (a) triggers accepted per second by ONE gunicorn gevent web worker (the real
      gunicorn.conf.py, WEB_CONCURRENCY=1), loaded from a separate process
      holding --concurrency keep-alive connections (one thread and one
      http.client connection each); every trigger goes to one random user.
      The client's own CPU is reported, as is the web worker's.
  (b) notifications stored per second by ONE RQ worker (SimpleWorker, as
      `python -m workers` runs it) for one trigger to --users users;
  (c) the same worker draining the --triggers one-user triggers of (a): they
      woke one drain job (two when the wake flag expired during (a)), which
      stores them in batches; the jobs that ran are counted in the table.

The worker listens on the dispatch queue only: "stored" means stored,
published to the users' stream channels and the delivery rows written and
their jobs enqueued; sending the emails is the deliveries queue's work and is
not part of these figures. The event is chat/message_received (in-app +
email), the SPEC example's; (b') repeats (b) with task/task_due, an
in-app-only event, to show what enqueuing one email job per user costs.

Not a test: nothing is asserted beyond every request being a 202 and every
notification being stored; the table at the end is the result.
"""
import argparse
import http.client
import itertools
import json
import logging
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

API_KEY = "bench-api-key"
TRIGGER_PATH = "/v1/notifications/trigger"
TARGET_ACCEPTED = 1000     # triggers/s, one web worker
TARGET_STORED = 5000       # notifications/s, one RQ worker


def trigger_body(user_ids, group="chats", event="message_received"):
    return {"type": group, "event": event, "title": "Benchmark",
            "content": "Write path benchmark notification", "customer_id": "550e8400-e29b-41d4-a716-446655440000",
            "user_ids": [str(u) for u in user_ids], "rec_type": "chats",
            "rec_id": "789e4567-e89b-12d3-a456-426614174000"}


# ---------------------------------------------------------------- the load client (its own process)


def load_client(port, count, concurrency, warmup):
    """POST `warmup` + `count` one-user triggers over `concurrency` keep-alive connections.

    Prints one JSON line: timed requests, elapsed, statuses, latency percentiles, own CPU.
    """
    bodies = [json.dumps(trigger_body([uuid.uuid4()])).encode() for _ in range(warmup + count)]
    headers = {"Content-Type": "application/json", "X-API-Key": API_KEY}
    counter = itertools.count()
    latencies, statuses, errors = [], {}, []
    lock = threading.Lock()
    start_gate = threading.Barrier(concurrency + 1)
    timed_start = [None]

    def worker():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        own_lat, own_status = [], {}
        start_gate.wait()
        while True:
            i = next(counter)
            if i >= warmup + count:
                break
            if i == warmup:
                timed_start[0] = time.perf_counter()
            t0 = time.perf_counter()
            try:
                conn.request("POST", TRIGGER_PATH, body=bodies[i], headers=headers)
                response = conn.getresponse()
                response.read()
                status = response.status
                if response.getheader("Connection", "").lower() == "close":
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            except (OSError, http.client.HTTPException) as exc:
                status = type(exc).__name__
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            if i >= warmup:
                own_lat.append(time.perf_counter() - t0)
            own_status[status] = own_status.get(status, 0) + 1
        conn.close()
        with lock:
            latencies.extend(own_lat)
            for key, value in own_status.items():
                statuses[key] = statuses.get(key, 0) + value

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    start_gate.wait()
    begin = time.perf_counter()
    for thread in threads:
        thread.join()
    end = time.perf_counter()
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    timed_from = timed_start[0] or begin
    latencies.sort()

    def pct(p):
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000 if latencies else None

    print(json.dumps({
        "requests": len(latencies), "elapsed": end - timed_from, "statuses": {str(k): v for k, v in statuses.items()},
        "p50_ms": pct(0.50), "p99_ms": pct(0.99), "max_ms": latencies[-1] * 1000 if latencies else None,
        "mean_ms": statistics.fmean(latencies) * 1000 if latencies else None,
        "client_cpu": (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime),
        "client_wall": end - begin,
    }), flush=True)


# ---------------------------------------------------------------- services


def _admin_dsn(url, dbname):
    from psycopg2.extensions import make_dsn, parse_dsn
    params = parse_dsn(url)
    params["dbname"] = dbname
    return make_dsn(**params)


class Database:
    """A fresh, migrated database on DATABASE_URL's server; dropped at the end unless kept."""

    def __init__(self, server_url, keep=False):
        import psycopg2
        from app.migrate import migrate
        self.name = f"bench_write_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        self.keep = keep
        self.admin = psycopg2.connect(_admin_dsn(server_url, "postgres"))
        self.admin.autocommit = True
        with self.admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{self.name}"')
        self.url = _admin_dsn(server_url, self.name)
        migrate(self.url, echo=lambda *_: None)

    def scalar(self, sql, *args):
        import psycopg2
        conn = psycopg2.connect(self.url)
        try:
            with conn.cursor() as cur:
                cur.execute(sql, args)
                return cur.fetchone()[0]
        finally:
            conn.close()

    def drop(self):
        if self.keep:
            print(f"kept database {self.name}", file=sys.stderr)
            return
        with self.admin.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (self.name,))
            cur.execute(f'DROP DATABASE IF EXISTS "{self.name}"')
        self.admin.close()


def bench_queue_config(workdir):
    """queue.yaml with the per-API-key trigger budget raised to what a service sending this many
    triggers would be given: 5,000/second (the default, 100/second, would refuse most of them).

    The limiter stays on: it takes that budget in slices of 50 (app/ratelimit/windows.py), one Redis
    round trip each, and that is part of the measured path.
    """
    import yaml
    with open(os.path.join(ROOT, "queue.yaml")) as handle:
        data = yaml.safe_load(handle)
    if "rate_limits" in data:
        data["rate_limits"]["trigger"] = "5000/second"
    path = os.path.join(workdir, "queue.yaml")
    with open(path, "w") as handle:
        yaml.safe_dump(data, handle)
    return path


def _cpu_seconds(pid):
    """user + system CPU seconds of one process so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Gunicorn:
    """The real web server: gunicorn.conf.py with one gevent worker."""

    def __init__(self, env, log_path):
        from devtools.services import free_port, spawn
        self.port = free_port()
        env = dict(env, WEB_CONCURRENCY="1", PORT=str(self.port), HOST="127.0.0.1")
        self.log = open(log_path, "ab")
        self.proc = spawn([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"], cwd=ROOT,
                          env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self.proc.returncode}; see {log_path}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    conn.close()
                    break
            except OSError:
                time.sleep(0.1)
        else:
            raise RuntimeError(f"gunicorn did not answer within 30 s; see {log_path}")
        self.worker_pid = self._worker_pid()

    def _worker_pid(self):
        import psutil
        children = psutil.Process(self.proc.pid).children()
        if len(children) != 1:
            raise RuntimeError(f"expected one gunicorn worker, found {len(children)}")
        return children[0].pid

    def post(self, body, headers=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            conn.request("POST", TRIGGER_PATH, body=json.dumps(body).encode(),
                         headers=dict({"Content-Type": "application/json", "X-API-Key": API_KEY}, **(headers or {})))
            response = conn.getresponse()
            return response.status, json.loads(response.read() or b"null")
        finally:
            conn.close()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def run_dispatch_worker(app):
    """One RQ SimpleWorker on the dispatch queue, burst mode; returns (seconds, jobs run, worker CPU seconds).

    The seconds run from the start of the first job to the end of the last, so RQ's
    start-up and burst-mode teardown (it waits up to 1 s for its pub/sub thread) are
    left out; RQ's own per-job work between jobs is counted. The jobs are drains
    (app/dispatch/drain.py): each stores every pending trigger, however many.
    """
    import rq
    from app.queues import enqueue
    from workers.trust import make_worker

    class TimedWorker(rq.SimpleWorker):
        first = last = None
        jobs = 0

        def execute_job(self, job, queue):
            if self.first is None:
                self.first, self.cpu_first = time.perf_counter(), time.process_time()
            try:
                return super().execute_job(job, queue)
            finally:
                self.last, self.cpu_last = time.perf_counter(), time.process_time()
                self.jobs += 1

    with app.app_context():
        queue = enqueue.queue("dispatch", app)
        worker = make_worker(app, ("dispatch",), worker_class=TimedWorker)
        worker.work(burst=True, logging_level="INFO")
        failed = rq.registry.FailedJobRegistry(queue=queue).count
    if failed:
        raise RuntimeError(f"{failed} dispatch job(s) failed; see the log")
    if not worker.jobs:
        raise RuntimeError("no dispatch job ran")
    return worker.last - worker.first, worker.jobs, worker.cpu_last - worker.cpu_first


# ---------------------------------------------------------------- the benchmark


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=10_000, help="users of the one big trigger (b)")
    parser.add_argument("--triggers", type=int, default=10_000, help="one-user triggers for (a) and (c)")
    parser.add_argument("--concurrency", type=int, default=64, help="client connections for (a)")
    parser.add_argument("--warmup", type=int, default=500, help="untimed requests before (a)")
    parser.add_argument("--parts", default="abc", help="which figures to measure, e.g. b (c needs a)")
    parser.add_argument("--keep", action="store_true", help="keep the database and the logs")
    parser.add_argument("--load-client", nargs=4, type=int, metavar=("PORT", "COUNT", "CONCURRENCY", "WARMUP"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load_client:
        load_client(*args.load_client)
        return

    from devtools.services import redis_server
    server_url = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    workdir = tempfile.mkdtemp(prefix="bench-write-")
    redis = redis_server()
    database = Database(server_url, keep=args.keep)
    env = dict(os.environ, DATABASE_URL=database.url, REDIS_URL=redis.url, REDIS_PREFIX="bench:",
               JWT_SECRET="bench-secret-that-is-long-enough-for-hs256", API_KEYS=API_KEY, DEVELOPMENT="true",
               QUEUE_CONFIG=bench_queue_config(workdir),
               # a trigger to 10,000 users is ~390 KB of JSON: above the default 256 KiB body limit
               MAX_CONTENT_LENGTH=str(2 * 1024 * 1024))
    # the worker below runs in this process; its logs (one line per job, as in `python -m workers`) go to a file
    logging.basicConfig(level=logging.INFO, filename=os.path.join(workdir, "worker.log"), force=True)
    from app import create_app
    app = create_app({k: env[k] for k in ("DATABASE_URL", "REDIS_URL", "REDIS_PREFIX", "JWT_SECRET", "API_KEYS",
                                          "QUEUE_CONFIG", "MAX_CONTENT_LENGTH", "DEVELOPMENT")})
    for handler in logging.getLogger().handlers:       # the app may add a stderr handler of its own
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setStream(open(os.path.join(workdir, "worker.log"), "a"))
    web = None
    results = []
    try:
        web = Gunicorn(env, os.path.join(workdir, "gunicorn.log"))
        print(f"machine: {os.cpu_count()} cores, {platform_line()}; web worker pid {web.worker_pid}"
              f" (attach a profiler: py-spy record --pid {web.worker_pid})", file=sys.stderr, flush=True)

        if "b" in args.parts:
            measure_big_trigger(args, web, app, database, results)
            measure_big_trigger(args, web, app, database, results, in_app_only=True)
        if "a" in args.parts:
            measure_accept_and_drain(args, web, app, database, results, drain="c" in args.parts)
    finally:
        if web is not None:
            web.stop()
        app.extensions["db_pool"].close()
        redis.stop()
        database.drop()
        if args.keep:
            print(f"logs in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    print_table(results, args)


def measure_big_trigger(args, web, app, database, results, in_app_only=False):
    """(b) one trigger to --users users, stored by one RQ worker."""
    event = ("task", "task_due") if in_app_only else ("chats", "message_received")
    status, accepted = web.post(trigger_body([uuid.uuid4() for _ in range(args.users)], *event))
    if status != 202:
        raise RuntimeError(f"big trigger refused: {status} {accepted}")
    seconds, _, cpu = run_dispatch_worker(app)
    stored = database.scalar("SELECT count(*) FROM notifications WHERE trigger_id = %s", accepted["trigger_id"])
    if stored != args.users or database.scalar("SELECT status FROM triggers WHERE id = %s",
                                               accepted["trigger_id"]) != "dispatched":
        raise RuntimeError(f"(b) stored {stored} of {args.users}")
    name = f"(b) stored/s, 1 RQ worker, 1 trigger to {args.users} users"
    if in_app_only:
        name = f"(b') same, in-app only event ({event[0]}/{event[1]}: no email jobs)"
    results.append((name, stored / seconds, TARGET_STORED, f"{stored} in {seconds:.2f} s, worker CPU {cpu:.2f} s"))
    print(f"{name}: {stored} in {seconds:.2f} s", file=sys.stderr)


def measure_accept_and_drain(args, web, app, database, results, drain):
    """(a) one-user triggers against the one web worker; (c) one RQ worker stores them."""
    before = database.scalar("SELECT count(*) FROM notifications")
    web_cpu0 = _cpu_seconds(web.worker_pid)
    client = subprocess.run([sys.executable, os.path.abspath(__file__), "--load-client", str(web.port),
                             str(args.triggers), str(args.concurrency), str(args.warmup)],
                            cwd=ROOT, capture_output=True, text=True, timeout=1800)
    if client.returncode != 0:
        raise RuntimeError(f"load client failed:\n{client.stderr[-3000:]}")
    load = json.loads(client.stdout.strip().splitlines()[-1])
    web_cpu = _cpu_seconds(web.worker_pid) - web_cpu0
    bad = {k: v for k, v in load["statuses"].items() if k != "202"}
    if bad:
        raise RuntimeError(f"(a) non-202 answers: {bad}")
    rate = load["requests"] / load["elapsed"]
    results.append((f"(a) triggers accepted/s, 1 gunicorn gevent worker, {args.concurrency} connections",
                    rate, TARGET_ACCEPTED,
                    f"p50 {load['p50_ms']:.1f} ms, p99 {load['p99_ms']:.1f} ms; "
                    f"client CPU {load['client_cpu']:.1f} s / {load['client_wall']:.1f} s wall; "
                    f"web worker CPU {web_cpu:.1f} s = {1000 * web_cpu / (load['requests'] + args.warmup):.2f} ms"
                    f" per request"))
    print(f"(a) done: {load}", file=sys.stderr)
    if not drain:
        return

    # (c) the same worker drains the one-user triggers of (a)
    pending = database.scalar("SELECT count(*) FROM triggers WHERE status = 'pending'")
    seconds, jobs, cpu = run_dispatch_worker(app)
    still_pending = database.scalar("SELECT count(*) FROM triggers WHERE status = 'pending'")
    stored_small = database.scalar("SELECT count(*) FROM notifications") - before
    if stored_small != pending or still_pending:
        raise RuntimeError(f"(c) stored {stored_small} of {pending} triggers ({still_pending} still pending)")
    results.append((f"(c) stored/s, 1 RQ worker, {pending} triggers to 1 user each", stored_small / seconds,
                    TARGET_STORED, f"{stored_small} in {seconds:.2f} s ({jobs} jobs), worker CPU {cpu:.1f} s"))


def platform_line():
    import platform
    return f"Python {platform.python_version()}, {platform.machine()}, {platform.system()} {platform.release()}"


def print_table(results, args):
    print()
    print(f"write path, {os.cpu_count()} cores, {platform_line()}, load average at the end"
          f" {os.getloadavg()[0]:.1f}")
    print(f"command: python bench/write_path.py --users {args.users} --triggers {args.triggers}"
          f" --concurrency {args.concurrency}" + (f" --parts {args.parts}" if args.parts != "abc" else ""))
    width = max(len(name) for name, *_ in results)
    print(f"{'figure'.ljust(width)} | {'measured':>9} | {'target':>8} | ok  | detail")
    print(f"{'-' * width}-|-{'-' * 9}-|-{'-' * 8}-|-----|-------")
    order = sorted(results, key=lambda r: r[0].split(")")[0])
    for name, value, target, detail in order:
        ok = "yes" if value >= target else "NO"
        print(f"{name.ljust(width)} | {value:9.0f} | {'>= ' + str(target):>8} | {ok:<3} | {detail}")


if __name__ == "__main__":
    main()
