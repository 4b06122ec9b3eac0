"""usergatectl import (issue 15) through the request socket, against the
real daemon, redis-server and the fake Twilio: a 5,000-line CSV with every
kind of bad line checked line by line against the report and the fake's
creates; JSON Lines and standard input; --dry-run; a run killed halfway
and rerun (nobody created twice, only the unfinished lines sent again);
Ctrl-C; and the progress bar as a terminal shows it."""
import base64
import csv
import fcntl
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import termios
import time
import urllib.request

import pyte
import pytest

from conftest import API_KEY, API_SECRET, SLOW, USERGATECTL, wait_for

SID = "US" + "0" * 32
ROLE = "RL" + "a" * 32
HEADER = ["line", "identity", "status", "user_sid", "error_code",
          "error_message"]
# Fast, quiet and with no rate window, unless a test sets one.
FAST = {"log.level": "warning", "twilio.max_inflight": "64"}


@pytest.fixture
def imp(env):
    env.start_redis()
    env.start_twilio()
    env.d = env.daemon(extra=FAST)
    env.d.wait_healthy()
    return env


def ctl(d, *args, stdin=None, timeout=60):
    p = subprocess.run([USERGATECTL, "-s", d.status_socket, "-S", d.socket]
                       + list(args), input=stdin, capture_output=True,
                       text=True, timeout=timeout * SLOW)
    return p.returncode, p.stdout, p.stderr


def popen(d, *args, **kw):
    return subprocess.Popen([USERGATECTL, "-s", d.status_socket, "-S", d.socket]
                            + list(args), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def read_report(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == HEADER
    return {int(r[0]): dict(zip(HEADER, r)) for r in rows[1:]}


def state_entries(path):
    """The state file's finished lines (the last entry of each)."""
    out = {}
    with open(path) as f:
        for line in f:
            if line.endswith("\n"):
                e = json.loads(line)
                out[e["line"]] = e
    return out


def fake_user(twilio, identity):
    req = urllib.request.Request(twilio.url + "/v1/Users/" + identity)
    auth = base64.b64encode(("%s:%s" % (API_KEY, API_SECRET)).encode())
    req.add_header("Authorization", "Basic " + auth.decode())
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def jsonl(path, identities, start=0):
    with open(path, "w") as f:
        for i in identities:
            f.write(json.dumps({"Identity": i, "FriendlyName": "n" + i}) + "\n")


# ---------------------------------------------------------------- the big one

def big_csv(path):
    """5,000 lines (and the header): good ones, one of each kind of bad
    line every 250 lines, and identities that come twice.  Returns
    {line: (identity, expected status, expected error code)}."""
    expect = {}
    bad = [
        ("malformed", lambda i: "only-two-fields-%d,x\n" % i),
        ("missing_identity", lambda i: ",no identity,,\n"),
        ("identity_too_long", lambda i: "%s,,,\n" % ("L%d-" % i + "x" * 300)),
        ("identity_is_sid", lambda i: "US%032x,,,\n" % i),
        ("friendly_name_too_long", lambda i: "fn-%d,%s,,\n" % (i, "y" * 300)),
        ("attributes_not_json", lambda i: "an-%d,,not json,\n" % i),
        ("attributes_too_long", lambda i: "al-%d,,\"{\"\"a\"\":\"\"%s\"\"}\",\n"
         % (i, "z" * 17000)),
        ("bad_role_sid", lambda i: "rs-%d,,,RL123\n" % i),
        ("bad_utf8", lambda i: "bu-%d,\xff\xfe,,\n" % i),
        ("malformed", lambda i: "\"q-%d\"x,,,\n" % i),   # strict quoting
    ]
    with open(path, "w", encoding="latin-1", newline="") as f:
        f.write("Identity,friendly_name,ATTRIBUTES,RoleSid\n")
        for n in range(2, 5002):
            k = n - 2
            if k % 250 == 7:
                code, make = bad[(k // 250) % len(bad)]
                text = make(k)
                identity = None
                expect[n] = (identity, "invalid", code)
            elif k % 500 == 100 and k > 0:
                # the identity of the line 50 lines above: a duplicate
                identity = "user-%05d" % (k - 50)
                text = "%s,again,,\n" % identity
                expect[n] = (identity, "duplicate", "")
            else:
                identity = "user-%05d" % k
                attrs = '"{""n"": %d}"' % k if k % 3 == 0 else ""
                role = ROLE if k % 7 == 0 else ""
                text = "%s,Name %d,%s,%s\n" % (identity, k, attrs, role)
                expect[n] = (identity, "created", "")
            f.write(text)
    return expect


def test_import_5000_csv_line_by_line(imp, tmp_path):
    src = str(tmp_path / "users.csv")
    report = str(tmp_path / "report.csv")
    expect = big_csv(src)
    # The README's check first: nothing sent, every good line printed.
    rc, out, err = ctl(imp.d, "import", src, "--dry-run")
    assert rc == 1 and len(out.splitlines()) == 4980
    assert imp.d.stats()["received"] == 0
    t0 = time.monotonic()
    rc, out, err = ctl(imp.d, "import", src, "--report", report)
    took = time.monotonic() - t0
    assert rc == 1, (rc, err)          # some lines are invalid
    rows = read_report(report)
    assert sorted(rows) == sorted(expect)
    created = [r["identity"] for r in rows.values() if r["status"] == "created"]
    for n, (identity, status, code) in expect.items():
        row = rows[n]
        assert row["status"] == status, (n, row)
        assert row["error_code"] == code, (n, row)
        if status == "invalid":
            assert row["user_sid"] == "" and row["error_message"], row
        else:
            assert row["identity"] == identity
            assert row["user_sid"].startswith("US") and len(row["user_sid"]) == 34
    # Each identity created once, none of the bad ones at all.
    st = imp.twilio.stats()
    assert st["duplicate_creates"] == {}
    assert sorted(st["creates_by_identity"]) == sorted(set(created))
    assert st["creates"] == len(created) == 4980 - 10
    # The SID of the report is the fake's user's, and the daemon's record.
    for n in list(expect)[::97]:
        identity, status, _ = expect[n]
        if status != "invalid":
            assert fake_user(imp.twilio, identity)["sid"] == rows[n]["user_sid"]
            rec = json.loads(imp.r.get("usergate:user:" + identity))
            assert rec["sid"] == rows[n]["user_sid"]
    # The summary table, and invalid lines named with their line numbers.
    for word in ("created", "exists", "duplicate", "invalid", "failed"):
        assert word in err
    assert "users.csv: line 9: malformed: 2 fields where the header has 4" in err
    assert "users.csv: line 259: missing_identity" in err
    assert took < 40 * SLOW
    # A rerun sends nothing: every line is finished in the state file.
    received = imp.d.stats()["received"]
    rc, out, err = ctl(imp.d, "import", src, "--report", report)
    assert rc == 1
    assert imp.d.stats()["received"] == received
    assert read_report(report) == rows
    assert "5000 finished before" in err


def test_import_jsonl_and_stdin(imp, tmp_path):
    src = str(tmp_path / "u.jsonl")
    jsonl(src, ["j-%d" % i for i in range(40)])
    with open(src, "a") as f:
        f.write("\n{not json\n[1,2]\n{\"Identity\": \"j-x\", \"Bogus\": 1}\n")
    report = str(tmp_path / "r.csv")
    rc, out, err = ctl(imp.d, "import", src, "--report", report, "--quiet")
    assert rc == 1 and out == "" and err == ""
    rows = read_report(report)
    assert [rows[n]["status"] for n in range(1, 41)] == ["created"] * 40
    assert rows[42]["error_code"] == "malformed"
    assert rows[43]["error_code"] == "malformed"
    assert rows[44]["error_code"] == "unknown_field" and rows[44]["identity"] == "j-x"
    assert 41 not in rows               # a blank line is no request
    # Standard input: JSON Lines unless --format says otherwise; no state
    # file without --state.
    text = "".join(json.dumps({"identity": "s-%d" % i}) + "\n" for i in range(5))
    rc, out, err = ctl(imp.d, "import", "-", "--report", report, stdin=text)
    assert rc == 0, err
    assert [r["status"] for r in read_report(report).values()] == ["created"] * 5
    text = "identity,friendly_name\nc-1,One\nc-2,Two\nj-3,\n"
    state = str(tmp_path / "stdin.state")
    rc, out, err = ctl(imp.d, "import", "-", "--format", "csv", "--state",
                       state, "--report", report, stdin=text)
    assert rc == 0, err
    rows = read_report(report)
    assert [(n, r["status"]) for n, r in rows.items()] == [
        (2, "created"), (3, "created"), (4, "duplicate")]
    assert sorted(state_entries(state)) == [2, 3, 4]
    assert imp.twilio.stats()["duplicate_creates"] == {}


def test_dry_run(imp, tmp_path):
    src = str(tmp_path / "d.csv")
    with open(src, "w") as f:
        f.write("identity,attributes\nd-1,\"{\"\"a\"\": 1}\"\nd-2,[1]\n")
    rc, out, err = ctl(imp.d, "import", src, "--dry-run")
    assert rc == 1
    sent = [json.loads(x) for x in out.splitlines()]
    assert len(sent) == 1
    assert sent[0]["Identity"] == "d-1" and sent[0]["Attributes"] == '{"a": 1}'
    assert sent[0]["RequestId"].startswith("import:") and sent[0]["RequestId"].endswith(":2")
    assert "line 3: attributes_not_json" in err
    assert imp.d.stats()["received"] == 0
    assert not os.path.exists(src + ".import-state")
    with open(src, "w") as f:
        f.write("identity\nd-1\n")
    assert ctl(imp.d, "import", src, "--dry-run")[0] == 0


def test_bad_usage(imp, tmp_path):
    for args, msg in ((["import"], "one FILE"),
                      (["import", "x.txt"], "--format csv|jsonl"),
                      (["import", "-", "--format", "xml"], "csv or jsonl"),
                      (["import", "-", "--window", "0"], "--window")):
        rc, out, err = ctl(imp.d, *args)
        assert rc == 2 and msg in err, (args, err)
    src = str(tmp_path / "h.csv")
    with open(src, "w") as f:
        f.write("identity,shoe_size\na,42\n")
    rc, _, err = ctl(imp.d, "import", src)
    assert rc == 2 and 'unknown column "shoe_size"' in err
    assert "resume" not in err
    # No such file; no daemon.
    rc, _, err = ctl(imp.d, "import", str(tmp_path / "x.jsonl"))
    assert rc == 2 and "x.jsonl: No such file or directory" in err
    jsonl(str(tmp_path / "y.jsonl"), ["a"])
    p = subprocess.run([USERGATECTL, "-S", str(tmp_path / "no.sock"), "import",
                        str(tmp_path / "y.jsonl")], capture_output=True, text=True)
    assert p.returncode == 2 and "is usergated running?" in p.stderr


def slow_import(imp, tmp_path, n, latency_ms=20):
    imp.twilio.control(latency_ms=latency_ms)
    src = str(tmp_path / "slow.jsonl")
    jsonl(src, ["k-%05d" % i for i in range(n)])
    return src


def test_killed_halfway_then_rerun(imp, tmp_path):
    src = slow_import(imp, tmp_path, 3000)
    state = src + ".import-state"
    p = popen(imp.d, "import", src, "--quiet")
    wait_for(lambda: os.path.exists(state) and len(state_entries(state)) >= 1000,
             timeout=30, what="1000 lines finished")
    p.send_signal(signal.SIGKILL)
    p.wait()
    done = state_entries(state)
    assert 1000 <= len(done) < 3000
    # Requests in flight at the kill still complete in the daemon.
    wait_for(lambda: imp.d.stats()["inflight"] == 0, what="daemon idle")
    received = imp.d.stats()["received"]
    report = str(tmp_path / "r.csv")
    rc, out, err = ctl(imp.d, "import", src, "--report", report)
    assert rc == 0, err
    # Only the lines not finished were sent again.
    assert imp.d.stats()["received"] - received == 3000 - len(done)
    rows = read_report(report)
    assert sorted(rows) == list(range(1, 3001))
    assert {r["status"] for r in rows.values()} <= {"created", "duplicate", "exists"}
    st = imp.twilio.stats()
    assert st["duplicate_creates"] == {}
    assert st["creates"] == 3000
    assert "%d finished before" % len(done) in err


def test_ctrl_c_says_how_to_resume(imp, tmp_path):
    src = slow_import(imp, tmp_path, 3000)
    state = src + ".import-state"
    p = popen(imp.d, "import", src)
    wait_for(lambda: os.path.exists(state) and len(state_entries(state)) >= 200,
             timeout=30, what="200 lines finished")
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 130, err
    assert "stopped by SIGINT" in err
    assert "to resume, run the same command again:" in err
    command = err.split("run the same command again:\n")[1].splitlines()[0].split()
    assert command == ["usergatectl", "-S", imp.d.socket, "-s", imp.d.status_socket,
                       "import", src]
    # And so it does.
    imp.twilio.control(latency_ms=0)
    rc, out, err = ctl(imp.d, *command[5:])
    assert rc == 0, err
    assert imp.twilio.stats()["creates"] == 3000


def paced_daemon(env):
    """A daemon held to 100 creates a second: an import that lasts."""
    env.start_redis()
    env.start_twilio()
    d = env.daemon(extra=dict(FAST, **{"twilio.rate_limit": "100",
                                       "twilio.rate_window_s": "1"}))
    return d.wait_healthy()


def test_progress_bar_on_a_terminal(env, tmp_path):
    """A pseudo-terminal sees the bar redrawn in place: two different
    states of it on the same screen line, and the summary at the end."""
    d = paced_daemon(env)
    src = str(tmp_path / "t.jsonl")
    jsonl(src, ["t-%d" % i for i in range(350)])
    screen = pyte.Screen(150, 24)
    stream = pyte.ByteStream(screen)
    pid, fd = pty.fork()
    if pid == 0:
        fcntl.ioctl(2, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 150, 0, 0))
        os.environ["TERM"] = "xterm"
        os.execv(USERGATECTL, [USERGATECTL, "-s", d.status_socket, "-S",
                               d.socket, "import", src])
    bars = set()
    deadline = time.monotonic() + 30 * SLOW
    while time.monotonic() < deadline:
        r, _, _ = select.select([fd], [], [], 0.2)
        if r:
            try:
                data = os.read(fd, 65536)
            except OSError:
                break
            if not data:
                break
            stream.feed(data)
        line = screen.display[0].rstrip()
        if line.startswith("["):
            bars.add(line)
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    assert os.WEXITSTATUS(status) == 0
    assert len(bars) >= 2, bars
    assert any("/350 created" in b and "/s" in b and "ETA" in b for b in bars), bars
    # The bar is gone at the end: the summary took its place.
    text = "\n".join(screen.display)
    assert "import of %s: 350 lines finished" % src in text
    assert "[" not in screen.display[0]


def test_daemon_lost_then_restarted(imp, tmp_path):
    """The daemon dies under the import: exit 2, how to resume; once it is
    back, the same command finishes the job without a second create."""
    src = slow_import(imp, tmp_path, 2000)
    state = src + ".import-state"
    p = popen(imp.d, "import", src)
    wait_for(lambda: os.path.exists(state) and len(state_entries(state)) >= 200,
             timeout=30, what="200 lines finished")
    imp.d.stop(signal.SIGKILL)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 2, err
    assert "usergated closed the request socket" in err
    assert "to resume, run the same command again:" in err
    imp.twilio.control(latency_ms=0)
    imp.d.start()
    imp.d.wait_healthy()
    rc, out, err = ctl(imp.d, "import", src)
    assert rc == 0, err
    st = imp.twilio.stats()
    assert st["duplicate_creates"] == {} and st["creates"] == 2000


def test_redis_down_requests_sent_again(imp, tmp_path):
    """With Redis down usergated answers unavailable: the import sends
    those requests again, with a backoff, until Redis is back."""
    src = str(tmp_path / "r.jsonl")
    jsonl(src, ["r-%d" % i for i in range(300)])
    imp.redis.stop()
    wait_for(lambda: imp.d.health_or_none() not in (None, "ok"), what="degraded")
    p = popen(imp.d, "import", src, "--quiet")
    time.sleep(1.5)
    assert p.poll() is None
    imp.redis.start()
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert len(state_entries(src + ".import-state")) == 300
    assert imp.twilio.stats()["creates"] == 300


def test_plain_progress_when_not_a_terminal(env, tmp_path):
    """Standard error to a pipe: a plain line every 5 seconds, no bar and
    no control strings."""
    d = paced_daemon(env)
    src = str(tmp_path / "p.jsonl")
    jsonl(src, ["p-%d" % i for i in range(650)])
    rc, out, err = ctl(d, "import", src)
    assert rc == 0, err
    lines = [x for x in err.splitlines() if x.startswith("usergatectl: import: ")]
    assert lines, err
    assert re.match(r"usergatectl: import: \d+/650 created \d+ exists 0 duplicate 0 "
                    r"invalid 0 failed 0  \d+/s  ETA \d+m\d\ds$", lines[0]), lines
    assert "\x1b" not in err and "\r" not in err and "[" not in err
