"""Browser notifications in a real headless Chromium (the harness of test_inbox_page.py): the
service worker `/static/notifications-sw.js` registers and shows a Web Push message delivered
through the DevTools protocol (`ServiceWorker.deliverPushMessage`, what Chromium's own DevTools
"Push" button does), and a hidden tab shows each new notification as a system notification once,
never a second time when the push for the same id arrives."""
import json
import time

import pytest
import requests
import websocket

from testkit.processes import wait_until
from tests.notifications.test_inbox_page import (InboxPage, browser, new_user, page, services,  # noqa: F401
                                                 trigger)

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]
WORKER = "/static/notifications-sw.js"


class DevTools:
    """A second DevTools client of one tab (Chromium takes several), for the events Selenium's
    execute_cdp_cmd cannot return."""

    def __init__(self, driver, url_prefix):
        address = driver.capabilities["goog:chromeOptions"]["debuggerAddress"]
        targets = requests.get(f"http://{address}/json", timeout=5).json()
        target = next(t for t in targets if t["type"] == "page" and t["url"].startswith(url_prefix))
        self.ws = websocket.create_connection(target["webSocketDebuggerUrl"], timeout=10, suppress_origin=True)
        self.next_id, self.events = 0, []

    def send(self, method, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self.next_id:
                assert "error" not in message, message
                return message.get("result")
            self.events.append(message)

    def registration(self, scope):
        """The id of the live service worker registration of `scope` (from workerRegistrationUpdated)."""
        def found():
            for event in self.events:
                if event.get("method") == "ServiceWorker.workerRegistrationUpdated":
                    for reg in event["params"]["registrations"]:
                        if reg["scopeURL"] == scope and not reg["isDeleted"]:
                            return reg["registrationId"]
            self.send("Runtime.evaluate", expression="1")     # read the events that came meanwhile
            return None
        return wait_until(found, 10, message="the service worker's registration")

    def close(self):
        self.ws.close()


def shown(page, tag=None):
    """The system notifications this origin shows now: [(title, body, tag)]."""
    return page.driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        f"navigator.serviceWorker.getRegistration('{WORKER}')"
        ".then((r) => r ? r.getNotifications(arguments[0] ? {tag: arguments[0]} : {}) : [])"
        ".then((list) => done(list.map((n) => [n.title, n.body, n.tag])), (e) => done(String(e)));", tag)


def forget_shown(page, notification_id):
    """Take an id out of the worker's record of what it showed (the Cache Storage entry that
    notifications-sw.js and notifications.js share)."""
    page.driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "caches.open('notifications-shown').then((c) => c.delete('/__notifications_shown__/' +"
        " encodeURIComponent(arguments[0]))).then(() => done(true), () => done(false));", notification_id)


def deliver_until_shown(page, devtools, origin, registration, message):
    """Deliver a push until the worker shows it: a worker activated a moment ago may miss the first
    (Chromium drops a push it dispatches while the new worker is still settling). Headless Chromium
    after other browser tests of the run sometimes also loses a notification the worker did show
    (`showNotification` resolved, the id recorded, `getNotifications()` empty): the record is then
    cleared before the next push, so the retry tests the worker again, not its duplicate guard."""
    def delivered():
        devtools.send("ServiceWorker.deliverPushMessage", origin=origin, registrationId=registration,
                      data=json.dumps(message))
        deadline = time.monotonic() + 1
        while time.monotonic() < deadline:
            if shown(page, message["id"]):
                return True
            time.sleep(0.05)
        forget_shown(page, message["id"])
        return False
    return wait_until(delivered, 30, interval=0,
                      message=lambda: f"the push {message['id']} shown (shows {shown(page)})")


def test_the_service_worker_shows_pushes_and_a_hidden_tab_never_repeats_one(page, services):
    user_id, token = new_user()
    page.open(token)
    origin = services.web.url
    page.driver.execute_cdp_cmd("Browser.grantPermissions", {"origin": origin, "permissions": ["notifications"]})
    devtools = DevTools(page.driver, origin + "/inbox")
    try:
        devtools.send("ServiceWorker.enable")
        registered = page.driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "new NotificationsClient({getToken: () => ''}).registerServiceWorker()"
            ".then((r) => done(r.scope), (e) => done(String(e)));")
        assert registered == origin + "/static/", registered
        registration = devtools.registration(origin + "/static/")
        wait_until(lambda: page.driver.execute_async_script(   # a push to a worker still installing is lost
            "const done = arguments[arguments.length - 1];"
            f"navigator.serviceWorker.getRegistration('{WORKER}')"
            ".then((r) => done(Boolean(r && r.active && r.active.state === 'activated')), () => done(false));"),
            30, message="the service worker to be activated")

        # a push with no tab involved: shown by the service worker with its title and body
        push = {"id": "11111111-2222-3333-4444-555555555555", "title": "Card payment declined",
                "content": "EUR 42.00 at ACME", "link_url": "/payments/7"}
        deliver_until_shown(page, devtools, origin, registration, push)
        assert shown(page, push["id"]) == [["Card payment declined", "EUR 42.00 at ACME", push["id"]]]

        # the inbox tab hidden (headless Chromium keeps every tab `visible`, so the page is told it is
        # hidden the way the browser would: visibilityState and its event): a new notification
        # arrives on its stream and shows as a system notification
        page.js("Object.defineProperty(document, 'visibilityState', {configurable: true, get: () => 'hidden'});"
                "document.dispatchEvent(new Event('visibilitychange'));")
        trigger(services.web, [user_id], title="New login from Firefox", content="Berlin, 09:12")
        wait_until(lambda: [n for n in shown(page) if n[0] == "New login from Firefox"] or None, 10,
                   message=lambda: f"the hidden tab's notification ({shown(page)}, {page.console()})")
        stored = requests.get(origin + "/v1/notifications", headers={"Authorization": f"Bearer {token}"},
                              timeout=10).json()["items"][0]
        assert shown(page, stored["id"]) == [["New login from Firefox", "Berlin, 09:12", stored["id"]]]

        # its push arrives too (even after the user dismissed the first): never a second one
        page.driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            f"navigator.serviceWorker.getRegistration('{WORKER}').then((r) => r.getNotifications())"
            ".then((list) => { list.forEach((n) => n.close()); done(true); });")
        devtools.send("ServiceWorker.deliverPushMessage", origin=origin, registrationId=registration,
                      data=json.dumps(stored))
        deliver_until_shown(page, devtools, origin, registration, {"id": "sentinel", "title": "Later one"})
        assert shown(page, stored["id"]) == []
    finally:
        devtools.close()


def test_the_inbox_page_offers_notifications_on_this_device(page):
    _, token = new_user()
    page.open(token)
    assert page.js("const b = document.getElementById('push'); return [b.hidden, b.textContent];") == [
        False, "Enable notifications on this device"]
