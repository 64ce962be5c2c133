"""A channel served by several providers in order: the next one takes over within the same attempt.

    channels:
      sms:
        providers:                       # tried in this order
          - {name: twilio_primary, type: twilio, account_sid: "${TWILIO_SID}", ...}
          - {name: webhook_secondary, type: webhook, needs: phone, url: "${SMS_GATEWAY_URL}"}
        breaker: {failures: 5, cooldown_seconds: 30}

Each provider is a channel of its own type with its own options (a `name`, unique in the
list, names it in attempts and metrics). One attempt of a delivery goes down the list:

- a provider whose circuit breaker is open (app/channels/breaker.py) is passed over;
- a retryable failure (timeout, connection error, 5xx/429, a missing setting) counts against
  its breaker, is recorded as a try of the attempt (`retry`, with the provider), and the next
  provider is tried at once;
- a permanent refusal (a 4xx: the number is invalid) ends the attempt: another provider would
  refuse the same message;
- the first acceptance is recorded with the provider's name and message id.

When every provider failed or was passed over, the attempt is retried later (queue.yaml's
back-off), from the top of the list.

"Maybe accepted": a timeout after the request was sent (a read timeout; for SMTP, no answer
after the message's final dot) may mean the provider has the message. The provider's
`idempotent` option says what follows. `idempotent: true` (the default for `webhook`, which
sends `Idempotency-Key: <delivery id>`): it may be tried again in a later attempt, the key
lets it drop the copy. `idempotent: false` (the default for every other type: Twilio's
Messages API and SMTP have no idempotency key): it is never tried again for that delivery
(the attempt row says `maybe_accepted`); later attempts go to the other providers. Within
the attempt the next provider is tried either way: for an alert a possible second message
through another provider is chosen over a possibly lost one. When no provider is left that
did not maybe accept it, the delivery fails with `maybe_sent` and is not sent again.
"""
import dataclasses

import requests

from ..errors import ConfigError
from .base import Channel, PermanentError, RetryableError, classify, describe
from .breaker import Breaker

IDEMPOTENT_TYPES = {"webhook"}
BREAKER_DEFAULTS = {"failures": 5, "cooldown_seconds": 30}


class _Via:
    """The receipt as one provider reports to it: the acceptance names the provider."""

    def __init__(self, accepted, provider):
        self._accepted, self.provider = accepted, provider
        self.called = self.submitted = False

    def __call__(self, provider_id=None):
        self.called = True
        self._accepted(provider_id, provider=self.provider)

    def submit(self, provider_id=None):
        self.submitted = True
        submit = getattr(self._accepted, "submit", None)
        if submit is not None:
            submit(provider_id, provider=self.provider)


def maybe_accepted(exc, via):
    """The request reached the provider and no answer came: it may have the message."""
    if via.submitted:
        return True
    seen = exc
    while seen is not None:
        if isinstance(seen, requests.ConnectTimeout):
            return False
        if isinstance(seen, (requests.ReadTimeout, TimeoutError)):
            return True
        seen = seen.__cause__ or seen.__context__
    return classify(exc)[0] == "provider_timeout"


class FailoverChannel(Channel):
    def __init__(self, name, options, app, build):
        super().__init__(name, options, app)
        where = f"channels.{name}"
        source = app.config["NOTIFICATIONS_CONFIG"]
        raw = options.get("providers")
        if not isinstance(raw, list) or not raw:
            raise ConfigError(source, f"{where}.providers", "must be a non-empty list of providers")
        breaker = dict(BREAKER_DEFAULTS, **(options.get("breaker") or {}))
        for field, value in breaker.items():
            if field not in BREAKER_DEFAULTS or not isinstance(value, (int, float)) or isinstance(value, bool) \
                    or value <= 0:
                raise ConfigError(source, f"{where}.breaker.{field}",
                                  f"must be one of {', '.join(BREAKER_DEFAULTS)}, a number > 0")
        self.providers = []
        for i, entry in enumerate(raw):
            at = f"{where}.providers[{i}]"
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"]:
                raise ConfigError(source, at, "must be a mapping with a `name`")
            if any(p.name == entry["name"] for p, _, _ in self.providers):
                raise ConfigError(source, f"{at}.name", f"{entry['name']!r} is named twice")
            kind = entry.get("type", entry["name"])
            if "providers" in entry or kind == "system":
                raise ConfigError(source, f"{at}.type", "a provider is one external channel type")
            idempotent = entry.get("idempotent", kind in IDEMPOTENT_TYPES)
            if not isinstance(idempotent, bool):
                raise ConfigError(source, f"{at}.idempotent", "must be true or false")
            provider = build(entry["name"], dict(entry, type=kind), at)
            self.providers.append((provider, idempotent,
                                   Breaker(name, entry["name"], int(breaker["failures"]),
                                           float(breaker["cooldown_seconds"]))))
        needs = {p.needs for p, _, _ in self.providers}
        if len(needs) > 1:
            raise ConfigError(source, f"{where}.providers", "every provider must address the same contact field "
                              f"(`needs`), got {', '.join(sorted(map(str, needs)))}")
        self.needs = needs.pop()

    def breakers(self):
        return [breaker for _, _, breaker in self.providers]

    def send(self, outbound):
        from ..metrics import PROVIDER_SENDS
        avoid, last = outbound.avoid, None
        for provider, idempotent, breaker in self.providers:
            if provider.name in avoid and not idempotent:
                continue
            allowed = breaker.allow()
            if allowed is None:
                PROVIDER_SENDS.labels(self.name, provider.name, "breaker_open").inc()
                continue
            via = _Via(outbound.accepted, provider.name)
            try:
                provider_id = provider.send(dataclasses.replace(outbound, accepted=via))
            except Exception as exc:
                if via.called:
                    raise      # the provider has it: what failed came afterwards
                if via.submitted:   # SMTP after the final dot: the attempt ends here (its record is taken back)
                    breaker.failed()
                    raise
                if isinstance(exc, PermanentError):
                    breaker.succeeded(allowed)   # it answered: a refusal of this message, not an outage
                    PROVIDER_SENDS.labels(self.name, provider.name, "refused").inc()
                    raise
                breaker.failed()
                PROVIDER_SENDS.labels(self.name, provider.name, "failed").inc()
                outbound.tried.append({"provider": provider.name, "error": describe(exc),
                                       "maybe_accepted": maybe_accepted(exc, via) and not idempotent})
                last = exc
                continue
            via(provider_id)   # a provider that does not report acceptance itself: recorded now
            breaker.succeeded(allowed)
            PROVIDER_SENDS.labels(self.name, provider.name, "sent").inc()
            return provider_id
        left = [p.name for p, idem, _ in self.providers if idem or p.name not in avoid]
        if not left:
            raise PermanentError("every provider may already have this message (a timeout after sending); "
                                 "it is not sent again", "maybe_sent")
        if last is not None:
            raise last
        raise RetryableError(f"no provider available: circuit breakers open ({', '.join(left)})",
                             "providers_unavailable")
