/*
 * codec.c: the two wire formats of SPEC §4 -- msgpack and JSON -- to and
 * from jansson values, so that everything after decoding works on one
 * representation.
 *
 * Pure: no I/O, no state.  JSON is jansson's parser and encoder, msgpack is
 * msgpack-c's unpacker and packer; nothing here parses or encodes by hand
 * except the UTF-8 validator, which jansson does not export.
 *
 * Hostile input is expected (a frame comes from any local process or any
 * Redis producer), so every path is bounded: nesting is limited to
 * CODEC_DEPTH_MAX levels in both formats, trailing bytes are refused, and
 * every error names what was wrong without echoing raw bytes.
 */
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <msgpack.h>

#include "usergate.h"

/*
 * Containers nested deeper than this are refused.  32 is msgpack-c's own
 * unpacker stack (MSGPACK_EMBED_STACK_SIZE), so both formats accept exactly
 * the same shapes and a value decoded from one can always be re-encoded in
 * the other and decoded again.  Requests and records are two levels deep.
 */
#define CODEC_DEPTH_MAX		32
/*
 * Encoding recurses over values built by us or decoded above; this bound
 * only guards against a reference cycle a caller might have built by
 * mistake, which jansson does not forbid.  It matches jansson's own
 * JSON_PARSER_MAX_DEPTH so JSON and msgpack encoding refuse the same values.
 */
#define CODEC_ENCODE_DEPTH_MAX	2048
/* How much of a map key an error message may quote. */
#define CODEC_KEY_QUOTE_MAX	64

static void		 set_error(char *, size_t, const char *, ...)
			    __attribute__((format(printf, 3, 4)));
static const char	*msgpack_type_noun(const msgpack_object *);
static const char	*string_bytes(const char *);
static int		 is_printable_ascii(const char *, size_t);
static json_t		*from_msgpack_map(const msgpack_object_map *, int,
			    char *, size_t);
static json_t		*from_msgpack(const msgpack_object *, int, char *,
			    size_t);
static int		 json_depth_ok(const json_t *, int);
static enum codec_status decode_json(const char *, size_t, int, json_t **,
			    char *, size_t);
static enum codec_status decode_msgpack(const char *, size_t, int, json_t **,
			    char *, size_t);
static enum codec_status decode(const void *, size_t, int, json_t **, char *,
			    size_t);
static int		 pack_value(msgpack_packer *, const json_t *, int);
static int		 pack_members(msgpack_packer *, const json_t *, int);
static int		 pack_root(msgpack_packer *, const void *);
static int		 json_keys_ok(const json_t *, int);

/*
 * err may be NULL or empty when the caller only wants the status.  The
 * message is sanitised because it ends up in JSON results and logs: jansson's
 * error text quotes up to 20 bytes of the input, control characters
 * included, and a short err buffer may cut a character in two.
 */
static void
set_error(char *err, size_t errlen, const char *fmt, ...)
{
	va_list	 ap;

	if (err == NULL || errlen == 0)
		return;
	va_start(ap, fmt);
	(void)vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
	codec_sanitize_text(err);
}

/* "a msgpack array": how a value that is not a map is named to a producer. */
static const char *
msgpack_type_noun(const msgpack_object *o)
{
	switch (o->type) {
	case MSGPACK_OBJECT_NIL:
		return "a msgpack nil";
	case MSGPACK_OBJECT_BOOLEAN:
		return "a msgpack boolean";
	case MSGPACK_OBJECT_POSITIVE_INTEGER:
	case MSGPACK_OBJECT_NEGATIVE_INTEGER:
		return "a msgpack integer";
	case MSGPACK_OBJECT_FLOAT32:
	case MSGPACK_OBJECT_FLOAT64:
		return "a msgpack float";
	case MSGPACK_OBJECT_STR:
		return "a msgpack string";
	case MSGPACK_OBJECT_BIN:
		return "a msgpack bin";
	case MSGPACK_OBJECT_ARRAY:
		return "a msgpack array";
	case MSGPACK_OBJECT_MAP:
		return "a msgpack map";
	case MSGPACK_OBJECT_EXT:
		return "a msgpack ext";
	}
	return "an unknown msgpack type";
}

/*
 * msgpack-c points an empty str or bin into the input, but nothing promises
 * that; jansson takes NULL as an error, so an empty one gets "".
 */
static const char *
string_bytes(const char *ptr)
{
	return ptr != NULL ? ptr : "";
}

/* Only such keys are quoted in error messages; others could forge output. */
static int
is_printable_ascii(const char *s, size_t len)
{
	const unsigned char	*p = (const unsigned char *)s;
	size_t			 i;

	for (i = 0; i < len; i++)
		if (p[i] < 0x20 || p[i] > 0x7e || p[i] == '"' || p[i] == '\\')
			return 0;
	return 1;
}

/*
 * A map becomes an object.  Keys must be strings (str, or bin, which is a
 * string everywhere else too); they are kept byte for byte with their length
 * (json_object_setn_new_nocheck), so a key with a NUL or invalid UTF-8 still
 * reaches the validator, which names it as an unknown field.  A repeated key
 * is malformed: which of the two values was meant cannot be known.
 */
static json_t *
from_msgpack_map(const msgpack_object_map *map, int depth, char *err,
    size_t errlen)
{
	const msgpack_object_kv	*kv;
	const char		*key;
	json_t			*obj, *child;
	uint32_t		 i;
	size_t			 keylen;

	if ((obj = json_object()) == NULL) {
		set_error(err, errlen, "out of memory");
		return NULL;
	}
	for (i = 0; i < map->size; i++) {
		kv = &map->ptr[i];
		if (kv->key.type == MSGPACK_OBJECT_STR) {
			key = string_bytes(kv->key.via.str.ptr);
			keylen = kv->key.via.str.size;
		} else if (kv->key.type == MSGPACK_OBJECT_BIN) {
			key = string_bytes(kv->key.via.bin.ptr);
			keylen = kv->key.via.bin.size;
		} else {
			set_error(err, errlen,
			    "map key must be a string, got %s",
			    msgpack_type_noun(&kv->key));
			goto fail;
		}
		if (json_object_getn(obj, key, keylen) != NULL) {
			if (keylen <= CODEC_KEY_QUOTE_MAX &&
			    is_printable_ascii(key, keylen))
				set_error(err, errlen,
				    "duplicate map key \"%.*s\"",
				    (int)keylen, key);
			else
				set_error(err, errlen, "duplicate map key");
			goto fail;
		}
		if ((child = from_msgpack(&kv->val, depth + 1, err,
		    errlen)) == NULL)
			goto fail;
		if (json_object_setn_new_nocheck(obj, key, keylen,
		    child) == -1) {
			set_error(err, errlen, "out of memory");
			goto fail;
		}
	}
	return obj;

fail:
	json_decref(obj);
	return NULL;
}

/* An array becomes an array, or NULL with err set. */
static json_t *
from_msgpack_array(const msgpack_object_array *array, int depth, char *err,
    size_t errlen)
{
	json_t		*v, *child;
	uint32_t	 i;

	if ((v = json_array()) == NULL) {
		set_error(err, errlen, "out of memory");
		return NULL;
	}
	for (i = 0; i < array->size; i++) {
		child = from_msgpack(&array->ptr[i], depth + 1, err, errlen);
		if (child == NULL) {
			json_decref(v);
			return NULL;
		}
		if (json_array_append_new(v, child) == -1) {
			json_decref(v);
			set_error(err, errlen, "out of memory");
			return NULL;
		}
	}
	return v;
}

/*
 * One msgpack object to a new jansson value, or NULL with err set.  depth is
 * the nesting level of o (1 for the top).  Strings are kept as they are,
 * even when not UTF-8 or holding a NUL: rejecting them here would lose the
 * name of the field, which the validator puts in its answer.
 */
static json_t *
from_msgpack(const msgpack_object *o, int depth, char *err, size_t errlen)
{
	json_t		*v = NULL;

	/*
	 * Only containers count, as in json_depth_ok: a scalar inside the
	 * deepest allowed container is fine in both formats.
	 */
	if ((o->type == MSGPACK_OBJECT_ARRAY ||
	    o->type == MSGPACK_OBJECT_MAP) && depth > CODEC_DEPTH_MAX) {
		set_error(err, errlen, "nested deeper than %d levels",
		    CODEC_DEPTH_MAX);
		return NULL;
	}

	switch (o->type) {
	case MSGPACK_OBJECT_NIL:
		v = json_null();
		break;
	case MSGPACK_OBJECT_BOOLEAN:
		v = json_boolean(o->via.boolean);
		break;
	case MSGPACK_OBJECT_POSITIVE_INTEGER:
		/* jansson integers are signed 64-bit. */
		if (o->via.u64 > INT64_MAX) {
			set_error(err, errlen, "integer out of range");
			return NULL;
		}
		v = json_integer((json_int_t)o->via.u64);
		break;
	case MSGPACK_OBJECT_NEGATIVE_INTEGER:
		v = json_integer((json_int_t)o->via.i64);
		break;
	case MSGPACK_OBJECT_FLOAT32:
	case MSGPACK_OBJECT_FLOAT64:
		/* JSON has no NaN or infinity, and json_real refuses them. */
		if (!isfinite(o->via.f64)) {
			set_error(err, errlen, "float is not finite");
			return NULL;
		}
		v = json_real(o->via.f64);
		break;
	case MSGPACK_OBJECT_STR:
		v = json_stringn_nocheck(string_bytes(o->via.str.ptr),
		    o->via.str.size);
		break;
	case MSGPACK_OBJECT_BIN:
		v = json_stringn_nocheck(string_bytes(o->via.bin.ptr),
		    o->via.bin.size);
		break;
	case MSGPACK_OBJECT_ARRAY:
		/* These two set err themselves, on allocation failure too. */
		return from_msgpack_array(&o->via.array, depth, err, errlen);
	case MSGPACK_OBJECT_MAP:
		return from_msgpack_map(&o->via.map, depth, err, errlen);
	case MSGPACK_OBJECT_EXT:
		set_error(err, errlen, "msgpack ext type %d is not supported",
		    (int)o->via.ext.type);
		return NULL;
	default:
		set_error(err, errlen, "unknown msgpack type %d", (int)o->type);
		return NULL;
	}
	if (v == NULL)
		set_error(err, errlen, "out of memory");
	return v;
}

/*
 * 1 when no container in v, which sits at level depth, is deeper than
 * CODEC_DEPTH_MAX.  jansson parses up to 2048 levels; this keeps JSON to the
 * same bound as msgpack.  Scalars end the walk at once, so a flat request
 * costs one pass over its values.
 */
static int
json_depth_ok(const json_t *v, int depth)
{
	const char	*key;
	json_t		*child;
	size_t		 i;

	if (!json_is_object(v) && !json_is_array(v))
		return 1;
	if (depth > CODEC_DEPTH_MAX)
		return 0;
	if (json_is_array(v)) {
		json_array_foreach(v, i, child)
			if (!json_depth_ok(child, depth + 1))
				return 0;
		return 1;
	}
	/* json_object_foreach wants a non-const object; nothing is changed. */
	json_object_foreach((json_t *)v, key, child)
		if (!json_depth_ok(child, depth + 1))
			return 0;
	return 1;
}

/*
 * JSON_ALLOW_NUL: a "\u0000" in a string value reaches the validator, which
 * rejects it for the field it is in, exactly as it does for a NUL in a
 * msgpack string.  (jansson refuses it in a key whatever the flags.)
 * jansson refuses trailing non-whitespace itself.
 */
static enum codec_status
decode_json(const char *buf, size_t len, int want_map, json_t **out, char *err,
    size_t errlen)
{
	json_error_t	 jerr;
	json_t		*v;

	v = json_loadb(buf, len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL,
	    &jerr);
	if (v == NULL) {
		if (json_error_code(&jerr) == json_error_invalid_utf8) {
			set_error(err, errlen,
			    "JSON is not valid UTF-8 at byte %d: %s",
			    jerr.position, jerr.text);
			return CODEC_BAD_UTF8;
		}
		set_error(err, errlen, "invalid JSON at byte %d: %s",
		    jerr.position, jerr.text);
		return CODEC_MALFORMED;
	}
	if (!json_depth_ok(v, 1)) {
		json_decref(v);
		set_error(err, errlen, "JSON nested deeper than %d levels",
		    CODEC_DEPTH_MAX);
		return CODEC_MALFORMED;
	}
	/*
	 * buf began with '{', so v is an object and want_map holds; the
	 * check stays in case the format detection ever changes.
	 */
	if (want_map && !json_is_object(v)) {
		set_error(err, errlen, "expected a map, got a JSON %s",
		    json_is_array(v) ? "array" : "scalar");
		json_decref(v);
		return CODEC_NOT_MAP;
	}
	*out = v;
	return CODEC_OK;
}

#define DECODE_ZONE_CHUNK	4096
static msgpack_zone decode_zone;
static int decode_zone_ready;
static msgpack_sbuffer encode_buf;	/* reused by every msgpack encode */

/*
 * 1 when buf is one whole msgpack value, within the depth limit, whose
 * headers announce nothing bigger than the bytes could hold (msgpack-c
 * would reserve it before finding out); else 0 with err set.
 */
static int
msgpack_bounded(const char *buf, size_t len, char *err, size_t errlen)
{
	struct codec_scan	 scan;

	memset(&scan, 0, sizeof(scan));
	switch (codec_msgpack_scan(&scan, buf, len, len)) {
	case CODEC_SCAN_DONE:
		return 1;
	case CODEC_SCAN_MORE:
		set_error(err, errlen, "truncated msgpack (%zu bytes)", len);
		return 0;
	case CODEC_SCAN_TOO_LARGE:
		set_error(err, errlen, "truncated msgpack: the header at byte "
		    "%zu announces more than the %zu bytes hold", scan.off,
		    len);
		return 0;
	case CODEC_SCAN_TOO_DEEP:
		set_error(err, errlen, "msgpack nested deeper than %d levels",
		    CODEC_DEPTH_MAX);
		return 0;
	case CODEC_SCAN_INVALID:
	default:
		set_error(err, errlen, "neither JSON nor valid msgpack");
		return 0;
	}
}

/*
 * Exactly one msgpack object must cover buf.  msgpack_unpack_next reports
 * SUCCESS with off short of len when bytes follow the object; those are
 * refused, since they are either a second request glued on or garbage.
 */
static enum codec_status
decode_msgpack(const char *buf, size_t len, int want_map, json_t **out,
    char *err, size_t errlen)
{
	msgpack_unpacked	 unpacked;
	msgpack_unpack_return	 ret;
	enum codec_status	 status = CODEC_MALFORMED;
	size_t			 off = 0;
	json_t			*v;

	/*
	 * One zone for every decode, cleared after each: msgpack_unpack_next
	 * would create and free an 8 KiB zone per request, and those large
	 * blocks make glibc consolidate its small free lists each time.
	 * Everything from the zone is copied into jansson values before the
	 * zone is cleared.  (Single-threaded, like the whole daemon.)
	 */
	if (!decode_zone_ready) {
		if (!msgpack_zone_init(&decode_zone, DECODE_ZONE_CHUNK)) {
			set_error(err, errlen, "out of memory");
			return CODEC_MALFORMED;
		}
		decode_zone_ready = 1;
	}
	if (!msgpack_bounded(buf, len, err, errlen))
		goto done;
	memset(&unpacked, 0, sizeof(unpacked));
	ret = msgpack_unpack(buf, len, &off, &decode_zone, &unpacked.data);
	switch (ret) {
	case MSGPACK_UNPACK_SUCCESS:
	case MSGPACK_UNPACK_EXTRA_BYTES:
		break;
	case MSGPACK_UNPACK_CONTINUE:
		set_error(err, errlen, "truncated msgpack (%zu bytes)", len);
		goto done;
	case MSGPACK_UNPACK_NOMEM_ERROR:
		/*
		 * msgpack-c says NOMEM both when its fixed stack of
		 * CODEC_DEPTH_MAX containers overflows and when a container
		 * announces more elements than can be allocated.
		 */
		set_error(err, errlen,
		    "msgpack nested deeper than %d levels or too large",
		    CODEC_DEPTH_MAX);
		goto done;
	case MSGPACK_UNPACK_PARSE_ERROR:
	default:
		set_error(err, errlen, "neither JSON nor valid msgpack");
		goto done;
	}
	if (off != len) {
		set_error(err, errlen,
		    "%zu trailing bytes after the msgpack value", len - off);
		goto done;
	}
	if (want_map && unpacked.data.type != MSGPACK_OBJECT_MAP) {
		set_error(err, errlen, "expected a map, got %s",
		    msgpack_type_noun(&unpacked.data));
		status = CODEC_NOT_MAP;
		goto done;
	}
	if ((v = from_msgpack(&unpacked.data, 1, err, errlen)) == NULL)
		goto done;
	*out = v;
	status = CODEC_OK;

done:
	msgpack_zone_clear(&decode_zone);
	return status;
}

/* The big-endian unsigned integer of n bytes at p. */
static uint64_t
read_be(const unsigned char *p, size_t n)
{
	uint64_t	 v = 0;

	while (n-- > 0)
		v = v << 8 | *p++;
	return v;
}

/*
 * What the first byte b of a msgpack header says: the header's length
 * (*hdr), and either the payload bytes that follow it or, for a container
 * (*kind 1 for an array, 2 for a map), the items it holds, two per map
 * entry (*n).  When the count or length is in the header, it is the
 * *lenbytes bytes after b, which the caller reads once they are there.
 * -1 for 0xc1.
 */
static int
msgpack_header(unsigned char b, size_t *hdr, size_t *lenbytes, uint64_t *n,
    int *kind)
{
	/* The fixed-size types 0xc0..0xdf, from 0xc0: header length, length
	 * field size, fixed payload, what the length counts (0 payload
	 * bytes, 1 array elements, 2 map entries). */
	static const struct {
		unsigned char	 hdr, lenbytes, payload, kind;
	} types[32] = {
		{ 1, 0, 0, 0 }, { 0, 0, 0, 0 }, { 1, 0, 0, 0 }, { 1, 0, 0, 0 },
		{ 2, 1, 0, 0 }, { 3, 2, 0, 0 }, { 5, 4, 0, 0 },	/* bin */
		{ 3, 1, 0, 0 }, { 4, 2, 0, 0 }, { 6, 4, 0, 0 },	/* ext */
		{ 1, 0, 4, 0 }, { 1, 0, 8, 0 },			/* float */
		{ 1, 0, 1, 0 }, { 1, 0, 2, 0 }, { 1, 0, 4, 0 }, { 1, 0, 8, 0 },
		{ 1, 0, 1, 0 }, { 1, 0, 2, 0 }, { 1, 0, 4, 0 }, { 1, 0, 8, 0 },
		{ 2, 0, 1, 0 }, { 2, 0, 2, 0 }, { 2, 0, 4, 0 }, { 2, 0, 8, 0 },
		{ 2, 0, 16, 0 },				/* fixext */
		{ 2, 1, 0, 0 }, { 3, 2, 0, 0 }, { 5, 4, 0, 0 },	/* str */
		{ 3, 2, 0, 1 }, { 5, 4, 0, 1 },			/* array */
		{ 3, 2, 0, 2 }, { 5, 4, 0, 2 },			/* map */
	};

	*lenbytes = 0;
	*n = 0;
	*kind = 0;
	*hdr = 1;
	if (b <= 0x7f || b >= 0xe0)
		return 0;			/* fixint */
	if (b <= 0x8f) {
		*n = (uint64_t)(b & 0x0f) * 2;	/* fixmap */
		*kind = 2;
	} else if (b <= 0x9f) {
		*n = b & 0x0f;			/* fixarray */
		*kind = 1;
	} else if (b <= 0xbf)
		*n = b & 0x1f;			/* fixstr */
	else {
		if (b == 0xc1)
			return -1;
		*hdr = types[b - 0xc0].hdr;
		*lenbytes = types[b - 0xc0].lenbytes;
		*n = types[b - 0xc0].payload;
		*kind = types[b - 0xc0].kind;
	}
	return 0;
}

enum codec_scan_status
codec_msgpack_scan(struct codec_scan *s, const void *buf, size_t len,
    size_t limit)
{
	const unsigned char	*p = buf;
	uint64_t		 n;
	size_t			 hdr, lenbytes, left;
	int			 kind;

	if (!s->begun) {
		s->begun = 1;
		s->off = 0;
		s->due = 1;		/* the value itself */
		s->depth = 0;
	}
	while (s->due > 0) {
		if (s->off >= len)
			return CODEC_SCAN_MORE;
		if (msgpack_header(p[s->off], &hdr, &lenbytes, &n, &kind) != 0)
			return CODEC_SCAN_INVALID;
		/* msgpack-c refuses any container, even an empty one, when its
		 * stack is full, and before reading its count. */
		if (kind != 0 && s->depth >= CODEC_SCAN_DEPTH)
			return CODEC_SCAN_TOO_DEEP;
		if (len - s->off < hdr)
			return CODEC_SCAN_MORE;	/* the length is not here yet */
		if (lenbytes > 0)
			n = read_be(p + s->off + 1, lenbytes) *
			    (kind == 2 ? 2 : 1);
		/* This item is begun; what it holds is due, or its payload
		 * must be there, along with a byte for each item still due. */
		if (limit < s->off + hdr)
			return CODEC_SCAN_TOO_LARGE;
		left = limit - s->off - hdr;
		if (s->due - 1 > left || n > left - (s->due - 1))
			return CODEC_SCAN_TOO_LARGE;
		s->off += hdr;
		s->due--;
		if (s->depth > 0)
			s->left[s->depth - 1]--;
		if (kind != 0 && n > 0) {
			s->left[s->depth++] = n;
			s->due += n;
			continue;
		}
		if (kind == 0)
			s->off += (size_t)n;
		/* The item is whole: so is every container it finished. */
		while (s->depth > 0 && s->left[s->depth - 1] == 0)
			s->depth--;
	}
	return s->off <= len ? CODEC_SCAN_DONE : CODEC_SCAN_MORE;
}

static enum codec_status
decode(const void *buf, size_t len, int want_map, json_t **out, char *err,
    size_t errlen)
{
	const char	*p = buf;

	*out = NULL;
	if (len == 0) {
		set_error(err, errlen, "empty input");
		return CODEC_MALFORMED;
	}
	/* SPEC §4.1: the first byte alone tells the formats apart.  0x7b is
	 * a msgpack fixint, but a request that is a bare integer is invalid
	 * anyway, so nothing valid is lost. */
	if (p[0] == '{')
		return decode_json(p, len, want_map, out, err, errlen);
	return decode_msgpack(p, len, want_map, out, err, errlen);
}

enum codec_status
codec_decode(const void *buf, size_t len, json_t **out, char *err,
    size_t errlen)
{
	return decode(buf, len, 1, out, err, errlen);
}

enum codec_status
codec_decode_any(const void *buf, size_t len, json_t **out, char *err,
    size_t errlen)
{
	return decode(buf, len, 0, out, err, errlen);
}

/*
 * Packs v; returns 0, or -1 when the buffer could not grow or v is not
 * encodable (too deep, which only a reference cycle can be).  Strings go out
 * with their full length, so a NUL inside one survives.
 */
static int
pack_value(msgpack_packer *pk, const json_t *v, int depth)
{
	json_t		*child;
	size_t		 i;

	if (depth > CODEC_ENCODE_DEPTH_MAX)
		return -1;

	switch (json_typeof(v)) {
	case JSON_NULL:
		return msgpack_pack_nil(pk);
	case JSON_TRUE:
		return msgpack_pack_true(pk);
	case JSON_FALSE:
		return msgpack_pack_false(pk);
	case JSON_INTEGER:
		/* msgpack_pack_int64 picks the shortest encoding itself. */
		return msgpack_pack_int64(pk, (int64_t)json_integer_value(v));
	case JSON_REAL:
		return msgpack_pack_double(pk, json_real_value(v));
	case JSON_STRING:
		if (msgpack_pack_str(pk, json_string_length(v)) != 0)
			return -1;
		return msgpack_pack_str_body(pk, json_string_value(v),
		    json_string_length(v));
	case JSON_ARRAY:
		if (msgpack_pack_array(pk, json_array_size(v)) != 0)
			return -1;
		json_array_foreach(v, i, child)
			if (pack_value(pk, child, depth + 1) != 0)
				return -1;
		return 0;
	case JSON_OBJECT:
		if (msgpack_pack_map(pk, json_object_size(v)) != 0)
			return -1;
		return pack_members(pk, v, depth);
	}
	return -1;
}

/* An object's members, after its map header. */
static int
pack_members(msgpack_packer *pk, const json_t *v, int depth)
{
	const char	*key;
	void		*iter;
	size_t		 keylen;

	/* Iteration is in insertion order, so key order is kept. */
	for (iter = json_object_iter((json_t *)v); iter != NULL;
	    iter = json_object_iter_next((json_t *)v, iter)) {
		key = json_object_iter_key(iter);
		keylen = json_object_iter_key_len(iter);
		if (msgpack_pack_str(pk, keylen) != 0 ||
		    msgpack_pack_str_body(pk, key, keylen) != 0 ||
		    pack_value(pk, json_object_iter_value(iter),
		    depth + 1) != 0)
			return -1;
	}
	return 0;
}

/*
 * 1 when every key in v is UTF-8 without a NUL, so that JSON text of v
 * decodes again.  jansson checks string values when encoding but not keys
 * (they were checked when set, and msgpack keys are set with _nocheck): it
 * writes a key that is not UTF-8 as a broken string ({":1}) instead of
 * failing, and a NUL in a key as \u0000, which its parser refuses.  The
 * depth bound is the encoder's own.
 */
static int
json_keys_ok(const json_t *v, int depth)
{
	const char	*key;
	json_t		*child;
	void		*iter;
	size_t		 i, keylen;

	if (!json_is_object(v) && !json_is_array(v))
		return 1;
	if (depth > CODEC_ENCODE_DEPTH_MAX)
		return 0;
	if (json_is_array(v)) {
		json_array_foreach(v, i, child)
			if (!json_keys_ok(child, depth + 1))
				return 0;
		return 1;
	}
	for (iter = json_object_iter((json_t *)v); iter != NULL;
	    iter = json_object_iter_next((json_t *)v, iter)) {
		key = json_object_iter_key(iter);
		keylen = json_object_iter_key_len(iter);
		if (memchr(key, '\0', keylen) != NULL ||
		    !codec_utf8_valid(key, keylen) ||
		    !json_keys_ok(json_object_iter_value(iter), depth + 1))
			return 0;
	}
	return 1;
}

/* What encode_buf holds, as an exact-size copy for the caller. */
static int
encoded_copy(char **out, size_t *len)
{
	if ((*out = malloc(encode_buf.size ? encode_buf.size : 1)) == NULL)
		return -1;
	memcpy(*out, encode_buf.data, encode_buf.size);
	*len = encode_buf.size;
	return 0;
}

int
codec_encode(const json_t *v, enum results_format fmt, char **out, size_t *len)
{
	char		*text;

	*out = NULL;
	*len = 0;
	if (v == NULL)
		return -1;

	if (fmt == FORMAT_JSON) {
		/* Fails on strings and keys that are not UTF-8, and on keys
		 * with a NUL: JSON text (ours) cannot carry them. */
		if (!json_keys_ok(v, 1))
			return -1;
		text = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
		if (text == NULL)
			return -1;
		*out = text;
		*len = strlen(text);	/* a NUL in a string is "\u0000" */
		return 0;
	}

	return codec_msgpack_packed(pack_root, v, out, len);
}

/* A whole value for codec_msgpack_packed. */
static int
pack_root(msgpack_packer *pk, const void *v)
{
	return pack_value(pk, v, 1);
}

int
codec_msgpack_packed(int (*pack)(struct msgpack_packer *, const void *),
    const void *arg, char **out, size_t *len)
{
	msgpack_packer	 pk;

	*out = NULL;
	*len = 0;
	/* One buffer for every encode (it grows to the largest message and
	 * stays); the caller gets an exact-size copy. */
	msgpack_sbuffer_clear(&encode_buf);
	msgpack_packer_init(&pk, &encode_buf, msgpack_sbuffer_write);
	if (pack(&pk, arg) != 0) {
		msgpack_sbuffer_clear(&encode_buf);
		return -1;
	}
	return encoded_copy(out, len);
}

/* Bytes for pack_bin. */
struct codec_bytes {
	const void	*buf;
	size_t		 len;
};

static int
pack_bin(msgpack_packer *pk, const void *arg)
{
	const struct codec_bytes *b = arg;

	if (msgpack_pack_bin(pk, b->len) != 0)
		return -1;
	return msgpack_pack_bin_body(pk, b->buf, b->len);
}

int
codec_encode_bin(const void *buf, size_t len, char **out, size_t *outlen)
{
	struct codec_bytes b = { buf, len };

	return codec_msgpack_packed(pack_bin, &b, out, outlen);
}

int
codec_text_valid(const json_t *v)
{
	const char	*key;
	json_t		*child;
	void		*iter;
	size_t		 i;

	switch (json_typeof(v)) {
	case JSON_STRING:
		return codec_utf8_valid(json_string_value(v),
		    json_string_length(v));
	case JSON_ARRAY:
		json_array_foreach(v, i, child)
			if (!codec_text_valid(child))
				return 0;
		return 1;
	case JSON_OBJECT:
		for (iter = json_object_iter((json_t *)v); iter != NULL;
		    iter = json_object_iter_next((json_t *)v, iter)) {
			key = json_object_iter_key(iter);
			if (!codec_utf8_valid(key,
			    json_object_iter_key_len(iter)) ||
			    !codec_text_valid(json_object_iter_value(iter)))
				return 0;
		}
		return 1;
	default:
		return 1;
	}
}

/*
 * The object v with one more member, key, whose value is enc: bytes that
 * codec_encode made in the same format.  Two well-formed encodings are
 * joined, nothing is escaped here: key must be plain ASCII (letters, '_'),
 * and v must not have it already.  The user record is encoded once this
 * way, for its own key and inside the result (docs/performance.md).
 */
int
codec_encode_with(const json_t *v, const char *key, const char *enc,
    size_t enclen, enum results_format fmt, char **out, size_t *len)
{
	static const char plain[] = "abcdefghijklmnopqrstuvwxyz"
	    "ABCDEFGHIJKLMNOPQRSTUVWXYZ_";
	msgpack_packer	 pk;
	char		*text, *p;
	size_t		 tlen, klen = strlen(key);

	*out = NULL;
	*len = 0;
	if (!json_is_object(v) || klen == 0 || strspn(key, plain) != klen ||
	    json_object_get(v, key) != NULL || enc == NULL || enclen == 0)
		return -1;

	if (fmt == FORMAT_JSON) {
		/* {...} becomes {...,"key":enc} */
		if (codec_encode(v, fmt, &text, &tlen) != 0)
			return -1;
		if ((p = realloc(text, tlen + klen + enclen + 5)) == NULL) {
			free(text);
			return -1;
		}
		*len = tlen - 1;	/* over the closing brace */
		if (json_object_size(v) > 0)
			p[(*len)++] = ',';
		p[(*len)++] = '"';
		memcpy(p + *len, key, klen);
		*len += klen;
		p[(*len)++] = '"';
		p[(*len)++] = ':';
		memcpy(p + *len, enc, enclen);
		*len += enclen;
		p[(*len)++] = '}';
		p[*len] = '\0';
		*out = p;
		return 0;
	}

	msgpack_sbuffer_clear(&encode_buf);
	msgpack_packer_init(&pk, &encode_buf, msgpack_sbuffer_write);
	if (msgpack_pack_map(&pk, json_object_size(v) + 1) != 0 ||
	    pack_members(&pk, v, 1) != 0 ||
	    msgpack_pack_str(&pk, klen) != 0 ||
	    msgpack_pack_str_body(&pk, key, klen) != 0 ||
	    msgpack_sbuffer_write(&encode_buf, enc, enclen) != 0) {
		msgpack_sbuffer_clear(&encode_buf);
		return -1;
	}
	return encoded_copy(out, len);
}

/*
 * RFC 3629 §4, the well-formed byte sequences:
 *
 *   00..7F
 *   C2..DF 80..BF
 *   E0     A0..BF 80..BF	(E0 80..9F would be an overlong form)
 *   E1..EC 80..BF 80..BF
 *   ED     80..9F 80..BF	(ED A0..BF would be a UTF-16 surrogate)
 *   EE..EF 80..BF 80..BF
 *   F0     90..BF 80..BF 80..BF	(F0 80..8F: overlong)
 *   F1..F3 80..BF 80..BF 80..BF
 *   F4     80..8F 80..BF 80..BF	(F4 90..: above U+10FFFF)
 *
 * C0, C1 and F5..FF never appear.  Only the second byte has a lead-specific
 * range; the others are plain continuation bytes.  U+0000 is valid UTF-8:
 * callers that cannot hold a NUL check for it themselves.
 */
int
codec_utf8_valid(const char *s, size_t len)
{
	const unsigned char	*p = (const unsigned char *)s;
	const unsigned char	*end = p + len;
	unsigned char		 lo, hi;
	size_t			 more, i;

	while (p < end) {
		/* ASCII, nearly all of what is checked: eight bytes at once
		 * (a third of the per-byte cost on Twilio's answers). */
		if (end - p >= 8) {
			uint64_t w;

			memcpy(&w, p, sizeof(w));
			if ((w & UINT64_C(0x8080808080808080)) == 0) {
				p += 8;
				continue;
			}
		}
		if (*p < 0x80) {
			p++;
			continue;
		}
		lo = 0x80;
		hi = 0xbf;
		if (*p >= 0xc2 && *p <= 0xdf)
			more = 1;
		else if (*p >= 0xe0 && *p <= 0xef) {
			more = 2;
			if (*p == 0xe0)
				lo = 0xa0;
			else if (*p == 0xed)
				hi = 0x9f;
		} else if (*p >= 0xf0 && *p <= 0xf4) {
			more = 3;
			if (*p == 0xf0)
				lo = 0x90;
			else if (*p == 0xf4)
				hi = 0x8f;
		} else
			return 0;
		if ((size_t)(end - p) <= more)
			return 0;
		if (p[1] < lo || p[1] > hi)
			return 0;
		for (i = 2; i <= more; i++)
			if (p[i] < 0x80 || p[i] > 0xbf)
				return 0;
		p += more + 1;
	}
	return 1;
}

/* Every code point has exactly one byte that is not a continuation byte. */
size_t
codec_utf8_length(const char *s, size_t len)
{
	size_t	 i, n = 0;

	for (i = 0; i < len; i++)
		if (((unsigned char)s[i] & 0xc0) != 0x80)
			n++;
	return n;
}

/*
 * Keeps whole, valid UTF-8 sequences that are not controls; every other
 * byte becomes '?'.  C1 controls (U+0080..U+009F, C2 80..C2 9F) go too:
 * some terminals act on them.  Never grows the text, so it works in place.
 */
void
codec_sanitize_text(char *s)
{
	unsigned char	*p = (unsigned char *)s;
	size_t		 n;

	while (*p != '\0') {
		if (*p < 0x80) {
			if (*p < 0x20 || *p == 0x7f)
				*p = '?';
			p++;
			continue;
		}
		if (*p >= 0xc2 && *p <= 0xdf)
			n = 2;
		else if (*p >= 0xe0 && *p <= 0xef)
			n = 3;
		else if (*p >= 0xf0 && *p <= 0xf4)
			n = 4;
		else
			n = 0;
		/*
		 * strnlen: a sequence cut by the terminator is not read past.
		 */
		if (n != 0 && strnlen((char *)p, n) == n &&
		    codec_utf8_valid((char *)p, n) &&
		    !(p[0] == 0xc2 && p[1] <= 0x9f)) {
			p += n;
			continue;
		}
		*p++ = '?';
	}
}
