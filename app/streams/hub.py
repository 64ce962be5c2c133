"""The per-process hub: one Redis pub/sub connection feeding every local stream.

One greenlet owns a socket to Redis, parsed with hiredis. redis-py opens it
(`_connect`): TCP, `rediss://` with its certificate checks and URL options,
`unix://`, AUTH with user and password, CLIENT SETNAME; the hub then reads
that socket itself, without redis-py's per-reply overhead. It subscribes
to the channel of each user that has at least one stream in this process
(and unsubscribes when the last one leaves), frames each incoming event once
and offers it to each of that user's streams; after every read from the
socket it flushes the streams it fed, so a stream gets all the frames of one
read in one write (app/streams/stream.py).

A stream waits for its channel's SUBSCRIBE to be confirmed before it reads
what it missed from PostgreSQL: no gap between the two. Confirmations are
counted per channel, because a channel unsubscribed and subscribed again has
two SUBSCRIBE replies in flight and only the newest one counts.

When the connection drops the hub reconnects with back-off, subscribes again
and, once Redis confirmed every subscription, tells every stream to catch up
from PostgreSQL, so nothing published while it was away is lost to a client.

With PUBSUB_URL naming a node of a Redis Cluster (seen by `CLUSTER INFO` at each connection),
the hub uses sharded pub/sub instead: each channel belongs to the master serving its hash slot,
so the hub holds one connection per master (CLUSTER SLOTS says which), SSUBSCRIBEs each channel
on its master (one slot per command, as Redis requires) and reads every connection from a
greenlet of its own. Whatever changes the map — a connection lost (a master killed, its replica
promoted), a `MOVED` or `CLUSTERDOWN` answer, a `sunsubscribe` Redis sends unasked (its slot
migrated) — ends the whole session like a lost connection: the hub reads the map again from any
node it knows, subscribes everything again and every stream catches up from PostgreSQL. A
failover is rare; a resync of every stream is what a Redis restart costs already.

Whoever can write to Redis can publish on these channels, so the hub frames
only what app/bus/codec.py accepts (sealed by the service, of a known kind
and event name, an integer cursor, one line of JSON) and drops and counts the
rest. Anything else going wrong in the hub (a reply it cannot read, a bug)
ends that connection like a lost one: the socket is closed, the hub
reconnects and every stream catches up, so no stream is left without events.
"""
import logging
import socket
import ssl
import time

import gevent
import gevent.event
import gevent.lock
import gevent.socket
import hiredis
import redis as redis_lib
from gevent.socket import wait_read
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.retry import Retry

from ..bus import client_name, codec
from ..metrics import HUB_DROPPED, HUB_RESTARTS
from . import frames
from .stream import RESYNC, UNREAD_CHANGED

log = logging.getLogger(__name__)
SUBSCRIBE_BATCH = 500     # channels per SUBSCRIBE/UNSUBSCRIBE command
FLUSH_AFTER = 20_000      # messages read before the streams are flushed even if Redis has more
HEALTHY_SESSION = 10.0    # seconds a connection must last for the next reconnect to come at once
MAX_DELAY = 5.0           # longest pause between two connection attempts
DROP_LOG_EVERY = 60.0     # seconds between two log lines about dropped messages
READ_SIZE = 262144        # bytes asked for per read


def _command(*parts):
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class MapChanged(ConnectionError):
    """The cluster's slot map is not what this session subscribed by: start a new session."""


class Hub:
    def __init__(self, redis_url, prefix, key):
        self.redis_url = redis_url
        self.cluster = False       # this session's mode: sharded pub/sub over a Redis Cluster
        self.owners = {}           # cluster: slot -> (host, port) of its master, this session's map
        self.nodes = {}            # cluster: (host, port) -> socket of this session
        self.known = []            # cluster: every node's (host, port) last seen, to read the map from
        self.unsubscribing = {}    # cluster: channel -> SUNSUBSCRIBE replies this hub asked for
        self.prefix, self.key = prefix, key
        self.streams = {}          # channel -> set of Stream
        self.acks = {}             # channel -> [SUBSCRIBE replies still due, Event set when none is]
        self.leaving = set()       # channels whose last stream left: UNSUBSCRIBE them
        self.sock = None
        self.write_lock = gevent.lock.Semaphore()
        self.greenlet = self.unsubscriber = None
        self.unsubscribe_due = gevent.event.Event()
        self.connected = gevent.event.Event()
        self.reconnects = 0
        self.resync_due = False    # streams hold RESYNC until every channel is subscribed again
        self._last_message = self._last_item = None
        self._dropped, self._dropped_logged_at = 0, 0.0

    # -- streams --------------------------------------------------------
    def channel(self, user_id):
        return codec.user_channel(self.prefix, user_id)

    def register(self, stream):
        """Add a stream; returns an Event to wait on for its subscription (None: it is active)."""
        self._ensure_running()
        channel = stream.channel
        group = self.streams.get(channel)
        if group is not None:
            group.add(stream)
            entry = self.acks.get(channel)
            return entry[1] if entry else None
        self.streams[channel] = {stream}
        event = self._expect_ack(channel)
        self._send(channel, _command("SSUBSCRIBE" if self.cluster else "SUBSCRIBE", channel))
        return event

    def forget(self, stream):
        """Drop a closed stream at once; its channel's UNSUBSCRIBE goes out from a greenlet, as
        this may run inside an event-loop callback that must not block."""
        group = self.streams.get(stream.channel)
        if group is None:
            return
        group.discard(stream)
        if not group:
            del self.streams[stream.channel]
            self.leaving.add(stream.channel)
            self.unsubscribe_due.set()

    def all_streams(self):
        return [stream for group in self.streams.values() for stream in group]

    def count(self):
        return sum(len(group) for group in self.streams.values())

    def _expect_ack(self, channel):
        entry = self.acks.get(channel)
        if entry is None:
            entry = self.acks[channel] = [0, gevent.event.Event()]
        entry[0] += 1
        return entry[1]

    # -- connection -----------------------------------------------------
    def _ensure_running(self):
        if self.greenlet is None or self.greenlet.dead:
            self.greenlet = gevent.spawn(self._run)
        if self.unsubscriber is None or self.unsubscriber.dead:
            self.unsubscriber = gevent.spawn(self._unsubscribe_loop)

    def _sock_for(self, channel):
        if not self.cluster:
            return self.sock
        return self.nodes.get(self.owners.get(key_slot(channel.encode())))

    def _send(self, channel, data):
        sock = self._sock_for(channel)
        if sock is None:
            return  # the (re)connect subscribes every channel anyway
        try:
            with self.write_lock:
                sock.sendall(data)
        except OSError:
            self._hang_up(sock)

    @staticmethod
    def _hang_up(sock):
        """Wake the reader (it sees the end and reconnects); it alone closes the socket."""
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _unsubscribe_loop(self):
        while True:
            self.unsubscribe_due.wait()
            self.unsubscribe_due.clear()
            # Decided under the lock: a stream registering meanwhile sends its SUBSCRIBE after this.
            with self.write_lock:
                channels = [c for c in self.leaving if c not in self.streams]
                self.leaving.clear()
                if self.cluster:   # the replies asked for, told from those Redis sends unasked
                    for channel in channels:
                        if self._sock_for(channel) is not None:
                            self.unsubscribing[channel] = self.unsubscribing.get(channel, 0) + 1
                for sock, commands in self._commands("UNSUBSCRIBE", channels):
                    try:
                        sock.sendall(b"".join(commands))
                    except Exception as exc:  # the reader reconnects, and subscribes only what is open
                        if not isinstance(exc, OSError):
                            log.exception("hub: UNSUBSCRIBE failed")
                        self._hang_up(sock)

    def _commands(self, verb, channels):
        """[(socket, [command, ...])]: `verb` for the channels, on their connection. One Redis:
        SUBSCRIBE_BATCH channels a command. A cluster: S<verb>, on the master of each channel's
        slot, one slot a command (Redis refuses channels of several slots in one)."""
        if not self.cluster:
            if self.sock is None:
                return []
            return [(self.sock, [_command(verb, *channels[start:start + SUBSCRIBE_BATCH])
                                 for start in range(0, len(channels), SUBSCRIBE_BATCH)])]
        by_slot = {}
        for channel in channels:
            by_slot.setdefault(key_slot(channel.encode()), []).append(channel)
        out = {}
        for slot, group in by_slot.items():
            sock = self.nodes.get(self.owners.get(slot))
            if sock is not None:
                out.setdefault(sock, []).append(_command("S" + verb, *group))
        return list(out.items())

    def _drop(self, sock):
        if self.sock is sock:
            self.sock = None
            self.connected.clear()
        try:
            sock.close()
        except OSError:
            pass

    def _connect(self, node=None):
        """A socket to Redis opened by redis-py from REDIS_URL (TLS with the URL's `ssl_*` options,
        unix socket, AUTH, database), named after this process (CLIENT LIST shows whose), and
        detached from redis-py: the hub alone reads, writes and closes it from here on."""
        options = dict(socket_connect_timeout=5, client_name=client_name("hub"),
                       retry=Retry(NoBackoff(), 0))   # _run has the back-off
        if not self.redis_url.startswith("unix:"):
            options["socket_keepalive"] = True        # a peer gone silently is noticed
        pool = redis_lib.ConnectionPool.from_url(self.redis_url, **options)
        if node is not None:   # a cluster's node: the URL's credentials and TLS, that node's address
            pool.connection_kwargs.update(host=node[0], port=node[1])
        connection = pool.make_connection()
        try:
            connection.connect()
        except redis_lib.RedisError as exc:   # refused AUTH, a failed handshake: retried like a lost socket
            raise ConnectionError(f"Redis refused the hub's connection: {exc}") from exc
        sock, connection._sock = connection._sock, None
        if not isinstance(sock, (gevent.socket.socket, ssl.SSLSocket)):
            # A process gevent did not patch (tests/streams/test_transport_unit.py runs the hub in
            # pytest's): redis-py made a blocking socket, which the hub's reads need cooperative.
            sock = gevent.socket.socket(sock.family, sock.type, sock.proto, fileno=sock.detach())
        sock.settimeout(None)
        return sock

    def _run(self):
        """Connect, subscribe, read; after whatever ended the connection, close it and start over."""
        delay = 0.1
        while True:
            sock, started = None, time.monotonic()
            try:
                if self._cluster_map():
                    sock = True
                    self._run_cluster()
                else:
                    sock = self._connect()
                    self._subscribe_all(sock)
                    self._read(sock)
            except OSError as exc:
                if sock is None:
                    log.warning("hub: cannot reach Redis (%s); retrying in %.1fs", exc, delay)
                else:
                    log.warning("hub: Redis connection lost (%s)", exc)
                    HUB_RESTARTS.labels("connection").inc()
            except Exception:  # a reply it cannot read, or a bug: never leave the streams without a hub
                log.exception("hub: unexpected error; reconnecting, every stream catches up from PostgreSQL")
                HUB_RESTARTS.labels("error").inc()
            if self.cluster:
                self._drop_cluster()
            elif sock is not None:
                self._drop(sock)
            if time.monotonic() - started >= HEALTHY_SESSION:
                delay = 0.1
            gevent.sleep(delay)
            delay = min(delay * 2, MAX_DELAY)

    # -- a Redis Cluster ----------------------------------------------------------------------------
    def _cluster_map(self):
        """Is PUBSUB_URL's Redis a cluster? If so, read its slot map (from any node known, the URL's
        first) into `owners`; raises OSError when no node answers."""
        nodes = [None] + [node for node in self.known]
        last = None
        for node in nodes:
            try:
                sock = self._connect(node)
            except OSError as exc:
                last = exc
                continue
            try:
                peer = sock.getpeername()       # a node that does not know its address says ""
                asked = peer[0] if isinstance(peer, tuple) else ""
                sock.settimeout(5)
                reader = hiredis.Reader()
                sock.sendall(_command("CLUSTER", "INFO") + _command("CLUSTER", "SLOTS"))
                info, slots = _replies(sock, reader, 2)
            except OSError as exc:   # this node went away or hangs: ask the next one
                last = exc
                continue
            finally:
                sock.close()
            if isinstance(info, Exception):   # "cluster support disabled": one Redis
                self.cluster = False
                return False
            if isinstance(slots, Exception):
                last = ConnectionError(f"CLUSTER SLOTS: {slots}")
                continue
            owners, known = {}, set()
            for entry in slots:
                start, end = entry[0], entry[1]
                nodes_of_range = [(n[0].decode() or asked, int(n[1])) for n in entry[2:]]
                master = nodes_of_range[0]
                known.update(nodes_of_range)
                for slot in range(start, end + 1):
                    owners[slot] = master
            if len(owners) < 16384:
                last = ConnectionError("the cluster does not serve every slot yet")
                continue
            self.cluster, self.owners, self.known = True, owners, sorted(known)
            return True
        raise last or ConnectionError("no node of the cluster answered")

    def _run_cluster(self):
        """One session: a connection to every master, everything subscribed, one reader each;
        returns (raising) when any of them ends."""
        for master in sorted(set(self.owners.values())):
            self.nodes[master] = self._connect(master)
        self._subscribe_all(None)
        readers = [gevent.spawn(self._read, sock) for sock in self.nodes.values()]
        try:
            done = gevent.wait(readers, count=1)
            for reader in done:
                reader.get()    # raises what ended it
            raise ConnectionResetError("a cluster node's connection ended")
        finally:
            gevent.killall(readers)

    def _drop_cluster(self):
        with self.write_lock:
            nodes, self.nodes = self.nodes, {}
            self.unsubscribing.clear()
        self.connected.clear()
        for sock in nodes.values():
            try:
                sock.close()
            except OSError:
                pass

    def _subscribe_all(self, sock):
        with self.write_lock:
            if not self.cluster:
                self.sock = sock
            channels = list(self.streams)
            for channel in channels:   # replies due on the old connection will never come
                entry = self.acks.get(channel)
                if entry is not None:
                    entry[0] = 0
                self._expect_ack(channel)
            self.leaving.clear()
            for target, commands in self._commands("SUBSCRIBE", channels):
                target.sendall(b"".join(commands))
        if self.reconnects:
            self._resync_all()
        self.reconnects += 1
        self.connected.set()

    def _resync_all(self):
        """Every stream catches up from PostgreSQL, queued behind RESYNC now (so what arrives
        live waits behind it) but started only once Redis confirmed every subscription: a
        notification published before that is then in the database read."""
        for stream in self.all_streams():
            if stream.batch is None or not any(item is RESYNC for item in stream.batch):
                stream.offer(RESYNC)
        self.resync_due = True
        self._resync_if_subscribed()

    def _resync_if_subscribed(self):
        if self.resync_due and not self.acks:
            self.resync_due = False
            for stream in self.all_streams():
                stream.flush()

    def _read(self, sock):
        """Read until Redis has nothing more for now, then flush: under load one write carries
        many frames per stream; when idle every message goes out at once.

        It reads beneath gevent's wrapper, whose descriptor is non-blocking: `_sock` of a plain
        or unix socket, `_sslobj` of a TLS one, where OpenSSL wanting more bytes means nothing
        is there yet. (A read that must first write, a TLS 1.3 key update, raises SSLError: the
        hub reconnects and every stream catches up.)"""
        reader = hiredis.Reader()
        tls, fd = getattr(sock, "_sslobj", None), sock.fileno()
        raw = sock._sock if tls is None else None
        fed = []
        replies = 0
        while True:
            try:
                data = raw.recv(READ_SIZE) if tls is None else tls.read(READ_SIZE)
            except (BlockingIOError, ssl.SSLWantReadError):
                data = None
            except ssl.SSLZeroReturnError:
                data = b""
            if data is None or replies >= FLUSH_AFTER:
                for stream in fed:
                    stream.flush()
                fed.clear()
                replies = 0
                gevent.sleep(0)       # a busy feed must not starve requests and keep-alives
                if data is None:
                    wait_read(fd)
                    continue
            if not data:
                raise ConnectionResetError("Redis closed the connection")
            reader.feed(data)
            reply = reader.gets()
            while reply is not False:
                self._handle(reply, fed)
                replies += 1
                reply = reader.gets()

    def _handle(self, reply, fed):
        if not isinstance(reply, list) or len(reply) != 3:   # an error reply, or not pub/sub at all
            if self.cluster and isinstance(reply, Exception):   # MOVED, CLUSTERDOWN, ...: a new map
                raise MapChanged(f"the cluster answered: {reply}")
            self._drop_message("reply")
            return
        kind = reply[0]
        if kind == b"message" or kind == b"smessage":
            self._deliver(reply[1], reply[2], fed)
        elif kind == b"sunsubscribe":
            channel = reply[1].decode()
            due = self.unsubscribing.get(channel, 0)
            if due > 1:
                self.unsubscribing[channel] = due - 1
            elif due == 1:
                del self.unsubscribing[channel]
            elif channel in self.streams:   # unasked: its slot moved to another master
                raise MapChanged(f"Redis unsubscribed {channel}: its slot moved")
        elif kind == b"subscribe" or kind == b"ssubscribe":
            entry = self.acks.get(reply[1].decode())
            if entry is not None:
                entry[0] -= 1
                if entry[0] <= 0:
                    del self.acks[reply[1].decode()]
                    entry[1].set()
            self._resync_if_subscribed()
        elif kind != b"unsubscribe":
            self._drop_message("reply")

    def _deliver(self, channel, message, fed):
        group = self.streams.get(channel.decode())
        if not group:
            return
        if message == self._last_message:   # a direct push: the same bytes on every user's channel
            item, unread = self._last_item
        else:
            try:
                kind, item, unread = self._item(channel, message)
            except codec.Dropped as exc:
                self._drop_message(exc.reason)
                return
            if kind == "d":   # sealed for every channel: checked once, framed once
                self._last_message, self._last_item = message, (item, unread)
        if unread:
            for stream in group:
                if stream.offer(item if stream.customers is None else UNREAD_CHANGED):
                    fed.append(stream)
            return
        for stream in group:
            if (item[1] is None or stream.wants(item[1])) and stream.offer(item):
                fed.append(stream)

    def _item(self, channel, raw):
        """(kind, (seq or None, customer or None for every stream, frame), is it `unread`) of one
        published message, checked and framed once; raises codec.Dropped."""
        message = codec.decode(self.key, channel, raw)
        if message.kind == "n":
            return "n", (message.seq, message.customer, frames.notification(message.seq, message.body)), False
        if message.kind == "d":
            return "d", (None, message.customer, frames.direct(message.body)), False
        return "e", (None, message.customer, frames.named(message.name, message.body)), message.name == "unread"

    def _drop_message(self, reason):
        """Count it; say so in the log at most once a minute (never what it held)."""
        HUB_DROPPED.labels(reason).inc()
        self._dropped += 1
        now = time.monotonic()
        if now - self._dropped_logged_at >= DROP_LOG_EVERY:
            log.warning("hub: dropped %d channel message(s) that the service did not send or cannot frame"
                        " (latest: %s); see notif_hub_dropped_messages_total", self._dropped, reason)
            self._dropped, self._dropped_logged_at = 0, now


def _replies(sock, reader, count):
    """`count` replies read (blocking) from a socket used for plain commands."""
    out = []
    while len(out) < count:
        reply = reader.gets()
        if reply is False:
            data = sock.recv(65536)
            if not data:
                raise ConnectionResetError("Redis closed the connection")
            reader.feed(data)
            continue
        out.append(reply)
    return out


def hub(app):
    """The process's hub, created on first use (after gunicorn forked the worker)."""
    instance = app.extensions.get("stream_hub")
    if instance is None:
        instance = app.extensions["stream_hub"] = Hub(app.config["PUBSUB_URL"], app.config["REDIS_PREFIX"],
                                                      codec.message_key(app.config["SECRET_KEY"]))
    return instance
