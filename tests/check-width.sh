#!/bin/sh
# check-width.sh: no line of src/ is wider than the 80 columns of
# .clang-format's ColumnLimit (tabs count to the next multiple of 8, as
# the formatter and a terminal count them, and a UTF-8 character, such as
# the box drawing of job.c's diagram, as one column).  Fails with
# FILE:LINE: WIDTH for each wider line.
#
# Exit status: 0 pass, 1 fail.  top_srcdir comes from the test harness; by
# hand it defaults to the directory above this script.

case $0 in
*/*) here=${0%/*} ;;
*) here=. ;;
esac
top_srcdir=${top_srcdir:-$(cd "$here/.." && pwd)}
limit=80

status=0
for f in "$top_srcdir"/src/*.c "$top_srcdir"/src/*.h; do
	[ -f "$f" ] || continue
	LC_ALL=C sed "s/[\x80-\xbf]//g" "$f" | expand -t 8 | awk -v file="src/${f##*/}" -v limit=$limit '
		length($0) > limit { print file ":" NR ": " length($0) " columns"; bad = 1 }
		END { exit bad }' || status=1
done
if [ $status -ne 0 ]; then
	echo "FAIL: lines over $limit columns (.clang-format ColumnLimit);" \
	    "clang-format --lines=N:N -i FILE rewraps one"
fi
exit $status
