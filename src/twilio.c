/*
 * twilio.c: Twilio Conversations semantics that do not need the network --
 * the API base URL after edge/region, resource URLs, form bodies, and what
 * an answer means for the request (SPEC §5.3).
 *
 * Everything here is pure: no I/O, no state.  Percent-encoding is libcurl's
 * curl_easy_escape(), which escapes every byte outside RFC 3986's unreserved
 * set (ALPHA DIGIT - . _ ~), space as %20; nothing here encodes by hand.
 * (libevent's evhttp_uriencode does the same at 2.2 times the cost: an
 * evbuffer_add per byte; docs/performance.md.)
 */
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>
#include <event2/http.h>

#include "usergate.h"

/* Edge without region means this region, as in every Twilio helper library. */
#define TWILIO_DEFAULT_REGION	"us1"
#define TWILIO_DOMAIN		"twilio.com"
/* product.edge.region.twilio.com: the most labels a Twilio host can have. */
#define TWILIO_HOST_MAX_LABELS	5
#define DNS_LABEL_MAX		63
/* After a SID's two-letter prefix. */
#define SID_HEX_DIGITS		32

static char	*join(const char *, ...);
static int	 is_set(const char *);
static int	 is_dns_label(const char *);
static char	*path_segment(const char *);
static char	*apply_edge_region(const char *, const char *, const char *,
		    char *, size_t);

/*
 * Returns a malloc'd concatenation of its arguments, which end with NULL.
 * Used instead of asprintf so that an allocation failure is a plain NULL.
 */
static char *
join(const char *first, ...)
{
	va_list		 ap;
	const char	*s;
	size_t		 len = 0, n;
	char		*out, *p;

	va_start(ap, first);
	for (s = first; s != NULL; s = va_arg(ap, const char *))
		len += strlen(s);
	va_end(ap);

	if ((out = malloc(len + 1)) == NULL)
		return NULL;
	p = out;
	va_start(ap, first);
	for (s = first; s != NULL; s = va_arg(ap, const char *)) {
		n = strlen(s);
		memcpy(p, s, n);
		p += n;
	}
	va_end(ap);
	*p = '\0';
	return out;
}

/* The config leaves an unset key as "" or NULL; both mean "not set". */
static int
is_set(const char *s)
{
	return s != NULL && *s != '\0';
}

/*
 * An edge or region becomes one label of a host name, so it must be one:
 * letters, digits and '-', 1 to 63 characters.  Anything else would build a
 * host that resolves somewhere unexpected or not at all.
 */
static int
is_dns_label(const char *s)
{
	size_t	 n;

	for (n = 0; s[n] != '\0'; n++)
		if (!isalnum((unsigned char)s[n]) && s[n] != '-')
			return 0;
	return n >= 1 && n <= DNS_LABEL_MAX;
}

/* s percent-encoded (malloc'd, for free()). */
static char *
escape(const char *s)
{
	char *e, *copy;

	/* The handle is not used (libcurl >= 7.82). */
	if ((e = curl_easy_escape(NULL, s, (int)strlen(s))) == NULL)
		return NULL;
	copy = strdup(e);
	curl_free(e);
	return copy;
}

/*
 * s percent-encoded as exactly one path segment (malloc'd).  '.' is
 * unreserved, so the encoder leaves "." and ".." as they are -- and
 * such a segment is a dot-segment that libcurl (and any proxy) removes,
 * addressing /v1/Users or /v1 instead of the user.  These two values are
 * spelled with the dots escaped; every other value, "..." included, is an
 * ordinary segment.  Space becomes %20: '+' means '+' in a path.
 */
static char *
path_segment(const char *s)
{
	if (strcmp(s, ".") == 0)
		return strdup("%2E");
	if (strcmp(s, "..") == 0)
		return strdup("%2E%2E");
	return escape(s);
}

/*
 * Cuts copy (of host, named in err) into its dot-separated labels, at most
 * TWILIO_HOST_MAX_LABELS, none empty: their number, or 0 with err set.
 */
static size_t
host_labels(char *copy, const char *host, const char **labels, char *err,
    size_t errlen)
{
	char	*p;
	size_t	 nlabels = 0, i;

	for (p = copy; p != NULL; ) {
		if (nlabels == TWILIO_HOST_MAX_LABELS) {
			snprintf(err, errlen, "host \"%s\" has more labels "
			    "than product.edge.region.twilio.com", host);
			return 0;
		}
		labels[nlabels++] = p;
		if ((p = strchr(p, '.')) != NULL)
			*p++ = '\0';
	}
	for (i = 0; i < nlabels; i++) {
		if (*labels[i] == '\0') {
			snprintf(err, errlen, "host \"%s\" has an empty label",
			    host);
			return 0;
		}
	}
	return nlabels;
}

/*
 * Rewrites host the way twilio-python's get_hostname and twilio-node's
 * getHostname do: the host is prefix[.edge][.region].twilio.com; an edge
 * or region already in the host is kept unless a new one is given; an edge
 * without any region gets region us1.  Returns the new host (malloc'd), or
 * NULL with err set.
 */
static char *
apply_edge_region(const char *host, const char *edge, const char *region,
    char *err, size_t errlen)
{
	const char	*labels[TWILIO_HOST_MAX_LABELS];
	const char	*host_edge = NULL, *host_region = NULL;
	char		*copy, *out;
	size_t		 nlabels, hostlen, suffixlen;

	if (is_set(edge) && !is_dns_label(edge)) {
		snprintf(err, errlen, "edge is not a host name label "
		    "(expected letters, digits, '-')");
		return NULL;
	}
	if (is_set(region) && !is_dns_label(region)) {
		snprintf(err, errlen, "region is not a host name label "
		    "(expected letters, digits, '-')");
		return NULL;
	}

	/* The host must be something.twilio.com: a bare "twilio.com" has no
	 * product label to keep. */
	hostlen = strlen(host);
	suffixlen = strlen("." TWILIO_DOMAIN);
	if (hostlen <= suffixlen ||
	    strcasecmp(host + hostlen - suffixlen, "." TWILIO_DOMAIN) != 0) {
		snprintf(err, errlen, "edge/region apply only to a twilio.com "
		    "host, not \"%s\"", host);
		return NULL;
	}

	if ((copy = strdup(host)) == NULL) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	if ((nlabels = host_labels(copy, host, labels, err, errlen)) == 0) {
		free(copy);
		return NULL;
	}

	/* labels: prefix [edge] [region] "twilio" "com" */
	if (nlabels == 4)
		host_region = labels[1];
	else if (nlabels == 5) {
		host_edge = labels[1];
		host_region = labels[2];
	}

	if (is_set(edge))
		host_edge = edge;
	if (is_set(region))
		host_region = region;
	else if (host_region == NULL && host_edge != NULL)
		host_region = TWILIO_DEFAULT_REGION;

	out = join(labels[0],
	    host_edge != NULL ? "." : "",
	    host_edge != NULL ? host_edge : "",
	    host_region != NULL ? "." : "",
	    host_region != NULL ? host_region : "",
	    ".", labels[nlabels - 2], ".", labels[nlabels - 1], (char *)NULL);
	free(copy);
	if (out == NULL)
		snprintf(err, errlen, "out of memory");
	return out;
}

/*
 * base_url is scheme://host[:port] with nothing after it but an optional
 * single "/": 0, or -1 with err naming what is wrong, since this message
 * is what an operator sees from "usergated -n"; none quotes the whole
 * base_url, whose user information or query could hold a secret (SPEC §2).
 */
static int
check_base_url(const struct evhttp_uri *uri, char *err, size_t errlen)
{
	const char	*scheme, *host, *path;

	scheme = evhttp_uri_get_scheme(uri);
	host = evhttp_uri_get_host(uri);
	path = evhttp_uri_get_path(uri);

	if (scheme == NULL || (strcasecmp(scheme, "http") != 0 &&
	    strcasecmp(scheme, "https") != 0)) {
		snprintf(err, errlen, "base_url must start with http:// or "
		    "https://");
		return -1;
	}
	if (evhttp_uri_get_userinfo(uri) != NULL) {
		snprintf(err, errlen, "base_url must not carry user "
		    "information; credentials go in api_key and "
		    "api_secret_file");
		return -1;
	}
	if (host == NULL || *host == '\0') {
		snprintf(err, errlen, "base_url has no host");
		return -1;
	}
	if (strchr(host, '%') != NULL) {
		snprintf(err, errlen, "base_url host \"%s\" must not be "
		    "percent-encoded", host);
		return -1;
	}
	if (evhttp_uri_get_port(uri) == 0) {
		snprintf(err, errlen, "base_url port 0 is not a valid port");
		return -1;
	}
	if (path != NULL && *path != '\0' && strcmp(path, "/") != 0) {
		snprintf(err, errlen, "base_url must not have a path "
		    "(\"%s\"): usergate adds the API paths", path);
		return -1;
	}
	if (evhttp_uri_get_query(uri) != NULL) {
		snprintf(err, errlen, "base_url must not have a query");
		return -1;
	}
	if (evhttp_uri_get_fragment(uri) != NULL) {
		snprintf(err, errlen, "base_url must not have a fragment");
		return -1;
	}
	return 0;
}

/*
 * The API base from base_url (check_base_url), with edge and region put
 * in its host.  The answer is rebuilt from the parsed parts, so it never
 * carries a trailing "/" and the resource paths can be appended as they
 * are.
 */
char *
twilio_api_base(const char *base_url, const char *edge, const char *region,
    char *err, size_t errlen)
{
	struct evhttp_uri *uri;
	const char	*scheme, *host;
	char		 portbuf[16];
	char		*newhost = NULL, *out = NULL;
	int		 port;

	if (!is_set(base_url)) {
		snprintf(err, errlen, "base_url is empty");
		return NULL;
	}
	if ((uri = evhttp_uri_parse_with_flags(base_url, 0)) == NULL) {
		snprintf(err, errlen, "base_url is not a valid URL "
		    "(expected http[s]://host[:port], port 1-65535)");
		return NULL;
	}
	if (check_base_url(uri, err, errlen) != 0)
		goto done;
	scheme = evhttp_uri_get_scheme(uri);
	host = evhttp_uri_get_host(uri);
	port = evhttp_uri_get_port(uri);

	if (is_set(edge) || is_set(region)) {
		if ((newhost = apply_edge_region(host, edge, region, err,
		    errlen)) == NULL)
			goto done;
		host = newhost;
	}

	portbuf[0] = '\0';
	if (port > 0)
		snprintf(portbuf, sizeof(portbuf), ":%d", port);
	out = join(strcasecmp(scheme, "https") == 0 ? "https" : "http", "://",
	    host, portbuf, (char *)NULL);
	if (out == NULL)
		snprintf(err, errlen, "out of memory");
done:
	free(newhost);
	evhttp_uri_free(uri);
	return out;
}

/*
 * POST /v1/Users creates in the account's default Conversation Service;
 * /v1/Services/{ChatServiceSid}/Users in the given one.  The SID is escaped
 * too: config checks its shape, but a URL is no place to trust that.
 */
char *
twilio_users_url(const char *api_base, const char *service_sid)
{
	char	*sid, *out;

	if (api_base == NULL)
		return NULL;
	if (!is_set(service_sid))
		return join(api_base, "/v1/Users", (char *)NULL);
	if ((sid = path_segment(service_sid)) == NULL)
		return NULL;
	out = join(api_base, "/v1/Services/", sid, "/Users", (char *)NULL);
	free(sid);
	return out;
}

/*
 * GET/POST .../Users/{Sid}, where Sid may also be the Identity (SPEC §5.2).
 * An Identity is often an e-mail address and may hold '/', '?', '#', '%'
 * or any UTF-8, so it is escaped as exactly one path segment.  An empty
 * sid would address the list resource instead of a user, so it is refused
 * (NULL).
 */
char *
twilio_user_url(const char *api_base, const char *service_sid, const char *sid)
{
	char	*users, *segment, *out;

	if (!is_set(sid))
		return NULL;
	if ((users = twilio_users_url(api_base, service_sid)) == NULL)
		return NULL;
	if ((segment = path_segment(sid)) == NULL) {
		free(users);
		return NULL;
	}
	out = join(users, "/", segment, (char *)NULL);
	free(segment);
	free(users);
	return out;
}

/*
 * The form body of a create (with_identity = 1) or an update
 * (with_identity = 0): only the parameters the request gave, in Twilio's
 * documented order.  Values are UTF-8 already (request.c checked) and are
 * escaped with space as '+', the application/x-www-form-urlencoded rule;
 * '+', '&' and '=' inside a value are escaped, so they cannot split it.
 * WebhookEnabled is the X-Twilio-Webhook-Enabled header, never a field.
 * Returns "" (malloc'd) when nothing is given, NULL only when out of memory.
 */
char *
twilio_form(const struct request *req, int with_identity)
{
	static const char *const names[] = {
		"Identity", "FriendlyName", "Attributes", "RoleSid",
	};
	const char	*values[sizeof(names) / sizeof(names[0])];
	char		*body, *value, *next;
	size_t		 i;

	if (req == NULL)
		return NULL;
	values[0] = with_identity ? req->identity : NULL;
	values[1] = req->friendly_name;
	values[2] = req->attributes;
	values[3] = req->role_sid;

	if ((body = strdup("")) == NULL)
		return NULL;
	for (i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		if (values[i] == NULL)
			continue;
		if ((value = escape(values[i])) == NULL) {
			free(body);
			return NULL;
		}
		next = join(body, *body != '\0' ? "&" : "", names[i], "=",
		    value, (char *)NULL);
		free(value);
		free(body);
		if ((body = next) == NULL)
			return NULL;
	}
	return body;
}

/*
 * What an answer means, straight from SPEC §5.3.  Rows are tried in order
 * and the first match wins, so the specific 409 rows sit above the general
 * 4xx row.  code 0 in a row matches any Twilio error code.
 */
static const struct classify_rule {
	long		 status_min, status_max;
	long		 code;
	enum twilio_outcome outcome;
} classify_rules[] = {
	/* §5.3: connect errors, timeouts, resets (no HTTP status) retry. */
	{   0,   0,     0, TWILIO_RETRY },
	/* §5.3: 201 -> created. */
	{ 201, 201,     0, TWILIO_CREATED },
	/* A fetch or an update answers 200. */
	{ 200, 200,     0, TWILIO_OK },
	/* §5.3: 409 with 50201 -> the user exists: fetch it. */
	{ 409, 409, 50201, TWILIO_EXISTS },
	/* §5.3: 409/50213 (a concurrent change of the resource) retries. */
	{ 409, 409, 50213, TWILIO_RETRY },
	/* §5.3: 429 retries whatever the code (20429, 50063, 50074, ...). */
	{ 429, 429,     0, TWILIO_RETRY },
	/* §5.3: 500/502/503/504 retry. */
	{ 500, 500,     0, TWILIO_RETRY },
	{ 502, 504,     0, TWILIO_RETRY },
	/* §5.3: 401/403 are about the credentials, not the request. */
	{ 401, 401,     0, TWILIO_AUTH },
	{ 403, 403,     0, TWILIO_AUTH },
	/* §5.3: other 4xx -> failed twilio_rejected (404, other 409s, ...). */
	{ 400, 499,     0, TWILIO_REJECTED },
	/*
	 * Our choice, not the SPEC's: other 5xx (501, 505, a proxy's 52x)
	 * retry too.  A 5xx says the fault is on the server's side, and a
	 * retry is bounded by max_attempts, so the worst case is a few wasted
	 * attempts before failed/retries_exhausted -- never a request
	 * rejected for a fault that was not its own.
	 */
	{ 501, 599,     0, TWILIO_RETRY },
	/* Other 2xx: success without a body we expect; the caller parses. */
	{ 202, 299,     0, TWILIO_OK },
	/*
	 * 3xx: usergate follows no redirects; a redirect from the API means
	 * base_url points at the wrong place, which retrying cannot fix.
	 */
	{ 300, 399,     0, TWILIO_REJECTED },
};

/*
 * Anything no row matches (1xx as a final status, < 0, >= 600) is not a
 * valid HTTP answer; it is treated like a transport failure and retried,
 * within max_attempts.
 */
enum twilio_outcome
twilio_classify(long status, long code)
{
	const struct classify_rule *r;
	size_t	 i;

	for (i = 0; i < sizeof(classify_rules) / sizeof(classify_rules[0]);
	    i++) {
		r = &classify_rules[i];
		if (status < r->status_min || status > r->status_max)
			continue;
		if (r->code != 0 && r->code != code)
			continue;
		return r->outcome;
	}
	return TWILIO_RETRY;
}

int
twilio_is_sid(const char *s, size_t len, const char *prefix)
{
	size_t	 i, plen = strlen(prefix);

	if (len != plen + SID_HEX_DIGITS || memcmp(s, prefix, plen) != 0)
		return 0;
	for (i = plen; i < len; i++)
		if (!((s[i] >= '0' && s[i] <= '9') ||
		    (s[i] >= 'a' && s[i] <= 'f') ||
		    (s[i] >= 'A' && s[i] <= 'F')))
			return 0;
	return 1;
}
