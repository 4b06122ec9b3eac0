"""Journal fields (issue 14, item 6): when stderr is the journal's stream,
every line goes as a journal entry through sd_journal_sendv, with the
fields journalctl finds a request by.

There is no systemd on the test host, so the daemon runs in a private mount
namespace whose /run/systemd is a directory of the test: the datagram socket
bound there at journal/socket is, for libsystemd, the journal's, and this
test reads the entries as journald would (the native protocol,
systemd.journal-native(7)).  stderr is the daemon's log file, named in
JOURNAL_STREAM as systemd names the stream it connects."""
import array
import os
import shutil
import signal
import socket
import struct
import subprocess
import threading

import pytest

from conftest import wait_for, API_SECRET


def namespace_reason():
    """Why the private mount namespace cannot be had here, or None."""
    if shutil.which("unshare") is None:
        return "unshare(1) is not installed"
    if not os.path.isdir("/run/systemd"):
        return "/run/systemd does not exist to mount over"
    r = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                        "mount -t tmpfs none /run/systemd"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        return "no private mount namespace (root needed): " + r.stderr.strip()
    return None


def parse_entry(data):
    """One native-protocol datagram: "KEY=value\\n", or "KEY\\n", a 64-bit
    little-endian length, the value's bytes and "\\n" when the value holds
    a newline.  Returns a list of (key, value bytes)."""
    fields = []
    i = 0
    while i < len(data):
        nl = data.index(b"\n", i)
        line = data[i:nl]
        if b"=" in line:
            key, value = line.split(b"=", 1)
            i = nl + 1
        else:
            key = line
            (n,) = struct.unpack("<Q", data[nl + 1:nl + 9])
            value = data[nl + 9:nl + 9 + n]
            assert data[nl + 9 + n:nl + 10 + n] == b"\n", data
            i = nl + 10 + n
        fields.append((key.decode(), value))
    return fields


class Journal:
    """A stand-in journald: the entries sent to DIR/journal/socket."""

    def __init__(self, root):
        os.makedirs(os.path.join(root, "journal"))
        self.path = os.path.join(root, "journal", "socket")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.entries = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        while True:
            try:
                data, anc, _, _ = self.sock.recvmsg(1 << 20, socket.CMSG_SPACE(4))
            except OSError:
                return
            if not data and not anc:
                return          # shut down
            # A large entry comes as a sealed memfd (SCM_RIGHTS).
            for level, kind, cdata in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fd = array.array("i", cdata[:4])[0]
                    with os.fdopen(fd, "rb") as f:
                        data = f.read()
            self.entries.append(dict(parse_entry(data)))

    def find(self, **want):
        """Entries holding every FIELD=value given (values as str)."""
        return [e for e in list(self.entries)
                if all(e.get(k) == v.encode() for k, v in want.items())]

    def close(self):
        """Stops reading; the socket file stays, as when journald dies
        (libsystemd drops an entry silently when the file is missing)."""
        if self.sock.fileno() == -1:
            return
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(5)


@pytest.fixture
def journal(env):
    reason = namespace_reason()
    if reason:
        pytest.skip(reason)
    root = os.path.join(env.dir, "run-systemd")
    j = Journal(root)
    # /run/systemd of the daemon is root; stderr (its log file) is the
    # journal's stream.
    j.prefix = ["unshare", "-m", "--propagation", "private", "sh", "-c",
                'mount --bind "$0" /run/systemd && exec "$@"', root]
    yield j
    j.close()


def journal_daemon(env, journal, **kw):
    d = env.daemon(start=False, prefix=journal.prefix, **kw)
    open(d.log_path, "a").close()
    st = os.stat(d.log_path)
    d.env["JOURNAL_STREAM"] = "%d:%d" % (st.st_dev, st.st_ino)
    d.start()
    d.wait_healthy()
    return d


def test_request_story_in_journal_fields(env, journal):
    env.start_redis()
    env.start_twilio()
    d = journal_daemon(env, journal, extra={"log.level": "info"})
    wait_for(lambda: journal.find(USERGATE_EVENT="usergated_started"),
             what="the start entry")
    start = journal.find(USERGATE_EVENT="usergated_started")[0]
    assert start["PRIORITY"] == b"6"
    assert start["SYSLOG_IDENTIFIER"] == b"usergated"
    assert start["MESSAGE"].startswith(b'level=info msg="usergated started"')
    assert start["CODE_FILE"].endswith(b"main.c") and start["CODE_LINE"].isdigit()

    # A failed request: found by its request id, with Twilio's code.
    env.twilio.control(next=["400"])
    env.push({"Identity": "private-person", "RequestId": "jr-1"})
    assert env.wait_results(1)[0]["status"] == "failed"
    wait_for(lambda: journal.find(REQUEST_ID="jr-1"), what="the request's entry")
    story = journal.find(REQUEST_ID="jr-1")
    assert [e["USERGATE_EVENT"] for e in story] == [b"request_not_done"]
    e = story[0]
    assert e["PRIORITY"] == b"4"
    assert e["TWILIO_CODE"] == b"21000"
    assert b"request_id=jr-1" in e["MESSAGE"] and b"twilio_code=21000" in e["MESSAGE"]
    # At info an Identity is in no field and no message.
    assert not [x for x in journal.entries if "IDENTITY" in x]
    assert not [x for x in journal.entries
                if any(b"private-person" in v for v in x.values())]

    # At debug the request's story carries its Identity.
    d.extra["log.level"] = "debug"
    d.write_config()
    n = len(journal.find(USERGATE_EVENT="configuration_reloaded"))
    d.send_signal(signal.SIGHUP)
    wait_for(lambda: len(journal.find(USERGATE_EVENT="configuration_reloaded")) > n,
             what="the reload entry")
    env.push({"Identity": "debug-person", "RequestId": "jr-2"})
    assert env.wait_results(2)[1]["status"] == "created"
    wait_for(lambda: journal.find(REQUEST_ID="jr-2", USERGATE_EVENT="request_done"),
             what="the request done entry")
    done = journal.find(REQUEST_ID="jr-2", USERGATE_EVENT="request_done")[0]
    assert done["IDENTITY"] == b"debug-person" and done["PRIORITY"] == b"7"

    # No secret in any field, and nothing went to stderr as a line.
    for x in journal.entries:
        for v in x.values():
            assert API_SECRET.encode() not in v
    assert "level=" not in d.log()

    # The journal gone: the lines go to stderr, with their priority.
    journal.close()
    d.send_signal(signal.SIGHUP)
    wait_for(lambda: '<6>level=info msg="configuration reloaded"' in d.log(),
             what="the reload line on stderr")
    lines = [x for x in d.log().splitlines() if "level=" in x]
    assert lines and all(x.startswith("<") for x in lines), lines
