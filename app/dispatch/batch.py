"""Many small triggers stored in one transaction: the drain's common case.

One batch claims the oldest due triggers that fit in one chunk
(`batch.users_per_chunk` notifications in all) with FOR UPDATE SKIP LOCKED,
plans their channels per (event, customer, channels) group (one preferences
and one contacts query per group), then, under the sequence lock, stores
every notification with one INSERT … SELECT that reads the trigger rows
themselves, their delivery rows with one INSERT, and marks the triggers
dispatched, all in that one transaction. After the commit, still under the
lock, one script call publishes the batch to the users' stream channels; then
one query and publish sends the online users their unread counts, and one
pipeline enqueues the external deliveries.

A batch is all or nothing: a worker killed during it leaves every one of its
triggers pending and unclaimed (the row locks die with the connection), and
the next drain stores them once (UNIQUE (trigger_id, user_id)). Publishing
and enqueuing happen after the commit: a kill between the two loses the live
event (a stream catches up from PostgreSQL when it reconnects) and leaves
the deliveries pending for the relay, as the chunked path always did.
"""
import contextlib
import datetime
import logging
import uuid

import psycopg2
import redis

from .. import db
from ..acks import repository as acks
from ..bus.codec import notification_message
from ..bus.publisher import publisher
from ..logs import request_id_var
from ..metrics import DELIVERIES, FANOUT_LATENCY, PUBLISHED, STORED
from ..notifications import events
from ..notifications.model import to_json_many
from ..queues.enqueue import enqueue_deliveries
from ..redact import summary
from . import repository
from .plan import localised, plan_channels
from .schemas import resolve_event

log = logging.getLogger(__name__)
# The database or Redis failing, not the triggers: the job fails and the relay wakes a drain later.
INFRASTRUCTURE_ERRORS = (psycopg2.OperationalError, psycopg2.InterfaceError, redis.RedisError)


class BatchFailed(Exception):
    """A batch could not be stored; `trigger_ids` were in it (none of them was stored)."""

    def __init__(self, trigger_ids, cause):
        super().__init__(f"{len(trigger_ids)} trigger(s): {summary(cause)}")
        self.trigger_ids, self.cause = trigger_ids, cause


def store_batch(app, conn, only=None, lane=None):
    """Claim and store one batch of small triggers (`only`: just these ids); returns how many.

    Raises BatchFailed when the batch could not be stored for a reason of its own (nothing of it
    committed); PostgreSQL or Redis failing, and anything after the commit, are raised as they are."""
    domain = app.config["DOMAIN"]
    size = domain.chunk_size(lane)
    claimed, committed = [], False
    try:
        with contextlib.ExitStack() as held:
            with db.transaction(conn):
                claimed = _fit(repository.claim_small(conn, size, size, only, lane), size)
                if not claimed:
                    return 0
                plans = _plan(app, conn, claimed)
                hidden = _hidden(claimed, plans)
                texts = [row for t in claimed
                         for row in localised(t["id"], t["body"], plans[str(t["id"])], t["body"]["user_ids"])]
                held.enter_context(repository.sequence_lock(conn))
                rows = repository.store_triggers(conn, claimed, hidden, texts)
                deliveries = [d for r in rows for d in plans[r["trigger_id"]].delivery_rows([r])]
                repository.insert_deliveries(conn, deliveries)
                acks.insert_escalations(conn, rows)
                repository.mark_dispatched(conn, [t["id"] for t in claimed])
                pending = repository.pending_deliveries(conn, rows)
            committed = True
            online = publish_stored(app, rows)
    except INFRASTRUCTURE_ERRORS:
        raise
    except Exception as exc:
        if not claimed or committed:
            raise
        raise BatchFailed([t["id"] for t in claimed], exc) from exc
    after_publish(app, conn, rows, online, deliveries, pending, lane)
    if log.isEnabledFor(logging.INFO):   # a line per trigger, under the id of the request that accepted it
        for trigger in claimed:
            request_id_var.set(trigger["request_id"])
            log.info("trigger %s dispatched to %d users (batch of %d)", trigger["id"], trigger["users_total"],
                     len(claimed))
        request_id_var.set(None)
    return len(claimed)


def _fit(claimed, size):
    """The oldest of the claimed triggers whose users fit in one chunk (at least one trigger)."""
    chosen, users = [], 0
    for trigger in claimed:
        if chosen and users + trigger["users_total"] > size:
            break
        chosen.append(trigger)
        users += trigger["users_total"]
    return chosen


def _plan(app, conn, triggers):
    """{trigger id (str): Plan}, one plan per (group, event, customer, channels) for all of its users; the
    users' locales read with their contacts when one of the triggers has translations."""
    domain = app.config["DOMAIN"]
    needs = {name: channel.needs for name, channel in app.extensions["channels"].items()}
    groups = {}
    for trigger in triggers:
        body = trigger["body"]
        key = (body["type"], body["event"], body.get("customer_id"), tuple(body["channels"])
               if body.get("channels") is not None else None)
        groups.setdefault(key, []).append(trigger)
    plans = {}
    for (_, _, customer, _), members in groups.items():
        body = members[0]["body"]
        event, _ = resolve_event(domain, body)
        users = list(dict.fromkeys(uid for t in members for uid in t["body"]["user_ids"]))
        plan = plan_channels(conn, domain, event, body.get("channels"), users,
                             uuid.UUID(customer) if customer else None, needs,
                             locales=any(t["body"].get("translations") for t in members))
        plans.update((str(t["id"]), plan) for t in members)   # by text: the stored rows' trigger_id is
    return plans


def _hidden(triggers, plans):
    """(trigger id, user id) of every notification whose in-app channel is off."""
    off = {key: set(plan.hidden_users()) for key, plan in {id(p): p for p in plans.values()}.items()}
    return [(t["id"], uid) for t in triggers for uid in t["body"]["user_ids"] if uid in off[id(plans[str(t["id"])])]]


def in_inbox(rows):
    """The stored rows an inbox shows: not deleted, in-app on, not expired (a trigger stored late)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    return [r for r in rows if r["deleted_at"] is None and r["in_app"]
            and (r["expires_at"] is None or r["expires_at"] > now)]


def publish_stored(app, rows):
    """Publish the stored rows that belong in inboxes (call under the sequence lock); returns the
    user ids that have a stream open somewhere (only they can hear new counts).

    Best effort: the rows have committed. With Redis down the streams' hubs have lost Redis too,
    and every stream catches up from PostgreSQL when its hub reconnects."""
    online = []
    visible = in_inbox(rows)
    messages = [(r["user_id"], notification_message(r["seq"], r["customer_id"], encoded))
                for r, encoded in zip(visible, to_json_many(visible))]
    try:
        publisher(app).publish(messages, heard=online)
    except redis.RedisError as exc:
        log.warning("%d stored notification(s) not published (%s); streams catch up from PostgreSQL",
                    len(messages), type(exc).__name__)
    return online


def after_publish(app, conn, rows, online, deliveries, pending, lane=None):
    """After the sequence lock: the online users' new unread counts, the metrics, the deliveries' jobs."""
    if online:
        with db.transaction(conn):  # one query, one publish
            events.publish_counts(app, conn, online)
    visible = in_inbox(rows)
    STORED.inc(len(rows))
    PUBLISHED.inc(len(visible))
    for _, _, _, channel, status, _, tried, _ in deliveries:
        if tried:   # decided here rather than by a job: counted as that job would have
            DELIVERIES.labels(channel, status).inc()
    if visible:
        now = datetime.datetime.now(datetime.timezone.utc)
        FANOUT_LATENCY.observe((now - visible[-1]["created_at"]).total_seconds())
    enqueue_deliveries(pending, app, lane)   # the lane's queue (app/queues/lanes.py)
