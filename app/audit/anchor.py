"""Anchors: the chain's head written outside the database, so a shortened chain is detected.

Why: a chain proves that no row was changed or removed *between* two rows, but
whoever can delete rows can delete the newest ones (or all of them) and the
rest still verifies. An anchor records (position, hash, key id, time) of the
head in a place the database's owner does not control: an append-only file
(`AUDIT_ANCHOR_PATH`: one JSON line per anchor, appended and fsync'ed — put it
on storage the DBA cannot write, or ship it to a WORM bucket) or an HTTP
endpoint (`AUDIT_ANCHOR_URL`: each anchor POSTed as JSON, e.g. to a log
service with retention lock). `flask audit verify` then requires the row at
the anchored position to exist with the anchored hash.

The worker anchors every `AUDIT_ANCHOR_SECONDS` (one worker per period: a
Redis lease), `flask audit anchor` on demand. An anchor is written even when
the head has not moved: a steady line of anchors is also evidence that the
chain was watched.
"""
import datetime
import json
import logging
import os

import requests

from .. import bus, db
from . import chain

log = logging.getLogger(__name__)
HTTP_TIMEOUT = 10


class AnchorError(Exception):
    """No sink configured, or the sink refused the anchor."""


def current_head(conn):
    """The anchor for the chain as it stands: seals what can be sealed first."""
    chain.seal_all(conn, wait=True)
    with db.cursor(conn) as cur:
        cur.execute("SELECT chain, hash, key_id, id FROM audit_log WHERE chain IS NOT NULL ORDER BY chain DESC LIMIT 1")
        row = cur.fetchone()
        cur.execute("SELECT current_database() AS name")
        database = cur.fetchone()["name"]
    conn.commit()
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if row is None:
        return {"position": 0, "hash": chain.GENESIS, "key_id": None, "row_id": None, "at": now, "database": database}
    return {"position": row["chain"], "hash": row["hash"], "key_id": row["key_id"], "row_id": row["id"], "at": now,
            "database": database}


def write(anchor, path="", url=""):
    """Append the anchor to the configured sinks (both when both are set)."""
    if not path and not url:
        raise AnchorError("no anchor sink: set AUDIT_ANCHOR_PATH or AUDIT_ANCHOR_URL")
    line = json.dumps(anchor, sort_keys=True, separators=(",", ":")) + "\n"
    if path:
        created = not os.path.exists(path)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:   # the new file's name must survive a crash too
            directory = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
    if url:
        try:
            response = requests.post(url, data=line, headers={"Content-Type": "application/json"},
                                     timeout=HTTP_TIMEOUT)
        except requests.RequestException as exc:
            raise AnchorError(f"anchor endpoint unreachable: {type(exc).__name__}") from None
        if not 200 <= response.status_code < 300:
            raise AnchorError(f"anchor endpoint answered {response.status_code}")


def latest(path):
    """The newest anchor in an anchor file, or None when it has none. A torn last line (a crash in
    mid-write) is skipped; any other unreadable line is an error, not silently ignored."""
    if not os.path.exists(path):
        return None
    with open(path, "rb") as handle:
        lines = handle.read().split(b"\n")
    found = None
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            entry = json.loads(raw)
            found = {"position": int(entry["position"]), "hash": str(entry["hash"]), "at": entry.get("at"),
                     "key_id": entry.get("key_id")}
        except (ValueError, KeyError, TypeError):
            if number == len(lines):      # the unterminated last line of an interrupted append
                continue
            raise AnchorError(f"{path}: line {number} is not an anchor")
    return found


def anchor_now(app):
    """Write one anchor from the app's settings; returns it."""
    with db.connection() as conn:
        head = current_head(conn)
    write(head, app.config["AUDIT_ANCHOR_PATH"], app.config["AUDIT_ANCHOR_URL"])
    return head


def due(app):
    """Whether this worker writes the next periodic anchor: the first to take the period's lease."""
    if not (app.config["AUDIT_ANCHOR_PATH"] or app.config["AUDIT_ANCHOR_URL"]):
        return False
    period = max(1, int(app.config["AUDIT_ANCHOR_SECONDS"]))
    return bool(app.extensions["redis"].set(bus.key("audit", "anchor-lease"), "1", nx=True, ex=period))


def periodic(app):
    """The relay's step: anchor when this period's anchor is ours to write; returns the anchor or None."""
    with app.app_context():
        if not due(app):
            return None
        head = anchor_now(app)
    log.info("audit head anchored at position %s", head["position"])
    return head
