"""Crash: N triggers with email while an RQ worker is SIGKILLed every two seconds; every notification
stored once, every email received once (by Message-ID and by recipient + subject)."""
import collections
import threading
import time

from tests.faults.rig import Result, email_figures, post_many


def crash(rig, n=300, kill_every=2.0, workers=2, timeout=None, min_kills=6):
    """N triggers, each to one user with an email contact, while an RQ worker is SIGKILLed every
    `kill_every` seconds and a fresh one started; then every notification stored once and every
    email received once (by Message-ID and by recipient + subject)."""
    res = Result("crash")
    timeout = timeout or max(90, n / 8)
    env = rig.env(email=True, attempts=5, backoff=(1, 2, 4, 8), smtp_process=True)
    web = rig.web(env, workers=2 if n > 1000 else 1)
    pool = [rig.worker(env) for _ in range(workers)]
    users = rig.users_with_email(n)
    started = time.monotonic()
    statuses = collections.Counter()
    done = threading.Event()

    def post_all():
        post_many(web.url, [(u, f"crash {i}") for i, u in enumerate(users)], statuses)
        done.set()

    poster = threading.Thread(target=post_all, daemon=True)
    poster.start()
    # kill while the triggers go in and for a while after (the jobs are still running)
    kill_times = rig.kill_workers(env, pool, kill_every=kill_every, keep_going=lambda kills: (
        not done.is_set() or kills < min_kills
        or (rig.emails_sent() < n * 0.9 and time.monotonic() - started < timeout / 2)))
    kills = len(kill_times)
    load_done = time.monotonic() - started
    expired = rig.drain(lambda: rig.emails_sent() >= n and email_figures(rig.smtp)[5] >= n, started, timeout)
    elapsed = time.monotonic() - started
    time.sleep(1.5)  # a late duplicate would arrive now
    stored = rig.scalar("SELECT count(*) FROM notifications")
    distinct_users = rig.scalar("SELECT count(DISTINCT user_id) FROM notifications")
    sent = rig.emails_sent()
    total, distinct_ids, dup_id, dup_key, ambiguous, distinct_keys = email_figures(rig.smtp)
    resent_attempts = rig.scalar("SELECT count(*) FROM deliveries WHERE channel = 'email' AND attempts > 1")
    windows = record_windows(rig)
    early = sum(1 for w in windows if w <= 0)   # the record left with the final dot (Receipt.submit)
    window = [w for w in windows if w > 0]
    kill_offsets = duplicates_vs_kills(rig, kill_times)
    res.figures = dict(triggers=n, accepted=statuses[202], stored=stored, emails=total, distinct_emails=distinct_ids,
                       duplicates_by_message_id=dup_id, duplicates_by_recipient=dup_key, kills=kills,
                       stuck_leases_fast_forwarded=expired, deliveries_retaken=resent_attempts,
                       load_seconds=round(load_done, 1), seconds=round(elapsed, 1),
                       records_before_the_server_had_it=early, late_record_window_us=quantiles(window),
                       duplicate_kill_offsets_ms=kill_offsets)
    res.line = (f"crash: {n} triggers, {stored} stored, {distinct_ids} emails ({total} received), "
                f"{dup_id} duplicates (all identifiable by Message-ID: {ambiguous == 0 and distinct_keys == distinct_ids}),"
                f" {kills} kills, {expired} stuck leases fast-forwarded, {elapsed:.1f} s; record in PostgreSQL before"
                f" the SMTP server had the message: {early} of {len(windows)}"
                + (f" (the others {quantiles(window)} µs after)" if window else "")
                + (f"; each duplicate's first copy vs the nearest kill (ms): {kill_offsets}" if kill_offsets else ""))
    res.check(statuses[202] == n, f"not every trigger got its 202: {dict(statuses)}")
    res.check(stored == n and distinct_users == n, f"{stored} notifications stored for {distinct_users} users, want {n}")
    res.check(sent == n, f"{sent} email deliveries marked sent, want {n}")
    res.check(distinct_ids == n and distinct_keys == n, f"{distinct_ids} distinct Message-IDs, {distinct_keys} distinct "
                                                        f"recipient+subject, want {n}")
    res.check(ambiguous == 0, f"{ambiguous} Message-IDs shared by different messages")
    # The design's one window (SIGKILL between the final dot leaving and the record leaving, a few
    # µs of code) may still resend; such a copy carries the same Message-ID, which tells it apart
    # from a duplicate we cannot explain. Either is a failure of the guarantee: counted, and red.
    res.check(dup_key == dup_id, f"{dup_key} duplicates by recipient+subject but {dup_id} by Message-ID")
    res.check(dup_id == 0, f"{dup_id} duplicate emails in {kills} kills (first copy vs nearest kill, ms: "
                           f"{kill_offsets})")
    for w in pool:
        res.check(w.alive, f"a worker died by itself:\n{w.output()[-2000:]}")
    return res


def record_windows(rig):
    """µs from the SMTP server having each whole message (just before its 250) to PostgreSQL
    starting the statement that records it sent (`sent_at`, the statement's now()); negative when
    the record, sent with the message's final dot, got there first. One clock (the machine's); the
    last copy of a resent message counts. (The window in which a kill makes a resend, from the
    final dot leaving the worker to the record leaving it, is measured inside the worker by
    bench/accept_window.py.)"""
    sent = dict(rig.rows("SELECT id::text, extract(epoch FROM sent_at)::float8 FROM deliveries"
                         " WHERE channel = 'email' AND status = 'sent'"))
    return sorted((sent[d] - max(ats)) * 1e6 for d, ats in _received_at(rig).items() if d in sent)


def _received_at(rig):
    """delivery id -> the times the SMTP server had a copy of its message (Message-ID <id@domain>)."""
    copies = collections.defaultdict(list)
    for m in list(rig.smtp.messages):
        copies[str(m["message"]["Message-ID"]).strip("<>").partition("@")[0]].append(m["at"])
    return copies


def duplicates_vs_kills(rig, kill_times):
    """For each resent message, ms from the SMTP server having its first copy to the nearest kill:
    a small positive number is a kill inside the window (a negative one: the worker was killed
    with the message already on its way, the server read it afterwards)."""
    offsets = []
    for ats in _received_at(rig).values():
        if len(ats) > 1 and kill_times:
            at = min(ats)
            offsets.append(round(min((k - at for k in kill_times), key=abs) * 1000, 1))
    return sorted(offsets)


def quantiles(values):
    """'p50 … / p99 … / max …' of sorted values."""
    if not values:
        return "p50 - / p99 - / max -"
    pick = lambda q: values[min(len(values) - 1, int(q * len(values)))]  # noqa: E731
    return f"p50 {pick(0.5):.0f} / p99 {pick(0.99):.0f} / max {values[-1]:.0f}"
