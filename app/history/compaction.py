"""Compaction: a closed partition of the history rewritten in user order (migration 0030).

Rows are stored as the sequence hands out `seq`, so a user's notifications of a month are spread
over as many heap pages as there are of them: an inbox page of 50 read ~50 pages, most of them
from disk once the history outgrows memory. A partition no new `seq` can reach only sees
updates (read, acked, deleted) from then on; rewritten sorted by (user_id, seq) once, a user's
month sits on one or two pages.

The rewrite is online: the copy and its indexes are built while the partition serves (only
read), the rows changed meanwhile (updated, deleted, or stored late by a transaction that took
its `seq` before the sequence moved on) are logged by a row trigger and written to the copy again, and
a swap of a few milliseconds — the DETACH's ACCESS EXCLUSIVE lock on `notifications`, waited for
at most 50 ms and tried again later, as retention's detach is — puts the copy in the
partition's place. A process dying at any step leaves the partition as it was (or swapped and
only the old table left to drop); the next pass starts that partition over (or drops it).

Who runs it: every worker process, in the thread of `schedule()`, one pass every
`HISTORY_COMPACT_INTERVAL_SECONDS` (0: never) under the advisory lock retention takes (one
history maintenance pass at a time: a partition is never compacted and dropped at once); each
pass compacts every closed partition not compacted yet, newest first. Operators: `flask history
compact`.
"""
import logging
import threading
import time

from psycopg2 import errors

from .. import db
from ..redact import summary
from . import partitions

log = logging.getLogger(__name__)
SWAP_ATTEMPTS = 20        # each waits at most 50 ms for the table's lock (0030); spaced out below
SWAP_PAUSE_SECONDS = 0.5
CATCH_UP_ROUNDS = 3       # lock-free rounds of logged changes before the swap applies the rest


def pending(conn):
    """Names of the closed partitions not compacted yet, newest first."""
    with conn.cursor() as cur:
        cur.execute("SELECT name FROM history_compacted WHERE done_at IS NOT NULL")
        done = {row[0] for row in cur.fetchall()}
    conn.commit()
    closed = [name for name, _, _, holds_current in partitions.listing(conn) if not holds_current]
    conn.commit()
    return [name for name in reversed(closed) if name not in done]


def backlog(conn):
    """How many closed partitions wait for a compaction (None: the history is not partitioned)."""
    if not partitions.partitioned(conn):
        return None
    conn.commit()
    return len(pending(conn))


def _retrying(conn, statement, params, attempts, pause):
    """Run `statement` in its own transaction, again after `pause` while its lock is not to be had."""
    for _ in range(attempts):
        try:
            with db.transaction(conn), conn.cursor() as cur:
                cur.execute(statement, params)
                return cur.fetchone()[0]
        except errors.LockNotAvailable:
            time.sleep(pause)
    raise errors.LockNotAvailable(f"{statement}: the table stayed busy for {attempts} attempts")


def compact(conn, name, attempts=SWAP_ATTEMPTS, pause=SWAP_PAUSE_SECONDS, after_copy=lambda: None):
    """Rewrite partition `name` in user order; returns the rows it holds (0: nothing to do).
    `after_copy()` runs between the copy and the swap (tests change rows there)."""
    if not _retrying(conn, "SELECT history_partition_compact_begin(%s::regclass)", (name,), attempts, pause):
        return 0
    with db.transaction(conn), conn.cursor() as cur:
        cur.execute("SELECT history_partition_compact_copy(%s)", (name,))
        copied = cur.fetchone()[0]
    after_copy()
    for _ in range(CATCH_UP_ROUNDS):
        with db.transaction(conn), conn.cursor() as cur:
            cur.execute("SELECT history_partition_compact_catch_up(%s)", (name,))
            if not cur.fetchone()[0]:
                break
    _retrying(conn, "SELECT history_partition_compact_swap(%s) IS NULL", (name,), attempts, pause)
    with db.transaction(conn), conn.cursor() as cur:
        cur.execute("SELECT history_partition_compact_finish(%s)", (name,))
    log.info("history: partition %s compacted (%d notifications in user order)", name, copied)
    return copied


def compact_pending(app, **options):
    """Compact every pending partition unless a retention or compaction pass is running (then
    None); returns {name: rows}. Free of the pool's statement timeout: a copy takes minutes."""
    with app.app_context(), db.connection() as conn, db.without_timeouts(conn):
        with db.session_lock(conn, db.Locks.RETENTION) as got:
            if not got:
                return None
            if not partitions.partitioned(conn):
                return {}
            conn.commit()
            return {name: compact(conn, name, **options) for name in pending(conn)}


def _loop(app, stop, interval):
    while not stop.wait(interval):
        try:
            compact_pending(app)
        except Exception as exc:  # PostgreSQL down, the table busy: next turn
            log.warning("history compaction failed: %s", summary(exc))


def schedule(app, stop):
    """Run the periodic compaction in a daemon thread of a worker process until `stop` is set."""
    interval = float(app.config["HISTORY_COMPACT_INTERVAL_SECONDS"])
    if interval <= 0:
        return None
    thread = threading.Thread(target=_loop, args=(app, stop, interval), name="history-compaction", daemon=True)
    thread.start()
    return thread
