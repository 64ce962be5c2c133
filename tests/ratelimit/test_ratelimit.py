"""Rate limits (app/ratelimit/): per API key, per user, per stream connect; counted in Redis.

The other test modules run with RATE_LIMITS_ENABLED=false (tests/conftest.py); here every app
turns them on, with small limits from a queue.yaml copy so a test needs only a few requests.
"""
import time
import uuid

import pytest
import redis as redis_lib
import yaml

from devtools.services import REPO_ROOT
from testkit.api import post_trigger, push, trigger_body
from testkit.concurrency import run_together
from testkit.config_files import queue_yaml
from testkit.identity import OTHER_SERVICE, SERVICE, bearer
from testkit.processes import ProcessGroup
from testkit.rows import insert_notification


@pytest.fixture
def limited_app(make_app, tmp_path):
    """limited_app(enabled="true", **limits) -> an app with rate limits on and the given limits."""
    def factory(enabled="true", **limits):
        return make_app(RATE_LIMITS_ENABLED=enabled, QUEUE_CONFIG=queue_yaml(tmp_path, rate_limits=limits))
    return factory


def assert_rate_limited(response):
    assert response.status_code == 429, response.get_data(as_text=True)
    body = response.get_json()
    assert body["code"] == "notifications_m.rate_limited"
    assert body["status"] == 429
    assert body["message"]
    assert set(body) <= {"code", "message", "status"}
    retry = int(response.headers["Retry-After"])
    assert 1 <= retry <= 60
    return retry


# ---------------------------------------------------------------- per API key


def test_the_n_plus_first_trigger_in_a_window_is_429_with_retry_after(limited_app):
    client = limited_app(trigger="3/minute").test_client()
    for _ in range(3):
        assert post_trigger(client).status_code == 202
    retry = assert_rate_limited(post_trigger(client))
    assert retry <= 60


def test_another_api_key_has_its_own_budget(limited_app):
    client = limited_app(trigger="2/minute").test_client()
    for _ in range(2):
        assert post_trigger(client).status_code == 202
    assert_rate_limited(post_trigger(client))
    for _ in range(2):
        assert post_trigger(client, headers=OTHER_SERVICE).status_code == 202
    assert_rate_limited(post_trigger(client, headers=OTHER_SERVICE))


def test_trigger_and_direct_push_share_one_budget_per_key(limited_app):
    client = limited_app(trigger="3/minute").test_client()
    assert post_trigger(client).status_code == 202
    assert push(client).status_code == 200
    assert post_trigger(client).status_code == 202
    assert_rate_limited(push(client))
    assert_rate_limited(post_trigger(client))


def test_other_service_calls_have_the_service_budget(limited_app):
    client = limited_app(trigger="1/minute", service="2/minute").test_client()
    assert post_trigger(client).status_code == 202
    assert_rate_limited(post_trigger(client))
    path = f"/v1/notifications/users/{uuid.uuid4()}/contact"
    assert client.get(path, headers=SERVICE).status_code == 404   # the trigger budget is spent, not this one
    assert client.put(path, json={"email": "a@example.com"}, headers=SERVICE).status_code == 200
    assert_rate_limited(client.get(path, headers=SERVICE))


# ---------------------------------------------------------------- shared by every process, in Redis


def test_the_count_is_shared_between_two_app_instances(limited_app, clean):
    first, second = limited_app(trigger="3/minute").test_client(), limited_app(trigger="3/minute").test_client()
    assert post_trigger(first).status_code == 202
    assert post_trigger(second).status_code == 202
    assert post_trigger(first).status_code == 202
    assert_rate_limited(post_trigger(second))
    assert_rate_limited(post_trigger(first))
    keys = redis_lib.Redis.from_url(clean["REDIS_URL"]).keys("*")
    limit_keys = [k.decode() for k in keys if b"ratelimit" in k]
    assert limit_keys and all(k.startswith(clean["REDIS_PREFIX"] + "ratelimit:") for k in limit_keys)


def test_a_large_budget_is_leased_in_slices_and_never_exceeded(limited_app, clean):
    """300/minute is taken 3 requests at a time (1/100 of it) by each process: one Redis round trip
    per slice, nobody past the budget, at most a slice's remainder per process refused early."""
    first, second = (limited_app(service="300/minute").test_client() for _ in range(2))
    path = f"/v1/notifications/users/{uuid.uuid4()}/contact"
    client = redis_lib.Redis.from_url(clean["REDIS_URL"])
    assert first.get(path, headers=SERVICE).status_code == 404
    key, = client.keys(clean["REDIS_PREFIX"] + "ratelimit:*")
    assert int(client.get(key)) == 3                         # a slice of 3 taken, 1 used
    assert first.get(path, headers=SERVICE).status_code == 404
    assert int(client.get(key)) == 3                         # served from the slice
    admitted, refused = 2, {"first": False, "second": False}
    while not all(refused.values()):
        for name, app_client in (("first", first), ("second", second)):
            if refused[name]:
                continue
            status = app_client.get(path, headers=SERVICE).status_code
            if status == 429:
                refused[name] = True
            else:
                assert status == 404
                admitted += 1
    assert 300 - 2 * 2 <= admitted <= 300
    assert_rate_limited(first.get(path, headers=SERVICE))


def test_concurrent_requests_of_one_caller_share_slices_without_losing_any(clean):
    """Requests that find the slice used up wait for the one taking the next slice, rather than
    each taking a slice of its own (which would spend the budget on slices nobody uses)."""
    from app.ratelimit.windows import Counter
    counter = Counter(clean["REDIS_URL"], clean["REDIS_PREFIX"] + "ratelimit", {"trigger": "1000/minute"})

    def caller(_):
        mine = 0
        while counter.hit("trigger", "key:one")[0]:
            mine += 1
        return mine
    admitted = run_together(caller, 8)
    assert sum(admitted) == 1000                 # one process: every slice used, none past the budget
    allowed, retry = counter.hit("trigger", "key:one")
    assert allowed is False and 1 <= retry <= 60


@pytest.mark.slow
def test_two_gunicorn_gevent_workers_share_the_count(clean, tmp_path):
    """The deployment shape: gunicorn with two gevent workers; requests land on either one and
    the budget is still one budget."""
    env = dict(clean, RATE_LIMITS_ENABLED="true",
               QUEUE_CONFIG=queue_yaml(tmp_path, rate_limits={"trigger": "6/minute"}))
    with ProcessGroup(str(tmp_path)) as group:
        web = group.start_web(env, workers=2)
        statuses = [web.post("/v1/notifications/trigger", json=trigger_body(), headers=SERVICE).status_code
                    for _ in range(10)]
        refused = web.post("/v1/notifications/trigger", json=trigger_body(), headers=SERVICE)
        other = web.post("/v1/notifications/trigger", json=trigger_body(), headers=OTHER_SERVICE)
    assert statuses == [202] * 6 + [429] * 4
    assert refused.status_code == 429 and refused.json()["code"] == "notifications_m.rate_limited"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert other.status_code == 202


def test_redis_down_fails_open(limited_app, redis_proc, db):
    user_id = uuid.uuid4()
    insert_notification(db, user_id)
    client = limited_app(trigger="3/minute", user="3/minute").test_client()
    assert client.get("/v1/notifications", headers=bearer(user_id)).status_code == 200
    redis_proc.stop()
    try:
        # the trigger is accepted into the outbox (no Redis needed); the inbox is PostgreSQL only
        assert post_trigger(client).status_code == 202
        response = client.get("/v1/notifications", headers=bearer(user_id))
        assert response.status_code == 200 and response.get_json()["total"] == 1
        # still limited while Redis is away: per process, counted afresh in memory
        for _ in range(2):
            assert client.get("/v1/notifications", headers=bearer(user_id)).status_code == 200
        assert_rate_limited(client.get("/v1/notifications", headers=bearer(user_id)))
    finally:
        redis_proc.start()


def test_back_on_redis_once_it_returns(limited_app, redis_proc, clean):
    client = limited_app(trigger="100/minute").test_client()
    redis_proc.stop()
    try:
        assert post_trigger(client).status_code == 202
    finally:
        redis_proc.start()
    time.sleep(2.1)  # Redis is tried again after 1, 2, 4 … s
    assert post_trigger(client).status_code == 202
    keys = redis_lib.Redis.from_url(clean["REDIS_URL"]).keys(clean["REDIS_PREFIX"] + "ratelimit:*")
    assert keys


def test_disabled_by_the_environment_switch(limited_app):
    client = limited_app(enabled="false", trigger="1/minute").test_client()
    for _ in range(3):
        assert post_trigger(client).status_code == 202


# ---------------------------------------------------------------- per user


def test_user_calls_are_limited_per_user(limited_app):
    client = limited_app(user="3/minute").test_client()
    alice, bob = uuid.uuid4(), uuid.uuid4()
    assert client.get("/v1/notifications", headers=bearer(alice)).status_code == 200
    assert client.get("/v1/notifications/preferences", headers=bearer(alice)).status_code == 200
    assert client.get(f"/v1/notifications/{uuid.uuid4()}", headers=bearer(alice)).status_code == 404
    assert_rate_limited(client.get("/v1/notifications", headers=bearer(alice)))
    # a new token of the same user is the same user
    assert_rate_limited(client.get("/v1/notifications", headers=bearer(alice, customers=[uuid.uuid4()])))
    assert client.get("/v1/notifications", headers=bearer(bob)).status_code == 200


def test_calls_without_valid_credentials_are_limited_per_address(limited_app):
    client = limited_app(user="2/minute", service="2/minute").test_client()
    garbage = {"Authorization": "Bearer not-a-token"}
    assert client.get("/v1/notifications", headers=garbage).status_code == 401
    assert client.get("/v1/notifications").status_code == 401
    assert_rate_limited(client.get("/v1/notifications", headers=garbage))
    # a real user from the same address is not affected
    assert client.get("/v1/notifications", headers=bearer(uuid.uuid4())).status_code == 200
    path = f"/v1/notifications/users/{uuid.uuid4()}/contact"
    assert client.get(path, headers={"X-API-Key": "wrong"}).status_code == 401
    assert client.get(path).status_code == 401
    assert_rate_limited(client.get(path, headers={"X-API-Key": "wrong"}))
    assert client.get(path, headers=SERVICE).status_code == 404


def test_stream_refusals_before_the_cap_spend_nothing_and_unknown_callers_spend_their_address(limited_app):
    """The stream budget is a token bucket spent only once the per-user cap let a stream in (the
    real streams are in tests/streams/test_security.py): a stream the view refuses (403: customer
    outside the token) spends nothing, whatever the count; a caller with no valid ticket spends
    the bucket of its address, and a known user is not held to that bucket."""
    client = limited_app(stream_connect="20/minute", user="100/minute").test_client()
    alice, mine, other = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    headers = bearer(alice, customers=[mine])
    for _ in range(25):
        assert client.get(f"/v1/notifications/sse?customer_id={other}", headers=headers).status_code == 403
    for _ in range(20):
        assert client.get("/v1/notifications/sse?ticket=unknown").status_code == 401
    retry = assert_rate_limited(client.get("/v1/notifications/sse?ticket=unknown"))
    assert retry <= 3                                    # a token comes back every 3 s
    ticket = client.post("/v1/notifications/sse/ticket", headers=headers).get_json()["ticket"]
    assert client.get(f"/v1/notifications/sse?ticket={ticket}&customer_id={other}").status_code == 403


def test_a_stream_budget_under_twice_the_per_user_cap_stops_start_up(clean, tmp_path):
    from app import create_app
    from app.errors import ConfigError
    with pytest.raises(ConfigError) as caught:
        create_app(dict(clean, RATE_LIMITS_ENABLED="true", SSE_MAX_STREAMS_PER_USER="10",
                        QUEUE_CONFIG=queue_yaml(tmp_path, rate_limits={"stream_connect": "19/minute"})))
    assert caught.value.key == "rate_limits.stream_connect" and "20" in caught.value.problem


def test_probes_docs_and_preflight_are_not_limited(limited_app):
    client = limited_app(user="1/minute", service="1/minute", trigger="1/minute",
                         stream_connect="20/minute").test_client()
    for _ in range(3):
        for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
            assert client.get(path).status_code == 200, path
        assert client.options("/v1/notifications").status_code == 200


def test_openapi_documents_the_429_on_limited_operations(limited_app):
    spec = limited_app().test_client().get("/openapi.json").get_json()
    assert spec["components"]["responses"]["TOO_MANY_REQUESTS"]["headers"]["Retry-After"]
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if method == "parameters":
                continue
            limited = path.startswith("/v1/")
            assert ("429" in operation["responses"]) is limited, (method, path)


# ---------------------------------------------------------------- configuration


@pytest.mark.parametrize("name,value", [("trigger", "lots"), ("user", "0/second"), ("stream_connect", 10),
                                        ("service", ""), ("trigger", "100/fortnight")])
def test_a_bad_limit_stops_start_up_naming_it(tmp_path, name, value):
    from app.domain import load_domain
    from app.errors import ConfigError
    with pytest.raises(ConfigError) as caught:
        load_domain(str(REPO_ROOT / "notifications.yaml"), queue_yaml(tmp_path, rate_limits={name: value}))
    assert caught.value.key == f"rate_limits.{name}"
    assert str(caught.value).startswith("config error: ")


def test_an_unknown_limit_name_stops_start_up(tmp_path):
    from app.domain import load_domain
    from app.errors import ConfigError
    with pytest.raises(ConfigError) as caught:
        load_domain(str(REPO_ROOT / "notifications.yaml"), queue_yaml(tmp_path, rate_limits={"triggers": "5/second"}))
    assert caught.value.key == "rate_limits.triggers"


def test_rate_limits_section_is_optional_with_defaults(tmp_path):
    from app.domain import RATE_LIMITS, load_domain
    data = yaml.safe_load((REPO_ROOT / "queue.yaml").read_text())
    data.pop("rate_limits", None)
    path = tmp_path / "queue.yaml"
    path.write_text(yaml.safe_dump(data))
    domain = load_domain(str(REPO_ROOT / "notifications.yaml"), str(path))
    assert domain.rate_limits == RATE_LIMITS


def test_bad_switch_value_is_a_config_error(clean):
    from app.config import load_settings
    from app.errors import ConfigError
    with pytest.raises(ConfigError) as caught:
        load_settings(environ=dict(clean, RATE_LIMITS_ENABLED="maybe"))
    assert caught.value.key == "RATE_LIMITS_ENABLED"
