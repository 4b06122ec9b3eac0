/*
 * queue_commit.c: the result transaction.  A batch of finished jobs is
 * published and removed from our processing list in one MULTI/EXEC,
 * guarded so that it aborts as a whole when a key it writes has the wrong
 * type.
 */
#include "config.h"

#include <sys/types.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "queue_int.h"

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
	"local e = wrongtype(KEYS[2], 'list') or wrongtype(KEYS[3], 'list') or\n"
	"  wrongtype(KEYS[4], 'list') or wrongtype(KEYS[5], 'hash')\n"
	"if e then redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2]) end\n"
	"return e or 0\n";

/* One failing command per result can come with every transaction (a
 * ReplyTo list of the wrong type). */
static struct log_limit command_failed_limit =
    LOG_LIMIT("redis: a command of the result transaction failed", LOG_LIMIT_PER_SECOND);

struct commit_call {
	struct queue_call call;
	int		 dead_pushed;	/* the EXEC's second-to-last reply is the
					 * dead list's LPUSH */
	long long	 dead_max;	/* what its LTRIM kept */
	int		 durable;	/* a WAIT follows: it answers */
	int		 ok;		/* what the EXEC said, meanwhile */
};

/*
 * With durable_replicas, the WAIT after the EXEC: a result counts as
 * written once enough replicas have it.  Fewer in time: wait again.  The
 * link lost: not written, as far as we know; the batch is written again
 * on the next link (at-least-once, as for a lost EXEC reply).
 */
static void
on_commit_durable(struct queue_conn *ac, redisReply *reply, void *priv)
{
	struct commit_call *c = priv;
	int confirmed;

	if ((confirmed = queue_durable_confirmed(reply, on_commit_durable,
	    c)) == 0)
		return;
	c->call.cb.done(confirmed == 1 && c->ok, c->call.arg);
	free(c);
}

static void
on_exec(struct queue_conn *ac, redisReply *reply, void *priv)
{
	const redisReply *r = reply;
	struct commit_call *c = priv;
	const redisReply *refused = NULL;
	size_t i;
	int ok = r != NULL && r->type == REDIS_REPLY_ARRAY;

	if (r != NULL && !ok)
		refused = r;
	if (ok) {
		for (i = 0; i < r->elements; i++)
			if (r->element[i]->type == REDIS_REPLY_ERROR &&
			    log_limit_allow(&command_failed_limit, now_monotonic()))
				log_warn("redis: a command of the result transaction failed",
				    "error", r->element[i]->str);
		/* The LTRIM after the LPUSH kept dead_max entries: the rest
		 * of the length the LPUSH answered was dropped. */
		if (c->dead_pushed && r->elements >= 2 &&
		    r->element[r->elements - 2]->type == REDIS_REPLY_INTEGER &&
		    r->element[r->elements - 2]->integer > c->dead_max)
			stats.dead_dropped += (unsigned long long)
			    (r->element[r->elements - 2]->integer - c->dead_max);
	}
	/* A nil reply: queue_guard_lua aborted it (and said why). */
	if (refused != NULL && refused->type != REDIS_REPLY_NIL)
		queue_fault_set(FAULT_COMMIT, queue_reply_error(refused));
	if (c->durable) {
		c->ok = ok;
		return;
	}
	c->call.cb.done(ok, c->call.arg);
	free(c);
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

/*
 * One MULTI/EXEC for a batch of results: each result is stored, pushed,
 * published and removed from the processing list together, so a crash
 * leaves either the request in processing or its result in Redis, never
 * neither.  What can be one command for the whole batch is: the records
 * go in one MSET and the results in one LPUSH (same order as one LPUSH
 * each), as do the dead entries (then trimmed to dead_max, oldest at the
 * tail dropped), leaving three commands per result (the Identity's dedup
 * state, PUBLISH, LREM), plus reply_lua for a ReplyTo.  Fewer commands
 * cost Redis less, which matters more than the daemon's own CPU: one Redis
 * serves every instance.  (A Lua script
 * taking the batch as arguments was tried: 11 % less CPU here, 15 % more in
 * Redis; see docs/performance.md.)
 */
int
queue_commit(const struct commit_item *items, size_t n, queue_done_cb *cb, void *arg)
{
	struct commit_call *c;
	char ttl[32], reply_ttl[32], trim[32], dead_trim[32], value[300], hb_ttl[16];
	const char **mv = NULL, **lv = NULL, **dv = NULL;
	size_t *mlens = NULL, *llens = NULL, *dlens = NULL, nm = 1, nl = 2, nd = 2, i;
	char **kusers = NULL;
	int rv = 0;

	if (!queue_ready || n == 0 || (c = malloc(sizeof(*c))) == NULL)
		return -1;
	c->call.cb.done = cb;
	c->call.arg = arg;
	c->dead_pushed = 0;
	c->dead_max = ug.cfg->dead_max;
	c->durable = c->ok = 0;
	mv = malloc((1 + 2 * n) * sizeof(*mv));
	mlens = malloc((1 + 2 * n) * sizeof(*mlens));
	lv = malloc((2 + n) * sizeof(*lv));
	llens = malloc((2 + n) * sizeof(*llens));
	dv = malloc((2 + n) * sizeof(*dv));
	dlens = malloc((2 + n) * sizeof(*dlens));
	kusers = calloc(n, sizeof(*kusers));
	if (mv == NULL || mlens == NULL || lv == NULL || llens == NULL || dv == NULL ||
	    dlens == NULL || kusers == NULL) {
		rv = -1;
		goto done;
	}
	snprintf(ttl, sizeof(ttl), "%ld", ug.cfg->dedup_ttl_s);
	snprintf(reply_ttl, sizeof(reply_ttl), "%ld", ug.cfg->reply_ttl_s);
	snprintf(trim, sizeof(trim), "%ld", ug.cfg->results_max - 1);
	snprintf(dead_trim, sizeof(dead_trim), "%ld", ug.cfg->dead_max - 1);
	mv[0] = "MSET"; mlens[0] = 4;
	lv[0] = "LPUSH"; llens[0] = 5;
	lv[1] = queue_keys.results; llens[1] = strlen(queue_keys.results);
	dv[0] = "LPUSH"; dlens[0] = 5;
	dv[1] = queue_keys.dead; dlens[1] = strlen(queue_keys.dead);

	queue_heartbeat_value(value, sizeof(value));
	snprintf(hb_ttl, sizeof(hb_ttl), "%d", HEARTBEAT_TTL_S);
	rv |= queue_send_strings(queue_cmd, NULL, NULL, 2, "WATCH",
	    queue_keys.instance);
	rv |= queue_send_strings(queue_cmd, on_guard, NULL, 10, "EVALSHA",
	    queue_script_sha[SCRIPT_GUARD], "5", queue_keys.instance,
	    queue_keys.processing, queue_keys.results, queue_keys.dead,
	    queue_keys.recoveries, value, hb_ttl);
	rv |= queue_send_strings(queue_cmd, NULL, NULL, 1, "MULTI");
	for (i = 0; i < n && rv == 0; i++) {
		const struct commit_item *it = &items[i];
		const char *argv[4];
		size_t lens[4];
		char *kid = NULL;

		if (it->identity != NULL && (it->identity_done || it->identity_release)) {
			kid = queue_key("identity:", it->identity);
			if (kid == NULL) {
				rv = -1;
				break;
			}
			if (it->identity_done)
				rv |= queue_send_strings(queue_cmd, NULL, NULL,
				    5, "SET", kid, "done", "EX", ttl);
			else
				rv |= queue_send_strings(queue_cmd, NULL, NULL,
				    2, "DEL", kid);
			free(kid);
		}
		if (it->identity != NULL && it->record != NULL) {
			kusers[i] = queue_key("user:", it->identity);
			if (kusers[i] == NULL) {
				rv = -1;
				break;
			}
			mv[nm] = kusers[i]; mlens[nm++] = strlen(kusers[i]);
			mv[nm] = it->record; mlens[nm++] = it->recordlen;
		}
		lv[nl] = it->result; llens[nl++] = it->resultlen;

		argv[0] = "PUBLISH"; lens[0] = 7;
		argv[1] = queue_keys.events; lens[1] = strlen(argv[1]);
		argv[2] = it->result; lens[2] = it->resultlen;
		rv |= queue_send_argv(queue_cmd, NULL, NULL, 3, argv, lens);
		if (it->reply_to != NULL) {
			const char *ev[6] = { "EVAL", reply_lua, "1", it->reply_to, it->result,
			    reply_ttl };
			size_t evlens[6] = { 4, sizeof(reply_lua) - 1, 1, strlen(it->reply_to),
			    it->resultlen, strlen(reply_ttl) };

			rv |= queue_send_argv(queue_cmd, NULL, NULL, 6, ev,
			    evlens);
		}
		if (it->dead != NULL) {
			dv[nd] = it->dead; dlens[nd++] = it->deadlen;
		}
		if (it->recovered) {
			argv[0] = "HDEL"; lens[0] = 4;
			argv[1] = queue_keys.recoveries;
			lens[1] = strlen(queue_keys.recoveries);
			argv[2] = it->raw; lens[2] = it->rawlen;
			rv |= queue_send_argv(queue_cmd, NULL, NULL, 3, argv,
			    lens);
		}
		if (it->in_processing) {
			argv[0] = "LREM"; lens[0] = 4;
			argv[1] = queue_keys.processing;
			lens[1] = strlen(queue_keys.processing);
			argv[2] = "-1"; lens[2] = 2;
			argv[3] = it->raw; lens[3] = it->rawlen;
			rv |= queue_send_argv(queue_cmd, NULL, NULL, 4, argv,
			    lens);
		}
	}
	if (rv == 0 && nm > 1)
		rv |= queue_send_argv(queue_cmd, NULL, NULL, (int)nm, mv,
		    mlens);
	if (rv == 0)
		rv |= queue_send_argv(queue_cmd, NULL, NULL, (int)nl, lv,
		    llens);
	if (rv == 0)
		rv |= queue_send_strings(queue_cmd, NULL, NULL, 4, "LTRIM",
		    queue_keys.results, "0", trim);
	/* Last before EXEC, so on_exec finds the LPUSH's answer (the new
	 * length) second to last and counts what the LTRIM dropped. */
	if (rv == 0 && nd > 2) {
		rv |= queue_send_argv(queue_cmd, NULL, NULL, (int)nd, dv,
		    dlens);
		rv |= queue_send_strings(queue_cmd, NULL, NULL, 4, "LTRIM",
		    queue_keys.dead, "0", dead_trim);
		c->dead_pushed = 1;
	}
	if (rv == 0) {
		rv = queue_send_strings(queue_cmd, on_exec, c, 1, "EXEC");
		if (rv == 0 && ug.cfg->redis_durable_replicas > 0)
			c->durable = queue_durable_send(on_commit_durable,
			    c) == 0;
	} else if (queue_cmd != NULL)
		/* A half-queued transaction must not run. */
		queue_send_strings(queue_cmd, NULL, NULL, 1, "DISCARD");
done:
	if (kusers != NULL)
		for (i = 0; i < n; i++)
			free(kusers[i]);
	free(kusers);
	free(mv);
	free(mlens);
	free(lv);
	free(llens);
	free(dv);
	free(dlens);
	if (rv != 0)
		free(c);
	return rv;
}
