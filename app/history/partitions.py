"""The partitions of the notification history: made ahead of the sequence, dropped by retention.

`notifications` is partitioned by ranges of `seq` (migration 0026, docs/history.md). The DDL runs
in SQL functions as the schema's owner (the service's role may not run DDL); this module decides
when. Ahead: every worker, about every `ENSURE_EVERY_SECONDS`, and the release keep two empty
partitions of `HISTORY_PARTITION_ROWS` values past the one being filled, so an insert never
finds no partition for its `seq` (one more than a day's peak of headroom at the default).
Behind: retention detaches a partition whose newest notification is past every group's
retention and drops it, its counters and its dependents with it (`drop_expired`).
"""
import logging
import time

from psycopg2 import errors

from .. import db

log = logging.getLogger(__name__)
AHEAD = 2
ENSURE_EVERY_SECONDS = 30
DETACH_ATTEMPTS = 20      # each waits at most 50 ms for the table's lock (0026); spaced out below
DETACH_PAUSE_SECONDS = 0.5
UNCOUNT_USERS = 500       # users taken off the counters per step of a finish (0029): ~15 ms of work
UNCOUNT_PAUSE_SECONDS = 0.02


def partitioned(conn):
    with conn.cursor() as cur:
        cur.execute("SELECT history_is_partitioned('notifications')")      # migration 0028
        return cur.fetchone()[0]


def ensure(conn, span, ahead=AHEAD):
    """Create the partitions missing ahead of the sequence; returns how many (0: not partitioned yet)."""
    with db.transaction(conn), conn.cursor() as cur:
        cur.execute("SELECT history_partitions_ensure('notifications', %s, %s)", (span, ahead))
        made = cur.fetchone()[0]
    if made:
        log.info("history: %d partition(s) of %d values of seq created ahead", made, span)
    return made


def ensure_periodically(app, state={"next": 0.0}):
    """`ensure` at most every ENSURE_EVERY_SECONDS per process (the worker's relay loop calls it each tick)."""
    if time.monotonic() < state["next"]:
        return 0
    state["next"] = time.monotonic() + ENSURE_EVERY_SECONDS
    with app.app_context(), db.connection() as conn:
        return ensure(conn, app.config["HISTORY_PARTITION_ROWS"])


def headroom(conn):
    """Values of `seq` left before a row would find no partition (None: not partitioned)."""
    with conn.cursor() as cur:
        cur.execute("SELECT max(hi) - history_current_seq() FROM history_partitions('notifications')")
        return cur.fetchone()[0]


def listing(conn):
    """(name, lo, hi, holds_current) of every partition, lowest first."""
    with conn.cursor() as cur:
        cur.execute("SELECT p.partition::text, p.lo, p.hi, p.hi > history_current_seq()"
                    " FROM history_partitions('notifications') p ORDER BY p.lo")
        return cur.fetchall()


def expired(conn, keep_days):
    """Names of the partitions, lowest first, whose newest notification (or none) is older than
    `keep_days` and that no new `seq` can reach; stops at the first that is not: the history is in
    `seq` order, and so, near enough, in time order."""
    found = []
    with conn.cursor() as cur:
        for name, lo, hi, holds_current in listing(conn):
            if holds_current:
                break
            # pruned to the one partition; its created_at index gives the newest row at once
            cur.execute("SELECT coalesce(max(created_at) < now() - make_interval(days => %s), true)"
                        " FROM notifications WHERE seq >= %s AND seq < %s", (keep_days, lo, hi))
            if not cur.fetchone()[0]:
                break
            found.append(name)
    return found


def detach(conn, name, attempts=DETACH_ATTEMPTS, pause=DETACH_PAUSE_SECONDS):
    """Detach one partition; True once done. The DETACH needs a moment's ACCESS EXCLUSIVE lock on
    `notifications`: it waits at most 50 ms for it (requests queue behind a waiting DETACH, so a
    longer wait would be theirs too) and is tried again after a pause."""
    for attempt in range(attempts):
        try:
            with db.transaction(conn), conn.cursor() as cur:
                cur.execute("SELECT history_partition_detach(%s::regclass)", (name,))
            return True
        except errors.LockNotAvailable:
            time.sleep(pause)
    log.warning("history: partition %s not detached: its table stayed busy for %d attempts", name, attempts)
    return False


def finish_detached(conn, record=lambda conn, name, held: None, users=UNCOUNT_USERS,
                    pause=UNCOUNT_PAUSE_SECONDS):
    """Drop every detached partition not yet finished, calling `record(conn, name, held)` in the
    transaction of each drop; returns {name: notifications it held}.

    A month's unread notifications come off the counters `users` users a step, each step its own
    short transaction with a pause after it (0029), so the requests beside a retention pass keep
    the cores: one transaction for a whole month held both for seconds."""
    with conn.cursor() as cur:
        cur.execute("SELECT name FROM history_detached ORDER BY lo")
        names = [row[0] for row in cur.fetchall()]
    conn.commit()
    held = {}
    for name in names:
        while True:
            with db.transaction(conn), conn.cursor() as cur:
                cur.execute("SELECT history_partition_uncount(%s, %s)", (name, users))
                if not cur.fetchone()[0]:
                    break
            time.sleep(pause)
        with db.transaction(conn), conn.cursor() as cur:
            cur.execute("SELECT history_partition_finish(%s)", (name,))
            held[name] = cur.fetchone()[0]
            record(conn, name, held[name])
    return held


def drop_expired(conn, keep_days, record=lambda conn, name, held: None):
    """Detach and drop every partition past `keep_days`, and finish any a dead process detached;
    returns {name: notifications it held}."""
    for name in expired(conn, keep_days):
        conn.commit()
        if not detach(conn, name):
            break
    conn.commit()
    return finish_detached(conn, record)

