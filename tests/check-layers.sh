#!/bin/sh
# check-layers.sh: no file of src/ calls into a layer above its own
# (docs/design.md, "Layers"), but for the calls listed in tests/layers.allow
# (none since issue 12).
#
# Who calls whom is read from the built objects with nm: a symbol an object
# leaves undefined and another object defines is a call (or a use of a
# variable) from the first file into the second.  The layers, lowest first:
#
#   1 pure library         log config codec request record twilio pace
#                          framing stats command result redis_url failover
#   2 shared daemon pieces clock state listen
#   3 I/O adapters         queue* http intake status metrics
#   4 orchestrator         job
#   5 wiring               main
#
# Every src/queue*.c is the queue adapter, named `queue` in the allow-list,
# so that the list does not care how queue.c is split into files.  A file
# may use its own layer and those below; usergatectl.c and ctl_*.c are
# usergatectl, its own program.
#
# Fails on an upward use not in the allow-list, on an allow-list entry no
# longer needed, and on a file of src/ with no layer.
# Exit status: 0 pass, 1 fail, 99 hard error (nothing built, no nm).
# top_srcdir and top_builddir come from the test harness; by hand they
# default to the directory above this script and its build/ below it.

case $0 in
*/*) here=${0%/*} ;;
*) here=. ;;
esac
top_srcdir=${top_srcdir:-$(cd "$here/.." && pwd)}
top_builddir=${top_builddir:-$top_srcdir/build}
allow=$top_srcdir/tests/layers.allow

if ! command -v nm >/dev/null 2>&1; then
	echo "ERROR: nm is not installed (binutils)"
	exit 99
fi
if [ ! -f "$allow" ]; then
	echo "ERROR: $allow is missing"
	exit 99
fi

# One line per symbol of the daemon's objects: "file def|use symbol".
# Objects are src/NAME.o or, with per-program flags, src/PROGRAM-NAME.o;
# only those whose NAME.c is a source of today's tree count (a build
# directory may hold stale objects of removed files).
symbols=$(
	for obj in "$top_builddir"/src/*.o; do
		[ -f "$obj" ] || continue
		name=${obj##*/}
		# usergatectl is its own program (usergatectl.c and ctl_*.c,
		# with the daemon's pure library and queue_conn.c).
		case $name in usergatectl-*) continue ;; esac
		name=${name%.o}
		name=${name##*-}
		[ "$name" = usergatectl ] && continue
		[ -f "$top_srcdir/src/$name.c" ] || continue
		nm -g "$obj" | awk -v file="$name.c" '
			NF == 2 && ($1 == "U" || $1 == "w") { print file, "use", $2; next }
			NF == 3 && $2 != "U" && $2 != "w" { print file, "def", $3 }'
	done
)
if [ -z "$symbols" ]; then
	echo "ERROR: no objects in $top_builddir/src (build first)"
	exit 99
fi

printf '%s\n' "$symbols" | awk -v allow="$allow" '
function unit(file) {
	sub(/\.c$/, "", file)
	return file ~ /^queue/ ? "queue" : file
}
function layer(u) {
	if (u ~ /^(log|config|codec|request|record|twilio|pace|framing|stats|command|result|redis_url|failover)$/)
		return 1
	if (u ~ /^(clock|state|listen)$/)
		return 2
	if (u ~ /^(queue|http|intake|status|metrics)$/)
		return 3
	if (u == "job")
		return 4
	if (u == "main")
		return 5
	return 0
}
BEGIN {
	name[1] = "pure library"; name[2] = "shared daemon pieces"
	name[3] = "I/O adapters"; name[4] = "orchestrator"; name[5] = "wiring"
	status = 0
	while ((getline line < allow) > 0) {
		n++
		sub(/#.*/, "", line)
		if ((nf = split(line, f)) == 0)
			continue
		if (nf != 2) {
			printf "FAIL: tests/layers.allow:%d: not \"caller symbol\": %s\n", n, line
			status = 1
			continue
		}
		allowed[f[1] " " f[2]] = n
	}
}
$2 == "def" { owner[$3] = $1; next }
$2 == "use" { uses[++nuses] = $1 " " $3 }
{ files[$1] = 1 }
END {
	for (i = 1; i <= nuses; i++) {
		split(uses[i], f)
		if (!(f[2] in owner))
			continue
		from = unit(f[1]); to = unit(owner[f[2]])
		if (layer(from) == 0 || layer(to) == 0)
			continue
		if (layer(to) <= layer(from))
			continue
		key = from " " f[2]
		needed[key] = 1
		if (key in allowed)
			continue
		printf "FAIL: src/%s (%s) calls %s of src/%s (%s), a layer above\n",
		    f[1], name[layer(from)], f[2], owner[f[2]], name[layer(to)]
		status = 1
	}
	for (file in files)
		if (layer(unit(file)) == 0) {
			printf "FAIL: src/%s has no layer: add it to tests/check-layers.sh and docs/design.md\n", file
			status = 1
		}
	for (key in allowed)
		if (!(key in needed)) {
			printf "FAIL: tests/layers.allow:%d: \"%s\" is no longer needed: remove it\n",
			    allowed[key], key
			status = 1
		}
	if (status == 0)
		print "ok: no file calls into a layer above its own but for tests/layers.allow"
	exit status
}'
