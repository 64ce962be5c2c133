"""The evidence of one notification over HTTP and as an exported bundle: a notification that went
in-app, by email with one retry (a real SMTP server refusing once) and was read shows all of it,
with the audit rows behind it, and the bundle verifies offline with the key (and fails once edited)."""
import json
import uuid

import pytest

from testkit.api import assert_error, json_of, notification_id, put_contact, trigger_body
from testkit.identity import SERVICE
from testkit.jobs import fast_forward, run_jobs


@pytest.fixture
def mail_app(make_app, smtp):
    return make_app(MAIL_SERVER="127.0.0.1", MAIL_PORT=str(smtp.port), MAIL_TIMEOUT="5")


def seal(app):
    """Seal the finished audit rows now (the workers do it every relay interval)."""
    from app import db
    from app.audit.chain import seal_all
    with app.app_context(), db.connection() as conn:
        seal_all(conn, wait=True)


def told(mail_app, smtp, user):
    """A chat message by trigger (idempotency key), email refused once then sent, read by the user."""
    user_id, headers = user
    client = mail_app.test_client()
    address = f"e-{user_id.hex[:8]}@example.org"
    put_contact(client, user_id, email=address)
    accepted = client.post("/v1/notifications/trigger", json=trigger_body([user_id], title="Rate change"),
                           headers={**SERVICE, "Idempotency-Key": "evidence-1"})
    assert accepted.status_code == 202, accepted.get_data(as_text=True)
    smtp.refuse_data = "451 4.3.0 Try again later"
    run_jobs(mail_app)
    smtp.refuse_data = None
    assert fast_forward(mail_app) == 1
    run_jobs(mail_app)
    assert len(smtp.messages) == 1
    nid = notification_id(client, headers)
    read = client.patch(f"/v1/notifications/{nid}/read", headers=headers)
    assert read.status_code == 200
    seal(mail_app)
    return client, nid, {"trigger_id": json_of(accepted)["trigger_id"],
                         "trigger_request": accepted.headers["X-Request-ID"], "read_request": read.headers["X-Request-ID"]}


def test_evidence_shows_trigger_deliveries_retry_read_and_their_audit_rows(mail_app, smtp, user):
    user_id, _ = user
    client, nid, ids = told(mail_app, smtp, user)

    response = client.get(f"/v1/notifications/{nid}/evidence", headers=SERVICE)
    assert response.status_code == 200, response.get_data(as_text=True)
    found = json_of(response)
    assert found["notification"]["id"] == nid and found["notification"]["title"] == "Rate change"
    assert found["notification"]["user_id"] == str(user_id)

    trig = found["trigger"]
    assert trig["id"] == ids["trigger_id"] and trig["idempotency_key"] == "evidence-1"
    assert trig["request_id"] == ids["trigger_request"] and trig["api_key_id"] and trig["created_at"]

    channels = {d["channel"]: d for d in found["deliveries"]}
    assert channels["system"]["status"] == "sent"
    email = channels["email"]
    assert email["status"] == "sent" and email["provider_message_id"]
    assert email["resolution_at_dispatch"] == {"enabled": True, "locked": False, "source": "default"}
    assert [a["outcome"] for a in email["attempts"]] == ["retry", "sent"]
    retry, sent = email["attempts"]
    assert "451" in retry["error"] and sent["provider_message_id"] == email["provider_message_id"]
    for attempt in email["attempts"]:
        assert attempt["started_at"] and attempt["finished_at"]
        assert attempt["resolution"] == {"enabled": True, "locked": False, "source": "default",
                                         "quiet_hours": None, "quiet_hours_apply": False}

    reads = found["interactions"]["events"]
    assert [(e["action"], e["actor_type"], e["actor_id"], e["request_id"]) for e in reads] == [
        ("read", "user", str(user_id), ids["read_request"])]
    assert reads[0]["client_ip"] and found["interactions"]["read_at"]

    rows = {r["id"]: r for r in found["audit"]["rows"]}
    assert rows[trig["audit_id"]]["action"] == "notification.trigger"
    assert rows[reads[0]["audit_id"]]["action"] == "notification.read"
    for row in rows.values():
        assert row["chain"] >= 1 and len(row["hash"]) == 64 and len(row["prev_hash"]) == 64 and row["key_id"]
    assert found["audit"]["findings"] == []
    assert found["chain"]["head"]["position"] >= max(r["chain"] for r in rows.values())
    assert found["consent"] == {"required": False, "records": found["consent"]["records"]}


def test_the_exported_bundle_is_the_same_and_verifies_offline_until_edited(mail_app, smtp, user, tmp_path):
    client, nid, _ = told(mail_app, smtp, user)
    out = tmp_path / "evidence.json"
    runner = mail_app.test_cli_runner()
    result = runner.invoke(args=["audit", "export", "--notification", nid, "--out", str(out)])
    assert result.exit_code == 0, result.output
    bundle = json.loads(out.read_text())
    shown = json_of(client.get(f"/v1/notifications/{nid}/evidence", headers=SERVICE))
    assert {k: v for k, v in bundle.items() if k != "generated_at"} == \
           {k: v for k, v in shown.items() if k != "generated_at"}

    result = runner.invoke(args=["audit", "verify-bundle", str(out)])
    assert result.exit_code == 0, result.output
    assert "bundle verified" in result.output

    read_row = next(r for r in bundle["audit"]["rows"] if r["action"] == "notification.read")
    read_row["change"]["read"] = False                     # someone edits the bundle
    out.write_text(json.dumps(bundle))
    result = runner.invoke(args=["audit", "verify-bundle", str(out)])
    assert result.exit_code == 1
    assert f"position {read_row['chain']}" in result.output and "NOT VERIFIED" in result.output


def test_evidence_errors(app):
    client = app.test_client()
    assert_error(client.get(f"/v1/notifications/{uuid.uuid4()}/evidence", headers=SERVICE), 404, "not_found")
    assert_error(client.get("/v1/notifications/not-an-id/evidence", headers=SERVICE), 400, "invalid_id")
    assert_error(client.get(f"/v1/notifications/{uuid.uuid4()}/evidence"), 401, "invalid_api_key")
