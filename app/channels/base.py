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
"""
from dataclasses import dataclass
from typing import Callable


class DeliveryError(Exception):
    """The delivery did not happen."""


class RetryableError(DeliveryError):
    """The provider could not be reached or asked us to come back later."""


class PermanentError(DeliveryError):
    """The provider refused this message for good."""


@dataclass(frozen=True)
class Outbound:
    """Everything a channel needs to send one delivery."""

    delivery_id: str
    notification: dict      # SPEC's public shape
    user_id: str
    contact: dict           # email, phone, locale, timezone (values may be None)
    template: dict          # the event's templates, defaults merged
    accepted: Callable = lambda provider_id=None: None   # call it the instant the provider accepted


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
