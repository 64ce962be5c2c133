"""Two web nodes behind a real HAProxy (issue 19 point 3), configured as docs/deploy.md recommends.

    rolling restart      N streams through the proxy; one node gets SIGTERM while triggers keep coming
                         and is started again: every client resumes through the other node with its
                         Last-Event-ID and ends with every notification once, in order
    forwarded-for        the client's address (HAProxy's `option forwardfor`, PROXY_HOPS=1) is what
                         the audit rows and the rate limits see, on whichever node answers

Everything is real: two `gunicorn -c gunicorn.conf.py wsgi:app` masters on their own ports (one
gevent worker each, the same DATABASE_URL, REDIS_URL and SECRET_KEY), one `python -m workers` per
node, Debian's haproxy (`apt-get install haproxy`; .ci/run installs it). Clients are separate
source addresses on the loopback (127.0.0.2, 127.0.0.3, ...), so the proxy sees different peers.

`TWO_NODES_STREAMS` (200) sets the number of streams; bench/two_nodes.py runs the same test with
1,000 and reads the `two-nodes:` line it prints.
"""
import asyncio
import csv
import http.client
import json
import os
import shutil
import socket
import threading
import time
import uuid
from pathlib import Path

import pytest

from testkit.api import assert_envelope
from testkit.config_files import queue_config, queue_yaml
from testkit.identity import make_token, SERVICE
from testkit.processes import ServiceProcess, wait_until
from testkit.sse import SSEStream

STREAMS = int(os.environ.get("TWO_NODES_STREAMS", "200"))
SECRET_KEY = "two-nodes-share-this-secret-key-0123456789abcdef"
KEEPALIVE_SECONDS = 15          # the service's default SSE_KEEPALIVE_SECONDS (the SPEC's ceiling is 20)
RETRY_MS = 1000                 # the `retry:` the clients honour (EventSource waits that long to reconnect)
STREAM = "/v1/notifications/sse"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

if shutil.which("haproxy") is None and not os.environ.get("CI"):   # in CI it runs: .ci/run installs it
    pytest.skip("the two-node tests need Debian's haproxy (apt-get install haproxy); CI installs it",
                allow_module_level=True)


# ------------------------------------------------------------------------------------ HAProxy


def haproxy_config(port, nodes, socket_path, check_inter="1s", idle_timeout="60s"):
    """The configuration docs/deploy.md recommends (keep the two in step); `nodes` are (name, port).
    `idle_timeout` is only changed to show what a timeout under the keep-alive does."""
    servers = "\n".join(f"    server {name} 127.0.0.1:{node_port} check" for name, node_port in nodes)
    return f"""\
global
    maxconn 4000
    stats socket {socket_path} mode 600 level admin

defaults
    mode http
    no option http-buffer-request
    option http-server-close
    option forwardfor
    option redispatch 1
    retries 3
    timeout connect 5s
    timeout client {idle_timeout}
    timeout server {idle_timeout}
    timeout tunnel 1h
    timeout http-request 10s
    timeout queue 10s

frontend notifications
    bind 127.0.0.1:{port}
    default_backend nodes

backend nodes
    balance leastconn
    option httpchk GET /readyz
    http-check expect status 200
    default-server inter {check_inter} fall 2 rise 2 observe layer4 error-limit 1 on-error mark-down
{servers}
"""


class HAProxy(ServiceProcess):
    """`haproxy -db -f <generated config>` in front of the nodes; its admin socket says which are UP."""

    name = "haproxy"

    def __init__(self, nodes, log_dir, **options):
        from devtools.services import free_port
        self.port = free_port()
        self.socket_path = str(Path(log_dir) / "haproxy.sock")
        self.config_path = Path(log_dir) / "haproxy.cfg"
        self.config_path.write_text(haproxy_config(self.port, nodes, self.socket_path, **options))
        super().__init__([shutil.which("haproxy"), "-db", "-f", str(self.config_path)], dict(os.environ), log_dir)

    def start(self, timeout=15.0):
        super().start()
        wait_until(lambda: self.up() == {"node_a", "node_b"} or (not self.alive and self._fail("exited")),
                   timeout, message=lambda: f"both nodes UP in haproxy ({self.states()})")
        return self

    def command(self, line):
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(self.socket_path)
            sock.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def states(self):
        try:
            text = self.command("show stat")
        except OSError:
            return {}
        rows = csv.DictReader(text.lstrip("# ").splitlines())
        return {row["svname"]: row["status"] for row in rows if row["pxname"] == "nodes"
                and row["svname"] not in ("BACKEND", "FRONTEND")}

    def up(self):
        return {name for name, status in self.states().items() if status.startswith("UP")}


class Via:
    """HTTP through the proxy from one loopback source address: a client the proxy sees as `source`."""

    def __init__(self, server, source):
        self.port, self.source = server.port, source

    def request(self, method, path, headers=None, body=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15, source_address=(self.source, 0))
        try:
            payload = None if body is None else json.dumps(body)
            conn.request(method, path, body=payload, headers=dict(headers or {}, **(
                {"Content-Type": "application/json"} if payload else {})))
            response = conn.getresponse()
            return Answer(response.status, response.read(), dict(response.getheaders()))
        finally:
            conn.close()


class Answer:
    """Enough of a `requests` response for testkit.api's assert_envelope."""

    def __init__(self, status, content, headers):
        self.status_code, self.content = status, content
        self.headers = {k.title(): v for k, v in headers.items()}
        self.text = content.decode("utf-8", "replace")

    def json(self):
        return json.loads(self.content)


def start_nodes(processes, env, keepalive=KEEPALIVE_SECONDS, **options):
    """Two nodes (a web master with one worker, and an RQ worker) sharing the run's stores."""
    env = dict(env, SECRET_KEY=SECRET_KEY, PROXY_HOPS="1")
    directory = processes.log_dir
    for _ in range(2):
        processes.start_worker(env, queue_config=queue_config(directory))
    return [processes.start_web(env, workers=1, keepalive=keepalive, SSE_RETRY_MS=RETRY_MS, **options)
            for _ in range(2)]


def start_proxy(processes, nodes, **options):
    proxy = HAProxy([("node_a", nodes[0].port), ("node_b", nodes[1].port)], processes.log_dir, **options)
    processes.started.append(proxy)
    return proxy.start()


# ------------------------------------------------------------------------------------ SSE clients


class Client:
    """One EventSource-like stream through the proxy: reconnects after `retry:` ms with
    Last-Event-ID, keeps the id of every notification (the message events) it received."""

    def __init__(self, user_id):
        self.user_id = user_id
        self.token = make_token(user_id, exp_in=3600)
        self.ids, self.last_id, self.retry = [], None, RETRY_MS / 1000
        self.opened, self.ended, self.refused = [], [], []   # monotonic times; statuses or errors
        self.connected = False
        self.waited = []          # seconds from each connect() to its 200

    def request(self, port):
        lines = [f"GET {STREAM} HTTP/1.1", f"Host: 127.0.0.1:{port}", f"Authorization: Bearer {self.token}",
                 "Accept: text/event-stream"]
        if self.last_id is not None:
            lines.append(f"Last-Event-ID: {self.last_id}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    async def run(self, port, gate):
        while True:
            attempt = time.monotonic()
            try:
                async with gate:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(self.request(port))
                status, headers = await read_head(reader)
                if status != 200:
                    self.refused.append(status)
                    writer.close()
                else:
                    self.connected = True
                    self.opened.append(time.monotonic())
                    self.waited.append(self.opened[-1] - attempt)
                    try:
                        await self.read_events(body(reader, headers))
                    finally:
                        self.connected = False
                        self.ended.append(time.monotonic())
                        writer.close()
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                self.refused.append(repr(exc))
            await asyncio.sleep(self.retry)

    async def read_events(self, chunks):
        pending, fields = b"", {}
        async for chunk in chunks:
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                fields = self.line(line.rstrip(b"\r").decode(), fields)

    def line(self, line, fields):
        if line == "":
            if "id" in fields:
                self.last_id = fields["id"]
            if "data" in fields and "event" not in fields and "id" in fields:
                self.ids.append(int(fields["id"]))
            return {}
        if line.startswith(":"):
            return fields
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "retry":
            self.retry = int(value) / 1000
        elif name in ("id", "event", "data"):
            fields = dict(fields, **{name: value})
        return fields


async def read_head(reader):
    status = int((await reader.readline()).split(b" ", 2)[1])
    headers = {}
    while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers


async def body(reader, headers):
    """The body's bytes as they arrive (chunked or delimited by the close)."""
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while size := int((await reader.readline()).split(b";")[0].strip() or b"0", 16):
            yield await reader.readexactly(size)
            await reader.readline()
        return
    while chunk := await reader.read(65536):
        yield chunk


class Crowd:
    """N clients on one asyncio loop in a background thread (at most 100 in connect() at once)."""

    def __init__(self, port, count):
        self.clients = [Client(uuid.uuid4()) for _ in range(count)]
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, args=(port,), name="sse-crowd", daemon=True)
        self.thread.start()

    def _run(self, port):
        asyncio.set_event_loop(self.loop)
        gate = asyncio.Semaphore(100)
        self.tasks = [self.loop.create_task(client.run(port, gate)) for client in self.clients]
        self.loop.run_forever()

    def connected(self):
        return sum(1 for client in self.clients if client.connected)

    def close(self):
        def cancel():
            for task in self.tasks:
                task.cancel()
            self.loop.call_soon(self.loop.stop)
        self.loop.call_soon_threadsafe(cancel)
        self.thread.join(10)


class Triggers(threading.Thread):
    """A trigger to every client's user every `interval` seconds through the proxy, until stopped.
    A trigger the proxy could not get answered (a node stopping under it) is sent again with the
    same Idempotency-Key, as a calling service would: stored once whatever happened."""

    def __init__(self, proxy, user_ids, interval=0.25):
        super().__init__(name="triggers", daemon=True)
        self.via, self.user_ids, self.interval = Via(proxy, "127.0.0.1"), [str(u) for u in user_ids], interval
        self.accepted, self.resent, self.errors = 0, 0, []
        self.halt = threading.Event()

    def run(self):
        while not self.halt.is_set():
            self.send(f"tick {self.accepted}")
            self.halt.wait(self.interval)

    def send(self, title):
        body = {"type": "tasks", "event": "task_due", "title": title, "user_ids": self.user_ids}
        headers = dict(SERVICE, **{"Idempotency-Key": str(uuid.uuid4())})
        for attempt in range(20):
            try:
                answer = self.via.request("POST", "/v1/notifications/trigger", headers, body)
                if answer.status_code == 202:
                    self.accepted += 1
                    return
                self.errors.append(answer.status_code)
            except OSError as exc:
                self.errors.append(repr(exc))
            self.resent += 1
            time.sleep(0.2)
        raise AssertionError(f"trigger {title!r} never accepted: {self.errors[-5:]}")

    def stop(self):
        self.halt.set()
        self.join(60)


def median(values):
    return values[len(values) // 2]


def stored_ids(db, user_ids):
    """Each user's stored notification seqs (the stream's ids), in order."""
    with db.cursor() as cur:
        cur.execute("SELECT user_id::text, seq FROM notifications WHERE user_id = ANY(%s::uuid[]) ORDER BY seq",
                    ([str(u) for u in user_ids],))
        result = {str(u): [] for u in user_ids}
        for user_id, seq in cur.fetchall():
            result[user_id].append(seq)
    return result


# ------------------------------------------------------------------------------------ rolling restart


def test_a_rolling_restart_behind_haproxy_loses_and_duplicates_nothing(processes, clean, db):
    node_a, node_b = start_nodes(processes, clean)
    proxy = start_proxy(processes, [node_a, node_b])
    crowd = Crowd(proxy.port, STREAMS)
    triggers = Triggers(proxy, [c.user_id for c in crowd.clients])
    try:
        wait_until(lambda: crowd.connected() == STREAMS, 120, message=lambda: f"{crowd.connected()} streams open")
        on_a = node_a.open_streams()
        assert 0 < on_a < STREAMS, f"leastconn put {on_a} of {STREAMS} streams on node A"
        triggers.start()
        wait_until(lambda: triggers.accepted >= 5, 30, message="the first triggers")

        stopped_at = time.monotonic()
        node_a.stop()                                     # SIGTERM, graceful; its streams are closed
        wait_until(lambda: "node_a" not in proxy.up(), 10, message="haproxy to mark node A down")
        wait_until(lambda: crowd.connected() == STREAMS, 60,
                   message=lambda: f"{crowd.connected()} of {STREAMS} streams open again")
        cut = {c: min(t for t in c.ended if t >= stopped_at) for c in crowd.clients
               if any(t >= stopped_at for t in c.ended)}
        resumed = sorted(min(t for t in c.opened if t > end) - stopped_at for c, end in cut.items())
        ends = sorted(end - stopped_at for end in cut.values())
        waits = sorted(c.waited[-1] for c in cut)
        opens_each = max(sum(1 for t in c.opened if t > stopped_at) for c in cut)
        assert len(cut) >= on_a, f"{on_a} streams were on node A, {len(cut)} were cut"
        wait_until(lambda: triggers.accepted >= 25, 60, message="triggers while node A is away")

        node_a.start()                                    # the same port: the proxy's health check finds it
        wait_until(lambda: proxy.up() == {"node_a", "node_b"}, 30, message="haproxy to mark node A up")
        back_at = triggers.accepted
        wait_until(lambda: triggers.accepted >= back_at + 5, 30, message="triggers after node A is back")
        newcomers = Crowd(proxy.port, 4)                  # leastconn sends new streams to the emptier node
        wait_until(lambda: newcomers.connected() == 4, 30, message="new streams after the restart")
        assert node_a.open_streams() >= 1
        newcomers.close()
        triggers.stop()

        total = triggers.accepted
        user_ids = [c.user_id for c in crowd.clients]
        wait_until(lambda: all(len(ids) == total for ids in stored_ids(db, user_ids).values()), 120,
                   message="every trigger stored for every user")
        expected = stored_ids(db, user_ids)
        wait_until(lambda: all(len(c.ids) >= total for c in crowd.clients), 60,
                   message=lambda: f"{sum(len(c.ids) < total for c in crowd.clients)} clients still short")
        time.sleep(1)                                     # a duplicate sent late would show now
        lost = sum(len(set(expected[str(c.user_id)]) - set(c.ids)) for c in crowd.clients)
        duplicated = sum(len(c.ids) - len(set(c.ids)) for c in crowd.clients)
        figures = dict(streams=STREAMS, on_node_a=on_a, cut=len(cut), triggers=total,
                       notifications=total * STREAMS, lost=lost, duplicated=duplicated,
                       resumed_all_s=f"{resumed[-1]:.2f}", resumed_p50_s=f"{median(resumed):.2f}",
                       cut_p50_s=f"{median(ends):.2f}", cut_all_s=f"{ends[-1]:.2f}",
                       reopen_p50_s=f"{median(waits):.2f}", reopen_max_s=f"{waits[-1]:.2f}",
                       most_opens_per_cut_client=opens_each, trigger_resends=triggers.resent,
                       refused_reconnects=sum(len(c.refused) for c in crowd.clients))
        print("\ntwo-nodes: " + " ".join(f"{k}={v}" for k, v in figures.items()))
        assert (lost, duplicated) == (0, 0)
        for client in crowd.clients:
            assert client.ids == expected[str(client.user_id)], client.user_id
    finally:
        triggers.halt.set()
        crowd.close()


# ------------------------------------------------------------------------------------ idle streams


def test_an_idle_stream_lives_through_the_proxy_only_with_timeouts_above_the_keepalive(processes, clean, tmp_path):
    """The keep-alive comment is what keeps a quiet stream open through the proxy: it passes
    unbuffered, and resets the proxy's inactivity timeouts as long as they are longer than it.
    Scaled down: a 1 s keep-alive against 4 s timeouts (the deploy: 15 s against 60 s), and
    against 0.5 s timeouts, which cut the stream."""
    nodes = start_nodes(processes, clean, keepalive=1)
    above = start_proxy(processes, nodes, idle_timeout="4s")
    headers = {"Authorization": f"Bearer {make_token(uuid.uuid4())}"}
    with SSEStream(f"http://127.0.0.1:{above.port}{STREAM}", headers=headers) as stream:
        assert stream.ok, stream.response.text
        stream.wait_comments("keep-alive", count=8, timeout=20)        # twice the timeouts, and more
        assert not stream.ended, stream.error
    below_dir = tmp_path / "below"
    below_dir.mkdir()
    below = HAProxy([("node_a", nodes[0].port), ("node_b", nodes[1].port)], str(below_dir), idle_timeout="500ms")
    processes.started.append(below)
    below.start()
    with SSEStream(f"http://127.0.0.1:{below.port}{STREAM}", headers=headers) as stream:
        assert stream.ok, stream.response.text
        stream.wait_ended(10)                                          # the proxy cut it
        assert not any(comment == "keep-alive" for comment, _ in stream.comments)


# ------------------------------------------------------------------------------------ X-Forwarded-For


def pushed_from(via, audit):
    """The audit row's (hashed) client address of one direct push sent by `via`."""
    customer_id = str(uuid.uuid4())   # names this push's audit row (which holds no user id)
    answer = via.request("POST", STREAM, SERVICE, {"type": "chat", "event": "mention", "title": "Hi",
                                                   "customer_id": customer_id, "user_ids": [str(uuid.uuid4())]})
    assert answer.status_code == 200, answer.text
    rows = audit.request("GET", "/v1/notifications/audit?action=notification.push", SERVICE).json()
    (row,) = [r for r in rows["items"] if r["change"]["customer_id"] == customer_id]
    return row["client_ip"]


def test_the_audit_rows_name_the_client_behind_haproxy(processes, clean):
    nodes = start_nodes(processes, clean)
    proxy = start_proxy(processes, nodes)
    first, second, audit = Via(proxy, "127.0.0.2"), Via(proxy, "127.0.0.3"), Via(proxy, "127.0.0.1")
    a, b = pushed_from(first, audit), pushed_from(second, audit)
    assert a != b                                          # not the proxy's one address
    assert {pushed_from(first, audit) for _ in range(3)} == {a}   # the same client on either node
    assert pushed_from(Via(nodes[0], "127.0.0.2"), audit) == a   # as if it had reached the node itself
    # what a client claims before the proxy is not believed: the proxy appends the peer it saw
    spoof = Via(proxy, "127.0.0.3")
    spoof_ip = pushed_from(ForwardedFor(spoof, "127.0.0.2"), audit)
    assert spoof_ip == b


class ForwardedFor:
    """A client that sends its own X-Forwarded-For claim."""

    def __init__(self, via, claim):
        self.via, self.claim = via, claim

    def request(self, method, path, headers=None, body=None):
        return self.via.request(method, path, dict(headers or {}, **{"X-Forwarded-For": self.claim}), body)


def test_rate_limits_count_the_client_behind_haproxy_on_every_node(processes, clean, tmp_path):
    env = dict(clean, RATE_LIMITS_ENABLED="true", QUEUE_CONFIG=queue_yaml(tmp_path, rate_limits={"user": "2/minute"}))
    nodes = start_nodes(processes, env)
    proxy = start_proxy(processes, nodes)
    first, second = Via(proxy, "127.0.0.2"), Via(proxy, "127.0.0.3")
    for _ in range(2):                                     # leastconn: either node; the bucket is in Redis
        assert_envelope(first.request("GET", "/v1/notifications"), 401, "invalid_user_id")
    assert_envelope(first.request("GET", "/v1/notifications"), 429, "rate_limited")
    assert_envelope(second.request("GET", "/v1/notifications"), 401, "invalid_user_id")
    assert_envelope(ForwardedFor(first, "127.0.0.4").request("GET", "/v1/notifications"), 429, "rate_limited")
