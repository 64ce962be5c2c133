"""Settings from the environment, read once and validated at start-up.

Everything the service needs from outside comes through `load_settings`; a
missing or malformed value raises `ConfigError` naming the variable, which the
entry points turn into one line on stderr and a non-zero exit.
"""
import os
from urllib.parse import urlparse

from .audit import keys as audit_keys
from .security import api_keys, jwks
from .domain import load_domain
from .errors import ConfigError
from .webpush import keys as webpush_keys

DEFAULTS = {
    "DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/notifications",
    # The release's connection, as the owner of the schema (default: DATABASE_URL, for development).
    # With it set, DATABASE_URL names the application role the release creates and grants (docs/audit.md).
    "MIGRATION_DATABASE_URL": "",
    # A streaming replica for inbox lists, counts, stats and stream replays (app/replica.py); empty: none.
    "DATABASE_REPLICA_URL": "",
    "REPLICA_MAX_LAG_SECONDS": "5",        # a replica further behind gets no reads until it catches up
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    # The stream channels' Redis (default: REDIS_URL); a node of a Redis Cluster spreads them over its
    # masters with sharded pub/sub (app/streams/hub.py). RQ, tickets and limits stay on REDIS_URL.
    "PUBSUB_URL": "",
    "REDIS_PREFIX": "",                    # empty: notif:<hash of the database's identity>: (app/bus/deployment.py)
    "JWT_SECRET": "",
    "JWT_SECRET_PREVIOUS": "",             # earlier HS256 secrets still accepted, comma-separated (rotation)
    "JWT_PUBLIC_KEY": "",
    "JWT_JWKS_URL": "",                    # an identity provider's JWKS endpoint (app/security/jwks.py)
    "JWT_ALGORITHMS": "",
    "JWT_AUDIENCE": "",
    "JWT_ISSUER": "",
    "API_KEYS": "",
    "API_KEYS_FILE": "",                   # more API_KEYS entries, one a line (app/security/api_keys.py)
    "JWT_MAX_LIFETIME_SECONDS": "86400",   # a token whose exp - (iat or now) is longer is refused
    "NOTIFICATIONS_CONFIG": "notifications.yaml",
    "QUEUE_CONFIG": "queue.yaml",
    "DB_POOL_SIZE": "20",
    "DB_POOL_TIMEOUT": "5",
    "DB_STATEMENT_TIMEOUT_MS": "15000",    # a statement running longer is cancelled: 503 query_timeout (0: none)
    "DB_IDLE_TX_TIMEOUT_MS": "60000",      # a session idle inside a transaction longer is ended (0: none)
    "RETRY_STALE_URGENT_SECONDS": "3600",  # `flask deliveries retry` skips urgent/locked alerts older (--force)
    "RETRY_CONFIRM_ABOVE": "100",          # `flask deliveries retry` asks before re-enqueuing more (--yes)
    "MAX_CONTENT_LENGTH": str(1024 * 1024),   # a trigger to batch.max_user_ids (10,000) users is ~390 KB
    "CORS_ORIGINS": "",
    "SSE_KEEPALIVE_SECONDS": "15",
    "SSE_RETRY_MS": "3000",
    "SSE_MAX_STREAMS_PER_USER": "10",
    "SSE_QUEUE_SIZE": "256",
    "SSE_REPLAY_LIMIT": "500",
    "SSE_REPLAY_MAX_BYTES": str(1024 * 1024),   # a replay larger than this is one `reset` event instead
    "SSE_BACKLOG_MAX_BYTES": str(256 * 1024),   # a stream whose unsent live bytes pass this is cut (resumes by cursor)
    "SSE_TICKET_TTL_SECONDS": "60",
    "SSE_PEER_TIMEOUT_SECONDS": "30",      # a client unreachable this long (no ACK) is cut
    "SSE_MAX_STREAMS_PER_WORKER": "0",     # 0: the process's open-file limit less a reserve
    "MAIL_SERVER": "localhost",
    "MAIL_PORT": "25",
    "MAIL_USE_TLS": "false",
    "MAIL_USE_SSL": "false",
    "MAIL_USERNAME": "",
    "MAIL_PASSWORD": "",
    "MAIL_DEFAULT_SENDER": "notifications@localhost",
    "MAIL_TIMEOUT": "10",
    # The service's address as users and providers reach it: links in emails; once set, Twilio is told to
    # report delivery to {PUBLIC_URL}/v1/providers/{name}/reports (docs/channels.md#delivery-reports).
    "PUBLIC_URL": "http://localhost:8000",
    "SMS_MAX_SEGMENTS": "2",               # an SMS body is cut to this many segments (1..10; app/channels/sms.py)
    "RATE_LIMITS_ENABLED": "true",
    "INBOX_PAGE_ENABLED": "false",
    # Development mode: `./dev up` and the test suite set it; a deploy never does. Outside it, start-up
    # refuses development secrets (docs/security.md).
    "DEVELOPMENT": "false",
    # The service's own secret for keyed hashes and signatures (app/security/keyed.py); required outside development.
    "SECRET_KEY": "",
    # The audit chain's HMAC key, `<key id>:<secret>`, never stored in the database; required outside
    # development. Earlier keys, comma-separated, still verify the rows they sealed (app/audit/keys.py).
    "AUDIT_HMAC_KEY": "",
    "AUDIT_HMAC_KEYS_PREVIOUS": "",
    # Where the chain's head is anchored outside the database (app/audit/anchor.py), and how often the
    # worker does it.
    "AUDIT_ANCHOR_PATH": "",
    "AUDIT_ANCHOR_URL": "",
    "AUDIT_ANCHOR_SECONDS": "300",
    # Bearer token of the operator's diagnostics: /metrics needs it once set; /healthz?greenlets=1
    # (a scan of the heap) is served only with it (docs/security/http.md).
    "METRICS_TOKEN": "",
    # Proxies in front of the service whose X-Forwarded-For / -Proto are believed (0: none, the
    # peer's address is the client's).
    "PROXY_HOPS": "0",
    # Hosts a trigger's `callback_url` may name (comma-separated; empty: no callbacks), and the secret
    # its ack / ack_overdue events are signed with (HMAC-SHA256; docs/acknowledgements.md).
    "ACK_CALLBACK_HOSTS": "",
    "ACK_CALLBACK_SECRET": "",
    # Web Push (app/webpush/): the VAPID key pair as base64url (`flask webpush keys`) and the contact
    # push services may write to (mailto: or https:). None set: the channel is off; some: ConfigError.
    "VAPID_PUBLIC_KEY": "",
    "VAPID_PRIVATE_KEY": "",
    "VAPID_SUBJECT": "",
    # A private CA for push services (tests); and, in development only, `host=ip` pairs to connect
    # to instead of resolving (the only private addresses the sender will reach: transport.py).
    "WEBPUSH_CA_FILE": "",
    "WEBPUSH_RESOLVE": "",
    # The priority lanes a worker (`python -m workers`) takes jobs from, in this order (app/queues/lanes.py);
    # empty: all of them. `urgent`: a worker kept for the urgent lane (Procfile).
    "WORKER_LANES": "",
    # Values of `seq` per partition of the notification history (docs/history.md): about a day's
    # notifications at the peak rate; the worker keeps two such partitions ahead.
    "HISTORY_PARTITION_ROWS": "10000000",
    # Seconds between a worker's compaction passes: each closed partition rewritten once in user
    # order, so an inbox page reads a few heap pages, not one per notification (docs/history.md
    # "Compaction"); 0: never.
    "HISTORY_COMPACT_INTERVAL_SECONDS": "3600",
}

DEV_SECRET_KEY = "dev-only-secret-key-never-use-in-production-0123456789"

INTS = ("DB_POOL_SIZE", "MAX_CONTENT_LENGTH", "SSE_RETRY_MS", "SSE_MAX_STREAMS_PER_USER",
        "SSE_QUEUE_SIZE", "SSE_REPLAY_LIMIT", "SSE_TICKET_TTL_SECONDS", "MAIL_PORT",
        "SSE_MAX_STREAMS_PER_WORKER", "JWT_MAX_LIFETIME_SECONDS", "PROXY_HOPS", "SMS_MAX_SEGMENTS",
        "DB_STATEMENT_TIMEOUT_MS", "DB_IDLE_TX_TIMEOUT_MS", "RETRY_STALE_URGENT_SECONDS", "RETRY_CONFIRM_ABOVE",
        "SSE_REPLAY_MAX_BYTES", "SSE_BACKLOG_MAX_BYTES", "AUDIT_ANCHOR_SECONDS",
        "HISTORY_PARTITION_ROWS")
FLOATS = ("DB_POOL_TIMEOUT", "REPLICA_MAX_LAG_SECONDS", "SSE_KEEPALIVE_SECONDS", "MAIL_TIMEOUT", "SSE_PEER_TIMEOUT_SECONDS",
          "HISTORY_COMPACT_INTERVAL_SECONDS")
BOOLS = ("MAIL_USE_TLS", "MAIL_USE_SSL", "RATE_LIMITS_ENABLED", "INBOX_PAGE_ENABLED", "DEVELOPMENT")
LISTS = ("API_KEYS", "CORS_ORIGINS", "JWT_ALGORITHMS", "JWT_SECRET_PREVIOUS", "AUDIT_HMAC_KEYS_PREVIOUS",
         "ACK_CALLBACK_HOSTS", "WEBPUSH_RESOLVE", "WORKER_LANES")


def _convert(name, raw):
    """Turn one raw string into its typed value, or say precisely why not."""
    if name in INTS:
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError("environment", name, f"must be a whole number, got {raw!r}")
        if value < 0:
            raise ConfigError("environment", name, "must not be negative")
        return value
    if name in FLOATS:
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError("environment", name, f"must be a number, got {raw!r}")
        if value <= 0:
            raise ConfigError("environment", name, "must be greater than zero")
        return value
    if name in BOOLS:
        lowered = raw.strip().lower()
        if lowered not in ("1", "0", "true", "false", "yes", "no", "on", "off", ""):
            raise ConfigError("environment", name, f"must be true or false, got {raw!r}")
        return lowered in ("1", "true", "yes", "on")
    if name in LISTS:
        return [item.strip() for item in raw.split(",") if item.strip()]
    return raw


def load_settings(overrides=None, environ=None):
    """Build the app's settings from defaults, the environment and overrides."""
    environ = os.environ if environ is None else environ
    overrides = dict(overrides or {})
    # set by the deploy (not the development default): providers are told to report there
    settings = {"PUBLIC_URL_GIVEN": bool(overrides.get("PUBLIC_URL") or environ.get("PUBLIC_URL"))}
    for name, default in DEFAULTS.items():
        if name in overrides:
            value = overrides.pop(name)
            settings[name] = _convert(name, value) if isinstance(value, str) else value
        else:
            settings[name] = _convert(name, environ.get(name, default))
    settings.update(overrides)
    _check_secret_key(settings)
    _check_streams(settings)
    _check_auth(settings)
    _check_audit(settings)
    settings["PUBSUB_URL"] = settings["PUBSUB_URL"] or settings["REDIS_URL"]
    webpush_keys.check_settings(settings)
    if settings["ACK_CALLBACK_HOSTS"] and len(settings["ACK_CALLBACK_SECRET"]) < 32:
        raise ConfigError("environment", "ACK_CALLBACK_SECRET", "must be at least 32 characters when "
                          "ACK_CALLBACK_HOSTS is set (it signs the callbacks)")
    if settings["HISTORY_PARTITION_ROWS"] < 1000:
        raise ConfigError("environment", "HISTORY_PARTITION_ROWS", "must be at least 1000 (values of `seq` per"
                          " partition; about a day's notifications at the peak rate)")
    if not 1 <= settings["SMS_MAX_SEGMENTS"] <= 10:   # 10 GSM-7 segments: 1,530 of Twilio's 1,600 characters
        raise ConfigError("environment", "SMS_MAX_SEGMENTS", "must be between 1 and 10")
    _check_lanes(settings)
    if not settings["DEVELOPMENT"]:
        _refuse_development_secrets(settings)
    settings["DOMAIN"] = load_domain(settings["NOTIFICATIONS_CONFIG"], settings["QUEUE_CONFIG"])
    from .db import check_certificate   # last, being a round trip; gunicorn's master, the worker, the release
    check_certificate(settings["DATABASE_URL"])
    if settings["MIGRATION_DATABASE_URL"] != settings["DATABASE_URL"]:
        check_certificate(settings["MIGRATION_DATABASE_URL"], "MIGRATION_DATABASE_URL")
    if settings["DATABASE_REPLICA_URL"]:
        check_certificate(settings["DATABASE_REPLICA_URL"], "DATABASE_REPLICA_URL")
    return settings


def _check_lanes(settings):
    from .domain import LANES
    lanes = settings["WORKER_LANES"]
    unknown = [lane for lane in lanes if lane not in LANES]
    if unknown or len(set(lanes)) != len(lanes):
        raise ConfigError("environment", "WORKER_LANES", f"must list some of {', '.join(LANES)} once each, "
                          f"got {','.join(lanes)!r}")
    # served from most to least urgent, whatever order they are written in
    settings["WORKER_LANES"] = sorted(lanes, key=LANES.index) or list(LANES)


SPEC_KEEPALIVE_SECONDS = 20   # the SPEC: a keep-alive at least this often, for proxies that cut at 30-55 s


def _check_streams(settings):
    """Stream settings that would break the SPEC's promises (docs/security/streams.md)."""
    if settings["SSE_KEEPALIVE_SECONDS"] > SPEC_KEEPALIVE_SECONDS:
        raise ConfigError("environment", "SSE_KEEPALIVE_SECONDS", f"is {settings['SSE_KEEPALIVE_SECONDS']:g}; "
                          f"the SPEC promises a keep-alive at least every {SPEC_KEEPALIVE_SECONDS} s")


def _check_auth(settings):
    """Refuse to start with no way to verify a token or a key."""
    if not settings["JWT_SECRET"] and not settings["JWT_PUBLIC_KEY"] and not settings["JWT_JWKS_URL"]:
        raise ConfigError("environment", "JWT_SECRET", "is required (or JWT_PUBLIC_KEY or JWT_JWKS_URL)")
    if settings["JWT_SECRET_PREVIOUS"] and not settings["JWT_SECRET"]:
        raise ConfigError("environment", "JWT_SECRET_PREVIOUS", "needs a current JWT_SECRET")
    settings["JWT_JWKS"] = _jwks_keys(settings)
    entries = list(settings["API_KEYS"])
    if settings["API_KEYS_FILE"]:
        entries += api_keys.read_file(settings["API_KEYS_FILE"])
    settings["API_KEY_TABLE"], settings["PLAIN_API_KEYS"] = api_keys.build_table(entries, settings["SECRET_KEY"])
    if settings["JWT_MAX_LIFETIME_SECONDS"] < 1:
        raise ConfigError("environment", "JWT_MAX_LIFETIME_SECONDS", "must be at least 1")
    key = settings["JWT_PUBLIC_KEY"]
    if key and not key.lstrip().startswith("-----BEGIN"):
        if not os.path.isfile(key):
            raise ConfigError("environment", "JWT_PUBLIC_KEY", "is neither a PEM key nor a readable file")
        with open(key) as handle:
            settings["JWT_PUBLIC_KEY"] = handle.read()
    if not settings["JWT_ALGORITHMS"]:
        algorithms = []
        if settings["JWT_SECRET"]:
            algorithms.append("HS256")
        if settings["JWT_PUBLIC_KEY"] or settings["JWT_JWKS_URL"]:
            algorithms.append("RS256")
        if settings["JWT_JWKS_URL"]:
            algorithms.append("ES256")
        settings["JWT_ALGORITHMS"] = algorithms
    for alg in settings["JWT_ALGORITHMS"]:
        if alg not in ("HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256"):
            raise ConfigError("environment", "JWT_ALGORITHMS", f"unsupported algorithm {alg!r}")


def _jwks_keys(settings):
    """The JWKS endpoint decides which tokens are genuine: fetched in clear, whoever sits on the
    path could serve their own key, so https is required outside development. A set of an IdP
    signs tokens for every application of the realm: outside development JWT_AUDIENCE is required."""
    url = settings["JWT_JWKS_URL"]
    if not url:
        return None
    parsed = urlparse(url)
    allowed = ("https", "http") if settings["DEVELOPMENT"] else ("https",)
    if parsed.scheme not in allowed or not parsed.hostname:
        raise ConfigError("environment", "JWT_JWKS_URL", f"must be an https:// URL, got {url!r}"
                          + ("" if settings["DEVELOPMENT"] else " (http:// only with DEVELOPMENT=true)"))
    if not settings["DEVELOPMENT"] and not settings["JWT_AUDIENCE"]:
        raise ConfigError("environment", "JWT_AUDIENCE", "is required with JWT_JWKS_URL outside development: "
                          "the identity provider's keys also sign tokens meant for other applications")
    return jwks.JwksKeys(url)


def _check_audit(settings):
    """The chain's keys, and where its head is anchored (docs/audit.md)."""
    settings["AUDIT_KEYS"] = audit_keys.from_settings(settings)
    if settings["AUDIT_ANCHOR_SECONDS"] < 1:
        raise ConfigError("environment", "AUDIT_ANCHOR_SECONDS", "must be at least 1")
    url = settings["AUDIT_ANCHOR_URL"]
    if url:
        parsed = urlparse(url)
        allowed = ("https", "http") if settings["DEVELOPMENT"] else ("https",)
        if parsed.scheme not in allowed or not parsed.hostname:
            raise ConfigError("environment", "AUDIT_ANCHOR_URL", f"must be an https:// URL, got {url!r}"
                              + ("" if settings["DEVELOPMENT"] else " (http:// only with DEVELOPMENT=true)"))
    if not settings["MIGRATION_DATABASE_URL"]:
        settings["MIGRATION_DATABASE_URL"] = settings["DATABASE_URL"]


def _check_secret_key(settings):
    """SECRET_KEY signs tickets and keys the hashes of key ids and addresses: a deploy must set its own."""
    if not settings["SECRET_KEY"]:
        if not settings["DEVELOPMENT"]:
            raise ConfigError("environment", "SECRET_KEY", "is required outside development (32+ random bytes, "
                              "e.g. python -c 'import secrets; print(secrets.token_urlsafe(48))')")
        settings["SECRET_KEY"] = DEV_SECRET_KEY


# Published or test values: never a deploy's (docs/security/auth.md).
DEVELOPMENT_VALUES = frozenset({
    "dev-secret-change-me-before-production", "dev-key", DEV_SECRET_KEY,
    "test-secret-that-is-long-enough-for-hs256", "test-api-key", "second-service-key",
    "bench-secret-that-is-long-enough-for-hs256",
})
MIN_SECRET_BYTES = 32


def _refuse_development_secrets(settings):
    """Outside development a known development value or a short secret stops start-up."""
    hmac_jwt = settings["JWT_SECRET"] and any(alg.startswith("HS") for alg in settings["JWT_ALGORITHMS"])
    named = [("SECRET_KEY", settings["SECRET_KEY"]), ("JWT_SECRET", settings["JWT_SECRET"])]
    named += [("JWT_SECRET_PREVIOUS", value) for value in settings["JWT_SECRET_PREVIOUS"]]
    for name, value in named:
        if value in DEVELOPMENT_VALUES:
            raise ConfigError("environment", name, "is a published development value; set a secret of your own "
                              "(or DEVELOPMENT=true on a developer machine)")
        if (name == "SECRET_KEY" or hmac_jwt) and len(value.encode()) < MIN_SECRET_BYTES:
            raise ConfigError("environment", name, f"is {len(value.encode())} bytes; use at least "
                              f"{MIN_SECRET_BYTES} random bytes outside development")
    token = settings["METRICS_TOKEN"]
    if token and (token in DEVELOPMENT_VALUES or len(token) < MIN_SECRET_BYTES):
        raise ConfigError("environment", "METRICS_TOKEN", f"use at least {MIN_SECRET_BYTES} random characters "
                          "outside development")
    dev_digests = {api_keys.digest(value): value for value in DEVELOPMENT_VALUES}
    for entry in settings["PLAIN_API_KEYS"]:
        if entry in DEVELOPMENT_VALUES or len(entry) < api_keys.MIN_PLAIN_LENGTH:
            raise ConfigError("environment", "API_KEYS", f"a plain key of {len(entry)} characters or a "
                              f"development value; use `flask keys new NAME --scopes ...` (or "
                              f"{api_keys.MIN_PLAIN_LENGTH}+ random characters) outside development")
    for hexdigest, key in settings["API_KEY_TABLE"].items():
        if hexdigest in dev_digests:
            raise ConfigError("environment", "API_KEYS", f"key {key.name!r} is the hash of a development value")
