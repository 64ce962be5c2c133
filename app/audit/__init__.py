"""The tamper-evident audit log: who changed what, when, from where.

Every state-changing operation calls `record(conn, action, target, change)`
inside the transaction that makes the change, so the row exists exactly when
the change does. Rows form one hash chain, in the order of `chain`:

    hash = sha256(prev_hash | id | at | body)      ("|"-joined text, hex digest)

where `at` is `YYYY-MM-DDTHH:MM:SS.ffffffZ` and `body` the canonical JSON
(sorted keys, no spaces, ASCII) of the other columns: actor, request id, client
(its address as a keyed hash, `client_hash`), action, target, change. The first row's prev_hash is 64 zeros.

Appending and sealing are two steps, so that audited writes never wait for
each other. An append is one plain INSERT, with the writing transaction's id
(`xid`) and no hash: nothing is locked, so a thousand triggers a second
commit side by side. (Chaining at append time needed a lock held from the
append until the commit, which serialised every audited commit of the
service: about 320 a second with 16 writers.) The **sealer**
(app/audit/chain.py: run by every worker every `relay.interval_seconds`, and
by `flask audit verify`) then links rows into the chain, one sealer at a
time. It takes only rows whose transaction id is below the oldest
transaction of this database still in progress: every transaction that could
still commit a row is at or above it, so no row can become visible later
with a place before a sealed one, and each pass appends the finished rows in
(xid, id) order after the current head. Rows of transactions that rolled
back never become visible and are never sealed.

The trade-off: a row is tamper-evident only once sealed, normally within a
couple of seconds. Until then someone with the table owner's rights could
change or delete it unseen; and a write transaction left open in this
database holds back the sealing of every row that committed after it began
(the sealer waits, it never skips). `flask audit verify` seals what it can,
then reports the rows still unsealed; `GET /audit` shows them with
`sealed: false`.

The chain is checked by `chain.verify`, row by row with `check_row`:
the first row whose content no longer matches its hash (edited) or whose
prev_hash is not the previous row's hash (a row before it deleted, or edited
with its hash recomputed) is named. Deleting the newest rows cannot be seen
from the chain alone: the command prints the head hash for the operator to
keep elsewhere, and `--head` checks that a hash noted earlier is still in the
chain.

The log never holds secrets (API keys appear as their key id) nor personal
data that might have to be erased later (contact changes name the fields,
not the addresses; a direct push records how many users and a keyed hash of
their ids, `push_change`; the client's address is a keyed hash, so requests
from one address can still be grouped and an address an investigator names
can be checked with `client_hash(address)`): its rows can never be changed
(sealing, which fills in a row's place and hashes once, is the one UPDATE the
table allows). Rows written before these hashes keep what they recorded.
"""
import datetime
import getpass
import hashlib
import json
import os
import uuid

import orjson
from flask import g, has_request_context, request

from .. import db
from ..security.keyed import keyed_hash

GENESIS = "0" * 64
ACTOR_TYPES = ("user", "service", "operator", "system")
BODY = ("actor_type", "actor_id", "request_id", "client_ip", "action", "target_type", "target_id", "change")
COLUMNS = "id, at, " + ", ".join(BODY) + ", prev_hash, hash"
# One INSERT, no lock: the row is chained later by the sealer (app/audit/chain.py); `xid` defaults to
# pg_current_xact_id(), the transaction that makes the change.
_APPEND = (f"INSERT INTO audit_log (at, {', '.join(BODY)}) VALUES (clock_timestamp(), "
           + ", ".join(f"%({name})s" for name in BODY[:-1]) + ", %(change)s::jsonb) RETURNING id")


# ------------------------------------------------------------------------------ content and hashing

# orjson (a large change, such as an operator retry's id list, is serialised fast) with json.dumps's output:
# times through _plain
_ORJSON = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_NON_STR_KEYS


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


# ------------------------------------------------------------------------------ personal data kept out

def client_hash(address):
    """What a row records of the client's address: a keyed hash (the same address, the same value)."""
    return keyed_hash("audit-client-ip", address) if address else None


def user_ids_hash(user_ids):
    """A keyed hash of a list of user ids, the same whatever their order or case: it shows which
    list a push went to for whoever holds the list (and SECRET_KEY), and to nobody else."""
    canonical = ",".join(sorted({str(u).lower() for u in user_ids}))
    return keyed_hash("audit-user-ids", canonical, 64)


def push_change(group, event, customer_id, user_ids):
    """A direct push's `change`: what was pushed and to how many, not to whom."""
    return {"type": group, "event": event, "customer_id": customer_id, "users": len(user_ids),
            "user_ids_hash": user_ids_hash(user_ids)}


# ------------------------------------------------------------------------------ writing

def record(conn, action, target, change, actor=None):
    """Append one row in the caller's transaction; returns its id.

    target: (type, id or None), e.g. ("notification", <uuid>); change: JSON-able dict
    of what was done. The actor defaults to the request's authenticated caller.
    """
    sql, params = append_statement(action, target, change, actor)
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchone()[0]


def append_statement(action, target, change, actor=None):
    """`record`'s INSERT as (sql, params), for a caller that sends it with other statements in one
    round trip (the trigger's accept path)."""
    actor = actor or request_actor()
    if actor is None or actor[0] not in ACTOR_TYPES:
        raise RuntimeError(f"audit: no valid actor for {action}")
    # outside a request (CLI, jobs) there is none: a job's context may still hold an earlier job's id
    request_id, client_ip = ((g.get("request_id"), client_hash(request.remote_addr)) if has_request_context()
                             else (None, None))
    target_type, target_id = target
    return _APPEND, {"actor_type": actor[0], "actor_id": str(actor[1]), "request_id": request_id,
                     "client_ip": client_ip, "action": action, "target_type": target_type,
                     "target_id": None if target_id is None else str(target_id),
                     "change": orjson.dumps(change, default=_plain, option=_ORJSON).decode()}


# ------------------------------------------------------------------------------ reading

def _split(value):
    """'type:id' -> (type, id); 'id' -> (None, id)."""
    kind, sep, ident = value.partition(":")
    return (kind, ident) if sep else (None, value)


_RANGE = {"since": "at >= %(since)s", "until": "at < %(until)s"}


def _filters(actor, action, target, since, until):
    """(conditions, parameters) of a search; `actor` and `target` are `<type>:<id>` or `<id>`."""
    params = {"action": action or None, "since": since, "until": until}
    for name, value in (("actor", actor), ("target", target)):
        kind, ident = _split(value) if value else (None, None)
        params[f"{name}_type"], params[f"{name}_id"] = kind or None, ident
    where = [_RANGE.get(name, f"{name} = %({name})s") for name, value in params.items() if value is not None]
    return where, params


def search(conn, *, actor=None, action=None, target=None, since=None, until=None, limit=100, offset=0):
    """One page of rows, newest first, each with the hash of the row before it (for checking)."""
    where, params = _filters(actor, action, target, since, until)
    clause = ("WHERE " + " AND ".join(where)) if where else ""
    with db.cursor(conn) as cur:
        # The predecessor lookup runs for the page's rows only (outer query, after LIMIT).
        cur.execute(f"SELECT page.*, (SELECT p.hash FROM audit_log p WHERE p.chain < page.chain"
                    f" ORDER BY p.chain DESC LIMIT 1) AS predecessor_hash FROM (SELECT {COLUMNS}, chain FROM audit_log {clause}"
                    f" ORDER BY id DESC LIMIT %(limit)s OFFSET %(offset)s) page ORDER BY page.id DESC",
                    dict(params, limit=limit, offset=offset))
        return cur.fetchall()


def check_row(row, expected_prev, previous_id):
    """Why this sealed row breaks the chain after the row (`previous_id`, hash `expected_prev`), or None."""
    if row["prev_hash"] != expected_prev:
        after = f"row {previous_id}" if previous_id is not None else "the start of the log"
        return (f"its prev_hash does not match the hash of {after}: a row between them was deleted,"
                f" or {after} was changed")
    if row_hash(row) != row["hash"]:
        return "its content does not match its hash: the row was edited"
    return None


def public(row):
    """A row as the API shows it, with `sealed` (linked into the chain yet) and `verified`: sealed, and
    its hash and its link to the row before it hold."""
    sealed = row["hash"] is not None
    verified = sealed and check_row(row, row["predecessor_hash"] or GENESIS, None) is None
    return {"id": row["id"], "at": _time_text(row["at"]), "actor_type": row["actor_type"],
            "actor_id": row["actor_id"], "request_id": row["request_id"], "client_ip": row["client_ip"],
            "action": row["action"], "target_type": row["target_type"], "target_id": row["target_id"],
            "change": row["change"], "prev_hash": row["prev_hash"], "hash": row["hash"], "sealed": sealed,
            "verified": verified}
