"""Delivery reports: a provider that accepted a message later says whether it reached the user.

`POST /v1/providers/{provider_name}/reports` (report_routes.py). `provider_name` is a channel's
name, or the `name` of one provider of a failover channel (app/channels/failover.py). Two kinds:

- a Twilio provider (type `twilio`/`sms`): Twilio's status callback, form-encoded `MessageSid`,
  `MessageStatus` (and `ErrorCode`), signed in `X-Twilio-Signature`: base64 of HMAC-SHA1, under
  the provider's auth token, of the URL Twilio was given (the `StatusCallback` the SMS channel
  sends: PUBLIC_URL + this path) followed by every form field's name and value, sorted by name.
  `delivered` is recorded; `undelivered` and `failed` are recorded as undelivered; the
  intermediate statuses (`queued`, `sending`, `sent`, ...) are answered and ignored.
- any other provider given a `report_secret`: JSON `{"message_id", "status": "delivered" |
  "undelivered", "at": RFC 3339, "reason"?}` signed in `X-Notifications-Signature: t=<unix
  seconds>,v1=<hex HMAC-SHA256 of "<t>.<raw body>" under report_secret>` (the format of the
  acknowledgement callbacks, app/acks/callbacks.py); `t` more than five minutes away is refused.

A report is matched to the deliveries that provider sent under that message id (a digest's items
share one). The first final report of a `sent` delivery is recorded, in one transaction: the
delivery's `delivered_at`, or its status `undelivered` with the reason, and an attempt row
(outcome `delivered` / `undelivered`) so GET …/deliveries and the evidence show it. An
`undelivered` report counts as the channel failing: the event's fallbacks for that channel are
written at once (`<channel>_failed` and `<channel>_not_delivered_within` alike), and a
`delivered` one cancels the deadline of `<channel>_not_delivered_within` (deadlines.py). A repeated
or later report changes nothing, and an unknown message id is answered 202 too: providers retry
what is not 2xx, and a message we never recorded will not appear by retrying.
"""
import base64
import hashlib
import hmac
import logging
import time
from dataclasses import dataclass

import redis

from .. import db
from ..queues.enqueue import enqueue_on_their_lanes
from ..channels.base import expand_env, report_url
from ..errors import FailedToRecordReport, InvalidRequest, InvalidSignature, NotFound
from ..metrics import DELIVERY_REPORTS
from . import deadlines, repository

log = logging.getLogger(__name__)
TWILIO_TYPES = ("twilio", "sms")
TWILIO_FINAL = {"delivered": "delivered", "undelivered": "undelivered", "failed": "undelivered"}
SIGNATURE_HEADER = "X-Notifications-Signature"
TOLERANCE_SECONDS = 300


@dataclass(frozen=True)
class Reporter:
    name: str          # the provider's name in the URL
    channel: str       # the channel it delivers for
    kind: str          # "twilio" or "signed"
    provider: object   # the provider's Channel object (its options hold the secret)

    def secret(self):
        if self.kind == "twilio":
            return expand_env(self.provider.options.get("auth_token", "${TWILIO_AUTH_TOKEN}")) or ""
        return expand_env(self.provider.options.get("report_secret")) or ""


def _kind(name, options):
    if options.get("type", name) in TWILIO_TYPES:
        return "twilio"
    return "signed" if options.get("report_secret") else None


def reporters(app):
    """{provider name: Reporter} of every provider that reports delivery (built once per app)."""
    found = app.extensions.get("delivery_reporters")
    if found is None:
        found = {}
        for channel_name, channel in app.extensions["channels"].items():
            providers = [p for p, _, _ in getattr(channel, "providers", ())] or [channel]
            for provider in providers:
                kind = _kind(provider.name, provider.options)
                if kind is not None:
                    found.setdefault(provider.name, Reporter(provider.name, channel_name, kind, provider))
        app.extensions["delivery_reporters"] = found
    return found


def reporter(app, name):
    """The provider `name`, or 404 (also for a provider that does not report delivery)."""
    found = reporters(app).get(name)
    if found is None:
        raise NotFound("No provider of this name reports delivery here")
    return found


# ------------------------------------------------------------------------------ signatures


def twilio_signature(url, params, token):
    """Twilio's X-Twilio-Signature of a POST to `url` with form `params` (a MultiDict or a dict)."""
    getlist = params.getlist if hasattr(params, "getlist") else (lambda key: [params[key]])
    data = url + "".join(key + value for key in sorted(params) for value in sorted(getlist(key)))
    return base64.b64encode(hmac.new(token.encode(), data.encode(), hashlib.sha1).digest()).decode()


def check_twilio(app, found, request):
    """Refuse a status callback whose signature is not Twilio's for the URL it was given (the
    configured `status_callback`, else PUBLIC_URL + this path) or, behind no proxy, the URL seen."""
    token, given = found.secret(), request.headers.get("X-Twilio-Signature", "")
    query = ("?" + request.query_string.decode()) if request.query_string else ""
    urls = {expand_env(found.provider.options.get("status_callback")) or "",
            (report_url(app, found.name) or "") + query, request.url}
    if not token or not given or not any(
            url and hmac.compare_digest(twilio_signature(url, request.form, token), given) for url in urls):
        raise InvalidSignature()


def signature(secret, timestamp, body):
    """`t=<timestamp>,v1=<hex HMAC-SHA256 of "<timestamp>.<body>">` (body: bytes)."""
    mac = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def check_signed(found, header, body, now=None):
    """Refuse a JSON report whose X-Notifications-Signature does not verify, or is stale."""
    secret, now = found.secret(), time.time() if now is None else now
    parts = [p.strip().partition("=") for p in (header or "").split(",")]
    stamps = [v for k, _, v in parts if k == "t"]
    macs = [v for k, _, v in parts if k == "v1"]
    if not secret or len(stamps) != 1 or not stamps[0].isdigit() or abs(now - int(stamps[0])) > TOLERANCE_SECONDS:
        raise InvalidSignature()
    expected = signature(secret, int(stamps[0]), body).rpartition("v1=")[2]
    if not any(hmac.compare_digest(expected, mac) for mac in macs):
        raise InvalidSignature()


def twilio_report(form):
    """(message id, "delivered" | "undelivered" | None for an intermediate status, reason)."""
    missing = {k: ["Missing data for required field."] for k in ("MessageSid", "MessageStatus") if not form.get(k)}
    if missing:
        raise InvalidRequest(errors=missing)
    status = form["MessageStatus"]
    code = form.get("ErrorCode")
    return form["MessageSid"], TWILIO_FINAL.get(status), f"twilio {status}" + (f" (error {code})" if code else "")


# ------------------------------------------------------------------------------ recording


def record(app, found, message_id, status, reason=None, at=None):
    """Record a final report of `found`'s message; how many deliveries it changed (0: unknown id,
    or reported before)."""
    conn = db.get_conn()
    with db.failing_as(FailedToRecordReport):
        with db.transaction(conn):
            ids = _sent_with(conn, found, message_id)
            deadlines.for_deliveries(conn, ids)          # their deadline rows first, as the scheduler locks them
            changed, new = _apply(conn, app.config["DOMAIN"], found, ids, message_id, status, reason, at)
            new += deadlines.settle(conn, deadlines.for_deliveries(conn, changed))
        try:
            enqueue_on_their_lanes(app, conn, new)
        except redis.RedisError as exc:   # the rows are stored: the relay enqueues pending deliveries
            log.warning("report of %s: fallback deliveries not enqueued (%s); the relay will", found.name,
                        type(exc).__name__)
    DELIVERY_REPORTS.labels(found.name, status, "recorded" if changed else "ignored").inc()
    return len(changed)


def _sent_with(conn, found, message_id):
    """Ids of the deliveries this provider accepted under `message_id`."""
    with conn.cursor() as cur:
        cur.execute("SELECT d.id FROM deliveries d WHERE d.provider_message_id = %(pid)s AND d.channel = %(channel)s"
                    " AND EXISTS (SELECT 1 FROM delivery_attempts a WHERE a.delivery_id = d.id AND a.outcome = 'sent'"
                    " AND coalesce(a.provider, d.channel) = %(provider)s)",
                    {"pid": message_id, "channel": found.channel, "provider": found.name})
        return [row[0] for row in cur.fetchall()]


def _apply(conn, domain, found, ids, message_id, status, reason, at):
    """Record the report on each `sent` delivery not reported yet: (their ids, fallback delivery ids)."""
    if not ids:
        return [], []
    with db.cursor(conn) as cur:
        cur.execute("SELECT d.id, d.notification_id, d.notification_seq, d.user_id, d.channel, d.attempts, n.type,"
                    " n.event"
                    " FROM deliveries d JOIN notifications n ON n.id = d.notification_id"
                    " WHERE d.id = ANY(%s::uuid[]) AND d.status = 'sent' AND d.delivered_at IS NULL"
                    " ORDER BY d.id FOR UPDATE OF d", ([str(i) for i in ids],))
        rows = cur.fetchall()
        new = []
        for row in rows:
            fallback = _fallbacks(domain, row) if status == "undelivered" else []
            said = "; ".join(filter(None, [f"undelivered: {reason}" if status == "undelivered" else None,
                                           f"falls back to {', '.join(fallback)}" if fallback else None]))
            cur.execute("UPDATE deliveries SET status = CASE WHEN %(s)s = 'undelivered' THEN 'undelivered' ELSE status END,"
                        " delivered_at = CASE WHEN %(s)s = 'delivered' THEN coalesce(%(at)s, now()) END,"
                        " reason = CASE WHEN %(said)s <> '' THEN concat_ws('; ', reason, %(said)s) ELSE reason END,"
                        " last_error = CASE WHEN %(s)s = 'undelivered' THEN %(why)s ELSE last_error END,"
                        " updated_at = now() WHERE id = %(id)s",
                        {"s": status, "at": at, "said": said, "why": reason, "id": row["id"]})
            cur.execute("INSERT INTO delivery_attempts (delivery_id, notification_seq, attempt, outcome, error,"
                        " provider, provider_message_id, started_at) VALUES (%s, %s, %s, %s, %s, %s, %s,"
                        " coalesce(%s, now()))",
                        (row["id"], row["notification_seq"], row["attempts"], status,
                         reason if status == "undelivered" else None, found.name, message_id, at))
            new += repository.fall_back(conn, row, fallback, reason=f"{row['channel']} undelivered")
    return [row["id"] for row in rows], new


def _fallbacks(domain, row):
    group = domain.groups.get(row["type"])
    event = group.events.get(row["event"]) if group else None
    return event.fallbacks_after(row["channel"]) if event is not None else []
