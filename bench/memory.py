"""Where a held stream's memory goes: tracemalloc in the worker (bench/gunicorn_tracemalloc.py), by
source line. A diagnostic, not part of bench/run.py.

    python -m bench.streams memory --streams 3000
"""
import contextlib
import os
import time
import uuid

from bench.load import marked_title
from bench.measure import rss_kb
from bench.rig import Bench, LuaPublisher, Target, notification_json, ramp, wait_received
from devtools.services import REPO_ROOT


def memory(streams, sizes, keep=False):
    """Where a held stream's memory goes: tracemalloc in the worker (bench/gunicorn_tracemalloc.py),
    snapshots before and after opening `streams` streams (each fed one broadcast), the difference
    per stream by source line. Python allocations only: greenlet stack copies are included (they
    are PyMem blocks), libev watchers and malloc overhead are not. Not part of bench/run.py."""
    import tracemalloc
    with Bench("memory", keep) as bench:
        bench.start_redis()
        bench.start_database()
        directory = os.path.join(bench.workdir, "tracemalloc")
        os.makedirs(directory)
        server = bench.start_ours(workers=1, conf=REPO_ROOT / "bench" / "gunicorn_tracemalloc.py",
                                  BENCH_TRACEMALLOC_DIR=directory)
        target = Target("ours")
        clients = bench.start_clients(sizes.clients, server.port)
        worker = server.worker_pids()[0]

        def snapshot(index):
            done = os.path.join(directory, "done")
            with contextlib.suppress(FileNotFoundError):
                os.unlink(done)
            open(os.path.join(directory, "request"), "w").close()
            deadline = time.monotonic() + 60
            while not os.path.exists(done):
                if time.monotonic() > deadline:
                    raise RuntimeError("the worker wrote no tracemalloc snapshot")
                time.sleep(0.1)
            return tracemalloc.Snapshot.load(os.path.join(directory, f"snapshot-{index}"))

        warm = uuid.uuid4()
        ramp(bench, clients, target.paths_and_tokens([warm]), 1, progress=False)
        clients.call("close")
        time.sleep(1)
        rss0, before = rss_kb(worker), snapshot(0)
        users = [uuid.uuid4() for _ in range(streams)]
        ramp(bench, clients, target.paths_and_tokens(users), sizes.step, progress=False)
        opened = clients.status()["open"]
        LuaPublisher(bench.redis).publish([target.channel(u) for u in users],
                                          target.message(notification_json(marked_title(1))))
        wait_received(clients, opened)
        time.sleep(1)
        rss1, after = rss_kb(worker), snapshot(1)
        diff = after.compare_to(before, "lineno")
        total = sum(d.size_diff for d in diff)
        print(f"{opened} streams; tracemalloc: {total / opened / 1024:.1f} KB per stream of Python allocations; "
              f"RSS (inflated by tracemalloc's own bookkeeping) {(rss1 - rss0) / opened:.1f} KB per stream")
        print(f"{'bytes/stream':>12} {'blocks/stream':>13}  where")
        for d in diff[:30]:
            print(f"{d.size_diff / opened:12.0f} {d.count_diff / opened:13.2f}  {d.traceback}")
        clients.call("close")
        return {"streams": opened, "python_kb_per_stream": total / opened / 1024}
