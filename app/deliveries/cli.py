"""Operator commands: `flask deliveries failed` and `flask deliveries retry`."""
import sys

import click
from flask.cli import AppGroup

from .. import audit, db
from ..jobs_queue import enqueue_deliveries
from ..redact import redact
from . import repository

group = AppGroup("deliveries", help="Inspect and re-enqueue deliveries.")


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


@group.command("retry")
@click.option("--channel", default=None, help="only this channel")
@click.option("--limit", type=int, default=None, help="at most this many")
def retry_command(channel, limit):
    """Re-enqueue failed deliveries with a fresh attempt budget."""
    with db.connection() as conn:
        ids = repository.failed(conn, channel, limit)
        conn.commit()
        done = 0
        with click.progressbar(length=len(ids), label="re-enqueuing", file=sys.stderr) as bar:
            for start in range(0, len(ids), 500):
                with db.transaction(conn):
                    reset = repository.reset_for_retry(conn, ids[start:start + 500])
                    if reset:
                        audit.record(conn, "delivery.retry", ("deliveries", channel),
                                     {"ids": [str(d) for d in reset]}, actor=audit.operator())
                enqueue_deliveries(reset)
                done += len(reset)
                bar.update(len(ids[start:start + 500]))
    click.echo(f"{done} deliveries re-enqueued")


def init_app(app):
    app.cli.add_command(group)
