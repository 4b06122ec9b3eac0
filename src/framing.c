/*
 * framing.c: the request socket's byte stream cut into frames (SPEC §6.1).
 *
 * Pure: no I/O, no state of its own.  intake.c owns the connection and its
 * buffer and hands the bytes it holds to framing_next, which says what the
 * next frame is and how many bytes to drop; the libFuzzer target
 * tests/fuzz/fuzz_framing.c drives the same function with hostile streams.
 *
 * JSON lines: a frame is one line without its "\n" (and without one "\r"
 * before it); empty lines are skipped.  A line that is still without its end
 * when more than UG_FRAME_MAX bytes of it are buffered (not counting a
 * "\r" that may be its last byte) is handed over cut to UG_FRAME_MAX + 1
 * bytes, so that the request is answered too_large, and its tail is
 * skipped up to the next "\n".  A line longer than the limit that arrived
 * whole is handed over whole, which is answered the same way.
 *
 * msgpack: a frame is one whole msgpack value, found by msgpack-c's own
 * unpacker.  msgpack has no resynchronisation point, so a value that cannot
 * be parsed, or that is still incomplete after UG_FRAME_MAX + 1 bytes, ends
 * the stream.
 */
#include <string.h>

#include <msgpack.h>

#include "usergate.h"

static enum frame_status next_json_line(const char *, size_t, int *,
			    size_t *, size_t *);
static enum frame_status next_msgpack_value(const char *, size_t, size_t *,
			    size_t *);

static enum frame_status
next_json_line(const char *buf, size_t len, int *discarding,
    size_t *frame_len, size_t *consumed)
{
	const char	*eol;
	size_t		 n;

	eol = len > 0 ? memchr(buf, '\n', len) : NULL;
	if (eol == NULL) {
		/* UG_FRAME_MAX bytes and a "\r" may still be a line within
		 * the limit, whose "\n" comes with the next read. */
		if (len > UG_FRAME_MAX && !*discarding &&
		    !(len == UG_FRAME_MAX + 1 && buf[UG_FRAME_MAX] == '\r')) {
			/* Everything buffered goes: the head as the frame, the
			 * rest skipped like the line's later bytes. */
			*discarding = 1;
			*frame_len = UG_FRAME_MAX + 1;
			*consumed = len;
			return FRAME_READY;
		}
		if (*discarding && len > 0) {
			*consumed = len;
			return FRAME_SKIP;
		}
		return FRAME_NONE;
	}
	n = (size_t)(eol - buf);
	*consumed = n + 1;
	if (*discarding) {
		*discarding = 0;	/* the tail of the long line */
		return FRAME_SKIP;
	}
	if (n > 0 && buf[n - 1] == '\r')
		n--;
	if (n == 0)
		return FRAME_SKIP;
	*frame_len = n;
	return FRAME_READY;
}

/*
 * msgpack_unpack_next builds the value to find where it ends; that costs a
 * second decoding later (request_parse), but keeps all msgpack parsing in
 * the library.  Only the first UG_FRAME_MAX + 1 bytes are looked at: a
 * value that needs more is too large whatever follows.
 */
static enum frame_status
next_msgpack_value(const char *buf, size_t len, size_t *frame_len,
    size_t *consumed)
{
	msgpack_unpacked	 u;
	msgpack_unpack_return	 rc;
	enum frame_status	 st;
	size_t			 look, off = 0;

	if (len == 0)
		return FRAME_NONE;
	look = len > UG_FRAME_MAX + 1 ? UG_FRAME_MAX + 1 : len;
	msgpack_unpacked_init(&u);
	rc = msgpack_unpack_next(&u, buf, look, &off);
	msgpack_unpacked_destroy(&u);
	switch (rc) {
	case MSGPACK_UNPACK_SUCCESS:
	case MSGPACK_UNPACK_EXTRA_BYTES:
		*frame_len = off;
		*consumed = off;
		return FRAME_READY;
	case MSGPACK_UNPACK_CONTINUE:
		if (look <= UG_FRAME_MAX)
			return FRAME_NONE;	/* wait for the rest */
		st = FRAME_TOO_LARGE;
		break;
	default:
		st = FRAME_MALFORMED;
		break;
	}
	*consumed = len;
	return st;
}

/* SPEC §6.1: a connection whose first byte is '{' speaks JSON lines. */
enum framing
framing_detect(const char *buf, size_t len)
{
	if (len == 0)
		return FRAMING_UNKNOWN;
	return buf[0] == '{' ? FRAMING_JSON : FRAMING_MSGPACK;
}

enum frame_status
framing_next(const char *buf, size_t len, enum framing framing,
    int *discarding, size_t *frame_len, size_t *consumed)
{
	*frame_len = 0;
	*consumed = 0;
	if (framing == FRAMING_UNKNOWN &&
	    (framing = framing_detect(buf, len)) == FRAMING_UNKNOWN)
		return FRAME_NONE;
	if (framing == FRAMING_JSON)
		return next_json_line(buf, len, discarding, frame_len,
		    consumed);
	return next_msgpack_value(buf, len, frame_len, consumed);
}
