"""Slow and reset clients: a stream that stops reading is cut in bounded time without slowing a
healthy one; a client that vanishes with a reset is cleaned up at once."""
import collections
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import requests

from testkit.identity import SERVICE, make_token
from tests.faults.rig import Result, bearer, wait_for


def _raw_stream(web, user_id, rcvbuf=None):
    """A stream opened on a bare socket (optionally with a tiny receive buffer); reads the headers only."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", web.port))
    token = make_token(user_id, exp_in=3600)
    sock.sendall(f"GET /v1/notifications/sse HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
                 f"Accept: text/event-stream\r\n\r\n".encode())
    head = b""
    while not head.endswith(b"\r\n\r\n"):           # byte by byte: nothing of the body is read
        chunk = sock.recv(1)
        assert chunk, f"the server closed the stream: {head[:200]!r}"
        head += chunk
    assert head.startswith(b"HTTP/1.1 200"), head[:200]
    return sock


def slow_clients(rig, pushes=400, queue_size=16, cut_within=15.0):
    """A stream that stops reading is cut within a bounded time and does not slow a healthy stream; a
    stream whose client vanishes with a reset (SO_LINGER 0) is cleaned up: /healthz streams returns
    to the baseline."""
    res = Result("slow")
    env = rig.env()
    web = rig.web(env, workers=1, keepalive=1, SSE_QUEUE_SIZE=queue_size)
    slow_user, good_user, rst_user = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    good = web.stream(headers=bearer(good_user), read_timeout=30)
    wait_for(lambda: web.open_streams() == 1, 10, 0.05)
    baseline = web.open_streams()                     # 1: the healthy stream
    slow = _raw_stream(web, slow_user, rcvbuf=4096)   # never read again
    wait_for(lambda: web.open_streams() == baseline + 1, 10)
    payload = "x" * 4800          # the server's send buffer autotunes up to tcp_wmem's max (4 MB): push more
    latencies = []
    cut_at = None
    started = time.monotonic()
    local = threading.local()

    def push(i):
        if not hasattr(local, "s"):
            local.s = requests.Session()
        body = {"type": "chat", "event": "message_received", "title": f"slow {i}", "content": payload,
                "user_ids": [str(slow_user)]}
        return local.s.post(web.url + "/v1/notifications/sse", json=body, headers=SERVICE, timeout=10).status_code

    pusher = ThreadPoolExecutor(6)
    pushed = pusher.map(push, range(pushes))
    pushing = threading.Thread(target=lambda: collections.deque(pushed, maxlen=0), daemon=True)
    pushing.start()
    with requests.Session() as s:
        i = 0
        while pushing.is_alive() or (cut_at is None and time.monotonic() - started < cut_within + 30):
            sent = time.monotonic()
            before = len(good.events)
            s.post(web.url + "/v1/notifications/sse", json={"type": "chat", "event": "message_received",
                                                           "title": f"good {i}", "user_ids": [str(good_user)]},
                   headers=SERVICE, timeout=10)
            good.wait_for(lambda st: len(st.events) > before, 10, "the healthy stream's event")
            latencies.append(good.events[before].at - sent)
            if cut_at is None and web.open_streams() == baseline:
                cut_at = time.monotonic()
                if not pushing.is_alive():
                    break
            i += 1
            time.sleep(0.25)
    pusher.shutdown()
    pushed_in = time.monotonic() - started
    slow_cut_in = (cut_at - started) if cut_at else None
    slow.close()
    # a client that vanishes with RST (SO_LINGER 0): counted back to the baseline at once
    rst = _raw_stream(web, rst_user)
    wait_for(lambda: web.open_streams() == baseline + 1, 10)
    rst.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    rst.close()
    rst_at = time.monotonic()
    cleaned, _ = wait_for(lambda: web.open_streams() == baseline, 10, 0.05)
    rst_cleaned_in = time.monotonic() - rst_at
    good.close()
    back_to_zero, _ = wait_for(lambda: web.open_streams() == 0, 10, 0.05)
    worst = max(latencies) if latencies else None
    res.figures = dict(pushes=pushes, queue_size=queue_size, slow_cut_after_s=slow_cut_in and round(slow_cut_in, 2),
                       healthy_latency_max_ms=worst and round(worst * 1000, 1),
                       healthy_latency_median_ms=latencies and round(sorted(latencies)[len(latencies) // 2] * 1000, 1),
                       rst_cleaned_in_s=round(rst_cleaned_in, 2), push_seconds=round(pushed_in, 1))
    res.line = (f"slow: non-reading stream cut after {slow_cut_in and f'{slow_cut_in:.1f} s' or 'NEVER'} "
                f"({pushes} pushes of {len(payload)} B, queue {queue_size}); healthy stream latency max "
                f"{res.figures['healthy_latency_max_ms']} ms; RST client cleaned up in {rst_cleaned_in:.2f} s; "
                f"streams back to 0: {bool(back_to_zero)}")
    res.check(slow_cut_in is not None,
              f"the non-reading stream was not cut within {cut_within} s")
    res.check(worst is not None and worst < 1.0, f"the healthy stream was slowed: worst latency {worst}")
    res.check(cleaned, "a stream reset by its client was not cleaned up")
    res.check(back_to_zero, "open streams did not return to 0")
    return res
