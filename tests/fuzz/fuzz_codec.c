/*
 * fuzz_codec.c: libFuzzer target for the msgpack/JSON codec.
 *
 * Arbitrary bytes go to codec_decode_any(); a value it accepts is encoded in
 * both formats, and each encoding must decode again to an equal value (the
 * round trip every stored record and result takes).  Two encodings cannot
 * come back, by the format detection of SPEC §4.1, and are not checked:
 *  - JSON text of a value that is not an object (it does not start with
 *    '{', so it would be read as msgpack);
 *  - the msgpack integer 123, whose one byte 0x7b is '{'.
 * JSON encoding must fail exactly for the values JSON text cannot carry: a
 * string or key that is not UTF-8, a key with a NUL (all possible only
 * from msgpack); msgpack encoding must never fail.
 *
 * Built and run by `make fuzz`; seeds in tests/fuzz/corpus/codec/.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "usergate.h"

int	LLVMFuzzerTestOneInput(const uint8_t *, size_t);

#define CHECK(cond)	do { if (!(cond)) __builtin_trap(); } while (0)

/*
 * json_equal, but with keys compared by their full length: a msgpack key
 * may hold a NUL, and jansson's json_equal looks keys up as C strings.
 */
static int
equal(const json_t *a, const json_t *b)
{
	void	*iter;
	size_t	 i;

	if (json_typeof(a) != json_typeof(b))
		return 0;
	switch (json_typeof(a)) {
	case JSON_OBJECT:
		if (json_object_size(a) != json_object_size(b))
			return 0;
		for (iter = json_object_iter((json_t *)a); iter != NULL;
		    iter = json_object_iter_next((json_t *)a, iter)) {
			const json_t *other = json_object_getn(b,
			    json_object_iter_key(iter),
			    json_object_iter_key_len(iter));

			if (other == NULL ||
			    !equal(json_object_iter_value(iter), other))
				return 0;
		}
		return 1;
	case JSON_ARRAY:
		if (json_array_size(a) != json_array_size(b))
			return 0;
		for (i = 0; i < json_array_size(a); i++)
			if (!equal(json_array_get(a, i), json_array_get(b, i)))
				return 0;
		return 1;
	default:
		return json_equal(a, b);
	}
}

/*
 * 1 when a string or key anywhere in v is not UTF-8 text (nul_key 0), or
 * when a key holds a NUL byte (nul_key 1).
 */
static int
has_bad_text(const json_t *v, int nul_key)
{
	void	*iter;
	size_t	 i;

	switch (json_typeof(v)) {
	case JSON_STRING:
		return !nul_key && !codec_utf8_valid(json_string_value(v),
		    json_string_length(v));
	case JSON_ARRAY:
		for (i = 0; i < json_array_size(v); i++)
			if (has_bad_text(json_array_get(v, i), nul_key))
				return 1;
		return 0;
	case JSON_OBJECT:
		for (iter = json_object_iter((json_t *)v); iter != NULL;
		    iter = json_object_iter_next((json_t *)v, iter)) {
			const char *key = json_object_iter_key(iter);
			size_t keylen = json_object_iter_key_len(iter);

			if (nul_key ? memchr(key, '\0', keylen) != NULL :
			    !codec_utf8_valid(key, keylen))
				return 1;
			if (has_bad_text(json_object_iter_value(iter), nul_key))
				return 1;
		}
		return 0;
	default:
		return 0;
	}
}

static void
round_trip(const json_t *v, enum results_format fmt)
{
	enum codec_status st;
	json_t		*again = NULL;
	char		*out = NULL, err[256];
	size_t		 len = 0;

	if (codec_encode(v, fmt, &out, &len) != 0) {
		CHECK(fmt == FORMAT_JSON &&
		    (has_bad_text(v, 0) || has_bad_text(v, 1)));
		CHECK(out == NULL);
		return;
	}
	CHECK(fmt != FORMAT_JSON || (!has_bad_text(v, 0) && !has_bad_text(v, 1)));
	CHECK(out != NULL && len > 0);
	if (fmt == FORMAT_JSON && !json_is_object(v)) {
		free(out);
		return;
	}
	if (fmt == FORMAT_MSGPACK && json_is_integer(v) &&
	    json_integer_value(v) == '{') {
		free(out);
		return;
	}
	st = codec_decode_any(out, len, &again, err, sizeof(err));
	CHECK(st == CODEC_OK);
	CHECK(again != NULL);
	CHECK(equal(v, again));
	/* codec_decode (maps only) agrees for maps. */
	if (json_is_object(v)) {
		json_t *map = NULL;

		CHECK(codec_decode(out, len, &map, err, sizeof(err)) == CODEC_OK);
		CHECK(equal(v, map));
		json_decref(map);
	}
	json_decref(again);
	free(out);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	enum codec_status st;
	json_t		*v = NULL;
	char		 err[256];

	memset(err, 'x', sizeof(err));
	st = codec_decode_any(data, size, &v, err, sizeof(err));
	if (st != CODEC_OK) {
		CHECK(v == NULL);
		CHECK(memchr(err, '\0', sizeof(err)) != NULL);
		CHECK(codec_utf8_valid(err, strlen(err)));
		return 0;
	}
	CHECK(v != NULL);
	round_trip(v, FORMAT_JSON);
	round_trip(v, FORMAT_MSGPACK);
	json_decref(v);
	return 0;
}
