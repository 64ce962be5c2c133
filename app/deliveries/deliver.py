"""One attempt of one delivery: claim it, send it, record what happened.

A successful send is recorded by the channel itself, through the receipt it
finds in `Outbound.accepted`, the moment the provider accepted (receipt.py
says why); a channel that does not call it is recorded as soon as `send`
returns. Anything that goes wrong after the provider accepted (a failed
goodbye, a job timeout) no longer makes it a retry.

Each attempt row keeps what the attempt was decided on (`resolution`: the
preference resolved, the quiet hours and whether they applied, and for a group
that requires consent whether consent is on record for the address): the
evidence of app/audit/evidence.py.

A delivery of an escalation step (app/acks/service.py) follows the rules of
docs/acknowledgements.md: skipped once the notice is acknowledged; sent on
its channel even where the event's defaults leave that channel out, unless
the user switched it off for the event or its group (a locked event: sent
all the same); held by quiet hours like any other (never an urgent or locked
event's).

Outcomes: `expired` (the notification's `expires_at` has passed: never sent, never retried,
whatever attempt it was); `held` (quiet hours: waits, without spending an attempt, and is
scheduled for the window's end); `sent`; `skipped` (no address for the channel, the notification
was deleted, the channel is no longer configured, no consent on record for the address of a group
that requires it) and never retried;
`failed` at once for a permanent provider error or after the last attempt;
otherwise back to `pending` and `RetryLater` is raised, so RQ schedules the
next attempt with the back-off of queue.yaml.
"""
import dataclasses
import datetime
import logging

from flask import current_app

from .. import consent, db, i18n
from ..channels import registry
from ..channels.base import Outbound, PermanentError, describe, label
from ..channels.templates import shown, teaser
from ..metrics import DELIVERIES, DELIVERY_LATENCY
from ..notifications.model import rfc3339, to_public
from ..preferences import repository as preferences
from ..preferences.quiet_hours import applies, held_until
from ..preferences.rules import resolve
from ..queues.enqueue import enqueue_on_their_lanes, schedule_delivery
from . import deadlines, repository
from . import digest as digests
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
                event = _event(domain, claimed)
                if event is not None and event.requires_consent:
                    claimed["granted"] = consent.consented(conn, [claimed["user_id"]], event,
                                                           claimed["row"]["customer_id"])
                claimed["resolution"] = resolution(app, event, claimed)
                deadlines.watch(conn, claimed, event)   # `<channel>_not_delivered_within` (deadlines.py)
        if claimed is None:
            return "not-claimable"
        claimed["tried"] = []
        with Receipt(conn, claimed) as accepted:
            status, kwargs, retry = _attempt(app, domain, claimed, accepted)
        if status != "sent" or claimed["tried"]:
            with db.transaction(conn):
                fallback = _settle(conn, domain, claimed, status, kwargs, accepted)
            enqueue_on_their_lanes(app, conn, fallback)
    if status == "sent" and not accepted.recorded:
        record_late(claimed, accepted.provider_id, provider=accepted.provider)
    if status == "sent" and claimed.get("digest_id"):
        digests.settle(claimed["id"], claimed["digest_id"], accepted.provider_id)
    if status == "held":   # on its lane: a held `high` alert must not wait behind the bulk lane at the window's end
        with db.connection() as conn, db.transaction(conn):
            lane = next(iter(repository.lanes(conn, [claimed["id"]])), None)
        schedule_delivery(claimed["id"], kwargs["until"], app, lane)
        return status
    DELIVERIES.labels(claimed["channel"], kwargs.get("outcome") or status).inc()
    if status == "sent" and claimed["row"] is not None:
        age = datetime.datetime.now(datetime.timezone.utc) - claimed["row"]["created_at"]
        DELIVERY_LATENCY.labels(claimed["channel"]).observe(age.total_seconds())
    if retry:
        raise RetryLater(kwargs["error"].partition(":")[0])   # the class only: RQ keeps this text a week
    return status


def _event(domain, claimed):
    """The notification's event as this delivery is decided on: an escalation step's channel is sent
    even where the event's defaults leave it out, so only the user's explicit choice switches it off
    (never for a locked event; docs/acknowledgements.md); so is an event's fallback channel
    (docs/channels.md)."""
    row = claimed["row"]
    group = domain.groups.get(row["type"])
    event = group.events.get(row["event"]) if group else None
    if event is None:
        return None
    if claimed.get("escalation_step") is not None and claimed["channel"] not in event.channels:
        event = dataclasses.replace(event, channels=event.channels + (claimed["channel"],))
    return event.with_fallback(claimed["channel"])   # a fallback channel is judged as a default one


def resolution(app, event, claimed):
    """What this attempt is decided on, kept on its attempt row: the preference as resolved now, the
    quiet hours and whether they apply to it, and (a group that requires consent) whether consent is
    on record for the address on file now."""
    row, quiet = claimed["row"], claimed.get("quiet")
    seen = {"quiet_hours": None if quiet is None else {
        "start": quiet["start_time"].strftime("%H:%M"), "end": quiet["end_time"].strftime("%H:%M"),
        "channels": list(quiet["channels"]), "timezone": row["timezone"] or "UTC"}}
    if event is None:
        return seen
    enabled, locked, source = resolve(event, claimed["channel"], claimed["choices"], row["customer_id"])
    seen.update(enabled=enabled, locked=locked, source=source,
                quiet_hours_apply=bool(applies(quiet, claimed["channel"], event)))
    if "granted" in claimed:
        channel = registry.get(app, claimed["channel"])
        address = channel.address({k: row[k] for k in ("email", "phone")}) if channel and channel.needs else None
        seen["consent"] = bool(address) and consent.allows(claimed["granted"], claimed["user_id"],
                                                           claimed["channel"], address)
    return seen


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
    if _expires_by(row, datetime.datetime.now(datetime.timezone.utc)):
        return "expired", {"reason": f"expired at {rfc3339(row['expires_at'])} before it could be sent"}, False
    if channel is None:
        return "skipped", {"reason": f"channel {claimed['channel']!r} is not configured"}, False
    event = _event(domain, claimed)
    if claimed.get("escalation_step") is not None and row["acked_at"] is not None:
        return "skipped", {"reason": "acknowledged before this escalation step was sent"}, False
    if event is not None and not claimed["resolution"]["enabled"]:
        return "skipped", {"reason": "switched off in the user's preferences"}, False
    if claimed["resolution"].get("consent") is False and channel.address(row):
        return "skipped", {"reason": consent.NO_CONSENT}, False
    if applies(claimed.get("quiet"), claimed["channel"], event):
        until = held_until(datetime.datetime.now(datetime.timezone.utc), claimed["quiet"], row["timezone"])
        if until is not None and _expires_by(row, until):
            return "expired", {"reason": f"quiet hours last past its expiry ({rfc3339(row['expires_at'])})"}, False
        if until is not None:
            return "held", {"until": until, "reason": f"held by quiet hours until {rfc3339(until)}"}, False
    contact = {k: row[k] for k in ("email", "phone", "locale", "timezone")}
    contact["user_id"] = str(row["user_id"])   # a channel addressed by the user's own rows (webpush)
    if not channel.address(contact):
        missing = getattr(channel, "missing", None) or f"no {channel.needs} on file for this user"
        return "skipped", {"reason": missing}, False
    notification = shown(to_public(row))
    teased = event is not None and event.external_content == "teaser"
    # text_locale: the trigger's translation the notification was stored in (app/dispatch/plan.localised);
    # a teaser carries none of its text, so it is written in the templates' locale alone
    templates, locale = i18n.localised_templates(domain, row["type"], row["event"], contact["locale"],
                                                 None if teased else row.get("text_locale"))
    variables = i18n.amounts(row.get("amounts"), contact["locale"], locale)   # {total}: `1.234,56 €` for de
    if teased:                      # never the title or content outside
        notification, templates = teaser(app, domain, notification, templates)
        variables = {}              # nor an amount
    rule = digests.rule(event, claimed["channel"])
    if rule is not None:            # collected into one message at the window's end (digest.py)
        decision = digests.collect(claimed, rule)
        if decision[0] == "held":
            return "held", {"until": decision[1], "reason": decision[2]}, False
        if decision[0] == "failed":
            return "failed", {"error": decision[1]}, False
        if decision[0] == "sent":   # the sender sent it: this item too, under its message id
            accepted(decision[1])
            return "sent", {"provider_id": accepted.provider_id}, False
        claimed["digest_id"] = decision[1]
        notification = digests.message(app, decision[1], notification, templates, locale, contact["timezone"])
        variables = {}
    outbound = Outbound(str(claimed["id"]), notification, str(row["user_id"]), contact, templates, accepted, locale,
                        claimed["avoid"], claimed["tried"], variables)
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
    backoff = domain.retry_backoff[min(claimed["tries"], len(domain.retry_backoff)) - 1] \
        if domain.retry_backoff else 0
    now = datetime.datetime.now(datetime.timezone.utc)
    if _expires_by(claimed["row"], now + datetime.timedelta(seconds=backoff)):
        return "expired", {"error": error, "reason": "its next attempt would come after it expires"}, False
    log.info("delivery %s attempt %d failed: %s", claimed["id"], claimed["tries"], label(exc))
    return "pending", {"error": error, "outcome": "retry"}, True


def _expires_by(row, moment):
    """Whether the notification has expired by `moment` (then no attempt may be made after it)."""
    return row["expires_at"] is not None and row["expires_at"] <= moment
