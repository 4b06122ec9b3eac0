/*
 * test_status.c: CUnit table for the status socket's command parser
 * (status_parse in command.c, SPEC §6.2).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <CUnit/Basic.h>
#include <CUnit/CUnit.h>

#include "usergate.h"

#define NELEM(a) (sizeof(a) / sizeof((a)[0]))

#define UNKNOWN	  "error: unknown command, try help"
#define LIST_ERR  "error: dead list takes a count from 1 to 10000"
#define RETRY_ERR "error: dead retry takes a count from 1 to 10000, or all"

static const struct parse_case {
	const char *line;
	enum status_verb verb;
	long count;
	const char *error;
} parse_cases[] = {
	/* Every command of the table. */
	{ "show stats", STATUS_SHOW_STATS, 0, NULL },
	{ "show metrics", STATUS_SHOW_METRICS, 0, NULL },
	{ "show queue", STATUS_SHOW_QUEUE, 0, NULL },
	{ "health", STATUS_HEALTH, 0, NULL },
	{ "pause", STATUS_PAUSE, 0, NULL },
	{ "resume", STATUS_RESUME, 0, NULL },
	{ "reload", STATUS_RELOAD, 0, NULL },
	{ "dead list", STATUS_DEAD_LIST, 10, NULL },
	{ "dead list 3", STATUS_DEAD_LIST, 3, NULL },
	{ "dead list 10000", STATUS_DEAD_LIST, 10000, NULL },
	{ "dead retry", STATUS_DEAD_RETRY, -1, NULL },
	{ "dead retry all", STATUS_DEAD_RETRY, -1, NULL },
	{ "dead retry ALL", STATUS_DEAD_RETRY, -1, NULL },
	{ "dead retry 2", STATUS_DEAD_RETRY, 2, NULL },
	{ "help", STATUS_HELP, 0, NULL },
	/* Case and blanks do not matter. */
	{ "SHOW Stats", STATUS_SHOW_STATS, 0, NULL },
	{ "  health  ", STATUS_HEALTH, 0, NULL },
	{ "show\tqueue", STATUS_SHOW_QUEUE, 0, NULL },
	{ "dead  list\t5 ", STATUS_DEAD_LIST, 5, NULL },
	/* Nothing to answer. */
	{ "", STATUS_EMPTY, 0, NULL },
	{ "   \t ", STATUS_EMPTY, 0, NULL },
	/* Unknown. */
	{ "show", STATUS_ERROR, 0, UNKNOWN },
	{ "show nothing", STATUS_ERROR, 0, UNKNOWN },
	{ "show stats now", STATUS_ERROR, 0, UNKNOWN },
	{ "health check", STATUS_ERROR, 0, UNKNOWN },
	{ "stats", STATUS_ERROR, 0, UNKNOWN },
	{ "dead", STATUS_ERROR, 0, UNKNOWN },
	{ "dead purge", STATUS_ERROR, 0, UNKNOWN },
	{ "helpme", STATUS_ERROR, 0, UNKNOWN },
	{ "a b c d e f", STATUS_ERROR, 0, UNKNOWN },
	{ "GET / HTTP/1.1", STATUS_ERROR, 0, UNKNOWN },
	/* Bad counts. */
	{ "dead list 0", STATUS_ERROR, 0, LIST_ERR },
	{ "dead list -1", STATUS_ERROR, 0, LIST_ERR },
	{ "dead list +3", STATUS_ERROR, 0, LIST_ERR },
	{ "dead list 10001", STATUS_ERROR, 0, LIST_ERR },
	{ "dead list all", STATUS_ERROR, 0, LIST_ERR },
	{ "dead list 3x", STATUS_ERROR, 0, LIST_ERR },
	{ "dead list 99999999999999999999", STATUS_ERROR, 0, LIST_ERR },
	{ "dead list 1 2", STATUS_ERROR, 0, LIST_ERR },
	{ "dead retry 0", STATUS_ERROR, 0, RETRY_ERR },
	{ "dead retry some", STATUS_ERROR, 0, RETRY_ERR },
	{ "dead retry all 2", STATUS_ERROR, 0, RETRY_ERR },
	/* Not text. */
	{ "health\x01", STATUS_ERROR, 0, UNKNOWN },
	{ "\x1b[Ahealth", STATUS_ERROR, 0, UNKNOWN },
	{ "h\xc3\xa9lth", STATUS_ERROR, 0, UNKNOWN },
};

static void
test_parse(void)
{
	struct status_command cmd;
	char msg[512];
	size_t i;

	for (i = 0; i < NELEM(parse_cases); i++) {
		const struct parse_case *t = &parse_cases[i];
		int ok;

		status_parse(t->line, strlen(t->line), &cmd);
		ok = cmd.verb == t->verb &&
		    (t->verb != STATUS_DEAD_LIST &&
				t->verb != STATUS_DEAD_RETRY ?
			    1 :
			    cmd.count == t->count) &&
		    (t->error == NULL ? cmd.error == NULL :
					cmd.error != NULL &&
				strcmp(cmd.error, t->error) == 0);
		snprintf(msg, sizeof(msg), "\"%s\": verb %d count %ld error %s",
		    t->line, (int)cmd.verb, cmd.count,
		    cmd.error ? cmd.error : "(none)");
		CU_assertImplementation(ok ? CU_TRUE : CU_FALSE, __LINE__, msg,
		    __FILE__, "", CU_FALSE);
	}
}

/* A NUL inside the line (binary input) is not text either. */
static void
test_parse_nul(void)
{
	struct status_command cmd;

	status_parse("health\0x", 8, &cmd);
	CU_ASSERT_EQUAL(cmd.verb, STATUS_ERROR);
	CU_ASSERT_STRING_EQUAL(cmd.error, UNKNOWN);
}

static void
test_parse_long(void)
{
	struct status_command cmd;
	size_t len = 100000;
	char *line = malloc(len + 1);

	CU_ASSERT_FATAL(line != NULL);
	memset(line, 'a', len);
	line[len] = '\0';
	status_parse(line, len, &cmd);
	CU_ASSERT_EQUAL(cmd.verb, STATUS_ERROR);
	CU_ASSERT_STRING_EQUAL(cmd.error, "error: line too long");
	/* At the limit it is still parsed (and unknown). */
	status_parse(line, 1024, &cmd);
	CU_ASSERT_STRING_EQUAL(cmd.error, UNKNOWN);
	/* A real command padded with blanks up to the limit works. */
	memset(line, ' ', 1024);
	memcpy(line, "health", 6);
	status_parse(line, 1024, &cmd);
	CU_ASSERT_EQUAL(cmd.verb, STATUS_HEALTH);
	status_parse(line, 1025, &cmd);
	CU_ASSERT_EQUAL(cmd.verb, STATUS_ERROR);
	free(line);
}

/* ------------------------------------------------------------------ */

int
main(void)
{
	CU_pSuite suite;
	unsigned int failures;

	if (CU_initialize_registry() != CUE_SUCCESS)
		return 2;
	if ((suite = CU_add_suite("status", NULL, NULL)) == NULL ||
	    CU_add_test(suite, "parse", test_parse) == NULL ||
	    CU_add_test(suite, "parse NUL", test_parse_nul) == NULL ||
	    CU_add_test(suite, "parse long", test_parse_long) == NULL) {
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
