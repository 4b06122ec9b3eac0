/*
 * queue-conn-probe: drives src/queue_conn.c against a real redis-server for
 * tests/integration/test_redis_transport.py.  Sends every command given
 * (one argument each, words separated by spaces) at once, before the
 * connection is up, and prints one line per event:
 *
 *	connected
 *	reply N: REPLY		(NULL when the connection was lost)
 *	message: REPLY		(pushed to a subscriber)
 *	closed: REASON
 *	done: sent=N called=N
 *
 * where REPLY is +status, -error, :integer, $string, nil or [a, b].  It
 * exits when every command is answered and --messages messages came, or
 * when the connection is lost; with 1 when a callback was called twice or
 * never, with 2 on its own deadline.
 */
#include "config.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "queue_int.h"

#define MAX_COMMANDS	64

static struct event_base *base;
static struct queue_conn *conn;
static int ncommands, calls[MAX_COMMANDS], messages_wanted, messages;

static void
print_reply(const redisReply *r)
{
	size_t i;

	switch (r->type) {
	case REDIS_REPLY_STATUS:
		printf("+%s", r->str);
		break;
	case REDIS_REPLY_ERROR:
		printf("-%s", r->str);
		break;
	case REDIS_REPLY_INTEGER:
		printf(":%lld", r->integer);
		break;
	case REDIS_REPLY_STRING:
		printf("$%s", r->str);
		break;
	case REDIS_REPLY_NIL:
		printf("nil");
		break;
	case REDIS_REPLY_ARRAY:
		printf("[");
		for (i = 0; i < r->elements; i++) {
			if (i > 0)
				printf(", ");
			print_reply(r->element[i]);
		}
		printf("]");
		break;
	default:
		printf("?");
	}
}

static int
finished(void)
{
	int i;

	for (i = 0; i < ncommands; i++)
		if (calls[i] == 0)
			return 0;
	return messages >= messages_wanted;
}

static void
on_reply(struct queue_conn *c, redisReply *r, void *priv)
{
	int i = (int)(intptr_t)priv;

	calls[i]++;
	printf("reply %d: ", i);
	if (r == NULL)
		printf("NULL");
	else
		print_reply(r);
	printf("\n");
	if (r != NULL && finished()) {
		queue_conn_close(conn);
		conn = NULL;
		event_base_loopbreak(base);
	}
}

static void
on_connected(struct queue_conn *c, void *arg)
{
	printf("connected\n");
}

static void
on_closed(struct queue_conn *c, const char *reason, void *arg)
{
	printf("closed: %s\n", reason);
	conn = NULL;
	event_base_loopbreak(base);
}

static void
on_message(struct queue_conn *c, redisReply *r, void *arg)
{
	printf("message: ");
	print_reply(r);
	printf("\n");
	messages++;
	if (finished()) {
		queue_conn_close(conn);
		conn = NULL;
		event_base_loopbreak(base);
	}
}

static void
on_deadline(evutil_socket_t fd, short what, void *arg)
{
	printf("error: deadline\n");
	exit(2);
}

/* Splits a command at spaces into argv. */
static int
split(char *s, const char **argv, size_t *lens, int max)
{
	char *w;
	int n = 0;

	while ((w = strsep(&s, " ")) != NULL && n < max) {
		if (*w == '\0')
			continue;
		argv[n] = w;
		lens[n++] = strlen(w);
	}
	return n;
}

static void
usage(void)
{
	fprintf(stderr, "usage: queue-conn-probe [--host H] [--port P] "
	    "[--unix PATH] [--tls] [--ca FILE] [--cert FILE] [--key FILE]\n"
	    "\t[--server-name NAME] [--connect-timeout MS] "
	    "[--command-timeout MS] [--messages N] COMMAND...\n");
	exit(64);
}

int
main(int argc, char **argv)
{
	struct queue_conn_params p = { .host = "127.0.0.1", .port = 6379 };
	struct queue_conn_events ev = {
		on_connected, on_closed, on_message, NULL
	};
	struct timeval deadline = { 20, 0 };
	const char *cargv[32];
	size_t lens[32];
	char err[256];
	int i, n, bad = 0;

	signal(SIGPIPE, SIG_IGN);
	setvbuf(stdout, NULL, _IOLBF, 0);
	for (i = 1; i < argc && strncmp(argv[i], "--", 2) == 0; i++) {
		if (strcmp(argv[i], "--tls") == 0) {
			p.tls = 1;
			continue;
		}
		if (i + 1 >= argc)
			usage();
		if (strcmp(argv[i], "--host") == 0)
			p.host = argv[++i];
		else if (strcmp(argv[i], "--port") == 0)
			p.port = (unsigned)atoi(argv[++i]);
		else if (strcmp(argv[i], "--unix") == 0)
			p.unix_socket = argv[++i];
		else if (strcmp(argv[i], "--ca") == 0)
			p.tls_ca_file = argv[++i];
		else if (strcmp(argv[i], "--cert") == 0)
			p.tls_cert_file = argv[++i];
		else if (strcmp(argv[i], "--key") == 0)
			p.tls_key_file = argv[++i];
		else if (strcmp(argv[i], "--server-name") == 0)
			p.tls_server_name = argv[++i];
		else if (strcmp(argv[i], "--connect-timeout") == 0)
			p.connect_timeout_ms = atol(argv[++i]);
		else if (strcmp(argv[i], "--command-timeout") == 0)
			p.command_timeout_ms = atol(argv[++i]);
		else if (strcmp(argv[i], "--messages") == 0)
			messages_wanted = atoi(argv[++i]);
		else
			usage();
	}
	if (argc - i > MAX_COMMANDS)
		usage();
	if ((base = event_base_new()) == NULL)
		return 70;
	event_base_once(base, -1, EV_TIMEOUT, on_deadline, NULL, &deadline);
	if ((conn = queue_conn_open(base, &p, &ev, err, sizeof(err))) == NULL) {
		printf("error: %s\n", err);
		return 70;
	}
	for (; i < argc; i++) {
		n = split(argv[i], cargv, lens, 32);
		if (queue_conn_send_argv(conn, on_reply,
		    (void *)(intptr_t)ncommands, n, cargv, lens) != 0) {
			printf("error: cannot send command %d\n", ncommands);
			return 70;
		}
		ncommands++;
	}
	if (!finished())
		event_base_dispatch(base);
	queue_conn_close(conn);
	for (i = 0; i < ncommands; i++)
		if (calls[i] != 1) {
			printf("error: callback %d called %d times\n", i,
			    calls[i]);
			bad = 1;
		}
	printf("done: sent=%d messages=%d\n", ncommands, messages);
	event_base_free(base);
	return bad;
}
