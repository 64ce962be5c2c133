"""The browser inbox (/inbox + /static/notifications.js) in a real headless Chromium.

Everything runs the production way: the page is served by a real gunicorn
(gevent worker, INBOX_PAGE_ENABLED=true), notifications are triggered with an
API key and stored by a real RQ worker, and the page reaches the service only
through its client: a stream ticket, EventSource, REST calls, or polling.

The browser is Debian's chromium driven by Debian's chromedriver through
Selenium, with the driver's path given explicitly (Selenium Manager never
runs, nothing is downloaded). Without /usr/bin/chromium the module is skipped
on a developer's machine; in CI (CI set) it runs, and .ci/run installs the two
packages when they are missing.

UPDATE_SCREENSHOT=1 also writes the page's screenshot to docs/inbox.png.
"""
import functools
import os
import shutil
import struct
import time
import uuid
from types import SimpleNamespace
from urllib.parse import urlencode

import pytest
import requests

from testkit import api
from testkit.config_files import queue_config, queue_yaml
from testkit.identity import SERVICE, make_token
from testkit.processes import ProcessGroup, wait_until
from devtools.services import REPO_ROOT

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

if not os.path.exists(CHROMIUM) and not os.environ.get("CI"):
    pytest.skip("browser tests need Debian's chromium and chromium-driver "
                "(apt-get install chromium chromium-driver); CI installs them", allow_module_level=True)

from selenium import webdriver  # noqa: E402  (after the skip: only needed when a browser is there)
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402

pytestmark = pytest.mark.timeout(180)

REPO = REPO_ROOT
CUSTOMER = "550e8400-e29b-41d4-a716-446655440000"
PAGE_ENV = {"INBOX_PAGE_ENABLED": "true"}


# ------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def services(base_env, tmp_path_factory):
    """One RQ worker and one gunicorn serving the page, shared by the module's tests."""
    directory = tmp_path_factory.mktemp("browser-services")
    with ProcessGroup(str(directory)) as group:
        worker = group.start_worker(base_env, queue_config=queue_config(directory))
        web = group.start_web(dict(base_env, **PAGE_ENV), workers=1, keepalive=1)
        yield SimpleNamespace(web=web, worker=worker, env=dict(base_env))


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Chromium from Debian, through its chromedriver (no download, no Selenium Manager)."""
    for path in (CHROMIUM, CHROMEDRIVER):
        assert os.path.exists(path), f"{path} is missing: apt-get install -y chromium chromium-driver"
    directory = tmp_path_factory.mktemp("chromium")
    profile = directory / "profile"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--window-size=1000,760", f"--user-data-dir={profile}"):
        options.add_argument(arg)
    service = Service(executable_path=CHROMEDRIVER, log_output=str(directory / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_script_timeout(10)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def page(services, browser, clean):
    """The module's browser with one tab on about:blank and empty tables and Redis."""
    for process in (services.web, services.worker):
        assert process.alive, f"{process.name} died in an earlier test:\n{process.output()[-3000:]}"
    handles = browser.window_handles
    for handle in handles[1:]:
        browser.switch_to.window(handle)
        browser.close()
    browser.switch_to.window(handles[0])
    browser.get("about:blank")
    wait_until(lambda: services.web.open_streams() == 0, 10, message="streams of an earlier test to close")
    inbox = InboxPage(browser, services.web)
    yield inbox
    browser.get("about:blank")


# ------------------------------------------------------------------------------------ helpers


class InboxPage:
    """What a person sees on /inbox, read through the DOM."""

    def __init__(self, driver, web):
        self.driver, self.web = driver, web

    def open(self, token, web=None, wait_for=("live",), **params):
        web = web or self.web
        query = ("?" + urlencode(params)) if params else ""
        self.driver.get("about:blank")
        self.driver.get(f"{web.url}/inbox{query}#token={token}")
        if wait_for:
            self.wait_state(*wait_for)
        return self

    def js(self, script, *args):
        return self.driver.execute_script(script, *args)

    def state(self):
        return self.js("const c = document.getElementById('conn');"
                       " return c ? [c.dataset.state, c.dataset.transport] : [null, null];")

    def wait_state(self, *states, timeout=15):
        return wait_until(lambda: self.state()[0] in states, timeout,
                          message=lambda: f"page state in {states} (now {self.state()}, {self.console()})")

    def items(self):
        return self.js("""return Array.from(document.querySelectorAll('#list li')).map(li => ({
            id: li.dataset.id, source: li.dataset.source, read: li.dataset.read === 'true',
            direct: li.classList.contains('direct'),
            title: li.querySelector('.title').textContent,
            content: (li.querySelector('.content') || {}).textContent || ''}));""")

    def titles(self):
        return [item["title"] for item in self.items()]

    def item(self, title):
        found = [item for item in self.items() if item["title"] == title]
        assert len(found) == 1, f"{title!r} appears {len(found)} times: {self.titles()}"
        return found[0]

    def wait_titles(self, *titles, timeout=10):
        return wait_until(lambda: all(t in self.titles() for t in titles) and self.items(), timeout,
                          message=lambda: f"{titles} on the page (it shows {self.titles()}, {self.state()})")

    def badge(self):
        """The unread count the badge shows: 0 when it is hidden."""
        hidden, number = self.js("const b = document.getElementById('badge');"
                                 " return [b.hidden, document.getElementById('badge-number').textContent];")
        return 0 if hidden else int(number)

    def wait_badge(self, count, timeout=10):
        return wait_until(lambda: self.badge() == count or None, timeout,
                          message=lambda: f"badge {count} (shows {self.badge()}; items {self.items()})") and count

    def button(self, title, kind):
        return self.driver.find_element(By.CSS_SELECTOR, f'li[data-id="{self.item(title)["id"]}"] button.{kind}')

    def console(self):
        try:
            return [entry["message"] for entry in self.driver.get_log("browser")][-5:]
        except Exception:  # noqa: BLE001 - only for failure messages
            return []

    def assert_unique(self):
        ids = [item["id"] for item in self.items()]
        assert len(ids) == len(set(ids)), f"duplicates on the page: {self.titles()}"


# a notification the way the bank's services send them (testkit.api.trigger, asserting the 202)
trigger = functools.partial(api.trigger, type="chats", event="message_received", content="Hello from the browser test",
                            customer_id=CUSTOMER, rec_type="chats", rec_id="789e4567-e89b-12d3-a456-426614174000")


def stored_titles(web, token):
    response = web.get("/v1/notifications", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    return {item["title"]: item for item in response.json()["items"]}


def new_user():
    user_id = uuid.uuid4()
    return user_id, make_token(user_id, exp_in=900)


# ------------------------------------------------------------------------------------ serving


def test_page_is_served_only_when_enabled(client, app):
    """Off by default: /inbox is the ordinary 404 envelope; the client script is always there."""
    assert app.config["INBOX_PAGE_ENABLED"] is False
    response = client.get("/inbox")
    assert response.status_code == 404
    assert response.get_json()["code"] == "notifications_m.not_found"
    script = client.get("/static/notifications.js")
    assert script.status_code == 200 and b"class NotificationsClient" in script.data


@pytest.mark.slow
def test_enabled_page_loads_nothing_from_outside(services):
    response = requests.get(services.web.url + "/inbox", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/html")
    policy = response.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy and "script-src 'self' 'sha256-" in policy
    html = response.text
    assert "http://" not in html.replace("http:'", "") and "https://" not in html.replace("https:'", "")
    for asset in ("/static/notifications.js", "/static/inbox.css"):
        assert asset in html
        assert requests.get(services.web.url + asset, timeout=10).status_code == 200


# ------------------------------------------------------------------------------------ the stream


@pytest.mark.slow
def test_triggered_notification_appears_within_two_seconds(page, services):
    user_id, token = new_user()
    page.open(token)
    assert page.items() == [] and page.badge() == 0
    assert page.js("return document.getElementById('empty').hidden") is False
    wait_until(lambda: services.web.open_streams() == 1, 10, message="the page's stream")

    started = time.monotonic()
    trigger(services.web, [user_id], title="Payment received", content="EUR 120.00 from ACME <b>Ltd</b>",
            link_url="/accounts/1", link_text="View account")
    wait_until(lambda: "Payment received" in page.titles(), 2.0,
               message=lambda: f"the notification on the page within 2 s (shows {page.titles()})")
    elapsed = time.monotonic() - started

    shown = page.item("Payment received")
    assert shown["source"] == "stream" and shown["read"] is False and not shown["direct"]
    assert shown["content"] == "EUR 120.00 from ACME Ltd"  # markup stripped by the service, text shown as text
    assert page.wait_badge(1) == 1
    bell = page.driver.find_element(By.ID, "bell").get_attribute("aria-label")
    assert bell == "Notifications, 1 unread"
    link = page.driver.find_element(By.CSS_SELECTOR, "li .link")
    assert link.text == "View account" and link.get_attribute("href") == services.web.url + "/accounts/1"
    assert page.state() == ["live", "sse"]
    print(f"trigger -> on the page: {elapsed * 1000:.0f} ms")


@pytest.mark.slow
def test_direct_push_is_shown_but_not_counted(page, services):
    user_id, token = new_user()
    page.open(token)
    wait_until(lambda: services.web.open_streams() == 1, 10, message="the page's stream")
    body = {"type": "chats", "event": "message_received", "title": "Agent is typing",
            "user_ids": [str(user_id)]}
    response = services.web.post("/v1/notifications/sse", json=body, headers=SERVICE)
    assert response.status_code == 200, response.text
    page.wait_titles("Agent is typing")
    assert page.item("Agent is typing")["direct"] is True
    assert page.badge() == 0  # not stored: nothing to mark read
    page.button("Agent is typing", "dismiss").click()
    wait_until(lambda: page.items() == [], 5, message="the dismissed push to go")


@pytest.mark.slow
def test_badge_counts_up_and_down(page, services):
    user_id, token = new_user()
    page.open(token)
    wait_until(lambda: services.web.open_streams() == 1, 10, message="the page's stream")
    for title in ("First", "Second", "Third"):
        trigger(services.web, [user_id], title=title)
        page.wait_titles(title)
    assert page.wait_badge(3) == 3
    assert page.titles() == ["Third", "Second", "First"]  # newest first

    # Keyboard: focus the button and press Enter.
    toggle = page.button("Second", "toggle-read")
    assert toggle.text == "Mark as read"
    toggle.send_keys(Keys.ENTER)
    page.wait_badge(2)
    wait_until(lambda: page.item("Second")["read"], 5, message="Second shown as read")
    assert stored_titles(services.web, token)["Second"]["read"] is True
    assert page.button("Second", "toggle-read").text == "Mark as unread"

    page.button("Second", "toggle-read").send_keys(Keys.SPACE)
    page.wait_badge(3)
    assert stored_titles(services.web, token)["Second"]["read"] is False

    page.button("Third", "delete").click()
    wait_until(lambda: "Third" not in page.titles(), 5, message="Third removed")
    page.wait_badge(2)
    assert "Third" not in stored_titles(services.web, token)
    focused = page.js("return document.activeElement.closest('li') && document.activeElement.closest('li').dataset.id")
    assert focused == page.item("Second")["id"], "focus moves to the next item after a delete"

    page.driver.find_element(By.ID, "mark-all").click()
    page.wait_badge(0)
    wait_until(lambda: all(item["read"] for item in page.items()), 5, message="every item read")
    assert all(item["read"] for item in stored_titles(services.web, token).values())
    assert page.driver.find_element(By.ID, "bell").get_attribute("aria-label") == "Notifications, none unread"

    trigger(services.web, [user_id], title="Fourth")
    page.wait_titles("Fourth")
    page.wait_badge(1)
    assert page.js("return document.getElementById('announcer').getAttribute('aria-live')") == "polite"
    assert page.js("return document.getElementById('unread-status').textContent") == "1 unread notification"
    page.assert_unique()


@pytest.mark.slow
def test_read_in_one_tab_updates_the_other(page, services):
    user_id, token = new_user()
    trigger(services.web, [user_id], title="Shared one")
    trigger(services.web, [user_id], title="Shared two")
    wait_until(lambda: len(stored_titles(services.web, token)) == 2, 10, message="both stored")
    driver = page.driver

    page.open(token)
    page.wait_titles("Shared one", "Shared two")
    first_tab = driver.current_window_handle
    driver.switch_to.new_window("tab")
    second_tab = driver.current_window_handle
    page.open(token)
    page.wait_titles("Shared one", "Shared two")
    page.wait_badge(2)
    wait_until(lambda: services.web.open_streams() == 2, 10, message="two streams, one per tab")

    driver.switch_to.window(first_tab)
    page.button("Shared one", "toggle-read").click()
    page.wait_badge(1)

    driver.switch_to.window(second_tab)
    wait_until(lambda: page.item("Shared one")["read"], 5,
               message=lambda: f"the read state in the second tab ({page.items()})")
    page.wait_badge(1, timeout=5)

    page.button("Shared two", "delete").click()  # and back the other way
    page.wait_badge(0)
    driver.switch_to.window(first_tab)
    wait_until(lambda: "Shared two" not in page.titles(), 5, message="the delete in the first tab")
    page.wait_badge(0, timeout=5)

    trigger(services.web, [user_id], title="Both see it")
    page.wait_titles("Both see it")
    driver.switch_to.window(second_tab)
    page.wait_titles("Both see it")
    page.assert_unique()


@pytest.mark.slow
def test_resumes_after_the_web_server_restarts(page, services, processes):
    """The page's server goes away; a notification stored meanwhile arrives once it is back, from the
    stream (the client reconnected with its cursor), with nothing lost or doubled."""
    own = processes.start_web(dict(services.env, **PAGE_ENV), workers=1, keepalive=1)
    user_id, token = new_user()
    page.open(token, web=own)
    wait_until(lambda: own.open_streams() == 1, 10, message="the page's stream")
    trigger(services.web, [user_id], title="Before the restart")
    page.wait_titles("Before the restart")
    cursor_before = page.js("return window.inbox.client.cursor")
    assert cursor_before

    own.stop()
    page.wait_state("reconnecting")
    trigger(services.web, [user_id], title="While it was down")  # the other server accepts, the worker stores
    wait_until(lambda: "While it was down" in stored_titles(services.web, token), 10, message="stored")
    assert "While it was down" not in page.titles()

    own.start()  # the same port
    page.wait_titles("While it was down", timeout=30)
    missed = page.item("While it was down")
    assert missed["source"] == "stream", "replayed from the cursor, not found by a poll"
    assert int(page.js("return window.inbox.client.cursor")) > int(cursor_before)
    page.wait_state("live")
    assert page.state() == ["live", "sse"]
    page.wait_badge(2)

    trigger(services.web, [user_id], title="After the restart")
    page.wait_titles("After the restart")
    assert page.titles() == ["After the restart", "While it was down", "Before the restart"]
    page.assert_unique()
    page.wait_badge(3)


# ------------------------------------------------------------------------------------ polling


@pytest.mark.slow
def test_without_eventsource_the_page_polls(page, services):
    driver = page.driver
    injected = driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument",
                                      {"source": "delete window.EventSource;"})["identifier"]
    try:
        user_id, token = new_user()
        trigger(services.web, [user_id], title="Already there")
        wait_until(lambda: "Already there" in stored_titles(services.web, token), 10, message="stored")
        page.open(token, wait_for=("polling",), poll=500)
        assert page.js("return typeof window.EventSource") == "undefined"
        assert page.state() == ["polling", "polling"]
        page.wait_titles("Already there")
        page.wait_badge(1)

        trigger(services.web, [user_id], title="Found by polling")
        page.wait_titles("Found by polling", timeout=5)
        shown = page.item("Found by polling")
        assert shown["source"] == "poll"
        page.wait_badge(2)

        page.button("Found by polling", "toggle-read").click()
        page.wait_badge(1)
        time.sleep(1.2)  # two more polls: nothing is shown twice, the count holds
        page.assert_unique()
        assert page.badge() == 1 and len(page.items()) == 2
        assert services.web.open_streams() == 0, "no stream was opened"
    finally:
        driver.execute_cdp_cmd("Page.removeScriptToEvaluateOnNewDocument", {"identifier": injected})


@pytest.mark.slow
def test_no_sse_parameter_and_failing_stream_fall_back_to_polling(page, services, processes):
    """`?no-sse=1` polls at once; a stream that never opens (every attempt refused, here by a
    per-user limit of 0) falls back to polling after a few tries while REST still answers."""
    user_id, token = new_user()
    page.open(token, wait_for=("polling",), poll=500, **{"no-sse": "1"})
    assert page.js("return typeof window.EventSource") == "undefined"
    trigger(services.web, [user_id], title="No SSE here")
    page.wait_titles("No SSE here", timeout=5)

    refusing = processes.start_web(dict(services.env, **PAGE_ENV), workers=1, keepalive=1,
                                   SSE_MAX_STREAMS_PER_USER=0)
    user_id, token = new_user()
    page.open(token, web=refusing, wait_for=None, poll=500)
    page.wait_state("polling", timeout=20)
    assert page.js("return typeof window.EventSource") == "function"
    assert page.js("return window.inbox.client.streamFailures") >= 3
    trigger(services.web, [user_id], title="Stream refused, polled instead")
    page.wait_titles("Stream refused, polled instead", timeout=5)
    page.wait_badge(1)


# ------------------------------------------------------------------------------------ the token and limits


@pytest.mark.slow
def test_the_token_is_taken_from_the_fragment_only_and_erased_from_the_address(page, services):
    """`#token=` is used when the page loads, then erased from the address bar and the history;
    a `?token=` (sent to the server, kept in logs) is never used, and erased all the same."""
    user_id, token = new_user()
    page.open(token)
    assert "token" not in page.driver.current_url and token not in page.driver.current_url
    assert page.js("return location.hash") == ""
    assert page.js("return sessionStorage.getItem('inbox-token')") == token   # a reload keeps the session
    page.driver.back()                                   # the entry with the token was replaced
    assert token not in page.driver.current_url

    page.driver.get(f"{services.web.url}/inbox#")
    page.js("sessionStorage.clear()")
    page.driver.get("about:blank")
    page.driver.get(f"{services.web.url}/inbox?token={token}&poll=500")
    wait_until(lambda: page.js("return !document.getElementById('token-form').hidden"), 10,
               message="the token form (a query token is not used)")
    assert page.js("return window.inbox.token") is None
    assert "token=" not in page.driver.current_url and "poll=500" in page.driver.current_url
    wait_until(lambda: services.web.open_streams() == 0, 10, message="no stream (the earlier page's closed)")


@pytest.mark.slow
def test_a_token_link_followed_later_does_not_swap_the_session(page, services):
    alice, alice_token = new_user()
    mallory, mallory_token = new_user()
    trigger(services.web, [mallory], title="Mallory's bait")
    page.open(alice_token)
    wait_until(lambda: services.web.open_streams() == 1, 10, message="the page's stream")
    page.js("location.hash = '#token=' + arguments[0]", mallory_token)
    wait_until(lambda: page.js("return location.hash") == "", 5, message="the token erased from the address")
    trigger(services.web, [alice], title="For Alice")
    page.wait_titles("For Alice")
    assert page.js("return window.inbox.token") == alice_token
    assert "Mallory's bait" not in page.titles()
    assert page.state() == ["live", "sse"] and services.web.open_streams() == 1


@pytest.mark.slow
def test_the_client_honours_retry_after(page, services, processes, tmp_path):
    """A spent connect budget: the ticket request answers 429 with Retry-After (what the stream
    would answer, which EventSource cannot read), and the client asks nothing of the server
    again until that time has passed; then the stream opens."""
    queue = queue_yaml(tmp_path, rate_limits={"stream_connect": "2/10 seconds"})   # a burst of 2, one every 5 s
    limited = processes.start_web(dict(services.env, **PAGE_ENV, RATE_LIMITS_ENABLED="true", QUEUE_CONFIG=queue),
                                  workers=1, keepalive=1, SSE_MAX_STREAMS_PER_USER=1)
    user_id, token = new_user()
    page.open(token, web=limited)
    page.js("window.inbox.client.stop()")
    wait_until(lambda: limited.open_streams() == 0, 10, message="the page's stream to close")
    headers = {"Authorization": f"Bearer {token}"}
    for _ in range(5):                                   # spend what is left of the bucket
        stream = limited.stream(headers=headers)
        stream.close()
        if stream.status_code == 429:
            break
        wait_until(lambda: limited.open_streams() == 0, 10, message="the stream to close")
    assert stream.status_code == 429
    page.js("""window.ticketCalls = [];
               const original = window.fetch;
               window.fetch = async function (url, init) {
                 const response = await original.apply(this, arguments);
                 if (String(url).endsWith('/sse/ticket')) window.ticketCalls.push(
                   [performance.now(), response.status, response.headers.get('Retry-After')]);
                 return response;
               };
               window.inbox.client.start();""")
    page.wait_state("live", timeout=20)
    calls = page.js("return window.ticketCalls")
    (first_at, status, retry_after), *rest = calls
    assert status == 429 and int(retry_after) >= 2, calls
    assert rest and rest[-1][1] == 201, calls
    gap = (rest[0][0] - first_at) / 1000
    assert gap >= int(retry_after) - 0.05, f"asked again {gap:.2f}s after a Retry-After of {retry_after}s: {calls}"


# ------------------------------------------------------------------------------------ screenshot


@pytest.mark.slow
def test_screenshot(page, services, tmp_path):
    user_id, token = new_user()
    samples = [
        dict(title="New message from John", content="Hello! Are we still on for Friday's review?",
             link_url="/chat/room/456", link_text="View message"),
        dict(title="Task assigned: Q3 reconciliation", content="Anna assigned you a task due tomorrow.",
             type="task", event="task_assigned", link_url="/tasks/77", link_text="Open task"),
        dict(title="Payment received", content="EUR 1,250.00 from Northwind GmbH was credited to account …4471.",
             type="payment", event="payment_received"),
        dict(title="New sign-in from Chrome on Linux", content="If this was not you, secure your account now.",
             type="security", event="login_alert", link_url="/security", link_text="Review activity"),
    ]
    for sample in samples:  # one at a time: the page lists them in this order, newest first
        trigger(services.web, [user_id], **sample)
        wait_until(lambda: sample["title"] in stored_titles(services.web, token), 10, message="stored")
    page.open(token)
    page.wait_titles(*(s["title"] for s in samples))
    page.button("Payment received", "toggle-read").click()
    page.wait_badge(3)
    page.driver.execute_script("document.activeElement.blur()")
    ActionChains(page.driver).move_to_element(page.driver.find_element(By.TAG_NAME, "h1")).perform()  # no hover
    page.driver.set_window_size(1000, 1100)
    time.sleep(0.5)  # the read item's background transition (0.3 s) ends
    shot = tmp_path / "inbox.png"
    try:
        assert page.driver.save_screenshot(str(shot))
    finally:
        page.driver.set_window_size(1000, 760)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert width >= 800 and height >= 600
    if os.environ.get("UPDATE_SCREENSHOT"):
        target = REPO / "docs" / "inbox.png"
        target.parent.mkdir(exist_ok=True)
        shutil.copyfile(shot, target)
