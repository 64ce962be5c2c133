"""Streams held by ONE gevent worker, each fed one broadcast; the worker's RSS per stream; the Redis
connections it holds at 0, 1,000 and N streams. Ours, or the peer (Flask-SSE 1.0.0).

    python -m bench.streams held --streams 15000 [--peer] [--keep]
"""
import time
import uuid

from bench.load import marked_title
from bench.measure import log, rss_kb
from bench.rig import Bench, LuaPublisher, notification_json, ramp, wait_received
from testkit.processes import cpu_seconds


def held(kind, streams, sizes, keep=False):
    """Streams held by ONE worker, each receiving one broadcast; RSS per stream; Redis connections."""
    with Bench(f"held-{kind}", keep) as bench:
        server, target, clients = bench.serve(kind, 1, sizes.clients)
        worker = server.worker_pids()[0]

        # warm-up: one stream opened, fed and closed, so lazy imports and the hub exist before "before"
        warm_user = uuid.uuid4()
        ramp(bench, clients, target.paths_and_tokens([warm_user]), 1, progress=False)
        LuaPublisher(bench.redis).publish([target.channel(warm_user)], target.message(notification_json(marked_title(0))))
        wait_received(clients, 1, stall=3)
        clients.call("close")
        # Flask-SSE notices a closed stream only when it next writes to it: give it one write
        LuaPublisher(bench.redis).publish([target.channel(warm_user)], target.message(notification_json("bye")))
        deadline = time.monotonic() + 10
        while bench.pubsub_channels() > 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        clients.call("reset")
        time.sleep(0.5)

        rss_before = rss_kb(worker)
        redis_at = {0: bench.server_redis_clients()}
        cpu0, client_cpu0 = cpu_seconds(worker), clients.cpu()
        users = [uuid.uuid4() for _ in range(streams)]
        requests = target.paths_and_tokens(users)
        checkpoints = [(1000, bench.server_redis_clients)] if streams > 1000 else []
        log(f"{kind}: opening {streams} streams on one worker (pid {worker})")
        marks, open_seconds, complete, refusals = ramp(bench, clients, requests, sizes.step, checkpoints)
        redis_at.update(marks)
        status = clients.status()
        opened = status["open"]
        redis_at[opened] = bench.server_redis_clients()

        # one broadcast: one message on each user's channel
        clients.call("reset")
        publisher = LuaPublisher(bench.redis)
        channels = [target.channel(u) for u in users]
        publisher.publish(channels, target.message(notification_json(marked_title(1))))
        received, _ = wait_received(clients, opened, stall=10)
        time.sleep(0.5)
        status = clients.status()
        rss_after = rss_kb(worker)
        held_streams = status["exactly_one"]
        result = {
            "kind": kind, "asked": streams, "opened": opened, "received": received,
            "exactly_one": held_streams, "zero": status["zero"], "failed": status["failed"],
            "statuses": status["statuses"], "connect_errors": status["connect_errors"],
            "refused_samples": status["samples"], "complete": complete, "refusals_retried": refusals,
            "open_seconds": open_seconds,
            "rss_before_kb": rss_before, "rss_after_kb": rss_after,
            "rss_per_stream_kb": (rss_after - rss_before) / opened if opened else None,
            "redis_clients": redis_at, "worker_cpu": cpu_seconds(worker) - cpu0,
            "client_cpu": clients.cpu() - client_cpu0, "worker_pid": worker,
        }
        log(f"{kind} held: {result}")
        clients.call("close")
        return result
