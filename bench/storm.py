"""Reconnect storm: N streams opened at once, every web worker restarted, every stream back.

    python -m bench.storm --streams 10000 --clients 4            # default: 2 web workers, SIGHUP
    python -m bench.storm --streams 1000 --restart kill          # SIGKILL each worker instead

What runs: the repository's gunicorn.conf.py (gevent workers, WEB_CONCURRENCY=`--workers`)
with the shipped defaults — rate limits on (queue.yaml: 10 stream connects a minute per
user), 10 streams per user, keep-alive and retry as configured — on a private Redis and a
fresh database (bench/rig.py's Bench: DATABASE_URL's server, dropped at the end). The
load is `--clients` processes (bench/load.py's asyncio clients), each well under the
20,000 open files a process may have here.

How the streams are opened, as real clients would: N users, one stream each, a bearer token
in the `Authorization` header (a native app, or a server-side client). The connect budget
is per user, so N users each connecting twice (before and after the restart) stay far under
it; the bench says so in its output. Every request goes out at once (128 connects in flight
per client process), then a refused stream (non-200, cut, not connected) is tried again
after the server's `retry:` (SSE_RETRY_MS), as EventSource does; refusals are counted.

Steps: open N streams; one direct push (POST /v1/notifications/sse) to all N users, each
stream must get it; restart every web worker (`--restart hup`: SIGHUP to gunicorn, which
starts new workers and stops the old ones, whose streams close; `kill`: SIGKILL each
worker, gunicorn forks replacements); every client reconnects; a second push, each stream
must get it. Throughout, a watcher reads CLIENT LIST every 0.1 s and groups Redis
connections by name (`notifications:<pid>:<pool>`, app/bus/__init__.py); connections
without a name are reported apart. At the two checkpoints the kernel's socket table of each
worker is read too (psutil), which counts a connection whatever its name.

The figures and the command that produced them: docs/security/hub.md.
"""
import argparse
import collections
import json
import os
import signal
import sys
import threading
import time
import uuid

import psutil
import redis as redis_lib

from bench.load import marked_title, stream_request, tokens_for
from bench.measure import log, machine, raise_nofile
from bench.rig import STREAM_PATH, Bench, wait_received
from testkit.api import trigger_body
from testkit.identity import SERVICE

LIMIT = 12          # Redis connections a web process may hold (app/bus/__init__.py MAX_CONNECTIONS)
WATCHER_NAME = "bench-storm-watch"


class RedisWatch(threading.Thread):
    """Peak Redis connections per process, from CLIENT LIST (connection names) every 0.1 s."""

    def __init__(self, url):
        super().__init__(daemon=True)
        self.client = redis_lib.Redis.from_url(url, client_name=WATCHER_NAME, decode_responses=True)
        self.peak = collections.Counter()                   # pid -> most connections at one time
        self.peak_pools = collections.defaultdict(collections.Counter)   # pid -> pool -> most
        self.unnamed_peak = self.total_peak = self.samples = 0
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            try:
                clients = self.client.client_list()
            except redis_lib.RedisError:
                self.stop.wait(0.1)
                continue
            per_pid, per_pool, unnamed = collections.Counter(), collections.Counter(), 0
            for client in clients:
                name = client.get("name", "")
                if name.startswith("notifications:"):
                    _, pid, pool = name.split(":", 2)
                    per_pid[int(pid)] += 1
                    per_pool[(int(pid), pool)] += 1
                elif name not in (WATCHER_NAME, "bench-driver"):
                    unnamed += 1
            for pid, count in per_pid.items():
                self.peak[pid] = max(self.peak[pid], count)
            for (pid, pool), count in per_pool.items():
                self.peak_pools[pid][pool] = max(self.peak_pools[pid][pool], count)
            self.unnamed_peak = max(self.unnamed_peak, unnamed)
            self.total_peak = max(self.total_peak, sum(per_pid.values()) + unnamed)
            self.samples += 1
            self.stop.wait(0.1)

    def report(self):
        return {"samples": self.samples, "peak_per_process": dict(self.peak),
                "peak_per_pool": {pid: dict(pools) for pid, pools in self.peak_pools.items()},
                "unnamed_peak": self.unnamed_peak, "peak_all_processes": self.total_peak}


def kernel_counts(server, redis_port):
    """{worker pid: TCP connections to Redis} from the kernel's table (named or not)."""
    out = {}
    for pid in server.worker_pids():
        try:
            out[pid] = sum(1 for c in psutil.Process(pid).net_connections(kind="tcp")
                           if c.raddr and c.raddr.port == redis_port)
        except psutil.NoSuchProcess:
            pass
    return out


def up(status):
    """Streams that answered 200 and are still open."""
    return status["statuses"].get(200, 0) - status["lost"]


def refused(status):
    """Answers other than 200, and connections that could not be made."""
    return sum(n for code, n in status["statuses"].items() if code != 200) + sum(status["connect_errors"].values())


def open_all(clients, requests, retry_s, limit_s):
    """Open every stream at once, then settle; returns (seconds, retry rounds)."""
    started = time.monotonic()
    count = len(clients.conns)
    clients.call_each([("open", requests[i::count]) for i in range(count)])
    return settle(clients, len(requests), started, retry_s, limit_s)


def settle(clients, expected, started, retry_s, limit_s):
    """Wait until `expected` streams are up; what was refused or cut is opened again after
    `retry_s`, as EventSource does. Returns (seconds until all were up, retry rounds)."""
    rounds = 0
    count = len(clients.conns)
    while True:
        status = clients.status()
        if up(status) >= expected:
            return time.monotonic() - started, rounds
        if time.monotonic() - started > limit_s:
            raise RuntimeError(f"streams not up after {limit_s:.0f} s: {status}")
        if status["failed"]:
            time.sleep(retry_s)
            pending = [r for part in clients.call("refused") for r in part]
            if pending:
                rounds += 1
                clients.call_each([("open", pending[i::count]) for i in range(count)])
        time.sleep(0.05)


def push(server, users, sequence):
    response = server.post("/v1/notifications/sse", headers=SERVICE, timeout=60,
                           json=trigger_body(users, title=marked_title(sequence), content="storm"))
    if response.status_code != 200:
        raise RuntimeError(f"direct push answered {response.status_code}: {response.text[:300]!r}")
    return response.json()


def deliver(clients, server, users, sequence):
    """One push to every user; (streams that got exactly it, seconds)."""
    clients.call("reset")
    started = time.monotonic()
    push(server, users, sequence)
    received, at = wait_received(clients, len(users), stall=10, limit=120)
    status = clients.status()
    return status["exactly_one"], received, at - started


def restart(server, how):
    """Restart every web worker; returns (old pids, new pids, seconds until the new ones run)."""
    old = set(server.worker_pids())
    started = time.monotonic()
    if how == "hup":
        os.kill(server.proc.pid, signal.SIGHUP)
    else:
        for pid in old:
            os.kill(pid, signal.SIGKILL)
    deadline = started + 120
    while time.monotonic() < deadline:
        now = set(server.worker_pids())
        if len(now) == server.workers and not now & old:
            return sorted(old), sorted(now), time.monotonic() - started
        time.sleep(0.05)
    raise RuntimeError(f"workers not replaced within 120 s: {server.output()[-3000:]}")


def run(streams, client_count, workers, how, keep):
    with Bench("storm", keep) as bench:
        bench.start_redis()
        bench.start_database()
        server = bench.start_ours(workers=workers, shipped=True)   # rate limits on, keep-alive as shipped
        redis_port = bench.redis_server.port
        retry_s = 3.0   # SSE_RETRY_MS's default: what EventSource waits before reconnecting
        clients = bench.start_clients(client_count, server.port)
        users = [uuid.uuid4() for _ in range(streams)]
        requests = [stream_request(STREAM_PATH, token) for token in tokens_for(users)]
        watch = RedisWatch(bench.redis_server.url)
        watch.start()
        bench.callback(watch.stop.set)
        result = {"machine": machine(), "streams": streams, "client_processes": client_count,
                  "web_workers": workers, "restart": how,
                  "how_opened": f"{streams} users x 1 stream, bearer token in the header; each user connects "
                                "twice in the run, under its budget of 10 a minute (rate limits on)"}

        log(f"opening {streams} streams at once ({client_count} client processes, {workers} web workers)")
        cpu = server.workers_cpu()
        seconds, rounds = open_all(clients, requests, retry_s, limit_s=600)
        wait_subscribed(bench, streams)
        status = clients.status()
        result["open"] = {"seconds": round(seconds, 1), "web_cpu_s": round(server.workers_cpu() - cpu, 1),
                          "refusals": refused(status), "retry_rounds": rounds,
                          "statuses": status["statuses"], "connect_errors": status["connect_errors"],
                          "redis_per_worker_kernel": kernel_counts(server, redis_port)}
        log(f"open: {result['open']}")
        got, received, took = deliver(clients, server, users, 1)
        result["push_before"] = {"exactly_one": got, "received": received, "seconds": round(took, 2)}
        log(f"push before the restart: {result['push_before']}")

        refused_before = refused(status)
        old, new, replaced = restart(server, how)
        started = time.monotonic()
        log(f"workers {old} replaced by {new} in {replaced:.1f} s; clients reconnecting")
        wait_lost(clients, streams, limit_s=120)
        seconds, rounds = settle(clients, streams, started, retry_s, limit_s=600)
        wait_subscribed(bench, streams)
        status = clients.status()
        result["restart_back"] = {"old_workers": old, "new_workers": new, "workers_replaced_s": round(replaced, 1),
                                  "all_back_s": round(seconds, 1), "new_workers_cpu_s": round(server.workers_cpu(), 1), "refusals": refused(status) - refused_before,
                                  "reconnect_rounds": rounds, "statuses": status["statuses"],
                                  "connect_errors": status["connect_errors"],
                                  "redis_per_worker_kernel": kernel_counts(server, redis_port)}
        log(f"back: {result['restart_back']}")
        got, received, took = deliver(clients, server, users, 2)
        result["push_after"] = {"exactly_one": got, "received": received, "seconds": round(took, 2)}
        log(f"push after the restart: {result['push_after']}")

        watch.stop.set()
        watch.join(5)
        result["redis"] = watch.report()
        result["redis"]["limit_per_process"] = LIMIT
        worst = max(list(watch.peak.values()) + [c for part in ("open", "restart_back")
                                                  for c in result[part]["redis_per_worker_kernel"].values()])
        result["verdict"] = {
            "max_redis_connections_per_process": worst,
            "every_stream_back": result["push_after"]["exactly_one"] == streams,
            "refused": result["open"]["refusals"] + result["restart_back"]["refusals"],
            "ok": worst <= LIMIT and result["push_after"]["exactly_one"] == streams
            and result["push_before"]["exactly_one"] == streams
            and result["open"]["refusals"] + result["restart_back"]["refusals"] == 0,
        }
        limiter_fallbacks = server.output().count("rate limits counted in memory")
        result["verdict"]["rate_limit_memory_fallbacks"] = limiter_fallbacks
        clients.call("close")
        return result


def wait_subscribed(bench, users, limit_s=120):
    """Every user's channel subscribed (one per user: each user has one stream)."""
    deadline = time.monotonic() + limit_s
    while bench.pubsub_channels() < users:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{bench.pubsub_channels()} of {users} channels subscribed")
        time.sleep(0.05)


def wait_lost(clients, streams, limit_s):
    """The old workers closed their streams (every client saw its stream end)."""
    deadline = time.monotonic() + limit_s
    while clients.status()["lost"] < streams:
        if time.monotonic() > deadline:
            raise RuntimeError(f"streams still open on the old workers: {clients.status()}")
        time.sleep(0.1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=4, help="load-client processes")
    parser.add_argument("--workers", type=int, default=2, help="web workers (WEB_CONCURRENCY)")
    parser.add_argument("--restart", choices=["hup", "kill"], default="hup")
    parser.add_argument("--keep", action="store_true", help="keep the logs")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    raise_nofile()
    result = run(args.streams, args.clients, args.workers, args.restart, args.keep)
    print(json.dumps(result, indent=2, default=str))
    sys.exit(0 if result["verdict"]["ok"] else 1)


if __name__ == "__main__":
    main()
