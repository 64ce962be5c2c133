"""SQL of delivery state. A delivery is claimed (leased) before it is sent, so two
jobs for the same delivery never send it twice at the same time."""
from ..channels import IN_APP
from ..db import cursor
from ..notifications.model import COLUMNS
from . import in_app
from .receipt import resolution_json

N_COLUMNS = ", ".join(f"n.{c.strip()}" for c in COLUMNS.split(","))


def claim(conn, delivery_id, lease_seconds):
    """Take the delivery for one attempt; None when it is done or held by a live job."""
    with cursor(conn) as cur:
        cur.execute(
            "UPDATE deliveries SET status = 'sending', attempts = attempts + 1, updated_at = now(),"
            " locked_until = now() + make_interval(secs => %s)"
            " WHERE id = %s AND (status = 'pending' OR (status = 'sending' AND locked_until < now()))"
            " RETURNING id, notification_id, notification_seq, user_id, channel, attempts,"
            " attempts - attempt_base AS tries, escalation_step,"
            " now() AS started_at",
            (lease_seconds, delivery_id))
        claimed = cur.fetchone()
        if claimed is None:
            return None
        cur.execute(f"SELECT {N_COLUMNS}, n.deleted_at, n.locale AS text_locale, n.amounts, c.email, c.phone,"
                    " c.locale, c.timezone"
                    " FROM notifications n LEFT JOIN contacts c ON c.user_id = n.user_id WHERE n.id = %s",
                    (claimed["notification_id"],))
        claimed["row"] = cur.fetchone()
        claimed["avoid"] = frozenset()
        if claimed["attempts"] > 1:   # providers that may already have it (app/channels/failover.py)
            cur.execute("SELECT DISTINCT provider FROM delivery_attempts WHERE delivery_id = %s AND maybe_accepted",
                        (delivery_id,))
            claimed["avoid"] = frozenset(r["provider"] for r in cur.fetchall())
        return claimed


def record_tries(conn, claimed, tries):
    """The provider tries of this attempt that failed over to the next provider, one row each."""
    with conn.cursor() as cur:
        for tried in tries:
            cur.execute("INSERT INTO delivery_attempts (delivery_id, notification_seq, attempt, outcome, error,"
                        " provider, maybe_accepted, started_at) VALUES (%s, %s, %s, 'retry', %s, %s, %s, %s)",
                        (claimed["id"], claimed["notification_seq"], claimed["attempts"], tried["error"],
                         tried["provider"], tried["maybe_accepted"], claimed["started_at"]))


def finish(conn, claimed, status, *, error=None, reason=None, provider_id=None, outcome=None):
    """Record the attempt and the delivery's new state (pending again for a retry)."""
    with conn.cursor() as cur:
        cur.execute(
            "UPDATE deliveries SET status = %(status)s, updated_at = now(), locked_until = NULL,"
            " last_error = coalesce(%(error)s, last_error), reason = coalesce(%(reason)s, reason),"
            " provider_message_id = coalesce(%(pid)s, provider_message_id),"
            " sent_at = CASE WHEN %(status)s = 'sent' THEN now() ELSE sent_at END WHERE id = %(id)s",
            {"status": status, "error": error, "reason": reason, "pid": provider_id, "id": claimed["id"]})
        cur.execute("INSERT INTO delivery_attempts (delivery_id, notification_seq, attempt, outcome, error,"
                    " provider_message_id, started_at, resolution) VALUES (%s, %s, %s, %s, %s, %s, %s, %s::jsonb)",
                    (claimed["id"], claimed["notification_seq"], claimed["attempts"], outcome or status,
                     error or reason, provider_id, claimed["started_at"], resolution_json(claimed)))


def for_notification(conn, user_id, notification_id, customers=None):
    """The deliveries of the user's notification with their attempts, or None if not theirs."""
    from ..notifications.repository import visible
    extra, args = visible(customers)
    with cursor(conn) as cur:
        cur.execute("SELECT created_at FROM notifications WHERE id = %s AND user_id = %s AND deleted_at IS NULL"
                    " AND in_app" + extra, (notification_id, user_id, *args))
        found = cur.fetchone()
        if found is None:
            return None
        cur.execute("SELECT id, channel, status, reason, attempts, last_error, provider_message_id, created_at,"
                    " updated_at, sent_at, delivered_at FROM deliveries WHERE notification_id = %s ORDER BY channel",
                    (notification_id,))
        deliveries = cur.fetchall()
        cur.execute("SELECT delivery_id, attempt, outcome, error, provider, provider_message_id, started_at,"
                    " finished_at FROM delivery_attempts WHERE delivery_id = ANY(%s::uuid[])"
                    # an attempt's failed-over provider tries first, though written after its `sent`
                    " ORDER BY attempt, (outcome = 'retry' AND provider IS NOT NULL) DESC, id",
                    ([d["id"] for d in deliveries],))
        attempts = cur.fetchall()
    for delivery in deliveries:
        delivery["history"] = [a for a in attempts if a["delivery_id"] == delivery["id"]]
    if not any(d["channel"] == IN_APP for d in deliveries):   # (0012 removed the old rows)
        deliveries.append(in_app.delivered(found["created_at"]))
    return sorted(deliveries, key=lambda d: d["channel"])


def failed(conn, channel=None, limit=None):
    """Ids of failed deliveries, oldest first."""
    with conn.cursor() as cur:
        cur.execute("SELECT id FROM deliveries WHERE status = 'failed'"
                    + (" AND channel = %(channel)s" if channel else "") + " ORDER BY updated_at"
                    + (" LIMIT %(limit)s" if limit else ""), {"channel": channel, "limit": limit})
        return [row[0] for row in cur.fetchall()]


def failed_for_retry(conn, channel=None, limit=None, since=None):
    """Failed deliveries, oldest first, with what an operator judges a retry by: the notification's
    group, event and age, and the addresses a send would use now (read at send time)."""
    with cursor(conn) as cur:
        cur.execute("SELECT d.id, d.channel, d.attempts, n.type, n.event, n.created_at,"
                    " extract(epoch FROM now() - n.created_at) AS age_seconds, c.email, c.phone"
                    " FROM deliveries d JOIN notifications n ON n.id = d.notification_id"
                    " LEFT JOIN contacts c ON c.user_id = d.user_id WHERE d.status = 'failed'"
                    + (" AND d.channel = %(channel)s" if channel else "")
                    + (" AND n.created_at >= %(since)s" if since else "") + " ORDER BY d.updated_at"
                    + (" LIMIT %(limit)s" if limit else ""), {"channel": channel, "limit": limit, "since": since})
        return cur.fetchall()


def reset_for_retry(conn, delivery_ids):
    """Make failed deliveries pending again with a fresh attempt budget."""
    with conn.cursor() as cur:
        cur.execute("UPDATE deliveries SET status = 'pending', attempt_base = attempts, updated_at = now()"
                    " WHERE id = ANY(%s::uuid[]) AND status = 'failed' RETURNING id", (list(delivery_ids),))
        return [row[0] for row in cur.fetchall()]


def stale(conn, older_than_seconds, limit=1000):
    """Unfinished deliveries whose job may have been lost."""
    with conn.cursor() as cur:
        cur.execute("SELECT id FROM deliveries WHERE status IN ('pending', 'sending')"
                    " AND updated_at < now() - make_interval(secs => %s)"
                    " AND (locked_until IS NULL OR locked_until < now()) ORDER BY updated_at LIMIT %s",
                    (older_than_seconds, limit))
        return [row[0] for row in cur.fetchall()]


def fall_back(conn, claimed, channels, reason=None):
    """Pending deliveries on the fallback `channels` of a delivery that failed for good (or was not
    delivered in time: `reason`); ids of the new ones. Once only: a channel that already has a
    delivery of this notification gets none."""
    if not channels:
        return []
    with conn.cursor() as cur:
        cur.execute("INSERT INTO deliveries (id, notification_id, notification_seq, user_id, channel, status, reason)"
                    " SELECT gen_random_uuid(), %s, %s, %s, c, 'pending', %s FROM unnest(%s::text[]) AS c"
                    " ON CONFLICT DO NOTHING RETURNING id",
                    (claimed["notification_id"], claimed["notification_seq"], claimed["user_id"],
                     f"fallback: {reason or claimed['channel'] + ' failed'}", list(channels)))
        return [row[0] for row in cur.fetchall()]


def lanes(conn, delivery_ids):
    """{lane: delivery ids}: each delivery's lane is its trigger's (app/queues/lanes.py); normal when
    its trigger is gone or has none."""
    if not delivery_ids:
        return {}
    with conn.cursor() as cur:
        cur.execute("SELECT d.id, COALESCE(t.body->>'priority', 'normal') FROM deliveries d"
                    " JOIN notifications n ON n.id = d.notification_id LEFT JOIN triggers t ON t.id = n.trigger_id"
                    " WHERE d.id = ANY(%s::uuid[])", ([str(d) for d in delivery_ids],))
        found = {}
        for delivery_id, lane in cur.fetchall():
            found.setdefault(lane, []).append(delivery_id)
        return found


def hold(conn, claimed, until, reason):
    """Put a claimed delivery back to wait, without spending an attempt.

    `locked_until` keeps the relay away until the hold ends; the attempt row
    records the hold for the audit trail.
    """
    with conn.cursor() as cur:
        cur.execute("UPDATE deliveries SET status = 'pending', attempts = attempts - 1, reason = %s,"
                    " locked_until = %s, updated_at = now() WHERE id = %s", (reason, until, claimed["id"]))
        cur.execute("INSERT INTO delivery_attempts (delivery_id, notification_seq, attempt, outcome, error, started_at,"
                    " resolution) VALUES (%s, %s, %s, 'held', %s, %s, %s::jsonb)",
                    (claimed["id"], claimed["notification_seq"], claimed["attempts"], reason, claimed["started_at"],
                     resolution_json(claimed)))
