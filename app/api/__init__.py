"""The HTTP API's shared layer. This module: the flask-smorest Api, wired to our one error handler
and documented security, and the checks every JSON body passes first. Also: what every endpoint's
schemas share (schema.py: strict schemas, UTC times, path ids) and the browsable pages (pages.py)."""
import json

import marshmallow as ma
import orjson
from flask import current_app, request
import flask_smorest
from flask_smorest import Api as SmorestApi
from marshmallow import RAISE

from .. import errors
from ..security.auth import SECURITY_SCHEMES, ScopePlugin
from . import pages


class ErrorSchema(ma.Schema):
    """SPEC's error envelope, documented on every endpoint."""

    code = ma.fields.String(metadata={"example": "notifications_m.not_found"})
    message = ma.fields.String(metadata={"example": "Notification not found"})
    status = ma.fields.Integer(metadata={"example": 404})
    errors = ma.fields.Dict(metadata={"description": "field -> reasons, on 422 only"})


PREFIX = "/v1/notifications"    # every endpoint of the API is under it


class Blueprint(flask_smorest.Blueprint):
    """flask-smorest's Blueprint under the API's prefix, with the one way this API reads a query string."""

    def __init__(self, name, import_name, url_prefix=PREFIX, **kwargs):
        super().__init__(name, import_name, url_prefix=url_prefix, **kwargs)

    def arguments(self, schema, *args, **kwargs):
        """flask-smorest's, with a schema class made an instance once, here: webargs makes an
        instance of a class on every request, and a marshmallow schema and its fields point at
        each other, so each request left a cycle of ~36 objects to the garbage collector, whose
        pass over them stalled the gevent worker (every request in it) 25-50 ms every ~7 s at 200
        inbox requests/s (docs/performance.md). Loading with a shared instance keeps no state."""
        if isinstance(schema, type):
            schema = schema()
        return super().arguments(schema, *args, **kwargs)

    def query(self, schema):
        """The query string's parameters as keyword arguments; one the schema does not name is a
        422 (webargs would drop it, and a misspelt filter would go unnoticed)."""
        return self.arguments(schema, location="query", as_kwargs=True, unknown=RAISE)


def shaped_response(payload, status=200):
    """`payload`, already in its documented response schema's shape, as the JSON response: encoded
    by orjson, not dumped field by field by the schema and then by the json module. For the hot
    reads: an inbox page of 50 notifications is 850 fields, a third of its request's CPU in
    marshmallow. The view keeps `@blp.response(…, Schema)` for the OpenAPI document;
    flask-smorest passes a Response through as it is."""
    return current_app.response_class(orjson.dumps(payload), status=status, mimetype="application/json")


class Api(SmorestApi):
    """flask-smorest's Api whose HTTP error bodies are SPEC's envelope."""

    ERROR_SCHEMA = ErrorSchema

    def handle_http_exception(self, error):
        return errors.handle_http_exception(error)


# No body of this API nests more than four levels; the limit keeps every JSON parser of a request
# (webargs, Flask's get_json) far from Python's recursion limit, which a body of a few thousand
# brackets reaches: a RecursionError, answered 500 before this check.
MAX_JSON_DEPTH = 32


def require_json_body():
    """415 for a body that is not JSON and 400 `invalid_json` for one nested too deep, before any
    view tries to parse it."""
    if request.method in ("POST", "PUT", "PATCH") and (request.content_length or request.headers.get(
            "Transfer-Encoding")):
        if not request.is_json and not (_accepts_form() and request.mimetype == "application/x-www-form-urlencoded"):
            return errors.envelope(415, "unsupported_media_type",
                                   "Send the body as application/json (Content-Type: application/json)")
        if nested_too_deep(request.get_data(), MAX_JSON_DEPTH):
            raise errors.InvalidJson(f"The request body is not valid JSON: it nests deeper than "
                                     f"{MAX_JSON_DEPTH} levels")
    return None


def _accepts_form():
    """The view takes form fields too (a provider's callback: app/deliveries/report_routes.py)."""
    view = current_app.view_functions.get(request.endpoint)
    return bool(getattr(getattr(view, "view_class", None), "accepts_form", False))


def nested_too_deep(data, limit):
    """Whether a JSON document nests deeper than `limit`. Looking for more than `limit` brackets
    settles almost every body at memchr speed (a 10,000-user trigger has two); only a body with
    more is parsed here, and a parse that overflows the stack is too deep by definition. Text that
    is not JSON is left to the parser that answers it."""
    if not _more_brackets_than(data, limit):
        return False
    try:
        value = json.loads(data)
    except RecursionError:
        return True
    except ValueError:
        return False
    return _depth_exceeds(value, limit)


def _more_brackets_than(data, limit):
    """`find` (memchr) stops after limit + 1 hits; `count` would walk the body byte by byte."""
    seen = 0
    for opener in (b"[", b"{"):
        at = data.find(opener)
        while at != -1:
            seen += 1
            if seen > limit:
                return True
            at = data.find(opener, at + 1)
    return False


def _depth_exceeds(value, limit):
    """Level by level, without recursion: a parsed document may be deeper than the stack allows."""
    level, depth = [value], 0
    while True:
        containers = [item for item in level if isinstance(item, (dict, list))]
        if not containers:
            return False
        depth += 1
        if depth > limit:
            return True
        level = [child for item in containers for child in (item.values() if isinstance(item, dict) else item)]


def _document_probes(app, api):
    """The health probes are plain Flask routes; list them in the OpenAPI document too."""
    json_object = {"application/json": {"schema": {"type": "object"}}}
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    operator = "`Authorization: Bearer <METRICS_TOKEN>`"
    docs = {
        "/healthz": {"summary": "Liveness: the process answers",
                     "parameters": [{"in": "query", "name": "greenlets", "required": False,
                                     "schema": {"type": "string", "enum": ["1"]},
                                     "description": f"also count live greenlets (a heap scan): needs {operator}; "
                                                    "refused when METRICS_TOKEN is not configured"}],
                     "responses": {"200": {"description": "OK", "content": json_object},
                                   "401": {"description": "`invalid_metrics_token`", "content": error},
                                   "403": {"description": "`metrics_token_not_configured`", "content": error},
                                   "422": {"description": "`invalid_request`: `greenlets` other than 1",
                                           "content": error}}},
        "/readyz": {"summary": "Readiness: PostgreSQL and Redis both answer",
                    "responses": {"200": {"description": "OK", "content": json_object},
                                  "503": {"description": "A dependency is unavailable", "content": json_object}}},
        "/metrics": {"summary": "Prometheus metrics (text exposition format)",
                     "description": f"Open unless METRICS_TOKEN is configured; then it needs {operator}.",
                     "responses": {"200": {"description": "OK",
                                           "content": {"text/plain": {"schema": {"type": "string"}}}},
                                   "401": {"description": "`invalid_metrics_token`", "content": error}}},
    }
    for rule in app.url_map.iter_rules():
        if rule.rule in docs:
            api.spec.path(rule=rule, operations={"get": dict(docs[rule.rule], tags=["health"])})


def init_app(app, blueprints):
    app.config.setdefault("API_TITLE", "Notifications")
    app.config.setdefault("API_VERSION", "1")
    app.config.setdefault("OPENAPI_VERSION", "3.0.3")
    app.config.setdefault("OPENAPI_URL_PREFIX", "/")
    app.config.setdefault("OPENAPI_JSON_PATH", "openapi.json")
    pages.configure(app)
    api = Api(app, spec_kwargs={"extra_plugins": [ScopePlugin(app)]})
    for name, scheme in SECURITY_SCHEMES.items():
        api.spec.components.security_scheme(name, scheme)
    for blp in blueprints:
        api.register_blueprint(blp)
    _document_probes(app, api)
    pages.init_app(app)
    app.before_request(require_json_body)
    return api
