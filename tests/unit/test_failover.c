/*
 * test_failover.c: CUnit table for failover.c -- which Redis error replies
 * make the link drop, re-resolve and retry, and which stay errors.
 */
#include <stdio.h>

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

int
main(void)
{
	CU_pSuite	 suite;
	unsigned int	 failures;

	if (CU_initialize_registry() != CUE_SUCCESS)
		return 2;
	if ((suite = CU_add_suite("failover", NULL, NULL)) == NULL ||
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
