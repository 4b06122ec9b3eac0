/*
 * doc.c: reading a file of the source tree for the tests that check the
 * docs against the code (test_stats, test_result).
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>

#include "doc.h"

char *
read_doc(const char *name)
{
	const char *top;
	char path[4096], *text;
	FILE *f;
	long len;

	if ((top = getenv("top_srcdir")) == NULL &&
	    (top = getenv("srcdir")) == NULL)
		top = ".";
	snprintf(path, sizeof(path), "%s/%s", top, name);
	if ((f = fopen(path, "r")) == NULL) {
		fprintf(stderr, "\ndocs check: cannot read %s (set top_srcdir "
		    "to the source tree)\n", path);
		return NULL;
	}
	if (fseek(f, 0, SEEK_END) != 0 || (len = ftell(f)) < 0 ||
	    fseek(f, 0, SEEK_SET) != 0 ||
	    (text = malloc((size_t)len + 1)) == NULL) {
		fclose(f);
		return NULL;
	}
	text[fread(text, 1, (size_t)len, f)] = '\0';
	fclose(f);
	return text;
}
