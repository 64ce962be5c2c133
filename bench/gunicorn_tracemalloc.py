"""gunicorn settings for `python -m bench.streams memory`: the service's own gunicorn.conf.py,
plus tracemalloc in the worker. Whenever the file named by $BENCH_TRACEMALLOC_DIR/request appears,
the worker writes a snapshot to $BENCH_TRACEMALLOC_DIR/snapshot-<n> and creates .../done.
A diagnostic only: tracemalloc itself roughly doubles the memory of every tracked block.
"""
import os

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
with open(os.path.join(_ROOT, "gunicorn.conf.py")) as _handle:
    exec(compile(_handle.read(), os.path.join(_ROOT, "gunicorn.conf.py"), "exec"))

_service_post_worker_init = post_worker_init  # noqa: F821 (defined by the exec above)


def post_worker_init(worker):
    _service_post_worker_init(worker)
    import tracemalloc

    import gevent

    directory = os.environ["BENCH_TRACEMALLOC_DIR"]
    tracemalloc.start(1)

    def watch():
        count = 0
        while True:
            gevent.sleep(0.2)
            request = os.path.join(directory, "request")
            if os.path.exists(request):
                os.unlink(request)
                tracemalloc.take_snapshot().dump(os.path.join(directory, f"snapshot-{count}"))
                count += 1
                open(os.path.join(directory, "done"), "w").close()

    gevent.spawn(watch)
