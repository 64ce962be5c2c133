"""The notification history's life: partitions made ahead (partitions.py), the online conversion
of an unpartitioned table (convert.py), closed partitions rewritten in user order (compaction.py),
retention (retention.py); `flask history` and `flask retention` for operators."""
import sys

import click
from flask import current_app
from flask.cli import AppGroup

from .. import db
from . import compaction, convert, partitions, retention

group = AppGroup("history", help="The partitions of the notification history (docs/history.md).")


@group.command("partitions")
def partitions_command():
    """Create the partitions missing ahead of the sequence, then list them."""
    with db.connection() as conn:
        made = partitions.ensure(conn, current_app.config["HISTORY_PARTITION_ROWS"])
        if not partitions.partitioned(conn):
            click.echo("notifications is not partitioned: run `flask history partition`")
            return
        for name, lo, hi, holds_current in partitions.listing(conn):
            click.echo(f"{name}\t{lo}\t{hi}" + ("\t(current or ahead)" if holds_current else ""))
        conn.commit()
    click.echo(f"{made} partition(s) created")


@group.command("partition")
@click.option("--batch-size", type=click.IntRange(100, 1_000_000), default=convert.BATCH, show_default=True,
              help="values of seq copied per transaction")
@click.option("--keep-old", is_flag=True, help="keep the old table as notifications_unpartitioned")
def partition_command(batch_size, keep_old):
    """Convert the history's unpartitioned tables (notifications, deliveries, delivery_attempts)
    into partitioned ones, online (as MIGRATION_DATABASE_URL's role, with the service running)."""
    copied = convert.convert(current_app.config["MIGRATION_DATABASE_URL"], current_app.config["HISTORY_PARTITION_ROWS"],
                             batch=batch_size, keep_old=keep_old, echo=click.echo)
    with db.connection() as conn:
        partitions.ensure(conn, current_app.config["HISTORY_PARTITION_ROWS"])
    click.echo("done: " + (", ".join(f"{table} {rows} rows copied" for table, rows in copied.items())
                           or "nothing to convert"))


@group.command("compact")
def compact_command():
    """Rewrite every closed partition not compacted yet in user order, now, online (what each
    worker does every HISTORY_COMPACT_INTERVAL_SECONDS)."""
    done = compaction.compact_pending(current_app._get_current_object())
    if done is None:
        click.echo("a retention or compaction pass is running; try again later", err=True)
        sys.exit(1)
    for name, rows in done.items():
        click.echo(f"{name}\t{rows}")
    click.echo(f"{len(done)} partition(s) compacted")


def init_app(app):
    app.cli.add_command(group)
    retention.init_app(app)
