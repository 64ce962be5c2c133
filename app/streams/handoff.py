"""Handing a stream's connection from gunicorn's request greenlet to the hub.

The stream view does everything a request does (authentication, limits, the
replay from PostgreSQL, Flask's after-request hooks for CORS and security
headers) and returns an ordinary response marked for hand-off. This WSGI
middleware then writes the response head and the first frames itself, takes
the socket away from gunicorn (`detach`: gunicorn's later close is a no-op)
and raises StopIteration, gunicorn's way of ending a connection without a
response of its own. The request greenlet, gunicorn's request and parser
objects and Werkzeug's response all end there; the stream lives on as a
socket the hub writes to (app/streams/sink.py).

An HTTP/1.1 body is chunked (each write one chunk, framed by `sendmsg`
without copying the frame), as gunicorn would send it: clients that read
chunk by chunk (requests' `iter_content(None)`, many SSE libraries) need it.
An HTTP/1.0 body ends with the connection.

Servers that do not hand their socket over (the Flask test client, a
development server) get the same stream through a generator instead.
"""
import functools
import ssl
from email.utils import formatdate

from gevent import monkey
from flask import Response

from .sink import QueueSink, SocketSink

HANDOFF = "notifications.stream_handoff"
HEADERS = {"Cache-Control": "no-cache, no-transform", "X-Accel-Buffering": "no"}
_HOP_BY_HOP = {"content-length", "transfer-encoding", "connection", "keep-alive"}


def response(environ, keeper, stream, frames):
    """The stream's response: marked for hand-off under gunicorn + gevent, else a generator."""
    if _detachable(environ.get("gunicorn.socket")):
        environ[HANDOFF] = functools.partial(_detach, environ, keeper, stream, frames)
        return Response(iter(()), mimetype="text/event-stream", headers=HEADERS)
    sink = stream.sink = QueueSink(stream, keeper.queue_size, keeper.backlog_max_bytes)
    stream.resume(frames)
    return Response(sink.body(), mimetype="text/event-stream", headers=dict(HEADERS, Connection="keep-alive"))


def _detachable(sock):
    """A plain TCP socket of gunicorn's gevent worker. A TLS socket keeps its generator: its
    encryption state lives in the object, not in the descriptor."""
    return (sock is not None and monkey.is_module_patched("socket") and hasattr(sock, "detach")
            and not isinstance(sock, ssl.SSLSocket) and not hasattr(sock, "cipher"))


def _detach(environ, keeper, stream, frames, status, headers):
    if stream.closed:
        return
    chunked = environ.get("SERVER_PROTOCOL") == "HTTP/1.1"
    lines = [f"{environ.get('SERVER_PROTOCOL', 'HTTP/1.0')} {status}", f"Date: {formatdate(usegmt=True)}",
             "Connection: close"] + (["Transfer-Encoding: chunked"] if chunked else [])
    lines += [f"{name}: {value}" for name, value in headers if name.lower() not in _HOP_BY_HOP]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    fd = environ["gunicorn.socket"].detach()
    stream.sink = SocketSink(fd, stream, keeper.queue_size, keeper.peer_timeout, chunked, keeper.backlog_max_bytes)
    stream.sink.write_raw((head,))
    stream.resume(frames)


class Middleware:
    """Wraps the Flask app's `wsgi_app`; passes every other request through untouched."""

    def __init__(self, wsgi_app):
        self.wsgi_app = wsgi_app

    def __call__(self, environ, start_response):
        captured = []

        def capture(status, headers, exc_info=None):
            captured[:] = [status, headers]
            return start_response(status, headers, exc_info)

        body = self.wsgi_app(environ, capture)
        handoff = environ.pop(HANDOFF, None)
        if handoff is None:
            return body
        if hasattr(body, "close"):
            body.close()
        status, headers = captured
        if not status.startswith("200"):   # an after-request hook turned it into an error
            handoff.args[2].close("refused after the view")
            return [b""]
        handoff(status, headers)
        raise StopIteration("the stream's connection was handed to the hub")


def init_app(app):
    app.wsgi_app = Middleware(app.wsgi_app)
