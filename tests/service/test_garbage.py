"""What a request leaves to Python's cyclic garbage collector. Whatever refcounting cannot free
waits for a collection, and a collection stops the gevent worker, every request in it: at 200
inbox requests/s a pass over the cycles requests had left stalled them all 25-50 ms every ~7 s
(docs/performance.md, "Partitioned history"). Requests through the app, in process."""
import collections
import gc
import uuid

import pytest

from testkit.identity import bearer
from testkit.rows import insert_notification


@pytest.fixture
def saved_garbage():
    """The objects the next collections find unreachable, kept for the test to look at."""
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield gc.garbage
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


def test_reading_the_inbox_leaves_no_schema_to_the_garbage_collector(client, db, saved_garbage):
    """The query string's schema (InboxQuerySchema: six fields that point back at it) was made
    anew for every request by webargs, a cycle each; the API's blueprints load with one instance."""
    user = uuid.uuid4()
    insert_notification(db, user)
    for query in ("", "?status=unread", "?limit=5&offset=1") * 10:
        assert client.get(f"/v1/notifications{query}", headers=bearer(user)).status_code == 200
    assert client.patch(f"/v1/notifications/{uuid.uuid4()}/read", json={}, headers=bearer(user)).status_code == 404
    gc.collect()
    kinds = collections.Counter(type(o).__module__.split(".")[0] for o in saved_garbage)
    assert kinds["marshmallow"] == 0 and kinds["app"] == 0, kinds.most_common(10)
