"""The application factory."""
import logging

from flask import Flask

from . import api, db, errors, health, migrate, redis_client
from .config import load_settings


def create_app(config=None):
    """Build the app from the environment plus `config` overrides (tests pass theirs)."""
    app = Flask(__name__)
    app.config.update(load_settings(config))
    app.json.sort_keys = False
    logging.basicConfig(level=logging.INFO)
    errors.init_app(app)
    db.init_app(app)
    redis_client.init_app(app)
    migrate.init_app(app)
    app.register_blueprint(health.blp)
    from .notifications.routes import blp as notifications_blp
    api.init_app(app, [notifications_blp])
    return app
