"""The relay: finds accepted work whose job was lost and enqueues it again; the audit sealer; and
the scheduler of triggers with a send_at (app/dispatch/schedule.py), a thread of its own.

A 202 means the trigger row committed; the drain job that should take it may
still be lost (Redis was down when the trigger was accepted, restarted
without persistence, or the worker running the drain was killed). Every few
seconds this thread looks for a trigger still due past `relay.stale_after`
and, when no dispatch job is queued or running on a live worker, wakes a
drain (replacing the wake flag, which may name a dead job). It does the same
for deliveries still unfinished past `relay.stale_after`, per delivery job.
The jobs are idempotent, so a spurious one costs a little work, never a
duplicate.

The same thread seals the audit rows written since its last pass into the
hash chain (app/audit/chain.py), one worker at a time, and every
AUDIT_ANCHOR_SECONDS one worker anchors the chain's head outside the database
(app/audit/anchor.py). About every half minute it makes the history's partitions
ahead of the sequence (app/history/partitions.py).

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

from app import db
from app.history import compaction, partitions as history_partitions, retention
from app.audit import anchor as audit_anchor, chain as audit_chain
from app.deliveries import repository as deliveries
from app.dispatch import repository as triggers
from app.acks import callbacks as ack_callbacks
from app.dispatch import schedule
from app.queues.enqueue import deliver_job_id, enqueue_deliveries
from app.queues.liveness import dispatch_in_hand, job_is_alive
from app.queues.waker import wake_dispatcher
from app.redact import redact, summary

log = logging.getLogger(__name__)


def sweep(app):
    """One pass; returns (drains woken, one at most per lane; deliveries enqueued again, on their lanes)."""
    domain = app.config["DOMAIN"]
    with app.app_context(), db.connection() as conn:
        stale = triggers.stale_lanes(conn, domain.relay_stale_after)
        lost_deliveries = [d for d in deliveries.stale(conn, domain.relay_stale_after)
                           if not job_is_alive(deliver_job_id(d), app)]
        by_lane = deliveries.lanes(conn, lost_deliveries)
        conn.commit()
        woken = sum(1 for lane in stale if not dispatch_in_hand(app, lane)
                    and wake_dispatcher(app, force=True, lane=lane))
        for lane, ids in by_lane.items():
            enqueue_deliveries(ids, app, lane)
    if woken or lost_deliveries:
        log.warning("relay woke %d drain(s) for waiting triggers and re-enqueued %d deliveries", woken,
                    len(lost_deliveries))
    return woken, len(lost_deliveries)


def seal_audit(app):
    """Link the audit rows committed since the last pass into the chain; returns how many."""
    with app.app_context(), db.connection() as conn:
        return audit_chain.seal_all(conn)


def anchor_audit(app):
    """Every AUDIT_ANCHOR_SECONDS one worker writes the chain's head outside the database."""
    return audit_anchor.periodic(app)


def _loop(app, stop):
    interval = app.config["DOMAIN"].relay_interval
    while not stop.wait(interval):
        for step in (sweep, seal_audit, anchor_audit, history_partitions.ensure_periodically):
            try:
                step(app)
            except Exception as exc:  # PostgreSQL or Redis down: try again next tick
                log.warning("relay %s failed: %s", step.__name__, summary(exc))


def worker_lease(app):
    """Seconds a worker's registration outlives its last renewal."""
    return max(5, int(3 * app.config["DOMAIN"].relay_interval))


class LeasedWorker(SimpleWorker):
    """A SimpleWorker whose own heartbeats (job start included) set the short lease, not RQ's
    job timeout + 60 s; the lease thread of `start_relay` renews it while the process lives."""

    lease = None

    def heartbeat(self, timeout=None, pipeline=None):
        return super().heartbeat(self.lease or timeout, pipeline=pipeline)

    def handle_job_failure(self, job, queue, started_job_registry=None, exc_string=""):
        """RQ keeps a failed job's traceback for a week and shows it to whoever reads Redis: redacted
        like a log line (app/redact.py)."""
        return super().handle_job_failure(job, queue, started_job_registry=started_job_registry,
                                          exc_string=redact(exc_string))

    def request_stop(self, signum, frame):
        """Warm shutdown: also tell a running drain to hand over at its next batch."""
        from workers.jobs import SHUTDOWN
        SHUTDOWN.set()
        return super().request_stop(signum, frame)


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
    threading.Thread(target=schedule.run, args=(app, stop), name="scheduler", daemon=True).start()
    threading.Thread(target=ack_callbacks.run, args=(app, stop), name="ack-callbacks", daemon=True).start()
    retention.schedule(app, stop)  # the periodic purge (app/history/retention.py), its own thread
    compaction.schedule(app, stop)  # closed partitions rewritten in user order (app/history/compaction.py)
    return stop
