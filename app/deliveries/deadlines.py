"""`fallback: [{channel: sms, when: {email_not_delivered_within: PT2M}}]`: the fallback channel's
delivery is created once the watched delivery was not reported delivered within the duration
after its sent_at.

State is rows only (`delivery_deadlines`, migrations_sql/0024), none in Redis: the row is written
when the watched delivery is first claimed (`watch`, in the claim's transaction, so a worker
killed after the provider accepted still leaves it), due at the claim plus the duration. The
scheduler thread of every worker (app/dispatch/schedule.py) runs `run_due`, which takes the due
rows as escalation steps are taken (FOR UPDATE SKIP LOCKED: several workers never wait on each
other nor take one row twice) and, in one transaction per batch, either:

- moves it to sent_at plus the duration (sent, not yet that late; or still pending/retrying:
  checked again a duration later);
- runs it: writes the fallback deliveries (one per channel at most, as `<channel>_failed` does;
  preferences are applied when each is sent) and marks the row `done`, when the delivery was
  sent and no `delivered` report came in time, or it was reported undelivered, or failed;
- cancels it: reported delivered, skipped, expired, or the notification deleted.

A report (app/deliveries/reports.py) cancels the row (`delivered`) or runs it at once
(`undelivered`) in its own transaction, with the same functions.
"""
import logging

from .. import db
from ..db import cursor
from ..queues.enqueue import enqueue_on_their_lanes
from . import repository

log = logging.getLogger(__name__)
ROWS_PER_PASS = 500


def iso(seconds):
    """`PT2M` for 120: a duration as notifications.yaml writes it."""
    hours, rest = divmod(int(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    return "PT" + "".join(f"{n}{unit}" for n, unit in ((hours, "H"), (minutes, "M"), (secs, "S")) if n) \
        if seconds else "PT0S"


def watch(conn, claimed, event):
    """In the claim's transaction: the deadline row of a delivery whose event watches its channel
    (once: a later attempt's claim keeps the first row)."""
    spec = event.watch(claimed["channel"]) if event is not None else None
    if spec is None:
        return
    seconds, channels = spec
    with conn.cursor() as cur:
        cur.execute("INSERT INTO delivery_deadlines (delivery_id, notification_id, channels, within_seconds, due_at)"
                    " VALUES (%s, %s, %s, %s, now() + make_interval(secs => %s)) ON CONFLICT DO NOTHING",
                    (claimed["id"], claimed["notification_id"], list(channels), seconds, seconds))


def _claim(conn, limit, delivery_ids=None):
    """Lock pending rows, with the state of their delivery and notification: the due ones no other
    worker holds, or (a report) those of `delivery_ids`, waiting for a worker that holds one. Rows
    are locked before their delivery (here and in a report), so the two never deadlock."""
    where, args, skip = ("w.delivery_id = ANY(%s::uuid[])", [[str(i) for i in delivery_ids]], "") \
        if delivery_ids is not None else ("w.due_at <= now()", [], " SKIP LOCKED")
    with cursor(conn) as cur:
        cur.execute("SELECT w.delivery_id, w.notification_id, d.notification_seq, w.channels, w.within_seconds,"
                    " d.user_id, d.channel,"
                    " d.status, d.delivered_at, d.sent_at + make_interval(secs => w.within_seconds) AS deadline,"
                    " d.sent_at + make_interval(secs => w.within_seconds) <= now() AS overdue,"
                    " n.deleted_at IS NOT NULL AS deleted, coalesce(n.expires_at <= now(), false) AS expired"
                    " FROM delivery_deadlines w JOIN deliveries d ON d.id = w.delivery_id"
                    " JOIN notifications n ON n.id = w.notification_id"
                    f" WHERE w.status = 'pending' AND {where} ORDER BY w.due_at LIMIT %s"
                    " FOR UPDATE OF w" + skip, (*args, limit))
        return cur.fetchall()


def _finish(conn, row, status, reason):
    with conn.cursor() as cur:
        cur.execute("UPDATE delivery_deadlines SET status = %s, reason = %s, finished_at = now()"
                    " WHERE delivery_id = %s", (status, reason, row["delivery_id"]))


def _postpone(conn, row):
    """Sent, not that late yet: due at sent_at + the duration; not sent yet: look again a duration later."""
    with conn.cursor() as cur:
        cur.execute("UPDATE delivery_deadlines SET due_at = coalesce(%s, now() + make_interval(secs => %s))"
                    " WHERE delivery_id = %s", (row["deadline"], row["within_seconds"], row["delivery_id"]))


def run(conn, row, why):
    """Write the row's fallback deliveries and mark it done; the new delivery ids (the caller commits,
    then enqueues them)."""
    claimed = {"notification_id": row["notification_id"], "notification_seq": row["notification_seq"],
               "user_id": row["user_id"], "channel": row["channel"]}
    new = repository.fall_back(conn, claimed, row["channels"], reason=f"{row['channel']} {why}")
    _finish(conn, row, "done", f"{why}: falls back to {', '.join(row['channels'])}"
            + ("" if new else " (each had a delivery already)"))
    if new and row["status"] == "sent":   # said on the watched delivery too, as a failed one says it
        with conn.cursor() as cur:
            cur.execute("UPDATE deliveries SET reason = concat_ws('; ', reason, %s), updated_at = now()"
                        " WHERE id = %s", (f"{why}: falls back to {', '.join(row['channels'])}",
                                           row["delivery_id"]))
    return new


def settle(conn, rows):
    """Decide each locked row (module docstring); the fallback delivery ids written."""
    new = []
    for row in rows:
        if row["delivered_at"] is not None:
            _finish(conn, row, "cancelled", "delivered")
        elif row["deleted"] or row["expired"] or row["status"] in ("skipped", "expired"):
            _finish(conn, row, "cancelled", "deleted" if row["deleted"] else "expired" if row["expired"]
                    else row["status"])
        elif row["status"] in ("undelivered", "failed"):
            new += run(conn, row, row["status"])
        elif row["status"] == "sent" and row["overdue"]:
            new += run(conn, row, f"not delivered within {iso(row['within_seconds'])}")
        else:
            _postpone(conn, row)
    return new


def for_deliveries(conn, delivery_ids):
    """The pending rows of these deliveries, locked, as they are now (a report locks them before
    its deliveries, then reads them again after recording the report, and settles them at once)."""
    return _claim(conn, len(delivery_ids), delivery_ids) if delivery_ids else []


def run_due(app, conn, limit=ROWS_PER_PASS):
    """One pass of the scheduler thread over the due rows; how many were handled."""
    with db.transaction(conn):
        rows = _claim(conn, limit)
        new = settle(conn, rows)
    enqueue_on_their_lanes(app, conn, new)
    if new:
        log.info("%d report deadline(s) passed, %d fallback deliveries enqueued", len(rows), len(new))
    return len(rows)
