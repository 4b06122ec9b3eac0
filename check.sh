#!/bin/sh
# The whole test suite, from a fresh Debian 12 machine:
#   1. installs what is missing (tools/deps.sh);
#   2. builds in build/ with -Wall -Wextra -Werror and runs `make check`
#      (CUnit unit tests, man page and systemd unit checks, and the
#      black-box integration tests against redis-server and the fake Twilio);
#   3. builds in build-asan/ with AddressSanitizer + UBSan and runs the
#      whole suite again;
#   4. `make distcheck` (of the integration tests, only those reading the
#      tarball's docs: core, acl, status), and the Debian package built
#      and checked with lintian (tests/check-deb.sh, about a minute);
#      then the system test (tests/check-system.sh, about 30 s with its
#      cached trees, a few minutes the first time): that .deb installed in
#      a Debian 12 booted with systemd under systemd-nspawn, following the
#      docs' commands; skipped, with the reason, when not root or when
#      systemd-nspawn cannot boot a container here;
#   5. the libFuzzer targets for FUZZ_SECONDS each (default 30);
#   6. the daemon under valgrind for the core, socket, status, metrics and
#      systemd tests (`make check-valgrind`).
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
			grep -q '^:test-result: \(FAIL\|ERROR\)' "${f%.log}.trs" 2>/dev/null && { echo "==== $f"; tail -n 80 "$f"; }
		done
		return 1
	fi
	# pytest's own closing line, and the CUnit totals.
	grep -E '^=+ .*(passed|failed)' "$dir/tests/integration/run.log" | tail -n 1
	cat "$dir"/tests/unit/*.log | awk '$1 == "tests" && $2 ~ /^[0-9]+$/ { p += $4; f += $5 }
	    END { printf "CUnit tests: %d passed, %d failed\n", p, f }'
	ip=$(grep -E '^=+ .*passed' "$dir/tests/integration/run.log" | tail -n 1 |
	    sed -E 's/.* ([0-9]+) passed.*/\1/')
	up=$(cat "$dir"/tests/unit/*.log | awk '$1 == "tests" && $2 ~ /^[0-9]+$/ { p += $4 } END { print p + 0 }')
	total_passed=$((total_passed + ${ip:-0} + up))
}

total_passed=0
echo "== build and test"
run_suite build
if [ "${QUICK:-0}" = 1 ]; then
	echo "checks: $total_passed passed, 0 failed"
	exit 0
fi
echo "== AddressSanitizer + UBSan build and test"
USERGATE_TEST_SLOWDOWN=3 ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
	UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	run_suite build-asan --enable-sanitizers CC=gcc
echo "== distcheck"
# The tarball is built and checked whole (unit tests, man pages, units,
# layers, rules), but of the integration suite, which has run twice above,
# only the tests that read the tarball's docs and scripts (core, the ACL
# line of operations.md, status): that keeps CI under its 30 minutes.
if ! PYTEST_ADDOPTS="-k 'core or acl or status'" \
    make -s -C build distcheck > build/distcheck.log 2>&1; then
	tail -n 60 build/distcheck.log
	find build/usergate-*/_build -name '*.log' -path '*tests*' -exec grep -l 'FAILED\|^FAIL' {} + |
	    while read -r f; do echo "==== $f"; grep -E 'FAILED|^E ' "$f" | head -40; done
	exit 1
fi
echo "== Debian package"
# The .deb stays in build/deb for the system test.
rm -rf build/deb
DEB_KEEP_DIR=$top/build/deb top_srcdir=$top tests/check-deb.sh || [ $? -eq 77 ]
echo "== system test (systemd-nspawn)"
if [ -n "$(ls build/deb/usergate_*.deb 2>/dev/null)" ]; then
	top_srcdir=$top top_builddir=$top/build tests/check-system.sh ||
	    [ $? -eq 77 ]
else
	echo "SKIP: no .deb was built"
fi
echo "== fuzzing (libFuzzer, ${FUZZ_SECONDS:-30} s per target)"
make -s -C build fuzz FUZZ_SECONDS="${FUZZ_SECONDS:-30}"
echo "== valgrind"
make -s -C build check-valgrind > build/valgrind.log 2>&1 || { tail -n 80 build/valgrind.log; exit 1; }
grep -E '^=+ .*(passed|failed)' build/valgrind.log | tail -n 1
echo "all checks passed (build, ASan+UBSan build, distcheck, Debian package," \
    "system test, fuzzing, valgrind)"
echo "checks: $total_passed passed, 0 failed"
