"""Web Push (RFC 8030/8291/8292): browsers' subscriptions, VAPID keys, the public-only transport.

The channel itself is app/channels/webpush.py; this package owns what it needs: the subscription
endpoints (routes.py), their rows (repository.py), key and endpoint checks (keys.py) and the
session that will not connect to private addresses (transport.py). Without VAPID settings the
channel is off: start-up says so once, the endpoints answer 503 `webpush_not_configured`, and
deliveries on a `webpush` channel are skipped.
"""
import logging

import click
from flask.cli import AppGroup

from . import keys

log = logging.getLogger(__name__)
group = AppGroup("webpush", help="Web Push (VAPID) keys.")


def configured(app):
    return bool(app.config.get("VAPID_PUBLIC_KEY"))


@group.command("keys")
def keys_command():
    """Print a new VAPID key pair as environment settings."""
    public, private = keys.new_pair()
    click.echo(f"VAPID_PUBLIC_KEY={public}")
    click.echo(f"VAPID_PRIVATE_KEY={private}")


def init_app(app):
    app.cli.add_command(group)
    uses = [name for name, options in app.config["DOMAIN"].channels.items()
            if options.get("type", name) == "webpush"]
    if uses and not configured(app) and not app.extensions.get("webpush_off_logged"):
        app.extensions["webpush_off_logged"] = True
        log.warning("web push is off: VAPID_PUBLIC_KEY, VAPID_PRIVATE_KEY and VAPID_SUBJECT are not set "
                    "(channels %s skip their deliveries)", ", ".join(uses))
