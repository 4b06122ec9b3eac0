/*
 * usergate.h: the library's header, one of two.  Core structures, limits,
 * and the prototypes of the modules below the daemon (log, config and the
 * pure ones), grouped under the file that defines each.  The daemon's shared
 * state and its I/O files are declared in daemon.h.
 *
 * Ownership rules that hold everywhere:
 *  - a function that returns a `char *` or `json_t *` gives the caller a
 *    reference to free (free() / json_decref()) unless its comment says
 *    otherwise;
 *  - library handles are owned by one module each: libcurl by http.c, hiredis
 *    by the queue_*.c files, through queue_int.h.  No other file includes
 *    their headers.
 */
#ifndef USERGATE_H
#define USERGATE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <jansson.h>

struct event_base;

/* Limits of SPEC §4.1. */
#define UG_FRAME_MAX		(64 * 1024)	/* one request, bytes */
/*
 * What stands in our processing list for a Redis list element longer than
 * UG_FRAME_MAX: this mark (0xc1 is never valid msgpack, JSON or UTF-8), the
 * element's length in decimal, a space and its first 256 bytes.  Parsed as
 * too_large.
 */
#define UG_OVERSIZE_MARK	"\xc1" "oversize "
#define UG_IDENTITY_MAX		256		/* characters (code points) */
#define UG_FRIENDLY_NAME_MAX	256		/* characters (code points) */
#define UG_ATTRIBUTES_MAX	16384		/* bytes of JSON text */
#define UG_REQUEST_ID_MAX	128		/* bytes */
/* recovered this often: failed */
#define UG_POISON_RECOVERIES	3
/* SIGTERM grace for in-flight work */
#define UG_DRAIN_SECONDS	10

/* ------------------------------------------------------------------ */
/* log.c */

enum log_level {
	LOG_LEVEL_ERROR = 0,
	LOG_LEVEL_WARNING,
	LOG_LEVEL_INFO,
	LOG_LEVEL_DEBUG,
};

/*
 * One event per line on stderr: "TIMESTAMP level=info msg=\"...\" k=v ...".
 * Under journald (JOURNAL_STREAM names our stderr) a "<N>" priority prefix
 * replaces the timestamp, or the line goes as a journal entry with fields
 * (log_set_journal below).  Values are quoted when they need it and control
 * characters are escaped, so a hostile value cannot forge a line.
 */
void		 log_init(enum log_level level);
void		 log_set_level(enum log_level level);
enum log_level	 log_get_level(void);
int		 log_level_parse(const char *name, enum log_level *out);
const char	*log_level_name(enum log_level level);
/* key/value pairs of strings after msg, terminated by NULL; a NULL value is
 * skipped.  Use the macros below, which add where the call is. */
void		 log_kv(enum log_level level, const char *msg, ...);
void		 log_kv_at(const char *file, int line, const char *func,
		    enum log_level level, const char *msg, ...);
#define LOG_AT(level, msg, ...) \
	log_kv_at(__FILE__, __LINE__, __func__, level, msg, ##__VA_ARGS__, \
	    (char *)NULL)
#define log_error(msg, ...)	LOG_AT(LOG_LEVEL_ERROR, msg, ##__VA_ARGS__)
#define log_warn(msg, ...)	LOG_AT(LOG_LEVEL_WARNING, msg, ##__VA_ARGS__)
#define log_info(msg, ...)	LOG_AT(LOG_LEVEL_INFO, msg, ##__VA_ARGS__)
#define log_debug(msg, ...)	LOG_AT(LOG_LEVEL_DEBUG, msg, ##__VA_ARGS__)

/*
 * Under journald a line goes instead as one journal entry with fields
 * (docs/operations.md, "Logging"), through the function set here:
 * sd_journal_sendv, set by main.c, so that this file needs no libsystemd.
 * It gets "FIELD=value" entries and returns a negative errno on failure,
 * when the line goes to stderr after all.  NULL (the default) sends none.
 */
struct iovec;
typedef int	 (*log_journal_fn)(const struct iovec *iov, int n);
void		 log_set_journal(log_journal_fn send);
/* The USERGATE_EVENT= name of a message, into buf.  Exposed for tests. */
void		 log_event_name(const char *msg, char *buf, size_t size);
/* Appends the logfmt-escaped form of value to buf (NUL-terminated, truncated
 * to size).  Exposed for tests. */
void		 log_escape(const char *value, char *buf, size_t size);

/*
 * A budget for a line that every request can cause (a warning about one
 * request), so that a flood of bad requests cannot flood the log: at most
 * per_second such lines in any one second, counting from the first.  The
 * lines held back are counted, and log_limits_report (called every second)
 * writes one "suppressed similar lines" line for them once their second is
 * over.  Declare each as a static object with LOG_LIMIT.
 */
struct log_limit {
	/* of the lines limited, for the summary */
	const char	*msg;
	long		 per_second;
	double		 second;	/* when the current second began */
	long		 used;		/* lines written in it */
	unsigned long long held;	/* lines held back, not yet reported */
	int		 listed;
	struct log_limit *next;
};
#define LOG_LIMIT(msg, per_second) { (msg), (per_second), 0, 0, 0, 0, NULL }
#define LOG_LIMIT_PER_SECOND	10
/* 1 when one more line may be written at now (seconds, monotonic); 0 when it
 * is held back (and counted).  Pure but for joining the report list. */
int		 log_limit_allow(struct log_limit *l, double now);
/* The count of held lines once their second is over (then forgotten), 0
 * before that or when none were held.  Pure. */
unsigned long long log_limit_held(struct log_limit *l, double now);
void		 log_limits_report(double now);

/* ------------------------------------------------------------------ */
/* redis_url.c */

/*
 * A Redis server to connect to, as the [redis] url key writes it:
 * redis://[user[:password]@]host[:port][/db], rediss://... (TLS) or
 * unix://[user[:password]@]/path[?db=N], read as ioredis and redis-client
 * read them (docs/usergate.conf.5).
 */
struct redis_url {
	int	 tls;		/* rediss:// */
	char	*host;		/* NULL for a Unix socket; IPv6 without [] */
	long	 port;		/* 6379 when not given; 0 for a Unix socket */
	char	*path;		/* the Unix socket; NULL for TCP */
	long	 db;		/* -1 when not given */
	char	*username;	/* NULL when none */
	char	*password;	/* NULL when none; a secret */
};
/* Fills *u (to be freed with redis_url_free) or returns -1 with a message
 * in err that quotes no part of url (it may hold a password).  Pure. */
int		 redis_url_parse(const char *url, struct redis_url *u,
		    char *err, size_t errlen);
void		 redis_url_free(struct redis_url *u);
/* Writes u as a URL for logs: "***" stands for the password when password
 * is set, whatever u->password holds.  Pure. */
void		 redis_url_show(const struct redis_url *u, int password,
		    char *buf, size_t size);

/* ------------------------------------------------------------------ */
/* config.c */

enum results_format { FORMAT_MSGPACK = 0, FORMAT_JSON = 1 };
enum on_exists { ON_EXISTS_FETCH = 0, ON_EXISTS_UPDATE = 1 };

struct config {
	char	*path;			/* the file it came from */

	/* [twilio] */
	char	*base_url;
	char	*edge;
	char	*region;
	char	*service_sid;
	char	*api_key;
	char	*api_secret_file;
	char	*account_sid;
	char	*auth_token_file;
	char	*ca_file;
	long	 connect_timeout_ms;
	long	 request_timeout_ms;
	long	 max_inflight;
	long	 rate_limit;
	long	 rate_window_s;
	enum on_exists on_exists;

	/* [retry] */
	long	 max_attempts;
	long	 base_delay_ms;
	long	 max_delay_ms;

	/* [redis] */
	char	*redis_host;
	long	 redis_port;
	char	*redis_unix_socket;
	char	*redis_password_file;
	long	 redis_db;
	/* as written, password and all: never logged, wiped when freed;
	 * see redis */
	char	*redis_url_key;
	char	*redis_username;
	char	*prefix;
	/* filled with the host name when empty */
	char	*instance_id;
	char	*redis_sentinels;	/* host:port,...; wins over host/port */
	char	*redis_master_name;
	char	*redis_sentinel_password_file;
	long	 redis_durable_replicas;	/* 0: no WAIT */
	long	 redis_durable_timeout_ms;
	char	*redis_tls_ca_file;	/* tls_*: see config_redis_tls */
	char	*redis_tls_cert_file;
	char	*redis_tls_key_file;
	char	*redis_tls_server_name;

	/* [dedup] */
	long	 dedup_ttl_s;

	/* [results] */
	enum results_format format;
	long	 results_max;
	long	 reply_ttl_s;
	/* comma-separated; see struct reply_scope */
	char	*reply_prefix;
	long	 dead_max;

	/* [socket] */
	char	*socket_path;
	long	 socket_mode;
	long	 socket_idle_timeout_s;
	long	 socket_max_connections;

	/* [status] */
	char	*status_path;
	long	 status_mode;

	/* [metrics] */
	char	*metrics_listen;	/* ADDRESS:PORT, empty: off */

	/* [log] */
	enum log_level log_level;

	/*
	 * Derived by config_load.  The secrets below are never logged,
	 * never put in an answer, and are wiped before they are freed.
	 */
	/* scheme://host[:port] after edge/region */
	char	*api_base;
	char	*auth_user;		/* SK... or AC... */
	char	*auth_secret;		/* API secret or auth token */
	char	*redis_password;	/* NULL when none */
	/*
	 * The server to use: from url when it is set, else from host, port,
	 * unix_socket and db; username from either.  db is never -1 here,
	 * and password always NULL: the one password is redis_password.
	 */
	struct redis_url redis;
	char	*sentinel_password;	/* NULL when none */
	struct config_sentinel {
		char		*host;
		unsigned	 port;
	}	*sentinels;		/* parsed [redis] sentinels */
	size_t	 nsentinels;		/* 0: no Sentinel, host/port */
};

/* [metrics] listen "ADDRESS:PORT" -> a socket address; -1 when it is
 * not a numeric IPv4 or bracketed IPv6 address with a port of 1..65535. */
struct sockaddr_storage;
int		 config_listen_address(const char *s,
		    struct sockaddr_storage *ss, int *len);

/* One row per key; drives parsing, defaults, bounds, reload and docs. */
enum config_type { CONFIG_STRING, CONFIG_LONG, CONFIG_MODE, CONFIG_ENUM };
struct config_key {
	const char	*section;
	const char	*name;
	enum config_type type;
	const char	*default_value;	/* as written in the file */
	long		 min, max;	/* CONFIG_LONG bounds */
	int		 reloadable;	/* takes effect on SIGHUP */
	size_t		 offset;	/* in struct config */
};
const struct config_key *config_keys(size_t *count);

/*
 * Loads path (NULL: built-in defaults only), applies TWILIO_* overrides,
 * reads the secret files (or $CREDENTIALS_DIRECTORY), derives api_base and
 * validates everything.  On error returns -1 with a message naming file,
 * line and key in err; cfg is then left freed.  credentials is one of:
 */
#define CONFIG_CREDENTIALS_OPTIONAL	0	/* a missing pair is fine */
#define CONFIG_CREDENTIALS_REQUIRED	1	/* the daemon's */
/* The Twilio secrets are not read at all, only Redis' (usergatectl import
 * -c, run by someone who may read the Redis password but not Twilio's). */
#define CONFIG_CREDENTIALS_REDIS_ONLY	2
int		 config_load(const char *path, struct config *cfg,
		    int credentials, char *err, size_t errlen);
/*
 * Outside systemd (no $CREDENTIALS_DIRECTORY), sets $CREDENTIALS_DIRECTORY
 * to the directory of the config file at path: the unit's LoadCredential=
 * lines take the credentials from there (/etc/usergate/redis-password),
 * so a run from a shell reads what the unit would.  0, or -1 (errno set).
 */
int		 config_credentials_beside(const char *path);
void		 config_free(struct config *cfg);
/* Writes into out the comma-separated names of keys that differ between old
 * and new but cannot change without a restart; returns how many. */
int		 config_restart_keys(const struct config *old,
		    const struct config *new, char *out, size_t outlen);
/* 1 when the Redis link uses TLS (a tls_* key is set), else 0. */
int		 config_redis_tls(const struct config *cfg);
/*
 * Compares a Redis version as HELLO tells it ("7.0.15") with major.minor:
 * 1 when it is that or later, 0 when older, -1 when it is not a version.
 */
int		 redis_version_at_least(const char *version, int major,
		    int minor);

/* ------------------------------------------------------------------ */
/* codec.c: msgpack / JSON <-> jansson values.  Pure. */

enum codec_status {
	CODEC_OK = 0,
	CODEC_MALFORMED,	/* neither valid msgpack nor valid JSON */
	CODEC_BAD_UTF8,		/* JSON text that is not UTF-8 */
	CODEC_NOT_MAP,		/* a valid value that is not a map/object */
};
/*
 * Decodes one whole value: JSON when the first byte (after no whitespace) is
 * '{', msgpack otherwise.  Trailing bytes are malformed.  msgpack strings
 * are kept as they are, even when not UTF-8 (json_stringn_nocheck), so the
 * validator can name the field; bin is decoded as a string the same way.
 * Duplicate keys are malformed.  *out is a JSON object on CODEC_OK.
 */
enum codec_status codec_decode(const void *buf, size_t len, json_t **out,
		    char *err, size_t errlen);
/* Decodes any value (not only maps), same rules; for stored records. */
enum codec_status codec_decode_any(const void *buf, size_t len, json_t **out,
		    char *err, size_t errlen);
/* Encodes v as compact JSON text or msgpack; *out is malloc'd.  JSON fails
 * (-1) for a string or key that is not UTF-8 and for a key with a NUL,
 * which only msgpack can carry. */
int		 codec_encode(const json_t *v, enum results_format fmt,
		    char **out, size_t *len);
/* The object v plus the member key (plain ASCII, not in v) whose value enc
 * was encoded by codec_encode in the same format: encodes a value once for
 * two messages.  -1 when key is not plain or already in v. */
int		 codec_encode_with(const json_t *v, const char *key,
		    const char *enc, size_t enclen, enum results_format fmt,
		    char **out, size_t *len);
/* msgpack bytes that pack() writes with the packer it is given, -1 when it
 * fails; codec's encode buffer is reused and *out is an exact-size copy.
 * For values that are not json_t (record.c packs cJSON's tree). */
struct msgpack_packer;
int		 codec_msgpack_packed(int (*pack)(struct msgpack_packer *,
		    const void *), const void *arg, char **out, size_t *len);
/* buf[0..len) as one msgpack bin; *out is malloc'd.  For bytes that are not
 * text (a str must be UTF-8, and strict decoders refuse one that is not). */
int		 codec_encode_bin(const void *buf, size_t len, char **out,
		    size_t *outlen);
/* 1 when every string and key in v is valid UTF-8 (v was decoded from
 * msgpack, which keeps a str that is not: see codec_decode). */
int		 codec_text_valid(const json_t *v);
/*
 * A check of msgpack headers before msgpack-c sees them: msgpack-c
 * allocates a container's elements as soon as it reads the header, so five
 * bytes announcing 4 billion entries ask for 64 GiB.  The scanner walks the
 * headers of one value without building anything and counts the items
 * still due (an array element one, a map entry two); as each item takes at
 * least a byte, they and every str, bin and ext payload must fit in the
 * bytes left before limit.  Nesting is bounded as msgpack-c's own stack
 * bounds it (CODEC_SCAN_DEPTH open containers), so the first fault in the
 * bytes is the one reported, as msgpack-c would.  It resumes where it
 * stopped when more bytes of the same value arrive (buf then starts at the
 * same value, longer).  Zero the state before the first call.
 */
/* msgpack-c's MSGPACK_EMBED_STACK_SIZE */
#define CODEC_SCAN_DEPTH	32
struct codec_scan {
	size_t		 off;	/* bytes of the value checked so far */
	uint64_t	 due;	/* items announced and not yet begun */
	int		 begun;
	int		 depth;	/* containers open */
	/* items to begin in each */
	uint64_t	 left[CODEC_SCAN_DEPTH];
};
enum codec_scan_status {
	CODEC_SCAN_DONE,	/* the value is whole: off is its length */
	CODEC_SCAN_MORE,	/* plausible so far; its end is not in buf */
	CODEC_SCAN_TOO_LARGE,	/* announces more than fits before limit */
	CODEC_SCAN_TOO_DEEP,	/* more than CODEC_SCAN_DEPTH containers open */
	CODEC_SCAN_INVALID,	/* 0xc1, which msgpack never uses */
};
enum codec_scan_status codec_msgpack_scan(struct codec_scan *s, const void *buf,
		    size_t len, size_t limit);
/* 1 when s[0..len) is valid UTF-8. */
int		 codec_utf8_valid(const char *s, size_t len);
/* Number of code points in a valid UTF-8 string. */
size_t		 codec_utf8_length(const char *s, size_t len);
/* Replaces in place, with '?', every control character and every byte of
 * the NUL-terminated s that is not part of valid UTF-8, so that text quoted
 * from input (jansson's error context, say) is safe in a log or a JSON
 * result.  Error messages of codec.c and request.c are already clean. */
void		 codec_sanitize_text(char *s);

/* ------------------------------------------------------------------ */
/* request.c: a decoded value -> struct request, with SPEC §4.1's rules. */

enum request_error {
	REQ_OK = 0,
	REQ_MALFORMED,
	REQ_TOO_LARGE,
	REQ_UNKNOWN_FIELD,
	REQ_BAD_TYPE,
	REQ_MISSING_IDENTITY,
	REQ_IDENTITY_TOO_LONG,
	REQ_IDENTITY_IS_SID,
	REQ_BAD_UTF8,
	REQ_FRIENDLY_NAME_TOO_LONG,
	REQ_ATTRIBUTES_NOT_JSON,
	REQ_ATTRIBUTES_TOO_LONG,
	REQ_BAD_ROLE_SID,
	REQ_BAD_REQUEST_ID,
	REQ_REPLY_TO_FORBIDDEN,
};

struct request {
	char	*identity;
	char	*friendly_name;		/* NULL: not given */
	char	*attributes;		/* JSON object text; NULL: not given */
	char	*role_sid;		/* NULL: not given */
	int	 webhook_enabled;	/* -1 not given, 0 false, 1 true */
	char	*request_id;		/* NULL: not given (caller generates) */
	char	*reply_to;		/* NULL: not given */
	int	 wait;			/* socket only: 0 when "Wait": false */
};

/*
 * The keys a ReplyTo may name: those beginning with one of the
 * comma-separated prefixes of allowed ([results] reply_prefix; empty
 * entries are skipped) and not with own ([redis] prefix, may be NULL).
 */
struct reply_scope {
	const char	*allowed;
	const char	*own;
};

/* The SPEC's error.code for e ("malformed", ...). */
const char	*request_error_code(enum request_error e);
/*
 * Decodes and validates one raw request.  On any error fills err with a
 * precise message (naming the field and what was wrong) and returns the
 * error; even then req->request_id, req->identity and req->reply_to are set
 * when they could be read, so the result can echo them.  A ReplyTo outside
 * scope is reply_to_forbidden and never set; a NULL scope checks ReplyTo's
 * form only (for callers that never write a reply).  req must be freed
 * with request_free in every case.
 */
enum request_error request_parse(const void *buf, size_t len,
		    const struct reply_scope *scope, struct request *req,
		    char *err, size_t errlen);
void		 request_free(struct request *req);

/* ------------------------------------------------------------------ */
/* framing.c: the request socket's byte stream -> frames (SPEC §6.1).  Pure. */

enum framing { FRAMING_UNKNOWN, FRAMING_JSON, FRAMING_MSGPACK };

enum frame_status {
	FRAME_NONE,		/* no whole frame yet: wait for more bytes */
	FRAME_READY,		/* buf[0..frame_len) is one request */
	FRAME_SKIP,		/* nothing to take; drop the consumed bytes */
	/* msgpack value over UG_FRAME_MAX: end the stream */
	FRAME_TOO_LARGE,
	FRAME_MALFORMED,	/* undecodable msgpack: end the stream */
};

/* FRAMING_JSON when the first byte is '{', FRAMING_MSGPACK otherwise,
 * FRAMING_UNKNOWN when there is no byte yet. */
enum framing	 framing_detect(const char *buf, size_t len);
/*
 * What framing_next keeps between calls on one connection: zeroed at its
 * start, given to framing_state_free at its end.  msgpack values are parsed
 * by one streaming msgpack-c unpacker that only ever sees each byte once,
 * so a value arriving a byte at a time costs its length, not its length
 * squared (re-parsing from the start on each read did).
 */
struct framing_state {
	/* JSON: skipping a long line's tail */
	int			 discarding;
	/* msgpack: the value in progress */
	struct msgpack_unpacker	*mp;
	size_t			 fed;		/* bytes of buf already in mp */
	struct codec_scan	 scan;		/* msgpack: headers checked */
};

/*
 * The next frame at the start of buf[0..len), which holds every byte read
 * and not consumed yet (for msgpack the first UG_FRAME_MAX + 1 suffice),
 * the same bytes as on the previous call minus what that call consumed.
 * After any status but FRAME_NONE the caller drops *consumed bytes, which
 * is never 0; for FRAME_READY it drops them only after using the frame,
 * and *consumed may exceed *frame_len (a line's end, an oversized line's
 * tail).  buf may be NULL when len is 0.
 */
enum frame_status framing_next(const char *buf, size_t len,
		    enum framing framing, struct framing_state *st,
		    size_t *frame_len, size_t *consumed);
void		 framing_state_free(struct framing_state *st);

/* ------------------------------------------------------------------ */
/* command.c: the status socket's command lines (SPEC §6.2).  Pure. */

#define STATUS_LINE_MAX		1024	/* bytes of one command line */

enum status_verb {
	STATUS_EMPTY, STATUS_SHOW_STATS, STATUS_SHOW_METRICS, STATUS_SHOW_QUEUE,
	STATUS_HEALTH, STATUS_PAUSE, STATUS_RESUME, STATUS_RELOAD,
	STATUS_DEAD_LIST, STATUS_DEAD_RETRY, STATUS_HELP, STATUS_ERROR
};
struct status_command {
	enum status_verb	 verb;
	long			 count;	/* dead list/retry: N, or -1 for all */
	const char		*error;	/* STATUS_ERROR: the answer to give */
};
void		 status_parse(const char *line, size_t len,
		    struct status_command *cmd);

/* ------------------------------------------------------------------ */
/* record.c: Twilio answers -> user records.  Pure. */

/* What a Twilio answer holds, for the record functions below. */
enum record_answer {
	RECORD_USER = 0,	/* the user asked for */
	/* not a JSON object with a non-empty string sid */
	RECORD_NOT_USER,
	RECORD_WRONG_USER,	/* a sid that is not US + 32 hex digits, or an
				 * identity other than the request's */
};
/*
 * Parses a Twilio user resource (JSON text) into a record object holding
 * exactly the fields of SPEC §4.3 that the answer had, types kept.  NULL
 * when the body is not a JSON object with a string "sid", and when
 * identity is not NULL, also when the answer is not that identity's user
 * with a well-formed sid; *what (may be NULL) says which.  A NULL identity
 * checks nothing beyond the sid's presence (tests of parsing alone).
 */
json_t		*record_from_twilio(const char *body, size_t len,
		    const char *identity, enum record_answer *what);
/*
 * The same record straight as msgpack, the bytes codec_encode gives for
 * record_from_twilio's record, without building it (the hot path when
 * results are msgpack).  1 with *out (malloc'd) and *outlen; 0 when this
 * answer must go through record_from_twilio: not a record (or not
 * identity's, as above), or a value only the json_t path carries exactly
 * (a number, a "\u0000", a key repeated inside a kept object, a string
 * that is not UTF-8).
 */
int		 record_msgpack_from_twilio(const char *body, size_t len,
		    const char *identity, char **out, size_t *outlen);
/* Parses a Twilio error body: code and message (either may be absent). */
#define RECORD_MESSAGE_MAX	1024	/* bytes of a Twilio message kept */
void		 record_twilio_error(const char *body, size_t len, long *code,
		    char **message);
/* 1 when the request asks for a FriendlyName/Attributes/RoleSid that the
 * record does not have (for on_exists = update). */
int		 record_differs(const json_t *record,
		    const struct request *req);
/* A user record as stored under user:{Identity} (either format): the
 * object, or NULL when it is unreadable or not an object. */
json_t		*record_stored(const char *buf, size_t len);
/* A dead entry {request, result} as `dead list` prints it: one line of
 * JSON, ASCII only, malloc'd; NULL when the entry is unreadable. */
char		*record_dead_line(const char *buf, size_t len);
/* The request of a dead entry as the JSON text `dead retry` pushes back,
 * *textlen bytes, malloc'd; NULL when the entry is unreadable, holds no
 * request object, or one that JSON text cannot carry. */
char		*record_dead_request(const char *buf, size_t len,
		    size_t *textlen);

/* ------------------------------------------------------------------ */
/* result.c: a finished request's result and dead entry (SPEC §4.2).  Pure. */

/*
 * The statuses of a result, declared once: the name results carry, whether
 * it is a success (the result holds the user, never an error), and the
 * counter of daemon.h's STATS_COUNTERS that counts it (job.c adds to
 * stats.COUNTER, so a status without its counter does not build).
 */
#define RESULT_STATUSES(X)					\
	X(CREATED, "created", 1, created)			\
	X(EXISTS, "exists", 1, exists)				\
	X(UPDATED, "updated", 1, updated)			\
	X(DUPLICATE, "duplicate", 1, duplicate)			\
	X(INVALID, "invalid", 0, invalid)			\
	X(FAILED, "failed", 0, failed)

enum result_status {
#define RESULT_STATUS_ENUM(id, name, success, counter) RESULT_##id,
	RESULT_STATUSES(RESULT_STATUS_ENUM)
#undef RESULT_STATUS_ENUM
	RESULT_STATUS_COUNT
};

/* The status as results spell it; NULL for no status. */
const char	*result_status_name(enum result_status s);
/* 1 for the statuses that carry a user (created, exists, updated,
 * duplicate). */
int		 result_success(enum result_status s);
/* The error.code values of failed results, NULL-terminated (an invalid
 * result's come from request_error_code). */
extern const char *const result_failure_codes[];
/* 1 when a result with status s may carry error.code code. */
int		 result_error_known(enum result_status s, const char *code);

/* What a request's result is made of. */
struct result_outcome {
	enum result_status	 status;
	const char		*request_id;
	const char		*identity;	/* NULL: the request had none */
	const char		*error_code;	/* invalid and failed only */
	const char		*error_message;
	long			 twilio_code;	/* 0: none */
	long			 http_status;	/* 0: none */
	int			 attempts;	/* HTTP requests made */
	int			 from_socket;	/* source: socket, else redis */
	double			 received_wall;	/* seconds since the epoch */
	double			 completed_wall;
	json_t			*user;		/* a success: its record */
	const char		*raw;		/* the request, as taken */
	size_t			 rawlen;
	enum results_format	 format;
};

/* A result built, every part encoded once for every place it goes. */
struct result {
	json_t	*map;		/* the result, with its user if it has one */
	char	*enc;		/* map encoded: results, events, ReplyTo */
	size_t	 enclen;
	char	*record;	/* the user record encoded: user:{Identity} */
	size_t	 recordlen;
	char	*dead;		/* {request, result}, for invalid and failed */
	size_t	 deadlen;
};

/*
 * Builds r from o (r zeroed, but for a record that came encoded already,
 * which r->record may hold and r then owns: the user is then put into the
 * encoded result only, not into r->map).  A success's record is encoded
 * from o->user unless it came so; a duplicate, whose record is the stored
 * one, has none.  0, or -1 when memory ran out; free r with result_free
 * either way.
 */
int		 result_build(const struct result_outcome *o, struct result *r);
void		 result_free(struct result *r);
/* The timestamp results carry: ISO 8601 UTC with milliseconds
 * ("2025-01-31T09:12:45.123Z") into buf (>= 25 bytes). */
void		 result_format_time(double wall, char *buf, size_t size);

/* ------------------------------------------------------------------ */
/* twilio.c: Twilio's URLs, forms and answers.  Pure. */

/* scheme://host[:port] for base_url with edge/region applied the way the
 * helper libraries do it; NULL with err on a bad base_url. */
char		*twilio_api_base(const char *base_url, const char *edge,
		    const char *region, char *err, size_t errlen);
/* .../v1/Users or .../v1/Services/{sid}/Users */
char		*twilio_users_url(const char *api_base,
		    const char *service_sid);
/* .../Users/{percent-encoded sid-or-identity} */
char		*twilio_user_url(const char *api_base, const char *service_sid,
		    const char *sid);
/* application/x-www-form-urlencoded body of the given parameters only.
 * with_identity = 0 for updates. */
char		*twilio_form(const struct request *req, int with_identity);

enum twilio_outcome {
	TWILIO_CREATED,		/* 201 */
	TWILIO_OK,		/* 200 (fetch, update) */
	TWILIO_EXISTS,		/* 409 + 50201 */
	TWILIO_RETRY,		/* 429, 409/50213, 5xx, transport errors */
	TWILIO_AUTH,		/* 401/403, TLS verification failures */
	TWILIO_REJECTED,	/* other 4xx */
};
/* Classifies an answer: status is the HTTP status (0 for a transport
 * failure), code Twilio's error code (0 when none). */
enum twilio_outcome twilio_classify(long status, long code);
/* 1 when s[0..len) is prefix followed by exactly 32 hex digits, either case
 * (Twilio's ^XX[0-9a-fA-F]{32}$; the prefix is case-sensitive). */
int		 twilio_is_sid(const char *s, size_t len, const char *prefix);

/* ------------------------------------------------------------------ */
/* failover.c: a Redis error reply that means "ask the primary again". */
int		 redis_error_is_failover(const char *);
/* MOVED's host and port (0), or -1. */
int		 redis_moved_address(const char *, char *, size_t, unsigned *);
/* Whether a key prefix fixes the Cluster slot: its hash tag. */
int		 redis_hash_tag(const char *, const char **, size_t *);

/* pace.c: backoff, rate window, adaptive concurrency.  Pure arithmetic. */

/* Full-jitter exponential backoff for attempt n (1 = after the first
 * failure): uniform in [0, min(max, base * 2^(n-1))], then at least
 * retry_after_ms.  rnd is a uniform random number in [0, 1). */
long		 pace_backoff_ms(long attempt, long base_ms, long max_ms,
		    long retry_after_ms, double rnd);
/* Retry-After header value (delta-seconds or HTTP-date) in ms, -1 if bad. */
long		 pace_retry_after_ms(const char *value, time_t now);

/* Additive-increase/multiplicative-decrease window on concurrent requests. */
struct pace_window {
	double	 window;	/* current limit, 1..max */
	long	 max;
};
void		 pace_window_init(struct pace_window *w, long max);
void		 pace_window_success(struct pace_window *w);
void		 pace_window_throttled(struct pace_window *w);
long		 pace_window_limit(const struct pace_window *w);
void		 pace_window_set_max(struct pace_window *w, long max);

#endif /* USERGATE_H */
