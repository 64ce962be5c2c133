"""The tamper-evident audit log: who changed what, when, from where.

Every state-changing operation calls `record(conn, action, target, change)`
inside the transaction that makes the change, so the row exists exactly when
the change does. Rows form one chain, in the order of `chain` (the row's
position, from 1); each sealed row's hash is an HMAC under a key the database
never sees (app/audit/keys.py), so whoever can write the table cannot
recompute the chain after editing it:

    hash = hex(HMAC-SHA256(key[key_id], "v2|key_id|chain|prev_hash|id|at|body"))

where `at` is `YYYY-MM-DDTHH:MM:SS.ffffffZ` and `body` the canonical JSON
(sorted keys, no spaces, ASCII) of the other columns: actor, request id, client
(its address as a keyed hash, `client_hash`), action, target, change, with a
user's id (the actor of type user, the target of type user) replaced by its
pseudonym `pseud:` + hex(HMAC-SHA256(key, "audit-subject\0" + id)). Hashing the
pseudonym rather than the id is what lets `flask users forget` replace the id
in the row by the pseudonym and leave the chain verifiable. The first row's
prev_hash is 64 zeros. docs/audit.md specifies it for an auditor byte for byte.
Rows sealed before keyed hashing (key_id NULL) keep their plain SHA-256:

    hash = sha256(prev_hash|id|at|body)       (body with the ids as stored)

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
couple of seconds; and a write transaction left open in this database holds
back the sealing of every row that committed after it began (the sealer
waits, it never skips). `flask audit verify` seals what it can, then reports
the rows still unsealed; `GET /audit` shows them with `sealed: false`.

The chain is checked by `chain.verify`, row by row with `check_row`: the
first row whose content no longer matches its hash (edited), whose place or
prev_hash does not follow the row before it (a row deleted, or edited with
its hash recomputed) is named. Deleting the newest rows cannot be seen from
the chain alone: the head is anchored outside the database
(app/audit/anchor.py) and `verify` compares the chain with the latest anchor.

The log never holds secrets (API keys appear as their key id) nor personal
data other than user ids (contact changes name the fields, not the addresses;
a direct push records how many users and a keyed hash of their ids,
`push_change`; the client's address is a keyed hash, so requests from one
address can still be grouped and an address an investigator names can be
checked with `client_hash(address)`). The service's database role may only
insert rows (migrations_sql/0013): sealing and pseudonymising go through
functions that change nothing else.
"""
import datetime
import getpass
import hashlib
import hmac
import json
import os
import uuid

import orjson
from flask import current_app, g, has_request_context, request

from .. import db
from ..security.keyed import keyed_hash

GENESIS = "0" * 64
ACTOR_TYPES = ("user", "service", "operator", "system")
BODY = ("actor_type", "actor_id", "request_id", "client_ip", "action", "target_type", "target_id", "change")
COLUMNS = "id, at, " + ", ".join(BODY) + ", chain, prev_hash, hash, key_id"
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
    if isinstance(moment, str):     # already in the hashed form (a row read back from an exported bundle)
        return moment
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical_body(row, subjects=None):
    """The row's columns other than id, time and hashes, as the exact JSON text that is hashed;
    with `subjects` (a function), a user's id in actor_id / target_id is replaced by what it returns."""
    values = {name: row[name] for name in BODY}
    if subjects is not None:
        if values["actor_type"] == "user":
            values["actor_id"] = subjects(values["actor_id"])
        if values["target_type"] == "user" and values["target_id"] is not None:
            values["target_id"] = subjects(values["target_id"])
    return json.dumps(values, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=_plain)


PSEUDONYM_PREFIX = "pseud:"


def pseudonym(secret, user_id):
    """The keyed pseudonym of a user's id under one chain key (an id already pseudonymised stays)."""
    if user_id.startswith(PSEUDONYM_PREFIX):
        return user_id
    return PSEUDONYM_PREFIX + hmac.new(secret, b"audit-subject\x00" + user_id.encode(), hashlib.sha256).hexdigest()


def keyed_hash_of(row, position, prev_hash, key_id, secret):
    """The HMAC a row sealed at `position` after `prev_hash` under key `key_id` must carry."""
    body = canonical_body(row, lambda user_id: pseudonym(secret, user_id))
    text = f"v2|{key_id}|{position}|{prev_hash}|{row['id']}|{_time_text(row['at'])}|{body}"
    return hmac.new(secret, text.encode(), hashlib.sha256).hexdigest()


def row_hash(row, prev_hash=None):
    """What a row sealed before keyed hashing (key_id NULL) must carry: plain SHA-256."""
    prev_hash = row["prev_hash"] if prev_hash is None else prev_hash
    text = f"{prev_hash}|{row['id']}|{_time_text(row['at'])}|{canonical_body(row)}"
    return hashlib.sha256(text.encode()).hexdigest()


def keyring():
    """The running app's audit keys (app/audit/keys.py)."""
    return current_app.config["AUDIT_KEYS"]


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
                    f" ORDER BY p.chain DESC LIMIT 1) AS predecessor_hash FROM (SELECT {COLUMNS} FROM audit_log {clause}"
                    f" ORDER BY id DESC LIMIT %(limit)s OFFSET %(offset)s) page ORDER BY page.id DESC",
                    dict(params, limit=limit, offset=offset))
        return cur.fetchall()


def check_row(row, expected_prev, previous_id, keys, keyed_seen=False):
    """Why this sealed row breaks the chain after the row (`previous_id`, hash `expected_prev`), or None.

    `keyed_seen`: a row before it was sealed with a key, so an unkeyed row here is a downgrade."""
    if row["prev_hash"] != expected_prev:
        after = f"row {previous_id}" if previous_id is not None else "the start of the log"
        return (f"its prev_hash does not match the hash of {after}: a row between them was deleted,"
                f" or {after} was changed")
    if row["key_id"] is None:
        if keyed_seen:
            return "it carries no key id after rows sealed with a key: its hash was recomputed without the key"
        if row_hash(row) != row["hash"]:
            return "its content does not match its hash: the row was edited"
        return None
    secret = keys.secret(row["key_id"])
    if secret is None:
        return (f"it was sealed with key id {row['key_id']!r}, which this service does not hold"
                " (add it to AUDIT_HMAC_KEYS_PREVIOUS), or its key id was changed")
    if not hmac.compare_digest(keyed_hash_of(row, row["chain"], row["prev_hash"], row["key_id"], secret), row["hash"]):
        return "its content does not match its HMAC: the row was edited, or its hash recomputed without the key"
    return None


def public(row):
    """A row as the API shows it, with `sealed` (linked into the chain yet) and `verified`: sealed, and
    its hash and its link to the row before it hold."""
    sealed = row["hash"] is not None
    verified = sealed and check_row(row, row["predecessor_hash"] or GENESIS, None, keyring()) is None
    return {"id": row["id"], "at": _time_text(row["at"]), "actor_type": row["actor_type"],
            "actor_id": row["actor_id"], "request_id": row["request_id"], "client_ip": row["client_ip"],
            "action": row["action"], "target_type": row["target_type"], "target_id": row["target_id"],
            "change": row["change"], "position": row["chain"], "prev_hash": row["prev_hash"], "hash": row["hash"],
            "key_id": row["key_id"], "sealed": sealed,
            "verified": verified}
