"""The load generators: processes of their own, so the load's CPU is not the server's nor the driver's.

Streams: `Clients(count, host, port)` starts `count` processes, each an asyncio event loop holding
thousands of raw sockets, one `GET /v1/notifications/sse` per stream (`stream_request`, tokens
made up front by `tokens_for`). A client parses only the status line and then counts the frames
whose title carries the benchmark's marker `BENCH|<send time>|`; when latency is measured it
subtracts that send time (time.time(), the same clock in every process) from its receive time. The
parent drives them over a pipe (`open`, `status`, `record`, `latencies`, `reset`, `close`).

Requests on a fixed schedule: `open_loop_main` (a spawned process) sends request i at start + i / rate
whatever happened before, over keep-alive connections, and times each from its scheduled send
(bench/inbox.py).

Triggers: `python -m bench.load triggers PORT COUNT CONCURRENCY WARMUP` posts one-user triggers over
keep-alive connections, one thread and one http.client connection each, and prints one JSON line
(bench/write_path.py runs it).
"""
import array
import asyncio
import collections
import contextlib
import http.client
import itertools
import json
import re
import resource
import signal
import socket
import statistics
import struct
import sys
import threading
import time
import uuid

from bench.measure import own_cpu, raise_nofile
from testkit.api import TRIGGER_PATH, trigger_body
from testkit.identity import API_KEY, JWT_SECRET
from testkit.processes import cpu_seconds

MARK = b"BENCH|"
MARK_RX = re.compile(rb"BENCH\|(\d+\.\d+)\|")
OPEN_CONCURRENCY = 128               # connections each client process opens at once


def marked_title(sequence):
    """A title the load clients count, carrying its send time."""
    return f"BENCH|{time.time():.6f}|{sequence}"


# ============================================================ streams


class _Stream(asyncio.Protocol):
    """One SSE connection: status line, then count marked frames (and their latency)."""

    __slots__ = ("client", "request", "transport", "head", "status", "tail", "count", "closed", "retired")

    def __init__(self, client, request):
        self.client, self.request = client, request
        self.transport = None
        self.head = b""          # bytes of the response head until it is complete; None after
        self.status = None
        self.tail = b""
        self.count = 0
        self.closed = False
        self.retired = False     # given back by `refused` to be retried: its close is not a loss

    def connection_made(self, transport):
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:  # close with RST: no TIME_WAIT left behind on the client's ports
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.write(self.request)

    def data_received(self, data):
        if self.head is not None:
            data = self.head + data
            end = data.find(b"\r\n\r\n")
            if end < 0:
                self.head = data[-65536:]
                return
            self.head = None
            try:
                self.status = int(data[9:12])
            except ValueError:
                self.status = -1
            self.client.statuses[self.status] += 1
            if self.status != 200:
                self.client.bad += 1
            if self.status != 200 and len(self.client.samples) < 3:
                self.client.samples.append(data[:600].decode("latin-1"))
            data = data[end + 4:]
            if not data:
                return
        if self.tail:
            data = self.tail + data
        cut = data.rfind(b"\n\n")
        if cut < 0:
            self.tail = data if len(data) < 1 << 20 else b""
            return
        self.tail = data[cut + 2:]
        found = data.count(MARK, 0, cut)
        if found:
            self.count += found
            client = self.client
            client.shared[0] += found
            latencies = client.latencies
            if latencies is not None:
                now = time.time()
                for match in MARK_RX.finditer(data, 0, cut):
                    latencies.append(now - float(match.group(1)))

    def connection_lost(self, exc):
        if self.status in (None, 200) and not self.retired and not self.client.closing:
            self.client.bad += 1
        self.closed = True
        if self.status == 200 and not self.retired and not self.client.closing:
            self.client.lost += 1    # an established stream cut by the server


class _Client:
    def __init__(self, shared, host, port):
        self.shared, self.host, self.port = shared, host, port
        self.streams = []
        self.statuses = collections.Counter()
        self.connect_errors = collections.Counter()
        self.lost = 0
        self.closing = False
        self.latencies = None
        self.samples = []        # the first few refused responses, for the report
        self.unconnected = []    # requests whose connect() failed
        self.bad = 0             # streams refused (non-200) or closed since the last `refused`

    async def open(self, requests, concurrency=OPEN_CONCURRENCY):
        loop = asyncio.get_running_loop()
        gate = asyncio.Semaphore(concurrency)

        async def one(request):
            async with gate:
                try:
                    _, protocol = await loop.create_connection(lambda: _Stream(self, request), self.host, self.port)
                except OSError as exc:
                    self.connect_errors[f"{type(exc).__name__}: {exc.strerror or exc}"] += 1
                    self.unconnected.append(request)
                    return
                self.streams.append(protocol)

        await asyncio.gather(*(one(r) for r in requests))
        return {"streams": len(self.streams), "connect_errors": dict(self.connect_errors)}

    def refused(self):
        """Take back the requests that were refused (non-200), cut or never connected, to retry them."""
        keep, out = [], list(self.unconnected)
        self.unconnected = []
        for stream in self.streams:
            if stream.closed or stream.status not in (None, 200):
                out.append(stream.request)
                stream.retired = True
                if stream.transport is not None and not stream.closed:
                    stream.transport.abort()
            else:
                keep.append(stream)
        self.streams = keep
        self.bad = 0
        return out

    async def handle(self, command, *args):
        if command == "open":
            return await self.open(*args)
        if command == "status":
            counts = [s.count for s in self.streams if not s.closed and s.status in (None, 200)]
            return {"streams": len(self.streams), "open": len(counts), "lost": self.lost,
                    "failed": len(self.streams) - len(counts) + len(self.unconnected),
                    "samples": self.samples,
                    "statuses": dict(self.statuses), "connect_errors": dict(self.connect_errors),
                    "received": self.shared[0], "zero": sum(1 for c in counts if c == 0),
                    "exactly_one": sum(1 for c in counts if c == 1),
                    "min": min(counts) if counts else 0, "max": max(counts) if counts else 0,
                    "cpu": own_cpu()}
        if command == "refused":
            return self.refused()
        if command == "failed":
            return self.bad + len(self.unconnected)
        if command == "record":
            self.latencies = array.array("d") if args[0] else None
            return True
        if command == "latencies":
            out = self.latencies.tobytes() if self.latencies is not None else b""
            if self.latencies is not None:
                self.latencies = array.array("d")
            return out
        if command == "reset":
            for stream in self.streams:
                stream.count = 0
            self.shared[0] = 0
            return True
        if command == "close":
            self.closing = True
            for stream in self.streams:
                if stream.transport is not None:
                    stream.transport.abort()
            await asyncio.sleep(0.05)
            self.streams = []
            self.bad = 0
            self.closing = False
            return True
        raise ValueError(f"unknown command {command!r}")


def client_main(conn, shared, host, port):
    """Entry point of a load-client process: serve the parent's commands until it goes away."""
    raise_nofile()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    client = _Client(shared, host, port)

    def commands():
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                message = ("exit",)
            if message[0] == "exit":
                loop.call_soon_threadsafe(loop.stop)
                return
            future = asyncio.run_coroutine_threadsafe(client.handle(*message), loop)
            try:
                reply = ("ok", future.result())
            except Exception as exc:  # reported to the parent, which raises it
                reply = ("error", f"{type(exc).__name__}: {exc}")
            try:
                conn.send(reply)
            except OSError:
                loop.call_soon_threadsafe(loop.stop)
                return

    threading.Thread(target=commands, daemon=True).start()
    loop.run_forever()


class Clients:
    """The parent's handle on the load-client processes."""

    def __init__(self, count, host, port):
        import multiprocessing
        ctx = multiprocessing.get_context("spawn")
        self.procs, self.conns, self.shared = [], [], []
        for _ in range(count):
            parent, child = ctx.Pipe()
            shared = ctx.RawArray("q", 1)
            proc = ctx.Process(target=client_main, args=(child, shared, host, port), daemon=True)
            proc.start()
            child.close()
            self.procs.append(proc)
            self.conns.append(parent)
            self.shared.append(shared)
        self.cpu_start = self.cpu()

    def _replies(self):
        out = []
        for conn in self.conns:
            status, value = conn.recv()
            if status != "ok":
                raise RuntimeError(f"load client: {value}")
            out.append(value)
        return out

    def call(self, *message):
        for conn in self.conns:
            conn.send(message)
        return self._replies()

    def call_each(self, messages):
        for conn, message in zip(self.conns, messages):
            conn.send(message)
        return self._replies()

    def received(self):
        return sum(shared[0] for shared in self.shared)

    def status(self):
        parts = self.call("status")
        total = collections.Counter()
        statuses, errors = collections.Counter(), collections.Counter()
        for part in parts:
            for key in ("streams", "open", "lost", "failed", "received", "zero", "exactly_one"):
                total[key] += part[key]
            statuses.update(part["statuses"])
            errors.update(part["connect_errors"])
        out = dict(total)
        out["min"] = min(p["min"] for p in parts)
        out["max"] = max(p["max"] for p in parts)
        out["statuses"], out["connect_errors"] = dict(statuses), dict(errors)
        out["samples"] = [sample for part in parts for sample in part["samples"]][:3]
        return out

    def latencies(self):
        """(all latencies, per-client lists in arrival order)."""
        values, parts = [], []
        for raw in self.call("latencies"):
            chunk = array.array("d")
            chunk.frombytes(raw)
            values.extend(chunk)
            parts.append(chunk)
        return values, parts

    def cpu(self):
        return sum(cpu_seconds(p.pid) for p in self.procs)

    def stop(self):
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.send(("exit",))
        for proc in self.procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join()


def stream_request(path, token):
    return (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
            f"Accept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n").encode()


def tokens_for(user_ids, hours=6):
    import jwt
    exp = int(time.time()) + hours * 3600
    return [jwt.encode({"sub": str(uid), "exp": exp}, JWT_SECRET, algorithm="HS256") for uid in user_ids]


# ============================================================ requests on a fixed schedule (open loop)


def get_request(path, token):
    """One GET with a bearer token, as raw bytes."""
    return (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
            f"Accept: application/json\r\n\r\n").encode()


async def _exchange(reader, writer, request):
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length, close = 0, False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection" and value.strip().lower() == b"close":
            close = True
    body = await reader.readexactly(length)
    return status, body, close


async def _open_loop(pipe, port, requests, rate, warmup, max_connections):
    """Send request i at start + i/rate whatever happened before (open loop); a request's latency
    runs from that scheduled time to its last response byte, so waiting for a free connection
    or a stalled server counts."""
    loop = asyncio.get_running_loop()
    idle, slots = [], asyncio.Semaphore(max_connections)
    stats = {"opened": 0, "reconnects": 0, "late": 0, "errors": collections.Counter()}
    results = [None] * len(requests)

    async def one(index, due, request):
        status = None
        async with slots:
            for attempt in (0, 1):
                pair = idle.pop() if idle and not attempt else None   # a retry: a new connection
                fresh = pair is None
                try:
                    if fresh:
                        pair = await asyncio.open_connection("127.0.0.1", port)
                        stats["opened"] += 1
                    status, body, close = await asyncio.wait_for(_exchange(*pair, request), 10)
                except (asyncio.IncompleteReadError, ConnectionError, OSError) as exc:
                    if pair is not None:
                        pair[1].close()
                    if fresh or attempt:         # a kept-alive connection the server closed: once more
                        stats["errors"][type(exc).__name__] += 1
                        break
                    stats["reconnects"] += 1
                    continue
                except asyncio.TimeoutError:
                    pair[1].close()
                    stats["errors"]["timeout (10 s)"] += 1
                    break
                if status == 200 and b'"total"' not in body:
                    status = -1
                if close:
                    pair[1].close()
                else:
                    idle.append(pair)
                break
        results[index] = (loop.time() - due, status)

    start = loop.time() + 0.2
    tasks, cpu0, first_due = [], None, None
    for index, request in enumerate(requests):
        due = start + index / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        if index == warmup:
            pipe.send(("measure",))
            cpu0, first_due = own_cpu(), due
        if index >= warmup and loop.time() - due > 0.005:
            stats["late"] += 1
        tasks.append(asyncio.create_task(one(index, due, request)))
    last_due = start + (len(requests) - 1) / rate
    await asyncio.gather(*tasks)
    cpu = own_cpu() - cpu0
    for _, writer in idle:
        writer.close()
    return {"results": results[warmup:], "cpu": cpu, "send_seconds": last_due - first_due,
            "opened": stats["opened"], "reconnects": stats["reconnects"], "late": stats["late"],
            "errors": dict(stats["errors"])}


def open_loop_main(pipe, port, requests, rate, warmup, max_connections):
    """Entry point of an open-loop load process (spawned; bench/inbox.py): run the schedule, send the
    results back over `pipe`."""
    raise_nofile()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        result = asyncio.run(_open_loop(pipe, port, requests, rate, warmup, max_connections))
        pipe.send(("done", result))
    except Exception as exc:   # reported to the parent, which raises it
        pipe.send(("error", f"{type(exc).__name__}: {exc}"))


# ============================================================ triggers

CUSTOMER = "550e8400-e29b-41d4-a716-446655440000"


def write_path_trigger(user_ids, type="chats", event="message_received"):
    """The write path's trigger: the SPEC example's fields (its chat event also goes out by email)."""
    return trigger_body(user_ids, type=type, event=event, title="Benchmark",
                        content="Write path benchmark notification", customer_id=CUSTOMER, rec_type="chats",
                        rec_id="789e4567-e89b-12d3-a456-426614174000")


def trigger_load(port, count, concurrency, warmup):
    """POST `warmup` + `count` one-user triggers over `concurrency` keep-alive connections.

    Prints one JSON line: timed requests, elapsed, statuses, latency percentiles, own CPU.
    """
    bodies = [json.dumps(write_path_trigger([uuid.uuid4()])).encode() for _ in range(warmup + count)]
    headers = {"Content-Type": "application/json", "X-API-Key": API_KEY}
    counter = itertools.count()
    latencies, statuses = [], {}
    lock = threading.Lock()
    start_gate = threading.Barrier(concurrency + 1)
    timed_start = [None]

    def worker():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        own_lat, own_status = [], {}
        start_gate.wait()
        while True:
            i = next(counter)
            if i >= warmup + count:
                break
            if i == warmup:
                timed_start[0] = time.perf_counter()
            t0 = time.perf_counter()
            try:
                conn.request("POST", TRIGGER_PATH, body=bodies[i], headers=headers)
                response = conn.getresponse()
                response.read()
                status = response.status
                if response.getheader("Connection", "").lower() == "close":
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            except (OSError, http.client.HTTPException) as exc:
                status = type(exc).__name__
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            if i >= warmup:
                own_lat.append(time.perf_counter() - t0)
            own_status[status] = own_status.get(status, 0) + 1
        conn.close()
        with lock:
            latencies.extend(own_lat)
            for key, value in own_status.items():
                statuses[key] = statuses.get(key, 0) + value

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    start_gate.wait()
    begin = time.perf_counter()
    for thread in threads:
        thread.join()
    end = time.perf_counter()
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    timed_from = timed_start[0] or begin
    latencies.sort()

    def pct(p):
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000 if latencies else None

    print(json.dumps({
        "requests": len(latencies), "elapsed": end - timed_from, "statuses": {str(k): v for k, v in statuses.items()},
        "p50_ms": pct(0.50), "p99_ms": pct(0.99), "max_ms": latencies[-1] * 1000 if latencies else None,
        "mean_ms": statistics.fmean(latencies) * 1000 if latencies else None,
        "client_cpu": (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime),
        "client_wall": end - begin,
    }), flush=True)


def main(argv=None):
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 5 or args[0] != "triggers":
        raise SystemExit("usage: python -m bench.load triggers PORT COUNT CONCURRENCY WARMUP")
    trigger_load(*(int(a) for a in args[1:]))


if __name__ == "__main__":
    main()
