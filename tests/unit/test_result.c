/*
 * test_result.c: result.c against SPEC §4.2 and docs/protocol.md, section
 * 3: the keys and values of a result for every status, the user record
 * stored and the dead entry {request, result}, in both formats; and the
 * tables of docs/protocol.md ($top_srcdir) against what the code knows:
 * every status (with whether it carries a user) and every error.code
 * (with its status), in both directions.
 *
 * What result.c wrote is read back with msgpack-c and jansson's own
 * parser, not with codec.c, so that the codec is not testing itself; a
 * msgpack bin reads back as {"bin": bytes}, to tell it from a str.
 */
#include "config.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <CUnit/Basic.h>
#include <msgpack.h>

#include "daemon.h"	/* stats_counter_names, for the counters' tie */
#include "doc.h"

#define NROWS(a)	(sizeof(a) / sizeof((a)[0]))
#define SID		"US0123456789abcdef0123456789abcdef"
/* 2025-01-31T09:12:45.123Z and a second and a half later (the fraction
 * is cut to milliseconds, not rounded). */
#define RECEIVED	1738314765.1235
#define RECEIVED_AT	"2025-01-31T09:12:45.123Z"
#define COMPLETED	1738314766.6239
#define COMPLETED_AT	"2025-01-31T09:12:46.623Z"

static void
check(int ok, int line, const char *fmt, ...)
{
	char	 what[512];
	va_list	 ap;

	va_start(ap, fmt);
	(void)vsnprintf(what, sizeof(what), fmt, ap);
	va_end(ap);
	CU_assertImplementation(ok ? CU_TRUE : CU_FALSE, line, what, __FILE__,
	    "", CU_FALSE);
}
#define CHECK(cond, ...)	check((cond) != 0, __LINE__, __VA_ARGS__)

static const char *const formats[] = { "msgpack", "JSON" };

/* ------------------------------------------------------------------ */
/* reading back what result.c wrote */

static json_t *
from_object(const msgpack_object *o)
{
	json_t *v = NULL;
	uint32_t i;

	switch (o->type) {
	case MSGPACK_OBJECT_NIL:
		return json_null();
	case MSGPACK_OBJECT_BOOLEAN:
		return json_boolean(o->via.boolean);
	case MSGPACK_OBJECT_POSITIVE_INTEGER:
		return json_integer((json_int_t)o->via.u64);
	case MSGPACK_OBJECT_NEGATIVE_INTEGER:
		return json_integer((json_int_t)o->via.i64);
	case MSGPACK_OBJECT_STR:
		return json_stringn_nocheck(o->via.str.ptr, o->via.str.size);
	case MSGPACK_OBJECT_BIN:
		if ((v = json_object()) != NULL)
			json_object_set_new_nocheck(v, "bin",
			    json_stringn_nocheck(o->via.bin.ptr,
			    o->via.bin.size));
		return v;
	case MSGPACK_OBJECT_ARRAY:
		v = json_array();
		for (i = 0; v != NULL && i < o->via.array.size; i++)
			json_array_append_new(v,
			    from_object(&o->via.array.ptr[i]));
		return v;
	case MSGPACK_OBJECT_MAP:
		v = json_object();
		for (i = 0; v != NULL && i < o->via.map.size; i++) {
			const msgpack_object *k = &o->via.map.ptr[i].key;

			if (k->type != MSGPACK_OBJECT_STR) {
				json_decref(v);
				return NULL;
			}
			json_object_setn_new_nocheck(v, k->via.str.ptr,
			    k->via.str.size,
			    from_object(&o->via.map.ptr[i].val));
		}
		return v;
	default:
		return NULL;
	}
}

/* One whole value in fmt, or NULL. */
static json_t *
read_back(enum results_format fmt, const char *buf, size_t len)
{
	msgpack_unpacked u;
	size_t off = 0;
	json_t *v = NULL;

	if (buf == NULL)
		return NULL;
	if (fmt == FORMAT_JSON)
		return json_loadb(buf, len, JSON_DECODE_ANY, NULL);
	msgpack_unpacked_init(&u);
	if (msgpack_unpack_next(&u, buf, len, &off) == MSGPACK_UNPACK_SUCCESS &&
	    off == len)
		v = from_object(&u.data);
	msgpack_unpacked_destroy(&u);
	return v;
}

/* The keys of object v, in order, space-separated, into buf. */
static const char *
keys_of(const json_t *v, char *buf, size_t size)
{
	const char *key;
	json_t *value;
	size_t len = 0;

	buf[0] = '\0';
	json_object_foreach ((json_t *)v, key, value)
		len += (size_t)snprintf(buf + len, len < size ? size - len : 0,
		    "%s%s", len ? " " : "", key);
	return buf;
}

static const char *
string_of(const json_t *v, const char *key)
{
	return json_string_value(json_object_get(v, key));
}

/* ------------------------------------------------------------------ */
/* statuses and error codes */

/* SPEC §4.2's statuses, those with a user first. */
static const struct {
	enum result_status	 status;
	const char		*name;
	int			 success;
} statuses[] = {
	{ RESULT_CREATED, "created", 1 },
	{ RESULT_EXISTS, "exists", 1 },
	{ RESULT_UPDATED, "updated", 1 },
	{ RESULT_DUPLICATE, "duplicate", 1 },
	{ RESULT_INVALID, "invalid", 0 },
	{ RESULT_FAILED, "failed", 0 },
};

static void
test_statuses(void)
{
	const char *const *counters;
	size_t i, j, n;
	int found;

	CU_ASSERT_EQUAL(RESULT_STATUS_COUNT, NROWS(statuses));
	for (i = 0; i < NROWS(statuses); i++) {
		CHECK(strcmp(result_status_name(statuses[i].status),
		    statuses[i].name) == 0, "status %zu is %s, want %s", i,
		    result_status_name(statuses[i].status), statuses[i].name);
		CHECK(result_success(statuses[i].status) == statuses[i].success,
		    "%s: success %d", statuses[i].name,
		    result_success(statuses[i].status));
	}
	CU_ASSERT_PTR_NULL(result_status_name(RESULT_STATUS_COUNT));
	CU_ASSERT_FALSE(result_success(RESULT_STATUS_COUNT));

	/* Each status names a counter of `show stats` (job.c adds to it). */
	counters = stats_counter_names(&n);
#define COUNTER_OF(id, name, success, counter)				\
	for (found = 0, j = 0; j < n; j++)				\
		found |= strcmp(counters[j], #counter) == 0;		\
	CHECK(found, "status %s: no counter %s", name, #counter);
	RESULT_STATUSES(COUNTER_OF)
#undef COUNTER_OF
}

static void
test_error_codes(void)
{
	const char *code;
	size_t i;

	for (i = 0; (code = result_failure_codes[i]) != NULL; i++) {
		CHECK(result_error_known(RESULT_FAILED, code), "%s", code);
		CHECK(!result_error_known(RESULT_INVALID, code), "%s", code);
	}
	CU_ASSERT_EQUAL(i, 4);
	for (i = REQ_OK + 1; (code = request_error_code(i)) != NULL; i++) {
		CHECK(result_error_known(RESULT_INVALID, code), "%s", code);
		CHECK(!result_error_known(RESULT_FAILED, code), "%s", code);
	}
	CU_ASSERT_EQUAL(i, REQ_REPLY_TO_FORBIDDEN + 1);
	CU_ASSERT_FALSE(result_error_known(RESULT_FAILED, "no_such_code"));
	CU_ASSERT_FALSE(result_error_known(RESULT_FAILED, NULL));
	CU_ASSERT_FALSE(result_error_known(RESULT_CREATED, "twilio_rejected"));
}

static void
test_time(void)
{
	char buf[32];

	result_format_time(RECEIVED, buf, sizeof(buf));
	CU_ASSERT_STRING_EQUAL(buf, RECEIVED_AT);
	result_format_time(COMPLETED, buf, sizeof(buf));
	CU_ASSERT_STRING_EQUAL(buf, COMPLETED_AT);
	result_format_time(0.9999, buf, sizeof(buf));
	CU_ASSERT_STRING_EQUAL(buf, "1970-01-01T00:00:00.999Z");
	/* The same second again, from the cache. */
	result_format_time(1738314765.0, buf, sizeof(buf));
	CU_ASSERT_STRING_EQUAL(buf, "2025-01-31T09:12:45.000Z");
	result_format_time(RECEIVED, buf, 24);	/* too short: empty */
	CU_ASSERT_STRING_EQUAL(buf, "");
}

/* ------------------------------------------------------------------ */
/* results */

struct row {
	const char		*name;
	enum result_status	 status;
	const char		*identity;	/* NULL: none */
	const char		*code;		/* invalid and failed */
	const char		*message;
	long			 twilio_code, http_status;
	int			 attempts;
	int			 from_socket;
	int			 with_user;
	int			 packed;	/* record given encoded */
	const char		*raw;		/* NULL: a valid request */
	/* expected */
	const char		*keys;		/* of the result, in order */
	const char		*error_keys;	/* of its error */
};

static const char valid_request[] = "{\"Identity\":\"alice\"}";

static const struct row rows[] = {
	{ "created", RESULT_CREATED, "alice", NULL, NULL, 0, 0, 1, 0, 1, 0,
	    NULL, "request_id identity status attempts source received_at "
	    "completed_at user", NULL },
	{ "created, from the socket", RESULT_CREATED, "alice", NULL, NULL, 0,
	    0, 3, 1, 1, 0, NULL, "request_id identity status attempts source "
	    "received_at completed_at user", NULL },
	{ "created, record packed straight", RESULT_CREATED, "alice", NULL,
	    NULL, 0, 0, 1, 0, 1, 1, NULL, "request_id identity status "
	    "attempts source received_at completed_at user", NULL },
	{ "exists", RESULT_EXISTS, "alice", NULL, NULL, 0, 0, 2, 0, 1, 0,
	    NULL, "request_id identity status attempts source received_at "
	    "completed_at user", NULL },
	{ "updated", RESULT_UPDATED, "alice", NULL, NULL, 0, 0, 3, 0, 1, 0,
	    NULL, "request_id identity status attempts source received_at "
	    "completed_at user", NULL },
	{ "duplicate", RESULT_DUPLICATE, "alice", NULL, NULL, 0, 0, 0, 0, 1,
	    0, NULL, "request_id identity status attempts source received_at "
	    "completed_at user", NULL },
	{ "invalid", RESULT_INVALID, "alice", "unknown_field",
	    "unknown field \"Nickname\"", 0, 0, 0, 0, 0, 0,
	    "{\"Identity\":\"alice\",\"Nickname\":\"al\"}",
	    "request_id identity status error attempts source received_at "
	    "completed_at", "code message" },
	{ "invalid, no identity", RESULT_INVALID, NULL, "missing_identity",
	    "Identity is required", 0, 0, 0, 1, 0, 0, "{}",
	    "request_id status error attempts source received_at "
	    "completed_at", "code message" },
	{ "invalid, identity not UTF-8", RESULT_INVALID, "al\xffice",
	    "bad_utf8", "Identity is not valid UTF-8", 0, 0, 0, 0, 0, 0,
	    NULL, "request_id status error "
	    "attempts source received_at completed_at", "code message" },
	{ "failed, rejected", RESULT_FAILED, "alice", "twilio_rejected",
	    "Invalid role", 50001, 400, 1, 0, 0, 0, NULL,
	    "request_id identity status error attempts source received_at "
	    "completed_at", "code message twilio_code http_status" },
	{ "failed, retries exhausted", RESULT_FAILED, "alice",
	    "retries_exhausted", "gave up after 5 attempts; last error: "
	    "timeout", 0, 0, 5, 0, 0, 0, NULL, "request_id identity status "
	    "error attempts source received_at completed_at", "code message" },
	{ "failed, invalid answer", RESULT_FAILED, "alice",
	    "twilio_invalid_answer", "not this Identity's user", 0, 201, 1, 0,
	    0, 0, NULL, "request_id identity status error attempts source "
	    "received_at completed_at", "code message http_status" },
};

static json_t *
sample_user(const char *identity)
{
	return json_pack("{s:s, s:s, s:n, s:{s:s}}", "sid", SID, "identity",
	    identity, "is_online", "links", "user_conversations",
	    "https://conversations.twilio.com/v1/Users/" SID "/Conversations");
}

static void
outcome_of(const struct row *r, enum results_format fmt, json_t *user,
    struct result_outcome *o)
{
	memset(o, 0, sizeof(*o));
	o->status = r->status;
	o->request_id = "req-1";
	o->identity = r->identity;
	o->error_code = r->code;
	o->error_message = r->message;
	o->twilio_code = r->twilio_code;
	o->http_status = r->http_status;
	o->attempts = r->attempts;
	o->from_socket = r->from_socket;
	o->received_wall = RECEIVED;
	o->completed_wall = COMPLETED;
	o->user = r->packed ? NULL : user;
	o->raw = r->raw != NULL ? r->raw : valid_request;
	o->rawlen = strlen(o->raw);
	o->format = fmt;
}

/* The result's values, against the row and SPEC §4.2. */
static void
check_result(const struct row *r, const char *how, const json_t *v,
    const json_t *user)
{
	const json_t *e = json_object_get(v, "error");
	char keys[256];

	CHECK(json_is_object(v), "%s (%s): no map", r->name, how);
	CHECK(strcmp(keys_of(v, keys, sizeof(keys)), r->keys) == 0,
	    "%s (%s): keys \"%s\", want \"%s\"", r->name, how, keys, r->keys);
	CHECK(strcmp(string_of(v, "request_id"), "req-1") == 0, "%s (%s)",
	    r->name, how);
	if (json_object_get(v, "identity") != NULL)
		CHECK(strcmp(string_of(v, "identity"), r->identity) == 0,
		    "%s (%s): identity", r->name, how);
	CHECK(strcmp(string_of(v, "status"),
	    result_status_name(r->status)) == 0, "%s (%s): status %s", r->name,
	    how, string_of(v, "status"));
	CHECK(json_integer_value(json_object_get(v, "attempts")) ==
	    r->attempts && json_is_integer(json_object_get(v, "attempts")),
	    "%s (%s): attempts", r->name, how);
	CHECK(strcmp(string_of(v, "source"), r->from_socket ? "socket" :
	    "redis") == 0, "%s (%s): source", r->name, how);
	CHECK(strcmp(string_of(v, "received_at"), RECEIVED_AT) == 0,
	    "%s (%s): received_at %s", r->name, how,
	    string_of(v, "received_at"));
	CHECK(strcmp(string_of(v, "completed_at"), COMPLETED_AT) == 0,
	    "%s (%s): completed_at %s", r->name, how,
	    string_of(v, "completed_at"));
	if (r->error_keys != NULL) {
		CHECK(json_is_object(e) && strcmp(keys_of(e, keys,
		    sizeof(keys)), r->error_keys) == 0,
		    "%s (%s): error keys \"%s\", want \"%s\"", r->name, how,
		    keys, r->error_keys);
		CHECK(strcmp(string_of(e, "code"), r->code) == 0 &&
		    strcmp(string_of(e, "message"), r->message) == 0,
		    "%s (%s): error code and message", r->name, how);
		CHECK(json_integer_value(json_object_get(e, "twilio_code")) ==
		    r->twilio_code && json_integer_value(json_object_get(e,
		    "http_status")) == r->http_status, "%s (%s): codes",
		    r->name, how);
	}
	if (user != NULL)
		CHECK(json_equal(json_object_get(v, "user"), user),
		    "%s (%s): user", r->name, how);
}

/* The dead entry of a result that is not a success: its request as read
 * back from the entry, and its result checked. */
static json_t *
dead_request(const struct row *r, enum results_format fmt,
    const struct result *res)
{
	json_t *d = read_back(fmt, res->dead, res->deadlen), *req;
	char keys[64];

	CHECK(json_is_object(d), "%s (%s): dead entry unreadable", r->name,
	    formats[fmt]);
	if (d == NULL)
		return NULL;
	/* {request, result}, but a msgpack bin comes after the result. */
	keys_of(d, keys, sizeof(keys));
	CHECK(strcmp(keys, "request result") == 0 ||
	    strcmp(keys, "result request") == 0, "%s (%s): dead keys %s",
	    r->name, formats[fmt], keys);
	check_result(r, "dead entry", json_object_get(d, "result"), NULL);
	req = json_incref(json_object_get(d, "request"));
	json_decref(d);
	return req;
}

static void
test_results(void)
{
	size_t i;
	int fmt;

	for (i = 0; i < NROWS(rows); i++)
		for (fmt = FORMAT_MSGPACK; fmt <= FORMAT_JSON; fmt++) {
			const struct row *r = &rows[i];
			struct result_outcome o;
			struct result res;
			json_t *user = r->with_user ? sample_user("alice") :
			    NULL, *v, *req;
			char how[64];

			memset(&res, 0, sizeof(res));
			if (r->packed)
				CU_ASSERT_FATAL(codec_encode(user, fmt,
				    &res.record, &res.recordlen) == 0);
			outcome_of(r, fmt, user, &o);
			CHECK(result_build(&o, &res) == 0, "%s (%s): built",
			    r->name, formats[fmt]);
			snprintf(how, sizeof(how), "%s, encoded", formats[fmt]);
			v = read_back(fmt, res.enc, res.enclen);
			check_result(r, how, v, user);
			json_decref(v);

			/* The map, a socket client's answer: the same, and
			 * without the user only when it came packed. */
			snprintf(how, sizeof(how), "%s, map", formats[fmt]);
			if (r->packed)
				CHECK(json_object_get(res.map, "user") ==
				    NULL && json_object_del(res.map,
				    "user") != 0, "%s: user in the map",
				    r->name);
			else
				check_result(r, how, res.map, user);

			/* The record stored: a success's, but for a
			 * duplicate's, which is the stored one. */
			v = read_back(fmt, res.record, res.recordlen);
			CHECK(r->with_user && r->status != RESULT_DUPLICATE ?
			    json_equal(v, user) : res.record == NULL,
			    "%s (%s): record", r->name, formats[fmt]);
			json_decref(v);

			CHECK((res.dead != NULL) == !result_success(r->status),
			    "%s (%s): dead entry", r->name, formats[fmt]);
			if (res.dead != NULL) {
				json_t *want = json_loadb(o.raw, o.rawlen, 0,
				    NULL);

				req = dead_request(r, fmt, &res);
				CHECK(want != NULL && json_equal(req, want),
				    "%s (%s): dead request", r->name,
				    formats[fmt]);
				json_decref(req);
				json_decref(want);
			}
			result_free(&res);
			CU_ASSERT_PTR_NULL(res.map);
			json_decref(user);
		}
}

/* ------------------------------------------------------------------ */
/* dead entries of requests that do not decode to text */

/* {"Identity": "al\xffice"} as msgpack: it decodes, but is not text. */
static const char msgpack_bad_utf8[] =
    "\x81\xa8" "Identity" "\xa6" "al\xff" "ice";
/* {"a\0b": 1} as msgpack: text, but JSON cannot carry the key. */
static const char msgpack_nul_key[] = "\x81\xa3" "a\0b" "\x01";

static const struct dead_row {
	const char	*name;
	const char	*raw;
	size_t		 rawlen;
	/* what "request" holds, per format: NULL for the raw bytes as a
	 * bin (msgpack) or as a string (JSON) */
	const char	*want[2];
} dead_rows[] = {
	{ "bytes that are not UTF-8", "\xff\xfe\x00garbage", 10,
	    { NULL, "<10 bytes, not UTF-8>" } },
	{ "text that is neither msgpack nor JSON", "hello, world", 12,
	    { NULL, NULL } },
	{ "msgpack str that is not UTF-8", msgpack_bad_utf8,
	    sizeof(msgpack_bad_utf8) - 1, { NULL, "<17 bytes, not UTF-8>" } },
	{ "a key JSON cannot carry", msgpack_nul_key,
	    sizeof(msgpack_nul_key) - 1,
	    { "", "<6 bytes that cannot be written as JSON>" } },
	{ "over the frame limit", NULL, UG_FRAME_MAX + 1, { NULL, NULL } },
};

/*
 * A failed result whose message is not UTF-8 (a key name cut inside a
 * character) keeps its error, the bad bytes shown as '?': it used to go
 * out without its error at all.
 */
static void
test_message_not_utf8(void)
{
	static const struct row r = { "failed, message not UTF-8",
	    RESULT_FAILED, "alice", "redis_error",
	    "redis key usergate:user:\xc3 has the wrong type", 0, 0, 0, 0, 0,
	    0, NULL, NULL, NULL };
	int fmt;

	for (fmt = FORMAT_MSGPACK; fmt <= FORMAT_JSON; fmt++) {
		struct result_outcome o;
		struct result res;
		const json_t *e;
		json_t *v;

		memset(&res, 0, sizeof(res));
		outcome_of(&r, fmt, NULL, &o);
		CU_ASSERT_FATAL(result_build(&o, &res) == 0);
		v = read_back(fmt, res.enc, res.enclen);
		e = json_object_get(v, "error");
		CHECK(json_is_object(e) &&
		    strcmp(string_of(e, "code"), "redis_error") == 0 &&
		    strcmp(string_of(e, "message"),
		    "redis key usergate:user:? has the wrong type") == 0,
		    "%s: error kept, with ?", formats[fmt]);
		json_decref(v);
		result_free(&res);
	}
}

static void
test_dead(void)
{
	static const struct row r = { "dead", RESULT_INVALID, NULL,
		"malformed", "request is neither msgpack nor JSON", 0, 0, 0, 0,
		0, 0, NULL, "request_id status error attempts source "
		"received_at completed_at", "code message" };
	char *big;
	size_t i;
	int fmt;

	big = malloc(UG_FRAME_MAX + 1);
	CU_ASSERT_FATAL(big != NULL);
	memset(big, 'x', UG_FRAME_MAX + 1);
	for (i = 0; i < NROWS(dead_rows); i++)
		for (fmt = FORMAT_MSGPACK; fmt <= FORMAT_JSON; fmt++) {
			const struct dead_row *d = &dead_rows[i];
			const char *raw = d->raw != NULL ? d->raw : big;
			const char *want = d->want[fmt];
			struct result_outcome o;
			struct result res;
			json_t *req, *v;
			char keys[64];

			memset(&res, 0, sizeof(res));
			outcome_of(&r, fmt, NULL, &o);
			o.raw = raw;
			o.rawlen = d->rawlen;
			CU_ASSERT_FATAL(result_build(&o, &res) == 0);
			req = dead_request(&r, fmt, &res);
			if (want != NULL && *want == '\0') {
				/* Decoded: the map it is. */
				CHECK(json_is_object(req) &&
				    json_integer_value(json_object_getn(req,
				    "a\0b", 3)) == 1, "%s (%s)", d->name,
				    formats[fmt]);
			} else if (want != NULL) {
				CHECK(json_is_string(req) &&
				    strcmp(json_string_value(req), want) == 0,
				    "%s (%s): request %s, want %s", d->name,
				    formats[fmt], json_string_value(req), want);
			} else if (fmt == FORMAT_MSGPACK) {
				/* A bin, after the result. */
				v = json_object_get(req, "bin");
				CHECK(json_is_string(v) &&
				    json_string_length(v) == d->rawlen &&
				    memcmp(json_string_value(v), raw,
				    d->rawlen) == 0, "%s (msgpack): bin",
				    d->name);
				v = read_back(fmt, res.dead, res.deadlen);
				CHECK(strcmp(keys_of(v, keys, sizeof(keys)),
				    "result request") == 0, "%s: keys %s",
				    d->name, keys);
				json_decref(v);
			} else {
				CHECK(json_is_string(req) &&
				    json_string_length(req) == d->rawlen &&
				    memcmp(json_string_value(req), raw,
				    d->rawlen) == 0, "%s (JSON): the text",
				    d->name);
			}
			json_decref(req);
			result_free(&res);
		}
	free(big);
}

/* ------------------------------------------------------------------ */
/* docs/protocol.md's tables against the code's */

/* A table row of a doc: its first cell's `word` and its next two cells,
 * trimmed. */
struct doc_row {
	char	word[64];
	char	cell[2][32];
};

/*
 * The rows of the first table after heading (a line of its own) whose
 * first cell is one `word`; how many, at most max, or -1 when the heading
 * is not there.
 */
static int
doc_table(const char *doc, const char *heading, struct doc_row *out,
    int max)
{
	const char *p = doc, *eol;
	int n = 0, in_table = 0;
	size_t len;

	do {
		if ((p = strstr(p, heading)) == NULL)
			return -1;
		p += strlen(heading);
	} while (*p != '\n');
	for (p++; *p != '\0' && n < max; p = *eol ? eol + 1 : eol) {
		char line[1024], *cell[4], *s;
		int ncell = 0, end = 0;

		eol = strchr(p, '\n');
		if (eol == NULL)
			eol = p + strlen(p);
		if (*p != '|') {
			if (in_table)
				break;
			continue;
		}
		in_table = 1;
		len = (size_t)(eol - p) < sizeof(line) - 1 ?
		    (size_t)(eol - p) : sizeof(line) - 1;
		memcpy(line, p, len);
		line[len] = '\0';
		for (s = strtok(line + 1, "|"); s != NULL && ncell < 4;
		    s = strtok(NULL, "|"))
			cell[ncell++] = s;
		if (ncell < 3 || sscanf(cell[0], " `%63[a-z_0-9]%n",
		    out[n].word, &end) != 1 || cell[0][end] != '`')
			continue;
		for (len = 0; len < 2; len++) {
			s = cell[1 + len];
			while (isspace((unsigned char)*s))
				s++;
			snprintf(out[n].cell[len], sizeof(out[n].cell[len]),
			    "%.*s", (int)strcspn(s, " |"), s);
		}
		n++;
	}
	return n;
}

static const struct doc_row *
doc_find(const struct doc_row *table, int n, const char *word)
{
	int i;

	for (i = 0; i < n; i++)
		if (strcmp(table[i].word, word) == 0)
			return &table[i];
	return NULL;
}

static enum result_status
status_named(const char *name)
{
	int s;

	for (s = 0; s < RESULT_STATUS_COUNT; s++)
		if (strcmp(result_status_name(s), name) == 0)
			break;
	return s;
}

static void
test_docs(void)
{
	struct doc_row st[32], ec[64], keys[32], unknown[16];
	const struct doc_row *d;
	const char *code;
	char *doc;
	int nst, nec, nkeys, nunknown = 0, i, s;
	size_t k;

	doc = read_doc("docs/protocol.md");
	CU_ASSERT_FATAL(doc != NULL);
	nst = doc_table(doc, "### Statuses", st, NROWS(st));
	nec = doc_table(doc, "### Error codes", ec, NROWS(ec));
	nkeys = doc_table(doc, "## 3. Result", keys, NROWS(keys));
	CHECK(nst > 0 && nec > 0 && nkeys > 0, "docs/protocol.md: tables "
	    "not found (%d statuses, %d codes, %d keys)", nst, nec, nkeys);

	/* Statuses: "| `name` | when | user? |", each the code's, the code's
	 * each there, with a user exactly for the successes. */
	for (i = 0; i < nst; i++) {
		s = status_named(st[i].word);
		CHECK(s < RESULT_STATUS_COUNT, "docs/protocol.md names status "
		    "%s, which the code does not know", st[i].word);
		if (s < RESULT_STATUS_COUNT)
			CHECK(strcmp(st[i].cell[1], result_success(s) ? "yes" :
			    "no") == 0, "docs/protocol.md: status %s, user? %s",
			    st[i].word, st[i].cell[1]);
	}
	for (s = 0; s < RESULT_STATUS_COUNT; s++)
		CHECK(doc_find(st, nst, result_status_name(s)) != NULL,
		    "docs/protocol.md's statuses lack %s",
		    result_status_name(s));

	/* Error codes: "| `code` | status | when |", in both directions. */
	for (i = 0; i < nec; i++) {
		s = status_named(ec[i].cell[0]);
		CHECK(s < RESULT_STATUS_COUNT && result_error_known(s,
		    ec[i].word), "docs/protocol.md names error.code %s of %s, "
		    "which the code does not know", ec[i].word, ec[i].cell[0]);
	}
	for (k = 0; (code = result_failure_codes[k]) != NULL; k++)
		CHECK((d = doc_find(ec, nec, code)) != NULL &&
		    strcmp(d->cell[0], "failed") == 0,
		    "docs/protocol.md's error codes lack %s (failed)", code);
	for (k = REQ_OK + 1; (code = request_error_code(k)) != NULL; k++)
		CHECK((d = doc_find(ec, nec, code)) != NULL &&
		    strcmp(d->cell[0], "invalid") == 0,
		    "docs/protocol.md's error codes lack %s (invalid)", code);

	/* The result's keys: every key some row of test_results gives, and
	 * no other (received_at and completed_at share a row). */
	for (k = 0; k < NROWS(rows); k++) {
		char copy[256], *w;

		snprintf(copy, sizeof(copy), "%s", rows[k].keys);
		for (w = strtok(copy, " "); w != NULL; w = strtok(NULL, " "))
			if (doc_find(keys, nkeys, w) == NULL &&
			    strcmp(w, "completed_at") != 0 &&
			    doc_find(unknown, nunknown, w) == NULL &&
			    nunknown < (int)NROWS(unknown)) {
				CHECK(0, "docs/protocol.md's result keys lack "
				    "%s", w);
				snprintf(unknown[nunknown++].word,
				    sizeof(unknown[0].word), "%s", w);
			}
	}
	for (i = 0; i < nkeys; i++) {
		char word[80];
		int seen = 0;

		snprintf(word, sizeof(word), " %.63s ", keys[i].word);
		for (k = 0; k < NROWS(rows); k++) {
			char padded[256];

			snprintf(padded, sizeof(padded), " %s ", rows[k].keys);
			seen |= strstr(padded, word) != NULL;
		}
		CHECK(seen, "docs/protocol.md names result key %s, which no "
		    "result has", keys[i].word);
	}
	free(doc);
}

int
main(void)
{
	CU_pSuite suite;
	unsigned int failures;

	if (CU_initialize_registry() != CUE_SUCCESS)
		return 2;
	if ((suite = CU_add_suite("result", NULL, NULL)) == NULL ||
	    CU_add_test(suite, "statuses", test_statuses) == NULL ||
	    CU_add_test(suite, "error codes", test_error_codes) == NULL ||
	    CU_add_test(suite, "timestamps", test_time) == NULL ||
	    CU_add_test(suite, "results", test_results) == NULL ||
	    CU_add_test(suite, "message not UTF-8", test_message_not_utf8) ==
	    NULL ||
	    CU_add_test(suite, "dead entries", test_dead) == NULL ||
	    CU_add_test(suite, "docs", test_docs) == NULL) {
		CU_cleanup_registry();
		return 2;
	}
	CU_basic_set_mode(CU_BRM_VERBOSE);
	if (CU_basic_run_tests() != CUE_SUCCESS) {
		CU_cleanup_registry();
		return 2;
	}
	failures = CU_get_number_of_failures();
	CU_cleanup_registry();
	return failures > 0 ? 1 : 0;
}
