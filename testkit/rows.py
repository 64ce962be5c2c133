"""Rows read and written straight in PostgreSQL, for setting up and asserting on stored state.

The inbox endpoints only read what dispatch stores; inserting directly lets a test set up exactly
the rows it needs (read, deleted, other users, customers) without going through the queue.
"""
import datetime
import itertools
import uuid

import psycopg2.extras

psycopg2.extras.register_uuid()

# Every inserted row is one second newer than the previous one, across tests,
# so created_at increases together with seq (the bigserial default).
_BASE = datetime.datetime(2024, 1, 15, 10, 30, tzinfo=datetime.timezone.utc)
_TICK = itertools.count()

DEFAULTS = {
    "customer_id": None,
    "type": "chat",
    "event": "message_received",
    "title": "New Message",
    "content": "Hello from John",
    "link_url": "/chat/room/456",
    "link_text": "View Message",
    "rec_type": "chats",
    "rec_id": "789e4567-e89b-12d3-a456-426614174000",
    "read_at": None,
    "deleted_at": None,
}


def insert_notification(db, user_id, **overrides):
    """Insert one notification for `user_id` and return the stored row as a dict.

    `seq` comes from its bigserial default; `created_at` increases with every
    call unless given. Any column can be overridden.
    """
    row = dict(DEFAULTS, id=uuid.uuid4(), user_id=user_id,
               created_at=_BASE + datetime.timedelta(seconds=next(_TICK)))
    row.update(overrides)
    columns = ", ".join(row)
    values = ", ".join(f"%({name})s" for name in row)
    with db.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
        cur.execute(f"INSERT INTO notifications ({columns}) VALUES ({values}) RETURNING *", row)
        return dict(cur.fetchone())


def fetch_row(db, notification_id):
    """The stored row (deleted or not), or None."""
    with db.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
        cur.execute("SELECT * FROM notifications WHERE id = %s", (notification_id,))
        found = cur.fetchone()
        return dict(found) if found else None


def scalar(db, sql, *args):
    """One value of a query on the connection `db`."""
    with db.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchone()[0]


def rows(db, sql, *args):
    """Every row of a query, as dicts."""
    with db.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
        cur.execute(sql, args)
        return [dict(r) for r in cur.fetchall()]


def insert_delivery(db, notification_id, **columns):
    """Insert one delivery of a stored notification and return its id: its user (unless given) and
    its `seq` (what partitions `deliveries`, docs/history.md) are the notification's; channel
    `email` and status `sent` unless given. Any column can be given."""
    row = {"id": uuid.uuid4(), "channel": "email", "status": "sent", **columns}
    user = "" if "user_id" in row else ", user_id"
    names = ", ".join(row)
    values = ", ".join(f"%({name})s" for name in row)
    with db.cursor() as cur:
        cur.execute(f"INSERT INTO deliveries (notification_id, notification_seq{user}, {names})"
                    f" SELECT n.id, n.seq{', n.user_id' if user else ''}, {values} FROM notifications n"
                    " WHERE n.id = %(notification)s RETURNING id", {**row, "notification": notification_id})
        found = cur.fetchone()
    assert found is not None, f"no notification {notification_id}"
    return found[0]
