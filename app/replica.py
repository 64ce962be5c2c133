"""Reads from a PostgreSQL streaming replica (DATABASE_REPLICA_URL), never a stale answer to a user.

Inbox lists and counts, stats and stream replays are most of the database's reads; a physical
replica (`pg_basebackup -R`) can answer them, the primary keeping its capacity for the writes.
What a replica may show is bounded three ways, all by LSN comparisons (docs/scaling.md):

- **lag**: about once a second, a process samples the primary's flushed WAL position
  (`pg_current_wal_flush_lsn()`, time-stamped here) and then the replica's replayed position
  (`pg_last_wal_replay_lsn()`). The replica's lag is the age of the newest primary sample it has
  replayed past. Past REPLICA_MAX_LAG_SECONDS, or down, or promoted (no longer in recovery), it
  gets no reads until a later probe finds it well. Both functions are open to any role; the
  replication views' details (`pg_stat_wal_receiver`) are not, so they are not used.
- **the user's own writes** (read-your-writes): after a user's change commits, the primary's
  flushed LSN (which covers that commit) is kept in Redis under the user, for
  REPLICA_MAX_LAG_SECONDS. While the replica has not replayed past it, that user's reads go to the
  primary. After the key expires no check is needed: a replica within the lag bound has replayed
  a primary sample taken after the write, hence the write.
- **stream replays**: a stream subscribes first and then reads what it missed; anything
  committed before the subscription must be in that read, or it is lost (it was published before
  anyone listened). So a replay uses the replica only once the replica has replayed past a
  primary sample taken after the replay began (so after the subscription); it waits up to
  REPLICA_WAIT_SECONDS for that, then reads the primary. Concurrent replays share one sample.

A replica that fails during a read is marked down for DOWN_SECONDS and the read is done again on
the primary; a statement cancelled by a recovery conflict is redone on the primary too. Each read
routed while a replica is configured counts in `notif_replica_reads_total{target,reason}`.
Without DATABASE_REPLICA_URL nothing here runs and every read is the primary's, as before.
"""
import contextlib
import logging
import threading
import time
from collections import deque

import psycopg2
import psycopg2.errors
from flask import current_app

from . import bus, db
from .errors import ServiceUnavailable
from .metrics import REPLICA_LAG, REPLICA_READS

log = logging.getLogger(__name__)
_UNUSABLE = (psycopg2.Error, ServiceUnavailable)   # ServiceUnavailable: its pool has no free connection
PROBE_SECONDS = 1.0          # a lag measurement older than this is taken again
DOWN_SECONDS = 5.0           # a replica that failed gets no reads for this long
REPLICA_WAIT_SECONDS = 0.2   # a replay waits at most this for the replica to pass its sample
POLL_SECONDS = 0.01
CONNECT_TIMEOUT = 2          # seconds: an unreachable replica costs a probe this, not the pool's 5
_WROTE = """local v = redis.call('GET', KEYS[1])
if not v or v < ARGV[1] then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) end"""


def lsn(text):
    """'16/B374D848' -> an int (None stays None): PostgreSQL's pg_lsn, comparable here."""
    if text is None:
        return None
    high, low = text.split("/")
    return (int(high, 16) << 32) | int(low, 16)


class Router:
    """One per process: the replica's pool, its last measured state and the primary's samples."""

    def __init__(self, app):
        config = app.config
        dsn = db.with_timeouts(config["DATABASE_REPLICA_URL"], config["DB_STATEMENT_TIMEOUT_MS"],
                               config["DB_IDLE_TX_TIMEOUT_MS"])
        self.pool = db.Pool(dsn, config["DB_POOL_SIZE"], config["DB_POOL_TIMEOUT"], connect_timeout=CONNECT_TIMEOUT)
        self.primary_pool = app.extensions["db_pool"]
        self.max_lag = config["REPLICA_MAX_LAG_SECONDS"]
        self.samples = deque()         # (monotonic time sent, primary flushed LSN), oldest first
        self.replayed = None           # the replica's replayed LSN at its last probe
        self.replay_age = None         # seconds since the last transaction it replayed committed
        self.lag = float("inf")
        self.probed_at = float("-inf")
        self.down_until = float("-inf")
        self._lock = threading.Lock()

    # -- measuring --------------------------------------------------------------------------------
    def _sample_primary(self):
        sent = time.monotonic()
        with self.primary_pool.connection() as conn, conn.cursor() as cur:
            cur.execute("SELECT pg_current_wal_flush_lsn()::text")
            position = lsn(cur.fetchone()[0])
            conn.rollback()
        self.samples.append((sent, position))
        while len(self.samples) > 1 and self.samples[0][0] < sent - self.max_lag - 2 * PROBE_SECONDS:
            self.samples.popleft()

    def _read_replayed(self):
        with self.pool.connection() as conn, conn.cursor() as cur:
            cur.execute("SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text,"
                        " extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8")
            recovering, replayed, self.replay_age = cur.fetchone()
            conn.rollback()
        if not recovering:   # promoted: a primary of its own, whose history may differ from ours
            raise psycopg2.OperationalError("DATABASE_REPLICA_URL is not in recovery")
        self.replayed = lsn(replayed)

    def _measure(self):
        """The lag: how old the newest primary sample the replica has replayed past is; when it
        has replayed none of those this process took (it just started, or is far behind), how
        old the last transaction it replayed is, by the replica's clock. Either way, a replica
        `lag` behind has every transaction committed more than `lag` ago (WAL replays in order)."""
        now = time.monotonic()
        passed = [sent for sent, position in self.samples if position <= self.replayed]
        if passed:
            self.lag = now - passed[-1]
        else:
            self.lag = float("inf") if self.replay_age is None else max(0.0, self.replay_age)
        self.probed_at = now
        REPLICA_LAG.set(min(self.lag, 1e9))

    def probe(self, after=None):
        """Measure again when the last probe is a second old (or began before `after`, a
        monotonic time); False when the replica is down, or when another greenlet's probe holds
        the lock past REPLICA_WAIT_SECONDS (an unreachable replica: reads must not queue behind
        its connect timeout)."""
        now = time.monotonic()
        if after is None and now - self.probed_at < PROBE_SECONDS and now >= self.down_until:
            return True   # the usual case: measured within the second, no lock taken
        if not self._lock.acquire(timeout=REPLICA_WAIT_SECONDS):
            return False
        try:
            now = time.monotonic()
            if now < self.down_until:
                return False
            fresh = self.samples and self.samples[-1][0] >= after if after is not None \
                else now - self.probed_at < PROBE_SECONDS
            if fresh:
                return True
            try:
                self._sample_primary()
                self._read_replayed()
            except _UNUSABLE as exc:
                self.failed(exc)
                return False
            self._measure()
            return True
        finally:
            self._lock.release()

    def failed(self, exc):
        log.warning("replica unusable for %gs (%s)", DOWN_SECONDS, " ".join(str(exc).split())[:200])
        self.down_until = time.monotonic() + DOWN_SECONDS
        self.lag = float("inf")
        REPLICA_LAG.set(1e9)

    def _caught_up_with(self, position):
        """Wait (bounded) until the replica has replayed `position`."""
        deadline = time.monotonic() + REPLICA_WAIT_SECONDS
        while self.replayed is None or self.replayed < position:
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL_SECONDS)
            if not self._lock.acquire(timeout=REPLICA_WAIT_SECONDS):
                return False
            try:
                self._read_replayed()
            except _UNUSABLE as exc:
                self.failed(exc)
                return False
            finally:
                self._lock.release()
        return True

    # -- choosing ---------------------------------------------------------------------------------
    def choose(self, user_id=None, since=None):
        """('replica', 'ok') or ('primary', why)."""
        if not self.probe(since):
            return "primary", "down"
        if self.lag > self.max_lag:
            return "primary", "lagging"
        if since is not None and not self._caught_up_with(self.samples[-1][1]):
            return "primary", "catching_up"
        if user_id is not None:
            written = _own_write(user_id)
            if written is None or (written and written > self.replayed):
                return "primary", "own_write"
        return "replica", "ok"


def router(app=None):
    app = app or current_app
    return app.extensions.get("replica_router")


def _key(user_id):
    return bus.key("replica", "wrote", user_id)


def _own_write(user_id):
    """The LSN of the user's latest change still within the lag bound (0: none); None when Redis
    cannot say (the caller reads the primary)."""
    try:
        value = bus.redis().get(_key(user_id))
    except Exception as exc:  # Redis down: no proof the replica has the user's writes
        log.debug("own-write LSN unreadable (%s)", type(exc).__name__)
        return None
    return int(value, 16) if value else 0


def wrote(conn, user_id):
    """After a user's change committed on `conn`: their reads go to the primary until the replica
    has replayed it. A no-op without a replica."""
    instance = router()
    if instance is None:
        return
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_current_wal_flush_lsn()::text")
            position = lsn(cur.fetchone()[0])
        conn.rollback()
        bus.redis().eval(_WROTE, 1, _key(user_id), f"{position:016x}", int(instance.max_lag * 1000) + 1000)
    except Exception as exc:  # the change is made; a replica read within the lag may miss it
        log.warning("own-write LSN not recorded (%s)", type(exc).__name__)


_RETRY_ON_PRIMARY = (psycopg2.OperationalError, psycopg2.InterfaceError, psycopg2.errors.SerializationFailure,
                     ServiceUnavailable)


def run(instance, fn, primary, user_id=None, since=None):
    """fn(conn) on the replica of `instance` (a Router, or None: no replica) when it may answer
    for `user_id` (and for a replay that began at `since`, a monotonic time), else, or when the
    replica fails, on a connection of `primary()` (a context manager)."""
    if instance is not None:
        target, reason = instance.choose(user_id, since)
        if target == "replica":
            try:
                with instance.pool.connection() as conn:
                    result = fn(conn)
                REPLICA_READS.labels("replica", "ok").inc()
                return result
            except _RETRY_ON_PRIMARY as exc:
                if isinstance(exc, psycopg2.errors.QueryCanceled):
                    raise   # statement_timeout: the query is too slow anywhere
                if isinstance(exc, psycopg2.Error) and db.broken_by(exc):
                    instance.failed(exc)
                reason = "failed"
        REPLICA_READS.labels("primary", reason).inc()
    with primary() as conn:
        return fn(conn)


def read(api_error, fn, user_id=None):
    """A request's read: fn(conn) on the replica or the request's primary connection; a database
    failure is the endpoint's `api_error` (as `db.reading`)."""
    with db.failing_as(api_error):
        return run(router(), fn, lambda: contextlib.nullcontext(db.get_conn()), user_id)


def init_app(app):
    if app.config["DATABASE_REPLICA_URL"]:
        app.extensions["replica_router"] = Router(app)
