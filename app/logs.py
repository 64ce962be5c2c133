"""Structured JSON logs with a request id that follows work from request to job.

`X-Request-ID` is taken from the request when it is sane, else made, and
returned on the response; it is stored with an accepted trigger so the jobs
that trigger spawns log under the same id. Log lines carry ids and counts,
never tokens, keys, tickets or message bodies.
"""
import contextvars
import json
import logging
import re
import uuid

from flask import g, request

request_id_var = contextvars.ContextVar("request_id", default=None)
_SAFE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


class JsonFormatter(logging.Formatter):
    def format(self, record):
        entry = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"), "level": record.levelname,
                 "logger": record.name, "message": record.getMessage()}
        rid = request_id_var.get()
        if rid:
            entry["request_id"] = rid
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
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


def _begin():
    given = request.headers.get("X-Request-ID", "")
    g.request_id = given if _SAFE.match(given) else uuid.uuid4().hex
    request_id_var.set(g.request_id)


def _finish(response):
    rid = g.get("request_id")
    if rid:
        response.headers["X-Request-ID"] = rid
    return response


def init_app(app):
    configure()
    app.before_request(_begin)
    app.after_request(_finish)
