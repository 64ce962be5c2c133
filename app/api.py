"""The flask-smorest Api, wired to our one error handler and documented security."""
import marshmallow as ma
from flask import request
from flask_smorest import Api as SmorestApi

from . import errors
from .auth import SECURITY_SCHEMES, ScopePlugin


class ErrorSchema(ma.Schema):
    """SPEC's error envelope, documented on every endpoint."""

    code = ma.fields.String(metadata={"example": "notifications_m.not_found"})
    message = ma.fields.String(metadata={"example": "Notification not found"})
    status = ma.fields.Integer(metadata={"example": 404})
    errors = ma.fields.Dict(metadata={"description": "field -> reasons, on 422 only"})


class Api(SmorestApi):
    """flask-smorest's Api whose HTTP error bodies are SPEC's envelope."""

    ERROR_SCHEMA = ErrorSchema

    def handle_http_exception(self, error):
        return errors.handle_http_exception(error)


def require_json_body():
    """415 for a body that is not JSON, before any view tries to parse it."""
    if request.method in ("POST", "PUT", "PATCH") and (request.content_length or request.headers.get(
            "Transfer-Encoding")):
        if not request.is_json:
            return errors.envelope(415, "unsupported_media_type",
                                   "Send the body as application/json (Content-Type: application/json)")
    return None


def _document_probes(app, api):
    """The health probes are plain Flask routes; list them in the OpenAPI document too."""
    json_object = {"application/json": {"schema": {"type": "object"}}}
    docs = {
        "/healthz": {"summary": "Liveness: the process answers",
                     "responses": {"200": {"description": "OK", "content": json_object}}},
        "/readyz": {"summary": "Readiness: PostgreSQL and Redis both answer",
                    "responses": {"200": {"description": "OK", "content": json_object},
                                  "503": {"description": "A dependency is unavailable", "content": json_object}}},
        "/metrics": {"summary": "Prometheus metrics (text exposition format)",
                     "responses": {"200": {"description": "OK",
                                           "content": {"text/plain": {"schema": {"type": "string"}}}}}},
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
    app.config.setdefault("OPENAPI_SWAGGER_UI_PATH", "/docs")
    app.config.setdefault("OPENAPI_SWAGGER_UI_URL", "https://cdn.jsdelivr.net/npm/swagger-ui-dist/")
    app.config.setdefault("OPENAPI_REDOC_PATH", "/redoc")
    # without a script URL flask-smorest silently skips the /redoc page
    app.config.setdefault("OPENAPI_REDOC_URL", "https://cdn.jsdelivr.net/npm/redoc@2/bundles/redoc.standalone.js")
    api = Api(app, spec_kwargs={"extra_plugins": [ScopePlugin(app)]})
    for name, scheme in SECURITY_SCHEMES.items():
        api.spec.components.security_scheme(name, scheme)
    for blp in blueprints:
        api.register_blueprint(blp)
    _document_probes(app, api)
    app.before_request(require_json_body)
    return api
