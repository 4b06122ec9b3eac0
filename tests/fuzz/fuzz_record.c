/*
 * fuzz_record.c: libFuzzer target for record_from_twilio, Twilio's answer
 * to a user record -- the hot path, parsed by cJSON with a jansson
 * fallback.
 *
 * Any bytes may come back from an upstream.  A record that comes out must
 * be an object with a non-empty string sid, hold only the fields SPEC §4.3
 * keeps, and be publishable: it encodes as JSON (every string is UTF-8)
 * and as msgpack, and reads back equal.  (Whether it agrees with jansson
 * is pinned by test_record's rows: cJSON is laxer than jansson about the
 * fields the record drops -- raw control characters, number syntax, bytes
 * that are not UTF-8 -- so here only the record itself is judged.)
 * record_msgpack_from_twilio, the hot path's shortcut for msgpack results,
 * must give a record's exact codec_encode bytes whenever it gives any.
 *
 * Built and run by `make fuzz`; seeds in tests/fuzz/corpus/record/.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "usergate.h"

int	LLVMFuzzerTestOneInput(const uint8_t *, size_t);

#define CHECK(cond)	do { if (!(cond)) __builtin_trap(); } while (0)

static const char *const kept[] = {
	"sid", "account_sid", "chat_service_sid", "role_sid", "identity",
	"friendly_name", "attributes", "is_online", "is_notifiable",
	"date_created", "date_updated", "url", "links",
};

static int
is_kept(const char *key)
{
	size_t	i;

	for (i = 0; i < sizeof(kept) / sizeof(kept[0]); i++)
		if (strcmp(key, kept[i]) == 0)
			return 1;
	return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	enum codec_status st;
	json_t		*r, *sid, *v, *back;
	const char	*key;
	char		*out, *straight, err[256];
	size_t		 len, slen;
	int		 packed;

	packed = record_msgpack_from_twilio((const char *)data, size, NULL, &straight, &slen);
	r = record_from_twilio((const char *)data, size, NULL, NULL);
	CHECK(r != NULL || !packed);
	if (r == NULL)
		return 0;

	CHECK(json_is_object(r));
	sid = json_object_get(r, "sid");
	CHECK(json_is_string(sid) && json_string_length(sid) > 0);
	json_object_foreach(r, key, v)
		CHECK(is_kept(key));
	CHECK(codec_encode(r, FORMAT_JSON, &out, &len) == 0);
	st = codec_decode(out, len, &back, err, sizeof(err));
	/* Deeper than codec's bound is refused on the way back, not lost. */
	if (st == CODEC_OK) {
		CHECK(json_equal(r, back));
		json_decref(back);
	}
	free(out);
	CHECK(codec_encode(r, FORMAT_MSGPACK, &out, &len) == 0);
	CHECK(!packed || (slen == len && memcmp(straight, out, len) == 0));
	free(out);
	free(straight);
	json_decref(r);
	return 0;
}
