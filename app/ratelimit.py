"""Rate limits (flask-limiter), applied centrally to every endpoint, counted in Redis.

Four budgets, set in `queue.yaml` under `rate_limits:` (app/domain.py checks them;
a bad one stops start-up naming `rate_limits.<name>`):

    trigger         POST /v1/notifications/trigger and POST /v1/notifications/sse
                    (direct push): one budget per API key for both
    service         every other API-key endpoint (trigger status, contacts), per API key
    user            every bearer-token endpoint, per user (`sub` of a valid token)
    stream_connect  opening GET /v1/notifications/sse, per user (bearer token or ticket)

A caller without valid credentials is counted per remote address in the budget of the
endpoint it called (it gets its 401 until it is over the limit, then 429). Health probes,
metrics, the OpenAPI document and its pages, and CORS preflights (OPTIONS) are not limited.

How it is applied: nothing is decorated view by view. Each budget is one flask-limiter
*application limit* (checked in `before_request` for every request) with a fixed shared
scope (its name), its own key function and an `exempt_when` that keeps it to the
endpoints it classifies. An endpoint is classified once, from the endpoint name for the
three special ones (`SPECIAL`), else from the view's auth decorator (`service_required`
or `user_required` in its `MethodView.decorators`), else — for anything else under `/v1/`
— as `user`. So a new endpoint is limited without anyone remembering to. We chose this
over `limiter.limit(...)(blueprint)` because one blueprint mixes budgets (`dispatch` holds
the trigger and the trigger status; the GET and POST of `/sse` live in two blueprints),
and over default limits because a view decorator would silently override those.

Storage: the app's `REDIS_URL`, keys under `<REDIS_PREFIX>ratelimit:`, so every gunicorn
worker and every server shares the counts. Strategy: fixed window (one INCR per budget
and request; the window starts at the first hit).

Redis down: the limits fail open. On the first storage error flask-limiter switches this
process to in-memory counting of the same limits (`in_memory_fallback_enabled`): requests
are served, limited per process only, without a Redis round trip each; it probes Redis
again with back-off (1, 2, 4, … 32 s) and goes back to it. `swallow_errors` covers
anything else the limiter could raise: the request proceeds and the error is logged. The
limiter's Redis connections have short timeouts so a hung Redis costs one request ~0.5 s,
not seconds.

Over a limit: 429 `notifications_m.rate_limited` in the usual envelope, with `Retry-After`
(seconds until the window resets). Every limited operation documents that 429 in the
OpenAPI document.

`RATE_LIMITS_ENABLED=false` (environment or the app's config) turns all of it off.
"""
import json
import math
import re
import time

from flask import current_app, g, request
from flask_limiter import ApplicationLimit, Limiter
from flask_limiter.errors import RateLimitExceeded

from . import auth
from .errors import RateLimited, handle_api_error
from .redis_client import key as redis_key, redis

# Endpoints with a budget of their own; the rest are classified by their auth decorator.
SPECIAL = {
    "dispatch.Trigger": "trigger",
    "dispatch.DirectPush": "trigger",
    "streams.StreamView": "stream_connect",
}
STORAGE_OPTIONS = {"socket_connect_timeout": 0.5, "socket_timeout": 0.5, "health_check_interval": 30}


def classify(app, endpoint):
    """The budget name of an endpoint, or None when it is not limited."""
    cache = app.extensions["ratelimit"]["classes"]
    if endpoint not in cache:
        cache[endpoint] = _classify(app, endpoint)
    return cache[endpoint]


def _classify(app, endpoint):
    if endpoint in SPECIAL:
        return SPECIAL[endpoint]
    view = app.view_functions.get(endpoint)
    decorators = getattr(getattr(view, "view_class", None), "decorators", None) or ()
    if auth.service_required in decorators:
        return "service"
    if auth.user_required in decorators:
        return "user"
    rules = [r.rule for r in app.url_map.iter_rules() if r.endpoint == endpoint]
    if any(rule.startswith("/v1/") for rule in rules):
        return "user"
    return None


def _current_class():
    if "ratelimit_class" not in g:
        g.ratelimit_class = (None if request.method == "OPTIONS" or request.endpoint is None
                             else classify(current_app, request.endpoint))
    return g.ratelimit_class


def _address():
    return f"addr:{request.remote_addr or 'unknown'}"


def _service_key():
    """The API key's id (non-secret); the remote address when the key is missing or wrong."""
    try:
        return f"key:{auth.current_service()}"
    except auth.InvalidApiKey:
        return _address()


def _user_key():
    """The token's `sub`; the remote address without a valid token. A valid token is
    decoded once: `current_user()` keeps it in `g` for the view."""
    try:
        return f"user:{auth.current_user().id}"
    except auth.InvalidUserId:
        return _address()


def _stream_key():
    """The user opening a stream, from the bearer token or, without one, from the ticket
    (read, not consumed: the view redeems it)."""
    if auth.bearer_token() is not None:
        return _user_key()
    ticket = request.args.get("ticket")
    if ticket and len(ticket) < 100:
        try:
            raw = redis().get(redis_key("ticket", ticket))
            if raw is not None:
                return f"user:{json.loads(raw)['sub']}"
        except Exception:  # Redis down or a bad payload: the view answers for the ticket
            pass
    return _address()


KEY_FUNCTIONS = {"trigger": _service_key, "service": _service_key, "user": _user_key,
                 "stream_connect": _stream_key}


def _budget(name, limit):
    return ApplicationLimit(limit_provider=limit, key_function=KEY_FUNCTIONS[name], scope=name,
                            exempt_when=lambda: _current_class() != name)


def _retry_after(limiter, error):
    """Whole seconds until the breached window resets (at least 1)."""
    try:
        current = limiter.current_limit
        if current is not None:
            return max(1, math.ceil(current.window[0] - time.time()))
    except Exception:  # storage gone between the hit and now: the window's length is an upper bound
        pass
    return max(1, int(error.limit.limit.get_expiry()))


def _handler(limiter):
    def too_many(error):
        retry = _retry_after(limiter, error)
        name = _current_class() or "request"
        return handle_api_error(RateLimited(f"Rate limit exceeded: {error.limit.limit} ({name}); "
                                            f"retry in {retry} s", headers={"Retry-After": str(retry)}))
    return too_many


def _document(app):
    """Add the 429 (with Retry-After) to every limited operation of the OpenAPI document."""
    apis = app.extensions.get("flask-smorest", {}).get("apis", {})
    for entry in apis.values():
        spec = entry["ext_obj"].spec
        spec.components.response("TOO_MANY_REQUESTS", {
            "description": "Rate limit exceeded (`notifications_m.rate_limited`)",
            "headers": {"Retry-After": {"description": "seconds until the limit resets",
                                        "schema": {"type": "integer", "minimum": 1}}},
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
        paths = spec._paths  # apispec keeps the registered operations here
        for rule in app.url_map.iter_rules():
            if classify(app, rule.endpoint) is None:
                continue
            path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
            for method in rule.methods - {"HEAD", "OPTIONS"}:
                operation = paths.get(path, {}).get(method.lower())
                if operation is not None:
                    operation.setdefault("responses", {})["429"] = {
                        "$ref": "#/components/responses/TOO_MANY_REQUESTS"}


def init_app(app):
    """Set up the limiter; call after the blueprints are registered (it documents them)."""
    app.extensions["ratelimit"] = {"classes": {}, "limiter": None}
    if not app.config.get("RATE_LIMITS_ENABLED", True):
        return None
    budgets = app.config["DOMAIN"].rate_limits
    limiter = Limiter(
        key_func=_address,
        application_limits=[_budget(name, limit) for name, limit in budgets.items()],
        storage_uri=app.config["REDIS_URL"],
        storage_options=dict(STORAGE_OPTIONS, key_prefix=f"{app.config['REDIS_PREFIX']}ratelimit"),
        strategy="fixed-window",
        headers_enabled=False,
        swallow_errors=True,
        in_memory_fallback_enabled=True,
    )
    limiter.init_app(app)
    app.extensions["ratelimit"]["limiter"] = limiter
    app.register_error_handler(RateLimitExceeded, _handler(limiter))
    _document(app)
    return limiter
