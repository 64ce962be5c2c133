"""Stream security (Issue 16 points 6, 7; Issue 17 points 2 and 6 for tickets and memory), against
real gunicorn, RQ worker, PostgreSQL and Redis.

The module's gunicorn runs with rate limits ON and the shipped queue.yaml, and the SPEC's
defaults (10 streams per user), so the budget tests show what a deploy does; its keep-alive is
every second. Tests that need other settings start their own processes.
"""
import json
import time
import uuid
from types import SimpleNamespace

import pytest
import redis as redis_lib
import requests

from conftest import SERVICE, make_token
from processes import ProcessGroup, processes, queue_config, wait_until  # noqa: F401

pytestmark = pytest.mark.timeout(180)

STREAM = "/v1/notifications/sse"
TICKET = "/v1/notifications/sse/ticket"
MAX_STREAMS = 10   # the SPEC's default SSE_MAX_STREAMS_PER_USER


# ------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def shared(base_env, tmp_path_factory):
    directory = tmp_path_factory.mktemp("stream-security")
    env = dict(base_env, RATE_LIMITS_ENABLED="true")
    with ProcessGroup(str(directory)) as group:
        worker = group.start_worker(base_env, queue_config=queue_config(directory))
        web = group.start_web(env, workers=1, keepalive=1)
        yield SimpleNamespace(web=web, worker=worker)


@pytest.fixture
def web(shared, clean):
    for process in (shared.web, shared.worker):
        assert process.alive, f"{process.name} died in an earlier test:\n{process.output()[-3000:]}"
    wait_until(lambda: shared.web.open_streams() == 0, 10, message="streams of an earlier test to close")
    return shared.web


@pytest.fixture
def streams():
    """Open streams (`streams(server, headers=..., params=...)`); all closed at the end of the test."""
    opened = []

    def open_stream(server, headers=None, params=None):
        stream = server.stream(headers=headers, params=params)
        opened.append(stream)
        return stream

    yield open_stream
    for stream in opened:
        stream.close()


@pytest.fixture
def rds(clean):
    client = redis_lib.Redis.from_url(clean["REDIS_URL"], decode_responses=True)
    yield client
    client.close()


# ------------------------------------------------------------------------------------ helpers


def bearer(user_id, **claims):
    return {"Authorization": f"Bearer {make_token(user_id, **claims)}"}


def ticket_for(server, user_id, **claims):
    issued = server.post(TICKET, headers=bearer(user_id, **claims))
    assert issued.status_code == 201, issued.text
    return issued.json()["ticket"]


def trigger(server, user_ids, title, **fields):
    body = {"type": "tasks", "event": "task_due", "title": title, "user_ids": [str(u) for u in user_ids]}
    body.update(fields)
    response = server.post("/v1/notifications/trigger", headers=SERVICE, json=body)
    assert response.status_code == 202, response.text
    return response.json()


def assert_error(response, status, code):
    assert response.status_code == status, response.text
    body = response.json()
    assert body["code"] == "notifications_m." + code and body["status"] == status, body
    return body


# ------------------------------------------------------------------------------------ signed tickets (17.2)


def test_a_ticket_written_in_redis_opens_nothing(web, streams, rds):
    """Whoever can write Redis cannot mint a ticket: an entry of the old shape (id -> JSON) or
    of the new one, with any signature, is refused."""
    victim = uuid.uuid4()
    payload = {"sub": str(victim), "customers": None, "exp": time.time() + 300}
    for ticket_id, given in (("forged-id", "forged-id"), ("forged-2", "forged-2." + "0" * 64),
                             ("forged-3", "forged-3.")):
        rds.set(f"notif:ticket:{ticket_id}", json.dumps(payload), ex=60)
        assert_error(streams(web, params={"ticket": given}).response, 401, "invalid_ticket")
    assert web.open_streams() == 0


def test_a_ticket_altered_in_redis_is_refused(web, streams, rds):
    """Mallory's genuine ticket, re-pointed at the victim in Redis, opens nobody's stream."""
    victim, mallory = uuid.uuid4(), uuid.uuid4()
    ticket = ticket_for(web, mallory)
    entry = "notif:ticket:" + ticket.split(".")[0]
    original = json.loads(rds.get(entry))
    assert original["sub"] == str(mallory)
    rds.set(entry, json.dumps(dict(original, sub=str(victim))), keepttl=True)
    assert_error(streams(web, params={"ticket": ticket}).response, 401, "invalid_ticket")
    assert web.open_streams() == 0


def test_redis_never_holds_a_usable_ticket_and_a_ticket_is_single_use(web, streams, rds):
    user_id = uuid.uuid4()
    ticket = ticket_for(web, user_id)
    ticket_id, signature = ticket.split(".")
    stored = {k: rds.get(k) for k in rds.keys("notif:ticket:*")}
    assert list(stored) == [f"notif:ticket:{ticket_id}"]
    assert signature not in json.dumps(stored)                      # what Redis holds opens nothing
    assert_error(streams(web, params={"ticket": ticket_id}).response, 401, "invalid_ticket")
    stream = streams(web, params={"ticket": ticket})
    assert stream.ok, stream.response.text
    trigger(web, [user_id], title="through a signed ticket")
    assert stream.wait_events(1)[0].json()["title"] == "through a signed ticket"
    assert_error(streams(web, params={"ticket": ticket}).response, 401, "invalid_ticket")
