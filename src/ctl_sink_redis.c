/*
 * The import's sink through Redis, as the daemon's config file says (see
 * usergatectl.h).
 */
#include "config.h"

#include <stdio.h>

#include "usergatectl.h"

struct ctl_sink *
ctl_sink_redis(struct event_base *base, const char *config_path,
    const struct ctl_sink_events *ev, char *err, size_t errlen)
{
	snprintf(err, errlen, "the Redis sink is not built yet");
	return NULL;
}
