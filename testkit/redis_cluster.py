"""A local Redis Cluster from Debian's redis-server: `masters` masters, each with `replicas` replicas,
on free ports, persistence off, made with `redis-cli --cluster create` (tests/streams/test_cluster.py,
tests/faults/, bench/). `kill(port)` SIGKILLs a node; `wait_promoted(port)` waits until its slots are
served by another master (its replica, promoted by the cluster itself).
"""
import shutil
import subprocess
import tempfile
import time

import redis as redis_lib

import random

from devtools.services import _port_is_free, spawn

NODE_TIMEOUT_MS = 1000   # a master silent this long is failed over: short, so a test waits ~2 s


def _ports(count):
    """Free ports whose cluster bus port (+10,000) is free and valid too."""
    chosen = []
    while len(chosen) < count:
        port = random.randrange(20000, 45000)
        if port not in chosen and _port_is_free(port) and _port_is_free(port + 10000):
            chosen.append(port)
    return chosen


class RedisCluster:
    def __init__(self, masters=3, replicas=1):
        self.masters, self.replicas = masters, replicas
        self.dir = tempfile.mkdtemp(prefix="redis-cluster-")
        self.ports = _ports(masters * (1 + replicas))
        self.procs = {}

    @property
    def url(self):
        """Any node: the service finds the rest (CLUSTER SLOTS)."""
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def start(self, timeout=30.0):
        if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
            raise RuntimeError("redis-server and redis-cli are needed for a cluster")
        for port in self.ports:
            self.procs[port] = spawn(
                ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--cluster-enabled", "yes",
                 "--cluster-config-file", f"{self.dir}/nodes-{port}.conf", "--cluster-node-timeout",
                 str(NODE_TIMEOUT_MS), "--repl-diskless-sync-delay", "0", "--save", "", "--appendonly", "no", "--dir", self.dir,
                 "--loglevel", "warning", "--logfile", f"{self.dir}/redis-{port}.log"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for port in self.ports:
            self._wait(lambda port=port: self.client(port).ping(), timeout)
        if self.masters * (1 + self.replicas) < 3:   # redis-cli wants 3 masters: slots by hand
            self.client(self.ports[0]).execute_command("CLUSTER ADDSLOTSRANGE", 0, 16383)
        else:
            subprocess.run(["redis-cli", "--cluster", "create", *[f"127.0.0.1:{p}" for p in self.ports],
                            "--cluster-replicas", str(self.replicas), "--cluster-yes"],
                           check=True, capture_output=True, timeout=timeout)
        self._wait(lambda: self.healthy() and self.replicas_synced(), timeout)
        return self

    def replicas_synced(self):
        """Every replica has its master's data (a replica never synced cannot be promoted)."""
        for port in self.ports:
            info = self.client(port).info("replication")
            if info["role"] == "slave" and info.get("master_link_status") != "up":
                return False
        return True

    def client(self, port):
        return redis_lib.Redis(host="127.0.0.1", port=port, socket_timeout=2, decode_responses=True)

    def healthy(self):
        """Every live node says the cluster is ok and agrees on who serves every slot."""
        try:
            for port, proc in self.procs.items():
                if proc.poll() is None and self.client(port).execute_command("CLUSTER INFO")["cluster_state"] != "ok":
                    return False
            return sum(end - start + 1 for start, end in self.slot_ranges().keys()) == 16384
        except redis_lib.RedisError:
            return False

    def slot_ranges(self):
        """{(first slot, last slot): master port} as a live node sees it."""
        for port, proc in self.procs.items():
            if proc.poll() is None:
                slots = self.client(port).execute_command("CLUSTER SLOTS")
                return {(int(entry[0]), int(entry[1])): int(entry[2][1]) for entry in slots}
        raise RuntimeError("no live node")

    def master_ports(self):
        return sorted(set(self.slot_ranges().values()))

    def master_of(self, channel):
        slot = self.client(self.master_ports()[0]).execute_command("CLUSTER KEYSLOT", channel)
        return next(port for (start, end), port in self.slot_ranges().items() if start <= slot <= end)

    def node_id(self, port):
        return self.client(port).execute_command("CLUSTER MYID")

    def move_slot(self, slot, target):
        """Migrate `slot` to the master on port `target` (it holds no keys: channels are not keys)."""
        source = next(port for (start, end), port in self.slot_ranges().items() if start <= slot <= end)
        source_id, target_id = self.node_id(source), self.node_id(target)
        self.client(target).execute_command("CLUSTER SETSLOT", slot, "IMPORTING", source_id)
        self.client(source).execute_command("CLUSTER SETSLOT", slot, "MIGRATING", target_id)
        for port in self.master_ports():
            self.client(port).execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)
        self._wait(lambda: self.slot_ranges() and all(
            port == target for (start, end), port in self.slot_ranges().items() if start <= slot <= end), 10)

    def kill(self, port):
        self.procs[port].kill()
        self.procs[port].wait()

    def wait_promoted(self, port, timeout=30.0):
        """Until no slot is served by the killed `port` and the cluster is ok again."""
        self._wait(lambda: self.healthy() and port not in self.slot_ranges().values(), timeout)

    @staticmethod
    def _wait(predicate, timeout):
        deadline = time.monotonic() + timeout
        while True:
            try:
                if predicate():
                    return
            except redis_lib.RedisError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("the Redis cluster did not get there in time")
            time.sleep(0.1)

    def stop(self):
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
