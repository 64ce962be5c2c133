"""Real services for the tests: PostgreSQL, a private Redis, RQ, gunicorn.

A test run creates its own database (migrated once) on the PostgreSQL of
DATABASE_URL, or an embedded one when that is unset, and starts its own
redis-server on a free port, so runs never see each other's data and fault
tests may stop and start that Redis. Each test starts from empty tables and
an empty Redis.
"""
import os
import secrets
import time
import uuid

import jwt
import psycopg2
import pytest

from devtools.services import postgres_url, redis_server

JWT_SECRET = "test-secret-that-is-long-enough-for-hs256"
API_KEY = "test-api-key"
OTHER_API_KEY = "second-service-key"


def _admin_url(url, dbname):
    """The same server, another database name."""
    from psycopg2.extensions import make_dsn, parse_dsn
    params = parse_dsn(url)
    params["dbname"] = dbname
    return make_dsn(**params)


@pytest.fixture(scope="session")
def pg_server():
    url, stop = postgres_url()
    yield url
    stop()


@pytest.fixture(scope="session")
def database_url(pg_server):
    """A database of this run's own, migrated from zero, dropped at the end."""
    from app.migrate import migrate
    name = f"notif_test_{os.getpid()}_{secrets.token_hex(3)}"
    admin = psycopg2.connect(_admin_url(pg_server, "postgres"))
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    url = _admin_url(pg_server, name)
    migrate(url, echo=lambda *_: None)
    yield url
    with admin.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
    admin.close()


@pytest.fixture(scope="session")
def redis_proc():
    server = redis_server()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def base_env(database_url, redis_proc):
    """The environment a service process of this run gets (web, worker)."""
    return {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_proc.url,
        "REDIS_PREFIX": "notif:",
        "JWT_SECRET": JWT_SECRET,
        "API_KEYS": f"{API_KEY},{OTHER_API_KEY}",
        "RATE_LIMITS_ENABLED": "false",  # load tests exceed them; tests/test_ratelimit.py turns them on
        "DEVELOPMENT": "true",           # the test keys and secrets are short development values
    }


def _truncate(cur, tables, attempts=20):
    """TRUNCATE locks table after table; a service process of an earlier test (a module-scoped
    gunicorn, a worker's relay) reading two of them in the other order can deadlock with it.
    PostgreSQL then aborts one side: ours is simply tried again."""
    for attempt in range(attempts):
        try:
            cur.execute("SET lock_timeout = '5s'")
            cur.execute("TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " CASCADE")
            return
        except (psycopg2.errors.DeadlockDetected, psycopg2.errors.LockNotAvailable):
            if attempt == attempts - 1:
                raise
            time.sleep(0.2)


def _clean(database_url, redis_url):
    conn = psycopg2.connect(database_url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                    " AND tablename <> 'schema_migrations'")
        tables = [row[0] for row in cur.fetchall()]
        if tables:
            _truncate(cur, tables)
    conn.close()
    import redis
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    client.close()


def _ensure_running(server):
    """A fault test may have left the run's Redis stopped; the next test gets it back."""
    import redis
    try:
        redis.Redis.from_url(server.url, socket_connect_timeout=1).ping()
    except redis.ConnectionError:
        server.start()


@pytest.fixture
def clean(base_env, redis_proc):
    """Empty tables and an empty Redis before the test."""
    _ensure_running(redis_proc)
    _clean(base_env["DATABASE_URL"], base_env["REDIS_URL"])
    return base_env


@pytest.fixture
def app(clean):
    from app import create_app
    application = create_app(dict(clean))
    application.config["TESTING"] = True
    yield application
    application.extensions["db_pool"].close()


@pytest.fixture
def make_app(clean):
    """Build apps with config overrides (QUEUE_CONFIG, JWT settings, …); pools closed after the test."""
    from app import create_app
    made = []

    def factory(**overrides):
        application = create_app(dict(clean, **overrides))
        application.config["TESTING"] = True
        made.append(application)
        return application

    yield factory
    for application in made:
        application.extensions["db_pool"].close()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def db(clean):
    """A direct connection for asserting on stored rows (autocommit)."""
    conn = psycopg2.connect(clean["DATABASE_URL"])
    conn.autocommit = True
    yield conn
    conn.close()


def make_token(user_id=None, customers=None, exp_in=300, secret=JWT_SECRET, **claims):
    """A signed user token; every part can be spoiled for the auth tests."""
    payload = {"sub": str(user_id or uuid.uuid4())}
    if exp_in is not None:
        payload["exp"] = int(time.time()) + exp_in
    if customers is not None:
        payload["customers"] = [str(c) for c in customers]
    payload.update(claims)
    return jwt.encode(payload, secret, algorithm="HS256")


@pytest.fixture
def user():
    """A user id and the headers that authenticate as that user."""
    user_id = uuid.uuid4()
    return user_id, {"Authorization": f"Bearer {make_token(user_id)}"}


SERVICE = {"X-API-Key": API_KEY}


def pytest_configure(config):
    config.addinivalue_line("markers", "faults: fault scenarios against real processes (tests/test_faults.py)")
