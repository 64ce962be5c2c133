"""SQL of the write path: triggers, notifications in batches, deliveries."""
import contextlib
import json

import psycopg2

from ..db import Locks, cursor, uuid_array
from ..notifications.model import COLUMNS


# Held from before a chunk's notifications are inserted until they are
# published, so `seq` values are both committed and published in increasing
# order across every dispatch worker (see migrations_sql/0001). A stream
# drops anything at or below its cursor, so a publish overtaken by a later
# one would be lost to it (db.Locks.SEQUENCE).
@contextlib.contextmanager
def sequence_lock(conn):
    """Session-level: taken in the transaction that inserts (after its other work, to hold it
    briefly), it outlives that commit and covers the publish after it."""
    with conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_lock(%s)", (Locks.SEQUENCE,))
    try:
        yield
    finally:
        if not conn.closed:
            try:
                conn.rollback()
                with conn.cursor() as cur:
                    cur.execute("SELECT pg_advisory_unlock(%s)", (Locks.SEQUENCE,))
                conn.commit()
            except psycopg2.Error:
                conn.close()   # a session lock dies with its connection


def find_by_idempotency_key(conn, api_key_id, key, ttl_seconds):
    with cursor(conn) as cur:
        cur.execute("SELECT id, body_hash, response FROM triggers WHERE api_key_id = %s"
                    " AND idempotency_key = %s AND created_at > now() - make_interval(secs => %s)",
                    (api_key_id, key, ttl_seconds))
        return cur.fetchone()


def release_expired_key(api_key_id, key, ttl_seconds):
    """(sql, params): forget a key older than its time to live, so it may be used afresh."""
    return ("UPDATE triggers SET idempotency_key = NULL WHERE api_key_id = %s"
            " AND idempotency_key = %s AND created_at <= now() - make_interval(secs => %s)",
            (api_key_id, key, ttl_seconds))


def insert_trigger(trigger_id, api_key_id, idempotency_key, body_hash, body, response, request_id,
                   scheduled=False):
    """(sql, params): the outbox row (accept.py sends it with its audit row in one round trip);
    `scheduled` until its send_at when that is still to come (migrations_sql/0015)."""
    return ("INSERT INTO triggers (id, api_key_id, idempotency_key, body_hash, body, response,"
            " users_total, request_id, status, send_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (trigger_id, api_key_id, idempotency_key, body_hash, json.dumps(body), json.dumps(response),
             len(body["user_ids"]), request_id, "scheduled" if scheduled else "pending", body.get("send_at")))


def get_trigger(conn, trigger_id, api_key_id=None):
    with cursor(conn) as cur:
        cur.execute("SELECT id, api_key_id, body, status, users_total, users_done, request_id, created_at,"
                    " dispatched_at, send_at, cancelled_at FROM triggers WHERE id = %s"
                    + (" AND api_key_id = %s" if api_key_id else ""),
                    (trigger_id, api_key_id) if api_key_id else (trigger_id,))
        return cur.fetchone()


# The text of a stored notification: the trigger's own, or (a trigger with `translations`) each user's
# locale's version where it has one (plan.localised: rows joined by user, `l`), with that locale.
# (insert column, title and content, link_text, locale value, join); without translations the SQL is as before.
_CHUNK_TEXT = ("", "%(title)s, %(content)s", "%(link_text)s", "", "")
_LOCALISED = (" FROM unnest(%(l_triggers)s::uuid[], %(l_users)s::uuid[], %(l_titles)s::text[], %(l_contents)s::text[],"
              " %(l_link_texts)s::text[], %(l_locales)s::text[]) AS l(trigger_id, user_id, title, content, link_text,"
              " locale)")
_CHUNK_LOCALISED = (", locale", "coalesce(l.title, %(title)s), coalesce(l.content, %(content)s)",
                    "CASE WHEN l.user_id IS NULL THEN %(link_text)s ELSE l.link_text END", ", l.locale",
                    " LEFT JOIN (SELECT *" + _LOCALISED + ") l ON l.user_id = ids.user_id")


def _localised_params(localised):
    if not localised:
        return {}
    triggers, users, titles, contents, link_texts, locales = zip(*localised)
    return {"l_triggers": uuid_array(triggers), "l_users": uuid_array(users), "l_titles": list(titles),
            "l_contents": list(contents), "l_link_texts": list(link_texts), "l_locales": list(locales)}


# A resumed chunk's users already stored by the interrupted run (read under the trigger's lock: no
# other job stores this trigger meanwhile).
_NOT_STORED_YET = (" WHERE NOT EXISTS (SELECT 1 FROM notifications s WHERE s.trigger_id = %(trigger)s"
                   " AND s.user_id = ids.user_id)")


def store_chunk(conn, trigger_id, body, user_ids, hidden_users=(), localised=(), resumed=False):
    """Insert one notification per user (none twice), return every row of the chunk; `localised`:
    plan.localised's rows, the users whose text is a translation.

    `resumed`: an earlier, interrupted run of the trigger may have committed this chunk (the one
    before its recorded progress, fanout.py); its users already stored are skipped and their rows
    come back too, so that run's missing publishes and deliveries are made up for. Every other
    chunk is new: the trigger's lock and its progress, committed with each chunk, say so. No unique
    index says it instead: a partitioned `notifications` cannot hold one on (trigger_id, user_id)
    (docs/scaling.md, "Partitioned history"), and probing every partition for each of a chunk's
    users would cost more than the rows themselves.
    """
    users = uuid_array(user_ids)
    text = _CHUNK_LOCALISED if localised else _CHUNK_TEXT
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO notifications (id, trigger_id, user_id, customer_id, type, event, title, content,"
            f" link_url, link_text, rec_type, rec_id, expires_at, ack_required, ack_deadline, amounts, in_app{text[0]})"
            " SELECT gen_random_uuid(), %(trigger)s, ids.user_id, %(customer)s, %(type)s, %(event)s,"
            f" {text[1]}, %(link_url)s, {text[2]}, %(rec_type)s, %(rec_id)s, %(expires_at)s::timestamptz,"
            " %(ack_required)s, now() + make_interval(secs => %(ack_deadline)s::float8), %(amounts)s::jsonb,"
            f" NOT (ids.user_id = ANY(%(hidden)s::uuid[])){text[3]}"
            f" FROM unnest(%(users)s::uuid[]) WITH ORDINALITY AS ids(user_id, n){text[4]}"
            f"{_NOT_STORED_YET if resumed else ''} ORDER BY ids.n RETURNING {_RETURNED_AS_TEXT}",
            {"trigger": trigger_id, "customer": body.get("customer_id"), "type": body["type"],
             "event": body["event"], "title": body["title"], "content": body.get("content") or "",
             "link_url": body.get("link_url"), "link_text": body.get("link_text"),
             "rec_type": body.get("rec_type"), "rec_id": body.get("rec_id"), "expires_at": body.get("expires_at"),
             "ack_required": bool((body.get("ack") or {}).get("required")),
             "ack_deadline": (body.get("ack") or {}).get("deadline_seconds"), "users": users,
             "amounts": json.dumps(body["amounts"]) if body.get("amounts") else None,
             "hidden": uuid_array(hidden_users), **_localised_params(localised)})
        if resumed:
            cur.execute(f"SELECT {_RETURNED_AS_TEXT} FROM notifications WHERE trigger_id = %s"
                        " AND user_id = ANY(%s::uuid[])", (trigger_id, users))
        # plain dicts: half the cost of RealDictCursor's rows for a chunk of thousands
        names = [column.name for column in cur.description]
        rows = [dict(zip(names, row)) for row in cur.fetchall()]
    rows.sort(key=lambda r: r["seq"])
    return rows


def insert_deliveries(conn, rows):
    """rows: (notification_id, notification_seq, user_id, channel, status, reason, tried, resolution);
    existing ones are kept.

    A row decided with `tried` (skipped for want of an address or of consent) gets its one attempt
    recorded; `resolution` (what the plan decided on, JSON text) is stored with the row as evidence."""
    if not rows:
        return
    notification_ids, seqs, user_ids, channels, statuses, reasons, tried, resolutions = zip(*rows)
    with conn.cursor() as cur:
        # ON CONFLICT without a target: (notification_id, channel) is unique in either layout of
        # `deliveries` (with notification_seq, which follows from the notification, once partitioned)
        cur.execute("WITH d AS (SELECT * FROM unnest(%s::uuid[], %s::bigint[], %s::uuid[], %s::text[], %s::text[],"
                    " %s::text[], %s::boolean[], %s::jsonb[]) AS d(nid, nseq, uid, channel, status, reason, tried,"
                    " resolution)),"
                    " ins AS (INSERT INTO deliveries (id, notification_id, notification_seq, user_id, channel, status,"
                    " reason, attempts, sent_at, resolution)"
                    " SELECT gen_random_uuid(), d.nid, d.nseq, d.uid, d.channel, d.status, d.reason, d.tried::int,"
                    " CASE WHEN d.status = 'sent' THEN now() END, d.resolution FROM d"
                    " ON CONFLICT DO NOTHING RETURNING id, notification_seq, attempts, status, reason, resolution)"
                    " INSERT INTO delivery_attempts (delivery_id, notification_seq, attempt, outcome, error, started_at,"
                    " resolution) SELECT id, notification_seq, 1, status, reason, now(), resolution FROM ins"
                    " WHERE attempts = 1",
                    (uuid_array(notification_ids), list(seqs), uuid_array(user_ids), list(channels), list(statuses),
                     list(reasons), list(tried), list(resolutions)))


def pending_deliveries(conn, rows):
    """Deliveries of these stored notifications still waiting for a job. Their range of `seq`
    bounds the read to the partitions of `deliveries` that can hold them (docs/history.md)."""
    if not rows:
        return []
    seqs = [r["seq"] for r in rows]
    with conn.cursor() as cur:
        cur.execute("SELECT id FROM deliveries WHERE notification_id = ANY(%s::uuid[]) AND status = 'pending'"
                    " AND notification_seq BETWEEN %s AND %s",
                    (uuid_array(r["id"] for r in rows), min(seqs), max(seqs)))
        return [row[0] for row in cur.fetchall()]


def advance_trigger(conn, trigger_id, users_done, finished):
    with conn.cursor() as cur:
        cur.execute("UPDATE triggers SET users_done = greatest(users_done, %s),"
                    " status = CASE WHEN %s THEN 'dispatched' ELSE status END,"
                    " dispatched_at = CASE WHEN %s THEN now() ELSE dispatched_at END WHERE id = %s",
                    (users_done, finished, finished, trigger_id))


def stale_pending(conn, older_than_seconds):
    """Whether a trigger due for dispatch has waited longer than it should have (a scheduled one:
    since its send_at)."""
    with conn.cursor() as cur:
        cur.execute("SELECT EXISTS (SELECT 1 FROM triggers WHERE status = 'pending'"
                    " AND coalesce(send_at, created_at) < now() - make_interval(secs => %s)"
                    " AND (dispatch_after IS NULL OR dispatch_after <= now()))", (older_than_seconds,))
        return cur.fetchone()[0]


def dispatch_lag(conn):
    """Seconds the oldest trigger due for dispatch has waited since it was accepted or, scheduled,
    since its send_at (0: none waits): the `notif_dispatch_lag_seconds` an operator alerts on."""
    with conn.cursor() as cur:
        cur.execute("SELECT COALESCE(EXTRACT(EPOCH FROM now() - min(greatest(created_at, coalesce(send_at,"
                    " created_at)))), 0) FROM triggers"
                    " WHERE status = 'pending' AND (dispatch_after IS NULL OR dispatch_after <= now())")
        return float(cur.fetchone()[0])


# ------------------------------------------------------------------------------ claiming

_DUE = "status = 'pending' AND (dispatch_after IS NULL OR dispatch_after <= now())"


def _in_lane(lane):
    """SQL: the trigger is in `lane` (app/queues/lanes.py; a trigger stored without one is normal)."""
    return "" if lane is None else " AND COALESCE(body->>'priority', 'normal') = %(lane)s"


def stale_lanes(conn, older_than_seconds):
    """The lanes of the triggers due for dispatch that have waited longer than they should have."""
    with conn.cursor() as cur:
        cur.execute(f"SELECT DISTINCT COALESCE(body->>'priority', 'normal') FROM triggers WHERE {_DUE}"
                    " AND created_at < now() - make_interval(secs => %s)", (older_than_seconds,))
        return [row[0] for row in cur.fetchall()]


def claim_small(conn, max_users, limit, only=None, lane=None):
    """Lock the oldest due triggers of at most `max_users` users each, skipping any another job holds.

    FOR UPDATE SKIP LOCKED: the locks last until the caller's transaction ends, or its connection
    drops (a killed worker), so two jobs never store one trigger at once and nothing stays claimed
    by a dead one. `only`: among these ids. Returns plain dicts, oldest first."""
    among = ("" if only is None else " AND id = ANY(%(only)s::uuid[])") + _in_lane(lane)
    with conn.cursor() as cur:
        cur.execute(f"SELECT id, body, users_total, request_id FROM triggers WHERE {_DUE}"
                    f" AND users_total <= %(users)s{among} ORDER BY created_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED",
                    {"users": max_users, "limit": limit, "only": None if only is None else uuid_array(only),
                     "lane": lane})
        names = [column.name for column in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]


def big_candidates(conn, min_users, limit=20, lane=None):
    """Ids of the oldest due triggers of more than `min_users` users (claimed one by one, by `try_lock`)."""
    with conn.cursor() as cur:
        cur.execute(f"SELECT id FROM triggers WHERE {_DUE} AND users_total > %(users)s{_in_lane(lane)}"
                    " ORDER BY created_at LIMIT %(limit)s", {"users": min_users, "limit": limit, "lane": lane})
        return [row[0] for row in cur.fetchall()]


def try_lock(conn, trigger_id):
    """Session-level: held across the trigger's chunk transactions, gone with the connection."""
    with conn.cursor() as cur:
        cur.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s::text))", (Locks.BIG_TRIGGER, str(trigger_id)))
        return cur.fetchone()[0]


def unlock(conn, trigger_id):
    with conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_unlock(%s, hashtext(%s::text))", (Locks.BIG_TRIGGER, str(trigger_id)))


# The stored rows as the fan-out needs them, their ids as text: they only go on into strings (channel
# names, JSON, uuid[] literals), and psycopg2's uuid.UUID for each of a chunk's 4,000 ids and str()
# back cost a quarter of the fan-out worker's CPU.
_RETURNED_AS_TEXT = (COLUMNS.replace("id, seq, user_id, customer_id,", "id::text AS id, seq, user_id::text AS user_id,"
                                     " customer_id::text AS customer_id,", 1)
                     + ", deleted_at, in_app, trigger_id::text AS trigger_id")
assert _RETURNED_AS_TEXT.startswith("id::text AS id, seq, user_id::text")

_BATCH_TEXT = ("", "t.title, t.content", "t.link_text", "", "")
_BATCH_LOCALISED = (", locale", "coalesce(l.title, t.title), coalesce(l.content, t.content)",
                    "CASE WHEN l.user_id IS NULL THEN t.link_text ELSE l.link_text END", ", l.locale",
                    " LEFT JOIN (SELECT *" + _LOCALISED + ") l ON l.trigger_id = t.id AND l.user_id = u.user_id::uuid")


def store_triggers(conn, triggers, hidden, localised=()):
    """Insert one notification per user of every trigger (none twice), straight from the trigger rows;
    `localised`: plan.localised's rows of the users whose text is a translation.

    The bodies are read by PostgreSQL where they lie: nothing per row crosses the wire but the
    stored rows coming back. hidden: (trigger id, user id) pairs whose in-app channel is off. None
    of these triggers was stored before: they are claimed while pending (`claim_small`) and marked
    dispatched in the transaction that stores them (batch.py).
    """
    ids = uuid_array(t["id"] for t in triggers)
    hidden_triggers, hidden_users = (zip(*hidden) if hidden else ((), ()))
    returned = _RETURNED_AS_TEXT
    text = _BATCH_LOCALISED if localised else _BATCH_TEXT
    with conn.cursor() as cur:
        # A body with many users is TOASTed: each `body->>` would detoast all of it again, per
        # row (33 of 47 ms for 1,000 users). MATERIALIZED reads every body's fields once.
        cur.execute(
            "WITH t AS MATERIALIZED (SELECT b.n, tr.id, (tr.body->>'customer_id')::uuid AS customer_id,"
            " tr.body->>'type' AS type, tr.body->>'event' AS event, tr.body->>'title' AS title,"
            " coalesce(tr.body->>'content', '') AS content, tr.body->>'link_url' AS link_url,"
            " tr.body->>'link_text' AS link_text, tr.body->>'rec_type' AS rec_type, tr.body->>'rec_id' AS rec_id,"
            " (tr.body->>'expires_at')::timestamptz AS expires_at, tr.body->'user_ids' AS user_ids,"
            " coalesce((tr.body->'ack'->>'required')::boolean, false) AS ack_required,"
            " now() + make_interval(secs => (tr.body->'ack'->>'deadline_seconds')::float8) AS ack_deadline,"
            " tr.body->'amounts' AS amounts"
            " FROM unnest(%(ids)s::uuid[]) WITH ORDINALITY AS b(id, n) JOIN triggers tr ON tr.id = b.id)"
            " INSERT INTO notifications (id, trigger_id, user_id, customer_id, type, event, title, content,"
            f" link_url, link_text, rec_type, rec_id, expires_at, ack_required, ack_deadline, amounts, in_app{text[0]})"
            f" SELECT gen_random_uuid(), t.id, u.user_id::uuid, t.customer_id, t.type, t.event, {text[1]},"
            f" t.link_url, {text[2]}, t.rec_type, t.rec_id, t.expires_at, t.ack_required, t.ack_deadline, t.amounts,"
            f" (t.id, u.user_id::uuid) NOT IN (SELECT * FROM unnest(%(ht)s::uuid[], %(hu)s::uuid[])){text[3]}"
            " FROM t CROSS JOIN LATERAL jsonb_array_elements_text(t.user_ids) WITH ORDINALITY AS u(user_id, k)"
            f"{text[4]}"
            f" ORDER BY t.n, u.k RETURNING {returned}",
            {"ids": ids, "ht": uuid_array(hidden_triggers), "hu": uuid_array(hidden_users),
             **_localised_params(localised)})
        names = [column.name for column in cur.description]
        rows = [dict(zip(names, row)) for row in cur.fetchall()]
    rows.sort(key=lambda r: r["seq"])
    return rows


def mark_dispatched(conn, trigger_ids):
    with conn.cursor() as cur:
        cur.execute("UPDATE triggers SET status = 'dispatched', users_done = users_total, dispatched_at = now()"
                    " WHERE id = ANY(%s::uuid[])", (uuid_array(trigger_ids),))


def defer(conn, trigger_id, error, max_delay=300):
    """A trigger that failed on its own waits (1, 2, 4 … up to `max_delay` s) before its next try:
    still pending, so never lost, and never in the way of the triggers behind it."""
    with conn.cursor() as cur:
        cur.execute("UPDATE triggers SET dispatch_attempts = dispatch_attempts + 1, last_error = %s,"
                    " dispatch_after = now() + make_interval(secs => least(%s, power(2, dispatch_attempts)))"
                    " WHERE id = %s", (error[:1000], max_delay, trigger_id))
