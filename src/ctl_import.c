/*
 * usergatectl import: the backfill (see usergatectl.h, usergatectl(1)).
 *
 * The input is read a record at a time, only as far as the window of
 * unanswered requests needs, so a file of millions of lines costs the
 * memory of the window plus a small mark per line.  Each record becomes
 * one JSON request with a RequestId of its own, validated here with the
 * daemon's rules (request_parse) before anything is sent; bad records are
 * recorded and never sent.  Every finished line is appended to the state
 * file at once, which is what a rerun skips, and what the report is
 * written from at the end, in input order, however the answers came.
 * One libevent loop drives the sink, the progress timer and the signals.
 */
#include "config.h"

#include <sys/ioctl.h>
#include <sys/stat.h>

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <csv.h>
#include <curses.h>
#include <term.h>
#include <event2/event.h>
#include <jansson.h>

#include "usergate.h"
#include "usergatectl.h"

#define IMPORT_WINDOW		256
#define IMPORT_WINDOW_MAX	65536
#define RATE_SECONDS		10	/* the current rate's span */
#define PLAIN_EVERY		5	/* seconds between plain lines */
#define INVALID_SHOWN		20	/* invalid lines told on stderr */
#define CSV_COLUMNS		8

enum input_format { INPUT_NONE, INPUT_CSV, INPUT_JSONL };

/* The request field each CSV column fills; -1 for none. */
static const struct {
	const char	*header;
	const char	*field;
} csv_names[] = {
	{ "identity", "Identity" },
	{ "friendly_name", "FriendlyName" },
	{ "friendlyname", "FriendlyName" },
	{ "attributes", "Attributes" },
	{ "role_sid", "RoleSid" },
	{ "rolesid", "RoleSid" },
	{ "webhook_enabled", "WebhookEnabled" },
	{ "webhookenabled", "WebhookEnabled" },
};

/* What the state file says of one line; status 0: nothing yet. */
struct mark {
	uint64_t	 hash;
	int64_t		 off;		/* of its latest entry in the state */
	unsigned char	 status;	/* enum result_status + 1 */
};

/* One record of the input, made into a request (or found bad). */
struct item {
	long		 line;
	uint64_t	 hash;
	char		*text;		/* the request; NULL when invalid */
	char		*identity;	/* as far as it could be read */
	const char	*code;		/* invalid: error.code */
	char		 message[512];
};

/* A request in the window: sent, or asked about (ops->finished). */
struct pend {
	long		 line;
	uint64_t	 hash;
	char		*identity;
	char		*text;
	int		 asking;
	struct pend	*next;
};

struct import {
	/* the command */
	const char	*input;		/* "-": standard input */
	enum input_format format;
	const char	*report_path;
	const char	*state_path;
	char		*state_alloc;	/* state_path when made here */
	long		 window;
	int		 dry_run;
	int		 quiet;
	char		 run_key[17];

	/* the input */
	FILE		*in;
	long		 lineno;	/* physical lines read */
	int		 eof;
	char		*buf;
	size_t		 bufcap;
	struct csv_parser csv;
	int		 header_done;
	int		 ncolumns;	/* in the header */
	const char	*column_field[CSV_COLUMNS];
	char		*fields[CSV_COLUMNS];
	int		 nfields;	/* of the row being parsed */
	int		 row_ready;
	int		 in_record;
	long		 rec_line;
	uint64_t	 rec_hash;

	/* the state file and the marks of every line */
	FILE		*state;
	int64_t		 state_off;
	struct mark	*marks;
	size_t		 nmarks;

	/* validation */
	const struct reply_scope *scope;

	/* the run */
	struct event_base *base;
	struct ctl_sink	*sink;
	int		 ready;
	struct pend	**pbuckets;
	size_t		 npbuckets;
	long		 npend;
	long		 nasking;
	int		 stopping;
	int		 signal;	/* that stopped us, or 0 */
	int		 lost;
	int		 fatal;		/* usage or I/O error: exit 2 */
	long		 invalid_shown;

	/* counts of this run, skipped lines with their recorded status */
	long long	 count[RESULT_STATUS_COUNT];
	long long	 done;
	long long	 skipped;
	long long	 sent;
	long long	 total;		/* records expected; -1: unknown */

	/* progress */
	double		 started;
	int		 tty;
	const char	*tcr, *tel;
	int		 bar_shown;
	long long	 ring_done[RATE_SECONDS + 1];
	double		 ring_at[RATE_SECONDS + 1];
	int		 ring_n;
	long		 ticks;
	double		 limit_rate;	/* creates/s the deployment allows */
};

static uint64_t
hash_add(uint64_t h, const void *buf, size_t len)
{
	const unsigned char *p = buf;

	while (len-- > 0)
		h = (h ^ *p++) * 1099511628211ULL;
	return h;
}
#define HASH_INIT	14695981039346656037ULL

/* ------------------------------------------------------------------ */
/* Progress: a bar on a terminal, a plain line elsewhere. */

static int
put_err(int c)
{
	return putc(c, stderr);
}

static void
bar_clear(struct import *im)
{
	if (!im->bar_shown)
		return;
	tputs(im->tcr, 1, put_err);
	tputs(im->tel, 1, put_err);
	fflush(stderr);
	im->bar_shown = 0;
}

/* A message on stderr, never mixed into the bar. */
static void
say(struct import *im, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void
say(struct import *im, const char *fmt, ...)
{
	va_list ap;

	bar_clear(im);
	va_start(ap, fmt);
	fputs("usergatectl: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
}

static double
current_rate(const struct import *im)
{
	int first = im->ring_n > RATE_SECONDS ? im->ring_n % (RATE_SECONDS + 1)
	    : 0;
	int last = (im->ring_n - 1) % (RATE_SECONDS + 1);
	double span;

	if (im->ring_n < 2)
		return 0;
	span = im->ring_at[last] - im->ring_at[first];
	return span > 0 ? (im->ring_done[last] - im->ring_done[first]) /
	    span : 0;
}

static void
format_eta(const struct import *im, double rate, char *buf, size_t size)
{
	long long left;
	long s;

	/* The deployment's rate window is a ceiling the rate will meet. */
	if (im->limit_rate > 0 && (rate <= 0 || rate > im->limit_rate))
		rate = im->limit_rate;
	if (im->total < 0 || rate <= 0) {
		snprintf(buf, size, "--");
		return;
	}
	left = im->total > im->done ? im->total - im->done : 0;
	s = (long)(left / rate + 0.5);
	if (s >= 3600)
		snprintf(buf, size, "%ldh%02ldm", s / 3600, s / 60 % 60);
	else
		snprintf(buf, size, "%ldm%02lds", s / 60, s % 60);
}

static void
progress_text(const struct import *im, char *buf, size_t size)
{
	char eta[32], tot[32];
	double rate = current_rate(im);

	format_eta(im, rate, eta, sizeof(eta));
	if (im->total >= 0)
		snprintf(tot, sizeof(tot), "%lld", im->total);
	else
		snprintf(tot, sizeof(tot), "?");
	snprintf(buf, size, "%lld/%s created %lld exists %lld duplicate %lld "
	    "invalid %lld failed %lld  %.0f/s  ETA %s", im->done, tot,
	    im->count[RESULT_CREATED], im->count[RESULT_EXISTS] +
	    im->count[RESULT_UPDATED], im->count[RESULT_DUPLICATE],
	    im->count[RESULT_INVALID], im->count[RESULT_FAILED], rate, eta);
}

static void
bar_draw(struct import *im)
{
	struct winsize ws;
	char text[512], line[600];
	int cols = 80, width = 20, fill = 0, i;

	if (ioctl(STDERR_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0)
		cols = ws.ws_col;
	progress_text(im, text, sizeof(text));
	if (im->total > 0)
		fill = (int)(width * (im->done > im->total ? im->total :
		    im->done) / im->total);
	line[0] = '[';
	for (i = 0; i < width; i++)
		line[1 + i] = i < fill ? '#' : '.';
	snprintf(line + 1 + width, sizeof(line) - 1 - width, "] %s", text);
	if ((int)strlen(line) > cols - 1)
		line[cols > 1 ? cols - 1 : 0] = '\0';
	tputs(im->tcr, 1, put_err);
	fputs(line, stderr);
	tputs(im->tel, 1, put_err);
	fflush(stderr);
	im->bar_shown = 1;
}

static void
on_tick(evutil_socket_t fd, short what, void *arg)
{
	struct import *im = arg;
	int slot = im->ring_n % (RATE_SECONDS + 1);
	char text[512];

	(void)fd;
	(void)what;
	im->ring_done[slot] = im->done;
	im->ring_at[slot] = now_monotonic();
	im->ring_n++;
	im->ticks++;
	if (im->quiet || im->dry_run)
		return;
	if (im->tty)
		bar_draw(im);
	else if (im->ticks % PLAIN_EVERY == 0) {
		progress_text(im, text, sizeof(text));
		fprintf(stderr, "usergatectl: import: %s\n", text);
	}
}

/*
 * The terminal's own strings to go to the start of the line and clear it
 * (terminfo "cr", "el"), when stderr is a terminal that has them.
 */
static void
progress_init(struct import *im)
{
	int err;
	char *cr, *el;

	im->tty = 0;
	if (im->quiet || im->dry_run || !isatty(STDERR_FILENO))
		return;
	if (setupterm(NULL, STDERR_FILENO, &err) != OK)
		return;
	cr = tigetstr("cr");
	el = tigetstr("el");
	if (cr == NULL || cr == (char *)-1 || el == NULL || el == (char *)-1)
		return;
	im->tcr = cr;
	im->tel = el;
	im->tty = 1;
}

/*
 * The deployment's ceiling on creates per second: [twilio] rate_limit
 * (averaged over rate_window_s), from the config file (-c) or from the
 * status socket's `show stats`, as rate_window_limit (creates a window
 * allows) over rate_window_s.  0 when unknown or unlimited.
 */
static double
rate_from_stats(const char *status_path)
{
	char *answer;
	json_t *st, *lim, *win;
	double rate = 0;

	if ((answer = ctl_status_ask(status_path, "show stats\n", 1)) == NULL)
		return 0;
	st = json_loads(answer, 0, NULL);
	free(answer);
	lim = json_object_get(st, "rate_window_limit");
	win = json_object_get(st, "rate_window_s");
	if (json_is_number(lim) && json_is_number(win) &&
	    json_number_value(lim) > 0 && json_number_value(win) > 0)
		rate = json_number_value(lim) / json_number_value(win);
	json_decref(st);
	return rate;
}

/* ------------------------------------------------------------------ */
/* The state file and the marks. */

static struct mark *
mark_at(struct import *im, long line, int grow)
{
	if ((size_t)line >= im->nmarks) {
		size_t n = im->nmarks ? im->nmarks : 1024;
		struct mark *m;

		if (!grow)
			return NULL;
		while (n <= (size_t)line)
			n *= 2;
		if ((m = realloc(im->marks, n * sizeof(*m))) == NULL)
			return NULL;
		memset(m + im->nmarks, 0, (n - im->nmarks) * sizeof(*m));
		im->marks = m;
		im->nmarks = n;
	}
	return &im->marks[line];
}

static int
status_of(const char *name)
{
	int s;

	for (s = 0; s < RESULT_STATUS_COUNT; s++)
		if (name != NULL && strcmp(name, result_status_name(s)) == 0)
			return s;
	return -1;
}

/* Reads what an earlier run finished: the latest entry of each line. */
static int
state_load(struct import *im)
{
	char *buf = NULL;
	size_t cap = 0;
	ssize_t n;
	int64_t off = 0;

	rewind(im->state);
	while ((n = getline(&buf, &cap, im->state)) > 0) {
		json_t *e = json_loadb(buf, (size_t)n, 0, NULL);
		json_int_t line = json_integer_value(json_object_get(e,
		    "line"));
		const char *hash = json_string_value(json_object_get(e,
		    "hash"));
		int s = status_of(json_string_value(json_object_get(e,
		    "status")));
		struct mark *m;

		/* A torn last line (killed while writing) is not an entry. */
		if (line > 0 && hash != NULL && s >= 0 && buf[n - 1] == '\n' &&
		    (m = mark_at(im, (long)line, 1)) != NULL) {
			m->hash = strtoull(hash, NULL, 16);
			m->off = off;
			m->status = (unsigned char)(s + 1);
		}
		json_decref(e);
		off += n;
	}
	free(buf);
	if (ferror(im->state))
		return -1;
	if (fseeko(im->state, 0, SEEK_END) != 0)
		return -1;
	im->state_off = ftello(im->state);
	/* A torn line is ended, so that the next entry starts a line. */
	if (im->state_off > 0 && n <= 0 && off > 0) {
		fseeko(im->state, im->state_off - 1, SEEK_SET);
		if (fgetc(im->state) != '\n') {
			fseeko(im->state, 0, SEEK_END);
			fputc('\n', im->state);
			im->state_off++;
		}
		fseeko(im->state, 0, SEEK_END);
	}
	return 0;
}

/* Appends a finished line to the state file, flushed at once, so that a
 * run killed the next moment still knows it. */
static void
state_record(struct import *im, long line, uint64_t hash,
    enum result_status s, const char *identity, const char *sid,
    const char *code, const char *message)
{
	char hex[17];
	json_t *e;
	char *text;
	struct mark *m;

	snprintf(hex, sizeof(hex), "%016llx", (unsigned long long)hash);
	e = json_pack("{s:I, s:s, s:s, s:s?, s:s?, s:s?, s:s?}", "line",
	    (json_int_t)line, "hash", hex, "status", result_status_name(s),
	    "identity", identity, "user_sid", sid, "error_code", code,
	    "error_message", message);
	text = e ? json_dumps(e, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
	json_decref(e);
	if (text == NULL || fprintf(im->state, "%s\n", text) < 0 ||
	    fflush(im->state) != 0) {
		say(im, "cannot write the state file %s: %s", im->state_path ?
		    im->state_path : "(temporary)", strerror(errno));
		im->fatal = 1;
		im->stopping = 1;
		event_base_loopexit(im->base, NULL);
	} else if ((m = mark_at(im, line, 1)) != NULL) {
		m->hash = hash;
		m->off = im->state_off;
		m->status = (unsigned char)(s + 1);
	}
	if (text != NULL)
		im->state_off += (int64_t)strlen(text) + 1;
	free(text);
	im->count[s]++;
	im->done++;
}

/* ------------------------------------------------------------------ */
/* The input: records into requests. */

/* The object of a record, as sent: our RequestId, no Wait. */
static void
item_finish(struct import *im, struct item *it, json_t *req)
{
	struct request r;
	char id[64];
	enum request_error e;

	json_object_del(req, "Wait");
	json_object_del(req, "wait");
	json_object_del(req, "request_id");
	snprintf(id, sizeof(id), "import:%s:%ld", im->run_key, it->line);
	json_object_set_new(req, "RequestId", json_string(id));
	it->text = json_dumps(req, JSON_COMPACT | JSON_PRESERVE_ORDER);
	if (it->text == NULL) {
		it->code = request_error_code(REQ_MALFORMED);
		snprintf(it->message, sizeof(it->message),
		    "cannot be written as JSON");
		return;
	}
	e = request_parse(it->text, strlen(it->text), im->scope, &r,
	    it->message, sizeof(it->message));
	if (r.identity != NULL)
		it->identity = strdup(r.identity);
	if (e != REQ_OK) {
		it->code = request_error_code(e);
		free(it->text);
		it->text = NULL;
	}
	request_free(&r);
}

/*
 * A JSON line that is not an object: the daemon's own word on it when it
 * begins like one (bad UTF-8, duplicate keys), else why.  (The daemon would
 * take any other first byte for msgpack, which a text line is not.)
 */
static void
item_bad_raw(struct import *im, struct item *it, const char *raw,
    size_t len, const char *why)
{
	struct request r;
	enum request_error e = REQ_OK;

	memset(&r, 0, sizeof(r));
	if (len > 0 && raw[0] == '{')
		e = request_parse(raw, len, im->scope, &r, it->message,
	    sizeof(it->message));
	if (r.identity != NULL)
		it->identity = strdup(r.identity);
	request_free(&r);
	if (e == REQ_OK) {
		e = REQ_MALFORMED;
		snprintf(it->message, sizeof(it->message), "%s", why);
	}
	it->code = request_error_code(e);
}

static int
blank(const char *s, size_t len)
{
	while (len > 0 && (s[len - 1] == ' ' || s[len - 1] == '\t'))
		len--;
	return len == 0;
}

/* The next physical line without its end, or -1 at the end or on error. */
static ssize_t
read_line(struct import *im)
{
	ssize_t n = getline(&im->buf, &im->bufcap, im->in);

	if (n < 0)
		return -1;
	im->lineno++;
	while (n > 0 && (im->buf[n - 1] == '\n' || im->buf[n - 1] == '\r'))
		im->buf[--n] = '\0';
	/* Spreadsheets start their UTF-8 exports with a byte order mark. */
	if (im->lineno == 1 && n >= 3 && memcmp(im->buf, "\xef\xbb\xbf", 3)
	    == 0) {
		memmove(im->buf, im->buf + 3, (size_t)n - 2);
		n -= 3;
	}
	return n;
}

static int
jsonl_next(struct import *im, struct item *it)
{
	json_error_t jerr;
	json_t *req;
	ssize_t n;

	do {
		if ((n = read_line(im)) < 0)
			return 0;
	} while (blank(im->buf, (size_t)n));
	it->line = im->lineno;
	it->hash = hash_add(HASH_INIT, im->buf, (size_t)n);
	req = json_loadb(im->buf, (size_t)n, JSON_REJECT_DUPLICATES, &jerr);
	if (req == NULL || !json_is_object(req)) {
		item_bad_raw(im, it, im->buf, (size_t)n, req == NULL ?
		    jerr.text : "not a JSON object");
		json_decref(req);
		return 1;
	}
	item_finish(im, it, req);
	json_decref(req);
	return 1;
}

static void
csv_field(void *s, size_t len, void *arg)
{
	struct import *im = arg;

	if (im->nfields < CSV_COLUMNS)
		im->fields[im->nfields] = s != NULL && len > 0 ?
		    strndup(s, len) : NULL;
	im->nfields++;
}

static void
csv_row(int c, void *arg)
{
	struct import *im = arg;

	(void)c;
	im->row_ready = 1;
}

static void
csv_row_clear(struct import *im)
{
	int i;

	for (i = 0; i < CSV_COLUMNS; i++) {
		free(im->fields[i]);
		im->fields[i] = NULL;
	}
	im->nfields = 0;
	im->row_ready = 0;
}

/* The header row: which request field each column fills. */
static int
csv_header(struct import *im)
{
	int i;
	size_t k;

	if (im->nfields > CSV_COLUMNS) {
		say(im, "%s: more than %d columns in the header", im->input,
		    CSV_COLUMNS);
		return -1;
	}
	im->ncolumns = im->nfields;
	for (i = 0; i < im->nfields; i++) {
		const char *name = im->fields[i] ? im->fields[i] : "";

		im->column_field[i] = NULL;
		for (k = 0; k < sizeof(csv_names) / sizeof(csv_names[0]); k++)
			if (strcasecmp(name, csv_names[k].header) == 0)
				im->column_field[i] = csv_names[k].field;
		if (im->column_field[i] == NULL) {
			say(im, "%s: line %ld: unknown column \"%s\" "
			    "(identity, friendly_name, attributes, role_sid, "
			    "webhook_enabled)", im->input, im->rec_line, name);
			return -1;
		}
	}
	im->header_done = 1;
	return 0;
}

static void
csv_item(struct import *im, struct item *it)
{
	json_t *req;
	int i;

	if (im->nfields != im->ncolumns) {
		it->code = request_error_code(REQ_MALFORMED);
		snprintf(it->message, sizeof(it->message), "%d fields where "
		    "the header has %d", im->nfields, im->ncolumns);
		if (im->nfields > 0 && im->fields[0] != NULL &&
		    strcmp(im->column_field[0], "Identity") == 0)
			it->identity = strdup(im->fields[0]);
		return;
	}
	if ((req = json_object()) == NULL)
		return;
	/* An empty field is an absent one. */
	for (i = 0; i < im->ncolumns; i++) {
		const char *v = im->fields[i];

		if (v == NULL)
			continue;
		if (strcmp(im->column_field[i], "WebhookEnabled") == 0 &&
		    (strcmp(v, "true") == 0 || strcmp(v, "false") == 0))
			json_object_set_new(req, im->column_field[i],
			    json_boolean(strcmp(v, "true") == 0));
		else if (json_object_set_new(req, im->column_field[i],
		    json_string(v)) != 0) {
			it->code = request_error_code(REQ_BAD_UTF8);
			snprintf(it->message, sizeof(it->message),
			    "%s is not valid UTF-8", im->column_field[i]);
			json_decref(req);
			return;
		}
	}
	item_finish(im, it, req);
	json_decref(req);
}

/* 1 with an item, 0 at the end, -1 on a fatal error (said). */
static int
csv_next(struct import *im, struct item *it)
{
	for (;;) {
		ssize_t n;
		int ended = 0;

		if ((n = read_line(im)) < 0) {
			ended = 1;
			if (csv_fini(&im->csv, csv_field, csv_row, im) != 0 &&
			    im->in_record) {
				it->line = im->rec_line;
				it->hash = im->rec_hash;
				it->code = request_error_code(REQ_MALFORMED);
				snprintf(it->message, sizeof(it->message),
				    "unterminated quoted field");
				im->in_record = 0;
				csv_row_clear(im);
				if (im->header_done)
					return 1;
				say(im, "%s: line %ld: the header: %s",
				    im->input, it->line, it->message);
				return -1;
			}
			if (!im->row_ready)
				return 0;
		} else {
			if (!im->in_record) {
				if (blank(im->buf, (size_t)n))
					continue;
				im->in_record = 1;
				im->rec_line = im->lineno;
				im->rec_hash = HASH_INIT;
			} else
				im->rec_hash = hash_add(im->rec_hash, "\n", 1);
			im->rec_hash = hash_add(im->rec_hash, im->buf,
			    (size_t)n);
			im->buf[n] = '\n';
			if (csv_parse(&im->csv, im->buf, (size_t)n + 1,
			    csv_field, csv_row, im) != (size_t)n + 1) {
				/* The parser's state is lost: start afresh
				 * at the next line. */
				it->line = im->rec_line;
				it->hash = im->rec_hash;
				it->code = request_error_code(REQ_MALFORMED);
				snprintf(it->message, sizeof(it->message),
				    "%s", csv_strerror(csv_error(&im->csv)));
				csv_free(&im->csv);
				csv_init(&im->csv, CSV_STRICT |
				    CSV_STRICT_FINI | CSV_APPEND_NULL |
				    CSV_EMPTY_IS_NULL);
				im->in_record = 0;
				csv_row_clear(im);
				if (!im->header_done) {
					say(im, "%s: line %ld: the header: %s",
					    im->input, it->line, it->message);
					return -1;
				}
				return 1;
			}
			if (!im->row_ready)
				continue;
		}
		im->in_record = 0;
		if (!im->header_done) {
			if (csv_header(im) != 0)
				return -1;
			csv_row_clear(im);
			if (ended)
				return 0;
			continue;
		}
		it->line = im->rec_line;
		it->hash = im->rec_hash;
		csv_item(im, it);
		csv_row_clear(im);
		return 1;
	}
}

static int
input_next(struct import *im, struct item *it)
{
	memset(it, 0, sizeof(*it));
	if (im->eof)
		return 0;
	switch (im->format == INPUT_CSV ? csv_next(im, it) :
	    jsonl_next(im, it)) {
	case 1:
		return 1;
	case -1:
		return -1;
	}
	if (ferror(im->in)) {
		say(im, "%s: %s", im->input, strerror(errno));
		return -1;
	}
	im->eof = 1;
	return 0;
}

static void
item_free(struct item *it)
{
	free(it->text);
	free(it->identity);
}

/* Records expected in a regular file: its lines that are not blank, less
 * the header.  -1 for a pipe. */
static long long
count_records(struct import *im)
{
	struct stat st;
	FILE *f;
	char *buf = NULL;
	size_t cap = 0;
	ssize_t n;
	long long total = 0;

	if (strcmp(im->input, "-") == 0 || stat(im->input, &st) != 0 ||
	    !S_ISREG(st.st_mode) || (f = fopen(im->input, "r")) == NULL)
		return -1;
	while ((n = getline(&buf, &cap, f)) >= 0) {
		while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
			n--;
		if (!blank(buf, (size_t)n))
			total++;
	}
	free(buf);
	fclose(f);
	if (im->format == INPUT_CSV && total > 0)
		total--;
	return total;
}

/* ------------------------------------------------------------------ */
/* The window. */

static size_t
pend_bucket(const struct import *im, long line)
{
	return (size_t)line * 2654435761u % im->npbuckets;
}

static struct pend *
pend_take(struct import *im, long line)
{
	struct pend **pp;

	for (pp = &im->pbuckets[pend_bucket(im, line)]; *pp != NULL;
	    pp = &(*pp)->next) {
		struct pend *p = *pp;

		if (p->line == line) {
			*pp = p->next;
			im->npend--;
			return p;
		}
	}
	return NULL;
}

static void
pend_free(struct pend *p)
{
	free(p->identity);
	free(p->text);
	free(p);
}

static void
send_one(struct import *im, struct pend *p)
{
	char err[256];

	p->asking = 0;
	if (im->sink->ops->send(im->sink, p->text, strlen(p->text), err,
	    sizeof(err)) != 0) {
		say(im, "cannot send line %ld: %s", p->line, err);
		im->lost = 1;
		im->stopping = 1;
		event_base_loopexit(im->base, NULL);
		return;
	}
	im->sent++;
}

static void pump(struct import *);

/* ops->finished: an identity that has a user record is done. */
static void
on_finished(const char *identity, json_t *record, void *arg)
{
	struct import *im = arg;
	struct pend *p = NULL;
	size_t b;

	for (b = 0; b < im->npbuckets && p == NULL; b++) {
		struct pend *q;

		for (q = im->pbuckets[b]; q != NULL; q = q->next)
			if (q->asking && strcmp(q->identity, identity) == 0) {
				p = q;
				break;
			}
	}
	if (p == NULL)
		return;
	im->nasking--;
	if (record == NULL) {
		if (!im->stopping)
			send_one(im, p);
		return;
	}
	p = pend_take(im, p->line);
	state_record(im, p->line, p->hash, RESULT_EXISTS, p->identity,
	    json_string_value(json_object_get(record, "sid")), NULL, NULL);
	im->skipped++;
	pend_free(p);
	pump(im);
}

static void
finish(struct import *im)
{
	im->stopping = 1;
	event_base_loopexit(im->base, NULL);
}

static void
tell_invalid(struct import *im, const struct item *it)
{
	if (im->quiet)
		return;
	if (im->invalid_shown++ < INVALID_SHOWN)
		say(im, "%s: line %ld: %s: %s", im->input, it->line, it->code,
		    it->message);
	else if (im->invalid_shown == INVALID_SHOWN + 1)
		say(im, "more invalid lines: see the report (--report)");
}

/*
 * Reads and sends until the window is full or the input ends.  Lines the
 * state file has finished with the same text are counted, not sent, but
 * for failed ones, which get another chance.
 */
/*
 * A line that needs no sending: finished in an earlier run (with the same
 * text), invalid here, or a dry run's.  1 when it is accounted for.
 */
static int
item_settled(struct import *im, struct item *it, const struct mark *m)
{
	if (m != NULL && m->status != 0 && m->hash == it->hash &&
	    m->status - 1 != RESULT_FAILED) {
		im->count[m->status - 1]++;
		im->done++;
		im->skipped++;
		return 1;
	}
	if (it->text == NULL) {
		tell_invalid(im, it);
		if (!im->dry_run)
			state_record(im, it->line, it->hash, RESULT_INVALID,
			    it->identity, NULL, it->code, it->message);
		else {
			im->count[RESULT_INVALID]++;
			im->done++;
		}
		return 1;
	}
	if (im->dry_run) {
		printf("%s\n", it->text);
		im->done++;
		return 1;
	}
	return 0;
}

static void
pump(struct import *im)
{
	const char **ask = NULL;
	size_t nask = 0;
	struct item it;

	if (im->sink != NULL && im->sink->ops->finished != NULL &&
	    (ask = calloc((size_t)im->window, sizeof(*ask))) == NULL) {
		say(im, "out of memory");
		im->fatal = 1;
		finish(im);
		return;
	}
	while (!im->stopping && im->ready && im->npend < im->window) {
		struct mark *m;
		struct pend *p;
		int r;
		size_t b;

		if ((r = input_next(im, &it)) <= 0) {
			if (r < 0)
				im->fatal = 1;
			break;
		}
		m = mark_at(im, it.line, 0);
		if (item_settled(im, &it, m)) {
			item_free(&it);
			continue;
		}
		if ((p = calloc(1, sizeof(*p))) == NULL) {
			item_free(&it);
			im->fatal = 1;
			break;
		}
		p->line = it.line;
		p->hash = it.hash;
		p->identity = it.identity;
		p->text = it.text;
		b = pend_bucket(im, p->line);
		p->next = im->pbuckets[b];
		im->pbuckets[b] = p;
		im->npend++;
		/* Never recorded: Redis may know it finished all the same. */
		if (ask != NULL && (m == NULL || m->status == 0) &&
		    p->identity != NULL) {
			p->asking = 1;
			im->nasking++;
			ask[nask++] = p->identity;
		} else
			send_one(im, p);
	}
	if (nask > 0 && im->sink->ops->finished(im->sink, ask, nask,
	    on_finished, im) != 0) {
		size_t b;
		struct pend *q;

		/* It cannot tell: send them all. */
		for (b = 0; b < im->npbuckets; b++)
			for (q = im->pbuckets[b]; q != NULL; q = q->next)
				if (q->asking) {
					im->nasking--;
					send_one(im, q);
				}
	}
	free(ask);
	if (im->fatal || (im->eof && im->npend == 0))
		finish(im);
}

/* ------------------------------------------------------------------ */
/* The sink's events. */

static void
on_ready(void *arg)
{
	struct import *im = arg;

	im->ready = 1;
	pump(im);
}

static void
on_result(const char *request_id, json_t *res, void *arg)
{
	struct import *im = arg;
	char prefix[64];
	const char *status, *tail;
	json_t *err;
	struct pend *p;
	long line;
	int s;

	snprintf(prefix, sizeof(prefix), "import:%s:", im->run_key);
	if (strncmp(request_id, prefix, strlen(prefix)) != 0)
		return;		/* not one of ours */
	tail = request_id + strlen(prefix);
	line = strtol(tail, NULL, 10);
	if ((p = pend_take(im, line)) == NULL)
		return;
	status = json_string_value(json_object_get(res, "status"));
	if ((s = status_of(status)) < 0) {
		s = RESULT_FAILED;
		err = NULL;
	} else
		err = json_object_get(res, "error");
	state_record(im, p->line, p->hash, s, p->identity,
	    json_string_value(json_object_get(json_object_get(res, "user"),
	    "sid")), err ? json_string_value(json_object_get(err, "code")) :
	    status ? NULL : "no_status", err ?
	    json_string_value(json_object_get(err, "message")) : NULL);
	pend_free(p);
	pump(im);
}

static void
on_lost(const char *reason, void *arg)
{
	struct import *im = arg;

	say(im, "%s", reason);
	im->lost = 1;
	im->stopping = 1;
	event_base_loopexit(im->base, NULL);
}

static void
on_signal(evutil_socket_t sig, short what, void *arg)
{
	struct import *im = arg;

	(void)what;
	im->signal = (int)sig;
	im->stopping = 1;
	event_base_loopexit(im->base, NULL);
}

/* ------------------------------------------------------------------ */
/* The end: the report, the summary, how to resume. */

static void
csv_text(FILE *f, const char *s)
{
	fputc(',', f);
	if (s != NULL && *s != '\0')
		csv_fwrite(f, s, strlen(s));
}

/* One CSV line per line finished, in input order, from the state. */
static int
write_report(struct import *im)
{
	FILE *f, *st;
	char *buf = NULL;
	size_t cap = 0, line;
	int rv = 0;

	if ((f = fopen(im->report_path, "w")) == NULL) {
		say(im, "%s: %s", im->report_path, strerror(errno));
		return -1;
	}
	st = im->state;
	fflush(st);
	fprintf(f, "line,identity,status,user_sid,error_code,"
	    "error_message\n");
	for (line = 1; line < im->nmarks; line++) {
		const struct mark *m = &im->marks[line];
		json_t *e;

		if (m->status == 0)
			continue;
		if (fseeko(st, m->off, SEEK_SET) != 0 ||
		    getline(&buf, &cap, st) < 0 ||
		    (e = json_loads(buf, 0, NULL)) == NULL) {
			rv = -1;
			continue;
		}
		fprintf(f, "%zu", line);
		csv_text(f, json_string_value(json_object_get(e, "identity")));
		csv_text(f, result_status_name(m->status - 1));
		csv_text(f, json_string_value(json_object_get(e, "user_sid")));
		csv_text(f, json_string_value(json_object_get(e,
		    "error_code")));
		csv_text(f, json_string_value(json_object_get(e,
		    "error_message")));
		fputc('\n', f);
		json_decref(e);
	}
	free(buf);
	fseeko(st, 0, SEEK_END);
	if (fclose(f) != 0 || rv != 0) {
		say(im, "%s: cannot write the report", im->report_path);
		return -1;
	}
	return 0;
}

/* Counts over every line the state knows, earlier runs included. */
static int
summary(struct import *im, double seconds)
{
	long long n[RESULT_STATUS_COUNT] = { 0 }, all = 0;
	size_t line;
	int s, bad;

	for (line = 1; line < im->nmarks; line++)
		if (im->marks[line].status != 0) {
			n[im->marks[line].status - 1]++;
			all++;
		}
	bad = n[RESULT_INVALID] + n[RESULT_FAILED] > 0;
	if (im->quiet)
		return bad;
	bar_clear(im);
	fprintf(stderr, "usergatectl: import of %s: %lld lines finished, "
	    "%lld sent in %.1f s (%.0f/s), %lld finished before\n",
	    im->input, all, im->sent, seconds, seconds > 0 ? im->sent /
	    seconds : 0, im->skipped);
	for (s = 0; s < RESULT_STATUS_COUNT; s++)
		fprintf(stderr, "  %-10s %10lld\n", result_status_name(s),
		    n[s]);
	return bad;
}

/* An argument as the shell reads it back. */
static void
shell_word(FILE *f, const char *s)
{
	const char *p;

	if (*s != '\0' && strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmn"
	    "opqrstuvwxyz0123456789_./:=@%+,-") == strlen(s)) {
		fprintf(f, " %s", s);
		return;
	}
	fputs(" '", f);
	for (p = s; *p != '\0'; p++) {
		if (*p == '\'')
			fputs("'\\''", f);
		else
			fputc(*p, f);
	}
	fputc('\'', f);
}

static void
tell_resume(struct import *im, int argc, char **argv, const char *config,
    const char *request_path, const char *status_path)
{
	char tot[32] = "";
	int i;

	if (im->total >= 0)
		snprintf(tot, sizeof(tot), " of %lld", im->total);
	fprintf(stderr, "usergatectl: %lld%s lines finished; %s\n", im->done,
	    tot, im->state_path != NULL ? "to resume, run the same command "
	    "again:" : "standard input without --state FILE cannot resume; "
	    "the command was:");
	fprintf(stderr, "  usergatectl");
	if (config != NULL) {
		fprintf(stderr, " -c");
		shell_word(stderr, config);
	} else {
		fprintf(stderr, " -S");
		shell_word(stderr, request_path);
	}
	fprintf(stderr, " -s");
	shell_word(stderr, status_path);
	for (i = 0; i < argc; i++)
		shell_word(stderr, argv[i]);
	fputc('\n', stderr);
}

/* ------------------------------------------------------------------ */
/* The command. */

static void
import_usage(FILE *f)
{
	fprintf(f, "usage: usergatectl [-c CONFIG] [-S REQUEST_SOCK] "
	    "[-s STATUS_SOCK] import FILE|-\n"
	    "           [--format csv|jsonl] [--report FILE] [--state FILE]\n"
	    "           [--window N] [--dry-run] [--quiet]\n");
}

/* -1 to go on, or the exit status of a run that ends here. */
static int
import_options(struct import *im, int argc, char **argv)
{
	static const struct option opts[] = {
		{ "format", required_argument, NULL, 'f' },
		{ "report", required_argument, NULL, 'r' },
		{ "state", required_argument, NULL, 's' },
		{ "window", required_argument, NULL, 'w' },
		{ "dry-run", no_argument, NULL, 'n' },
		{ "quiet", no_argument, NULL, 'q' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	char *end;
	int ch;

	optind = 0;
	while ((ch = getopt_long(argc, argv, "hq", opts, NULL)) != -1) {
		switch (ch) {
		case 'f':
			if (strcmp(optarg, "csv") == 0)
				im->format = INPUT_CSV;
			else if (strcmp(optarg, "jsonl") == 0)
				im->format = INPUT_JSONL;
			else {
				fprintf(stderr, "usergatectl: --format takes "
				    "csv or jsonl\n");
				return 2;
			}
			break;
		case 'r':
			im->report_path = optarg;
			break;
		case 's':
			im->state_path = optarg;
			break;
		case 'w':
			im->window = strtol(optarg, &end, 10);
			if (*end != '\0' || im->window < 1 ||
			    im->window > IMPORT_WINDOW_MAX) {
				fprintf(stderr, "usergatectl: --window takes "
				    "1..%d\n", IMPORT_WINDOW_MAX);
				return 2;
			}
			break;
		case 'n':
			im->dry_run = 1;
			break;
		case 'q':
			im->quiet = 1;
			break;
		case 'h':
			import_usage(stdout);
			return 0;
		default:
			import_usage(stderr);
			return 2;
		}
	}
	if (optind + 1 != argc) {
		fprintf(stderr, "usergatectl: import takes one FILE, or - for "
		    "standard input\n");
		import_usage(stderr);
		return 2;
	}
	im->input = argv[optind];
	return -1;
}

static int
ends_with(const char *s, const char *tail)
{
	size_t n = strlen(s), t = strlen(tail);

	return n >= t && strcasecmp(s + n - t, tail) == 0;
}

/*
 * The run's key, in every RequestId: the same input file, or for standard
 * input the same state file, gives the same RequestIds on every run.
 */
static int
run_key(struct import *im)
{
	const char *what = strcmp(im->input, "-") != 0 ? im->input :
	    im->state_path != NULL ? im->state_path : "-";
	char *real = realpath(what, NULL);
	uint64_t h;

	if (real != NULL)
		what = real;
	h = hash_add(HASH_INIT, what, strlen(what));
	snprintf(im->run_key, sizeof(im->run_key), "%016llx",
	    (unsigned long long)h);
	free(real);
	return 0;
}

/* The input, its format, the state file and the run's key. */
static int
import_open(struct import *im)
{
	char defstate[PATH_MAX];
	int stdin_input = strcmp(im->input, "-") == 0;

	if (im->format == INPUT_NONE) {
		if (ends_with(im->input, ".csv"))
			im->format = INPUT_CSV;
		else if (stdin_input || ends_with(im->input, ".jsonl") ||
		    ends_with(im->input, ".ndjson"))
			im->format = INPUT_JSONL;
		else {
			fprintf(stderr, "usergatectl: %s: cannot tell the "
			    "format from the name: give --format csv|jsonl\n",
			    im->input);
			return -1;
		}
	}
	if (stdin_input)
		im->in = stdin;
	else if ((im->in = fopen(im->input, "r")) == NULL) {
		fprintf(stderr, "usergatectl: %s: %s\n", im->input,
		    strerror(errno));
		return -1;
	}
	if (im->format == INPUT_CSV)
		csv_init(&im->csv, CSV_STRICT | CSV_STRICT_FINI |
		    CSV_APPEND_NULL | CSV_EMPTY_IS_NULL);
	if (im->dry_run)
		return run_key(im);
	if (im->state_path == NULL && !stdin_input) {
		snprintf(defstate, sizeof(defstate), "%s.import-state",
		    im->input);
		if ((im->state_alloc = strdup(defstate)) == NULL)
			return -1;
		im->state_path = im->state_alloc;
	}
	if (im->state_path != NULL)
		im->state = fopen(im->state_path, "a+");
	else
		im->state = tmpfile();
	if (im->state == NULL || state_load(im) != 0) {
		fprintf(stderr, "usergatectl: state file %s: %s\n",
		    im->state_path ? im->state_path : "(temporary)",
		    strerror(errno));
		return -1;
	}
	return run_key(im);
}

static void
import_free(struct import *im)
{
	size_t b;

	if (im->pbuckets != NULL)
		for (b = 0; b < im->npbuckets; b++)
			while (im->pbuckets[b] != NULL) {
				struct pend *p = im->pbuckets[b];

				im->pbuckets[b] = p->next;
				pend_free(p);
			}
	free(im->pbuckets);
	if (im->format == INPUT_CSV)
		csv_free(&im->csv);
	csv_row_clear(im);
	if (im->in != NULL && im->in != stdin)
		fclose(im->in);
	if (im->state != NULL)
		fclose(im->state);
	free(im->marks);
	free(im->buf);
	free(im->state_alloc);
}

/*
 * -c: the daemon's config file, as the Redis sink reads it (no Twilio
 * secret, which the operator may not be allowed to read), for the
 * ReplyTo scope and the rate limit.  0, or -1 after saying why.
 */
static int
import_config(struct import *im, const char *path, struct config *cfg,
    struct reply_scope *scope)
{
	char err[512];

	if (config_credentials_beside(path) != 0) {
		fprintf(stderr, "usergatectl: %s\n", strerror(errno));
		return -1;
	}
	if (config_load(path, cfg, CONFIG_CREDENTIALS_REDIS_ONLY, err,
	    sizeof(err)) != 0) {
		fprintf(stderr, "usergatectl: %s\n", err);
		return -1;
	}
	/* ReplyTo is checked as the daemon checks it. */
	scope->allowed = cfg->reply_prefix;
	scope->own = cfg->prefix;
	im->scope = scope;
	/* rate_limit is creates per second, over the window. */
	if (cfg->rate_limit > 0)
		im->limit_rate = cfg->rate_limit;
	return 0;
}

/*
 * Through Redis with -c (cfg, the file import_config read), else the
 * request socket.  0, or -1 said.
 */
static int
import_sink(struct import *im, const struct ctl_sink_events *ev,
    const struct config *cfg, const char *request_path)
{
	char err[512] = "";

	if (cfg != NULL)
		im->sink = ctl_sink_redis(im->base, cfg, ev, err,
		    sizeof(err));
	else
		im->sink = ctl_sink_socket(im->base, request_path, ev, err,
		    sizeof(err));
	if (im->sink == NULL && err[0] != '\0')
		fprintf(stderr, "usergatectl: %s\n", err);
	return im->sink != NULL ? 0 : -1;
}

/* --dry-run: every line validated and printed, nothing sent. */
static int
import_dry_run(struct import *im)
{
	im->ready = 1;
	pump(im);
	if (!im->quiet)
		fprintf(stderr, "usergatectl: dry run of %s: %lld lines, "
		    "%lld invalid\n", im->input, im->done,
		    im->count[RESULT_INVALID]);
	return im->fatal ? 2 : im->count[RESULT_INVALID] > 0;
}

/* The loop, with the progress tick and the signals, until it ends. */
static int
import_run(struct import *im)
{
	struct event *tick, *sigint, *sigterm;
	struct timeval second = { 1, 0 };
	int rv = -1;

	tick = event_new(im->base, -1, EV_PERSIST, on_tick, im);
	sigint = evsignal_new(im->base, SIGINT, on_signal, im);
	sigterm = evsignal_new(im->base, SIGTERM, on_signal, im);
	if (tick != NULL && sigint != NULL && sigterm != NULL) {
		event_add(tick, &second);
		event_add(sigint, NULL);
		event_add(sigterm, NULL);
		on_tick(-1, 0, im);
		event_base_dispatch(im->base);
		bar_clear(im);
		rv = 0;
	}
	if (tick != NULL)
		event_free(tick);
	if (sigint != NULL)
		event_free(sigint);
	if (sigterm != NULL)
		event_free(sigterm);
	return rv;
}

int
ctl_import(int argc, char **argv, const char *config_path,
    const char *request_path, const char *status_path)
{
	static const struct ctl_sink_events events = {
		on_ready, on_result, on_lost, NULL,
	};
	struct ctl_sink_events ev = events;
	struct import im;
	struct reply_scope scope;
	struct config cfg;
	int rv, have_cfg = 0, bad;

	memset(&im, 0, sizeof(im));
	im.window = IMPORT_WINDOW;
	if ((rv = import_options(&im, argc, argv)) != -1)
		return rv;
	if (config_path != NULL) {
		if (import_config(&im, config_path, &cfg, &scope) != 0)
			return 2;
		have_cfg = 1;
	}
	rv = 2;
	if (import_open(&im) != 0)
		goto out;
	im.total = count_records(&im);
	progress_init(&im);
	if (!im.dry_run && !have_cfg && status_path != NULL)
		im.limit_rate = rate_from_stats(status_path);
	if ((im.base = event_base_new()) == NULL)
		goto out;
	im.npbuckets = (size_t)im.window * 2;
	if ((im.pbuckets = calloc(im.npbuckets, sizeof(*im.pbuckets))) ==
	    NULL)
		goto out;
	signal(SIGPIPE, SIG_IGN);
	ev.arg = &im;
	im.started = now_monotonic();
	if (im.dry_run) {
		rv = import_dry_run(&im);
		goto out;
	}
	if (import_sink(&im, &ev, have_cfg ? &cfg : NULL,
	    request_path) != 0)
		goto out;
	if (import_run(&im) != 0)
		goto out;
	if (im.report_path != NULL && write_report(&im) != 0)
		im.fatal = 1;
	bad = summary(&im, now_monotonic() - im.started);
	if (im.signal != 0 || im.lost) {
		if (im.signal != 0)
			fprintf(stderr, "usergatectl: stopped by %s\n",
			    im.signal == SIGINT ? "SIGINT" : "SIGTERM");
		tell_resume(&im, argc, argv, config_path, request_path,
		    status_path);
	}
	if (im.signal != 0)
		rv = 128 + im.signal;
	else if (im.lost || im.fatal)
		rv = 2;
	else
		rv = bad;
out:
	if (im.sink != NULL)
		im.sink->ops->close(im.sink);
	if (im.base != NULL)
		event_base_free(im.base);
	import_free(&im);
	if (im.tty)
		del_curterm(cur_term);
	if (have_cfg)
		config_free(&cfg);
	return rv;
}
