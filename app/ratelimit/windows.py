"""Counting requests against the rate-limit budgets: fixed windows in Redis, leased in slices.

A budget of N per window (queue.yaml `rate_limits:`, parsed by the `limits`
library) is counted in one Redis key per (budget, caller) and window, shared
by every process and server; the window starts at the first hit. A process
does not spend a round trip on every request of a busy caller: it takes a
slice of `N // LEASE_PARTS` requests at once (one Lua call: INCRBY, start the
window if new, PTTL) and serves them from memory until they are used or the
window ends; one request takes the next slice while the others of that caller
wait for it, and once the window is spent its refusals are answered from
memory too. A budget whose slice would be a single request (under
2 × LEASE_PARTS per window: the user and stream budgets, the default 100/s of
a service) is counted exactly, one round trip per request. What slicing
costs: never a request beyond the budget, but a caller may be refused up to
1/LEASE_PARTS of it early per process whose slice was left unused when the
window ended. What it buys: a service sending a thousand triggers a second
to one web worker (given a budget of, say, 5,000/second) costs one round trip
per 50 requests instead of one each.

A budget may count something other than requests: `hit(name, key, amount)`
takes `amount` at once (the `recipients` budget: a trigger's users), all of it
or none; a slice is then at least what the amount lacks, and what is left of a
slice after a refusal serves the caller's smaller amounts.

Redis down: the same windows are counted in this process's memory (limited
per process only), and Redis is tried again after 1 s, then 2, 4, … 32 s.
"""
import logging
import math
import threading
import time

import redis as redis_lib
from limits import parse

from ..bus import make_client

log = logging.getLogger(__name__)
LEASE_PARTS = 100
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
    """Windows in Redis (keys `<prefix>:<budget>:<caller>:<limit>`), on the process's small
    rate-limit pool with short timeouts (app/bus/__init__.py): a hung Redis or a burst that
    keeps every connection busy costs one request ~0.5 s, then counts in memory."""

    def __init__(self, url, prefix):
        self.prefix = prefix
        self._take = make_client(url, "ratelimit").register_script(_TAKE)

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


class _Slice:
    """A process's share of one caller's window: requests left, when it ends, a refill in flight."""

    __slots__ = ("left", "ends", "refill", "full")

    def __init__(self):
        self.left, self.ends, self.refill, self.full = 0, 0.0, threading.Event(), False


class Counter:
    """The budgets' counts; `hit` says whether one more request of a caller fits."""

    def __init__(self, url, prefix, budgets):
        self.limits = {name: parse(text) for name, text in budgets.items()}
        self.redis, self.memory = RedisWindows(url, prefix), MemoryWindows()
        self._slices = {}    # (budget, caller) -> _Slice, for budgets leased more than one at a time
        self.fail_open = FailOpen("rate limits")
        self._lock = threading.Lock()

    def hit(self, name, key, amount=1):
        """(True, None) when `amount` more (requests, or a trigger's recipients) fit in the caller's
        window, else (False, whole seconds until it ends). All of `amount` fits or none of it counts."""
        limit = self.limits[name]
        window_ms = int(limit.get_expiry() * 1000)
        if amount > limit.amount:      # can never fit (app/domain.py keeps triggers under the budget)
            return False, max(1, math.ceil(window_ms / 1000))
        size = limit.amount // LEASE_PARTS
        if size <= 1:   # counted exactly, one round trip per request
            count, left = self._take(f"{name}:{key}:{limit}", amount, window_ms)
            if count <= limit.amount:
                return True, None
            if amount > 1:   # given back, so a smaller amount may still fit (a single one never could)
                self._take(f"{name}:{key}:{limit}", -amount, window_ms)
            return False, max(1, math.ceil(left))
        while True:   # each turn consumes, refuses, takes the next slice, or waits for the one taking it
            now = time.monotonic()
            with self._lock:
                share = self._slices.get((name, key))
                live = share is not None and share.ends > now
                if live and share.left >= amount:
                    share.left -= amount
                    return True, None
                if live and share.full:     # the window is spent for everyone until it ends
                    return False, max(1, math.ceil(share.ends - now))
                if share is not None and not share.refill.is_set():
                    waiting = share.refill       # another request is taking the next slice
                else:
                    carry = share.left if live else 0    # what is left of this window's slice
                    waiting, share = None, _Slice()
                    share.left = carry
                    self._prune(now)
                    self._slices[(name, key)] = share
            if waiting is None:
                return self._lease(share, name, key, limit, size, amount)
            waiting.wait(1.0)

    def _lease(self, share, name, key, limit, size, amount):
        """Take the next slice for `share` (one round trip), at least what `amount` lacks; the
        requests waiting for it go on."""
        try:
            carry = share.left
            need = max(size, amount - carry)
            count, left = self._take(f"{name}:{key}:{limit}", need, int(limit.get_expiry() * 1000))
            granted = max(0, min(need, limit.amount - (count - need)))
            with self._lock:
                share.ends = time.monotonic() + left
                share.full = granted < need      # Redis has no more of this window for anyone
                fits = carry + granted >= amount
                share.left = carry + granted - (amount if fits else 0)
            return (True, None) if fits else (False, max(1, math.ceil(left)))
        finally:
            share.refill.set()

    def _prune(self, now):
        if len(self._slices) > 10_000:
            self._slices = {k: v for k, v in self._slices.items() if v.ends > now or not v.refill.is_set()}

    def _take(self, key, amount, window_ms):
        if not self.fail_open.redis_due():
            return self.memory.take(key, amount, window_ms)
        try:
            taken = self.redis.take(key, amount, window_ms)
        except redis_lib.RedisError as exc:  # fail open: count in memory for a while
            self.fail_open.failed(exc)
            return self.memory.take(key, amount, window_ms)
        self.fail_open.succeeded()
        return taken


class FailOpen:
    """While Redis fails, a budget is counted in this process's memory; Redis is tried again after
    1 s, then 2, 4 … 32 s, and used as soon as it answers (the windows' and the buckets' policy)."""

    def __init__(self, what):
        self.what = what
        self._retry_at, self._backoff = 0.0, 1.0
        self._lock = threading.Lock()

    def redis_due(self):
        return time.monotonic() >= self._retry_at

    def failed(self, exc):
        with self._lock:
            self._retry_at = time.monotonic() + self._backoff
            log.warning("%s counted in memory for %.0f s: Redis failed (%s)", self.what, self._backoff,
                        type(exc).__name__)
            self._backoff = min(32.0, self._backoff * 2)

    def succeeded(self):
        if self._backoff > 1:
            with self._lock:
                self._backoff = 1.0
            log.info("%s counted in Redis again", self.what)
