"""Every failure is SPEC's JSON envelope; docs and probes answer."""
import uuid

import pytest

from devtools.services import free_port
from testkit.api import assert_envelope
from testkit.rows import fetch_row, insert_notification







@pytest.fixture
def small_client(make_app):
    """An app whose request bodies may be at most 1 KiB."""
    return make_app(MAX_CONTENT_LENGTH=1024).test_client()


# ---------------------------------------------------------------- query and body validation


@pytest.mark.parametrize("query, field", [
    ("limit=0", "limit"),
    ("limit=201", "limit"),
    ("limit=1000", "limit"),
    ("limit=abc", "limit"),
    ("limit=1.5", "limit"),
    ("offset=-1", "offset"),
    ("offset=x", "offset"),
    ("status=bogus", "status"),
    ("status=READ", "status"),
    ("customer_id=not-a-uuid", "customer_id"),
    ("unknown=1", "unknown"),
    ("limit=10&colour=red", "colour"),
])
def test_bad_inbox_query_is_422_naming_the_field(client, user, query, field):
    _, headers = user
    body = assert_envelope(client.get(f"/v1/notifications?{query}", headers=headers), 422, "invalid_request")
    assert field in body["errors"]
    assert isinstance(body["errors"][field], list) and body["errors"][field]


def test_malformed_json_body_is_400_invalid_json(client, db, user):
    user_id, headers = user
    row = insert_notification(db, user_id)
    for raw in ('{"read": ', "{bad", "[1,", '{"read": tru}'):
        r = client.patch(f"/v1/notifications/{row['id']}/read", headers=headers, data=raw,
                         content_type="application/json")
        assert_envelope(r, 400, "invalid_json")
    assert fetch_row(db, row["id"])["read_at"] is None


@pytest.mark.parametrize("content_type, data", [
    ("application/x-www-form-urlencoded", "read=false"),
    ("text/plain", '{"read": false}'),
    ("multipart/form-data; boundary=x", "--x--"),
])
def test_wrong_content_type_is_415(client, db, user, content_type, data):
    user_id, headers = user
    row = insert_notification(db, user_id)
    r = client.patch(f"/v1/notifications/{row['id']}/read", headers=headers, data=data,
                     content_type=content_type)
    assert_envelope(r, 415, "unsupported_media_type")
    assert fetch_row(db, row["id"])["read_at"] is None


def test_json_with_charset_is_accepted(client, db, user):
    user_id, headers = user
    row = insert_notification(db, user_id, read_at="2024-01-16T00:00:00Z")
    r = client.patch(f"/v1/notifications/{row['id']}/read", headers=headers, data='{"read": false}',
                     content_type="application/json; charset=utf-8")
    assert r.status_code == 200 and r.get_json()["read"] is False


def test_oversized_body_is_413(small_client, db, user):
    user_id, headers = user
    row = insert_notification(db, user_id)
    r = small_client.patch(f"/v1/notifications/{row['id']}/read", headers=headers,
                           json={"read": True, "padding": "x" * 2000})
    assert_envelope(r, 413, "payload_too_large")
    assert fetch_row(db, row["id"])["read_at"] is None
    # under the limit the same app works
    r = small_client.patch(f"/v1/notifications/{row['id']}/read", headers=headers, json={"read": True})
    assert r.status_code == 200 and r.get_json()["read"] is True


# ---------------------------------------------------------------- routing


@pytest.mark.parametrize("path", ["/nope", "/v1/notification", "/v1/notifications/a/b/c", "/v2/notifications"])
def test_unknown_path_is_404_envelope(client, user, path):
    _, headers = user
    assert_envelope(client.get(path, headers=headers), 404, "not_found")
    assert_envelope(client.get(path), 404, "not_found")


@pytest.mark.parametrize("method, path, allowed", [
    ("post", "/v1/notifications", {"GET"}),
    ("put", "/v1/notifications/{id}", {"GET", "DELETE"}),
    ("post", "/v1/notifications/{id}", {"GET", "DELETE"}),
    ("get", "/v1/notifications/{id}/read", {"PATCH"}),
    ("delete", "/healthz", {"GET"}),
])
def test_wrong_method_is_405_envelope_with_allow(client, user, method, path, allowed):
    _, headers = user
    r = getattr(client, method)(path.format(id=uuid.uuid4()), headers=headers)
    assert_envelope(r, 405, "method_not_allowed")
    assert allowed <= {m.strip() for m in r.headers["Allow"].split(",")}


# ---------------------------------------------------------------- 500 and 503


def test_unexpected_exception_is_500_without_details(make_app, caplog):
    application = make_app()

    @application.get("/_test/boom")
    def boom():
        raise RuntimeError("secret detail: SELECT password FROM users")

    r = application.test_client().get("/_test/boom")
    body = assert_envelope(r, 500, "internal_error")
    text = r.get_data(as_text=True)
    assert "Traceback" not in text and "secret" not in text and "SELECT" not in text
    assert "RuntimeError" not in text
    assert body == {"code": "notifications_m.internal_error", "message": body["message"], "status": 500}
    # the operator still gets the whole story in the log
    assert "secret detail" in caplog.text


def test_sql_error_is_500_without_the_statement(make_app):
    from app import db
    application = make_app()

    @application.get("/_test/bad-sql")
    def bad_sql():
        with db.get_conn().cursor() as cur:
            cur.execute("SELECT no_such_column FROM notifications")
        return "unreachable"

    r = application.test_client().get("/_test/bad-sql")
    assert_envelope(r, 500, "internal_error")
    text = r.get_data(as_text=True)
    assert "no_such_column" not in text and "SELECT" not in text and "Traceback" not in text


def test_database_down_is_503_envelope(make_app, user):
    _, headers = user
    application = make_app(DATABASE_URL=f"postgresql://postgres@127.0.0.1:{free_port()}/postgres")
    r = application.test_client().get("/v1/notifications", headers=headers)
    body = assert_envelope(r, 503, "service_unavailable")
    assert "127.0.0.1" not in body["message"] and "Traceback" not in r.get_data(as_text=True)


# ---------------------------------------------------------------- docs and probes


def test_openapi_lists_every_endpoint(app, client):
    r = client.get("/openapi.json")
    assert r.status_code == 200 and r.mimetype == "application/json"
    spec = r.get_json()
    assert spec["openapi"].startswith("3.")
    paths = spec["paths"]
    doc_pages = {"/openapi.json", "/docs", "/redoc"}
    checked = 0
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.rule in doc_pages or rule.rule.startswith("/docs/"):
            continue
        path = rule.rule.replace("<", "{").replace(">", "}")
        assert path in paths, f"{rule.rule} is not documented"
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            assert method.lower() in paths[path], f"{method} {rule.rule} is not documented"
        checked += 1
    assert checked >= 5
    for path, method in [("/v1/notifications", "get"), ("/v1/notifications/{notification_id}", "get"),
                         ("/v1/notifications/{notification_id}", "delete"),
                         ("/v1/notifications/{notification_id}/read", "patch"),
                         ("/healthz", "get"), ("/readyz", "get")]:
        assert method in paths[path]


def test_openapi_documents_the_error_schema(client):
    spec = client.get("/openapi.json").get_json()
    error = spec["components"]["schemas"]["Error"]
    assert {"code", "message", "status", "errors"} <= set(error["properties"])
    assert error["properties"]["status"]["type"] == "integer"
    # every API operation's error response uses it
    for path, operations in spec["paths"].items():
        if not path.startswith("/v1/"):
            continue
        for method, operation in operations.items():
            if method == "parameters":
                continue
            default = operation["responses"]["default"]
            ref = default["$ref"].split("/")[-1]
            schema = spec["components"]["responses"][ref]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/Error"}, (path, method)
    assert "bearerAuth" in spec["components"]["securitySchemes"]
    assert spec["paths"]["/v1/notifications"]["get"]["security"] == [{"bearerAuth": []}]


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_browsable_docs_page(client, path):
    r = client.get(path)
    assert r.status_code == 200
    assert r.mimetype == "text/html"
    assert "/openapi.json" in r.get_data(as_text=True)


def test_healthz(client):
    r = client.get("/healthz")
    assert r.status_code == 200 and r.get_json() == {"status": "ok"}


def test_readyz_ok(client):
    r = client.get("/readyz")
    assert r.status_code == 200
    assert r.get_json() == {"status": "ok", "checks": {"postgres": "ok", "redis": "ok"}}


def test_readyz_names_the_dependency_that_is_down(make_app):
    no_redis = make_app(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0").test_client().get("/readyz")
    assert no_redis.status_code == 503
    body = no_redis.get_json()
    assert body["checks"]["postgres"] == "ok" and body["checks"]["redis"] != "ok"
    assert body["code"] == "notifications_m.not_ready" and body["status"] == 503

    no_pg = make_app(DATABASE_URL=f"postgresql://postgres@127.0.0.1:{free_port()}/postgres")
    body = no_pg.test_client().get("/readyz").get_json()
    assert body["checks"]["postgres"] != "ok" and body["checks"]["redis"] == "ok"
