/*
 * test_request.c: request_parse against SPEC §4.1 and the codes of §4.2.
 *
 * Most rows are JSON text.  A row marked JSON is parsed as that exact text;
 * a row marked MSGPACK is first converted to msgpack here, with
 * msgpack_packer (not with codec_encode, so the codec is not testing
 * itself).  Inputs JSON text cannot express -- invalid UTF-8 inside
 * msgpack, non-map values, bin -- are built with the packer directly.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <CUnit/Basic.h>
#include <msgpack.h>

#include "usergate.h"

#define NROWS(a)	(sizeof(a) / sizeof((a)[0]))
#define HEX32		"0123456789abcdef0123456789ABCDEF"

enum { JSON = 1, MSGPACK = 2, BOTH = JSON | MSGPACK };
/* Expected webhook_enabled; 0 (the default in a row) means not given. */
enum { W_ABSENT = 0, W_FALSE, W_TRUE };

struct row {
	const char		*name;
	int			 modes;
	const char		*text;
	enum request_error	 want;
	const char		*err;		/* substring of the message */
	/* Expected fields; NULL/0 means not set. */
	const char		*identity;
	const char		*request_id;
	const char		*reply_to;
	const char		*friendly_name;
	const char		*attributes;
	const char		*role_sid;
	int			 webhook;
	int			 no_wait;
};

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

static int
same(const char *a, const char *b)
{
	if (a == NULL || b == NULL)
		return a == b;
	return strcmp(a, b) == 0;
}

/* Non-empty UTF-8 without control characters. */
static int
is_clean(const char *s)
{
	const unsigned char	*p;

	if (*s == '\0' || !codec_utf8_valid(s, strlen(s)))
		return 0;
	for (p = (const unsigned char *)s; *p != '\0'; p++)
		if (*p < 0x20 || *p == 0x7f)
			return 0;
	return 1;
}

/*
 * Where every row's ReplyTo may point.  "usergate:replies:" overlaps the
 * daemon's own prefix, which still wins.
 */
static const struct reply_scope scope = {
	.allowed = "q,replies:,usergate:replies:",
	.own = "usergate:",
};

/* Parses buf and checks the outcome against r (whose text is ignored). */
static void
expect(const struct row *r, const char *how, const void *buf, size_t len)
{
	static const int webhook_values[] = { -1, 0, 1 };
	struct request	 req;
	enum request_error e;
	char		 err[512];

	memset(&req, 0x5a, sizeof(req));	/* request_parse must reset it */
	strcpy(err, "(untouched)");
	e = request_parse(buf, len, &scope, &req, err, sizeof(err));
	CHECK(e == r->want, "%s (%s): got %s \"%s\", want %s", r->name, how,
	    e == REQ_OK ? "ok" : request_error_code(e), err,
	    r->want == REQ_OK ? "ok" : request_error_code(r->want));
	if (r->want != REQ_OK) {
		CHECK(r->err == NULL || strstr(err, r->err) != NULL,
		    "%s (%s): message \"%s\" lacks \"%s\"", r->name, how, err,
		    r->err);
		/* Every message can go into a JSON result and a log line. */
		CHECK(is_clean(err), "%s (%s): message is not clean text",
		    r->name, how);
	}
	CHECK(same(req.identity, r->identity), "%s (%s): identity %s",
	    r->name, how, req.identity ? req.identity : "NULL");
	CHECK(same(req.request_id, r->request_id), "%s (%s): request_id %s",
	    r->name, how, req.request_id ? req.request_id : "NULL");
	CHECK(same(req.reply_to, r->reply_to), "%s (%s): reply_to %s",
	    r->name, how, req.reply_to ? req.reply_to : "NULL");
	CHECK(same(req.friendly_name, r->friendly_name),
	    "%s (%s): friendly_name %s", r->name, how,
	    req.friendly_name ? req.friendly_name : "NULL");
	CHECK(same(req.attributes, r->attributes), "%s (%s): attributes %s",
	    r->name, how, req.attributes ? req.attributes : "NULL");
	CHECK(same(req.role_sid, r->role_sid), "%s (%s): role_sid %s",
	    r->name, how, req.role_sid ? req.role_sid : "NULL");
	CHECK(req.webhook_enabled == webhook_values[r->webhook],
	    "%s (%s): webhook_enabled %d", r->name, how, req.webhook_enabled);
	CHECK(req.wait == !r->no_wait, "%s (%s): wait %d", r->name, how,
	    req.wait);
	request_free(&req);
}

/* The same check on v as msgpack, encoded by the codec (keys with their
 * length: a test key may hold a NUL). */
static void
expect_msgpack(const struct row *r, const json_t *v)
{
	char	*buf;
	size_t	 len;

	CU_ASSERT_FATAL(codec_encode(v, FORMAT_MSGPACK, &buf, &len) == 0);
	expect(r, "msgpack", buf, len);
	free(buf);
}

static void
run_rows(const struct row *rows, size_t n)
{
	const struct row *r;
	json_error_t	 jerr;
	json_t		*v;
	size_t		 i;

	for (i = 0; i < n; i++) {
		r = &rows[i];
		if (r->modes & JSON)
			expect(r, "JSON", r->text, strlen(r->text));
		if (r->modes & MSGPACK) {
			v = json_loads(r->text, JSON_ALLOW_NUL, &jerr);
			CHECK(v != NULL, "%s: test row is not JSON: %s", r->name,
			    jerr.text);
			if (v == NULL)
				continue;
			expect_msgpack(r, v);
			json_decref(v);
		}
	}
}

/* ------------------------------------------------------------------ */

static void
test_valid(void)
{
	static const struct row rows[] = {
		{ .name = "identity only", .modes = BOTH,
		    .text = "{\"Identity\":\"alice@example.com\"}",
		    .identity = "alice@example.com" },
		{ .name = "every canonical key", .modes = BOTH,
		    .text = "{\"Identity\":\"a\",\"FriendlyName\":\"Alice\","
		    "\"Attributes\":\"{\\\"x\\\": 1}\",\"RoleSid\":\"RL" HEX32 "\","
		    "\"WebhookEnabled\":true,\"RequestId\":\"r-1\","
		    "\"ReplyTo\":\"replies:1\",\"Wait\":true}",
		    .identity = "a", .friendly_name = "Alice",
		    .attributes = "{\"x\": 1}", .role_sid = "RL" HEX32,
		    .webhook = W_TRUE, .request_id = "r-1",
		    .reply_to = "replies:1" },
		{ .name = "every alias", .modes = BOTH,
		    .text = "{\"identity\":\"a\",\"friendly_name\":\"Alice\","
		    "\"attributes\":{\"x\":1},\"role_sid\":\"RL" HEX32 "\","
		    "\"webhook_enabled\":false,\"request_id\":\"r-1\","
		    "\"reply_to\":\"replies:1\",\"wait\":false}",
		    .identity = "a", .friendly_name = "Alice",
		    .attributes = "{\"x\":1}", .role_sid = "RL" HEX32,
		    .webhook = W_FALSE, .request_id = "r-1",
		    .reply_to = "replies:1", .no_wait = 1 },
		{ .name = "Wait false", .modes = BOTH,
		    .text = "{\"Identity\":\"a\",\"Wait\":false}",
		    .identity = "a", .no_wait = 1 },
		{ .name = "null counts as absent", .modes = BOTH,
		    .text = "{\"Identity\":\"a\",\"FriendlyName\":null,"
		    "\"Attributes\":null,\"RoleSid\":null,"
		    "\"WebhookEnabled\":null,\"RequestId\":null,"
		    "\"ReplyTo\":null,\"Wait\":null}",
		    .identity = "a" },
		{ .name = "null alias next to the canonical key", .modes = BOTH,
		    .text = "{\"Identity\":\"a\",\"FriendlyName\":\"F\","
		    "\"friendly_name\":null}",
		    .identity = "a", .friendly_name = "F" },
		{ .name = "Attributes map serialised compactly, in order",
		    .modes = BOTH,
		    .text = "{\"Identity\":\"a\",\"Attributes\":"
		    "{ \"z\" : [1, {\"b\": null}], \"a\" : \"\\u00e9\" }}",
		    .identity = "a",
		    .attributes = "{\"z\":[1,{\"b\":null}],\"a\":\"\xc3\xa9\"}" },
		{ .name = "Attributes empty map", .modes = BOTH,
		    .text = "{\"Identity\":\"a\",\"Attributes\":{}}",
		    .identity = "a", .attributes = "{}" },
		{ .name = "Attributes string kept as written", .modes = BOTH,
		    .text = "{\"Identity\":\"a\",\"Attributes\":"
		    "\" { \\\"k\\\" : [ ] } \"}",
		    .identity = "a", .attributes = " { \"k\" : [ ] } " },
		{ .name = "identity is case-sensitive, kept as is",
		    .modes = BOTH, .text = "{\"Identity\":\" MiXeD Case \"}",
		    .identity = " MiXeD Case " },
		{ .name = "lower-case us prefix is not a SID", .modes = BOTH,
		    .text = "{\"Identity\":\"us" HEX32 "\"}",
		    .identity = "us" HEX32 },
		{ .name = "US + 31 hex is not a SID", .modes = BOTH,
		    .text = "{\"Identity\":\"US0123456789abcdef0123456789abcde\"}",
		    .identity = "US0123456789abcdef0123456789abcde" },
		{ .name = "US + 33 hex is not a SID", .modes = BOTH,
		    .text = "{\"Identity\":\"US" HEX32 "0\"}",
		    .identity = "US" HEX32 "0" },
		{ .name = "US + 32 non-hex is not a SID", .modes = BOTH,
		    .text = "{\"Identity\":\"US0123456789abcdef0123456789abcdeg\"}",
		    .identity = "US0123456789abcdef0123456789abcdeg" },
		{ .name = "FriendlyName may be empty", .modes = BOTH,
		    .text = "{\"Identity\":\"a\",\"FriendlyName\":\"\"}",
		    .identity = "a", .friendly_name = "" },
		{ .name = "RequestId with UTF-8", .modes = BOTH,
		    .text = "{\"Identity\":\"a\",\"RequestId\":\"r\xc3\xa9-\xe2\x82\xac\"}",
		    .identity = "a", .request_id = "r\xc3\xa9-\xe2\x82\xac" },
		{ .name = "ReplyTo of any bytes", .modes = BOTH,
		    .text = "{\"Identity\":\"a\",\"ReplyTo\":\"q\\n\\t\"}",
		    .identity = "a", .reply_to = "q\n\t" },
		{ .name = "trailing newline of a socket line", .modes = JSON,
		    .text = "{\"Identity\":\"a\"}\n", .identity = "a" },
	};

	run_rows(rows, NROWS(rows));
}

/* One row or more per error code, in the order of the enum. */
static void
test_errors(void)
{
	static const struct row rows[] = {
		/* malformed */
		{ .name = "truncated JSON", .modes = JSON,
		    .text = "{\"Identity\":", .want = REQ_MALFORMED,
		    .err = "invalid JSON" },
		{ .name = "empty", .modes = JSON, .text = "",
		    .want = REQ_MALFORMED, .err = "empty" },
		{ .name = "JSON duplicate key", .modes = JSON,
		    .text = "{\"Identity\":\"a\",\"Identity\":\"b\"}",
		    .want = REQ_MALFORMED, .err = "duplicate" },
		{ .name = "control character in a JSON error", .modes = JSON,
		    .text = "{\"Identity\": \x1b[2J}", .want = REQ_MALFORMED,
		    .err = "invalid token near '?'" },
		{ .name = "not JSON, not msgpack", .modes = JSON,
		    .text = "Identity=a", .want = REQ_MALFORMED },
		{ .name = "Identity twice", .modes = BOTH,
		    .text = "{\"Identity\":\"a\",\"identity\":\"b\"}",
		    .want = REQ_MALFORMED,
		    .err = "Identity given twice (as Identity and identity)" },
		{ .name = "Identity twice, alias first", .modes = BOTH,
		    .text = "{\"identity\":\"a\",\"Identity\":\"a\"}",
		    .want = REQ_MALFORMED,
		    .err = "Identity given twice (as identity and Identity)" },
		{ .name = "FriendlyName twice", .modes = BOTH,
		    .text = "{\"Identity\":\"a\",\"FriendlyName\":\"x\","
		    "\"friendly_name\":\"x\"}",
		    .want = REQ_MALFORMED, .err = "FriendlyName given twice",
		    .identity = "a" },
		{ .name = "Attributes twice", .modes = BOTH,
		    .text = "{\"Identity\":\"a\",\"attributes\":{},"
		    "\"Attributes\":{}}",
		    .want = REQ_MALFORMED, .err = "Attributes given twice",
		    .identity = "a" },
		{ .name = "RoleSid twice", .modes = BOTH,
		    .text = "{\"Identity\":\"a\",\"RoleSid\":1,\"role_sid\":1}",
		    .want = REQ_MALFORMED, .err = "RoleSid given twice",
		    .identity = "a" },
		{ .name = "WebhookEnabled twice", .modes = BOTH,
		    .text = "{\"Identity\":\"a\",\"WebhookEnabled\":true,"
		    "\"webhook_enabled\":true}",
		    .want = REQ_MALFORMED, .err = "WebhookEnabled given twice",
		    .identity = "a" },
		{ .name = "RequestId twice: not echoed", .modes = BOTH,
		    .text = "{\"Identity\":\"a\",\"RequestId\":\"r\","
		    "\"request_id\":\"r\"}",
		    .want = REQ_MALFORMED, .err = "RequestId given twice",
		    .identity = "a" },
		{ .name = "ReplyTo twice: not echoed", .modes = BOTH,
		    .text = "{\"Identity\":\"a\",\"ReplyTo\":\"q\","
		    "\"reply_to\":\"q\"}",
		    .want = REQ_MALFORMED, .err = "ReplyTo given twice",
		    .identity = "a" },
		{ .name = "Wait twice", .modes = BOTH,
		    .text = "{\"Identity\":\"a\",\"wait\":true,\"Wait\":true}",
		    .want = REQ_MALFORMED,
		    .err = "Wait given twice (as wait and Wait)",
		    .identity = "a" },

		/* unknown_field */
		{ .name = "unknown key", .modes = BOTH,
		    .text = "{\"Identity\":\"a\",\"Foo\":1}",
		    .want = REQ_UNKNOWN_FIELD, .err = "unknown field \"Foo\"",
		    .identity = "a" },
		{ .name = "wrong case is unknown", .modes = BOTH,
		    .text = "{\"IDENTITY\":\"a\"}",
		    .want = REQ_UNKNOWN_FIELD, .err = "\"IDENTITY\"" },
		{ .name = "camelCase is unknown", .modes = BOTH,
		    .text = "{\"Identity\":\"a\",\"friendlyName\":\"x\"}",
		    .want = REQ_UNKNOWN_FIELD, .err = "\"friendlyName\"",
		    .identity = "a" },
		{ .name = "unknown key with a quote and non-ASCII",
		    .modes = BOTH,
		    .text = "{\"Identity\":\"a\",\"x\\\"\xc3\xa9\":1}",
		    .want = REQ_UNKNOWN_FIELD,
		    .err = "unknown field \"x\\x22\\xc3\\xa9\"",
		    .identity = "a" },
		/* jansson refuses it in JSON; msgpack: test_msgpack_only. */
		{ .name = "JSON key with a NUL", .modes = JSON,
		    .text = "{\"Identity\":\"a\",\"Identity\\u0000\":1}",
		    .want = REQ_MALFORMED, .err = "NUL byte in object key" },
		{ .name = "first problem in map order wins", .modes = BOTH,
		    .text = "{\"Bar\":1,\"Identity\":\"a\",\"identity\":\"a\"}",
		    .want = REQ_UNKNOWN_FIELD, .err = "\"Bar\"" },
		{ .name = "unknown even with other errors", .modes = BOTH,
		    .text = "{\"Identity\":5,\"Bar\":1}",
		    .want = REQ_UNKNOWN_FIELD, .err = "\"Bar\"" },

		/* bad_type */
		{ .name = "FriendlyName integer", .modes = BOTH,
		    .text = "{\"Identity\":\"a\",\"FriendlyName\":5}",
		    .want = REQ_BAD_TYPE,
		    .err = "FriendlyName must be a string, got integer",
		    .identity = "a" },
		{ .name = "friendly_name float, named as sent", .modes = BOTH,
		    .text = "{\"Identity\":\"a\",\"friendly_name\":1.5}",
		    .want = REQ_BAD_TYPE,
		    .err = "friendly_name must be a string, got float",
		    .identity = "a" },
		{ .name = "Identity integer", .modes = BOTH,
		    .text = "{\"Identity\":42}",
		    .want = REQ_BAD_TYPE,
		    .err = "Identity must be a string, got integer" },
		{ .name = "Identity map", .modes = BOTH,
		    .text = "{\"Identity\":{}}",
		    .want = REQ_BAD_TYPE,
		    .err = "Identity must be a string, got map" },
		{ .name = "Attributes array", .modes = BOTH,
		    .text = "{\"Identity\":\"a\",\"Attributes\":[1]}",
		    .want = REQ_BAD_TYPE,
		    .err = "Attributes must be a string or a map, got array",
		    .identity = "a" },
		{ .name = "Attributes boolean", .modes = BOTH,
		    .text = "{\"Identity\":\"a\",\"Attributes\":true}",
		    .want = REQ_BAD_TYPE, .err = "got boolean",
		    .identity = "a" },
		{ .name = "RoleSid integer", .modes = BOTH,
		    .text = "{\"Identity\":\"a\",\"RoleSid\":1}",
		    .want = REQ_BAD_TYPE, .err = "RoleSid must be a string",
		    .identity = "a" },
		{ .name = "WebhookEnabled string", .modes = BOTH,
		    .text = "{\"Identity\":\"a\",\"WebhookEnabled\":\"true\"}",
		    .want = REQ_BAD_TYPE,
		    .err = "WebhookEnabled must be a boolean, got string",
		    .identity = "a" },
		{ .name = "webhook_enabled integer", .modes = BOTH,
		    .text = "{\"Identity\":\"a\",\"webhook_enabled\":1}",
		    .want = REQ_BAD_TYPE,
		    .err = "webhook_enabled must be a boolean, got integer",
		    .identity = "a" },
		{ .name = "Wait integer", .modes = BOTH,
		    .text = "{\"Identity\":\"a\",\"Wait\":0}",
		    .want = REQ_BAD_TYPE, .err = "Wait must be a boolean",
		    .identity = "a" },
		{ .name = "ReplyTo integer", .modes = BOTH,
		    .text = "{\"Identity\":\"a\",\"ReplyTo\":7}",
		    .want = REQ_BAD_TYPE,
		    .err = "ReplyTo must be a string, got integer",
		    .identity = "a" },
		{ .name = "ReplyTo empty", .modes = BOTH,
		    .text = "{\"Identity\":\"a\",\"ReplyTo\":\"\"}",
		    .want = REQ_BAD_TYPE, .err = "ReplyTo is empty",
		    .identity = "a" },
		{ .name = "ReplyTo with NUL", .modes = BOTH,
		    .text = "{\"Identity\":\"a\",\"ReplyTo\":\"q\\u0000\"}",
		    .want = REQ_BAD_TYPE, .err = "NUL", .identity = "a" },

		/* reply_to_forbidden: never echoed, so never written to */
		{ .name = "ReplyTo the request list", .modes = BOTH,
		    .text = "{\"Identity\":\"a\",\"ReplyTo\":"
		    "\"usergate:requests\"}",
		    .want = REQ_REPLY_TO_FORBIDDEN, .err = "ReplyTo is outside",
		    .identity = "a" },
		{ .name = "own prefix wins over an allowed one", .modes = BOTH,
		    .text = "{\"Identity\":\"a\",\"reply_to\":"
		    "\"usergate:replies:1\"}",
		    .want = REQ_REPLY_TO_FORBIDDEN, .err = "reply_to is outside",
		    .identity = "a" },
		{ .name = "ReplyTo another application's key", .modes = BOTH,
		    .text = "{\"Identity\":\"a\",\"ReplyTo\":"
		    "\"app:session:1\"}",
		    .want = REQ_REPLY_TO_FORBIDDEN, .identity = "a" },
		{ .name = "ReplyTo a prefix of an allowed prefix", .modes = BOTH,
		    .text = "{\"Identity\":\"a\",\"ReplyTo\":\"replies\"}",
		    .want = REQ_REPLY_TO_FORBIDDEN, .identity = "a" },
		{ .name = "ReplyTo under the last allowed prefix", .modes = BOTH,
		    .text = "{\"Identity\":\"a\",\"ReplyTo\":"
		    "\"replies:9\"}",
		    .identity = "a", .reply_to = "replies:9" },
		{ .name = "forbidden ReplyTo not echoed on another error",
		    .modes = BOTH,
		    .text = "{\"ReplyTo\":\"usergate:rate\"}",
		    .want = REQ_MISSING_IDENTITY },
		{ .name = "type errors come before value errors", .modes = BOTH,
		    .text = "{\"Identity\":\"US" HEX32 "\",\"Wait\":1}",
		    .want = REQ_BAD_TYPE, .err = "Wait",
		    .identity = "US" HEX32 },

		/* missing_identity */
		{ .name = "empty map", .modes = BOTH, .text = "{}",
		    .want = REQ_MISSING_IDENTITY, .err = "Identity is required" },
		{ .name = "no Identity", .modes = BOTH,
		    .text = "{\"FriendlyName\":\"x\",\"RequestId\":\"r9\"}",
		    .want = REQ_MISSING_IDENTITY, .request_id = "r9" },
		{ .name = "null Identity", .modes = BOTH,
		    .text = "{\"Identity\":null}",
		    .want = REQ_MISSING_IDENTITY },
		{ .name = "empty Identity", .modes = BOTH,
		    .text = "{\"identity\":\"\"}",
		    .want = REQ_MISSING_IDENTITY, .err = "identity is empty" },

		/* identity_is_sid */
		{ .name = "Identity is a User SID", .modes = BOTH,
		    .text = "{\"Identity\":\"US" HEX32 "\",\"RequestId\":\"r2\"}",
		    .want = REQ_IDENTITY_IS_SID, .err = "User SID",
		    .identity = "US" HEX32, .request_id = "r2" },
		{ .name = "Identity is an upper-case User SID", .modes = BOTH,
		    .text = "{\"Identity\":\"US0123456789ABCDEF0123456789ABCDEF\"}",
		    .want = REQ_IDENTITY_IS_SID,
		    .identity = "US0123456789ABCDEF0123456789ABCDEF" },

		/* bad_utf8 */
		{ .name = "JSON text not UTF-8", .modes = JSON,
		    .text = "{\"Identity\":\"a\xff\"}", .want = REQ_BAD_UTF8,
		    .err = "UTF-8" },
		{ .name = "Identity with NUL", .modes = BOTH,
		    .text = "{\"Identity\":\"a\\u0000b\",\"RequestId\":\"r\"}",
		    .want = REQ_BAD_UTF8, .err = "Identity contains a NUL",
		    .request_id = "r" },
		{ .name = "FriendlyName with NUL", .modes = BOTH,
		    .text = "{\"Identity\":\"a\",\"FriendlyName\":\"\\u0000\"}",
		    .want = REQ_BAD_UTF8, .err = "FriendlyName contains a NUL",
		    .identity = "a" },

		/* attributes_not_json */
		{ .name = "Attributes not JSON", .modes = BOTH,
		    .text = "{\"Identity\":\"a\",\"Attributes\":\"not json\"}",
		    .want = REQ_ATTRIBUTES_NOT_JSON,
		    .err = "Attributes must be a JSON object: ",
		    .identity = "a" },
		{ .name = "Attributes empty string", .modes = BOTH,
		    .text = "{\"Identity\":\"a\",\"attributes\":\"\"}",
		    .want = REQ_ATTRIBUTES_NOT_JSON,
		    .err = "attributes must be a JSON object",
		    .identity = "a" },
		{ .name = "Attributes JSON array", .modes = BOTH,
		    .text = "{\"Identity\":\"a\",\"Attributes\":\"[1]\"}",
		    .want = REQ_ATTRIBUTES_NOT_JSON,
		    .err = "must be a JSON object, got array",
		    .identity = "a" },
		{ .name = "Attributes JSON string", .modes = BOTH,
		    .text = "{\"Identity\":\"a\",\"Attributes\":\"\\\"x\\\"\"}",
		    .want = REQ_ATTRIBUTES_NOT_JSON,
		    .err = "Attributes must be a JSON object: ",
		    .identity = "a" },
		{ .name = "Attributes trailing garbage", .modes = BOTH,
		    .text = "{\"Identity\":\"a\",\"Attributes\":\"{} x\"}",
		    .want = REQ_ATTRIBUTES_NOT_JSON, .identity = "a" },
		{ .name = "Attributes duplicate keys", .modes = BOTH,
		    .text = "{\"Identity\":\"a\",\"Attributes\":"
		    "\"{\\\"k\\\":1,\\\"k\\\":2}\"}",
		    .want = REQ_ATTRIBUTES_NOT_JSON, .err = "duplicate",
		    .identity = "a" },
		{ .name = "Attributes with a raw NUL", .modes = BOTH,
		    .text = "{\"Identity\":\"a\",\"Attributes\":\"{}\\u0000\"}",
		    .want = REQ_ATTRIBUTES_NOT_JSON, .identity = "a" },

		/* bad_role_sid */
		{ .name = "RoleSid short", .modes = BOTH,
		    .text = "{\"Identity\":\"a\",\"RoleSid\":\"RL123\"}",
		    .want = REQ_BAD_ROLE_SID,
		    .err = "RoleSid must be RL followed by 32 hex digits",
		    .identity = "a" },
		{ .name = "role_sid lower-case prefix", .modes = BOTH,
		    .text = "{\"Identity\":\"a\",\"role_sid\":\"rl" HEX32 "\"}",
		    .want = REQ_BAD_ROLE_SID, .err = "role_sid must be RL",
		    .identity = "a" },
		{ .name = "RoleSid too long", .modes = BOTH,
		    .text = "{\"Identity\":\"a\",\"RoleSid\":\"RL" HEX32 "0\"}",
		    .want = REQ_BAD_ROLE_SID, .identity = "a" },
		{ .name = "RoleSid non-hex", .modes = BOTH,
		    .text = "{\"Identity\":\"a\",\"RoleSid\":"
		    "\"RL0123456789abcdef0123456789abcdeG\"}",
		    .want = REQ_BAD_ROLE_SID, .identity = "a" },
		{ .name = "RoleSid is a User SID", .modes = BOTH,
		    .text = "{\"Identity\":\"a\",\"RoleSid\":\"US" HEX32 "\"}",
		    .want = REQ_BAD_ROLE_SID, .identity = "a" },

		/* bad_request_id */
		{ .name = "RequestId integer", .modes = BOTH,
		    .text = "{\"Identity\":\"a\",\"RequestId\":5}",
		    .want = REQ_BAD_REQUEST_ID,
		    .err = "RequestId must be a string, got integer",
		    .identity = "a" },
		{ .name = "RequestId empty", .modes = BOTH,
		    .text = "{\"Identity\":\"a\",\"request_id\":\"\"}",
		    .want = REQ_BAD_REQUEST_ID, .err = "request_id is empty",
		    .identity = "a" },
		{ .name = "RequestId newline", .modes = BOTH,
		    .text = "{\"Identity\":\"a\",\"RequestId\":\"a\\nb\"}",
		    .want = REQ_BAD_REQUEST_ID, .err = "control character",
		    .identity = "a" },
		{ .name = "RequestId NUL", .modes = BOTH,
		    .text = "{\"Identity\":\"a\",\"RequestId\":\"a\\u0000\"}",
		    .want = REQ_BAD_REQUEST_ID, .err = "control character",
		    .identity = "a" },
		{ .name = "RequestId DEL", .modes = BOTH,
		    .text = "{\"Identity\":\"a\",\"RequestId\":\"a\\u007f\"}",
		    .want = REQ_BAD_REQUEST_ID, .err = "control character",
		    .identity = "a" },
		{ .name = "RequestId C1 control (NEL)", .modes = BOTH,
		    .text = "{\"Identity\":\"a\",\"RequestId\":\"a\\u0085\"}",
		    .want = REQ_BAD_REQUEST_ID, .err = "control character",
		    .identity = "a" },
		{ .name = "RequestId last C1 control (U+009F)", .modes = BOTH,
		    .text = "{\"Identity\":\"a\",\"RequestId\":\"\\u009f\"}",
		    .want = REQ_BAD_REQUEST_ID, .err = "control character",
		    .identity = "a" },
		{ .name = "RequestId U+00A0 is fine, ReplyTo echoed",
		    .modes = BOTH,
		    .text = "{\"Identity\":\"US" HEX32 "\",\"RequestId\":"
		    "\"a\\u00a0\",\"ReplyTo\":\"q\"}",
		    .want = REQ_IDENTITY_IS_SID, .identity = "US" HEX32,
		    .request_id = "a\xc2\xa0", .reply_to = "q" },

		/* echo of the request's own fields when refused */
		{ .name = "echo despite an unknown field placed first",
		    .modes = BOTH,
		    .text = "{\"Foo\":1,\"RequestId\":\"r1\",\"Identity\":\"b\","
		    "\"ReplyTo\":\"q1\"}",
		    .want = REQ_UNKNOWN_FIELD, .identity = "b",
		    .request_id = "r1", .reply_to = "q1" },
		{ .name = "echo despite a bad RoleSid", .modes = BOTH,
		    .text = "{\"reply_to\":\"q2\",\"request_id\":\"r2\","
		    "\"identity\":\"c\",\"role_sid\":\"x\"}",
		    .want = REQ_BAD_ROLE_SID, .identity = "c",
		    .request_id = "r2", .reply_to = "q2" },
		{ .name = "bad RequestId is not echoed, Identity is",
		    .modes = BOTH,
		    .text = "{\"Identity\":\"d\",\"RequestId\":\"\\u0001\"}",
		    .want = REQ_BAD_REQUEST_ID, .identity = "d" },
	};

	run_rows(rows, NROWS(rows));
}

/* Writes n copies of unit after prefix, then suffix, into a new string. */
static char *
repeat(const char *prefix, const char *unit, size_t n, const char *suffix)
{
	size_t	 plen = strlen(prefix), ulen = strlen(unit), i;
	char	*s, *p;

	s = malloc(plen + ulen * n + strlen(suffix) + 1);
	CU_ASSERT_FATAL(s != NULL);
	memcpy(s, prefix, plen);
	p = s + plen;
	for (i = 0; i < n; i++, p += ulen)
		memcpy(p, unit, ulen);
	strcpy(p, suffix);
	return s;
}

/*
 * Runs a request built as a jansson value in both formats.  JSON text is
 * written by jansson (UTF-8 kept raw, so byte lengths are the same as in
 * msgpack).
 */
static void
expect_value(const struct row *r, json_t *v)
{
	char		*text;

	CU_ASSERT_FATAL(v != NULL);
	text = json_dumps(v, JSON_COMPACT);
	CU_ASSERT_FATAL(text != NULL);
	expect(r, "JSON", text, strlen(text));
	free(text);
	expect_msgpack(r, v);
	json_decref(v);
}

static void
test_boundaries(void)
{
	struct row	 r;
	char		*s, *t;

	/* Identity: 256 two-byte characters (512 bytes) pass, 257 do not. */
	s = repeat("", "\xc3\xa9", 256, "");
	r = (struct row){ .name = "Identity 256 chars", .identity = s };
	expect_value(&r, json_pack("{s:s}", "Identity", s));
	free(s);
	s = repeat("", "\xf0\x9f\x98\x80", 256, "");
	r = (struct row){ .name = "Identity 256 4-byte chars", .identity = s };
	expect_value(&r, json_pack("{s:s}", "Identity", s));
	free(s);
	s = repeat("", "\xc3\xa9", 257, "");
	r = (struct row){ .name = "Identity 257 chars", .identity = s,
	    .want = REQ_IDENTITY_TOO_LONG,
	    .err = "Identity is 257 characters, over the limit of 256" };
	expect_value(&r, json_pack("{s:s}", "Identity", s));
	free(s);

	/* FriendlyName: 256 three-byte characters pass, 257 do not. */
	s = repeat("", "\xe2\x82\xac", 256, "");
	r = (struct row){ .name = "FriendlyName 256 chars", .identity = "a",
	    .friendly_name = s };
	expect_value(&r, json_pack("{s:s,s:s}", "Identity", "a",
	    "FriendlyName", s));
	free(s);
	s = repeat("x", "\xe2\x82\xac", 256, "");
	r = (struct row){ .name = "FriendlyName 257 chars", .identity = "a",
	    .want = REQ_FRIENDLY_NAME_TOO_LONG,
	    .err = "FriendlyName is 257 characters" };
	expect_value(&r, json_pack("{s:s,s:s}", "Identity", "a",
	    "FriendlyName", s));
	free(s);

	/* RequestId: 128 bytes pass (64 two-byte characters), 129 do not. */
	s = repeat("", "\xc3\xa9", 64, "");
	r = (struct row){ .name = "RequestId 128 bytes", .identity = "a",
	    .request_id = s };
	expect_value(&r, json_pack("{s:s,s:s}", "Identity", "a",
	    "RequestId", s));
	free(s);
	s = repeat("x", "\xc3\xa9", 64, "");
	r = (struct row){ .name = "RequestId 129 bytes", .identity = "a",
	    .want = REQ_BAD_REQUEST_ID,
	    .err = "RequestId is 129 bytes, over the limit of 128" };
	expect_value(&r, json_pack("{s:s,s:s}", "Identity", "a",
	    "RequestId", s));
	free(s);

	/* ReplyTo: 1024 bytes pass, 1025 do not. */
	s = repeat("", "q", 1024, "");
	r = (struct row){ .name = "ReplyTo 1024 bytes", .identity = "a",
	    .reply_to = s };
	expect_value(&r, json_pack("{s:s,s:s}", "Identity", "a",
	    "ReplyTo", s));
	free(s);
	s = repeat("", "q", 1025, "");
	r = (struct row){ .name = "ReplyTo 1025 bytes", .identity = "a",
	    .want = REQ_BAD_TYPE, .err = "ReplyTo is 1025 bytes" };
	expect_value(&r, json_pack("{s:s,s:s}", "Identity", "a",
	    "ReplyTo", s));
	free(s);

	/* Attributes string: {"k":"xxx..."} of 16384 bytes, then 16385. */
	s = repeat("{\"k\":\"", "x", 16384 - 8, "\"}");
	CU_ASSERT_FATAL(strlen(s) == 16384);
	r = (struct row){ .name = "Attributes string 16384 bytes",
	    .identity = "a", .attributes = s };
	expect_value(&r, json_pack("{s:s,s:s}", "Identity", "a",
	    "Attributes", s));
	free(s);
	s = repeat("{\"k\":\"", "x", 16384 - 7, "\"}");
	r = (struct row){ .name = "Attributes string 16385 bytes",
	    .identity = "a", .want = REQ_ATTRIBUTES_TOO_LONG,
	    .err = "Attributes is 16385 bytes, over the limit of 16384" };
	expect_value(&r, json_pack("{s:s,s:s}", "Identity", "a",
	    "Attributes", s));
	free(s);
	/* Too long is found before parsing: garbage of 16385 bytes. */
	s = repeat("", "x", 16385, "");
	r = (struct row){ .name = "Attributes garbage 16385 bytes",
	    .identity = "a", .want = REQ_ATTRIBUTES_TOO_LONG };
	expect_value(&r, json_pack("{s:s,s:s}", "Identity", "a",
	    "Attributes", s));
	free(s);

	/* Attributes map: its compact JSON is what is measured. */
	s = repeat("", "x", 16384 - 8, "");
	t = repeat("{\"k\":\"", "x", 16384 - 8, "\"}");
	r = (struct row){ .name = "Attributes map 16384 bytes as JSON",
	    .identity = "a", .attributes = t };
	expect_value(&r, json_pack("{s:s,s:{s:s}}", "Identity", "a",
	    "Attributes", "k", s));
	free(s);
	free(t);
	s = repeat("", "x", 16384 - 7, "");
	r = (struct row){ .name = "Attributes map 16385 bytes as JSON",
	    .identity = "a", .want = REQ_ATTRIBUTES_TOO_LONG,
	    .err = "Attributes is 16385 bytes as JSON" };
	expect_value(&r, json_pack("{s:s,s:{s:s}}", "Identity", "a",
	    "Attributes", "k", s));
	free(s);
}

/* Frames over UG_FRAME_MAX are refused before decoding. */
static void
test_frame_size(void)
{
	struct row	 r;
	char		*s;
	size_t		 len;

	/* 65537 bytes of garbage: too_large, not malformed. */
	s = repeat("", "\xc1", UG_FRAME_MAX + 1, "");
	r = (struct row){ .name = "65537 bytes", .want = REQ_TOO_LARGE,
	    .err = "request is 65537 bytes, over the limit of 65536" };
	expect(&r, "raw", s, UG_FRAME_MAX + 1);
	free(s);

	/* A valid-looking JSON request of 65537 bytes: still too_large. */
	s = repeat("{\"Identity\":\"a\",\"FriendlyName\":\"", "x",
	    UG_FRAME_MAX + 1 - 34, "\"}");
	len = strlen(s);
	CU_ASSERT_FATAL(len == UG_FRAME_MAX + 1);
	r = (struct row){ .name = "JSON of 65537 bytes", .want = REQ_TOO_LARGE };
	expect(&r, "JSON", s, len);
	free(s);

	/* The stub queue_take.c leaves of an oversize Redis element: too_large
	 * with the element's length, read within the given bytes only. */
	r = (struct row){ .name = "oversize stub", .want = REQ_TOO_LARGE,
	    .err = "request is 31457280 bytes, over the limit of 65536" };
	expect(&r, "stub", UG_OVERSIZE_MARK "31457280 {\"Identity\":",
	    strlen(UG_OVERSIZE_MARK "31457280 {\"Identity\":"));
	r = (struct row){ .name = "oversize stub cut in its length",
	    .want = REQ_TOO_LARGE,
	    .err = "request is 314 bytes, over the limit of 65536" };
	expect(&r, "stub", UG_OVERSIZE_MARK "31457280", strlen(UG_OVERSIZE_MARK) + 3);

	/* Exactly 65536 bytes is decoded and judged on its content. */
	s = repeat("{\"Identity\":\"a\",\"FriendlyName\":\"", "x",
	    UG_FRAME_MAX - 34, "\"}");
	len = strlen(s);
	CU_ASSERT_FATAL(len == UG_FRAME_MAX);
	r = (struct row){ .name = "JSON of 65536 bytes", .identity = "a",
	    .want = REQ_FRIENDLY_NAME_TOO_LONG };
	expect(&r, "JSON", s, len);
	free(s);
}

/* Inputs that only msgpack can carry, built with the packer. */
static void
test_msgpack_only(void)
{
	static const char bad[] = "a\xff";
	msgpack_sbuffer	 sb;
	msgpack_packer	 pk;
	struct row	 r;

#define KEY(k)	(msgpack_pack_str(&pk, strlen(k)), \
		    msgpack_pack_str_body(&pk, k, strlen(k)))
#define BAD()	(msgpack_pack_str(&pk, 2), msgpack_pack_str_body(&pk, bad, 2))
#define START()	(msgpack_sbuffer_init(&sb), \
		    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write))

	START();
	msgpack_pack_array(&pk, 1);
	KEY("Identity");
	r = (struct row){ .name = "msgpack array", .want = REQ_MALFORMED,
	    .err = "request must be a map, got a msgpack array" };
	expect(&r, "msgpack", sb.data, sb.size);
	msgpack_sbuffer_destroy(&sb);

	START();
	msgpack_pack_nil(&pk);
	r = (struct row){ .name = "msgpack nil", .want = REQ_MALFORMED,
	    .err = "request must be a map, got a msgpack nil" };
	expect(&r, "msgpack", sb.data, sb.size);
	msgpack_sbuffer_destroy(&sb);

	START();
	KEY("Identity");
	r = (struct row){ .name = "msgpack string", .want = REQ_MALFORMED,
	    .err = "got a msgpack string" };
	expect(&r, "msgpack", sb.data, sb.size);
	msgpack_sbuffer_destroy(&sb);

	START();
	msgpack_pack_map(&pk, 1);
	KEY("Identity");
	msgpack_pack_int(&pk, 1);
	msgpack_pack_int(&pk, 1);	/* trailing */
	r = (struct row){ .name = "msgpack trailing bytes",
	    .want = REQ_MALFORMED, .err = "trailing" };
	expect(&r, "msgpack", sb.data, sb.size);
	msgpack_sbuffer_destroy(&sb);

	START();
	msgpack_pack_map(&pk, 2);
	KEY("RequestId");
	KEY("r");
	KEY("Identity");
	BAD();
	r = (struct row){ .name = "Identity not UTF-8", .want = REQ_BAD_UTF8,
	    .err = "Identity is not valid UTF-8", .request_id = "r" };
	expect(&r, "msgpack", sb.data, sb.size);
	msgpack_sbuffer_destroy(&sb);

	START();
	msgpack_pack_map(&pk, 2);
	KEY("Identity");
	KEY("a");
	KEY("FriendlyName");
	BAD();
	r = (struct row){ .name = "FriendlyName not UTF-8",
	    .want = REQ_BAD_UTF8, .err = "FriendlyName is not valid UTF-8",
	    .identity = "a" };
	expect(&r, "msgpack", sb.data, sb.size);
	msgpack_sbuffer_destroy(&sb);

	START();
	msgpack_pack_map(&pk, 2);
	KEY("Identity");
	KEY("a");
	KEY("Attributes");
	msgpack_pack_str(&pk, 8);
	msgpack_pack_str_body(&pk, "{\"k\":\"\xff\"}", 8);
	r = (struct row){ .name = "Attributes string not UTF-8",
	    .want = REQ_BAD_UTF8, .err = "Attributes is not valid UTF-8",
	    .identity = "a" };
	expect(&r, "msgpack", sb.data, sb.size);
	msgpack_sbuffer_destroy(&sb);

	START();
	msgpack_pack_map(&pk, 2);
	KEY("Identity");
	KEY("a");
	KEY("attributes");
	msgpack_pack_map(&pk, 1);
	KEY("k");
	BAD();
	r = (struct row){ .name = "Attributes map holding bad UTF-8",
	    .want = REQ_BAD_UTF8, .err = "attributes holds text",
	    .identity = "a" };
	expect(&r, "msgpack", sb.data, sb.size);
	msgpack_sbuffer_destroy(&sb);

	/* Found by the fuzzer: a map key that is not UTF-8 would have been
	 * serialised into broken JSON and sent to Twilio. */
	START();
	msgpack_pack_map(&pk, 2);
	KEY("Identity");
	KEY("a");
	KEY("Attributes");
	msgpack_pack_map(&pk, 1);
	BAD();
	KEY("v");
	r = (struct row){ .name = "Attributes map key not UTF-8",
	    .want = REQ_BAD_UTF8, .identity = "a" };
	expect(&r, "msgpack", sb.data, sb.size);
	msgpack_sbuffer_destroy(&sb);

	START();
	msgpack_pack_map(&pk, 2);
	KEY("Identity");
	KEY("a");
	KEY("Attributes");
	msgpack_pack_map(&pk, 1);
	msgpack_pack_str(&pk, 3);
	msgpack_pack_str_body(&pk, "k\0k", 3);
	KEY("v");
	r = (struct row){ .name = "Attributes map key with a NUL",
	    .want = REQ_ATTRIBUTES_NOT_JSON, .identity = "a" };
	expect(&r, "msgpack", sb.data, sb.size);
	msgpack_sbuffer_destroy(&sb);

	START();
	msgpack_pack_map(&pk, 2);
	KEY("Identity");
	KEY("a");
	BAD();
	msgpack_pack_int(&pk, 1);
	r = (struct row){ .name = "unknown key not UTF-8",
	    .want = REQ_UNKNOWN_FIELD, .err = "unknown field \"a\\xff\"",
	    .identity = "a" };
	expect(&r, "msgpack", sb.data, sb.size);
	msgpack_sbuffer_destroy(&sb);

	START();
	msgpack_pack_map(&pk, 2);
	KEY("Identity");
	KEY("a");
	msgpack_pack_str(&pk, 9);
	msgpack_pack_str_body(&pk, "Identity\0", 9);
	msgpack_pack_int(&pk, 1);
	r = (struct row){ .name = "unknown key with a NUL",
	    .want = REQ_UNKNOWN_FIELD, .err = "unknown field \"Identity\\x00\"",
	    .identity = "a" };
	expect(&r, "msgpack", sb.data, sb.size);
	msgpack_sbuffer_destroy(&sb);

	/* bin is a string too. */
	START();
	msgpack_pack_map(&pk, 2);
	msgpack_pack_bin(&pk, 8);
	msgpack_pack_bin_body(&pk, "Identity", 8);
	msgpack_pack_bin(&pk, 3);
	msgpack_pack_bin_body(&pk, "bob", 3);
	KEY("WebhookEnabled");
	msgpack_pack_true(&pk);
	r = (struct row){ .name = "bin key and value", .identity = "bob",
	    .webhook = W_TRUE };
	expect(&r, "msgpack", sb.data, sb.size);
	msgpack_sbuffer_destroy(&sb);

#undef KEY
#undef BAD
#undef START
}

static void
test_error_codes(void)
{
	static const struct {
		enum request_error	 e;
		const char		*code;
	} rows[] = {
		{ REQ_MALFORMED, "malformed" },
		{ REQ_TOO_LARGE, "too_large" },
		{ REQ_UNKNOWN_FIELD, "unknown_field" },
		{ REQ_BAD_TYPE, "bad_type" },
		{ REQ_MISSING_IDENTITY, "missing_identity" },
		{ REQ_IDENTITY_TOO_LONG, "identity_too_long" },
		{ REQ_IDENTITY_IS_SID, "identity_is_sid" },
		{ REQ_BAD_UTF8, "bad_utf8" },
		{ REQ_FRIENDLY_NAME_TOO_LONG, "friendly_name_too_long" },
		{ REQ_ATTRIBUTES_NOT_JSON, "attributes_not_json" },
		{ REQ_ATTRIBUTES_TOO_LONG, "attributes_too_long" },
		{ REQ_BAD_ROLE_SID, "bad_role_sid" },
		{ REQ_BAD_REQUEST_ID, "bad_request_id" },
		{ REQ_REPLY_TO_FORBIDDEN, "reply_to_forbidden" },
	};
	size_t	 i;

	for (i = 0; i < NROWS(rows); i++)
		CHECK(same(request_error_code(rows[i].e), rows[i].code),
		    "request_error_code(%d) is %s", (int)rows[i].e,
		    rows[i].code);
	CU_ASSERT(request_error_code(REQ_OK) == NULL);
	CU_ASSERT(request_error_code((enum request_error)99) == NULL);
}

/* request_free is safe on a parsed, a refused and an already freed one;
 * err may be NULL. */
static void
test_free(void)
{
	static const char text[] = "{\"Identity\":\"a\",\"Attributes\":{}}";

	struct request	 req;

	CU_ASSERT(request_parse(text, strlen(text), &scope, &req, NULL, 0) == REQ_OK);
	CU_ASSERT_STRING_EQUAL(req.attributes, "{}");
	request_free(&req);
	CU_ASSERT(req.identity == NULL && req.attributes == NULL);
	request_free(&req);
	CU_ASSERT(request_parse("{}", 2, &scope, &req, NULL, 0) ==
	    REQ_MISSING_IDENTITY);
	request_free(&req);
	request_free(NULL);
}

int
main(void)
{
	static const struct {
		const char	*name;
		CU_TestFunc	 fn;
	} tests[] = {
		{ "valid requests", test_valid },
		{ "one row per error", test_errors },
		{ "boundary lengths", test_boundaries },
		{ "frame size", test_frame_size },
		{ "msgpack-only inputs", test_msgpack_only },
		{ "error code strings", test_error_codes },
		{ "request_free", test_free },
	};
	CU_pSuite	 suite;
	unsigned int	 failures;
	size_t		 i;

	if (CU_initialize_registry() != CUE_SUCCESS)
		return 2;
	if ((suite = CU_add_suite("request", NULL, NULL)) == NULL)
		goto fail;
	for (i = 0; i < NROWS(tests); i++)
		if (CU_add_test(suite, tests[i].name, tests[i].fn) == NULL)
			goto fail;
	CU_basic_set_mode(CU_BRM_VERBOSE);
	if (CU_basic_run_tests() != CUE_SUCCESS)
		goto fail;
	failures = CU_get_number_of_failures();
	CU_cleanup_registry();
	return failures > 0 ? 1 : 0;

fail:
	fprintf(stderr, "CUnit: %s\n", CU_get_error_msg());
	CU_cleanup_registry();
	return 2;
}
