"""Real service processes for the stream tests: gunicorn, the RQ worker, and an SSE client.

The stream is only real under gunicorn's gevent worker: there the view hands
the client's socket over from gunicorn (app/streams/handoff.py) and the stream
lives on with no greenlet and no generator, written by the process's hub and
watched for a disconnect by a libev watcher (app/streams/sink.py). The Flask
test client only ever gets the generator fallback, so these tests start the
same commands as the Procfile, against the run's private PostgreSQL database
and Redis (tests/conftest.py), and talk to them over HTTP on 127.0.0.1.

    processes        fixture: start_web(env, ...), start_worker(env, ...); all stopped at teardown
    ProcessGroup     the same for a wider scope (a module's shared server): `with ProcessGroup() as group`
    queue_config()   a queue.yaml copy with a fast relay, for QUEUE_CONFIG
    SSEStream        an SSE client on `requests` that collects frames in a background thread
    ResumingStream   an EventSource-like client: reopens with Last-Event-ID when the stream ends
    wait_until()     poll a condition with a deadline (no fixed sleeps)
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
import requests
import yaml

from devtools.services import REPO_ROOT, free_port, spawn

BIN = Path(sys.executable).parent     # the venv running the tests (.venv or /work/venv)
STREAM_PATH = "/v1/notifications/sse"

# Inherited variables that would change a service's behaviour behind the test's back.
_SCRUBBED = ("PORT", "HOST", "WEB_CONCURRENCY", "WORKER_CONNECTIONS", "ACCESS_LOG", "GRACEFUL_TIMEOUT",
             "QUEUE_CONFIG", "NOTIFICATIONS_CONFIG", "DATABASE_URL", "REDIS_URL", "REDIS_PREFIX",
             "JWT_SECRET", "JWT_PUBLIC_KEY", "JWT_ALGORITHMS", "JWT_AUDIENCE", "JWT_ISSUER", "API_KEYS",
             "CORS_ORIGINS", "PROMETHEUS_MULTIPROC_DIR", "RATE_LIMITS_ENABLED", "METRICS_TOKEN", "PROXY_HOPS")


def wait_until(predicate, timeout=10.0, interval=0.05, message="condition"):
    """Call `predicate` until it returns something truthy; return that, or fail at the deadline.
    `message` may be a callable, evaluated only on failure."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() >= deadline:
            what = message() if callable(message) else message
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
        time.sleep(interval)


def queue_config(directory, interval_seconds=1, stale_after_seconds=1):
    """A copy of the repo's queue.yaml (same queue names) whose relay acts within about two seconds (whole seconds only)."""
    data = yaml.safe_load((REPO_ROOT / "queue.yaml").read_text())
    data["relay"] = {"interval_seconds": interval_seconds, "stale_after_seconds": stale_after_seconds}
    path = Path(directory) / "queue.fast-relay.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


# ------------------------------------------------------------------------------------ processes


class ServiceProcess:
    """One child process with its output in a file (a pipe nobody reads would block it)."""

    name = "process"

    def __init__(self, args, env, log_dir):
        self.args, self.env = args, env
        fd, self.log_path = tempfile.mkstemp(prefix=f"{self.name}-", suffix=".log", dir=log_dir)
        os.close(fd)
        self.proc = None

    def start(self):
        with open(self.log_path, "ab") as log:
            self.proc = spawn(self.args, env=self.env, cwd=REPO_ROOT, stdin=subprocess.DEVNULL,
                              stdout=log, stderr=subprocess.STDOUT)
        return self

    @property
    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def output(self):
        with open(self.log_path, "rb") as log:
            return log.read().decode("utf-8", "replace")

    def stop(self, timeout=10.0):
        """SIGTERM, wait, then SIGKILL the whole process group (gunicorn's workers too)."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # stragglers; spawn() gave the child its own group
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()

    def _fail(self, why):
        raise RuntimeError(f"{self.name} {why}; its output:\n{self.output()[-4000:]}")


class WebServer(ServiceProcess):
    """`gunicorn -c gunicorn.conf.py wsgi:app` on 127.0.0.1:<free port> (HOST=... to bind elsewhere)."""

    name = "gunicorn"

    def __init__(self, env, log_dir, workers=1, keepalive=1, access_log="", tls=None, **settings):
        """tls: (certificate file, key file) to serve HTTPS; the certificate must name 127.0.0.1."""
        self.port = free_port()
        self.scheme, self.verify = ("https", tls[0]) if tls else ("http", True)
        if tls:
            settings["GUNICORN_CMD_ARGS"] = f"--certfile {tls[0]} --keyfile {tls[1]}"
        metrics_dir = tempfile.mkdtemp(prefix="metrics-", dir=log_dir)  # not one left in /tmp per run
        env = dict(env, HOST=settings.pop("HOST", "127.0.0.1"), PORT=str(self.port), WEB_CONCURRENCY=str(workers),
                   PROMETHEUS_MULTIPROC_DIR=metrics_dir,
                   ACCESS_LOG=access_log, SSE_KEEPALIVE_SECONDS=str(keepalive), GRACEFUL_TIMEOUT="2",
                   **{k: str(v) for k, v in settings.items()})
        self.workers = workers
        super().__init__([str(BIN / "gunicorn"), "-c", "gunicorn.conf.py", "wsgi:app"], env, log_dir)

    @property
    def url(self):
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def start(self, timeout=30.0):
        super().start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive:
                self._fail(f"exited with {self.proc.returncode} at start-up")
            try:
                if requests.get(self.url + "/healthz", timeout=1, verify=self.verify).status_code == 200 \
                        and len(self.worker_pids()) == self.workers:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.05)
        self.stop()
        self._fail(f"did not answer /healthz within {timeout}s")

    def worker_pids(self):
        try:
            return [child.pid for child in psutil.Process(self.proc.pid).children()]
        except psutil.NoSuchProcess:
            return []

    def health(self):
        response = requests.get(self.url + "/healthz", timeout=5, verify=self.verify)
        assert response.status_code == 200, response.text
        return response.json()

    def open_streams(self):
        """Streams open in the worker that answers (use with one worker): 0 before the first stream."""
        return self.health().get("streams", 0)

    # -- HTTP helpers -------------------------------------------------------------------------
    def get(self, path, **kwargs):
        kwargs.setdefault("timeout", 10)
        kwargs.setdefault("verify", self.verify)
        return requests.get(self.url + path, **kwargs)

    def post(self, path, **kwargs):
        kwargs.setdefault("timeout", 10)
        kwargs.setdefault("verify", self.verify)
        return requests.post(self.url + path, **kwargs)

    def delete(self, path, **kwargs):
        kwargs.setdefault("timeout", 10)
        kwargs.setdefault("verify", self.verify)
        return requests.delete(self.url + path, **kwargs)

    def stream(self, headers=None, params=None, **kwargs):
        """Open GET /v1/notifications/sse; see SSEStream."""
        return SSEStream(self.url + STREAM_PATH, headers=headers, params=params, verify=self.verify, **kwargs)


class RQWorker(ServiceProcess):
    """`python -m workers`: the RQ worker (dispatch + deliveries queues) and the relay."""

    name = "worker"

    def __init__(self, env, log_dir, queue_config=None):
        env = dict(env)
        if queue_config:
            env["QUEUE_CONFIG"] = queue_config
        super().__init__([sys.executable, "-m", "workers"], env, log_dir)

    def start(self, timeout=30.0):
        super().start()
        import redis as redis_lib
        client = redis_lib.Redis.from_url(self.env["REDIS_URL"])
        key = f"rq:worker:notif-{self.proc.pid}"
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if not self.alive:
                    self._fail(f"exited with {self.proc.returncode} at start-up")
                try:
                    if client.exists(key):
                        return self
                except redis_lib.RedisError:
                    pass
                time.sleep(0.05)
        finally:
            client.close()
        self.stop()
        self._fail(f"did not register with RQ within {timeout}s")


class ProcessGroup:
    """Processes started together and stopped together (newest first)."""

    def __init__(self, log_dir=None):
        self.log_dir = log_dir or tempfile.mkdtemp(prefix="stream-tests-")
        self.started = []

    @staticmethod
    def environment(env):
        """The test's env over a scrubbed copy of ours. Rate limits are off unless `env` turns
        them on: these processes serve stream tests that connect and trigger far faster than
        a person would (the limits have tests of their own)."""
        base = {k: v for k, v in os.environ.items() if k not in _SCRUBBED and not k.startswith("SSE_")}
        base.update(PYTHONUNBUFFERED="1", RATE_LIMITS_ENABLED="false")
        base.update(env)
        return base

    def start_web(self, env, **options):
        """gunicorn; options: workers, keepalive, access_log, and any SSE_* setting by name."""
        server = WebServer(self.environment(env), self.log_dir, **options)
        self.started.append(server)
        return server.start()

    def start_worker(self, env, queue_config=None):
        worker = RQWorker(self.environment(env), self.log_dir, queue_config=queue_config)
        self.started.append(worker)
        return worker.start()

    def stop_all(self):
        while self.started:
            self.started.pop().stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop_all()


@pytest.fixture
def processes(tmp_path):
    """Start real services for one test; all are stopped (SIGTERM, then SIGKILL) at its end."""
    group = ProcessGroup(str(tmp_path))
    yield group
    group.stop_all()


# ------------------------------------------------------------------------------------ SSE client


@dataclass
class Event:
    """One dispatched SSE event. `id`/`event` are the fields of this frame (None when absent)."""
    data: str
    id: str | None = None
    event: str | None = None
    raw: str = ""
    at: float = field(default_factory=time.monotonic)

    def json(self):
        return json.loads(self.data)

    @property
    def seq(self):
        return int(self.id) if self.id is not None else None


class SSEStream:
    """GET a stream with `requests` (stream=True) and parse frames in a background thread.

    `all_events` is every dispatched event; `events` only those without an `event:` field,
    which is what a browser's `EventSource.onmessage` sees (notifications, direct pushes);
    `named(name)` the others (`unread`, `reset`, ...). A non-200 answer is kept in
    `.response` and no thread starts. `close()` shuts the socket down (FIN at once).
    """

    def __init__(self, url, headers=None, params=None, connect_timeout=5.0, read_timeout=15.0, verify=True):
        self.all_events, self.comments, self.retry = [], [], None
        self.raw = bytearray()
        self.error, self.ended, self.closed = None, False, False
        self.first_chunk_at = None
        self._cond = threading.Condition()
        self.started_at = time.monotonic()
        self.response = requests.get(url, headers=headers, params=params, stream=True,
                                     timeout=(connect_timeout, read_timeout), verify=verify)
        self.status_code = self.response.status_code
        self._sock = self._find_socket()
        if self.status_code == 200 and self.response.headers.get("Content-Type", "").startswith("text/event-stream"):
            self._thread = threading.Thread(target=self._run, name="sse-client", daemon=True)
            self._thread.start()
        else:
            self._thread = None
            self.ended = True

    @property
    def ok(self):
        return self._thread is not None

    def json(self):
        return self.response.json()

    def _find_socket(self):
        try:  # http.client's response file -> SocketIO -> the socket
            return self.response.raw._fp.fp.raw._sock
        except AttributeError:
            return None

    # -- reading ------------------------------------------------------------------------------
    def _run(self):
        pending = b""
        fields = {}
        try:
            for chunk in self.response.iter_content(chunk_size=None):
                now = time.monotonic()
                with self._cond:
                    if self.first_chunk_at is None:
                        self.first_chunk_at = now
                    self.raw.extend(chunk)
                pending += chunk
                *lines, pending = pending.replace(b"\r\n", b"\n").split(b"\n")
                for line in lines:
                    fields = self._line(line.decode("utf-8"), fields, now)
                if self.closed:
                    break
        except Exception as exc:  # the socket was shut down, or a read timed out
            if not self.closed:
                self.error = exc
        finally:
            with self._cond:
                self.ended = True
                self._cond.notify_all()

    def _line(self, line, fields, now):
        if line == "":
            if "data" in fields:
                event = Event(data="\n".join(fields["data"]), id=fields.get("id"), event=fields.get("event"),
                              raw=fields.get("_raw", ""), at=now)
                with self._cond:
                    self.all_events.append(event)
                    self._cond.notify_all()
            return {}
        raw = fields.get("_raw", "") + line + "\n"
        if line.startswith(":"):
            with self._cond:
                self.comments.append((line[1:].lstrip(" "), now))
                self._cond.notify_all()
            return fields
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        fields = dict(fields, _raw=raw)
        if name == "data":
            fields["data"] = fields.get("data", []) + [value]
        elif name == "retry":
            self.retry = int(value)
        elif name in ("id", "event"):
            fields[name] = value
        return fields

    # -- waiting ------------------------------------------------------------------------------
    def wait_for(self, predicate, timeout=10.0, message="events"):
        """Wait until predicate(self) is truthy; fail with what arrived so far at the deadline."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self):
                left = deadline - time.monotonic()
                if left <= 0 or (self.ended and not predicate(self)):
                    raise AssertionError(
                        f"stream: timed out waiting for {message} (ended={self.ended}, error={self.error!r}); "
                        f"events so far: {[(e.id, e.event, e.data[:80]) for e in self.all_events]}")
                self._cond.wait(min(left, 0.2))
        return self

    @property
    def events(self):
        """The `message` events (no `event:` field) so far."""
        with self._cond:
            return [e for e in self.all_events if e.event is None]

    def named(self, name):
        with self._cond:
            return [e for e in self.all_events if e.event == name]

    def wait_events(self, count, timeout=10.0):
        """The first `count` message events, once they arrived."""
        self.wait_for(lambda s: len(s.events) >= count, timeout, f"{count} message event(s)")
        return self.events[:count]

    def wait_named(self, name, count=1, timeout=10.0):
        """The first `count` events named `name`, once they arrived."""
        self.wait_for(lambda s: len(s.named(name)) >= count, timeout, f"{count} `{name}` event(s)")
        return self.named(name)[:count]

    def wait_comments(self, text, count=1, timeout=10.0):
        self.wait_for(lambda s: sum(1 for c, _ in s.comments if c == text) >= count, timeout,
                      f"{count} `: {text}` comment(s)")
        with self._cond:
            return [at for c, at in self.comments if c == text]

    def wait_ended(self, timeout=10.0):
        self.wait_for(lambda s: s.ended, timeout, "the end of the stream")
        return self

    def snapshot(self, everything=False):
        """A copy of the message events (or of every event)."""
        with self._cond:
            return list(self.all_events) if everything else self.events

    @property
    def last_id(self):
        with self._cond:
            ids = [e.id for e in self.all_events if e.id is not None]
        return ids[-1] if ids else None

    # -- closing ------------------------------------------------------------------------------
    def close(self):
        """Disconnect like a browser tab that goes away: FIN now, no further reads."""
        if self.closed:
            return
        self.closed = True
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(5)
        self.response.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class ResumingStream:
    """What a browser's EventSource does: when the stream ends or cannot open, open it again
    with `Last-Event-ID` = the last `id:` received. `events` holds the message events of every
    connection, in arrival order; `connections` counts the streams that opened (200)."""

    def __init__(self, server, headers=None, params=None, retry_delay=0.2):
        self.server, self.headers, self.params = server, dict(headers or {}), params
        self.retry_delay = retry_delay
        self.events, self.connections, self.refused = [], 0, []
        self.current = None
        self.last_id = None
        self._open()

    def _open(self):
        headers = dict(self.headers)
        if self.last_id is not None:
            headers["Last-Event-ID"] = self.last_id
        try:
            stream = self.server.stream(headers=headers, params=self.params)
        except requests.RequestException as exc:
            self.refused.append(repr(exc))
            return
        if stream.ok:
            self.current, self.consumed = stream, 0
            self.connections += 1
        else:
            self.refused.append(stream.status_code)
            stream.close()

    def _pump(self):
        """Move the current stream's new events into `events`; reopen a stream that ended."""
        stream = self.current
        if stream is not None:
            fresh = stream.snapshot(everything=True)[self.consumed:]
            self.consumed += len(fresh)
            for event in fresh:
                if event.event is None:
                    self.events.append(event)
                if event.id is not None:
                    self.last_id = event.id
            if stream.ended and len(stream.snapshot(everything=True)) == self.consumed:
                stream.close()
                self.current = None
        if self.current is None:
            self._open()
            if self.current is None:
                time.sleep(self.retry_delay)

    def wait_events(self, count, timeout=20.0):
        deadline = time.monotonic() + timeout
        while len(self.events) < count:
            if time.monotonic() >= deadline:
                raise AssertionError(f"resuming stream: {len(self.events)} of {count} events after {timeout}s "
                                     f"({self.connections} connection(s), refused: {self.refused[-5:]}); "
                                     f"ids: {[e.id for e in self.events]}")
            self._pump()
            time.sleep(0.02)
        return list(self.events[:count])

    def settle(self, seconds):
        """Keep taking events in for `seconds` (to see that nothing more, e.g. a duplicate, comes)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self._pump()
            time.sleep(0.02)
        return list(self.events)

    def close(self):
        if self.current is not None:
            self.current.close()
            self.current = None
