"""Preference request and response shapes."""
import marshmallow as ma
from marshmallow import fields, validate

from ..api.schema import StrictSchema


class ChangeSchema(StrictSchema):
    group = fields.String(required=True, validate=validate.Length(min=1, max=64))
    event = fields.String(load_default=None, validate=validate.Length(min=1, max=64))
    channel = fields.String(load_default=None, validate=validate.Length(min=1, max=64))
    customer_id = fields.UUID(load_default=None, metadata={"description": "omit: for all customers"})
    enabled = fields.Boolean(required=True, truthy={True}, falsy={False})


class QuietHoursSchema(StrictSchema):
    """Local wall-clock times in the user's contact time zone; may cross midnight."""

    start = fields.Time(required=True, format="%H:%M", metadata={"example": "22:00"})
    end = fields.Time(required=True, format="%H:%M", metadata={"example": "07:00"})
    channels = fields.List(fields.String(), load_default=None,
                           metadata={"description": "channels held (default: every channel but in-app)"})


class PreferencesUpdateSchema(StrictSchema):
    changes = fields.List(fields.Nested(ChangeSchema), load_default=list, validate=validate.Length(max=200))
    quiet_hours = fields.Nested(QuietHoursSchema, allow_none=True,
                                metadata={"description": "set, or null to remove; omit to keep"})
    consent_text_version = fields.String(
        load_default=None, validate=validate.Length(min=1, max=64),
        metadata={"example": "marketing-2026-11",
                  "description": "the version of the consent text the user was shown; required when a change "
                                 "gives consent (a group with requires_consent), kept in the consent ledger"})

    @ma.validates_schema
    def _something(self, data, **_):
        if not data.get("changes") and "quiet_hours" not in data:
            raise ma.ValidationError("Give `changes`, `quiet_hours`, or both.", "changes")


class ChannelStateSchema(ma.Schema):
    enabled = fields.Boolean()
    locked = fields.Boolean()
    source = fields.String(metadata={"description": "default, user (all customers) or customer"})


class EventPreferencesSchema(ma.Schema):
    event = fields.String()
    locked = fields.Boolean()
    channels = fields.Dict(keys=fields.String(), values=fields.Nested(ChannelStateSchema))


class GroupPreferencesSchema(ma.Schema):
    group = fields.String()
    events = fields.List(fields.Nested(EventPreferencesSchema))


class QuietHoursOutSchema(ma.Schema):
    start = fields.String()
    end = fields.String()
    channels = fields.List(fields.String())
    timezone = fields.String()


class PreferencesSchema(ma.Schema):
    customer_id = fields.String(allow_none=True)
    groups = fields.List(fields.Nested(GroupPreferencesSchema))
    quiet_hours = fields.Nested(QuietHoursOutSchema, allow_none=True)
