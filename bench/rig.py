"""A benchmark scenario's servers and what it drives them with, for ours and for the peer.

    Bench        one scenario's services (a private redis-server, a database of its own on
                 DATABASE_URL's server, our gunicorn or the peer's, RQ workers, load clients),
                 all stopped when its `with` block ends, also on Ctrl-C, SIGTERM or an error
    Target       how to open a stream on, and publish to, ours or the peer (Flask-SSE 1.0.0)
    LuaPublisher one message per channel, 1,000 PUBLISHes per script call, as app/bus/publisher.py does
    ramp         open streams step by step until the server subscribed their channels
    Sizes        FULL and QUICK sizes of the stream scenarios
    shipped_env  a service environment with the repository's defaults (rate limits on)

Processes are testkit's (the tests' own harness): our service is the real
`gunicorn -c gunicorn.conf.py wsgi:app`, the worker `python -m workers`.
"""
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, replace

import redis as redis_lib

from bench.load import CUSTOMER, Clients, stream_request, tokens_for
from bench.measure import log
from devtools.services import REPO_ROOT, redis_server
from testkit.api import trigger_body
from testkit.database import Database, service_env
from testkit.identity import SERVICE
from testkit.processes import ProcessGroup, WebServer, gunicorn_command

PREFIX = "bench:"
STREAM_PATH = "/v1/notifications/sse"
BENCH_CLIENT_NAME = "bench-driver"   # the parent's own Redis connection, left out of the counts
SERVER_URL = "postgresql://postgres@127.0.0.1:5432/postgres"   # when DATABASE_URL is unset


TEST_ONLY = ("SSE_MAX_STREAMS_PER_USER", "MAX_CONTENT_LENGTH", "RATE_LIMITS_ENABLED")


def shipped_env(env, rate_limits="on"):
    """`env` without the tests' overrides (testkit's `service_env` and `Bench.env`: rate limits off,
    other stream and body caps): the repository's defaults. The rate limits are named either way, as
    testkit's ProcessGroup turns them off when unsaid; "off" is for a benchmark's `--rate-limits
    off`, which it must print with its result."""
    env = {name: value for name, value in env.items() if name not in TEST_ONLY}
    env["RATE_LIMITS_ENABLED"] = "false" if rate_limits == "off" else "true"
    return env


def add_rate_limits_option(parser):
    parser.add_argument("--rate-limits", choices=("on", "off"), default="on",
                        help="the shipped rate limits (default on); off is printed with the result")


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


class Bench(contextlib.ExitStack):
    """One scenario's servers and clients; everything is stopped when the block ends."""

    def __init__(self, name, keep=False):
        super().__init__()
        self.name, self.keep = name, keep
        self.workdir = tempfile.mkdtemp(prefix=f"bench-{name}-")
        self.callback(self._cleanup_workdir)
        self.group = ProcessGroup(self.workdir)
        self.callback(self.group.stop_all)
        self.redis_server = self.redis = self.database_url = None
        self.cluster = None   # a testkit RedisCluster carrying the stream channels (PUBSUB_URL)

    def _cleanup_workdir(self):
        if self.keep:
            log(f"logs kept in {self.workdir}")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def start_redis(self):
        self.redis_server = redis_server(dir=self.workdir)
        self.callback(self.redis_server.stop)
        self.redis = redis_lib.Redis.from_url(self.redis_server.url, client_name=BENCH_CLIENT_NAME,
                                              decode_responses=False)
        self.callback(self.redis.close)
        return self.redis

    def start_database(self):
        """A fresh migrated database on DATABASE_URL's server, dropped at the end."""
        database = Database(os.environ.get("DATABASE_URL", SERVER_URL), prefix=f"bench_{self.name.replace('-', '_')}")
        self.callback(database.drop)
        self.database_url = database.url
        return database

    def use_database(self, url):
        """An existing database (the inbox benchmark's cached one), left as it is."""
        self.database_url = url

    def env(self, **settings):
        """Our service's environment: this scenario's database and Redis, rate limits off unless
        turned on, 10 streams per user, bodies up to 2 MiB (a trigger to 10,000 users is ~390 KB)."""
        return service_env(self.database_url, self.redis_server.url, REDIS_PREFIX=PREFIX,
                           SSE_MAX_STREAMS_PER_USER="10", MAX_CONTENT_LENGTH=str(2 * 1024 * 1024), **settings)

    def start_ours(self, workers=1, worker_connections=19_000, conf="gunicorn.conf.py", cwd=REPO_ROOT,
                   shipped=False, **settings):
        """Our gunicorn; `shipped`: with the repository's defaults (rate limits on, keep-alive and
        graceful timeout as configured) rather than the benchmark's overrides."""
        env = ProcessGroup.environment(self.env(**settings))
        if shipped:
            env = shipped_env(env)
            options = dict(keepalive=None, graceful=None)
        else:
            options = dict(keepalive=15, WORKER_CONNECTIONS=worker_connections)
        server = WebServer(env, self.workdir, workers=workers, command=lambda port: gunicorn_command(conf),
                           cwd=cwd, **options)
        self.group.started.append(server)
        return server.start(timeout=60)

    def start_rq_worker(self, **settings):
        return self.group.start_worker(self.env(**settings))

    def start_peer(self, workers=1, worker_connections=19_000):
        """Flask-SSE 1.0.0 (bench/peer_flask_sse.py) under `gunicorn -k gevent`, run from bench/: the
        repository's gunicorn.conf.py (loaded from the working directory) is our service's."""
        def command(port):
            return [sys.executable, "-m", "gunicorn", "-k", "gevent", "-w", str(workers),
                    "--worker-connections", str(worker_connections), "--backlog", "4096",
                    "--graceful-timeout", "2", "-b", f"127.0.0.1:{port}", "peer_flask_sse:app"]
        env = ProcessGroup.environment({"REDIS_URL": self.redis_server.url})
        server = WebServer(env, self.workdir, workers=workers, command=command, cwd=REPO_ROOT / "bench")
        self.group.started.append(server)
        return server.start(timeout=60)

    def start_clients(self, count, port):
        clients = Clients(count, "127.0.0.1", port)
        self.callback(clients.stop)
        return clients

    def serve(self, kind, workers, clients, **settings):
        """Redis, then ours (with its database and `settings`) or the peer on `workers` workers, and
        `clients` load processes aimed at it: (server, Target, Clients)."""
        self.start_redis()
        if kind == "ours":
            self.start_database()
            server = self.start_ours(workers=workers, **settings)
        else:
            server = self.start_peer(workers=workers)
        return server, Target(kind), self.start_clients(clients, server.port)

    # -- Redis measures -----------------------------------------------------------------------
    def pubsub_channels(self):
        if self.cluster is not None:   # sharded channels, each on its master
            return sum(len(self.cluster.client(port).execute_command("PUBSUB", "SHARDCHANNELS"))
                       for port in self.cluster.master_ports())
        return int(self.redis.info("stats")["pubsub_channels"])

    def server_redis_clients(self):
        """INFO clients connected_clients, less this benchmark's own connection(s)."""
        connected = int(self.redis.info("clients")["connected_clients"])
        ours = self.redis.client_list()
        own = sum(1 for c in ours if c.get("name") == BENCH_CLIENT_NAME)
        return connected - own


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
        if self.kind != "ours":
            return str(uid)
        from app.bus.codec import user_channel
        return user_channel(PREFIX, uid)

    def message(self, payload_json):
        """What a publisher puts on a user's channel, in each server's own format."""
        if self.kind == "ours":   # sealed as the service seals it (development SECRET_KEY: DEVELOPMENT=true)
            from app.config import DEV_SECRET_KEY
            from app.bus.codec import direct_message, message_key, seal
            return seal(message_key(DEV_SECRET_KEY), "*", direct_message(CUSTOMER, payload_json))
        return json.dumps({"data": json.loads(payload_json)}, separators=(",", ":"))


def post_json(conn, path, body, expected, headers=SERVICE):
    """POST `body` as JSON on a kept-alive http.client connection; fail unless it answers `expected`."""
    conn.request("POST", path, body=json.dumps(body), headers=dict(headers, **{"Content-Type": "application/json"}))
    response = conn.getresponse()
    response.read()
    if response.status != expected:
        raise RuntimeError(f"{path} answered {response.status}")


def spec_body(user_ids, title, type="chats", event="message_received", rec_type="chats"):
    """A trigger or direct push in the SPEC example's shape, for `user_ids`, titled for the clients."""
    return trigger_body(user_ids, type=type, event=event, title=title, content="This is a benchmark notification",
                        customer_id=CUSTOMER, rec_type=rec_type, rec_id="789e4567-e89b-12d3-a456-426614174000")


def notification_json(title):
    """A notification as the direct push builds it (SPEC's shape), ~400 bytes."""
    return json.dumps({"id": str(uuid.uuid4()), "customer_id": CUSTOMER, "type": "chat",
                       "event": "message_received", "title": title, "content": "This is a benchmark notification",
                       "link_url": "/chat/room/456", "link_text": "View Message", "rec_type": "chats",
                       "rec_id": "789e4567-e89b-12d3-a456-426614174000", "read": False, "read_at": None,
                       "created_at": "2024-01-15T10:30:00.000Z"}, separators=(",", ":"))


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


class ShardedPublisher:
    """The same on a Redis Cluster: SPUBLISH, 1,000 a pipeline, split by master (as
    app/bus/publisher.py does with PUBSUB_URL on a cluster)."""

    def __init__(self, url):
        self.client = redis_lib.RedisCluster.from_url(url)

    def publish(self, channels, message):
        for start in range(0, len(channels), 1000):
            pipe = self.client.pipeline(transaction=False)
            for channel in channels[start:start + 1000]:
                pipe.spublish(channel, message)
            pipe.execute()


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
