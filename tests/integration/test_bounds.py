"""Bounded everything (issue 11, items 4 and 5): msgpack headers that
announce more than their bytes hold, clients that write without reading or
sit idle, too many clients, reloads, long Twilio error messages and a
process at its descriptor limit.  Memory is read from /proc/PID/status:
VmPeak catches an allocation even when its pages were never touched."""
import json
import os
import resource
import signal
import socket
import time

import msgpack
import pytest

from conftest import SLOW, WRAP, wait_for, decode

# Under valgrind or AddressSanitizer (whose quarantine alone holds up to
# 256 MB of freed memory) the process' size says nothing about ours: the
# memory bounds are checked only on a plain build, the behaviour always.
MEASURED = not WRAP and "ASAN_OPTIONS" not in os.environ

# About 42 million array elements: msgpack-c asks for 1 GiB at once, which
# the allocator grants, so the old code's reservation shows in VmPeak.
HUGE_ARRAY = b"\xdd\x02\x80\x00\x00"
# 4 billion map entries: 96 GiB, more than any allocator grants.
HUGE_MAP = b"\xdf\xff\xff\xff\xff"
EVIL = [HUGE_ARRAY, HUGE_MAP, b"\x81\xa8Identity" + HUGE_ARRAY,
        b"\xdb\xff\xff\xff\xff", b"\xc6\x7f\xff\xff\xff"]


def proc_status(pid, field):
    """A field of /proc/PID/status in kB."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError("no %s in /proc/%d/status" % (field, pid))


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def assert_no_huge_allocation(d, before_kb):
    if not MEASURED:
        return
    peak = proc_status(d.proc.pid, "VmPeak")
    assert peak - before_kb < 256 * 1024, \
        "VmPeak grew by %d MB" % ((peak - before_kb) // 1024)


def test_evil_headers_on_the_redis_list(stack):
    before = proc_status(stack.d.proc.pid, "VmPeak")
    stack.push(*EVIL)
    res = stack.wait_results(len(EVIL))
    # Each announces more than the request limit.
    assert [r["status"] for r in res] == ["invalid"] * len(EVIL), res
    assert all(r["error"]["code"] == "too_large" for r in res), res
    assert_no_huge_allocation(stack.d, before)


def test_evil_headers_on_the_request_socket(stack):
    before = proc_status(stack.d.proc.pid, "VmPeak")
    for evil in EVIL:
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(30 * SLOW)
        s.connect(stack.d.socket)
        s.sendall(evil)
        unpacker = msgpack.Unpacker(raw=False)
        while True:
            chunk = s.recv(65536)
            assert chunk, "closed without an answer for %r" % evil
            unpacker.feed(chunk)
            answers = list(unpacker)
            if answers:
                break
        s.close()
        assert answers[0]["status"] == "invalid", answers
        assert answers[0]["error"]["code"] == "too_large", answers
    assert_no_huge_allocation(stack.d, before)


def test_evil_stored_user_record_is_treated_as_unreadable(stack):
    before = proc_status(stack.d.proc.pid, "VmPeak")
    # As if an earlier request had created it: the claim reads the record.
    stack.r.set("usergate:identity:mallory", "done", ex=600)
    stack.r.set("usergate:user:mallory", HUGE_ARRAY)
    stack.push({"Identity": "mallory"})
    res = stack.wait_results(1)
    assert res[0]["status"] == "created", res
    assert "stored user record unreadable" in stack.d.log()
    assert_no_huge_allocation(stack.d, before)


def test_evil_dead_entry_does_not_break_dead_list(stack):
    stack.push(b"not a request")
    stack.wait_results(1)
    before = proc_status(stack.d.proc.pid, "VmPeak")
    stack.r.lpush("usergate:dead", HUGE_ARRAY, HUGE_MAP)
    lines = stack.d.status("dead list 10").splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["result"]["status"] == "invalid"
    assert_no_huge_allocation(stack.d, before)


def test_status_client_that_does_not_read_is_bounded(stack):
    """Thousands of `show stats` without reading a byte: the answers wait
    in the kernel and up to 1 MiB in the daemon, which stops reading the
    commands, and the daemon stays small and answers others."""
    pid = stack.d.proc.pid
    answer = len(stack.d.status("show stats")) + 2
    s = socket.socket(socket.AF_UNIX)
    s.setblocking(False)
    s.connect(stack.d.status_socket)
    line = b"show stats\n"
    # Enough answers for 256 MB when nothing holds them back.
    total = 256 * 1024 * 1024 // answer * len(line)
    burst = line * 1000
    sent = 0
    blocked_since = None
    deadline = time.monotonic() + 60 * SLOW
    while sent < total and time.monotonic() < deadline:
        try:
            sent += s.send(burst)
            blocked_since = None
        except BlockingIOError:
            # The daemon stopped reading: that is the point.
            blocked_since = blocked_since or time.monotonic()
            if time.monotonic() - blocked_since > 2:
                break
            time.sleep(0.01)
    time.sleep(1)
    hwm = proc_status(pid, "VmHWM")
    assert hwm < 64 * 1024 or not MEASURED, "VmHWM %d MB after %d commands" % (hwm // 1024,
                                                               sent // len(line))
    assert stack.d.status("health") == "ok"
    # Reading drains it: the client gets answers again.
    s.setblocking(True)
    s.settimeout(10 * SLOW)
    assert s.recv(65536)
    s.close()


def connect(path):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(30 * SLOW)
    s.connect(path)
    return s


def closed_by_daemon(s, timeout):
    s.settimeout(timeout)
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True


def test_request_socket_idle_timeout(env):
    env.start_redis()
    env.start_twilio()
    d = env.daemon(extra={"socket.idle_timeout_s": 2})
    d.wait_healthy()
    start = time.monotonic()
    idle = connect(d.socket)
    # A client waiting for a slow result is not idle.
    env.twilio.control(latency_ms=3500)
    waiting = connect(d.socket)
    waiting.sendall(json.dumps({"Identity": "slow"}).encode() + b"\n")
    assert closed_by_daemon(idle, 10 * SLOW)
    assert 1.5 <= time.monotonic() - start < 8 * SLOW
    waiting.settimeout(20 * SLOW)
    line = b""
    while not line.endswith(b"\n"):
        chunk = waiting.recv(65536)
        assert chunk, "closed while its request was pending"
        line += chunk
    assert json.loads(line)["status"] == "created"
    assert closed_by_daemon(waiting, 10 * SLOW)


def test_request_socket_connection_cap(env):
    env.start_redis()
    env.start_twilio()
    d = env.daemon(extra={"socket.max_connections": 3})
    d.wait_healthy()
    kept = [connect(d.socket) for _ in range(3)]
    # Each is accepted in turn, so the fourth is the one refused.
    for s in kept:
        s.sendall(b"")
    time.sleep(0.5)
    extra = connect(d.socket)
    assert closed_by_daemon(extra, 10 * SLOW)
    for i, s in enumerate(kept):
        s.sendall(json.dumps({"Identity": "cap%d" % i}).encode() + b"\n")
        s.settimeout(20 * SLOW)
        assert json.loads(s.recv(65536))["status"] == "created"
    wait_for(lambda: "connection limit reached" in d.log(), what="log line")
    assert d.log().count("connection limit reached") == 1
    for s in kept:
        s.close()
    # Room again once they are gone.
    wait_for(lambda: d.status("health") == "ok")
    again = connect(d.socket)
    again.sendall(json.dumps({"Identity": "cap9"}).encode() + b"\n")
    again.settimeout(20 * SLOW)
    assert json.loads(again.recv(65536))["status"] == "created"


def test_request_socket_client_that_does_not_read(stack):
    """Invalid requests are answered at once; a client that sends them
    without reading is no longer read once 1 MiB of answers wait."""
    pid = stack.d.proc.pid
    s = socket.socket(socket.AF_UNIX)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(stack.d.socket)
    s.setblocking(False)
    line = json.dumps({"Identity": "", "pad": "x" * 10}).encode() + b"\n"
    burst = line * 2000
    sent = 0
    deadline = time.monotonic() + 10 * SLOW
    while time.monotonic() < deadline and sent < 40 * 1024 * 1024:
        try:
            sent += s.send(burst)
        except BlockingIOError:
            time.sleep(0.01)
    answered = stack.d.stats()["invalid"]
    time.sleep(1)
    assert stack.d.stats()["invalid"] == answered, "still reading"
    assert sent < 40 * 1024 * 1024, "the daemon read everything"
    rss = proc_status(pid, "VmRSS")
    assert rss < 64 * 1024 or not MEASURED, "VmRSS %d MB" % (rss // 1024)
    s.close()


def test_reloads_do_not_grow_the_daemon(stack):
    pid = stack.d.proc.pid
    for _ in range(200):
        assert stack.d.status("reload") == "ok"
    before = proc_status(pid, "VmRSS")
    for _ in range(3000):
        assert stack.d.status("reload") == "ok"
    grown = proc_status(pid, "VmRSS") - before
    assert grown < 1024 or not MEASURED, "VmRSS grew by %d kB over 3000 reloads" % grown
    stack.push({"Identity": "after-reloads"})
    assert stack.wait_results(1)[0]["status"] == "created"


def test_long_twilio_message_is_cut(stack):
    stack.twilio.control(error_message="m" * (100 * 1024), next=["400"])
    stack.push({"Identity": "longmsg"})
    res = stack.wait_results(1)[0]
    assert res["status"] == "failed", res
    size = len(res["error"]["message"].encode())
    assert size <= 1024 + 3, "a message of %d bytes" % size
    assert res["error"]["message"].endswith("\u2026")
    assert "m" * 2000 not in stack.d.log()


def limited_daemon(env, nofile, max_inflight):
    env.start_redis()
    env.start_twilio()
    d = env.daemon(nofile=nofile, extra={"twilio.max_inflight": max_inflight})
    return d.wait_healthy()


def assert_not_spinning(pid):
    cpu = cpu_seconds(pid)
    time.sleep(2)
    assert cpu_seconds(pid) - cpu < 0.5, "the daemon spins"


def test_descriptor_exhaustion(env):
    """200 clients hold request-socket connections of a daemon limited to
    128 descriptors: Twilio and Redis keep working, nothing spins, and
    libevent's own warnings stay out of the log."""
    d = limited_daemon(env, 128, 4)
    pid = d.proc.pid
    clients = []
    for _ in range(200):
        try:
            clients.append(connect(d.socket))
        except OSError:
            break
    env.push(*[{"Identity": "fd%d" % i} for i in range(30)])
    res = env.wait_results(30, timeout=60)
    assert sorted(r["status"] for r in res) == ["created"] * 30, res
    assert_not_spinning(pid)
    assert d.status("health") == "ok"
    log = d.log()
    assert "[warn]" not in log
    assert log.count("Too many open files") <= 5
    for s in clients:
        s.close()


def test_descriptors_run_out(env):
    """Status clients (allowed 64) take every descriptor a daemon limited
    to 40 has: accepting pauses instead of spinning, Twilio calls that
    find no descriptor are retried without counting, and every request is
    created once the clients leave."""
    d = limited_daemon(env, 40, 2)
    pid = d.proc.pid
    clients = []
    deadline = time.monotonic() + 10 * SLOW
    while len(os.listdir("/proc/%d/fd" % pid)) < 40 and time.monotonic() < deadline:
        s = socket.socket(socket.AF_UNIX)
        s.connect(d.status_socket)
        clients.append(s)
        time.sleep(0.01)
    # A few more wait in the listen backlog, unaccepted.
    for _ in range(5):
        s = socket.socket(socket.AF_UNIX)
        s.connect(d.status_socket)
        clients.append(s)
    env.push(*[{"Identity": "nofd%d" % i} for i in range(5)])
    time.sleep(1)
    assert_not_spinning(pid)
    assert not [r for r in env.results() if r["status"] == "failed"]
    for s in clients:
        s.close()
    res = env.wait_results(5, timeout=60)
    assert sorted(r["status"] for r in res) == ["created"] * 5, res
    log = d.log()
    assert "[warn]" not in log
    assert 1 <= log.count("cannot accept connections; pausing") <= 3, log[-2000:]
    assert log.count("no file descriptor for a Twilio connection") <= 1
