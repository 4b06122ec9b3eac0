/*
 * status-stubs.c: the daemon functions status.c calls, as stubs, so that
 * its pure command parser (status_parse) can be linked without the daemon:
 * by the unit test tests/unit/test_status.c and by the fuzz target
 * tests/fuzz/fuzz_status.c.  The parser never reaches any of them.
 */
#include <stdio.h>

#include "daemon.h"

struct daemon ug;

const char *
daemon_health(char *buf, size_t size)
{
	snprintf(buf, size, "ok");
	return buf;
}
double
now_monotonic(void)
{
	return 0;
}
void
state_changed(void)
{}
int
daemon_reload(char *err, size_t errlen)
{
	(void)err;
	(void)errlen;
	return 0;
}
long
http_inflight(void)
{
	return 0;
}
double
job_oldest_age(void)
{
	return 0;
}
void
queue_pump(void)
{}
void
queue_unblock(void)
{}
int
queue_intake_busy(void)
{
	return 0;
}
void
queue_last_lengths(long long *r, long long *p, long long *d)
{
	*r = *p = *d = 0;
}
int
queue_lengths(queue_lengths_cb *cb, void *arg)
{
	(void)cb;
	(void)arg;
	return -1;
}
int
queue_dead_list(long n, queue_lines_cb *cb, void *arg)
{
	(void)n;
	(void)cb;
	(void)arg;
	return -1;
}
int
queue_dead_retry(long n, queue_count_cb *cb, void *arg)
{
	(void)n;
	(void)cb;
	(void)arg;
	return -1;
}
int
socket_listener_open(struct socket_listener *sl, const char *path, long mode,
    const char *what, socket_accept_cb accepted)
{
	(void)sl;
	(void)path;
	(void)mode;
	(void)what;
	(void)accepted;
	return -1;
}
void
socket_listener_close(struct socket_listener *sl)
{
	(void)sl;
}
