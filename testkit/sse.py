"""SSE clients for tests and scenarios: one that collects frames in a background thread, and
one that behaves like a browser's EventSource (reopens with Last-Event-ID when the stream ends).

    SSEStream        GET a stream with `requests` and parse its frames as they arrive
    ResumingStream   an EventSource-like client over a WebServer's streams
"""
from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass, field

import requests


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
