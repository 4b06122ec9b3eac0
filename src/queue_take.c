/*
 * queue_take.c: taking requests from the request list into our processing
 * list and reporting each as taken (queue_events): the batch script while
 * the list may be deep, one BLMOVE on the blocking connection while it is
 * empty, the stub of an oversize element, and a socket request's LPUSH.
 * How much to take is the caller's (queue_take's room); an error reply to
 * a take backs intake off, and ready says when to take again.
 */
#include "config.h"

#include <sys/types.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "queue_int.h"

#define TAKE_BATCH_MAX		1024
/* seconds a BLMOVE waits before we look again */
#define BLOCK_TIMEOUT		"1"
#define INTAKE_RETRY_MIN_MS	100	/* after an error reply to a take */
#define INTAKE_RETRY_MAX_MS	5000

int queue_take_outstanding;
int queue_block_outstanding;
static int intake_stopped;
/* in on_taken's ready: came back short */
static int take_short;
static struct event *intake_retry_ev;
static long intake_failures;		/* error replies to takes in a row */

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
const char queue_take_lua[] =
	LUA_WRONGTYPE
	"local e = wrongtype(KEYS[1], 'list') or "
	    "wrongtype(KEYS[2], 'list') or\n"
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
	"  if #v > max then "
	    "v = ARGV[3] .. #v .. ' ' .. string.sub(v, 1, 256) end\n"
	"  taken[i] = v\n"
	"  out[2 * i - 1] = v\n"
	"  out[2 * i] = rec and "
	    "tonumber(redis.call('HGET', KEYS[3], v) or '0') or 0\n"
	"end\n"
	"redis.call('LPUSH', KEYS[2], unpack(taken))\n"
	"redis.call('LTRIM', KEYS[1], 0, -n - 1)\n"
	"return out\n";

/*
 * Replaces an element BLMOVE just put in our processing list, known by its
 * length and first bytes, by the stub of an oversize element (ARGV: length,
 * head, stub).  It is among the first few: only our own pushes come after.
 */
const char queue_stub_lua[] =
	"local len, head = tonumber(ARGV[1]), ARGV[2]\n"
	"for i, v in ipairs(redis.call('LRANGE', KEYS[1], 0, 63)) do\n"
	"  if #v == len and string.sub(v, 1, #head) == head then\n"
	"    redis.call('LSET', KEYS[1], i - 1, ARGV[3])\n"
	"    return 1\n"
	"  end\n"
	"end\n"
	"return 0\n";

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
	queue_events->ready();
}

/* The link is up again: take at once, with no backoff left from before. */
void
queue_intake_reset(void)
{
	evtimer_del(intake_retry_ev);
	intake_failures = 0;
}

/*
 * The reply to a take (or reconcile): anything but the expected type is
 * an error, retried with backoff.  Returns whether it is the expected one.
 */
int
queue_take_answered(const redisReply *r, int type)
{
	queue_take_outstanding = 0;
	if (r == NULL)
		return 0;
	if (r->type != type) {
		queue_refused(FAULT_TAKE, r);
		intake_backoff();
		return 0;
	}
	intake_failures = 0;
	queue_fault_clear(FAULT_TAKE);
	return 1;
}

static void	 on_taken(struct queue_conn *, redisReply *, void *);
static void	 on_blocked(struct queue_conn *, redisReply *, void *);

static void
take_one_blocking(void)
{
	if (queue_blk == NULL || queue_block_outstanding)
		return;
	if (queue_send_strings(queue_blk, on_blocked, NULL, 6, "BLMOVE",
	    queue_keys.requests, queue_keys.processing, "RIGHT", "LEFT",
	    BLOCK_TIMEOUT) == 0)
		queue_block_outstanding = 1;
}

/*
 * Takes up to room requests.  A batch script when the list may be deep;
 * when a batch came back short the list is empty, and the take that its
 * ready asks for is one BLMOVE, which waits for the next request so that
 * an idle daemon answers within a millisecond without polling.
 */
void
queue_take(long room)
{
	char n[16], max[16];

	if (take_short) {
		if (room > 0)
			take_one_blocking();
		return;
	}
	if (!queue_ready || intake_stopped)
		return;
	if (queue_take_outstanding || queue_block_outstanding ||
	    evtimer_pending(intake_retry_ev, NULL))
		return;
	if (queue_reconcile_pending) {
		if (queue_reconcile_send() == 0)
			queue_take_outstanding = 1;
		return;
	}
	if (room <= 0)
		return;
	if (room > TAKE_BATCH_MAX)
		room = TAKE_BATCH_MAX;
	snprintf(n, sizeof(n), "%ld", room);
	snprintf(max, sizeof(max), "%d", UG_FRAME_MAX);
	if (queue_send_strings(queue_cmd, on_taken, (void *)(intptr_t)room, 9,
	    "EVALSHA", queue_script_sha[SCRIPT_TAKE], "3", queue_keys.requests,
	    queue_keys.processing, queue_keys.recoveries, n, max,
	    UG_OVERSIZE_MARK) == 0)
		queue_take_outstanding = 1;
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
on_taken(struct queue_conn *ac, redisReply *reply, void *priv)
{
	const redisReply *r = reply;
	long asked = (long)(intptr_t)priv;
	size_t i, got;

	if (!queue_take_answered(r, REDIS_REPLY_ARRAY))
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
		queue_events->taken(raw, v->len,
		    n->type == REDIS_REPLY_INTEGER ? (long)n->integer : 0);
	}
	/* Short: the list is empty, and the next take waits on it. */
	take_short = (long)got < asked;
	queue_events->ready();
	take_short = 0;
}

struct blocked_item {
	char	*raw;
	size_t	 len;
};

static void
on_blocked_recoveries(struct queue_conn *ac, redisReply *reply, void *priv)
{
	const redisReply *r = reply;
	struct blocked_item *b = priv;
	long n = 0;

	if (r != NULL && r->type == REDIS_REPLY_STRING)
		n = strtol(r->str, NULL, 10);
	/* Even without an answer the request is ours: it sits in our
	 * processing list, so handle it rather than strand it there. */
	queue_events->taken(b->raw, b->len, n);
	free(b);
	queue_events->ready();
}

/*
 * BLMOVE hands over an element whole, however long: one at a time, since it
 * waits only while the request list is empty.  One longer than a request may
 * be is replaced in our processing list by the stub the take script would
 * have left (queue_stub_lua), so that it is answered too_large and neither a
 * recovery nor the dead list ever carries it again.  Sending the stub's
 * head rather than the element keeps it at one copy here.
 */
static void
take_oversize(const char *v, size_t len)
{
	size_t mark = strlen(UG_OVERSIZE_MARK),
	    head = (size_t)atoi(OVERSIZE_HEAD);
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
	argv[1] = queue_script_sha[SCRIPT_STUB]; lens[1] = strlen(argv[1]);
	argv[2] = "1"; lens[2] = 1;
	argv[3] = queue_keys.processing; lens[3] = strlen(argv[3]);
	argv[4] = total; lens[4] = strlen(total);
	argv[5] = v; lens[5] = head;
	argv[6] = stub; lens[6] = (size_t)n + head;
	queue_send_argv(queue_cmd, NULL, NULL, 7, argv, lens);
	queue_events->taken(stub, (size_t)n + head, 0);
}

static void
on_blocked(struct queue_conn *ac, redisReply *reply, void *priv)
{
	const redisReply *r = reply;
	struct blocked_item *b;

	queue_block_outstanding = 0;
	if (r == NULL)
		return;
	if (r->type == REDIS_REPLY_ERROR) {
		/* UNBLOCKED: our primary became a replica under the BLMOVE. */
		if (!queue_failover(r))
			queue_fault_set(FAULT_TAKE, r->str);
		intake_backoff();
		return;
	}
	intake_failures = 0;
	queue_fault_clear(FAULT_TAKE);
	if (r->type == REDIS_REPLY_STRING && r->len > UG_FRAME_MAX) {
		take_oversize(r->str, r->len);
		queue_events->ready();
		return;
	}
	if (r->type == REDIS_REPLY_STRING) {
		b = malloc(sizeof(*b));
		if (b == NULL ||
		    (b->raw = copy_bytes(r->str, r->len)) == NULL) {
			free(b);
			log_error("out of memory taking a request");
			return;
		}
		b->len = r->len;
		{
			const char *argv[3] = { "HGET", queue_keys.recoveries,
			    b->raw };
			size_t lens[3] = { 4, strlen(queue_keys.recoveries),
			    b->len };

			if (queue_send_argv(queue_cmd, on_blocked_recoveries,
			    b, 3, argv, lens) == 0)
				return;
		}
		{
			queue_events->taken(b->raw, b->len, 0);
			free(b);
		}
		return;
	}
	queue_events->ready();
}

/*
 * CLIENT UNBLOCK is an @admin command, which the least-privilege ACL of
 * docs/operations.md does not grant.  Refused once, it is not sent again:
 * a pause or a drain then waits for the BLMOVE's timeout (BLOCK_TIMEOUT).
 */
static int unblock_refused;

static void
on_unblock(struct queue_conn *ac, redisReply *reply, void *priv)
{
	const redisReply *r = reply;

	if (r == NULL || r->type != REDIS_REPLY_ERROR ||
	    strncmp(r->str, "NOPERM", 6) != 0 || unblock_refused)
		return;
	unblock_refused = 1;
	log_info("the redis user may not CLIENT UNBLOCK (an @admin command); "
	    "pause and drain wait up to " BLOCK_TIMEOUT " s for the blocking "
	    "take instead");
}

/*
 * Ends a BLMOVE in progress at once (pause, drain).  One that already moved
 * a request hands it to us as usual: it was taken before the pause.
 */
void
queue_unblock(void)
{
	char id[32];

	if (!queue_block_outstanding || queue_blk_client_id < 0 ||
	    queue_cmd == NULL || unblock_refused)
		return;
	snprintf(id, sizeof(id), "%lld", queue_blk_client_id);
	queue_send_strings(queue_cmd, on_unblock, NULL, 3, "CLIENT", "UNBLOCK",
	    id);
}

/* A take or a BLMOVE is on its way: until its reply comes back, requests
 * may still be taken.  The status socket's pause waits for this to end
 * before it says ok. */
int
queue_intake_busy(void)
{
	return queue_take_outstanding || queue_block_outstanding;
}

void
queue_stop_intake(void)
{
	intake_stopped = 1;
	queue_unblock();
}

static void
on_pushed(struct queue_conn *ac, redisReply *reply, void *priv)
{
	const redisReply *r = reply;
	struct queue_call *c = priv;

	c->cb.done(r != NULL && r->type == REDIS_REPLY_INTEGER, c->arg);
	free(c);
}

int
queue_push_processing(const char *raw, size_t len, queue_done_cb *cb,
    void *arg)
{
	struct queue_call *c;
	const char *argv[3] = { "LPUSH", queue_keys.processing, raw };
	size_t lens[3] = { 5, strlen(queue_keys.processing), len };
	int rv;

	if (!queue_ready || (c = malloc(sizeof(*c))) == NULL)
		return -1;
	c->cb.done = cb;
	c->arg = arg;
	if ((rv = queue_send_argv(queue_cmd, on_pushed, c, 3, argv, lens)) != 0)
		free(c);
	return rv;
}

int
queue_take_init(void)
{
	intake_retry_ev = evtimer_new(ug.base, intake_retry_cb, NULL);
	return intake_retry_ev != NULL ? 0 : -1;
}

void
queue_take_shutdown(void)
{
	if (intake_retry_ev)
		event_free(intake_retry_ev);
	intake_retry_ev = NULL;
}
