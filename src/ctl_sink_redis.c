/*
 * The import's sink through Redis, as the daemon's config file says (see
 * usergatectl.h): the way usergated's own clients use it (docs/protocol.md).
 *
 * Two connections to the primary (asked of the Sentinels when [redis]
 * sentinels is set): `cmd` LPUSHes the requests on {prefix}requests, each
 * with a ReplyTo of this run's own, and GETs user records for the resume;
 * `blk` reads the results from that reply key.  Only commands of the
 * daemon's least-privilege ACL line are used (docs/operations.md), so the
 * import may run as the daemon's Redis user: no BRPOP, which that line
 * lacks, but LRANGE of the oldest results, LTRIM of those once handed
 * over, and to wait for more a BLMOVE of the key onto itself, which
 * blocks until the list has an element and only rotates it.
 *
 * Nothing pushed is lost when a connection is: a command answered with no
 * reply is sent again after the reconnect (the daemon answers a request
 * sent twice as a duplicate, or from its record), and results are removed
 * from the reply key only after they were handed over, so a result may come
 * twice but never not at all.  The import keeps the first.  After a
 * failover, what the old primary acknowledged and may have lost is pushed
 * again (unanswered_resend).  A daemon restart is nothing to this sink:
 * the requests wait in Redis.
 */
#include "config.h"

#include <sys/queue.h>

#include <errno.h>
#include <stdint.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "queue_int.h"
#include "usergatectl.h"

#define CONNECT_TIMEOUT_MS	10000
#define COMMAND_TIMEOUT_MS	15000	/* more than BLOCK_S */
#define SENTINEL_TIMEOUT_MS	500	/* per Sentinel, as usergated */
#define BLOCK_S			"5"	/* a BLMOVE waits so long for results */
#define BATCH			100	/* results read at once */
#define RECONNECT_MIN_MS	100
#define RECONNECT_MAX_MS	5000
/* Down so long, the import stops (and says how to resume): before the
 * first connection a mistake is likely, after it an outage may pass. */
#define GIVE_UP_FIRST_S		10
#define GIVE_UP_S		60
#define CLIENT_NAME		"usergatectl-import"
#define UNANSWERED_BUCKETS	4096	/* a power of two */

/*
 * A command to send, or sent and not yet answered; an LPUSH that Redis
 * acknowledged is kept, by its RequestId, until its result comes.
 */
struct command {
	TAILQ_ENTRY(command) link;
	struct command	*next;		/* in its unanswered bucket */
	struct rsink	*sink;
	int		 get;		/* GET user:{identity}, else LPUSH */
	char		*arg;		/* the request's text, or the key */
	size_t		 len;
	char		*identity;	/* GET: as the import asked it */
	char		*request_id;	/* LPUSH: NULL when it has none */
	void		(*done)(const char *, json_t *, void *);
	void		*arg_done;
};
TAILQ_HEAD(commands, command);

struct rsink {
	struct ctl_sink		 sink;		/* first: the import's handle */
	struct event_base	*base;
	struct ctl_sink_events	 ev;
	const struct config	*cfg;		/* the import's, read once */
	char			*requests_key;
	char			*reply_key;
	char			 where[512];	/* the server, for messages */

	struct queue_conn	*cmd, *blk, *sentinel;
	size_t			 sentinel_try;
	char			 primary_host[256];
	unsigned		 primary_port;
	int			 up;		/* cmd answered its setup */
	int			 told_ready;
	int			 ever_up;
	double			 down_since;	/* monotonic; 0 while up */
	long			 backoff_ms;
	char			 last_error[256];
	struct event		*retry;

	struct commands		 waiting;	/* not on the wire */
	struct commands		 sent;		/* on cmd, in order */
	/* LPUSHed, acknowledged, no result yet: pushed again after a
	 * failover, since the old primary may have lost them. */
	struct command		*unanswered[UNANSWERED_BUCKETS];
	int			 gone;		/* lost told: nothing more */
	int			 busy;		/* in an import callback */
	int			 closed;	/* close asked while busy */
};

static const struct ctl_sink_ops rsink_ops;

static void	 links_open(struct rsink *);
static void	 sentinel_ask(struct rsink *);
static void	 links_drop(struct rsink *, const char *);
static void	 results_read(struct rsink *);

static void
command_free(struct command *c)
{
	free(c->arg);
	free(c->identity);
	free(c->request_id);
	free(c);
}

/* FNV-1a of a RequestId, into the unanswered buckets. */
static struct command **
unanswered_bucket(struct rsink *s, const char *id)
{
	uint32_t h = 2166136261u;

	for (; *id != '\0'; id++)
		h = (h ^ (unsigned char)*id) * 16777619u;
	return &s->unanswered[h & (UNANSWERED_BUCKETS - 1)];
}

/* The unanswered LPUSH of id, taken out of its bucket; NULL if none. */
static struct command *
unanswered_take(struct rsink *s, const char *id)
{
	struct command **p, *c;

	for (p = unanswered_bucket(s, id); (c = *p) != NULL; p = &c->next)
		if (strcmp(c->request_id, id) == 0) {
			*p = c->next;
			return c;
		}
	return NULL;
}

/*
 * After a failover every LPUSH not answered yet goes out again: the old
 * primary acknowledged it but may have lost it, had the replica not got it
 * before the promotion.  One that was not lost is answered twice, which
 * the import ignores (its first result counts); the daemon answers the
 * second from its dedup, creating nobody twice.
 */
static void
unanswered_resend(struct rsink *s)
{
	struct command *c;
	size_t i;

	for (i = 0; i < UNANSWERED_BUCKETS; i++)
		while ((c = s->unanswered[i]) != NULL) {
			s->unanswered[i] = c->next;
			c->next = NULL;
			TAILQ_INSERT_TAIL(&s->waiting, c, link);
		}
}

/* Frees everything; the connections' pending callbacks see NULL replies
 * and, with gone set, do nothing. */
static void
rsink_free(struct rsink *s)
{
	struct command *c;

	s->gone = 1;
	if (s->sentinel != NULL)
		queue_conn_close(s->sentinel);
	if (s->blk != NULL)
		queue_conn_close(s->blk);
	if (s->cmd != NULL)
		queue_conn_close(s->cmd);
	while ((c = TAILQ_FIRST(&s->sent)) != NULL) {
		TAILQ_REMOVE(&s->sent, c, link);
		command_free(c);
	}
	while ((c = TAILQ_FIRST(&s->waiting)) != NULL) {
		TAILQ_REMOVE(&s->waiting, c, link);
		command_free(c);
	}
	unanswered_resend(s);
	while ((c = TAILQ_FIRST(&s->waiting)) != NULL) {
		TAILQ_REMOVE(&s->waiting, c, link);
		command_free(c);
	}
	if (s->retry != NULL)
		event_free(s->retry);
	free(s->requests_key);
	free(s->reply_key);
	free(s);
}

/*
 * The import's callbacks may send, or close the sink: a close asked
 * meanwhile waits until the callback has returned.  1 when the sink is
 * still there.
 */
static void
call_begin(struct rsink *s)
{
	s->busy++;
}

static int
call_end(struct rsink *s)
{
	if (--s->busy > 0 || !s->closed)
		return 1;
	rsink_free(s);
	return 0;
}

/* The import stops: the reason, once. */
static void
give_up(struct rsink *s, const char *fmt, const char *detail)
{
	char reason[768];

	if (s->gone)
		return;
	s->gone = 1;
	snprintf(reason, sizeof(reason), fmt, s->where, detail);
	call_begin(s);
	s->ev.lost(reason, s->ev.arg);
	call_end(s);
}

/*
 * An error reply that a reconnect after the backoff may mend: a failover
 * (failover.c's list: READONLY, LOADING, ...), a server out of memory or
 * busy with a script.  Any other (NOAUTH, WRONGPASS, NOPERM, WRONGTYPE)
 * stops the import: trying again would only fill Redis' ACL LOG.
 */
static int
transient(const redisReply *r)
{
	return redis_error_is_failover(r->str) ||
	    strncmp(r->str, "OOM ", 4) == 0 || strncmp(r->str, "BUSY ", 5) == 0;
}

/* ------------------------------------------------------------------ */
/* reconnecting */

static void
on_retry(evutil_socket_t fd, short what, void *arg)
{
	struct rsink *s = arg;

	if (s->cfg->nsentinels > 0) {
		s->sentinel_try = 0;
		sentinel_ask(s);
	} else
		links_open(s);
}

/*
 * Both connections are gone (or never came up): tries again with backoff,
 * or gives up once down too long.  The commands on the wire went back to
 * waiting with their NULL replies.
 */
static void
retry_later(struct rsink *s, const char *error)
{
	struct timeval tv;
	double now = now_monotonic();

	if (s->gone)
		return;
	if (error != NULL)
		snprintf(s->last_error, sizeof(s->last_error), "%s", error);
	if (s->down_since == 0)
		s->down_since = now;
	if (now - s->down_since >= (s->ever_up ? GIVE_UP_S : GIVE_UP_FIRST_S)) {
		give_up(s, s->ever_up ? "redis %s unreachable for a minute: "
		    "%s" : "cannot reach redis %s: %s", s->last_error);
		return;
	}
	tv.tv_sec = s->backoff_ms / 1000;
	tv.tv_usec = (s->backoff_ms % 1000) * 1000;
	evtimer_add(s->retry, &tv);
	s->backoff_ms = s->backoff_ms * 2 > RECONNECT_MAX_MS ?
	    RECONNECT_MAX_MS : s->backoff_ms * 2;
}

/* Closes both connections (the other may be NULL already), then tries
 * again.  Their commands come back to waiting, in order. */
static void
links_drop(struct rsink *s, const char *error)
{
	struct queue_conn *c;

	s->up = 0;
	if ((c = s->blk) != NULL) {
		s->blk = NULL;
		queue_conn_close(c);
	}
	if ((c = s->cmd) != NULL) {
		s->cmd = NULL;
		queue_conn_close(c);
	}
	if (!evtimer_pending(s->retry, NULL))
		retry_later(s, error);
}

static void
on_closed(struct queue_conn *c, const char *reason, void *arg)
{
	struct rsink *s = arg;

	if (c == s->cmd)
		s->cmd = NULL;
	else if (c == s->blk)
		s->blk = NULL;
	else
		return;
	links_drop(s, reason);
}

/* ------------------------------------------------------------------ */
/* Sentinel: the primary's address, asked of each Sentinel in turn */

static void
on_sentinel_closed(struct queue_conn *c, const char *reason, void *arg)
{
	struct rsink *s = arg;

	if (c != s->sentinel)
		return;
	s->sentinel = NULL;
	snprintf(s->last_error, sizeof(s->last_error), "sentinel %s:%u: %s",
	    s->cfg->sentinels[s->sentinel_try].host,
	    s->cfg->sentinels[s->sentinel_try].port, reason);
	s->sentinel_try++;
	sentinel_ask(s);
}

static void
on_sentinel_auth(struct queue_conn *c, redisReply *r, void *arg)
{
	struct rsink *s = arg;

	if (r != NULL && !s->gone && r->type == REDIS_REPLY_ERROR)
		give_up(s, "sentinel of redis %s refused our password: %s",
		    r->str);
}

static void
on_master_addr(struct queue_conn *c, redisReply *r, void *arg)
{
	struct rsink *s = arg;
	const struct config_sentinel *at;
	char host[sizeof(s->primary_host)];
	unsigned port;

	if (r == NULL || c != s->sentinel || s->gone)
		return;		/* on_sentinel_closed goes on, or closing */
	at = &s->cfg->sentinels[s->sentinel_try];
	s->sentinel = NULL;
	queue_conn_close(c);
	if (queue_conn_primary(r, host, sizeof(host), &port) != 0) {
		snprintf(s->last_error, sizeof(s->last_error),
		    "sentinel %s:%u: %s", at->host, at->port,
		    r->type == REDIS_REPLY_ERROR ? r->str :
		    "no primary known by that master_name");
		s->sentinel_try++;
		sentinel_ask(s);
		return;
	}
	if (s->primary_host[0] != '\0' &&
	    (strcmp(s->primary_host, host) != 0 || s->primary_port != port))
		unanswered_resend(s);
	memcpy(s->primary_host, host, strlen(host) + 1);
	s->primary_port = port;
	links_open(s);
}

/* Asks the Sentinel at sentinel_try, or waits after the last one. */
static void
sentinel_ask(struct rsink *s)
{
	struct queue_conn_params p;
	struct queue_conn_events ev = {
		NULL, on_sentinel_closed, NULL, s
	};
	const struct config_sentinel *at;
	const char *pw = s->cfg->sentinel_password;
	const char *name = s->cfg->redis_master_name;
	char err[128];

	if (s->gone)
		return;
	if (s->sentinel_try >= s->cfg->nsentinels) {
		retry_later(s, NULL);
		return;
	}
	at = &s->cfg->sentinels[s->sentinel_try];
	memset(&p, 0, sizeof(p));
	queue_conn_tls_config(&p, s->cfg);
	p.host = at->host;
	p.port = at->port;
	p.connect_timeout_ms = SENTINEL_TIMEOUT_MS;
	p.command_timeout_ms = SENTINEL_TIMEOUT_MS;
	if ((s->sentinel = queue_conn_open(s->base, &p, &ev, err,
	    sizeof(err))) == NULL) {
		give_up(s, "redis %s: %s", err);
		return;
	}
	if (pw != NULL)
		queue_conn_send_argv(s->sentinel, on_sentinel_auth, s, 2,
		    (const char *[]){ "AUTH", pw },
		    (const size_t[]){ 4, strlen(pw) });
	queue_conn_send_argv(s->sentinel, on_master_addr, s, 3,
	    (const char *[]){ "SENTINEL", "get-master-addr-by-name", name },
	    (const size_t[]){ 8, 23, strlen(name) });
}

/* ------------------------------------------------------------------ */
/* the two connections */

/* A reply to AUTH, SELECT or CLIENT SETNAME; the last one says we are up. */
static void
on_setup(struct queue_conn *c, redisReply *r, void *arg)
{
	struct rsink *s = arg;

	if (r == NULL || s->gone)
		return;
	if (r->type == REDIS_REPLY_ERROR) {
		if (transient(r))
			links_drop(s, r->str);
		else
			give_up(s, "redis %s refused us: %s", r->str);
		return;
	}
	if (c != s->cmd || r->type != REDIS_REPLY_STATUS ||
	    strcmp(r->str, "OK") != 0 || s->up)
		return;
	s->up = 1;
	s->ever_up = 1;
	s->down_since = 0;
	s->backoff_ms = RECONNECT_MIN_MS;
	s->last_error[0] = '\0';
	if (!s->told_ready) {
		s->told_ready = 1;
		call_begin(s);
		s->ev.ready(s->ev.arg);
		call_end(s);
	}
}

/*
 * What every connection sends first: AUTH (with [redis] username, Redis
 * 6's ACL form), SELECT, and CLIENT SETNAME, whose OK tells the link
 * works (PING is not in the daemon's ACL line).
 */
static void
hello(struct rsink *s, struct queue_conn *c)
{
	const struct redis_url *to = &s->cfg->redis;
	const char *pw = s->cfg->redis_password;
	char db[16];

	if (pw != NULL && to->username != NULL)
		queue_conn_send_argv(c, on_setup, s, 3,
		    (const char *[]){ "AUTH", to->username, pw },
		    (const size_t[]){ 4, strlen(to->username), strlen(pw) });
	else if (pw != NULL)
		queue_conn_send_argv(c, on_setup, s, 2,
		    (const char *[]){ "AUTH", pw },
		    (const size_t[]){ 4, strlen(pw) });
	if (to->db != 0) {
		snprintf(db, sizeof(db), "%ld", to->db);
		queue_conn_send_argv(c, on_setup, s, 2,
		    (const char *[]){ "SELECT", db },
		    (const size_t[]){ 6, strlen(db) });
	}
	queue_conn_send_argv(c, on_setup, s, 3,
	    (const char *[]){ "CLIENT", "SETNAME", CLIENT_NAME },
	    (const size_t[]){ 6, 7, strlen(CLIENT_NAME) });
}

static void	 on_command(struct queue_conn *, redisReply *, void *);

/* On the wire; on a connection closing already, in line for the next. */
static void
command_send(struct rsink *s, struct command *c)
{
	int r;

	if (c->get)
		r = queue_conn_send_argv(s->cmd, on_command, c, 2,
		    (const char *[]){ "GET", c->arg },
		    (const size_t[]){ 3, c->len });
	else
		r = queue_conn_send_argv(s->cmd, on_command, c, 3,
		    (const char *[]){ "LPUSH", s->requests_key, c->arg },
		    (const size_t[]){ 5, strlen(s->requests_key), c->len });
	if (r == 0)
		TAILQ_INSERT_TAIL(&s->sent, c, link);
	else
		TAILQ_INSERT_TAIL(&s->waiting, c, link);
}

/* Opens one connection into *slot: 0, or -1 after give_up (which may
 * have freed s). */
static int
link_open(struct rsink *s, struct queue_conn **slot)
{
	struct queue_conn_params p;
	struct queue_conn_events ev = { NULL, on_closed, NULL, s };
	struct queue_conn *c;
	char err[128];

	memset(&p, 0, sizeof(p));
	queue_conn_tls_config(&p, s->cfg);
	p.host = s->cfg->redis.host;
	p.port = (unsigned)s->cfg->redis.port;
	p.unix_socket = s->cfg->redis.path;
	if (s->cfg->nsentinels > 0) {
		p.host = s->primary_host;
		p.port = s->primary_port;
		p.unix_socket = NULL;
	}
	p.connect_timeout_ms = CONNECT_TIMEOUT_MS;
	p.command_timeout_ms = COMMAND_TIMEOUT_MS;
	if ((c = queue_conn_open(s->base, &p, &ev, err, sizeof(err))) ==
	    NULL) {
		give_up(s, "redis %s: %s", err);
		return -1;
	}
	*slot = c;
	hello(s, c);
	return 0;
}

/* Opens both connections and sends what waited, at once: Redis runs it
 * after the setup, in order. */
static void
links_open(struct rsink *s)
{
	struct command *c;

	if (s->gone || link_open(s, &s->cmd) == -1 ||
	    link_open(s, &s->blk) == -1)
		return;
	while ((c = TAILQ_FIRST(&s->waiting)) != NULL) {
		TAILQ_REMOVE(&s->waiting, c, link);
		command_send(s, c);
	}
	results_read(s);
}

/*
 * The reply to an LPUSH or a GET.  None (the connection is lost): back to
 * waiting, sent again after the reconnect.  An error that a reconnect may
 * mend (READONLY after a failover, OOM, LOADING): the same, after a drop.
 */
static void
on_command(struct queue_conn *qc, redisReply *r, void *arg)
{
	struct command *c = arg;
	struct rsink *s = c->sink;
	json_t *record = NULL;

	TAILQ_REMOVE(&s->sent, c, link);
	if (s->gone) {
		command_free(c);
		return;
	}
	if (r == NULL || (r->type == REDIS_REPLY_ERROR && transient(r))) {
		TAILQ_INSERT_TAIL(&s->waiting, c, link);
		if (r != NULL && qc == s->cmd)
			links_drop(s, r->str);
		return;
	}
	if (r->type == REDIS_REPLY_ERROR) {
		give_up(s, c->get ? "redis %s refused GET: %s" :
		    "redis %s refused LPUSH: %s", r->str);
		command_free(c);
		return;
	}
	if (c->get) {
		if (r->type == REDIS_REPLY_STRING)
			record = record_stored(r->str, r->len);
		call_begin(s);
		c->done(c->identity, record, c->arg_done);
		json_decref(record);
		command_free(c);
		call_end(s);
		return;
	}
	if (c->request_id == NULL) {
		command_free(c);
		return;
	}
	c->next = *unanswered_bucket(s, c->request_id);
	*unanswered_bucket(s, c->request_id) = c;
}

/* ------------------------------------------------------------------ */
/* results */

static void
on_block(struct queue_conn *c, redisReply *r, void *arg)
{
	struct rsink *s = arg;

	if (r == NULL || s->gone || c != s->blk)
		return;
	if (r->type == REDIS_REPLY_ERROR) {
		if (transient(r))
			links_drop(s, r->str);
		else
			give_up(s, "redis %s refused BLMOVE: %s", r->str);
		return;
	}
	results_read(s);
}

static void
on_trimmed(struct queue_conn *c, redisReply *r, void *arg)
{
	struct rsink *s = arg;

	/* A failover's error: the next LRANGE meets it too, and drops. */
	if (r != NULL && !s->gone && r->type == REDIS_REPLY_ERROR &&
	    !transient(r))
		give_up(s, "redis %s refused LTRIM: %s", r->str);
}

/* One result to the import; an unreadable one is skipped (not ours). */
static void
result_hand(struct rsink *s, const redisReply *e)
{
	struct command *c;
	json_t *v = NULL, *id;
	char err[128];

	if (e->type != REDIS_REPLY_STRING ||
	    codec_decode_any(e->str, e->len, &v, err, sizeof(err)) !=
	    CODEC_OK) {
		json_decref(v);
		return;
	}
	if ((id = json_object_get(v, "request_id")) != NULL &&
	    json_is_string(id)) {
		if ((c = unanswered_take(s, json_string_value(id))) != NULL)
			command_free(c);
		s->ev.result(json_string_value(id), v, s->ev.arg);
	}
	json_decref(v);
}

/*
 * Up to BATCH of the oldest results (the right end: the daemon pushes on
 * the left).  They are handed over, then trimmed: a result pushed
 * meanwhile is on the left, and stays.  None: BLMOVE waits for one.
 */
static void
on_range(struct queue_conn *c, redisReply *r, void *arg)
{
	struct rsink *s = arg;
	char stop[32];
	size_t i;

	if (r == NULL || s->gone || c != s->blk)
		return;
	if (r->type != REDIS_REPLY_ARRAY) {
		if (r->type == REDIS_REPLY_ERROR && transient(r))
			links_drop(s, r->str);
		else
			give_up(s, "redis %s refused LRANGE: %s",
			    r->type == REDIS_REPLY_ERROR ? r->str : "?");
		return;
	}
	if (r->elements == 0) {
		queue_conn_send_argv(c, on_block, s, 6,
		    (const char *[]){ "BLMOVE", s->reply_key, s->reply_key,
		    "RIGHT", "LEFT", BLOCK_S },
		    (const size_t[]){ 6, strlen(s->reply_key),
		    strlen(s->reply_key), 5, 4, strlen(BLOCK_S) });
		return;
	}
	snprintf(stop, sizeof(stop), "%ld", -(long)r->elements - 1);
	queue_conn_send_argv(c, on_trimmed, s, 4,
	    (const char *[]){ "LTRIM", s->reply_key, "0", stop },
	    (const size_t[]){ 5, strlen(s->reply_key), 1, strlen(stop) });
	call_begin(s);
	for (i = r->elements; i > 0 && !s->gone && !s->closed; i--)
		result_hand(s, r->element[i - 1]);
	if (call_end(s) && !s->gone && c == s->blk)
		results_read(s);
}

static void
results_read(struct rsink *s)
{
	char start[16];

	snprintf(start, sizeof(start), "-%d", BATCH);
	queue_conn_send_argv(s->blk, on_range, s, 4,
	    (const char *[]){ "LRANGE", s->reply_key, start, "-1" },
	    (const size_t[]){ 6, strlen(s->reply_key), strlen(start), 2 });
}

/* ------------------------------------------------------------------ */
/* the import's operations */

static struct command *
command_new(struct rsink *s, int get)
{
	struct command *c;

	if ((c = calloc(1, sizeof(*c))) == NULL)
		return NULL;
	c->sink = s;
	c->get = get;
	return c;
}

/* On the wire when the link is up, else in line for it. */
static void
command_queue(struct rsink *s, struct command *c)
{
	if (s->cmd != NULL)
		command_send(s, c);
	else
		TAILQ_INSERT_TAIL(&s->waiting, c, link);
}

/*
 * The request with our ReplyTo: any ReplyTo of the line itself (or its
 * alias) is replaced, since the results are read here.
 */
static int
rsink_send(struct ctl_sink *sink, const char *json, size_t len, char *err,
    size_t errlen)
{
	struct rsink *s = (struct rsink *)sink;
	struct command *c;
	json_error_t jerr;
	json_t *v, *id;

	if (s->gone) {
		snprintf(err, errlen, "the redis link is lost");
		return -1;
	}
	if ((v = json_loadb(json, len, JSON_ALLOW_NUL, &jerr)) == NULL ||
	    !json_is_object(v)) {
		snprintf(err, errlen, "not a JSON object: %s",
		    v == NULL ? jerr.text : "another value");
		json_decref(v);
		return -1;
	}
	json_object_del(v, "reply_to");
	if (json_object_set_new(v, "ReplyTo", json_string(s->reply_key)) ==
	    -1 || (c = command_new(s, 0)) == NULL) {
		json_decref(v);
		snprintf(err, errlen, "%s", strerror(ENOMEM));
		return -1;
	}
	c->arg = json_dumps(v, JSON_COMPACT | JSON_ENSURE_ASCII);
	if ((id = json_object_get(v, "RequestId")) != NULL ||
	    (id = json_object_get(v, "request_id")) != NULL)
		c->request_id = json_is_string(id) ?
		    strdup(json_string_value(id)) : NULL;
	json_decref(v);
	if (c->arg == NULL) {
		command_free(c);
		snprintf(err, errlen, "cannot encode the request");
		return -1;
	}
	c->len = strlen(c->arg);
	command_queue(s, c);
	return 0;
}

static int
rsink_finished(struct ctl_sink *sink, const char *const *identities,
    size_t n, void (*done)(const char *, json_t *, void *), void *arg)
{
	struct rsink *s = (struct rsink *)sink;
	struct command *c;
	size_t i;

	if (s->gone)
		return -1;
	for (i = 0; i < n; i++) {
		if ((c = command_new(s, 1)) == NULL ||
		    (c->identity = strdup(identities[i])) == NULL ||
		    asprintf(&c->arg, "%suser:%s", s->cfg->prefix,
		    identities[i]) == -1) {
			if (c != NULL) {
				c->arg = NULL;
				command_free(c);
			}
			return -1;
		}
		c->len = strlen(c->arg);
		c->done = done;
		c->arg_done = arg;
		command_queue(s, c);
	}
	return 0;
}

/*
 * The reply key is not deleted: results of requests still in Redis may be
 * written to it after we leave, and it expires by itself ([results]
 * reply_ttl_s after the last one).  A rerun uses a key of its own.
 */
static void
rsink_close(struct ctl_sink *sink)
{
	struct rsink *s = (struct rsink *)sink;

	if (s->busy > 0) {
		s->closed = 1;
		s->gone = 1;
		return;
	}
	rsink_free(s);
}

static const struct ctl_sink_ops rsink_ops = {
	rsink_send, rsink_finished, rsink_close
};

/* ------------------------------------------------------------------ */

/* This run's reply key: the first entry of [results] reply_prefix, then
 * "import:", the host, the process and random bits. */
static char *
reply_key_new(const struct config *cfg, char *err, size_t errlen)
{
	const char *p = cfg->reply_prefix;
	unsigned char rnd[8];
	char host[64], *key;
	size_t n;
	int fd;

	p += strspn(p, ",");
	if ((n = strcspn(p, ",")) == 0) {
		snprintf(err, errlen, "%s: [results] reply_prefix is empty: "
		    "the import needs a reply key", cfg->path);
		return NULL;
	}
	memset(rnd, 0, sizeof(rnd));
	if ((fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC)) != -1) {
		if (read(fd, rnd, sizeof(rnd)) != (ssize_t)sizeof(rnd))
			memset(rnd, 0, sizeof(rnd));
		close(fd);
	}
	if (gethostname(host, sizeof(host)) == -1)
		snprintf(host, sizeof(host), "localhost");
	host[sizeof(host) - 1] = '\0';
	if (asprintf(&key, "%.*simport:%s:%ld:%02x%02x%02x%02x%02x%02x%02x%02x",
	    (int)n, p, host, (long)getpid(), rnd[0], rnd[1], rnd[2], rnd[3],
	    rnd[4], rnd[5], rnd[6], rnd[7]) == -1) {
		snprintf(err, errlen, "%s", strerror(errno));
		return NULL;
	}
	return key;
}

/*
 * The daemon's own rule (request_parse's scope check) on a request with
 * our ReplyTo: a key it would refuse to write to is a config error, not a
 * wait for results that never come.
 */
static int
reply_key_check(struct rsink *s, char *err, size_t errlen)
{
	struct reply_scope scope = { s->cfg->reply_prefix, s->cfg->prefix };
	struct request req;
	char why[256], *text;
	json_t *v;
	int r;

	v = json_pack("{s:s, s:s}", "Identity", "import-check", "ReplyTo",
	    s->reply_key);
	if (v == NULL || (text = json_dumps(v, JSON_COMPACT)) == NULL) {
		json_decref(v);
		snprintf(err, errlen, "%s", strerror(ENOMEM));
		return -1;
	}
	json_decref(v);
	r = request_parse(text, strlen(text), &scope, &req, why, sizeof(why));
	request_free(&req);
	free(text);
	if (r != REQ_OK) {
		snprintf(err, errlen, "%s: the import's reply key %s: %s",
		    s->cfg->path, s->reply_key, why);
		return -1;
	}
	return 0;
}

struct ctl_sink *
ctl_sink_redis(struct event_base *base, const struct config *cfg,
    const struct ctl_sink_events *ev, char *err, size_t errlen)
{
	struct rsink *s;

	if ((s = calloc(1, sizeof(*s))) == NULL) {
		snprintf(err, errlen, "%s", strerror(errno));
		return NULL;
	}
	TAILQ_INIT(&s->waiting);
	TAILQ_INIT(&s->sent);
	s->sink.ops = &rsink_ops;
	s->base = base;
	s->ev = *ev;
	s->backoff_ms = RECONNECT_MIN_MS;
	s->cfg = cfg;
	if ((s->reply_key = reply_key_new(s->cfg, err, errlen)) == NULL)
		goto fail;
	if (reply_key_check(s, err, errlen) == -1)
		goto fail;
	if (asprintf(&s->requests_key, "%srequests", s->cfg->prefix) == -1) {
		s->requests_key = NULL;
		snprintf(err, errlen, "%s", strerror(errno));
		goto fail;
	}
	if (s->cfg->nsentinels > 0)
		snprintf(s->where, sizeof(s->where), "(sentinels %s, "
		    "master_name %s)", s->cfg->redis_sentinels,
		    s->cfg->redis_master_name);
	else
		redis_url_show(&s->cfg->redis, s->cfg->redis_password != NULL,
		    s->where, sizeof(s->where));
	if ((s->retry = evtimer_new(base, on_retry, s)) == NULL) {
		snprintf(err, errlen, "cannot make a timer");
		goto fail;
	}
	on_retry(-1, 0, s);
	if (s->gone) {
		/* Only out of memory fails at once; connect errors come on
		 * the loop, through lost. */
		snprintf(err, errlen, "cannot connect to redis %s", s->where);
		rsink_free(s);
		return NULL;
	}
	return &s->sink;
fail:
	rsink_free(s);
	return NULL;
}
