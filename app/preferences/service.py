"""What the preferences endpoints do: the effective preferences of a user, and applying a list of
changes at once (all or none, audited), within what the caller's token may change."""
from flask import current_app

from .. import audit, consent, db
from ..channels import IN_APP
from ..errors import (ConsentTextRequired, EventLocked, FailedToFetchPreferences, FailedToUpdatePreferences,
                      InvalidChannel, InvalidCustomerId)
from . import repository
from .rules import resolve


def preferences(user, customer_id):
    """The effective preferences (defaults merged with the user's choices) and quiet hours, as one
    customer sees them."""
    user.check_customer(customer_id)
    with db.reading(FailedToFetchPreferences) as conn:
        choices = repository.choices(conn, user.id, customer_id)
        return _with_quiet_hours(conn, user.id, effective(current_app.config["DOMAIN"], choices, customer_id))


def update(user, body, customer_id):
    """Apply `body`'s changes and quiet hours at once, or refuse them all; returns `preferences`."""
    user.check_customer(customer_id)
    domain = current_app.config["DOMAIN"]
    changes = within_token(user, validate_changes(domain, user, body["changes"]), body)
    quiet = validate_quiet_hours(domain, body.get("quiet_hours"))
    with db.writing(FailedToUpdatePreferences) as conn:
        consent.lock(conn, user.id)
        records = _ledger(conn, domain, user.id, changes, body, quiet)
        if changes:
            repository.upsert(conn, user.id, changes)
        if "quiet_hours" in body:
            repository.set_quiet_hours(conn, user.id, quiet)
        consent.append(conn, user.id, records, body.get("consent_text_version"))
        audit.record(conn, "preferences.update", ("user", user.id),
                     {"changes": changes, **({"quiet_hours": quiet} if "quiet_hours" in body else {})})
    return preferences(user, customer_id)


def _ledger(conn, domain, user_id, changes, body, quiet):
    """The consent ledger's records of this update (read before it is applied); consent given without
    the version of the text shown is refused (422), since it could not be proven later."""
    old = {(c["customer_id"], c["group_name"], c["event"], c["channel"]): c["enabled"]
           for c in repository.choices(conn, user_id)}
    with conn.cursor() as cur:
        cur.execute("SELECT email, phone FROM contacts WHERE user_id = %s", (user_id,))
        found = cur.fetchone()
    contact = dict(zip(("email", "phone"), found)) if found else {}
    records = consent.preference_records(domain, consent.channel_needs(current_app), contact, changes, old)
    if consent.grants(records) and not body.get("consent_text_version"):
        raise ConsentTextRequired()
    if "quiet_hours" in body:
        before = repository.quiet_hours(conn, user_id)
        records.append({"source": "quiet_hours", "change": {"quiet_hours": {
            "old": _window(before and {"start": before["start_time"], "end": before["end_time"],
                                       "channels": before["channels"]}),
            "new": _window(quiet)}}})
    return records


def _window(window):
    return None if window is None else {"start": window["start"].strftime("%H:%M"),
                                        "end": window["end"].strftime("%H:%M"), "channels": list(window["channels"])}


def effective(domain, choices, customer_id):
    """Every group and event with each channel's state, for one customer's view."""
    groups = []
    for group in domain.groups.values():
        group_choices = [c for c in choices if c["group_name"] == group.name]
        events = []
        for event in group.events.values():
            states = {}
            for channel in domain.channels:
                enabled, locked, source = resolve(event, channel, group_choices, customer_id)
                states[channel] = {"enabled": enabled, "locked": locked, "source": source}
            events.append({"event": event.name, "locked": event.locked, "channels": states})
        groups.append({"group": group.name, "events": events})
    return {"customer_id": str(customer_id) if customer_id else None, "groups": groups}


def quiet_view(window, timezone):
    if window is None:
        return None
    return {"start": window["start_time"].strftime("%H:%M"), "end": window["end_time"].strftime("%H:%M"),
            "channels": list(window["channels"]), "timezone": timezone or "UTC"}


def _timezone(conn, user_id):
    with conn.cursor() as cur:
        cur.execute("SELECT timezone FROM contacts WHERE user_id = %s", (user_id,))
        row = cur.fetchone()
    return row[0] if row else None


def _with_quiet_hours(conn, user_id, body):
    body["quiet_hours"] = quiet_view(repository.quiet_hours(conn, user_id), _timezone(conn, user_id))
    return body


def validate_quiet_hours(domain, window):
    """Default the held channels to every external channel; refuse unknown ones."""
    if window is None:
        return None
    if window["channels"] is None:
        window["channels"] = [c for c in domain.channels if c != IN_APP]
    for channel in window["channels"]:
        if channel not in domain.channels or channel == IN_APP:
            raise InvalidChannel(f"Quiet hours cannot hold channel {channel!r}")
    return window


def validate_changes(domain, user, changes):
    """Canonical changes, or the first invalid one's 400 (then nothing is applied)."""
    for change in changes:
        group = domain.known_group(change["group"])
        change["group"] = group.name
        event = None if change["event"] is None else group.known_event(change["event"])
        if change["channel"] is not None and change["channel"] not in domain.channels:
            raise InvalidChannel(f"Unknown or disabled channel {change['channel']!r}")
        user.check_customer(change["customer_id"])
        if event is not None and event.locked and not change["enabled"] and (
                change["channel"] is None or change["channel"] in event.channels):
            raise EventLocked(f"{group.name}.{event.name} cannot be switched off")
    return changes


def within_token(user, changes, body):
    """A token limited by `customers` changes only those customers' preferences.

    A change without `customer_id` ("for all customers") applies to each listed
    customer, as read-all does; quiet hours belong to the user across every
    customer, so such a token may not set them (403). Without the claim,
    nothing changes here."""
    if user.customers is None:
        return changes
    if "quiet_hours" in body:
        raise InvalidCustomerId("Quiet hours apply to every customer; this token is limited to some customers")
    if not user.customers and any(c["customer_id"] is None for c in changes):
        raise InvalidCustomerId("This token is linked to no customer; name a customer_id in each change")
    scoped = []
    for change in changes:
        if change["customer_id"] is None:
            scoped += [dict(change, customer_id=customer) for customer in user.customers]
        else:
            scoped.append(change)
    return scoped
