"""Escalation crash: N unacknowledged notices escalate to email while an RQ worker is SIGKILLed every
two seconds; every step runs once and every escalation email is received once (issue 21)."""
import time

import requests

from testkit.api import TRIGGER_PATH
from testkit.identity import SERVICE
from tests.faults.rig import Result, email_figures

def step(after):
    return {"required": True, "deadline": "PT1H", "escalate": [{"after": f"PT{after}S", "channels": ["email"]}]}


def escalation_crash(rig, n=300, kill_every=2.0, workers=2, timeout=None, triggers=10, min_kills=5):
    """N notices (in-app only, so email comes from the step alone) in `triggers` triggers whose steps
    fall due 2, 3, 4 … seconds after they are stored, while a worker is SIGKILLed every `kill_every`
    seconds and a fresh one started."""
    per_trigger = -(-n // triggers)
    res = Result("escalation")
    timeout = timeout or max(90, n / 8)
    env = rig.env(email=True, attempts=5, backoff=(1, 2, 4, 8), smtp_process=True)
    web = rig.web(env, workers=1)
    pool = [rig.worker(env) for _ in range(workers)]
    users = rig.users_with_email(n)
    started = time.monotonic()
    accepted = 0
    with requests.Session() as s:
        for k, i in enumerate(range(0, n, per_trigger)):
            r = s.post(web.url + TRIGGER_PATH, headers=SERVICE, timeout=15, json={
                "type": "chat", "event": "message_received", "title": f"Please confirm {i}", "channels": ["system"],
                "user_ids": [str(u) for u in users[i:i + per_trigger]], "ack": step(2 + k)})
            accepted += r.status_code == 202
    steps_done = lambda: rig.scalar("SELECT count(*) FROM escalations WHERE status = 'done'")
    kills = len(rig.kill_workers(env, pool, kill_every=kill_every, keep_going=lambda kills: (
        (steps_done() < n or rig.emails_sent() < n * 0.9 or kills < min_kills)
        and time.monotonic() - started < timeout / 2)))
    expired = rig.drain(lambda: rig.emails_sent() >= n and email_figures(rig.smtp)[5] >= n, started, timeout)
    elapsed = time.monotonic() - started
    time.sleep(1.5)   # a late duplicate would arrive now
    total, distinct_ids, dup_id, dup_key, _, distinct_keys = email_figures(rig.smtp)
    done, steps = steps_done(), rig.scalar("SELECT count(*) FROM escalations")
    deliveries = rig.scalar("SELECT count(*) FROM deliveries WHERE channel = 'email'")
    res.figures = dict(notices=n, triggers_accepted=accepted, steps=steps, steps_done=done,
                       email_deliveries=deliveries, emails=total, distinct_emails=distinct_ids, duplicates=dup_id,
                       kills=kills, stuck_leases_fast_forwarded=expired, seconds=round(elapsed, 1))
    res.line = (f"escalation: {n} notices, {done} of {steps} steps done, {deliveries} email deliveries, "
                f"{distinct_ids} emails ({total} received), {dup_id} duplicates, {kills} kills, "
                f"{expired} stuck leases fast-forwarded, {elapsed:.1f} s")
    res.check(accepted == -(-n // per_trigger), f"{accepted} triggers accepted")
    res.check(steps == n and done == n, f"{done} of {steps} steps done, want {n}")
    res.check(deliveries == n, f"{deliveries} email deliveries written, want {n} (one per step)")
    res.check(distinct_keys == n and distinct_ids == n, f"{distinct_ids} distinct emails, want {n}")
    res.check(dup_id == 0 and dup_key == 0, f"{dup_id} duplicate emails in {kills} kills")
    for w in pool:
        res.check(w.alive, f"a worker died by itself:\n{w.output()[-2000:]}")
    return res
