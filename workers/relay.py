"""The relay: finds accepted work whose job was lost and enqueues it again.

A 202 means the trigger row committed; its RQ job may still be lost (Redis
was down at enqueue time, restarted without persistence, or the worker
running it was killed). Every few seconds this thread looks for triggers
still `pending` and deliveries still unfinished past `relay.stale_after`,
asks RQ whether their job is alive, and enqueues the ones that are not. The
jobs are idempotent, so a spurious re-enqueue costs a little work, never a
duplicate.

A job counts as alive while the RQ worker that started it is registered in
Redis. RQ keeps a worker's key for the job's timeout plus a minute (11
minutes for a dispatch job) even after the process was SIGKILLed, so our
worker (`LeasedWorker`) keeps its key on a short lease (`worker_lease`)
instead, renewed by a thread of its own: a killed worker's key is gone
seconds later, and its job is re-enqueued by the relay of any surviving
worker.
"""
import logging
import threading

from rq import SimpleWorker

from app import db, retention
from app.deliveries import repository as deliveries
from app.dispatch import repository as triggers
from app.jobs_queue import (deliver_job_id, dispatch_job_id, enqueue_deliveries, enqueue_dispatch,
                            job_is_alive)

log = logging.getLogger(__name__)


def sweep(app):
    """One pass; returns (triggers, deliveries) enqueued again."""
    domain = app.config["DOMAIN"]
    with app.app_context(), db.connection() as conn:
        lost_triggers = [t for t in triggers.stale_triggers(conn, domain.relay_stale_after)
                         if not job_is_alive(dispatch_job_id(t), app)]
        lost_deliveries = [d for d in deliveries.stale(conn, domain.relay_stale_after)
                           if not job_is_alive(deliver_job_id(d), app)]
        conn.commit()
        for trigger_id in lost_triggers:
            enqueue_dispatch(trigger_id, app)
        enqueue_deliveries(lost_deliveries, app)
    if lost_triggers or lost_deliveries:
        log.warning("relay re-enqueued %d trigger(s) and %d deliveries", len(lost_triggers), len(lost_deliveries))
    return len(lost_triggers), len(lost_deliveries)


def _loop(app, stop):
    interval = app.config["DOMAIN"].relay_interval
    while not stop.wait(interval):
        try:
            sweep(app)
        except Exception as exc:  # PostgreSQL or Redis down: try again next tick
            log.warning("relay pass failed: %s: %s", type(exc).__name__, exc)


def worker_lease(app):
    """Seconds a worker's registration outlives its last renewal."""
    return max(5, int(3 * app.config["DOMAIN"].relay_interval))


class LeasedWorker(SimpleWorker):
    """A SimpleWorker whose own heartbeats (job start included) set the short lease, not RQ's
    job timeout + 60 s; the lease thread of `start_relay` renews it while the process lives."""

    lease = None

    def heartbeat(self, timeout=None, pipeline=None):
        return super().heartbeat(self.lease or timeout, pipeline=pipeline)


def _keep_registration_short(app, worker_key, stop):
    """Renew this worker's RQ key on a short lease (no-op until RQ has registered it)."""
    connection, lease = app.extensions["redis"], worker_lease(app)
    interval = min(app.config["DOMAIN"].relay_interval, lease / 3)
    while True:
        try:
            connection.expire(worker_key, lease)
        except Exception as exc:  # Redis down: the key is gone with it anyway
            log.debug("worker lease not renewed: %s", type(exc).__name__)
        if stop.wait(interval):
            return


def start_relay(app, worker_key=None):
    """Run the relay (and the worker's lease, given its RQ key) in daemon threads; returns their stop event."""
    stop = threading.Event()
    if worker_key:
        threading.Thread(target=_keep_registration_short, args=(app, worker_key, stop), name="worker-lease",
                         daemon=True).start()
    threading.Thread(target=_loop, args=(app, stop), name="relay", daemon=True).start()
    retention.schedule(app, stop)  # the periodic purge (app/retention.py), its own thread
    return stop
