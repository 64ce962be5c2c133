"""The email channel end to end: trigger -> RQ worker -> flask-mail -> a real SMTP server (aiosmtpd)."""
import socket
import ssl
import time
import uuid

import pytest

from testkit.api import deliveries, put_contact, trigger
from testkit.jobs import drain, fast_forward, run_jobs, scheduled
from testkit.providers import FakeSMTP, self_signed_cert

PUBLIC_URL = "https://notify.example.com"
SENDER = "Bank Notifications <notify@bank.example>"


@pytest.fixture
def build(channel_app):
    """build(smtp_port, channels=..., **settings) -> an app whose email goes to 127.0.0.1:smtp_port."""
    def make(port, channels=None, events=None, attempts=3, backoff=(60, 600), templates=None, **settings):
        mail = dict(PUBLIC_URL=PUBLIC_URL, MAIL_SERVER="127.0.0.1", MAIL_PORT=str(port),
                    MAIL_DEFAULT_SENDER=SENDER, MAIL_TIMEOUT="5")
        return channel_app(channels or {"email": {"enabled": True}}, events, attempts, backoff, templates,
                           **{**mail, **settings})
    return make


@pytest.fixture
def recipient(user):
    user_id, headers = user
    return user_id, headers, f"user-{user_id.hex[:8]}@example.org"


def delivery_id(db, channel="email"):
    with db.cursor() as cur:
        cur.execute("SELECT id FROM deliveries WHERE channel = %s", (channel,))
        return str(cur.fetchone()[0])


def parts(message):
    """(text part, html part) of a received message, with the wire's CRLF as LF."""
    return tuple(message.get_body(preferencelist=(kind,)).get_content().replace("\r\n", "\n")
                 for kind in ("plain", "html"))


# ---------------------------------------------------------------- the message


def test_email_is_multipart_escaped_and_carries_its_headers(build, smtp, recipient, db):
    user_id, headers, address = recipient
    app = build(smtp.port)
    client = app.test_client()
    put_contact(client, user_id, email=address)
    trigger(client, [user_id], title='<script>alert(1)</script>Rates < 5% & "fees"',
            content='a < b & "c" > d\nsecond line', link_url="/chat/room/456", link_text="View & reply")
    run_jobs(app)

    assert len(smtp.messages) == 1
    received = smtp.messages[0]
    message = received["message"]
    assert received["rcpt_tos"] == [address]
    assert received["mail_from"] == "notify@bank.example"
    assert message["To"] == address
    assert message["From"] == SENDER
    assert message["Subject"] == 'Rates < 5% & "fees"'
    assert message["Auto-Submitted"] == "auto-generated"

    # both parts, as alternatives of one another
    types = [part.get_content_type() for part in message.walk()]
    assert "multipart/alternative" in types and "text/plain" in types and "text/html" in types
    text, html = parts(message)

    # the text part keeps the characters as written
    assert 'Rates < 5% & "fees"' in text
    assert 'a < b & "c" > d\nsecond line' in text
    assert f"View & reply: {PUBLIC_URL}/chat/room/456" in text
    # the HTML part escapes every one of them; no markup from the trigger survives
    assert "<script" not in html.lower() and "alert(1)" not in html
    assert "Rates &lt; 5% &amp; &#34;fees&#34;" in html
    assert "a &lt; b &amp; &#34;c&#34; &gt; d" in html
    assert f'<a href="{PUBLIC_URL}/chat/room/456">View &amp; reply</a>' in html
    assert f'href="{PUBLIC_URL}/v1/notifications/preferences"' in html

    assert message["List-Unsubscribe"] == f"<{PUBLIC_URL}/v1/notifications/preferences>"
    assert len(message.get_all("Message-ID")) == 1
    assert message["Message-ID"] == f"<{delivery_id(db)}@bank.example>"

    email_delivery = deliveries(client, headers)["email"]
    assert email_delivery["status"] == "sent"
    assert email_delivery["provider_message_id"] == message["Message-ID"]
    assert email_delivery["attempts"] == 1
    assert [(a["outcome"], a["provider_message_id"]) for a in email_delivery["history"]] == [
        ("sent", message["Message-ID"])]
    assert email_delivery["sent_at"] is not None


def delivery_state(db, channel="email"):
    """(status, provider message id, attempt outcomes) of the channel's one delivery, read now."""
    with db.cursor() as cur:
        cur.execute("SELECT d.status, d.provider_message_id,"
                    " array_agg(a.outcome ORDER BY a.attempt) FILTER (WHERE a.id IS NOT NULL)"
                    " FROM deliveries d LEFT JOIN delivery_attempts a ON a.delivery_id = d.id"
                    " WHERE d.channel = %s GROUP BY d.id, d.notification_seq", (channel,))
        return cur.fetchone()


def test_sent_is_recorded_before_the_smtp_conversation_ends(build, smtp, recipient, db):
    """When the server is asked to QUIT, the delivery already says `sent` with its attempt: a
    worker that dies from then on (before the goodbye, before its own bookkeeping) leaves
    nothing that would send the message again."""
    user_id, headers, address = recipient
    app = build(smtp.port)
    client = app.test_client()
    put_contact(client, user_id, email=address)
    trigger(client, [user_id])
    seen = {}
    smtp.on_rcpt = lambda: seen.setdefault("rcpt", delivery_state(db))
    smtp.on_quit = lambda: seen.setdefault("quit", delivery_state(db))
    run_jobs(app)
    message_id = smtp.messages[0]["message"]["Message-ID"]
    assert seen["rcpt"] == ("sending", None, None)        # not before the message is on its way
    assert seen["quit"] == ("sent", message_id, ["sent"])
    email_delivery = deliveries(client, headers)["email"]
    assert (email_delivery["status"], email_delivery["attempts"]) == ("sent", 1)
    assert [(a["outcome"], a["provider_message_id"]) for a in email_delivery["history"]] == [("sent", message_id)]


def test_an_error_after_the_server_accepted_does_not_send_it_again(build, smtp, recipient):
    """What fails after the 250 (here a receiver of flask-mail's `email_dispatched` signal; in
    production, say, the job's timeout landing then) leaves the delivery `sent`: it used to be
    recorded as a retry, and the message went out again on every attempt."""
    import flask_mail
    user_id, headers, address = recipient
    app = build(smtp.port)
    client = app.test_client()
    put_contact(client, user_id, email=address)

    def broken_receiver(sender, message):
        raise RuntimeError("a bug after the send")
    flask_mail.email_dispatched.connect(broken_receiver)
    try:
        trigger(client, [user_id])
        drain(app)
    finally:
        flask_mail.email_dispatched.disconnect(broken_receiver)
    assert len(smtp.messages) == 1
    email_delivery = deliveries(client, headers)["email"]
    assert (email_delivery["status"], email_delivery["attempts"]) == ("sent", 1)
    assert [a["outcome"] for a in email_delivery["history"]] == ["sent"]


def test_each_send_opens_and_closes_its_own_connection(build, smtp, db):
    app = build(smtp.port)
    client = app.test_client()
    users = [uuid.uuid4() for _ in range(3)]
    for u in users:
        put_contact(client, u, email=f"{u.hex[:8]}@example.org")
    trigger(client, users)
    run_jobs(app)
    assert sorted(m["rcpt_tos"][0] for m in smtp.messages) == sorted(f"{u.hex[:8]}@example.org" for u in users)
    assert smtp.quits == 3          # every connection ended with QUIT, none kept open
    with db.cursor() as cur:
        cur.execute("SELECT count(DISTINCT provider_message_id) FROM deliveries WHERE status = 'sent'"
                    " AND channel = 'email'")
        assert cur.fetchone()[0] == 3


def test_subject_cannot_inject_headers(build, smtp, recipient):
    """A title is one line (a line break in it is refused at the trigger), but a template may put
    the multi-line content in the subject: its line breaks become blanks."""
    user_id, _, address = recipient
    app = build(smtp.port, templates={"default": {"email_subject": "{title}: {content}"}})
    client = app.test_client()
    put_contact(client, user_id, email=address)
    trigger(client, [user_id], title="Hi", content="Hello\r\nBcc: victim@example.org\r\n\r\nbody")
    run_jobs(app)
    message = smtp.messages[0]["message"]
    assert smtp.messages[0]["rcpt_tos"] == [address]
    assert message["Bcc"] is None
    assert message["Subject"] == "Hi: Hello Bcc: victim@example.org body"


def test_a_row_stored_before_todays_cleaning_is_cleaned_when_rendered(build, recipient, db):
    """A notification stored by the old code (5 decoding passes, no format-character rule) can
    hold a live tag and a bidi override: written here straight into PostgreSQL between two
    attempts, it leaves neither in the subject, the text or the HTML of the email."""
    user_id, headers, address = recipient
    server = FakeSMTP()                    # nothing listens yet: the first attempt is a retry
    app = build(server.port)
    client = app.test_client()
    put_contact(client, user_id, email=address)
    trigger(client, [user_id], title="Hello", content="World", link_url="/x", link_text="Open")
    try:
        run_jobs(app)
        assert deliveries(client, headers)["email"]["status"] == "pending"
        with db.cursor() as cur:
            cur.execute("UPDATE notifications SET title = %s, content = %s, link_text = %s WHERE user_id = %s",
                        ("<script>alert(1)</script>Pay \u202eevil\u202c now", "&lt;img src=x onerror=alert(1)&gt;Due",
                         "Op\u200ben<b>!</b>", str(user_id)))
        server.start()
        fast_forward(app)
        run_jobs(app)
        message = server.messages[0]["message"]
        text, html_part = parts(message)
        assert message["Subject"] == "Pay evil now"
        assert "Pay evil now" in text and "Due" in text and "Open!: " in text
        for part in (message["Subject"], text, html_part):
            assert "alert" not in part and "\u202e" not in part and "\u200b" not in part
        assert "<script" not in html_part and "<img" not in html_part and "<b>" not in html_part
    finally:
        server.stop()


# Python's email generator breaks a header line at each of these; a quoted local part lets them in.
SMUGGLING = ['"a\x0bReply-To: x@evil.example"@example.com', '"a\x0cBcc: x@evil.example"@example.com',
             '"a\x1cBcc: x@evil.example"@example.com', '"a\x1dBcc: x@evil.example"@example.com',
             '"a\x1eBcc: x@evil.example"@example.com', '"a\x85Bcc: x@evil.example"@example.com',
             '"a\u2028Bcc: x@evil.example"@example.com', '"a\r\nBcc: x@evil.example"@example.com',
             '"quoted but clean"@example.com']


@pytest.mark.parametrize("address", SMUGGLING)
def test_a_stored_address_that_could_smuggle_headers_fails_and_sends_nothing(build, smtp, user, db, address):
    """An address the contact API refuses today, stored before (written here straight into
    PostgreSQL): the delivery fails at once, with a reason that does not repeat the address, and
    no connection reaches the SMTP server."""
    user_id, headers = user
    app = build(smtp.port)
    client = app.test_client()
    with db.cursor() as cur:
        cur.execute("INSERT INTO contacts (user_id, email) VALUES (%s, %s)", (str(user_id), address))
    trigger(client, [user_id])
    run_jobs(app)
    delivery = deliveries(client, headers)["email"]
    assert (delivery["status"], delivery["attempts"]) == ("failed", 1)
    assert delivery["last_error"].startswith("invalid_recipient: message refused before sending: the To address "), delivery
    assert "evil" not in delivery["last_error"] and "example.com" not in delivery["last_error"]
    assert [a["outcome"] for a in delivery["history"]] == ["failed"]
    assert smtp.messages == [] and smtp.quits == 0
    assert scheduled(app) == {}


def test_locked_event_has_no_unsubscribe_header(build, smtp, recipient):
    user_id, _, address = recipient
    app = build(smtp.port)
    client = app.test_client()
    put_contact(client, user_id, email=address)
    trigger(client, [user_id], type="security", event="login_alert", title="New sign-in")
    run_jobs(app)
    assert smtp.messages[0]["message"]["List-Unsubscribe"] is None


def test_unsubscribe_targets_are_configurable(build, smtp, recipient):
    user_id, _, address = recipient
    app = build(smtp.port, channels={"email": {"unsubscribe_mailto": "unsubscribe@bank.example?subject={user_id}",
                                               "unsubscribe_url": "https://bank.example/settings/notifications"}})
    client = app.test_client()
    put_contact(client, user_id, email=address)
    trigger(client, [user_id])
    run_jobs(app)
    assert smtp.messages[0]["message"]["List-Unsubscribe"] == (
        f"<mailto:unsubscribe@bank.example?subject={user_id}>, <https://bank.example/settings/notifications>")


# ---------------------------------------------------------------- failures and retries


def test_smtp_down_is_retried_with_backoff_then_sent_once(build, recipient):
    user_id, headers, address = recipient
    server = FakeSMTP()                    # its port is chosen, nothing listens yet
    app = build(server.port, backoff=[60, 600])
    client = app.test_client()
    put_contact(client, user_id, email=address)
    trigger(client, [user_id])
    try:
        run_jobs(app)
        first = deliveries(client, headers)["email"]
        assert first["status"] == "pending"
        assert first["attempts"] == 1
        assert [a["outcome"] for a in first["history"]] == ["retry"]
        assert "Connection" in first["history"][0]["error"]     # ConnectionRefusedError
        due = list(scheduled(app).values())
        assert len(due) == 1
        wait = (due[0] - _now()).total_seconds()
        assert 50 < wait <= 60                                   # queue.yaml's first back-off

        server.start()
        assert fast_forward(app) == 1
        run_jobs(app)
        done = deliveries(client, headers)["email"]
        assert done["status"] == "sent"
        assert done["attempts"] == 2
        assert [a["outcome"] for a in done["history"]] == ["retry", "sent"]
        drain(app)                                               # nothing left that could send it again
        assert len(server.messages) == 1
        assert server.messages[0]["message"]["Message-ID"] == done["provider_message_id"]
    finally:
        server.stop()


def test_smtp_timeout_is_applied_and_retried(build, recipient):
    user_id, headers, address = recipient
    silent = socket.socket()               # accepts connections (backlog) and never says a word
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        app = build(silent.getsockname()[1], MAIL_TIMEOUT="0.5")
        client = app.test_client()
        put_contact(client, user_id, email=address)
        trigger(client, [user_id])
        started = time.monotonic()
        run_jobs(app)
        assert time.monotonic() - started < 5
        delivery = deliveries(client, headers)["email"]
        assert delivery["status"] == "pending"
        assert "timed out" in delivery["history"][0]["error"].lower()
    finally:
        silent.close()


def _refuse(smtp, stage, answer):
    """Make the server answer RCPT (the recipient) or DATA (the whole message, after its final dot)."""
    setattr(smtp, f"refuse_{stage}", answer)


def _attempt_once(build, port, recipient, run=run_jobs, **build_args):
    """One email to `recipient` through an app sending to 127.0.0.1:port, its jobs run by `run`:
    (the app, a function reading the user's email delivery)."""
    user_id, headers, address = recipient
    app = build(port, **build_args)
    client = app.test_client()
    put_contact(client, user_id, email=address)
    trigger(client, [user_id])
    run(app)
    return app, lambda: deliveries(client, headers)["email"]


@pytest.mark.parametrize("stage, answer", [("rcpt", "550 5.1.1 mailbox unavailable"),
                                           ("data", "554 5.7.1 message content rejected")])
def test_refusal_fails_at_once_with_the_servers_reason(build, smtp, recipient, stage, answer):
    """After DATA the sent record has already left with the final dot (app/deliveries/receipt.py,
    `Receipt.submit`): the refusal must take it back."""
    _refuse(smtp, stage, answer)
    _, delivery = _attempt_once(build, smtp.port, recipient, drain)
    delivery = delivery()
    assert (delivery["status"], delivery["attempts"]) == ("failed", 1)
    assert answer[:3] in delivery["last_error"] and answer[10:] in delivery["last_error"]
    assert [a["outcome"] for a in delivery["history"]] == ["failed"]
    assert delivery.get("sent_at") is None and delivery["provider_message_id"] is None
    assert smtp.messages == []


@pytest.mark.parametrize("stage, answer", [("rcpt", "450 4.2.1 try again later"),
                                           ("data", "451 4.3.0 try again later")])
def test_deferral_is_retried_and_sent_once(build, smtp, recipient, stage, answer):
    _refuse(smtp, stage, answer)
    app, delivery = _attempt_once(build, smtp.port, recipient)
    assert delivery()["status"] == "pending"
    assert [a["outcome"] for a in delivery()["history"]] == ["retry"]
    assert answer[:3] in delivery()["history"][0]["error"]
    _refuse(smtp, stage, None)
    drain(app)
    assert (delivery()["status"], delivery()["attempts"]) == ("sent", 2)
    assert [a["outcome"] for a in delivery()["history"]] == ["retry", "sent"]
    assert len(smtp.messages) == 1


def test_user_without_email_is_skipped_and_not_retried(build, smtp, user):
    user_id, headers = user
    app = build(smtp.port)
    client = app.test_client()
    put_contact(client, user_id, phone="+14155550100")
    trigger(client, [user_id])
    run_jobs(app)
    delivery = deliveries(client, headers)["email"]
    assert delivery["status"] == "skipped"
    assert delivery["reason"] == "no email on file for this user"
    assert scheduled(app) == {}
    assert smtp.messages == []


# ---------------------------------------------------------------- TLS


@pytest.fixture
def certificate(tmp_path):
    cert, key = self_signed_cert(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return cert, context


@pytest.fixture
def tls_smtp(certificate):
    """tls_smtp("tls_context" | "ssl_context") -> an SMTP server speaking STARTTLS (it refuses mail
    before it) or implicit TLS with the certificate; stopped after the test."""
    started = []

    def start(option):
        started.append(FakeSMTP(**{option: certificate[1]}).start())
        return started[-1]
    yield start
    for server in started:
        server.stop()


def test_starttls_with_a_verified_certificate(build, recipient, certificate, tls_smtp):
    server = tls_smtp("tls_context")
    _, delivery = _attempt_once(build, server.port, recipient, channels={"email": {"ca_file": certificate[0]}},
                                MAIL_USE_TLS="true")
    assert delivery()["status"] == "sent"
    assert len(server.messages) == 1 and server.messages[0]["tls"]


def test_starttls_refuses_an_untrusted_certificate(build, recipient, tls_smtp):
    server = tls_smtp("tls_context")
    # no ca_file: the self-signed cert is unknown
    delivery = _attempt_once(build, server.port, recipient, MAIL_USE_TLS="true")[1]()
    assert delivery["status"] == "pending"
    assert "CERTIFICATE_VERIFY_FAILED" in delivery["history"][0]["error"]
    assert server.messages == []


def test_implicit_tls_with_mail_use_ssl(build, recipient, certificate, tls_smtp):
    server = tls_smtp("ssl_context")
    _, delivery = _attempt_once(build, server.port, recipient, channels={"email": {"ca_file": certificate[0]}},
                                MAIL_USE_SSL="true")
    assert delivery()["status"] == "sent"
    assert len(server.messages) == 1


def test_tls_and_ssl_together_stop_start_up(build, smtp):
    from app.errors import ConfigError
    with pytest.raises(ConfigError) as caught:
        build(smtp.port, MAIL_USE_TLS="true", MAIL_USE_SSL="true")
    assert "MAIL_USE_SSL" in str(caught.value)


def test_a_sender_that_breaks_a_header_line_stops_start_up(build, smtp):
    from app.errors import ConfigError
    with pytest.raises(ConfigError) as caught:
        build(smtp.port, MAIL_DEFAULT_SENDER="Bank\x0bBcc: x@evil.example <notify@bank.example>")
    assert "MAIL_DEFAULT_SENDER" in str(caught.value) and "U+000B" in str(caught.value)


def _now():
    import datetime
    return datetime.datetime.now(datetime.timezone.utc)
