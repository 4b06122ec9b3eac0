/*
 * queue_commit.c: the results.  Each finished job's result is handed over
 * once (queue_commit_add); what one loop iteration hands over is written
 * in MULTI/EXEC transactions of up to COMMIT_BATCH_MAX results, in which
 * each request leaves our processing list as its result is stored and
 * published, guarded so that the transaction aborts as a whole when a key
 * it writes has the wrong type.  A transaction that fails puts its results
 * back at the head of the line, to be written again when Redis takes them:
 * results are at-least-once, never lost.
 */
#include "config.h"

#include <sys/types.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "queue_int.h"

#define COMMIT_BATCH_MAX	64	/* results in one transaction */
#define COMMITS_MAX		8	/* transactions on the wire at once */
#define COMMIT_RETRY_MS		500	/* no link: look again */
#define COMMIT_BACKOFF_MIN_MS	100	/* refused: 100 ms doubling to 5 s */
#define COMMIT_BACKOFF_MAX_MS	5000

/* Results handed over and not on the wire, oldest first. */
static TAILQ_HEAD(, commit_item) waiting = TAILQ_HEAD_INITIALIZER(waiting);
static struct event *flush_ev;		/* writes what is waiting */
static struct event *retry_ev;
static int outstanding;			/* transactions on the wire */
static long failures;			/* transactions failed in a row */

/* A transaction on the wire: its results, and what on_exec counts. */
struct commit_batch {
	size_t			 n;
	struct commit_item	*items[COMMIT_BATCH_MAX];
	int			 dead_pushed;	/* the EXEC's second-to-last
						 * reply is the dead list's
						 * LPUSH */
	long long		 dead_max;	/* what its LTRIM kept */
	int			 durable;	/* a WAIT follows: it answers */
	/* what the EXEC said, meanwhile */
	int			 ok;
};

/*
 * Pushes a reply (ARGV[1]) to its ReplyTo list (KEYS[1]) and sets the
 * list's expiry (ARGV[2]) only when the list is ours: created by this push,
 * or given an expiry by an earlier reply.  A list that already existed
 * without one belongs to someone else, and must not vanish because we wrote
 * to it.  (EXPIRE NX would say it in one command, but needs Redis 7; the
 * floor is 6.2.)  Sent with EVAL, not EVALSHA: it runs inside the result
 * transaction, where a NOSCRIPT error would lose the reply.
 */
static const char reply_lua[] =
	"local n = redis.call('LPUSH', KEYS[1], ARGV[1])\n"
	"if n == 1 or redis.call('PTTL', KEYS[1]) > 0 then\n"
	"  redis.call('EXPIRE', KEYS[1], ARGV[2])\n"
	"end\n"
	"return n\n";

/*
 * Sent after WATCH of our heartbeat key, before a result transaction: when
 * a key the transaction writes has the wrong type, it writes the heartbeat
 * again (same value and TTL), which makes the EXEC abort as a whole.
 * Commands of a transaction run even when one before them failed, so
 * without this a result that could not be stored would take its request
 * out of the processing list with it.  KEYS: heartbeat, processing,
 * results, dead, recoveries; ARGV: heartbeat value and TTL.
 */
const char queue_guard_lua[] =
	LUA_WRONGTYPE
	"local e = wrongtype(KEYS[2], 'list') or "
	    "wrongtype(KEYS[3], 'list') or\n"
	"  wrongtype(KEYS[4], 'list') or wrongtype(KEYS[5], 'hash')\n"
	"if e then redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2]) end\n"
	"return e or 0\n";

/* One failing command per result can come with every transaction (a
 * ReplyTo list of the wrong type). */
static struct log_limit command_failed_limit =
    LOG_LIMIT("redis: a command of the result transaction failed",
    LOG_LIMIT_PER_SECOND);

static void	 batch_done(struct commit_batch *, int ok);

/*
 * With durable_replicas, the WAIT after the EXEC: a result counts as
 * written once enough replicas have it.  Fewer in time: wait again.  The
 * link lost: not written, as far as we know; the batch is written again
 * on the next link (at-least-once, as for a lost EXEC reply).
 */
static void
on_commit_durable(struct queue_conn *ac, redisReply *reply, void *priv)
{
	struct commit_batch *b = priv;
	int confirmed;

	if ((confirmed = queue_durable_confirmed(reply, on_commit_durable,
	    b)) == 0)
		return;
	batch_done(b, confirmed == 1 && b->ok);
}

static void
on_exec(struct queue_conn *ac, redisReply *reply, void *priv)
{
	const redisReply *r = reply;
	struct commit_batch *b = priv;
	const redisReply *refused = NULL, *pushed;
	size_t i;
	int ok = r != NULL && r->type == REDIS_REPLY_ARRAY;

	if (r != NULL && !ok)
		refused = r;
	if (ok) {
		for (i = 0; i < r->elements; i++)
			if (r->element[i]->type == REDIS_REPLY_ERROR &&
			    log_limit_allow(&command_failed_limit,
			    now_monotonic()))
				log_warn("redis: a command of the result "
				    "transaction failed",
				    "error", r->element[i]->str);
		/* The LTRIM after the LPUSH kept dead_max entries: the rest
		 * of the length the LPUSH answered was dropped. */
		pushed = r->elements >= 2 ? r->element[r->elements - 2] : NULL;
		if (b->dead_pushed && pushed != NULL &&
		    pushed->type == REDIS_REPLY_INTEGER &&
		    pushed->integer > b->dead_max)
			stats.dead_dropped += (unsigned long long)
			    (pushed->integer - b->dead_max);
	}
	/* A nil reply: queue_guard_lua aborted it (and said why). */
	if (refused != NULL && refused->type != REDIS_REPLY_NIL)
		queue_fault_set(FAULT_COMMIT, queue_reply_error(refused));
	if (b->durable) {
		b->ok = ok;
		return;
	}
	batch_done(b, ok);
}

static void
on_guard(struct queue_conn *ac, redisReply *reply, void *priv)
{
	const redisReply *r = reply;

	if (r != NULL && r->type == REDIS_REPLY_ERROR)
		queue_refused(FAULT_COMMIT, r);
	else if (r != NULL)
		queue_fault_clear(FAULT_COMMIT);
}


/* ------------------------------------------------------------------ */
/* one transaction */

/* A command of the transaction that takes the whole batch at once. */
struct batch_command {
	const char	**argv;
	size_t		 *lens;
	size_t		  argc;
};

static void
command_add(struct batch_command *c, const char *arg, size_t len)
{
	c->argv[c->argc] = arg;
	c->lens[c->argc++] = len;
}

/* Room for max arguments, starting with name and key (NULL: none). */
static int
command_init(struct batch_command *c, size_t max, const char *name,
    const char *key)
{
	c->argv = malloc(max * sizeof(*c->argv));
	c->lens = malloc(max * sizeof(*c->lens));
	c->argc = 0;
	if (c->argv == NULL || c->lens == NULL)
		return -1;
	command_add(c, name, strlen(name));
	if (key != NULL)
		command_add(c, key, strlen(key));
	return 0;
}

static void
command_free(struct batch_command *c)
{
	free(c->argv);
	free(c->lens);
}

/*
 * What can be one command for the whole batch is: the records go in one
 * MSET and the results in one LPUSH (same order as one LPUSH each), as do
 * the dead entries.
 */
struct transaction {
	struct batch_command	 records, results, dead;
	char			**user_keys;	/* MSET's keys, one per item */
	size_t			 n;
	char			 ttl[32], reply_ttl[32];
};

static void
transaction_free(struct transaction *t)
{
	size_t i;

	if (t->user_keys != NULL)
		for (i = 0; i < t->n; i++)
			free(t->user_keys[i]);
	free(t->user_keys);
	command_free(&t->records);
	command_free(&t->results);
	command_free(&t->dead);
}

static int
transaction_init(struct transaction *t, size_t n)
{
	memset(t, 0, sizeof(*t));
	t->n = n;
	snprintf(t->ttl, sizeof(t->ttl), "%ld", ug.cfg->dedup_ttl_s);
	snprintf(t->reply_ttl, sizeof(t->reply_ttl), "%ld",
	    ug.cfg->reply_ttl_s);
	if (command_init(&t->records, 1 + 2 * n, "MSET", NULL) != 0 ||
	    command_init(&t->results, 2 + n, "LPUSH",
	    queue_keys.results) != 0 ||
	    command_init(&t->dead, 2 + n, "LPUSH", queue_keys.dead) != 0 ||
	    (t->user_keys = calloc(n, sizeof(*t->user_keys))) == NULL)
		return -1;
	return 0;
}

/*
 * WATCH our heartbeat, then queue_guard_lua, which rewrites it (aborting
 * the EXEC) when a key the transaction writes has the wrong type; MULTI.
 */
static int
send_guard(void)
{
	char value[300], hb_ttl[16];
	int rv = 0;

	queue_heartbeat_value(value, sizeof(value));
	snprintf(hb_ttl, sizeof(hb_ttl), "%d", HEARTBEAT_TTL_S);
	rv |= queue_send_strings(queue_cmd, NULL, NULL, 2, "WATCH",
	    queue_keys.instance);
	rv |= queue_send_strings(queue_cmd, on_guard, NULL, 10, "EVALSHA",
	    queue_script_sha[SCRIPT_GUARD], "5", queue_keys.instance,
	    queue_keys.processing, queue_keys.results, queue_keys.dead,
	    queue_keys.recoveries, value, hb_ttl);
	rv |= queue_send_strings(queue_cmd, NULL, NULL, 1, "MULTI");
	return rv;
}

/* The Identity's dedup state: done (for the dedup TTL) or free again. */
static int
send_identity(const struct transaction *t, const struct commit_item *it)
{
	char *key;
	int rv;

	if (it->identity == NULL || (!it->identity_done &&
	    !it->identity_release))
		return 0;
	if ((key = queue_key("identity:", it->identity)) == NULL)
		return -1;
	if (it->identity_done)
		rv = queue_send_strings(queue_cmd, NULL, NULL, 5, "SET", key,
		    "done", "EX", t->ttl);
	else
		rv = queue_send_strings(queue_cmd, NULL, NULL, 2, "DEL", key);
	free(key);
	return rv;
}

/*
 * The commands of item i of the transaction: its own (dedup state,
 * PUBLISH, its ReplyTo, the recovery count, LREM), and its share of the
 * batch's MSET and LPUSHes.
 */
static int
send_item(struct transaction *t, size_t i, const struct commit_item *it)
{
	const char *argv[4];
	size_t lens[4];
	int rv;

	if ((rv = send_identity(t, it)) != 0)
		return rv;
	if (it->identity != NULL && it->record != NULL) {
		t->user_keys[i] = queue_key("user:", it->identity);
		if (t->user_keys[i] == NULL)
			return -1;
		command_add(&t->records, t->user_keys[i],
		    strlen(t->user_keys[i]));
		command_add(&t->records, it->record, it->recordlen);
	}
	command_add(&t->results, it->result, it->resultlen);

	argv[0] = "PUBLISH"; lens[0] = 7;
	argv[1] = queue_keys.events; lens[1] = strlen(argv[1]);
	argv[2] = it->result; lens[2] = it->resultlen;
	rv |= queue_send_argv(queue_cmd, NULL, NULL, 3, argv, lens);
	if (it->reply_to != NULL) {
		const char *ev[6] = { "EVAL", reply_lua, "1", it->reply_to,
			it->result, t->reply_ttl };
		size_t evlens[6] = { 4, sizeof(reply_lua) - 1, 1,
			strlen(it->reply_to), it->resultlen,
			strlen(t->reply_ttl) };

		rv |= queue_send_argv(queue_cmd, NULL, NULL, 6, ev, evlens);
	}
	if (it->dead != NULL)
		command_add(&t->dead, it->dead, it->deadlen);
	if (it->recovered) {
		argv[0] = "HDEL"; lens[0] = 4;
		argv[1] = queue_keys.recoveries;
		lens[1] = strlen(queue_keys.recoveries);
		argv[2] = it->raw; lens[2] = it->rawlen;
		rv |= queue_send_argv(queue_cmd, NULL, NULL, 3, argv, lens);
	}
	if (it->in_processing) {
		argv[0] = "LREM"; lens[0] = 4;
		argv[1] = queue_keys.processing;
		lens[1] = strlen(queue_keys.processing);
		argv[2] = "-1"; lens[2] = 2;
		argv[3] = it->raw; lens[3] = it->rawlen;
		rv |= queue_send_argv(queue_cmd, NULL, NULL, 4, argv, lens);
	}
	return rv;
}

/* The batch's MSET and LPUSHes, each list trimmed after its push. */
static int
send_batched(struct transaction *t, struct commit_batch *b)
{
	char trim[32], dead_trim[32];
	int rv = 0;

	snprintf(trim, sizeof(trim), "%ld", ug.cfg->results_max - 1);
	snprintf(dead_trim, sizeof(dead_trim), "%ld", ug.cfg->dead_max - 1);
	if (t->records.argc > 1)
		rv |= queue_send_argv(queue_cmd, NULL, NULL,
		    (int)t->records.argc, t->records.argv, t->records.lens);
	if (rv == 0)
		rv |= queue_send_argv(queue_cmd, NULL, NULL,
		    (int)t->results.argc, t->results.argv, t->results.lens);
	if (rv == 0)
		rv |= queue_send_strings(queue_cmd, NULL, NULL, 4, "LTRIM",
		    queue_keys.results, "0", trim);
	/* Last before EXEC, so on_exec finds the LPUSH's answer (the new
	 * length) second to last and counts what the LTRIM dropped. */
	if (rv == 0 && t->dead.argc > 2) {
		rv |= queue_send_argv(queue_cmd, NULL, NULL, (int)t->dead.argc,
		    t->dead.argv, t->dead.lens);
		rv |= queue_send_strings(queue_cmd, NULL, NULL, 4, "LTRIM",
		    queue_keys.dead, "0", dead_trim);
		b->dead_pushed = 1;
	}
	return rv;
}

/*
 * One MULTI/EXEC for a batch of results: each result is stored, pushed,
 * published and removed from the processing list together, so a crash
 * leaves either the request in processing or its result in Redis, never
 * neither.  With the MSET and the LPUSHes that serve the whole batch, a
 * result costs three commands (the Identity's dedup state, PUBLISH,
 * LREM), plus reply_lua for a ReplyTo.  Fewer commands cost Redis less,
 * which matters more than the daemon's own CPU: one Redis serves every
 * instance.  (A Lua script taking the batch as arguments was tried: 11 %
 * less CPU here, 15 % more in Redis; see docs/performance.md.)  0 when
 * on_exec will be called, -1 when it will not.
 */
static int
send_transaction(struct commit_batch *b)
{
	struct transaction t;
	size_t i;
	int rv;

	if (!queue_ready)
		return -1;
	b->dead_max = ug.cfg->dead_max;
	b->durable = b->ok = 0;
	if (transaction_init(&t, b->n) != 0) {
		transaction_free(&t);
		return -1;
	}
	rv = send_guard();
	for (i = 0; i < b->n && rv == 0; i++)
		rv |= send_item(&t, i, b->items[i]);
	if (rv == 0)
		rv |= send_batched(&t, b);
	if (rv == 0) {
		rv = queue_send_strings(queue_cmd, on_exec, b, 1, "EXEC");
		if (rv == 0 && ug.cfg->redis_durable_replicas > 0)
			b->durable = queue_durable_send(on_commit_durable,
			    b) == 0;
	} else if (queue_cmd != NULL)
		/* A half-queued transaction must not run. */
		queue_send_strings(queue_cmd, NULL, NULL, 1, "DISCARD");
	transaction_free(&t);
	return rv;
}

/* ------------------------------------------------------------------ */
/* batching */

static void
schedule_flush(void)
{
	if (outstanding < COMMITS_MAX)
		event_active(flush_ev, EV_TIMEOUT, 0);
}

/*
 * Everything handed over since the last flush goes out in one transaction
 * (at high rates one round trip for hundreds of results), and the next
 * batch at once when there is more, up to COMMITS_MAX on the wire.
 */
static void
flush_cb(evutil_socket_t fd, short what, void *arg)
{
	struct commit_batch *b;
	struct commit_item *it;

	if (outstanding >= COMMITS_MAX || TAILQ_EMPTY(&waiting) ||
	    !queue_ready)
		return;
	if ((b = malloc(sizeof(*b))) == NULL)
		return;
	b->n = 0;
	b->dead_pushed = 0;
	while (b->n < COMMIT_BATCH_MAX &&
	    (it = TAILQ_FIRST(&waiting)) != NULL) {
		TAILQ_REMOVE(&waiting, it, link);
		b->items[b->n++] = it;
		it->cb(COMMIT_SENT, it->arg);
	}
	outstanding++;
	if (send_transaction(b) != 0) {
		batch_done(b, 0);	/* back in line; retried later */
		return;
	}
	if (!TAILQ_EMPTY(&waiting))
		schedule_flush();
}

/* While there is no link, look again every COMMIT_RETRY_MS. */
static void
retry_cb(evutil_socket_t fd, short what, void *arg)
{
	schedule_flush();
	if (!TAILQ_EMPTY(&waiting) && !queue_ready) {
		struct timeval tv = { 0, COMMIT_RETRY_MS * 1000 };

		evtimer_add(retry_ev, &tv);
	}
}

/*
 * A transaction came back.  Written: each result's owner hears it, in
 * order.  Failed: its results go back to the head of the line, in order,
 * to be written again when Redis is back (a lost EXEC reply may mean this
 * batch is written twice, never that it is lost); Redis refusing it (a key
 * of the wrong type) is retried with backoff, not at the rate of the link
 * checks.
 */
static void
batch_done(struct commit_batch *b, int ok)
{
	struct commit_item *it;
	size_t i;

	outstanding--;
	if (!ok) {
		long ms = pace_backoff_ms(++failures, COMMIT_BACKOFF_MIN_MS,
		    COMMIT_BACKOFF_MAX_MS, 0, 1.0);

		for (i = b->n; i-- > 0;) {
			it = b->items[i];
			TAILQ_INSERT_HEAD(&waiting, it, link);
			it->cb(COMMIT_WAITING, it->arg);
		}
		free(b);
		if (!evtimer_pending(retry_ev, NULL)) {
			struct timeval tv;

			tv.tv_sec = ms / 1000;
			tv.tv_usec = (ms % 1000) * 1000;
			evtimer_add(retry_ev, &tv);
		}
		return;
	}
	failures = 0;
	/* The owner may free the item as soon as it hears. */
	for (i = 0; i < b->n; i++) {
		it = b->items[i];
		it->cb(COMMIT_WRITTEN, it->arg);
	}
	free(b);
	if (!TAILQ_EMPTY(&waiting))
		schedule_flush();
}

void
queue_commit_add(struct commit_item *item, queue_commit_cb *cb, void *arg)
{
	item->cb = cb;
	item->arg = arg;
	TAILQ_INSERT_TAIL(&waiting, item, link);
	schedule_flush();
}

/* The link is up: what waited for it goes out. */
void
queue_commit_resume(void)
{
	schedule_flush();
}

int
queue_commit_init(void)
{
	flush_ev = event_new(ug.base, -1, 0, flush_cb, NULL);
	retry_ev = evtimer_new(ug.base, retry_cb, NULL);
	return flush_ev != NULL && retry_ev != NULL ? 0 : -1;
}

/*
 * After the connections were freed (so that transactions on the wire came
 * back failed, while their owners still exist): the owners free the items
 * that wait.
 */
void
queue_commit_shutdown(void)
{
	TAILQ_INIT(&waiting);
	if (flush_ev != NULL)
		event_free(flush_ev);
	if (retry_ev != NULL)
		event_free(retry_ev);
	flush_ev = retry_ev = NULL;
	outstanding = 0;
	failures = 0;
}
