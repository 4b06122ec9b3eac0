/*
 * clock.c: the two clocks and the timestamp format, for every file of the
 * daemon.  Monotonic seconds measure durations and deadlines (they do not
 * jump when the wall clock is set); wall seconds are only what results say
 * about when things happened.
 */
#include "config.h"

#include <stdio.h>
#include <string.h>
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

void
format_time(double wall, char *buf, size_t size)
{
	/* Two timestamps per request: the part up to the second is made once
	 * per second and only the milliseconds each time. */
	static time_t cached_secs = -1;
	static char cached[64];
	time_t secs = (time_t)wall;
	int ms = (int)((wall - (double)secs) * 1000.0);
	struct tm tm;

	if (ms > 999)
		ms = 999;
	if (secs != cached_secs) {
		gmtime_r(&secs, &tm);
		snprintf(cached, sizeof(cached), "%04d-%02d-%02dT%02d:%02d:%02d",
		    tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
		    tm.tm_sec);
		cached_secs = secs;
	}
	if (size < 25) {
		if (size > 0)
			buf[0] = '\0';
		return;
	}
	memcpy(buf, cached, 19);
	buf[19] = '.';
	buf[20] = (char)('0' + ms / 100);
	buf[21] = (char)('0' + ms / 10 % 10);
	buf[22] = (char)('0' + ms % 10);
	buf[23] = 'Z';
	buf[24] = '\0';
}
