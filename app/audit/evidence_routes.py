"""`GET /v1/notifications/{id}/evidence` (API key with the `audit` scope): one notification's
evidence, the document `flask audit export` writes (app/audit/evidence.py)."""
import marshmallow as ma
from flask import current_app
from flask.views import MethodView
from marshmallow import fields

from .. import db
from ..api import Blueprint
from ..api.schema import parse_id
from ..errors import FailedToFetchEvidence, NotFound
from ..security.auth import service_required
from . import evidence

blp = Blueprint("evidence", __name__, description="The evidence of one notification (API key, audit scope)")


class EvidenceSchema(ma.Schema):
    format = fields.String(metadata={"example": evidence.FORMAT})
    generated_at = fields.String(metadata={"format": "date-time"})
    notification = fields.Dict(metadata={"description": "the notification row as stored"})
    trigger = fields.Dict(allow_none=True, metadata={
        "description": "api_key_id (the key's id, never the key), created_at, request_id, idempotency_key, "
                       "body_hash, audit_id; null for a notification stored without a trigger"})
    deliveries = fields.List(fields.Dict(), metadata={
        "description": "per channel: status, reason, provider_message_id, resolution_at_dispatch, and every "
                       "attempt (attempt, outcome, error, provider_message_id, started_at, finished_at, "
                       "resolution: preferences, quiet hours and consent as resolved for that attempt)"})
    interactions = fields.Dict(metadata={
        "description": "read_at, deleted_at, and events: each read, unread and deletion with time, actor, "
                       "client (keyed hash of its address), request id and audit_id"})
    consent = fields.Dict(metadata={"description": "required (the group requires consent) and the user's "
                                                   "consent ledger records of this group and of contacts"})
    audit = fields.Dict(metadata={"description": "rows: the audit rows behind the trigger and interactions, "
                                                 "with chain position, prev_hash, hash and key_id; findings: "
                                                 "rows that do not verify (empty when all hold)"})
    chain = fields.Dict(metadata={"description": "head: the chain's sealed head now; anchor: the latest "
                                                 "anchor of AUDIT_ANCHOR_PATH, if configured"})


@blp.route("/<notification_id>/evidence")
class Evidence(MethodView):
    decorators = [service_required("audit")]

    @blp.response(200, EvidenceSchema)
    def get(self, notification_id):
        """Everything the service holds about how one notification was told: the notification, its
        trigger, every delivery and attempt with what it was decided on, reads and deletions, the
        consent on record, and the audit rows behind them with their hash-chain links

        Audit rows not sealed yet (committed within the last seconds) show `hash` null and appear in
        `audit.findings`; `flask audit export` seals before it gathers.
        """
        nid = parse_id(notification_id)
        with db.reading(FailedToFetchEvidence) as conn:
            found = evidence.gather(conn, nid, current_app.config.get("AUDIT_ANCHOR_PATH"))
        if found is None:
            raise NotFound()
        return found
