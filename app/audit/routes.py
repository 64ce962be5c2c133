"""`GET /v1/notifications/audit` (API key): the audit log, filtered and paged, newest first."""
import marshmallow as ma
from flask.views import MethodView
from marshmallow import fields, validate

from .. import audit, db
from ..api import Blueprint
from ..api.schema import StrictSchema, UtcDateTime
from ..errors import FailedToFetchAudit, InvalidRequest
from ..security.auth import service_required

blp = Blueprint("audit", __name__, description="The tamper-evident audit log (API key)")


class AuditQuerySchema(StrictSchema):
    actor = fields.String(load_default=None, validate=validate.Length(min=1, max=200),
                          metadata={"description": "`<id>` or `<type>:<id>` (type: user, service, operator, system)"})
    action = fields.String(load_default=None, validate=validate.Length(min=1, max=64),
                           metadata={"example": "notification.read"})
    target = fields.String(load_default=None, validate=validate.Length(min=1, max=200),
                           metadata={"description": "`<id>` or `<type>:<id>`, e.g. `notification:<uuid>`"})
    since = UtcDateTime(data_key="from", load_default=None, metadata={"description": "RFC 3339, inclusive"})
    until = UtcDateTime(data_key="to", load_default=None, metadata={"description": "RFC 3339, exclusive"})
    limit = fields.Integer(load_default=100, validate=validate.Range(min=1, max=500))
    offset = fields.Integer(load_default=0, validate=validate.Range(min=0, max=1_000_000))


class AuditEntrySchema(ma.Schema):
    id = fields.Integer()
    at = fields.String(metadata={"format": "date-time"})
    actor_type = fields.String()
    actor_id = fields.String(metadata={"description": "user id, API key id (never the key), operator login"})
    request_id = fields.String(allow_none=True)
    client_ip = fields.String(allow_none=True)
    action = fields.String()
    target_type = fields.String()
    target_id = fields.String(allow_none=True)
    change = fields.Dict()
    position = fields.Integer(allow_none=True, metadata={"description": "the row's place in the chain, from 1"
                                                                       " (null until sealed)"})
    prev_hash = fields.String(allow_none=True, metadata={"description": "the hash of the row before it in the chain"
                                                                       " (null until sealed)"})
    hash = fields.String(allow_none=True, metadata={"description": "HMAC-SHA256 under key `key_id` of the row's"
                                                                  " place, prev_hash, id, time and content"
                                                                  " (docs/audit.md; null until sealed)"})
    key_id = fields.String(allow_none=True, metadata={"description": "the chain key that sealed the row (null until"
                                                                    " sealed, and for rows sealed before keyed hashing)"})
    sealed = fields.Boolean(metadata={"description": "linked into the hash chain yet (rows are sealed by the"
                                                    " workers within seconds of their commit)"})
    verified = fields.Boolean(metadata={"description": "sealed, matches its hash and follows the row before it"})


class AuditPageSchema(ma.Schema):
    items = fields.List(fields.Nested(AuditEntrySchema))
    limit = fields.Integer()
    offset = fields.Integer()
    has_more = fields.Boolean()
    verified = fields.Boolean(metadata={"description": "every row of this page is `verified`"})


@blp.route("/audit")
class AuditLog(MethodView):
    decorators = [service_required("audit")]

    @blp.query(AuditQuerySchema)
    @blp.response(200, AuditPageSchema)
    def get(self, actor, action, target, since, until, limit, offset):
        """Who changed what, when, from where; each row checked against the hash chain

        `verified` is false for a row that was edited, or whose predecessor was
        deleted or edited, and for a row not sealed into the chain yet
        (`sealed` false: its transaction committed moments ago, or an older one
        is still open); `flask audit verify` seals what it can and checks the
        whole chain.
        """
        if since is not None and until is not None and until <= since:
            raise InvalidRequest(errors={"to": ["Must be after `from`."]})
        with db.failing_as(FailedToFetchAudit):
            rows = audit.search(db.get_conn(), actor=actor, action=action, target=target, since=since,
                                until=until, limit=limit + 1, offset=offset)
        items = [audit.public(row) for row in rows[:limit]]
        return {"items": items, "limit": limit, "offset": offset, "has_more": len(rows) > limit,
                "verified": all(item["verified"] for item in items)}
