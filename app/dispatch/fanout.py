"""The dispatch job's work: store a trigger's notifications chunk by chunk and fan them out.

Per chunk of users (queue.yaml `batch.users_per_chunk`): one transaction
stores the notifications (never twice: unique per trigger and user) and their
delivery rows; after it commits, one script call publishes them to the users'
stream channels and one pipeline enqueues the external deliveries. A run that
was interrupted is simply run again: it redoes the last committed chunk (its
publishes may not have gone out) and continues.
"""
import datetime
import logging
import uuid

from flask import current_app

from .. import db, events
from ..jobs_queue import enqueue_deliveries
from ..logs import request_id_var
from ..metrics import DELIVERIES, FANOUT_LATENCY, PUBLISHED, STORED
from ..notifications.model import to_json
from ..pubsub import notification_message, publisher
from . import repository
from .plan import plan_channels
from .schemas import resolve_event

log = logging.getLogger(__name__)


def dispatch_trigger(trigger_id):
    """Store and fan out one accepted trigger; returns the number of users done."""
    app = current_app._get_current_object()
    domain = app.config["DOMAIN"]
    with db.connection() as conn:
        trigger = repository.get_trigger(conn, trigger_id)
        conn.commit()
        if trigger is None or trigger["status"] == "dispatched":
            return 0
        request_id_var.set(trigger["request_id"])   # log under the id of the request that accepted it
        body = trigger["body"]
        event, _ = resolve_event(domain, body)
        customer_id = uuid.UUID(body["customer_id"]) if body.get("customer_id") else None
        users = body["user_ids"]
        needs = {name: channel.needs for name, channel in app.extensions["channels"].items()}
        size = domain.users_per_chunk
        start = max(0, (trigger["users_done"] // size - 1) * size)
        for offset in range(start, len(users), size):
            chunk = users[offset:offset + size]
            done = min(offset + size, len(users))
            with repository.sequence_lock(conn):
                with db.transaction(conn):
                    plan = plan_channels(conn, domain, event, body.get("channels"), chunk, customer_id, needs)
                    rows = repository.store_chunk(conn, trigger_id, body, chunk, plan.hidden_users())
                    repository.insert_deliveries(conn, plan.delivery_rows(rows))
                    repository.advance_trigger(conn, trigger_id, done, done == len(users))
                    pending = repository.pending_deliveries(conn, [r["id"] for r in rows])
                visible = [r for r in rows if r["deleted_at"] is None and r["in_app"]]
                online = []   # users with a stream open somewhere: only they can hear new counts
                publisher(app).publish([(r["user_id"], notification_message(r["seq"], r["customer_id"], to_json(r)))
                                        for r in visible], heard=online)
            if online:
                with db.transaction(conn):  # their new `unread` counts: one query, one publish
                    events.publish_counts(app, conn, online)
            _count(rows, visible, plan)
            enqueue_deliveries(pending, app)
        if not users:
            with db.transaction(conn):
                repository.advance_trigger(conn, trigger_id, 0, True)
        log.info("trigger %s dispatched to %d users", trigger_id, len(users))
        return len(users)


def _count(rows, visible, plan):
    STORED.inc(len(rows))
    PUBLISHED.inc(len(visible))
    for decisions in plan.decisions.values():
        for channel, status, _, tried in decisions:
            if tried:   # decided here rather than by a job: counted as that job would have
                DELIVERIES.labels(channel, status).inc()
    if visible:
        now = datetime.datetime.now(datetime.timezone.utc)
        FANOUT_LATENCY.observe((now - visible[-1]["created_at"]).total_seconds())
