/*
 * pace.c: how fast usergate talks to Twilio -- the backoff between
 * attempts, Retry-After, and the additive-increase/multiplicative-decrease
 * window on concurrent requests (SPEC §2 [retry], §5.3).
 *
 * Pure arithmetic: no I/O, no clock (callers pass `now'), no randomness
 * (callers pass `rnd'), so every rule can be pinned by a unit test.
 */
/* strptime(3) and timegm(3) are X/Open and BSD extensions in glibc. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "usergate.h"

/*
 * The longest Retry-After that is honoured: one hour.  A server may ask for
 * more (or a broken proxy may send a date years ahead); waiting that long
 * would look like a hung daemon, while after an hour we simply ask again
 * and get told again.
 */
#define PACE_RETRY_AFTER_MAX_MS	(3600L * 1000)

static const char *skip_space(const char *);
static int	 only_space(const char *);
static long	 parse_delta_seconds(const char *);
static long	 parse_http_date(const char *, time_t);

/*
 * Full jitter ("Exponential Backoff And Jitter", AWS Architecture Blog):
 * sleep = uniform(0, min(max, base * 2^(attempt-1))).  Spreading retries
 * over the whole interval is what keeps many clients that failed together
 * from retrying together.  Retry-After is a floor, not a replacement: the
 * server knows when it will have room, so its value wins when longer, even
 * beyond max_ms (up to PACE_RETRY_AFTER_MAX_MS).
 */
long
pace_backoff_ms(long attempt, long base_ms, long max_ms, long retry_after_ms,
    double rnd)
{
	long	 cap, shift, delay;
	double	 d;

	if (attempt < 1)
		attempt = 1;
	if (base_ms < 0)
		base_ms = 0;
	if (max_ms < 0)
		max_ms = 0;

	/*
	 * cap = min(max, base << shift) without overflow: base << shift fits
	 * and is <= max exactly when base <= max >> shift.  A shift of the
	 * width of long or more would be undefined, and any base >= 1 shifted
	 * that far exceeds every long, so it is simply max.
	 */
	shift = attempt - 1;
	if (base_ms == 0)
		cap = 0;
	else if (shift >= (long)(sizeof(long) * CHAR_BIT - 1) ||
	    base_ms > (max_ms >> shift))
		cap = max_ms;
	else
		cap = base_ms << shift;

	/* floor(rnd * (cap + 1)) is uniform over 0..cap; computed in double
	 * since cap + 1 may not fit in a long.  rnd outside [0, 1) (or NaN)
	 * is clipped instead of trusted. */
	if (!(rnd > 0.0))
		delay = 0;
	else if (rnd >= 1.0)
		delay = cap;
	else {
		d = floor(rnd * ((double)cap + 1.0));
		delay = d >= (double)cap ? cap : (long)d;
	}

	if (retry_after_ms > PACE_RETRY_AFTER_MAX_MS)
		retry_after_ms = PACE_RETRY_AFTER_MAX_MS;
	if (retry_after_ms > delay)
		delay = retry_after_ms;
	return delay;
}

static const char *
skip_space(const char *s)
{
	while (*s == ' ' || *s == '\t' || *s == '\r' || *s == '\n')
		s++;
	return s;
}

static int
only_space(const char *s)
{
	return *skip_space(s) == '\0';
}

/*
 * delta-seconds = 1*DIGIT (RFC 9110 §10.2.3): no sign, no fraction.  A
 * value too large for a long of ms saturates at LONG_MAX; pace_backoff_ms
 * clamps it anyway.  Returns -1 when s is not delta-seconds.
 */
static long
parse_delta_seconds(const char *s)
{
	const char	*p;
	long		 seconds = 0;

	s = skip_space(s);
	for (p = s; isdigit((unsigned char)*p); p++) {
		/* Once past LONG_MAX / 1000 the answer is LONG_MAX; stop
		 * growing before seconds * 10 could overflow. */
		if (seconds <= LONG_MAX / 1000)
			seconds = seconds * 10 + (*p - '0');
	}
	if (p == s || !only_space(p))
		return -1;
	if (seconds > LONG_MAX / 1000)
		return LONG_MAX;
	return seconds * 1000;
}

/*
 * HTTP-date (RFC 9110 §5.6.7).  A recipient must accept all three forms:
 * IMF-fixdate, the obsolete RFC 850 form and asctime's; all are GMT.  The
 * day and month names are English, which is what strptime matches in the
 * "C" locale -- the daemon never calls setlocale(3).  Returns the time from
 * now until the date in ms (0 when it has passed), or -1 when s is no date.
 */
static long
parse_http_date(const char *s, time_t now)
{
	static const char *const formats[] = {
		/* IMF-fixdate: Sun, 06 Nov 1994 08:49:37 GMT */
		"%a, %d %b %Y %H:%M:%S GMT",
		/* RFC 850: Sunday, 06-Nov-94 08:49:37 GMT */
		"%A, %d-%b-%y %H:%M:%S GMT",
		/* asctime: Sun Nov  6 08:49:37 1994 */
		"%a %b %e %H:%M:%S %Y",
	};
	struct tm	 tm;
	const char	*end;
	time_t		 when;
	size_t		 i;

	s = skip_space(s);
	for (i = 0; i < sizeof(formats) / sizeof(formats[0]); i++) {
		memset(&tm, 0, sizeof(tm));
		end = strptime(s, formats[i], &tm);
		if (end == NULL || !only_space(end))
			continue;
		errno = 0;
		when = timegm(&tm);
		if (when == (time_t)-1 && errno != 0)
			return -1;
		if (when <= now)
			return 0;
		if (when - now > LONG_MAX / 1000)
			return LONG_MAX;
		return (long)(when - now) * 1000;
	}
	return -1;
}

/*
 * Retry-After is delta-seconds or an HTTP-date (RFC 9110 §10.2.3).  -1 for
 * anything else (a negative number, a fraction, garbage) so the caller can
 * fall back on its own backoff instead of trusting a value it cannot read.
 */
long
pace_retry_after_ms(const char *value, time_t now)
{
	long	 ms;

	if (value == NULL)
		return -1;
	if ((ms = parse_delta_seconds(value)) >= 0)
		return ms;
	return parse_http_date(value, now);
}

/*
 * The window starts fully open: max_inflight is what the operator allowed,
 * and the first 429 will close it soon enough if Twilio disagrees.
 */
void
pace_window_init(struct pace_window *w, long max)
{
	w->max = max < 1 ? 1 : max;
	w->window = (double)w->max;
}

/*
 * Additive increase: 1/window per success adds about one slot per window's
 * worth of successful answers, TCP's congestion avoidance.  Slow enough not
 * to slam back into the limit Twilio just signalled.
 */
void
pace_window_success(struct pace_window *w)
{
	w->window += 1.0 / w->window;
	if (w->window > (double)w->max)
		w->window = (double)w->max;
}

/*
 * Multiplicative decrease on a 429: halve, but keep one request going so
 * that success can be noticed and the window can grow again.
 */
void
pace_window_throttled(struct pace_window *w)
{
	w->window /= 2.0;
	if (w->window < 1.0)
		w->window = 1.0;
}

/* How many requests may be in flight now: always 1..max. */
long
pace_window_limit(const struct pace_window *w)
{
	long	 limit;

	limit = (long)floor(w->window);
	if (limit < 1)
		limit = 1;
	if (limit > w->max)
		limit = w->max;
	return limit;
}

/*
 * On reload max_inflight may change.  A lower max takes effect at once; a
 * higher one is reached by additive increase, because the current window
 * reflects what Twilio has recently accepted.
 */
void
pace_window_set_max(struct pace_window *w, long max)
{
	w->max = max < 1 ? 1 : max;
	if (w->window > (double)w->max)
		w->window = (double)w->max;
	if (w->window < 1.0)
		w->window = 1.0;
}
