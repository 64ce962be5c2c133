"""SQL of acknowledgements and escalation steps. Connection first; the caller owns the transaction."""
from ..db import cursor, uuid_array
from ..notifications.model import COLUMNS
from ..notifications.repository import visible
from . import callbacks


def insert_escalations(conn, rows):
    """The escalation steps of the stored rows that need an acknowledgement, read from their trigger's
    resolved `ack` (app/acks/policy.py), and their `ack_overdue` callback when the trigger names a
    callback_url; none twice (a re-run of a chunk inserts nothing)."""
    ids = [r["id"] for r in rows if r.get("ack_required") and r["in_app"] and r["deleted_at"] is None]
    if not ids:
        return
    with conn.cursor() as cur:
        cur.execute("INSERT INTO escalations (notification_id, step, user_id, channels, due_at)"
                    " SELECT n.id, s.n, n.user_id, ARRAY(SELECT jsonb_array_elements_text(s.step->'channels')),"
                    " n.created_at + make_interval(secs => (s.step->>'after_seconds')::float8)"
                    " FROM notifications n JOIN triggers t ON t.id = n.trigger_id"
                    " CROSS JOIN LATERAL jsonb_array_elements(t.body->'ack'->'escalate') WITH ORDINALITY AS s(step, n)"
                    " WHERE n.id = ANY(%s::uuid[]) ON CONFLICT DO NOTHING", (uuid_array(ids),))
    callbacks.schedule_overdue(conn, ids)


def acknowledge(conn, user_id, notification_id, customers=None):
    """Set acked_at once (and read_at, if unset): (row, first time?) or None when not the user's.
    A notification that needs no acknowledgement comes back unchanged, for the caller's 409."""
    extra, args = visible(customers)
    with cursor(conn) as cur:
        cur.execute(f"SELECT {COLUMNS} FROM notifications WHERE id = %s AND user_id = %s AND deleted_at IS NULL"
                    f" AND in_app{extra} FOR UPDATE", (notification_id, user_id, *args))
        row = cur.fetchone()
        if row is None or not row["ack_required"] or row["acked_at"] is not None:
            return (row, False) if row is not None else None
        cur.execute(f"UPDATE notifications SET acked_at = now(), read_at = coalesce(read_at, now()) WHERE id = %s"
                    f" RETURNING {COLUMNS}", (notification_id,))
        return cur.fetchone(), True


def cancel_escalations(conn, notification_id, reason):
    """End the notification's pending steps; how many there were."""
    with conn.cursor() as cur:
        cur.execute("UPDATE escalations SET status = 'cancelled', reason = %s, finished_at = now()"
                    " WHERE notification_id = %s AND status = 'pending'", (reason, notification_id))
        return cur.rowcount


def claim_due_steps(conn, limit):
    """Lock the due pending steps no other worker holds, with their notification's state."""
    with cursor(conn) as cur:
        cur.execute("SELECT e.notification_id, e.step, e.user_id, e.channels, n.acked_at, n.deleted_at,"
                    " n.expires_at, n.expires_at <= now() AS expired FROM escalations e"
                    " JOIN notifications n ON n.id = e.notification_id"
                    " WHERE e.status = 'pending' AND e.due_at <= now() ORDER BY e.due_at LIMIT %s"
                    " FOR UPDATE OF e SKIP LOCKED", (limit,))
        return cur.fetchall()


def finish_step(conn, step, status, reason=None):
    with conn.cursor() as cur:
        cur.execute("UPDATE escalations SET status = %s, reason = %s, finished_at = now()"
                    " WHERE notification_id = %s AND step = %s", (status, reason, step["notification_id"],
                                                                  step["step"]))


def insert_step_deliveries(conn, step):
    """The step's delivery rows (pending, marked with the step); ids of the new ones. A channel the
    notification already has a delivery on is left as it is (one delivery per channel)."""
    with conn.cursor() as cur:
        cur.execute("INSERT INTO deliveries (id, notification_id, notification_seq, user_id, channel, status,"
                    " escalation_step) SELECT gen_random_uuid(), n.id, n.seq, %s, c, 'pending', %s"
                    " FROM notifications n, unnest(%s::text[]) AS c WHERE n.id = %s"
                    " ON CONFLICT DO NOTHING RETURNING id",
                    (step["user_id"], step["step"], list(step["channels"]), step["notification_id"]))
        return [r[0] for r in cur.fetchall()]


def trigger_ack_state(conn, trigger_id, limit=1000):
    """({acknowledged, pending, overdue} counts, up to `limit` users' states) of a trigger's notices."""
    with cursor(conn) as cur:
        cur.execute("SELECT count(*) FILTER (WHERE acked_at IS NOT NULL) AS acknowledged,"
                    " count(*) FILTER (WHERE acked_at IS NULL AND (ack_deadline IS NULL OR ack_deadline > now()))"
                    " AS pending,"
                    " count(*) FILTER (WHERE acked_at IS NULL AND ack_deadline <= now()) AS overdue"
                    " FROM notifications WHERE trigger_id = %s AND ack_required", (trigger_id,))
        counts = cur.fetchone()
        cur.execute("SELECT user_id, acked_at, CASE WHEN acked_at IS NOT NULL THEN 'acknowledged'"
                    " WHEN ack_deadline <= now() THEN 'overdue' ELSE 'pending' END AS state"
                    " FROM notifications WHERE trigger_id = %s AND ack_required ORDER BY user_id LIMIT %s",
                    (trigger_id, limit))
        return dict(counts), cur.fetchall()
