/*
 * fuzz_request.c: libFuzzer target for the request decoder and validator.
 *
 * Arbitrary bytes go to request_parse() exactly as a frame from Redis or
 * the request socket would; an accepted request is turned into both of
 * Twilio's form bodies.  Beyond the sanitizers' own checks, every answer
 * must keep the promises of usergate.h and SPEC §4.1: a known error code, a
 * clean error message, echo fields and accepted values within their limits,
 * and a form body that is nothing but percent-encoded pairs.
 *
 * Built and run by `make fuzz` (see Makefile.am); seeds in
 * tests/fuzz/corpus/request/.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "usergate.h"

int	LLVMFuzzerTestOneInput(const uint8_t *, size_t);

#define CHECK(cond)	do { if (!(cond)) __builtin_trap(); } while (0)

/* Valid UTF-8, at most max code points, no NUL inside. */
static void
check_text(const char *s, size_t max)
{
	size_t	 len = strlen(s);

	CHECK(codec_utf8_valid(s, len));
	CHECK(codec_utf8_length(s, len) <= max);
}

/* An error message may go into a log line and a JSON result. */
static void
check_message(const char *err)
{
	const unsigned char *p;

	CHECK(memchr(err, '\0', 256) != NULL);
	CHECK(codec_utf8_valid(err, strlen(err)));
	for (p = (const unsigned char *)err; *p != '\0'; p++)
		CHECK(*p >= 0x20 && *p != 0x7f);
}

/* application/x-www-form-urlencoded: name=value pairs joined by '&', with
 * nothing but unreserved characters, '+' and %XX escapes. */
static void
check_form(const char *form, const struct request *req, int with_identity)
{
	const char	*p;

	CHECK(form != NULL);
	for (p = form; *p != '\0'; p++) {
		if (*p == '%') {
			CHECK(strchr("0123456789ABCDEFabcdef", p[1]) != NULL && p[1]);
			CHECK(strchr("0123456789ABCDEFabcdef", p[2]) != NULL && p[2]);
			continue;
		}
		CHECK((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
		    (*p >= '0' && *p <= '9') || strchr("-._~+&=", *p) != NULL);
	}
	if (with_identity)
		CHECK(strncmp(form, "Identity=", 9) == 0);
	else
		CHECK(strstr(form, "Identity=") == NULL);
	if (req->friendly_name != NULL)
		CHECK(strstr(form, "FriendlyName=") != NULL);
	if (req->attributes != NULL)
		CHECK(strstr(form, "Attributes=") != NULL);
	if (req->role_sid != NULL)
		CHECK(strstr(form, "RoleSid=") != NULL);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct request	 req;
	enum request_error e;
	char		 err[256];
	char		*form;

	memset(err, 'x', sizeof(err));
	e = request_parse(data, size, NULL, &req, err, sizeof(err));
	check_message(err);
	/* Echo fields, set even for a refused request. */
	if (req.request_id != NULL) {
		CHECK(strlen(req.request_id) >= 1);
		CHECK(strlen(req.request_id) <= UG_REQUEST_ID_MAX);
		CHECK(codec_utf8_valid(req.request_id, strlen(req.request_id)));
	}
	if (req.identity != NULL)
		CHECK(codec_utf8_valid(req.identity, strlen(req.identity)));
	if (req.reply_to != NULL)
		CHECK(strlen(req.reply_to) >= 1);

	if (e != REQ_OK) {
		CHECK(request_error_code(e) != NULL);
		CHECK(err[0] != '\0');
		/* Nothing but the echo fields on a refusal. */
		CHECK(req.friendly_name == NULL && req.attributes == NULL &&
		    req.role_sid == NULL);
		request_free(&req);
		return 0;
	}
	CHECK(request_error_code(e) == NULL);
	CHECK(size <= UG_FRAME_MAX);
	CHECK(req.identity != NULL && req.identity[0] != '\0');
	check_text(req.identity, UG_IDENTITY_MAX);
	if (req.friendly_name != NULL)
		check_text(req.friendly_name, UG_FRIENDLY_NAME_MAX);
	if (req.attributes != NULL) {
		json_t *a = json_loads(req.attributes,
		    JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, NULL);

		CHECK(strlen(req.attributes) <= UG_ATTRIBUTES_MAX);
		CHECK(a != NULL && json_is_object(a));
		json_decref(a);
	}
	if (req.role_sid != NULL)
		CHECK(strlen(req.role_sid) == 34 && strncmp(req.role_sid, "RL", 2) == 0);
	CHECK(req.webhook_enabled >= -1 && req.webhook_enabled <= 1);
	CHECK(req.wait == 0 || req.wait == 1);

	form = twilio_form(&req, 1);
	check_form(form, &req, 1);
	free(form);
	form = twilio_form(&req, 0);
	check_form(form, &req, 0);
	free(form);
	request_free(&req);
	return 0;
}
