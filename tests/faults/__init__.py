"""Fault scenarios against the real processes: worker crashes, Redis and PostgreSQL restarts, an SMTP
outage, slow and vanished stream clients, graceful shutdown, a soak.

One module per scenario; each function takes a Rig (tests/faults/rig.py) and sizes, and returns a
Result whose `problems` is empty when every guarantee held. tests/faults/test_faults.py runs the
SHORT sizes in CI; `python -m bench.faults <scenario> --full` runs the FULL ones (docs/guarantees.md).
"""
from tests.faults.crash import crash
from tests.faults.digest_crash import digest_crash
from tests.faults.escalation_crash import escalation_crash
from tests.faults.postgres_restart import postgres_restart
from tests.faults.redis_restart import redis_restart
from tests.faults.shutdown import shutdown
from tests.faults.slow_clients import slow_clients
from tests.faults.smtp_outage import smtp_outage
from tests.faults.soak import soak
from tests.faults.vanished_client import vanished_client

SCENARIOS = {"crash": crash, "redis": redis_restart, "postgres": postgres_restart, "smtp": smtp_outage,
             "slow": slow_clients, "vanished": vanished_client, "shutdown": shutdown, "soak": soak,
             "escalation": escalation_crash, "digest": digest_crash}

SHORT = {"vanished": dict(), "crash": dict(n=300), "redis": dict(k=50, triggers=12), "postgres": dict(outage=5.0),
         "smtp": dict(n=40, outage=10.0), "slow": dict(pushes=1500), "shutdown": dict(users=600, streams=20),
         "escalation": dict(n=100), "digest": dict(n=30, per_user=2, max_kills=8)}
FULL = {"vanished": dict(peer_timeout=30.0, keepalive=15.0), "crash": dict(n=10_000),
        "redis": dict(k=1000, triggers=30), "postgres": dict(outage=20.0, users=50),
        "smtp": dict(n=500, outage=120.0), "slow": dict(pushes=5000), "shutdown": dict(users=10_000, streams=200),
        "escalation": dict(n=1000), "digest": dict(n=200, per_user=3, window_seconds=30)}
MAIN_COUNT = {"crash": "n", "escalation": "n", "digest": "n", "smtp": "n", "redis": "k", "shutdown": "users",
              "slow": "pushes"}   # what -n sets
