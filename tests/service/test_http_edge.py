"""The HTTP edge (issue 16 point 8): what a caller, an attacker or a proxy sees at the boundary.

    deep JSON              a body nested thousands deep is 400 `invalid_json`, never a 500
    no-store               every personal answer (everything under /v1/) forbids caches to keep it
    operator token         /healthz?greenlets=1 only with METRICS_TOKEN; /metrics needs it once set
    proxies                X-Forwarded-For is believed for PROXY_HOPS hops, and only then
    docs pages             /docs loads nothing from another origin; /redoc is development only
    direct push            skips users whose in-app channel is off, and says how many streams got it

Where the behaviour depends on the server (the gevent worker's stack, gunicorn's REMOTE_ADDR, the
metrics files of several processes, live streams) the test runs against a real gunicorn.
"""
import datetime
import os
import re
import uuid

import pytest
import requests

from testkit.api import assert_envelope
from testkit.config_files import queue_yaml
from testkit.identity import API_KEY, SERVICE, bearer, make_token
from testkit.processes import wait_until
from testkit.rows import insert_notification
from tests.security.test_access_control import ACCESS

pytestmark = pytest.mark.timeout(120)

METRICS_TOKEN = "metrics-token-for-the-edge-tests-0123456789abcdef"
DEEP = 5000   # far past Python's recursion limit (1,000)


def nested_list(depth):
    return "[" * depth + "]" * depth


def nested_object(depth):
    return '{"a":' * depth + "1" + "}" * depth


def _path_of(rule):
    """A concrete path for a rule: each <param> a fresh UUID."""
    return re.sub(r"<(?:[^:<>]+:)?[^<>]+>", lambda _: str(uuid.uuid4()), rule.rule)


def _credentials(app, rule):
    """The caller each endpoint expects: an API key (every scope) for a service endpoint, else a user."""
    from app.security.auth import scope_of
    view = app.view_functions[rule.endpoint]
    if scope_of(getattr(view, "view_class", None)):
        return dict(SERVICE)
    return bearer(uuid.uuid4())


# ------------------------------------------------------------------------------------ deep JSON


def json_endpoints(app):
    """Every (method, rule) that takes a body: walked from the url_map, so a new one is covered."""
    found = []
    for rule in app.url_map.iter_rules():
        for method in sorted(rule.methods & {"POST", "PUT", "PATCH"}):
            found.append((method, rule))
    return found


def test_a_body_nested_thousands_deep_is_400_invalid_json_on_every_json_endpoint(app, client, db):
    endpoints = json_endpoints(app)
    assert len(endpoints) >= 7, endpoints   # trigger, push, ticket, preferences, read, read-all, contact
    for method, rule in endpoints:
        for body in (nested_list(DEEP), nested_object(DEEP), '{"title": ' + nested_list(DEEP) + "}"):
            response = client.open(_path_of(rule), method=method, data=body, content_type="application/json",
                                   headers=_credentials(app, rule))
            assert_envelope(response, 400, "invalid_json")
    with db.cursor() as cur:
        cur.execute("SELECT (SELECT count(*) FROM triggers) + (SELECT count(*) FROM preferences)"
                    " + (SELECT count(*) FROM contacts)")
        assert cur.fetchone()[0] == 0


def test_the_depth_limit_refuses_only_what_no_schema_could_accept(client, db, user):
    """33 levels is refused as JSON; 32 reaches the schema (which names the field); a wide body with
    many shallow brackets is ordinary JSON."""
    from app.api import MAX_JSON_DEPTH
    user_id, headers = user
    row = insert_notification(db, user_id)
    path = f"/v1/notifications/{row['id']}/read"
    too_deep = '{"read": ' + nested_list(MAX_JSON_DEPTH) + "}"
    assert_envelope(client.patch(path, data=too_deep, content_type="application/json", headers=headers),
                    400, "invalid_json")
    deepest = '{"read": ' + nested_list(MAX_JSON_DEPTH - 1) + "}"
    body = assert_envelope(client.patch(path, data=deepest, content_type="application/json", headers=headers),
                           422, "invalid_request")
    assert "read" in body["errors"]
    wide = {"changes": [{"group": "chat", "event": "mention", "channel": "email", "enabled": False}] * 100}
    assert client.put("/v1/notifications/preferences", json=wide, headers=headers).status_code == 200


@pytest.mark.slow
def test_deep_json_under_gunicorn_is_400_and_the_worker_lives_on(processes, clean):
    """In a gevent worker the parse runs on a greenlet's stack: the same 400, and the worker lives."""
    web = processes.start_web(clean)
    (worker_pid,) = web.worker_pids()
    json_type = {"Content-Type": "application/json"}
    for method, path, headers in (("POST", "/v1/notifications/trigger", SERVICE),
                                  ("POST", "/v1/notifications/sse", SERVICE),
                                  ("PUT", "/v1/notifications/preferences", bearer(uuid.uuid4()))):
        response = requests.request(method, web.url + path, data=nested_list(DEEP * 20), timeout=10,
                                    headers=dict(headers, **json_type))
        assert_envelope(response, 400, "invalid_json")
    assert web.worker_pids() == [worker_pid]
    assert "RecursionError" not in web.output() and "Traceback" not in web.output()


# ------------------------------------------------------------------------------------ no-store


def personal_calls(db):
    """One successful call of every endpoint under /v1/ but the stream: (method, rule, path, kwargs)."""
    user_id = uuid.uuid4()
    me = bearer(user_id)
    note = insert_notification(db, user_id)
    other = insert_notification(db, user_id)
    contact = f"/v1/notifications/users/{user_id}/contact"
    trigger = {"type": "chat", "event": "mention", "title": "Hi", "user_ids": [str(user_id)]}
    calls = [
        ("GET", "/v1/notifications", "/v1/notifications", {"headers": me}),
        ("GET", "/v1/notifications/<notification_id>", f"/v1/notifications/{note['id']}", {"headers": me}),
        ("PATCH", "/v1/notifications/<notification_id>/read", f"/v1/notifications/{note['id']}/read",
         {"headers": me, "json": {}}),
        ("POST", "/v1/notifications/read-all", "/v1/notifications/read-all", {"headers": me}),
        ("GET", "/v1/notifications/unread-count", "/v1/notifications/unread-count", {"headers": me}),
        ("GET", "/v1/notifications/<notification_id>/deliveries", f"/v1/notifications/{note['id']}/deliveries",
         {"headers": me}),
        ("GET", "/v1/notifications/preferences", "/v1/notifications/preferences", {"headers": me}),
        ("PUT", "/v1/notifications/preferences", "/v1/notifications/preferences",
         {"headers": me, "json": {"changes": [{"group": "chat", "channel": "email", "enabled": False}]}}),
        ("POST", "/v1/notifications/sse/ticket", "/v1/notifications/sse/ticket", {"headers": me}),
        ("DELETE", "/v1/notifications/<notification_id>", f"/v1/notifications/{other['id']}", {"headers": me}),
        ("PUT", "/v1/notifications/users/<user_id>/contact", contact,
         {"headers": SERVICE, "json": {"email": "jane@example.com", "phone": "+14155550100"}}),
        ("GET", "/v1/notifications/users/<user_id>/contact", contact, {"headers": SERVICE}),
        ("DELETE", "/v1/notifications/users/<user_id>/contact", contact, {"headers": SERVICE}),
        ("POST", "/v1/notifications/trigger", "/v1/notifications/trigger", {"headers": SERVICE, "json": trigger}),
        ("POST", "/v1/notifications/sse", "/v1/notifications/sse", {"headers": SERVICE, "json": trigger}),
        ("GET", "/v1/notifications/stats", "/v1/notifications/stats",
         {"headers": SERVICE, "query_string": {"from": "2024-03-01T00:00:00Z", "to": "2024-03-02T00:00:00Z"}}),
        ("GET", "/v1/notifications/audit", "/v1/notifications/audit", {"headers": SERVICE}),
        ("GET", "/v1/notifications/<notification_id>/evidence", f"/v1/notifications/{note['id']}/evidence",
         {"headers": SERVICE}),
        ("GET", "/v1/notifications/preferences/history", "/v1/notifications/preferences/history", {"headers": me}),
        ("GET", "/v1/notifications/users/<user_id>/preferences/history",
         f"/v1/notifications/users/{user_id}/preferences/history", {"headers": SERVICE}),
    ]
    return calls


def assert_not_stored(response, what):
    assert response.headers.get("Cache-Control") == "no-store", (what, dict(response.headers))
    assert response.headers.get("Pragma") == "no-cache", what


def test_every_personal_answer_forbids_caching(app, client, db):
    calls = personal_calls(db)
    accepted = client.post("/v1/notifications/trigger", headers=SERVICE, json={
        "type": "chat", "event": "mention", "title": "Hi", "user_ids": [str(uuid.uuid4())]}).get_json()
    calls.append(("GET", "/v1/notifications/triggers/<trigger_id>",
                  f"/v1/notifications/triggers/{accepted['trigger_id']}", {"headers": SERVICE}))
    scheduled = client.post("/v1/notifications/trigger", headers=SERVICE, json={
        "type": "chat", "event": "mention", "title": "Hi", "user_ids": [str(uuid.uuid4())],
        "send_at": (datetime.datetime.now(datetime.timezone.utc)
                                                 + datetime.timedelta(hours=1)).isoformat()}).get_json()
    calls.append(("DELETE", "/v1/notifications/triggers/<trigger_id>",
                  f"/v1/notifications/triggers/{scheduled['trigger_id']}", {"headers": SERVICE}))
    owner = uuid.uuid4()
    note = insert_notification(db, owner, ack_required=True)
    calls.append(("POST", "/v1/notifications/<notification_id>/ack", f"/v1/notifications/{note['id']}/ack",
                  {"headers": bearer(owner)}))
    covered = {(method, rule) for method, rule, _, _ in calls}
    # the Web Push endpoints answer 2xx only with VAPID keys: tests/channels/test_webpush.py checks them
    covered |= {(m, r) for m, r in ACCESS if r.startswith("/v1/notifications/webpush/")}
    # a provider's report answers 2xx only when signed with its secret: tests/deliveries/test_reports.py checks it
    covered |= {(m, r) for m, r in ACCESS if r.startswith("/v1/providers/")}
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/v1/"):
            for method in rule.methods - {"HEAD", "OPTIONS"}:
                if (method, rule.rule) != ("GET", "/v1/notifications/sse"):   # its own `no-cache, no-transform`
                    assert (method, rule.rule) in covered, f"no no-store check for {method} {rule.rule}"
    for method, _, path, kwargs in calls:
        response = client.open(path, method=method, **kwargs)
        assert 200 <= response.status_code < 300, (method, path, response.get_data(as_text=True))
        assert_not_stored(response, f"{method} {path}")
    # refusals about a person are not kept either
    assert_not_stored(client.get("/v1/notifications"), "401")
    assert_not_stored(client.get(f"/v1/notifications/{uuid.uuid4()}", headers=bearer(uuid.uuid4())), "404")
    # what is the same for everyone stays cacheable
    for path in ("/healthz", "/openapi.json", "/docs"):
        response = client.get(path)
        assert response.status_code == 200
        assert "no-store" not in response.headers.get("Cache-Control", ""), path


@pytest.mark.slow
def test_personal_answers_under_gunicorn_forbid_caching(processes, clean):
    web = processes.start_web(clean)
    response = web.get("/v1/notifications", headers=bearer(uuid.uuid4()))
    assert response.status_code == 200
    assert_not_stored(response, "inbox over gunicorn")
    with web.stream(headers=bearer(uuid.uuid4())) as stream:
        assert stream.ok
        assert "no-cache" in stream.response.headers["Cache-Control"]   # the stream: never replayed from a cache


# ------------------------------------------------------------------------------------ operator token


@pytest.mark.slow
def test_without_metrics_token_the_heap_scan_is_refused_and_metrics_stay_open(processes, clean):
    web = processes.start_web(clean)
    assert web.get("/healthz").json() == {"status": "ok"}   # probes stay open (SPEC)
    for headers in ({}, {"Authorization": f"Bearer {METRICS_TOKEN}"}, {"Authorization": "Bearer "}):
        assert_envelope(web.get("/healthz?greenlets=1", headers=headers), 403, "metrics_token_not_configured")
    for other in ("", "0", "yes"):   # not a silent plain probe: the one value is documented
        assert_envelope(web.get(f"/healthz?greenlets={other}"), 422, "invalid_request")
    metrics = web.get("/metrics")
    assert metrics.status_code == 200 and "notif_open_streams" in metrics.text


@pytest.mark.slow
def test_with_metrics_token_both_need_its_bearer(processes, clean):
    web = processes.start_web(clean, METRICS_TOKEN=METRICS_TOKEN)
    assert web.get("/healthz").json() == {"status": "ok"}
    good = {"Authorization": f"Bearer {METRICS_TOKEN}"}
    wrong = ({}, {"Authorization": "Bearer " + METRICS_TOKEN[:-1] + "x"}, {"Authorization": METRICS_TOKEN},
             {"Authorization": f"Basic {METRICS_TOKEN}"}, {"X-API-Key": API_KEY},
             {"Authorization": f"Bearer {make_token(uuid.uuid4())}"})
    for path in ("/healthz?greenlets=1", "/metrics"):
        for headers in wrong:
            response = web.get(path, headers=headers)
            assert_envelope(response, 401, "invalid_metrics_token")
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            assert "greenlets" not in response.text and "notif_" not in response.text
    scanned = web.get("/healthz?greenlets=1", headers=good)
    assert scanned.status_code == 200 and scanned.json()["greenlets"] > 0
    metrics = web.get("/metrics", headers=good)
    assert metrics.status_code == 200 and "notif_open_streams" in metrics.text


def test_a_short_metrics_token_stops_start_up_outside_development(clean):
    from app.config import load_settings
    from app.errors import ConfigError
    production = dict(clean, DEVELOPMENT="false", SECRET_KEY="s" * 48, JWT_SECRET="j" * 48, API_KEYS="k" * 48,
                      AUDIT_HMAC_KEY="prod:" + "a" * 48)
    with pytest.raises(ConfigError, match="METRICS_TOKEN"):
        load_settings(dict(production, METRICS_TOKEN="short"))
    assert load_settings(dict(production, METRICS_TOKEN=METRICS_TOKEN))["METRICS_TOKEN"] == METRICS_TOKEN


# ------------------------------------------------------------------------------------ proxies


def anonymous_inbox(web, forwarded_for):
    return web.get("/v1/notifications", headers={"X-Forwarded-For": forwarded_for})


@pytest.mark.slow
def test_behind_one_proxy_each_client_has_its_own_anonymous_bucket(processes, clean, tmp_path):
    web = processes.start_web(dict(clean, RATE_LIMITS_ENABLED="true",
                                   QUEUE_CONFIG=queue_yaml(tmp_path, rate_limits={"user": "2/minute"})),
                              PROXY_HOPS="1")
    first, second = "198.51.100.1", "198.51.100.2"
    for _ in range(2):
        assert_envelope(anonymous_inbox(web, first), 401, "invalid_user_id")
    assert_envelope(anonymous_inbox(web, first), 429, "rate_limited")
    # another client behind the same router: a bucket of its own
    assert_envelope(anonymous_inbox(web, second), 401, "invalid_user_id")
    # the router appends the client it saw; what the client claimed before that is not believed
    assert_envelope(anonymous_inbox(web, f"{second}, {first}"), 429, "rate_limited")


@pytest.mark.slow
def test_without_proxies_a_forwarded_for_header_picks_no_bucket(processes, clean, tmp_path):
    web = processes.start_web(dict(clean, RATE_LIMITS_ENABLED="true",
                                   QUEUE_CONFIG=queue_yaml(tmp_path, rate_limits={"user": "2/minute"})))
    for _ in range(2):
        assert_envelope(anonymous_inbox(web, "198.51.100.1"), 401, "invalid_user_id")
    for spoofed in ("198.51.100.2", "203.0.113.9, 198.51.100.3"):
        assert_envelope(anonymous_inbox(web, spoofed), 429, "rate_limited")


def pushed_from(web, forwarded_for=None):
    """The audit row's client address of one direct push."""
    headers = dict(SERVICE)
    if forwarded_for:
        headers["X-Forwarded-For"] = forwarded_for
    customer_id = str(uuid.uuid4())   # names this push's audit row (which holds no user id)
    response = web.post("/v1/notifications/sse", headers=headers, json={
        "type": "chat", "event": "mention", "title": "Hi", "customer_id": customer_id,
        "user_ids": [str(uuid.uuid4())]})
    assert response.status_code == 200, response.text
    rows = web.get("/v1/notifications/audit", headers=SERVICE, params={"action": "notification.push"}).json()
    (row,) = [r for r in rows["items"] if r["change"]["customer_id"] == customer_id]
    return row["client_ip"]


@pytest.mark.slow
@pytest.mark.parametrize("hops", ["0", "1"])
def test_the_audit_records_the_client_behind_the_proxies(processes, clean, hops):
    web = processes.start_web(clean, PROXY_HOPS=hops)
    direct = pushed_from(web)
    via_a, via_b = pushed_from(web, "203.0.113.7"), pushed_from(web, "203.0.113.8")
    if hops == "1":
        assert len({direct, via_a, via_b}) == 3, (direct, via_a, via_b)
        assert pushed_from(web, "203.0.113.7") == via_a
    else:
        assert direct == via_a == via_b


# ------------------------------------------------------------------------------------ docs pages


PRODUCTION = {"DEVELOPMENT": "false", "SECRET_KEY": "s" * 48, "JWT_SECRET": "j" * 48, "API_KEYS": "k" * 48,
              "AUDIT_HMAC_KEY": "prod:" + "a" * 48}


def referenced(html):
    """Every src= and href= of a page."""
    return re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html)


def test_in_production_the_docs_page_loads_nothing_from_another_origin(make_app):
    client = make_app(**PRODUCTION).test_client()
    page = client.get("/docs")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    urls = referenced(html)
    assert any(u.endswith(".js") for u in urls) and any(u.endswith(".css") for u in urls), urls
    for url in urls:
        assert url.startswith("/") and not url.startswith("//"), url
        asset = client.get(url)
        assert asset.status_code == 200 and len(asset.data) > 1000, url
    assert "/openapi.json" in html and '"validatorUrl": null' in html
    policy = page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "script-src 'self'" in policy
    assert "http" not in policy and "*" not in policy
    # only the page's own files: not the package's templates, maps or anything beside them
    for path in ("/docs/assets/index.j2", "/docs/assets/swagger-ui-bundle.js.map", "/docs/assets/..%2f__init__.py",
                 "/docs/assets/"):
        assert_envelope(client.get(path), 404, "not_found")
    assert_envelope(client.get("/redoc"), 404, "not_found")
    spec = client.get("/openapi.json")
    assert spec.status_code == 200 and spec.get_json()["openapi"].startswith("3.")


def test_in_development_redoc_is_pinned_and_checked_by_the_browser(client):
    html = client.get("/redoc").get_data(as_text=True)
    scripts = re.findall(r"<script[^>]*>", html)
    assert scripts
    for tag in scripts:
        (src,) = re.findall(r'src="([^"]+)"', tag)
        assert re.search(r"@\d+\.\d+\.\d+/", src), src                  # an exact version
        assert re.search(r'integrity="sha384-[A-Za-z0-9+/]{64}"', tag), tag
        assert 'crossorigin="anonymous"' in tag


@pytest.mark.slow
def test_the_docs_page_renders_in_a_browser_under_its_policy_from_this_origin_only(processes, clean, tmp_path):
    """Production settings, a real gunicorn, Debian's headless Chromium: Swagger UI draws the API
    from the files served here, the browser reports no policy violation, and every resource the
    page loaded came from the service itself."""
    if not (os.path.exists("/usr/bin/chromium") and os.path.exists("/usr/bin/chromedriver")):
        pytest.skip("needs Debian's chromium and chromium-driver (CI installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    web = processes.start_web(dict(clean, **PRODUCTION))
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--no-first-run",
                f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path="/usr/bin/chromedriver"), options=options)
    try:
        driver.get(web.url + "/docs")
        title = wait_until(lambda: driver.execute_script(
            "var t = document.querySelector('.swagger-ui .info .title'); return t && t.textContent"), 20,
            message="Swagger UI to draw the document's title")
        assert "Notifications" in title
        operations = driver.execute_script("return document.querySelectorAll('.opblock').length")
        assert operations >= 10, operations
        loaded = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert loaded and all(url.startswith(web.url + "/") for url in loaded), loaded
        problems = [entry["message"] for entry in driver.get_log("browser")   # but the browser's own favicon probe
                    if ("Content Security Policy" in entry["message"] or entry["level"] == "SEVERE")
                    and "/favicon.ico " not in entry["message"]]
        assert not problems, problems
    finally:
        driver.quit()


# ------------------------------------------------------------------------------------ direct push


def push_to(web, user_ids, event="mention", group="chat", customer_id=None, title=None):
    body = {"type": group, "event": event, "title": title or event, "user_ids": [str(u) for u in user_ids]}
    if customer_id is not None:
        body["customer_id"] = str(customer_id)
    response = web.post("/v1/notifications/sse", headers=SERVICE, json=body)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.slow
def test_a_direct_push_skips_users_who_turned_its_event_off_and_counts_the_streams(processes, clean):
    web = processes.start_web(clean)
    alice, bob, ours, theirs = uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    off = requests.put(web.url + "/v1/notifications/preferences", headers=bearer(alice), timeout=10, json={
        "changes": [{"group": "chat", "event": "mention", "channel": "system", "enabled": False}]})
    assert off.status_code == 200, off.text
    alices = web.stream(headers=bearer(alice))
    bobs = web.stream(headers=bearer(bob))
    bobs_for_ours = web.stream(headers=bearer(bob, customers=[ours]))   # hears `ours` and customer-less only
    try:
        assert alices.ok and bobs.ok and bobs_for_ours.ok
        answer = push_to(web, [alice, bob], customer_id=theirs, title="mention for theirs")
        assert answer["users"] == 1 and answer["skipped_by_preference"] == 1
        assert answer["delivered_streams"] == 1, answer
        assert [e.json()["title"] for e in bobs.wait_events(1)] == ["mention for theirs"]
        # A locked event reaches Alice all the same: the first message her stream gets is that one,
        # so the mention, published before it on the same channel, never came. Bob's customer-scoped
        # stream likewise got nothing before it.
        answer = push_to(web, [alice, bob], group="security", event="login_alert", title="locked")
        assert answer["users"] == 2 and answer["skipped_by_preference"] == 0
        assert answer["delivered_streams"] == 3, answer
        assert [e.json()["title"] for e in alices.wait_events(1)] == ["locked"]
        assert [e.json()["title"] for e in bobs_for_ours.wait_events(1)] == ["locked"]
        assert [e.json()["title"] for e in bobs.wait_events(2)] == ["mention for theirs", "locked"]
        # nobody listening, nobody skipped: the push still answers 200
        answer = push_to(web, [uuid.uuid4()])
        assert (answer["users"], answer["skipped_by_preference"], answer["delivered_streams"]) == (1, 0, 0)
        answer = push_to(web, [alice])
        assert (answer["users"], answer["skipped_by_preference"], answer["delivered_streams"]) == (0, 1, 0)
        assert answer["message"]
    finally:
        for stream in (alices, bobs, bobs_for_ours):
            stream.close()


def test_the_push_answer_is_documented(client):
    spec = client.get("/openapi.json").get_json()
    schema = spec["paths"]["/v1/notifications/sse"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    name = schema["$ref"].rsplit("/", 1)[-1]
    properties = spec["components"]["schemas"][name]["properties"]
    for field in ("users", "skipped_by_preference", "delivered_streams"):
        assert properties[field]["type"] == "integer" and properties[field]["description"], field
