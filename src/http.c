/*
 * http.c: the only libcurl user.  One multi handle driven by the event loop
 * through curl's multi_socket interface (a socket callback that maintains
 * one libevent event per socket, and one timer), after curl's hiperfifo
 * example but without its shortcuts: no exit() on errors and no timeout
 * rounded to whole seconds.
 *
 * Easy handles are pooled and reused: a reused handle keeps its options and
 * curl keeps the connections in the multi handle's cache, so requests to
 * Twilio go over kept-alive connections (multiplexed over HTTP/2 when the
 * server offers it).
 */
#include "config.h"

#include <sys/queue.h>
#include <sys/socket.h>
#include <sys/utsname.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <curl/curl.h>
#include <openssl/evp.h>
#include <event2/event.h>

#include "daemon.h"

#define BODY_MAX	(1024 * 1024)	/* a Twilio answer is a few KiB */

struct http_call {
	CURL			*easy;
	char			*body;		/* answer */
	size_t			 len, cap;
	long			 retry_after_ms;
	char			 error[CURL_ERROR_SIZE];
	double			 started;
	http_done_cb		*cb;
	void			*arg;
	char			*post;		/* request body, owned */
	CURLU			*url;		/* parsed, see set_url */
	char			*url_text;	/* what url was parsed from */
	struct http_call	*next_free;
	TAILQ_ENTRY(http_call)	 active;	/* while in the multi handle */
	struct header_gen	*gen;		/* whose headers it sends */
	/* socket() said EMFILE/ENFILE */
	int			 out_of_fds;
};

struct sock_ctx {
	struct event	*ev;
	curl_socket_t	 fd;
};

static CURLM *multi;
static struct event *timer_ev;
static struct http_call *free_calls;
static TAILQ_HEAD(, http_call) active_calls =
    TAILQ_HEAD_INITIALIZER(active_calls);
static long inflight;
/* "User-Agent: ..." as a ready header line (see headers_build). */
static char user_agent[180];

/*
 * The request headers come in six variants (GET or a form POST; webhook
 * header absent, true or false), built once per configuration: no list
 * per request.  The Basic Authorization line is among them, encoded once:
 * left to libcurl, it base64s and formats the credentials for every
 * request.  A reload makes a new generation; an old one stays only while
 * transfers started with it are in flight (they point at its lists), and
 * is freed, its secret wiped, when the last of them is done.
 */
struct header_gen {
	struct curl_slist	*sets[2][3];
	struct header_gen	*older;		/* retired, still in use */
	long			 calls;		/* transfers using the lists */
};
static struct header_gen *headers;	/* the current generation */

static struct curl_slist *
headers_for(int post, int webhook)
{
	return headers->sets[post ? 1 : 0][webhook < 0 ? 0 : webhook ? 1 : 2];
}

/* Frees a list whose strings may hold the secret: wiped first. */
static void
slist_free_wiped(struct curl_slist *h)
{
	struct curl_slist *n;

	for (n = h; n != NULL; n = n->next)
		explicit_bzero(n->data, strlen(n->data));
	curl_slist_free_all(h);
}

static void
header_gen_free(struct header_gen *g)
{
	int i, j;

	for (i = 0; i < 2; i++)
		for (j = 0; j < 3; j++)
			slist_free_wiped(g->sets[i][j]);
	free(g);
}

/*
 * A transfer is done with g: a retired generation no transfer uses any
 * more is freed.  The current one (headers) is never on the older chain.
 */
static void
header_gen_release(struct header_gen *g)
{
	struct header_gen **pp;

	if (--g->calls > 0 || g == headers)
		return;
	for (pp = &headers->older; *pp != NULL; pp = &(*pp)->older)
		if (*pp == g) {
			*pp = g->older;
			header_gen_free(g);
			return;
		}
}

/* "Authorization: Basic base64(user:secret)", malloc'd, or NULL. */
static char *
basic_authorization(const char *user, const char *secret)
{
	static const char prefix[] = "Authorization: Basic ";
	size_t plain_len = strlen(user) + 1 + strlen(secret);
	unsigned char *plain = malloc(plain_len + 1);
	char *line = malloc(sizeof(prefix) + 4 * ((plain_len + 2) / 3) + 1);

	if (plain == NULL || line == NULL) {
		free(plain);
		free(line);
		return NULL;
	}
	snprintf((char *)plain, plain_len + 1, "%s:%s", user, secret);
	memcpy(line, prefix, sizeof(prefix) - 1);
	EVP_EncodeBlock((unsigned char *)line + sizeof(prefix) - 1, plain,
	    (int)plain_len);
	explicit_bzero(plain, plain_len);
	free(plain);
	return line;
}

static int
headers_build(void)
{
	static const char *const webhook_lines[3] = {
		NULL, "X-Twilio-Webhook-Enabled: true",
		"X-Twilio-Webhook-Enabled: false",
	};
	struct header_gen *g = calloc(1, sizeof(*g));
	char *auth;
	int post, w;

	if (g == NULL)
		return -1;
	auth = basic_authorization(ug.cfg->auth_user ? ug.cfg->auth_user : "",
	    ug.cfg->auth_secret ? ug.cfg->auth_secret : "");
	for (post = 0; post < 2 && auth != NULL; post++) {
		for (w = 0; w < 3; w++) {
			struct curl_slist *h =
			    curl_slist_append(NULL, "Accept: application/json");

			/*
			 * User-Agent as a header line, not CURLOPT_USERAGENT:
			 * libcurl 7.88 re-formats that option with its
			 * byte-at-a-time printf for every transfer
			 * (Curl_pretransfer), then copies it again into the
			 * request head.
			 */
			if (h != NULL)
				h = curl_slist_append(h, user_agent);
			if (h != NULL)
				h = curl_slist_append(h, auth);
			/*
			 * No Content-Type: for POSTFIELDS libcurl sends
			 * "application/x-www-form-urlencoded" itself, without
			 * formatting a line through its printf (2 % of the
			 * CPU per created user), as Twilio's own libraries do.
			 */
			if (h != NULL && post)	/* no 100-continue */
				h = curl_slist_append(h, "Expect:");
			if (h != NULL && webhook_lines[w] != NULL)
				h = curl_slist_append(h, webhook_lines[w]);
			if (h == NULL)
				goto fail;
			g->sets[post][w] = h;
		}
	}
	if (auth == NULL)
		goto fail;
	explicit_bzero(auth, strlen(auth));
	free(auth);
	if (headers != NULL) {
		/* The retired chain moves to the new generation, with the
		 * old one on it while transfers use it. */
		g->older = headers->older;
		headers->older = NULL;
		if (headers->calls > 0) {
			headers->older = g->older;
			g->older = headers;
		} else
			header_gen_free(headers);
	}
	headers = g;
	return 0;
fail:
	if (auth != NULL) {
		explicit_bzero(auth, strlen(auth));
		free(auth);
	}
	header_gen_free(g);
	return -1;
}

static void	 check_done(void);

static size_t
on_body(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	struct http_call *c = userdata;
	size_t n = size * nmemb;
	char *p;

	if (c->len + n > BODY_MAX)
		return 0;	/* curl fails the transfer: CURLE_WRITE_ERROR */
	if (c->len + n + 1 > c->cap) {
		size_t cap = c->cap ? c->cap : 2048;

		while (cap < c->len + n + 1)
			cap *= 2;
		if ((p = realloc(c->body, cap)) == NULL)
			return 0;
		c->body = p;
		c->cap = cap;
	}
	memcpy(c->body + c->len, ptr, n);
	c->len += n;
	c->body[c->len] = '\0';
	return n;
}

static size_t
on_header(char *buf, size_t size, size_t nitems, void *userdata)
{
	struct http_call *c = userdata;
	size_t n = size * nitems;
	static const char name[] = "retry-after:";
	char value[128];
	size_t vlen;

	if (n > sizeof(name) - 1 &&
	    strncasecmp(buf, name, sizeof(name) - 1) == 0) {
		vlen = n - (sizeof(name) - 1);
		if (vlen >= sizeof(value))
			vlen = sizeof(value) - 1;
		memcpy(value, buf + sizeof(name) - 1, vlen);
		value[vlen] = '\0';
		value[strcspn(value, "\r\n")] = '\0';
		c->retry_after_ms = pace_retry_after_ms(value, time(NULL));
	}
	/* A new response (after a 100 Continue or a redirect) starts over. */
	if (n >= 5 && strncmp(buf, "HTTP/", 5) == 0) {
		c->retry_after_ms = -1;
		c->len = 0;
	}
	return n;
}

/*
 * libcurl looks for a proxy in the environment on every transfer (five
 * getenv() calls each).  A daemon's environment does not change while it
 * runs: when no proxy variable is set at all, telling libcurl "no proxy"
 * once is the same answer without the lookups.  When one is set, libcurl
 * keeps reading them as it always does.
 */
static int
proxy_in_env(void)
{
	static const char *const vars[] = { "http_proxy", "HTTP_PROXY",
	    "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY",
	    "no_proxy", "NO_PROXY" };
	size_t i;

	for (i = 0; i < sizeof(vars) / sizeof(vars[0]); i++)
		if (getenv(vars[i]) != NULL)
			return 1;
	return 0;
}

/*
 * curl's own socket(), plus a note of why it failed: with no descriptor
 * left the request never reached Twilio, which is not the request's fault
 * (job.c retries it without counting the attempt).
 */
static curl_socket_t
open_socket(void *arg, curlsocktype purpose, struct curl_sockaddr *a)
{
	struct http_call *c = arg;
	curl_socket_t fd;

	(void)purpose;
	fd = socket(a->family, a->socktype | SOCK_CLOEXEC, a->protocol);
	if (fd == CURL_SOCKET_BAD && (errno == EMFILE || errno == ENFILE))
		c->out_of_fds = 1;
	return fd;
}

static void
apply_options(struct http_call *c)
{
	struct config *cfg = ug.cfg;
	CURL *e = c->easy;

	curl_easy_setopt(e, CURLOPT_PRIVATE, c);
	curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(e, CURLOPT_WRITEDATA, c);
	curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
	curl_easy_setopt(e, CURLOPT_HEADERDATA, c);
	curl_easy_setopt(e, CURLOPT_ERRORBUFFER, c->error);
	curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, open_socket);
	curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, c);
	curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
	/* Basic auth is in the prebuilt headers (headers_build). */
	curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, cfg->connect_timeout_ms);
	curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, cfg->request_timeout_ms);
	curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
	curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
	if (cfg->ca_file && cfg->ca_file[0]) {
		/* An extra CA: the private one in CAINFO, the system's
		 * certificates still through CAPATH. */
		curl_easy_setopt(e, CURLOPT_CAINFO, cfg->ca_file);
		curl_easy_setopt(e, CURLOPT_CAPATH, "/etc/ssl/certs");
	} else {
		curl_easy_setopt(e, CURLOPT_CAINFO, NULL);
	}
	curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS);
	curl_easy_setopt(e, CURLOPT_PIPEWAIT, 0L);
	curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
	curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
	curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
	if (!proxy_in_env())
		curl_easy_setopt(e, CURLOPT_PROXY, "");
	/* Twilio's answers are about a kilobyte: small per-handle buffers
	 * keep memory flat with hundreds of requests in flight. */
	curl_easy_setopt(e, CURLOPT_BUFFERSIZE, 8192L);
}

static struct http_call *
call_get(void)
{
	struct http_call *c = free_calls;

	if (c != NULL) {
		free_calls = c->next_free;
		c->next_free = NULL;
		return c;
	}
	if ((c = calloc(1, sizeof(*c))) == NULL)
		return NULL;
	if ((c->easy = curl_easy_init()) == NULL) {
		free(c);
		return NULL;
	}
	apply_options(c);
	return c;
}

static void
call_put(struct http_call *c)
{
	free(c->post);
	c->post = NULL;
	c->len = 0;
	c->cb = NULL;
	c->arg = NULL;
	if (c->gen != NULL)
		header_gen_release(c->gen);
	c->gen = NULL;
	/* Keep the answer buffer: the next answer is about the same size. */
	if (c->cap > 64 * 1024) {
		free(c->body);
		c->body = NULL;
		c->cap = 0;
	}
	c->next_free = free_calls;
	free_calls = c;
}

/*
 * libcurl parses a URL given as a string again on every transfer
 * (curl_url_set, about 5,000 instructions), but takes a parsed one
 * (CURLOPT_CURLU) as it is.  Nearly every request of a handle goes to the
 * same create URL, so each handle keeps its last URL parsed and parses
 * anew only when the URL changes.  The CURLU belongs to the handle, which
 * is idle here, so no transfer can still be reading it.
 */
static int
set_url(struct http_call *c, const char *url)
{
	if (c->url_text == NULL || strcmp(c->url_text, url) != 0) {
		free(c->url_text);
		c->url_text = NULL;
		if (c->url == NULL && (c->url = curl_url()) == NULL)
			return -1;
		if (curl_url_set(c->url, CURLUPART_URL, url, 0) != CURLUE_OK ||
		    (c->url_text = strdup(url)) == NULL)
			return -1;
	}
	return curl_easy_setopt(c->easy, CURLOPT_CURLU, c->url) == CURLE_OK ?
	    0 : -1;
}

int
http_send(const char *url, const char *body, int webhook, http_done_cb *cb,
    void *arg)
{
	struct http_call *c;
	CURLMcode mc;

	if ((c = call_get()) == NULL)
		return -1;
	c->cb = cb;
	c->arg = arg;
	c->len = 0;
	c->retry_after_ms = -1;
	c->error[0] = '\0';
	c->out_of_fds = 0;
	if (set_url(c, url) != 0) {
		/* Not logged: the path holds an Identity. */
		log_error("http: the request URL does not parse");
		goto fail;
	}
	curl_easy_setopt(c->easy, CURLOPT_HTTPHEADER,
	    headers_for(body != NULL, webhook));
	c->gen = headers;
	headers->calls++;
	if (body != NULL) {
		if ((c->post = strdup(body)) == NULL)
			goto fail;
		curl_easy_setopt(c->easy, CURLOPT_POST, 1L);
		curl_easy_setopt(c->easy, CURLOPT_POSTFIELDS, c->post);
		curl_easy_setopt(c->easy, CURLOPT_POSTFIELDSIZE,
		    (long)strlen(c->post));
	} else {
		curl_easy_setopt(c->easy, CURLOPT_HTTPGET, 1L);
	}
	c->started = now_monotonic();
	if ((mc = curl_multi_add_handle(multi, c->easy)) != CURLM_OK) {
		log_error("http: cannot start a request", "error",
		    curl_multi_strerror(mc));
		goto fail;
	}
	inflight++;
	TAILQ_INSERT_TAIL(&active_calls, c, active);
	stats.http_requests++;
	return 0;
fail:
	call_put(c);
	return -1;
}

long
http_inflight(void)
{
	return inflight;
}

/* Curl says which events it wants on a socket. */
static void	 on_socket_event(evutil_socket_t, short, void *);

static int
sock_cb(CURL *e, curl_socket_t s, int what, void *userp, void *sockp)
{
	struct sock_ctx *sc = sockp;
	short kind;

	if (what == CURL_POLL_REMOVE) {
		if (sc != NULL) {
			event_free(sc->ev);
			free(sc);
			curl_multi_assign(multi, s, NULL);
		}
		return 0;
	}
	kind = EV_PERSIST | ((what & CURL_POLL_IN) ? EV_READ : 0) |
	    ((what & CURL_POLL_OUT) ? EV_WRITE : 0);
	if (sc == NULL) {
		if ((sc = calloc(1, sizeof(*sc))) == NULL)
			return -1;
		sc->fd = s;
		sc->ev = event_new(ug.base, s, kind, on_socket_event, sc);
		if (sc->ev == NULL) {
			free(sc);
			return -1;
		}
		curl_multi_assign(multi, s, sc);
	} else {
		/* The same event, re-armed: no allocation per change. */
		event_del(sc->ev);
		event_assign(sc->ev, ug.base, s, kind, on_socket_event, sc);
	}
	if (event_add(sc->ev, NULL) != 0)
		return -1;
	return 0;
}

static void
on_socket_event(evutil_socket_t fd, short kind, void *arg)
{
	int action = ((kind & EV_READ) ? CURL_CSELECT_IN : 0) |
	    ((kind & EV_WRITE) ? CURL_CSELECT_OUT : 0);
	int running;	/* libcurl must write it; check_done finds what ended */

	curl_multi_socket_action(multi, fd, action, &running);
	check_done();
}

static void
on_timer(evutil_socket_t fd, short kind, void *arg)
{
	int running;	/* libcurl must write it; check_done finds what ended */

	curl_multi_socket_action(multi, CURL_SOCKET_TIMEOUT, 0, &running);
	check_done();
}

static int
timer_cb(CURLM *m, long timeout_ms, void *userp)
{
	struct timeval tv;

	if (timeout_ms < 0) {
		evtimer_del(timer_ev);
		return 0;
	}
	tv.tv_sec = timeout_ms / 1000;
	tv.tv_usec = (timeout_ms % 1000) * 1000;
	evtimer_add(timer_ev, &tv);
	return 0;
}

static int
is_tls_failure(CURLcode rc)
{
	return rc == CURLE_PEER_FAILED_VERIFICATION ||
	    rc == CURLE_SSL_CACERT_BADFILE || rc == CURLE_SSL_ISSUER_ERROR ||
	    rc == CURLE_SSL_PINNEDPUBKEYNOTMATCH || rc == CURLE_SSL_CRL_BADFILE;
}

/*
 * Finished transfers: the handle is removed from the multi handle before
 * its owner hears of it, so the owner may start a new request at once.
 */
static void
check_done(void)
{
	CURLMsg *msg;
	int left;

	while ((msg = curl_multi_info_read(multi, &left)) != NULL) {
		struct http_call *c = NULL;
		struct http_result res;
		CURLcode rc;

		if (msg->msg != CURLMSG_DONE)
			continue;
		rc = msg->data.result;
		curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE,
		    (char **)&c);
		curl_multi_remove_handle(multi, msg->easy_handle);
		TAILQ_REMOVE(&active_calls, c, active);
		inflight--;
		memset(&res, 0, sizeof(res));
		res.retry_after_ms = c->retry_after_ms;
		res.seconds = now_monotonic() - c->started;
		if (rc == CURLE_OK) {
			curl_easy_getinfo(c->easy, CURLINFO_RESPONSE_CODE,
			    &res.status);
			res.body = c->body ? c->body : "";
			res.len = c->len;
		} else {
			res.status = 0;
			res.body = "";
			res.tls_failure = is_tls_failure(rc);
			res.out_of_fds = c->out_of_fds;
			res.error =
			    c->error[0] ? c->error : curl_easy_strerror(rc);
		}
		stats_observe(&stats_twilio_seconds, res.seconds);
		{
			http_done_cb *cb = c->cb;
			void *arg = c->arg;

			cb(&res, arg);
		}
		call_put(c);
	}
}

void
http_configure(void)
{
	struct http_call *c;

	if (headers_build() != 0)
		log_error("http: out of memory building request headers; "
		    "keeping the old ones");
	curl_multi_setopt(multi, CURLMOPT_MAX_HOST_CONNECTIONS,
	    ug.cfg->max_inflight);
	curl_multi_setopt(multi, CURLMOPT_MAXCONNECTS, ug.cfg->max_inflight);
	/* Handles in flight keep their old options until they come back;
	 * pooled ones take the new ones now. */
	for (c = free_calls; c != NULL; c = c->next_free)
		apply_options(c);
}

int
http_init(void)
{
	struct utsname u;
	curl_version_info_data *v;

	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
		return -1;
	v = curl_version_info(CURLVERSION_NOW);
	if (uname(&u) != 0)
		strcpy(u.machine, "unknown");
	snprintf(user_agent, sizeof(user_agent),
	    "User-Agent: usergate/%s (Linux %s) libcurl/%s",
	    PACKAGE_VERSION, u.machine, v->version);
	if ((multi = curl_multi_init()) == NULL)
		return -1;
	timer_ev = evtimer_new(ug.base, on_timer, NULL);
	if (timer_ev == NULL)
		return -1;
	curl_multi_setopt(multi, CURLMOPT_SOCKETFUNCTION, sock_cb);
	curl_multi_setopt(multi, CURLMOPT_TIMERFUNCTION, timer_cb);
	curl_multi_setopt(multi, CURLMOPT_PIPELINING, (long)CURLPIPE_MULTIPLEX);
	http_configure();
	return headers != NULL ? 0 : -1;
}

void
http_shutdown(void)
{
	struct http_call *c;

	/* Requests still on the wire are dropped without an answer: their
	 * jobs are abandoned too, and stay in the processing list. */
	while ((c = TAILQ_FIRST(&active_calls)) != NULL) {
		TAILQ_REMOVE(&active_calls, c, active);
		curl_multi_remove_handle(multi, c->easy);
		inflight--;
		call_put(c);
	}
	while ((c = free_calls) != NULL) {
		free_calls = c->next_free;
		curl_easy_cleanup(c->easy);
		curl_url_cleanup(c->url);
		free(c->url_text);
		free(c->body);
		free(c);
	}
	if (multi != NULL)
		curl_multi_cleanup(multi);
	multi = NULL;
	while (headers != NULL) {
		struct header_gen *older = headers->older;

		header_gen_free(headers);
		headers = older;
	}
	if (timer_ev != NULL)
		event_free(timer_ev);
	timer_ev = NULL;
	curl_global_cleanup();
}
