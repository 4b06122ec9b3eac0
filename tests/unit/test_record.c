/*
 * test_record.c: record.c against Twilio's answers -- the user resource of
 * the Conversations API (the example of Twilio's documentation, fields
 * shuffled and extra ones added) and its error bodies.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <CUnit/Basic.h>

#include "usergate.h"

#define NROWS(a)	(sizeof(a) / sizeof((a)[0]))
#define SID_HEX		"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
#define USER_URL	"https://conversations.twilio.com/v1/Users/US" SID_HEX

/* As Twilio sends it, in another order, with fields SPEC §4.3 drops. */
static const char full_answer[] =
    "{\n"
    "  \"links\": {\"user_conversations\": \"" USER_URL "/Conversations\"},\n"
    "  \"url\": \"" USER_URL "\",\n"
    "  \"date_updated\": \"2019-12-16T22:18:38Z\",\n"
    "  \"date_created\": \"2019-12-16T22:18:37Z\",\n"
    "  \"is_notifiable\": null,\n"
    "  \"is_online\": true,\n"
    "  \"attributes\": \"{ \\\"duty\\\": \\\"tech\\\" }\",\n"
    "  \"friendly_name\": \"name\",\n"
    "  \"identity\": \"admin\",\n"
    "  \"role_sid\": \"RL" SID_HEX "\",\n"
    "  \"chat_service_sid\": \"IS" SID_HEX "\",\n"
    "  \"account_sid\": \"AC" SID_HEX "\",\n"
    "  \"sid\": \"US" SID_HEX "\",\n"
    "  \"reachability\": {\"enabled\": false},\n"
    "  \"web_page\": \"https://example.com\",\n"
    "  \"is_admin\": 1\n"
    "}\n";

static const char *const fields[] = {
	"sid", "account_sid", "chat_service_sid", "role_sid", "identity",
	"friendly_name", "attributes", "is_online", "is_notifiable",
	"date_created", "date_updated", "url", "links",
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

/* strcmp that takes a missing value (NULL) as a mismatch, not a crash. */
static int
streq(const char *a, const char *b)
{
	return a != NULL && b != NULL && strcmp(a, b) == 0;
}

static json_t *
parse_record(const char *text)
{
	json_t	*r = record_from_twilio(text, strlen(text), NULL, NULL);

	CU_ASSERT_FATAL(r != NULL);
	return r;
}

/* The 13 fields, in SPEC order, types kept; the rest dropped. */
static void
test_full_answer(void)
{
	json_t		*r, *links, *back;
	void		*iter;
	char		*out, err[256];
	size_t		 i, len;

	r = parse_record(full_answer);
	CU_ASSERT_EQUAL(json_object_size(r), NROWS(fields));
	for (i = 0, iter = json_object_iter(r); i < NROWS(fields) && iter != NULL;
	    i++, iter = json_object_iter_next(r, iter))
		CHECK(streq(json_object_iter_key(iter), fields[i]),
		    "field %zu is %s, want %s", i, json_object_iter_key(iter),
		    fields[i]);
	CU_ASSERT(i == NROWS(fields) && iter == NULL);

	CU_ASSERT(streq(json_string_value(json_object_get(r, "sid")),
	    "US" SID_HEX));
	CU_ASSERT(streq(json_string_value(json_object_get(r, "attributes")),
	    "{ \"duty\": \"tech\" }"));
	CU_ASSERT(json_is_true(json_object_get(r, "is_online")));
	CU_ASSERT(json_is_null(json_object_get(r, "is_notifiable")));
	links = json_object_get(r, "links");
	CU_ASSERT(json_is_object(links) && json_object_size(links) == 1);
	CU_ASSERT(streq(json_string_value(json_object_get(links,
	    "user_conversations")), USER_URL "/Conversations"));
	CU_ASSERT(json_object_get(r, "reachability") == NULL);
	CU_ASSERT(json_object_get(r, "web_page") == NULL);
	CU_ASSERT(json_object_get(r, "is_admin") == NULL);

	/* Published as msgpack, it reads back the same: null stays nil. */
	CU_ASSERT_FATAL(codec_encode(r, FORMAT_MSGPACK, &out, &len) == 0);
	CU_ASSERT_FATAL(codec_decode(out, len, &back, err, sizeof(err)) ==
	    CODEC_OK);
	CU_ASSERT(json_equal(r, back));
	json_decref(back);
	free(out);
	/* And as JSON, in SPEC order. */
	CU_ASSERT_FATAL(codec_encode(r, FORMAT_JSON, &out, &len) == 0);
	CU_ASSERT(strncmp(out, "{\"sid\":\"US", 10) == 0);
	CU_ASSERT(strstr(out, "\"is_notifiable\":null,") != NULL);
	free(out);
	json_decref(r);
}

/* Partial answers keep what they have, nothing more. */
static void
test_partial_answer(void)
{
	static const struct {
		const char	*body;
		const char	*want;	/* the record as compact JSON */
	} rows[] = {
		{ "{\"sid\":\"US1\"}", "{\"sid\":\"US1\"}" },
		{ "{\"identity\":\"x\",\"foo\":[1],\"sid\":\"US1\"}",
		    "{\"sid\":\"US1\",\"identity\":\"x\"}" },
		{ "{\"sid\":\"US1\",\"role_sid\":null,\"links\":null}",
		    "{\"sid\":\"US1\",\"role_sid\":null,\"links\":null}" },
		{ "{\"sid\":\"US1\",\"is_online\":false,\"attributes\":\"{}\"}",
		    "{\"sid\":\"US1\",\"attributes\":\"{}\",\"is_online\":false}" },
		/* Types are kept even when they are not what Twilio documents. */
		{ "{\"sid\":\"US1\",\"friendly_name\":7}",
		    "{\"sid\":\"US1\",\"friendly_name\":7}" },
	};
	json_t		*r;
	char		*out;
	size_t		 i, len;

	for (i = 0; i < NROWS(rows); i++) {
		r = parse_record(rows[i].body);
		CHECK(codec_encode(r, FORMAT_JSON, &out, &len) == 0,
		    "encode %s", rows[i].body);
		CHECK(streq(out, rows[i].want), "%s gave %s, want %s",
		    rows[i].body, out ? out : "NULL", rows[i].want);
		free(out);
		json_decref(r);
	}
}

static void
test_not_a_record(void)
{
	static const struct {
		const char	*name;
		const char	*body;
	} rows[] = {
		{ "empty", "" },
		{ "not JSON", "<html>502 Bad Gateway</html>" },
		{ "truncated", "{\"sid\":\"US1\"" },
		{ "array", "[{\"sid\":\"US1\"}]" },
		{ "string", "\"US1\"" },
		{ "no sid", "{\"identity\":\"x\"}" },
		{ "null sid", "{\"sid\":null,\"identity\":\"x\"}" },
		{ "integer sid", "{\"sid\":5}" },
		{ "empty sid", "{\"sid\":\"\"}" },
		{ "an error body", "{\"code\":20404,\"message\":\"not found\","
		    "\"status\":404}" },
	};
	json_t	*r;
	size_t	 i;

	for (i = 0; i < NROWS(rows); i++) {
		r = record_from_twilio(rows[i].body, strlen(rows[i].body), NULL, NULL);
		CHECK(r == NULL, "%s is not a record", rows[i].name);
		json_decref(r);
	}
	CU_ASSERT(record_from_twilio(NULL, 0, NULL, NULL) == NULL);
	/* The length is honoured: a valid answer cut short is refused. */
	CU_ASSERT(record_from_twilio(full_answer, 40, NULL, NULL) == NULL);
}

/*
 * An answer must be the request's user with a well-formed sid, on every
 * path: cJSON (plain text), jansson (a "\u0000" or a number sends it
 * there) and the msgpack shortcut, which declines what the others refuse.
 */
static void
test_wrong_user(void)
{
	static const struct {
		const char		*name;
		const char		*body;
		const char		*identity;
		enum record_answer	 want;
	} rows[] = {
		{ "the user", "{\"sid\":\"US" SID_HEX "\",\"identity\":\"a\"}",
		    "a", RECORD_USER },
		{ "upper-case hex", "{\"sid\":\"US" "ABCDEF0123456789ABCDEF0123456789"
		    "\",\"identity\":\"a\"}", "a", RECORD_USER },
		{ "a number sends it to jansson", "{\"sid\":\"US" SID_HEX "\","
		    "\"identity\":\"a\",\"friendly_name\":7}", "a", RECORD_USER },
		{ "short sid", "{\"sid\":\"US1\",\"identity\":\"a\"}", "a",
		    RECORD_WRONG_USER },
		{ "sid of a role", "{\"sid\":\"RL" SID_HEX "\",\"identity\":"
		    "\"a\"}", "a", RECORD_WRONG_USER },
		{ "sid with a non-hex digit", "{\"sid\":\"US" "g" SID_HEX "\","
		    "\"identity\":\"a\"}", "a", RECORD_WRONG_USER },
		{ "sid too long", "{\"sid\":\"US" SID_HEX "0\",\"identity\":"
		    "\"a\"}", "a", RECORD_WRONG_USER },
		{ "another identity", "{\"sid\":\"US" SID_HEX "\",\"identity\":"
		    "\"b\"}", "a", RECORD_WRONG_USER },
		{ "identity differs in case", "{\"sid\":\"US" SID_HEX "\","
		    "\"identity\":\"A\"}", "a", RECORD_WRONG_USER },
		{ "identity longer", "{\"sid\":\"US" SID_HEX "\",\"identity\":"
		    "\"ab\"}", "a", RECORD_WRONG_USER },
		{ "identity cut at a NUL (jansson)", "{\"sid\":\"US" SID_HEX "\","
		    "\"identity\":\"a\\u0000b\"}", "a", RECORD_WRONG_USER },
		{ "another identity, with a number (jansson)", "{\"sid\":\"US"
		    SID_HEX "\",\"identity\":\"b\",\"is_online\":1}", "a",
		    RECORD_WRONG_USER },
		{ "no identity", "{\"sid\":\"US" SID_HEX "\"}", "a",
		    RECORD_WRONG_USER },
		{ "identity not a string", "{\"sid\":\"US" SID_HEX "\","
		    "\"identity\":null}", "a", RECORD_WRONG_USER },
		{ "no sid is no record", "{\"identity\":\"a\"}", "a",
		    RECORD_NOT_USER },
		{ "not JSON is no record", "<html>", "a", RECORD_NOT_USER },
	};
	enum record_answer what;
	json_t		*r;
	char		*out;
	size_t		 i, len;
	int		 straight;

	for (i = 0; i < NROWS(rows); i++) {
		what = (enum record_answer)99;
		r = record_from_twilio(rows[i].body, strlen(rows[i].body),
		    rows[i].identity, &what);
		CHECK(what == rows[i].want && (r != NULL) ==
		    (rows[i].want == RECORD_USER), "%s: got %d, want %d",
		    rows[i].name, (int)what, (int)rows[i].want);
		json_decref(r);
		straight = record_msgpack_from_twilio(rows[i].body,
		    strlen(rows[i].body), rows[i].identity, &out, &len);
		CHECK(rows[i].want == RECORD_USER || !straight,
		    "%s: the msgpack shortcut declines", rows[i].name);
		free(out);
	}
	/* Without an identity, parsing alone: the short sid is a record. */
	r = record_from_twilio(rows[3].body, strlen(rows[3].body), NULL, &what);
	CU_ASSERT(r != NULL && what == RECORD_USER);
	json_decref(r);
}

/*
 * The record as jansson alone would build it: the reference the cJSON fast
 * path of record_from_twilio must match, value for value and in order.
 */
static json_t *
jansson_record(const char *body, size_t len)
{
	json_error_t	 jerr;
	json_t		*answer, *record, *sid, *v;
	size_t		 i;

	answer = json_loadb(body, len, JSON_ALLOW_NUL, &jerr);
	sid = json_object_get(answer, "sid");
	if (!json_is_object(answer) || !json_is_string(sid) ||
	    json_string_length(sid) == 0) {
		json_decref(answer);
		return NULL;
	}
	record = json_object();
	for (i = 0; i < NROWS(fields); i++)
		if ((v = json_object_get(answer, fields[i])) != NULL)
			json_object_set(record, fields[i], v);
	json_decref(answer);
	return record;
}

/* Equal values, object keys in the same order (json_equal ignores it). */
static int
same_record(const json_t *a, const json_t *b)
{
	void	*ia, *ib;

	if (a == NULL || b == NULL)
		return a == b;
	if (!json_equal(a, b))
		return 0;
	/* json_equal takes 7 and 7.0 for different types: good. */
	for (ia = json_object_iter((json_t *)a), ib = json_object_iter(
	    (json_t *)b); ia != NULL && ib != NULL;
	    ia = json_object_iter_next((json_t *)a, ia),
	    ib = json_object_iter_next((json_t *)b, ib))
		if (strcmp(json_object_iter_key(ia), json_object_iter_key(ib)))
			return 0;
	return ia == NULL && ib == NULL;
}

/*
 * record_from_twilio parses with cJSON and falls back to jansson where
 * cJSON cannot be exact; whichever way, the record is the one jansson
 * gives.  The rows are the shapes where the two parsers differ.
 */
/* The shapes where cJSON and jansson differ, and repeated keys. */
static const struct {
	const char	*name;
	const char	*body;
	size_t		 len;	/* 0: strlen */
} agree_rows[] = {
	{ "full answer", full_answer, 0 },
	{ "integer", "{\"sid\":\"US1\",\"friendly_name\":7}", 0 },
	{ "real", "{\"sid\":\"US1\",\"friendly_name\":7.0}", 0 },
	{ "big integer",
	    "{\"sid\":\"US1\",\"friendly_name\":9007199254740993}", 0 },
	{ "number deep in links",
	    "{\"sid\":\"US1\",\"links\":{\"a\":[true,{\"b\":1e3}]}}", 0 },
	{ "number in a dropped field",
	    "{\"sid\":\"US1\",\"x\":1.5,\"identity\":\"i\"}", 0 },
	{ "NUL escape in a value",
	    "{\"sid\":\"US1\",\"friendly_name\":\"a\\u0000b\"}", 0 },
	{ "NUL escape in sid", "{\"sid\":\"\\u0000\"}", 0 },
	{ "escapes and non-ASCII",
	    "{\"sid\":\"US1\",\"friendly_name\":\"\\u00e9\\ud83d\\ude00"
	    "\\n\\\"\\\\\xc3\xa9\"}", 0 },
	{ "lone surrogate",
	    "{\"sid\":\"US1\",\"friendly_name\":\"\\ud83d\"}", 0 },
	{ "invalid UTF-8 in a kept value",
	    "{\"sid\":\"US1\",\"friendly_name\":\"\xff\"}", 0 },
	{ "trailing whitespace", "{\"sid\":\"US1\"} \r\n\t", 0 },
	{ "trailing garbage", "{\"sid\":\"US1\"}x", 0 },
	{ "two values", "{\"sid\":\"US1\"}{}", 0 },
	{ "trailing NUL", "{\"sid\":\"US1\"}\0", 14 },
	{ "empty object", "{}", 0 },
	{ "nested empties",
	    "{\"sid\":\"US1\",\"links\":{},\"attributes\":[]}", 0 },
	{ "unterminated", "{\"sid\":\"US1\",\"links\":{", 0 },
	{ "bad escape", "{\"sid\":\"US\\x1\"}", 0 },
	{ "unquoted key", "{sid:\"US1\"}", 0 },
	/* jansson keeps the last of a repeated key. */
	{ "repeated key",
	    "{\"sid\":\"US1\",\"identity\":\"a\",\"identity\":\"b\"}", 0 },
	{ "repeated sid", "{\"sid\":\"US1\",\"x\":1,\"sid\":\"US2\"}", 0 },
	{ "repeated sid, the last empty", "{\"sid\":\"US1\",\"sid\":\"\"}", 0 },
	{ "fields in another order, unknown ones between",
	    "{\"links\":{\"a\":\"b\"},\"new\":\"n\",\"identity\":\"i\","
	    "\"sid\":\"US1\",\"role_sid\":\"RL1\",\"zz\":null,"
	    "\"account_sid\":\"AC1\"}", 0 },
	{ "repeated key inside links",
	    "{\"sid\":\"US1\",\"links\":{\"a\":\"1\",\"a\":\"2\"}}", 0 },
	{ "key inside links not UTF-8",
	    "{\"sid\":\"US1\",\"links\":{\"x\xff\":\"1\"}}", 0 },
	{ "arrays, booleans and null kept",
	    "{\"sid\":\"US1\",\"attributes\":[true,false,null,\"s\",[],{}],"
	    "\"is_online\":null,\"is_notifiable\":false}", 0 },
	{ "long strings",
	    "{\"sid\":\"US1\",\"friendly_name\":\""
	    "0123456789012345678901234567890123456789012345678901234567890123456789"
	    "0123456789012345678901234567890123456789012345678901234567890123456789"
	    "0123456789012345678901234567890123456789012345678901234567890123456789"
	    "0123456789012345678901234567890123456789012345678901234567890123456789"
	    "\"}", 0 },
};

static void
test_parsers_agree(void)
{
	json_t	*got, *want;
	size_t	 i, len;

	for (i = 0; i < NROWS(agree_rows); i++) {
		len = agree_rows[i].len ? agree_rows[i].len : strlen(agree_rows[i].body);
		got = record_from_twilio(agree_rows[i].body, len, NULL, NULL);
		want = jansson_record(agree_rows[i].body, len);
		CHECK(same_record(got, want), "%s: %s, jansson %s",
		    agree_rows[i].name, got ? "a record" : "NULL",
		    want ? "a record" : "NULL");
		json_decref(got);
		json_decref(want);
	}
}

/*
 * record_msgpack_from_twilio gives exactly the bytes codec_encode gives for
 * record_from_twilio's record, or declines (0) and leaves the answer to
 * it; it declines only where the json_t path is needed.
 */
static void
test_msgpack_straight(void)
{
	static const char *const must_decline[] = {
		"integer", "real", "big integer", "number deep in links",
		"NUL escape in a value", "NUL escape in sid", "repeated key inside links",
		"key inside links not UTF-8",
		"invalid UTF-8 in a kept value",
	};
	json_t	*rec;
	char	*got, *want;
	size_t	 i, k, len, glen, wlen;
	int	 straight, declined;

	for (i = 0; i < NROWS(agree_rows); i++) {
		len = agree_rows[i].len ? agree_rows[i].len : strlen(agree_rows[i].body);
		straight = record_msgpack_from_twilio(agree_rows[i].body, len, NULL, &got,
		    &glen);
		rec = record_from_twilio(agree_rows[i].body, len, NULL, NULL);
		for (declined = 0, k = 0; k < NROWS(must_decline); k++)
			if (strcmp(agree_rows[i].name, must_decline[k]) == 0)
				declined = 1;
		if (declined) {
			CHECK(!straight && got == NULL, "%s: declined", agree_rows[i].name);
		} else if (rec == NULL) {
			CHECK(!straight, "%s: not a record either way", agree_rows[i].name);
		} else {
			CHECK(straight, "%s: packed straight", agree_rows[i].name);
			CU_ASSERT_FATAL(codec_encode(rec, FORMAT_MSGPACK, &want, &wlen) == 0);
			CHECK(straight && glen == wlen && memcmp(got, want, wlen) == 0,
			    "%s: the same bytes as codec_encode", agree_rows[i].name);
			free(want);
		}
		free(got);
		json_decref(rec);
	}
	CU_ASSERT(record_msgpack_from_twilio(NULL, 0, NULL, &got, &glen) == 0 && got == NULL);
	/* The length is honoured. */
	CU_ASSERT(record_msgpack_from_twilio(full_answer, 40, NULL, &got, &glen) == 0);
}

/*
 * Where cJSON alone reads the answer, a malformed field the record drops
 * does not lose the user: jansson refuses the whole body for a byte that is
 * not UTF-8 anywhere, the fast path only where the record keeps it.
 */
static void
test_dropped_field_not_utf8(void)
{
	static const char body[] =
	    "{\"sid\":\"US1\",\"web_page\":\"\xff\",\"identity\":\"i\"}";
	json_t	*r;

	r = record_from_twilio(body, strlen(body), NULL, NULL);
	CU_ASSERT_FATAL(r != NULL);
	CU_ASSERT(json_object_size(r) == 2);
	CU_ASSERT(streq(json_string_value(json_object_get(r, "identity")),
	    "i"));
	json_decref(r);
}

static void
test_twilio_error(void)
{
	static const struct {
		const char	*name;
		const char	*body;
		long		 code;
		const char	*message;
	} rows[] = {
		{ "full", "{\"code\":50201,\"message\":\"User already exists\","
		    "\"more_info\":\"https://www.twilio.com/docs/errors/50201\","
		    "\"status\":409}", 50201, "User already exists" },
		{ "code only", "{\"code\":20429}", 20429, NULL },
		{ "message only", "{\"message\":\"Bad\"}", 0, "Bad" },
		{ "code as string", "{\"code\":\"20003\",\"message\":\"x\"}", 0,
		    "x" },
		{ "message as integer", "{\"code\":1,\"message\":2}", 1, NULL },
		{ "null fields", "{\"code\":null,\"message\":null}", 0, NULL },
		{ "empty object", "{}", 0, NULL },
		{ "not JSON", "<html>Service Unavailable</html>", 0, NULL },
		{ "array", "[{\"code\":1}]", 0, NULL },
		{ "empty", "", 0, NULL },
		{ "UTF-8 message", "{\"code\":50203,\"message\":\"Identit\\u00e9\"}",
		    50203, "Identit\xc3\xa9" },
	};
	char	*message;
	long	 code;
	size_t	 i;

	for (i = 0; i < NROWS(rows); i++) {
		code = -1;
		message = (char *)"sentinel";
		record_twilio_error(rows[i].body, strlen(rows[i].body), &code,
		    &message);
		CHECK(code == rows[i].code, "%s: code %ld, want %ld",
		    rows[i].name, code, rows[i].code);
		if (rows[i].message == NULL)
			CHECK(message == NULL, "%s: message %s, want NULL",
			    rows[i].name, message);
		else
			CHECK(streq(message, rows[i].message),
			    "%s: message %s", rows[i].name,
			    message ? message : "NULL");
		free(message);
	}

	/* NULL body, and outputs the caller does not want. */
	record_twilio_error(NULL, 0, &code, &message);
	CU_ASSERT(code == 0 && message == NULL);
	record_twilio_error(rows[0].body, strlen(rows[0].body), NULL, NULL);
	record_twilio_error(rows[0].body, strlen(rows[0].body), &code, NULL);
	CU_ASSERT(code == 50201);
}

/*
 * A message is kept up to RECORD_MESSAGE_MAX bytes, cut on a character
 * boundary and marked with an ellipsis: it goes into results and logs.
 */
static void
test_twilio_error_long_message(void)
{
	static const struct {
		const char	*name;
		size_t		 ascii;		/* 'a's before the tail */
		const char	*tail;
		size_t		 want_len;	/* of the message kept */
	} rows[] = {
		{ "at the limit", RECORD_MESSAGE_MAX, "", RECORD_MESSAGE_MAX },
		{ "100 KiB", 100 * 1024, "", RECORD_MESSAGE_MAX + 3 },
		{ "a character across the limit", RECORD_MESSAGE_MAX - 1,
		    "\xc3\xa9", RECORD_MESSAGE_MAX - 1 + 3 },
	};
	char	*body, *message;
	size_t	 i, len;
	long	 code;

	for (i = 0; i < NROWS(rows); i++) {
		len = rows[i].ascii + strlen(rows[i].tail) + 64;
		CU_ASSERT_FATAL((body = malloc(len)) != NULL);
		len = (size_t)snprintf(body, len, "{\"code\":21000,\"message\":\"%0*d%s\"}",
		    (int)rows[i].ascii, 0, rows[i].tail);
		memset(body + strlen("{\"code\":21000,\"message\":\""), 'a',
		    rows[i].ascii);
		record_twilio_error(body, len, &code, &message);
		CHECK(message != NULL && strlen(message) == rows[i].want_len,
		    "%s: %zu bytes, want %zu", rows[i].name,
		    message ? strlen(message) : 0, rows[i].want_len);
		if (rows[i].want_len > RECORD_MESSAGE_MAX)
			CHECK(message != NULL && strcmp(message +
			    strlen(message) - 3, "\xe2\x80\xa6") == 0 &&
			    codec_utf8_valid(message, strlen(message)),
			    "%s: no ellipsis", rows[i].name);
		free(message);
		free(body);
	}
}

static void
test_differs(void)
{
	static const char *const full = "{\"sid\":\"US1\",\"role_sid\":\"RL" SID_HEX
	    "\",\"friendly_name\":\"name\",\"attributes\":"
	    "\"{ \\\"duty\\\": \\\"tech\\\", \\\"n\\\": [1, 2] }\"}";
	static const struct {
		const char	*name;
		const char	*record;	/* NULL: the full one above */
		const char	*friendly_name;
		const char	*attributes;
		const char	*role_sid;
		int		 want;
	} rows[] = {
		{ "nothing asked", NULL, NULL, NULL, NULL, 0 },
		{ "nothing asked, empty record", "{\"sid\":\"US1\"}", NULL, NULL,
		    NULL, 0 },
		{ "same FriendlyName", NULL, "name", NULL, NULL, 0 },
		{ "other FriendlyName", NULL, "Name", NULL, NULL, 1 },
		{ "FriendlyName prefix", NULL, "nam", NULL, NULL, 1 },
		{ "FriendlyName empty vs set", NULL, "", NULL, NULL, 1 },
		{ "FriendlyName vs null", "{\"sid\":\"US1\",\"friendly_name\":null}",
		    "name", NULL, NULL, 1 },
		{ "FriendlyName vs absent", "{\"sid\":\"US1\"}", "name", NULL,
		    NULL, 1 },
		{ "FriendlyName vs NUL inside",
		    "{\"sid\":\"US1\",\"friendly_name\":\"name\\u0000x\"}",
		    "name", NULL, NULL, 1 },
		{ "same RoleSid", NULL, NULL, NULL, "RL" SID_HEX, 0 },
		{ "other RoleSid", NULL, NULL, NULL, "RL" SID_HEX "b", 1 },
		{ "RoleSid vs null", "{\"sid\":\"US1\",\"role_sid\":null}", NULL,
		    NULL, "RL" SID_HEX, 1 },
		{ "same Attributes, other spacing", NULL, NULL,
		    "{\"duty\":\"tech\",\"n\":[1,2]}", NULL, 0 },
		{ "same Attributes, other key order", NULL, NULL,
		    "{\"n\":[1,2],\"duty\":\"tech\"}", NULL, 0 },
		{ "other Attributes value", NULL, NULL,
		    "{\"duty\":\"tech\",\"n\":[2,1]}", NULL, 1 },
		{ "Attributes with a key more", NULL, NULL,
		    "{\"duty\":\"tech\",\"n\":[1,2],\"x\":null}", NULL, 1 },
		{ "record Attributes not JSON",
		    "{\"sid\":\"US1\",\"attributes\":\"oops\"}", NULL, "{}",
		    NULL, 1 },
		{ "record Attributes a JSON array",
		    "{\"sid\":\"US1\",\"attributes\":\"[]\"}", NULL, "{}", NULL,
		    1 },
		{ "record Attributes null",
		    "{\"sid\":\"US1\",\"attributes\":null}", NULL, "{}", NULL,
		    1 },
		{ "record Attributes absent", "{\"sid\":\"US1\"}", NULL, "{}",
		    NULL, 1 },
		{ "record Attributes an object",
		    "{\"sid\":\"US1\",\"attributes\":{\"a\":1}}", NULL,
		    "{ \"a\" : 1 }", NULL, 0 },
		{ "empty Attributes both", "{\"sid\":\"US1\",\"attributes\":"
		    "\"{}\"}", NULL, "{}", NULL, 0 },
		{ "all the same", NULL, "name", "{\"n\":[1,2],\"duty\":\"tech\"}",
		    "RL" SID_HEX, 0 },
		{ "all the same but RoleSid", NULL, "name",
		    "{\"n\":[1,2],\"duty\":\"tech\"}", "RL" SID_HEX "0", 1 },
	};
	struct request	 req;
	json_t		*record;
	size_t		 i;
	int		 got;

	for (i = 0; i < NROWS(rows); i++) {
		record = parse_record(rows[i].record ? rows[i].record : full);
		memset(&req, 0, sizeof(req));
		req.identity = (char *)"admin";
		req.webhook_enabled = -1;
		req.wait = 1;
		req.friendly_name = (char *)rows[i].friendly_name;
		req.attributes = (char *)rows[i].attributes;
		req.role_sid = (char *)rows[i].role_sid;
		got = record_differs(record, &req);
		CHECK(got == rows[i].want, "%s: differs %d, want %d",
		    rows[i].name, got, rows[i].want);
		json_decref(record);
	}
}

/* A request parsed for real, against the record of the full answer. */
static void
test_differs_parsed(void)
{
	static const char same[] = "{\"Identity\":\"admin\","
	    "\"FriendlyName\":\"name\",\"Attributes\":{\"duty\":\"tech\"}}";
	static const char other[] = "{\"Identity\":\"admin\","
	    "\"Attributes\":{\"duty\":\"sales\"}}";
	struct request	 req;
	json_t		*record;

	record = parse_record(full_answer);
	CU_ASSERT_FATAL(request_parse(same, strlen(same), NULL, &req, NULL, 0) ==
	    REQ_OK);
	CU_ASSERT(record_differs(record, &req) == 0);
	request_free(&req);
	CU_ASSERT_FATAL(request_parse(other, strlen(other), NULL, &req, NULL, 0) ==
	    REQ_OK);
	CU_ASSERT(record_differs(record, &req) == 1);
	request_free(&req);
	json_decref(record);
}

/*
 * What is read back from Redis: a stored user record and dead entries, in
 * either format.  A dead entry whose request has a key that is not UTF-8
 * (possible only from msgpack) has no JSON text: jansson would write it as
 * a broken string ({"Identity":"x",":1}), which `dead list` printed and
 * `dead retry` pushed back as a malformed request.
 */
static void
test_read_back(void)
{
	/* {"sid":"US1"} and ["US1"] in msgpack */
	static const char stored[] = "\x81\xa3sid\xa3US1", not_map[] = "\x91\xa3US1";
	/* {"request":{"Identity":"x"},"result":{"status":"failed"}} */
	static const char dead[] = "\x82\xa7request\x81\xa8Identity\xa1x"
	    "\xa6result\x81\xa6status\xa6" "failed";
	/* the same with the key "Id\xffentity" */
	static const char bad_key[] = "\x82\xa7request\x81\xa9Id\xff" "entity\xa1x"
	    "\xa6result\x81\xa6status\xa6" "failed";
	static const char json_dead[] = "{\"request\":{\"Identity\":\"\xc3\xa9\"},\"result\":{}}";
	json_t		*r;
	char		*s;
	size_t		 len;

	r = record_stored(stored, sizeof(stored) - 1);
	CU_ASSERT_FATAL(r != NULL);
	CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(r, "sid")), "US1");
	json_decref(r);
	CU_ASSERT(record_stored(not_map, sizeof(not_map) - 1) == NULL);
	CU_ASSERT(record_stored("\xc1", 1) == NULL);

	s = record_dead_line(dead, sizeof(dead) - 1);
	CU_ASSERT_FATAL(s != NULL);
	CU_ASSERT_STRING_EQUAL(s, "{\"request\":{\"Identity\":\"x\"},\"result\":"
	    "{\"status\":\"failed\"}}");
	free(s);
	s = record_dead_request(dead, sizeof(dead) - 1, &len);
	CU_ASSERT_FATAL(s != NULL);
	CU_ASSERT(len == strlen(s) && strcmp(s, "{\"Identity\":\"x\"}") == 0);
	free(s);
	s = record_dead_line(json_dead, sizeof(json_dead) - 1);
	CU_ASSERT_FATAL(s != NULL);
	CU_ASSERT_STRING_EQUAL(s, "{\"request\":{\"Identity\":\"\\u00E9\"},\"result\":{}}");
	free(s);

	s = record_dead_line(bad_key, sizeof(bad_key) - 1);
	CU_ASSERT_PTR_NULL(s);
	free(s);
	s = record_dead_request(bad_key, sizeof(bad_key) - 1, &len);
	CU_ASSERT_PTR_NULL(s);
	free(s);
	CU_ASSERT(record_dead_line("\xdf\x00\x00\x00\x01", 5) == NULL);
}

int
main(void)
{
	static const struct {
		const char	*name;
		CU_TestFunc	 fn;
	} tests[] = {
		{ "full Twilio answer", test_full_answer },
		{ "partial answers", test_partial_answer },
		{ "not a record", test_not_a_record },
		{ "not the request's user", test_wrong_user },
		{ "cJSON and jansson agree", test_parsers_agree },
		{ "msgpack straight from cJSON", test_msgpack_straight },
		{ "a dropped field that is not UTF-8", test_dropped_field_not_utf8 },
		{ "Twilio error bodies", test_twilio_error },
		{ "a long Twilio message is cut", test_twilio_error_long_message },
		{ "record_differs", test_differs },
		{ "record_differs with parsed requests", test_differs_parsed },
		{ "stored records and dead entries read back", test_read_back },
	};
	CU_pSuite	 suite;
	unsigned int	 failures;
	size_t		 i;

	if (CU_initialize_registry() != CUE_SUCCESS)
		return 2;
	if ((suite = CU_add_suite("record", NULL, NULL)) == NULL)
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
