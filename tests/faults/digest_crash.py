"""Digests under crashes: triggers for N users on an event with a short digest window while an RQ
worker is SIGKILLed every second; then every digest window sent exactly once (one email per digest,
no Message-ID twice), every notification in exactly one email, every email delivery sent."""
import collections
import re
import threading
import time

import yaml

from tests.faults.rig import Result, post_many

LINE = re.compile(r"^- (digest \S+ \d+) \(", re.M)


def digest_crash(rig, n=200, per_user=3, window_seconds=2, kill_every=1.0, workers=2, timeout=None,
                 max_kills=60):
    res = Result("digest")
    timeout = timeout or max(90, n)
    env = rig.env(email=True, attempts=5, backoff=(1, 2, 4, 8), smtp_process=True)
    with open(env["NOTIFICATIONS_CONFIG"]) as f:
        config = yaml.safe_load(f)
    config["groups"]["chat"]["events"]["message_received"]["digest"] = {
        "window": f"PT{window_seconds}S", "channels": ["email"], "max_items": 50}
    with open(env["NOTIFICATIONS_CONFIG"], "w") as f:
        yaml.safe_dump(config, f)
    web = rig.web(env)
    pool = [rig.worker(env) for _ in range(workers)]
    users = rig.users_with_email(n)
    titles = [f"digest {u.hex[:12]} {k}" for k in range(per_user) for u in users]
    statuses = collections.Counter()
    done = threading.Event()
    started = time.monotonic()

    def post_all():
        post_many(web.url, [(u, f"digest {u.hex[:12]} {k}") for k in range(per_user) for u in users], statuses)
        done.set()

    threading.Thread(target=post_all, daemon=True).start()
    kills = len(rig.kill_workers(env, pool, kill_every=kill_every, keep_going=lambda kills: (
        (not done.is_set() or rig.emails_sent() < len(titles)) and kills < max_kills
        and time.monotonic() - started < timeout / 2)))
    expired = rig.drain(lambda: rig.emails_sent() >= len(titles), started, timeout, pause=3, idle_seconds=3)
    time.sleep(1.5)   # a late duplicate would arrive now
    messages = list(rig.smtp.messages)
    ids = [str(m["message"]["Message-ID"]) for m in messages]
    listed = collections.Counter()
    for m in messages:
        listed.update(LINE.findall(m["message"].get_body(preferencelist=("plain",)).get_content()))
    digests = rig.scalar("SELECT count(*) FROM digests")
    digests_sent = rig.scalar("SELECT count(*) FROM digests g JOIN deliveries d ON d.id = g.sender"
                              " WHERE d.status = 'sent'")
    missing = [t for t in titles if listed[t] == 0]
    twice = [t for t, c in listed.items() if c > 1]
    res.figures = dict(users=n, triggers=len(titles), accepted=statuses[202], digests=digests,
                       digests_sent=digests_sent, emails=len(messages), duplicate_emails=len(ids) - len(set(ids)),
                       items_missing=len(missing), items_twice=len(twice), kills=kills,
                       stuck_leases_fast_forwarded=expired, seconds=round(time.monotonic() - started, 1))
    res.line = (f"digest: {n} users, {len(titles)} triggers, {digests} digest windows, {len(messages)} emails, "
                f"{len(ids) - len(set(ids))} duplicates, {len(missing)} items missing, {len(twice)} listed twice, "
                f"{kills} kills, {expired} stuck leases fast-forwarded, {res.figures['seconds']} s")
    res.check(statuses[202] == len(titles), f"not every trigger got its 202: {dict(statuses)}")
    res.check(rig.emails_sent() == len(titles), f"{rig.emails_sent()} email deliveries sent, want {len(titles)}")
    res.check(digests_sent == digests == len(set(ids)), f"{digests} digests, {digests_sent} sent, "
                                                         f"{len(set(ids))} distinct emails")
    res.check(len(ids) == len(set(ids)), f"{len(ids) - len(set(ids))} emails received twice")
    res.check(not missing, f"{len(missing)} notifications in no email, e.g. {missing[:3]}")
    res.check(not twice, f"{len(twice)} notifications in two emails, e.g. {twice[:3]}")
    res.check(digests >= n, f"{digests} digests for {n} users")
    for w in pool:
        res.check(w.alive, f"a worker died by itself:\n{w.output()[-2000:]}")
    return res
