/*
 * The import's sink through the request socket (see usergatectl.h).
 */
#include "config.h"

#include <stdio.h>

#include "usergatectl.h"

struct ctl_sink *
ctl_sink_socket(struct event_base *base, const char *path,
    const struct ctl_sink_events *ev, char *err, size_t errlen)
{
	snprintf(err, errlen, "the request socket sink is not built yet");
	return NULL;
}
