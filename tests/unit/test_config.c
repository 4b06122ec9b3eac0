/*
 * test_config.c: CUnit tables for config.c -- the defaults of SPEC §2,
 * every kind of error with its exact message, the SPEC's example block,
 * environment overrides, secret files and $CREDENTIALS_DIRECTORY, the
 * reload diff, and a check that every key is documented in
 * conf/usergate.conf and docs/usergate.conf.5 ($top_srcdir), which show no
 * key the table lacks.
 *
 * Every test starts from an environment without TWILIO_* variables and
 * without $CREDENTIALS_DIRECTORY, and writes its files under one temporary
 * directory that is removed at the end.
 */
/* nftw(3), mkdtemp(3) */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <errno.h>
#include <ftw.h>
#include <limits.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <fcntl.h>
#include <unistd.h>

#include <CUnit/Basic.h>
#include <CUnit/CUnit.h>

#include "usergate.h"

#define NELEM(a)	(sizeof(a) / sizeof((a)[0]))
#define ERRLEN		1024
/* Expected messages and config texts that embed paths. */
#define TEXTLEN		(3 * PATH_MAX + ERRLEN)

#define SK_1	"SK0123456789abcdef0123456789abcdef"
#define SK_2	"SKfedcba9876543210FEDCBA9876543210"
#define AC_1	"AC0123456789ABCDEF0123456789abcdef"
#define IS_1	"IS00000000000000000000000000000000"

static char	 tmpdir[] = "/tmp/test_config.XXXXXX";
static char	 conf_path[PATH_MAX];

static const char *const env_names[] = {
	"TWILIO_API_KEY", "TWILIO_API_SECRET", "TWILIO_ACCOUNT_SID",
	"TWILIO_AUTH_TOKEN", "TWILIO_EDGE", "TWILIO_REGION",
	"CREDENTIALS_DIRECTORY",
};

static void
check_str(const char *what, const char *got, const char *want, int line)
{
	char	 msg[2048];

	snprintf(msg, sizeof(msg), "%s:\n      got  [%s]\n      want [%s]",
	    what, got != NULL ? got : "(null)", want != NULL ? want : "(null)");
	CU_assertImplementation(got != NULL && want != NULL &&
	    strcmp(got, want) == 0 ? CU_TRUE : CU_FALSE, line, msg, __FILE__,
	    "", CU_FALSE);
}

static void
check_true(const char *what, int ok, int line)
{
	CU_assertImplementation(ok ? CU_TRUE : CU_FALSE, line, what, __FILE__,
	    "", CU_FALSE);
}

static void
clear_env(void)
{
	size_t	 i;

	for (i = 0; i < NELEM(env_names); i++)
		if (unsetenv(env_names[i]) == -1)
			abort();
}

static void
set_env(const char *name, const char *value)
{
	if (setenv(name, value, 1) == -1)
		abort();
}

/* Writes a file under tmpdir with exactly this mode; path gets its name. */
static void
write_file(const char *name, const char *content, mode_t mode, char *path,
    size_t pathlen)
{
	size_t	 len = strlen(content);
	int	 fd;

	snprintf(path, pathlen, "%s/%s", tmpdir, name);
	if ((fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600)) == -1 ||
	    fchmod(fd, mode) == -1 ||
	    write(fd, content, len) != (ssize_t)len || close(fd) == -1) {
		perror(path);
		abort();
	}
}

static int
load_text(const char *text, int require, struct config *cfg, char *err)
{
	write_file("usergate.conf", text, 0644, conf_path, sizeof(conf_path));
	return config_load(conf_path, cfg, require, err, ERRLEN);
}

/* "%s" in fmt stands for the path of the file under test. */
static void
expand(char *out, size_t outlen, const char *fmt, const char *path)
{
	const char	*p = strstr(fmt, "%s");

	if (p == NULL)
		snprintf(out, outlen, "%s", fmt);
	else
		snprintf(out, outlen, "%.*s%s%s", (int)(p - fmt), fmt, path,
		    p + 2);
}

/* 1 when every key has the same value in a and b, driven by the table. */
static int
same_values(const struct config *a, const struct config *b, char *which,
    size_t whichlen)
{
	const struct config_key *keys;
	const char	*pa, *pb;
	size_t		 n, i;
	int		 differ;

	keys = config_keys(&n);
	for (i = 0; i < n; i++) {
		pa = (const char *)a + keys[i].offset;
		pb = (const char *)b + keys[i].offset;
		switch (keys[i].type) {
		case CONFIG_STRING:
			differ = strcmp(*(char *const *)pa, *(char *const *)pb);
			break;
		case CONFIG_LONG:
		case CONFIG_MODE:
			differ = *(const long *)pa != *(const long *)pb;
			break;
		default:
			differ = *(const int *)pa != *(const int *)pb;
			break;
		}
		if (differ) {
			snprintf(which, whichlen, "[%s] %s", keys[i].section,
			    keys[i].name);
			return 0;
		}
	}
	return 1;
}

/* ------------------------------------------------------------------ */

/* SPEC §2, key by key. */
static const struct default_case {
	const char	*section, *name, *value;
	int		 reloadable;
} spec_defaults[] = {
	{ "twilio", "base_url", "https://conversations.twilio.com", 1 },
	{ "twilio", "edge", "", 1 },
	{ "twilio", "region", "", 1 },
	{ "twilio", "service_sid", "", 0 },
	{ "twilio", "api_key", "", 1 },
	{ "twilio", "api_secret_file", "", 1 },
	{ "twilio", "account_sid", "", 1 },
	{ "twilio", "auth_token_file", "", 1 },
	{ "twilio", "ca_file", "", 1 },
	{ "twilio", "connect_timeout_ms", "5000", 1 },
	{ "twilio", "request_timeout_ms", "30000", 1 },
	{ "twilio", "max_inflight", "64", 1 },
	{ "twilio", "rate_limit", "30", 1 },
	{ "twilio", "rate_window_s", "5", 1 },
	{ "twilio", "on_exists", "fetch", 1 },
	{ "retry", "max_attempts", "10", 1 },
	{ "retry", "base_delay_ms", "200", 1 },
	{ "retry", "max_delay_ms", "30000", 1 },
	{ "redis", "url", "", 0 },
	{ "redis", "host", "127.0.0.1", 0 },
	{ "redis", "port", "6379", 0 },
	{ "redis", "unix_socket", "", 0 },
	{ "redis", "username", "", 0 },
	{ "redis", "password_file", "", 0 },
	{ "redis", "db", "0", 0 },
	{ "redis", "prefix", "usergate:", 0 },
	{ "redis", "instance_id", "", 0 },
	{ "redis", "sentinels", "", 0 },
	{ "redis", "master_name", "", 0 },
	{ "redis", "sentinel_password_file", "", 0 },
	{ "redis", "durable_replicas", "0", 0 },
	{ "redis", "durable_timeout_ms", "1000", 0 },
	{ "redis", "tls_ca_file", "", 1 },
	{ "redis", "tls_cert_file", "", 1 },
	{ "redis", "tls_key_file", "", 1 },
	{ "redis", "tls_server_name", "", 1 },
	{ "dedup", "ttl_s", "86400", 1 },
	{ "results", "format", "msgpack", 1 },
	{ "results", "results_max", "100000", 1 },
	{ "results", "reply_ttl_s", "3600", 1 },
	{ "results", "reply_prefix", "usergate-reply:", 1 },
	{ "results", "dead_max", "10000", 1 },
	{ "socket", "path", "/run/usergate/usergate.sock", 0 },
	{ "socket", "mode", "0660", 0 },
	{ "socket", "idle_timeout_s", "300", 1 },
	{ "socket", "max_connections", "1000", 1 },
	{ "status", "path", "/run/usergate/status.sock", 0 },
	{ "status", "mode", "0660", 0 },
	{ "metrics", "listen", "", 0 },
	{ "log", "level", "info", 1 },
};

static void
test_key_table(void)
{
	const struct config_key *keys;
	char		 what[256];
	size_t		 n, i, j;

	keys = config_keys(&n);
	check_true("as many keys as SPEC §2", n == NELEM(spec_defaults),
	    __LINE__);
	for (i = 0; i < NELEM(spec_defaults); i++) {
		for (j = 0; j < n; j++)
			if (strcmp(keys[j].section, spec_defaults[i].section) ==
			    0 && strcmp(keys[j].name, spec_defaults[i].name) == 0)
				break;
		snprintf(what, sizeof(what), "[%s] %s", spec_defaults[i].section,
		    spec_defaults[i].name);
		if (j == n) {
			check_true(what, 0, __LINE__);
			continue;
		}
		check_str(what, keys[j].default_value, spec_defaults[i].value,
		    __LINE__);
		snprintf(what, sizeof(what), "[%s] %s reloadable",
		    spec_defaults[i].section, spec_defaults[i].name);
		check_true(what, keys[j].reloadable ==
		    spec_defaults[i].reloadable, __LINE__);
		if (keys[j].type == CONFIG_LONG)
			check_true("default within bounds",
			    atol(keys[j].default_value) >= keys[j].min &&
			    atol(keys[j].default_value) <= keys[j].max, __LINE__);
	}
}

static void
test_defaults(void)
{
	struct config	 cfg;
	char		 err[ERRLEN], host[HOST_NAME_MAX + 1];

	clear_env();
	if (config_load(NULL, &cfg, 0, err, sizeof(err)) != 0) {
		check_str("config_load(NULL)", err, "", __LINE__);
		return;
	}
	CU_ASSERT_PTR_NULL(cfg.path);
	check_str("base_url", cfg.base_url, "https://conversations.twilio.com",
	    __LINE__);
	check_str("api_base", cfg.api_base, "https://conversations.twilio.com",
	    __LINE__);
	check_str("edge", cfg.edge, "", __LINE__);
	check_str("region", cfg.region, "", __LINE__);
	check_str("service_sid", cfg.service_sid, "", __LINE__);
	check_str("api_key", cfg.api_key, "", __LINE__);
	check_str("ca_file", cfg.ca_file, "", __LINE__);
	CU_ASSERT_EQUAL(cfg.connect_timeout_ms, 5000);
	CU_ASSERT_EQUAL(cfg.request_timeout_ms, 30000);
	CU_ASSERT_EQUAL(cfg.max_inflight, 64);
	CU_ASSERT_EQUAL(cfg.rate_limit, 30);
	CU_ASSERT_EQUAL(cfg.rate_window_s, 5);
	CU_ASSERT_EQUAL(cfg.on_exists, ON_EXISTS_FETCH);
	CU_ASSERT_EQUAL(cfg.max_attempts, 10);
	CU_ASSERT_EQUAL(cfg.base_delay_ms, 200);
	CU_ASSERT_EQUAL(cfg.max_delay_ms, 30000);
	check_str("redis host", cfg.redis_host, "127.0.0.1", __LINE__);
	CU_ASSERT_EQUAL(cfg.redis_port, 6379);
	check_str("unix_socket", cfg.redis_unix_socket, "", __LINE__);
	check_str("password_file", cfg.redis_password_file, "", __LINE__);
	CU_ASSERT_EQUAL(cfg.redis_db, 0);
	check_str("prefix", cfg.prefix, "usergate:", __LINE__);
	if (gethostname(host, sizeof(host)) == 0) {
		host[sizeof(host) - 1] = '\0';
		check_str("instance_id is the host name", cfg.instance_id,
		    host, __LINE__);
	}
	CU_ASSERT_EQUAL(cfg.dedup_ttl_s, 86400);
	CU_ASSERT_EQUAL(cfg.format, FORMAT_MSGPACK);
	CU_ASSERT_EQUAL(cfg.results_max, 100000);
	CU_ASSERT_EQUAL(cfg.reply_ttl_s, 3600);
	check_str("socket path", cfg.socket_path, "/run/usergate/usergate.sock",
	    __LINE__);
	CU_ASSERT_EQUAL(cfg.socket_mode, 0660);
	check_str("status path", cfg.status_path, "/run/usergate/status.sock",
	    __LINE__);
	CU_ASSERT_EQUAL(cfg.status_mode, 0660);
	CU_ASSERT_EQUAL(cfg.log_level, LOG_LEVEL_INFO);
	CU_ASSERT_PTR_NULL(cfg.auth_user);
	CU_ASSERT_PTR_NULL(cfg.auth_secret);
	CU_ASSERT_PTR_NULL(cfg.redis_password);
	config_free(&cfg);
	CU_ASSERT_PTR_NULL(cfg.base_url);
}

/* SPEC §2's example, byte for byte: inline comments and all. */
static const char spec_block[] =
	"[twilio]\n"
	"base_url = https://conversations.twilio.com   ; scheme://host[:port], no path\n"
	"edge =                      ; e.g. dublin  -> conversations.dublin.ie1.twilio.com\n"
	"region =                    ; e.g. ie1     (edge without region means us1)\n"
	"service_sid =               ; empty: default service, POST /v1/Users\n"
	"                            ; IS...: POST /v1/Services/{service_sid}/Users\n"
	"api_key =                   ; SK...  (recommended)  } one pair is required;\n"
	"api_secret_file =           ;                       } key+secret wins if both\n"
	"account_sid =               ; AC...                 } are given\n"
	"auth_token_file =           ;                       }\n"
	"ca_file =                   ; extra CA bundle; peer and host are always verified\n"
	"connect_timeout_ms = 5000\n"
	"request_timeout_ms = 30000\n"
	"max_inflight = 64           ; concurrent Twilio requests of this instance\n"
	"rate_limit = 30             ; creates per second per service, over rate_window;\n"
	"rate_window_s = 5           ;   0 = unlimited. Shared by all instances (Redis).\n"
	"on_exists = fetch           ; fetch | update  (see 5.3)\n"
	"\n"
	"[retry]\n"
	"max_attempts = 10\n"
	"base_delay_ms = 200         ; full-jitter exponential backoff,\n"
	"max_delay_ms = 30000        ;   Retry-After honoured when longer\n"
	"\n"
	"[redis]\n"
	"host = 127.0.0.1\n"
	"port = 6379\n"
	"unix_socket =               ; path; wins over host/port\n"
	"password_file =\n"
	"db = 0\n"
	"prefix = usergate:          ; every key below starts with it\n"
	"instance_id =               ; default: the host name; must be unique per live daemon\n"
	"\n"
	"[dedup]\n"
	"ttl_s = 86400               ; how long a completed Identity answers from Redis\n"
	"\n"
	"[results]\n"
	"format = msgpack            ; msgpack | json, for everything usergated writes\n"
	"results_max = 100000        ; results list is trimmed to this length\n"
	"reply_ttl_s = 3600          ; expiry of ReplyTo lists\n"
	"\n"
	"[socket]\n"
	"path = /run/usergate/usergate.sock\n"
	"mode = 0660\n"
	"\n"
	"[status]\n"
	"path = /run/usergate/status.sock\n"
	"mode = 0660\n"
	"\n"
	"[log]\n"
	"level = info                ; error | warning | info | debug\n";

static void
test_spec_block(void)
{
	struct config	 cfg, defaults;
	char		 err[ERRLEN], which[128] = "";

	clear_env();
	if (config_load(NULL, &defaults, 0, err, sizeof(err)) != 0) {
		check_str("defaults", err, "", __LINE__);
		return;
	}
	if (load_text(spec_block, 0, &cfg, err) != 0) {
		check_str("SPEC §2 block", err, "", __LINE__);
		config_free(&defaults);
		return;
	}
	check_true(which, same_values(&cfg, &defaults, which, sizeof(which)),
	    __LINE__);
	check_str("path kept", cfg.path, conf_path, __LINE__);
	check_str("inline comment stripped", cfg.base_url,
	    "https://conversations.twilio.com", __LINE__);
	check_str("comment-only value is empty", cfg.edge, "", __LINE__);
	check_str("colon kept", cfg.prefix, "usergate:", __LINE__);
	config_free(&cfg);
	config_free(&defaults);
}

/* Values other than the defaults, and spellings the parser must take. */
static void
test_values(void)
{
	static const char text[] =
	    "# hash comments work too\n"
	    "[twilio]\n"
	    "service_sid = " IS_1 "\n"
	    "api_key=" SK_1 "\n"
	    "max_inflight = 10000\n"
	    "rate_limit = 0\n"
	    "on_exists = update\n"
	    "[redis]\n"
	    "host =\n"
	    "unix_socket = /run/redis/redis.sock\n"
	    "instance_id = worker-1\n"
	    "db = 15\n"
	    "sentinels = 10.0.0.1:26379, [::1]:26380 ,s3.example:1\n"
	    "master_name = main\n"
	    "[results]\n"
	    "format = json\n"
	    "[socket]\n"
	    "mode = 600\n"
	    "[status]\n"
	    "mode = 0\n"
	    "[log]\n"
	    "level = debug\n";
	struct config	 cfg;
	char		 err[ERRLEN];

	clear_env();
	if (load_text(text, 0, &cfg, err) != 0) {
		check_str("load", err, "", __LINE__);
		return;
	}
	check_str("service_sid", cfg.service_sid, IS_1, __LINE__);
	check_str("api_key", cfg.api_key, SK_1, __LINE__);
	CU_ASSERT_EQUAL_FATAL(cfg.nsentinels, 3);
	check_str("sentinel 1", cfg.sentinels[0].host, "10.0.0.1", __LINE__);
	CU_ASSERT_EQUAL(cfg.sentinels[0].port, 26379);
	check_str("sentinel 2", cfg.sentinels[1].host, "::1", __LINE__);
	CU_ASSERT_EQUAL(cfg.sentinels[1].port, 26380);
	check_str("sentinel 3", cfg.sentinels[2].host, "s3.example",
	    __LINE__);
	CU_ASSERT_EQUAL(cfg.sentinels[2].port, 1);
	check_str("master_name", cfg.redis_master_name, "main", __LINE__);
	CU_ASSERT_EQUAL(cfg.max_inflight, 10000);
	CU_ASSERT_EQUAL(cfg.rate_limit, 0);
	CU_ASSERT_EQUAL(cfg.on_exists, ON_EXISTS_UPDATE);
	check_str("host", cfg.redis_host, "", __LINE__);
	check_str("unix_socket", cfg.redis_unix_socket, "/run/redis/redis.sock",
	    __LINE__);
	check_str("instance_id", cfg.instance_id, "worker-1", __LINE__);
	CU_ASSERT_EQUAL(cfg.redis_db, 15);
	CU_ASSERT_EQUAL(cfg.format, FORMAT_JSON);
	CU_ASSERT_EQUAL(cfg.socket_mode, 0600);
	CU_ASSERT_EQUAL(cfg.status_mode, 0);
	CU_ASSERT_EQUAL(cfg.log_level, LOG_LEVEL_DEBUG);
	/* A key without its secret is no credential, and not required. */
	CU_ASSERT_PTR_NULL(cfg.auth_user);
	config_free(&cfg);
}

/* ------------------------------------------------------------------ */

/*
 * want: the whole message, "%s" standing for the file's path; prefix_only:
 * the message goes on with text owned by another module.
 */
static const struct error_case {
	const char	*name;
	const char	*text;
	const char	*want;
	int		 prefix_only;
} error_cases[] = {
	{ "unknown section", "[twilio]\nmax_inflight = 5\n[nope]\nx = 1\n",
	    "%s:3: unknown section [nope]", 0 },
	{ "unknown empty section", "[twilio]\nmax_inflight = 5\n\n[nope]\n"
	    "; level = debug\n",
	    "%s:4: unknown section [nope]", 0 },
	{ "section names are exact", "[ twilio ]\nmax_inflight = 5\n",
	    "%s:1: unknown section [ twilio ]", 0 },
	{ "unknown key", "[twilio]\n\nfoo = 1\n",
	    "%s:3: unknown key \"foo\" in [twilio]", 0 },
	{ "key of another section", "[redis]\nmax_inflight = 5\n",
	    "%s:2: unknown key \"max_inflight\" in [redis]", 0 },
	{ "keys are case-sensitive", "[twilio]\nBase_URL = http://x\n",
	    "%s:2: unknown key \"Base_URL\" in [twilio]", 0 },
	{ "key outside a section", "; comment\nfoo = 1\n",
	    "%s:2: key \"foo\" outside any section", 0 },
	{ "metrics listen: a host name", "[metrics]\nlisten = localhost:9466\n",
	    "%s:2: key \"listen\" in [metrics]: expected empty or "
	    "ADDRESS:PORT, an IPv4 address or a bracketed IPv6 one and a "
	    "port of 1 to 65535 (127.0.0.1:9466, [::1]:9466)", 0 },
	{ "metrics listen: no port", "[metrics]\nlisten = 127.0.0.1\n",
	    "%s:2: key \"listen\" in [metrics]: expected empty", 1 },
	{ "metrics listen: port 0", "[metrics]\nlisten = 127.0.0.1:0\n",
	    "%s:2: key \"listen\" in [metrics]: expected empty", 1 },
	{ "metrics listen: IPv6 unbracketed", "[metrics]\nlisten = ::1:9466\n",
	    "%s:2: key \"listen\" in [metrics]: expected empty", 1 },
	{ "metrics listen: IPv6 without port", "[metrics]\nlisten = [::1]\n",
	    "%s:2: key \"listen\" in [metrics]: expected empty", 1 },
	{ "bad number", "[redis]\nport = abc\n",
	    "%s:2: key \"port\" in [redis]: not a decimal integer "
	    "(expected 1..65535)", 0 },
	{ "number with a unit", "[twilio]\nconnect_timeout_ms = 5s\n",
	    "%s:2: key \"connect_timeout_ms\" in [twilio]: not a decimal integer "
	    "(expected 1..300000)", 0 },
	{ "empty number", "[twilio]\nrequest_timeout_ms =\n",
	    "%s:2: key \"request_timeout_ms\" in [twilio]: not a decimal integer "
	    "(expected 1..3600000)", 0 },
	{ "hex number", "[twilio]\nrate_limit = 0x10\n",
	    "%s:2: key \"rate_limit\" in [twilio]: not a decimal integer "
	    "(expected 0..100000)", 0 },
	{ "plus sign", "[twilio]\nrate_limit = +5\n",
	    "%s:2: key \"rate_limit\" in [twilio]: not a decimal integer "
	    "(expected 0..100000)", 0 },
	{ "port too large", "[redis]\nport = 70000\n",
	    "%s:2: key \"port\" in [redis]: out of range (expected 1..65535)", 0 },
	{ "port 0", "[redis]\nport = 0\n",
	    "%s:2: key \"port\" in [redis]: out of range (expected 1..65535)", 0 },
	{ "max_inflight 0", "[twilio]\nmax_inflight = 0\n",
	    "%s:2: key \"max_inflight\" in [twilio]: out of range "
	    "(expected 1..10000)", 0 },
	{ "negative", "[twilio]\nmax_inflight = -1\n",
	    "%s:2: key \"max_inflight\" in [twilio]: out of range "
	    "(expected 1..10000)", 0 },
	{ "rate_limit too high", "[twilio]\nrate_limit = 100001\n",
	    "%s:2: key \"rate_limit\" in [twilio]: out of range "
	    "(expected 0..100000)", 0 },
	{ "overflows long", "[retry]\nmax_attempts = 99999999999999999999999\n",
	    "%s:2: key \"max_attempts\" in [retry]: out of range (expected "
	    "1..100)", 0 },
	{ "timeout 0", "[twilio]\nconnect_timeout_ms = 0\n",
	    "%s:2: key \"connect_timeout_ms\" in [twilio]: out of range "
	    "(expected 1..300000)", 0 },
	{ "bad on_exists", "[twilio]\non_exists = maybe\n",
	    "%s:2: key \"on_exists\" in [twilio]: unknown value (expected "
	    "fetch or update)", 0 },
	{ "bad format", "[results]\nformat = xml\n",
	    "%s:2: key \"format\" in [results]: unknown value (expected "
	    "msgpack or json)", 0 },
	{ "bad log level", "[log]\nlevel = verbose\n",
	    "%s:2: key \"level\" in [log]: unknown value (expected "
	    "error, warning, info or debug)", 0 },
	{ "enum is case-sensitive", "[log]\nlevel = INFO\n",
	    "%s:2: key \"level\" in [log]: unknown value (expected "
	    "error, warning, info or debug)", 0 },
	{ "mode not octal", "[socket]\nmode = 0999\n",
	    "%s:2: key \"mode\" in [socket]: not a file mode (expected octal "
	    "0000..0777, e.g. 0660)", 0 },
	{ "mode with sticky bit", "[status]\nmode = 1777\n",
	    "%s:2: key \"mode\" in [status]: not a file mode (expected octal "
	    "0000..0777, e.g. 0660)", 0 },
	{ "symbolic mode", "[status]\nmode = rw\n",
	    "%s:2: key \"mode\" in [status]: not a file mode (expected octal "
	    "0000..0777, e.g. 0660)", 0 },
	{ "empty mode", "[status]\nmode =\n",
	    "%s:2: key \"mode\" in [status]: not a file mode (expected octal "
	    "0000..0777, e.g. 0660)", 0 },
	{ "key given twice", "[redis]\nhost = a\nport = 1\nhost = b\n",
	    "%s:4: key \"host\" in [redis] given twice (first on line 2)", 0 },
	{ "section repeated, key twice",
	    "[redis]\nhost = a\n[log]\nlevel = info\n[redis]\nhost = b\n",
	    "%s:6: key \"host\" in [redis] given twice (first on line 2)", 0 },
	{ "indented line", "[redis]\nhost = a\n  port = 1\n",
	    "%s:3: indented line continues the value of key \"host\" in [redis] "
	    "(line 2); values cannot span lines, remove the indentation", 0 },
	{ "syntax error", "[twilio]\nnot a key value\n",
	    "%s:2: syntax error: expected [section], key = value, or a "
	    "comment", 0 },
	{ "unclosed section", "\n[twilio\n",
	    "%s:2: syntax error: expected [section], key = value, or a "
	    "comment", 0 },
	{ "first error wins (syntax)", "[twilio]\nbad line\nfoo = 1\n",
	    "%s:2: syntax error: expected [section], key = value, or a "
	    "comment", 0 },
	{ "first error wins (key)", "[twilio]\nfoo = 1\nbad line\n",
	    "%s:2: unknown key \"foo\" in [twilio]", 0 },
	{ "bad service_sid", "[twilio]\nservice_sid = IS123\n",
	    "%s:2: key \"service_sid\" in [twilio]: expected empty or IS "
	    "followed by 32 hex digits", 0 },
	{ "service_sid of another kind", "[twilio]\nservice_sid = "
	    "CH00000000000000000000000000000000\n",
	    "%s:2: key \"service_sid\" in [twilio]: expected empty or IS "
	    "followed by 32 hex digits", 0 },
	{ "api_key not hex", "[twilio]\napi_key = "
	    "SKzz23456789abcdef0123456789abcdef\n",
	    "%s:2: key \"api_key\" in [twilio]: expected empty or SK followed "
	    "by 32 hex digits", 0 },
	{ "api_key too long", "[twilio]\napi_key = " SK_1 "0\n",
	    "%s:2: key \"api_key\" in [twilio]: expected empty or SK followed "
	    "by 32 hex digits", 0 },
	{ "account_sid lowercase prefix", "[twilio]\naccount_sid = "
	    "ac0123456789ABCDEF0123456789abcdef\n",
	    "%s:2: key \"account_sid\" in [twilio]: expected empty or AC "
	    "followed by 32 hex digits", 0 },
	{ "empty prefix", "[redis]\nprefix =\n",
	    "%s:2: key \"prefix\" in [redis]: must not be empty", 0 },
	{ "reply_prefix with an empty entry",
	    "[results]\nreply_prefix = a:,,b:\n",
	    "%s:2: key \"reply_prefix\" in [results]: expected one or more "
	    "non-empty prefixes separated by commas", 0 },
	{ "reply_prefix ending in a comma", "[results]\nreply_prefix = a:,\n",
	    "%s:2: key \"reply_prefix\" in [results]: expected one or more "
	    "non-empty prefixes separated by commas", 0 },
	{ "empty reply_prefix", "[results]\nreply_prefix =\n",
	    "%s:2: key \"reply_prefix\" in [results]: expected one or more "
	    "non-empty prefixes separated by commas", 0 },
	{ "reply_prefix without the hash tag of prefix",
	    "[redis]\nprefix = {ug}:\n[results]\nreply_prefix = {ug}r:,r:\n",
	    "%s:4: key \"reply_prefix\" in [results]: entry r: needs the "
	    "hash tag {ug} of [redis] prefix, so that replies share its Redis "
	    "Cluster slot", 0 },
	{ "reply_prefix with another hash tag",
	    "[redis]\nprefix = a{ug}:\n[results]\nreply_prefix = {ugr}:\n",
	    "%s:4: key \"reply_prefix\" in [results]: entry {ugr}: needs the "
	    "hash tag {ug} of [redis] prefix, so that replies share its Redis "
	    "Cluster slot", 0 },
	{ "default reply_prefix with a hash tag in prefix",
	    "[redis]\nprefix = {ug}:\n",
	    "%s:2: key \"prefix\" in [redis]: has a hash tag, so [results] "
	    "reply_prefix (usergate-reply:) needs {ug} too, to share its "
	    "Redis Cluster slot", 0 },
	{ "dead_max 0", "[results]\ndead_max = 0\n",
	    "%s:2: key \"dead_max\" in [results]: out of range "
	    "(expected 1..100000000)", 0 },
	{ "empty socket path", "[socket]\npath =\n",
	    "%s:2: key \"path\" in [socket]: expected a path of 1 to 107 bytes "
	    "(the limit of a Unix socket)", 0 },
	{ "socket path too long", "[status]\npath = /run/"
	    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.sock\n",
	    "%s:2: key \"path\" in [status]: expected a path of 1 to 107 bytes "
	    "(the limit of a Unix socket)", 0 },
	{ "sentinels without master_name",
	    "[redis]\nsentinels = 127.0.0.1:26379\n",
	    "%s:2: key \"sentinels\" in [redis]: needs master_name, "
	    "the primary's name", 0 },
	{ "sentinel without port", "[redis]\nmaster_name = m\n"
	    "sentinels = 127.0.0.1:26379, 10.0.0.2\n",
	    "%s:3: key \"sentinels\" in [redis]: entry 2 is not "
	    "host:port (port 1 to 65535)", 0 },
	{ "sentinel port out of range", "[redis]\nmaster_name = m\n"
	    "sentinels = a:0\n",
	    "%s:3: key \"sentinels\" in [redis]: entry 1 is not "
	    "host:port (port 1 to 65535)", 0 },
	{ "sentinel empty entry", "[redis]\nmaster_name = m\n"
	    "sentinels = a:1,,b:2\n",
	    "%s:3: key \"sentinels\" in [redis]: entry 2 is not "
	    "host:port (port 1 to 65535)", 0 },
	{ "no redis address", "[redis]\nhost =\n",
	    "%s:2: key \"host\" in [redis]: must not be empty when unix_socket "
	    "is empty", 0 },
	{ "url not a URL", "[redis]\nurl = 127.0.0.1:6379\n",
	    "%s:2: key \"url\" in [redis]: expected redis://, rediss:// or "
	    "unix:// at the start", 0 },
	{ "url with a bad port", "[redis]\n\nurl = redis://h:0\n",
	    "%s:3: key \"url\" in [redis]: ", 1 },
	{ "url db and db differ", "[redis]\ndb = 1\nurl = redis://h/2\n",
	    "%s:3: key \"url\" in [redis]: its database (2) differs from key "
	    "\"db\" (1, line 2); keep one of them", 0 },
	{ "url user and username differ",
	    "[redis]\nurl = redis://b:p@h\nusername = a\n",
	    "%s:2: key \"url\" in [redis]: its user name differs from key "
	    "\"username\"; keep one of them", 0 },
	{ "username without a password", "[redis]\nusername = usergated\n",
	    "%s:2: key \"username\" in [redis]: a user name needs a password: "
	    "set password_file, give the redis-password credential, or write "
	    "user:password@ in url (\"user@\" alone is a user name, "
	    "\":password@\" a password alone)", 0 },
	{ "url user without a password", "[redis]\nurl = redis://pw@h\n",
	    "%s:2: key \"url\" in [redis]: a user name needs a password: "
	    "set password_file, give the redis-password credential, or write "
	    "user:password@ in url (\"user@\" alone is a user name, "
	    "\":password@\" a password alone)", 0 },
	{ "client certificate without key", "[redis]\ntls_cert_file = c\n",
	    "%s:2: key \"tls_cert_file\" in [redis]: needs tls_key_file too",
	    0 },
	{ "client key without certificate", "[redis]\n\ntls_key_file = k\n",
	    "%s:3: key \"tls_key_file\" in [redis]: needs tls_cert_file too",
	    0 },
	{ "TLS over a Unix socket", "[redis]\nunix_socket = /run/r.sock\n"
	    "tls_ca_file = /etc/ca.pem\n",
	    "%s:2: key \"unix_socket\" in [redis]: cannot be used with TLS "
	    "(the tls_* keys)", 0 },
	{ "TLS keys with a redis:// url", "[redis]\nurl = redis://h\n"
	    "tls_server_name = h\n",
	    "%s:2: key \"url\" in [redis]: is not rediss://, and the tls_* "
	    "keys are set: write rediss:// for TLS", 0 },
	{ "TLS keys with a unix:// url", "[redis]\n\nurl = unix:///r.sock\n"
	    "tls_ca_file = /etc/ca.pem\n",
	    "%s:3: key \"url\" in [redis]: is not rediss://, and the tls_* "
	    "keys are set: write rediss:// for TLS", 0 },
	{ "max_delay below base", "[retry]\nbase_delay_ms = 500\n"
	    "max_delay_ms = 100\n",
	    "%s:3: key \"max_delay_ms\" in [retry]: 100 is less than "
	    "base_delay_ms (500)", 0 },
	{ "base above default max", "[retry]\nbase_delay_ms = 40000\n",
	    "%s:2: key \"base_delay_ms\" in [retry]: 40000 is more than "
	    "max_delay_ms (30000)", 0 },
	{ "base_url not http", "[twilio]\nbase_url = ftp://example.com\n",
	    "%s:2: key \"base_url\" in [twilio]: ", 1 },
	{ "base_url with a path", "\n[twilio]\nbase_url = https://x.example/v1\n",
	    "%s:3: key \"base_url\" in [twilio]: ", 1 },
	{ "line too long", "[twilio]\nca_file = /"
	    "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
	    "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
	    "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
	    "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
	    "\n[redis]\nport = 1\n",
	    "%s:2: line too long", 1 },
};

static void
test_errors(void)
{
	struct config	 cfg;
	char		 err[ERRLEN], want[TEXTLEN];
	size_t		 i;
	int		 r;

	clear_env();
	for (i = 0; i < NELEM(error_cases); i++) {
		memset(&cfg, 0xa5, sizeof(cfg));
		r = load_text(error_cases[i].text, 0, &cfg, err);
		check_true(error_cases[i].name, r == -1, __LINE__);
		if (r == 0) {
			config_free(&cfg);
			continue;
		}
		expand(want, sizeof(want), error_cases[i].want, conf_path);
		if (error_cases[i].prefix_only) {
			check_true(error_cases[i].name, strncmp(err, want,
			    strlen(want)) == 0 && strlen(err) > strlen(want),
			    __LINE__);
			if (strncmp(err, want, strlen(want)) != 0)
				check_str(error_cases[i].name, err, want,
				    __LINE__);
		} else
			check_str(error_cases[i].name, err, want, __LINE__);
		/* On error cfg is left freed: nothing to free twice. */
		check_true("cfg cleared", cfg.base_url == NULL &&
		    cfg.path == NULL && cfg.api_base == NULL, __LINE__);
	}
}

/* Which [redis] keys turn TLS on (usergate.conf(5)). */
static void
test_redis_tls(void)
{
	static const struct {
		const char	*text;
		int		 tls;
	} cases[] = {
		{ "", 0 },
		{ "[redis]\nhost = redis.example\nport = 6380\n", 0 },
		{ "[redis]\ntls_ca_file = /etc/ca.pem\n", 1 },
		{ "[redis]\ntls_server_name = redis.example\n", 1 },
		{ "[redis]\ntls_cert_file = c.pem\ntls_key_file = k.pem\n", 1 },
		{ "[redis]\nurl = rediss://cache.example:6380\n", 1 },
		{ "[redis]\nurl = rediss://h\ntls_ca_file = /etc/ca.pem\n", 1 },
		{ "[redis]\nurl = redis://h:6380\n", 0 },
		/* The url wins over host and port, TLS keys and all. */
		{ "[redis]\nurl = unix:///run/r.sock\nhost = h\n", 0 },
	};
	struct config	 cfg;
	char		 err[ERRLEN];
	size_t		 i;

	clear_env();
	for (i = 0; i < NELEM(cases); i++) {
		if (load_text(cases[i].text, 0, &cfg, err) != 0) {
			check_str(cases[i].text, err, "", __LINE__);
			continue;
		}
		check_true(cases[i].text, config_redis_tls(&cfg) ==
		    cases[i].tls, __LINE__);
		config_free(&cfg);
	}
}

/* HELLO's version against usergated's minimum, 6.2 (BLMOVE). */
static void
test_redis_version(void)
{
	static const struct {
		const char	*version;
		int		 want;
	} cases[] = {
		{ "6.2.0", 1 }, { "6.2.14", 1 }, { "7.0.15", 1 },
		{ "10.0.0", 1 }, { "6.10.1", 1 }, { "6.2", 1 },
		{ "6.0.16", 0 }, { "5.0.7", 0 }, { "6.1.99", 0 },
		{ "255.255.255", 1 }, { "6", -1 }, { "", -1 }, { "v7.0", -1 },
		{ "7.x", -1 }, { ".2.0", -1 },
		{ "99999999999999999999.0", -1 },
	};
	size_t		 i;

	for (i = 0; i < NELEM(cases); i++)
		check_true(cases[i].version, redis_version_at_least(
		    cases[i].version, 6, 2) == cases[i].want, __LINE__);
}

/* ------------------------------------------------------------------ */

/* [redis] url, username and the old keys: cfg->redis is what is used. */
static const struct redis_case {
	const char	*name, *text;
	const char	*host, *path;
	long		 port, db;
	const char	*username, *password;
} redis_cases[] = {
	{ "the old keys", "[redis]\nhost = r.example\nport = 7000\ndb = 4\n",
	    "r.example", NULL, 7000, 4, NULL, NULL },
	{ "unix_socket wins over host",
	    "[redis]\nhost = r.example\nunix_socket = /run/r.sock\n",
	    NULL, "/run/r.sock", 6379, 0, NULL, NULL },
	{ "url wins over the old keys", "[redis]\nhost = a\nport = 1\n"
	    "unix_socket = /run/r.sock\nurl = redis://u:p%40ss@b:2/3\n",
	    "b", NULL, 2, 3, "u", "p@ss" },
	{ "url with an empty host key", "[redis]\nhost =\n"
	    "url = unix:///run/r.sock?db=2\n", NULL, "/run/r.sock", 0, 2,
	    NULL, NULL },
	{ "url without db takes db", "[redis]\ndb = 5\nurl = redis://h\n",
	    "h", NULL, 6379, 5, NULL, NULL },
	{ "url db equal to db", "[redis]\ndb = 5\nurl = redis://h/5\n",
	    "h", NULL, 6379, 5, NULL, NULL },
	{ "url password, username key", "[redis]\nusername = ug\n"
	    "url = redis://:pw@[::1]:6380\n", "::1", NULL, 6380, 0, "ug",
	    "pw" },
	{ "url user equal to username", "[redis]\nusername = ug\n"
	    "url = redis://ug:pw@h\n", "h", NULL, 6379, 0, "ug", "pw" },
};

static int
same_or_null(const char *got, const char *want)
{
	return want == NULL ? got == NULL : got != NULL &&
	    strcmp(got, want) == 0;
}

static void
test_redis_keys(void)
{
	struct config	 cfg;
	char		 err[ERRLEN], what[256];
	size_t		 i;

	clear_env();
	for (i = 0; i < NELEM(redis_cases); i++) {
		const struct redis_case *c = &redis_cases[i];

		if (load_text(c->text, 0, &cfg, err) != 0) {
			check_str(c->name, err, "", __LINE__);
			continue;
		}
		snprintf(what, sizeof(what), "%s: host", c->name);
		check_true(what, same_or_null(cfg.redis.host, c->host),
		    __LINE__);
		snprintf(what, sizeof(what), "%s: path", c->name);
		check_true(what, same_or_null(cfg.redis.path, c->path),
		    __LINE__);
		snprintf(what, sizeof(what), "%s: port", c->name);
		check_true(what, c->host == NULL || cfg.redis.port == c->port,
		    __LINE__);
		snprintf(what, sizeof(what), "%s: db", c->name);
		check_true(what, cfg.redis.db == c->db, __LINE__);
		snprintf(what, sizeof(what), "%s: username", c->name);
		check_true(what, same_or_null(cfg.redis.username, c->username),
		    __LINE__);
		snprintf(what, sizeof(what), "%s: password", c->name);
		check_true(what, same_or_null(cfg.redis_password, c->password),
		    __LINE__);
		/* The one copy of the password is redis_password. */
		CU_ASSERT_PTR_NULL(cfg.redis.password);
		CU_ASSERT_FALSE(cfg.redis.tls);
		config_free(&cfg);
		CU_ASSERT_PTR_NULL(cfg.redis.host);
	}
}

/*
 * A password in the url and one from password_file or the redis-password
 * credential: refused, whichever it is, and neither is quoted.
 */
static void
test_redis_password_twice(void)
{
	struct config	 cfg;
	char		 err[ERRLEN], pw[PATH_MAX], text[TEXTLEN];
	char		 want[TEXTLEN];

	clear_env();
	write_file("redis-pw", "filepw\n", 0600, pw, sizeof(pw));
	snprintf(text, sizeof(text), "[redis]\nurl = redis://u:urlpw@h\n"
	    "password_file = %s\n", pw);
	CU_ASSERT_EQUAL(load_text(text, 0, &cfg, err), -1);
	expand(want, sizeof(want), "%s:2: key \"url\" in [redis]: holds a "
	    "password, and password_file (or the redis-password credential) "
	    "gives one too; keep one of them", conf_path);
	check_str("url and password_file", err, want, __LINE__);

	/* username and password_file: the ACL form of the old keys. */
	snprintf(text, sizeof(text), "[redis]\nurl = redis://h:1/0\n"
	    "username = ug\npassword_file = %s\n", pw);
	if (load_text(text, 0, &cfg, err) != 0)
		check_str("username and password_file", err, "", __LINE__);
	else {
		check_str("username", cfg.redis.username, "ug", __LINE__);
		check_str("password", cfg.redis_password, "filepw", __LINE__);
		config_free(&cfg);
	}

	write_file("redis-password", "credpw\n", 0600, pw, sizeof(pw));
	set_env("CREDENTIALS_DIRECTORY", tmpdir);
	CU_ASSERT_EQUAL(load_text("[redis]\nurl = redis://:urlpw@h\n", 0,
	    &cfg, err), -1);
	check_str("url and the credential", err, want, __LINE__);
	check_true("no password quoted", strstr(err, "urlpw") == NULL &&
	    strstr(err, "credpw") == NULL, __LINE__);
	if (load_text("[redis]\nurl = redis://ug@h\n", 0, &cfg, err) != 0)
		check_str("url user, credential password", err, "", __LINE__);
	else {
		check_str("username", cfg.redis.username, "ug", __LINE__);
		check_str("password", cfg.redis_password, "credpw", __LINE__);
		config_free(&cfg);
	}
	clear_env();
}

static void
test_file_errors(void)
{
	struct config	 cfg;
	char		 err[ERRLEN], want[TEXTLEN];

	clear_env();
	CU_ASSERT_EQUAL(config_load("/nonexistent-usergate/usergate.conf", &cfg,
	    0, err, sizeof(err)), -1);
	check_str("missing file", err, "cannot open "
	    "/nonexistent-usergate/usergate.conf: No such file or directory",
	    __LINE__);

	CU_ASSERT_EQUAL(config_load(tmpdir, &cfg, 0, err, sizeof(err)), -1);
	snprintf(want, sizeof(want), "cannot read %s: Is a directory", tmpdir);
	check_str("directory", err, want, __LINE__);

	/* An empty file is all defaults. */
	CU_ASSERT_EQUAL(load_text("", 0, &cfg, err), 0);
	config_free(&cfg);
	/* A message that does not fit is cut, not overrun. */
	memset(err, 'Z', sizeof(err));
	CU_ASSERT_EQUAL(config_load("/nonexistent-usergate/usergate.conf", &cfg,
	    0, err, 8), -1);
	check_str("short errlen", err, "cannot ", __LINE__);
	CU_ASSERT_EQUAL(err[8], 'Z');
}

/* ------------------------------------------------------------------ */

static void
test_environment(void)
{
	struct config	 cfg;
	char		 err[ERRLEN], want[TEXTLEN];

	clear_env();
	set_env("TWILIO_API_KEY", SK_2);
	set_env("TWILIO_API_SECRET", "env-api-secret");
	set_env("TWILIO_EDGE", "dublin");
	set_env("TWILIO_REGION", "ie1");
	if (load_text("[twilio]\napi_key = " SK_1 "\nedge = sydney\n", 1, &cfg,
	    err) != 0) {
		check_str("env load", err, "", __LINE__);
		clear_env();
		return;
	}
	check_str("TWILIO_API_KEY wins", cfg.api_key, SK_2, __LINE__);
	check_str("TWILIO_EDGE wins", cfg.edge, "dublin", __LINE__);
	check_str("TWILIO_REGION", cfg.region, "ie1", __LINE__);
	check_true(cfg.api_base != NULL ? cfg.api_base : "(null)",
	    cfg.api_base != NULL && strstr(cfg.api_base,
	    "conversations.dublin.ie1.twilio.com") != NULL, __LINE__);
	check_str("auth_user", cfg.auth_user, SK_2, __LINE__);
	check_str("auth_secret", cfg.auth_secret, "env-api-secret", __LINE__);
	config_free(&cfg);

	/* Account SID and token from the environment alone. */
	clear_env();
	set_env("TWILIO_ACCOUNT_SID", AC_1);
	set_env("TWILIO_AUTH_TOKEN", "env-token");
	if (config_load(NULL, &cfg, 1, err, sizeof(err)) != 0)
		check_str("account from env", err, "", __LINE__);
	else {
		check_str("auth_user", cfg.auth_user, AC_1, __LINE__);
		check_str("auth_secret", cfg.auth_secret, "env-token", __LINE__);
		config_free(&cfg);
	}

	/* An empty variable is no override. */
	clear_env();
	set_env("TWILIO_EDGE", "");
	if (load_text("[twilio]\nedge = sydney\n", 0, &cfg, err) != 0)
		check_str("empty variable", err, "", __LINE__);
	else {
		check_str("file value kept", cfg.edge, "sydney", __LINE__);
		config_free(&cfg);
	}

	/* A bad value names the variable. */
	clear_env();
	set_env("TWILIO_ACCOUNT_SID", "nope");
	CU_ASSERT_EQUAL(config_load(NULL, &cfg, 0, err, sizeof(err)), -1);
	check_str("bad variable", err, "environment variable TWILIO_ACCOUNT_SID "
	    "(key \"account_sid\" in [twilio]): expected empty or AC followed "
	    "by 32 hex digits", __LINE__);
	clear_env();
	set_env("TWILIO_API_KEY", "SKnot-a-key");
	CU_ASSERT_EQUAL(load_text("[twilio]\napi_key = " SK_1 "\n", 0, &cfg,
	    err), -1);
	check_str("bad variable over a good file", err, "environment variable "
	    "TWILIO_API_KEY (key \"api_key\" in [twilio]): expected empty or SK "
	    "followed by 32 hex digits", __LINE__);
	clear_env();
	set_env("TWILIO_EDGE", "bad edge!");
	CU_ASSERT_EQUAL(config_load(NULL, &cfg, 0, err, sizeof(err)), -1);
	snprintf(want, sizeof(want), "environment variable TWILIO_EDGE (key "
	    "\"edge\" in [twilio]): ");
	check_true(err, strncmp(err, want, strlen(want)) == 0, __LINE__);
	clear_env();
}

/*
 * A secret pasted into the wrong key must not be copied into the error,
 * which goes to the log and to `systemctl reload`: every key is given
 * values it may refuse, in the file and through the environment, and no
 * message may quote them.
 */
static void
test_refused_value_not_quoted(void)
{
	static const char *const values[] = {
		"s3cr3t", "s3cr3t/%+ x", "9s3cr3t", "-s3cr3t",
	};
	static const struct {
		const char	*variable;
		const char	*section;
	} overrides[] = {
		{ "TWILIO_API_KEY", "twilio" }, { "TWILIO_ACCOUNT_SID", "twilio" },
		{ "TWILIO_EDGE", "twilio" }, { "TWILIO_REGION", "twilio" },
	};
	const struct config_key *keys;
	struct config	 cfg;
	char		 text[TEXTLEN], err[ERRLEN], what[TEXTLEN];
	size_t		 n, i, j;

	clear_env();
	keys = config_keys(&n);
	for (i = 0; i < n; i++) {
		for (j = 0; j < NELEM(values); j++) {
			snprintf(text, sizeof(text), "[%s]\n%s = %s\n",
			    keys[i].section, keys[i].name, values[j]);
			if (load_text(text, 0, &cfg, err) == 0) {
				config_free(&cfg);
				continue;
			}
			snprintf(what, sizeof(what), "%s.%s = %s: %s",
			    keys[i].section, keys[i].name, values[j], err);
			check_true(what, strstr(err, "s3cr3t") == NULL,
			    __LINE__);
		}
	}
	for (i = 0; i < NELEM(overrides); i++) {
		for (j = 0; j < NELEM(values); j++) {
			set_env(overrides[i].variable, values[j]);
			if (load_text("[twilio]\n", 0, &cfg, err) == 0)
				config_free(&cfg);
			else {
				snprintf(what, sizeof(what), "%s=%s: %s",
				    overrides[i].variable, values[j], err);
				check_true(what, strstr(err, "s3cr3t") == NULL,
				    __LINE__);
			}
			clear_env();
		}
	}
	/* The case of the issue, word for word. */
	CU_ASSERT_EQUAL(load_text("[twilio]\nmax_inflight = s3cr3t\n", 0,
	    &cfg, err), -1);
	expand(what, sizeof(what), "%s:2: key \"max_inflight\" in [twilio]: "
	    "not a decimal integer (expected 1..10000)", conf_path);
	check_str("secret in max_inflight", err, what, __LINE__);
}

/* ------------------------------------------------------------------ */

static void
test_secret_files(void)
{
	static const struct {
		mode_t		 mode;
		const char	*content;
		const char	*want;	/* NULL: accepted; else message */
	} cases[] = {
		{ 0600, "s3cr3t-value\n",	NULL },
		{ 0400, "s3cr3t-value \r\n\n\t", NULL },
		{ 0644, "s3cr3t-value\n",	"%s:3: key \"api_secret_file\" "
		    "in [twilio]: the secret file has mode 0644: group and "
		    "others must have no access (chmod 600 it)" },
		{ 0640, "s3cr3t-value\n",	"%s:3: key \"api_secret_file\" "
		    "in [twilio]: the secret file has mode 0640: group and "
		    "others must have no access (chmod 600 it)" },
		{ 0604, "s3cr3t-value\n",	"%s:3: key \"api_secret_file\" "
		    "in [twilio]: the secret file has mode 0604: group and "
		    "others must have no access (chmod 600 it)" },
		{ 0600, "\n \n",		"%s:3: key \"api_secret_file\" "
		    "in [twilio]: the secret file is empty" },
		{ 0600, "",			"%s:3: key \"api_secret_file\" "
		    "in [twilio]: the secret file is empty" },
	};
	struct config	 cfg;
	char		 secret_path[PATH_MAX], text[TEXTLEN], err[ERRLEN];
	char		 want[TEXTLEN];
	size_t		 i;

	clear_env();
	for (i = 0; i < NELEM(cases); i++) {
		write_file("api-secret", cases[i].content, cases[i].mode,
		    secret_path, sizeof(secret_path));
		snprintf(text, sizeof(text), "[twilio]\napi_key = " SK_1 "\n"
		    "api_secret_file = %s\n", secret_path);
		if (cases[i].want == NULL) {
			if (load_text(text, 1, &cfg, err) != 0) {
				check_str("accepted", err, "", __LINE__);
				continue;
			}
			check_str("auth_user", cfg.auth_user, SK_1, __LINE__);
			check_str("stripped secret", cfg.auth_secret,
			    "s3cr3t-value", __LINE__);
			config_free(&cfg);
			continue;
		}
		CU_ASSERT_EQUAL(load_text(text, 1, &cfg, err), -1);
		expand(want, sizeof(want), cases[i].want, conf_path);
		check_str("refused", err, want, __LINE__);
		check_true("no secret in the message",
		    strstr(err, "s3cr3t") == NULL, __LINE__);
	}

	/* Missing, and not a regular file. */
	snprintf(text, sizeof(text), "[twilio]\napi_key = " SK_1 "\n"
	    "api_secret_file = %s/missing\n", tmpdir);
	CU_ASSERT_EQUAL(load_text(text, 1, &cfg, err), -1);
	snprintf(want, sizeof(want), "%s:3: key \"api_secret_file\" in "
	    "[twilio]: cannot open the secret file: No such file or "
	    "directory", conf_path);
	check_str("missing secret file", err, want, __LINE__);

	snprintf(text, sizeof(text), "[redis]\npassword_file = %s\n", tmpdir);
	CU_ASSERT_EQUAL(load_text(text, 0, &cfg, err), -1);
	snprintf(want, sizeof(want), "%s:2: key \"password_file\" in [redis]: "
	    "the secret file is not a regular file (a FIFO, socket, device or "
	    "directory cannot hold a secret)", conf_path);
	check_str("directory as secret file", err, want, __LINE__);

	/*
	 * A FIFO is refused at once: opened blocking it would wait for a
	 * writer forever (the alarm ends the test if it does).
	 */
	snprintf(secret_path, sizeof(secret_path), "%s/fifo", tmpdir);
	if (mkfifo(secret_path, 0600) == -1)
		abort();
	snprintf(text, sizeof(text), "[twilio]\napi_key = " SK_1 "\n"
	    "api_secret_file = %s\n", secret_path);
	alarm(10);
	CU_ASSERT_EQUAL(load_text(text, 1, &cfg, err), -1);
	alarm(0);
	snprintf(want, sizeof(want), "%s:3: key \"api_secret_file\" in "
	    "[twilio]: the secret file is not a regular file (a FIFO, socket, "
	    "device or directory cannot hold a secret)", conf_path);
	check_str("FIFO as secret file", err, want, __LINE__);
	if (unlink(secret_path) == -1)
		abort();

	/* The Redis password. */
	write_file("redis-pw", "redis-pass\n", 0600, secret_path,
	    sizeof(secret_path));
	snprintf(text, sizeof(text), "[redis]\npassword_file = %s\n",
	    secret_path);
	if (load_text(text, 0, &cfg, err) != 0)
		check_str("redis password", err, "", __LINE__);
	else {
		check_str("redis_password", cfg.redis_password, "redis-pass",
		    __LINE__);
		config_free(&cfg);
	}
}

static void
test_credentials_directory(void)
{
	struct config	 cfg;
	char		 dir[PATH_MAX], path[PATH_MAX], other[PATH_MAX];
	char		 text[TEXTLEN], err[ERRLEN], want[TEXTLEN];

	clear_env();
	snprintf(dir, sizeof(dir), "%s/credentials", tmpdir);
	if (mkdir(dir, 0700) == -1 && errno != EEXIST) {
		CU_FAIL_FATAL("mkdir credentials");
		return;
	}
	write_file("credentials/twilio-auth-token", "cred-token\n", 0400, path,
	    sizeof(path));
	write_file("credentials/redis-password", "cred-redis\n", 0600, path,
	    sizeof(path));
	set_env("CREDENTIALS_DIRECTORY", dir);

	/* account_sid + $CREDENTIALS_DIRECTORY/twilio-auth-token. */
	if (load_text("[twilio]\naccount_sid = " AC_1 "\n", 1, &cfg, err) != 0)
		check_str("credentials directory", err, "", __LINE__);
	else {
		check_str("auth_user", cfg.auth_user, AC_1, __LINE__);
		check_str("auth_secret", cfg.auth_secret, "cred-token", __LINE__);
		check_str("redis_password", cfg.redis_password, "cred-redis",
		    __LINE__);
		config_free(&cfg);
	}

	/* An explicit *_file wins over the directory. */
	write_file("token", "file-token\n", 0600, other, sizeof(other));
	snprintf(text, sizeof(text), "[twilio]\naccount_sid = " AC_1 "\n"
	    "auth_token_file = %s\n", other);
	if (load_text(text, 1, &cfg, err) != 0)
		check_str("explicit file", err, "", __LINE__);
	else {
		check_str("auth_secret", cfg.auth_secret, "file-token", __LINE__);
		config_free(&cfg);
	}

	/* The environment wins over both. */
	set_env("TWILIO_AUTH_TOKEN", "env-token");
	if (load_text(text, 1, &cfg, err) != 0)
		check_str("env over file", err, "", __LINE__);
	else {
		check_str("auth_secret", cfg.auth_secret, "env-token", __LINE__);
		config_free(&cfg);
	}
	if (unsetenv("TWILIO_AUTH_TOKEN") == -1)
		abort();

	/* The API key pair from the directory wins over the account pair. */
	write_file("credentials/twilio-api-secret", "cred-api-secret\n", 0600,
	    path, sizeof(path));
	if (load_text("[twilio]\napi_key = " SK_1 "\naccount_sid = " AC_1 "\n",
	    1, &cfg, err) != 0)
		check_str("key pair from directory", err, "", __LINE__);
	else {
		check_str("auth_user", cfg.auth_user, SK_1, __LINE__);
		check_str("auth_secret", cfg.auth_secret, "cred-api-secret",
		    __LINE__);
		config_free(&cfg);
	}

	/* A credential readable by others is refused there too. */
	write_file("credentials/twilio-api-secret", "cred-api-secret\n", 0644,
	    path, sizeof(path));
	CU_ASSERT_EQUAL(load_text("[twilio]\napi_key = " SK_1 "\n", 1, &cfg,
	    err), -1);
	snprintf(want, sizeof(want), "$CREDENTIALS_DIRECTORY: secret file %s "
	    "has mode 0644: group and others must have no access (chmod 600 "
	    "it)", path);
	check_str("world-readable credential", err, want, __LINE__);
	check_true("no secret in the message",
	    strstr(err, "cred-api-secret") == NULL, __LINE__);
	if (unlink(path) == -1)
		abort();

	/* An absent credential is no error: the key is just incomplete. */
	if (load_text("[twilio]\napi_key = " SK_1 "\n", 0, &cfg, err) != 0)
		check_str("absent credential", err, "", __LINE__);
	else {
		CU_ASSERT_PTR_NULL(cfg.auth_user);
		check_str("redis_password", cfg.redis_password, "cred-redis",
		    __LINE__);
		config_free(&cfg);
	}
	clear_env();
}

static void
test_credential_pairs(void)
{
	struct config	 cfg;
	char		 key_secret[PATH_MAX], token[PATH_MAX];
	char		 text[TEXTLEN], err[ERRLEN], want[TEXTLEN];
	static const char missing[] = "no Twilio credentials: set api_key and "
	    "api_secret_file (or account_sid and auth_token_file)";

	clear_env();
	write_file("pair-api-secret", "pair-api-secret\n", 0600, key_secret,
	    sizeof(key_secret));
	write_file("pair-token", "pair-token\n", 0600, token, sizeof(token));

	/* Both pairs complete: the API key pair wins. */
	snprintf(text, sizeof(text), "[twilio]\naccount_sid = " AC_1 "\n"
	    "auth_token_file = %s\napi_key = " SK_1 "\napi_secret_file = %s\n",
	    token, key_secret);
	if (load_text(text, 1, &cfg, err) != 0)
		check_str("both pairs", err, "", __LINE__);
	else {
		check_str("key wins: user", cfg.auth_user, SK_1, __LINE__);
		check_str("key wins: secret", cfg.auth_secret,
		    "pair-api-secret", __LINE__);
		config_free(&cfg);
	}

	/* Half a key pair: the account pair is used. */
	snprintf(text, sizeof(text), "[twilio]\napi_key = " SK_1 "\n"
	    "account_sid = " AC_1 "\nauth_token_file = %s\n", token);
	if (load_text(text, 1, &cfg, err) != 0)
		check_str("half key pair", err, "", __LINE__);
	else {
		check_str("account user", cfg.auth_user, AC_1, __LINE__);
		check_str("account secret", cfg.auth_secret, "pair-token",
		    __LINE__);
		config_free(&cfg);
	}

	/* None at all. */
	CU_ASSERT_EQUAL(config_load(NULL, &cfg, 1, err, sizeof(err)), -1);
	check_str("no credentials, no file", err, missing, __LINE__);
	CU_ASSERT_EQUAL(load_text("", 1, &cfg, err), -1);
	snprintf(want, sizeof(want), "%s: %s", conf_path, missing);
	check_str("no credentials", err, want, __LINE__);
	CU_ASSERT_EQUAL(load_text("[twilio]\napi_key = " SK_1 "\n", 1, &cfg,
	    err), -1);
	snprintf(want, sizeof(want), "%s: %s; api_key is set but no API secret "
	    "was found", conf_path, missing);
	check_str("key without secret", err, want, __LINE__);
	snprintf(text, sizeof(text), "[twilio]\nauth_token_file = %s\n", token);
	CU_ASSERT_EQUAL(load_text(text, 1, &cfg, err), -1);
	snprintf(want, sizeof(want), "%s: %s; a secret was found but neither "
	    "api_key nor account_sid is set", conf_path, missing);
	check_str("secret without user", err, want, __LINE__);
	check_true("no secret in the message",
	    strstr(err, "pair-token") == NULL, __LINE__);

	/* Not required: loads without. */
	if (load_text("", 0, &cfg, err) != 0)
		check_str("not required", err, "", __LINE__);
	else {
		CU_ASSERT_PTR_NULL(cfg.auth_user);
		CU_ASSERT_PTR_NULL(cfg.auth_secret);
		config_free(&cfg);
	}
}

/*
 * usergatectl import -c: the Twilio secrets are not read at all (here one
 * that would be refused, and a file that does not exist), the Redis ones
 * are, from beside the config file as the unit's LoadCredential= has it.
 */
static void
test_redis_only(void)
{
	struct config	 cfg;
	char		 dir[PATH_MAX], path[PATH_MAX], text[TEXTLEN];
	char		 err[ERRLEN];

	clear_env();
	snprintf(dir, sizeof(dir), "%s/beside", tmpdir);
	if (mkdir(dir, 0700) == -1 && errno != EEXIST) {
		CU_FAIL_FATAL("mkdir beside");
		return;
	}
	write_file("beside/twilio-api-secret", "beside-secret\n", 0644, path,
	    sizeof(path));
	write_file("beside/redis-password", "beside-redis\n", 0600, path,
	    sizeof(path));
	write_file("beside/redis-sentinel-password", "beside-sentinel\n",
	    0600, path, sizeof(path));
	snprintf(text, sizeof(text), "[twilio]\napi_key = " SK_1 "\n"
	    "account_sid = " AC_1 "\nauth_token_file = %s/nonexistent\n",
	    tmpdir);
	write_file("beside/usergate.conf", text, 0644, path, sizeof(path));
	CU_ASSERT_EQUAL(config_credentials_beside(path), 0);
	check_str("beside", getenv("CREDENTIALS_DIRECTORY"), dir, __LINE__);
	/* Already set (under systemd): left alone. */
	CU_ASSERT_EQUAL(config_credentials_beside("/elsewhere/x.conf"), 0);
	check_str("set already", getenv("CREDENTIALS_DIRECTORY"), dir,
	    __LINE__);

	CU_ASSERT_EQUAL(config_load(path, &cfg, CONFIG_CREDENTIALS_REQUIRED,
	    err, sizeof(err)), -1);
	if (config_load(path, &cfg, CONFIG_CREDENTIALS_REDIS_ONLY, err,
	    sizeof(err)) != 0)
		check_str("redis only", err, "", __LINE__);
	else {
		CU_ASSERT_PTR_NULL(cfg.auth_user);
		CU_ASSERT_PTR_NULL(cfg.auth_secret);
		check_str("redis_password", cfg.redis_password, "beside-redis",
		    __LINE__);
		check_str("sentinel_password", cfg.sentinel_password,
		    "beside-sentinel", __LINE__);
		config_free(&cfg);
	}
	/* The Redis password is still checked as the daemon checks it. */
	write_file("beside/redis-password", "beside-redis\n", 0640, text,
	    sizeof(text));
	CU_ASSERT_EQUAL(config_load(path, &cfg, CONFIG_CREDENTIALS_REDIS_ONLY,
	    err, sizeof(err)), -1);
	check_true("redis password mode", strstr(err, "has mode 0640") !=
	    NULL, __LINE__);
	clear_env();
}

/* ------------------------------------------------------------------ */

static void
test_restart_keys(void)
{
	struct config	 a, b;
	char		 err[ERRLEN], out[256], pw[PATH_MAX], text[TEXTLEN];
	int		 n;

	clear_env();
	if (load_text("[twilio]\nmax_inflight = 10\n", 0, &a, err) != 0) {
		check_str("load a", err, "", __LINE__);
		return;
	}
	if (load_text("[twilio]\nmax_inflight = 20\nservice_sid = " IS_1 "\n"
	    "edge = dublin\n[retry]\nmax_attempts = 3\n[redis]\nport = 6380\n"
	    "[socket]\nmode = 0600\n[log]\nlevel = debug\n", 0, &b, err) != 0) {
		check_str("load b", err, "", __LINE__);
		config_free(&a);
		return;
	}
	n = config_restart_keys(&a, &b, out, sizeof(out));
	CU_ASSERT_EQUAL(n, 3);
	check_str("changed restart keys", out,
	    "twilio.service_sid,redis.port,socket.mode", __LINE__);

	/* A short buffer is cut and terminated; the count stays right. */
	memset(out, 'Z', sizeof(out));
	n = config_restart_keys(&a, &b, out, 10);
	CU_ASSERT_EQUAL(n, 3);
	check_true("cut inside the buffer", strlen(out) < 10 &&
	    strncmp(out, "twilio.se", strlen(out)) == 0, __LINE__);
	CU_ASSERT_EQUAL(out[10], 'Z');

	n = config_restart_keys(&a, &a, out, sizeof(out));
	CU_ASSERT_EQUAL(n, 0);
	check_str("nothing changed", out, "", __LINE__);
	config_free(&b);

	/* Only reloadable keys changed. */
	if (load_text("[twilio]\nmax_inflight = 30\n[dedup]\nttl_s = 5\n"
	    "[results]\nformat = json\n", 0, &b, err) != 0)
		check_str("load reloadable", err, "", __LINE__);
	else {
		CU_ASSERT_EQUAL(config_restart_keys(&a, &b, out, sizeof(out)), 0);
		config_free(&b);
	}

	/* Every [status] key, and [redis] instance_id. */
	if (load_text("[redis]\ninstance_id = other\n[status]\npath = /tmp/s\n"
	    "mode = 0600\n", 0, &b, err) != 0)
		check_str("load status", err, "", __LINE__);
	else {
		CU_ASSERT_EQUAL(config_restart_keys(&a, &b, out, sizeof(out)), 3);
		check_str("status keys", out,
		    "redis.instance_id,status.path,status.mode", __LINE__);
		config_free(&b);
	}
	config_free(&a);

	/* A new Redis password in the same file needs a restart too. */
	write_file("restart-pw", "one\n", 0600, pw, sizeof(pw));
	snprintf(text, sizeof(text), "[redis]\npassword_file = %s\n", pw);
	if (load_text(text, 0, &a, err) != 0) {
		check_str("load pw a", err, "", __LINE__);
		return;
	}
	write_file("restart-pw", "two\n", 0600, pw, sizeof(pw));
	if (load_text(text, 0, &b, err) != 0) {
		check_str("load pw b", err, "", __LINE__);
		config_free(&a);
		return;
	}
	CU_ASSERT_EQUAL(config_restart_keys(&a, &b, out, sizeof(out)), 1);
	check_str("password changed", out, "redis.password_file", __LINE__);
	check_true("no password in the list", strstr(out, "two") == NULL,
	    __LINE__);
	config_free(&a);
	config_free(&b);

	/* A url with a new password is the url alone; username restarts. */
	if (load_text("[redis]\nurl = redis://u:one@h/0\n", 0, &a, err) != 0) {
		check_str("load url a", err, "", __LINE__);
		return;
	}
	if (load_text("[redis]\nurl = redis://u:two@h/0\n", 0, &b, err) != 0) {
		check_str("load url b", err, "", __LINE__);
		config_free(&a);
		return;
	}
	CU_ASSERT_EQUAL(config_restart_keys(&a, &b, out, sizeof(out)), 1);
	check_str("url changed", out, "redis.url", __LINE__);
	config_free(&b);
	if (load_text("[redis]\nurl = redis://:one@h/0\nusername = u\n", 0, &b,
	    err) != 0)
		check_str("load url b", err, "", __LINE__);
	else {
		CU_ASSERT_EQUAL(config_restart_keys(&a, &b, out, sizeof(out)),
		    2);
		check_str("url and username", out, "redis.url,redis.username",
		    __LINE__);
		config_free(&b);
	}
	config_free(&a);
}

/* ------------------------------------------------------------------ */

static char *
read_all(const char *path)
{
	FILE	*fp;
	char	*buf;
	long	 len;

	if ((fp = fopen(path, "r")) == NULL)
		return NULL;
	if (fseek(fp, 0, SEEK_END) == -1 || (len = ftell(fp)) < 0 ||
	    fseek(fp, 0, SEEK_SET) == -1 ||
	    (buf = malloc((size_t)len + 1)) == NULL) {
		(void)fclose(fp);
		return NULL;
	}
	if (fread(buf, 1, (size_t)len, fp) != (size_t)len) {
		free(buf);
		(void)fclose(fp);
		return NULL;
	}
	buf[len] = '\0';
	(void)fclose(fp);
	return buf;
}

static int
regex_search(const char *pattern, const char *text, regmatch_t *m)
{
	regex_t	 re;
	int	 r;

	if (regcomp(&re, pattern, REG_EXTENDED | REG_NEWLINE) != 0)
		return 0;
	r = regexec(&re, text, 1, m, 0) == 0;
	regfree(&re);
	return r;
}

/*
 * The part of text that belongs to section: from the line matching
 * head_fmt (a regex with %s for the section) to the next line matching
 * next.  Returns a malloc'd copy, or NULL when there is no such heading.
 */
static char *
section_text(const char *text, const char *head_fmt, const char *next,
    const char *section)
{
	char		 pattern[256];
	regmatch_t	 m;
	const char	*start;
	size_t		 len;
	char		*out;

	snprintf(pattern, sizeof(pattern), head_fmt, section);
	if (!regex_search(pattern, text, &m))
		return NULL;
	start = text + m.rm_eo;
	len = regex_search(next, start, &m) ? (size_t)m.rm_so : strlen(start);
	if ((out = malloc(len + 1)) == NULL)
		return NULL;
	memcpy(out, start, len);
	out[len] = '\0';
	return out;
}

/*
 * The other way round: every key that part (the text of section in file)
 * shows, as a line matching line_re (its first group the key), is a key of
 * the table in that section, so the docs name nothing the code lacks.
 */
static void
check_shown_keys(const char *file, const char *part, const char *line_re,
    const char *section, const struct config_key *keys, size_t n)
{
	regex_t		 re;
	regmatch_t	 m[2];
	const char	*p = part;
	size_t		 i, len;
	int		 ok;

	if (part == NULL || regcomp(&re, line_re, REG_EXTENDED | REG_NEWLINE) != 0)
		return;
	while (regexec(&re, p, 2, m, p == part ? 0 : REG_NOTBOL) == 0) {
		len = (size_t)(m[1].rm_eo - m[1].rm_so);
		ok = 0;
		for (i = 0; i < n; i++)
			ok |= strcmp(keys[i].section, section) == 0 &&
			    strlen(keys[i].name) == len &&
			    strncmp(keys[i].name, p + m[1].rm_so, len) == 0;
		if (!ok)
			fprintf(stderr, "\ndocs check: %s shows key \"%.*s\" in "
			    "[%s], which the table does not have\n", file,
			    (int)len, p + m[1].rm_so, section);
		check_true("shown key in the table", ok, __LINE__);
		p += m[0].rm_eo;
	}
	regfree(&re);
}

/*
 * Every key of the table is shown in the example configuration, in its
 * section, and described in usergate.conf(5), so neither can fall behind
 * the code (as PgBouncer's optscan.sh does for its settings).
 */
static void
test_docs(void)
{
	const struct config_key *keys;
	const char	*top;
	char		 conf[PATH_MAX], man[PATH_MAX], pattern[256], err[ERRLEN];
	char		*conf_text, *man_text, *part;
	struct config	 cfg;
	regmatch_t	 m;
	size_t		 n, i;
	int		 ok;

	if ((top = getenv("top_srcdir")) == NULL &&
	    (top = getenv("srcdir")) == NULL)
		top = ".";
	snprintf(conf, sizeof(conf), "%s/conf/usergate.conf", top);
	snprintf(man, sizeof(man), "%s/docs/usergate.conf.5", top);
	conf_text = read_all(conf);
	man_text = read_all(man);
	if (conf_text == NULL)
		fprintf(stderr, "\ndocs check: cannot read %s (set top_srcdir "
		    "to the source tree)\n", conf);
	if (man_text == NULL)
		fprintf(stderr, "\ndocs check: cannot read %s (set top_srcdir "
		    "to the source tree)\n", man);
	check_true("conf/usergate.conf readable", conf_text != NULL, __LINE__);
	check_true("docs/usergate.conf.5 readable", man_text != NULL, __LINE__);

	keys = config_keys(&n);
	for (i = 0; i < n; i++) {
		if (conf_text != NULL) {
			/* "key =" (maybe commented out) inside [section]. */
			part = section_text(conf_text, "^[;# ]*\\[%s\\]",
			    "^[;# ]*\\[", keys[i].section);
			snprintf(pattern, sizeof(pattern), "^[;# ]*%s *=",
			    keys[i].name);
			ok = part != NULL && regex_search(pattern, part, &m);
			if (!ok)
				fprintf(stderr, "\ndocs check: %s has no line "
				    "\"%s =\" in [%s]\n", conf, keys[i].name,
				    keys[i].section);
			check_true("key in conf/usergate.conf", ok, __LINE__);
			free(part);
		}
		if (man_text != NULL) {
			/*
			 * The key as a word (font escapes like \fB are
			 * upper case), inside its section's heading when the
			 * page has one per section.
			 */
			part = section_text(man_text,
			    "^\\.S[HSs][^\n]*\\[%s\\]", "^\\.S[HSs]",
			    keys[i].section);
			snprintf(pattern, sizeof(pattern),
			    "(^|[^a-z0-9_])%s([^a-z0-9_]|$)", keys[i].name);
			ok = regex_search(pattern, part != NULL ? part :
			    man_text, &m);
			if (!ok)
				fprintf(stderr, "\ndocs check: %s does not "
				    "mention \"%s\"%s%s%s\n", man,
				    keys[i].name, part != NULL ? " in its [" :
				    "", part != NULL ? keys[i].section : "",
				    part != NULL ? "] section" : "");
			check_true("key in docs/usergate.conf.5", ok, __LINE__);
			free(part);
		}
	}

	/* Each section shows no key but the table's. */
	for (i = 0; i < n; i++) {
		if (i > 0 && strcmp(keys[i].section, keys[i - 1].section) == 0)
			continue;
		if (conf_text != NULL) {
			part = section_text(conf_text, "^[;# ]*\\[%s\\]",
			    "^[;# ]*\\[", keys[i].section);
			check_shown_keys(conf, part, "^[;# ]*([a-z0-9_]+) *=",
			    keys[i].section, keys, n);
			free(part);
		}
		if (man_text != NULL) {
			part = section_text(man_text,
			    "^\\.S[HSs][^\n]*\\[%s\\]", "^\\.S[HSs]",
			    keys[i].section);
			check_shown_keys(man, part,
			    "^\\.BR? ([a-z0-9_]+) \" = \"", keys[i].section,
			    keys, n);
			free(part);
		}
	}

	/* The shipped example must itself be a valid configuration. */
	if (conf_text != NULL) {
		clear_env();
		if (config_load(conf, &cfg, 0, err, sizeof(err)) != 0)
			check_str("conf/usergate.conf loads", err, "", __LINE__);
		else
			config_free(&cfg);
	}
	free(conf_text);
	free(man_text);
}

/* ------------------------------------------------------------------ */

static int
remove_entry(const char *path, const struct stat *st, int flag,
    struct FTW *ftw)
{
	return remove(path);
}

static int
suite_init(void)
{
	clear_env();
	return mkdtemp(tmpdir) == NULL ? -1 : 0;
}

static int
suite_clean(void)
{
	clear_env();
	return nftw(tmpdir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

int
main(void)
{
	CU_pSuite	 suite;
	unsigned int	 failures;

	if (CU_initialize_registry() != CUE_SUCCESS)
		return 1;
	if ((suite = CU_add_suite("config", suite_init, suite_clean)) == NULL ||
	    CU_add_test(suite, "key table", test_key_table) == NULL ||
	    CU_add_test(suite, "defaults", test_defaults) == NULL ||
	    CU_add_test(suite, "SPEC block", test_spec_block) == NULL ||
	    CU_add_test(suite, "values", test_values) == NULL ||
	    CU_add_test(suite, "redis only", test_redis_only) == NULL ||
	    CU_add_test(suite, "errors", test_errors) == NULL ||
	    CU_add_test(suite, "redis keys", test_redis_keys) == NULL ||
	    CU_add_test(suite, "redis password twice",
	    test_redis_password_twice) == NULL ||
	    CU_add_test(suite, "refused values not quoted",
	    test_refused_value_not_quoted) == NULL ||
	    CU_add_test(suite, "file errors", test_file_errors) == NULL ||
	    CU_add_test(suite, "redis TLS", test_redis_tls) == NULL ||
	    CU_add_test(suite, "redis version", test_redis_version) == NULL ||
	    CU_add_test(suite, "environment", test_environment) == NULL ||
	    CU_add_test(suite, "secret files", test_secret_files) == NULL ||
	    CU_add_test(suite, "credentials directory",
	    test_credentials_directory) == NULL ||
	    CU_add_test(suite, "credential pairs", test_credential_pairs) ==
	    NULL ||
	    CU_add_test(suite, "restart keys", test_restart_keys) == NULL ||
	    CU_add_test(suite, "docs", test_docs) == NULL) {
		CU_cleanup_registry();
		return 1;
	}
	CU_basic_set_mode(CU_BRM_VERBOSE);
	if (CU_basic_run_tests() != CUE_SUCCESS) {
		CU_cleanup_registry();
		return 1;
	}
	failures = CU_get_number_of_failures();
	CU_cleanup_registry();
	return failures > 0 ? 1 : 0;
}
