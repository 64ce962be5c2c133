"""The consent ledger's history: a user's own (`GET /v1/notifications/preferences/history`, bearer
token) and one user's for a service (`GET /v1/notifications/users/{user_id}/preferences/history`,
API key with the `audit` scope: the ledger is evidence, read by whoever reads the audit log, not by
every service that sets contacts)."""
import marshmallow as ma
from flask.views import MethodView
from marshmallow import fields, validate

from .. import consent, db
from ..api import Blueprint
from ..api.schema import StrictSchema, parse_id
from ..errors import FailedToFetchConsent
from ..notifications.model import rfc3339
from ..security.auth import UserView, current_user, service_required

blp = Blueprint("consent", __name__, description="The consent ledger: every contact and preference change")


class HistoryQuerySchema(StrictSchema):
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=200))
    before = fields.Integer(load_default=None, validate=validate.Range(min=1),
                            metadata={"description": "only versions below this one (the previous page's "
                                                     "`next_before`)"})


class ConsentRecordSchema(ma.Schema):
    version = fields.Integer(metadata={"description": "1, 2, 3… per user"})
    at = fields.String(metadata={"format": "date-time"})
    source = fields.String(metadata={"description": "contact, preferences or quiet_hours"})
    actor_type = fields.String(metadata={"description": "user or service"})
    actor_id = fields.String(metadata={"description": "the user's id, or the API key id (never the key)"})
    request_id = fields.String(allow_none=True)
    consent_text_version = fields.String(allow_none=True)
    customer_id = fields.String(allow_none=True, metadata={"description": "null: for all customers"})
    group = fields.String(allow_none=True)
    event = fields.String(allow_none=True, metadata={"description": "null: the whole group"})
    channel = fields.String(allow_none=True, metadata={"description": "null: every channel, or not channel-bound"})
    address_hash = fields.String(allow_none=True, metadata={
        "description": "keyed hash of the address on file (never the address)"})
    granted = fields.Boolean(allow_none=True, metadata={
        "description": "true: consent given for this channel and address; false: withdrawn; null: not a consent"})
    change = fields.Dict(metadata={"description": "old and new values (addresses as keyed hashes)"})


class HistoryPageSchema(ma.Schema):
    items = fields.List(fields.Nested(ConsentRecordSchema))
    has_more = fields.Boolean()
    next_before = fields.Integer(allow_none=True)


def public(row):
    return {"version": row["version"], "at": rfc3339(row["at"]), "source": row["source"],
            "actor_type": row["actor_type"], "actor_id": row["actor_id"], "request_id": row["request_id"],
            "consent_text_version": row["consent_text_version"],
            "customer_id": str(row["customer_id"]) if row["customer_id"] else None, "group": row["group_name"],
            "event": row["event"], "channel": row["channel"], "address_hash": row["address_hash"],
            "granted": row["granted"], "change": row["change"]}


def _page(user_id, limit, before, customers=None):
    with db.reading(FailedToFetchConsent) as conn:
        rows = consent.history(conn, user_id, limit + 1, before, customers)
    items = [public(row) for row in rows[:limit]]
    more = len(rows) > limit
    return {"items": items, "has_more": more, "next_before": items[-1]["version"] if more else None}


@blp.route("/preferences/history")
class OwnHistory(UserView):
    @blp.query(HistoryQuerySchema)
    @blp.response(200, HistoryPageSchema)
    def get(self, limit, before):
        """The caller's consent ledger, newest first: every contact and preference change, who made it,
        and the consent text version shown

        A token limited by `customers` sees the records for all customers and for those customers.
        """
        user = current_user()
        return _page(user.id, limit, before, user.visible_customers())


@blp.route("/users/<user_id>/preferences/history")
class UserHistory(MethodView):
    decorators = [service_required("audit")]

    @blp.query(HistoryQuerySchema)
    @blp.response(200, HistoryPageSchema)
    def get(self, limit, before, user_id):
        """One user's consent ledger, newest first (API key with the `audit` scope)"""
        return _page(parse_id(user_id, "Invalid user ID"), limit, before)
