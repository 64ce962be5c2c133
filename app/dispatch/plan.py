"""Which channels each user's notification goes out on, decided per chunk from preferences.

The in-app channel (`system`) is delivered by storing and publishing: its
delivery is `sent` exactly when the notification is `in_app`, so the
notification row itself records it (no delivery row: it was a quarter of the
fan-out's time; readers derive it, app/deliveries/in_app.py). When a user
switched it off the notification is stored for history but kept out of the
inbox and stream, and a `skipped` row says why. Every other
enabled channel gets a `pending` row and a job; a default channel switched
off gets a `skipped` row saying why. A channel that needs an address the
user does not have (no email, no phone) is `skipped` here, with its one
attempt recorded, exactly as its job would have ended: a job per such
delivery was most of the fan-out's cost. So is an email or SMS of a group
that `requires_consent` to an address without consent on record
(`consent.NO_CONSENT`; the delivery job checks again before sending).

Each decision carries the resolution it was made on (enabled, locked, the
source of the choice, and for a consent group whether consent is on record),
stored on the delivery row as the evidence of what dispatch decided.
"""
import functools
import json
from dataclasses import dataclass, field

from .. import consent, i18n
from ..channels import IN_APP
from ..preferences.repository import choices_for_users
from ..preferences.rules import resolve

OFF = "switched off in the user's preferences"


@dataclass
class Plan:
    # user id (str) -> [(channel, status, reason, tried, resolution as JSON text)]
    decisions: dict = field(default_factory=dict)
    # user id (str) -> the contact's locale (or None); read only for a trigger with `translations`
    locales: dict = field(default_factory=dict)

    def hidden_users(self):
        """Users whose notification stays out of the inbox and stream."""
        return [uid for uid, decisions in self.decisions.items()
                if not any(c == IN_APP and status == "sent" for c, status, *_ in decisions)]

    def delivery_rows(self, rows):
        """Rows for `deliveries`: every decision but the in-app `sent` one, which `in_app` records."""
        return [(row["id"], row["seq"], row["user_id"], *decision)
                for row in rows for decision in self.decisions[str(row["user_id"])]
                if decision[0] != IN_APP or decision[1] != "sent"]


def plan_channels(conn, domain, event, requested, user_ids, customer_id, needs=None, locales=False):
    """Decide every channel for every user of the chunk (one query each for preferences and contacts).

    needs: channel -> the contact field it addresses (None: no address needed). locales: also read
    each user's locale (`Plan.locales`), in the same contacts query, for a trigger with translations."""
    needs = needs or {}
    candidates = [c for c in domain.channels if requested is None or c in requested]
    choices = choices_for_users(conn, user_ids, event.group, customer_id)
    fields = sorted({needs[c] for c in candidates if needs.get(c)} | ({"locale"} if locales else set()))
    contacts = contact_fields(conn, user_ids, fields) if fields else {}
    granted = consent.consented(conn, user_ids, event, customer_id) if event.requires_consent else None
    plan = Plan()
    for uid in user_ids:
        key = _uuid(uid)
        mine, contact = choices.get(key, []), contacts.get(key, {})
        decisions = []
        for channel in candidates:
            enabled, locked, source = resolve(event, channel, mine, customer_id)
            if not enabled:
                if channel in event.channels:
                    decisions.append((channel, "skipped", OFF, False, _resolution(False, locked, source)))
                continue
            field_name = needs.get(channel)
            address = contact.get(field_name) if field_name else None
            allowed = (consent.allows(granted, uid, channel, address)
                       if granted is not None and address else None)
            seen = _resolution(True, locked, source, allowed)
            if channel == IN_APP:
                decisions.append((channel, "sent", None, False, seen))
            elif field_name and not address:
                decisions.append((channel, "skipped", f"no {field_name} on file for this user", True, seen))
            elif allowed is False:
                decisions.append((channel, "skipped", consent.NO_CONSENT, True, seen))
            else:
                decisions.append((channel, "pending", None, False, seen))
        plan.decisions[str(uid)] = decisions
        if locales:
            plan.locales[str(uid)] = contact.get("locale")
    return plan


def localised(trigger_id, body, plan, user_ids):
    """(trigger id, user id, title, content, link_text, locale) of each user whose contact's locale
    picks one of the trigger's `translations` (de-AT → de); the others get the trigger's own text."""
    translations, out = body.get("translations"), []
    if not translations:
        return out
    for uid in user_ids:
        locale, version = i18n.pick(translations, plan.locales.get(str(uid)))
        if locale is not None:
            out.append((trigger_id, uid, version.get("title", body["title"]),
                        version.get("content", body.get("content") or ""),
                        version.get("link_text", body.get("link_text")), locale))
    return out


@functools.lru_cache(maxsize=64)
def _resolution(enabled, locked, source, consent_on_record=None):
    """A decision's resolution as the JSON text its delivery row keeps (a handful of distinct values,
    each serialised once: the fan-out makes one per delivery row)."""
    seen = {"enabled": enabled, "locked": locked, "source": source}
    if consent_on_record is not None:
        seen["consent"] = consent_on_record
    return json.dumps(seen)


def contact_fields(conn, user_ids, fields):
    """{user id: {field: value}} for the chunk's users that have a contact row."""
    with conn.cursor() as cur:
        cur.execute(f"SELECT user_id, {', '.join(fields)} FROM contacts WHERE user_id = ANY(%s::uuid[])",
                    ("{" + ",".join(str(u) for u in user_ids) + "}",))
        return {row[0]: dict(zip(fields, row[1:])) for row in cur.fetchall()}


def _uuid(value):
    import uuid
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
