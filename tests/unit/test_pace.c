/*
 * test_pace.c: CUnit tables for pace.c -- full-jitter backoff, Retry-After
 * and the AIMD concurrency window.
 */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <CUnit/Basic.h>
#include <CUnit/CUnit.h>

#include "usergate.h"

#define NELEM(a)	(sizeof(a) / sizeof((a)[0]))
/* The largest rnd a [0, 1) generator can give, near enough. */
#define RND_TOP		(1.0 - 1e-12)
#define HOUR_MS		(3600L * 1000)

static void
check_long(const char *what, long got, long want, int line)
{
	char	 msg[512];

	snprintf(msg, sizeof(msg), "%s: got %ld, want %ld", what, got, want);
	CU_assertImplementation(got == want ? CU_TRUE : CU_FALSE, line, msg,
	    __FILE__, "", CU_FALSE);
}

/* ------------------------------------------------------------------ */

static const struct backoff_case {
	const char	*name;
	long		 attempt, base, max, retry_after;
	double		 rnd;
	long		 want;
} backoff_cases[] = {
	{ "rnd 0 is no wait",		1, 200, 30000, -1, 0.0, 0 },
	{ "rnd 0, late attempt",	9, 200, 30000, -1, 0.0, 0 },
	{ "rnd 0.999 is the cap",	1, 200, 30000, -1, 0.999, 200 },
	{ "rnd 0.5 is the middle",	1, 200, 30000, -1, 0.5, 100 },
	{ "rnd 0.5, attempt 3",		3, 200, 30000, -1, 0.5, 400 },
	/* The cap doubles per attempt ... */
	{ "growth 1",			1, 200, 30000, -1, RND_TOP, 200 },
	{ "growth 2",			2, 200, 30000, -1, RND_TOP, 400 },
	{ "growth 3",			3, 200, 30000, -1, RND_TOP, 800 },
	{ "growth 4",			4, 200, 30000, -1, RND_TOP, 1600 },
	{ "growth 5",			5, 200, 30000, -1, RND_TOP, 3200 },
	{ "growth 8",			8, 200, 30000, -1, RND_TOP, 25600 },
	/* ... up to max_delay_ms. */
	{ "cap at max",			9, 200, 30000, -1, RND_TOP, 30000 },
	{ "cap at max, rnd 0.5",	9, 200, 30000, -1, 0.5, 15000 },
	{ "attempt 30",			30, 200, 30000, -1, RND_TOP, 30000 },
	{ "attempt 63",			63, 200, 30000, -1, RND_TOP, 30000 },
	{ "attempt 64 no overflow",	64, 200, 30000, -1, RND_TOP, 30000 },
	{ "attempt 65",			65, 200, 30000, -1, RND_TOP, 30000 },
	{ "attempt 1000",		1000, 200, 30000, -1, RND_TOP, 30000 },
	{ "attempt LONG_MAX",		LONG_MAX, 200, 30000, -1, RND_TOP,
	    30000 },
	{ "huge base",			2, LONG_MAX / 2 + 1, 30000, -1,
	    RND_TOP, 30000 },
	{ "base 1 shifted 62",		63, 1, LONG_MAX, -1, 0.0, 0 },
	{ "attempt 0 is attempt 1",	0, 200, 30000, -1, RND_TOP, 200 },
	{ "negative attempt",		-5, 200, 30000, -1, RND_TOP, 200 },
	{ "base 0",			5, 0, 30000, -1, RND_TOP, 0 },
	{ "max below base",		1, 200, 50, -1, RND_TOP, 50 },
	{ "rnd 1 clipped to cap",	1, 200, 30000, -1, 1.0, 200 },
	{ "rnd above 1 clipped",	1, 200, 30000, -1, 7.0, 200 },
	{ "negative rnd clipped",	3, 200, 30000, -1, -0.5, 0 },
	/* Retry-After is a floor. */
	{ "retry-after longer",		1, 200, 30000, 5000, 0.5, 5000 },
	{ "retry-after shorter",	3, 200, 30000, 10, 0.5, 400 },
	{ "retry-after 0",		3, 200, 30000, 0, 0.5, 400 },
	{ "retry-after equal",		3, 200, 30000, 400, 0.5, 400 },
	{ "retry-after beyond max",	9, 200, 30000, 120000, 0.5, 120000 },
	{ "retry-after clamped",	1, 200, 30000, 10 * 24 * HOUR_MS, 0.0,
	    HOUR_MS },
	{ "retry-after LONG_MAX",	1, 200, 30000, LONG_MAX, 0.0, HOUR_MS },
	{ "retry-after unknown",	1, 200, 30000, -1, 0.0, 0 },
};

static void
test_backoff(void)
{
	const struct backoff_case *c;
	char	 what[128];
	size_t	 i;

	for (i = 0; i < NELEM(backoff_cases); i++) {
		c = &backoff_cases[i];
		snprintf(what, sizeof(what), "backoff[%s]", c->name);
		check_long(what, pace_backoff_ms(c->attempt, c->base, c->max,
		    c->retry_after, c->rnd), c->want, __LINE__);
	}
}

/* Whatever the inputs, the answer stays in [0, cap] without a Retry-After:
 * sweep attempts and random numbers, including the widest cap there is. */
static void
test_backoff_bounds(void)
{
	long	 attempt, got, cap;
	double	 rnd;
	int	 ok = 1;

	for (attempt = 1; attempt <= 70; attempt++) {
		for (rnd = 0.0; rnd < 1.0; rnd += 0.0625) {
			got = pace_backoff_ms(attempt, 1, LONG_MAX, -1, rnd);
			cap = attempt >= 64 ? LONG_MAX : 1L << (attempt - 1);
			if (got < 0 || got > cap)
				ok = 0;
			got = pace_backoff_ms(attempt, 200, 30000, -1, rnd);
			if (got < 0 || got > 30000)
				ok = 0;
		}
	}
	CU_ASSERT_TRUE(ok);
	CU_ASSERT_EQUAL(pace_backoff_ms(64, 1, LONG_MAX, -1, RND_TOP) > 0, 1);
	CU_ASSERT_EQUAL(pace_backoff_ms(1, 200, 30000, -1, NAN), 0);
}

/* ------------------------------------------------------------------ */

/* Sun, 06 Nov 1994 08:49:37 GMT, RFC 9110's example date. */
#define NOW	((time_t)784111777)

static const struct retry_after_case {
	const char	*value;
	long		 want;
} retry_after_cases[] = {
	{ "120", 120000 },
	{ "0", 0 },
	{ "1", 1000 },
	{ " 120 ", 120000 },
	{ "\t5\r\n", 5000 },
	{ "007", 7000 },
	{ "99999999999999999999999999", LONG_MAX },
	{ "Sun, 06 Nov 1994 08:50:37 GMT", 60000 },
	{ "  Sun, 06 Nov 1994 09:49:37 GMT  ", 3600000 },
	{ "Mon, 07 Nov 1994 08:49:37 GMT", 86400000 },
	{ "Sun, 06 Nov 1994 08:49:37 GMT", 0 },		/* now */
	{ "Sun, 06 Nov 1994 08:48:37 GMT", 0 },		/* past */
	{ "Thu, 01 Jan 1970 00:00:00 GMT", 0 },
	{ "Sunday, 06-Nov-94 08:51:37 GMT", 120000 },	/* RFC 850 */
	{ "Sun Nov  6 08:52:37 1994", 180000 },		/* asctime */
	{ "", -1 },
	{ "   ", -1 },
	{ "-5", -1 },
	{ "+5", -1 },
	{ "1.5", -1 },
	{ "5s", -1 },
	{ "5 5", -1 },
	{ "soon", -1 },
	{ "Sun, 06 Nov 1994 08:49:37 PST", -1 },
	{ "Sun, 06 Nov 1994 08:49:37", -1 },
	{ "Sun, 06 Nov 1994 08:49:37 GMT trailing", -1 },
	{ "Sun, 32 Nov 1994 08:49:37 GMT", -1 },
	{ "Sun, 06 Foo 1994 08:49:37 GMT", -1 },
	{ "Sun, 06 Nov 1994 25:49:37 GMT", -1 },
	{ NULL, -1 },
};

static void
test_retry_after(void)
{
	const struct retry_after_case *c;
	char	 what[128];
	size_t	 i;

	for (i = 0; i < NELEM(retry_after_cases); i++) {
		c = &retry_after_cases[i];
		snprintf(what, sizeof(what), "retry_after[\"%s\"]",
		    c->value != NULL ? c->value : "(null)");
		check_long(what, pace_retry_after_ms(c->value, NOW), c->want,
		    __LINE__);
	}
}

/* ------------------------------------------------------------------ */

enum window_op { W_INIT, W_SUCCESS, W_THROTTLED, W_SET_MAX };

static const struct window_step {
	enum window_op	 op;
	long		 arg;		/* max for W_INIT / W_SET_MAX */
	int		 repeat;	/* how often op is applied */
	long		 want_limit;
	long		 want_max;
} window_steps[] = {
	{ W_INIT, 8, 1, 8, 8 },
	{ W_SUCCESS, 0, 5, 8, 8 },		/* never above max */
	{ W_THROTTLED, 0, 1, 4, 8 },		/* halves */
	{ W_THROTTLED, 0, 1, 2, 8 },
	{ W_THROTTLED, 0, 1, 1, 8 },
	{ W_THROTTLED, 0, 3, 1, 8 },		/* never below 1 */
	{ W_SUCCESS, 0, 1, 2, 8 },		/* 1 + 1/1 = 2 */
	{ W_SUCCESS, 0, 1, 2, 8 },		/* 2 + 1/2 = 2.5 */
	{ W_SUCCESS, 0, 1, 2, 8 },		/* 2.5 + 1/2.5 = 2.9 */
	{ W_SUCCESS, 0, 1, 3, 8 },		/* 2.9 + 1/2.9 = 3.24 */
	{ W_SUCCESS, 0, 2, 3, 8 },		/* 3.55, 3.83 */
	{ W_SUCCESS, 0, 1, 4, 8 },		/* 4.10: about 1 per window */
	{ W_SUCCESS, 0, 30, 8, 8 },		/* back to max */
	{ W_SUCCESS, 0, 100, 8, 8 },		/* and stays there */
	{ W_SET_MAX, 3, 1, 3, 3 },		/* reload lowers: clamped */
	{ W_THROTTLED, 0, 1, 1, 3 },		/* 1.5 */
	{ W_SET_MAX, 10, 1, 1, 10 },		/* raising does not jump */
	{ W_SUCCESS, 0, 200, 10, 10 },		/* but grows to it */
	{ W_SET_MAX, 0, 1, 1, 1 },		/* max is at least 1 */
	{ W_SUCCESS, 0, 5, 1, 1 },
	{ W_INIT, 0, 1, 1, 1 },
	{ W_INIT, -3, 1, 1, 1 },
	{ W_INIT, 1, 1, 1, 1 },
	{ W_THROTTLED, 0, 1, 1, 1 },
	{ W_SUCCESS, 0, 1, 1, 1 },
};

static void
test_window(void)
{
	const struct window_step *s;
	struct pace_window w;
	char	 what[128];
	size_t	 i;
	int	 r;

	memset(&w, 0, sizeof(w));
	for (i = 0; i < NELEM(window_steps); i++) {
		s = &window_steps[i];
		for (r = 0; r < s->repeat; r++) {
			switch (s->op) {
			case W_INIT:
				pace_window_init(&w, s->arg);
				break;
			case W_SUCCESS:
				pace_window_success(&w);
				break;
			case W_THROTTLED:
				pace_window_throttled(&w);
				break;
			case W_SET_MAX:
				pace_window_set_max(&w, s->arg);
				break;
			}
		}
		snprintf(what, sizeof(what), "window step %zu limit "
		    "(window %.3f)", i, w.window);
		check_long(what, pace_window_limit(&w), s->want_limit,
		    __LINE__);
		snprintf(what, sizeof(what), "window step %zu max", i);
		check_long(what, w.max, s->want_max, __LINE__);
	}
}

/*
 * Additive increase is about one slot per window's worth of successes: from
 * 1 back to 64 takes on the order of 1 + 2 + ... + 63 = 2016 successes, far
 * more than 63 and far fewer than 64 * 64.
 */
static void
test_window_growth_rate(void)
{
	struct pace_window w;
	long	 successes = 0;

	pace_window_init(&w, 64);
	while (pace_window_limit(&w) > 1)
		pace_window_throttled(&w);
	CU_ASSERT_EQUAL(pace_window_limit(&w), 1);
	while (pace_window_limit(&w) < 64 && successes < 100000) {
		pace_window_success(&w);
		successes++;
	}
	CU_ASSERT_EQUAL(pace_window_limit(&w), 64);
	CU_ASSERT_TRUE(successes > 1000);
	CU_ASSERT_TRUE(successes < 3000);
}

/* ------------------------------------------------------------------ */

int
main(void)
{
	CU_pSuite	 suite;
	unsigned int	 failures;

	if (CU_initialize_registry() != CUE_SUCCESS)
		return 2;
	if ((suite = CU_add_suite("pace", NULL, NULL)) == NULL ||
	    CU_add_test(suite, "backoff", test_backoff) == NULL ||
	    CU_add_test(suite, "backoff bounds", test_backoff_bounds) == NULL ||
	    CU_add_test(suite, "retry_after", test_retry_after) == NULL ||
	    CU_add_test(suite, "window", test_window) == NULL ||
	    CU_add_test(suite, "window growth rate",
	    test_window_growth_rate) == NULL) {
		CU_cleanup_registry();
		return 2;
	}
	CU_basic_set_mode(CU_BRM_VERBOSE);
	if (CU_basic_run_tests() != CUE_SUCCESS) {
		CU_cleanup_registry();
		return 2;
	}
	failures = CU_get_number_of_failures();
	CU_cleanup_registry();
	return failures > 0 ? 1 : 0;
}
