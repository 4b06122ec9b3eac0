/*
 * config.c: the configuration file (SPEC §2).
 *
 * One table, config_table[] below, lists every key once: its section,
 * name, type, default (as it would be written in the file), bounds, whether
 * a reload can change it, and where it lives in struct config.  Defaults,
 * parsing, range checks, the reload diff and the documentation check in
 * tests/unit/test_config.c are all driven by that table, so a key cannot be
 * added in one place and forgotten in another.
 *
 * Loading is fail-fast and names the culprit: every error carries the file,
 * the line and the key (or the environment variable) it came from.  Secrets
 * are read from files (or $CREDENTIALS_DIRECTORY, or TWILIO_* variables for
 * local runs); their values never reach a message, and they are wiped
 * before their memory is freed.
 */
/* asprintf(3) and explicit_bzero(3) are GNU/BSD extensions in glibc. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <event2/util.h>
#include <ini.h>

#include "usergate.h"

/* A secret longer than this is certainly not an API secret or a token. */
#define SECRET_MAX		4096
#define MESSAGE_MAX		512

#define RELOAD			1	/* takes effect on SIGHUP */
#define RESTART			0	/* needs a restart */

#define KEY_STRING(sec, name, def, reload, field) \
	{ sec, name, CONFIG_STRING, def, 0, 0, reload, \
	    offsetof(struct config, field) }
#define KEY_LONG(sec, name, def, min, max, reload, field) \
	{ sec, name, CONFIG_LONG, def, min, max, reload, \
	    offsetof(struct config, field) }
#define KEY_MODE(sec, name, def, reload, field) \
	{ sec, name, CONFIG_MODE, def, 0, 0777, reload, \
	    offsetof(struct config, field) }
#define KEY_ENUM(sec, name, def, count, reload, field) \
	{ sec, name, CONFIG_ENUM, def, 0, (count) - 1, reload, \
	    offsetof(struct config, field) }

/*
 * Every key of SPEC §2, in the SPEC's order, with the SPEC's defaults.
 * Bounds are what an operator could mean; anything outside is a typo.
 */
static const struct config_key config_table[] = {
	KEY_STRING("twilio", "base_url", "https://conversations.twilio.com",
	    RELOAD, base_url),
	KEY_STRING("twilio", "edge", "", RELOAD, edge),
	KEY_STRING("twilio", "region", "", RELOAD, region),
	KEY_STRING("twilio", "service_sid", "", RESTART, service_sid),
	KEY_STRING("twilio", "api_key", "", RELOAD, api_key),
	KEY_STRING("twilio", "api_secret_file", "", RELOAD, api_secret_file),
	KEY_STRING("twilio", "account_sid", "", RELOAD, account_sid),
	KEY_STRING("twilio", "auth_token_file", "", RELOAD, auth_token_file),
	KEY_STRING("twilio", "ca_file", "", RELOAD, ca_file),
	/* Up to 5 minutes to connect, an hour for one request. */
	KEY_LONG("twilio", "connect_timeout_ms", "5000", 1, 300000, RELOAD,
	    connect_timeout_ms),
	KEY_LONG("twilio", "request_timeout_ms", "30000", 1, 3600000, RELOAD,
	    request_timeout_ms),
	KEY_LONG("twilio", "max_inflight", "64", 1, 10000, RELOAD,
	    max_inflight),
	KEY_LONG("twilio", "rate_limit", "30", 0, 100000, RELOAD, rate_limit),
	KEY_LONG("twilio", "rate_window_s", "5", 1, 3600, RELOAD,
	    rate_window_s),
	KEY_ENUM("twilio", "on_exists", "fetch", 2, RELOAD, on_exists),

	KEY_LONG("retry", "max_attempts", "10", 1, 100, RELOAD, max_attempts),
	KEY_LONG("retry", "base_delay_ms", "200", 1, 3600000, RELOAD,
	    base_delay_ms),
	KEY_LONG("retry", "max_delay_ms", "30000", 1, 3600000, RELOAD,
	    max_delay_ms),

	/* url wins over host, port, unix_socket (derive_redis). */
	KEY_STRING("redis", "url", "", RESTART, redis_url_key),
	KEY_STRING("redis", "host", "127.0.0.1", RESTART, redis_host),
	KEY_LONG("redis", "port", "6379", 1, 65535, RESTART, redis_port),
	KEY_STRING("redis", "unix_socket", "", RESTART, redis_unix_socket),
	KEY_STRING("redis", "username", "", RESTART, redis_username),
	KEY_STRING("redis", "password_file", "", RESTART, redis_password_file),
	/* Redis' own ceiling is the "databases" setting, 16 by default. */
	KEY_LONG("redis", "db", "0", 0, 65535, RESTART, redis_db),
	KEY_STRING("redis", "prefix", "usergate:", RESTART, prefix),
	KEY_STRING("redis", "instance_id", "", RESTART, instance_id),
	/* Sentinel (issue 13): the primary is asked of these, not host. */
	KEY_STRING("redis", "sentinels", "", RESTART, redis_sentinels),
	KEY_STRING("redis", "master_name", "", RESTART, redis_master_name),
	KEY_STRING("redis", "sentinel_password_file", "", RESTART,
	    redis_sentinel_password_file),
	/* WAIT for this many replicas before calling Twilio and before a
	 * result counts as written; 0: off. */
	KEY_LONG("redis", "durable_replicas", "0", 0, 100, RESTART,
	    redis_durable_replicas),
	KEY_LONG("redis", "durable_timeout_ms", "1000", 1, 60000, RESTART,
	    redis_durable_timeout_ms),
	/* Read on every connect: a reload reconnects with the new ones. */
	KEY_STRING("redis", "tls_ca_file", "", RELOAD, redis_tls_ca_file),
	KEY_STRING("redis", "tls_cert_file", "", RELOAD, redis_tls_cert_file),
	KEY_STRING("redis", "tls_key_file", "", RELOAD, redis_tls_key_file),
	KEY_STRING("redis", "tls_server_name", "", RELOAD,
	    redis_tls_server_name),

	/* Up to a year: Redis expiries are happy with that. */
	KEY_LONG("dedup", "ttl_s", "86400", 1, 31536000, RELOAD, dedup_ttl_s),

	KEY_ENUM("results", "format", "msgpack", 2, RELOAD, format),
	KEY_LONG("results", "results_max", "100000", 1, 100000000, RELOAD,
	    results_max),
	KEY_LONG("results", "reply_ttl_s", "3600", 1, 31536000, RELOAD,
	    reply_ttl_s),
	/* Outside the default [redis] prefix "usergate:" ('-' is not ':'). */
	KEY_STRING("results", "reply_prefix", "usergate-reply:", RELOAD,
	    reply_prefix),
	KEY_LONG("results", "dead_max", "10000", 1, 100000000, RELOAD,
	    dead_max),

	KEY_STRING("socket", "path", "/run/usergate/usergate.sock", RESTART,
	    socket_path),
	KEY_MODE("socket", "mode", "0660", RESTART, socket_mode),
	/* A day at most: a client that waits longer is gone. */
	KEY_LONG("socket", "idle_timeout_s", "300", 1, 86400, RELOAD,
	    socket_idle_timeout_s),
	KEY_LONG("socket", "max_connections", "1000", 1, 1000000, RELOAD,
	    socket_max_connections),

	KEY_STRING("status", "path", "/run/usergate/status.sock", RESTART,
	    status_path),
	KEY_MODE("status", "mode", "0660", RESTART, status_mode),

	/* Empty: no HTTP endpoint (metrics.c). */
	KEY_STRING("metrics", "listen", "", RESTART, metrics_listen),

	KEY_ENUM("log", "level", "info", 4, RELOAD, log_level),
};
#define CONFIG_NKEYS	(sizeof(config_table) / sizeof(config_table[0]))

/*
 * The names of the CONFIG_ENUM keys' values; a name's index is the enum
 * value stored, so these lists follow the enums' order in usergate.h.
 */
struct config_choices {
	size_t		 offset;
	const char	*names[5];	/* NULL-terminated */
};
static const struct config_choices enum_choices[] = {
	{ offsetof(struct config, on_exists), { "fetch", "update", NULL } },
	{ offsetof(struct config, format), { "msgpack", "json", NULL } },
	{ offsetof(struct config, log_level),
	    { "error", "warning", "info", "debug", NULL } },
};
_Static_assert(ON_EXISTS_FETCH == 0 && ON_EXISTS_UPDATE == 1,
    "enum_choices follows enum on_exists");
_Static_assert(FORMAT_MSGPACK == 0 && FORMAT_JSON == 1,
    "enum_choices follows enum results_format");
_Static_assert(LOG_LEVEL_ERROR == 0 && LOG_LEVEL_DEBUG == 3,
    "enum_choices follows enum log_level");
/* Enum fields are stored through an int lvalue. */
_Static_assert(sizeof(enum on_exists) == sizeof(int) &&
    sizeof(enum results_format) == sizeof(int) &&
    sizeof(enum log_level) == sizeof(int), "enums are int-sized");

static int	 check_service_sid(const char *);
static int	 check_api_key(const char *);
static int	 check_account_sid(const char *);
static int	 check_not_empty(const char *);
static int	 check_prefix_list(const char *);
static int	 check_socket_path(const char *);
static int	 check_listen(const char *);

/* Checks of string values beyond their type; empty means "not set". */
struct config_rule {
	size_t		 offset;
	int		(*check)(const char *);
	const char	*expected;
};
static const struct config_rule string_rules[] = {
	{ offsetof(struct config, service_sid), check_service_sid,
	    "expected empty or IS followed by 32 hex digits" },
	{ offsetof(struct config, api_key), check_api_key,
	    "expected empty or SK followed by 32 hex digits" },
	{ offsetof(struct config, account_sid), check_account_sid,
	    "expected empty or AC followed by 32 hex digits" },
	{ offsetof(struct config, prefix), check_not_empty,
	    "must not be empty" },
	{ offsetof(struct config, reply_prefix), check_prefix_list,
	    "expected one or more non-empty prefixes separated by commas" },
	{ offsetof(struct config, socket_path), check_socket_path,
	    "expected a path of 1 to 107 bytes (the limit of a Unix socket)" },
	{ offsetof(struct config, status_path), check_socket_path,
	    "expected a path of 1 to 107 bytes (the limit of a Unix socket)" },
	{ offsetof(struct config, metrics_listen), check_listen,
	    "expected empty or ADDRESS:PORT, an IPv4 address or a bracketed "
	    "IPv6 one and a port of 1 to 65535 (127.0.0.1:9466, [::1]:9466)" },
};

/* Local runs may override these [twilio] keys from the environment. */
static const struct {
	const char	*variable;
	const char	*name;
} env_overrides[] = {
	{ "TWILIO_API_KEY", "api_key" },
	{ "TWILIO_ACCOUNT_SID", "account_sid" },
	{ "TWILIO_EDGE", "edge" },
	{ "TWILIO_REGION", "region" },
};

/*
 * State of one config_load.  lines[] and variables[] remember where each
 * key got its value, so that a check made after the whole file was read
 * can still name the line (or the variable) to fix.
 */
struct config_load {
	struct config	*cfg;
	const char	*path;
	FILE		*fp;
	int		 lineno;	/* of the line inih is working on */
	int		 line_complete;	/* the last read ended with '\n' */
	int		 line_indented;	/* ... and began with white space */
	int		 read_errno;
	int		 lines[CONFIG_NKEYS];
	const char	*variables[CONFIG_NKEYS];
	int		 failed;
	int		 fail_line;	/* 0 when not tied to a line */
	char		*err;
	size_t		 errlen;
};

static size_t	 key_find(const char *, const char *);
static int	 section_known(const char *);
static void	*key_field(const struct config *, size_t);
static const struct config_choices *key_choices(size_t);
static void	 fail(struct config_load *, int, const char *, ...)
		    __attribute__((format(printf, 3, 4)));
static void	 key_fail(struct config_load *, size_t, const char *, ...)
		    __attribute__((format(printf, 3, 4)));
static int	 parse_long(struct config_load *, size_t, const char *, long *);
static int	 parse_mode(struct config_load *, size_t, const char *, long *);
static int	 key_set(struct config_load *, size_t, const char *);
static void	 check_section_line(struct config_load *, const char *);
static char	*read_line(char *, int, void *);
static int	 handle_key(void *, const char *, const char *, const char *);
static int	 parse_file(struct config_load *);
static int	 apply_environment(struct config_load *);
static int	 derive_instance_id(struct config_load *);
static int	 check_combinations(struct config_load *);
static int	 check_reply_slot(struct config_load *);
static int	 check_redis_tls(struct config_load *);
static int	 derive_api_base(struct config_load *);
static int	 derive_redis(struct config_load *);
static int	 merge_redis_password(struct config_load *, char **);
static int	 derive_sentinels(struct config_load *);
static int	 read_secret(const char *, const char *, char **, char *,
		    size_t);
static int	 resolve_secret(struct config_load *, const char *, size_t,
		    const char *, char **);
static int	 resolve_redis_secrets(struct config_load *);
static int	 resolve_credentials(struct config_load *, int);
static void	 secret_free(char **);
static int	 values_differ(const struct config *, const struct config *,
		    size_t);
static void	 append_name(char *, size_t, size_t *, const char *,
		    const char *);

const struct config_key *
config_keys(size_t *count)
{
	if (count != NULL)
		*count = CONFIG_NKEYS;
	return config_table;
}

static size_t
key_find(const char *section, const char *name)
{
	size_t	 i;

	for (i = 0; i < CONFIG_NKEYS; i++)
		if (strcmp(config_table[i].section, section) == 0 &&
		    strcmp(config_table[i].name, name) == 0)
			return i;
	return CONFIG_NKEYS;
}

static int
section_known(const char *section)
{
	size_t	 i;

	for (i = 0; i < CONFIG_NKEYS; i++)
		if (strcmp(config_table[i].section, section) == 0)
			return 1;
	return 0;
}

static void *
key_field(const struct config *cfg, size_t i)
{
	return (char *)cfg + config_table[i].offset;
}

static const struct config_choices *
key_choices(size_t i)
{
	size_t	 j;

	for (j = 0; j < sizeof(enum_choices) / sizeof(enum_choices[0]); j++)
		if (enum_choices[j].offset == config_table[i].offset)
			return &enum_choices[j];
	return NULL;
}

/*
 * Records the first error only: inih goes on after a failed handler, and
 * the first problem in the file is the one to report.  line is the line the
 * error belongs to (0: none); it lets a syntax error that inih found on an
 * earlier line win over a later one found here.
 */
static void
fail(struct config_load *ld, int line, const char *fmt, ...)
{
	va_list	 ap;

	if (ld->failed)
		return;
	ld->failed = 1;
	ld->fail_line = line;
	va_start(ap, fmt);
	(void)vsnprintf(ld->err, ld->errlen, fmt, ap);
	va_end(ap);
}

/*
 * An error about key i's value, prefixed with where the value came from:
 * "FILE:LINE: key "port" in [redis]: ...", "environment variable
 * TWILIO_EDGE (key "edge" in [twilio]): ...", or just the key for a
 * default.
 */
static void
key_fail(struct config_load *ld, size_t i, const char *fmt, ...)
{
	const struct config_key *k = &config_table[i];
	char		 message[MESSAGE_MAX];
	va_list		 ap;

	va_start(ap, fmt);
	(void)vsnprintf(message, sizeof(message), fmt, ap);
	va_end(ap);

	if (ld->variables[i] != NULL)
		fail(ld, 0, "environment variable %s (key \"%s\" in [%s]): %s",
		    ld->variables[i], k->name, k->section, message);
	else if (ld->lines[i] > 0)
		fail(ld, ld->lines[i], "%s:%d: key \"%s\" in [%s]: %s",
		    ld->path, ld->lines[i], k->name, k->section, message);
	else
		fail(ld, 0, "key \"%s\" in [%s]: %s", k->name, k->section,
		    message);
}

/* Empty, or the SID of its kind (twilio_is_sid). */
static int
check_service_sid(const char *s)
{
	return *s == '\0' || twilio_is_sid(s, strlen(s), "IS");
}

static int
check_api_key(const char *s)
{
	return *s == '\0' || twilio_is_sid(s, strlen(s), "SK");
}

static int
check_account_sid(const char *s)
{
	return *s == '\0' || twilio_is_sid(s, strlen(s), "AC");
}

static int
check_not_empty(const char *s)
{
	return *s != '\0';
}

/* One or more non-empty entries separated by commas: an empty entry would
 * be a prefix of every key. */
static int
check_prefix_list(const char *s)
{
	return *s != '\0' && *s != ',' && s[strlen(s) - 1] != ',' &&
	    strstr(s, ",,") == NULL;
}

static int
check_socket_path(const char *s)
{
	return *s != '\0' &&
	    strlen(s) < sizeof(((struct sockaddr_un *)NULL)->sun_path);
}

/* Empty (off) or what config_listen_address accepts. */
static int
check_listen(const char *s)
{
	struct sockaddr_storage ss;
	int len;

	return *s == '\0' || config_listen_address(s, &ss, &len) == 0;
}

/*
 * [metrics] listen: a numeric address and a port, no host name, so that
 * what the daemon binds does not depend on a resolver at start.
 */
int
config_listen_address(const char *s, struct sockaddr_storage *ss, int *len)
{
	struct sockaddr_in *sin = (struct sockaddr_in *)ss;
	struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
	const char *colon = strrchr(s, ':');

	/* evutil takes "1.2.3.4" without a port as port 0: want one. */
	if (colon == NULL || colon[1] == '\0' || strchr(colon, ']') != NULL)
		return -1;
	memset(ss, 0, sizeof(*ss));
	*len = sizeof(*ss);
	if (evutil_parse_sockaddr_port(s, (struct sockaddr *)ss, len) != 0)
		return -1;
	if (ss->ss_family == AF_INET)
		return sin->sin_port == 0 ? -1 : 0;
	if (ss->ss_family == AF_INET6)
		return sin6->sin6_port == 0 ? -1 : 0;
	return -1;
}

/*
 * Decimal only: a leading 0 must not silently switch to octal.  Here and
 * in the other parsers a value that is refused is never quoted: it may be
 * a secret pasted into the wrong key, and the message goes to the log, to
 * the journal and to `systemctl reload`.  The key, the line and what was
 * expected are enough to find and fix it.
 */
static int
parse_long(struct config_load *ld, size_t i, const char *value, long *out)
{
	const struct config_key *k = &config_table[i];
	char	*end;
	long	 v;

	if (!isdigit((unsigned char)value[0]) &&
	    !(value[0] == '-' && isdigit((unsigned char)value[1]))) {
		key_fail(ld, i, "not a decimal integer (expected %ld..%ld)",
		    k->min, k->max);
		return -1;
	}
	errno = 0;
	v = strtol(value, &end, 10);
	if (*end != '\0') {
		key_fail(ld, i, "not a decimal integer (expected %ld..%ld)",
		    k->min, k->max);
		return -1;
	}
	if (errno == ERANGE || v < k->min || v > k->max) {
		key_fail(ld, i, "out of range (expected %ld..%ld)", k->min,
		    k->max);
		return -1;
	}
	*out = v;
	return 0;
}

/* File modes are octal, as chmod(1) writes them: 0660 or 660. */
static int
parse_mode(struct config_load *ld, size_t i, const char *value, long *out)
{
	size_t	 n = strlen(value);
	long	 v;

	if (n == 0 || n > 4 || strspn(value, "01234567") != n ||
	    (v = strtol(value, NULL, 8)) > 0777) {
		key_fail(ld, i, "not a file mode (expected octal 0000..0777, "
		    "e.g. 0660)");
		return -1;
	}
	*out = v;
	return 0;
}

/*
 * Parses value as key i's type, checks it, and stores it in the struct
 * config.  The one path for defaults, the file and the environment.
 */
static int
key_set(struct config_load *ld, size_t i, const char *value)
{
	const struct config_key *k = &config_table[i];
	const struct config_choices *c;
	const char *sep;
	void	*field = key_field(ld->cfg, i);
	char	 expected[128];
	char	*copy;
	size_t	 j, n;
	long	 v;

	switch (k->type) {
	case CONFIG_STRING:
		for (j = 0; j < sizeof(string_rules) / sizeof(string_rules[0]);
		    j++) {
			/*
			 * The value itself stays out of the message: a
			 * secret pasted into the wrong key must not end up
			 * in a log.
			 */
			if (string_rules[j].offset == k->offset &&
			    !string_rules[j].check(value)) {
				key_fail(ld, i, "%s", string_rules[j].expected);
				return -1;
			}
		}
		if ((copy = strdup(value)) == NULL) {
			key_fail(ld, i, "%s", strerror(errno));
			return -1;
		}
		free(*(char **)field);
		*(char **)field = copy;
		return 0;
	case CONFIG_LONG:
		if (parse_long(ld, i, value, &v) == -1)
			return -1;
		*(long *)field = v;
		return 0;
	case CONFIG_MODE:
		if (parse_mode(ld, i, value, &v) == -1)
			return -1;
		*(long *)field = v;
		return 0;
	case CONFIG_ENUM:
		if ((c = key_choices(i)) == NULL) {
			key_fail(ld, i, "internal error: no values listed");
			return -1;
		}
		expected[0] = '\0';
		for (j = 0; c->names[j] != NULL; j++) {
			if (strcmp(value, c->names[j]) == 0) {
				*(int *)field = (int)j;
				return 0;
			}
			/* "a, b or c" */
			sep = j == 0 ? "" : c->names[j + 1] == NULL ? " or " :
			    ", ";
			n = strlen(expected);
			(void)snprintf(expected + n, sizeof(expected) - n,
			    "%s%s", sep, c->names[j]);
		}
		key_fail(ld, i, "unknown value (expected %s)", expected);
		return -1;
	}
	key_fail(ld, i, "internal error: unknown type");
	return -1;
}

/*
 * inih tells the handler about a section only with its first key, so an
 * unknown section with no keys (a typo above a commented-out block) would
 * pass unnoticed.  Section headings are therefore checked as lines are
 * read, the way inih reads them: the name is what lies between '[' and
 * the first ']'.
 */
static void
check_section_line(struct config_load *ld, const char *line)
{
	const char	*name, *end;
	size_t		 i;

	name = line + strspn(line, " \t");
	if (*name++ != '[' || (end = strchr(name, ']')) == NULL)
		return;
	for (i = 0; i < CONFIG_NKEYS; i++)
		if (strlen(config_table[i].section) == (size_t)(end - name) &&
		    strncmp(config_table[i].section, name, end - name) == 0)
			return;
	fail(ld, ld->lineno, "%s:%d: unknown section [%.*s]", ld->path,
	    ld->lineno, (int)(end - name), name);
}

/*
 * The fgets-style reader given to inih.  inih's handler is not told the
 * line number, but inih calls it right after reading the line, so counting
 * lines here gives the handler an exact one.  A line longer than inih's
 * buffer would be split and its value silently cut: that is an error.
 */
static char *
read_line(char *str, int num, void *stream)
{
	struct config_load *ld = stream;
	size_t	 len;
	int	 c;

	if (ld->line_complete) {
		ld->lineno++;
		ld->line_indented = 0;
	}
	errno = 0;
	if (fgets(str, num, ld->fp) == NULL) {
		if (ferror(ld->fp))
			ld->read_errno = errno != 0 ? errno : EIO;
		return NULL;
	}
	len = strlen(str);
	if (ld->line_complete) {
		ld->line_indented = str[0] == ' ' || str[0] == '\t';
		check_section_line(ld, str);
	}
	ld->line_complete = len > 0 && str[len - 1] == '\n';
	if (!ld->line_complete && len + 1 == (size_t)num) {
		if ((c = getc(ld->fp)) == EOF) {
			ld->line_complete = 1;	/* last line, no newline */
		} else if (ungetc(c, ld->fp) == EOF) {
			ld->read_errno = EIO;
			return NULL;
		} else
			fail(ld, ld->lineno, "%s:%d: line too long (at most "
			    "%d characters)", ld->path, ld->lineno, num - 2);
	}
	return str;
}

static int
handle_key(void *user, const char *section, const char *name,
    const char *value)
{
	struct config_load *ld = user;
	size_t	 i;

	if (ld->failed)
		return 0;
	if (*section == '\0') {
		fail(ld, ld->lineno, "%s:%d: key \"%s\" outside any section",
		    ld->path, ld->lineno, name);
		return 0;
	}
	if (!section_known(section)) {
		fail(ld, ld->lineno, "%s:%d: unknown section [%s]", ld->path,
		    ld->lineno, section);
		return 0;
	}
	if ((i = key_find(section, name)) == CONFIG_NKEYS) {
		fail(ld, ld->lineno, "%s:%d: unknown key \"%s\" in [%s]",
		    ld->path, ld->lineno, name, section);
		return 0;
	}
	if (ld->lines[i] != 0) {
		/*
		 * inih reads an indented line as the continuation of the
		 * previous value and hands it over under the previous key.
		 */
		if (ld->line_indented)
			fail(ld, ld->lineno, "%s:%d: indented line continues "
			    "the value of key \"%s\" in [%s] (line %d); values "
			    "cannot span lines, remove the indentation",
			    ld->path, ld->lineno, name, section, ld->lines[i]);
		else
			fail(ld, ld->lineno, "%s:%d: key \"%s\" in [%s] given "
			    "twice (first on line %d)", ld->path, ld->lineno,
			    name, section, ld->lines[i]);
		return 0;
	}
	ld->lines[i] = ld->lineno;
	return key_set(ld, i, value) == 0;
}

static int
parse_file(struct config_load *ld)
{
	int	 r;

	if ((ld->fp = fopen(ld->path, "re")) == NULL) {
		fail(ld, 0, "cannot open %s: %s", ld->path, strerror(errno));
		return -1;
	}
	ld->line_complete = 1;
	r = ini_parse_stream(read_line, ld, handle_key, ld);
	if (ld->read_errno != 0) {
		/* A read error leaves a half-read file: nothing else counts. */
		ld->failed = 0;
		fail(ld, 0, "cannot read %s: %s", ld->path,
		    strerror(ld->read_errno));
	} else if (r > 0 && (!ld->failed || ld->fail_line > r)) {
		/* inih found a line it could not read as anything. */
		ld->failed = 0;
		fail(ld, r, "%s:%d: syntax error: expected [section], "
		    "key = value, or a comment", ld->path, r);
	} else if (r < 0 && !ld->failed)
		fail(ld, 0, "cannot parse %s: out of memory", ld->path);
	if (fclose(ld->fp) == EOF && !ld->failed)
		fail(ld, 0, "cannot read %s: %s", ld->path, strerror(errno));
	ld->fp = NULL;
	return ld->failed ? -1 : 0;
}

/* An empty variable counts as unset, as in the Twilio helper libraries. */
static int
apply_environment(struct config_load *ld)
{
	const char	*value;
	size_t		 i, j;

	for (j = 0; j < sizeof(env_overrides) / sizeof(env_overrides[0]); j++) {
		value = getenv(env_overrides[j].variable);
		if (value == NULL || *value == '\0')
			continue;
		i = key_find("twilio", env_overrides[j].name);
		ld->variables[i] = env_overrides[j].variable;
		if (key_set(ld, i, value) == -1)
			return -1;
	}
	return 0;
}

static int
derive_instance_id(struct config_load *ld)
{
	char	 host[HOST_NAME_MAX + 1];
	size_t	 i = key_find("redis", "instance_id");

	if (*ld->cfg->instance_id != '\0')
		return 0;
	if (gethostname(host, sizeof(host)) == -1) {
		key_fail(ld, i, "empty, and the host name is unknown: %s",
		    strerror(errno));
		return -1;
	}
	host[sizeof(host) - 1] = '\0';
	if (host[0] == '\0') {
		key_fail(ld, i, "empty, and the host name is empty");
		return -1;
	}
	return key_set(ld, i, host);
}

/* Rules that involve more than one key. */
static int
check_combinations(struct config_load *ld)
{
	struct config	*cfg = ld->cfg;

	size_t		 max = key_find("retry", "max_delay_ms");
	size_t		 base = key_find("retry", "base_delay_ms");

	/* Blame the one of the two that was written down, max first. */
	if (cfg->max_delay_ms < cfg->base_delay_ms) {
		if (ld->lines[max] == 0 && ld->lines[base] > 0)
			key_fail(ld, base, "%ld is more than max_delay_ms "
			    "(%ld)", cfg->base_delay_ms, cfg->max_delay_ms);
		else
			key_fail(ld, max, "%ld is less than base_delay_ms "
			    "(%ld)", cfg->max_delay_ms, cfg->base_delay_ms);
		return -1;
	}
	if (*cfg->redis_url_key == '\0' && *cfg->redis_host == '\0' &&
	    *cfg->redis_unix_socket == '\0') {
		key_fail(ld, key_find("redis", "host"),
		    "must not be empty when unix_socket is empty");
		return -1;
	}
	return check_reply_slot(ld);
}

/*
 * A [redis] prefix with a hash tag puts every key of ours in one Redis
 * Cluster slot.  The result transaction also pushes to the request's
 * ReplyTo, which a Cluster refuses (CROSSSLOT) unless that key is in the
 * same slot: so each reply_prefix must then carry the same tag, and every
 * ReplyTo it lets in does.  Said at load, not at the first reply.
 */
static int
check_reply_slot(struct config_load *ld)
{
	struct config	*cfg = ld->cfg;
	const char	*tag, *t, *p, *end;
	size_t		 len, n;
	size_t		 reply = key_find("results", "reply_prefix");
	size_t		 own = key_find("redis", "prefix");
	char		*entry;
	int		 same;

	if (!redis_hash_tag(cfg->prefix, &tag, &len))
		return 0;
	for (p = cfg->reply_prefix; *p != '\0'; p = end + 1) {
		end = p + strcspn(p, ",");
		if ((entry = strndup(p, (size_t)(end - p))) == NULL) {
			key_fail(ld, reply, "%s", strerror(errno));
			return -1;
		}
		same = redis_hash_tag(entry, &t, &n) && n == len &&
		    memcmp(t, tag, len) == 0;
		free(entry);
		if (same)
			;
		else if (ld->lines[reply] == 0 && ld->lines[own] > 0) {
			/* The default reply_prefix: blame the tag. */
			key_fail(ld, own, "has a hash tag, so [results] "
			    "reply_prefix (%s) needs {%.*s} too, to share its "
			    "Redis Cluster slot", cfg->reply_prefix, (int)len,
			    tag);
			return -1;
		} else {
			key_fail(ld, reply, "entry %.*s needs the hash tag "
			    "{%.*s} of [redis] prefix, so that replies share "
			    "its Redis Cluster slot", (int)(end - p), p,
			    (int)len, tag);
			return -1;
		}
		if (*end == '\0')
			break;
	}
	return 0;
}

static int
redis_tls_keys(const struct config *cfg)
{
	return *cfg->redis_tls_ca_file != '\0' ||
	    *cfg->redis_tls_cert_file != '\0' ||
	    *cfg->redis_tls_key_file != '\0' ||
	    *cfg->redis_tls_server_name != '\0';
}

/*
 * A certificate goes with its key, and TLS needs TCP: tls_* keys with
 * unix_socket, or with a url that is not rediss://, would otherwise be
 * ignored, and the operator who asked for TLS would get plain text
 * without a word.  Runs after derive_redis.
 */
static int
check_redis_tls(struct config_load *ld)
{
	struct config	*cfg = ld->cfg;
	const char	*cert = cfg->redis_tls_cert_file;
	const char	*key = cfg->redis_tls_key_file;

	if ((*cert == '\0') != (*key == '\0')) {
		key_fail(ld, key_find("redis", *cert ? "tls_cert_file" :
		    "tls_key_file"), "needs %s too", *cert ? "tls_key_file" :
		    "tls_cert_file");
		return -1;
	}
	if (!redis_tls_keys(cfg) || cfg->redis.tls)
		return 0;
	if (*cfg->redis_url_key != '\0')
		key_fail(ld, key_find("redis", "url"), "is not rediss://, and "
		    "the tls_* keys are set: write rediss:// for TLS");
	else if (cfg->redis.path != NULL)
		key_fail(ld, key_find("redis", "unix_socket"),
		    "cannot be used with TLS (the tls_* keys)");
	else
		return 0;
	return -1;
}

/*
 * TLS is on when url is rediss://, or, without a url, when any tls_* key
 * is set: each of them only means something over TLS.  (With the
 * system's CA store and no other key, tls_server_name names the host to
 * check.)  A reload keeps the old url (a restart key) and its scheme, and
 * takes the new tls_* keys.
 */
int
config_redis_tls(const struct config *cfg)
{
	return cfg->redis.tls ||
	    (*cfg->redis_url_key == '\0' && redis_tls_keys(cfg));
}

/* Reads a decimal number; NULL unless there is one. */
static const char *
version_part(const char *s, long *out)
{
	char	*end;

	if (!isdigit((unsigned char)*s))
		return NULL;
	errno = 0;
	*out = strtol(s, &end, 10);
	return errno == 0 ? end : NULL;
}

int
redis_version_at_least(const char *version, int major, int minor)
{
	const char	*s;
	long		 ma, mi;

	if ((s = version_part(version, &ma)) == NULL || *s != '.' ||
	    (s = version_part(s + 1, &mi)) == NULL)
		return -1;
	return ma > major || (ma == major && mi >= minor);
}

/*
 * [redis] sentinels: "host:port,host:port", a host in brackets when it is an
 * IPv6 address ("[::1]:26379"), blanks around the commas allowed.  With
 * sentinels set, master_name names the primary to ask them for.
 */
static int
derive_sentinels(struct config_load *ld)
{
	struct config	*cfg = ld->cfg;
	size_t		 key = key_find("redis", "sentinels");
	const char	*p = cfg->redis_sentinels, *end, *colon, *h, *he;
	char		*e;
	long		 port;
	size_t		 n = 1;

	if (*p == '\0')
		return 0;
	if (*cfg->redis_master_name == '\0') {
		key_fail(ld, key, "needs master_name, the primary's name");
		return -1;
	}
	for (end = p; *end != '\0'; end++)
		if (*end == ',')
			n++;
	if ((cfg->sentinels = calloc(n, sizeof(*cfg->sentinels))) == NULL) {
		key_fail(ld, key, "%s", strerror(errno));
		return -1;
	}
	for (;;) {
		while (*p == ' ' || *p == '\t')
			p++;
		if ((end = strchr(p, ',')) == NULL)
			end = p + strlen(p);
		for (colon = end; colon > p && colon[-1] != ':'; colon--)
			;
		h = p;
		he = colon - 1;
		if (*h == '[' && he > h && he[-1] == ']') {
			h++;
			he--;
		}
		errno = 0;
		port = colon > p ? strtol(colon, &e, 10) : 0;
		while (colon > p && (*e == ' ' || *e == '\t'))
			e++;
		if (colon <= p || he <= h || errno != 0 || e != end ||
		    e == colon || port < 1 || port > 65535) {
			/* The value is not quoted: it may be a secret
			 * pasted into the wrong key. */
			key_fail(ld, key, "entry %zu is not host:port "
			    "(port 1 to 65535)", cfg->nsentinels + 1);
			return -1;
		}
		if ((cfg->sentinels[cfg->nsentinels].host =
		    strndup(h, (size_t)(he - h))) == NULL) {
			key_fail(ld, key, "%s", strerror(errno));
			return -1;
		}
		cfg->sentinels[cfg->nsentinels++].port = (unsigned)port;
		if (*end == '\0')
			return 0;
		p = end + 1;
	}
}

/*
 * twilio.c owns what a Twilio URL looks like.  Its message already names
 * base_url, edge or region; the location is that of whichever of them was
 * set explicitly, base_url first.
 */
static int
derive_api_base(struct config_load *ld)
{
	struct config	*cfg = ld->cfg;
	char		 message[MESSAGE_MAX];
	size_t		 i, j;
	static const char *const names[] = { "base_url", "edge", "region" };

	cfg->api_base = twilio_api_base(cfg->base_url, cfg->edge, cfg->region,
	    message, sizeof(message));
	if (cfg->api_base != NULL)
		return 0;
	i = key_find("twilio", names[0]);
	for (j = 0; j < sizeof(names) / sizeof(names[0]); j++) {
		size_t	 k = key_find("twilio", names[j]);

		if (ld->lines[k] > 0 || ld->variables[k] != NULL) {
			i = k;
			break;
		}
	}
	key_fail(ld, i, "%s", message);
	return -1;
}

/*
 * Fills cfg->redis, the server to use: from url when it is set (the old
 * keys host, port and unix_socket are then ignored), else from those keys.
 * A db or user name given both in the url and by its own key must agree.
 * The url's password stays in cfg->redis.password until config_load has
 * read password_file and merges the two.
 */
static int
derive_redis(struct config_load *ld)
{
	struct config	*cfg = ld->cfg;
	struct redis_url *r = &cfg->redis;
	size_t		 url = key_find("redis", "url");
	size_t		 db = key_find("redis", "db");
	char		 message[MESSAGE_MAX];

	if (*cfg->redis_url_key != '\0') {
		if (redis_url_parse(cfg->redis_url_key, r, message,
		    sizeof(message)) == -1) {
			key_fail(ld, url, "%s", message);
			return -1;
		}
		if (r->db != -1 && ld->lines[db] > 0 &&
		    r->db != cfg->redis_db) {
			key_fail(ld, url, "its database (%ld) differs from key "
			    "\"db\" (%ld, line %d); keep one of them", r->db,
			    cfg->redis_db, ld->lines[db]);
			return -1;
		}
		if (r->username != NULL && *cfg->redis_username != '\0' &&
		    strcmp(r->username, cfg->redis_username) != 0) {
			key_fail(ld, url, "its user name differs from key "
			    "\"username\"; keep one of them");
			return -1;
		}
	} else {
		r->port = cfg->redis_port;
		r->db = -1;
		if (*cfg->redis_unix_socket != '\0')
			r->path = strdup(cfg->redis_unix_socket);
		else
			r->host = strdup(cfg->redis_host);
		if (r->path == NULL && r->host == NULL) {
			fail(ld, 0, "cannot keep the Redis address: %s",
			    strerror(errno));
			return -1;
		}
	}
	if (r->db == -1)
		r->db = cfg->redis_db;
	if (r->username == NULL && *cfg->redis_username != '\0' &&
	    (r->username = strdup(cfg->redis_username)) == NULL) {
		fail(ld, 0, "cannot keep the Redis user name: %s",
		    strerror(errno));
		return -1;
	}
	return 0;
}

/*
 * The Redis password comes from the url or from password_file (or the
 * redis-password credential), not both: two that differ would leave the
 * operator guessing which one is used.  A user name needs a password, so
 * that "redis://secret@host" (a password to old redis-rb, a user name to
 * ioredis and to us) is caught here rather than as a refused AUTH.
 */
static int
merge_redis_password(struct config_load *ld, char **url_password)
{
	struct config	*cfg = ld->cfg;
	size_t		 url = key_find("redis", "url");

	if (*url_password != NULL && cfg->redis_password != NULL) {
		secret_free(url_password);
		key_fail(ld, url, "holds a password, and password_file (or the "
		    "redis-password credential) gives one too; keep one of "
		    "them");
		return -1;
	}
	if (*url_password != NULL) {
		cfg->redis_password = *url_password;
		*url_password = NULL;
	}
	if (cfg->redis.username != NULL && cfg->redis_password == NULL) {
		key_fail(ld, *cfg->redis_username != '\0' ?
		    key_find("redis", "username") : url, "a user name needs a "
		    "password: set password_file, give the redis-password "
		    "credential, or write user:password@ in url (\"user@\" "
		    "alone is a user name, \":password@\" a password alone)");
		return -1;
	}
	return 0;
}

/*
 * Opens a secret file for read_secret: the descriptor of a regular file
 * that only its owner can access, or -1 with msg set (what and shown name
 * the file, as there).
 *
 * The file is opened without blocking: a FIFO or a device named by
 * mistake would otherwise wait for a writer forever, at start or, on
 * reload, inside the event loop.  It is then refused as not a regular
 * file.  Symbolic links are followed: systemd credentials and secret
 * stores are often links.
 */
static int
open_secret(const char *path, const char *what, const char *shown, char *msg,
    size_t msglen)
{
	struct stat	 st;
	int		 fd, saved;

	if ((fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK)) ==
	    -1) {
		(void)snprintf(msg, msglen, "cannot open %s%s: %s", what, shown,
		    strerror(errno));
		return -1;
	}
	if (fstat(fd, &st) == -1) {
		saved = errno;
		(void)close(fd);
		(void)snprintf(msg, msglen, "cannot stat %s%s: %s", what, shown,
		    strerror(saved));
		return -1;
	}
	if (!S_ISREG(st.st_mode)) {
		(void)close(fd);
		(void)snprintf(msg, msglen, "%s%s is not a regular file (a "
		    "FIFO, socket, device or directory cannot hold a secret)",
		    what, shown);
		return -1;
	}
	if ((st.st_mode & 077) != 0) {
		(void)close(fd);
		(void)snprintf(msg, msglen, "%s%s has mode %04o: group and "
		    "others must have no access (chmod 600 it)", what, shown,
		    (unsigned int)(st.st_mode & 07777));
		return -1;
	}
	return fd;
}

/* Up to size bytes of fd into buf: how many, or -1 (errno set). */
static ssize_t
read_upto(int fd, char *buf, size_t size)
{
	size_t	 len = 0;
	ssize_t	 n;

	while (len < size) {
		n = read(fd, buf + len, size - len);
		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1)
			return -1;
		if (n == 0)
			break;
		len += (size_t)n;
	}
	return (ssize_t)len;
}

/*
 * Reads a secret file into *out: refuses anything but a regular file that
 * only its owner can access, strips trailing white space (editors add a
 * newline), refuses an empty result.  Messages never hold a byte of the
 * content, and name the file only when shown is given: the path of a
 * *_file key is not quoted, since it may be the secret itself, pasted
 * where its file's name belongs (the key and line say which file).
 */
static int
read_secret(const char *path, const char *shown, char **out, char *msg,
    size_t msglen)
{
	const char	*what;
	char		*buf;
	size_t		 len;
	ssize_t		 n;
	int		 fd, saved;

	what = shown != NULL ? "secret file " : "the secret file";
	if (shown == NULL)
		shown = "";
	*out = NULL;
	if ((fd = open_secret(path, what, shown, msg, msglen)) == -1)
		return -1;
	if ((buf = malloc(SECRET_MAX + 1)) == NULL) {
		saved = errno;
		(void)close(fd);
		(void)snprintf(msg, msglen, "cannot read %s%s: %s", what, shown,
		    strerror(saved));
		return -1;
	}
	/* One byte more than allowed tells a too large file. */
	if ((n = read_upto(fd, buf, SECRET_MAX + 1)) == -1) {
		saved = errno;
		explicit_bzero(buf, SECRET_MAX + 1);
		free(buf);
		(void)close(fd);
		(void)snprintf(msg, msglen, "cannot read %s%s: %s", what, shown,
		    strerror(saved));
		return -1;
	}
	len = (size_t)n;
	(void)close(fd);	/* read-only: nothing to lose on close */
	if (len > SECRET_MAX) {
		explicit_bzero(buf, SECRET_MAX + 1);
		free(buf);
		(void)snprintf(msg, msglen, "%s%s is larger than %d bytes",
		    what, shown, SECRET_MAX);
		return -1;
	}
	while (len > 0 && isspace((unsigned char)buf[len - 1]))
		buf[--len] = '\0';
	buf[len] = '\0';
	if (len == 0 || memchr(buf, '\0', len) != NULL) {
		explicit_bzero(buf, SECRET_MAX + 1);
		free(buf);
		(void)snprintf(msg, msglen, "%s%s is %s", what, shown,
		    len == 0 ? "empty" : "not text (it holds a NUL byte)");
		return -1;
	}
	*out = buf;
	return 0;
}

/*
 * A secret comes from, in this order: the environment variable (local
 * runs), the *_file key, or $CREDENTIALS_DIRECTORY/credential when systemd
 * put it there (LoadCredential=).  *out is NULL when none is given.
 */
static int
resolve_secret(struct config_load *ld, const char *variable, size_t file_key,
    const char *credential, char **out)
{
	const char	*value, *file, *dir;
	char		 message[MESSAGE_MAX];
	char		*path;
	struct stat	 st;
	int		 r;

	*out = NULL;
	if (variable != NULL && (value = getenv(variable)) != NULL &&
	    *value != '\0') {
		if ((*out = strdup(value)) == NULL) {
			fail(ld, 0, "environment variable %s: %s", variable,
			    strerror(errno));
			return -1;
		}
		return 0;
	}
	file = *(char **)key_field(ld->cfg, file_key);
	if (*file != '\0') {
		if (read_secret(file, NULL, out, message, sizeof(message)) ==
		    -1) {
			key_fail(ld, file_key, "%s", message);
			return -1;
		}
		return 0;
	}
	if ((dir = getenv("CREDENTIALS_DIRECTORY")) == NULL || *dir == '\0')
		return 0;
	if (asprintf(&path, "%s/%s", dir, credential) == -1) {
		fail(ld, 0, "credential %s: %s", credential, strerror(errno));
		return -1;
	}
	/* Absent is fine: the credential may be given another way. */
	if (stat(path, &st) == -1 && errno == ENOENT) {
		free(path);
		return 0;
	}
	r = read_secret(path, path, out, message, sizeof(message));
	free(path);
	if (r == -1) {
		fail(ld, 0, "$CREDENTIALS_DIRECTORY: %s", message);
		return -1;
	}
	return 0;
}

/* The Redis password and the Sentinels' (NULL when none). */
static int
resolve_redis_secrets(struct config_load *ld)
{
	struct config	*cfg = ld->cfg;

	if (resolve_secret(ld, NULL, key_find("redis", "password_file"),
	    "redis-password", &cfg->redis_password) == -1 ||
	    resolve_secret(ld, NULL,
	    key_find("redis", "sentinel_password_file"),
	    "redis-sentinel-password", &cfg->sentinel_password) == -1)
		return -1;
	return 0;
}

/*
 * Picks the Twilio credential pair -- API key and secret when both are
 * there, else account SID and auth token -- and the Redis password.  The
 * secret of the pair not chosen is wiped at once.
 */
static int
resolve_credentials(struct config_load *ld, int require)
{
	struct config	*cfg = ld->cfg;
	char		*api_secret = NULL, *auth_token = NULL;
	const char	*hint = "";
	const char	*where = ld->path != NULL ? ld->path : "";

	if (require == CONFIG_CREDENTIALS_REDIS_ONLY)
		return resolve_redis_secrets(ld);
	if (resolve_secret(ld, "TWILIO_API_SECRET",
	    key_find("twilio", "api_secret_file"), "twilio-api-secret",
	    &api_secret) == -1 ||
	    resolve_secret(ld, "TWILIO_AUTH_TOKEN",
	    key_find("twilio", "auth_token_file"), "twilio-auth-token",
	    &auth_token) == -1 || resolve_redis_secrets(ld) == -1)
		goto fail;

	if (*cfg->api_key != '\0' && api_secret != NULL) {
		cfg->auth_user = strdup(cfg->api_key);
		cfg->auth_secret = api_secret;
		api_secret = NULL;
	} else if (*cfg->account_sid != '\0' && auth_token != NULL) {
		cfg->auth_user = strdup(cfg->account_sid);
		cfg->auth_secret = auth_token;
		auth_token = NULL;
	} else if (require == CONFIG_CREDENTIALS_REQUIRED) {
		if (*cfg->api_key != '\0')
			hint = "; api_key is set but no API secret was found";
		else if (*cfg->account_sid != '\0')
			hint = "; account_sid is set but no auth token was "
			    "found";
		else if (api_secret != NULL || auth_token != NULL)
			hint = "; a secret was found but neither api_key nor "
			    "account_sid is set";
		fail(ld, 0, "%s%sno Twilio credentials: set api_key and "
		    "api_secret_file (or account_sid and auth_token_file)%s",
		    where, *where != '\0' ? ": " : "", hint);
		goto fail;
	}
	if (cfg->auth_secret != NULL && cfg->auth_user == NULL) {
		fail(ld, 0, "cannot keep the Twilio user: %s", strerror(errno));
		goto fail;
	}
	secret_free(&api_secret);
	secret_free(&auth_token);
	return 0;
fail:
	secret_free(&api_secret);
	secret_free(&auth_token);
	return -1;
}

/* Wipes a secret before its memory goes back to the allocator. */
static void
secret_free(char **secret)
{
	if (*secret == NULL)
		return;
	explicit_bzero(*secret, strlen(*secret));
	free(*secret);
	*secret = NULL;
}

int
config_credentials_beside(const char *path)
{
	const char	*dir = getenv("CREDENTIALS_DIRECTORY");
	char		*copy;
	int		 r;

	if (dir != NULL && *dir != '\0')
		return 0;
	if ((copy = strdup(path)) == NULL)
		return -1;
	r = setenv("CREDENTIALS_DIRECTORY", dirname(copy), 1);
	free(copy);
	return r;
}

int
config_load(const char *path, struct config *cfg, int credentials,
    char *err, size_t errlen)
{
	struct config_load ld;
	char	*url_password = NULL;
	size_t	 i;

	memset(cfg, 0, sizeof(*cfg));
	memset(&ld, 0, sizeof(ld));
	ld.cfg = cfg;
	ld.path = path;
	ld.err = err;
	ld.errlen = errlen;
	if (errlen > 0)
		err[0] = '\0';

	for (i = 0; i < CONFIG_NKEYS; i++)
		if (key_set(&ld, i, config_table[i].default_value) == -1)
			goto fail;
	if (path != NULL) {
		if ((cfg->path = strdup(path)) == NULL) {
			fail(&ld, 0, "%s: %s", path, strerror(errno));
			goto fail;
		}
		if (parse_file(&ld) == -1)
			goto fail;
	}
	if (apply_environment(&ld) == -1 ||
	    derive_instance_id(&ld) == -1 ||
	    check_combinations(&ld) == -1 ||
	    derive_api_base(&ld) == -1 ||
	    derive_redis(&ld) == -1 ||
	    derive_sentinels(&ld) == -1 ||
	    check_redis_tls(&ld) == -1)
		goto fail;
	url_password = cfg->redis.password;
	cfg->redis.password = NULL;
	if (resolve_credentials(&ld, credentials) == -1 ||
	    merge_redis_password(&ld, &url_password) == -1)
		goto fail;
	return 0;
fail:
	secret_free(&url_password);
	config_free(cfg);
	return -1;
}

void
config_free(struct config *cfg)
{
	size_t	 i;

	/* The url key may hold the Redis password. */
	if (cfg->redis_url_key != NULL)
		explicit_bzero(cfg->redis_url_key, strlen(cfg->redis_url_key));
	for (i = 0; i < CONFIG_NKEYS; i++)
		if (config_table[i].type == CONFIG_STRING)
			free(*(char **)key_field(cfg, i));
	free(cfg->path);
	free(cfg->api_base);
	free(cfg->auth_user);
	secret_free(&cfg->auth_secret);
	secret_free(&cfg->redis_password);
	redis_url_free(&cfg->redis);
	secret_free(&cfg->sentinel_password);
	for (i = 0; i < cfg->nsentinels; i++)
		free(cfg->sentinels[i].host);
	free(cfg->sentinels);
	memset(cfg, 0, sizeof(*cfg));
}

static int
values_differ(const struct config *a, const struct config *b, size_t i)
{
	const char	*sa, *sb;

	switch (config_table[i].type) {
	case CONFIG_STRING:
		sa = *(char **)key_field(a, i);
		sb = *(char **)key_field(b, i);
		if (sa == NULL || sb == NULL)
			return sa != sb;
		return strcmp(sa, sb) != 0;
	case CONFIG_LONG:
	case CONFIG_MODE:
		return *(long *)key_field(a, i) != *(long *)key_field(b, i);
	case CONFIG_ENUM:
		return *(int *)key_field(a, i) != *(int *)key_field(b, i);
	}
	return 1;
}

/* Appends "section.name" to out, comma-separated, truncating safely. */
static void
append_name(char *out, size_t outlen, size_t *len, const char *section,
    const char *name)
{
	int	 n;

	if (outlen == 0 || *len >= outlen - 1)
		return;
	n = snprintf(out + *len, outlen - *len, "%s%s.%s",
	    *len > 0 ? "," : "", section, name);
	if (n < 0)
		out[*len] = '\0';
	else if ((size_t)n >= outlen - *len)
		*len = outlen - 1;
	else
		*len += (size_t)n;
}

int
config_restart_keys(const struct config *old, const struct config *new,
    char *out, size_t outlen)
{
	size_t	 i, len = 0;
	int	 count = 0, password_listed = 0;

	if (outlen > 0)
		out[0] = '\0';
	for (i = 0; i < CONFIG_NKEYS; i++) {
		if (config_table[i].reloadable || !values_differ(old, new, i))
			continue;
		append_name(out, outlen, &len, config_table[i].section,
		    config_table[i].name);
		count++;
		if (config_table[i].offset ==
		    offsetof(struct config, redis_password_file) ||
		    config_table[i].offset ==
		    offsetof(struct config, redis_url_key))
			password_listed = 1;
	}
	/*
	 * The Redis password is used when connecting, so a new one in the
	 * same file needs a restart as much as a new file does.  A new url
	 * (it may hold the password) is already listed.
	 */
	if (!password_listed &&
	    ((old->redis_password == NULL) != (new->redis_password == NULL) ||
	    (old->redis_password != NULL &&
	    strcmp(old->redis_password, new->redis_password) != 0))) {
		append_name(out, outlen, &len, "redis", "password_file");
		count++;
	}
	return count;
}
