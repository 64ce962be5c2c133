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


def _make(app, name, options, where):
    kind = options.get("type", name)
    if kind not in KINDS:
        raise ConfigError(app.config["NOTIFICATIONS_CONFIG"], f"{where}.type",
                          f"unknown channel type {kind!r} (known: {', '.join(sorted(KINDS))})")
    return _load(KINDS[kind])(name, options, app)


def build(app):
    """Instantiate every enabled channel; a channel of unknown type stops start-up. A channel with
    `providers` is a FailoverChannel over one channel per provider (failover.py)."""
    from .failover import FailoverChannel
    channels = {}
    for name, options in app.config["DOMAIN"].channels.items():
        if "providers" in options:
            channels[name] = FailoverChannel(name, options, app,
                                             lambda pname, poptions, where: _make(app, pname, poptions, where))
        else:
            channels[name] = _make(app, name, options, f"channels.{name}")
    _one_provider_per_name(app, channels)
    return channels


def _one_provider_per_name(app, channels):
    """A provider is addressed by its name alone (`POST /v1/providers/{name}/reports`, metrics): a
    channel's own name, or each name in its `providers` list, must not name a provider of another
    channel."""
    seen = {}
    for name, channel in channels.items():
        providers = getattr(channel, "providers", None)
        named = ([(p.name, f"channels.{name}.providers[{i}].name") for i, (p, _, _) in enumerate(providers)]
                 if providers else [(name, f"channels.{name}")])
        for provider, where in named:
            if provider in seen and seen[provider] != name:
                raise ConfigError(app.config["NOTIFICATIONS_CONFIG"], where,
                                  f"provider name {provider!r} is taken by channel {seen[provider]!r}: provider"
                                  " names are unique across channels (a delivery report names only the provider)")
            seen[provider] = name


def get(app, name):
    return app.extensions["channels"].get(name)


def init_app(app):
    app.extensions["channels"] = build(app)
