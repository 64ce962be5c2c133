"""Preference request and response shapes."""
import marshmallow as ma
from marshmallow import fields, validate

from ..notifications.schemas import StrictSchema


class PreferencesQuerySchema(StrictSchema):
    customer_id = fields.UUID(load_default=None)


class ChangeSchema(StrictSchema):
    group = fields.String(required=True, validate=validate.Length(min=1, max=64))
    event = fields.String(load_default=None, validate=validate.Length(min=1, max=64))
    channel = fields.String(load_default=None, validate=validate.Length(min=1, max=64))
    customer_id = fields.UUID(load_default=None, metadata={"description": "omit: for all customers"})
    enabled = fields.Boolean(required=True, truthy={True}, falsy={False})


class PreferencesUpdateSchema(StrictSchema):
    changes = fields.List(fields.Nested(ChangeSchema), required=True, validate=validate.Length(min=1, max=200))


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


class PreferencesSchema(ma.Schema):
    customer_id = fields.String(allow_none=True)
    groups = fields.List(fields.Nested(GroupPreferencesSchema))
