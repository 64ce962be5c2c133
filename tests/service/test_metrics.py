"""`/metrics` shows the series operators alert on, after the path that feeds them ran."""
from testkit.identity import SERVICE
from testkit.jobs import run_jobs


def test_metrics_after_trigger_and_delivery(app, client, user, db):
    user_id, headers = user
    with db.cursor() as cur:
        cur.execute("INSERT INTO contacts (user_id) VALUES (%s)", (user_id,))   # no email: skipped
    r = client.post("/v1/notifications/trigger", headers=SERVICE, json={
        "type": "chat", "event": "message_received", "title": "Hi", "user_ids": [str(user_id)]})
    assert r.status_code == 202
    run_jobs(app)
    client.get("/v1/notifications", headers=headers)
    text = client.get("/metrics").get_data(as_text=True)
    assert 'notif_http_request_duration_seconds_count{endpoint="notifications.Inbox",method="GET",status="200"}' in text
    assert 'notif_http_request_duration_seconds_count{endpoint="dispatch.Trigger",method="POST",status="202"}' in text
    assert "notif_notifications_stored_total" in text
    assert 'notif_deliveries_total{channel="email",outcome="skipped"}' in text
    assert 'notif_queue_depth{queue="notifications-dispatch"} 0.0' in text
    assert "notif_open_streams" in text
    assert "notif_fanout_seconds_count" in text
