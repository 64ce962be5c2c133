"""The stream transport's state machines, in this process, without gunicorn (issue 18, point 3).

Everything of app/streams/ runs as in a worker: the keeper and its ticker and
catch-up greenlets, the hub reading a pub/sub socket with hiredis, streams
handed over by handoff._detach to a non-blocking SocketSink driven by libev
watchers. The client's end is a real socket pair, read here as a browser would
read the chunked body. Redis is the run's real one (tests/conftest.py): the hub
reaches it through PUBSUB_URL, which names a pausable TCP proxy in front of it
(testkit/tcp_proxy.py), so a test decides when Redis's confirmation of a
subscription or a message reaches the hub, or makes Redis go away. Messages are
published with the service's own Publisher (app/bus/publisher.py), a real
PUBLISH straight to Redis. PostgreSQL (the replay and the catch-up) and Redis
(the per-user slots) are the run's real ones.

Nothing here waits for a duration to assert on it: a test waits (with a
deadline) for what a client reads or for a state to be reached.
"""
import array
import fcntl
import json
import logging
import socket
import termios
import time
import uuid
from urllib.parse import urlsplit

import gevent
import gevent.socket
import hiredis
import pytest

from app import logs
from app.bus import codec
from app.bus.publisher import Publisher
from app.errors import TooManyConnections
from app.streams import access, frames, handoff
from app.streams import keeper as keeper_module
from app.streams.hub import hub as process_hub
from app.streams.keeper import Keeper
from testkit.tcp_proxy import TcpProxy

pytestmark = pytest.mark.timeout(60)
DEADLINE = 10   # seconds any single wait may take before the test fails (never asserted on)


# -- what Redis sends the hub's connection ------------------------------------------------------


def reply_size(*parts):
    """The size in bytes of one pub/sub reply of these parts (a RESP2 array and a RESP3 push, as
    redis-py's HELLO 3 gets, are the same size)."""
    size = len(b"*%d\r\n" % len(parts))
    for part in parts:
        if isinstance(part, int):
            size += len(b":%d\r\n" % part)
        else:
            data = part.encode() if isinstance(part, str) else part
            size += len(b"$%d\r\n\r\n" % len(data)) + len(data)
    return size


def replies(data):
    """The replies in `data`, parsed (complete ones)."""
    reader, out = hiredis.Reader(), []
    reader.feed(data)
    reply = reader.gets()
    while reply is not False:
        out.append(reply)
        reply = reader.gets()
    return out


def commands(connection):
    """(command, channel) of each SUBSCRIBE and UNSUBSCRIBE the hub sent on a connection, in order."""
    out = []
    for command in replies(connection.sent):
        name = command[0].decode().upper()
        if name in ("SUBSCRIBE", "UNSUBSCRIBE"):
            out.extend((name, channel.decode()) for channel in command[1:])
    return out


# -- the client's end of a stream -------------------------------------------------------------


class Client:
    """Reads a stream's response as a client does: the head, the chunked body, SSE frames."""

    def __init__(self, sock):
        self.sock, self.buffer, self.head, self.body = sock, b"", None, b""
        self.ended = False   # the body's last chunk (a proper end, not a cut) came
        self.eof = False     # the server closed the connection

    def frames(self):
        return [frame.decode() for frame in self.body.split(b"\n\n")[:-1]]

    def notifications(self):
        """(cursor, title) of every notification read, in order."""
        out = []
        for frame in self.frames():
            lines = dict(line.split(": ", 1) for line in frame.split("\n") if not line.startswith(":"))
            if "id" in lines and "event" not in lines:
                out.append((int(lines["id"]), json.loads(lines["data"])["title"]))
        return out

    def read_until(self, predicate, what):
        with gevent.Timeout(DEADLINE, AssertionError(f"the client never read {what}: {self.frames()}")):
            while not predicate():
                assert not self.eof, f"the stream ended before {what}: {self.frames()}"
                self._fill()

    def read_to_the_end(self):
        self.read_until(lambda: self.eof, "the end of the connection")

    def _fill(self):
        data = self.sock.recv(65536)
        self.eof = not data
        self.buffer += data
        if self.head is None:
            if b"\r\n\r\n" not in self.buffer:
                return
            self.head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        while not self.ended:
            line, found, rest = self.buffer.partition(b"\r\n")
            size = int(line, 16) if found else -1
            if size < 0 or len(rest) < size + 2:
                return
            self.body, self.buffer = self.body + rest[:size], rest[size + 2:]
            self.ended = size == 0

    def close(self):
        self.sock.close()


# -- the process: app, keeper, hub ------------------------------------------------------------


def wait_for(predicate, what):
    with gevent.Timeout(DEADLINE, AssertionError(f"timed out waiting for {what}")):
        while not predicate():
            gevent.sleep(0.005)


class Rig:
    """A keeper and the product's hub (app/streams/hub.py `hub`), whose PUBSUB_URL names a TcpProxy
    in front of the run's Redis."""

    def __init__(self, make_app, redis_url, settings):
        redis_address = urlsplit(redis_url)
        self.proxy = TcpProxy((redis_address.hostname, redis_address.port)).start()
        pubsub_url = f"redis://127.0.0.1:{self.proxy.port}{redis_address.path}"
        self.app = make_app(PUBSUB_URL=pubsub_url, **settings)
        self.redis = self.app.extensions["redis"]
        self.hub = process_hub(self.app)
        # The service's own publishing, on REDIS_URL's client: straight to Redis, not through the proxy.
        self.publisher = Publisher(self.redis, self.app.config["REDIS_PREFIX"], self.hub.key)
        self.keeper = Keeper(self.app, self.hub, access.slots(self.app), self.app.extensions["db_pool"])
        self.sockets = []

    def open(self, user_id, cursor=None, expires_at=float("inf"), before_replay=None, sndbuf=None):
        """What the stream view and the hand-off do: a slot, the subscription, the replay, the
        head and first frames on the socket, which then belongs to the hub."""
        stream = self.keeper.open(user_id, None, ("192.0.2.1", "HTTP/1.1", "rid"), expires_at)
        if before_replay is not None:
            before_replay(stream)
        first = [frames.opening(3000)] + self.keeper.first_frames(stream, cursor)
        server, client = gevent.socket.socketpair()
        self.sockets.append(client)
        if sndbuf:   # a client that lets the kernel's buffer fill up sooner
            server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        environ = {"gunicorn.socket": server, "SERVER_PROTOCOL": "HTTP/1.1"}
        handoff._detach(environ, self.keeper, stream, first, "200 OK", [("Content-Type", "text/event-stream")])
        server.close()   # gunicorn's close after the StopIteration: a no-op once detached
        return stream, Client(client)

    def channel(self, user_id):
        return self.hub.channel(user_id)

    def connection(self):
        """The hub's pub/sub connection through the proxy (its newest: the hub's probe for a
        cluster, before it, is closed at once)."""
        return self.proxy.connections[-1]

    def publish(self, user_id, seq, title, pad=0):
        """A notification as the service publishes it: sealed, a real PUBLISH. Returns once Redis
        sent it on the hub's connection (the proxy has it: passed on, or held)."""
        body = json.dumps({"title": title, "pad": "x" * pad})
        message = codec.notification_message(seq, None, body)
        channel, connection = self.channel(user_id), self.connection()
        size = reply_size("message", channel, codec.seal(self.hub.key, channel, message))
        before, heard = connection.received, []
        self.publisher.publish([(user_id, message)], heard=heard)
        assert heard, f"nobody subscribed {channel} in Redis"
        wait_for(lambda: connection.received >= before + size, f"Redis to send {title!r} to the hub")

    def hub_read_everything(self):
        """Nothing published waits for the hub: the proxy passed on all Redis sent, and the hub read
        it from its socket, and flushed the streams it fed before it yielded (app/streams/hub.py, `_read`)."""
        if not self.connection().idle():
            return False
        waiting = array.array("i", [0])
        fcntl.ioctl(self.hub.sock.fileno(), termios.FIONREAD, waiting)
        return waiting[0] == 0

    def slots_held(self, user_id):
        return self.redis.zcard(f"{self.app.config['REDIS_PREFIX']}streams:{user_id}")

    def stop(self):
        self.keeper.shutdown()
        gevent.killall(self.keeper.greenlets + [self.hub.greenlet, self.hub.unsubscriber])
        if self.hub.sock is not None:
            self.hub.sock.close()
        self.proxy.close()
        for sock in self.sockets:
            sock.close()


class AccessLog:
    """Stands in for gunicorn's logger (tests/streams/test_handoff_canary.py checks the real one)."""

    def access(self, *args):
        pass


@pytest.fixture
def rig(make_app, clean, caplog):
    """`rig(**settings)`: a keeper and a hub reaching the run's Redis through a TcpProxy, with the
    app's settings given."""
    made = []
    # The process's logging as create_app sets it up, now: the first create_app of a run replaces
    # the root logger's handlers, the test's capture among them if the test is already running.
    logs.configure()
    caplog.set_level(logging.DEBUG, logger=keeper_module.__name__)
    keeper_module.use_access_log(AccessLog())   # the reason a stream closed is in that line's log

    def build(**settings):
        made.append(Rig(make_app, clean["REDIS_URL"], settings))
        return made[-1]

    yield build
    for built in made:
        built.stop()
    keeper_module.use_access_log(None)


def closed_because(caplog, reason):
    return any(record.getMessage().endswith(f": {reason}") for record in caplog.records
               if record.name == keeper_module.__name__)


def insert(db, user_id, title):
    """A stored notification of `user_id`; returns its cursor."""
    with db.cursor() as cur:
        cur.execute("INSERT INTO notifications (id, user_id, type, event, title) VALUES (%s, %s, %s, %s, %s)"
                    " RETURNING seq", (str(uuid.uuid4()), str(user_id), "chat", "message_received", title))
        return cur.fetchone()[0]


# -- the cursor ---------------------------------------------------------------------------------


def test_a_notification_replayed_and_also_live_arrives_once_in_order(rig, db):
    """Subscribed before the replay, a stream gets a notification both from PostgreSQL and
    live: the client must read it once, replayed, then what came after it."""
    the = rig()
    user = uuid.uuid4()
    first, second = insert(db, user, "first"), insert(db, user, "second")

    def live_during_the_replay(stream):
        the.publish(user, second, "second, live copy")
        wait_for(lambda: len(stream.queue) == 1, "the live copy to wait behind the replay")

    stream, client = the.open(user, cursor=0, before_replay=live_during_the_replay)
    third = insert(db, user, "third")
    the.publish(user, second, "second, live again")   # a late duplicate, below the cursor, alone in its read
    wait_for(the.hub_read_everything, "the hub to read the duplicate")
    the.publish(user, third, "third")
    client.read_until(lambda: len(client.notifications()) >= 3, "three notifications")
    assert client.head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert client.notifications() == [(first, "first"), (second, "second"), (third, "third")]
    assert stream.last == third and not stream.closed


# -- a busy client ------------------------------------------------------------------------------


def test_a_stream_whose_queue_passes_SSE_QUEUE_SIZE_behind_its_replay_is_cut(rig, caplog):
    the = rig(SSE_QUEUE_SIZE="4")
    user = uuid.uuid4()

    def flood_during_the_replay(stream):
        for seq in range(1, 6):
            the.publish(user, seq, f"live {seq}")
        wait_for(lambda: stream.closed, "the stream to be cut")

    stream, client = the.open(user, cursor=0, before_replay=flood_during_the_replay)
    client.read_to_the_end()
    assert client.head is None and client.body == b""   # cut: it reconnects with its cursor
    assert closed_because(caplog, "too slow")
    wait_for(lambda: the.slots_held(user) == 0, "the slot to be released")
    assert the.hub.count() == 0 and the.keeper.open_count == 0


@pytest.mark.parametrize("settings, pad", [
    ({"SSE_BACKLOG_MAX_BYTES": str(32 * 1024)}, 4000),           # past the bytes
    ({"SSE_QUEUE_SIZE": "3", "SSE_BACKLOG_MAX_BYTES": str(1 << 20)}, 4000),   # past the writes
], ids=["SSE_BACKLOG_MAX_BYTES", "SSE_QUEUE_SIZE"])
def test_a_client_that_does_not_read_is_cut_and_misses_nothing_before_the_cut(rig, caplog, settings, pad):
    the = rig(**settings)
    user = uuid.uuid4()
    stream, client = the.open(user, sndbuf=4096)
    seq = 0
    while not stream.closed:
        assert seq < 200, "a client that reads nothing was never cut"
        seq += 1
        written = stream.sink.written
        the.publish(user, seq, f"n{seq}", pad=pad)
        wait_for(lambda: stream.closed or stream.sink.written > written, f"notification {seq} to be written")
    client.read_to_the_end()
    got = [cursor for cursor, _ in client.notifications()]
    assert got == list(range(1, len(got) + 1)) and len(got) < seq   # a prefix, in order, then the cut
    assert not client.ended   # cut, not ended: the client reconnects with its cursor
    assert closed_because(caplog, "too slow")


# -- resync after a Redis loss ------------------------------------------------------------------


def test_after_losing_redis_the_hub_reconnects_and_streams_catch_up_from_postgresql(rig, db):
    the = rig()
    user, other = uuid.uuid4(), uuid.uuid4()
    stream, client = the.open(user)
    _, other_client = the.open(other)
    client.read_until(lambda: any(f.startswith("event: unread") for f in client.frames()), "the unread counts")

    lost = the.connection()
    the.proxy.refuse(1)                     # the first attempt to reconnect fails
    the.proxy.hold(after=b"SUBSCRIBE")      # and Redis's confirmations reach the hub when the test says
    the.proxy.cut()                         # Redis goes away
    missed = insert(db, user, "published while Redis was away")   # never reaches the hub
    confirmations = [[b"subscribe", the.channel(user).encode(), 1], [b"subscribe", the.channel(other).encode(), 2]]
    wait_for(lambda: the.connection() is not lost and replies(the.connection().held) == confirmations,
             "the hub to subscribe again, and Redis to confirm both channels (held)")
    the.proxy.release(reply_size(*confirmations[0]))   # the hub hears of the first channel's only
    wait_for(lambda: the.channel(user) not in the.hub.acks, "the hub to read the first confirmation")
    after = insert(db, user, "published after the reconnect")
    the.publish(user, after, "published after the reconnect")   # live, before every channel is confirmed
    # Published before the hub heard Redis confirm the other channel: possibly lost to the new
    # connection, so the catch-up must read PostgreSQL after that confirmation, not at the reconnect.
    unconfirmed = insert(db, other, "published before the confirmation")
    the.proxy.release()
    client.read_until(lambda: len(client.notifications()) >= 2, "the catch-up")
    later = insert(db, user, "later")
    the.publish(user, after, "a live duplicate")
    the.publish(user, later, "later")

    client.read_until(lambda: len(client.notifications()) >= 3, "the live feed after the catch-up")
    assert client.notifications() == [(missed, "published while Redis was away"),
                                      (after, "published after the reconnect"), (later, "later")]
    other_client.read_until(lambda: sum(f.startswith("event: unread") for f in other_client.frames()) == 2,
                            "the other stream's catch-up")
    assert other_client.notifications() == [(unconfirmed, "published before the confirmation")]
    assert the.hub.reconnects == 2 and not stream.closed


# -- keep-alive and expiry ----------------------------------------------------------------------


def test_an_idle_stream_gets_a_keep_alive_comment(rig):
    the = rig(SSE_KEEPALIVE_SECONDS="0.2")
    stream, client = the.open(uuid.uuid4())
    client.read_until(lambda: len(client.frames()) >= 3, "a keep-alive")
    opening, counts, keepalive = client.frames()[:3]
    assert opening == ": connected\nretry: 3000" and counts.startswith("event: unread\n")
    assert keepalive + "\n\n" == frames.KEEPALIVE.decode()
    assert not stream.closed and not client.ended


def test_a_stream_ends_when_its_credentials_expire_and_frees_its_slot(rig, caplog):
    the = rig(SSE_KEEPALIVE_SECONDS="1")
    user = uuid.uuid4()
    stream, client = the.open(user, expires_at=time.time() + 0.5)
    client.read_to_the_end()
    assert client.ended, "an expiry ends the body properly (a client can tell it from a cut)"
    assert client.frames()[-1] + "\n\n" == frames.EXPIRED.decode()
    assert closed_because(caplog, "credentials expired")
    wait_for(lambda: the.slots_held(user) == 0, "the slot to be released")


# -- the per-user slot --------------------------------------------------------------------------


def test_the_users_slot_is_freed_when_the_client_leaves(rig, caplog):
    the = rig(SSE_MAX_STREAMS_PER_USER="1")
    user = uuid.uuid4()
    stream, client = the.open(user)
    with pytest.raises(TooManyConnections):
        the.keeper.open(user, None, None)
    assert the.slots_held(user) == 1
    client.read_until(lambda: len(client.frames()) == 2, "the opening frames")   # read all, then leave
    client.close()
    wait_for(lambda: stream.closed, "the read watcher to see the client leave")
    assert closed_because(caplog, "closed by the client")
    wait_for(lambda: the.slots_held(user) == 0, "the slot to be released")
    connection = the.connection()
    wait_for(lambda: ("UNSUBSCRIBE", the.channel(user)) in commands(connection), "the hub to unsubscribe")
    again, client = the.open(user)   # the freed slot opens the next stream
    assert not again.closed and the.slots_held(user) == 1
    assert the.connection() is connection and the.hub.reconnects == 1   # all on the one connection
    assert [c for c in commands(connection) if c[1] == the.channel(user)] == [
        ("SUBSCRIBE", the.channel(user)), ("UNSUBSCRIBE", the.channel(user)), ("SUBSCRIBE", the.channel(user))]


def test_shutting_down_closes_every_stream_and_gives_the_slots_back(rig, caplog):
    the = rig()
    users = [uuid.uuid4(), uuid.uuid4()]
    clients = [the.open(user)[1] for user in users]
    the.keeper.shutdown()
    for client in clients:
        client.read_to_the_end()
    assert all(the.slots_held(user) == 0 for user in users)   # released at once, not by the ticker
    assert closed_because(caplog, "server shutting down") and the.hub.count() == 0

