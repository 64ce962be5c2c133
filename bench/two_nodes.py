"""Two web nodes behind HAProxy, one restarted under 1,000 streams (issue 19 point 3).

    python -m bench.two_nodes                 # 1,000 streams
    python -m bench.two_nodes --streams 3000

The scenario is tests/deploy/test_two_nodes.py's rolling-restart test at a larger size (its servers,
its HAProxy configuration, its checks: a run that loses or duplicates a notification fails), so the
benchmark and the test cannot drift apart. It runs that test under pytest with
TWO_NODES_STREAMS and prints the figures from the `two-nodes:` line the test writes:
streams, lost, duplicated, and the seconds from the SIGTERM until every cut client had its stream
open again through the other node. Needs Debian's haproxy (`apt-get install haproxy`) and
PostgreSQL as for the tests (DATABASE_URL, or the embedded server).
"""
import argparse
import os
import re
import subprocess
import sys

from devtools.services import REPO_ROOT

ROOT = REPO_ROOT
LABELS = [("streams", "streams"), ("on_node_a", "streams on the stopped node"), ("cut", "streams cut by its SIGTERM"),
          ("triggers", "triggers sent during the run"), ("notifications", "notifications expected"),
          ("lost", "lost"), ("duplicated", "duplicated"),
          ("resumed_all_s", "seconds from SIGTERM until every cut client resumed"),
          ("resumed_p50_s", "seconds until half of them had"),
          ("cut_p50_s", "seconds from SIGTERM until half of the cut streams had ended"),
          ("cut_all_s", "seconds from SIGTERM until all of them had"),
          ("reopen_p50_s", "seconds from a cut client's connect() to its 200, median"),
          ("reopen_max_s", "the same, slowest"),
          ("most_opens_per_cut_client", "most streams opened by one cut client since the SIGTERM"),
          ("trigger_resends", "triggers sent again (Idempotency-Key)"),
          ("refused_reconnects", "reconnects refused or failed")]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=1000)
    args = parser.parse_args()
    env = dict(os.environ, TWO_NODES_STREAMS=str(args.streams))
    command = [sys.executable, "-m", "pytest", "tests/deploy/test_two_nodes.py", "-q", "-s", "-p", "no:cacheprovider",
               "-k", "rolling_restart"]
    run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    line = next((l for l in run.stdout.splitlines() if l.startswith("two-nodes:")), None)
    if line is None:
        sys.stdout.write(run.stdout[-6000:] + run.stderr[-3000:])
        raise SystemExit(f"the scenario printed no figures (pytest exit {run.returncode})")
    figures = dict(re.findall(r"(\w+)=(\S+)", line))
    width = max(len(label) for _, label in LABELS)
    for key, label in LABELS:
        print(f"{label:<{width}}  {figures.get(key, '—')}")
    print(f"{'checks (every client got every id once, in order)':<{width}}  "
          f"{'passed' if run.returncode == 0 else 'FAILED'}")
    if run.returncode:
        sys.stdout.write(run.stdout[-6000:])
    return run.returncode


if __name__ == "__main__":
    sys.exit(main())
