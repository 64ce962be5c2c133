"""Real services for the tests: PostgreSQL, a private Redis, RQ, gunicorn (helpers: testkit/).

A test run creates its own database (migrated once) on the PostgreSQL of
DATABASE_URL, or an embedded one when that is unset, and starts its own
redis-server on a free port, so runs never see each other's data and fault
tests may stop and start that Redis. Each test starts from empty tables and
an empty Redis.
"""
import uuid

import psycopg2
import pytest
import redis

from devtools.services import postgres_url, redis_server
from testkit import database
from testkit.apps import app_factory
from testkit.config_files import channel_config
from testkit.identity import bearer, make_token
from testkit.processes import ProcessGroup
from testkit.providers import FakeHTTP, FakeSMTP, FakeTwilio


@pytest.fixture(scope="session")
def pg_server():
    url, stop = postgres_url()
    yield url
    stop()


@pytest.fixture(scope="session")
def database_url(pg_server):
    """A database of this run's own, migrated from zero, dropped at the end."""
    with database.Database(pg_server) as db:
        yield db.url


@pytest.fixture
def empty_database(pg_server):
    """An empty database of its own on the run's server (no migration applied), dropped afterwards."""
    with database.Database(pg_server, prefix="notif_empty", migrated=False) as db:
        yield db.url


@pytest.fixture
def other_database(pg_server):
    """A second deployment's database on the same server, migrated; dropped afterwards."""
    with database.Database(pg_server, prefix="notif_other") as db:
        yield db.url


@pytest.fixture(scope="session")
def redis_proc():
    server = redis_server()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def base_env(database_url, redis_proc):
    """The environment a service process of this run gets (web, worker)."""
    return database.service_env(database_url, redis_proc.url)


@pytest.fixture
def clean(base_env, redis_proc):
    """Empty tables and an empty, running Redis before the test."""
    database.clean(base_env["MIGRATION_DATABASE_URL"], redis_proc)
    return base_env


@pytest.fixture
def make_app(clean):
    """make_app(**settings) -> an app on this run's services with settings over them (QUEUE_CONFIG,
    JWT settings, channel files, ...); every pool closed after the test."""
    with app_factory(clean) as factory:
        yield factory


@pytest.fixture
def channel_app(make_app, tmp_path):
    """channel_app(channels, events=None, attempts=3, backoff=(60, 600), templates=None, **settings) ->
    an app whose notifications.yaml and queue.yaml are written for these channels and events
    (testkit.config_files.channel_config), links made absolute with PUBLIC_URL unless given."""
    def factory(channels, events=None, attempts=3, backoff=(60, 600), templates=None, **settings):
        config = channel_config(tmp_path, channels, events, attempts, backoff, templates)
        return make_app(**{"PUBLIC_URL": "https://notify.example.com", **config, **settings})
    return factory


@pytest.fixture
def app(make_app):
    return make_app()


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


@pytest.fixture
def owner_db(clean):
    """A connection as the owner of the schema (autocommit): for what the service's own role may not
    do (tampering with the audit, altering tables)."""
    conn = psycopg2.connect(clean["MIGRATION_DATABASE_URL"])
    conn.autocommit = True
    yield conn
    conn.close()


@pytest.fixture
def user():
    """A user id and the headers that authenticate as that user."""
    user_id = uuid.uuid4()
    return user_id, {"Authorization": f"Bearer {make_token(user_id)}"}


@pytest.fixture
def rds(clean):
    """A client of the run's Redis (str replies), for reading and writing Redis directly."""
    client = redis.Redis.from_url(clean["REDIS_URL"], decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def streams():
    """streams(server, user_id=None, customers=None, headers=None, params=None, last_event_id=None)
    opens GET /v1/notifications/sse on a WebServer (as `user_id` when given); every stream opened is
    closed at the end of the test."""
    opened = []

    def open_stream(server, user_id=None, customers=None, headers=None, params=None, last_event_id=None):
        headers = dict(headers or {})
        if user_id is not None:
            headers.update(bearer(user_id, customers=customers))
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        stream = server.stream(headers=headers, params=params)
        opened.append(stream)
        return stream

    yield open_stream
    for stream in opened:
        stream.close()


@pytest.fixture
def smtp():
    """A real SMTP server (aiosmtpd) on a free port that keeps every message."""
    server = FakeSMTP().start()
    yield server
    server.stop()


@pytest.fixture
def endpoint():
    """A real HTTP server that records the JSON posted to it (webhooks, Apprise json://)."""
    server = FakeHTTP()
    yield server
    server.stop()


@pytest.fixture
def twilio():
    """A real HTTP server speaking the shape of Twilio's Messages API."""
    server = FakeTwilio()
    yield server
    server.stop()


@pytest.fixture
def processes(tmp_path):
    """Start real services for one test (start_web, start_worker); all are stopped (SIGTERM, then
    SIGKILL) at its end."""
    group = ProcessGroup(str(tmp_path))
    yield group
    group.stop_all()


def pytest_collection_modifyitems(items):
    """A test that starts service processes belongs to the slow loop: it must say so (pytest.ini's
    `slow` marker), so `./dev test -m "not slow"` stays fast."""
    unmarked = [item.nodeid for item in items
                if "processes" in item.fixturenames and item.get_closest_marker("slow") is None]
    if unmarked:
        raise pytest.UsageError("tests that start processes need @pytest.mark.slow: " + ", ".join(unmarked))
