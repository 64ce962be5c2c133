"""Request and response shapes of the inbox, for validation and OpenAPI."""
import marshmallow as ma
from marshmallow import fields, validate


class StrictSchema(ma.Schema):
    """Unknown fields are a client mistake (422), never silently dropped."""

    class Meta:
        unknown = ma.RAISE


class StrictBoolean(fields.Boolean):
    """JSON true or false only: 1, "yes" or "true" are a 422, not a guess."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, bool):
            raise self.make_error("invalid", input=value)
        return value


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


class InboxQuerySchema(StrictSchema):
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=200))
    offset = fields.Integer(load_default=0, validate=validate.Range(min=0, max=1_000_000))
    status = fields.String(load_default="all", validate=validate.OneOf(["read", "unread", "all"]))
    customer_id = fields.UUID(load_default=None)


class InboxSchema(ma.Schema):
    items = fields.List(fields.Nested(NotificationSchema))
    total = fields.Integer()
    unread = fields.Integer()
    limit = fields.Integer()
    offset = fields.Integer()


class ReadPatchSchema(StrictSchema):
    """An empty body marks read; `{"read": false}` marks unread."""

    read = StrictBoolean(load_default=True)
