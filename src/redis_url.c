/*
 * redis_url.c: the [redis] url key, read as ioredis and redis-client read
 * a Redis URL:
 *
 *	redis://[user[:password]@]host[:port][/db]
 *	rediss://...			the same over TLS
 *	unix://[user[:password]@]/path[?db=N]
 *
 * db may also be given as ?db=N after any of them.  The user name and the
 * password are percent-decoded (a '@', ':', '/', '?' or '#' in them must be
 * written %40, %3A, %2F, %3F, %23); an IPv6 address is written in brackets.
 * "user@" alone is a user name, as in ioredis, redis-py and go-redis (old
 * redis-rb read it as a password; ":password@" says that unambiguously).
 *
 * Pure: no I/O.  Error messages never quote the URL or a part of it, since
 * it may hold a password; redis_url_show writes it with "***" in place of
 * the password, for logs.
 */
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/un.h>

#include "usergate.h"

#define URL_MAX		4096
#define HOST_MAX	255
#define DB_MAX		65535		/* as the [redis] db key */

static int	 url_fail(char *, size_t, const char *, ...)
		    __attribute__((format(printf, 3, 4)));
static int	 hex_value(int);
static char	*percent_decode(const char *, size_t, int *);
static int	 parse_number(const char *, size_t, long, long, long *);
static int	 parse_userinfo(const char *, size_t, struct redis_url *,
		    char *, size_t);
static int	 parse_host(const char *, size_t, struct redis_url *, char *,
		    size_t);
static int	 parse_path(const char *, size_t, struct redis_url *, char *,
		    size_t);
static int	 parse_query(const char *, struct redis_url *, char *,
		    size_t);

static int
url_fail(char *err, size_t errlen, const char *fmt, ...)
{
	va_list	 ap;

	if (errlen > 0) {
		va_start(ap, fmt);
		(void)vsnprintf(err, errlen, fmt, ap);
		va_end(ap);
	}
	return -1;
}

static int
hex_value(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/*
 * A malloc'd copy of s[0..len) with %XX decoded; NULL with *bad set when
 * an escape is not two hex digits or decodes to a NUL byte (which would
 * silently cut a password), NULL with *bad clear when out of memory.
 */
static char *
percent_decode(const char *s, size_t len, int *bad)
{
	char	*out, *o;
	size_t	 i;
	int	 hi, lo;

	*bad = 0;
	if ((out = malloc(len + 1)) == NULL)
		return NULL;
	for (i = 0, o = out; i < len; i++) {
		if (s[i] != '%') {
			*o++ = s[i];
			continue;
		}
		if (len - i < 3 ||
		    (hi = hex_value((unsigned char)s[i + 1])) == -1 ||
		    (lo = hex_value((unsigned char)s[i + 2])) == -1 ||
		    (hi == 0 && lo == 0)) {
			*bad = 1;
			break;
		}
		*o++ = (char)(hi * 16 + lo);
		i += 2;
	}
	if (*bad) {
		explicit_bzero(out, len + 1);
		free(out);
		return NULL;
	}
	*o = '\0';
	return out;
}

/* Decimal digits only, min..max; an empty string is no number. */
static int
parse_number(const char *s, size_t len, long min, long max, long *out)
{
	long	 v = 0;
	size_t	 i;

	if (len == 0 || len > 10)
		return -1;
	for (i = 0; i < len; i++) {
		if (!isdigit((unsigned char)s[i]))
			return -1;
		v = v * 10 + (s[i] - '0');
	}
	if (v < min || v > max)
		return -1;
	*out = v;
	return 0;
}

/*
 * "user", "user:password", ":password" or "user:" (an empty password is
 * no password).  The first ':' separates them: a ':' in a user name must
 * be encoded, one in a password need not be.
 */
static int
parse_userinfo(const char *s, size_t len, struct redis_url *u, char *err,
    size_t errlen)
{
	const char	*colon = memchr(s, ':', len);
	size_t		 ulen = colon != NULL ? (size_t)(colon - s) : len;
	int		 bad;

	if (ulen > 0 && (u->username = percent_decode(s, ulen, &bad)) ==
	    NULL)
		return url_fail(err, errlen, bad ? "bad percent-encoding in "
		    "the user name (expected %%XX with two hex digits, not "
		    "%%00)" : "out of memory");
	if (colon == NULL || colon + 1 == s + len)
		return 0;
	if ((u->password = percent_decode(colon + 1, len - ulen - 1,
	    &bad)) == NULL)
		return url_fail(err, errlen, bad ? "bad percent-encoding in "
		    "the password (expected %%XX with two hex digits, not "
		    "%%00)" : "out of memory");
	return 0;
}

/* host[:port], [v6]:port; for redis:// and rediss:// only. */
static int
parse_host(const char *s, size_t len, struct redis_url *u, char *err,
    size_t errlen)
{
	const char	*host = s, *port = NULL, *end = s + len, *p;
	size_t		 hlen;

	if (len > 0 && s[0] == '[') {
		if ((p = memchr(s, ']', len)) == NULL)
			return url_fail(err, errlen, "an IPv6 address opened "
			    "with '[' is not closed with ']'");
		host = s + 1;
		hlen = (size_t)(p - host);
		if (hlen == 0 || strspn(host, "0123456789abcdefABCDEF:.") <
		    hlen || memchr(host, ':', hlen) == NULL)
			return url_fail(err, errlen, "expected an IPv6 "
			    "address between '[' and ']'");
		if (p + 1 < end && p[1] != ':')
			return url_fail(err, errlen, "expected ':' and a port "
			    "after the IPv6 address in brackets");
		if (p + 1 < end)
			port = p + 2;
	} else {
		if ((p = memrchr(s, ':', len)) != NULL)
			port = p + 1;
		hlen = p != NULL ? (size_t)(p - s) : len;
		if (hlen == 0)
			return url_fail(err, errlen, "no host (expected "
			    "redis://host[:port][/db])");
		for (p = host; p < host + hlen; p++)
			if (!isalnum((unsigned char)*p) && *p != '.' &&
			    *p != '-' && *p != '_')
				return url_fail(err, errlen, "the host holds "
				    "a character other than letters, digits, "
				    "'.', '-' and '_' (an IPv6 address goes in "
				    "brackets; a '@' or '/' in the password "
				    "must be percent-encoded)");
	}
	if (hlen > HOST_MAX)
		return url_fail(err, errlen, "the host is longer than %d "
		    "bytes", HOST_MAX);
	/* "host:" is the default port, as for URL parsers. */
	u->port = 6379;
	if (port != NULL && port < end &&
	    parse_number(port, (size_t)(end - port), 1, 65535, &u->port) == -1)
		return url_fail(err, errlen, "the port is not a number from 1 "
		    "to 65535");
	if ((u->host = strndup(host, hlen)) == NULL)
		return url_fail(err, errlen, "out of memory");
	return 0;
}

/* "/db" for redis:// and rediss://, "/path" of the socket for unix://. */
static int
parse_path(const char *s, size_t len, struct redis_url *u, char *err,
    size_t errlen)
{
	int	 bad;

	if (u->host == NULL) {		/* only unix:// has no host */
		if (len == 0 || s[0] != '/')
			return url_fail(err, errlen, "no socket path (expected "
			    "unix:///path/to/redis.sock, three slashes)");
		if ((u->path = percent_decode(s, len, &bad)) == NULL)
			return url_fail(err, errlen, bad ? "bad percent-"
			    "encoding in the socket path" : "out of memory");
		if (strlen(u->path) >=
		    sizeof(((struct sockaddr_un *)NULL)->sun_path))
			return url_fail(err, errlen, "the socket path is "
			    "longer than 107 bytes (the limit of a Unix "
			    "socket)");
		return 0;
	}
	if (len <= 1)
		return 0;	/* "" or "/": no db */
	if (parse_number(s + 1, len - 1, 0, DB_MAX, &u->db) == 0)
		return 0;
	return url_fail(err, errlen, "expected /DB after the host, a database "
	    "number from 0 to %d", DB_MAX);
}

/* name=value&...; only db is understood, as in ioredis' and redis-client's
 * URLs (other options have keys of their own). */
static int
parse_query(const char *s, struct redis_url *u, char *err, size_t errlen)
{
	const char	*end;
	size_t		 len;
	long		 db;

	for (; *s != '\0'; s = *end != '\0' ? end + 1 : end) {
		end = s + strcspn(s, "&");
		len = (size_t)(end - s);
		if (len == 0)
			continue;
		if (len < 3 || strncmp(s, "db=", 3) != 0)
			return url_fail(err, errlen, "unknown query parameter "
			    "(only ?db=N is understood)");
		if (parse_number(s + 3, len - 3, 0, DB_MAX, &db) == -1)
			return url_fail(err, errlen, "?db= is not a database "
			    "number from 0 to %d", DB_MAX);
		if (u->db != -1 && u->db != db)
			return url_fail(err, errlen, "two different databases "
			    "(in the path and in ?db=)");
		u->db = db;
	}
	return 0;
}

int
redis_url_parse(const char *url, struct redis_url *u, char *err,
    size_t errlen)
{
	const char	*rest, *sep, *query, *hier_end, *auth_end, *at, *p;
	size_t		 slen;
	int		 unix_scheme = 0;

	memset(u, 0, sizeof(*u));
	u->db = -1;
	if (errlen > 0)
		err[0] = '\0';
	if (strlen(url) > URL_MAX)
		return url_fail(err, errlen, "longer than %d bytes", URL_MAX);
	for (p = url; *p != '\0'; p++)
		if ((unsigned char)*p <= ' ' || *p == 0x7f)
			return url_fail(err, errlen, "holds a space or a "
			    "control character (percent-encode it)");
	if ((sep = strstr(url, "://")) == NULL)
		return url_fail(err, errlen, "expected redis://, rediss:// or "
		    "unix:// at the start");
	slen = (size_t)(sep - url);
	if (slen == 6 && strncasecmp(url, "rediss", 6) == 0)
		u->tls = 1;
	else if (slen == 4 && strncasecmp(url, "unix", 4) == 0)
		unix_scheme = 1;
	else if (slen != 5 || strncasecmp(url, "redis", 5) != 0)
		return url_fail(err, errlen, "unknown scheme (expected "
		    "redis://, rediss:// or unix://)");
	rest = sep + 3;
	if (strchr(rest, '#') != NULL)
		return url_fail(err, errlen, "holds a '#' (a '#' in the user "
		    "name or password must be percent-encoded as %%23)");
	query = strchr(rest, '?');
	hier_end = query != NULL ? query : rest + strlen(rest);
	if ((auth_end = memchr(rest, '/', (size_t)(hier_end - rest))) == NULL)
		auth_end = hier_end;
	/* The last '@': a password may hold an unencoded '@'. */
	for (at = NULL, p = rest; p < auth_end; p++)
		if (*p == '@')
			at = p;
	if (at != NULL &&
	    parse_userinfo(rest, (size_t)(at - rest), u, err, errlen) == -1)
		goto fail;
	/* "redis://user:pa/ss@host": the '/' ended the user info. */
	if (!unix_scheme && at == NULL &&
	    memchr(auth_end, '@', (size_t)(hier_end - auth_end)) != NULL) {
		url_fail(err, errlen, "a '/' in the user name or password must "
		    "be percent-encoded (%%2F)");
		goto fail;
	}
	p = at != NULL ? at + 1 : rest;
	if (unix_scheme) {
		if (p != auth_end) {
			url_fail(err, errlen, "a unix:// URL has no host "
			    "(expected unix:///path/to/redis.sock, three "
			    "slashes)");
			goto fail;
		}
	} else if (parse_host(p, (size_t)(auth_end - p), u, err, errlen) ==
	    -1)
		goto fail;
	if (parse_path(auth_end, (size_t)(hier_end - auth_end), u, err,
	    errlen) == -1 ||
	    (query != NULL && parse_query(query + 1, u, err, errlen) == -1))
		goto fail;
	return 0;
fail:
	redis_url_free(u);
	return -1;
}

void
redis_url_free(struct redis_url *u)
{
	free(u->host);
	free(u->path);
	free(u->username);
	if (u->password != NULL) {
		explicit_bzero(u->password, strlen(u->password));
		free(u->password);
	}
	memset(u, 0, sizeof(*u));
	u->db = -1;
}

/* Appends s to buf, percent-encoding what a URL's user name may not hold. */
static size_t
append_encoded(char *buf, size_t size, size_t n, const char *s)
{
	static const char hex[] = "0123456789ABCDEF";

	for (; *s != '\0'; s++) {
		unsigned char c = (unsigned char)*s;

		if (isalnum(c) || strchr("-._~!$&'()*+,;=", c) != NULL)
			n += (size_t)snprintf(buf + (n < size ? n : size),
			    n < size ? size - n : 0, "%c", c);
		else
			n += (size_t)snprintf(buf + (n < size ? n : size),
			    n < size ? size - n : 0, "%%%c%c", hex[c >> 4],
			    hex[c & 15]);
	}
	return n;
}

void
redis_url_show(const struct redis_url *u, int password, char *buf,
    size_t size)
{
	size_t	 n;

#define APPEND(...)	(n += (size_t)snprintf(buf + (n < size ? n : size), \
			    n < size ? size - n : 0, __VA_ARGS__))
	if (size == 0)
		return;
	buf[0] = '\0';
	n = 0;
	APPEND("%s://", u->path != NULL ? "unix" : u->tls ? "rediss" :
	    "redis");
	if (u->username != NULL)
		n = append_encoded(buf, size, n, u->username);
	if (password)
		APPEND(":***");
	if (u->username != NULL || password)
		APPEND("@");
	if (u->path != NULL) {
		APPEND("%s", u->path);
		if (u->db >= 0)
			APPEND("?db=%ld", u->db);
	} else {
		APPEND(strchr(u->host, ':') != NULL ? "[%s]:%ld" : "%s:%ld",
		    u->host, u->port);
		if (u->db >= 0)
			APPEND("/%ld", u->db);
	}
#undef APPEND
}
