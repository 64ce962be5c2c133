"""The stream-connect budget: a token bucket per caller, in Redis, shared by every process.

Why a bucket and not a window like the other budgets (app/ratelimit/windows.py): opening
streams comes in bursts a person causes without abusing anything (ten tabs restored at
once, a page reloaded a few times, every client of a server that restarted), then a
trickle for ever (a phone that loses coverage every few seconds). A fixed window of N a
minute either locks such a user out for the rest of the minute or lets a script open N a
minute for ever; a bucket holding N tokens refilled at N per period allows the burst, then
one connect every period/N seconds, indefinitely.

`queue.yaml` `rate_limits.stream_connect: "N/period"` means: the bucket holds N, and gains
N per period (the shipped "30/minute": a burst of 30, then one every 2 s). N must be at
least twice SSE_MAX_STREAMS_PER_USER, so a user holding every stream they may hold can
replace all of them at once (start-up stops with a config error otherwise).

One Lua call per connect takes a token (the bucket's state is two fields of one hash;
time is Redis's own clock, so every worker and server agrees). Redis failing: the bucket is
kept in this process's memory for a while, as the windows do (fail open, limited per
process), and Redis is tried again after 1, 2, 4 … 32 s.
"""
import logging
import math
import time

import redis as redis_lib

from .windows import FailOpen

log = logging.getLogger(__name__)

# KEYS[1] the bucket; ARGV: capacity, tokens per second, 1 to take a token (0 to look only).
# Returns {1 when a token is (or would be) there, else 0; ms until one is}.
_TAKE = """
local capacity, rate = tonumber(ARGV[1]), tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or capacity
local at = tonumber(state[2]) or now
tokens = math.min(capacity, tokens + math.max(0, now - at) * rate)
if tokens < 1 then
  return {0, math.ceil((1 - tokens) / rate * 1000)}
end
if ARGV[3] == '1' then
  tokens = tokens - 1
  redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
  redis.call('PEXPIRE', KEYS[1], math.ceil((capacity - tokens) / rate * 1000) + 1000)
end
return {1, 0}
"""


class MemoryBuckets:
    """The same buckets in this process's memory, while Redis fails."""

    def __init__(self):
        self._buckets = {}   # key -> [tokens, at (monotonic)]

    def take(self, key, capacity, rate, spend):
        now = time.monotonic()
        if len(self._buckets) > 10_000:
            self._buckets = {k: b for k, b in self._buckets.items() if b[0] + (now - b[1]) * rate < capacity}
        tokens, at = self._buckets.get(key, (capacity, now))
        tokens = min(capacity, tokens + (now - at) * rate)
        if tokens < 1:
            return False, (1 - tokens) / rate
        if spend:
            self._buckets[key] = [tokens - 1, now]
        return True, 0.0


class Buckets:
    """Token buckets of one budget; `take` spends a token, `peek` only says whether one is there."""

    def __init__(self, client, prefix, limit):
        self.capacity = limit.amount
        self.rate = limit.amount / limit.get_expiry()   # tokens per second
        self.prefix = prefix
        self.script = client.register_script(_TAKE)
        self.memory = MemoryBuckets()
        self.fail_open = FailOpen("stream connects")

    def take(self, caller):
        """(True, None) when a token was taken, else (False, whole seconds until one is there)."""
        return self._run(caller, spend=True)

    def peek(self, caller):
        """As `take`, without spending: would a connect now be admitted?"""
        return self._run(caller, spend=False)

    def _run(self, caller, spend):
        key = f"{self.prefix}:{caller}"
        allowed, wait = None, 0.0
        if self.fail_open.redis_due():
            try:
                allowed, wait_ms = self.script(keys=[key], args=[self.capacity, self.rate, int(spend)])
                allowed, wait = bool(allowed), int(wait_ms) / 1000
                self.fail_open.succeeded()
            except redis_lib.RedisError as exc:  # fail open: this process's memory for a while
                self.fail_open.failed(exc)
        if allowed is None:
            allowed, wait = self.memory.take(key, self.capacity, self.rate, spend)
        return (True, None) if allowed else (False, max(1, math.ceil(wait)))
