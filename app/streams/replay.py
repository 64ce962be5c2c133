"""Catching a stream up from PostgreSQL: everything after its cursor, in order."""
import json

from ..db import cursor
from ..notifications.model import COLUMNS, to_json_many
from . import frames


def _scope(customers):
    if customers is None:
        return "", {}
    named = [c for c in customers if c]
    clause = "customer_id = ANY(%(customers)s::uuid[])"
    if "" in customers:
        clause = f"({clause} OR customer_id IS NULL)"
    return " AND " + clause, {"customers": named}


def latest_seq(conn, user_id):
    """The user's newest cursor (0 when the inbox is empty)."""
    with conn.cursor() as cur:
        cur.execute("SELECT coalesce(max(seq), 0) FROM notifications WHERE user_id = %s", (user_id,))
        return cur.fetchone()[0]


def missed(conn, user_id, customers, after, cap):
    """(frames, new cursor) for the notifications after `after`; past `cap`, one `reset` event."""
    where, params = _scope(customers)
    with cursor(conn) as cur:
        cur.execute(f"SELECT {COLUMNS} FROM notifications WHERE user_id = %(user)s AND seq > %(after)s"
                    f" AND deleted_at IS NULL AND in_app{where} ORDER BY seq LIMIT %(limit)s",
                    dict(params, user=user_id, after=after, limit=cap + 1))
        rows = cur.fetchall()
    if len(rows) > cap:
        newest = latest_seq(conn, user_id)
        body = json.dumps({"reason": "too_many_missed", "limit": cap, "cursor": newest})
        return [frames.named("reset", body, seq=newest)], newest
    out = [frames.notification(r["seq"], encoded) for r, encoded in zip(rows, to_json_many(rows))]
    return out, (rows[-1]["seq"] if rows else after)
