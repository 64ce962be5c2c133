"""The direct push (`POST /v1/notifications/sse`): to the streams open now, honouring preferences.

A push is in-app only, so it goes to the users whose in-app channel (`system`) is on for its event
and customer, decided by the same rules as a stored notification (app/preferences/rules.py: a
locked event reaches everyone). The answer says how many users were skipped for their
preferences and how many streams took it: the open streams of the others, counted in the
per-user stream registry (app/streams/access.py) with each stream's customer scope, at the
moment of the push.
"""
import datetime
import uuid

import orjson

from .. import audit, db, i18n
from ..bus.codec import direct_message
from ..bus.publisher import publisher
from ..channels import IN_APP
from ..notifications.model import rfc3339
from ..preferences.repository import choices_for_users
from ..preferences.rules import resolve
from ..queues import lanes
from ..ratelimit import charge_recipients
from ..streams.access import slots
from .plan import contact_fields
from .schemas import resolve_event


def audience(conn, event, user_ids, customer_id):
    """(users to push to, users whose in-app channel is off for this event and customer)."""
    choices = {str(user): rows for user, rows in choices_for_users(conn, user_ids, event.group, customer_id).items()}
    wanted, skipped = [], []
    for user_id in user_ids:
        enabled = resolve(event, IN_APP, choices.get(str(user_id), []), customer_id)[0]
        (wanted if enabled else skipped).append(user_id)
    return wanted, skipped


def push(app, body, api_key_id):
    """Check the event, spend the key's recipients budget, audit, then publish to the users who want
    it; returns the answer's counts."""
    event, _ = resolve_event(app.config["DOMAIN"], body)
    # no queue to wait in; the priority is checked and its lane's recipients budget spent all the same
    charge_recipients(api_key_id, len(body["user_ids"]), lanes.for_trigger(event, body.get("priority")))
    customer = str(body["customer_id"]) if body.get("customer_id") else None
    public = _public(body, event, customer)
    conn = db.get_conn()
    with db.autocommit(conn):  # audited before it goes out: no push is ever unrecorded (one round trip)
        wanted, skipped = audience(conn, event, body["user_ids"], body.get("customer_id"))
        db.one_transaction(conn, [audit.append_statement(
            "notification.push", ("push", public["id"]),
            audit.push_change(event.group, event.name, customer, body["user_ids"]))])
        versions = _versions(conn, body, wanted)
    streams = 0
    if wanted:
        for (title, content, link_text), users in versions.items():
            shown = dict(public, title=title, content=content, link_text=link_text)
            publisher(app).publish_same(users, direct_message(customer, orjson.dumps(shown).decode()))
        streams = slots(app).open_streams(wanted, customer or "")
    return {"message": f"Pushed to {streams} open stream(s) of {len(wanted)} user(s)",
            "users": len(wanted), "skipped_by_preference": len(skipped), "delivered_streams": streams}


def _versions(conn, body, users):
    """{(title, content, link_text): users}: one group, unless the push has `translations`; then
    each user's contact's locale picks its version (one contacts query), as a stored one's would."""
    own = (body["title"], body.get("content") or "", body.get("link_text"))
    if not body.get("translations") or not users:
        return {own: users}
    locales = contact_fields(conn, users, ["locale"])
    groups = {}
    for uid in users:
        tag = locales.get(uid if isinstance(uid, uuid.UUID) else uuid.UUID(str(uid)), {}).get("locale")
        version = i18n.pick(body["translations"], tag)[1] or {}
        key = (version.get("title", own[0]), version.get("content", own[1]), version.get("link_text", own[2]))
        groups.setdefault(key, []).append(uid)
    return groups


def _public(body, event, customer):
    """The push as a client sees a notification (it has no row: its id is made up here)."""
    return {"id": str(uuid.uuid4()), "customer_id": customer, "type": event.group, "event": event.name,
            "title": body["title"], "content": body.get("content") or "",
            "link_url": body.get("link_url"), "link_text": body.get("link_text"),
            "rec_type": body.get("rec_type"), "rec_id": body.get("rec_id"),
            "read": False, "read_at": None, "created_at": rfc3339(datetime.datetime.now(datetime.timezone.utc)),
            "expires_at": None, "ack_required": False, "ack_deadline": None, "acked_at": None}
