/*
 * stats.c: the counters and gauges, declared once in daemon.h
 * (STATS_COUNTERS, STATS_GAUGES) and rendered from that one declaration
 * into `show stats` (JSON), `show metrics` (Prometheus text exposition) and
 * the periodic log line.
 */
#include "config.h"

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
	0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
};

static const char *const counter_names[] = {
#define STATS_NAME(name, help) #name,
	STATS_COUNTERS(STATS_NAME)
#undef STATS_NAME
};

static const char *const gauge_names[] = {
#define STATS_NAME(name, type, kind) #name,
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
#define STATS_JSON_GAUGE(name, type, kind) \
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

	evbuffer_add_printf(b, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
	for (i = 0; i < STATS_BUCKETS; i++) {
		cum += h->counts[i];
		evbuffer_add_printf(b, "%s_bucket{le=\"%g\"} %llu\n", name, bucket_le[i], cum);
	}
	cum += h->counts[STATS_BUCKETS];
	evbuffer_add_printf(b, "%s_bucket{le=\"+Inf\"} %llu\n", name, cum);
	evbuffer_add_printf(b, "%s_sum %.6f\n%s_count %llu\n", name, h->sum, name, h->count);
}

static void
gauge_text(struct evbuffer *b, const char *name, const char *help, double v)
{
	evbuffer_add_printf(b, "# HELP usergate_%s %s\n# TYPE usergate_%s gauge\n"
	    "usergate_%s %.17g\n", name, help, name, name, v);
}

char *
stats_prometheus(const struct stats_gauges *g)
{
	struct evbuffer *b = evbuffer_new();
	size_t len;
	char *out;

	if (b == NULL)
		return NULL;
#define STATS_PROM(name, help) \
	evbuffer_add_printf(b, "# HELP usergate_" #name "_total " help "\n" \
	    "# TYPE usergate_" #name "_total counter\nusergate_" #name "_total %llu\n", \
	    stats.name);
	STATS_COUNTERS(STATS_PROM)
#undef STATS_PROM
	gauge_text(b, "up", "1 while the daemon runs", 1);
	gauge_text(b, "healthy", "1 when health is ok, 0 when degraded",
	    strcmp(g->health, "ok") == 0);
	gauge_text(b, "redis_connected", "1 while Redis is connected", g->redis_connected);
	gauge_text(b, "paused", "1 while intake is paused by an operator", g->paused);
	gauge_text(b, "inflight", "Twilio requests in flight from this instance", g->inflight);
	gauge_text(b, "max_inflight", "Configured bound on concurrent Twilio requests",
	    g->max_inflight);
	if (g->queue_depth >= 0)
		gauge_text(b, "queue_depth", "Length of the request list", g->queue_depth);
	if (g->processing >= 0)
		gauge_text(b, "processing", "Length of this instance's processing list",
		    g->processing);
	if (g->dead >= 0)
		gauge_text(b, "dead", "Length of the dead list", g->dead);
	gauge_text(b, "uptime_seconds", "Seconds since start", g->uptime_s);
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
