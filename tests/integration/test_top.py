"""usergatectl top (issue 15) against a live daemon: the full-screen view
under a pseudo-terminal, read back through a terminal emulator (pyte),
updating as creates go through, degraded and unreachable daemons, q and
Ctrl-C restoring the terminal; and the plain lines when the output is
no terminal."""
import fcntl
import os
import re
import select
import struct
import subprocess
import termios
import time

import pyte

from conftest import SLOW, USERGATECTL, wait_for

COLS, ROWS = 110, 30
# rate_limit 1000/s over the default 5 s window: 5000 creates a window.
RATED = {"twilio.rate_limit": "1000"}


class Top:
    """usergatectl top on a pseudo-terminal of its own (its controlling
    terminal, so that ^C is a SIGINT), its screen rendered by pyte."""

    def __init__(self, d, *args, status_socket=None):
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ,
                    struct.pack("HHHH", ROWS, COLS, 0, 0))
        self.before = termios.tcgetattr(slave)
        self.slave = slave
        env = dict(os.environ, TERM="xterm", LANG="C.UTF-8", LC_ALL="C.UTF-8")
        self.proc = subprocess.Popen(
            [USERGATECTL, "-s", status_socket or d.status_socket, "top"] + list(args),
            stdin=slave, stdout=slave, stderr=slave, env=env,
            start_new_session=True,
            preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
        self.screen = pyte.Screen(COLS, ROWS)
        self.stream = pyte.ByteStream(self.screen)
        self.raw = b""

    def pump(self, timeout=0.1):
        r, _, _ = select.select([self.master], [], [], timeout)
        if r:
            try:
                data = os.read(self.master, 65536)
            except OSError:     # the child closed its end
                return
            self.raw += data
            self.stream.feed(data)

    def text(self):
        return "\n".join(self.screen.display)

    def row(self, label):
        """The screen line that starts with label."""
        for line in self.screen.display:
            if line.startswith(label):
                return line
        return ""

    def wait(self, cond, timeout=15, what="screen"):
        deadline = time.monotonic() + timeout * SLOW
        while time.monotonic() < deadline:
            self.pump()
            if cond(self):
                return
        raise AssertionError("%s never came; the screen:\n%s" % (what, self.text()))

    def send(self, data):
        os.write(self.master, data)

    def exit_status(self, timeout=10):
        deadline = time.monotonic() + timeout * SLOW
        while self.proc.poll() is None and time.monotonic() < deadline:
            self.pump()
        self.pump(0)
        return self.proc.wait(timeout=1)

    def restored(self):
        """The terminal is as it was: its modes, and ncurses left the
        alternate screen (xterm's rmcup) with the cursor shown."""
        return (termios.tcgetattr(self.slave) == self.before and
                self.raw.rfind(b"\x1b[?1049l") > self.raw.rfind(b"\x1b[?1049h") >= 0)

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)
        os.close(self.slave)


def counter_row(top, label):
    """(total, rate now) of a counter's row, rate None when '-'."""
    m = re.match(r"%s\s+(\d+)\s+(\S+)" % re.escape(label), top.row(label))
    if not m:
        return None
    return int(m.group(1)), None if m.group(2) == "-" else float(m.group(2))


def healthy_daemon(env, extra=None):
    env.start_redis()
    env.start_twilio()
    d = env.daemon(extra=extra)
    d.wait_healthy()
    return d


def quit_cleanly(top, key):
    """key (q, ^C) ends top with status 0 and the terminal restored."""
    top.send(key)
    assert top.exit_status() == 0
    assert top.restored(), top.raw[-200:]


def creates(env, n, start=0):
    env.push(*[{"Identity": "top-%d" % i} for i in range(start, start + n)])


def test_screen_updates_and_q_restores(env):
    d = healthy_daemon(env, RATED)
    top = Top(d, "-d", "0.5")
    try:
        top.wait(lambda t: t.row("health").split()[1:2] == ["ok"], what="health ok")
        # The role is "unknown" until HELLO has answered.
        top.wait(lambda t: re.search(r"^redis\s+127\.0\.0\.1:%d\s+up .* master\s+no TLS"
                                     % d.redis.port, t.row("redis")), what="the Redis link")
        assert re.search(r"in flight 0 / 64\s+window \d+", top.row("twilio")), top.text()
        top.wait(lambda t: counter_row(t, "created") == (0, 0.0), what="created 0, 0.0/s")

        creates(env, 12)
        top.wait(lambda t: counter_row(t, "created") is not None and
                 counter_row(t, "created")[0] == 12 and counter_row(t, "created")[1] > 0,
                 what="12 created at a rate")
        assert counter_row(top, "received")[0] == 12
        # The grants of the shared window, against rate_limit x rate_window_s.
        top.wait(lambda t: re.search(r"^rate\s+12 / 5000 creates in the window",
                                     t.row("rate")), what="12 of 5000 in the window")
        assert re.search(r"result\s+p50 [\d.]+ ms", top.text()), top.text()
        assert any(c in top.row("created") for c in "\u2581\u2582\u2583\u2584\u2585"
                   "\u2586\u2587\u2588"), top.row("created")
        # Nothing more comes: the next refreshes say 0/s, the total stays.
        top.wait(lambda t: counter_row(t, "created") == (12, 0.0), what="0/s again")
        assert re.search(r"^queue\s+depth 0\s+oldest 0\.0 s\s+processing 0\s+dead 0$",
                         top.row("queue").rstrip()), top.text()

        # Five more, and one invalid request, which ends on the dead list.
        creates(env, 5, start=100)
        env.push({"FriendlyName": "no identity"})
        top.wait(lambda t: counter_row(t, "created")[0] == 17 and
                 counter_row(t, "invalid")[0] == 1 and
                 t.row("queue").rstrip().endswith("dead 1"), what="17 created, 1 dead")
        assert counter_row(top, "received")[0] == 18

        # A smaller terminal (the kernel sends SIGWINCH): drawn to its size.
        fcntl.ioctl(top.slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        top.screen.resize(24, 80)
        top.wait(lambda t: t.screen.display[23].startswith("q quit") and
                 re.match(r"\d\d:\d\d:\d\d$", t.screen.display[0][72:]),
                 what="the view at 80x24")

        quit_cleanly(top, b"q")
    finally:
        top.close()


def test_degraded_unreachable_and_ctrl_c(env):
    d = healthy_daemon(env)
    top = Top(d, "-d", "0.3")
    try:
        top.wait(lambda t: t.row("health").split()[1:2] == ["ok"], what="health ok")
        env.redis.stop()
        top.wait(lambda t: "DEGRADED  redis unreachable" in t.row("health"),
                 what="degraded with the reason")
        assert re.search(r"^redis\s+127\.0\.0\.1:%d\s+DOWN" % d.redis.port,
                         top.row("redis")), top.text()
        assert re.search(r"^queue\s+depth -", top.row("queue")), top.text()
        # The daemon goes away: top says so and keeps trying.
        d.stop()
        top.wait(lambda t: "not reachable: cannot connect to %s" % d.status_socket
                 in t.text(), what="not reachable")
        assert top.proc.poll() is None
        d.start(wait=False)
        top.wait(lambda t: "DEGRADED  redis unreachable" in t.row("health"),
                 what="reachable again")
        quit_cleanly(top, b"\x03")
    finally:
        top.close()


def line_fields(line):
    """key=value pairs of one plain line (values may be "quoted")."""
    return {k: v.strip('"') for k, v in re.findall(r'(\w+)=("[^"]*"|\S+)', line)}


def test_lines_when_not_a_terminal(env):
    d = healthy_daemon(env, RATED)
    creates(env, 7)
    env.wait_results(7)
    p = subprocess.run([USERGATECTL, "-s", d.status_socket, "top", "--once"],
                       capture_output=True, text=True, timeout=20 * SLOW)
    assert p.returncode == 0 and p.stderr == "", p
    lines = p.stdout.splitlines()
    assert len(lines) == 1, lines
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ health=ok ", lines[0]), lines
    f = line_fields(lines[0])
    assert (f["received"], f["created"], f["duplicate"], f["invalid"],
            f["failed"]) == ("7", "7", "0", "0", "0"), f
    assert (f["redis"], f["queue"], f["dead"], f["inflight"]) == ("up", "0", "0", "0/64")
    assert f["rate_window"] == "7/5000", f
    assert f["created_rate"] == "-"      # one refresh: no rate yet
    assert float(f["p50_ms"]) > 0 and float(f["p99_ms"]) >= float(f["p50_ms"])

    # Several refreshes: a rate where the total moved, 0.0 where it did not.
    p = subprocess.Popen([USERGATECTL, "-s", d.status_socket, "top", "-d", "0.3",
                          "-n", "12"], stdout=subprocess.PIPE, text=True)
    try:
        seen = [line_fields(p.stdout.readline())]
        creates(env, 5, start=50)
        for line in p.stdout:
            seen.append(line_fields(line))
        assert p.wait(timeout=10 * SLOW) == 0
    finally:
        if p.poll() is None:
            p.kill()
    assert len(seen) == 12
    assert seen[-1]["created"] == "12" and seen[-1]["received"] == "12"
    for a, b in zip(seen, seen[1:]):
        moved = int(b["created"]) - int(a["created"])
        assert (float(b["created_rate"]) > 0) == (moved > 0), (a, b)

    # Redis down: degraded, with the reason.
    env.redis.stop()
    wait_for(lambda: d.stats()["health"] != "ok", 10 * SLOW, "degraded")
    p = subprocess.run([USERGATECTL, "-s", d.status_socket, "top", "-n", "1"],
                       capture_output=True, text=True, timeout=20 * SLOW)
    f = line_fields(p.stdout)
    assert p.returncode == 0, p
    assert f["health"] == "degraded" and f["reason"].startswith("redis unreachable"), p.stdout
    assert f["redis"] == "down" and f["queue"] == "-" and f["rate_window"] == "-/5000"


def test_lines_no_daemon_and_usage(tmp_path):
    missing = str(tmp_path / "status.sock")
    p = subprocess.run([USERGATECTL, "-s", missing, "top", "--once"],
                       capture_output=True, text=True, timeout=20 * SLOW)
    assert p.returncode == 2, p
    assert re.match(r"\S+Z not reachable: cannot connect to %s: No such file or directory"
                    % re.escape(missing), p.stdout), p.stdout
    for args, message in ((["-d", "0"], "--interval takes seconds"),
                          (["-n", "x"], "--iterations takes a count"),
                          (["extra"], "takes no arguments")):
        p = subprocess.run([USERGATECTL, "top"] + args, capture_output=True,
                           text=True, timeout=20 * SLOW)
        assert p.returncode == 2 and message in p.stderr, (args, p)
