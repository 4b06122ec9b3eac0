/*
 * usergatectl top: the live view of the status socket (see usergatectl.h).
 */
#include "config.h"

#include <stdio.h>

#include "usergatectl.h"

int
ctl_top(int argc, char **argv, const char *status_path)
{
	fprintf(stderr, "usergatectl: top is not built yet\n");
	return 2;
}
