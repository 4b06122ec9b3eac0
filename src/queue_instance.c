/*
 * queue_instance.c: this instance in Redis.  At each connection its
 * heartbeat key is checked (is another live daemon using our instance_id?)
 * and written, then kept alive every few seconds; a previous run's
 * processing list is recovered at start, dead instances' lists at each
 * heartbeat (takeover), and after an outage our own list is reconciled
 * with what our jobs hold.
 */
#include "config.h"

#include <sys/types.h>

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>

#include "queue_int.h"

#define HEARTBEAT_EVERY_S	5

int queue_registered_once;
int queue_reconcile_pending;
static struct event *heartbeat_ev;
static char hostname[256];

/*
 * Hands processing lists back to the request list so that their oldest
 * element is taken first, counting one recovery for each element.  With
 * ARGV[3] == "self" it recovers our own list (at start); otherwise every
 * registered instance whose heartbeat expired.  One script, so two live
 * instances can never both take the same list.  (The processing and
 * heartbeat keys are derived from the prefix: standalone Redis only.)  A
 * dead instance's list of the wrong type is left alone and named in the
 * error; the other lists are recovered all the same.
 */
const char queue_takeover_lua[] =
	LUA_WRONGTYPE
	"local moved = 0\n"
	"local e = wrongtype(KEYS[1], 'set') or wrongtype(KEYS[2], 'list') or\n"
	"  wrongtype(KEYS[3], 'hash')\n"
	"if e then return e end\n"
	"local bad\n"
	"local function recover(id)\n"
	"  local l = ARGV[1] .. 'processing:' .. id\n"
	"  local e = wrongtype(l, 'list')\n"
	"  if e then return e end\n"
	"  while true do\n"
	"    local v = redis.call('LMOVE', l, KEYS[2], 'LEFT', 'RIGHT')\n"
	"    if not v then break end\n"
	"    redis.call('HINCRBY', KEYS[3], v, 1)\n"
	"    moved = moved + 1\n"
	"  end\n"
	"end\n"
	"if ARGV[3] == 'self' then\n"
	"  return recover(ARGV[2]) or moved\n"
	"end\n"
	"for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do\n"
	"  if id ~= ARGV[2] and "
	    "redis.call('EXISTS', ARGV[1] .. 'instance:' .. id) == 0 then\n"
	"    e = recover(id)\n"
	"    if e then bad = e else redis.call('SREM', KEYS[1], id) end\n"
	"  end\n"
	"end\n"
	"return bad or moved\n";

/*
 * After a reconnect our processing list may hold elements no job of ours
 * holds (a take whose reply was lost with the link, or anything put there
 * behind our back, in any number).  ARGV lists what our jobs hold (a
 * multiset); everything else goes back to the right of the request list,
 * oldest rightmost, to be taken again as room allows.  Nothing is read
 * into usergated, however long the list.
 */
const char queue_reconcile_lua[] =
	LUA_WRONGTYPE
	"local e = wrongtype(KEYS[1], 'list') or wrongtype(KEYS[2], 'list')\n"
	"if e then return e end\n"
	"local held = {}\n"
	"for _, v in ipairs(ARGV) do held[v] = (held[v] or 0) + 1 end\n"
	"local kept, back, i = {}, {}, 0\n"
	"while true do\n"
	"  local page = redis.call('LRANGE', KEYS[1], i, i + 999)\n"
	"  for _, v in ipairs(page) do\n"
	"    if (held[v] or 0) > 0 then\n"
	"      held[v] = held[v] - 1\n"
	"      kept[#kept + 1] = v\n"
	"    else\n"
	"      back[#back + 1] = v\n"
	"    end\n"
	"  end\n"
	"  if #page < 1000 then break end\n"
	"  i = i + 1000\n"
	"end\n"
	"if #back == 0 then return 0 end\n"
	"local function push(k, t)\n"
	"  for j = 1, #t, 1000 do\n"
	"    redis.call('RPUSH', k, unpack(t, j, math.min(j + 999, #t)))\n"
	"  end\n"
	"end\n"
	"push(KEYS[2], back)\n"
	"redis.call('DEL', KEYS[1])\n"
	"push(KEYS[1], kept)\n"
	"return #back\n";

static void	 on_registered(struct queue_conn *, redisReply *, void *);

/* The value of our heartbeat key: who holds this instance_id. */
void
queue_heartbeat_value(char *value, size_t size)
{
	snprintf(value, size, "pid=%d host=%s", (int)getpid(), hostname);
}

/* A zombie (exited, not yet reaped) counts as gone. */
static int
process_alive(int pid)
{
	char path[64], buf[256], *p;
	FILE *f;

	if (kill(pid, 0) != 0 && errno != EPERM)
		return 0;
	snprintf(path, sizeof(path), "/proc/%d/stat", pid);
	if ((f = fopen(path, "r")) == NULL)
		return 1;
	p = fgets(buf, sizeof(buf), f);
	fclose(f);
	if (p != NULL && (p = strrchr(buf, ')')) != NULL && p[1] == ' ' &&
	    p[2] == 'Z')
		return 0;
	return 1;
}

/*
 * The first GET of our heartbeat key tells whether another live daemon uses
 * our instance_id.  A key left by a previous run of ours on this host whose
 * process is gone (killed, crashed) is ours to take over.
 */
static void
on_instance_check(struct queue_conn *ac, redisReply *reply, void *priv)
{
	const redisReply *r = reply;
	char self[300];
	int pid;
	char host[256];

	if (r == NULL)
		return;
	if (r->type == REDIS_REPLY_ERROR || queue_setup_failed) {
		queue_hello_failed(ac, "GET", r);
		return;
	}
	if (r->type == REDIS_REPLY_STRING && !queue_registered_once) {
		queue_heartbeat_value(self, sizeof(self));
		if (sscanf(r->str, "pid=%d host=%255s", &pid, host) == 2 &&
		    strcmp(r->str, self) != 0) {
			int alive = strcmp(host, hostname) != 0 ||
			    process_alive(pid);
			if (alive) {
				log_error("another live daemon uses this "
				    "instance_id; give each daemon a unique "
				    "[redis] instance_id",
				    "instance_id", ug.cfg->instance_id,
				    "holder", r->str);
				queue_events->instance_lost();
				return;
			}
		}
	}
	on_registered(ac, reply, priv);
}

static void
heartbeat_write(void)
{
	char value[300], ttl[16];

	queue_heartbeat_value(value, sizeof(value));
	snprintf(ttl, sizeof(ttl), "%d", HEARTBEAT_TTL_S);
	queue_send_strings(queue_cmd, NULL, NULL, 5, "SET", queue_keys.instance,
	    value, "EX", ttl);
	queue_send_strings(queue_cmd, NULL, NULL, 3, "SADD",
	    queue_keys.instances, ug.cfg->instance_id);
}

static void
on_recovered(struct queue_conn *ac, redisReply *reply, void *priv)
{
	const redisReply *r = reply;

	if (r == NULL)
		return;
	if (r->type != REDIS_REPLY_INTEGER) {
		queue_refused(FAULT_TAKEOVER, r);
		/* Our own list is then reconciled before we take anything:
		 * what our jobs do not hold goes back to the request list.
		 * Other instances' lists are tried again at the next
		 * heartbeat. */
		if (priv != NULL)
			queue_reconcile_pending = 1;
		return;
	}
	queue_fault_clear(FAULT_TAKEOVER);
	if (r->integer > 0) {
		char n[32];

		snprintf(n, sizeof(n), "%lld", r->integer);
		stats.recovered += (unsigned long long)r->integer;
		log_warn("requests recovered from a processing list",
		    "count", n,
		    "from", priv ? "own list (previous run)" : "dead instance");
		queue_events->ready();
	}
}

static void
takeover(int self)
{
	if (queue_cmd == NULL || queue_script_sha[SCRIPT_TAKEOVER][0] == '\0')
		return;
	queue_send_strings(queue_cmd, on_recovered, self ? (void *)1 : NULL, 9,
	    "EVALSHA", queue_script_sha[SCRIPT_TAKEOVER], "3",
	    queue_keys.instances, queue_keys.requests, queue_keys.recoveries,
	    ug.cfg->prefix, ug.cfg->instance_id, self ? "self" : "others");
}

/*
 * After an outage our processing list may hold requests no job of ours
 * knows: a take or a BLMOVE whose reply was lost with the connection.
 * Nobody else would ever finish them (we are alive), so they go back to the
 * request list, where intake takes them as room allows (queue_reconcile_lua).
 * Sent by queue_take, only while no take is on its way: what our jobs hold
 * then is exactly what of the list is being worked on.
 */
static void
on_reconcile(struct queue_conn *ac, redisReply *reply, void *priv)
{
	const redisReply *r = reply;

	if (!queue_take_answered(r, REDIS_REPLY_INTEGER))
		return;
	queue_reconcile_pending = 0;
	if (r->integer > 0) {
		char n[32];

		snprintf(n, sizeof(n), "%lld", r->integer);
		log_warn("requests in our processing list that no job holds "
		    "went back to the request list", "count", n);
	}
	queue_events->ready();
}

int
queue_reconcile_send(void)
{
	const char **argv;
	size_t *lens, n;
	int rv = -1;

	n = (size_t)queue_events->held_count();
	argv = calloc(n + 5, sizeof(*argv));
	lens = calloc(n + 5, sizeof(*lens));
	if (argv != NULL && lens != NULL) {
		n = queue_events->held(argv + 5, lens + 5, n);
		argv[0] = "EVALSHA"; lens[0] = 7;
		argv[1] = queue_script_sha[SCRIPT_RECONCILE];
		lens[1] = strlen(argv[1]);
		argv[2] = "2"; lens[2] = 1;
		argv[3] = queue_keys.processing; lens[3] = strlen(argv[3]);
		argv[4] = queue_keys.requests; lens[4] = strlen(argv[4]);
		rv = queue_send_argv(queue_cmd, on_reconcile, NULL,
		    (int)(n + 5), argv, lens);
	}
	free(argv);
	free(lens);
	return rv;
}

static void
on_registered(struct queue_conn *ac, redisReply *reply, void *priv)
{
	int first = !queue_registered_once;

	if (reply == NULL || ac != queue_cmd || queue_setup_failed)
		return;
	heartbeat_write();
	if (first) {
		/* Whatever a previous run left in our processing list goes back
		 * to the head of the request list before we take anything. */
		takeover(1);
		queue_registered_once = 1;
	} else {
		queue_reconcile_pending = 1;
	}
	queue_link_up(first);
}

/* Sent after the scripts' loads on each new connection: its answer goes on
 * to register us. */
void
queue_instance_check(void)
{
	queue_send_strings(queue_cmd, on_instance_check, NULL, 2, "GET",
	    queue_keys.instance);
}

static void
heartbeat_cb(evutil_socket_t fd, short what, void *arg)
{
	if (!queue_ready)
		return;
	heartbeat_write();
	queue_events->heartbeat();
	takeover(0);
}

/* The heartbeat removal at exit: its own loop and connection. */
struct removal {
	struct event_base	*base;
	struct queue_conn	*conn;	/* NULL once lost (and freed) */
};

static void
on_removed(struct queue_conn *c, redisReply *reply, void *arg)
{
	struct removal *rm = arg;

	event_base_loopbreak(rm->base);
}

static void
on_removal_closed(struct queue_conn *c, const char *reason, void *arg)
{
	struct removal *rm = arg;

	rm->conn = NULL;
	event_base_loopbreak(rm->base);
}

/*
 * A clean exit removes our heartbeat at once (only if it is still ours), so
 * a restart need not wait for it to expire and a peer may take over what
 * the drain left.  The daemon's loop is over: a loop of our own waits a
 * second at most, for nothing but this connection.
 */
static void
heartbeat_remove(void)
{
	struct queue_conn_params p;
	struct queue_conn_events ev = { NULL, on_removal_closed, NULL, NULL };
	struct removal rm;
	char value[300], err[128];

	if (!queue_registered_once || (rm.base = event_base_new()) == NULL)
		return;
	ev.arg = &rm;
	queue_link_params(&p);
	p.connect_timeout_ms = p.command_timeout_ms = 1000;
	if ((rm.conn = queue_conn_open(rm.base, &p, &ev, err,
	    sizeof(err))) != NULL) {
		queue_link_hello(rm.conn, NULL);
		queue_heartbeat_value(value, sizeof(value));
		if (queue_send_strings(rm.conn, on_removed, &rm, 5, "EVAL",
		    "if redis.call('GET', KEYS[1]) == ARGV[1] then "
		    "return redis.call('DEL', KEYS[1]) end return 0", "1",
		    queue_keys.instance, value) == 0)
			event_base_dispatch(rm.base);
		queue_conn_close(rm.conn);
	}
	event_base_free(rm.base);
}

int
queue_instance_init(void)
{
	struct timeval tv = { HEARTBEAT_EVERY_S, 0 };

	if (gethostname(hostname, sizeof(hostname)) != 0)
		strcpy(hostname, "localhost");
	hostname[sizeof(hostname) - 1] = '\0';
	if ((heartbeat_ev = event_new(ug.base, -1, EV_PERSIST, heartbeat_cb,
	    NULL)) == NULL)
		return -1;
	evtimer_add(heartbeat_ev, &tv);
	return 0;
}

void
queue_instance_shutdown(void)
{
	if (heartbeat_ev)
		event_free(heartbeat_ev);
	heartbeat_ev = NULL;
	heartbeat_remove();
}
