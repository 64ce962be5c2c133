"""Request ids: the service's own on the response and in the job; the client's kept beside it in logs."""
import json
import logging
import re

from testkit.logs import Capture
from testkit.identity import SERVICE
from testkit.jobs import run_jobs


def test_request_id_is_the_services_own_and_carried_into_the_job(app, client, user):
    user_id, _ = user
    capture = Capture()
    logging.getLogger().addHandler(capture)
    try:
        r = client.post("/v1/notifications/trigger", headers=dict(SERVICE, **{"X-Request-ID": "req-abc-123"}),
                        json={"type": "chat", "event": "message_received", "title": "Hi",
                              "user_ids": [str(user_id)]})
        ours = r.headers["X-Request-ID"]
        assert re.fullmatch(r"[0-9a-f]{32}", ours)
        run_jobs(app)
    finally:
        logging.getLogger().removeHandler(capture)
    dispatched = [line for line in capture.lines if line["logger"].startswith("app.dispatch.")
                  and "dispatched" in line["message"]]
    assert dispatched and dispatched[0]["request_id"] == ours
    assert all(SERVICE["X-API-Key"] not in json.dumps(line) for line in capture.lines)


def test_two_requests_with_one_client_id_get_two_ids(client):
    first = client.get("/healthz", headers={"X-Request-ID": "same"}).headers["X-Request-ID"]
    second = client.get("/healthz", headers={"X-Request-ID": "same"}).headers["X-Request-ID"]
    assert first != second and "same" not in (first, second)


def _logged_during(app, client_id):
    """The JSON line a request logs, as gunicorn's stderr would get it."""
    capture = Capture()
    logging.getLogger().addHandler(capture)
    try:
        with app.test_request_context("/healthz", headers={"X-Request-ID": client_id}):
            app.preprocess_request()
            logging.getLogger("app.test").warning("something happened")
    finally:
        logging.getLogger().removeHandler(capture)
    (line,) = [entry for entry in capture.lines if entry["logger"] == "app.test"]
    return line


def test_the_clients_id_is_logged_beside_ours(app):
    line = _logged_during(app, "req-abc-123")
    assert line["client_request_id"] == "req-abc-123"
    assert re.fullmatch(r"[0-9a-f]{32}", line["request_id"])


def test_the_clients_id_is_sanitised_and_capped(app):
    forged = 'x" {"level": "CRITICAL", "message": "forged"}<script>' + "a" * 500
    line = _logged_during(app, forged)
    kept = line["client_request_id"]
    assert len(kept) == 64
    assert re.fullmatch(r"[A-Za-z0-9._:-]+", kept)
    assert kept.startswith("xlevel:CRITICALmessage:forgedscript")
