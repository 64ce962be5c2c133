"""Where a stream's bytes go: its own socket, written without a greenlet, or a generator.

A held stream spends nearly all its life waiting. Parking a greenlet (and
gunicorn's request, parser and environ) on each one cost about 26 KB per
stream; a `SocketSink` costs a socket object and one libev watcher. The hub
writes each frame with a non-blocking `send` the moment it arrives. What the
kernel's buffer cannot take waits in `pending`, flushed by a write watcher
when the socket drains; a client that lets more than `limit` writes or
`max_bytes` bytes of live events pile up is cut (it resumes from its cursor),
so a slow client never holds anyone up, and what a stream can hold in this
process's memory is bounded whatever its notifications weigh. A replay from
PostgreSQL (bounded by SSE_REPLAY_MAX_BYTES) goes out in one write, most of it
waiting for a client that just connected: it is `exempt` from the live cap, so
a stream holds at most its replay plus SSE_BACKLOG_MAX_BYTES.

The read watcher sees a client leave at once: an SSE client sends nothing
after its request, so readable means closed (or reset). A peer that vanished
without FIN or RST (cable cut, a phone losing coverage) leaves the keep-alives
unacknowledged; `TCP_USER_TIMEOUT` makes the kernel give up on it after
`peer_timeout` seconds instead of ~15 minutes of retransmissions, and the read
watcher then sees the error.

Callbacks of libev watchers run inside gevent's event loop and must not block:
everything here is a non-blocking system call, and closing a stream defers its
Redis work to the keeper (app/streams/keeper.py).
"""
import _socket
import socket
import time
from collections import deque

import gevent
import gevent.event

READABLE, WRITABLE = 1, 2


class SocketSink:
    """A stream's detached client socket, non-blocking, owned by this process's hub."""

    __slots__ = ("sock", "stream", "pending", "reader", "writer", "sent", "written", "exempt", "last_write", "limit",
                 "max_bytes", "chunked")

    def __init__(self, fd, stream, limit, peer_timeout, chunked, max_bytes):
        self.sock = _socket.socket(fileno=fd)
        self.chunked = chunked   # HTTP/1.1: every write is one chunk of the chunked body
        self.sock.setblocking(False)
        self.stream, self.limit, self.max_bytes = stream, limit, max_bytes
        self.pending = self.writer = None
        self.sent = self.written = self.exempt = 0   # bytes the kernel took; bytes given; given exempt
        self.last_write = time.monotonic()
        try:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(peer_timeout * 1000))
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):  # not TCP (a Unix socket behind a proxy): nothing to tune
            pass
        self.reader = gevent.get_hub().loop.io(fd, READABLE)
        self.reader.start(self._readable)

    def write(self, data, exempt=False):
        """Write one piece of the body (framed as a chunk when chunked); `exempt`: a replay."""
        if self.chunked:
            self.write_raw((b"%x\r\n" % len(data), data, b"\r\n"), exempt)
        else:
            self.write_raw((data,), exempt)

    def write_raw(self, parts, exempt=False):
        """Send `parts` as they are, in one system call, without joining them."""
        self.last_write = time.monotonic()
        self.written += sum(len(part) for part in parts) if len(parts) > 1 else len(parts[0])
        if exempt:
            self.exempt = self.written
        if self.pending is not None:
            self.pending.append(b"".join(parts))
            if len(self.pending) > self.limit or self.written - max(self.sent, self.exempt) > self.max_bytes:
                self.stream.close("too slow")
            return
        sent = self._send(parts)
        if sent is None:
            return
        total = sum(len(part) for part in parts) if len(parts) > 1 else len(parts[0])
        if sent < total:
            self.pending = deque([memoryview(b"".join(parts))[sent:]])
            self.writer = gevent.get_hub().loop.io(self.sock.fileno(), WRITABLE)
            self.writer.start(self._writable)
            if self.written - max(self.sent, self.exempt) > self.max_bytes:
                self.stream.close("too slow")

    def _send(self, parts):
        """Bytes the kernel took (0 when its buffer is full); None when the client is gone."""
        try:
            sent = self.sock.sendmsg(parts)
        except BlockingIOError:
            return 0
        except OSError:
            self.stream.close("gone")
            return None
        self.sent += sent
        return sent

    def _writable(self):
        pending = self.pending
        while pending:
            data = pending[0] if len(pending) == 1 else b"".join(pending)
            pending.clear()
            sent = self._send((data,))
            if sent is None:
                return
            if sent < len(data):
                pending.append(memoryview(data)[sent:])
                return
        self.pending = None
        self._stop("writer")

    def _readable(self):
        try:
            data = self.sock.recv(4096)
        except BlockingIOError:
            return
        except OSError:  # reset, or the peer timed out (TCP_USER_TIMEOUT)
            self.stream.close("gone")
            return
        if not data:
            self.stream.close("closed by the client")
        # bytes from a client that should send none after its request: read and ignored

    def finish(self, frame):
        """End the body properly (the last chunk) when nothing waits: never blocks, never queues."""
        if self.pending is None:
            parts = (b"%x\r\n" % len(frame), frame, b"\r\n0\r\n\r\n") if self.chunked else (frame,)
            try:
                self.sock.sendmsg(parts)
            except OSError:
                pass

    def _stop(self, name):
        watcher = getattr(self, name)
        if watcher is not None:
            watcher.stop()
            watcher.close()
            setattr(self, name, None)

    def close(self):
        self._stop("reader")
        self._stop("writer")
        self.pending = None
        try:
            self.sock.close()
        except OSError:
            pass


class QueueSink:
    """For servers that do not hand their socket over (the Flask test client, a development
    server): writes wait in a list that the response generator drains."""

    __slots__ = ("stream", "chunks", "ready", "closed", "sent", "written", "exempt", "last_write", "limit",
                 "max_bytes")

    def __init__(self, stream, limit, max_bytes):
        self.stream, self.limit, self.max_bytes = stream, limit, max_bytes
        self.chunks = []
        self.ready = gevent.event.Event()
        self.closed = False
        self.sent = self.written = self.exempt = 0
        self.last_write = time.monotonic()

    def write(self, data, exempt=False):
        if self.closed:
            return
        self.last_write = time.monotonic()
        self.chunks.append(data)
        self.written += len(data)
        if exempt:
            self.exempt = self.written
        if len(self.chunks) > self.limit or self.written - max(self.sent, self.exempt) > self.max_bytes:
            self.stream.close("too slow")
        self.ready.set()

    def finish(self, frame):
        """The generator ends after this frame: gunicorn writes the body's end."""
        if not self.closed:
            self.chunks.append(frame)

    def close(self):
        self.closed = True
        self.ready.set()

    def body(self):
        """The response iterator; its end (the client left, or the stream was closed) closes the stream."""
        try:
            while True:
                if self.chunks:
                    out, self.chunks = b"".join(self.chunks), []
                    self.sent += len(out)
                    yield out
                    continue
                if self.closed:
                    return
                self.ready.clear()
                self.ready.wait()
        finally:
            self.stream.close("closed by the client")
