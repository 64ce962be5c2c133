"""API keys with names and scopes, configured by hash (Issue 16 point 3), over HTTP on a real
PostgreSQL and Redis: a key reaches only the endpoints of its scopes, the audit log names the
key and never holds its secret, two keys under one name rotate without downtime."""
import hashlib
import json
import uuid

import pytest

from app.security.api_keys import SCOPES, config_line, plain_name
from app.config import DEV_SECRET_KEY
from testkit.api import post_trigger
from testkit.identity import API_KEY

# 43-character random-looking keys: what `flask keys new` makes
TRIGGER_KEY = "trg-" + "a" * 39
TRIGGER_KEY_NEW = "trg-" + "b" * 39
AUDIT_KEY = "aud-" + "c" * 39
ALL_BUT_CONTACTS = "nct-" + "d" * 39
KEYS = ",".join([config_line("billing", TRIGGER_KEY, {"trigger"}),
                 config_line("billing", TRIGGER_KEY_NEW, {"trigger"}),
                 config_line("auditor", AUDIT_KEY, {"audit"}),
                 config_line("no-contacts", ALL_BUT_CONTACTS, set(SCOPES) - {"contacts"}),
                 API_KEY])
TRIGGER = {"type": "chat", "event": "message_received", "title": "Hi"}


@pytest.fixture
def client(make_app):
    return make_app(API_KEYS=KEYS).test_client()


def key(secret):
    return {"X-API-Key": secret}


def audit_rows(client):
    response = client.get("/v1/notifications/audit", headers=key(AUDIT_KEY))
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()["items"]


def test_a_key_without_the_scope_is_403_insufficient_scope(client, db):
    user_path = f"/v1/notifications/users/{uuid.uuid4()}/contact"
    for method, path, secret, scope in [
            ("GET", user_path, TRIGGER_KEY, "contacts"),
            ("PUT", user_path, ALL_BUT_CONTACTS, "contacts"),
            ("GET", "/v1/notifications/audit", TRIGGER_KEY, "audit"),
            ("GET", "/v1/notifications/stats?from=2024-01-01T00:00:00Z&to=2024-01-02T00:00:00Z", AUDIT_KEY, "stats"),
            ("POST", "/v1/notifications/sse", TRIGGER_KEY, "push"),
            ("POST", "/v1/notifications/trigger", AUDIT_KEY, "trigger")]:
        response = client.open(path, method=method, headers=key(secret),
                               json={"email": "x@example.com"} if method == "PUT" else
                               dict(TRIGGER, user_ids=[str(uuid.uuid4())]) if method == "POST" else None)
        assert response.status_code == 403, (method, path, response.get_data(as_text=True))
        body = response.get_json()
        assert body["code"] == "notifications_m.insufficient_scope" and body["status"] == 403
        assert f"`{scope}`" in body["message"] and secret not in body["message"]
    with db.cursor() as cur:
        cur.execute("SELECT (SELECT count(*) FROM triggers), (SELECT count(*) FROM contacts)")
        assert cur.fetchone() == (0, 0)


def test_a_key_with_the_scope_is_served(client):
    assert post_trigger(client, headers=key(TRIGGER_KEY), **TRIGGER).status_code == 202
    assert client.get("/v1/notifications/audit", headers=key(AUDIT_KEY)).status_code == 200
    assert client.put(f"/v1/notifications/users/{uuid.uuid4()}/contact", json={"email": "x@example.com"},
                      headers=key(ALL_BUT_CONTACTS)).status_code == 403
    # the plain (SPEC) form keeps every scope
    for path in ("/v1/notifications/audit", f"/v1/notifications/users/{uuid.uuid4()}/contact"):
        assert client.get(path, headers=key(API_KEY)).status_code in (200, 404)


def test_the_secret_is_not_the_configuration(client):
    """A configured hash, sent as the key, is no key."""
    hashed = hashlib.sha256(TRIGGER_KEY.encode()).hexdigest()
    for sent in (hashed, f"billing:{hashed}:trigger", "billing"):
        response = post_trigger(client, headers=key(sent), **TRIGGER)
        assert response.status_code == 401 and response.get_json()["code"] == "notifications_m.invalid_api_key"


def test_audit_names_the_key_never_its_secret(client):
    assert post_trigger(client, headers=key(TRIGGER_KEY), **TRIGGER).status_code == 202
    assert post_trigger(client, headers=key(API_KEY), **TRIGGER).status_code == 202
    rows = [r for r in audit_rows(client) if r["actor_type"] == "service"]
    plain = plain_name(API_KEY, DEV_SECRET_KEY)
    assert sorted(r["actor_id"] for r in rows) == sorted(["billing", plain])
    # a plain key is named by a keyed hash, not the unsalted sha256(key)[:12] of before
    assert hashlib.sha256(API_KEY.encode()).hexdigest()[:12] not in plain
    text = json.dumps(rows)
    for secret in (TRIGGER_KEY, API_KEY):
        assert secret not in text and hashlib.sha256(secret.encode()).hexdigest() not in text


def test_two_keys_under_one_name_rotate_without_downtime(client):
    """Old and new key both work, are the same caller (trigger status, idempotency) and are
    audited under the same name."""
    user_id = uuid.uuid4()
    first = post_trigger(client, [user_id], headers=dict(key(TRIGGER_KEY), **{"Idempotency-Key": "order-42"}),
                         **TRIGGER)
    assert first.status_code == 202
    trigger_id = first.get_json()["trigger_id"]
    again = post_trigger(client, [user_id], headers=dict(key(TRIGGER_KEY_NEW), **{"Idempotency-Key": "order-42"}),
                         **TRIGGER)
    assert again.status_code == 202 and again.get_json()["trigger_id"] == trigger_id
    status = client.get(f"/v1/notifications/triggers/{trigger_id}", headers=key(TRIGGER_KEY_NEW))
    assert status.status_code == 200
    assert {r["actor_id"] for r in audit_rows(client) if r["actor_type"] == "service"} == {"billing"}


def test_refusal_is_logged_with_the_key_name_only(client, caplog):
    caplog.set_level("WARNING", logger="app.security.auth")
    assert client.get("/v1/notifications/audit", headers=key(TRIGGER_KEY)).status_code == 403
    assert "api key billing refused: it lacks the audit scope" in caplog.text
    assert TRIGGER_KEY not in caplog.text


def test_start_up_warns_that_plain_keys_are_kept_in_clear(make_app, caplog):
    caplog.set_level("WARNING", logger="app.security.auth")
    make_app(API_KEYS=KEYS)
    warnings = [r.getMessage() for r in caplog.records if "in clear" in r.getMessage()]
    assert len(warnings) == 1 and plain_name(API_KEY, DEV_SECRET_KEY) in warnings[0]
    assert API_KEY not in warnings[0] and "billing" not in warnings[0]
    caplog.clear()
    make_app(API_KEYS=config_line("billing", TRIGGER_KEY, {"trigger"}))
    assert not [r for r in caplog.records if "in clear" in r.getMessage()]


def test_keys_from_a_file(make_app, tmp_path):
    path = tmp_path / "keys"
    path.write_text(f"# billing, rotated 2024-05\n{config_line('billing', TRIGGER_KEY, {'trigger'})}\n\n")
    client = make_app(API_KEYS="", API_KEYS_FILE=str(path)).test_client()
    assert post_trigger(client, headers=key(TRIGGER_KEY), **TRIGGER).status_code == 202
    assert client.get("/v1/notifications/audit", headers=key(TRIGGER_KEY)).status_code == 403


def test_openapi_names_the_scope_of_every_service_operation(client):
    spec = client.get("/openapi.json").get_json()
    scopes = {}
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if method != "parameters" and operation.get("security") == [{"apiKeyAuth": []}]:
                scopes[(method.upper(), path)] = operation.get("x-scopes")
                assert f"API key scope: `{operation['x-scopes'][0]}`" in operation["description"]
                assert "insufficient_scope" in operation["responses"]["403"]["description"]
    assert scopes == {
        ("POST", "/v1/notifications/trigger"): ["trigger"],
        ("GET", "/v1/notifications/triggers/{trigger_id}"): ["trigger"],
        ("DELETE", "/v1/notifications/triggers/{trigger_id}"): ["trigger"],
        ("POST", "/v1/notifications/sse"): ["push"],
        ("GET", "/v1/notifications/users/{user_id}/contact"): ["contacts"],
        ("PUT", "/v1/notifications/users/{user_id}/contact"): ["contacts"],
        ("DELETE", "/v1/notifications/users/{user_id}/contact"): ["contacts"],
        ("GET", "/v1/notifications/audit"): ["audit"],
        ("GET", "/v1/notifications/stats"): ["stats"],
        ("GET", "/v1/notifications/{notification_id}/evidence"): ["audit"],
        ("GET", "/v1/notifications/users/{user_id}/preferences/history"): ["audit"],
    }
    described = spec["components"]["securitySchemes"]["apiKeyAuth"]["description"]
    assert all(f"`{scope}`" in described for scope in SCOPES)


# ---------------------------------------------------------------- flask keys new


def test_flask_keys_new_prints_a_key_and_the_line_that_configures_it(app, make_app):
    result = app.test_cli_runner().invoke(args=["keys", "new", "crm", "--scopes", "contacts,trigger"])
    assert result.exit_code == 0, result.output
    lines = dict(line.split(": ", 1) for line in result.output.splitlines())
    secret = next(v for k, v in lines.items() if k.startswith("key"))
    entry = next(v for k, v in lines.items() if k.startswith("API_KEYS entry"))
    assert len(secret) >= 43 and secret not in entry
    assert entry == f"crm:{hashlib.sha256(secret.encode()).hexdigest()}:contacts+trigger"
    client = make_app(API_KEYS=entry).test_client()
    assert post_trigger(client, headers=key(secret), **TRIGGER).status_code == 202
    assert client.get("/v1/notifications/audit", headers=key(secret)).status_code == 403


@pytest.mark.parametrize("args", [["crm", "--scopes", "everything"], ["Bad Name", "--scopes", "push"],
                                  ["crm"], ["key-1", "--scopes", "push"]])
def test_flask_keys_new_refuses_bad_input(app, args):
    result = app.test_cli_runner().invoke(args=["keys", "new", *args])
    assert result.exit_code == 2, result.output
