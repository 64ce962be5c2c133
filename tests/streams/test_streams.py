"""The real-time stream against real processes: gunicorn (gevent workers), the RQ worker, Redis, PostgreSQL.

Notifications go the production way: POST /v1/notifications/trigger -> 202 ->
the RQ job stores them and publishes to Redis -> the hub of each gunicorn
worker -> the SSE response. Every wait has a deadline; the fixed pauses are
the ones the feature is about (a ticket's time to live).

Most tests share one gunicorn (1 worker, keep-alive every 1 s, at most 2
streams per user, replay limit 50) and one RQ worker whose relay re-enqueues
lost triggers after 1 s; tests that need other settings start their own.
"""
import functools
import re
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest

from app.bus.codec import user_channel
from testkit import api
from testkit.api import IN_APP, assert_error
from testkit.identity import SERVICE, bearer
from testkit.processes import ProcessGroup, ready, wait_until, web_and_worker
from testkit.rows import insert_notification
from testkit.sse import ResumingStream

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

REPLAY_LIMIT = 50
MAX_STREAMS = 2
METRICS_TOKEN = "metrics-token-of-the-stream-tests-0123456789"   # the greenlet count needs it
OPERATOR = {"Authorization": f"Bearer {METRICS_TOKEN}"}
NOTIFICATION_KEYS = ["id", "customer_id", "type", "event", "title", "content", "link_url", "link_text",
                     "rec_type", "rec_id", "read", "read_at", "created_at",
                     "expires_at", "ack_required", "ack_deadline", "acked_at"]   # SPEC's, then issue 21's
RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
# The SPEC's trigger body (a chat event also goes out by email; the user has no address, so it is skipped).
SPEC_BODY = {"type": "chats", "event": "message_received", "title": "Test Notification",
             "content": "This is a test notification", "customer_id": "550e8400-e29b-41d4-a716-446655440000",
             "rec_type": "chats", "rec_id": "789e4567-e89b-12d3-a456-426614174000"}


# ------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def shared(base_env, tmp_path_factory):
    with web_and_worker(base_env, tmp_path_factory.mktemp("stream-services"), SSE_MAX_STREAMS_PER_USER=MAX_STREAMS,
                        SSE_REPLAY_LIMIT=REPLAY_LIMIT, METRICS_TOKEN=METRICS_TOKEN) as services:
        yield services


@pytest.fixture
def web(shared, clean):
    """The shared gunicorn, with no stream left open by an earlier test."""
    return ready(shared)


# ------------------------------------------------------------------------------------ helpers

trigger = functools.partial(api.trigger, title="Task due", **IN_APP)


def stored(db, user_id, visible_only=True):
    """The user's stored notifications as (seq, id, title), in seq order."""
    with db.cursor() as cur:
        cur.execute("SELECT seq, id::text, title FROM notifications WHERE user_id = %s"
                    + (" AND deleted_at IS NULL" if visible_only else "") + " ORDER BY seq", (str(user_id),))
        return cur.fetchall()


def wait_stored(db, user_id, count, timeout=20):
    return wait_until(lambda: (rows := stored(db, user_id)) and len(rows) >= count and rows, timeout,
                      message=f"{count} notification(s) stored for {user_id}")


def seqs(events):
    return [event.seq for event in events]


def quiet_for(stream, seconds):
    """Nothing but keep-alives for `seconds` (the only way to show an absence is to wait for it)."""
    before = len(stream.snapshot())
    time.sleep(seconds)
    assert stream.snapshot()[before:] == []


# ------------------------------------------------------------------------------------ delivery


def test_first_bytes_arrive_at_once(web, streams):
    stream = streams(web, uuid.uuid4())
    assert stream.status_code == 200
    assert stream.response.headers["Content-Type"].startswith("text/event-stream")
    assert stream.response.headers["Cache-Control"] == "no-cache, no-transform"
    assert stream.response.headers["X-Accel-Buffering"] == "no"
    stream.wait_for(lambda s: s.first_chunk_at is not None, 2, "the first bytes")
    # Well before the first keep-alive (1 s): the opening comment and the reconnect hint.
    assert stream.first_chunk_at - stream.started_at < 0.5
    assert bytes(stream.raw).startswith(b": connected\nretry: 3000\n\n")
    assert stream.comments[0][0] == "connected" and stream.retry == 3000
    assert stream.events == []


def test_triggered_notification_arrives_with_its_cursor_and_the_spec_shape(web, streams, db):
    user_id = uuid.uuid4()
    stream = streams(web, user_id)
    accepted = trigger(web, [user_id], **SPEC_BODY)
    assert accepted["users"] == 1
    (event,) = stream.wait_events(1)
    ((seq, notification_id, _),) = stored(db, user_id)
    assert event.id == str(seq) and event.event is None
    assert event.raw == f"id: {seq}\ndata: {event.data}\n"          # exactly two lines, no `event:`
    data = event.json()
    assert list(data) == NOTIFICATION_KEYS
    assert data["id"] == notification_id
    assert {k: data[k] for k in ("customer_id", "type", "event", "title", "content", "rec_type", "rec_id",
                                 "link_url", "link_text", "read", "read_at")} == {
        "customer_id": SPEC_BODY["customer_id"], "type": "chat", "event": "message_received",
        "title": "Test Notification", "content": "This is a test notification", "rec_type": "chats",
        "rec_id": SPEC_BODY["rec_id"], "link_url": None, "link_text": None, "read": False, "read_at": None}
    assert RFC3339_UTC.match(data["created_at"])
    # The same object as the inbox serves.
    inbox = web.get(f"/v1/notifications/{notification_id}", headers=bearer(user_id))
    assert inbox.status_code == 200 and inbox.json() == data


def test_every_stream_of_the_user_receives_and_no_one_else(web, streams, db):
    alice, bob = uuid.uuid4(), uuid.uuid4()
    tab, phone, bobs = streams(web, alice), streams(web, alice), streams(web, bob)
    trigger(web, [alice], title="for alice")
    trigger(web, [bob], title="for bob")       # queued after alice's: published after it
    (bob_event,) = bobs.wait_events(1)
    assert bob_event.json()["title"] == "for bob"
    for stream in (tab, phone):
        (event,) = stream.wait_events(1)
        assert event.json()["title"] == "for alice" and event.id == str(stored(db, alice)[0][0])
    quiet_for(bobs, 0.3)
    assert [e.json()["title"] for e in bobs.snapshot()] == ["for bob"]
    assert [e.json()["title"] for e in tab.snapshot()] == ["for alice"]


def test_direct_push_has_no_cursor_and_is_not_replayed(web, streams, db):
    user_id = uuid.uuid4()
    stream = streams(web, user_id)
    trigger(web, [user_id], title="stored before")
    (before,) = stream.wait_events(1)
    pushed = web.post("/v1/notifications/sse", headers=SERVICE,
                      json={"type": "chat", "event": "mention", "title": "live only", "user_ids": [str(user_id)]})
    assert pushed.status_code == 200, pushed.text
    assert pushed.json()["users"] == 1
    _, direct = stream.wait_events(2)
    assert direct.id is None and direct.event is None
    assert direct.raw == f"data: {direct.data}\n"
    data = direct.json()
    assert list(data) == NOTIFICATION_KEYS
    assert data["title"] == "live only" and data["type"] == "chat" and data["read"] is False
    assert len(stored(db, user_id)) == 1                          # not stored

    stream.close()
    again = streams(web, user_id, last_event_id=before.id)
    trigger(web, [user_id], title="stored after")
    (event,) = again.wait_events(1)                                # the push is not replayed
    assert event.json()["title"] == "stored after"
    assert event.seq == stored(db, user_id)[-1][0] > before.seq
    assert len(again.snapshot()) == 1


# ------------------------------------------------------------------------------------ replay


@pytest.mark.parametrize("how", ["header", "query"])
def test_replay_after_disconnect_is_exact_and_ordered(web, streams, db, how):
    user_id = uuid.uuid4()
    stream = streams(web, user_id)
    trigger(web, [user_id], title="seen")
    (seen,) = stream.wait_events(1)
    stream.close()
    for n in range(5):
        trigger(web, [user_id], title=f"missed {n}")
    rows = wait_stored(db, user_id, 6)
    if how == "header":
        again = streams(web, user_id, last_event_id=seen.id)
    else:
        again = streams(web, user_id, params={"last_event_id": seen.id})
    missed = again.wait_events(5)
    assert seqs(missed) == [seq for seq, _, _ in rows[1:]]
    assert [e.json()["title"] for e in missed] == [f"missed {n}" for n in range(5)]
    assert all(e.event is None for e in missed)
    trigger(web, [user_id], title="live")
    events = again.wait_events(6)
    assert events[5].json()["title"] == "live"
    quiet_for(again, 0.3)
    final = again.snapshot()
    assert seqs(final) == [seq for seq, _, _ in stored(db, user_id)[1:]]   # no duplicate, no gap


def test_header_cursor_wins_over_query_and_bad_cursor_is_refused(web, streams, db):
    user_id = uuid.uuid4()
    rows = [insert_notification(db, user_id, title=f"n{i}") for i in range(3)]
    both = streams(web, user_id, last_event_id=rows[1]["seq"], params={"last_event_id": rows[0]["seq"]})
    (event,) = both.wait_events(1)
    assert event.seq == rows[2]["seq"]
    both.close()
    bad = streams(web, user_id, headers={"Last-Event-ID": "abc"})
    assert_error(bad.response, 422, "invalid_request")


def test_publish_during_replay_is_neither_lost_nor_duplicated(web, streams, db):
    """Reconnect again and again from the last id while the worker stores and publishes a burst:
    across all connections the ids are the user's stored seqs, each once, in order."""
    user_id = uuid.uuid4()
    burst = 40
    first = streams(web, user_id)
    trigger(web, [user_id], title="start")
    received = first.wait_events(1)
    first.close()

    def send_burst():   # paced: the burst must span several reconnects, however fast the worker
        for n in range(burst):   # stores it (a drain stores whatever is pending in one batch)
            trigger(web, [user_id], title=f"burst {n}")
            time.sleep(0.02)

    sender = threading.Thread(target=send_burst)
    sender.start()
    reconnects = 0
    try:
        while True:
            cursor = received[-1].id
            stream = streams(web, user_id, last_event_id=cursor)
            assert stream.ok, stream.response.text
            reconnects += 1
            done = len(received) - 1 >= burst
            if not done:
                # Let some of the burst land, then drop the connection mid-flow and resume.
                progress = len(stored(db, user_id))
                wait_until(lambda: len(stored(db, user_id)) >= min(progress + 3, burst + 1), 20,
                           message="the worker to store more of the burst")
                time.sleep(0.02)
            if len(stored(db, user_id)) == burst + 1:
                expected = burst + 1 - len(received)
                got = stream.wait_events(expected, timeout=20)
                received += got
                stream.close()
                break
            stream.close()
            got = stream.snapshot()
            assert all(e.seq > int(cursor) for e in got), "replayed something at or before the cursor"
            received += got
    finally:
        sender.join(30)
    assert reconnects >= 3
    ids = seqs(received)
    assert ids == sorted(set(ids)), f"not strictly increasing: {ids}"
    assert ids == [seq for seq, _, _ in stored(db, user_id)]
    assert [e.json()["title"] for e in received] == ["start"] + [f"burst {n}" for n in range(burst)]


def test_reset_when_more_than_the_replay_limit_was_missed(web, streams, db):
    user_id = uuid.uuid4()
    rows = [insert_notification(db, user_id, title=f"n{i}") for i in range(REPLAY_LIMIT)]
    exact = streams(web, user_id, last_event_id=0)              # exactly the limit: all of them
    events = exact.wait_events(REPLAY_LIMIT)
    assert seqs(events) == [r["seq"] for r in rows] and all(e.event is None for e in events)
    exact.close()

    newest = insert_notification(db, user_id, title="one too many")["seq"]
    over = streams(web, user_id, last_event_id=0)
    (reset,) = over.wait_named("reset")                        # not `onmessage`: a named event
    assert reset.id == str(newest)
    assert reset.json() == {"reason": "too_many_missed", "limit": REPLAY_LIMIT, "cursor": newest}
    assert over.events == []                                    # none of the missed ones
    trigger(web, [user_id], title="after the reset")
    (live,) = over.wait_events(1)
    assert live.seq > newest and live.json()["title"] == "after the reset"


def test_deleted_notifications_are_not_replayed(web, streams, db):
    user_id = uuid.uuid4()
    stream = streams(web, user_id)
    trigger(web, [user_id], title="seen")
    (seen,) = stream.wait_events(1)
    stream.close()
    for title in ("kept 1", "deleted", "kept 2"):
        trigger(web, [user_id], title=title)
    rows = wait_stored(db, user_id, 4)
    deleted = next(r for r in rows if r[2] == "deleted")
    assert web.delete(f"/v1/notifications/{deleted[1]}", headers=bearer(user_id)).status_code == 204
    again = streams(web, user_id, last_event_id=seen.id)
    events = again.wait_events(2)
    assert [e.json()["title"] for e in events] == ["kept 1", "kept 2"]
    quiet_for(again, 0.3)
    assert len(again.snapshot()) == 2


# ------------------------------------------------------------------------------------ connection


def test_keep_alive_comment_at_the_configured_interval(web, streams):
    stream = streams(web, uuid.uuid4())
    times = stream.wait_comments("keep-alive", count=3, timeout=6)
    gaps = [b - a for a, b in zip([stream.first_chunk_at] + times, times)]
    assert all(0.7 < gap < 2.0 for gap in gaps[:3]), gaps
    assert b": keep-alive\n\n" in bytes(stream.raw)
    assert stream.events == []


def test_per_user_limit_and_the_slot_comes_back_on_close(web, streams, rds):
    user_id, other = uuid.uuid4(), uuid.uuid4()
    first, second = streams(web, user_id), streams(web, user_id)
    assert first.ok and second.ok
    third = streams(web, user_id)
    assert_error(third.response, 429, "too_many_connections")
    assert streams(web, other).ok                                  # the limit is per user
    assert rds.zcard(f"notif:streams:{user_id}") == MAX_STREAMS

    first.close()
    # Freed at once: not at the next keep-alive write (1 s here, 15 s by default), which would
    # find the socket closed only on its second try.
    started = time.monotonic()
    wait_until(lambda: rds.zcard(f"notif:streams:{user_id}") == 1, 5, message="the slot to be released")
    released_after = time.monotonic() - started
    replacement = streams(web, user_id)
    assert replacement.ok, replacement.response.text
    assert released_after < 0.5, f"the slot came back {released_after:.2f}s after the close"
    second.close()
    replacement.close()
    wait_until(lambda: rds.exists(f"notif:streams:{user_id}") == 0, 5, message="every slot released")


def test_customer_scoping(web, streams, db):
    mine, also_mine, not_mine = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    user_id = uuid.uuid4()
    customers = [mine, also_mine]
    refused = streams(web, user_id, customers, params={"customer_id": str(not_mine)})
    assert_error(refused.response, 403, "invalid_customer_id")

    one = streams(web, user_id, customers, params={"customer_id": str(mine)})
    every = streams(web, user_id, customers)                        # the token's customers + none
    for title, customer in (("not mine", not_mine), ("also mine", also_mine), ("no customer", None),
                            ("mine", mine)):
        trigger(web, [user_id], title=title, customer_id=str(customer) if customer else None)
    (event,) = one.wait_events(1)
    assert event.json()["title"] == "mine" and event.json()["customer_id"] == str(mine)
    assert [e.json()["title"] for e in every.wait_events(3)] == ["also mine", "no customer", "mine"]
    quiet_for(one, 0.3)
    assert len(one.snapshot()) == 1 and len(every.snapshot()) == 3

    # Replay honours the same scope.
    one.close()
    every.close()
    wait_until(lambda: web.open_streams() == 0, 5, message="both streams to close")
    replay_one = streams(web, user_id, customers, params={"customer_id": str(mine)}, last_event_id=0)
    replay_all = streams(web, user_id, customers, last_event_id=0)
    assert [e.json()["title"] for e in replay_one.wait_events(1)] == ["mine"]
    assert [e.json()["title"] for e in replay_all.wait_events(3)] == ["also mine", "no customer", "mine"]
    quiet_for(replay_all, 0.3)
    assert len(replay_one.snapshot()) == 1 and len(replay_all.snapshot()) == 3


# ------------------------------------------------------------------------------------ tickets


def test_ticket_flow(web, streams, db):
    alice, bob = uuid.uuid4(), uuid.uuid4()
    assert_error(web.post("/v1/notifications/sse/ticket"), 401, "invalid_user_id")
    issued = web.post("/v1/notifications/sse/ticket", headers=bearer(alice))
    assert issued.status_code == 201, issued.text
    body = issued.json()
    ticket = body["ticket"]
    assert body["expires_in"] == 60 and body["stream_url"] == f"/v1/notifications/sse?ticket={ticket}"

    # What a browser does: no header, the ticket in the URL.
    stream = streams(web, params={"ticket": ticket})
    assert stream.ok, stream.response.text
    trigger(web, [bob], title="for bob")
    trigger(web, [alice], title="for alice")
    (event,) = stream.wait_events(1)
    assert event.json()["title"] == "for alice" and event.id == str(stored(db, alice)[0][0])
    quiet_for(stream, 0.3)
    assert len(stream.snapshot()) == 1

    assert_error(streams(web, params={"ticket": ticket}).response, 401, "invalid_ticket")   # single use
    assert_error(streams(web, params={"ticket": "x" * 43}).response, 401, "invalid_ticket")
    # Bob's own ticket opens Bob's stream, never Alice's.
    bobs_ticket = web.post("/v1/notifications/sse/ticket", headers=bearer(bob)).json()["ticket"]
    bobs = streams(web, params={"ticket": bobs_ticket})
    trigger(web, [alice], title="alice again")
    trigger(web, [bob], title="bob again")
    assert [e.json()["title"] for e in bobs.wait_events(1)] == ["bob again"]
    assert [e.json()["title"] for e in stream.wait_events(2)] == ["for alice", "alice again"]


@pytest.fixture(scope="module")
def ticket_web(base_env, tmp_path_factory):
    """A gunicorn whose tickets live 1 s and whose access log goes to its output."""
    directory = tmp_path_factory.mktemp("ticket-web")
    with ProcessGroup(str(directory)) as group:
        yield group.start_web(base_env, workers=1, keepalive=1, access_log="-", SSE_TICKET_TTL_SECONDS=1)


def test_expired_ticket_is_refused(ticket_web, clean, streams, rds):
    issued = ticket_web.post("/v1/notifications/sse/ticket", headers=bearer(uuid.uuid4()))
    assert issued.status_code == 201 and issued.json()["expires_in"] == 1
    ticket = issued.json()["ticket"]
    entry = "notif:ticket:" + ticket.split(".")[0]     # Redis holds the ticket's id, not its signature
    assert rds.exists(entry)
    started = time.monotonic()
    wait_until(lambda: not rds.exists(entry), 5, message="the ticket to expire")
    assert time.monotonic() - started > 0.5
    assert_error(streams(ticket_web, params={"ticket": ticket}).response, 401, "invalid_ticket")


def test_ticket_never_reaches_the_access_log(ticket_web, clean, streams):
    user_id = uuid.uuid4()
    ticket = ticket_web.post("/v1/notifications/sse/ticket", headers=bearer(user_id)).json()["ticket"]
    stream = streams(ticket_web, params={"ticket": ticket})
    assert stream.ok, stream.response.text
    stream.wait_comments("keep-alive")
    stream.close()
    reused = streams(ticket_web, params={"ticket": ticket, "last_event_id": "0"})
    assert reused.status_code == 401
    # A stream's line is written when it ends, once the server has seen the close.
    lines = wait_until(lambda: [line for line in ticket_web.output().splitlines()
                                if '"GET /v1/notifications/sse ' in line and " 200 " in line], 10,
                       message="the stream's access-log line")
    output = ticket_web.output()
    assert '"GET /v1/notifications/sse HTTP/1.1" 401' in output
    assert '"POST /v1/notifications/sse/ticket HTTP/1.1" 201' in output
    assert ticket not in output and "ticket=" not in output, lines


# ------------------------------------------------------------------------------------ resources


def _tcp_ports(pid, remote_port=None, local_port=None):
    """Local ports of `pid`'s TCP connections (to a remote port, or from a local one)."""
    out = []
    for conn in psutil.Process(pid).net_connections(kind="tcp"):
        if not conn.raddr:
            continue
        if remote_port is not None and conn.raddr.port == remote_port:
            out.append(conn.laddr.port)
        if local_port is not None and conn.laddr.port == local_port:
            out.append(conn.raddr.port)
    return out


def _redis_clients_of(rds, pid, redis_port):
    """CLIENT LIST entries of the connections `pid` holds to Redis."""
    ports = set(_tcp_ports(pid, remote_port=redis_port))
    return [c for c in rds.client_list() if int(c["addr"].rsplit(":", 1)[1]) in ports]


def test_a_hundred_clients_leave_nothing_behind(web, streams, rds, redis_proc):
    (worker_pid,) = web.worker_pids()
    process = psutil.Process(worker_pid)
    users = [uuid.uuid4() for _ in range(50)]
    channels = [user_channel("notif:", u) for u in users]

    def one_round():
        with ThreadPoolExecutor(25) as pool:
            opened = list(pool.map(lambda u: streams(web, u), users * 2))   # two streams per user
        assert all(s.ok for s in opened)
        wait_until(lambda: web.open_streams() == 100, 10, message="100 open streams")
        # One subscription per user (not per stream), and one pub/sub connection for the process.
        assert all(n == 1 for _, n in rds.pubsub_numsub(*channels))
        pubsub = [c for c in _redis_clients_of(rds, worker_pid, redis_proc.port) if int(c["sub"]) > 0]
        assert len(pubsub) == 1, pubsub
        with ThreadPoolExecutor(25) as pool:
            list(pool.map(lambda s: s.close(), opened))
        wait_until(lambda: web.open_streams() == 0, 10, message="every stream to be cleaned up")
        wait_until(lambda: all(n == 0 for _, n in rds.pubsub_numsub(*channels)), 5,
                   message="every channel unsubscribed")
        wait_until(lambda: rds.keys("notif:streams:*") == [], 5, message="every slot released")
        assert rds.pubsub_channels(user_channel("notif:", "*")) == []

    def resources():
        """(descriptors other than network sockets, client connections, Redis connections).

        The pools' sockets are left out: redis-py's command pool grows to the peak number of
        greenlets talking to Redis at once and keeps its connections, so it may still grow."""
        sockets = process.net_connections(kind="inet")
        clients = sum(1 for c in sockets if c.laddr and c.laddr.port == web.port and c.raddr)
        to_redis = sum(1 for c in sockets if c.raddr and c.raddr.port == redis_proc.port)
        return process.num_fds() - len(sockets), clients, to_redis

    one_round()                    # warms the pools (PostgreSQL, Redis commands) up to their working size
    other_fds, _, to_redis = wait_until(lambda: (r := resources()) and r[1] == 0 and r, 10,
                                        message="no client connection left")
    memory = process.memory_info().rss
    greenlets = web.get("/healthz?greenlets=1", headers=OPERATOR).json()["greenlets"]
    one_round()
    seen = []
    wait_until(lambda: seen.append(r := resources()) or (r[1] == 0 and r[0] <= other_fds + 2), 10,
               message=lambda: f"no client socket and about {other_fds} other descriptors (now: {seen[-1]})")
    print(f"100 clients: {other_fds} -> {seen[-1][0]} other fds; Redis connections {to_redis} -> {seen[-1][2]}")
    assert process.memory_info().rss < memory + 20 * 2**20
    assert web.get("/healthz?greenlets=1", headers=OPERATOR).json()["greenlets"] <= greenlets   # a stream holds no greenlet
    # The process still serves streams afterwards.
    stream = streams(web, users[0])
    trigger(web, [users[0]], title="still works")
    assert stream.wait_events(1)[0].json()["title"] == "still works"


# ------------------------------------------------------------------------------------ scale-out


def test_two_workers_and_two_servers_all_receive(web, clean, processes, streams, db):
    """One trigger reaches streams on both workers of one gunicorn and on another gunicorn."""
    other = processes.start_web(clean, workers=2, keepalive=1)
    pids = other.worker_pids()
    assert len(pids) == 2
    owner = {}                     # stream -> the gunicorn worker holding its connection
    opened = []
    for _ in range(40):
        user_id = uuid.uuid4()
        stream = streams(other, user_id)
        assert stream.ok
        local = stream._sock.getsockname()[1]
        owner[local] = wait_until(lambda: next((p for p in pids if local in _tcp_ports(p, local_port=other.port)),
                                               None), 5, message="the worker holding the connection")
        opened.append((user_id, stream, owner[local]))
        if len(set(owner.values())) == 2 and len(opened) >= 4:
            break
    assert len({pid for _, _, pid in opened}) == 2, "every connection went to one worker"
    on_shared = [(u, streams(web, u)) for u in (uuid.uuid4(), uuid.uuid4())]
    everyone = [(u, s) for u, s, _ in opened] + on_shared
    trigger(web, [u for u, _ in everyone], title="to everyone")
    for user_id, stream in everyone:
        (event,) = stream.wait_events(1)
        assert event.json()["title"] == "to everyone"
        assert event.id == str(stored(db, user_id)[0][0])
    # A direct push through the other server reaches the shared one's streams too.
    pushed = other.post("/v1/notifications/sse", headers=SERVICE, json={
        "type": "tasks", "event": "task_due", "title": "pushed", "user_ids": [str(u) for u, _ in everyone]})
    assert pushed.status_code == 200 and pushed.json()["users"] == len(everyone)
    for _, stream in everyone:
        assert stream.wait_events(2)[1].json()["title"] == "pushed"


def test_several_rq_workers_keep_the_stream_gap_free(web, clean, processes, streams, db, rds):
    for _ in range(3):             # with the shared one: four workers take jobs concurrently
        processes.start_worker(clean)
    user_id = uuid.uuid4()
    stream = streams(web, user_id)
    listener = rds.pubsub()
    listener.subscribe(user_channel("notif:", user_id))
    senders = [threading.Thread(target=lambda k=k: [trigger(web, [user_id], title=f"{k}-{n}") for n in range(50)])
               for k in range(6)]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join(60)
    rows = wait_stored(db, user_id, 300, timeout=60)
    published = []
    deadline = time.monotonic() + 10
    while len(published) < 300 and time.monotonic() < deadline:
        message = listener.get_message(timeout=0.5)
        if message and message["type"] == "message" and message["data"].startswith("n|"):
            published.append(int(message["data"].split("|")[1]))
    listener.close()
    inversions = [(a, b) for a, b in zip(published, published[1:]) if b < a]
    expected = [seq for seq, _, _ in rows]
    try:
        stream.wait_for(lambda s: s.events and s.events[-1].seq == expected[-1], 10, "the last notification")
    except AssertionError:
        pass
    missing = sorted(set(expected) - set(seqs(stream.snapshot())))
    assert not inversions and not missing, f"published out of order: {inversions}; never streamed: {missing}"


# ------------------------------------------------------------------------------------ Redis restart


def test_redis_restart_loses_nothing_and_duplicates_nothing(web, streams, db, redis_proc):
    """Redis goes away under an open stream: triggers are still accepted (the outbox), the relay
    enqueues them once Redis is back, the hub re-subscribes, and the client ends with every
    notification exactly once, in order (resuming from its cursor if the stream had to end)."""
    user_id = uuid.uuid4()
    client = ResumingStream(web, headers=bearer(user_id))
    try:
        trigger(web, [user_id], title="before")
        assert client.wait_events(1)[0].json()["title"] == "before"

        redis_proc.stop()
        try:
            started = time.monotonic()
            for n in range(2):
                trigger(web, [user_id], title=f"while down {n}")           # 202: in the outbox
            assert time.monotonic() - started < 10
            refused = web.stream(headers=bearer(uuid.uuid4()))              # no slot can be counted
            assert_error(refused.response, 503, "service_unavailable")
            refused.close()
        finally:
            redis_proc.start()

        client.wait_events(3, timeout=30)                                    # the relay's work
        trigger(web, [user_id], title="after")
        client.wait_events(4, timeout=20)
        client.settle(0.3)                                                   # a duplicate would show now
        print(f"redis restart: {client.connections} connection(s), refused meanwhile: {client.refused}")
        assert [e.json()["title"] for e in client.events] == ["before", "while down 0", "while down 1", "after"]
        assert seqs(client.events) == [seq for seq, _, _ in stored(db, user_id)]
        assert client.connections >= 1
    finally:
        client.close()


def test_sigterm_closes_the_streams_and_gives_their_slots_back(web, clean, processes, streams, rds):
    """A rolling restart: the stopping server's clients must be able to reconnect elsewhere at once,
    not wait three minutes for their per-user slots to expire."""
    other = processes.start_web(clean, workers=1, keepalive=1, SSE_MAX_STREAMS_PER_USER=MAX_STREAMS)
    user_id = uuid.uuid4()
    leaving = [streams(other, user_id) for _ in range(MAX_STREAMS)]
    assert all(s.ok for s in leaving) and rds.zcard(f"notif:streams:{user_id}") == MAX_STREAMS
    started = time.monotonic()
    other.stop()
    for stream in leaving:
        stream.wait_ended(5)      # the connections were closed, not left to time out
    assert rds.zcard(f"notif:streams:{user_id}") == 0
    assert time.monotonic() - started < 5
    assert streams(web, user_id).ok   # the user reconnects to the server still running


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1 (cert file, key file)."""
    from testkit.providers import self_signed_cert
    return self_signed_cert(tmp_path_factory.mktemp("tls"))


def test_streams_over_gunicorns_own_tls(web, clean, processes, streams, db, certificate):
    """A TLS connection cannot be handed to the hub as a bare socket (its encryption state lives in
    the object): it is served by the generator, with the same frames, replay and limits."""
    secure = processes.start_web(clean, workers=1, keepalive=1, tls=certificate)
    user_id = uuid.uuid4()
    stream = streams(secure, user_id)
    assert stream.ok, stream.response.text
    trigger(secure, [user_id], title="over tls")
    (event,) = stream.wait_events(1)
    assert event.json()["title"] == "over tls" and event.id == str(stored(db, user_id)[0][0])
    stream.wait_comments("keep-alive")
    stream.close()
    wait_until(lambda: secure.open_streams() == 0, 5, message="the TLS stream to be cleaned up")
    resumed = streams(secure, user_id, last_event_id=0)
    assert [e.json()["title"] for e in resumed.wait_events(1)] == ["over tls"]
