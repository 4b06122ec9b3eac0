/*
 * log.c: the one logging API (SPEC §7).  Every event is one logfmt line on
 * stderr:
 *
 *	2026-11-26T22:31:04.123Z level=info msg="request created" status=created
 *
 * Under journald (JOURNAL_STREAM names the file that is our stderr) the
 * journal stamps the time itself and understands "<N>" syslog priority
 * prefixes, so the line starts with "<6>" instead of the timestamp.  Once
 * main.c hands us sd_journal_sendv, the line goes instead as one journal
 * entry: MESSAGE= the same line, PRIORITY=, and the fields an operator
 * looks a request up by (REQUEST_ID=, USERGATE_EVENT=, ...), so that
 * "journalctl -u usergated REQUEST_ID=..." tells one request's story.
 *
 * A line is built in a fixed buffer and written with one write(2), so lines
 * from one process never interleave and no allocation happens on the way;
 * logging works even when malloc() does not.  Values are escaped so that no
 * byte of a value -- an Identity, a Twilio error message -- can end the line
 * or be read as another key.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "usergate.h"

/*
 * The longest line written, newline included.  PIPE_BUF (4096 on Linux) is
 * the most a pipe takes atomically; a longer event is rare (a value that
 * large is a bug or an attack) and is truncated, marked as such.
 */
#define LOG_LINE_MAX		4096
/* Appended when something did not fit; room for it is always kept. */
#define LOG_TRUNCATED_MARK	" log_truncated=true"
/* Appended to a value that was cut short. */
#define LOG_VALUE_ELLIPSIS	"..."
/*
 * Journal entries: the line is built after "MESSAGE=", which leaves room
 * to write "<N>" just before it when the entry falls back to stderr.
 */
#define LOG_MESSAGE_FIELD	"MESSAGE="
#define LOG_FIELDS_MAX		12
/* The longest USERGATE_EVENT= value, NUL included. */
#define LOG_EVENT_MAX		64

static enum log_level	 log_level_current = LOG_LEVEL_INFO;
/* -1: not yet looked at; 0: plain stderr; 1: stderr is the journal. */
static int		 log_journal = -1;
static log_journal_fn	 log_journal_send;

static const char *const log_level_names[] = {
	[LOG_LEVEL_ERROR] = "error",
	[LOG_LEVEL_WARNING] = "warning",
	[LOG_LEVEL_INFO] = "info",
	[LOG_LEVEL_DEBUG] = "debug",
};
/* syslog(3) priorities: LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG. */
static const int log_level_priorities[] = {
	[LOG_LEVEL_ERROR] = 3,
	[LOG_LEVEL_WARNING] = 4,
	[LOG_LEVEL_INFO] = 6,
	[LOG_LEVEL_DEBUG] = 7,
};

struct log_line {
	char	 buf[LOG_LINE_MAX];
	size_t	 len;
	size_t	 limit;		/* where the body must stop */
	int	 truncated;
};

/* One journal entry: "FIELD=value" strings in buf, one iovec each. */
struct log_fields {
	struct iovec	 iov[LOG_FIELDS_MAX];
	int		 n;
	char		 buf[LOG_LINE_MAX];
	size_t		 len;
};

/*
 * Logged keys that become journal fields, values as bytes: what a reader
 * looks a request up by.  An Identity is personal data, so it goes to the
 * journal only at the debug level, as it goes to the line only there.
 */
static const struct log_field_key {
	const char	*key;
	const char	*field;		/* "NAME=" */
	enum log_level	 from;		/* only on lines this verbose */
} log_field_keys[] = {
	{ "request_id",		"REQUEST_ID=",		LOG_LEVEL_ERROR },
	{ "twilio_code",	"TWILIO_CODE=",		LOG_LEVEL_ERROR },
	{ "identity",		"IDENTITY=",		LOG_LEVEL_DEBUG },
};
#define LOG_FIELD_KEYS	(sizeof(log_field_keys) / sizeof(log_field_keys[0]))

static int	 detect_journal(void);
static int	 is_safe_char(unsigned char);
static size_t	 utf8_sequence_length(const unsigned char *);
static size_t	 escape_unit(const unsigned char *, char *, size_t *);
static size_t	 escape_value(const char *, char *, size_t, int *);
static void	 line_append(struct log_line *, const char *);
static void	 line_append_key(struct log_line *, const char *);
static void	 line_append_value(struct log_line *, const char *);
static void	 line_prefix(struct log_line *, enum log_level);
static void	 line_write(const char *, size_t);
static void	 fields_add(struct log_fields *, const char *, const char *,
		    size_t);
static void	 log_vkv(const char *, int, const char *, enum log_level,
		    const char *, va_list);

void
log_init(enum log_level level)
{
	log_set_level(level);
	log_journal = detect_journal();
}

void
log_set_journal(log_journal_fn send)
{
	log_journal_send = send;
}

void
log_set_level(enum log_level level)
{
	if ((int)level < (int)LOG_LEVEL_ERROR)
		level = LOG_LEVEL_ERROR;
	if (level > LOG_LEVEL_DEBUG)
		level = LOG_LEVEL_DEBUG;
	log_level_current = level;
}

enum log_level
log_get_level(void)
{
	return log_level_current;
}

/* Returns 0 and sets *out for one of the SPEC's level names, else -1. */
int
log_level_parse(const char *name, enum log_level *out)
{
	size_t	 i;

	if (name == NULL)
		return -1;
	for (i = 0; i < sizeof(log_level_names) / sizeof(log_level_names[0]);
	    i++) {
		if (strcmp(name, log_level_names[i]) == 0) {
			*out = (enum log_level)i;
			return 0;
		}
	}
	return -1;
}

const char *
log_level_name(enum log_level level)
{
	if ((int)level < (int)LOG_LEVEL_ERROR || level > LOG_LEVEL_DEBUG)
		return "unknown";
	return log_level_names[level];
}

/*
 * systemd sets JOURNAL_STREAM to "DEV:INO" of the stream it connected to
 * our stderr.  The variable is inherited by children whose stderr may go
 * elsewhere (a shell redirect, a test harness), so it counts only when it
 * names the file that fd 2 really is (systemd.exec(5)).
 */
static int
detect_journal(void)
{
	const char	*env;
	char		*end;
	uintmax_t	 dev, ino;
	struct stat	 st;

	if ((env = getenv("JOURNAL_STREAM")) == NULL || *env == '\0')
		return 0;
	errno = 0;
	dev = strtoumax(env, &end, 10);
	if (errno != 0 || end == env || *end != ':')
		return 0;
	env = end + 1;
	ino = strtoumax(env, &end, 10);
	if (errno != 0 || end == env || *end != '\0')
		return 0;
	if (fstat(STDERR_FILENO, &st) == -1)
		return 0;
	return (uintmax_t)st.st_dev == dev && (uintmax_t)st.st_ino == ino;
}

/*
 * Characters that can stand bare in a logfmt value: nothing a logfmt
 * parser or a shell-minded reader could take for a separator or a quote.
 * Everything else, all non-ASCII included, makes the value quoted.
 */
static int
is_safe_char(unsigned char c)
{
	if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
	    (c >= '0' && c <= '9'))
		return 1;
	return c != '\0' && strchr("-._:/@+,", c) != NULL;
}

/*
 * Length of the well-formed UTF-8 sequence at s (RFC 3629: no overlong
 * forms, no surrogates, nothing above U+10FFFF), or 0 when s does not start
 * one.  Well-formed text passes through unchanged; a stray byte is escaped
 * as \xNN so that the journal keeps the line as text.
 */
static size_t
utf8_sequence_length(const unsigned char *s)
{
	size_t	 n, i;
	unsigned char lo = 0x80, hi = 0xbf;

	if (s[0] >= 0xc2 && s[0] <= 0xdf)
		n = 2;
	else if (s[0] >= 0xe0 && s[0] <= 0xef) {
		n = 3;
		if (s[0] == 0xe0)
			lo = 0xa0;
		else if (s[0] == 0xed)
			hi = 0x9f;
	} else if (s[0] >= 0xf0 && s[0] <= 0xf4) {
		n = 4;
		if (s[0] == 0xf0)
			lo = 0x90;
		else if (s[0] == 0xf4)
			hi = 0x8f;
	} else
		return 0;
	if (s[1] < lo || s[1] > hi)
		return 0;
	for (i = 2; i < n; i++)
		if (s[i] < 0x80 || s[i] > 0xbf)
			return 0;
	return n;
}

/*
 * The escaped form of the character starting at p, written to unit (at most
 * 4 bytes and a NUL); *consumed is set to the number of input bytes used.
 * Returns the length of the unit.
 */
static size_t
escape_unit(const unsigned char *p, char *unit, size_t *consumed)
{
	size_t	 n;

	*consumed = 1;
	switch (*p) {
	case '"':
	case '\\':
		unit[0] = '\\';
		unit[1] = (char)*p;
		unit[2] = '\0';
		return 2;
	case '\n':
		memcpy(unit, "\\n", 3);
		return 2;
	case '\r':
		memcpy(unit, "\\r", 3);
		return 2;
	case '\t':
		memcpy(unit, "\\t", 3);
		return 2;
	}
	if (*p >= 0x80 && (n = utf8_sequence_length(p)) > 0) {
		memcpy(unit, p, n);
		unit[n] = '\0';
		*consumed = n;
		return n;
	}
	if (*p < 0x20 || *p >= 0x7f) {
		(void)snprintf(unit, 5, "\\x%02x", *p);
		return 4;
	}
	unit[0] = (char)*p;
	unit[1] = '\0';
	return 1;
}

/*
 * Writes the logfmt form of value into buf (size bytes, NUL-terminated when
 * size > 0) and returns its length.  A value that does not fit is cut
 * between whole units -- an escape sequence, a complete UTF-8 character --
 * and ends with "..."; a quoted value always gets its closing quote.
 * *truncated tells whether the value was cut.
 */
static size_t
escape_value(const char *value, char *buf, size_t size, int *truncated)
{
	const unsigned char *s, *p;
	char		 unit[5];
	size_t		 len = 0, ulen, consumed, avail, total = 0, room;
	int		 quote = 0;

	*truncated = 0;
	if (size == 0)
		return 0;
	if (value == NULL)
		value = "";
	s = (const unsigned char *)value;

	/* An empty value is written "" so that "k=" never looks cut off. */
	if (*s == '\0')
		quote = 1;
	for (p = s; *p != '\0'; p += consumed) {
		if (!is_safe_char(*p))
			quote = 1;
		total += escape_unit(p, unit, &consumed);
	}

	/* Room for the content: the size minus the NUL and both quotes. */
	if (size < 1 + (quote ? 2 : 0)) {
		buf[0] = '\0';
		*truncated = 1;
		return 0;
	}
	avail = size - 1 - (quote ? 2 : 0);
	if (quote)
		buf[len++] = '"';
	room = avail;
	for (p = s; *p != '\0'; p += consumed) {
		ulen = escape_unit(p, unit, &consumed);
		/* When cutting, keep room for the ellipsis. */
		if (total > avail &&
		    ulen + sizeof(LOG_VALUE_ELLIPSIS) - 1 > room) {
			ulen = sizeof(LOG_VALUE_ELLIPSIS) - 1;
			if (ulen > room)
				ulen = room;	/* only in a tiny buffer */
			memcpy(buf + len, LOG_VALUE_ELLIPSIS, ulen);
			len += ulen;
			*truncated = 1;
			break;
		}
		memcpy(buf + len, unit, ulen);
		len += ulen;
		room -= ulen;
	}
	if (quote)
		buf[len++] = '"';
	buf[len] = '\0';
	return len;
}

void
log_escape(const char *value, char *buf, size_t size)
{
	size_t	 used;
	int	 truncated;

	if (buf == NULL || size == 0)
		return;
	used = strnlen(buf, size);
	if (used == size)
		return;		/* not a string: nothing safe to append to */
	(void)escape_value(value, buf + used, size - used, &truncated);
}

/* Appends literal text, or marks the line truncated when it does not fit. */
static void
line_append(struct log_line *l, const char *s)
{
	size_t	 n = strlen(s);

	if (l->truncated)
		return;
	if (n > l->limit - l->len) {
		l->truncated = 1;
		return;
	}
	memcpy(l->buf + l->len, s, n);
	l->len += n;
}

/*
 * Keys are string literals in the code, but a key with a space or '='
 * would still break every parser of the line, so anything that is not a
 * safe character becomes '_'.
 */
static void
line_append_key(struct log_line *l, const char *key)
{
	const char	*p;

	if (l->truncated)
		return;
	/* " key=" and at least an empty quoted value must fit. */
	if (strlen(key) + 4 > l->limit - l->len) {
		l->truncated = 1;
		return;
	}
	l->buf[l->len++] = ' ';
	for (p = key; *p != '\0'; p++)
		l->buf[l->len++] = is_safe_char((unsigned char)*p) ? *p : '_';
	l->buf[l->len++] = '=';
}

static void
line_append_value(struct log_line *l, const char *value)
{
	int	 truncated;

	if (l->truncated)
		return;
	/* +1: escape_value writes a NUL, which the next append overwrites. */
	l->len += escape_value(value, l->buf + l->len, l->limit - l->len + 1,
	    &truncated);
	if (truncated)
		l->truncated = 1;
}

/* The timestamp, ISO 8601 UTC with milliseconds, or the journal priority. */
static void
line_prefix(struct log_line *l, enum log_level level)
{
	struct timespec	 ts;
	struct tm	 tm;
	char		 stamp[64];
	size_t		 n;
	int		 r;

	if (log_journal && log_journal_send != NULL)
		r = snprintf(stamp, sizeof(stamp), "%s", LOG_MESSAGE_FIELD);
	else if (log_journal) {
		r = snprintf(stamp, sizeof(stamp), "<%d>",
		    log_level_priorities[level]);
	} else if (clock_gettime(CLOCK_REALTIME, &ts) == -1 ||
	    gmtime_r(&ts.tv_sec, &tm) == NULL ||
	    (n = strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%S",
	    &tm)) == 0) {
		/* Cannot happen with a sane clock; the line still matters. */
		r = snprintf(stamp, sizeof(stamp), "0000-00-00T00:00:00.000Z ");
	} else {
		r = snprintf(stamp + n, sizeof(stamp) - n, ".%03ldZ ",
		    (long)(ts.tv_nsec / 1000000));
	}
	if (r < 0)
		return;
	line_append(l, stamp);
}

/*
 * One write(2) for the whole line.  A failure to write to stderr cannot be
 * reported anywhere, so it is ignored after retrying an interrupted call;
 * a short write (a full pipe) is finished so the line is not left open.
 */
static void
line_write(const char *p, size_t left)
{
	ssize_t		 n;

	while (left > 0) {
		n = write(STDERR_FILENO, p, left);
		if (n == -1) {
			if (errno == EINTR)
				continue;
			return;
		}
		p += n;
		left -= (size_t)n;
	}
}

/*
 * The USERGATE_EVENT= name of a message: its words up to the first ';' (the
 * rest says what happens next), lower case, joined by '_', so that "request
 * not done" is request_not_done.  Messages are literals in the code, so the
 * name stays as long as the message does.
 */
void
log_event_name(const char *msg, char *buf, size_t size)
{
	const unsigned char *p;
	size_t		 len = 0;
	int		 gap = 0;

	if (size == 0)
		return;
	for (p = (const unsigned char *)(msg != NULL ? msg : "");
	    *p != '\0' && *p != ';'; p++) {
		if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
		    (*p >= '0' && *p <= '9'))) {
			gap = len > 0;
			continue;
		}
		if (len + gap + 1 >= size)
			break;
		if (gap)
			buf[len++] = '_';
		gap = 0;
		buf[len++] = (char)(*p >= 'A' && *p <= 'Z' ? *p - 'A' + 'a' :
		    *p);
	}
	buf[len] = '\0';
}

/*
 * Adds "name" followed by the first len bytes of value to the entry, cut
 * to the room left: the entry as a whole is held to the size of a line.
 */
static void
fields_add(struct log_fields *f, const char *name, const char *value,
    size_t len)
{
	size_t	 nlen = strlen(name);

	if (f->n == LOG_FIELDS_MAX || nlen + 1 > sizeof(f->buf) - f->len)
		return;
	if (len > sizeof(f->buf) - f->len - nlen)
		len = sizeof(f->buf) - f->len - nlen;
	memcpy(f->buf + f->len, name, nlen);
	memcpy(f->buf + f->len + nlen, value, len);
	f->iov[f->n].iov_base = f->buf + f->len;
	f->iov[f->n].iov_len = nlen + len;
	f->n++;
	f->len += nlen + len;
}

void
log_kv(enum log_level level, const char *msg, ...)
{
	va_list	 ap;

	va_start(ap, msg);
	log_vkv(NULL, 0, NULL, level, msg, ap);
	va_end(ap);
}

void
log_kv_at(const char *file, int line, const char *func, enum log_level level,
    const char *msg, ...)
{
	va_list	 ap;

	va_start(ap, msg);
	log_vkv(file, line, func, level, msg, ap);
	va_end(ap);
}

/*
 * The journal fields every line has: its priority, our identifier, the
 * event (event is the buffer that holds its name until the line is sent)
 * and, when known, where in the code it was logged.
 */
static void
fields_start(struct log_fields *f, enum log_level level, const char *msg,
    const char *file, int line, const char *func, char *event)
{
	char		 num[32];

	snprintf(num, sizeof(num), "%d", log_level_priorities[level]);
	fields_add(f, "PRIORITY=", num, strlen(num));
	fields_add(f, "SYSLOG_IDENTIFIER=", "usergated",
	    sizeof("usergated") - 1);
	log_event_name(msg, event, LOG_EVENT_MAX);
	fields_add(f, "USERGATE_EVENT=", event, strlen(event));
	if (file != NULL) {
		fields_add(f, "CODE_FILE=", file, strlen(file));
		snprintf(num, sizeof(num), "%d", line);
		fields_add(f, "CODE_LINE=", num, strlen(num));
		fields_add(f, "CODE_FUNC=", func, strlen(func));
	}
}

static void
log_vkv(const char *file, int line, const char *func, enum log_level level,
    const char *msg, va_list ap)
{
	struct log_line	 l;
	struct log_fields f;
	char		 num[32], event[LOG_EVENT_MAX];
	const char	*key, *value;
	size_t		 i, start;
	int		 saved_errno, native;

	/* Dropped before any work: debug calls sit on hot paths. */
	if (level > log_level_current)
		return;
	if ((int)level < (int)LOG_LEVEL_ERROR)
		level = LOG_LEVEL_ERROR;

	/* Callers log and then look at errno; logging must not change it. */
	saved_errno = errno;
	if (log_journal == -1)
		log_journal = detect_journal();
	native = log_journal && log_journal_send != NULL;
	/* iov[0] is kept for MESSAGE=, the line, filled in at the end. */
	f.n = 1;
	f.len = 0;
	if (native)
		fields_start(&f, level, msg, file, line, func, event);

	l.len = 0;
	l.truncated = 0;
	/* Room for the truncation mark and the newline is always kept. */
	l.limit = sizeof(l.buf) - (sizeof(LOG_TRUNCATED_MARK) - 1) - 1;

	line_prefix(&l, level);
	line_append(&l, "level=");
	line_append(&l, log_level_names[level]);
	line_append_key(&l, "msg");
	line_append_value(&l, msg != NULL ? msg : "");

	while ((key = va_arg(ap, const char *)) != NULL) {
		value = va_arg(ap, const char *);
		if (value == NULL)
			continue;
		line_append_key(&l, key);
		line_append_value(&l, value);
		if (!native)
			continue;
		for (i = 0; i < LOG_FIELD_KEYS; i++)
			if (strcmp(key, log_field_keys[i].key) == 0 &&
			    level >= log_field_keys[i].from)
				fields_add(&f, log_field_keys[i].field, value,
				    strnlen(value, LOG_LINE_MAX));
	}

	if (l.truncated) {
		memcpy(l.buf + l.len, LOG_TRUNCATED_MARK,
		    sizeof(LOG_TRUNCATED_MARK) - 1);
		l.len += sizeof(LOG_TRUNCATED_MARK) - 1;
	}
	if (native) {
		f.iov[0].iov_base = l.buf;
		f.iov[0].iov_len = l.len;
		if (log_journal_send(f.iov, f.n) >= 0) {
			errno = saved_errno;
			return;
		}
		/* The journal is gone: the line goes where it would have. */
		start = sizeof(LOG_MESSAGE_FIELD) - 1 - 3;
		snprintf(num, sizeof(num), "<%d>", log_level_priorities[level]);
		memcpy(l.buf + start, num, 3);
	} else
		start = 0;
	l.buf[l.len++] = '\n';
	line_write(l.buf + start, l.len - start);
	errno = saved_errno;
}

/*
 * Limiters that have been used, for log_limits_report.  A limiter joins
 * the list on its first use and stays: they are static objects.
 */
static struct log_limit *log_limits;

int
log_limit_allow(struct log_limit *l, double now)
{
	if (!l->listed) {
		l->listed = 1;
		l->next = log_limits;
		log_limits = l;
	}
	if (now >= l->second + 1 || now < l->second) {
		l->second = now;
		l->used = 0;
	}
	if (l->used < l->per_second) {
		l->used++;
		return 1;
	}
	l->held++;
	return 0;
}

unsigned long long
log_limit_held(struct log_limit *l, double now)
{
	unsigned long long held = l->held;

	/* Within the second the held lines are still being counted. */
	if (held == 0 || (now < l->second + 1 && now >= l->second))
		return 0;
	l->held = 0;
	return held;
}

void
log_limits_report(double now)
{
	struct log_limit *l;
	unsigned long long held;
	char count[32];

	for (l = log_limits; l != NULL; l = l->next) {
		if ((held = log_limit_held(l, now)) == 0)
			continue;
		snprintf(count, sizeof(count), "%llu", held);
		log_warn("suppressed similar lines", "like", l->msg, "count",
		    count);
	}
}
