/*
 * fake-twilio: the project's own stand-in for Twilio Conversations' Users
 * API, for the integration tests and the README demo.  One libevent loop,
 * evhttp, optional TLS; state in memory; faults on demand.
 *
 * usage: fake-twilio [--host H] [--port P] [--port-file F]
 *                    [--user U --password P] [--account AC...]
 *                    [--tls-cert FILE --tls-key FILE]
 *
 *   --host H        address to bind (default 127.0.0.1)
 *   --port P        port; 0 (the default) lets the kernel choose
 *   --port-file F   write the bound port there, atomically (tmp + rename)
 *   --user U --password P
 *                   the Basic-auth pair every API request must carry; without
 *                   them any well-formed Basic auth is accepted (a missing or
 *                   undecodable Authorization header is still 401)
 *   --account AC..  account_sid of the records (default AC + 32 'a')
 *   --tls-cert FILE --tls-key FILE
 *                   serve HTTPS (PEM certificate chain and key)
 *
 * Once listening it prints exactly one line, "fake-twilio listening on
 * HOST:PORT", to stdout.  SIGTERM or SIGINT: exit 0.  Exit 1: runtime
 * failure (bind, TLS files); 2: bad usage.
 *
 * Twilio API (Basic auth on each; JSON answers; errors are
 * {"code":N,"message":"...","more_info":"https://www.twilio.com/docs/errors/N",
 * "status":S}):
 *   POST /v1/Users                       create: 201 record | 400 | 409 50201
 *   POST /v1/Services/{IS..}/Users       create in that service
 *   GET  /v1/Users/{Sid-or-Identity}     fetch: 200 record | 404 20404
 *   POST /v1/Users/{Sid-or-Identity}     update FriendlyName/Attributes/
 *                                        RoleSid: 200 record | 404 20404
 *   (fetch and update also under /v1/Services/{IS..}/Users/...)
 * The path segment is percent-decoded, so an Identity with '/', '@', spaces
 * or UTF-8 works when the client encodes it.  Create validation: Identity
 * required (400 50204), <= 256 characters (50207), not US+32 hex (50206);
 * FriendlyName <= 256 characters (50003); Attributes a JSON object (50304)
 * of <= 16384 bytes (50303); RoleSid RL+32 hex (20001); a body that is not
 * a UTF-8 form: 400 20001.  Update validates the same optional fields.
 *
 * Control (no auth, no faults, no latency):
 *   POST /_control   JSON object merged into the fault settings; answers the
 *                    settings.  Unknown key: 400 {"unknown": [keys]}; a bad
 *                    value: 400 {"error": "..."}; nothing is applied then.
 *   GET  /_stats     counters (below); GET /_stats?brief=1 leaves out the
 *                    per-identity maps (handy with a million users)
 *   POST /_reset     forget users, counters and faults
 *
 * Fault keys (defaults in brackets):
 *   latency_ms      [0]     delay every API answer (a timer, never blocking)
 *   fail_5xx        [0.0]   fraction of creates answered 503 20503
 *   rate_429        [0.0]   fraction of creates answered 429 20429
 *   retry_after     [null]  integer seconds sent as Retry-After with every
 *                           429 (20429, 50063) and 503 answer; null: none
 *   drop            [0.0]   fraction of creates whose connection is closed
 *                           unanswered; the user is not created
 *   lost_response   [0.0]   fraction of creates processed (created when
 *                           valid and new) whose answer is then withheld and
 *                           the connection closed
 *   conflict_50213  [0.0]   fraction of creates answered 409 50213
 *   aps             [0]     accepted creates per second per service over a
 *                           5 s sliding window; beyond: 429 50063 (0 = off)
 *   auth_down       [false] every API request: 401 20003
 *   forbidden       [false] every API request: 403 20003
 *   reserved_prefix [null]  identities starting with it: 400 50203
 *   error_message   [null]  a string: the message of every error answer
 *   seed            [null]  an integer; setting it reseeds the random number
 *                           generator now, for repeatable runs
 *   bad_answer      [null]  "sid" or "identity": every user record answered
 *                           (201, 200 of a fetch or an update) has a sid
 *                           that is not US + 32 hex digits ("US123"), or
 *                           another identity (the real one + "-other"); the
 *                           stored user is not changed
 *   next            [[]]    fault names applied in order to the next creates,
 *                           one each, before any fraction: "503", "500",
 *                           "502", "504", "429", "50063", "drop", "lost",
 *                           "50213", "401", "403", "400" (400 21000
 *                           "rejected").  Setting it replaces the queue;
 *                           /_stats shows what is left.
 * Faults hit creates only, and only those that passed auth and validation
 * (an invalid create is answered 400 and consumes nothing); auth_down and
 * forbidden hit every API request; latency delays every API answer.  Order
 * for a create: next, then one random draw over drop, fail_5xx, rate_429,
 * conflict_50213, lost_response (fractions add up), then aps, then 409
 * 50201 for an identity that exists in that service.  A request's state
 * change (create, update) happens when its latency has passed, just before
 * the answer; /_reset does not cancel requests still waiting.
 *
 * /_stats fields:
 *   requests            API requests received (control paths excluded)
 *   counts              {"POST 201": n, "GET 404": n, "POST drop": n,
 *                        "POST lost": n, ...} per method and outcome
 *                        (answers libevent makes itself, such as 413 for a
 *                        body over 1 MiB, are not counted)
 *   users               users stored now (all services)
 *   creates             successful creates (201, lost ones included)
 *   creates_by_identity {identity: successful creates, all services}
 *   duplicate_creates   the same, only identities created more than once
 *   create_requests     creates that passed auth and validation (what
 *                       reached the fault stage, faulted ones included)
 *   create_requests_by_identity {identity: n}
 *   violations          the last 50 protocol violations, as strings
 *   violation_count     all violations since the last reset
 *   user_agents         distinct User-Agent values (sorted)
 *   webhook_headers     {"true": n, "false": n, other value: n} of
 *                       X-Twilio-Webhook-Enabled
 *   last_headers        {header: value} of the last API request
 *   inflight, max_inflight  API requests received and not yet answered
 *   connections         TCP connections accepted (proves keep-alive)
 *   faults              the current fault settings
 * Violations recorded: a query string, an unknown path, a missing or
 * undecodable Authorization header, Accept not application/json, a POST
 * whose Content-Type is not a form, a body that is not a form, not UTF-8 or
 * holds a NUL (raw or %00),
 * a repeated or unknown form parameter (allowed: Identity, FriendlyName,
 * Attributes, RoleSid; not Identity on update), a webhook header other than
 * "true"/"false", a GET on the Users list.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE		/* tdestroy(3), twalk_r(3) */
#endif

#include <sys/types.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <netinet/in.h>

#include <err.h>
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <search.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>

#define BASE_URL		"https://conversations.twilio.com"
#define ERRORS_URL		"https://www.twilio.com/docs/errors/"
#define DEFAULT_ACCOUNT		"ACaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
#define DEFAULT_SERVICE_SID	"IS00000000000000000000000000000000"
#define DEFAULT_ROLE_SID	"RL00000000000000000000000000000000"
/* The name of the /v1/Users namespace. */
#define DEFAULT_SERVICE		"default"
#define SID_LEN			34	/* two letters and 32 hex */
#define NAME_MAX_CHARS		256	/* Identity, FriendlyName */
#define ATTRIBUTES_MAX		16384	/* bytes */
#define APS_WINDOW_S		5.0
#define VIOLATIONS_KEPT		50
#define DISTINCT_MAX		100	/* user agents, header values */
#define BODY_MAX		(1024 * 1024)
#define HTTP_TIMEOUT_S		300	/* idle keep-alive, seconds */
#define LATENCY_MAX_MS		3600000.0

/*
 * A Twilio namespace of users: the default one (/v1/Users) or one
 * /v1/Services/{IS...}.  Interned, so users compare services by pointer.
 * writes holds the monotonic times of accepted creates of the last
 * APS_WINDOW_S seconds, oldest first, as a ring; it is pruned on every use so
 * it stays as small as the recent write rate.
 */
struct service {
	LIST_ENTRY(service)	 entry;
	char			 name[SID_LEN + 1]; /* "default", IS.. */
	double			*writes;
	size_t			 head, len, cap;
};

/*
 * Per identity, across services, since the last reset.  Also owns the
 * identity string that the users of that identity point to.
 */
struct identity_stat {
	char		*identity;
	unsigned long	 creates;
	unsigned long	 create_requests;
};

/*
 * A stored user.  It is in two trees: by (service, identity) and by
 * (service, sid); the first owns it.  NULL optional fields mean Twilio's
 * defaults: friendly_name null, attributes "{}", the default role.
 */
struct user {
	char			 sid[SID_LEN + 1];
	struct service		*service;
	const char		*identity;	/* identity_stat owns it */
	char			*friendly_name;
	char			*attributes;
	char			*role_sid;
	time_t			 created;
	time_t			 updated;
};

/*
 * An API request waiting for its latency to pass.  Every API request goes
 * through one (latency 0 included), so answers and dropped connections are
 * always made from a timer callback, never from inside evhttp's own read
 * callback.  The request stays valid until we answer it even if the client
 * goes away meanwhile: evhttp then detaches it from its connection
 * (evhttp_request_get_connection() returns NULL) and leaves the free to us.
 */
struct pending {
	TAILQ_ENTRY(pending)	 entry;
	struct evhttp_request	*req;
	struct event		*timer;
};
TAILQ_HEAD(pending_list, pending);

/* How an API request ends. */
enum outcome {
	OUTCOME_ANSWER = 0,	/* send status and body */
	OUTCOME_DROP,		/* close unanswered, nothing done */
	OUTCOME_LOST,		/* processed, then closed unanswered */
};

struct answer {
	enum outcome	 outcome;
	int		 status;
	json_t		*body;
	int		 retry_after;	/* Retry-After, if configured */
};

/*
 * The faults a create can be given, by the name that "next" uses.  The
 * fractions of /_control map onto some of them.
 */
static const struct fault {
	const char	*name;
	enum outcome	 outcome;
	int		 status;
	int		 code;
	const char	*message;
	int		 retry_after;
} faults_table[] = {
	{ "503", OUTCOME_ANSWER, 503, 20503, "Service unavailable", 1 },
	{ "500", OUTCOME_ANSWER, 500, 20500, "Internal server error", 0 },
	{ "502", OUTCOME_ANSWER, 502, 20502, "Bad gateway", 0 },
	{ "504", OUTCOME_ANSWER, 504, 20504, "Gateway timeout", 0 },
	{ "429", OUTCOME_ANSWER, 429, 20429, "Too Many Requests", 1 },
	{ "50063", OUTCOME_ANSWER, 429, 50063,
	    "Actions per second limit exceeded", 1 },
	{ "drop", OUTCOME_DROP, 0, 0, NULL, 0 },
	{ "lost", OUTCOME_LOST, 0, 0, NULL, 0 },
	{ "50213", OUTCOME_ANSWER, 409, 50213,
	    "Conflicting user modification", 0 },
	{ "401", OUTCOME_ANSWER, 401, 20003, "Authenticate", 0 },
	{ "403", OUTCOME_ANSWER, 403, 20003, "Permission Denied", 0 },
	{ "400", OUTCOME_ANSWER, 400, 21000, "rejected", 0 },
};

/*
 * The control keys, declared once: /_control validation, the defaults and
 * the unknown-key check all read this table.
 */
enum fault_kind {
	KIND_FRACTION,		/* number in [0, 1] */
	KIND_MILLISECONDS,	/* number >= 0 */
	KIND_SECONDS_OR_NULL,	/* integer >= 0, or null */
	KIND_RATE,		/* number >= 0 */
	KIND_BOOL,
	KIND_STRING_OR_NULL,
	KIND_INTEGER_OR_NULL,
	KIND_FAULT_NAMES,	/* array of faults_table names */
	KIND_ANSWER_FIELD,	/* null, "sid" or "identity" */
};

static const struct fault_key {
	const char	*name;
	enum fault_kind	 kind;
} fault_keys[] = {
	{ "latency_ms", KIND_MILLISECONDS },
	{ "fail_5xx", KIND_FRACTION },
	{ "rate_429", KIND_FRACTION },
	{ "retry_after", KIND_SECONDS_OR_NULL },
	{ "drop", KIND_FRACTION },
	{ "lost_response", KIND_FRACTION },
	{ "conflict_50213", KIND_FRACTION },
	{ "aps", KIND_RATE },
	{ "auth_down", KIND_BOOL },
	{ "forbidden", KIND_BOOL },
	{ "reserved_prefix", KIND_STRING_OR_NULL },
	{ "error_message", KIND_STRING_OR_NULL },
	{ "seed", KIND_INTEGER_OR_NULL },
	{ "next", KIND_FAULT_NAMES },
	{ "bad_answer", KIND_ANSWER_FIELD },
};

#define NELEM(a)	(sizeof(a) / sizeof((a)[0]))

/* Settings from the command line; constant once the loop runs. */
static struct {
	const char	*host;
	unsigned int	 port;
	const char	*port_file;
	const char	*user;
	const char	*password;
	const char	*account;
	const char	*tls_cert;
	const char	*tls_key;
} opt;

/*
 * Everything /_reset forgets.  The trees hold struct user and struct
 * identity_stat pointers; counts, user_agents, webhook_headers and
 * last_headers are JSON objects kept ready for /_stats.
 */
static struct {
	void			*users_by_identity;
	void			*users_by_sid;
	void			*identity_stats;
	LIST_HEAD(, service)	 services;
	unsigned long		 users;
	unsigned long		 requests;
	unsigned long		 creates;
	unsigned long		 create_requests;
	unsigned long		 connections;
	long			 inflight;
	long			 max_inflight;
	json_t			*counts;
	json_t			*user_agents;
	json_t			*webhook_headers;
	json_t			*last_headers;
	json_t			*faults;
	char			*violations[VIOLATIONS_KEPT];
	unsigned long		 violation_count;
} state;

static struct event_base	*base;
static struct pending_list	 pendings = TAILQ_HEAD_INITIALIZER(pendings);
/* erand48 state for faults, jrand48 state for SIDs. */
static unsigned short		 fault_rng[3];
static unsigned short		 sid_rng[3];
static unsigned long long	 sid_counter;	/* makes SIDs unique */

static void	 usage(void) __attribute__((noreturn));

/* ------------------------------------------------------------------ */
/* small helpers */

/*
 * A JSON string for text that came from the network.  jansson refuses
 * invalid UTF-8, and a JSON document must not carry it, so such text is
 * replaced by a marker instead of failing the whole answer.
 */
static json_t *
json_text(const char *s)
{
	json_t	*j;

	if (s == NULL)
		return json_null();
	if ((j = json_string(s)) == NULL)
		j = json_string("(invalid UTF-8)");
	return j;
}

/* Adds n to the integer member key of obj, creating it at n. */
static void
json_count(json_t *obj, const char *key, json_int_t n)
{
	json_t	*v;

	if ((v = json_object_get(obj, key)) != NULL) {
		if (json_integer_set(v, json_integer_value(v) + n) == -1)
			warnx("json_integer_set failed");
		return;
	}
	if (json_object_set_new(obj, key, json_integer(n)) == -1)
		warnx("cannot count \"%s\"", key);
}

/* Characters (code points) of a string already known to be UTF-8. */
static size_t
utf8_length(const char *s)
{
	size_t	n = 0;

	for (; *s != '\0'; s++)
		if (((unsigned char)*s & 0xC0) != 0x80)
			n++;
	return n;
}

/* Twilio's SID shape: two given letters and 32 hex digits. */
static int
is_sid(const char *s, const char *prefix)
{
	return strlen(s) == SID_LEN && strncmp(s, prefix, 2) == 0 &&
	    strspn(s + 2, "0123456789abcdefABCDEF") == SID_LEN - 2;
}

static double
monotonic_now(void)
{
	struct timespec	ts;

	if (clock_gettime(CLOCK_MONOTONIC, &ts) == -1)
		return 0.0;
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void
iso8601(time_t t, char *buf, size_t size)
{
	struct tm	tm;

	if (gmtime_r(&t, &tm) == NULL ||
	    strftime(buf, size, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
		(void)snprintf(buf, size, "1970-01-01T00:00:00Z");
}

/* PREFIX + 32 hex: random bits (looks), then a counter (uniqueness). */
static void
make_sid(char *buf, size_t size, const char *prefix)
{
	uint32_t	r[3];

	r[0] = (uint32_t)jrand48(sid_rng);
	r[1] = (uint32_t)jrand48(sid_rng);
	r[2] = (uint32_t)jrand48(sid_rng);
	(void)snprintf(buf, size, "%s%08x%08x%08x%08llx", prefix, r[0], r[1],
	    r[2], ++sid_counter & 0xffffffffULL);
}

/* Seeds both generators the way srand48 does, from one integer. */
static void
rng_seed(unsigned long long seed)
{
	fault_rng[0] = 0x330e;
	fault_rng[1] = (unsigned short)seed;
	fault_rng[2] = (unsigned short)(seed >> 16);
	sid_rng[0] = (unsigned short)(seed >> 32);
	sid_rng[1] = (unsigned short)(seed >> 48);
	sid_rng[2] = 0x5a5a ^ (unsigned short)seed;
}

static const char *
method_name(struct evhttp_request *req)
{
	switch (evhttp_request_get_command(req)) {
	case EVHTTP_REQ_GET:
		return "GET";
	case EVHTTP_REQ_POST:
		return "POST";
	default:
		return "OTHER";
	}
}

/* The path of the request, still percent-encoded; never NULL. */
static const char *
request_path(struct evhttp_request *req)
{
	const struct evhttp_uri	*uri;
	const char		*path;

	if ((uri = evhttp_request_get_evhttp_uri(req)) == NULL ||
	    (path = evhttp_uri_get_path(uri)) == NULL)
		return "";
	return path;
}

static const char *
request_query(struct evhttp_request *req)
{
	const struct evhttp_uri	*uri;

	if ((uri = evhttp_request_get_evhttp_uri(req)) == NULL)
		return NULL;
	return evhttp_uri_get_query(uri);
}

/*
 * Copies the request body into a NUL-terminated string.  Returns NULL on
 * allocation failure; *len gets the body length, which may exceed strlen()
 * when the body holds NUL bytes.
 */
static char *
request_body(struct evhttp_request *req, size_t *len)
{
	struct evbuffer	*in = evhttp_request_get_input_buffer(req);
	char		*body;
	ev_ssize_t	 n;

	*len = evbuffer_get_length(in);
	if ((body = malloc(*len + 1)) == NULL)
		return NULL;
	n = evbuffer_copyout(in, body, *len);
	if (n < 0 || (size_t)n != *len) {
		free(body);
		return NULL;
	}
	body[*len] = '\0';
	return body;
}

/* ------------------------------------------------------------------ */
/* stats */

/*
 * Remembers a protocol violation of the current request as
 * "METHOD URI: what", keeping the last VIOLATIONS_KEPT.
 */
static void violation(struct evhttp_request *, const char *, ...)
    __attribute__((format(printf, 2, 3)));

static void
violation(struct evhttp_request *req, const char *fmt, ...)
{
	char		 what[512];
	char		*line;
	size_t		 slot;
	va_list		 ap;

	va_start(ap, fmt);
	(void)vsnprintf(what, sizeof(what), fmt, ap);
	va_end(ap);
	if (asprintf(&line, "%s %s: %s", method_name(req),
	    evhttp_request_get_uri(req), what) == -1) {
		warnx("cannot record a violation");
		return;
	}
	slot = state.violation_count % VIOLATIONS_KEPT;
	free(state.violations[slot]);
	state.violations[slot] = line;
	state.violation_count++;
}

/*
 * Adds value to a set-like JSON object (value -> count), bounded so that a
 * client putting a request id into a header cannot grow it without end.
 */
static void
count_distinct(json_t *obj, const char *value)
{
	json_t	*probe;

	if (json_object_get(obj, value) == NULL &&
	    json_object_size(obj) >= DISTINCT_MAX)
		return;
	/* Keys must be UTF-8 too. */
	if ((probe = json_string(value)) == NULL)
		value = "(invalid UTF-8)";
	json_decref(probe);
	json_count(obj, value, 1);
}

/*
 * Notes what every API request carries: all headers (last_headers), the
 * User-Agent and the webhook header.
 */
static void
record_headers(struct evhttp_request *req)
{
	struct evkeyvalq	*headers;
	struct evkeyval		*kv;
	json_t			*last, *old;
	const char		*value;
	char			*joined;

	headers = evhttp_request_get_input_headers(req);
	if ((last = json_object()) == NULL) {
		warnx("cannot record headers");
		return;
	}
	TAILQ_FOREACH(kv, headers, next) {
		old = json_object_get(last, kv->key);
		if (old != NULL) {
			/* A repeated header reads as one, comma-joined. */
			if (asprintf(&joined, "%s, %s", json_string_value(old),
			    kv->value) == -1)
				continue;
			if (json_object_set_new(last, kv->key,
			    json_text(joined)) == -1)
				warnx("cannot record header %s", kv->key);
			free(joined);
		} else if (json_object_set_new(last, kv->key,
		    json_text(kv->value)) == -1)
			warnx("cannot record header (invalid name?)");
	}
	json_decref(state.last_headers);
	state.last_headers = last;

	if ((value = evhttp_find_header(headers, "User-Agent")) == NULL)
		value = "";
	count_distinct(state.user_agents, value);

	value = evhttp_find_header(headers, "X-Twilio-Webhook-Enabled");
	if (value != NULL) {
		count_distinct(state.webhook_headers, value);
		if (strcmp(value, "true") != 0 && strcmp(value, "false") != 0)
			violation(req, "X-Twilio-Webhook-Enabled: '%s'", value);
	}
}

/* ------------------------------------------------------------------ */
/* faults */

static const struct fault_key *
fault_key_find(const char *name)
{
	size_t	i;

	for (i = 0; i < NELEM(fault_keys); i++)
		if (strcmp(fault_keys[i].name, name) == 0)
			return &fault_keys[i];
	return NULL;
}

static const struct fault *
fault_find(const char *name)
{
	size_t	i;

	for (i = 0; i < NELEM(faults_table); i++)
		if (strcmp(faults_table[i].name, name) == 0)
			return &faults_table[i];
	return NULL;
}

static json_t *
faults_defaults(void)
{
	json_t	*f;
	size_t	 i;
	json_t	*v;

	if ((f = json_object()) == NULL)
		return NULL;
	for (i = 0; i < NELEM(fault_keys); i++) {
		switch (fault_keys[i].kind) {
		case KIND_FRACTION:
			v = json_real(0.0);
			break;
		case KIND_MILLISECONDS:
		case KIND_RATE:
			v = json_integer(0);
			break;
		case KIND_BOOL:
			v = json_false();
			break;
		case KIND_FAULT_NAMES:
			v = json_array();
			break;
		default:
			v = json_null();
			break;
		}
		if (json_object_set_new(f, fault_keys[i].name, v) == -1) {
			json_decref(f);
			return NULL;
		}
	}
	return f;
}

/* Checks one control value; returns NULL if fine, else why not. */
static const char *
fault_check(const struct fault_key *key, json_t *v)
{
	size_t	 i;
	json_t	*item;

	switch (key->kind) {
	case KIND_FRACTION:
		if (!json_is_number(v) || json_number_value(v) < 0.0 ||
		    json_number_value(v) > 1.0)
			return "must be a number from 0 to 1";
		return NULL;
	case KIND_MILLISECONDS:
		if (!json_is_number(v) || json_number_value(v) < 0.0 ||
		    json_number_value(v) > LATENCY_MAX_MS)
			return "must be a number of milliseconds from 0 to "
			    "3600000";
		return NULL;
	case KIND_SECONDS_OR_NULL:
		if (!json_is_null(v) && (!json_is_integer(v) ||
		    json_integer_value(v) < 0 ||
		    json_integer_value(v) > INT_MAX))
			return "must be null or an integer >= 0";
		return NULL;
	case KIND_RATE:
		if (!json_is_number(v) || json_number_value(v) < 0.0)
			return "must be a number >= 0";
		return NULL;
	case KIND_BOOL:
		if (!json_is_boolean(v))
			return "must be true or false";
		return NULL;
	case KIND_STRING_OR_NULL:
		if (!json_is_null(v) && !json_is_string(v))
			return "must be null or a string";
		return NULL;
	case KIND_INTEGER_OR_NULL:
		if (!json_is_null(v) && !json_is_integer(v))
			return "must be null or an integer";
		return NULL;
	case KIND_ANSWER_FIELD:
		if (!json_is_null(v) && (!json_is_string(v) ||
		    (strcmp(json_string_value(v), "sid") != 0 &&
		    strcmp(json_string_value(v), "identity") != 0)))
			return "must be null, \"sid\" or \"identity\"";
		return NULL;
	case KIND_FAULT_NAMES:
		if (!json_is_array(v))
			return "must be an array of fault names";
		json_array_foreach(v, i, item) {
			if (!json_is_string(item) ||
			    fault_find(json_string_value(item)) == NULL)
				return "has an unknown fault name (known: 503 "
				    "500 502 504 429 50063 drop lost 50213 "
				    "401 403 400)";
		}
		return NULL;
	}
	return "unknown kind";
}

static double
fault_number(const char *name)
{
	return json_number_value(json_object_get(state.faults, name));
}

static int
fault_flag(const char *name)
{
	return json_is_true(json_object_get(state.faults, name));
}

/*
 * Chooses the fault of a create: the head of "next" if any, else one draw
 * over the fractions.  Returns NULL for none.
 */
static const struct fault *
fault_choose(void)
{
	static const struct {
		const char	*key;
		const char	*fault;
	} fractions[] = {
		{ "drop", "drop" },
		{ "fail_5xx", "503" },
		{ "rate_429", "429" },
		{ "conflict_50213", "50213" },
		{ "lost_response", "lost" },
	};
	const struct fault	*f;
	json_t			*next;
	double			 r;
	size_t			 i;

	next = json_object_get(state.faults, "next");
	if (json_array_size(next) > 0) {
		f = fault_find(json_string_value(json_array_get(next, 0)));
		if (json_array_remove(next, 0) == -1)
			warnx("cannot pop the next fault");
		return f;
	}
	r = erand48(fault_rng);
	for (i = 0; i < NELEM(fractions); i++) {
		if (r < fault_number(fractions[i].key))
			return fault_find(fractions[i].fault);
		r -= fault_number(fractions[i].key);
	}
	return NULL;
}

/* ------------------------------------------------------------------ */
/* users */

static int
ptr_compare(const void *a, const void *b)
{
	return ((uintptr_t)a > (uintptr_t)b) - ((uintptr_t)a < (uintptr_t)b);
}

static int
user_by_identity_compare(const void *pa, const void *pb)
{
	const struct user	*a = pa, *b = pb;
	int			 c;

	if ((c = ptr_compare(a->service, b->service)) != 0)
		return c;
	return strcmp(a->identity, b->identity);
}

static int
user_by_sid_compare(const void *pa, const void *pb)
{
	const struct user	*a = pa, *b = pb;
	int			 c;

	if ((c = ptr_compare(a->service, b->service)) != 0)
		return c;
	return strcmp(a->sid, b->sid);
}

static int
identity_stat_compare(const void *pa, const void *pb)
{
	const struct identity_stat	*a = pa, *b = pb;

	return strcmp(a->identity, b->identity);
}

static void
user_free(void *p)
{
	struct user	*u = p;

	free(u->friendly_name);
	free(u->attributes);
	free(u->role_sid);
	free(u);
}

static void
identity_stat_free(void *p)
{
	struct identity_stat	*s = p;

	free(s->identity);
	free(s);
}

static void
nothing_free(void *p)
{
	(void)p;
}

/* The service of that name; created when create is set. */
static struct service *
service_get(const char *name, int create)
{
	struct service	*s;

	LIST_FOREACH(s, &state.services, entry)
		if (strcmp(s->name, name) == 0)
			return s;
	if (!create)
		return NULL;
	if ((s = calloc(1, sizeof(*s))) == NULL)
		return NULL;
	(void)snprintf(s->name, sizeof(s->name), "%s", name);
	LIST_INSERT_HEAD(&state.services, s, entry);
	return s;
}

/* Forgets the writes of a service older than the window. */
static void
service_prune(struct service *s, double now)
{
	while (s->len > 0 && s->writes[s->head] <= now - APS_WINDOW_S) {
		s->head = (s->head + 1) % s->cap;
		s->len--;
	}
}

static int
service_add_write(struct service *s, double now)
{
	double	*grown;
	size_t	 cap, i;

	service_prune(s, now);
	if (s->len == s->cap) {
		cap = s->cap == 0 ? 64 : s->cap * 2;
		if ((grown = calloc(cap, sizeof(*grown))) == NULL)
			return -1;
		for (i = 0; i < s->len; i++)
			grown[i] = s->writes[(s->head + i) % s->cap];
		free(s->writes);
		s->writes = grown;
		s->cap = cap;
		s->head = 0;
	}
	s->writes[(s->head + s->len) % s->cap] = now;
	s->len++;
	return 0;
}

/* The per-identity counters, created on first use; NULL on ENOMEM. */
static struct identity_stat *
identity_stat_get(const char *identity)
{
	struct identity_stat	 key, *s, **node;

	/* tfind only reads the key, so lending it a const string is safe. */
	key.identity = (char *)identity;
	if ((node = tfind(&key, &state.identity_stats,
	    identity_stat_compare)) != NULL)
		return *node;
	if ((s = calloc(1, sizeof(*s))) == NULL)
		return NULL;
	if ((s->identity = strdup(identity)) == NULL) {
		free(s);
		return NULL;
	}
	if (tsearch(s, &state.identity_stats, identity_stat_compare) == NULL) {
		identity_stat_free(s);
		return NULL;
	}
	return s;
}

static struct user *
user_find_identity(struct service *svc, const char *identity)
{
	struct user	 key, **node;

	memset(&key, 0, sizeof(key));
	key.service = svc;
	key.identity = identity;
	if ((node = tfind(&key, &state.users_by_identity,
	    user_by_identity_compare)) != NULL)
		return *node;
	return NULL;
}

/*
 * Twilio's rule for {Sid} in a path: a user SID, else an Identity.  An
 * Identity never looks like a user SID (creates refuse that), so the two
 * cannot be confused.
 */
static struct user *
user_find(struct service *svc, const char *sid_or_identity)
{
	struct user	 key, **node;

	if (strlen(sid_or_identity) == SID_LEN) {
		memset(&key, 0, sizeof(key));
		key.service = svc;
		memcpy(key.sid, sid_or_identity, SID_LEN + 1);
		if ((node = tfind(&key, &state.users_by_sid,
		    user_by_sid_compare)) != NULL)
			return *node;
	}
	return user_find_identity(svc, sid_or_identity);
}

/*
 * Stores a new user; form holds the validated parameters.  Returns NULL on
 * ENOMEM, with nothing stored.
 */
static struct user *
user_create(struct service *svc, struct identity_stat *ident, json_t *form)
{
	struct user	*u;
	const char	*v;

	if ((u = calloc(1, sizeof(*u))) == NULL)
		return NULL;
	make_sid(u->sid, sizeof(u->sid), "US");
	u->service = svc;
	u->identity = ident->identity;
	u->created = u->updated = time(NULL);
	if (((v = json_string_value(json_object_get(form, "FriendlyName")))
	    != NULL && (u->friendly_name = strdup(v)) == NULL) ||
	    ((v = json_string_value(json_object_get(form, "Attributes")))
	    != NULL && (u->attributes = strdup(v)) == NULL) ||
	    ((v = json_string_value(json_object_get(form, "RoleSid")))
	    != NULL && (u->role_sid = strdup(v)) == NULL)) {
		user_free(u);
		return NULL;
	}
	if (tsearch(u, &state.users_by_identity,
	    user_by_identity_compare) == NULL) {
		user_free(u);
		return NULL;
	}
	if (tsearch(u, &state.users_by_sid, user_by_sid_compare) == NULL) {
		(void)tdelete(u, &state.users_by_identity,
		    user_by_identity_compare);
		user_free(u);
		return NULL;
	}
	state.users++;
	return u;
}

/* Replaces *field by a copy of the form value, when the form has one. */
static int
user_set(char **field, json_t *form, const char *name)
{
	const char	*v;
	char		*copy;

	if ((v = json_string_value(json_object_get(form, name))) == NULL)
		return 0;
	if ((copy = strdup(v)) == NULL)
		return -1;
	free(*field);
	*field = copy;
	return 0;
}

/* The record Twilio answers with. */
static json_t *
user_json(const struct user *u)
{
	char	 created[32], updated[32], url[512], conversations[600];

	iso8601(u->created, created, sizeof(created));
	iso8601(u->updated, updated, sizeof(updated));
	if (strcmp(u->service->name, DEFAULT_SERVICE) == 0)
		(void)snprintf(url, sizeof(url), "%s/v1/Users/%s", BASE_URL,
		    u->sid);
	else
		(void)snprintf(url, sizeof(url),
		    "%s/v1/Services/%s/Users/%s", BASE_URL, u->service->name,
		    u->sid);
	(void)snprintf(conversations, sizeof(conversations),
	    "%s/Conversations", url);
	return json_pack("{s:s, s:s, s:s, s:s, s:s, s:s?, s:s, s:n, s:n,"
	    " s:s, s:s, s:s, s:{s:s}}",
	    "sid", u->sid,
	    "account_sid", opt.account,
	    "chat_service_sid", strcmp(u->service->name, DEFAULT_SERVICE) == 0 ?
	    DEFAULT_SERVICE_SID : u->service->name,
	    "role_sid", u->role_sid != NULL ? u->role_sid : DEFAULT_ROLE_SID,
	    "identity", u->identity,
	    "friendly_name", u->friendly_name,
	    "attributes", u->attributes != NULL ? u->attributes : "{}",
	    "is_online",
	    "is_notifiable",
	    "date_created", created,
	    "date_updated", updated,
	    "url", url,
	    "links", "user_conversations", conversations);
}

/* ------------------------------------------------------------------ */
/* state */

static int
state_init(void)
{
	LIST_INIT(&state.services);
	state.counts = json_object();
	state.user_agents = json_object();
	state.webhook_headers = json_pack("{s:i, s:i}", "true", 0,
	    "false", 0);
	state.last_headers = json_object();
	state.faults = faults_defaults();
	if (state.counts == NULL || state.user_agents == NULL ||
	    state.webhook_headers == NULL || state.last_headers == NULL ||
	    state.faults == NULL)
		return -1;
	return 0;
}

static void
state_clear(void)
{
	struct service	*s;
	size_t		 i;

	/* The identity tree owns the users; the SID tree only points. */
	tdestroy(state.users_by_sid, nothing_free);
	tdestroy(state.users_by_identity, user_free);
	tdestroy(state.identity_stats, identity_stat_free);
	state.users_by_sid = state.users_by_identity = NULL;
	state.identity_stats = NULL;
	while ((s = LIST_FIRST(&state.services)) != NULL) {
		LIST_REMOVE(s, entry);
		free(s->writes);
		free(s);
	}
	for (i = 0; i < VIOLATIONS_KEPT; i++) {
		free(state.violations[i]);
		state.violations[i] = NULL;
	}
	json_decref(state.counts);
	json_decref(state.user_agents);
	json_decref(state.webhook_headers);
	json_decref(state.last_headers);
	json_decref(state.faults);
	state.counts = state.user_agents = state.webhook_headers = NULL;
	state.last_headers = state.faults = NULL;
	state.users = state.requests = state.creates = 0;
	state.create_requests = state.connections = 0;
	state.violation_count = 0;
}

/* /_reset: requests still waiting for their latency stay in flight. */
static int
state_reset(void)
{
	long	inflight = state.inflight;

	state_clear();
	state.inflight = inflight;
	state.max_inflight = inflight;
	return state_init();
}

/* ------------------------------------------------------------------ */
/* answers */

static void
add_header(struct evkeyvalq *headers, const char *key, const char *value)
{
	if (evhttp_add_header(headers, key, value) == -1)
		warnx("cannot add header %s", key);
}

/*
 * Sends body (consumed) as JSON.  Falls back to a bare 500 when the answer
 * cannot be built, so that every request is answered exactly once.
 */
static void
send_json(struct evhttp_request *req, int status, json_t *body,
    int retry_after)
{
	struct evkeyvalq	*headers;
	struct evbuffer		*buf;
	char			*text, rqid[SID_LEN + 1], seconds[32];
	json_t			*after;

	text = body != NULL ? json_dumps(body, JSON_COMPACT) : NULL;
	json_decref(body);
	if (text == NULL || (buf = evbuffer_new()) == NULL) {
		free(text);
		evhttp_send_error(req, 500, NULL);
		return;
	}
	if (evbuffer_add(buf, text, strlen(text)) == -1) {
		free(text);
		evbuffer_free(buf);
		evhttp_send_error(req, 500, NULL);
		return;
	}
	free(text);
	make_sid(rqid, sizeof(rqid), "RQ");
	headers = evhttp_request_get_output_headers(req);
	add_header(headers, "Content-Type", "application/json; charset=utf-8");
	add_header(headers, "Twilio-Request-Id", rqid);
	after = json_object_get(state.faults, "retry_after");
	if (retry_after && json_is_integer(after)) {
		(void)snprintf(seconds, sizeof(seconds), "%lld",
		    (long long)json_integer_value(after));
		add_header(headers, "Retry-After", seconds);
	}
	/* libevent 2.1 knows no phrase for 429; the others it names well. */
	evhttp_send_reply(req, status, status == 429 ? "Too Many Requests" :
	    NULL, buf);
	evbuffer_free(buf);
}

/*
 * Closes the connection of req without an answer.  If the client has gone
 * already, evhttp detached the request and left it to us to free.
 */
static void
drop_connection(struct evhttp_request *req)
{
	struct evhttp_connection	*evcon;

	if ((evcon = evhttp_request_get_connection(req)) == NULL) {
		evhttp_request_free(req);
		return;
	}
	/* Frees req with the connection; the client sees the socket close. */
	evhttp_connection_free(evcon);
}

/* Fills a with a Twilio error. */
static void
twilio_error(struct answer *a, int status, int code, const char *message)
{
	const char *forced;
	char	more_info[64];

	forced = json_string_value(json_object_get(state.faults, "error_message"));
	if (forced != NULL)
		message = forced;
	(void)snprintf(more_info, sizeof(more_info), ERRORS_URL "%d", code);
	a->outcome = OUTCOME_ANSWER;
	a->status = status;
	a->body = json_pack("{s:i, s:o, s:s, s:i}", "code", code,
	    "message", json_text(message), "more_info", more_info,
	    "status", status);
}

static void
answer_fault(struct answer *a, const struct fault *f)
{
	a->outcome = f->outcome;
	if (f->outcome == OUTCOME_ANSWER) {
		twilio_error(a, f->status, f->code, f->message);
		a->retry_after = f->retry_after;
	}
}

static void
not_found(struct answer *a, struct evhttp_request *req)
{
	char	message[1024];

	(void)snprintf(message, sizeof(message),
	    "The requested resource %s was not found", request_path(req));
	twilio_error(a, 404, 20404, message);
}

/* ------------------------------------------------------------------ */
/* the Twilio API */

/*
 * Checks the Basic credentials of req.  A missing or undecodable header is
 * also a violation; a wrong pair is just a 401 (tests provoke it).
 */
static int
auth_ok(struct evhttp_request *req)
{
	const char	*header, *b64;
	unsigned char	*decoded;
	char		*colon;
	size_t		 len;
	int		 n, ok;

	header = evhttp_find_header(evhttp_request_get_input_headers(req),
	    "Authorization");
	if (header == NULL || strncasecmp(header, "Basic ", 6) != 0) {
		violation(req, "no Basic authorization");
		return 0;
	}
	b64 = header + 6;
	b64 += strspn(b64, " ");
	len = strlen(b64);
	if (len == 0 || len % 4 != 0 || len > 8192) {
		violation(req, "undecodable authorization");
		return 0;
	}
	if ((decoded = malloc(len / 4 * 3 + 1)) == NULL)
		return 0;
	n = EVP_DecodeBlock(decoded, (const unsigned char *)b64, (int)len);
	/* EVP_DecodeBlock counts the padding as decoded zero bytes. */
	if (n >= 0 && b64[len - 1] == '=')
		n--;
	if (n >= 0 && b64[len - 2] == '=')
		n--;
	if (n < 0 || memchr(decoded, '\0', (size_t)n) != NULL) {
		free(decoded);
		violation(req, "undecodable authorization");
		return 0;
	}
	decoded[n] = '\0';
	if ((colon = strchr((char *)decoded, ':')) == NULL) {
		free(decoded);
		violation(req, "undecodable authorization");
		return 0;
	}
	*colon = '\0';
	ok = opt.user == NULL || (strcmp((char *)decoded, opt.user) == 0 &&
	    strcmp(colon + 1, opt.password) == 0);
	free(decoded);
	return ok;
}

/*
 * Parses the form body of req into a JSON object of strings, keeping the
 * first of repeated parameters (a violation).  Returns NULL, having filled
 * a with the 400, when the body is not a UTF-8 form.
 */
static json_t *
form_parse(struct evhttp_request *req, struct answer *a)
{
	struct evkeyvalq	 params;
	struct evkeyval		*kv;
	json_t			*form, *value;
	char			*body;
	size_t			 len;

	if ((body = request_body(req, &len)) == NULL) {
		twilio_error(a, 500, 20500, "Internal server error");
		return NULL;
	}
	/*
	 * evhttp decodes into C strings, so an encoded NUL would silently cut
	 * a value short; refuse it, like a raw one.
	 */
	if (strlen(body) != len || strstr(body, "%00") != NULL) {
		free(body);
		violation(req, "NUL byte in the body");
		twilio_error(a, 400, 20001, "Invalid body encoding");
		return NULL;
	}
	TAILQ_INIT(&params);
	if (evhttp_parse_query_str(body, &params) == -1) {
		free(body);
		violation(req, "body is not a form");
		twilio_error(a, 400, 20001, "Invalid form body");
		return NULL;
	}
	free(body);
	if ((form = json_object()) == NULL) {
		evhttp_clear_headers(&params);
		twilio_error(a, 500, 20500, "Internal server error");
		return NULL;
	}
	TAILQ_FOREACH(kv, &params, next) {
		if (json_object_get(form, kv->key) != NULL) {
			violation(req, "parameter %s repeated", kv->key);
			continue;
		}
		/* jansson refuses invalid UTF-8, in values and in keys. */
		if ((value = json_string(kv->value)) == NULL ||
		    json_object_set_new(form, kv->key, value) == -1) {
			evhttp_clear_headers(&params);
			json_decref(form);
			violation(req, "body is not UTF-8");
			twilio_error(a, 400, 20001, "Invalid body encoding");
			return NULL;
		}
	}
	evhttp_clear_headers(&params);
	return form;
}

/*
 * Validates the optional parameters that create and update share, in the
 * order the Python reference does.  Returns -1 with a filled in.
 */
static int
form_validate(struct evhttp_request *req, json_t *form, int update,
    struct answer *a)
{
	static const char	*allowed[] = {
		"Identity", "FriendlyName", "Attributes", "RoleSid"
	};
	const char		*key, *v;
	json_t			*value, *attributes;
	size_t			 i;
	int			 known;

	json_object_foreach(form, key, value) {
		known = 0;
		for (i = update ? 1 : 0; i < NELEM(allowed); i++)
			if (strcmp(key, allowed[i]) == 0)
				known = 1;
		if (!known)
			violation(req, "unknown parameter %s", key);
	}
	if ((v = json_string_value(json_object_get(form, "RoleSid"))) != NULL &&
	    !is_sid(v, "RL")) {
		twilio_error(a, 400, 20001, "Invalid RoleSid");
		return -1;
	}
	if ((v = json_string_value(json_object_get(form, "Attributes")))
	    != NULL) {
		if (strlen(v) > ATTRIBUTES_MAX) {
			twilio_error(a, 400, 50303, "Attributes too long");
			return -1;
		}
		attributes = json_loads(v, JSON_DECODE_ANY, NULL);
		if (!json_is_object(attributes)) {
			json_decref(attributes);
			twilio_error(a, 400, 50304,
			    "Attributes not valid JSON");
			return -1;
		}
		json_decref(attributes);
	}
	if ((v = json_string_value(json_object_get(form, "FriendlyName")))
	    != NULL && utf8_length(v) > NAME_MAX_CHARS) {
		twilio_error(a, 400, 50003, "Friendly name too long");
		return -1;
	}
	return 0;
}

/*
 * POST .../Users: validation, faults, the rate window, 409 for an existing
 * identity, and the create itself.
 */
static void
api_create(struct service *svc, json_t *form, struct answer *a)
{
	struct identity_stat	*ident;
	const struct fault	*fault;
	const char		*identity, *prefix;
	struct user		*u;
	int			 lost;
	double			 now, aps;

	identity = json_string_value(json_object_get(form, "Identity"));
	if (identity == NULL || *identity == '\0') {
		twilio_error(a, 400, 50204, "Request does not contain "
		    "required \"Identity\" parameter.");
		return;
	}
	if (utf8_length(identity) > NAME_MAX_CHARS) {
		twilio_error(a, 400, 50207, "Identity too long");
		return;
	}
	if (is_sid(identity, "US")) {
		twilio_error(a, 400, 50206,
		    "Identity should not match user SID pattern");
		return;
	}
	prefix = json_string_value(json_object_get(state.faults,
	    "reserved_prefix"));
	if (prefix != NULL && *prefix != '\0' &&
	    strncmp(identity, prefix, strlen(prefix)) == 0) {
		twilio_error(a, 400, 50203, "Identity reserved");
		return;
	}

	if ((ident = identity_stat_get(identity)) == NULL) {
		twilio_error(a, 500, 20500, "Internal server error");
		return;
	}
	ident->create_requests++;
	state.create_requests++;

	lost = 0;
	if ((fault = fault_choose()) != NULL) {
		if (fault->outcome != OUTCOME_LOST) {
			answer_fault(a, fault);
			return;
		}
		lost = 1;
	}

	now = monotonic_now();
	service_prune(svc, now);
	aps = fault_number("aps");
	if (aps > 0.0 && (double)svc->len >= aps * APS_WINDOW_S) {
		twilio_error(a, 429, 50063,
		    "Actions per second limit exceeded");
		a->retry_after = 1;
	} else if (user_find_identity(svc, identity) != NULL) {
		twilio_error(a, 409, 50201, "User already exists");
	} else if ((u = user_create(svc, ident, form)) == NULL) {
		twilio_error(a, 500, 20500, "Internal server error");
	} else {
		ident->creates++;
		state.creates++;
		if (service_add_write(svc, now) == -1)
			warnx("cannot note a write for the rate window");
		a->outcome = OUTCOME_ANSWER;
		a->status = 201;
		a->body = user_json(u);
	}
	if (lost)
		a->outcome = OUTCOME_LOST;
}

/* POST .../Users/{Sid}: the given fields change, date_updated moves. */
static void
api_update(struct user *u, json_t *form, struct answer *a)
{
	if (user_set(&u->friendly_name, form, "FriendlyName") == -1 ||
	    user_set(&u->attributes, form, "Attributes") == -1 ||
	    user_set(&u->role_sid, form, "RoleSid") == -1) {
		twilio_error(a, 500, 20500, "Internal server error");
		return;
	}
	u->updated = time(NULL);
	a->outcome = OUTCOME_ANSWER;
	a->status = 200;
	a->body = user_json(u);
}

/*
 * Splits the path into at most 5 segments (the rest counts as too many).
 * Returns the number of segments, or -1 on ENOMEM; *copy is to be freed.
 */
static int
path_split(const char *path, char **copy, char *seg[], int max)
{
	char	*p, *s;
	int	 n = 0;

	if ((*copy = strdup(path)) == NULL)
		return -1;
	p = *copy;
	if (*p == '/')
		p++;
	while ((s = strsep(&p, "/")) != NULL) {
		if (n == max)
			return max + 1;
		seg[n++] = s;
	}
	return n;
}

/* Routes one API request and fills a; state changes happen here. */
static void
api_route(struct evhttp_request *req, struct answer *a)
{
	struct service	*svc;
	struct user	*u = NULL;
	const char	*accept, *ctype;
	char		*copy = NULL, *seg[6] = { NULL }, *sid = NULL;
	char		 service_name[SID_LEN + 1] = DEFAULT_SERVICE;
	size_t		 sid_len;
	json_t		*form;
	int		 n, post;

	post = evhttp_request_get_command(req) == EVHTTP_REQ_POST;
	record_headers(req);
	if (request_query(req) != NULL)
		violation(req, "unexpected query string");

	if ((n = path_split(request_path(req), &copy, seg, 5)) == -1) {
		twilio_error(a, 500, 20500, "Internal server error");
		return;
	}
	if (n >= 3 && strcmp(seg[0], "v1") == 0 &&
	    strcmp(seg[1], "Services") == 0) {
		if (!is_sid(seg[2], "IS")) {
			free(copy);
			not_found(a, req);
			return;
		}
		/* A copy: the path segments are freed before we are done. */
		(void)snprintf(service_name, sizeof(service_name), "%s",
		    seg[2]);
		/* Drop "Services/{IS..}" so both forms read the same. */
		seg[1] = seg[3];
		seg[2] = seg[4];
		n -= 2;
	}
	if (n < 2 || n > 3 || strcmp(seg[0], "v1") != 0 ||
	    strcmp(seg[1], "Users") != 0) {
		free(copy);
		violation(req, "unknown path");
		not_found(a, req);
		return;
	}

	if (fault_flag("auth_down") || !auth_ok(req)) {
		free(copy);
		twilio_error(a, 401, 20003, "Authenticate");
		return;
	}
	if (fault_flag("forbidden")) {
		free(copy);
		twilio_error(a, 403, 20003, "Permission Denied");
		return;
	}
	accept = evhttp_find_header(evhttp_request_get_input_headers(req),
	    "Accept");
	if (accept == NULL)
		violation(req, "no Accept header");
	else if (strncasecmp(accept, "application/json", 16) != 0)
		violation(req, "Accept header '%s'", accept);

	if (n == 3) {
		if ((sid = evhttp_uridecode(seg[2], 0, &sid_len)) == NULL) {
			free(copy);
			twilio_error(a, 500, 20500, "Internal server error");
			return;
		}
		/* An encoded NUL cannot name anything. */
		svc = service_get(service_name, 0);
		if (svc != NULL && strlen(sid) == sid_len)
			u = user_find(svc, sid);
		free(sid);
	}
	free(copy);
	copy = NULL;

	if (!post) {
		if (n == 3) {
			if (u == NULL)
				not_found(a, req);
			else {
				a->outcome = OUTCOME_ANSWER;
				a->status = 200;
				a->body = user_json(u);
			}
			return;
		}
		violation(req, "GET on the Users list");
		twilio_error(a, 405, 20004, "Method not allowed");
		return;
	}

	ctype = evhttp_find_header(evhttp_request_get_input_headers(req),
	    "Content-Type");
	if (ctype == NULL || strncasecmp(ctype,
	    "application/x-www-form-urlencoded", 33) != 0)
		violation(req, "Content-Type '%s'", ctype != NULL ? ctype : "");
	if ((form = form_parse(req, a)) == NULL)
		return;
	if (form_validate(req, form, n == 3, a) == -1) {
		json_decref(form);
		return;
	}
	if (n == 3) {
		if (u == NULL)
			not_found(a, req);
		else
			api_update(u, form, a);
		json_decref(form);
		return;
	}
	if ((svc = service_get(service_name, 1)) == NULL)
		twilio_error(a, 500, 20500, "Internal server error");
	else
		api_create(svc, form, a);
	json_decref(form);
}

/* The bad_answer fault: a user record that is not the one asked for. */
static void
spoil_answer(struct answer *a)
{
	const char	*field = json_string_value(json_object_get(state.faults,
			    "bad_answer"));
	const char	*identity;
	char		 other[1024];

	if (field == NULL || (a->status != 200 && a->status != 201) ||
	    json_object_get(a->body, "sid") == NULL)
		return;
	if (strcmp(field, "sid") == 0) {
		json_object_set_new(a->body, "sid", json_string("US123"));
		return;
	}
	identity = json_string_value(json_object_get(a->body, "identity"));
	(void)snprintf(other, sizeof(other), "%s-other",
	    identity != NULL ? identity : "");
	json_object_set_new(a->body, "identity", json_string(other));
}

/* The end of every API request: count it, then answer or drop. */
static void
api_process(struct evhttp_request *req)
{
	struct answer	 a;
	char		 key[64];

	memset(&a, 0, sizeof(a));
	api_route(req, &a);
	state.inflight--;
	switch (a.outcome) {
	case OUTCOME_ANSWER:
		spoil_answer(&a);
		(void)snprintf(key, sizeof(key), "%s %d", method_name(req),
		    a.status);
		json_count(state.counts, key, 1);
		send_json(req, a.status, a.body, a.retry_after);
		break;
	case OUTCOME_DROP:
	case OUTCOME_LOST:
		(void)snprintf(key, sizeof(key), "%s %s", method_name(req),
		    a.outcome == OUTCOME_DROP ? "drop" : "lost");
		json_count(state.counts, key, 1);
		json_decref(a.body);
		drop_connection(req);
		break;
	}
}

static void
api_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct pending	*p = arg;

	(void)fd;
	(void)what;
	TAILQ_REMOVE(&pendings, p, entry);
	api_process(p->req);
	event_free(p->timer);
	free(p);
}

/*
 * An API request arrives: counted in flight now, processed once the
 * latency of the moment has passed.
 */
static void
api_receive(struct evhttp_request *req)
{
	struct pending	*p;
	struct timeval	 tv;
	double		 ms;

	state.requests++;
	state.inflight++;
	if (state.inflight > state.max_inflight)
		state.max_inflight = state.inflight;

	ms = fault_number("latency_ms");
	tv.tv_sec = (time_t)(ms / 1000.0);
	tv.tv_usec = (suseconds_t)((ms - (double)tv.tv_sec * 1000.0) * 1000.0);
	if ((p = calloc(1, sizeof(*p))) == NULL ||
	    (p->timer = evtimer_new(base, api_timer_cb, p)) == NULL ||
	    evtimer_add(p->timer, &tv) == -1) {
		if (p != NULL && p->timer != NULL)
			event_free(p->timer);
		free(p);
		warnx("cannot schedule an answer; answering now");
		api_process(req);
		return;
	}
	p->req = req;
	TAILQ_INSERT_TAIL(&pendings, p, entry);
}

/* ------------------------------------------------------------------ */
/* control */

struct walk {
	json_t	*creates;
	json_t	*duplicates;
	json_t	*requests;
};

static void
stats_walk(const void *node, VISIT which, void *closure)
{
	const struct identity_stat	*s;
	struct walk			*w = closure;

	if (which != postorder && which != leaf)
		return;
	s = *(struct identity_stat * const *)node;
	if (s->creates > 0 && w->creates != NULL)
		json_count(w->creates, s->identity, (json_int_t)s->creates);
	if (s->creates > 1)
		json_count(w->duplicates, s->identity, (json_int_t)s->creates);
	if (s->create_requests > 0 && w->requests != NULL)
		json_count(w->requests, s->identity,
		    (json_int_t)s->create_requests);
}

static int
string_compare(const void *a, const void *b)
{
	return strcmp(*(const char * const *)a, *(const char * const *)b);
}

static json_t *
stats_json(int brief)
{
	struct walk	 w;
	json_t		*stats, *violations, *agents;
	const char	**names, *key;
	json_t		*value;
	size_t		 i, n, first;

	memset(&w, 0, sizeof(w));
	w.duplicates = json_object();
	if (!brief) {
		w.creates = json_object();
		w.requests = json_object();
	}
	violations = json_array();
	agents = json_array();
	if (w.duplicates == NULL || violations == NULL || agents == NULL ||
	    (!brief && (w.creates == NULL || w.requests == NULL)))
		goto fail;
	twalk_r(state.identity_stats, stats_walk, &w);

	n = state.violation_count < VIOLATIONS_KEPT ?
	    state.violation_count : VIOLATIONS_KEPT;
	first = state.violation_count - n;
	for (i = 0; i < n; i++)
		if (json_array_append_new(violations, json_text(
		    state.violations[(first + i) % VIOLATIONS_KEPT])) == -1)
			goto fail;

	n = json_object_size(state.user_agents);
	if ((names = calloc(n + 1, sizeof(*names))) == NULL)
		goto fail;
	i = 0;
	json_object_foreach(state.user_agents, key, value)
		names[i++] = key;
	qsort(names, n, sizeof(*names), string_compare);
	for (i = 0; i < n; i++)
		if (json_array_append_new(agents,
		    json_string(names[i])) == -1) {
			free(names);
			goto fail;
		}
	free(names);

	stats = json_pack("{s:I, s:O, s:I, s:I, s:o*, s:o, s:I, s:o*, s:o,"
	    " s:I, s:o, s:O, s:O, s:I, s:I, s:I, s:O}",
	    "requests", (json_int_t)state.requests,
	    "counts", state.counts,
	    "users", (json_int_t)state.users,
	    "creates", (json_int_t)state.creates,
	    "creates_by_identity", w.creates,
	    "duplicate_creates", w.duplicates,
	    "create_requests", (json_int_t)state.create_requests,
	    "create_requests_by_identity", w.requests,
	    "violations", violations,
	    "violation_count", (json_int_t)state.violation_count,
	    "user_agents", agents,
	    "webhook_headers", state.webhook_headers,
	    "last_headers", state.last_headers,
	    "inflight", (json_int_t)state.inflight,
	    "max_inflight", (json_int_t)state.max_inflight,
	    "connections", (json_int_t)state.connections,
	    "faults", state.faults);
	/* json_pack steals "o" references even when it fails. */
	return stats;
fail:
	json_decref(w.creates);
	json_decref(w.duplicates);
	json_decref(w.requests);
	json_decref(violations);
	json_decref(agents);
	return NULL;
}

/*
 * POST /_control: all keys are checked before any is applied, so a bad
 * update changes nothing.
 */
static void
control_update(struct evhttp_request *req)
{
	const struct fault_key	*fk;
	const char		*key, *why;
	json_t			*update, *value, *unknown;
	json_error_t		 error;
	char			*body, message[256];
	size_t			 len;

	if ((body = request_body(req, &len)) == NULL) {
		evhttp_send_error(req, 500, NULL);
		return;
	}
	if (len == 0)
		update = json_object();
	else
		update = json_loadb(body, len, 0, &error);
	free(body);
	if (!json_is_object(update)) {
		json_decref(update);
		send_json(req, 400, json_pack("{s:s}", "error",
		    "the body must be a JSON object"), 0);
		return;
	}
	if ((unknown = json_array()) == NULL) {
		json_decref(update);
		evhttp_send_error(req, 500, NULL);
		return;
	}
	json_object_foreach(update, key, value)
		if (fault_key_find(key) == NULL &&
		    json_array_append_new(unknown, json_string(key)) == -1)
			warnx("cannot list an unknown key");
	if (json_array_size(unknown) > 0) {
		json_decref(update);
		send_json(req, 400, json_pack("{s:o}", "unknown", unknown), 0);
		return;
	}
	json_decref(unknown);
	json_object_foreach(update, key, value) {
		if ((fk = fault_key_find(key)) == NULL)
			continue;	/* refused above */
		if ((why = fault_check(fk, value)) != NULL) {
			(void)snprintf(message, sizeof(message), "%s %s", key,
			    why);
			json_decref(update);
			send_json(req, 400, json_pack("{s:s}", "error",
			    message), 0);
			return;
		}
	}
	json_object_foreach(update, key, value) {
		/* A copy of "next": it is consumed in place. */
		if (strcmp(key, "next") == 0)
			value = json_deep_copy(value);
		else
			json_incref(value);
		if (json_object_set_new(state.faults, key, value) == -1)
			warnx("cannot set fault %s", key);
		if (strcmp(key, "seed") == 0 && json_is_integer(value))
			rng_seed((unsigned long long)json_integer_value(value));
	}
	json_decref(update);
	send_json(req, 200, json_incref(state.faults), 0);
}

static void
control_dispatch(struct evhttp_request *req, const char *path)
{
	const char	*query;
	int		 post, brief;

	post = evhttp_request_get_command(req) == EVHTTP_REQ_POST;
	if (!post && strcmp(path, "/_stats") == 0) {
		query = request_query(req);
		brief = query != NULL && strstr(query, "brief=1") != NULL;
		send_json(req, 200, stats_json(brief), 0);
	} else if (post && strcmp(path, "/_control") == 0)
		control_update(req);
	else if (post && strcmp(path, "/_reset") == 0) {
		if (state_reset() == -1)
			warnx("cannot reset fully (out of memory?)");
		send_json(req, 200, json_pack("{s:b}", "ok", 1), 0);
	} else
		send_json(req, 404, json_pack("{s:s}", "message",
		    "no such control path"), 0);
}

/* ------------------------------------------------------------------ */
/* server */

static void
http_dispatch(struct evhttp_request *req, void *arg)
{
	const char	*path = request_path(req);

	(void)arg;
	if (strncmp(path, "/_", 2) == 0)
		control_dispatch(req, path);
	else
		api_receive(req);
}

/*
 * evhttp asks for the bufferevent of each accepted connection here, which
 * makes this the place to count connections and to put TLS in front.
 */
static struct bufferevent *
new_connection(struct event_base *evbase, void *arg)
{
	SSL_CTX			*ctx = arg;
	SSL			*ssl;
	struct bufferevent	*bev;

	state.connections++;
	if (ctx == NULL)
		return bufferevent_socket_new(evbase, -1,
		    BEV_OPT_CLOSE_ON_FREE);
	if ((ssl = SSL_new(ctx)) == NULL) {
		warnx("SSL_new failed");
		return NULL;
	}
	bev = bufferevent_openssl_socket_new(evbase, -1, ssl,
	    BUFFEREVENT_SSL_ACCEPTING, BEV_OPT_CLOSE_ON_FREE);
	if (bev == NULL) {
		warnx("bufferevent_openssl_socket_new failed");
		return NULL;
	}
	/* Clients often close without close_notify; that is not an error. */
	bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
	return bev;
}

static SSL_CTX *
tls_context(const char *cert, const char *key)
{
	SSL_CTX	*ctx;

	if ((ctx = SSL_CTX_new(TLS_server_method())) == NULL ||
	    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1 ||
	    SSL_CTX_use_certificate_chain_file(ctx, cert) != 1 ||
	    SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1 ||
	    SSL_CTX_check_private_key(ctx) != 1) {
		ERR_print_errors_fp(stderr);
		SSL_CTX_free(ctx);
		return NULL;
	}
	return ctx;
}

static int
bound_port(struct evhttp_bound_socket *handle)
{
	struct sockaddr_storage	ss;
	socklen_t		len = sizeof(ss);

	if (getsockname(evhttp_bound_socket_get_fd(handle),
	    (struct sockaddr *)&ss, &len) == -1)
		return -1;
	if (ss.ss_family == AF_INET)
		return ntohs(((struct sockaddr_in *)&ss)->sin_port);
	if (ss.ss_family == AF_INET6)
		return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
	return -1;
}

/* Tests poll for the file: it appears whole or not at all. */
static int
write_port_file(const char *path, int port)
{
	char	*tmp;
	FILE	*f;
	int	 rc = 0;

	if (asprintf(&tmp, "%s.tmp.%ld", path, (long)getpid()) == -1)
		return -1;
	if ((f = fopen(tmp, "w")) == NULL) {
		free(tmp);
		return -1;
	}
	if (fprintf(f, "%d\n", port) < 0)
		rc = -1;
	if (fclose(f) == EOF)
		rc = -1;
	if (rc == 0 && rename(tmp, path) == -1)
		rc = -1;
	if (rc == -1)
		(void)unlink(tmp);
	free(tmp);
	return rc;
}

static void
on_signal(evutil_socket_t sig, short what, void *arg)
{
	(void)what;
	(void)arg;
	(void)sig;
	if (event_base_loopbreak(base) == -1)
		warnx("event_base_loopbreak failed");
}

static void
usage(void)
{
	fprintf(stderr, "usage: fake-twilio [--host H] [--port P] "
	    "[--port-file F] [--user U --password P]\n"
	    "                   [--account AC...] "
	    "[--tls-cert FILE --tls-key FILE]\n");
	exit(2);
}

static void
parse_options(int argc, char *argv[])
{
	static const struct option longopts[] = {
		{ "host", required_argument, NULL, 'H' },
		{ "port", required_argument, NULL, 'p' },
		{ "port-file", required_argument, NULL, 'f' },
		{ "user", required_argument, NULL, 'u' },
		{ "password", required_argument, NULL, 'P' },
		{ "account", required_argument, NULL, 'a' },
		{ "tls-cert", required_argument, NULL, 'c' },
		{ "tls-key", required_argument, NULL, 'k' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	json_t	*probe;
	char	*end;
	long	 port;
	int	 ch;

	opt.host = "127.0.0.1";
	opt.account = DEFAULT_ACCOUNT;
	while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		switch (ch) {
		case 'H':
			opt.host = optarg;
			break;
		case 'p':
			errno = 0;
			port = strtol(optarg, &end, 10);
			if (errno != 0 || *optarg == '\0' || *end != '\0' ||
			    port < 0 || port > 65535) {
				warnx("bad port: %s", optarg);
				usage();
			}
			opt.port = (unsigned int)port;
			break;
		case 'f':
			opt.port_file = optarg;
			break;
		case 'u':
			opt.user = optarg;
			break;
		case 'P':
			opt.password = optarg;
			break;
		case 'a':
			opt.account = optarg;
			break;
		case 'c':
			opt.tls_cert = optarg;
			break;
		case 'k':
			opt.tls_key = optarg;
			break;
		default:
			usage();
		}
	}
	if (optind != argc)
		usage();
	if ((opt.user == NULL) != (opt.password == NULL)) {
		warnx("--user and --password go together");
		usage();
	}
	if ((opt.tls_cert == NULL) != (opt.tls_key == NULL)) {
		warnx("--tls-cert and --tls-key go together");
		usage();
	}
	if ((probe = json_string(opt.account)) == NULL) {
		warnx("--account must be UTF-8");
		usage();
	}
	json_decref(probe);
}

int
main(int argc, char *argv[])
{
	struct evhttp			*http;
	struct evhttp_bound_socket	*handle;
	struct event			*sigterm, *sigint;
	struct pending			*p;
	SSL_CTX				*ssl_ctx = NULL;
	unsigned long long		 seed;
	int				 port;

	parse_options(argc, argv);
	/* Unseeded runs differ from each other; "seed" makes them repeat. */
	if (getentropy(&seed, sizeof(seed)) == -1)
		seed = (unsigned long long)time(NULL) ^
		    ((unsigned long long)getpid() << 32);
	rng_seed(seed);

	/* A client that goes away must not kill us on the next write. */
	if (signal(SIGPIPE, SIG_IGN) == SIG_ERR)
		err(1, "signal");
	if (opt.tls_cert != NULL &&
	    (ssl_ctx = tls_context(opt.tls_cert, opt.tls_key)) == NULL)
		errx(1, "cannot load %s and %s", opt.tls_cert, opt.tls_key);
	if (state_init() == -1)
		errx(1, "out of memory");

	if ((base = event_base_new()) == NULL)
		errx(1, "event_base_new failed");
	if ((http = evhttp_new(base)) == NULL)
		errx(1, "evhttp_new failed");
	evhttp_set_allowed_methods(http, EVHTTP_REQ_GET | EVHTTP_REQ_POST);
	evhttp_set_max_body_size(http, BODY_MAX);
	evhttp_set_timeout(http, HTTP_TIMEOUT_S);
	evhttp_set_bevcb(http, new_connection, ssl_ctx);
	evhttp_set_gencb(http, http_dispatch, NULL);
	if ((handle = evhttp_bind_socket_with_handle(http, opt.host,
	    (ev_uint16_t)opt.port)) == NULL)
		errx(1, "cannot listen on %s:%u", opt.host, opt.port);
	if ((port = bound_port(handle)) == -1)
		err(1, "getsockname");
	if (opt.port_file != NULL && write_port_file(opt.port_file, port) == -1)
		err(1, "cannot write %s", opt.port_file);

	if ((sigterm = evsignal_new(base, SIGTERM, on_signal, NULL)) == NULL ||
	    (sigint = evsignal_new(base, SIGINT, on_signal, NULL)) == NULL ||
	    evsignal_add(sigterm, NULL) == -1 ||
	    evsignal_add(sigint, NULL) == -1)
		errx(1, "cannot handle signals");

	if (printf("fake-twilio listening on %s:%d\n", opt.host, port) < 0 ||
	    fflush(stdout) == EOF)
		err(1, "stdout");

	if (event_base_dispatch(base) == -1)
		errx(1, "event_base_dispatch failed");

	/*
	 * Requests still waiting for their latency: the ones whose client
	 * left are ours to free; evhttp_free() frees the others with their
	 * connections.
	 */
	while ((p = TAILQ_FIRST(&pendings)) != NULL) {
		TAILQ_REMOVE(&pendings, p, entry);
		if (evhttp_request_get_connection(p->req) == NULL)
			evhttp_request_free(p->req);
		event_free(p->timer);
		free(p);
	}
	evhttp_free(http);
	event_free(sigterm);
	event_free(sigint);
	event_base_free(base);
	SSL_CTX_free(ssl_ctx);
	state_clear();
	libevent_global_shutdown();
	return 0;
}
