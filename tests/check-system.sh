#!/bin/sh
# check-system.sh: the system test (issue 14).  The built .deb in a minimal
# Debian 12 booted with systemd as PID 1 (systemd-nspawn -b), set up by
# running the operator's commands as the docs print them, then checked as an
# operator would: ./check.sh runs it after the Debian package step.
#
#  1. The base tree (debootstrap --variant=minbase bookworm) is cached in
#     $USERGATE_SYSTEM_CACHE/bookworm (default /var/cache/usergate-min), and
#     next to it a "prepared" copy with systemd, dbus, redis-server and the
#     .deb's dependencies, named after a hash of that package list.  Each
#     run boots a throw-away copy of the prepared tree, with a network of
#     its own (loopback only: nothing is downloaded once it runs).
#  2. The commands are taken from the docs, so that a wrong doc fails:
#     docs/operations.md's blocks marked <!-- system-test: NAME --> (the
#     install, the operator group, the drop-ins for a Redis password and
#     for an auth token instead of an API key) and the
#     indented commands of debian/README.Debian's numbered steps (Redis, the
#     secret typed with read -rs, the check, the start, the group).  Only
#     the edit of usergate.conf, which the docs leave to the operator, is
#     done here (api_key, base_url of a fake Twilio, results as JSON).
#  3. Checks: the unit waits for the secret (start condition); Type=notify
#     (systemctl start returns once usergatectl health is ok, STATUS= set);
#     creates through Redis with ReplyTo against tests/fake-twilio (run from
#     the host in the container's network namespace, checking the Basic
#     auth); usergatectl as root, as members of the group, refused for
#     another user with the group named; systemctl reload applying a good
#     file and failing, visibly, on a bad one while the service serves on;
#     systemd-analyze security <= 2.0; the watchdog restarting a stopped
#     daemon with nothing lost; a stop with requests in flight that ends
#     cleanly (Result=success, exit 0) within TimeoutStopSec and loses
#     nothing; a switch to an account SID and auth token; an upgrade (by
#     operations.md's command, to the same package with Version: raised)
#     that keeps the modified usergate.conf byte for byte and restarts the
#     service with nothing lost; `apt remove usergate` stopping it and
#     keeping /etc/usergate and the user; `apt purge usergate` removing
#     /etc/usergate, the user and group (the drop-ins, the operator's, stay);
#     the journal's priorities against the logfmt level=, and no secret
#     (Twilio API secret, auth token, Redis password) anywhere in the
#     journal.
#
# It takes about 30 s with warm caches.  The first run with an empty cache
# runs debootstrap and apt-get in the tree: 2.5 minutes in all on a good
# link to deb.debian.org (2 of them for debootstrap).
#
# Environment: USERGATE_DEB, the .deb to test (default: build/deb/, which
# ./check.sh fills through tests/check-deb.sh's DEB_KEEP_DIR; otherwise
# check-deb.sh is run to build one); top_builddir, for tests/fake-twilio.
#
# Works with or without systemd as the host's PID 1: systemd-nspawn runs in
# a mount namespace of its own with a tmpfs on /run/systemd/nspawn, does
# not register with machined, and commands reach the container through
# nsenter on its PID 1.  Everything started here is stopped by pid at the
# end, on failure too.
#
# Exit status: 0 pass, 1 fail, 77 skip (not root, a tool missing, or the
# container cannot boot here).

case $0 in
*/*) here=${0%/*} ;;
*) here=. ;;
esac
top_srcdir=${top_srcdir:-$(cd "$here/.." && pwd)}
top_builddir=${top_builddir:-$top_srcdir/build}
export top_srcdir top_builddir
cache=${USERGATE_SYSTEM_CACHE:-/var/cache/usergate-min}
mirror=${USERGATE_SYSTEM_MIRROR:-http://deb.debian.org/debian}
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH
export PATH
started=$(date +%s)

skip() {
	echo "SKIP: $*"
	exit 77
}
[ "$(id -u)" -eq 0 ] || skip "not root (systemd-nspawn needs root)"
for tool in systemd-nspawn debootstrap unshare nsenter flock jq curl redis-cli \
    dpkg-deb; do
	command -v $tool >/dev/null 2>&1 ||
	    skip "$tool is not installed (tools/deps.sh installs it)"
done
fake=$top_builddir/tests/fake-twilio
if [ ! -x "$fake" ]; then
	make -s -C "$top_builddir" tests/fake-twilio >/dev/null 2>&1 ||
	    skip "no $fake and it cannot be built"
fi

tmp=$(mktemp -d /var/tmp/check-system.XXXXXX) || exit 1
nspawn=
leader=
fakepid=
cleanup() {
	[ -n "$fakepid" ] && kill "$fakepid" 2>/dev/null
	if [ -n "$nspawn" ] && kill -0 "$nspawn" 2>/dev/null; then
		# SIGTERM makes systemd-nspawn power the container off; the
		# tree is thrown away, so after 5 s its PID 1 is killed, which
		# ends every process of the container, and nspawn with it.
		kill "$nspawn" 2>/dev/null
		i=0
		while kill -0 "$nspawn" 2>/dev/null && [ $i -lt 50 ]; do
			sleep 0.1
			i=$((i + 1))
		done
		[ -n "$leader" ] && kill -9 "$leader" 2>/dev/null
		wait "$nspawn" 2>/dev/null
	fi
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 1' HUP INT TERM

fail() {
	echo "FAIL: $*"
	if [ -n "$leader" ]; then
		echo "---- systemctl status usergated"
		ct systemctl --no-pager -l status usergated 2>&1 |
		    sed 's/^/  | /'
		echo "---- journalctl -u usergated (last 30)"
		ct journalctl --no-pager -u usergated -n 30 2>&1 |
		    sed 's/^/  | /'
	fi
	exit 1
}
ok() {
	echo "ok: $*"
}

# ---- the .deb
deb=${USERGATE_DEB:-}
if [ -z "$deb" ]; then
	for f in "$top_builddir"/deb/usergate_*_amd64.deb; do
		[ -f "$f" ] && deb=$f
	done
fi
if [ -z "$deb" ]; then
	echo "building the .deb (tests/check-deb.sh)"
	DEB_KEEP_DIR=$tmp/deb \
	    "$top_srcdir/tests/check-deb.sh" >"$tmp/deb.log" 2>&1
	rc=$?
	[ $rc -eq 77 ] &&
	    skip "cannot build the .deb: $(tail -n 1 "$tmp/deb.log")"
	[ $rc -eq 0 ] || { cat "$tmp/deb.log"; fail "tests/check-deb.sh"; }
	deb=$(ls "$tmp"/deb/usergate_*_amd64.deb)
fi
[ -f "$deb" ] || fail "no .deb at $deb"
echo "package: ${deb##*/}"

# On a host booted with systemd, nspawn wants a cgroup of its own that it
# may manage: a scope with Delegate=yes (--keep-unit then uses it).
# Without systemd as PID 1 (this script's first home) there is none to ask.
scope=
if [ -d /run/systemd/system ] && command -v systemd-run >/dev/null 2>&1; then
	scope="systemd-run -q --scope -p Delegate=yes"
fi

# Runs a command in a tree without booting it (to prepare it).
nspawn_run() {	# dir, command...
	d=$1
	shift
	$scope unshare -m --propagation private sh -c '
	    mkdir -p /run/systemd/nspawn &&
	    mount -t tmpfs tmpfs /run/systemd/nspawn || exit 1
	    d=$1; shift
	    exec systemd-nspawn -q --register=no --keep-unit -D "$d" \
	        -E DEBIAN_FRONTEND=noninteractive --pipe "$@"' sh "$d" "$@"
}

# ---- 1. the cached trees, made and copied by one run at a time
mkdir -p "$cache" || exit 1
exec 9>"$cache/.lock"
flock 9
base=$cache/bookworm
if [ ! -x "$base/usr/bin/apt-get" ]; then
	echo "debootstrap --variant=minbase bookworm $base (once)"
	rm -rf "$base.new" &&
	    debootstrap --variant=minbase bookworm "$base.new" "$mirror" \
	    >"$tmp/debootstrap.log" 2>&1 ||
	    { tail -n 20 "$tmp/debootstrap.log"; skip "debootstrap failed"; }
	rm -rf "$base" && mv "$base.new" "$base"
fi
# The package list: what the container runs, and the .deb's dependencies
# (first of alternatives, without versions).
pkgs=$( { echo systemd systemd-sysv dbus redis-server; \
    dpkg-deb -f "$deb" Depends | tr ',' '\n' | sed 's/|.*//; s/(.*)//'; } |
    tr ' ' '\n' | grep . | sort -u | tr '\n' ' ')
key=$(echo "v1 $pkgs" | sha256sum | cut -c1-16)
prepared=$cache/prepared-$key
if [ ! -x "$prepared/lib/systemd/systemd" ]; then
	echo "preparing $prepared: apt-get install $pkgs"
	# Older prepared trees go; the base stays.
	rm -rf "$cache"/prepared-* && cp -a "$base" "$prepared.new" || exit 1
	cp /etc/resolv.conf "$prepared.new/etc/resolv.conf"
	# No daemon is started by the packages' scripts in an unbooted tree.
	printf '#!/bin/sh\nexit 101\n' >"$prepared.new/usr/sbin/policy-rc.d"
	chmod 755 "$prepared.new/usr/sbin/policy-rc.d"
	# shellcheck disable=SC2086
	nspawn_run "$prepared.new" sh -c 'apt-get update -qq &&
	    apt-get install -y -qq --no-install-recommends "$@" &&
	    apt-get clean' sh $pkgs >"$tmp/prepare.log" 2>&1 ||
	    { tail -n 30 "$tmp/prepare.log"; fail "apt-get in $prepared.new"; }
	rm -f "$prepared.new/usr/sbin/policy-rc.d"
	mv "$prepared.new" "$prepared"
fi

# ---- 2. boot a copy
root=$tmp/root
cp -a "$prepared" "$root" || fail "cp -a $prepared"
flock -u 9
exec 9>&-
echo "container-$key" >"$root/etc/hostname"
cp "$deb" "$root/root/"
# Booted with a network of its own, loopback only: its Redis and the fake
# Twilio (started below in that namespace) clash with nothing on the host.
$scope unshare -m --propagation private sh -c '
    mkdir -p /run/systemd/nspawn && mount -t tmpfs tmpfs /run/systemd/nspawn ||
        exit 1
    exec systemd-nspawn -q -b --register=no --keep-unit --private-network \
        -D "$1"' sh "$root" </dev/null >"$tmp/console.log" 2>&1 &
nspawn=$!
# The container's systemd is systemd-nspawn's child.
i=0
while [ -z "$leader" ] && [ $i -lt 200 ]; do
	kill -0 "$nspawn" 2>/dev/null || break
	for c in $(cat /proc/"$nspawn"/task/*/children 2>/dev/null); do
		[ "$(cat /proc/"$c"/comm 2>/dev/null)" = systemd ] && leader=$c
	done
	[ -n "$leader" ] || sleep 0.1
	i=$((i + 1))
done
if [ -z "$leader" ]; then
	tail -n 20 "$tmp/console.log"
	skip "cannot boot a container here (systemd-nspawn -b, output above)"
fi

ct() {	# a command in the container, as root, with a clean environment
	timeout 120 nsenter -t "$leader" -a env -i \
	    PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
	    TERM=dumb "$@"
}
# is-system-running --wait needs systemd's bus to be there already.
i=0
while ! ct test -S /run/systemd/private && [ $i -lt 300 ]; do
	sleep 0.1
	i=$((i + 1))
done
state=$(ct systemctl is-system-running --wait 2>&1)
case $state in
running) ;;
degraded)
	echo "note: the container's system is degraded:"
	ct systemctl --no-pager --failed | sed 's/^/  | /'
	;;
*)
	tail -n 20 "$tmp/console.log"
	skip "the container did not boot (is-system-running: $state)"
	;;
esac
ok "Debian $(cat "$root/etc/debian_version") booted, systemd as PID 1" \
    "($(($(date +%s) - started)) s since the start)"

# ---- 3. the commands of the docs
ops=$top_srcdir/docs/operations.md
readme=$top_srcdir/debian/README.Debian
doc_block() {	# name: the fenced block after <!-- system-test: name -->
	awk -v m="<!-- system-test: $1 -->" '
	    $0 == m { found = 1; next }
	    found == 1 && /^```/ { found = 2; next }
	    found == 2 && /^```/ { exit }
	    found == 2 { print }' "$ops"
}
# README.Debian: the commands of "After the installation" are the lines
# indented by seven spaces, one command a line.
grep -q '^After the installation, as root:' "$readme" ||
    fail "README.Debian: no 'After the installation, as root:'"
sed -n '/^After the installation, as root:/,/^Local changes/p' "$readme" |
    sed -n 's/^       \([^ ].*\)/\1/p' >"$tmp/readme.cmds"

run_doc() {	# what, file of commands (a bash script run in /root)
	cp "$2" "$root/root/doc.sh"
	echo "running the commands of $1:"
	sed 's/^/  $ /' "$root/root/doc.sh"
	if ! ct bash -c 'cd /root && bash -e doc.sh' \
	    <"${doc_stdin:-/dev/null}" >"$tmp/doc.out" 2>&1; then
		sed 's/^/  | /' "$tmp/doc.out"
		fail "the commands of $1 (output above)"
	fi
}

doc_block install >"$tmp/cmds"
[ -s "$tmp/cmds" ] || fail "operations.md: no block marked system-test: install"
run_doc "operations.md, install" "$tmp/cmds"
ct systemctl is-enabled usergated >/dev/null ||
    fail "usergated.service is not enabled after the install"
ct getent group usergate >/dev/null ||
    fail "no group usergate after the install"
ct systemctl --no-pager status usergated >"$tmp/status" 2>&1
if grep -q 'ConditionPathExists=|/etc/usergate/twilio-api-secret was not met' \
    "$tmp/status" && ! ct systemctl is-failed -q usergated; then
	ok "installed, enabled, waiting for the secret (start condition)"
else
	sed 's/^/  | /' "$tmp/status"
	fail "systemctl status does not say the unit waits for the secret"
fi

# The operator's edit of usergate.conf (README.Debian step 2).
twport=$tmp/fake.port
api_key=SK0123456789abcdef0123456789abcdef
api_secret=sys-api-secret-$$-$(date +%N)
redis_password=sys-redis-pw-$$-$(date +%N)
nsenter -t "$leader" -n "$fake" --port 0 --port-file "$twport" \
    --user "$api_key" --password "$api_secret" >"$tmp/fake.log" 2>&1 &
fakepid=$!
i=0
while [ ! -s "$twport" ] && [ $i -lt 100 ]; do
	sleep 0.1
	i=$((i + 1))
done
[ -s "$twport" ] || fail "fake-twilio did not start: $(cat "$tmp/fake.log")"
twurl=http://127.0.0.1:$(cat "$twport")
conf=$root/etc/usergate/usergate.conf
set_key() {	# section key value: as an operator would edit usergate.conf
	awk -v s="[$1]" -v k="$2" -v v="$3" '
	    /^\[/ { in_s = ($0 == s) }
	    in_s && $0 ~ "^" k " *=" { print k " = " v; next }
	    { print }' "$conf" >"$conf.new" && mv "$conf.new" "$conf"
	grep -q "^$2 = $3\$" "$conf" ||
	    fail "cannot set [$1] $2 in usergate.conf"
}
set_key twilio api_key "$api_key"
set_key twilio base_url "$twurl"
set_key results format json
set_key twilio rate_limit 0

# Redis with a password (operations.md section 2): requirepass in Redis,
# the secret typed as README.Debian types the Twilio one, the drop-in.
echo "requirepass $redis_password" >>"$root/etc/redis/redis.conf"
ct systemctl restart redis-server || fail "restart redis-server"
grep 'read -rs secret' "$tmp/readme.cmds" |
    sed 's/twilio-api-secret/redis-password/' >"$tmp/cmds"
printf '%s\n' "$redis_password" >"$tmp/stdin"
doc_stdin=$tmp/stdin run_doc "README.Debian step 3, for the Redis password" \
    "$tmp/cmds"
[ "$(cat "$root/etc/usergate/redis-password")" = "$redis_password" ] ||
    fail "/etc/usergate/redis-password does not hold the password"
doc_block redis-password >"$tmp/cmds"
grep -q '^\[Service\]' "$tmp/cmds" ||
    fail "operations.md: no [Service] block marked system-test: redis-password"
mkdir -p "$root/etc/systemd/system/usergated.service.d"
cp "$tmp/cmds" "$root/etc/systemd/system/usergated.service.d/override.conf"
echo "drop-in of operations.md section 2 (override.conf):"
sed 's/^/  | /' "$tmp/cmds"
ct systemctl daemon-reload || fail "daemon-reload"

# README.Debian, steps 1 to 5, one command at a time with checks between.
ct useradd -m alice && ct useradd -m bob || fail "useradd"
n=0
while IFS= read -r cmd <&3; do
	n=$((n + 1))
	printf '%s\n' "$api_secret" >"$tmp/stdin"
	printf '%s\n' "$cmd" >"$tmp/cmds"
	doc_stdin=$tmp/stdin run_doc "README.Debian ($n)" "$tmp/cmds"
	case $cmd in
	"systemctl start usergated")
		ct systemctl show -p ActiveState -p SubState -p StatusText \
		    -p MainPID usergated >"$tmp/show"
		ct usergatectl health >"$tmp/health" 2>&1
		grep -qx ActiveState=active "$tmp/show" &&
		    grep -qx ok "$tmp/health" ||
		    { cat "$tmp/show" "$tmp/health"
		    fail "not ready when systemctl start returned"; }
		st=$(sed -n 's/^StatusText=//p' "$tmp/show")
		case $st in
		"" | *-1*) fail "STATUS= right after the start: '$st'" ;;
		esac
		ok "Type=notify: active and healthy when systemctl start" \
		    "returns; STATUS=$st"
		;;
	"usergatectl health")
		grep -qx ok "$tmp/doc.out" ||
		    fail "usergatectl health: $(cat "$tmp/doc.out")"
		;;
	esac
done 3<"$tmp/readme.cmds"
[ $n -ge 5 ] || fail "README.Debian: only $n commands found"
ct systemctl is-active -q usergated || fail "usergated is not active"
grep -q 'usermod -aG usergate alice' "$tmp/readme.cmds" ||
    fail "README.Debian does not add alice to the group"
doc_block group >"$tmp/cmds"
grep -q usermod "$tmp/cmds" ||
    fail "operations.md: no usermod block marked system-test: group"
ct useradd -m myapp || fail "useradd myapp"
run_doc "operations.md, the group" "$tmp/cmds"

# ---- 4. usergatectl for root, the group, and no one else
for u in alice myapp; do
	out=$(ct runuser -u $u -- usergatectl health 2>&1)
	[ "$out" = ok ] || fail "usergatectl health as $u (in the group): $out"
done
ok "usergatectl health as root, alice and myapp (group usergate)"
if out=$(ct runuser -u bob -- usergatectl health 2>&1); then
	fail "usergatectl works for bob, who is not in the group: $out"
fi
case $out in
*"group usergate"*) ok "refused for bob: $out" ;;
*) fail "bob's refusal does not name the group: $out" ;;
esac

# ---- 5. creates through Redis
rcli() {
	REDISCLI_AUTH=$redis_password nsenter -t "$leader" -n \
	    redis-cli --raw "$@"
}
push() {	# tag count: LPUSH count JSON requests with ReplyTo
	i=1
	while [ $i -le "$2" ]; do
		r="\"Identity\":\"$1-$i@example.com\",\"RequestId\":\"$1-$i\""
		r="{$r,\"ReplyTo\":\"usergate-reply:sys:$1-$i\"}"
		rcli LPUSH usergate:requests "$r" >/dev/null || fail "LPUSH"
		i=$((i + 1))
	done
}
answered() {	# tag count timeout: every reply is created (or exists)
	i=1
	while [ $i -le "$2" ]; do
		r=$(rcli BRPOP "usergate-reply:sys:$1-$i" "$3" | sed -n 2p)
		s=$(printf '%s' "$r" | jq -r .status 2>/dev/null)
		case $s in
		created | exists) ;;
		*) fail "request $1-$i: ${r:-no reply within $3 s}" ;;
		esac
		i=$((i + 1))
	done
}
push first 3
answered first 3 10
fake_stat() {	# jq expression on the fake Twilio's /_stats
	nsenter -t "$leader" -n curl -sf "$twurl/_stats" | jq -c "$1"
}
[ "$(fake_stat .creates)" = 3 ] ||
    fail "the fake Twilio counts $(fake_stat .creates) creates, not 3"
ok "3 creates through Redis (LPUSH, BRPOP on ReplyTo) reached the fake Twilio"

# ---- 6. systemd-analyze security
exposure=$(ct systemd-analyze security --no-pager usergated.service 2>&1 |
    sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
[ -n "$exposure" ] || fail "no exposure level from systemd-analyze security"
awk -v e="$exposure" 'BEGIN { exit !(e <= 2.0) }' ||
    fail "systemd-analyze security rates the unit $exposure (> 2.0)"
ok "systemd-analyze security: exposure $exposure"

journal_has() {	# pattern, journalctl arguments: waits for journald
	pat=$1
	shift
	i=0
	while [ $i -lt 50 ]; do
		ct journalctl --no-pager -o cat "$@" 2>/dev/null |
		    grep -q -- "$pat" && return 0
		sleep 0.1
		i=$((i + 1))
	done
	return 1
}

# ---- 7. reload: a good file applies, a bad one fails visibly
cp "$conf" "$tmp/good.conf"
set_key log level debug
ct systemctl reload usergated || fail "systemctl reload with a good file"
push reload 1
answered reload 1 10
# A debug line about the request pushed after the reload.
journal_has 'level=debug.*request_id=reload-1' -u usergated -p debug..debug ||
    fail "no debug line after reloading with [log] level = debug"
ok "systemctl reload applied [log] level = debug"
pid=$(ct systemctl show -p MainPID --value usergated)
set_key twilio max_inflight banana
if ct systemctl reload usergated >"$tmp/reload.out" 2>&1; then
	fail "systemctl reload succeeded with max_inflight = banana"
fi
ct systemctl --no-pager -l status usergated >"$tmp/status" 2>&1
grep -q max_inflight "$tmp/status" ||
    { sed 's/^/  | /' "$tmp/status"
    fail "systemctl status does not say why the reload failed"; }
[ "$(ct systemctl is-active usergated)" = active ] &&
    [ "$(ct systemctl show -p MainPID --value usergated)" = "$pid" ] ||
    fail "usergated did not stay up after a bad reload"
push badreload 1
answered badreload 1 10
ok "a bad file: systemctl reload fails ($(head -n 1 "$tmp/reload.out"))," \
    "the service serves on, status says:" \
    "$(grep -m1 max_inflight "$tmp/status" | sed 's/^[^]]*\]: //')"
cp "$tmp/good.conf" "$conf"
ct systemctl reload usergated || fail "reload back to the good file"

# ---- 8. the journal: priorities and secrets
rcli LPUSH usergate:requests '{"Identity":""}' >/dev/null
journal_has 'level=warning' -u usergated -p warning ||
    fail "no warning logged for an invalid request"
ct journalctl --no-pager -u usergated -o json >"$tmp/journal.json"
bad=$(jq -r 'select(.MESSAGE | type == "string") |
    (.MESSAGE | capture("level=(?<l>[a-z]+)").l) as $l |
    select($l != null) |
    select({"error": "3", "warning": "4", "info": "6", "debug": "7"}[$l] !=
        .PRIORITY) |
    "\(.PRIORITY) \(.MESSAGE)"' "$tmp/journal.json")
[ -z "$bad" ] || fail "journal priorities that are not the logfmt level: $bad"
for l in error warning info debug; do
	grep -q "level=$l" "$tmp/journal.json" ||
	    fail "no level=$l line in the journal"
done
ct journalctl --no-pager -u usergated -p warning -o cat >"$tmp/warning"
grep -q 'level=info\|level=debug' "$tmp/warning" &&
    fail "journalctl -p warning shows info or debug lines"
grep -q 'level=warning' "$tmp/warning" &&
    grep -q 'level=error' "$tmp/warning" ||
    fail "journalctl -p warning lacks the warning and error lines"
ok "journal: PRIORITY matches level= on $(wc -l <"$tmp/journal.json")" \
    "entries; -p warning shows warnings and errors only"

# ---- 9. watchdog: a stopped daemon is restarted, nothing is lost
wd=$(ct systemctl show -p WatchdogUSec --value usergated)
[ "$wd" = 30s ] || fail "the unit's WatchdogSec is $wd, not 30s"
cat >"$root/etc/systemd/system/usergated.service.d/zz-system-test.conf" <<EOF
# check-system.sh: a short watchdog, and SIGKILL soon after its SIGABRT
# (which a stopped process does not take).
[Service]
WatchdogSec=3s
TimeoutAbortSec=2s
EOF
ct systemctl daemon-reload && ct systemctl restart usergated ||
    fail "restart with the watchdog drop-in"
pid=$(ct systemctl show -p MainPID --value usergated)
restarts=$(ct systemctl show -p NRestarts --value usergated)
ct bash -c 'kill -STOP "$1"' sh "$pid" || fail "kill -STOP $pid"
push watchdog 5
i=0
while [ $i -lt 300 ]; do
	new=$(ct systemctl show -p MainPID --value usergated)
	[ "$new" != "$pid" ] && [ "$new" != 0 ] &&
	    [ "$(ct systemctl is-active usergated)" = active ] && break
	sleep 0.1
	i=$((i + 1))
done
[ $i -lt 300 ] || fail "the watchdog did not restart the stopped daemon in 30 s"
answered watchdog 5 20
[ "$(ct systemctl show -p NRestarts --value usergated)" -gt "$restarts" ] ||
    fail "NRestarts did not grow"
journal_has 'Watchdog timeout' -u usergated ||
    fail "no 'Watchdog timeout' in the journal"
ok "watchdog: stopped pid $pid was restarted (pid $new)," \
    "the 5 requests pushed meanwhile answered"

# ---- 10. a stop with requests in flight
nsenter -t "$leader" -n curl -sf -X POST -d '{"latency_ms": 3000}' \
    "$twurl/_control" >/dev/null || fail "cannot slow the fake Twilio"
push drain 5
i=0
while [ $i -lt 100 ]; do
	inflight=$(ct usergatectl show stats | jq -r .inflight)
	[ "${inflight:-0}" -gt 0 ] && break
	sleep 0.1
	i=$((i + 1))
done
[ "${inflight:-0}" -gt 0 ] || fail "no request in flight"
timeout=$(ct systemctl show -p TimeoutStopUSec --value usergated)
t0=$(date +%s)
ct systemctl stop usergated || fail "systemctl stop"
took=$(( $(date +%s) - t0 ))
ct systemctl show -p Result -p ExecMainCode -p ExecMainStatus usergated \
    >"$tmp/show"
grep -qx Result=success "$tmp/show" && grep -qx ExecMainStatus=0 "$tmp/show" &&
    grep -qx ExecMainCode=1 "$tmp/show" ||
    { cat "$tmp/show"; fail "the stop with $inflight in flight was not clean"; }
[ "$took" -lt 20 ] || fail "the stop took $took s (TimeoutStopSec=$timeout)"
nsenter -t "$leader" -n curl -sf -X POST -d '{"latency_ms": 0}' \
    "$twurl/_control" >/dev/null || fail "cannot speed the fake Twilio up"
ct systemctl start usergated || fail "start after the stop"
answered drain 5 20
ok "stop with $inflight in flight: $took s (TimeoutStopSec=$timeout)," \
    "Result=success, exit 0; all 5 answered after the start"

creates=$(fake_stat .creates)
dups=$(fake_stat .duplicate_creates)
[ "$creates" = 15 ] && [ "$dups" = '{}' ] ||
    fail "the fake Twilio has $creates creates (not 15), duplicates $dups"
ok "the fake Twilio created each of the 15 users once"

# ---- 11. an account SID and auth token instead (operations.md section 2)
sid=AC0123456789abcdef0123456789abcdef
auth_token=sys-auth-token-$$-$(date +%N)
grep 'read -rs secret' "$tmp/readme.cmds" |
    sed 's/twilio-api-secret/twilio-auth-token/' >"$tmp/cmds"
printf '%s\n' "$auth_token" >"$tmp/stdin"
doc_stdin=$tmp/stdin run_doc "README.Debian step 3, for the auth token" \
    "$tmp/cmds"
doc_block auth-token >"$tmp/cmds"
grep -q '^LoadCredential=$' "$tmp/cmds" ||
    fail "operations.md: no LoadCredential= in block system-test: auth-token"
# This Redis has a password: the operator keeps its line, as the block says.
sed 's/^#\(LoadCredential=redis-password:\)/\1/' "$tmp/cmds" \
    >"$root/etc/systemd/system/usergated.service.d/override.conf"
echo "drop-in of operations.md section 2 for an auth token (override.conf):"
sed 's/^/  | /' "$root/etc/systemd/system/usergated.service.d/override.conf"
set_key twilio api_key ""
set_key twilio account_sid "$sid"
kill "$fakepid"
wait "$fakepid" 2>/dev/null
nsenter -t "$leader" -n "$fake" --port "${twurl##*:}" --account "$sid" \
    --user "$sid" --password "$auth_token" >"$tmp/fake.log" 2>&1 &
fakepid=$!
i=0
while ! fake_stat .creates >/dev/null 2>&1 && [ $i -lt 100 ]; do
	sleep 0.1
	i=$((i + 1))
done
grep 'usergated -n' "$tmp/readme.cmds" >"$tmp/cmds"
run_doc "README.Debian step 4, the check" "$tmp/cmds"
ct systemctl daemon-reload && ct systemctl restart usergated ||
    fail "restart with the auth token"
push token 2
answered token 2 10
[ "$(fake_stat .creates)" = 2 ] ||
    fail "the fake Twilio (auth token) counts $(fake_stat .creates) creates"
ok "an account SID and auth token, with operations.md's drop-in: 2 creates"

# ---- 12. an upgrade keeps the operator's usergate.conf
# A newer package made from the built one, only its Version: raised, and
# installed by operations.md's upgrade command with requests in the queue.
ver=$(dpkg-deb -f "$deb" Version)
newver=$ver.1
dpkg --compare-versions "$newver" gt "$ver" || fail "$newver is not > $ver"
dpkg-deb -R "$deb" "$tmp/newdeb" || fail "dpkg-deb -R $deb"
sed -i "s/^Version: .*/Version: $newver/" "$tmp/newdeb/DEBIAN/control"
dpkg-deb -b "$tmp/newdeb" "$root/root/usergate_${newver}_amd64.deb" \
    >/dev/null || fail "dpkg-deb -b (version $newver)"
sed -n 's/^\*\*Upgrade\*\*: `\(apt install [^`]*\)`.*/\1/p' "$ops" |
    sed "s/_NEW_/_${newver}_/" >"$tmp/upgrade.cmd"
grep -q "^apt install ./usergate_${newver}_amd64.deb\$" "$tmp/upgrade.cmd" ||
    fail "operations.md: no '**Upgrade**: \`apt install ./usergate_NEW_...\`'"
{ echo "export DEBIAN_FRONTEND=noninteractive"; cat "$tmp/upgrade.cmd"; } \
    >"$tmp/cmds"
cp "$conf" "$tmp/conf.before"
pid=$(ct systemctl show -p MainPID --value usergated)
push upgrade 3
run_doc "operations.md, the upgrade" "$tmp/cmds"
got=$(ct dpkg-query -W -f '${Version}' usergate)
[ "$got" = "$newver" ] || fail "version $got installed, not $newver"
cmp -s "$tmp/conf.before" "$conf" ||
    { diff "$tmp/conf.before" "$conf" | sed 's/^/  | /'
    fail "the upgrade changed the operator's usergate.conf"; }
for f in "$conf".dpkg-*; do
	[ -e "$f" ] && fail "the upgrade left ${f##*/}"
done
new=$(ct systemctl show -p MainPID --value usergated)
ct systemctl is-active -q usergated && [ "$new" != "$pid" ] ||
    fail "usergated is not running again after the upgrade (pid $new)"
push upgraded 1
answered upgrade 3 20
answered upgraded 1 10
creates=$(fake_stat .creates)
dups=$(fake_stat .duplicate_creates)
[ "$creates" = 6 ] && [ "$dups" = '{}' ] ||
    fail "after the upgrade: $creates creates (not 6), duplicates $dups"
ok "upgrade $ver -> $newver: usergate.conf unchanged, restarted" \
    "(pid $pid -> $new), the 4 requests around it created once each"

# ---- 13. apt remove stops the service, keeps the configuration and user
# The commands as operations.md names them; apt asks before it removes.
apt_doc() {	# command: run as the docs say, answering apt's question
	grep -qF "\`$1\`" "$ops" || fail "operations.md does not say \`$1\`"
	printf '%s\n' "$1" >"$tmp/cmds"
	printf 'y\n' >"$tmp/stdin"
	doc_stdin=$tmp/stdin run_doc "operations.md, $1" "$tmp/cmds"
}
ls "$root/etc/usergate" >"$tmp/etc.before"
apt_doc "apt remove usergate"
st=$(ct systemctl is-active usergated)
[ "$st" != active ] || fail "usergated is still active after apt remove"
procs=$(ct sh -c 'grep -lx usergated /proc/[0-9]*/comm' 2>/dev/null)
[ -z "$procs" ] || fail "usergated runs after apt remove: $procs"
[ -e "$root/usr/sbin/usergated" ] && fail "/usr/sbin/usergated stays"
got=$(ct dpkg-query -W -f '${Status}' usergate)
[ "$got" = "deinstall ok config-files" ] ||
    fail "after apt remove, dpkg says: $got"
cmp -s "$tmp/conf.before" "$conf" ||
    fail "apt remove changed or removed usergate.conf"
ls "$root/etc/usergate" | cmp -s "$tmp/etc.before" - ||
    fail "apt remove changed /etc/usergate: $(ls "$root/etc/usergate")"
ct getent passwd usergate >/dev/null && ct getent group usergate >/dev/null ||
    fail "apt remove removed the user or group usergate"
ok "apt remove: the service is $st, no usergated process;" \
    "/etc/usergate ($(paste -sd ' ' "$tmp/etc.before")) and the user stay"

# ---- 14. apt purge removes the configuration, the secrets and the user
apt_doc "apt purge usergate"
[ -e "$root/etc/usergate" ] &&
    fail "/etc/usergate stays after apt purge: $(ls -A "$root/etc/usergate")"
ct getent passwd usergate && fail "the user usergate stays after apt purge"
ct getent group usergate && fail "the group usergate stays after apt purge"
ct id -nG alice | grep -qw usergate && fail "alice is still in group usergate"
# usergated keeps no data on disk (its state is in Redis): nothing of it
# may be left where systemd or a package would put some.
for d in /var/lib/usergate /var/lib/private/usergate /run/usergate \
    /etc/systemd/system/multi-user.target.wants/usergated.service; do
	[ -e "$root$d" ] || [ -L "$root$d" ] && fail "$d stays after apt purge"
done
[ -f "$root/etc/systemd/system/usergated.service.d/override.conf" ] ||
    fail "apt purge removed the operator's drop-in (operations.md: they stay)"
ct dpkg-query -W -f '${Status}' usergate >"$tmp/status" 2>&1 &&
    [ -s "$tmp/status" ] &&
    fail "dpkg still knows usergate: $(cat "$tmp/status")"
ok "apt purge: /etc/usergate, the user and group usergate are gone," \
    "nothing left in /var/lib or /run; the operator's drop-ins stay"

# ---- 15. no secret in the journal
ct journalctl --no-pager -o verbose >"$tmp/all.journal" 2>&1
ct journalctl --no-pager -o json >>"$tmp/all.journal" 2>&1
for s in "$api_secret" "$redis_password" "$auth_token"; do
	grep -qF "$s" "$tmp/all.journal" &&
	    fail "a secret is in the journal: $s"
done
ok "no secret in the journal ($(wc -l <"$tmp/all.journal") lines read)"

echo "system test passed in $(( $(date +%s) - started )) s"
exit 0
