/*
 * queue_admin.c: what the status socket and the stats ask of Redis: the
 * lengths of our lists and the age of the oldest request, the dead list,
 * and retrying what is in it.
 */
#include "config.h"

#include <sys/types.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "queue_int.h"

static long long last_requests = -1, last_processing = -1, last_dead = -1;

/*
 * The element at the head of the request list, for the queue's age; an
 * oversize one is named by its first bytes and length, never read whole.
 */
const char queue_head_lua[] =
	"local v = redis.call('LINDEX', KEYS[1], -1)\n"
	"if v and #v > tonumber(ARGV[1]) then\n"
	"  return string.sub(v, 1, tonumber(ARGV[1])) .. #v\n"
	"end\n"
	"return v\n";

/*
 * Requests carry no enqueue time, so the age of the oldest one waiting is
 * measured by watching the head of the list (LINDEX -1, every second): the
 * time since the element now at the head was first seen there.  It reads
 * low by up to a second, but grows as it should when the queue is stuck.
 */
static char *head_seen;
static size_t head_seen_len;
static double head_since;

static void
on_head(struct queue_conn *ac, redisReply *reply, void *priv)
{
	const redisReply *r = reply;

	if (queue_is_noscript(r))
		queue_scripts_reload();
	if (r == NULL || r->type == REDIS_REPLY_ERROR)
		return;
	if (r->type != REDIS_REPLY_STRING) {
		free(head_seen);
		head_seen = NULL;
		head_seen_len = 0;
		return;
	}
	if (head_seen != NULL && head_seen_len == r->len &&
	    memcmp(head_seen, r->str, r->len) == 0)
		return;
	free(head_seen);
	if ((head_seen = malloc(r->len ? r->len : 1)) != NULL)
		memcpy(head_seen, r->str, r->len);
	head_seen_len = r->len;
	head_since = now_monotonic();
}

static double
oldest_age(void)
{
	double queued = head_seen != NULL ? now_monotonic() - head_since : 0;
	double taken = queue_events->oldest_age();

	return queued > taken ? queued : taken;
}

struct lengths_call {
	struct queue_call	 call;
	long long		 v[3];
	int			 got, failed;
};

static void
on_length(struct queue_conn *ac, redisReply *reply, void *priv)
{
	const redisReply *r = reply;
	struct lengths_call *c = priv;

	if (r != NULL && r->type == REDIS_REPLY_INTEGER)
		c->v[c->got] = r->integer;
	else
		c->failed = 1;
	if (++c->got < 3)
		return;
	if (!c->failed) {
		last_requests = c->v[0];
		last_processing = c->v[1];
		last_dead = c->v[2];
	}
	if (c->call.cb.lengths)
		c->call.cb.lengths(!c->failed, c->v[0], c->v[1], c->v[2],
		    oldest_age(), c->call.arg);
	free(c);
}

int
queue_lengths(queue_lengths_cb *cb, void *arg)
{
	struct lengths_call *c;

	if (!queue_ready || (c = calloc(1, sizeof(*c))) == NULL)
		return -1;
	c->call.cb.lengths = cb;
	c->call.arg = arg;
	queue_send_strings(queue_cmd, on_head, NULL, 5, "EVALSHA",
	    queue_script_sha[SCRIPT_HEAD], "1", queue_keys.requests,
	    OVERSIZE_HEAD);
	queue_rate_count();
	/* Three commands on one ordered link: the callbacks run in order
	 * and exactly once each, so the last one frees c. */
	if (queue_send_strings(queue_cmd, on_length, c, 2, "LLEN",
	    queue_keys.requests) != 0) {
		free(c);
		return -1;
	}
	if (queue_send_strings(queue_cmd, on_length, c, 2, "LLEN",
	    queue_keys.processing) != 0)
		c->got++, c->failed = 1;
	if (queue_send_strings(queue_cmd, on_length, c, 2, "LLEN",
	    queue_keys.dead) != 0) {
		c->failed = 1;
		if (++c->got == 3) {
			free(c);
			return -1;
		}
	}
	return 0;
}

void
queue_last_lengths(long long *requests, long long *processing, long long *dead)
{
	*requests = ug.redis_up ? last_requests : -1;
	*processing = ug.redis_up ? last_processing : -1;
	*dead = ug.redis_up ? last_dead : -1;
}

static void
on_dead_range(struct queue_conn *ac, redisReply *reply, void *priv)
{
	const redisReply *r = reply;
	struct queue_call *c = priv;
	char **lines = NULL;
	size_t i, n = 0;
	int ok = r != NULL && r->type == REDIS_REPLY_ARRAY;

	if (ok && r->elements > 0) {
		lines = calloc(r->elements, sizeof(*lines));
		for (i = 0; lines != NULL && i < r->elements; i++) {
			if (r->element[i]->type != REDIS_REPLY_STRING)
				continue;
			lines[n] = record_dead_line(r->element[i]->str,
			    r->element[i]->len);
			if (lines[n] != NULL)
				n++;
		}
	}
	c->cb.lines(ok, lines, n, c->arg);
	for (i = 0; i < n; i++)
		free(lines[i]);
	free(lines);
	free(c);
}

/* Asks for the dead list's entries 0 to stop, whose reply fn hands to
 * the caller of call. */
static int
dead_range(long stop, queue_conn_cb *fn, struct queue_call call)
{
	struct queue_call *c;
	char s[32];

	if (!queue_ready || (c = malloc(sizeof(*c))) == NULL)
		return -1;
	*c = call;
	snprintf(s, sizeof(s), "%ld", stop);
	if (queue_send_strings(queue_cmd, fn, c, 4, "LRANGE", queue_keys.dead,
	    "0", s) != 0) {
		free(c);
		return -1;
	}
	return 0;
}

int
queue_dead_list(long n, queue_lines_cb *cb, void *arg)
{
	struct queue_call call = { .cb.lines = cb, .arg = arg };

	return dead_range(n - 1, on_dead_range, call);
}

static void
on_retry_exec(struct queue_conn *ac, redisReply *reply, void *priv)
{
	const redisReply *r = reply;
	struct queue_call *c = priv;
	long long moved = -1;
	size_t i;

	if (r != NULL && r->type == REDIS_REPLY_ARRAY) {
		/* Pairs of RPUSH, LREM: count the entries really removed from
		 * the dead list (another operator may have raced us). */
		moved = 0;
		for (i = 1; i < r->elements; i += 2)
			if (r->element[i]->type == REDIS_REPLY_INTEGER &&
			    r->element[i]->integer > 0)
				moved++;
	}
	c->cb.count(moved, c->arg);
	free(c);
}

/*
 * Dead entries are {request, result}; a retry puts the request back at the
 * head of the request list (JSON text of the decoded request) and removes
 * exactly that dead entry, both in one transaction.  Entries whose request
 * could not be decoded in the first place are left where they are: a retry
 * could only fail the same way.
 */
static void
on_retry_range(struct queue_conn *ac, redisReply *reply, void *priv)
{
	const redisReply *r = reply;
	struct queue_call *c = priv;
	size_t i, queued = 0;

	if (r == NULL || r->type != REDIS_REPLY_ARRAY || queue_cmd == NULL) {
		c->cb.count(-1, c->arg);
		free(c);
		return;
	}
	queue_send_strings(queue_cmd, NULL, NULL, 1, "MULTI");
	for (i = 0; i < r->elements; i++) {
		const redisReply *e = r->element[i];
		char *text;
		const char *argv[4];
		size_t lens[4], textlen;

		if (e->type != REDIS_REPLY_STRING ||
		    (text = record_dead_request(e->str, e->len,
		    &textlen)) == NULL)
			continue;
		argv[0] = "RPUSH"; lens[0] = 5;
		argv[1] = queue_keys.requests; lens[1] = strlen(argv[1]);
		argv[2] = text; lens[2] = textlen;
		queue_send_argv(queue_cmd, NULL, NULL, 3, argv, lens);
		argv[0] = "LREM"; lens[0] = 4;
		argv[1] = queue_keys.dead; lens[1] = strlen(queue_keys.dead);
		argv[2] = "1"; lens[2] = 1;
		argv[3] = e->str; lens[3] = e->len;
		queue_send_argv(queue_cmd, NULL, NULL, 4, argv, lens);
		free(text);
		queued++;
	}
	if (queue_send_strings(queue_cmd, on_retry_exec, c, 1, "EXEC") != 0) {
		c->cb.count(-1, c->arg);
		free(c);
	}
	(void)queued;
	queue_events->ready();
}

int
queue_dead_retry(long n, queue_count_cb *cb, void *arg)
{
	struct queue_call call = { .cb.count = cb, .arg = arg };

	return dead_range(n < 0 ? -1L : n - 1, on_retry_range, call);
}

void
queue_admin_shutdown(void)
{
	free(head_seen);
	head_seen = NULL;
}
