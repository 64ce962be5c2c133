"""TLS everywhere (issue 19 point 1): the stream hub over `rediss://` (and `unix://`), and the whole
service against a Redis that speaks only TLS, with certificate checks on.

The TLS-only redis-server and its private CA come from testkit/processes.py (tls_redis_server). The hub's own
connection is driven in a gevent child process (as tests/streams/test_hub.py does) so that what it
refuses can be seen without a gunicorn in between.
"""
import json
import socket
import subprocess
import sys
import textwrap
import threading
import uuid

import pytest
import redis as redis_lib

from testkit.identity import SERVICE, bearer
from testkit.processes import tls_redis_server, wait_until
from testkit.rows import scalar
from devtools.services import REPO_ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]
ROOT = str(REPO_ROOT)


@pytest.fixture
def tls_redis(tmp_path):
    started = tls_redis_server(tmp_path)
    if started is None:
        pytest.skip("no TLS-capable redis-server and openssl on this machine")
    proc, url = started
    yield url
    proc.kill()
    proc.wait()


def another_ca(directory):
    """A self-signed certificate for 127.0.0.1 that did not sign the server's: the wrong CA."""
    cert, key = directory / "other-ca.pem", directory / "other-ca-key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-keyout", str(key),
                    "-out", str(cert), "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert


def test_streams_triggers_and_the_worker_over_a_tls_only_redis(clean, processes, tmp_path, db, tls_redis):
    """gunicorn and the worker on `rediss://` with a private CA: a stream gets a trigger's
    notification and a direct push live (a push is never stored, so only the hub can carry it)."""
    env = dict(clean, REDIS_URL=tls_redis)
    web = processes.start_web(env)
    processes.start_worker(env)
    user = uuid.uuid4()
    with web.stream(headers=bearer(user)) as stream:
        assert stream.ok
        body = {"type": "tasks", "event": "task_due", "user_ids": [str(user)]}
        assert web.post("/v1/notifications/trigger", headers=SERVICE, json=dict(body, title="over TLS")).ok
        stream.wait_events(1, timeout=20)
        assert web.post("/v1/notifications/sse", headers=SERVICE, json=dict(body, title="pushed over TLS")).ok
        stream.wait_events(2, timeout=20)
    assert [e.json()["title"] for e in stream.events] == ["over TLS", "pushed over TLS"]
    assert scalar(db, "SELECT count(*) FROM notifications") == 1      # the worker took the trigger
    names = [c.get("name", "") for c in redis_lib.Redis.from_url(tls_redis, decode_responses=True).client_list()]
    assert any(name.endswith(":hub") for name in names), names          # the hub's own TLS connection
    assert "Traceback" not in web.output()


HUB_CHILD = textwrap.dedent("""
    from gevent import monkey
    monkey.patch_all()
    import json, sys
    import gevent, redis
    from app.bus.codec import direct_message, message_key, seal
    from app.streams.hub import Hub

    hub_url, publisher_url, channel = sys.argv[1], sys.argv[2], "probe:user:1"
    key = message_key("a-secret-of-the-child-process-0123456789")

    class Probe:
        '''What the hub uses of a Stream.'''
        customers, batch = None, None
        def __init__(self):
            self.channel, self.got = channel, []
        def wants(self, customer):
            return True
        def offer(self, item):
            first = self.batch is None
            self.batch = (self.batch or []) + [item]
            return first
        def flush(self):
            items, self.batch = self.batch, None
            self.got.extend(items or [])

    hub, probe = Hub(hub_url, "probe:", key), Probe()
    subscribed = hub.register(probe).wait(float(sys.argv[3]))
    publisher = redis.Redis.from_url(publisher_url) if publisher_url != "-" else None
    if publisher is not None:
        publisher.publish(channel, seal(key, channel, direct_message(None, '{"title":"live"}')))
    for _ in range(100):
        if probe.got:
            break
        gevent.sleep(0.05)
    print(json.dumps({"subscribed": bool(subscribed), "got": [item[2].decode() for item in probe.got]}))
""")


def run_hub(hub_url, publisher_url="-", wait=10):
    done = subprocess.run([sys.executable, "-c", HUB_CHILD, hub_url, publisher_url, str(wait)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def test_the_hub_speaks_tls_and_authenticates_as_the_urls_user(tls_redis):
    admin = redis_lib.Redis.from_url(tls_redis)
    admin.execute_command("ACL", "SETUSER", "hubuser", "on", ">hub-password", "~*", "&*", "+@all")
    admin.execute_command("ACL", "SETUSER", "default", "off")
    url = tls_redis.replace("rediss://", "rediss://hubuser:hub-password@")
    result, _ = run_hub(url, url)
    assert result["subscribed"] is True
    assert len(result["got"]) == 1 and '"title":"live"' in result["got"][0]


def test_a_wrong_ca_is_refused_and_no_event_reaches_the_hub(tls_redis, tmp_path):
    wrong = tls_redis.split("?")[0] + f"?ssl_ca_certs={another_ca(tmp_path)}"
    result, stderr = run_hub(wrong, tls_redis, wait=3)
    assert result == {"subscribed": False, "got": []}
    assert "CERTIFICATE_VERIFY_FAILED" in stderr, stderr[-2000:]
    names = [c.get("name", "") for c in redis_lib.Redis.from_url(tls_redis, decode_responses=True).client_list()]
    assert not any(name.endswith(":hub") for name in names), names


def test_the_hub_sends_nothing_in_clear_to_a_rediss_url(tmp_path):
    """What a listener on the far end of `rediss://` receives from the hub: a TLS ClientHello,
    never the password or a command in clear."""
    listener = socket.create_server(("127.0.0.1", 0))
    received = []

    def accept():
        conn, _ = listener.accept()
        conn.settimeout(3)
        try:
            received.append(conn.recv(65536))
        except OSError:
            pass
        conn.close()
    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    port = listener.getsockname()[1]
    result, _ = run_hub(f"rediss://user:secret-password@127.0.0.1:{port}/0?ssl_ca_certs={another_ca(tmp_path)}",
                        wait=2)
    thread.join(5)
    listener.close()
    assert result["subscribed"] is False
    assert received and received[0][:1] == b"\x16"                   # a TLS handshake record
    assert b"secret-password" not in received[0] and b"AUTH" not in received[0]


def test_the_hub_over_a_unix_socket(tmp_path):
    import shutil
    from devtools.services import spawn
    path = tmp_path / "redis.sock"
    proc = spawn([shutil.which("redis-server"), "--port", "0", "--unixsocket", str(path), "--save", "",
                  "--appendonly", "no", "--dir", str(tmp_path)],
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"unix://{path}?db=0"
        wait_until(lambda: path.exists(), 10, message="the redis-server's unix socket")
        result, _ = run_hub(url, url)
        assert result["subscribed"] is True and len(result["got"]) == 1
    finally:
        proc.kill()
        proc.wait()
