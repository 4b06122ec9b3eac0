#!/bin/sh
# The whole test suite, from a fresh Debian 12 machine:
#   1. installs what is missing (tools/deps.sh);
#   2. builds in build/ with -Wall -Wextra -Werror and runs `make check`
#      (CUnit unit tests, man page and systemd unit checks, and the
#      black-box integration tests against redis-server and the fake Twilio);
#   3. builds in build-asan/ with AddressSanitizer + UBSan and runs the
#      whole suite again;
#   4. `make distcheck`.
# Set QUICK=1 to stop after step 2.
set -eu
cd "$(dirname "$0")"
top=$(pwd)
./tools/deps.sh
[ -x configure ] && [ configure -nt configure.ac ] && [ Makefile.in -nt Makefile.am ] || autoreconf -fi >/dev/null
jobs=$(nproc 2>/dev/null || echo 2)

summary() {	# totals from the automake logs of one build dir
	for f in "$1"/test-suite.log; do
		[ -f "$f" ] || continue
		sed -n 's/^# \(TOTAL\|PASS\|FAIL\|SKIP\|ERROR\):/\1/p' "$f" | tr '\n' ' '
		echo
	done
}

run_suite() {	# dir, configure args...
	dir=$1; shift
	mkdir -p "$dir"
	(cd "$dir" && "$top/configure" -q "$@")
	# Warnings are errors here, not in configure's own probes.
	make -s -C "$dir" -j"$jobs" CFLAGS="-O2 -g -Werror"
	if ! make -s -C "$dir" -j"$jobs" CFLAGS="-O2 -g -Werror" check; then
		for f in "$dir"/tests/*.log "$dir"/tests/*/*.log; do
			grep -q '^FAIL\|^ERROR' "${f%.log}.trs" 2>/dev/null && { echo "==== $f"; tail -n 80 "$f"; }
		done
		return 1
	fi
	# The integration log carries pytest's own summary line.
	tail -n 1 "$dir/tests/integration/run.log"
}

echo "== build and test"
run_suite build
[ "${QUICK:-0}" = 1 ] && exit 0
echo "== AddressSanitizer + UBSan build and test"
USERGATE_TEST_SLOWDOWN=3 ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:allocator_may_return_null=1 \
	UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	run_suite build-asan --enable-sanitizers CC=gcc
echo "== distcheck"
make -s -C build distcheck >/dev/null
echo "all checks passed"
