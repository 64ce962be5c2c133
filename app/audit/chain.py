"""Sealing audit rows into the chain, checking it, and `flask audit verify` / `anchor`.

Rows are appended unchained (app/audit/__init__.py explains why and what the
trade-off is); `seal` links them. Only rows whose transaction id is below the
oldest transaction of this database still in progress at the sealer's
snapshot (`audit_horizon()`, migrations_sql/0013) are taken: every
transaction still running, or not yet begun, has an id at or above it, so no
row can commit later with a place before a sealed one. Each pass appends the
rows it takes in (xid, id) order after the current head, one sealer at a time
(an advisory transaction lock), and `UNIQUE (chain)` / `UNIQUE (prev_hash)`
refuse a fork should two ever race. The service's role cannot UPDATE the table:
sealing goes through `audit_seal()`, which sets the place, links, HMAC and key
id of unsealed rows and nothing else.
"""
import sys

import click
import psycopg2.extras
from flask import current_app
from flask.cli import AppGroup

from .. import db
from . import COLUMNS, GENESIS, check_row, keyed_hash_of, keyring

SEAL_BATCH = 5000


def seal(conn, limit=SEAL_BATCH, wait=False, keys=None):
    """Seal up to `limit` finished rows in the caller's transaction; returns how many.

    Without `wait`, 0 when another sealer holds the lock (it is doing the work)."""
    key_id, secret = (keys or keyring()).current
    with conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s)" if wait else "SELECT pg_try_advisory_xact_lock(%s)",
                    (db.Locks.AUDIT_SEAL,))
        if not wait and not cur.fetchone()[0]:
            return 0
        cur.execute("SELECT chain, hash FROM audit_log WHERE chain IS NOT NULL ORDER BY chain DESC LIMIT 1")
        last = cur.fetchone()
    position, prev = last if last else (0, GENESIS)
    with db.cursor(conn) as cur:
        cur.execute(f"SELECT {COLUMNS} FROM audit_log WHERE hash IS NULL AND xid < (SELECT audit_horizon())"
                    " ORDER BY xid, id LIMIT %s", (limit,))
        rows = cur.fetchall()
    if not rows:
        return 0
    ids, chains, prevs, hashes = [], [], [], []
    for row in rows:
        position += 1
        digest = keyed_hash_of(row, position, prev, key_id, secret)
        ids.append(row["id"])
        chains.append(position)
        prevs.append(prev)
        hashes.append(digest)
        prev = digest
    with conn.cursor() as cur:
        cur.execute("SELECT audit_seal(%s::bigint[], %s::bigint[], %s::text[], %s::text[], %s::text[])",
                    (ids, chains, prevs, hashes, [key_id] * len(ids)))
    return len(rows)


def seal_all(conn, wait=False, keys=None):
    """Seal every finished row, a transaction per batch (for the worker and the CLI); returns how many."""
    total = 0
    while True:
        with db.transaction(conn):
            done = seal(conn, wait=wait, keys=keys)
        total += done
        if done < SEAL_BATCH:
            return total


def unsealed(conn):
    """How many rows are not in the chain yet (their transactions, or an older one, still open)."""
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM audit_log WHERE hash IS NULL")
        return cur.fetchone()[0]


class Finding(Exception):
    """The first place where the chain does not hold: its position (None before the first row)."""

    def __init__(self, position, row_id, why):
        super().__init__(why)
        self.position, self.row_id, self.why = position, row_id, why

    def __str__(self):
        where = f"position {self.position}" + (f" (row {self.row_id})" if self.row_id is not None else "")
        return f"{where}: {self.why}"


def walk(rows, keys, anchor=None):
    """Check rows in chain order from the start; returns (rows checked, (position, hash) of the head).
    Raises Finding at the first bad row, or when the chain is shorter than `anchor` or differs at
    the anchored position."""
    expected, previous_id, position, keyed_seen, head = GENESIS, None, 0, False, (0, GENESIS)
    for row in rows:
        position += 1
        if row["chain"] != position:
            raise Finding(position, row["id"], f"the row here has position {row['chain']}: the rows from"
                          f" position {position} to {row['chain'] - 1} were deleted")
        problem = check_row(row, expected, previous_id, keys, keyed_seen)
        if problem:
            raise Finding(position, row["id"], problem)
        if anchor and position == anchor["position"] and row["hash"] != anchor["hash"]:
            raise Finding(position, row["id"], f"the anchor of {anchor.get('at')} records hash {anchor['hash']}"
                          " here: the chain from this position on was rewritten")
        expected, previous_id, keyed_seen = row["hash"], row["id"], keyed_seen or row["key_id"] is not None
        head = (position, row["hash"])
    if anchor and head[0] < anchor["position"]:
        raise Finding(head[0] + 1, None, f"the chain ends at position {head[0]} but the anchor of"
                      f" {anchor.get('at')} records position {anchor['position']}: the rows from position"
                      f" {head[0] + 1} on were deleted")
    return position, head


def verify(conn, keys=None, anchor=None, batch=5000):
    """Walk the sealed chain (a server-side cursor): (rows checked, head); raises Finding."""
    keys = keys or keyring()
    with conn.cursor(name="audit_verify", cursor_factory=psycopg2.extras.RealDictCursor) as cur:
        cur.itersize = batch
        cur.execute(f"SELECT {COLUMNS} FROM audit_log WHERE chain IS NOT NULL ORDER BY chain")
        return walk(cur, keys, anchor)


def verify_rows(rows, keys):
    """Check rows taken out of the chain one by one (an exported bundle): each row's HMAC binds its
    content, place and predecessor's hash, so it shows the key's holder sealed exactly that there.
    Returns a list of Findings (empty when every row holds)."""
    found = []
    for row in rows:
        if row.get("hash") is None:
            found.append(Finding(None, row.get("id"), "it is not sealed"))
            continue
        problem = check_row(row, row["prev_hash"], None, keys, keyed_seen=True)
        if problem:
            found.append(Finding(row["chain"], row["id"], problem))
    return found


def parse_head(value):
    """`--head POSITION:HASH` as an anchor."""
    position, sep, digest = (value or "").partition(":")
    if not sep or not position.isdigit() or len(digest) != 64:
        raise click.BadParameter("expected POSITION:HASH, e.g. 1042:3f5a... (64 hex digits)")
    return {"position": int(position), "hash": digest.lower(), "at": "--head"}


# ------------------------------------------------------------------------------ `flask audit`

group = AppGroup("audit", help="Check the tamper-evident audit log.")


@group.command("verify")
@click.option("--head", "expected_head", default=None, metavar="POSITION:HASH",
              help="require the chain to hold this head (noted from an earlier run or an anchor)")
@click.option("--anchor-file", default=None, metavar="PATH",
              help="check against the newest anchor of this file (default: AUDIT_ANCHOR_PATH)")
def verify_command(expected_head, anchor_file):
    """Seal what can be sealed, check every row's HMAC and link and the latest anchor; exit 1 naming
    the first bad position."""
    from . import anchor as anchors
    anchor = parse_head(expected_head) if expected_head else None
    anchor_file = anchor_file or current_app.config["AUDIT_ANCHOR_PATH"]
    if anchor is None and anchor_file:
        try:
            anchor = anchors.latest(anchor_file)
        except (OSError, anchors.AnchorError) as exc:
            click.echo(f"audit log NOT VERIFIED: cannot read the anchors ({exc})", err=True)
            sys.exit(1)
    with db.connection() as conn, db.without_timeouts(conn):   # the whole chain, however long
        seal_all(conn, wait=True)
        try:
            checked, head = verify(conn, anchor=anchor)
            problem = None
        except Finding as exc:
            problem = exc
        waiting = unsealed(conn)
        conn.commit()
    if problem is not None:
        click.echo(f"audit log BROKEN at {problem}", err=True)
        sys.exit(1)
    tail = (f"; {waiting} newer rows not sealed yet (a transaction that began before they committed is"
            " still open; run again once it ends)") if waiting else ""
    against = (f"; matches the anchor at position {anchor['position']} ({anchor.get('at')})" if anchor
               else "; no anchor to check against (set AUDIT_ANCHOR_PATH or pass --head)")
    if head[0] == 0:
        click.echo(f"audit log intact: 0 rows{tail}{against}")
    else:
        click.echo(f"audit log intact: {checked} rows; head position {head[0]} hash {head[1]}{tail}{against}")


@group.command("anchor")
def anchor_command():
    """Write the chain's head to AUDIT_ANCHOR_PATH / AUDIT_ANCHOR_URL (the worker does every
    AUDIT_ANCHOR_SECONDS)."""
    from . import anchor as anchors
    try:
        head = anchors.anchor_now(current_app)
    except anchors.AnchorError as exc:
        click.echo(f"audit anchor failed: {exc}", err=True)
        sys.exit(1)
    click.echo(f"anchored position {head['position']} hash {head['hash']} at {head['at']}")


def init_app(app):
    app.cli.add_command(group)
