#!/bin/sh
# check-deb.sh: builds the Debian package from a copy of the source tree and
# checks it (issue 14).  ./check.sh runs it; it takes about a minute.
#
#  1. `dpkg-buildpackage -us -uc -b` in a scratch copy (the checkout is
#     left alone) builds usergate_VERSION_amd64.deb and its -dbgsym;
#  2. `lintian` reports no error and no warning (an override would go in
#     debian/usergate.lintian-overrides with its reason; none is needed);
#  3. the package holds what an operator relies on: the programs, the unit,
#     the sysusers.d file, the man pages, README.Debian, the configuration
#     as a conffile, and maintainer scripts that create the user, enable the
#     unit and remove the user on purge.
#
# With DEB_KEEP_DIR=DIR the built .deb files are copied to DIR (created if
# need be) before the scratch copy is removed: ./check.sh keeps them in
# build/deb for the system test (tests/check-system.sh) that follows.
#
# Exit status: 0 pass, 1 fail, 77 skip (dpkg-buildpackage, debhelper or
# lintian missing: tools/deps.sh installs them).

case $0 in
*/*) here=${0%/*} ;;
*) here=. ;;
esac
top_srcdir=${top_srcdir:-$(cd "$here/.." && pwd)}

for tool in dpkg-buildpackage dh lintian; do
	if ! command -v $tool >/dev/null 2>&1; then
		echo "SKIP: $tool is not installed"
		exit 77
	fi
done

tmp=$(mktemp -d "${TMPDIR:-/tmp}/check-deb.XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT
trap 'exit 1' HUP INT TERM

# ---- 1. build, from the files git knows (or the tree without build dirs)
mkdir "$tmp/usergate"
if git -C "$top_srcdir" rev-parse --git-dir >/dev/null 2>&1; then
	(cd "$top_srcdir" && git ls-files -z --cached --others --exclude-standard |
	    xargs -0 cp --parents -t "$tmp/usergate") || exit 1
else
	(cd "$top_srcdir" && tar -cf - --exclude='./build*' --exclude=./autom4te.cache .) |
	    (cd "$tmp/usergate" && tar -xf -) || exit 1
fi
version=$(cd "$tmp/usergate" && dpkg-parsechangelog -S Version) || exit 1
arch=$(dpkg --print-architecture)
echo "building: dpkg-buildpackage -us -uc -b (usergate $version)"
if ! (cd "$tmp/usergate" && nice dpkg-buildpackage -us -uc -b -j2) \
    >"$tmp/build.log" 2>&1; then
	tail -n 40 "$tmp/build.log" | sed 's/^/  | /'
	echo "FAIL: dpkg-buildpackage (output above)"
	exit 1
fi
deb=$tmp/usergate_${version}_$arch.deb
status=0
for f in "$deb" "$tmp/usergate-dbgsym_${version}_$arch.deb"; do
	if [ -f "$f" ]; then
		echo "ok: built ${f##*/}"
	else
		echo "FAIL: no ${f##*/}"
		status=1
	fi
done
[ $status -eq 0 ] || exit 1
if [ -n "${DEB_KEEP_DIR:-}" ]; then
	mkdir -p "$DEB_KEEP_DIR" && rm -f "$DEB_KEEP_DIR"/usergate*.deb &&
	    cp "$tmp"/usergate*_"$version"_"$arch".deb "$DEB_KEEP_DIR" || exit 1
	echo "ok: kept the .deb files in $DEB_KEEP_DIR"
fi

# ---- 2. lintian
lintian --fail-on error,warning --tag-display-limit 0 \
    "$tmp/usergate_${version}_$arch.changes" >"$tmp/lintian.out" 2>&1
rc=$?
grep -v 'running with root privileges' "$tmp/lintian.out" | sed 's/^/  | /'
if [ $rc -ne 0 ]; then
	echo "FAIL: lintian found errors or warnings (exit $rc, above)"
	status=1
else
	echo "ok: lintian reports no error and no warning"
fi

# ---- 3. contents
dpkg-deb -c "$deb" | awk '{ print $6 }' | sed 's|^\./|/|' >"$tmp/files"
for f in /usr/sbin/usergated /usr/bin/usergatectl \
    /lib/systemd/system/usergated.service /usr/lib/sysusers.d/usergate.conf \
    /etc/usergate/usergate.conf /usr/share/doc/usergate/README.Debian \
    /usr/share/man/man8/usergated.8.gz /usr/share/man/man5/usergate.conf.5.gz \
    /usr/share/man/man1/usergatectl.1.gz; do
	if ! grep -qx "$f" "$tmp/files"; then
		echo "FAIL: the package lacks $f"
		status=1
	fi
done
dpkg-deb -e "$deb" "$tmp/control"
if ! grep -qx /etc/usergate/usergate.conf "$tmp/control/conffiles"; then
	echo "FAIL: /etc/usergate/usergate.conf is not a conffile"
	status=1
fi
check_script() {	# script, what, pattern
	if ! grep -q "$3" "$tmp/control/$1" 2>/dev/null; then
		echo "FAIL: $1 does not $2 (no '$3')"
		status=1
	fi
}
check_script postinst "create the user" 'systemd-sysusers .*usergate.conf'
check_script postinst "enable the unit" "deb-systemd-helper enable 'usergated.service'"
check_script prerm "stop the service" "deb-systemd-invoke stop 'usergated.service'"
check_script postrm "remove the user on purge" 'userdel usergate'
[ $status -eq 0 ] && echo "ok: files, conffile and maintainer scripts"
exit $status
