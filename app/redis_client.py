"""The process's Redis client (a pool of command connections) and key naming.

Pub/sub has its own single connection in the stream hub; this pool serves
commands (publish, tickets, idempotency, RQ). Every key and channel this
service owns starts with REDIS_PREFIX so that several deployments or test
runs can share one Redis.
"""
import redis as redis_lib
from flask import current_app


MAX_CONNECTIONS = 8    # per process: a burst of requests waits for one (each call takes ~0.1 ms) instead of opening hundreds


def make_client(url):
    pool = redis_lib.BlockingConnectionPool.from_url(url, max_connections=MAX_CONNECTIONS, timeout=5,
                                                     socket_connect_timeout=5, socket_timeout=10,
                                                     health_check_interval=30)
    return redis_lib.Redis(connection_pool=pool)


def redis():
    return current_app.extensions["redis"]


def key(*parts):
    """A namespaced key or channel name."""
    return current_app.config["REDIS_PREFIX"] + ":".join(str(p) for p in parts)


def init_app(app):
    app.extensions["redis"] = make_client(app.config["REDIS_URL"])
