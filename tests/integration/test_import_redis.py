"""usergatectl -c CONFIG import (issue 15): the import through Redis as the
daemon's own config file says, against the real daemon, redis-server and
the fake Twilio.  A few thousand CSV lines with msgpack results; an
operator who may read the config and the Redis password but not the
Twilio secret, through the ACL user of docs/operations.md; rediss://;
the daemon restarted, Redis restarted, and a Sentinel failover in the
middle of an import; and the resume that asks Redis when the state file
is gone."""
import os
import pwd
import shutil
import signal
import subprocess
import tempfile

import pytest

from conftest import SLOW, USERGATECTL, wait_for
from test_import import jsonl, read_report
from test_redis_acl import ACL_PASSWORD, create_acl_user, denials
from test_redis_transport import Server, pki  # noqa: F401 (a fixture)

FAST = {"log.level": "warning", "twilio.max_inflight": "64",
        "results.format": "msgpack"}


def ctl(conf, *args, timeout=90, **kw):
    p = subprocess.run([USERGATECTL, "-c", conf, "import"] + list(args),
                       capture_output=True, text=True,
                       timeout=timeout * SLOW, **kw)
    return p.returncode, p.stdout, p.stderr


def popen(conf, *args):
    return subprocess.Popen([USERGATECTL, "-c", conf, "import"] + list(args),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def state_lines(path):
    try:
        with open(path) as f:
            return sum(1 for line in f if line.endswith("\n"))
    except FileNotFoundError:
        return 0


def reply_keys(r):
    return [k.decode() for k in r.keys("usergate-reply:import:*")]


@pytest.fixture
def imp(env):
    env.start_redis(appendonly=True)
    env.start_twilio()
    env.d = env.daemon(extra=FAST)
    env.d.wait_healthy()
    return env


def test_csv_through_redis(imp, tmp_path):
    """3,000 lines, some invalid and some twice: every line in the report
    as the daemon answered it through Redis (msgpack results), each user
    created once, nothing through the request socket."""
    src = str(tmp_path / "users.csv")
    report = str(tmp_path / "report.csv")
    expect = {}
    with open(src, "w") as f:
        f.write("identity,friendly_name,attributes,role_sid\n")
        for n in range(2, 3002):
            k = n - 2
            if k % 500 == 3:
                f.write("US%032x,,,\n" % k)
                expect[n] = ("invalid", "identity_is_sid")
            elif k % 500 == 250:
                # Again the identity of 100 lines above: one of the two
                # is created, the other a duplicate (both in the window)
                # or exists (the first done already).
                f.write("r-%05d,again,,\n" % (k - 100))
                expect[n] = ("again", n - 100)
                expect[n - 100] = ("first", n)
            else:
                f.write('r-%05d,Name %d,"{""k"": %d}",\n' % (k, k, k))
                expect[n] = ("created", "")
    # The request socket goes nowhere: only Redis can carry this import.
    os.rename(imp.d.socket, imp.d.socket + ".away")
    rc, out, err = ctl(imp.d.conf, src, "--report", report)
    assert rc == 1, err                 # some lines are invalid
    rows = read_report(report)
    assert sorted(rows) == sorted(expect)
    for n, (status, code) in expect.items():
        if status == "again":
            pair = sorted([rows[n]["status"], rows[code]["status"]])
            assert pair in (["created", "duplicate"], ["created", "exists"]), \
                (n, pair)
            assert rows[n]["user_sid"] == rows[code]["user_sid"]
        elif status != "first":
            assert (rows[n]["status"], rows[n]["error_code"]) == \
                (status, code), (n, rows[n])
        if status != "invalid":
            assert rows[n]["user_sid"].startswith("US"), rows[n]
    created = sorted(r["identity"] for r in rows.values()
                     if r["status"] == "created")
    st = imp.twilio.stats()
    assert st["duplicate_creates"] == {}
    assert sorted(st["creates_by_identity"]) == created
    assert len(created) == 3000 - 6 - 6
    # A few lines against the daemon's records.
    rec = imp.r.get("usergate:user:r-00010")
    assert rec is not None and rows[12]["user_sid"].encode() in rec
    assert "line 5: identity_is_sid" in err
    for word in ("created", "exists", "duplicate", "invalid"):
        assert word in err
    # At most one reply key, the run's own under reply_prefix (what the
    # import had not trimmed when it ended, left to expire).
    assert len(reply_keys(imp.r)) <= 1, reply_keys(imp.r)
    # Each valid line sent and answered once, and the daemon's results
    # list has each result too, but for a repeated line whose user record
    # the import found in Redis before sending it (the GET that resuming
    # uses, asked for every line not in the state file): reported exists,
    # never sent.  The fake answers no 409 here, so the daemon says
    # duplicate, never exists.
    assert imp.r.llen("usergate:requests") == 0
    exists = sum(1 for r in rows.values() if r["status"] == "exists")
    assert imp.r.llen("usergate:results") == 3000 - 6 - exists
    assert imp.d.stats()["received"] == 3000 - 6 - exists


def test_operator_without_twilio_secret_through_acl_user(env, tmp_path):
    """The import run as nobody, who may read the config and the Redis
    password file but not the Twilio secret, as the daemon's ACL user
    of docs/operations.md: everything goes, Redis refuses nothing.  A
    password file it cannot read is a clear error, exit 2."""
    env.start_redis()
    env.start_twilio()
    create_acl_user(env.r)
    nobody = pwd.getpwnam("nobody")
    top = tempfile.mkdtemp(prefix="ugimp-")     # /tmp: nobody may pass
    try:
        os.chmod(top, 0o755)
        os.chmod(env.dir, 0o755)
        pw = os.path.join(top, "redis-password")
        with open(pw, "w") as f:
            f.write(ACL_PASSWORD + "\n")
        os.chmod(pw, 0o600)
        os.chown(pw, nobody.pw_uid, nobody.pw_gid)
        d = env.daemon(extra=dict(FAST, **{
            "redis.url": "redis://usergated@127.0.0.1:%d/0" % env.redis.port,
            "redis.password_file": pw}))
        d.wait_healthy()
        os.chmod(d.dir, 0o755)
        os.chmod(d.conf, 0o644)
        assert os.stat(d.secret_file).st_mode & 0o077 == 0
        work = os.path.join(top, "work")
        os.mkdir(work)
        os.chown(work, nobody.pw_uid, nobody.pw_gid)
        src = os.path.join(work, "u.jsonl")
        jsonl(src, ["acl-%d" % i for i in range(200)])
        os.chown(src, nobody.pw_uid, nobody.pw_gid)
        report = os.path.join(work, "r.csv")
        as_nobody = dict(user=nobody.pw_uid, group=nobody.pw_gid,
                         extra_groups=[], cwd=work)
        rc, out, err = ctl(d.conf, src, "--report", report, **as_nobody)
        assert rc == 0, err
        rows = read_report(report)
        assert [rows[n]["status"] for n in range(1, 201)] == ["created"] * 200
        assert denials(env.r) == [], denials(env.r)
        assert env.twilio.stats()["creates"] == 200
        # The resume's GETs too: a rerun without the state file.
        os.unlink(src + ".import-state")
        received = d.stats()["received"]
        rc, out, err = ctl(d.conf, src, "--report", report, **as_nobody)
        assert rc == 0, err
        assert d.stats()["received"] == received
        assert {r["status"] for r in read_report(report).values()} == \
            {"exists"}
        assert denials(env.r) == [], denials(env.r)

        # The password file is root's now: nobody cannot read it.
        os.chown(pw, 0, 0)
        rc, out, err = ctl(d.conf, src, **as_nobody)
        assert rc == 2
        assert ('%s:' % d.conf) in err and ('key "password_file" in [redis]: '
                'cannot open the secret file: Permission denied') in err, err
        assert ACL_PASSWORD not in err
        # A wrong password: refused at once, the URL shown without it.
        os.chown(pw, nobody.pw_uid, nobody.pw_gid)
        with open(pw, "w") as f:
            f.write("not-the-password\n")
        rc, out, err = ctl(d.conf, src, timeout=30, **as_nobody)
        assert rc == 2
        assert "WRONGPASS" in err or "invalid username-password" in err, err
        assert ("redis://usergated:***@127.0.0.1:%d/0" % env.redis.port) in err
        assert "not-the-password" not in err
    finally:
        shutil.rmtree(top, ignore_errors=True)


def test_rediss_url(env, pki, tmp_path):
    env.redis = Server(env.dir, tls=pki)
    env.start_twilio()
    url = "rediss://127.0.0.1:%d/0" % env.redis.port
    d = env.daemon(extra=dict(FAST, **{
        "redis.url": url, "redis.host": None, "redis.port": None,
        "redis.tls_ca_file": pki["ca"][0]})).wait_healthy()
    src = str(tmp_path / "t.jsonl")
    jsonl(src, ["tls-%d" % i for i in range(300)])
    report = str(tmp_path / "r.csv")
    rc, out, err = ctl(d.conf, src, "--report", report)
    assert rc == 0, err
    assert {r["status"] for r in read_report(report).values()} == {"created"}
    assert env.twilio.stats()["creates"] == 300
    # Plain text to a TLS-only server is refused: the import says so.
    d.extra["redis.url"] = url.replace("rediss:", "redis:")
    d.extra["redis.tls_ca_file"] = None
    d.write_config()
    rc, out, err = ctl(d.conf, src, "--report", report, timeout=60)
    assert rc == 2
    assert "redis://127.0.0.1:%d/0" % env.redis.port in err, err


def start_slow(imp, tmp_path, n, until, *args):
    """An import of n lines that Twilio answers slowly (about 600 a
    second), once until lines are finished: (process, input, state)."""
    imp.twilio.control(latency_ms=100)
    src = str(tmp_path / "slow.jsonl")
    jsonl(src, ["k-%05d" % i for i in range(n)])
    state = src + ".import-state"
    p = popen(imp.d.conf, src, "--quiet", *args)
    wait_for(lambda: state_lines(state) >= until, timeout=30 * SLOW,
             what="%d lines finished" % until)
    return p, src, state


def check_all_once(imp, report, n):
    rows = read_report(report)
    assert sorted(rows) == list(range(1, n + 1))
    assert {r["status"] for r in rows.values()} <= {"created", "exists"}, \
        {r["status"] for r in rows.values()}
    st = imp.twilio.stats()
    assert st["duplicate_creates"] == {}
    assert st["creates"] == n
    return rows


def test_daemon_restarted_midway(imp, tmp_path):
    """SIGTERM to the daemon and a new one in the middle of a -c import:
    the requests wait in Redis, the import finishes, each line answered
    once and nobody created twice."""
    n = 3000
    report = str(tmp_path / "r.csv")
    p, src, state = start_slow(imp, tmp_path, n, 300, "--report", report)
    assert imp.d.stop(signal.SIGTERM) == 0
    assert state_lines(state) < n - 1000
    assert imp.r.llen("usergate:requests") > 0     # waiting for a daemon
    imp.d.start()
    out, err = p.communicate(timeout=120 * SLOW)
    assert p.returncode == 0, err
    check_all_once(imp, report, n)


def test_redis_restarted_midway(imp, tmp_path):
    """Redis (with AOF) restarted in the middle: the import reconnects,
    sends again what was not acknowledged, and finishes."""
    n = 3000
    report = str(tmp_path / "r.csv")
    p, src, state = start_slow(imp, tmp_path, n, 300, "--report", report)
    imp.redis.stop()
    assert state_lines(state) < n - 1000
    imp.redis.start()
    out, err = p.communicate(timeout=120 * SLOW)
    assert p.returncode == 0, err
    check_all_once(imp, report, n)


def test_resume_from_redis_without_state_file(imp, tmp_path):
    """Killed halfway, its state file deleted: the rerun asks Redis for the
    users' records and sends only what has none."""
    n = 3000
    p, src, state = start_slow(imp, tmp_path, n, 700)
    p.send_signal(signal.SIGKILL)
    p.wait()
    os.unlink(state)
    # Requests pushed before the kill still complete in the daemon.
    wait_for(lambda: imp.r.llen("usergate:requests") == 0 and
             imp.d.stats()["inflight"] == 0, timeout=30 * SLOW,
             what="the daemon idle")
    created = imp.twilio.stats()["creates"]
    assert 700 <= created < n
    received = imp.d.stats()["received"]
    imp.twilio.control(latency_ms=0)
    report = str(tmp_path / "r.csv")
    rc, out, err = ctl(imp.d.conf, src, "--report", report)
    assert rc == 0, err
    sent = imp.d.stats()["received"] - received
    assert sent == n - created, (sent, n, created)
    rows = check_all_once(imp, report, n)
    assert sum(1 for r in rows.values() if r["status"] == "exists") == created


def test_sentinel_failover_midway(env, tmp_path):
    """The primary asked of the Sentinels, and a failover in the middle:
    the import follows the new primary and finishes, nobody created twice.
    (It did not finish before the import pushed again what had no result
    after a failover: some pushes went to the old primary alone.)"""
    from test_sentinel import MASTER, Cluster, wait_failover
    env.start_redis()
    env.start_twilio()
    c = Cluster(env)
    env.d = env.daemon(extra=dict(FAST, **{
        "redis.sentinels": c.sentinels_conf(), "redis.master_name": MASTER,
        "redis.port": "9"}))
    env.d.wait_healthy()
    n = 3000
    report = str(tmp_path / "r.csv")
    p, src, state = start_slow(env, tmp_path, n, 300, "--report", report)
    old = c.primary_port()
    c.sentinels[0][1].execute_command("SENTINEL", "FAILOVER", MASTER)
    wait_failover(c, old, "the replica promoted")
    assert state_lines(state) < n
    out, err = p.communicate(timeout=120 * SLOW)
    assert p.returncode == 0, err
    rows = read_report(report)
    assert sorted(rows) == list(range(1, n + 1))
    assert {r["status"] for r in rows.values()} <= \
        {"created", "exists", "duplicate"}
    st = env.twilio.stats()
    assert st["duplicate_creates"] == {}
    assert st["creates"] == n
