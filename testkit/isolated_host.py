"""A second host on this machine, in a network namespace, whose cable can be cut.

A client on loopback cannot vanish: when it dies its kernel sends FIN or RST.
A client in its own namespace, joined to ours by a veth pair, can: taking its
interface down (`cut`) drops every packet between us while its process and its
kernel's socket live on, so the server hears nothing at all, as when a phone
loses coverage or a cable is pulled. Needs root (`ip netns`), which CI has.
"""
import os
import secrets
import subprocess
import sys


class IsolatedHost:
    def __init__(self):
        tag = secrets.token_hex(2)
        self.ns, self.host_if, self.peer_if = f"notif-{os.getpid()}-{tag}", f"nv{tag}h", f"nv{tag}c"
        subnet = int(tag, 16) % 250 + 1
        self.server_ip, self.ip = f"10.231.{subnet}.1", f"10.231.{subnet}.2"
        self.procs = []

    @staticmethod
    def available():
        """(True, '') where namespaces can be made here, else (False, why)."""
        probe = f"notif-probe-{os.getpid()}"
        made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
        if made.returncode != 0:
            return False, (made.stderr or "ip netns add failed").strip()
        subprocess.run(["ip", "netns", "del", probe], capture_output=True)
        return True, ""

    def _ip(self, *args, inside=False):
        prefix = ["ip", "netns", "exec", self.ns] if inside else []
        subprocess.run(prefix + ["ip", *args], check=True, capture_output=True)

    def __enter__(self):
        subprocess.run(["ip", "netns", "add", self.ns], check=True, capture_output=True)
        try:
            self._ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.peer_if)
            self._ip("link", "set", self.peer_if, "netns", self.ns)
            self._ip("addr", "add", f"{self.server_ip}/30", "dev", self.host_if)
            self._ip("link", "set", self.host_if, "up")
            self._ip("addr", "add", f"{self.ip}/30", "dev", self.peer_if, inside=True)
            self._ip("link", "set", self.peer_if, "up", inside=True)
            self._ip("link", "set", "lo", "up", inside=True)
        except BaseException:
            self.close()
            raise
        return self

    def python(self, code, *args):
        """A Python process on the isolated host (stdout piped)."""
        proc = subprocess.Popen(["ip", "netns", "exec", self.ns, sys.executable, "-c", code, *args],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.procs.append(proc)
        return proc

    def cut(self):
        """Pull the cable: nothing passes either way from now on, and nobody says goodbye."""
        self._ip("link", "set", self.peer_if, "down", inside=True)

    def close(self):
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)   # takes the veth pair along
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True)

    def __exit__(self, *exc):
        self.close()
