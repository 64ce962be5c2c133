"""Service endpoints: the queued trigger, the direct push, following a trigger."""
from flask import current_app, request
from flask.views import MethodView
from flask_smorest import Blueprint

from .. import db
from ..api.schema import parse_id
from ..errors import InvalidRequest, NotFound
from ..notifications.model import rfc3339
from ..ratelimit import charge_recipients
from ..security.auth import SERVICE_SECURITY, current_service, service_required
from . import repository
from .accept import accept_trigger
from .push import push
from .schemas import AcceptedSchema, PushedSchema, TriggerSchema, TriggerStatusSchema, resolve_event

blp = Blueprint("dispatch", __name__, url_prefix="/v1/notifications",
                description="Services trigger notifications (API key)")

# One instance for every request: given the class, webargs would build (and deep-copy the fields of)
# a new schema per request, a tenth of a trigger's CPU.
TRIGGER_SCHEMA = TriggerSchema()
IDEMPOTENCY_DOC = {"parameters": [{"in": "header", "name": "Idempotency-Key", "required": False,
                                   "schema": {"type": "string", "maxLength": 200},
                                   "description": "repeat with the same body: same answer, nothing new"}]}


@blp.route("/trigger")
class Trigger(MethodView):
    decorators = [service_required("trigger")]

    @blp.doc(security=SERVICE_SECURITY, **IDEMPOTENCY_DOC)
    @blp.arguments(TRIGGER_SCHEMA)
    @blp.response(202, AcceptedSchema)
    def post(self, body):
        """Accept a notification for queued storage and delivery

        The 202 is sent once the trigger is stored durably; a worker stores one
        notification per user, pushes it to their streams and delivers it on
        every enabled channel. 503 `service_unavailable` means nothing was accepted.
        """
        event, _ = resolve_event(current_app.config["DOMAIN"], body)
        key = request.headers.get("Idempotency-Key") or None
        if key is not None and len(key) > 200:
            raise InvalidRequest(errors={"Idempotency-Key": ["At most 200 characters."]})
        if key is not None and "\x00" in key:
            raise InvalidRequest(errors={"Idempotency-Key": ["Must not contain NUL characters."]})
        response, _ = accept_trigger(body, request.get_json, current_service(), key, event.group)
        return response


@blp.route("/triggers/<trigger_id>")
class TriggerStatus(MethodView):
    decorators = [service_required("trigger")]

    @blp.doc(security=SERVICE_SECURITY)
    @blp.response(200, TriggerStatusSchema)
    def get(self, trigger_id):
        """Follow an accepted trigger: pending until every user's notification is stored"""
        row = repository.get_trigger(db.get_conn(), parse_id(trigger_id), current_service())
        if row is None:
            raise NotFound("Trigger not found")
        return {"trigger_id": str(row["id"]), "status": row["status"], "users_total": row["users_total"],
                "users_done": row["users_done"], "created_at": rfc3339(row["created_at"]),
                "dispatched_at": rfc3339(row["dispatched_at"])}


@blp.route("/sse")
class DirectPush(MethodView):
    decorators = [service_required("push")]

    @blp.doc(security=SERVICE_SECURITY)
    @blp.arguments(TRIGGER_SCHEMA)
    @blp.response(200, PushedSchema)
    def post(self, body):
        """Push straight to the streams open now (not stored, not replayed, no `id:` line)

        Users whose in-app channel is off for the event (and customer) are skipped, as a
        stored notification would be; a locked event reaches everyone. `delivered_streams`
        counts the open streams that took it, `skipped_by_preference` the users left out.
        """
        event, _ = resolve_event(current_app.config["DOMAIN"], body)
        charge_recipients(current_service(), len(body["user_ids"]))
        return push(current_app, body, event)
