"""The channel interface: send one notification to one recipient.

The moment the provider has accepted the message (an SMTP 250 to DATA, a 2xx
from an API), a channel calls `outbound.accepted(provider_id)`, before it
closes, logs or parses anything else: that call records the delivery as
sent in one round trip (app/deliveries/receipt.py), so a worker killed
afterwards does not send it again. A channel that does not call it is
recorded when `send` returns, a wider window. Errors raised after the call
do not make the delivery a retry. A channel whose protocol has a point where
the provider surely has the whole message before it answers (SMTP: the final
dot sent) may call `outbound.accepted.submit(provider_id)` there instead; an
error raised afterwards, before `accepted`, takes that record back.

A channel returns the provider's message id, or raises
    DeliveryError
    ├── RetryableError   timeouts, connection errors, provider 5xx/429: try again later
    └── PermanentError   the provider refused (bad number, rejected address): never retry
Anything else a channel raises is treated as retryable.

What a failed attempt records (`describe`): a class, the provider's status
code when there is one, and the error's text through `redact.redact`:

    provider_timeout          no answer in time
    connection_failed         no connection (refused, reset, name lookup, TLS)
    provider_error <code>     the provider failed or asked us to come back (HTTP 5xx/408/425/429, SMTP 4xx)
    provider_refused <code>   the provider refused the message for good (HTTP 4xx, SMTP 5xx)
    invalid_recipient <code>  the address was refused for good (SMTP 5xx to RCPT)
    recipient_deferred <code> the address was refused for now (SMTP 4xx to RCPT)
    auth_failed <code>        our credentials were refused (SMTP 535, HTTP 401/403)
    not_configured            the channel lacks a setting
    invalid_message           refused before sending (a header with a line break)
    unexpected_error          anything else a channel raised (its type is named)
    providers_unavailable     every provider of a failover channel was passed over (failover.py)
    maybe_sent                every provider may already have it; not sent again (failover.py)

Users read it in GET /v1/notifications/{id}/deliveries and operators in
`flask deliveries failed`; logs and RQ's failed-job text get the class only,
so nothing a provider echoes (an address, a body) reaches them.
"""
import os
import smtplib
import socket
import ssl
from dataclasses import dataclass, field
from typing import Callable

import requests

from ..redact import redact

ERROR_LENGTH = 500


def expand_env(value):
    """An option written whole as `${NAME}`: the environment's NAME ("" when unset), so secrets stay
    out of notifications.yaml; anything else as it is."""
    if isinstance(value, str) and value.startswith("${") and value.endswith("}"):
        return os.environ.get(value[2:-1], "")
    return value


def report_url(app, provider):
    """Where `provider` reports delivery (app/deliveries/reports.py), as PUBLIC_URL reaches this
    service; None when PUBLIC_URL was not set (a provider could not reach a default localhost)."""
    if not app.config.get("PUBLIC_URL_GIVEN"):
        return None
    return f"{app.config['PUBLIC_URL'].rstrip('/')}/v1/providers/{provider}/reports"


class DeliveryError(Exception):
    """The delivery did not happen."""

    kind = "provider_error"     # the class when the channel names none and the cause tells nothing

    def __init__(self, detail="", kind=None, code=None):
        super().__init__(detail)
        self.named, self.code = kind, code


class RetryableError(DeliveryError):
    """The provider could not be reached or asked us to come back later."""


class PermanentError(DeliveryError):
    """The provider refused this message for good."""

    kind = "provider_refused"


def http_kind(status):
    """The class of a provider's HTTP refusal or failure."""
    if status in (401, 403):
        return "auth_failed"
    return "provider_error" if status in (408, 425, 429) or status >= 500 else "provider_refused"


def _cause_kind(exc):
    """A timeout or a failed connection anywhere in what was raised (a channel wraps the library's
    exception, which stays its context)."""
    seen = exc
    while seen is not None:
        if isinstance(seen, (requests.Timeout, socket.timeout, TimeoutError)):
            return "provider_timeout"
        if isinstance(seen, (requests.ConnectionError, ConnectionError, smtplib.SMTPServerDisconnected,
                             smtplib.SMTPConnectError, ssl.SSLError, socket.gaierror)):
            return "connection_failed"
        seen = seen.__cause__ or seen.__context__
    return None


def classify(exc):
    """(class, provider code or None) of what a send raised."""
    if isinstance(exc, DeliveryError) and exc.named:
        return exc.named, exc.code
    cause = _cause_kind(exc)
    if cause is not None:
        return cause, None
    if isinstance(exc, DeliveryError):
        return exc.kind, exc.code
    return "unexpected_error", None


def label(exc):
    """The class and code alone (`provider_error 503`): what logs and RQ record."""
    kind, code = classify(exc)
    return f"{kind} {code}" if code else kind


def describe(exc):
    """A failed attempt's `last_error`: its class, then its redacted detail."""
    text = str(exc) if isinstance(exc, DeliveryError) else f"{type(exc).__name__}: {exc}"
    detail = redact(" ".join(text.split()))
    return f"{label(exc)}: {detail}"[:ERROR_LENGTH] if detail else label(exc)


@dataclass(frozen=True)
class Outbound:
    """Everything a channel needs to send one delivery."""

    delivery_id: str
    notification: dict      # SPEC's public shape
    user_id: str
    contact: dict           # email, phone, locale, timezone (values may be None)
    template: dict          # the event's templates, defaults merged
    accepted: Callable = lambda provider_id=None, provider=None: None   # call it the instant the provider accepted
    locale: str = "en"      # the language the message is written in (app/i18n: the contact's, or its fallback)
    avoid: frozenset = frozenset()   # providers that may have accepted it in an earlier attempt (failover.py)
    tried: list = field(default_factory=list)   # this attempt's failed provider tries, recorded with it
    variables: dict = field(default_factory=dict)   # the trigger's amounts, written per locale (app/i18n.amounts)

    def values(self):
        """What a template may name: the notification's fields and the trigger's amounts (an amount
        cannot take a field's name: app/dispatch/schemas.RESERVED)."""
        return dict(self.variables, **self.notification) if self.variables else self.notification


class Channel:
    """One way of reaching a user. Subclasses set `needs` and implement `send`."""

    needs = None            # the contact field the channel addresses ("email", "phone") or None

    def __init__(self, name, options, app):
        self.name, self.options, self.app = name, options, app

    def address(self, contact):
        """The recipient's address for this channel, or None when there is none."""
        return contact.get(self.needs) if self.needs else "-"

    def send(self, outbound):
        raise NotImplementedError
