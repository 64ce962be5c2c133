"""SMTP outage: the server is down while emails are due; every email arrives once after it returns."""
import collections
import time

import requests

from tests.faults.rig import Result, email_figures, post_trigger, wait_for


def smtp_outage(rig, n=40, outage=10.0):
    """The SMTP server is down for `outage` seconds while N emails are due, with back-off shortened so
    the attempts outlast the outage; every email arrives once after it returns."""
    res = Result("smtp")
    cap = max(2, int(outage / 4))
    backoff, step = [], 1
    while sum(backoff) < outage * 1.5 + 5:
        backoff.append(min(step, cap))
        step *= 2
    env = rig.env(email=True, attempts=len(backoff) + 1, backoff=tuple(backoff), start_smtp=False)
    web = rig.web(env, workers=1)
    rig.worker(env)
    users = rig.users_with_email(n)
    started = time.monotonic()
    with requests.Session() as s:
        codes = collections.Counter(post_trigger(s, web.url, [u], f"smtp {i}").status_code for i, u in enumerate(users))
    failed_attempts, _ = wait_for(lambda: rig.scalar("SELECT count(*) FROM delivery_attempts WHERE outcome = 'retry'")
                                  >= n, outage)
    time.sleep(max(0.0, outage - (time.monotonic() - started)))
    rig.smtp.start()
    back_at = time.monotonic()
    done, _ = wait_for(lambda: email_figures(rig.smtp)[5] >= n
                       and rig.scalar("SELECT count(*) FROM deliveries WHERE status IN ('pending', 'sending')") == 0,
                       sum(backoff) + 30)
    drained_in = time.monotonic() - back_at
    time.sleep(2)
    total, distinct_ids, dup_id, dup_key, ambiguous, distinct_keys = email_figures(rig.smtp)
    status = dict(rig.rows("SELECT status, count(*) FROM deliveries WHERE channel = 'email' GROUP BY status"))
    retries = rig.scalar("SELECT count(*) FROM delivery_attempts WHERE outcome = 'retry'")
    res.figures = dict(emails_due=n, accepted=codes[202], received=total, distinct=distinct_ids, duplicates=dup_id,
                       delivery_status=status, failed_attempts_during_outage=retries, backoff=backoff,
                       outage_seconds=round(back_at - started, 1), drained_after_return_s=round(drained_in, 1))
    res.line = (f"smtp: {n} emails, SMTP down {back_at - started:.1f} s ({retries} failed attempts, back-off {backoff}),"
                f" {distinct_ids} delivered {drained_in:.1f} s after it returned, {dup_id} duplicates, status {status}")
    res.check(codes[202] == n, f"triggers not accepted: {dict(codes)}")
    res.check(failed_attempts, "the outage caused no failed attempt (was SMTP really down?)")
    res.check(done and distinct_keys == n and distinct_ids == n, f"{distinct_ids} of {n} emails delivered")
    res.check(dup_id == 0 and dup_key == 0, f"{dup_id} duplicate emails")
    if not res.check(status == {"sent": n}, f"deliveries not all sent: {status}"):
        for delivery, attempts in rig.rows(
                "SELECT d.id, array_agg(a.attempt || ' ' || a.outcome || ' +'"
                " || round(extract(epoch FROM a.started_at - d.created_at)::numeric, 1) || 's '"
                " || coalesce(a.error, '') ORDER BY a.id)"
                " FROM deliveries d JOIN delivery_attempts a ON a.delivery_id = d.id"
                " WHERE d.channel = 'email' AND d.status <> 'sent' GROUP BY d.id, d.notification_seq LIMIT 5"):
            res.problems.append(f"delivery {delivery}: " + "; ".join(attempts))
    return res
