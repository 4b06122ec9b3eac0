/*
 * result.c: what a finished request leaves behind (SPEC §4.2): its result
 * map, encoded once for the results list, the events channel and ReplyTo;
 * its user record, encoded once for user:{Identity} and the result; and for
 * invalid and failed requests the dead-list entry {request, result}.
 *
 * Pure: job.c says what happened (struct result_outcome), this file says
 * how it is written down.  The statuses are declared once, in usergate.h's
 * RESULT_STATUSES, and the error codes here and in request.c;
 * tests/unit/test_result.c checks both against docs/protocol.md.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "usergate.h"

static const struct {
	const char	*name;
	int		 success;
} statuses[] = {
#define RESULT_STATUS_ROW(id, name, success, counter) { name, success },
	RESULT_STATUSES(RESULT_STATUS_ROW)
#undef RESULT_STATUS_ROW
};

/* What job.c fails a request with; an invalid request's code is
 * request.c's. */
const char *const result_failure_codes[] = {
	"twilio_rejected",
	"twilio_invalid_answer",
	"redis_error",
	"retries_exhausted",
	NULL,
};

const char *
result_status_name(enum result_status s)
{
	return (size_t)s < RESULT_STATUS_COUNT ? statuses[s].name : NULL;
}

int
result_success(enum result_status s)
{
	return (size_t)s < RESULT_STATUS_COUNT && statuses[s].success;
}

int
result_error_known(enum result_status s, const char *code)
{
	const char *known;
	size_t i;

	if (code == NULL)
		return 0;
	for (i = 0; s == RESULT_FAILED && result_failure_codes[i] != NULL; i++)
		if (strcmp(code, result_failure_codes[i]) == 0)
			return 1;
	for (i = REQ_OK + 1; s == RESULT_INVALID &&
	    (known = request_error_code((enum request_error)i)) != NULL; i++)
		if (strcmp(code, known) == 0)
			return 1;
	return 0;
}

void
result_format_time(double wall, char *buf, size_t size)
{
	/* Two timestamps per request: the part up to the second is made once
	 * per second and only the milliseconds each time. */
	static time_t cached_secs = -1;
	static char cached[64];
	time_t secs = (time_t)wall;
	int ms = (int)((wall - (double)secs) * 1000.0);
	struct tm tm;

	if (ms > 999)
		ms = 999;
	if (secs != cached_secs) {
		gmtime_r(&secs, &tm);
		snprintf(cached, sizeof(cached),
		    "%04d-%02d-%02dT%02d:%02d:%02d", tm.tm_year + 1900,
		    tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
		    tm.tm_sec);
		cached_secs = secs;
	}
	if (size < 25) {
		if (size > 0)
			buf[0] = '\0';
		return;
	}
	memcpy(buf, cached, 19);
	buf[19] = '.';
	buf[20] = (char)('0' + ms / 100);
	buf[21] = (char)('0' + ms / 10 % 10);
	buf[22] = (char)('0' + ms % 10);
	buf[23] = 'Z';
	buf[24] = '\0';
}

/*
 * {code, message, twilio_code?, http_status?}.  NULL when memory ran out.
 * A message that is not UTF-8 (a key name cut inside a character, bytes
 * quoted from elsewhere) has those bytes replaced by '?': a failed result
 * must never lose its error code.
 */
static json_t *
error_map(const struct result_outcome *o)
{
	const char *msg = o->error_message != NULL ? o->error_message : "";
	char *clean = NULL;
	json_t *e;

	if (!codec_utf8_valid(msg, strlen(msg))) {
		if ((clean = strdup(msg)) == NULL)
			return NULL;
		codec_sanitize_text(clean);
		msg = clean;
	}
	e = json_pack("{s:s, s:s}", "code", o->error_code, "message", msg);
	free(clean);
	if (e != NULL && o->twilio_code)
		json_object_set_new(e, "twilio_code",
		    json_integer(o->twilio_code));
	if (e != NULL && o->http_status)
		json_object_set_new(e, "http_status",
		    json_integer(o->http_status));
	return e;
}

/* The map without its user, which result_encode adds; NULL when memory
 * ran out. */
static json_t *
result_map(const struct result_outcome *o)
{
	char received[32], completed[32];
	json_t *r, *e;

	if ((r = json_object()) == NULL)
		return NULL;
	result_format_time(o->received_wall, received, sizeof(received));
	result_format_time(o->completed_wall, completed, sizeof(completed));
	/*
	 * Keys are ASCII constants and every value but request_id is known
	 * UTF-8 (identity is checked here, the rest are ours): the _nocheck
	 * calls skip jansson's own check, a fifth of the cost of the map.
	 */
	json_object_set_new_nocheck(r, "request_id",
	    json_string(o->request_id));
	if (o->identity != NULL &&
	    codec_utf8_valid(o->identity, strlen(o->identity)))
		json_object_set_new_nocheck(r, "identity",
		    json_string_nocheck(o->identity));
	json_object_set_new_nocheck(r, "status",
	    json_string_nocheck(result_status_name(o->status)));
	if (!result_success(o->status) && (e = error_map(o)) != NULL)
		json_object_set_new_nocheck(r, "error", e);
	json_object_set_new_nocheck(r, "attempts", json_integer(o->attempts));
	json_object_set_new_nocheck(r, "source",
	    json_string_nocheck(o->from_socket ? "socket" : "redis"));
	json_object_set_new_nocheck(r, "received_at",
	    json_string_nocheck(received));
	json_object_set_new_nocheck(r, "completed_at",
	    json_string_nocheck(completed));
	return r;
}

/*
 * r->enc, and a success's record: encoded once (or it came packed) and put
 * into the result as it is, as its last member; the map gets the user too,
 * for a socket client's answer.
 */
static int
result_encode(const struct result_outcome *o, struct result *r)
{
	if (!result_success(o->status) ||
	    (o->user == NULL && r->record == NULL))
		return codec_encode(r->map, o->format, &r->enc, &r->enclen);
	if ((r->record == NULL && codec_encode(o->user, o->format, &r->record,
	    &r->recordlen) != 0) ||
	    codec_encode_with(r->map, "user", r->record, r->recordlen,
	    o->format, &r->enc, &r->enclen) != 0 ||
	    (o->user != NULL &&
	    json_object_set_nocheck(r->map, "user", o->user) != 0))
		return -1;
	/* Not stored again: a duplicate's record is the stored one. */
	if (o->status == RESULT_DUPLICATE) {
		free(r->record);
		r->record = NULL;
		r->recordlen = 0;
	}
	return 0;
}

/*
 * The dead-list copy of the request: decoded when it decodes to text that
 * is all UTF-8, so an operator can read and replay it.  NULL otherwise
 * (and when memory ran out): the caller keeps the raw bytes.
 */
static json_t *
dead_request(const struct result_outcome *o)
{
	json_t *v = NULL;
	char err[64];

	if (o->rawlen <= UG_FRAME_MAX &&
	    codec_decode(o->raw, o->rawlen, &v, err, sizeof(err)) == CODEC_OK &&
	    codec_text_valid(v))
		return v;
	json_decref(v);
	return NULL;
}

/*
 * {request, result} for the dead list.  A request that did not decode to
 * text is kept as its raw bytes: a msgpack bin (after the result, as
 * codec_encode_with adds it), or with JSON results the text itself when it
 * is UTF-8, else a description.  A request that decodes but cannot be
 * written in the configured format is kept as a description too.
 */
static int
dead_entry(const struct result_outcome *o, struct result *r)
{
	json_t *d = json_object(), *req = dead_request(o);
	char *bin = NULL;
	size_t binlen;
	int rv;

	if (d == NULL) {
		json_decref(req);
		return -1;
	}
	if (req == NULL && o->format == FORMAT_MSGPACK) {
		json_object_set(d, "result", r->map);
		rv = codec_encode_bin(o->raw, o->rawlen, &bin, &binlen);
		if (rv == 0)
			rv = codec_encode_with(d, "request", bin, binlen,
			    FORMAT_MSGPACK, &r->dead, &r->deadlen);
		free(bin);
		json_decref(d);
		return rv;
	}
	if (req == NULL)
		req = codec_utf8_valid(o->raw, o->rawlen) ?
		    json_stringn(o->raw, o->rawlen) :
		    json_sprintf("<%zu bytes, not UTF-8>", o->rawlen);
	json_object_set_new(d, "request", req);
	json_object_set(d, "result", r->map);
	rv = codec_encode(d, o->format, &r->dead, &r->deadlen);
	if (rv != 0) {
		json_object_set_new(d, "request",
		    json_sprintf("<%zu bytes that cannot be written as %s>",
		    o->rawlen, o->format == FORMAT_JSON ? "JSON" : "msgpack"));
		rv = codec_encode(d, o->format, &r->dead, &r->deadlen);
	}
	json_decref(d);
	return rv;
}

int
result_build(const struct result_outcome *o, struct result *r)
{
	if (!result_success(o->status)) {
		/* Only a success is stored under user:{Identity}. */
		free(r->record);
		r->record = NULL;
		r->recordlen = 0;
	}
	if ((r->map = result_map(o)) == NULL || result_encode(o, r) != 0)
		return -1;
	if (!result_success(o->status) && dead_entry(o, r) != 0)
		return -1;
	return 0;
}

void
result_free(struct result *r)
{
	json_decref(r->map);
	free(r->enc);
	free(r->record);
	free(r->dead);
	memset(r, 0, sizeof(*r));
}
