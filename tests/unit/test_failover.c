/*
 * test_failover.c: CUnit table for failover.c -- which Redis error replies
 * make the link drop, re-resolve and retry, and which stay errors.
 */
#include <stdio.h>
#include <string.h>

#include <CUnit/Basic.h>
#include <CUnit/CUnit.h>

#include "usergate.h"

#define NELEM(a)	(sizeof(a) / sizeof((a)[0]))

static const struct {
	const char	*text;
	int		 failover;
} cases[] = {
	/* The failover errors, as Redis 6.2 and 7 word them. */
	{ "READONLY You can't write against a read only replica.", 1 },
	{ "UNBLOCKED force unblock from blocking operation, instance state "
	    "changed (master -> replica?)", 1 },
	{ "LOADING Redis is loading the dataset in memory", 1 },
	{ "MASTERDOWN Link with MASTER is down and replica-serve-stale-data "
	    "is set to 'no'.", 1 },
	{ "NOREPLICAS Not enough good replicas to write.", 1 },
	{ "REDIRECT 127.0.0.1:6380", 1 },
	{ "MOVED 3999 127.0.0.1:6381", 1 },
	{ "ASK 3999 127.0.0.1:6381", 1 },
	{ "TRYAGAIN Multiple keys request during rehashing of slot", 1 },
	{ "READONLY", 1 },
	/* Redis 7: an error inside a script keeps its code. */
	{ "READONLY You can't write against a read only replica. script: "
	    "abc, on @user_script:3.", 1 },
	/* Redis 6.2 wraps it. */
	{ "ERR Error running script (call to f_abc): @user_script:3: "
	    "@user_script: 3: -READONLY You can't write against a read only "
	    "replica.", 1 },
	/* Not failovers: ours to report, or the script's own. */
	{ "NOSCRIPT No matching script. Please use EVAL.", 0 },
	{ "WRONGTYPE Operation against a key holding the wrong kind of value",
	    0 },
	{ "WRONGTYPE key usergate:requests", 0 },
	{ "OOM command not allowed when used memory > 'maxmemory'.", 0 },
	{ "WRONGPASS invalid username-password pair or user is disabled.", 0 },
	{ "NOAUTH Authentication required.", 0 },
	{ "NOPERM this user has no permissions to run the 'role' command", 0 },
	{ "EXECABORT Transaction discarded because of previous errors.", 0 },
	{ "ERR unknown command 'BLMOVE'", 0 },
	{ "ERR Error running script (call to f_abc): @user_script:3: "
	    "user_script:3: attempt to compare nil with number", 0 },
	/* A code only counts as a whole word at the start. */
	{ "READONLYX nothing", 0 },
	{ "ERR READONLY mentioned later", 0 },
	{ "readonly you can't write", 0 },
	{ "", 0 },
	{ NULL, 0 },
};

static void
test_classify(void)
{
	char msg[512];
	size_t i;
	int got;

	for (i = 0; i < NELEM(cases); i++) {
		got = redis_error_is_failover(cases[i].text);
		snprintf(msg, sizeof(msg), "\"%s\": got %d, want %d",
		    cases[i].text != NULL ? cases[i].text : "(null)", got,
		    cases[i].failover);
		CU_assertImplementation(got == cases[i].failover ? CU_TRUE :
		    CU_FALSE, __LINE__, msg, __FILE__, "", CU_FALSE);
	}
}

/* MOVED's address; ASK and anything else are not read as one. */
static const struct {
	const char	*text;
	int		 ok;
	const char	*host;
	unsigned	 port;
} moved_cases[] = {
	{ "MOVED 3999 127.0.0.1:6381", 0, "127.0.0.1", 6381 },
	{ "MOVED 0 ::1:7000", 0, "::1", 7000 },
	{ "MOVED 16383 redis-2.example:6379", 0, "redis-2.example", 6379 },
	{ "MOVED 3999 :6381", 0, "", 6381 },
	{ "ASK 3999 127.0.0.1:6381", -1, NULL, 0 },
	{ "MOVED 3999", -1, NULL, 0 },
	{ "MOVED 3999 127.0.0.1", -1, NULL, 0 },
	{ "MOVED 3999 127.0.0.1:0", -1, NULL, 0 },
	{ "MOVED 3999 127.0.0.1:65536", -1, NULL, 0 },
	{ "MOVED 3999 127.0.0.1:63x", -1, NULL, 0 },
	{ "READONLY", -1, NULL, 0 },
	{ NULL, -1, NULL, 0 },
};

static void
test_moved(void)
{
	char host[64], msg[256];
	unsigned port;
	size_t i;
	int got, ok;

	for (i = 0; i < NELEM(moved_cases); i++) {
		port = 0;
		got = redis_moved_address(moved_cases[i].text, host,
		    sizeof(host), &port);
		ok = got == moved_cases[i].ok && (got != 0 ||
		    (strcmp(host, moved_cases[i].host) == 0 &&
		    port == moved_cases[i].port));
		snprintf(msg, sizeof(msg), "\"%s\": got %d %s:%u",
		    moved_cases[i].text != NULL ? moved_cases[i].text :
		    "(null)", got, got == 0 ? host : "", port);
		CU_assertImplementation(ok ? CU_TRUE : CU_FALSE, __LINE__, msg,
		    __FILE__, "", CU_FALSE);
	}
	/* A host longer than the buffer is refused, not cut. */
	CU_ASSERT_EQUAL(redis_moved_address("MOVED 1 abcdefgh:1", host, 8,
	    &port), -1);
}

/* Redis Cluster's hash tag rule: first '{', first '}' after it, not
 * empty. */
static const struct {
	const char	*prefix;
	const char	*tag;		/* NULL: the prefix fixes no slot */
} tag_cases[] = {
	{ "{usergate}:", "usergate" },
	{ "app:{ug}:x:", "ug" },
	{ "{a}{b}:", "a" },
	{ "{{a}}:", "{a" },
	{ "usergate:", NULL },
	{ "{}usergate:", NULL },
	{ "{usergate:", NULL },
	{ "}{usergate:", NULL },
	{ "", NULL },
};

static void
test_hash_tag(void)
{
	const char *tag;
	char msg[256];
	size_t i, len;
	int got, ok;

	for (i = 0; i < NELEM(tag_cases); i++) {
		got = redis_hash_tag(tag_cases[i].prefix, &tag, &len);
		ok = tag_cases[i].tag == NULL ? got == 0 : got == 1 &&
		    len == strlen(tag_cases[i].tag) &&
		    memcmp(tag, tag_cases[i].tag, len) == 0;
		snprintf(msg, sizeof(msg), "\"%s\": got %d",
		    tag_cases[i].prefix, got);
		CU_assertImplementation(ok ? CU_TRUE : CU_FALSE, __LINE__, msg,
		    __FILE__, "", CU_FALSE);
	}
}

int
main(void)
{
	CU_pSuite	 suite;
	unsigned int	 failures;

	if (CU_initialize_registry() != CUE_SUCCESS)
		return 2;
	if ((suite = CU_add_suite("failover", NULL, NULL)) == NULL ||
	    CU_add_test(suite, "classify", test_classify) == NULL ||
	    CU_add_test(suite, "moved", test_moved) == NULL ||
	    CU_add_test(suite, "hash tag", test_hash_tag) == NULL) {
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
