"""Data-subject requests: `flask users export USER_ID` and `flask users forget USER_ID`.

Export gathers everything the service holds about one user. Forget erases what
identifies them or what they were told, and keeps what the bank must still be
able to prove:

- contacts, preferences and quiet hours are deleted; the consent ledger is kept
  (what was consented to, when, under which text: it holds keyed hashes of
  addresses, never addresses) under the pseudonymous UUID;
- their notifications keep their id, group, event and times (that a notice was
  sent, and when, stays provable) but lose title, content, link and reference,
  and are deleted from the inbox; their user id, there and on deliveries,
  becomes a pseudonymous UUID (`pseudonymous_uuid`);
- a trigger addressed to them alone loses its title and content; in any
  trigger their id in `user_ids` becomes the audit pseudonym;
- in the audit, their id (as actor or target) becomes its keyed pseudonym
  (`pseud:` + HMAC). The chain survives because its hashes were computed over
  the pseudonym from the start (app/audit/__init__.py), so replacing the id by
  it changes nothing hashed. Rows sealed before keyed hashing cannot be
  pseudonymised without breaking them: forget counts and reports them.

Both are audited; the forget row names the user by pseudonym only. Whoever
holds the audit key and is given the user's id can still find their rows
(compute the pseudonym): an investigator with a warrant can, a reader of the
database cannot.
"""
import hashlib
import hmac
import json
import sys
import uuid

import click
from flask.cli import AppGroup

from .. import audit, consent, db

TABLES_BY_USER = ("contacts", "preferences", "quiet_hours", "webpush_subscriptions")


def pseudonymous_uuid(secret, user_id):
    """A UUID standing for the user in tables whose user_id column is a uuid."""
    digest = hmac.new(secret, b"audit-subject-uuid\x00" + str(user_id).encode(), hashlib.sha256).digest()
    return uuid.UUID(bytes=digest[:16], version=4)


def _rows(cur, sql, params):
    cur.execute(sql, params)
    return [dict(row) for row in cur.fetchall()]


def _subject_rows(cur, user_id):
    """Audit rows naming the user, as actor or target, or targeting one of their notifications."""
    return _rows(cur, f"SELECT {audit.COLUMNS} FROM audit_log WHERE (actor_type = 'user' AND actor_id = %(u)s)"
                      " OR (target_type = 'user' AND target_id = %(u)s) UNION"
                      f" SELECT {audit.COLUMNS} FROM audit_log WHERE target_type = 'notification' AND target_id IN"
                      " (SELECT id::text FROM notifications WHERE user_id = %(u)s::uuid) ORDER BY id", {"u": user_id})


def export(conn, user_id):
    """Everything held about `user_id`, as one JSON-able dict."""
    with db.cursor(conn) as cur:
        bundle = {"user_id": user_id}
        for table in TABLES_BY_USER:
            bundle[table] = _rows(cur, f"SELECT * FROM {table} WHERE user_id = %s", (user_id,))
        bundle["notifications"] = _rows(cur, "SELECT * FROM notifications WHERE user_id = %s ORDER BY seq", (user_id,))
        bundle["deliveries"] = _rows(cur, "SELECT * FROM deliveries WHERE user_id = %s ORDER BY created_at", (user_id,))
        bundle["delivery_attempts"] = _rows(cur, "SELECT a.* FROM delivery_attempts a JOIN deliveries d"
                                                 " ON d.id = a.delivery_id WHERE d.user_id = %s"
                                                 " ORDER BY a.delivery_id, a.attempt", (user_id,))
        bundle["consent_records"] = [dict(row) for row in consent.all_records(conn, user_id)]
        bundle["audit"] = [audit.exported(row) for row in _subject_rows(cur, user_id)]
    return bundle


def forget(conn, user_id, keys):
    """Erase the user in the caller's transaction; returns counts of what changed."""
    _, secret = keys.current
    subject = audit.pseudonym(secret, user_id)
    stand_in = pseudonymous_uuid(secret, user_id)
    counts = {}
    with db.cursor(conn) as cur:
        for table in TABLES_BY_USER:
            cur.execute(f"DELETE FROM {table} WHERE user_id = %s", (user_id,))
            counts[table] = cur.rowcount
        cur.execute("UPDATE notifications SET title = '', content = '', link_url = NULL, link_text = NULL,"
                    " rec_id = NULL, user_id = %s, deleted_at = coalesce(deleted_at, now()) WHERE user_id = %s",
                    (stand_in, user_id))
        counts["notifications"] = cur.rowcount
        cur.execute("UPDATE deliveries SET user_id = %s WHERE user_id = %s", (stand_in, user_id))
        counts["deliveries"] = cur.rowcount
        # The consent ledger stays as evidence of what was consented to, when (it holds no address, only
        # keyed hashes): under the pseudonymous id, the user as actor by their pseudonym.
        cur.execute("UPDATE consent_records SET user_id = %(p)s, actor_id = CASE WHEN actor_type = 'user' AND"
                    " actor_id = %(u)s THEN %(s)s ELSE actor_id END WHERE user_id = %(u)s::uuid",
                    {"p": stand_in, "u": user_id, "s": subject})
        counts["consent_records"] = cur.rowcount
        # A trigger's user_ids as the caller sent them (any case): the id becomes the pseudonym there.
        cur.execute("UPDATE triggers SET body = jsonb_set(body, '{user_ids}', (SELECT jsonb_agg(CASE WHEN lower(u) ="
                    " %(u)s THEN %(s)s ELSE u END) FROM jsonb_array_elements_text(body->'user_ids') u))"
                    " || CASE WHEN users_total = 1 THEN '{\"title\": \"\", \"content\": \"\"}'::jsonb ELSE '{}' END"
                    " WHERE EXISTS (SELECT 1 FROM jsonb_array_elements_text(body->'user_ids') u WHERE lower(u) = %(u)s)",
                    {"u": user_id, "s": subject})
        counts["triggers"] = cur.rowcount
        cur.execute("SELECT id, key_id, hash, actor_type, actor_id, target_type, target_id FROM audit_log"
                    " WHERE (actor_type = 'user' AND actor_id = %(u)s) OR (target_type = 'user' AND target_id = %(u)s)",
                    {"u": user_id})
        named = cur.fetchall()
    ids, actors, targets, legacy = [], [], [], 0
    for row in named:
        if row["key_id"] is None and row["hash"] is not None:    # sealed with plain SHA-256 over the id itself
            legacy += 1
            continue
        # an unsealed row is sealed later with the current key, over the pseudonym either way
        row_secret = secret if row["key_id"] is None else keys.secret(row["key_id"])
        if row_secret is None:
            raise click.ClickException(f"audit row {row['id']} was sealed with key id {row['key_id']!r}, which this"
                                       " service does not hold: add it to AUDIT_HMAC_KEYS_PREVIOUS")
        alias = audit.pseudonym(row_secret, user_id)
        ids.append(row["id"])
        actors.append(alias if row["actor_type"] == "user" and row["actor_id"] == user_id else None)
        targets.append(alias if row["target_type"] == "user" and row["target_id"] == user_id else None)
    if ids:
        with conn.cursor() as cur:
            cur.execute("SELECT audit_pseudonymise(%s::bigint[], %s::text[], %s::text[])", (ids, actors, targets))
    counts["audit_rows_pseudonymised"], counts["audit_rows_sealed_before_keys"] = len(ids), legacy
    audit.record(conn, "user.forget", ("user", subject), counts, actor=audit.operator())
    return counts


# ------------------------------------------------------------------------------ `flask users`

group = AppGroup("users", help="Data-subject requests: export or erase what the service holds about a user.")


def _user_id(value):
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a user id (a UUID)") from None


@group.command("export")
@click.argument("user_id")
@click.option("--out", "out", type=click.Path(dir_okay=False, writable=True), default="-",
              help="file to write (default: standard output)")
def export_command(user_id, out):
    """Write everything held about USER_ID as JSON (audited)."""
    user_id = _user_id(user_id)
    with db.connection() as conn, db.without_timeouts(conn):
        with db.transaction(conn):
            bundle = export(conn, user_id)
            audit.record(conn, "user.export", ("user", user_id), {"notifications": len(bundle["notifications"]),
                                                                  "audit_rows": len(bundle["audit"])},
                         actor=audit.operator())
    text = json.dumps(bundle, indent=2, sort_keys=True, default=audit.json_value)
    if out == "-":
        click.echo(text)
    else:
        with open(out, "w") as handle:
            handle.write(text + "\n")
        click.echo(f"wrote {out}: {len(bundle['notifications'])} notifications, {len(bundle['audit'])} audit rows",
                   err=True)


@group.command("forget")
@click.argument("user_id")
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
def forget_command(user_id, yes):
    """Erase USER_ID's contacts, content and preferences; pseudonymise their id (audited)."""
    from flask import current_app
    user_id = _user_id(user_id)
    if not yes and not click.confirm(f"Erase user {user_id}? This cannot be undone", err=True):
        sys.exit(1)
    with db.connection() as conn, db.without_timeouts(conn):
        with db.transaction(conn):
            counts = forget(conn, user_id, current_app.config["AUDIT_KEYS"])
    click.echo("forgot " + ", ".join(f"{name}: {value}" for name, value in counts.items()))


def init_app(app):
    app.cli.add_command(group)
