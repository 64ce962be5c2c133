"""The Apprise channel end to end: trigger -> RQ worker -> Apprise json:// -> a local HTTP endpoint."""
import pytest

from testkit.api import deliveries, put_contact, trigger
from testkit.jobs import drain, run_jobs, scheduled


@pytest.fixture
def build(channel_app):
    """build(options) -> an app whose chat.message_received also goes to an `ops` Apprise channel."""
    def make(options, attempts=3):
        return channel_app({"ops": dict({"type": "apprise"}, **options)},
                           {"chat": {"message_received": ["system", "ops"]}}, attempts)
    return make


def json_url(server, path="/hook"):
    return f"json://127.0.0.1:{server.port}{path}"


def test_title_and_body_reach_the_endpoint(build, endpoint, user):
    user_id, headers = user
    app = build({"urls": [json_url(endpoint)]})
    client = app.test_client()
    trigger(client, [user_id], title='Deploy < done & "green"', content="All 12 checks passed",
            link_url="/deploys/42", link_text="Details")
    run_jobs(app)
    (request,) = endpoint.requests
    assert request.path == "/hook"
    assert request.json["title"] == 'Deploy < done & "green"'
    assert request.json["message"] == "All 12 checks passed\n\nDetails: https://notify.example.com/deploys/42"
    assert request.json["type"] == "info"
    ops = deliveries(client, headers)["ops"]
    assert ops["status"] == "sent"
    assert ops["attempts"] == 1
    assert [a["outcome"] for a in ops["history"]] == ["sent"]


def test_failure_is_retried_with_apprises_reason_then_sent(build, endpoint, user):
    user_id, headers = user
    endpoint.fail(500, {"error": "boom"})
    app = build({"urls": [json_url(endpoint)]})
    client = app.test_client()
    trigger(client, [user_id])
    run_jobs(app)
    ops = deliveries(client, headers)["ops"]
    assert ops["status"] == "pending"
    assert "500" in ops["last_error"]
    assert len(scheduled(app)) == 1
    drain(app)
    ops = deliveries(client, headers)["ops"]
    assert ops["status"] == "sent" and ops["attempts"] == 2
    assert [a["outcome"] for a in ops["history"]] == ["retry", "sent"]
    assert len(endpoint.requests) == 2


def test_even_a_4xx_is_retried_since_apprise_only_says_failed(build, endpoint, user):
    user_id, headers = user
    endpoint.always = (400, {"error": "nope"}, 0)
    app = build({"urls": [json_url(endpoint)]}, attempts=2)
    client = app.test_client()
    trigger(client, [user_id])
    drain(app)
    ops = deliveries(client, headers)["ops"]
    assert ops["status"] == "failed"
    assert [a["outcome"] for a in ops["history"]] == ["retry", "failed"]
    assert len(endpoint.requests) == 2


def test_unreachable_endpoint_is_retried(build, endpoint, user):
    user_id, headers = user
    endpoint.stop()
    app = build({"urls": [json_url(endpoint)], "timeout": 5})
    client = app.test_client()
    trigger(client, [user_id])
    run_jobs(app)
    ops = deliveries(client, headers)["ops"]
    assert ops["status"] == "pending"
    assert "connection" in ops["last_error"].lower()


def test_url_from_the_environment(build, endpoint, user, monkeypatch):
    user_id, headers = user
    monkeypatch.setenv("TEST_APPRISE_URL", json_url(endpoint, "/from-env"))
    app = build({"urls": ["${TEST_APPRISE_URL}"]})
    client = app.test_client()
    trigger(client, [user_id])
    run_jobs(app)
    assert [r.path for r in endpoint.requests] == ["/from-env"]
    assert deliveries(client, headers)["ops"]["status"] == "sent"


def test_per_recipient_urls(build, endpoint, user):
    user_id, headers = user
    app = build({"urls": [json_url(endpoint, "/users/{user_id}/{recipient}")], "needs": "phone"})
    client = app.test_client()
    put_contact(client, user_id, phone="+14155550100")
    trigger(client, [user_id])
    run_jobs(app)
    assert [r.path for r in endpoint.requests] == [f"/users/{user_id}/+14155550100"]
    assert deliveries(client, headers)["ops"]["status"] == "sent"


def test_a_recipient_cannot_add_apprise_options_or_leave_its_path_segment(build, endpoint, user):
    """An email address may hold `?`, `+`, `=` and `/`: written raw into the URL, this one made
    Apprise send an extra HTTP header (`?+X-Injected=...`) and cut the path. Encoded, the whole
    address is one path segment the endpoint decodes back, and nothing else changes."""
    from urllib.parse import unquote
    user_id, headers = user
    app = build({"urls": [json_url(endpoint, "/notify/{recipient}")], "needs": "email"})
    client = app.test_client()
    address = "x/y?+X-Injected=yes@example.com"
    put_contact(client, user_id, email=address)
    trigger(client, [user_id])
    run_jobs(app)
    (request,) = endpoint.requests
    assert "X-Injected" not in request.headers
    assert request.path.startswith("/notify/") and "?" not in request.path
    assert unquote(request.path[len("/notify/"):]) == address
    assert deliveries(client, headers)["ops"]["status"] == "sent"


def test_per_recipient_channel_skips_users_without_the_address(build, endpoint, user):
    user_id, headers = user
    app = build({"urls": [json_url(endpoint, "/sms/{recipient}")], "needs": "phone"})
    client = app.test_client()
    trigger(client, [user_id])
    run_jobs(app)
    ops = deliveries(client, headers)["ops"]
    assert ops["status"] == "skipped" and ops["reason"] == "no phone on file for this user"
    assert endpoint.requests == []


@pytest.mark.parametrize("options, key", [
    ({"urls": ["nonsense://what"]}, "channels.ops.urls[0]"),
    ({"urls": ["json://127.0.0.1:9/ok", "not a url"]}, "channels.ops.urls[1]"),
    ({"urls": ["${TEST_APPRISE_UNSET_VARIABLE}"]}, "channels.ops.urls[0]"),
    ({"urls": []}, "channels.ops.urls"),
    ({}, "channels.ops.urls"),
])
def test_bad_urls_stop_start_up_naming_the_key(build, options, key, monkeypatch):
    from app.errors import ConfigError
    monkeypatch.delenv("TEST_APPRISE_UNSET_VARIABLE", raising=False)
    with pytest.raises(ConfigError) as caught:
        build(options)
    assert caught.value.key == key
    assert "notifications.yaml" in caught.value.source
    assert "what" not in caught.value.problem          # the URL (it may hold a token) is not echoed
