"""A circuit breaker per provider, its state in Redis so every worker process shares it.

State (one hash per provider, `<prefix>breaker:<channel>:<provider>`): `failures`, the
consecutive failed sends (a success resets it), and `opened_at`, when the last of them
opened it. With `failures` below the threshold the breaker is **closed** and every send
goes to the provider. At or above it the breaker is **open** for `cooldown_seconds`:
sends go to the next provider without trying this one. After the cool-down it is
**half-open**: one send, whichever worker claims the probe key first
(`<prefix>breaker:<channel>:<provider>:probe`, SET NX with the cool-down as its expiry),
tries the provider again; a success closes the breaker, a failure opens it for another
cool-down. The others keep going to the next provider meanwhile.

Redis unreachable: the breaker reads as closed (a provider is tried rather than skipped),
and what it would have written is lost; a breaker must never be the reason an alert is
not sent.
"""
import logging
import time

import redis as redis_lib

from ..bus import key, redis

log = logging.getLogger(__name__)

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
STATE_VALUES = {CLOSED: 0, OPEN: 1, HALF_OPEN: 2}   # the metric's values
EXPIRE_SECONDS = 7 * 86400   # a breaker untouched for a week is forgotten (closed)


class Breaker:
    def __init__(self, channel, provider, failures, cooldown):
        self.channel, self.provider = channel, provider
        self.threshold, self.cooldown = failures, cooldown

    def _key(self):
        return key("breaker", self.channel, self.provider)

    def _read(self):
        raw = redis().hgetall(self._key())
        return int(raw.get(b"failures", 0)), float(raw.get(b"opened_at", 0))

    def state(self):
        """closed, open or half_open, read now (for /metrics)."""
        try:
            failures, opened_at = self._read()
        except redis_lib.RedisError:
            return CLOSED
        if failures < self.threshold:
            return CLOSED
        return OPEN if time.time() < opened_at + self.cooldown else HALF_OPEN

    def allow(self):
        """None when the provider is to be passed over; else `closed`, or `half_open` for the
        one probe this worker won."""
        try:
            failures, opened_at = self._read()
            if failures < self.threshold:
                return CLOSED if failures == 0 else "failing"
            if time.time() < opened_at + self.cooldown:
                return None
            won = redis().set(self._key() + ":probe", "1", nx=True, ex=max(1, int(self.cooldown)))
            return HALF_OPEN if won else None
        except redis_lib.RedisError as exc:
            log.warning("breaker %s.%s unreadable (%s): trying the provider", self.channel, self.provider,
                        type(exc).__name__)
            return CLOSED

    def succeeded(self, allowed):
        """A send went through: the breaker closes (written only when it was not already clean)."""
        if allowed == CLOSED:
            return
        try:
            redis().delete(self._key(), self._key() + ":probe")
        except redis_lib.RedisError:
            pass

    def failed(self):
        """A send failed: one more consecutive failure; at the threshold (or a failed probe) it opens."""
        try:
            with redis().pipeline() as pipe:
                pipe.hincrby(self._key(), "failures", 1)
                pipe.expire(self._key(), EXPIRE_SECONDS)
                failures = pipe.execute()[0]
            if failures >= self.threshold:
                with redis().pipeline() as pipe:
                    pipe.hset(self._key(), "opened_at", repr(time.time()))
                    pipe.delete(self._key() + ":probe")
                    pipe.execute()
                if failures == self.threshold:
                    log.warning("breaker %s.%s opened after %d failures", self.channel, self.provider, failures)
        except redis_lib.RedisError:
            pass
