"""Who is calling: users by bearer JWT, services by API key with scopes.

A user token is never accepted where a key is required, nor the reverse; every
failure to identify a user is the same 401 `invalid_user_id`, so a client
cannot probe which part of a token was wrong. A known key without the scope an
endpoint needs is 403 `insufficient_scope` (app/security/api_keys.py has the scopes).
"""
import functools
import logging
import time
import uuid
from dataclasses import dataclass

import jwt
from apispec import BasePlugin
from flask import current_app, g, request
from flask.views import MethodView

from . import api_keys
from ..errors import InsufficientScope, InvalidApiKey, InvalidCustomerId, InvalidUserId
from .jwks import UnknownKey

log = logging.getLogger(__name__)
LEEWAY_SECONDS = 30   # clock skew allowed on exp, iat and nbf (an identity provider a little ahead)

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
        claims = _verified_claims(token, alg, header, config)
        _check_lifetime(claims, config["JWT_MAX_LIFETIME_SECONDS"])
        user_id = uuid.UUID(str(claims["sub"]))
        customers = claims.get("customers")
        if customers is not None:
            if not isinstance(customers, list):
                raise InvalidUserId()
            customers = tuple(uuid.UUID(str(c)) for c in customers)
    except (jwt.PyJWTError, ValueError, TypeError, AttributeError, UnknownKey):
        raise InvalidUserId()
    return User(user_id, customers)


def _verified_claims(token, alg, header, config):
    """The claims of the first candidate key whose signature matches; any other failure
    (expired, wrong audience) is final, whichever key signed."""
    options = {"require": ["exp", "sub"], "verify_aud": bool(config["JWT_AUDIENCE"])}
    for key in _candidate_keys(alg, header, config):
        try:
            return jwt.decode(token, key, algorithms=[alg], options=options, leeway=LEEWAY_SECONDS,
                              audience=config["JWT_AUDIENCE"] or None, issuer=config["JWT_ISSUER"] or None)
        except jwt.InvalidSignatureError:
            continue
    raise InvalidUserId()


def _candidate_keys(alg, header, config):
    """HMAC: the current secret, then the previous ones (rotation). Public keys: the configured
    PEM, then the identity provider's key named by `kid` (looked up, maybe fetched, only when
    needed: a JWKS lookup can cost a request to the IdP)."""
    if alg.startswith("HS"):
        yield from (secret for secret in [config["JWT_SECRET"], *config["JWT_SECRET_PREVIOUS"]] if secret)
        return
    if config["JWT_PUBLIC_KEY"]:
        yield config["JWT_PUBLIC_KEY"]
    kid = header.get("kid")
    if config["JWT_JWKS"] is not None and isinstance(kid, str) and kid:
        yield config["JWT_JWKS"].key_for(kid)


def _check_lifetime(claims, max_seconds):
    """Refuse a token that lives longer than the cap (from its `iat`, else from now):
    a leaked long-lived token would otherwise open the inbox for ever."""
    issued = claims.get("iat")
    start = issued if isinstance(issued, (int, float)) and not isinstance(issued, bool) else time.time()
    if claims["exp"] - start > max_seconds:
        raise InvalidUserId()


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


def current_key():
    """The calling service's ApiKey (raises 401 for a missing or wrong key).

    Looked up by the SHA-256 of what was sent: the configuration holds only hashes."""
    if "api_key" not in g:
        given = request.headers.get("X-API-Key", "")
        key = current_app.config["API_KEY_TABLE"].get(api_keys.digest(given)) if given else None
        if key is None:
            raise InvalidApiKey()
        g.api_key, g.service = key, key.name
    return g.api_key


def current_service():
    """The calling key's name: what audit rows, limits and idempotency scoping call it."""
    return current_key().name


def user_required(view):
    """Run the view only for a request with a valid bearer token."""
    @functools.wraps(view)
    def wrapper(*args, **kwargs):
        current_user()
        return view(*args, **kwargs)
    return wrapper


class UserView(MethodView):
    """A resource of bearer-token users: every method runs only with a valid token."""

    decorators = [user_required]


def service_required(scope):
    """Run the view only for a valid X-API-Key that grants `scope` (401, else 403)."""
    if scope not in api_keys.SCOPES:
        raise ValueError(f"unknown scope {scope!r}")

    def decorator(view):
        @functools.wraps(view)
        def wrapper(*args, **kwargs):
            key = current_key()
            if scope not in key.scopes:
                log.warning("api key %s refused: it lacks the %s scope", key.name, scope)
                raise InsufficientScope(f"This API key ({key.name}) lacks the `{scope}` scope")
            return view(*args, **kwargs)
        wrapper.api_key_scope = scope
        return wrapper
    decorator.api_key_scope = scope
    return decorator


def scope_of(view_class):
    """The scope a MethodView's `service_required` demands, or None for a non-service view."""
    for decorator in getattr(view_class, "decorators", None) or ():
        if getattr(decorator, "api_key_scope", None):
            return decorator.api_key_scope
    return None


def init_app(app):
    """The start-up warnings and `flask keys`."""
    from . import keys_cli
    keys_cli.init_app(app)
    warn_at_startup(app)


def warn_at_startup(app):
    """Log once per process what a reviewer would want to know about the configuration."""
    config = app.config
    plain = sorted(config["API_KEY_TABLE"][api_keys.digest(k)].name for k in config["PLAIN_API_KEYS"])
    if plain:
        log.warning("API keys %s are configured in clear (plain API_KEYS form, every scope); "
                    "replace them with `flask keys new NAME --scopes ...` lines", ", ".join(plain))
    if not config["DEVELOPMENT"] and not config["JWT_AUDIENCE"] and not config["JWT_ISSUER"]:
        log.warning("neither JWT_AUDIENCE nor JWT_ISSUER is set: any token signed with the key is accepted, "
                    "whatever service it was issued for")


class ScopePlugin(BasePlugin):
    """Documents each operation's credentials from its view's decorators, so the OpenAPI document
    cannot disagree with what is enforced: the bearer token of `user_required`; the API key of
    `service_required`, its scope (`x-scopes`, a line of the description) and the 403
    `insufficient_scope` answer."""

    def __init__(self, app):
        self.app = app

    def operation_helper(self, path=None, operations=None, **kwargs):
        rule = kwargs.get("rule")
        view_class = getattr(self.app.view_functions.get(rule.endpoint) if rule is not None else None,
                             "view_class", None)
        if user_required in (getattr(view_class, "decorators", None) or ()):
            for operation in operations.values():
                operation.setdefault("security", USER_SECURITY)
        scope = scope_of(view_class)
        if scope is None:
            return
        for operation in operations.values():
            operation["security"] = SERVICE_SECURITY
            operation["x-scopes"] = [scope]
            operation["description"] = (operation.get("description", "") +
                                        f"\n\nAPI key scope: `{scope}`.").lstrip()
            operation.setdefault("responses", {})["403"] = {
                "description": f"`notifications_m.insufficient_scope`: the key lacks the `{scope}` scope",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


SECURITY_SCHEMES = {
    "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
    "apiKeyAuth": {"type": "apiKey", "in": "header", "name": "X-API-Key",
                   "description": "A key has a name and scopes; each service operation names the scope it "
                                  "needs in `x-scopes` (403 `notifications_m.insufficient_scope` without it). "
                                  "Scopes: " + "; ".join(f"`{k}`: {v}" for k, v in api_keys.SCOPES.items())},
}
