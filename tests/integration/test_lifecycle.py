"""Start, stop, crash, recover, reload: SPEC §5.1, §5.5 and issue 4's
guarantees, each ending with "every request has a result and every
identity was created exactly once"."""
import json
import os
import pwd
import random
import signal
import subprocess
import time

import pytest

from conftest import wait_for, USERGATED, SLOW, API_KEY, WRAP


def assert_exactly_once(env, identities, results):
    st = env.twilio.stats()
    assert st["duplicate_creates"] == {}, st["duplicate_creates"]
    for i in identities:
        assert st["creates_by_identity"].get(i) == 1, i
    got = {r["identity"] for r in results}
    assert set(identities) <= got


# ------------------------------------------------------------------ config

def run_check(conf_text, tmp_path, extra_files=()):
    path = tmp_path / "u.conf"
    path.write_text(conf_text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWILIO_")}
    return subprocess.run([USERGATED, "-n", "-c", str(path)], capture_output=True, text=True,
                          env=env, timeout=30)


def test_config_check(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("abc\n")
    secret.chmod(0o600)
    good = "[twilio]\napi_key = %s\napi_secret_file = %s\n" % (API_KEY, secret)
    p = run_check(good, tmp_path)
    assert p.returncode == 0, p.stderr
    p = run_check(good + "bogus = 1\n", tmp_path)
    assert p.returncode == 2
    assert "u.conf:4" in p.stderr and "bogus" in p.stderr
    p = run_check(good + "max_inflight = many\n", tmp_path)
    assert p.returncode == 2 and "max_inflight" in p.stderr
    p = run_check("[twilio]\nbase_url = https://conversations.twilio.com\n", tmp_path)
    assert p.returncode == 2 and "credentials" in p.stderr
    secret.chmod(0o644)
    p = run_check(good, tmp_path)
    assert p.returncode == 2 and "secret" in p.stderr and "abc" not in p.stderr
    p = subprocess.run([USERGATED, "-x"], capture_output=True, text=True)
    assert p.returncode == 2
    p = subprocess.run([USERGATED, "-V"], capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout.startswith("usergated ")


def test_config_check_reads_credentials_beside_the_config(tmp_path):
    """`usergated -n -c /etc/usergate/usergate.conf`, as the docs say, checks
    the credentials the unit's LoadCredential= lines would give: outside
    systemd they are read from the configuration file's directory."""
    conf = "[twilio]\napi_key = %s\n" % API_KEY
    p = run_check(conf, tmp_path)
    assert p.returncode == 2 and "credentials" in p.stderr, p.stderr
    secret = tmp_path / "twilio-api-secret"
    secret.write_text("abc\n")
    secret.chmod(0o644)
    p = run_check(conf, tmp_path)
    assert p.returncode == 2 and "twilio-api-secret" in p.stderr, p.stderr
    assert "abc" not in p.stderr
    secret.chmod(0o400)
    p = run_check(conf, tmp_path)
    assert p.returncode == 0, p.stderr
    # A redis-password file there is checked too.
    (tmp_path / "redis-password").write_text("pw")
    (tmp_path / "redis-password").chmod(0o644)
    p = run_check(conf, tmp_path)
    assert p.returncode == 2 and "redis-password" in p.stderr, p.stderr
    # $CREDENTIALS_DIRECTORY, when set, still wins.
    other = tmp_path / "creds"
    other.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWILIO_")}
    env["CREDENTIALS_DIRECTORY"] = str(other)
    p = subprocess.run([USERGATED, "-n", "-c", str(tmp_path / "u.conf")],
                       capture_output=True, text=True, env=env, timeout=30)
    assert p.returncode == 2 and "credentials" in p.stderr, p.stderr


def test_fifo_secret_file_is_refused_at_once(tmp_path):
    """A FIFO named as the secret file: opened blocking it would wait for a
    writer forever; it is refused at once as not a regular file."""
    fifo = tmp_path / "secret-fifo"
    os.mkfifo(fifo, 0o600)
    t0 = time.monotonic()
    p = run_check("[twilio]\napi_key = %s\napi_secret_file = %s\n" % (API_KEY, fifo),
                  tmp_path)
    assert time.monotonic() - t0 < 10 * SLOW
    assert p.returncode == 2, p.stderr
    assert "u.conf:3" in p.stderr and "api_secret_file" in p.stderr
    assert "not a regular file" in p.stderr, p.stderr


def test_reload_to_a_fifo_secret_keeps_the_daemon_responsive(stack):
    """The same FIFO given on reload: refused with its reason while the
    loop goes on, the old credentials stay."""
    d = stack.d
    fifo = os.path.join(d.dir, "secret-fifo")
    os.mkfifo(fifo, 0o600)
    d.extra["twilio.api_secret_file"] = fifo
    d.write_config()
    answer = d.status("reload", timeout=10)
    assert answer.startswith("error: ") and "api_secret_file" in answer, answer
    assert "not a regular file" in answer, answer
    assert d.status("health") == "ok"
    assert "reload refused" in d.log()
    stack.push({"Identity": "after-fifo"})
    assert stack.wait_results(1)[0]["status"] == "created"


def test_daemon_is_not_dumpable(env):
    """No core dump, ptrace or /proc/PID/mem of the daemon's own user may
    read its secrets.  Seen from outside, a process that made itself
    non-dumpable has its /proc/PID files owned by root instead of its user
    (proc(5)); core_pattern is global and is not touched.  So the daemon
    runs here as nobody, and its /proc/PID/environ must belong to root."""
    if os.geteuid() != 0:
        pytest.skip("needs root to start the daemon as another user")
    nobody = pwd.getpwnam("nobody")
    env.start_redis()
    d = env.daemon(start=False)
    for path in (env.dir, d.dir, d.conf, d.secret_file):
        os.chown(path, nobody.pw_uid, nobody.pw_gid)
    d.logf = open(d.log_path, "a")
    d.proc = subprocess.Popen(WRAP + [USERGATED, "-c", d.conf], stdout=d.logf, stderr=d.logf,
                              env=d.env, user=nobody.pw_uid, group=nobody.pw_gid,
                              extra_groups=[])
    d.procs.append(d.proc)
    wait_for(lambda: d.health_or_none() is not None or d.proc.poll() is not None,
             what="usergated status socket")
    assert d.proc.poll() is None, "usergated exited: " + d.log()
    st = os.stat("/proc/%d/environ" % d.proc.pid)
    assert (st.st_uid, st.st_gid) == (0, 0), \
        "/proc/PID/environ belongs to %d:%d: the daemon is dumpable" % (st.st_uid, st.st_gid)


# ------------------------------------------------------------------ signals

def test_sigterm_finishes_work_in_flight(stack):
    stack.twilio.control(latency_ms=1500)
    stack.push(*[{"Identity": "t%d" % i} for i in range(5)])
    wait_for(lambda: stack.d.stats()["inflight"] == 5, what="5 in flight")
    stack.d.send_signal(signal.SIGTERM)
    assert stack.d.proc.wait(20 * SLOW) == 0
    res = stack.results()
    assert sorted(r["identity"] for r in res) == ["t%d" % i for i in range(5)]
    assert all(r["status"] == "created" for r in res)
    assert stack.r.llen("usergate:processing:ug") == 0
    # Intake stopped: nothing pushed after the signal was taken.
    assert "stopping" in stack.d.log()


def test_sigterm_drain_limit_then_next_start_finishes(stack):
    stack.twilio.control(latency_ms=30000)
    stack.push({"Identity": "slow-1"}, {"Identity": "slow-2"})
    wait_for(lambda: stack.d.stats()["inflight"] == 2, what="2 in flight")
    t0 = time.monotonic()
    stack.d.send_signal(signal.SIGTERM)
    assert stack.d.proc.wait(30 * SLOW) == 0
    took = time.monotonic() - t0
    assert 9 <= took < 20 * SLOW, took
    assert stack.r.llen("usergate:processing:ug") == 2
    assert stack.r.llen("usergate:results") == 0
    stack.twilio.control(latency_ms=0)
    stack.d.start()
    res = stack.wait_results(2, timeout=60)
    assert {r["identity"] for r in res} == {"slow-1", "slow-2"}
    assert all(r["status"] in ("created", "exists") for r in res)
    assert stack.r.llen("usergate:processing:ug") == 0
    assert stack.d.stats()["recovered"] == 2


def test_second_signal_exits_at_once(stack):
    stack.twilio.control(latency_ms=30000)
    stack.push({"Identity": "stuck"})
    wait_for(lambda: stack.d.stats()["inflight"] == 1, what="in flight")
    stack.d.send_signal(signal.SIGTERM)
    wait_for(lambda: "stopping" in stack.d.log(), what="drain started")
    t0 = time.monotonic()
    stack.d.send_signal(signal.SIGINT)
    assert stack.d.proc.wait(10 * SLOW) == 0
    assert time.monotonic() - t0 < 5 * SLOW
    assert stack.r.llen("usergate:processing:ug") == 1


def test_sighup_reload(stack):
    d = stack.d
    d.extra["twilio.max_inflight"] = 7
    d.write_config()
    d.send_signal(signal.SIGHUP)
    wait_for(lambda: d.stats()["max_inflight"] == 7, what="reloaded max_inflight")
    # A key that needs a restart is reported and keeps its old value.
    d.extra["redis.prefix"] = "other:"
    d.write_config()
    d.send_signal(signal.SIGHUP)
    wait_for(lambda: "need a restart" in d.log(), what="restart warning")
    stack.push({"Identity": "after-reload"})
    assert stack.wait_results(1)[0]["status"] == "created"
    # A broken file is refused; the old configuration goes on.
    d.write_config("[twilio]\nmax_inflight = -3\n")
    d.send_signal(signal.SIGHUP)
    wait_for(lambda: "reload refused" in d.log(), what="refusal")
    assert d.stats()["max_inflight"] == 7
    stack.push({"Identity": "still-working"})
    assert stack.wait_results(2)[1]["status"] == "created"


# ------------------------------------------------------------------ recovery

def test_own_processing_list_is_finished_first(env):
    env.start_redis()
    env.start_twilio()
    env.r.lpush("usergate:processing:ug", json.dumps({"Identity": "left-over"}))
    env.r.lpush("usergate:requests", json.dumps({"Identity": "new-one"}))
    d = env.daemon()
    res = env.wait_results(2)
    assert [r["identity"] for r in res] == ["left-over", "new-one"]
    assert d.stats()["recovered"] == 1
    assert env.r.hlen("usergate:recoveries") == 0


def test_poison_request_fails_after_three_recoveries(env):
    env.start_redis()
    env.start_twilio()
    raw = json.dumps({"Identity": "poison"})
    env.r.hset("usergate:recoveries", raw, 2)
    env.r.lpush("usergate:processing:ug", raw)
    env.daemon()
    r = env.wait_results(1)[0]
    assert r["status"] == "failed" and r["error"]["code"] == "retries_exhausted"
    assert "poison" in r["error"]["message"]
    assert env.twilio.stats()["requests"] == 0
    assert env.r.llen("usergate:dead") == 1
    assert env.r.hlen("usergate:recoveries") == 0


def test_takeover_of_a_dead_instance(env):
    env.start_redis()
    env.start_twilio()
    for i in range(3):
        env.r.lpush("usergate:processing:ghost", json.dumps({"Identity": "orphan%d" % i}))
    env.r.sadd("usergate:instances", "ghost")     # registered, heartbeat gone
    d = env.daemon()
    res = env.wait_results(3, timeout=30)
    assert sorted(r["identity"] for r in res) == ["orphan0", "orphan1", "orphan2"]
    assert env.r.exists("usergate:processing:ghost") == 0
    assert d.stats()["recovered"] == 3
    assert not env.r.sismember("usergate:instances", "ghost")


def test_live_instance_list_is_not_taken(env):
    env.start_redis()
    env.start_twilio()
    env.r.lpush("usergate:processing:alive", json.dumps({"Identity": "mine"}))
    env.r.sadd("usergate:instances", "alive")
    env.r.set("usergate:instance:alive", "pid=1 host=elsewhere", ex=60)
    d = env.daemon()
    time.sleep(6)      # one heartbeat period: a takeover would have happened
    assert env.r.llen("usergate:processing:alive") == 1
    assert d.stats()["recovered"] == 0


def test_heartbeat_and_duplicate_instance_id_refused(env):
    env.start_redis()
    env.start_twilio()
    a = env.daemon(name="a", instance_id="same")
    wait_for(lambda: env.r.exists("usergate:instance:same"), what="heartbeat")
    assert 0 < env.r.ttl("usergate:instance:same") <= 15
    b = env.daemon(name="b", instance_id="same", start=False)
    b.start(wait=False)
    assert b.proc.wait(20 * SLOW) == 1
    assert "unique" in b.log() and "instance_id" in b.log()
    assert a.status("health") == "ok"
    # A clean stop removes the heartbeat, so a restart is not refused.
    a.stop()
    assert env.r.exists("usergate:instance:same") == 0
    a.start()


def test_kill9_restart_loses_nothing(env):
    """kill -9 at random moments under load: after the last restart every
    request has a result and every identity was created exactly once."""
    env.start_redis(appendonly=True)
    env.start_twilio()
    env.twilio.control(latency_ms=20)
    d = env.daemon(extra={"twilio.max_inflight": 32})
    ids = ["k%d@example.com" % i for i in range(400)]
    env.push(*[{"Identity": i} for i in ids])
    rnd = random.Random(4)
    for _ in range(4):
        time.sleep(rnd.uniform(0.2, 0.8))
        d.proc.kill()
        d.proc.wait()
        d.start()
    res = env.wait_results(len(ids), timeout=120)
    # Results are at-least-once: a crash between Twilio's answer and the
    # result transaction may answer a request again, as duplicate/exists.
    by = env.by_identity(res)
    assert set(by) == set(ids)
    for i, rs in by.items():
        assert all(r["status"] in ("created", "exists", "duplicate") for r in rs), rs
    assert_exactly_once(env, ids, res)
    wait_for(lambda: env.r.llen("usergate:processing:ug") == 0, what="processing empty")
    assert env.r.llen("usergate:requests") == 0


def test_redis_restarts_lose_nothing(env):
    redis = env.start_redis(appendonly=True)
    env.start_twilio()
    env.twilio.control(latency_ms=50)
    d = env.daemon(extra={"twilio.max_inflight": 16})
    ids = ["rr%d" % i for i in range(200)]
    env.push(*[{"Identity": i} for i in ids])
    for _ in range(2):
        wait_for(lambda: d.stats()["created"] > 0, what="progress")
        time.sleep(0.3)
        redis.stop()
        wait_for(lambda: d.status("health") ==
                 "degraded: redis unreachable: connection refused", what="degraded: redis")
        st = json.loads(d.status("show stats"))
        assert st["redis_connected"] is False and st["queue_depth"] is None
        time.sleep(0.5)
        redis.start()
        wait_for(lambda: d.status("health") == "ok", timeout=30, what="healthy again")
    res = env.wait_results(len(ids), timeout=120)
    assert set(env.by_identity(res)) == set(ids)
    assert_exactly_once(env, ids, res)
    assert d.proc.poll() is None
    wait_for(lambda: env.r.llen("usergate:processing:ug") == 0, what="processing empty")


def test_three_instances_race_duplicates(env):
    env.start_redis()
    env.start_twilio()
    env.twilio.control(latency_ms=30)
    ds = [env.daemon(name="i%d" % n, extra={"twilio.max_inflight": 16}) for n in range(3)]
    ids = ["race%d" % i for i in range(60)]
    # Each identity three times, interleaved, so all instances see each.
    env.push(*[{"Identity": i, "RequestId": "%s-%d" % (i, k)} for k in range(3) for i in ids])
    res = env.wait_results(180, timeout=90)
    by = env.by_identity(res)
    for i in ids:
        st = sorted(r["status"] for r in by[i])
        assert len(st) == 3
        assert st.count("duplicate") >= 2, (i, st)
    assert_exactly_once(env, ids, res)
    # No storm of 409s: at most a handful of creates met an existing user.
    counts = env.twilio.stats()["counts"]
    assert counts.get("POST 409", 0) <= 3, counts
    assert sum(d.stats()["received"] for d in ds) == 180


def test_rate_limit_shared_by_instances(env):
    """Two instances, 6 creates/s over a 2 s window: the fake enforces
    Twilio's window (aps) and must never have to refuse one."""
    env.start_redis()
    env.start_twilio()
    extra = {"twilio.rate_limit": 6, "twilio.rate_window_s": 2}
    env.daemon(name="r1", extra=extra)
    env.daemon(name="r2", extra=extra)
    env.twilio.control(aps=0)
    ids = ["rate%d" % i for i in range(36)]
    t0 = time.monotonic()
    env.push(*[{"Identity": i} for i in ids])
    res = env.wait_results(len(ids), timeout=60)
    took = time.monotonic() - t0
    assert all(r["status"] == "created" for r in res)
    # 36 creates at 12 per 2 s need at least two more windows after the first.
    assert took >= 4.0, took
    zs = env.r.zrange("usergate:rate", 0, -1, withscores=True)
    times = sorted(s for _, s in zs)
    for k in range(len(times)):
        inwin = [t for t in times if times[k] <= t < times[k] + 2000]
        assert len(inwin) <= 12


def test_rate_limit_against_twilio_window(env):
    env.start_redis()
    env.start_twilio()
    env.daemon(extra={"twilio.rate_limit": 10, "twilio.rate_window_s": 5})
    env.twilio.control(aps=10)      # Twilio's own window: 10/s over 5 s
    ids = ["aps%d" % i for i in range(80)]
    env.push(*[{"Identity": i} for i in ids])
    res = env.wait_results(len(ids), timeout=60)
    assert all(r["status"] == "created" for r in res)
    counts = env.twilio.stats()["counts"]
    assert counts.get("POST 429", 0) == 0, counts


def test_claim_of_a_dead_instance_expires(env):
    """An identity claimed by an instance that died mid-create is blocked
    only until the claim's TTL runs out; then it is created once."""
    env.start_redis()
    env.start_twilio()
    env.r.set("usergate:identity:orphaned", "pending:ghost", ex=2)
    env.daemon()
    env.push({"Identity": "orphaned"})
    time.sleep(0.5)
    assert env.r.llen("usergate:results") == 0       # waits for the claim
    r = env.wait_results(1, timeout=20)[0]
    assert r["status"] == "created"
    assert env.twilio.stats()["creates_by_identity"] == {"orphaned": 1}


def test_identities_only_at_debug_level(env):
    env.start_redis()
    env.start_twilio()
    d = env.daemon(extra={"log.level": "info"})
    env.twilio.control(next=["400"])
    env.push({"Identity": "secret.person@example.com"},
             {"Identity": "US" + "ab" * 16})
    env.wait_results(2)
    log = d.log()
    assert "request not done" in log
    assert "secret.person" not in log
    assert "abababab" not in log
