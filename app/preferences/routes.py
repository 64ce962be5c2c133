"""`GET`/`PUT /v1/notifications/preferences`: the effective preferences of the caller."""
from flask import current_app
from flask.views import MethodView
from flask_smorest import Blueprint

from .. import db
from ..auth import USER_SECURITY, current_user, user_required
from ..errors import (EventLocked, FailedToFetchPreferences, FailedToUpdatePreferences, InvalidChannel,
                      InvalidEvent, InvalidGroup)
from . import repository
from .rules import resolve
from .schemas import PreferencesQuerySchema, PreferencesSchema, PreferencesUpdateSchema

blp = Blueprint("preferences", __name__, url_prefix="/v1/notifications",
                description="What a user receives, where")


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


def validate_changes(domain, user, changes):
    """Canonical changes, or the first invalid one's 400 (then nothing is applied)."""
    for change in changes:
        group = domain.group(change["group"])
        if group is None:
            raise InvalidGroup(f"Unknown notification group {change['group']!r}")
        change["group"] = group.name
        event = None
        if change["event"] is not None:
            event = group.events.get(change["event"])
            if event is None:
                raise InvalidEvent(f"Unknown event {change['event']!r} in group {group.name!r}")
        if change["channel"] is not None and change["channel"] not in domain.channels:
            raise InvalidChannel(f"Unknown or disabled channel {change['channel']!r}")
        user.check_customer(change["customer_id"])
        if event is not None and event.locked and not change["enabled"] and (
                change["channel"] is None or change["channel"] in event.channels):
            raise EventLocked(f"{group.name}.{event.name} cannot be switched off")
    return changes


@blp.route("/preferences")
class Preferences(MethodView):
    decorators = [user_required]

    @blp.doc(security=USER_SECURITY)
    @blp.arguments(PreferencesQuerySchema, location="query", as_kwargs=True)
    @blp.response(200, PreferencesSchema)
    def get(self, customer_id):
        """The effective preferences (defaults merged with the user's choices)"""
        user = current_user()
        user.check_customer(customer_id)
        with db.failing_as(FailedToFetchPreferences):
            choices = repository.choices(db.get_conn(), user.id, customer_id)
        return effective(current_app.config["DOMAIN"], choices, customer_id)

    @blp.doc(security=USER_SECURITY)
    @blp.arguments(PreferencesUpdateSchema)
    @blp.arguments(PreferencesQuerySchema, location="query", as_kwargs=True)
    @blp.response(200, PreferencesSchema)
    def put(self, body, customer_id):
        """Apply a list of changes at once (all or none); returns the effective preferences

        Each change names a `group` and optionally an `event`, a `channel` and a
        `customer_id` (omitted: for all customers), with `enabled`. Locked events
        cannot be switched off (400 `notifications_m.event_locked`).
        """
        user = current_user()
        user.check_customer(customer_id)
        domain = current_app.config["DOMAIN"]
        changes = validate_changes(domain, user, body["changes"])
        conn = db.get_conn()
        with db.failing_as(FailedToUpdatePreferences), db.transaction(conn):
            repository.upsert(conn, user.id, changes)
        with db.failing_as(FailedToFetchPreferences):
            choices = repository.choices(conn, user.id, customer_id)
        return effective(domain, choices, customer_id)
