"""`GET /v1/notifications/stats` (API key): what happened to the notifications created in a window.

    created                     notifications stored in [from, to) (hidden and deleted ones included)
    read, read_rate             of those, how many were read in the app (read / created; 0 when none)
    median_seconds_to_read      median of read_at - created_at over the read ones (null when none)
    deliveries                  per channel: deliveries of those notifications by state
                                (`pending` counts pending, sending and held ones; the in-app
                                channel's `sent` ones are the notifications that are in_app)
    delivery_latency_seconds    per channel: p50/p95/p99 of sent_at - created_at over the sent ones
    acknowledgements            per event ("group.event") of notices needing acknowledgement: required,
                                acknowledged, ack_rate, median_seconds_to_ack, overdue (unacknowledged
                                past their deadline, now)

Percentiles are PostgreSQL's percentile_cont (interpolated). The window is
read through `notifications_created` (migrations_sql/0006); the plans are in
docs/inbox.md.
"""
import datetime

import marshmallow as ma
from flask import current_app
from flask.views import MethodView
from marshmallow import fields, validate

from .. import db
from ..api import Blueprint
from ..api.schema import StrictSchema, UtcDateTime
from ..deliveries import in_app
from ..errors import FailedToFetchStats, InvalidEvent
from ..security.auth import service_required

blp = Blueprint("stats", __name__, description="History and analytics (API key)")

MAX_WINDOW = datetime.timedelta(days=366)
STATES = ("sent", "failed", "skipped", "pending")


class StatsQuerySchema(StrictSchema):
    since = UtcDateTime(data_key="from", required=True, metadata={"description": "RFC 3339, inclusive"})
    until = UtcDateTime(data_key="to", required=True,
                                 metadata={"description": "RFC 3339, exclusive; at most 366 days after `from`"})
    customer_id = fields.UUID(load_default=None)
    group = fields.String(load_default=None, validate=validate.Length(min=1, max=64))
    event = fields.String(load_default=None, validate=validate.Length(min=1, max=64))

    @ma.validates_schema
    def _window(self, data, **_):
        since, until = data.get("since"), data.get("until")
        if since is None or until is None:
            return
        if until <= since:
            raise ma.ValidationError("Must be after `from`.", "to")
        if until - since > MAX_WINDOW:
            raise ma.ValidationError("The window may span at most 366 days.", "to")


class ChannelDeliveriesSchema(ma.Schema):
    sent = fields.Integer()
    failed = fields.Integer()
    skipped = fields.Integer()
    pending = fields.Integer()


class LatencySchema(ma.Schema):
    p50 = fields.Float(allow_none=True)
    p95 = fields.Float(allow_none=True)
    p99 = fields.Float(allow_none=True)


class AckStatsSchema(ma.Schema):
    required = fields.Integer()
    acknowledged = fields.Integer()
    ack_rate = fields.Float()
    median_seconds_to_ack = fields.Float(allow_none=True)
    overdue = fields.Integer()


class StatsSchema(ma.Schema):
    created = fields.Integer()
    read = fields.Integer()
    read_rate = fields.Float()
    median_seconds_to_read = fields.Float(allow_none=True)
    deliveries = fields.Dict(keys=fields.String(), values=fields.Nested(ChannelDeliveriesSchema))
    delivery_latency_seconds = fields.Dict(keys=fields.String(), values=fields.Nested(LatencySchema))
    acknowledgements = fields.Dict(keys=fields.String(), values=fields.Nested(AckStatsSchema))


def _filters(domain, customer_id, group, event):
    """SQL conditions on `n` and their parameters; 400 for an unknown group or event."""
    where, params = [], {}
    if customer_id is not None:
        where.append("n.customer_id = %(customer_id)s")
        params["customer_id"] = customer_id
    found = None
    if group is not None:
        found = domain.known_group(group)
        where.append("n.type = %(group)s")
        params["group"] = found.name
    if event is not None:
        groups = [found] if found is not None else list(domain.groups.values())
        if not any(event in g.events for g in groups):
            raise InvalidEvent(f"Unknown event {event!r}" + (f" in group {found.name!r}" if found else ""))
        where.append("n.event = %(event)s")
        params["event"] = event
    return "".join(" AND " + w for w in where), params


def _seconds(value):
    return None if value is None else round(float(value), 3)


def stats(conn, domain, since, until, customer_id=None, group=None, event=None):
    extra, params = _filters(domain, customer_id, group, event)
    params.update(since=since, until=until)
    window = "n.created_at >= %(since)s AND n.created_at < %(until)s" + extra
    with conn.cursor() as cur:
        cur.execute("SELECT count(*), count(n.read_at), percentile_cont(0.5) WITHIN GROUP"
                    " (ORDER BY extract(epoch FROM n.read_at - n.created_at)::float8)"
                    f" FROM notifications n WHERE {window}", params)
        created, read, median = cur.fetchone()
        cur.execute("SELECT d.channel,"
                    " count(*) FILTER (WHERE d.status = 'sent'),"
                    " count(*) FILTER (WHERE d.status = 'failed'),"
                    " count(*) FILTER (WHERE d.status = 'skipped'),"
                    " count(*) FILTER (WHERE d.status IN ('pending', 'sending')),"
                    " percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP"
                    " (ORDER BY extract(epoch FROM d.sent_at - d.created_at)::float8) FILTER (WHERE d.status = 'sent')"
                    " FROM (SELECT d.channel, d.status, d.sent_at, n.created_at"
                    f" FROM notifications n JOIN deliveries d ON d.notification_id = n.id WHERE {window}"
                    f" AND NOT {in_app.WRITTEN_SENT_ROW}"
                    f" UNION ALL {in_app.SENT_ROWS.format(window=window)}) d"
                    " GROUP BY d.channel ORDER BY d.channel", params)
        per_channel = cur.fetchall()
        cur.execute("SELECT n.type || '.' || n.event, count(*), count(n.acked_at), percentile_cont(0.5) WITHIN GROUP"
                    " (ORDER BY extract(epoch FROM n.acked_at - n.created_at)::float8),"
                    " count(*) FILTER (WHERE n.acked_at IS NULL AND n.ack_deadline <= now())"
                    f" FROM notifications n WHERE {window} AND n.ack_required GROUP BY 1 ORDER BY 1", params)
        acks = {name: {"required": required, "acknowledged": acked, "ack_rate": round(acked / required, 4),
                       "median_seconds_to_ack": _seconds(median_ack), "overdue": overdue}
                for name, required, acked, median_ack, overdue in cur.fetchall()}
    deliveries = {channel: dict.fromkeys(STATES, 0) for channel in domain.channels}
    latency = {channel: {"p50": None, "p95": None, "p99": None} for channel in domain.channels}
    for channel, sent, failed, skipped, pending, percentiles in per_channel:
        deliveries[channel] = {"sent": sent, "failed": failed, "skipped": skipped, "pending": pending}
        p50, p95, p99 = percentiles or (None, None, None)
        latency[channel] = {"p50": _seconds(p50), "p95": _seconds(p95), "p99": _seconds(p99)}
    return {"created": created, "read": read, "read_rate": round(read / created, 4) if created else 0.0,
            "median_seconds_to_read": _seconds(median), "deliveries": deliveries,
            "delivery_latency_seconds": latency, "acknowledgements": acks}


@blp.route("/stats")
class Stats(MethodView):
    decorators = [service_required("stats")]

    @blp.query(StatsQuerySchema)
    @blp.response(200, StatsSchema)
    def get(self, since, until, customer_id, group, event):
        """Created, read, time to read, deliveries and their latency for a window of at most 366 days"""
        with db.failing_as(FailedToFetchStats):
            return stats(db.get_conn(), current_app.config["DOMAIN"], since, until, customer_id, group, event)

