"""Personal data out of what users and operators read (issue 17, point 8; docs/security/data.md).

What a user reads of a failed delivery (GET /v1/notifications/{id}/deliveries), what an
operator reads (`flask deliveries failed`, RQ's failed-job text, the drain's log lines) and what
the audit log keeps (client addresses, a direct push's users) must not hold email addresses,
phone numbers, tokens or URLs with their query strings. Real SMTP (aiosmtpd), real HTTP
providers, real PostgreSQL, Redis and RQ; tests/security/test_pii_logs.py scans the logs of a whole run.
"""
import json
import logging
import uuid

import pytest
from rq.job import Job

from app.security.api_keys import plain_name
from app.security.keyed import keyed_hash
from testkit.api import deliveries, put_contact, trigger
from testkit.config_files import channel_config
from testkit.identity import API_KEY, SERVICE
from testkit.jobs import drain, run_jobs
from testkit.processes import wait_until
from testkit.providers import FakeHTTP, FakeTwilio
from testkit.rows import insert_delivery
from devtools.services import free_port
from testkit.logs import Capture

CAROL = "carol@example.com"
PHONE = "+14155550123"
TOKEN = "gw-Tok3n-5f1e9c2a7b4d8e6f0a3c"


@pytest.fixture
def build(make_app, clean, tmp_path):
    """build(channels, events=..., **settings) -> (an app delivering chat.message_received on them, the
    environment of a worker process doing the same)."""
    def make(channels, attempts=2, **settings):
        events = {"chat": {"message_received": ["system", *channels]}}
        config = channel_config(tmp_path, channels, events, attempts=attempts, backoff=(60, 600))
        settings = dict(config, MAIL_DEFAULT_SENDER="notify@bank.example", MAIL_SERVER="127.0.0.1",
                        MAIL_TIMEOUT="5", **settings)
        return make_app(**settings), dict(clean, **settings)
    return make


def read_deliveries(client, user_headers):
    """(channel -> delivery, the response's whole text) as the user reads them."""
    found = deliveries(client, user_headers)
    return found, json.dumps(found)


def deliver(build, user, channels, contact, settle=run_jobs, **settings):
    """One notification to `user` (whose contact is `contact`) on an app sending on `channels`, its
    jobs run by `settle`; then what the user reads of its deliveries (see read_deliveries)."""
    user_id, headers = user
    app, _ = build(channels, **settings)
    client = app.test_client()
    put_contact(client, user_id, **contact)
    trigger(client, [user_id])
    settle(app)
    return read_deliveries(client, headers)


# ---------------------------------------------------------------- last_error: the class, no address, no token


def test_smtp_450_naming_the_recipient_shows_the_class_not_the_address(build, smtp, user):
    smtp.refuse_rcpt = f"450 4.1.1 <{CAROL}>"             # a real server's deferral, naming the recipient
    found, text = deliver(build, user, {"email": {"enabled": True}}, {"email": CAROL}, MAIL_PORT=str(smtp.port))
    email = found["email"]
    assert email["status"] == "pending"
    assert email["last_error"].startswith("recipient_deferred 450: ")
    assert "4.1.1 <[email]>" in email["last_error"]
    assert [a["error"] for a in email["history"]] == [email["last_error"]]
    assert CAROL not in text and "carol" not in text


def test_smtp_550_is_an_invalid_recipient_without_the_address(build, smtp, user):
    smtp.refuse_rcpt = f"550 5.1.1 <{CAROL}>: Recipient address rejected: User unknown"
    found, text = deliver(build, user, {"email": {"enabled": True}}, {"email": CAROL}, drain,
                          MAIL_PORT=str(smtp.port))
    assert found["email"]["status"] == "failed"
    assert found["email"]["last_error"].startswith("invalid_recipient 550: ")
    assert "User unknown" in found["email"]["last_error"]
    assert CAROL not in text


def test_sms_gateway_url_with_a_token_shows_the_class_not_the_token(build, user):
    url = f"http://127.0.0.1:{free_port()}/send?token={TOKEN}&to={{recipient}}"   # nothing listens there
    found, text = deliver(build, user, {"sms": {"type": "webhook", "needs": "phone", "url": url, "timeout": 2}},
                          {"phone": PHONE})
    sms = found["sms"]
    assert sms["status"] == "pending"
    assert sms["last_error"].startswith("connection_failed: ")
    assert TOKEN not in text and "token=" not in text and "?[redacted]" in sms["last_error"]


def test_sms_gateway_echoing_the_number_shows_the_status_class(build, user):
    gateway = FakeHTTP()
    try:
        gateway.fail(503, {"message": f"upstream refused {PHONE} for {CAROL}"})
        gateway.fail(422, {"message": f"number {PHONE} is blocked", "code": 7})
        found, text = deliver(build, user, {"sms": {"type": "webhook", "needs": "phone",
                                                    "url": f"{gateway.url}/send?token={TOKEN}"}},
                              {"phone": PHONE}, drain)
    finally:
        gateway.stop()
    sms = found["sms"]
    assert [a["error"].split(":")[0] for a in sms["history"]] == ["provider_error 503", "provider_refused 422"]
    assert sms["status"] == "failed" and "is blocked (code 7)" in sms["last_error"]
    for secret in (PHONE, PHONE[1:], CAROL, TOKEN):
        assert secret not in text


def test_twilio_unreachable_shows_neither_the_account_sid_nor_the_number(build, user):
    twilio = FakeTwilio()
    twilio.stop()                                          # its port is closed now
    sms = {"type": "twilio", "base_url": twilio.url, "account_sid": twilio.account_sid,
           "auth_token": twilio.auth_token, "from": twilio.sender, "timeout": 2}
    found, text = deliver(build, user, {"sms": sms}, {"phone": PHONE})
    assert found["sms"]["last_error"].startswith("connection_failed: ConnectionError")
    assert twilio.account_sid not in text and twilio.auth_token not in text and PHONE not in text


# ---------------------------------------------------------------- what operators read


def test_flask_deliveries_failed_shows_classes_and_redacts_old_rows(build, smtp, user, db):
    user_id, _ = user
    smtp.refuse_rcpt = f"550 5.1.1 <{CAROL}> unknown"
    app, _ = build({"email": {"enabled": True}}, MAIL_PORT=str(smtp.port))
    client = app.test_client()
    put_contact(client, user_id, email=CAROL)
    trigger(client, [user_id])
    drain(app)
    with db.cursor() as cur:   # a row written before last_error was classified: the provider's raw words
        cur.execute("SELECT notification_id FROM deliveries LIMIT 1")
        (notification,) = cur.fetchone()
        insert_delivery(db, notification, user_id=user_id, channel="sms", status="failed", attempts=5,
                        last_error=f"ConnectionError: url: /2010-04-01/Accounts/AC{'1' * 32}/Messages.json"
                                   f"?token={TOKEN} to {PHONE}")
    result = app.test_cli_runner().invoke(args=["deliveries", "failed"])
    assert result.exit_code == 0, result.output
    assert "invalid_recipient 550" in result.output
    for secret in (CAROL, PHONE, TOKEN, "AC" + "1" * 32):
        assert secret not in result.output


def test_the_drain_logs_a_database_error_without_the_rows_values(app, client, db):
    r = client.post("/v1/notifications/trigger", headers=SERVICE,
                    json={"type": "chat", "event": "message_received", "title": "Hi", "user_ids": [str(uuid.uuid4())]})
    trigger_id = r.get_json()["trigger_id"]
    with db.cursor() as cur:   # a row the schema never lets in: the database refuses it, quoting the value
        cur.execute("UPDATE triggers SET body = jsonb_set(body, '{user_ids,0}', %s) WHERE id = %s",
                    (json.dumps(CAROL), trigger_id))
    capture = Capture()
    logging.getLogger().addHandler(capture)
    try:
        run_jobs(app)
    finally:
        logging.getLogger().removeHandler(capture)
    with db.cursor() as cur:
        cur.execute("SELECT status, last_error FROM triggers WHERE id = %s", (trigger_id,))
        status, last_error = cur.fetchone()
    deferred = [line for line in capture.lines if "could not be dispatched" in line["message"]]
    assert status == "pending" and deferred, capture.lines
    # the error's type, SQLSTATE and first line stay (what an operator needs); the value does not
    assert last_error.startswith("InvalidTextRepresentation (SQLSTATE 22P02): ") and '"[value]"' in last_error
    assert all(last_error in line["message"] for line in deferred)
    assert CAROL not in last_error and "carol" not in json.dumps(capture.lines)


@pytest.mark.slow
def test_rq_keeps_a_failed_jobs_text_redacted(app, clean, processes, tmp_path):
    """A job whose argument is an address (written into Redis by whoever can) fails in the real
    worker; the traceback RQ keeps for a week, and the worker's log, name no address."""
    from app.queues.enqueue import queue
    with app.app_context():
        q = queue("deliveries", app)
        job = q.enqueue("workers.jobs.deliver", CAROL, job_id="deliver-poison", failure_ttl=600)
    worker = processes.start_worker(clean)
    with app.app_context():
        def failed_text():
            fetched = Job.fetch(job.id, connection=app.extensions["redis"], serializer=q.serializer)
            result = fetched.latest_result()
            return result.exc_string if result is not None and result.exc_string else None
        text = wait_until(failed_text, timeout=30, message="the job to fail")
    assert "Traceback" in text and "[value]" in text and "[statement]" in text
    assert CAROL not in text
    processes.stop_all()
    assert CAROL not in worker.output()


# ---------------------------------------------------------------- the audit log, read over the API


def audit_items(client, **query):
    r = client.get("/v1/notifications/audit", headers=SERVICE, query_string=query)
    assert r.status_code == 200, r.get_json()
    return r.get_json()["items"]


def test_audit_rows_hold_a_keyed_hash_of_the_client_address(app, client):
    for address in ("203.0.113.7", "203.0.113.7", "198.51.100.9"):
        r = client.post("/v1/notifications/trigger", headers=SERVICE, environ_base={"REMOTE_ADDR": address},
                        json={"type": "chat", "event": "message_received", "title": "Hi",
                              "user_ids": [str(uuid.uuid4())]})
        assert r.status_code == 202
    items = list(reversed(audit_items(client, action="notification.trigger")))
    text = json.dumps(items)
    assert "203.0.113.7" not in text and "198.51.100.9" not in text
    hashed = [item["client_ip"] for item in items]
    assert hashed[0] == hashed[1] != hashed[2]            # one address, one value: still groupable
    assert hashed[0] == keyed_hash("audit-client-ip", "203.0.113.7", secret=app.config["SECRET_KEY"])
    # the key is named by a keyed hash too, never by an unsalted digest of the key
    assert {item["actor_id"] for item in items} == {plain_name(API_KEY, app.config["SECRET_KEY"])}


def test_direct_push_audit_row_holds_the_count_and_a_hash_of_the_ids(app, client):
    users = [str(uuid.uuid4()) for _ in range(3)]
    r = client.post("/v1/notifications/sse", headers=SERVICE,
                    json={"type": "chat", "event": "message_received", "title": "Hi", "user_ids": users})
    assert r.status_code == 200
    (item,) = audit_items(client, action="notification.push")
    assert item["change"]["users"] == 3
    secret = app.config["SECRET_KEY"]
    assert item["change"]["user_ids_hash"] == keyed_hash("audit-user-ids", ",".join(sorted(users)), 64, secret=secret)
    assert "user_ids" not in item["change"]
    assert not any(u in json.dumps(item) for u in users)
    # the same users in another order: the same hash (it names the set that was pushed to)
    client.post("/v1/notifications/sse", headers=SERVICE,
                json={"type": "chat", "event": "message_received", "title": "Hi", "user_ids": users[::-1]})
    again = audit_items(client, action="notification.push")[0]
    assert again["change"]["user_ids_hash"] == item["change"]["user_ids_hash"]
