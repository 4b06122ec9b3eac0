/*
 * test_stats.c: pins the `show stats` keys (SPEC §6.2) and the shape of the
 * Prometheus rendering of stats.c (STYLE.md habit 7: counters declared
 * once, rendered everywhere from that one declaration), and checks the
 * lists of them written out in docs/operations.md and usergatectl(1)
 * against that declaration ($top_srcdir).
 */
#include "config.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <CUnit/Basic.h>
#include <CUnit/CUnit.h>

#include "daemon.h"
#include "doc.h"

#define NELEM(a) (sizeof(a) / sizeof((a)[0]))

/* SPEC §6.2, in this order.  Monitoring reads these names: adding one is a
 * decision, renaming or dropping one breaks people. */
static const char *const stats_keys[] = {
	"version",
	"uptime_s",
	"instance_id",
	"health",
	"redis_connected",
	"redis_role",
	"paused",
	"inflight",
	"max_inflight",
	"queue_depth",
	"processing",
	"dead",
	"redis_address",
	"redis_tls",
	"redis_up_s",
	"window",
	"rate_window_used",
	"rate_window_limit",
	"rate_window_s",
	"received",
	"invalid",
	"duplicate",
	"created",
	"exists",
	"updated",
	"failed",
	"retries",
	"http_requests",
	"recovered",
	"rate_limited",
	"dead_dropped",
	"failovers",
	"redis_reconnects",
};
static const char *const counter_keys[] = {
	"received",
	"invalid",
	"duplicate",
	"created",
	"exists",
	"updated",
	"failed",
	"retries",
	"http_requests",
	"recovered",
	"rate_limited",
	"dead_dropped",
	"failovers",
	"redis_reconnects",
};

static struct stats_gauges
sample_gauges(void)
{
	struct stats_gauges g;

	memset(&g, 0, sizeof(g));
	g.version = PACKAGE_VERSION;
	g.health = "ok";
	g.redis_connected = 1;
	g.redis_role = "master";
	g.paused = 0;
	g.inflight = 3;
	g.max_inflight = 64;
	g.queue_depth = 7;
	g.processing = 2;
	g.dead = 1;
	g.uptime_s = 12.7;
	g.instance_id = "host-a";
	g.redis_address = "redis.example:6380";
	g.redis_tls = 1;
	g.redis_up_s = 42;
	g.window = 5;
	g.rate_window_used = 27;
	g.rate_window_limit = 150;
	g.rate_window_s = 5;
	return g;
}

/* Gives each counter a distinct value: 101, 102, ... in declaration order. */
static void
set_counters(void)
{
	unsigned long long v = 100;

#define SET(name, help) stats.name = ++v;
	STATS_COUNTERS(SET)
#undef SET
}

static void
test_keys(void)
{
	struct stats_gauges g = sample_gauges();
	json_t *o, *v;
	const char *key;
	size_t i = 0;
	char msg[256];

	set_counters();
	o = stats_json(&g);
	CU_ASSERT_FATAL(o != NULL);
	CU_ASSERT_EQUAL(json_object_size(o), NELEM(stats_keys));
	json_object_foreach (o, key, v) {
		snprintf(msg, sizeof(msg), "key %zu: got %s, want %s", i, key,
		    i < NELEM(stats_keys) ? stats_keys[i] : "(none)");
		CU_assertImplementation(i < NELEM(stats_keys) &&
			    strcmp(key, stats_keys[i]) == 0 ?
			CU_TRUE :
			CU_FALSE,
		    __LINE__, msg, __FILE__, "", CU_FALSE);
		i++;
	}
	json_decref(o);
}

static void
test_values(void)
{
	struct stats_gauges g = sample_gauges();
	json_t *o;
	size_t i;

	set_counters();
	o = stats_json(&g);
	CU_ASSERT_FATAL(o != NULL);
	CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(o, "version")),
	    PACKAGE_VERSION);
	CU_ASSERT_EQUAL(json_integer_value(json_object_get(o, "uptime_s")), 12);
	CU_ASSERT_STRING_EQUAL(
	    json_string_value(json_object_get(o, "instance_id")), "host-a");
	CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(o, "health")),
	    "ok");
	CU_ASSERT_TRUE(json_is_true(json_object_get(o, "redis_connected")));
	CU_ASSERT_TRUE(json_is_false(json_object_get(o, "paused")));
	CU_ASSERT_EQUAL(json_integer_value(json_object_get(o, "inflight")), 3);
	CU_ASSERT_EQUAL(json_integer_value(json_object_get(o, "max_inflight")),
	    64);
	CU_ASSERT_EQUAL(json_integer_value(json_object_get(o, "queue_depth")),
	    7);
	CU_ASSERT_EQUAL(json_integer_value(json_object_get(o, "processing")),
	    2);
	CU_ASSERT_EQUAL(json_integer_value(json_object_get(o, "dead")), 1);
	CU_ASSERT_STRING_EQUAL(
	    json_string_value(json_object_get(o, "redis_address")),
	    "redis.example:6380");
	CU_ASSERT_TRUE(json_is_true(json_object_get(o, "redis_tls")));
	CU_ASSERT_EQUAL(json_integer_value(json_object_get(o, "redis_up_s")),
	    42);
	CU_ASSERT_EQUAL(json_integer_value(json_object_get(o,
	    "rate_window_used")), 27);
	CU_ASSERT_EQUAL(json_integer_value(json_object_get(o,
	    "rate_window_limit")), 150);
	for (i = 0; i < NELEM(counter_keys); i++) {
		json_t *v = json_object_get(o, counter_keys[i]);

		CU_ASSERT_TRUE(json_is_integer(v));
		CU_ASSERT_EQUAL(json_integer_value(v), (json_int_t)(101 + i));
	}
	json_decref(o);

	/* Lengths Redis could not give are null, not a made-up 0. */
	g.queue_depth = g.processing = g.dead = -1;
	g.health = "degraded: redis unreachable";
	g.redis_connected = 0;
	g.paused = 1;
	g.redis_up_s = -1;
	g.rate_window_used = -1;
	o = stats_json(&g);
	CU_ASSERT_FATAL(o != NULL);
	CU_ASSERT_TRUE(json_is_null(json_object_get(o, "redis_up_s")));
	CU_ASSERT_TRUE(json_is_null(json_object_get(o, "rate_window_used")));
	CU_ASSERT_TRUE(json_is_null(json_object_get(o, "queue_depth")));
	CU_ASSERT_TRUE(json_is_null(json_object_get(o, "processing")));
	CU_ASSERT_TRUE(json_is_null(json_object_get(o, "dead")));
	CU_ASSERT_TRUE(json_is_false(json_object_get(o, "redis_connected")));
	CU_ASSERT_TRUE(json_is_true(json_object_get(o, "paused")));
	CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(o, "health")),
	    "degraded: redis unreachable");
	json_decref(o);
}

/* The counters of the X-macro are exactly the counters of SPEC §6.2. */
static void
test_counter_names(void)
{
	const char *const *names;
	size_t n, i;

	names = stats_counter_names(&n);
	CU_ASSERT_EQUAL_FATAL(n, NELEM(counter_keys));
	for (i = 0; i < n; i++)
		CU_ASSERT_STRING_EQUAL(names[i], counter_keys[i]);
}

/* ------------------------------------------------------------------ */
/* Prometheus text exposition. */

struct sample {
	char name[128];
	char labels[128];
	double value;
};

struct family {
	char name[128];
	char type[32];
	int has_help;
	struct sample samples[32];
	size_t nsamples;
};

/*
 * A strict little parser for the subset of the exposition format the
 * daemon writes: "# HELP name text", "# TYPE name type", then samples
 * "name[{labels}] value" that belong to the family announced last.
 * Returns the number of families, or -1 with a message on a bad line.
 */
static int
parse_exposition(const char *text, struct family *fam, size_t max, char *err,
    size_t errlen)
{
	const char *p = text;
	int n = -1;
	char line[512];

	while (*p != '\0') {
		const char *eol = strchr(p, '\n');
		size_t len;

		if (eol == NULL) {
			snprintf(err, errlen, "last line has no newline");
			return -1;
		}
		len = (size_t)(eol - p);
		if (len >= sizeof(line)) {
			snprintf(err, errlen, "line too long");
			return -1;
		}
		memcpy(line, p, len);
		line[len] = '\0';
		p = eol + 1;
		if (strncmp(line, "# HELP ", 7) == 0) {
			char name[128];

			if (n + 1 >= (int)max ||
			    sscanf(line + 7, "%127s", name) != 1 ||
			    strlen(line + 7) <= strlen(name) + 1) {
				snprintf(err, errlen, "bad HELP: %.200s", line);
				return -1;
			}
			n++;
			memset(&fam[n], 0, sizeof(fam[n]));
			snprintf(fam[n].name, sizeof(fam[n].name), "%s", name);
			fam[n].has_help = 1;
		} else if (strncmp(line, "# TYPE ", 7) == 0) {
			char name[128], type[32];

			if (n < 0 ||
			    sscanf(line + 7, "%127s %31s", name, type) != 2 ||
			    strcmp(name, fam[n].name) != 0 ||
			    fam[n].type[0] != '\0') {
				snprintf(err, errlen,
				    "TYPE without its HELP: %.200s", line);
				return -1;
			}
			snprintf(fam[n].type, sizeof(fam[n].type), "%s", type);
		} else {
			struct sample *s;
			char *brace, *sp, *end;

			if (n < 0 || fam[n].type[0] == '\0' ||
			    fam[n].nsamples == NELEM(fam[n].samples)) {
				snprintf(err, errlen,
				    "sample outside a family: %.200s", line);
				return -1;
			}
			s = &fam[n].samples[fam[n].nsamples++];
			if ((sp = strrchr(line, ' ')) == NULL) {
				snprintf(err, errlen,
				    "sample without value: %.200s", line);
				return -1;
			}
			*sp = '\0';
			s->value = strtod(sp + 1, &end);
			if (*end != '\0' || end == sp + 1) {
				snprintf(err, errlen, "bad value: %.200s",
				    sp + 1);
				return -1;
			}
			if ((brace = strchr(line, '{')) != NULL) {
				if (line[strlen(line) - 1] != '}') {
					snprintf(err, errlen,
					    "bad labels: %.200s", line);
					return -1;
				}
				snprintf(s->labels, sizeof(s->labels), "%s",
				    brace);
				*brace = '\0';
			}
			snprintf(s->name, sizeof(s->name), "%s", line);
		}
	}
	return n + 1;
}

static int
ends_with(const char *s, const char *suffix)
{
	size_t a = strlen(s), b = strlen(suffix);

	return a >= b && strcmp(s + a - b, suffix) == 0;
}

static const struct family *
find_family(const struct family *fam, int n, const char *name)
{
	int i;

	for (i = 0; i < n; i++)
		if (strcmp(fam[i].name, name) == 0)
			return &fam[i];
	return NULL;
}

/* Checks a histogram family: buckets in rising le order, cumulative,
 * ending +Inf equal to _count; then _sum and _count. */
static void
check_histogram(const struct family *f, double want_count, double want_sum)
{
	double prev_le = -1, prev = 0, inf = -1;
	char want[160];
	size_t i, buckets = 0;
	int sum_seen = 0, count_seen = 0;

	CU_ASSERT_STRING_EQUAL(f->type, "histogram");
	for (i = 0; i < f->nsamples; i++) {
		const struct sample *s = &f->samples[i];

		snprintf(want, sizeof(want), "%s_bucket", f->name);
		if (strcmp(s->name, want) == 0) {
			double le;
			char *end;

			CU_ASSERT_FATAL(strncmp(s->labels, "{le=\"", 5) == 0);
			CU_ASSERT_EQUAL(inf, -1); /* nothing after +Inf */
			CU_ASSERT_TRUE(s->value >= prev); /* cumulative */
			prev = s->value;
			buckets++;
			if (strcmp(s->labels, "{le=\"+Inf\"}") == 0) {
				inf = s->value;
				continue;
			}
			le = strtod(s->labels + 5, &end);
			CU_ASSERT_STRING_EQUAL(end, "\"}");
			CU_ASSERT_TRUE(le > prev_le);
			prev_le = le;
			continue;
		}
		/* _sum and _count come after every bucket. */
		CU_ASSERT_TRUE(inf >= 0);
		snprintf(want, sizeof(want), "%s_sum", f->name);
		if (strcmp(s->name, want) == 0) {
			sum_seen = 1;
			CU_ASSERT_DOUBLE_EQUAL(s->value, want_sum, 1e-6);
			continue;
		}
		snprintf(want, sizeof(want), "%s_count", f->name);
		CU_ASSERT_STRING_EQUAL(s->name, want);
		count_seen = 1;
		CU_ASSERT_DOUBLE_EQUAL(s->value, want_count, 0);
	}
	CU_ASSERT_EQUAL(buckets, STATS_BUCKETS + 1);
	CU_ASSERT_DOUBLE_EQUAL(inf, want_count, 0);
	CU_ASSERT_TRUE(sum_seen && count_seen);
	/* Buckets fit 1 ms .. 30 s. */
	CU_ASSERT_DOUBLE_EQUAL(prev_le, 30, 1e-9);
	CU_ASSERT_STRING_EQUAL(f->samples[0].labels, "{le=\"0.001\"}");
}

static double
bucket_value(const struct family *f, const char *labels)
{
	size_t i;

	for (i = 0; i < f->nsamples; i++)
		if (strcmp(f->samples[i].labels, labels) == 0)
			return f->samples[i].value;
	return -1;
}

static void
test_prometheus(void)
{
	struct stats_gauges g = sample_gauges();
	struct family fam[64];
	const struct family *f;
	const char *const *names;
	char err[256], want[128], *text;
	size_t ncounters, i;
	int n, counters = 0;

	set_counters();
	memset(&stats_twilio_seconds, 0, sizeof(stats_twilio_seconds));
	memset(&stats_result_seconds, 0, sizeof(stats_result_seconds));
	stats_observe(&stats_twilio_seconds, 0.0005); /* le 0.001 */
	stats_observe(&stats_twilio_seconds,
	    0.001); /* le 0.001: bounds inclusive */
	stats_observe(&stats_twilio_seconds, 0.2); /* le 0.25 */
	stats_observe(&stats_twilio_seconds, 100); /* +Inf only */
	stats_observe(&stats_result_seconds, 1.5); /* le 2.5 */

	text = stats_prometheus(&g);
	CU_ASSERT_FATAL(text != NULL);
	n = parse_exposition(text, fam, NELEM(fam), err, sizeof(err));
	if (n < 0)
		fprintf(stderr, "\n%s\n%s\n", err, text);
	CU_ASSERT_FATAL(n > 0);

	for (i = 0; i < (size_t)n; i++) {
		CU_ASSERT_TRUE(fam[i].has_help);
		CU_ASSERT_TRUE(strncmp(fam[i].name, "usergate_", 9) == 0);
		CU_ASSERT_TRUE(fam[i].nsamples > 0);
		if (strcmp(fam[i].type, "counter") == 0) {
			counters++;
			CU_ASSERT_TRUE(ends_with(fam[i].name, "_total"));
			CU_ASSERT_EQUAL(fam[i].nsamples, 1);
			CU_ASSERT_STRING_EQUAL(fam[i].samples[0].name,
			    fam[i].name);
		} else {
			CU_ASSERT_FALSE(ends_with(fam[i].name, "_total"));
			CU_ASSERT_TRUE(strcmp(fam[i].type, "gauge") == 0 ||
			    strcmp(fam[i].type, "histogram") == 0);
		}
		if (strcmp(fam[i].type, "gauge") == 0)
			CU_ASSERT_STRING_EQUAL(fam[i].samples[0].name,
			    fam[i].name);
	}

	/* Every declared counter, with its value, and nothing else. */
	names = stats_counter_names(&ncounters);
	CU_ASSERT_EQUAL(counters, (int)ncounters);
	for (i = 0; i < ncounters; i++) {
		snprintf(want, sizeof(want), "usergate_%s_total", names[i]);
		f = find_family(fam, n, want);
		CU_ASSERT_FATAL(f != NULL);
		CU_ASSERT_STRING_EQUAL(f->type, "counter");
		CU_ASSERT_DOUBLE_EQUAL(f->samples[0].value, 101 + i, 0);
	}

	f = find_family(fam, n, "usergate_twilio_request_duration_seconds");
	CU_ASSERT_FATAL(f != NULL);
	check_histogram(f, 4, 0.0005 + 0.001 + 0.2 + 100);
	CU_ASSERT_DOUBLE_EQUAL(bucket_value(f, "{le=\"0.001\"}"), 2, 0);
	CU_ASSERT_DOUBLE_EQUAL(bucket_value(f, "{le=\"0.1\"}"), 2, 0);
	CU_ASSERT_DOUBLE_EQUAL(bucket_value(f, "{le=\"0.25\"}"), 3, 0);
	CU_ASSERT_DOUBLE_EQUAL(bucket_value(f, "{le=\"30\"}"), 3, 0);
	CU_ASSERT_DOUBLE_EQUAL(bucket_value(f, "{le=\"+Inf\"}"), 4, 0);

	f = find_family(fam, n, "usergate_enqueue_to_result_seconds");
	CU_ASSERT_FATAL(f != NULL);
	check_histogram(f, 1, 1.5);
	CU_ASSERT_DOUBLE_EQUAL(bucket_value(f, "{le=\"1\"}"), 0, 0);
	CU_ASSERT_DOUBLE_EQUAL(bucket_value(f, "{le=\"2.5\"}"), 1, 0);

	f = find_family(fam, n, "usergate_healthy");
	CU_ASSERT_FATAL(f != NULL);
	CU_ASSERT_DOUBLE_EQUAL(f->samples[0].value, 1, 0);
	f = find_family(fam, n, "usergate_queue_depth");
	CU_ASSERT_FATAL(f != NULL);
	CU_ASSERT_DOUBLE_EQUAL(f->samples[0].value, 7, 0);
	free(text);

	/* Degraded, Redis lengths unknown: healthy 0, no made-up lengths. */
	g.health = "degraded: redis unreachable";
	g.queue_depth = g.processing = g.dead = -1;
	g.redis_up_s = -1;
	text = stats_prometheus(&g);
	CU_ASSERT_FATAL(text != NULL);
	n = parse_exposition(text, fam, NELEM(fam), err, sizeof(err));
	CU_ASSERT_FATAL(n > 0);
	f = find_family(fam, n, "usergate_healthy");
	CU_ASSERT_FATAL(f != NULL);
	CU_ASSERT_DOUBLE_EQUAL(f->samples[0].value, 0, 0);
	CU_ASSERT_PTR_NULL(find_family(fam, n, "usergate_queue_depth"));
	CU_ASSERT_PTR_NULL(find_family(fam, n, "usergate_dead"));
	CU_ASSERT_PTR_NULL(find_family(fam, n, "usergate_redis_up_seconds"));
	free(text);

	/* A socket path is a label value: quote, backslash, newline escaped. */
	g.redis_address = "/run/a\"b\\c\nd.sock";
	text = stats_prometheus(&g);
	CU_ASSERT_FATAL(text != NULL);
	CU_ASSERT_PTR_NOT_NULL(strstr(text, "\nusergate_redis_info{address="
	    "\"/run/a\\\"b\\\\c\\nd.sock\"} 1\n"));
	n = parse_exposition(text, fam, NELEM(fam), err, sizeof(err));
	CU_ASSERT(n > 0);
	free(text);
}

/*
 * The gauges of `show metrics`, byte for byte and in their order: their
 * names, help and values are what dashboards and alerts read
 * (docs/operations.md), whatever the table in daemon.h looks like.
 */
static void
test_prometheus_gauges(void)
{
	static const char want[] =
	    "# HELP usergate_up 1 while the daemon runs\n"
	    "# TYPE usergate_up gauge\nusergate_up 1\n"
	    "# HELP usergate_healthy 1 when health is ok, 0 when degraded\n"
	    "# TYPE usergate_healthy gauge\nusergate_healthy 1\n"
	    "# HELP usergate_redis_connected 1 while Redis is connected\n"
	    "# TYPE usergate_redis_connected gauge\n"
	    "usergate_redis_connected 1\n"
	    "# HELP usergate_paused 1 while intake is paused by an operator\n"
	    "# TYPE usergate_paused gauge\nusergate_paused 0\n"
	    "# HELP usergate_inflight Twilio requests in flight from this "
	    "instance\n"
	    "# TYPE usergate_inflight gauge\nusergate_inflight 3\n"
	    "# HELP usergate_max_inflight Configured bound on concurrent "
	    "Twilio requests\n"
	    "# TYPE usergate_max_inflight gauge\nusergate_max_inflight 64\n"
	    "# HELP usergate_queue_depth Length of the request list\n"
	    "# TYPE usergate_queue_depth gauge\nusergate_queue_depth 7\n"
	    "# HELP usergate_processing Length of this instance's processing "
	    "list\n"
	    "# TYPE usergate_processing gauge\nusergate_processing 2\n"
	    "# HELP usergate_dead Length of the dead list\n"
	    "# TYPE usergate_dead gauge\nusergate_dead 1\n"
	    "# HELP usergate_uptime_seconds Seconds since start\n"
	    "# TYPE usergate_uptime_seconds gauge\n"
	    "usergate_uptime_seconds 12.699999999999999\n"
	    "# HELP usergate_redis_info The Redis address in use, as a label; "
	    "always 1\n"
	    "# TYPE usergate_redis_info gauge\n"
	    "usergate_redis_info{address=\"redis.example:6380\"} 1\n"
	    "# HELP usergate_redis_tls 1 when the Redis link uses TLS\n"
	    "# TYPE usergate_redis_tls gauge\nusergate_redis_tls 1\n"
	    "# HELP usergate_redis_up_seconds Seconds since the Redis link "
	    "came up (absent while down)\n"
	    "# TYPE usergate_redis_up_seconds gauge\n"
	    "usergate_redis_up_seconds 42\n";
	struct stats_gauges g = sample_gauges();
	const char *from, *to;
	char *text;

	text = stats_prometheus(&g);
	CU_ASSERT_FATAL(text != NULL);
	from = strstr(text, "# HELP usergate_up ");
	to = strstr(text, "# HELP usergate_twilio_request_duration_seconds ");
	CU_ASSERT_FATAL(from != NULL && to != NULL && from < to);
	CU_ASSERT_EQUAL(to - from, (ptrdiff_t)strlen(want));
	CU_ASSERT_TRUE(strncmp(from, want, strlen(want)) == 0);
	free(text);
}

/*
 * GET /metrics: the result statuses as one family with a status label, in
 * RESULT_STATUSES' order and from their counters; the other counters as in
 * show metrics; the gauges of kind HTTP (the windows) too; and the rest,
 * from the first gauge on, as show metrics has it.
 */
static void
test_metrics_http(void)
{
	struct stats_gauges g = sample_gauges();
	struct family fam[64];
	const struct family *f;
	const char *const *names;
	char err[256], want[128], *text, *old;
	size_t ncounters, i, statuses = 0;
	int n;

	set_counters();
	text = stats_metrics(&g);
	old = stats_prometheus(&g);
	CU_ASSERT_FATAL(text != NULL && old != NULL);
	n = parse_exposition(text, fam, NELEM(fam), err, sizeof(err));
	if (n < 0)
		fprintf(stderr, "\n%s\n%s\n", err, text);
	CU_ASSERT_FATAL(n > 0);
	f = find_family(fam, n, "usergate_requests_total");
	CU_ASSERT_FATAL(f != NULL);
	CU_ASSERT_STRING_EQUAL(f->type, "counter");
#define CHECK_STATUS(id, sname, success, counter) \
	CU_ASSERT_FATAL(statuses < f->nsamples); \
	CU_ASSERT_STRING_EQUAL(f->samples[statuses].labels, \
	    "{status=\"" sname "\"}"); \
	CU_ASSERT_DOUBLE_EQUAL(f->samples[statuses].value, stats.counter, 0); \
	statuses++;
	RESULT_STATUSES(CHECK_STATUS)
#undef CHECK_STATUS
	CU_ASSERT_EQUAL(f->nsamples, statuses);
	names = stats_counter_names(&ncounters);
	for (i = 0; i < ncounters; i++) {
		snprintf(want, sizeof(want), "usergate_%s_total", names[i]);
		/* A status's counter is in the family, not on its own. */
		CU_ASSERT_EQUAL(find_family(fam, n, want) == NULL,
		    strcmp(names[i], "created") == 0 ||
		    strcmp(names[i], "exists") == 0 ||
		    strcmp(names[i], "updated") == 0 ||
		    strcmp(names[i], "duplicate") == 0 ||
		    strcmp(names[i], "invalid") == 0 ||
		    strcmp(names[i], "failed") == 0);
	}
	f = find_family(fam, n, "usergate_concurrency_window");
	CU_ASSERT_FATAL(f != NULL);
	CU_ASSERT_STRING_EQUAL(f->type, "gauge");
	CU_ASSERT_DOUBLE_EQUAL(f->samples[0].value, 5, 0);
	CU_ASSERT_PTR_NULL(strstr(old, "usergate_concurrency_window"));
	f = find_family(fam, n, "usergate_rate_window_used");
	CU_ASSERT_FATAL(f != NULL);
	CU_ASSERT_DOUBLE_EQUAL(f->samples[0].value, 27, 0);
	f = find_family(fam, n, "usergate_rate_window_limit");
	CU_ASSERT_FATAL(f != NULL);
	CU_ASSERT_DOUBLE_EQUAL(f->samples[0].value, 150, 0);
	CU_ASSERT_PTR_NULL(strstr(old, "usergate_rate_window"));
	CU_ASSERT_PTR_NULL(strstr(old, "usergate_requests_total"));
	/* The histograms are the same text in both. */
	CU_ASSERT_STRING_EQUAL(strstr(text, "# HELP usergate_twilio_request"),
	    strstr(old, "# HELP usergate_twilio_request"));
	free(text);
	free(old);
}

/* The periodic log line: every counter, in declaration order. */
static void
test_log_line(void)
{
	char path[] = "/tmp/test_stats.XXXXXX", buf[2048], want[1024];
	const char *const *names;
	size_t n, i, len = 0;
	ssize_t got;
	int fd, saved;

	set_counters();
	CU_ASSERT_FATAL((fd = mkstemp(path)) >= 0);
	unlink(path);
	fflush(stderr);
	saved = dup(2);
	CU_ASSERT_FATAL(saved >= 0 && dup2(fd, 2) == 2);
	log_init(LOG_LEVEL_INFO);
	stats_log();
	log_set_level(LOG_LEVEL_WARNING);
	stats_log(); /* below the level: nothing */
	fflush(stderr);
	dup2(saved, 2);
	close(saved);
	got = pread(fd, buf, sizeof(buf) - 1, 0);
	close(fd);
	CU_ASSERT_FATAL(got > 0);
	buf[got] = '\0';
	names = stats_counter_names(&n);
	len = (size_t)snprintf(want, sizeof(want), "level=info msg=stats");
	for (i = 0; i < n; i++)
		len += (size_t)snprintf(want + len, sizeof(want) - len,
		    " %s=%zu", names[i], 101 + i);
	snprintf(want + len, sizeof(want) - len, "\n");
	/* After the timestamp, exactly that; and only one line. */
	CU_ASSERT_PTR_NOT_NULL(strstr(buf, want));
	CU_ASSERT_STRING_EQUAL(buf + strlen(buf) - strlen(want), want);
	CU_ASSERT_TRUE(
	    strchr(buf, '\n') == buf + strlen(buf) - 1); /* one line */
}


/* The gauges and counters of the X-macros are exactly the keys of SPEC §6.2. */
static void
test_gauge_names(void)
{
	const char *const *gauges, *const *counters;
	size_t ng, nc, i;

	gauges = stats_gauge_names(&ng);
	counters = stats_counter_names(&nc);
	CU_ASSERT_EQUAL_FATAL(ng + nc, NELEM(stats_keys));
	for (i = 0; i < ng; i++)
		CU_ASSERT_STRING_EQUAL(gauges[i], stats_keys[i]);
	for (i = 0; i < nc; i++)
		CU_ASSERT_STRING_EQUAL(counters[i], stats_keys[ng + i]);
}

/* ------------------------------------------------------------------ */
/* The lists in the docs name every gauge and counter, and nothing else. */

/* The text from the first start (after it) to the first end after that,
 * or NULL; malloc'd. */
static char *
between(const char *text, const char *start, const char *end)
{
	const char *a, *b;
	char *out;

	if (text == NULL || (a = strstr(text, start)) == NULL)
		return NULL;
	a += strlen(start);
	if ((b = strstr(a, end)) == NULL)
		return NULL;
	if ((out = malloc((size_t)(b - a) + 1)) == NULL)
		return NULL;
	memcpy(out, a, (size_t)(b - a));
	out[b - a] = '\0';
	return out;
}

/* A set of names read from a doc, at most 64 of at most 63 bytes. */
struct names {
	char name[64][64];
	size_t n;
};

static void
names_add(struct names *set, const char *p, size_t len)
{
	size_t i;

	if (len == 0 || len >= sizeof(set->name[0]))
		return;
	for (i = 0; i < set->n; i++)
		if (strlen(set->name[i]) == len &&
		    strncmp(set->name[i], p, len) == 0)
			return;
	if (set->n < NELEM(set->name)) {
		memcpy(set->name[set->n], p, len);
		set->name[set->n++][len] = '\0';
	}
}

static int
names_has(const struct names *set, const char *name)
{
	size_t i;

	for (i = 0; i < set->n; i++)
		if (strcmp(set->name[i], name) == 0)
			return 1;
	return 0;
}

static size_t
word_len(const char *p)
{
	size_t len = 0;

	while (islower((unsigned char)p[len]) ||
	    isdigit((unsigned char)p[len]) || p[len] == '_')
		len++;
	return len;
}

/* Markdown: every `word` in text. */
static void
backticked(const char *text, struct names *set)
{
	const char *p;

	for (p = text; (p = strchr(p, '`')) != NULL; p++) {
		size_t len = word_len(p + 1);

		if (p[1 + len] == '`') {
			names_add(set, p + 1, len);
			p += 1 + len;
		}
	}
}

/* man(7): the word after every .B or .BR at the start of a line. */
static void
bold(const char *text, struct names *set)
{
	const char *p;

	for (p = text; p != NULL; p = strchr(p, '\n'), p = p ? p + 1 : p) {
		if (strncmp(p, ".B ", 3) == 0)
			names_add(set, p + 3, word_len(p + 3));
		else if (strncmp(p, ".BR ", 4) == 0)
			names_add(set, p + 4, word_len(p + 4));
	}
}

/*
 * Checks a list read from a doc against the X-macros: every gauge (when
 * gauges) and counter is in it, and every name in it is one of them or one
 * of the other words the list may name (other, NULL-terminated).
 */
static void
check_list(const char *what, const struct names *set, int gauges,
    const char *const *other)
{
	const char *const *names;
	size_t n, i, j;
	int known;

	names = stats_counter_names(&n);
	for (i = 0; i < n; i++)
		if (!names_has(set, names[i])) {
			fprintf(stderr, "\ndocs check: %s does not name "
			    "counter %s\n", what, names[i]);
			CU_FAIL("counter missing from a doc's list");
		}
	names = stats_gauge_names(&n);
	for (i = 0; gauges && i < n; i++)
		if (!names_has(set, names[i])) {
			fprintf(stderr, "\ndocs check: %s does not name "
			    "gauge %s\n", what, names[i]);
			CU_FAIL("gauge missing from a doc's list");
		}
	for (j = 0; j < set->n; j++) {
		known = 0;
		for (i = 0; i < NELEM(stats_keys); i++)
			known |= strcmp(set->name[j], stats_keys[i]) == 0;
		for (i = 0; other != NULL && other[i] != NULL; i++)
			known |= strcmp(set->name[j], other[i]) == 0;
		if (!known) {
			fprintf(stderr, "\ndocs check: %s names %s, which "
			    "is no gauge or counter\n", what, set->name[j]);
			CU_FAIL("unknown name in a doc's list");
		}
	}
}

/* Markdown: the NAME of every `usergate_NAME_total` in text. */
static void
prometheus_counters(const char *text, struct names *set)
{
	const char *p;

	for (p = text; (p = strstr(p, "`usergate_")) != NULL; p++) {
		size_t len = word_len(p + 10);

		if (len > 6 && strncmp(p + 10 + len - 6, "_total`", 7) == 0)
			names_add(set, p + 10, len - 6);
	}
}

/* Adds to set the names read (by read) from the part of a doc between
 * start and end, which must be there. */
static void
collect(struct names *set, const char *doc, const char *start,
    const char *end, void (*read)(const char *, struct names *))
{
	char *part = between(doc, start, end);

	if (part == NULL) {
		fprintf(stderr, "\ndocs check: no \"%s\" up to \"%s\"\n",
		    start, end);
		CU_FAIL("a doc's list not found");
		return;
	}
	read(part, set);
	free(part);
}

static void
test_docs(void)
{
	/* Configuration keys the lists name along the way. */
	static const char *const config_keys[] = { "dead_max", "rate_limit",
	    "rate_window_s", NULL };
	struct names set;
	char *ops, *ctl;

	ops = read_doc("docs/operations.md");
	ctl = read_doc("docs/usergatectl.1");
	CU_ASSERT_FATAL(ops != NULL && ctl != NULL);

	/* operations.md, the status commands: the row of show stats. */
	memset(&set, 0, sizeof(set));
	collect(&set, ops, "| `show stats` |", "\n", backticked);
	check_list("docs/operations.md's row of show stats", &set, 1,
	    config_keys);

	/* operations.md, the metrics: usergate_NAME_total in the table, and
	 * the other counters named after it. */
	memset(&set, 0, sizeof(set));
	collect(&set, ops, "### The metrics that matter", "\n### ",
	    prometheus_counters);
	collect(&set, ops, "The other counters of `show stats` (", ")",
	    backticked);
	check_list("docs/operations.md's metrics", &set, 0, NULL);

	/* usergatectl(1), show stats. */
	memset(&set, 0, sizeof(set));
	collect(&set, ctl, ".B show stats\n", "\n.TP\n", bold);
	check_list("docs/usergatectl.1's show stats", &set, 1, config_keys);

	free(ops);
	free(ctl);
}

/* ------------------------------------------------------------------ */

int
main(void)
{
	CU_pSuite suite;
	unsigned int failures;

	if (CU_initialize_registry() != CUE_SUCCESS)
		return 2;
	if ((suite = CU_add_suite("stats", NULL, NULL)) == NULL ||
	    CU_add_test(suite, "show stats keys", test_keys) == NULL ||
	    CU_add_test(suite, "show stats values", test_values) == NULL ||
	    CU_add_test(suite, "counter names", test_counter_names) == NULL ||
	    CU_add_test(suite, "gauge names", test_gauge_names) == NULL ||
	    CU_add_test(suite, "docs", test_docs) == NULL ||
	    CU_add_test(suite, "prometheus", test_prometheus) == NULL ||
	    CU_add_test(suite, "prometheus gauges", test_prometheus_gauges) ==
	    NULL ||
	    CU_add_test(suite, "metrics over HTTP", test_metrics_http) ==
	    NULL ||
	    CU_add_test(suite, "log line", test_log_line) == NULL) {
		CU_cleanup_registry();
		return 2;
	}
	CU_basic_set_mode(CU_BRM_VERBOSE);
	if (CU_basic_run_tests() != CUE_SUCCESS) {
		CU_cleanup_registry();
		return 2;
	}
	failures = CU_get_number_of_failures();
	CU_cleanup_registry();
	return failures > 0 ? 1 : 0;
}
