"""gunicorn settings: gevent workers built to hold thousands of open streams.

The gevent worker's `timeout` is a heartbeat of the worker process, not a
limit on one request, so SSE streams stay open for as long as the client
wants. `worker_connections` is raised well past gunicorn's default of 1,000,
which would otherwise park new streams (and the REST calls behind them) in
the listen backlog.
"""
import gc
import os
import sys
import tempfile

# Patch before anything imports ssl, sockets or threading: the start-up check
# below imports the app (and with it requests, redis, PyJWT), and the gevent
# worker's own patching after fork would come too late for those modules.
from gevent import monkey

monkey.patch_all()

# Metrics of every worker process are merged at scrape time through files in
# this directory; set it to the same path for web and worker processes to see
# both (./dev up does). It must be set before prometheus_client is imported.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="notifications-metrics-")

bind = f"{os.environ.get('HOST', '0.0.0.0')}:{os.environ.get('PORT', '8000')}"
worker_class = "gevent"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_connections = int(os.environ.get("WORKER_CONNECTIONS", "10000"))
backlog = 4096
timeout = 30
graceful_timeout = int(os.environ.get("GRACEFUL_TIMEOUT", "20"))
keepalive = 5
# X-Forwarded-* is the app's decision alone (PROXY_HOPS, app/__init__.py); gunicorn's default trust
# of loopback peers would let a local caller choose the request's scheme behind its back.
forwarded_allow_ips = ""
# The path without its query string: a stream ticket or token never lands in a log.
accesslog = os.environ.get("ACCESS_LOG", "-") or None
access_log_format = '%(h)s "%(m)s %(U)s %(H)s" %(s)s %(B)s %(M)sms rid=%({x-request-id}o)s'


def on_starting(server):
    """Refuse to start the master on a bad configuration, or as a database role that could rewrite
    the audit: one line, exit 2."""
    from app.audit.guard import refuse_audit_rewriters
    from app.config import load_settings
    from app.errors import ConfigError
    try:
        refuse_audit_rewriters(load_settings())
    except ConfigError as exc:
        print(str(exc), file=sys.stderr, flush=True)
        os._exit(2)


def post_fork(server, worker):
    """Make psycopg2 cooperative in every worker, before the app opens a connection."""
    from psycogreen.gevent import patch_psycopg
    patch_psycopg()


def post_worker_init(worker):
    """Streams write their access-log line through gunicorn's logger (they outlive the request
    that opened them); keep start-up objects out of later full GC passes (they caused p99 spikes)."""
    from app.streams.keeper import use_access_log
    use_access_log(worker.log)
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


def worker_exit(server, worker):
    """Close this worker's streams and give their per-user slots back: the clients reconnect
    at once, to another worker, with their cursor."""
    from app.streams.keeper import shutdown
    shutdown(worker.wsgi)


def child_exit(server, worker):
    """Drop a dead worker's live gauges (open streams) from the merged metrics."""
    from prometheus_client import multiprocess
    multiprocess.mark_process_dead(worker.pid)
