"""The per-process hub: one Redis pub/sub connection feeding every local stream.

One greenlet owns a raw socket to Redis, parsed with hiredis. It subscribes
to the channel of each user that has at least one stream in this process
(and unsubscribes when the last one leaves), frames each incoming event once
and appends it to the bounded queue of each of that user's streams. A stream
whose queue is full is cut (it resumes from its cursor), so a slow client
never holds up the hub or anyone else.

When the connection drops the hub reconnects with back-off, subscribes again
and tells every stream to catch up from PostgreSQL, so nothing published
while it was away is lost to a client.
"""
import logging
import socket
from collections import deque
from urllib.parse import unquote, urlsplit

import gevent
import gevent.event
import gevent.lock
import hiredis

from . import frames

log = logging.getLogger(__name__)
RESYNC = object()  # queue marker: the hub reconnected, catch up from the database
# queue marker for a customer-scoped stream: the user's counts changed; the published
# `unread` counts every customer of the user, so the stream re-counts within its scope
UNREAD_CHANGED = object()


class Stream:
    """One open SSE connection's inbox of frames, filled by the hub."""

    __slots__ = ("user_id", "customers", "queue", "maxsize", "wakeup", "overflowed", "on_overflow", "__weakref__")

    def __init__(self, user_id, customers, maxsize):
        self.user_id = user_id
        self.customers = customers      # None: every customer; else a set of allowed customer ids ('' = none)
        self.queue = deque()
        self.maxsize = maxsize
        self.wakeup = gevent.event.Event()
        self.overflowed = False
        self.on_overflow = None  # cuts the connection: its greenlet may be blocked writing to a client that stopped reading

    def push(self, item):
        if len(self.queue) >= self.maxsize:
            if not self.overflowed and self.on_overflow is not None:
                self.on_overflow()
            self.overflowed = True
        else:
            self.queue.append(item)
        self.wakeup.set()

    def wants(self, customer):
        return self.customers is None or customer in self.customers


def _command(*parts):
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class Hub:
    def __init__(self, redis_url, prefix):
        url = urlsplit(redis_url)
        self.host, self.port = url.hostname or "127.0.0.1", url.port or 6379
        self.password = unquote(url.password) if url.password else None
        self.username = unquote(url.username) if url.username else None
        self.prefix = prefix
        self.streams = {}          # channel -> set of Stream
        self.subscribed = {}       # channel -> Event set once Redis confirmed the subscription
        self.sock = None
        self.write_lock = gevent.lock.Semaphore()
        self.greenlet = None
        self.connected = gevent.event.Event()
        self.reconnects = 0

    # -- streams --------------------------------------------------------
    def channel(self, user_id):
        return f"{self.prefix}user:{user_id}"

    def register(self, stream):
        """Add a stream; subscribe its user's channel if it is the first one here."""
        self._ensure_running()
        channel = self.channel(stream.user_id)
        group = self.streams.get(channel)
        if group is None:
            self.streams[channel] = {stream}
            self.subscribed[channel] = gevent.event.Event()
            self._send(_command("SUBSCRIBE", channel))
        else:
            group.add(stream)
        return self.subscribed[channel]

    def unregister(self, stream):
        channel = self.channel(stream.user_id)
        group = self.streams.get(channel)
        if group is None:
            return
        group.discard(stream)
        if not group:
            del self.streams[channel]
            self.subscribed.pop(channel, None)
            self._send(_command("UNSUBSCRIBE", channel))

    def count(self):
        return sum(len(group) for group in self.streams.values())

    # -- connection -----------------------------------------------------
    def _ensure_running(self):
        if self.greenlet is None or self.greenlet.dead:
            self.greenlet = gevent.spawn(self._run)

    def _send(self, data):
        sock = self.sock
        if sock is None:
            return  # the (re)connect subscribes every channel anyway
        try:
            with self.write_lock:
                sock.sendall(data)
        except OSError:
            self._drop(sock)

    def _drop(self, sock):
        if self.sock is sock:
            self.sock = None
            self.connected.clear()
        try:
            sock.close()
        except OSError:
            pass

    def _connect(self):
        sock = socket.create_connection((self.host, self.port), timeout=5)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.settimeout(None)
        if self.password:
            auth = ("AUTH", self.username, self.password) if self.username else ("AUTH", self.password)
            sock.sendall(_command(*auth))
            reply = sock.recv(1024)
            if not reply.startswith(b"+OK"):
                raise ConnectionError("Redis refused AUTH")
        return sock

    def _run(self):
        delay = 0.1
        while True:
            try:
                sock = self._connect()
            except OSError as exc:
                log.warning("hub: cannot reach Redis (%s); retrying in %.1fs", exc, delay)
                gevent.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            delay = 0.1
            with self.write_lock:
                self.sock = sock
                channels = list(self.streams)
                for start in range(0, len(channels), 500):
                    sock.sendall(_command("SUBSCRIBE", *channels[start:start + 500]))
            if self.reconnects:
                self._resync_all()
            self.reconnects += 1
            self.connected.set()
            try:
                self._read(sock)
            except OSError as exc:
                log.warning("hub: Redis connection lost (%s)", exc)
            self._drop(sock)
            for event in self.subscribed.values():
                event.clear()

    def _resync_all(self):
        for group in list(self.streams.values()):
            for stream in group:
                stream.push(RESYNC)

    def _read(self, sock):
        reader = hiredis.Reader()
        while True:
            data = sock.recv(65536)
            if not data:
                raise ConnectionResetError("Redis closed the connection")
            reader.feed(data)
            reply = reader.gets()
            while reply is not False:
                self._handle(reply)
                reply = reader.gets()

    def _handle(self, reply):
        kind = reply[0]
        if kind == b"message":
            self._deliver(reply[1].decode(), reply[2])
        elif kind == b"subscribe":
            event = self.subscribed.get(reply[1].decode())
            if event is not None:
                event.set()

    def _deliver(self, channel, message):
        group = self.streams.get(channel)
        if not group:
            return
        kind, first, rest = message.split(b"|", 2)
        customer, _, body = rest.partition(b"|")
        customer = customer.decode()
        if kind == b"n":
            seq = int(first)
            item = (seq, customer, frames.notification(seq, body))
        elif kind == b"d":
            item = (None, customer, frames.direct(body))
        else:
            item = (None, None, frames.named(first.decode(), body))
            if first == b"unread":
                for stream in tuple(group):
                    stream.push(item if stream.customers is None else UNREAD_CHANGED)
                return
        for stream in tuple(group):
            if item[1] is None or stream.wants(item[1]):
                stream.push(item)


def hub(app):
    """The process's hub, created on first use (after gunicorn forked the worker)."""
    instance = app.extensions.get("stream_hub")
    if instance is None:
        instance = app.extensions["stream_hub"] = Hub(app.config["REDIS_URL"], app.config["REDIS_PREFIX"])
    return instance
