"""usergatectl (SPEC §6.3) against a live daemon: every subcommand, its
output (JSON where the daemon answers JSON, so it pipes into jq), its exit
status, and its errors when there is no daemon or the usage is wrong."""
import grp
import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading

import pytest

from conftest import SLOW, STATS_KEYS, USERGATECTL, wait_for


DOWN = "degraded: redis unreachable: connection refused"


def ctl(*args, d=None, timeout=60):
    """Runs usergatectl (with the daemon's two sockets when d is given);
    returns (exit status, stdout, stderr)."""
    argv = [USERGATECTL]
    if d is not None:
        argv += ["-s", d.status_socket, "-S", d.socket]
    p = subprocess.run(argv + list(args), capture_output=True, text=True,
                       timeout=timeout * SLOW)
    return p.returncode, p.stdout, p.stderr


def ctl_json(*args, d=None):
    rc, out, err = ctl(*args, d=d)
    assert rc == 0, (rc, out, err)
    return json.loads(out)


# ---------------------------------------------------------------- usage

@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help(flag):
    rc, out, err = ctl(flag)
    assert rc == 0 and err == ""
    assert out.startswith("usage: usergatectl")
    for word in ("show stats", "health", "pause", "resume", "reload", "dead list",
                 "dead retry", "create IDENTITY", "--no-wait", "--friendly-name",
                 "--attributes", "--role-sid", "--webhook-enabled", "exit status"):
        assert word in out, word


def test_version():
    for flag in ("-V", "--version"):
        rc, out, _ = ctl(flag)
        assert rc == 0 and out == "usergatectl 0.1.0\n"


def test_create_help():
    rc, out, _ = ctl("create", "--help")
    assert rc == 0 and "create IDENTITY" in out


@pytest.mark.parametrize("args,message", [
    ([], "a command is needed"),
    (["bogus"], "unknown command 'bogus'"),
    (["show"], "bad arguments for 'show'"),
    (["show", "everything"], "bad arguments for 'show'"),
    (["health", "now"], "bad arguments for 'health'"),
    (["dead"], "bad arguments for 'dead'"),
    (["dead", "list", "1", "2"], "bad arguments for 'dead'"),
    (["--bogus"], "unrecognized option"),
    (["-s"], "requires an argument"),
    (["create"], "exactly one IDENTITY"),
    (["create", "a", "b"], "exactly one IDENTITY"),
    (["create", "a", "--webhook-enabled", "maybe"], "true or false"),
    (["create", "a", "--timeout", "0"], "seconds > 0"),
    (["create", "a", "--bogus"], "unrecognized option"),
    (["create", b"\xff\xfe"], "UTF-8"),
])
def test_bad_usage_exits_2(args, message, tmp_path):
    # Sockets that do not exist: usage is checked before any connection.
    argv = [USERGATECTL, "-s", str(tmp_path / "no.sock"), "-S", str(tmp_path / "no.sock")]
    p = subprocess.run(argv + args, capture_output=True, timeout=30)
    assert p.returncode == 2, p
    assert message.encode() in p.stderr, p.stderr
    assert p.stdout == b""


# ---------------------------------------------------------------- no daemon

def test_no_daemon(tmp_path):
    missing = str(tmp_path / "missing.sock")
    for args in (["-s", missing, "health"], ["-s", missing, "show", "stats"],
                 ["-S", missing, "create", "x"]):
        rc, out, err = ctl(*args)
        assert rc == 2 and out == ""
        assert "cannot connect to %s" % missing in err and "is usergated running?" in err
    # A socket file with nobody behind it (a stopped daemon's leftover).
    stale = str(tmp_path / "stale.sock")
    s = socket.socket(socket.AF_UNIX)
    s.bind(stale)
    s.close()
    rc, _, err = ctl("-s", stale, "health")
    assert rc == 2 and "cannot connect to %s" % stale in err


def test_not_in_the_group_is_said_plainly(tmp_path):
    """A user outside the socket's group is told so, with the group and the
    fix, not "Permission denied (is usergated running?)"."""
    nobody = pwd.getpwnam("nobody")
    group = grp.getgrnam("daemon")
    assert nobody.pw_name not in group.gr_mem
    top = tempfile.mkdtemp(prefix="ctl-perm-")   # /tmp: nobody may pass
    try:
        os.chmod(top, 0o755)
        run = os.path.join(top, "run")
        os.mkdir(run, 0o750)
        os.chown(run, 0, group.gr_gid)
        path = os.path.join(run, "status.sock")
        srv = socket.socket(socket.AF_UNIX)
        srv.bind(path)
        srv.listen(4)
        p = subprocess.run([USERGATECTL, "-s", path, "health"], capture_output=True,
                           text=True, user=nobody.pw_uid, group=nobody.pw_gid,
                           extra_groups=[], timeout=30)
        srv.close()
    finally:
        shutil.rmtree(top)
    assert p.returncode == 2 and p.stdout == ""
    assert "cannot connect to %s" % path in p.stderr, p.stderr
    assert "not in the group daemon" in p.stderr, p.stderr
    assert "ask an administrator" in p.stderr and "usermod -aG daemon nobody" in p.stderr
    assert "is usergated running" not in p.stderr


def test_daemon_not_answering(tmp_path):
    """Something accepts on the socket but never answers: usergatectl
    gives up after its timeout with a clear message."""
    path = str(tmp_path / "mute.sock")
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen(4)
    held = []
    t = threading.Thread(target=lambda: held.append(srv.accept()), daemon=True)
    t.start()
    rc, out, err = ctl("-s", path, "health")
    assert rc == 2 and out == ""
    assert "no answer from usergated in time" in err
    # A peer that hangs up without an answer.
    t.join(10)
    held[0][0].close()
    t = threading.Thread(target=lambda: srv.accept()[0].close(), daemon=True)
    t.start()
    rc, _, err = ctl("-s", path, "health")
    # Depending on who is first: the send or the read finds it gone.
    assert rc == 2 and ("closed the connection" in err or "cannot send" in err), (rc, err)
    # Gone before usergatectl writes: said plainly, never a SIGPIPE death.
    for _ in range(3):
        t = threading.Thread(target=lambda: srv.accept()[0].close(), daemon=True)
        t.start()
        rc, _, err = ctl("-s", path, "show", "stats")
        assert rc == 2 and err.startswith("usergatectl: "), (rc, err)
        t.join(10)
    srv.close()


# ---------------------------------------------------------------- status commands

def test_show_stats_and_queue_are_json(stack):
    stack.push({"Identity": "ctl-1"})
    stack.wait_results(1)
    s = ctl_json("show", "stats", d=stack.d)
    assert list(s) == STATS_KEYS
    assert s["created"] == 1 and s["instance_id"] == "ug"
    q = ctl_json("show", "queue", d=stack.d)
    assert list(q) == ["depth", "processing", "dead", "oldest_age_s"]


@pytest.mark.skipif(shutil.which("jq") is None, reason="jq is not installed")
def test_output_pipes_into_jq(stack):
    stack.push(b"not-json-nor-msgpack", {"Identity": "jq-1"})
    stack.wait_results(2)
    argv = [USERGATECTL, "-s", stack.d.status_socket]
    for cmd, expr, want in ((["show", "stats"], ".created", "1"),
                            (["show", "queue"], ".dead", "1"),
                            (["dead", "list"], ".result.error.code", '"malformed"')):
        p1 = subprocess.Popen(argv + cmd, stdout=subprocess.PIPE)
        p2 = subprocess.run(["jq", "-e", expr], stdin=p1.stdout, capture_output=True,
                            text=True, timeout=30 * SLOW)
        p1.stdout.close()
        assert p1.wait(30 * SLOW) == 0
        assert p2.returncode == 0, p2.stderr
        assert p2.stdout.strip() == want
    # create's result, too.
    p = subprocess.run("%s -S %s create jq-2 | jq -r .user.identity" % (USERGATECTL, stack.d.socket),
                       shell=True, capture_output=True, text=True, timeout=60 * SLOW)
    assert p.stdout == "jq-2\n"


def test_show_metrics(stack):
    rc, out, err = ctl("show", "metrics", d=stack.d)
    assert rc == 0 and err == ""
    assert out.startswith("# HELP usergate_") and out.endswith("\n")
    assert "\n\n" not in out
    assert "usergate_received_total 0\n" in out


def test_health_exit_status(env):
    env.start_redis()
    env.start_twilio()
    d = env.daemon().wait_healthy()
    assert ctl("health", d=d)[:2] == (0, "ok\n")
    env.redis.stop()
    # The reason comes with the first reconnect that fails.
    wait_for(lambda: ctl("health", d=d)[:2] == (1, "%s\n" % DOWN),
             what="health to degrade")
    # Redis down: status commands that need it say so, with exit 1.
    assert ctl("show", "queue", d=d) == (1, "", "usergatectl: error: redis unavailable\n")
    # show stats still answers (lengths unknown: null).
    s = ctl_json("show", "stats", d=d)
    assert s["queue_depth"] is None and s["redis_connected"] is False
    # create: unavailable, exit 1.
    rc, out, _ = ctl("create", "during-outage", d=d)
    assert rc == 1 and json.loads(out)["status"] == "unavailable"
    env.redis.start()
    wait_for(lambda: ctl("health", d=d)[0] == 0, timeout=30, what="health ok")


def test_pause_resume_reload_help(stack):
    d = stack.d
    assert ctl("pause", d=d)[:2] == (0, "ok\n")
    assert ctl_json("show", "stats", d=d)["paused"] is True
    stack.push({"Identity": "while-paused"})
    assert ctl_json("show", "queue", d=d)["depth"] == 1
    assert ctl("resume", d=d)[:2] == (0, "ok\n")
    stack.wait_results(1)
    d.extra["twilio.max_inflight"] = 3
    d.write_config()
    assert ctl("reload", d=d)[:2] == (0, "ok\n")
    assert ctl_json("show", "stats", d=d)["max_inflight"] == 3
    d.write_config(open(d.conf).read() + "[nope]\n")
    rc, out, err = ctl("reload", d=d)
    assert (rc, out) == (1, "") and err.startswith("usergatectl: error: ") and "nope" in err
    rc, out, _ = ctl("help", d=d)
    assert rc == 0 and "dead retry" in out and "show metrics" in out


def test_dead_list_and_retry(stack):
    d = stack.d
    # Empty: nothing printed, exit 0, and no waiting for a timeout.
    assert ctl("dead", "list", d=d, timeout=5) == (0, "", "")
    stack.twilio.control(next=["400"])
    stack.push({"Identity": "ctl-dead"})
    assert stack.wait_results(1)[0]["status"] == "failed"
    rc, out, _ = ctl("dead", "list", d=d)
    assert rc == 0
    entries = [json.loads(x) for x in out.splitlines()]
    assert len(entries) == 1 and entries[0]["request"] == {"Identity": "ctl-dead"}
    assert entries[0]["result"]["error"]["code"] == "twilio_rejected"
    assert ctl("dead", "list", "1", d=d)[1] == out
    assert ctl_json("dead", "retry", "all", d=d) == {"moved": 1}
    r = stack.wait_results(2)[1]
    assert (r["identity"], r["status"]) == ("ctl-dead", "created")
    assert ctl("dead", "list", d=d) == (0, "", "")
    rc, out, err = ctl("dead", "retry", "lots", d=d)
    assert (rc, out) == (1, "") and err.startswith("usergatectl: error: dead retry takes a count")
    rc, out, err = ctl("dead", "list", "0", d=d)
    assert (rc, out) == (1, "") and err.startswith("usergatectl: error: dead list takes a count")


# ---------------------------------------------------------------- create

def test_create_statuses_and_exit_codes(stack):
    d = stack.d
    rc, out, err = ctl("create", "ctl-alice", "--friendly-name", "Alice",
                       "--attributes", '{"team":"blue"}', "--role-sid", "RL" + "0" * 32,
                       "--webhook-enabled", "false", "--request-id", "ctl-r1", d=d)
    assert rc == 0, err
    r = json.loads(out)
    assert r["status"] == "created" and r["source"] == "socket"
    assert r["request_id"] == "ctl-r1" and r["identity"] == "ctl-alice"
    assert r["user"]["friendly_name"] == "Alice"
    assert json.loads(r["user"]["attributes"]) == {"team": "blue"}
    assert r["user"]["role_sid"] == "RL" + "0" * 32
    wh = stack.twilio.stats()["webhook_headers"]
    assert wh["false"] == 1 and wh.get("true", 0) == 0
    # duplicate: 0
    rc, out, _ = ctl("create", "ctl-alice", d=d)
    assert rc == 0 and json.loads(out)["status"] == "duplicate"
    # exists: 0
    stack.r.delete("usergate:identity:ctl-alice")
    rc, out, _ = ctl("create", "ctl-alice", "--friendly-name", "Alice", d=d)
    assert rc == 0 and json.loads(out)["status"] == "exists"
    # invalid: 1
    rc, out, _ = ctl("create", "ctl-bad", "--role-sid", "RL123", d=d)
    r = json.loads(out)
    assert rc == 1 and r["status"] == "invalid" and r["error"]["code"] == "bad_role_sid"
    rc, out, _ = ctl("create", "ctl-bad", "--attributes", "[1]", d=d)
    assert rc == 1 and json.loads(out)["error"]["code"] == "attributes_not_json"
    # failed: 1
    stack.twilio.control(next=["400"])
    rc, out, _ = ctl("create", "ctl-rejected", d=d)
    r = json.loads(out)
    assert rc == 1 and r["status"] == "failed" and r["error"]["code"] == "twilio_rejected"
    # --no-wait: queued, 0, and the result is in Redis under the same id.
    rc, out, _ = ctl("create", "ctl-later", "--no-wait", d=d)
    ack = json.loads(out)
    assert rc == 0 and ack["status"] == "queued"
    res = wait_for(lambda: [x for x in stack.results() if x.get("identity") == "ctl-later"],
                   what="the no-wait result")
    assert res[0]["request_id"] == ack["request_id"] and res[0]["status"] == "created"
    # --reply-to: the result also goes there.
    rc, out, _ = ctl("create", "ctl-reply", "--reply-to", "usergate-reply:ctl", d=d)
    assert rc == 0
    assert json.loads(stack.r.lindex("usergate-reply:ctl", 0)) == json.loads(out)


def test_create_updated_exits_0(env):
    env.start_redis()
    env.start_twilio()
    d = env.daemon(extra={"twilio.on_exists": "update"}).wait_healthy()
    assert ctl("create", "upd", "--friendly-name", "Old", d=d)[0] == 0
    env.r.delete("usergate:identity:upd")
    rc, out, _ = ctl("create", "upd", "--friendly-name", "New", d=d)
    r = json.loads(out)
    assert rc == 0 and r["status"] == "updated" and r["user"]["friendly_name"] == "New"


def test_create_timeout(stack):
    # Slower than the client waits, quicker than the daemon's own
    # request_timeout_ms (5 s in the tests' config).
    stack.twilio.control(latency_ms=3000)
    rc, out, err = ctl("create", "ctl-slow", "--timeout", "1", d=stack.d)
    assert rc == 2 and out == "" and "no answer from usergated in time" in err
    # The daemon still finishes it.
    r = stack.wait_results(1, timeout=30)[0]
    assert r["identity"] == "ctl-slow" and r["status"] == "created"


def test_default_socket_paths_are_documented():
    rc, out, _ = ctl("--help")
    assert "/run/usergate/status.sock" in out and "/run/usergate/usergate.sock" in out
