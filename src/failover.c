/*
 * failover.c: which Redis error replies mean that the server we speak to is
 * no longer (or not yet) the primary, so that the command is to be sent
 * again to the primary after a reconnect rather than given up (issue 13).
 * Pure: queue_link.c drops the link on what this says, and the unit test
 * pins the list without a server.
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "usergate.h"

/*
 * READONLY: a replica (a demoted primary, or Sentinel gave us a stale
 * address).  UNBLOCKED: a blocked command ended by a demotion.  LOADING:
 * a restarted or promoted server still reading its data.  MASTERDOWN: a
 * replica cut from its primary.  NOREPLICAS: min-replicas-to-write not
 * met, typically during a failover.  REDIRECT, MOVED, ASK, TRYAGAIN: the
 * key's slot lives elsewhere or is moving (client-side caching, Cluster).
 */
static const char *const failover_codes[] = {
	"READONLY", "UNBLOCKED", "LOADING", "MASTERDOWN", "NOREPLICAS",
	"REDIRECT", "MOVED", "ASK", "TRYAGAIN",
};

/* Whether s starts with one of the codes as a whole word. */
static int
starts_with_code(const char *s)
{
	size_t i, n;

	for (i = 0; i < sizeof(failover_codes) / sizeof(failover_codes[0]);
	    i++) {
		n = strlen(failover_codes[i]);
		if (strncmp(s, failover_codes[i], n) == 0 &&
		    (s[n] == '\0' || s[n] == ' '))
			return 1;
	}
	return 0;
}

/*
 * Whether an error reply's text (without the leading '-') is one of the
 * failover errors.  Redis 7 passes an error raised inside a script through
 * with its own code; Redis 6.2 wraps it as "ERR Error running script ...
 * -CODE ...", which is recognised too.  Any other error (a wrong type,
 * OOM, NOSCRIPT, a refused AUTH) is not a failover.
 */
int
redis_error_is_failover(const char *text)
{
	const char *p;

	if (text == NULL)
		return 0;
	if (starts_with_code(text))
		return 1;
	if (strncmp(text, "ERR Error running script", 24) != 0)
		return 0;
	for (p = strchr(text, '-'); p != NULL; p = strchr(p + 1, '-'))
		if (starts_with_code(p + 1))
			return 1;
	return 0;
}

/*
 * The address a Redis Cluster "MOVED <slot> <host>:<port>" names, the node
 * that now serves the slot.  The host is everything before the last ':'
 * (an IPv6 address is not bracketed); Redis 7 sends an empty host when it
 * does not know the node's address, which means the host we asked.
 * Returns 0, or -1 when text is no MOVED or its address cannot be read.
 */
int
redis_moved_address(const char *text, char *host, size_t size,
    unsigned *port)
{
	const char *a, *colon;
	char *end;
	unsigned long n;

	if (text == NULL || strncmp(text, "MOVED ", 6) != 0 ||
	    (a = strchr(text + 6, ' ')) == NULL ||
	    (colon = strrchr(++a, ':')) == NULL ||
	    (size_t)(colon - a) >= size)
		return -1;
	n = strtoul(colon + 1, &end, 10);
	if (end == colon + 1 || *end != '\0' || n < 1 || n > 65535)
		return -1;
	memcpy(host, a, (size_t)(colon - a));
	host[colon - a] = '\0';
	*port = (unsigned)n;
	return 0;
}

/*
 * Redis Cluster's hash tag: the bytes between the first '{' of a key and
 * the first '}' after it, when there are any; only they are hashed into
 * the key's slot.  Returns whether prefix holds a whole tag, so that every
 * key that starts with it is in one slot whatever follows; *tag and *len
 * then say which.
 */
int
redis_hash_tag(const char *prefix, const char **tag, size_t *len)
{
	const char *open, *close;

	if ((open = strchr(prefix, '{')) == NULL ||
	    (close = strchr(open + 1, '}')) == NULL || close == open + 1)
		return 0;
	*tag = open + 1;
	*len = (size_t)(close - open - 1);
	return 1;
}
