"""Priority lanes: how long an urgent trigger's email takes to reach the SMTP server while a bulk
trigger's emails are queued, and how the bulk keeps flowing meanwhile.

    python -m bench.lanes --users 10000 --urgent 20 [--bulk-priority none] [--rate-limits off]

Starts its own Redis, a fresh database on the server of DATABASE_URL (default
postgresql://postgres@127.0.0.1:5432/postgres), an SMTP server in a process of its own
(testkit.providers.SMTPProcess) and ONE worker process (`python -m workers`), with the shipped
defaults, rate limits on (`--rate-limits off` turns them off, and the result says so); past
10,000 users (queue.yaml's `batch.max_user_ids`) the bulk trigger needs a larger
`max_user_ids` and MAX_CONTENT_LENGTH, which the result names. Then:

1. `--users` users get an email address; one trigger (chat/message_received: in-app + email)
   goes to all of them, with `priority: --bulk-priority` (`none`: the field left out, for a
   release without lanes); the bench waits until the worker has stored it (its email jobs queued),
   or with `--during-fanout` only until its first chunk is stored (the fan-out still running);
2. `--urgent` times, one every `--interval` seconds whatever has arrived, a trigger of
   security/login_alert (urgent) to one more user; its latency is from just before the POST to
   the moment the SMTP server has the whole message (the server's own clock, same machine).

Prints p50/p99/max of the urgent latencies and the bulk emails the SMTP server received during
the urgent phase (the bulk keeps flowing). An urgent email not received within `--patience`
seconds of its trigger is counted as that many seconds (and said so).
"""
import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
import uuid

from bench.measure import percentile
from bench.rig import SERVER_URL, add_rate_limits_option, shipped_env
from devtools.services import redis_server
from testkit.config_files import queue_yaml
from testkit.database import Database, service_env
from testkit.identity import API_KEY
from testkit.processes import ProcessGroup
from testkit.providers import SMTPProcess

MAX_USER_IDS = 10_000   # queue.yaml's batch.max_user_ids


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=10_000, help="users of the bulk trigger")
    parser.add_argument("--urgent", type=int, default=20, help="urgent triggers, one user each")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between urgent triggers")
    parser.add_argument("--bulk-priority", default="bulk", help="the bulk trigger's priority; none: left out")
    parser.add_argument("--during-fanout", action="store_true",
                        help="post the urgent triggers once the bulk's first chunk is stored, not after all of it")
    parser.add_argument("--patience", type=float, default=300.0, help="seconds to wait for one urgent email")
    add_rate_limits_option(parser)
    args = parser.parse_args()

    workdir = tempfile.mkdtemp(prefix="bench-lanes-")
    redis = redis_server()
    smtp = SMTPProcess().start()
    database = Database(os.environ.get("DATABASE_URL", SERVER_URL), prefix="bench_lanes")
    overrides = {}
    if args.users > MAX_USER_IDS:   # the shipped batch.max_user_ids and body cap refuse so large a trigger
        overrides = {"QUEUE_CONFIG": queue_yaml(workdir, batch={"max_user_ids": args.users}),
                     "MAX_CONTENT_LENGTH": str(16 * 1024 * 1024)}
    env = dict(shipped_env(service_env(database.url, redis.url, REDIS_PREFIX="benchlanes:", MAIL_SERVER="127.0.0.1",
                                       MAIL_PORT=str(smtp.port), MAIL_TIMEOUT="10"), args.rate_limits), **overrides)
    from app import create_app
    app = create_app(env)
    client = app.test_client()
    group = ProcessGroup(workdir)
    try:
        users = [uuid.uuid4() for _ in range(args.users)]
        _execute(database, "INSERT INTO contacts (user_id, email) SELECT u, 'bulk-' || u || '@example.org'"
                 " FROM unnest(%s::uuid[]) AS u", [str(u) for u in users])
        body = {"type": "chat", "event": "message_received", "title": "Monthly statement",
                "content": "Your statement is ready", "user_ids": [str(u) for u in users]}
        if args.bulk_priority != "none":
            body["priority"] = args.bulk_priority
        group.start_worker(env)
        started = time.monotonic()
        response = client.post("/v1/notifications/trigger", json=body, headers={"X-API-Key": API_KEY})
        assert response.status_code == 202, response.get_data(as_text=True)
        bulk_id = response.get_json()["trigger_id"]
        while database.scalar("SELECT status FROM triggers WHERE id = %s", bulk_id) != "dispatched":
            if args.during_fanout and database.scalar("SELECT users_done FROM triggers WHERE id = %s", bulk_id):
                break   # its first chunk is stored: the urgent triggers come while the fan-out runs
            time.sleep(0.05)
        stored = time.monotonic() - started
        bulk_before = len(smtp.messages)
        print(f"bulk of {args.users}: {'first chunk' if args.during_fanout else 'all'} stored in {stored:.1f} s; "
              f"{bulk_before} emails already sent",
              file=sys.stderr, flush=True)

        posted = []   # (address, when its trigger was posted), one every --interval seconds
        for i in range(args.urgent):
            user_id = uuid.uuid4()
            address = f"urgent-{i}-{user_id.hex[:8]}@example.org"
            _execute(database, "INSERT INTO contacts (user_id, email) VALUES (%s, %s)", str(user_id), address)
            sent_at = time.time()
            response = client.post("/v1/notifications/trigger", headers={"X-API-Key": API_KEY}, json={
                "type": "security", "event": "login_alert", "title": "New sign-in",
                "content": "A new device signed in", "user_ids": [str(user_id)]})
            assert response.status_code == 202, response.get_data(as_text=True)
            posted.append((address, sent_at))
            time.sleep(max(0.0, args.interval - (time.time() - sent_at)))
        phase_end = time.time()
        latencies, late = [], 0
        for i, (address, sent_at) in enumerate(posted):
            received = _wait_for(smtp, address, sent_at + args.patience)
            late += received is None
            latencies.append((received or sent_at + args.patience) - sent_at)
            print(f"urgent {i + 1}: {latencies[-1] * 1000:.0f} ms", file=sys.stderr, flush=True)
        bulk_during = sum(1 for m in smtp.messages if m["rcpt_tos"][0].startswith("bulk-") and m["at"] <= phase_end)
        bulk_during -= bulk_before
        phase = phase_end - posted[0][1]
    finally:
        group.stop_all()
        app.extensions["db_pool"].close()
        smtp.stop()
        redis.stop()
        database.drop()
        shutil.rmtree(workdir, ignore_errors=True)

    latencies.sort()
    print(f"machine: {os.cpu_count()} cores, {platform.platform()}")
    print(f"settings: shipped defaults, rate limits {args.rate_limits}"
          + (f"; batch.max_user_ids {args.users}, MAX_CONTENT_LENGTH 16 MiB" if overrides else ""))
    print(f"bulk: {args.users} users, priority {args.bulk_priority}; "
          f"{'first chunk' if args.during_fanout else 'all'} stored in {stored:.1f} s")
    print(f"urgent email reaches SMTP, {args.urgent} triggers: p50 {percentile(latencies, 0.5) * 1000:.0f} ms, "
          f"p99 {percentile(latencies, 0.99) * 1000:.0f} ms, max {latencies[-1] * 1000:.0f} ms"
          + (f" ({late} not received within {args.patience:.0f} s, counted as that)" if late else ""))
    print(f"bulk emails received during the {phase:.1f} s of urgent triggers: {bulk_during}")


def _execute(database, sql, *args):
    import psycopg2
    conn = psycopg2.connect(database.url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(sql, args)
    finally:
        conn.close()


def _wait_for(smtp, address, deadline):
    """When the SMTP server had the message to `address` (its clock), or None past the deadline."""
    while time.time() < deadline:
        for message in reversed(smtp.messages):
            if address in message["rcpt_tos"]:
                return message["at"]
        time.sleep(0.01)
    return None


if __name__ == "__main__":
    main()
