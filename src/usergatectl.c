/*
 * usergatectl: talks to usergated's two sockets (SPEC §6.3).
 *
 * Status commands send one line to the status socket and print the answer
 * up to the empty line that ends it.  `create` writes one JSON request line
 * to the request socket and prints the result line.  Output is the daemon's
 * own JSON where it answers JSON, so it pipes into jq.
 *
 * Exit status: 0 success; 1 the daemon said no (an error answer, printed
 * on stderr; health degraded; a create that did not succeed); 2 bad usage
 * or no daemon to talk to.
 */
#include "config.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <errno.h>
#include <getopt.h>
#include <grp.h>
#include <poll.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "usergatectl.h"

#define DEFAULT_STATUS	"/run/usergate/status.sock"
#define DEFAULT_REQUEST	"/run/usergate/usergate.sock"
#define STATUS_TIMEOUT_MS 10000
#define ANSWER_MAX	(64 * 1024 * 1024)

static const char *status_path = DEFAULT_STATUS;
static const char *request_path = DEFAULT_REQUEST;
static const char *config_path;		/* -c: import through Redis */

static void
usage(FILE *f)
{
	fprintf(f,
	    "usage: usergatectl [-s STATUS_SOCK] show stats|metrics|queue\n"
	    "       usergatectl [-s STATUS_SOCK] "
	    "health|pause|resume|reload|help\n"
	    "       usergatectl [-s STATUS_SOCK] dead list [N]\n"
	    "       usergatectl [-s STATUS_SOCK] dead retry [N|all]\n"
	    "       usergatectl [-S REQUEST_SOCK] create IDENTITY "
	    "[--friendly-name S]\n"
	    "                   [--attributes JSON] [--role-sid RL...]\n"
	    "                   [--webhook-enabled true|false] "
	    "[--request-id ID]\n"
	    "                   [--reply-to KEY] [--no-wait] "
	    "[--timeout SECONDS]\n"
	    "       usergatectl [-c CONFIG] [-S REQUEST_SOCK] [-s STATUS_SOCK] "
	    "import FILE|-\n"
	    "                   [--format csv|jsonl] [--report FILE] "
	    "[--state FILE]\n"
	    "                   [--window N] [--dry-run] [--quiet]\n"
	    "\n"
	    "  -s PATH        status socket (default " DEFAULT_STATUS ")\n"
	    "  -S PATH        request socket (default " DEFAULT_REQUEST ")\n"
	    "  -c CONFIG      import through Redis as usergated's config says\n"
	    "  -h, --help     this help\n"
	    "  -V, --version  the version\n"
	    "\n"
	    "exit status: 0 ok; 1 the daemon said no "
	    "(error, degraded, create failed);\n"
	    "2 bad usage or daemon not reachable\n");
}

/*
 * EACCES: the daemon runs, but its sockets (and their directory, 0750)
 * belong to its group.  Name that group and the fix, rather than leave
 * the user wondering whether usergated is running.
 */
void
ctl_say_not_allowed(const char *path)
{
	char dir[sizeof(((struct sockaddr_un *)NULL)->sun_path)], *slash;
	const char *group = "usergate", *user = "YOUR-USER";
	struct group *gr;
	struct passwd *pw;
	struct stat st;

	snprintf(dir, sizeof(dir), "%s", path);
	if ((slash = strrchr(dir, '/')) == NULL)
		snprintf(dir, sizeof(dir), ".");
	else if (slash == dir)
		slash[1] = '\0';	/* a socket in / */
	else
		*slash = '\0';
	if ((stat(path, &st) == 0 || stat(dir, &st) == 0) &&
	    (gr = getgrgid(st.st_gid)) != NULL)
		group = gr->gr_name;
	if ((pw = getpwuid(getuid())) != NULL)
		user = pw->pw_name;
	fprintf(stderr, "usergatectl: cannot connect to %s: permission denied: "
	    "you are not in the group %s; ask an administrator to add you "
	    "(usermod -aG %s %s), then log in again\n", path, group, group,
	    user);
}

int
ctl_connect(const char *path, int quiet)
{
	struct sockaddr_un sun;
	int fd;

	memset(&sun, 0, sizeof(sun));
	sun.sun_family = AF_UNIX;
	if (strlen(path) >= sizeof(sun.sun_path)) {
		fprintf(stderr, "usergatectl: socket path too long: %s\n",
		    path);
		return -1;
	}
	strcpy(sun.sun_path, path);
	if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0) {
		fprintf(stderr, "usergatectl: socket: %s\n", strerror(errno));
		return -1;
	}
	if (connect(fd, (struct sockaddr *)&sun, sizeof(sun)) != 0) {
		if (quiet) {
			close(fd);
			return -1;
		}
		if (errno == EACCES) {
			ctl_say_not_allowed(path);
			close(fd);
			return -1;
		}
		fprintf(stderr, "usergatectl: cannot connect to %s: %s "
		    "(is usergated running?)\n", path, strerror(errno));
		close(fd);
		return -1;
	}
	return fd;
}

/* MSG_NOSIGNAL: a daemon that hangs up (a drain, a restart) is an error
 * to report, not a SIGPIPE that kills us without a word. */
static int
write_all(int fd, const char *buf, size_t len)
{
	while (len > 0) {
		ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		buf += n;
		len -= (size_t)n;
	}
	return 0;
}

static long
ms_left(const struct timespec *deadline)
{
	struct timespec now;

	if (deadline == NULL)
		return -1;
	clock_gettime(CLOCK_MONOTONIC, &now);
	return (deadline->tv_sec - now.tv_sec) * 1000 +
	    (deadline->tv_nsec - now.tv_nsec) / 1000000;
}

/*
 * Where the answer in buf ends: at `end`, or (end_line) at the first empty
 * line, which is the very first line of an answer with no lines (`dead
 * list` of an empty list).  NULL when it has not arrived yet.
 */
static char *
answer_end(char *buf, size_t len, const char *end, int end_line)
{
	if (end_line && len > 0 && buf[0] == '\n')
		return buf;
	return len >= strlen(end) ? strstr(buf, end) : NULL;
}

/*
 * Reads until `end` (a terminator string) has been seen or the peer closes;
 * with end_line, an answer that is only an empty line ends there too.
 * Returns the text before the terminator (malloc'd), or NULL on timeout or
 * error (said on stderr).
 */
static char *
read_until(int fd, const char *end, int end_line, long timeout_ms)
{
	struct timespec deadline, *dl = NULL;
	size_t len = 0, cap = 4096;
	char *buf = malloc(cap);

	if (buf == NULL)
		return NULL;
	if (timeout_ms >= 0) {
		clock_gettime(CLOCK_MONOTONIC, &deadline);
		deadline.tv_sec += timeout_ms / 1000;
		deadline.tv_nsec += (timeout_ms % 1000) * 1000000;
		if (deadline.tv_nsec >= 1000000000) {
			deadline.tv_sec++;
			deadline.tv_nsec -= 1000000000;
		}
		dl = &deadline;
	}
	for (;;) {
		struct pollfd p = { fd, POLLIN, 0 };
		long left = ms_left(dl);
		ssize_t n;
		char *hit;

		buf[len] = '\0';
		if ((hit = answer_end(buf, len, end, end_line)) != NULL) {
			*hit = '\0';
			return buf;
		}
		if (dl != NULL && left <= 0) {
			fprintf(stderr,
			    "usergatectl: no answer from usergated in time\n");
			break;
		}
		if (poll(&p, 1, dl ? (int)left : -1) < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		if (!(p.revents & (POLLIN | POLLHUP | POLLERR)))
			continue;
		if (len + 4096 + 1 > cap) {
			char *nb;

			if (cap > ANSWER_MAX ||
			    (nb = realloc(buf, cap * 2)) == NULL)
				break;
			buf = nb;
			cap *= 2;
		}
		n = read(fd, buf + len, cap - len - 1);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			if (len > 0) {
				buf[len] = '\0';
				return buf;	/* closed after a full answer */
			}
			fprintf(stderr,
			    "usergatectl: usergated closed the connection\n");
			break;
		}
		len += (size_t)n;
	}
	free(buf);
	return NULL;
}

/*
 * Sends text (and a newline when newline is set) to the socket at path and
 * reads the answer up to end (see read_until), malloc'd, or NULL (said why
 * unless quiet, for a refused connection or a failed send).
 */
static char *
exchange(const char *path, const char *text, int newline, const char *end,
    int end_line, long timeout_ms, int quiet)
{
	char *answer;
	int fd;

	if ((fd = ctl_connect(path, quiet)) < 0)
		return NULL;
	if (write_all(fd, text, strlen(text)) != 0 ||
	    (newline && write_all(fd, "\n", 1) != 0)) {
		if (!quiet)
			fprintf(stderr, "usergatectl: cannot send to %s: %s\n",
			    path, strerror(errno));
		close(fd);
		return NULL;
	}
	answer = read_until(fd, end, end_line, timeout_ms);
	close(fd);
	return answer;
}

char *
ctl_status_ask(const char *path, const char *line, int quiet)
{
	return exchange(path, line, 0, "\n\n", 1, STATUS_TIMEOUT_MS, quiet);
}

static int
status_command(int argc, char **argv)
{
	char line[1024] = "";
	char *answer;
	int i, rv;

	for (i = 0; i < argc; i++) {
		if (strlen(line) + strlen(argv[i]) + 2 >= sizeof(line)) {
			fprintf(stderr, "usergatectl: command too long\n");
			return 2;
		}
		if (i > 0)
			strcat(line, " ");
		strcat(line, argv[i]);
	}
	strcat(line, "\n");
	if ((answer = ctl_status_ask(status_path, line, 0)) == NULL)
		return 2;
	/*
	 * An error answer goes to stderr, where whoever runs us looks for the
	 * reason: systemd logs it when `systemctl reload` (ExecReload=
	 * usergatectl reload) fails because the new configuration is refused.
	 */
	if (strncmp(answer, "error", 5) == 0) {
		fprintf(stderr, "usergatectl: %s\n", answer);
		rv = 1;
	} else {
		/* no lines: print none (jq reads nothing) */
		if (answer[0] != '\0')
			printf("%s\n", answer);
		rv = strcmp(argv[0], "health") == 0 &&
		    strcmp(answer, "ok") != 0;
	}
	free(answer);
	return rv;
}

/* create's options whose argument is a request field as it is. */
static const struct {
	int		 ch;
	const char	*field;
} create_fields[] = {
	{ 'f', "FriendlyName" },
	{ 'a', "Attributes" },
	{ 'r', "RoleSid" },
	{ 'i', "RequestId" },
	{ 'R', "ReplyTo" },
};

/* One option of create (ch, its argument in optarg) into req: -1 to go
 * on, or the exit status of a run that ends here. */
static int
create_option(json_t *req, int ch, long *timeout_ms, int *wait)
{
	char *end;
	size_t i;

	for (i = 0; i < sizeof(create_fields) / sizeof(create_fields[0]); i++) {
		if (create_fields[i].ch == ch) {
			json_object_set_new(req, create_fields[i].field,
			    json_string(optarg));
			return -1;
		}
	}
	switch (ch) {
	case 'w':
		if (strcmp(optarg, "true") != 0 &&
		    strcmp(optarg, "false") != 0) {
			fprintf(stderr, "usergatectl: --webhook-enabled takes "
			    "true or false\n");
			return 2;
		}
		json_object_set_new(req, "WebhookEnabled",
		    json_boolean(strcmp(optarg, "true") == 0));
		break;
	case 'n':
		*wait = 0;
		break;
	case 't':
		*timeout_ms = strtol(optarg, &end, 10) * 1000;
		if (*end != '\0' || *timeout_ms <= 0) {
			fprintf(stderr,
			    "usergatectl: --timeout takes seconds > 0\n");
			return 2;
		}
		break;
	case 'h':
		usage(stdout);
		return 0;
	default:
		usage(stderr);
		return 2;
	}
	return -1;
}

/*
 * create's options and IDENTITY as one JSON request line (malloc'd into
 * *text): -1 to go on, or the exit status of a run that ends here.
 */
static int
create_request(int argc, char **argv, char **text, long *timeout_ms, int *wait)
{
	static const struct option opts[] = {
		{ "friendly-name", required_argument, NULL, 'f' },
		{ "attributes", required_argument, NULL, 'a' },
		{ "role-sid", required_argument, NULL, 'r' },
		{ "webhook-enabled", required_argument, NULL, 'w' },
		{ "request-id", required_argument, NULL, 'i' },
		{ "reply-to", required_argument, NULL, 'R' },
		{ "no-wait", no_argument, NULL, 'n' },
		{ "timeout", required_argument, NULL, 't' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	json_t *req;
	int ch, rv;

	if ((req = json_object()) == NULL)
		return 2;
	optind = 0;	/* full re-initialisation after main's getopt */
	while ((ch = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		if ((rv = create_option(req, ch, timeout_ms, wait)) != -1) {
			json_decref(req);
			return rv;
		}
	}
	if (optind + 1 != argc) {
		fprintf(stderr,
		    "usergatectl: create takes exactly one IDENTITY\n");
		usage(stderr);
		json_decref(req);
		return 2;
	}
	/* json_string refuses text that is not UTF-8: say so plainly. */
	if (json_object_set_new(req, "Identity",
	    json_string(argv[optind])) != 0 ||
	    json_object_size(req) == 0) {
		fprintf(stderr, "usergatectl: arguments must be UTF-8 text\n");
		json_decref(req);
		return 2;
	}
	if (!*wait)
		json_object_set_new(req, "Wait", json_false());
	*text = json_dumps(req, JSON_COMPACT);
	json_decref(req);
	return *text == NULL ? 2 : -1;
}

/* Sends one request line and reads its answer line (malloc'd), or NULL
 * (said why). */
static char *
send_request(const char *text, long timeout_ms)
{
	return exchange(request_path, text, 1, "\n", 0, timeout_ms, 0);
}

/* Prints the answer, indented, and frees it; the exit status is 0 when
 * the user is there (or, without waiting, its request queued). */
static int
print_result(char *answer, int wait)
{
	json_t *res;
	json_error_t jerr;
	const char *status;
	char *text;
	int rv;

	res = json_loads(answer, 0, &jerr);
	if (res == NULL) {
		fprintf(stderr, "usergatectl: unreadable answer: %s\n",
		    jerr.text);
		free(answer);
		return 2;
	}
	text = json_dumps(res, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
	printf("%s\n", text ? text : answer);
	free(text);
	free(answer);
	status = json_string_value(json_object_get(res, "status"));
	rv = 1;
	if (status != NULL && (strcmp(status, "created") == 0 ||
	    strcmp(status, "exists") == 0 || strcmp(status, "updated") == 0 ||
	    strcmp(status, "duplicate") == 0 ||
	    (!wait && strcmp(status, "queued") == 0)))
		rv = 0;
	json_decref(res);
	return rv;
}

static int
create_command(int argc, char **argv)
{
	char *text, *answer;
	long timeout_ms = -1;
	int rv, wait = 1;

	if ((rv = create_request(argc, argv, &text, &timeout_ms, &wait)) != -1)
		return rv;
	answer = send_request(text, timeout_ms);
	free(text);
	if (answer == NULL)
		return 2;
	return print_result(answer, wait);
}

int
main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ NULL, 0, NULL, 0 },
	};
	int ch;

	/* "+": options end at the command, whose own options follow it. */
	while ((ch = getopt_long(argc, argv, "+c:s:S:hV", opts, NULL)) != -1) {
		switch (ch) {
		case 'c':
			config_path = optarg;
			break;
		case 's':
			status_path = optarg;
			break;
		case 'S':
			request_path = optarg;
			break;
		case 'V':
			printf("usergatectl %s\n", PACKAGE_VERSION);
			return 0;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	argc -= optind;
	argv += optind;
	if (argc == 0) {
		fprintf(stderr, "usergatectl: a command is needed\n");
		usage(stderr);
		return 2;
	}
	if (strcmp(argv[0], "create") == 0)
		return create_command(argc, argv);
	if (strcmp(argv[0], "import") == 0)
		return ctl_import(argc, argv, config_path, request_path,
		    status_path);
	if (strcmp(argv[0], "top") == 0)
		return ctl_top(argc, argv, status_path);
	if ((argc == 2 && strcmp(argv[0], "show") == 0 &&
	    (strcmp(argv[1], "stats") == 0 ||
	    strcmp(argv[1], "metrics") == 0 ||
	    strcmp(argv[1], "queue") == 0)) ||
	    (argc == 1 && (strcmp(argv[0], "health") == 0 ||
	    strcmp(argv[0], "pause") == 0 ||
	    strcmp(argv[0], "resume") == 0 || strcmp(argv[0], "reload") == 0 ||
	    strcmp(argv[0], "help") == 0)) ||
	    (argc >= 2 && argc <= 3 && strcmp(argv[0], "dead") == 0 &&
	    (strcmp(argv[1], "list") == 0 || strcmp(argv[1], "retry") == 0)))
		return status_command(argc, argv);
	if (strcmp(argv[0], "show") == 0 || strcmp(argv[0], "dead") == 0 ||
	    strcmp(argv[0], "health") == 0 || strcmp(argv[0], "pause") == 0 ||
	    strcmp(argv[0], "resume") == 0 || strcmp(argv[0], "reload") == 0 ||
	    strcmp(argv[0], "help") == 0)
		fprintf(stderr, "usergatectl: bad arguments for '%s'\n",
		    argv[0]);
	else
		fprintf(stderr, "usergatectl: unknown command '%s'\n", argv[0]);
	usage(stderr);
	return 2;
}
