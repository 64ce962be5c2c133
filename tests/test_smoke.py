def test_inbox_empty(client, user):
    _, headers = user
    r = client.get("/v1/notifications", headers=headers)
    assert r.status_code == 200
    assert r.get_json() == {"items": [], "total": 0, "unread": 0, "limit": 50, "offset": 0}
