#include "jetledger/log.h"

#include <ctype.h>
#include <pthread.h>
#include <stdarg.h>
#include <string.h>
#include <time.h>

#include "jetledger/json.h"

static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;
static FILE *log_sink = NULL;
static jl_log_level log_min = JL_LOG_OFF;
static char log_service[160] = ""; /* already escaped for JSON */

void jl_log_open(FILE *sink, jl_log_level level, const char *service)
{
    pthread_mutex_lock(&log_mu);
    log_sink = sink;
    log_min = sink != NULL ? level : JL_LOG_OFF;
    char name[64];
    snprintf(name, sizeof(name), "%s", service != NULL ? service : "");
    jl_log_str(log_service, sizeof(log_service), name);
    pthread_mutex_unlock(&log_mu);
}

jl_status jl_log_level_parse(jl_log_level *out_level, const char *name)
{
    static const char *const names[] = {"debug", "info", "warn", "error"};
    for (int i = 0; i < 4; i++) {
        if (strcmp(name, names[i]) == 0) {
            *out_level = (jl_log_level)i;
            return JL_OK;
        }
    }
    return JL_ERR_INVALID;
}

int jl_log_enabled(jl_log_level level)
{
    return level >= log_min && log_min != JL_LOG_OFF;
}

const char *jl_log_str(char *out, size_t n, const char *s)
{
    size_t o = 0;
    if (n == 0)
        return out;
    for (const unsigned char *p = (const unsigned char *)(s ? s : ""); *p && o + 7 < n; p++) {
        if (*p == '"' || *p == '\\') {
            out[o++] = '\\';
            out[o++] = (char)*p;
        } else if (*p == '\n') {
            out[o++] = '\\';
            out[o++] = 'n';
        } else if (*p < 0x20) {
            o += (size_t)snprintf(out + o, n - o, "\\u%04x", *p);
        } else if (*p < 0x80) {
            out[o++] = (char)*p;
        } else {
            /* A whole UTF-8 sequence or, for a byte that starts none, U+FFFD: the line stays
             * valid JSON text, and a cut never splits a character. */
            size_t len = jl_utf8_seq_len(p, strnlen((const char *)p, 4));
            if (len == 0) {
                memcpy(out + o, "\\ufffd", 6);
                o += 6;
            } else {
                memcpy(out + o, p, len);
                o += len;
                p += len - 1;
            }
        }
    }
    out[o] = 0;
    return out;
}

/* ---- a check of the fields: JSON members, as the callers mean to write them ---- */

typedef struct scan {
    const unsigned char *s, *end;
} scan;

static bool scan_value(scan *c, int depth);

static void skip_ws(scan *c)
{
    while (c->s < c->end && (*c->s == ' ' || *c->s == '\t' || *c->s == '\n' || *c->s == '\r'))
        c->s++;
}

static bool scan_digits(scan *c)
{
    const unsigned char *start = c->s;
    while (c->s < c->end && *c->s >= '0' && *c->s <= '9')
        c->s++;
    return c->s > start;
}

/* -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)? */
static bool scan_number(scan *c)
{
    if (c->s < c->end && *c->s == '-')
        c->s++;
    if (c->s < c->end && *c->s == '0')
        c->s++;
    else if (!scan_digits(c))
        return false;
    if (c->s < c->end && *c->s == '.') {
        c->s++;
        if (!scan_digits(c))
            return false;
    }
    if (c->s < c->end && (*c->s == 'e' || *c->s == 'E')) {
        c->s++;
        if (c->s < c->end && (*c->s == '+' || *c->s == '-'))
            c->s++;
        if (!scan_digits(c))
            return false;
    }
    return true;
}

static bool scan_string(scan *c)
{
    if (c->s >= c->end || *c->s != '"')
        return false;
    for (c->s++; c->s < c->end; c->s++) {
        if (*c->s == '"') {
            c->s++;
            return true;
        }
        if (*c->s < 0x20)
            return false;
        if (*c->s == '\\') {
            if (++c->s >= c->end || strchr("\"\\/bfnrtu", *c->s) == NULL || *c->s == 0)
                return false;
            for (int i = 0; *c->s == 'u' && i < 4; i++)
                if (c->s + 1 + i >= c->end || !isxdigit(c->s[1 + i]))
                    return false;
            c->s += *c->s == 'u' ? 4 : 0;
        } else if (*c->s >= 0x80) {
            size_t len = jl_utf8_seq_len(c->s, (size_t)(c->end - c->s));
            if (len == 0)
                return false;
            c->s += len - 1;
        }
    }
    return false;
}

/* Members "k":v,... up to @p close (0: the end of the text). */
static bool scan_members(scan *c, int depth, char close)
{
    for (bool first = true;; first = false) {
        skip_ws(c);
        if (close != 0 && c->s < c->end && *c->s == close && first)
            return true;
        if (!scan_string(c))
            return false;
        skip_ws(c);
        if (c->s >= c->end || *c->s++ != ':' || !scan_value(c, depth))
            return false;
        skip_ws(c);
        if (c->s < c->end && *c->s == ',') {
            c->s++;
            continue;
        }
        return close == 0 ? c->s == c->end : c->s < c->end && *c->s == close;
    }
}

static bool scan_value(scan *c, int depth)
{
    skip_ws(c);
    if (c->s >= c->end || depth > 16)
        return false;
    unsigned char k = *c->s;
    if (k == '"')
        return scan_string(c);
    if (k == '{' || k == '[') {
        c->s++;
        bool ok = true;
        if (k == '{') {
            ok = scan_members(c, depth + 1, '}');
        } else {
            skip_ws(c);
            while (c->s < c->end && *c->s != ']' && (ok = scan_value(c, depth + 1))) {
                skip_ws(c);
                if (c->s >= c->end || *c->s != ',')
                    break;
                c->s++;
                skip_ws(c);
                ok = c->s < c->end && *c->s != ']'; /* no trailing comma */
                if (!ok)
                    break;
            }
        }
        if (!ok || c->s >= c->end || *c->s != (k == '{' ? '}' : ']'))
            return false;
        c->s++;
        return true;
    }
    static const char *const literals[] = {"true", "false", "null"};
    for (int i = 0; i < 3; i++) {
        size_t n = strlen(literals[i]);
        if ((size_t)(c->end - c->s) >= n && memcmp(c->s, literals[i], n) == 0) {
            c->s += n;
            return true;
        }
    }
    return scan_number(c);
}

/* Whether @p s (@p n bytes) is JSON object members: a caller's string value not escaped (a
 * path with a '"', an error text) would make the whole line something a log shipper drops. */
static bool members_valid(const char *s, size_t n)
{
    scan c = {(const unsigned char *)s, (const unsigned char *)s + n};
    return scan_members(&c, 0, 0);
}

void jl_log(jl_log_level level, const char *msg, const char *fields_fmt, ...)
{
    static const char *const names[] = {"debug", "info", "warn", "error"};
    if (!jl_log_enabled(level) || level >= JL_LOG_OFF)
        return;
    char line[4096];
    char esc[JL_LOG_STR_MAX];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(
        line, sizeof(line),
        "{\"ts\":\"%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ\",\"level\":\"%s\",\"svc\":\"%s\","
        "\"msg\":\"%s\"",
        tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
        ts.tv_nsec / 1000000, names[level], log_service, jl_log_str(esc, sizeof(esc), msg));
    if (n < 0 || (size_t)n >= sizeof(line) - 32)
        return; /* cannot happen: the message is escaped into JL_LOG_STR_MAX bytes */
    if (fields_fmt != NULL) {
        /* Fields that do not fit whole are left out, not cut: a cut one is not JSON (an open
         * string, a dangling escape), and log shippers drop or choke on the line. */
        char fields[sizeof(line)];
        va_list ap;
        va_start(ap, fields_fmt);
        int m = vsnprintf(fields, sizeof(fields), fields_fmt, ap);
        va_end(ap);
        if (m >= 0 && (size_t)n + 1 + (size_t)m + 2 <= sizeof(line) &&
            !members_valid(fields, (size_t)m)) {
            /* Kept, as one string: what the fields said still reaches the log (half a line
             * at most: the start of the line is at most JL_LOG_STR_MAX + 256 bytes). */
            char shown[sizeof(line) / 2];
            n += snprintf(line + n, sizeof(line) - (size_t)n, ",\"fields_invalid\":\"%s\"",
                          jl_log_str(shown, sizeof(shown), fields));
        } else if (m >= 0 && (size_t)n + 1 + (size_t)m + 2 <= sizeof(line)) {
            line[n++] = ',';
            memcpy(line + n, fields, (size_t)m);
            n += m;
        } else {
            n += snprintf(line + n, sizeof(line) - (size_t)n, ",\"fields_truncated\":true");
        }
    }
    line[n++] = '}';
    line[n++] = '\n';
    pthread_mutex_lock(&log_mu);
    if (log_sink != NULL) {
        fwrite(line, 1, (size_t)n, log_sink);
        fflush(log_sink);
    }
    pthread_mutex_unlock(&log_mu);
}
