"""Twilio faults: every answer SPEC §5.3 names, one at a time, then mixed.
Each test ends with the same checks: every request has one result, and no
identity was created twice."""
import os
import subprocess
import time

import pytest

from conftest import wait_for, API_SECRET, SLOW


def assert_once(env, identities):
    st = env.twilio.stats()
    assert st["duplicate_creates"] == {}, st["duplicate_creates"]
    for i in identities:
        assert st["creates_by_identity"].get(i) == 1, (i, st["creates_by_identity"].get(i))
    assert st["violation_count"] == 0, st["violations"]


@pytest.mark.parametrize("fault", ["503", "500", "502", "504", "429", "50063", "drop", "50213"])
def test_retryable_fault_then_created(stack, fault):
    stack.twilio.control(next=[fault, fault])
    stack.push({"Identity": "f-" + fault})
    r = stack.wait_results(1)[0]
    assert r["status"] == "created", r
    assert r["attempts"] == 3
    s = stack.d.stats()
    assert s["retries"] == 2 and s["http_requests"] == 3
    if fault in ("429", "50063"):
        assert s["rate_limited"] == 2
    assert_once(stack, ["f-" + fault])


def test_retry_after_is_honoured(stack):
    stack.twilio.control(next=["429"], retry_after=1)
    t0 = time.monotonic()
    stack.push({"Identity": "patient"})
    r = stack.wait_results(1)[0]
    assert r["status"] == "created" and r["attempts"] == 2
    assert time.monotonic() - t0 >= 1.0


def test_lost_response_becomes_exists(stack):
    """Created at Twilio but the answer never came: the retry meets 409
    50201, the user is fetched, and it was created exactly once."""
    stack.twilio.control(next=["lost"])
    stack.push({"Identity": "lost@example.com", "FriendlyName": "L"})
    r = stack.wait_results(1)[0]
    assert r["status"] == "exists", r
    assert r["user"]["identity"] == "lost@example.com"
    assert r["attempts"] == 3          # lost create, 409 create, fetch
    assert_once(stack, ["lost@example.com"])


def test_rejected_request_fails_and_frees_identity(stack):
    stack.twilio.control(next=["400"])
    stack.push({"Identity": "rejected"})
    r = stack.wait_results(1)[0]
    assert r["status"] == "failed"
    assert r["error"]["code"] == "twilio_rejected"
    assert r["error"]["twilio_code"] == 21000
    assert r["error"]["http_status"] == 400
    assert r["error"]["message"]
    assert r["attempts"] == 1 and "user" not in r
    assert stack.r.llen("usergate:dead") == 1
    assert stack.r.exists("usergate:identity:rejected") == 0
    # Free again: the next request for it creates the user.
    stack.push({"Identity": "rejected"})
    r2 = stack.wait_results(2)[1]
    assert r2["status"] == "created"
    assert stack.d.stats()["failed"] == 1


def test_twilio_validation_error_is_rejected(stack):
    stack.twilio.control(reserved_prefix="sys-")
    stack.push({"Identity": "sys-reserved"})
    r = stack.wait_results(1)[0]
    assert r["status"] == "failed" and r["error"]["twilio_code"] == 50203


@pytest.mark.parametrize("fmt", ["json", "msgpack"])
@pytest.mark.parametrize("field", ["sid", "identity"])
def test_a_record_that_is_not_the_user_is_not_stored(env, field, fmt):
    """A 201 (or a fetched 200) whose sid is not US + 32 hex digits, or
    whose identity is another, is failed/twilio_invalid_answer at once:
    no retry, no user record stored, the Identity free again."""
    env.start_redis()
    env.start_twilio()
    env.daemon(extra={"results.format": fmt}).wait_healthy()
    env.twilio.control(bad_answer=field)
    env.push({"Identity": "spoiled"})
    r = env.wait_results(1)[0]
    assert r["status"] == "failed", r
    assert r["error"]["code"] == "twilio_invalid_answer" and r["error"]["http_status"] == 201
    assert r["attempts"] == 1 and "user" not in r
    assert not env.r.exists("usergate:user:spoiled")
    assert not env.r.exists("usergate:identity:spoiled")
    assert env.r.llen("usergate:dead") == 1
    # The user exists at Twilio now: the next request fetches it, and
    # the fetched record is checked the same way.
    env.push({"Identity": "spoiled"})
    r = env.wait_results(2)[1]
    assert r["status"] == "failed" and r["error"]["code"] == "twilio_invalid_answer", r
    assert r["error"]["http_status"] == 200 and r["attempts"] == 2
    assert not env.r.exists("usergate:user:spoiled")
    env.twilio.control(bad_answer=None)
    env.push({"Identity": "spoiled"})
    r = env.wait_results(3)[2]
    assert r["status"] == "exists" and r["user"]["identity"] == "spoiled"
    assert r["user"]["sid"].startswith("US") and len(r["user"]["sid"]) == 34
    assert env.r.exists("usergate:user:spoiled")


def test_retries_exhausted(env):
    env.start_redis()
    env.start_twilio()
    env.daemon(extra={"retry.max_attempts": 3})
    env.twilio.control(fail_5xx=1.0)
    env.push({"Identity": "doomed"})
    r = env.wait_results(1)[0]
    assert r["status"] == "failed"
    assert r["error"]["code"] == "retries_exhausted"
    assert r["error"]["twilio_code"] == 20503 and r["error"]["http_status"] == 503
    assert r["attempts"] == 3
    assert env.r.llen("usergate:dead") == 1
    assert env.twilio.stats()["users"] == 0


def test_twilio_unreachable_retries_then_fails(env):
    env.start_redis()
    env.twilio = None
    d = env.daemon(extra={"retry.max_attempts": 2, "twilio.connect_timeout_ms": 500})
    env.push({"Identity": "nowhere"})
    r = env.wait_results(1)[0]
    assert r["status"] == "failed" and r["error"]["code"] == "retries_exhausted"
    assert "http_status" not in r["error"]
    assert d.stats()["retries"] == 1


@pytest.mark.parametrize("switch,reason", [("auth_down", "HTTP 401"), ("forbidden", "HTTP 403")])
def test_credentials_refused_pauses_then_resumes(stack, switch, reason):
    stack.twilio.control(**{switch: True})
    stack.push({"Identity": "waits-1"})
    wait_for(lambda: stack.d.status("health").startswith("degraded"), what="degraded")
    health = stack.d.status("health")
    assert reason in health and "credentials" in health
    # Intake stops: its waiting BLMOVE is ended (CLIENT UNBLOCK), later
    # requests stay queued, nothing fails or dies.
    wait_for(lambda: stack.r.info("clients")["blocked_clients"] == 0, what="intake unblocked")
    stack.push({"Identity": "waits-2"}, {"Identity": "waits-3"})
    time.sleep(0.5)
    assert stack.r.llen("usergate:requests") == 2
    assert stack.r.llen("usergate:results") == 0
    assert stack.r.llen("usergate:dead") == 0
    assert stack.d.log().count("twilio refuses this daemon") == 1
    stack.twilio.control(**{switch: False})
    res = stack.wait_results(3, timeout=30)
    assert all(r["status"] == "created" for r in res)
    assert stack.d.status("health") == "ok"
    assert_once(stack, ["waits-1", "waits-2", "waits-3"])


def test_refusal_sends_nothing_but_the_probe(env):
    """Refused mid-backlog, the daemon sends only what was already on the
    wire (at most max_inflight requests) and its probes: every request it
    holds waits, and none is failed or dead-lettered."""
    env.start_redis()
    env.start_twilio()
    d = env.daemon(extra={"twilio.max_inflight": 16})
    d.wait_healthy()
    env.twilio.control(latency_ms=20)
    ids = ["refused-%03d" % i for i in range(500)]
    env.push(*[{"Identity": i} for i in ids])
    wait_for(lambda: env.r.llen("usergate:results") >= 50, timeout=30,
             what="the backlog under way")
    env.twilio.control(auth_down=True)
    wait_for(lambda: d.status("health").startswith("degraded"), what="degraded")
    time.sleep(5)
    # While auth_down is set the fake answers every API request 401.
    refused = sum(n for k, n in env.twilio.stats()["counts"].items() if k.endswith(" 401"))
    assert refused <= 16 + 5, (refused, env.twilio.stats()["counts"])
    assert env.r.llen("usergate:dead") == 0
    assert d.stats()["failed"] == 0
    env.twilio.control(auth_down=False)
    res = env.wait_results(500, timeout=60)
    assert len(res) == 500
    assert all(r["status"] == "created" for r in res), \
        [r for r in res if r["status"] != "created"][:3]
    assert sorted(r["identity"] for r in res) == ids
    assert env.r.llen("usergate:dead") == 0 and d.stats()["failed"] == 0
    assert d.status("health") == "ok"
    assert_once(env, ids)


def test_wrong_secret_is_refused_and_never_logged(env):
    env.start_redis()
    env.start_twilio()
    d = env.daemon(secret="not-the-right-one")
    env.push({"Identity": "x"})
    wait_for(lambda: "401" in d.status("health"), what="degraded")
    stats = d.status("show stats")
    assert "not-the-right-one" not in stats
    assert "not-the-right-one" not in d.log()
    assert API_SECRET not in d.log()


def test_mixed_faults_exactly_once(env):
    """A storm of faults over many users: each created exactly once, each
    request answered once."""
    env.start_redis()
    env.start_twilio()
    env.daemon(extra={"twilio.max_inflight": 16, "retry.max_attempts": 30})
    env.twilio.control(seed=7, fail_5xx=0.1, rate_429=0.1, drop=0.05, lost_response=0.1,
                       conflict_50213=0.05)
    ids = ["mix%d@example.com" % i for i in range(150)]
    env.push(*[{"Identity": i} for i in ids])
    env.push(*[{"Identity": i} for i in ids[:30]])      # duplicates on top
    res = env.wait_results(180, timeout=120)
    assert len(res) == 180
    assert all(r["status"] in ("created", "exists", "duplicate") for r in res), \
        [r for r in res if r["status"] not in ("created", "exists", "duplicate")][:3]
    by = env.by_identity(res)
    assert sorted(by) == sorted(ids)
    assert_once(env, ids)
    assert env.r.llen("usergate:processing:ug") == 0
    assert env.r.llen("usergate:dead") == 0


def make_cert(dirpath, cn="localhost"):
    key = os.path.join(dirpath, "key.pem")
    cert = os.path.join(dirpath, "cert.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=" + cn, "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                    "-keyout", key, "-out", cert], check=True, capture_output=True)
    return cert, key


def test_tls_untrusted_then_trusted_with_ca_file(env):
    env.start_redis()
    cert, key = make_cert(env.dir)
    env.start_twilio(tls=(cert, key))
    d = env.daemon()
    env.push({"Identity": "tls-user"})
    wait_for(lambda: "TLS" in d.status("health"), what="degraded for TLS")
    assert env.r.llen("usergate:results") == 0
    assert env.twilio.stats()["requests"] == 0
    # The operator adds the private CA and reloads: it resumes by itself.
    d.extra["twilio.ca_file"] = cert
    d.write_config()
    assert d.status("reload") == "ok"
    r = env.wait_results(1, timeout=90)[0]
    assert r["status"] == "created"
    assert d.status("health") == "ok"


def test_tls_host_is_verified(env):
    """A certificate from a trusted CA but for another name is refused."""
    env.start_redis()
    cert, key = make_cert(env.dir, cn="elsewhere")
    # Re-issue without the IP SAN: the name no longer matches.
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=elsewhere.example", "-keyout", key, "-out", cert],
                   check=True, capture_output=True)
    env.start_twilio(tls=(cert, key))
    d = env.daemon(extra={"twilio.ca_file": cert})
    env.push({"Identity": "tls-name"})
    wait_for(lambda: "TLS" in d.status("health"), what="degraded for TLS")
    assert env.twilio.stats()["requests"] == 0


def test_fixed_secret_takes_effect_on_reload(env):
    """Credentials refused; the operator fixes the secret file and reloads:
    the request waiting for it goes through, with the new credentials."""
    env.start_redis()
    env.start_twilio()
    d = env.daemon(secret="stale-secret")
    env.push({"Identity": "after-rotation"})
    wait_for(lambda: "401" in d.status("health"), what="degraded")
    with open(d.secret_file, "w") as f:
        f.write(API_SECRET + "\n")
    assert d.status("reload") == "ok"
    r = env.wait_results(1, timeout=90)[0]
    assert r["status"] == "created"
    assert d.status("health") == "ok"
    assert "stale-secret" not in d.log()


def test_reload_probes_at_once(env):
    """Refused long enough for the probe interval to reach 8 s (probes at
    1, 3 and 7 s): a reload that fixes the secret is tried at once, not at
    the end of that interval."""
    env.start_redis()
    env.start_twilio()
    d = env.daemon(secret="stale-secret")
    env.push({"Identity": "probed-now"})
    wait_for(lambda: "401" in d.status("health"), what="degraded")
    time.sleep(7.5)
    with open(d.secret_file, "w") as f:
        f.write(API_SECRET + "\n")
    t0 = time.monotonic()
    assert d.status("reload") == "ok"
    r = env.wait_results(1, timeout=30)[0]
    assert r["status"] == "created"
    assert time.monotonic() - t0 < 3 * SLOW
    assert d.status("health") == "ok"
