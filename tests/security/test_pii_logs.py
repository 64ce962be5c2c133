"""A whole run leaves no personal data or secret in the logs or in Redis (issue 17, point 8).

Real gunicorn (access log on) and a real RQ worker deliver one trigger to four users over
email (aiosmtpd: one recipient deferred with `450 4.1.1 <address>`, one refused), SMS
(Twilio's shape: a 503, a 400 echoing the number), a webhook whose URL carries a token (a
500 echoing the address and the title) and a webhook that cannot be reached (retried until
it gives up). Users read their deliveries, open streams (bearer token and `?ticket=`), a
service pushes directly, a caller sends a malformed trigger. Then every line the web and
worker processes wrote, and every value left in Redis (RQ's jobs, results and failed-job
text), is scanned for each planted address, number, text, token and key, and for anything
shaped like an email address, a phone number, a JWT or a URL with a query string.
"""
import re
import uuid
import zlib

import pytest
import redis as redis_lib
import requests
from aiosmtpd.controller import Controller

from testkit.config_files import channel_config
from testkit.identity import API_KEY, make_token, SERVICE
from testkit.processes import wait_until
from testkit.providers import FakeHTTP, FakeTwilio
from devtools.services import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

MARK = uuid.uuid4().hex[:10]
TITLE, CONTENT, PUSHED = f"Zqtitle{MARK}", f"Zqcontent{MARK}", f"Zqpushed{MARK}"
WEBHOOK_TOKEN, DEAD_TOKEN = f"whk{MARK}Secret", f"dead{MARK}Secret"
USERS = [  # (email, phone); what each SMTP answer does is decided by the address
    ("carol@example.com", "+14155550123"),     # deferred once with 450 4.1.1 <address>, then taken
    ("dave@example.org", "+447700900461"),     # refused for good: 550 5.1.1 <address>
    ("erin@example.net", "+14155550199"),
    ("frank.o@example.com", "+33612345678"),
]

GENERIC = {  # shapes no log line may have, whoever's data it is
    "email address": re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"),
    "phone number": re.compile(r"\+\d{8,15}\b"),
    "JWT": re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\."),
    "URL with a query string": re.compile(r"(?:\w+://|\burl: )[^\s\"']*\?(?!\[redacted\])[^\s\"']*="),
    "query parameter": re.compile(r"[?&](?:token|ticket|access_token|api_key)=(?!\[redacted\])"),
}


class Recipients:
    """An SMTP server whose answer to RCPT depends on the address (carol deferred once, dave refused)."""

    def __init__(self):
        self.deferred, self.messages = set(), []

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.startswith("carol@") and address not in self.deferred:
            self.deferred.add(address)
            return f"450 4.1.1 <{address}>: Recipient address rejected: try again later"
        if address.startswith("dave@"):
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(list(envelope.rcpt_tos))
        return "250 Message accepted"


@pytest.fixture
def providers():
    handler = Recipients()
    smtp = Controller(handler, hostname="127.0.0.1", port=free_port())
    smtp.start()
    twilio, webhook = FakeTwilio(), FakeHTTP()
    twilio.fail(503, FakeTwilio.error(20503, "Service Unavailable", 503))
    twilio.fail(400, FakeTwilio.error(21211, f"The 'To' number {USERS[3][1]} is not a valid phone number.", 400))
    webhook.fail(500, {"message": f"upstream failed for {USERS[0][0]} ({USERS[0][1]}): '{TITLE}'"})
    yield {"smtp": smtp, "recipients": handler, "twilio": twilio, "webhook": webhook}
    smtp.stop()
    twilio.stop()
    webhook.stop()


def service_env(clean, tmp_path, providers):
    twilio, webhook = providers["twilio"], providers["webhook"]
    channels = {
        "email": {"enabled": True},
        "sms": {"type": "twilio", "base_url": twilio.url, "account_sid": twilio.account_sid,
                "auth_token": twilio.auth_token, "from": twilio.sender, "timeout": 5},
        "pager": {"type": "webhook", "url": f"{webhook.url}/hook?token={WEBHOOK_TOKEN}", "needs": "phone",
                  "headers": {"Authorization": f"Bearer {WEBHOOK_TOKEN}"}, "timeout": 5},
        "fax": {"type": "webhook", "url": f"http://127.0.0.1:{free_port()}/in?token={DEAD_TOKEN}", "timeout": 2},
    }
    events = {"chat": {"message_received": ["system", *channels]}}
    config = channel_config(tmp_path, channels, events, attempts=3, backoff=(0, 0))
    return dict(clean, **config, MAIL_SERVER="127.0.0.1", MAIL_PORT=str(providers["smtp"].port),
                MAIL_TIMEOUT="5", MAIL_DEFAULT_SENDER="Bank <notify@bank.example>",
                PUBLIC_URL="https://notify.bank.example")


def final_states(db):
    with db.cursor() as cur:
        cur.execute("SELECT channel, status, count(*) FROM deliveries GROUP BY channel, status")
        return {(channel, status): n for channel, status, n in cur.fetchall()}


def redis_text(url):
    """Every key and value in Redis as text (compressed RQ fields decompressed)."""
    client = redis_lib.Redis.from_url(url)
    parts = []

    def add(value):
        if isinstance(value, bytes):
            try:
                value = zlib.decompress(value)
            except zlib.error:
                pass
            parts.append(value.decode("utf-8", "replace"))
        else:
            parts.append(str(value))

    for key in client.scan_iter(count=1000):
        add(key)
        kind = client.type(key).decode()
        if kind == "string":
            add(client.get(key))
        elif kind == "hash":
            for field, value in client.hgetall(key).items():
                add(field)
                add(value)
        elif kind == "list":
            for value in client.lrange(key, 0, -1):
                add(value)
        elif kind == "set":
            for value in client.smembers(key):
                add(value)
        elif kind == "zset":
            for value, _ in client.zrange(key, 0, -1, withscores=True):
                add(value)
        elif kind == "stream":
            for _, fields in client.xrange(key):
                for field, value in fields.items():
                    add(field)
                    add(value)
    client.close()
    return "\n".join(parts)


def test_a_full_run_logs_no_personal_data_and_no_secret(clean, tmp_path, providers, processes, db):
    env = service_env(clean, tmp_path, providers)
    web = processes.start_web(env, access_log="-")
    worker = processes.start_worker(env)
    users = [(uuid.uuid4(), email, phone) for email, phone in USERS]
    tokens = {user_id: make_token(user_id) for user_id, _, _ in users}
    for user_id, email, phone in users:
        put = requests.put(f"{web.url}/v1/notifications/users/{user_id}/contact", headers=SERVICE,
                           json={"email": email, "phone": phone}, timeout=10)
        assert put.status_code == 200, put.text

    streams = [web.stream(headers={"Authorization": f"Bearer {tokens[users[0][0]]}"})]
    ticket = web.post("/v1/notifications/sse/ticket", headers={"Authorization": f"Bearer {tokens[users[1][0]]}"})
    assert ticket.status_code in (200, 201), ticket.text
    ticket = ticket.json()["ticket"]
    streams.append(web.stream(params={"ticket": ticket}))
    assert all(s.ok for s in streams)

    r = web.post("/v1/notifications/trigger", json={
        "type": "chat", "event": "message_received", "title": TITLE, "content": CONTENT,
        "user_ids": [str(u) for u, _, _ in users]},
        headers=dict(SERVICE, **{"X-Request-ID": f"{USERS[0][0]} {USERS[0][1]} eyJhbGciOiJIUzI1NiJ9.e30.x"}))
    assert r.status_code == 202, r.text
    bad = web.post("/v1/notifications/trigger", headers=SERVICE, json={
        "type": "chat", "event": "message_received", "title": TITLE, "user_ids": [USERS[1][0], USERS[1][1]]})
    assert bad.status_code in (400, 422)
    pushed = web.post("/v1/notifications/sse", headers=SERVICE, json={
        "type": "chat", "event": "message_received", "title": PUSHED, "content": PUSHED,
        "user_ids": [str(u) for u, _, _ in users]})
    assert pushed.status_code == 200, pushed.text
    for stream in streams:
        stream.wait_events(2, timeout=30)

    expected = {("email", "sent"): 3, ("email", "failed"): 1, ("sms", "sent"): 3, ("sms", "failed"): 1,
                ("pager", "sent"): 4, ("fax", "failed"): 4}
    wait_until(lambda: final_states(db) == expected, timeout=90, message=lambda: f"deliveries {final_states(db)}")
    for user_id, _, _ in users:   # each user reads their deliveries (the errors come back classified)
        nid = web.get("/v1/notifications", headers={"Authorization": f"Bearer {tokens[user_id]}"}).json()
        nid = nid["items"][0]["id"]
        seen = web.get(f"/v1/notifications/{nid}/deliveries", headers={"Authorization": f"Bearer {tokens[user_id]}"})
        assert seen.status_code == 200
        assert '"last_error": "' in seen.text or '"last_error":"' in seen.text
        for secret in [WEBHOOK_TOKEN, DEAD_TOKEN, providers["twilio"].account_sid] + [e for _, e, _ in users] \
                + [p[1:] for _, _, p in users]:
            assert secret not in seen.text
    assert providers["recipients"].deferred == {USERS[0][0]}   # the 450 happened (and was retried to success)

    for stream in streams:
        stream.close()
    processes.stop_all()                                  # every line flushed
    logs = {"web": web.output(), "worker": worker.output(), "redis": redis_text(clean["REDIS_URL"])}
    assert "POST /v1/notifications/trigger" in logs["web"]          # the access log was on
    assert "failed: provider_error 500" in logs["worker"]           # the retries were logged, as classes
    assert "recipient_deferred 450" in logs["worker"]

    planted = {"the notification's title": TITLE, "its content": CONTENT, "the pushed text": PUSHED,
               "the webhook's token": WEBHOOK_TOKEN, "the dead webhook's token": DEAD_TOKEN,
               "the API key": API_KEY, "Twilio's account SID": providers["twilio"].account_sid,
               "Twilio's auth token": providers["twilio"].auth_token, "the stream ticket": ticket}
    for user_id, email, phone in users:
        planted[f"address {email}"] = email
        planted[f"local part of {email}"] = email.split("@")[0] + "@"
        planted[f"number {phone}"] = phone[1:]
        planted[f"token of {user_id}"] = tokens[user_id]
    found = []
    for source, text in logs.items():
        for what, value in planted.items():
            if value in text:
                found.append((source, what, _around(text, text.index(value))))
        for what, pattern in GENERIC.items():
            for match in pattern.finditer(text):
                found.append((source, what, _around(text, match.start())))
    assert found == [], "\n".join(f"{source}: {what}: …{line}…" for source, what, line in found[:30])


def _around(text, at, width=120):
    return text[max(0, at - width):at + width].replace("\n", "⏎")
