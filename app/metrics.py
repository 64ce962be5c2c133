"""Prometheus metrics at `/metrics`, counted across every gunicorn and RQ worker.

With PROMETHEUS_MULTIPROC_DIR set (gunicorn.conf.py sets one when absent)
each process writes its samples to files there and a scrape merges them;
without it (tests, one-off CLI) the process's own registry is served.
Queue depths are read from Redis at scrape time.

With METRICS_TOKEN set, a scrape must send `Authorization: Bearer <METRICS_TOKEN>`
(Prometheus: `authorization: {credentials: ...}`); without it /metrics is open, as the
SPEC has it. The same token guards the heap scan of /healthz (app/health.py).
"""
import datetime
import hmac
import os
import time

from flask import Blueprint, Response, current_app, g, request
from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram,
                               generate_latest, multiprocess, REGISTRY)
from prometheus_client.core import GaugeMetricFamily

from .bus import codec as _codec
from .errors import InvalidMetricsToken, MetricsTokenNotConfigured, dependency_failed

REQUEST_LATENCY = Histogram("notif_http_request_duration_seconds", "REST and stream-open latency",
                            ["endpoint", "method", "status"])
OPEN_STREAMS = Gauge("notif_open_streams", "SSE streams open", multiprocess_mode="livesum")
STORED = Counter("notif_notifications_stored_total", "Notifications stored by dispatch jobs")
PUBLISHED = Counter("notif_events_published_total", "Events published to stream channels")
FANOUT_LATENCY = Histogram("notif_fanout_seconds", "Time from a notification's creation to its publish",
                           buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300))
DELIVERIES = Counter("notif_deliveries_total", "Delivery attempts by channel and outcome", ["channel", "outcome"])
DELIVERY_LATENCY = Histogram("notif_delivery_seconds", "Time from notification to a sent delivery", ["channel"],
                             buckets=(.05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300, 900))
PROVIDER_SENDS = Counter("notif_provider_sends_total", "Sends per provider of a failover channel "
                         "(app/channels/failover.py): sent, failed, refused, breaker_open (passed over)",
                         ["channel", "provider", "outcome"])
DELIVERY_REPORTS = Counter("notif_delivery_reports_total", "Providers' delivery reports that verified "
                           "(app/deliveries/reports.py): recorded, or ignored (unknown message, a repeat)",
                           ["provider", "status", "outcome"])

HUB_DROPPED = Counter("notif_hub_dropped_messages_total",
                      "Channel messages the stream hub refused to frame (app/bus/codec.py)", ["reason"])
HUB_RESTARTS = Counter("notif_hub_restarts_total",
                       "Stream hub reconnections to Redis: `connection` lost, or an unexpected `error`", ["cause"])
DEPENDENCY_ERRORS = Counter("notif_dependency_errors_total",
                            "Requests answered 503 because PostgreSQL or Redis failed (app/errors.py)", ["dependency"])
REPLICA_READS = Counter("notif_replica_reads_total", "Reads that could go to DATABASE_REPLICA_URL, by where they "
                        "went and why (app/replica.py)", ["target", "reason"])
REPLICA_LAG = Gauge("notif_replica_lag_seconds", "The replica's lag at the process's last probe (1e9: down)",
                    multiprocess_mode="livemax")
# Zero series from the start, so that a rate() or an alert has a series before the first failure.
for _cause in ("connection", "error"):
    HUB_RESTARTS.labels(_cause)
for _reason in _codec.REASONS:
    HUB_DROPPED.labels(_reason)
for _dependency in ("postgresql", "redis"):
    DEPENDENCY_ERRORS.labels(_dependency)

blp = Blueprint("metrics", __name__)


class QueueCollector:
    """Queue depth and failed jobs per RQ queue, read when scraped."""

    def __init__(self, app):
        self.app = app

    def collect(self):
        from .domain import LANES
        from .queues import enqueue, lanes
        depth = GaugeMetricFamily("notif_queue_depth", "Jobs waiting per queue", labels=["queue"])
        lane_depth = GaugeMetricFamily("notif_lane_queue_depth", "Jobs waiting per priority lane and purpose "
                                       "(app/queues/lanes.py)", labels=["lane", "purpose"])
        failed = GaugeMetricFamily("notif_queue_failed_jobs", "Jobs in the failed registry", labels=["queue"])
        oldest = GaugeMetricFamily("notif_queue_oldest_job_age_seconds",
                                   "Seconds the job at the head of the queue has waited (0: empty)", labels=["queue"])
        try:
            for purpose, base in self.app.config["DOMAIN"].queues.items():
                for lane in LANES:
                    name = base + lanes.queue_suffix(lane)
                    queue = enqueue.queue(purpose, self.app, lane=lane)   # under the deployment's prefix
                    count = queue.count
                    depth.add_metric([name], count)
                    lane_depth.add_metric([lane, purpose], count)
                    failed.add_metric([name], queue.failed_job_registry.count)
                    oldest.add_metric([name], _oldest_job_age(queue))
        except Exception:  # Redis down: the scrape still answers with what it has
            pass
        else:
            yield from (depth, lane_depth, failed, oldest)
        yield from _breaker_states(self.app)
        from .dispatch import repository
        from .history import compaction, partitions
        lag = _from_database(repository.dispatch_lag)
        if lag is not None:
            yield GaugeMetricFamily("notif_dispatch_lag_seconds", "Seconds the oldest trigger due for dispatch "
                                    "has waited since it was accepted (0: none waits)", value=lag)
        headroom = _from_database(partitions.headroom)
        if headroom is not None:
            yield GaugeMetricFamily("notif_history_seq_headroom", "Values of seq the history's partitions still "
                                    "take (docs/history.md): below HISTORY_PARTITION_ROWS, the workers are not "
                                    "making partitions ahead", value=headroom)
        waiting = _from_database(compaction.backlog)
        if waiting is not None:
            yield GaugeMetricFamily("notif_history_uncompacted_partitions", "Closed partitions of the history "
                                    "not yet rewritten in user order (docs/history.md): more than one for long, "
                                    "no worker is compacting", value=waiting)


def _breaker_states(app):
    """Each provider's circuit breaker, read from Redis (0 closed, 1 open, 2 half-open)."""
    from .channels.breaker import STATE_VALUES
    family = GaugeMetricFamily("notif_provider_breaker_state", "Circuit breaker per provider: 0 closed, 1 open, "
                               "2 half-open (a probe may go)", labels=["channel", "provider"])
    for channel in app.extensions.get("channels", {}).values():
        for breaker in getattr(channel, "breakers", lambda: [])():
            family.add_metric([breaker.channel, breaker.provider], STATE_VALUES[breaker.state()])
    yield family


def _oldest_job_age(queue):
    """Age of the queue's head job; RQ keeps `enqueued_at` in UTC (naive in some versions)."""
    job_ids = queue.get_job_ids(0, 1)
    job = queue.fetch_job(job_ids[0]) if job_ids else None
    if job is None or job.enqueued_at is None:
        return 0.0
    enqueued = job.enqueued_at.replace(tzinfo=datetime.timezone.utc) if job.enqueued_at.tzinfo is None \
        else job.enqueued_at
    return max(0.0, (datetime.datetime.now(datetime.timezone.utc) - enqueued).total_seconds())


def _from_database(read):
    """`read(conn)`, read from the tables themselves (the outbox, the catalogue) so that a lost
    wake-up or a stopped worker shows; None when PostgreSQL is down (left out of this scrape)."""
    from . import db
    try:
        with db.connection() as conn:
            return read(conn)
    except Exception:
        return None


def check_operator_token(required=False):
    """Let the operator's bearer token through: 401 without it once METRICS_TOKEN is set; with
    none set, open unless `required` (then 403: the diagnostic is off)."""
    expected = current_app.config.get("METRICS_TOKEN") or ""
    if not expected:
        if required:
            raise MetricsTokenNotConfigured()
        return
    scheme, _, supplied = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(supplied.strip().encode(), expected.encode()):
        raise InvalidMetricsToken(headers={"WWW-Authenticate": 'Bearer realm="metrics"'})


@blp.get("/metrics")
def metrics():
    """Prometheus text exposition."""
    check_operator_token()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        body = generate_latest(registry)
    else:
        body = generate_latest(REGISTRY)
    queues = CollectorRegistry()
    queues.register(QueueCollector(current_app))
    return Response(body + generate_latest(queues), mimetype=CONTENT_TYPE_LATEST)


def _start_timer():
    g.metrics_start = time.perf_counter()


def _observe(response):
    start = g.pop("metrics_start", None)
    if start is not None and request.endpoint != "metrics.metrics":
        REQUEST_LATENCY.labels(request.endpoint or "unmatched", request.method,
                               str(response.status_code)).observe(time.perf_counter() - start)
    return response


def _count_dependency_error(sender, dependency):
    DEPENDENCY_ERRORS.labels(dependency).inc()


def init_app(app):
    app.register_blueprint(blp)
    dependency_failed.connect(_count_dependency_error)
    app.before_request(_start_timer)
    app.after_request(_observe)
