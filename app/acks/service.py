"""Acknowledging a notice, and running the escalation steps of the notices nobody acknowledged.

An acknowledgement is a deliberate act (POST /{id}/ack), unlike a read: opening
the inbox marks everything read, and acknowledges nothing. It sets `acked_at`
once (a repeat answers the first), marks the notification read, cancels its
pending escalation steps in the same transaction, is audited with the
client's address (a keyed hash, as every audit row) and user agent, and tells
every stream of the user (`event: ack`, then the new counts).

Escalation steps are rows (migrations_sql/0019), run by the scheduler thread
of every worker (app/dispatch/schedule.py) in one transaction per batch: the
step's delivery rows are written and the step marked `done` together, or
nothing is, so a worker killed at any moment never runs a step twice, and the
delivery jobs (enqueued after the commit, or by the relay when that is lost)
send each delivery once. The rules a step's deliveries follow are in
app/deliveries/deliver.py and docs/acknowledgements.md.
"""
import logging

from flask import current_app, request

from .. import audit, db
from ..errors import AckNotRequired, FailedToAcknowledge, NotFound
from ..notifications import events
from ..notifications.model import rfc3339
from ..queues.enqueue import enqueue_on_their_lanes
from . import callbacks, repository

log = logging.getLogger(__name__)
STEPS_PER_PASS = 500


def acknowledge(user, notification_id):
    """Acknowledge one of the user's notices; returns its row (acked_at set, the first one's on a repeat)."""
    with db.writing(FailedToAcknowledge) as conn:
        found = repository.acknowledge(conn, user.id, notification_id, user.visible_customers())
        if found is None:
            raise NotFound()
        row, first = found
        if not row["ack_required"]:
            raise AckNotRequired()
        if first:
            cancelled = repository.cancel_escalations(conn, notification_id, "acknowledged")
            callbacks.on_ack(conn, notification_id)
            audit.record(conn, "notification.ack", ("notification", notification_id),
                         {"acked_at": rfc3339(row["acked_at"]), "escalations_cancelled": cancelled,
                          "user_agent": (request.headers.get("User-Agent") or "")[:200]})
    if first:
        events.after_change(current_app, conn, user.id, events.about(
            "ack", row["customer_id"], {"ids": [str(notification_id)], "acked_at": rfc3339(row["acked_at"])}))
    return row


def run_due_steps(app, conn, limit=STEPS_PER_PASS):
    """Run (or cancel) the escalation steps due now; returns how many were handled."""
    with db.transaction(conn):
        steps = repository.claim_due_steps(conn, limit)
        deliveries = []
        for step in steps:
            reason = _cancelled_because(step)
            if reason:
                repository.finish_step(conn, step, "cancelled", reason)
                continue
            new = repository.insert_step_deliveries(conn, step)
            deliveries.extend(new)
            repository.finish_step(conn, step, "done", None if new else "already delivered on these channels")
    enqueue_on_their_lanes(app, conn, deliveries)   # on their notice's lane (app/queues/lanes.py)
    if steps:
        log.info("%d escalation step(s) run, %d deliveries enqueued", len(steps), len(deliveries))
    return len(steps)


def _cancelled_because(step):
    if step["acked_at"] is not None:
        return "acknowledged"
    if step["deleted_at"] is not None:
        return "deleted"
    if step["expired"]:
        return "expired"
    return None
