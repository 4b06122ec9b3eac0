/*
 * queue_int.h: what the queue_*.c files share, and the only header that
 * includes hiredis (for its reply type, parser and command formatter; the
 * connections are queue_conn.c's own).  No other file includes it: the rest
 * of the daemon speaks to Redis through the queue_* functions of daemon.h.
 *
 * Two connections: `queue_cmd` carries every ordinary command and script, in
 * order, so a claim, a commit and a refresh issued in that order are
 * executed in that order; `queue_blk` carries only the blocking BLMOVE used
 * when the request list is empty, so a long block never delays a result.
 *
 * queue_conn.c's contract (hiredis' async one): every command callback is
 * called exactly once, with a NULL reply when the connection is lost; the
 * connection is freed after its `closed` callback, so we forget our pointer
 * there.
 *
 * The files, one concern each:
 *   queue_link.c      connections, setup, script loading, send helpers, key
 *                     names, faults; queue_init and queue_shutdown
 *   queue_conn.c      one connection: TCP, Unix socket or TLS on libevent
 *   queue_take.c      taking requests into our processing list
 *   queue_claim.c     Identity claims, batched per loop iteration
 *   queue_rate.c      the shared rate window
 *   queue_commit.c    results: batching them, the result transaction
 *   queue_instance.c  heartbeat, instance check, takeover, reconcile
 *   queue_admin.c     lengths, queue age, the dead list and its retry
 */
#ifndef USERGATE_QUEUE_INT_H
#define USERGATE_QUEUE_INT_H

#include <hiredis/hiredis.h>

#include "daemon.h"

#define HEARTBEAT_TTL_S		15
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

/* The scripts, each defined next to the code that calls it (queue_*.c),
 * loaded by queue_link.c on every connection. */
enum script {
	SCRIPT_TAKE, SCRIPT_CLAIM, SCRIPT_RATE, SCRIPT_TAKEOVER,
	SCRIPT_RECONCILE, SCRIPT_GUARD, SCRIPT_STUB, SCRIPT_HEAD,
	SCRIPT_RATE_USED, SCRIPT_COUNT
};
extern const char queue_take_lua[], queue_claim_lua[], queue_rate_lua[];
extern const char queue_takeover_lua[], queue_reconcile_lua[];
extern const char queue_guard_lua[], queue_stub_lua[], queue_head_lua[];
extern const char queue_rate_used_lua[];
extern char queue_script_sha[SCRIPT_COUNT][41];

/*
 * What a caller of a queue_* function asked to be told when the reply
 * comes: its callback (of the type that function takes) and argument.
 * Called exactly once, then freed.
 */
struct queue_call {
	union {
		queue_done_cb		*done;
		queue_claim_cb		*claim;
		queue_rate_cb		*rate;
		queue_count_cb		*count;
		queue_lengths_cb	*lengths;
		queue_lines_cb		*lines;
	} cb;
	void	*arg;
};

/* Key names, built once from the prefix by queue_init. */
struct queue_keys {
	char	*requests, *processing, *recoveries, *instances, *rate;
	char	*results, *events, *dead, *instance;
};

/*
 * queue_conn.c: one connection to Redis, driven on our libevent loop
 * (bufferevent_socket for TCP and Unix sockets, bufferevent_openssl for
 * TLS); hiredis only formats the commands and parses the replies.  Its
 * contract is hiredis' async one: commands may be sent before the
 * connection is up, and every command callback is called exactly once,
 * in order, with a NULL reply when the connection is lost or closed.  A
 * lost connection (any close: an error, EOF, a timeout) calls the pending
 * callbacks with NULL, then `closed` with the reason, then frees the
 * connection; the owner forgets its pointer there and reconnects.  A
 * connection the owner closes calls the pending callbacks with NULL but
 * not `closed`.  Replies are freed when the callback returns.
 *
 * Pub/sub: after a SUBSCRIBE or PSUBSCRIBE the messages Redis pushes go to
 * `message`; a (P)SUBSCRIBE or (P)UNSUBSCRIBE callback is called once, with
 * the confirmation of its first channel.  (P)UNSUBSCRIBE must name its
 * channels: how many confirmations answer it is known only then.
 *
 * Errors (refused connections, TLS verification, timeouts) reach `closed`
 * as text, after queue_conn_open has returned; it returns NULL only when
 * out of memory, with the reason in its buffer.
 */
struct event_base;
struct queue_conn;
typedef void	queue_conn_cb(struct queue_conn *, redisReply *, void *);

struct queue_conn_params {
	const char	*host;		/* TCP, unless unix_socket is set */
	unsigned	 port;
	const char	*unix_socket;
	int		 tls;
	const char	*tls_ca_file;	/* NULL: the system's store */
	const char	*tls_cert_file;	/* with the key: mutual TLS */
	const char	*tls_key_file;
	const char	*tls_server_name; /* checked, and SNI; NULL: host */
	long		 connect_timeout_ms; /* to the TLS handshake; 0: none */
	long		 command_timeout_ms; /* a reply due so long; 0: none */
};

struct queue_conn_events {
	void	(*connected)(struct queue_conn *, void *);	/* or NULL */
	void	(*closed)(struct queue_conn *, const char *, void *);
	void	(*message)(struct queue_conn *, redisReply *, void *);
	void	*arg;
};

struct queue_conn *queue_conn_open(struct event_base *,
		    const struct queue_conn_params *,
		    const struct queue_conn_events *, char *, size_t);
int		 queue_conn_send_argv(struct queue_conn *, queue_conn_cb *,
		    void *, int, const char **, const size_t *);
void		 queue_conn_close(struct queue_conn *);
/* The [redis] tls_* keys of cfg into p (config_redis_tls says when TLS is
 * on): the daemon's link and usergatectl's import connect alike. */
void		 queue_conn_tls_config(struct queue_conn_params *,
		    const struct config *);
/* A Sentinel's answer to get-master-addr-by-name into host and port: 0,
 * or -1 when it names no primary (nil, or not a host and a port). */
int		 queue_conn_primary(const redisReply *, char *, size_t,
		    unsigned *);
int		 queue_conn_is_up(const struct queue_conn *);
size_t		 queue_conn_pending(const struct queue_conn *);

/* queue_link.c */
extern struct queue_conn *queue_cmd;	/* NULL while disconnected */
extern struct queue_conn *queue_blk;
extern int queue_ready;			/* scripts loaded, registered */
extern int queue_setup_failed;		/* Redis refused this setup */
extern long long queue_blk_client_id;	/* for CLIENT UNBLOCK; -1: unknown */
extern struct queue_keys queue_keys;
extern const struct queue_events *queue_events;	/* queue_init's */

/*
 * What Redis refuses us while the link is up, by the operation that met it:
 * a key of the wrong type under our prefix, or any error reply (OOM at
 * maxmemory, say).  Health names the first; each is logged when it appears
 * or changes and once when it is gone, not once per try: every operation
 * here is retried with backoff.
 */
enum fault {
	FAULT_TAKE, FAULT_CLAIM, FAULT_RATE, FAULT_TAKEOVER, FAULT_COMMIT,
	FAULT_DURABLE, FAULT_COUNT
};
void		 queue_fault_set(enum fault, const char *);
void		 queue_fault_clear(enum fault);
int		 queue_is_noscript(const redisReply *);
const char	*queue_reply_error(const redisReply *);
void		 queue_scripts_reload(void);
void		 queue_refused(enum fault, const redisReply *);
void		 queue_link_up(int);
void		 queue_hello_failed(struct queue_conn *, const char *,
		    const redisReply *);
void		 queue_link_params(struct queue_conn_params *);
void		 queue_link_hello(struct queue_conn *, queue_conn_cb *);
int		 queue_failover(const redisReply *);
int		 queue_durable_send(queue_conn_cb *, void *);
int		 queue_durable_confirmed(const redisReply *, queue_conn_cb *,
		    void *);
void		 queue_link_address(char *, size_t);
char		*queue_key(const char *, const char *);
int		 queue_send_argv(struct queue_conn *, queue_conn_cb *, void *,
		    int, const char **, const size_t *);
int		 queue_send_strings(struct queue_conn *, queue_conn_cb *,
		    void *, int, ...);
const char	*queue_client_name(void);

/* queue_take.c */
extern int queue_take_outstanding;
extern int queue_block_outstanding;
int		 queue_take_init(void);
void		 queue_take_shutdown(void);
int		 queue_take_answered(const redisReply *, int);
void		 queue_intake_reset(void);

/* queue_claim.c */
int		 queue_claim_init(void);
void		 queue_claim_shutdown(void);

/* queue_instance.c */
extern int queue_registered_once;	/* own processing list recovered */
extern int queue_reconcile_pending;	/* processing list to reconcile */
int		 queue_instance_init(void);
void		 queue_instance_shutdown(void);
void		 queue_instance_check(void);
void		 queue_heartbeat_value(char *, size_t);
int		 queue_reconcile_send(void);

/* queue_commit.c */
int		 queue_commit_init(void);
void		 queue_commit_resume(void);
void		 queue_commit_shutdown(void);

/* queue_admin.c */
void		 queue_admin_shutdown(void);

/* queue_rate.c: asks how much of the rate window is used (for stats). */
void		 queue_rate_count(void);

#endif
