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
 * streaming unpacker, which keeps its place between reads: each byte is
 * parsed once however it is cut into reads.  msgpack has no
 * resynchronisation point, so a value that cannot be parsed, or that is
 * still incomplete after UG_FRAME_MAX + 1 bytes, ends the stream.
 */
#include <string.h>

#include <msgpack.h>

#include "usergate.h"

static enum frame_status next_json_line(const char *, size_t, int *,
			    size_t *, size_t *);
static enum frame_status next_msgpack_value(const char *, size_t,
			    struct framing_state *, size_t *, size_t *);

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

/* Gives the unpacker the bytes of buf up to look it has not had yet: 0,
 * or -1 when out of memory. */
static int
feed_unpacker(struct framing_state *st, const char *buf, size_t look)
{
	size_t	 n;

	if ((n = look - st->fed) == 0)
		return 0;
	if (!msgpack_unpacker_reserve_buffer(st->mp, n))
		return -1;
	memcpy(msgpack_unpacker_buffer(st->mp), buf + st->fed, n);
	msgpack_unpacker_buffer_consumed(st->mp, n);
	st->fed = look;
	return 0;
}

/*
 * The unpacker holds a whole value: it forgets it and goes on with the
 * bytes after it.  The value's length (parsed counts the bytes of this
 * value alone), or 0 when out of memory.  The value goes with its zone,
 * as in msgpack_unpacker_next.
 */
static size_t
release_value(struct framing_state *st)
{
	msgpack_zone	*z;
	size_t		 n;

	n = msgpack_unpacker_parsed_size(st->mp);
	if ((z = msgpack_unpacker_release_zone(st->mp)) == NULL)
		return 0;
	msgpack_zone_free(z);
	msgpack_unpacker_reset(st->mp);
	memset(&st->scan, 0, sizeof(st->scan));
	st->fed -= n;
	return n;
}

/*
 * The unpacker builds the value to find where it ends; that costs a second
 * decoding later (request_parse), but keeps all msgpack parsing in the
 * library.  Only the first UG_FRAME_MAX + 1 bytes are looked at: a value
 * that needs more is too large whatever follows.  Bytes are copied into
 * the unpacker once (st->fed counts them); when a value is whole, the
 * unpacker forgets it and goes on with the bytes after it.
 */
static enum frame_status
next_msgpack_value(const char *buf, size_t len, struct framing_state *st,
    size_t *frame_len, size_t *consumed)
{
	enum frame_status	 status;
	size_t			 look, n;
	int			 rc;

	if (len == 0)
		return FRAME_NONE;
	look = len > UG_FRAME_MAX + 1 ? UG_FRAME_MAX + 1 : len;
	if (st->fed > look)		/* not the bytes of the last call */
		framing_state_free(st);
	if (st->mp == NULL) {
		st->fed = 0;
		/* 4 KiB to start: most requests are far smaller, and an
		 * idle connection should not hold msgpack-c's 64 KiB. */
		if ((st->mp = msgpack_unpacker_new(4096)) == NULL) {
			status = FRAME_MALFORMED;	/* out of memory */
			goto end;
		}
	}
	/*
	 * The headers of the value are checked before msgpack-c reads
	 * them, which allocates what a container announces at once: what
	 * needs more than UG_FRAME_MAX + 1 bytes is too large, whether or not
	 * those bytes ever come.
	 */
	switch (codec_msgpack_scan(&st->scan, buf, look, UG_FRAME_MAX + 1)) {
	case CODEC_SCAN_DONE:
	case CODEC_SCAN_MORE:
		break;
	case CODEC_SCAN_TOO_LARGE:
		status = FRAME_TOO_LARGE;
		goto end;
	case CODEC_SCAN_TOO_DEEP:
	case CODEC_SCAN_INVALID:
	default:
		status = FRAME_MALFORMED;
		goto end;
	}
	if (feed_unpacker(st, buf, look) != 0) {
		status = FRAME_MALFORMED;	/* out of memory */
		goto end;
	}
	rc = msgpack_unpacker_execute(st->mp);
	if (rc > 0) {
		if ((n = release_value(st)) == 0) {
			status = FRAME_MALFORMED;	/* out of memory */
			goto end;
		}
		*frame_len = n;
		*consumed = n;
		return FRAME_READY;
	}
	if (rc == 0) {
		if (look <= UG_FRAME_MAX)
			return FRAME_NONE;	/* wait for the rest */
		status = FRAME_TOO_LARGE;
	} else
		status = FRAME_MALFORMED;	/* including a header asking
						 * for more than can be had */
end:
	framing_state_free(st);		/* the stream ends here */
	*consumed = len;
	return status;
}

void
framing_state_free(struct framing_state *st)
{
	if (st->mp != NULL)
		msgpack_unpacker_free(st->mp);
	st->mp = NULL;
	st->fed = 0;
	memset(&st->scan, 0, sizeof(st->scan));
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
    struct framing_state *st, size_t *frame_len, size_t *consumed)
{
	*frame_len = 0;
	*consumed = 0;
	if (framing == FRAMING_UNKNOWN &&
	    (framing = framing_detect(buf, len)) == FRAMING_UNKNOWN)
		return FRAME_NONE;
	if (framing == FRAMING_JSON)
		return next_json_line(buf, len, &st->discarding, frame_len,
		    consumed);
	return next_msgpack_value(buf, len, st, frame_len, consumed);
}
