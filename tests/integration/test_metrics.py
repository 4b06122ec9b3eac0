"""[metrics] listen: GET /metrics and /healthz over HTTP (issue 14), read
with a plain HTTP client, checked with promtool, and scraped by Debian's
real prometheus server."""
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import urllib.error
import urllib.parse
import urllib.request

import pytest

from conftest import (BUILDDIR, SLOW, SRCDIR, STATS_COUNTERS, USERGATED,
                      free_port, stop, wait_for)

STATUSES = ["created", "exists", "updated", "duplicate", "invalid", "failed"]


def http(port, path, method="GET"):
    """(status, content type, body) of one request to the endpoint."""
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path),
                                 method=method)
    try:
        with urllib.request.urlopen(req, timeout=10 * SLOW) as r:
            return r.status, r.headers.get("Content-Type"), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type"), e.read().decode()


def samples(text):
    """{'name{labels}': value} of an exposition."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


@pytest.fixture
def mstack(env):
    env.start_redis()
    env.start_twilio()
    port = free_port()
    d = env.daemon(extra={"metrics.listen": "127.0.0.1:%d" % port})
    d.wait_healthy()
    d.metrics_port = port
    return env, d


def test_metrics_endpoint(mstack):
    env, d = mstack
    env.push({"Identity": "m1"}, {"Identity": "m2"}, b"not a request")
    env.wait_results(3)
    code, ctype, text = http(d.metrics_port, "/metrics")
    assert code == 200
    assert ctype.startswith("text/plain; version=0.0.4")
    s = samples(text)
    assert s['usergate_requests_total{status="created"}'] == 2
    assert s['usergate_requests_total{status="invalid"}'] == 1
    for st in STATUSES:
        assert 'usergate_requests_total{status="%s"}' % st in s
    # The status counters only in the family, the others on their own.
    for c in STATS_COUNTERS:
        assert ("usergate_%s_total" % c in s) == (c not in STATUSES), c
    assert s["usergate_healthy"] == 1 and s["usergate_redis_connected"] == 1
    assert s["usergate_concurrency_window"] >= 1
    assert s["usergate_twilio_request_duration_seconds_count"] == 2
    assert s["usergate_enqueue_to_result_seconds_count"] == 3
    # HEAD is a GET without the body.
    assert http(d.metrics_port, "/metrics", "HEAD")[0] == 200


@pytest.mark.skipif(shutil.which("promtool") is None, reason="no promtool")
def test_promtool_check_metrics(mstack):
    env, d = mstack
    env.push({"Identity": "p1"})
    env.wait_results(1)
    text = http(d.metrics_port, "/metrics")[2]
    p = subprocess.run(["promtool", "check", "metrics"], input=text.encode(),
                       capture_output=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout + p.stderr == b""
    # The dashboard's queries name only what this real scrape serves, and
    # the rules hold (tests/check-prometheus.sh, on this scrape).
    path = os.path.join(env.dir, "scrape.txt")
    with open(path, "w") as f:
        f.write(text)
    p = subprocess.run([os.path.join(SRCDIR, "tests", "check-prometheus.sh")],
                       env=dict(os.environ, top_srcdir=SRCDIR, top_builddir=BUILDDIR,
                                USERGATE_METRICS_TEXT=path),
                       capture_output=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr


def test_healthz_and_errors(mstack):
    env, d = mstack
    assert http(d.metrics_port, "/healthz") == (200, "text/plain; charset=utf-8", "ok\n")
    assert http(d.metrics_port, "/nope")[0] == 404
    assert http(d.metrics_port, "/")[0] == 404
    assert http(d.metrics_port, "/metrics", "POST")[0] == 405
    assert http(d.metrics_port, "/healthz", "DELETE")[0] == 405
    env.redis.stop()
    wait_for(lambda: http(d.metrics_port, "/healthz")[0] == 503, what="503")
    code, _, body = http(d.metrics_port, "/healthz")
    assert body == "degraded: redis unreachable\n"
    # /metrics still answers, the lengths left out, health 0.
    s = samples(http(d.metrics_port, "/metrics")[2])
    assert s["usergate_healthy"] == 0 and "usergate_queue_depth" not in s
    env.redis.start()
    wait_for(lambda: http(d.metrics_port, "/healthz")[0] == 200,
             timeout=30, what="200 again")


def test_client_gone_before_the_answer(mstack):
    """A scrape waits for Redis' list lengths; a client that leaves
    meanwhile is answered into the void, and the daemon goes on."""
    env, d = mstack
    env.redis.proc.send_signal(signal.SIGSTOP)
    try:
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", d.metrics_port)) as c:
                c.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    finally:
        env.redis.proc.send_signal(signal.SIGCONT)
    env.push({"Identity": "after-gone"})
    env.wait_results(1)
    assert d.proc.poll() is None
    code, _, text = http(d.metrics_port, "/metrics")
    assert code == 200
    assert samples(text)['usergate_requests_total{status="created"}'] == 1


def test_oversized_head_refused(mstack):
    env, d = mstack
    with socket.create_connection(("127.0.0.1", d.metrics_port)) as c:
        c.sendall(b"GET /metrics HTTP/1.1\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n")
        c.settimeout(10 * SLOW)
        got = b""
        while True:
            part = c.recv(4096)
            if not part:
                break
            got += part
    # evhttp answers 400 or closes, never serves it.
    assert not got.startswith(b"HTTP/1.1 200")
    assert http(d.metrics_port, "/healthz")[0] == 200


def test_bad_listen_is_a_config_error(env):
    env.start_redis()
    for bad in ["localhost:9466", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:70000",
                "::1:9466", "[::1]"]:
        d = env.daemon(name="bad%d" % len(env.daemons), start=False,
                       extra={"metrics.listen": bad})
        p = subprocess.run([USERGATED, "-n", "-c", d.conf], capture_output=True,
                           timeout=30)
        assert p.returncode != 0, bad
        assert b'"listen" in [metrics]' in p.stderr, p.stderr
    d = env.daemon(name="good", start=False, extra={"metrics.listen": "[::1]:9466"})
    p = subprocess.run([USERGATED, "-n", "-c", d.conf], capture_output=True, timeout=30)
    assert p.returncode == 0, p.stderr


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="no prometheus")
def test_real_prometheus_scrape(mstack):
    env, d = mstack
    n = 5
    env.push(*[{"Identity": "prom-%d" % i} for i in range(n)])
    env.wait_results(n)
    work = tempfile.mkdtemp(prefix="ugprom-", dir=env.dir)
    conf = os.path.join(work, "prometheus.yml")
    with open(conf, "w") as f:
        f.write("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                "scrape_configs:\n  - job_name: usergate\n"
                "    static_configs:\n      - targets: ['127.0.0.1:%d']\n"
                % d.metrics_port)
    pport = free_port()
    log = open(os.path.join(work, "prometheus.log"), "w")
    proc = subprocess.Popen(
        ["prometheus", "--config.file=" + conf,
         "--storage.tsdb.path=" + os.path.join(work, "data"),
         "--web.listen-address=127.0.0.1:%d" % pport],
        stdout=log, stderr=subprocess.STDOUT)
    env.extra_procs.append(proc)

    def query(q):
        url = "http://127.0.0.1:%d/api/v1/query?%s" % (
            pport, urllib.parse.urlencode({"query": q}))
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                res = json.load(r)
        except (urllib.error.URLError, ConnectionError):
            return None
        if res.get("status") != "success" or not res["data"]["result"]:
            return None
        return float(res["data"]["result"][0]["value"][1])

    try:
        wait_for(lambda: query('up{job="usergate"}') == 1, timeout=60,
                 interval=0.5, what="up == 1")
        wait_for(lambda: query('usergate_requests_total{status="created"}') == n,
                 timeout=60, interval=0.5, what="created == %d" % n)
        assert query("usergate_healthy") == 1
    finally:
        stop(proc)
        log.close()
