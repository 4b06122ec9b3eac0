/*
 * fuzz_framing.c: libFuzzer target for the request socket's framing
 * (src/framing.c, which intake.c calls on every read).
 *
 * The input is a small header and a byte stream.  The stream is cut into
 * frames twice, the way intake.c reads a connection: once as if it arrived
 * all at once, once as if it arrived in pieces, each ending after the next
 * occurrence of a separator byte or after a step, whichever comes first
 * (separator and steps come from the header).  Each call must make
 * progress and stay inside the buffer, each frame is passed to
 * request_parse() like intake's submit(), and the two deliveries must
 * yield the same frames -- except that a JSON line over UG_FRAME_MAX may be
 * handed over whole or cut, so any frame over the limit counts as one "too
 * large" token.  A msgpack frame must be exactly one msgpack value.
 *
 * Header: byte 0, low 3 bits: N - 1 step sizes; byte 1: the separator;
 * bytes 2 .. N + 1: the steps.
 *
 * Inputs are short (libFuzzer's default -max_len is 4096), so to reach the
 * limits an escape inflates the stream: the bytes 0xc1 0xc1 N (0xc1 is
 * never used by msgpack) stand for N * 512 bytes of 'a'.
 *
 * Built and run by `make fuzz`; seeds in tests/fuzz/corpus/framing/.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <msgpack.h>

#include "usergate.h"

int	LLVMFuzzerTestOneInput(const uint8_t *, size_t);

#define CHECK(cond)	do { if (!(cond)) __builtin_trap(); } while (0)
#define MAX_FRAMES	1024
#define INFLATE_UNIT	512
#define INFLATE_MAX	(4 * UG_FRAME_MAX)

struct outcome {
	size_t		 n;
	uint64_t	 frames[MAX_FRAMES];	/* hash of each frame, or 1 */
	int		 end;			/* FRAME_TOO_LARGE/MALFORMED or 0 */
};

/* FNV-1a over the frame; a frame over the limit is the token 1. */
static uint64_t
frame_token(const char *p, size_t len)
{
	uint64_t h = 14695981039346656037ULL;
	size_t	 i;

	if (len > UG_FRAME_MAX)
		return 1;
	for (i = 0; i < len; i++)
		h = (h ^ (unsigned char)p[i]) * 1099511628211ULL;
	return h | 2;
}

static void
submit(struct outcome *o, const char *frame, size_t len, enum framing framing)
{
	struct request	 req;
	char		 err[256];

	CHECK(len > 0);
	if (framing == FRAMING_JSON)
		CHECK(len > UG_FRAME_MAX || memchr(frame, '\n', len) == NULL);
	else {
		msgpack_unpacked u;
		size_t		 off = 0;

		msgpack_unpacked_init(&u);
		CHECK(msgpack_unpack_next(&u, frame, len, &off) ==
		    MSGPACK_UNPACK_SUCCESS && off == len);
		msgpack_unpacked_destroy(&u);
	}
	(void)request_parse(frame, len, NULL, &req, err, sizeof(err));
	request_free(&req);
	o->frames[o->n++] = frame_token(frame, len);
}

/*
 * Feeds stream[0..len) in pieces (nsteps 0: all at once) to framing_next
 * as intake.c's read_frames does: a buffer of what arrived and was not
 * consumed, taken until nothing more can be.
 */
static void
run_with(struct framing_state *fs, const char *stream, size_t len,
    const uint8_t *steps, size_t nsteps, int sep, struct outcome *o)
{
	enum frame_status st;
	enum framing	 framing = FRAMING_UNKNOWN;
	size_t		 start = 0, arrived = 0, have, frame_len, consumed;
	size_t		 k = 0, next;
	const char	*p;

	memset(o, 0, sizeof(*o));
	while (arrived < len) {
		if (nsteps == 0)
			next = len;
		else {
			/* About 32 steps, unless the separator comes often:
			 * then one per byte, the worst case for a reader
			 * (framing.c parses each byte once all the same). */
			next = arrived + 1 + steps[k++ % nsteps] * 37 + len / 32;
			p = memchr(stream + arrived, sep, len - arrived);
			if (p != NULL && (size_t)(p - stream) + 1 < next)
				next = (size_t)(p - stream) + 1;
		}
		arrived = next > len ? len : next;
		if (framing == FRAMING_UNKNOWN)
			framing = framing_detect(stream, arrived);
		CHECK(framing != FRAMING_UNKNOWN);
		for (;;) {
			have = arrived - start;
			if (framing == FRAMING_MSGPACK && have > UG_FRAME_MAX + 1)
				have = UG_FRAME_MAX + 1;
			st = framing_next(have > 0 ? stream + start : NULL, have,
			    framing, fs, &frame_len, &consumed);
			if (st == FRAME_NONE) {
				CHECK(consumed == 0);
				break;
			}
			CHECK(consumed > 0 && consumed <= have);
			if (st == FRAME_READY) {
				CHECK(frame_len > 0 && frame_len <= consumed);
				submit(o, stream + start, frame_len, framing);
				if (o->n == MAX_FRAMES)
					return;	/* enough to compare */
			}
			if (st == FRAME_TOO_LARGE || st == FRAME_MALFORMED) {
				CHECK(framing == FRAMING_MSGPACK);
				o->end = st;
				return;
			}
			start += consumed;
		}
	}
}

/* The state a connection keeps, freed as intake.c frees it. */
static void
run(const char *stream, size_t len, const uint8_t *steps, size_t nsteps,
    int sep, struct outcome *o)
{
	struct framing_state fs;

	memset(&fs, 0, sizeof(fs));
	run_with(&fs, stream, len, steps, nsteps, sep, o);
	framing_state_free(&fs);
}

/*
 * The stream with every 0xc1 0xc1 N replaced by N * INFLATE_UNIT 'a's, at
 * most INFLATE_MAX bytes of them in all.
 */
static char *
inflate(const uint8_t *data, size_t size, size_t *len)
{
	size_t	 i, n, fill, budget;
	char	*out;
	int	 pass;

	out = NULL;
	for (pass = 0; pass < 2; pass++) {
		budget = INFLATE_MAX;
		for (i = 0, n = 0; i < size; i++) {
			if (i + 2 < size && data[i] == 0xc1 &&
			    data[i + 1] == 0xc1) {
				fill = (size_t)data[i + 2] * INFLATE_UNIT;
				if (fill > budget)
					fill = budget;
				budget -= fill;
				if (out != NULL)
					memset(out + n, 'a', fill);
				n += fill;
				i += 2;
			} else {
				if (out != NULL)
					out[n] = (char)data[i];
				n++;
			}
		}
		if (out == NULL && (out = malloc(n + 1)) == NULL)
			return NULL;
	}
	*len = n;
	return out;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct outcome whole, pieces;
	size_t		 nsteps, len;
	char		*stream;

	nsteps = size > 0 ? (size_t)(data[0] & 7) + 1 : 1;
	if (size < 2 + nsteps)
		return 0;
	stream = inflate(data + 2 + nsteps, size - 2 - nsteps, &len);
	if (stream == NULL)
		return 0;
	if (len > 0) {
		run(stream, len, NULL, 0, 0, &whole);
		run(stream, len, data + 2, nsteps, data[1], &pieces);
		CHECK(whole.n == pieces.n);
		CHECK(memcmp(whole.frames, pieces.frames,
		    whole.n * sizeof(whole.frames[0])) == 0);
		CHECK(whole.end == pieces.end);
	}
	free(stream);
	return 0;
}
