"""Write-path benchmark: triggers accepted per second, notifications stored per second.

    python -m bench.write_path --users 10000 --triggers 10000

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
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

from bench.load import write_path_trigger as trigger_body
from bench.rig import SERVER_URL
from devtools.services import REPO_ROOT, redis_server
from testkit.config_files import queue_yaml
from testkit.database import Database, service_env
from testkit.identity import API_KEY
from testkit.processes import ProcessGroup

TARGET_ACCEPTED = 1000     # triggers/s, one web worker
TARGET_STORED = 5000       # notifications/s, one RQ worker


# ---------------------------------------------------------------- services


def bench_queue_config(workdir):
    """queue.yaml with the per-API-key trigger budget raised to what a service sending this many
    triggers would be given: 5,000/second (the default, 100/second, would refuse most of them).

    The limiter stays on: it takes that budget in slices of 50 (app/ratelimit/windows.py), one Redis
    round trip each, and that is part of the measured path.
    """
    return queue_yaml(workdir, rate_limits={"trigger": "5000/second"})


def post(web, body):
    """One trigger to the web server; (status, its JSON)."""
    response = web.post("/v1/notifications/trigger", json=body, headers={"X-API-Key": API_KEY}, timeout=120)
    return response.status_code, response.json()


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
    parser.add_argument("--private-postgres", action="store_true",
                        help="a PostgreSQL server of its own (devtools/postgres_server.py): the WAL measured is ours alone")
    args = parser.parse_args()

    workdir = tempfile.mkdtemp(prefix="bench-write-")
    redis = redis_server()
    private = None
    if args.private_postgres:
        from devtools.postgres_server import PostgresServer
        private = PostgresServer().start()
    database = Database(private.url() if private else os.environ.get("DATABASE_URL", SERVER_URL), prefix="bench_write")
    # the limiter stays on (with the raised budget); a trigger to 10,000 users is ~390 KB of JSON,
    # above the default 256 KiB body limit
    env = service_env(database.url, redis.url, REDIS_PREFIX="bench:", RATE_LIMITS_ENABLED="true",
                      QUEUE_CONFIG=bench_queue_config(workdir), MAX_CONTENT_LENGTH=str(2 * 1024 * 1024))
    # the worker below runs in this process; its logs (one line per job, as in `python -m workers`) go to a file
    logging.basicConfig(level=logging.INFO, filename=os.path.join(workdir, "worker.log"), force=True)
    from app import create_app
    app = create_app(env)
    for handler in logging.getLogger().handlers:       # the app may add a stderr handler of its own
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setStream(open(os.path.join(workdir, "worker.log"), "a"))
    group = ProcessGroup(workdir)
    results = []
    try:
        # the Procfile's web process with its shipped settings (access log on), one gevent worker
        web = group.start_web(env, workers=1, keepalive=None, graceful=None, access_log="-")
        pid = web.worker_pids()[0]
        print(f"machine: {os.cpu_count()} cores, {platform_line()}; web worker pid {pid}"
              f" (attach a profiler: py-spy record --pid {pid})", file=sys.stderr, flush=True)

        if "b" in args.parts:
            measure_big_trigger(args, web, app, database, results)
            measure_big_trigger(args, web, app, database, results, in_app_only=True)
        if "a" in args.parts:
            measure_accept_and_drain(args, web, app, database, results, drain="c" in args.parts)
    finally:
        group.stop_all()
        app.extensions["db_pool"].close()
        redis.stop()
        if args.keep:
            print(f"kept database {database.name}; logs in {workdir}", file=sys.stderr)
        else:
            database.drop()
            shutil.rmtree(workdir, ignore_errors=True)
        if private is not None:
            private.destroy()

    print_table(results, args)


# notifications and deliveries with their indexes and TOAST (the size grows by whole pages: measure
# thousands of rows); the WAL is the server's (every database's: --private-postgres for ours alone)
STORAGE = ("SELECT sum(pg_total_relation_size(t))::bigint FROM unnest(ARRAY['notifications', 'deliveries',"
           " 'delivery_attempts', 'triggers']::regclass[]) AS t")


def measure_big_trigger(args, web, app, database, results, in_app_only=False):
    """(b) one trigger to --users users, stored by one RQ worker."""
    event = ("task", "task_due") if in_app_only else ("chats", "message_received")
    status, accepted = post(web, trigger_body([uuid.uuid4() for _ in range(args.users)], *event))
    if status != 202:
        raise RuntimeError(f"big trigger refused: {status} {accepted}")
    wal0, size0 = database.scalar("SELECT pg_current_wal_lsn()::text"), database.scalar(STORAGE)
    seconds, _, cpu = run_dispatch_worker(app)
    wal = database.scalar("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s::pg_lsn)::bigint", wal0)
    size = database.scalar(STORAGE) - size0
    stored = database.scalar("SELECT count(*) FROM notifications WHERE trigger_id = %s", accepted["trigger_id"])
    if stored != args.users or database.scalar("SELECT status FROM triggers WHERE id = %s",
                                               accepted["trigger_id"]) != "dispatched":
        raise RuntimeError(f"(b) stored {stored} of {args.users}")
    name = f"(b) stored/s, 1 RQ worker, 1 trigger to {args.users} users"
    if in_app_only:
        name = f"(b') same, in-app only event ({event[0]}/{event[1]}: no email jobs)"
    results.append((name, stored / seconds, TARGET_STORED, f"{stored} in {seconds:.2f} s, worker CPU {cpu:.2f} s;"
                    f" per notification: {wal / stored:.0f} B of WAL, {size / stored:.0f} B stored (with indexes)"))
    print(f"{name}: {stored} in {seconds:.2f} s", file=sys.stderr)


def measure_accept_and_drain(args, web, app, database, results, drain):
    """(a) one-user triggers against the one web worker; (c) one RQ worker stores them."""
    before = database.scalar("SELECT count(*) FROM notifications")
    web_cpu0 = web.workers_cpu()
    client = subprocess.run([sys.executable, "-m", "bench.load", "triggers", str(web.port),
                             str(args.triggers), str(args.concurrency), str(args.warmup)],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=1800)
    if client.returncode != 0:
        raise RuntimeError(f"load client failed:\n{client.stderr[-3000:]}")
    load = json.loads(client.stdout.strip().splitlines()[-1])
    web_cpu = web.workers_cpu() - web_cpu0
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
    return f"Python {platform.python_version()}, {platform.machine()}, {platform.system()} {platform.release()}"


def print_table(results, args):
    print()
    print(f"write path, {os.cpu_count()} cores, {platform_line()}, load average at the end"
          f" {os.getloadavg()[0]:.1f}")
    print(f"command: python -m bench.write_path --users {args.users} --triggers {args.triggers}"
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
