"""A client that vanishes with no FIN or RST (its host's link goes down) is cut within keep-alive +
SSE_PEER_TIMEOUT_SECONDS, and its per-user slot comes back."""
import time
import uuid

from testkit.identity import SERVICE, make_token
from tests.faults.rig import Result, bearer, wait_for


# A client on another host: opens its stream, reports, then only reads (argv: host, port, token).
_VANISHING_CLIENT = """
import socket, sys
sock = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
sock.sendall(("GET /v1/notifications/sse HTTP/1.1\\r\\nHost: x\\r\\nAuthorization: Bearer " + sys.argv[3]
              + "\\r\\nAccept: text/event-stream\\r\\n\\r\\n").encode())
head = b""
while b"\\r\\n\\r\\n" not in head:
    head += sock.recv(1024)
print(head.split(b"\\r\\n", 1)[0].decode(), flush=True)
sock.settimeout(None)
while sock.recv(65536):
    pass
"""


def vanished_client(rig, peer_timeout=3.0, keepalive=1.0):
    """A client whose network disappears without FIN or RST (its host's interface goes down; the
    client process lives on) is cut within keep-alive + SSE_PEER_TIMEOUT_SECONDS (TCP_USER_TIMEOUT),
    its per-user slot comes back, and a healthy stream next to it is not disturbed."""
    from testkit.isolated_host import IsolatedHost
    res = Result("vanished")
    usable, why = IsolatedHost.available()
    if not res.check(usable, f"cannot make a network namespace here (needs root): {why}"):
        res.line = f"vanished: not run ({why})"
        return res
    env = rig.env()
    with IsolatedHost() as far:
        web = rig.web(env, workers=1, keepalive=keepalive, HOST="0.0.0.0", SSE_PEER_TIMEOUT_SECONDS=peer_timeout)
        good_user, far_user = uuid.uuid4(), uuid.uuid4()
        good = web.stream(headers=bearer(good_user), read_timeout=30)
        client = far.python(_VANISHING_CLIENT, far.server_ip, str(web.port), make_token(far_user, exp_in=3600))
        status = client.stdout.readline().strip()
        res.check(status == "HTTP/1.1 200 OK", f"the far client's stream did not open: {status!r}")
        opened, _ = wait_for(lambda: web.open_streams() == 2, 10, 0.05)
        import redis as redis_lib
        slots = redis_lib.Redis.from_url(env["REDIS_URL"])
        far.cut()
        cut_at = time.monotonic()
        cleaned, _ = wait_for(lambda: web.open_streams() == 1, keepalive + peer_timeout + 30, 0.1)
        cleaned_in = time.monotonic() - cut_at
        released, _ = wait_for(lambda: slots.zcard(f"notif:streams:{far_user}") == 0, 5, 0.05)
        alive = client.poll() is None          # it never learnt: no FIN or RST reached it either
        before = len(good.events)
        web.post("/v1/notifications/sse", headers=SERVICE, json={
            "type": "chat", "event": "message_received", "title": "still here", "user_ids": [str(good_user)]})
        good.wait_for(lambda st: len(st.events) > before, 10, "the healthy stream's event")
        good.close()
    bound = keepalive + peer_timeout + 2.0
    res.figures = dict(peer_timeout_s=peer_timeout, keepalive_s=keepalive, cleaned_in_s=round(cleaned_in, 2),
                       slot_released=bool(released), client_still_running=alive)
    res.line = (f"vanished: stream of a client whose link went down cut after {cleaned_in:.1f} s "
                f"(keep-alive {keepalive:g} s + SSE_PEER_TIMEOUT_SECONDS {peer_timeout:g} s), slot released: "
                f"{bool(released)}, client process unaware (still running): {alive}, healthy stream served")
    res.check(opened, "the far client's stream never counted as open")
    res.check(cleaned and cleaned_in < bound, f"the vanished stream was cut after {cleaned_in:.1f} s (bound {bound} s)")
    res.check(released, "the vanished stream's slot was not released")
    res.check(alive, "the client process ended: it may have said goodbye, so this proved nothing")
    return res
