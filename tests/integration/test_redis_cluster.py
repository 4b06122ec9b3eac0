"""Redis Cluster (issue 13, item 6): three primaries and three replicas of
Debian's redis-server on loopback, made a cluster by redis-cli.  With a hash
tag in [redis] prefix every key of usergated is in one slot; the daemon is
pointed at a node that does not serve that slot and follows MOVED to the
one that does, and again after a primary failover (CLUSTER FAILOVER on that
node's replica, or kill -9 of the node).  A prefix without a hash tag is refused with a clear
health reason rather than half-working."""
import os
import random
import shutil
import signal
import socket
import subprocess
import time

import pytest
import redis as redislib

from conftest import wait_for, decode, SLOW

PREFIX = "{usergate}:"
REPLY = "{usergate}reply:"

pytestmark = pytest.mark.skipif(shutil.which("redis-cli") is None,
                                reason="no redis-cli")


def free_cluster_port():
    """A free port whose cluster bus (port + 10000) is free too: the
    kernel's ephemeral ports are mostly above 55535, where it cannot be."""
    while True:
        port = random.randrange(20000, 30000)
        try:
            for p in (port, port + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return port


class RedisCluster:
    """Six redis-server with cluster-enabled, each in a directory of its
    own (nodes.conf), joined by redis-cli --cluster create."""

    def __init__(self, env):
        self.ports = [free_cluster_port() for _ in range(6)]
        self.procs = {}
        self.dead = set()
        for port in self.ports:
            d = os.path.join(env.dir, "node-%d" % port)
            os.makedirs(d)
            p = subprocess.Popen(
                ["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                 "--cluster-enabled", "yes", "--cluster-node-timeout", "2000",
                 "--save", "", "--appendonly", "no", "--dir", d,
                 "--logfile", os.path.join(d, "redis.log")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            env.extra_procs.append(p)
            self.procs[port] = p
            wait_for(lambda: self._ping(port), what="cluster node %d" % port)
        subprocess.run(["redis-cli", "--cluster", "create"] +
                       ["127.0.0.1:%d" % p for p in self.ports] +
                       ["--cluster-replicas", "1", "--cluster-yes"],
                       check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=60 * SLOW)
        self.slot = self.node(self.ports[0]).execute_command(
            "CLUSTER", "KEYSLOT", PREFIX)
        wait_for(self._ok, timeout=30 * SLOW, what="cluster state ok")

    @staticmethod
    def node(port):
        return redislib.Redis(host="127.0.0.1", port=port)

    def _ping(self, port):
        try:
            return self.node(port).ping()
        except redislib.exceptions.ConnectionError:
            return False

    def _ok(self):
        """Every node sees the cluster ok, each primary with its replica,
        and agrees on the slot's owner."""
        owners = set()
        for p in self.ports:
            info = self.node(p).execute_command("CLUSTER", "INFO").decode()
            if "cluster_state:ok" not in info or any(
                    len(s) < 4 for s in self.node(p).execute_command(
                        "CLUSTER", "SLOTS")):
                return False
            owners.add(self.owner(p))
        return len(owners) == 1

    def owner(self, ask=None):
        """The port of the primary serving our slot, as node ask sees it."""
        ask = ask or [p for p in self.ports if p not in self.dead][0]
        for lo, hi, primary, *_ in self.node(ask) \
                .execute_command("CLUSTER", "SLOTS"):
            if lo <= self.slot <= hi:
                return int(primary[1])
        return None

    def replica_of(self, port):
        """The port of a replica of primary port."""
        for lo, hi, primary, *replicas in self.node(port) \
                .execute_command("CLUSTER", "SLOTS"):
            if int(primary[1]) == port:
                return int(replicas[0][1])
        return None

    def other_primary(self):
        """A primary that does not serve our slot."""
        owner = self.owner()
        for lo, hi, primary, *_ in self.node(owner) \
                .execute_command("CLUSTER", "SLOTS"):
            if int(primary[1]) != owner:
                return int(primary[1])
        return None


    def kill(self, port):
        self.dead.add(port)
        self.procs[port].send_signal(signal.SIGKILL)
        self.procs[port].wait()

    def promoted(self, replica):
        """Every live node names replica as the slot's primary."""
        try:
            return all(self.owner(p) == replica for p in self.ports
                       if p not in self.dead)
        except redislib.exceptions.ConnectionError:
            return False


@pytest.fixture
def cluster(env):
    env.start_redis()           # the fixture's own; unused by the daemon
    env.start_twilio()
    return RedisCluster(env)


def push(c, n, tag):
    r = c.node(c.owner())
    for i in range(n):
        r.lpush(PREFIX + "requests", '{"Identity": "%s%d", "ReplyTo": "%s%s%d"}'
                % (tag, i, REPLY, tag, i))


def answered(c, tag, n):
    r = c.node(c.owner())
    got = [decode(x) for x in r.lrange(PREFIX + "results", 0, -1)]
    return [x for x in got if x.get("identity", "").startswith(tag)] \
        if sum(1 for x in got if x.get("identity", "").startswith(tag)) >= n \
        else None


@pytest.mark.parametrize("how", ["graceful", "kill"])
def test_cluster_moved_followed_and_failover_survived(cluster, env, how):
    """The configured node is not the slot's: MOVED is followed.  Then the
    slot's primary fails over: gracefully (CLUSTER FAILOVER on its
    replica), where the old node answers MOVED to the new one; or by
    kill -9, where the cluster promotes the replica after
    cluster-node-timeout and usergated, finding the node it was on gone,
    asks the configured address again and is sent on."""
    c = cluster
    env.d = env.daemon(extra={"redis.port": c.other_primary(),
                              "redis.prefix": PREFIX,
                              "results.reply_prefix": REPLY})
    env.d.wait_healthy(timeout=30 * SLOW)
    push(c, 20, "a")
    got = wait_for(lambda: answered(c, "a", 20), timeout=30 * SLOW,
                   what="20 creates answered through the slot's node")
    assert sorted(x["status"] for x in got) == ["created"] * 20
    r = c.node(c.owner())
    for i in range(20):
        assert r.llen(REPLY + "a%d" % i) == 1
    s = env.d.stats()
    # The configured node sent us on with MOVED.
    assert s["redis_address"] == "127.0.0.1:%d" % c.owner()
    assert s["redis_role"] == "master"
    assert "redis cluster moved our slot" in env.d.log()
    # Finding the slot's node is no failover.
    assert s["failovers"] == 0

    old = c.owner()
    replica = c.replica_of(old)
    if how == "kill":
        c.kill(old)
    else:
        c.node(replica).execute_command("CLUSTER", "FAILOVER")
    wait_for(lambda: c.promoted(replica), timeout=30 * SLOW,
             what="the replica promoted, as every live node sees")
    push(c, 20, "b")
    got = wait_for(lambda: answered(c, "b", 20), timeout=30 * SLOW,
                   what="20 creates answered after the failover")
    assert sorted(x["status"] for x in got) == ["created"] * 20
    creates = env.twilio.stats()["creates_by_identity"]
    assert len(creates) == 40 and all(n == 1 for n in creates.values())
    wait_for(lambda: env.d.stats()["redis_address"] == "127.0.0.1:%d" % replica,
             timeout=10 * SLOW, what="the link on the promoted node")
    assert env.d.status("health") == "ok"
    assert env.d.stats()["failovers"] == 1
    if how == "kill":
        assert "asking the configured address" in env.d.log()


def test_cluster_refuses_prefix_without_hash_tag(cluster, env):
    c = cluster
    env.d = env.daemon(extra={"redis.port": c.owner()})
    wait_for(lambda: env.d.status("health").startswith(
        "degraded: redis cluster needs a hash tag in [redis] prefix"),
        timeout=20 * SLOW, what="health: needs a hash tag")
    time.sleep(0.5)
    assert env.d.proc.poll() is None
