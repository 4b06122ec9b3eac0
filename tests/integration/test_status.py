"""The status socket (SPEC §6.2): every command with exactly its field
names, exact counters, Prometheus exposition, health, pause/resume,
reload (and SIGHUP), the dead list, and hostile or idle clients."""
import json
import os
import re
import signal
import socket
import time

import msgpack
import pytest

from conftest import SLOW, STATS_COUNTERS, STATS_KEYS, wait_for, run_clients

COMMANDS = ["show stats", "show metrics", "show queue", "health", "pause", "resume",
            "reload", "dead list [N]", "dead retry [N|all]", "help"]
UNKNOWN = "error: unknown command, try help"


class StatusConn:
    """A connection to the status socket that reads answers the way the
    protocol defines them: lines up to the first empty one."""

    def __init__(self, path, timeout=20):
        self.s = socket.socket(socket.AF_UNIX)
        self.s.settimeout(timeout * SLOW)
        self.s.connect(path)
        self.buf = b""

    def send(self, data):
        self.s.sendall(data if isinstance(data, bytes) else data.encode() + b"\n")

    def answer(self):
        """The next answer's lines (without the empty line that ends it)."""
        lines = []
        while True:
            while b"\n" not in self.buf:
                chunk = self.s.recv(65536)
                if not chunk:
                    raise EOFError("closed after %r, buffered %r" % (lines, self.buf))
                self.buf += chunk
            line, self.buf = self.buf.split(b"\n", 1)
            if line == b"":
                return [x.decode() for x in lines]
            lines.append(line)

    def ask(self, command):
        self.send(command)
        return self.answer()

    def closed(self):
        """True when the daemon has closed the connection."""
        try:
            return self.s.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self):
        self.s.close()


def ask(d, command):
    c = StatusConn(d.status_socket)
    try:
        return c.ask(command)
    finally:
        c.close()


def ask1(d, command):
    lines = ask(d, command)
    assert len(lines) == 1, lines
    return lines[0]


def stats(d):
    return json.loads(ask1(d, "show stats"))


# ---------------------------------------------------------------- Prometheus

METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$')


def parse_prometheus(text):
    """A strict parser for the text exposition format (version 0.0.4) as
    far as usergated uses it: every family announced by # HELP then
    # TYPE, its samples right after; returns {family: {"type", "help",
    "samples": [(name, labels dict, value)]}}."""
    families = {}
    current = None
    assert text.endswith("\n"), "exposition must end with a newline"
    for line in text[:-1].split("\n"):
        assert line, "empty line in the exposition"
        if line.startswith("# HELP "):
            name, _, help_text = line[7:].partition(" ")
            assert METRIC_NAME.match(name), line
            assert help_text, "HELP without text: " + line
            assert name not in families, "family twice: " + name
            current = families[name] = {"help": help_text, "type": None, "samples": []}
            current["name"] = name
        elif line.startswith("# TYPE "):
            name, _, typ = line[7:].partition(" ")
            assert current is not None and name == current["name"], "TYPE before HELP: " + line
            assert current["type"] is None and not current["samples"]
            assert typ in ("counter", "gauge", "histogram", "summary", "untyped"), line
            current["type"] = typ
        elif line.startswith("#"):
            raise AssertionError("unexpected comment: " + line)
        else:
            m = SAMPLE.match(line)
            assert m, "bad sample line: %r" % line
            name, labels, value = m.group(1), m.group(2), m.group(3)
            assert current is not None and current["type"], "sample before TYPE: " + line
            fam = current["name"]
            allowed = {fam} if current["type"] != "histogram" else \
                {fam + "_bucket", fam + "_sum", fam + "_count"}
            assert name in allowed, "sample %s outside its family %s" % (name, fam)
            lab = {}
            if labels:
                for part in labels[1:-1].split(","):
                    k, _, v = part.partition("=")
                    assert v.startswith('"') and v.endswith('"'), line
                    lab[k] = v[1:-1]
            current["samples"].append((name, lab, float(value)))
    for fam in families.values():
        assert fam["samples"], "family without samples: " + fam["name"]
    return families


def check_histogram(fam):
    name = fam["name"]
    buckets = [(s[1]["le"], s[2]) for s in fam["samples"] if s[0] == name + "_bucket"]
    sums = [s[2] for s in fam["samples"] if s[0] == name + "_sum"]
    counts = [s[2] for s in fam["samples"] if s[0] == name + "_count"]
    assert len(sums) == 1 and len(counts) == 1
    assert buckets[-1][0] == "+Inf"
    les = [float(le) for le, _ in buckets[:-1]]
    assert les == sorted(les) and len(set(les)) == len(les), les
    # Buckets fit 1 ms .. 30 s.
    assert les[0] <= 0.001 and les[-1] >= 30
    values = [v for _, v in buckets]
    assert values == sorted(values), "buckets not cumulative: %r" % buckets
    assert values[-1] == counts[0]
    assert sums[0] >= 0
    return dict(buckets), sums[0], counts[0]


# ---------------------------------------------------------------- show stats

def test_show_stats_fields(stack):
    lines = ask(stack.d, "show stats")
    assert len(lines) == 1
    s = json.loads(lines[0])
    assert list(s) == STATS_KEYS
    assert s["version"] == "0.1.0"
    assert s["instance_id"] == "ug"
    assert s["health"] == "ok"
    assert s["redis_connected"] is True and s["paused"] is False
    assert s["inflight"] == 0 and s["max_inflight"] == 64
    assert (s["queue_depth"], s["processing"], s["dead"]) == (0, 0, 0)
    # rate_limit = 0 (conftest): no limit, and nothing granted.
    assert (s["rate_window_used"], s["rate_window_limit"]) == (0, 0)
    assert isinstance(s["uptime_s"], int) and 0 <= s["uptime_s"] < 60 * SLOW
    assert all(s[k] == 0 for k in STATS_COUNTERS)


def test_counters_are_exact(env):
    """A known workload, one request at a time, and every counter of
    show stats checked to the unit."""
    env.start_redis()
    env.start_twilio()
    d = env.daemon(start=False, extra={"twilio.on_exists": "update"})
    # Left behind by a crash: taken back on start.
    env.r.lpush("usergate:processing:ug", json.dumps({"Identity": "rec"}))
    d.start()
    d.wait_healthy()
    n = 1
    env.wait_results(n)

    def one(req, fault=None):
        nonlocal n
        if fault:
            env.twilio.control(next=[fault])
        env.push(req)
        n += 1
        return env.wait_results(n)[-1]

    assert one({"Identity": "a"})["status"] == "created"                   # http 1
    assert one({"Identity": "b"})["status"] == "created"                   # http 1
    assert one({"Identity": "a"})["status"] == "duplicate"                 # http 0
    assert one(b"\xc1 garbage")["status"] == "invalid"                     # http 0
    env.r.delete("usergate:identity:b")
    assert one({"Identity": "b"})["status"] == "exists"                    # 409, GET
    env.r.delete("usergate:identity:a")
    assert one({"Identity": "a", "FriendlyName": "New"})["status"] == "updated"  # 409, GET, POST
    assert one({"Identity": "f"}, fault="400")["status"] == "failed"       # http 1
    r = one({"Identity": "g"}, fault="429")                                # 429, 201
    assert r["status"] == "created" and r["attempts"] == 2
    s = stats(d)
    want = {"received": 9, "invalid": 1, "duplicate": 1, "created": 4, "exists": 1,
            "updated": 1, "failed": 1, "retries": 1, "http_requests": 11, "recovered": 1,
            "rate_limited": 1, "dead_dropped": 0, "failovers": 0,
            "redis_reconnects": 0}
    assert {k: s[k] for k in STATS_COUNTERS} == want
    assert s["redis_role"] == "master"
    assert env.twilio.stats()["requests"] == 11
    assert (s["queue_depth"], s["processing"], s["dead"]) == (0, 0, 2)
    assert s["inflight"] == 0
    # Lengths are read fresh: paused, two waiting requests show at once.
    assert ask1(d, "pause") == "ok"
    env.push({"Identity": "w1"}, {"Identity": "w2"})
    s = stats(d)
    assert s["queue_depth"] == 2 and s["paused"] is True
    assert s["received"] == 9


# ---------------------------------------------------------------- show metrics

def test_show_metrics_is_prometheus_text(stack):
    stack.push({"Identity": "m1"}, {"Identity": "m2"}, b"not a request")
    stack.wait_results(3)
    text = "\n".join(ask(stack.d, "show metrics")) + "\n"
    fams = parse_prometheus(text)
    s = stats(stack.d)
    for name, fam in fams.items():
        assert name.startswith("usergate_"), name
        if fam["type"] == "counter":
            assert name.endswith("_total"), name
        else:
            assert not name.endswith("_total"), name
    # Every counter of show stats, with the same value.
    counters = {n[len("usergate_"):-len("_total")]: f["samples"][0][2]
                for n, f in fams.items() if f["type"] == "counter"}
    assert counters == {k: float(s[k]) for k in STATS_COUNTERS}
    # The two histograms, in seconds.
    twilio = fams["usergate_twilio_request_duration_seconds"]
    result = fams["usergate_enqueue_to_result_seconds"]
    assert twilio["type"] == result["type"] == "histogram"
    _, tsum, tcount = check_histogram(twilio)
    assert tcount == s["http_requests"] == 2
    assert 0 < tsum < 10 * SLOW
    _, rsum, rcount = check_histogram(result)
    assert rcount == 3
    assert 0 < rsum < 30 * SLOW
    # Gauges that say how the daemon is.
    assert fams["usergate_healthy"]["samples"][0][2] == 1
    assert fams["usergate_redis_connected"]["samples"][0][2] == 1
    assert fams["usergate_dead"]["samples"][0][2] == 1
    assert fams["usergate_max_inflight"]["samples"][0][2] == 64


def test_metrics_histogram_buckets_follow_latency(stack):
    stack.twilio.control(latency_ms=300)
    stack.push({"Identity": "slow-metric"})
    stack.wait_results(1)
    fams = parse_prometheus("\n".join(ask(stack.d, "show metrics")) + "\n")
    buckets, tsum, tcount = check_histogram(fams["usergate_twilio_request_duration_seconds"])
    assert tcount == 1 and tsum >= 0.3
    # 300 ms: not in the buckets below 0.25 s, in every one from 0.5 s up.
    assert buckets["0.25"] == 0 and buckets["0.5"] in (0, 1) and buckets["+Inf"] == 1
    assert buckets["30"] == 1


# ---------------------------------------------------------------- show queue

def test_show_queue(stack):
    q = json.loads(ask1(stack.d, "show queue"))
    assert list(q) == ["depth", "processing", "dead", "oldest_age_s"]
    assert (q["depth"], q["processing"], q["dead"]) == (0, 0, 0)
    assert q["oldest_age_s"] == 0
    # One request held in flight (its Identity owned elsewhere), one bad
    # one dead, two waiting while paused.
    stack.r.set("usergate:identity:held", "someone-else", ex=120)
    stack.push({"Identity": "held"}, b"bad")
    wait_for(lambda: stack.r.llen("usergate:dead") == 1, what="the dead entry")
    wait_for(lambda: json.loads(ask1(stack.d, "show queue"))["oldest_age_s"] >= 1,
             what="oldest_age_s to grow")
    assert ask1(stack.d, "pause") == "ok"
    stack.push({"Identity": "w1"}, {"Identity": "w2"})
    q = json.loads(ask1(stack.d, "show queue"))
    assert (q["depth"], q["processing"], q["dead"]) == (2, 1, 1)
    assert q["oldest_age_s"] >= 1
    stack.r.delete("usergate:identity:held")
    assert ask1(stack.d, "resume") == "ok"
    stack.wait_results(4)
    q = json.loads(ask1(stack.d, "show queue"))
    assert (q["depth"], q["processing"], q["dead"], q["oldest_age_s"]) == (0, 0, 1, 0)


# ---------------------------------------------------------------- health

def test_health_follows_redis(env):
    env.start_redis()
    env.start_twilio()
    d = env.daemon().wait_healthy()
    assert ask(d, "health") == ["ok"]
    env.redis.stop()
    down = "degraded: redis unreachable: connection refused"
    wait_for(lambda: ask(d, "health") == [down], what="degraded health")
    s = stats(d)
    assert s["health"] == down
    assert s["redis_connected"] is False and s["redis_up_s"] is None
    assert s["redis_reconnects"] == 0
    assert s["queue_depth"] is None and s["processing"] is None and s["dead"] is None
    assert ask1(d, "show queue") == "error: redis unavailable"
    assert ask1(d, "dead list") == "error: redis unavailable"
    assert ask1(d, "dead retry all") == "error: redis unavailable"
    fams = parse_prometheus("\n".join(ask(d, "show metrics")) + "\n")
    assert fams["usergate_healthy"]["samples"][0][2] == 0
    assert fams["usergate_redis_connected"]["samples"][0][2] == 0
    assert "usergate_queue_depth" not in fams
    env.redis.start()
    wait_for(lambda: ask(d, "health") == ["ok"], timeout=30, what="health ok again")
    s = stats(d)
    assert s["redis_connected"] is True and s["redis_up_s"] >= 0
    assert s["redis_reconnects"] == 1


def test_health_follows_twilio_credentials(stack):
    stack.twilio.control(auth_down=True)
    stack.push({"Identity": "blocked"})
    h = wait_for(lambda: (lambda a: a if a != "ok" else None)(ask1(stack.d, "health")),
                 what="degraded health")
    assert h.startswith("degraded: ") and len(h) > len("degraded: ")
    assert stats(stack.d)["health"] == h
    # The request waits (it is not failed) while Twilio refuses us.
    assert stack.r.llen("usergate:results") == 0
    stack.twilio.control(auth_down=False)
    wait_for(lambda: ask1(stack.d, "health") == "ok", timeout=90, what="health ok again")
    r = stack.wait_results(1, timeout=60)[0]
    assert r["status"] == "created"


# ---------------------------------------------------------------- pause / resume

def test_pause_and_resume(stack):
    assert ask(stack.d, "pause") == ["ok"]
    assert stats(stack.d)["paused"] is True
    assert ask(stack.d, "pause") == ["ok"]          # idempotent
    stack.push(*[{"Identity": "p%d" % i} for i in range(3)])
    # They stay where producers put them.
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        assert stack.r.llen("usergate:requests") == 3
        time.sleep(0.05)
    assert stack.r.llen("usergate:processing:ug") == 0
    assert stats(stack.d)["received"] == 0
    assert ask(stack.d, "resume") == ["ok"]
    res = stack.wait_results(3)
    assert sorted(r["identity"] for r in res) == ["p0", "p1", "p2"]
    assert stack.r.llen("usergate:requests") == 0
    assert stats(stack.d)["paused"] is False
    assert ask(stack.d, "resume") == ["ok"]


def test_pause_ok_means_nothing_more_is_taken(stack):
    """Once pause has said ok, a request pushed right after stays in the
    list: the blocking take that was waiting for it is over by then."""
    for i in range(20):
        assert ask1(stack.d, "pause") == "ok"
        stack.push({"Identity": "race-%d" % i})
        assert stack.r.llen("usergate:requests") == 1, "taken after pause said ok (round %d)" % i
        assert ask1(stack.d, "resume") == "ok"
        stack.wait_results(i + 1)
        # Let the daemon go back to waiting on the empty list.
        wait_for(lambda: stats(stack.d)["inflight"] == 0, what="idle")


def test_pause_lets_in_flight_requests_finish(stack):
    stack.twilio.control(latency_ms=500)
    stack.push({"Identity": "in-flight"})
    wait_for(lambda: stats(stack.d)["inflight"] == 1, what="one request in flight")
    assert ask1(stack.d, "pause") == "ok"
    assert stack.wait_results(1)[0]["status"] == "created"


# ---------------------------------------------------------------- reload

def test_reload_applies_a_changed_key(stack):
    d = stack.d
    stack.push({"Identity": "before-reload"})
    stack.wait_results(1)
    wait_for(lambda: "identity=before-reload" in d.log(), what="the debug line")
    assert stats(d)["max_inflight"] == 64
    d.extra["twilio.max_inflight"] = 7
    d.extra["log.level"] = "warning"
    d.write_config()
    assert ask(d, "reload") == ["ok"]
    assert stats(d)["max_inflight"] == 7
    # The new log level applies at once: no debug line for this one.
    stack.push({"Identity": "after-reload"})
    assert stack.wait_results(2)[1]["status"] == "created"
    # SIGHUP goes the same way.
    d.extra["twilio.max_inflight"] = 9
    d.extra["log.level"] = "debug"
    d.write_config()
    d.send_signal(signal.SIGHUP)
    wait_for(lambda: stats(d)["max_inflight"] == 9, what="SIGHUP reload")
    stack.push({"Identity": "after-sighup"})
    assert stack.wait_results(3)[2]["status"] == "created"
    wait_for(lambda: "identity=after-sighup" in d.log(), what="debug lines again")
    assert "identity=after-reload" not in d.log()


def test_reload_refuses_a_bad_file_and_keeps_the_old_one(stack):
    d = stack.d
    d.extra["twilio.max_inflight"] = 5
    d.write_config()
    assert ask1(d, "reload") == "ok"
    good = open(d.conf).read()
    d.write_config(good + "[twilio]\nno_such_key = 1\n")
    answer = ask1(d, "reload")
    assert answer.startswith("error: ")
    assert "no_such_key" in answer and d.conf in answer, answer
    assert stats(d)["max_inflight"] == 5
    # A value out of bounds: refused with its reason.
    d.write_config(good.replace("max_inflight = 5", "max_inflight = 0"))
    answer = ask1(d, "reload")
    assert answer.startswith("error: ") and "max_inflight" in answer, answer
    # A missing file.
    os.rename(d.conf, d.conf + ".away")
    answer = ask1(d, "reload")
    assert answer.startswith("error: ") and d.conf in answer, answer
    os.rename(d.conf + ".away", d.conf)
    d.write_config(good.replace("max_inflight = 5", "max_inflight = many"))
    # SIGHUP with the bad file: refused too, logged, the daemon goes on.
    d.send_signal(signal.SIGHUP)
    wait_for(lambda: d.log().count("reload refused") >= 4, what="SIGHUP refusal logged")
    assert ask1(d, "health") == "ok"
    assert stats(d)["max_inflight"] == 5
    stack.push({"Identity": "still-working"})
    assert stack.wait_results(1)[0]["status"] == "created"


def test_reload_keeps_restart_only_keys(stack):
    d = stack.d
    old_socket = d.status_socket
    d.write_config(open(d.conf).read().replace("status.sock", "status2.sock"))
    assert ask1(d, "reload") == "ok"
    assert "need a restart" in d.log()
    assert ask1(d, "health") == "ok"           # still on the old path
    assert d.status_socket == old_socket


# ---------------------------------------------------------------- dead list / retry

def test_dead_list(stack):
    assert ask(stack.d, "dead list") == []      # an answer of no lines
    for i in range(12):
        stack.push(json.dumps({"Identity": "d%d" % i, "Bogus": i}).encode())
    stack.wait_results(12)
    lines = ask(stack.d, "dead list")
    assert len(lines) == 10                     # the default
    entries = [json.loads(x) for x in lines]
    assert all(set(e) == {"request", "result"} for e in entries)
    # Newest first.
    assert [e["request"]["Identity"] for e in entries] == ["d%d" % i for i in range(11, 1, -1)]
    assert all(e["result"]["status"] == "invalid" and
               e["result"]["error"]["code"] == "unknown_field" for e in entries)
    assert [json.loads(x)["request"]["Identity"] for x in ask(stack.d, "dead list 3")] == \
        ["d11", "d10", "d9"]
    assert len(ask(stack.d, "dead list 100")) == 12
    assert ask(stack.d, "DEAD LIST 1") == [lines[0]]
    for bad in ("dead list 0", "dead list -2", "dead list x", "dead list 10001",
                "dead list 1 2"):
        assert ask(stack.d, bad) == ["error: dead list takes a count from 1 to 10000"], bad


def test_dead_retry_all_processes_them_again(stack):
    stack.twilio.control(next=["400", "400"])
    stack.push({"Identity": "r1"})
    stack.wait_results(1)
    stack.push({"Identity": "r2"})
    res = stack.wait_results(2)
    assert [r["status"] for r in res] == ["failed", "failed"]
    assert res[0]["error"]["code"] == "twilio_rejected"
    assert stats(stack.d)["dead"] == 2
    assert json.loads(ask1(stack.d, "dead retry all")) == {"moved": 2}
    res = stack.wait_results(4)
    assert sorted((r["identity"], r["status"]) for r in res[2:]) == \
        [("r1", "created"), ("r2", "created")]
    s = stats(stack.d)
    assert (s["dead"], s["failed"], s["created"]) == (0, 2, 2)
    assert ask(stack.d, "dead list") == []
    assert json.loads(ask1(stack.d, "dead retry")) == {"moved": 0}


def test_dead_retry_n_moves_the_newest_n(stack):
    stack.twilio.control(next=["400", "400", "400"])
    for i in range(3):
        stack.push({"Identity": "n%d" % i})
        stack.wait_results(i + 1)
    assert ask1(stack.d, "pause") == "ok"
    assert json.loads(ask1(stack.d, "dead retry 2")) == {"moved": 2}
    assert stack.r.llen("usergate:dead") == 1
    waiting = sorted(json.loads(x)["Identity"] for x in stack.r.lrange("usergate:requests", 0, -1))
    assert waiting == ["n1", "n2"]
    assert json.loads(ask1(stack.d, "dead list 1"))["request"]["Identity"] == "n0"
    assert ask1(stack.d, "resume") == "ok"
    res = stack.wait_results(5)
    assert sorted(r["identity"] for r in res[3:] if r["status"] == "created") == ["n1", "n2"]
    for bad in ("dead retry 0", "dead retry none", "dead retry 1 2"):
        assert ask1(stack.d, bad) == "error: dead retry takes a count from 1 to 10000, or all"


def test_dead_list_is_capped_and_the_flood_log_bounded(env):
    """3000 invalid requests with dead_max = 100: the dead list keeps the
    newest 100, dead_dropped counts the 2900 others, and the per-request
    warnings are rate-limited, the rest counted in summary lines."""
    env.start_redis()
    env.start_twilio()
    d = env.daemon(extra={"results.dead_max": "100", "log.level": "info"}).wait_healthy()
    n = 3000
    for i in range(0, n, 500):
        env.r.lpush("usergate:requests",
                    *[json.dumps({"Identity": "f%d" % k, "Bogus": 1}) for k in range(i, i + 500)])
    env.wait_results(n, timeout=120)
    assert env.r.llen("usergate:dead") == 100
    s = stats(d)
    assert (s["dead"], s["dead_dropped"], s["invalid"]) == (100, 2900, n)
    # The newest survive: the last pushed is at the head.
    assert json.loads(env.r.lindex("usergate:dead", 0))["request"]["Identity"] == "f%d" % (n - 1)
    assert json.loads(env.r.lindex("usergate:dead", -1))["request"]["Identity"] == "f%d" % (n - 100)

    def accounted():
        lines = d.log().splitlines()
        written = sum('msg="request not done"' in x for x in lines)
        held = sum(int(re.search(r" count=(\d+)", x).group(1)) for x in lines
                   if 'msg="suppressed similar lines"' in x and 'like="request not done"' in x)
        return (written, held) if written + held == n else None
    written, held = wait_for(accounted, timeout=10 * SLOW, what="every warning written or counted")
    assert written <= 300, written


def test_dead_entry_of_raw_bytes_is_msgpack_bin(env):
    """A request that does not decode to text is kept as msgpack bin, which
    strict decoders (Python's msgpack with raw=False) read; dead list shows
    it as text when it is UTF-8 and in hexadecimal otherwise, and dead retry
    leaves it be."""
    env.start_redis()
    env.start_twilio()
    d = env.daemon(extra={"results.format": "msgpack"}).wait_healthy()
    not_utf8 = b"\xc1\xff\xfe garbage"
    bad_str = msgpack.packb({"Identity": "x"})[:-1] + b"\xff"   # a str of byte ff
    env.push(not_utf8, bad_str, b"plain text")
    env.wait_results(3)
    entries = [msgpack.unpackb(x, raw=False) for x in env.r.lrange("usergate:dead", 0, -1)]
    assert [e["request"] for e in entries] == [b"plain text", bad_str, not_utf8]
    assert [e["result"]["error"]["code"] for e in entries] == ["malformed", "bad_utf8", "malformed"]
    lines = [json.loads(x) for x in ask(d, "dead list")]
    assert lines[0]["request"] == "plain text"
    assert lines[1]["request_hex"] == bad_str.hex() and "request" not in lines[1]
    assert lines[2]["request_hex"] == not_utf8.hex()
    assert json.loads(ask1(d, "dead retry all")) == {"moved": 0}
    assert env.r.llen("usergate:dead") == 3


# ---------------------------------------------------------------- the protocol

def test_help_lists_every_command(stack):
    lines = ask(stack.d, "help")
    text = "\n".join(lines)
    for cmd in COMMANDS:
        assert any(line.startswith(cmd) for line in lines), (cmd, text)
    assert ask(stack.d, "HELP") == lines


@pytest.mark.parametrize("line", ["bogus", "show", "show everything", "health now",
                                  "stats", "dead", "dead purge", "GET / HTTP/1.1",
                                  "a b c d e f g"])
def test_unknown_commands(stack, line):
    assert ask(stack.d, line) == [UNKNOWN]


def test_every_answer_ends_with_an_empty_line(stack):
    """Every command in a row on one connection, all written at once: the
    answers come in order, each ended by exactly one empty line."""
    stack.push(b"dead-one")
    stack.wait_results(1)
    cmds = ["show stats", "show metrics", "show queue", "health", "pause", "resume",
            "reload", "dead list", "dead list 5", "dead retry 1", "help", "bogus",
            "show stats"]
    c = StatusConn(stack.d.status_socket)
    c.send("\n".join(cmds).encode() + b"\n")
    answers = [c.answer() for _ in cmds]
    c.close()
    for cmd, a in zip(cmds, answers):
        assert all(line != "" for line in a), (cmd, a)
    assert list(json.loads(answers[0][0])) == STATS_KEYS
    assert answers[1][0].startswith("# HELP usergate_")
    assert list(json.loads(answers[2][0])) == ["depth", "processing", "dead", "oldest_age_s"]
    assert answers[3:7] == [["ok"]] * 4
    assert len(answers[7]) == 1 and len(answers[8]) == 1
    assert json.loads(answers[9][0]) == {"moved": 0}   # undecodable: left dead
    assert len(answers[10]) == len(COMMANDS)
    assert answers[11] == [UNKNOWN]
    assert json.loads(answers[12][0])["dead"] == 1
    # Raw bytes: an answer is its lines and exactly one empty line.
    raw = socket.socket(socket.AF_UNIX)
    raw.settimeout(10 * SLOW)
    raw.connect(stack.d.status_socket)
    raw.sendall(b"health\n")
    data = b""
    while not data.endswith(b"\n\n"):
        data += raw.recv(100)
    assert data == b"ok\n\n"
    raw.close()


def test_crlf_blanks_and_empty_lines(stack):
    c = StatusConn(stack.d.status_socket)
    c.send(b"\r\n\n   \nhealth\r\n  SHOW\tQUEUE  \n")
    assert c.answer() == ["ok"]
    assert "depth" in json.loads(c.answer()[0])
    c.close()


def test_shut_write_still_gets_the_answer(stack):
    """`echo health | socat - UNIX-CONNECT:...`: the client closes its
    writing side at once and still reads the whole answer."""
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10 * SLOW)
    s.connect(stack.d.status_socket)
    s.sendall(b"health\nshow queue\n")
    s.shutdown(socket.SHUT_WR)
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    first, second, rest = data.split(b"\n\n", 2)
    assert first == b"ok" and json.loads(second)["depth"] == 0 and rest == b""


def test_long_line_and_binary_garbage(stack):
    # A long line, ended or not: an error answer, then the connection
    # closes (nothing after it is read).
    for line in (b"x" * 1025 + b"\nhealth\n", b"x" * 5000 + b"\nhealth\n", b"y" * 200000):
        c = StatusConn(stack.d.status_socket)
        try:
            c.send(line)
        except (BrokenPipeError, ConnectionResetError):
            pass        # it hung up before we finished: the answer waits
        
        assert c.answer() == ["error: line too long"]
        assert c.closed()
        c.close()
    # At the limit it is still a line (an unknown command).
    c = StatusConn(stack.d.status_socket)
    assert c.ask("z" * 1024) == [UNKNOWN]
    assert c.ask("health" + " " * 1018) == ["ok"]
    c.close()
    # Binary garbage, NULs and control bytes included.
    c = StatusConn(stack.d.status_socket)
    c.send(b"\x00\x01\xff\xfe health\x1b[A\n")
    assert c.answer() == [UNKNOWN]
    c.send(b"heal\x00th\n")
    assert c.answer() == [UNKNOWN]
    c.send(bytes(b for b in range(256) if b not in (10, 13)) + b"\n")
    assert c.answer() == [UNKNOWN]
    assert c.ask("health") == ["ok"]
    c.close()
    assert ask(stack.d, "health") == ["ok"]
    assert stack.d.proc.poll() is None


def test_many_clients_at_once(stack):
    # Some idle connections stay open all along: they harm no one.
    idle = [StatusConn(stack.d.status_socket) for _ in range(20)]

    def client(n):
        c = StatusConn(stack.d.status_socket, timeout=60)
        for _ in range(5):
            assert c.ask("health") == ["ok"]
            s = json.loads(c.ask("show stats")[0])
            assert list(s) == STATS_KEYS
            assert json.loads(c.ask("show queue")[0])["depth"] == 0
        c.close()

    run_clients(client, 40)
    for c in idle:
        assert c.ask("health") == ["ok"]
        c.close()


def test_idle_client_is_closed_after_30_seconds(stack):
    start = time.monotonic()
    quiet = StatusConn(stack.d.status_socket, timeout=60)
    talker = StatusConn(stack.d.status_socket, timeout=60)
    assert talker.ask("health") == ["ok"]
    quiet.s.settimeout(60 * SLOW)
    assert quiet.closed()
    elapsed = time.monotonic() - start
    assert 29 <= elapsed < 45 * SLOW, elapsed
    # The one that talked 30 s ago is idle as well by now.
    talker.s.settimeout(10 * SLOW)
    assert talker.closed()
    quiet.close()
    talker.close()
    assert ask(stack.d, "health") == ["ok"]


def test_oldest_age_grows_while_requests_wait(stack):
    """A paused daemon with a queue: the head's wait shows in oldest_age_s
    (requests carry no enqueue time, so it is watched at the head)."""
    assert ask1(stack.d, "pause") == "ok"
    stack.push({"Identity": "waiting-1"}, {"Identity": "waiting-2"})
    wait_for(lambda: json.loads(ask1(stack.d, "show queue"))["oldest_age_s"] >= 1.5,
             timeout=15, what="oldest_age_s to grow while paused")
    q = json.loads(ask1(stack.d, "show queue"))
    assert q["depth"] == 2 and q["processing"] == 0
    assert ask1(stack.d, "resume") == "ok"
    stack.wait_results(2)
    wait_for(lambda: json.loads(ask1(stack.d, "show queue"))["oldest_age_s"] == 0,
             what="oldest_age_s back to 0")
