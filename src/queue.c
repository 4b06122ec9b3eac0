/*
 * queue.c: everything usergated says to Redis.  The only file that includes
 * hiredis.
 *
 * Two connections: `cmd` carries every ordinary command and script, in order,
 * so a claim, a commit and a refresh issued in that order are executed in
 * that order; `blk` carries only the blocking BLMOVE used when the request
 * list is empty, so a long block never delays a result.
 *
 * hiredis' contract: every command callback is called exactly once, with a
 * NULL reply when the connection is lost; the context is freed by hiredis
 * after the disconnect callback, so we forget our pointer there.
 */
#include "config.h"

#include <sys/types.h>

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <hiredis/adapters/libevent.h>

#include "daemon.h"

#define CLAIM_TTL_S		60	/* an in-flight claim outlives a dead owner this long */
#define HEARTBEAT_TTL_S		15
#define HEARTBEAT_EVERY_S	5
#define TAKE_BATCH_MAX		1024
#define RATE_MARGIN_MS		250
#define BLOCK_TIMEOUT		"1"	/* seconds a BLMOVE waits before we look again */
#define RECONNECT_MIN_MS	100
#define RECONNECT_MAX_MS	5000
#define INTAKE_RETRY_MIN_MS	100	/* after an error reply to a take */
#define INTAKE_RETRY_MAX_MS	5000
#define OVERSIZE_HEAD		"256"	/* bytes of an oversize element kept */

/*
 * A key under our prefix that holds another type makes a script fail
 * midway, and Redis does not roll back what it already wrote.  So every
 * script checks its keys first and, before any write, answers this error,
 * which names the key (Redis' own WRONGTYPE message does not).
 */
#define LUA_WRONGTYPE \
	"local function wrongtype(k, t)\n" \
	"  local have = redis.call('TYPE', k).ok\n" \
	"  if have ~= 'none' and have ~= t then\n" \
	"    return redis.error_reply('WRONGTYPE key ' .. k)\n" \
	"  end\n" \
	"end\n"
#define WRONGTYPE_PREFIX	"WRONGTYPE key "

/*
 * Moves up to ARGV[1] requests from the right of the request list (FIFO) to
 * the left of our processing list, atomically, and says for each how often
 * it was already recovered after a crash.  Three commands per batch, not an
 * LMOVE per request: the LPUSH takes the requests oldest first, so the
 * processing list ends up exactly as one LMOVE RIGHT LEFT each would leave
 * it.  Checking the recoveries hash only when it exists keeps the common
 * case free of per-request commands.  The LPUSH comes before the LTRIM, so
 * a request is always in one of the lists.
 *
 * An element longer than ARGV[2] bytes is not handed over: a stub takes its
 * place in the processing list (UG_OVERSIZE_MARK, its length, its first
 * 256 bytes), which is all usergated ever reads of it, and which the result
 * transaction removes like any request.
 */
static const char take_lua[] =
	LUA_WRONGTYPE
	"local e = wrongtype(KEYS[1], 'list') or wrongtype(KEYS[2], 'list') or\n"
	"  wrongtype(KEYS[3], 'hash')\n"
	"if e then return e end\n"
	"local vs = redis.call('LRANGE', KEYS[1], -tonumber(ARGV[1]), -1)\n"
	"local n = #vs\n"
	"if n == 0 then return {} end\n"
	"local max = tonumber(ARGV[2])\n"
	"local taken, out = {}, {}\n"
	"local rec = redis.call('EXISTS', KEYS[3]) == 1\n"
	"for i = 1, n do\n"
	"  local v = vs[n + 1 - i]\n"
	"  if #v > max then v = ARGV[3] .. #v .. ' ' .. string.sub(v, 1, 256) end\n"
	"  taken[i] = v\n"
	"  out[2 * i - 1] = v\n"
	"  out[2 * i] = rec and tonumber(redis.call('HGET', KEYS[3], v) or '0') or 0\n"
	"end\n"
	"redis.call('LPUSH', KEYS[2], unpack(taken))\n"
	"redis.call('LTRIM', KEYS[1], 0, -n - 1)\n"
	"return out\n";

/*
 * Claims Identities for this instance, many per call (KEYS: identity and
 * user key pairs).  For each: {1} when we own it (new claim, or ours from
 * before a restart), {2, record} when it completed within the dedup TTL,
 * {3, owner} when another instance has it in flight, {4, key} when a key of
 * it has the wrong type (pcall: the rest of the batch goes on).  A "done" state
 * without a stored record is claimed anew (Twilio stays the final
 * authority through 409/50201).  A new Identity, the common case, costs
 * one SET NX.  One script call per batch: a script call costs Redis far
 * more than the few commands inside it.
 */
static const char claim_lua[] =
	"local out = {}\n"
	"for i = 1, #KEYS / 2 do\n"
	"  local kid, kuser = KEYS[2 * i - 1], KEYS[2 * i]\n"
	"  if redis.call('SET', kid, ARGV[1], 'NX', 'EX', ARGV[2]) then\n"
	"    out[i] = {1}\n"
	"  else\n"
	"    local v = redis.pcall('GET', kid)\n"
	"    local r = v == 'done' and redis.pcall('GET', kuser)\n"
	"    if type(v) == 'table' then\n"
	"      out[i] = {4, kid}\n"
	"    elseif type(r) == 'table' then\n"
	"      out[i] = {4, kuser}\n"
	"    elseif v == ARGV[1] then\n"
	"      redis.call('EXPIRE', kid, ARGV[2])\n"
	"      out[i] = {1}\n"
	"    elseif r then\n"
	"      out[i] = {2, r}\n"
	"    elseif v == 'done' then\n"
	"      redis.call('SET', kid, ARGV[1], 'EX', ARGV[2])\n"
	"      out[i] = {1}\n"
	"    else\n"
	"      out[i] = {3, v}\n"
	"    end\n"
	"  end\n"
	"end\n"
	"return out\n";

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
 * The shared sliding window of SPEC §5.3: a sorted set of grant times (ms,
 * Redis' own clock so instances agree).  Grants up to ARGV[3] slots while
 * fewer than ARGV[1] were granted in the last ARGV[2] ms; returns {granted,
 * ms until the next slot frees}.
 */
static const char rate_lua[] =
	LUA_WRONGTYPE
	"local e = wrongtype(KEYS[1], 'zset')\n"
	"if e then return e end\n"
	"local t = redis.call('TIME')\n"
	"local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
	"local limit, window, want = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])\n"
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
	"  if o[2] then wait = tonumber(o[2]) + window - now + 1 else wait = 1 end\n"
	"  if wait < 1 then wait = 1 end\n"
	"end\n"
	"return {grant, wait}\n";

/*
 * Hands processing lists back to the request list so that their oldest
 * element is taken first, counting one recovery for each element.  With
 * ARGV[3] == "self" it recovers our own list (at start); otherwise every
 * registered instance whose heartbeat expired.  One script, so two live
 * instances can never both take the same list.  (The processing and
 * heartbeat keys are derived from the prefix: standalone Redis only.)  A
 * dead instance's list of the wrong type is left alone and named in the
 * error; the other lists are recovered all the same.
 */
static const char takeover_lua[] =
	LUA_WRONGTYPE
	"local moved = 0\n"
	"local e = wrongtype(KEYS[1], 'set') or wrongtype(KEYS[2], 'list') or\n"
	"  wrongtype(KEYS[3], 'hash')\n"
	"if e then return e end\n"
	"local bad\n"
	"local function recover(id)\n"
	"  local l = ARGV[1] .. 'processing:' .. id\n"
	"  local e = wrongtype(l, 'list')\n"
	"  if e then return e end\n"
	"  while true do\n"
	"    local v = redis.call('LMOVE', l, KEYS[2], 'LEFT', 'RIGHT')\n"
	"    if not v then break end\n"
	"    redis.call('HINCRBY', KEYS[3], v, 1)\n"
	"    moved = moved + 1\n"
	"  end\n"
	"end\n"
	"if ARGV[3] == 'self' then\n"
	"  return recover(ARGV[2]) or moved\n"
	"end\n"
	"for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do\n"
	"  if id ~= ARGV[2] and redis.call('EXISTS', ARGV[1] .. 'instance:' .. id) == 0 then\n"
	"    e = recover(id)\n"
	"    if e then bad = e else redis.call('SREM', KEYS[1], id) end\n"
	"  end\n"
	"end\n"
	"return bad or moved\n";

/*
 * After a reconnect our processing list may hold elements no job of ours
 * holds (a take whose reply was lost with the link, or anything put there
 * behind our back, in any number).  ARGV lists what our jobs hold (a
 * multiset); everything else goes back to the right of the request list,
 * oldest rightmost, to be taken again as room allows.  Nothing is read
 * into usergated, however long the list.
 */
static const char reconcile_lua[] =
	LUA_WRONGTYPE
	"local e = wrongtype(KEYS[1], 'list') or wrongtype(KEYS[2], 'list')\n"
	"if e then return e end\n"
	"local held = {}\n"
	"for _, v in ipairs(ARGV) do held[v] = (held[v] or 0) + 1 end\n"
	"local kept, back, i = {}, {}, 0\n"
	"while true do\n"
	"  local page = redis.call('LRANGE', KEYS[1], i, i + 999)\n"
	"  for _, v in ipairs(page) do\n"
	"    if (held[v] or 0) > 0 then\n"
	"      held[v] = held[v] - 1\n"
	"      kept[#kept + 1] = v\n"
	"    else\n"
	"      back[#back + 1] = v\n"
	"    end\n"
	"  end\n"
	"  if #page < 1000 then break end\n"
	"  i = i + 1000\n"
	"end\n"
	"if #back == 0 then return 0 end\n"
	"local function push(k, t)\n"
	"  for j = 1, #t, 1000 do\n"
	"    redis.call('RPUSH', k, unpack(t, j, math.min(j + 999, #t)))\n"
	"  end\n"
	"end\n"
	"push(KEYS[2], back)\n"
	"redis.call('DEL', KEYS[1])\n"
	"push(KEYS[1], kept)\n"
	"return #back\n";

/*
 * Sent after WATCH of our heartbeat key, before a result transaction: when
 * a key the transaction writes has the wrong type, it writes the heartbeat
 * again (same value and TTL), which makes the EXEC abort as a whole.
 * Commands of a transaction run even when one before them failed, so
 * without this a result that could not be stored would take its request
 * out of the processing list with it.  KEYS: heartbeat, processing,
 * results, dead, recoveries; ARGV: heartbeat value and TTL.
 */
static const char guard_lua[] =
	LUA_WRONGTYPE
	"local e = wrongtype(KEYS[2], 'list') or wrongtype(KEYS[3], 'list') or\n"
	"  wrongtype(KEYS[4], 'list') or wrongtype(KEYS[5], 'hash')\n"
	"if e then redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2]) end\n"
	"return e or 0\n";

/*
 * Replaces an element BLMOVE just put in our processing list, known by its
 * length and first bytes, by the stub of an oversize element (ARGV: length,
 * head, stub).  It is among the first few: only our own pushes come after.
 */
static const char stub_lua[] =
	"local len, head = tonumber(ARGV[1]), ARGV[2]\n"
	"for i, v in ipairs(redis.call('LRANGE', KEYS[1], 0, 63)) do\n"
	"  if #v == len and string.sub(v, 1, #head) == head then\n"
	"    redis.call('LSET', KEYS[1], i - 1, ARGV[3])\n"
	"    return 1\n"
	"  end\n"
	"end\n"
	"return 0\n";

/*
 * The element at the head of the request list, for the queue's age; an
 * oversize one is named by its first bytes and length, never read whole.
 */
static const char head_lua[] =
	"local v = redis.call('LINDEX', KEYS[1], -1)\n"
	"if v and #v > tonumber(ARGV[1]) then\n"
	"  return string.sub(v, 1, tonumber(ARGV[1])) .. #v\n"
	"end\n"
	"return v\n";

enum script {
	SCRIPT_TAKE, SCRIPT_CLAIM, SCRIPT_RATE, SCRIPT_TAKEOVER, SCRIPT_RECONCILE,
	SCRIPT_GUARD, SCRIPT_STUB, SCRIPT_HEAD, SCRIPT_COUNT
};
static const char *const script_source[SCRIPT_COUNT] = {
	take_lua, claim_lua, rate_lua, takeover_lua, reconcile_lua, guard_lua, stub_lua,
	head_lua,
};
static char script_sha[SCRIPT_COUNT][41];

static redisAsyncContext *cmd;		/* NULL while disconnected */
static redisAsyncContext *blk;
static int cmd_ready;			/* scripts loaded, instance registered */
static int registered_once;		/* own processing list recovered */
static int take_outstanding;
static int block_outstanding;
static int intake_stopped;
static int shutting_down;
static long long blk_client_id = -1;		/* queue_shutdown: no reconnects */
static long reconnect_ms = RECONNECT_MIN_MS;
static char outage_reason[128];		/* non-empty: an outage, logged once */
static int setup_failed;		/* Redis refused this connection's setup */
static int scripts_loading;		/* SCRIPT LOADs on the wire */
static int reconcile_pending;		/* processing list to reconcile */
static struct event *reconnect_ev;
static struct event *intake_retry_ev;
static long intake_failures;		/* error replies to takes in a row */
static struct event *heartbeat_ev;
static unsigned long long rate_seq;
static char hostname[256];

static long long last_requests = -1, last_processing = -1, last_dead = -1;

/* Key names, built once from the prefix. */
static char *k_requests, *k_processing, *k_recoveries, *k_instances, *k_rate;
static char *k_results, *k_events, *k_dead, *k_instance;

static void	 connect_all(void);
static void	 on_client_id(redisAsyncContext *, void *, void *);
static void	 on_script_loaded(redisAsyncContext *, void *, void *);
static void	 schedule_reconnect(void);
static int	 send_strings(redisAsyncContext *, redisCallbackFn *, void *, int, ...);

/*
 * What Redis refuses us while the link is up, by the operation that met it:
 * a key of the wrong type under our prefix, or any error reply (OOM at
 * maxmemory, say).  Health names the first; each is logged when it appears
 * or changes and once when it is gone, not once per try: every operation
 * here is retried with backoff.
 */
enum fault {
	FAULT_TAKE, FAULT_CLAIM, FAULT_RATE, FAULT_TAKEOVER, FAULT_COMMIT, FAULT_COUNT
};
static const char *const fault_operation[FAULT_COUNT] = {
	"taking requests", "identity claims", "rate window",
	"recovering processing lists", "result transaction",
};
static char fault_reason[FAULT_COUNT][192];

static void
fault_set(enum fault f, const char *error)
{
	char reason[sizeof(fault_reason[0])];
	size_t n = strlen(WRONGTYPE_PREFIX);

	if (strncmp(error, WRONGTYPE_PREFIX, n) == 0)
		snprintf(reason, sizeof(reason), "redis key %s has wrong type", error + n);
	else
		snprintf(reason, sizeof(reason), "redis refused %s: %s", fault_operation[f],
		    error);
	if (strcmp(reason, fault_reason[f]) == 0)
		return;
	memcpy(fault_reason[f], reason, sizeof(reason));
	/* An Identity (often an e-mail address) is named at debug level only. */
	if (f == FAULT_CLAIM)
		log_error("redis refused identity claims; retrying with backoff");
	else
		log_error("redis refused a command; retrying with backoff",
		    "operation", fault_operation[f], "reason", reason);
	log_debug("redis fault", "reason", reason);
	state_changed();
}

static void
fault_clear(enum fault f)
{
	if (fault_reason[f][0] == '\0')
		return;
	fault_reason[f][0] = '\0';
	log_info("redis accepts our commands again", "operation", fault_operation[f]);
	state_changed();
}

static int
is_noscript(const redisReply *r)
{
	return r != NULL && r->type == REDIS_REPLY_ERROR && strncmp(r->str, "NOSCRIPT", 8) == 0;
}

static const char *
reply_error(const redisReply *r)
{
	return r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply";
}

/* The reason health gives, or NULL when Redis serves us well. */
const char *
queue_problem(void)
{
	int i;

	if (!ug.redis_up)
		return outage_reason[0] ? outage_reason : "redis unreachable";
	for (i = 0; i < FAULT_COUNT; i++)
		if (fault_reason[i][0])
			return fault_reason[i];
	return NULL;
}

/*
 * The first failure of an outage is logged, and then only a change of
 * reason: a wrong password retried with backoff for hours is one line.
 */
static void
outage(const char *reason, const char *error)
{
	if (strcmp(reason, outage_reason) == 0)
		return;
	snprintf(outage_reason, sizeof(outage_reason), "%s", reason);
	if (strcmp(reason, "redis unreachable") == 0)
		log_warn("cannot connect to redis, retrying with backoff", "error", error);
	else
		log_error("redis refuses us, retrying with backoff", "reason", reason,
		    "error", error);
	state_changed();
}

/*
 * Redis forgot our scripts (a restart, a failover, SCRIPT FLUSH): load them
 * again, once for all the calls that failed together.  Callers retry their
 * call, and on this ordered link every retry comes after the loads.
 */
static void
scripts_reload(void)
{
	int i;

	if (scripts_loading > 0 || cmd == NULL)
		return;
	log_warn("redis lost our scripts (restart, failover or SCRIPT FLUSH); "
	    "loading them again");
	for (i = 0; i < SCRIPT_COUNT; i++)
		if (send_strings(cmd, on_script_loaded, (void *)(intptr_t)i, 3, "SCRIPT",
		    "LOAD", script_source[i]) == 0)
			scripts_loading++;
}

/* After an error reply to a take or a BLMOVE: try again later, not at once. */
static void
intake_backoff(void)
{
	/* The cap of the backoff (rnd 1): 100 ms doubling to 5 s. */
	long ms = pace_backoff_ms(++intake_failures, INTAKE_RETRY_MIN_MS,
	    INTAKE_RETRY_MAX_MS, 0, 1.0);
	struct timeval tv;

	tv.tv_sec = ms / 1000;
	tv.tv_usec = (ms % 1000) * 1000;
	evtimer_add(intake_retry_ev, &tv);
}

static void
intake_retry_cb(evutil_socket_t fd, short what, void *arg)
{
	queue_pump();
}

/* An error reply to one of our calls: reload lost scripts, or record it. */
static void
refused(enum fault f, const redisReply *r)
{
	if (is_noscript(r))
		scripts_reload();
	else
		fault_set(f, reply_error(r));
}

/*
 * The reply to a take (or reconcile): anything but the expected type is
 * an error, retried with backoff.  Returns whether it is the expected one.
 */
static int
take_answered(const redisReply *r, int type)
{
	take_outstanding = 0;
	if (r == NULL)
		return 0;
	if (r->type != type) {
		refused(FAULT_TAKE, r);
		intake_backoff();
		return 0;
	}
	intake_failures = 0;
	fault_clear(FAULT_TAKE);
	return 1;
}

/* PREFIX + suffix + arg, malloc'd; two per result, so no printf. */
static char *
key(const char *suffix, const char *arg)
{
	size_t a = strlen(ug.cfg->prefix), b = strlen(suffix);
	size_t c = arg != NULL ? strlen(arg) : 0;
	char *s;

	if ((s = malloc(a + b + c + 1)) == NULL)
		return NULL;
	memcpy(s, ug.cfg->prefix, a);
	memcpy(s + a, suffix, b);
	if (c > 0)
		memcpy(s + a + b, arg, c);
	s[a + b + c] = '\0';
	return s;
}

/* Sends one command as argv; returns -1 when the link is down. */
static int
send_argv(redisAsyncContext *ac, redisCallbackFn *fn, void *priv, int argc,
    const char **argv, const size_t *lens)
{
	sds text;
	int len, rv;

	if (ac == NULL)
		return -1;
	/* The sds formatter: redisFormatCommandArgv sprintf()s every
	 * argument's length, about 60 % slower (docs/performance.md). */
	if ((len = redisFormatSdsCommandArgv(&text, argc, argv, lens)) < 0)
		return -1;
	rv = redisAsyncFormattedCommand(ac, fn, priv, text, (size_t)len);
	redisFreeSdsCommand(text);
	return rv == REDIS_OK ? 0 : -1;
}

/* Convenience for commands made only of C strings. */
static int
send_strings(redisAsyncContext *ac, redisCallbackFn *fn, void *priv, int argc, ...)
{
	const char *argv[16];
	size_t lens[16];
	va_list ap;
	int i;

	if (argc > 16)
		return -1;
	va_start(ap, argc);
	for (i = 0; i < argc; i++) {
		argv[i] = va_arg(ap, const char *);
		lens[i] = strlen(argv[i]);
	}
	va_end(ap);
	return send_argv(ac, fn, priv, argc, argv, lens);
}


/* ------------------------------------------------------------------ */
/* connection management */

static void
link_lost(void)
{
	int was = ug.redis_up;

	cmd_ready = 0;
	ug.redis_up = 0;
	take_outstanding = 0;
	if (was) {
		log_warn("redis connection lost; requests stay queued, reconnecting");
		job_redis_changed(0);
		state_changed();
	}
}

static void
on_disconnect(const redisAsyncContext *ac, int status)
{
	if (ac == cmd) {
		cmd = NULL;
		link_lost();
		/* Drop the blocking link too: it is re-made with cmd. */
		if (blk != NULL)
			redisAsyncDisconnect(blk);
	} else if (ac == blk) {
		blk = NULL;
		block_outstanding = 0;
		if (cmd != NULL && !ug.draining)
			redisAsyncDisconnect(cmd);
	}
	if (!shutting_down)
		schedule_reconnect();
}

static void
on_connect(const redisAsyncContext *ac, int status)
{
	if (status == REDIS_OK)
		return;
	/* hiredis frees the context after this callback. */
	outage("redis unreachable", ac->errstr);
	if (ac == cmd) {
		cmd = NULL;
		link_lost();
		if (blk != NULL)
			redisAsyncDisconnect(blk);
	} else if (ac == blk) {
		blk = NULL;
		if (cmd != NULL)
			redisAsyncDisconnect(cmd);
	}
	if (!shutting_down)
		schedule_reconnect();
}

static void
reconnect_cb(evutil_socket_t fd, short what, void *arg)
{
	if (cmd == NULL && blk == NULL && !shutting_down)
		connect_all();
}

static void
schedule_reconnect(void)
{
	struct timeval tv;

	if (cmd != NULL || blk != NULL || shutting_down)
		return;		/* the other link's disconnect will call us */
	tv.tv_sec = reconnect_ms / 1000;
	tv.tv_usec = (reconnect_ms % 1000) * 1000;
	evtimer_add(reconnect_ev, &tv);
	reconnect_ms = reconnect_ms * 2 > RECONNECT_MAX_MS ? RECONNECT_MAX_MS : reconnect_ms * 2;
}

/*
 * A refused AUTH, SELECT or SCRIPT LOAD is a failed connection: the link is
 * not up, health says why, and we retry with backoff (the operator may be
 * fixing Redis).  Only the first refusal of an attempt counts: after a
 * refused AUTH every later command is refused too.
 */
static void
hello_failed(redisAsyncContext *ac, const char *what, const redisReply *r)
{
	char reason[sizeof(outage_reason)];

	if (r != NULL && !setup_failed) {
		if (strcmp(what, "AUTH") == 0)
			snprintf(reason, sizeof(reason), "redis auth refused");
		else if (strcmp(what, "SELECT") == 0)
			snprintf(reason, sizeof(reason), "redis db refused");
		else
			snprintf(reason, sizeof(reason), "redis refused %s", what);
		outage(reason, reply_error(r));
	}
	setup_failed = 1;
	if (ac != NULL && (ac == cmd || ac == blk))
		redisAsyncDisconnect(ac);
}

static void
on_setup_reply(redisAsyncContext *ac, void *reply, void *priv)
{
	const redisReply *r = reply;

	if (r == NULL)
		return;		/* link lost; the disconnect path retries */
	if (r->type == REDIS_REPLY_ERROR)
		hello_failed(ac, priv, r);
}

static void
on_script_loaded(redisAsyncContext *ac, void *reply, void *priv)
{
	const redisReply *r = reply;
	enum script s = (enum script)(intptr_t)priv;

	if (scripts_loading > 0)
		scripts_loading--;
	if (r == NULL)
		return;
	if (r->type != REDIS_REPLY_STRING || r->len != 40) {
		hello_failed(ac, "SCRIPT LOAD", r);
		return;
	}
	memcpy(script_sha[s], r->str, 40);
	script_sha[s][40] = '\0';
}

static void	 on_registered(redisAsyncContext *, void *, void *);

/* A zombie (exited, not yet reaped) counts as gone. */
static int
process_alive(int pid)
{
	char path[64], buf[256], *p;
	FILE *f;

	if (kill(pid, 0) != 0 && errno != EPERM)
		return 0;
	snprintf(path, sizeof(path), "/proc/%d/stat", pid);
	if ((f = fopen(path, "r")) == NULL)
		return 1;
	p = fgets(buf, sizeof(buf), f);
	fclose(f);
	if (p != NULL && (p = strrchr(buf, ')')) != NULL && p[1] == ' ' && p[2] == 'Z')
		return 0;
	return 1;
}

/*
 * The first GET of our heartbeat key tells whether another live daemon uses
 * our instance_id.  A key left by a previous run of ours on this host whose
 * process is gone (killed, crashed) is ours to take over.
 */
static void
on_instance_check(redisAsyncContext *ac, void *reply, void *priv)
{
	const redisReply *r = reply;
	char self[300];
	int pid;
	char host[256];

	if (r == NULL)
		return;
	if (r->type == REDIS_REPLY_ERROR || setup_failed) {
		hello_failed(ac, "GET", r);
		return;
	}
	if (r->type == REDIS_REPLY_STRING && !registered_once) {
		snprintf(self, sizeof(self), "pid=%d host=%s", (int)getpid(), hostname);
		if (sscanf(r->str, "pid=%d host=%255s", &pid, host) == 2 &&
		    strcmp(r->str, self) != 0) {
			int alive = strcmp(host, hostname) != 0 || process_alive(pid);
			if (alive) {
				log_error("another live daemon uses this instance_id; "
				    "give each daemon a unique [redis] instance_id",
				    "instance_id", ug.cfg->instance_id, "holder", r->str);
				daemon_stop(-1);
				return;
			}
		}
	}
	on_registered(ac, reply, priv);
}

static void
heartbeat_write(void)
{
	char value[300], ttl[16];

	snprintf(value, sizeof(value), "pid=%d host=%s", (int)getpid(), hostname);
	snprintf(ttl, sizeof(ttl), "%d", HEARTBEAT_TTL_S);
	send_strings(cmd, NULL, NULL, 5, "SET", k_instance, value, "EX", ttl);
	send_strings(cmd, NULL, NULL, 3, "SADD", k_instances, ug.cfg->instance_id);
}

static void
on_recovered(redisAsyncContext *ac, void *reply, void *priv)
{
	const redisReply *r = reply;

	if (r == NULL)
		return;
	if (r->type != REDIS_REPLY_INTEGER) {
		refused(FAULT_TAKEOVER, r);
		/* Our own list is then reconciled before we take anything:
		 * what our jobs do not hold goes back to the request list.
		 * Other instances' lists are tried again at the next
		 * heartbeat. */
		if (priv != NULL)
			reconcile_pending = 1;
		return;
	}
	fault_clear(FAULT_TAKEOVER);
	if (r->integer > 0) {
		char n[32];

		snprintf(n, sizeof(n), "%lld", r->integer);
		stats.recovered += (unsigned long long)r->integer;
		log_warn("requests recovered from a processing list", "count", n,
		    "from", priv ? "own list (previous run)" : "dead instance");
		queue_pump();
	}
}

static void
takeover(int self)
{
	if (cmd == NULL || script_sha[SCRIPT_TAKEOVER][0] == '\0')
		return;
	send_strings(cmd, on_recovered, self ? (void *)1 : NULL, 9, "EVALSHA",
	    script_sha[SCRIPT_TAKEOVER], "3", k_instances, k_requests, k_recoveries,
	    ug.cfg->prefix, ug.cfg->instance_id, self ? "self" : "others");
}

/*
 * After an outage our processing list may hold requests no job of ours
 * knows: a take or a BLMOVE whose reply was lost with the connection.
 * Nobody else would ever finish them (we are alive), so they go back to the
 * request list, where intake takes them as room allows (reconcile_lua).
 * Sent by queue_pump, only while no take is on its way: what our jobs hold
 * then is exactly what of the list is being worked on.
 */
static void
on_reconcile(redisAsyncContext *ac, void *reply, void *priv)
{
	const redisReply *r = reply;

	if (!take_answered(r, REDIS_REPLY_INTEGER))
		return;
	reconcile_pending = 0;
	if (r->integer > 0) {
		char n[32];

		snprintf(n, sizeof(n), "%lld", r->integer);
		log_warn("requests in our processing list that no job holds went back to "
		    "the request list", "count", n);
	}
	queue_pump();
}

static int
reconcile_send(void)
{
	const char **argv;
	size_t *lens, n;
	int rv = -1;

	n = (size_t)job_count();
	argv = calloc(n + 5, sizeof(*argv));
	lens = calloc(n + 5, sizeof(*lens));
	if (argv != NULL && lens != NULL) {
		n = job_held(argv + 5, lens + 5, n);
		argv[0] = "EVALSHA"; lens[0] = 7;
		argv[1] = script_sha[SCRIPT_RECONCILE]; lens[1] = strlen(argv[1]);
		argv[2] = "2"; lens[2] = 1;
		argv[3] = k_processing; lens[3] = strlen(k_processing);
		argv[4] = k_requests; lens[4] = strlen(k_requests);
		rv = send_argv(cmd, on_reconcile, NULL, (int)(n + 5), argv, lens);
	}
	free(argv);
	free(lens);
	return rv;
}

static void
on_registered(redisAsyncContext *ac, void *reply, void *priv)
{
	int first = !registered_once;

	if (reply == NULL || ac != cmd || setup_failed)
		return;
	heartbeat_write();
	if (first) {
		/* Whatever a previous run left in our processing list goes back
		 * to the head of the request list before we take anything. */
		takeover(1);
		registered_once = 1;
	} else {
		reconcile_pending = 1;
	}
	cmd_ready = 1;
	ug.redis_up = 1;
	reconnect_ms = RECONNECT_MIN_MS;
	evtimer_del(intake_retry_ev);
	intake_failures = 0;
	if (outage_reason[0] || !first)
		log_info("redis connection restored");
	outage_reason[0] = '\0';
	job_redis_changed(1);
	state_changed();
	queue_pump();
}

static redisAsyncContext *
connect_one(void)
{
	struct config *c = ug.cfg;
	redisAsyncContext *ac;
	char db[16];

	if (c->redis_unix_socket && c->redis_unix_socket[0])
		ac = redisAsyncConnectUnix(c->redis_unix_socket);
	else
		ac = redisAsyncConnect(c->redis_host, (int)c->redis_port);
	if (ac == NULL)
		return NULL;
	if (ac->err) {
		outage("redis unreachable", ac->errstr);
		redisAsyncFree(ac);
		return NULL;
	}
	if (redisLibeventAttach(ac, ug.base) != REDIS_OK) {
		redisAsyncFree(ac);
		return NULL;
	}
	redisAsyncSetConnectCallback(ac, on_connect);
	redisAsyncSetDisconnectCallback(ac, on_disconnect);
	/* Commands queue until the connection is up. */
	if (c->redis_password)
		send_strings(ac, on_setup_reply, "AUTH", 2, "AUTH", c->redis_password);
	if (c->redis_db != 0) {
		snprintf(db, sizeof(db), "%ld", c->redis_db);
		send_strings(ac, on_setup_reply, "SELECT", 2, "SELECT", db);
	}
	return ac;
}

static void
connect_all(void)
{
	int i;

	setup_failed = 0;
	cmd = connect_one();
	if (cmd == NULL) {
		schedule_reconnect();
		return;
	}
	blk = connect_one();
	if (blk == NULL) {
		redisAsyncDisconnect(cmd);
		return;
	}
	blk_client_id = -1;
	send_strings(blk, on_client_id, NULL, 2, "CLIENT", "ID");
	scripts_loading = 0;
	for (i = 0; i < SCRIPT_COUNT; i++)
		if (send_strings(cmd, on_script_loaded, (void *)(intptr_t)i, 3, "SCRIPT",
		    "LOAD", script_source[i]) == 0)
			scripts_loading++;
	send_strings(cmd, on_instance_check, NULL, 2, "GET", k_instance);
}

/* ------------------------------------------------------------------ */
/* intake */

static void	 on_taken(redisAsyncContext *, void *, void *);
static void	 on_blocked(redisAsyncContext *, void *, void *);

static void
take_one_blocking(void)
{
	if (blk == NULL || block_outstanding)
		return;
	if (send_strings(blk, on_blocked, NULL, 6, "BLMOVE", k_requests, k_processing,
	    "RIGHT", "LEFT", BLOCK_TIMEOUT) == 0)
		block_outstanding = 1;
}

/*
 * Takes what there is room for.  A batch script when the list may be deep;
 * when a batch came back short the list is empty, and one BLMOVE waits for
 * the next request so that an idle daemon answers within a millisecond
 * without polling.
 */
void
queue_pump(void)
{
	long room;
	char n[16], max[16];

	if (!cmd_ready || intake_stopped || ug.paused || ug.draining || job_auth_blocked())
		return;
	if (take_outstanding || block_outstanding || evtimer_pending(intake_retry_ev, NULL))
		return;
	if (reconcile_pending) {
		if (reconcile_send() == 0)
			take_outstanding = 1;
		return;
	}
	room = job_room();
	if (room <= 0)
		return;
	if (room > TAKE_BATCH_MAX)
		room = TAKE_BATCH_MAX;
	snprintf(n, sizeof(n), "%ld", room);
	snprintf(max, sizeof(max), "%d", UG_FRAME_MAX);
	if (send_strings(cmd, on_taken, (void *)(intptr_t)room, 9, "EVALSHA",
	    script_sha[SCRIPT_TAKE], "3", k_requests, k_processing, k_recoveries, n, max,
	    UG_OVERSIZE_MARK) == 0)
		take_outstanding = 1;
}

static char *
copy_bytes(const char *s, size_t len)
{
	char *p = malloc(len + 1);

	if (p == NULL)
		return NULL;
	memcpy(p, s, len);
	p[len] = '\0';
	return p;
}

static void
on_taken(redisAsyncContext *ac, void *reply, void *priv)
{
	const redisReply *r = reply;
	long asked = (long)(intptr_t)priv;
	size_t i, got;

	if (!take_answered(r, REDIS_REPLY_ARRAY))
		return;
	got = r->elements / 2;
	for (i = 0; i + 1 < r->elements; i += 2) {
		const redisReply *v = r->element[i], *n = r->element[i + 1];
		char *raw;

		if (v->type != REDIS_REPLY_STRING)
			continue;
		raw = copy_bytes(v->str, v->len);
		if (raw == NULL) {
			/* It stays in our processing list; the next start
			 * finishes it.  Nothing is lost. */
			log_error("out of memory taking a request");
			continue;
		}
		job_take(raw, v->len, SOURCE_REDIS,
		    n->type == REDIS_REPLY_INTEGER ? (long)n->integer : 0, NULL, NULL);
	}
	if ((long)got >= asked)
		queue_pump();
	else if (job_room() > 0 && !ug.paused && !ug.draining)
		take_one_blocking();
}

struct blocked_item {
	char	*raw;
	size_t	 len;
};

static void
on_blocked_recoveries(redisAsyncContext *ac, void *reply, void *priv)
{
	const redisReply *r = reply;
	struct blocked_item *b = priv;
	long n = 0;

	if (r != NULL && r->type == REDIS_REPLY_STRING)
		n = strtol(r->str, NULL, 10);
	/* Even without an answer the request is ours: it sits in our
	 * processing list, so handle it rather than strand it there. */
	job_take(b->raw, b->len, SOURCE_REDIS, n, NULL, NULL);
	free(b);
	queue_pump();
}

/*
 * BLMOVE hands over an element whole, however long: one at a time, since it
 * waits only while the request list is empty.  One longer than a request may
 * be is replaced in our processing list by the stub the take script would
 * have left (stub_lua), so that it is answered too_large and neither a
 * recovery nor the dead list ever carries it again.  Sending the stub's
 * head rather than the element keeps it at one copy here.
 */
static void
take_oversize(const char *v, size_t len)
{
	size_t mark = strlen(UG_OVERSIZE_MARK), head = (size_t)atoi(OVERSIZE_HEAD);
	const char *argv[7];
	size_t lens[7];
	char *stub, total[32];
	int n;

	if (head > len)
		head = len;
	if ((stub = malloc(mark + 24 + head)) == NULL) {
		log_error("out of memory taking a request");
		return;
	}
	n = snprintf(stub, mark + 24, "%s%zu ", UG_OVERSIZE_MARK, len);
	memcpy(stub + n, v, head);
	snprintf(total, sizeof(total), "%zu", len);
	argv[0] = "EVALSHA"; lens[0] = 7;
	argv[1] = script_sha[SCRIPT_STUB]; lens[1] = strlen(argv[1]);
	argv[2] = "1"; lens[2] = 1;
	argv[3] = k_processing; lens[3] = strlen(k_processing);
	argv[4] = total; lens[4] = strlen(total);
	argv[5] = v; lens[5] = head;
	argv[6] = stub; lens[6] = (size_t)n + head;
	send_argv(cmd, NULL, NULL, 7, argv, lens);
	job_take(stub, (size_t)n + head, SOURCE_REDIS, 0, NULL, NULL);
}

static void
on_blocked(redisAsyncContext *ac, void *reply, void *priv)
{
	const redisReply *r = reply;
	struct blocked_item *b;

	block_outstanding = 0;
	if (r == NULL)
		return;
	if (r->type == REDIS_REPLY_ERROR) {
		fault_set(FAULT_TAKE, r->str);
		intake_backoff();
		return;
	}
	intake_failures = 0;
	fault_clear(FAULT_TAKE);
	if (r->type == REDIS_REPLY_STRING && r->len > UG_FRAME_MAX) {
		take_oversize(r->str, r->len);
		queue_pump();
		return;
	}
	if (r->type == REDIS_REPLY_STRING) {
		b = malloc(sizeof(*b));
		if (b == NULL || (b->raw = copy_bytes(r->str, r->len)) == NULL) {
			free(b);
			log_error("out of memory taking a request");
			return;
		}
		b->len = r->len;
		{
			const char *argv[3] = { "HGET", k_recoveries, b->raw };
			size_t lens[3] = { 4, strlen(k_recoveries), b->len };

			if (send_argv(cmd, on_blocked_recoveries, b, 3, argv, lens) == 0)
				return;
		}
		{
			job_take(b->raw, b->len, SOURCE_REDIS, 0, NULL, NULL);
			free(b);
		}
		return;
	}
	queue_pump();
}

/*
 * Ends a BLMOVE in progress at once (pause, drain).  One that already moved
 * a request hands it to us as usual: it was taken before the pause.
 */
void
queue_unblock(void)
{
	char id[32];

	if (!block_outstanding || blk_client_id < 0 || cmd == NULL)
		return;
	snprintf(id, sizeof(id), "%lld", blk_client_id);
	send_strings(cmd, NULL, NULL, 3, "CLIENT", "UNBLOCK", id);
}

/* A take or a BLMOVE is on its way: until its reply comes back, requests
 * may still be taken.  The status socket's pause waits for this to end
 * before it says ok. */
int
queue_intake_busy(void)
{
	return take_outstanding || block_outstanding;
}

void
queue_stop_intake(void)
{
	intake_stopped = 1;
	queue_unblock();
}

static void
on_client_id(redisAsyncContext *ac, void *reply, void *priv)
{
	const redisReply *r = reply;

	if (r != NULL && r->type == REDIS_REPLY_INTEGER)
		blk_client_id = r->integer;
}

/* ------------------------------------------------------------------ */
/* claims, rate, commits */

struct claim_call {
	queue_claim_cb	*cb;
	void		*arg;
	char		*identity;
};

#define CLAIM_BATCH_MAX	512

/* Claims asked for during this loop iteration, sent together. */
static struct claim_call *claims_pending;
static size_t nclaims_pending, claims_cap;
static struct event *claim_flush_ev;

struct claim_batch {
	size_t			 n;
	struct claim_call	 calls[];
};

static void
claim_answer(struct claim_call *c, const redisReply *e)
{
	enum claim_outcome o = CLAIM_ERROR;
	const char *rec = NULL;
	size_t reclen = 0;

	if (e != NULL && e->type == REDIS_REPLY_ARRAY && e->elements >= 1 &&
	    e->element[0]->type == REDIS_REPLY_INTEGER) {
		switch (e->element[0]->integer) {
		case 1:
			o = CLAIM_OWNED;
			break;
		case 2:		/* the stored record */
		case 4:		/* the key of the wrong type */
			if (e->elements == 2 && e->element[1]->type == REDIS_REPLY_STRING) {
				o = e->element[0]->integer == 2 ? CLAIM_DONE : CLAIM_REFUSED;
				rec = e->element[1]->str;
				reclen = e->element[1]->len;
			}
			break;
		case 3:
			o = CLAIM_PENDING;
			break;
		}
	}
	free(c->identity);
	c->cb(o, rec, reclen, c->arg);
}

static void
on_claims(redisAsyncContext *ac, void *reply, void *priv)
{
	const redisReply *r = reply;
	struct claim_batch *b = priv;
	size_t i;
	int ok = r != NULL && r->type == REDIS_REPLY_ARRAY && r->elements == b->n;
	const redisReply *wrong = NULL;

	if (r != NULL && !ok)
		refused(FAULT_CLAIM, r);
	for (i = 0; ok && i < b->n && wrong == NULL; i++)
		if (r->element[i]->type == REDIS_REPLY_ARRAY && r->element[i]->elements == 2 &&
		    r->element[i]->element[0]->type == REDIS_REPLY_INTEGER &&
		    r->element[i]->element[0]->integer == 4)
			wrong = r->element[i]->element[1];
	if (wrong != NULL && wrong->type == REDIS_REPLY_STRING) {
		char error[192];

		snprintf(error, sizeof(error), "%s%s", WRONGTYPE_PREFIX, wrong->str);
		fault_set(FAULT_CLAIM, error);
	} else if (ok) {
		fault_clear(FAULT_CLAIM);
	}
	for (i = 0; i < b->n; i++)
		claim_answer(&b->calls[i], ok ? r->element[i] : NULL);
	free(b);
}

static void
claim_flush_cb(evutil_socket_t fd, short what, void *arg)
{
	struct claim_batch *b;
	const char **argv;
	size_t *lens, i, n, argc;
	char owner[300], ttl[16], nkeys[32];
	int rv = -1;

	while (nclaims_pending > 0) {
		n = nclaims_pending > CLAIM_BATCH_MAX ? CLAIM_BATCH_MAX : nclaims_pending;
		b = malloc(sizeof(*b) + n * sizeof(b->calls[0]));
		argc = 3 + 2 * n + 2;
		argv = calloc(argc, sizeof(*argv));
		lens = calloc(argc, sizeof(*lens));
		if (b != NULL && argv != NULL && lens != NULL) {
			b->n = n;
			memcpy(b->calls, claims_pending, n * sizeof(b->calls[0]));
			snprintf(owner, sizeof(owner), "pending:%s", ug.cfg->instance_id);
			snprintf(ttl, sizeof(ttl), "%d", CLAIM_TTL_S);
			snprintf(nkeys, sizeof(nkeys), "%zu", 2 * n);
			argv[0] = "EVALSHA";
			argv[1] = script_sha[SCRIPT_CLAIM];
			argv[2] = nkeys;
			for (i = 0; i < n; i++) {
				argv[3 + 2 * i] = key("identity:", b->calls[i].identity);
				argv[4 + 2 * i] = key("user:", b->calls[i].identity);
			}
			argv[3 + 2 * n] = owner;
			argv[4 + 2 * n] = ttl;
			rv = 0;
			for (i = 0; i < argc; i++) {
				if (argv[i] == NULL)
					rv = -1;
				else
					lens[i] = strlen(argv[i]);
			}
			if (rv == 0 && cmd_ready)
				rv = send_argv(cmd, on_claims, b, (int)argc, argv, lens);
			else
				rv = -1;
			for (i = 0; i < 2 * n; i++)
				free((char *)argv[3 + i]);
		}
		free(argv);
		free(lens);
		if (rv != 0) {
			/* No link (or no memory): each caller hears "try later". */
			free(b);
			for (i = 0; i < n; i++)
				claim_answer(&claims_pending[i], NULL);
		}
		memmove(claims_pending, claims_pending + n,
		    (nclaims_pending - n) * sizeof(claims_pending[0]));
		nclaims_pending -= n;
	}
}

int
queue_claim(const char *identity, queue_claim_cb *cb, void *arg)
{
	struct claim_call *c;

	if (!cmd_ready)
		return -1;
	if (nclaims_pending == claims_cap) {
		size_t cap = claims_cap ? claims_cap * 2 : 64;

		if ((c = realloc(claims_pending, cap * sizeof(*c))) == NULL)
			return -1;
		claims_pending = c;
		claims_cap = cap;
	}
	c = &claims_pending[nclaims_pending];
	if ((c->identity = strdup(identity)) == NULL)
		return -1;
	c->cb = cb;
	c->arg = arg;
	if (nclaims_pending++ == 0)
		event_active(claim_flush_ev, EV_TIMEOUT, 0);
	return 0;
}

void
queue_refresh_claims(const char *const *identities, size_t n)
{
	char ttl[16];
	size_t i;

	if (!cmd_ready)
		return;
	snprintf(ttl, sizeof(ttl), "%d", CLAIM_TTL_S);
	for (i = 0; i < n; i++) {
		char *kid = key("identity:", identities[i]);

		if (kid == NULL)
			continue;
		send_strings(cmd, NULL, NULL, 3, "EXPIRE", kid, ttl);
		free(kid);
	}
}

struct rate_call {
	queue_rate_cb	*cb;
	void		*arg;
};

static void
on_rate(redisAsyncContext *ac, void *reply, void *priv)
{
	const redisReply *r = reply;
	struct rate_call *c = priv;
	long granted = -1, wait = 0;

	if (r != NULL && r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
	    r->element[0]->type == REDIS_REPLY_INTEGER &&
	    r->element[1]->type == REDIS_REPLY_INTEGER) {
		granted = (long)r->element[0]->integer;
		wait = (long)r->element[1]->integer;
		fault_clear(FAULT_RATE);
	} else if (r != NULL) {
		refused(FAULT_RATE, r);
	}
	c->cb(granted, wait, c->arg);
	free(c);
}

int
queue_rate_acquire(long want, queue_rate_cb *cb, void *arg)
{
	struct rate_call *c;
	char limit[32], window[32], wants[32], member[300];
	int rv;

	if (!cmd_ready || (c = malloc(sizeof(*c))) == NULL)
		return -1;
	c->cb = cb;
	c->arg = arg;
	snprintf(limit, sizeof(limit), "%ld", ug.cfg->rate_limit * ug.cfg->rate_window_s);
	/* Twilio counts a create when it arrives, a little after we granted
	 * it, and requests granted together arrive spread out: a margin on the
	 * window keeps our count ahead of Twilio's. */
	snprintf(window, sizeof(window), "%ld", ug.cfg->rate_window_s * 1000 +
	    RATE_MARGIN_MS);
	snprintf(wants, sizeof(wants), "%ld", want);
	snprintf(member, sizeof(member), "%s:%d:%llu", ug.cfg->instance_id, (int)getpid(),
	    ++rate_seq);
	rv = send_strings(cmd, on_rate, c, 8, "EVALSHA", script_sha[SCRIPT_RATE], "1", k_rate,
	    limit, window, wants, member);
	if (rv != 0)
		free(c);
	return rv;
}

/* One failing command per result can come with every transaction (a
 * ReplyTo list of the wrong type). */
static struct log_limit command_failed_limit =
    LOG_LIMIT("redis: a command of the result transaction failed", LOG_LIMIT_PER_SECOND);

struct done_call {
	queue_done_cb	*cb;
	void		*arg;
	int		 dead_pushed;	/* the EXEC's second-to-last reply is the
					 * dead list's LPUSH */
	long long	 dead_max;	/* what its LTRIM kept */
};

static void
on_exec(redisAsyncContext *ac, void *reply, void *priv)
{
	const redisReply *r = reply;
	struct done_call *c = priv;
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
	/* A nil reply: guard_lua aborted it (and said why). */
	if (refused != NULL && refused->type != REDIS_REPLY_NIL)
		fault_set(FAULT_COMMIT, reply_error(refused));
	c->cb(ok, c->arg);
	free(c);
}

static void
on_guard(redisAsyncContext *ac, void *reply, void *priv)
{
	const redisReply *r = reply;

	if (r != NULL && r->type == REDIS_REPLY_ERROR)
		refused(FAULT_COMMIT, r);
	else if (r != NULL)
		fault_clear(FAULT_COMMIT);
}

static int
call_done_later(struct done_call *c, redisAsyncContext *ac, int rv)
{
	if (rv != 0)
		free(c);
	return rv;
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
	struct done_call *c;
	char ttl[32], reply_ttl[32], trim[32], dead_trim[32], value[300], hb_ttl[16];
	const char **mv = NULL, **lv = NULL, **dv = NULL;
	size_t *mlens = NULL, *llens = NULL, *dlens = NULL, nm = 1, nl = 2, nd = 2, i;
	char **kusers = NULL;
	int rv = 0;

	if (!cmd_ready || n == 0 || (c = malloc(sizeof(*c))) == NULL)
		return -1;
	c->cb = cb;
	c->arg = arg;
	c->dead_pushed = 0;
	c->dead_max = ug.cfg->dead_max;
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
	lv[1] = k_results; llens[1] = strlen(k_results);
	dv[0] = "LPUSH"; dlens[0] = 5;
	dv[1] = k_dead; dlens[1] = strlen(k_dead);

	snprintf(value, sizeof(value), "pid=%d host=%s", (int)getpid(), hostname);
	snprintf(hb_ttl, sizeof(hb_ttl), "%d", HEARTBEAT_TTL_S);
	rv |= send_strings(cmd, NULL, NULL, 2, "WATCH", k_instance);
	rv |= send_strings(cmd, on_guard, NULL, 10, "EVALSHA", script_sha[SCRIPT_GUARD], "5",
	    k_instance, k_processing, k_results, k_dead, k_recoveries, value, hb_ttl);
	rv |= send_strings(cmd, NULL, NULL, 1, "MULTI");
	for (i = 0; i < n && rv == 0; i++) {
		const struct commit_item *it = &items[i];
		const char *argv[4];
		size_t lens[4];
		char *kid = NULL;

		if (it->identity != NULL && (it->identity_done || it->identity_release)) {
			if ((kid = key("identity:", it->identity)) == NULL) {
				rv = -1;
				break;
			}
			if (it->identity_done)
				rv |= send_strings(cmd, NULL, NULL, 5, "SET", kid, "done", "EX", ttl);
			else
				rv |= send_strings(cmd, NULL, NULL, 2, "DEL", kid);
			free(kid);
		}
		if (it->identity != NULL && it->record != NULL) {
			if ((kusers[i] = key("user:", it->identity)) == NULL) {
				rv = -1;
				break;
			}
			mv[nm] = kusers[i]; mlens[nm++] = strlen(kusers[i]);
			mv[nm] = it->record; mlens[nm++] = it->recordlen;
		}
		lv[nl] = it->result; llens[nl++] = it->resultlen;

		argv[0] = "PUBLISH"; lens[0] = 7;
		argv[1] = k_events; lens[1] = strlen(k_events);
		argv[2] = it->result; lens[2] = it->resultlen;
		rv |= send_argv(cmd, NULL, NULL, 3, argv, lens);
		if (it->reply_to != NULL) {
			const char *ev[6] = { "EVAL", reply_lua, "1", it->reply_to, it->result,
			    reply_ttl };
			size_t evlens[6] = { 4, sizeof(reply_lua) - 1, 1, strlen(it->reply_to),
			    it->resultlen, strlen(reply_ttl) };

			rv |= send_argv(cmd, NULL, NULL, 6, ev, evlens);
		}
		if (it->dead != NULL) {
			dv[nd] = it->dead; dlens[nd++] = it->deadlen;
		}
		if (it->recovered) {
			argv[0] = "HDEL"; lens[0] = 4;
			argv[1] = k_recoveries; lens[1] = strlen(k_recoveries);
			argv[2] = it->raw; lens[2] = it->rawlen;
			rv |= send_argv(cmd, NULL, NULL, 3, argv, lens);
		}
		if (it->in_processing) {
			argv[0] = "LREM"; lens[0] = 4;
			argv[1] = k_processing; lens[1] = strlen(k_processing);
			argv[2] = "-1"; lens[2] = 2;
			argv[3] = it->raw; lens[3] = it->rawlen;
			rv |= send_argv(cmd, NULL, NULL, 4, argv, lens);
		}
	}
	if (rv == 0 && nm > 1)
		rv |= send_argv(cmd, NULL, NULL, (int)nm, mv, mlens);
	if (rv == 0)
		rv |= send_argv(cmd, NULL, NULL, (int)nl, lv, llens);
	if (rv == 0)
		rv |= send_strings(cmd, NULL, NULL, 4, "LTRIM", k_results, "0", trim);
	/* Last before EXEC, so on_exec finds the LPUSH's answer (the new
	 * length) second to last and counts what the LTRIM dropped. */
	if (rv == 0 && nd > 2) {
		rv |= send_argv(cmd, NULL, NULL, (int)nd, dv, dlens);
		rv |= send_strings(cmd, NULL, NULL, 4, "LTRIM", k_dead, "0", dead_trim);
		c->dead_pushed = 1;
	}
	if (rv == 0)
		rv = send_strings(cmd, on_exec, c, 1, "EXEC");
	else if (cmd != NULL)
		/* A half-queued transaction must not run. */
		send_strings(cmd, NULL, NULL, 1, "DISCARD");
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
	return call_done_later(c, cmd, rv);
}

static void
on_pushed(redisAsyncContext *ac, void *reply, void *priv)
{
	const redisReply *r = reply;
	struct done_call *c = priv;

	c->cb(r != NULL && r->type == REDIS_REPLY_INTEGER, c->arg);
	free(c);
}

int
queue_push_processing(const char *raw, size_t len, queue_done_cb *cb, void *arg)
{
	struct done_call *c;
	const char *argv[3] = { "LPUSH", k_processing, raw };
	size_t lens[3] = { 5, strlen(k_processing), len };

	if (!cmd_ready || (c = malloc(sizeof(*c))) == NULL)
		return -1;
	c->cb = cb;
	c->arg = arg;
	return call_done_later(c, cmd, send_argv(cmd, on_pushed, c, 3, argv, lens));
}

/* ------------------------------------------------------------------ */
/* lengths, dead list */

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
on_head(redisAsyncContext *ac, void *reply, void *priv)
{
	const redisReply *r = reply;

	if (is_noscript(r))
		scripts_reload();
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
	double taken = job_oldest_age();

	return queued > taken ? queued : taken;
}

struct lengths_call {
	queue_lengths_cb	*cb;
	void			*arg;
	long long		 v[3];
	int			 got, failed;
};

static void
on_length(redisAsyncContext *ac, void *reply, void *priv)
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
	if (c->cb)
		c->cb(!c->failed, c->v[0], c->v[1], c->v[2], oldest_age(), c->arg);
	free(c);
}

int
queue_lengths(queue_lengths_cb *cb, void *arg)
{
	struct lengths_call *c;

	if (!cmd_ready || (c = calloc(1, sizeof(*c))) == NULL)
		return -1;
	c->cb = cb;
	c->arg = arg;
	send_strings(cmd, on_head, NULL, 5, "EVALSHA", script_sha[SCRIPT_HEAD], "1", k_requests,
	    OVERSIZE_HEAD);
	/* Three commands on one ordered link: the callbacks run in order
	 * and exactly once each, so the last one frees c. */
	if (send_strings(cmd, on_length, c, 2, "LLEN", k_requests) != 0) {
		free(c);
		return -1;
	}
	if (send_strings(cmd, on_length, c, 2, "LLEN", k_processing) != 0)
		c->got++, c->failed = 1;
	if (send_strings(cmd, on_length, c, 2, "LLEN", k_dead) != 0) {
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

struct lines_call {
	queue_lines_cb	*cb;
	void		*arg;
};

static void
on_dead_range(redisAsyncContext *ac, void *reply, void *priv)
{
	const redisReply *r = reply;
	struct lines_call *c = priv;
	char **lines = NULL;
	size_t i, n = 0;
	int ok = r != NULL && r->type == REDIS_REPLY_ARRAY;

	if (ok && r->elements > 0) {
		lines = calloc(r->elements, sizeof(*lines));
		for (i = 0; lines != NULL && i < r->elements; i++) {
			if (r->element[i]->type != REDIS_REPLY_STRING)
				continue;
			lines[n] = record_dead_line(r->element[i]->str, r->element[i]->len);
			if (lines[n] != NULL)
				n++;
		}
	}
	c->cb(ok, lines, n, c->arg);
	for (i = 0; i < n; i++)
		free(lines[i]);
	free(lines);
	free(c);
}

int
queue_dead_list(long n, queue_lines_cb *cb, void *arg)
{
	struct lines_call *c;
	char stop[32];

	if (!cmd_ready || (c = malloc(sizeof(*c))) == NULL)
		return -1;
	c->cb = cb;
	c->arg = arg;
	snprintf(stop, sizeof(stop), "%ld", n - 1);
	if (send_strings(cmd, on_dead_range, c, 4, "LRANGE", k_dead, "0", stop) != 0) {
		free(c);
		return -1;
	}
	return 0;
}

struct retry_call {
	queue_count_cb	*cb;
	void		*arg;
};

static void
on_retry_exec(redisAsyncContext *ac, void *reply, void *priv)
{
	const redisReply *r = reply;
	struct retry_call *c = priv;
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
	c->cb(moved, c->arg);
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
on_retry_range(redisAsyncContext *ac, void *reply, void *priv)
{
	const redisReply *r = reply;
	struct retry_call *c = priv;
	size_t i, queued = 0;

	if (r == NULL || r->type != REDIS_REPLY_ARRAY || cmd == NULL) {
		c->cb(-1, c->arg);
		free(c);
		return;
	}
	send_strings(cmd, NULL, NULL, 1, "MULTI");
	for (i = 0; i < r->elements; i++) {
		const redisReply *e = r->element[i];
		char *text;
		const char *argv[4];
		size_t lens[4], textlen;

		if (e->type != REDIS_REPLY_STRING ||
		    (text = record_dead_request(e->str, e->len, &textlen)) == NULL)
			continue;
		argv[0] = "RPUSH"; lens[0] = 5;
		argv[1] = k_requests; lens[1] = strlen(k_requests);
		argv[2] = text; lens[2] = textlen;
		send_argv(cmd, NULL, NULL, 3, argv, lens);
		argv[0] = "LREM"; lens[0] = 4;
		argv[1] = k_dead; lens[1] = strlen(k_dead);
		argv[2] = "1"; lens[2] = 1;
		argv[3] = e->str; lens[3] = e->len;
		send_argv(cmd, NULL, NULL, 4, argv, lens);
		free(text);
		queued++;
	}
	if (send_strings(cmd, on_retry_exec, c, 1, "EXEC") != 0) {
		c->cb(-1, c->arg);
		free(c);
	}
	(void)queued;
	queue_pump();
}

int
queue_dead_retry(long n, queue_count_cb *cb, void *arg)
{
	struct retry_call *c;
	char stop[32];

	if (!cmd_ready || (c = malloc(sizeof(*c))) == NULL)
		return -1;
	c->cb = cb;
	c->arg = arg;
	snprintf(stop, sizeof(stop), "%ld", n < 0 ? -1L : n - 1);
	if (send_strings(cmd, on_retry_range, c, 4, "LRANGE",
	    k_dead, "0", stop) != 0) {
		free(c);
		return -1;
	}
	return 0;
}

/* ------------------------------------------------------------------ */
/* heartbeat, setup, teardown */

static void
heartbeat_cb(evutil_socket_t fd, short what, void *arg)
{
	if (!cmd_ready)
		return;
	heartbeat_write();
	job_refresh_claims();
	takeover(0);
}

int
queue_connected(void)
{
	return cmd_ready;
}

int
queue_init(void)
{
	struct timeval tv = { HEARTBEAT_EVERY_S, 0 };

	if (gethostname(hostname, sizeof(hostname)) != 0)
		strcpy(hostname, "localhost");
	hostname[sizeof(hostname) - 1] = '\0';
	if ((k_requests = key("requests", NULL)) == NULL ||
	    (k_processing = key("processing:", ug.cfg->instance_id)) == NULL ||
	    (k_recoveries = key("recoveries", NULL)) == NULL ||
	    (k_instances = key("instances", NULL)) == NULL ||
	    (k_rate = key("rate", NULL)) == NULL ||
	    (k_results = key("results", NULL)) == NULL ||
	    (k_events = key("events", NULL)) == NULL ||
	    (k_dead = key("dead", NULL)) == NULL ||
	    (k_instance = key("instance:", ug.cfg->instance_id)) == NULL)
		return -1;
	reconnect_ev = evtimer_new(ug.base, reconnect_cb, NULL);
	intake_retry_ev = evtimer_new(ug.base, intake_retry_cb, NULL);
	claim_flush_ev = event_new(ug.base, -1, 0, claim_flush_cb, NULL);
	heartbeat_ev = event_new(ug.base, -1, EV_PERSIST, heartbeat_cb, NULL);
	if (reconnect_ev == NULL || heartbeat_ev == NULL || claim_flush_ev == NULL ||
	    intake_retry_ev == NULL)
		return -1;
	evtimer_add(heartbeat_ev, &tv);
	connect_all();
	return 0;
}

/*
 * A clean exit removes our heartbeat at once (only if it is still ours), so
 * a restart need not wait for it to expire and a peer may take over what
 * the drain left.  The loop is over, so a short blocking call is fine.
 */
static void
heartbeat_remove(void)
{
	struct config *c = ug.cfg;
	struct timeval tv = { 1, 0 };
	redisContext *rc;
	redisReply *r;
	char value[300];

	if (!registered_once)
		return;
	if (c->redis_unix_socket && c->redis_unix_socket[0])
		rc = redisConnectUnixWithTimeout(c->redis_unix_socket, tv);
	else
		rc = redisConnectWithTimeout(c->redis_host, (int)c->redis_port, tv);
	if (rc == NULL || rc->err) {
		if (rc)
			redisFree(rc);
		return;
	}
	redisSetTimeout(rc, tv);
	snprintf(value, sizeof(value), "pid=%d host=%s", (int)getpid(), hostname);
	if (c->redis_password) {
		r = redisCommand(rc, "AUTH %s", c->redis_password);
		if (r)
			freeReplyObject(r);
	}
	if (c->redis_db) {
		r = redisCommand(rc, "SELECT %ld", c->redis_db);
		if (r)
			freeReplyObject(r);
	}
	r = redisCommand(rc, "EVAL %s 1 %s %s",
	    "if redis.call('GET', KEYS[1]) == ARGV[1] then "
	    "return redis.call('DEL', KEYS[1]) end return 0", k_instance, value);
	if (r)
		freeReplyObject(r);
	redisFree(rc);
}

void
queue_shutdown(void)
{
	shutting_down = 1;
	if (heartbeat_ev)
		event_free(heartbeat_ev);
	if (reconnect_ev)
		event_free(reconnect_ev);
	if (intake_retry_ev)
		event_free(intake_retry_ev);
	intake_retry_ev = NULL;
	/* Claims not yet sent: their callers hear "try later" while they
	 * still exist. */
	if (claim_flush_ev) {
		cmd_ready = 0;
		claim_flush_cb(-1, 0, NULL);
		event_free(claim_flush_ev);
		claim_flush_ev = NULL;
	}
	free(claims_pending);
	claims_pending = NULL;
	heartbeat_ev = reconnect_ev = NULL;
	/* Free rather than disconnect: pending callbacks run now with NULL
	 * replies, while their owners still exist. */
	if (blk != NULL) {
		redisAsyncContext *b = blk;

		blk = NULL;
		redisAsyncFree(b);
	}
	if (cmd != NULL) {
		redisAsyncContext *c = cmd;

		cmd = NULL;
		redisAsyncFree(c);
	}
	heartbeat_remove();
	free(head_seen);
	head_seen = NULL;
	free(k_requests);
	free(k_processing);
	free(k_recoveries);
	free(k_instances);
	free(k_rate);
	free(k_results);
	free(k_events);
	free(k_dead);
	free(k_instance);
}
