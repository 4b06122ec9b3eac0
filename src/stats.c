/*
 * stats.c: the counters and gauges, declared once in daemon.h
 * (STATS_COUNTERS, STATS_GAUGES) and rendered from that one declaration
 * into `show stats` (JSON), `show metrics` (Prometheus text exposition) and
 * the periodic log line.
 */
#include "config.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "daemon.h"

struct stats stats;
struct histogram stats_twilio_seconds;
struct histogram stats_result_seconds;

/* Upper bounds in seconds: 1 ms .. 30 s, roughly doubling. */
static const double bucket_le[STATS_BUCKETS] = {
	0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
	0.5, 1, 2.5, 5, 10, 30,
};

static const char *const counter_names[] = {
#define STATS_NAME(name, help) #name,
	STATS_COUNTERS(STATS_NAME)
#undef STATS_NAME
};

static const char *const gauge_names[] = {
#define STATS_NAME(name, type, kind, prom, place, pname, help) #name,
	STATS_GAUGES(STATS_NAME)
#undef STATS_NAME
};

const char *const *
stats_counter_names(size_t *count)
{
	*count = sizeof(counter_names) / sizeof(counter_names[0]);
	return counter_names;
}

const char *const *
stats_gauge_names(size_t *count)
{
	*count = sizeof(gauge_names) / sizeof(gauge_names[0]);
	return gauge_names;
}

void
stats_observe(struct histogram *h, double seconds)
{
	int i;

	if (seconds < 0)
		seconds = 0;
	for (i = 0; i < STATS_BUCKETS && seconds > bucket_le[i]; i++)
		;
	h->counts[i]++;
	h->count++;
	h->sum += seconds;
}

/* How `show stats` renders each kind of gauge (STATS_GAUGES). */
static json_t *
gauge_json_STRING(const char *v)
{
	return json_string(v);
}

static json_t *
gauge_json_BOOLEAN(int v)
{
	return json_boolean(v);
}

static json_t *
gauge_json_INTEGER(double v)
{
	return json_integer((json_int_t)v);
}

/* Lengths Redis could not tell us (it is down) are null, not 0. */
static json_t *
gauge_json_LENGTH(long long v)
{
	return v < 0 ? json_null() : json_integer(v);
}

json_t *
stats_json(const struct stats_gauges *g)
{
	json_t *o = json_object();

	if (o == NULL)
		return NULL;
#define STATS_JSON_GAUGE(name, type, kind, prom, place, pname, help) \
	json_object_set_new(o, #name, gauge_json_##kind(g->name));
	STATS_GAUGES(STATS_JSON_GAUGE)
#undef STATS_JSON_GAUGE
#define STATS_JSON(name, help) \
	json_object_set_new(o, #name, json_integer((json_int_t)stats.name));
	STATS_COUNTERS(STATS_JSON)
#undef STATS_JSON
	return o;
}

/*
 * The periodic log line: every counter as key=value, from the same
 * declaration as show stats and show metrics, so a journal alone tells
 * what the daemon did.
 */
void
stats_log(void)
{
#define STATS_BUF(name, help) char name##_value[24];
	STATS_COUNTERS(STATS_BUF)
#undef STATS_BUF
#define STATS_FORMAT(name, help) \
	snprintf(name##_value, sizeof(name##_value), "%llu", stats.name);
	STATS_COUNTERS(STATS_FORMAT)
#undef STATS_FORMAT
#define STATS_ARG(name, help) #name, name##_value,
	log_kv(LOG_LEVEL_INFO, "stats", STATS_COUNTERS(STATS_ARG) (char *)NULL);
#undef STATS_ARG
}

static void
histogram_text(struct evbuffer *b, const char *name, const char *help,
    const struct histogram *h)
{
	unsigned long long cum = 0;
	int i;

	evbuffer_add_printf(b, "# HELP %s %s\n# TYPE %s histogram\n",
	    name, help, name);
	for (i = 0; i < STATS_BUCKETS; i++) {
		cum += h->counts[i];
		evbuffer_add_printf(b, "%s_bucket{le=\"%g\"} %llu\n", name,
		    bucket_le[i], cum);
	}
	cum += h->counts[STATS_BUCKETS];
	evbuffer_add_printf(b, "%s_bucket{le=\"+Inf\"} %llu\n", name, cum);
	evbuffer_add_printf(b, "%s_sum %.6f\n%s_count %llu\n", name, h->sum,
	    name, h->count);
}

static void
counter_text(struct evbuffer *b, const char *name, const char *help,
    unsigned long long v)
{
	evbuffer_add_printf(b, "# HELP usergate_%s_total %s\n"
	    "# TYPE usergate_%s_total counter\nusergate_%s_total %llu\n",
	    name, help, name, name, v);
}

static void
gauge_text(struct evbuffer *b, const char *name, const char *help, double v)
{
	evbuffer_add_printf(b, "# HELP usergate_%s %s\n"
	    "# TYPE usergate_%s gauge\nusergate_%s %.17g\n",
	    name, help, name, name, v);
}

/*
 * How `show metrics` and GET /metrics (http) export each kind of gauge
 * (STATS_GAUGES).
 */
static void
gauge_prom_NONE(struct evbuffer *b, int http, const char *name,
    const char *help, const char *v)
{
}

static void
gauge_prom_VALUE(struct evbuffer *b, int http, const char *name,
    const char *help, double v)
{
	gauge_text(b, name, help, v);
}

/* Only on GET /metrics: `show metrics` stays as scripts know it. */
static void
gauge_prom_HTTP(struct evbuffer *b, int http, const char *name,
    const char *help, double v)
{
	if (http)
		gauge_text(b, name, help, v);
}

/* Only on GET /metrics, and left out when not known (as LENGTH). */
static void
gauge_prom_HTTP_LENGTH(struct evbuffer *b, int http, const char *name,
    const char *help, long long v)
{
	if (http && v >= 0)
		gauge_text(b, name, help, v);
}

/* Health as a number an alert can compare: 1 when "ok". */
static void
gauge_prom_OK(struct evbuffer *b, int http, const char *name,
    const char *help, const char *v)
{
	gauge_text(b, name, help, strcmp(v, "ok") == 0);
}

/* A length Redis could not tell us is left out, not made up as 0. */
static void
gauge_prom_LENGTH(struct evbuffer *b, int http, const char *name,
    const char *help, long long v)
{
	if (v >= 0)
		gauge_text(b, name, help, v);
}

/*
 * A string as the label of a gauge that is always 1 (an "info" metric,
 * as node_exporter's), escaped as the exposition format wants.
 */
static void
gauge_prom_INFO(struct evbuffer *b, int http, const char *name,
    const char *help, const char *v)
{
	const char *p;

	evbuffer_add_printf(b, "# HELP usergate_%s %s\n# TYPE usergate_%s "
	    "gauge\nusergate_%s{address=\"", name, help, name, name);
	for (p = v; *p != '\0'; p++)
		if (*p == '\\' || *p == '"')
			evbuffer_add_printf(b, "\\%c", *p);
		else if (*p == '\n')
			evbuffer_add(b, "\\n", 2);
		else
			evbuffer_add(b, p, 1);
	evbuffer_add_printf(b, "\"} 1\n");
}

/* Where in struct stats the counter of each result status is. */
static const size_t status_counter[] = {
#define STATS_STATUS_COUNTER(id, name, success, counter) \
	offsetof(struct stats, counter),
	RESULT_STATUSES(STATS_STATUS_COUNTER)
#undef STATS_STATUS_COUNTER
};

static int
is_status_counter(size_t offset)
{
	size_t i;

	for (i = 0; i < sizeof(status_counter) / sizeof(status_counter[0]); i++)
		if (status_counter[i] == offset)
			return 1;
	return 0;
}

/*
 * GET /metrics: the counters of the result statuses as one family with a
 * status label, as Prometheus' naming guidelines want for one thing
 * counted by outcome (sum() over it is every result); the other counters
 * as in `show metrics`.
 */
static void
counters_http(struct evbuffer *b)
{
	evbuffer_add_printf(b, "# HELP usergate_requests_total "
	    "Results written, by status\n"
	    "# TYPE usergate_requests_total counter\n");
#define STATS_STATUS_SAMPLE(id, name, success, counter) \
	evbuffer_add_printf(b, "usergate_requests_total{status=\"" name \
	    "\"} %llu\n", stats.counter);
	RESULT_STATUSES(STATS_STATUS_SAMPLE)
#undef STATS_STATUS_SAMPLE
#define STATS_PROM(name, help) \
	if (!is_status_counter(offsetof(struct stats, name))) \
		counter_text(b, #name, help, stats.name);
	STATS_COUNTERS(STATS_PROM)
#undef STATS_PROM
}

static char *
render(const struct stats_gauges *g, int http)
{
	struct evbuffer *b = evbuffer_new();
	size_t len;
	char *out;
	int place;

	if (b == NULL)
		return NULL;
	if (http) {
		counters_http(b);
	} else {
#define STATS_PROM(name, help) counter_text(b, #name, help, stats.name);
		STATS_COUNTERS(STATS_PROM)
#undef STATS_PROM
	}
	/* Not a gathered value: that the daemon answers at all. */
	gauge_text(b, "up", "1 while the daemon runs", 1);
	for (place = 1; place <= STATS_GAUGE_PLACES; place++) {
#define STATS_PROM_GAUGE(name, type, kind, prom, gplace, pname, help) \
		if (place == gplace) \
			gauge_prom_##prom(b, http, pname, help, g->name);
		STATS_GAUGES(STATS_PROM_GAUGE)
#undef STATS_PROM_GAUGE
	}
	histogram_text(b, "usergate_twilio_request_duration_seconds",
	    "Time of one HTTP request to Twilio", &stats_twilio_seconds);
	histogram_text(b, "usergate_enqueue_to_result_seconds",
	    "Time from taking a request to its result", &stats_result_seconds);
	len = evbuffer_get_length(b);
	if ((out = malloc(len + 1)) != NULL) {
		evbuffer_remove(b, out, len);
		out[len] = '\0';
	}
	evbuffer_free(b);
	return out;
}

char *
stats_prometheus(const struct stats_gauges *g)
{
	return render(g, 0);
}

char *
stats_metrics(const struct stats_gauges *g)
{
	return render(g, 1);
}
