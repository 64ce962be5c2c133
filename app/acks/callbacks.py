"""Callbacks to the triggering service: signed `ack` and `ack_overdue` events for its notices.

A trigger may name a `callback_url` whose host is in ACK_CALLBACK_HOSTS (an
allow-list: the service never posts to an address a caller chose freely).
Each event is a row (`ack_callbacks`, migrations_sql/0019): `ack_overdue` is
written with the notice, due at its deadline; acknowledging cancels it and
writes `ack`, due at once. The callback thread of every worker (started with
the relay) claims due rows (SKIP LOCKED, with a lease, as deliveries are),
POSTs each and records the outcome; a failure is retried with queue.yaml's
attempts and back-off, as a delivery is. The body is JSON:

    {"id": <event id>, "event": "ack" | "ack_overdue", "trigger_id", "notification_id",
     "user_id", "acked_at", "ack_deadline", "sent_at"}

signed in `X-Notifications-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>"
under ACK_CALLBACK_SECRET>`; `Idempotency-Key` is the event id (a retry after a lost answer
repeats it).
"""
import datetime
import hashlib
import hmac
import json
import logging
import time
from urllib.parse import urlparse

import requests

from .. import db
from ..db import cursor
from ..notifications.model import rfc3339
from ..redact import summary

log = logging.getLogger(__name__)
LEASE_SECONDS = 60
TIMEOUT_SECONDS = 10
BATCH = 20
TICK = 1.0


def allowed(url, hosts):
    """Whether `url` is http(s) to one of the configured hosts (no credentials in it)."""
    parsed = urlparse(url or "")
    return parsed.scheme in ("https", "http") and not parsed.username and parsed.hostname in set(hosts)


def schedule_overdue(conn, notification_ids):
    """The `ack_overdue` rows of stored notices whose trigger names a callback_url, due at their deadline."""
    if not notification_ids:
        return
    with conn.cursor() as cur:
        cur.execute("INSERT INTO ack_callbacks (id, notification_id, event, url, next_at)"
                    " SELECT gen_random_uuid(), n.id, 'ack_overdue', t.body->>'callback_url', n.ack_deadline"
                    " FROM notifications n JOIN triggers t ON t.id = n.trigger_id"
                    " WHERE n.id = ANY(%s::uuid[]) AND t.body->>'callback_url' IS NOT NULL AND n.ack_deadline IS NOT NULL"
                    " ON CONFLICT DO NOTHING", (db.uuid_array(notification_ids),))


def on_ack(conn, notification_id):
    """In the acknowledgement's transaction: cancel the overdue event still waiting, write `ack`."""
    with conn.cursor() as cur:
        cur.execute("UPDATE ack_callbacks SET status = 'cancelled' WHERE notification_id = %s"
                    " AND event = 'ack_overdue' AND status = 'pending'", (notification_id,))
        cur.execute("INSERT INTO ack_callbacks (id, notification_id, event, url)"
                    " SELECT gen_random_uuid(), n.id, 'ack', t.body->>'callback_url'"
                    " FROM notifications n JOIN triggers t ON t.id = n.trigger_id"
                    " WHERE n.id = %s AND t.body->>'callback_url' IS NOT NULL ON CONFLICT DO NOTHING", (notification_id,))


def _claim(conn, limit):
    with cursor(conn) as cur:
        cur.execute("UPDATE ack_callbacks c SET status = 'sending', attempts = c.attempts + 1,"
                    " locked_until = now() + make_interval(secs => %s) FROM (SELECT id FROM ack_callbacks"
                    "  WHERE (status = 'pending' AND next_at <= now()) OR (status = 'sending' AND locked_until < now())"
                    "  ORDER BY next_at LIMIT %s FOR UPDATE SKIP LOCKED) due, notifications n"
                    " WHERE c.id = due.id AND n.id = c.notification_id"
                    " RETURNING c.id, c.event, c.url, c.attempts, n.id AS notification_id, n.trigger_id, n.user_id,"
                    " n.acked_at, n.ack_deadline", (LEASE_SECONDS, limit))
        return cur.fetchall()


def _finish(conn, callback, status, error=None, retry_in=None):
    with conn.cursor() as cur:
        cur.execute("UPDATE ack_callbacks SET status = %s, last_error = %s, locked_until = NULL,"
                    " sent_at = CASE WHEN %s = 'sent' THEN now() END,"
                    " next_at = CASE WHEN %s IS NULL THEN next_at ELSE now() + make_interval(secs => %s) END"
                    " WHERE id = %s", (status, error, status, retry_in, retry_in, callback["id"]))


def body(callback):
    """The event's JSON, from the notification as it is now."""
    return json.dumps({"id": str(callback["id"]), "event": callback["event"],
                       "trigger_id": str(callback["trigger_id"]), "notification_id": str(callback["notification_id"]),
                       "user_id": str(callback["user_id"]), "acked_at": rfc3339(callback["acked_at"]),
                       "ack_deadline": rfc3339(callback["ack_deadline"]),
                       "sent_at": rfc3339(datetime.datetime.now(datetime.timezone.utc))}, separators=(",", ":"))


def signature(secret, timestamp, payload):
    """The `X-Notifications-Signature` value: what a receiver recomputes to trust the body."""
    mac = hmac.new(secret.encode(), f"{timestamp}.{payload}".encode(), hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def _post(app, session, callback):
    """(status, error) of one attempt."""
    if not allowed(callback["url"], app.config["ACK_CALLBACK_HOSTS"]):
        return "failed", "the callback's host is no longer in ACK_CALLBACK_HOSTS"
    payload = body(callback)
    headers = {"Content-Type": "application/json", "Idempotency-Key": str(callback["id"]),
               "X-Notifications-Signature": signature(app.config["ACK_CALLBACK_SECRET"], int(time.time()), payload)}
    try:
        response = session.post(callback["url"], data=payload.encode(), headers=headers, timeout=TIMEOUT_SECONDS,
                                allow_redirects=False)
    except requests.RequestException as exc:
        return "retry", type(exc).__name__
    if 200 <= response.status_code < 300:
        return "sent", None
    return ("retry" if response.status_code in (408, 425, 429) or response.status_code >= 500 else "failed",
            f"answered {response.status_code}")


def run_due(app, conn, session):
    """Send the callbacks due now; returns how many were tried."""
    domain = app.config["DOMAIN"]
    with db.transaction(conn):
        due = _claim(conn, BATCH)
    for callback in due:
        status, error = _post(app, session, callback)
        retry_in = None
        if status == "retry":
            if callback["attempts"] >= domain.retry_attempts:
                status, error = "failed", f"{error}; gave up after {callback['attempts']} attempts"
            else:
                backoff = domain.retry_backoff or (0,)
                status, retry_in = "pending", backoff[min(callback["attempts"], len(backoff)) - 1]
        with db.transaction(conn):
            _finish(conn, callback, status, error, retry_in)
        if status == "failed":
            log.warning("ack callback %s failed: %s", callback["id"], error)
    return len(due)


def run(app, stop):
    """The callback thread's loop (until `stop` is set)."""
    session = requests.Session()
    wait = 0
    while not stop.wait(wait):
        try:
            with app.app_context(), db.connection() as conn:
                wait = 0 if run_due(app, conn, session) >= BATCH else TICK
        except Exception as exc:  # PostgreSQL down: the rows wait
            log.warning("ack callbacks pass failed: %s", summary(exc))
            wait = TICK * 4

