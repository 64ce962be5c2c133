"""The stream hub's read path alone: CPU to take N sealed notifications off one Redis connection.

    python -m bench.hub_read REDIS_URL [N]     # e.g. redis://127.0.0.1:6379/0, rediss://…?ssl_ca_certs=…

A gevent process runs one Hub (app/streams/hub.py) with one stand-in stream; a separate process
PUBLISHes N notifications sealed as the service seals them; prints the hub process's CPU seconds
(user + system) from the first PUBLISH to the last offer. Used to compare the hub before and after a
change (docs/deploy-tls.md) without gunicorn and the load generator in the measure.
"""
from gevent import monkey
monkey.patch_all()

import json  # noqa: E402
import pickle  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402

import gevent  # noqa: E402

from app.bus.codec import message_key, notification_message, seal  # noqa: E402
from app.streams.hub import Hub  # noqa: E402

CHANNEL = "bench:user:1"
PUBLISHER = """
import pickle, sys, redis
messages = pickle.load(open(sys.argv[2], "rb"))
client = redis.Redis.from_url(sys.argv[1])
sys.stdin.readline()
for start in range(0, len(messages), 1000):
    pipe = client.pipeline(transaction=False)
    for message in messages[start:start + 1000]:
        pipe.publish(sys.argv[3], message)
    pipe.execute()
"""


class Probe:
    """What the hub uses of a Stream: counts what it is offered."""
    customers, batch = None, None

    def __init__(self):
        self.channel, self.got = CHANNEL, 0

    def wants(self, customer):
        return True

    def offer(self, item):
        first = self.batch is None
        self.batch = (self.batch or 0) + 1
        return first

    def flush(self):
        self.got += self.batch or 0
        self.batch = None


def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(url, count):
    key = message_key("a-secret-of-the-benchmark-only-0123456789")
    hub, probe = Hub(url, "bench:", key), Probe()
    assert hub.register(probe).wait(10), "the hub did not subscribe"
    with tempfile.NamedTemporaryFile(suffix=".pickle") as batch:
        pickle.dump([seal(key, CHANNEL, notification_message(i, None, '{"title":"x"}'))
                     for i in range(1, count + 1)], batch)
        batch.flush()
        publisher = subprocess.Popen([sys.executable, "-c", PUBLISHER, url, batch.name, CHANNEL],
                                     stdin=subprocess.PIPE)
        gevent.sleep(1.0)
        started = cpu()
        publisher.stdin.write(b"go\n")
        publisher.stdin.flush()
        while probe.got < count:
            gevent.sleep(0.001)
        spent = cpu() - started
        publisher.wait()
    print(json.dumps({"notifications": count, "hub_cpu_s": round(spent, 3)}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 400_000)
