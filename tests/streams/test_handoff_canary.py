"""A canary for the socket hand-off: it fails, naming what changed, when a gunicorn or gevent
upgrade breaks an internal that app/streams/ relies on (docs/decisions/0001-socket-hand-off.md).

The hand-off (app/streams/handoff.py) takes a stream's socket from gunicorn's
gevent worker: `environ["gunicorn.socket"].detach()`, then StopIteration,
which the async worker treats as "close this connection" (a no-op once
detached). The stream then lives as a non-blocking socket under a libev
watcher (app/streams/sink.py); the hub reads Redis from gevent's private
`sock._sock` (app/streams/hub.py); the keeper writes each stream's access-log
line by calling gunicorn's `log.access` with a stand-in response
(app/streams/keeper.py). None of it is a public API, so each is checked
here, by shape and by running the real gunicorn worker code in a gevent
child process (the hand-off only happens where `socket` is monkey-patched).
"""
import ast
import inspect
import json
import pathlib
import re
import subprocess
import sys
import textwrap

import gevent
import gevent.monkey
import gevent.socket
import gunicorn
from gunicorn import glogging
from gunicorn.config import Config
from gunicorn.http import wsgi as gunicorn_wsgi
from gunicorn.workers import base_async, ggevent

from app.streams import handoff, keeper
from app.streams.stream import Stream

ROOT = pathlib.Path(__file__).resolve().parents[2]
RECORD = "docs/decisions/0001-socket-hand-off.md"
# The versions the hand-off was last checked against: moved only with the pin in requirements.in,
# after tests/streams/ and tests/test_streams.py pass on the new versions, and with the record.
CHECKED = {"gunicorn": "27.0.1", "gevent": "26.9.0"}


def changed(package, what, where):
    """The failure message: what changed, which file relies on it, where the reasons are."""
    return (f"{package} {_installed(package)} changed {what}: {where} relies on it "
            f"(checked against {package} {CHECKED[package]}; see {RECORD})")


def _installed(package):
    return {"gunicorn": gunicorn.__version__, "gevent": gevent.__version__}[package]


def _parameters(function):
    return list(inspect.signature(function).parameters)


# -- the versions -------------------------------------------------------------------------------


def test_the_installed_versions_are_the_ones_the_hand_off_was_checked_against():
    for package, checked in CHECKED.items():
        assert _installed(package) == checked, (
            f"{package} {_installed(package)} is installed; the socket hand-off was checked against {checked} "
            f"(app/streams/handoff.py, sink.py, hub.py, keeper.py rely on its internals; see {RECORD}). "
            f"Run tests/streams/ and tests/test_streams.py on it, then move CHECKED here, the pin in "
            f"requirements.in and the record together.")
    pins = dict(re.findall(r"^(gevent|gunicorn)(?:\[\w+\])?==(\S+)", (ROOT / "requirements.in").read_text(), re.M))
    assert pins == CHECKED, f"requirements.in pins {pins}, the hand-off was checked against {CHECKED}"
    lock = dict(re.findall(r"^(gevent|gunicorn)==(\S+)", (ROOT / "requirements.txt").read_text(), re.M))
    assert lock == CHECKED, f"requirements.txt locks {lock}, the hand-off was checked against {CHECKED}"
    record = (ROOT / RECORD).read_text()
    for package, checked in CHECKED.items():
        assert f"{package} {checked}" in record, f"{RECORD} does not state the {package} version relied on ({checked})"


# -- the shapes relied on -----------------------------------------------------------------------


def test_gunicorn_keeps_the_worker_and_logger_shapes_the_hand_off_relies_on():
    assert issubclass(ggevent.GeventWorker, base_async.AsyncWorker), changed(
        "gunicorn", "GeventWorker's base (no longer base_async.AsyncWorker, whose handle() ends a connection "
        "on StopIteration)", "app/streams/handoff.py")
    assert _parameters(base_async.AsyncWorker.handle) == ["self", "listener", "client", "addr"], changed(
        "gunicorn", f"AsyncWorker.handle{inspect.signature(base_async.AsyncWorker.handle)}", "app/streams/handoff.py")
    assert "gunicorn.socket" in inspect.getsource(gunicorn_wsgi.default_environ), changed(
        "gunicorn", "the WSGI environ (no `gunicorn.socket`)", "app/streams/handoff.py (`_detachable`, `_detach`)")
    assert _parameters(glogging.Logger.access) == ["self", "resp", "req", "environ", "request_time"], changed(
        "gunicorn", f"Logger.access{inspect.signature(glogging.Logger.access)}", "app/streams/keeper.py (`_log_access`)")


def test_gevent_keeps_the_socket_and_loop_shapes_the_transport_relies_on():
    import _socket
    from gevent import _socket3
    assert gevent.socket.socket is _socket3.socket, changed("gevent", "gevent.socket.socket", "app/streams/hub.py")
    ours, theirs = gevent.socket.socketpair()
    try:
        raw = getattr(ours, "_sock", None)
        assert isinstance(raw, _socket.socket) and raw.fileno() == ours.fileno(), changed(
            "gevent", "the private `_sock` of its sockets (the socket under the wrapper)", "app/streams/hub.py (`_read`)")
        assert raw.gettimeout() == 0.0, changed(
            "gevent", "`sock._sock` (no longer non-blocking)", "app/streams/hub.py (`_read`)")
        assert callable(getattr(ours, "detach", None)) and not hasattr(ours, "cipher"), changed(
            "gevent", "its socket's detach()", "app/streams/handoff.py (`_detachable`, `_detach`)")
        loop = gevent.get_hub().loop
        constants = sys.modules[type(loop).__module__]
        assert (getattr(constants, "READ", None), getattr(constants, "WRITE", None)) == (1, 2), changed(
            "gevent", "the loop's READ/WRITE event flags", "app/streams/sink.py (READABLE, WRITABLE)")
        assert _parameters(loop.io)[:2] == ["fd", "events"], changed(
            "gevent", f"loop.io{inspect.signature(loop.io)}", "app/streams/sink.py")
        watcher = loop.io(ours.fileno(), 1)
        assert all(callable(getattr(watcher, name, None)) for name in ("start", "stop", "close")), changed(
            "gevent", "io watchers (start/stop/close)", "app/streams/sink.py")
        watcher.close()
    finally:
        ours.close()
        theirs.close()
    assert _parameters(gevent.socket.wait_read)[0] == "fileno", changed(
        "gevent", "gevent.socket.wait_read", "app/streams/hub.py (`_read`)")
    assert callable(getattr(gevent.monkey, "is_module_patched", None)), changed(
        "gevent", "monkey.is_module_patched", "app/streams/handoff.py (`_detachable`)")


def test_the_middleware_finds_the_stream_as_the_third_argument_of_the_hand_off():
    """handoff.Middleware closes a refused stream as `handoff.args[2]` of the partial the view stored."""
    assert _parameters(handoff._detach)[:3] == ["environ", "keeper", "stream"], (
        "app/streams/handoff.py: _detach's parameters moved; Middleware reads the stream as handoff.args[2]")


# -- the real worker, in a gevent process -------------------------------------------------------

CHILD = textwrap.dedent("""
    from gevent import monkey
    monkey.patch_all()
    import json, os, socket, time
    from types import SimpleNamespace
    import gevent
    from flask import Flask, request
    from gunicorn.config import Config
    from gunicorn.workers.ggevent import GeventWorker
    from app.streams import frames, handoff
    from app.streams.stream import Stream

    class Log:
        '''gunicorn's worker logger: what the worker says about the connection.'''
        calls = []
        def __getattr__(self, name):
            return lambda *args, **kwargs: self.calls.append([name, repr(args)[:300]])

    observed, closed = {}, []
    keeper = SimpleNamespace(queue_size=8, peer_timeout=5.0, backlog_max_bytes=65536,
                             forget=lambda stream, reason: closed.append(reason))
    stream = Stream(keeper, "user", "channel", None, "slot", None)
    app = Flask("canary")
    handoff.init_app(app)

    @app.route("/v1/notifications/sse")
    def view():
        observed["detachable"] = handoff._detachable(request.environ.get("gunicorn.socket"))
        return handoff.response(request.environ, keeper, stream, [frames.opening(1000)])

    worker = GeventWorker(0, os.getppid(), [], None, 30, Config(), Log())
    worker.wsgi = app
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    client = socket.create_connection(listener.getsockname())
    connection, address = listener.accept()
    accepted = os.fstat(connection.fileno()).st_ino
    handler = gevent.spawn(worker.handle, listener, connection, address)
    client.sendall(b"GET /v1/notifications/sse HTTP/1.1\\r\\nHost: canary\\r\\n\\r\\n")
    handler.join(5)
    observed["handler_returned"] = handler.dead
    observed["handler_raised"] = repr(handler.exception) if handler.exception else None
    observed["sink"] = type(stream.sink).__name__
    try:   # the sink still owns the socket gunicorn accepted (not a closed, reused descriptor)
        observed["same_socket"] = os.fstat(stream.sink.sock.fileno()).st_ino == accepted
    except (AttributeError, OSError) as exc:
        observed["same_socket"] = repr(exc)
    client.settimeout(5)
    received = b""
    while b": connected" not in received:
        data = client.recv(65536)
        if not data:
            break
        received += data
    if stream.sink is not None and not stream.closed:   # the hub's write, after gunicorn is done
        stream.sink.write(b"data: after the hand-off\\n\\n")
        while not received.endswith(b"after the hand-off\\n\\n\\r\\n"):
            data = client.recv(65536)
            if not data:
                break
            received += data
    observed["received"] = received.decode("latin-1")
    client.close()
    deadline = time.monotonic() + 5
    while not closed and time.monotonic() < deadline:
        gevent.sleep(0.01)
    observed["closed"] = closed
    observed["log"] = Log.calls
    worker.tmp.close()
    print(json.dumps(observed))
""")


def test_gunicorns_gevent_worker_hands_a_streams_socket_over():
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, f"the hand-off canary's child failed:\n{done.stderr[-3000:]}"
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["same_socket"] is True, changed(
        "gunicorn", f"what it does with a detached socket once the connection ends ({seen['same_socket']})",
        "app/streams/handoff.py (gunicorn's close of a detached socket must be a no-op)")
    assert seen.get("detachable"), changed(
        "gunicorn", "environ['gunicorn.socket'] (no longer a plain gevent socket with detach())",
        "app/streams/handoff.py (`_detachable`: every stream would keep a greenlet and its request)")
    assert seen["handler_returned"] and seen["handler_raised"] is None, changed(
        "gunicorn", f"how the async worker ends a connection on StopIteration (handle: {seen['handler_raised']})",
        "app/streams/handoff.py (Middleware raises StopIteration after detach())")
    errors = [call for call in seen["log"] if call[0] in ("error", "exception", "critical", "warning")]
    assert not errors, changed("gunicorn", f"what it logs for a handed-over connection: {errors}",
                               "app/streams/handoff.py (StopIteration must end the connection quietly)")
    head, _, body = seen["received"].partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 200 OK\r\n") and "Transfer-Encoding: chunked" in head, (
        f"the hand-off wrote no proper head (app/streams/handoff.py `_detach`): {seen['received']!r}")
    expected = "".join(f"{len(chunk):x}\r\n{chunk}\r\n" for chunk in (": connected\nretry: 1000\n\n",
                                                                        "data: after the hand-off\n\n"))
    assert body == expected, changed(
        "gunicorn", f"what happens to a detached socket (the client read {body!r}, expected {expected!r}: "
        "closed or written to after detach())", "app/streams/handoff.py and sink.py")
    assert seen["sink"] == "SocketSink" and seen["closed"] == ["closed by the client"], changed(
        "gevent", f"io watchers on a detached socket (the client's leaving was seen as {seen['closed']})",
        "app/streams/sink.py (the read watcher)")


# -- the access-log line ------------------------------------------------------------------------


def _access_log_format():
    """gunicorn.conf.py's format, read without importing it (it monkey-patches on import)."""
    tree = ast.parse((ROOT / "gunicorn.conf.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and [t.id for t in node.targets] == ["access_log_format"]:
            return ast.literal_eval(node.value)
    raise AssertionError("gunicorn.conf.py sets no access_log_format")


def test_a_streams_access_log_line_is_written_by_gunicorns_logger(tmp_path):
    cfg = Config()
    cfg.set("accesslog", str(tmp_path / "access.log"))
    cfg.set("access_log_format", _access_log_format())
    logger = glogging.Logger(cfg)
    stub_keeper = type("Keeper", (), {"forget": lambda self, stream, reason: None})()
    stream = Stream(stub_keeper, "user", "channel", None, "slot", ("203.0.113.9", "HTTP/1.1", "rid-canary"))
    stream.sink = type("Sink", (), {"sent": 1234})()
    keeper.use_access_log(logger)
    try:
        keeper._log_access(stream, "closed by the client")
    finally:
        keeper.use_access_log(None)
        for handler in logger.access_log.handlers:
            handler.close()
    lines = (tmp_path / "access.log").read_text().splitlines()
    assert len(lines) == 1 and re.fullmatch(
        r'203\.0\.113\.9 "GET /v1/notifications/sse HTTP/1\.1" 200 1234 \d+ms rid=rid-canary', lines[0]), changed(
        "gunicorn", f"Logger.access/atoms (the stream's line came out as {lines})", "app/streams/keeper.py (`_log_access`)")

