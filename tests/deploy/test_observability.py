"""What operators plug in (deploy/grafana, deploy/prometheus) reads series the service exports.

promtool checks the alert rules and runs their unit tests (deploy/prometheus/alerts.test.yml:
each alert fires on its state and not below it). Then a real web process and a real worker,
sharing one PROMETHEUS_MULTIPROC_DIR as the Procfile's processes do under ./dev up and the
systemd units, serve one trigger end to end, and every metric name the dashboard's queries and
the rules' expressions use must be among the sample names of that /metrics scrape (a histogram
is named by its _bucket/_sum/_count samples, as PromQL names it).
"""
import json
import re
import shutil
import subprocess
import uuid

import pytest
from prometheus_client.parser import text_string_to_metric_families

from testkit.identity import SERVICE
from testkit.processes import wait_until
from devtools.services import REPO_ROOT

PROMTOOL = shutil.which("promtool")
RULES = REPO_ROOT / "deploy" / "prometheus" / "alerts.yml"
RULE_TESTS = REPO_ROOT / "deploy" / "prometheus" / "alerts.test.yml"
DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "notifications.json"
METRIC_NAME = re.compile(r"\bnotif_[a-z0-9_]+\b")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (.ci/run installs "
                                    "Debian's prometheus package)")


def dashboard_queries():
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    assert queries and all(queries)
    return queries


def rule_expressions():
    import yaml
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def named_metrics():
    return {name for text in dashboard_queries() + rule_expressions() for name in METRIC_NAME.findall(text)}


def promtool(*args):
    return subprocess.run([PROMTOOL, *args], cwd=RULES.parent, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
@needs_promtool
def test_promtool_checks_the_rules():
    result = promtool("check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
@needs_promtool
def test_each_alert_fires_on_its_state_and_not_below():
    result = promtool("test", "rules", RULE_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr
    tested = set(re.findall(r"alertname: (\w+)", RULE_TESTS.read_text()))
    alerts = set(re.findall(r"- alert: (\w+)", RULES.read_text()))
    assert alerts <= tested, f"alerts with no unit test: {sorted(alerts - tested)}"


def test_the_dashboard_covers_what_operators_watch():
    names = {name for query in dashboard_queries() for name in METRIC_NAME.findall(query)}
    for needed in ("notif_open_streams", "notif_deliveries_total", "notif_queue_depth",
                   "notif_queue_oldest_job_age_seconds", "notif_http_request_duration_seconds_bucket",
                   "notif_dispatch_lag_seconds", "notif_dependency_errors_total", "notif_hub_restarts_total",
                   "notif_hub_dropped_messages_total"):
        assert needed in names, needed


def scrape(web):
    response = web.get("/metrics")
    assert response.status_code == 200, response.text
    return {sample.name for family in text_string_to_metric_families(response.text) for sample in family.samples}


@pytest.mark.slow
def test_every_metric_the_dashboard_and_rules_name_is_exported(clean, db, processes):
    web = processes.start_web(clean, workers=1)
    processes.start_worker(dict(clean, PROMETHEUS_MULTIPROC_DIR=web.env["PROMETHEUS_MULTIPROC_DIR"]))
    user_id = uuid.uuid4()
    with db.cursor() as cur:
        cur.execute("INSERT INTO contacts (user_id) VALUES (%s)", (user_id,))   # no email: a skipped delivery
    response = web.post("/v1/notifications/trigger", headers=SERVICE, json={
        "type": "chat", "event": "message_received", "title": "Hi", "user_ids": [str(user_id)]})
    assert response.status_code == 202, response.text
    wanted = named_metrics()
    exported = wait_until(lambda: (lambda names: names if "notif_deliveries_total" in names
                                   and "notif_fanout_seconds_bucket" in names else None)(scrape(web)),
                          timeout=30, message="the trigger's series in /metrics")
    assert wanted - exported == set(), f"named by the dashboard or the rules, not exported: {sorted(wanted - exported)}"
