"""The daemon's link to Redis over TLS (issue 13, items 2 and 6): Debian's
redis-server TLS-only with a test CA (test_redis_transport.py's), creates
over TLS, mutual TLS, a wrong CA and a wrong host name refused with the
reason in health and one log line per outage, a reload that fixes the
config reconnecting by itself; the server's version read with HELLO (and a
server without HELLO refused), the maxmemory-policy warning, and the Redis
figures of show stats and show metrics."""
import os
import signal
import subprocess
import time

import redis as redislib

from conftest import SLOW, Redis, wait_for
from test_redis_transport import Server, pki  # noqa: F401 (a fixture)

TLS_FAILED = 'level=error msg="TLS to redis failed'


def tls_env(env, pki, auth_clients=False, **redis_keys):
    """A TLS-only redis-server, the fake Twilio and a daemon whose [redis]
    has redis_keys (tls_* names without the section)."""
    env.redis = Server(env.dir, tls=pki, auth_clients=auth_clients)
    env.start_twilio()
    extra = {"redis." + k: v for k, v in redis_keys.items()}
    return env.daemon(extra=extra)


def create_one(env, identity):
    env.push({"Identity": identity, "RequestId": identity})
    res = [r for r in env.wait_results(1) if r.get("identity") == identity]
    assert res and res[0]["status"] == "created", res


def reload_with(d, **redis_keys):
    """Rewrites [redis] with redis_keys and reloads through the socket."""
    for k, v in redis_keys.items():
        d.extra["redis." + k] = v
    d.write_config()
    assert d.status("reload") == "ok"


def daemon_conns(env):
    """The ids of the daemon's connections (over TCP: the test's own
    client is on the Unix socket)."""
    return {c["id"] for c in env.r.client_list()
            if c["addr"].startswith("127.0.0.1:")}


def test_creates_over_tls(env, pki):
    d = tls_env(env, pki, tls_ca_file=pki["ca"][0]).wait_healthy()
    create_one(env, "tls-user")
    s = d.stats()
    assert s["redis_tls"] is True
    assert s["redis_address"] == "127.0.0.1:%d" % env.redis.port
    assert s["redis_connected"] is True and s["redis_up_s"] >= 0
    assert s["redis_reconnects"] == 0
    metrics = d.status("show metrics")
    assert "\nusergate_redis_tls 1\n" in metrics
    assert ('\nusergate_redis_info{address="127.0.0.1:%d"} 1\n'
            % env.redis.port) in metrics
    assert "\nusergate_redis_reconnects_total 0\n" in metrics
    log = d.log()
    # HELLO told the version (Debian 12: 7.0), which passes the check.
    version = env.r.info("server")["redis_version"]
    assert 'msg="redis server" version=%s' % version in log
    # Debian's default policy is noeviction: nothing to warn about.
    assert "maxmemory_policy" not in log
    # A clean exit removes the heartbeat over its own TLS connection.
    assert env.r.exists("usergate:instance:ug") == 1
    assert d.stop() == 0
    assert env.r.exists("usergate:instance:ug") == 0


def test_rediss_url(env, pki):
    """rediss:// in url turns TLS on; the tls_* keys still apply."""
    env.redis = Server(env.dir, tls=pki)
    env.start_twilio()
    url = "rediss://127.0.0.1:%d/0" % env.redis.port
    d = env.daemon(extra={"redis.url": url, "redis.host": None,
                          "redis.port": None,
                          "redis.tls_ca_file": pki["ca"][0]}).wait_healthy()
    create_one(env, "url-user")
    assert d.stats()["redis_tls"] is True


def test_mutual_tls(env, pki):
    d = tls_env(env, pki, auth_clients=True, tls_ca_file=pki["ca"][0])
    # Without a client certificate the server ends the handshake.
    wait_for(lambda: d.status("health").startswith("degraded: redis TLS: "),
             what="degraded: redis TLS")
    # The server's alert is often lost in a reset (it closes on our
    # first commands): the TLS reason stays, with one line for it.
    time.sleep(3 * SLOW)
    assert d.status("health").startswith("degraded: redis TLS: ")
    assert d.log().count(TLS_FAILED) == 1
    assert d.proc.poll() is None
    reload_with(d, tls_cert_file=pki["client"][0],
                tls_key_file=pki["client"][1])
    d.wait_healthy()
    create_one(env, "mtls-user")
    assert "redis TLS settings changed; reconnecting" in d.log()


def test_wrong_ca_one_line_per_outage_then_reload(env, pki):
    d = tls_env(env, pki, tls_ca_file=pki["other_ca"][0])
    down = "degraded: redis TLS: certificate verify failed: "
    wait_for(lambda: d.status("health").startswith(down), what=down)
    # Several reconnects with backoff (0.1, 0.2 ... 3.2 s), one line.
    time.sleep(4 * SLOW)
    assert d.log().count(TLS_FAILED) == 1, d.log()
    assert d.stats()["redis_connected"] is False
    assert d.stats()["redis_up_s"] is None
    assert "usergate_redis_up_seconds" not in d.status("show metrics")
    d.extra["redis.tls_ca_file"] = pki["ca"][0]
    d.write_config()
    d.send_signal(signal.SIGHUP)
    d.wait_healthy()
    create_one(env, "fixed-ca")
    assert d.proc.poll() is None


def test_wrong_host_name(env, pki):
    d = tls_env(env, pki, tls_ca_file=pki["ca"][0],
                tls_server_name="redis.wrong.example")
    down = ("degraded: redis TLS: certificate verify failed: "
            "hostname mismatch")
    wait_for(lambda: d.status("health") == down, what=down)
    log = d.log()
    assert log.count(TLS_FAILED) == 1
    assert "hostname mismatch" in log
    reload_with(d, tls_server_name="localhost")
    d.wait_healthy()
    create_one(env, "right-name")


def test_reload_with_new_tls_settings_reconnects(env, pki):
    d = tls_env(env, pki, tls_ca_file=pki["ca"][0]).wait_healthy()
    old = daemon_conns(env)
    assert len(old) == 2
    reload_with(d, tls_server_name="localhost")
    # Two new connections, none of the old ones left.
    wait_for(lambda: len(daemon_conns(env)) == 2 and
             not daemon_conns(env) & old and d.status("health") == "ok",
             what="a reconnect")
    kept = daemon_conns(env)
    assert d.stats()["redis_reconnects"] == 1
    # A reload that changes nothing Redis uses keeps the link.
    up = d.stats()["redis_up_s"]
    reload_with(d)
    time.sleep(1.2)
    assert daemon_conns(env) == kept
    assert d.stats()["redis_reconnects"] == 1
    assert d.stats()["redis_up_s"] > up
    create_one(env, "after-reload")

def test_maxmemory_policy_warning(env):
    env.start_redis()
    env.r.config_set("maxmemory-policy", "allkeys-lru")
    env.start_twilio()
    d = env.daemon().wait_healthy()
    line = [x for x in d.log().splitlines() if "maxmemory_policy" in x]
    assert len(line) == 1 and "level=warning" in line[0] and \
        "maxmemory_policy=allkeys-lru" in line[0], line
    # A reconnect does not warn again about the same policy.
    env.r.client_kill_filter(skipme=True, _type="normal")
    wait_for(lambda: "redis connection restored" in d.log() and
             d.status("health") == "ok", what="a reconnect")
    assert d.log().count("maxmemory_policy=") == 1
    s = d.stats()
    assert s["redis_reconnects"] == 1 and s["redis_tls"] is False
    assert s["redis_address"] == "127.0.0.1:%d" % env.redis.port


def test_config_get_refused_is_not_asked_again(env):
    """A user without CONFIG (as a least-privilege one) gets NOPERM: no
    warning, and no second try on a reconnect (each would be an entry in
    the ACL LOG)."""
    env.start_redis()
    env.r.config_set("maxmemory-policy", "allkeys-lru")
    env.r.execute_command("ACL", "SETUSER", "default", "-config")
    env.start_twilio()
    d = env.daemon().wait_healthy()
    env.r.client_kill_filter(skipme=True, _type="normal")
    wait_for(lambda: "redis connection restored" in d.log() and
             d.status("health") == "ok", what="a reconnect")
    create_one(env, "least-privilege")
    assert "maxmemory_policy" not in d.log()
    assert "HELLO" not in d.log()
    denied = [e for e in env.r.acl_log()
              if e.get("object") == "config|get"]
    assert len(denied) == 1 and denied[0]["count"] == 1, denied



class NoHello(Redis):
    """A redis-server that answers HELLO as one older than 6.0 does
    ("unknown command"): its HELLO renamed away, the rest real; restarted
    with renamed False, a current one on the same port."""
    renamed = True

    def start(self):
        args = ["redis-server", "--port", str(self.port), "--bind",
                "127.0.0.1", "--save", "", "--dir", self.dir,
                "--logfile", os.path.join(self.dir, "redis.log")]
        if self.renamed:
            args += ["--rename-command", "HELLO", '""']
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        self.client = redislib.Redis(host="127.0.0.1", port=self.port)
        wait_for(self._ping, what="redis-server to answer")


def test_server_without_hello_is_refused(env):
    """Below 6.2 usergated refuses the server (no BLMOVE), says why in
    health and once in the log, takes nothing, and connects by itself once
    a current server answers on that address."""
    env.redis = NoHello(env.dir)
    env.start_twilio()
    d = env.daemon()
    down = ("degraded: redis too old: no HELLO (before 6.0), usergated "
            "needs 6.2 or later")
    wait_for(lambda: d.status("health") == down, what=down)
    env.push({"Identity": "waits", "RequestId": "waits"})
    time.sleep(3 * SLOW)
    assert d.log().count("redis too old") == 1
    assert env.r.llen("usergate:requests") == 1
    assert d.proc.poll() is None
    env.redis.stop()
    env.redis.renamed = False
    env.redis.start()
    d.wait_healthy()
    create_one(env, "waits")
