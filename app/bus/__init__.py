"""Redis as every process of a deployment shares it: connections, key names, the deployment's
prefix (deployment.py), the stream channels and their signed messages (codec.py), publishing
(publisher.py). This module: the process's Redis clients (bounded pools of command connections)
and key naming.

Every Redis connection of a process comes from here, so the number a process
can hold is fixed and visible in one place: `POOLS` per process plus the stream
hub's one pub/sub socket (app/streams/hub.py) — at most 12 for a web process,
whatever the load. (With PUBSUB_URL on a Redis Cluster: the hub holds one socket per master,
and publishing a pool of `POOLS["commands"]` per master.) A burst of requests waits briefly for a free connection
(each call takes ~0.1 ms) instead of opening hundreds: at 50 workers a
reconnect storm after a deploy would otherwise reach Redis's `maxclients`.
Every connection is named `notifications:<pid>:<pool>` (CLIENT LIST shows who
holds what).

The stream channels may live elsewhere: PUBSUB_URL (default REDIS_URL) may name any node of a
Redis Cluster, whose sharded pub/sub spreads the channels over its masters (`pubsub_client`;
the hub's side is app/streams/hub.py). Everything else — RQ, stream tickets and slots, rate
limits, idempotency — stays on REDIS_URL, one Redis: RQ moves a job between keys of several
queues and registries in one MULTI or script, which a cluster refuses unless every key hashes to
one slot, and tickets and limits are small and hot, and gain nothing from being spread.

Every key and channel this service owns starts with REDIS_PREFIX so that
several deployments or test runs can share one Redis.
"""
import os

import redis as redis_lib
from flask import current_app

# pool -> (connections, seconds to wait for a free one, socket timeout). Commands: publish, tickets,
# stream slots, idempotency, RQ. Rate limits (app/ratelimit/windows.py): a short socket timeout (a hung
# Redis costs a call 0.5 s, then the limiter counts in memory); the wait for a free connection is as
# long as the other pool's, as under a burst a gevent worker's greenlets hold a connection for as
# long as the CPU is busy elsewhere: with 0.5 s, 1,000 streams opened at once made the limiter fall
# back to memory 166 times, with 2 s 10,000 streams reconnecting after SIGKILL 28 times, with 5 s 0.
POOLS = {"commands": (8, 5.0, 10.0), "ratelimit": (3, 5.0, 0.5)}
HUB_CONNECTIONS = 1
MAX_CONNECTIONS = sum(size for size, _, _ in POOLS.values()) + HUB_CONNECTIONS   # per process: 12


def client_name(purpose):
    """What CLIENT LIST shows for a connection of this process (no spaces: Redis refuses them)."""
    return f"notifications:{os.getpid()}:{purpose}"


def make_client(url, purpose="commands"):
    """A client on a bounded, blocking pool of `POOLS[purpose]`."""
    size, wait, socket_timeout = POOLS[purpose]
    pool = redis_lib.BlockingConnectionPool.from_url(
        url, max_connections=size, timeout=wait, socket_connect_timeout=min(5.0, socket_timeout),
        socket_timeout=socket_timeout, health_check_interval=30, client_name=client_name(purpose))
    return redis_lib.Redis(connection_pool=pool)


def redis():
    return current_app.extensions["redis"]


def key(*parts):
    """A namespaced key or channel name."""
    return current_app.config["REDIS_PREFIX"] + ":".join(str(p) for p in parts)


def is_cluster(url):
    """Is this Redis a cluster's node (`cluster_enabled` of INFO cluster, which a Redis without
    cluster support answers 0, where CLUSTER INFO is an error)?"""
    client = redis_lib.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=5)
    try:
        return bool(client.info("cluster").get("cluster_enabled"))
    finally:
        client.close()


def pubsub_client(app):
    """(client, is it a cluster) for publishing on the stream channels: REDIS_URL's own client
    when PUBSUB_URL is REDIS_URL; a RedisCluster client (pools of `POOLS["commands"]` per node,
    following MOVED and failovers) when PUBSUB_URL names a cluster's node. Decided on first use
    (after gunicorn forked), so a cluster not up yet fails that publish, not the start-up."""
    found = app.extensions.get("pubsub")
    if found is None:
        url = app.config["PUBSUB_URL"]
        if url == app.config["REDIS_URL"] or not is_cluster(url):
            found = (app.extensions["redis"] if url == app.config["REDIS_URL"] else make_client(url), False)
        else:
            size, _, socket_timeout = POOLS["commands"]
            found = (redis_lib.RedisCluster.from_url(url, max_connections=size, socket_timeout=socket_timeout,
                                                     socket_connect_timeout=5.0, client_name=client_name("pubsub")),
                     True)
        app.extensions["pubsub"] = found
    return found


def init_app(app):
    app.extensions["redis"] = make_client(app.config["REDIS_URL"])
