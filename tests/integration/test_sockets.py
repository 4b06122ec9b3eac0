"""The request socket (SPEC §6.1): framing, answers, acknowledgement order,
outages, hostile input, disconnects, backpressure, and the socket file
itself (stale, owned by a live daemon, mode)."""
import json
import os
import signal
import socket
import stat
import threading
import time

import msgpack
import pytest

from conftest import SLOW, wait_for, decode, run_clients

USER_FIELDS = {"sid", "account_sid", "chat_service_sid", "role_sid", "identity",
               "friendly_name", "attributes", "is_online", "is_notifiable",
               "date_created", "date_updated", "url", "links"}
RESULT_KEYS = {"request_id", "identity", "status", "user", "error", "attempts",
               "source", "received_at", "completed_at"}


class Client:
    """One connection to the request socket, in JSON lines or a msgpack
    stream.  recv() returns the next answer as a dict and keeps its raw
    bytes in self.last_raw; it raises EOFError when the daemon hung up."""

    def __init__(self, path, framing="json", timeout=30):
        self.framing = framing
        self.s = socket.socket(socket.AF_UNIX)
        self.s.settimeout(timeout * SLOW)
        self.s.connect(path)
        self.buf = b""
        self.unpacker = msgpack.Unpacker(raw=False)
        self.last_raw = None

    def encode(self, req):
        if isinstance(req, bytes):
            return req
        if self.framing == "json":
            return json.dumps(req).encode() + b"\n"
        return msgpack.packb(req)

    def send(self, *reqs):
        self.s.sendall(b"".join(self.encode(r) for r in reqs))

    def recv(self):
        if self.framing == "json":
            while b"\n" not in self.buf:
                chunk = self.s.recv(65536)
                if not chunk:
                    raise EOFError("closed with %r buffered" % self.buf)
                self.buf += chunk
            line, self.buf = self.buf.split(b"\n", 1)
            self.last_raw = line
            return json.loads(line)
        while True:
            for obj in self.unpacker:
                return obj
            chunk = self.s.recv(65536)
            if not chunk:
                raise EOFError("closed")
            self.last_raw = chunk
            self.unpacker.feed(chunk)

    def recv_n(self, n):
        return [self.recv() for _ in range(n)]

    def at_eof(self):
        """True when the daemon closed the connection (nothing more to
        read); fails on any unexpected byte.  A close with bytes of ours
        still unread on the daemon's side is a reset on Linux, after every
        byte the daemon wrote was read: that counts as closed too."""
        try:
            chunk = self.s.recv(65536)
        except ConnectionResetError:
            return True
        assert chunk == b"", "unexpected bytes: %r" % chunk[:200]
        return True

    def close(self):
        self.s.close()


def check_result(r, identity, status="created"):
    assert set(r) <= RESULT_KEYS, r
    assert r["status"] == status, r
    assert r["identity"] == identity
    assert r["source"] == "socket"
    assert isinstance(r["request_id"], str) and r["request_id"]
    assert r["received_at"].endswith("Z") and len(r["received_at"]) == 24
    assert r["completed_at"].endswith("Z") and len(r["completed_at"]) == 24
    if status in ("created", "exists", "updated", "duplicate"):
        assert set(r["user"]) == USER_FIELDS
        assert r["user"]["identity"] == identity
        assert "error" not in r
    else:
        assert "user" not in r and r["error"]["code"] and r["error"]["message"]


def check_result_invalid(r, code):
    assert set(r) <= RESULT_KEYS, r
    assert r["status"] == "invalid" and r["error"]["code"] == code, r
    assert r["error"]["message"]
    assert r["source"] == "socket" and r["attempts"] == 0
    assert len(r["request_id"]) == 32
    assert "user" not in r and "identity" not in r


def hold_identity(env, identity):
    """Makes another (imaginary) instance own identity in flight, so that a
    request for it waits, polling, until release_identity()."""
    env.r.set("usergate:identity:" + identity, "someone-else", ex=120)


def release_identity(env, identity):
    env.r.delete("usergate:identity:" + identity)


# ---------------------------------------------------------------- framing

def test_json_line_gets_the_full_result(stack):
    c = Client(stack.d.socket)
    c.send({"Identity": "sock-alice", "FriendlyName": "Alice",
            "Attributes": {"team": "a"}, "RequestId": "sock-1"})
    r = c.recv()
    check_result(r, "sock-alice")
    assert r["request_id"] == "sock-1"
    assert r["attempts"] == 1
    assert r["user"]["friendly_name"] == "Alice"
    assert json.loads(r["user"]["attributes"]) == {"team": "a"}
    # The same result went to Redis before the answer, as for any request.
    assert stack.results() == [r]
    assert stack.r.llen("usergate:processing:ug") == 0
    assert json.loads(stack.r.get("usergate:user:sock-alice"))["sid"] == r["user"]["sid"]
    # A second request on the same connection: answered from dedup state.
    c.send({"identity": "sock-alice"})
    dup = c.recv()
    check_result(dup, "sock-alice", "duplicate")
    assert dup["user"] == r["user"] and dup["attempts"] == 0
    assert len(dup["request_id"]) == 32 and dup["request_id"] != r["request_id"]
    s = stack.d.stats()
    assert (s["received"], s["created"], s["duplicate"]) == (2, 1, 1)
    c.close()


def test_msgpack_stream_is_answered_in_msgpack(stack):
    c = Client(stack.d.socket, framing="msgpack")
    # Two values in one write, and one split across writes: a stream, not
    # one value per read.
    c.send({"Identity": "mp-1", "RequestId": "m1"}, {"identity": "mp-2", "request_id": "m2"})
    first = c.recv_n(2)
    raw = msgpack.packb({"Identity": "mp-3", "FriendlyName": "Three", "RequestId": "m3"})
    c.send(raw[:5])
    time.sleep(0.05)
    c.send(raw[5:])
    third = c.recv()
    # The answer bytes are a msgpack map, not JSON text.
    assert c.last_raw[:1] != b"{" and (0x80 <= c.last_raw[0] <= 0x8f or c.last_raw[0] == 0xde)
    by = {r["request_id"]: r for r in first + [third]}
    assert set(by) == {"m1", "m2", "m3"}
    for rid, ident in (("m1", "mp-1"), ("m2", "mp-2"), ("m3", "mp-3")):
        check_result(by[rid], ident)
    assert by["m3"]["user"]["friendly_name"] == "Three"
    # Results in Redis follow [results] format (json here), whatever the
    # socket's framing.
    assert {r["request_id"] for r in stack.results()} == {"m1", "m2", "m3"}
    c.close()


def test_msgpack_values_arriving_a_few_bytes_at_a_time(stack):
    """Values cut into many small reads, across value boundaries, come out
    whole and exact: the streaming unpacker keeps its place between reads
    (and parses each byte once, which the framing fuzzer's byte-at-a-time
    seed holds to a time limit)."""
    c = Client(stack.d.socket, framing="msgpack")
    stream = b"".join(msgpack.packb({"Identity": "drip-%d" % i, "FriendlyName": "x" * 200,
                                     "RequestId": "d%d" % i}) for i in range(3))
    for i in range(0, len(stream), 7):
        c.send(stream[i:i + 7])
        time.sleep(0.002)
    got = {r["request_id"]: r for r in c.recv_n(3)}
    for i in range(3):
        check_result(got["d%d" % i], "drip-%d" % i)
        assert got["d%d" % i]["user"]["friendly_name"] == "x" * 200
    s = stack.d.stats()
    assert (s["received"], s["invalid"]) == (3, 0)
    c.close()


def test_msgpack_no_wait(stack):
    c = Client(stack.d.socket, framing="msgpack")
    c.send({"Identity": "mp-nowait", "Wait": False})
    ack = c.recv()
    assert set(ack) == {"status", "request_id"} and ack["status"] == "queued"
    res = stack.wait_results(1)[0]
    assert res["request_id"] == ack["request_id"] and res["source"] == "socket"
    c.close()


def test_answers_come_in_completion_order(stack):
    """A request held back (its Identity in flight elsewhere) is answered
    after one sent later on the same connection; request_id pairs them."""
    hold_identity(stack, "slow-one")
    c = Client(stack.d.socket)
    c.send({"Identity": "slow-one", "RequestId": "first"},
           {"Identity": "fast-one", "RequestId": "second"},
           {"Identity": "fast-two", "RequestId": "third"})
    early = c.recv_n(2)
    assert {r["request_id"] for r in early} == {"second", "third"}
    assert all(r["status"] == "created" for r in early)
    # The slow one is still waiting, in the processing list.
    assert len(stack.r.lrange("usergate:processing:ug", 0, -1)) == 1
    release_identity(stack, "slow-one")
    late = c.recv()
    assert late["request_id"] == "first"
    check_result(late, "slow-one")
    assert stack.r.llen("usergate:processing:ug") == 0
    c.close()


# ---------------------------------------------------------------- acknowledgement

def test_no_wait_is_queued_at_once_with_the_result_id(stack):
    # The fake answers slowly: the "queued" answer cannot be waiting for it.
    stack.twilio.control(latency_ms=int(1500 * SLOW))
    c = Client(stack.d.socket)
    raw = json.dumps({"Identity": "nw-1", "Wait": False}).encode()
    c.send(raw + b"\n")
    ack = c.recv()
    assert set(ack) == {"status", "request_id"}, ack
    assert ack["status"] == "queued" and len(ack["request_id"]) == 32
    # Acknowledged means already in Redis: in our processing list, with no
    # result yet.
    assert stack.r.lrange("usergate:processing:ug", 0, -1) == [raw]
    assert stack.r.llen("usergate:results") == 0
    # A given RequestId is the one echoed.
    c.send({"Identity": "nw-2", "Wait": False, "RequestId": "mine"})
    ack2 = c.recv()
    assert ack2 == {"status": "queued", "request_id": "mine"}
    res = {r["identity"]: r for r in stack.wait_results(2)}
    assert res["nw-1"]["request_id"] == ack["request_id"]
    assert res["nw-2"]["request_id"] == "mine"
    assert all(r["source"] == "socket" and r["status"] == "created" for r in res.values())
    # Nothing more is written on the connection for a no-wait request.
    c.s.settimeout(0.5)
    with pytest.raises(socket.timeout):
        c.s.recv(1)
    c.close()


def test_request_is_in_processing_before_its_answer(stack):
    stack.twilio.control(latency_ms=int(1000 * SLOW))
    c = Client(stack.d.socket)
    raw = json.dumps({"Identity": "proc-1", "RequestId": "p1"}).encode()
    c.send(raw + b"\n")
    wait_for(lambda: stack.r.lrange("usergate:processing:ug", 0, -1) == [raw],
             what="the request in the processing list")
    assert stack.r.llen("usergate:results") == 0
    r = c.recv()
    check_result(r, "proc-1")
    assert stack.r.llen("usergate:processing:ug") == 0
    c.close()


# ---------------------------------------------------------------- outages

def test_redis_down_is_unavailable_and_nothing_is_written(env):
    env.start_redis(appendonly=True)     # what was written survives the restart
    env.start_twilio()
    d = env.daemon().wait_healthy()
    c = Client(d.socket)
    c.send({"Identity": "before"})
    check_result(c.recv(), "before")
    env.redis.stop()
    wait_for(lambda: d.status("health") ==
             "degraded: redis unreachable: connection refused",
             what="daemon to notice Redis is gone")
    c.send({"Identity": "during", "RequestId": "d1"})
    assert c.recv() == {"status": "unavailable", "request_id": "d1"}
    c.send({"Identity": "during-2", "Wait": False})
    ans = c.recv()
    assert ans["status"] == "unavailable"
    # A new connection, msgpack this time: the same.
    m = Client(d.socket, framing="msgpack")
    m.send({"Identity": "during-3"})
    assert m.recv()["status"] == "unavailable"
    m.close()
    env.redis.start()
    wait_for(lambda: d.status("health") == "ok", timeout=30, what="redis reconnect")
    assert env.r.llen("usergate:processing:ug") == 0
    assert env.r.llen("usergate:requests") == 0
    assert [r["identity"] for r in env.results()] == ["before"]
    assert env.r.get("usergate:identity:during") is None
    assert env.twilio.stats()["creates_by_identity"] == {"before": 1}
    s = d.stats()
    assert s["received"] == 1 and s["created"] == 1
    # The same connection works again.
    c.send({"Identity": "after"})
    check_result(c.recv(), "after")
    c.close()


# ---------------------------------------------------------------- hostile input

def test_oversized_json_line_then_the_connection_goes_on(stack):
    c = Client(stack.d.socket)
    big = b'{"Identity": "big", "FriendlyName": "' + b"n" * (70 * 1024) + b'"}\n'
    c.send(big + json.dumps({"Identity": "after-big"}).encode() + b"\n")
    answers = c.recv_n(2)
    by = {a.get("identity"): a for a in answers}
    bad = [a for a in answers if a["status"] == "invalid"]
    assert len(bad) == 1 and bad[0]["error"]["code"] == "too_large"
    assert bad[0]["source"] == "socket" and bad[0]["attempts"] == 0
    check_result(by["after-big"], "after-big")
    assert stack.r.llen("usergate:dead") == 1
    c.close()


def test_oversized_json_line_arriving_slowly(stack):
    """The limit is enforced before the line ends: the answer comes while
    the line is still arriving, and its tail is skipped."""
    c = Client(stack.d.socket)
    c.send(b'{"Identity": "slow-big", "FriendlyName": "' + b"n" * (66 * 1024))
    bad = c.recv()
    assert bad["status"] == "invalid" and bad["error"]["code"] == "too_large"
    for _ in range(4):
        c.send(b"n" * 50000)
    c.send(b'"}\n{"Identity": "after-slow-big"}\n')
    check_result(c.recv(), "after-slow-big")
    # The tail was skipped, not read as requests of its own.
    s = stack.d.stats()
    assert (s["received"], s["invalid"], s["created"]) == (2, 1, 1)
    c.close()


def test_bad_json_lines_get_invalid_answers(stack):
    c = Client(stack.d.socket)
    c.send(b'{"Identity": "x"\n',                      # malformed
           b'{"Identity": "y", "Bogus": 1}\n',          # unknown field
           b'{"Identity": "z"}\r\n',                    # CRLF is fine
           b"\n",                                       # empty line: nothing
           b"[1, 2]\n")                                 # not an object
    answers = c.recv_n(4)
    codes = sorted(a.get("error", {}).get("code", a["status"]) for a in answers)
    assert codes == ["created", "malformed", "malformed", "unknown_field"]
    assert stack.r.llen("usergate:dead") == 3
    assert stack.d.stats()["received"] == 4
    c.close()


@pytest.mark.parametrize("garbage,code", [
    (b"\xc1\xc1\xc1 not msgpack", "malformed"),
    # A map whose string is larger than the frame limit.
    (b"\x81\xa8Identity\xdb" + (70 * 1024).to_bytes(4, "big") + b"a" * (70 * 1024), "too_large"),
], ids=["malformed", "too_large"])
def test_undecodable_msgpack_answer_then_close(stack, garbage, code):
    other = Client(stack.d.socket)                  # another client, unharmed
    other.send({"Identity": "bystander-1"})
    check_result(other.recv(), "bystander-1")
    c = Client(stack.d.socket, framing="msgpack")
    c.send({"Identity": "good-first"})
    check_result(c.recv(), "good-first")
    c.send(garbage)
    ans = c.recv()
    # A full result, like any bad request; then the stream is given up.
    check_result_invalid(ans, code)
    assert c.at_eof()
    c.close()
    dead = [decode(x) for x in stack.r.lrange("usergate:dead", 0, -1)]
    assert [d["result"] for d in dead] == [ans]
    s = stack.d.stats()
    assert (s["received"], s["invalid"], s["created"]) == (3, 1, 2)
    other.send({"Identity": "bystander-2"})
    check_result(other.recv(), "bystander-2")
    assert stack.d.status("health") == "ok"
    other.close()


def test_garbage_json_line_does_not_hurt_others(stack):
    c = Client(stack.d.socket)
    c.send(b"{" + bytes(b for b in range(256) if b != 10) * 4 + b"\n")
    ans = c.recv()
    assert ans["status"] == "invalid" and ans["error"]["code"] == "malformed"
    c.send({"Identity": "after-garbage"})
    check_result(c.recv(), "after-garbage")
    c.close()


# ---------------------------------------------------------------- disconnects

def test_client_gone_before_its_answer_loses_nothing(stack):
    stack.twilio.control(latency_ms=int(800 * SLOW))
    c = Client(stack.d.socket)
    c.send(*[{"Identity": "gone-%d" % i, "RequestId": "g%d" % i} for i in range(5)])
    wait_for(lambda: stack.r.llen("usergate:processing:ug") == 5,
             what="5 requests in processing")
    c.close()
    res = stack.wait_results(5)
    assert sorted(r["request_id"] for r in res) == ["g%d" % i for i in range(5)]
    assert all(r["status"] == "created" and r["source"] == "socket" for r in res)
    assert stack.r.llen("usergate:processing:ug") == 0
    # Half-closed: the client stops writing but still reads its answers.
    h = Client(stack.d.socket)
    h.send({"Identity": "half-closed"})
    h.s.shutdown(socket.SHUT_WR)
    check_result(h.recv(), "half-closed")
    assert h.at_eof()
    h.close()
    assert stack.d.status("health") == "ok"


def test_clients_that_leave_at_once_leave_nothing_behind(stack):
    """Connect and hang up (silent, mid-line, mid-value, after an answer):
    every connection is closed and freed on the daemon's side."""
    pid = stack.d.proc.pid

    def unix_sockets():
        """The daemon's open Unix sockets (its TCP links to Redis and the
        fake come and go on their own)."""
        with open("/proc/net/unix") as f:
            inodes = {line.split()[6] for line in f.readlines()[1:]}
        n = 0
        for fd in os.listdir("/proc/%d/fd" % pid):
            try:
                target = os.readlink("/proc/%d/fd/%s" % (pid, fd))
            except OSError:
                continue
            n += target.startswith("socket:[") and target[8:-1] in inodes
        return n

    base = unix_sockets()
    assert base >= 2        # the two listeners
    for i in range(40):
        for path in (stack.d.socket, stack.d.status_socket):
            s = socket.socket(socket.AF_UNIX)
            s.connect(path)
            if i % 4 == 1:
                s.sendall(b'{"Identity": "partial')
            elif i % 4 == 2:
                s.sendall(b"\x81\xa8Ident")
            elif i % 4 == 3 and path == stack.d.socket:
                s.sendall(b'{"Identity": "leaver-%d"}\n' % i)
                s.recv(65536)
            s.close()
    wait_for(lambda: unix_sockets() <= base, what="every connection closed")
    assert stack.d.status("health") == "ok"
    assert stack.d.stats()["received"] == 10


# ---------------------------------------------------------------- load

def test_backpressure_bounds_inflight(env):
    """max_inflight bounds the Twilio requests; three times as many requests
    again may be held (taken, claimed, results being written), never more:
    the processing list, read straight from Redis, stays at 2 + 6."""
    env.start_redis()
    env.start_twilio()
    d = env.daemon(extra={"twilio.max_inflight": 2}).wait_healthy()
    env.twilio.control(latency_ms=200)
    samples = []
    done = threading.Event()
    r = env.redis.client

    def sample():
        while not done.is_set():
            try:
                s = d.stats()
                samples.append((s["inflight"], r.llen("usergate:processing:ug")))
            except OSError:
                pass
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        clients = [Client(d.socket, timeout=120) for _ in range(3)]
        for n, c in enumerate(clients):
            c.send(*[{"Identity": "bp-%d-%d" % (n, i), "RequestId": "bp-%d-%d" % (n, i)}
                     for i in range(8)])
        for n, c in enumerate(clients):
            answers = c.recv_n(8)
            assert sorted(a["request_id"] for a in answers) == \
                sorted("bp-%d-%d" % (n, i) for i in range(8))
            assert all(a["status"] == "created" for a in answers)
            c.close()
    finally:
        done.set()
        sampler.join()
    assert samples, "no stats sampled"
    assert max(s[0] for s in samples) <= 2, samples
    assert max(s[1] for s in samples) <= 8, samples
    assert max(s[0] for s in samples) == 2      # the sampler did see work
    assert max(s[1] for s in samples) > 4       # and more than one held per slot
    # The fake saw at most two requests at a time.
    assert env.twilio.stats()["max_inflight"] <= 2
    assert d.stats()["created"] == 24


def test_requests_held_beyond_max_inflight_are_capped(env):
    """Beyond max_inflight at most 192 more requests are held, however
    large max_inflight is (three per slot would be 210 here): with 400
    queued and Twilio slow, the processing list holds exactly 70 + 192."""
    env.start_redis()
    env.start_twilio()
    env.twilio.control(latency_ms=1000)
    env.push(*[{"Identity": "cap-%d" % i} for i in range(400)])
    d = env.daemon(extra={"twilio.max_inflight": 70}).wait_healthy()
    r = env.r
    samples = []
    while r.llen("usergate:results") < 400:
        s = d.stats()
        samples.append((s["inflight"], r.llen("usergate:processing:ug")))
        assert len(samples) < 20000, "400 results not written"
        time.sleep(0.02)
    assert max(s[0] for s in samples) == 70, samples
    assert max(s[1] for s in samples) == 70 + 192, samples
    assert env.twilio.stats()["max_inflight"] <= 70
    assert d.stats()["created"] == 400


def test_a_duplicate_arriving_while_the_result_is_written(env):
    """With msgpack results a created user's record is packed straight from
    Twilio's answer, without a json_t.  A request for the same Identity
    that arrives after that answer, while the result is still being
    written, still gets the record (decoded from the packed bytes), not a
    second claim.  Redis is held (SIGSTOP) so that the socket request's
    LPUSH and the result transaction queue up on the one connection."""
    env.start_redis()
    env.start_twilio()
    env.twilio.control(latency_ms=1500)
    d = env.daemon(extra={"results.format": "msgpack"}).wait_healthy()
    r = env.r
    r.config_resetstat()
    env.push({"Identity": "late", "RequestId": "first"})
    wait_for(lambda: env.twilio.stats()["requests"] >= 1, what="the create at Twilio")
    c = Client(d.socket, timeout=60)
    try:
        os.kill(env.redis.proc.pid, signal.SIGSTOP)
        try:
            c.send({"Identity": "late", "RequestId": "second"})
            # The fake creates the user just before it answers; the
            # answer then reaches usergated while Redis is held.
            wait_for(lambda: env.twilio.stats()["creates_by_identity"].get("late") == 1,
                     what="the user created at Twilio")
            time.sleep(1)
        finally:
            os.kill(env.redis.proc.pid, signal.SIGCONT)
        second = c.recv_n(1)[0]
    finally:
        c.close()
    res = env.wait_results(2)
    first = next(x for x in res if x["request_id"] == "first")
    assert first["status"] == "created"
    assert second["status"] == "duplicate"
    assert second["user"] == first["user"]
    assert first["user"]["links"] and first["user"]["identity"] == "late"
    stored = msgpack.unpackb(r.get("usergate:user:late"), raw=False)
    assert stored == first["user"]
    assert env.twilio.stats()["requests"] == 1
    # One claim (SET NX) and one "done" (SET EX): the second request never
    # claimed; its record came from the first one's packed bytes.
    assert r.info("commandstats")["cmdstat_set"]["calls"] == 2


def test_many_concurrent_clients(stack):
    results = {}

    def client(n):
        framing = "json" if n % 2 else "msgpack"
        c = Client(stack.d.socket, framing=framing, timeout=60)
        c.send(*[{"Identity": "cc-%d-%d" % (n, i), "RequestId": "cc-%d-%d" % (n, i)}
                 for i in range(3)])
        results[n] = c.recv_n(3)
        c.close()

    run_clients(client, 24)
    assert len(results) == 24
    for n, answers in results.items():
        assert sorted(a["request_id"] for a in answers) == ["cc-%d-%d" % (n, i) for i in range(3)]
        for a in answers:
            check_result(a, a["request_id"])
    s = stack.d.stats()
    assert (s["received"], s["created"]) == (72, 72)


# ---------------------------------------------------------------- the socket file

def make_stale_socket(path):
    s = socket.socket(socket.AF_UNIX)
    s.bind(path)
    s.close()           # the file stays; nobody listens
    assert stat.S_ISSOCK(os.lstat(path).st_mode)


def test_stale_socket_files_are_replaced(env):
    env.start_redis()
    env.start_twilio()
    d = env.daemon(start=False)
    make_stale_socket(d.socket)
    make_stale_socket(d.status_socket)
    d.start()
    d.wait_healthy()
    c = Client(d.socket)
    c.send({"Identity": "after-stale"})
    check_result(c.recv(), "after-stale")
    c.close()


def test_a_file_that_is_not_a_socket_is_not_removed(env):
    env.start_redis()
    env.start_twilio()
    d = env.daemon(start=False)
    with open(d.socket, "w") as f:
        f.write("precious\n")
    d.start(wait=False)
    assert d.proc.wait(30 * SLOW) == 1
    assert "not a socket" in d.log()
    with open(d.socket) as f:
        assert f.read() == "precious\n"


def test_second_daemon_on_the_same_socket_refuses_to_start(stack):
    first = stack.d
    second = stack.daemon(name="ug2", start=False)
    second.socket = first.socket
    second.write_config()
    second.start(wait=False)
    assert second.proc.wait(30 * SLOW) != 0
    log = second.log()
    assert "another daemon is listening on this socket" in log, log
    assert first.socket in log
    # The first daemon keeps its socket and its clients.
    assert stat.S_ISSOCK(os.lstat(first.socket).st_mode)
    c = Client(first.socket)
    c.send({"Identity": "still-served"})
    check_result(c.recv(), "still-served")
    c.close()
    # Same for the status socket.
    third = stack.daemon(name="ug3", start=False)
    third.status_socket = first.status_socket
    third.write_config()
    third.start(wait=False)
    assert third.proc.wait(30 * SLOW) != 0
    assert "another daemon is listening on this socket" in third.log()
    assert first.status("health") == "ok"


@pytest.mark.parametrize("sock_mode,status_mode,want_sock,want_status", [
    ("0660", "0660", 0o660, 0o660),
    ("0600", "0640", 0o600, 0o640),
    ("0666", "0777", 0o664, 0o775),     # never world-writable
])
def test_socket_file_modes(env, sock_mode, status_mode, want_sock, want_status):
    env.start_redis()
    env.start_twilio()
    d = env.daemon(extra={"socket.mode": sock_mode, "status.mode": status_mode})
    st_sock = os.stat(d.socket)
    st_status = os.stat(d.status_socket)
    assert stat.S_ISSOCK(st_sock.st_mode) and stat.S_ISSOCK(st_status.st_mode)
    assert stat.S_IMODE(st_sock.st_mode) == want_sock
    assert stat.S_IMODE(st_status.st_mode) == want_status
    assert not st_sock.st_mode & stat.S_IWOTH and not st_status.st_mode & stat.S_IWOTH
    if want_sock != int(sock_mode, 8):
        assert "world-writable" in d.log()
