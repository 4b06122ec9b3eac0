/*
 * test_twilio.c: CUnit tables for twilio.c -- the API base after
 * edge/region, resource URLs, form bodies and answer classification.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <CUnit/Basic.h>
#include <CUnit/CUnit.h>

#include "usergate.h"

#define NELEM(a)	(sizeof(a) / sizeof((a)[0]))

/*
 * Records a failure with the case name and both strings, so a failing
 * table row says which row and what came out.  CUnit copies the message.
 */
static void
check_str(const char *what, const char *got, const char *want, int line)
{
	char	 msg[1024];
	int	 ok;

	if (got == NULL || want == NULL)
		ok = got == want;
	else
		ok = strcmp(got, want) == 0;
	snprintf(msg, sizeof(msg), "%s: got \"%s\", want \"%s\"", what,
	    got != NULL ? got : "(null)", want != NULL ? want : "(null)");
	CU_assertImplementation(ok ? CU_TRUE : CU_FALSE, line, msg, __FILE__,
	    "", CU_FALSE);
}

static void
check_true(int ok, const char *what, int line)
{
	CU_assertImplementation(ok ? CU_TRUE : CU_FALSE, line, what,
	    __FILE__, "", CU_FALSE);
}

/* ------------------------------------------------------------------ */

static const struct api_base_case {
	const char	*name;
	const char	*base_url;
	const char	*edge;
	const char	*region;
	const char	*want;		/* NULL: an error is expected */
	const char	*err_has;	/* substring of the error */
} api_base_cases[] = {
	{ "default", "https://conversations.twilio.com", NULL, NULL,
	    "https://conversations.twilio.com", NULL },
	{ "empty edge/region is unset", "https://conversations.twilio.com",
	    "", "", "https://conversations.twilio.com", NULL },
	{ "edge+region", "https://conversations.twilio.com", "dublin", "ie1",
	    "https://conversations.dublin.ie1.twilio.com", NULL },
	{ "edge only means us1", "https://conversations.twilio.com", "dublin",
	    "", "https://conversations.dublin.us1.twilio.com", NULL },
	{ "edge only, NULL region", "https://conversations.twilio.com",
	    "dublin", NULL, "https://conversations.dublin.us1.twilio.com",
	    NULL },
	{ "region only", "https://conversations.twilio.com", "", "ie1",
	    "https://conversations.ie1.twilio.com", NULL },
	{ "region only, NULL edge", "https://conversations.twilio.com", NULL,
	    "ie1", "https://conversations.ie1.twilio.com", NULL },
	{ "host edge+region replaced",
	    "https://conversations.dublin.ie1.twilio.com", "sydney", "au1",
	    "https://conversations.sydney.au1.twilio.com", NULL },
	{ "host region replaced", "https://conversations.ie1.twilio.com",
	    "tokyo", "jp1", "https://conversations.tokyo.jp1.twilio.com",
	    NULL },
	{ "host region kept when only edge given",
	    "https://conversations.ie1.twilio.com", "dublin", "",
	    "https://conversations.dublin.ie1.twilio.com", NULL },
	{ "host edge kept when only region given",
	    "https://conversations.dublin.ie1.twilio.com", "", "au1",
	    "https://conversations.dublin.au1.twilio.com", NULL },
	{ "host edge+region untouched without settings",
	    "https://conversations.dublin.ie1.twilio.com", NULL, NULL,
	    "https://conversations.dublin.ie1.twilio.com", NULL },
	{ "port kept", "https://conversations.twilio.com:8443", "dublin",
	    "ie1", "https://conversations.dublin.ie1.twilio.com:8443", NULL },
	{ "local fake with port", "http://127.0.0.1:8080", NULL, NULL,
	    "http://127.0.0.1:8080", NULL },
	{ "trailing slash dropped", "https://conversations.twilio.com/", NULL,
	    NULL, "https://conversations.twilio.com", NULL },
	{ "trailing slash with port", "http://localhost:9000/", "", "",
	    "http://localhost:9000", NULL },
	{ "scheme case", "HTTPS://conversations.twilio.com", NULL, NULL,
	    "https://conversations.twilio.com", NULL },
	{ "host suffix case", "https://Conversations.Twilio.COM", "dublin",
	    "ie1", "https://Conversations.dublin.ie1.Twilio.COM", NULL },
	{ "ipv6 literal", "http://[::1]:8080", NULL, NULL,
	    "http://[::1]:8080", NULL },

	{ "bad scheme", "ftp://conversations.twilio.com", NULL, NULL, NULL,
	    "must start with http:// or https://" },
	{ "no scheme", "conversations.twilio.com", NULL, NULL, NULL,
	    "must start with http:// or https://" },
	{ "path", "https://conversations.twilio.com/v1", NULL, NULL, NULL,
	    "must not have a path (\"/v1\")" },
	{ "double slash", "https://conversations.twilio.com//", NULL, NULL,
	    NULL, "must not have a path" },
	{ "query", "https://conversations.twilio.com?a=1", NULL, NULL, NULL,
	    "must not have a query" },
	{ "empty query", "https://conversations.twilio.com/?", NULL, NULL,
	    NULL, "must not have a query" },
	{ "fragment", "https://conversations.twilio.com#x", NULL, NULL, NULL,
	    "must not have a fragment" },
	{ "userinfo", "https://AC123:sekrit@conversations.twilio.com", NULL,
	    NULL, NULL, "must not carry user information" },
	{ "no host", "https://", NULL, NULL, NULL, "has no host" },
	{ "port 0", "https://conversations.twilio.com:0", NULL, NULL, NULL,
	    "port 0" },
	{ "port too large", "https://conversations.twilio.com:99999", NULL,
	    NULL, NULL, "not a valid URL" },
	{ "space in host", "https://conver sations.twilio.com", NULL, NULL,
	    NULL, "not a valid URL" },
	{ "empty", "", NULL, NULL, NULL, "base_url is empty" },
	{ "NULL", NULL, NULL, NULL, NULL, "base_url is empty" },
	{ "edge on a non-twilio host", "http://127.0.0.1:8080", "dublin", "",
	    NULL, "edge/region apply only to a twilio.com host" },
	{ "region on a non-twilio host", "https://example.com", "", "ie1",
	    NULL, "edge/region apply only to a twilio.com host" },
	{ "look-alike host", "https://eviltwilio.com", "dublin", "ie1", NULL,
	    "edge/region apply only to a twilio.com host" },
	{ "bare twilio.com", "https://twilio.com", "dublin", "ie1", NULL,
	    "edge/region apply only to a twilio.com host" },
	{ "too many labels", "https://a.b.c.d.twilio.com", "", "ie1", NULL,
	    "more labels" },
	{ "empty label", "https://conversations..twilio.com", "", "ie1",
	    NULL, "empty label" },
	{ "edge not a label", "https://conversations.twilio.com", "dub.lin",
	    "ie1", NULL, "edge is not a host name label" },
	{ "region not a label", "https://conversations.twilio.com", "dublin",
	    "ie1/x", NULL, "region is not a host name label" },
};

static void
test_api_base(void)
{
	const struct api_base_case *c;
	char	 err[256], what[512];
	char	*got;
	size_t	 i;

	for (i = 0; i < NELEM(api_base_cases); i++) {
		c = &api_base_cases[i];
		err[0] = '\0';
		got = twilio_api_base(c->base_url, c->edge, c->region, err,
		    sizeof(err));
		snprintf(what, sizeof(what), "api_base[%s] (err \"%s\")",
		    c->name, err);
		check_str(what, got, c->want, __LINE__);
		if (c->err_has != NULL) {
			snprintf(what, sizeof(what), "api_base[%s]: error "
			    "\"%s\" lacks \"%s\"", c->name, err, c->err_has);
			check_true(strstr(err, c->err_has) != NULL, what,
			    __LINE__);
		}
		free(got);
	}
}

/* No error message may carry a secret (SPEC §2), not even one that was
 * wrongly put in base_url. */
static void
test_api_base_no_secret_in_error(void)
{
	char	 err[256];
	char	*got;

	got = twilio_api_base("https://AC123:sekrit@conversations.twilio.com",
	    NULL, NULL, err, sizeof(err));
	CU_ASSERT_PTR_NULL(got);
	CU_ASSERT_PTR_NULL(strstr(err, "sekrit"));
	free(got);

	got = twilio_api_base("https://conversations.twilio.com?token=sekrit",
	    NULL, NULL, err, sizeof(err));
	CU_ASSERT_PTR_NULL(got);
	CU_ASSERT_PTR_NULL(strstr(err, "sekrit"));
	free(got);
}

/* ------------------------------------------------------------------ */

static const struct users_url_case {
	const char	*base;
	const char	*service_sid;
	const char	*want;
} users_url_cases[] = {
	{ "https://conversations.twilio.com", NULL,
	    "https://conversations.twilio.com/v1/Users" },
	{ "https://conversations.twilio.com", "",
	    "https://conversations.twilio.com/v1/Users" },
	{ "https://conversations.twilio.com",
	    "IS0123456789abcdef0123456789abcdef",
	    "https://conversations.twilio.com/v1/Services/"
	    "IS0123456789abcdef0123456789abcdef/Users" },
	{ "http://127.0.0.1:8080", "IS0123456789abcdef0123456789abcdef",
	    "http://127.0.0.1:8080/v1/Services/"
	    "IS0123456789abcdef0123456789abcdef/Users" },
	/* Never trusted into a path unescaped. */
	{ "http://h", "IS/../x", "http://h/v1/Services/IS%2F..%2Fx/Users" },
};

static void
test_users_url(void)
{
	const struct users_url_case *c;
	char	 what[256];
	char	*got;
	size_t	 i;

	for (i = 0; i < NELEM(users_url_cases); i++) {
		c = &users_url_cases[i];
		got = twilio_users_url(c->base, c->service_sid);
		snprintf(what, sizeof(what), "users_url[%zu]", i);
		check_str(what, got, c->want, __LINE__);
		free(got);
	}
	CU_ASSERT_PTR_NULL(twilio_users_url(NULL, NULL));
}

static const struct user_url_case {
	const char	*service_sid;
	const char	*sid;
	const char	*want;
} user_url_cases[] = {
	{ NULL, "US0123456789abcdef0123456789abcdef",
	    "https://c.twilio.com/v1/Users/"
	    "US0123456789abcdef0123456789abcdef" },
	{ NULL, "a@b.com", "https://c.twilio.com/v1/Users/a%40b.com" },
	{ NULL, "a/b", "https://c.twilio.com/v1/Users/a%2Fb" },
	{ NULL, "a b", "https://c.twilio.com/v1/Users/a%20b" },
	{ NULL, "a+b", "https://c.twilio.com/v1/Users/a%2Bb" },
	{ NULL, "100%", "https://c.twilio.com/v1/Users/100%25" },
	{ NULL, "\xc3\xbc", "https://c.twilio.com/v1/Users/%C3%BC" },
	{ NULL, "#?&", "https://c.twilio.com/v1/Users/%23%3F%26" },
	/* Dot-segments would be removed by libcurl: escaped whole. */
	{ NULL, ".", "https://c.twilio.com/v1/Users/%2E" },
	{ NULL, "..", "https://c.twilio.com/v1/Users/%2E%2E" },
	{ NULL, "...", "https://c.twilio.com/v1/Users/..." },
	{ NULL, "a.b", "https://c.twilio.com/v1/Users/a.b" },
	{ NULL, "un-reserved_.~",
	    "https://c.twilio.com/v1/Users/un-reserved_.~" },
	{ "IS0123456789abcdef0123456789abcdef", "a@b.com",
	    "https://c.twilio.com/v1/Services/"
	    "IS0123456789abcdef0123456789abcdef/Users/a%40b.com" },
	{ NULL, "", NULL },
	{ NULL, NULL, NULL },
};

static void
test_user_url(void)
{
	const struct user_url_case *c;
	char	 what[256];
	char	*got;
	size_t	 i;

	for (i = 0; i < NELEM(user_url_cases); i++) {
		c = &user_url_cases[i];
		got = twilio_user_url("https://c.twilio.com", c->service_sid,
		    c->sid);
		snprintf(what, sizeof(what), "user_url[%zu] sid \"%s\"", i,
		    c->sid != NULL ? c->sid : "(null)");
		check_str(what, got, c->want, __LINE__);
		free(got);
	}
}

/* ------------------------------------------------------------------ */

static const struct form_case {
	const char	*name;
	struct request	 req;
	int		 with_identity;
	const char	*want;
} form_cases[] = {
	{ "identity only",
	    { .identity = "alice", .webhook_enabled = -1 }, 1,
	    "Identity=alice" },
	{ "all four",
	    { .identity = "alice@example.com", .friendly_name = "Alice A",
	      .attributes = "{\"a\":1}",
	      .role_sid = "RL0123456789abcdef0123456789abcdef",
	      .webhook_enabled = 1 }, 1,
	    "Identity=alice%40example.com&FriendlyName=Alice%20A"
	    "&Attributes=%7B%22a%22%3A1%7D"
	    "&RoleSid=RL0123456789abcdef0123456789abcdef" },
	{ "utf-8 and separators inside values",
	    { .identity = "j\xc3\xbcrgen", .friendly_name = "a&b=c+d",
	      .webhook_enabled = -1 }, 1,
	    "Identity=j%C3%BCrgen&FriendlyName=a%26b%3Dc%2Bd" },
	{ "identity and role only",
	    { .identity = "bob",
	      .role_sid = "RL0123456789abcdef0123456789abcdef",
	      .webhook_enabled = 0 }, 1,
	    "Identity=bob&RoleSid=RL0123456789abcdef0123456789abcdef" },
	{ "update leaves identity out",
	    { .identity = "alice", .friendly_name = "Alice",
	      .attributes = "{}", .webhook_enabled = -1 }, 0,
	    "FriendlyName=Alice&Attributes=%7B%7D" },
	{ "update of nothing",
	    { .identity = "alice", .webhook_enabled = 1 }, 0, "" },
	{ "empty friendly name is still given",
	    { .identity = "alice", .friendly_name = "",
	      .webhook_enabled = -1 }, 1, "Identity=alice&FriendlyName=" },
	{ "nothing at all", { .webhook_enabled = -1 }, 1, "" },
	/* RFC 3986's unreserved set kept, everything else escaped. */
	{ "unreserved kept, the rest escaped",
	    { .identity = "A-z_0.9~", .friendly_name = "x*y%z/ ~",
	      .role_sid = "~", .webhook_enabled = -1 }, 1,
	    "Identity=A-z_0.9~&FriendlyName=x%2Ay%25z%2F%20~&RoleSid=~" },
};

static void
test_form(void)
{
	const struct form_case *c;
	char	 what[256];
	char	*got;
	size_t	 i;

	for (i = 0; i < NELEM(form_cases); i++) {
		c = &form_cases[i];
		got = twilio_form(&c->req, c->with_identity);
		snprintf(what, sizeof(what), "form[%s]", c->name);
		check_str(what, got, c->want, __LINE__);
		/* WebhookEnabled is a header, never a form field. */
		if (got != NULL)
			check_true(strstr(got, "Webhook") == NULL,
			    "form carries WebhookEnabled", __LINE__);
		free(got);
	}
	CU_ASSERT_PTR_NULL(twilio_form(NULL, 1));
}

/* ------------------------------------------------------------------ */

static const struct classify_case {
	long		 status;
	long		 code;
	enum twilio_outcome want;
} classify_cases[] = {
	{ 201,     0, TWILIO_CREATED },
	{ 200,     0, TWILIO_OK },
	{ 204,     0, TWILIO_OK },
	{ 409, 50201, TWILIO_EXISTS },
	{ 429, 20429, TWILIO_RETRY },
	{ 429, 50063, TWILIO_RETRY },
	{ 429, 50074, TWILIO_RETRY },
	{ 429,     0, TWILIO_RETRY },
	{ 409, 50213, TWILIO_RETRY },
	{ 500,     0, TWILIO_RETRY },
	{ 502,     0, TWILIO_RETRY },
	{ 503, 20003, TWILIO_RETRY },
	{ 504,     0, TWILIO_RETRY },
	{   0,     0, TWILIO_RETRY },	/* connect error, timeout, reset */
	{ 501,     0, TWILIO_RETRY },	/* our documented choice */
	{ 505,     0, TWILIO_RETRY },
	{ 401, 20003, TWILIO_AUTH },
	{ 403, 20003, TWILIO_AUTH },
	{ 400, 50200, TWILIO_REJECTED },
	{ 404, 20404, TWILIO_REJECTED },
	{ 409,     0, TWILIO_REJECTED },
	{ 409, 50200, TWILIO_REJECTED },
	{ 413,     0, TWILIO_REJECTED },
	{ 422,     0, TWILIO_REJECTED },
	{ 499,     0, TWILIO_REJECTED },
	{ 301,     0, TWILIO_REJECTED },
	{ 100,     0, TWILIO_RETRY },
	{ 600,     0, TWILIO_RETRY },
	{  -1,     0, TWILIO_RETRY },
};

static void
test_classify(void)
{
	const struct classify_case *c;
	enum twilio_outcome got;
	char	 what[128];
	size_t	 i;

	for (i = 0; i < NELEM(classify_cases); i++) {
		c = &classify_cases[i];
		got = twilio_classify(c->status, c->code);
		snprintf(what, sizeof(what), "classify(%ld, %ld): got %d, "
		    "want %d", c->status, c->code, (int)got, (int)c->want);
		check_true(got == c->want, what, __LINE__);
	}
}

/* ------------------------------------------------------------------ */

int
main(void)
{
	CU_pSuite	 suite;
	unsigned int	 failures;

	if (CU_initialize_registry() != CUE_SUCCESS)
		return 2;
	if ((suite = CU_add_suite("twilio", NULL, NULL)) == NULL ||
	    CU_add_test(suite, "api_base", test_api_base) == NULL ||
	    CU_add_test(suite, "api_base keeps secrets out of errors",
	    test_api_base_no_secret_in_error) == NULL ||
	    CU_add_test(suite, "users_url", test_users_url) == NULL ||
	    CU_add_test(suite, "user_url", test_user_url) == NULL ||
	    CU_add_test(suite, "form", test_form) == NULL ||
	    CU_add_test(suite, "classify", test_classify) == NULL) {
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
