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

How it is applied: nothing is decorated view by view. One `before_request` hook
classifies the endpoint, once per endpoint: from the endpoint name for the three
special ones (`SPECIAL`), else from the view's auth decorator (`service_required`
or `user_required` in its `MethodView.decorators`), else — for anything else under
`/v1/` — as `user`; so a new endpoint is limited without anyone remembering to. Then
it counts the request against its one budget, keyed by the caller. We chose this
over per-view decorators because one blueprint mixes budgets (`dispatch` holds the
trigger and the trigger status; the GET and POST of `/sse` live in two blueprints).

Counting: the `limits` library (the engine under Flask-Limiter), fixed window: one
Lua INCR-and-expire round trip to Redis per limited request, nothing else on the
request's path (Flask-Limiter's own per-request machinery, which evaluated every
application limit on every request, cost as much as the round trip). Keys live under
`<REDIS_PREFIX>ratelimit:`, so every gunicorn worker and every server shares the
counts; the window starts at the first hit.

Redis down: the limits fail open. On a storage error this process counts the same
limits in memory: requests are served, limited per process only, without a Redis
round trip each; Redis is tried again after 1 s, then 2, 4, … 32 s, and used as soon
as it answers. The limiter's Redis connections have short timeouts so a hung Redis
costs one request ~0.5 s, not seconds. Anything else the counting raises is logged
and the request proceeds.

Over a limit: 429 `notifications_m.rate_limited` in the usual envelope, with `Retry-After`
(seconds until the window resets). Every limited operation documents that 429 in the
OpenAPI document.

`RATE_LIMITS_ENABLED=false` (environment or the app's config) turns all of it off.
"""
import json
import logging
import math
import re
import threading
import time

from flask import current_app, g, request
from limits import parse
from limits.storage import MemoryStorage, RedisStorage
from limits.strategies import FixedWindowRateLimiter

from . import auth
from .errors import RateLimited
from .redis_client import key as redis_key, redis

log = logging.getLogger(__name__)

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


class Counter:
    """The budgets' counts: in Redis, or in this process's memory while Redis fails."""

    def __init__(self, url, prefix, budgets):
        self.limits = {name: parse(text) for name, text in budgets.items()}
        self.redis = FixedWindowRateLimiter(RedisStorage(url, key_prefix=prefix, **STORAGE_OPTIONS))
        self.memory = None   # made on the first Redis failure (its storage starts a timer thread)
        self._retry_at, self._backoff = 0.0, 1.0
        self._lock = threading.Lock()

    def _strategy(self):
        return self.memory if time.monotonic() < self._retry_at else self.redis

    def hit(self, name, key):
        """Count one request; (allowed, the strategy that counted it)."""
        limit, strategy = self.limits[name], self._strategy()
        try:
            allowed = strategy.hit(limit, name, key)
        except Exception as exc:  # Redis down or unreachable: fail open, per process, for a while
            if strategy is not self.redis:
                raise
            self._fall_back(exc)
            strategy = self.memory
            allowed = strategy.hit(limit, name, key)
        else:
            if strategy is self.redis and self._backoff > 1:
                with self._lock:
                    self._backoff = 1.0
                log.info("rate limits counted in Redis again")
        return allowed, strategy

    def _fall_back(self, exc):
        with self._lock:
            if self.memory is None:
                self.memory = FixedWindowRateLimiter(MemoryStorage())
            self._retry_at = time.monotonic() + self._backoff
            log.warning("rate limits counted in memory for %.0f s: Redis failed (%s)", self._backoff,
                        type(exc).__name__)
            self._backoff = min(32.0, self._backoff * 2)

    def retry_after(self, name, key, strategy):
        """Whole seconds until the breached window resets (at least 1)."""
        limit = self.limits[name]
        try:
            reset = strategy.get_window_stats(limit, name, key).reset_time
            return max(1, math.ceil(reset - time.time()))
        except Exception:  # storage gone between the hit and now: the window's length is an upper bound
            return max(1, int(limit.get_expiry()))


def _check():
    """before_request: count the request against its budget; 429 once over it."""
    name = _current_class()
    if name is None:
        return None
    counter = current_app.extensions["ratelimit"]["counter"]
    try:
        key = KEY_FUNCTIONS[name]()
        allowed, strategy = counter.hit(name, key)
    except Exception:  # never let counting break a request
        log.exception("rate limit not checked")
        return None
    if allowed:
        return None
    retry = counter.retry_after(name, key, strategy)
    raise RateLimited(f"Rate limit exceeded: {counter.limits[name]} ({name}); retry in {retry} s",
                      headers={"Retry-After": str(retry)})


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
    """Set up the limits; call after the blueprints are registered (it documents them)."""
    app.extensions["ratelimit"] = {"classes": {}, "counter": None}
    if not app.config.get("RATE_LIMITS_ENABLED", True):
        return None
    counter = Counter(app.config["REDIS_URL"], f"{app.config['REDIS_PREFIX']}ratelimit",
                      app.config["DOMAIN"].rate_limits)
    app.extensions["ratelimit"]["counter"] = counter
    app.before_request(_check)
    _document(app)
    return counter
