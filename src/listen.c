/*
 * listen.c: the two Unix sockets' listeners (the request socket, intake.c,
 * and the status socket, status.c) and what they share: binding without
 * stealing a live daemon's socket, accepting on the event loop without
 * spinning when descriptors run out, the descriptor budget of their
 * clients, and a connection's life: its bufferevent as both set it up, the
 * connection limit, references held by pending replies, closing once the
 * output is written, shutdown.
 *
 * What each socket does with a connection (framing, commands, when it is
 * idle, what closing releases) stays in its own file: those differ, the
 * skeleton does not.
 */
#include "config.h"

#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>

#include "daemon.h"

/*
 * Descriptors kept from socket clients, besides one per Twilio transfer
 * and one per resolver thread's pipe (2 * max_inflight): stdio, the event
 * loop's, the two listeners, Redis' two connections, curl's multi handle,
 * a secret file read on reload, and slack.
 */
#define FD_RESERVE		32
#define LISTENER_PAUSE_S	1

long
socket_fd_budget(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) != 0 ||
	    rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur > LONG_MAX)
		return LONG_MAX;
	return (long)rl.rlim_cur - 2 * ug.cfg->max_inflight - FD_RESERVE;
}

static void
listener_resume(evutil_socket_t fd, short what, void *arg)
{
	struct socket_listener *sl = arg;

	evconnlistener_enable(sl->lev);
}

/*
 * accept failed.  libevent retries EINTR, EAGAIN and ECONNABORTED itself;
 * anything else, above all running out of descriptors, would fail again at
 * once on the next loop, for ever, at full CPU: pause instead, and say so
 * once until an accept succeeds again.
 */
static void
listener_error(struct evconnlistener *lev, void *arg)
{
	struct socket_listener *sl = arg;
	struct timeval pause = { LISTENER_PAUSE_S, 0 };
	int err = EVUTIL_SOCKET_ERROR();

	evconnlistener_disable(lev);
	if (!sl->failing) {
		log_warn("cannot accept connections; pausing", "socket",
		    sl->what, "error", strerror(err));
		sl->failing = 1;
	}
	evtimer_add(sl->resume, &pause);
}

static void
listener_accept(struct evconnlistener *lev, evutil_socket_t fd,
    struct sockaddr *sa, int socklen, void *arg)
{
	struct socket_listener *sl = arg;

	if (sl->failing) {
		log_info("accepting connections again", "socket", sl->what);
		sl->failing = 0;
	}
	sl->accepted(fd);
}

int
socket_listener_open(struct socket_listener *sl, const char *path, long mode,
    const char *what, socket_accept_cb accepted)
{
	int fd = unix_listen(path, mode, what);

	memset(sl, 0, sizeof(*sl));
	if (fd < 0)
		return -1;
	sl->what = what;
	sl->accepted = accepted;
	sl->resume = evtimer_new(ug.base, listener_resume, sl);
	sl->lev = evconnlistener_new(ug.base, listener_accept, sl,
	    LEV_OPT_CLOSE_ON_FREE, -1, fd);
	if (sl->resume == NULL || sl->lev == NULL) {
		if (sl->lev == NULL)
			close(fd);
		socket_listener_close(sl);
		log_error("cannot listen on socket", "socket", what);
		return -1;
	}
	evconnlistener_set_error_cb(sl->lev, listener_error);
	return 0;
}

void
socket_listener_close(struct socket_listener *sl)
{
	if (sl->lev != NULL)
		evconnlistener_free(sl->lev);
	if (sl->resume != NULL)
		event_free(sl->resume);
	sl->lev = NULL;
	sl->resume = NULL;
}

/*
 * The client's end as both sockets set it up.  The caller adds what is its
 * own (a read watermark) and enables it; until then no callback runs.
 */
int
listen_conn_open(struct listen_socket *ls, struct listen_conn *lc, int fd,
    long idle_s, size_t output_low, listen_data_cb *readcb,
    listen_data_cb *writecb, listen_event_cb *eventcb, void *arg)
{
	struct timeval idle = { idle_s, 0 };
	struct bufferevent *bev;

	bev = bufferevent_socket_new(ug.base, fd, BEV_OPT_CLOSE_ON_FREE);
	if (bev == NULL) {
		close(fd);
		return -1;
	}
	bufferevent_setcb(bev, readcb, writecb, eventcb, arg);
	bufferevent_set_timeouts(bev, &idle, &idle);
	bufferevent_setwatermark(bev, EV_WRITE, output_low, 0);
	lc->ls = ls;
	lc->bev = bev;
	TAILQ_INSERT_TAIL(&ls->conns, lc, link);
	ls->nconns++;
	return 0;
}

void
listen_conn_ref(struct listen_conn *lc)
{
	lc->refs++;
}

void
listen_conn_unref(struct listen_conn *lc)
{
	if (--lc->refs > 0 || !lc->closed)
		return;
	lc->ls->release(lc);
}

void
listen_conn_close(struct listen_conn *lc)
{
	struct listen_socket *ls = lc->ls;

	if (lc->closed)
		return;
	lc->closed = 1;
	if (ls->closing != NULL)
		ls->closing(lc);
	TAILQ_REMOVE(&ls->conns, lc, link);
	ls->nconns--;
	bufferevent_free(lc->bev);
	lc->bev = NULL;
	/* Freed here unless a pending reply still holds it. */
	lc->refs++;
	listen_conn_unref(lc);
}

void
listen_conn_close_drained(struct listen_conn *lc)
{
	if (evbuffer_get_length(bufferevent_get_output(lc->bev)) == 0)
		listen_conn_close(lc);
}

int
listen_socket_full(struct listen_socket *ls, long limit, const char *warning)
{
	char n[24];

	if (ls->nconns < limit) {
		ls->full = 0;
		return 0;
	}
	if (!ls->full && warning != NULL) {
		snprintf(n, sizeof(n), "%ld", limit);
		log_warn(warning, "limit", n);
	}
	ls->full = 1;
	return 1;
}

int
listen_socket_open(struct listen_socket *ls, const char *path, long mode,
    const char *what, socket_accept_cb accepted, listen_conn_cb *closing,
    listen_conn_cb *release)
{
	TAILQ_INIT(&ls->conns);
	ls->nconns = 0;
	ls->full = 0;
	ls->closing = closing;
	ls->release = release;
	return socket_listener_open(&ls->listener, path, mode, what, accepted);
}

void
listen_socket_shutdown(struct listen_socket *ls, const char *path, int keep)
{
	struct listen_conn *lc;

	if (ls->listener.lev != NULL) {
		socket_listener_close(&ls->listener);
		unlink(path);
	}
	if (!keep) {
		while ((lc = TAILQ_FIRST(&ls->conns)) != NULL)
			listen_conn_close(lc);
	} else {
		TAILQ_FOREACH(lc, &ls->conns, link)
			bufferevent_disable(lc->bev, EV_READ);
	}
}

/*
 * Binds a Unix stream socket at path with mode.  A stale socket file (no
 * one accepts on it) is replaced; a live one means another daemon owns
 * it, and we refuse to start rather than steal its clients.
 */
int
unix_listen(const char *path, long mode, const char *what)
{
	struct sockaddr_un sun;
	struct stat st;
	mode_t old;
	int fd;

	memset(&sun, 0, sizeof(sun));
	sun.sun_family = AF_UNIX;
	if (strlen(path) >= sizeof(sun.sun_path)) {
		log_error("socket path too long", "socket", what, "path", path);
		return -1;
	}
	strcpy(sun.sun_path, path);
	if (lstat(path, &st) == 0) {
		if (!S_ISSOCK(st.st_mode)) {
			log_error("socket path exists and is not a socket",
			    "socket", what, "path", path);
			return -1;
		}
		fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (fd >= 0 &&
		    connect(fd, (struct sockaddr *)&sun, sizeof(sun)) == 0) {
			close(fd);
			log_error("another daemon is listening on this "
			    "socket; refusing to start", "socket", what,
			    "path", path);
			return -1;
		}
		if (fd >= 0)
			close(fd);
		if (unlink(path) != 0 && errno != ENOENT) {
			log_error("cannot remove stale socket", "socket", what,
			    "path", path, "error", strerror(errno));
			return -1;
		}
	}
	if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
	    0)) < 0) {
		log_error("cannot create socket", "socket", what, "error",
		    strerror(errno));
		return -1;
	}
	/* Never world-writable, not even for an instant: the umask covers
	 * the window between bind and chmod. */
	old = umask(0177);
	if (bind(fd, (struct sockaddr *)&sun, sizeof(sun)) != 0) {
		umask(old);
		log_error("cannot bind socket", "socket", what, "path", path,
		    "error", strerror(errno));
		close(fd);
		return -1;
	}
	umask(old);
	if (mode & 0002) {
		char want[8];

		snprintf(want, sizeof(want), "%04lo", mode & 0777);
		log_warn("socket mode would make it world-writable; "
		    "others may not write", "socket", what, "path", path,
		    "mode", want);
	}
	if (chmod(path, (mode_t)mode & 0777 & ~(mode_t)0002) != 0 ||
	    listen(fd, 128) != 0) {
		log_error("cannot set up socket", "socket", what, "path", path,
		    "error", strerror(errno));
		close(fd);
		unlink(path);
		return -1;
	}
	return fd;
}
