"""`flask audit verify` and `flask audit anchor`, with `export` and `verify-bundle` from
app/audit/evidence.py; `flask users` (app/audit/subjects.py).

The commands live apart from the chain (app/audit/chain.py) and the anchors (app/audit/anchor.py)
so that both stay free of the CLI and of each other: the anchor writes the chain's head, the
verify command checks the chain against the anchor.
"""
import sys

import click
from flask import current_app
from flask.cli import AppGroup

from .. import db
from . import anchor as anchors, evidence, subjects
from .chain import Finding, seal_all, unsealed, verify


def parse_head(value):
    """`--head POSITION:HASH` as an anchor."""
    position, sep, digest = (value or "").partition(":")
    if not sep or not position.isdigit() or len(digest) != 64:
        raise click.BadParameter("expected POSITION:HASH, e.g. 1042:3f5a... (64 hex digits)")
    return {"position": int(position), "hash": digest.lower(), "at": "--head"}


# ------------------------------------------------------------------------------ `flask audit`

group = AppGroup("audit", help="Check the tamper-evident audit log.")
group.add_command(evidence.export_command)
group.add_command(evidence.verify_bundle_command)


@group.command("verify")
@click.option("--head", "expected_head", default=None, metavar="POSITION:HASH",
              help="require the chain to hold this head (noted from an earlier run or an anchor)")
@click.option("--anchor-file", default=None, metavar="PATH",
              help="check against the newest anchor of this file (default: AUDIT_ANCHOR_PATH)")
def verify_command(expected_head, anchor_file):
    """Seal what can be sealed, check every row's HMAC and link and the latest anchor; exit 1 naming
    the first bad position."""
    anchor = parse_head(expected_head) if expected_head else None
    anchor_file = anchor_file or current_app.config["AUDIT_ANCHOR_PATH"]
    if anchor is None and anchor_file:
        try:
            anchor = anchors.latest(anchor_file)
        except (OSError, anchors.AnchorError) as exc:
            click.echo(f"audit log NOT VERIFIED: cannot read the anchors ({exc})", err=True)
            sys.exit(1)
    with db.connection() as conn, db.without_timeouts(conn):   # the whole chain, however long
        seal_all(conn, wait=True)
        try:
            checked, head = verify(conn, anchor=anchor)
            problem = None
        except Finding as exc:
            problem = exc
        waiting = unsealed(conn)
        conn.commit()
    if problem is not None:
        click.echo(f"audit log BROKEN at {problem}", err=True)
        sys.exit(1)
    tail = (f"; {waiting} newer rows not sealed yet (a transaction that began before they committed is"
            " still open; run again once it ends)") if waiting else ""
    against = (f"; matches the anchor at position {anchor['position']} ({anchor.get('at')})" if anchor
               else "; no anchor to check against (set AUDIT_ANCHOR_PATH or pass --head)")
    if head[0] == 0:
        click.echo(f"audit log intact: 0 rows{tail}{against}")
    else:
        click.echo(f"audit log intact: {checked} rows; head position {head[0]} hash {head[1]}{tail}{against}")


@group.command("anchor")
def anchor_command():
    """Write the chain's head to AUDIT_ANCHOR_PATH / AUDIT_ANCHOR_URL (the worker does every
    AUDIT_ANCHOR_SECONDS)."""
    try:
        head = anchors.anchor_now(current_app)
    except anchors.AnchorError as exc:
        click.echo(f"audit anchor failed: {exc}", err=True)
        sys.exit(1)
    click.echo(f"anchored position {head['position']} hash {head['hash']} at {head['at']}")


def init_app(app):
    app.cli.add_command(group)
    subjects.init_app(app)
