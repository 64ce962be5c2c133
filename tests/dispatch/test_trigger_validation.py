"""Every way a trigger can be refused, and that a refused trigger leaves nothing behind.

Group, event and channel are checked against notifications.yaml and answer
400 with their SPEC codes; everything the schema refuses is 422
`invalid_request` with `errors` naming the field; auth is 401
`invalid_api_key`; a body that is not JSON is 415 or 400.
"""
import json
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from testkit.api import TRIGGER_PATH as TRIGGER, assert_envelope
from testkit.config_files import queue_yaml
from testkit.identity import SERVICE, make_token


def valid(**overrides):
    body = {"type": "chats", "event": "message_received", "title": "Test Notification",
            "content": "This is a test notification", "customer_id": "550e8400-e29b-41d4-a716-446655440000",
            "user_ids": ["123e4567-e89b-12d3-a456-426614174000"], "rec_type": "chats",
            "rec_id": "789e4567-e89b-12d3-a456-426614174000"}
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not _MISSING}


_MISSING = object()




@pytest.fixture
def nothing_accepted(clean, db, app):
    """After the test: no trigger row and nothing queued in Redis."""
    yield
    with db.cursor() as cur:
        cur.execute("SELECT count(*) FROM triggers")
        assert cur.fetchone()[0] == 0, "a refused trigger left a row"
    from app.queues.enqueue import queue_name
    queue = queue_name("dispatch", app)
    assert app.extensions["redis"].llen(f"rq:queue:{queue}") == 0, "a refused trigger was enqueued"


def test_valid_body_is_accepted(client):
    assert client.post(TRIGGER, json=valid(), headers=SERVICE).status_code == 202


# ---------------------------------------------------------------- domain: 400 with the SPEC codes


@pytest.mark.parametrize("body, code", [
    (valid(type="chatz"), "invalid_group"),
    (valid(type="CHAT"), "invalid_group"),
    (valid(event="message_deleted"), "invalid_event"),
    (valid(type="task", event="message_received"), "invalid_event"),      # an event of another group
    (valid(channels=["pigeon"]), "invalid_channel"),
    (valid(channels=["system", "fax"]), "invalid_channel"),
])
def test_unknown_group_event_channel(client, nothing_accepted, body, code):
    assert_envelope(client.post(TRIGGER, json=body, headers=SERVICE), 400, code)


def test_known_channel_and_alias_are_accepted(client):
    assert client.post(TRIGGER, json=valid(channels=["system"]), headers=SERVICE).status_code == 202
    assert client.post(TRIGGER, json=valid(type="chat"), headers=SERVICE).status_code == 202


# ---------------------------------------------------------------- schema: 422 naming the field


@pytest.mark.parametrize("overrides, field", [
    ({"user_ids": ["not-a-uuid"]}, "user_ids"),
    ({"user_ids": [str(uuid.uuid4()), "123"]}, "user_ids"),
    ({"user_ids": []}, "user_ids"),
    ({"user_ids": _MISSING}, "user_ids"),
    ({"user_ids": "123e4567-e89b-12d3-a456-426614174000"}, "user_ids"),
    ({"title": _MISSING}, "title"),
    ({"title": ""}, "title"),
    ({"title": None}, "title"),
    ({"title": "x" * 201}, "title"),
    ({"title": "<b></b>"}, "title"),                       # nothing left once markup is removed
    ({"content": "x" * 5001}, "content"),
    ({"link_url": "javascript:alert(1)"}, "link_url"),
    ({"link_url": "data:text/html,<script>alert(1)</script>"}, "link_url"),
    ({"link_url": "//evil.example/phish"}, "link_url"),
    ({"link_url": "http://plain.example/"}, "link_url"),
    ({"link_text": "x" * 101}, "link_text"),
    ({"customer_id": "acme"}, "customer_id"),
    ({"type": _MISSING}, "type"),
    ({"event": _MISSING}, "event"),
    ({"channels": "email"}, "channels"),
    ({"unexpected": 1}, "unexpected"),
    ({"priority": "highest"}, "priority"),      # not a lane (app/queues/lanes.py)
])
def test_schema_errors_are_422_naming_the_field(client, nothing_accepted, overrides, field):
    r = client.post(TRIGGER, json=valid(**overrides), headers=SERVICE)
    body = assert_envelope(r, 422, "invalid_request")
    assert field in body["errors"], body
    assert isinstance(body["errors"][field], (list, dict)) and body["errors"][field]


def test_limits_are_inclusive(client):
    body = valid(title="x" * 200, content="y" * 5000, link_url="https://bank.example/x", link_text="z" * 100)
    assert client.post(TRIGGER, json=body, headers=SERVICE).status_code == 202
    assert client.post(TRIGGER, json=valid(link_url="/chat/room/456"), headers=SERVICE).status_code == 202


def test_several_errors_are_reported_together(client, nothing_accepted):
    r = client.post(TRIGGER, json=valid(title="", user_ids=["x"], link_url="javascript:x"), headers=SERVICE)
    body = assert_envelope(r, 422, "invalid_request")
    assert {"title", "user_ids", "link_url"} <= set(body["errors"])


def test_more_user_ids_than_the_configured_maximum(make_app, tmp_path):
    client = make_app(QUEUE_CONFIG=queue_yaml(tmp_path, batch={"max_user_ids": 5})).test_client()
    six = [str(uuid.uuid4()) for _ in range(6)]
    body = assert_envelope(client.post(TRIGGER, json=valid(user_ids=six), headers=SERVICE), 422,
                           "invalid_request")
    assert "user_ids" in body["errors"]
    assert "5" in json.dumps(body["errors"]["user_ids"])
    assert client.post(TRIGGER, json=valid(user_ids=six[:5]), headers=SERVICE).status_code == 202


def test_default_maximum_is_queue_yaml(client, nothing_accepted):
    too_many = [str(uuid.uuid4()) for _ in range(10_001)]
    r = client.post(TRIGGER, json=valid(user_ids=too_many), headers=SERVICE)
    # refused either by the schema (422 naming user_ids) or, before it, by the body size limit
    if r.status_code == 413:
        assert_envelope(r, 413, "payload_too_large")
    else:
        assert "user_ids" in assert_envelope(r, 422, "invalid_request")["errors"]


def test_a_trigger_with_the_maximum_number_of_user_ids_fits_in_the_body_limit(client):
    users = [str(uuid.uuid4()) for _ in range(10_000)]
    assert client.post(TRIGGER, json=valid(user_ids=users), headers=SERVICE).status_code == 202


# ---------------------------------------------------------------- auth: 401 invalid_api_key


@pytest.mark.parametrize("headers", [
    {},
    {"X-API-Key": ""},
    {"X-API-Key": "wrong-key"},
    {"X-API-Key": "test-api-key "},
    {"Authorization": f"Bearer {make_token(uuid.uuid4())}"},
    {"Authorization": "Bearer test-api-key"},
])
def test_service_endpoints_need_an_api_key(client, nothing_accepted, headers):
    assert_envelope(client.post(TRIGGER, json=valid(), headers=headers), 401, "invalid_api_key")
    assert_envelope(client.post("/v1/notifications/sse", json=valid(), headers=headers), 401, "invalid_api_key")


def test_auth_is_checked_before_the_body(client, nothing_accepted):
    assert_envelope(client.post(TRIGGER, json={"nonsense": True}), 401, "invalid_api_key")


def test_an_api_key_is_not_a_user_token(client):
    """The reverse: the inbox does not take the service key."""
    r = client.get("/v1/notifications", headers=SERVICE)
    assert_envelope(r, 401, "invalid_user_id")


# ---------------------------------------------------------------- not JSON


def test_wrong_content_type_is_415(client, nothing_accepted):
    r = client.post(TRIGGER, data=json.dumps(valid()), headers=dict(SERVICE, **{"Content-Type": "text/plain"}))
    assert_envelope(r, 415, "unsupported_media_type")
    r = client.post(TRIGGER, data={"title": "form"}, headers=SERVICE)
    assert_envelope(r, 415, "unsupported_media_type")


@pytest.mark.parametrize("raw", ['{"type": "chats",', "not json", "{'type': 'chats'}", '{"title": "x"} trailing'])
def test_malformed_json_is_400(client, nothing_accepted, raw):
    r = client.post(TRIGGER, data=raw, headers=dict(SERVICE, **{"Content-Type": "application/json"}))
    assert_envelope(r, 400, "invalid_json")


def test_empty_json_body_is_refused(client, nothing_accepted):
    r = client.post(TRIGGER, data="", headers=dict(SERVICE, **{"Content-Type": "application/json"}))
    assert r.status_code in (400, 422), r.get_data(as_text=True)
    assert r.get_json()["status"] == r.status_code


@pytest.mark.parametrize("raw", ["[]", '"a string"', "42", "null"])
def test_json_that_is_not_an_object_is_refused(client, nothing_accepted, raw):
    r = client.post(TRIGGER, data=raw, headers=dict(SERVICE, **{"Content-Type": "application/json"}))
    assert r.status_code in (400, 422), r.get_data(as_text=True)
    assert r.get_json()["code"] in ("notifications_m.invalid_request", "notifications_m.invalid_json")


@settings(max_examples=3000, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60)
       | st.text(alphabet="<>&;#x3cab/\r\n\ufeff\x00 ", max_size=30))
def test_the_markup_free_shortcut_cleans_exactly_as_plain_text(text):
    """clean_text skips nh3 for text that cannot hold markup: it must never answer otherwise."""
    from app.dispatch.schemas import clean_text
    from app.sanitize import plain_text
    assert clean_text(text) == plain_text(text)
