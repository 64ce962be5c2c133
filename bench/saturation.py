"""Deliveries per second to 10,000 streams on TWO workers, published straight into Redis as fast as
they are absorbed (at most `--window` broadcasts undelivered). Ours, or the peer.

    python -m bench.streams saturation --streams 10000 [--peer] [--window 8]
"""
import time
import uuid

from bench.load import marked_title
from bench.measure import log, own_cpu
from bench.rig import Bench, LuaPublisher, ShardedPublisher, notification_json, ramp, wait_received
from testkit.processes import cpu_seconds


def saturation(kind, streams, sizes, keep=False, masters=0):
    """Deliveries/s to `streams` streams on TWO workers, published as fast as they are absorbed.

    The driver publishes broadcasts (one message on every user's channel, 1,000 PUBLISHes per
    Lua call, each server's own message format) while fewer than `window` broadcasts are
    undelivered, for `saturation_seconds`; then it waits for the rest. Lost = expected - received.
    `masters` (ours only): the stream channels on a local Redis Cluster of that many masters
    (PUBSUB_URL), published with SPUBLISH pipelines. The CPU of the Redis server(s) carrying the
    pub/sub is reported per delivery.
    """
    with Bench(f"saturation-{kind}", keep) as bench:
        settings, cluster = {}, None
        if masters:
            from testkit.redis_cluster import RedisCluster
            cluster = bench.cluster = bench.enter_context(RedisCluster(masters=masters, replicas=0))
            settings["PUBSUB_URL"] = cluster.url
        server, target, clients = bench.serve(kind, 2, sizes.clients, **settings)
        redis_pids = [p.pid for p in cluster.procs.values()] if cluster else [bench.redis_server.proc.pid]
        users = [uuid.uuid4() for _ in range(streams)]
        log(f"{kind}: opening {streams} streams on two workers")
        _, _, complete, refusals = ramp(bench, clients, target.paths_and_tokens(users), sizes.step, progress=False)
        opened = clients.status()["open"]
        if opened != streams:
            raise RuntimeError(f"{kind}: only {opened} of {streams} streams opened")
        import psutil
        per_worker = [psutil.Process(pid).num_fds() for pid in server.worker_pids()]
        channels = [target.channel(u) for u in users]
        publisher = ShardedPublisher(cluster.url) if cluster else LuaPublisher(bench.redis)

        def broadcast(sequence):
            publisher.publish(channels, target.message(notification_json(marked_title(sequence))))

        broadcast(0)                       # warm-up
        wait_received(clients, streams, stall=5)
        clients.call("reset")
        cpu0, client_cpu0, own0 = server.workers_cpu(), clients.cpu(), own_cpu()
        redis0 = sum(cpu_seconds(pid) for pid in redis_pids)
        sent = 0
        log(f"{kind}: saturating for {sizes.saturation_seconds} s (window {sizes.window} broadcasts); "
            f"worker pids {server.worker_pids()}")
        started = time.monotonic()
        end = started + sizes.saturation_seconds
        while time.monotonic() < end:
            if sent - clients.received() / streams < sizes.window:
                sent += 1
                broadcast(sent)
            else:
                time.sleep(0.0005)
        expected = sent * streams
        received, last = wait_received(clients, expected, stall=5)
        seconds = last - started
        status = clients.status()
        result = {
            "kind": kind, "streams": streams, "broadcasts": sent, "expected": expected, "received": received,
            "lost": expected - received, "seconds": seconds, "rate": received / seconds if seconds > 0 else 0,
            "worker_cpu": server.workers_cpu() - cpu0, "client_cpu": clients.cpu() - client_cpu0,
            "driver_cpu": own_cpu() - own0, "fds_per_worker": per_worker, "masters": masters,
            "redis_cpu_us_per_delivery": (sum(cpu_seconds(pid) for pid in redis_pids) - redis0) / max(received, 1) * 1e6,
            "streams_cut": status["lost"], "complete": complete,
        }
        log(f"{kind} saturation: {result}")
        clients.call("close")
        return result
