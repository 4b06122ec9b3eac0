/*
 * doc.h: the unit tests that check the docs against the code read them
 * with this.
 */
#ifndef USERGATE_TEST_DOC_H
#define USERGATE_TEST_DOC_H

/* The file name (relative to $top_srcdir, else $srcdir, else ".") whole
 * and NUL-terminated, malloc'd; NULL, said on stderr, when unreadable. */
char	*read_doc(const char *name);

#endif
