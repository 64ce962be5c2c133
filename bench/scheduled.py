"""Scheduled triggers: N triggers all scheduled for the same second; how long after their send_at
each one's notification is stored (issue 21: within 2 s at 1,000).

    python -m bench.scheduled [-n 1000] [--lead 20] [--workers 1] [--rate-limits off]

One gunicorn (one gevent worker) and `--workers` RQ workers (`python -m workers`, each with its
scheduler thread), a private database and redis-server. The N one-user triggers (in-app only) are
posted with `send_at` = start + `--lead` seconds (long enough to accept them all first); then it
waits until every one is stored and prints the lag of `notifications.created_at` (the start of the
transaction that stored it, PostgreSQL's clock) behind the trigger's `send_at`, and when the last
one was committed and readable (polled every 20 ms, the same machine's clock). Exits non-zero when a trigger
was not stored or stored before its time.

The shipped defaults, rate limits on: one API key's `rate_limits.trigger` (100/s) paces the
posting, and a refused trigger is posted again after its `Retry-After`, as a caller would (the
result says how many 429s came). `--rate-limits off` turns them off, and says so in the result.
"""
import argparse
import datetime
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import psycopg2
import requests

from bench.measure import machine
from bench.rig import add_rate_limits_option, shipped_env
from devtools.services import postgres_url, redis_server
from testkit.api import IN_APP, TRIGGER_PATH
from testkit.database import Database, service_env
from testkit.identity import SERVICE
from testkit.processes import ProcessGroup, wait_until


def post_all(url, n, send_at, threads=16):
    """N one-user triggers for `send_at`, each posted again after `Retry-After` while it gets a 429;
    (the count of 202s, the count of 429s)."""
    body = dict(IN_APP, title="At the stroke", send_at=send_at.isoformat())

    def some(count):
        ok = refused = 0
        with requests.Session() as s:
            for _ in range(count):
                one = dict(body, user_ids=[str(uuid.uuid4())])
                r = s.post(url + TRIGGER_PATH, headers=SERVICE, timeout=30, json=one)
                while r.status_code == 429:
                    refused += 1
                    time.sleep(float(r.headers.get("Retry-After", 1)))
                    r = s.post(url + TRIGGER_PATH, headers=SERVICE, timeout=30, json=one)
                ok += r.status_code == 202
        return ok, refused
    with ThreadPoolExecutor(threads) as pool:
        counts = list(pool.map(some, [n // threads + (i < n % threads) for i in range(threads)]))
    return sum(ok for ok, _ in counts), sum(refused for _, refused in counts)


def lags(database_url):
    with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT extract(epoch FROM n.created_at - t.send_at)::float8 FROM notifications n"
                    " JOIN triggers t ON t.id = n.trigger_id ORDER BY 1")
        return [row[0] for row in cur.fetchall()]


def stored(database_url):
    with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM notifications")
        return cur.fetchone()[0]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=1000)
    parser.add_argument("--lead", type=float, default=20.0, help="seconds from the start to send_at")
    parser.add_argument("--workers", type=int, default=1)
    add_rate_limits_option(parser)
    args = parser.parse_args(argv)
    server_url, stop_postgres = postgres_url()
    redis = redis_server()
    directory = tempfile.mkdtemp(prefix="bench-scheduled-")
    try:
        with Database(server_url, prefix="notif_bench_sched") as database, ProcessGroup(directory) as group:
            env = shipped_env(service_env(database.url, redis.url), args.rate_limits)
            for _ in range(args.workers):
                group.start_worker(env)
            web = group.start_web(env, workers=1)
            send_at = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=args.lead)
            started = time.monotonic()
            accepted, refused = post_all(web.url, args.n, send_at)
            accept_s = time.monotonic() - started
            if datetime.datetime.now(datetime.timezone.utc) >= send_at:
                print(f"accepting took {accept_s:.1f} s, past send_at: raise --lead", file=sys.stderr)
                return 2
            wait_until(lambda: stored(database.url) >= accepted, args.lead + 120, interval=0.02,
                       message="every scheduled trigger stored")
            committed = (datetime.datetime.now(datetime.timezone.utc) - send_at).total_seconds()
            found = lags(database.url)
    finally:
        redis.stop()
        stop_postgres()
    pick = lambda q: found[min(len(found) - 1, int(q * len(found)))]
    print(f"machine: {machine()}")
    print(f"{args.n} triggers for one send_at ({accepted} accepted in {accept_s:.1f} s, {refused} 429s posted again),"
          f" {args.workers} worker(s), rate limits {args.rate_limits}")
    print("| stored after send_at | min | p50 | p99 | max |")
    print("|---|---|---|---|---|")
    print(f"| seconds | {found[0]:.3f} | {pick(0.5):.3f} | {pick(0.99):.3f} | {found[-1]:.3f} |")
    print(f"all {len(found)} committed and visible {committed:.3f} s after send_at (polled every 20 ms)")
    early = sum(1 for lag in found if lag < 0)
    ok = len(found) == args.n == accepted and early == 0
    if not ok:
        print(f"FAIL: {len(found)} stored of {args.n}, {early} before their send_at")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
