"""The contact body: validated and normalised before it is stored.

- `email`: an address (marshmallow's syntax check), at most 254 characters, with
  no control character, line break, blank or format character anywhere and no
  quoted local part (app/contacts/addresses.py says why: header smuggling).
- `phone`: E.164, `+` then up to 15 digits, no spaces (`+14155550100`).
- `locale`: a BCP 47 language tag of the common shape `en`, `en-GB`,
  `zh-Hant-TW`, `es-419`; `en_gb` is accepted and stored as `en-GB`.
- `timezone`: an IANA zone name known to zoneinfo (`Europe/Paris`, `UTC`),
  matched case-insensitively and stored in its canonical spelling.
- `consent_text_version`: not stored on the contact; the consent ledger records it
  with the change (app/consent/).

Every field may be null or left out (PUT replaces the whole contact, so a
field left out is cleared). Spaces around a value are dropped; any other
character around it (a tab, a line break) is refused like one inside it.
"""
import functools
import re
import zoneinfo

import marshmallow as ma
from marshmallow import fields, validate

from ..api.schema import StrictSchema
from .addresses import email_problem, phone_problem

LOCALE = re.compile(r"^(?P<lang>[a-z]{2,3})(?:[-_](?P<script>[a-z]{4}))?(?:[-_](?P<region>[a-z]{2}|\d{3}))?\Z",
                    re.IGNORECASE)


@functools.lru_cache(maxsize=1)
def _zones():
    """Lower-cased IANA name -> canonical name, from the installed tz database."""
    return {name.lower(): name for name in zoneinfo.available_timezones()}


def normalise_locale(value):
    match = LOCALE.match(value)
    if match is None:
        return None
    parts = [match["lang"].lower()]
    if match["script"]:
        parts.append(match["script"].title())
    if match["region"]:
        parts.append(match["region"].upper())
    return "-".join(parts)


def normalise_timezone(value):
    return _zones().get(value.lower())


class ContactSchema(StrictSchema):
    email = fields.Email(load_default=None, allow_none=True, validate=validate.Length(max=254),
                         metadata={"example": "jane@example.com"})
    phone = fields.String(load_default=None, allow_none=True,
                          metadata={"example": "+14155550100", "description": "E.164"})
    locale = fields.String(load_default=None, allow_none=True,
                           metadata={"example": "en-GB", "description": "BCP 47 language tag"})
    timezone = fields.String(load_default=None, allow_none=True,
                             metadata={"example": "Europe/London", "description": "IANA time zone"})
    consent_text_version = fields.String(
        load_default=None, allow_none=True, validate=validate.Length(min=1, max=64),
        metadata={"example": "marketing-2026-11",
                  "description": "the consent text shown when the address was collected; kept in the consent ledger"})

    @ma.pre_load
    def _strip(self, data, **_):
        """Surrounding spaces are a copy-paste accident, not part of the value; other blanks are refused."""
        if isinstance(data, dict):
            data = {k: v.strip(" ") if isinstance(v, str) else v for k, v in data.items()}
        return data

    @ma.validates("email")
    def _email(self, value, **_):
        problem = value is not None and email_problem(value)
        if problem:
            raise ma.ValidationError(f"Refused: the address {problem}.")

    @ma.validates("phone")
    def _phone(self, value, **_):
        if value is not None and phone_problem(value):
            raise ma.ValidationError("Must be an E.164 number: + then country code and number, "
                                     "digits only (e.g. +14155550100).")

    @ma.validates("locale")
    def _locale(self, value, **_):
        if value is not None and normalise_locale(value) is None:
            raise ma.ValidationError("Must be a language tag such as en or en-GB.")

    @ma.validates("timezone")
    def _timezone(self, value, **_):
        if value is not None and normalise_timezone(value) is None:
            raise ma.ValidationError("Must be an IANA time zone such as Europe/London or UTC.")

    @ma.post_load
    def _normalise(self, data, **_):
        if data.get("email"):
            local, _, domain = data["email"].rpartition("@")
            data["email"] = f"{local}@{domain.lower()}"
        if data.get("locale"):
            data["locale"] = normalise_locale(data["locale"])
        if data.get("timezone"):
            data["timezone"] = normalise_timezone(data["timezone"])
        return data


class ContactOutSchema(ma.Schema):
    user_id = fields.String(metadata={"format": "uuid"})
    email = fields.String(allow_none=True)
    phone = fields.String(allow_none=True)
    locale = fields.String(allow_none=True)
    timezone = fields.String(allow_none=True)
    updated_at = fields.String(metadata={"format": "date-time"})
