"""Direct push latency: 1,000 users x 1 stream on ONE worker, 10 pushes/s for 30 s; p50/p99 from send
to receive, over every delivery. Ours through POST /v1/notifications/sse; the peer published to
straight in Redis (its own API is far too slow for the rate, timed once).

    python -m bench.streams latency [--peer] [--seconds 30]
"""
import http.client
import json
import time
import uuid

from bench.load import marked_title
from bench.measure import log, own_cpu, percentile, trend
from bench.rig import Bench, LuaPublisher, notification_json, post_json, ramp, spec_body, wait_received


def push_latency(kind, sizes, keep=False, via="redis"):
    """1,000 users x 1 stream, `rate` pushes/s for `latency_seconds`: p50/p99 from send to receive.

    Ours pushes through POST /v1/notifications/sse (the direct push). The peer is published to
    with `via`: "redis" (default) = the bench's Lua script straight into its users' channels,
    1,000 PUBLISHes per call; "api" = its POST /publish, `sse.publish` per channel, which builds
    a new Redis client (and connection) per call: far too slow for 10 pushes/s to 1,000 users,
    so by default it is only timed once, after the measurement ("peer_api_push_seconds").
    """
    with Bench(f"latency-{kind}", keep) as bench:
        server, target, clients = bench.serve(kind, 1, sizes.clients)
        users = [uuid.uuid4() for _ in range(sizes.latency_streams)]
        _, _, complete, refusals = ramp(bench, clients, target.paths_and_tokens(users), sizes.step, progress=False)
        status = clients.status()
        if status["open"] != len(users):
            raise RuntimeError(f"{kind}: only {status['open']} of {len(users)} streams opened: {status}")
        str_users = [str(u) for u in users]
        channels = [target.channel(u) for u in users]
        publisher = LuaPublisher(bench.redis)
        push_times = []

        def push(sequence):
            title = marked_title(sequence)
            started = time.perf_counter()
            if kind == "ours":
                post_json(conn, "/v1/notifications/sse", spec_body(str_users, title), 200)
            elif via == "api":
                post_json(conn, "/publish", {"channels": str_users, "data": json.loads(notification_json(title))}, 200,
                          headers={})
            else:
                publisher.publish(channels, target.message(notification_json(title)))
            push_times.append(time.perf_counter() - started)

        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        for i in range(5):            # warm-up, not measured
            push(i)
        wait_received(clients, 5 * len(users), stall=5)
        clients.call("reset")
        clients.call("record", True)
        push_times.clear()
        cpu0, client_cpu0, own0 = server.workers_cpu(), clients.cpu(), own_cpu()
        pushes = int(sizes.latency_seconds * sizes.rate)
        interval = 1.0 / sizes.rate
        log(f"{kind}: {pushes} pushes to {len(users)} streams at {sizes.rate}/s "
            f"({'direct push' if kind == 'ours' else via}); worker pid {server.worker_pids()[0]}")
        started = time.monotonic()
        late = 0
        for i in range(pushes):
            due = started + i * interval
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif delay < -interval:
                late += 1
            push(100 + i)
        push_seconds = time.monotonic() - started
        expected = pushes * len(users)
        received, _ = wait_received(clients, expected, stall=5)
        latencies, parts = clients.latencies()
        api_seconds = None
        if kind == "peer" and via == "redis":   # one push through the peer's own API, timed
            started = time.perf_counter()
            body = json.dumps({"channels": str_users, "data": json.loads(notification_json("api"))})
            conn.request("POST", "/publish", body=body, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            api_seconds = time.perf_counter() - started if response.status == 200 else None
        conn.close()
        result = {
            "peer_api_push_seconds": api_seconds,
            "p50_first_tenth_ms": trend(parts)[0], "p50_last_tenth_ms": trend(parts)[1],
            "kind": kind, "via": via if kind == "peer" else "api", "streams": len(users), "pushes": pushes,
            "achieved_rate": pushes / push_seconds, "late_pushes": late,
            "expected": expected, "received": received, "lost": expected - received,
            "p50_ms": percentile(latencies, 0.50) * 1000 if latencies else None,
            "p99_ms": percentile(latencies, 0.99) * 1000 if latencies else None,
            "max_ms": max(latencies) * 1000 if latencies else None,
            "push_request_p50_ms": percentile(push_times, 0.5) * 1000 if push_times else None,
            "push_request_p99_ms": percentile(push_times, 0.99) * 1000 if push_times else None,
            "worker_cpu": server.workers_cpu() - cpu0, "client_cpu": clients.cpu() - client_cpu0,
            "driver_cpu": own_cpu() - own0, "complete": complete,
        }
        log(f"{kind} latency: {result}")
        clients.call("close")
        return result
