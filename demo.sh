#!/bin/sh
# A local end-to-end demo on a fresh Debian 12 machine: installs what is
# missing, builds, starts a private redis-server and the project's fake
# Twilio, runs usergated against them, pushes users through Redis (one of
# them twice, one invalid) and one through `usergatectl create`, prints the
# results and the daemon's stats, and stops everything it started.
set -eu
cd "$(dirname "$0")"
top=$(pwd)
./tools/deps.sh
[ -x configure ] || autoreconf -fi >/dev/null
mkdir -p build
[ -f build/Makefile ] || (cd build && "$top/configure" -q)
make -s -C build -j"$(nproc)" all tests/fake-twilio

tmp=$(mktemp -d /tmp/usergate-demo.XXXXXX)
pids=""
cleanup() {
	for p in $pids; do kill "$p" 2>/dev/null || true; done
	for p in $pids; do while kill -0 "$p" 2>/dev/null; do sleep 0.1; done; done
	rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

redis-server --port 0 --unixsocket "$tmp/redis.sock" --unixsocketperm 700 \
	--save '' --appendonly no --dir "$tmp" --logfile "$tmp/redis.log" &
pids="$pids $!"
r() { redis-cli -s "$tmp/redis.sock" "$@"; }
until r ping >/dev/null 2>&1; do sleep 0.05; done

build/tests/fake-twilio --port 0 --port-file "$tmp/twilio.port" \
	--user SK00000000000000000000000000000000 --password demo-secret >/dev/null 2>&1 &
pids="$pids $!"
until [ -s "$tmp/twilio.port" ]; do sleep 0.05; done

printf 'demo-secret\n' > "$tmp/api-secret"
chmod 600 "$tmp/api-secret"
cat > "$tmp/usergate.conf" <<CONF
[twilio]
base_url = http://127.0.0.1:$(cat "$tmp/twilio.port")
api_key = SK00000000000000000000000000000000
api_secret_file = $tmp/api-secret
[redis]
unix_socket = $tmp/redis.sock
instance_id = demo
[results]
format = json
[socket]
path = $tmp/usergate.sock
[status]
path = $tmp/status.sock
CONF
build/src/usergated -c "$tmp/usergate.conf" 2>"$tmp/usergated.log" &
pids="$pids $!"
ctl() { build/src/usergatectl -s "$tmp/status.sock" -S "$tmp/usergate.sock" "$@"; }
until ctl health >/dev/null 2>&1; do sleep 0.05; done

echo "== pushing four requests through Redis (alice twice, one invalid)"
r lpush usergate:requests \
	'{"Identity":"alice@example.com","FriendlyName":"Alice"}' \
	'{"Identity":"bob@example.com","Attributes":{"team":"blue"}}' \
	'{"Identity":"alice@example.com","RequestId":"alice-again"}' \
	'{"Identity":"US0123456789abcdef0123456789abcdef"}' >/dev/null
until [ "$(r llen usergate:results)" -ge 4 ]; do sleep 0.05; done
echo "== results (usergate:results, oldest first)"
r lrange usergate:results 0 -1 | tac | jq -c '{status, identity, request_id, sid: .user.sid, error}'

echo "== one request through the request socket: usergatectl create"
ctl create carol@example.com --friendly-name Carol | jq -c '{status, identity, sid: .user.sid, attempts, source}'

echo "== usergatectl show stats"
ctl show stats | jq .
