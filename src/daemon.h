/*
 * daemon.h: the running daemon's shared state and the prototypes of the
 * files that do I/O.  The pure modules are in usergate.h.
 *
 * Everything runs on one libevent loop in one thread; nothing here is
 * locked because nothing is shared with another thread.
 */
#ifndef USERGATE_DAEMON_H
#define USERGATE_DAEMON_H

#include <sys/queue.h>

#include "usergate.h"

struct bufferevent;
struct event;
struct evconnlistener;
struct job;
struct intake_conn;

/* ------------------------------------------------------------------ */
/* stats.c: counters and gauges declared once (X-macros), rendered
 * everywhere. */

/* name, help text */
#define STATS_COUNTERS(X)						\
	X(received, "Requests taken from Redis or the request socket")	\
	X(invalid, "Results with status invalid")			\
	X(duplicate, "Results with status duplicate")			\
	X(created, "Results with status created")			\
	X(exists, "Results with status exists")				\
	X(updated, "Results with status updated")			\
	X(failed, "Results with status failed")				\
	X(retries, "HTTP attempts beyond a request's first")		\
	X(http_requests, "HTTP requests sent to Twilio")		\
	X(recovered,							\
	    "Requests taken back from a processing list after a crash")	\
	X(rate_limited, "429 answers from Twilio")			\
	X(dead_dropped, "Oldest dead entries dropped to keep dead_max")	\
	X(failovers,							\
	    "Times Sentinel or Cluster's MOVED named a new Redis primary") \
	X(redis_reconnects,						\
	    "Times the Redis link came up again after a loss")

struct stats {
#define STATS_FIELD(name, help) unsigned long long name;
	STATS_COUNTERS(STATS_FIELD)
#undef STATS_FIELD
};

/* Histogram buckets (seconds) fit 1 ms .. 30 s. */
#define STATS_BUCKETS 14
struct histogram {
	unsigned long long	 counts[STATS_BUCKETS + 1];	/* last: +Inf */
	unsigned long long	 count;
	double			 sum;
};

extern struct stats stats;
extern struct histogram stats_twilio_seconds;
extern struct histogram stats_result_seconds;

void		 stats_observe(struct histogram *h, double seconds);
/*
 * Live values that are not counters, gathered by the caller: name, C type,
 * how `show stats` renders it (stats.c's gauge_json_KIND), in the order of
 * `show stats`, which puts them before the counters; then how `show
 * metrics` exports it (stats.c's gauge_prom_KIND, NONE: not exported), its
 * place among the Prometheus gauges (which keep an order of their own),
 * and its Prometheus name (after "usergate_") and help.  HTTP: exported
 * by GET /metrics only, as `show metrics` is kept as it was.
 */
#define STATS_GAUGES(X)							\
	X(version, const char *, STRING, NONE, 0, "", "")		\
	X(uptime_s, double, INTEGER, VALUE, 9, "uptime_seconds",	\
	    "Seconds since start")					\
	X(instance_id, const char *, STRING, NONE, 0, "", "")		\
	X(health, const char *, STRING, OK, 1, "healthy",		\
	    "1 when health is ok, 0 when degraded")			\
	X(redis_connected, int, BOOLEAN, VALUE, 2, "redis_connected",	\
	    "1 while Redis is connected")				\
	X(redis_role, const char *, STRING, NONE, 0, "", "")		\
	X(paused, int, BOOLEAN, VALUE, 3, "paused",			\
	    "1 while intake is paused by an operator")			\
	X(inflight, long, INTEGER, VALUE, 4, "inflight",		\
	    "Twilio requests in flight from this instance")		\
	X(max_inflight, long, INTEGER, VALUE, 5, "max_inflight",	\
	    "Configured bound on concurrent Twilio requests")		\
	X(queue_depth, long long, LENGTH, LENGTH, 6, "queue_depth",	\
	    "Length of the request list")				\
	X(processing, long long, LENGTH, LENGTH, 7, "processing",	\
	    "Length of this instance's processing list")		\
	X(dead, long long, LENGTH, LENGTH, 8, "dead",			\
	    "Length of the dead list")					\
	X(redis_address, const char *, STRING, INFO, 10, "redis_info",	\
	    "The Redis address in use, as a label; always 1")		\
	X(redis_tls, int, BOOLEAN, VALUE, 11, "redis_tls",		\
	    "1 when the Redis link uses TLS")				\
	X(redis_up_s, long long, LENGTH, LENGTH, 12, "redis_up_seconds", \
	    "Seconds since the Redis link came up (absent while down)") \
	X(window, long, INTEGER, HTTP, 13, "concurrency_window",	\
	    "Twilio requests the AIMD window allows at once")		\
	X(rate_window_used, long long, LENGTH, HTTP_LENGTH, 14,	\
	    "rate_window_used",						\
	    "Creates granted in the last rate window, all instances")	\
	X(rate_window_limit, long, INTEGER, HTTP, 15, "rate_window_limit", \
	    "Creates the rate window allows (rate_limit x rate_window_s)") \
	X(rate_window_s, long, INTEGER, HTTP, 16, "rate_window_seconds", \
	    "Length of the shared rate window")
/* The last place of a Prometheus gauge in STATS_GAUGES. */
#define STATS_GAUGE_PLACES	16

struct stats_gauges {
#define STATS_GAUGE_FIELD(name, type, kind, prom, place, pname, help) \
	type name;
	STATS_GAUGES(STATS_GAUGE_FIELD)
#undef STATS_GAUGE_FIELD
};
/* JSON object of `show stats` (caller frees). */
json_t		*stats_json(const struct stats_gauges *g);
/* Prometheus text exposition of `show metrics` (malloc'd). */
char		*stats_prometheus(const struct stats_gauges *g);
/*
 * The same for GET /metrics (malloc'd): the result statuses as one family,
 * usergate_requests_total{status="..."}, and the gauges of kind HTTP too.
 * `show metrics` keeps its older form byte for byte.
 */
char		*stats_metrics(const struct stats_gauges *g);
/* Logs every counter in one info line ("msg=stats received=... ..."). */
void		 stats_log(void);
/* Names of the counters, in declaration order (for tests). */
const char	*const *stats_counter_names(size_t *count);
/* Names of the gauges, in declaration order (for tests). */
const char	*const *stats_gauge_names(size_t *count);

/* ------------------------------------------------------------------ */
/* clock.c */

/* Seconds on CLOCK_MONOTONIC, for durations and deadlines. */
double		 now_monotonic(void);
/* Seconds since the epoch, for the timestamps results carry. */
double		 now_wall(void);

/* ------------------------------------------------------------------ */
/* state.c: process-wide state, read and written by every file. */

struct daemon {
	struct event_base	*base;
	struct config		*cfg;
	double			 started;	/* monotonic seconds */
	int			 paused;	/* operator said pause */
	int			 draining;	/* SIGTERM seen */
	/* non-empty: Twilio refused us */
	char			 auth_reason[128];
	int			 redis_up;
	long			 window;	/* job.c's AIMD window */
};
extern struct daemon ug;

/*
 * What state.c asks of the files above it, registered by main.c at start
 * (before any other part is set up), so that the shared state calls no
 * adapter and no adapter calls main.c.
 */
struct state_hooks {
	/* Report the state (main.c: sd_notify's STATUS= line). */
	void		(*changed)(void);
	/* Why Redis does not serve us well (queue_problem), or NULL. */
	const char	*(*redis_problem)(void);
};
void		 state_init(const struct state_hooks *hooks);
/* Something the health or the STATUS= line shows has changed. */
void		 state_changed(void);
/* "ok" or "degraded: REASON" into buf. */
const char	*daemon_health(char *buf, size_t size);

/* ------------------------------------------------------------------ */
/* job.c: every state of a request and every transition. */

/*
 * A request taken from Redis, already in our processing list (the queue
 * adapter's taken event): job.c owns the raw bytes from then on.
 */
void		 job_take(char *raw, size_t len, long recoveries);
/*
 * A request read from the request socket, parsed once by intake.c (with
 * the ReplyTo scope, as job_take parses) and pushed to our processing
 * list.  The intake event hands over raw, request_id and req.
 */
struct socket_request {
	char			*raw;
	size_t			 len;
	char			*request_id;	/* the request's, or fresh */
	struct request		 req;
	enum request_error	 err;
	char			 errmsg[256];
};
/* The request socket's taken event: the job of a socket request, answered
 * to conn when it is not NULL. */
void		 job_take_socket(struct socket_request *r,
		    struct intake_conn *conn);
/* A fresh unique request id (32 hex digits, malloc'd). */
char		*job_new_request_id(void);
/* Jobs alive in memory: at most max_inflight + min(3 × max_inflight, 192)
 * (job.c, HELD_EXTRA_PER_SLOT and HELD_EXTRA_MAX). */
long		 job_count(void);
/* Seconds since the oldest job in memory was taken (0 when none); part of
 * show queue's oldest_age_s. */
double		 job_oldest_age(void);
/*
 * The intake pump, the one place that lets requests in: takes from Redis
 * as much as there is room for (queue_take), nothing while paused,
 * draining or refused by Twilio, and lets throttled socket clients read
 * on.  Run wherever the room or those states may have changed.
 */
void		 job_pump(void);
/* A socket client went away: its jobs finish but answer nobody. */
void		 job_forget_conn(struct intake_conn *conn);
/* The Redis link came up (results and rate calls resume, intake pumps)
 * or went down. */
void		 job_redis_changed(int up);
/* The requests our jobs hold (at most max), for reconciling the processing
 * list; returns how many. */
size_t		 job_held(const char **raws, size_t *lens, size_t max);
/* Refreshes the TTL of the identity claims this instance holds. */
void		 job_refresh_claims(void);
/* Periodic upkeep (called every second). */
void		 job_tick(void);
/*
 * What job.c asks of main.c, registered at job_init so that the
 * orchestrator never names the wiring above it.
 */
struct job_hooks {
	/* A drain finished its last job: the daemon may stop. */
	void		(*drained)(void);
};
void		 job_init(const struct job_hooks *hooks);
void		 job_shutdown(void);
/* Frees every job without writing results (final exit). */
void		 job_abandon_all(void);
/* Config reloaded: pick up new limits. */
void		 job_reconfigure(void);

/* ------------------------------------------------------------------ */
/* queue_*.c: the only hiredis users (queue_int.h says which does what). */

/* What became of a result handed over with queue_commit_add. */
enum commit_progress {
	COMMIT_SENT,		/* in a result transaction on the wire */
	COMMIT_WAITING,		/* back in line: that transaction failed */
	COMMIT_WRITTEN,		/* in Redis; the last call for the item */
};
typedef void	 queue_commit_cb(enum commit_progress progress, void *arg);

/* Result of one finished job, as the result transaction writes it. */
struct commit_item {
	const char	*raw;		/* element to remove from processing */
	size_t		 rawlen;
	const char	*identity;	/* NULL: request had none */
	const char	*result;	/* encoded result message */
	size_t		 resultlen;
	const char	*record;	/* encoded user record, or NULL */
	size_t		 recordlen;
	const char	*reply_to;	/* NULL: none */
	const char	*dead;		/* encoded {request, result}, or NULL */
	size_t		 deadlen;
	int		 identity_done;	/* SET identity done EX ttl */
	int		 identity_release; /* DEL identity (failed) */
	int		 recovered;	/* HDEL recoveries raw */
	int		 in_processing;	/* LREM from processing */

	/* queue_commit.c's, from queue_commit_add until COMMIT_WRITTEN */
	TAILQ_ENTRY(commit_item) link;
	queue_commit_cb	*cb;
	void		*arg;
};

enum claim_outcome {
	CLAIM_ERROR = 0,	/* Redis unavailable; try again later */
	CLAIM_OWNED,		/* we hold the identity: call Twilio */
	CLAIM_DONE,		/* completed before: record given */
	CLAIM_PENDING,		/* another instance is on it */
	/* a key of it has the wrong type: record names it */
	CLAIM_REFUSED,
};

typedef void	 queue_claim_cb(enum claim_outcome outcome, const char *record,
		    size_t recordlen, void *arg);
typedef void	 queue_done_cb(int ok, void *arg);
typedef void	 queue_rate_cb(long granted, long wait_ms, void *arg);
typedef void	 queue_count_cb(long long value, void *arg);
typedef void	 queue_lengths_cb(int ok, long long requests,
		    long long processing, long long dead, double oldest_age_s,
		    void *arg);
typedef void	 queue_lines_cb(int ok, char **lines, size_t n, void *arg);

/*
 * What the queue adapter reports to the rest of the daemon, registered by
 * main.c at queue_init: the adapter never names the files above it.
 */
struct queue_events {
	/* A request taken into our processing list (raw is malloc'd and
	 * the receiver's), with how often it was recovered after a crash. */
	void		(*taken)(char *raw, size_t len, long recoveries);
	/* A take ended, or requests may wait again: queue_take may be
	 * called again. */
	void		(*ready)(void);
	/* The link came up (1) or went down (0). */
	void		(*link)(int up);
	/* The heartbeat: the TTL of the identity claims held is due for a
	 * refresh (queue_refresh_claims). */
	void		(*heartbeat)(void);
	/* The requests held in memory, for reconciling our processing list:
	 * how many, and which (at most max; returns how many). */
	long		(*held_count)(void);
	size_t		(*held)(const char **raws, size_t *lens, size_t max);
	/* Seconds since the oldest request held was taken (0 when none). */
	double		(*oldest_age)(void);
	/* Another live daemon holds our instance_id: we must exit. */
	void		(*instance_lost)(void);
};
int		 queue_init(const struct queue_events *events);
int		 queue_connected(void);
/* Config reloaded: new Redis TLS settings (or an outage) reconnect now. */
void		 queue_reconfigure(void);
/*
 * For show stats: the Redis address in use (host:port or a socket's
 * path), whether it is TLS, and the seconds since the link came up (-1
 * while it is down).
 */
void		 queue_link_stats(const char **address, int *tls, double *up_s);
/*
 * Takes up to room requests into our processing list, each reported as
 * taken, then ready once the take ended; nothing while a take is on its
 * way, during the backoff after an error reply or once intake stopped.
 * Whether to take at all (paused, draining, refused by Twilio) is the
 * caller's: the adapter never asks.
 */
void		 queue_take(long room);
int		 queue_claim(const char *identity, queue_claim_cb *cb,
		    void *arg);
int		 queue_rate_acquire(long want, queue_rate_cb *cb, void *arg);
/*
 * Hands a finished job's result over, once.  Results are written in the
 * order handed over, batched per loop iteration in transactions of up to
 * 64 (8 on the wire at once), and written again, with backoff, until Redis
 * takes them (at least once).  cb tells the item's progress; the item and
 * what it points to stay as they are until COMMIT_WRITTEN.
 */
void		 queue_commit_add(struct commit_item *item, queue_commit_cb *cb,
		    void *arg);
/* LPUSH a socket request to our processing list before acknowledging it. */
int		 queue_push_processing(const char *raw, size_t len,
		    queue_done_cb *cb, void *arg);
void		 queue_refresh_claims(const char *const *identities, size_t n);
int		 queue_lengths(queue_lengths_cb *cb, void *arg);
int		 queue_dead_list(long n, queue_lines_cb *cb, void *arg);
int		 queue_dead_retry(long n, queue_count_cb *cb, void *arg);
void		 queue_stop_intake(void);
void		 queue_unblock(void);
/* A take or a BLMOVE is in flight (requests may still arrive from it). */
int		 queue_intake_busy(void);
void		 queue_shutdown(void);
/* Last known lengths, refreshed each second, for STATUS= and stats. */
/* Why Redis does not serve us well (for health), or NULL. */
const char	*queue_problem(void);
const char	*queue_role(void);	/* what ROLE said: master, unknown.. */
void		 queue_last_lengths(long long *requests, long long *processing,
		    long long *dead);
/* Creates granted in the last rate window (all instances), or -1. */
long long	 queue_last_rate_used(void);

/* ------------------------------------------------------------------ */
/* http.c: the only libcurl user. */

struct http_result {
	/* HTTP status, 0 on transport failure */
	long		 status;
	long		 retry_after_ms; /* -1 when absent */
	const char	*body;
	size_t		 len;
	int		 tls_failure;	/* peer could not be verified */
	/* no descriptor for a socket: not sent */
	int		 out_of_fds;
	const char	*error;		/* transport error text, or NULL */
	double		 seconds;	/* time taken */
};
typedef void	 http_done_cb(const struct http_result *res, void *arg);

int		 http_init(void);
/* Applies timeouts, credentials and CA from ug.cfg (at start and reload). */
void		 http_configure(void);
/* A GET when body is NULL, else a form POST; webhook -1/0/1. */
int		 http_send(const char *url, const char *body, int webhook,
		    http_done_cb *cb, void *arg);
long		 http_inflight(void);
void		 http_shutdown(void);

/* ------------------------------------------------------------------ */
/* listen.c: the Unix sockets' listeners. */

/* Binds a Unix stream socket with mode, replacing a stale one and refusing
 * one a live daemon owns: the listening fd, or -1 (logged). */
int		 unix_listen(const char *path, long mode, const char *what);
/*
 * A listening socket (unix_listen) on the event loop.  When accept fails
 * (out of descriptors: EMFILE, ENFILE) accepting pauses for a second
 * instead of failing again at once, with one log line per episode.
 */
typedef void (*socket_accept_cb)(int fd);
struct socket_listener {
	struct evconnlistener	*lev;
	struct event		*resume;	/* re-enables accepting */
	socket_accept_cb	 accepted;
	const char		*what;
	int			 failing;	/* an episode was logged */
};
int		 socket_listener_open(struct socket_listener *sl,
		    const char *path, long mode, const char *what,
		    socket_accept_cb accepted);
void		 socket_listener_close(struct socket_listener *sl);
/*
 * The connection skeleton both sockets share.  Each file's connection
 * embeds a struct listen_conn (its protocol's state beside it); the
 * listen_socket holds the listener and the open connections.  A
 * connection is freed (release) only when it is closed AND no pending
 * reply holds a reference to it, so a reply that comes back after the
 * client left finds it still there, marked closed.
 */
struct listen_conn;
typedef void	 listen_conn_cb(struct listen_conn *lc);
typedef void	 listen_data_cb(struct bufferevent *bev, void *arg);
typedef void	 listen_event_cb(struct bufferevent *bev, short what,
		    void *arg);
struct listen_socket {
	struct socket_listener	 listener;
	TAILQ_HEAD(, listen_conn) conns;
	long			 nconns;
	int			 full;		/* the limit was logged */
	listen_conn_cb		*closing;	/* before the socket goes */
	listen_conn_cb		*release;	/* frees the connection */
};
struct listen_conn {
	TAILQ_ENTRY(listen_conn) link;
	struct listen_socket	*ls;
	struct bufferevent	*bev;		/* NULL once closed */
	int			 refs;		/* pending replies */
	int			 closed;	/* socket gone or closing */
	int			 eof;		/* client shut its writing */
};
/* The struct embedding lc as its member named field. */
#define LISTEN_CONN(lc, type, field)					\
	((type *)(void *)((char *)(lc) - offsetof(type, field)))

/* Listens on path; closing (may be NULL) and release as described above. */
int		 listen_socket_open(struct listen_socket *ls, const char *path,
		    long mode, const char *what, socket_accept_cb accepted,
		    listen_conn_cb *closing, listen_conn_cb *release);
/* Stops accepting and removes the socket file at path; the connections are
 * closed, or with keep only stop being read (they go once answered). */
void		 listen_socket_shutdown(struct listen_socket *ls,
		    const char *path, int keep);
/* At limit connections: 1, and warning (if not NULL) logged once until
 * a connection is let in again. */
int		 listen_socket_full(struct listen_socket *ls, long limit,
		    const char *warning);
/*
 * Sets up an accepted client on ls: its bufferevent closes fd when freed,
 * idle_s without progress reading or writing is a timeout (eventcb), and
 * writecb runs when the output drains to output_low.  Not enabled yet.
 * -1, with fd closed, when it cannot be made.
 */
int		 listen_conn_open(struct listen_socket *ls,
		    struct listen_conn *lc, int fd, long idle_s,
		    size_t output_low, listen_data_cb *readcb,
		    listen_data_cb *writecb, listen_event_cb *eventcb,
		    void *arg);
void		 listen_conn_ref(struct listen_conn *lc);
void		 listen_conn_unref(struct listen_conn *lc);
void		 listen_conn_close(struct listen_conn *lc);
/* Closes lc if all it was sent is written out (once more is pending, the
 * writecb at the low mark is the time to ask again). */
void		 listen_conn_close_drained(struct listen_conn *lc);
/* Descriptors the clients of the two sockets may hold together: the soft
 * RLIMIT_NOFILE less what Twilio, Redis and the daemon itself need. */
long		 socket_fd_budget(void);

/* ------------------------------------------------------------------ */
/* intake.c: the request socket. */

/*
 * What the request socket reports, registered by main.c at intake_init:
 * the adapter never names the files above it.
 */
struct intake_events {
	/* A request is in our processing list: r's raw, request_id and req
	 * are the receiver's now; conn is NULL when nobody waits for the
	 * result. */
	void		(*taken)(struct socket_request *r,
			    struct intake_conn *conn);
	/* A client went away: what it asked finishes but answers nobody. */
	void		(*gone)(struct intake_conn *conn);
	/* A fresh unique request id (malloc'd), for a request without one. */
	char		*(*new_request_id)(void);
};
int		 intake_init(const struct intake_events *events);
void		 intake_answer(struct intake_conn *conn, const json_t *result);
/* The room there is for more requests, told by the orchestrator whenever
 * it changes: the pushes on their way count against it here. */
void		 intake_room(long room);
/* Stop or resume reading sockets (backpressure): resuming reads the
 * throttled clients again while there is room. */
void		 intake_throttle(int stop);
void		 intake_shutdown(void);

/* ------------------------------------------------------------------ */
/* status.c: the status socket. */

/* Operators' connections at once; the rest are closed at once. */
#define STATUS_CONN_MAX		64

/* What the status socket's commands ask of the rest of the daemon,
 * registered by main.c at status_init. */
struct status_hooks {
	/* reload: as SIGHUP; 0, or -1 with the reason in err. */
	int		(*reload)(char *err, size_t errlen);
	/* resume: ug.paused was cleared, requests may be taken again. */
	void		(*resumed)(void);
};
int		 status_init(const struct status_hooks *hooks);
void		 status_shutdown(void);
/*
 * Gathers the gauges of show stats, the list lengths read fresh from Redis
 * (-1 when it is down), and calls done with them, now or later; -1 when
 * out of memory (done is not called).
 */
int		 status_gauges(void (*done)(const struct stats_gauges *g,
		    void *arg), void *arg);

/* ------------------------------------------------------------------ */
/* metrics.c: GET /metrics and /healthz over HTTP ([metrics] listen). */

/* What metrics.c renders, registered by main.c at metrics_init. */
struct metrics_hooks {
	/* As status_gauges. */
	int		(*gauges)(void (*done)(const struct stats_gauges *g,
			    void *arg), void *arg);
};
/* Listens on [metrics] listen, if set; -1 (logged) when it cannot. */
int		 metrics_init(const struct metrics_hooks *hooks);
void		 metrics_shutdown(void);

#endif /* USERGATE_DAEMON_H */
