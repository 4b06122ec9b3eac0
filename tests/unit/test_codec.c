/*
 * test_codec.c: codec.c against msgpack built here with msgpack_packer (or
 * written out byte by byte where the packer cannot make the bad input) and
 * JSON written by hand.  Table rows name themselves in failure reports.
 */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <CUnit/Basic.h>
#include <msgpack.h>

#include "usergate.h"

#define NROWS(a)	(sizeof(a) / sizeof((a)[0]))
/* A byte string literal with its length, NULs included. */
#define BYTES(s)	s, sizeof(s) - 1

/*
 * CU_ASSERT with a row name: CUnit copies the condition text into its
 * failure record, so the report says which row failed.
 */
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

/* A msgpack packer writing into its own growing buffer. */
struct mp {
	msgpack_sbuffer	 sb;
	msgpack_packer	 pk;
};

static void
mp_init(struct mp *m)
{
	msgpack_sbuffer_init(&m->sb);
	msgpack_packer_init(&m->pk, &m->sb, msgpack_sbuffer_write);
}

static void
mp_free(struct mp *m)
{
	msgpack_sbuffer_destroy(&m->sb);
}

static void
mp_str(struct mp *m, const char *s, size_t len)
{
	CU_ASSERT_FATAL(msgpack_pack_str(&m->pk, len) == 0);
	CU_ASSERT_FATAL(msgpack_pack_str_body(&m->pk, s, len) == 0);
}

#define MP_KEY(m, k)	mp_str((m), k, strlen(k))

/* ------------------------------------------------------------------ */

/* Compact JSON decodes and encodes back to the same text, key order kept. */
static void
test_json_round_trip(void)
{
	static const char *const texts[] = {
		"{}",
		"{\"a\":1}",
		"{\"z\":1,\"a\":2,\"m\":3}",
		"{\"b\":[1,2.5,\"x\",null,true,false],\"a\":{}}",
		"{\"\xc3\xa9t\xc3\xa9\":\"\xe2\x82\xac \xf0\x9f\x98\x80\"}",
		"{\"n\":-9223372036854775808,\"p\":9223372036854775807}",
		"{\"deep\":{\"er\":{\"est\":[[[]]]}}}",
	};
	enum codec_status st;
	json_t		*v;
	char		 err[256] = "", *out;
	size_t		 i, len;

	for (i = 0; i < NROWS(texts); i++) {
		st = codec_decode(texts[i], strlen(texts[i]), &v, err,
		    sizeof(err));
		CHECK(st == CODEC_OK, "decode %s: %s", texts[i], err);
		if (st != CODEC_OK)
			continue;
		CHECK(codec_encode(v, FORMAT_JSON, &out, &len) == 0,
		    "encode %s", texts[i]);
		CHECK(len == strlen(texts[i]) && memcmp(out, texts[i], len) == 0,
		    "round trip %s gave %.*s", texts[i], (int)len, out);
		free(out);
		json_decref(v);
	}
}

/* Every msgpack type the codec accepts, and what it becomes. */
static void
test_msgpack_types(void)
{
	static const char bin[] = { 'a', '\0', (char)0xff };
	struct mp	 m;
	json_t		*v, *x;
	char		 err[256] = "";

	mp_init(&m);
	msgpack_pack_map(&m.pk, 16);
	MP_KEY(&m, "nil");	msgpack_pack_nil(&m.pk);
	MP_KEY(&m, "true");	msgpack_pack_true(&m.pk);
	MP_KEY(&m, "false");	msgpack_pack_false(&m.pk);
	MP_KEY(&m, "fix");	msgpack_pack_uint8(&m.pk, 7);
	MP_KEY(&m, "u64max");	msgpack_pack_uint64(&m.pk, INT64_MAX);
	MP_KEY(&m, "neg");	msgpack_pack_int8(&m.pk, -5);
	MP_KEY(&m, "i64min");	msgpack_pack_int64(&m.pk, INT64_MIN);
	MP_KEY(&m, "f32");	msgpack_pack_float(&m.pk, 1.5f);
	MP_KEY(&m, "f64");	msgpack_pack_double(&m.pk, -2.25);
	MP_KEY(&m, "str");	mp_str(&m, "h\xc3\xa9", 3);
	MP_KEY(&m, "empty");	mp_str(&m, "", 0);
	MP_KEY(&m, "bin");	msgpack_pack_bin(&m.pk, sizeof(bin));
				msgpack_pack_bin_body(&m.pk, bin, sizeof(bin));
	MP_KEY(&m, "array");	msgpack_pack_array(&m.pk, 2);
				msgpack_pack_int(&m.pk, 1);
				mp_str(&m, "a", 1);
	MP_KEY(&m, "map");	msgpack_pack_map(&m.pk, 1);
				MP_KEY(&m, "k");
				mp_str(&m, "v", 1);
	/* A bin key is a string like any other bin. */
	msgpack_pack_bin(&m.pk, 6);
	msgpack_pack_bin_body(&m.pk, "binkey", 6);
	msgpack_pack_int(&m.pk, 1);
	MP_KEY(&m, "u16");	msgpack_pack_uint16(&m.pk, 65535);

	CU_ASSERT_FATAL(codec_decode(m.sb.data, m.sb.size, &v, err,
	    sizeof(err)) == CODEC_OK);
	CU_ASSERT_EQUAL(json_object_size(v), 16);
	CU_ASSERT(json_is_null(json_object_get(v, "nil")));
	CU_ASSERT(json_is_true(json_object_get(v, "true")));
	CU_ASSERT(json_is_false(json_object_get(v, "false")));
	CU_ASSERT(json_integer_value(json_object_get(v, "fix")) == 7);
	CU_ASSERT(json_integer_value(json_object_get(v, "u64max")) == INT64_MAX);
	CU_ASSERT(json_integer_value(json_object_get(v, "neg")) == -5);
	CU_ASSERT(json_integer_value(json_object_get(v, "i64min")) == INT64_MIN);
	CU_ASSERT(json_is_real(json_object_get(v, "f32")));
	CU_ASSERT(json_real_value(json_object_get(v, "f32")) == 1.5);
	CU_ASSERT(json_real_value(json_object_get(v, "f64")) == -2.25);
	CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(v, "str")),
	    "h\xc3\xa9");
	CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(v, "empty")), "");
	x = json_object_get(v, "bin");
	CU_ASSERT(json_is_string(x) && json_string_length(x) == sizeof(bin) &&
	    memcmp(json_string_value(x), bin, sizeof(bin)) == 0);
	x = json_object_get(v, "array");
	CU_ASSERT(json_array_size(x) == 2 &&
	    json_integer_value(json_array_get(x, 0)) == 1 &&
	    strcmp(json_string_value(json_array_get(x, 1)), "a") == 0);
	x = json_object_get(v, "map");
	CU_ASSERT(json_is_object(x) &&
	    strcmp(json_string_value(json_object_get(x, "k")), "v") == 0);
	CU_ASSERT(json_integer_value(json_object_get(v, "binkey")) == 1);
	CU_ASSERT(json_integer_value(json_object_get(v, "u16")) == 65535);
	json_decref(v);
	mp_free(&m);
}

struct decode_row {
	const char		*name;
	const char		*bytes;
	size_t			 len;
	int			 any;		/* codec_decode_any */
	enum codec_status	 want;
	const char		*err;		/* substring of the message */
};

static void
run_decode_rows(const struct decode_row *rows, size_t n)
{
	const struct decode_row	*r;
	enum codec_status	 st;
	json_t			*v;
	char			 err[256] = "";
	size_t			 i;

	for (i = 0; i < n; i++) {
		r = &rows[i];
		err[0] = '\0';
		v = (json_t *)&v;	/* a non-NULL sentinel to be overwritten */
		if (r->any)
			st = codec_decode_any(r->bytes, r->len, &v, err,
			    sizeof(err));
		else
			st = codec_decode(r->bytes, r->len, &v, err,
			    sizeof(err));
		CHECK(st == r->want, "%s: status %d, want %d (%s)", r->name,
		    (int)st, (int)r->want, err);
		if (st == CODEC_OK) {
			CHECK(v != NULL, "%s: no value", r->name);
			json_decref(v);
		} else {
			CHECK(v == NULL, "%s: *out not NULL on error", r->name);
			CHECK(r->err == NULL || strstr(err, r->err) != NULL,
			    "%s: message \"%s\" lacks \"%s\"", r->name, err,
			    r->err);
		}
	}
}

static void
test_msgpack_errors(void)
{
	static const struct decode_row rows[] = {
		{ "empty", "", 0, 0, CODEC_MALFORMED, "empty" },
		{ "empty any", "", 0, 1, CODEC_MALFORMED, "empty" },
		{ "never-used byte c1", BYTES("\xc1"), 0, CODEC_MALFORMED,
		    "neither JSON nor valid msgpack" },
		{ "trailing byte", BYTES("\x80\x00"), 0, CODEC_MALFORMED,
		    "1 trailing bytes" },
		{ "two maps glued", BYTES("\x81\xa1" "a\x01\x80"), 0,
		    CODEC_MALFORMED, "trailing" },
		{ "truncated str", BYTES("\x81\xa1" "a\xa5" "ab"), 0,
		    CODEC_MALFORMED, "truncated" },
		{ "uint64 over INT64_MAX", BYTES("\x81\xa1" "a"
		    "\xcf\x80\x00\x00\x00\x00\x00\x00\x00"), 0, CODEC_MALFORMED,
		    "integer out of range" },
		{ "uint64 max", BYTES("\x81\xa1" "a"
		    "\xcf\xff\xff\xff\xff\xff\xff\xff\xff"), 0, CODEC_MALFORMED,
		    "integer out of range" },
		{ "fixext1", BYTES("\x81\xa1" "a\xd4\x01\x00"), 0,
		    CODEC_MALFORMED, "ext" },
		{ "ext8 in array", BYTES("\x81\xa1" "a\x91\xc7\x01\x05\x00"),
		    0, CODEC_MALFORMED, "ext" },
		{ "NaN", BYTES("\x81\xa1" "a\xcb\x7f\xf8\x00\x00\x00\x00\x00\x00"),
		    0, CODEC_MALFORMED, "not finite" },
		{ "infinity f32", BYTES("\x81\xa1" "a\xca\x7f\x80\x00\x00"), 0,
		    CODEC_MALFORMED, "not finite" },
		{ "integer key", BYTES("\x81\x01\x01"), 0, CODEC_MALFORMED,
		    "map key must be a string, got a msgpack integer" },
		{ "nil key", BYTES("\x81\xc0\x01"), 0, CODEC_MALFORMED,
		    "got a msgpack nil" },
		{ "map key", BYTES("\x81\x80\x01"), 0, CODEC_MALFORMED,
		    "got a msgpack map" },
		{ "nested integer key", BYTES("\x81\xa1" "a\x81\x02\x03"), 0,
		    CODEC_MALFORMED, "map key must be a string" },
		{ "duplicate key", BYTES("\x82\xa1" "a\x01\xa1" "a\x02"), 0,
		    CODEC_MALFORMED, "duplicate map key \"a\"" },
		{ "duplicate str/bin key", BYTES("\x82\xa1" "a\x01\xc4\x01" "a\x02"),
		    0, CODEC_MALFORMED, "duplicate map key" },
		{ "duplicate unprintable key",
		    BYTES("\x82\xa2\x00\xff\x01\xa2\x00\xff\x02"), 0,
		    CODEC_MALFORMED, "duplicate map key" },
		{ "duplicate nested", BYTES("\x81\xa1" "a\x82\xa1" "b\xc0\xa1" "b\xc0"),
		    0, CODEC_MALFORMED, "duplicate map key \"b\"" },
		{ "not duplicate: NUL makes it longer",
		    BYTES("\x82\xa1" "a\x01\xa2" "a\x00\x02"), 0, CODEC_OK,
		    NULL },
		{ "array", BYTES("\x92\x01\x02"), 0, CODEC_NOT_MAP,
		    "got a msgpack array" },
		{ "str", BYTES("\xa1" "a"), 0, CODEC_NOT_MAP,
		    "got a msgpack string" },
		{ "bin", BYTES("\xc4\x01" "a"), 0, CODEC_NOT_MAP,
		    "got a msgpack bin" },
		{ "integer", BYTES("\x05"), 0, CODEC_NOT_MAP,
		    "got a msgpack integer" },
		{ "nil", BYTES("\xc0"), 0, CODEC_NOT_MAP, "got a msgpack nil" },
		{ "true", BYTES("\xc3"), 0, CODEC_NOT_MAP,
		    "got a msgpack boolean" },
		{ "float", BYTES("\xcb\x3f\xf0\x00\x00\x00\x00\x00\x00"), 0,
		    CODEC_NOT_MAP, "got a msgpack float" },
		{ "array, any", BYTES("\x92\x01\x02"), 1, CODEC_OK, NULL },
		{ "nil, any", BYTES("\xc0"), 1, CODEC_OK, NULL },
		{ "str, any", BYTES("\xa1" "a"), 1, CODEC_OK, NULL },
		{ "trailing, any", BYTES("\x05\x05"), 1, CODEC_MALFORMED,
		    "trailing" },
		{ "ext, any", BYTES("\xd4\x01\x00"), 1, CODEC_MALFORMED, "ext" },
		/* A 5-byte header announcing 4 billion elements. */
		{ "huge array header", BYTES("\x81\xa1" "a\xdd\xff\xff\xff\xff"), 0,
		    CODEC_MALFORMED, NULL },
		{ "huge map header", BYTES("\xdf\x00\x10\x00\x00"), 0,
		    CODEC_MALFORMED, NULL },
	};

	run_decode_rows(rows, NROWS(rows));
}

static void
test_json_errors(void)
{
	static const struct decode_row rows[] = {
		{ "trailing newline is fine", BYTES("{\"a\":1}\n"), 0, CODEC_OK,
		    NULL },
		{ "trailing garbage", BYTES("{\"a\":1}x"), 0, CODEC_MALFORMED,
		    "invalid JSON at byte" },
		{ "two objects", BYTES("{\"a\":1}{\"b\":2}"), 0, CODEC_MALFORMED,
		    "invalid JSON" },
		{ "two objects on two lines", BYTES("{\"a\":1}\n{\"b\":2}\n"), 0,
		    CODEC_MALFORMED, "invalid JSON" },
		{ "duplicate key", BYTES("{\"a\":1,\"a\":2}"), 0,
		    CODEC_MALFORMED, "duplicate object key" },
		{ "duplicate nested key", BYTES("{\"x\":{\"a\":1,\"a\":1}}"), 0,
		    CODEC_MALFORMED, "duplicate" },
		{ "truncated", BYTES("{\"a\":"), 0, CODEC_MALFORMED,
		    "invalid JSON" },
		{ "brace only", BYTES("{"), 0, CODEC_MALFORMED, "invalid JSON" },
		{ "single quotes", BYTES("{'a':1}"), 0, CODEC_MALFORMED,
		    "invalid JSON" },
		{ "bad UTF-8 in value", BYTES("{\"a\":\"\xff\"}"), 0,
		    CODEC_BAD_UTF8, "not valid UTF-8" },
		{ "bad UTF-8 in key", BYTES("{\"\xc3\x28\":1}"), 0,
		    CODEC_BAD_UTF8, "UTF-8" },
		{ "surrogate in UTF-8", BYTES("{\"a\":\"\xed\xa0\x80\"}"), 0,
		    CODEC_BAD_UTF8, "UTF-8" },
		{ "overlong", BYTES("{\"a\":\"\xc0\xaf\"}"), 0, CODEC_BAD_UTF8,
		    "UTF-8" },
		{ "escaped NUL is kept", BYTES("{\"a\":\"x\\u0000y\"}"), 0,
		    CODEC_OK, NULL },
		{ "leading space is msgpack", BYTES(" {\"a\":1}"), 0,
		    CODEC_MALFORMED, "trailing" },
		{ "JSON array is msgpack", BYTES("[1]"), 0, CODEC_MALFORMED,
		    NULL },
		{ "any: object", BYTES("{\"a\":[1]}"), 1, CODEC_OK, NULL },
	};

	run_decode_rows(rows, NROWS(rows));
}

/* Every proper prefix of a valid value is refused, in both formats. */
static void
test_truncated(void)
{
	static const char json[] =
	    "{\"Identity\":\"al\xc3\xa9@example.com\",\"Attributes\":{\"a\":[1,2]}}";
	enum codec_status st;
	struct mp	 m;
	json_t		*v;
	char		 err[256] = "";
	size_t		 n;

	mp_init(&m);
	msgpack_pack_map(&m.pk, 2);
	MP_KEY(&m, "Identity");
	MP_KEY(&m, "al\xc3\xa9@example.com");
	MP_KEY(&m, "n");
	msgpack_pack_array(&m.pk, 3);
	msgpack_pack_uint32(&m.pk, 70000);
	msgpack_pack_double(&m.pk, 0.5);
	msgpack_pack_bin(&m.pk, 2);
	msgpack_pack_bin_body(&m.pk, "xy", 2);

	CU_ASSERT_FATAL(codec_decode(m.sb.data, m.sb.size, &v, err,
	    sizeof(err)) == CODEC_OK);
	json_decref(v);
	for (n = 0; n < m.sb.size; n++) {
		st = codec_decode(m.sb.data, n, &v, err, sizeof(err));
		CHECK(st == CODEC_MALFORMED && v == NULL,
		    "msgpack prefix of %zu bytes: status %d", n, (int)st);
	}

	CU_ASSERT_FATAL(codec_decode(json, strlen(json), &v, err,
	    sizeof(err)) == CODEC_OK);
	json_decref(v);
	for (n = 0; n < strlen(json); n++) {
		st = codec_decode(json, n, &v, err, sizeof(err));
		CHECK(st != CODEC_OK && v == NULL,
		    "JSON prefix of %zu bytes: status %d", n, (int)st);
	}
	mp_free(&m);
}

/*
 * A map holding `levels - 1` nested arrays, `levels` containers in all, in
 * msgpack and as JSON text; one level is {"a":0}.  Exactly 32 levels are
 * accepted, in both formats.
 */
static void
nested(int levels, int leaf, struct mp *m, char **json)
{
	char	*p;
	int	 i;

	mp_init(m);
	msgpack_pack_map(&m->pk, 1);
	MP_KEY(m, "a");
	if (levels == 1)
		msgpack_pack_int(&m->pk, 0);
	for (i = 1; i < levels; i++)
		msgpack_pack_array(&m->pk, i + 1 < levels || leaf ? 1 : 0);
	if (levels > 1 && leaf)
		msgpack_pack_nil(&m->pk);

	CU_ASSERT_FATAL((*json = malloc(2 * (size_t)levels + 12)) != NULL);
	p = *json;
	p += sprintf(p, "{\"a\":");
	if (levels == 1)
		*p++ = '0';
	for (i = 1; i < levels; i++)
		*p++ = '[';
	if (levels > 1 && leaf)
		p += sprintf(p, "null");
	for (i = 1; i < levels; i++)
		*p++ = ']';
	*p++ = '}';
	*p = '\0';
}

static void
test_depth(void)
{
	static const struct {
		int			 levels;
		enum codec_status	 want;
	} rows[] = {
		{ 1, CODEC_OK },
		{ 2, CODEC_OK },
		{ 31, CODEC_OK },
		{ 32, CODEC_OK },
		{ 33, CODEC_MALFORMED },
		{ 34, CODEC_MALFORMED },
		{ 2000, CODEC_MALFORMED },
		{ 100000, CODEC_MALFORMED },
	};
	enum codec_status st;
	struct mp	 m;
	json_t		*v;
	char		 err[256] = "", *json, *out;
	size_t		 i, len;
	int		 leaf;

	/*
	 * levels counts containers; a scalar inside the innermost one
	 * (leaf) adds no level, in either format.  A fuzzer found msgpack
	 * counting it when JSON did not.
	 */
	for (leaf = 0; leaf <= 1; leaf++)
	for (i = 0; i < NROWS(rows); i++) {
		nested(rows[i].levels, leaf, &m, &json);
		st = codec_decode(m.sb.data, m.sb.size, &v, err, sizeof(err));
		CHECK(st == rows[i].want, "msgpack %d levels, leaf %d: %d (%s)",
		    rows[i].levels, leaf, (int)st, err);
		if (st == CODEC_OK) {
			/* What decodes must encode and decode again. */
			CHECK(codec_encode(v, FORMAT_JSON, &out, &len) == 0,
			    "re-encode %d levels", rows[i].levels);
			CHECK(strcmp(out, json) == 0, "msgpack %d levels as "
			    "JSON", rows[i].levels);
			free(out);
			json_decref(v);
		} else
			CHECK(strstr(err, "deeper than 32") != NULL,
			    "msgpack %d levels message: %s", rows[i].levels,
			    err);

		st = codec_decode(json, strlen(json), &v, err, sizeof(err));
		CHECK(st == rows[i].want, "JSON %d levels, leaf %d: %d (%s)",
		    rows[i].levels, leaf, (int)st, err);
		if (st == CODEC_OK)
			json_decref(v);
		else if (rows[i].levels < 2048)	/* else jansson's own limit */
			CHECK(strstr(err, "deeper than 32") != NULL,
			    "JSON %d levels message: %s", rows[i].levels, err);
		free(json);
		mp_free(&m);
	}
}

/*
 * JSON text that is not UTF-8 is refused by jansson (CODEC_BAD_UTF8);
 * the same bytes in a msgpack string are kept exactly, so that the
 * validator can name the field.
 */
static void
test_utf8_in_formats(void)
{
	static const char bad[] = "a\xff\xfe" "b";
	struct mp	 m;
	json_t		*v, *x;
	char		 err[256] = "";

	CU_ASSERT(codec_decode(BYTES("{\"Identity\":\"a\xff\xfe" "b\"}"), &v,
	    err, sizeof(err)) == CODEC_BAD_UTF8);
	CU_ASSERT(v == NULL);

	mp_init(&m);
	msgpack_pack_map(&m.pk, 2);
	MP_KEY(&m, "Identity");
	mp_str(&m, bad, sizeof(bad) - 1);
	mp_str(&m, "k\xff", 2);		/* key with a bad byte */
	mp_str(&m, "x\0y", 3);		/* NUL inside */
	CU_ASSERT_FATAL(codec_decode(m.sb.data, m.sb.size, &v, err,
	    sizeof(err)) == CODEC_OK);
	x = json_object_get(v, "Identity");
	CU_ASSERT(json_string_length(x) == sizeof(bad) - 1 &&
	    memcmp(json_string_value(x), bad, sizeof(bad) - 1) == 0);
	x = json_object_getn(v, "k\xff", 2);
	CU_ASSERT(json_string_length(x) == 3 &&
	    memcmp(json_string_value(x), "x\0y", 3) == 0);
	json_decref(v);
	mp_free(&m);

	/* An escaped NUL in JSON arrives the same way. */
	CU_ASSERT_FATAL(codec_decode(BYTES("{\"a\":\"x\\u0000y\"}"), &v, err,
	    sizeof(err)) == CODEC_OK);
	x = json_object_get(v, "a");
	CU_ASSERT(json_string_length(x) == 3 &&
	    memcmp(json_string_value(x), "x\0y", 3) == 0);
	json_decref(v);
}

/* A value with every type, nested, through both formats and back. */
static json_t *
sample_value(void)
{
	json_t	*v;

	v = json_pack("{s:s, s:I, s:I, s:I, s:f, s:n, s:b, s:b, s:[i, [i, {s:s}], s],"
	    " s:{s:i, s:i}, s:{}, s:[]}",
	    "str", "h\xc3\xa9llo \xf0\x9f\x98\x80",
	    "int", (json_int_t)-42,
	    "max", (json_int_t)INT64_MAX,
	    "min", (json_int_t)INT64_MIN,
	    "real", 0.1,
	    "null",
	    "t", 1,
	    "f", 0,
	    "arr", 1, 2, "k", "v", "",
	    "obj", "z", 1, "a", 2,
	    "emptyobj",
	    "emptyarr");
	CU_ASSERT_FATAL(v != NULL);
	/* A string with a NUL inside, which only the length can carry. */
	CU_ASSERT_FATAL(json_object_set_new(v, "nul",
	    json_stringn("x\0y", 3)) == 0);
	return v;
}

static void
test_encode_round_trip(void)
{
	static const enum results_format formats[] = { FORMAT_MSGPACK,
	    FORMAT_JSON };
	json_t		*v, *back;
	char		 err[256] = "", *out;
	size_t		 i, len;

	v = sample_value();
	for (i = 0; i < NROWS(formats); i++) {
		CU_ASSERT_FATAL(codec_encode(v, formats[i], &out, &len) == 0);
		CHECK(len > 0 && (formats[i] == FORMAT_JSON) == (out[0] == '{'),
		    "format %d first byte", (int)formats[i]);
		CHECK(codec_decode(out, len, &back, err, sizeof(err)) == CODEC_OK,
		    "format %d decodes: %s", (int)formats[i], err);
		CHECK(json_equal(v, back), "format %d round trip",
		    (int)formats[i]);
		json_decref(back);
		free(out);
	}
	json_decref(v);
}

/*
 * codec_encode_with: an object plus one member encoded beforehand is the
 * object with that member, in both formats (for an empty object too), and
 * bad arguments are refused rather than joined into a broken message.
 */
static void
test_encode_with(void)
{
	static const enum results_format formats[] = { FORMAT_MSGPACK,
	    FORMAT_JSON };
	json_t		*objs[2], *member, *want, *back;
	char		 err[256] = "", *enc, *out;
	size_t		 i, k, enclen, len;

	objs[0] = sample_value();
	objs[1] = json_object();
	member = sample_value();
	for (i = 0; i < NROWS(formats); i++) {
		CU_ASSERT_FATAL(codec_encode(member, formats[i], &enc, &enclen) == 0);
		for (k = 0; k < NROWS(objs); k++) {
			CHECK(codec_encode_with(objs[k], "user", enc, enclen, formats[i],
			    &out, &len) == 0, "format %d object %zu encodes",
			    (int)formats[i], k);
			if (out == NULL)
				continue;
			CHECK(codec_decode(out, len, &back, err, sizeof(err)) ==
			    CODEC_OK, "format %d object %zu decodes: %s",
			    (int)formats[i], k, err);
			want = json_deep_copy(objs[k]);
			json_object_set(want, "user", member);
			CHECK(json_equal(want, back), "format %d object %zu: the object "
			    "and its new member", (int)formats[i], k);
			json_decref(want);
			json_decref(back);
			free(out);
		}
		/* Refused: a key the object has, a key that would need
		 * escaping, no value, not an object. */
		CHECK(codec_encode_with(objs[0], "str", enc, enclen, formats[i],
		    &out, &len) == -1 && out == NULL, "format %d key present",
		    (int)formats[i]);
		CHECK(codec_encode_with(objs[0], "us\"er", enc, enclen, formats[i],
		    &out, &len) == -1, "format %d key not plain", (int)formats[i]);
		CHECK(codec_encode_with(objs[0], "user", NULL, 0, formats[i],
		    &out, &len) == -1, "format %d no value", (int)formats[i]);
		CHECK(codec_encode_with(json_object_get(objs[0], "arr"), "user", enc,
		    enclen, formats[i], &out, &len) == -1, "format %d not an object",
		    (int)formats[i]);
		free(enc);
	}
	json_decref(objs[0]);
	json_decref(objs[1]);
	json_decref(member);
}

/* Exact encodings: compact JSON in insertion order, shortest msgpack. */
static void
test_encode_exact(void)
{
	static const struct {
		const char		*json;	/* input, JSON text */
		enum results_format	 fmt;
		const char		*want;
		size_t			 want_len;
	} rows[] = {
		{ "{\"z\":1,\"a\":[true,null]}", FORMAT_JSON,
		    BYTES("{\"z\":1,\"a\":[true,null]}") },
		{ "{ \"b\" : 1.5 , \"a\" : \"x\" }", FORMAT_JSON,
		    BYTES("{\"b\":1.5,\"a\":\"x\"}") },
		{ "{\"a\":1}", FORMAT_MSGPACK, BYTES("\x81\xa1" "a\x01") },
		{ "{\"z\":-1,\"a\":false}", FORMAT_MSGPACK,
		    BYTES("\x82\xa1z\xff\xa1" "a\xc2") },
		{ "{\"n\":null,\"s\":\"\"}", FORMAT_MSGPACK,
		    BYTES("\x82\xa1n\xc0\xa1s\xa0") },
		{ "{\"i\":300}", FORMAT_MSGPACK, BYTES("\x81\xa1i\xcd\x01\x2c") },
		{ "{\"r\":0.5}", FORMAT_MSGPACK,
		    BYTES("\x81\xa1r\xcb\x3f\xe0\x00\x00\x00\x00\x00\x00") },
		{ "{\"a\":[]}", FORMAT_MSGPACK, BYTES("\x81\xa1" "a\x90") },
	};
	json_error_t	 jerr;
	json_t		*v;
	char		*out;
	size_t		 i, len;

	for (i = 0; i < NROWS(rows); i++) {
		v = json_loads(rows[i].json, 0, &jerr);
		CU_ASSERT_FATAL(v != NULL);
		CHECK(codec_encode(v, rows[i].fmt, &out, &len) == 0, "encode %s",
		    rows[i].json);
		CHECK(len == rows[i].want_len &&
		    memcmp(out, rows[i].want, len) == 0, "exact encoding of %s",
		    rows[i].json);
		free(out);
		json_decref(v);
	}

	/* Scalars encode too, and decode_any reads them back. */
	v = json_integer(5);
	CU_ASSERT(codec_encode(v, FORMAT_MSGPACK, &out, &len) == 0 &&
	    len == 1 && out[0] == 5);
	free(out);
	CU_ASSERT(codec_encode(v, FORMAT_JSON, &out, &len) == 0 &&
	    strcmp(out, "5") == 0);
	free(out);
	json_decref(v);

	/* Invalid UTF-8 cannot be JSON, but msgpack carries it. */
	v = json_pack("{s:o}", "a", json_stringn_nocheck("\xff", 1));
	CU_ASSERT(codec_encode(v, FORMAT_JSON, &out, &len) == -1 &&
	    out == NULL);
	CU_ASSERT(codec_encode(v, FORMAT_MSGPACK, &out, &len) == 0 &&
	    len == 5 && memcmp(out, "\x81\xa1" "a\xa1\xff", 5) == 0);
	free(out);
	json_decref(v);

	CU_ASSERT(codec_encode(NULL, FORMAT_JSON, &out, &len) == -1);
}

static void
test_utf8_valid(void)
{
	static const struct {
		const char	*name;
		const char	*s;
		size_t		 len;
		int		 valid;
		size_t		 chars;
	} rows[] = {
		{ "empty", BYTES(""), 1, 0 },
		{ "ascii", BYTES("hello"), 1, 5 },
		{ "NUL is UTF-8", BYTES("a\0b"), 1, 3 },
		{ "2-byte", BYTES("\xc3\xa9"), 1, 1 },
		{ "lowest 2-byte", BYTES("\xc2\x80"), 1, 1 },
		{ "3-byte", BYTES("\xe2\x82\xac"), 1, 1 },
		{ "lowest 3-byte", BYTES("\xe0\xa0\x80"), 1, 1 },
		{ "before surrogates", BYTES("\xed\x9f\xbf"), 1, 1 },
		{ "after surrogates", BYTES("\xee\x80\x80"), 1, 1 },
		{ "U+FFFF", BYTES("\xef\xbf\xbf"), 1, 1 },
		{ "4-byte", BYTES("\xf0\x9f\x98\x80"), 1, 1 },
		{ "lowest 4-byte", BYTES("\xf0\x90\x80\x80"), 1, 1 },
		{ "U+10FFFF", BYTES("\xf4\x8f\xbf\xbf"), 1, 1 },
		{ "mixed", BYTES("a\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80z"), 1, 5 },
		{ "lone continuation", BYTES("\x80"), 0, 0 },
		{ "overlong C0", BYTES("\xc0\x80"), 0, 0 },
		{ "overlong C1", BYTES("\xc1\xbf"), 0, 0 },
		{ "overlong E0", BYTES("\xe0\x80\x80"), 0, 0 },
		{ "overlong E0 9F", BYTES("\xe0\x9f\xbf"), 0, 0 },
		{ "overlong F0", BYTES("\xf0\x8f\xbf\xbf"), 0, 0 },
		{ "surrogate D800", BYTES("\xed\xa0\x80"), 0, 0 },
		{ "surrogate DFFF", BYTES("\xed\xbf\xbf"), 0, 0 },
		{ "above U+10FFFF", BYTES("\xf4\x90\x80\x80"), 0, 0 },
		{ "F5", BYTES("\xf5\x80\x80\x80"), 0, 0 },
		{ "FF", BYTES("\xff"), 0, 0 },
		{ "truncated 2-byte", BYTES("a\xc3"), 0, 0 },
		{ "truncated 3-byte", BYTES("\xe2\x82"), 0, 0 },
		{ "truncated 4-byte", BYTES("\xf0\x9f\x98"), 0, 0 },
		{ "bad 2nd continuation", BYTES("\xe2\x28\xa1"), 0, 0 },
		{ "bad 3rd continuation", BYTES("\xe2\x82\x28"), 0, 0 },
		{ "bad 4th continuation", BYTES("\xf0\x9f\x98\x28"), 0, 0 },
		{ "ASCII after 2-byte lead", BYTES("\xc3" "a"), 0, 0 },
		/* Around the eight-bytes-at-once ASCII path. */
		{ "16 ASCII", BYTES("0123456789abcdef"), 1, 16 },
		{ "7 ASCII then 2-byte", BYTES("abcdefg\xc3\xa9"), 1, 8 },
		{ "8 ASCII then 4-byte", BYTES("abcdefgh\xf0\x9f\x98\x80xyz"), 1, 12 },
		{ "FF last of 8", BYTES("abcdefg\xff"), 0, 0 },
		{ "FF first of second 8", BYTES("abcdefgh\xff" "1234567"), 0, 0 },
		{ "truncated after 15 ASCII", BYTES("abcdefghijklmno\xe2\x82"), 0, 0 },
		{ "surrogate inside a long ASCII run",
		    BYTES("abcdefghij\xed\xa0\x80klmnopqrstuvwxyz"), 0, 0 },
	};
	size_t	 i;

	for (i = 0; i < NROWS(rows); i++) {
		CHECK(codec_utf8_valid(rows[i].s, rows[i].len) == rows[i].valid,
		    "utf8_valid %s", rows[i].name);
		if (rows[i].valid)
			CHECK(codec_utf8_length(rows[i].s, rows[i].len) ==
			    rows[i].chars, "utf8_length %s", rows[i].name);
	}
}

static void
test_sanitize(void)
{
	static const struct {
		const char	*in;
		const char	*out;
	} rows[] = {
		{ "", "" },
		{ "plain ASCII ~", "plain ASCII ~" },
		{ "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80",
		    "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80" },
		{ "a\x01" "b\nc\x7f", "a?b?c?" },
		{ "\xff\xfe", "??" },
		{ "cut \xc3", "cut ?" },
		{ "cut \xe2\x82", "cut ??" },
		{ "cut \xf0\x9f\x98", "cut ???" },
		{ "C1 \xc2\x85 NBSP \xc2\xa0", "C1 ?? NBSP \xc2\xa0" },
		{ "surrogate \xed\xa0\x80", "surrogate ???" },
		{ "overlong \xc0\xaf", "overlong ??" },
		{ "lone \x80 continuation", "lone ? continuation" },
	};
	char	 buf[128];
	size_t	 i;

	for (i = 0; i < NROWS(rows); i++) {
		CU_ASSERT_FATAL(strlen(rows[i].in) < sizeof(buf));
		strcpy(buf, rows[i].in);
		codec_sanitize_text(buf);
		CHECK(strcmp(buf, rows[i].out) == 0, "sanitize row %zu gave %s",
		    i, buf);
	}
}

/*
 * jansson's error text quotes up to 20 bytes of the input, control
 * characters included; the codec's message is clean all the same, and stays
 * clean when the caller's buffer cuts it anywhere, even inside a character.
 */
static void
test_error_text_is_clean(void)
{
	static const char *const inputs[] = {
		"{\"a\": \x01}",
		"{\"a\": \x1b[31m}",
		"{\"a\":1 \"\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac\"}",
		"{\"a\xc3\xa9\xff\":1}",
	};
	const unsigned char *p;
	json_t		*v;
	char		 err[256] = "", cut[256];
	size_t		 i, n;
	int		 clean;

	for (i = 0; i < NROWS(inputs); i++) {
		CHECK(codec_decode(inputs[i], strlen(inputs[i]), &v, err,
		    sizeof(err)) != CODEC_OK, "input %zu refused", i);
		clean = codec_utf8_valid(err, strlen(err));
		for (p = (const unsigned char *)err; *p != '\0'; p++)
			if (*p < 0x20 || *p == 0x7f)
				clean = 0;
		CHECK(clean, "input %zu: message is clean: %s", i, err);
		for (n = 1; n <= strlen(err) + 1; n++) {
			(void)codec_decode(inputs[i], strlen(inputs[i]), &v,
			    cut, n);
			CHECK(strlen(cut) == n - 1 &&
			    codec_utf8_valid(cut, strlen(cut)),
			    "input %zu cut at %zu: %s", i, n, cut);
		}
	}
	/* The euro signs are quoted, so the cuts above went through them. */
	(void)codec_decode(inputs[2], strlen(inputs[2]), &v, err, sizeof(err));
	CHECK(strstr(err, "\xe2\x82\xac") != NULL, "quoted: %s", err);
}

int
main(void)
{
	static const struct {
		const char	*name;
		CU_TestFunc	 fn;
	} tests[] = {
		{ "JSON round trip", test_json_round_trip },
		{ "msgpack types", test_msgpack_types },
		{ "msgpack errors", test_msgpack_errors },
		{ "JSON errors", test_json_errors },
		{ "truncated input", test_truncated },
		{ "depth limit", test_depth },
		{ "invalid UTF-8: JSON vs msgpack", test_utf8_in_formats },
		{ "encode and decode back", test_encode_round_trip },
		{ "exact encodings", test_encode_exact },
		{ "an object plus a member encoded before", test_encode_with },
		{ "UTF-8 validator", test_utf8_valid },
		{ "sanitising text", test_sanitize },
		{ "error messages are clean", test_error_text_is_clean },
	};
	CU_pSuite	 suite;
	unsigned int	 failures;
	size_t		 i;

	if (CU_initialize_registry() != CUE_SUCCESS)
		return 2;
	if ((suite = CU_add_suite("codec", NULL, NULL)) == NULL)
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
