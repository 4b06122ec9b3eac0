/*
 * fuzz_stored.c: libFuzzer target for record_stored, the decoding of a
 * user record read back from Redis (user:{Identity}, SPEC §4.3) when a
 * request finds its Identity already created.  Those bytes are whatever
 * is in Redis, which anyone with access to it may have written.
 *
 * A record that comes out must be an object, and publishable: it is put
 * into the duplicate's result, so it must encode as msgpack, and that
 * encoding must read back as a record that encodes to the same bytes.
 *
 * Built and run by `make fuzz`; seeds in tests/fuzz/corpus/stored/.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "usergate.h"

int	LLVMFuzzerTestOneInput(const uint8_t *, size_t);

#define CHECK(cond)	do { if (!(cond)) __builtin_trap(); } while (0)

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	json_t	*r, *back;
	char	*out, *again;
	size_t	 len, alen;

	if ((r = record_stored((const char *)data, size)) == NULL)
		return 0;
	CHECK(json_is_object(r));
	CHECK(codec_encode(r, FORMAT_MSGPACK, &out, &len) == 0);
	back = record_stored(out, len);
	CHECK(back != NULL);
	CHECK(codec_encode(back, FORMAT_MSGPACK, &again, &alen) == 0);
	CHECK(alen == len && memcmp(again, out, len) == 0);
	free(again);
	free(out);
	json_decref(back);
	json_decref(r);
	return 0;
}
