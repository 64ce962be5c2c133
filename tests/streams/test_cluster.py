"""Streams over a Redis Cluster (issue 24 item 2): PUBSUB_URL names one node of a local cluster of 3
masters and 3 replicas (testkit/redis_cluster.py); the hub SSUBSCRIBEs each user's channel on the
master of its slot, the worker SPUBLISHes to it; RQ, tickets and limits stay on the run's Redis.

What a client sees must not change: every notification once, in order, live and replayed; and a
master killed mid-way (its replica promoted by the cluster) costs no notification: every stream
catches up from PostgreSQL, with no gap and no duplicate.
"""
import functools
import shutil
import uuid

import pytest

from app.bus.codec import user_channel
from testkit import api
from testkit.api import IN_APP
from testkit.processes import ready, wait_until, web_and_worker
from testkit.redis_cluster import RedisCluster
from testkit.sse import ResumingStream
from testkit.identity import bearer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]
USERS = 24     # spread over the 3 masters' slots

trigger = functools.partial(api.trigger, title="Cluster", **IN_APP)


@pytest.fixture(scope="module")
def cluster():
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.skip("no redis-server / redis-cli")
    with RedisCluster(masters=3, replicas=1) as started:
        yield started


@pytest.fixture(scope="module")
def shared(base_env, cluster, tmp_path_factory):
    env = dict(base_env, PUBSUB_URL=cluster.url)
    with web_and_worker(env, tmp_path_factory.mktemp("cluster-services")) as services:
        yield services


@pytest.fixture
def web(shared, clean):
    return ready(shared)


def stored_seqs(db, user_id):
    with db.cursor() as cur:
        cur.execute("SELECT seq FROM notifications WHERE user_id = %s AND deleted_at IS NULL ORDER BY seq",
                    (str(user_id),))
        return [row[0] for row in cur.fetchall()]


def test_streams_and_replays_are_exact_over_every_shard(web, streams, db, cluster):
    users = [uuid.uuid4() for _ in range(USERS)]
    masters = {cluster.master_of(user_channel("notif:", user)) for user in users}
    assert len(masters) == 3                                       # the users' channels are on every master
    opened = {user: streams(web, user) for user in users}
    subscribed = set()                                              # sharded, each on its own master
    for port in cluster.master_ports():
        subscribed.update(cluster.client(port).execute_command("PUBSUB", "SHARDCHANNELS"))
    assert subscribed == {user_channel("notif:", user) for user in users}
    for n in range(3):
        trigger(web, users, title=f"live {n}")
    for user, stream in opened.items():
        events = stream.wait_events(3)
        assert [e.json()["title"] for e in events] == ["live 0", "live 1", "live 2"]
        assert [e.seq for e in events] == stored_seqs(db, user)

    first = users[0]
    cursor = opened[first].snapshot()[0].seq
    opened[first].close()
    again = streams(web, first, last_event_id=cursor)               # replayed from PostgreSQL, then live
    trigger(web, [first], title="after")
    events = again.wait_events(3)
    assert [e.seq for e in events] == stored_seqs(db, first)[1:]
    assert events[-1].json()["title"] == "after"


def test_a_slot_migrated_to_another_master_is_followed(web, streams, db, cluster):
    user = uuid.uuid4()
    stream = streams(web, user)
    trigger(web, [user], title="before")
    stream.wait_events(1)
    channel = user_channel("notif:", user)
    slot = cluster.client(cluster.master_ports()[0]).execute_command("CLUSTER KEYSLOT", channel)
    target = next(port for port in cluster.master_ports() if port != cluster.master_of(channel))
    cluster.move_slot(slot, target)              # Redis unsubscribes the channel on its old master
    wait_until(lambda: channel in cluster.client(target).execute_command("PUBSUB", "SHARDCHANNELS"), 20,
               message="the hub subscribed on the slot's new master")
    trigger(web, [user], title="after")
    events = stream.wait_events(2)
    assert [e.json()["title"] for e in events] == ["before", "after"]
    assert [e.seq for e in events] == stored_seqs(db, user)


def test_a_master_killed_costs_no_notification(web, db, cluster):
    users = [uuid.uuid4() for _ in range(USERS)]
    clients = {user: ResumingStream(web, headers=bearer(user)) for user in users}
    try:
        trigger(web, users, title="before")
        for client in clients.values():
            client.wait_events(1)
        victim = cluster.master_ports()[0]
        cluster.kill(victim)
        for n in range(5):                                          # during the failover and after it
            trigger(web, users, title=f"during {n}")
        cluster.wait_promoted(victim)
        trigger(web, users, title="after")
        for user, client in clients.items():
            wait_until(lambda: len(stored_seqs(db, user)) == 7, 30, message="stored")
            events = client.wait_events(7, timeout=60)
            assert [e.seq for e in events] == stored_seqs(db, user)   # every one, in order, no gap
        for user, client in clients.items():
            assert [e.seq for e in client.settle(0)] == stored_seqs(db, user)    # and no duplicate
    finally:
        for client in clients.values():
            client.close()
