/*
 * queue_conn.c: one connection to Redis on our own libevent loop.  Debian
 * 12's hiredis (0.14) has no TLS, so hiredis keeps only what does not care
 * how the bytes travel, its command formatter and its reply parser
 * (redisReader), and the bytes travel through a bufferevent: a socket one
 * for TCP and Unix sockets, an OpenSSL one for TLS.  queue_int.h states the
 * contract (hiredis' async one).
 *
 * Every close is a disconnect the owner reconnects, whatever libevent calls
 * it: libevent 2.1.12 reports OpenSSL 3's "unexpected EOF" (a server that
 * closes without close_notify, as Redis does) as an error, not as EOF.
 */
#include "config.h"

#include <sys/types.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <arpa/inet.h>
#include <netdb.h>
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "queue_int.h"

/* A command on the wire, in the order its replies will come. */
struct pending {
	STAILQ_ENTRY(pending) link;
	queue_conn_cb	*cb;
	void		*priv;
	int		 replies;	/* (P)(UN)SUBSCRIBE: one per channel */
	int		 called;
};

struct queue_conn {
	struct bufferevent	*bev;
	SSL_CTX			*ctx;
	redisReader		*reader;
	struct event		*timer;	/* connect, command, early error */
	STAILQ_HEAD(, pending)	 fifo;
	size_t			 npending;
	struct queue_conn_events ev;
	long			 connect_timeout_ms;
	long			 command_timeout_ms;
	long long		 subs;	/* subscriptions, as Redis counts */
	int			 tls;
	int			 up;
	int			 dead;	/* closed: only the free is left */
	int			 busy;	/* our callbacks on the stack */
	char			 error[256]; /* a failure found while opening */
};

static void
conn_free(struct queue_conn *c)
{
	if (c->timer != NULL)
		event_free(c->timer);
	if (c->reader != NULL)
		redisReaderFree(c->reader);
	if (c->ctx != NULL)
		SSL_CTX_free(c->ctx);
	free(c);
}

/*
 * Ends the connection: the socket first, so that nothing more is read,
 * then every pending callback with NULL, in order, then `closed` when the
 * connection was lost rather than closed by its owner.  The free waits
 * until none of our callbacks is on the stack (one may have closed us).
 */
static void
teardown(struct queue_conn *c, const char *reason)
{
	struct pending *p;

	if (c->dead)
		return;
	c->dead = 1;
	c->up = 0;
	if (c->bev != NULL) {
		bufferevent_free(c->bev);
		c->bev = NULL;
	}
	event_del(c->timer);
	c->busy++;
	while ((p = STAILQ_FIRST(&c->fifo)) != NULL) {
		STAILQ_REMOVE_HEAD(&c->fifo, link);
		c->npending--;
		if (p->cb != NULL && !p->called)
			p->cb(c, NULL, p->priv);
		free(p);
	}
	if (reason != NULL && c->ev.closed != NULL)
		c->ev.closed(c, reason, c->ev.arg);
	if (--c->busy == 0)
		conn_free(c);
}

/* Leaves one of our callbacks; returns 1 when the connection is gone. */
static int
release(struct queue_conn *c)
{
	if (--c->busy > 0 || !c->dead)
		return c->dead;
	conn_free(c);
	return 1;
}

static void
timer_add(struct queue_conn *c, long ms)
{
	struct timeval tv;

	tv.tv_sec = ms / 1000;
	tv.tv_usec = (ms % 1000) * 1000;
	evtimer_add(c->timer, &tv);
}

/* While replies are due, one must come within the command timeout. */
static void
command_timer(struct queue_conn *c)
{
	if (!c->up || c->dead || c->command_timeout_ms <= 0)
		return;
	if (c->npending > 0)
		timer_add(c, c->command_timeout_ms);
	else
		event_del(c->timer);
}

static void
on_timer(evutil_socket_t fd, short what, void *arg)
{
	struct queue_conn *c = arg;
	char reason[64];

	if (c->error[0] != '\0') {
		teardown(c, c->error);
		return;
	}
	if (c->up)
		snprintf(reason, sizeof(reason),
		    "command timed out after %ld ms", c->command_timeout_ms);
	else
		snprintf(reason, sizeof(reason),
		    "connect timed out after %ld ms", c->connect_timeout_ms);
	teardown(c, reason);
}

/*
 * A failure found while opening reaches the owner as any other does, from
 * the loop, once queue_conn_open has returned the connection.
 */
static void
fail_soon(struct queue_conn *c, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(c->error, sizeof(c->error), fmt, ap);
	va_end(ap);
	if (c->bev != NULL) {
		bufferevent_free(c->bev);
		c->bev = NULL;
	}
	timer_add(c, 0);
}

/* OpenSSL's reason for an error code, without its library and function;
 * a failed system call (a missing file, say) is told by its errno. */
static const char *
ssl_reason(unsigned long e)
{
	const char *s;

	if (ERR_SYSTEM_ERROR(e))
		return strerror(ERR_GET_REASON(e));
	s = ERR_reason_error_string(e);
	return s != NULL ? s : "unknown TLS error";
}

/*
 * Why the connection ended, in words an operator can act on: OpenSSL's
 * verification result names what was wrong with the server's certificate
 * ("hostname mismatch"), where its error queue says only that the
 * handshake failed.
 */
static void
describe(struct queue_conn *c, short what, char *buf, size_t len)
{
	int err = EVUTIL_SOCKET_ERROR();
	unsigned long e = 0, last;
	const char *v;
	SSL *ssl;
	long vr;
	int syscall = 0;

	if (c->tls) {
		/*
		 * libevent queues OpenSSL's error codes and, for a failed
		 * system call, SSL_get_error()'s result, which names no
		 * library: errno tells that one.
		 */
		while ((last = bufferevent_get_openssl_error(c->bev)) != 0)
			if (last == SSL_ERROR_SYSCALL && err != 0)
				syscall = 1;
			else if (e == 0 && ERR_GET_LIB(last) != 0 &&
			    !ERR_SYSTEM_ERROR(last))
				e = last;
		ssl = bufferevent_openssl_get_ssl(c->bev);
		vr = ssl != NULL ? SSL_get_verify_result(ssl) : X509_V_OK;
		if (vr != X509_V_OK) {
			v = X509_verify_cert_error_string(vr);
			snprintf(buf, len,
			    "TLS: certificate verify failed: %c%s",
			    tolower((unsigned char)v[0]), v + 1);
			return;
		}
		if (e != 0 &&
		    ERR_GET_REASON(e) == SSL_R_UNEXPECTED_EOF_WHILE_READING)
			what |= BEV_EVENT_EOF;
		else if (e != 0) {
			snprintf(buf, len, "TLS: %s", ssl_reason(e));
			return;
		}
	}
	/* (libevent calls a reset under TLS a dirty shutdown, an EOF.) */
	if (syscall)
		snprintf(buf, len, "%s", evutil_socket_error_to_string(err));
	else if (what & BEV_EVENT_EOF)
		snprintf(buf, len, "connection closed by server");
	else if (err != 0)
		snprintf(buf, len, "%s", evutil_socket_error_to_string(err));
	else
		snprintf(buf, len, "connection lost");
}

static void
on_event(struct bufferevent *bev, short what, void *arg)
{
	struct queue_conn *c = arg;
	char reason[256];

	if (what & BEV_EVENT_CONNECTED) {
		c->up = 1;
		event_del(c->timer);
		command_timer(c);
		if (c->ev.connected != NULL) {
			c->busy++;
			c->ev.connected(c, c->ev.arg);
			release(c);
		}
		return;
	}
	describe(c, what, reason, sizeof(reason));
	teardown(c, reason);
}

static int
is_push(const redisReply *r, const char *kind)
{
	return r->type == REDIS_REPLY_ARRAY && r->elements > 0 &&
	    r->element[0]->type == REDIS_REPLY_STRING &&
	    strcasecmp(r->element[0]->str, kind) == 0;
}

/*
 * One reply: a message pushed to a subscriber goes to `message`, anything
 * else answers the oldest command.  Once subscribed, nothing but a message
 * starts with "message" or "pmessage" (only pub/sub commands are allowed).
 */
static void
dispatch(struct queue_conn *c, redisReply *r)
{
	struct pending *p;

	if (c->subs > 0 && (is_push(r, "message") || is_push(r, "pmessage"))) {
		if (c->ev.message != NULL)
			c->ev.message(c, r, c->ev.arg);
		return;
	}
	if ((is_push(r, "subscribe") || is_push(r, "psubscribe") ||
	    is_push(r, "unsubscribe") || is_push(r, "punsubscribe")) &&
	    r->elements == 3 && r->element[2]->type == REDIS_REPLY_INTEGER)
		c->subs = r->element[2]->integer;
	if ((p = STAILQ_FIRST(&c->fifo)) == NULL) {
		teardown(c, "protocol error: a reply to no command");
		return;
	}
	if (r->type == REDIS_REPLY_ERROR)
		p->replies = 1;
	if (p->replies > 1) {
		p->replies--;
		if (!p->called) {
			p->called = 1;
			if (p->cb != NULL)
				p->cb(c, r, p->priv);
		}
		return;
	}
	STAILQ_REMOVE_HEAD(&c->fifo, link);
	c->npending--;
	if (!p->called && p->cb != NULL)
		p->cb(c, r, p->priv);
	free(p);
}

static void
on_read(struct bufferevent *bev, void *arg)
{
	struct queue_conn *c = arg;
	struct evbuffer *in = bufferevent_get_input(bev);
	struct evbuffer_iovec v[8];
	char reason[192];
	void *reply;
	size_t fed;
	int i, n;

	while (evbuffer_get_length(in) > 0) {
		n = evbuffer_peek(in, -1, NULL, v, 8);
		if (n > 8)
			n = 8;
		for (i = 0, fed = 0; i < n; i++) {
			if (redisReaderFeed(c->reader, v[i].iov_base,
			    v[i].iov_len) != REDIS_OK)
				break;
			fed += v[i].iov_len;
		}
		evbuffer_drain(in, fed);
		if (i < n)
			break;
	}
	c->busy++;
	while (!c->dead) {
		if (redisReaderGetReply(c->reader, &reply) != REDIS_OK) {
			snprintf(reason, sizeof(reason), "protocol error: %s",
			    c->reader->errstr);
			teardown(c, reason);
			break;
		}
		if (reply == NULL)
			break;
		dispatch(c, reply);
		freeReplyObject(reply);
	}
	command_timer(c);
	release(c);
}

static SSL *
tls_setup(struct queue_conn *c, const struct queue_conn_params *p)
{
	const char *name = p->tls_server_name && p->tls_server_name[0] ?
	    p->tls_server_name : p->host;
	unsigned char addr[16];
	SSL *ssl;
	int ip;

	ERR_clear_error();
	if ((c->ctx = SSL_CTX_new(TLS_client_method())) == NULL ||
	    SSL_CTX_set_min_proto_version(c->ctx, TLS1_2_VERSION) != 1) {
		fail_soon(c, "TLS: %s", ssl_reason(ERR_get_error()));
		return NULL;
	}
	SSL_CTX_set_verify(c->ctx, SSL_VERIFY_PEER, NULL);
	/* A close without close_notify is an EOF, as Redis closes. */
	SSL_CTX_set_options(c->ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
	if (p->tls_ca_file && p->tls_ca_file[0]) {
		if (SSL_CTX_load_verify_locations(c->ctx, p->tls_ca_file,
		    NULL) != 1) {
			fail_soon(c, "TLS: cannot load CA file %s: %s",
			    p->tls_ca_file, ssl_reason(ERR_get_error()));
			return NULL;
		}
	} else if (SSL_CTX_set_default_verify_paths(c->ctx) != 1) {
		fail_soon(c, "TLS: cannot load the system's CA store: %s",
		    ssl_reason(ERR_get_error()));
		return NULL;
	}
	if (p->tls_cert_file && p->tls_cert_file[0] &&
	    SSL_CTX_use_certificate_chain_file(c->ctx, p->tls_cert_file) != 1) {
		fail_soon(c, "TLS: cannot load certificate %s: %s",
		    p->tls_cert_file, ssl_reason(ERR_get_error()));
		return NULL;
	}
	if (p->tls_key_file && p->tls_key_file[0] &&
	    (SSL_CTX_use_PrivateKey_file(c->ctx, p->tls_key_file,
	    SSL_FILETYPE_PEM) != 1 || SSL_CTX_check_private_key(c->ctx) != 1)) {
		fail_soon(c, "TLS: cannot use key %s: %s", p->tls_key_file,
		    ssl_reason(ERR_get_error()));
		return NULL;
	}
	if ((ssl = SSL_new(c->ctx)) == NULL) {
		fail_soon(c, "TLS: %s", ssl_reason(ERR_get_error()));
		return NULL;
	}
	/*
	 * The name is checked against the certificate, an address against
	 * its IP SANs; only a name goes out as SNI (RFC 6066 allows no
	 * address there).
	 */
	ip = inet_pton(AF_INET, name, addr) == 1 ||
	    inet_pton(AF_INET6, name, addr) == 1;
	SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
	if ((ip ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), name) :
	    SSL_set1_host(ssl, name)) != 1 ||
	    (!ip && SSL_set_tlsext_host_name(ssl, name) != 1)) {
		fail_soon(c, "TLS: cannot check server name %s", name);
		SSL_free(ssl);
		return NULL;
	}
	return ssl;
}

/* Resolves the address (blocking, as hiredis does) and connects. */
static void
start_connect(struct queue_conn *c, const struct queue_conn_params *p)
{
	struct addrinfo hints, *res = NULL;
	struct sockaddr_un sun;
	char port[16];
	int rv;

	if (p->unix_socket && p->unix_socket[0]) {
		memset(&sun, 0, sizeof(sun));
		sun.sun_family = AF_UNIX;
		if (strlen(p->unix_socket) >= sizeof(sun.sun_path)) {
			fail_soon(c, "socket path too long: %s",
			    p->unix_socket);
			return;
		}
		strcpy(sun.sun_path, p->unix_socket);
		rv = bufferevent_socket_connect(c->bev,
		    (struct sockaddr *)&sun, sizeof(sun));
	} else {
		memset(&hints, 0, sizeof(hints));
		hints.ai_family = AF_UNSPEC;
		hints.ai_socktype = SOCK_STREAM;
		snprintf(port, sizeof(port), "%u", p->port);
		if ((rv = getaddrinfo(p->host, port, &hints, &res)) != 0) {
			fail_soon(c, "cannot resolve %s: %s", p->host,
			    gai_strerror(rv));
			return;
		}
		rv = bufferevent_socket_connect(c->bev, res->ai_addr,
		    (int)res->ai_addrlen);
		freeaddrinfo(res);
	}
	if (rv != 0)
		fail_soon(c, "%s", strerror(errno));
}

struct queue_conn *
queue_conn_open(struct event_base *base, const struct queue_conn_params *p,
    const struct queue_conn_events *ev, char *err, size_t errlen)
{
	struct queue_conn *c;
	SSL *ssl;
	int opt = BEV_OPT_CLOSE_ON_FREE;

	if ((c = calloc(1, sizeof(*c))) == NULL ||
	    (c->timer = evtimer_new(base, on_timer, c)) == NULL ||
	    (c->reader = redisReaderCreate()) == NULL) {
		snprintf(err, errlen, "out of memory");
		if (c != NULL)
			conn_free(c);
		return NULL;
	}
	STAILQ_INIT(&c->fifo);
	c->ev = *ev;
	c->tls = p->tls;
	c->connect_timeout_ms = p->connect_timeout_ms;
	c->command_timeout_ms = p->command_timeout_ms;
	if (p->tls && (p->unix_socket == NULL || !p->unix_socket[0])) {
		if ((ssl = tls_setup(c, p)) == NULL)
			return c;
		c->bev = bufferevent_openssl_socket_new(base, -1, ssl,
		    BUFFEREVENT_SSL_CONNECTING, opt);
		if (c->bev != NULL)
			bufferevent_openssl_set_allow_dirty_shutdown(c->bev, 1);
		else
			SSL_free(ssl);
	} else {
		c->tls = 0;
		c->bev = bufferevent_socket_new(base, -1, opt);
	}
	if (c->bev == NULL) {
		snprintf(err, errlen, "out of memory");
		conn_free(c);
		return NULL;
	}
	bufferevent_setcb(c->bev, on_read, NULL, on_event, c);
	bufferevent_enable(c->bev, EV_READ | EV_WRITE);
	if (c->connect_timeout_ms > 0)
		timer_add(c, c->connect_timeout_ms);
	start_connect(c, p);
	return c;
}

/* How many replies answer a command: one, but one per channel for the
 * pub/sub commands; -1 for an UNSUBSCRIBE without channels. */
static int
replies_for(int argc, const char **argv, const size_t *lens)
{
	static const char *const sub[] = {
		"subscribe", "psubscribe", "unsubscribe", "punsubscribe"
	};
	size_t i;

	for (i = 0; i < sizeof(sub) / sizeof(sub[0]); i++)
		if (lens[0] == strlen(sub[i]) &&
		    strncasecmp(argv[0], sub[i], lens[0]) == 0)
			return argc > 1 ? argc - 1 : -1;
	return 1;
}

/* Sends one command; returns -1 when the connection is closed. */
int
queue_conn_send_argv(struct queue_conn *c, queue_conn_cb *cb, void *priv,
    int argc, const char **argv, const size_t *lens)
{
	struct pending *p;
	sds text;
	int len, replies, rv;

	if (c == NULL || c->dead || argc < 1 ||
	    (replies = replies_for(argc, argv, lens)) < 0)
		return -1;
	if ((p = calloc(1, sizeof(*p))) == NULL)
		return -1;
	/*
	 * After a failure found while opening there is nothing to write to:
	 * the command waits for its NULL reply, as on any lost connection.
	 * The sds formatter: redisFormatCommandArgv sprintf()s every
	 * argument's length, about 60 % slower (docs/performance.md).
	 */
	if (c->bev != NULL) {
		if ((len = redisFormatSdsCommandArgv(&text, argc, argv,
		    lens)) < 0) {
			free(p);
			return -1;
		}
		rv = bufferevent_write(c->bev, text, (size_t)len);
		redisFreeSdsCommand(text);
		if (rv != 0) {
			free(p);
			return -1;
		}
	}
	p->cb = cb;
	p->priv = priv;
	p->replies = replies;
	STAILQ_INSERT_TAIL(&c->fifo, p, link);
	if (c->npending++ == 0)
		command_timer(c);
	return 0;
}

/*
 * Closes at once; the pending callbacks are called with NULL before this
 * returns, `closed` is not.  Safe from any of the connection's callbacks.
 */
void
queue_conn_close(struct queue_conn *c)
{
	if (c == NULL)
		return;
	if (c->dead) {
		c->ev.closed = NULL;
		return;
	}
	c->ev.closed = NULL;
	teardown(c, NULL);
}

void
queue_conn_tls_config(struct queue_conn_params *p, const struct config *c)
{
	p->tls = config_redis_tls(c);
	p->tls_ca_file = c->redis_tls_ca_file;
	p->tls_cert_file = c->redis_tls_cert_file;
	p->tls_key_file = c->redis_tls_key_file;
	p->tls_server_name = c->redis_tls_server_name;
}

int
queue_conn_primary(const redisReply *r, char *host, size_t hostlen,
    unsigned *port)
{
	char *e;
	long n;

	if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
	    r->element[0]->type != REDIS_REPLY_STRING ||
	    r->element[1]->type != REDIS_REPLY_STRING ||
	    r->element[0]->len >= hostlen ||
	    (n = strtol(r->element[1]->str, &e, 10)) < 1 || n > 65535 ||
	    *e != '\0')
		return -1;
	memcpy(host, r->element[0]->str, r->element[0]->len + 1);
	*port = (unsigned)n;
	return 0;
}

int
queue_conn_is_up(const struct queue_conn *c)
{
	return c != NULL && c->up;
}

size_t
queue_conn_pending(const struct queue_conn *c)
{
	return c != NULL ? c->npending : 0;
}
