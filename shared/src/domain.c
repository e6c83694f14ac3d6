#include "jetledger/domain.h"

#include <assert.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "jetledger/json.h"

static const char *const code_names[] = {
    "ok",       "invalid",     "not_found", "conflict", "rule_violation",
    "internal", "unavailable", "timeout",
};

const char *jl_code_str(jl_code c)
{
    if ((size_t)c < sizeof(code_names) / sizeof(code_names[0]))
        return code_names[c];
    return "unknown";
}

jl_status jl_code_parse(jl_code *out_code, const char *name)
{
    for (size_t i = 0; i < sizeof(code_names) / sizeof(code_names[0]); i++) {
        if (strcmp(name, code_names[i]) == 0) {
            *out_code = (jl_code)i;
            return JL_OK;
        }
    }
    return JL_ERR_INVALID;
}

void jl_decision_init(jl_decision *d)
{
    d->code = JL_CODE_OK;
    d->message[0] = 0;
    d->n_events = 0;
    jl_buf_init(&d->bytes, JL_DECISION_MAX_BYTES);
}

void jl_decision_cleanup(jl_decision *d)
{
    jl_buf_cleanup(&d->bytes);
    d->n_events = 0;
}

void jl_decision_reset(jl_decision *d)
{
    d->code = JL_CODE_OK;
    d->message[0] = 0;
    d->n_events = 0;
    jl_buf_reset(&d->bytes);
}

bool jl_decision_rejected(const jl_decision *d)
{
    return d->code != JL_CODE_OK;
}

void jl_decision_reject(jl_decision *d, jl_code code, const char *fmt, ...)
{
    if (jl_decision_rejected(d))
        return;
    d->code = code == JL_CODE_OK ? JL_CODE_INTERNAL : code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(d->message, sizeof(d->message), fmt, ap);
    va_end(ap);
    d->n_events = 0;
    jl_buf_reset(&d->bytes);
}

void jl_decision_emit(jl_decision *d, const ProtobufCMessage *event)
{
    if (jl_decision_rejected(d))
        return;
    if (d->n_events == JL_DECISION_MAX_EVENTS) {
        jl_decision_reject(d, JL_CODE_INVALID, "a command may produce at most %d events",
                           JL_DECISION_MAX_EVENTS);
        return;
    }
    size_t offset = d->bytes.len;
    jl_status s = jl_buf_pack(&d->bytes, event);
    if (s == JL_ERR_NOMEM) {
        /* Not the command's fault: "not now", never a refusal (a process manager would take
         * one for good and compensate). */
        jl_decision_reject(d, JL_CODE_UNAVAILABLE, "out of memory packing the events; try again");
        return;
    }
    if (s != JL_OK) {
        jl_decision_reject(d, JL_CODE_INVALID, "the events of one command exceed %d bytes",
                           JL_DECISION_MAX_BYTES);
        return;
    }
    d->types[d->n_events] = event->descriptor;
    d->offsets[d->n_events] = offset;
    d->lens[d->n_events] = d->bytes.len - offset;
    d->n_events++;
}

size_t jl_text_len(const char *s, size_t cap)
{
    return s ? strnlen(s, cap + 1) : 0;
}

char *jl_text_or_empty(const char *s)
{
    return (char *)(s ? s : "");
}

void jl_text_copy(char *dst, size_t cap, const char *src, size_t len)
{
    assert(len <= cap);
    memset(dst, 0, cap + 1);
    if (len > 0)
        memcpy(dst, src, len);
}

/* Text goes into events for good, read by other languages' protobuf libraries, which refuse
 * strings that are not UTF-8: well-formed, and with no control characters (ids, names and
 * reasons are one line). */
static bool check_chars(jl_decision *out, const char *field, const char *s, size_t n)
{
    if (!jl_utf8_valid(s, n)) {
        jl_decision_reject(out, JL_CODE_INVALID, "%s is not valid UTF-8", field);
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        /* C0 and DEL; C1 (U+0080..U+009F: UTF-8 C2 80..C2 9F, among them NEL, a line break,
         * and CSI, which starts a terminal's escape sequence); U+2028 and U+2029 (E2 80 A8/A9),
         * the line and paragraph separators. */
        bool c1 = c == 0xc2 && i + 1 < n && (unsigned char)s[i + 1] >= 0x80 &&
                  (unsigned char)s[i + 1] <= 0x9f;
        bool sep = c == 0xe2 && i + 2 < n && (unsigned char)s[i + 1] == 0x80 &&
                   ((unsigned char)s[i + 2] == 0xa8 || (unsigned char)s[i + 2] == 0xa9);
        if (c < 0x20 || c == 0x7f || c1 || sep) {
            jl_decision_reject(out, JL_CODE_INVALID,
                               "%s holds a control character (byte 0x%02x at %zu)", field, c, i);
            return false;
        }
    }
    return true;
}

bool jl_check_text(jl_decision *out, const char *field, const char *s, size_t cap)
{
    size_t n = jl_text_len(s, cap);
    if (n == 0) {
        jl_decision_reject(out, JL_CODE_INVALID, "%s must not be empty", field);
        return false;
    }
    return jl_check_optional_text(out, field, s, cap);
}

bool jl_check_optional_text(jl_decision *out, const char *field, const char *s, size_t cap)
{
    size_t n = jl_text_len(s, cap);
    if (n > cap) {
        jl_decision_reject(out, JL_CODE_INVALID, "%s is longer than %zu bytes", field, cap);
        return false;
    }
    return check_chars(out, field, s, n);
}
