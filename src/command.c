/*
 * command.c: the status socket's command parser (SPEC §6.2).  Pure: status.c
 * reads the lines and runs the commands; what a line means is decided
 * here alone, so that the unit test and the fuzz target pin it without a
 * daemon.
 */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "usergate.h"

#define DEAD_LIST_DEFAULT	10
#define DEAD_LIST_MAX		10000

/* "N" within bounds, or all (-1) when allowed. */
static int
parse_count(const char *s, int allow_all, long dflt, long *out)
{
	char *end;
	long v;

	if (s == NULL || *s == '\0') {
		*out = dflt;
		return 0;
	}
	if (allow_all && strcasecmp(s, "all") == 0) {
		*out = -1;
		return 0;
	}
	if (!isdigit((unsigned char)*s))
		return -1;
	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || *end != '\0' || v < 1 || v > DEAD_LIST_MAX)
		return -1;
	*out = v;
	return 0;
}

static int
printable(const char *s, size_t len)
{
	size_t i;

	for (i = 0; i < len; i++)
		if (!isprint((unsigned char)s[i]) && s[i] != '\t')
			return 0;
	return 1;
}

static const struct {
	/* second NULL: one word */
	const char		*first, *second;
	enum status_verb	 verb;
} verbs[] = {
	{ "show", "stats", STATUS_SHOW_STATS },
	{ "show", "metrics", STATUS_SHOW_METRICS },
	{ "show", "queue", STATUS_SHOW_QUEUE },
	{ "health", NULL, STATUS_HEALTH },
	{ "pause", NULL, STATUS_PAUSE },
	{ "resume", NULL, STATUS_RESUME },
	{ "reload", NULL, STATUS_RELOAD },
	{ "dead", "list", STATUS_DEAD_LIST },
	{ "dead", "retry", STATUS_DEAD_RETRY },
	{ "help", NULL, STATUS_HELP },
};

/*
 * One line (without its end of line) into a verb and its count.  Words are
 * separated by blanks; case does not matter.  Anything not in the table,
 * too long, or not printable text becomes STATUS_ERROR with the answer to
 * give in cmd->error.
 */
void
status_parse(const char *line, size_t len, struct status_command *cmd)
{
	char buf[STATUS_LINE_MAX + 1], *w[4] = { NULL, NULL, NULL, NULL };
	char *save = NULL, *tok;
	size_t i;
	int n = 0;

	memset(cmd, 0, sizeof(*cmd));
	cmd->verb = STATUS_ERROR;
	cmd->error = "error: unknown command, try help";
	if (len > STATUS_LINE_MAX) {
		cmd->error = "error: line too long";
		return;
	}
	if (!printable(line, len))
		return;
	memcpy(buf, line, len);
	buf[len] = '\0';
	for (tok = strtok_r(buf, " \t", &save); tok != NULL && n < 4;
	    tok = strtok_r(NULL, " \t", &save))
		w[n++] = tok;
	if (tok != NULL)
		return;		/* too many words */
	if (n == 0) {
		cmd->verb = STATUS_EMPTY;
		cmd->error = NULL;
		return;
	}
	for (i = 0; i < sizeof(verbs) / sizeof(verbs[0]); i++) {
		if (strcasecmp(w[0], verbs[i].first) != 0)
			continue;
		if (verbs[i].second == NULL ? n != 1 :
		    n < 2 || strcasecmp(w[1], verbs[i].second) != 0)
			continue;
		break;
	}
	if (i == sizeof(verbs) / sizeof(verbs[0]))
		return;
	switch (verbs[i].verb) {
	case STATUS_DEAD_LIST:
		if (n > 3 ||
		    parse_count(w[2], 0, DEAD_LIST_DEFAULT, &cmd->count) != 0) {
			cmd->error =
			    "error: dead list takes a count from 1 to 10000";
			return;
		}
		break;
	case STATUS_DEAD_RETRY:
		if (n > 3 || parse_count(w[2], 1, -1, &cmd->count) != 0) {
			cmd->error = "error: dead retry takes a count from 1 "
			    "to 10000, or all";
			return;
		}
		break;
	default:
		if (n != (verbs[i].second == NULL ? 1 : 2))
			return;
		break;
	}
	cmd->verb = verbs[i].verb;
	cmd->error = NULL;
}
