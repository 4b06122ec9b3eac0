/*
 * record.c: Twilio's answers to user records (SPEC §4.3) and to error codes,
 * the comparison that decides whether on_exists = update has anything to
 * change, and the decoding of stored records and dead entries read back
 * from Redis.
 *
 * Pure: no I/O, no state.  A record shares its values with nothing once the
 * answer it came from is released.
 *
 * Every created user's answer is parsed here, so this is the hot path of
 * forwarding: jansson's lexer costs about 160 instructions per byte of
 * answer, a third of all the work usergated does per user.  The answer is
 * therefore parsed with cJSON (about 35 per byte) and only the fields the
 * record keeps are built as jansson values.  Whatever cJSON cannot carry
 * exactly -- a number (cJSON keeps only a double, so 7 and 7.0 and big
 * integers would blur) or a "\u0000" (cJSON's strings end at NUL) -- is
 * parsed again with jansson, so the record is the same either way.  cJSON
 * is laxer than jansson only about what the record drops (a field with raw
 * control characters, odd number syntax or bytes that are not UTF-8 does
 * not cost the user its record).  Error bodies, rare and small, always go
 * through jansson.
 */
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <msgpack.h>

#include "usergate.h"

/*
 * The record's fields, in the order they are published.  Anything else
 * Twilio sends (new fields appear over time) is dropped, so consumers see
 * one stable shape.
 */
static const char *const record_fields[] = {
	"sid",
	"account_sid",
	"chat_service_sid",
	"role_sid",
	"identity",
	"friendly_name",
	"attributes",
	"is_online",
	"is_notifiable",
	"date_created",
	"date_updated",
	"url",
	"links",
};
/* Where check_user's two fields are in record_fields (and found[]). */
enum { KEPT_SID = 0, KEPT_IDENTITY = 4 };

static enum record_answer check_user(const char *, size_t, const char *,
		    size_t, const char *);
static json_t	*parse_body(const char *, size_t);
static int	 string_equals(const json_t *, const char *);
static int	 has_nul_escape(const char *, size_t);
static int	 attributes_equal(const json_t *, const char *);

/*
 * A Twilio body as a JSON object, or NULL.  JSON_ALLOW_NUL: a user someone
 * else created may hold "\u0000" in a text field, and refusing its record
 * would turn a user that exists into a failure; jansson keeps such strings
 * with their length and codec_encode writes them out whole.
 */
static json_t *
parse_body(const char *body, size_t len)
{
	json_error_t	 jerr;
	json_t		*v;

	if (body == NULL || len == 0)
		return NULL;
	if ((v = json_loadb(body, len, JSON_ALLOW_NUL, &jerr)) == NULL)
		return NULL;
	if (!json_is_object(v)) {
		json_decref(v);
		return NULL;
	}
	return v;
}

/*
 * Whether an answer with this sid and identity (NULL when absent or not a
 * string) may be stored as want's user.  A 2xx that is not (a SID of
 * another shape, another Identity) comes from something broken between us
 * and Twilio, or from a Twilio we do not understand; storing it would hand
 * every later duplicate the wrong user.  The one check for all three
 * parsing paths.
 */
static enum record_answer
check_user(const char *sid, size_t sidlen, const char *identity,
    size_t identitylen, const char *want)
{
	if (want == NULL)
		return RECORD_USER;
	if (!twilio_is_sid(sid, sidlen, "US") || identity == NULL ||
	    identitylen != strlen(want) ||
	    memcmp(identity, want, identitylen) != 0)
		return RECORD_WRONG_USER;
	return RECORD_USER;
}

enum fast { FAST_OK, FAST_INVALID, FAST_INEXACT };

/*
 * A cJSON value as a new jansson value; NULL with *why set when it is not
 * valid (a string that is not UTF-8) or cannot be carried exactly (a
 * number).  Depth is bounded by cJSON's own nesting limit.
 */
static json_t *
from_cjson(const cJSON *c, enum fast *why)
{
	const cJSON	*child;
	json_t		*v, *jchild;

	if (cJSON_IsNull(c))
		return json_null();
	if (cJSON_IsTrue(c))
		return json_true();
	if (cJSON_IsFalse(c))
		return json_false();
	if (cJSON_IsString(c)) {
		size_t	len = strlen(c->valuestring);

		/* UTF-8 is checked as json_loadb would have (codec's check
		 * costs a sixth of jansson's). */
		if (!codec_utf8_valid(c->valuestring, len) ||
		    (v = json_stringn_nocheck(c->valuestring, len)) == NULL) {
			*why = FAST_INVALID;
			return NULL;
		}
		return v;
	}
	if (cJSON_IsArray(c) || cJSON_IsObject(c)) {
		v = cJSON_IsArray(c) ? json_array() : json_object();
		if (v == NULL) {
			*why = FAST_INVALID;
			return NULL;
		}
		cJSON_ArrayForEach(child, c) {
			if ((jchild = from_cjson(child, why)) == NULL ||
			    (cJSON_IsArray(c) ?
			    json_array_append_new(v, jchild) :
			    json_object_set_new(v, child->string,
			    jchild)) != 0) {
				if (jchild != NULL)
					*why = FAST_INVALID;
				json_decref(v);
				return NULL;
			}
		}
		return v;
	}
	*why = FAST_INEXACT;		/* a number */
	return NULL;
}

#define NFIELDS	(sizeof(record_fields) / sizeof(record_fields[0]))

/*
 * Each kept field of a parsed answer, in one pass over its members: the
 * last of a repeated key, as jansson keeps it.  Twilio sends the fields in
 * record_fields' order, so the search starts at the field after the one
 * found before and usually matches at once; in any other order the first
 * byte rules out most names without a call.
 */
static void
kept_fields(const cJSON *answer, const cJSON *found[NFIELDS])
{
	const cJSON	*c;
	size_t		 next = 0, k, f;

	memset(found, 0, NFIELDS * sizeof(found[0]));
	cJSON_ArrayForEach(c, answer) {
		for (k = 0, f = next; k < NFIELDS; k++, f = (f + 1) % NFIELDS)
			if (c->string[0] == record_fields[f][0] &&
			    strcmp(c->string, record_fields[f]) == 0)
				break;
		if (k < NFIELDS) {
			found[f] = c;
			next = (f + 1) % NFIELDS;
		}
	}
}

/*
 * An answer parsed by cJSON with its kept fields in found[], or NULL with
 * *what set when it is not a record: not one JSON object (trailing bytes
 * other than whitespace are refused, as jansson does), no non-empty string
 * sid, or not identity's user (check_user).
 */
static cJSON *
parse_answer(const char *body, size_t len, const char *identity,
    const cJSON *found[NFIELDS], enum record_answer *what)
{
	const cJSON	*id;
	const char	*end = NULL;
	cJSON		*answer;

	if ((answer = cJSON_ParseWithLengthOpts(body, len, &end, 0)) == NULL)
		return NULL;
	while (end < body + len && strchr(" \t\r\n", *end) != NULL && *end)
		end++;
	if (end != body + len || !cJSON_IsObject(answer)) {
		cJSON_Delete(answer);
		return NULL;
	}
	kept_fields(answer, found);
	if (!cJSON_IsString(found[KEPT_SID]) ||
	    found[KEPT_SID]->valuestring[0] == '\0') {
		cJSON_Delete(answer);
		return NULL;
	}
	id = cJSON_IsString(found[KEPT_IDENTITY]) ? found[KEPT_IDENTITY] : NULL;
	*what = check_user(found[KEPT_SID]->valuestring,
	    strlen(found[KEPT_SID]->valuestring),
	    id ? id->valuestring : NULL, id ? strlen(id->valuestring) : 0,
	    identity);
	if (*what != RECORD_USER) {
		cJSON_Delete(answer);
		return NULL;
	}
	return answer;
}

/* The record from an answer parsed by cJSON, or NULL with *why set. */
static json_t *
record_fast(const char *body, size_t len, const char *identity, enum fast *why,
    enum record_answer *what)
{
	const cJSON	*found[NFIELDS];
	cJSON		*answer;
	json_t		*record, *v;
	size_t		 i;

	*why = FAST_INVALID;
	if ((answer = parse_answer(body, len, identity, found, what)) == NULL)
		return NULL;
	if ((record = json_object()) == NULL) {
		cJSON_Delete(answer);
		return NULL;
	}
	*why = FAST_OK;
	for (i = 0; i < NFIELDS; i++) {
		if (found[i] == NULL)
			continue;
		if ((v = from_cjson(found[i], why)) == NULL ||
		    json_object_set_new_nocheck(record, record_fields[i],
		    v) == -1) {
			if (v != NULL)
				*why = FAST_INVALID;
			json_decref(record);
			record = NULL;
			break;
		}
	}
	cJSON_Delete(answer);
	return record;
}

/*
 * A kept value packed straight from cJSON's tree, as codec.c's pack_value
 * packs the json_t that from_cjson would build; -1 for what only that path
 * gives exactly: a number (record_from_twilio knows when cJSON is not
 * exact), a string or key that is not UTF-8 (jansson refuses it), a key
 * repeated inside an object (jansson keeps one).  No depth bound is
 * needed: cJSON's parser refuses nesting deeper than CJSON_NESTING_LIMIT
 * (1000), below codec's encoding bound.
 */
static int
pack_cjson(msgpack_packer *pk, const cJSON *c)
{
	const cJSON	*a, *b;
	size_t		 n;

	if (cJSON_IsString(c)) {
		n = strlen(c->valuestring);
		return !codec_utf8_valid(c->valuestring, n) ||
		    msgpack_pack_str(pk, n) != 0 ||
		    msgpack_pack_str_body(pk, c->valuestring, n) != 0 ? -1 : 0;
	}
	if (cJSON_IsNull(c))
		return msgpack_pack_nil(pk);
	if (cJSON_IsTrue(c))
		return msgpack_pack_true(pk);
	if (cJSON_IsFalse(c))
		return msgpack_pack_false(pk);
	if (!cJSON_IsArray(c) && !cJSON_IsObject(c))
		return -1;
	n = (size_t)cJSON_GetArraySize(c);
	if ((cJSON_IsArray(c) ? msgpack_pack_array(pk, n) :
	    msgpack_pack_map(pk, n)) != 0)
		return -1;
	cJSON_ArrayForEach(a, c) {
		if (cJSON_IsObject(c)) {
			n = strlen(a->string);
			for (b = c->child; b != a; b = b->next)
				if (strcmp(a->string, b->string) == 0)
					return -1;
			if (!codec_utf8_valid(a->string, n) ||
			    msgpack_pack_str(pk, n) != 0 ||
			    msgpack_pack_str_body(pk, a->string, n) != 0)
				return -1;
		}
		if (pack_cjson(pk, a) != 0)
			return -1;
	}
	return 0;
}

/* The record's map: the kept fields found, in record_fields' order. */
static int
pack_record(msgpack_packer *pk, const void *arg)
{
	const cJSON *const *found = arg;
	size_t		 i, n = 0, klen;

	for (i = 0; i < NFIELDS; i++)
		n += found[i] != NULL;
	if (msgpack_pack_map(pk, n) != 0)
		return -1;
	for (i = 0; i < NFIELDS; i++) {
		if (found[i] == NULL)
			continue;
		klen = strlen(record_fields[i]);
		if (msgpack_pack_str(pk, klen) != 0 ||
		    msgpack_pack_str_body(pk, record_fields[i], klen) != 0 ||
		    pack_cjson(pk, found[i]) != 0)
			return -1;
	}
	return 0;
}

int
record_msgpack_from_twilio(const char *body, size_t len, const char *identity,
    char **out, size_t *outlen)
{
	enum record_answer what = RECORD_NOT_USER;
	const cJSON	*found[NFIELDS];
	cJSON		*answer;
	int		 ok;

	*out = NULL;
	*outlen = 0;
	if (body == NULL || len == 0 || has_nul_escape(body, len) ||
	    (answer = parse_answer(body, len, identity, found, &what)) == NULL)
		return 0;
	ok = codec_msgpack_packed(pack_record, found, out, outlen) == 0;
	cJSON_Delete(answer);
	return ok;
}

/*
 * The slow path: jansson parses the whole answer, and the record takes
 * references to the answer's values rather than copies: links stays the
 * same object, null stays null, and the answer's other fields go away with
 * it.  An empty sid is refused too: it would make every later URL for this
 * user wrong.
 */
static json_t *
record_exact(const char *body, size_t len, const char *identity,
    enum record_answer *what)
{
	json_t		*answer, *record, *sid, *id, *v;
	size_t		 i;

	*what = RECORD_NOT_USER;
	if ((answer = parse_body(body, len)) == NULL)
		return NULL;
	sid = json_object_get(answer, "sid");
	if (!json_is_string(sid) || json_string_length(sid) == 0) {
		json_decref(answer);
		return NULL;
	}
	id = json_object_get(answer, "identity");
	*what = check_user(json_string_value(sid), json_string_length(sid),
	    json_is_string(id) ? json_string_value(id) : NULL,
	    json_is_string(id) ? json_string_length(id) : 0, identity);
	if (*what != RECORD_USER) {
		json_decref(answer);
		return NULL;
	}
	if ((record = json_object()) == NULL) {
		json_decref(answer);
		return NULL;
	}
	/* Values move from the answer to the record (no copies): the
	 * record owns them once the answer is gone. */
	for (i = 0; i < sizeof(record_fields) / sizeof(record_fields[0]); i++) {
		if ((v = json_object_get(answer, record_fields[i])) == NULL)
			continue;
		if (json_object_set_nocheck(record, record_fields[i],
		    v) == -1) {
			json_decref(record);
			json_decref(answer);
			return NULL;
		}
	}
	json_decref(answer);
	return record;
}

/* 1 when body holds the escape \u0000 (memchr is much faster than memmem). */
static int
has_nul_escape(const char *body, size_t len)
{
	const char	*p = body, *end = body + len;

	while ((p = memchr(p, '\\', (size_t)(end - p))) != NULL) {
		if (end - p >= 6 && memcmp(p, "\\u0000", 6) == 0)
			return 1;
		p += 2;		/* the escaped character is never a start */
		if (p >= end)
			break;
	}
	return 0;
}

json_t *
record_from_twilio(const char *body, size_t len, const char *identity,
    enum record_answer *what)
{
	enum record_answer ignored;
	enum fast	 why;
	json_t		*record;

	if (what == NULL)
		what = &ignored;
	*what = RECORD_NOT_USER;
	if (body == NULL || len == 0)
		return NULL;
	if (has_nul_escape(body, len))
		record = record_exact(body, len, identity, what);
	else if ((record = record_fast(body, len, identity, &why,
	    what)) == NULL && why == FAST_INEXACT)
		record = record_exact(body, len, identity, what);
	/* The right user in an answer that is no record (a value that is
	 * not UTF-8, no memory): no record all the same. */
	if (record == NULL && *what == RECORD_USER)
		*what = RECORD_NOT_USER;
	return record;
}

/*
 * Twilio's error body is {"code": 20404, "message": "...", "more_info": ...,
 * "status": 404}.  Whatever is missing or of another type is reported as
 * absent (0, NULL), never guessed; an HTML page from a proxy is simply no
 * code.  Either output pointer may be NULL.  A message longer than
 * RECORD_MESSAGE_MAX bytes is cut there, on a character boundary, and
 * ends with "…": it is kept in the job, logged and stored in results.
 */
/* s[0..len) as a string of at most RECORD_MESSAGE_MAX bytes and "…". */
static char *
truncated_message(const char *s, size_t len)
{
	static const char ellipsis[] = "\xe2\x80\xa6";
	char	*out;
	size_t	 n = len;

	if (len <= RECORD_MESSAGE_MAX)
		return strndup(s, len);
	/* Back to the start of the character that does not fit whole. */
	n = RECORD_MESSAGE_MAX;
	while (n > 0 && ((unsigned char)s[n] & 0xc0) == 0x80)
		n--;
	if ((out = malloc(n + sizeof(ellipsis))) == NULL)
		return NULL;
	memcpy(out, s, n);
	memcpy(out + n, ellipsis, sizeof(ellipsis));
	return out;
}

void
record_twilio_error(const char *body, size_t len, long *code, char **message)
{
	json_t		*answer, *v;

	if (code != NULL)
		*code = 0;
	if (message != NULL)
		*message = NULL;
	if ((answer = parse_body(body, len)) == NULL)
		return;
	v = json_object_get(answer, "code");
	if (code != NULL && json_is_integer(v))
		*code = (long)json_integer_value(v);
	v = json_object_get(answer, "message");
	/* Allocation failure leaves it NULL: the message is a courtesy. */
	if (message != NULL && json_is_string(v))
		*message = truncated_message(json_string_value(v),
		    json_string_length(v));
	json_decref(answer);
}

/* 1 when v is a string equal to s byte for byte (v may hold a NUL). */
static int
string_equals(const json_t *v, const char *s)
{
	size_t	 len = strlen(s);

	return json_is_string(v) && json_string_length(v) == len &&
	    memcmp(json_string_value(v), s, len) == 0;
}

/*
 * Attributes are compared as JSON values, not as text: Twilio may give
 * back the object with other spacing or key order, and that is not a
 * change worth an update.  The record normally holds JSON text; an object
 * (a record someone decoded and re-built) is compared as is.  Anything that
 * does not parse counts as different, so the update puts right what the
 * request asked for.
 */
static int
attributes_equal(const json_t *have, const char *want_text)
{
	json_t		*want, *have_parsed = NULL;
	json_error_t	 jerr;
	int		 equal;

	if ((want = json_loads(want_text, JSON_ALLOW_NUL, &jerr)) == NULL)
		return 0;
	if (json_is_string(have)) {
		have_parsed = json_loadb(json_string_value(have),
		    json_string_length(have), JSON_ALLOW_NUL, &jerr);
		have = have_parsed;
	}
	/* want is an object, so anything else (or NULL) is unequal. */
	equal = json_equal(have, want);
	json_decref(have_parsed);
	json_decref(want);
	return equal;
}

/*
 * Only what the request gives is compared: a request without FriendlyName
 * leaves the user's as it is, so a different one there is no difference.
 * The cheap string comparisons come first.
 */
int
record_differs(const json_t *record, const struct request *req)
{
	if (req->friendly_name != NULL &&
	    !string_equals(json_object_get(record, "friendly_name"),
	    req->friendly_name))
		return 1;
	if (req->role_sid != NULL &&
	    !string_equals(json_object_get(record, "role_sid"), req->role_sid))
		return 1;
	if (req->attributes != NULL &&
	    !attributes_equal(json_object_get(record, "attributes"),
	    req->attributes))
		return 1;
	return 0;
}

/*
 * What usergated reads back from Redis, decoded here rather than in the
 * daemon's callbacks so that the fuzz targets can reach it: those bytes
 * are whatever is in Redis, which anyone with access to it may have
 * written.
 */
json_t *
record_stored(const char *buf, size_t len)
{
	json_t		*v = NULL;
	char		 err[128];

	if (codec_decode_any(buf, len, &v, err, sizeof(err)) == CODEC_OK &&
	    json_is_object(v))
		return v;
	json_decref(v);
	return NULL;
}

/*
 * A request kept as raw bytes (a msgpack bin, decoded as a string) is shown
 * as that string when it is UTF-8; otherwise JSON text cannot hold it, and
 * it becomes "request_hex", its bytes in hexadecimal.  -1 when out of
 * memory.
 */
static int
dead_request_hex(json_t *v)
{
	static const char digits[] = "0123456789abcdef";
	const json_t	*req = json_object_get(v, "request");
	const unsigned char *p;
	size_t		 len, i;
	char		*hex;

	if (!json_is_string(req) || codec_utf8_valid(json_string_value(req),
	    json_string_length(req)))
		return 0;
	p = (const unsigned char *)json_string_value(req);
	len = json_string_length(req);
	if ((hex = malloc(2 * len + 1)) == NULL)
		return -1;
	for (i = 0; i < len; i++) {
		hex[2 * i] = digits[p[i] >> 4];
		hex[2 * i + 1] = digits[p[i] & 0xf];
	}
	json_object_set_new_nocheck(v, "request_hex",
	    json_stringn_nocheck(hex, 2 * len));
	free(hex);
	json_object_del(v, "request");
	return 0;
}

/*
 * ASCII only: a line that any terminal and any JSON reader takes.  An
 * entry that JSON text cannot carry otherwise (a key that is not UTF-8,
 * from msgpack) is left out: codec_encode refuses it, where json_dumps
 * would write broken JSON.
 */
char *
record_dead_line(const char *buf, size_t len)
{
	json_t		*v = NULL;
	char		*line = NULL, *text, err[128];
	size_t		 textlen;

	if (codec_decode_any(buf, len, &v, err, sizeof(err)) != CODEC_OK)
		return NULL;
	if (dead_request_hex(v) != 0) {
		json_decref(v);
		return NULL;
	}
	if (codec_encode(v, FORMAT_JSON, &text, &textlen) == 0) {
		free(text);
		line = json_dumps(v, JSON_COMPACT | JSON_ENSURE_ASCII);
	}
	json_decref(v);
	return line;
}

char *
record_dead_request(const char *buf, size_t len, size_t *textlen)
{
	json_t		*v = NULL, *req;
	char		*text = NULL, err[128];

	if (codec_decode_any(buf, len, &v, err, sizeof(err)) != CODEC_OK)
		return NULL;
	req = json_object_get(v, "request");
	if (json_is_object(req) &&
	    codec_encode(req, FORMAT_JSON, &text, textlen) != 0)
		text = NULL;
	json_decref(v);
	return text;
}
