"""The upkeep of one process's streams, done for all of them by a few greenlets.

Streams have no greenlet of their own (app/streams/sink.py), so what each
used to do for itself is done here, in bulk:

- keep-alives: one ticker writes `: keep-alive` to every stream idle for
  `SSE_KEEPALIVE_SECONDS` (checked every quarter of it, at most every second);
- expiry: the same ticker ends every stream whose credentials' `exp` has
  passed (so before its next keep-alive), with a last comment and the body's
  proper end; the client reconnects with fresh credentials and its cursor;
- per-user slots (app/streams/access.py): refreshed for every open stream in
  one pipeline a minute, released in one pipeline as streams close;
- catch-ups from PostgreSQL (after the hub lost Redis, or a customer-scoped
  recount): a few worker greenlets, so a Redis restart under 15,000 streams
  does not open 15,000 database queries at once;
- closing: `forget` runs wherever a stream ends (possibly inside an
  event-loop callback, which must not block), so the Redis side of the
  cleanup is handed to the ticker.

`open` caps the streams of the process (`SSE_MAX_STREAMS_PER_WORKER`, by
default the open-file limit less a reserve) with a 503 instead of letting
`accept` fail for every client once the descriptors run out.
"""
import datetime
import logging
import resource
import time
from collections import deque
from types import SimpleNamespace

import gevent
import gevent.event
import gevent.queue

from .. import replica
from ..errors import ServiceUnavailable
from ..metrics import OPEN_STREAMS
from ..notifications import events
from . import access, frames, replay
from .hub import hub as process_hub
from .stream import RESYNC, Stream

log = logging.getLogger(__name__)
CATCH_UP_WORKERS = 8
FD_RESERVE = 500          # descriptors kept for requests, PostgreSQL, Redis, logs
_access_log = None        # gunicorn's access logger, set by gunicorn.conf.py


def use_access_log(logger):
    """Let closed streams write their access-log line through gunicorn's logger."""
    global _access_log
    _access_log = logger


class Keeper:
    def __init__(self, app, hub, slots, pool):
        config = app.config
        self.hub, self.slots, self.pool = hub, slots, pool
        self.replica = replica.router(app)   # replays from a replica that has what preceded them
        self.domain = config["DOMAIN"]
        self.keepalive = config["SSE_KEEPALIVE_SECONDS"]
        self.queue_size = config["SSE_QUEUE_SIZE"]
        self.replay_limit = config["SSE_REPLAY_LIMIT"]
        self.replay_max_bytes = config["SSE_REPLAY_MAX_BYTES"]
        self.backlog_max_bytes = config["SSE_BACKLOG_MAX_BYTES"]
        self.peer_timeout = config["SSE_PEER_TIMEOUT_SECONDS"]
        self.max_streams = config["SSE_MAX_STREAMS_PER_WORKER"] or max(
            100, resource.getrlimit(resource.RLIMIT_NOFILE)[0] - FD_RESERVE)
        self.open_count = 0
        self.releases = deque()           # (user id, slot) of closed streams
        self.wake = gevent.event.Event()
        self.catch_ups = gevent.queue.Queue()
        self.greenlets = [gevent.spawn(self._tick)] + [gevent.spawn(self._catch_up_loop)
                                                       for _ in range(CATCH_UP_WORKERS)]

    # -- opening --------------------------------------------------------------------------------
    def open(self, user_id, customers, peer, expires_at=float("inf"), admit=None):
        """A registered, busy stream holding a slot (429 past the user's limit, 503 past the process's),
        ending at `expires_at` (wall clock). `admit()`, once the slot is held, may still refuse it
        (the connect budget): a user at the cap is told so before any budget is spent."""
        if self.open_count >= self.max_streams:
            raise ServiceUnavailable("This server holds as many streams as it can; retry shortly")
        slot = self.slots.acquire(user_id, customers)
        if admit is not None:
            try:
                admit()
            except BaseException:
                self.slots.release_many([(user_id, slot)])
                raise
        stream = Stream(self, user_id, self.hub.channel(user_id), customers, slot, peer, expires_at)
        self.open_count += 1
        OPEN_STREAMS.inc()
        try:
            waiter = self.hub.register(stream)
            if waiter is not None:
                waiter.wait(timeout=5)   # without Redis: the reconnect's catch-up covers the gap
        except BaseException:
            stream.close("failed to open")
            raise
        return stream

    def first_frames(self, stream, cursor):
        """What a new stream starts with: everything after its cursor (a new one starts at the
        newest stored notification) and the user's unread counts. Sets the stream's cursor."""
        def read(conn):
            if cursor is None:
                # Nothing to replay: the subscription came first and `seq` is commit- and
                # publish-ordered, so whatever is stored after this read reaches it live.
                newest = replay.latest_seq(conn, stream.user_id)
                return [self._counts(conn, stream)], newest
            return self._missed(conn, stream, cursor)
        out, stream.last = self._read(read)
        return out

    def _read(self, fn):
        """fn(conn) on the replica once it has everything committed before now (so before the
        stream subscribed), else on the primary (app/replica.py)."""
        return replica.run(self.replica, fn, self.pool.connection, since=time.monotonic())

    def _missed(self, conn, stream, after):
        out, last = replay.missed(conn, stream.user_id, stream.customers, after, self.replay_limit,
                                  self.replay_max_bytes)
        return out + [self._counts(conn, stream)], last

    def _counts(self, conn, stream):
        return frames.named("unread", events.unread_json(conn, stream.user_id, self.domain, stream.customers))

    # -- catching up ----------------------------------------------------------------------------
    def catch_up(self, stream):
        """The stream turned busy on a marker (the first item of its queue): work it off soon."""
        self.catch_ups.put_nowait(stream)

    def _catch_up_loop(self):
        while True:
            stream = self.catch_ups.get()
            if stream.closed or not stream.queue:
                continue
            marker = stream.queue.popleft()
            try:
                if marker is RESYNC:
                    out, last = self._read(lambda conn: self._missed(conn, stream, stream.last))
                else:
                    out, last = self._read(lambda conn: ([self._counts(conn, stream)], None))
            except Exception as exc:  # PostgreSQL down: the client reconnects with its cursor later
                log.warning("stream catch-up failed (%s); closing the stream", type(exc).__name__)
                stream.close("catch-up failed")
                continue
            stream.resume(out, last)

    # -- closing --------------------------------------------------------------------------------
    def forget(self, stream, reason):
        """Called once per stream as it closes; must not block."""
        self.hub.forget(stream)
        self.open_count -= 1
        OPEN_STREAMS.dec()
        self.releases.append((stream.user_id, stream.slot))
        self.wake.set()
        _log_access(stream, reason)

    def _release_slots(self):
        if not self.releases:
            return
        batch = [self.releases.popleft() for _ in range(len(self.releases))]
        try:
            self.slots.release_many(batch)
        except Exception as exc:  # Redis down: the entries expire by themselves
            log.debug("stream slots not released (%s)", type(exc).__name__)

    # -- the ticker -----------------------------------------------------------------------------
    def _tick(self):
        interval = min(1.0, self.keepalive / 4)
        refresh_at = time.monotonic() + access.SLOT_REFRESH
        while True:
            self.wake.wait(interval)
            self.wake.clear()
            self._release_slots()
            now, wall = time.monotonic(), time.time()
            streams = self.hub.all_streams()
            for stream in streams:
                sink = stream.sink
                if sink is None or stream.closed:
                    continue
                if stream.expires_at <= wall:
                    stream.close("credentials expired", farewell=frames.EXPIRED)
                elif now - sink.last_write >= self.keepalive:
                    sink.write(frames.KEEPALIVE)
            if now >= refresh_at:
                refresh_at = now + access.SLOT_REFRESH
                try:
                    self.slots.refresh_many([(s.user_id, s.slot) for s in streams if not s.closed])
                except Exception as exc:  # Redis down: refreshed next minute (entries live 3)
                    log.warning("stream slots not refreshed (%s)", type(exc).__name__)

    def shutdown(self):
        """Close every stream and give their slots back (the process is exiting): clients
        reconnect at once, to another worker, with their cursor."""
        for stream in self.hub.all_streams():
            stream.close("server shutting down")
        self._release_slots()


def _log_access(stream, reason):
    if _access_log is None or stream.peer is None:
        return
    seconds = time.monotonic() - stream.opened_at
    remote, protocol, request_id = stream.peer
    sink = stream.sink
    response = SimpleNamespace(status="200", sent=sink.sent if sink is not None else 0,
                               headers=[("X-Request-ID", request_id or "-")])
    environ = {"REMOTE_ADDR": remote, "REQUEST_METHOD": "GET", "RAW_URI": access.STREAM_PATH,
               "PATH_INFO": access.STREAM_PATH, "QUERY_STRING": "", "SERVER_PROTOCOL": protocol}
    try:
        _access_log.access(response, [], environ, datetime.timedelta(seconds=seconds))
    except Exception:  # a log line must never break a close
        log.debug("access log line of a stream failed", exc_info=True)
    log.debug("stream of %s closed after %.1fs: %s", stream.user_id, seconds, reason)


def keeper(app):
    """The process's keeper (and hub), created on first use, after gunicorn forked the worker."""
    instance = app.extensions.get("stream_keeper")
    if instance is None:
        from .. import db
        instance = Keeper(app, process_hub(app), access.slots(app), db.pool())
        app.extensions["stream_keeper"] = instance
    return instance


def shutdown(app):
    instance = getattr(app, "extensions", {}).get("stream_keeper")
    if instance is not None:
        instance.shutdown()


def new_peer(environ, request_id):
    """What the access-log line of a stream needs, kept small: it lives as long as the stream."""
    return (environ.get("REMOTE_ADDR", "-"), environ.get("SERVER_PROTOCOL", "HTTP/1.1"), request_id)

