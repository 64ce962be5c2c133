"""A big trigger (more users than one chunk) stored chunk by chunk.

Per chunk of users (queue.yaml `batch.users_per_chunk`, or the trigger's lane's
`users_per_chunk_<lane>`): one transaction
stores the notifications (never twice: see `repository.store_chunk`), their
delivery rows and the trigger's progress; after it commits, one script call
publishes them to the users' stream channels and one pipeline enqueues the
external deliveries. The job holds a session-level advisory lock on the
trigger (`repository.try_lock`) across its chunks, so two jobs never work on
one trigger at once, and the lock dies with the connection of a killed
worker. A run that was interrupted is simply run again: it redoes the last
committed chunk (its publishes may not have gone out) and continues.
"""
import contextlib
import logging
import uuid

import psycopg2

from .. import db
from ..acks import repository as acks
from ..logs import request_id_var
from . import repository
from .batch import after_publish, publish_stored
from .plan import localised, plan_channels
from .schemas import resolve_event

log = logging.getLogger(__name__)


def dispatch_big(app, conn, trigger_id, should_stop=lambda: False):
    """Store one big trigger, or the rest of it; None when another job holds it, else the users done.

    Stops between chunks when `should_stop()` says so (the worker is shutting down): the trigger
    stays pending with its progress, for the next drain."""
    locked = repository.try_lock(conn, trigger_id)
    conn.commit()
    if not locked:
        return None
    try:
        return _chunks(app, conn, trigger_id, should_stop)
    finally:
        if not conn.closed:
            try:
                conn.rollback()
                repository.unlock(conn, trigger_id)
                conn.commit()
            except psycopg2.Error:
                conn.close()   # a session lock dies with its connection


def _chunks(app, conn, trigger_id, should_stop):
    domain = app.config["DOMAIN"]
    trigger = repository.get_trigger(conn, trigger_id)
    conn.commit()
    if trigger is None or trigger["status"] != "pending":   # dispatched, or cancelled before it was due
        return 0
    request_id_var.set(trigger["request_id"])   # log under the id of the request that accepted it
    body = trigger["body"]
    event, _ = resolve_event(domain, body)
    customer_id = uuid.UUID(body["customer_id"]) if body.get("customer_id") else None
    users = body["user_ids"]
    needs = {name: channel.needs for name, channel in app.extensions["channels"].items()}
    size = domain.chunk_size(body.get("priority"))
    start = max(0, (trigger["users_done"] // size - 1) * size)
    done = start
    for offset in range(start, len(users), size):
        if offset > start and should_stop():
            log.info("trigger %s: stopping after %d of %d users (shutdown)", trigger_id, done, len(users))
            return done
        chunk = users[offset:offset + size]
        done = min(offset + size, len(users))
        with contextlib.ExitStack() as held:
            with db.transaction(conn):
                plan = plan_channels(conn, domain, event, body.get("channels"), chunk, customer_id, needs,
                                     locales=bool(body.get("translations")))
                texts = localised(trigger_id, body, plan, chunk)
                held.enter_context(repository.sequence_lock(conn))
                rows = repository.store_chunk(conn, trigger_id, body, chunk, plan.hidden_users(), texts,
                                              resumed=offset == start and trigger["users_done"] > 0)
                deliveries = plan.delivery_rows(rows)
                repository.insert_deliveries(conn, deliveries)
                acks.insert_escalations(conn, rows)
                repository.advance_trigger(conn, trigger_id, done, done == len(users))
                pending = repository.pending_deliveries(conn, rows)
            online = publish_stored(app, rows)
        after_publish(app, conn, rows, online, deliveries, pending, body.get("priority"))
    if not users:
        with db.transaction(conn):
            repository.advance_trigger(conn, trigger_id, 0, True)
    log.info("trigger %s dispatched to %d users", trigger_id, len(users))
    return len(users)
