#!/bin/sh
# check-systemd.sh: checks systemd/usergated.service.
#
#  1. `systemd-analyze verify` on a copy of the unit whose ExecStart and
#     ExecReload run the freshly built $top_builddir/src/usergated and
#     usergatectl (verify insists that the binaries exist) and whose
#     Documentation= pages are looked up in the man pages of docs/;
#  2. `systemd-analyze security --offline=yes`: the overall exposure level
#     must not exceed MAX_EXPOSURE;
#  3. lines the unit must hold (LimitCORE=0);
#  4. every Twilio secret the unit loads (LoadCredential=) is also a
#     ConditionPathExists= of it, so that before the operator wrote one the
#     unit is skipped with the reason, not failed with 243/CREDENTIALS and
#     restarted; no other credential is loaded by default (Debian's Redis
#     has no password);
#  5. neither the unit nor the docs tell operators to copy the unit into
#     /etc/systemd/system, which would hide every upgrade of it.
#
# Exit status: 0 pass, 1 fail, 77 skip (only when systemd-analyze is not
# installed).  top_srcdir and top_builddir come from the test harness; when
# run by hand they default to the directory above this script.

MAX_EXPOSURE=2.0

case $0 in
*/*) here=${0%/*} ;;
*) here=. ;;
esac
top_srcdir=${top_srcdir:-$(cd "$here/.." && pwd)}
top_builddir=${top_builddir:-$top_srcdir}
unit=$top_srcdir/systemd/usergated.service
daemon=$top_builddir/src/usergated

if ! command -v systemd-analyze >/dev/null 2>&1; then
	echo "SKIP: systemd-analyze is not installed"
	exit 77
fi
if [ ! -f "$unit" ]; then
	echo "FAIL: $unit is missing"
	exit 1
fi
case $daemon in
/*) ;;
*) daemon=$(pwd)/$daemon ;;
esac
ctl=${daemon%/*}/usergatectl
for prog in "$daemon" "$ctl"; do
	if [ ! -x "$prog" ]; then
		echo "FAIL: $prog is not built (run make first)"
		exit 1
	fi
done

tmp=$(mktemp -d "${TMPDIR:-/tmp}/check-systemd.XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT
trap 'exit 1' HUP INT TERM

# No colours, no pager, no emoji in what we parse.
SYSTEMD_COLORS=0
SYSTEMD_PAGER='cat'
export SYSTEMD_COLORS SYSTEMD_PAGER

status=0

# ---- 1. verify
sed -e "s|^ExecStart=/usr/sbin/usergated |ExecStart=$daemon |" \
    -e "s|^ExecReload=/usr/bin/usergatectl |ExecReload=$ctl |" "$unit" >"$tmp/usergated.service"
if ! grep -q "^ExecStart=$daemon " "$tmp/usergated.service"; then
	echo "FAIL: no 'ExecStart=/usr/sbin/usergated ...' line to rewrite in $unit"
	exit 1
fi
if ! grep -q "^ExecReload=$ctl " "$tmp/usergated.service"; then
	echo "FAIL: no 'ExecReload=/usr/bin/usergatectl ...' line to rewrite in $unit"
	exit 1
fi

# verify runs man(1) on every Documentation= entry; give it our own pages.
if command -v man >/dev/null 2>&1; then
	for page in usergated.8 usergate.conf.5 usergatectl.1; do
		section=${page##*.}
		mkdir -p "$tmp/man/man$section"
		cp "$top_srcdir/docs/$page" "$tmp/man/man$section/" 2>/dev/null
	done
	man_opt=--man=yes
else
	man_opt=--man=no
fi

echo "checking: systemd-analyze verify $man_opt $tmp/usergated.service"
echo "          (ExecStart=$daemon, ExecReload=$ctl)"
MANPATH=$tmp/man systemd-analyze verify "$man_opt" "$tmp/usergated.service" \
	>"$tmp/verify.out" 2>&1
rc=$?
if [ $rc -ne 0 ] || [ -s "$tmp/verify.out" ]; then
	sed 's/^/  | /' "$tmp/verify.out"
	echo "FAIL: systemd-analyze verify (exit $rc, output above)"
	status=1
else
	echo "ok: systemd-analyze verify is clean"
fi

# ---- 2. security
echo "checking: systemd-analyze security --offline=yes $unit"
systemd-analyze security --offline=yes --no-pager "$unit" >"$tmp/security.out" 2>&1
rc=$?
level=$(sed -n 's/.*Overall exposure level for [^:]*: *\([0-9][0-9]*\(\.[0-9]*\)\{0,1\}\).*/\1/p' \
	"$tmp/security.out" | head -n 1)
if [ -z "$level" ]; then
	sed 's/^/  | /' "$tmp/security.out"
	echo "FAIL: no overall exposure level in the output of systemd-analyze security (exit $rc)"
	status=1
elif awk -v l="$level" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(l + 0 > m + 0) }'; then
	grep '✗' "$tmp/security.out" | sed 's/^/  | /'
	echo "FAIL: overall exposure level $level > $MAX_EXPOSURE (exposed settings above)"
	status=1
else
	echo "ok: overall exposure level $level <= $MAX_EXPOSURE"
fi

# ---- 3. settings the daemon relies on
# LimitCORE=0: a core dump would hold the Twilio secret and the Redis
# password (usergated also makes itself non-dumpable).
for setting in LimitCORE=0; do
	if grep -qx "$setting" "$unit"; then
		echo "ok: $setting"
	else
		echo "FAIL: $unit lacks the line $setting"
		status=1
	fi
done

# ---- 4. no crash loop before the credentials exist
loaded=$(sed -n 's/^LoadCredential=[^:]*:\(.*\)$/\1/p' "$unit")
if [ -z "$loaded" ]; then
	echo "FAIL: $unit loads no credential"
	status=1
fi
for path in $loaded; do
	case $path in
	*/twilio-api-secret | */twilio-auth-token)
		if grep -qx "ConditionPathExists=|$path" "$unit"; then
			echo "ok: LoadCredential= of $path has ConditionPathExists=|$path"
		else
			echo "FAIL: $unit loads $path without ConditionPathExists=|$path:" \
			    "without the file it fails with 243/CREDENTIALS and restarts"
			status=1
		fi
		;;
	*)
		echo "FAIL: $unit loads $path by default; a Redis without a" \
		    "password (Debian's default) then fails with 243/CREDENTIALS"
		status=1
		;;
	esac
done

# ---- 5. drop-ins, not copies
for doc in "$unit" "$top_srcdir/README.md" "$top_srcdir/docs/operations.md" \
    "$top_srcdir/debian/README.Debian"; do
	[ -f "$doc" ] || continue
	if grep -n -E '(Install as|install .*|cp .*) /etc/systemd/system/usergated\.service' \
	    "$doc"; then
		echo "FAIL: $doc tells to copy the unit into /etc/systemd/system" \
		    "(line above); local changes go in a drop-in (systemctl edit)"
		status=1
	fi
done
[ $status -eq 0 ] && echo "ok: no doc copies the unit into /etc/systemd/system"

exit $status
