"""The error tree and the one handler that turns any failure into SPEC's envelope.

    ConfigError                  start-up only: one line naming file, key, problem
    ApiError                     every error a client can see
    ├── InvalidUserId            401  bad, missing or expired bearer token
    ├── InvalidApiKey            401  missing or wrong X-API-Key
    ├── InvalidCustomerId        403  customer outside the token's `customers`
    ├── InsufficientScope        403  a known API key without the endpoint's scope
    ├── InvalidSignature         403  a provider's delivery report whose signature does not verify
    ├── InvalidMetricsToken      401  /metrics or the greenlet scan without the METRICS_TOKEN bearer
    ├── MetricsTokenNotConfigured 403 the greenlet scan, with no METRICS_TOKEN configured
    ├── InvalidJson              400  a body that is not JSON, or nests deeper than MAX_JSON_DEPTH
    ├── InvalidId                400  a path id that is not a UUID
    ├── NotFound                 404  missing, or another user's
    ├── InvalidGroup / InvalidEvent / InvalidChannel   400
    ├── InvalidLocale            400  a trigger's `translations` key that is no known BCP 47 tag
    ├── InvalidRequest           422  a request that fails validation
    ├── EventLocked              400  a locked event cannot be switched off
    ├── ConsentTextRequired      422  consent given without `consent_text_version`
    ├── IdempotencyConflict      409  same Idempotency-Key, other body
    ├── TriggerNotCancellable    409  the trigger is not scheduled any more (due, dispatched) or never was
    ├── AckNotRequired           409  acknowledging a notification that needs no acknowledgement
    ├── TooManyConnections       429  per-user stream limit
    ├── RateLimited              429
    ├── InvalidTicket            401  stream ticket unknown, used or expired
    ├── ServiceUnavailable       503  a dependency is down; nothing was accepted
    ├── QueryTimeout             503  the database cancelled a query at statement_timeout
    └── 500s naming what failed: FailedToMarkAsRead, FailedToAcknowledge, FailedToDelete, FailedToFetch…, FailedToUpdate…,
        FailedToRecordReport

Each class's docstring is its default message. Exceptions no client ever sees stay with the code
that raises and handles them (the channels' DeliveryError tree in app/channels/base.py, the hub's
Dropped in app/bus/codec.py).
"""
import logging

from blinker import Namespace
from flask import jsonify
from werkzeug.exceptions import HTTPException

PREFIX = "notifications_m."
log = logging.getLogger(__name__)
# Sent with `dependency` ("postgresql" or "redis") for each request answered 503 because it failed
# (app/metrics.py counts them; this module knows nothing of metrics).
dependency_failed = Namespace().signal("dependency-failed")


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


class InvalidUserId(ApiError):
    """Invalid or missing authenticated user ID"""
    status, code = 401, "invalid_user_id"


class InvalidApiKey(ApiError):
    """Invalid or missing API key"""
    status, code = 401, "invalid_api_key"


class InvalidCustomerId(ApiError):
    """Customer is not linked to this user"""
    status, code = 403, "invalid_customer_id"


class InsufficientScope(ApiError):
    """This API key lacks the scope this endpoint requires"""
    status, code = 403, "insufficient_scope"


class InvalidSignature(ApiError):
    """The report's signature does not verify with this provider's secret"""

    status, code = 403, "invalid_signature"


class InvalidMetricsToken(ApiError):
    """Missing or wrong metrics token (Authorization: Bearer <METRICS_TOKEN>)"""
    status, code = 401, "invalid_metrics_token"


class MetricsTokenNotConfigured(ApiError):
    """This diagnostic is served only with METRICS_TOKEN configured"""
    status, code = 403, "metrics_token_not_configured"


class InvalidJson(ApiError):
    """The request body is not valid JSON"""
    status, code = 400, "invalid_json"


class InvalidId(ApiError):
    """Invalid notification ID"""
    status, code = 400, "invalid_id"


class NotFound(ApiError):
    """Notification not found"""
    status, code = 404, "not_found"


class InvalidGroup(ApiError):
    """Invalid notification group"""
    status, code = 400, "invalid_group"


class InvalidEvent(ApiError):
    """Invalid notification event"""
    status, code = 400, "invalid_event"


class InvalidChannel(ApiError):
    """Invalid notification channel"""
    status, code = 400, "invalid_channel"


class InvalidLocale(ApiError):
    """Unknown or malformed locale tag in translations"""
    status, code = 400, "invalid_locale"


class InvalidPriority(ApiError):
    """A trigger asked for a priority above its event's"""
    status, code = 400, "invalid_priority"


class EventLocked(ApiError):
    """This event cannot be switched off"""
    status, code = 400, "event_locked"


class ConsentTextRequired(ApiError):
    """Giving consent needs `consent_text_version`: the version of the consent text the user was shown"""
    status, code = 422, "consent_text_version_required"


class FailedToFetchConsent(ApiError):
    """Failed to fetch the consent history"""
    status, code = 500, "failed_to_fetch_consent"


class FailedToFetchEvidence(ApiError):
    """Failed to gather the notification's evidence"""
    status, code = 500, "failed_to_fetch_evidence"


class InvalidRequest(ApiError):
    """The request failed validation"""
    status, code = 422, "invalid_request"


class IdempotencyConflict(ApiError):
    """This Idempotency-Key was already used with a different body"""
    status, code = 409, "idempotency_key_reused"


class TriggerNotCancellable(ApiError):
    """Only a scheduled trigger can be cancelled, before its send_at"""
    status, code = 409, "trigger_not_cancellable"


class AckNotRequired(ApiError):
    """This notification needs no acknowledgement"""
    status, code = 409, "ack_not_required"


class TooManyConnections(ApiError):
    """Too many open streams for this user"""
    status, code = 429, "too_many_connections"


class RateLimited(ApiError):
    """Too many requests"""
    status, code = 429, "rate_limited"


class InvalidTicket(ApiError):
    """Stream ticket is unknown, used or expired"""
    status, code = 401, "invalid_ticket"


class ServiceUnavailable(ApiError):
    """A dependency is unavailable; nothing was accepted, retry later"""
    status, code = 503, "service_unavailable"


class WebPushNotConfigured(ApiError):
    """Web Push is not configured on this service"""
    status, code = 503, "webpush_not_configured"


class TooManySubscriptions(ApiError):
    """This user has the most Web Push subscriptions allowed; delete one first"""
    status, code = 409, "too_many_subscriptions"


class QueryTimeout(ApiError):
    """The query took too long and was stopped; narrow it or retry later"""
    status, code = 503, "query_timeout"


class FailedToMarkAsRead(ApiError):
    """Failed to mark notification as read"""
    status, code = 500, "failed_to_mark_as_read"


class FailedToAcknowledge(ApiError):
    """Failed to acknowledge the notification"""
    status, code = 500, "failed_to_acknowledge"


class FailedToDelete(ApiError):
    """Failed to delete notification"""
    status, code = 500, "failed_to_delete"


class FailedToFetchNotifications(ApiError):
    """Failed to fetch notifications"""
    status, code = 500, "failed_to_fetch_notifications"


class FailedToFetchPreferences(ApiError):
    """Failed to fetch notification preferences"""
    status, code = 500, "failed_to_fetch_preferences"


class FailedToUpdatePreferences(ApiError):
    """Failed to update notification preferences"""
    status, code = 500, "failed_to_update_preferences"


class FailedToFetchContact(ApiError):
    """Failed to fetch contact"""
    status, code = 500, "failed_to_fetch_contact"


class FailedToUpdateContact(ApiError):
    """Failed to update contact"""
    status, code = 500, "failed_to_update_contact"


class FailedToFetchStats(ApiError):
    """Failed to fetch notification statistics"""
    status, code = 500, "failed_to_fetch_stats"


class FailedToRecordReport(ApiError):
    """Failed to record the delivery report"""

    status, code = 500, "failed_to_record_report"


class FailedToFetchAudit(ApiError):
    """Failed to fetch the audit log"""
    status, code = 500, "failed_to_fetch_audit"


# The framework's own HTTP errors (routing, webargs, size limits), by status: (code, message).
HTTP_CODES = {int(status): (code, message) for status, code, message in (line.split(None, 2) for line in """
400  bad_request             The request could not be understood
401  unauthorized            Authentication required
403  forbidden               Forbidden
404  not_found               Not found
405  method_not_allowed      Method not allowed for this path
406  not_acceptable          Not acceptable
409  conflict                Conflict
413  payload_too_large       Request body is too large
415  unsupported_media_type  Send the body as application/json
422  invalid_request         The request failed validation
429  rate_limited            Too many requests
500  internal_error          Internal server error
503  service_unavailable     Service unavailable
""".strip().splitlines())}


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
    if isinstance(error, psycopg2.errors.QueryCanceled):   # statement_timeout (app/db.py)
        log.warning("query cancelled at statement_timeout")
        dependency_failed.send(dependency="postgresql")
        return handle_api_error(QueryTimeout())
    if isinstance(error, (psycopg2.OperationalError, psycopg2.InterfaceError, redis.ConnectionError,
                          redis.TimeoutError)):
        log.warning("dependency unavailable: %s", type(error).__name__)
        dependency_failed.send(dependency="redis" if isinstance(error, redis.RedisError) else "postgresql")
        return handle_api_error(ServiceUnavailable())
    log.exception("unhandled error")
    return envelope(500, "internal_error", "Internal server error")


def init_app(app):
    app.register_error_handler(ApiError, handle_api_error)
    app.register_error_handler(HTTPException, handle_http_exception)
    app.register_error_handler(Exception, handle_unexpected)
