"""Structured JSON logs with a request id that follows work from request to job.

Every request gets an id of the service's own (`X-Request-ID` on the response,
stored with an accepted trigger so the jobs it spawns log under it, and in
audit rows). A client's `X-Request-ID` is never taken as ours: whoever sends
it could collide with, or impersonate, another request's id in the audit log.
It is kept beside ours as `client_request_id` in the request's log lines, cut
to 64 characters of `A-Z a-z 0-9 . _ : -` so it can neither forge a log line
nor carry a payload.

Every line's message and exception text pass through `redact.redact` (email
addresses, phone numbers, tokens, URL credentials and query strings out);
code logs ids and counts, never notification text.
"""
import contextvars
import json
import logging
import re
import uuid

from flask import g, request

from .redact import redact

request_id_var = contextvars.ContextVar("request_id", default=None)
client_request_id_var = contextvars.ContextVar("client_request_id", default=None)
CLIENT_ID_LENGTH = 64
_UNSAFE = re.compile(r"[^A-Za-z0-9._:-]")


class JsonFormatter(logging.Formatter):
    def format(self, record):
        entry = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"), "level": record.levelname,
                 "logger": record.name, "message": redact(record.getMessage())}
        rid = request_id_var.get()
        if rid:
            entry["request_id"] = rid
        client_rid = client_request_id_var.get()
        if client_rid:
            entry["client_request_id"] = client_rid
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False)


def configure():
    """JSON lines on stderr for the whole process (called once by create_app)."""
    root = logging.getLogger()
    if any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
        return
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


def client_request_id(given):
    """The client's X-Request-ID as it may be logged: unsafe characters dropped, at most 64 kept;
    None when nothing is left."""
    cleaned = _UNSAFE.sub("", (given or "")[:4 * CLIENT_ID_LENGTH])[:CLIENT_ID_LENGTH]
    return redact(cleaned) or None


def _begin():
    g.request_id = uuid.uuid4().hex
    g.client_request_id = client_request_id(request.headers.get("X-Request-ID"))
    request_id_var.set(g.request_id)
    client_request_id_var.set(g.client_request_id)


def _finish(response):
    rid = g.get("request_id")
    if rid:
        response.headers["X-Request-ID"] = rid
    return response


def _forget(exc=None):
    """Lines logged after the request (in this thread or greenlet) are not the request's."""
    request_id_var.set(None)
    client_request_id_var.set(None)


def init_app(app):
    configure()
    app.before_request(_begin)
    app.after_request(_finish)
    app.teardown_request(_forget)
