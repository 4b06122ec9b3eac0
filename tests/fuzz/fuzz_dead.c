/*
 * fuzz_dead.c: libFuzzer target for the decoding of dead entries read back
 * from Redis (usergate:dead, SPEC §6.2): record_dead_line, what `dead
 * list` prints, and record_dead_request, what `dead retry` pushes back
 * onto the request list.  Those bytes are whatever is in Redis, which
 * anyone with access to it may have written.
 *
 * A line must be JSON text, ASCII with no line break (no byte below 0x20),
 * since the answer is one entry per line and ends at an empty line.  A
 * request pushed back must be JSON text of an object that usergated
 * decodes again.  (jansson writes a key that is not UTF-8 as a broken
 * string, which this target found.)
 *
 * Built and run by `make fuzz`; seeds in tests/fuzz/corpus/dead/.
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
	json_error_t jerr;
	json_t	*v;
	char	*line, *text, err[256];
	size_t	 i, len;

	if ((line = record_dead_line((const char *)data, size)) != NULL) {
		for (i = 0; line[i] != '\0'; i++)
			CHECK(line[i] >= 0x20 && line[i] <= 0x7f);
		v = json_loads(line, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
		CHECK(v != NULL);
		json_decref(v);
		free(line);
	}
	if ((text = record_dead_request((const char *)data, size, &len)) != NULL) {
		CHECK(len > 0 && text[0] == '{');
		CHECK(codec_decode(text, len, &v, err, sizeof(err)) == CODEC_OK);
		CHECK(json_is_object(v));
		json_decref(v);
		free(text);
	}
	return 0;
}
