"""Who is calling: users by bearer JWT, services by API key.

A user token is never accepted where a key is required, nor the reverse; every
failure to identify a user is the same 401 `invalid_user_id`, so a client
cannot probe which part of a token was wrong.
"""
import functools
import hashlib
import hmac
import uuid
from dataclasses import dataclass

import jwt
from flask import current_app, g, request

from .errors import InvalidApiKey, InvalidCustomerId, InvalidUserId

USER_SECURITY = [{"bearerAuth": []}]
SERVICE_SECURITY = [{"apiKeyAuth": []}]


@dataclass(frozen=True)
class User:
    id: uuid.UUID
    customers: tuple | None   # None: the token set no limit

    def check_customer(self, customer_id):
        """Refuse a customer outside the token's `customers` claim."""
        if customer_id is not None and self.customers is not None and customer_id not in self.customers:
            raise InvalidCustomerId()

    def visible_customers(self):
        """The customers whose notifications this user may see; None means all."""
        return None if self.customers is None else list(self.customers)


def decode_token(token, config):
    """Verify a JWT and return the User it names, or raise InvalidUserId."""
    algorithms = config["JWT_ALGORITHMS"]
    try:
        header = jwt.get_unverified_header(token)
        alg = header.get("alg")
        if alg not in algorithms:
            raise InvalidUserId()
        key = config["JWT_SECRET"] if alg.startswith("HS") else config["JWT_PUBLIC_KEY"]
        options = {"require": ["exp", "sub"], "verify_aud": bool(config["JWT_AUDIENCE"])}
        claims = jwt.decode(token, key, algorithms=[alg], options=options,
                            audience=config["JWT_AUDIENCE"] or None, issuer=config["JWT_ISSUER"] or None)
        user_id = uuid.UUID(str(claims["sub"]))
        customers = claims.get("customers")
        if customers is not None:
            if not isinstance(customers, list):
                raise InvalidUserId()
            customers = tuple(uuid.UUID(str(c)) for c in customers)
    except (jwt.PyJWTError, ValueError, TypeError, AttributeError):
        raise InvalidUserId()
    return User(user_id, customers)


def bearer_token():
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def current_user():
    """The authenticated user of this request (raises 401 when there is none)."""
    if "user" not in g:
        token = bearer_token()
        if token is None:
            raise InvalidUserId()
        g.user = decode_token(token, current_app.config)
    return g.user


def key_id(key):
    """A stable, non-secret name for an API key, for audit and idempotency scoping."""
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def current_service():
    """The calling service's key id (raises 401 for a missing or wrong key)."""
    if "service" not in g:
        given = request.headers.get("X-API-Key", "")
        match = None
        for key in current_app.config["API_KEYS"]:
            if hmac.compare_digest(given.encode(), key.encode()):
                match = key
        if not given or match is None:
            raise InvalidApiKey()
        g.service = key_id(match)
    return g.service


def user_required(view):
    """Run the view only for a request with a valid bearer token."""
    @functools.wraps(view)
    def wrapper(*args, **kwargs):
        current_user()
        return view(*args, **kwargs)
    return wrapper


def service_required(view):
    """Run the view only for a request with a valid X-API-Key."""
    @functools.wraps(view)
    def wrapper(*args, **kwargs):
        current_service()
        return view(*args, **kwargs)
    return wrapper


SECURITY_SCHEMES = {
    "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
    "apiKeyAuth": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
}
