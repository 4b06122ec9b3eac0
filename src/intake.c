/*
 * intake.c: the request socket (SPEC §6.1).
 *
 * A connection's framing is fixed by its first byte: '{' means one JSON
 * object per line, answered by JSON lines; anything else is read as a
 * stream of msgpack values, answered by msgpack maps.  Each request is
 * parsed once, here, and pushed to our processing list before anything is
 * acknowledged, then handed over (intake_events' taken) like a request
 * taken from Redis; its result comes back here through intake_answer, in
 * completion order.  How many requests may come in is the orchestrator's
 * to say (intake_room); the pushes on their way count against it.
 *
 * A connection is freed only when it is closed AND no request of it waits
 * on Redis (refs); a closed connection is reported gone, so that no
 * result is answered to it, and a client that goes away loses nothing:
 * its results still go to Redis.
 *
 * What a client may hold is bounded: [socket] max_connections connections
 * (fewer when the descriptor limit leaves fewer, see socket_fd_budget),
 * closed after idle_timeout_s without a byte either way while nothing it
 * asked is pending, and a client that does not read its answers is not
 * read from while INTAKE_OUTPUT_MAX bytes of them wait.
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

/* Answers waiting for a client that does not read: beyond the high mark
 * its requests are not read, until the answers drain below the low one. */
#define INTAKE_OUTPUT_MAX	(1024 * 1024)
#define INTAKE_OUTPUT_LOW	(256 * 1024)

struct intake_conn {
	struct listen_conn	 lc;		/* refs: pushes on their way */
	enum framing		 framing;
	int			 outstanding;	/* requests not yet answered */
	/* framing_next's, between reads */
	struct framing_state	 fs;
	int			 throttled;
	/* not read until answers drain */
	int			 output_full;
};

static struct listen_socket sock;
static long pending_pushes;
static long room_told;		/* intake_room's */
static int throttled;
static const struct intake_events *events;

struct push {
	struct intake_conn	*conn;
	struct socket_request	 r;	/* handed over once pushed */
	int			 wait;
};

static void	 conn_read(struct bufferevent *, void *);

static struct intake_conn *
conn_of(struct listen_conn *lc)
{
	return LISTEN_CONN(lc, struct intake_conn, lc);
}

/* Closing: reported gone, so that no result is answered to it (the
 * results still go to Redis). */
static void
conn_closing(struct listen_conn *lc)
{
	events->gone(conn_of(lc));
}

static void
conn_release(struct listen_conn *lc)
{
	struct intake_conn *c = conn_of(lc);

	framing_state_free(&c->fs);
	free(c);
}

static void
send_value(struct intake_conn *c, const json_t *v)
{
	char *out = NULL;
	size_t len = 0;

	if (c->lc.closed || c->lc.bev == NULL)
		return;
	if (codec_encode(v,
	    c->framing == FRAMING_MSGPACK ? FORMAT_MSGPACK : FORMAT_JSON,
	    &out, &len) != 0)
		return;
	bufferevent_write(c->lc.bev, out, len);
	if (c->framing != FRAMING_MSGPACK)
		bufferevent_write(c->lc.bev, "\n", 1);
	free(out);
}

/* Close once the client said EOF and everything it asked is answered
 * and written out. */
static void
maybe_finish(struct intake_conn *c)
{
	if (c->lc.closed || !c->lc.eof || c->outstanding > 0)
		return;
	listen_conn_close_drained(&c->lc);
}

static void
send_status(struct intake_conn *c, const char *status, const char *request_id)
{
	json_t *v = json_pack("{s:s}", "status", status);

	if (v == NULL)
		return;
	if (request_id != NULL)
		json_object_set_new(v, "request_id", json_string(request_id));
	send_value(c, v);
	json_decref(v);
}

void
intake_answer(struct intake_conn *c, const json_t *result)
{
	send_value(c, result);
	c->outstanding--;
	maybe_finish(c);
}

/* Frees what a request that is not handed over holds. */
static void
request_drop(struct socket_request *r)
{
	free(r->raw);
	free(r->request_id);
	request_free(&r->req);
}

static void
on_pushed(int ok, void *arg)
{
	struct push *p = arg;
	struct intake_conn *c = p->conn;

	pending_pushes--;
	if (!ok) {
		/* Nothing half-done: the request is not in Redis, the client
		 * hears so and may send it again. */
		if (!c->lc.closed) {
			send_status(c, "unavailable", p->r.request_id);
			c->outstanding--;
		}
		request_drop(&p->r);
	} else if (c->lc.closed) {
		events->taken(&p->r, NULL);
	} else if (!p->wait) {
		send_status(c, "queued", p->r.request_id);
		c->outstanding--;
		events->taken(&p->r, NULL);
	} else {
		events->taken(&p->r, c);
	}
	if (!c->lc.closed)
		maybe_finish(c);
	free(p);
	listen_conn_unref(&c->lc);
	intake_throttle(0);
}

/*
 * One frame from a client, parsed here once: the request id is settled so
 * that a "queued" acknowledgement and the later result carry the same one.
 */
static void
submit(struct intake_conn *c, const char *data, size_t len)
{
	struct reply_scope scope;
	struct request any;
	struct push *p;

	if ((p = calloc(1, sizeof(*p))) == NULL) {
		send_status(c, "unavailable", NULL);
		return;
	}
	p->conn = c;
	scope.allowed = ug.cfg->reply_prefix;
	scope.own = ug.cfg->prefix;
	p->r.err = request_parse(data, len, &scope, &p->r.req, p->r.errmsg,
	    sizeof(p->r.errmsg));
	p->wait = p->r.req.wait;
	if (p->r.err == REQ_REPLY_TO_FORBIDDEN) {
		/* The checks stop at a ReplyTo out of scope, before Wait is
		 * read; Wait is honoured as if its scope were not checked. */
		(void)request_parse(data, len, NULL, &any, NULL, 0);
		p->wait = any.wait;
		request_free(&any);
	}
	p->r.len = len;
	p->r.request_id = p->r.req.request_id ? strdup(p->r.req.request_id) :
	    events->new_request_id();
	if ((p->r.raw = malloc(len + 1)) == NULL || p->r.request_id == NULL) {
		request_drop(&p->r);
		free(p);
		send_status(c, "unavailable", NULL);
		return;
	}
	memcpy(p->r.raw, data, len);
	p->r.raw[len] = '\0';
	c->outstanding++;
	if (!queue_connected() ||
	    queue_push_processing(p->r.raw, len, on_pushed, p) != 0) {
		send_status(c, "unavailable", p->r.request_id);
		c->outstanding--;
		request_drop(&p->r);
		free(p);
		return;
	}
	listen_conn_ref(&c->lc);
	pending_pushes++;
}

static int
room(void)
{
	return room_told - pending_pushes > 0;
}

/*
 * Takes the frames that are whole in the input, while there is room; the
 * cutting is framing.c's (see there for the rules).  A JSON line over the
 * frame limit is kept only up to the limit (so the result can say
 * too_large) and the rest skipped.  msgpack has no resynchronisation point,
 * so a value that cannot be parsed, or that grows past the frame limit,
 * ends the connection after its answer.
 */
static void
read_frames(struct intake_conn *c, struct evbuffer *in)
{
	enum frame_status st;
	const char *data;
	size_t have, frame_len, consumed;

	while (!c->lc.closed && room()) {
		have = evbuffer_get_length(in);
		/* A msgpack frame is found in its first UG_FRAME_MAX + 1
		 * bytes; a JSON line's end may be anywhere. */
		if (c->framing == FRAMING_MSGPACK && have > UG_FRAME_MAX + 1)
			have = UG_FRAME_MAX + 1;
		data = NULL;
		if (have > 0 &&
		    (data = (const char *)evbuffer_pullup(in,
		    (ev_ssize_t)have)) == NULL)
			return;	/* out of memory: try on the next read */
		st = framing_next(data, have, c->framing, &c->fs, &frame_len,
		    &consumed);
		if (st == FRAME_NONE)
			return;
		if (st == FRAME_READY)
			submit(c, data, frame_len);	/* copies the frame */
		if (st == FRAME_READY || st == FRAME_SKIP) {
			if (!c->lc.closed)
				evbuffer_drain(in, consumed);
			continue;
		}
		/*
		 * Too large or undecodable msgpack: the bytes go through as
		 * one request, so that they are answered (invalid, too_large
		 * or malformed) with a full result and kept in the dead list
		 * like any bad request (SPEC §4.1); then, the stream being
		 * lost, read no more and hang up once that answer is out.
		 */
		submit(c, data, have);
		if (!c->lc.closed) {
			evbuffer_drain(in, evbuffer_get_length(in));
			c->lc.eof = 1;
			bufferevent_disable(c->lc.bev, EV_READ);
		}
		return;
	}
}

static void
conn_read(struct bufferevent *bev, void *arg)
{
	struct intake_conn *c = arg;
	struct evbuffer *in = bufferevent_get_input(bev);

	if (c->framing == FRAMING_UNKNOWN) {
		char first;

		if (evbuffer_copyout(in, &first, 1) == 1)
			c->framing = framing_detect(&first, 1);
	}
	if (c->output_full)
		return;		/* conn_write reads on once answers drain */
	if (evbuffer_get_length(bufferevent_get_output(bev)) >
	    INTAKE_OUTPUT_MAX) {
		/* The client does not read its answers: read no more of its
		 * requests, whose answers would pile up here too. */
		c->output_full = 1;
		bufferevent_disable(bev, EV_READ);
		return;
	}
	/* Without a first byte yet there is nothing to read, but a client
	 * that left without a word must still be closed below. */
	if (c->framing != FRAMING_UNKNOWN)
		read_frames(c, in);
	if (!c->lc.closed && !room() && evbuffer_get_length(in) > 0) {
		/* Backpressure: stop reading until there is room. */
		bufferevent_disable(bev, EV_READ);
		c->throttled = 1;
		throttled = 1;
	}
	if (!c->lc.closed)
		maybe_finish(c);
}

/* Called when the output drains to INTAKE_OUTPUT_LOW or below. */
static void
conn_write(struct bufferevent *bev, void *arg)
{
	struct intake_conn *c = arg;

	if (c->output_full) {
		c->output_full = 0;
		if (!c->lc.eof && !c->throttled)
			bufferevent_enable(bev, EV_READ);
		/* What is already buffered; ends with maybe_finish, which
		 * may free c: do not touch it after. */
		conn_read(bev, c);
		return;
	}
	maybe_finish(c);
}

static void
conn_event(struct bufferevent *bev, short what, void *arg)
{
	struct intake_conn *c = arg;

	if (what & BEV_EVENT_TIMEOUT) {
		/*
		 * Idle: no byte either way for idle_timeout_s.  A client
		 * waiting for the result of a slow request is not idle; a
		 * client whose answers cannot be written is gone.  libevent
		 * disabled the event that timed out.
		 */
		if ((what & BEV_EVENT_READING) && c->outstanding > 0) {
			bufferevent_enable(bev, EV_READ);
			return;
		}
		log_debug("request socket client idle; closing");
		listen_conn_close(&c->lc);
		return;
	}
	if (what & BEV_EVENT_EOF) {
		/* The client may have only shut its writing side and still
		 * wait for answers: finish what is buffered first. */
		c->lc.eof = 1;
		conn_read(bev, c);	/* ends with maybe_finish, which may
					 * free c: do not touch it after */
		return;
	}
	if (what & BEV_EVENT_ERROR)
		listen_conn_close(&c->lc);
}

void
intake_room(long n)
{
	room_told = n;
}

void
intake_throttle(int stop)
{
	struct listen_conn *lc, *next;
	struct intake_conn *c;

	if (stop || !throttled || !room())
		return;
	throttled = 0;
	for (lc = TAILQ_FIRST(&sock.conns); lc != NULL; lc = next) {
		next = TAILQ_NEXT(lc, link);
		c = conn_of(lc);
		if (!c->throttled || c->lc.closed)
			continue;
		c->throttled = 0;
		if (!c->lc.eof && !c->output_full)
			bufferevent_enable(c->lc.bev, EV_READ);
		conn_read(c->lc.bev, c);	/* what is already buffered */
	}
}

/* The request socket's share of socket_fd_budget. */
static long
connection_limit(void)
{
	long budget = socket_fd_budget() - STATUS_CONN_MAX;

	if (budget < 1)
		budget = 1;
	return budget < ug.cfg->socket_max_connections ? budget :
	    ug.cfg->socket_max_connections;
}

static void
on_accept(int fd)
{
	struct intake_conn *c;

	if (ug.draining) {
		close(fd);
		return;
	}
	/* Refused at once: the client sees its connection closed. */
	if (listen_socket_full(&sock, connection_limit(), "request socket "
	    "connection limit reached; closing new connections") ||
	    (c = calloc(1, sizeof(*c))) == NULL) {
		close(fd);
		return;
	}
	/* conn_write runs when the answers drain to the low mark. */
	if (listen_conn_open(&sock, &c->lc, fd, ug.cfg->socket_idle_timeout_s,
	    INTAKE_OUTPUT_LOW, conn_read, conn_write, conn_event, c) != 0) {
		free(c);
		return;
	}
	bufferevent_enable(c->lc.bev, EV_READ | EV_WRITE);
}

int
intake_init(const struct intake_events *ev)
{
	char want[24], have[24];

	events = ev;
	if (listen_socket_open(&sock, ug.cfg->socket_path, ug.cfg->socket_mode,
	    "request", on_accept, conn_closing, conn_release) != 0)
		return -1;
	if (connection_limit() < ug.cfg->socket_max_connections) {
		snprintf(want, sizeof(want), "%ld",
		    ug.cfg->socket_max_connections);
		snprintf(have, sizeof(have), "%ld", connection_limit());
		log_warn("the descriptor limit (RLIMIT_NOFILE) leaves fewer "
		    "request socket connections than max_connections",
		    "max_connections", want, "limit", have);
	}
	return 0;
}

/*
 * Stops accepting (drain or exit).  Open connections stay until their
 * answers are written or the process ends.
 */
void
intake_shutdown(void)
{
	listen_socket_shutdown(&sock, ug.cfg->socket_path,
	    ug.draining && !event_base_got_exit(ug.base));
}
