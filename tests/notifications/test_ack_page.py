"""The inbox page's banner of notices to acknowledge, and expiring notifications leaving the page
(issue 21), in the real headless Chromium of test_inbox_page.py (its fixtures, a browser and
services of this module's own).

A notice that requires acknowledgement shows in a banner above the inbox that stays until it is
acknowledged: reading it is not enough; acknowledging it in another tab (or device) removes it
here too, through the stream's `ack` event and the client's `ack` event.
"""
import pytest

from testkit import api
from testkit.processes import wait_until
from tests.notifications.test_inbox_page import browser, new_user, page, services  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]
TERMS = {"type": "security", "event": "terms_updated", "title": "Our terms changed", "content": "Please read them."}


def banner(page):
    return page.js("""const b = document.getElementById('ack-banner');
        return {hidden: b.hidden, titles: Array.from(b.querySelectorAll('li .ack-item-title')).map(t => t.textContent)};""")


def test_a_notice_stays_in_the_banner_until_acknowledged_in_any_tab(page, services):  # noqa: F811
    user_id, token = new_user()
    api.trigger(services.web, [user_id], **TERMS)
    page.open(token)
    wait_until(lambda: banner(page)["titles"] == ["Our terms changed"], 10, message=lambda: f"the banner ({banner(page)})")
    driver = page.driver
    first_tab = driver.current_window_handle

    # reading everything does not acknowledge it
    assert page.js("document.getElementById('mark-all').click(); return true")
    page.wait_badge(0)
    assert banner(page) == {"hidden": False, "titles": ["Our terms changed"]}

    # a second notice arrives live and joins the banner
    api.trigger(services.web, [user_id], **dict(TERMS, title="New mandate"))
    wait_until(lambda: banner(page)["titles"] == ["Our terms changed", "New mandate"], 10,
               message=lambda: f"the live notice in the banner ({banner(page)})")

    # acknowledged in another tab: gone from both
    driver.switch_to.new_window("tab")
    page.open(token)
    wait_until(lambda: len(banner(page)["titles"]) == 2, 10, message="the banner in the second tab")
    page.js("""const li = Array.from(document.querySelectorAll('#ack-list li'))
                 .find(l => l.querySelector('.ack-item-title').textContent === 'Our terms changed');
               li.querySelector('button').click(); return true;""")
    wait_until(lambda: banner(page)["titles"] == ["New mandate"], 10, message="acknowledged here")
    driver.switch_to.window(first_tab)
    wait_until(lambda: banner(page)["titles"] == ["New mandate"], 10, message=lambda: f"the other tab ({banner(page)})")

    # the browser client's ack(id) itself
    notice = next(n for n in api.json_of(services.web.get(
        "/v1/notifications", headers={"Authorization": f"Bearer {token}"}))["items"] if n["title"] == "New mandate")
    result = page.driver.execute_async_script("""
        const [id, token, done] = arguments;
        const client = new NotificationsClient({baseUrl: '', getToken: () => token});
        let emitted = null;
        client.addEventListener('ack', (e) => { emitted = e.detail; });
        client.ack(id).then((n) => done({acked_at: n.acked_at, read: n.read, ids: emitted && emitted.ids}),
                            (e) => done({error: e.message}));""", notice["id"], token)
    assert result["acked_at"] and result["read"] is True and result["ids"] == [notice["id"]], result
    wait_until(lambda: banner(page) == {"hidden": True, "titles": []}, 10,
               message=lambda: f"the banner gone ({banner(page)})")


def test_an_expiring_notification_leaves_the_page_at_its_time(page, services):  # noqa: F811
    import datetime
    user_id, token = new_user()
    page.open(token)
    expires = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=3)
    api.trigger(services.web, [user_id], type="task", event="task_due", title="Code 123456",
                expires_at=expires.isoformat())
    api.trigger(services.web, [user_id], type="task", event="task_due", title="Stays")
    page.wait_titles("Code 123456", "Stays")
    page.wait_badge(2)
    wait_until(lambda: page.titles() == ["Stays"], 10, message=lambda: f"the expired one gone ({page.titles()})")
    assert datetime.datetime.now(datetime.timezone.utc) >= expires
    page.wait_badge(1)
