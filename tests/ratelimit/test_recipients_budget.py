"""The recipients budget (issue 17, point 7): per API key, a trigger or direct push to N users costs N.

Over HTTP, on apps whose queue.yaml copy has a small `rate_limits.recipients` (the shipped one allows
3,000,000 a minute per key); counted in the run's Redis, shared by every app instance.
"""
import uuid

import pytest
import yaml

from app.errors import ConfigError
from devtools.services import REPO_ROOT
from testkit.api import post_trigger, push, trigger_body
from testkit.config_files import queue_yaml
from testkit.identity import OTHER_SERVICE as OTHER, SERVICE

ROOT = REPO_ROOT


@pytest.fixture
def budget_app(make_app, tmp_path):
    """budget_app(recipients, max_user_ids) -> an app with rate limits on and that recipients budget."""
    made = []

    def factory(recipients, max_user_ids=10):
        made.append(queue_yaml(tmp_path, f"queue-{len(made)}.yaml", batch={"max_user_ids": max_user_ids},
                               rate_limits={"trigger": "10000/second", "recipients": recipients}))
        return make_app(RATE_LIMITS_ENABLED="true", QUEUE_CONFIG=made[-1])
    return factory


def users(count):
    return [uuid.uuid4() for _ in range(count)]


def assert_refused(response):
    assert response.status_code == 429, response.get_data(as_text=True)
    error = response.get_json()
    assert error["code"] == "notifications_m.rate_limited" and error["status"] == 429
    assert "recipients" in error["message"]
    assert 1 <= int(response.headers["Retry-After"]) <= 60


def count(db, table):
    with db.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {table}")
        return cur.fetchone()[0]


def test_a_trigger_costs_one_per_recipient_and_over_the_budget_nothing_is_accepted(budget_app, db):
    client = budget_app("10/minute").test_client()
    assert post_trigger(client, users(4)).status_code == 202
    assert post_trigger(client, users(4)).status_code == 202  # 8 of 10 spent, by two requests
    assert_refused(post_trigger(client, users(3)))            # 11 > 10: refused whole
    assert (count(db, "triggers"), count(db, "audit_log")) == (2, 2)    # nothing of it stored or audited
    assert post_trigger(client, users(2)).status_code == 202  # the refused 3 were not counted: 10 of 10
    assert_refused(post_trigger(client, users(1)))
    assert count(db, "triggers") == 3


def test_direct_push_spends_the_same_budget(budget_app):
    client = budget_app("10/minute").test_client()
    assert push(client, users(6)).status_code == 200
    assert_refused(post_trigger(client, users(5)))
    assert_refused(push(client, users(5)))
    assert post_trigger(client, users(4)).status_code == 202


def test_each_key_has_its_own_budget(budget_app):
    client = budget_app("10/minute").test_client()
    assert post_trigger(client, users(10)).status_code == 202
    assert_refused(post_trigger(client, users(1)))
    assert post_trigger(client, users(10), headers=OTHER).status_code == 202
    assert_refused(post_trigger(client, users(1), headers=OTHER))


def test_an_idempotent_replay_costs_nothing(budget_app):
    client = budget_app("10/minute").test_client()
    headers = dict(SERVICE, **{"Idempotency-Key": "once"})
    sent = trigger_body(users(6))
    first = client.post("/v1/notifications/trigger", json=sent, headers=headers)
    assert first.status_code == 202
    again = client.post("/v1/notifications/trigger", json=sent, headers=headers)
    assert (again.status_code, again.get_json()) == (202, first.get_json())
    assert post_trigger(client, users(4)).status_code == 202  # 6 + 4: the replay spent none
    assert_refused(post_trigger(client, users(1)))


def test_the_budget_is_shared_by_every_app_instance(budget_app):
    first, second = budget_app("10/minute").test_client(), budget_app("10/minute").test_client()
    assert post_trigger(first, users(6)).status_code == 202
    assert_refused(post_trigger(second, users(5)))
    assert post_trigger(second, users(4)).status_code == 202


def test_a_large_budget_leased_in_slices_is_spent_to_the_last_recipient(budget_app, db):
    """1,000 a minute is leased 10 at a time; triggers of 7 leave parts of slices that later
    triggers use: 142 triggers (994) fit, a 143rd of 7 does not, one of 6 still does."""
    client = budget_app("1000/minute").test_client()
    for _ in range(142):
        assert post_trigger(client, users(7)).status_code == 202
    assert_refused(post_trigger(client, users(7)))
    assert post_trigger(client, users(6)).status_code == 202
    assert_refused(post_trigger(client, users(1)))
    with db.cursor() as cur:
        cur.execute("SELECT sum(users_total) FROM triggers")
        assert cur.fetchone()[0] == 1000


def test_the_shipped_budget_allows_three_million_recipients_a_minute_per_key():
    from limits import parse

    from app.domain import load_domain
    domain = load_domain(str(ROOT / "notifications.yaml"), str(ROOT / "queue.yaml"))
    limit = parse(domain.rate_limits["recipients"])
    assert limit.amount * 60 / limit.get_expiry() >= 3_000_000


def test_a_budget_smaller_than_the_largest_trigger_stops_start_up(tmp_path):
    from app.domain import load_domain
    data = yaml.safe_load((ROOT / "queue.yaml").read_text())
    data["rate_limits"]["recipients"] = "5000/minute"          # the shipped max_user_ids is 10,000
    path = tmp_path / "queue.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as raised:
        load_domain(str(ROOT / "notifications.yaml"), str(path))
    assert "rate_limits.recipients" in str(raised.value) and "max_user_ids" in str(raised.value)
