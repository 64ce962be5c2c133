"""The tamper-evident audit log: who changed what, when, from where.

Every state-changing operation calls `record(conn, action, target, change)`
inside the transaction that makes the change, so the row exists exactly when
the change does. Rows form one hash chain:

    hash = sha256(prev_hash | id | at | body)      ("|"-joined text, hex digest)

where `at` is `YYYY-MM-DDTHH:MM:SS.ffffffZ` and `body` the canonical JSON
(sorted keys, no spaces, ASCII) of the other columns: actor, request id, client
IP, action, target, change. The first row's prev_hash is 64 zeros.

An append is one round trip: `pg_advisory_xact_lock` and then, as a statement
of its own (so its snapshot sees the newest committed row), an INSERT that
reads the last hash, takes the next id and the clock, and hashes in
PostgreSQL. Concurrent writers queue on the lock instead of forking the chain
(and `prev_hash` is UNIQUE, so a fork could not commit anyway). The lock is
held until the caller commits: call `record` last in the transaction, after
every other lock it takes, to keep that short and deadlock-free.

`verify` (the `flask audit verify` command) walks the chain and names the
first row whose content no longer matches its hash (edited) or whose
prev_hash is not the previous row's hash (a row before it deleted, or edited
with its hash recomputed). Deleting the newest rows cannot be seen from the
chain alone: the command prints the head hash for the operator to keep
elsewhere, and `--head` checks that a hash noted earlier is still in the chain.

The log never holds secrets (API keys appear as their key id) nor personal
data that might have to be erased later (contact changes name the fields,
not the addresses): its rows can never be changed.
"""
import datetime
import getpass
import hashlib
import json
import os
import sys
import uuid

import click
import psycopg2.extras
from flask import g, has_request_context, request
from flask.cli import AppGroup

from . import db

LOCK = 7_245_003          # pg_advisory_xact_lock key serialising appends
GENESIS = "0" * 64
ACTOR_TYPES = ("user", "service", "operator", "system")
BODY = ("actor_type", "actor_id", "request_id", "client_ip", "action", "target_type", "target_id", "change")
COLUMNS = "id, at, " + ", ".join(BODY) + ", prev_hash, hash"
# The same text as `_time_text`, in SQL.
_AT_TEXT = """to_char(r.at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""
# Two statements in one round trip; each gets its own snapshot (READ COMMITTED), the second after the lock.
_APPEND = (
    "SELECT pg_advisory_xact_lock(%(lock)s);"
    f" INSERT INTO audit_log ({COLUMNS})"
    " SELECT r.id, r.at, %(actor_type)s, %(actor_id)s, %(request_id)s, %(client_ip)s, %(action)s, %(target_type)s,"
    " %(target_id)s, %(change)s::jsonb, r.prev,"
    f" encode(sha256(convert_to(r.prev || '|' || r.id || '|' || {_AT_TEXT} || '|' || %(body)s, 'UTF8')), 'hex')"
    " FROM (SELECT nextval(pg_get_serial_sequence('audit_log', 'id')) AS id, clock_timestamp() AS at,"
    " coalesce((SELECT hash FROM audit_log ORDER BY id DESC LIMIT 1), %(genesis)s) AS prev) r"
    " RETURNING id")


# ------------------------------------------------------------------------------ content and hashing

def _plain(value):
    """JSON for values the service passes around (UUIDs, times, sets)."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime.datetime):
        return _time_text(value)
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, (set, frozenset, tuple)):
        return sorted(value, key=str) if isinstance(value, (set, frozenset)) else list(value)
    raise TypeError(f"audit: cannot record {type(value).__name__}")


def _time_text(moment):
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical_body(row):
    """The row's columns other than id, time and hashes, as the exact JSON text that is hashed."""
    return json.dumps({name: row[name] for name in BODY}, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=True, default=_plain)


def row_hash(row, prev_hash=None):
    """What the row's hash must be (after `prev_hash`, by default its own)."""
    prev_hash = row["prev_hash"] if prev_hash is None else prev_hash
    text = f"{prev_hash}|{row['id']}|{_time_text(row['at'])}|{canonical_body(row)}"
    return hashlib.sha256(text.encode()).hexdigest()


# ------------------------------------------------------------------------------ actors

def request_actor():
    """The authenticated caller of this request: ('user', id) or ('service', key id)."""
    if not has_request_context():
        return None
    user = g.get("user")
    if user is not None:
        return "user", str(user.id)
    service = g.get("service")
    if service is not None:
        return "service", service
    return None


def operator():
    """The person running an operator command (their OS login)."""
    try:
        name = getpass.getuser()
    except Exception:  # no login name in a bare container
        name = os.environ.get("USER") or "unknown"
    return "operator", name


SYSTEM_RETENTION = ("system", "retention")


# ------------------------------------------------------------------------------ writing

def record(conn, action, target, change, actor=None):
    """Append one row in the caller's transaction; returns its id.

    target: (type, id or None), e.g. ("notification", <uuid>); change: JSON-able dict
    of what was done. The actor defaults to the request's authenticated caller.
    """
    actor = actor or request_actor()
    if actor is None or actor[0] not in ACTOR_TYPES:
        raise RuntimeError(f"audit: no valid actor for {action}")
    # outside a request (CLI, jobs) there is none: a job's context may still hold an earlier job's id
    request_id, client_ip = (g.get("request_id"), request.remote_addr) if has_request_context() else (None, None)
    target_type, target_id = target
    # Round-trip through JSON once, so what is hashed now is what `verify` reads back from jsonb.
    change = json.loads(json.dumps(change, default=_plain))
    row = {"actor_type": actor[0], "actor_id": str(actor[1]), "request_id": request_id, "client_ip": client_ip,
           "action": action, "target_type": target_type,
           "target_id": None if target_id is None else str(target_id), "change": change}
    with conn.cursor() as cur:
        cur.execute(_APPEND, dict(row, change=json.dumps(change), body=canonical_body(row), lock=LOCK,
                                  genesis=GENESIS))
        return cur.fetchone()[0]


# ------------------------------------------------------------------------------ reading and checking

def verify(conn, batch=5000):
    """Walk the whole chain: (rows checked, None) when intact, else (rows checked, (row id, why))."""
    expected, previous_id, checked = GENESIS, None, 0
    with conn.cursor(name="audit_verify", cursor_factory=psycopg2.extras.RealDictCursor) as cur:
        cur.itersize = batch
        cur.execute(f"SELECT {COLUMNS} FROM audit_log ORDER BY id")
        for row in cur:
            problem = check_row(row, expected, previous_id)
            if problem:
                return checked, (row["id"], problem)
            expected, previous_id = row["hash"], row["id"]
            checked += 1
    return checked, None


def check_row(row, expected_prev, previous_id):
    """Why this row breaks the chain after the row (`previous_id`, hash `expected_prev`), or None."""
    if row["prev_hash"] != expected_prev:
        after = f"row {previous_id}" if previous_id is not None else "the start of the log"
        return (f"its prev_hash does not match the hash of {after}: a row between them was deleted,"
                f" or {after} was changed")
    if row_hash(row) != row["hash"]:
        return "its content does not match its hash: the row was edited"
    return None


def head(conn):
    """(id, hash) of the newest row, or None."""
    with conn.cursor() as cur:
        cur.execute("SELECT id, hash FROM audit_log ORDER BY id DESC LIMIT 1")
        return cur.fetchone()


def _split(value):
    """'type:id' -> (type, id); 'id' -> (None, id)."""
    kind, sep, ident = value.partition(":")
    return (kind, ident) if sep else (None, value)


def search(conn, *, actor=None, action=None, target=None, since=None, until=None, limit=100, offset=0):
    """One page of rows, newest first, each with the hash of the row before it (for checking)."""
    where, params = [], {}
    if actor:
        kind, ident = _split(actor)
        where.append("actor_id = %(actor_id)s")
        params["actor_id"] = ident
        if kind:
            where.append("actor_type = %(actor_type)s")
            params["actor_type"] = kind
    if action:
        where.append("action = %(action)s")
        params["action"] = action
    if target:
        kind, ident = _split(target)
        where.append("target_id = %(target_id)s")
        params["target_id"] = ident
        if kind:
            where.append("target_type = %(target_type)s")
            params["target_type"] = kind
    if since is not None:
        where.append("at >= %(since)s")
        params["since"] = since
    if until is not None:
        where.append("at < %(until)s")
        params["until"] = until
    clause = ("WHERE " + " AND ".join(where)) if where else ""
    with db.cursor(conn) as cur:
        # The predecessor lookup runs for the page's rows only (outer query, after LIMIT).
        cur.execute(f"SELECT page.*, (SELECT p.hash FROM audit_log p WHERE p.id < page.id ORDER BY p.id DESC"
                    f" LIMIT 1) AS predecessor_hash FROM (SELECT {COLUMNS} FROM audit_log {clause}"
                    f" ORDER BY id DESC LIMIT %(limit)s OFFSET %(offset)s) page ORDER BY page.id DESC",
                    dict(params, limit=limit, offset=offset))
        return cur.fetchall()


def public(row):
    """A row as the API shows it, with `verified`: its hash and its link to the row before it hold."""
    verified = check_row(row, row["predecessor_hash"] or GENESIS, None) is None
    return {"id": row["id"], "at": _time_text(row["at"]), "actor_type": row["actor_type"],
            "actor_id": row["actor_id"], "request_id": row["request_id"], "client_ip": row["client_ip"],
            "action": row["action"], "target_type": row["target_type"], "target_id": row["target_id"],
            "change": row["change"], "prev_hash": row["prev_hash"], "hash": row["hash"], "verified": verified}


# ------------------------------------------------------------------------------ `flask audit`

group = AppGroup("audit", help="Check the tamper-evident audit log.")


@group.command("verify")
@click.option("--head", "expected_head", default=None, metavar="HASH",
              help="also require this hash (noted from an earlier run) to still be in the chain")
def verify_command(expected_head):
    """Recompute the hash chain; exit 1 naming the first bad row."""
    with db.connection() as conn:
        checked, problem = verify(conn)
        newest = head(conn)
        missing_head = False
        if expected_head and problem is None:
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM audit_log WHERE hash = %s", (expected_head,))
                missing_head = cur.fetchone() is None
    if problem is not None:
        row_id, why = problem
        click.echo(f"audit log BROKEN at row {row_id}: {why} ({checked} rows before it are intact)", err=True)
        sys.exit(1)
    if missing_head:
        click.echo(f"audit log BROKEN: hash {expected_head} is no longer in the chain"
                   " (rows were deleted from its end)", err=True)
        sys.exit(1)
    if newest is None:
        click.echo("audit log intact: 0 rows")
    else:
        click.echo(f"audit log intact: {checked} rows; head row {newest[0]} hash {newest[1]}")


def init_app(app):
    app.cli.add_command(group)
