"""The pipeline end to end: intake from Redis, validation, dedup, results."""
import json
import socket
import time

import msgpack
import pytest

from conftest import SLOW, wait_for, decode

USER_FIELDS = {"sid", "account_sid", "chat_service_sid", "role_sid", "identity",
               "friendly_name", "attributes", "is_online", "is_notifiable",
               "date_created", "date_updated", "url", "links"}
RESULT_KEYS = {"request_id", "identity", "status", "user", "error", "attempts",
               "source", "received_at", "completed_at"}


def test_happy_path_json_and_msgpack(stack):
    stack.push({"Identity": "alice@example.com", "FriendlyName": "Alice",
                "Attributes": '{"team": "a"}', "RequestId": "req-1"})
    stack.push({"identity": "bob", "friendly_name": "Bob", "attributes": {"n": 1}}, fmt="msgpack")
    res = stack.wait_results(2)
    by = {r["identity"]: r for r in res}
    a = by["alice@example.com"]
    assert a["status"] == "created"
    assert a["request_id"] == "req-1"
    assert a["attempts"] == 1 and a["source"] == "redis"
    assert set(a) <= RESULT_KEYS and "error" not in a
    assert set(a["user"]) == USER_FIELDS
    assert a["user"]["friendly_name"] == "Alice"
    assert json.loads(a["user"]["attributes"]) == {"team": "a"}
    assert a["user"]["is_online"] is None and isinstance(a["user"]["links"], dict)
    assert a["received_at"].endswith("Z") and len(a["received_at"]) == 24
    b = by["bob"]
    assert b["status"] == "created" and len(b["request_id"]) == 32
    assert json.loads(b["user"]["attributes"]) == {"n": 1}
    # Stored state: the record, the dedup key with its TTL, nothing left over.
    rec = json.loads(stack.r.get("usergate:user:alice@example.com"))
    assert rec["sid"] == a["user"]["sid"]
    assert stack.r.get("usergate:identity:alice@example.com") == b"done"
    assert 86000 < stack.r.ttl("usergate:identity:alice@example.com") <= 86400
    assert stack.r.llen("usergate:processing:ug") == 0
    assert stack.r.llen("usergate:dead") == 0
    st = stack.twilio.stats()
    assert st["creates_by_identity"] == {"alice@example.com": 1, "bob": 1}
    assert st["violation_count"] == 0, st["violations"]
    ua = st["user_agents"][0]
    assert ua.startswith("usergate/0.1.0 (Linux ") and " libcurl/" in ua
    s = stack.d.stats()
    assert (s["received"], s["created"], s["http_requests"]) == (2, 2, 2)


def test_sequential_duplicate_answers_from_redis(stack):
    stack.push({"Identity": "carol"})
    first = stack.wait_results(1)[0]
    stack.push({"Identity": "carol", "FriendlyName": "other"})
    res = stack.wait_results(2)
    dup = res[1]
    assert dup["status"] == "duplicate"
    assert dup["attempts"] == 0
    assert dup["user"] == first["user"]
    assert stack.twilio.stats()["requests"] == 1
    assert stack.d.stats()["duplicate"] == 1


def test_concurrent_duplicates_one_create(stack):
    stack.twilio.control(latency_ms=300)
    stack.push(*[{"Identity": "dave", "RequestId": "r%d" % i} for i in range(20)])
    res = stack.wait_results(20)
    statuses = sorted(r["status"] for r in res)
    assert statuses == ["created"] + ["duplicate"] * 19
    sids = {r["user"]["sid"] for r in res}
    assert len(sids) == 1
    assert {r["request_id"] for r in res} == {"r%d" % i for i in range(20)}
    st = stack.twilio.stats()
    assert st["creates_by_identity"] == {"dave": 1}
    assert st["requests"] == 1


INVALID = [
    (b"\xc1", "malformed"),
    (b"not json or msgpack", "malformed"),
    (b'{"Identity": "x"', "malformed"),
    (msgpack.packb([1, 2]), "malformed"),
    (b'{"Identity": "x", "Identity": "y"}', "malformed"),
    (json.dumps({"Identity": "x", "Bogus": 1}).encode(), "unknown_field"),
    (json.dumps({"Identity": 12}).encode(), "bad_type"),
    (json.dumps({"Identity": "x", "WebhookEnabled": "yes"}).encode(), "bad_type"),
    (json.dumps({"FriendlyName": "x"}).encode(), "missing_identity"),
    (json.dumps({"Identity": ""}).encode(), "missing_identity"),
    (json.dumps({"Identity": "é" * 257}).encode(), "identity_too_long"),
    (json.dumps({"Identity": "US" + "ab" * 16}).encode(), "identity_is_sid"),
    (msgpack.packb({"Identity": b"\xff\xfe"}, use_bin_type=False), "bad_utf8"),
    (json.dumps({"Identity": "x", "FriendlyName": "n" * 257}).encode(), "friendly_name_too_long"),
    (json.dumps({"Identity": "x", "Attributes": "[1]"}).encode(), "attributes_not_json"),
    (json.dumps({"Identity": "x", "Attributes": "{nope"}).encode(), "attributes_not_json"),
    (json.dumps({"Identity": "x", "Attributes": json.dumps({"k": "v" * 16400})}).encode(),
     "attributes_too_long"),
    (json.dumps({"Identity": "x", "RoleSid": "RL123"}).encode(), "bad_role_sid"),
    (json.dumps({"Identity": "x", "RequestId": "r" * 129}).encode(), "bad_request_id"),
    (b"{" + b" " * (64 * 1024) + b"}", "too_large"),
]


def test_every_invalid_case_and_the_others_go_on(stack):
    for raw, _ in INVALID:
        stack.push(raw)
    stack.push({"Identity": "survivor"})
    res = stack.wait_results(len(INVALID) + 1)
    got = [(r.get("status"), r.get("error", {}).get("code")) for r in res]
    # Order of results is completion order; invalid ones complete in order.
    invalid = [g for g in got if g[0] == "invalid"]
    assert invalid == [("invalid", code) for _, code in INVALID]
    for r in res:
        if r["status"] == "invalid":
            assert r["attempts"] == 0
            assert r["error"]["message"], r
            assert "user" not in r
    assert ("created", None) in got
    dead = [decode(x) for x in stack.r.lrange("usergate:dead", 0, -1)]
    assert len(dead) == len(INVALID)
    assert all(set(d) == {"request", "result"} for d in dead)
    assert stack.twilio.stats()["requests"] == 1
    s = stack.d.stats()
    assert s["invalid"] == len(INVALID) and s["received"] == len(INVALID) + 1
    assert s["dead"] == len(INVALID)


def test_identity_is_case_sensitive_and_escaped_in_paths(stack):
    ids = ["Eve", "eve", "a/b?c#d", "名前 with space", "100%+x@y"]
    stack.push(*[{"Identity": i} for i in ids])
    res = stack.wait_results(len(ids))
    assert sorted(r["identity"] for r in res) == sorted(ids)
    assert all(r["status"] == "created" for r in res)
    # Now make the fetch path run: forget our dedup state, push again.
    for i in ids:
        stack.r.delete("usergate:identity:" + i)
    stack.push(*[{"Identity": i} for i in ids])
    res = stack.wait_results(2 * len(ids))[len(ids):]
    assert all(r["status"] == "exists" for r in res), res
    assert {r["identity"]: r["user"]["identity"] for r in res} == {i: i for i in ids}
    assert stack.twilio.stats()["violation_count"] == 0


def test_reply_to_and_events(stack):
    sub = stack.r.pubsub()
    sub.subscribe("usergate:events")
    wait_for(lambda: sub.get_message(timeout=0.1), what="subscribe confirmation")
    stack.push({"Identity": "frank", "ReplyTo": "usergate-reply:frank"})
    msg = wait_for(lambda: sub.get_message(timeout=0.1), what="event")
    ev = decode(msg["data"])
    assert ev["identity"] == "frank" and ev["status"] == "created"
    assert 3500 < stack.r.ttl("usergate-reply:frank") <= 3600
    reply = decode(stack.r.brpop("usergate-reply:frank", 10)[1])
    assert reply == ev
    sub.close()


def test_reply_to_outside_the_reply_prefix_is_forbidden(stack):
    """A ReplyTo naming usergated's own keys or another application's key
    is invalid (reply_to_forbidden) and nothing is written to that key: no
    element, no expiry, also when the request is invalid for another
    reason.  The request list keeps no expiry and receives no result."""
    r = stack.r
    r.set("app:session:1", "v")
    r.rpush("app:list", "mine")
    stack.push({"Identity": "rt1", "ReplyTo": "usergate:requests"},
               {"Identity": "rt2", "ReplyTo": "usergate:rate"},
               {"Identity": "rt3", "ReplyTo": "app:session:1"},
               {"Identity": "rt4", "ReplyTo": "app:list"},
               {"ReplyTo": "usergate:recoveries"})
    res = stack.wait_results(5)
    by_id = {x.get("identity"): x for x in res}
    for i in ("rt1", "rt2", "rt3", "rt4"):
        assert by_id[i]["status"] == "invalid", by_id[i]
        assert by_id[i]["error"]["code"] == "reply_to_forbidden", by_id[i]
    assert by_id[None]["error"]["code"] == "missing_identity"
    # Nothing arrived on the request list: no sixth result, ever.
    time.sleep(0.5 * SLOW)
    assert r.llen("usergate:results") == 5
    assert r.ttl("usergate:requests") == -2 or r.ttl("usergate:requests") == -1
    assert r.ttl("usergate:rate") == -2 and r.ttl("usergate:recoveries") == -2
    assert r.get("app:session:1") == b"v" and r.ttl("app:session:1") == -1
    assert r.lrange("app:list", 0, -1) == [b"mine"] and r.ttl("app:list") == -1


def test_reply_list_that_existed_without_expiry_keeps_none(stack):
    """A reply list under the prefix that existed without an expiry is not
    usergated's: it gets the reply but no TTL.  One with a TTL (an earlier
    reply's) has it refreshed, and a new one gets it."""
    r = stack.r
    r.rpush("usergate-reply:kept", "old")
    r.rpush("usergate-reply:ours", "old")
    r.expire("usergate-reply:ours", 100)
    stack.push({"Identity": "rk1", "ReplyTo": "usergate-reply:kept"},
               {"Identity": "rk2", "ReplyTo": "usergate-reply:ours"},
               {"Identity": "rk3", "ReplyTo": "usergate-reply:new"})
    stack.wait_results(3)
    assert decode(r.lindex("usergate-reply:kept", 0))["identity"] == "rk1"
    assert r.llen("usergate-reply:kept") == 2 and r.ttl("usergate-reply:kept") == -1
    assert decode(r.lindex("usergate-reply:ours", 0))["identity"] == "rk2"
    assert 3500 < r.ttl("usergate-reply:ours") <= 3600
    assert decode(r.lindex("usergate-reply:new", 0))["identity"] == "rk3"
    assert 3500 < r.ttl("usergate-reply:new") <= 3600


def test_reply_prefix_is_configurable(env):
    """Several prefixes; an entry overlapping [redis] prefix does not open
    usergated's own keys.  Over the request socket too."""
    env.start_redis()
    env.start_twilio()
    d = env.daemon(extra={"results.reply_prefix": "app-a:,usergate:"}).wait_healthy()
    env.push({"Identity": "rp1", "ReplyTo": "app-a:1"},
             {"Identity": "rp2", "ReplyTo": "usergate:results"},
             {"Identity": "rp3", "ReplyTo": "usergate-reply:3"})
    res = {x["identity"]: x for x in env.wait_results(3)}
    assert res["rp1"]["status"] == "created"
    assert decode(env.r.lindex("app-a:1", 0))["identity"] == "rp1"
    assert res["rp2"]["error"]["code"] == "reply_to_forbidden"
    assert res["rp3"]["error"]["code"] == "reply_to_forbidden"
    assert env.r.ttl("usergate:results") == -1 and not env.r.exists("usergate-reply:3")
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10 * SLOW)
    s.connect(d.socket)
    s.sendall(json.dumps({"Identity": "rp4", "ReplyTo": "usergate:events"}).encode() + b"\n")
    answer = json.loads(s.makefile().readline())
    s.close()
    assert answer["status"] == "invalid" and answer["error"]["code"] == "reply_to_forbidden"
    assert not env.r.exists("usergate:events")


def test_a_failing_command_spares_the_rest_of_the_batch(stack):
    """A ReplyTo key of the wrong type fails its own LPUSH and nothing else:
    the result is still stored, published and pushed, the request leaves
    the processing list, and the other results of the batch are whole."""
    stack.r.set("usergate-reply:notalist", "a string")
    stack.push({"Identity": "wt1", "ReplyTo": "usergate-reply:notalist"},
               {"Identity": "wt2", "ReplyTo": "usergate-reply:wt2"})
    res = {r["identity"]: r for r in stack.wait_results(2)}
    assert res["wt1"]["status"] == "created" and res["wt2"]["status"] == "created"
    assert stack.r.get("usergate:identity:wt1") == b"done"
    assert stack.r.get("usergate:user:wt1") is not None
    assert decode(stack.r.rpop("usergate-reply:wt2"))["identity"] == "wt2"
    assert stack.r.get("usergate-reply:notalist") == b"a string"
    wait_for(lambda: stack.r.llen("usergate:processing:" + stack.daemons[0].instance_id) == 0,
             what="processing list empty")
    wait_for(lambda: "WRONGTYPE" in stack.daemons[0].log(), what="the failure logged")
    assert 'msg="redis: result transaction failed"' not in stack.daemons[0].log()


def test_webhook_header_and_form(stack):
    stack.push({"Identity": "g1", "WebhookEnabled": False},
               {"Identity": "g2", "WebhookEnabled": True, "RoleSid": "RL" + "0" * 32},
               {"Identity": "g3"})
    stack.wait_results(3)
    st = stack.twilio.stats()
    assert st["webhook_headers"] == {"false": 1, "true": 1}
    assert st["violation_count"] == 0, st["violations"]


def test_connections_are_reused(stack):
    for i in range(15):
        stack.push({"Identity": "seq%d" % i})
        stack.wait_results(i + 1)
    assert stack.twilio.stats()["connections"] <= 2


def test_results_list_is_trimmed(env):
    env.start_redis()
    env.start_twilio()
    env.daemon(extra={"results.results_max": 5})
    env.push(*[{"Identity": "t%d" % i} for i in range(8)])
    wait_for(lambda: env.daemons[0].stats()["created"] == 8, what="8 created")
    assert env.r.llen("usergate:results") == 5


def test_msgpack_results(env):
    env.start_redis()
    env.start_twilio()
    env.daemon(extra={"results.format": "msgpack"})
    env.push({"Identity": "m1"})
    env.wait_results(1)
    raw = env.r.lindex("usergate:results", 0)
    assert raw[:1] != b"{"
    res = msgpack.unpackb(raw, raw=False)
    assert res["status"] == "created" and res["user"]["is_online"] is None
    rec = msgpack.unpackb(env.r.get("usergate:user:m1"), raw=False)
    assert rec["identity"] == "m1"


def test_a_proxy_in_the_environment_is_used(env):
    """usergated tells libcurl "no proxy" once when the environment names
    none (src/http.c); when it names one, every request still goes through
    it.  The base URL cannot resolve: only the proxy (the fake) can answer."""
    env.start_redis()
    env.start_twilio()
    d = env.daemon(extra={"twilio.base_url": "http://twilio-via-proxy.invalid"},
                   env={"http_proxy": env.twilio.url})
    d.wait_healthy()
    env.push({"Identity": "proxied"})
    r = env.wait_results(1)[0]
    assert r["status"] == "created", r
    assert env.twilio.stats()["creates_by_identity"] == {"proxied": 1}


def test_service_sid_uses_service_paths(env):
    env.start_redis()
    env.start_twilio()
    sid = "IS" + "1234abcd" * 4
    env.daemon(extra={"twilio.service_sid": sid})
    env.push({"Identity": "svc-user"})
    r = env.wait_results(1)[0]
    assert r["status"] == "created"
    assert r["user"]["chat_service_sid"] == sid
    env.r.delete("usergate:identity:svc-user")
    env.push({"Identity": "svc-user"})
    r = env.wait_results(2)[1]
    assert r["status"] == "exists" and r["user"]["chat_service_sid"] == sid
    assert env.twilio.stats()["violation_count"] == 0


@pytest.mark.parametrize("mode", ["fetch", "update"])
def test_on_exists(env, mode):
    env.start_redis()
    env.start_twilio()
    env.daemon(extra={"twilio.on_exists": mode})
    env.push({"Identity": "henry", "FriendlyName": "Old"})
    env.wait_results(1)
    env.r.delete("usergate:identity:henry")
    env.push({"Identity": "henry", "FriendlyName": "New", "Attributes": {"a": 1}})
    r = env.wait_results(2)[1]
    if mode == "fetch":
        assert r["status"] == "exists"
        assert r["user"]["friendly_name"] == "Old"
        assert r["attempts"] == 2
    else:
        assert r["status"] == "updated"
        assert r["user"]["friendly_name"] == "New"
        assert json.loads(r["user"]["attributes"]) == {"a": 1}
        assert r["attempts"] == 3
        assert env.daemons[0].stats()["updated"] == 1
    assert json.loads(env.r.get("usergate:user:henry"))["friendly_name"] == r["user"]["friendly_name"]
    # Same fields: no update call.
    env.r.delete("usergate:identity:henry")
    before = env.twilio.stats()["requests"]
    env.push({"Identity": "henry", "FriendlyName": r["user"]["friendly_name"]})
    r3 = env.wait_results(3)[2]
    assert r3["status"] == "exists"
    assert env.twilio.stats()["requests"] == before + 2
