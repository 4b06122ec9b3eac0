/*
 * usergatectl top: the live view of the status socket (see usergatectl.h).
 *
 * Each refresh asks `show stats`, `show queue` and `show metrics` on one
 * connection and keeps a sample: the counters and the latency histograms'
 * buckets.  Rates and percentiles are differences between samples, over
 * the last refresh and over the last minute, so they say what the daemon
 * does now, not what it did since it started.  On a terminal the view is
 * drawn with ncurses; elsewhere (or with -b) each refresh prints one line.
 */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <langinfo.h>
#include <locale.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <curses.h>
#include <jansson.h>

#include "usergatectl.h"

#define NELEM(a)	(sizeof(a) / sizeof((a)[0]))
#define MINUTE		60.0
#define HISTORY		601	/* samples: a minute at the shortest interval */
#define HBUCKETS	24	/* more than show metrics' 15 */
#define SPARK_MAX	60	/* columns of a sparkline */
#define KEY_SLICE_MS	200	/* how soon a signal is seen while waiting */

/* The counters top shows a rate of: show stats' key and the row's name. */
static const struct {
	const char	*key;
	const char	*label;
} counters[] = {
	{ "received", "received" },
	{ "created", "created" },
	{ "exists", "exists" },
	{ "duplicate", "duplicate" },
	{ "invalid", "invalid" },
	{ "failed", "failed" },
	{ "retries", "retries" },
	{ "rate_limited", "429s" },
};
#define NCOUNTERS	NELEM(counters)

/* The histograms of show metrics top reads percentiles from. */
static const struct {
	const char	*name;
	const char	*label;
} histograms[] = {
	{ "usergate_twilio_request_duration_seconds", "twilio" },
	{ "usergate_enqueue_to_result_seconds", "result" },
};
#define NHIST		NELEM(histograms)
#define HIST_RESULT	1

struct hist {
	double		 le[HBUCKETS];	/* upper bounds, the last +Inf */
	double		 cum[HBUCKETS];	/* cumulative counts */
	int		 n;
};

struct sample {
	double		 t;		/* CLOCK_MONOTONIC, seconds */
	double		 c[NCOUNTERS];
	struct hist	 h[NHIST];
};

struct view {
	const char	*path;
	double		 interval;
	int		 screen;	/* ncurses, not lines */
	int		 wide;		/* the terminal takes UTF-8 */
	int		 up;		/* the last refresh reached usergated */
	char		 why[512];	/* why not */
	json_t		*stats;		/* the last show stats */
	double		 oldest;	/* show queue's oldest_age_s, or NAN */
	struct sample	 s[HISTORY];	/* oldest first */
	int		 ns;
};

static volatile sig_atomic_t stop;
static FILE *errs;		/* what usergatectl.c says on stderr, kept */
static int saved_stderr = -1;

static void
on_signal(int sig)
{
	stop = 1;
}

/*
 * ctl_connect and read_until say why they fail on stderr, which would
 * scribble over the screen: it goes to a file instead, whose last line
 * top shows as the reason the daemon is not reachable.
 */
static void
keep_stderr(void)
{
	fflush(stderr);
	if ((errs = tmpfile()) == NULL ||
	    (saved_stderr = dup(STDERR_FILENO)) < 0 ||
	    dup2(fileno(errs), STDERR_FILENO) < 0) {
		if (errs != NULL)
			fclose(errs);
		errs = NULL;
	}
}

static void
restore_stderr(void)
{
	if (errs == NULL)
		return;
	fflush(stderr);
	dup2(saved_stderr, STDERR_FILENO);
	close(saved_stderr);
	fclose(errs);
	errs = NULL;
}

/* The last line said on stderr since the last call, without our name. */
static void
last_said(char *buf, size_t size)
{
	char line[512];
	const char *p;

	snprintf(buf, size, "no answer");
	if (errs == NULL)
		return;
	fflush(stderr);
	rewind(errs);
	while (fgets(line, sizeof(line), errs) != NULL) {
		line[strcspn(line, "\n")] = '\0';
		p = line;
		if (strncmp(p, "usergatectl: ", 13) == 0)
			p += 13;
		if (*p != '\0')
			snprintf(buf, size, "%s", p);
	}
	/* stderr shares the file's offset: both start again at 0. */
	if (ftruncate(fileno(errs), 0) == 0)
		rewind(errs);
}

/* One answer to command on fd (malloc'd), or NULL. */
static char *
ask(int fd, const char *command, long timeout_ms)
{
	if (write_all(fd, command, strlen(command)) != 0) {
		fprintf(stderr, "usergatectl: usergated closed the "
		    "connection\n");
		return NULL;
	}
	return read_until(fd, "\n\n", 1, timeout_ms);
}

/* A number of show stats (NAN when null or absent). */
static double
num(json_t *o, const char *key)
{
	json_t *v = json_object_get(o, key);

	return json_is_number(v) ? json_number_value(v) : NAN;
}

static const char *
str(json_t *o, const char *key)
{
	const char *s = json_string_value(json_object_get(o, key));

	return s != NULL ? s : "";
}

/* The buckets of the histograms in show metrics' text. */
static void
parse_metrics(const char *text, struct sample *s)
{
	const char *line, *p;
	char prefix[128];
	size_t i;
	int n;

	for (line = text; line != NULL && *line != '\0';
	    line = (p = strchr(line, '\n')) ? p + 1 : NULL) {
		for (i = 0; i < NHIST; i++) {
			struct hist *h = &s->h[i];

			n = snprintf(prefix, sizeof(prefix), "%s_bucket{le=\"",
			    histograms[i].name);
			if (strncmp(line, prefix, n) != 0 || h->n >= HBUCKETS)
				continue;
			p = line + n;
			h->le[h->n] = strncmp(p, "+Inf", 4) == 0 ? INFINITY :
			    strtod(p, NULL);
			if ((p = strstr(p, "} ")) == NULL)
				continue;
			h->cum[h->n++] = strtod(p + 2, NULL);
		}
	}
}

/*
 * Asks the daemon for a sample.  0, or -1 with why it is not reachable in
 * v->why.
 */
static int
fetch(struct view *v, struct sample *s)
{
	long timeout_ms = 3000 + (long)(v->interval * 1000);
	char *stats = NULL, *queue = NULL, *metrics = NULL;
	json_t *o = NULL, *q;
	size_t i;
	int fd, rv = -1;

	memset(s, 0, sizeof(*s));
	if ((fd = ctl_connect(v->path, 0)) < 0)
		goto out;
	if ((stats = ask(fd, "show stats\n", timeout_ms)) == NULL ||
	    (queue = ask(fd, "show queue\n", timeout_ms)) == NULL ||
	    (metrics = ask(fd, "show metrics\n", timeout_ms)) == NULL)
		goto out;
	if ((o = json_loads(stats, 0, NULL)) == NULL || !json_is_object(o)) {
		fprintf(stderr, "usergatectl: show stats: %s\n", stats);
		goto out;
	}
	s->t = now_monotonic();
	for (i = 0; i < NCOUNTERS; i++)
		s->c[i] = num(o, counters[i].key);
	parse_metrics(metrics, s);
	/* Redis down: show queue answers an error, the age is unknown. */
	v->oldest = NAN;
	if ((q = json_loads(queue, 0, NULL)) != NULL) {
		v->oldest = num(q, "oldest_age_s");
		json_decref(q);
	}
	json_decref(v->stats);
	v->stats = o;
	o = NULL;
	rv = 0;
out:
	if (fd >= 0)
		close(fd);
	free(stats);
	free(queue);
	free(metrics);
	json_decref(o);
	if (rv != 0)
		last_said(v->why, sizeof(v->why));
	return rv;
}

/*
 * Adds a sample to the history, which keeps what the last minute's
 * figures need: samples up to a minute old, and the one just older.
 * A counter that went back means the daemon restarted: the history
 * starts over.
 */
static void
keep(struct view *v, const struct sample *s)
{
	size_t i;
	int drop = 0;

	if (v->ns > 0)
		for (i = 0; i < NCOUNTERS; i++)
			if (s->c[i] < v->s[v->ns - 1].c[i])
				v->ns = 0;
	while (drop + 1 < v->ns && s->t - v->s[drop + 1].t >= MINUTE)
		drop++;
	if (v->ns - drop >= HISTORY)
		drop = v->ns - HISTORY + 1;
	if (drop > 0) {
		memmove(v->s, v->s + drop, (v->ns - drop) * sizeof(v->s[0]));
		v->ns -= drop;
	}
	v->s[v->ns++] = *s;
}

/* Counter i's rate per second between samples a and b (NAN: unknown). */
static double
rate(const struct view *v, int a, int b, size_t i)
{
	double dt;

	if (a < 0 || a >= b || b >= v->ns)
		return NAN;
	dt = v->s[b].t - v->s[a].t;
	return dt > 0 ? (v->s[b].c[i] - v->s[a].c[i]) / dt : NAN;
}

/*
 * The q-quantile of what histogram i observed between the oldest and the
 * newest sample (since start when there is only one), interpolated within
 * its bucket as Prometheus' histogram_quantile does.  NAN: nothing seen.
 */
static double
quantile(const struct view *v, size_t i, double q)
{
	const struct hist *a = &v->s[0].h[i], *b = &v->s[v->ns - 1].h[i];
	double d[HBUCKETS] = { 0 }, rank, lo, below;
	int k, one = v->ns == 1 || a->n != b->n;

	if (b->n == 0)
		return NAN;
	for (k = 0; k < b->n; k++)
		d[k] = b->cum[k] - (one ? 0 : a->cum[k]);
	if (d[b->n - 1] <= 0)
		return NAN;
	rank = q * d[b->n - 1];
	for (k = 0; k < b->n && d[k] < rank; k++)
		;
	if (k == b->n)
		k = b->n - 1;
	lo = k > 0 ? b->le[k - 1] : 0;
	below = k > 0 ? d[k - 1] : 0;
	if (isinf(b->le[k]))
		return lo;	/* past the last bound: the bound */
	if (d[k] <= below)
		return b->le[k];
	return lo + (b->le[k] - lo) * (rank - below) / (d[k] - below);
}

/* A duration for people: 4.2 s, 5m12s, 1h02m, 3d04h. */
static const char *
age(double s, char *buf, size_t size)
{
	long n = (long)s;

	if (isnan(s))
		snprintf(buf, size, "-");
	else if (s < 60)
		snprintf(buf, size, "%.1f s", s);
	else if (n < 3600)
		snprintf(buf, size, "%ldm%02lds", n / 60, n % 60);
	else if (n < 86400)
		snprintf(buf, size, "%ldh%02ldm", n / 3600, n % 3600 / 60);
	else
		snprintf(buf, size, "%ldd%02ldh", n / 86400, n % 86400 / 3600);
	return buf;
}

static const char *
latency(double s, char *buf, size_t size)
{
	if (isnan(s))
		snprintf(buf, size, "-");
	else if (s < 0.01)
		snprintf(buf, size, "%.1f ms", s * 1000);
	else if (s < 1)
		snprintf(buf, size, "%.0f ms", s * 1000);
	else
		snprintf(buf, size, "%.2f s", s);
	return buf;
}

static const char *
number(double x, const char *fmt, char *buf, size_t size)
{
	if (isnan(x))
		snprintf(buf, size, "-");
	else
		snprintf(buf, size, fmt, x);
	return buf;
}

/* ------------------------------------------------------------------ */
/* The screen. */

/* printf at (y, x), cut at the right edge rather than wrapped. */
static void
put(int y, int x, const char *fmt, ...)
{
	char buf[512];
	va_list ap;

	if (y >= LINES || x >= COLS)
		return;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	mvaddnstr(y, x, buf, COLS - x);
}

/* The rates of counter i over the history's intervals, newest rightmost. */
static void
sparkline(const struct view *v, int y, int x, size_t i)
{
	static const wchar_t bars[] = L"\u2581\u2582\u2583\u2584\u2585"
	    "\u2586\u2587\u2588";
	static const char ascii[] = "_.-~=+*#";
	double r[SPARK_MAX], max = 0;
	int n = v->ns - 1, width = SPARK_MAX, k, level;

	if (width > COLS - x - 1)
		width = COLS - x - 1;
	if (n > width)
		n = width;
	x += width - n;		/* the newest at the right end */
	for (k = 0; k < n; k++) {
		r[k] = rate(v, v->ns - 1 - n + k, v->ns - n + k, i);
		if (r[k] > max)
			max = r[k];
	}
	for (k = 0; k < n; k++) {
		if (!(r[k] > 0))
			continue;	/* nothing: left blank */
		level = (int)ceil(r[k] / max * 8) - 1;
		if (level < 0)
			level = 0;
		if (level > 7)
			level = 7;
		if (v->wide)
			mvaddnwstr(y, x + k, &bars[level], 1);
		else
			mvaddch(y, x + k, ascii[level]);
	}
}

static void
draw_health(const struct view *v, int y)
{
	const char *health = str(v->stats, "health");
	int ok = strcmp(health, "ok") == 0;
	attr_t a = A_BOLD | (has_colors() ? COLOR_PAIR(ok ? 2 : 1) : 0);

	put(y, 0, "health");
	attron(a);
	if (ok)
		put(y, 11, "ok");
	else if (strncmp(health, "degraded: ", 10) == 0)
		put(y, 11, "DEGRADED  %s", health + 10);
	else
		put(y, 11, "%s", health);
	attroff(a);
	if (json_is_true(json_object_get(v->stats, "paused")))
		put(y, ok ? 15 : (int)strlen(health) + 14, "(paused)");
}

static void
draw_state(const struct view *v, int y)
{
	json_t *o = v->stats;
	double used = num(o, "rate_window_used");
	double limit = num(o, "rate_window_limit");
	char a[32], b[32], c[32], d[32];

	draw_health(v, y++);
	if (json_is_true(json_object_get(o, "redis_connected")))
		put(y++, 0, "redis      %s  up %s  %s  %s",
		    str(o, "redis_address"),
		    age(num(o, "redis_up_s"), a, sizeof(a)),
		    str(o, "redis_role"),
		    json_is_true(json_object_get(o, "redis_tls")) ? "TLS" :
		    "no TLS");
	else
		put(y++, 0, "redis      %s  DOWN", str(o, "redis_address"));
	put(y++, 0, "queue      depth %s   oldest %s   processing %s   "
	    "dead %s", number(num(o, "queue_depth"), "%.0f", a, sizeof(a)),
	    age(v->oldest, b, sizeof(b)),
	    number(num(o, "processing"), "%.0f", c, sizeof(c)),
	    number(num(o, "dead"), "%.0f", d, sizeof(d)));
	put(y++, 0, "twilio     in flight %.0f / %.0f   window %.0f",
	    num(o, "inflight"), num(o, "max_inflight"), num(o, "window"));
	if (limit > 0 && !isnan(used))
		put(y++, 0, "rate       %.0f / %.0f creates in the window "
		    "(%.0f%%)", used, limit, used * 100 / limit);
	else if (limit > 0)
		put(y++, 0, "rate       - / %.0f creates in the window", limit);
	else
		put(y++, 0, "rate       unlimited (%s creates in the window)",
		    number(used, "%.0f", a, sizeof(a)));
}

static void
draw_latency(const struct view *v, int y)
{
	double span = v->s[v->ns - 1].t - v->s[0].t;
	char p50[32], p90[32], p99[32];
	size_t i;

	for (i = 0; i < NHIST; i++, y++)
		put(y, 0, "%-10s %-6s p50 %-8s p90 %-8s p99 %-8s %s",
		    i == 0 ? "latency" : "", histograms[i].label,
		    latency(quantile(v, i, 0.5), p50, sizeof(p50)),
		    latency(quantile(v, i, 0.9), p90, sizeof(p90)),
		    latency(quantile(v, i, 0.99), p99, sizeof(p99)),
		    i > 0 ? "" : v->ns > 1 && span > 0 ? "(last minute)" :
		    "(since start)");
}

static void
draw_rates(const struct view *v, int y)
{
	char a[32], b[32];
	size_t i;
	int last = v->ns - 1;

	attron(A_BOLD);
	put(y++, 0, "%-10s %10s %9s %9s  %s", "", "total", "/s now",
	    "/s 1 min", "last minute");
	attroff(A_BOLD);
	for (i = 0; i < NCOUNTERS; i++, y++) {
		put(y, 0, "%-10s %10.0f %9s %9s", counters[i].label,
		    v->s[last].c[i],
		    number(rate(v, last - 1, last, i), "%.1f", a, sizeof(a)),
		    number(rate(v, 0, last, i), "%.1f", b, sizeof(b)));
		if (y < LINES)
			sparkline(v, y, 43, i);
	}
}

static void
draw(const struct view *v)
{
	char clock[16], up[32];
	time_t t = time(NULL);

	erase();
	strftime(clock, sizeof(clock), "%H:%M:%S", localtime(&t));
	if (v->up)
		put(0, 0, "usergated %s on %s, up %s", str(v->stats, "version"),
		    str(v->stats, "instance_id"),
		    age(num(v->stats, "uptime_s"), up, sizeof(up)));
	else
		put(0, 0, "usergated");
	put(0, COLS > 8 ? COLS - 8 : 0, "%s", clock);
	if (!v->up) {
		attron(A_BOLD | (has_colors() ? COLOR_PAIR(1) : 0));
		put(2, 0, "not reachable: %s", v->why);
		attroff(A_BOLD | (has_colors() ? COLOR_PAIR(1) : 0));
		put(3, 0, "trying again every %g s", v->interval);
	} else {
		draw_state(v, 2);
		draw_latency(v, 8);
		draw_rates(v, 11);
	}
	attron(A_REVERSE);
	put(LINES - 1, 0, "q quit  %s  every %g s", v->path, v->interval);
	attroff(A_REVERSE);
	refresh();
}

static int
screen_start(struct view *v)
{
	const char *charset;

	setlocale(LC_ALL, "");
	charset = nl_langinfo(CODESET);
	v->wide = charset != NULL && strcmp(charset, "UTF-8") == 0;
	if (newterm(NULL, stdout, stdin) == NULL)
		return -1;
	cbreak();
	noecho();
	keypad(stdscr, TRUE);
	curs_set(0);
	if (has_colors()) {
		start_color();
		use_default_colors();
		init_pair(1, COLOR_RED, -1);
		init_pair(2, COLOR_GREEN, -1);
	}
	return 0;
}

/*
 * Waits until deadline (monotonic seconds), reading keys: 1 when the user
 * quits (q, or a signal), 0 when it is time to refresh.
 */
static int
screen_wait(const struct view *v, double deadline)
{
	double left;
	int ch;

	while (!stop && (left = deadline - now_monotonic()) > 0) {
		timeout(left * 1000 < KEY_SLICE_MS ? (int)(left * 1000) + 1 :
		    KEY_SLICE_MS);
		switch ((ch = getch())) {
		case 'q':
		case 'Q':
			return 1;
		case KEY_RESIZE:
		case 12:	/* ^L */
			draw(v);
			break;
		case ' ':
			return 0;	/* now */
		default:
			break;
		}
	}
	return stop;
}

/* ------------------------------------------------------------------ */
/* Lines, when the output is no terminal. */

static void
print_line(const struct view *v)
{
	json_t *o = v->stats;
	const char *health;
	char stamp[32], a[32], b[32], c[32];
	time_t t = time(NULL);
	size_t i;
	int last = v->ns - 1;

	strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%SZ", gmtime(&t));
	if (!v->up) {
		printf("%s not reachable: %s\n", stamp, v->why);
		return;
	}
	health = str(o, "health");
	printf("%s health=%s", stamp,
	    strncmp(health, "degraded", 8) == 0 ? "degraded" : health);
	if (strncmp(health, "degraded: ", 10) == 0)
		printf(" reason=\"%s\"", health + 10);
	printf(" redis=%s queue=%s oldest_s=%s dead=%s",
	    json_is_true(json_object_get(o, "redis_connected")) ? "up" :
	    "down", number(num(o, "queue_depth"), "%.0f", a, sizeof(a)),
	    number(v->oldest, "%.1f", b, sizeof(b)),
	    number(num(o, "dead"), "%.0f", c, sizeof(c)));
	printf(" inflight=%.0f/%.0f window=%.0f rate_window=%s/%.0f",
	    num(o, "inflight"), num(o, "max_inflight"), num(o, "window"),
	    number(num(o, "rate_window_used"), "%.0f", a, sizeof(a)),
	    num(o, "rate_window_limit"));
	for (i = 0; i < NCOUNTERS; i++)
		printf(" %s=%.0f %s_rate=%s", counters[i].key,
		    v->s[last].c[i], counters[i].key,
		    number(rate(v, last - 1, last, i), "%.1f", a, sizeof(a)));
	printf(" p50_ms=%s p90_ms=%s p99_ms=%s\n",
	    number(quantile(v, HIST_RESULT, 0.5) * 1000, "%.1f", a, sizeof(a)),
	    number(quantile(v, HIST_RESULT, 0.9) * 1000, "%.1f", b, sizeof(b)),
	    number(quantile(v, HIST_RESULT, 0.99) * 1000, "%.1f", c,
	    sizeof(c)));
}

/* Sleeps until deadline; 1 when a signal came. */
static int
lines_wait(double deadline)
{
	double left;

	while (!stop && (left = deadline - now_monotonic()) > 0)
		poll(NULL, 0, left * 1000 < KEY_SLICE_MS ?
		    (int)(left * 1000) + 1 : KEY_SLICE_MS);
	return stop;
}

/* ------------------------------------------------------------------ */

static void
top_usage(FILE *f)
{
	fprintf(f, "usage: usergatectl [-s STATUS_SOCK] top [-b] [-d SECONDS] "
	    "[-n COUNT] [--once]\n"
	    "  -b, --batch           lines, even on a terminal\n"
	    "  -d, --interval S      seconds between refreshes (default 1)\n"
	    "  -n, --iterations N    stop after N refreshes\n"
	    "      --once            one refresh (-n 1)\n"
	    "keys: q quit, space refresh now\n");
}

/* top's options into v and *count: -1 to go on, or an exit status. */
static int
top_options(int argc, char **argv, struct view *v, long *count, int *batch)
{
	static const struct option opts[] = {
		{ "batch", no_argument, NULL, 'b' },
		{ "interval", required_argument, NULL, 'd' },
		{ "iterations", required_argument, NULL, 'n' },
		{ "once", no_argument, NULL, '1' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	char *end;
	int ch;

	optind = 0;	/* full re-initialisation after main's getopt */
	while ((ch = getopt_long(argc, argv, "bd:n:h", opts, NULL)) != -1) {
		switch (ch) {
		case 'b':
			*batch = 1;
			break;
		case 'd':
			v->interval = strtod(optarg, &end);
			if (*end != '\0' || !(v->interval >= 0.1) ||
			    v->interval > 3600) {
				fprintf(stderr, "usergatectl: --interval takes "
				    "seconds, 0.1 to 3600\n");
				return 2;
			}
			break;
		case 'n':
			*count = strtol(optarg, &end, 10);
			if (*end != '\0' || *count <= 0) {
				fprintf(stderr, "usergatectl: --iterations "
				    "takes a count > 0\n");
				return 2;
			}
			break;
		case '1':
			*count = 1;
			break;
		case 'h':
			top_usage(stdout);
			return 0;
		default:
			top_usage(stderr);
			return 2;
		}
	}
	if (optind != argc) {
		fprintf(stderr, "usergatectl: top takes no arguments\n");
		top_usage(stderr);
		return 2;
	}
	return -1;
}

int
ctl_top(int argc, char **argv, const char *status_path)
{
	static struct view v;
	struct sigaction sa;
	struct sample s;
	double next;
	long count = 0, done;
	int batch = 0, rv, quit = 0;

	v.path = status_path;
	v.interval = 1;
	if ((rv = top_options(argc, argv, &v, &count, &batch)) != -1)
		return rv;
	/* No SA_RESTART: a signal ends the wait at once. */
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
	keep_stderr();
	v.screen = !batch && isatty(STDOUT_FILENO);
	if (v.screen && screen_start(&v) != 0) {
		v.screen = 0;	/* TERM unknown: lines will do */
		fprintf(stdout, "usergatectl: no terminal description for "
		    "TERM, printing lines\n");
	}
	if (!v.screen)
		setvbuf(stdout, NULL, _IOLBF, 0);
	next = now_monotonic();
	for (done = 0; !quit && (count == 0 || done < count); done++) {
		if (done > 0)
			quit = v.screen ? screen_wait(&v, next) :
			    lines_wait(next);
		if (quit)
			break;
		next = now_monotonic() + v.interval;
		if ((v.up = fetch(&v, &s) == 0))
			keep(&v, &s);
		else
			v.ns = 0;	/* the rates start again */
		if (v.screen)
			draw(&v);
		else
			print_line(&v);
	}
	if (v.screen)
		endwin();
	restore_stderr();
	json_decref(v.stats);
	/* Counted refreshes are a script's: say whether the last one worked. */
	return count > 0 && !v.up ? 2 : 0;
}
