"""PostgreSQL access: a small blocking pool, a connection per request, transactions.

The pool blocks (cooperatively, under gevent) when all connections are out,
instead of failing like psycopg2's own pools; a connection that broke (server
restart) is dropped rather than handed out again, so the service heals by
itself when PostgreSQL comes back.

Every pooled connection starts with a `statement_timeout` and an
`idle_in_transaction_session_timeout` (DB_STATEMENT_TIMEOUT_MS,
DB_IDLE_TX_TIMEOUT_MS): a query that runs away (stats over years, a huge
OFFSET, a lock wait) is cancelled by the server and answered 503
`query_timeout` instead of holding a pool slot without end. Operators' long
commands opt out explicitly with `without_timeouts(conn)`.
"""
import contextlib
import hashlib
import logging
import re
import threading
import uuid

import psycopg2
import psycopg2.errors
import psycopg2.extras
from flask import current_app, g

from .errors import ConfigError, QueryTimeout, ServiceUnavailable

psycopg2.extras.register_uuid()
log = logging.getLogger(__name__)


class Locks:
    """Every PostgreSQL advisory lock the service takes, in one table: their ids are shared by
    every process on the database, so two uses must never pick the same one."""

    MIGRATIONS = 7_245_001    # one release migrates at a time (app/migrate.py)
    SEQUENCE = 7_245_002      # notification ids committed and published in order (app/dispatch/repository.py)
    AUDIT_SEAL = 7_245_003    # one audit sealer at a time (app/audit/chain.py)
    RETENTION = 7_245_004     # one history maintenance pass at a time: retention or compaction (app/history/)
    BIG_TRIGGER = 7_245_005   # with hashtext(trigger id): one job per big trigger (app/dispatch/repository.py)
    CONSENT = 7_245_020       # with hashtext(user id): one writer of a user's consent ledger (app/consent/)


# ------------------------------------------------------------------------------ prepared statements

_PREPARED = {}                     # (id(conn), backend pid) -> {statement name: its parameters' types}
_NAMED = re.compile(r"%\((\w+)\)s")


def execute_prepared(cur, sql, params):
    """`cur.execute(sql, params)` (psycopg2's `%(name)s` parameters) as the EXECUTE of a statement
    prepared on this connection the first time it runs there, with a generic plan.

    Why: planning a query over the partitioned history (docs/history.md) costs more than running
    it — every partition and each of its indexes is planned for, per request (7 ms of a 10 ms
    inbox request at 13 partitions). A generic plan is made once per connection and prunes the
    partitions when it runs. `plan_cache_mode` is set for the rest of the transaction only, so
    other statements (the triggers' functions) keep PostgreSQL's own choice."""
    conn = cur.connection
    names = list(dict.fromkeys(_NAMED.findall(sql)))
    text = _NAMED.sub(lambda match: f"${names.index(match.group(1)) + 1}", sql)
    name = "q_" + hashlib.sha1(text.encode()).hexdigest()[:24]
    key = (id(conn), conn.info.backend_pid)
    prepared = _PREPARED.get(key)
    if prepared is None:
        if len(_PREPARED) > 10_000:  # connections come and go (a restarted server): forget the old ones
            _PREPARED.clear()
        prepared = _PREPARED[key] = {}
    if name not in prepared:
        cur.execute(f"PREPARE {name} AS {text}")    # kept by the session whatever its transaction does
        with conn.cursor() as plain:
            plain.execute("SELECT parameter_types::text[] FROM pg_prepared_statements WHERE name = %s", (name,))
            prepared[name] = list(plain.fetchone()[0])
    # each argument cast to its parameter's type: a list of strings is text[] to PostgreSQL, not uuid[]
    arguments = (f"({', '.join(f'%({n})s::{kind}' for n, kind in zip(names, prepared[name]))})"
                 if names else "")
    cur.execute(f"SET LOCAL plan_cache_mode = force_generic_plan; EXECUTE {name}{arguments}", params)


def with_timeouts(dsn, statement_ms, idle_in_transaction_ms):
    """`dsn` whose sessions start with these limits (0: none), set as startup options, so no
    round trip and no transaction can undo them; any `options` the dsn has are kept."""
    from psycopg2.extensions import make_dsn, parse_dsn
    options = " ".join(filter(None, [parse_dsn(dsn).get("options", ""),
                                     f"-c statement_timeout={int(statement_ms)}",
                                     f"-c idle_in_transaction_session_timeout={int(idle_in_transaction_ms)}"]))
    return make_dsn(dsn, options=options)


def check_certificate(dsn, name="DATABASE_URL"):
    """Refuse to start when DATABASE_URL asks for the server's certificate to be verified
    (`sslmode=verify-ca` / `verify-full`) and it is not: a wrong `sslrootcert` or host name is a
    configuration error (one line, exit 2), not a service answering 503 for ever. A server that
    cannot be reached is not refused: it may come up after this process."""
    from psycopg2.extensions import parse_dsn
    try:
        if parse_dsn(dsn).get("sslmode") not in ("verify-ca", "verify-full"):
            return
    except psycopg2.ProgrammingError:
        return   # not a DSN at all: the first connection says so
    try:
        psycopg2.connect(dsn, connect_timeout=5).close()
    except psycopg2.OperationalError as exc:
        reason = " ".join(str(exc).split())
        if "certificate" in reason or "SSL" in reason:
            raise ConfigError("environment", name, f"PostgreSQL's TLS certificate is refused: {reason}") from None


def broken_by(exc):
    """A connection that raised this cannot be used again (a cancelled statement leaves it usable)."""
    return isinstance(exc, (psycopg2.OperationalError, psycopg2.InterfaceError)) \
        and not isinstance(exc, psycopg2.errors.QueryCanceled)


class Pool:
    """At most `size` connections; `get` waits up to `timeout` seconds for one."""

    def __init__(self, dsn, size=10, timeout=5.0, connect_timeout=5):
        self.dsn, self.size, self.timeout, self.connect_timeout = dsn, size, timeout, connect_timeout
        self._idle = []
        self._slots = threading.BoundedSemaphore(size)
        self._lock = threading.Lock()

    def get(self):
        if not self._slots.acquire(timeout=self.timeout):
            raise ServiceUnavailable("The database is busy; retry later")
        try:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None or conn.closed:
                conn = psycopg2.connect(self.dsn, connect_timeout=self.connect_timeout)
            return conn
        except Exception:
            self._slots.release()
            raise

    def put(self, conn, broken=False):
        """Return a connection; a broken or mid-transaction one is closed instead."""
        try:
            if not broken and not conn.closed:
                try:
                    if conn.status != psycopg2.extensions.STATUS_READY:
                        conn.rollback()
                except psycopg2.Error:
                    broken = True
            if broken or conn.closed:
                with contextlib.suppress(Exception):
                    conn.close()
            else:
                with self._lock:
                    self._idle.append(conn)
        finally:
            self._slots.release()

    def close(self):
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            with contextlib.suppress(Exception):
                conn.close()

    @contextlib.contextmanager
    def connection(self):
        """A connection for the block; rolled back unless the block committed."""
        conn = self.get()
        broken = False
        try:
            yield conn
        except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
            broken = broken_by(exc)
            raise
        finally:
            self.put(conn, broken)


def pool():
    return current_app.extensions["db_pool"]


def get_conn():
    """The request's connection, checked out on first use and returned at teardown."""
    if "db_conn" not in g:
        g.db_conn = pool().get()
    return g.db_conn


def connection():
    """A connection outside a request (jobs, CLI), returned when the block ends."""
    return pool().connection()


@contextlib.contextmanager
def transaction(conn):
    """Commit when the block succeeds, roll back when it raises."""
    try:
        yield conn
        conn.commit()
    except BaseException:
        with contextlib.suppress(psycopg2.Error):
            conn.rollback()
        raise


@contextlib.contextmanager
def session_lock(conn, key):
    """Yield whether the session-level advisory lock `key` was free (taken then, for the block).
    Session-level: it outlives the commits of a long pass made of short transactions. Call it on
    an idle connection; at the end an unfinished transaction is rolled back and the lock let go."""
    with conn.cursor() as cur:
        cur.execute("SELECT pg_try_advisory_lock(%s)", (key,))
        got = cur.fetchone()[0]
    conn.commit()
    try:
        yield got
    finally:
        if got:
            conn.rollback()
            with conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_unlock(%s)", (key,))
            conn.commit()


@contextlib.contextmanager
def autocommit(conn):
    """Every statement its own transaction, with no BEGIN or COMMIT round trips."""
    conn.autocommit = True
    try:
        yield conn
    finally:
        if not conn.closed:
            conn.autocommit = False


def one_transaction(conn, statements):
    """Send (sql, params) statements as one query string on an autocommit connection: PostgreSQL
    runs a multi-statement query as one implicit transaction, all or nothing, committed when the
    call returns. One round trip, where BEGIN, each statement and COMMIT would each be one."""
    with conn.cursor() as cur:
        cur.execute(b"; ".join(cur.mogrify(sql, params) for sql, params in statements))


@contextlib.contextmanager
def without_timeouts(conn):
    """Lift the pool's statement and idle-in-transaction limits for the block: the opt-out of the
    operators' long commands (retention purge, audit verify). Call it on an idle connection (it
    commits its SETs); at the end an unfinished transaction is rolled back, as the pool would,
    and the limits come back, or the connection is closed so that the pool drops it."""
    with conn.cursor() as cur:
        cur.execute("SET statement_timeout = 0; SET idle_in_transaction_session_timeout = 0")
    conn.commit()
    try:
        yield conn
    finally:
        if not conn.closed:
            try:
                conn.rollback()
                with conn.cursor() as cur:
                    cur.execute("RESET statement_timeout; RESET idle_in_transaction_session_timeout")
                conn.commit()
            except psycopg2.Error:
                conn.close()


def uuid_array(values):
    """A list of UUIDs (objects or canonical strings) as one `uuid[]` literal: `{a,b,...}`.

    One string parameter instead of psycopg2 quoting every element: the write
    path passes thousands per chunk. Only hex digits and dashes get in (every
    value goes through uuid.UUID), so nothing needs escaping.
    Strings already in canonical form (what PostgreSQL's `uuid::text` gives: the fan-out's rows) are
    checked all at once by one regular expression instead of parsing each (a quarter of a fan-out
    worker's time went to making and printing UUID objects).
    """
    values = list(values)
    if values and all(type(v) is str for v in values):
        joined = ",".join(values)
        if _CANONICAL_LIST.fullmatch(joined):
            return "{" + joined + "}"
    return "{" + ",".join(str(v if isinstance(v, uuid.UUID) else uuid.UUID(v)) for v in values) + "}"


_UUID_TEXT = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_CANONICAL_LIST = re.compile(f"{_UUID_TEXT}(?:,{_UUID_TEXT})*")


def cursor(conn):
    return conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor)


def _teardown(exc):
    conn = g.pop("db_conn", None)
    if conn is not None:
        broken = broken_by(exc)
        if not broken and not conn.closed:
            try:
                conn.rollback()
            except psycopg2.Error:
                broken = True
        pool().put(conn, broken)


def init_app(app):
    dsn = with_timeouts(app.config["DATABASE_URL"], app.config["DB_STATEMENT_TIMEOUT_MS"],
                        app.config["DB_IDLE_TX_TIMEOUT_MS"])
    app.extensions["db_pool"] = Pool(dsn, app.config["DB_POOL_SIZE"], app.config["DB_POOL_TIMEOUT"])
    app.teardown_appcontext(_teardown)


@contextlib.contextmanager
def failing_as(api_error):
    """Report a database failure as the endpoint's own SPEC code.

    Connection-level failures (server down or restarting) stay as they are, so
    the handler answers 503 and the client knows to retry; so does a statement
    the server cancelled at `statement_timeout` (503 `query_timeout`).
    """
    try:
        yield
    except psycopg2.errors.QueryCanceled:
        raise QueryTimeout()
    except (psycopg2.OperationalError, psycopg2.InterfaceError):
        raise
    except psycopg2.Error:
        log.exception("database error")
        raise api_error()


@contextlib.contextmanager
def reading(api_error):
    """The request's connection for a read; a database failure is the endpoint's `api_error`."""
    with failing_as(api_error):
        yield get_conn()


@contextlib.contextmanager
def writing(api_error):
    """The request's connection in one transaction, committed when the block succeeds; a database
    failure is the endpoint's `api_error`."""
    conn = get_conn()
    with failing_as(api_error), transaction(conn):
        yield conn
