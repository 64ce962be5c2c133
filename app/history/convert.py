"""The online conversion of the history's unpartitioned tables into partitioned ones, while the
service runs (`flask history partition`; docs/history.md).

A database that had rows when migrations 0026 and 0028 ran keeps its tables; this moves them
over, `notifications` first (the others follow its ranges), then `deliveries` and
`delivery_attempts`, each the same way:

0. (deliveries, attempts) the rows written before 0027 get their notification's `seq`, in batches;
1. begin (`history_convert_begin`): the empty partitioned twin, its partitions, and statement
   triggers on the table that mirror every later change (insert, update, delete) into it;
2. copy, a range of the key a transaction, each batch's rows locked `FOR UPDATE SKIP LOCKED`: a
   row a request is changing right now is skipped (its change is mirrored when it commits), a
   row the copy holds makes the request wait for that one batch; so neither waits for the other
   in turn, and a request never deadlocks with the copy (each of the service's transactions
   changes a table in one statement, whose mirror runs when all its rows are locked);
3. catch up on what was skipped, until no row of the old table is missing from the new one;
4. swap (`history_convert_swap`), one short transaction under ACCESS EXCLUSIVE: the twin takes
   the name, index names, triggers, sequences and grants; requests wait for it (milliseconds)
   and then run against the partitioned table, prepared plans re-planned;
5. drop the old table (or keep it with `--keep-old`, to compare).

It runs as the schema's owner (MIGRATION_DATABASE_URL). Interrupted, it can be run again: a begun
table is not begun again, and the copy skips rows already there. Until a swap nothing changes
for the service but the cost of the mirror on its writes.
"""
import time

import psycopg2
from psycopg2 import errors, sql

BATCH = 20_000

# Rows written before 0027 (NULL notification_seq), filled from their notification or delivery.
_BACKFILL = {
    "deliveries": ("UPDATE deliveries d SET notification_seq = n.seq FROM notifications n"
                   " WHERE n.id = d.notification_id AND d.id IN (SELECT id FROM deliveries"
                   " WHERE notification_seq IS NULL LIMIT %s)"),
    "delivery_attempts": ("UPDATE delivery_attempts a SET notification_seq = d.notification_seq FROM deliveries d"
                          " WHERE d.id = a.delivery_id AND d.notification_seq IS NOT NULL AND a.id IN"
                          " (SELECT id FROM delivery_attempts WHERE notification_seq IS NULL LIMIT %s)"),
}


def convert(owner_dsn, span, batch=BATCH, keep_old=False, echo=print):
    """Convert every table of the history not partitioned yet; returns {table: rows copied}."""
    conn = psycopg2.connect(owner_dsn)
    copied = {}
    try:
        with conn.cursor() as cur:
            cur.execute("SET statement_timeout = 0; SET idle_in_transaction_session_timeout = 0")
            cur.execute("SELECT tbl, key, history_is_partitioned(tbl) FROM history_tables()")
            tables = cur.fetchall()
        conn.commit()
        for table, key, done in tables:
            if done:
                echo(f"{table} is partitioned already")
                continue
            copied[table] = _convert_table(conn, table, key, span, batch, keep_old, echo)
        return copied
    finally:
        conn.close()


def _convert_table(conn, table, key, span, batch, keep_old, echo):
    names = {"table": sql.Identifier(table), "twin": sql.Identifier(table + "_partitioned"),
             "old": sql.Identifier(table + "_unpartitioned"), "key": sql.Identifier(key)}
    if table in _BACKFILL:
        _backfill(conn, table, batch, echo)
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", (table + "_partitioned",))
        begun = cur.fetchone()[0]
        if not begun:
            cur.execute("SELECT history_convert_begin(%s, %s, %s)", (table, key, span))
    conn.commit()
    echo(f"{table}: " + ("resumed: the partitioned table and its mirror exist" if begun
                         else "created the partitioned table; changes are mirrored into it"))
    copied = _copy(conn, names, batch, echo) + _catch_up(conn, names, batch, echo)
    _swap(conn, table, echo)
    with conn.cursor() as cur:
        cur.execute(sql.SQL("ANALYZE {table}").format(**names))
        if not keep_old:
            cur.execute(sql.SQL("DROP TABLE {old}").format(**names))
    conn.commit()
    echo(f"{table}: " + ("kept the unpartitioned table" if keep_old else "dropped the unpartitioned table"))
    return copied


def _backfill(conn, table, batch, echo):
    """Fill the key of the rows written before 0027; rows whose notification is gone (none should
    be: their deletion took them) cannot be placed in a partition and stop the conversion."""
    filled = 0
    while True:
        with conn.cursor() as cur:
            cur.execute(_BACKFILL[table], (batch,))
            filled += cur.rowcount
            done = cur.rowcount < batch
        conn.commit()
        if done:
            break
    with conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT count(*) FROM {} WHERE notification_seq IS NULL").format(sql.Identifier(table)))
        left = cur.fetchone()[0]
    conn.commit()
    echo(f"{table}: the notification's seq filled in on {filled} older rows")
    if left:
        raise RuntimeError(f"{left} rows of {table} belong to no notification (or delivery) any more: delete them,"
                           " then run this again")


def _copy(conn, names, batch, echo):
    with conn.cursor() as cur:
        # rows above `top` came after the mirror: it wrote them
        cur.execute(sql.SQL("SELECT min({key}), max({key}) FROM {table}").format(**names))
        low, top = cur.fetchone()
    conn.commit()
    if low is None:
        return 0
    statement = sql.SQL("INSERT INTO {twin} SELECT * FROM (SELECT * FROM {table} WHERE {key} >= %s AND {key} < %s"
                        " FOR UPDATE SKIP LOCKED) s ON CONFLICT DO NOTHING").format(**names)
    copied, started = 0, time.monotonic()
    for number, start in enumerate(range(low, top + 1, batch)):
        with conn.cursor() as cur:
            cur.execute(statement, (start, start + batch))
            copied += cur.rowcount
        conn.commit()
        if number % 50 == 0:
            echo(f"{names['table'].string}: copied up to {min(start + batch, top + 1) - 1} of {top}: {copied} rows,"
                 f" {copied / max(time.monotonic() - started, 1e-3):.0f}/s")
    echo(f"{names['table'].string}: copied {copied} rows in {time.monotonic() - started:.1f} s")
    return copied


def _catch_up(conn, names, batch, echo, attempts=100):
    """Copy the rows the first pass skipped (they were locked) until none is missing."""
    missing_rows = sql.SQL("SELECT o.id FROM {table} o WHERE NOT EXISTS (SELECT 1 FROM {twin} n"
                           " WHERE n.{key} = o.{key} AND n.id = o.id)").format(**names)
    copy = sql.SQL("INSERT INTO {twin} SELECT * FROM (SELECT * FROM {table} WHERE id IN ({missing} LIMIT %s)"
                   " FOR UPDATE SKIP LOCKED) s ON CONFLICT DO NOTHING").format(missing=missing_rows, **names)
    copied = 0
    for _ in range(attempts):
        with conn.cursor() as cur:
            cur.execute(sql.SQL("SELECT count(*) FROM ({}) m").format(missing_rows))
            missing = cur.fetchone()[0]
            if not missing:
                conn.commit()
                return copied
            cur.execute(copy, (batch,))
            copied += cur.rowcount
        conn.commit()
        echo(f"{names['table'].string}: caught up {copied} of {missing} rows skipped while they were being changed")
        time.sleep(0.1)
    raise RuntimeError(f"rows of {names['table'].string} stayed locked through every catch-up pass; run it again")


def _swap(conn, table, echo, attempts=50):
    for _ in range(attempts):
        try:
            with conn.cursor() as cur:
                cur.execute("SET LOCAL lock_timeout = '100ms'")
                started = time.monotonic()
                cur.execute("SELECT history_convert_swap(%s)", (table,))
            conn.commit()
            echo(f"{table}: swapped in {1000 * (time.monotonic() - started):.0f} ms: it is partitioned")
            return
        except errors.LockNotAvailable:
            conn.rollback()
            time.sleep(0.2)
    raise RuntimeError(f"{table} stayed busy through every attempt to swap; run it again")
