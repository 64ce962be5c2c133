"""Counting requests against the rate-limit budgets: fixed windows in Redis, leased in slices.

A budget of N per window (queue.yaml `rate_limits:`, parsed by the `limits`
library) is counted in one Redis key per (budget, caller) and window, shared
by every process and server; the window starts at the first hit. A process
does not spend a round trip on every request: it takes `N // LEASE_PARTS`
requests' worth at once (one Lua call: INCRBY, start the window if new,
PTTL) and serves them from memory until they are used or the window ends.
Budgets under LEASE_PARTS per window are leased one request at a time, so
they are counted exactly. What that costs: never a request beyond the
budget, but a caller may be refused up to 1/LEASE_PARTS of it early per
process whose slice was left unused at the end of the window. What it buys: a
service sending a thousand triggers a second to one web worker (a budget of,
say, 5,000/second) costs one round trip per 50 requests instead of one each.

Redis down: the same windows are counted in this process's memory (limited
per process only), and Redis is tried again after 1 s, then 2, 4, … 32 s.
"""
import logging
import math
import threading
import time

import redis as redis_lib
from limits import parse

log = logging.getLogger(__name__)
LEASE_PARTS = 100
STORAGE_OPTIONS = {"socket_connect_timeout": 0.5, "socket_timeout": 0.5, "health_check_interval": 30}
# KEYS[1] the window's key; ARGV: requests taken, window length (ms). Returns {count after, ms left}.
_TAKE = """
local count = redis.call('INCRBY', KEYS[1], ARGV[1])
local left = redis.call('PTTL', KEYS[1])
if left < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  left = tonumber(ARGV[2])
end
return {count, left}
"""


class RedisWindows:
    """Windows in Redis (keys `<prefix>:<budget>:<caller>:<limit>`), short timeouts: a hung Redis
    costs one request ~0.5 s, not seconds."""

    def __init__(self, url, prefix):
        self.prefix = prefix
        self._take = redis_lib.Redis.from_url(url, **STORAGE_OPTIONS).register_script(_TAKE)

    def take(self, key, amount, window_ms):
        """Add `amount` to the window's count; (count after, seconds until the window ends)."""
        count, left = self._take(keys=[f"{self.prefix}:{key}"], args=[amount, window_ms])
        return int(count), int(left) / 1000


class MemoryWindows:
    """The same windows in this process's memory, while Redis fails."""

    def __init__(self):
        self._windows = {}   # key -> [count, ends at (monotonic)]

    def take(self, key, amount, window_ms):
        now = time.monotonic()
        window = self._windows.get(key)
        if window is None or window[1] <= now:
            if len(self._windows) > 10_000:
                self._windows = {k: w for k, w in self._windows.items() if w[1] > now}
            window = self._windows[key] = [0, now + window_ms / 1000]
        window[0] += amount
        return window[0], window[1] - now


class Counter:
    """The budgets' counts; `hit` says whether one more request of a caller fits."""

    def __init__(self, url, prefix, budgets):
        self.limits = {name: parse(text) for name, text in budgets.items()}
        self.redis, self.memory = RedisWindows(url, prefix), MemoryWindows()
        self._leases = {}    # (budget, caller) -> [requests left, ends at (monotonic)]
        self._retry_at, self._backoff = 0.0, 1.0
        self._lock = threading.Lock()

    def hit(self, name, key):
        """(True, None) when the request fits, else (False, whole seconds until its window ends)."""
        now = time.monotonic()
        with self._lock:
            lease = self._leases.get((name, key))
            if lease is not None and lease[0] > 0 and lease[1] > now:
                lease[0] -= 1
                return True, None
        limit = self.limits[name]
        size = max(1, limit.amount // LEASE_PARTS)
        count, left = self._take(f"{name}:{key}:{limit}", size, int(limit.get_expiry() * 1000))
        granted = min(size, limit.amount - (count - size))
        with self._lock:
            if granted <= 0:
                self._leases.pop((name, key), None)
                return False, max(1, math.ceil(left))
            if granted > 1:
                if len(self._leases) > 10_000:
                    self._leases = {k: v for k, v in self._leases.items() if v[1] > now}
                self._leases[(name, key)] = [granted - 1, now + left]
        return True, None

    def _take(self, key, amount, window_ms):
        if time.monotonic() < self._retry_at:
            return self.memory.take(key, amount, window_ms)
        try:
            taken = self.redis.take(key, amount, window_ms)
        except redis_lib.RedisError as exc:  # fail open: count in memory for a while
            self._fall_back(exc)
            return self.memory.take(key, amount, window_ms)
        if self._backoff > 1:
            with self._lock:
                self._backoff = 1.0
            log.info("rate limits counted in Redis again")
        return taken

    def _fall_back(self, exc):
        with self._lock:
            self._retry_at = time.monotonic() + self._backoff
            log.warning("rate limits counted in memory for %.0f s: Redis failed (%s)", self._backoff,
                        type(exc).__name__)
            self._backoff = min(32.0, self._backoff * 2)
