#!/bin/sh
# Installs, from Debian's packages, whatever the build, the demo and the
# tests need and is not there yet.  Idempotent; needs root (or sudo) only
# when something is missing.  The list is complete for a minimal Debian 12
# (debootstrap --variant=minbase): ./check.sh passes there after this.
# systemd brings systemd-analyze (the unit checks), man-db and groff the
# man page checks, clang with libclang-rt-14-dev the fuzzers, llvm the
# symbolizer for their reports, valgrind the last pass, and debhelper with
# lintian the Debian package (tests/check-deb.sh), prometheus (with
# promtool) and python3-yaml the alerting rules, the dashboard and the real
# scrape (tests/check-prometheus.sh, test_metrics.py), ncurses and libcsv
# usergatectl's import and top (pyte renders their terminal in the tests),
# systemd-container and debootstrap the system test (tests/check-system.sh).
set -eu
PKGS="build-essential autoconf automake pkg-config
libevent-dev libcurl4-openssl-dev libhiredis-dev libmsgpack-dev libjansson-dev libcjson-dev
libinih-dev libjemalloc-dev libcunit1-dev libsystemd-dev libssl-dev
redis-server redis-sentinel python3 python3-pytest python3-pytest-xdist python3-redis python3-msgpack
systemd man-db groff-base groff socat jq curl openssl clang libclang-rt-14-dev llvm valgrind
debhelper lintian prometheus python3-yaml
libncurses-dev libcsv-dev python3-pyte tmux systemd-container debootstrap"
missing=""
for p in $PKGS; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
echo "installing:$missing"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
$SUDO apt-get update -qq
# shellcheck disable=SC2086
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
