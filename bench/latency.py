#!/usr/bin/python3
"""Steady-rate latency probe: LPUSHes create-user requests at a fixed rate
and measures, for each, the time from its LPUSH to its result on the
`usergate:events` channel.

Each request carries RequestId "lat-{run}-{seq}"; the send time is kept on
this side (time.monotonic_ns just before the LPUSH), so the figure is the
real LPUSH -> PUBLISH delay as a producer sees it, including both Redis hops
and this script's own overhead (~0.05 ms; measure it with --self-test).
Requests are sent on an absolute schedule (t0 + i/rate): a late send does
not shift the ones after it, and is timed from when it really left.

usage: latency.py PORT [--rate R] [--seconds S] [--prefix P] [--self-test]
prints one JSON object: sent, received, p50_ms, p90_ms, p99_ms, max_ms.
"""
import argparse
import json
import os
import threading
import time

import msgpack
import redis


def percentile(sorted_values, q):
    if not sorted_values:
        return None
    i = min(len(sorted_values) - 1, max(0, int(round(q / 100.0 * len(sorted_values))) - 1))
    return sorted_values[i]


def measure(port, rate=1000, seconds=10.0, prefix=None, channel="usergate:events",
            key="usergate:requests", self_test=False, tail=5.0):
    """Returns a dict of figures; self_test publishes the event itself (no
    usergated) to show what the probe alone adds."""
    run = prefix or "lat%d" % os.getpid()
    total = int(rate * seconds)
    sent = [0] * total
    got = {}
    sub = redis.Redis(port=port)
    ps = sub.pubsub(ignore_subscribe_messages=True)
    ps.subscribe(channel)
    # Wait for the subscription to be confirmed before the first send.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        ps.get_message(timeout=0.1)
        if ps.subscribed:
            break
    stop = threading.Event()
    tag = ("lat-%s-" % run).encode()

    def receive():
        while not stop.is_set():
            try:
                m = ps.get_message(timeout=0.1)
            except (redis.exceptions.RedisError, OSError, ValueError):
                return  # Redis went away (interrupted run): stop quietly
            if m is None or m.get("type") != "message":
                continue
            now = time.monotonic_ns()
            data = m["data"]
            try:
                v = json.loads(data) if data[:1] == b"{" else msgpack.unpackb(data, raw=False)
                rid = v.get("request_id", "")
            except Exception:
                continue
            rid = rid.encode() if isinstance(rid, str) else rid
            if rid.startswith(tag):
                got[int(rid[len(tag):])] = now

    th = threading.Thread(target=receive, daemon=True)
    th.start()
    pub = redis.Redis(port=port)
    interval = 1e9 / rate
    t0 = time.monotonic_ns() + 20_000_000
    for i in range(total):
        due = t0 + int(i * interval)
        while True:
            d = due - time.monotonic_ns()
            if d <= 0:
                break
            time.sleep(d / 1e9 if d > 2_000_000 else d / 2e9)
        rid = "lat-%s-%d" % (run, i)
        msg = msgpack.packb({"Identity": "%s-%d@example.com" % (run, i), "RequestId": rid})
        sent[i] = time.monotonic_ns()
        if self_test:
            pub.publish(channel, msgpack.packb({"request_id": rid, "status": "created"}))
        else:
            pub.lpush(key, msg)
    end = time.monotonic() + tail
    while len(got) < total and time.monotonic() < end:
        time.sleep(0.01)
    stop.set()
    th.join(2)
    ps.close()
    lat = sorted((got[i] - sent[i]) / 1e6 for i in got if 0 <= i < total)
    achieved = total / ((sent[-1] - sent[0]) / 1e9) if total > 1 else 0
    return {"sent": total, "received": len(lat), "rate_achieved": round(achieved, 1),
            "p50_ms": percentile(lat, 50), "p90_ms": percentile(lat, 90),
            "p99_ms": percentile(lat, 99), "max_ms": lat[-1] if lat else None}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("port", type=int)
    ap.add_argument("--rate", type=float, default=1000)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--prefix")
    ap.add_argument("--self-test", action="store_true")
    a = ap.parse_args()
    print(json.dumps(measure(a.port, a.rate, a.seconds, a.prefix, self_test=a.self_test)))


if __name__ == "__main__":
    main()
