"""The consent ledger: every contact and preference change as a versioned record per user, and the
sending rule of groups with `requires_consent: true` (docs/audit.md "Consent ledger").

Why a ledger beside the audit log: the audit log says *that* a user's preferences changed; a
regulator asks *did they consent to this channel, for this address, having been shown which text*.
Each record names its actor (the user, or a service key id), the request, the customer, group,
event and channel, the old and new values of what changed, and the `consent_text_version` the
caller sent. Addresses are never stored: a record holds a keyed hash of the address on file
(`address_hash`, under SECRET_KEY), which is enough to answer "is consent on record for THIS
address" and keeps no address to erase. Records are numbered 1, 2, 3… per user (`version`) under a
per-user transaction lock, taken before the change's old values are read.

The rule: a change to a group that requires consent, on a channel that needs an address (email,
SMS), records `granted` (its `enabled`) for the address on file then. An email or SMS of such a
group goes out only when the latest `granted` record for that user, channel and address (of the
group; for all customers or the notification's; for the whole group or the event) is true. A new
address therefore has no consent until the user gives it again; consent given while no address is
on file applies to none.
"""
import psycopg2.extras
from flask import g, has_request_context

from .. import audit
from ..db import Locks, cursor
from ..security.keyed import keyed_hash

NO_CONSENT = "no_consent: no consent on record for this address"
CONTACT_FIELDS = ("email", "phone", "locale", "timezone")
COLUMNS = ("version, at, source, actor_type, actor_id, request_id, consent_text_version, customer_id, group_name,"
           " event, channel, address_hash, granted, change")


def channel_needs(app):
    """channel -> the contact field it addresses, for the configured channels that need one."""
    return {name: channel.needs for name, channel in app.extensions["channels"].items() if channel.needs}


def address_hash(address):
    """What the ledger keeps of an address: a keyed hash (the same address, the same value)."""
    return keyed_hash("consent-address", address, 64) if address else None


def lock(conn, user_id):
    """Serialise the user's ledger writes until the transaction ends (call before reading old values)."""
    with conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s::text))", (Locks.CONSENT, str(user_id)))


def append(conn, user_id, records, consent_text_version=None, actor=None):
    """Write `records` (dicts of source, change and optionally customer_id, group_name, event, channel,
    address_hash, granted) as the user's next versions, in the caller's transaction (after `lock`)."""
    if not records:
        return
    actor_type, actor_id = actor or audit.request_actor()
    request_id = g.get("request_id") if has_request_context() else None
    with conn.cursor() as cur:
        cur.execute("SELECT coalesce(max(version), 0) FROM consent_records WHERE user_id = %s", (user_id,))
        last = cur.fetchone()[0]
        rows = [(user_id, last + n, r["source"], actor_type, str(actor_id), request_id, consent_text_version,
                 r.get("customer_id"), r.get("group_name"), r.get("event"), r.get("channel"), r.get("address_hash"),
                 r.get("granted"), psycopg2.extras.Json(r["change"]))
                for n, r in enumerate(records, 1)]
        psycopg2.extras.execute_values(
            cur, "INSERT INTO consent_records (user_id, version, source, actor_type, actor_id, request_id,"
                 " consent_text_version, customer_id, group_name, event, channel, address_hash, granted, change)"
                 " VALUES %s", rows)


# ------------------------------------------------------------------------------ what a change records

def contact_records(needs, old, new):
    """Records of one contact change. needs: channel -> the contact field it addresses.

    An address that changed gives one record per channel using it (old and new as keyed hashes);
    other fields are named, not copied. Nothing changed: no record."""
    old, new = old or {}, new or {}
    changed = [f for f in CONTACT_FIELDS if old.get(f) != new.get(f)]
    if not changed:
        return []
    others = sorted(f for f in changed if f not in needs.values())
    records = []
    for channel, field in sorted(needs.items()):
        if field in changed:
            change = {field: {"old": address_hash(old.get(field)), "new": address_hash(new.get(field))}}
            records.append({"source": "contact", "channel": channel, "address_hash": address_hash(new.get(field)),
                            "change": dict(change, other_fields=others)})
    return records or [{"source": "contact", "change": {"other_fields": others}}]


def preference_records(domain, needs, contact, changes, old_choices):
    """Records of a list of preference changes (canonical, as applied). old_choices: (customer, group,
    event, channel) -> enabled before. A change to a group that requires consent gives one record per
    addressed channel it covers, each granting or withdrawing consent for the address on file."""
    from ..preferences.rules import ALL_CUSTOMERS
    records = []
    for c in changes:
        key = (c["customer_id"] or ALL_CUSTOMERS, c["group"], c.get("event") or "", c.get("channel") or "")
        base = {"source": "preferences", "customer_id": c["customer_id"], "group_name": c["group"],
                "event": c.get("event"),
                "change": {"enabled": {"old": old_choices.get(key), "new": c["enabled"]}}}
        group = domain.groups[c["group"]]
        covered = [c["channel"]] if c.get("channel") else [ch for ch in domain.channels if needs.get(ch)]
        addressed = [ch for ch in covered if needs.get(ch)] if group.requires_consent else []
        for channel in addressed:
            records.append(dict(base, channel=channel, granted=c["enabled"],
                                address_hash=address_hash((contact or {}).get(needs[channel]))))
        if not addressed:
            records.append(dict(base, channel=c.get("channel")))
    return records


def grants(records):
    """True when any record gives consent (the caller must then say which text was shown)."""
    return any(r.get("granted") for r in records)


# ------------------------------------------------------------------------------ the sending rule

def consented(conn, user_ids, event, customer_id):
    """{(user id, channel, address hash)} whose latest consent record for `event` grants it."""
    with cursor(conn) as cur:
        cur.execute("SELECT DISTINCT ON (user_id, channel, address_hash) user_id, channel, address_hash, granted"
                    " FROM consent_records WHERE user_id = ANY(%(users)s::uuid[]) AND granted IS NOT NULL"
                    " AND group_name = %(group)s AND (event IS NULL OR event = %(event)s)"
                    " AND (customer_id IS NULL OR customer_id = %(customer)s)"
                    " ORDER BY user_id, channel, address_hash, version DESC",
                    {"users": [str(u) for u in user_ids], "group": event.group, "event": event.name,
                     "customer": customer_id})
        return {(str(r["user_id"]), r["channel"], r["address_hash"]) for r in cur.fetchall() if r["granted"]}


def allows(granted, user_id, channel, address):
    """Whether `consented`'s answer lets this user's channel send to `address`."""
    return (str(user_id), channel, address_hash(address)) in granted


# ------------------------------------------------------------------------------ reading

def history(conn, user_id, limit, before=None, customers=None):
    """One page of the user's records, newest first (`before`: versions below it); a token limited to
    some customers sees the records for all customers and for those."""
    where, params = ["user_id = %(user)s"], {"user": user_id, "limit": limit}
    if before is not None:
        where.append("version < %(before)s")
        params["before"] = before
    if customers is not None:
        where.append("(customer_id IS NULL OR customer_id = ANY(%(customers)s::uuid[]))")
        params["customers"] = [str(c) for c in customers]
    with cursor(conn) as cur:
        cur.execute(f"SELECT {COLUMNS} FROM consent_records WHERE {' AND '.join(where)}"
                    " ORDER BY version DESC LIMIT %(limit)s", params)
        return cur.fetchall()


def all_records(conn, user_id):
    """Every record of the user, oldest first (evidence, data-subject exports)."""
    with cursor(conn) as cur:
        cur.execute(f"SELECT {COLUMNS} FROM consent_records WHERE user_id = %s ORDER BY version", (user_id,))
        return cur.fetchall()
