"""The application factory."""
from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from . import api, bus, db, errors, health, history, logs, metrics, migrate, ratelimit, replica, webpush
from .audit import cli as audit_cli
from .bus import deployment
from .channels import registry as channels
from .config import load_settings
from .deliveries import cli as deliveries_cli
from .notifications import inbox_page
from .security import auth, headers
from .streams import handoff as stream_handoff


def create_app(config=None):
    """Build the app from the environment plus `config` overrides (tests pass theirs)."""
    app = Flask(__name__)
    app.config.update(load_settings(config))
    app.json.sort_keys = False
    logs.init_app(app)
    auth.init_app(app)
    headers.init_app(app)
    errors.init_app(app)
    db.init_app(app)
    replica.init_app(app)
    deployment.init_app(app)
    bus.init_app(app)
    migrate.init_app(app)
    channels.init_app(app)
    webpush.init_app(app)
    deliveries_cli.init_app(app)
    audit_cli.init_app(app)
    history.init_app(app)
    app.register_blueprint(health.blp)
    inbox_page.init_app(app)
    metrics.init_app(app)
    api.init_app(app, _blueprints())
    ratelimit.init_app(app)
    stream_handoff.init_app(app)
    _trust_proxies(app, app.config["PROXY_HOPS"])
    return app


def _trust_proxies(app, hops):
    """Behind `hops` proxies the client is the address they forward (rate limits, audit, access
    logs); with none, X-Forwarded-* is a client's claim and is ignored. Outermost, so every layer
    below sees the same address."""
    if hops:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops)


def _blueprints():
    """Every REST blueprint, imported here so importing `app` stays cheap."""
    from .acks.routes import blp as acks
    from .audit.evidence_routes import blp as evidence
    from .audit.routes import blp as audit_log
    from .consent.routes import blp as consent
    from .contacts.routes import blp as contacts
    from .deliveries.report_routes import blp as reports
    from .deliveries.routes import blp as deliveries
    from .dispatch.routes import blp as dispatch
    from .notifications.routes import blp as notifications
    from .notifications.stats import blp as stats
    from .preferences.routes import blp as preferences
    from .streams.routes import blp as streams
    from .webpush.routes import blp as webpush_subscriptions
    return [streams, dispatch, preferences, consent, notifications, acks, deliveries, contacts, stats, audit_log,
            evidence, webpush_subscriptions, reports]
