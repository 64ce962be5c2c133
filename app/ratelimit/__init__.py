"""Rate limits, applied centrally to every endpoint, counted in Redis.

Five budgets, set in `queue.yaml` under `rate_limits:` (app/domain.py checks them;
a bad one stops start-up naming `rate_limits.<name>`):

    trigger         POST /v1/notifications/trigger and POST /v1/notifications/sse
                    (direct push): one budget per API key for both
    service         every other API-key endpoint (trigger status, contacts), per API key
    user            every bearer-token endpoint, per user (`sub` of a valid token)
    stream_connect  opening GET /v1/notifications/sse, per user (bearer token or ticket): a token
                    bucket (app/ratelimit/bucket.py), spent only once the per-user stream cap
                    (429 `too_many_connections`) let the stream in, so a user at the cap is told
                    so and never locked out by the budget for trying
    recipients      the users a trigger or a direct push reaches, per API key: a trigger to N
                    users costs N (`charge_recipients`, called by the two views once the body is
                    valid; an idempotent replay costs nothing). Requests are cheap to count, but
                    100 requests a second of 10,000 users each is a million notifications a second.

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

Counting (app/ratelimit/windows.py): fixed windows in Redis under
`<REDIS_PREFIX>ratelimit:`, so every gunicorn worker and every server shares the counts;
the window starts at the first hit. One Lua round trip takes a slice of a budget at a time
(1/100 of it, one request for budgets under 100 per window), so a busy caller costs a
round trip per slice, not per request; a caller is never let past its budget, and may be
refused up to 1/100 of it early per process that had an unused slice when the window ended.
(Flask-Limiter, used before, spent as much CPU evaluating every application limit on every
request as on its round trip.)

Redis down: the limits fail open. On a storage error this process counts the same
limits in memory: requests are served, limited per process only, without a Redis
round trip each; Redis is tried again after 1 s, then 2, 4, … 32 s, and used as soon
as it answers. Anything else the counting raises is logged and the request proceeds.

Over a limit: 429 `notifications_m.rate_limited` in the usual envelope, with `Retry-After`
(seconds until the window resets). Every limited operation documents that 429 in the
OpenAPI document.

`RATE_LIMITS_ENABLED=false` (environment or the app's config) turns all of it off.
"""
import logging
import re

from flask import current_app, g, request
from limits import parse

from ..security import auth
from ..errors import ConfigError, RateLimited
from ..bus import redis
from .bucket import Buckets
from .windows import Counter

log = logging.getLogger(__name__)

# Endpoints with a budget of their own; the rest are classified by their auth decorator.
SPECIAL = {
    "dispatch.Trigger": "trigger",
    "dispatch.DirectPush": "trigger",
    "streams.StreamView": "stream_connect",
}


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
    if auth.scope_of(getattr(view, "view_class", None)):
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
    (its signature checked, the ticket not consumed: the view redeems it)."""
    if auth.bearer_token() is not None:
        return _user_key()
    ticket = request.args.get("ticket")
    if ticket:
        from ..streams.access import peek_ticket
        try:
            return f"user:{peek_ticket(redis(), ticket).user.id}"
        except Exception:  # unknown, forged, or Redis down: the view answers for the ticket
            pass
    return _address()


KEY_FUNCTIONS = {"trigger": _service_key, "service": _service_key, "user": _user_key,
                 "stream_connect": _stream_key}


def _check():
    """before_request: count the request against its budget; 429 once over it."""
    name = _current_class()
    if name is None:
        return None
    if name == "stream_connect":
        return _check_stream_connect()
    counter = current_app.extensions["ratelimit"]["counter"]
    try:
        allowed, retry = counter.hit(name, KEY_FUNCTIONS[name]())
    except Exception:  # never let counting break a request
        log.exception("rate limit not checked")
        return None
    if allowed:
        return None
    raise RateLimited(f"Rate limit exceeded: {counter.limits[name]} ({name}); retry in {retry} s",
                      headers={"Retry-After": str(retry)})


def charge_recipients(api_key_id, count, lane=None):
    """Spend one of the key's requests of `lane` (`trigger_<lane>`) and `count` of its recipients
    budgets, the lane's (`recipients_<lane>`) and the overall one, or raise RateLimited (429,
    Retry-After) and accept nothing. The lane's budgets exist only when queue.yaml sets them: a bulk
    lane kept from crowding out the rest, or an urgent one kept from being flooded by one caller. The
    overall `trigger` budget was spent before the body was read (the lane is known only from it). A
    budget already spent when a later one refuses stays spent. Counting failures let the request
    through, as every limit does."""
    counter = current_app.extensions["ratelimit"]["counter"]
    if counter is None:
        return
    for name, cost, what in ((f"trigger_{lane}", 1, "Rate limit exceeded"),
                             (f"recipients_{lane}", count, "Recipient budget exceeded"),
                             ("recipients", count, "Recipient budget exceeded")):
        if name not in counter.limits:
            continue
        try:
            allowed, retry = counter.hit(name, f"key:{api_key_id}", cost)
        except Exception:  # never let counting break a request
            log.exception("%s budget not checked", name)
            return
        if not allowed:
            reach = f"this request reaches {count}; " if cost == count and name.startswith("recipients") else ""
            raise RateLimited(f"{what}: {counter.limits[name]} ({name}); {reach}retry in {retry} s",
                              headers={"Retry-After": str(retry)})


def _check_stream_connect():
    """A caller known by token or ticket spends its token in the view, after the per-user cap
    (`admit_stream`); anyone else spends one of their address's here."""
    caller = _stream_key()
    if caller.startswith("user:"):
        return None
    _spend(caller)
    return None


def _buckets():
    return current_app.extensions["ratelimit"].get("stream_buckets")


def _spend(caller, spend=True):
    buckets = _buckets()
    if buckets is None:
        return
    allowed, retry = buckets.take(caller) if spend else buckets.peek(caller)
    if not allowed:
        raise RateLimited(f"Too many stream connects: a burst of {buckets.capacity}, then one every "
                          f"{1 / buckets.rate:g} s (stream_connect); retry in {retry} s",
                          headers={"Retry-After": str(retry)})


def admit_stream(user_id):
    """Spend the user's stream-connect token (429 `rate_limited` with Retry-After when none is left);
    the stream view calls it once the user's stream cap let the stream in."""
    _spend(f"user:{user_id}")


def check_stream_admission(user_id):
    """429 now if the user's next stream would be refused by the budget (nothing spent): the ticket
    endpoint's answer, which a browser can read (EventSource cannot see a status or Retry-After)."""
    _spend(f"user:{user_id}", spend=False)


def _stream_buckets(app):
    """The stream-connect buckets; their burst must let a user replace every stream at once."""
    limit = parse(app.config["DOMAIN"].rate_limits["stream_connect"])
    floor = 2 * app.config["SSE_MAX_STREAMS_PER_USER"]
    if limit.amount < floor:
        raise ConfigError(app.config["QUEUE_CONFIG"], "rate_limits.stream_connect",
                          f"a burst of {limit.amount}; at least twice SSE_MAX_STREAMS_PER_USER ({floor}) is needed "
                          "so a user can reopen every stream at once")
    return Buckets(app.extensions["redis"], f"{app.config['REDIS_PREFIX']}ratelimit:stream_connect", limit)


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
    app.extensions["ratelimit"]["stream_buckets"] = _stream_buckets(app)
    app.before_request(_check)
    _document(app)
    return counter
