/*
 * metrics-dump.c: prints what GET /metrics serves (stats.c's stats_metrics)
 * with every gauge present, so that tests/check-prometheus.sh can run
 * `promtool check metrics` on it and check the Grafana dashboard's metric
 * names against it without a running daemon and Redis.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon.h"

int
main(void)
{
	struct stats_gauges g;
	char *text;

	memset(&g, 0, sizeof(g));
	g.version = PACKAGE_VERSION;
	g.health = "ok";
	g.instance_id = "metrics-dump";
	/* Lengths Redis could not tell are left out: give them all. */
	g.queue_depth = g.processing = g.dead = g.rate_window_used = 0;
	g.max_inflight = g.window = 64;
	g.rate_window_limit = 150;
	g.rate_window_s = 5;
	g.redis_role = "master";
	g.redis_address = "127.0.0.1:6379";
	g.redis_up_s = 1;
	stats_observe(&stats_twilio_seconds, 0.2);
	stats_observe(&stats_result_seconds, 0.3);
	if ((text = stats_metrics(&g)) == NULL)
		return 1;
	fputs(text, stdout);
	free(text);
	return fflush(stdout) == 0 ? 0 : 1;
}
