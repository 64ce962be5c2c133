"""Databases of a run's own, on the PostgreSQL server of DATABASE_URL (embedded when unset).

A test run, a fault scenario and a benchmark each create a database of their own on that server
(never touching the URL's own database), migrate it, and drop it at the end; between tests the
tables and the run's Redis are emptied (`clean`). One module, so the tests, bench/ and the fault
CLI create, name, empty and drop databases the same way.
"""
import os
import secrets
import time

import psycopg2
from psycopg2.extensions import make_dsn, parse_dsn

from testkit.identity import API_KEY, JWT_SECRET, OTHER_API_KEY


# The role web and worker connect as in every run (app/migrate.py creates and grants it): the tests
# prove the service works with the rights a deploy gives it, and no more. One name for the server
# (roles are shared by its databases), granted on each run's database.
APP_ROLE = "notifications_app"


def with_dbname(url, dbname):
    """The same server and credentials, another database."""
    params = parse_dsn(url)
    params["dbname"] = dbname
    return make_dsn(**params)


def as_app_role(url):
    """The same server and database, as the application role (no password: local trust, as the
    run's own server; a password in the owner URL is not the role's)."""
    params = parse_dsn(url)
    params.pop("password", None)
    params["user"] = APP_ROLE
    return make_dsn(**params)


class Database:
    """A database of its own on `server_url`'s server: created (migrated unless `migrated=False`)
    on construction, dropped by `drop()` or at the end of a `with` block."""

    def __init__(self, server_url, prefix="notif_test", migrated=True):
        self.name = f"{prefix}_{os.getpid()}_{secrets.token_hex(3)}"
        self.admin = psycopg2.connect(with_dbname(server_url, "postgres"))
        self.admin.autocommit = True
        self._run(f'CREATE DATABASE "{self.name}"')
        self.url = with_dbname(server_url, self.name)          # the owner's: migrations, cleaning, tampering
        self.app_url = as_app_role(self.url)                    # the service's
        if migrated:
            from app.migrate import release
            release(self.url, self.app_url, echo=lambda *_: None)

    def _run(self, sql, *args):
        with self.admin.cursor() as cur:
            cur.execute(sql, args)

    def scalar(self, sql, *args):
        """One value from the database (a connection of its own, closed at once)."""
        conn = psycopg2.connect(self.url)
        try:
            with conn.cursor() as cur:
                cur.execute(sql, args)
                return cur.fetchone()[0]
        finally:
            conn.close()

    def drop(self):
        if self.admin.closed:
            return
        self._run("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", self.name)
        self._run(f'DROP DATABASE IF EXISTS "{self.name}"')
        self.admin.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.drop()


def service_env(database_url, redis_url, **overrides):
    """The environment a service process of a run gets (web, worker): this run's database (the
    owner's URL given; the service connects as the application role) and Redis, the keys of
    testkit.identity, development values allowed, rate limits off unless turned on (the load of
    tests and scenarios exceeds them; the limits have tests of their own)."""
    env = {"DATABASE_URL": as_app_role(database_url), "MIGRATION_DATABASE_URL": database_url,
           "REDIS_URL": redis_url, "REDIS_PREFIX": "notif:",
           "JWT_SECRET": JWT_SECRET, "API_KEYS": f"{API_KEY},{OTHER_API_KEY}",
           "RATE_LIMITS_ENABLED": "false", "DEVELOPMENT": "true"}
    env.update(overrides)
    return env


def _truncate(cur, tables, attempts=20):
    """TRUNCATE locks table after table; a service process of an earlier test (a module-scoped
    gunicorn, a worker's relay) reading two of them in the other order can deadlock with it.
    PostgreSQL then aborts one side: ours is simply tried again."""
    for attempt in range(attempts):
        try:
            cur.execute("SET lock_timeout = '5s'; SET session_replication_role = replica")
            cur.execute("TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " CASCADE")
            return
        except (psycopg2.errors.DeadlockDetected, psycopg2.errors.LockNotAvailable):
            if attempt == attempts - 1:
                raise
            time.sleep(0.2)


def empty_tables(database_url):
    """Every table but the migration ledger emptied, as the owner (a superuser here: the audit's
    triggers refuse TRUNCATE to anyone, and `session_replication_role = replica` is how a test run
    steps past them). Only the tables holding rows are truncated (one
    query finds them): TRUNCATE gives each table and index a new file, which costs more than the
    look (measured in docs/testing.md), and most tests write to a few tables."""
    conn = psycopg2.connect(database_url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                        " AND tablename <> 'schema_migrations'")
            tables = [row[0] for row in cur.fetchall()]
            if tables:
                cur.execute(" UNION ALL ".join(f"(SELECT %s FROM \"{t}\" LIMIT 1)" for t in tables), tables)
                holding = [row[0] for row in cur.fetchall()]
                if holding:
                    _truncate(cur, holding)
    finally:
        conn.close()


def clean(database_url, redis_server):
    """Empty tables and an empty, running Redis: how every test and fault scenario starts. A fault
    scenario may have left the run's Redis stopped; it is started again here."""
    import redis
    try:
        redis.Redis.from_url(redis_server.url, socket_connect_timeout=1).ping()
    except redis.ConnectionError:
        redis_server.start()
    empty_tables(database_url)
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
