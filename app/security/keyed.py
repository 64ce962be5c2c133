"""Keyed hashes and signatures under the service's own SECRET_KEY.

Why one module: API-key names, client addresses in audit rows and stream
tickets all need a value that nobody holding a copy of the database or of
Redis can reverse or forge offline. A plain SHA-256 of a key or an address is
brute-forced in minutes; an HMAC under a secret that never leaves the service's
environment is not. Each use passes its own `purpose`, so a value hashed for
one use never matches the same value hashed for another.
"""
import hashlib
import hmac

from flask import current_app


def _secret(secret=None):
    return (secret if secret is not None else current_app.config["SECRET_KEY"]).encode()


def keyed_hash(purpose, value, length=24, secret=None):
    """A stable, irreversible name for `value` (hex, `length` characters)."""
    mac = hmac.new(_secret(secret), f"{purpose}\x00{value}".encode(), hashlib.sha256)
    return mac.hexdigest()[:length]


def sign(purpose, payload, secret=None):
    """The full HMAC of `payload` (bytes or str) for `purpose`, hex."""
    data = payload.encode() if isinstance(payload, str) else payload
    return hmac.new(_secret(secret), purpose.encode() + b"\x00" + data, hashlib.sha256).hexdigest()


def verify(purpose, payload, signature, secret=None):
    """True when `signature` is `sign(purpose, payload)`, compared in constant time."""
    return isinstance(signature, str) and hmac.compare_digest(sign(purpose, payload, secret), signature)
