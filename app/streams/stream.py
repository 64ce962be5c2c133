"""One open stream: its cursor, what it may see, and the order its frames go out in.

A stream has no greenlet. The hub offers it the items of each read from
Redis and then flushes it, so all the frames one read brought go out in one
write. A stream is *live* when its `queue` is None: frames are written at
once. While something must come from PostgreSQL first (the replay when it
opens, a catch-up after the hub lost Redis, a customer-scoped recount), the
stream is *busy*: items wait in `queue`, in order, behind that work, and the
one who did it calls `resume` with its frames. Live items at or below the
cursor are dropped, so a replay and the live feed never duplicate or reorder.
"""
import time
from collections import deque

RESYNC = object()          # item: the hub reconnected; catch up from the database
# item for a customer-scoped stream: the user's counts changed; the published `unread`
# counts every customer of the user, so the stream re-counts within its scope
UNREAD_CHANGED = object()


class Stream:
    __slots__ = ("user_id", "channel", "customers", "slot", "last", "sink", "batch", "queue", "closed",
                 "keeper", "opened_at", "peer", "expires_at", "__weakref__")

    def __init__(self, keeper, user_id, channel, customers, slot, peer, expires_at=float("inf")):
        self.keeper = keeper
        self.expires_at = expires_at   # wall clock: the credentials' `exp`; the stream ends then
        self.user_id, self.channel, self.slot, self.peer = user_id, channel, slot, peer
        self.customers = customers   # None: every customer; else allowed customer ids ('' = none)
        self.last = 0                # the cursor: newest seq written
        self.sink = self.batch = None
        self.queue = deque()         # busy until its first frames went out
        self.closed = False
        self.opened_at = time.monotonic()

    def wants(self, customer):
        return self.customers is None or customer in self.customers

    # -- fed by the hub -------------------------------------------------------------------------
    def offer(self, item):
        """Add one item of the current read; True when it is the first (the hub flushes it later)."""
        if self.batch is None:
            self.batch = [item]
            return True
        self.batch.append(item)
        return False

    def flush(self):
        items, self.batch = self.batch, None
        if self.closed or not items:
            return
        if self.queue is not None:
            if len(self.queue) + len(items) > self.keeper.queue_size:
                self.close("too slow")
            else:
                self.queue.extend(items)
            return
        if len(items) == 1 and items[0].__class__ is tuple:   # the usual case, once per stream per burst
            seq, _, frame = items[0]
            if seq is None or seq > self.last:
                if seq is not None:
                    self.last = seq
                self.sink.write(frame)
            return
        self._write(items)

    # -- after the database ---------------------------------------------------------------------
    def resume(self, frames, last=None):
        """Write what the database gave (`last`: its newest seq), then what waited behind it."""
        if self.closed:
            return
        if last is not None:
            self.last = max(self.last, last)
        if frames:   # bounded by the replay's own cap: exempt from the live backlog's
            self.sink.write(frames[0] if len(frames) == 1 else b"".join(frames), exempt=True)
        waiting, self.queue = self.queue, None
        if waiting and not self.closed:
            self._write(waiting)

    def _write(self, items):
        out = []
        for index, item in enumerate(items):
            if item is RESYNC or item is UNREAD_CHANGED:
                self.queue = deque(list(items)[index:])   # busy again: the marker first
                self.keeper.catch_up(self)
                break
            seq, _, frame = item
            if seq is not None:
                if seq <= self.last:
                    continue
                self.last = seq
            out.append(frame)
        if out and not self.closed:
            self.sink.write(out[0] if len(out) == 1 else b"".join(out))

    def close(self, reason, farewell=None):
        """Safe from anywhere (the hub, a libev callback, a request) and more than once.
        `farewell`: a last frame, and the body's proper end, for a client that keeps up (an
        ending it can tell from a dropped connection); a client that lags is simply cut."""
        if self.closed:
            return
        self.closed = True
        self.batch = self.queue = None
        if self.sink is not None:
            if farewell is not None:
                self.sink.finish(farewell)
            self.sink.close()
        self.keeper.forget(self, reason)
