"""Browser-facing protections: CORS for configured origins only, and security headers."""
from flask_cors import CORS

HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Strict-Transport-Security": "max-age=31536000; includeSubDomains",
}


def _headers(response):
    for name, value in HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def init_app(app):
    origins = app.config["CORS_ORIGINS"]
    if origins:
        CORS(app, resources={r"/v1/*": {"origins": origins}},
             allow_headers=["Authorization", "Content-Type", "Last-Event-ID", "Idempotency-Key", "X-Request-ID"],
             expose_headers=["X-Request-ID", "Retry-After"], max_age=600)
    app.after_request(_headers)
