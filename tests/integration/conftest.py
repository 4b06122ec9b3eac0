"""Fixtures for the black-box tests: the real usergated against a throwaway
redis-server and the project's own fake Twilio (tests/fake-twilio), each on
a free port or a socket in a private temporary directory.  Every process a
test starts is stopped by pid when the test ends; every wait polls for a
condition under a generous deadline instead of sleeping."""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request

import msgpack
import pytest
import redis as redislib

HERE = os.path.dirname(os.path.abspath(__file__))
SRCDIR = os.environ.get("top_srcdir") or os.path.abspath(os.path.join(HERE, "..", ".."))
BUILDDIR = os.environ.get("top_builddir") or SRCDIR
USERGATED = os.path.join(BUILDDIR, "src", "usergated")
USERGATECTL = os.path.join(BUILDDIR, "src", "usergatectl")
FAKE = os.path.join(BUILDDIR, "tests", "fake-twilio")
# Valgrind or a sanitizer build make everything slower: scale the deadlines.
SLOW = float(os.environ.get("USERGATE_TEST_SLOWDOWN", "1"))

def _xmacro_names(macro):
    """The names of an X-macro of src/daemon.h (its first arguments), in
    declaration order: the one declaration of the gauges and counters."""
    with open(os.path.join(SRCDIR, "src", "daemon.h")) as f:
        text = f.read()
    body = re.search(r"^#define %s\(X\)((?:.*\\\n)*.*)$" % macro, text, re.M)
    assert body, "no #define %s(X) in src/daemon.h" % macro
    return re.findall(r"\bX\((\w+),", body.group(1))


# The keys of `show stats` in their order (SPEC §6.2): the gauges, then the
# counters.
STATS_GAUGES = _xmacro_names("STATS_GAUGES")
STATS_COUNTERS = _xmacro_names("STATS_COUNTERS")
STATS_KEYS = STATS_GAUGES + STATS_COUNTERS

WRAP = os.environ.get("USERGATE_TEST_WRAPPER", "").split()
# The exit status the wrapper gives a daemon it found errors in (make
# check-valgrind runs valgrind with --error-exitcode=99).
WRAP_ERROR_EXIT = 99

API_KEY = "SK" + "0123456789abcdef" * 2
API_SECRET = "s3cr3t-token-value-for-tests"
ACCOUNT = "AC" + "a" * 32


def run_clients(client, n, timeout=120):
    """Runs client(0) .. client(n - 1) in n threads at once and waits for
    them all (timeout seconds each, times SLOW); fails with every client's
    exception if any raised one."""
    errors = []

    def guarded(i):
        try:
            client(i)
        except Exception as e:      # reported below, in the test's thread
            errors.append((i, repr(e)))

    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout * SLOW)
    assert not errors, errors


def wait_for(cond, timeout=10.0, what="condition", interval=0.01):
    """Polls cond() until it returns a true value; fails the test after
    timeout seconds (scaled by USERGATE_TEST_SLOWDOWN)."""
    deadline = time.monotonic() + timeout * SLOW
    last = None
    while time.monotonic() < deadline:
        last = cond()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError("timed out waiting for %s (last: %r)" % (what, last))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc, sig=signal.SIGTERM, timeout=15):
    if proc is None or proc.poll() is not None:
        return proc.returncode if proc else None
    proc.send_signal(sig)
    try:
        return proc.wait(timeout * SLOW)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


class Redis:
    """A redis-server of our own.  On TCP (a free port) so that it can be
    stopped and restarted on the same address, with AOF when asked."""

    def __init__(self, workdir, appendonly=False, password=None):
        self.dir = workdir
        self.port = free_port()
        self.appendonly = appendonly
        self.password = password
        self.proc = None
        self.start()

    def start(self):
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--dir", self.dir, "--appendonly",
                "yes" if self.appendonly else "no", "--appendfsync", "always",
                "--logfile", os.path.join(self.dir, "redis.log")]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        # The address, not "localhost": a minimal system (debootstrap) may
        # have no /etc/hosts to resolve it.
        self.client = redislib.Redis(host="127.0.0.1", port=self.port, password=self.password)
        wait_for(self._ping, what="redis-server to answer")

    def _ping(self):
        try:
            return self.client.ping()
        except redislib.exceptions.ConnectionError:
            return False

    def stop(self, sig=signal.SIGTERM):
        stop(self.proc, sig)


class FakeTwilio:
    def __init__(self, workdir, user=API_KEY, password=API_SECRET, tls=None):
        args = [FAKE, "--port", "0", "--user", user, "--password", password,
                "--account", ACCOUNT]
        if tls:
            args += ["--tls-cert", tls[0], "--tls-key", tls[1]]
        self.log = open(os.path.join(workdir, "fake-twilio.log"), "w")
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self.log, text=True)
        line = self.proc.stdout.readline()
        assert "listening on" in line, "fake-twilio did not start: %r" % line
        self.port = int(line.strip().rsplit(":", 1)[1])
        scheme = "https" if tls else "http"
        self.url = "%s://127.0.0.1:%d" % (scheme, self.port)
        self.control_url = "%s://127.0.0.1:%d" % (scheme, self.port)
        self.tls = tls

    def _open(self, path, data=None):
        req = urllib.request.Request(self.control_url + path, data=data, method="POST" if data is not None else "GET")
        ctx = None
        if self.tls:
            import ssl
            ctx = ssl._create_unverified_context()
        with urllib.request.urlopen(req, timeout=10, context=ctx) as r:
            return json.loads(r.read())

    def control(self, **faults):
        return self._open("/_control", json.dumps(faults).encode())

    def stats(self):
        return self._open("/_stats")

    def reset(self):
        return self._open("/_reset", b"{}")

    def stop(self):
        stop(self.proc)
        self.log.close()


class Daemon:
    """usergated with a config of its own in a private directory."""

    def __init__(self, workdir, redis, twilio, name="ug", extra=None, env=None,
                 instance_id=None, start=True, secret=API_SECRET, nofile=None,
                 prefix=None):
        self.dir = os.path.join(workdir, name)
        os.makedirs(self.dir, exist_ok=True)
        self.redis = redis
        self.twilio = twilio
        self.socket = os.path.join(self.dir, "req.sock")
        self.status_socket = os.path.join(self.dir, "status.sock")
        self.conf = os.path.join(self.dir, "usergate.conf")
        self.secret_file = os.path.join(self.dir, "api-secret")
        with open(self.secret_file, "w") as f:
            f.write(secret + "\n")
        os.chmod(self.secret_file, 0o600)
        self.instance_id = instance_id or name
        self.extra = extra or {}
        self.nofile = nofile    # a soft RLIMIT_NOFILE for the daemon
        self.prefix = prefix or []      # a command that runs the daemon
        self.env = dict(os.environ)
        for k in list(self.env):
            if k.startswith("TWILIO_") or k in ("NOTIFY_SOCKET", "WATCHDOG_USEC",
                                                "CREDENTIALS_DIRECTORY", "JOURNAL_STREAM"):
                del self.env[k]
        self.env.update(env or {})
        self.proc = None
        self.procs = []         # every process started, restarts included
        self.log_path = os.path.join(self.dir, "usergated.log")
        self.write_config()
        if start:
            self.start()

    def config_sections(self):
        sec = {
            "twilio": {"base_url": self.twilio.url if self.twilio else "http://127.0.0.1:9",
                       "api_key": API_KEY, "api_secret_file": self.secret_file,
                       "rate_limit": "0", "connect_timeout_ms": str(int(2000 * SLOW)),
                       "request_timeout_ms": str(int(5000 * SLOW))},
            "retry": {"base_delay_ms": "10", "max_delay_ms": "200"},
            "redis": {"host": "127.0.0.1", "port": str(self.redis.port),
                      "instance_id": self.instance_id},
            "results": {"format": "json"},
            "socket": {"path": self.socket},
            "status": {"path": self.status_socket},
            "log": {"level": "debug"},
        }
        for k, v in self.extra.items():
            section, key = k.split(".", 1)
            if v is None:
                sec.setdefault(section, {}).pop(key, None)
            else:
                sec.setdefault(section, {})[key] = str(v)
        return sec

    def write_config(self, text=None):
        if text is None:
            lines = []
            for section, kv in self.config_sections().items():
                lines.append("[%s]" % section)
                lines += ["%s = %s" % (k, v) for k, v in kv.items()]
            text = "\n".join(lines) + "\n"
        with open(self.conf, "w") as f:
            f.write(text)

    def start(self, wait=True):
        self.logf = open(self.log_path, "a")
        self.proc = subprocess.Popen(self.prefix + WRAP + [USERGATED, "-c", self.conf],
                                     stdout=self.logf,
                                     stderr=self.logf, env=self.env,
                                     preexec_fn=self._limit if self.nofile else None)
        self.procs.append(self.proc)
        if wait:
            wait_for(lambda: self.health_or_none() is not None or self.proc.poll() is not None,
                     what="usergated status socket")
            assert self.proc.poll() is None, "usergated exited: " + self.log()

    def _limit(self):
        import resource
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, hard))

    def wait_healthy(self, timeout=30):
        """Waits until the daemon is connected to Redis: start() returns as
        soon as the status socket answers, and until Redis is up a socket
        request is (rightly) answered unavailable."""
        wait_for(lambda: self.health_or_none() == "ok", timeout=timeout,
                 what="usergated connected to Redis")
        return self

    def health_or_none(self):
        try:
            return self.status("health")
        except OSError:
            return None

    def status(self, command, timeout=10):
        """One command on the status socket; the answer without its
        terminating empty line."""
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(timeout * SLOW)
        s.connect(self.status_socket)
        s.sendall(command.encode() + b"\n")
        buf = b""
        # An answer ends with an empty line; an empty answer is only that.
        while not buf.endswith(b"\n\n") and buf != b"\n":
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
        s.close()
        if buf == b"\n":
            return ""
        return buf[:-2].decode() if buf.endswith(b"\n\n") else buf.decode()

    def stats(self):
        return json.loads(self.status("show stats"))

    def log(self):
        try:
            with open(self.log_path) as f:
                return f.read()
        except OSError:
            return ""

    def send_signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self, sig=signal.SIGTERM, timeout=20):
        rc = stop(self.proc, sig, timeout)
        if getattr(self, "logf", None):
            self.logf.close()
        return rc


class Env:
    """What one test works with: redis, the fake and daemons; helpers to
    push requests and read results."""

    def __init__(self, workdir):
        self.dir = workdir
        self.redis = None
        self.twilio = None
        self.daemons = []
        self.extra_procs = []

    def start_redis(self, **kw):
        self.redis = Redis(self.dir, **kw)
        return self.redis

    def start_twilio(self, **kw):
        self.twilio = FakeTwilio(self.dir, **kw)
        return self.twilio

    def daemon(self, **kw):
        d = Daemon(self.dir, self.redis, self.twilio, **kw)
        self.daemons.append(d)
        return d

    @property
    def r(self):
        return self.redis.client

    def push(self, *reqs, fmt="json", key="usergate:requests"):
        for req in reqs:
            if isinstance(req, bytes):
                raw = req
            elif fmt == "json":
                raw = json.dumps(req).encode()
            else:
                raw = msgpack.packb(req)
            self.r.lpush(key, raw)

    def results(self, key="usergate:results"):
        """Result messages, oldest first."""
        return [decode(x) for x in reversed(self.r.lrange(key, 0, -1))]

    def wait_results(self, n, timeout=20, key="usergate:results"):
        wait_for(lambda: self.r.llen(key) >= n, timeout, "%d results (have %d)" %
                 (n, self.r.llen(key)))
        return self.results(key)

    def by_identity(self, results):
        out = {}
        for r in results:
            out.setdefault(r.get("identity"), []).append(r)
        return out

    def close(self):
        for d in self.daemons:
            # Under a wrapper (valgrind) a clean exit is what lets it check
            # for leaks, so a daemon still running is stopped, not killed.
            d.stop(signal.SIGTERM if WRAP or not (d.proc and d.proc.poll() is None)
                   else signal.SIGKILL)
        for p in self.extra_procs:
            stop(p)
        if self.twilio:
            self.twilio.stop()
        if self.redis:
            self.redis.stop()


def decode(raw):
    if raw[:1] == b"{":
        return json.loads(raw)
    return msgpack.unpackb(raw, raw=False)


def wrapper_errors(e):
    """Fails the test when the wrapper (valgrind) found errors in any
    daemon it ran: such a daemon exits with WRAP_ERROR_EXIT, and its
    report ("==PID== ..." lines) is in the daemon's log."""
    bad = []
    for d in e.daemons:
        for p in d.procs:
            if p.returncode == WRAP_ERROR_EXIT:
                report = [line for line in d.log().splitlines() if line.startswith("==")]
                bad.append("%s (pid %d):\n%s" % (d.dir, p.pid, "\n".join(report[-200:])))
    assert not bad, "%s reported errors:\n%s" % (WRAP[0], "\n\n".join(bad))


@pytest.fixture
def env():
    workdir = tempfile.mkdtemp(prefix="ugtest-")
    e = Env(workdir)
    try:
        yield e
    finally:
        e.close()
        for d in e.daemons:
            log = d.log()
            # A daemon must never log its secret, whatever happened.
            assert API_SECRET not in log, "secret leaked into the log"
        if WRAP:
            wrapper_errors(e)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def stack(env):
    """The usual trio: redis, fake Twilio, one daemon."""
    env.start_redis()
    env.start_twilio()
    env.d = env.daemon()
    env.d.wait_healthy()
    return env
