/*
 * state.c: the daemon's process-wide state (ug), its health, and the one
 * way to say that the state changed.
 *
 * The adapters (queue_*.c, http.c, intake.c, status.c) and job.c write ug
 * and report changes here; what is done with a change (the sd_notify
 * STATUS= line) is main.c's, through the hooks it registers at start.
 */
#include "config.h"

#include <stdio.h>

#include "daemon.h"

struct daemon ug;

static const struct state_hooks *hooks;

void
state_init(const struct state_hooks *h)
{
	hooks = h;
}

void
state_changed(void)
{
	if (hooks != NULL && hooks->changed != NULL)
		hooks->changed();
}

const char *
daemon_health(char *buf, size_t size)
{
	const char *redis = hooks != NULL && hooks->redis_problem != NULL ?
	    hooks->redis_problem() : NULL;

	if (!ug.redis_up)
		snprintf(buf, size, "degraded: %s", redis);
	else if (ug.auth_reason[0])
		snprintf(buf, size, "degraded: %s", ug.auth_reason);
	else if (redis != NULL)
		snprintf(buf, size, "degraded: %s", redis);
	else
		snprintf(buf, size, "ok");
	return buf;
}
