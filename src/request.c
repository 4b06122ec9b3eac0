/*
 * request.c: one raw request (msgpack map or JSON object) to a struct
 * request, with the rules of SPEC §4.1 and the error codes of §4.2.
 *
 * Pure: no I/O, no state, no logging.  Every rejection names the field as
 * the producer spelled it and says what was wrong, because the error message
 * is the only thing a producer sees of a request that was refused.
 *
 * The order of checks is part of the contract, so that one request always
 * gets the same error whichever way its map was ordered:
 *   1. size (too_large), before anything is decoded;
 *   2. decoding (malformed, bad_utf8), and the value must be a map;
 *   3. the echo fields (RequestId, Identity, ReplyTo) are copied when they
 *      are usable, so that even a refused request is answered with them;
 *   4. key names: unknown_field, or malformed for a key given twice;
 *   5. types of all given fields (bad_type);
 *   6. the value rules: Identity, FriendlyName, RoleSid, RequestId,
 *      ReplyTo, and Attributes last, as the only check that parses.
 *
 * ReplyTo is the one field whose rule depends on the configuration: the
 * caller passes the key space it may name (struct reply_scope), so that a
 * producer cannot make usergated push to, and expire, keys it does not own.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "usergate.h"

/* ReplyTo names a Redis list; longer keys are a mistake or an attack. */
#define REPLY_TO_MAX		1024
/* How many bytes of an unknown key the error message quotes. */
#define KEY_QUOTE_MAX		64

enum field {
	FIELD_IDENTITY = 0,
	FIELD_FRIENDLY_NAME,
	FIELD_ATTRIBUTES,
	FIELD_ROLE_SID,
	FIELD_WEBHOOK_ENABLED,
	FIELD_REQUEST_ID,
	FIELD_REPLY_TO,
	FIELD_WAIT,
	FIELD_COUNT
};

/* Twilio's parameter name and the helper libraries' snake_case alias. */
struct field_name {
	const char	*canonical;
	size_t		 canonical_len;
	const char	*alias;
	size_t		 alias_len;
};

#define FIELD_NAME(c, a)	{ c, sizeof(c) - 1, a, sizeof(a) - 1 }
static const struct field_name field_names[FIELD_COUNT] = {
	[FIELD_IDENTITY] = FIELD_NAME("Identity", "identity"),
	[FIELD_FRIENDLY_NAME] = FIELD_NAME("FriendlyName", "friendly_name"),
	[FIELD_ATTRIBUTES] = FIELD_NAME("Attributes", "attributes"),
	[FIELD_ROLE_SID] = FIELD_NAME("RoleSid", "role_sid"),
	[FIELD_WEBHOOK_ENABLED] =
	    FIELD_NAME("WebhookEnabled", "webhook_enabled"),
	[FIELD_REQUEST_ID] = FIELD_NAME("RequestId", "request_id"),
	[FIELD_REPLY_TO] = FIELD_NAME("ReplyTo", "reply_to"),
	/* Socket only (SPEC §6.1); accepted and ignored from Redis. */
	[FIELD_WAIT] = FIELD_NAME("Wait", "wait"),
};
#undef FIELD_NAME

/*
 * The fields of one request as found in the decoded map.  value[] borrows
 * from the map, which outlives this struct; name[] is the spelling the
 * producer used, for error messages.  A null value is not recorded: SPEC's
 * optional keys treat null as absent, and a null Identity is as missing as
 * an absent one.
 */
struct fields {
	const json_t	*value[FIELD_COUNT];
	const char	*name[FIELD_COUNT];
	int		 twice[FIELD_COUNT];	/* both spellings were given */
};

static const char *const error_codes[] = {
	[REQ_OK] = NULL,
	[REQ_MALFORMED] = "malformed",
	[REQ_TOO_LARGE] = "too_large",
	[REQ_UNKNOWN_FIELD] = "unknown_field",
	[REQ_BAD_TYPE] = "bad_type",
	[REQ_MISSING_IDENTITY] = "missing_identity",
	[REQ_IDENTITY_TOO_LONG] = "identity_too_long",
	[REQ_IDENTITY_IS_SID] = "identity_is_sid",
	[REQ_BAD_UTF8] = "bad_utf8",
	[REQ_FRIENDLY_NAME_TOO_LONG] = "friendly_name_too_long",
	[REQ_ATTRIBUTES_NOT_JSON] = "attributes_not_json",
	[REQ_ATTRIBUTES_TOO_LONG] = "attributes_too_long",
	[REQ_BAD_ROLE_SID] = "bad_role_sid",
	[REQ_BAD_REQUEST_ID] = "bad_request_id",
	[REQ_REPLY_TO_FORBIDDEN] = "reply_to_forbidden",
};

static enum request_error reject(char *, size_t, enum request_error,
			    const char *, ...)
			    __attribute__((format(printf, 4, 5)));
static const char	*type_name(const json_t *);
static void		 quote_key(const char *, size_t, char *, size_t);
static char		*copy_string(const json_t *);
static int		 has_nul_key(const json_t *);
static enum request_error find_fields(json_t *, struct fields *, char *,
			    size_t);
static enum request_error check_types(const struct fields *, char *, size_t);
static enum request_error check_text(const json_t *, const char *, size_t,
			    enum request_error, char *, size_t);
static enum request_error check_identity(const struct fields *, char *,
			    size_t);
static enum request_error check_request_id(const struct fields *, char *,
			    size_t);
static int		 has_prefix(const char *, size_t, const char *, size_t);
static int		 in_scope(const char *, size_t,
			    const struct reply_scope *);
static enum request_error check_reply_to(const struct fields *,
			    const struct reply_scope *, char *, size_t);
static enum request_error check_attributes(const json_t *, const char *,
			    char **, char *, size_t);
static enum request_error copy_echo_fields(const struct fields *,
			    const struct reply_scope *, struct request *);
static enum request_error validate(const struct fields *,
			    const struct reply_scope *, struct request *,
			    char *, size_t);

/*
 * Writes the message (when the caller wants one) and returns e.  The
 * message goes into results that may be JSON, so it is sanitised: it may
 * quote jansson's error text (input bytes, controls included), and a short
 * err buffer may cut a character in two.
 */
static enum request_error
reject(char *err, size_t errlen, enum request_error e, const char *fmt, ...)
{
	va_list	 ap;

	if (err != NULL && errlen > 0) {
		va_start(ap, fmt);
		(void)vsnprintf(err, errlen, fmt, ap);
		va_end(ap);
		codec_sanitize_text(err);
	}
	return e;
}

/* Type names as a producer thinks of them, whichever format it used. */
static const char *
type_name(const json_t *v)
{
	switch (json_typeof(v)) {
	case JSON_OBJECT:
		return "map";
	case JSON_ARRAY:
		return "array";
	case JSON_STRING:
		return "string";
	case JSON_INTEGER:
		return "integer";
	case JSON_REAL:
		return "float";
	case JSON_TRUE:
	case JSON_FALSE:
		return "boolean";
	case JSON_NULL:
		return "null";
	}
	return "unknown";
}

/*
 * Quotes an untrusted key for an error message: printable ASCII stays,
 * everything else (including '"' and '\\') becomes \xHH, and at most
 * KEY_QUOTE_MAX bytes are shown.  The message then stays valid UTF-8 and one
 * line, whatever the producer sent, and can go into a JSON result and a log.
 */
static void
quote_key(const char *key, size_t keylen, char *buf, size_t size)
{
	const unsigned char	*p = (const unsigned char *)key;
	size_t			 i, n, used = 0;
	char			 piece[5];

	if (size == 0)
		return;
	buf[0] = '\0';
	for (i = 0; i < keylen && i < KEY_QUOTE_MAX; i++) {
		if (p[i] >= 0x20 && p[i] <= 0x7e && p[i] != '"' &&
		    p[i] != '\\') {
			piece[0] = (char)p[i];
			piece[1] = '\0';
		} else
			(void)snprintf(piece, sizeof(piece), "\\x%02x", p[i]);
		n = strlen(piece);
		if (used + n + 1 > size)
			return;
		memcpy(buf + used, piece, n + 1);
		used += n;
	}
	if (keylen > KEY_QUOTE_MAX && used + 4 <= size)
		memcpy(buf + used, "...", 4);
}

/* A NUL-terminated malloc'd copy of a string value known to hold no NUL. */
static char *
copy_string(const json_t *v)
{
	size_t	 len = json_string_length(v);
	char	*s;

	if ((s = malloc(len + 1)) == NULL)
		return NULL;
	memcpy(s, json_string_value(v), len);
	s[len] = '\0';
	return s;
}

/*
 * 1 when a key anywhere in v holds a NUL byte, which a msgpack map can
 * carry but JSON text cannot usefully: jansson (and so our own string
 * Attributes rule, and many a consumer of the user's attributes) refuses
 * such a key.  Depth is bounded by the codec.
 */
static int
has_nul_key(const json_t *v)
{
	json_t		*child;
	void		*iter;
	size_t		 i;

	switch (json_typeof(v)) {
	case JSON_ARRAY:
		json_array_foreach(v, i, child)
			if (has_nul_key(child))
				return 1;
		return 0;
	case JSON_OBJECT:
		for (iter = json_object_iter((json_t *)v); iter != NULL;
		    iter = json_object_iter_next((json_t *)v, iter)) {
			if (memchr(json_object_iter_key(iter), '\0',
			    json_object_iter_key_len(iter)) != NULL ||
			    has_nul_key(json_object_iter_value(iter)))
				return 1;
		}
		return 0;
	default:
		return 0;
	}
}

/*
 * Sorts the map's keys into f.  Every key is looked at, even after a
 * problem, so that the echo fields are found wherever they are; the first
 * problem in map order is the one reported.  Keys are compared with their
 * length, so a key with a NUL inside is simply unknown.
 */
static enum request_error
find_fields(json_t *map, struct fields *f, char *err, size_t errlen)
{
	const struct field_name	*fn;
	enum request_error	 e = REQ_OK;
	const char		*key, *name;
	char			 quoted[KEY_QUOTE_MAX * 4 + 4];
	json_t			*value;
	void			*iter;
	size_t			 keylen;
	int			 i, found;

	for (iter = json_object_iter(map); iter != NULL;
	    iter = json_object_iter_next(map, iter)) {
		key = json_object_iter_key(iter);
		keylen = json_object_iter_key_len(iter);
		value = json_object_iter_value(iter);
		found = -1;
		name = NULL;
		for (i = 0; i < FIELD_COUNT && found == -1; i++) {
			fn = &field_names[i];
			if (keylen == fn->canonical_len &&
			    memcmp(key, fn->canonical, keylen) == 0) {
				found = i;
				name = fn->canonical;
			} else if (keylen == fn->alias_len &&
			    memcmp(key, fn->alias, keylen) == 0) {
				found = i;
				name = fn->alias;
			}
		}
		if (found == -1) {
			if (e == REQ_OK) {
				quote_key(key, keylen, quoted, sizeof(quoted));
				e = reject(err, errlen, REQ_UNKNOWN_FIELD,
				    "unknown field \"%s\"", quoted);
			}
			continue;
		}
		if (json_is_null(value))
			continue;
		if (f->value[found] != NULL) {
			f->twice[found] = 1;
			if (e == REQ_OK)
				e = reject(err, errlen, REQ_MALFORMED,
				    "%s given twice (as %s and %s)",
				    field_names[found].canonical,
				    f->name[found], name);
			continue;
		}
		f->value[found] = value;
		f->name[found] = name;
	}
	return e;
}

/* Wrong types, in the order of the SPEC's table.  RequestId and ReplyTo
 * have their own rules below, which include their type. */
static enum request_error
check_types(const struct fields *f, char *err, size_t errlen)
{
	/* JSON_TRUE stands for either boolean. */
	static const struct {
		enum field	 field;
		json_type	 type;
		const char	*what;
	} rules[] = {
		{ FIELD_IDENTITY, JSON_STRING, "a string" },
		{ FIELD_FRIENDLY_NAME, JSON_STRING, "a string" },
		{ FIELD_ROLE_SID, JSON_STRING, "a string" },
		{ FIELD_WEBHOOK_ENABLED, JSON_TRUE, "a boolean" },
		{ FIELD_WAIT, JSON_TRUE, "a boolean" },
	};
	const json_t	*v;
	size_t		 i;
	int		 ok;

	for (i = 0; i < sizeof(rules) / sizeof(rules[0]); i++) {
		if ((v = f->value[rules[i].field]) == NULL)
			continue;
		if (rules[i].type == JSON_TRUE)
			ok = json_is_boolean(v);
		else
			ok = json_typeof(v) == rules[i].type;
		if (!ok)
			return reject(err, errlen, REQ_BAD_TYPE,
			    "%s must be %s, got %s", f->name[rules[i].field],
			    rules[i].what, type_name(v));
	}
	v = f->value[FIELD_ATTRIBUTES];
	if (v != NULL && !json_is_string(v) && !json_is_object(v))
		return reject(err, errlen, REQ_BAD_TYPE,
		    "%s must be a string or a map, got %s",
		    f->name[FIELD_ATTRIBUTES], type_name(v));
	return REQ_OK;
}

/*
 * A text field sent to Twilio as a form value: UTF-8, at most max code
 * points.  A NUL byte is valid UTF-8 (U+0000) but is refused as bad_utf8:
 * struct request holds C strings, a form field would be cut at it, and
 * Twilio's text fields cannot hold it anyway; bad_utf8 is the code about a
 * string's bytes, while bad_type would wrongly say it is not a string.
 */
static enum request_error
check_text(const json_t *v, const char *name, size_t max,
    enum request_error too_long, char *err, size_t errlen)
{
	const char	*s = json_string_value(v);
	size_t		 len = json_string_length(v), chars;

	if (memchr(s, '\0', len) != NULL)
		return reject(err, errlen, REQ_BAD_UTF8,
		    "%s contains a NUL character", name);
	if (!codec_utf8_valid(s, len))
		return reject(err, errlen, REQ_BAD_UTF8,
		    "%s is not valid UTF-8", name);
	if ((chars = codec_utf8_length(s, len)) > max)
		return reject(err, errlen, too_long,
		    "%s is %zu characters, over the limit of %zu", name, chars,
		    max);
	return REQ_OK;
}

/* Identity's rules after its type: present, text, length, not a User SID. */
static enum request_error
check_identity(const struct fields *f, char *err, size_t errlen)
{
	const json_t		*v = f->value[FIELD_IDENTITY];
	const char		*name = f->name[FIELD_IDENTITY];
	enum request_error	 e;

	if (v == NULL)
		return reject(err, errlen, REQ_MISSING_IDENTITY,
		    "Identity is required");
	if (!json_is_string(v))
		return reject(err, errlen, REQ_BAD_TYPE,
		    "%s must be a string, got %s", name, type_name(v));
	if (json_string_length(v) == 0)
		return reject(err, errlen, REQ_MISSING_IDENTITY,
		    "%s is empty", name);
	e = check_text(v, name, UG_IDENTITY_MAX, REQ_IDENTITY_TOO_LONG, err,
	    errlen);
	if (e != REQ_OK)
		return e;
	/* Twilio would read it as the SID of another user on fetch/update. */
	if (twilio_is_sid(json_string_value(v), json_string_length(v), "US"))
		return reject(err, errlen, REQ_IDENTITY_IS_SID,
		    "%s must not look like a User SID (US + 32 hex digits)",
		    name);
	return REQ_OK;
}

/*
 * RequestId is echoed in results and logs, so it must be short printable
 * text: 1 to UG_REQUEST_ID_MAX bytes of UTF-8 without C0 controls, DEL or
 * C1 controls (U+0080..U+009F, encoded C2 80..C2 9F).  Every failure,
 * including a wrong type, is bad_request_id: that is the SPEC's code for it.
 * An absent RequestId is fine; the caller generates one.
 */
static enum request_error
check_request_id(const struct fields *f, char *err, size_t errlen)
{
	const json_t	*v = f->value[FIELD_REQUEST_ID];
	const char	*name = f->name[FIELD_REQUEST_ID];
	const unsigned char *s;
	size_t		 len, i;

	if (v == NULL)
		return REQ_OK;
	if (!json_is_string(v))
		return reject(err, errlen, REQ_BAD_REQUEST_ID,
		    "%s must be a string, got %s", name, type_name(v));
	s = (const unsigned char *)json_string_value(v);
	len = json_string_length(v);
	if (len == 0)
		return reject(err, errlen, REQ_BAD_REQUEST_ID,
		    "%s is empty", name);
	if (len > UG_REQUEST_ID_MAX)
		return reject(err, errlen, REQ_BAD_REQUEST_ID,
		    "%s is %zu bytes, over the limit of %d", name, len,
		    UG_REQUEST_ID_MAX);
	if (!codec_utf8_valid((const char *)s, len))
		return reject(err, errlen, REQ_BAD_REQUEST_ID,
		    "%s is not valid UTF-8", name);
	for (i = 0; i < len; i++)
		if (s[i] < 0x20 || s[i] == 0x7f ||
		    (s[i] == 0xc2 && i + 1 < len && s[i + 1] <= 0x9f))
			return reject(err, errlen, REQ_BAD_REQUEST_ID,
			    "%s contains a control character", name);
	return REQ_OK;
}

/* 1 when s[0..len) begins with p[0..plen). */
static int
has_prefix(const char *s, size_t len, const char *p, size_t plen)
{
	return len >= plen && memcmp(s, p, plen) == 0;
}

/*
 * 1 when the key s[0..len) may receive replies: it begins with one of the
 * comma-separated prefixes of scope->allowed and not with scope->own.  The
 * daemon's own keys are refused even under an allowed prefix that overlaps
 * them: a reply pushed to (and expiring) the request list or the rate
 * window would lose requests or stop every create.
 */
static int
in_scope(const char *s, size_t len, const struct reply_scope *scope)
{
	const char	*p, *end;

	if (scope->own != NULL && has_prefix(s, len, scope->own,
	    strlen(scope->own)))
		return 0;
	for (p = scope->allowed; p != NULL && *p != '\0'; p = end + 1) {
		if ((end = strchr(p, ',')) == NULL)
			end = p + strlen(p);
		if (end > p && has_prefix(s, len, p, (size_t)(end - p)))
			return 1;
		if (*end == '\0')
			break;
	}
	return 0;
}

/*
 * ReplyTo is a Redis key: any bytes but NUL (struct request holds a C
 * string), 1 to REPLY_TO_MAX of them; SPEC gives these failures no code of
 * their own, so they are bad_type.  Then the key must be in scope (when the
 * caller gives one): reply_to_forbidden.
 */
static enum request_error
check_reply_to(const struct fields *f, const struct reply_scope *scope,
    char *err, size_t errlen)
{
	const json_t	*v = f->value[FIELD_REPLY_TO];
	const char	*name = f->name[FIELD_REPLY_TO];
	size_t		 len;

	if (v == NULL)
		return REQ_OK;
	if (!json_is_string(v))
		return reject(err, errlen, REQ_BAD_TYPE,
		    "%s must be a string, got %s", name, type_name(v));
	len = json_string_length(v);
	if (len == 0)
		return reject(err, errlen, REQ_BAD_TYPE, "%s is empty", name);
	if (len > REPLY_TO_MAX)
		return reject(err, errlen, REQ_BAD_TYPE,
		    "%s is %zu bytes, over the limit of %d", name, len,
		    REPLY_TO_MAX);
	if (memchr(json_string_value(v), '\0', len) != NULL)
		return reject(err, errlen, REQ_BAD_TYPE,
		    "%s contains a NUL character", name);
	/* The key is not quoted: it may be any bytes. */
	if (scope != NULL && !in_scope(json_string_value(v), len, scope))
		return reject(err, errlen, REQ_REPLY_TO_FORBIDDEN,
		    "%s is outside the keys replies may go to "
		    "([results] reply_prefix)", name);
	return REQ_OK;
}

/*
 * Attributes as JSON text, in *out (malloc'd).  A string is kept as the
 * producer wrote it, after checking it is one JSON object of at most
 * UG_ATTRIBUTES_MAX bytes (the size first: no point parsing 60 KiB to refuse
 * it).  Duplicate keys are refused: which value Twilio or a reader would
 * keep is anyone's guess.  A map is serialised to compact JSON, in its key
 * order, and the same size limit applies to the result.
 */
static enum request_error
check_attributes(const json_t *v, const char *name, char **out, char *err,
    size_t errlen)
{
	json_error_t		 jerr;
	enum request_error	 e;
	json_t			*parsed;
	const char		*s;
	size_t			 len;
	char			*text;

	*out = NULL;
	if (json_is_object(v)) {
		/*
		 * Checked before json_dumps, which refuses a string value
		 * that is not UTF-8 but writes such a key as broken JSON
		 * ({":1}).  A NUL in a key is refused as it would be in the
		 * string form.
		 */
		if (!codec_text_valid(v))
			return reject(err, errlen, REQ_BAD_UTF8,
			    "%s holds text that is not valid UTF-8", name);
		if (has_nul_key(v))
			return reject(err, errlen, REQ_ATTRIBUTES_NOT_JSON,
			    "%s has a key with a NUL character", name);
		if ((text = json_dumps(v, JSON_COMPACT)) == NULL)
			return reject(err, errlen, REQ_MALFORMED,
			    "out of memory serialising %s", name);
		if ((len = strlen(text)) > UG_ATTRIBUTES_MAX) {
			free(text);
			return reject(err, errlen, REQ_ATTRIBUTES_TOO_LONG,
			    "%s is %zu bytes as JSON, over the limit of %d",
			    name, len, UG_ATTRIBUTES_MAX);
		}
		*out = text;
		return REQ_OK;
	}

	s = json_string_value(v);
	len = json_string_length(v);
	if (len > UG_ATTRIBUTES_MAX)
		return reject(err, errlen, REQ_ATTRIBUTES_TOO_LONG,
		    "%s is %zu bytes, over the limit of %d", name, len,
		    UG_ATTRIBUTES_MAX);
	/* A raw NUL byte is not JSON, so jansson refuses it below. */
	parsed = json_loadb(s, len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL,
	    &jerr);
	if (parsed == NULL) {
		if (json_error_code(&jerr) == json_error_invalid_utf8)
			return reject(err, errlen, REQ_BAD_UTF8,
			    "%s is not valid UTF-8", name);
		return reject(err, errlen, REQ_ATTRIBUTES_NOT_JSON,
		    "%s must be a JSON object: %s at byte %d", name, jerr.text,
		    jerr.position);
	}
	/* Without JSON_DECODE_ANY only an object or an array parses. */
	if (!json_is_object(parsed)) {
		e = reject(err, errlen, REQ_ATTRIBUTES_NOT_JSON,
		    "%s must be a JSON object, got %s", name,
		    type_name(parsed));
		json_decref(parsed);
		return e;
	}
	json_decref(parsed);
	if ((*out = copy_string(v)) == NULL)
		return reject(err, errlen, REQ_MALFORMED, "out of memory");
	return REQ_OK;
}

/*
 * Copies RequestId, Identity and ReplyTo into req when they can be echoed:
 * a RequestId or ReplyTo that passes its own rule, an Identity that is
 * non-empty UTF-8 text (even too long or SID-like: the producer needs to
 * see which of its requests that was).  A field given twice is ambiguous
 * and not echoed.  A ReplyTo out of scope is never copied, so no reply is
 * written to it whatever else is wrong with the request.  Returns
 * REQ_MALFORMED only when memory ran out.
 */
static enum request_error
copy_echo_fields(const struct fields *f, const struct reply_scope *scope,
    struct request *req)
{
	enum request_error	 e;

	if (f->value[FIELD_REQUEST_ID] != NULL && !f->twice[FIELD_REQUEST_ID] &&
	    check_request_id(f, NULL, 0) == REQ_OK &&
	    (req->request_id = copy_string(f->value[FIELD_REQUEST_ID])) == NULL)
		return REQ_MALFORMED;
	if (f->value[FIELD_REPLY_TO] != NULL && !f->twice[FIELD_REPLY_TO] &&
	    check_reply_to(f, scope, NULL, 0) == REQ_OK &&
	    (req->reply_to = copy_string(f->value[FIELD_REPLY_TO])) == NULL)
		return REQ_MALFORMED;
	if (f->value[FIELD_IDENTITY] != NULL && !f->twice[FIELD_IDENTITY]) {
		e = check_identity(f, NULL, 0);
		if ((e == REQ_OK || e == REQ_IDENTITY_TOO_LONG ||
		    e == REQ_IDENTITY_IS_SID) &&
		    (req->identity = copy_string(f->value[FIELD_IDENTITY])) ==
		    NULL)
			return REQ_MALFORMED;
	}
	return REQ_OK;
}

/*
 * Steps 5 and 6 of the order at the top.  req gets the remaining fields
 * only when everything is valid, so a refused request carries nothing but
 * its echo fields.
 */
static enum request_error
validate(const struct fields *f, const struct reply_scope *scope,
    struct request *req, char *err, size_t errlen)
{
	const json_t		*v;
	enum request_error	 e;
	char			*attributes = NULL, *friendly_name = NULL;
	char			*role_sid = NULL;

	if ((e = check_types(f, err, errlen)) != REQ_OK)
		return e;
	if ((e = check_identity(f, err, errlen)) != REQ_OK)
		return e;
	if ((v = f->value[FIELD_FRIENDLY_NAME]) != NULL) {
		e = check_text(v, f->name[FIELD_FRIENDLY_NAME],
		    UG_FRIENDLY_NAME_MAX, REQ_FRIENDLY_NAME_TOO_LONG, err,
		    errlen);
		if (e != REQ_OK)
			return e;
	}
	if ((v = f->value[FIELD_ROLE_SID]) != NULL &&
	    !twilio_is_sid(json_string_value(v), json_string_length(v), "RL"))
		return reject(err, errlen, REQ_BAD_ROLE_SID,
		    "%s must be RL followed by 32 hex digits",
		    f->name[FIELD_ROLE_SID]);
	if ((e = check_request_id(f, err, errlen)) != REQ_OK)
		return e;
	if ((e = check_reply_to(f, scope, err, errlen)) != REQ_OK)
		return e;
	/* Last of the checks: the only one that allocates. */
	if ((v = f->value[FIELD_ATTRIBUTES]) != NULL) {
		e = check_attributes(v, f->name[FIELD_ATTRIBUTES], &attributes,
		    err, errlen);
		if (e != REQ_OK)
			return e;
	}

	if (((v = f->value[FIELD_FRIENDLY_NAME]) != NULL &&
	    (friendly_name = copy_string(v)) == NULL) ||
	    ((v = f->value[FIELD_ROLE_SID]) != NULL &&
	    (role_sid = copy_string(v)) == NULL)) {
		free(attributes);
		free(friendly_name);
		return reject(err, errlen, REQ_MALFORMED, "out of memory");
	}
	req->attributes = attributes;
	req->friendly_name = friendly_name;
	req->role_sid = role_sid;
	if ((v = f->value[FIELD_WEBHOOK_ENABLED]) != NULL)
		req->webhook_enabled = json_is_true(v);
	if ((v = f->value[FIELD_WAIT]) != NULL)
		req->wait = json_is_true(v);
	return REQ_OK;
}

/*
 * SPEC has no code for running out of memory; such a request is answered
 * malformed with "out of memory", which at least never blames a good
 * request on its content without saying so.  NULL for REQ_OK or a value
 * outside the enum: there is no error to name.
 */
const char *
request_error_code(enum request_error e)
{
	if ((size_t)e >= sizeof(error_codes) / sizeof(error_codes[0]))
		return NULL;
	return error_codes[e];
}

/*
 * REQ_TOO_LARGE (err set) when the request is over the frame limit: its
 * length, what queue_take.c left of a Redis list element over the limit,
 * or a msgpack header announcing more; else REQ_OK.
 */
static enum request_error
check_size(const void *buf, size_t len, char *err, size_t errlen)
{
	if (len > UG_FRAME_MAX)
		return reject(err, errlen, REQ_TOO_LARGE,
		    "request is %zu bytes, over the limit of %d", len,
		    UG_FRAME_MAX);
	/* What queue_take.c leaves of a Redis list element over the limit (the
	 * length is read within len: buf need not be a C string). */
	if (len > strlen(UG_OVERSIZE_MARK) &&
	    memcmp(buf, UG_OVERSIZE_MARK, strlen(UG_OVERSIZE_MARK)) == 0) {
		const char *p = buf;
		unsigned long long total = 0;
		size_t i;

		for (i = strlen(UG_OVERSIZE_MARK); i < len && i < 40 &&
		    p[i] >= '0' && p[i] <= '9'; i++)
			total = total * 10 + (unsigned long long)(p[i] - '0');
		return reject(err, errlen, REQ_TOO_LARGE,
		    "request is %llu bytes, over the limit of %d", total,
		    UG_FRAME_MAX);
	}
	/*
	 * msgpack that announces more than the limit is too large however
	 * much of it came: the request socket stops reading at such a
	 * header, and on Redis its bytes may be truncated or a lie.
	 */
	if (len > 0 && *(const char *)buf != '{') {
		struct codec_scan scan;

		memset(&scan, 0, sizeof(scan));
		if (codec_msgpack_scan(&scan, buf, len, UG_FRAME_MAX) ==
		    CODEC_SCAN_TOO_LARGE)
			return reject(err, errlen, REQ_TOO_LARGE,
			    "msgpack header at byte %zu announces more than "
			    "the limit of %d bytes", scan.off, UG_FRAME_MAX);
	}
	return REQ_OK;
}

/* The request as a map (*map, the caller's), or an error with err set. */
static enum request_error
decode_map(const void *buf, size_t len, json_t **map, char *err,
    size_t errlen)
{
	enum request_error	 e;
	char			 cerr[256];

	/*
	 * codec_decode_any rather than codec_decode: the "not a map"
	 * message names the request, and a value that does not start with
	 * '{' is msgpack, so its type is named as such.
	 */
	switch (codec_decode_any(buf, len, map, cerr, sizeof(cerr))) {
	case CODEC_OK:
		break;
	case CODEC_BAD_UTF8:
		return reject(err, errlen, REQ_BAD_UTF8, "%s", cerr);
	case CODEC_MALFORMED:
	case CODEC_NOT_MAP:
	default:
		return reject(err, errlen, REQ_MALFORMED, "%s", cerr);
	}
	if (!json_is_object(*map)) {
		e = reject(err, errlen, REQ_MALFORMED,
		    "request must be a map, got a msgpack %s",
		    json_is_null(*map) ? "nil" : type_name(*map));
		json_decref(*map);
		*map = NULL;
		return e;
	}
	return REQ_OK;
}

enum request_error
request_parse(const void *buf, size_t len, const struct reply_scope *scope,
    struct request *req, char *err, size_t errlen)
{
	struct fields		 f;
	enum request_error	 e;
	json_t			*map = NULL;

	memset(req, 0, sizeof(*req));
	req->webhook_enabled = -1;
	req->wait = 1;
	if (err != NULL && errlen > 0)
		err[0] = '\0';

	if ((e = check_size(buf, len, err, errlen)) != REQ_OK ||
	    (e = decode_map(buf, len, &map, err, errlen)) != REQ_OK)
		return e;

	memset(&f, 0, sizeof(f));
	e = find_fields(map, &f, err, errlen);
	if (copy_echo_fields(&f, scope, req) != REQ_OK)
		e = reject(err, errlen, REQ_MALFORMED, "out of memory");
	else if (e == REQ_OK)
		e = validate(&f, scope, req, err, errlen);
	json_decref(map);
	return e;
}

void
request_free(struct request *req)
{
	if (req == NULL)
		return;
	free(req->identity);
	free(req->friendly_name);
	free(req->attributes);
	free(req->role_sid);
	free(req->request_id);
	free(req->reply_to);
	memset(req, 0, sizeof(*req));
	req->webhook_enabled = -1;
	req->wait = 1;
}
