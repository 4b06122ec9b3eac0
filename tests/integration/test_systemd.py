"""sd_notify without systemd (issue 6): the daemon talks to a datagram
socket of ours named by NOTIFY_SOCKET, as it would to systemd's.

READY=1 once serving; STATUS= with health, queue depth and in-flight
count; WATCHDOG=1 from the event loop at half of WATCHDOG_USEC; around a
reload RELOADING=1 with MONOTONIC_USEC (in one datagram, as
Type=notify-reload wants) and then READY=1; STOPPING=1 on SIGTERM."""
import os
import re
import shlex
import signal
import socket
import subprocess
import threading
import time

import pytest

from conftest import wait_for, SLOW, SRCDIR, USERGATECTL

STATUS_RE = re.compile(r"^STATUS=(ok|degraded: [^;]+); queue (unknown|\d+), "
                       r"in flight (\d+)/(\d+)")
WATCHDOG_USEC = 500000


class Notify:
    """The listening end of NOTIFY_SOCKET: every datagram, in order.

    A thread reads all the time, as systemd does: libsystemd's sd_notify
    blocks when the socket's queue is full (net.unix.max_dgram_qlen, often
    only 10 datagrams, 2.5 s of WATCHDOG=1), and a daemon blocked there
    would fail these tests for the wrong reason."""

    def __init__(self, workdir):
        self.path = os.path.join(workdir, "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.1)
        self.messages = []      # (monotonic time, [lines])
        self.lock = threading.Lock()
        self.running = True
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        while self.running:
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            with self.lock:
                self.messages.append((time.monotonic(), data.decode().split("\n")))

    def env(self, watchdog=True):
        e = {"NOTIFY_SOCKET": self.path}
        if watchdog:
            e["WATCHDOG_USEC"] = str(WATCHDOG_USEC)
        return e

    def poll(self):
        with self.lock:
            return list(self.messages)

    def lines(self, since=0):
        return [line for _, lines in self.poll()[since:] for line in lines]

    def wait_line(self, pred, since=0, timeout=10, what="notification"):
        """Index (in messages) of the first datagram from `since` on
        with a line for which pred is true."""
        def find():
            for i, (_, lines) in enumerate(self.poll()[since:], since):
                if any(pred(line) for line in lines):
                    return i + 1   # 1-based so that 0 is false
            return None
        return wait_for(find, timeout, what) - 1

    def close(self):
        self.running = False
        self.thread.join()
        self.sock.close()


@pytest.fixture
def notify(env):
    n = Notify(env.dir)
    yield n
    n.close()


def start(env, notify, watchdog=True):
    env.start_redis()
    env.start_twilio()
    return env.daemon(env=notify.env(watchdog))


def test_ready_status_and_watchdog(env, notify):
    d = start(env, notify)
    ready = notify.wait_line(lambda l: l == "READY=1", what="READY=1")
    # Serving when it says so: the status socket answers.
    assert d.health_or_none() is not None
    notify.wait_line(lambda l: STATUS_RE.match(l) is not None, what="a STATUS= line")
    status = [l for l in notify.lines() if l.startswith("STATUS=")]
    m = STATUS_RE.match(status[-1])
    assert m, status
    assert m.group(4) == "64"   # max_inflight, the default

    # WATCHDOG=1 about every 250 ms: ask for several, not for a rhythm.
    wait_for(lambda: sum(l == "WATCHDOG=1" for l in notify.lines(ready)) >= 6,
             timeout=6, what="six WATCHDOG=1")
    dogs = [t for t, lines in notify.poll() if "WATCHDOG=1" in lines]
    assert dogs[-1] - dogs[0] >= 0.5, "WATCHDOG=1 in a burst, not from a timer"
    # The timer runs in the event loop, which starts after READY=1.
    first_dog = next(i for i, (_, lines) in enumerate(notify.poll()) if "WATCHDOG=1" in lines)
    assert first_dog > ready

    # STATUS follows health: Redis gone -> degraded, back -> ok.
    mark = len(notify.poll())
    env.redis.stop()
    notify.wait_line(lambda l: l.startswith("STATUS=degraded: redis"), since=mark,
                     timeout=15, what="STATUS=degraded")
    mark = len(notify.poll())
    env.redis.start()
    notify.wait_line(lambda l: l.startswith("STATUS=ok;"), since=mark, timeout=30,
                     what="STATUS=ok after redis is back")

    # Queue depth in STATUS: requests wait while intake is paused ...
    def status_where(pred):
        def check(line):
            m = STATUS_RE.match(line)
            return m is not None and pred(m, line)
        return check
    assert d.status("pause").startswith("ok")
    mark = len(notify.poll())
    env.push(*[{"Identity": "q%d" % i} for i in range(3)])
    notify.wait_line(status_where(lambda m, l: m.group(2) == "3" and "paused" in l),
                     since=mark, timeout=15, what="STATUS with queue 3, paused")
    # ... and are in flight once it resumes, while Twilio is slow.
    env.twilio.control(latency_ms=3000)
    mark = len(notify.poll())
    assert d.status("resume").startswith("ok")
    notify.wait_line(status_where(lambda m, l: int(m.group(3)) >= 1 and "paused" not in l),
                     since=mark, timeout=15, what="STATUS with requests in flight")
    assert d.stop() == 0
    # An unknown depth (at start, with Redis away) is "unknown", never -1.
    status = [l for l in notify.lines() if l.startswith("STATUS=")]
    assert all(STATUS_RE.match(l) for l in status), status
    assert not [l for l in status if "queue -" in l], status


def test_no_watchdog_unless_asked(env, notify):
    start(env, notify, watchdog=False)
    notify.wait_line(lambda l: l == "READY=1", what="READY=1")
    time.sleep(1.0)
    assert "WATCHDOG=1" not in notify.lines()


def test_reload_notifies(env, notify):
    d = start(env, notify)
    notify.wait_line(lambda l: l == "READY=1", what="READY=1")

    for bad in (False, True):
        if bad:
            # A refused reload is a reload too: RELOADING=1, then READY=1
            # with the old configuration still running.
            d.write_config(open(d.conf).read() + "[nonsense]\nkey = 1\n")
        mark = len(notify.poll())
        before = time.clock_gettime(time.CLOCK_MONOTONIC)
        d.send_signal(signal.SIGHUP)
        i = notify.wait_line(lambda l: l == "RELOADING=1", since=mark, what="RELOADING=1")
        after = time.clock_gettime(time.CLOCK_MONOTONIC)
        lines = notify.poll()[i][1]
        usec = [l for l in lines if l.startswith("MONOTONIC_USEC=")]
        assert len(usec) == 1, "MONOTONIC_USEC= must come in the RELOADING=1 datagram: %r" % lines
        value = int(usec[0].split("=", 1)[1])
        # CLOCK_MONOTONIC is one clock for every process on the machine.
        assert before * 1e6 - 1e6 <= value <= after * 1e6 + 1e6, (before, value, after)
        notify.wait_line(lambda l: l == "READY=1", since=i, what="READY=1 after the reload")
        assert d.proc.poll() is None
    assert "reload refused" in d.log()
    assert d.health_or_none() is not None
    assert d.stop() == 0


def unit_reload_commands(d):
    """The unit's ExecReload= commands as systemd would run them for d:
    $MAINPID is the daemon's pid, and usergatectl is the one just built,
    talking to d's status socket."""
    commands = []
    with open(os.path.join(SRCDIR, "systemd", "usergated.service")) as f:
        for line in f:
            if not line.startswith("ExecReload="):
                continue
            argv = shlex.split(line.split("=", 1)[1].replace("$MAINPID", str(d.proc.pid)))
            argv[0] = argv[0].lstrip("-@:+!")
            if argv[0] == "/usr/bin/usergatectl":
                argv[0:1] = [USERGATECTL, "-s", d.status_socket]
            commands.append(argv)
    assert commands, "no ExecReload= in the unit"
    return commands


def test_unit_reload_applies_or_fails_with_the_reason(env, notify):
    """`systemctl reload` runs the unit's ExecReload= and fails when it
    exits non-zero: a good file is applied before it returns, a refused one
    makes it fail with the reason on stderr (which the journal keeps), and
    the daemon goes on with the old configuration."""
    d = start(env, notify)
    notify.wait_line(lambda l: l == "READY=1", what="READY=1")
    d.extra["twilio.max_inflight"] = 7
    d.write_config()
    for argv in unit_reload_commands(d):
        p = subprocess.run(argv, capture_output=True, text=True, timeout=30 * SLOW)
        assert p.returncode == 0, (argv, p.stdout, p.stderr)
    # Applied when the command returns, not some time later.
    assert d.stats()["max_inflight"] == 7
    d.write_config(open(d.conf).read() + "[nonsense]\nkey = 1\n")
    for argv in unit_reload_commands(d):
        p = subprocess.run(argv, capture_output=True, text=True, timeout=30 * SLOW)
        assert p.returncode != 0, ("a refused reload must fail", argv, p.stdout, p.stderr)
        assert "nonsense" in p.stderr and d.conf in p.stderr, p.stderr
    assert d.proc.poll() is None
    assert d.status("health") == "ok"
    assert d.stats()["max_inflight"] == 7
    assert d.stop() == 0


def test_sigterm_notifies_stopping_and_exits_0(env, notify):
    d = start(env, notify)
    notify.wait_line(lambda l: l == "READY=1", what="READY=1")
    mark = len(notify.poll())
    d.send_signal(signal.SIGTERM)
    notify.wait_line(lambda l: l == "STOPPING=1", since=mark, what="STOPPING=1")
    assert d.proc.wait(15 * SLOW) == 0
    assert d.stop() == 0
    # Nothing claims to be ready after STOPPING=1.
    after = notify.lines(mark)
    assert "READY=1" not in after[after.index("STOPPING=1"):]
