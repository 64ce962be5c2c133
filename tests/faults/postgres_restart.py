"""PostgreSQL restart: triggers flow while a private cluster is stopped and started; every answer is
503 with a code or a durable 202, and web and worker recover by themselves."""
import collections
import threading
import time
import uuid

import psycopg2
import requests

from tests.faults.rig import Result, post_trigger, wait_for


def postgres_restart(rig, outage=5.0, users=20, interval=0.05, pg=None):
    """Triggers flow while a private PostgreSQL is stopped (`pg_ctl -m fast stop`) for `outage` seconds and
    started again. During the outage every answer is 503 with a code (a 202 only when durably stored);
    afterwards web and worker recover by themselves and every 202 is stored exactly once."""
    from app.migrate import migrate
    from devtools.postgres_server import PostgresServer
    res = Result("postgres")
    own = pg is None
    pg = pg or PostgresServer().start()
    try:
        url = pg.create_database("faults")
        migrate(url, echo=lambda *_: None)
        rig.base_env["DATABASE_URL"] = url
        env = rig.env()
        web = rig.web(env, workers=1)
        worker = rig.worker(env)
        user_ids = [uuid.uuid4() for _ in range(users)]
        answers = []   # (status, code, trigger_id, at)
        stop = threading.Event()

        def flow():
            with requests.Session() as s:
                i = 0
                while not stop.is_set():
                    at = time.monotonic()
                    try:
                        r = post_trigger(s, web.url, user_ids, f"pg{i}", timeout=20)
                        body = r.json() if r.headers.get("Content-Type", "").startswith("application/json") else {}
                        answers.append((r.status_code, body.get("code"), body.get("trigger_id"), at))
                    except (requests.RequestException, ValueError) as exc:
                        answers.append((type(exc).__name__, None, None, at))
                    i += 1
                    time.sleep(interval)
        poster = threading.Thread(target=flow, daemon=True)
        started = time.monotonic()
        poster.start()
        time.sleep(2)
        down_at = time.monotonic()
        pg.stop("fast")
        time.sleep(outage)
        pg.start()
        up_at = time.monotonic()
        ready, ready_in = wait_for(lambda: _ready(web), 60, 0.1)
        # 202 again, by itself (no restart of web or worker)
        recovered, first_202_in = wait_for(lambda: any(a[0] == 202 and a[3] > up_at for a in list(answers)), 60, 0.1)
        time.sleep(2)
        stop.set()
        poster.join(30)
        accepted = [a[2] for a in answers if a[0] == 202]
        rig._db = None

        def all_dispatched():
            try:
                return rig.scalar("SELECT count(*) FROM triggers WHERE status = 'dispatched'") >= len(accepted)
            except psycopg2.Error:
                return False
        dispatched, _ = wait_for(all_dispatched, 60)
        elapsed = time.monotonic() - started
        stored = rig.scalar("SELECT count(*) FROM notifications")
        distinct = rig.scalar("SELECT count(DISTINCT (trigger_id, user_id)) FROM notifications")
        known = {r[0] for r in rig.rows("SELECT id::text FROM triggers")}
        lost = [t for t in accepted if t not in known]
        during = [a for a in answers if down_at <= a[3] <= up_at]
        kinds = collections.Counter((a[0], a[1]) for a in answers)
        bad = {f"{s} {c}": n for (s, c), n in kinds.items()
               if not (s == 202 or (s == 503 and c == "notifications_m.service_unavailable"))}
        res.figures = dict(requests=len(answers), accepted=len(accepted), refused_503=sum(
            n for (s, c), n in kinds.items() if s == 503), other=bad, during_outage=len(during),
            stored=stored, lost_202=len(lost), ready_after_restart_s=round(ready_in, 1),
            first_202_after_restart_s=round(first_202_in, 1), seconds=round(elapsed, 1))
        res.line = (f"postgres: {len(answers)} triggers in {elapsed:.1f} s with PostgreSQL down {up_at - down_at:.1f} s:"
                    f" {len(accepted)} got 202, {res.figures['refused_503']} got 503 service_unavailable, "
                    f"{sum(bad.values())} other {bad or ''}; {len(lost)} 202s lost, {stored} stored "
                    f"({len(accepted)} x {users} wanted); ready {ready_in:.1f} s after restart, first 202 after "
                    f"{first_202_in:.1f} s")
        res.check(not bad, f"answers other than 202 / 503 service_unavailable: {bad}")
        res.check(any(a[0] == 503 for a in during), "no 503 during the outage (did it happen?)")
        res.check(not lost, f"{len(lost)} triggers answered 202 are not in the database")
        res.check(dispatched and stored == distinct == len(accepted) * users,
                  f"{stored} stored ({distinct} distinct), want {len(accepted) * users}")
        res.check(ready and recovered, "web did not recover by itself (readyz / 202)")
        res.check(worker.alive and web.alive, "a process died during the outage")
    finally:
        rig.close()
        if own:
            pg.destroy()
    return res


def _ready(web):
    try:
        return web.get("/readyz", timeout=2).status_code == 200
    except requests.RequestException:
        return False
