"""VAPID keys (RFC 8292) and what a subscription must look like (RFC 8291), judged without I/O.

Keys travel as base64url: the private key is the raw 32-byte P-256 scalar, the public key the
65-byte uncompressed point a browser takes as `applicationServerKey`. Both are checked at
start-up (app/config.py calls `check_settings`), so a typo stops the service with one line
instead of every push failing later.
"""
import base64
import binascii
import ipaddress
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ..errors import ConfigError

SETTINGS = ("VAPID_PUBLIC_KEY", "VAPID_PRIVATE_KEY", "VAPID_SUBJECT")
MAX_ENDPOINT_LENGTH = 2048


def b64url_decode(text):
    """Bytes of unpadded (or padded) base64url text; ValueError when it is not that."""
    if not isinstance(text, str) or not text or any(c in text for c in "+/ \n"):
        raise ValueError("not base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("not base64url")


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def new_pair():
    """(public, private) base64url strings of a fresh P-256 key: what `flask webpush keys` prints."""
    key = ec.generate_private_key(ec.SECP256R1())
    private = key.private_numbers().private_value.to_bytes(32, "big")
    return public_of(key), b64url(private)


def public_of(key):
    return b64url(key.public_key().public_bytes(serialization.Encoding.X962,
                                                serialization.PublicFormat.UncompressedPoint))


def private_key(text):
    """The EC private key of a base64url raw scalar; ValueError when it is not one."""
    raw = b64url_decode(text)
    if len(raw) != 32:
        raise ValueError(f"is {len(raw)} bytes, not 32")
    return ec.derive_private_key(int.from_bytes(raw, "big"), ec.SECP256R1())


def is_point(text):
    """A subscription's `keys.p256dh`: a base64url uncompressed P-256 point actually on the curve."""
    try:
        raw = b64url_decode(text)
        if len(raw) != 65 or raw[0] != 4:
            return False
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)
        return True
    except ValueError:
        return False


def is_auth_secret(text):
    """A subscription's `keys.auth`: 16 random bytes, base64url."""
    try:
        return len(b64url_decode(text)) == 16
    except ValueError:
        return False


def endpoint_problem(url):
    """Why a push endpoint is refused, or None. Judged from the URL alone (no DNS lookup): https,
    a host name of two labels or more, not an IP literal, not localhost; the sending side still
    refuses private addresses when it connects (app/webpush/transport.py)."""
    if not isinstance(url, str) or len(url) > MAX_ENDPOINT_LENGTH:
        return f"Must be a URL of at most {MAX_ENDPOINT_LENGTH} characters."
    try:
        parts = urlsplit(url)
        parts.port   # noqa: B018 (raises on a bad port)
    except ValueError:
        return "Must be a valid URL."
    if parts.scheme != "https":
        return "Must be an https:// URL."
    if parts.username is not None or parts.password is not None:
        return "Must not carry credentials."
    host = (parts.hostname or "").rstrip(".")
    if not host:
        return "Must name a host."
    try:
        ipaddress.ip_address(host)
        return "Must name a host, not an IP address."
    except ValueError:
        pass
    if host == "localhost" or host.endswith(".localhost"):
        return "Must not be localhost."
    if "." not in host:
        return "Must be a fully qualified host name."
    if not all(label and len(label) <= 63 and all(c.isalnum() or c == "-" for c in label)
               and not label.startswith("-") and not label.endswith("-") for label in host.split(".")):
        return "Must be a valid host name."
    return None


def check_settings(settings):
    """VAPID settings: all three or none (none: the channel is off); keys that are a pair; a subject
    that push services accept. WEBPUSH_RESOLVE only in development."""
    given = [name for name in SETTINGS if settings.get(name)]
    if given and len(given) != len(SETTINGS):
        missing = [name for name in SETTINGS if name not in given]
        raise ConfigError("environment", missing[0], f"is required with {given[0]} (Web Push needs all of "
                                                     + ", ".join(SETTINGS) + ")")
    if given:
        try:
            key = private_key(settings["VAPID_PRIVATE_KEY"])
        except ValueError as exc:
            raise ConfigError("environment", "VAPID_PRIVATE_KEY", f"must be a base64url P-256 private key ({exc}); "
                              "`flask webpush keys` makes a pair")
        if public_of(key) != settings["VAPID_PUBLIC_KEY"].rstrip("="):
            raise ConfigError("environment", "VAPID_PUBLIC_KEY", "is not the public key of VAPID_PRIVATE_KEY")
        subject = settings["VAPID_SUBJECT"]
        if not (subject.startswith("mailto:") and "@" in subject or subject.startswith("https://")):
            raise ConfigError("environment", "VAPID_SUBJECT", "must be a mailto: or https: URL")
    resolve = settings.get("WEBPUSH_RESOLVE") or []
    if resolve and not settings["DEVELOPMENT"]:
        raise ConfigError("environment", "WEBPUSH_RESOLVE", "is for tests and development only "
                                                            "(DEVELOPMENT=true)")
    pairs = {}
    for entry in resolve:
        host, sep, address = entry.partition("=")
        try:
            ipaddress.ip_address(address)
        except ValueError:
            sep = ""
        if not sep or not host:
            raise ConfigError("environment", "WEBPUSH_RESOLVE", f"entry {entry!r} is not host=ip")
        pairs[host.lower()] = address
    settings["WEBPUSH_RESOLVE"] = pairs
