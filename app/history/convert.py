"""The online conversion of an unpartitioned `notifications` into the partitioned one, while the
service runs (`flask history partition`; docs/history.md).

A database that had notifications when migration 0026 ran keeps its table; this moves it over:

1. begin (`history_conversion_begin`): the empty partitioned table, its partitions from the
   lowest `seq` to two spans past the current one, and statement triggers on `notifications`
   that mirror every later change (insert, update, delete) into it;
2. copy, a range of `seq` a transaction, each batch's rows locked `FOR UPDATE SKIP LOCKED`: a
   row a request is changing right now is skipped (its change is mirrored when it commits), a
   row the copy holds makes the request wait for that one batch; so neither waits for the other
   in turn, and a request never deadlocks with the copy (each of the service's transactions
   changes notifications in one statement, whose mirror runs when all its rows are locked);
3. catch up on what was skipped, until no row of the old table is missing from the new one;
4. swap (`history_conversion_swap`), one short transaction under ACCESS EXCLUSIVE: the new
   table takes the name, index names, triggers, sequence and grants; requests wait for it (tens
   of milliseconds) and then run against the partitioned table, prepared plans re-planned;
5. drop the old table (or keep it with `--keep-old`, to compare).

It runs as the schema's owner (MIGRATION_DATABASE_URL). Interrupted, it can be run again: the
begin is not repeated, and the copy skips rows already there. Until the swap nothing changes for
the service but the cost of the mirror on its writes.
"""
import time

import psycopg2
from psycopg2 import errors

from . import partitions

BATCH = 20_000


def convert(owner_dsn, span, batch=BATCH, keep_old=False, echo=print):
    """Convert; returns the number of rows copied (None: already partitioned)."""
    conn = psycopg2.connect(owner_dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SET statement_timeout = 0; SET idle_in_transaction_session_timeout = 0")
        conn.commit()
        if partitions.partitioned(conn):
            echo("notifications is partitioned already")
            return None
        with conn.cursor() as cur:
            cur.execute("SELECT to_regclass('notifications_partitioned') IS NOT NULL")
            begun = cur.fetchone()[0]
            if not begun:
                cur.execute("SELECT history_conversion_begin(%s)", (span,))
        conn.commit()
        echo("resumed: the partitioned table and its mirror exist" if begun
             else "created the partitioned table; changes to notifications are mirrored into it")
        copied = _copy(conn, batch, echo)
        copied += _catch_up(conn, batch, echo)
        _swap(conn, echo)
        with conn.cursor() as cur:
            cur.execute("ANALYZE notifications")
            if not keep_old:
                cur.execute("DROP TABLE notifications_unpartitioned")
        conn.commit()
        echo("kept notifications_unpartitioned" if keep_old else "dropped the unpartitioned table")
        return copied
    finally:
        conn.close()


def _copy(conn, batch, echo):
    with conn.cursor() as cur:
        # rows above `top` came after the mirror: it wrote them
        cur.execute("SELECT min(seq), max(seq) FROM notifications")
        low, top = cur.fetchone()
    conn.commit()
    if low is None:
        return 0
    copied, started = 0, time.monotonic()
    for start in range(low, top + 1, batch):
        with conn.cursor() as cur:
            cur.execute("INSERT INTO notifications_partitioned SELECT * FROM (SELECT * FROM notifications"
                        " WHERE seq >= %s AND seq < %s FOR UPDATE SKIP LOCKED) s ON CONFLICT DO NOTHING",
                        (start, start + batch))
            copied += cur.rowcount
        conn.commit()
        if (start - low) // batch % 50 == 0:
            echo(f"copied up to seq {min(start + batch, top + 1) - 1} of {top}: {copied} rows,"
                 f" {copied / max(time.monotonic() - started, 1e-3):.0f}/s")
    echo(f"copied {copied} rows in {time.monotonic() - started:.1f} s")
    return copied


_MISSING = ("SELECT o.seq FROM notifications o WHERE NOT EXISTS"
            " (SELECT 1 FROM notifications_partitioned n WHERE n.seq = o.seq AND n.id = o.id)")


def _catch_up(conn, batch, echo, attempts=100):
    """Copy the rows the first pass skipped (they were locked) until none is missing."""
    copied = 0
    for _ in range(attempts):
        with conn.cursor() as cur:
            cur.execute(f"SELECT count(*) FROM ({_MISSING}) m")
            missing = cur.fetchone()[0]
            if not missing:
                conn.commit()
                return copied
            cur.execute("INSERT INTO notifications_partitioned SELECT * FROM (SELECT * FROM notifications"
                        f" WHERE seq IN ({_MISSING} LIMIT %s) FOR UPDATE SKIP LOCKED) s ON CONFLICT DO NOTHING",
                        (batch,))
            copied += cur.rowcount
        conn.commit()
        echo(f"caught up {copied} of {missing} rows skipped while they were being changed")
        time.sleep(0.1)
    raise RuntimeError("rows of notifications stayed locked through every catch-up pass; run it again")


def _swap(conn, echo, attempts=50):
    for attempt in range(attempts):
        try:
            with conn.cursor() as cur:
                cur.execute("SET LOCAL lock_timeout = '100ms'")
                started = time.monotonic()
                cur.execute("SELECT history_conversion_swap()")
            conn.commit()
            echo(f"swapped in {1000 * (time.monotonic() - started):.0f} ms: notifications is partitioned")
            return
        except errors.LockNotAvailable:
            conn.rollback()
            time.sleep(0.2)
    raise RuntimeError("notifications stayed busy through every attempt to swap; run it again")
