"""Service API keys: a name, the SHA-256 of the secret, and the scopes it grants.

Why hashes: the environment (and whatever copies it: CI logs, crash dumps, a
`ps e`) then holds nothing that opens the API. A key is 32 random bytes, so its
unsalted SHA-256 cannot be reversed by search; unlike an HMAC under SECRET_KEY
it also survives a rotation of SECRET_KEY. Why names: audit rows, logs, rate
limits and idempotency scoping use the name, so two keys configured under one
name (old and new) rotate without downtime and without a change of identity.

    API_KEYS=billing:<sha256hex>:trigger+push,ops:<sha256hex>:audit+stats
    API_KEYS=k1,k2          the SPEC's plain form: each key every scope, kept in clear

`API_KEYS_FILE` names a file with one entry a line (`#` starts a comment).
`flask keys new NAME --scopes trigger,push` makes a key and prints its line.
"""
import hashlib
import re
import secrets
from dataclasses import dataclass

from ..errors import ConfigError
from .keyed import keyed_hash

# scope -> what it grants; the endpoint of each is in docs/security/auth.md and the OpenAPI document
SCOPES = {
    "trigger": "queue notifications (POST /v1/notifications/trigger) and follow them (GET .../triggers/{id})",
    "push": "push straight to open streams (POST /v1/notifications/sse)",
    "contacts": "read, set and forget users' contacts (GET/PUT/DELETE .../users/{user_id}/contact)",
    "audit": "read the audit log (GET /v1/notifications/audit), a notification's evidence (GET .../{id}/evidence)"
             " and a user's consent ledger (GET .../users/{user_id}/preferences/history)",
    "stats": "read statistics over every customer (GET /v1/notifications/stats)",
    "deliveries": "reserved for service reads of delivery status (no service endpoint yet; "
                  "users read their own with a token)",
}
ALL_SCOPES = frozenset(SCOPES)
MIN_PLAIN_LENGTH = 32
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
PLAIN_PREFIX = "key-"


@dataclass(frozen=True)
class ApiKey:
    name: str               # what audit rows, logs, limits and idempotency scoping call the key
    scopes: frozenset
    plain: bool             # configured in clear (the SPEC's form)


def digest(secret):
    """The SHA-256 (hex) a key is configured and looked up by."""
    return hashlib.sha256(secret.encode()).hexdigest()


def plain_name(secret, secret_key):
    """A plain key's name: a keyed hash under SECRET_KEY, so a copy of the audit log cannot be
    searched offline for the key (an unsalted sha256(key)[:12] could be, for a short key)."""
    return PLAIN_PREFIX + keyed_hash("api-key", secret, 12, secret=secret_key)


def new_key():
    """A fresh key: 32 random bytes, URL-safe (43 characters)."""
    return secrets.token_urlsafe(32)


def config_line(name, secret, scopes):
    """The `API_KEYS` entry for a key: its name, hash and scopes, never the secret."""
    return f"{name}:{digest(secret)}:{'+'.join(sorted(scopes))}"


def parse_scopes(raw, source="API_KEYS"):
    """`trigger+push` or `trigger,push` to a frozenset, refusing unknown names."""
    scopes = frozenset(s.strip() for s in re.split(r"[+,]", raw) if s.strip())
    unknown = sorted(scopes - ALL_SCOPES)
    if not scopes or unknown:
        raise ConfigError("environment", source, f"unknown scope(s) {unknown or [raw]}; known: {sorted(SCOPES)}")
    return scopes


def check_name(name, source="API_KEYS"):
    if not _NAME.match(name) or name.startswith(PLAIN_PREFIX):
        raise ConfigError("environment", source, f"key name {name!r} must be 1-63 of a-z 0-9 _ . - "
                          f"(not starting with {PLAIN_PREFIX!r}, kept for plain keys)")
    return name


def build_table(entries, secret_key, source="API_KEYS"):
    """{sha256 hex: ApiKey} from configured entries; plain keys are named by a keyed hash.

    Returns the table and the plain entries (for the start-up checks and warning)."""
    table, plain = {}, []
    for entry in entries:
        if entry.count(":") == 2:   # name:sha256hex:scopes (a plain key has no such shape)
            name, hexdigest, scopes = entry.split(":")
            if not _HEX64.match(hexdigest):
                raise ConfigError("environment", source, f"key {name!r}: the middle part must be the key's "
                                  "SHA-256 in hex (64 characters); `flask keys new` prints the line")
            hexdigest = hexdigest.lower()
            key = ApiKey(check_name(name, source), parse_scopes(scopes, source), plain=False)
        else:
            hexdigest = digest(entry)
            key = ApiKey(plain_name(entry, secret_key), ALL_SCOPES, plain=True)
            plain.append(entry)
        if hexdigest in table and table[hexdigest] != key:
            raise ConfigError("environment", source, f"one key is configured twice, as {table[hexdigest].name!r} "
                              f"and {key.name!r}")
        table[hexdigest] = key
    if not table:
        raise ConfigError("environment", "API_KEYS", "needs at least one key (or API_KEYS_FILE)")
    return table, plain


def read_file(path):
    """The entries of an API_KEYS_FILE: one a line, blank lines and `#` comments skipped."""
    try:
        with open(path) as handle:
            lines = handle.read().splitlines()
    except OSError as exc:
        raise ConfigError("environment", "API_KEYS_FILE", f"cannot read {path!r}: {exc.strerror}")
    return [line.split("#", 1)[0].strip() for line in lines if line.split("#", 1)[0].strip()]
