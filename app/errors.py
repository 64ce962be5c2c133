"""The error tree and the one handler that turns any failure into SPEC's envelope.

    ConfigError                  start-up only: one line naming file, key, problem
    ApiError                     every error a client can see
    ├── InvalidUserId            401  bad, missing or expired bearer token
    ├── InvalidApiKey            401  missing or wrong X-API-Key
    ├── InvalidCustomerId        403  customer outside the token's `customers`
    ├── InsufficientScope        403  a known API key without the endpoint's scope
    ├── InvalidMetricsToken      401  /metrics or the greenlet scan without the METRICS_TOKEN bearer
    ├── MetricsTokenNotConfigured 403 the greenlet scan, with no METRICS_TOKEN configured
    ├── InvalidJson              400  a body that is not JSON, or nests deeper than MAX_JSON_DEPTH
    ├── InvalidId                400  a path id that is not a UUID
    ├── NotFound                 404  missing, or another user's
    ├── InvalidGroup / InvalidEvent / InvalidChannel   400
    ├── EventLocked              400  a locked event cannot be switched off
    ├── IdempotencyConflict      409  same Idempotency-Key, other body
    ├── TooManyConnections       429  per-user stream limit
    ├── RateLimited              429
    ├── InvalidTicket            401  stream ticket unknown, used or expired
    ├── ServiceUnavailable       503  a dependency is down; nothing was accepted
    ├── QueryTimeout             503  the database cancelled a query at statement_timeout
    └── (500s named by the SPEC: FailedToMarkAsRead, FailedToDelete, …)

Each class's docstring is its default message.
"""
import logging

from flask import jsonify
from werkzeug.exceptions import HTTPException

PREFIX = "notifications_m."
log = logging.getLogger(__name__)


class ConfigError(Exception):
    """The configuration is not usable."""

    def __init__(self, source, key, problem):
        self.source, self.key, self.problem = source, key, problem
        super().__init__(f"config error: {source}: {key}: {problem}")


class ApiError(Exception):
    """Internal server error"""

    status = 500
    code = "internal_error"

    def __init__(self, message=None, errors=None, headers=None):
        self.message = message or self.__doc__.strip()
        self.errors = errors
        self.headers = headers or {}
        super().__init__(self.message)


def _error(name, status, code, doc):
    return type(name, (ApiError,), {"status": status, "code": code, "__doc__": doc})


InvalidUserId = _error("InvalidUserId", 401, "invalid_user_id", "Invalid or missing authenticated user ID")
InvalidApiKey = _error("InvalidApiKey", 401, "invalid_api_key", "Invalid or missing API key")
InvalidCustomerId = _error("InvalidCustomerId", 403, "invalid_customer_id", "Customer is not linked to this user")
InsufficientScope = _error("InsufficientScope", 403, "insufficient_scope",
                           "This API key lacks the scope this endpoint requires")
InvalidMetricsToken = _error("InvalidMetricsToken", 401, "invalid_metrics_token",
                             "Missing or wrong metrics token (Authorization: Bearer <METRICS_TOKEN>)")
MetricsTokenNotConfigured = _error("MetricsTokenNotConfigured", 403, "metrics_token_not_configured",
                                   "This diagnostic is served only with METRICS_TOKEN configured")
InvalidJson = _error("InvalidJson", 400, "invalid_json", "The request body is not valid JSON")
InvalidId = _error("InvalidId", 400, "invalid_id", "Invalid notification ID")
NotFound = _error("NotFound", 404, "not_found", "Notification not found")
InvalidGroup = _error("InvalidGroup", 400, "invalid_group", "Invalid notification group")
InvalidEvent = _error("InvalidEvent", 400, "invalid_event", "Invalid notification event")
InvalidChannel = _error("InvalidChannel", 400, "invalid_channel", "Invalid notification channel")
EventLocked = _error("EventLocked", 400, "event_locked", "This event cannot be switched off")
InvalidRequest = _error("InvalidRequest", 422, "invalid_request", "The request failed validation")
IdempotencyConflict = _error("IdempotencyConflict", 409, "idempotency_key_reused",
                             "This Idempotency-Key was already used with a different body")
TooManyConnections = _error("TooManyConnections", 429, "too_many_connections",
                            "Too many open streams for this user")
RateLimited = _error("RateLimited", 429, "rate_limited", "Too many requests")
InvalidTicket = _error("InvalidTicket", 401, "invalid_ticket", "Stream ticket is unknown, used or expired")
ServiceUnavailable = _error("ServiceUnavailable", 503, "service_unavailable",
                            "A dependency is unavailable; nothing was accepted, retry later")
QueryTimeout = _error("QueryTimeout", 503, "query_timeout",
                      "The query took too long and was stopped; narrow it or retry later")
FailedToMarkAsRead = _error("FailedToMarkAsRead", 500, "failed_to_mark_as_read", "Failed to mark notification as read")
FailedToDelete = _error("FailedToDelete", 500, "failed_to_delete", "Failed to delete notification")
FailedToFetchNotifications = _error("FailedToFetchNotifications", 500, "failed_to_fetch_notifications",
                                    "Failed to fetch notifications")
FailedToFetchPreferences = _error("FailedToFetchPreferences", 500, "failed_to_fetch_preferences",
                                  "Failed to fetch notification preferences")
FailedToUpdatePreferences = _error("FailedToUpdatePreferences", 500, "failed_to_update_preferences",
                                   "Failed to update notification preferences")

# The framework's own HTTP errors, by status: (code, message).
HTTP_CODES = {
    400: ("bad_request", "The request could not be understood"),
    401: ("unauthorized", "Authentication required"),
    403: ("forbidden", "Forbidden"),
    404: ("not_found", "Not found"),
    405: ("method_not_allowed", "Method not allowed for this path"),
    406: ("not_acceptable", "Not acceptable"),
    409: ("conflict", "Conflict"),
    413: ("payload_too_large", "Request body is too large"),
    415: ("unsupported_media_type", "Send the body as application/json"),
    422: ("invalid_request", "The request failed validation"),
    429: ("rate_limited", "Too many requests"),
    500: ("internal_error", "Internal server error"),
    503: ("service_unavailable", "Service unavailable"),
}


def envelope(status, code, message, errors=None, headers=None):
    """The one JSON error shape of the SPEC."""
    body = {"code": PREFIX + code, "message": message, "status": status}
    if errors is not None:
        body["errors"] = errors
    response = jsonify(body)
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def _flatten_messages(messages):
    """webargs nests errors by location ({"json": {...}}); clients want fields."""
    flat = {}
    for location, fields in (messages or {}).items():
        if isinstance(fields, dict):
            for field, why in fields.items():
                flat[field] = why if isinstance(why, (list, dict)) else [why]
        else:
            flat[location] = fields if isinstance(fields, list) else [fields]
    return flat


def handle_api_error(error):
    return envelope(error.status, error.code, error.message, error.errors, error.headers)


def handle_http_exception(error):
    """Map the framework's own errors (routing, webargs, size limits) to the envelope."""
    status = error.code or 500
    code, message = HTTP_CODES.get(status, ("http_error", error.name))
    data = getattr(error, "data", None) or {}
    errors = None
    if status == 422 and "messages" in data:
        errors = _flatten_messages(data["messages"])
        message = "The request failed validation: see errors"
    elif status == 400 and "messages" in data:
        # webargs answers a body that is not JSON with 400
        code, message = InvalidJson.code, InvalidJson.__doc__
    elif data.get("message"):
        message = data["message"]
    headers = dict(data.get("headers") or {})
    if status == 405 and getattr(error, "valid_methods", None):
        headers["Allow"] = ", ".join(error.valid_methods)
    return envelope(status, code, message, errors, headers)


def handle_unexpected(error):
    """Anything else is a bug or an outage: log it whole, show the client nothing of it."""
    if isinstance(error, HTTPException):
        return handle_http_exception(error)
    import psycopg2
    import psycopg2.errors
    import redis
    from .metrics import DEPENDENCY_ERRORS
    if isinstance(error, psycopg2.errors.QueryCanceled):   # statement_timeout (app/db.py)
        log.warning("query cancelled at statement_timeout")
        DEPENDENCY_ERRORS.labels("postgresql").inc()
        return handle_api_error(QueryTimeout())
    if isinstance(error, (psycopg2.OperationalError, psycopg2.InterfaceError, redis.ConnectionError,
                          redis.TimeoutError)):
        log.warning("dependency unavailable: %s", type(error).__name__)
        DEPENDENCY_ERRORS.labels("redis" if isinstance(error, redis.RedisError) else "postgresql").inc()
        return handle_api_error(ServiceUnavailable())
    log.exception("unhandled error")
    return envelope(500, "internal_error", "Internal server error")


def init_app(app):
    app.register_error_handler(ApiError, handle_api_error)
    app.register_error_handler(HTTPException, handle_http_exception)
    app.register_error_handler(Exception, handle_unexpected)
