"""Request and response shapes of the inbox, for validation and OpenAPI."""
import marshmallow as ma
from marshmallow import fields, validate

from ..api.schema import StrictBoolean, StrictSchema, UtcDateTime


class NotificationSchema(ma.Schema):
    """A notification as SPEC shows it; dumped from `model.to_public`."""

    id = fields.String(metadata={"format": "uuid"})
    customer_id = fields.String(allow_none=True, metadata={"format": "uuid"})
    type = fields.String()
    event = fields.String()
    title = fields.String()
    content = fields.String()
    link_url = fields.String(allow_none=True)
    link_text = fields.String(allow_none=True)
    rec_type = fields.String(allow_none=True)
    rec_id = fields.String(allow_none=True)
    read = fields.Boolean()
    read_at = fields.String(allow_none=True, metadata={"format": "date-time"})
    created_at = fields.String(metadata={"format": "date-time"})
    expires_at = fields.String(allow_none=True, metadata={
        "format": "date-time", "description": "after it: delivered on no channel, out of the inbox and counts"})
    ack_required = fields.Boolean(metadata={"description": "the user must acknowledge it (POST /{id}/ack)"})
    ack_deadline = fields.String(allow_none=True, metadata={"format": "date-time"})
    acked_at = fields.String(allow_none=True, metadata={"format": "date-time",
                                                        "description": "null until acknowledged"})


class InboxQuerySchema(StrictSchema):
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=200))
    offset = fields.Integer(load_default=0, validate=validate.Range(min=0, max=1_000_000))
    status = fields.String(load_default="all", validate=validate.OneOf(["read", "unread", "all"]))
    customer_id = fields.UUID(load_default=None)
    ack = fields.String(load_default=None, validate=validate.OneOf(["pending"]), metadata={
        "description": "`pending`: only the notices still awaiting acknowledgement"})
    include_expired = fields.Boolean(load_default=False, truthy={"true"}, falsy={"false"}, metadata={
        "description": "also list notifications past their expires_at (history)"})


class InboxSchema(ma.Schema):
    items = fields.List(fields.Nested(NotificationSchema))
    total = fields.Integer()
    unread = fields.Integer()
    limit = fields.Integer()
    offset = fields.Integer()


class ReadPatchSchema(StrictSchema):
    """An empty body marks read; `{"read": false}` marks unread."""

    read = StrictBoolean(load_default=True)


class ReadAllSchema(StrictSchema):
    """Every field narrows what is marked read; an empty body marks the whole inbox."""

    customer_id = fields.UUID(load_default=None)
    group = fields.String(load_default=None, validate=validate.Length(min=1, max=64),
                          metadata={"description": "a group or one of its aliases"})
    before = UtcDateTime(load_default=None, metadata={
        "description": "only notifications created at or before this time (RFC 3339, as in `created_at`)"})


class ReadAllResultSchema(ma.Schema):
    updated = fields.Integer()


class UnreadCountSchema(ma.Schema):
    unread = fields.Integer()
    by_customer = fields.Dict(keys=fields.String(), values=fields.Integer(),
                              metadata={"description": "customer id (or `none`) -> unread"})
    by_group = fields.Dict(keys=fields.String(), values=fields.Integer(),
                           metadata={"description": "every configured group -> unread"})
    ack_pending = fields.Integer(metadata={"description": "notices still awaiting acknowledgement"})
