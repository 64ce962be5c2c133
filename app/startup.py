"""Entry-point helper: a bad configuration is one line on stderr and exit 2."""
import sys

from .errors import ConfigError


def create_app_or_exit(config=None, check_role=False):
    """`check_role`: a service process (the worker; gunicorn checks in its master), not the release
    or another CLI command, which may run as the owner (app/audit/guard.py)."""
    from . import create_app
    from .audit.guard import refuse_audit_rewriters
    try:
        app = create_app(config)
        if check_role:
            refuse_audit_rewriters(app.config)
        return app
    except ConfigError as exc:
        print(str(exc), file=sys.stderr, flush=True)
        raise SystemExit(2)
