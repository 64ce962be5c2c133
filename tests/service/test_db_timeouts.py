"""Bounded work per request: every pooled PostgreSQL connection has a statement timeout and an
idle-in-transaction timeout (app/db.py); the operators' long commands opt out explicitly."""
import threading
import uuid

import psycopg2
import pytest

from testkit.identity import make_token
from testkit.processes import wait_until

pytestmark = pytest.mark.timeout(120)


class TableLock:
    """Hold ACCESS EXCLUSIVE on a table from another session, so every query on it waits; released
    at the latest after `hold` seconds (so that code without a timeout ends the test too)."""

    def __init__(self, dsn, table, hold=15.0):
        self.conn = psycopg2.connect(dsn)
        with self.conn.cursor() as cur:
            cur.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        self.timer = threading.Timer(hold, self.release)
        self.timer.start()

    def release(self):
        self.timer.cancel()
        if not self.conn.closed:
            self.conn.rollback()
            self.conn.close()


@pytest.mark.slow
def test_a_query_past_the_statement_timeout_is_a_503_envelope_not_a_hang(clean, processes):
    web = processes.start_web(clean, DB_STATEMENT_TIMEOUT_MS=300)
    headers = {"Authorization": f"Bearer {make_token(uuid.uuid4())}"}
    assert web.get("/v1/notifications", headers=headers).status_code == 200
    lock = TableLock(clean["DATABASE_URL"], "notifications")      # the inbox query now waits on it
    try:
        response = web.get("/v1/notifications", headers=headers, timeout=30)
    finally:
        lock.release()
    assert response.status_code == 503, response.text
    assert response.json() == {"code": "notifications_m.query_timeout", "status": 503,
                               "message": "The query took too long and was stopped; narrow it or retry later"}
    # The worker's pool is whole: the next request is served.
    assert web.get("/v1/notifications", headers=headers).status_code == 200


def test_pool_connections_carry_both_timeouts_and_a_cancelled_one_stays_usable(make_app):
    from app import db
    app = make_app(DB_STATEMENT_TIMEOUT_MS=200, DB_IDLE_TX_TIMEOUT_MS=5000)
    with app.app_context(), db.connection() as conn:
        with conn.cursor() as cur:
            cur.execute("SHOW statement_timeout")
            assert cur.fetchone() == ("200ms",)
            cur.execute("SHOW idle_in_transaction_session_timeout")
            assert cur.fetchone() == ("5s",)
            with pytest.raises(psycopg2.errors.QueryCanceled):
                cur.execute("SELECT pg_sleep(30)")
        conn.rollback()
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
            assert cur.fetchone() == (1,)


def test_a_transaction_left_idle_is_ended_by_the_server(make_app, db):
    from app import db as app_db
    app = make_app(DB_IDLE_TX_TIMEOUT_MS=200)
    pool = app.extensions["db_pool"]
    conn = pool.get()
    with conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")            # a transaction is open from here on
        pid = cur.fetchone()[0]

    def gone():
        with db.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,))
            return cur.fetchone()[0] == 0
    wait_until(gone, 10, message="the server to end the idle transaction's session")
    with pytest.raises(psycopg2.OperationalError):
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
    pool.put(conn, broken=True)
    with app.app_context(), app_db.connection() as fresh, fresh.cursor() as cur:
        cur.execute("SELECT 1")                            # the pool hands out a live one instead
        assert cur.fetchone() == (1,)


def test_without_timeouts_lifts_the_limits_for_its_block_only(make_app):
    from app import db
    app = make_app(DB_STATEMENT_TIMEOUT_MS=200)
    with app.app_context(), db.connection() as conn:
        with db.without_timeouts(conn):
            with conn.cursor() as cur:
                cur.execute("SELECT pg_sleep(0.5)")        # longer than the pool's limit: not cancelled
                cur.execute("SHOW statement_timeout")
                assert cur.fetchone() == ("0",)
        with conn.cursor() as cur:
            cur.execute("SHOW statement_timeout")
            assert cur.fetchone() == ("200ms",)


def test_retention_purge_opts_out_and_outlasts_the_timeout(make_app, clean):
    """The purge's DELETE waits on a lock for longer than the statement timeout, and still finishes."""
    from app.history.retention import purge_exclusive
    app = make_app(DB_STATEMENT_TIMEOUT_MS=200)
    lock = TableLock(clean["DATABASE_URL"], "notifications", hold=1.0)
    try:
        assert purge_exclusive(app) == {"task": 0}
    finally:
        lock.release()


def test_migrate_opts_out(clean):
    """The release runs on its own connection: its session has no limit even where the URL sets one."""
    from psycopg2.extensions import make_dsn
    from app.migrate import migrate
    limited = make_dsn(clean["MIGRATION_DATABASE_URL"], options="-c statement_timeout=1")
    lock = TableLock(clean["MIGRATION_DATABASE_URL"], "schema_migrations", hold=1.0)
    try:
        assert migrate(limited, echo=lambda *_: None) == []
    finally:
        lock.release()


def test_audit_verify_opts_out(make_app, clean):
    app = make_app(DB_STATEMENT_TIMEOUT_MS=200)
    lock = TableLock(clean["MIGRATION_DATABASE_URL"], "audit_log", hold=1.0)     # the owner's lock
    try:
        result = app.test_cli_runner().invoke(args=["audit", "verify"])
    finally:
        lock.release()
    assert result.exit_code == 0, result.output
    assert "audit log intact" in result.output
