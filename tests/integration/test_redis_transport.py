"""The Redis transport alone (src/queue_conn.c, issue 13), driven by
tests/queue-conn-probe against a real redis-server: over TCP, a Unix
socket and TLS with a test CA made here with the openssl CLI.  Replies come
in order, every callback is called exactly once (also when the server dies
with commands outstanding), TLS refuses a wrong CA, a wrong server name
and a missing client certificate with a clear reason, timeouts fire, and a
subscriber gets what is published.  Under `make check-valgrind` the probe
runs under valgrind too, which fails a test on a leak or a bad access."""
import os
import shutil
import signal
import subprocess
import tempfile

import pytest
import redis as redislib

from conftest import BUILDDIR, SLOW, WRAP, Redis, free_port, wait_for

PROBE = os.path.join(BUILDDIR, "tests", "queue-conn-probe")


def openssl(*args):
    subprocess.run(["openssl"] + list(args), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def make_ca(d, name):
    """A self-signed CA: (cert, key) in d."""
    crt, key = os.path.join(d, name + ".crt"), os.path.join(d, name + ".key")
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt",
            "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key,
            "-out", crt, "-days", "2", "-subj", "/CN=usergate test " + name)
    return crt, key


def make_cert(d, name, ca, san=None):
    """A certificate for name signed by ca, with the subjectAltName san."""
    crt, key = os.path.join(d, name + ".crt"), os.path.join(d, name + ".key")
    csr, ext = os.path.join(d, name + ".csr"), os.path.join(d, name + ".ext")
    with open(ext, "w") as f:
        f.write("basicConstraints = CA:FALSE\n")
        if san:
            f.write("subjectAltName = %s\n" % san)
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=" + name)
    openssl("x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1],
            "-CAcreateserial", "-out", crt, "-days", "2", "-extfile", ext)
    return crt, key


@pytest.fixture(scope="module")
def pki():
    d = tempfile.mkdtemp(prefix="ugtls-")
    ca = make_ca(d, "ca")
    certs = {
        "ca": ca,
        "other_ca": make_ca(d, "other-ca"),
        "server": make_cert(d, "server", ca, "DNS:localhost,IP:127.0.0.1"),
        "client": make_cert(d, "client", ca),
    }
    yield certs
    shutil.rmtree(d, ignore_errors=True)


class Server(Redis):
    """conftest's redis-server, also on a Unix socket, or TLS only (its
    TCP port turned off, the TLS one on the free port)."""

    def __init__(self, workdir, tls=None, auth_clients=False):
        self.tls = tls
        self.auth_clients = auth_clients
        self.socket = os.path.join(workdir, "redis.sock")
        Redis.__init__(self, workdir)

    def start(self):
        args = ["redis-server", "--bind", "127.0.0.1", "--save", "",
                "--dir", self.dir, "--unixsocket", self.socket,
                "--logfile", os.path.join(self.dir, "redis.log")]
        if self.tls:
            args += ["--port", "0", "--tls-port", str(self.port),
                     "--tls-cert-file", self.tls["server"][0],
                     "--tls-key-file", self.tls["server"][1],
                     "--tls-ca-cert-file", self.tls["ca"][0],
                     "--tls-auth-clients",
                     "yes" if self.auth_clients else "no"]
        else:
            args += ["--port", str(self.port)]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        # The Unix socket answers in every mode, TLS or not.
        self.client = redislib.Redis(unix_socket_path=self.socket)
        wait_for(self._ping, what="redis-server to answer")


@pytest.fixture
def workdir():
    d = tempfile.mkdtemp(prefix="ugconn-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def server(workdir):
    s = Server(workdir)
    yield s
    s.stop()


def probe(*args, timeout=30):
    """Runs the probe to its end: (exit status, its lines)."""
    p = subprocess.run(WRAP + [PROBE] + list(args), stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True,
                       timeout=timeout * SLOW)
    return p.returncode, p.stdout.splitlines()


class Running:
    """A probe left running while the test acts on the server."""

    def __init__(self, *args):
        self.proc = subprocess.Popen(WRAP + [PROBE] + list(args),
                                     stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.lines = []

    def expect(self, prefix):
        """Reads lines until one starts with prefix; returns it."""
        while True:
            line = self.proc.stdout.readline()
            assert line, "probe ended before %r: %r" % (prefix, self.lines)
            self.lines.append(line.rstrip("\n"))
            if line.startswith(prefix):
                return line.rstrip("\n")

    def finish(self):
        out, _ = self.proc.communicate(timeout=30 * SLOW)
        self.lines += out.splitlines()
        return self.proc.returncode, self.lines


def replies(lines):
    return [l.split(": ", 1)[1] for l in lines if l.startswith("reply ")]


PIPELINE = ["SET k 1", "INCR k", "GET k", "LRANGE nolist 0 -1", "BOGUS x",
            "RPUSH l a b c", "LRANGE l 0 -1"]
PIPELINE_REPLIES = ["+OK", ":2", "$2", "[]", None, ":3", "[$a, $b, $c]"]


def check_pipeline(lines):
    got = replies(lines)
    assert len(got) == len(PIPELINE_REPLIES), lines
    for want, have in zip(PIPELINE_REPLIES, got):
        if want is None:
            assert have.startswith("-ERR unknown command"), lines
        else:
            assert have == want, lines
    assert lines[-1] == "done: sent=%d messages=0" % len(PIPELINE), lines


def test_tcp_pipeline_in_order(server):
    rc, lines = probe("--port", str(server.port), *PIPELINE)
    assert rc == 0, lines
    assert lines[0] == "connected", lines
    check_pipeline(lines)


def test_unix_socket_pipeline(server):
    rc, lines = probe("--unix", server.socket, *PIPELINE)
    assert rc == 0, lines
    check_pipeline(lines)


def test_large_reply_in_pieces(server):
    """A reply longer than one read is parsed whole (hiredis' reader)."""
    server.client.set("big", "x" * 300000)
    rc, lines = probe("--port", str(server.port), "STRLEN big", "GET big",
                      "PING")
    assert rc == 0, lines
    got = replies(lines)
    assert got[0] == ":300000" and got[1] == "$" + "x" * 300000, got[0]
    assert got[2] == "+PONG"


def test_refused_connection_is_a_clear_error(workdir):
    rc, lines = probe("--port", str(free_port()), "PING")
    assert rc == 0, lines
    assert lines[:2] == ["reply 0: NULL", "closed: Connection refused"], lines


def kill_with_commands_outstanding(server, *args):
    """Runs the probe with a BLPOP and more behind it, kills the server
    (SIGKILL) once the BLPOP blocks; returns the probe's lines."""
    r = Running(*args)
    r.expect("connected")
    wait_for(lambda: server.client.execute_command("CLIENT", "LIST").count(
        b"cmd=blpop") == 1, what="the probe blocked in BLPOP")
    server.stop(signal.SIGKILL)
    rc, lines = r.finish()
    # The probe fails (exit 1) on a callback called twice or never.
    assert rc == 0, lines
    return lines


def test_killed_server_calls_every_callback_once_with_null(server):
    lines = kill_with_commands_outstanding(
        server, "--port", str(server.port), "BLPOP never 0", "PING",
        "GET k", "INCR k")
    assert replies(lines) == ["NULL"] * 4, lines
    assert [l for l in lines if l.startswith("closed: ")] == \
        ["closed: connection closed by server"], lines


def test_command_timeout(server):
    rc, lines = probe("--port", str(server.port), "--command-timeout", "300",
                      "PING", "BLPOP never 0", "PING")
    assert rc == 0, lines
    assert replies(lines) == ["+PONG", "NULL", "NULL"], lines
    assert "closed: command timed out after 300 ms" in lines, lines


def test_connect_timeout(workdir):
    """A server that accepts TCP but never answers the TLS handshake."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        rc, lines = probe("--port", str(s.getsockname()[1]), "--tls",
                          "--connect-timeout", "300", "PING")
    assert rc == 0, lines
    assert lines[:2] == ["reply 0: NULL",
                         "closed: connect timed out after 300 ms"], lines


def test_subscribe_gets_published_message(server):
    r = Running("--port", str(server.port), "--messages", "2",
                "SUBSCRIBE news other", "PSUBSCRIBE n*")
    assert r.expect("reply 0:") == "reply 0: [$subscribe, $news, :1]"
    assert r.expect("reply 1:") == "reply 1: [$psubscribe, $n*, :3]"
    assert server.client.publish("news", "hello") == 2
    rc, lines = r.finish()
    assert rc == 0, lines
    assert "message: [$message, $news, $hello]" in lines, lines
    assert "message: [$pmessage, $n*, $news, $hello]" in lines, lines


# ---------------------------------------------------------------- TLS

@pytest.fixture
def tls_server(workdir, pki):
    s = Server(workdir, tls=pki)
    yield s
    s.stop()


def test_tls_pipeline_verified(tls_server, pki):
    rc, lines = probe("--port", str(tls_server.port), "--tls", "--ca",
                      pki["ca"][0], *PIPELINE)
    assert rc == 0, lines
    assert lines[0] == "connected", lines
    check_pipeline(lines)


def test_tls_server_name_checked_and_sent(tls_server, pki):
    """tls_server_name replaces the host in the check: the certificate
    names localhost, which the probe reaches as 127.0.0.1."""
    rc, lines = probe("--port", str(tls_server.port), "--tls", "--ca",
                      pki["ca"][0], "--server-name", "localhost", "PING")
    assert rc == 0, lines
    assert replies(lines) == ["+PONG"], lines


def test_tls_wrong_ca_refused(tls_server, pki):
    rc, lines = probe("--port", str(tls_server.port), "--tls", "--ca",
                      pki["other_ca"][0], "PING")
    assert rc == 0, lines
    assert "connected" not in lines, lines
    assert replies(lines) == ["NULL"], lines
    # Redis sends its CA along: a chain this client does not trust.
    assert lines[1] in (
        "closed: TLS: certificate verify failed: unable to get local issuer "
        "certificate",
        "closed: TLS: certificate verify failed: self-signed certificate in "
        "certificate chain"), lines


def test_tls_wrong_server_name_refused(tls_server, pki):
    rc, lines = probe("--port", str(tls_server.port), "--tls", "--ca",
                      pki["ca"][0], "--server-name", "redis.example.com",
                      "PING")
    assert rc == 0, lines
    assert replies(lines) == ["NULL"], lines
    assert "closed: TLS: certificate verify failed: hostname mismatch" \
        in lines, lines


def test_tls_unreadable_ca_file_is_a_clear_error(tls_server, pki, workdir):
    rc, lines = probe("--port", str(tls_server.port), "--tls", "--ca",
                      os.path.join(workdir, "missing.crt"), "PING")
    assert rc == 0, lines
    assert replies(lines) == ["NULL"], lines
    closed = [l for l in lines if l.startswith("closed: ")]
    missing = os.path.join(workdir, "missing.crt")
    assert closed == ["closed: TLS: cannot load CA file %s: No such file "
                      "or directory" % missing], lines


def test_mutual_tls(workdir, pki):
    s = Server(workdir, tls=pki, auth_clients=True)
    try:
        rc, lines = probe("--port", str(s.port), "--tls", "--ca", pki["ca"][0],
                          "--cert", pki["client"][0], "--key", pki["client"][1],
                          "PING", "ECHO mutual")
        assert rc == 0, lines
        assert replies(lines) == ["+PONG", "$mutual"], lines

        rc, lines = probe("--port", str(s.port), "--tls", "--ca", pki["ca"][0],
                          "PING")
        assert rc == 0, lines
        assert replies(lines) == ["NULL"], lines
        # With TLS 1.3 the client's handshake ends before the server has
        # checked its certificate: the server's alert comes after our PING,
        # and the server closing with our PING unread may reset the
        # connection before the alert is read.
        closed = [l for l in lines if l.startswith("closed: ")]
        assert closed in (["closed: TLS: tlsv13 alert certificate required"],
                          ["closed: Connection reset by peer"]), lines
    finally:
        s.stop()


def test_tls_server_killed_with_commands_outstanding(tls_server, pki):
    """A TLS server that dies sends no close_notify (OpenSSL 3's
    "unexpected EOF"): a disconnect like any other, every callback once."""
    lines = kill_with_commands_outstanding(
        tls_server, "--port", str(tls_server.port), "--tls", "--ca",
        pki["ca"][0], "BLPOP never 0", "PING")
    assert replies(lines) == ["NULL", "NULL"], lines
    assert "closed: connection closed by server" in lines, lines
