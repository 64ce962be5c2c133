"""The stream hub against what anyone who can write to Redis may publish (issue 17, points 2 and 3).

Messages are PUBLISHed straight to Redis, on the channels of users whose
streams are open on a real gunicorn (two gevent workers) with a real RQ worker:
forged ones (the issue's SSE injection, unsealed or wrongly sealed messages, a
genuine message replayed on another user's channel) and malformed ones of
every shape, some sealed with the service's own key to show that the hub
checks more than the seal. No stream may carry an injected line, every stream
must still get the next real notification, and each drop is counted.

The hub's own recovery from an unexpected error is driven in a gevent child
process against the run's Redis, with a stand-in for a stream whose first
`offer` raises: the hub must close its socket, reconnect, resynchronise and
go on delivering.
"""
import hashlib
import hmac
import json
import os
import re
import subprocess
import sys
import textwrap
import uuid

import pytest
import redis as redis_lib

from app.config import DEV_SECRET_KEY
from app.bus.codec import MAX_MESSAGE, message_key, user_channel
from testkit.api import IN_APP, trigger
from testkit.identity import bearer
from testkit.processes import wait_until, web_and_worker
from devtools.services import REPO_ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]
KEY = message_key(DEV_SECRET_KEY)   # the services run with DEVELOPMENT=true and no SECRET_KEY
CUSTOMER = "550e8400-e29b-41d4-a716-446655440000"
FORGED_TITLE = "Your account is blocked: call +44 20 0000 0000"


@pytest.fixture(scope="module")
def services(base_env, tmp_path_factory):
    with web_and_worker(base_env, tmp_path_factory.mktemp("hub-services"), workers=2) as services:
        yield services


@pytest.fixture
def rds(clean):
    """The run's Redis with bytes replies (the conftest's decodes them)."""
    client = redis_lib.Redis.from_url(clean["REDIS_URL"])
    yield client
    client.close()


def sealed(channel, rest):
    """`rest` sealed as the service seals it (app/bus/codec.py), whatever it holds."""
    scope = b"*" if rest.startswith(b"d|") else channel
    return hmac.digest(KEY, scope + b"\x00" + rest, hashlib.sha256)[:16].hex().encode() + b"|" + rest


def forged_messages(channel, other_channel):
    """(label, bytes) of every shape the hub must drop, for one user's channel."""
    injection = (b'd|||{"title":"' + FORGED_TITLE.encode() + b'"}\nid: 900000000000000000\nevent: reset\n'
                 b'data: {"cursor":900000000000000000}')
    genuine_elsewhere = sealed(other_channel, b'n|900000000000000000||{"title":"' + FORGED_TITLE.encode() + b'"}')
    return [
        # not sealed by the service
        ("the issue's injection", injection),
        ("old format, well formed", b'n|900000000000000000||{"title":"' + FORGED_TITLE.encode() + b'"}'),
        ("a made-up seal", b"0" * 32 + b'|n|900000000000000000||{"title":"' + FORGED_TITLE.encode() + b'"}'),
        ("another user's message", genuine_elsewhere),
        ("altered after sealing", sealed(channel, b'n|5||{"title":"x"}').replace(b"|5|", b"|900000000000000000|")),
        ("binary", os.urandom(300)),
        ("empty", b""),
        ("huge", b"d|||" + b"x" * (MAX_MESSAGE + 1)),
        # sealed, but not what the service sends
        ("unknown kind", sealed(channel, b'x|1||{"title":"x"}')),
        ("cursor not a number", sealed(channel, b'n|abc||{"title":"x"}')),
        ("negative cursor", sealed(channel, b'n|-5||{"title":"x"}')),
        ("cursor beyond bigint", sealed(channel, b'n|99999999999999999999||{"title":"x"}')),
        ("cursor on a direct push", sealed(channel, b'd|900000000000000000||{"title":"x"}')),
        ("customer not a UUID", sealed(channel, b'n|7|A|B|{"title":"x"}')),
        ("event not allowed", sealed(channel, b'e|reset|*|{"cursor":900000000000000000}')),
        ("read for every stream", sealed(channel, b'e|read|*|{"ids":[]}')),
        ("unread for one customer", sealed(channel, b'e|unread|' + CUSTOMER.encode() + b'|{"unread":9}')),
        ("line break in the body", sealed(channel, b'd|||{"title":"x"}\nid: 900000000000000000')),
        ("carriage return in the body", sealed(channel, b'd|||{"title":"x"}\revent: reset')),
        ("JSON whitespace line break", sealed(channel, b'd|||{"title":\n"x"}')),
        ("not JSON", sealed(channel, b"d|||title=x")),
        ("JSON but not an object", sealed(channel, b'd|||["x"]')),
        ("invalid UTF-8", sealed(channel, b'd|||{"title":"\xff\xfe"}')),
        ("too few fields", sealed(channel, b"n|7")),
        ("sealed and huge", sealed(channel, b'd|||{"title":"' + b"x" * MAX_MESSAGE + b'"}')),
    ]


WRONG_CHANNELS = ["notif:user2:", "notif:user2:*", "notif:users:{uid}", "notif:user2:{uid}:x", "{uid}",
                  "notif:user2:{uid}\n", "NOTIF:USER2:{uid}", "notif:user:{uid}"]   # the last: the old format's


def dropped(web):
    """{reason: count} summed over the web workers, from /metrics."""
    text = web.get("/metrics").text
    out = {}
    for reason, value in re.findall(r'^notif_hub_dropped_messages_total\{reason="(\w+)"\} ([0-9.e+]+)$', text, re.M):
        out[reason] = out.get(reason, 0) + float(value)
    return out


def test_forged_and_malformed_messages_never_reach_a_stream(services, clean, rds):
    web = services.web
    users = [uuid.uuid4() for _ in range(6)]
    scoped_user = users[0]
    opened = []
    try:
        for user_id in users:
            for _ in range(2):
                customers = [CUSTOMER] if user_id == scoped_user else None
                opened.append((user_id, web.stream(headers=bearer(user_id, customers=customers))))
        for _, stream in opened:
            assert stream.ok, stream.response.text
            stream.wait_named("unread")          # subscribed: the hub confirmed its channel
        before = dropped(web)

        shapes = 0
        for index, user_id in enumerate(users):
            channel = user_channel("notif:", user_id).encode()
            other = user_channel("notif:", users[index - 1]).encode()
            messages = forged_messages(channel, other)
            shapes = len(messages)
            for _, message in messages:
                assert rds.publish(channel, message) >= 1    # a hub heard it
            for pattern in WRONG_CHANNELS:
                rds.publish(pattern.format(uid=user_id), sealed(channel, b'd|||{"title":"' + FORGED_TITLE.encode() + b'"}'))

        # Every stream of every worker still gets the next real notification, and only it.
        trigger(web, users, title="Real", customer_id=CUSTOMER, **IN_APP)
        for user_id, stream in opened:
            (event,) = stream.wait_events(1, timeout=20)
            assert event.json()["title"] == "Real" and int(event.id) < 900000000000000000
            stream.wait_named("unread", 2)
        for user_id, stream in opened:
            raw = bytes(stream.raw)
            assert b"900000000000000000" not in raw and FORGED_TITLE.encode() not in raw, raw[-2000:]
            assert b"event: reset" not in raw and stream.named("reset") == []
            assert [e.json()["title"] for e in stream.events] == ["Real"]
            assert {e.event for e in stream.all_events} == {None, "unread"}

        # Counted: each channel's messages were dropped by every worker subscribed to it.
        after = wait_until(lambda: (d := dropped(web)) and sum(d.values()) - sum(before.values())
                           >= shapes * len(users) and d, 10, message="the drops to be counted")
        # every reason counted by this test's messages (each series starts at zero: app/metrics.py)
        grown = {reason for reason, value in after.items() if value > before.get(reason, 0)}
        assert {"format", "signature", "size", "kind", "cursor", "customer", "event", "body"} <= grown
        for process in (web, services.worker):
            assert process.alive
        assert "Traceback" not in web.output()
    finally:
        for _, stream in opened:
            stream.close()


RECOVERY_CHILD = textwrap.dedent("""
    from gevent import monkey
    monkey.patch_all()
    import json, sys, time
    import gevent, redis
    from app.bus.codec import message_key, notification_message, seal
    from app.bus import client_name
    from app.streams.hub import Hub
    from app.streams.stream import RESYNC

    url, channel = sys.argv[1], "probe:user:1"
    key = message_key("a-secret-of-the-child-process-0123456789")

    class Probe:
        '''What the hub uses of a Stream; its first notification raises, as a bug would.'''
        customers, batch = None, None
        def __init__(self):
            self.channel, self.got, self.fail = channel, [], True
        def wants(self, customer):
            return True
        def offer(self, item):
            if item is not RESYNC and self.fail:
                self.fail = False
                raise RuntimeError("a bug in a stream")
            first = self.batch is None
            self.batch = (self.batch or []) + [item]
            return first
        def flush(self):
            items, self.batch = self.batch, None
            self.got.extend(items or [])

    def wait(predicate, seconds=10):
        deadline = time.monotonic() + seconds
        while not predicate():
            assert time.monotonic() < deadline, "timed out"
            gevent.sleep(0.02)

    def hub_connections():
        return [c for c in client.client_list() if c.get("name") == client_name("hub")]

    client = redis.Redis.from_url(url, decode_responses=True)
    hub, probe = Hub(url, "probe:", key), Probe()
    hub.register(probe).wait(5)
    first = hub_connections()
    client.publish(channel, seal(key, channel, notification_message(1, None, '{"n":1}')))
    wait(lambda: hub.reconnects == 2 and any(item is RESYNC for item in probe.got))
    wait(lambda: len(hub_connections()) == 1 and hub_connections()[0]["id"] != first[0]["id"])
    client.publish(channel, seal(key, channel, notification_message(2, None, '{"n":2}')))
    wait(lambda: any(type(item) is tuple and item[0] == 2 for item in probe.got))
    print(json.dumps({"connections_before": len(first), "connections_after": len(hub_connections()),
                      "replaced": hub_connections()[0]["id"] != first[0]["id"],
                      "resynced": sum(1 for item in probe.got if item is RESYNC),
                      "delivered": [item[0] for item in probe.got if type(item) is tuple]}))
""")


def test_an_unexpected_error_reconnects_and_resynchronises(clean):
    """The hub of issue 17 point 3 died here, silently, leaving its socket open."""
    done = subprocess.run([sys.executable, "-c", RECOVERY_CHILD, clean["REDIS_URL"]], capture_output=True,
                          text=True, timeout=60, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"connections_before": 1, "connections_after": 1, "replaced": True, "resynced": 1,
                      "delivered": [2]}, result
    assert "hub: unexpected error; reconnecting" in done.stderr
