"""Catching a stream up from PostgreSQL: everything after its cursor, in order.

A replay is bounded twice: by rows (`SSE_REPLAY_LIMIT`) and by bytes
(`SSE_REPLAY_MAX_BYTES`), because one stream's replay is held in this
process's memory until its client reads it, and a user may hold several
streams. Past either bound the stream gets one `reset` event (the client
refetches the inbox and carries on from the newest cursor) instead of the
notifications. PostgreSQL adds up the rows' text as it reads them, so no more
than the cap (and one row) ever reaches this process for a replay it refuses.
"""
import json

from ..db import cursor, execute_prepared
from ..notifications.model import COLUMNS, to_json_many
from . import frames

# The bytes of a row's text: never more than its JSON (which adds the keys, ids and dates).
_TEXT_BYTES = " + ".join(f"coalesce(octet_length({c}), 0)" for c in (
    "type", "event", "title", "content", "link_url", "link_text", "rec_type", "rec_id"))


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
        execute_prepared(cur, "SELECT coalesce(max(seq), 0) FROM notifications WHERE user_id = %(user)s",
                         {"user": user_id})
        return cur.fetchone()[0]


def missed(conn, user_id, customers, after, cap, max_bytes):
    """(frames, new cursor) for the notifications after `after`; past `cap` rows or `max_bytes`,
    one `reset` event."""
    where, params = _scope(customers)
    with cursor(conn) as cur:
        execute_prepared(cur, f"SELECT * FROM (SELECT page.*, sum(size) OVER (ORDER BY seq) AS running FROM ("
                              f"  SELECT {COLUMNS}, {_TEXT_BYTES} AS size FROM notifications"
                              f"  WHERE user_id = %(user)s AND seq > %(after)s AND deleted_at IS NULL AND in_app"
                              f"  AND (expires_at IS NULL OR expires_at > now()){where}"
                              f"  ORDER BY seq LIMIT %(limit)s) AS page) AS counted"
                              f" WHERE running - size <= %(max_bytes)s ORDER BY seq",
                         dict(params, user=user_id, after=after, limit=cap + 1, max_bytes=max_bytes))
        rows = cur.fetchall()
    if len(rows) > cap:
        return _reset(conn, user_id, "too_many_missed", cap)
    out = [frames.notification(r["seq"], encoded) for r, encoded in zip(rows, to_json_many(rows))]
    if sum(len(frame) for frame in out) > max_bytes:
        return _reset(conn, user_id, "too_many_bytes", max_bytes)
    return out, (rows[-1]["seq"] if rows else after)


def _reset(conn, user_id, reason, limit):
    newest = latest_seq(conn, user_id)
    body = json.dumps({"reason": reason, "limit": limit, "cursor": newest})
    return [frames.named("reset", body, seq=newest)], newest
