/*
 * status.c: the status socket (SPEC §6.2).  One command per line; every
 * answer ends with an empty line, so `socat - UNIX-CONNECT:...` and scripts
 * can tell where an answer stops.
 *
 * Commands that need Redis answer later; a connection reads its next line
 * only after the current answer is written, so answers never overtake each
 * other.  A client silent for 30 s is closed.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "daemon.h"

#define STATUS_IDLE_S		30
#define STATUS_INPUT_MAX	(64 * 1024) /* bytes read ahead of answers */
/* Answers waiting for a client that sends commands without reading them:
 * beyond the high mark no command is read until they drain to the low. */
#define STATUS_OUTPUT_MAX	(1024 * 1024)
#define STATUS_OUTPUT_LOW	(256 * 1024)
#define PAUSE_POLL_MS		10
#define PAUSE_WAIT_MAX_S	5

struct status_conn {
	struct listen_conn	 lc;
	/* an answer is being prepared */
	int			 busy;
	/* close once the output is written */
	int			 closing;
};

static struct listen_socket sock;
static const struct status_hooks *hooks;

static const char help_text[] =
	"show stats        counters and state, one JSON object\n"
	"show metrics      Prometheus text exposition\n"
	"show queue        queue lengths, one JSON object\n"
	"health            ok, or degraded: REASON\n"
	"pause             stop taking requests (in-flight ones finish)\n"
	"resume            take requests again\n"
	"reload            reload the configuration (as SIGHUP)\n"
	"dead list [N]     the newest N dead entries (default 10), "
	"one JSON per line\n"
	"dead retry [N|all] move dead requests back to the request list\n"
	"help              this list\n";

static void	 conn_read(struct bufferevent *, void *);

static void
conn_release(struct listen_conn *lc)
{
	free(LISTEN_CONN(lc, struct status_conn, lc));
}

/* Writes text and the empty line that ends every answer. */
static void
answer(struct status_conn *c, const char *text)
{
	size_t len = strlen(text);

	if (c->lc.closed)
		return;
	bufferevent_write(c->lc.bev, text, len);
	if (len == 0 || text[len - 1] != '\n')
		bufferevent_write(c->lc.bev, "\n", 1);
	bufferevent_write(c->lc.bev, "\n", 1);
}

static void
answer_json(struct status_conn *c, json_t *v)
{
	char *s = v ? json_dumps(v, JSON_COMPACT) : NULL;

	answer(c, s ? s : "error: out of memory");
	free(s);
	json_decref(v);
}

/* After EOF: close once every line is answered and written out. */
static void
maybe_close(struct status_conn *c)
{
	if (c->lc.closed || c->busy || !(c->lc.eof || c->closing))
		return;
	c->closing = 1;
	listen_conn_close_drained(&c->lc);
}

/* Called when an asynchronous answer is written: go on reading. */
static void
done(struct status_conn *c)
{
	c->busy = 0;
	if (!c->lc.closed) {
		conn_read(c->lc.bev, c);
		maybe_close(c);
	}
	listen_conn_unref(&c->lc);
}

static void
gather(struct stats_gauges *g, char *health, size_t hsize)
{
	double up;

	memset(g, 0, sizeof(*g));
	g->version = PACKAGE_VERSION;
	g->health = daemon_health(health, hsize);
	g->redis_connected = ug.redis_up;
	g->redis_role = queue_role();
	g->paused = ug.paused;
	/* Twilio requests, what max_inflight bounds (not the jobs held). */
	g->inflight = http_inflight();
	g->max_inflight = ug.cfg->max_inflight;
	queue_last_lengths(&g->queue_depth, &g->processing, &g->dead);
	g->uptime_s = now_monotonic() - ug.started;
	g->instance_id = ug.cfg->instance_id;
	queue_link_stats(&g->redis_address, &g->redis_tls, &up);
	g->redis_up_s = up >= 0 ? (long long)up : -1;
	g->window = ug.window;
	g->rate_window_used = queue_last_rate_used();
	g->rate_window_limit = ug.cfg->rate_limit * ug.cfg->rate_window_s;
	g->rate_window_s = ug.cfg->rate_window_s;
}

/* The gauges with the lengths read fresh from Redis. */
struct gauges_call {
	void		(*done)(const struct stats_gauges *, void *);
	void		*arg;
};

static void
on_gauges_lengths(int ok, long long requests, long long processing,
    long long dead, double oldest, void *arg)
{
	struct gauges_call *gc = arg;
	struct stats_gauges g;
	char health[160];

	gather(&g, health, sizeof(health));
	if (ok) {
		g.queue_depth = requests;
		g.processing = processing;
		g.dead = dead;
	}
	gc->done(&g, gc->arg);
	free(gc);
}

int
status_gauges(void (*cb)(const struct stats_gauges *, void *), void *arg)
{
	struct gauges_call *gc = calloc(1, sizeof(*gc));

	if (gc == NULL)
		return -1;
	gc->done = cb;
	gc->arg = arg;
	/* Redis down: say null */
	if (queue_lengths(on_gauges_lengths, gc) != 0)
		on_gauges_lengths(0, -1, -1, -1, 0, gc);
	return 0;
}

/* show stats / show metrics */
struct stats_call {
	struct status_conn	*c;
	int			 metrics;
};

static void
on_stats_gauges(const struct stats_gauges *g, void *arg)
{
	struct stats_call *sc = arg;

	if (sc->metrics) {
		char *text = stats_prometheus(g);

		answer(sc->c, text ? text : "error: out of memory");
		free(text);
	} else {
		answer_json(sc->c, stats_json(g));
	}
	done(sc->c);
	free(sc);
}

static void
show_stats(struct status_conn *c, int metrics)
{
	struct stats_call *sc = calloc(1, sizeof(*sc));

	if (sc == NULL) {
		answer(c, "error: out of memory");
		return;
	}
	sc->c = c;
	sc->metrics = metrics;
	c->busy = 1;
	listen_conn_ref(&c->lc);
	if (status_gauges(on_stats_gauges, sc) != 0) {
		free(sc);
		answer(c, "error: out of memory");
		done(c);
	}
}

static void
on_queue_lengths(int ok, long long requests, long long processing,
    long long dead, double oldest, void *arg)
{
	struct status_conn *c = arg;

	if (!ok)
		answer(c, "error: redis unavailable");
	else
		answer_json(c, json_pack("{s:I, s:I, s:I, s:f}",
		    "depth", (json_int_t)requests,
		    "processing", (json_int_t)processing,
		    "dead", (json_int_t)dead, "oldest_age_s", oldest));
	done(c);
}

static void
on_dead_lines(int ok, char **lines, size_t n, void *arg)
{
	struct status_conn *c = arg;
	size_t i;

	if (!ok) {
		answer(c, "error: redis unavailable");
	} else if (!c->lc.closed) {
		for (i = 0; i < n; i++) {
			bufferevent_write(c->lc.bev, lines[i],
			    strlen(lines[i]));
			bufferevent_write(c->lc.bev, "\n", 1);
		}
		bufferevent_write(c->lc.bev, "\n", 1);
	}
	done(c);
}

static void
on_dead_retry(long long moved, void *arg)
{
	struct status_conn *c = arg;

	if (moved < 0)
		answer(c, "error: redis unavailable");
	else
		answer_json(c, json_pack("{s:I}", "moved", (json_int_t)moved));
	done(c);
}

/*
 * pause says ok only once no take and no BLMOVE is on its way to Redis, so
 * that a producer who pushes after reading "ok" finds its request still in
 * the list.  queue_unblock ends a waiting BLMOVE at once; a take in flight,
 * or a BLMOVE not blocking yet, ends within a round trip or the block
 * timeout.  Past PAUSE_WAIT_MAX_S (Redis stuck) the answer is ok anyway:
 * intake is paused, only that last reply is still out.
 */
struct pause_wait {
	struct status_conn	*c;
	struct event		*ev;
	double			 deadline;
};

static void
pause_check(evutil_socket_t fd, short what, void *arg)
{
	struct pause_wait *pw = arg;
	struct timeval tv = { 0, PAUSE_POLL_MS * 1000 };

	if (queue_intake_busy() && now_monotonic() < pw->deadline &&
	    evtimer_add(pw->ev, &tv) == 0)
		return;
	event_free(pw->ev);
	answer(pw->c, "ok");
	done(pw->c);
	free(pw);
}

static void
pause_intake(struct status_conn *c)
{
	struct pause_wait *pw;

	if (!ug.paused)
		log_info("intake paused by operator");
	ug.paused = 1;
	queue_unblock();
	state_changed();
	if (!queue_intake_busy()) {
		answer(c, "ok");
		return;
	}
	if ((pw = calloc(1, sizeof(*pw))) == NULL ||
	    (pw->ev = evtimer_new(ug.base, pause_check, pw)) == NULL) {
		free(pw);
		answer(c, "ok");
		return;
	}
	pw->c = c;
	pw->deadline = now_monotonic() + PAUSE_WAIT_MAX_S;
	c->busy = 1;
	listen_conn_ref(&c->lc);
	pause_check(-1, 0, pw);
}

static int
async_start(struct status_conn *c, int rv)
{
	if (rv != 0) {
		answer(c, "error: redis unavailable");
		return -1;
	}
	c->busy = 1;
	listen_conn_ref(&c->lc);
	return 0;
}

/* Runs one parsed command: answers, or starts an answer. */
static void
command(struct status_conn *c, const char *line, size_t len)
{
	struct status_command cmd;
	char err[512], h[160], msg[600];

	status_parse(line, len, &cmd);
	switch (cmd.verb) {
	case STATUS_EMPTY:
		break;		/* an empty line: nothing to answer */
	case STATUS_SHOW_STATS:
		show_stats(c, 0);
		break;
	case STATUS_SHOW_METRICS:
		show_stats(c, 1);
		break;
	case STATUS_SHOW_QUEUE:
		async_start(c, queue_lengths(on_queue_lengths, c));
		break;
	case STATUS_HEALTH:
		answer(c, daemon_health(h, sizeof(h)));
		break;
	case STATUS_PAUSE:
		pause_intake(c);
		break;
	case STATUS_RESUME:
		if (ug.paused)
			log_info("intake resumed by operator");
		ug.paused = 0;
		hooks->resumed();
		state_changed();
		answer(c, "ok");
		break;
	case STATUS_RELOAD:
		if (hooks->reload(err, sizeof(err)) == 0)
			answer(c, "ok");
		else {
			snprintf(msg, sizeof(msg), "error: %s", err);
			answer(c, msg);
		}
		break;
	case STATUS_DEAD_LIST:
		async_start(c, queue_dead_list(cmd.count, on_dead_lines, c));
		break;
	case STATUS_DEAD_RETRY:
		async_start(c, queue_dead_retry(cmd.count, on_dead_retry, c));
		break;
	case STATUS_HELP:
		answer(c, help_text);
		break;
	case STATUS_ERROR:
		answer(c, cmd.error);
		break;
	}
}

static void
conn_read(struct bufferevent *bev, void *arg)
{
	struct status_conn *c = arg;
	struct evbuffer *in = bufferevent_get_input(bev);
	char *line;
	size_t len;

	while (!c->lc.closed && !c->busy && !c->closing) {
		/* Read on in conn_write, once the client took its answers. */
		if (evbuffer_get_length(bufferevent_get_output(bev)) >
		    STATUS_OUTPUT_MAX) {
			bufferevent_disable(bev, EV_READ);
			return;
		}
		line = evbuffer_readln(in, &len, EVBUFFER_EOL_ANY);
		/*
		 * A line over the limit is answered, and the connection
		 * closed, whether its end has arrived yet or not: which of
		 * the two it is depends only on how the kernel cut the bytes,
		 * and the client should not see a difference.
		 */
		if (line == NULL ? evbuffer_get_length(in) > STATUS_LINE_MAX :
		    len > STATUS_LINE_MAX) {
			free(line);
			answer(c, "error: line too long");
			c->closing = 1;
			bufferevent_disable(bev, EV_READ);
			return;
		}
		if (line == NULL)
			return;
		command(c, line, len);
		free(line);
	}
}

/* Called when the output drains to STATUS_OUTPUT_LOW or below. */
static void
conn_write(struct bufferevent *bev, void *arg)
{
	struct status_conn *c = arg;

	if (!c->lc.eof && !c->closing &&
	    !(bufferevent_get_enabled(bev) & EV_READ)) {
		bufferevent_enable(bev, EV_READ);
		conn_read(bev, c);
	}
	maybe_close(c);
}

static void
conn_event(struct bufferevent *bev, short what, void *arg)
{
	struct status_conn *c = arg;

	if (what & BEV_EVENT_EOF) {
		/* A client that shut its writing side still gets its answers
		 * (`echo health | socat - UNIX-CONNECT:...`). */
		c->lc.eof = 1;
		conn_read(bev, c);
		maybe_close(c);
		return;
	}
	listen_conn_close(&c->lc);	/* error or idle timeout */
}

static void
on_accept(int fd)
{
	struct status_conn *c;

	/* Operators need few; the descriptors are kept for Twilio. */
	if (listen_socket_full(&sock, STATUS_CONN_MAX, NULL) ||
	    (c = calloc(1, sizeof(*c))) == NULL) {
		close(fd);
		return;
	}
	/* The idle timeout also ends a client that takes none of its
	 * answers for that long. */
	if (listen_conn_open(&sock, &c->lc, fd, STATUS_IDLE_S,
	    STATUS_OUTPUT_LOW, conn_read, conn_write, conn_event, c) != 0) {
		free(c);
		return;
	}
	/* Commands sent ahead of their answers wait in the input buffer;
	 * beyond this much, stop reading until they are answered. */
	bufferevent_setwatermark(c->lc.bev, EV_READ, 0, STATUS_INPUT_MAX);
	bufferevent_enable(c->lc.bev, EV_READ | EV_WRITE);
}

int
status_init(const struct status_hooks *h)
{
	hooks = h;
	return listen_socket_open(&sock, ug.cfg->status_path,
	    ug.cfg->status_mode, "status", on_accept, NULL, conn_release);
}

void
status_shutdown(void)
{
	listen_socket_shutdown(&sock, ug.cfg->status_path, 0);
}
