"""The service's API as a caller uses it: triggers, contacts, deliveries, the error envelope.

Every helper takes a Flask test client or a `testkit.processes.WebServer` (both `.post(path,
json=..., headers=...)`), so the same call drives the app in-process or a real gunicorn.
"""
import uuid

from testkit.identity import SERVICE, bearer

TRIGGER_PATH = "/v1/notifications/trigger"
IN_APP = {"type": "tasks", "event": "task_due"}   # an event delivered in-app only: no email or SMS rows
PUSH_PATH = "/v1/notifications/sse"
ENVELOPE_KEYS = {"code", "message", "status"}


def json_of(response):
    """The JSON body of a test-client response or a `requests` one."""
    return response.get_json() if hasattr(response, "get_json") else response.json()


def text_of(response):
    return response.get_data(as_text=True) if hasattr(response, "get_data") else response.text


def trigger_body(user_ids=None, *, type="chat", event="message_received", title="Hello", **fields):
    """A trigger's JSON (one new user when `user_ids` is None); any field can be added or replaced."""
    ids = [uuid.uuid4()] if user_ids is None else user_ids
    body = {"type": type, "event": event, "title": title, "user_ids": [str(u) for u in ids]}
    body.update(fields)
    return body


def post_trigger(client, user_ids=None, *, headers=SERVICE, body=None, **fields):
    """POST a trigger (`body` as given, else trigger_body(user_ids, **fields)); the response, unchecked."""
    return client.post(TRIGGER_PATH, json=body if body is not None else trigger_body(user_ids, **fields),
                       headers=headers)


def trigger(client, user_ids=None, **fields):
    """A trigger that must be accepted: asserts the 202 and returns its body (trigger_id, status_url)."""
    response = post_trigger(client, user_ids, **fields)
    assert response.status_code == 202, text_of(response)
    return json_of(response)


def push(client, user_ids=None, *, headers=SERVICE, **fields):
    """POST a direct push (same body as a trigger); the response, unchecked."""
    return client.post(PUSH_PATH, json=trigger_body(user_ids, **fields), headers=headers)


def put_contact(client, user_id, **contact):
    response = client.put(f"/v1/notifications/users/{user_id}/contact", json=contact, headers=SERVICE)
    assert response.status_code == 200, text_of(response)
    return json_of(response)


def notification_id(client, user_headers):
    """The id of the user's newest notification (read through the inbox, as the user)."""
    response = client.get("/v1/notifications", headers=user_headers)
    assert response.status_code == 200, text_of(response)
    return json_of(response)["items"][0]["id"]


def deliveries(client, user_headers, nid=None):
    """channel -> delivery, as the user reads them from GET /v1/notifications/{id}/deliveries."""
    nid = nid or notification_id(client, user_headers)
    response = client.get(f"/v1/notifications/{nid}/deliveries", headers=user_headers)
    assert response.status_code == 200, text_of(response)
    return {d["channel"]: d for d in json_of(response)["items"]}


def assert_error(response, status, code):
    """An error answer with this status and SPEC code (test-client or `requests` response)."""
    assert response.status_code == status, text_of(response)
    body = json_of(response)
    assert body["code"] == "notifications_m." + code and body["status"] == status, body
    return body


def assert_envelope(response, status, code):
    """SPEC's one error shape: JSON, prefixed code, matching status, a message, no HTML (a test-client
    response or a real server's)."""
    text = text_of(response)
    assert response.status_code == status, text
    assert response.headers["Content-Type"].split(";")[0].strip() == "application/json", text
    assert "<html" not in text.lower() and "<!doctype" not in text.lower()
    body = json_of(response)
    assert body["code"] == "notifications_m." + code, body
    assert body["status"] == status
    assert isinstance(body["message"], str) and body["message"]
    assert set(body) - {"errors"} == ENVELOPE_KEYS
    return body


def live_notification(web, title):
    """The whole path on real processes (a `WebServer` with a worker running): a new user's stream
    open, a trigger titled `title` to that user; returns the notification the stream read live."""
    user = uuid.uuid4()
    with web.stream(headers=bearer(user)) as stream:
        assert stream.ok
        assert web.post(TRIGGER_PATH, headers=SERVICE, json=trigger_body([user], **IN_APP, title=title)).ok
        (event,) = stream.wait_events(1, timeout=20)
    return event.json()
