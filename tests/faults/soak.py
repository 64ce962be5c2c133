"""Soak: steady triggers while streams connect and disconnect for minutes; memory, open files,
greenlets and Redis clients stay flat after warm-up."""
import collections
import threading
import time
import uuid

import psutil
import requests

from tests.faults.rig import Result, bearer, post_trigger

METRICS_TOKEN = "metrics-token-of-the-fault-bench-0123456789"   # the greenlet count needs it
OPERATOR = {"Authorization": f"Bearer {METRICS_TOKEN}"}


def soak(rig, minutes=30.0, streams=50, rate=10.0, sample_every=10.0, warmup_fraction=0.2):
    """Steady triggers while streams connect and disconnect: RSS of web and worker within ±5 % after
    warm-up, no growth in open fds, greenlets or Redis clients."""
    import random

    import redis as redis_lib
    res = Result("soak")
    env = rig.env()
    web = rig.web(env, workers=1, keepalive=5, METRICS_TOKEN=METRICS_TOKEN)   # the greenlet count needs it
    worker = rig.worker(env)
    users = [uuid.uuid4() for _ in range(streams)]
    rds = redis_lib.Redis.from_url(env["REDIS_URL"])
    stop = threading.Event()
    counts = collections.Counter()

    def triggers():
        with requests.Session() as s:
            while not stop.is_set():
                try:
                    counts[post_trigger(s, web.url, random.sample(users, 5), "soak").status_code] += 1
                except requests.RequestException as exc:
                    counts[type(exc).__name__] += 1
                time.sleep(1.0 / rate)

    def churn(u):
        while not stop.is_set():
            try:
                st = web.stream(headers=bearer(u), read_timeout=30)
                stop.wait(random.uniform(1, 10))
                st.close()
                counts["streams"] += 1
            except requests.RequestException:
                counts["stream_errors"] += 1
                stop.wait(1)

    threads = [threading.Thread(target=triggers, daemon=True)] + \
              [threading.Thread(target=churn, args=(u,), daemon=True) for u in users]
    for t in threads:
        t.start()

    def procs():
        out = {"web": [psutil.Process(p) for p in web.worker_pids()]}
        out["worker"] = [psutil.Process(worker.proc.pid)]
        return out
    samples = []
    started = time.monotonic()
    while time.monotonic() - started < minutes * 60:
        time.sleep(sample_every)
        ps = procs()
        samples.append(dict(t=time.monotonic() - started,
                            web_rss=sum(p.memory_info().rss for p in ps["web"]),
                            worker_rss=sum(p.memory_info().rss for p in ps["worker"]),
                            web_fds=sum(p.num_fds() for p in ps["web"]),
                            worker_fds=sum(p.num_fds() for p in ps["worker"]),
                            redis_clients=len(rds.client_list()),
                            web_greenlets=web.get("/healthz?greenlets=1", headers=OPERATOR).json()["greenlets"]))
    stop.set()
    for t in threads:
        t.join(15)
    rds.close()
    after = [s for s in samples if s["t"] >= minutes * 60 * warmup_fraction] or samples
    figures = {"triggers": counts[202], "stream_sessions": counts["streams"], "samples": len(samples)}
    for key in ("web_rss", "worker_rss", "web_fds", "worker_fds", "redis_clients", "web_greenlets"):
        values = [s[key] for s in after]
        base = values[0]
        figures[key] = (base, min(values), max(values), values[-1])
        if key.endswith("rss"):
            drift = max(abs(v - base) for v in values) / base
            figures[key + "_drift_pct"] = round(drift * 100, 1)
            res.check(drift <= 0.05, f"{key} moved {drift:.1%} after warm-up: {values}")
        else:
            # allow the churn's in-flight connections; no upward trend: the last third not above the first
            third = max(1, len(values) // 3)
            res.check(max(values[-third:]) <= max(values[:third]) + streams // 5 + 2,
                      f"{key} grows: {values}")
    res.figures = figures
    res.line = (f"soak: {minutes:g} min, {counts[202]} triggers, {counts['streams']} stream sessions; RSS drift after "
                f"warm-up web {figures['web_rss_drift_pct']} %, worker {figures['worker_rss_drift_pct']} %; fds web "
                f"{figures['web_fds'][0]}->{figures['web_fds'][3]}, worker {figures['worker_fds'][0]}->"
                f"{figures['worker_fds'][3]}; Redis clients {figures['redis_clients'][0]}->{figures['redis_clients'][3]}; "
                f"web greenlets {figures['web_greenlets'][0]}->{figures['web_greenlets'][3]} (max {figures['web_greenlets'][2]})")
    res.check(counts.get("ConnectionError", 0) == 0, f"errors: {dict(counts)}")
    return res
