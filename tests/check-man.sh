#!/bin/sh
# check-man.sh: the man pages in docs/ render without a single warning.
#
# Each page is rendered with `man --warnings -E UTF-8 -l` (man-db, which runs
# groff with its warnings on) at a fixed width; any output on stderr or a
# non-zero exit fails.  When groff and lexgrog are installed the page is
# also checked with `groff -man -ww -z` (every warning) and lexgrog (the NAME
# line that whatis/apropos index).
#
# Exit status: 0 pass, 1 fail, 77 skip (only when man is not installed).
# top_srcdir comes from the test harness; by hand it defaults to the
# directory above this script.

case $0 in
*/*) here=${0%/*} ;;
*) here=. ;;
esac
top_srcdir=${top_srcdir:-$(cd "$here/.." && pwd)}
pages="usergated.8 usergate.conf.5 usergatectl.1"

if ! command -v man >/dev/null 2>&1; then
	echo "SKIP: man is not installed (apt-get install man-db groff)"
	exit 77
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/check-man.XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT
trap 'exit 1' HUP INT TERM

# Same rendering whatever the caller's terminal and locale.
MANWIDTH=80
MANPAGER='cat'
PAGER='cat'
LC_ALL=C.UTF-8
export MANWIDTH MANPAGER PAGER LC_ALL
unset MANOPT

status=0

# run NAME COMMAND...: runs the command, fails on a non-zero exit or on
# anything written to stderr (stdout, the rendered page, is discarded).
run()
{
	what=$1
	shift
	"$@" >/dev/null 2>"$tmp/err"
	rc=$?
	if [ $rc -ne 0 ] || [ -s "$tmp/err" ]; then
		sed 's/^/  | /' "$tmp/err"
		echo "FAIL: $what (exit $rc)"
		status=1
	else
		echo "ok: $what"
	fi
}

for page in $pages; do
	file=$top_srcdir/docs/$page
	if [ ! -f "$file" ]; then
		echo "FAIL: $file is missing"
		status=1
		continue
	fi
	run "man --warnings -E UTF-8 -l docs/$page" \
		man --warnings -E UTF-8 -l "$file"
	if command -v groff >/dev/null 2>&1; then
		run "groff -man -ww -z docs/$page" \
			groff -man -ww -z "$file"
	fi
	if command -v lexgrog >/dev/null 2>&1; then
		# lexgrog prints "FILE: parse failed" and exits 1 when the NAME
		# section cannot be indexed; its normal output goes to stdout.
		run "lexgrog docs/$page" lexgrog "$file"
	fi
done

exit $status
