"""Liveness, readiness and the OpenAPI page: what load balancers and people probe."""
import gc

import greenlet
from flask import Blueprint, current_app, jsonify, request

from . import db
from .errors import InvalidRequest
from .metrics import check_operator_token
from .bus import redis

blp = Blueprint("health", __name__)


@blp.get("/healthz")
def healthz():
    """The process answers; once it has served a stream, also how many are open in it. With
    `?greenlets=1` also the greenlets alive in it: a scan of the whole heap, for the operator's
    leak checks, so only with the METRICS_TOKEN bearer (and never when none is configured)."""
    scan = "greenlets" in request.args
    if scan and request.args["greenlets"] != "1":
        raise InvalidRequest("greenlets: the only value is 1 (?greenlets=1 counts live greenlets)")
    if scan:
        check_operator_token(required=True)
    body = {"status": "ok"}
    hub = current_app.extensions.get("stream_hub")
    if hub is not None:
        body["streams"] = hub.count()
    if scan:
        body["greenlets"] = sum(1 for obj in gc.get_objects() if isinstance(obj, greenlet.greenlet) and not obj.dead)
    return jsonify(body)


@blp.get("/readyz")
def readyz():
    """PostgreSQL and Redis both answer; 503 names the one that does not."""
    checks = {}
    try:
        with db.connection() as conn, conn.cursor() as cur:
            cur.execute("SELECT 1")
        checks["postgres"] = "ok"
    except Exception as exc:  # any failure means not ready
        checks["postgres"] = f"unavailable: {type(exc).__name__}"
    try:
        redis().ping()
        checks["redis"] = "ok"
    except Exception as exc:
        checks["redis"] = f"unavailable: {type(exc).__name__}"
    ready = all(v == "ok" for v in checks.values())
    if not ready:
        current_app.logger.warning("not ready: %s", checks)
    body = {"status": "ok" if ready else "unavailable", "checks": checks}
    if not ready:
        body.update(code="notifications_m.not_ready", message="A dependency is unavailable", status=503)
    return jsonify(body), 200 if ready else 503
