"""An identity provider's signing keys, fetched from its JWKS endpoint and chosen by `kid`.

PyJWKClient fetches and parses the set; the cache and the refresh rules are ours, because
its own cache drops every key when the set expires during an IdP outage and retries a
failed refresh on every unknown `kid`. Here (docs/security/auth.md, "Identity providers"):

- the last set fetched successfully stays in use until a newer one arrives, however long
  the IdP is down: cached keys keep working, an unknown `kid` is a 401;
- a `kid` missing from the set triggers a refresh at most once per REFRESH_INTERVAL (one
  minute), whatever the outcome, so a flood of tokens with random kids costs the IdP one
  request a minute per worker process;
- the set is also re-read when older than LIFESPAN (at most one attempt a minute): a key
  the IdP withdrew stops being accepted within LIFESPAN of its withdrawal;
- no request waits on another's fetch, except while a process has no set at all yet.
"""
import http.client
import logging
import threading
import time

import jwt
from jwt import PyJWKClient

log = logging.getLogger(__name__)

FETCH_TIMEOUT_SECONDS = 5    # per socket operation: under gevent only the requesting greenlet waits
REFRESH_INTERVAL_SECONDS = 60
LIFESPAN_SECONDS = 300
ASYMMETRIC_KEY_TYPES = ("RSA", "EC", "OKP")   # an `oct` key in a published set would be a shared secret
FETCH_ERRORS = (jwt.PyJWTError, ValueError, OSError, http.client.HTTPException)


class UnknownKey(LookupError):
    """No usable key of the set has this `kid` (after a refresh, when one was allowed)."""


class JwksKeys:
    def __init__(self, url, timeout=FETCH_TIMEOUT_SECONDS, clock=time.monotonic):
        self.url = url
        self._client = PyJWKClient(url, cache_jwk_set=False, timeout=timeout,
                                   headers={"User-Agent": "notifications-service"})
        self._clock = clock
        self._keys = None                  # kid -> PyJWK, from the last successful fetch
        self._fetched_at = None
        self._attempts = {"scheduled": None, "unknown kid": None}   # when each budget was last spent
        self._budget_lock = threading.Lock()   # held for no I/O: only to spend a budget
        self._first_done = threading.Event()

    def key_for(self, kid):
        """The key named `kid`, or raise UnknownKey."""
        if self._keys is None:
            self._first_set()
        elif self._clock() - self._fetched_at >= LIFESPAN_SECONDS:
            self._refresh("scheduled")
        key = (self._keys or {}).get(kid)
        if key is None and self._refresh("unknown kid"):
            key = self._keys.get(kid)
        if key is None:
            raise UnknownKey(kid)
        return key

    def _first_set(self):
        """A process's first requests wait (up to the timeout) for the first fetch rather than
        fail while it is in flight."""
        if not self._refresh("scheduled"):
            self._first_done.wait(self._client.timeout + 1)

    def _refresh(self, reason):
        """Fetch the set if `reason`'s budget allows; True when a new set is in place."""
        if not self._spend(reason):
            return False
        try:
            keys = self._fetch()
        except FETCH_ERRORS as exc:
            log.warning("JWKS %s: refresh (%s) failed, keeping the %s: %s", self.url, reason,
                        "cached keys" if self._keys else "no keys", exc)
            return False
        finally:
            self._first_done.set()
        self._keys, self._fetched_at = keys, self._clock()
        log.info("JWKS %s: %d keys (%s) after a %s refresh", self.url, len(keys), ", ".join(sorted(keys)), reason)
        return True

    def _spend(self, reason):
        """Spent before the fetch, so requests arriving during a slow or failing fetch never start another."""
        with self._budget_lock:
            now, last = self._clock(), self._attempts[reason]
            if last is not None and now - last < REFRESH_INTERVAL_SECONDS:
                return False
            self._attempts[reason] = now
            return True

    def _fetch(self):
        """Only keys a token may name (a `kid`, use `sig`) and that cannot be a shared secret."""
        keys = self._client.get_signing_keys(refresh=True)
        usable = {key.key_id: key for key in keys if key.key_type in ASYMMETRIC_KEY_TYPES}
        if not usable:
            raise ValueError("the set has no asymmetric signing key with a kid")
        return usable
