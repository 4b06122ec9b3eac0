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

from conftest import SLOW, wait_for, decode

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
    peak = proc_status(d.proc.pid, "VmPeak")
    assert peak - before_kb < 256 * 1024, \
        "VmPeak grew by %d MB" % ((peak - before_kb) // 1024)


def test_evil_headers_on_the_redis_list(stack):
    before = proc_status(stack.d.proc.pid, "VmPeak")
    stack.push(*EVIL)
    res = stack.wait_results(len(EVIL))
    assert [r["status"] for r in res] == ["invalid"] * len(EVIL), res
    assert all(r["error"]["code"] == "malformed" for r in res), res
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
