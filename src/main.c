/*
 * main.c: options, configuration, the ordered setup and teardown of every
 * part, signals (through the event loop only), reload and sd_notify.
 *
 * Errors before the loop are fatal with exit status 2 (usage, config) or 1
 * (runtime: a socket in use, no memory); inside the loop nothing is fatal
 * except a second live daemon with our instance_id.
 */
#include "config.h"

#include <sys/prctl.h>

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <systemd/sd-daemon.h>
#include <systemd/sd-journal.h>

#include "daemon.h"

#define DEFAULT_CONFIG	SYSCONFDIR "/usergate/usergate.conf"
#define STATS_LOG_EVERY_S 60	/* the counters' log line (stats_log) */

static const char *config_path = DEFAULT_CONFIG;
static int verbose;
static int exit_status;
static struct event *tick_ev, *watchdog_ev, *drain_ev;
static struct event *sig_term, *sig_int, *sig_hup;
static char last_status_line[256];

/* Ask the event loop to stop (after a drain when graceful; -1: failed). */
static void
daemon_stop(int graceful)
{
	if (graceful < 0)
		exit_status = 1;
	event_base_loopexit(ug.base, NULL);
}

/* The STATUS= line systemd shows, sent only when it changed: registered
 * with state.c, which calls it whenever an adapter says state_changed(). */
static void
notify_status(void)
{
	char line[256], health[160], queue[32];
	long long requests, processing, dead;

	/* -1 until Redis has first answered, and while it is away. */
	queue_last_lengths(&requests, &processing, &dead);
	if (requests < 0)
		snprintf(queue, sizeof(queue), "unknown");
	else
		snprintf(queue, sizeof(queue), "%lld", requests);
	snprintf(line, sizeof(line),
	    "STATUS=%s; queue %s, in flight %ld/%ld%s%s",
	    daemon_health(health, sizeof(health)), queue, http_inflight(),
	    ug.cfg->max_inflight, ug.paused ? ", paused" : "",
	    ug.draining ? ", stopping" : "");
	if (strcmp(line, last_status_line) == 0)
		return;
	snprintf(last_status_line, sizeof(last_status_line), "%s", line);
	sd_notify(0, line);
}

static void
usage(FILE *f)
{
	fprintf(f, "usage: usergated [-c FILE] [-n] [-v]... [-V] [-h]\n"
	    "  -c FILE  configuration file (default %s)\n"
	    "  -n       check the configuration and credentials, then exit\n"
	    "  -v       more verbose logging (repeatable)\n"
	    "  -V       print the version and exit\n"
	    "  -h       this help\n", DEFAULT_CONFIG);
}

/*
 * Reload: a new config replaces the old except for keys that need a
 * restart, which keep their old values (and are named in the log).  A bad
 * file changes nothing.  Returns 0, or -1 with the reason in err.
 */
static int
reload(char *err, size_t errlen)
{
	struct config *fresh;
	const struct config_key *keys;
	size_t nkeys, i;
	char restart[512];
	uint64_t usec;
	char msg[64];

	usec = (uint64_t)(now_monotonic() * 1e6);
	snprintf(msg, sizeof(msg), "RELOADING=1\nMONOTONIC_USEC=%llu",
	    (unsigned long long)usec);
	sd_notify(0, msg);
	if ((fresh = calloc(1, sizeof(*fresh))) == NULL) {
		snprintf(err, errlen, "out of memory");
		sd_notify(0, "READY=1");
		return -1;
	}
	if (config_load(ug.cfg->path, fresh, 1, err, errlen) != 0) {
		free(fresh);
		log_error("reload refused; the running configuration stays",
		    "error", err);
		sd_notify(0, "READY=1");
		return -1;
	}
	if (config_restart_keys(ug.cfg, fresh, restart, sizeof(restart)) > 0)
		log_warn("reload: these keys need a restart and keep their "
		    "old values", "keys", restart);
	/* Keep the old values of the keys that need a restart by swapping
	 * them into the new struct (the old one is then freed with the new
	 * values).  The Redis password and the server derived from [redis]
	 * belong to it too. */
	keys = config_keys(&nkeys);
	for (i = 0; i < nkeys; i++) {
		char *a = (char *)ug.cfg + keys[i].offset,
		    *b = (char *)fresh + keys[i].offset;
		char tmp[sizeof(long) > sizeof(char *) ? sizeof(long) :
		    sizeof(char *)];
		size_t size = keys[i].type == CONFIG_STRING ? sizeof(char *) :
		    keys[i].type == CONFIG_ENUM ? sizeof(int) : sizeof(long);

		if (keys[i].reloadable)
			continue;
		memcpy(tmp, a, size);
		memcpy(a, b, size);
		memcpy(b, tmp, size);
	}
	{
		char *p = ug.cfg->redis_password;
		struct redis_url to = ug.cfg->redis;

		ug.cfg->redis_password = fresh->redis_password;
		fresh->redis_password = p;
		ug.cfg->redis = fresh->redis;
		fresh->redis = to;
	}
	{
		struct config *old = ug.cfg;

		ug.cfg = fresh;
		config_free(old);
		free(old);
	}
	if (verbose == 0)
		log_set_level(ug.cfg->log_level);
	http_configure();
	job_reconfigure();
	queue_reconfigure();
	log_info("configuration reloaded", "file", ug.cfg->path);
	sd_notify(0, "READY=1");
	notify_status();
	return 0;
}

/* job.c's: the drain has finished every job. */
static void
drained(void)
{
	daemon_stop(1);
}

static void
drain_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
	char n[32];

	snprintf(n, sizeof(n), "%ld", job_count());
	log_warn("drain time is up; unfinished requests stay in the "
	    "processing list for the next start", "unfinished", n);
	daemon_stop(0);
}

static void
on_signal(evutil_socket_t sig, short what, void *arg)
{
	char err[512];
	struct timeval tv = { UG_DRAIN_SECONDS, 0 };

	if (sig == SIGHUP) {
		reload(err, sizeof(err));
		return;
	}
	if (ug.draining) {
		log_warn("second signal: exiting now; unfinished requests "
		    "stay in the processing list");
		daemon_stop(0);
		return;
	}
	ug.draining = 1;
	sd_notify(0, "STOPPING=1");
	log_info("stopping: no new requests, finishing those in flight",
	    "signal", sig == SIGTERM ? "TERM" : "INT");
	queue_stop_intake();
	intake_shutdown();
	if (job_count() == 0) {
		daemon_stop(1);
		return;
	}
	evtimer_add(drain_ev, &tv);
}

static void
tick_cb(evutil_socket_t fd, short what, void *arg)
{
	static unsigned long ticks;

	queue_lengths(NULL, NULL);
	job_tick();
	notify_status();
	log_limits_report(now_monotonic());
	if (++ticks % STATS_LOG_EVERY_S == 0)
		stats_log();
}

static void
watchdog_cb(evutil_socket_t fd, short what, void *arg)
{
	sd_notify(0, "WATCHDOG=1");
}

static struct event *
persist_timer(event_callback_fn cb, long usec)
{
	struct timeval tv = { usec / 1000000, usec % 1000000 };
	struct event *ev = event_new(ug.base, -1, EV_PERSIST, cb, NULL);

	if (ev == NULL || event_add(ev, &tv) != 0) {
		fprintf(stderr, "usergated: cannot create a timer\n");
		exit(1);
	}
	return ev;
}

/* libevent's own messages, at most this many a second (the rest counted). */
#define LIBEVENT_LOG_PER_S	5

/*
 * libevent writes its warnings ("[warn] Error from accept() call: Too many
 * open files", once per loop when nothing stops it) to stderr, outside
 * logfmt and without bound.  They go through our log instead, rate-limited.
 */
static void
libevent_log(int severity, const char *msg)
{
	static time_t		 second;
	static unsigned		 lines;
	static unsigned long	 dropped;
	struct timespec		 now;
	enum log_level		 level;
	char			 n[24];

	switch (severity) {
	case EVENT_LOG_DEBUG:
		level = LOG_LEVEL_DEBUG;
		break;
	case EVENT_LOG_MSG:
		level = LOG_LEVEL_INFO;
		break;
	case EVENT_LOG_WARN:
		level = LOG_LEVEL_WARNING;
		break;
	default:
		level = LOG_LEVEL_ERROR;
		break;
	}
	clock_gettime(CLOCK_MONOTONIC, &now);
	if (now.tv_sec != second) {
		second = now.tv_sec;
		lines = 0;
	}
	if (++lines > LIBEVENT_LOG_PER_S) {
		dropped++;
		return;
	}
	snprintf(n, sizeof(n), "%lu", dropped);
	log_kv(level, "libevent", "message", msg, "suppressed",
	    dropped > 0 ? n : NULL, (char *)NULL);
	dropped = 0;
}

/*
 * libevent measures timers with CLOCK_MONOTONIC_COARSE unless told
 * otherwise: a clock up to a tick (4 ms here) behind, so a wait of exactly
 * Retry-After could end a few ms before it (SPEC §5.3: never sooner; a
 * CI run saw 997.5 ms for a Retry-After of 1 s).  The precise clock costs
 * nothing measurable.
 */
static struct event_base *
new_event_base(void)
{
	struct event_config	*cfg;
	struct event_base	*base;

	if ((cfg = event_config_new()) == NULL)
		return NULL;
	event_config_set_flag(cfg, EVENT_BASE_FLAG_PRECISE_TIMER);
	event_set_log_callback(libevent_log);
	base = event_base_new_with_config(cfg);
	event_config_free(cfg);
	return base;
}

/* What state.c needs from above it, wired here so that it names no one. */
static const struct state_hooks hooks = {
	.changed = notify_status,
	.redis_problem = queue_problem,
};

/* The queue adapter's: another live daemon has our instance_id. */
static void
instance_lost(void)
{
	daemon_stop(-1);
}

/*
 * The wiring: what the adapters report goes to job.c's functions (and an
 * instance id lost to main.c's); what job.c and the status socket's
 * commands ask of the daemon as a whole comes here.
 */
static const struct queue_events queue_events = {
	.taken = job_take,
	.ready = job_pump,
	.link = job_redis_changed,
	.heartbeat = job_refresh_claims,
	.held_count = job_count,
	.held = job_held,
	.oldest_age = job_oldest_age,
	.instance_lost = instance_lost,
};
static const struct intake_events intake_events = {
	.taken = job_take_socket,
	.gone = job_forget_conn,
	.new_request_id = job_new_request_id,
};
static const struct job_hooks job_hooks = {
	.drained = drained,
};
static const struct status_hooks status_hooks = {
	.reload = reload,
	.resumed = job_pump,
};
static const struct metrics_hooks metrics_hooks = {
	.gauges = status_gauges,
};

/*
 * The command line: -1 to go on (check_only set for -n), or the exit
 * status of a run that ends here (-V, -h, a usage error).
 */
static int
parse_options(int argc, char **argv, int *check_only)
{
	int ch;

	while ((ch = getopt(argc, argv, "c:nvVh")) != -1) {
		switch (ch) {
		case 'c':
			config_path = optarg;
			break;
		case 'n':
			*check_only = 1;
			break;
		case 'v':
			verbose++;
			break;
		case 'V':
			printf("usergated %s\n", PACKAGE_VERSION);
			return 0;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind != argc) {
		fprintf(stderr, "usergated: unexpected argument '%s'\n",
		    argv[optind]);
		usage(stderr);
		return 2;
	}
	return -1;
}

/* The event loop and the signals it handles; 0, or -1 (logged). */
static int
loop_init(void)
{
	if ((ug.base = new_event_base()) == NULL) {
		log_error("cannot create the event loop");
		return -1;
	}
	ug.started = now_monotonic();
	sig_term = evsignal_new(ug.base, SIGTERM, on_signal, NULL);
	sig_int = evsignal_new(ug.base, SIGINT, on_signal, NULL);
	sig_hup = evsignal_new(ug.base, SIGHUP, on_signal, NULL);
	drain_ev = evtimer_new(ug.base, drain_timeout_cb, NULL);
	if (sig_term == NULL || sig_int == NULL || sig_hup == NULL ||
	    drain_ev == NULL || event_add(sig_term, NULL) ||
	    event_add(sig_int, NULL) || event_add(sig_hup, NULL)) {
		log_error("cannot set up signal handling");
		return -1;
	}
	return 0;
}

/* Teardown, in the reverse order of setup.  Redis first: its pending
 * callbacks run (with no reply) while the jobs they point at still
 * exist. */
static void
teardown(void)
{
	status_shutdown();
	intake_shutdown();
	queue_shutdown();
	/* After Redis: a scrape waiting on it was answered there. */
	metrics_shutdown();
	http_shutdown();
	job_shutdown();
	event_free(tick_ev);
	if (watchdog_ev)
		event_free(watchdog_ev);
	event_free(drain_ev);
	event_free(sig_term);
	event_free(sig_int);
	event_free(sig_hup);
	event_base_free(ug.base);
	log_info("usergated stopped");
	config_free(ug.cfg);
	free(ug.cfg);
}

int
main(int argc, char **argv)
{
	char err[1024], redis[512];
	uint64_t wd_usec = 0;
	int rv, check_only = 0;

	/*
	 * Before any secret is read: a core dump (or a ptrace attach or
	 * /proc/PID/mem read by another process of our user) would hold the
	 * API secret, the Basic header built from it and the Redis password.
	 * A non-dumpable process leaves no core file and its /proc entries
	 * belong to root.  systemd's LimitCORE=0 says the same for the unit.
	 */
	if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) == -1) {
		fprintf(stderr, "usergated: cannot disable core dumps: %s\n",
		    strerror(errno));
		return 1;
	}
	if ((rv = parse_options(argc, argv, &check_only)) != -1)
		return rv;

	/* -n run from a shell checks what the unit would start with. */
	if (check_only && config_credentials_beside(config_path) != 0) {
		fprintf(stderr, "usergated: %s\n", strerror(errno));
		return 1;
	}
	state_init(&hooks);
	if ((ug.cfg = calloc(1, sizeof(*ug.cfg))) == NULL)
		return 1;
	if (config_load(config_path, ug.cfg, 1, err, sizeof(err)) != 0) {
		fprintf(stderr, "usergated: %s\n", err);
		return 2;
	}
	if (check_only) {
		printf("usergated: configuration OK (%s)\n", config_path);
		config_free(ug.cfg);
		free(ug.cfg);
		return 0;
	}
	/* Under journald, lines go as journal entries with fields. */
	log_set_journal(sd_journal_sendv);
	log_init(ug.cfg->log_level);
	if (verbose)
		log_set_level(ug.cfg->log_level + verbose > LOG_LEVEL_DEBUG ?
		    LOG_LEVEL_DEBUG :
		    (enum log_level)(ug.cfg->log_level + verbose));
	signal(SIGPIPE, SIG_IGN);

	if (loop_init() != 0)
		return 1;
	if (http_init() != 0) {
		log_error("cannot initialise libcurl");
		return 1;
	}
	job_init(&job_hooks);
	if (intake_init(&intake_events) != 0 ||
	    status_init(&status_hooks) != 0 ||
	    metrics_init(&metrics_hooks) != 0)
		return 1;	/* they said why */
	if (queue_init(&queue_events) != 0) {
		log_error("cannot set up the redis client");
		return 1;
	}
	tick_ev = persist_timer(tick_cb, 1000000);
	if (sd_watchdog_enabled(0, &wd_usec) > 0 && wd_usec > 0)
		watchdog_ev = persist_timer(watchdog_cb, (long)(wd_usec / 2));

	/* The password is shown as "***": the line goes to the journal. */
	redis_url_show(&ug.cfg->redis, ug.cfg->redis_password != NULL, redis,
	    sizeof(redis));
	log_info("usergated started", "version", PACKAGE_VERSION,
	    "instance_id", ug.cfg->instance_id, "twilio", ug.cfg->api_base,
	    "redis", redis);
	sd_notify(0, "READY=1");
	notify_status();

	event_base_dispatch(ug.base);

	teardown();
	return exit_status;
}
