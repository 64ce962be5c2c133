"""Data-subject requests (issue 20, point 6): `flask users export` writes everything held about a
user; `flask users forget` erases contacts, content and preferences and leaves the audit chain
verifiable, with the user's id replaced by its keyed pseudonym. Both audited."""
import json
import uuid

import psycopg2.extras

from app import audit
from testkit.identity import make_token, SERVICE
from testkit.rows import insert_notification


def users(app, *args):
    return app.test_cli_runner().invoke(args=["users", *args])


def verify(app):
    return app.test_cli_runner().invoke(args=["audit", "verify"])


def one(db, sql, *params):
    with db.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
        cur.execute(sql, params)
        return [dict(row) for row in cur.fetchall()]


def a_user_with_history(client, db):
    """Contact, preferences, quiet hours, two notifications (one read), all through the API."""
    user_id = uuid.uuid4()
    headers = {"Authorization": f"Bearer {make_token(user_id)}"}
    assert client.put(f"/v1/notifications/users/{user_id}/contact", headers=SERVICE,
                      json={"email": "ada@example.com", "phone": "+447700900123", "locale": "en-GB",
                            "timezone": "Europe/London"}).status_code == 200
    assert client.put("/v1/notifications/preferences", headers=headers,
                      json={"quiet_hours": {"start": "22:00", "end": "07:00"}}).status_code == 200
    notes = [insert_notification(db, user_id, title=f"Your balance is {n}00 EUR", content="Account 1234")
             for n in (1, 2)]
    assert client.patch(f"/v1/notifications/{notes[0]['id']}/read", headers=headers).status_code == 200
    return str(user_id), headers, notes


def test_export_writes_everything_held_about_the_user(app, client, db, tmp_path):
    user_id, _, notes = a_user_with_history(client, db)
    other, _, _ = a_user_with_history(client, db)
    out = tmp_path / "export.json"
    result = users(app, "export", user_id, "--out", str(out))
    assert result.exit_code == 0, result.output
    bundle = json.loads(out.read_text())
    assert bundle["contacts"][0]["email"] == "ada@example.com"
    assert {r["source"] for r in bundle["consent_records"]} == {"contact", "quiet_hours"}
    assert bundle["quiet_hours"][0]["start_time"] == "22:00:00"
    assert [n["id"] for n in bundle["notifications"]] == [str(n["id"]) for n in notes]
    actions = sorted(row["action"] for row in bundle["audit"])
    assert actions == ["contact.update", "notification.read", "preferences.update"]
    assert other not in out.read_text()
    (row,) = one(db, "SELECT * FROM audit_log WHERE action = 'user.export'")
    assert (row["target_id"], row["actor_type"]) == (user_id, "operator")


def test_forget_erases_the_user_and_keeps_the_chain_verifiable(app, client, db):
    user_id, headers, notes = a_user_with_history(client, db)
    other, other_headers, _ = a_user_with_history(client, db)
    assert verify(app).exit_code == 0                          # seals the history so far
    client.post("/v1/notifications/read-all", headers=headers, json={})   # one row left unsealed
    result = users(app, "forget", user_id, "--yes")
    assert result.exit_code == 0, result.output
    assert "audit_rows_pseudonymised: 4" in result.output      # contact, preferences, read, read-all

    assert one(db, "SELECT * FROM contacts WHERE user_id = %s", user_id) == []
    assert one(db, "SELECT * FROM quiet_hours WHERE user_id = %s", user_id) == []
    assert one(db, "SELECT * FROM consent_records WHERE user_id = %s OR actor_id = %s", user_id, user_id) == []
    assert len(one(db, "SELECT * FROM consent_records WHERE actor_id = %s", audit.pseudonym(
        app.config["AUDIT_KEYS"].current[1], user_id))) == 1          # the quiet hours the user set
    assert client.get("/v1/notifications", headers=headers).get_json()["items"] == []
    kept = one(db, "SELECT * FROM notifications WHERE id = ANY(%s::uuid[])", [str(n["id"]) for n in notes])
    assert [(n["title"], n["content"], n["event"] == notes[0]["event"]) for n in kept] == [("", "", True)] * 2
    assert {str(n["user_id"]) for n in kept} != {user_id}

    dump = json.dumps(one(db, "SELECT * FROM audit_log"), default=str)
    assert user_id not in dump and "Your balance" not in dump
    assert other in dump                                       # nobody else is touched
    alias = audit.pseudonym(app.config["AUDIT_KEYS"].current[1], user_id)
    (row,) = one(db, "SELECT * FROM audit_log WHERE action = 'user.forget'")
    assert row["target_id"] == alias and row["actor_type"] == "operator"

    result = verify(app)
    assert result.exit_code == 0 and "intact: 8 rows" in result.output, result.output   # 3 + 3 + read-all + forget
    assert len(client.get("/v1/notifications", headers=other_headers).get_json()["items"]) == 2


def test_forget_needs_a_user_id(app):
    result = users(app, "forget", "not-a-uuid", "--yes")
    assert result.exit_code == 2 and "is not a user id" in result.output
