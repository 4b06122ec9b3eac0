/*
 * usergatectl's own files (ctl_*.c): the backfill (`import`) and the live
 * view (`top`).  usergatectl.c parses the command line and calls in here.
 *
 * An import reads its input, validates every line with the daemon's own
 * rules (request_parse), and hands each good line to a sink: the request
 * socket (ctl_sink_socket.c) or Redis itself (ctl_sink_redis.c, with the
 * daemon's config file as the import read it).  The sink gives each
 * result back, by RequestId, to the import, which keeps the window of
 * unanswered requests bounded.
 * Both sinks run on one libevent loop owned by ctl_import.c.
 */
#ifndef USERGATECTL_H
#define USERGATECTL_H

#include <stddef.h>

#include <jansson.h>

struct config;
struct event_base;
struct ctl_sink;

/* What a sink reports to the import.  Each callback runs on the loop. */
struct ctl_sink_events {
	/* The sink can take requests (connected, authenticated). */
	void	(*ready)(void *arg);
	/*
	 * One result, decoded to JSON whatever the deployment's results
	 * format (the map of docs/protocol.md section 3; the callee keeps
	 * no reference beyond the call).  request_id is its "request_id".
	 */
	void	(*result)(const char *request_id, json_t *result, void *arg);
	/*
	 * The sink cannot go on (connection lost for good, refused, ...):
	 * the import stops and tells how to resume.  reason is one line.
	 */
	void	(*lost)(const char *reason, void *arg);
	void	*arg;
};

struct ctl_sink_ops {
	/*
	 * Sends one request: the JSON object text of one line, which already
	 * carries its RequestId (the sink may add ReplyTo and Wait).  0, or
	 * -1 with a message in err.  Never blocks: the sink buffers.
	 */
	int	(*send)(struct ctl_sink *, const char *json, size_t len,
		    char *err, size_t errlen);
	/*
	 * Resume: asks whether each identity already has a user record
	 * (usergate:user:{identity}).  done() is called once per identity
	 * asked, with the record as JSON or NULL.  Sinks that cannot tell
	 * (the request socket) leave this NULL.
	 */
	int	(*finished)(struct ctl_sink *, const char *const *identities,
		    size_t n, void (*done)(const char *identity, json_t *record,
		    void *arg), void *arg);
	/* Flushes and frees; results not yet in are not waited for. */
	void	(*close)(struct ctl_sink *);
};

struct ctl_sink {
	const struct ctl_sink_ops *ops;
};

/* ctl_sink_socket.c: the request socket at path (JSON lines, Wait). */
struct ctl_sink	*ctl_sink_socket(struct event_base *, const char *path,
		    const struct ctl_sink_events *, char *err, size_t errlen);

/*
 * ctl_sink_redis.c: Redis as the daemon's config file says (URL or
 * host/port, ACL user, password, TLS, Sentinel, prefix), cfg as the import
 * loaded it (CONFIG_CREDENTIALS_REDIS_ONLY), which must outlive the sink;
 * requests are LPUSHed on {prefix}requests with a ReplyTo of its own under
 * [results] reply_prefix, whose results it reads back.  The number of
 * requests pushed but not answered is the import's to bound.
 */
struct ctl_sink	*ctl_sink_redis(struct event_base *,
		    const struct config *cfg, const struct ctl_sink_events *,
		    char *err, size_t errlen);

/*
 * usergatectl.c: the sockets' client side.  ctl_connect gives a Unix
 * stream socket connected to path, or -1 after saying why on stderr
 * (permission denied: ctl_say_not_allowed) unless quiet.  ctl_status_ask
 * sends line (ending in a newline) to the status socket at path and gives
 * its answer without the empty line that ends it (malloc'd), or NULL.
 * read_until returns the answer up to end (or, with end_line, an answer
 * that is only an empty line), malloc'd, or NULL after saying why.
 */
int		 ctl_connect(const char *path, int quiet);
void		 ctl_say_not_allowed(const char *path);
char		*ctl_status_ask(const char *path, const char *line, int quiet);
int		 write_all(int fd, const char *buf, size_t len);
char		*read_until(int fd, const char *end, int end_line,
		    long timeout_ms);

/* ctl_import.c: `usergatectl import ...`; argv[0] is "import". */
int		 ctl_import(int argc, char **argv, const char *config_path,
		    const char *request_path, const char *status_path);

/* clock.c, the daemon's, linked in: monotonic seconds. */
double		 now_monotonic(void);

/* ctl_top.c: `usergatectl top`; argv[0] is "top". */
int		 ctl_top(int argc, char **argv, const char *status_path);

#endif
