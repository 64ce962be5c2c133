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

import jwt
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


# ------------------------------------------------------------------------------------ expiry (16.6)


def _ends_cleanly_at(stream, exp, keepalive=1.0):
    """The stream ended, with its farewell and the body's proper end, no later than the first
    keep-alive after `exp` (wall clock; a second of slack for the test's own scheduling)."""
    stream.wait_ended(exp - time.time() + keepalive + 5)
    ended_at = time.time()
    assert stream.error is None, f"the body did not end properly: {stream.error!r}"
    assert stream.comments[-1][0].startswith("credentials expired"), stream.comments[-3:]
    assert ended_at <= exp + keepalive + 1.0, f"ended {ended_at - exp:.2f}s after exp"


@pytest.mark.parametrize("credential", ["token", "ticket"])
def test_a_stream_ends_with_its_credentials_and_resumes_losing_nothing(web, streams, credential):
    user_id = uuid.uuid4()
    short = make_token(user_id, exp_in=4)
    exp = jwt.decode(short, options={"verify_signature": False})["exp"]
    if credential == "token":
        stream = streams(web, headers={"Authorization": f"Bearer {short}"})
    else:
        issued = web.post(TICKET, headers={"Authorization": f"Bearer {short}"})
        stream = streams(web, params={"ticket": issued.json()["ticket"]})
    assert stream.ok, stream.response.text
    trigger(web, [user_id], title="before exp")
    (before,) = stream.wait_events(1)
    _ends_cleanly_at(stream, exp)
    trigger(web, [user_id], title="while away")

    # The client comes back with a fresh credential and its cursor: nothing lost, nothing twice.
    fresh = streams(web, headers=dict(bearer(user_id), **{"Last-Event-ID": before.id}))
    assert fresh.ok, fresh.response.text
    (missed,) = fresh.wait_events(1)
    assert missed.json()["title"] == "while away" and missed.seq > before.seq
    trigger(web, [user_id], title="live again")
    assert [e.json()["title"] for e in fresh.wait_events(2)] == ["while away", "live again"]


def test_credentials_already_expired_open_no_stream(web, streams):
    """Inside the tokens' 30 s clock leeway the REST API still answers, but a stream would end at once."""
    user_id = uuid.uuid4()
    late = {"Authorization": f"Bearer {make_token(user_id, exp_in=-5)}"}
    assert web.get("/v1/notifications", headers=late).status_code == 200
    assert_error(streams(web, headers=late).response, 401, "invalid_user_id")
    ticket = web.post(TICKET, headers=late).json()["ticket"]
    assert_error(streams(web, params={"ticket": ticket}).response, 401, "invalid_ticket")


def test_head_does_not_use_up_a_ticket(web, streams):
    user_id = uuid.uuid4()
    ticket = ticket_for(web, user_id)
    probe = requests.head(web.url + STREAM, params={"ticket": ticket}, timeout=10)
    assert probe.status_code == 200 and probe.headers["Content-Type"].startswith("text/event-stream")
    assert web.open_streams() == 0
    stream = streams(web, params={"ticket": ticket})
    assert stream.ok, stream.response.text
    assert requests.head(web.url + STREAM, params={"ticket": ticket}, timeout=10).status_code == 401
    assert requests.head(web.url + STREAM, params={"ticket": "forged.00"}, timeout=10).status_code == 401


# ------------------------------------------------------------------------------------ limits (16.7)


def _open_and_close(server, streams, headers=None, params=None):
    stream = streams(server, headers=headers, params=params)
    status = stream.status_code
    if not stream.ok:
        stream.response.content   # the error's body, read before the connection goes
    stream.close()
    return status, stream


def test_a_user_at_the_cap_is_told_so_and_replaces_a_stream_at_once(web, streams, rds):
    user_id = uuid.uuid4()
    held = [streams(web, headers=bearer(user_id)) for _ in range(MAX_STREAMS)]
    assert all(s.ok for s in held), [s.status_code for s in held]
    # The cap answers first, however often the user tries: no budget is spent on a refusal.
    for _ in range(3 * MAX_STREAMS):
        assert_error(streams(web, headers=bearer(user_id)).response, 429, "too_many_connections")
    assert_error(web.post(TICKET, headers=bearer(user_id)), 429, "too_many_connections")
    held.pop(0).close()
    wait_until(lambda: rds.zcard(f"notif:streams:{user_id}") == MAX_STREAMS - 1, 5, message="the slot back")
    replacement = streams(web, headers=bearer(user_id))
    assert replacement.ok, replacement.response.text
    # And every stream at once, as a browser restoring its tabs does.
    for stream in held + [replacement]:
        stream.close()
    wait_until(lambda: rds.zcard(f"notif:streams:{user_id}") == 0, 5, message="every slot back")
    again = [streams(web, headers=bearer(user_id)) for _ in range(MAX_STREAMS)]
    assert [s.status_code for s in again] == [200] * MAX_STREAMS


def test_reloading_a_page_twenty_times_fast_is_never_locked_out(web, streams):
    """What the browser client does on each load: a ticket, then the stream with it."""
    user_id = uuid.uuid4()
    for n in range(20):
        ticket = ticket_for(web, user_id)
        status, stream = _open_and_close(web, streams, params={"ticket": ticket})
        assert status == 200, (n, stream.response.text)


def test_a_reconnect_every_few_seconds_is_never_refused(web, streams):
    """The shipped budget (30/minute): once a burst has emptied the bucket, a client that
    reconnects every 2.5 s (an EventSource's retry is 3 s) is admitted every time."""
    user_id = uuid.uuid4()
    burst = [_open_and_close(web, streams, headers=bearer(user_id))[0] for _ in range(30)]
    assert burst == [200] * 30
    status, refused = _open_and_close(web, streams, headers=bearer(user_id))
    assert_error(refused.response, 429, "rate_limited")
    assert 1 <= int(refused.response.headers["Retry-After"]) <= 2
    ticket = web.post(TICKET, headers=bearer(user_id))           # the browser learns it from the ticket
    assert_error(ticket, 429, "rate_limited")
    assert 1 <= int(ticket.headers["Retry-After"]) <= 2
    for n in range(6):
        time.sleep(2.5)
        status, stream = _open_and_close(web, streams, headers=bearer(user_id))
        assert status == 200, (n, stream.response.text)
