/*
 * record.c: Twilio's answers to user records (SPEC §4.3) and to error codes,
 * and the comparison that decides whether on_exists = update has anything
 * to change.
 *
 * Pure: no I/O, no state.  Bodies are parsed with jansson; a record shares
 * its values with nothing once the answer it came from is released.
 */
#include <stdlib.h>
#include <string.h>

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

static json_t	*parse_body(const char *, size_t);
static int	 string_equals(const json_t *, const char *);
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
 * The new record takes references to the answer's values rather than
 * copies: links stays the same object, null stays null, and the answer's
 * other fields go away with it.  An empty sid is refused too: it would make
 * every later URL for this user wrong.
 */
json_t *
record_from_twilio(const char *body, size_t len)
{
	json_t		*answer, *record, *sid, *v;
	size_t		 i;

	if ((answer = parse_body(body, len)) == NULL)
		return NULL;
	sid = json_object_get(answer, "sid");
	if (!json_is_string(sid) || json_string_length(sid) == 0) {
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
		if (json_object_set_nocheck(record, record_fields[i], v) == -1) {
			json_decref(record);
			json_decref(answer);
			return NULL;
		}
	}
	json_decref(answer);
	return record;
}

/*
 * Twilio's error body is {"code": 20404, "message": "...", "more_info": ...,
 * "status": 404}.  Whatever is missing or of another type is reported as
 * absent (0, NULL), never guessed; an HTML page from a proxy is simply no
 * code.  Either output pointer may be NULL.
 */
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
		*message = strdup(json_string_value(v));
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
