/*
 * job.c: a request's whole life, in one file.
 *
 *   take ─► parse ─► (invalid) ──────────────────────────────┐
 *             │                                              │
 *             ▼                                              ▼
 *       local dedup ─► (same Identity in flight here: wait) ─► commit ─► done
 *             │                                              ▲
 *             ▼                                              │
 *       Redis claim ─► (done before: duplicate) ─────────────┤
 *             │        (another instance on it: poll)        │
 *             ▼                                              │
 *       rate window ─► concurrency window ─► HTTP ─► classify┤
 *             ▲                                  │           │
 *             └──────── backoff (retryable) ◄────┘           │
 *                       auth wait (401/403/TLS) ◄────────────┘
 *
 * Each job is in exactly one state, and in at most one of the queues below
 * (rate, send, auth) or one owner's waiter list, the one its state names:
 * job_set_state changes both together.  A finished job's result is handed
 * to queue_commit.c, which holds it in line until its transaction and
 * tells every step (on_commit).  The job is freed only after its result
 * transaction succeeded (or at final exit, when its request stays in the
 * processing list for the next start).
 */
#include "config.h"

#include <assert.h>
#include <search.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "daemon.h"

#define CLAIM_POLL_MIN_MS	50
#define CLAIM_POLL_MAX_MS	1000
#define REDIS_RETRY_MS		500
#define REDIS_BACKOFF_MIN_MS	100	/* Redis answered with an error */
#define REDIS_BACKOFF_MAX_MS	5000
#define REDIS_REFUSALS_MAX	5	/* claims refused, then redis_error */
#define AUTH_PROBE_MIN_MS	1000
#define AUTH_PROBE_MAX_MS	60000
/*
 * max_inflight bounds Twilio requests (SPEC: "concurrent Twilio
 * requests").  Up to three times as many requests again, but never more
 * than HELD_EXTRA_MAX, may be held while they are taken, claimed and
 * their results written: the Twilio window then never waits for those
 * Redis round trips (at 64 in flight only 38 were at Twilio on average
 * when one extra request per slot was held, 51 with three), and memory
 * stays bounded.  The cap keeps large settings, which are latency-bound
 * at Twilio and need only what covers the Redis round trips, from holding
 * thousands (docs/performance.md).
 */
#define HELD_EXTRA_PER_SLOT	3
#define HELD_EXTRA_MAX		192

enum job_state {
	JOB_PARSED,
	JOB_LOCAL_WAIT,		/* behind a local job with the same Identity */
	JOB_CLAIMING,		/* claim script outstanding */
	/* timer: another instance has it, or no Redis */
	JOB_CLAIM_RETRY,
	JOB_RATE_WAIT,		/* in rate_q */
	JOB_SEND_WAIT,		/* in send_q */
	JOB_HTTP,		/* request on the wire */
	JOB_BACKOFF,		/* timer: retry schedule */
	JOB_AUTH_WAIT,		/* in auth_q until Twilio accepts us again */
	JOB_COMMIT_WAIT,	/* handed over, waiting for a transaction */
	JOB_COMMITTING,		/* in a result transaction */
};

enum job_phase { PHASE_CREATE, PHASE_FETCH, PHASE_UPDATE };

enum job_source { SOURCE_REDIS, SOURCE_SOCKET };

TAILQ_HEAD(job_list, job);

struct job {
	/* the one queue or waiter list it is in */
	TAILQ_ENTRY(job)	 link;
	TAILQ_ENTRY(job)	 all;
	enum job_state		 state;
	enum job_phase		 phase;

	char			*raw;	/* the bytes in our processing list */
	size_t			 rawlen;
	enum job_source		 source;
	long			 recoveries;
	struct intake_conn	*conn;	/* socket client waiting, or NULL */

	struct request		 req;
	enum request_error	 err;
	char			 errmsg[256];
	char			*request_id;	/* req's or generated; owned */
	double			 received_wall;
	double			 received_mono;

	int			 attempts;	/* HTTP requests made */
	/* counted against max_attempts */
	int			 tries;
	/* not sent: no descriptor (backoff) */
	int			 fd_waits;
	/* next HTTP request is a retry */
	int			 retrying;
	/* a key of its Identity had the wrong type */
	int			 claim_refusals;
	long			 claim_poll_ms;
	int			 owns_claim;	/* our claim is in Redis */
	/* in the local identity table */
	int			 is_owner;
	struct job_list		 waiters;	/* same Identity, behind us */
	struct job		*owner;

	long			 last_status;
	long			 last_code;
	long			 last_retry_after_ms;
	char			*last_message;
	char			*sid;		/* for the update */

	enum result_status	 status;	/* once finished */
	json_t			*user;
	struct result		 res;	/* once finished; its record may come
					 * first (record_straight) */
	struct commit_item	 commit;	/* the result, handed over */

	struct event		*timer;
};

static struct job_list all_jobs = TAILQ_HEAD_INITIALIZER(all_jobs);
static struct job_list rate_q = TAILQ_HEAD_INITIALIZER(rate_q);
static struct job_list send_q = TAILQ_HEAD_INITIALIZER(send_q);
static struct job_list auth_q = TAILQ_HEAD_INITIALIZER(auth_q);
static long njobs;

/*
 * The queue a job in its state is in: each waiting state has its own, a
 * local wait its owner's waiter list, every other state none.
 */
static struct job_list *
state_queue(const struct job *j)
{
	switch (j->state) {
	case JOB_LOCAL_WAIT:
		return &j->owner->waiters;
	case JOB_RATE_WAIT:
		return &rate_q;
	case JOB_SEND_WAIT:
		return &send_q;
	case JOB_AUTH_WAIT:
		return &auth_q;
	default:
		return NULL;
	}
}

/*
 * Every change of a job's state goes through here, as in PgBouncer's
 * change_client_state: the job leaves the queue of its old state and
 * enters q, which must be the new state's (NULL for a state without one),
 * so that "one state, one queue" holds by construction.  A job whose turn
 * was taken from it through no fault of its own goes back to the front.
 */
static void
job_move(struct job *j, enum job_state state, struct job_list *q, int front)
{
	struct job_list *old = state_queue(j);

	if (old != NULL)
		TAILQ_REMOVE(old, j, link);
	j->state = state;
	assert(q == state_queue(j));
	if (q == NULL)
		return;
	if (front)
		TAILQ_INSERT_HEAD(q, j, link);
	else
		TAILQ_INSERT_TAIL(q, j, link);
}

static void
job_set_state(struct job *j, enum job_state state, struct job_list *q)
{
	job_move(j, state, q, 0);
}

static void
job_set_state_front(struct job *j, enum job_state state, struct job_list *q)
{
	job_move(j, state, q, 1);
}

static void *identities;		/* tsearch tree of owner jobs */
static struct pace_window window;

static int rate_outstanding;
static struct event *rate_ev;
static struct event *written_ev;	/* results were written */
static long rate_failures;		/* rate calls failed in a row */

/*
 * While Twilio refuses us (auth_blocked), every job that would go to
 * Twilio waits in auth_q, and only auth_probe_job, one job at a time, is
 * sent: its answer tells whether we are accepted again.
 */
static int auth_blocked;
static long auth_probe_ms = AUTH_PROBE_MIN_MS;
static struct event *auth_ev;
static struct job *auth_probe_job;	/* NULL: no probe under way */

/* Warnings about one request each: a flood of bad requests must not flood
 * the log (held-back lines are counted, see log_limit_allow). */
static struct log_limit invalid_limit =
    LOG_LIMIT("request not done", LOG_LIMIT_PER_SECOND);
static struct log_limit failed_limit =
    LOG_LIMIT("request not done", LOG_LIMIT_PER_SECOND);
static struct log_limit unreadable_limit =
    LOG_LIMIT("stored user record unreadable; asking Twilio",
    LOG_LIMIT_PER_SECOND);
static struct log_limit unexpected_limit =
    LOG_LIMIT("unexpected twilio answer body; fetching the user",
    LOG_LIMIT_PER_SECOND);

static char *users_url;			/* api_base + /v1/Users (service) */
static const struct job_hooks *hooks;	/* main.c's */

static long	 job_room(void);
static void	 identity_enter(struct job *);
static void	 claim(struct job *);
static void	 start_attempt(struct job *);
static void	 send_enter(struct job *);
static void	 send_pump(void);
static void	 rate_pump(void);
static void	 conclude(struct job *, enum result_status, const char *code,
		    const char *message);
static void	 finish(struct job *, enum result_status);
static void	 fail(struct job *, const char *code, const char *message);
static void	 commit_enter(struct job *);
static int	 auth_park(struct job *);
static void	 auth_clear(void);
static void	 auth_probe_done(struct job *);

/* ------------------------------------------------------------------ */
/* helpers */

static void
free_nothing(void *node)
{
	(void)node;	/* the tree holds pointers to jobs it does not own */
}

static int
identity_cmp(const void *a, const void *b)
{
	const struct job *x = a, *y = b;

	return strcmp(x->req.identity, y->req.identity);
}

static double
random_unit(void)
{
	return (double)arc4random() / 4294967296.0;
}

char *
job_new_request_id(void)
{
	static const char hex[] = "0123456789abcdef";
	static unsigned char prefix[8];
	static uint64_t counter;
	unsigned char b[16];
	char *s = malloc(33);
	int i;

	if (s == NULL)
		return NULL;
	/*
	 * Unique, not secret: 8 random bytes drawn once per process, then a
	 * counter (arc4random on every request is a getrandom system call
	 * each time in glibc 2.36).
	 */
	if (counter == 0)
		arc4random_buf(prefix, sizeof(prefix));
	counter++;
	memcpy(b, prefix, 8);
	for (i = 0; i < 8; i++)
		b[8 + i] = (unsigned char)(counter >> (56 - 8 * i));
	for (i = 0; i < 16; i++) {
		s[2 * i] = hex[b[i] >> 4];
		s[2 * i + 1] = hex[b[i] & 15];
	}
	s[32] = '\0';
	return s;
}

static void
set_timer(struct job *j, long ms, event_callback_fn cb)
{
	struct timeval tv;

	if (j->timer == NULL)
		j->timer = evtimer_new(ug.base, cb, j);
	else
		event_assign(j->timer, ug.base, -1, 0, cb, j);
	if (j->timer == NULL) {
		/* Without a timer we cannot wait; try at once instead. */
		cb(-1, 0, j);
		return;
	}
	tv.tv_sec = ms / 1000;
	tv.tv_usec = (ms % 1000) * 1000;
	evtimer_add(j->timer, &tv);
}

static void
job_free(struct job *j)
{
	TAILQ_REMOVE(&all_jobs, j, all);
	njobs--;
	intake_room(job_room());
	if (j->timer)
		event_free(j->timer);
	request_free(&j->req);
	free(j->raw);
	free(j->request_id);
	free(j->last_message);
	free(j->sid);
	result_free(&j->res);
	json_decref(j->user);
	free(j);
}

long
job_count(void)
{
	return njobs;
}

double
job_oldest_age(void)
{
	struct job *j = TAILQ_FIRST(&all_jobs);

	return j ? now_monotonic() - j->received_mono : 0;
}

/* Room for more work: that bound minus jobs alive. */
static long
job_room(void)
{
	long extra = HELD_EXTRA_PER_SLOT * ug.cfg->max_inflight;
	long room;

	if (extra > HELD_EXTRA_MAX)
		extra = HELD_EXTRA_MAX;
	room = ug.cfg->max_inflight + extra - njobs;

	return room > 0 ? room : 0;
}

/*
 * The one place that decides how much may come in, so that no adapter
 * asks.  Pause, drain and a refusal by Twilio hold back Redis only: the
 * request socket is told its room and woken whatever the state, as it
 * always was.
 */
void
job_pump(void)
{
	long room = job_room();

	intake_room(room);
	if (!ug.paused && !ug.draining && !auth_blocked)
		queue_take(room);
	intake_throttle(room <= 0);
}

/* ------------------------------------------------------------------ */
/* intake */

/*
 * A new job for raw, not parsed yet; NULL (raw freed) when out of memory:
 * the request stays in the processing list and the next start handles it.
 * Nothing is lost, nothing is answered twice.
 */
static struct job *
job_new(char *raw, size_t len, enum job_source source, long recoveries,
    struct intake_conn *conn)
{
	struct job *j;

	stats.received++;
	if ((j = calloc(1, sizeof(*j))) == NULL) {
		log_error("out of memory for a request; it stays in the "
		    "processing list");
		free(raw);
		return NULL;
	}
	TAILQ_INSERT_TAIL(&all_jobs, j, all);
	njobs++;
	intake_room(job_room());
	TAILQ_INIT(&j->waiters);
	j->raw = raw;
	j->rawlen = len;
	j->source = source;
	j->recoveries = recoveries;
	j->conn = conn;
	j->received_wall = now_wall();
	j->received_mono = now_monotonic();
	job_set_state(j, JOB_PARSED, NULL);
	return j;
}

/* The job's request is parsed: answered at once when invalid or poison,
 * else on to dedup. */
static void
job_start(struct job *j)
{
	if (j->request_id == NULL) {
		fail(j, "retries_exhausted", "out of memory");
		return;
	}
	if (j->err != REQ_OK) {
		conclude(j, RESULT_INVALID, request_error_code(j->err),
		    j->errmsg);
		return;
	}
	if (j->recoveries >= UG_POISON_RECOVERIES) {
		char msg[160];

		snprintf(msg, sizeof(msg), "request was in flight during %ld "
		    "crashes or takeovers; treated as poison and not retried",
		    j->recoveries);
		fail(j, "retries_exhausted", msg);
		return;
	}
	identity_enter(j);
}

void
job_take(char *raw, size_t len, long recoveries)
{
	struct reply_scope scope;
	struct job *j;

	if ((j = job_new(raw, len, SOURCE_REDIS, recoveries, NULL)) == NULL)
		return;
	scope.allowed = ug.cfg->reply_prefix;
	scope.own = ug.cfg->prefix;
	j->err = request_parse(raw, len, &scope, &j->req, j->errmsg,
	    sizeof(j->errmsg));
	if (j->req.request_id != NULL)
		j->request_id = strdup(j->req.request_id);
	else
		j->request_id = job_new_request_id();
	job_start(j);
}

void
job_take_socket(struct socket_request *r, struct intake_conn *conn)
{
	struct job *j;

	if ((j = job_new(r->raw, r->len, SOURCE_SOCKET, 0, conn)) == NULL) {
		request_free(&r->req);
		free(r->request_id);
		return;
	}
	j->req = r->req;
	j->err = r->err;
	memcpy(j->errmsg, r->errmsg, sizeof(j->errmsg));
	j->request_id = r->request_id;
	job_start(j);
}

/* ------------------------------------------------------------------ */
/* dedup: local table, then the Redis claim */

/*
 * A job whose Identity is already owned by a job of ours waits behind it;
 * otherwise it becomes the owner and claims the Identity in Redis.
 */
static void
identity_enter(struct job *j)
{
	struct job **found;

	found = tsearch(j, &identities, identity_cmp);
	if (found == NULL) {
		fail(j, "retries_exhausted", "out of memory");
		return;
	}
	if (*found != j) {
		j->owner = *found;
		job_set_state(j, JOB_LOCAL_WAIT, &j->owner->waiters);
		return;
	}
	j->is_owner = 1;
	claim(j);
}

static void
identity_leave(struct job *j)
{
	if (j->is_owner) {
		tdelete(j, &identities, identity_cmp);
		j->is_owner = 0;
	}
}

/* After the nth error reply in a row from Redis: 100 ms doubling to 5 s. */
static long
redis_backoff_ms(long n)
{
	return pace_backoff_ms(n, REDIS_BACKOFF_MIN_MS, REDIS_BACKOFF_MAX_MS,
	    0, 1.0);
}

static void
claim_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	claim(arg);
}

static void
on_claim(enum claim_outcome o, const char *rec, size_t reclen, void *arg)
{
	struct job *j = arg;
	json_t *user;

	switch (o) {
	case CLAIM_OWNED:
		j->owns_claim = 1;
		j->phase = PHASE_CREATE;
		start_attempt(j);
		return;
	case CLAIM_DONE:
		if ((user = record_stored(rec, reclen)) != NULL) {
			j->user = user;
			finish(j, RESULT_DUPLICATE);
			return;
		}
		/* An unreadable stored record: let Twilio decide. */
		if (log_limit_allow(&unreadable_limit, now_monotonic()))
			log_warn("stored user record unreadable; asking Twilio",
			    "request_id", j->request_id);
		j->owns_claim = 1;
		j->phase = PHASE_CREATE;
		start_attempt(j);
		return;
	case CLAIM_PENDING:
		/* Another instance is creating it: poll with backoff until
		 * it is done (duplicate) or released (we create). */
		j->claim_poll_ms = j->claim_poll_ms ? j->claim_poll_ms * 2 :
		    CLAIM_POLL_MIN_MS;
		if (j->claim_poll_ms > CLAIM_POLL_MAX_MS)
			j->claim_poll_ms = CLAIM_POLL_MAX_MS;
		job_set_state(j, JOB_CLAIM_RETRY, NULL);
		set_timer(j, j->claim_poll_ms, claim_timer_cb);
		return;
	case CLAIM_REFUSED:
		/* A key of this Identity has the wrong type: a few tries with
		 * backoff (an operator may be fixing it), then this request
		 * fails; the others go on. */
		if (++j->claim_refusals >= REDIS_REFUSALS_MAX) {
			char msg[320];
			size_t n = reclen > 256 ? 256 : reclen;

			/* A long key is cut on a character boundary. */
			while (n > 0 && n < reclen &&
			    ((unsigned char)rec[n] & 0xc0) == 0x80)
				n--;
			snprintf(msg, sizeof(msg),
			    "redis key %.*s has the wrong type", (int)n, rec);
			fail(j, "redis_error", msg);
			return;
		}
		job_set_state(j, JOB_CLAIM_RETRY, NULL);
		set_timer(j, redis_backoff_ms(j->claim_refusals),
		    claim_timer_cb);
		return;
	case CLAIM_ERROR:
	default:
		job_set_state(j, JOB_CLAIM_RETRY, NULL);
		set_timer(j, REDIS_RETRY_MS, claim_timer_cb);
		return;
	}
}

static void
claim(struct job *j)
{
	job_set_state(j, JOB_CLAIMING, NULL);
	if (queue_claim(j->req.identity, on_claim, j) != 0) {
		job_set_state(j, JOB_CLAIM_RETRY, NULL);
		set_timer(j, REDIS_RETRY_MS, claim_timer_cb);
	}
}

void
job_refresh_claims(void)
{
	const char **ids;
	struct job *j;
	size_t n = 0;

	if ((ids = calloc((size_t)njobs + 1, sizeof(*ids))) == NULL)
		return;
	TAILQ_FOREACH(j, &all_jobs, all)
		if (j->owns_claim && j->state < JOB_COMMIT_WAIT)
			ids[n++] = j->req.identity;
	queue_refresh_claims(ids, n);
	free(ids);
}

/* ------------------------------------------------------------------ */
/* pacing: the shared rate window, then the concurrency window */

static int
needs_rate_slot(const struct job *j)
{
	return ug.cfg->rate_limit > 0 && j->phase != PHASE_FETCH;
}

static void
start_attempt(struct job *j)
{
	if (auth_park(j))
		return;
	if (needs_rate_slot(j)) {
		job_set_state(j, JOB_RATE_WAIT, &rate_q);
		rate_pump();
		return;
	}
	send_enter(j);
}

static void
rate_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	rate_pump();
}

static void
on_rate(long granted, long wait_ms, void *arg)
{
	struct job *j;
	struct timeval tv;

	rate_outstanding = 0;
	if (granted < 0) {
		wait_ms = redis_backoff_ms(++rate_failures);
	} else {
		rate_failures = 0;
	}
	/* send_enter moves each out of rate_q, whatever it does with it. */
	while (granted-- > 0 && (j = TAILQ_FIRST(&rate_q)) != NULL)
		send_enter(j);
	if (TAILQ_EMPTY(&rate_q))
		return;
	if (wait_ms < 1)
		wait_ms = 1;
	tv.tv_sec = wait_ms / 1000;
	tv.tv_usec = (wait_ms % 1000) * 1000;
	evtimer_add(rate_ev, &tv);
}

/*
 * One script call asks for as many slots as jobs are waiting: under a
 * backlog that is one Redis round trip per window, not one per request.
 */
static void
rate_pump(void)
{
	long want = 0;
	struct job *j;

	if (rate_outstanding || evtimer_pending(rate_ev, NULL) ||
	    TAILQ_EMPTY(&rate_q))
		return;
	TAILQ_FOREACH(j, &rate_q, link)
		want++;
	if (queue_rate_acquire(want, on_rate, NULL) == 0) {
		rate_outstanding = 1;
	} else {
		struct timeval tv = { 0, REDIS_RETRY_MS * 1000 };

		evtimer_add(rate_ev, &tv);
	}
}

static void	 http_start(struct job *);

static void
send_enter(struct job *j)
{
	if (auth_park(j))
		return;
	if (TAILQ_EMPTY(&send_q) &&
	    http_inflight() < pace_window_limit(&window)) {
		http_start(j);
		return;
	}
	job_set_state(j, JOB_SEND_WAIT, &send_q);
}

static void
send_pump(void)
{
	struct job *j;

	while ((j = TAILQ_FIRST(&send_q)) != NULL &&
	    http_inflight() < pace_window_limit(&window)) {
		/* Either moves it out of send_q. */
		if (!auth_park(j))
			http_start(j);
	}
}

/* ------------------------------------------------------------------ */
/* Twilio */

static void	 on_http(const struct http_result *, void *);
static void	 retry_or_fail(struct job *);

static void
http_start(struct job *j)
{
	char *url = NULL, *body = NULL;
	int rv;

	job_set_state(j, JOB_HTTP, NULL);
	switch (j->phase) {
	case PHASE_CREATE:
		url = strdup(users_url);
		body = twilio_form(&j->req, 1);
		break;
	case PHASE_FETCH:
		url = twilio_user_url(ug.cfg->api_base, ug.cfg->service_sid,
		    j->req.identity);
		break;
	case PHASE_UPDATE:
		url = twilio_user_url(ug.cfg->api_base, ug.cfg->service_sid,
		    j->sid);
		body = twilio_form(&j->req, 0);
		break;
	}
	j->attempts++;
	j->tries++;
	if (j->retrying)
		stats.retries++;
	j->retrying = 0;
	if (url == NULL || (j->phase != PHASE_FETCH && body == NULL))
		rv = -1;
	else
		rv = http_send(url, body, j->phase == PHASE_FETCH ? -1 :
		    j->req.webhook_enabled, on_http, j);
	free(url);
	free(body);
	if (rv != 0) {
		free(j->last_message);
		j->last_message = strdup("could not start an HTTP request");
		j->last_status = 0;
		j->last_code = 0;
		retry_or_fail(j);
	}
}

static void
backoff_cb(evutil_socket_t fd, short what, void *arg)
{
	struct job *j = arg;

	j->retrying = 1;
	start_attempt(j);
}

static void
retry_or_fail(struct job *j)
{
	char msg[512];
	long ms;

	if (j->tries >= ug.cfg->max_attempts) {
		if (j->last_status)
			snprintf(msg, sizeof(msg),
			    "gave up after %d attempts; last answer: "
			    "HTTP %ld%s%s", j->attempts, j->last_status,
			    j->last_message ? ": " : "",
			    j->last_message ? j->last_message : "");
		else
			snprintf(msg, sizeof(msg),
			    "gave up after %d attempts; last error: %s",
			    j->attempts,
			    j->last_message ? j->last_message : "unknown");
		fail(j, "retries_exhausted", msg);
		return;
	}
	ms = pace_backoff_ms(j->tries, ug.cfg->base_delay_ms,
	    ug.cfg->max_delay_ms, j->last_retry_after_ms, random_unit());
	job_set_state(j, JOB_BACKOFF, NULL);
	set_timer(j, ms, backoff_cb);
}

/* -- Twilio refuses us (401/403, untrusted certificate) ------------- */

static void	 auth_probe_cb(evutil_socket_t, short, void *);

static void
auth_arm_probe(void)
{
	struct timeval tv;

	tv.tv_sec = auth_probe_ms / 1000;
	tv.tv_usec = (auth_probe_ms % 1000) * 1000;
	evtimer_add(auth_ev, &tv);
	auth_probe_ms = auth_probe_ms * 2 > AUTH_PROBE_MAX_MS ?
	    AUTH_PROBE_MAX_MS : auth_probe_ms * 2;
}

/*
 * While Twilio refuses us, a job on its way to Twilio waits in auth_q
 * instead (all but the probe).  Returns 1 when it parked the job.
 */
static int
auth_park(struct job *j)
{
	if (!auth_blocked || j == auth_probe_job)
		return 0;
	job_set_state(j, JOB_AUTH_WAIT, &auth_q);
	return 1;
}

/* Just blocked, with no probe yet: every job in q is parked. */
static void
auth_park_queue(struct job_list *q)
{
	struct job *j;

	while ((j = TAILQ_FIRST(q)) != NULL)
		job_set_state(j, JOB_AUTH_WAIT, &auth_q);
}

/*
 * The fault is ours, not the request's: nothing is failed or dead-lettered.
 * Intake stops, and every job we hold that has not reached Twilio yet
 * (rate and send queues now; those in backoff or claiming when they next
 * move) waits in auth_q, so that a refusal costs at most the requests
 * already on the wire.  One job at a time then probes Twilio with backoff
 * until it answers something else.
 */
static void
auth_wait(struct job *j, const char *reason)
{
	j->tries--;		/* not the request's fault: not counted */
	job_set_state_front(j, JOB_AUTH_WAIT, &auth_q);
	if (j == auth_probe_job)
		auth_probe_job = NULL;
	if (!auth_blocked) {
		auth_blocked = 1;
		snprintf(ug.auth_reason, sizeof(ug.auth_reason), "%s", reason);
		log_error("twilio refuses this daemon; intake paused, "
		    "probing with backoff", "reason", reason);
		auth_park_queue(&rate_q);
		auth_park_queue(&send_q);
		queue_unblock();
		state_changed();
	}
	if (auth_probe_job == NULL && !evtimer_pending(auth_ev, NULL))
		auth_arm_probe();
}

static void
auth_probe_cb(evutil_socket_t fd, short what, void *arg)
{
	struct job *j = TAILQ_FIRST(&auth_q);

	if (j == NULL || auth_probe_job != NULL)
		return;
	/* Not parked again (it is the probe): start_attempt moves it out. */
	auth_probe_job = j;
	start_attempt(j);
}

/*
 * The probe ended without an answer from Twilio (it failed before it was
 * sent, or for good): the next job in auth_q probes, or with none left
 * there is nobody to ask and intake resumes, which finds out again.
 */
static void
auth_probe_done(struct job *j)
{
	if (j != auth_probe_job)
		return;
	auth_probe_job = NULL;
	if (TAILQ_EMPTY(&auth_q))
		auth_clear();
	else if (!evtimer_pending(auth_ev, NULL))
		auth_arm_probe();
}

static void
auth_clear(void)
{
	struct job *j;

	if (!auth_blocked)
		return;
	auth_blocked = 0;
	auth_probe_ms = AUTH_PROBE_MIN_MS;
	auth_probe_job = NULL;
	ug.auth_reason[0] = '\0';
	evtimer_del(auth_ev);
	log_info("twilio accepts this daemon again; intake resumed");
	/* No longer blocked: start_attempt moves each out of auth_q. */
	while ((j = TAILQ_FIRST(&auth_q)) != NULL)
		start_attempt(j);
	state_changed();
	job_pump();
}

/* ------------------------------------------------------------------ */
/* answers */

static void
remember_answer(struct job *j, const struct http_result *res, long code,
    char *message)
{
	j->last_status = res->status;
	j->last_code = code;
	j->last_retry_after_ms = res->retry_after_ms;
	free(j->last_message);
	if (res->status == 0)
		j->last_message =
		    strdup(res->error ? res->error : "transport error");
	else
		j->last_message = message ? strdup(message) : NULL;
}

/*
 * The hot path: a created user whose result goes only to Redis as msgpack
 * needs its record only as msgpack bytes, so they are packed straight from
 * Twilio's answer (record_msgpack_from_twilio) and no json_t record is
 * built, encoded and freed: about 7 % of the instructions per created
 * user.  A socket client's answer and local waiters need the json_t: such
 * jobs, and answers the shortcut declines, take record_from_twilio.
 */
static int
record_straight(struct job *j, const struct http_result *res)
{
	char	*enc;
	size_t	 len;

	if (j->phase != PHASE_CREATE || j->conn != NULL || j->user != NULL ||
	    ug.cfg->format != FORMAT_MSGPACK || !TAILQ_EMPTY(&j->waiters) ||
	    !record_msgpack_from_twilio(res->body, res->len, j->req.identity,
	    &enc, &len))
		return 0;
	free(j->res.record);
	j->res.record = enc;
	j->res.recordlen = len;
	return 1;
}

/* One warning a minute at most: every request in flight meets it. */
static void
log_fd_shortage(void)
{
	static double last = -1e9;

	if (now_monotonic() - last < 60)
		return;
	last = now_monotonic();
	log_warn("no file descriptor for a Twilio connection (RLIMIT_NOFILE); "
	    "retrying without counting the attempt");
}

/*
 * Nothing reached Twilio: not an attempt, whatever holds the descriptors.
 * Retried with a backoff of its own, which grows as max_attempts would not
 * let the usual one.
 */
static void
retry_without_descriptor(struct job *j, const struct http_result *res)
{
	log_fd_shortage();
	log_debug("no descriptor for a Twilio connection; retrying",
	    "request_id", j->request_id);
	j->attempts--;
	j->tries--;
	remember_answer(j, res, 0, NULL);
	job_set_state(j, JOB_BACKOFF, NULL);
	set_timer(j, pace_backoff_ms(++j->fd_waits, ug.cfg->base_delay_ms,
	    ug.cfg->max_delay_ms, -1, random_unit()), backoff_cb);
}

/*
 * What Twilio's answer means for j; on the way, what it tells the rate
 * window and whether a refusal of our credentials is over.  *message is
 * Twilio's error message (malloc'd) or NULL.
 */
static enum twilio_outcome
classify_answer(struct job *j, const struct http_result *res, char **message)
{
	enum twilio_outcome o;
	long code = 0;

	if (res->status >= 400)
		record_twilio_error(res->body, res->len, &code, message);
	remember_answer(j, res, code, *message);
	o = twilio_classify(res->status, code);
	if (res->tls_failure)
		o = TWILIO_AUTH;

	if (res->status == 429) {
		stats.rate_limited++;
		pace_window_throttled(&window);
	} else if (o == TWILIO_CREATED || o == TWILIO_OK ||
	    o == TWILIO_EXISTS) {
		pace_window_success(&window);
	}
	ug.window = pace_window_limit(&window);	/* for the metrics */
	/* Only the probe's answer tells: an answer to a request sent
	 * before the refusal may have been made before it. */
	if (o != TWILIO_AUTH && j == auth_probe_job)
		auth_clear();
	return o;
}

/* Twilio answered 200 or 201: the user created, fetched or updated. */
static void
on_user_answer(struct job *j, const struct http_result *res)
{
	enum record_answer what;
	json_t *rec;

	if (record_straight(j, res)) {
		finish(j, RESULT_CREATED);
		return;
	}
	rec = record_from_twilio(res->body, res->len, j->req.identity, &what);
	if (what == RECORD_WRONG_USER) {
		/* Not a hiccup a retry fixes: something between us and
		 * Twilio is broken.  Nothing is stored, and the Identity is
		 * free again (fail releases it). */
		fail(j, "twilio_invalid_answer", "Twilio's answer is not this "
		    "Identity's user: a sid that is not US followed by 32 hex "
		    "digits, or another identity");
		return;
	}
	if (rec == NULL) {
		/* Twilio answered but the body is not a user: the user may
		 * exist now, so look it up by Identity. */
		if (log_limit_allow(&unexpected_limit, now_monotonic()))
			log_warn("unexpected twilio answer body; fetching the "
			    "user", "request_id", j->request_id);
		j->phase = PHASE_FETCH;
		retry_or_fail(j);
		return;
	}
	if (j->phase == PHASE_FETCH && ug.cfg->on_exists == ON_EXISTS_UPDATE &&
	    record_differs(rec, &j->req)) {
		json_t *sid = json_object_get(rec, "sid");

		free(j->sid);
		j->sid = strdup(json_string_value(sid));
		json_decref(rec);
		if (j->sid == NULL) {
			fail(j, "retries_exhausted", "out of memory");
			return;
		}
		j->phase = PHASE_UPDATE;
		start_attempt(j);
		return;
	}
	json_decref(j->user);
	j->user = rec;
	finish(j, j->phase == PHASE_CREATE ? RESULT_CREATED :
	    j->phase == PHASE_FETCH ? RESULT_EXISTS : RESULT_UPDATED);
}

static void
on_http(const struct http_result *res, void *arg)
{
	struct job *j = arg;
	char *message = NULL;

	if (res->out_of_fds) {
		retry_without_descriptor(j, res);
		send_pump();
		return;
	}
	switch (classify_answer(j, res, &message)) {
	case TWILIO_CREATED:
	case TWILIO_OK:
		on_user_answer(j, res);
		break;
	case TWILIO_EXISTS:
		if (j->phase != PHASE_CREATE) {
			fail(j, "twilio_rejected",
			    message ? message : "conflict");
			break;
		}
		j->phase = PHASE_FETCH;
		start_attempt(j);
		break;
	case TWILIO_RETRY:
		retry_or_fail(j);
		break;
	case TWILIO_AUTH:
		auth_wait(j,
		    res->tls_failure ? "twilio TLS verification failed" :
		    res->status == 403 ?
		    "twilio credentials refused (HTTP 403)" :
		    "twilio credentials refused (HTTP 401)");
		break;
	case TWILIO_REJECTED:
	default:
		fail(j, "twilio_rejected",
		    message ? message : "rejected by Twilio");
		break;
	}
	free(message);
	send_pump();
}

/* ------------------------------------------------------------------ */
/* results */

/*
 * Each status adds to the counter RESULT_STATUSES gives it, so the lists
 * cannot drift apart: a status without its counter does not build.
 */
static void
count_result(enum result_status status)
{
	switch (status) {
#define COUNT_STATUS(id, name, success, counter)			\
	case RESULT_##id:						\
		stats.counter++;					\
		break;
	RESULT_STATUSES(COUNT_STATUS)
#undef COUNT_STATUS
	default:
		break;
	}
}

/*
 * The owner of an Identity is done with it.  With its user (succeeded) the
 * jobs waiting behind it are duplicates of it; otherwise the Identity is
 * free again: the first waiter claims it, the others line up behind it.
 */
static void
hand_over_waiters(struct job *j, int succeeded)
{
	struct job *w;

	identity_leave(j);
	while ((w = TAILQ_FIRST(&j->waiters)) != NULL) {
		job_set_state(w, JOB_PARSED, NULL);	/* dedup again */
		w->owner = NULL;
		if (succeeded) {
			w->user = json_incref(j->user);
			finish(w, RESULT_DUPLICATE);
		} else {
			identity_enter(w);
		}
	}
}

/*
 * Gives up on a job without a result (no memory to make one): it stays in
 * the processing list, and jobs waiting on its Identity go on without it.
 */
static void
abandon(struct job *j)
{
	hand_over_waiters(j, 0);
	if (j->conn != NULL) {
		json_t *v = json_pack("{s:s}", "status", "unavailable");

		if (v != NULL)
			intake_answer(j->conn, v);
		json_decref(v);
	}
	job_free(j);
}

/* What result.c builds the job's result from. */
static void
outcome_of(const struct job *j, enum result_status status, const char *code,
    const char *message, struct result_outcome *o)
{
	memset(o, 0, sizeof(*o));
	o->status = status;
	o->request_id = j->request_id;
	o->identity = j->req.identity;
	o->error_code = code;
	o->error_message = message;
	o->twilio_code = j->last_code;
	o->http_status = j->last_status;
	o->attempts = j->attempts;
	o->from_socket = j->source != SOURCE_REDIS;
	o->received_wall = j->received_wall;
	o->completed_wall = now_wall();
	o->user = j->user;
	o->raw = j->raw;
	o->rawlen = j->rawlen;
	o->format = ug.cfg->format;
}

/*
 * A request not done is worth a warning, within the budget of its kind.
 * Identities (often e-mail addresses) and messages that may quote them
 * are logged at debug level only.
 */
static void
log_outcome(const struct job *j, const char *code, const char *message)
{
	const char *status = result_status_name(j->status);
	struct log_limit *limit = j->status == RESULT_INVALID ?
	    &invalid_limit : &failed_limit;

	if (!result_success(j->status) &&
	    log_limit_allow(limit, now_monotonic())) {
		char tcode[32] = "";

		if (j->last_code)
			snprintf(tcode, sizeof(tcode), "%ld", j->last_code);
		log_warn("request not done", "request_id", j->request_id,
		    "status", status, "code", code,
		    "twilio_code", tcode[0] ? tcode : NULL);
	}
	if (log_get_level() >= LOG_LEVEL_DEBUG)
		log_debug("request done", "request_id", j->request_id,
		    "status", status, "identity", j->req.identity,
		    "message", message);
}

/*
 * The job is done: its result (SPEC §4.2) is built once for every place
 * it goes, counted and logged, and the job waits for the result
 * transaction that writes it.
 */
static void
conclude(struct job *j, enum result_status status, const char *code,
    const char *message)
{
	struct result_outcome o;

	if (j->timer)
		evtimer_del(j->timer);
	auth_probe_done(j);
	j->status = status;
	outcome_of(j, status, code, message, &o);
	if (result_build(&o, &j->res) != 0) {
		/* Without a result we cannot finish; the request stays in the
		 * processing list and the next start handles it again. */
		log_error("out of memory encoding a result; the request stays "
		    "in the processing list", "request_id", j->request_id);
		abandon(j);
		return;
	}
	count_result(status);
	stats_observe(&stats_result_seconds,
	    now_monotonic() - j->received_mono);
	log_outcome(j, code, message);
	commit_enter(j);
}

/* A success: its user is j->user, or j->res.record packed already. */
static void
finish(struct job *j, enum result_status status)
{
	conclude(j, status, NULL, NULL);
}

/* Failed, with one of result_failure_codes; Twilio's last code and HTTP
 * status go with it. */
static void
fail(struct job *j, const char *code, const char *message)
{
	assert(result_error_known(RESULT_FAILED, code));
	conclude(j, RESULT_FAILED, code, message);
}

static void	 completed(struct job *);

/*
 * Results were written and their jobs freed: there is room to take more,
 * and a drain may be over.  Run once after the results of a loop
 * iteration, not once per result, so that a take asks for all the room.
 */
static void
after_written(evutil_socket_t fd, short what, void *arg)
{
	job_pump();
	if (ug.draining && njobs == 0)
		hooks->drained();
}

/* What queue_commit.c tells of the job's result. */
static void
on_commit(enum commit_progress progress, void *arg)
{
	struct job *j = arg;

	switch (progress) {
	case COMMIT_SENT:
		job_set_state(j, JOB_COMMITTING, NULL);
		break;
	case COMMIT_WAITING:
		job_set_state(j, JOB_COMMIT_WAIT, NULL);
		break;
	case COMMIT_WRITTEN:
		completed(j);
		event_active(written_ev, EV_TIMEOUT, 0);
		break;
	}
}

/*
 * The result goes to queue_commit.c, once: it writes it in the next
 * result transaction, with the Identity's dedup state (done, or free
 * again), and removes the request from our processing list.
 */
static void
commit_enter(struct job *j)
{
	struct commit_item *it = &j->commit;

	memset(it, 0, sizeof(*it));
	it->raw = j->raw;
	it->rawlen = j->rawlen;
	it->identity = j->req.identity;
	it->result = j->res.enc;
	it->resultlen = j->res.enclen;
	it->record = j->res.record;
	it->recordlen = j->res.recordlen;
	it->reply_to = j->req.reply_to;
	it->dead = j->res.dead;
	it->deadlen = j->res.deadlen;
	it->identity_done = j->owns_claim && result_success(j->status);
	it->identity_release = j->owns_claim && !result_success(j->status);
	it->recovered = j->recoveries > 0;
	it->in_processing = 1;
	job_set_state(j, JOB_COMMIT_WAIT, NULL);
	queue_commit_add(it, on_commit, j);
}

/*
 * The result is in Redis.  Answer the socket client, hand the outcome to
 * the jobs waiting on the same Identity, and free the job.
 */
static void
completed(struct job *j)
{
	char err[128];

	if (j->conn != NULL)
		intake_answer(j->conn, j->res.map);
	/* A request for the same Identity that came in after the record was
	 * packed straight gets it decoded; if that fails it claims again and
	 * finds the stored record. */
	if (j->user == NULL && j->res.record != NULL &&
	    result_success(j->status) && !TAILQ_EMPTY(&j->waiters))
		(void)codec_decode_any(j->res.record, j->res.recordlen,
		    &j->user, err, sizeof(err));
	hand_over_waiters(j, result_success(j->status) && j->user != NULL);
	job_free(j);
}

/* ------------------------------------------------------------------ */
/* life cycle */

void
job_redis_changed(int up)
{
	if (up) {
		rate_pump();
		job_pump();
	}
}

/*
 * What of our processing list our jobs hold: every job's request is there
 * (or on its way there, ahead of the reconcile on the same link).
 */
size_t
job_held(const char **raws, size_t *lens, size_t max)
{
	struct job *j;
	size_t n = 0;

	TAILQ_FOREACH(j, &all_jobs, all) {
		if (n == max)
			break;
		raws[n] = j->raw;
		lens[n++] = j->rawlen;
	}
	return n;
}

void
job_forget_conn(struct intake_conn *conn)
{
	struct job *j;

	TAILQ_FOREACH(j, &all_jobs, all)
		if (j->conn == conn)
			j->conn = NULL;
}

void
job_tick(void)
{
	if (ug.draining && njobs == 0)
		hooks->drained();
}

void
job_reconfigure(void)
{
	char *url = twilio_users_url(ug.cfg->api_base, ug.cfg->service_sid);

	if (url != NULL) {
		free(users_url);
		users_url = url;
	}
	pace_window_set_max(&window, ug.cfg->max_inflight);
	ug.window = pace_window_limit(&window);
	/* New credentials or a new CA file may be what Twilio waited for:
	 * probe now rather than at the end of the backoff. */
	if (auth_blocked) {
		auth_probe_ms = AUTH_PROBE_MIN_MS;
		if (auth_probe_job == NULL) {
			evtimer_del(auth_ev);
			event_active(auth_ev, EV_TIMEOUT, 0);
		}
	}
	send_pump();
	job_pump();
}

void
job_init(const struct job_hooks *h)
{
	hooks = h;
	intake_room(job_room());
	pace_window_init(&window, ug.cfg->max_inflight);
	ug.window = pace_window_limit(&window);
	users_url = twilio_users_url(ug.cfg->api_base, ug.cfg->service_sid);
	rate_ev = evtimer_new(ug.base, rate_timer_cb, NULL);
	written_ev = event_new(ug.base, -1, 0, after_written, NULL);
	auth_ev = evtimer_new(ug.base, auth_probe_cb, NULL);
	if (users_url == NULL || rate_ev == NULL || written_ev == NULL ||
	    auth_ev == NULL) {
		log_error("out of memory at start");
		exit(1);
	}
}

/*
 * Final exit: what is still in memory is not answered here; its request
 * stays in our processing list and the next start finishes it.
 */
void
job_abandon_all(void)
{
	struct job *j;

	while ((j = TAILQ_FIRST(&all_jobs)) != NULL) {
		identity_leave(j);
		job_free(j);
	}
	tdestroy(identities, free_nothing);
	identities = NULL;
	auth_probe_job = NULL;
}

void
job_shutdown(void)
{
	job_abandon_all();
	if (rate_ev)
		event_free(rate_ev);
	if (written_ev)
		event_free(written_ev);
	if (auth_ev)
		event_free(auth_ev);
	rate_ev = written_ev = auth_ev = NULL;
	free(users_url);
	users_url = NULL;
}
