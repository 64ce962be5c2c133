"""`./dev up` listens on loopback only (Issue 16 point 5): it runs with the published development
secrets, so anyone who could reach it on the network could mint tokens. HOST opts out."""
import os
import signal
import subprocess
import sys
import time

import pytest
import requests

from devtools.services import REPO_ROOT, free_port

pytestmark = pytest.mark.slow

REPO = str(REPO_ROOT)


def listening(port):
    """The local addresses of the sockets listening on `port` (IPv4 and IPv6), from /proc."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as handle:
            for line in handle.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                address, hex_port = local.rsplit(":", 1)
                if state == "0A" and int(hex_port, 16) == port:   # 0A: LISTEN
                    found.add(address)
    return found


def start_dev_up(base_env, tmp_path, **extra):
    port = free_port()
    env = dict(os.environ, **base_env, PORT=str(port), WEB_CONCURRENCY="1",
               PROMETHEUS_MULTIPROC_DIR=str(tmp_path), **extra)
    if "HOST" not in extra:
        env.pop("HOST", None)
    proc = subprocess.Popen([sys.executable, "-m", "devtools.up"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=3).status_code == 200:
                return proc, port
        except requests.RequestException:   # not listening yet, or the worker still booting
            pass
        if proc.poll() is not None:
            pytest.fail(f"./dev up exited: {proc.stdout.read()}")
        time.sleep(0.3)
    stop(proc)
    pytest.fail("./dev up did not answer on 127.0.0.1 within 60 s")


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    try:
        output, _ = proc.communicate(timeout=40)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
    return output


def test_dev_up_listens_on_loopback_only(base_env, tmp_path):
    proc, port = start_dev_up(base_env, tmp_path)
    try:
        addresses = listening(port)
    finally:
        output = stop(proc)
    assert addresses == {"0100007F"}, addresses   # 127.0.0.1, and nothing on 0.0.0.0 or ::
    assert f"serving on http://127.0.0.1:{port}" in output


def test_host_opens_it_to_the_network(base_env, tmp_path):
    proc, port = start_dev_up(base_env, tmp_path, HOST="0.0.0.0")
    try:
        addresses = listening(port)
    finally:
        output = stop(proc)
    assert addresses == {"00000000"}, addresses
    assert f"serving on http://0.0.0.0:{port}" in output
