"""Graceful shutdown: SIGTERM to the RQ worker mid-dispatch and to gunicorn with open streams; nothing
stored or emailed twice, every stream resumes by cursor after the restart."""
import signal
import time
import uuid

import requests

from testkit.processes import ProcessGroup, WebServer
from tests.faults.rig import Result, email_figures, post_trigger, resuming_streams, wait_for, wait_while_progressing


def shutdown(rig, users=1500, streams=20):
    """SIGTERM to the RQ worker mid-dispatch (one trigger to `users` users with email, chunks of 100):
    the work is finished or returned, a new worker completes it, nothing stored or emailed twice.
    SIGTERM to gunicorn with open streams: after a restart on the same port every client resumes by
    cursor with no lost event."""
    res = Result("shutdown")
    env = rig.env(email=True, attempts=5, backoff=(1, 2, 4, 8), users_per_chunk=100)
    web = rig.web(env, workers=1, keepalive=1)
    side = rig.web(env, workers=1)                    # triggers go through this one while `web` restarts
    worker = rig.worker(env)
    started = time.monotonic()
    targets = rig.users_with_email(users)
    r = post_trigger(requests, side.url, targets, "bulk")
    trigger_id = r.json()["trigger_id"]
    wait_for(lambda: rig.scalar("SELECT count(*) FROM notifications") > 0, 30, 0.005)
    term_at = time.monotonic()
    worker.proc.send_signal(signal.SIGTERM)        # warm shutdown: RQ finishes the job in hand
    try:
        worker.proc.wait(60)
    except Exception:
        pass
    exited_in = time.monotonic() - term_at
    exit_code = worker.proc.returncode
    stored_at_exit = rig.scalar("SELECT count(*) FROM notifications")
    rig.group.started.remove(worker)
    worker.kill()
    rig.worker(env)
    unfinished = "SELECT count(*) FROM deliveries WHERE status IN ('pending','sending')"
    dispatched, _ = wait_while_progressing(
        lambda: rig.scalar("SELECT status FROM triggers WHERE id = %s", trigger_id) == "dispatched"
        and rig.scalar(unfinished) == 0,
        lambda: (rig.scalar("SELECT count(*) FROM notifications"), rig.scalar(unfinished)), stall=60)
    time.sleep(1)
    stored = rig.scalar("SELECT count(*) FROM notifications")
    total, distinct_ids, dup_id, dup_key, ambiguous, distinct_keys = email_figures(rig.smtp)
    res.check(stored == users, f"worker SIGTERM: {stored} of {users} stored")
    res.check(dispatched, f"worker SIGTERM: the trigger or {rig.scalar(unfinished)} deliveries never finished")
    res.check(distinct_keys == users and dup_id == 0 and dup_key == 0,
              f"worker SIGTERM: {distinct_keys} distinct emails, {dup_id} duplicates, want {users} and 0")

    # gunicorn SIGTERM with open streams
    stream_users = [uuid.uuid4() for _ in range(streams)]
    clients, stop_reading = resuming_streams(web, stream_users)
    wait_for(lambda: web.open_streams() >= streams, 20)
    sent = 0
    for i in range(3):
        post_trigger(requests, side.url, stream_users, f"before {i}")
        sent += 1
    wait_for(lambda: all(len(c.events) >= sent for c in clients), 20)
    web.proc.send_signal(signal.SIGTERM)
    gunicorn_term = time.monotonic()
    for i in range(3):                              # while it drains and is down
        post_trigger(requests, side.url, stream_users, f"during {i}")
        sent += 1
    web.proc.wait(30)
    web_exit_in = time.monotonic() - gunicorn_term
    rig.group.started.remove(web)
    port = web.port
    again = WebServer(ProcessGroup.environment(dict(web.env)), str(rig.dir), workers=1, keepalive=1)
    again.port = port
    again.env["PORT"] = str(port)
    web.port = port
    again.start()
    rig.group.started.append(again)
    for i in range(3):
        post_trigger(requests, side.url, stream_users, f"after {i}")
        sent += 1
    complete, _ = wait_for(lambda: all(len(c.events) >= sent for c in clients), 30)
    time.sleep(1)
    stop_reading()
    per_user = dict(rig.rows("SELECT user_id::text, array_agg(seq ORDER BY seq) FROM notifications"
                             " WHERE user_id = ANY(%s::uuid[]) GROUP BY user_id", [str(u) for u in stream_users]))
    exact = sum(1 for u, c in zip(stream_users, clients) if [e.seq for e in c.events] == per_user.get(str(u)))
    reconnects = sum(c.connections - 1 for c in clients)
    for c in clients:
        c.close()
    elapsed = time.monotonic() - started
    res.figures = dict(users=users, worker_exit_s=round(exited_in, 1), worker_exit_code=exit_code,
                       stored_when_worker_exited=stored_at_exit, stored=stored, emails=distinct_ids,
                       email_duplicates=dup_id, streams=streams, events_each=sent, exact_streams=exact,
                       reconnects=reconnects, gunicorn_exit_s=round(web_exit_in, 1), seconds=round(elapsed, 1))
    res.line = (f"shutdown: worker SIGTERM mid-dispatch exited in {exited_in:.1f} s (code {exit_code}) with "
                f"{stored_at_exit}/{users} stored; after restart {stored} stored, {distinct_ids} emails, {dup_id} "
                f"duplicates; gunicorn SIGTERM with {streams} streams exited in {web_exit_in:.1f} s, "
                f"{exact}/{streams} streams exact over {sent} events, {reconnects} reconnects, {elapsed:.1f} s")
    res.check(complete and exact == streams, f"gunicorn SIGTERM: {streams - exact} streams lost or repeated events")
    return res
