"""Contacts API: services set and read a user's email, phone, locale and time zone (API key only)."""
import uuid

import pytest

from testkit.api import assert_envelope
from testkit.identity import make_token, OTHER_API_KEY, SERVICE


def url(user_id):
    return f"/v1/notifications/users/{user_id}/contact"




FULL = {"email": "jane@example.com", "phone": "+14155550100", "locale": "en-GB", "timezone": "Europe/London"}


def stored(db, user_id):
    with db.cursor() as cur:
        cur.execute("SELECT email, phone, locale, timezone FROM contacts WHERE user_id = %s", (user_id,))
        return cur.fetchone()


# ---------------------------------------------------------------- happy path


def test_put_creates_and_returns_the_contact(client, db):
    user_id = uuid.uuid4()
    r = client.put(url(user_id), json=FULL, headers=SERVICE)
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert {k: body[k] for k in FULL} == FULL
    assert body["user_id"] == str(user_id)
    assert body["updated_at"].endswith("Z")
    assert stored(db, user_id) == tuple(FULL.values())


def test_get_returns_what_put_stored(client):
    user_id = uuid.uuid4()
    client.put(url(user_id), json=FULL, headers=SERVICE)
    r = client.get(url(user_id), headers=SERVICE)
    assert r.status_code == 200
    assert {k: r.get_json()[k] for k in FULL} == FULL


def test_put_again_replaces_the_whole_contact(client, db):
    user_id = uuid.uuid4()
    client.put(url(user_id), json=FULL, headers=SERVICE)
    r = client.put(url(user_id), json={"email": "new@example.com"}, headers=SERVICE)
    assert r.status_code == 200
    assert r.get_json()["email"] == "new@example.com"
    assert r.get_json()["phone"] is None        # left out: cleared (PUT replaces)
    assert stored(db, user_id) == ("new@example.com", None, None, None)
    with db.cursor() as cur:
        cur.execute("SELECT count(*) FROM contacts")
        assert cur.fetchone()[0] == 1


def test_nulls_clear_fields(client):
    user_id = uuid.uuid4()
    client.put(url(user_id), json=FULL, headers=SERVICE)
    r = client.put(url(user_id), json={"email": None, "phone": None, "locale": None, "timezone": None},
                   headers=SERVICE)
    assert r.status_code == 200
    assert [r.get_json()[k] for k in FULL] == [None] * 4


def test_values_are_normalised(client):
    r = client.put(url(uuid.uuid4()), json={"email": " Jane.Doe@Example.COM ", "locale": "en_gb",
                                            "timezone": "europe/paris", "phone": "+33612345678"},
                   headers=SERVICE)
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert body["email"] == "Jane.Doe@example.com"
    assert body["locale"] == "en-GB"
    assert body["timezone"] == "Europe/Paris"


@pytest.mark.parametrize("locale", ["en", "fr", "en-GB", "es-419", "zh-Hant-TW", "pt-BR", "fil"])
def test_good_locales(client, locale):
    r = client.put(url(uuid.uuid4()), json={"locale": locale}, headers=SERVICE)
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["locale"] == locale


@pytest.mark.parametrize("tz", ["UTC", "America/New_York", "Asia/Kolkata", "Etc/GMT+5"])
def test_good_time_zones(client, tz):
    r = client.put(url(uuid.uuid4()), json={"timezone": tz}, headers=SERVICE)
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["timezone"] == tz


def test_delete_forgets_the_contact(client, db):
    user_id = uuid.uuid4()
    client.put(url(user_id), json=FULL, headers=SERVICE)
    assert client.delete(url(user_id), headers=SERVICE).status_code == 204
    assert stored(db, user_id) is None
    assert_envelope(client.delete(url(user_id), headers=SERVICE), 404, "not_found")


def test_any_configured_key_works(client):
    r = client.put(url(uuid.uuid4()), json=FULL, headers={"X-API-Key": OTHER_API_KEY})
    assert r.status_code == 200


# ---------------------------------------------------------------- errors


def test_unknown_user_is_404_contact_not_found(client):
    body = assert_envelope(client.get(url(uuid.uuid4()), headers=SERVICE), 404, "not_found")
    assert body["message"] == "Contact not found"


@pytest.mark.parametrize("method", ["get", "put", "delete"])
def test_bad_user_id_is_400_invalid_id(client, method):
    kwargs = {"json": FULL} if method == "put" else {}
    r = getattr(client, method)(url("not-a-uuid"), headers=SERVICE, **kwargs)
    assert_envelope(r, 400, "invalid_id")


@pytest.mark.parametrize("field, value", [
    ("email", "not-an-email"),
    ("email", "jane@"),
    ("email", "a@b@example.com"),
    ("email", "jane@example.com\r\nBcc: evil@example.com"),
    ("email", "x" * 250 + "@example.com"),
    ("email", ""),
    ("email", 42),
    ("phone", "14155550100"),            # no +
    ("phone", "+0155550100"),            # country code cannot start with 0
    ("phone", "+1 415 555 0100"),        # spaces
    ("phone", "+1415555010012345"),      # 16 digits
    ("phone", "+1"),
    ("phone", "+1415abc0100"),
    ("phone", ""),
    ("phone", 14155550100),
    ("locale", "english"),
    ("locale", "en-GBR"),
    ("locale", "e"),
    ("locale", "en GB"),
    ("locale", ""),
    ("timezone", "Mars/Olympus_Mons"),
    ("timezone", "GMT+25"),
    ("timezone", "../../etc/passwd"),
    ("timezone", "/usr/share/zoneinfo/UTC"),
    ("timezone", ""),
    ("timezone", 3),
])
def test_invalid_field_is_422_with_field_errors(client, db, field, value):
    user_id = uuid.uuid4()
    r = client.put(url(user_id), json=dict(FULL, **{field: value}), headers=SERVICE)
    body = assert_envelope(r, 422, "invalid_request")
    assert list(body["errors"]) == [field], body
    assert body["errors"][field] and all(isinstance(m, str) for m in body["errors"][field])
    assert stored(db, user_id) is None


def test_several_bad_fields_are_all_reported(client):
    r = client.put(url(uuid.uuid4()), json={"email": "x", "phone": "y", "locale": "z", "timezone": "w"},
                   headers=SERVICE)
    body = assert_envelope(r, 422, "invalid_request")
    assert set(body["errors"]) == {"email", "phone", "locale", "timezone"}


def test_unknown_field_is_422(client):
    r = client.put(url(uuid.uuid4()), json=dict(FULL, fax="+14155550100"), headers=SERVICE)
    body = assert_envelope(r, 422, "invalid_request")
    assert "fax" in body["errors"]


def test_body_must_be_an_object(client):
    r = client.put(url(uuid.uuid4()), json=["jane@example.com"], headers=SERVICE)
    assert_envelope(r, 422, "invalid_request")


def test_body_must_be_json(client):
    r = client.put(url(uuid.uuid4()), data="email=jane@example.com", headers=SERVICE,
                   content_type="application/x-www-form-urlencoded")
    assert_envelope(r, 415, "unsupported_media_type")


@pytest.mark.parametrize("method", ["get", "put", "delete"])
def test_api_key_required(client, method):
    kwargs = {"json": FULL} if method == "put" else {}
    user_id = uuid.uuid4()
    assert_envelope(getattr(client, method)(url(user_id), **kwargs), 401, "invalid_api_key")
    assert_envelope(getattr(client, method)(url(user_id), headers={"X-API-Key": "wrong"}, **kwargs),
                    401, "invalid_api_key")


@pytest.mark.parametrize("method", ["get", "put", "delete"])
def test_user_token_is_never_accepted(client, method):
    user_id = uuid.uuid4()
    kwargs = {"json": FULL} if method == "put" else {}
    headers = {"Authorization": f"Bearer {make_token(user_id)}"}
    assert_envelope(getattr(client, method)(url(user_id), headers=headers, **kwargs), 401, "invalid_api_key")


def test_auth_is_checked_before_the_body(client):
    r = client.put(url(uuid.uuid4()), json={"email": "nope"})
    assert_envelope(r, 401, "invalid_api_key")


def test_documented_in_openapi(client):
    spec = client.get("/openapi.json").get_json()
    operations = spec["paths"]["/v1/notifications/users/{user_id}/contact"]
    assert {"get", "put", "delete"} <= set(operations)
    assert operations["put"]["security"] == [{"apiKeyAuth": []}]
