"""The per-process hub: one Redis pub/sub connection feeding every local stream.

One greenlet owns a raw socket to Redis, parsed with hiredis. It subscribes
to the channel of each user that has at least one stream in this process
(and unsubscribes when the last one leaves), frames each incoming event once
and offers it to each of that user's streams; after every read from the
socket it flushes the streams it fed, so a stream gets all the frames of one
read in one write (app/streams/stream.py).

A stream waits for its channel's SUBSCRIBE to be confirmed before it reads
what it missed from PostgreSQL: no gap between the two. Confirmations are
counted per channel, because a channel unsubscribed and subscribed again has
two SUBSCRIBE replies in flight and only the newest one counts.

When the connection drops the hub reconnects with back-off, subscribes again
and tells every stream to catch up from PostgreSQL, so nothing published
while it was away is lost to a client.
"""
import logging
import socket
from urllib.parse import unquote, urlsplit

import gevent
import gevent.event
import gevent.lock
import hiredis
from gevent.socket import wait_read

from . import frames
from .stream import RESYNC, UNREAD_CHANGED

log = logging.getLogger(__name__)
SUBSCRIBE_BATCH = 500     # channels per SUBSCRIBE/UNSUBSCRIBE command
FLUSH_AFTER = 20_000      # messages read before the streams are flushed even if Redis has more


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
        self.acks = {}             # channel -> [SUBSCRIBE replies still due, Event set when none is]
        self.leaving = set()       # channels whose last stream left: UNSUBSCRIBE them
        self.sock = None
        self.write_lock = gevent.lock.Semaphore()
        self.greenlet = self.unsubscriber = None
        self.unsubscribe_due = gevent.event.Event()
        self.connected = gevent.event.Event()
        self.reconnects = 0
        self._last_message = self._last_item = None

    # -- streams --------------------------------------------------------
    def channel(self, user_id):
        return f"{self.prefix}user:{user_id}"

    def register(self, stream):
        """Add a stream; returns an Event to wait on for its subscription (None: it is active)."""
        self._ensure_running()
        channel = stream.channel
        group = self.streams.get(channel)
        if group is not None:
            group.add(stream)
            entry = self.acks.get(channel)
            return entry[1] if entry else None
        self.streams[channel] = {stream}
        event = self._expect_ack(channel)
        self._send(_command("SUBSCRIBE", channel))
        return event

    def forget(self, stream):
        """Drop a closed stream at once; its channel's UNSUBSCRIBE goes out from a greenlet, as
        this may run inside an event-loop callback that must not block."""
        group = self.streams.get(stream.channel)
        if group is None:
            return
        group.discard(stream)
        if not group:
            del self.streams[stream.channel]
            self.leaving.add(stream.channel)
            self.unsubscribe_due.set()

    def all_streams(self):
        return [stream for group in self.streams.values() for stream in group]

    def count(self):
        return sum(len(group) for group in self.streams.values())

    def _expect_ack(self, channel):
        entry = self.acks.get(channel)
        if entry is None:
            entry = self.acks[channel] = [0, gevent.event.Event()]
        entry[0] += 1
        return entry[1]

    # -- connection -----------------------------------------------------
    def _ensure_running(self):
        if self.greenlet is None or self.greenlet.dead:
            self.greenlet = gevent.spawn(self._run)
        if self.unsubscriber is None or self.unsubscriber.dead:
            self.unsubscriber = gevent.spawn(self._unsubscribe_loop)

    def _send(self, data):
        sock = self.sock
        if sock is None:
            return  # the (re)connect subscribes every channel anyway
        try:
            with self.write_lock:
                sock.sendall(data)
        except OSError:
            self._hang_up(sock)

    @staticmethod
    def _hang_up(sock):
        """Wake the reader (it sees the end and reconnects); it alone closes the socket."""
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _unsubscribe_loop(self):
        while True:
            self.unsubscribe_due.wait()
            self.unsubscribe_due.clear()
            # Decided under the lock: a stream registering meanwhile sends its SUBSCRIBE after this.
            with self.write_lock:
                channels = [c for c in self.leaving if c not in self.streams]
                self.leaving.clear()
                sock = self.sock
                if sock is None:
                    continue
                try:
                    for start in range(0, len(channels), SUBSCRIBE_BATCH):
                        sock.sendall(_command("UNSUBSCRIBE", *channels[start:start + SUBSCRIBE_BATCH]))
                except OSError:
                    self._hang_up(sock)

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
                for channel in channels:   # replies due on the old connection will never come
                    entry = self.acks.get(channel)
                    if entry is not None:
                        entry[0] = 0
                    self._expect_ack(channel)
                self.leaving.clear()
                for start in range(0, len(channels), SUBSCRIBE_BATCH):
                    sock.sendall(_command("SUBSCRIBE", *channels[start:start + SUBSCRIBE_BATCH]))
            if self.reconnects:
                self._resync_all()
            self.reconnects += 1
            self.connected.set()
            try:
                self._read(sock)
            except OSError as exc:
                log.warning("hub: Redis connection lost (%s)", exc)
            self._drop(sock)

    def _resync_all(self):
        fed = [stream for stream in self.all_streams() if stream.offer(RESYNC)]
        for stream in fed:
            stream.flush()

    def _read(self, sock):
        """Read until Redis has nothing more for now, then flush: under load one write carries
        many frames per stream; when idle every message goes out at once. (`sock._sock` is the
        non-blocking socket under gevent's wrapper.)"""
        reader = hiredis.Reader()
        raw, fd = sock._sock, sock.fileno()
        fed = []
        replies = 0
        while True:
            try:
                data = raw.recv(262144)
            except BlockingIOError:
                data = None
            if data is None or replies >= FLUSH_AFTER:
                for stream in fed:
                    stream.flush()
                fed.clear()
                replies = 0
                gevent.sleep(0)       # a busy feed must not starve requests and keep-alives
                if data is None:
                    wait_read(fd)
                    continue
            if not data:
                raise ConnectionResetError("Redis closed the connection")
            reader.feed(data)
            reply = reader.gets()
            while reply is not False:
                self._handle(reply, fed)
                replies += 1
                reply = reader.gets()

    def _handle(self, reply, fed):
        kind = reply[0]
        if kind == b"message":
            self._deliver(reply[1].decode(), reply[2], fed)
        elif kind == b"subscribe":
            channel = reply[1].decode()
            entry = self.acks.get(channel)
            if entry is not None:
                entry[0] -= 1
                if entry[0] <= 0:
                    del self.acks[channel]
                    entry[1].set()

    def _deliver(self, channel, message, fed):
        group = self.streams.get(channel)
        if not group:
            return
        if message == self._last_message:   # a direct push: the same bytes on every user's channel
            item, unread = self._last_item
        else:
            item, unread = self._last_item = self._item(message)
            self._last_message = message
        if unread:
            for stream in group:
                if stream.offer(item if stream.customers is None else UNREAD_CHANGED):
                    fed.append(stream)
            return
        for stream in group:
            if (item[1] is None or stream.wants(item[1])) and stream.offer(item):
                fed.append(stream)

    @staticmethod
    def _item(message):
        """((seq or None, customer or None, frame), is it an `unread` event) of one published
        message, framed once."""
        kind, first, rest = message.split(b"|", 2)
        customer, _, body = rest.partition(b"|")
        customer = customer.decode()
        if kind == b"n":
            seq = int(first)
            item = (seq, customer, frames.notification(seq, body))
        elif kind == b"d":
            item = (None, customer, frames.direct(body))
        else:
            return (None, None, frames.named(first.decode(), body)), first == b"unread"
        return item, False


def hub(app):
    """The process's hub, created on first use (after gunicorn forked the worker)."""
    instance = app.extensions.get("stream_hub")
    if instance is None:
        instance = app.extensions["stream_hub"] = Hub(app.config["REDIS_URL"], app.config["REDIS_PREFIX"])
    return instance
