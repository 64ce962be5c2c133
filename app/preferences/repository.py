"""SQL of preferences. Writes are upserts of single rows, so concurrent PUTs
touching different choices never overwrite each other."""
import psycopg2.extras

from ..db import cursor
from .rules import ALL_CUSTOMERS


def choices(conn, user_id, customer_id=None, group=None):
    """The user's rows that can apply for this customer (all of them when None)."""
    where, params = ["user_id = %(user)s"], {"user": user_id}
    if customer_id is not None:
        where.append("customer_id IN (%(all)s, %(customer)s)")
        params.update(all=ALL_CUSTOMERS, customer=customer_id)
    if group is not None:
        where.append("group_name = %(group)s")
        params["group"] = group
    with cursor(conn) as cur:
        cur.execute("SELECT user_id, customer_id, group_name, event, channel, enabled FROM preferences WHERE "
                    + " AND ".join(where), params)
        return cur.fetchall()


def choices_for_users(conn, user_ids, group, customer_id):
    """Rows of a whole chunk of users for one group, by user id."""
    with cursor(conn) as cur:
        cur.execute("SELECT user_id, customer_id, group_name, event, channel, enabled FROM preferences"
                    " WHERE user_id = ANY(%s::uuid[]) AND group_name = %s AND customer_id IN (%s, %s)",
                    (list(user_ids), group, ALL_CUSTOMERS, customer_id or ALL_CUSTOMERS))
        rows = cur.fetchall()
    by_user = {}
    for row in rows:
        by_user.setdefault(row["user_id"], []).append(row)
    return by_user


def upsert(conn, user_id, changes):
    """Apply every change (one row each); the caller's transaction makes them all-or-nothing."""
    rows = {}
    for c in changes:  # the last change to one choice wins, as if applied in order
        key = (c["customer_id"] or ALL_CUSTOMERS, c["group"], c.get("event") or "", c.get("channel") or "")
        rows[key] = (user_id, *key, c["enabled"])
    with conn.cursor() as cur:
        psycopg2.extras.execute_values(
            cur, "INSERT INTO preferences (user_id, customer_id, group_name, event, channel, enabled) VALUES %s"
                 " ON CONFLICT (user_id, group_name, customer_id, event, channel)"
                 " DO UPDATE SET enabled = EXCLUDED.enabled, updated_at = now()",
            list(rows.values()))


def quiet_hours(conn, user_id):
    """The user's quiet-hours window, or None."""
    with cursor(conn) as cur:
        cur.execute("SELECT start_time, end_time, channels FROM quiet_hours WHERE user_id = %s", (user_id,))
        return cur.fetchone()


def set_quiet_hours(conn, user_id, window):
    """Set (or, with None, clear) the user's quiet hours."""
    with conn.cursor() as cur:
        if window is None:
            cur.execute("DELETE FROM quiet_hours WHERE user_id = %s", (user_id,))
        else:
            cur.execute("INSERT INTO quiet_hours (user_id, start_time, end_time, channels) VALUES (%s, %s, %s, %s)"
                        " ON CONFLICT (user_id) DO UPDATE SET start_time = EXCLUDED.start_time,"
                        " end_time = EXCLUDED.end_time, channels = EXCLUDED.channels, updated_at = now()",
                        (user_id, window["start"], window["end"], list(window["channels"])))
