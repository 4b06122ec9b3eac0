/*
 * usergatectl import: the backfill (see usergatectl.h).
 */
#include "config.h"

#include <stdio.h>

#include "usergatectl.h"

int
ctl_import(int argc, char **argv, const char *config_path,
    const char *request_path, const char *status_path)
{
	fprintf(stderr, "usergatectl: import is not built yet\n");
	return 2;
}
