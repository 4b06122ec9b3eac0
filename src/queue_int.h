/*
 * queue_int.h: what the queue_*.c files share, and the only header that
 * includes hiredis (queue_link.c alone adds its libevent adapter, whose
 * functions are static).  No other file includes it: the rest of the
 * daemon speaks to Redis through the queue_* functions of daemon.h.
 *
 * Two connections: `queue_cmd` carries every ordinary command and script, in
 * order, so a claim, a commit and a refresh issued in that order are
 * executed in that order; `queue_blk` carries only the blocking BLMOVE used
 * when the request list is empty, so a long block never delays a result.
 *
 * hiredis' contract: every command callback is called exactly once, with a
 * NULL reply when the connection is lost; the context is freed by hiredis
 * after the disconnect callback, so we forget our pointer there.
 *
 * The files, one concern each:
 *   queue_link.c      connections, setup, script loading, send helpers, key
 *                     names, faults; queue_init and queue_shutdown
 *   queue_take.c      taking requests into our processing list
 *   queue_claim.c     Identity claims, batched per loop iteration
 *   queue_rate.c      the shared rate window
 *   queue_commit.c    the result transaction
 *   queue_instance.c  heartbeat, instance check, takeover, reconcile
 *   queue_admin.c     lengths, queue age, the dead list and its retry
 */
#ifndef USERGATE_QUEUE_INT_H
#define USERGATE_QUEUE_INT_H

#include <hiredis/async.h>
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
	SCRIPT_RECONCILE, SCRIPT_GUARD, SCRIPT_STUB, SCRIPT_HEAD, SCRIPT_COUNT
};
extern const char queue_take_lua[], queue_claim_lua[], queue_rate_lua[];
extern const char queue_takeover_lua[], queue_reconcile_lua[];
extern const char queue_guard_lua[], queue_stub_lua[], queue_head_lua[];
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

/* queue_link.c */
extern redisAsyncContext *queue_cmd;	/* NULL while disconnected */
extern redisAsyncContext *queue_blk;
extern int queue_ready;			/* scripts loaded, registered */
extern int queue_setup_failed;		/* Redis refused this setup */
extern long long queue_blk_client_id;	/* for CLIENT UNBLOCK; -1: unknown */
extern struct queue_keys queue_keys;

/*
 * What Redis refuses us while the link is up, by the operation that met it:
 * a key of the wrong type under our prefix, or any error reply (OOM at
 * maxmemory, say).  Health names the first; each is logged when it appears
 * or changes and once when it is gone, not once per try: every operation
 * here is retried with backoff.
 */
enum fault {
	FAULT_TAKE, FAULT_CLAIM, FAULT_RATE, FAULT_TAKEOVER, FAULT_COMMIT,
	FAULT_COUNT
};
void		 queue_fault_set(enum fault, const char *);
void		 queue_fault_clear(enum fault);
int		 queue_is_noscript(const redisReply *);
const char	*queue_reply_error(const redisReply *);
void		 queue_scripts_reload(void);
void		 queue_refused(enum fault, const redisReply *);
void		 queue_link_up(int);
void		 queue_hello_failed(redisAsyncContext *, const char *,
		    const redisReply *);
char		*queue_key(const char *, const char *);
int		 queue_send_argv(redisAsyncContext *, redisCallbackFn *, void *,
		    int, const char **, const size_t *);
int		 queue_send_strings(redisAsyncContext *, redisCallbackFn *,
		    void *, int, ...);
const char	*queue_client_name(void);
redisContext	*queue_connect_blocking(struct timeval);

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

/* queue_admin.c */
void		 queue_admin_shutdown(void);

#endif
