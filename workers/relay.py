"""The relay: finds accepted work whose job was lost and enqueues it again.

A 202 means the trigger row committed; its RQ job may still be lost (Redis
was down at enqueue time, restarted without persistence, or the worker
running it was killed). Every few seconds this thread looks for triggers
still `pending` and deliveries still unfinished past `relay.stale_after`,
asks RQ whether their job is alive, and enqueues the ones that are not. The
jobs are idempotent, so a spurious re-enqueue costs a little work, never a
duplicate.
"""
import logging
import threading

from app import db
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


def start_relay(app):
    """Run the relay in a daemon thread of the worker process; returns its stop event."""
    stop = threading.Event()
    threading.Thread(target=_loop, args=(app, stop), name="relay", daemon=True).start()
    return stop
