"""The full path: trigger -> RQ worker -> stored -> stream, 1,000 users, 10 triggers/s for 30 s, ONE
web worker and `--rq-workers` `python -m workers`; p50/p99 from the trigger's send to the stream.

    python -m bench.streams full-path [--rq-workers 2]
"""
import http.client
import time
import uuid

from bench.load import marked_title
from bench.measure import log, percentile, trend
from bench.rig import Bench, Target, post_json, ramp, spec_body, wait_received
from testkit.processes import cpu_seconds


def full_path(sizes, keep=False, event="task/task_due", channels=None, beside_bulk=0, urgent_worker=False,
              rate_limits="on", recipients=None):
    """trigger -> RQ worker (`python -m workers`) -> stored -> stream, 1,000 users, `rate` triggers/s,
    with the shipped defaults (rate limits on).

    `event` (group/event): task/task_due is in-app only, so the worker's time is the stream path, not
    email jobs; security/login_alert measures the urgent lane (its email and SMS rows are skipped at
    once: the bench's users have no contact). `channels` (a list) goes into each trigger: `["system"]`
    keeps an urgent event's trigger to the in-app channel. `beside_bulk`: a `priority: bulk` trigger
    to that many other users (in-app only) is posted just before the measured triggers, so its fan-out
    runs beside them; `urgent_worker`: one more worker, `WORKER_LANES=urgent` (Procfile `urgent`).
    `recipients`: each measured trigger goes to that many of the connected users, in turn (a login
    alert goes to one user), instead of to all of them.
    `rate_limits="off"`: the settings of the benches before the shipped defaults (rate limits off),
    to compare with an older commit's run; the result says so."""
    group, _, event_name = event.partition("/")
    with Bench("full-path", keep) as bench:
        bench.start_redis()
        bench.start_database()
        server = bench.start_ours(workers=1, shipped=rate_limits == "on")
        rq_workers = [bench.start_rq_worker() for _ in range(sizes.rq_workers)]
        if urgent_worker:
            rq_workers.append(bench.start_rq_worker(WORKER_LANES="urgent"))
        target = Target("ours")
        clients = bench.start_clients(sizes.clients, server.port)
        users = [uuid.uuid4() for _ in range(sizes.latency_streams)]
        ramp(bench, clients, target.paths_and_tokens(users), sizes.step, progress=False)
        status = clients.status()
        if status["open"] != len(users):
            raise RuntimeError(f"only {status['open']} of {len(users)} streams opened: {status}")
        str_users = [str(u) for u in users]
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        accept_times = []

        def trigger(sequence, audience=str_users):
            body = spec_body(audience, marked_title(sequence), type=group, event=event_name, rec_type="tasks")
            if channels:
                body["channels"] = channels
            started = time.perf_counter()
            post_json(conn, "/v1/notifications/trigger", body, 202)
            accept_times.append(time.perf_counter() - started)

        for i in range(3):
            trigger(i)
        wait_received(clients, 3 * len(users), stall=10)
        clients.call("reset")
        clients.call("record", True)
        accept_times.clear()
        for start in range(0, beside_bulk, 10_000):   # queue.yaml batch.max_user_ids a trigger
            bulk = spec_body([str(uuid.uuid4()) for _ in range(min(10_000, beside_bulk - start))], "bulk",
                             type="task", event="task_due", rec_type="tasks")
            bulk.update(priority="bulk", channels=["system"])
            post_json(conn, "/v1/notifications/trigger", bulk, 202)
        cpu0, client_cpu0 = server.workers_cpu(), clients.cpu()
        rq_cpu0 = sum(cpu_seconds(w.proc.pid) for w in rq_workers)
        count = int(sizes.full_path_seconds * sizes.rate)
        each = recipients or len(users)
        audiences = [[str_users[(i * each + k) % len(users)] for k in range(each)] for i in range(count)]
        interval = 1.0 / sizes.rate
        log(f"full path: {count} triggers, each to {each} of {len(users)} users, at {sizes.rate}/s; web worker pid "
            f"{server.worker_pids()[0]}, RQ worker pid(s) {[w.proc.pid for w in rq_workers]}")
        started = time.monotonic()
        for i in range(count):
            delay = started + i * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            trigger(100 + i, audiences[i])
        seconds = time.monotonic() - started
        expected = count * each
        received, last_change = wait_received(clients, expected, stall=10, limit=180)
        still_arriving = received < expected and time.monotonic() - last_change < 10
        latencies, parts = clients.latencies()
        conn.close()
        bulk_rate = _bulk_stored_per_second(bench.database_url) if beside_bulk else None
        result = {
            "p50_first_tenth_ms": trend(parts)[0], "p50_last_tenth_ms": trend(parts)[1],
            "event": event, "channels": channels, "beside_bulk": beside_bulk, "urgent_worker": urgent_worker, "rate_limits": "on (shipped)" if rate_limits == "on" else "off", "streams": len(users), "recipients": each, "rq_workers": sizes.rq_workers, "triggers": count, "achieved_rate": count / seconds,
            "expected": expected, "received": received, "lost": expected - received,
            "still_arriving_after_180s": still_arriving,
            "p50_ms": percentile(latencies, 0.50) * 1000 if latencies else None,
            "p99_ms": percentile(latencies, 0.99) * 1000 if latencies else None,
            "max_ms": max(latencies) * 1000 if latencies else None,
            "accept_p50_ms": percentile(accept_times, 0.5) * 1000 if accept_times else None,
            "web_cpu": server.workers_cpu() - cpu0, "rq_cpu": sum(cpu_seconds(w.proc.pid) for w in rq_workers) - rq_cpu0,
            "client_cpu": clients.cpu() - client_cpu0,
            "bulk_stored_per_s": bulk_rate,
        }
        log(f"full path: {result}")
        clients.call("close")
        return result


def _bulk_stored_per_second(url):
    """The bulk triggers' notifications over the time their chunks' transactions spanned (each row's
    `created_at` is its transaction's start): how fast the bulk kept flowing beside the urgent ones."""
    import psycopg2
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*), extract(epoch FROM max(n.created_at) - min(n.created_at))"
                        " FROM notifications n JOIN triggers t ON t.id = n.trigger_id"
                        " WHERE t.body->>'priority' = 'bulk'")
            stored, seconds = cur.fetchone()
        return stored / float(seconds) if seconds else None
    finally:
        conn.close()
