/*
 * queue_link.c: the link to Redis.  Its two connections (queue_int.h says
 * why two), their setup (AUTH, SELECT, loading the scripts) and reconnection
 * with backoff; the helpers every queue_*.c file sends with; the key names;
 * and what Redis refuses us, for health.  queue_init and queue_shutdown set
 * up and tear down the whole of the queue_*.c files.
 */
#include "config.h"

#include <sys/types.h>

#include <ctype.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "queue_int.h"

#define RECONNECT_MIN_MS	100
#define RECONNECT_MAX_MS	5000
#define CONNECT_TIMEOUT_MS	10000	/* to an address that never answers */
#define SENTINEL_TIMEOUT_MS	500	/* per Sentinel: connect, then reply */
#define REPLICA_RETRY_MS	300	/* a replica answered for the primary */
#define AFTER_HANDSHAKE		"redis TLS: closed after the handshake"

static const char *const script_source[SCRIPT_COUNT] = {
	queue_take_lua, queue_claim_lua, queue_rate_lua, queue_takeover_lua,
	queue_reconcile_lua, queue_guard_lua, queue_stub_lua, queue_head_lua,
	queue_rate_used_lua,
};
char queue_script_sha[SCRIPT_COUNT][41];

struct queue_conn *queue_cmd;
struct queue_conn *queue_blk;
int queue_ready;
int queue_setup_failed;
long long queue_blk_client_id = -1;
struct queue_keys queue_keys;
const struct queue_events *queue_events;

static int shutting_down;		/* queue_shutdown: no reconnects */
static long reconnect_failures;		/* tries since the link was up */
static long reconnect_floor_ms;		/* least next wait (a replica) */
static char outage_reason[256];		/* non-empty: an outage */
static int scripts_loading;		/* SCRIPT LOADs on the wire */
static int cmd_connected, blk_connected; /* came up since connect_all */
static char link_role[16] = "unknown";	/* what HELLO said, for show stats */
static struct event *reconnect_ev;
static char *link_tls_seen;		/* tls_settings() of the last connect */
static char link_address[300];		/* host:port, or the socket's path */
static int link_tls;			/* the link is made with TLS */
static double link_up_since;		/* monotonic; 0 while down */
static int link_was_up;			/* next link up: a reconnect */
static char version_seen[32];		/* HELLO's, logged when it changes */
static char policy_warned[32];		/* maxmemory-policy warned about */
static int policy_unreadable;		/* CONFIG GET refused: NOPERM */
static int hello_warned;		/* HELLO refused by an ACL */
static char moved_host[256];		/* a Cluster's MOVED; "" before */
static unsigned moved_port;
static char slot_node[300];		/* host:port MOVED last named */
static int link_cluster;		/* HELLO said mode cluster */

static void	 connect_all(void);
static void	 connect_links(void);
static void	 sentinel_resolve(void);
static void	 sentinel_shutdown(void);
static void	 sentinel_primary_params(struct queue_conn_params *);
static void	 link_drop(struct queue_conn **);
static void	 on_client_id(struct queue_conn *, redisReply *, void *);
static void	 on_script_loaded(struct queue_conn *, redisReply *, void *);
static void	 schedule_reconnect(void);
static void	 setup_refused(struct queue_conn *);
static void	 role_seen(struct queue_conn *, const char *);
static int	 cluster_moved(const char *);
static void	 cluster_forget(void);

static const char *const fault_operation[FAULT_COUNT] = {
	"taking requests", "identity claims", "rate window",
	"recovering processing lists", "result transaction",
	"durable_replicas",
};
static char fault_reason[FAULT_COUNT][192];

void
queue_fault_set(enum fault f, const char *error)
{
	char reason[sizeof(fault_reason[0])];
	size_t n = strlen(WRONGTYPE_PREFIX);

	if (strncmp(error, WRONGTYPE_PREFIX, n) == 0)
		snprintf(reason, sizeof(reason), "redis key %s has wrong type",
		    error + n);
	else if (f == FAULT_DURABLE)
		snprintf(reason, sizeof(reason), "redis replicas behind: %s",
		    error);
	else
		snprintf(reason, sizeof(reason), "redis refused %s: %s",
		    fault_operation[f], error);
	if (strcmp(reason, fault_reason[f]) == 0)
		return;
	memcpy(fault_reason[f], reason, sizeof(reason));
	/* An Identity (often an e-mail address) is named at debug level
	 * only. */
	if (f == FAULT_CLAIM)
		log_error("redis refused identity claims; retrying with "
		    "backoff");
	else
		log_error("redis refused a command; retrying with backoff",
		    "operation", fault_operation[f], "reason", reason);
	log_debug("redis fault", "reason", reason);
	state_changed();
}

void
queue_fault_clear(enum fault f)
{
	if (fault_reason[f][0] == '\0')
		return;
	fault_reason[f][0] = '\0';
	log_info("redis accepts our commands again", "operation",
	    fault_operation[f]);
	state_changed();
}

int
queue_is_noscript(const redisReply *r)
{
	return r != NULL && r->type == REDIS_REPLY_ERROR &&
	    strncmp(r->str, "NOSCRIPT", 8) == 0;
}

const char *
queue_reply_error(const redisReply *r)
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
	/* The alert that a reset hid at first is no new outage. */
	int refined = strncmp(outage_reason, AFTER_HANDSHAKE,
	    strlen(AFTER_HANDSHAKE)) == 0 &&
	    strncmp(reason, "redis TLS", 9) == 0;

	if (strcmp(reason, outage_reason) == 0)
		return;
	snprintf(outage_reason, sizeof(outage_reason), "%s", reason);
	if (refined)
		log_info("redis told why TLS failed", "reason", reason);
	else if (strncmp(reason, "redis unreachable", 17) == 0)
		log_warn("cannot connect to redis, retrying with backoff",
		    "error", error);
	else if (strncmp(reason, "redis TLS", 9) == 0)
		log_error("TLS to redis failed, retrying with backoff",
		    "reason", reason);
	else
		log_error("redis refuses us, retrying with backoff", "reason",
		    reason, "error", error);
	state_changed();
}

/*
 * A connection that failed before the link was up: TLS (a certificate
 * verification, a file that cannot be loaded, a close right after the
 * handshake) says so, anything else is unreachable with its reason
 * ("connection refused").
 */
static void
outage_closed(const char *error, int after_handshake)
{
	char reason[sizeof(outage_reason)];
	int first = tolower((unsigned char)error[0]);
	const char *rest = error[0] ? error + 1 : "";

	if (strncmp(error, "TLS:", 4) == 0)
		snprintf(reason, sizeof(reason), "redis %s", error);
	else if (after_handshake)
		snprintf(reason, sizeof(reason), AFTER_HANDSHAKE
		    " (client certificate refused?): %c%s", first, rest);
	else
		snprintf(reason, sizeof(reason), "redis unreachable: %c%s",
		    first, rest);
	outage(reason, error);
}

/* Sends a SCRIPT LOAD of each script, counting those on the wire. */
static void
scripts_load(void)
{
	int i;

	for (i = 0; i < SCRIPT_COUNT; i++)
		if (queue_send_strings(queue_cmd, on_script_loaded,
		    (void *)(intptr_t)i, 3, "SCRIPT", "LOAD",
		    script_source[i]) == 0)
			scripts_loading++;
}

/*
 * Redis forgot our scripts (a restart, a failover, SCRIPT FLUSH): load them
 * again, once for all the calls that failed together.  Callers retry their
 * call, and on this ordered link every retry comes after the loads.
 */
void
queue_scripts_reload(void)
{
	if (scripts_loading > 0 || queue_cmd == NULL)
		return;
	log_warn("redis lost our scripts (restart, failover or SCRIPT FLUSH); "
	    "loading them again");
	scripts_load();
}

/* An error reply to one of our calls: reload lost scripts, or record it. */
void
queue_refused(enum fault f, const redisReply *r)
{
	if (queue_failover(r))
		return;
	if (queue_is_noscript(r))
		queue_scripts_reload();
	else
		queue_fault_set(f, queue_reply_error(r));
}

/* PREFIX + suffix + arg, malloc'd; two per result, so no printf. */
char *
queue_key(const char *suffix, const char *arg)
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

/*
 * The reply to a command whose caller does not read it (those queued in a
 * MULTI, the heartbeat): only a failover error matters, as the EXEC or the
 * next command then fails with a less telling one (EXECABORT).
 */
static void
on_unread(struct queue_conn *c, redisReply *r, void *priv)
{
	(void)queue_failover(r);
}

/* Sends one command as argv; returns -1 when the link is down. */
int
queue_send_argv(struct queue_conn *c, queue_conn_cb *fn, void *priv,
    int argc, const char **argv, const size_t *lens)
{
	return queue_conn_send_argv(c, fn != NULL ? fn : on_unread, priv,
	    argc, argv, lens);
}

/* Convenience for commands made only of C strings. */
int
queue_send_strings(struct queue_conn *c, queue_conn_cb *fn, void *priv,
    int argc, ...)
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
	return queue_send_argv(c, fn, priv, argc, argv, lens);
}

/*
 * [redis] durable_replicas: WAIT on the command connection, after a write
 * whose loss in a failover would cost a second Twilio call (a claim, which
 * comes after the take that moved its request) or a second result (the
 * result transaction).  WAIT covers every write this connection made
 * before it, and the replication stream is one sequence, so it also
 * covers a BLMOVE on the blocking connection answered before the claim
 * was sent.  Returns -1 when the link is down.
 */
int
queue_durable_send(queue_conn_cb *fn, void *priv)
{
	char n[32], ms[32];

	snprintf(n, sizeof(n), "%ld", ug.cfg->redis_durable_replicas);
	snprintf(ms, sizeof(ms), "%ld", ug.cfg->redis_durable_timeout_ms);
	return queue_send_strings(queue_cmd, fn, priv, 3, "WAIT", n, ms);
}

/*
 * WAIT's answer: 1 when enough replicas have our writes; 0 when fewer did
 * within durable_timeout_ms (health says so), and WAIT is sent again with
 * fn and priv; -1 when the link was lost (the caller retries on the next
 * one).
 */
int
queue_durable_confirmed(const redisReply *r, queue_conn_cb *fn, void *priv)
{
	char why[96];

	if (r == NULL || r->type != REDIS_REPLY_INTEGER) {
		if (r != NULL)
			queue_refused(FAULT_DURABLE, r);
		return -1;
	}
	if (r->integer >= ug.cfg->redis_durable_replicas) {
		queue_fault_clear(FAULT_DURABLE);
		return 1;
	}
	snprintf(why, sizeof(why), "%lld of %ld replicas confirmed within "
	    "durable_timeout_ms", r->integer, ug.cfg->redis_durable_replicas);
	queue_fault_set(FAULT_DURABLE, why);
	return queue_durable_send(fn, priv) == 0 ? 0 : -1;
}

/* ------------------------------------------------------------------ */
/* Sentinel */

/*
 * With [redis] sentinels, the primary's address is asked of the Sentinels
 * before every connection, as Redis' "Sentinel client guidelines" say:
 * each in turn, with a short timeout; the first that names the primary
 * goes to the front of our list, so that it is asked first next time.
 * The link then checks that the server is the primary: the role HELLO
 * names (role_seen).
 * One Sentinel's +switch-master channel tells us of a failover sooner than
 * our next error would; it only makes us drop the link and ask again.
 */
static struct queue_conn *sentinel_ask_conn;	/* the one being asked */
static struct queue_conn *sentinel_sub;		/* +switch-master */
static size_t *sentinel_order;	/* into cfg->sentinels, best first */
static size_t sentinel_try;	/* place in sentinel_order being asked */
static char sentinel_error[192];	/* why the last one did not answer */
static int sentinel_auth_refused;	/* one refused us (NOAUTH) this round */
static char sentinel_auth_error[128];	/* its reply to our AUTH, if an error */
static char primary_host[256];	/* what a Sentinel named; "" before */
static unsigned primary_port;

static void	 sentinel_ask(void);

/* The primary a Sentinel named, in place of [redis] host and port. */
static void
sentinel_primary_params(struct queue_conn_params *p)
{
	if (ug.cfg->nsentinels == 0 || primary_host[0] == '\0')
		return;
	p->host = primary_host;
	p->port = primary_port;
	p->unix_socket = NULL;
}

/* Sentinel i's address, with the link's TLS settings and short timeouts. */
static void
sentinel_params(struct queue_conn_params *p, size_t i)
{
	queue_link_params(p);
	p->host = ug.cfg->sentinels[i].host;
	p->port = ug.cfg->sentinels[i].port;
	p->unix_socket = NULL;
	p->connect_timeout_ms = SENTINEL_TIMEOUT_MS;
	p->command_timeout_ms = SENTINEL_TIMEOUT_MS;
}

/* Where the link connects, "host:port" (or the socket), for messages. */
void
queue_link_address(char *buf, size_t size)
{
	struct queue_conn_params p;

	queue_link_params(&p);
	if (p.unix_socket != NULL && *p.unix_socket != '\0')
		snprintf(buf, size, "%s", p.unix_socket);
	else
		snprintf(buf, size, "%s:%u", p.host, p.port);
}

const char *
queue_role(void)
{
	return link_role;
}

/* Kept to say why the next command meets NOAUTH (WRONGPASS, say). */
static void
on_sentinel_auth(struct queue_conn *c, redisReply *r, void *priv)
{
	if (r != NULL && c == sentinel_ask_conn &&
	    r->type == REDIS_REPLY_ERROR)
		snprintf(sentinel_auth_error, sizeof(sentinel_auth_error), "%s",
		    r->str);
}

/*
 * AUTH with sentinel_password_file's secret, when there is one.  Straight
 * on queue_conn: a Sentinel's error is not our link's failover.  A refused
 * AUTH makes the next command fail too, with NOAUTH.
 */
static void
sentinel_hello(struct queue_conn *c)
{
	const char *pw = ug.cfg->sentinel_password;

	if (pw != NULL)
		queue_conn_send_argv(c, on_sentinel_auth, NULL, 2,
		    (const char *[]){ "AUTH", pw },
		    (const size_t[]){ 4, strlen(pw) });
}

/*
 * A Sentinel that did not name the primary; auth: it refused us.  That
 * error stays the one logged: a Sentinel down next to Sentinels that
 * refuse our password is not why we have no primary.
 */
static void
sentinel_failed(const char *error, int auth)
{
	const struct config_sentinel *s =
	    &ug.cfg->sentinels[sentinel_order[sentinel_try]];
	char msg[sizeof(sentinel_error)];

	snprintf(msg, sizeof(msg), "sentinel %s:%u: %s", s->host, s->port,
	    error);
	log_debug("a sentinel did not name the primary", "error", msg);
	if (auth || !sentinel_auth_refused)
		memcpy(sentinel_error, msg, sizeof(msg));
	if (auth)
		sentinel_auth_refused = 1;
	sentinel_try++;
	sentinel_ask();
}

/* Lost before it answered: refused, timed out, closed on us. */
static void
on_sentinel_closed(struct queue_conn *c, const char *reason, void *arg)
{
	if (c != sentinel_ask_conn)
		return;
	sentinel_ask_conn = NULL;
	sentinel_failed(reason, 0);
}

static void
on_sentinel_message(struct queue_conn *c, redisReply *r, void *arg)
{
	const char *name = ug.cfg->redis_master_name;
	size_t n = strlen(name);
	char host[256];
	unsigned port;

	/* "message" "+switch-master" "NAME old-ip old-port new-ip new-port" */
	if (r->type != REDIS_REPLY_ARRAY || r->elements != 3 ||
	    r->element[2]->type != REDIS_REPLY_STRING ||
	    strncmp(r->element[2]->str, name, n) != 0 ||
	    r->element[2]->str[n] != ' ')
		return;
	/* Already there: an error of the old primary brought us over. */
	if (sscanf(r->element[2]->str + n, " %*s %*u %255s %u", host,
	    &port) == 2 && strcmp(host, primary_host) == 0 &&
	    port == primary_port && queue_ready)
		return;
	log_warn("sentinel announces a new primary; reconnecting", "switch",
	    r->element[2]->str);
	if (queue_cmd != NULL)
		link_drop(&queue_cmd);
	else if (queue_blk != NULL)
		link_drop(&queue_blk);
}

static void
on_sentinel_sub_closed(struct queue_conn *c, const char *reason, void *arg)
{
	sentinel_sub = NULL;	/* made again at the next resolution */
}

/* Listens to +switch-master on Sentinel i, unless already listening. */
static void
sentinel_subscribe(size_t i)
{
	struct queue_conn_params p;
	struct queue_conn_events ev = {
		NULL, on_sentinel_sub_closed, on_sentinel_message, NULL
	};
	char err[128];

	if (sentinel_sub != NULL)
		return;
	sentinel_params(&p, i);
	p.command_timeout_ms = 0;	/* a subscriber waits for ever */
	if ((sentinel_sub = queue_conn_open(ug.base, &p, &ev, err,
	    sizeof(err))) == NULL)
		return;
	sentinel_hello(sentinel_sub);
	queue_conn_send_argv(sentinel_sub, NULL, NULL, 2,
	    (const char *[]){ "SUBSCRIBE", "+switch-master" },
	    (const size_t[]){ 9, 14 });
}

/* The reply to SENTINEL get-master-addr-by-name: host and port, or nil. */
static void
on_master_addr(struct queue_conn *c, redisReply *r, void *priv)
{
	size_t i, front;
	char host[sizeof(primary_host)];
	unsigned port;

	if (r == NULL || c != sentinel_ask_conn)
		return;		/* on_sentinel_closed goes on, or shutdown */
	sentinel_ask_conn = NULL;
	queue_conn_close(c);
	if (r->type == REDIS_REPLY_ERROR) {
		/* Refused: without AUTH, or after a refused one. */
		int auth = strncmp(r->str, "NOAUTH", 6) == 0;

		sentinel_failed(auth && sentinel_auth_error[0] ?
		    sentinel_auth_error : r->str, auth);
		return;
	}
	if (queue_conn_primary(r, host, sizeof(host), &port) != 0) {
		sentinel_failed("no primary known by that master_name", 0);
		return;
	}
	if (primary_host[0] != '\0' &&
	    (strcmp(primary_host, host) != 0 || primary_port != port)) {
		char from[300], to[300];

		snprintf(from, sizeof(from), "%s:%u", primary_host,
		    primary_port);
		snprintf(to, sizeof(to), "%s:%u", host, port);
		stats.failovers++;
		log_warn("redis primary moved (failover)", "from", from, "to",
		    to);
	}
	memcpy(primary_host, host, strlen(host) + 1);
	primary_port = port;
	/* The one that answered goes to the front. */
	front = sentinel_order[sentinel_try];
	for (i = sentinel_try; i > 0; i--)
		sentinel_order[i] = sentinel_order[i - 1];
	sentinel_order[0] = front;
	sentinel_subscribe(front);
	connect_links();
}

/* Asks the Sentinel at sentinel_try, or gives up after the last one. */
static void
sentinel_ask(void)
{
	struct config *cfg = ug.cfg;
	struct queue_conn_params p;
	struct queue_conn_events ev = {
		NULL, on_sentinel_closed, NULL, NULL
	};
	char err[128], reason[sizeof(outage_reason)];

	if (shutting_down)
		return;
	if (sentinel_try >= cfg->nsentinels) {
		snprintf(reason, sizeof(reason),
		    "redis no primary found (sentinels %s%s)",
		    cfg->redis_sentinels,
		    sentinel_auth_refused ? ": auth refused" : "");
		outage(reason, sentinel_error);
		schedule_reconnect();
		return;
	}
	sentinel_params(&p, sentinel_order[sentinel_try]);
	sentinel_auth_error[0] = '\0';
	if ((sentinel_ask_conn = queue_conn_open(ug.base, &p, &ev, err,
	    sizeof(err))) == NULL) {
		sentinel_failed(err, 0);
		return;
	}
	sentinel_hello(sentinel_ask_conn);
	queue_conn_send_argv(sentinel_ask_conn, on_master_addr, NULL, 3,
	    (const char *[]){ "SENTINEL", "get-master-addr-by-name",
	    cfg->redis_master_name },
	    (const size_t[]){ 8, 23, strlen(cfg->redis_master_name) });
}

static void
sentinel_resolve(void)
{
	size_t i;

	if (sentinel_order == NULL) {
		if ((sentinel_order = calloc(ug.cfg->nsentinels,
		    sizeof(*sentinel_order))) == NULL) {
			outage("redis no primary found", "out of memory");
			schedule_reconnect();
			return;
		}
		for (i = 0; i < ug.cfg->nsentinels; i++)
			sentinel_order[i] = i;
	}
	sentinel_try = 0;
	sentinel_error[0] = '\0';
	sentinel_auth_refused = 0;
	sentinel_ask();
}

static void
sentinel_shutdown(void)
{
	struct queue_conn *c;

	if ((c = sentinel_ask_conn) != NULL) {
		sentinel_ask_conn = NULL;
		queue_conn_close(c);
	}
	if ((c = sentinel_sub) != NULL) {
		sentinel_sub = NULL;
		queue_conn_close(c);
	}
	free(sentinel_order);
	sentinel_order = NULL;
}

/* ------------------------------------------------------------------ */
/* connection management */

static void
link_lost(void)
{
	int was = ug.redis_up;

	queue_ready = 0;
	ug.redis_up = 0;
	queue_take_outstanding = 0;
	link_up_since = 0;
	if (was) {
		log_warn("redis connection lost; requests stay queued, "
		    "reconnecting");
		queue_events->link(0);
		state_changed();
	}
}

/*
 * The instance is registered: the link is up and intake may start at once.
 * A reconnect, or the end of an outage, is logged.
 */
void
queue_link_up(int first)
{
	queue_ready = 1;
	ug.redis_up = 1;
	reconnect_failures = 0;
	link_up_since = now_monotonic();
	if (link_was_up)
		stats.redis_reconnects++;
	link_was_up = 1;
	queue_intake_reset();
	if (outage_reason[0] || !first)
		log_info("redis connection restored");
	outage_reason[0] = '\0';
	queue_commit_resume();
	queue_events->link(1);
	state_changed();
}

/*
 * One of the two connections is gone (lost), or never came up; slot says
 * which.  Its callbacks have had their NULL replies.  The other one is
 * dropped at once, and re-made with it.  Only a lost blocking link had a
 * BLMOVE on its way; losing it while draining leaves the command link up.
 */
static void
link_closed(struct queue_conn **slot, int lost)
{
	struct queue_conn *other;

	*slot = NULL;
	if (slot == &queue_cmd) {
		link_lost();
		if ((other = queue_blk) != NULL) {
			queue_blk = NULL;
			queue_conn_close(other);
			queue_block_outstanding = 0;
		}
	} else {
		if (lost)
			queue_block_outstanding = 0;
		if ((other = queue_cmd) != NULL && !(lost && ug.draining)) {
			queue_cmd = NULL;
			queue_conn_close(other);
			link_lost();
		}
	}
	if (!shutting_down)
		schedule_reconnect();
}

/*
 * Closes one of our connections at once, as if it were lost.  Its slot is
 * cleared first: the pending callbacks, called with NULL as it closes, see
 * no link to send on.
 */
static void
link_drop(struct queue_conn **slot)
{
	struct queue_conn *c = *slot;

	*slot = NULL;
	queue_conn_close(c);
	link_closed(slot, 1);
}

/* Which connection came up: the one its slot points to. */
static void
on_connected(struct queue_conn *c, void *arg)
{
	struct queue_conn **slot = arg;

	if (slot == &queue_cmd)
		cmd_connected = 1;
	else
		blk_connected = 1;
}

/* A connection that never came up is an outage; one that did, lost. */
static void
on_closed(struct queue_conn *c, const char *reason, void *arg)
{
	struct queue_conn **slot = arg;
	int lost = slot == &queue_cmd ? cmd_connected : blk_connected;

	int handshaken = lost && link_tls && strncmp(reason, "TLS:", 4) != 0;

	/*
	 * Before the link is up, a close is an outage even after the
	 * connection was made: a server that refuses our client certificate
	 * says so only after the handshake (TLS 1.3), and as it closes on
	 * the commands we sent meanwhile, our next write often meets a reset
	 * before its alert is read.  So a plain close right after a
	 * handshake is told as TLS too, and keeps a TLS reason an earlier
	 * attempt gave rather than log a new one each time.
	 */
	if (!lost) {
		cluster_forget();	/* a node MOVED named, gone since */
		outage_closed(reason, 0);
	}
	else if (!queue_ready && !(handshaken &&
	    strncmp(outage_reason, "redis TLS", 9) == 0))
		outage_closed(reason, handshaken);
	link_closed(slot, lost);
}

/*
 * A failover error (failover.c) to any command on either connection: the
 * server is not, or no longer, the primary.  Both connections are dropped
 * as if lost; the reconnect asks the Sentinels again, reloads the scripts
 * and reconciles our processing list, and every caller retries what
 * failed (a claim, a take, a result transaction) once the link is up.
 * Returns whether r was one.
 */
int
queue_failover(const redisReply *r)
{
	if (r == NULL || r->type != REDIS_REPLY_ERROR ||
	    !redis_error_is_failover(r->str))
		return 0;
	if (queue_cmd == NULL && queue_blk == NULL)
		return 1;	/* already dropped by an earlier reply */
	if (cluster_moved(r->str))
		log_warn("redis cluster moved our slot; reconnecting to its "
		    "node", "error", r->str);
	else
		log_warn("redis is not the primary now (failover?); "
		    "reconnecting", "error", r->str);
	if (queue_cmd != NULL)
		link_drop(&queue_cmd);
	else
		link_drop(&queue_blk);
	return 1;
}

/*
 * Redis Cluster: MOVED names the node that serves our one slot (the hash
 * tag of [redis] prefix), after a failover or a resharding, or because the
 * configured address is another node of the cluster.  The link is made
 * again there, as with a primary a Sentinel names; every key of ours is in
 * that slot, so there is no per-key routing.  The configured address stays
 * the way in: it is used again when the named node cannot be reached or
 * turns out to be a replica (cluster_forget).  ASK (our slot half-way
 * through a migration) is not followed: the link is made again with
 * backoff, on the same node, until the migration ends and MOVED comes.
 * Returns whether error was a MOVED.
 */
static int
cluster_moved(const char *error)
{
	char host[sizeof(moved_host)], node[sizeof(slot_node)];
	unsigned port;

	if (redis_moved_address(error, host, sizeof(host), &port) != 0)
		return 0;
	if (host[0] == '\0') {
		struct queue_conn_params p;

		queue_link_params(&p);
		if (p.host == NULL)
			return 0;
		snprintf(host, sizeof(host), "%s", p.host);
	}
	memcpy(moved_host, host, sizeof(moved_host));
	moved_port = port;
	/* The first MOVED only finds the slot; another node is a failover
	 * (or a resharding), counted as Sentinel's new primary is. */
	snprintf(node, sizeof(node), "%s:%u", host, port);
	if (slot_node[0] != '\0' && strcmp(node, slot_node) != 0) {
		stats.failovers++;
		log_warn("redis cluster moved our slot to another node "
		    "(failover)", "from", slot_node, "to", node);
	}
	memcpy(slot_node, node, sizeof(slot_node));
	return 1;
}

/* Back to the configured address, which will name the slot's node. */
static void
cluster_forget(void)
{
	if (moved_host[0] == '\0')
		return;
	log_info("redis cluster node left; asking the configured address",
	    "node", moved_host);
	moved_host[0] = '\0';
}

static void
reconnect_cb(evutil_socket_t fd, short what, void *arg)
{
	if (queue_cmd == NULL && queue_blk == NULL &&
	    sentinel_ask_conn == NULL && !shutting_down)
		connect_all();
}

/*
 * Full jitter (pace.c), so that the daemons of a fleet that lost Redis
 * together do not all come back in the same millisecond; at least
 * reconnect_floor_ms, set after a replica answered where the primary was
 * expected (Sentinel has not switched yet).
 */
static void
schedule_reconnect(void)
{
	struct timeval tv;
	long ms;

	if (queue_cmd != NULL || queue_blk != NULL || shutting_down)
		return;		/* the other link's disconnect will call us */
	/*
	 * Jittered between half and all of the doubling wait ("equal
	 * jitter"): instances that lost Redis together do not come back
	 * together, and a refusing Redis still sees at most one attempt in
	 * half the longest wait, as full jitter would not promise.
	 */
	ms = pace_backoff_ms(++reconnect_failures, RECONNECT_MIN_MS,
	    RECONNECT_MAX_MS, reconnect_floor_ms,
	    0.5 + (double)arc4random() / 4294967296.0 / 2);
	reconnect_floor_ms = 0;
	tv.tv_sec = ms / 1000;
	tv.tv_usec = (ms % 1000) * 1000;
	evtimer_add(reconnect_ev, &tv);
}

/*
 * A refused AUTH, SELECT or SCRIPT LOAD is a failed connection: the link is
 * not up, health says why, and we retry with backoff (the operator may be
 * fixing Redis).  Only the first refusal of an attempt counts: after a
 * refused AUTH every later command is refused too.
 */
void
queue_hello_failed(struct queue_conn *c, const char *what,
    const redisReply *r)
{
	char reason[sizeof(outage_reason)];

	if (queue_failover(r))
		return;		/* LOADING, say: not a refusal of ours */
	if (r != NULL && !queue_setup_failed) {
		/* NOAUTH: Redis wants a password and none was given; every
		 * command meets it, whichever comes first. */
		if (strcmp(what, "AUTH") == 0 ||
		    (r->type == REDIS_REPLY_ERROR &&
		    strncmp(r->str, "NOAUTH", 6) == 0))
			snprintf(reason, sizeof(reason), "redis auth refused");
		else if (strcmp(what, "SELECT") == 0)
			snprintf(reason, sizeof(reason), "redis db refused");
		else
			snprintf(reason, sizeof(reason), "redis refused %s",
			    what);
		outage(reason, queue_reply_error(r));
	}
	setup_refused(c);
}

/* Ends a connection attempt that Redis or a check of ours refused. */
static void
setup_refused(struct queue_conn *c)
{
	queue_setup_failed = 1;
	if (c != NULL && c == queue_cmd)
		link_drop(&queue_cmd);
	else if (c != NULL && c == queue_blk)
		link_drop(&queue_blk);
}

static void
on_setup_reply(struct queue_conn *ac, redisReply *reply, void *priv)
{
	const redisReply *r = reply;

	if (r == NULL)
		return;		/* link lost; the disconnect path retries */
	if (r->type == REDIS_REPLY_ERROR)
		queue_hello_failed(ac, priv, r);
}

static void
on_script_loaded(struct queue_conn *ac, redisReply *reply, void *priv)
{
	const redisReply *r = reply;
	enum script s = (enum script)(intptr_t)priv;

	if (scripts_loading > 0)
		scripts_loading--;
	if (r == NULL)
		return;
	if (r->type != REDIS_REPLY_STRING || r->len != 40) {
		queue_hello_failed(ac, "SCRIPT LOAD", r);
		return;
	}
	memcpy(queue_script_sha[s], r->str, 40);
	queue_script_sha[s][40] = '\0';
}

/*
 * The name every connection of ours gives itself (CLIENT SETNAME), so that
 * CLIENT LIST tells which daemon holds it: usergated:{instance_id}, with
 * what Redis refuses in a name (spaces, control characters) made '_'.
 */
const char *
queue_client_name(void)
{
	static char name[300];
	size_t i;

	snprintf(name, sizeof(name), "usergated:%s", ug.cfg->instance_id);
	for (i = 0; name[i] != '\0'; i++)
		if (name[i] <= ' ' || name[i] > '~')
			name[i] = '_';
	return name;
}

/* Where the configured Redis is (cfg->redis: from url, or host, port and
 * unix_socket), for queue_conn_open; no timeouts. */
void
queue_link_params(struct queue_conn_params *p)
{
	const struct redis_url *to = &ug.cfg->redis;

	memset(p, 0, sizeof(*p));
	p->host = to->host;
	p->port = (unsigned)to->port;
	p->unix_socket = to->path;
	queue_conn_tls_config(p, ug.cfg);
	sentinel_primary_params(p);
	if (moved_host[0] != '\0') {
		p->host = moved_host;
		p->port = moved_port;
		p->unix_socket = NULL;
	}
}

/* The TLS settings as one string, to tell whether a reload changed them. */
static char *
tls_settings(void)
{
	struct queue_conn_params p;
	char *s;

	memset(&p, 0, sizeof(p));
	queue_conn_tls_config(&p, ug.cfg);
	if (asprintf(&s, "%d\n%s\n%s\n%s\n%s", p.tls, p.tls_ca_file,
	    p.tls_cert_file, p.tls_key_file, p.tls_server_name) < 0)
		return NULL;
	return s;
}

/* The address show stats names: host:port ([host]:port for IPv6). */
static void
link_describe(const struct queue_conn_params *p)
{
	if (p->unix_socket != NULL && p->unix_socket[0])
		snprintf(link_address, sizeof(link_address), "%s",
		    p->unix_socket);
	else
		snprintf(link_address, sizeof(link_address),
		    strchr(p->host, ':') ? "[%s]:%u" : "%s:%u", p->host,
		    p->port);
	link_tls = p->tls && !(p->unix_socket != NULL && p->unix_socket[0]);
}

void
queue_link_stats(const char **address, int *tls, double *up_s)
{
	*address = link_address;
	*tls = link_tls;
	*up_s = link_up_since > 0 ? now_monotonic() - link_up_since : -1;
}

/*
 * HELLO's answer (RESP2: a flat array of names and values) tells the
 * server's version without INFO, which a least-privilege user may not
 * run.  Below 6.2 there is no BLMOVE: the link is refused, with backoff,
 * until the operator upgrades.  A server without HELLO is older than 6.0.
 */
static void
on_hello(struct queue_conn *ac, redisReply *reply, void *priv)
{
	const redisReply *r = reply;
	const char *version = NULL, *role = NULL, *mode = NULL, *tag;
	size_t taglen;
	char reason[sizeof(outage_reason)];
	size_t i;

	if (r == NULL || queue_setup_failed)
		return;
	/*
	 * Refused for want of a password: the next command is refused too,
	 * and says so.  Refused by an ACL: warned about once.
	 */
	if (r->type == REDIS_REPLY_ERROR &&
	    strncasecmp(r->str, "ERR unknown command", 19) != 0) {
		if (strncmp(r->str, "NOAUTH", 6) != 0 && !hello_warned) {
			hello_warned = 1;
			log_warn("redis refused HELLO; its version is not "
			    "checked", "error", r->str);
		}
		return;
	}
	for (i = 0; r->type == REDIS_REPLY_ARRAY && i + 1 < r->elements;
	    i += 2) {
		if (r->element[i]->type != REDIS_REPLY_STRING ||
		    r->element[i + 1]->type != REDIS_REPLY_STRING)
			continue;
		if (strcmp(r->element[i]->str, "version") == 0)
			version = r->element[i + 1]->str;
		else if (strcmp(r->element[i]->str, "role") == 0)
			role = r->element[i + 1]->str;
		else if (strcmp(r->element[i]->str, "mode") == 0)
			mode = r->element[i + 1]->str;
	}
	link_cluster = mode != NULL && strcmp(mode, "cluster") == 0;
	if (version != NULL && redis_version_at_least(version, 6, 2) == 0)
		snprintf(reason, sizeof(reason), "redis too old: version %s, "
		    "usergated needs 6.2 or later", version);
	else if (version == NULL && r->type == REDIS_REPLY_ERROR)
		snprintf(reason, sizeof(reason), "redis too old: no HELLO "
		    "(before 6.0), usergated needs 6.2 or later");
	else if (link_cluster &&
	    !redis_hash_tag(ug.cfg->prefix, &tag, &taglen))
		/* Our scripts and transactions span several keys: without a
		 * tag they are refused (CROSSSLOT) or half on another node. */
		snprintf(reason, sizeof(reason), "redis cluster needs a hash "
		    "tag in [redis] prefix, as {usergate}:");
	else {
		if (version != NULL && strcmp(version, version_seen) != 0) {
			snprintf(version_seen, sizeof(version_seen), "%s",
			    version);
			log_info("redis server", "version", version);
		}
		if (role != NULL && ac == queue_cmd)
			role_seen(ac, role);
		return;
	}
	outage(reason, r->type == REDIS_REPLY_ERROR ? r->str : version);
	setup_refused(ac);
}

/*
 * A policy that evicts keys may drop requests, claims or results under
 * memory pressure: warned about once per policy.  A user without CONFIG
 * (NOPERM, as a least-privilege one) is not asked again: each refusal
 * would be an entry in Redis' ACL LOG.
 */
static void
on_maxmemory_policy(struct queue_conn *ac, redisReply *reply, void *priv)
{
	const redisReply *r = reply, *v;

	if (r != NULL && r->type == REDIS_REPLY_ERROR &&
	    strncmp(r->str, "NOPERM", 6) == 0)
		policy_unreadable = 1;
	if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
	    (v = r->element[1])->type != REDIS_REPLY_STRING)
		return;
	if (strcmp(v->str, "noeviction") == 0 ||
	    strcmp(v->str, policy_warned) == 0)
		return;
	snprintf(policy_warned, sizeof(policy_warned), "%s", v->str);
	log_warn("redis may evict keys under memory pressure, and with them "
	    "requests, claims and results; set maxmemory-policy noeviction",
	    "maxmemory_policy", v->str);
}

/*
 * Sends what every new connection sends first: AUTH (with a user name,
 * Redis 6's ACL form; without one, the default user's), CLIENT SETNAME and
 * SELECT as the config asks; the replies go to cb (NULL: ignored).
 * Commands wait until the connection is up.
 */
void
queue_link_hello(struct queue_conn *qc, queue_conn_cb *cb)
{
	struct config *c = ug.cfg;
	const struct redis_url *to = &c->redis;
	char db[16];

	if (c->redis_password != NULL && to->username != NULL)
		queue_send_strings(qc, cb, "AUTH", 3, "AUTH", to->username,
		    c->redis_password);
	else if (c->redis_password != NULL)
		queue_send_strings(qc, cb, "AUTH", 2, "AUTH",
		    c->redis_password);
	queue_send_strings(qc, cb, "CLIENT SETNAME", 3, "CLIENT", "SETNAME",
	    queue_client_name());
	if (to->db != 0) {
		snprintf(db, sizeof(db), "%ld", to->db);
		queue_send_strings(qc, cb, "SELECT", 2, "SELECT", db);
	}
}

/* Opens the connection slot points to. */
static struct queue_conn *
connect_one(struct queue_conn **slot)
{
	struct queue_conn_params p;
	struct queue_conn_events ev = {
		on_connected, on_closed, NULL, slot
	};
	struct queue_conn *qc;
	char err[128];

	queue_link_params(&p);
	p.connect_timeout_ms = CONNECT_TIMEOUT_MS;
	link_describe(&p);
	if ((qc = queue_conn_open(ug.base, &p, &ev, err, sizeof(err))) ==
	    NULL) {
		outage_closed(err, 0);
		return NULL;
	}
	queue_link_hello(qc, on_setup_reply);
	return qc;
}

/*
 * The role HELLO named, first on the command connection (Redis 6.0 and
 * later say it there, so no ROLE, an @admin command that a least-privilege
 * user may not run): a server that is not the primary (Sentinel named it
 * before the switch, or it was demoted since) is left at once and asked
 * for again after a few hundred milliseconds.
 */
static void
role_seen(struct queue_conn *c, const char *role)
{
	char where[300];

	snprintf(link_role, sizeof(link_role), "%s", role);
	if (strcmp(link_role, "master") == 0)
		return;
	queue_link_address(where, sizeof(where));
	/* A Cluster node demoted since its MOVED: ask the way in again. */
	if (link_cluster)
		cluster_forget();
	outage("redis read-only replica", where);
	queue_setup_failed = 1;
	reconnect_floor_ms = REPLICA_RETRY_MS;
	link_drop(&queue_cmd);
}

static void
connect_all(void)
{
	snprintf(link_role, sizeof(link_role), "unknown");
	if (ug.cfg->nsentinels > 0)
		sentinel_resolve();	/* then connect_links */
	else
		connect_links();
}

static void
connect_links(void)
{
	queue_setup_failed = 0;
	cmd_connected = blk_connected = 0;
	free(link_tls_seen);
	link_tls_seen = tls_settings();
	if ((queue_cmd = connect_one(&queue_cmd)) == NULL) {
		schedule_reconnect();
		return;
	}
	/* Before anything that needs 6.2: its reply comes first. */
	queue_send_strings(queue_cmd, on_hello, NULL, 2, "HELLO", "2");
	if (!policy_unreadable)
		queue_send_strings(queue_cmd, on_maxmemory_policy, NULL, 3,
		    "CONFIG", "GET", "maxmemory-policy");
	if ((queue_blk = connect_one(&queue_blk)) == NULL) {
		link_drop(&queue_cmd);
		return;
	}
	queue_blk_client_id = -1;
	queue_send_strings(queue_blk, on_client_id, NULL, 2, "CLIENT", "ID");
	scripts_loading = 0;
	scripts_load();
	queue_instance_check();
}

static void
on_client_id(struct queue_conn *ac, redisReply *reply, void *priv)
{
	const redisReply *r = reply;

	if (r != NULL && r->type == REDIS_REPLY_INTEGER)
		queue_blk_client_id = r->integer;
}

/* ------------------------------------------------------------------ */
/* setup, teardown */

int
queue_connected(void)
{
	return queue_ready;
}

/*
 * A reload: new TLS settings are used on the next connect, so the links
 * are made again at once; so is a link in an outage, whose fix the
 * operator may have just made (a CA file fixed in place, say).  A link
 * that is up with unchanged settings stays: new files under the same
 * names are read when it next reconnects.  A drain is left alone.
 */
void
queue_reconfigure(void)
{
	char *now = tls_settings();
	int changed = now == NULL || link_tls_seen == NULL ||
	    strcmp(now, link_tls_seen) != 0;

	free(now);
	if (shutting_down || ug.draining || (!changed && ug.redis_up))
		return;
	if (changed)
		log_info("redis TLS settings changed; reconnecting");
	reconnect_failures = 0;
	if (queue_cmd != NULL)
		link_drop(&queue_cmd);
	else if (queue_blk != NULL)
		link_drop(&queue_blk);
	else {
		evtimer_del(reconnect_ev);
		connect_all();
	}
}

int
queue_init(const struct queue_events *events)
{
	const char *id = ug.cfg->instance_id;
	struct queue_keys *k = &queue_keys;

	queue_events = events;

	if ((k->requests = queue_key("requests", NULL)) == NULL ||
	    (k->processing = queue_key("processing:", id)) == NULL ||
	    (k->recoveries = queue_key("recoveries", NULL)) == NULL ||
	    (k->instances = queue_key("instances", NULL)) == NULL ||
	    (k->rate = queue_key("rate", NULL)) == NULL ||
	    (k->results = queue_key("results", NULL)) == NULL ||
	    (k->events = queue_key("events", NULL)) == NULL ||
	    (k->dead = queue_key("dead", NULL)) == NULL ||
	    (k->instance = queue_key("instance:", id)) == NULL)
		return -1;
	if ((reconnect_ev = evtimer_new(ug.base, reconnect_cb, NULL)) == NULL ||
	    queue_take_init() != 0 || queue_claim_init() != 0 ||
	    queue_instance_init() != 0 || queue_commit_init() != 0)
		return -1;
	connect_all();
	return 0;
}

void
queue_shutdown(void)
{
	shutting_down = 1;
	if (reconnect_ev)
		event_free(reconnect_ev);
	reconnect_ev = NULL;
	queue_take_shutdown();
	queue_claim_shutdown();
	sentinel_shutdown();
	/* Close at once: pending callbacks run now with NULL replies, while
	 * their owners still exist. */
	if (queue_blk != NULL) {
		struct queue_conn *b = queue_blk;

		queue_blk = NULL;
		queue_conn_close(b);
	}
	if (queue_cmd != NULL) {
		struct queue_conn *c = queue_cmd;

		queue_cmd = NULL;
		queue_conn_close(c);
	}
	queue_instance_shutdown();
	queue_commit_shutdown();
	queue_admin_shutdown();
	free(queue_keys.requests);
	free(queue_keys.processing);
	free(queue_keys.recoveries);
	free(queue_keys.instances);
	free(queue_keys.rate);
	free(queue_keys.results);
	free(queue_keys.events);
	free(queue_keys.dead);
	free(queue_keys.instance);
	free(link_tls_seen);
	link_tls_seen = NULL;
}
