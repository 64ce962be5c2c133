"""SQL of the write path: triggers, notifications in batches, deliveries."""
import json
import uuid

import psycopg2.extras

from ..db import cursor
from ..notifications.model import COLUMNS

# Held while inserting notifications, so `seq` values become visible in
# increasing order (see migrations_sql/0001).
SEQ_LOCK = 7_245_002


def find_by_idempotency_key(conn, api_key_id, key, ttl_seconds):
    with cursor(conn) as cur:
        cur.execute("SELECT id, body_hash, response FROM triggers WHERE api_key_id = %s"
                    " AND idempotency_key = %s AND created_at > now() - make_interval(secs => %s)",
                    (api_key_id, key, ttl_seconds))
        return cur.fetchone()


def release_expired_key(conn, api_key_id, key, ttl_seconds):
    """Forget a key older than its time to live, so it may be used afresh."""
    with conn.cursor() as cur:
        cur.execute("UPDATE triggers SET idempotency_key = NULL WHERE api_key_id = %s"
                    " AND idempotency_key = %s AND created_at <= now() - make_interval(secs => %s)",
                    (api_key_id, key, ttl_seconds))


def insert_trigger(conn, trigger_id, api_key_id, idempotency_key, body_hash, body, response, request_id):
    with conn.cursor() as cur:
        cur.execute("INSERT INTO triggers (id, api_key_id, idempotency_key, body_hash, body, response,"
                    " users_total, request_id) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                    (trigger_id, api_key_id, idempotency_key, body_hash, json.dumps(body),
                     json.dumps(response), len(body["user_ids"]), request_id))


def get_trigger(conn, trigger_id, api_key_id=None):
    with cursor(conn) as cur:
        cur.execute("SELECT id, api_key_id, body, status, users_total, users_done, request_id, created_at,"
                    " dispatched_at FROM triggers WHERE id = %s"
                    + (" AND api_key_id = %s" if api_key_id else ""),
                    (trigger_id, api_key_id) if api_key_id else (trigger_id,))
        return cur.fetchone()


def store_chunk(conn, trigger_id, body, user_ids, hidden_users=()):
    """Insert one notification per user (none twice), return every row of the chunk.

    Rows stored by an earlier, interrupted run of the same trigger come back too,
    so that run's missing publishes and deliveries are made up for.
    """
    with conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (SEQ_LOCK,))
        cur.execute(
            "INSERT INTO notifications (id, trigger_id, user_id, customer_id, type, event, title, content,"
            " link_url, link_text, rec_type, rec_id, in_app)"
            " SELECT ids.id, %(trigger)s, ids.user_id, %(customer)s, %(type)s, %(event)s, %(title)s,"
            " %(content)s, %(link_url)s, %(link_text)s, %(rec_type)s, %(rec_id)s,"
            " NOT (ids.user_id = ANY(%(hidden)s::uuid[]))"
            " FROM unnest(%(ids)s::uuid[], %(users)s::uuid[]) WITH ORDINALITY AS ids(id, user_id, n)"
            " ORDER BY ids.n ON CONFLICT (trigger_id, user_id) DO NOTHING",
            {"trigger": trigger_id, "customer": body.get("customer_id"), "type": body["type"],
             "event": body["event"], "title": body["title"], "content": body.get("content") or "",
             "link_url": body.get("link_url"), "link_text": body.get("link_text"),
             "rec_type": body.get("rec_type"), "rec_id": body.get("rec_id"),
             "ids": [uuid.uuid4() for _ in user_ids], "users": list(user_ids), "hidden": list(hidden_users)})
    with cursor(conn) as cur:
        cur.execute(f"SELECT {COLUMNS}, deleted_at, in_app FROM notifications WHERE trigger_id = %s AND user_id = ANY(%s::uuid[])"
                    " ORDER BY seq", (trigger_id, list(user_ids)))
        return cur.fetchall()


def insert_deliveries(conn, rows):
    """rows: (notification_id, user_id, channel, status, reason); existing ones are kept."""
    if not rows:
        return
    with conn.cursor() as cur:
        psycopg2.extras.execute_values(
            cur, "INSERT INTO deliveries (id, notification_id, user_id, channel, status, reason, sent_at)"
                 " VALUES %s ON CONFLICT (notification_id, channel) DO NOTHING",
            [(uuid.uuid4(), nid, uid, channel, status, reason, status) for nid, uid, channel, status, reason
             in rows],
            template="(%s, %s, %s, %s, %s, %s, CASE WHEN %s = 'sent' THEN now() END)", page_size=1000)


def pending_deliveries(conn, notification_ids):
    """Deliveries of these notifications still waiting for a job."""
    with conn.cursor() as cur:
        cur.execute("SELECT id FROM deliveries WHERE notification_id = ANY(%s::uuid[]) AND status = 'pending'",
                    (list(notification_ids),))
        return [row[0] for row in cur.fetchall()]


def advance_trigger(conn, trigger_id, users_done, finished):
    with conn.cursor() as cur:
        cur.execute("UPDATE triggers SET users_done = greatest(users_done, %s),"
                    " status = CASE WHEN %s THEN 'dispatched' ELSE status END,"
                    " dispatched_at = CASE WHEN %s THEN now() ELSE dispatched_at END WHERE id = %s",
                    (users_done, finished, finished, trigger_id))


def stale_triggers(conn, older_than_seconds, limit=500):
    with conn.cursor() as cur:
        cur.execute("SELECT id FROM triggers WHERE status = 'pending'"
                    " AND created_at < now() - make_interval(secs => %s) ORDER BY created_at LIMIT %s",
                    (older_than_seconds, limit))
        return [row[0] for row in cur.fetchall()]
