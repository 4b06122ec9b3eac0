#!/bin/sh
# check-prometheus.sh: the monitoring files of contrib/ hold (issue 14).
#
#   - contrib/prometheus/usergate-rules.yml passes `promtool check rules`,
#     and its unit tests (usergate-rules.test.yml, synthetic series) pass
#     `promtool test rules`;
#   - every alert has summary, description and a runbook_url into
#     docs/operations.md whose anchor is a heading there;
#   - what GET /metrics serves passes `promtool check metrics` with no
#     remark;
#   - every metric that a query of contrib/grafana/usergate.json names is
#     one that GET /metrics serves.
#
# What GET /metrics serves is tests/metrics-dump's output (stats.c's
# renderer, every gauge present), or the file $USERGATE_METRICS_TEXT when
# set (tests/integration/test_metrics.py passes a real scrape).
#
# Exit status: 0 pass, 1 fail, 77 skip (only when promtool or python3 is
# not installed), 99 hard error (nothing built).  top_srcdir and
# top_builddir come from the test harness; by hand they default to the
# directory above this script and its build/ below it.

case $0 in
*/*) here=${0%/*} ;;
*) here=. ;;
esac
top_srcdir=${top_srcdir:-$(cd "$here/.." && pwd)}
top_builddir=${top_builddir:-$top_srcdir/build}
rules=$top_srcdir/contrib/prometheus/usergate-rules.yml
dashboard=$top_srcdir/contrib/grafana/usergate.json

for tool in promtool python3; do
	if ! command -v $tool >/dev/null 2>&1; then
		echo "SKIP: $tool is not installed (tools/deps.sh installs it)"
		exit 77
	fi
done

tmp=$(mktemp -d "${TMPDIR:-/tmp}/check-prometheus.XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT
trap 'exit 1' HUP INT TERM

if [ -n "${USERGATE_METRICS_TEXT:-}" ]; then
	cp "$USERGATE_METRICS_TEXT" "$tmp/metrics" || exit 99
elif [ -x "$top_builddir/tests/metrics-dump" ]; then
	"$top_builddir/tests/metrics-dump" >"$tmp/metrics" || {
		echo "FAIL: tests/metrics-dump"
		exit 1
	}
else
	echo "ERROR: no $top_builddir/tests/metrics-dump (make check builds it)"
	exit 99
fi

status=0

# run WHAT COMMAND...: fails on a non-zero exit; shows the output then.
run() {
	what=$1
	shift
	if ! "$@" >"$tmp/out" 2>&1; then
		echo "FAIL: $what"
		sed 's/^/  /' "$tmp/out"
		status=1
	fi
}

run "promtool check rules" promtool check rules "$rules"
# promtool test rules reads the rule files relative to the test file.
run "promtool test rules" sh -c \
    'cd "$1" && promtool test rules usergate-rules.test.yml' \
    sh "$top_srcdir/contrib/prometheus"
# check metrics exits 0 with lint remarks on stdout: want none.
if ! promtool check metrics <"$tmp/metrics" >"$tmp/out" 2>&1 ||
    [ -s "$tmp/out" ]; then
	echo "FAIL: promtool check metrics"
	sed 's/^/  /' "$tmp/out"
	status=1
fi

python3 - "$rules" "$top_srcdir/docs/operations.md" "$dashboard" \
    "$tmp/metrics" <<'EOF' || status=1
import json
import re
import sys

import yaml

rules_path, ops_path, dash_path, metrics_path = sys.argv[1:]
bad = []

# GitHub's anchors: lower case, punctuation but - and _ dropped, spaces -.
anchors = set()
for line in open(ops_path):
    m = re.match(r"#+\s+(.*?)\s*$", line)
    if m:
        slug = re.sub(r"[^\w\- ]", "", m.group(1).lower())
        anchors.add(slug.replace(" ", "-"))

alerts = 0
for group in yaml.safe_load(open(rules_path))["groups"]:
    for rule in group["rules"]:
        if "alert" not in rule:
            continue
        alerts += 1
        a = rule.get("annotations", {})
        for key in ("summary", "description", "runbook_url"):
            if not a.get(key):
                bad.append("alert %s has no %s" % (rule["alert"], key))
        url = a.get("runbook_url", "")
        m = re.search(r"/docs/operations\.md#([\w-]+)$", url)
        if not m:
            bad.append("alert %s: runbook_url %r is not "
                       "docs/operations.md#ANCHOR" % (rule["alert"], url))
        elif m.group(1) not in anchors:
            bad.append("alert %s: docs/operations.md has no heading for #%s"
                       % (rule["alert"], m.group(1)))
if alerts == 0:
    bad.append("no alert in %s" % rules_path)

# The names GET /metrics serves (histograms' _bucket, _sum and _count
# included), and "up", which Prometheus adds to every scrape.
served = {"up"}
for line in open(metrics_path):
    if line.strip() and not line.startswith("#"):
        served.add(re.match(r"[a-zA-Z_:][\w:]*", line).group(0))

KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right",
            "and", "or", "unless", "bool", "offset", "inf", "nan"}


def metric_names(expr):
    """The metric names a PromQL expression reads."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)    # strings
    e = re.sub(r"\{[^}]*\}", "", e)                 # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)                # ranges
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)",
               "", e)
    e = re.sub(r"\$\{?\w+\}?", "", e)               # dashboard variables
    names = []
    for m in re.finditer(r"[a-zA-Z_:][\w:]*", e):
        word = m.group(0)
        rest = e[m.end():].lstrip()
        if rest.startswith("(") or word.lower() in KEYWORDS:
            continue                                # a function or keyword
        if re.match(r"\d", e[m.start() - 1:m.start()] or " "):
            continue                                # 1e3, 5m
        names.append(word)
    return names


def exprs(node):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "expr" and isinstance(v, str):
                yield v
            elif k == "query" and isinstance(v, str):
                yield v
            elif k == "query" and isinstance(v, dict) and "query" in v:
                yield v["query"]
            else:
                yield from exprs(v)
    elif isinstance(node, list):
        for v in node:
            yield from exprs(v)


dash = json.load(open(dash_path))
queries = 0
for expr in exprs(dash):
    if expr == "prometheus":                        # the datasource type
        continue
    m = re.match(r"\s*label_values\(\s*([^,)]*)", expr)
    names = metric_names(m.group(1) if m else expr)
    queries += 1
    if not names:
        bad.append("dashboard query names no metric: %s" % expr)
    for n in names:
        if n not in served:
            bad.append("dashboard query names %s, which GET /metrics does "
                       "not serve: %s" % (n, expr))
if queries == 0:
    bad.append("no query in %s" % dash_path)

for b in bad:
    print("FAIL: " + b)
if not bad:
    print("ok: %d alerts with runbooks, %d dashboard queries on served metrics"
          % (alerts, queries))
sys.exit(1 if bad else 0)
EOF

[ $status -eq 0 ] &&
	echo "ok: promtool check rules, test rules and check metrics"
exit $status
