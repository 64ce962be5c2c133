"""A chain only the service's key can extend, and anchors outside the database (issue 20, points
2 and 3): every tamper a database owner can do is detected by `flask audit verify`."""
import hashlib
import json
import uuid

import psycopg2.extras
import pytest

from app import audit
from testkit.config_files import queue_config
from testkit.identity import make_token
from testkit.processes import ProcessGroup, wait_until
from testkit.providers import FakeHTTP
from testkit.rows import insert_notification


def make_history(client, db, count):
    user_id = uuid.uuid4()
    headers = {"Authorization": f"Bearer {make_token(user_id)}"}
    for _ in range(count):
        notification = insert_notification(db, user_id)
        assert client.patch(f"/v1/notifications/{notification['id']}/read", headers=headers).status_code == 200
    assert client.post("/v1/notifications/read-all", headers=headers, json={}).status_code == 200   # target: the user


def chain(db):
    with db.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
        cur.execute("SELECT * FROM audit_log WHERE chain IS NOT NULL ORDER BY chain")
        return [dict(r) for r in cur.fetchall()]


def cli(app, *args):
    return app.test_cli_runner().invoke(args=["audit", *args])


def as_owner(owner_db, *statements):
    """What the owner of the table can do: step past its triggers and change anything."""
    with owner_db.cursor() as cur:
        cur.execute("SET session_replication_role = replica")
        for statement, params in statements:
            cur.execute(statement, params)
        cur.execute("SET session_replication_role = origin")


def recompute_from(owner_db, rows, start, rehash):
    """Rewrite rows[start:] with hashes from `rehash(row, prev)`, relinking the chain after them."""
    prev = rows[start - 1]["hash"] if start else audit.GENESIS
    statements = []
    for row in rows[start:]:
        digest = rehash(row, prev)
        statements.append(("UPDATE audit_log SET prev_hash = %s, hash = %s, key_id = %s, actor_id = %s WHERE id = %s",
                           (prev, digest, row["key_id"], row["actor_id"], row["id"])))
        prev = digest
    # prev_hash is UNIQUE: move the old values out of the way first
    as_owner(owner_db, ("UPDATE audit_log SET prev_hash = 'x' || id WHERE chain >= %s", (rows[start]["chain"],)),
             *statements)


@pytest.fixture
def sealed(app, client, db):
    make_history(client, db, 4)
    result = cli(app, "verify")
    assert result.exit_code == 0 and "intact: 5 rows" in result.output, result.output
    return chain(db)


def test_every_row_is_sealed_with_the_key_id_and_a_user_actor_is_hashed_as_its_pseudonym(app, sealed):
    key_id, secret = app.config["AUDIT_KEYS"].current
    assert {row["key_id"] for row in sealed} == {key_id}
    last = sealed[-1]
    assert last["target_type"] == "user"
    # docs/audit.md, byte for byte, without the service's code
    subject = "pseud:" + __import__("hmac").new(secret, b"audit-subject\x00" + last["target_id"].encode(),
                                                hashlib.sha256).hexdigest()
    actor = "pseud:" + __import__("hmac").new(secret, b"audit-subject\x00" + last["actor_id"].encode(),
                                              hashlib.sha256).hexdigest()
    body = json.dumps({"actor_type": last["actor_type"], "actor_id": actor, "request_id": last["request_id"],
                       "client_ip": last["client_ip"], "action": last["action"], "target_type": "user",
                       "target_id": subject, "change": last["change"]}, sort_keys=True, separators=(",", ":"))
    at = last["at"].astimezone(__import__("datetime").timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    text = f"v2|{key_id}|{last['chain']}|{last['prev_hash']}|{last['id']}|{at}|{body}"
    assert __import__("hmac").new(secret, text.encode(), hashlib.sha256).hexdigest() == last["hash"]


@pytest.mark.parametrize("how", ["plain_sha256", "hmac_with_a_guessed_key"])
def test_an_edit_with_the_chain_recomputed_without_the_key_is_detected(app, sealed, owner_db, how):
    """The owner edits row 2 and recomputes every hash after it, as the previous chain allowed."""
    sealed[1]["actor_id"] = "mallory"

    def rehash(row, prev):
        if how == "plain_sha256":
            row["key_id"] = None
            return audit.row_hash(row, prev)
        return audit.keyed_hash_of(row, row["chain"], prev, row["key_id"], b"guessed-key-0123456789")

    recompute_from(owner_db, sealed, 1, rehash)
    result = cli(app, "verify")
    assert result.exit_code == 1
    assert "BROKEN at position 2" in result.output, result.output


def test_key_rotation_keeps_old_rows_verifiable_with_the_previous_key(make_app, client, db, sealed):
    old = make_app().config["AUDIT_KEYS"].current
    rotated = make_app(AUDIT_HMAC_KEY="k2:" + "n" * 40, AUDIT_HMAC_KEYS_PREVIOUS=f"{old[0]}:{old[1].decode()}")
    make_history(rotated.test_client(), db, 1)
    result = cli(rotated, "verify")
    assert result.exit_code == 0 and "intact: 7 rows" in result.output, result.output
    assert [row["key_id"] for row in chain(db)][-2:] == ["k2", "k2"]
    without_old = make_app(AUDIT_HMAC_KEY="k2:" + "n" * 40)
    result = cli(without_old, "verify")
    assert result.exit_code == 1 and f"key id {old[0]!r}, which this service does not hold" in result.output


def test_anchor_file_detects_deleting_the_newest_rows_and_all_of_them(make_app, sealed, owner_db, tmp_path):
    path = tmp_path / "anchors.jsonl"
    app = make_app(AUDIT_ANCHOR_PATH=str(path))
    result = cli(app, "anchor")
    assert result.exit_code == 0 and "anchored position 5" in result.output, result.output
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(a["position"], a["hash"]) for a in lines] == [(5, sealed[-1]["hash"])]
    assert cli(app, "verify").output.rstrip().endswith(f"matches the anchor at position 5 ({lines[0]['at']})")

    as_owner(owner_db, ("DELETE FROM audit_log WHERE chain >= 4", ()))
    result = cli(app, "verify")
    assert result.exit_code == 1
    assert "BROKEN at position 4: the chain ends at position 3 but the anchor" in result.output, result.output

    as_owner(owner_db, ("DELETE FROM audit_log", ()))
    result = cli(app, "verify")
    assert result.exit_code == 1 and "BROKEN at position 1: the chain ends at position 0" in result.output


def test_a_rewritten_tail_that_keeps_the_length_differs_from_the_anchor(make_app, sealed, owner_db, tmp_path):
    """Rows deleted and as many sealed again with the right key (someone holding the key, or the
    service tricked into re-sealing): the anchored hash no longer matches."""
    path = tmp_path / "anchors.jsonl"
    app = make_app(AUDIT_ANCHOR_PATH=str(path))
    assert cli(app, "anchor").exit_code == 0
    key_id, secret = app.config["AUDIT_KEYS"].current
    sealed[4]["change"] = {"rewritten": True}
    as_owner(owner_db, ("UPDATE audit_log SET change = %s WHERE id = %s",
                        (json.dumps(sealed[4]["change"]), sealed[4]["id"])))
    recompute_from(owner_db, sealed, 4, lambda row, prev: audit.keyed_hash_of(row, row["chain"], prev, key_id, secret))
    result = cli(app, "verify")
    assert result.exit_code == 1 and "BROKEN at position 5" in result.output and "anchor" in result.output


def test_verify_head_needs_the_position_as_well_as_the_hash(app, sealed):
    result = cli(app, "verify", "--head", sealed[2]["hash"])
    assert result.exit_code == 2 and "POSITION:HASH" in result.output
    assert cli(app, "verify", "--head", f"3:{sealed[2]['hash']}").exit_code == 0
    result = cli(app, "verify", "--head", f"4:{sealed[2]['hash']}")     # a real hash, at another place
    assert result.exit_code == 1 and "BROKEN at position 4" in result.output


def test_anchor_to_an_http_endpoint(make_app, sealed):
    sink = FakeHTTP()
    try:
        app = make_app(AUDIT_ANCHOR_URL=sink.url + "/anchors")
        assert cli(app, "anchor").exit_code == 0
        (request,) = sink.requests
        assert (request.method, request.path) == ("POST", "/anchors")
        assert (request.json["position"], request.json["hash"]) == (5, sealed[-1]["hash"])
        sink.fail(503)
        result = cli(app, "anchor")
        assert result.exit_code == 1 and "anchor endpoint answered 503" in result.output
    finally:
        sink.stop()


def test_anchor_with_no_sink_says_what_to_set(app, sealed):
    result = cli(app, "anchor")
    assert result.exit_code == 1 and "set AUDIT_ANCHOR_PATH or AUDIT_ANCHOR_URL" in result.output


def test_the_worker_anchors_every_period(clean, client, db, tmp_path, sealed):
    path = tmp_path / "anchors.jsonl"
    with ProcessGroup(str(tmp_path)) as group:
        group.start_worker(dict(clean, AUDIT_ANCHOR_PATH=str(path), AUDIT_ANCHOR_SECONDS="1"),
                           queue_config=queue_config(tmp_path))
        wait_until(lambda: path.exists() and len(path.read_text().splitlines()) >= 2, 20,
                   message="two anchors from the worker")
    anchors = [json.loads(line) for line in path.read_text().splitlines()]
    assert anchors[-1]["position"] == 5 and anchors[-1]["hash"] == sealed[-1]["hash"]
