/*
 * queue_claim.c: Identity claims, so that one Identity is created by one
 * instance at a time and a completed one is answered from its stored
 * record.  Claims asked for during one loop iteration go to Redis as one
 * script call; those in flight are kept alive by queue_refresh_claims.
 */
#include "config.h"

#include <sys/types.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "queue_int.h"

/* an in-flight claim outlives a dead owner this long */
#define CLAIM_TTL_S		60
#define CLAIM_BATCH_MAX		512

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
const char queue_claim_lua[] =
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

struct claim_call {
	struct queue_call	 call;
	char			*identity;
	int			 held;	/* owned, answered once WAIT confirms */
};

/* Claims asked for during this loop iteration, sent together. */
static struct claim_call *claims_pending;
static size_t nclaims_pending, claims_cap;
static struct event *claim_flush_ev;

struct claim_batch {
	size_t			 n;
	int			 durable; /* a WAIT follows: it frees us */
	struct claim_call	 calls[];
};

static void
claim_finish(struct claim_call *c, enum claim_outcome o, const char *rec,
    size_t reclen)
{
	free(c->identity);
	c->call.cb.claim(o, rec, reclen, c->call.arg);
}

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
			if (e->elements == 2 &&
			    e->element[1]->type == REDIS_REPLY_STRING) {
				o = e->element[0]->integer == 2 ? CLAIM_DONE :
				    CLAIM_REFUSED;
				rec = e->element[1]->str;
				reclen = e->element[1]->len;
			}
			break;
		case 3:
			o = CLAIM_PENDING;
			break;
		}
	}
	claim_finish(c, o, rec, reclen);
}

/* A claim we own, with durable_replicas: answered when WAIT confirms. */
static int
claim_hold(const struct claim_batch *b, const redisReply *e)
{
	return b->durable && e->type == REDIS_REPLY_ARRAY &&
	    e->elements == 1 && e->element[0]->type == REDIS_REPLY_INTEGER &&
	    e->element[0]->integer == 1;
}

/*
 * The WAIT after a batch of claims: the claims we own are answered owned
 * once enough replicas have them (and the takes before them), so that a
 * failover cannot hand the Identity to a second create.  Fewer replicas in
 * time: wait again.  The link lost: "try later", claimed again on the new
 * one (a claim of ours is ours again).
 */
static void
on_claims_durable(struct queue_conn *ac, redisReply *reply, void *priv)
{
	struct claim_batch *b = priv;
	size_t i;
	int confirmed;

	if ((confirmed = queue_durable_confirmed(reply, on_claims_durable,
	    b)) == 0)
		return;
	for (i = 0; i < b->n; i++)
		if (b->calls[i].held)
			claim_finish(&b->calls[i], confirmed == 1 ?
			    CLAIM_OWNED : CLAIM_ERROR, NULL, 0);
	free(b);
}

static void
on_claims(struct queue_conn *ac, redisReply *reply, void *priv)
{
	const redisReply *r = reply;
	struct claim_batch *b = priv;
	size_t i;
	int ok = r != NULL && r->type == REDIS_REPLY_ARRAY &&
	    r->elements == b->n;
	const redisReply *wrong = NULL;

	if (r != NULL && !ok)
		queue_refused(FAULT_CLAIM, r);
	for (i = 0; ok && i < b->n && wrong == NULL; i++)
		if (r->element[i]->type == REDIS_REPLY_ARRAY &&
		    r->element[i]->elements == 2 &&
		    r->element[i]->element[0]->type == REDIS_REPLY_INTEGER &&
		    r->element[i]->element[0]->integer == 4)
			wrong = r->element[i]->element[1];
	if (wrong != NULL && wrong->type == REDIS_REPLY_STRING) {
		char error[192];

		snprintf(error, sizeof(error), "%s%s", WRONGTYPE_PREFIX,
		    wrong->str);
		queue_fault_set(FAULT_CLAIM, error);
	} else if (ok) {
		queue_fault_clear(FAULT_CLAIM);
	}
	for (i = 0; i < b->n; i++) {
		b->calls[i].held = ok && claim_hold(b, r->element[i]);
		if (!b->calls[i].held)
			claim_answer(&b->calls[i], ok ? r->element[i] : NULL);
	}
	if (!b->durable)
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
		n = nclaims_pending > CLAIM_BATCH_MAX ? CLAIM_BATCH_MAX :
		    nclaims_pending;
		b = malloc(sizeof(*b) + n * sizeof(b->calls[0]));
		argc = 3 + 2 * n + 2;
		argv = calloc(argc, sizeof(*argv));
		lens = calloc(argc, sizeof(*lens));
		if (b != NULL && argv != NULL && lens != NULL) {
			b->n = n;
			b->durable = 0;
			memcpy(b->calls, claims_pending,
			    n * sizeof(b->calls[0]));
			snprintf(owner, sizeof(owner), "pending:%s",
			    ug.cfg->instance_id);
			snprintf(ttl, sizeof(ttl), "%d", CLAIM_TTL_S);
			snprintf(nkeys, sizeof(nkeys), "%zu", 2 * n);
			argv[0] = "EVALSHA";
			argv[1] = queue_script_sha[SCRIPT_CLAIM];
			argv[2] = nkeys;
			for (i = 0; i < n; i++) {
				argv[3 + 2 * i] = queue_key("identity:",
				    b->calls[i].identity);
				argv[4 + 2 * i] =
				    queue_key("user:", b->calls[i].identity);
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
			if (rv == 0 && queue_ready)
				rv = queue_send_argv(queue_cmd, on_claims, b,
				    (int)argc, argv, lens);
			else
				rv = -1;
			if (rv == 0 && ug.cfg->redis_durable_replicas > 0)
				b->durable = queue_durable_send(
				    on_claims_durable, b) == 0;
			for (i = 0; i < 2 * n; i++)
				free((char *)argv[3 + i]);
		}
		free(argv);
		free(lens);
		if (rv != 0) {
			/*
			 * No link (or no memory): each caller hears "try
			 * later".
			 */
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

	if (!queue_ready)
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
	c->call.cb.claim = cb;
	c->call.arg = arg;
	if (nclaims_pending++ == 0)
		event_active(claim_flush_ev, EV_TIMEOUT, 0);
	return 0;
}

void
queue_refresh_claims(const char *const *identities, size_t n)
{
	char ttl[16];
	size_t i;

	if (!queue_ready)
		return;
	snprintf(ttl, sizeof(ttl), "%d", CLAIM_TTL_S);
	for (i = 0; i < n; i++) {
		char *kid = queue_key("identity:", identities[i]);

		if (kid == NULL)
			continue;
		queue_send_strings(queue_cmd, NULL, NULL, 3, "EXPIRE", kid,
		    ttl);
		free(kid);
	}
}

int
queue_claim_init(void)
{
	claim_flush_ev = event_new(ug.base, -1, 0, claim_flush_cb, NULL);
	return claim_flush_ev != NULL ? 0 : -1;
}

/* Claims not yet sent: their callers hear "try later" while they still
 * exist. */
void
queue_claim_shutdown(void)
{
	if (claim_flush_ev) {
		queue_ready = 0;
		claim_flush_cb(-1, 0, NULL);
		event_free(claim_flush_ev);
		claim_flush_ev = NULL;
	}
	free(claims_pending);
	claims_pending = NULL;
}
