"""CORS answers configured origins only; every response carries the security headers."""
import pytest


@pytest.fixture
def cors_client(make_app):
    return make_app(CORS_ORIGINS="https://bank.example").test_client()


def test_cors_for_configured_origin_only(cors_client, user):
    _, headers = user
    ok = cors_client.get("/v1/notifications", headers=dict(headers, Origin="https://bank.example"))
    assert ok.headers["Access-Control-Allow-Origin"] == "https://bank.example"
    other = cors_client.get("/v1/notifications", headers=dict(headers, Origin="https://evil.example"))
    assert "Access-Control-Allow-Origin" not in other.headers
    pre = cors_client.options("/v1/notifications/sse", headers={
        "Origin": "https://bank.example", "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "Last-Event-ID"})
    assert pre.headers["Access-Control-Allow-Origin"] == "https://bank.example"


def test_no_cors_without_configuration(client, user):
    _, headers = user
    r = client.get("/v1/notifications", headers=dict(headers, Origin="https://bank.example"))
    assert "Access-Control-Allow-Origin" not in r.headers


def test_security_headers_on_success_and_error(client):
    for path in ("/healthz", "/v1/notifications", "/nope"):
        r = client.get(path)
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert r.headers["X-Frame-Options"] == "DENY"
