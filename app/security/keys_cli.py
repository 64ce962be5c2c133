"""`flask keys new NAME --scopes trigger,push`: make an API key and the line that configures it.

The key is printed once, for the calling service's secret store; the service
itself is configured with the line, which holds the key's SHA-256, never the
key. To rotate, configure the new line beside the old one (same name), move
the caller to the new key, then drop the old line: both work in between and
the audit log names both the same.
"""
import click
from flask.cli import AppGroup

from . import api_keys
from ..errors import ConfigError

keys_cli = AppGroup("keys", help="Make API keys (scoped, configured by hash).")


@keys_cli.command("new")
@click.argument("name")
@click.option("--scopes", required=True, help=f"comma- or +-separated, of: {', '.join(api_keys.SCOPES)}")
def new(name, scopes):
    """Print a new key for NAME and its API_KEYS entry."""
    try:
        api_keys.check_name(name, "NAME")
        granted = api_keys.parse_scopes(scopes, "--scopes")
    except ConfigError as exc:
        raise click.UsageError(exc.problem)
    secret = api_keys.new_key()
    click.echo(f"key (give it to {name}; it is not shown again): {secret}")
    click.echo(f"API_KEYS entry (or a line of API_KEYS_FILE): {api_keys.config_line(name, secret, granted)}")


def init_app(app):
    app.cli.add_command(keys_cli)
