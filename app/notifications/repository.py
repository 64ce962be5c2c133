"""SQL for the inbox. Every function takes the connection first and never commits."""
from ..db import cursor
from .model import COLUMNS


def _scope(user_id, customer_id, customers, status):
    """WHERE clause and parameters shared by the list and its counts."""
    where = ["user_id = %(user_id)s", "deleted_at IS NULL", "in_app"]
    params = {"user_id": user_id}
    if customer_id is not None:
        where.append("customer_id = %(customer_id)s")
        params["customer_id"] = customer_id
    elif customers is not None:
        where.append("(customer_id = ANY(%(customers)s::uuid[]) OR customer_id IS NULL)")
        params["customers"] = list(customers)
    if status == "read":
        where.append("read_at IS NOT NULL")
    elif status == "unread":
        where.append("read_at IS NULL")
    return " AND ".join(where), params


def list_inbox(conn, user_id, *, customer_id=None, customers=None, status="all", limit=50, offset=0):
    """One page of the inbox, newest first, with the filter's total and unread counts."""
    where, params = _scope(user_id, customer_id, customers, status)
    with cursor(conn) as cur:
        cur.execute(f"SELECT {COLUMNS} FROM notifications WHERE {where}"
                    " ORDER BY seq DESC LIMIT %(limit)s OFFSET %(offset)s",
                    dict(params, limit=limit, offset=offset))
        items = cur.fetchall()
        cur.execute(f"SELECT count(*) AS total, count(*) FILTER (WHERE read_at IS NULL) AS unread"
                    f" FROM notifications WHERE {where}", params)
        counts = cur.fetchone()
    return items, counts["total"], counts["unread"]


def get(conn, user_id, notification_id):
    """The user's notification, or None (also for another user's id)."""
    with cursor(conn) as cur:
        cur.execute(f"SELECT {COLUMNS} FROM notifications"
                    " WHERE id = %s AND user_id = %s AND deleted_at IS NULL AND in_app",
                    (notification_id, user_id))
        return cur.fetchone()


def set_read(conn, user_id, notification_id, read):
    """Mark read (keeping the first read time) or unread; the updated row or None."""
    with cursor(conn) as cur:
        cur.execute(f"UPDATE notifications SET read_at = CASE WHEN %(read)s THEN coalesce(read_at, now())"
                    f" ELSE NULL END WHERE id = %(id)s AND user_id = %(user_id)s AND deleted_at IS NULL AND in_app"
                    f" RETURNING {COLUMNS}", {"read": read, "id": notification_id, "user_id": user_id})
        return cur.fetchone()


def soft_delete(conn, user_id, notification_id):
    """Hide it from inbox and stream; the row stays for audit. True when it existed."""
    with conn.cursor() as cur:
        cur.execute("UPDATE notifications SET deleted_at = now()"
                    " WHERE id = %s AND user_id = %s AND deleted_at IS NULL AND in_app", (notification_id, user_id))
        return cur.rowcount == 1
