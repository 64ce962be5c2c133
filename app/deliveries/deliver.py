"""One attempt of one delivery: claim it, send it, record what happened.

A successful send is recorded by the channel itself, through the receipt it
finds in `Outbound.accepted`, the moment the provider accepted (receipt.py
says why); a channel that does not call it is recorded as soon as `send`
returns. Anything that goes wrong after the provider accepted (a failed
goodbye, a job timeout) no longer makes it a retry.

Outcomes: `held` (quiet hours: waits, without spending an attempt, and is
scheduled for the window's end); `sent`; `skipped` (no address for the channel, the notification
was deleted, the channel is no longer configured) and never retried;
`failed` at once for a permanent provider error or after the last attempt;
otherwise back to `pending` and `RetryLater` is raised, so RQ schedules the
next attempt with the back-off of queue.yaml.
"""
import datetime
import logging

from flask import current_app

from .. import db
from ..channels import registry
from ..channels.base import Outbound, PermanentError, describe, label
from ..channels.templates import event_templates, shown, teaser
from ..metrics import DELIVERIES, DELIVERY_LATENCY
from ..notifications.model import rfc3339, to_public
from ..preferences import repository as preferences
from ..preferences.quiet_hours import applies, held_until
from ..preferences.rules import resolve
from ..queues.enqueue import enqueue_deliveries, schedule_delivery
from . import repository
from .receipt import Receipt, record_late, unrecord

log = logging.getLogger(__name__)
LEASE_SECONDS = 120   # longer than any channel's send timeout; a crashed attempt is retaken after it


class RetryLater(Exception):
    """This attempt failed in a way worth trying again."""


def deliver(delivery_id):
    """Make one attempt; return the delivery's status after it."""
    app = current_app._get_current_object()
    domain = app.config["DOMAIN"]
    with db.connection() as conn:
        with db.transaction(conn):
            claimed = repository.claim(conn, delivery_id, LEASE_SECONDS)
            if claimed is not None and claimed["row"] is not None:
                claimed["choices"] = preferences.choices(conn, claimed["user_id"], claimed["row"]["customer_id"],
                                                         claimed["row"]["type"])
                claimed["quiet"] = preferences.quiet_hours(conn, claimed["user_id"])
        if claimed is None:
            return "not-claimable"
        claimed["tried"] = []
        with Receipt(conn, claimed) as accepted:
            status, kwargs, retry = _attempt(app, domain, claimed, accepted)
        if status != "sent" or claimed["tried"]:
            with db.transaction(conn):
                fallback = _settle(conn, domain, claimed, status, kwargs, accepted)
            if fallback:
                with db.transaction(conn):
                    lanes = repository.lanes(conn, fallback)
                for lane, ids in lanes.items():
                    enqueue_deliveries(ids, app, lane)
    if status == "sent" and not accepted.recorded:
        record_late(claimed, accepted.provider_id, provider=accepted.provider)
    if status == "held":
        schedule_delivery(claimed["id"], kwargs["until"], app)
        return status
    DELIVERIES.labels(claimed["channel"], kwargs.get("outcome") or status).inc()
    if status == "sent" and claimed["row"] is not None:
        age = datetime.datetime.now(datetime.timezone.utc) - claimed["row"]["created_at"]
        DELIVERY_LATENCY.labels(claimed["channel"]).observe(age.total_seconds())
    if retry:
        raise RetryLater(kwargs["error"].partition(":")[0])   # the class only: RQ keeps this text a week
    return status


def _settle(conn, domain, claimed, status, kwargs, accepted):
    """Record the attempt (the caller commits): the provider tries it failed over from, its
    outcome, and for a delivery failed for good the fallback deliveries it starts (their ids)."""
    repository.record_tries(conn, claimed, claimed["tried"])
    if status == "sent":
        return []
    if accepted.submitted:   # then refused or unanswered
        unrecord(conn, claimed)
    if status == "held":
        repository.hold(conn, claimed, kwargs["until"], kwargs["reason"])
        return []
    fallback = _fallbacks(domain, claimed) if status == "failed" else []
    if fallback:   # said on the failed delivery, started in the same transaction
        kwargs["reason"] = "; ".join(filter(None, [kwargs.get("reason"), f"falls back to {', '.join(fallback)}"]))
    repository.finish(conn, claimed, status, **kwargs)
    return repository.fall_back(conn, claimed, fallback)


def _attempt(app, domain, claimed, accepted):
    """(status, finish kwargs, retry?) for one attempt of the claimed delivery."""
    row = claimed["row"]
    channel = registry.get(app, claimed["channel"])
    if row is None or row["deleted_at"] is not None:
        return "skipped", {"reason": "notification deleted before delivery"}, False
    if channel is None:
        return "skipped", {"reason": f"channel {claimed['channel']!r} is not configured"}, False
    group = domain.groups.get(row["type"])
    event = group.events.get(row["event"]) if group else None
    if event is not None and not resolve(event.with_fallback(claimed["channel"]), claimed["channel"], claimed["choices"],
                                         row["customer_id"])[0]:
        return "skipped", {"reason": "switched off in the user's preferences"}, False
    if applies(claimed.get("quiet"), claimed["channel"], event):
        until = held_until(datetime.datetime.now(datetime.timezone.utc), claimed["quiet"], row["timezone"])
        if until is not None:
            return "held", {"until": until, "reason": f"held by quiet hours until {rfc3339(until)}"}, False
    contact = {k: row[k] for k in ("email", "phone", "locale", "timezone")}
    if not channel.address(contact):
        return "skipped", {"reason": f"no {channel.needs} on file for this user"}, False
    notification, templates = shown(to_public(row)), event_templates(domain, row["type"], row["event"])
    if event is not None and event.external_content == "teaser":
        notification, templates = teaser(app, domain, notification, templates)
    outbound = Outbound(str(claimed["id"]), notification, str(row["user_id"]), contact, templates, accepted,
                        claimed["avoid"], claimed["tried"])
    try:
        provider_id = channel.send(outbound)
    except Exception as exc:
        if accepted.accepted:   # the provider has it: what failed came afterwards
            log.warning("delivery %s: %s after the provider accepted it", claimed["id"], type(exc).__name__)
            return "sent", {"provider_id": accepted.provider_id}, False
        return _failure(domain, claimed, exc)
    accepted(provider_id)       # a channel that does not report acceptance itself: recorded now
    return "sent", {"provider_id": accepted.provider_id}, False


def _fallbacks(domain, claimed):
    """The event's fallback channels for this delivery's channel (notifications.yaml `fallback:`)."""
    row = claimed["row"]
    group = domain.groups.get(row["type"]) if row is not None else None
    event = group.events.get(row["event"]) if group else None
    return event.fallbacks_after(claimed["channel"]) if event is not None else []


def _failure(domain, claimed, exc):
    """(status, finish kwargs, retry?) for a send that raised before the provider accepted.

    The user reads the class and the redacted detail (`describe`); logs and RQ, which keep text
    for longer and show it to more people, get the class alone (`label`)."""
    error = describe(exc)
    if isinstance(exc, PermanentError):
        return "failed", {"error": error}, False
    # retryable by default: timeouts, 5xx, SDK bugs
    if claimed["tries"] >= domain.retry_attempts:
        return "failed", {"error": error, "reason": f"gave up after {claimed['tries']} attempts"}, False
    log.info("delivery %s attempt %d failed: %s", claimed["id"], claimed["tries"], label(exc))
    return "pending", {"error": error, "outcome": "retry"}, True
