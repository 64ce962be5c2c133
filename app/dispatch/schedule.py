"""Scheduled triggers: kept as `scheduled` outbox rows until their send_at, then made due; and
the thread that also runs due escalation steps (app/acks/service.py) and the deadlines of
`<channel>_not_delivered_within` fallbacks (app/deliveries/deadlines.py).

A trigger accepted with a future `send_at` is a durable row with status
`scheduled` (migrations_sql/0015); nothing about it lives in Redis, so a
Redis flush or restart loses none. The scheduler thread of every worker
(started with the relay, workers/relay.py) sleeps until the earliest
send_at (at most `TICK` seconds, so a trigger accepted meanwhile with an
earlier time is seen), turns every trigger whose time has come `pending` in
one statement (SKIP LOCKED: several workers never wait on each other) and
wakes a drain. From there a scheduled trigger is an ordinary one: the drain
stores it once, and the relay wakes a drain again should that wake be lost.

Cancelling (`DELETE /v1/notifications/triggers/{id}`) and making due both
change only a `scheduled` row, so whichever commits first wins, and a
cancelled trigger is never stored.
"""
import logging

from .. import audit, db
from ..db import cursor
from ..errors import NotFound, TriggerNotCancellable
from ..queues.lanes import rank
from ..queues.waker import wake_dispatcher
from ..redact import summary

log = logging.getLogger(__name__)
TICK = 0.5        # longest sleep: a trigger scheduled meanwhile is made due at most this late
BATCH = 5000      # triggers made due per statement


def make_due(conn, limit=BATCH):
    """Turn the scheduled triggers whose send_at has come `pending`; returns (how many, their lanes)."""
    with conn.cursor() as cur:
        cur.execute("WITH due AS (SELECT id FROM triggers WHERE status = 'scheduled' AND send_at <= now()"
                    " ORDER BY send_at LIMIT %s FOR UPDATE SKIP LOCKED)"
                    " UPDATE triggers t SET status = 'pending' FROM due WHERE t.id = due.id"
                    " RETURNING COALESCE(t.body->>'priority', 'normal')", (limit,))
        lanes = [row[0] for row in cur.fetchall()]
        return len(lanes), set(lanes)


def seconds_to_next(conn):
    """Seconds until the earliest scheduled trigger is due (None: none is scheduled)."""
    with conn.cursor() as cur:
        cur.execute("SELECT EXTRACT(EPOCH FROM min(send_at) - now()) FROM triggers WHERE status = 'scheduled'")
        value = cur.fetchone()[0]
        return None if value is None else float(value)


def cancel(conn, trigger_id, api_key_id):
    """Cancel the caller's scheduled trigger (audited); a repeat is a no-op. NotFound for another
    service's or no trigger, TriggerNotCancellable once it is due, dispatched, or was never scheduled."""
    with cursor(conn) as cur:
        cur.execute("UPDATE triggers SET status = 'cancelled', cancelled_at = now()"
                    " WHERE id = %s AND api_key_id = %s AND status = 'scheduled' RETURNING id",
                    (trigger_id, api_key_id))
        if cur.fetchone() is not None:
            audit.record(conn, "notification.trigger_cancel", ("trigger", trigger_id), {"status": "cancelled"})
            return
        cur.execute("SELECT status, send_at FROM triggers WHERE id = %s AND api_key_id = %s",
                    (trigger_id, api_key_id))
        row = cur.fetchone()
    if row is None:
        raise NotFound("Trigger not found")
    if row["status"] == "cancelled":
        return
    if row["send_at"] is None:
        raise TriggerNotCancellable("This trigger was not scheduled (no send_at): it is dispatched at once")
    raise TriggerNotCancellable(f"This trigger is already {row['status']}: its send_at has come")


def tick(app):
    """One pass: make due what is due, wake a drain for it, run the escalation steps due
    (app/acks/service.py) and the delivery-report deadlines passed (app/deliveries/deadlines.py);
    returns seconds to sleep."""
    from ..acks.service import STEPS_PER_PASS, run_due_steps
    from ..deliveries import deadlines
    with app.app_context(), db.connection() as conn:
        if run_due_steps(app, conn) >= STEPS_PER_PASS:
            return 0
        if deadlines.run_due(app, conn) >= deadlines.ROWS_PER_PASS:
            return 0
        made_due, lanes = make_due(conn)
        conn.commit()
        if made_due:
            for lane in sorted(lanes, key=rank):   # each lane's drain takes only its own triggers
                wake_dispatcher(app, lane=lane)
            log.info("%d scheduled trigger(s) due", made_due)
            if made_due >= BATCH:
                return 0
        wait = seconds_to_next(conn)
        conn.commit()
    return TICK if wait is None else min(TICK, max(0.0, wait))


def run(app, stop):
    """The scheduler thread's loop (until `stop` is set)."""
    wait = 0
    while not stop.wait(wait):
        try:
            wait = tick(app)
        except Exception as exc:  # PostgreSQL or Redis down: rows made due wait for the relay
            log.warning("scheduler pass failed: %s", summary(exc))
            wait = TICK * 4
