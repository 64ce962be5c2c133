"""No email or SMS sent twice when the worker dies just after the provider accepted (issue 10).

A real worker process (`python -m workers`) sends to a real local provider (aiosmtpd, the
Twilio-shaped server, a webhook endpoint, Apprise's json://); the test kills it with SIGKILL
(its whole process group) at the moment that matters. Then a job for the same delivery runs
again, as the relay runs one once the claim lease has passed (the lease is fast-forwarded),
and the provider must not get the message a second time.
"""
import os
import signal

import psycopg2
import pytest

from testkit.api import deliveries, put_contact, trigger
from testkit.config_files import channel_config
from testkit.jobs import run_jobs
from testkit.processes import wait_until
from testkit.providers import FakeHTTP, FakeSMTP, FakeTwilio

pytestmark = pytest.mark.timeout(120)
PHONE = "+14155550100"


@pytest.fixture
def build(make_app, clean, tmp_path):
    """build(channels, **settings) -> (in-process app, environment of a worker process), both sending
    chat.message_received on the given channels."""
    def make(channels, **settings):
        events = {"chat": {"message_received": ["system", *channels]}}
        config = channel_config(tmp_path, channels, events, attempts=3, backoff=(60, 600))
        settings = dict(config, **settings)
        return make_app(**settings), dict(clean, **settings)
    return make


@pytest.fixture
def provider():
    """provider(kind) -> (a started local provider, its channel options, extra settings)."""
    started = []

    def make(kind):
        if kind == "email":
            server = FakeSMTP().start()
            options = {"email": {"enabled": True}}
            settings = dict(MAIL_SERVER="127.0.0.1", MAIL_PORT=str(server.port), MAIL_TIMEOUT="5",
                            MAIL_DEFAULT_SENDER="notify@bank.example")
        elif kind == "sms":
            server = FakeTwilio()
            options = {"sms": {"type": "twilio", "base_url": server.url, "account_sid": server.account_sid,
                               "auth_token": server.auth_token, "from": server.sender, "timeout": 5}}
            settings = {}
        elif kind == "webhook":
            server = FakeHTTP()
            options = {"webhook": {"type": "webhook", "url": server.url + "/hook", "timeout": 5}}
            settings = {}
        else:
            server = FakeHTTP()
            options = {"apprise": {"type": "apprise", "urls": [f"json://127.0.0.1:{server.port}/hook"]}}
            settings = {}
        started.append(server)
        return server, options, settings
    yield make
    for server in started:
        server.stop()


def received(server):
    """What the provider took: messages (SMTP) or requests (HTTP)."""
    return server.messages if isinstance(server, FakeSMTP) else server.requests


def kill(worker):
    """SIGKILL the worker's process group, as a crashed machine would (RQ's scheduler child too)."""
    try:
        os.killpg(worker.proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run_again(app, db, channel):
    """What the relay does once the claim lease of a killed send has passed: a job for the
    delivery runs again. Returns deliver()'s answer."""
    from app.deliveries.deliver import deliver
    with db.cursor() as cur:
        cur.execute("UPDATE deliveries SET locked_until = now() - interval '1 second' WHERE status = 'sending'")
        cur.execute("SELECT id FROM deliveries WHERE channel = %s", (channel,))
        (delivery_id,) = cur.fetchone()
    with app.app_context():
        return deliver(delivery_id)


def start(app, env, processes, user_id, **contact):
    """A worker process, the user's contact, and the trigger it will deliver."""
    worker = processes.start_worker(env)
    client = app.test_client()
    put_contact(client, user_id, **contact)
    trigger(client, [user_id])
    return worker, client


@pytest.mark.slow
def test_worker_killed_at_quit_does_not_send_the_email_again(build, provider, processes, user, db):
    user_id, headers = user
    smtp, options, settings = provider("email")
    app, env = build(options, **settings)
    worker = None
    smtp.on_quit = lambda: kill(worker)
    worker, client = start(app, env, processes, user_id, email="someone@example.org")
    wait_until(lambda: not worker.alive, 60, message=lambda: f"the kill at QUIT\n{worker.output()[-2000:]}")
    assert worker.proc.returncode == -signal.SIGKILL
    assert len(smtp.messages) == 1
    message_id = smtp.messages[0]["message"]["Message-ID"]

    assert run_again(app, db, "email") == "not-claimable"
    assert len(smtp.messages) == 1
    email = deliveries(client, headers)["email"]
    assert (email["status"], email["attempts"], email["provider_message_id"]) == ("sent", 1, message_id)
    assert [(a["outcome"], a["provider_message_id"]) for a in email["history"]] == [("sent", message_id)]


def _waiting_record(db):
    """The text of a query of another backend of this database that waits for a lock, or None."""
    with db.cursor() as cur:
        cur.execute("SELECT query FROM pg_stat_activity WHERE datname = current_database()"
                    " AND pid <> pg_backend_pid() AND wait_event_type = 'Lock'")
        row = cur.fetchone()
        return row[0] if row else None


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["email", "sms", "webhook", "apprise"])
def test_worker_killed_with_its_record_in_flight_sends_nothing_twice(build, provider, processes, user, db,
                                                                     clean, kind):
    """The record is one statement that reaches PostgreSQL before the worker does anything else:
    holding the delivery row locked while the provider accepts (email: from RCPT on, as the
    record goes out right after the message, before the answer) makes that statement wait
    inside the server; the worker is killed then, and the statement still completes, whole."""
    user_id, headers = user
    server, options, settings = provider(kind)
    channel = next(iter(options))
    app, env = build(options, **settings)
    lock = psycopg2.connect(clean["DATABASE_URL"])
    try:
        def hold_the_row():
            with lock.cursor() as cur:
                cur.execute("SELECT 1 FROM deliveries WHERE channel = %s FOR UPDATE", (channel,))
        if kind == "email":   # the record leaves with the message's final dot, before the answer
            server.on_rcpt = hold_the_row
        else:
            server.on_request = hold_the_row
        worker, client = start(app, env, processes, user_id, email="someone@example.org", phone=PHONE)
        record = wait_until(lambda: _waiting_record(db), 60,
                            message=lambda: f"the worker's record\n{worker.output()[-2000:]}")
        assert "UPDATE deliveries" in record and "INSERT INTO delivery_attempts" in record, record
        kill(worker)
        wait_until(lambda: not worker.alive, 10, message="the worker's death")
        lock.rollback()
        wait_until(lambda: _status(db, channel) == "sent", 10, message=lambda: _status(db, channel))
    finally:
        lock.close()
    assert len(received(server)) == 1
    assert run_again(app, db, channel) == "not-claimable"
    assert len(received(server)) == 1
    delivery = deliveries(client, headers)[channel]
    assert (delivery["status"], delivery["attempts"]) == ("sent", 1)
    assert [a["outcome"] for a in delivery["history"]] == ["sent"]
    assert delivery["history"][0]["provider_message_id"] == delivery["provider_message_id"]
    if kind != "apprise":   # Apprise reports no id
        assert delivery["provider_message_id"]


def _status(db, channel):
    with db.cursor() as cur:
        cur.execute("SELECT status FROM deliveries WHERE channel = %s", (channel,))
        row = cur.fetchone()
        return row[0] if row else None


@pytest.mark.parametrize("kind", ["email", "sms"])
def test_record_whose_connection_breaks_is_completed_on_a_fresh_one(build, provider, user, db, kind):
    """PostgreSQL drops the worker's connections while the provider accepts (as a restart would):
    the acceptance is recorded on a new connection, not left to a resend after the lease."""
    user_id, headers = user
    server, options, settings = provider(kind)
    channel = next(iter(options))
    app, _ = build(options, **settings)
    client = app.test_client()
    put_contact(client, user_id, email="someone@example.org", phone=PHONE)
    trigger(client, [user_id])
    dropped = []

    def drop_connections():
        with db.cursor() as cur:
            cur.execute("SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000)) FROM pg_stat_activity"
                        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                        " AND backend_type = 'client backend'")
            dropped.append(cur.fetchone()[0])
    if kind == "email":
        server.on_data = drop_connections
    else:
        server.on_request = drop_connections
    run_jobs(app)
    assert dropped and dropped[0] >= 1
    assert len(received(server)) == 1
    app.extensions["db_pool"].close()   # idle connections it may still hold were dropped too
    assert run_again(app, db, channel) == "not-claimable"
    assert len(received(server)) == 1
    delivery = deliveries(client, headers)[channel]
    assert (delivery["status"], delivery["attempts"]) == ("sent", 1)
    assert [a["outcome"] for a in delivery["history"]] == ["sent"]
    assert delivery["provider_message_id"] and \
        delivery["history"][0]["provider_message_id"] == delivery["provider_message_id"]
