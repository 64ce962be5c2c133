"""Sealing audit rows into the hash chain, checking the chain, and `flask audit verify`.

Rows are appended unchained (app/audit/__init__.py explains why and what the
trade-off is); `seal` links them. Only rows whose transaction id is below the
oldest transaction of this database still in progress at the sealer's
snapshot (`_HORIZON`; its xmax when none is) are taken: every transaction
still running, or not yet begun, has an id at or above it, so no row can
commit later with a place before a sealed one. Each pass appends the rows it takes in
(xid, id) order after the current head, one sealer at a time (an advisory
transaction lock), and `UNIQUE (chain)` / `UNIQUE (prev_hash)` refuse a fork
should two ever race. Sealing is the one UPDATE the table's trigger allows
(migrations_sql/0010).
"""
import sys

import click
import psycopg2.extras
from flask.cli import AppGroup

from .. import db
from . import COLUMNS, GENESIS, check_row, row_hash

SEAL_BATCH = 5000
# The oldest transaction that was in progress when this statement's snapshot was taken (so its rows
# are not visible to it yet), or the snapshot's xmax when there was none. The server's xmin would do,
# but transaction ids are shared by every database of the server, so a long transaction in another
# database would hold our sealing back: in-progress ids that pg_stat_activity shows running in
# another database are left out. Anything not known to be another database's counts, which can only
# make the horizon earlier, never later (an id pg_stat_activity does not show to this role, a
# prepared transaction).
_HORIZON = ("SELECT coalesce(min(x), pg_snapshot_xmax(pg_current_snapshot()))"
            " FROM pg_snapshot_xip(pg_current_snapshot()) AS x WHERE xid(x) NOT IN"
            " (SELECT backend_xid FROM pg_stat_activity WHERE backend_xid IS NOT NULL"
            " AND datname IS DISTINCT FROM current_database())")


def seal(conn, limit=SEAL_BATCH, wait=False):
    """Seal up to `limit` finished rows in the caller's transaction; returns how many.

    Without `wait`, 0 when another sealer holds the lock (it is doing the work)."""
    with conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s)" if wait else "SELECT pg_try_advisory_xact_lock(%s)",
                    (db.Locks.AUDIT_SEAL,))
        if not wait and not cur.fetchone()[0]:
            return 0
        cur.execute("SELECT chain, hash FROM audit_log WHERE chain IS NOT NULL ORDER BY chain DESC LIMIT 1")
        last = cur.fetchone()
    position, prev = last if last else (0, GENESIS)
    with db.cursor(conn) as cur:
        cur.execute(f"SELECT {COLUMNS} FROM audit_log WHERE hash IS NULL AND xid < ({_HORIZON})"
                    " ORDER BY xid, id LIMIT %s", (limit,))
        rows = cur.fetchall()
    if not rows:
        return 0
    ids, chains, prevs, hashes = [], [], [], []
    for row in rows:
        position += 1
        digest = row_hash(row, prev)
        ids.append(row["id"])
        chains.append(position)
        prevs.append(prev)
        hashes.append(digest)
        prev = digest
    with conn.cursor() as cur:
        cur.execute("UPDATE audit_log a SET chain = s.chain, prev_hash = s.prev, hash = s.hash"
                    " FROM unnest(%s::bigint[], %s::bigint[], %s::text[], %s::text[]) AS s(id, chain, prev, hash)"
                    " WHERE a.id = s.id", (ids, chains, prevs, hashes))
    return len(rows)


def seal_all(conn, wait=False):
    """Seal every finished row, a transaction per batch (for the worker and the CLI); returns how many."""
    total = 0
    while True:
        with db.transaction(conn):
            done = seal(conn, wait=wait)
        total += done
        if done < SEAL_BATCH:
            return total


def unsealed(conn):
    """How many rows are not in the chain yet (their transactions, or an older one, still open)."""
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM audit_log WHERE hash IS NULL")
        return cur.fetchone()[0]


def verify(conn, batch=5000):
    """Walk the sealed chain: (rows checked, None) when intact, else (rows checked, (row id, why))."""
    expected, previous_id, checked = GENESIS, None, 0
    with conn.cursor(name="audit_verify", cursor_factory=psycopg2.extras.RealDictCursor) as cur:
        cur.itersize = batch
        cur.execute(f"SELECT {COLUMNS} FROM audit_log WHERE chain IS NOT NULL ORDER BY chain")
        for row in cur:
            problem = check_row(row, expected, previous_id)
            if problem:
                return checked, (row["id"], problem)
            expected, previous_id = row["hash"], row["id"]
            checked += 1
    return checked, None


def head(conn):
    """(id, hash) of the newest sealed row, or None."""
    with conn.cursor() as cur:
        cur.execute("SELECT id, hash FROM audit_log WHERE chain IS NOT NULL ORDER BY chain DESC LIMIT 1")
        return cur.fetchone()


# ------------------------------------------------------------------------------ `flask audit`

group = AppGroup("audit", help="Check the tamper-evident audit log.")


@group.command("verify")
@click.option("--head", "expected_head", default=None, metavar="HASH",
              help="also require this hash (noted from an earlier run) to still be in the chain")
def verify_command(expected_head):
    """Seal what can be sealed, recompute the hash chain; exit 1 naming the first bad row."""
    with db.connection() as conn, db.without_timeouts(conn):   # the whole chain, however long
        seal_all(conn, wait=True)
        checked, problem = verify(conn)
        newest = head(conn)
        waiting = unsealed(conn)
        missing_head = False
        if expected_head and problem is None:
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM audit_log WHERE hash = %s", (expected_head,))
                missing_head = cur.fetchone() is None
        conn.commit()
    if problem is not None:
        row_id, why = problem
        click.echo(f"audit log BROKEN at row {row_id}: {why} ({checked} rows before it are intact)", err=True)
        sys.exit(1)
    if missing_head:
        click.echo(f"audit log BROKEN: hash {expected_head} is no longer in the chain"
                   " (rows were deleted from its end)", err=True)
        sys.exit(1)
    tail = (f"; {waiting} newer rows not sealed yet (a transaction that began before they committed is"
            " still open; run again once it ends)") if waiting else ""
    if newest is None:
        click.echo(f"audit log intact: 0 rows{tail}")
    else:
        click.echo(f"audit log intact: {checked} rows; head row {newest[0]} hash {newest[1]}{tail}")


def init_app(app):
    app.cli.add_command(group)
