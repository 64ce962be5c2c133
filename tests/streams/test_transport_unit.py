"""The stream transport's state machines, in this process, without gunicorn (issue 18, point 3).

Everything of app/streams/ runs as in a worker: the keeper and its ticker and
catch-up greenlets, the hub reading a pub/sub socket with hiredis, streams
handed over by handoff._detach to a non-blocking SocketSink driven by libev
watchers. Only the two ends of the transport are stand-ins, each a real socket
pair: the client's end, read here as a browser would read the chunked body,
and the Redis end of the hub's pub/sub connection, played by FakeRedis (the
hub's `connect` seam), so a test decides when Redis confirms a subscription,
delivers a message or goes away. PostgreSQL (the replay and the catch-up) and
Redis (the per-user slots) are the run's real ones (tests/conftest.py).

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

import gevent
import gevent.socket
import hiredis
import pytest

from app.bus import codec
from app.errors import TooManyConnections
from app.streams import access, frames, handoff
from app.streams import keeper as keeper_module
from app.streams.hub import Hub
from app.streams.keeper import Keeper

pytestmark = pytest.mark.timeout(60)
DEADLINE = 10   # seconds any single wait may take before the test fails (never asserted on)


# -- the Redis end of the hub's connection ----------------------------------------------------


def _resp(*parts):
    """A RESP array of bulk strings, or integers for int parts."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        if isinstance(part, int):
            out.append(b":%d\r\n" % part)
        else:
            data = part.encode() if isinstance(part, str) else part
            out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class FakeRedis:
    """Plays Redis on the far end of each connection the hub opens: confirms SUBSCRIBE and
    UNSUBSCRIBE (or holds a channel's confirmation back), delivers PUBLISHed messages to the
    newest connection if it subscribed the channel, refuses connections, or drops one."""

    def __init__(self):
        self.connections = []    # [socket, subscribed channels, greenlet], the newest last
        self.commands = []       # (connection number, command, channel) in the order received
        self.hold = set()        # channels whose SUBSCRIBE confirmation waits for release()
        self.held = []
        self.refuse = 0          # connection attempts still to refuse

    def connect(self):
        if self.refuse:
            self.refuse -= 1
            raise ConnectionRefusedError("fake Redis refuses the connection")
        hub_end, ours = gevent.socket.socketpair()
        entry = [ours, set(), None]
        self.connections.append(entry)
        entry[2] = gevent.spawn(self._serve, len(self.connections), entry)
        return hub_end

    def _serve(self, number, entry):
        sock, channels, _ = entry
        reader = hiredis.Reader()
        while True:
            try:
                data = sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            reader.feed(data)
            command = reader.gets()
            while command is not False:
                name = command[0].decode().upper()
                for index, channel in enumerate(command[1:]):
                    channel = channel.decode()
                    self.commands.append((number, name, channel))
                    if name == "SUBSCRIBE":
                        channels.add(channel)
                        if channel in self.hold:
                            self.held.append((sock, channel, len(channels)))
                            continue
                    else:
                        channels.discard(channel)
                    sock.sendall(_resp(name.lower(), channel, len(channels)))
                command = reader.gets()

    def release(self, channel):
        """Confirm the held SUBSCRIBEs of `channel` now."""
        self.hold.discard(channel)
        for sock, held, count in [h for h in self.held if h[1] == channel]:
            self.held.remove((sock, held, count))
            sock.sendall(_resp("subscribe", held, count))

    def subscribed(self, channel):
        return bool(self.connections) and channel in self.connections[-1][1]

    def publish(self, channel, message):
        sock, channels, _ = self.connections[-1]
        assert channel in channels, f"nobody subscribed {channel} on the live connection"
        sock.sendall(_resp("message", channel, message))

    def drop(self):
        """Redis goes away: the live connection is closed under the hub."""
        self.connections[-1][0].close()

    def stop(self):
        for sock, _, greenlet in self.connections:
            greenlet.kill()
            sock.close()


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
    def __init__(self, app):
        self.app, self.redis = app, app.extensions["redis"]
        self.fake = FakeRedis()
        self.hub = Hub(app.config["REDIS_URL"], app.config["REDIS_PREFIX"],
                       codec.message_key(app.config["SECRET_KEY"]), connect=self.fake.connect)
        self.keeper = Keeper(app, self.hub, access.slots(app), app.extensions["db_pool"])
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

    def publish(self, user_id, seq, title, pad=0):
        """A notification as the service publishes it (sealed), straight to the hub's socket."""
        body = json.dumps({"title": title, "pad": "x" * pad})
        channel = self.channel(user_id)
        self.fake.publish(channel, codec.seal(self.hub.key, channel, codec.notification_message(seq, None, body)))

    def hub_read_everything(self):
        """Nothing published waits in the hub's socket: the hub read it, and flushed the streams
        it fed before it yielded (app/streams/hub.py, `_read`)."""
        waiting = array.array("i", [0])
        fcntl.ioctl(self.hub.sock.fileno(), termios.FIONREAD, waiting)
        return waiting[0] == 0

    def slots_held(self, user_id):
        return self.redis.zcard(f"{self.app.config['REDIS_PREFIX']}streams:{user_id}")

    def stop(self):
        self.keeper.shutdown()
        gevent.killall(self.keeper.greenlets + [self.hub.greenlet, self.hub.unsubscriber])
        self.fake.stop()
        if self.hub.sock is not None:
            self.hub.sock.close()
        for sock in self.sockets:
            sock.close()


class AccessLog:
    """Stands in for gunicorn's logger (tests/streams/test_handoff_canary.py checks the real one)."""

    def access(self, *args):
        pass


@pytest.fixture
def rig(make_app, caplog):
    """`rig(**settings)`: a keeper and a hub over a FakeRedis, with the app's settings given."""
    made = []
    caplog.set_level(logging.DEBUG, logger=keeper_module.__name__)
    keeper_module.use_access_log(AccessLog())   # the reason a stream closed is in that line's log

    def build(**settings):
        made.append(Rig(make_app(**settings)))
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

    the.fake.refuse = 1                          # the first attempt to reconnect fails
    the.fake.hold = {the.channel(other)}         # and one channel's confirmation comes late
    the.fake.drop()
    missed = insert(db, user, "published while Redis was away")   # never reaches the hub
    wait_for(lambda: len(the.fake.connections) == 2 and the.fake.subscribed(the.channel(user))
             and the.fake.subscribed(the.channel(other)), "the hub to subscribe again")
    after = insert(db, user, "published after the reconnect")
    the.publish(user, after, "published after the reconnect")   # live, before every channel is confirmed
    # Published before Redis confirmed the other channel: possibly lost to the new connection, so
    # the catch-up must read PostgreSQL after that confirmation, not at the reconnect.
    unconfirmed = insert(db, other, "published before the confirmation")
    the.fake.release(the.channel(other))
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
    wait_for(lambda: (1, "UNSUBSCRIBE", the.channel(user)) in the.fake.commands, "the hub to unsubscribe")
    again, client = the.open(user)   # the freed slot opens the next stream
    assert not again.closed and the.slots_held(user) == 1
    assert [c for c in the.fake.commands if c[2] == the.channel(user)] == [
        (1, "SUBSCRIBE", the.channel(user)), (1, "UNSUBSCRIBE", the.channel(user)),
        (1, "SUBSCRIBE", the.channel(user))]


def test_shutting_down_closes_every_stream_and_gives_the_slots_back(rig, caplog):
    the = rig()
    users = [uuid.uuid4(), uuid.uuid4()]
    clients = [the.open(user)[1] for user in users]
    the.keeper.shutdown()
    for client in clients:
        client.read_to_the_end()
    assert all(the.slots_held(user) == 0 for user in users)   # released at once, not by the ticker
    assert closed_because(caplog, "server shutting down") and the.hub.count() == 0

