"""Stream security (Issue 16 points 6, 7; Issue 17 points 2 and 6 for tickets and memory), against
real gunicorn, RQ worker, PostgreSQL and Redis.

The module's gunicorn runs with rate limits ON and the shipped queue.yaml, and the SPEC's
defaults (10 streams per user), so the budget tests show what a deploy does; its keep-alive is
every second. Tests that need other settings start their own processes.
"""
import functools
import json
import re
import socket
import threading
import time
import uuid
from types import SimpleNamespace

import jwt
import psutil
import pytest
import requests

from testkit import api
from testkit.api import IN_APP, assert_error
from testkit.config_files import queue_config
from testkit.identity import bearer, make_token
from testkit.processes import ProcessGroup, ready, wait_until, web_and_worker
from testkit.rows import insert_notification

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

STREAM = "/v1/notifications/sse"
TICKET = "/v1/notifications/sse/ticket"
MAX_STREAMS = 10   # the SPEC's default SSE_MAX_STREAMS_PER_USER


# ------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def shared(base_env, tmp_path_factory):
    with web_and_worker(dict(base_env, RATE_LIMITS_ENABLED="true"), tmp_path_factory.mktemp("stream-security"),
                        worker_env=base_env) as services:
        yield services


@pytest.fixture
def web(shared, clean):
    return ready(shared)


# ------------------------------------------------------------------------------------ helpers

trigger = functools.partial(api.trigger, **IN_APP)


def ticket_for(server, user_id, **claims):
    issued = server.post(TICKET, headers=bearer(user_id, **claims))
    assert issued.status_code == 201, issued.text
    return issued.json()["ticket"]


# ------------------------------------------------------------------------------------ signed tickets (17.2)


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_credentials_already_expired_open_no_stream(web, streams):
    """Inside the tokens' 30 s clock leeway the REST API still answers, but a stream would end at once."""
    user_id = uuid.uuid4()
    late = {"Authorization": f"Bearer {make_token(user_id, exp_in=-5)}"}
    assert web.get("/v1/notifications", headers=late).status_code == 200
    assert_error(streams(web, headers=late).response, 401, "invalid_user_id")
    ticket = web.post(TICKET, headers=late).json()["ticket"]
    assert_error(streams(web, params={"ticket": ticket}).response, 401, "invalid_ticket")


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_reloading_a_page_twenty_times_fast_is_never_locked_out(web, streams):
    """What the browser client does on each load: a ticket, then the stream with it."""
    user_id = uuid.uuid4()
    for n in range(20):
        ticket = ticket_for(web, user_id)
        status, stream = _open_and_close(web, streams, params={"ticket": ticket})
        assert status == 200, (n, stream.response.text)


@pytest.mark.slow
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


# ------------------------------------------------------------------------------------ bounded memory (17.6)

REPLAY_MAX_BYTES = 256 * 1024
BACKLOG_MAX_BYTES = 64 * 1024
BIG = "x" * 5000                          # the longest content a trigger may carry: ~5.3 KB of JSON
REPLAY_ROWS = 2000                        # rows alone would let a replay reach ~10 MB per stream


@pytest.fixture(scope="module")
def capped(base_env, tmp_path_factory):
    """A gunicorn with small byte caps (one worker, so its RSS is the streams')."""
    directory = tmp_path_factory.mktemp("stream-caps")
    with ProcessGroup(str(directory)) as group:
        worker = group.start_worker(base_env, queue_config=queue_config(directory))
        web = group.start_web(base_env, workers=1, keepalive=1, SSE_REPLAY_MAX_BYTES=REPLAY_MAX_BYTES,
                              SSE_BACKLOG_MAX_BYTES=BACKLOG_MAX_BYTES, SSE_REPLAY_LIMIT=REPLAY_ROWS)
        yield SimpleNamespace(web=web, worker=worker)


@pytest.fixture
def caps(capped, clean):
    for process in (capped.web, capped.worker):
        assert process.alive, f"{process.name} died in an earlier test:\n{process.output()[-3000:]}"
    wait_until(lambda: capped.web.open_streams() == 0, 10, message="streams of an earlier test to close")
    return capped.web


class IdleStream:
    """A client that opens a stream and then reads nothing (4 KB receive buffer), until `drain`."""

    def __init__(self, server, user_id, last_event_id=None):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        # Small segments, as over a real network: on loopback (64 KB segments) the server's kernel
        # would grow its send buffer to megabytes and hold the backlog itself.
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 1200)
        self.sock.connect(("127.0.0.1", server.port))
        head = [f"GET {STREAM} HTTP/1.1", "Host: 127.0.0.1", f"Authorization: Bearer {make_token(user_id)}"]
        if last_event_id is not None:
            head.append(f"Last-Event-ID: {last_event_id}")
        self.sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        status = wait_until(lambda: self.sock.recv(12, socket.MSG_PEEK), 10, message="the response")
        assert status == b"HTTP/1.1 200", status

    def drain(self):
        """Everything the connection still delivers, up to its end (the server cut it; a reset
        may drop what the kernel held, as it may for any client)."""
        self.sock.settimeout(10)
        data = bytearray()
        try:
            while chunk := self.sock.recv(65536):
                data.extend(chunk)
        except ConnectionResetError:
            pass
        self.sock.close()
        return bytes(data)

    def close(self):
        self.sock.close()


def _complete_ids(body):
    """The `id:` of every event that arrived whole (the body is chunked: strip the chunk sizes)."""
    events = re.split(rb"\r\n[0-9a-f]+\r\n", body.split(b"\r\n\r\n", 1)[1])
    text = b"".join(events).split(b"\n\n")[:-1]           # the last piece may be cut short
    return [int(line[4:]) for event in text for line in event.split(b"\n") if line.startswith(b"id: ")]


def test_a_replay_past_its_byte_cap_is_a_reset(caps, streams, db):
    user_id = uuid.uuid4()
    rows = [insert_notification(db, user_id, title=f"n{i}", content=BIG) for i in range(60)]   # ~320 KB
    stream = streams(caps, headers=dict(bearer(user_id), **{"Last-Event-ID": "0"}))
    (reset,) = stream.wait_named("reset")
    assert reset.json() == {"reason": "too_many_bytes", "limit": REPLAY_MAX_BYTES, "cursor": rows[-1]["seq"]}
    assert reset.id == str(rows[-1]["seq"]) and stream.events == []
    trigger(caps, [user_id], title="after the reset")
    assert [e.json()["title"] for e in stream.wait_events(1)] == ["after the reset"]
    # Under the cap, the replay is every notification, in order.
    under = streams(caps, headers=dict(bearer(user_id), **{"Last-Event-ID": str(rows[20]["seq"])}))
    assert [e.seq for e in under.wait_events(40)][:39] == [r["seq"] for r in rows[21:]]


def test_a_stream_past_its_backlog_is_cut_and_resumes_by_cursor(caps, streams, db):
    user_id = uuid.uuid4()
    seen = insert_notification(db, user_id, title="seen before")["seq"]
    idle = IdleStream(caps, user_id, last_event_id=seen)
    for n in range(45):                                  # ~240 KB: far past the 64 KB backlog
        trigger(caps, [user_id], title=f"big {n}", content=BIG)
    wait_until(lambda: caps.open_streams() == 0, 30, message="the idle stream to be cut")
    received = _complete_ids(idle.drain())
    stored = wait_until(lambda: len(rows := _seqs(db, user_id)) == 46 and rows[1:], 20, message="45 stored")
    print(f"backlog cut: {len(received)} of 45 notifications had arrived whole")
    assert received == stored[:len(received)] and len(received) < 45
    cursor = received[-1] if received else seen
    resumed = streams(caps, headers=dict(bearer(user_id), **{"Last-Event-ID": str(cursor)}))
    rest = resumed.wait_events(45 - len(received), timeout=20)
    assert received + [e.seq for e in rest] == stored            # nothing lost, nothing twice


def _seqs(db, user_id):
    with db.cursor() as cur:
        cur.execute("SELECT seq FROM notifications WHERE user_id = %s ORDER BY seq", (str(user_id),))
        return [row[0] for row in cur.fetchall()]


def _insert_many(db, user_id, count, content):
    with db.cursor() as cur:
        cur.execute("INSERT INTO notifications (id, user_id, type, event, title, content, created_at)"
                    " SELECT gen_random_uuid(), %s, 'chat', 'message_received', 'old ' || n, %s,"
                    "        now() - interval '1 day' + n * interval '1 ms'"
                    " FROM generate_series(1, %s) AS n", (str(user_id), content, count))


def test_idle_streams_of_many_users_hold_no_more_memory_than_the_caps(caps, db):
    """Three users, ten streams each, opened with Last-Event-ID: 0 over 2,000 big notifications
    (~10 MB each, within the row limit) and never read, then a burst of big live notifications:
    the worker's RSS grows by no more than the caps allow (each stream: a replay within
    SSE_REPLAY_MAX_BYTES plus SSE_BACKLOG_MAX_BYTES of live events), and every stream is cut."""
    users = [uuid.uuid4() for _ in range(3)]
    for user_id in users:
        _insert_many(db, user_id, REPLAY_ROWS, BIG)
    (pid,) = caps.worker_pids()
    process = psutil.Process(pid)
    warm = IdleStream(caps, users[0], last_event_id=0)   # pools and code paths warmed once
    warm.close()
    wait_until(lambda: caps.open_streams() == 0, 10, message="the warm-up stream to close")
    baseline = process.memory_info().rss
    peak = [baseline]
    sampling = threading.Event()

    def sample():
        while not sampling.wait(0.05):
            peak.append(process.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    idle = [IdleStream(caps, user_id, last_event_id=0) for user_id in users for _ in range(MAX_STREAMS)]
    try:
        assert caps.open_streams() == len(idle)
        for n in range(60):                              # ~320 KB to every stream
            trigger(caps, users, title=f"live {n}", content=BIG)
        wait_until(lambda: caps.open_streams() == 0, 60, message="every idle stream to be cut")
    finally:
        sampling.set()
        sampler.join(5)
        for stream in idle:
            stream.close()
    grown = max(peak) - baseline
    bound = len(idle) * (REPLAY_MAX_BYTES + BACKLOG_MAX_BYTES) + 16 * 2**20
    print(f"{len(idle)} idle streams: RSS {baseline / 2**20:.1f} MiB -> peak {max(peak) / 2**20:.1f} MiB "
          f"(+{grown / 2**20:.1f} MiB; caps allow {bound / 2**20:.1f} MiB)")
    assert grown <= bound
