"""Channels by name, built from `notifications.yaml`.

Each channel's `type` option names its module in `KINDS` (by default the
channel's own name), so adding a channel is one module here plus
configuration; dispatch and delivery code never name a concrete channel.
"""
import importlib

from ..errors import ConfigError

KINDS = {
    "system": "app.channels.system:SystemChannel",
    "webhook": "app.channels.webhook:WebhookChannel",
    "email": "app.channels.email:EmailChannel",
    "sms": "app.channels.sms:TwilioChannel",
    "twilio": "app.channels.sms:TwilioChannel",
    "apprise": "app.channels.apprise_channel:AppriseChannel",
    "webpush": "app.channels.webpush:WebPushChannel",
}


def _load(path):
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def build(app):
    """Instantiate every enabled channel; a channel of unknown type stops start-up."""
    channels = {}
    for name, options in app.config["DOMAIN"].channels.items():
        kind = options.get("type", name)
        if kind not in KINDS:
            raise ConfigError(app.config["NOTIFICATIONS_CONFIG"], f"channels.{name}.type",
                              f"unknown channel type {kind!r} (known: {', '.join(sorted(KINDS))})")
        channels[name] = _load(KINDS[kind])(name, options, app)
    return channels


def get(app, name):
    return app.extensions["channels"].get(name)


def init_app(app):
    app.extensions["channels"] = build(app)
