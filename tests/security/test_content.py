"""What reaches a client holds no markup and no invisible formatting, whatever the input's spelling.

Against the real processes: gunicorn (gevent) and the RQ worker on the run's PostgreSQL and
Redis. A trigger goes the production way (202 -> worker stores -> Redis -> the stream) and is
read back from the inbox and from the raw bytes of the stream; a direct push goes straight to
the stream. docs/security/content.md says which rule each test proves.
"""
import html
import uuid

import pytest

from testkit.api import trigger_body
from testkit.identity import SERVICE, bearer
from testkit.processes import ready, wait_until, web_and_worker

pytestmark = pytest.mark.timeout(120)


def encode(text, times):
    return text if times == 0 else encode(html.escape(text, quote=False), times - 1)


SCRIPT_5 = encode("<script>alert(1)</script>", 5)            # the review's spelling
IMG_5 = encode('<img src=x onerror="alert(1)">', 5)
MARKUP_WORDS = ("<", "script", "alert", "onerror", "img")


@pytest.fixture(scope="module")
def shared(base_env, tmp_path_factory):
    with web_and_worker(base_env, tmp_path_factory.mktemp("content-services")) as services:
        yield services


@pytest.fixture
def web(shared, clean):
    return ready(shared, idle=False)


@pytest.fixture
def stream_of(web):
    opened = []

    def open_stream(user_id):
        stream = web.stream(headers=bearer(user_id))
        opened.append(stream)
        stream.wait_for(lambda s: s.first_chunk_at is not None, 5, "the first bytes")
        return stream

    yield open_stream
    for stream in opened:
        stream.close()


def assert_clean(text):
    for word in MARKUP_WORDS:
        assert word not in text.lower(), text


@pytest.mark.slow
def test_five_times_encoded_script_reaches_neither_inbox_nor_stream(web, stream_of):
    user_id = uuid.uuid4()
    stream = stream_of(user_id)
    title = "Payment due " + SCRIPT_5
    assert SCRIPT_5.startswith("&amp;amp;amp;amp;lt;script&amp;amp;amp;amp;gt;alert(1)")
    sent = trigger_body([user_id], title=title, content=IMG_5 + "Pay by Friday",
                        link_text=encode("<svg onload=alert(1)>", 5) + "Open", link_url="/payments/1")
    response = web.post("/v1/notifications/trigger", headers=SERVICE, json=sent)
    assert response.status_code == 202, response.text

    (event,) = stream.wait_events(1, timeout=20)
    streamed = bytes(stream.raw).decode()
    assert_clean(streamed)
    data = event.json()
    assert (data["title"], data["content"], data["link_text"]) == ("Payment due ", "Pay by Friday", "Open")

    listed = web.get("/v1/notifications", headers=bearer(user_id))
    assert listed.status_code == 200
    assert_clean(listed.text)
    (item,) = listed.json()["items"]
    assert item == data
    one = web.get(f"/v1/notifications/{data['id']}", headers=bearer(user_id))
    assert_clean(one.text)
    assert one.json() == data


@pytest.mark.slow
def test_five_times_encoded_script_is_not_pushed_either(web, stream_of):
    user_id = uuid.uuid4()
    stream = stream_of(user_id)
    pushed = web.post("/v1/notifications/sse", headers=SERVICE,
                      json=trigger_body([user_id], title="Live " + SCRIPT_5, content=IMG_5 + "now",
                                        link_text="Go" + IMG_5))
    assert pushed.status_code == 200, pushed.text
    (event,) = stream.wait_events(1)
    assert_clean(bytes(stream.raw).decode())
    data = event.json()
    assert (data["title"], data["content"], data["link_text"]) == ("Live ", "now", "Go")


@pytest.mark.slow
def test_text_that_never_settles_is_refused_with_422(web):
    user_id = uuid.uuid4()
    deep = "Hi " + encode("<script>alert(1)</script>", 40)       # ~4,000 characters: fits in content
    for path in ("/v1/notifications/trigger", "/v1/notifications/sse"):
        response = web.post(path, headers=SERVICE, json=trigger_body([user_id], title="Hi", content=deep))
        assert response.status_code == 422, response.text
        answer = response.json()
        assert answer["code"] == "notifications_m.invalid_request"
        assert "rounds of decoding" in answer["errors"]["content"][0]
    assert web.get("/v1/notifications", headers=bearer(user_id)).json()["total"] == 0


@pytest.mark.slow
def test_format_characters_are_removed_from_what_clients_see(web, stream_of):
    """Bidi overrides and zero-width characters: stripped with the markup, on both paths."""
    user_id = uuid.uuid4()
    stream = stream_of(user_id)
    hidden = {"title": "Trans\u200bfer to \u202eevil\u202c acc\u2066ount\u2069",
              "content": "\ufeffReset your pass\u200dword\u00ad", "link_text": "Op\u2060en"}
    seen = {"title": "Transfer to evil account", "content": "Reset your password", "link_text": "Open"}
    assert web.post("/v1/notifications/trigger", headers=SERVICE,
                    json=trigger_body([user_id], link_url="/x", **hidden)).status_code == 202
    assert web.post("/v1/notifications/sse", headers=SERVICE,
                    json=trigger_body([user_id], link_url="/x", **hidden)).status_code == 200
    events = stream.wait_events(2, timeout=20)
    for event in events:
        assert {k: event.json()[k] for k in seen} == seen
    (item,) = web.get("/v1/notifications", headers=bearer(user_id)).json()["items"]
    assert {k: item[k] for k in seen} == seen


@pytest.mark.slow
@pytest.mark.parametrize("field, value, found", [
    ("title", "Payment\x1bdue", "U+001B"),
    ("title", "Payment\ndue", "U+000A"),
    ("title", "Payment\tdue", "U+0009"),
    ("link_text", "Open\x85", "U+0085"),
    ("content", "ring\x07ring", "U+0007"),
    ("content", "csi\x9b31m", "U+009B"),
    ("title", "tab &#9; here", "U+0009"),              # a reference to a tab is a tab
])
def test_control_characters_are_refused_with_a_precise_422(web, field, value, found):
    user_id = uuid.uuid4()
    fields = dict({"title": "Hello"}, **{field: value})
    for path in ("/v1/notifications/trigger", "/v1/notifications/sse"):
        response = web.post(path, headers=SERVICE, json=trigger_body([user_id], **fields))
        assert response.status_code == 422, response.text
        assert found in response.json()["errors"][field][0]
    assert web.get("/v1/notifications", headers=bearer(user_id)).json()["total"] == 0


@pytest.mark.slow
def test_content_keeps_its_line_breaks_and_tabs(web):
    user_id = uuid.uuid4()
    response = web.post("/v1/notifications/trigger", headers=SERVICE,
                        json=trigger_body([user_id], title="Statement", content="line one\r\nline two\n\tindented"))
    assert response.status_code == 202, response.text
    items = wait_until(lambda: web.get("/v1/notifications", headers=bearer(user_id)).json()["items"], 20)
    assert items[0]["content"] == "line one\nline two\n\tindented"


@pytest.mark.slow
@pytest.mark.parametrize("link", ["/\\evil.example", "\\\\evil.example", "/\\\\evil.example", "\\/evil.example",
                                  "/\t/evil.example", " //evil.example", "//evil.example"])
def test_links_browsers_read_as_another_host_are_refused(web, link):
    response = web.post("/v1/notifications/trigger", headers=SERVICE,
                        json=trigger_body([uuid.uuid4()], title="Hi", link_url=link))
    assert response.status_code == 422, response.text
    assert list(response.json()["errors"]) == ["link_url"]


# ---------------------------------------------------------------- contacts: no header smuggling


def contact_url(user_id):
    return f"/v1/notifications/users/{user_id}/contact"


@pytest.mark.parametrize("email", [
    '"a\x0bReply-To: x@evil.example"@example.com', '"a\x0cBcc: x@evil.example"@example.com',
    '"a\x1cBcc: x@evil.example"@example.com', '"a\x1dBcc: x@evil.example"@example.com',
    '"a\x1eBcc: x@evil.example"@example.com', '"a\x85b"@example.com', '"a\u2028b"@example.com',
    '"quoted"@example.com', '"a b"@example.com', "jane@example.com\x0b", "\x0cjane@example.com",
    "jane@example.com\n", "jane@example.com\t", "ja\u202ene@example.com",
])
def test_a_contact_email_that_could_smuggle_headers_is_refused(client, db, email):
    user_id = uuid.uuid4()
    response = client.put(contact_url(user_id), headers=SERVICE, json={"email": email})
    assert response.status_code == 422, response.get_json()
    answer = response.get_json()
    assert answer["code"] == "notifications_m.invalid_request" and answer["status"] == 422
    assert list(answer["errors"]) == ["email"]
    with db.cursor() as cur:
        cur.execute("SELECT count(*) FROM contacts")
        assert cur.fetchone()[0] == 0


@pytest.mark.parametrize("phone", ["+14155550100\x0b", "+14155550100\n", "+1415555\x1c0100", "\x0c+14155550100",
                                   "+14155550100\u200b"])
def test_a_phone_with_a_control_character_is_refused(client, phone):
    response = client.put(contact_url(uuid.uuid4()), headers=SERVICE, json={"phone": phone})
    assert response.status_code == 422, response.get_json()
    assert list(response.get_json()["errors"]) == ["phone"]


def test_ordinary_addresses_are_still_accepted(client):
    for email in ["jane.doe+alerts@example.com", " Jane@Example.COM ", "o'brien@example.ie", "x?y=z@example.com"]:
        response = client.put(contact_url(uuid.uuid4()), headers=SERVICE, json={"email": email, "phone": "+4420"
                                                                                 "79460000"})
        assert response.status_code == 200, (email, response.get_json())
