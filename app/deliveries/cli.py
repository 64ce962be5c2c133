"""Operator commands: `flask deliveries failed` and `flask deliveries retry`.

A retry sends to the address a user has now, possibly months after the
notification: `retry` is built not to surprise. `--since` bounds the age of what
it takes, `--dry-run` prints what would be sent and changes nothing, urgent or
locked alerts (notifications.yaml) older than RETRY_STALE_URGENT_SECONDS are
skipped unless `--force` (late, a "new login" alert alarms instead of warning),
and more than RETRY_CONFIRM_ABOVE deliveries need a yes: typed at a terminal, or
`--yes`; without a terminal and without `--yes` the command refuses.
"""
import datetime
import re
import sys

import click
from flask import current_app
from flask.cli import AppGroup

from .. import audit, db
from ..queues.enqueue import enqueue_on_their_lanes
from ..redact import redact
from . import repository

group = AppGroup("deliveries", help="Inspect and re-enqueue deliveries.")
UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


@group.command("failed")
@click.option("--channel", default=None, help="only this channel")
def failed_command(channel):
    """List failed deliveries with their last error."""
    with db.connection() as conn, conn.cursor() as cur:
        cur.execute("SELECT id, channel, attempts, last_error FROM deliveries WHERE status = 'failed'"
                    + (" AND channel = %s" if channel else "") + " ORDER BY updated_at",
                    (channel,) if channel else ())
        rows = cur.fetchall()
    for delivery_id, chan, attempts, error in rows:
        # redacted again: rows written before last_error was redacted at the source hold raw provider text
        click.echo(f"{delivery_id}\t{chan}\t{attempts}\t{(redact(error) or '')[:120]}")
    click.echo(f"{len(rows)} failed deliveries", err=True)


class Since(click.ParamType):
    """An age (`90m`, `6h`, `2d`, `1w`) or an ISO 8601 time (UTC when it has no offset)."""

    name = "AGE|TIME"

    def convert(self, value, param, ctx):
        if isinstance(value, datetime.datetime):
            return value
        now = datetime.datetime.now(datetime.timezone.utc)
        match = re.fullmatch(r"(\d+)([smhdw])", value.strip())
        if match:
            return now - datetime.timedelta(**{UNITS[match[2]]: int(match[1])})
        try:
            when = datetime.datetime.fromisoformat(value.strip())
        except ValueError:
            self.fail(f"{value!r} is neither an age like 90m, 6h, 2d, 1w nor an ISO 8601 time", param, ctx)
        return when if when.tzinfo else when.replace(tzinfo=datetime.timezone.utc)


def is_stale(row, domain, stale_after):
    """An urgent or locked alert older than `stale_after` seconds: too late to be worth sending."""
    group_ = domain.group(row["type"])
    event = group_.events.get(row["event"]) if group_ else None
    return bool(event and (event.urgent or event.locked) and row["age_seconds"] > stale_after)


def masked(row):
    """The address a send would use now, recognisable to whoever knows it, not readable by others."""
    address = {"email": row["email"], "sms": row["phone"]}.get(row["channel"])
    if not address:
        return "-"
    if "@" in address:
        local, _, domain = address.partition("@")
        return f"{local[:1]}***@{domain}"
    return f"{address[:3]}***{address[-2:]}"


def _age(seconds):
    seconds = int(seconds)
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m")):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _plan(rows, force):
    """(to send, stale ones skipped), by the app's staleness rule."""
    domain, stale_after = current_app.config["DOMAIN"], current_app.config["RETRY_STALE_URGENT_SECONDS"]
    stale = [] if force else [r for r in rows if is_stale(r, domain, stale_after)]
    skipped = {r["id"] for r in stale}
    return [r for r in rows if r["id"] not in skipped], stale


def _confirmed(count, yes):
    """Past RETRY_CONFIRM_ABOVE: `--yes`, or a yes typed at a terminal; never a guess."""
    if count <= current_app.config["RETRY_CONFIRM_ABOVE"] or yes:
        return True
    if not sys.stdin.isatty():
        click.echo(f"refusing to re-enqueue {count} deliveries (more than RETRY_CONFIRM_ABOVE="
                   f"{current_app.config['RETRY_CONFIRM_ABOVE']}) without a terminal to confirm: "
                   "check with --dry-run, then pass --yes", err=True)
        return False
    return click.confirm(f"Re-enqueue {count} deliveries?", default=False, err=True)


@group.command("retry")
@click.option("--channel", default=None, help="only this channel")
@click.option("--limit", type=int, default=None, help="at most this many")
@click.option("--since", type=Since(), default=None,
              help="only notifications created after this: an age (90m, 6h, 2d, 1w) or an ISO 8601 time")
@click.option("--dry-run", is_flag=True, help="print what would be sent; send and change nothing")
@click.option("--force", is_flag=True, help="also send urgent alerts older than RETRY_STALE_URGENT_SECONDS")
@click.option("--yes", is_flag=True, help="do not ask, however many (above RETRY_CONFIRM_ABOVE)")
def retry_command(channel, limit, since, dry_run, force, yes):
    """Re-enqueue failed deliveries with a fresh attempt budget."""
    with db.connection() as conn:
        rows = repository.failed_for_retry(conn, channel, limit, since)
        conn.commit()
    chosen, stale = _plan(rows, force)
    if dry_run:
        skipped = {r["id"] for r in stale}
        for row in rows:
            what = "skip: stale urgent alert" if row["id"] in skipped else "would send"
            click.echo(f"{row['id']}\t{row['channel']}\t{row['type']}/{row['event']}\t{_age(row['age_seconds'])}"
                       f"\t{masked(row)}\t{what}")
    if stale:
        click.echo(f"{len(stale)} urgent alerts older than {current_app.config['RETRY_STALE_URGENT_SECONDS']} s "
                   "skipped (--force sends them)", err=True)
    if dry_run:
        click.echo(f"{len(chosen)} deliveries would be re-enqueued (dry run: nothing sent or changed)")
        return
    if not _confirmed(len(chosen), yes):
        click.echo("nothing re-enqueued", err=True)
        sys.exit(1)
    done = _reenqueue([r["id"] for r in chosen], channel, force)
    click.echo(f"{done} deliveries re-enqueued")


def _reenqueue(ids, channel, force):
    done = 0
    with db.connection() as conn, click.progressbar(length=len(ids), label="re-enqueuing", file=sys.stderr) as bar:
        for start in range(0, len(ids), 500):
            with db.transaction(conn):
                reset = repository.reset_for_retry(conn, ids[start:start + 500])
                if reset:
                    audit.record(conn, "delivery.retry", ("deliveries", channel),
                                 {"ids": [str(d) for d in reset], "forced": force}, actor=audit.operator())
            enqueue_on_their_lanes(current_app, conn, reset)   # each on its trigger's lane, as its first try was
            done += len(reset)
            bar.update(len(ids[start:start + 500]))
    return done


def init_app(app):
    app.cli.add_command(group)
