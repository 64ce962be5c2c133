"""Calls made at the same moment, each in a thread of its own: how the tests race drains, migrations,
rate-limit callers and writers against each other."""
import threading


def run_together(call, count, timeout=60.0):
    """Run call(0) … call(count - 1), each in a thread of its own, released together by a barrier.
    Returns their results in order; fails when a call raised or outlived `timeout` seconds."""
    start = threading.Barrier(count)
    results, failures = [None] * count, []

    def run(index):
        try:
            start.wait()
            results[index] = call(index)
        except Exception as exc:  # reported below
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    assert not any(thread.is_alive() for thread in threads), f"a call outlived {timeout} s"
    assert failures == [], [f"{type(e).__name__}: {e}" for e in failures]
    return results
