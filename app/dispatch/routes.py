"""Service endpoints: the queued trigger, the direct push, following a trigger."""
from flask import current_app, request
from flask.views import MethodView

from .. import db
from ..acks.repository import trigger_ack_state
from ..api import Blueprint
from ..api.schema import parse_id
from ..errors import NotFound
from ..notifications.model import rfc3339
from ..security.auth import current_service, service_required
from . import repository
from .accept import accept_trigger
from .push import push
from .schedule import cancel
from .schemas import (AcceptedSchema, IdempotencyHeaderSchema, PushedSchema, QueuedTriggerSchema, TriggerSchema,
                      TriggerStatusSchema)

blp = Blueprint("dispatch", __name__, description="Services trigger notifications (API key)")

# One instance for every request: given the class, webargs would build (and deep-copy the fields of)
# a new schema per request, a tenth of a trigger's CPU.
TRIGGER_SCHEMA = TriggerSchema()
QUEUED_TRIGGER_SCHEMA = QueuedTriggerSchema()
IDEMPOTENCY_HEADER = IdempotencyHeaderSchema()


@blp.route("/trigger")
class Trigger(MethodView):
    decorators = [service_required("trigger")]

    @blp.arguments(QUEUED_TRIGGER_SCHEMA)
    @blp.arguments(IDEMPOTENCY_HEADER, location="headers", as_kwargs=True)
    @blp.response(202, AcceptedSchema)
    def post(self, body, idempotency_key):
        """Accept a notification for queued storage and delivery

        The 202 is sent once the trigger is stored durably; a worker stores one
        notification per user, pushes it to their streams and delivers it on
        every enabled channel. 503 `service_unavailable` means nothing was accepted.
        With a future `send_at` the trigger waits, `scheduled`, until that time.
        """
        return accept_trigger(body, request.get_json, current_service(), idempotency_key)


@blp.route("/triggers/<trigger_id>")
class TriggerStatus(MethodView):
    decorators = [service_required("trigger")]

    @blp.response(200, TriggerStatusSchema)
    def get(self, trigger_id):
        """Follow an accepted trigger: scheduled until its send_at, pending until every user's
        notification is stored, then dispatched (or cancelled)"""
        row = repository.get_trigger(db.get_conn(), parse_id(trigger_id), current_service())
        if row is None:
            raise NotFound("Trigger not found")
        view = {"trigger_id": str(row["id"]), "status": row["status"], "users_total": row["users_total"],
                "users_done": row["users_done"], "created_at": rfc3339(row["created_at"]),
                "dispatched_at": rfc3339(row["dispatched_at"]), "send_at": rfc3339(row["send_at"]),
                "expires_at": row["body"].get("expires_at"), "cancelled_at": rfc3339(row["cancelled_at"])}
        if row["body"].get("ack"):
            view["ack"] = ack_view(db.get_conn(), row["id"])
        return view

    @blp.response(204)
    def delete(self, trigger_id):
        """Cancel a scheduled trigger before its send_at: it is never stored nor delivered

        409 `trigger_not_cancellable` once its send_at has come (it is due or dispatched) or when
        it was never scheduled; cancelling a cancelled trigger again is a 204.
        """
        conn = db.get_conn()
        with db.transaction(conn):
            cancel(conn, parse_id(trigger_id), current_service())
        return None


def ack_view(conn, trigger_id):
    """Each user's acknowledgement state (acknowledged, pending, overdue) and their counts."""
    counts, users = trigger_ack_state(conn, trigger_id, ACK_USERS_SHOWN)
    return dict(counts, users=[{"user_id": str(u["user_id"]), "state": u["state"], "acked_at": rfc3339(u["acked_at"])}
                               for u in users])


ACK_USERS_SHOWN = 1000   # the first users, by id; the counts cover them all


@blp.route("/sse")
class DirectPush(MethodView):
    decorators = [service_required("push")]

    @blp.arguments(TRIGGER_SCHEMA)
    @blp.response(200, PushedSchema)
    def post(self, body):
        """Push straight to the streams open now (not stored, not replayed, no `id:` line)

        Users whose in-app channel is off for the event (and customer) are skipped, as a
        stored notification would be; a locked event reaches everyone. `delivered_streams`
        counts the open streams that took it, `skipped_by_preference` the users left out.
        """
        return push(current_app, body, current_service())
