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
#define AFTER_HANDSHAKE		"redis TLS: closed after the handshake"

static const char *const script_source[SCRIPT_COUNT] = {
	queue_take_lua, queue_claim_lua, queue_rate_lua, queue_takeover_lua,
	queue_reconcile_lua, queue_guard_lua, queue_stub_lua, queue_head_lua,
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
static long reconnect_ms = RECONNECT_MIN_MS;
static char outage_reason[192];	/* non-empty: an outage, logged */
static int scripts_loading;		/* SCRIPT LOADs on the wire */
static int cmd_connected, blk_connected; /* came up since connect_all */
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

static void	 connect_all(void);
static void	 on_client_id(struct queue_conn *, redisReply *, void *);
static void	 on_script_loaded(struct queue_conn *, redisReply *, void *);
static void	 schedule_reconnect(void);
static void	 setup_refused(struct queue_conn *);

static const char *const fault_operation[FAULT_COUNT] = {
	"taking requests", "identity claims", "rate window",
	"recovering processing lists", "result transaction",
};
static char fault_reason[FAULT_COUNT][192];

void
queue_fault_set(enum fault f, const char *error)
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

void
queue_fault_clear(enum fault f)
{
	if (fault_reason[f][0] == '\0')
		return;
	fault_reason[f][0] = '\0';
	log_info("redis accepts our commands again", "operation", fault_operation[f]);
	state_changed();
}

int
queue_is_noscript(const redisReply *r)
{
	return r != NULL && r->type == REDIS_REPLY_ERROR && strncmp(r->str, "NOSCRIPT", 8) == 0;
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
		log_warn("cannot connect to redis, retrying with backoff", "error", error);
	else if (strncmp(reason, "redis TLS", 9) == 0)
		log_error("TLS to redis failed, retrying with backoff", "reason",
		    reason);
	else
		log_error("redis refuses us, retrying with backoff", "reason", reason,
		    "error", error);
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

/* Sends one command as argv; returns -1 when the link is down. */
int
queue_send_argv(struct queue_conn *c, queue_conn_cb *fn, void *priv,
    int argc, const char **argv, const size_t *lens)
{
	return queue_conn_send_argv(c, fn, priv, argc, argv, lens);
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
		log_warn("redis connection lost; requests stay queued, reconnecting");
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
	reconnect_ms = RECONNECT_MIN_MS;
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
	if (!lost)
		outage_closed(reason, 0);
	else if (!queue_ready && !(handshaken &&
	    strncmp(outage_reason, "redis TLS", 9) == 0))
		outage_closed(reason, handshaken);
	link_closed(slot, lost);
}

static void
reconnect_cb(evutil_socket_t fd, short what, void *arg)
{
	if (queue_cmd == NULL && queue_blk == NULL && !shutting_down)
		connect_all();
}

static void
schedule_reconnect(void)
{
	struct timeval tv;

	if (queue_cmd != NULL || queue_blk != NULL || shutting_down)
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
void
queue_hello_failed(struct queue_conn *c, const char *what,
    const redisReply *r)
{
	char reason[sizeof(outage_reason)];

	if (r != NULL && !queue_setup_failed) {
		if (strcmp(what, "AUTH") == 0)
			snprintf(reason, sizeof(reason), "redis auth refused");
		else if (strcmp(what, "SELECT") == 0)
			snprintf(reason, sizeof(reason), "redis db refused");
		else
			snprintf(reason, sizeof(reason), "redis refused %s", what);
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
	queue_link_tls(p);
}

/* The [redis] tls_* keys into p (config_redis_tls says when TLS is on). */
void
queue_link_tls(struct queue_conn_params *p)
{
	struct config *c = ug.cfg;

	p->tls = config_redis_tls(c);
	p->tls_ca_file = c->redis_tls_ca_file;
	p->tls_cert_file = c->redis_tls_cert_file;
	p->tls_key_file = c->redis_tls_key_file;
	p->tls_server_name = c->redis_tls_server_name;
}

/* The TLS settings as one string, to tell whether a reload changed them. */
static char *
tls_settings(void)
{
	struct queue_conn_params p;
	char *s;

	memset(&p, 0, sizeof(p));
	queue_link_tls(&p);
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
	const char *version = NULL;
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
	    i += 2)
		if (r->element[i]->type == REDIS_REPLY_STRING &&
		    strcmp(r->element[i]->str, "version") == 0 &&
		    r->element[i + 1]->type == REDIS_REPLY_STRING)
			version = r->element[i + 1]->str;
	if (version != NULL && redis_version_at_least(version, 6, 2) == 0)
		snprintf(reason, sizeof(reason), "redis too old: version %s, "
		    "usergated needs 6.2 or later", version);
	else if (version == NULL && r->type == REDIS_REPLY_ERROR)
		snprintf(reason, sizeof(reason), "redis too old: no HELLO "
		    "(before 6.0), usergated needs 6.2 or later");
	else {
		if (version != NULL && strcmp(version, version_seen) != 0) {
			snprintf(version_seen, sizeof(version_seen), "%s",
			    version);
			log_info("redis server", "version", version);
		}
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
	if ((qc = queue_conn_open(ug.base, &p, &ev, err, sizeof(err))) == NULL) {
		outage_closed(err, 0);
		return NULL;
	}
	queue_link_hello(qc, on_setup_reply);
	return qc;
}

static void
connect_all(void)
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
	reconnect_ms = RECONNECT_MIN_MS;
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
