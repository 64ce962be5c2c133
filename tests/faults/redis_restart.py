"""Redis restart: K open streams while triggers flow and Redis is down for seconds; every stream ends
with every notification exactly once, in order."""
import time
import uuid

import requests

from tests.faults.rig import Result, post_trigger, resuming_streams, wait_for


def redis_restart(rig, k=50, triggers=12, down_for=3.0, interval=0.25):
    """K open streams, triggers to all K users flowing; Redis is stopped for `down_for` seconds in the
    middle. Every stream resumes with its cursor and ends with every notification exactly once, in order."""
    res = Result("redis")
    env = rig.env()
    web = rig.web(env, workers=1, keepalive=1)
    rig.worker(env)
    users = [uuid.uuid4() for _ in range(k)]
    clients, stop_reading = resuming_streams(web, users)
    wait_for(lambda: web.open_streams() >= k, 30)
    started = time.monotonic()
    answers, down_at, up_at = [], None, None
    with requests.Session() as s:
        for i in range(triggers):
            if i == triggers // 3:
                rig.redis.stop()
                down_at = time.monotonic()
            if down_at and not up_at and time.monotonic() - down_at >= down_for:
                rig.redis.start()
                up_at = time.monotonic()
            try:
                r = post_trigger(s, web.url, users, f"r{i}")
                answers.append(r.status_code)
            except requests.RequestException as exc:
                answers.append(type(exc).__name__)
            time.sleep(interval)
        if not up_at:
            time.sleep(max(0, down_for - (time.monotonic() - down_at)))
            rig.redis.start()
            up_at = time.monotonic()
    accepted = answers.count(202)
    complete, waited = wait_for(lambda: all(len(c.events) >= accepted for c in clients), 60 + k / 10)
    time.sleep(1.0)   # a duplicate would show now
    stop_reading()
    elapsed = time.monotonic() - started
    per_user = dict(rig.rows("SELECT user_id::text, array_agg(seq ORDER BY seq) FROM notifications GROUP BY user_id"))
    exact, lost, dup, disorder, reconnects = 0, 0, 0, 0, 0
    for u, c in zip(users, clients):
        got = [e.seq for e in c.events]
        want = per_user.get(str(u), [])
        reconnects += c.connections - 1
        lost += len(set(want) - set(got))
        dup += len(got) - len(set(got))
        disorder += sum(1 for a, b in zip(got, got[1:]) if b < a)
        exact += got == want and len(want) == accepted
        c.close()
    stored = sum(len(v) for v in per_user.values())
    res.figures = dict(streams=k, triggers=triggers, accepted=accepted, stored=stored, exact_streams=exact,
                       lost_events=lost, duplicate_events=dup, out_of_order=disorder, reconnects=reconnects,
                       redis_down_seconds=round(up_at - down_at, 1), seconds=round(elapsed, 1))
    res.line = (f"redis: {k} streams, {accepted}/{triggers} triggers accepted (202) with Redis down "
                f"{up_at - down_at:.1f} s, {stored} stored, {exact}/{k} streams exact, {lost} lost, {dup} duplicates, "
                f"{disorder} out of order, {reconnects} reconnects, {elapsed:.1f} s")
    res.check(accepted == triggers, f"not every trigger got a 202 (the outbox): {answers}")
    res.check(stored == accepted * k, f"{stored} notifications stored, want {accepted * k}: a 202 was lost")
    res.check(complete and exact == k, f"{k - exact} streams not exact (lost {lost}, duplicates {dup}, "
                                       f"out of order {disorder})")
    return res
