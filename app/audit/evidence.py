"""The evidence of one notification: everything the service holds about how it was told, gathered in
one JSON document (`GET /v1/notifications/{id}/evidence`, `flask audit export`), and the offline check
of an exported bundle (`flask audit verify-bundle`). docs/audit.md "Evidence per notification" says
what each part proves and how to check it without our code.

Why one module for the endpoint and the CLI: a dispute team gets the same document whichever way it
was produced, and the bundle checked offline is exactly what the API shows.

Two kinds of content, kept apart in the document:
- `audit.rows`: the audit rows behind the trigger, reads, unreads and deletions, each with its place
  in the chain (`chain`), `prev_hash`, `hash` and `key_id`. Their HMACs (app/audit/__init__.py) bind
  each row's content to its place after its predecessor; only the holder of AUDIT_HMAC_KEY could have
  made them, and `chain.head` / `chain.anchor` tie them to a head kept outside the database.
- everything else (the notification, its trigger, deliveries and attempts with what each was decided
  on, the consent ledger's records): the database's rows as they are now, which the chain does not
  cover; the audit rows each refers to (`audit_id`) are the proof of the actions themselves.
"""
import datetime
import json
import sys

import click
from flask import current_app
from flask.cli import with_appcontext

from .. import consent, db
from ..channels import IN_APP
from . import COLUMNS, exported as audit_row, keyring
from .anchor import AnchorError, latest
from .chain import seal_all, verify_rows

FORMAT = "notifications-evidence/1"
# Audit actions a user's interaction with one notification leaves, and what the evidence calls them.
INTERACTIONS = {"notification.read": "read", "notification.unread": "unread", "notification.delete": "deleted",
                "notification.ack": "acknowledged"}


def _time(moment):
    """Times as the audit chain hashes them: UTC, microseconds, `Z`."""
    if moment is None:
        return None
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _plain(row):
    """A database row as JSON-ready values (times in `_time`'s form, UUIDs as text)."""
    out = {}
    for name, value in row.items():
        if isinstance(value, datetime.datetime):
            value = _time(value)
        elif value is not None and not isinstance(value, (str, int, float, bool, dict, list)):
            value = str(value)
        out[name] = value
    return out


def gather(conn, notification_id, anchor_path=None):
    """The evidence document of one notification, or None when there is no such notification."""
    with db.cursor(conn) as cur:
        cur.execute("SELECT * FROM notifications WHERE id = %s", (notification_id,))
        notification = cur.fetchone()
        if notification is None:
            return None
        trigger = None
        if notification["trigger_id"] is not None:
            cur.execute("SELECT id, api_key_id, idempotency_key, request_id, body_hash, status, created_at,"
                        " dispatched_at FROM triggers WHERE id = %s", (notification["trigger_id"],))
            trigger = cur.fetchone()
        cur.execute("SELECT id, channel, status, reason, attempts, last_error, provider_message_id, created_at,"
                    " updated_at, sent_at, delivered_at, resolution FROM deliveries WHERE notification_id = %s"
                    " ORDER BY channel",
                    (notification_id,))
        deliveries = cur.fetchall()
        cur.execute("SELECT delivery_id, attempt, outcome, error, provider, provider_message_id, started_at,"
                    " finished_at, resolution FROM delivery_attempts WHERE delivery_id = ANY(%s::uuid[]) ORDER BY attempt, id",
                    ([str(d["id"]) for d in deliveries],))
        attempts = cur.fetchall()
        targets = [("notification", str(notification_id))]
        if trigger is not None:
            targets.append(("trigger", str(trigger["id"])))
        cur.execute(f"SELECT {COLUMNS} FROM audit_log WHERE (target_type, target_id) IN %s ORDER BY id",
                    (tuple(targets),))
        rows = cur.fetchall()
        cur.execute("SELECT chain, hash, key_id FROM audit_log WHERE chain IS NOT NULL ORDER BY chain DESC LIMIT 1")
        head = cur.fetchone()
    group = current_app.config["DOMAIN"].groups.get(notification["type"])
    ledger = [_plain(r) for r in consent.all_records(conn, notification["user_id"])
              if r["source"] == "contact" or r["group_name"] == notification["type"]]
    return {
        "format": FORMAT,
        "generated_at": _time(datetime.datetime.now(datetime.timezone.utc)),
        "notification": _plain(notification),
        "trigger": _trigger(trigger, rows),
        "deliveries": _deliveries(notification, deliveries, attempts),
        "interactions": _interactions(notification, rows),
        "consent": {"required": bool(group and group.requires_consent), "records": ledger},
        "audit": {"rows": [audit_row(r) for r in rows], "findings": _findings(rows)},
        "chain": {"head": head and {"position": head["chain"], "hash": head["hash"], "key_id": head["key_id"]},
                  "anchor": _anchor(anchor_path)},
    }


def _trigger(trigger, rows):
    """Who asked for it, when, under which request id and idempotency key, and the audit row saying so."""
    if trigger is None:
        return None
    audit_id = next((r["id"] for r in rows if r["target_type"] == "trigger" and r["action"] == "notification.trigger"),
                    None)
    return dict(_plain(trigger), audit_id=audit_id)


def _deliveries(notification, deliveries, attempts):
    """Every channel's delivery with its attempts and what dispatch and each attempt resolved."""
    out = []
    for delivery in deliveries:
        mine = [_plain({k: v for k, v in a.items() if k != "delivery_id"})
                for a in attempts if a["delivery_id"] == delivery["id"]]
        shown = _plain({k: v for k, v in delivery.items() if k != "resolution"})
        out.append(dict(shown, resolution_at_dispatch=delivery["resolution"], attempts=mine))
    if notification["in_app"] and not any(d["channel"] == IN_APP for d in deliveries):
        # the in-app delivery is the notification row itself (app/deliveries/in_app.py)
        out.append({"id": None, "channel": IN_APP, "status": "sent", "reason": None, "attempts": [],
                    "sent_at": _time(notification["created_at"]), "provider_message_id": None,
                    "resolution_at_dispatch": {"enabled": True, "derived_from": "notifications.in_app"}})
    return sorted(out, key=lambda d: d["channel"])


def _interactions(notification, rows):
    """Reads, unreads and deletions, each from its audit row: when, by whom, from which client."""
    found = [{"action": INTERACTIONS[r["action"]], "at": _time(r["at"]), "actor_type": r["actor_type"],
              "actor_id": r["actor_id"], "client_ip": r["client_ip"], "request_id": r["request_id"],
              "audit_id": r["id"]}
             for r in rows if r["action"] in INTERACTIONS]
    return {"read_at": _time(notification["read_at"]), "acked_at": _time(notification.get("acked_at")),
            "deleted_at": _time(notification["deleted_at"]),
            "events": found}


def _findings(rows):
    """The rows that do not hold under this service's keys (unsealed ones included), as text."""
    return [str(finding) for finding in verify_rows([audit_row(r) for r in rows], keyring())]


def _anchor(path):
    if not path:
        return None
    try:
        return latest(path)
    except (OSError, AnchorError):
        return None


# ------------------------------------------------------------------------------ `flask audit export / verify-bundle`
# (registered on the `flask audit` group by app/audit/cli.py)

@click.command("export")
@with_appcontext
@click.option("--notification", "notification_id", required=True, type=click.UUID, help="the notification's id")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, writable=True), help="the JSON file")
def export_command(notification_id, out):
    """Write one notification's evidence (the document GET /v1/notifications/{id}/evidence shows) as a
    JSON bundle, after sealing every finished audit row."""
    with db.connection() as conn:
        seal_all(conn, wait=True)
        with db.transaction(conn):
            bundle = gather(conn, notification_id, current_app.config.get("AUDIT_ANCHOR_PATH"))
    if bundle is None:
        click.echo(f"no notification {notification_id}", err=True)
        sys.exit(1)
    with open(out, "w", encoding="utf-8") as handle:
        json.dump(bundle, handle, indent=2, sort_keys=True)
        handle.write("\n")
    click.echo(f"wrote the evidence of notification {notification_id} ({len(bundle['audit']['rows'])} audit rows)"
               f" to {out}")


def check_bundle(bundle, keys):
    """Problems of an exported bundle under `keys`, as text (empty: it holds): every audit row's HMAC
    and link, every action's audit row present, no row past the recorded head."""
    if bundle.get("format") != FORMAT:
        return [f"not an evidence bundle of format {FORMAT}"]
    rows = bundle["audit"]["rows"]
    problems = [str(finding) for finding in verify_rows(rows, keys)]
    ids = {row["id"] for row in rows}
    referred = [(bundle["trigger"] or {}).get("audit_id"), *(e["audit_id"] for e in bundle["interactions"]["events"])]
    problems += [f"audit row {ref} is referred to but not in the bundle" for ref in referred
                 if ref is not None and ref not in ids]
    head = bundle["chain"]["head"]
    for row in rows:
        if head is None or (row["chain"] or 0) > head["position"]:
            problems.append(f"audit row {row['id']} lies past the recorded head of the chain")
    return problems


@click.command("verify-bundle")
@with_appcontext
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
def verify_bundle_command(path):
    """Check an exported bundle offline with the audit key (AUDIT_HMAC_KEY and
    AUDIT_HMAC_KEYS_PREVIOUS); exit 1 naming each problem."""
    try:
        with open(path, encoding="utf-8") as handle:
            bundle = json.load(handle)
        problems = check_bundle(bundle, keyring())
    except (ValueError, KeyError, TypeError) as exc:
        problems = [f"unreadable bundle ({type(exc).__name__}: {exc})"]
    if problems:
        for problem in problems:
            click.echo(f"bundle NOT VERIFIED: {problem}", err=True)
        sys.exit(1)
    head = bundle["chain"]["head"]
    click.echo(f"bundle verified: {len(bundle['audit']['rows'])} audit rows hold under the key; chain head"
               f" position {head['position']} hash {head['hash']}")
