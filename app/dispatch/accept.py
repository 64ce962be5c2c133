"""Accepting a trigger: idempotency, the durable outbox row, then waking the dispatcher.

The 202 is sent only after the trigger row has committed in PostgreSQL, so an
accepted trigger survives anything that happens next: the row is the outbox,
and a drain job (app/dispatch/drain.py) takes every pending row. Waking it is
at most one Redis round trip (`wake_dispatcher`, coalesced across the requests
of a gevent worker by `queues.waker.Waker`); if Redis is down, or the worker
dies, the relay finds the row still `pending` and wakes a drain itself. If
PostgreSQL cannot take the row, the caller gets a 503 and knows nothing was
accepted.
"""
import datetime
import hashlib
import json
import logging
import uuid

import psycopg2
from flask import current_app, g

from .. import audit, db
from ..errors import IdempotencyConflict, InvalidRequest
from ..notifications.model import rfc3339
from ..queues import lanes
from ..queues.waker import waker
from ..ratelimit import charge_recipients
from . import repository
from .schemas import resolve_event

log = logging.getLogger(__name__)


def body_hash(raw):
    """The same JSON body, whatever its key order or spacing, hashes the same."""
    return hashlib.sha256(json.dumps(raw, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _jsonable(body):
    return {k: ([str(u) for u in v] if k == "user_ids" else str(v) if isinstance(v, uuid.UUID)
                else rfc3339(v) if isinstance(v, datetime.datetime) else v)
            for k, v in body.items()}


TIME_FIELDS = ("send_at", "expires_at", "callback_url")


def _scheduled(body):
    """A send_at still to come (the trigger waits, `scheduled`); one already past is due now."""
    send_at = body.get("send_at")
    return send_at is not None and send_at > datetime.datetime.now(datetime.timezone.utc)


def accept_trigger(body, raw_body, api_key_id, idempotency_key):
    """Check the trigger against the domain, store it durably and wake the dispatcher; returns the
    202's body (a repeat's: the first one's).

    raw_body: a callable returning the request's JSON as sent, called only with an idempotency key:
    only then can the body's hash ever be compared (a trigger without a key stores "")."""
    domain = current_app.config["DOMAIN"]
    event = resolve_event(domain, body)[0]
    canonical_type, lane = event.group, lanes.for_trigger(event, body.get("priority"))
    ack = body.get("ack") or event.ack   # the trigger's replaces the event's default
    if body.get("callback_url") and not ack.required:
        raise InvalidRequest(errors={"callback_url": ["Only a notice needing acknowledgement has callbacks."]})
    ttl = domain.idempotency_ttl_seconds
    digest = body_hash(raw_body()) if idempotency_key else ""
    conn = db.get_conn()
    with db.autocommit(conn):
        if idempotency_key:
            previous = repository.find_by_idempotency_key(conn, api_key_id, idempotency_key, ttl)
            if previous is not None:
                return _replay(previous, digest)
        users = len(body["user_ids"])
        charge_recipients(api_key_id, users, lane)   # after the replay check: a repeat costs nothing
        trigger_id = uuid.uuid4()
        scheduled = _scheduled(body)
        response = {"message": f"Notification accepted for delivery to {users} user(s)",
                    "trigger_id": str(trigger_id), "users": users,
                    "status_url": f"/v1/notifications/triggers/{trigger_id}"}
        if scheduled:
            response["send_at"] = rfc3339(body["send_at"])
        # (issue 21's optional fields only when given: the stored body of a plain trigger is as before)
        stored = dict(_jsonable({k: v for k, v in body.items()
                                 if k != "ack" and not (k in TIME_FIELDS and v is None)}), type=canonical_type,
                      priority=lane)
        if ack.required:
            stored["ack"] = ack.stored()
        statements = [repository.release_expired_key(api_key_id, idempotency_key, ttl)] if idempotency_key else []
        statements.append(repository.insert_trigger(trigger_id, api_key_id, idempotency_key, digest, stored,
                                                    response, g.get("request_id"), scheduled))
        change = {"type": canonical_type, "event": body["event"], "customer_id": body.get("customer_id"),
                  "users": users, "idempotency_key": idempotency_key}
        change.update((k, stored[k]) for k in ("send_at", "expires_at") if stored.get(k))
        statements.append(audit.append_statement("notification.trigger", ("trigger", trigger_id), change,
                                                 actor=("service", api_key_id)))
        try:
            db.one_transaction(conn, statements)
        except psycopg2.errors.UniqueViolation:
            # Two requests with one key raced; the other one won and is the answer.
            previous = repository.find_by_idempotency_key(conn, api_key_id, idempotency_key, ttl)
            return _replay(previous, digest)
    if scheduled:   # the scheduler wakes a drain at send_at (app/dispatch/schedule.py)
        return response
    try:
        waker().wake(lane)
    except Exception as exc:  # Redis down: the relay will wake a drain
        log.warning("trigger %s accepted but the dispatcher not woken (%s); the relay will", trigger_id,
                    type(exc).__name__)
    return response


def _replay(previous, digest):
    if previous["body_hash"] != digest:
        raise IdempotencyConflict()
    return previous["response"]
