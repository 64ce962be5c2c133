"""Browser-facing protections: CORS for configured origins only, security headers, and no caching
of personal answers."""
from flask import request
from flask_cors import CORS

HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Strict-Transport-Security": "max-age=31536000; includeSubDomains",
}


# Every answer under /v1/ is about someone (an inbox, preferences, contacts, deliveries, audit
# rows, stats): no browser, shared proxy or CDN may keep a copy. A view that sets its own
# Cache-Control (the stream's `no-cache, no-transform`) keeps it.
PERSONAL_PREFIX = "/v1/"
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def _headers(response):
    for name, value in HEADERS.items():
        response.headers.setdefault(name, value)
    if request.path.startswith(PERSONAL_PREFIX):
        for name, value in NO_STORE.items():
            response.headers.setdefault(name, value)
    return response


def init_app(app):
    origins = app.config["CORS_ORIGINS"]
    if origins:
        CORS(app, resources={r"/v1/*": {"origins": origins}},
             allow_headers=["Authorization", "Content-Type", "Last-Event-ID", "Idempotency-Key", "X-Request-ID"],
             expose_headers=["X-Request-ID", "Retry-After"], max_age=600)
    app.after_request(_headers)
