"""Redis Sentinel (issue 13, items 3, 4 and 7): one primary, one replica and
three Sentinels on loopback, usergated configured with [redis] sentinels and
master_name, a producer pushing creates all along.  A graceful failover
(SENTINEL FAILOVER) and a hard one (kill -9 of the primary) are both
survived: the daemon asks the Sentinels again, reconnects to the promoted
replica and goes on.  What each case guarantees is asserted exactly (see
docs/design.md, "Failover")."""
import os
import shutil
import signal
import subprocess
import threading
import time

import pytest
import redis as redislib

from conftest import free_port, stop, wait_for, decode, SLOW
from test_redis_transport import Server, pki  # noqa: F401 (a fixture)

MASTER = "ugmain"
DONE = ("created", "exists", "updated", "duplicate", "invalid", "failed")

pytestmark = pytest.mark.skipif(
    shutil.which("redis-sentinel") is None and shutil.which("redis-server") is None,
    reason="no redis-sentinel")


def sentinel_argv(conf):
    if shutil.which("redis-sentinel"):
        return ["redis-sentinel", conf]
    return ["redis-server", conf, "--sentinel"]


class Cluster:
    """A primary (the env's redis-server), a replica of it and Sentinels
    watching them (three unless told), each on a free port.  With tls (the
    pki fixture's certificates) every one of them is TLS-only, replication
    and the Sentinels' own links included; password is the primary's
    requirepass, sentinel_password the Sentinels'."""

    def __init__(self, env, nsentinels=3, replica=True, tls=None,
                 password=None, sentinel_password=None):
        self.env = env
        self.tls = tls
        self.password = password
        self.primary = env.redis
        self.replica_port = free_port()
        self.replica = None
        if replica:
            self.replica = subprocess.Popen(
                ["redis-server", "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", env.dir,
                 "--logfile", os.path.join(env.dir, "replica.log"),
                 "--replicaof", "127.0.0.1", str(self.primary.port)] +
                self._listen_args(self.replica_port),
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            env.extra_procs.append(self.replica)
            rc = self.client_for(self.replica_port)
            # The replica in sync before the Sentinels start: their first
            # INFO of the primary then lists it, without waiting 10 s for
            # the next.
            wait_for(lambda: self._synced(rc), timeout=20,
                     what="replica in sync")
        self.sentinels = []
        for i in range(nsentinels):
            port = free_port()
            conf = os.path.join(env.dir, "sentinel-%d.conf" % i)
            with open(conf, "w") as f:
                f.write("bind 127.0.0.1\ndir %s\n"
                        "logfile %s\n"
                        "sentinel monitor %s 127.0.0.1 %d %d\n"
                        "sentinel down-after-milliseconds %s 1000\n"
                        "sentinel failover-timeout %s 4000\n"
                        "sentinel parallel-syncs %s 1\n" % (
                            env.dir,
                            os.path.join(env.dir, "sentinel-%d.log" % i),
                            MASTER, self.primary.port, min(2, nsentinels),
                            MASTER, MASTER, MASTER))
                args = self._listen_args(port)
                f.write("".join("%s %s\n" % (args[k][2:], args[k + 1])
                                for k in range(0, len(args), 2)))
                if password:
                    f.write("sentinel auth-pass %s %s\n" % (MASTER, password))
                if sentinel_password:
                    # Sentinels also give it to one another.
                    f.write("requirepass %s\n" % sentinel_password)
            p = subprocess.Popen(sentinel_argv(conf), stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
            env.extra_procs.append(p)
            self.sentinels.append((port, self.client_for(
                port, password=sentinel_password, decode_responses=True)))
        wait_for(self._ready, timeout=30, what="sentinels that know each other "
                 "and the replica")

    def _listen_args(self, port):
        """redis-server's flags to listen on port (and replicate) in this
        cluster's mode; a Sentinel's file takes them without the dashes."""
        if not self.tls:
            return ["--port", str(port)]
        return ["--port", "0", "--tls-port", str(port),
                "--tls-cert-file", self.tls["server"][0],
                "--tls-key-file", self.tls["server"][1],
                "--tls-ca-cert-file", self.tls["ca"][0],
                "--tls-replication", "yes", "--tls-auth-clients", "no"]

    def client_for(self, port, password=False, **kw):
        """A client of the server on port, over TLS in a TLS cluster; with
        the primary's password unless told another (or None)."""
        if password is False:
            password = self.password
        if self.tls:
            kw.update(ssl=True, ssl_ca_certs=self.tls["ca"][0])
        return redislib.Redis(host="127.0.0.1", port=port, password=password,
                              **kw)

    @staticmethod
    def _synced(rc):
        try:
            return rc.info("replication").get("master_link_status") == "up"
        except redislib.exceptions.ConnectionError:
            return False

    def _ready(self):
        try:
            for _, s in self.sentinels:
                m = s.sentinel_master(MASTER)
                if int(m["num-slaves"]) < (1 if self.replica else 0) or \
                        int(m["num-other-sentinels"]) < len(self.sentinels) - 1:
                    return False
            return True
        except (redislib.exceptions.ConnectionError, redislib.exceptions.ResponseError):
            return False

    def sentinels_conf(self):
        return ",".join("127.0.0.1:%d" % p for p, _ in self.sentinels)

    def primary_port(self):
        """The primary's port according to the Sentinels (any that answers)."""
        for _, s in self.sentinels:
            try:
                addr = s.sentinel_get_master_addr_by_name(MASTER)
                if addr:
                    return int(addr[1])
            except redislib.exceptions.ConnectionError:
                continue
        return None

    def client(self):
        return self.client_for(self.primary_port())


class Producer(threading.Thread):
    """Pushes one create every few ms to whatever is the primary now, each
    followed by WAIT 1 1000; acked holds the identities of the pushes that a
    replica confirmed.  An error (the primary gone or read-only) makes it
    ask the Sentinels again and push the same request once more: a push
    may then be in Redis twice, which the daemon answers as duplicate."""

    def __init__(self, cluster, prefix, count, every_s=0.01):
        super().__init__(daemon=True)
        self.cluster = cluster
        self.prefix = prefix
        self.count = count
        self.every_s = every_s
        self.acked = []
        self.pushed = []
        self.after = []         # pushed after the first error
        self.failed_over = False
        self.errors = 0
        self.stop_flag = False

    def run(self):
        r = self.cluster.client()
        i = 0
        while i < self.count and not self.stop_flag:
            ident = "%s%d" % (self.prefix, i)
            try:
                r.lpush("usergate:requests", '{"Identity": "%s"}' % ident)
                if ident not in self.pushed:
                    self.pushed.append(ident)
                if self.failed_over:
                    self.after.append(ident)
                # A promoted replica may have no replica of its own left
                # (kill -9): then WAIT only costs its timeout.
                if r.execute_command("WAIT", 1, 100 if self.failed_over else 1000) >= 1:
                    self.acked.append(ident)
                i += 1
                time.sleep(self.every_s)
            except (redislib.exceptions.ConnectionError,
                    redislib.exceptions.ReadOnlyError,
                    redislib.exceptions.ResponseError,
                    redislib.exceptions.TimeoutError):
                self.errors += 1
                self.failed_over = True
                time.sleep(0.1)
                port = self.cluster.primary_port()
                if port is not None:
                    r = self.cluster.client_for(port)


@pytest.fixture
def cluster(env, request):
    env.start_redis()
    env.start_twilio()
    c = Cluster(env)
    env.d = env.daemon(extra={"redis.sentinels": c.sentinels_conf(),
                              "redis.master_name": MASTER,
                              "redis.durable_replicas": getattr(request, "param", 0),
                              # Not used: the Sentinels name the primary.
                              "redis.port": "9"})
    env.d.wait_healthy()
    return c


def results_by_identity(r):
    out = {}
    for raw in r.lrange("usergate:results", 0, -1):
        res = decode(raw)
        out.setdefault(res.get("identity"), []).append(res["status"])
    return out


def wait_failover(c, old_port, what):
    wait_for(lambda: c.primary_port() not in (None, old_port), timeout=30 * SLOW,
             what=what)


def test_graceful_failover_answers_everything_once(cluster, env):
    c = cluster
    # Found through the Sentinels, not [redis] port; ROLE said master.
    s = env.d.stats()
    assert s["redis_role"] == "master"
    assert s["failovers"] == 0
    p = Producer(c, "g", 150)
    p.start()
    wait_for(lambda: len(p.acked) >= 40, timeout=20, what="40 pushes")
    old = c.primary_port()
    c.sentinels[0][1].execute_command("SENTINEL", "FAILOVER", MASTER)
    wait_failover(c, old, "the replica promoted")
    p.join(60 * SLOW)
    assert not p.is_alive()
    new = c.client()

    def all_answered():
        got = results_by_identity(new)
        return all(i in got for i in p.acked)
    wait_for(all_answered, timeout=40 * SLOW, what="every acknowledged request "
             "answered (%d of %d pushed)" % (len(p.acked), len(p.pushed)))
    got = results_by_identity(new)
    creates = env.twilio.stats()["creates_by_identity"]
    # Pushes between the promotion and the old primary's demotion went to
    # the old primary alone and are gone with its data, for any client;
    # WAIT told the producer so (not acknowledged).
    assert len(p.acked) >= 100, (len(p.acked), len(p.pushed))
    assert all(n == 1 for n in creates.values()), \
        {k: n for k, n in creates.items() if n != 1}
    assert set(got) <= set(p.pushed)
    for ident in p.acked:
        assert creates.get(ident) == 1, (ident, creates.get(ident))
        # Answered once; a push the producer repeated after an error is
        # in Redis twice and its second copy answered duplicate.
        real = [st for st in got[ident] if st != "duplicate"]
        assert len(real) == 1, (ident, got[ident])
        assert real[0] in ("created", "exists"), (ident, got[ident])
    assert new.llen("usergate:requests") == 0
    wait_for(lambda: new.llen("usergate:processing:ug") == 0, what="processing empty")
    s = env.d.stats()
    assert s["failovers"] >= 1
    assert s["redis_role"] == "master"
    assert env.d.status("health") == "ok"
    assert "redis primary moved" in env.d.log()


@pytest.mark.parametrize("cluster", [0, 1], indirect=True,
                         ids=["async", "durable_replicas"])
def test_hard_failover_loses_nothing_acked_and_creates_once(cluster, env):
    """kill -9 of the primary under load.  Without durable_replicas what is
    guaranteed is that no Identity is created twice at Twilio and that every
    push a replica acknowledged (WAIT) is answered; results written to the
    old primary and not yet replicated are lost with it, and their requests
    are done again (Twilio answers 409 to the second create).  With
    durable_replicas = 1 no request even reaches Twilio twice: its claim
    was on the replica before the call.  The promoted replica has no
    replica of its own until the old primary comes back (Sentinel makes it
    one): until then usergated waits."""
    c = cluster
    durable = env.d.config_sections()["redis"]["durable_replicas"] == "1"
    p = Producer(c, "h", 100)
    p.start()
    wait_for(lambda: len(p.acked) >= 40, timeout=20, what="40 pushes")
    old = c.primary_port()
    c.primary.proc.send_signal(signal.SIGKILL)
    c.primary.proc.wait()
    wait_failover(c, old, "the replica promoted")
    if durable:
        wait_for(lambda: env.d.status("health").startswith(
            "degraded: redis replicas behind: 0 of 1 replicas confirmed"),
            timeout=20 * SLOW, what="health: replicas behind")
        # Back, empty; Sentinel turns it into a replica of the new primary.
        c.primary.start()
    p.join(60 * SLOW)
    assert not p.is_alive()
    new = c.client()
    wait_for(lambda: env.d.status("health") == "ok", timeout=30 * SLOW,
             what="daemon healthy on the new primary")

    def settled():
        got = results_by_identity(new)
        return all(i in got for i in p.acked + p.after) and \
            new.llen("usergate:requests") == 0 and \
            new.llen("usergate:processing:ug") == 0
    wait_for(settled, timeout=40 * SLOW, what="every acknowledged request answered")
    tw = env.twilio.stats()
    creates = tw["creates_by_identity"]
    assert all(n == 1 for n in creates.values()), \
        {k: n for k, n in creates.items() if n != 1}
    if durable:
        asked = tw["create_requests_by_identity"]
        assert all(n == 1 for n in asked.values()), \
            {k: n for k, n in asked.items() if n != 1}
    got = results_by_identity(new)
    assert len(p.acked) >= 40 and len(p.after) >= 10, (len(p.acked), len(p.after))
    for ident in p.acked + p.after:
        assert any(st in ("created", "exists") for st in got[ident]), (ident, got[ident])
    s = env.d.stats()
    assert s["failovers"] >= 1
    assert s["redis_role"] == "master"


def test_no_primary_found_then_found(env):
    """Sentinels that do not know master_name: health says so, naming them,
    and the daemon keeps asking; it never falls back to [redis] host."""
    env.start_redis()
    env.start_twilio()
    port = free_port()
    conf = os.path.join(env.dir, "sentinel-x.conf")
    with open(conf, "w") as f:
        f.write("port %d\nbind 127.0.0.1\ndir %s\n" % (port, env.dir))
    p = subprocess.Popen(sentinel_argv(conf), stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    env.extra_procs.append(p)
    s = redislib.Redis(host="127.0.0.1", port=port)
    wait_for(lambda: _pings(s), what="sentinel up")
    dead = free_port()
    sentinels = "127.0.0.1:%d,127.0.0.1:%d" % (dead, port)
    d = env.daemon(extra={"redis.sentinels": sentinels, "redis.master_name": MASTER})
    want = "degraded: redis no primary found (sentinels %s)" % sentinels
    wait_for(lambda: d.status("health") == want, what="health: no primary")
    time.sleep(0.5)
    assert d.status("health") == want
    s.execute_command("SENTINEL", "MONITOR", MASTER, "127.0.0.1", env.redis.port, 1)
    d.wait_healthy()
    env.push({"Identity": "late"})
    assert env.wait_results(1)[0]["status"] == "created"


def _pings(r):
    try:
        return r.ping()
    except redislib.exceptions.ConnectionError:
        return False


def secret_file(env, name, secret):
    path = os.path.join(env.dir, name)
    with open(path, "w") as f:
        f.write(secret + "\n")
    os.chmod(path, 0o600)
    return path


def test_sentinel_password(env):
    """Sentinels with requirepass, a primary with its own: usergated gives
    each its password (sentinel_password_file, password_file), resolves
    and creates.  A wrong Sentinel password, or none, is no primary found
    because the Sentinels refused us; one line per outage, and neither
    password in the log."""
    env.start_redis(password="redis-secret-1")
    env.start_twilio()
    c = Cluster(env, nsentinels=1, replica=False, password="redis-secret-1",
                sentinel_password="sentinel-secret-2")
    keys = {"redis.sentinels": c.sentinels_conf(), "redis.master_name": MASTER,
            "redis.password_file":
                secret_file(env, "redis-pw", "redis-secret-1")}
    wrong = env.daemon(name="wrong", extra=dict(keys, **{
        "redis.sentinel_password_file":
            secret_file(env, "sentinel-wrong", "sentinel-secret-3")}))
    none = env.daemon(name="none", extra=keys)
    want = "degraded: redis no primary found (sentinels %s: auth refused)" % \
        c.sentinels_conf()
    for d in (wrong, none):
        wait_for(lambda: d.status("health") == want, what="health: " + want)
    # Retried with backoff: still one line each.
    time.sleep(2 * SLOW)
    for d, error in ((wrong, "WRONGPASS"), (none, "NOAUTH")):
        assert d.status("health") == want
        log = d.log()
        assert log.count("redis refuses us") == 1, log
        # The Sentinel's own words: refused password, or none given.
        assert 'error="sentinel %s: %s' % (c.sentinels_conf(), error) in log
        for secret in ("redis-secret-1", "sentinel-secret-2",
                       "sentinel-secret-3"):
            assert secret not in log
        assert d.stop() == 0
    d = env.daemon(extra=dict(keys, **{
        "redis.sentinel_password_file":
            secret_file(env, "sentinel-pw", "sentinel-secret-2")}))
    d.wait_healthy()
    assert d.stats()["redis_address"] == "127.0.0.1:%d" % env.redis.port
    env.push({"Identity": "behind-sentinel-auth"})
    assert env.wait_results(1)[0]["status"] == "created"
    assert d.stop() == 0
    for secret in ("redis-secret-1", "sentinel-secret-2"):
        assert secret not in d.log()


def test_tls_sentinels_and_graceful_failover(env, pki):
    """Primary, replica and Sentinels all TLS-only, replication too:
    [redis] tls_ca_file serves the Sentinels as it serves Redis (the one
    certificate names 127.0.0.1).  usergated resolves, creates, and
    follows a SENTINEL FAILOVER."""
    env.redis = Server(env.dir, tls=pki)
    # The primary is demoted to a replica of the new one: over TLS.
    env.r.config_set("tls-replication", "yes")
    env.start_twilio()
    c = Cluster(env, nsentinels=2, tls=pki)
    d = env.daemon(extra={"redis.sentinels": c.sentinels_conf(),
                          "redis.master_name": MASTER,
                          "redis.tls_ca_file": pki["ca"][0],
                          "redis.port": "9"})
    d.wait_healthy()
    s = d.stats()
    assert s["redis_tls"] is True and s["redis_role"] == "master"
    assert s["redis_address"] == "127.0.0.1:%d" % env.redis.port
    old = c.client()
    old.lpush("usergate:requests", '{"Identity": "tls-before"}')
    wait_for(lambda: results_by_identity(old).get("tls-before") == ["created"],
             what="created before the failover")
    c.sentinels[0][1].execute_command("SENTINEL", "FAILOVER", MASTER)
    wait_failover(c, env.redis.port, "the replica promoted")
    wait_for(lambda: d.stats()["redis_address"] ==
             "127.0.0.1:%d" % c.replica_port and
             d.status("health") == "ok", timeout=20 * SLOW,
             what="usergated on the new primary")
    new = c.client()
    new.lpush("usergate:requests", '{"Identity": "tls-after"}')
    wait_for(lambda: results_by_identity(new).get("tls-after") == ["created"],
             what="created after the failover")
    assert results_by_identity(new)["tls-before"] == ["created"]
    creates = env.twilio.stats()["creates_by_identity"]
    assert creates == {"tls-before": 1, "tls-after": 1}, creates
    s = d.stats()
    assert s["failovers"] >= 1 and s["redis_tls"] is True
    assert ('msg="redis primary moved (failover)" from=127.0.0.1:%d '
            'to=127.0.0.1:%d' % (env.redis.port, c.replica_port)) in d.log()


def test_demoted_primary_is_left_until_primary_again(env):
    """Without Sentinel: the server usergated uses becomes a replica under
    it (REPLICAOF).  The blocked BLMOVE ends with UNBLOCKED, a write meets
    READONLY; the link is dropped, ROLE then says slave and health says
    read-only replica until the server is a primary again, when the daemon
    goes on by itself."""
    env.start_redis()
    env.start_twilio()
    other = subprocess.Popen(
        ["redis-server", "--port", str(free_port()), "--bind", "127.0.0.1",
         "--save", "", "--appendonly", "no", "--dir", env.dir,
         "--logfile", os.path.join(env.dir, "other.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env.extra_procs.append(other)
    other_port = int(other.args[2])
    wait_for(lambda: _pings(redislib.Redis(host="127.0.0.1", port=other_port)),
             what="second redis-server")
    d = env.daemon()
    d.wait_healthy()
    env.push({"Identity": "before"})
    env.wait_results(1)
    env.r.replicaof("127.0.0.1", other_port)
    wait_for(lambda: d.status("health") == "degraded: redis read-only replica",
             what="health: read-only replica")
    assert d.stats()["redis_role"] == "replica"
    env.r.replicaof("NO", "ONE")
    d.wait_healthy()
    assert d.stats()["redis_role"] == "master"
    env.push({"Identity": "after"})
    # What the server held as a replica depends on how far its sync got.
    wait_for(lambda: [r for r in env.results() if r["identity"] == "after"],
             what="the request after answered")
    assert "redis is not the primary now" in d.log()
