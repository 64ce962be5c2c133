"""Request and response shapes of the inbox, for validation and OpenAPI."""
import datetime

import marshmallow as ma
from marshmallow import fields, validate


def has_nul(value):
    """A NUL (U+0000) anywhere in a string, list or mapping: PostgreSQL text cannot hold one."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, (list, tuple)):
        return any(has_nul(item) for item in value)
    if isinstance(value, dict):
        return any(has_nul(k) or has_nul(v) for k, v in value.items())
    return False


class StrictSchema(ma.Schema):
    """Unknown fields are a client mistake (422), never silently dropped; so is a NUL character,
    which no text column can store (a 422 here rather than a 500 from the database)."""

    class Meta:
        unknown = ma.RAISE

    @ma.pre_load
    def _refuse_nul(self, data, **_):
        if hasattr(data, "keys"):
            bad = [key for key in data.keys() if has_nul(key) or has_nul(data[key])]
            if bad:
                raise ma.ValidationError({key: ["Must not contain NUL characters."] for key in bad})
        return data


class UtcDateTime(fields.AwareDateTime):
    """An RFC 3339 time with its offset, loaded as UTC. PostgreSQL refuses offsets past ±15:59
    and Python cannot shift a time past year 1 or 9999: both are a 422 here, never a 500."""

    default_error_messages = {"range": "Must be a time between the years 1 and 9999 in UTC."}

    def _deserialize(self, value, attr, data, **kwargs):
        parsed = super()._deserialize(value, attr, data, **kwargs)
        try:
            return parsed.astimezone(datetime.timezone.utc)
        except OverflowError:
            raise self.make_error("range")


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


class ReadAllSchema(StrictSchema):
    """Every field narrows what is marked read; an empty body marks the whole inbox."""

    customer_id = fields.UUID(load_default=None)
    group = fields.String(load_default=None, validate=validate.Length(min=1, max=64),
                          metadata={"description": "a group or one of its aliases"})
    before = UtcDateTime(load_default=None, metadata={
        "description": "only notifications created at or before this time (RFC 3339, as in `created_at`)"})


class ReadAllResultSchema(ma.Schema):
    updated = fields.Integer()


class UnreadQuerySchema(StrictSchema):
    customer_id = fields.UUID(load_default=None)


class UnreadCountSchema(ma.Schema):
    unread = fields.Integer()
    by_customer = fields.Dict(keys=fields.String(), values=fields.Integer(),
                              metadata={"description": "customer id (or `none`) -> unread"})
    by_group = fields.Dict(keys=fields.String(), values=fields.Integer(),
                           metadata={"description": "every configured group -> unread"})
