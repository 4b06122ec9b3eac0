/*
 * test_redis_url.c: CUnit tables for redis_url.c -- the URLs ioredis and
 * redis-client accept, each bad URL with its exact message (which never
 * quotes the URL), and the form shown in logs with "***" for the password.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <CUnit/Basic.h>
#include <CUnit/CUnit.h>

#include "usergate.h"

#define NELEM(a)	(sizeof(a) / sizeof((a)[0]))
#define ERRLEN		512

static void
check_str(const char *what, const char *got, const char *want, int line)
{
	char	 msg[2048];

	snprintf(msg, sizeof(msg), "%s:\n      got  [%s]\n      want [%s]",
	    what, got != NULL ? got : "(null)", want != NULL ? want : "(null)");
	CU_assertImplementation((got == NULL && want == NULL) ||
	    (got != NULL && want != NULL && strcmp(got, want) == 0) ?
	    CU_TRUE : CU_FALSE, line, msg, __FILE__, "", CU_FALSE);
}

static void
check_long(const char *what, long got, long want, int line)
{
	char	 msg[1024];

	snprintf(msg, sizeof(msg), "%s: got %ld, want %ld", what, got, want);
	CU_assertImplementation(got == want ? CU_TRUE : CU_FALSE, line, msg,
	    __FILE__, "", CU_FALSE);
}

/* One field of a parsed URL, named "URL: field" when it differs. */
static void
url_str(const char *url, const char *field, const char *got,
    const char *want, int line)
{
	char	 what[600];

	snprintf(what, sizeof(what), "%s: %s", url, field);
	check_str(what, got, want, line);
}

static void
url_long(const char *url, const char *field, long got, long want, int line)
{
	char	 what[600];

	snprintf(what, sizeof(what), "%s: %s", url, field);
	check_long(what, got, want, line);
}

/* ------------------------------------------------------------------ */

static const struct good_case {
	const char	*url;
	int		 tls;
	const char	*host;
	long		 port;
	const char	*path;
	long		 db;
	const char	*username, *password;
	const char	*shown;		/* redis_url_show, with the password */
} good_cases[] = {
	{ "redis://127.0.0.1", 0, "127.0.0.1", 6379, NULL, -1, NULL, NULL,
	    "redis://127.0.0.1:6379" },
	{ "redis://localhost:6380/2", 0, "localhost", 6380, NULL, 2, NULL,
	    NULL, "redis://localhost:6380/2" },
	{ "redis://redis.example.com/", 0, "redis.example.com", 6379, NULL,
	    -1, NULL, NULL, "redis://redis.example.com:6379" },
	/* "host:" is the default port, as URL parsers read it. */
	{ "redis://h:/0", 0, "h", 6379, NULL, 0, NULL, NULL,
	    "redis://h:6379/0" },
	{ "REDIS://H_1:1", 0, "H_1", 1, NULL, -1, NULL, NULL,
	    "redis://H_1:1" },
	{ "redis://h:65535/65535", 0, "h", 65535, NULL, 65535, NULL, NULL,
	    "redis://h:65535/65535" },
	{ "rediss://cache.example.com:6380/0", 1, "cache.example.com", 6380,
	    NULL, 0, NULL, NULL, "rediss://cache.example.com:6380/0" },
	{ "redis://user:pass@h:1234/3", 0, "h", 1234, NULL, 3, "user", "pass",
	    "redis://user:***@h:1234/3" },
	/* Redis 5's requirepass: no user name. */
	{ "redis://:pass@h", 0, "h", 6379, NULL, -1, NULL, "pass",
	    "redis://:***@h:6379" },
	/* "user@" is a user name (ioredis, redis-py, go-redis). */
	{ "redis://usergated@h", 0, "h", 6379, NULL, -1, "usergated", NULL,
	    "redis://usergated@h:6379" },
	{ "redis://usergated:@h", 0, "h", 6379, NULL, -1, "usergated", NULL,
	    "redis://usergated@h:6379" },
	{ "redis://:@h", 0, "h", 6379, NULL, -1, NULL, NULL,
	    "redis://h:6379" },
	/* Percent-decoding, and the first ':' splits user from password. */
	{ "redis://us%40er:p%3Aa%2Fs%23s%25@h", 0, "h", 6379, NULL, -1,
	    "us@er", "p:a/s#s%", "redis://us%40er:***@h:6379" },
	{ "redis://u:a:b@h", 0, "h", 6379, NULL, -1, "u", "a:b",
	    "redis://u:***@h:6379" },
	/* The last '@' ends the user info: an '@' in a password may stay. */
	{ "redis://u:p@ss@h:7", 0, "h", 7, NULL, -1, "u", "p@ss",
	    "redis://u:***@h:7" },
	{ "redis://%E2%82%AC:x@h", 0, "h", 6379, NULL, -1, "\xe2\x82\xac",
	    "x", "redis://%E2%82%AC:***@h:6379" },
	{ "redis://[::1]:6379/0", 0, "::1", 6379, NULL, 0, NULL, NULL,
	    "redis://[::1]:6379/0" },
	{ "redis://[::1]", 0, "::1", 6379, NULL, -1, NULL, NULL,
	    "redis://[::1]:6379" },
	{ "rediss://u:p@[2001:db8::7]:6380/1", 1, "2001:db8::7", 6380, NULL,
	    1, "u", "p", "rediss://u:***@[2001:db8::7]:6380/1" },
	{ "redis://h?db=4", 0, "h", 6379, NULL, 4, NULL, NULL,
	    "redis://h:6379/4" },
	{ "redis://h/4?db=4", 0, "h", 6379, NULL, 4, NULL, NULL,
	    "redis://h:6379/4" },
	{ "unix:///run/redis/redis.sock", 0, NULL, 0, "/run/redis/redis.sock",
	    -1, NULL, NULL, "unix:///run/redis/redis.sock" },
	{ "unix:///run/redis.sock?db=3", 0, NULL, 0, "/run/redis.sock", 3,
	    NULL, NULL, "unix:///run/redis.sock?db=3" },
	{ "unix://u:p@/run/redis.sock?&db=3&", 0, NULL, 0, "/run/redis.sock",
	    3, "u", "p", "unix://u:***@/run/redis.sock?db=3" },
	{ "unix:///run/a@b:c.sock", 0, NULL, 0, "/run/a@b:c.sock", -1, NULL,
	    NULL, "unix:///run/a@b:c.sock" },
	{ "unix:///tmp/a%20b.sock", 0, NULL, 0, "/tmp/a b.sock", -1, NULL,
	    NULL, "unix:///tmp/a b.sock" },
};

static void
test_good(void)
{
	struct redis_url u;
	char		 err[ERRLEN], shown[512];
	size_t		 i;

	for (i = 0; i < NELEM(good_cases); i++) {
		const struct good_case *c = &good_cases[i];

		if (redis_url_parse(c->url, &u, err, sizeof(err)) == -1) {
			url_str(c->url, "parses", err, "", __LINE__);
			continue;
		}
		url_long(c->url, "tls", u.tls, c->tls, __LINE__);
		url_str(c->url, "host", u.host, c->host, __LINE__);
		url_long(c->url, "port", u.port, c->port, __LINE__);
		url_str(c->url, "path", u.path, c->path, __LINE__);
		url_long(c->url, "db", u.db, c->db, __LINE__);
		url_str(c->url, "username", u.username, c->username, __LINE__);
		url_str(c->url, "password", u.password, c->password, __LINE__);
		redis_url_show(&u, u.password != NULL, shown, sizeof(shown));
		url_str(c->url, "shown", shown, c->shown, __LINE__);
		redis_url_free(&u);
		CU_ASSERT_PTR_NULL(u.host);
		CU_ASSERT_PTR_NULL(u.password);
	}
}

/* ------------------------------------------------------------------ */

#define NOT_NUMBER_DB	"expected /DB after the host, a database number " \
			    "from 0 to 65535"
#define BAD_PORT	"the port is not a number from 1 to 65535"
#define BAD_HOST_CHAR	"the host holds a character other than letters, " \
			    "digits, '.', '-' and '_' (an IPv6 address goes " \
			    "in brackets; a '@' or '/' in the password must " \
			    "be percent-encoded)"
#define BAD_USER_PCT	"bad percent-encoding in the user name (expected " \
			    "%XX with two hex digits, not %00)"
#define BAD_PASS_PCT	"bad percent-encoding in the password (expected " \
			    "%XX with two hex digits, not %00)"
#define NO_SCHEME	"expected redis://, rediss:// or unix:// at the start"
#define NO_UNIX_HOST	"a unix:// URL has no host (expected " \
			    "unix:///path/to/redis.sock, three slashes)"

static const struct bad_case {
	const char	*url;
	const char	*want;
} bad_cases[] = {
	{ "", NO_SCHEME },
	{ "127.0.0.1:6379", NO_SCHEME },
	{ "redis:/h", NO_SCHEME },
	{ "http://h", "unknown scheme (expected redis://, rediss:// or "
	    "unix://)" },
	{ "redis+sentinel://h", "unknown scheme (expected redis://, "
	    "rediss:// or unix://)" },
	{ "redis://", "no host (expected redis://host[:port][/db])" },
	{ "redis://u:secret@", "no host (expected "
	    "redis://host[:port][/db])" },
	{ "redis://:6379/0", "no host (expected redis://host[:port][/db])" },
	{ "redis://h:0", BAD_PORT },
	{ "redis://h:65536", BAD_PORT },
	{ "redis://h:63x9", BAD_PORT },
	{ "redis://h:-1", BAD_PORT },
	{ "redis://h:99999999999999999999", BAD_PORT },
	{ "redis://h/x", NOT_NUMBER_DB },
	{ "redis://h/-1", NOT_NUMBER_DB },
	{ "redis://h/65536", NOT_NUMBER_DB },
	{ "redis://h/0/", NOT_NUMBER_DB },
	{ "redis://h/0/1", NOT_NUMBER_DB },
	/* A '/' in a password, not encoded: the rest reads as a path. */
	{ "redis://u:pa/ss@h/0", "a '/' in the user name or password must be "
	    "percent-encoded (%2F)" },
	{ "redis://u:p@h/0@x", NOT_NUMBER_DB },
	{ "redis://u:pa#ss@h", "holds a '#' (a '#' in the user name or "
	    "password must be percent-encoded as %23)" },
	{ "redis://h/0#frag", "holds a '#' (a '#' in the user name or "
	    "password must be percent-encoded as %23)" },
	{ "redis://u:p ss@h", "holds a space or a control character "
	    "(percent-encode it)" },
	{ "redis://u:p\tss@h", "holds a space or a control character "
	    "(percent-encode it)" },
	{ "redis://h,i", BAD_HOST_CHAR },
	{ "redis://::1/0", BAD_HOST_CHAR },
	{ "redis://[::1/0", "an IPv6 address opened with '[' is not closed "
	    "with ']'" },
	{ "redis://[]:1", "expected an IPv6 address between '[' and ']'" },
	{ "redis://[host]:1", "expected an IPv6 address between '[' and ']'" },
	{ "redis://[1.2.3.4]", "expected an IPv6 address between '[' and "
	    "']'" },
	{ "redis://[::1]6379", "expected ':' and a port after the IPv6 "
	    "address in brackets" },
	{ "redis://[::1]:0", BAD_PORT },
	{ "redis://us%4@h", BAD_USER_PCT },
	{ "redis://us%zz@h", BAD_USER_PCT },
	{ "redis://us%00er:p@h", BAD_USER_PCT },
	{ "redis://u:p%@h", BAD_PASS_PCT },
	{ "redis://u:p%0@h", BAD_PASS_PCT },
	{ "redis://u:p%00@h", BAD_PASS_PCT },
	{ "redis://h?db=x", "?db= is not a database number from 0 to 65535" },
	{ "redis://h?db=", "?db= is not a database number from 0 to 65535" },
	{ "redis://h/1?db=2", "two different databases (in the path and in "
	    "?db=)" },
	{ "redis://h?password=x", "unknown query parameter (only ?db=N is "
	    "understood)" },
	{ "redis://h?d", "unknown query parameter (only ?db=N is "
	    "understood)" },
	{ "unix://run/redis.sock", NO_UNIX_HOST },
	{ "unix://u:p@h/run/redis.sock", NO_UNIX_HOST },
	{ "unix://", "no socket path (expected unix:///path/to/redis.sock, "
	    "three slashes)" },
	{ "unix://?db=1", "no socket path (expected "
	    "unix:///path/to/redis.sock, three slashes)" },
	{ "unix:///a%zz", "bad percent-encoding in the socket path" },
	{ "unix:///run/redis.sock?db=65536", "?db= is not a database number "
	    "from 0 to 65535" },
	{ "unix:///0123456789012345678901234567890123456789012345678901234567"
	    "8901234567890123456789012345678901234567890123456789", "the "
	    "socket path is longer than 107 bytes (the limit of a Unix "
	    "socket)" },
};

static void
test_bad(void)
{
	struct redis_url u;
	char		 err[ERRLEN], what[600];
	size_t		 i;

	for (i = 0; i < NELEM(bad_cases); i++) {
		const struct bad_case *c = &bad_cases[i];

		snprintf(what, sizeof(what), "[%s] is refused", c->url);
		if (redis_url_parse(c->url, &u, err, sizeof(err)) == 0) {
			check_str(what, "(accepted)", c->want, __LINE__);
			redis_url_free(&u);
			continue;
		}
		check_str(what, err, c->want, __LINE__);
		CU_ASSERT_PTR_NULL(u.host);
		CU_ASSERT_PTR_NULL(u.path);
		CU_ASSERT_PTR_NULL(u.username);
		CU_ASSERT_PTR_NULL(u.password);
	}
}

/* No message quotes a byte of the URL: it may hold a password. */
static void
test_secret_not_quoted(void)
{
	static const char *const urls[] = {
		"redis://u:SeCrEt@h:SeCrEt", "redis://u:SeCrEt@h/SeCrEt",
		"redis://u:SeCrEt@h?SeCrEt=1", "redis://SeCrEt:%zz@h",
		"SeCrEt://h", "redis://u:SeCrEt#@h", "redis://u:Se%0gret@h",
		"redis://u:SeCrEt@h,x", "unix://SeCrEt@x/s",
	};
	struct redis_url u;
	char		 err[ERRLEN], what[600];
	size_t		 i;

	for (i = 0; i < NELEM(urls); i++) {
		snprintf(what, sizeof(what), "%s: refused without the secret",
		    urls[i]);
		CU_assertImplementation(redis_url_parse(urls[i], &u, err,
		    sizeof(err)) == -1 && strstr(err, "SeCrEt") == NULL &&
		    strstr(err, "Se%0") == NULL ? CU_TRUE : CU_FALSE,
		    __LINE__, what, __FILE__, "", CU_FALSE);
	}
}

/* The shown form is cut, not overrun, in a short buffer. */
static void
test_show_truncates(void)
{
	struct redis_url u;
	char		 err[ERRLEN], buf[12];

	memset(buf, 'x', sizeof(buf));
	if (redis_url_parse("redis://user:pw@host.example.com/1", &u, err,
	    sizeof(err)) == -1) {
		check_str("parses", err, "", __LINE__);
		return;
	}
	redis_url_show(&u, 1, buf, 8);
	check_str("cut to 7 bytes", buf, "redis:/", __LINE__);
	CU_ASSERT_EQUAL(buf[8], 'x');
	redis_url_show(&u, 0, buf, sizeof(buf));
	check_str("no password, no ***", buf, "redis://use", __LINE__);
	redis_url_free(&u);
}

/* ------------------------------------------------------------------ */

int
main(void)
{
	CU_pSuite	 suite;
	unsigned int	 failures;

	if (CU_initialize_registry() != CUE_SUCCESS)
		return 2;
	if ((suite = CU_add_suite("redis_url", NULL, NULL)) == NULL ||
	    CU_add_test(suite, "good URLs", test_good) == NULL ||
	    CU_add_test(suite, "bad URLs", test_bad) == NULL ||
	    CU_add_test(suite, "secret not quoted",
	    test_secret_not_quoted) == NULL ||
	    CU_add_test(suite, "show truncates", test_show_truncates) ==
	    NULL) {
		CU_cleanup_registry();
		return 2;
	}
	CU_basic_set_mode(CU_BRM_VERBOSE);
	if (CU_basic_run_tests() != CUE_SUCCESS) {
		CU_cleanup_registry();
		return 2;
	}
	failures = CU_get_number_of_failures();
	CU_cleanup_registry();
	return failures > 0 ? 1 : 0;
}
