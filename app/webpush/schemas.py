"""A browser's PushSubscription as `JSON.stringify(subscription)` gives it, checked before it is
stored: the endpoint by `keys.endpoint_problem`, `keys.p256dh` a P-256 point, `keys.auth` 16 bytes.
A malformed one is a 422 `invalid_request` naming the field, never a push that fails later."""
import datetime

import marshmallow as ma
from marshmallow import fields

from ..api.schema import StrictSchema
from . import keys


class SubscriptionKeysSchema(StrictSchema):
    p256dh = fields.String(required=True, metadata={"description": "the browser's P-256 public key, base64url"})
    auth = fields.String(required=True, metadata={"description": "16-byte authentication secret, base64url"})

    @ma.validates("p256dh")
    def _point(self, value, **_):
        if not keys.is_point(value):
            raise ma.ValidationError("Must be a base64url uncompressed P-256 public key (65 bytes).")

    @ma.validates("auth")
    def _auth(self, value, **_):
        if not keys.is_auth_secret(value):
            raise ma.ValidationError("Must be 16 bytes, base64url.")


class SubscriptionSchema(StrictSchema):
    endpoint = fields.String(required=True, metadata={"description": "the push service's URL (https, a host name)"})
    expirationTime = fields.Integer(load_default=None, allow_none=True, strict=True,
                                    metadata={"description": "ms since the epoch, or null"})
    keys = fields.Nested(SubscriptionKeysSchema, required=True)

    @ma.validates("endpoint")
    def _endpoint(self, value, **_):
        problem = keys.endpoint_problem(value)
        if problem:
            raise ma.ValidationError(problem)

    @ma.post_load
    def _expiry(self, data, **_):
        ms = data.get("expirationTime")
        if ms is not None:
            try:
                data["expirationTime"] = datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc)
            except (OverflowError, ValueError, OSError):
                raise ma.ValidationError({"expirationTime": ["Must be a time in milliseconds since 1970."]})
        return data


class SubscriptionOutSchema(ma.Schema):
    id = fields.String()
    endpoint = fields.String()
    keys = fields.Dict()
    expirationTime = fields.String(allow_none=True, metadata={"description": "RFC 3339, or null"})
    created_at = fields.String()


class PublicKeySchema(ma.Schema):
    public_key = fields.String(metadata={"description": "VAPID public key, base64url: the applicationServerKey"})
