"""Digests end to end: triggers -> RQ worker -> one email at the window's end listing them, with the
count in the subject (a real SMTP server); urgent events never wait; the configuration checked."""
import pytest
import yaml

from app.domain import load_domain
from app.errors import ConfigError
from testkit.api import deliveries, json_of, put_contact, trigger
from testkit.config_files import channel_config
from testkit.jobs import fast_forward, run_jobs

PUBLIC_URL = "https://notify.example.com"


def digest_config(tmp_path, digest, urgent=False, group_level=False):
    """notifications.yaml with chat.message_digest (and security.login_alert) on system + email."""
    settings = channel_config(tmp_path, {"email": {"enabled": True}},
                              {"chat": {"message_digest": ["system", "email"]}})
    path = settings["NOTIFICATIONS_CONFIG"]
    data = yaml.safe_load(open(path))
    if group_level:
        data["groups"]["security"]["digest"] = digest
    else:
        data["groups"]["chat"]["events"]["message_digest"]["digest"] = digest
    data["groups"]["security"]["events"]["login_alert"]["urgent"] = urgent
    with open(path, "w") as f:
        yaml.safe_dump(data, f)
    return settings


@pytest.fixture
def build(make_app, smtp, tmp_path):
    def make(digest, **kwargs):
        return make_app(PUBLIC_URL=PUBLIC_URL, MAIL_SERVER="127.0.0.1", MAIL_PORT=str(smtp.port), MAIL_TIMEOUT="5",
                        **digest_config(tmp_path, digest, **kwargs))
    return make


def chat(client, user_id, title, **fields):
    trigger(client, [user_id], type="chat", event="message_digest", title=title, content="hi", **fields)


def window_passes(app, db):
    """The digest windows end now (as if their time had passed), and the waiting jobs come due."""
    with db.cursor() as cur:
        cur.execute("UPDATE digests SET window_end = now() WHERE sender IS NULL")
    fast_forward(app)
    run_jobs(app)


def email_deliveries(db):
    with db.cursor() as cur:
        cur.execute("SELECT status, provider_message_id, reason FROM deliveries WHERE channel = 'email'"
                    " ORDER BY created_at")
        return cur.fetchall()


def test_notifications_within_the_window_go_out_as_one_email(build, smtp, user, db):
    user_id, headers = user
    app = build({"window": "PT10M", "channels": ["email"]})
    client = app.test_client()
    put_contact(client, user_id, email="ada@example.org")
    for n in range(3):
        chat(client, user_id, f"Message {n}", link_url=f"/chat/{n}")
    run_jobs(app)
    assert smtp.messages == []
    assert len(json_of(client.get("/v1/notifications", headers=headers))["items"]) == 3   # in-app: one each
    waiting = email_deliveries(db)
    assert all(status == "pending" and reason.startswith("in a digest until ") for status, _, reason in waiting)

    window_passes(app, db)
    assert len(smtp.messages) == 1
    message = smtp.messages[0]["message"]
    assert message["Subject"] == "You have 3 new notifications"
    text = message.get_body(preferencelist=("plain",)).get_content()
    for n in range(3):
        assert f"Message {n} (" in text and f"{PUBLIC_URL}/chat/{n}" in text
    rows = email_deliveries(db)
    assert {status for status, *_ in rows} == {"sent"} and len({pid for _, pid, _ in rows}) == 1
    assert deliveries(client, headers)["email"]["status"] == "sent"

    chat(client, user_id, "After the digest")       # a new window
    run_jobs(app)
    window_passes(app, db)
    assert [m["message"]["Subject"] for m in smtp.messages][1:] == ["You have 1 new notification"]


def test_a_full_digest_goes_out_at_once(build, smtp, user, db):
    user_id, _ = user
    app = build({"window": "PT1H", "channels": ["email"], "max_items": 2})
    client = app.test_client()
    put_contact(client, user_id, email="ada@example.org")
    for n in range(3):
        chat(client, user_id, f"Message {n}")
        run_jobs(app)
    assert [m["message"]["Subject"] for m in smtp.messages] == ["You have 2 new notifications"]
    assert [status for status, *_ in email_deliveries(db)] == ["sent", "sent", "pending"]


def test_urgent_events_never_wait_for_a_digest(build, smtp, user):
    user_id, _ = user
    app = build({"window": "PT1H", "channels": ["email"]}, urgent=True, group_level=True)
    client = app.test_client()
    put_contact(client, user_id, email="ada@example.org")
    trigger(client, [user_id], type="security", event="login_alert", title="New login", content="Berlin")
    run_jobs(app)
    assert [m["message"]["Subject"] for m in smtp.messages] == ["New login"]


@pytest.mark.parametrize("digest, key", [
    ({"window": "10 minutes", "channels": ["email"]}, "digest.window"),
    ({"window": "PT0S", "channels": ["email"]}, "digest.window"),
    ({"window": "PT10M", "channels": ["system"]}, "digest.channels"),
    ({"window": "PT10M", "channels": ["pager"]}, "digest.channels"),
    ({"window": "PT10M", "channels": ["email"], "max_items": 0}, "digest.max_items"),
    ({"window": "PT10M", "channels": ["email"], "every": 1}, "digest"),
])
def test_a_bad_digest_stops_startup(tmp_path, digest, key):
    settings = digest_config(tmp_path, digest)
    with pytest.raises(ConfigError) as raised:
        load_domain(settings["NOTIFICATIONS_CONFIG"], settings["QUEUE_CONFIG"])
    assert raised.value.key.endswith(key)
