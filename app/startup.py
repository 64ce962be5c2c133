"""Entry-point helper: a bad configuration is one line on stderr and exit 2."""
import sys

from .errors import ConfigError


def create_app_or_exit(config=None):
    from . import create_app
    try:
        return create_app(config)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr, flush=True)
        raise SystemExit(2)
