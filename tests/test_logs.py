"""A request's id comes back on the response and follows the job it enqueued."""
import json
import logging

from app.logs import JsonFormatter
from tests.conftest import SERVICE
from tests.test_preferences import run_worker


class Capture(logging.Handler):
    def __init__(self):
        super().__init__()
        self.setFormatter(JsonFormatter())
        self.lines = []

    def emit(self, record):
        self.lines.append(json.loads(self.format(record)))


def test_request_id_is_returned_and_carried_into_the_job(app, client, user):
    user_id, _ = user
    capture = Capture()
    logging.getLogger().addHandler(capture)
    try:
        r = client.post("/v1/notifications/trigger", headers=dict(SERVICE, **{"X-Request-ID": "req-abc-123"}),
                        json={"type": "chat", "event": "message_received", "title": "Hi",
                              "user_ids": [str(user_id)]})
        assert r.headers["X-Request-ID"] == "req-abc-123"
        run_worker(app)
    finally:
        logging.getLogger().removeHandler(capture)
    dispatched = [line for line in capture.lines if line["logger"].startswith("app.dispatch.")
                  and "dispatched" in line["message"]]
    assert dispatched and dispatched[0]["request_id"] == "req-abc-123"
    assert all(SERVICE["X-API-Key"] not in json.dumps(line) for line in capture.lines)


def test_unsafe_request_id_is_replaced(client):
    r = client.get("/healthz", headers={"X-Request-ID": "bad id <script>"})
    assert r.headers["X-Request-ID"] != "bad id <script>"
    assert len(r.headers["X-Request-ID"]) == 32
