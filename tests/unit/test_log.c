/*
 * test_log.c: CUnit tables for log.c -- value escaping, level names, and
 * the exact shape of a line as it reaches stderr (timestamp or journald
 * priority, logfmt body, one newline, debug dropped at info) and the
 * fields of a journal entry.
 */
#include <errno.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <CUnit/Basic.h>
#include <CUnit/CUnit.h>

#include "usergate.h"

#define NELEM(a)	(sizeof(a) / sizeof((a)[0]))
/* log.c's LOG_LINE_MAX: no line is longer, newline included. */
#define LINE_MAX_BYTES	4096

static void
check_str(const char *what, const char *got, const char *want, int line)
{
	char	 msg[1024];

	snprintf(msg, sizeof(msg), "%s: got [%s], want [%s]", what,
	    got != NULL ? got : "(null)", want != NULL ? want : "(null)");
	CU_assertImplementation(got != NULL && want != NULL &&
	    strcmp(got, want) == 0 ? CU_TRUE : CU_FALSE, line, msg, __FILE__,
	    "", CU_FALSE);
}

static void
check_true(const char *what, int ok, int line)
{
	CU_assertImplementation(ok ? CU_TRUE : CU_FALSE, line, what, __FILE__,
	    "", CU_FALSE);
}

/* ------------------------------------------------------------------ */

static const struct escape_case {
	const char	*name;
	const char	*value;
	const char	*want;
} escape_cases[] = {
	{ "plain",		"created",		"created" },
	{ "safe punctuation",	"a-b.c_d:e/f@g+h,i",	"a-b.c_d:e/f@g+h,i" },
	{ "digits",		"0123456789",		"0123456789" },
	{ "empty string",	"",			"\"\"" },
	{ "space",		"request created",	"\"request created\"" },
	{ "equals sign",	"k=v",			"\"k=v\"" },
	{ "double quote",	"say \"hi\"",		"\"say \\\"hi\\\"\"" },
	{ "backslash",		"a\\b",			"\"a\\\\b\"" },
	{ "newline",		"a\nb",			"\"a\\nb\"" },
	{ "carriage return",	"a\rb",			"\"a\\rb\"" },
	{ "tab",		"a\tb",			"\"a\\tb\"" },
	{ "control 0x01",	"\x01",			"\"\\x01\"" },
	{ "control 0x1b (ESC)",	"\x1b[31m",		"\"\\x1b[31m\"" },
	{ "DEL 0x7f",		"a\x7f",		"\"a\\x7f\"" },
	{ "UTF-8 passthrough",	"h\xc3\xa9llo \xe2\x82\xac \xf0\x9f\x98\x80",
	    "\"h\xc3\xa9llo \xe2\x82\xac \xf0\x9f\x98\x80\"" },
	{ "UTF-8 alone",	"\xc3\xa9",		"\"\xc3\xa9\"" },
	{ "stray continuation",	"a\x80z",		"\"a\\x80z\"" },
	{ "invalid byte 0xff",	"\xff",			"\"\\xff\"" },
	{ "truncated UTF-8",	"\xe2\x82",		"\"\\xe2\\x82\"" },
	{ "overlong UTF-8",	"\xc0\xaf",		"\"\\xc0\\xaf\"" },
	{ "surrogate",		"\xed\xa0\x80",		"\"\\xed\\xa0\\x80\"" },
	{ "forged line",	"x\nlevel=error msg=forged",
	    "\"x\\nlevel=error msg=forged\"" },
	{ "e-mail identity",	"alice@example.com",	"alice@example.com" },
};

static void
test_escape(void)
{
	char	 buf[256];
	size_t	 i;

	for (i = 0; i < NELEM(escape_cases); i++) {
		buf[0] = '\0';
		log_escape(escape_cases[i].value, buf, sizeof(buf));
		check_str(escape_cases[i].name, buf, escape_cases[i].want,
		    __LINE__);
	}
}

/* Appends, as documented, and cuts only between whole units. */
static const struct truncate_case {
	const char	*name;
	const char	*value;
	size_t		 size;
	const char	*want;
} truncate_cases[] = {
	{ "fits exactly",	"abcdefg",		8,	"abcdefg" },
	{ "bare cut",		"abcdefghijkl",		8,	"abcd..." },
	{ "quoted cut",		"a b c d e f",		10,	"\"a b ...\"" },
	{ "no half escape",	"\n\n\n\n\n",		10,	"\"\\n\\n...\"" },
	{ "no half hex escape",	"\x01\x01\x01",		12,	"\"\\x01...\"" },
	{ "no half UTF-8",	"\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac", 10,
	    "\"\xe2\x82\xac...\"" },
	{ "tiny buffer",	"abcdef",		3,	".." },
	{ "empty in tiny",	"",			3,	"\"\"" },
	{ "nothing fits",	"",			1,	"" },
};

static void
test_escape_truncation(void)
{
	char	 buf[64];
	size_t	 i;

	for (i = 0; i < NELEM(truncate_cases); i++) {
		memset(buf, 'Z', sizeof(buf));
		buf[0] = '\0';
		log_escape(truncate_cases[i].value, buf, truncate_cases[i].size);
		check_str(truncate_cases[i].name, buf, truncate_cases[i].want,
		    __LINE__);
		check_true("stays inside size",
		    strlen(buf) < truncate_cases[i].size, __LINE__);
	}

	/* "Appends": what is in buf stays. */
	snprintf(buf, sizeof(buf), "k=");
	log_escape("a b", buf, sizeof(buf));
	check_str("appends", buf, "k=\"a b\"", __LINE__);
	/* A full, unterminated buffer is left alone. */
	memset(buf, 'x', 4);
	log_escape("a", buf, 4);
	check_true("unterminated buffer untouched",
	    memcmp(buf, "xxxx", 4) == 0, __LINE__);
	/* NULL is written as an empty value. */
	buf[0] = '\0';
	log_escape(NULL, buf, sizeof(buf));
	check_str("NULL value", buf, "\"\"", __LINE__);
}

/* ------------------------------------------------------------------ */

static const struct level_case {
	const char	*name;
	int		 ok;
	enum log_level	 want;
} level_cases[] = {
	{ "error",	1, LOG_LEVEL_ERROR },
	{ "warning",	1, LOG_LEVEL_WARNING },
	{ "info",	1, LOG_LEVEL_INFO },
	{ "debug",	1, LOG_LEVEL_DEBUG },
	{ "warn",	0, 0 },
	{ "Info",	0, 0 },
	{ "INFO",	0, 0 },
	{ "",		0, 0 },
	{ "info ",	0, 0 },
	{ "information",	0, 0 },
	{ "trace",	0, 0 },
	{ "3",		0, 0 },
};

static void
test_level_parse(void)
{
	enum log_level	 got;
	char		 what[128];
	size_t		 i;
	int		 r;

	for (i = 0; i < NELEM(level_cases); i++) {
		got = (enum log_level)99;
		r = log_level_parse(level_cases[i].name, &got);
		snprintf(what, sizeof(what), "log_level_parse(\"%s\")",
		    level_cases[i].name);
		if (level_cases[i].ok) {
			check_true(what, r == 0 && got == level_cases[i].want,
			    __LINE__);
			check_str("name round trip", log_level_name(got),
			    level_cases[i].name, __LINE__);
		} else
			check_true(what, r == -1 && got == (enum log_level)99,
			    __LINE__);
	}
	CU_ASSERT_EQUAL(log_level_parse(NULL, &got), -1);
	check_str("unknown level name", log_level_name((enum log_level)42),
	    "unknown", __LINE__);

	log_set_level(LOG_LEVEL_DEBUG);
	CU_ASSERT_EQUAL(log_get_level(), LOG_LEVEL_DEBUG);
	log_set_level(LOG_LEVEL_WARNING);
	CU_ASSERT_EQUAL(log_get_level(), LOG_LEVEL_WARNING);
}

/* ------------------------------------------------------------------ */

/*
 * stderr is swapped for a pipe while the code under test logs; the pipe
 * holds 64 KiB, far more than any test writes.
 */
static int	 capture_saved = -1;
static int	 capture_pipe[2] = { -1, -1 };

static int
capture_start(void)
{
	if (pipe(capture_pipe) == -1)
		return -1;
	if ((capture_saved = dup(STDERR_FILENO)) == -1 ||
	    dup2(capture_pipe[1], STDERR_FILENO) == -1) {
		(void)close(capture_pipe[0]);
		(void)close(capture_pipe[1]);
		return -1;
	}
	(void)close(capture_pipe[1]);
	return 0;
}

/* Restores stderr and returns what was written (malloc'd). */
static char *
capture_end(void)
{
	char	*buf;
	size_t	 len = 0, size = 65536 + 1;
	ssize_t	 n;

	if (dup2(capture_saved, STDERR_FILENO) == -1)
		abort();
	(void)close(capture_saved);
	if ((buf = malloc(size)) == NULL)
		abort();
	while ((n = read(capture_pipe[0], buf + len, size - 1 - len)) > 0)
		len += (size_t)n;
	(void)close(capture_pipe[0]);
	buf[len] = '\0';
	return buf;
}

static int
matches(const char *pattern, const char *s)
{
	regex_t	 re;
	int	 r;

	if (regcomp(&re, pattern, REG_EXTENDED | REG_NOSUB) != 0)
		return 0;
	r = regexec(&re, s, 0, NULL, 0) == 0;
	regfree(&re);
	return r;
}

static size_t
count_char(const char *s, char c)
{
	size_t	 n = 0;

	for (; *s != '\0'; s++)
		if (*s == c)
			n++;
	return n;
}

#define STAMP	"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3}Z "

static void
test_line_shape(void)
{
	char	*out;

	if (unsetenv("JOURNAL_STREAM") == -1 || capture_start() == -1) {
		CU_FAIL_FATAL("cannot redirect stderr");
		return;
	}
	log_init(LOG_LEVEL_INFO);
	log_kv(LOG_LEVEL_INFO, "request created", "request_id", "abc",
	    "status", "created", "skipped", (char *)NULL, "identity",
	    "a b", (char *)NULL);
	log_debug("dropped at info", "k", "v");
	out = capture_end();

	check_true("one line", count_char(out, '\n') == 1, __LINE__);
	check_true(out, matches(STAMP "level=info msg=\"request created\" "
	    "request_id=abc status=created identity=\"a b\"\n$", out),
	    __LINE__);
	check_true("debug dropped", strstr(out, "dropped") == NULL, __LINE__);
	free(out);
}

static const struct level_line_case {
	enum log_level	 configured, level;
	const char	*want;		/* regex, or NULL: dropped */
} level_line_cases[] = {
	{ LOG_LEVEL_INFO, LOG_LEVEL_ERROR,	STAMP "level=error msg=m\n$" },
	{ LOG_LEVEL_INFO, LOG_LEVEL_WARNING,	STAMP "level=warning msg=m\n$" },
	{ LOG_LEVEL_INFO, LOG_LEVEL_INFO,	STAMP "level=info msg=m\n$" },
	{ LOG_LEVEL_INFO, LOG_LEVEL_DEBUG,	NULL },
	{ LOG_LEVEL_DEBUG, LOG_LEVEL_DEBUG,	STAMP "level=debug msg=m\n$" },
	{ LOG_LEVEL_ERROR, LOG_LEVEL_WARNING,	NULL },
	{ LOG_LEVEL_ERROR, LOG_LEVEL_ERROR,	STAMP "level=error msg=m\n$" },
	{ LOG_LEVEL_WARNING, LOG_LEVEL_INFO,	NULL },
};

static void
test_levels_filter(void)
{
	char	*out;
	size_t	 i;

	if (unsetenv("JOURNAL_STREAM") == -1) {
		CU_FAIL_FATAL("unsetenv");
		return;
	}
	for (i = 0; i < NELEM(level_line_cases); i++) {
		if (capture_start() == -1) {
			CU_FAIL_FATAL("cannot redirect stderr");
			return;
		}
		log_init(level_line_cases[i].configured);
		log_kv(level_line_cases[i].level, "m", (char *)NULL);
		out = capture_end();
		if (level_line_cases[i].want == NULL)
			check_str("dropped", out, "", __LINE__);
		else
			check_true(out, matches(level_line_cases[i].want, out),
			    __LINE__);
		free(out);
	}
}

/* A hostile value cannot start a line of its own. */
static void
test_hostile_values(void)
{
	char	*out;

	if (unsetenv("JOURNAL_STREAM") == -1 || capture_start() == -1) {
		CU_FAIL_FATAL("cannot redirect stderr");
		return;
	}
	log_init(LOG_LEVEL_DEBUG);
	log_warn("twilio said\nno", "identity",
	    "eve\n2026-01-01T00:00:00.000Z level=error msg=forged",
	    "body", "\r\x1b[2K\x7f\"\\", "key with space", "v");
	out = capture_end();
	check_true("one line", count_char(out, '\n') == 1, __LINE__);
	check_true("no carriage return", strchr(out, '\r') == NULL, __LINE__);
	check_true("no escape byte", strchr(out, '\x1b') == NULL, __LINE__);
	check_true(out, matches(STAMP "level=warning msg=\"twilio said\\\\nno\" "
	    "identity=\"eve\\\\n2026-01-01T00:00:00.000Z level=error "
	    "msg=forged\" body=\"\\\\r\\\\x1b\\[2K\\\\x7f\\\\\"\\\\\\\\\" "
	    "key_with_space=v\n$", out), __LINE__);
	free(out);
}

/* A huge event is cut, marked, and still one line. */
static void
test_long_line(void)
{
	char	*big, *out;
	size_t	 len;

	if ((big = malloc(20000)) == NULL) {
		CU_FAIL_FATAL("malloc");
		return;
	}
	memset(big, 'a', 19999);
	big[19999] = '\0';
	big[5000] = ' ';	/* quoted */
	if (unsetenv("JOURNAL_STREAM") == -1 || capture_start() == -1) {
		free(big);
		CU_FAIL_FATAL("cannot redirect stderr");
		return;
	}
	log_init(LOG_LEVEL_INFO);
	log_info("big", "first", big, "second", "lost");
	out = capture_end();
	len = strlen(out);
	check_true("at most LINE_MAX_BYTES", len > 0 && len <= LINE_MAX_BYTES,
	    __LINE__);
	check_true("one line", count_char(out, '\n') == 1 &&
	    out[len - 1] == '\n', __LINE__);
	check_true("marked", matches("first=\"a+\\.\\.\\.\" "
	    "log_truncated=true\n$", out), __LINE__);
	check_true("later pairs dropped", strstr(out, "lost") == NULL,
	    __LINE__);
	free(out);
	free(big);
}

/* Under journald the priority replaces the timestamp. */
static void
test_journald(void)
{
	static const struct {
		enum log_level	 level;
		const char	*want;
	} cases[] = {
		{ LOG_LEVEL_ERROR,	"<3>level=error msg=m k=v\n" },
		{ LOG_LEVEL_WARNING,	"<4>level=warning msg=m k=v\n" },
		{ LOG_LEVEL_INFO,	"<6>level=info msg=m k=v\n" },
		{ LOG_LEVEL_DEBUG,	"<7>level=debug msg=m k=v\n" },
	};
	struct stat	 st;
	char		 stream[64];
	char		*out;
	size_t		 i;

	for (i = 0; i < NELEM(cases); i++) {
		if (capture_start() == -1 || fstat(STDERR_FILENO, &st) == -1) {
			CU_FAIL_FATAL("cannot redirect stderr");
			return;
		}
		snprintf(stream, sizeof(stream), "%ju:%ju",
		    (uintmax_t)st.st_dev, (uintmax_t)st.st_ino);
		if (setenv("JOURNAL_STREAM", stream, 1) == -1)
			abort();
		log_init(LOG_LEVEL_DEBUG);
		log_kv(cases[i].level, "m", "k", "v", (char *)NULL);
		out = capture_end();
		check_str("journald line", out, cases[i].want, __LINE__);
		free(out);
	}

	/* Inherited from a parent whose stderr was the journal: ignored. */
	if (capture_start() == -1 || fstat(STDERR_FILENO, &st) == -1) {
		CU_FAIL_FATAL("cannot redirect stderr");
		return;
	}
	snprintf(stream, sizeof(stream), "%ju:%ju", (uintmax_t)st.st_dev,
	    (uintmax_t)st.st_ino + 1);
	if (setenv("JOURNAL_STREAM", stream, 1) == -1)
		abort();
	log_init(LOG_LEVEL_INFO);
	log_info("m");
	out = capture_end();
	check_true(out, matches(STAMP "level=info msg=m\n$", out), __LINE__);
	free(out);

	if (unsetenv("JOURNAL_STREAM") == -1)
		abort();
}

/*
 * The journal entries log.c hands to sd_journal_sendv, here to this
 * stand-in, kept as "FIELD=value" lines (values may hold any byte but a
 * NUL, so each field's length is kept too).
 */
static char	 sent[8192];
static size_t	 sent_len;
static int	 sent_entries;
static int	 send_result;

static int
send_capture(const struct iovec *iov, int n)
{
	int	 i;

	sent_entries++;
	for (i = 0; i < n; i++) {
		if (sent_len + iov[i].iov_len + 1 >= sizeof(sent))
			abort();
		memcpy(sent + sent_len, iov[i].iov_base, iov[i].iov_len);
		sent_len += iov[i].iov_len;
		sent[sent_len++] = '\n';
	}
	sent[sent_len] = '\0';
	return send_result;
}

static void
send_reset(int result)
{
	sent_len = 0;
	sent[0] = '\0';
	sent_entries = 0;
	send_result = result;
}

/* Whether the entry holds exactly the field line "FIELD=value". */
static int
has_field(const char *field)
{
	const char	*p;
	size_t		 n = strlen(field);

	for (p = sent; (p = strstr(p, field)) != NULL; p++)
		if ((p == sent || p[-1] == '\n') && p[n] == '\n')
			return 1;
	return 0;
}

/* Makes stderr the journal's stream for log.c: capture and JOURNAL_STREAM. */
static int
journal_start(void)
{
	struct stat	 st;
	char		 stream[64];

	if (capture_start() == -1 || fstat(STDERR_FILENO, &st) == -1)
		return -1;
	snprintf(stream, sizeof(stream), "%ju:%ju", (uintmax_t)st.st_dev,
	    (uintmax_t)st.st_ino);
	return setenv("JOURNAL_STREAM", stream, 1);
}

static void
test_journal_fields(void)
{
	char	*out;

	if (journal_start() == -1) {
		CU_FAIL_FATAL("cannot redirect stderr");
		return;
	}
	log_set_journal(send_capture);
	log_init(LOG_LEVEL_INFO);

	/* A failed request: the fields journalctl finds it by. */
	send_reset(0);
	log_warn("request not done", "request_id", "r-1", "status", "failed",
	    "code", "twilio_error", "twilio_code", "20404");
	check_true("one entry", sent_entries == 1, __LINE__);
	check_true(sent, has_field("MESSAGE=level=warning msg=\"request not "
	    "done\" request_id=r-1 status=failed code=twilio_error "
	    "twilio_code=20404"), __LINE__);
	check_true(sent, has_field("PRIORITY=4"), __LINE__);
	check_true(sent, has_field("SYSLOG_IDENTIFIER=usergated"), __LINE__);
	check_true(sent, has_field("USERGATE_EVENT=request_not_done"),
	    __LINE__);
	check_true(sent, has_field("REQUEST_ID=r-1"), __LINE__);
	check_true(sent, has_field("TWILIO_CODE=20404"), __LINE__);
	check_true(sent, has_field("CODE_FUNC=test_journal_fields"), __LINE__);
	check_true(sent, matches("\nCODE_FILE=[^\n]*test_log\\.c\n", sent),
	    __LINE__);
	check_true(sent, matches("\nCODE_LINE=[0-9]+\n", sent), __LINE__);
	/* Only the named keys become fields. */
	check_true(sent, strstr(sent, "STATUS=") == NULL &&
	    strstr(sent, "\nCODE=") == NULL, __LINE__);

	/* An Identity is personal data: a field at the debug level only. */
	send_reset(0);
	log_info("m", "identity", "alice");
	check_true(sent, sent_entries == 1 && strstr(sent, "IDENTITY=") ==
	    NULL, __LINE__);
	log_set_level(LOG_LEVEL_DEBUG);
	send_reset(0);
	/* Field values are the bytes, unescaped; the line stays escaped. */
	log_debug("request done", "request_id", "r 2", "identity", "a\"b\nc");
	check_true(sent, has_field("IDENTITY=a\"b\nc") &&
	    has_field("REQUEST_ID=r 2") && has_field("PRIORITY=7") &&
	    has_field("MESSAGE=level=debug msg=\"request done\" "
	    "request_id=\"r 2\" identity=\"a\\\"b\\nc\""), __LINE__);

	/* log_kv does not know where it was called from. */
	send_reset(0);
	log_kv(LOG_LEVEL_ERROR, "stats", "k", "v", (char *)NULL);
	check_true(sent, has_field("PRIORITY=3") &&
	    has_field("USERGATE_EVENT=stats") &&
	    strstr(sent, "CODE_FILE=") == NULL, __LINE__);

	/* Nothing of this reached stderr. */
	out = capture_end();
	check_str("stderr under the journal", out, "", __LINE__);
	free(out);

	/* The journal is gone: the line goes to stderr as it would have. */
	if (journal_start() == -1) {
		CU_FAIL_FATAL("cannot redirect stderr");
		return;
	}
	log_init(LOG_LEVEL_INFO);
	send_reset(-ECONNREFUSED);
	errno = EAGAIN;
	log_warn("m", "request_id", "r-3");
	check_true("errno kept", errno == EAGAIN, __LINE__);
	out = capture_end();
	check_true("tried the journal", sent_entries == 1, __LINE__);
	check_str("fallback line", out, "<4>level=warning msg=m "
	    "request_id=r-3\n", __LINE__);
	free(out);

	/* stderr is not the journal: a plain line, no entry. */
	if (unsetenv("JOURNAL_STREAM") == -1 || capture_start() == -1) {
		CU_FAIL_FATAL("cannot redirect stderr");
		return;
	}
	log_init(LOG_LEVEL_INFO);
	send_reset(0);
	log_info("m", "request_id", "r-4");
	out = capture_end();
	check_true("no entry", sent_entries == 0, __LINE__);
	check_true(out, matches(STAMP "level=info msg=m request_id=r-4\n$",
	    out), __LINE__);
	free(out);
	log_set_journal(NULL);
}

static const struct event_case {
	const char	*msg;
	const char	*want;
} event_cases[] = {
	{ "request not done",	"request_not_done" },
	{ "stats",		"stats" },
	{ "redis connection lost; requests stay queued, reconnecting",
	    "redis_connection_lost" },
	{ "http: cannot start a request", "http_cannot_start_a_request" },
	{ "the redis user may not CLIENT UNBLOCK (an @admin command)",
	    "the_redis_user_may_not_client_unblock_an_admin_command" },
	{ "  -- odd  spacing --  ", "odd_spacing" },
	{ "",			"" },
	{ "; nothing before",	"" },
};

static void
test_event_name(void)
{
	char	 buf[64];
	size_t	 i;

	for (i = 0; i < NELEM(event_cases); i++) {
		log_event_name(event_cases[i].msg, buf, sizeof(buf));
		check_str(event_cases[i].msg, buf, event_cases[i].want,
		    __LINE__);
	}
	/* Cut to the buffer, never mid-separator. */
	log_event_name("abc def ghi", buf, 8);
	check_str("cut", buf, "abc_def", __LINE__);
	log_event_name("abc def", buf, 5);
	check_str("cut at a gap", buf, "abc", __LINE__);
	log_event_name(NULL, buf, sizeof(buf));
	check_str("NULL message", buf, "", __LINE__);
}

/* Callers log and then use errno; logging must leave it alone. */
static void
test_errno_kept(void)
{
	char	*out;

	if (unsetenv("JOURNAL_STREAM") == -1 || capture_start() == -1) {
		CU_FAIL_FATAL("cannot redirect stderr");
		return;
	}
	log_init(LOG_LEVEL_INFO);
	errno = ENOSPC;
	log_error("m", "k", "v");
	CU_ASSERT_EQUAL(errno, ENOSPC);
	out = capture_end();
	free(out);
}

/*
 * A limiter's life, step by step: (time, lines asked for at that time,
 * how many of them it allows, what log_limit_held then says).
 */
static const struct limit_step {
	double		 now;
	int		 ask;
	int		 allowed;
	unsigned long long held;
} limit_steps[] = {
	{ 100.0, 3, 3, 0 },	/* within the budget of 3 */
	{ 100.5, 5, 0, 0 },	/* held back, still counting */
	{ 100.99, 1, 0, 0 },
	{ 101.0, 0, 0, 6 },	/* the second is over: 6 to report, once */
	{ 101.2, 0, 0, 0 },
	{ 101.3, 4, 3, 0 },	/* a new second, a new budget */
	{ 102.4, 0, 0, 1 },
	{ 50.0, 2, 2, 0 },	/* a clock that went back starts afresh */
};

static void
test_limit(void)
{
	static struct log_limit l = LOG_LIMIT("request not done", 3);
	char		 what[128];
	size_t		 i;
	int		 k, allowed;
	unsigned long long held;

	for (i = 0; i < NELEM(limit_steps); i++) {
		const struct limit_step *st = &limit_steps[i];

		for (k = allowed = 0; k < st->ask; k++)
			allowed += log_limit_allow(&l, st->now);
		held = log_limit_held(&l, st->now);
		snprintf(what, sizeof(what), "step %zu: allowed %d (want %d), "
		    "held %llu (want %llu)", i, allowed, st->allowed, held,
		    st->held);
		check_true(what, allowed == st->allowed && held == st->held,
		    __LINE__);
	}
}

/* The report is one warning line naming the lines held back. */
static void
test_limit_report(void)
{
	static struct log_limit l = LOG_LIMIT("request not done", 1);
	char		*out;
	int		 i;

	if (unsetenv("JOURNAL_STREAM") == -1 || capture_start() == -1) {
		CU_FAIL_FATAL("cannot redirect stderr");
		return;
	}
	log_init(LOG_LEVEL_INFO);
	for (i = 0; i < 1000; i++)
		(void)log_limit_allow(&l, 10.0);
	log_limits_report(10.5);	/* the second is not over */
	log_limits_report(11.0);
	log_limits_report(12.0);	/* nothing more to say */
	out = capture_end();
	check_true("one summary line",
	    out != NULL && strstr(out, "level=warning msg=\"suppressed similar "
	    "lines\" like=\"request not done\" count=999\n") != NULL &&
	    strchr(out, '\n') == out + strlen(out) - 1, __LINE__);
	free(out);
}

int
main(void)
{
	CU_pSuite	 suite;
	unsigned int	 failures;

	if (CU_initialize_registry() != CUE_SUCCESS)
		return 1;
	if ((suite = CU_add_suite("log", NULL, NULL)) == NULL ||
	    CU_add_test(suite, "escape", test_escape) == NULL ||
	    CU_add_test(suite, "escape truncation",
	    test_escape_truncation) == NULL ||
	    CU_add_test(suite, "level parse", test_level_parse) == NULL ||
	    CU_add_test(suite, "line shape", test_line_shape) == NULL ||
	    CU_add_test(suite, "levels filter", test_levels_filter) == NULL ||
	    CU_add_test(suite, "hostile values", test_hostile_values) == NULL ||
	    CU_add_test(suite, "long line", test_long_line) == NULL ||
	    CU_add_test(suite, "journald", test_journald) == NULL ||
	    CU_add_test(suite, "journal fields", test_journal_fields) == NULL ||
	    CU_add_test(suite, "event name", test_event_name) == NULL ||
	    CU_add_test(suite, "errno kept", test_errno_kept) == NULL ||
	    CU_add_test(suite, "limit", test_limit) == NULL ||
	    CU_add_test(suite, "limit report", test_limit_report) == NULL) {
		CU_cleanup_registry();
		return 1;
	}
	CU_basic_set_mode(CU_BRM_VERBOSE);
	if (CU_basic_run_tests() != CUE_SUCCESS) {
		CU_cleanup_registry();
		return 1;
	}
	failures = CU_get_number_of_failures();
	CU_cleanup_registry();
	return failures > 0 ? 1 : 0;
}
