/*
 * fuzz_status.c: libFuzzer target for the status socket's command parser
 * (status_parse in command.c, SPEC §6.2): one line from any local client
 * that may connect.
 *
 * Whatever the line, the outcome must be one of the verbs, with an error
 * answer exactly for STATUS_ERROR, a count only for the dead commands and
 * within their bounds, and a command only from printable text no longer
 * than the line limit.  Case does not matter: the line in lower case
 * parses the same.
 *
 * Built and run by `make fuzz`; seeds in tests/fuzz/corpus/status/.
 */
#include <ctype.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "usergate.h"

int	LLVMFuzzerTestOneInput(const uint8_t *, size_t);

#define CHECK(cond)	do { if (!(cond)) __builtin_trap(); } while (0)

#define LINE_MAX_BYTES	1024	/* STATUS_LINE_MAX */
#define COUNT_MAX	10000	/* DEAD_LIST_MAX */

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct status_command cmd, lower;
	char *copy;
	size_t i;

	status_parse((const char *)data, size, &cmd);
	CHECK(cmd.verb >= STATUS_EMPTY && cmd.verb <= STATUS_ERROR);
	CHECK((cmd.verb == STATUS_ERROR) == (cmd.error != NULL));
	if (cmd.verb == STATUS_ERROR) {
		CHECK(strncmp(cmd.error, "error: ", 7) == 0);
		return 0;
	}
	CHECK(size <= LINE_MAX_BYTES);
	for (i = 0; i < size; i++)
		CHECK(isprint(data[i]) || data[i] == '\t');
	if (cmd.verb == STATUS_DEAD_LIST)
		CHECK(cmd.count >= 1 && cmd.count <= COUNT_MAX);
	else if (cmd.verb == STATUS_DEAD_RETRY)
		CHECK(cmd.count == -1 || (cmd.count >= 1 && cmd.count <= COUNT_MAX));
	else
		CHECK(cmd.count == 0);

	if ((copy = malloc(size + 1)) == NULL)
		return 0;
	for (i = 0; i < size; i++)
		copy[i] = (char)tolower(data[i]);
	status_parse(copy, size, &lower);
	CHECK(lower.verb == cmd.verb && lower.count == cmd.count && lower.error == NULL);
	free(copy);
	return 0;
}
