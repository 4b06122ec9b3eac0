"""Redis as production deployments set it up (issue 13, item 1): the
server named by [redis] url, an ACL user with exactly the least privilege
that docs/operations.md documents (the line is read from there, so the
documentation is what is tested), AUTH with a user name, CLIENT SETNAME.
Nothing usergated sends may be refused: the ACL log stays empty but for
CLIENT UNBLOCK, which the documented line leaves out on purpose."""
import json
import os
import subprocess
import urllib.parse

import redis as redislib

from conftest import wait_for, SRCDIR, USERGATED, API_KEY

# Characters a URL must percent-encode, so that decoding is tested too.
ACL_PASSWORD = "acl:p@ss/w?rd#%x"
DONE = ("created", "exists", "updated", "duplicate", "invalid", "failed")


def documented_line(path, unescape=lambda s: s):
    """The one line of path that creates the usergated ACL user."""
    with open(os.path.join(SRCDIR, path)) as f:
        lines = [unescape(line.strip()) for line in f
                 if line.strip().startswith("ACL SETUSER usergated ")]
    assert len(lines) == 1, "%s: %d ACL SETUSER lines" % (path, len(lines))
    return lines[0]


def acl_line():
    return documented_line("docs/operations.md")


def create_acl_user(r, password=ACL_PASSWORD):
    words = acl_line().split()
    assert words.count(">PASSWORD") == 1, words
    r.execute_command(*[">" + password if w == ">PASSWORD" else w for w in words])
    r.acl_log_reset()


def flatten(x):
    if isinstance(x, (list, tuple)):
        for y in x:
            yield from flatten(y)
    elif isinstance(x, bytes):
        yield x.decode()
    elif x is not None:
        yield str(x)


def denials(r):
    """What Redis refused the usergated user, but CLIENT UNBLOCK and the
    CONFIG GET maxmemory-policy tried once a start (docs/operations.md)."""
    out = []
    for e in r.acl_log(count=1000):
        who = e.get("username")
        what = e.get("object")
        if who == "usergated" and what not in ("client|unblock", "client",
                                               "config|get"):
            out.append((e.get("reason"), what, e.get("context")))
    return out


def url_for(redis, password=ACL_PASSWORD, user="usergated"):
    return "redis://%s:%s@127.0.0.1:%d/0" % (
        user, urllib.parse.quote(password, safe=""), redis.port)


def names(r, user="usergated"):
    """The names of user's connections that name themselves (the test's
    own connections do not)."""
    return sorted(c["name"] for c in r.client_list()
                  if c.get("user") == user and c["name"])


def no_noperm(env, d):
    assert "NOPERM" not in d.log(), d.log()
    with open(os.path.join(env.redis.dir, "redis.log")) as f:
        assert "NOPERM" not in f.read()
    assert denials(env.r) == [], denials(env.r)


def test_documented_acl_is_least_privilege(env):
    """The same line in docs/operations.md and usergate.conf(5), and none
    of its commands is @dangerous or @admin."""
    env.start_redis()
    line = acl_line()
    man = documented_line("docs/usergate.conf.5", lambda s: s.replace("\\-", "-"))
    assert man == line
    allowed = [w[1:] for w in line.split() if w.startswith("+")]
    assert "blmove" in allowed and "evalsha" in allowed
    assert not [w for w in line.split() if w.startswith("+@") or w == "allcommands"]
    for cmd in allowed:
        info = list(flatten(env.r.execute_command("COMMAND", "INFO", cmd)))
        assert info, "unknown command %s" % cmd
        assert "@dangerous" not in info and "@admin" not in info, (cmd, info)
    assert "~usergate:*" in line.split() and "~usergate-reply:*" in line.split()
    assert "&usergate:*" in line.split()


def test_least_privilege_user_end_to_end(env):
    env.start_redis()
    env.start_twilio()
    create_acl_user(env.r)
    # host and port point nowhere: the url wins over them.  A rate limit
    # runs the rate window's script too.
    d = env.daemon(extra={"redis.url": url_for(env.redis), "redis.port": 1,
                          "twilio.rate_limit": 1000})
    d.wait_healthy()
    wait_for(lambda: names(env.r) == ["usergated:ug", "usergated:ug"],
             what="both connections named")
    started = [line for line in d.log().splitlines() if "usergated started" in line]
    shown = 'redis="redis://usergated:***@127.0.0.1:%d/0"' % env.redis.port
    assert started and shown in started[0], started

    # Creates, a duplicate, an invalid request with ReplyTo.
    env.push({"Identity": "acl1", "ReplyTo": "usergate-reply:1"},
             {"Identity": "acl2"})
    env.wait_results(2)
    env.push({"Identity": "acl1", "ReplyTo": "usergate-reply:2"},
             {"FriendlyName": "no identity", "ReplyTo": "usergate-reply:3"})
    res = env.wait_results(4)
    assert [r["status"] for r in res[:2]] == ["created", "created"]
    assert sorted(r["status"] for r in res[2:]) == ["duplicate", "invalid"]
    for n in (1, 2, 3):
        assert env.r.llen("usergate-reply:%d" % n) == 1
    assert 0 < env.r.ttl("usergate-reply:3") <= 3600

    # The dead list, its retry, show queue, pause and resume, a reload.
    dead = [json.loads(x) for x in d.status("dead list").splitlines()]
    assert len(dead) == 1 and dead[0]["result"]["status"] == "invalid"
    assert json.loads(d.status("dead retry all")) == {"moved": 1}
    env.wait_results(5)
    q = json.loads(d.status("show queue"))
    assert (q["depth"], q["processing"], q["dead"]) == (0, 0, 1)
    assert d.status("pause") == "ok"
    env.push({"Identity": "while-paused"})
    assert d.status("resume") == "ok"
    assert env.wait_results(6)[5]["status"] == "created"
    # The url needs a restart: a reload keeps the running one and says so.
    d.extra["redis.url"] = url_for(env.redis).replace(str(env.redis.port), "1")
    d.write_config()
    assert d.status("reload") == "ok"
    wait_for(lambda: "keys=redis.url" in d.log(), what="the restart warning")
    env.push({"Identity": "after-reload"})
    assert env.wait_results(7)[6]["status"] == "created"
    d.extra["redis.url"] = url_for(env.redis)
    d.write_config()

    # A clean stop removes the heartbeat (a connection of its own, as the
    # same user); the restart finishes our own list and takes over a dead
    # instance's.
    assert d.stop() == 0
    assert env.r.exists("usergate:instance:ug") == 0
    env.r.lpush("usergate:processing:ug", json.dumps({"Identity": "left-over"}))
    env.r.lpush("usergate:processing:ghost", json.dumps({"Identity": "orphan"}))
    env.r.sadd("usergate:instances", "ghost")
    d.start()
    d.wait_healthy()
    res = env.wait_results(9, timeout=30)
    assert sorted(r["identity"] for r in res[7:]) == ["left-over", "orphan"]
    assert all(r["status"] == "created" for r in res[7:])
    assert d.stats()["recovered"] == 2
    wait_for(lambda: env.r.exists("usergate:processing:ghost") == 0, what="takeover")
    assert env.twilio.stats()["duplicate_creates"] == {}

    # An element over the request limit, taken by BLMOVE on an idle list:
    # its stub replaces it in the processing list (a script of its own).
    env.push(b'{"Identity": "' + b"x" * (65 * 1024) + b'"}')
    assert env.wait_results(10, timeout=30)[9]["error"]["code"] == "too_large"

    no_noperm(env, d)
    assert ACL_PASSWORD not in d.log()
    assert urllib.parse.quote(ACL_PASSWORD, safe="") not in d.log()


def test_username_and_password_file(env):
    """The ACL user from [redis] username and password_file, the url
    without credentials, in database 1 (SELECT); a full rate window (the
    rate script's ZRANGE)."""
    env.start_redis()
    env.start_twilio()
    create_acl_user(env.r)
    pw = os.path.join(env.dir, "redis-password")
    with open(pw, "w") as f:
        f.write(ACL_PASSWORD + "\n")
    os.chmod(pw, 0o600)
    d = env.daemon(instance_id="gw 1", extra={
        "redis.url": "redis://127.0.0.1:%d/1" % env.redis.port,
        "redis.username": "usergated", "redis.password_file": pw,
        "twilio.rate_limit": 1, "twilio.rate_window_s": 1})
    d.wait_healthy()
    # What Redis refuses in a client name (a space) becomes '_'.
    wait_for(lambda: names(env.r) == ["usergated:gw_1", "usergated:gw_1"],
             what="both connections named")
    db1 = redislib.Redis(host="127.0.0.1", port=env.redis.port, db=1)
    db1.lpush("usergate:requests", *[json.dumps({"Identity": i})
                                      for i in ("pf1", "pf1", "pf2")])
    wait_for(lambda: db1.llen("usergate:results") == 3, what="3 results in db 1")
    res = [json.loads(x) for x in db1.lrange("usergate:results", 0, -1)]
    assert sorted(r["status"] for r in res) == ["created", "created", "duplicate"]
    assert env.r.llen("usergate:results") == 0
    assert d.stop() == 0
    assert db1.exists("usergate:instance:gw 1") == 0
    no_noperm(env, d)
    assert ACL_PASSWORD not in d.log()


def test_default_user_connections_are_named(stack):
    """Without ACL (one-argument AUTH or none) the names are set too."""
    wait_for(lambda: names(stack.r, "default") == ["usergated:ug", "usergated:ug"],
             what="both connections named")


def test_wrong_password_is_auth_refused(env):
    env.start_redis()
    env.start_twilio()
    create_acl_user(env.r)
    wrong = "not-the-password"
    d = env.daemon(extra={"redis.url": url_for(env.redis, wrong)})
    wait_for(lambda: d.status("health") == "degraded: redis auth refused",
             what="health: auth refused")
    wait_for(lambda: "redis refuses us" in d.log(), what="the error line")
    lines = [line for line in d.log().splitlines() if "redis refuses us" in line]
    assert len(lines) == 1 and "WRONGPASS" in lines[0], lines
    assert wrong not in d.log()
    # The operator gives the user that password: usergated follows.
    env.r.execute_command("ACL", "SETUSER", "usergated", ">" + wrong)
    wait_for(lambda: d.status("health") == "ok", timeout=30, what="health ok")
    env.push({"Identity": "after-fix"})
    assert env.wait_results(1)[0]["status"] == "created"
    assert wrong not in d.log()


def run_check(tmp_path, redis_lines):
    secret = tmp_path / "secret"
    secret.write_text("abc\n")
    secret.chmod(0o600)
    conf = tmp_path / "u.conf"
    conf.write_text("[twilio]\napi_key = %s\napi_secret_file = %s\n[redis]\n%s" %
                    (API_KEY, secret, redis_lines))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("TWILIO_") and k != "CREDENTIALS_DIRECTORY"}
    return subprocess.run([USERGATED, "-n", "-c", str(conf)], capture_output=True,
                          text=True, env=env, timeout=30)


def test_config_check_of_urls(tmp_path):
    """usergated -n takes the forms ioredis takes and refuses the rest
    with a message that names the key and never the password."""
    for good in ("url = redis://u:p%40ss@redis.example:6380/2\n",
                 "url = redis://[::1]:6379\n",
                 "url = unix:///run/redis/redis.sock?db=3\nhost =\n",
                 "url = rediss://u:p@cache.example:6380/0\n"):
        p = run_check(tmp_path, good)
        assert p.returncode == 0, (good, p.stderr)
    bad = {
        "url = redis://u:hunter2@cache.example:6380/0\ntls_ca_file = ca\n":
            'key "url" in [redis]: is not rediss://, and the tls_* keys are set',
        "url = redis://u:hunter2@cache.example:99999\n":
            'key "url" in [redis]: the port is not a number from 1 to 65535',
        "url = redis://u:hun/ter2@cache.example\n":
            "a '/' in the user name or password must be percent-encoded",
        "url = redis://hunter2@cache.example\n": "a user name needs a password",
        "url = cache.example:6379\n": "expected redis://, rediss:// or unix://",
    }
    for text, want in bad.items():
        p = run_check(tmp_path, text)
        assert p.returncode == 2, text
        assert want in p.stderr and "u.conf:5" in p.stderr, (text, p.stderr)
        assert "hunter2" not in p.stderr and "hun/ter2" not in p.stderr
