"""Digests: one message for the notifications of a window instead of one each (`digest:` in
notifications.yaml: `{window: PT10M, channels: [email], max_items: 50}`, per event or group).

Everything is rows (migration 0022), so a worker killed at any point loses nothing and sends no
digest twice:

1. A delivery on a digest channel, when its attempt comes (preferences, quiet hours and the
   address already checked), joins the open digest of its user, channel and scope (one is opened,
   its window starting now, when there is none) and is held until the window's end, like a quiet
   hours hold: the relay and a scheduled job wake it then.
2. The first item due after the window (or the item that fills `max_items`) becomes the digest's
   `sender`, in the same locked transaction that closes it, and sends one message listing every
   item, with the count in the subject. Its receipt records it sent the usual way (docs/channels.md
   "Sent once"), so a sender killed after the server took the message is not sent again; one
   killed before is re-taken after its lease and sends the same digest (same items, same
   Message-ID).
3. Every other item takes the sender's outcome: marked `sent` with the sender's message id right
   after the send (`settle`), or when it comes due and finds the sender sent (a sender killed
   before settling); while the sender is still trying, it waits for it.

Urgent events never have a digest (app/domain.py); in-app stays one notification each.
"""
import datetime
import uuid

from .. import db, i18n
from ..channels.email_render import absolute_link
from ..channels.templates import render
from ..notifications.model import COLUMNS, rfc3339, to_public

WAIT_FOR_SENDER_SECONDS = 30     # an item whose sender is still trying looks again after this
DEFAULT_LINE = "- {title} ({time}){link}"


def rule(event, channel):
    """The digest of this event on this channel, or None."""
    digest = getattr(event, "digest", None) if event is not None else None
    return digest if digest is not None and channel in digest.channels else None


def collect(claimed, digest):
    """What the claimed delivery does now, decided under the digest's row lock:
    ("held", until, reason) | ("send", digest id) | ("sent", provider id) | ("failed", error)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    with db.connection() as conn, db.transaction(conn), db.cursor(conn) as cur:
        cur.execute("SELECT digest_id FROM deliveries WHERE id = %s", (claimed["id"],))
        digest_id = cur.fetchone()["digest_id"]
        if digest_id is None:
            cur.execute("INSERT INTO digests (id, user_id, channel, scope, window_end)"
                        " VALUES (%s, %s, %s, %s, now() + make_interval(secs => %s))"
                        " ON CONFLICT (user_id, channel, scope) WHERE sender IS NULL DO NOTHING",
                        (str(uuid.uuid4()), str(claimed["user_id"]), claimed["channel"], digest.scope,
                         digest.window_seconds))
            cur.execute("SELECT * FROM digests WHERE user_id = %s AND channel = %s AND scope = %s AND sender IS NULL"
                        " FOR UPDATE", (str(claimed["user_id"]), claimed["channel"], digest.scope))
            row = cur.fetchone()
            cur.execute("UPDATE deliveries SET digest_id = %s WHERE id = %s", (row["id"], claimed["id"]))
            cur.execute("SELECT count(*) AS n FROM deliveries WHERE digest_id = %s", (row["id"],))
            full = cur.fetchone()["n"] >= digest.max_items
        else:
            cur.execute("SELECT * FROM digests WHERE id = %s FOR UPDATE", (digest_id,))
            row = cur.fetchone()
            full = False
        if row["sender"] is None and (full or row["window_end"] <= now):
            cur.execute("UPDATE digests SET sender = %s WHERE id = %s", (claimed["id"], row["id"]))
            row["sender"] = claimed["id"]
        if row["sender"] is None:
            return "held", row["window_end"], f"in a digest until {rfc3339(row['window_end'])}"
        if str(row["sender"]) == str(claimed["id"]):
            return "send", row["id"]
        cur.execute("SELECT status, provider_message_id, last_error, locked_until FROM deliveries WHERE id = %s",
                    (row["sender"],))
        sender = cur.fetchone()
        if sender["status"] == "sent":
            return "sent", sender["provider_message_id"]
        if sender["status"] in ("failed", "skipped"):
            return "failed", f"the digest was not sent: {sender['last_error'] or sender['status']}"
        until = max(sender["locked_until"] or now, now) + datetime.timedelta(seconds=WAIT_FOR_SENDER_SECONDS)
        return "held", until, f"in a digest being sent, until {rfc3339(until)}"


def items(digest_id):
    """The digest's notifications (deleted ones left out), oldest first."""
    with db.connection() as conn, db.cursor(conn) as cur:
        cur.execute(f"SELECT {', '.join('n.' + c.strip() for c in COLUMNS.split(','))} FROM deliveries d"
                    " JOIN notifications n ON n.id = d.notification_id"
                    " WHERE d.digest_id = %s AND n.deleted_at IS NULL ORDER BY n.created_at, n.seq", (digest_id,))
        return [dict(to_public(row), created_at=row["created_at"]) for row in cur.fetchall()]


def message(app, digest_id, first, templates, locale="en", timezone=None):
    """The notification-shaped message a channel sends for the digest: the count in its title, one
    line per item (title, time in the contact's zone as the locale writes it, link) as its content."""
    listed = items(digest_id)
    lines = [render(templates.get("digest_line", DEFAULT_LINE),
                    dict(n, time=i18n.format_datetime(n["created_at"], locale, timezone, "short"),
                         link=(": " + absolute_link(app, n["link_url"])) if n.get("link_url") else ""))
             for n in listed]
    title = (render(templates["digest_subject"], {"count": len(listed)}) if templates.get("digest_subject")
             else i18n.ngettext(locale, "You have %(count)d new notification", "You have %(count)d new notifications",
                                len(listed)))
    return dict(first, id=str(digest_id), title=title, content="\n".join(lines), link_url="/inbox",
                link_text=i18n.gettext(locale, "Open your inbox"), digest_count=len(listed))


def settle(sender_id, digest_id, provider_id):
    """Mark every other waiting item of a sent digest sent, with the sender's message id (an item a
    killed worker leaves waiting does it itself when it comes due: `collect`)."""
    with db.connection() as conn, db.transaction(conn), conn.cursor() as cur:
        cur.execute(
            "WITH done AS (UPDATE deliveries SET status = 'sent', attempts = attempts + 1, updated_at = now(),"
            " locked_until = NULL, reason = NULL, provider_message_id = %(pid)s, sent_at = now()"
            " WHERE digest_id = %(digest)s AND id <> %(sender)s AND status = 'pending'"
            " RETURNING id, notification_seq, attempts)"
            " INSERT INTO delivery_attempts (delivery_id, notification_seq, attempt, outcome, provider_message_id,"
            " started_at) SELECT id, notification_seq, attempts, 'sent', %(pid)s, now() FROM done",
            {"pid": provider_id, "digest": digest_id, "sender": sender_id})
