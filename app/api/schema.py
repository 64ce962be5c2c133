"""What every endpoint's schemas share: unknown fields and NUL characters refused, times with
their offset loaded as UTC, strict booleans, and path ids parsed as UUIDs."""
import datetime
import uuid

import marshmallow as ma
from marshmallow import fields

from ..errors import InvalidId


def parse_id(raw, message=None):
    """A path id as UUID, or 400 `invalid_id` (with `message`, when the id is not a notification's)."""
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise InvalidId(message)


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


class CustomerQuerySchema(StrictSchema):
    """`?customer_id=`: one customer's view of what the user holds (within the token's `customers`)."""

    customer_id = fields.UUID(load_default=None)
