/*
 * clock.c: the two clocks, for every file of the daemon.  Monotonic
 * seconds measure durations and deadlines (they do not jump when the wall
 * clock is set); wall seconds are only what results say about when things
 * happened (result.c writes them down).
 */
#include "config.h"

#include <time.h>

#include "daemon.h"

double
now_monotonic(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

double
now_wall(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}
