"""The audit chain's HMAC keys: which one seals new rows, which older ones still verify.

Why a key of its own, outside the database: with plain SHA-256 anyone who can
write the table (its owner, a DBA, whoever restores a backup) can edit a row
and recompute every hash after it. An HMAC under a key that lives only in the
service's environment cannot be recomputed without it. Each sealed row names
its key (`key_id`), so the key rotates: the new key seals from now on, the old
one stays in `AUDIT_HMAC_KEYS_PREVIOUS` for as long as its rows must verify.

`AUDIT_HMAC_KEY` is `<key id>:<secret>` or a bare secret, whose key id is then
`k` + the first 12 hex digits of its SHA-256 (naming the key, revealing nothing
of a 32-byte random secret).
"""
import hashlib
import re

from ..errors import ConfigError

DEV_KEY = ("dev", "dev-only-audit-hmac-key-never-use-in-production-0123")
MIN_BYTES = 32
_KEY_ID = re.compile(r"^[A-Za-z0-9._-]{1,32}$")


class Keyring:
    """`current` (key id, secret bytes) seals; `secrets` maps every known key id to its secret."""

    def __init__(self, current, previous=()):
        self.current_id, current_secret = current
        self.secrets = {kid: secret.encode() for kid, secret in previous}
        self.secrets[self.current_id] = current_secret.encode()

    @property
    def current(self):
        return self.current_id, self.secrets[self.current_id]

    def secret(self, key_id):
        """The secret of `key_id`, or None when this service does not hold it."""
        return self.secrets.get(key_id)


def parse(name, raw, development):
    """(key id, secret) from one configured value; ConfigError naming `name` when malformed."""
    kid, sep, secret = raw.partition(":")
    if not sep or not _KEY_ID.match(kid):
        kid, secret = "k" + hashlib.sha256(raw.encode()).hexdigest()[:12], raw
    if not development and len(secret.encode()) < MIN_BYTES:
        raise ConfigError("environment", name, f"the secret is {len(secret.encode())} bytes; use at least "
                          f"{MIN_BYTES} random bytes (e.g. python -c 'import secrets; print(secrets.token_urlsafe(48))')")
    if not development and secret == DEV_KEY[1]:
        raise ConfigError("environment", name, "is the published development key; set a secret of your own")
    return kid, secret


def from_settings(settings):
    """The keyring of AUDIT_HMAC_KEY and AUDIT_HMAC_KEYS_PREVIOUS (a development key in development)."""
    development = settings["DEVELOPMENT"]
    raw = settings["AUDIT_HMAC_KEY"]
    if not raw:
        if not development:
            raise ConfigError("environment", "AUDIT_HMAC_KEY", "is required outside development: the audit chain's"
                              " HMAC key, kept outside the database (docs/audit.md)")
        current = DEV_KEY
    else:
        current = parse("AUDIT_HMAC_KEY", raw, development)
    previous = [parse("AUDIT_HMAC_KEYS_PREVIOUS", value, development) for value in settings["AUDIT_HMAC_KEYS_PREVIOUS"]]
    if any(kid == current[0] and secret != current[1] for kid, secret in previous):
        raise ConfigError("environment", "AUDIT_HMAC_KEYS_PREVIOUS", f"names key id {current[0]!r} with another"
                          " secret than AUDIT_HMAC_KEY")
    return Keyring(current, previous)
