"""Every Redis connection of a web process comes from a bounded pool (issue 17, point 5).

A burst of streams opened at once, with the shipped rate limits on, against a
real gunicorn (two gevent workers): each opening is a rate-limit call, a slot
call and a subscription, hundreds at the same moment. Redis's own CLIENT LIST
and the kernel's table of each worker's sockets must show at most
bus.MAX_CONNECTIONS (12) connections per process, all named for
that process. (The load and the figures at 10,000 streams: bench/storm.py.)
"""
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
import redis as redis_lib

from app.bus import MAX_CONNECTIONS
from testkit.identity import make_token
from testkit.processes import ProcessGroup

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]
USERS, PER_USER = 100, 3


@pytest.fixture
def web(clean, tmp_path):
    with ProcessGroup(str(tmp_path)) as group:
        yield group.start_web(dict(clean, RATE_LIMITS_ENABLED="true"), workers=2, keepalive=5)


def connections(rds, web, redis_port):
    """{worker pid: (sockets to Redis in the kernel's table, CLIENT LIST names of those sockets)}."""
    clients = {int(c["addr"].rsplit(":", 1)[1]): c.get("name", "") for c in rds.client_list()}
    out = {}
    for pid in web.worker_pids():
        try:
            ports = [c.laddr.port for c in psutil.Process(pid).net_connections(kind="tcp")
                     if c.raddr and c.raddr.port == redis_port]
        except psutil.NoSuchProcess:
            continue
        out[pid] = (len(ports), sorted(clients.get(port, "?") for port in ports))
    return out


def test_a_burst_of_streams_holds_at_most_twelve_redis_connections_per_process(web, clean, redis_proc):
    rds = redis_lib.Redis.from_url(clean["REDIS_URL"], decode_responses=True)
    peak, stop = {}, threading.Event()

    def watch():
        while not stop.is_set():
            for pid, (count, names) in connections(rds, web, redis_proc.port).items():
                if count > peak.get(pid, (0, []))[0]:
                    peak[pid] = (count, names)
            stop.wait(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    users = [uuid.uuid4() for _ in range(USERS)]
    tokens = {u: {"Authorization": f"Bearer {make_token(u)}"} for u in users}
    opened = []
    try:
        with ThreadPoolExecutor(100) as pool:
            opened = list(pool.map(lambda u: web.stream(headers=tokens[u]), users * PER_USER))
        refused = [(s.status_code, s.response.text[:200]) for s in opened if not s.ok]
        assert refused == [], refused[:5]
        for stream in opened:
            stream.wait_named("unread")       # open: its channel subscribed, its counts read
    finally:
        stop.set()
        watcher.join(5)
        for stream in opened:
            stream.close()
    final = connections(rds, web, redis_proc.port)
    print(f"{USERS * PER_USER} streams: Redis connections per worker at the peak "
          f"{ {pid: count for pid, (count, _) in peak.items()} }, after { {pid: c for pid, (c, _) in final.items()} }")
    assert len(peak) == 2, peak
    for pid, (count, names) in list(peak.items()) + list(final.items()):
        assert count <= MAX_CONNECTIONS, (pid, count, names)
    # what a worker holds is its pools and its hub, each connection named for it (CLIENT SETNAME
    # follows the connect: the names are read once the burst is over)
    for pid, (_, names) in final.items():
        assert all(name.startswith(f"notifications:{pid}:") for name in names), (pid, names)
        purposes = {name.rsplit(":", 1)[1] for name in names}
        assert purposes <= {"commands", "ratelimit", "hub"} and "hub" in purposes, names
    # waiting for a pooled connection never made the limiter give up on Redis (fail open)
    assert "rate limits counted in memory" not in web.output()
    rds.close()
