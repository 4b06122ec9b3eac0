/*
 * queue_rate.c: the rate window that all instances share (SPEC §5.3),
 * asked for slots before requests go to Twilio.
 */
#include "config.h"

#include <sys/types.h>

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "queue_int.h"

#define RATE_MARGIN_MS		250

/* Redis' clock in ms, so that every instance counts on the same one. */
#define LUA_NOW \
	"local t = redis.call('TIME')\n" \
	"local now = tonumber(t[1]) * 1000 + " \
	    "math.floor(tonumber(t[2]) / 1000)\n"

static unsigned long long rate_seq;
static long long rate_used = -1;	/* last count; -1: not known */

/*
 * The shared sliding window of SPEC §5.3: a sorted set of grant times (ms,
 * Redis' own clock so instances agree).  Grants up to ARGV[3] slots while
 * fewer than ARGV[1] were granted in the last ARGV[2] ms; returns {granted,
 * ms until the next slot frees}.
 */
const char queue_rate_lua[] =
	LUA_WRONGTYPE
	"local e = wrongtype(KEYS[1], 'zset')\n"
	"if e then return e end\n"
	LUA_NOW
	"local limit, window, want = "
	    "tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])\n"
	"redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)\n"
	"local used = redis.call('ZCARD', KEYS[1])\n"
	"local grant = math.max(0, math.min(limit - used, want))\n"
	"for i = 1, grant do\n"
	"  redis.call('ZADD', KEYS[1], now, ARGV[4] .. ':' .. i)\n"
	"end\n"
	"if grant > 0 then redis.call('PEXPIRE', KEYS[1], window * 2) end\n"
	"local wait = 0\n"
	"if grant < want then\n"
	"  local o = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')\n"
	"  if o[2] then wait = tonumber(o[2]) + window - now + 1 "
	    "else wait = 1 end\n"
	"  if wait < 1 then wait = 1 end\n"
	"end\n"
	"return {grant, wait}\n";

static void
on_rate(struct queue_conn *ac, redisReply *reply, void *priv)
{
	const redisReply *r = reply;
	struct queue_call *c = priv;
	long granted = -1, wait = 0;

	if (r != NULL && r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
	    r->element[0]->type == REDIS_REPLY_INTEGER &&
	    r->element[1]->type == REDIS_REPLY_INTEGER) {
		granted = (long)r->element[0]->integer;
		wait = (long)r->element[1]->integer;
		queue_fault_clear(FAULT_RATE);
	} else if (r != NULL) {
		queue_refused(FAULT_RATE, r);
	}
	c->cb.rate(granted, wait, c->arg);
	free(c);
}

/* The window in ms that the rate script counts grants over. */
static void
rate_window_ms(char *buf, size_t size)
{
	/* Twilio counts a create when it arrives, a little after we granted
	 * it, and requests granted together arrive spread out: a margin on the
	 * window keeps our count ahead of Twilio's. */
	snprintf(buf, size, "%ld", ug.cfg->rate_window_s * 1000 +
	    RATE_MARGIN_MS);
}

int
queue_rate_acquire(long want, queue_rate_cb *cb, void *arg)
{
	struct queue_call *c;
	char limit[32], window[32], wants[32], member[300];
	int rv;

	if (!queue_ready || (c = malloc(sizeof(*c))) == NULL)
		return -1;
	c->cb.rate = cb;
	c->arg = arg;
	snprintf(limit, sizeof(limit), "%ld",
	    ug.cfg->rate_limit * ug.cfg->rate_window_s);
	rate_window_ms(window, sizeof(window));
	snprintf(wants, sizeof(wants), "%ld", want);
	snprintf(member, sizeof(member), "%s:%d:%llu", ug.cfg->instance_id,
	    (int)getpid(), ++rate_seq);
	rv = queue_send_strings(queue_cmd, on_rate, c, 8, "EVALSHA",
	    queue_script_sha[SCRIPT_RATE], "1", queue_keys.rate, limit, window,
	    wants, member);
	if (rv != 0)
		free(c);
	return rv;
}

/*
 * The grants of the last window, every instance's, counted as the rate
 * script counts them (on Redis' clock, the expired ones dropped first,
 * which changes nothing the limiter sees): what `show stats` calls
 * rate_window_used.  The same commands as the rate script, so the least
 * privilege ACL of docs/operations.md needs nothing more.
 */
const char queue_rate_used_lua[] =
	LUA_NOW
	"redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', "
	    "now - tonumber(ARGV[1]))\n"
	"return redis.call('ZCARD', KEYS[1])\n";

static void
on_rate_used(struct queue_conn *ac, redisReply *reply, void *priv)
{
	const redisReply *r = reply;

	if (queue_is_noscript(r))
		queue_scripts_reload();
	rate_used = r != NULL && r->type == REDIS_REPLY_INTEGER ?
	    r->integer : -1;
}

/* Sent with the lengths (queue_lengths), whose answers come after it on
 * the same link: the count is fresh when they are handed over. */
void
queue_rate_count(void)
{
	char window[32];

	rate_window_ms(window, sizeof(window));
	if (queue_send_strings(queue_cmd, on_rate_used, NULL, 5, "EVALSHA",
	    queue_script_sha[SCRIPT_RATE_USED], "1", queue_keys.rate,
	    window) != 0)
		rate_used = -1;
}

long long
queue_last_rate_used(void)
{
	return ug.redis_up ? rate_used : -1;
}
