"""Stream benchmarks: streams held, memory, Redis connections, push latency, saturation.

    python bench/run.py [--quick]          # every figure, one table (also bench/results.md)
    python bench/streams.py held --streams 2000 [--peer]   # one scenario, for development

Every scenario starts its own servers and stops them at the end (also on Ctrl-C or an
error): a private redis-server (devtools.services.redis_server), a fresh database on the
PostgreSQL server of DATABASE_URL (default postgresql://postgres@127.0.0.1:5432/postgres),
migrated, then dropped; the real gunicorn.conf.py (gevent workers) for our service, or
`gunicorn -k gevent` with the same worker_connections for the peer (bench/peer_flask_sse.py,
Flask-SSE 1.0.0). Everything listens on 127.0.0.1.

The load: `--clients` (2) separate processes, each an asyncio event loop holding thousands
of raw sockets. A stream is one `GET` with `Authorization: Bearer <jwt>` (PyJWT HS256, made
up front); the client counts the frames whose title carries the benchmark's marker
`BENCH|<send time>|` and, when latency is measured, subtracts the send time (time.time(), the
same clock in every process) from its receive time. Nothing else is parsed. The parent
process drives the scenario: it pushes, publishes and reads Redis and /proc.
"""
import argparse
import array
import asyncio
import collections
import contextlib
import http.client
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, replace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

JWT_SECRET = "bench-secret-that-is-long-enough-for-hs256"
API_KEY = "bench-api-key"
PREFIX = "bench:"
CUSTOMER = "550e8400-e29b-41d4-a716-446655440000"
STREAM_PATH = "/v1/notifications/sse"
MARK = b"BENCH|"
MARK_RX = re.compile(rb"BENCH\|(\d+\.\d+)\|")
GUNICORN_CONF = "gunicorn.conf.py"  # our server's settings (the repository's)
OPEN_CONCURRENCY = 128               # connections each client process opens at once
BENCH_CLIENT_NAME = "bench-driver"   # the parent's own Redis connection, left out of the counts


@dataclass(frozen=True)
class Sizes:
    held: int = 15_000                  # streams on one worker (ours)
    held_peer: int = 9_900              # the peer: one Redis connection per stream, maxclients 10,000
    latency_streams: int = 1_000
    rate: float = 10.0                  # pushes (or triggers) per second
    latency_seconds: float = 30.0
    full_path_seconds: float = 30.0
    saturation_streams: int = 10_000
    saturation_streams_peer: int = 9_900
    saturation_seconds: float = 20.0
    window: int = 8                     # broadcasts in flight during saturation (more: more batching)
    clients: int = 2                    # load-generator processes
    rq_workers: int = 1                 # `python -m workers` processes in the full path
    step: int = 500                     # streams opened per ramp step


FULL = Sizes()
QUICK = replace(FULL, held=3_000, held_peer=3_000, latency_seconds=6.0, full_path_seconds=6.0,
                saturation_streams=2_000, saturation_streams_peer=2_000, saturation_seconds=6.0)


def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def raise_nofile():
    """Open-file soft limit up to the hard limit (inherited by every child we start)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def machine():
    model = "unknown"
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    return {"nproc": len(os.sched_getaffinity(0)), "cpu": model, "python": platform.python_version(),
            "loadavg": os.getloadavg(), "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[0]}


def cpu_seconds(pid):
    """user + system CPU seconds of one process so far (Linux /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def own_cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def trend(parts):
    """p50 (ms) of the first and of the last tenth of the deliveries, in arrival order per client:
    a backlog that grows during the run shows as last >> first."""
    first, last = [], []
    for part in parts:
        tenth = max(1, len(part) // 10)
        first.extend(part[:tenth])
        last.extend(part[-tenth:])
    if not first:
        return None, None
    return percentile(first, 0.5) * 1000, percentile(last, 0.5) * 1000


def percentile(values, p):
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


# ============================================================ the load client (its own process)


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


# ============================================================ servers


def _admin_dsn(url, dbname):
    from psycopg2.extensions import make_dsn, parse_dsn
    params = parse_dsn(url)
    params["dbname"] = dbname
    return make_dsn(**params)


class Database:
    """A fresh, migrated database on DATABASE_URL's server, dropped by `drop`."""

    def __init__(self, server_url):
        import psycopg2
        from app.migrate import migrate
        self.name = f"bench_streams_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        self.admin = psycopg2.connect(_admin_dsn(server_url, "postgres"))
        self.admin.autocommit = True
        with self.admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{self.name}"')
        self.url = _admin_dsn(server_url, self.name)
        migrate(self.url, echo=lambda *_: None)

    def drop(self):
        with self.admin.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (self.name,))
            cur.execute(f'DROP DATABASE IF EXISTS "{self.name}"')
        self.admin.close()


class Process:
    """A child in its own process group (devtools.services.spawn) with its output in a file."""

    def __init__(self, name, args, env, workdir, cwd=ROOT):
        from devtools.services import spawn
        self.name = name
        self.log_path = os.path.join(workdir, f"{name}.log")
        with open(self.log_path, "ab") as out:
            self.proc = spawn(args, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)

    def alive(self):
        return self.proc.poll() is None

    def tail(self, size=3000):
        with open(self.log_path, "rb") as handle:
            return handle.read().decode("utf-8", "replace")[-size:]

    def stop(self, timeout=10):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


class WebServer(Process):
    def __init__(self, name, args, env, workdir, port, workers, cwd=ROOT):
        super().__init__(name, args, env, workdir, cwd)
        self.port, self.workers = port, workers
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{name} exited at start-up:\n{self.tail()}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                conn.request("GET", "/healthz")
                ok = conn.getresponse().status == 200
                conn.close()
                if ok and len(self.worker_pids()) == workers:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{name} did not answer /healthz within 60 s:\n{self.tail()}")

    def worker_pids(self):
        import psutil
        try:
            return [child.pid for child in psutil.Process(self.proc.pid).children()]
        except psutil.NoSuchProcess:
            return []

    def workers_cpu(self):
        return sum(cpu_seconds(pid) for pid in self.worker_pids())

    def request(self, method, path, body=None, headers=None, timeout=60):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()


class Bench(contextlib.ExitStack):
    """One scenario's servers and clients; everything is stopped when the block ends."""

    def __init__(self, name, keep=False):
        super().__init__()
        self.name, self.keep = name, keep
        self.workdir = tempfile.mkdtemp(prefix=f"bench-streams-{name}-")
        self.callback(self._cleanup_workdir)
        self.redis_server = self.redis = self.db = None

    def _cleanup_workdir(self):
        if self.keep:
            log(f"logs kept in {self.workdir}")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def start_redis(self):
        import redis as redis_lib
        from devtools.services import redis_server
        self.redis_server = redis_server(dir=self.workdir)
        self.callback(self.redis_server.stop)
        self.redis = redis_lib.Redis.from_url(self.redis_server.url, client_name=BENCH_CLIENT_NAME,
                                              decode_responses=False)
        self.callback(self.redis.close)
        return self.redis

    def start_database(self):
        server_url = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
        self.db = Database(server_url)
        self.callback(self.db.drop)
        return self.db

    def ours_env(self, workers, worker_connections):
        env = {k: v for k, v in os.environ.items() if k not in (
            "PORT", "HOST", "WEB_CONCURRENCY", "WORKER_CONNECTIONS", "ACCESS_LOG", "QUEUE_CONFIG",
            "NOTIFICATIONS_CONFIG", "JWT_PUBLIC_KEY", "JWT_ALGORITHMS", "JWT_AUDIENCE", "JWT_ISSUER",
            "CORS_ORIGINS")}
        metrics = os.path.join(self.workdir, "metrics")
        os.makedirs(metrics, exist_ok=True)
        env.update(DATABASE_URL=self.db.url, REDIS_URL=self.redis_server.url, REDIS_PREFIX=PREFIX,
                   JWT_SECRET=JWT_SECRET, API_KEYS=API_KEY, RATE_LIMITS_ENABLED="false", DEVELOPMENT="true",
                   SSE_MAX_STREAMS_PER_USER="10", SSE_KEEPALIVE_SECONDS="15", ACCESS_LOG="",
                   GRACEFUL_TIMEOUT="2", PROMETHEUS_MULTIPROC_DIR=metrics, HOST="127.0.0.1",
                   WEB_CONCURRENCY=str(workers), WORKER_CONNECTIONS=str(worker_connections),
                   MAX_CONTENT_LENGTH=str(2 * 1024 * 1024), PYTHONUNBUFFERED="1")
        return env

    def start_ours(self, workers=1, worker_connections=19_000, conf=GUNICORN_CONF, **extra_env):
        from devtools.services import free_port
        port = free_port()
        env = dict(self.ours_env(workers, worker_connections), PORT=str(port), **extra_env)
        server = WebServer("ours", [sys.executable, "-m", "gunicorn", "-c", conf, "wsgi:app"],
                           env, self.workdir, port, workers)
        self.callback(server.stop)
        return server

    def start_rq_worker(self, index=0):
        env = self.ours_env(1, 1000)
        worker = Process(f"rq-worker-{index}", [sys.executable, "-m", "workers"], env, self.workdir)
        self.callback(worker.stop)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:   # RQ registers its workers in a set
            if not worker.alive():
                raise RuntimeError(f"RQ worker exited:\n{worker.tail()}")
            if self.redis.scard("rq:workers") > index:
                return worker
            time.sleep(0.1)
        raise RuntimeError(f"RQ worker did not register within 30 s:\n{worker.tail()}")

    def start_peer(self, workers=1, worker_connections=19_000):
        from devtools.services import free_port
        port = free_port()
        env = {k: v for k, v in os.environ.items() if k not in ("PORT", "WEB_CONCURRENCY")}
        env.update(REDIS_URL=self.redis_server.url, PYTHONUNBUFFERED="1")
        server = WebServer("peer", [sys.executable, "-m", "gunicorn", "-k", "gevent", "-w", str(workers),
                                    "--worker-connections", str(worker_connections), "--backlog", "4096",
                                    "--graceful-timeout", "2", "-b", f"127.0.0.1:{port}",
                                    "peer_flask_sse:app"],
                           # from bench/: the repository's gunicorn.conf.py (loaded from the working
                           # directory) is our service's, not the peer's
                           env, self.workdir, port, workers, cwd=os.path.join(ROOT, "bench"))
        self.callback(server.stop)
        return server

    def start_clients(self, count, port):
        clients = Clients(count, "127.0.0.1", port)
        self.callback(clients.stop)
        return clients

    # -- Redis measures -----------------------------------------------------------------------
    def pubsub_channels(self):
        return int(self.redis.info("stats")["pubsub_channels"])

    def server_redis_clients(self):
        """INFO clients connected_clients, less this benchmark's own connection(s)."""
        connected = int(self.redis.info("clients")["connected_clients"])
        ours = self.redis.client_list()
        own = sum(1 for c in ours if c.get("name") == BENCH_CLIENT_NAME)
        return connected - own


# ============================================================ what both servers share


class Target:
    """How to reach streams and publish on one server (ours or the peer)."""

    def __init__(self, kind):
        self.kind = kind

    def paths_and_tokens(self, user_ids):
        if self.kind == "ours":
            return [stream_request(STREAM_PATH, t) for t in tokens_for(user_ids)]
        token = tokens_for([uuid.uuid4()])[0]  # the peer ignores it; sent so requests are alike
        return [stream_request(f"/stream?channel={uid}", token) for uid in user_ids]

    def channel(self, uid):
        return f"{PREFIX}user:{uid}" if self.kind == "ours" else str(uid)

    def message(self, payload_json):
        """What a publisher puts on a user's channel, in each server's own format."""
        if self.kind == "ours":   # sealed as the service seals it (development SECRET_KEY: DEVELOPMENT=true)
            from app.config import DEV_SECRET_KEY
            from app.bus.codec import direct_message, message_key, seal
            return seal(message_key(DEV_SECRET_KEY), "*", direct_message(CUSTOMER, payload_json))
        return json.dumps({"data": json.loads(payload_json)}, separators=(",", ":"))


def notification_json(title):
    """A notification as the direct push builds it (SPEC's shape), ~400 bytes."""
    return json.dumps({"id": str(uuid.uuid4()), "customer_id": CUSTOMER, "type": "chat",
                       "event": "message_received", "title": title, "content": "This is a benchmark notification",
                       "link_url": "/chat/room/456", "link_text": "View Message", "rec_type": "chats",
                       "rec_id": "789e4567-e89b-12d3-a456-426614174000", "read": False, "read_at": None,
                       "created_at": "2024-01-15T10:30:00.000Z"}, separators=(",", ":"))


def marked_title(sequence):
    return f"BENCH|{time.time():.6f}|{sequence}"


_PUBLISH_MANY = """
for i = 1, #KEYS do
  redis.call('PUBLISH', KEYS[i], ARGV[i])
end
return #KEYS
"""


class LuaPublisher:
    """Publishes one message per channel, 1,000 PUBLISHes per script call (as app/bus/publisher.py does)."""

    def __init__(self, redis):
        self.script = redis.register_script(_PUBLISH_MANY)

    def publish(self, channels, message):
        for start in range(0, len(channels), 1000):
            chunk = channels[start:start + 1000]
            self.script(keys=chunk, args=[message] * len(chunk))


def ramp(bench, clients, requests, step, checkpoints=(), stall=30.0, progress=True, retries=5):
    """Open the streams `step` at a time; after each step wait until the server subscribed the
    new users' channels (or their requests failed). A refused stream (503, 429, cut) is opened
    again after a pause, as EventSource would, up to `retries` times.
    Returns ({checkpoint: measure()}, seconds, completed, refusals)."""
    base = bench.pubsub_channels()
    marks = {}
    count = len(clients.conns)
    refusals = 0
    started = time.monotonic()
    failed = 0
    for start in range(0, len(requests), step):
        pending = requests[start:start + step]
        target = start + len(pending)
        for attempt in range(retries + 1):
            clients.call_each([("open", pending[i::count]) for i in range(count)])
            last, last_change = -1, time.monotonic()
            while True:
                subscribed = bench.pubsub_channels() - base
                failed = sum(clients.call("failed"))
                if subscribed + failed >= target:
                    break
                if subscribed + failed != last:
                    last, last_change = subscribed + failed, time.monotonic()
                elif time.monotonic() - last_change > stall:
                    log(f"ramp stalled at {subscribed} subscribed, {failed} failed of {target}")
                    return marks, time.monotonic() - started, False, refusals
                time.sleep(0.05)
            if not failed or attempt == retries:
                break
            pending = [r for part in clients.call("refused") for r in part]
            refusals += len(pending)
            time.sleep(0.5 * (attempt + 1))
        for checkpoint, measure in checkpoints:
            if checkpoint not in marks and target >= checkpoint:
                marks[checkpoint] = measure()
        if progress and (target % 5000 == 0 or target == len(requests)):
            log(f"  {target} streams asked, {target - failed} open, {refusals} refusals retried so far")
    return marks, time.monotonic() - started, not failed, refusals


def wait_received(clients, expected, stall=5.0, limit=120.0):
    """Wait until the clients counted `expected` marked frames, or nothing arrived for `stall` s.
    Returns (received, time of the last change)."""
    last, last_change = -1, time.monotonic()
    deadline = time.monotonic() + limit
    while True:
        received = clients.received()
        now = time.monotonic()
        if received != last:
            last, last_change = received, now
        if received >= expected or now - last_change > stall or now > deadline:
            return received, last_change
        time.sleep(0.001)


# ============================================================ scenarios


def held(kind, streams, sizes, keep=False):
    """Streams held by ONE worker, each receiving one broadcast; RSS per stream; Redis connections."""
    with Bench(f"held-{kind}", keep) as bench:
        bench.start_redis()
        if kind == "ours":
            bench.start_database()
            server = bench.start_ours(workers=1)
        else:
            server = bench.start_peer(workers=1)
        target = Target(kind)
        clients = bench.start_clients(sizes.clients, server.port)
        worker = server.worker_pids()[0]

        # warm-up: one stream opened, fed and closed, so lazy imports and the hub exist before "before"
        warm_user = uuid.uuid4()
        ramp(bench, clients, target.paths_and_tokens([warm_user]), 1, progress=False)
        LuaPublisher(bench.redis).publish([target.channel(warm_user)], target.message(notification_json(marked_title(0))))
        wait_received(clients, 1, stall=3)
        clients.call("close")
        # Flask-SSE notices a closed stream only when it next writes to it: give it one write
        LuaPublisher(bench.redis).publish([target.channel(warm_user)], target.message(notification_json("bye")))
        deadline = time.monotonic() + 10
        while bench.pubsub_channels() > 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        clients.call("reset")
        time.sleep(0.5)

        rss_before = rss_kb(worker)
        redis_at = {0: bench.server_redis_clients()}
        cpu0, client_cpu0 = cpu_seconds(worker), clients.cpu()
        users = [uuid.uuid4() for _ in range(streams)]
        requests = target.paths_and_tokens(users)
        checkpoints = [(1000, bench.server_redis_clients)] if streams > 1000 else []
        log(f"{kind}: opening {streams} streams on one worker (pid {worker})")
        marks, open_seconds, complete, refusals = ramp(bench, clients, requests, sizes.step, checkpoints)
        redis_at.update(marks)
        status = clients.status()
        opened = status["open"]
        redis_at[opened] = bench.server_redis_clients()

        # one broadcast: one message on each user's channel
        clients.call("reset")
        publisher = LuaPublisher(bench.redis)
        channels = [target.channel(u) for u in users]
        publisher.publish(channels, target.message(notification_json(marked_title(1))))
        received, _ = wait_received(clients, opened, stall=10)
        time.sleep(0.5)
        status = clients.status()
        rss_after = rss_kb(worker)
        held_streams = status["exactly_one"]
        result = {
            "kind": kind, "asked": streams, "opened": opened, "received": received,
            "exactly_one": held_streams, "zero": status["zero"], "failed": status["failed"],
            "statuses": status["statuses"], "connect_errors": status["connect_errors"],
            "refused_samples": status["samples"], "complete": complete, "refusals_retried": refusals,
            "open_seconds": open_seconds,
            "rss_before_kb": rss_before, "rss_after_kb": rss_after,
            "rss_per_stream_kb": (rss_after - rss_before) / opened if opened else None,
            "redis_clients": redis_at, "worker_cpu": cpu_seconds(worker) - cpu0,
            "client_cpu": clients.cpu() - client_cpu0, "worker_pid": worker,
        }
        log(f"{kind} held: {result}")
        clients.call("close")
        return result


def push_latency(kind, sizes, keep=False, via="redis"):
    """1,000 users x 1 stream, `rate` pushes/s for `latency_seconds`: p50/p99 from send to receive.

    Ours pushes through POST /v1/notifications/sse (the direct push). The peer is published to
    with `via`: "redis" (default) = the bench's Lua script straight into its users' channels,
    1,000 PUBLISHes per call; "api" = its POST /publish, `sse.publish` per channel, which builds
    a new Redis client (and connection) per call: far too slow for 10 pushes/s to 1,000 users,
    so by default it is only timed once, after the measurement ("peer_api_push_seconds").
    """
    with Bench(f"latency-{kind}", keep) as bench:
        bench.start_redis()
        if kind == "ours":
            bench.start_database()
            server = bench.start_ours(workers=1)
        else:
            server = bench.start_peer(workers=1)
        target = Target(kind)
        clients = bench.start_clients(sizes.clients, server.port)
        users = [uuid.uuid4() for _ in range(sizes.latency_streams)]
        _, _, complete, refusals = ramp(bench, clients, target.paths_and_tokens(users), sizes.step, progress=False)
        status = clients.status()
        if status["open"] != len(users):
            raise RuntimeError(f"{kind}: only {status['open']} of {len(users)} streams opened: {status}")
        str_users = [str(u) for u in users]
        channels = [target.channel(u) for u in users]
        publisher = LuaPublisher(bench.redis)
        push_times = []

        def push(sequence):
            title = marked_title(sequence)
            started = time.perf_counter()
            if kind == "ours":
                body = json.dumps({"type": "chats", "event": "message_received", "title": title,
                                   "content": "This is a benchmark notification", "customer_id": CUSTOMER,
                                   "user_ids": str_users, "rec_type": "chats",
                                   "rec_id": "789e4567-e89b-12d3-a456-426614174000"})
                conn.request("POST", "/v1/notifications/sse", body=body,
                             headers={"Content-Type": "application/json", "X-API-Key": API_KEY})
                response = conn.getresponse()
                response.read()
                if response.status != 200:
                    raise RuntimeError(f"direct push answered {response.status}")
            elif via == "api":
                body = json.dumps({"channels": str_users, "data": json.loads(notification_json(title))})
                conn.request("POST", "/publish", body=body, headers={"Content-Type": "application/json"})
                response = conn.getresponse()
                response.read()
                if response.status != 200:
                    raise RuntimeError(f"peer /publish answered {response.status}")
            else:
                publisher.publish(channels, target.message(notification_json(title)))
            push_times.append(time.perf_counter() - started)

        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        for i in range(5):            # warm-up, not measured
            push(i)
        wait_received(clients, 5 * len(users), stall=5)
        clients.call("reset")
        clients.call("record", True)
        push_times.clear()
        cpu0, client_cpu0, own0 = server.workers_cpu(), clients.cpu(), own_cpu()
        pushes = int(sizes.latency_seconds * sizes.rate)
        interval = 1.0 / sizes.rate
        log(f"{kind}: {pushes} pushes to {len(users)} streams at {sizes.rate}/s "
            f"({'direct push' if kind == 'ours' else via}); worker pid {server.worker_pids()[0]}")
        started = time.monotonic()
        late = 0
        for i in range(pushes):
            due = started + i * interval
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif delay < -interval:
                late += 1
            push(100 + i)
        push_seconds = time.monotonic() - started
        expected = pushes * len(users)
        received, _ = wait_received(clients, expected, stall=5)
        latencies, parts = clients.latencies()
        api_seconds = None
        if kind == "peer" and via == "redis":   # one push through the peer's own API, timed
            started = time.perf_counter()
            body = json.dumps({"channels": str_users, "data": json.loads(notification_json("api"))})
            conn.request("POST", "/publish", body=body, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            api_seconds = time.perf_counter() - started if response.status == 200 else None
        conn.close()
        result = {
            "peer_api_push_seconds": api_seconds,
            "p50_first_tenth_ms": trend(parts)[0], "p50_last_tenth_ms": trend(parts)[1],
            "kind": kind, "via": via if kind == "peer" else "api", "streams": len(users), "pushes": pushes,
            "achieved_rate": pushes / push_seconds, "late_pushes": late,
            "expected": expected, "received": received, "lost": expected - received,
            "p50_ms": percentile(latencies, 0.50) * 1000 if latencies else None,
            "p99_ms": percentile(latencies, 0.99) * 1000 if latencies else None,
            "max_ms": max(latencies) * 1000 if latencies else None,
            "push_request_p50_ms": percentile(push_times, 0.5) * 1000 if push_times else None,
            "push_request_p99_ms": percentile(push_times, 0.99) * 1000 if push_times else None,
            "worker_cpu": server.workers_cpu() - cpu0, "client_cpu": clients.cpu() - client_cpu0,
            "driver_cpu": own_cpu() - own0, "complete": complete,
        }
        log(f"{kind} latency: {result}")
        clients.call("close")
        return result


def full_path(sizes, keep=False):
    """trigger -> RQ worker (`python -m workers`) -> stored -> stream, 1,000 users, `rate` triggers/s."""
    with Bench("full-path", keep) as bench:
        bench.start_redis()
        bench.start_database()
        server = bench.start_ours(workers=1)
        rq_workers = [bench.start_rq_worker(i) for i in range(sizes.rq_workers)]
        target = Target("ours")
        clients = bench.start_clients(sizes.clients, server.port)
        users = [uuid.uuid4() for _ in range(sizes.latency_streams)]
        ramp(bench, clients, target.paths_and_tokens(users), sizes.step, progress=False)
        status = clients.status()
        if status["open"] != len(users):
            raise RuntimeError(f"only {status['open']} of {len(users)} streams opened: {status}")
        str_users = [str(u) for u in users]
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        accept_times = []

        def trigger(sequence):
            # task/task_due: in-app only, so the worker's time is the stream path, not email jobs
            body = json.dumps({"type": "task", "event": "task_due", "title": marked_title(sequence),
                               "content": "This is a benchmark notification", "customer_id": CUSTOMER,
                               "user_ids": str_users, "rec_type": "tasks",
                               "rec_id": "789e4567-e89b-12d3-a456-426614174000"})
            started = time.perf_counter()
            conn.request("POST", "/v1/notifications/trigger", body=body,
                         headers={"Content-Type": "application/json", "X-API-Key": API_KEY})
            response = conn.getresponse()
            response.read()
            if response.status != 202:
                raise RuntimeError(f"trigger answered {response.status}")
            accept_times.append(time.perf_counter() - started)

        for i in range(3):
            trigger(i)
        wait_received(clients, 3 * len(users), stall=10)
        clients.call("reset")
        clients.call("record", True)
        accept_times.clear()
        cpu0, client_cpu0 = server.workers_cpu(), clients.cpu()
        rq_cpu0 = sum(cpu_seconds(w.proc.pid) for w in rq_workers)
        count = int(sizes.full_path_seconds * sizes.rate)
        interval = 1.0 / sizes.rate
        log(f"full path: {count} triggers to {len(users)} users at {sizes.rate}/s; web worker pid "
            f"{server.worker_pids()[0]}, RQ worker pid(s) {[w.proc.pid for w in rq_workers]}")
        started = time.monotonic()
        for i in range(count):
            delay = started + i * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            trigger(100 + i)
        seconds = time.monotonic() - started
        expected = count * len(users)
        received, last_change = wait_received(clients, expected, stall=10, limit=180)
        still_arriving = received < expected and time.monotonic() - last_change < 10
        latencies, parts = clients.latencies()
        conn.close()
        result = {
            "p50_first_tenth_ms": trend(parts)[0], "p50_last_tenth_ms": trend(parts)[1],
            "streams": len(users), "rq_workers": sizes.rq_workers, "triggers": count, "achieved_rate": count / seconds,
            "expected": expected, "received": received, "lost": expected - received,
            "still_arriving_after_180s": still_arriving,
            "p50_ms": percentile(latencies, 0.50) * 1000 if latencies else None,
            "p99_ms": percentile(latencies, 0.99) * 1000 if latencies else None,
            "max_ms": max(latencies) * 1000 if latencies else None,
            "accept_p50_ms": percentile(accept_times, 0.5) * 1000 if accept_times else None,
            "web_cpu": server.workers_cpu() - cpu0, "rq_cpu": sum(cpu_seconds(w.proc.pid) for w in rq_workers) - rq_cpu0,
            "client_cpu": clients.cpu() - client_cpu0,
        }
        log(f"full path: {result}")
        clients.call("close")
        return result


def saturation(kind, streams, sizes, keep=False):
    """Deliveries/s to `streams` streams on TWO workers, published as fast as they are absorbed.

    The driver publishes broadcasts (one message on every user's channel, 1,000 PUBLISHes per
    Lua call, each server's own message format) while fewer than `window` broadcasts are
    undelivered, for `saturation_seconds`; then it waits for the rest. Lost = expected - received.
    """
    with Bench(f"saturation-{kind}", keep) as bench:
        bench.start_redis()
        if kind == "ours":
            bench.start_database()
            server = bench.start_ours(workers=2)
        else:
            server = bench.start_peer(workers=2)
        target = Target(kind)
        clients = bench.start_clients(sizes.clients, server.port)
        users = [uuid.uuid4() for _ in range(streams)]
        log(f"{kind}: opening {streams} streams on two workers")
        _, _, complete, refusals = ramp(bench, clients, target.paths_and_tokens(users), sizes.step, progress=False)
        opened = clients.status()["open"]
        if opened != streams:
            raise RuntimeError(f"{kind}: only {opened} of {streams} streams opened")
        import psutil
        per_worker = [psutil.Process(pid).num_fds() for pid in server.worker_pids()]
        channels = [target.channel(u) for u in users]
        publisher = LuaPublisher(bench.redis)

        def broadcast(sequence):
            publisher.publish(channels, target.message(notification_json(marked_title(sequence))))

        broadcast(0)                       # warm-up
        wait_received(clients, streams, stall=5)
        clients.call("reset")
        cpu0, client_cpu0, own0 = server.workers_cpu(), clients.cpu(), own_cpu()
        sent = 0
        log(f"{kind}: saturating for {sizes.saturation_seconds} s (window {sizes.window} broadcasts); "
            f"worker pids {server.worker_pids()}")
        started = time.monotonic()
        end = started + sizes.saturation_seconds
        while time.monotonic() < end:
            if sent - clients.received() / streams < sizes.window:
                sent += 1
                broadcast(sent)
            else:
                time.sleep(0.0005)
        expected = sent * streams
        received, last = wait_received(clients, expected, stall=5)
        seconds = last - started
        status = clients.status()
        result = {
            "kind": kind, "streams": streams, "broadcasts": sent, "expected": expected, "received": received,
            "lost": expected - received, "seconds": seconds, "rate": received / seconds if seconds > 0 else 0,
            "worker_cpu": server.workers_cpu() - cpu0, "client_cpu": clients.cpu() - client_cpu0,
            "driver_cpu": own_cpu() - own0, "fds_per_worker": per_worker,
            "streams_cut": status["lost"], "complete": complete,
        }
        log(f"{kind} saturation: {result}")
        clients.call("close")
        return result


def memory(streams, sizes, keep=False):
    """Where a held stream's memory goes: tracemalloc in the worker (bench/gunicorn_tracemalloc.py),
    snapshots before and after opening `streams` streams (each fed one broadcast), the difference
    per stream by source line. Python allocations only: greenlet stack copies are included (they
    are PyMem blocks), libev watchers and malloc overhead are not. Not part of bench/run.py."""
    import tracemalloc
    with Bench("memory", keep) as bench:
        bench.start_redis()
        bench.start_database()
        directory = os.path.join(bench.workdir, "tracemalloc")
        os.makedirs(directory)
        server = bench.start_ours(workers=1, conf=os.path.join(ROOT, "bench", "gunicorn_tracemalloc.py"),
                                  BENCH_TRACEMALLOC_DIR=directory)
        target = Target("ours")
        clients = bench.start_clients(sizes.clients, server.port)
        worker = server.worker_pids()[0]

        def snapshot(index):
            done = os.path.join(directory, "done")
            with contextlib.suppress(FileNotFoundError):
                os.unlink(done)
            open(os.path.join(directory, "request"), "w").close()
            deadline = time.monotonic() + 60
            while not os.path.exists(done):
                if time.monotonic() > deadline:
                    raise RuntimeError("the worker wrote no tracemalloc snapshot")
                time.sleep(0.1)
            return tracemalloc.Snapshot.load(os.path.join(directory, f"snapshot-{index}"))

        warm = uuid.uuid4()
        ramp(bench, clients, target.paths_and_tokens([warm]), 1, progress=False)
        clients.call("close")
        time.sleep(1)
        rss0, before = rss_kb(worker), snapshot(0)
        users = [uuid.uuid4() for _ in range(streams)]
        ramp(bench, clients, target.paths_and_tokens(users), sizes.step, progress=False)
        opened = clients.status()["open"]
        LuaPublisher(bench.redis).publish([target.channel(u) for u in users],
                                          target.message(notification_json(marked_title(1))))
        wait_received(clients, opened)
        time.sleep(1)
        rss1, after = rss_kb(worker), snapshot(1)
        diff = after.compare_to(before, "lineno")
        total = sum(d.size_diff for d in diff)
        print(f"{opened} streams; tracemalloc: {total / opened / 1024:.1f} KB per stream of Python allocations; "
              f"RSS (inflated by tracemalloc's own bookkeeping) {(rss1 - rss0) / opened:.1f} KB per stream")
        print(f"{'bytes/stream':>12} {'blocks/stream':>13}  where")
        for d in diff[:30]:
            print(f"{d.size_diff / opened:12.0f} {d.count_diff / opened:13.2f}  {d.traceback}")
        clients.call("close")
        return {"streams": opened, "python_kb_per_stream": total / opened / 1024}


# ============================================================ one scenario from the command line


def main():
    parser = argparse.ArgumentParser(description="One stream scenario (bench/run.py runs them all).")
    parser.add_argument("scenario", choices=["held", "latency", "full-path", "saturation", "memory"])
    parser.add_argument("--peer", action="store_true", help="run it against Flask-SSE instead")
    parser.add_argument("--via", choices=["api", "redis"], default="redis", help="peer latency: how to publish")
    parser.add_argument("--streams", type=int, help="streams (held, saturation)")
    parser.add_argument("--seconds", type=float, help="duration (latency, full-path, saturation)")
    parser.add_argument("--rq-workers", type=int, default=1, help="full-path: RQ worker processes")
    parser.add_argument("--window", type=int, default=FULL.window, help="saturation: broadcasts in flight")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the logs")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # unwind: stop servers, drop the database
    raise_nofile()
    sizes = QUICK if args.quick else FULL
    if args.seconds:
        sizes = replace(sizes, latency_seconds=args.seconds, full_path_seconds=args.seconds,
                        saturation_seconds=args.seconds)
    sizes = replace(sizes, rq_workers=args.rq_workers, window=args.window)
    kind = "peer" if args.peer else "ours"
    if args.scenario == "held":
        result = held(kind, args.streams or (sizes.held_peer if args.peer else sizes.held), sizes, args.keep)
    elif args.scenario == "latency":
        result = push_latency(kind, sizes, args.keep, via=args.via)
    elif args.scenario == "memory":
        result = memory(args.streams or 3000, sizes, args.keep)
    elif args.scenario == "full-path":
        result = full_path(sizes, args.keep)
    else:
        result = saturation(kind, args.streams or sizes.saturation_streams, sizes, args.keep)
    print(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
