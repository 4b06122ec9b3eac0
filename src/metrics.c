/*
 * metrics.c: GET /metrics (Prometheus text exposition) and GET /healthz
 * over HTTP with libevent's evhttp, on [metrics] listen.  Off when that
 * key is empty.
 *
 * What it renders comes through the hooks main.c registers (the gauges)
 * and from stats.c (the counters and histograms), so that this adapter
 * calls nothing above it.  A client cannot hold memory: headers and body
 * are bounded, and a connection silent for METRICS_TIMEOUT_S is closed.
 */
#include "config.h"

#include <sys/socket.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>

#include "daemon.h"

#define METRICS_TIMEOUT_S	10
#define METRICS_HEADERS_MAX	8192	/* bytes of the request's head */
#define METRICS_BODY_MAX	1024	/* GET has none; refuse big ones */

static struct evhttp *http;
static const struct metrics_hooks *hooks;

#define CONTENT_TEXT		"text/plain; charset=utf-8"
/* The text exposition format's own media type. */
#define CONTENT_EXPOSITION	"text/plain; version=0.0.4; charset=utf-8"

static void
reply_text(struct evhttp_request *req, int code, const char *reason,
    const char *type, const char *text)
{
	struct evbuffer *b = evbuffer_new();

	evhttp_add_header(evhttp_request_get_output_headers(req),
	    "Content-Type", type);
	if (b != NULL)
		evbuffer_add(b, text, strlen(text));
	evhttp_send_reply(req, code, reason, b);
	if (b != NULL)
		evbuffer_free(b);
}

static void
on_gauges(const struct stats_gauges *g, void *arg)
{
	struct evhttp_request *req = arg;
	char *text = stats_metrics(g);

	if (text == NULL)
		reply_text(req, 500, "Internal Server Error", CONTENT_TEXT,
		    "out of memory\n");
	else
		reply_text(req, 200, "OK", CONTENT_EXPOSITION, text);
	free(text);
}

static void
healthz(struct evhttp_request *req)
{
	char h[160], text[170];
	const char *s = daemon_health(h, sizeof(h));

	snprintf(text, sizeof(text), "%s\n", s);
	if (strcmp(s, "ok") == 0)
		reply_text(req, 200, "OK", CONTENT_TEXT, text);
	else
		reply_text(req, 503, "Service Unavailable", CONTENT_TEXT,
		    text);
}

static void
on_request(struct evhttp_request *req, void *arg)
{
	const char *uri = evhttp_request_get_uri(req);
	enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
	size_t len = strcspn(uri, "?");	/* the path, without a query */
	int metrics, health;

	metrics = len == 8 && strncmp(uri, "/metrics", len) == 0;
	health = len == 8 && strncmp(uri, "/healthz", len) == 0;
	if (!metrics && !health) {
		reply_text(req, 404, "Not Found", CONTENT_TEXT,
		    "not found: /metrics and /healthz are served\n");
		return;
	}
	if (cmd != EVHTTP_REQ_GET && cmd != EVHTTP_REQ_HEAD) {
		evhttp_add_header(evhttp_request_get_output_headers(req),
		    "Allow", "GET, HEAD");
		reply_text(req, 405, "Method Not Allowed", CONTENT_TEXT,
		    "method not allowed\n");
		return;
	}
	if (health) {
		healthz(req);
		return;
	}
	/*
	 * The answer may come after a Redis round trip; evhttp keeps the
	 * request until it is answered, and a client gone meanwhile is
	 * answered into the void.
	 */
	if (hooks->gauges(on_gauges, req) != 0)
		reply_text(req, 500, "Internal Server Error", CONTENT_TEXT,
		    "out of memory\n");
}

int
metrics_init(const struct metrics_hooks *h)
{
	struct sockaddr_storage ss;
	struct evconnlistener *l;
	int len;

	hooks = h;
	if (ug.cfg->metrics_listen[0] == '\0')
		return 0;
	/* config_load checked it. */
	if (config_listen_address(ug.cfg->metrics_listen, &ss, &len) != 0) {
		log_error("metrics: bad listen address");
		return -1;
	}
	if ((http = evhttp_new(ug.base)) == NULL) {
		log_error("metrics: out of memory");
		return -1;
	}
	evhttp_set_timeout(http, METRICS_TIMEOUT_S);
	evhttp_set_max_headers_size(http, METRICS_HEADERS_MAX);
	evhttp_set_max_body_size(http, METRICS_BODY_MAX);
	/* Every method reaches on_request, which answers 405 with Allow. */
	evhttp_set_allowed_methods(http, EVHTTP_REQ_GET | EVHTTP_REQ_POST |
	    EVHTTP_REQ_HEAD | EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE |
	    EVHTTP_REQ_OPTIONS | EVHTTP_REQ_TRACE | EVHTTP_REQ_CONNECT |
	    EVHTTP_REQ_PATCH);
	evhttp_set_gencb(http, on_request, NULL);
	l = evconnlistener_new_bind(ug.base, NULL, NULL,
	    LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_EXEC,
	    -1, (struct sockaddr *)&ss, len);
	if (l == NULL || evhttp_bind_listener(http, l) == NULL) {
		log_kv(LOG_LEVEL_ERROR, "metrics: cannot listen", "listen",
		    ug.cfg->metrics_listen, "error", strerror(errno),
		    (char *)NULL);
		if (l != NULL)
			evconnlistener_free(l);
		evhttp_free(http);
		http = NULL;
		return -1;
	}
	log_kv(LOG_LEVEL_INFO, "metrics: listening", "listen",
	    ug.cfg->metrics_listen, (char *)NULL);
	return 0;
}

void
metrics_shutdown(void)
{
	if (http != NULL)
		evhttp_free(http);
	http = NULL;
}
