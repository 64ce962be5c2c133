"""Service endpoints: the queued trigger, the direct push, following a trigger."""
import datetime
import orjson
import uuid

from flask import current_app, request
from flask.views import MethodView
from flask_smorest import Blueprint

from .. import audit, db
from ..auth import SERVICE_SECURITY, current_service, service_required
from ..errors import InvalidRequest, NotFound
from ..notifications.model import rfc3339
from ..notifications.routes import parse_id
from ..pubsub import direct_message, publisher
from ..ratelimit import charge_recipients
from . import repository
from .accept import accept_trigger
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
        """Push straight to the streams open now (not stored, not replayed, no `id:` line)"""
        event, _ = resolve_event(current_app.config["DOMAIN"], body)
        charge_recipients(current_service(), len(body["user_ids"]))
        now = rfc3339(datetime.datetime.now(datetime.timezone.utc))
        customer = str(body["customer_id"]) if body.get("customer_id") else None
        public = {"id": str(uuid.uuid4()), "customer_id": customer, "type": event.group, "event": event.name,
                  "title": body["title"], "content": body.get("content") or "",
                  "link_url": body.get("link_url"), "link_text": body.get("link_text"),
                  "rec_type": body.get("rec_type"), "rec_id": body.get("rec_id"),
                  "read": False, "read_at": None, "created_at": now}
        encoded = orjson.dumps(public).decode()
        conn = db.get_conn()
        with db.autocommit(conn):  # audited before it goes out: no push is ever unrecorded (one round trip)
            db.one_transaction(conn, [audit.append_statement(
                "notification.push", ("push", public["id"]),
                audit.push_change(event.group, event.name, customer, body["user_ids"]))])
        sent = publisher(current_app).publish_same(body["user_ids"], direct_message(customer, encoded))
        return {"message": "Notification sent to all connected users", "users": sent}
