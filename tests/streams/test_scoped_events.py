"""Live `read` and `deleted` events reach only the streams that could list the notifications (issue 16, point 4).

One user, two customers A and B, and four streams on a real gunicorn: one
limited to A by `?customer_id=`, one to B likewise, one by a token whose
`customers` claim is [A] (A and notifications of no customer), and one
unlimited. Another device of the user reads, deletes and marks all read; each
stream must hear about exactly the notifications its inbox lists, and no
stream's bytes may hold an id of a notification it may not list.
"""
import uuid
from types import SimpleNamespace

import pytest
import requests

from testkit.identity import bearer
from testkit.processes import ProcessGroup
from testkit.rows import insert_notification

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]
A, B = str(uuid.uuid4()), str(uuid.uuid4())


@pytest.fixture(scope="module")
def web(base_env, tmp_path_factory):
    with ProcessGroup(str(tmp_path_factory.mktemp("scoped-events"))) as group:
        yield group.start_web(base_env, workers=1, keepalive=1)


def state_events(stream):
    """The `read` and `deleted` events so far, as (name, data), ids sorted (a read-all lists them
    in the order PostgreSQL updated them)."""
    out = []
    for event in stream.snapshot(everything=True):
        if event.event in ("read", "deleted"):
            data = event.json()
            out.append((event.event, dict(data, ids=sorted(data["ids"])) if "ids" in data else data))
    return out


def patch_read(web, notification_id, headers, read=True):
    return requests.patch(f"{web.url}/v1/notifications/{notification_id}/read", headers=headers,
                          json={"read": read}, timeout=10)


def test_each_stream_hears_only_about_what_it_could_list(web, clean, db):
    user_id = uuid.uuid4()
    rows = {name: insert_notification(db, user_id, customer_id=customer, title=name)
            for name, customer in (("a1", A), ("a2", A), ("b1", B), ("b2", B), ("b3", B), ("n1", None))}
    ids = {name: str(row["id"]) for name, row in rows.items()}

    def ids_of(*names):
        return sorted(ids[name] for name in names)
    both = bearer(user_id, customers=[A, B])
    streams = SimpleNamespace(
        only_a=web.stream(headers=both, params={"customer_id": A}),
        only_b=web.stream(headers=both, params={"customer_id": B}),
        claim_a=web.stream(headers=bearer(user_id, customers=[A])),
        every=web.stream(headers=bearer(user_id)))
    opened = list(vars(streams).values())
    try:
        for stream in opened:
            assert stream.ok, stream.response.text
            stream.wait_named("unread")
        # Another device (a token for every customer) changes the inbox.
        device = bearer(user_id)
        assert patch_read(web, ids["b1"], device).status_code == 200
        assert web.delete(f"/v1/notifications/{ids['b2']}", headers=device).status_code == 204
        assert patch_read(web, ids["n1"], device, read=False).status_code == 200
        response = web.post("/v1/notifications/read-all", headers=device, json={})
        assert response.json() == {"updated": 4}, response.text      # a1, a2, b3, n1
        # Last, a change every stream but B's may see: it arrives after everything above.
        assert patch_read(web, ids["a1"], device, read=False).status_code == 200
        last = ("read", {"ids": [ids["a1"]], "read": False})
        for stream in (streams.only_a, streams.claim_a, streams.every):
            stream.wait_for(lambda s: last in state_events(s), message="the last change")
        streams.only_b.wait_for(lambda s: any(name == "read" and data.get("all") for name, data in state_events(s)),
                                message="B's read-all")

        read_all = {"all": True, "read": True, "customer_id": None, "group": None, "before": None}
        assert state_events(streams.only_a) == [("read", dict(read_all, ids=ids_of("a1", "a2"))), last]
        assert state_events(streams.only_b) == [
            ("read", {"ids": [ids["b1"]], "read": True}),
            ("deleted", {"ids": [ids["b2"]]}),
            ("read", dict(read_all, ids=ids_of("b3"))),
        ]
        a_and_none = [("read", {"ids": [ids["n1"]], "read": False}),
                      ("read", dict(read_all, ids=ids_of("a1", "a2"))),
                      ("read", dict(read_all, ids=ids_of("n1"))), last]
        claim_a = state_events(streams.claim_a)
        assert (claim_a[0], claim_a[-1]) == (a_and_none[0], a_and_none[-1])
        assert sorted(map(repr, claim_a[1:-1])) == sorted(map(repr, a_and_none[1:-1]))   # one per customer
        assert len(state_events(streams.every)) == 7                # every change, B's included
        for stream, hidden in ((streams.only_a, ("b1", "b2", "b3", "n1")), (streams.only_b, ("a1", "a2", "n1")),
                               (streams.claim_a, ("b1", "b2", "b3"))):
            raw = bytes(stream.raw).decode()
            assert not [name for name in hidden if ids[name] in raw], raw
            assert (A if stream is streams.only_b else B) not in raw, raw

        # The unread counts stay scoped: A's stream counts A's only (a1 unread again).
        stream = streams.only_a
        stream.wait_for(lambda s: s.named("unread")[-1].json()["unread"] == 1, message="A's count")
        assert stream.named("unread")[-1].json()["by_customer"] == {A: 1}
    finally:
        for stream in opened:
            stream.close()

