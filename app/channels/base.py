"""The channel interface: send one notification to one recipient.

A channel returns the provider's message id, or raises
    DeliveryError
    ├── RetryableError   timeouts, connection errors, provider 5xx/429: try again later
    └── PermanentError   the provider refused (bad number, rejected address): never retry
Anything else a channel raises is treated as retryable.
"""
from dataclasses import dataclass


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
