/*
 * The import's sink through the request socket (see usergatectl.h): one
 * connection, JSON lines with "Wait": true, answers in completion order
 * paired by request_id (docs/protocol.md section 7).  Every request sent
 * is kept until its answer, so that one answered {"status":"unavailable"}
 * (usergated cannot reach Redis) can be sent again after a backoff.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <jansson.h>

#include "usergate.h"
#include "usergatectl.h"

#define SOCK_BUCKETS		1024
#define RESEND_BASE_MS		100
#define RESEND_MAX_MS		5000

/* A request sent and not answered yet. */
struct sent {
	char		*request_id;
	char		*line;		/* with Wait and its newline */
	size_t		 len;
	long		 attempts;	/* answered unavailable so far */
	struct event	*resend;	/* while waiting to be sent again */
	struct sock_sink *sink;
	struct sent	*next;
};

struct sock_sink {
	struct ctl_sink		 base;
	struct event_base	*evb;
	struct bufferevent	*bev;
	struct ctl_sink_events	 ev;
	struct event		*start;	/* tells ready() from the loop */
	struct sent		*buckets[SOCK_BUCKETS];
	int			 lost;
};

static unsigned
bucket_of(const char *id)
{
	unsigned h = 2166136261u;

	while (*id != '\0')
		h = (h ^ (unsigned char)*id++) * 16777619u;
	return h % SOCK_BUCKETS;
}

/* Unlinks and returns the request of id, or NULL. */
static struct sent *
sent_take(struct sock_sink *s, const char *id)
{
	struct sent **pp;

	for (pp = &s->buckets[bucket_of(id)]; *pp != NULL;
	    pp = &(*pp)->next) {
		struct sent *e = *pp;

		if (strcmp(e->request_id, id) == 0) {
			*pp = e->next;
			return e;
		}
	}
	return NULL;
}

static void
sent_free(struct sent *e)
{
	if (e->resend != NULL)
		event_free(e->resend);
	free(e->request_id);
	free(e->line);
	free(e);
}

static void
sink_lost(struct sock_sink *s, const char *reason)
{
	if (s->lost)
		return;
	s->lost = 1;
	s->ev.lost(reason, s->ev.arg);
}

static void
on_resend(evutil_socket_t fd, short what, void *arg)
{
	struct sent *e = arg;

	(void)fd;
	(void)what;
	if (bufferevent_write(e->sink->bev, e->line, e->len) != 0)
		sink_lost(e->sink, "cannot write to the request socket");
}

/* usergated could not store the request (Redis down): again, later. */
static void
resend_later(struct sock_sink *s, struct sent *e)
{
	struct timeval tv;
	long ms;

	e->attempts++;
	ms = pace_backoff_ms(e->attempts, RESEND_BASE_MS, RESEND_MAX_MS, 0,
	    (double)random() / ((double)RAND_MAX + 1));
	if (ms < RESEND_BASE_MS)
		ms = RESEND_BASE_MS;
	if (e->resend == NULL &&
	    (e->resend = evtimer_new(s->evb, on_resend, e)) == NULL) {
		sink_lost(s, "out of memory");
		return;
	}
	tv.tv_sec = ms / 1000;
	tv.tv_usec = (ms % 1000) * 1000;
	evtimer_add(e->resend, &tv);
}

static void
answer(struct sock_sink *s, const char *text, size_t len)
{
	json_error_t jerr;
	json_t *res;
	const char *id, *status;
	struct sent *e;

	if ((res = json_loadb(text, len, 0, &jerr)) == NULL ||
	    !json_is_object(res)) {
		json_decref(res);
		sink_lost(s, "unreadable answer from usergated");
		return;
	}
	id = json_string_value(json_object_get(res, "request_id"));
	status = json_string_value(json_object_get(res, "status"));
	if (id == NULL || (e = sent_take(s, id)) == NULL) {
		/* Only an answer to a request we cannot name lacks it. */
		json_decref(res);
		sink_lost(s, "an answer from usergated without a request we "
		    "sent");
		return;
	}
	if (status != NULL && strcmp(status, "unavailable") == 0) {
		/* Back in its bucket until the resend is answered. */
		e->next = s->buckets[bucket_of(id)];
		s->buckets[bucket_of(id)] = e;
		resend_later(s, e);
		json_decref(res);
		return;
	}
	s->ev.result(e->request_id, res, s->ev.arg);
	sent_free(e);
	json_decref(res);
}

static void
on_read(struct bufferevent *bev, void *arg)
{
	struct sock_sink *s = arg;
	struct evbuffer *in = bufferevent_get_input(bev);
	size_t len;
	char *line;

	while (!s->lost &&
	    (line = evbuffer_readln(in, &len, EVBUFFER_EOL_LF)) != NULL) {
		if (len > 0)
			answer(s, line, len);
		free(line);
	}
}

static void
on_event(struct bufferevent *bev, short what, void *arg)
{
	struct sock_sink *s = arg;
	int e = EVUTIL_SOCKET_ERROR();
	char reason[256];

	(void)bev;
	/* A write may see the hang-up before a read does. */
	if ((what & BEV_EVENT_EOF) || e == EPIPE || e == ECONNRESET)
		snprintf(reason, sizeof(reason),
		    "usergated closed the request socket");
	else
		snprintf(reason, sizeof(reason), "request socket: %s",
		    evutil_socket_error_to_string(e));
	sink_lost(s, reason);
}

static void
on_start(evutil_socket_t fd, short what, void *arg)
{
	struct sock_sink *s = arg;

	(void)fd;
	(void)what;
	s->ev.ready(s->ev.arg);
}

static int
sock_send(struct ctl_sink *sink, const char *json, size_t len, char *err,
    size_t errlen)
{
	struct sock_sink *s = (struct sock_sink *)sink;
	json_error_t jerr;
	struct sent *e;
	const char *id;
	json_t *req;
	unsigned b;

	if ((req = json_loadb(json, len, 0, &jerr)) == NULL ||
	    (id = json_string_value(json_object_get(req, "RequestId"))) ==
	    NULL) {
		json_decref(req);
		snprintf(err, errlen, "a request without RequestId");
		return -1;
	}
	if ((e = calloc(1, sizeof(*e))) == NULL ||
	    (e->request_id = strdup(id)) == NULL ||
	    (e->line = malloc(len + sizeof("{\"Wait\":true,}\n"))) == NULL) {
		json_decref(req);
		if (e != NULL)
			sent_free(e);
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	json_decref(req);
	/* The text is an object ("{...}"): Wait goes first in it. */
	e->len = (size_t)sprintf(e->line, "{\"Wait\":true%s%.*s\n",
	    len > 2 ? "," : "}", len > 2 ? (int)(len - 1) : 0, json + 1);
	e->sink = s;
	b = bucket_of(e->request_id);
	e->next = s->buckets[b];
	s->buckets[b] = e;
	if (bufferevent_write(s->bev, e->line, e->len) != 0) {
		snprintf(err, errlen, "cannot write to the request socket");
		return -1;
	}
	return 0;
}

static void
sock_close(struct ctl_sink *sink)
{
	struct sock_sink *s = (struct sock_sink *)sink;
	size_t i;

	for (i = 0; i < SOCK_BUCKETS; i++) {
		while (s->buckets[i] != NULL) {
			struct sent *e = s->buckets[i];

			s->buckets[i] = e->next;
			sent_free(e);
		}
	}
	if (s->start != NULL)
		event_free(s->start);
	if (s->bev != NULL)
		bufferevent_free(s->bev);
	free(s);
}

static const struct ctl_sink_ops sock_ops = {
	.send = sock_send,
	.finished = NULL,
	.close = sock_close,
};

struct ctl_sink *
ctl_sink_socket(struct event_base *base, const char *path,
    const struct ctl_sink_events *ev, char *err, size_t errlen)
{
	struct sock_sink *s;
	int fd;

	/* ctl_connect has said why it failed, permission denied included. */
	if ((fd = ctl_connect(path, 0)) < 0) {
		snprintf(err, errlen, "%s", "");
		return NULL;
	}
	if ((s = calloc(1, sizeof(*s))) == NULL) {
		close(fd);
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	s->base.ops = &sock_ops;
	s->evb = base;
	s->ev = *ev;
	evutil_make_socket_nonblocking(fd);
	s->bev = bufferevent_socket_new(base, fd, BEV_OPT_CLOSE_ON_FREE);
	s->start = evtimer_new(base, on_start, s);
	if (s->bev == NULL || s->start == NULL) {
		if (s->bev == NULL)
			close(fd);
		sock_close(&s->base);
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	bufferevent_setcb(s->bev, on_read, NULL, on_event, s);
	bufferevent_enable(s->bev, EV_READ | EV_WRITE);
	event_active(s->start, EV_TIMEOUT, 0);
	return &s->base;
}
