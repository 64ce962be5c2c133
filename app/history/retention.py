"""Retention: a group's notifications older than its `retention_days` are deleted.

`retention_days` is set per group in notifications.yaml; a group without it
keeps its notifications for ever. When every group has one, a purge first drops
the partitions of the history (partitions.py) whose newest notification is past
the longest of them: a partition at a time, one `retention.drop_partition` audit
row each, no row deleted one by one. Then it deletes, group by group, the
notifications created before `now() - retention_days`, with their deliveries
and delivery attempts (migration 0025's trigger), in batches of `BATCH` rows,
each batch one short transaction with one `retention.purge` audit row. Audit
rows are never deleted.

Who runs it:
- every worker process (`python -m workers`) runs `schedule()` in a daemon
  thread: one purge every `RETENTION_INTERVAL_SECONDS` (app config, default one
  hour; the first one an interval after start). A session-level advisory
  try-lock lets one purge run at a time across all workers; the others skip
  that turn. The RQ job function `workers.jobs.purge_expired` does the same
  pass, for enqueuing one by hand.
- operators: `flask retention purge` (progress bar on stderr, `--dry-run`).
"""
import datetime
import logging
import sys
import threading

import click
from flask.cli import AppGroup

from .. import audit, db
from ..redact import summary
from . import partitions

log = logging.getLogger(__name__)
BATCH = 5000
INTERVAL_SECONDS = 3600


def policies(domain):
    """(group name, retention days) for every group that has a retention."""
    return [(g.name, g.retention_days) for g in domain.groups.values() if g.retention_days]


def cutoffs(conn, domain, now=None):
    """(group, days, cutoff): rows of `group` created before `cutoff` are expired."""
    if now is None:
        with conn.cursor() as cur:
            cur.execute("SELECT now()")
            now = cur.fetchone()[0]
    return [(group, days, now - datetime.timedelta(days=days)) for group, days in policies(domain)]


def count_expired(conn, domain, now=None):
    """{group: expired rows}, for a progress bar or a dry run."""
    counts = {}
    with conn.cursor() as cur:
        for group, _, cutoff in cutoffs(conn, domain, now):
            cur.execute("SELECT count(*) FROM notifications WHERE type = %s AND created_at < %s", (group, cutoff))
            counts[group] = cur.fetchone()[0]
    conn.commit()
    return counts


def purge(conn, domain, *, actor=audit.SYSTEM_RETENTION, batch=BATCH, now=None, progress=None):
    """Delete every expired notification; returns {group: deleted}. `progress(n)` after each batch."""
    deleted = {}
    targets = cutoffs(conn, domain, now)
    conn.commit()
    if now is None and targets and len(targets) == len(domain.groups) and partitions.partitioned(conn):
        keep = max(days for _, days, _ in targets)

        def record(conn, name, held):
            audit.record(conn, "retention.drop_partition", ("partition", name),
                         {"deleted": held, "older_than_days": keep}, actor=actor)
            if progress is not None and held:
                progress(held)
        deleted["(partitions)"] = sum(partitions.drop_expired(conn, keep, record).values())
    for group, days, cutoff in targets:
        deleted[group] = 0
        while True:
            with db.transaction(conn):
                with conn.cursor() as cur:
                    cur.execute("DELETE FROM notifications WHERE id IN (SELECT id FROM notifications"
                                " WHERE type = %s AND created_at < %s LIMIT %s FOR UPDATE SKIP LOCKED)",
                                (group, cutoff, batch))
                    done = cur.rowcount
                if done:
                    audit.record(conn, "retention.purge", ("group", group),
                                 {"deleted": done, "created_before": cutoff, "retention_days": days}, actor=actor)
            deleted[group] += done
            if progress is not None and done:
                progress(done)
            if done < batch:
                break
    return deleted


def purge_exclusive(app, **options):
    """`purge` unless another process is purging right now (then None). A long pass by design:
    free of the pool's statement timeout (app/db.py), each batch still its own short transaction."""
    with app.app_context(), db.connection() as conn, db.without_timeouts(conn):
        with db.session_lock(conn, db.Locks.RETENTION) as got:
            if not got:
                return None
            deleted = purge(conn, app.config["DOMAIN"], **options)
    if any(deleted.values()):
        log.info("retention purge deleted %s", deleted)
    return deleted


def _loop(app, stop):
    interval = float(app.config.get("RETENTION_INTERVAL_SECONDS", INTERVAL_SECONDS))
    while not stop.wait(interval):
        try:
            purge_exclusive(app)
        except Exception as exc:  # PostgreSQL down: next turn
            log.warning("retention purge failed: %s", summary(exc))


def schedule(app, stop):
    """Run the periodic purge in a daemon thread of a worker process until `stop` is set."""
    if not policies(app.config["DOMAIN"]):
        return None
    thread = threading.Thread(target=_loop, args=(app, stop), name="retention", daemon=True)
    thread.start()
    return thread


# ------------------------------------------------------------------------------ `flask retention`

group = AppGroup("retention", help="Delete notifications past their group's retention.")


@group.command("purge")
@click.option("--dry-run", is_flag=True, help="only count what would be deleted")
@click.option("--batch-size", type=click.IntRange(1, 100_000), default=BATCH, show_default=True)
def purge_command(dry_run, batch_size):
    """Delete expired notifications and their deliveries now (audit rows stay)."""
    from flask import current_app
    app = current_app._get_current_object()
    domain = app.config["DOMAIN"]
    if not policies(domain):
        click.echo("no group has retention_days: nothing to purge")
        return
    with db.connection() as conn, db.without_timeouts(conn):   # a count over years of rows
        expired = count_expired(conn, domain)
    if dry_run:
        for name, count in expired.items():
            click.echo(f"{name}\t{count}")
        click.echo(f"{sum(expired.values())} notifications would be deleted")
        return
    with click.progressbar(length=sum(expired.values()), label="purging", file=sys.stderr) as bar:
        deleted = purge_exclusive(app, actor=audit.operator(), batch=batch_size, progress=bar.update)
    if deleted is None:
        click.echo("another purge is running; try again later", err=True)
        sys.exit(1)
    for name, count in deleted.items():
        click.echo(f"{name}\t{count}")
    click.echo(f"{sum(deleted.values())} notifications deleted")


def init_app(app):
    app.cli.add_command(group)
