#!/usr/bin/python3
"""Push N create-user requests (msgpack maps, or JSON with --json) onto a
Redis list, the way a producer does: LPUSH, so that usergated (which takes
from the right) sees them first in, first out.

Pipelined and variadic (up to --batch values per LPUSH): a million requests
go in within seconds, so that pushing never limits what is measured.

usage: push.py PORT N [--key K] [--distinct D] [--json] [--prefix P] [--batch B]

Request k (0 <= k < N) is for Identity "{prefix}{k % D}@example.com" when
--distinct D is given, else "{prefix}{k}@example.com", with a FriendlyName and
a small Attributes object, like the kit's push.py (../shared/bench/push.py),
from which this copy differs only by the variadic LPUSH.  Importable:
push(port, n, ...) returns the number pushed.
"""
import argparse
import json

import msgpack
import redis


def request(k, prefix="user"):
    return {"Identity": f"{prefix}{k}@example.com", "FriendlyName": f"User {k}",
            "Attributes": json.dumps({"n": k})}


def push(port, n, key="usergate:requests", distinct=0, as_json=False, prefix="user",
         batch=1000, host="127.0.0.1"):
    r = redis.Redis(host=host, port=port)
    pipe = r.pipeline(transaction=False)
    values = []
    queued = 0
    for i in range(n):
        m = request(i % distinct if distinct else i, prefix)
        values.append(json.dumps(m).encode() if as_json else msgpack.packb(m))
        if len(values) == batch:
            pipe.lpush(key, *values)
            values = []
            queued += 1
            if queued == 20:
                pipe.execute()
                queued = 0
    if values:
        pipe.lpush(key, *values)
    pipe.execute()
    r.close()
    return n


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("port", type=int)
    ap.add_argument("n", type=int)
    ap.add_argument("--key", default="usergate:requests")
    ap.add_argument("--distinct", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--prefix", default="user")
    ap.add_argument("--batch", type=int, default=1000, help="values per LPUSH")
    a = ap.parse_args()
    push(a.port, a.n, a.key, a.distinct, a.json, a.prefix, max(1, a.batch))


if __name__ == "__main__":
    main()
