"""The trigger body (shared by the queued trigger and the direct push)."""
import datetime
import re

import marshmallow as ma
from flask import current_app
from babel import numbers as babel_numbers
from marshmallow import fields, validate

from .. import i18n
from ..acks import callbacks as ack_callbacks
from ..acks import policy as ack_policy
from ..api.schema import StrictSchema, UtcDateTime
from ..domain import LANES
from ..contacts.schemas import normalise_locale
from ..errors import InvalidChannel, InvalidLocale
from ..sanitize import UnsettledText, clean_text, control_problem, safe_link

TEXT_FIELDS = ("title", "content", "link_text", "rec_type", "rec_id")   # shown to clients: cleaned
LIMITS = {"title": 200, "content": 5000, "link_url": 2048, "link_text": 100, "rec_type": 64, "rec_id": 128}


_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")


class UUIDList(fields.List):
    """User ids as canonical UUID strings. The usual spelling is checked with one regular
    expression instead of a field call and a UUID object per item (a third of the cost of a
    1,000-user trigger); anything else goes through marshmallow's UUID field, errors included."""

    def __init__(self, **kwargs):
        super().__init__(fields.UUID(), **kwargs)

    def _deserialize(self, value, attr, data, **kwargs):
        if not ma.utils.is_collection(value):
            raise self.make_error("invalid")
        out, errors = [], {}
        for index, item in enumerate(value):
            if isinstance(item, str) and _CANONICAL_UUID.match(item):
                out.append(item)
                continue
            try:
                out.append(str(self.inner.deserialize(item, **kwargs)))
            except ma.ValidationError as error:
                errors[index] = error.messages
        if errors:
            raise ma.ValidationError(errors, valid_data=out)
        return out


def _text(name, required=False):
    return fields.String(required=required, allow_none=not required,
                         validate=validate.Length(min=1 if required else 0, max=LIMITS[name]))


MAX_TRANSLATIONS = 50


class TranslationSchema(StrictSchema):
    """One locale's version of a trigger's text: title and/or content (and link_text when the
    trigger has one), with the trigger's own limits and cleaning."""

    title = fields.String(validate=validate.Length(min=1, max=LIMITS["title"]))
    content = fields.String(validate=validate.Length(max=LIMITS["content"]))
    link_text = fields.String(validate=validate.Length(min=1, max=LIMITS["link_text"]))

    @ma.post_load
    def _clean(self, data, **_):
        if not data:
            raise ma.ValidationError("Must set title, content or link_text.")
        errors = {}
        for name, value in data.items():
            try:
                data[name] = accept_text(value, multiline=name == "content")
            except ma.ValidationError as error:
                errors[name] = error.messages
        if not errors and "title" in data and not data["title"].strip():
            errors["title"] = ["Must contain text once markup is removed."]
        if errors:
            raise ma.ValidationError(errors)
        return data


def _at_most(limit, what):
    """A validator of a mapping's size (validate.Length would be documented as a string's maxLength)."""
    def check(value):
        if len(value) > limit:
            raise ma.ValidationError(f"At most {limit} {what}.")
    return check


# Names an amount may not take: the notification's fields and what templates add to them.
RESERVED = frozenset(("id", "customer_id", "type", "event", "title", "content", "link_url", "link_text", "rec_type",
                      "rec_id", "read", "read_at", "created_at", "expires_at", "ack_required", "ack_deadline",
                      "acked_at", "link", "preferences_url", "settings_note", "change_them", "recipient", "user_id",
                      "delivery_id", "count", "time", "digest_count", "bank_name", "public_url", "inbox_url"))
MAX_AMOUNTS = 20
AMOUNT = r"^-?[0-9]{1,15}(\.[0-9]{1,6})?\Z"


def _amount_name(name):
    if not re.fullmatch(r"[a-z][a-z0-9_]{0,31}", name):
        raise ma.ValidationError("Must be a template variable name: a-z, then up to 31 of a-z, 0-9 and _.")
    if name in RESERVED:
        raise ma.ValidationError(f"{name!r} is a notification field or template variable already.")


class AmountSchema(StrictSchema):
    """An amount with its currency; written per locale when a template names it."""

    amount = fields.String(required=True, validate=validate.Regexp(
        AMOUNT, error="Must be a decimal number as a string: up to 15 digits, a point, up to 6 decimal places."),
        metadata={"example": "1234.56", "description": "a decimal number, as a string (it stays exact)"})
    currency = fields.String(required=True, metadata={"example": "EUR", "description": "ISO 4217 code"})

    @ma.validates("currency")
    def _currency(self, value, **_):
        if not babel_numbers.is_currency(value):
            raise ma.ValidationError("Must be an ISO 4217 currency code such as EUR or USD.")


def _translations(data):
    """The trigger's translations keyed by normalised tag (`en_gb` → `en-GB`); 400 `invalid_locale`
    for a tag that is malformed, unknown to Babel or given twice; an empty object is none."""
    given = data.pop("translations", None)
    if not given:
        return
    out = {}
    for tag, version in given.items():
        normal = normalise_locale(tag)
        if normal is None or not i18n.known(normal):
            raise InvalidLocale(f"translations: {tag[:40]!r} is not a known BCP 47 language tag such as de or de-AT")
        if normal in out:
            raise InvalidLocale(f"translations: {tag[:40]!r} names the locale {normal} twice")
        if "link_text" in version and data.get("link_text") is None:
            raise ma.ValidationError({"translations": {tag: {"link_text": [
                "Only a trigger with link_text may translate it."]}}})
        out[normal] = version
    data["translations"] = out


class TriggerSchema(StrictSchema):
    type = fields.String(required=True, validate=validate.Length(min=1, max=64),
                         metadata={"description": "the group (or one of its aliases)"})
    event = fields.String(required=True, validate=validate.Length(min=1, max=64))
    title = _text("title", required=True)
    content = fields.String(load_default="", validate=validate.Length(max=LIMITS["content"]))
    customer_id = fields.UUID(load_default=None, allow_none=True)
    user_ids = UUIDList(required=True, validate=validate.Length(min=1))
    link_url = _text("link_url")
    link_text = _text("link_text")
    rec_type = _text("rec_type")
    rec_id = _text("rec_id")
    channels = fields.List(fields.String(), load_default=None,
                           metadata={"description": "limit delivery to these of the event's channels"})
    priority = fields.String(load_default=None, validate=validate.OneOf(LANES), metadata={
        "description": "the trigger's lane: the event's priority, or a lower one (never higher: 400 invalid_priority)"})
    translations = fields.Dict(
        keys=fields.String(), values=fields.Nested(TranslationSchema),
        validate=_at_most(MAX_TRANSLATIONS, "locales"), metadata={"maxProperties": MAX_TRANSLATIONS,
            "description": "per-locale text: {\"de\": {\"title\": ..., \"content\": ...}}, keyed by BCP 47 tag "
                           "(an unknown or malformed one: 400 invalid_locale); each user gets the version of their "
                           "contact's locale (de-AT, then de), else the trigger's own text; {} is none",
            "example": {"de": {"title": "Zahlung eingegangen", "content": "Danke"}}})

    @ma.validates("user_ids")
    def _max_users(self, value, **_):
        limit = current_app.config["DOMAIN"].max_user_ids
        if len(value) > limit:
            raise ma.ValidationError(f"At most {limit} user ids per trigger.")

    @ma.validates("link_url")
    def _link(self, value, **_):
        if not safe_link(value):
            raise ma.ValidationError("Must be a relative path starting with / (not //, /\\ or with blanks or "
                                     "control characters) or an https URL.")

    @ma.post_load
    def _clean(self, data, **_):
        """Strip markup from every text field and drop repeated user ids."""
        errors = {}
        for name in TEXT_FIELDS:
            if data.get(name) is not None:
                try:
                    data[name] = accept_text(data[name], multiline=name == "content")
                except ma.ValidationError as error:
                    errors[name] = error.messages
        if errors:
            raise ma.ValidationError(errors)
        if not data["title"].strip():
            raise ma.ValidationError({"title": ["Must contain text once markup is removed."]})
        data["user_ids"] = list(dict.fromkeys(data["user_ids"]))
        _translations(data)
        return data


MAX_SCHEDULE = datetime.timedelta(days=366)   # "at most one year ahead", leap years included


class QueuedTriggerSchema(TriggerSchema):
    """The queued trigger's body: the direct push's, plus the times only a stored trigger can keep
    (a push with them is a 422: it is never stored, so it could never honour them)."""

    send_at = UtcDateTime(load_default=None, allow_none=True, metadata={
        "description": "RFC 3339; stored, streamed and delivered at this time (at most one year ahead)"})
    expires_at = UtcDateTime(load_default=None, allow_none=True, metadata={
        "description": "RFC 3339; never delivered on any channel after it, hidden from the inbox after it"})
    callback_url = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=2048), metadata={
        "description": "receives signed `ack` and `ack_overdue` events of this trigger's notices (a host of "
                       "ACK_CALLBACK_HOSTS; needs an acknowledgement)"})
    amounts = fields.Dict(
        keys=fields.String(validate=_amount_name), values=fields.Nested(AmountSchema),
        validate=_at_most(MAX_AMOUNTS, "amounts"), metadata={"maxProperties": MAX_AMOUNTS,
            "description": "template variables written per locale: {\"total\": {\"amount\": \"1234.56\", "
                           "\"currency\": \"EUR\"}} makes {total} `1.234,56 €` for a de contact, `€1,234.56` "
                           "for en (email, SMS, Apprise and webhook templates; never a teaser event's)",
            "example": {"total": {"amount": "1234.56", "currency": "EUR"}}})
    ack = fields.Dict(load_default=None, allow_none=True, metadata={
        "description": 'acknowledgement, replacing the event\'s default: {"required": true, "deadline": "PT24H",'
                       ' "escalate": [{"after": "PT1H", "channels": ["email"]}]} (ISO 8601 durations)'})

    @ma.validates_schema
    def _times(self, data, **_):
        now = datetime.datetime.now(datetime.timezone.utc)
        send_at, expires_at = data.get("send_at"), data.get("expires_at")
        if send_at is not None and send_at > now + MAX_SCHEDULE:
            raise ma.ValidationError("Must be at most one year (366 days) ahead.", "send_at")
        if expires_at is not None:
            if expires_at <= now:
                raise ma.ValidationError("Must be in the future.", "expires_at")
            if send_at is not None and expires_at <= send_at:
                raise ma.ValidationError("Must be after send_at.", "expires_at")
        if data.get("callback_url") is not None and not ack_callbacks.allowed(
                data["callback_url"], current_app.config["ACK_CALLBACK_HOSTS"]):
            raise ma.ValidationError("Must be an http(s) URL of a host in ACK_CALLBACK_HOSTS.", "callback_url")
        if data.get("ack") is not None:
            try:
                data["ack"] = ack_policy.build(data["ack"], current_app.config["DOMAIN"].channels)
            except ValueError as error:
                where, problem = error.args[0]
                raise ma.ValidationError({where: [problem]})


def accept_text(value, multiline=False):
    """The text as it will be stored, or a ValidationError saying precisely why it cannot be.

    Control characters are checked as sent and again once character references are decoded
    (`&#7;` is a BEL too); only `content` is multi-line."""
    problem = control_problem(value, multiline)
    if problem is None:
        try:
            value = clean_text(value)
        except UnsettledText as error:
            raise ma.ValidationError(str(error))
        problem = control_problem(value, multiline)
        if problem is not None:
            problem = problem.rstrip(".") + " once character references are decoded."
    if problem is not None:
        raise ma.ValidationError(problem)
    return value


def resolve_event(domain, body):
    """Check group, event and channels against the domain; return (Event, channels).

    These are 400s with the SPEC's own codes rather than 422 field errors.
    """
    event = domain.known_group(body["type"]).known_event(body["event"])
    channels = event.channels
    if body.get("channels") is not None:
        for name in body["channels"]:
            if name not in domain.channels:
                raise InvalidChannel(f"Unknown or disabled channel {name!r}")
        channels = tuple(c for c in event.channels if c in body["channels"])
    return event, channels


def _no_nul(value):
    if "\x00" in value:
        raise ma.ValidationError("Must not contain NUL characters.")


class IdempotencyHeaderSchema(ma.Schema):
    """The trigger's optional `Idempotency-Key` header (the request's other headers are not ours to
    judge); an empty one is none."""

    class Meta:
        unknown = ma.EXCLUDE

    idempotency_key = fields.String(data_key="Idempotency-Key", validate=[
        validate.Length(max=200, error="At most 200 characters."), _no_nul],
        metadata={"description": "repeat with the same body: same answer, nothing new"})

    @ma.post_load
    def _empty_is_none(self, data, **_):
        return {"idempotency_key": data.get("idempotency_key") or None}


class AcceptedSchema(ma.Schema):
    message = fields.String()
    trigger_id = fields.String(metadata={"format": "uuid"})
    users = fields.Integer()
    status_url = fields.String()
    send_at = fields.String(metadata={"description": "present when the trigger was scheduled"})


class TriggerStatusSchema(ma.Schema):
    trigger_id = fields.String()
    status = fields.String(metadata={"description": "scheduled, pending, dispatched or cancelled"})
    send_at = fields.String(allow_none=True)
    expires_at = fields.String(allow_none=True)
    cancelled_at = fields.String(allow_none=True)
    ack = fields.Dict(metadata={"description": "for notices needing acknowledgement: acknowledged, pending and "
                                               "overdue counts, and `users` (the first 1,000 by id) with each state"})
    users_total = fields.Integer()
    users_done = fields.Integer()
    created_at = fields.String()
    dispatched_at = fields.String(allow_none=True)


class PushedSchema(ma.Schema):
    message = fields.String()
    users = fields.Integer(metadata={"description": "users it was pushed to (their in-app channel is on)"})
    skipped_by_preference = fields.Integer(metadata={
        "description": "users left out: their in-app channel is off for this event (never for a locked event)"})
    delivered_streams = fields.Integer(metadata={
        "description": "streams open at the push that took it (a stream limited to other customers does not)"})


class DeliverySchema(ma.Schema):
    channel = fields.String()
    status = fields.String(metadata={"description": "pending, sending, sent, failed, skipped, expired, or "
                                                    "undelivered (the provider reported it was not delivered)"})
    reason = fields.String(allow_none=True)
    attempts = fields.Integer()
    last_error = fields.String(allow_none=True)
    provider_message_id = fields.String(allow_none=True)
    created_at = fields.String()
    updated_at = fields.String()
    sent_at = fields.String(allow_none=True)
    delivered_at = fields.String(allow_none=True, metadata={
        "description": "when the provider reported it delivered (providers that report: docs/channels.md)"})
    history = fields.List(fields.Dict(), metadata={
        "description": "each attempt (and each provider try) in order, then the provider's report, if any "
                       "(outcome delivered or undelivered)"})


class DeliveriesSchema(ma.Schema):
    items = fields.List(fields.Nested(DeliverySchema))
