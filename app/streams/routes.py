"""`GET /v1/notifications/sse` (the stream) and `POST /v1/notifications/sse/ticket`."""
import select
import socket
import time

import gevent

from flask import Response, current_app, request
from flask.views import MethodView
from flask_smorest import Blueprint
import marshmallow as ma

from .. import db, events
from ..auth import USER_SECURITY, bearer_token, current_user, decode_token, user_required
from ..errors import InvalidRequest
from ..metrics import OPEN_STREAMS
from ..redis_client import redis
from . import access, frames, replay
from .hub import RESYNC, UNREAD_CHANGED, Stream, hub

blp = Blueprint("streams", __name__, url_prefix="/v1/notifications",
                description="The real-time stream (Server-Sent Events)")


class StreamQuerySchema(ma.Schema):
    class Meta:
        unknown = ma.RAISE

    ticket = ma.fields.String(load_default=None, metadata={"description": "from POST /sse/ticket, for EventSource"})
    customer_id = ma.fields.UUID(load_default=None)
    last_event_id = ma.fields.Integer(load_default=None, validate=ma.validate.Range(min=0),
                                      metadata={"description": "cursor, when Last-Event-ID cannot be sent"})


class TicketSchema(ma.Schema):
    ticket = ma.fields.String()
    expires_in = ma.fields.Integer()
    stream_url = ma.fields.String()


def _cursor(query_value):
    raw = request.headers.get("Last-Event-ID")
    if raw is None or raw == "":
        return query_value
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequest(errors={"Last-Event-ID": ["Must be a cursor received as `id:`."]})
    if value < 0:
        raise InvalidRequest(errors={"Last-Event-ID": ["Must be a cursor received as `id:`."]})
    return value


def _user(ticket):
    if ticket is not None and bearer_token() is None:
        return access.redeem_ticket(redis(), ticket)
    return current_user() if ticket is None else decode_token(bearer_token(), current_app.config)


@blp.route("/sse")
class StreamView(MethodView):
    @blp.doc(security=USER_SECURITY, responses={"200": {
        "description": "text/event-stream; each notification is `id: <cursor>` + `data: <JSON>`",
        "content": {"text/event-stream": {"schema": {"type": "string"}}}}})
    @blp.arguments(StreamQuerySchema, location="query", as_kwargs=True)
    def get(self, ticket, customer_id, last_event_id):
        """Open the real-time stream

        Authenticate with the bearer token, or with `?ticket=` from
        `POST /v1/notifications/sse/ticket` (EventSource cannot send headers).
        Reconnect with `Last-Event-ID` (or `?last_event_id=`) to receive every
        missed notification in order, then the live stream.
        """
        user = _user(ticket)
        user.check_customer(customer_id)
        cursor = _cursor(last_event_id)
        config = current_app.config
        if customer_id is not None:
            customers = {str(customer_id)}
        elif user.customers is not None:
            customers = {str(c) for c in user.customers} | {""}
        else:
            customers = None
        slots = access.slots(current_app)
        slot = slots.acquire(user.id)
        try:
            body = _stream(hub(current_app), db.pool(), slots, slot, user.id, customers, cursor, config,
                           request.environ.get("gunicorn.socket"))
        except BaseException:
            slots.release(user.id, slot)
            raise
        response = Response(body, mimetype="text/event-stream", headers={
            "Cache-Control": "no-cache, no-transform", "X-Accel-Buffering": "no", "Connection": "keep-alive"})
        response.direct_passthrough = True
        return response


@blp.route("/sse/ticket")
class TicketView(MethodView):
    decorators = [user_required]

    @blp.doc(security=USER_SECURITY)
    @blp.response(201, TicketSchema)
    def post(self):
        """Trade the bearer token for a single-use stream ticket (about a minute)"""
        ttl = current_app.config["SSE_TICKET_TTL_SECONDS"]
        ticket = access.issue_ticket(redis(), current_user(), ttl)
        return {"ticket": ticket, "expires_in": ttl, "stream_url": f"/v1/notifications/sse?ticket={ticket}"}


class _Hangup:
    """Sees a client leave at once, not at the stream's next write (up to two keep-alive
    periods later, holding its slot, hub subscription and greenlet until then).

    An SSE client sends nothing after its request, so its socket turning readable
    means it closed. The libev watcher costs no greenlet: its callback wakes the
    stream, which then looks at the socket itself.
    """

    def __init__(self, client, wakeup):
        self.client, self.wakeup = client, wakeup
        self.watcher = gevent.get_hub().loop.io(client.fileno(), 1)  # 1: readable
        self.watcher.start(self._readable)

    def _readable(self):
        self.watcher.stop()  # level-triggered: once is enough
        self.wakeup.set()

    def client_left(self):
        if self.watcher is None or self.watcher.active:
            return False
        try:
            readable = select.select([self.client], [], [], 0)[0]
            if readable and self.client.recv(1, socket.MSG_PEEK) == b"":
                return True
        except OSError:  # reset by the peer
            return True
        except ValueError:  # a TLS socket cannot peek: leave it to the next write
            readable = True
        if readable:
            self.close()  # it sent bytes instead: its next failed write ends the stream
        else:
            self.watcher.start(self._readable)
        return False

    def close(self):
        if self.watcher is not None:
            self.watcher.close()
            self.watcher = None


def _hangup(client, wakeup):
    try:
        return _Hangup(client, wakeup) if client is not None else None
    except (OSError, AttributeError, ValueError):  # not a real socket (a test client)
        return None


def _cut(client):
    """End a stream whose client stopped reading: its greenlet may sit in a write that never
    completes (no send timeout), so the overflow flag alone would never be seen. The OS socket
    is shut down (not gevent's wrapper, which would cancel the write with EBADF and make gunicorn
    log a traceback): the blocked write then fails with EPIPE, which gunicorn ends quietly."""
    try:
        getattr(client, "_sock", client).shutdown(socket.SHUT_RDWR)
    except (OSError, AttributeError):
        pass


def _stream(the_hub, pool, slots, slot, user_id, customers, cursor, config, client=None):
    """The stream's generator. It runs after the request context is gone: it holds
    only what it was given, and releases all of it in `finally`. `client` is the
    connection's socket (gunicorn's), watched to see a disconnect at once."""
    keepalive, cap = config["SSE_KEEPALIVE_SECONDS"], config["SSE_REPLAY_LIMIT"]
    stream = Stream(user_id, customers, config["SSE_QUEUE_SIZE"])
    if client is not None:
        stream.on_overflow = lambda: _cut(client)
    hangup = None

    def counts(conn):  # the `unread` event, within the stream's customer scope (app/events.py)
        return frames.named("unread", events.unread_json(conn, user_id, config["DOMAIN"], customers))

    def catch_up(after):  # what was missed, then the user's unread counts
        with pool.connection() as conn:
            out, last = replay.missed(conn, user_id, customers, after, cap)
            return out + [counts(conn)], last

    OPEN_STREAMS.inc()
    try:
        yield frames.opening(config["SSE_RETRY_MS"])
        if cursor is None:  # a new stream starts at the newest stored notification
            with pool.connection() as conn:
                cursor = replay.latest_seq(conn, user_id)
        # Subscribe first, then read what was stored meanwhile: no gap between the two.
        the_hub.register(stream).wait(timeout=5)
        out, last = catch_up(cursor)
        if out:
            yield b"".join(out)
        refresh_at = time.monotonic() + access.SLOT_REFRESH
        hangup = _hangup(client, stream.wakeup)
        while not stream.overflowed:
            if time.monotonic() > refresh_at:   # busy or idle, the stream keeps its slot
                slots.refresh(user_id, slot)
                refresh_at = time.monotonic() + access.SLOT_REFRESH
            if not stream.queue:
                stream.wakeup.clear()
                if hangup is not None and hangup.client_left():
                    return
                if not stream.queue and not stream.wakeup.wait(keepalive):
                    yield frames.KEEPALIVE
                    continue
            out = []
            while stream.queue:
                item = stream.queue.popleft()
                if item is RESYNC:
                    caught, last = catch_up(last)
                    out.extend(caught)
                    continue
                if item is UNREAD_CHANGED:   # a customer-scoped stream counts only its customers
                    with pool.connection() as conn:
                        out.append(counts(conn))
                    continue
                seq, _, frame = item
                if seq is not None:
                    if seq <= last:
                        continue
                    last = seq
                out.append(frame)
            if out:
                yield b"".join(out)
            out = item = frame = None   # a paused stream holds no frame: memory per idle stream
    finally:
        if hangup is not None:
            hangup.close()
        OPEN_STREAMS.dec()
        the_hub.unregister(stream)
        try:
            slots.release(user_id, slot)
        except Exception:  # Redis down: the slot expires by itself
            pass
