#include "jetledger/json.h"

#include <assert.h>
#include <errno.h>
#include <float.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* strtoll/strtoull are the exact parsers for 64-bit fields; they must cover int64_t exactly. */
_Static_assert(LLONG_MAX == INT64_MAX && ULLONG_MAX == UINT64_MAX, "long long is not 64 bits");

/* ---- shared helpers ---- */

/*
 * Length of the well-formed UTF-8 sequence at s (n >= 1 bytes available): 1 to 4, or 0 when the
 * bytes are not one. Follows Unicode table 3-7, so overlong forms, surrogates (ED A0..BF) and code
 * points past U+10FFFF are all rejected: what we accept and what we write must be valid UTF-8.
 */
size_t jl_utf8_seq_len(const uint8_t *s, size_t n)
{
    uint8_t c = s[0];
    uint8_t lo = 0x80, hi = 0xBF;
    size_t need = 0;

    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF) {
        need = 2;
    } else if (c == 0xE0) {
        need = 3;
        lo = 0xA0;
    } else if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF) {
        need = 3;
    } else if (c == 0xED) {
        need = 3;
        hi = 0x9F;
    } else if (c == 0xF0) {
        need = 4;
        lo = 0x90;
    } else if (c >= 0xF1 && c <= 0xF3) {
        need = 4;
    } else if (c == 0xF4) {
        need = 4;
        hi = 0x8F;
    } else {
        return 0;
    }
    if (n < need || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < need; i++) {
        if (s[i] < 0x80 || s[i] > 0xBF)
            return 0;
    }
    return need;
}

bool jl_utf8_valid(const char *s, size_t len)
{
    const uint8_t *u = (const uint8_t *)s;
    for (size_t i = 0, n = 0; i < len; i += n) {
        n = jl_utf8_seq_len(u + i, len - i);
        if (n == 0)
            return false;
    }
    return true;
}

void jl_utf8_trim_end(char *s)
{
    const uint8_t *u = (const uint8_t *)s;
    size_t n = strlen(s), j = n;
    while (j > 0 && n - j < 3 && (u[j - 1] & 0xC0) == 0x80)
        j--; /* back over continuation bytes to the last sequence's first byte */
    if (j > 0 && u[j - 1] >= 0xC0)
        j--;
    else if (j == n)
        return; /* ends in ASCII */
    if (jl_utf8_seq_len(u + j, n - j) != n - j)
        s[j] = '\0';
}

void jl_utf8_scrub(char *s)
{
    jl_utf8_trim_end(s);
    uint8_t *u = (uint8_t *)s;
    for (size_t i = 0, n = strlen(s); i < n;) {
        size_t k = jl_utf8_seq_len(u + i, n - i);
        if (k == 0) {
            u[i] = '?';
            k = 1;
        }
        i += k;
    }
}

static bool is_64bit(ProtobufCType t)
{
    return t == PROTOBUF_C_TYPE_INT64 || t == PROTOBUF_C_TYPE_SINT64 ||
           t == PROTOBUF_C_TYPE_SFIXED64 || t == PROTOBUF_C_TYPE_UINT64 ||
           t == PROTOBUF_C_TYPE_FIXED64;
}

static bool is_signed_int(ProtobufCType t)
{
    return t == PROTOBUF_C_TYPE_INT32 || t == PROTOBUF_C_TYPE_SINT32 ||
           t == PROTOBUF_C_TYPE_SFIXED32 || t == PROTOBUF_C_TYPE_INT64 ||
           t == PROTOBUF_C_TYPE_SINT64 || t == PROTOBUF_C_TYPE_SFIXED64 ||
           t == PROTOBUF_C_TYPE_ENUM;
}

static const char *type_name(ProtobufCType t)
{
    switch (t) {
    case PROTOBUF_C_TYPE_INT32:
        return "int32";
    case PROTOBUF_C_TYPE_SINT32:
        return "sint32";
    case PROTOBUF_C_TYPE_SFIXED32:
        return "sfixed32";
    case PROTOBUF_C_TYPE_INT64:
        return "int64";
    case PROTOBUF_C_TYPE_SINT64:
        return "sint64";
    case PROTOBUF_C_TYPE_SFIXED64:
        return "sfixed64";
    case PROTOBUF_C_TYPE_UINT32:
        return "uint32";
    case PROTOBUF_C_TYPE_FIXED32:
        return "fixed32";
    case PROTOBUF_C_TYPE_UINT64:
        return "uint64";
    case PROTOBUF_C_TYPE_FIXED64:
        return "fixed64";
    case PROTOBUF_C_TYPE_FLOAT:
        return "float";
    case PROTOBUF_C_TYPE_DOUBLE:
        return "double";
    case PROTOBUF_C_TYPE_BOOL:
        return "bool";
    case PROTOBUF_C_TYPE_ENUM:
        return "enum";
    case PROTOBUF_C_TYPE_STRING:
        return "string";
    case PROTOBUF_C_TYPE_BYTES:
        return "bytes";
    case PROTOBUF_C_TYPE_MESSAGE:
        return "message";
    }
    return "?";
}

/* Size of one element of a repeated field's array, as protobuf-c lays it out. */
static size_t elem_size(ProtobufCType t)
{
    switch (t) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
    case PROTOBUF_C_TYPE_ENUM:
        return sizeof(int32_t);
    case PROTOBUF_C_TYPE_FLOAT:
        return sizeof(float);
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        return sizeof(int64_t);
    case PROTOBUF_C_TYPE_DOUBLE:
        return sizeof(double);
    case PROTOBUF_C_TYPE_BOOL:
        return sizeof(protobuf_c_boolean);
    case PROTOBUF_C_TYPE_STRING:
        return sizeof(char *);
    case PROTOBUF_C_TYPE_BYTES:
        return sizeof(ProtobufCBinaryData);
    case PROTOBUF_C_TYPE_MESSAGE:
        return sizeof(ProtobufCMessage *);
    }
    return 0;
}

/* ---- protobuf -> JSON ---- */

jl_status jl_json_add_string(jl_buf *out, const char *s, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    /* Each invalid byte becomes one U+FFFD: lossy, but the output is always valid UTF-8. */
    static const char replacement[] = "\xEF\xBF\xBD";
    const uint8_t *p = (const uint8_t *)(s != NULL ? s : "");
    size_t run = 0; /* first byte not yet copied to out */
    size_t i = 0;

    assert(out != NULL && (s != NULL || len == 0));
    size_t start = out->len;
    jl_status st = jl_buf_add(out, "\"", 1);
    while (st == JL_OK && i < len) {
        uint8_t c = p[i];
        char esc[7];
        const char *rep = esc;
        size_t replen = 2;
        size_t used = 1; /* bytes of the input that rep stands for */

        if (c >= 0x20 && c < 0x7F && c != '"' && c != '\\') {
            i++;
            continue;
        }
        if (c >= 0x80) {
            size_t n = jl_utf8_seq_len(p + i, len - i);
            if (n == 2 && c == 0xC2 && p[i + 1] < 0xA0) {
                /* A C1 control (U+0080..U+009F), escaped as DEL and the C0 ones are: printed
                 * raw, a terminal may act on it (0x9B starts an escape sequence). */
                memcpy(esc, "\\u00", 4);
                esc[4] = hex[p[i + 1] >> 4];
                esc[5] = hex[p[i + 1] & 0xF];
                replen = 6;
                used = 2;
            } else if (n > 0) {
                i += n;
                continue;
            } else {
                rep = replacement;
                replen = sizeof(replacement) - 1;
            }
        } else {
            esc[0] = '\\';
            switch (c) {
            case '"':
                esc[1] = '"';
                break;
            case '\\':
                esc[1] = '\\';
                break;
            case '\b':
                esc[1] = 'b';
                break;
            case '\f':
                esc[1] = 'f';
                break;
            case '\n':
                esc[1] = 'n';
                break;
            case '\r':
                esc[1] = 'r';
                break;
            case '\t':
                esc[1] = 't';
                break;
            default:
                memcpy(esc + 1, "u00", 3);
                esc[4] = hex[c >> 4];
                esc[5] = hex[c & 0xF];
                replen = 6;
                break;
            }
        }
        st = jl_buf_add(out, p + run, i - run);
        if (st == JL_OK)
            st = jl_buf_add(out, rep, replen);
        i += used;
        run = i;
    }
    if (st == JL_OK)
        st = jl_buf_add(out, p + run, i - run);
    if (st == JL_OK)
        st = jl_buf_add(out, "\"", 1);
    /* Never leave half a string literal behind: the caller's JSON would no longer parse. */
    if (st != JL_OK && out->data != NULL) {
        out->len = start;
        out->data[start] = 0;
    }
    return st;
}

jl_status jl_json_add_base64(jl_buf *out, const uint8_t *data, size_t len)
{
    static const char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    uint8_t *dst = NULL;

    assert(out != NULL && (data != NULL || len == 0));
    /* Sized up front so that 4/3 growth cannot overflow size_t; the buffer's cap does the rest. */
    if (len / 3 > (SIZE_MAX - 8) / 4)
        return JL_ERR_TOO_LARGE;
    size_t n = (len + 2) / 3 * 4 + 2;
    jl_status st = jl_buf_reserve(out, n, &dst);
    if (st == JL_OK) {
        uint8_t *o = dst;
        size_t i = 0;
        *o++ = '"';
        for (; i + 3 <= len; i += 3) {
            uint32_t v = (uint32_t)data[i] << 16 | (uint32_t)data[i + 1] << 8 | data[i + 2];
            *o++ = (uint8_t)alphabet[v >> 18];
            *o++ = (uint8_t)alphabet[(v >> 12) & 63];
            *o++ = (uint8_t)alphabet[(v >> 6) & 63];
            *o++ = (uint8_t)alphabet[v & 63];
        }
        if (len - i == 1) {
            uint32_t v = (uint32_t)data[i] << 16;
            *o++ = (uint8_t)alphabet[v >> 18];
            *o++ = (uint8_t)alphabet[(v >> 12) & 63];
            *o++ = '=';
            *o++ = '=';
        } else if (len - i == 2) {
            uint32_t v = (uint32_t)data[i] << 16 | (uint32_t)data[i + 1] << 8;
            *o++ = (uint8_t)alphabet[v >> 18];
            *o++ = (uint8_t)alphabet[(v >> 12) & 63];
            *o++ = (uint8_t)alphabet[(v >> 6) & 63];
            *o++ = '=';
        }
        *o++ = '"';
        assert((size_t)(o - dst) == n);
        jl_buf_commit(out, n);
    }
    return st;
}

static jl_status write_message(jl_buf *out, const ProtobufCMessage *msg, unsigned depth);

/*
 * Non-finite values have no JSON number form; they are written as the strings the proto3 JSON
 * mapping uses, which jl_json_to_pb() reads back.
 */
static jl_status write_floating(jl_buf *out, double d, int digits)
{
    if (isnan(d))
        return jl_buf_adds(out, "\"NaN\"");
    if (isinf(d))
        return jl_buf_adds(out, d > 0 ? "\"Infinity\"" : "\"-Infinity\"");
    return jl_buf_addf(out, "%.*g", digits, d);
}

/* One value of field f stored at member (a single field or one element of a repeated one). */
static jl_status write_value(jl_buf *out, const ProtobufCFieldDescriptor *f, const void *member,
                             unsigned depth)
{
    switch (f->type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
        return jl_buf_addf(out, "%" PRId32, *(const int32_t *)member);
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
        return jl_buf_addf(out, "%" PRIu32, *(const uint32_t *)member);
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
        return jl_buf_addf(out, "%" PRId64, *(const int64_t *)member);
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        return jl_buf_addf(out, "%" PRIu64, *(const uint64_t *)member);
    case PROTOBUF_C_TYPE_FLOAT:
        /* FLT_DECIMAL_DIG (9) digits read back to the same float; 17 would only add noise. */
        return write_floating(out, *(const float *)member, 9);
    case PROTOBUF_C_TYPE_DOUBLE:
        return write_floating(out, *(const double *)member, 17);
    case PROTOBUF_C_TYPE_BOOL:
        return jl_buf_adds(out, *(const protobuf_c_boolean *)member ? "true" : "false");
    case PROTOBUF_C_TYPE_ENUM: {
        int v = *(const int *)member;
        /* proto3 enums are open: a number this build does not know is kept as a number. */
        const ProtobufCEnumValue *ev = protobuf_c_enum_descriptor_get_value(f->descriptor, v);
        if (ev == NULL)
            return jl_buf_addf(out, "%d", v);
        return jl_json_add_string(out, ev->name, strlen(ev->name));
    }
    case PROTOBUF_C_TYPE_STRING: {
        const char *s = *(char *const *)member;
        /* protobuf-c packs a NULL string as "", so JSON does the same. */
        return jl_json_add_string(out, s, s != NULL ? strlen(s) : 0);
    }
    case PROTOBUF_C_TYPE_BYTES: {
        const ProtobufCBinaryData *bd = member;
        return jl_json_add_base64(out, bd->data, bd->data != NULL ? bd->len : 0);
    }
    case PROTOBUF_C_TYPE_MESSAGE: {
        const ProtobufCMessage *sub = *(ProtobufCMessage *const *)member;
        /* A NULL element of a repeated field is a caller bug; protobuf-c packs it as empty. */
        assert(sub != NULL || f->label != PROTOBUF_C_LABEL_REPEATED);
        if (sub == NULL)
            return jl_buf_adds(out, "{}");
        return write_message(out, sub, depth + 1);
    }
    }
    return JL_ERR_INTERNAL;
}

/*
 * Whether field f of msg is written. Mirrors protobuf_c_message_pack()'s rules, so that a message
 * and the one read back from its JSON pack to the same bytes, with one deliberate difference: a
 * selected oneof member is always written (even "" or 0), because which member is set is data.
 */
static bool field_is_written(const ProtobufCMessage *msg, const ProtobufCFieldDescriptor *f)
{
    const char *base = (const char *)msg;
    const void *member = base + f->offset;
    bool is_ptr = f->type == PROTOBUF_C_TYPE_STRING || f->type == PROTOBUF_C_TYPE_MESSAGE;

    if (f->label == PROTOBUF_C_LABEL_REPEATED)
        return *(const size_t *)(base + f->quantifier_offset) > 0;
    if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
        if (*(const uint32_t *)(base + f->quantifier_offset) != f->id)
            return false;
        return !is_ptr || *(const void *const *)member != NULL;
    }
    if (f->label == PROTOBUF_C_LABEL_REQUIRED)
        return true;
    if (f->label == PROTOBUF_C_LABEL_OPTIONAL) {
        if (is_ptr) {
            const void *p = *(const void *const *)member;
            return p != NULL && p != f->default_value;
        }
        return *(const protobuf_c_boolean *)(base + f->quantifier_offset) != 0;
    }
    /* proto3 implicit presence: written unless equal to the type's default. */
    switch (f->type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
    case PROTOBUF_C_TYPE_ENUM:
        return *(const uint32_t *)member != 0;
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        return *(const uint64_t *)member != 0;
    case PROTOBUF_C_TYPE_FLOAT:
        return *(const float *)member != 0;
    case PROTOBUF_C_TYPE_DOUBLE:
        return *(const double *)member != 0;
    case PROTOBUF_C_TYPE_BOOL:
        return *(const protobuf_c_boolean *)member != 0;
    case PROTOBUF_C_TYPE_STRING: {
        const char *s = *(char *const *)member;
        return s != NULL && s[0] != '\0';
    }
    case PROTOBUF_C_TYPE_BYTES:
        return ((const ProtobufCBinaryData *)member)->len > 0;
    case PROTOBUF_C_TYPE_MESSAGE:
        return *(ProtobufCMessage *const *)member != NULL;
    }
    return false;
}

static jl_status write_repeated(jl_buf *out, const ProtobufCMessage *msg,
                                const ProtobufCFieldDescriptor *f, unsigned depth)
{
    const char *base = (const char *)msg;
    size_t n = *(const size_t *)(base + f->quantifier_offset);
    const char *arr = *(const char *const *)(base + f->offset);
    size_t esize = elem_size(f->type);

    /* The array is one more level of nesting, exactly as the parser counts it. */
    if (depth + 1 > JL_JSON_MAX_DEPTH)
        return JL_ERR_TOO_LARGE;
    jl_status st = jl_buf_add(out, "[", 1);
    for (size_t i = 0; st == JL_OK && i < n; i++) {
        if (i > 0)
            st = jl_buf_add(out, ",", 1);
        if (st == JL_OK)
            st = write_value(out, f, arr + i * esize, depth + 1);
    }
    if (st == JL_OK)
        st = jl_buf_add(out, "]", 1);
    return st;
}

/* depth is the nesting level of msg's own object: 1 for the top level. */
static jl_status write_message(jl_buf *out, const ProtobufCMessage *msg, unsigned depth)
{
    const ProtobufCMessageDescriptor *d = msg->descriptor;
    bool first = true;

    assert(d != NULL && d->magic == PROTOBUF_C__MESSAGE_DESCRIPTOR_MAGIC);
    /* Never write what jl_json_to_pb() would refuse to read back. */
    if (depth > JL_JSON_MAX_DEPTH)
        return JL_ERR_TOO_LARGE;
    jl_status st = jl_buf_add(out, "{", 1);
    for (unsigned i = 0; st == JL_OK && i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        if (!field_is_written(msg, f))
            continue;
        if (!first)
            st = jl_buf_add(out, ",", 1);
        first = false;
        if (st == JL_OK)
            st = jl_json_add_string(out, f->name, strlen(f->name));
        if (st == JL_OK)
            st = jl_buf_add(out, ":", 1);
        if (st == JL_OK) {
            if (f->label == PROTOBUF_C_LABEL_REPEATED)
                st = write_repeated(out, msg, f, depth);
            else
                st = write_value(out, f, (const char *)msg + f->offset, depth);
        }
    }
    if (st == JL_OK)
        st = jl_buf_add(out, "}", 1);
    return st;
}

jl_status jl_pb_to_json(jl_buf *out, const ProtobufCMessage *msg)
{
    assert(out != NULL && msg != NULL);
    size_t start = out->len;
    jl_status st = write_message(out, msg, 1);
    /* Roll back a partial object so a failed call never leaves half a line in the caller's buffer.
     */
    if (st != JL_OK && out->data != NULL) {
        out->len = start;
        out->data[start] = 0;
    }
    return st;
}

/* ---- JSON -> protobuf ---- */

/* One step of the path to the value being parsed, for error messages. */
typedef struct path_frame {
    const char *name; /* field name, or NULL for an array element */
    size_t index;     /* array index when name is NULL */
} path_frame;

/* Every frame is pushed inside an object or array, so depth bounds the path's length. */
#define MAX_FRAMES (JL_JSON_MAX_DEPTH + 1)

typedef struct parser {
    const uint8_t *s;
    size_t len;
    size_t pos;
    unsigned depth; /* open objects and arrays */
    path_frame path[MAX_FRAMES];
    unsigned npath;
    jl_buf scratch; /* decoded keys, enum names and base64 text: reused, never handed out */
    char *err;
    size_t errlen;
} parser;

/* A parsed value, before it is stored into a field or an array element. */
typedef union scalar {
    int32_t i32;
    uint32_t u32;
    int64_t i64;
    uint64_t u64;
    float f;
    double d;
    protobuf_c_boolean b;
    int e;
    char *str;
    ProtobufCBinaryData bytes;
    ProtobufCMessage *msg;
} scalar;

/* Append printf output at *used in dst[n], truncating silently: error text is best effort. */
static void append(char *dst, size_t n, size_t *used, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void append(char *dst, size_t n, size_t *used, const char *fmt, ...)
{
    if (*used + 1 >= n)
        return;
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(dst + *used, n - *used, fmt, ap);
    va_end(ap);
    if (k > 0)
        *used = (size_t)k < n - *used ? *used + (size_t)k : n - 1;
}

/*
 * Render the current path ("orders[2].item_count"), then key when given: an input key of at most
 * 64 bytes with control characters and quotes masked, as it comes from untrusted input.
 */
static void render_path(const parser *p, const char *key, size_t klen, char *dst, size_t n)
{
    size_t used = 0;
    dst[0] = '\0';
    for (unsigned i = 0; i < p->npath; i++) {
        const path_frame *fr = &p->path[i];
        if (fr->name != NULL)
            append(dst, n, &used, "%s%s", i > 0 ? "." : "", fr->name);
        else
            append(dst, n, &used, "[%zu]", fr->index);
    }
    if (key != NULL) {
        char safe[65];
        size_t k = klen < 64 ? klen : 64;
        /* Cut on a character boundary: the key is valid UTF-8 and the message should stay so. */
        while (k < klen && k > 0 && ((uint8_t)key[k] & 0xC0) == 0x80)
            k--;
        for (size_t i = 0; i < k; i++) {
            uint8_t c = (uint8_t)key[i];
            safe[i] = (c < 0x20 || c == 0x7F || c == '\'') ? '?' : (char)c;
        }
        safe[k] = '\0';
        append(dst, n, &used, "%s%s%s", used > 0 ? "." : "", safe, k < klen ? "..." : "");
    }
}

static jl_status failv(parser *p, jl_status st, bool with_path, const char *fmt, va_list ap)
{
    if (p->err == NULL || p->errlen == 0)
        return st;
    char msg[256];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    jl_utf8_trim_end(msg);
    if (with_path && p->npath > 0) {
        char path[256];
        render_path(p, NULL, 0, path, sizeof(path));
        snprintf(p->err, p->errlen, "field '%s': %s", path, msg);
    } else {
        snprintf(p->err, p->errlen, "%s", msg);
    }
    jl_utf8_trim_end(p->err); /* an error message is text, whatever was cut */
    return st;
}

/* Record the reason for a failure, prefixed with the path of the field being parsed. */
static jl_status fail(parser *p, jl_status st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static jl_status fail(parser *p, jl_status st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    st = failv(p, st, true, fmt, ap);
    va_end(ap);
    return st;
}

/* As fail(), for messages that place the path themselves. */
static jl_status fail_plain(parser *p, jl_status st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static jl_status fail_plain(parser *p, jl_status st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    st = failv(p, st, false, fmt, ap);
    va_end(ap);
    return st;
}

static jl_status syntax(parser *p, size_t at, const char *what)
{
    return fail(p, JL_ERR_DECODE, "malformed JSON at byte %zu: %s", at, what);
}

static jl_status nomem(parser *p)
{
    return fail(p, JL_ERR_NOMEM, "out of memory");
}

static void skip_ws(parser *p)
{
    while (p->pos < p->len) {
        uint8_t c = p->s[p->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r')
            break;
        p->pos++;
    }
}

/* The next significant byte, or -1 at the end of the input. */
static int peek(parser *p)
{
    skip_ws(p);
    return p->pos < p->len ? p->s[p->pos] : -1;
}

static bool at_literal(const parser *p, const char *lit)
{
    size_t n = strlen(lit);
    return p->len - p->pos >= n && memcmp(p->s + p->pos, lit, n) == 0;
}

/* Consume '{' or '[' and count a level of nesting. */
static jl_status enter(parser *p, char open)
{
    if (peek(p) != open)
        return syntax(p, p->pos, open == '{' ? "expected '{'" : "expected '['");
    if (p->depth + 1 > JL_JSON_MAX_DEPTH)
        return fail(p, JL_ERR_TOO_LARGE, "nesting deeper than %d levels", JL_JSON_MAX_DEPTH);
    p->depth++;
    p->pos++;
    return JL_OK;
}

static void push_name(parser *p, const char *name)
{
    assert(p->npath < MAX_FRAMES);
    p->path[p->npath].name = name;
    p->path[p->npath].index = 0;
    p->npath++;
}

static void push_index(parser *p, size_t index)
{
    assert(p->npath < MAX_FRAMES);
    p->path[p->npath].name = NULL;
    p->path[p->npath].index = index;
    p->npath++;
}

static void pop(parser *p)
{
    assert(p->npath > 0);
    p->npath--;
}

/* The next value does not have the kind the field needs: name what was found instead. */
static jl_status wrong_kind(parser *p, const char *expected)
{
    int c = peek(p);
    const char *got = NULL;

    if (c == '"')
        got = "a string";
    else if (c == '{')
        got = "an object";
    else if (c == '[')
        got = "an array";
    else if (c == '-' || (c >= '0' && c <= '9'))
        got = "a number";
    else if (at_literal(p, "true") || at_literal(p, "false"))
        got = "a boolean";
    else if (at_literal(p, "null"))
        got = "null";
    if (got == NULL)
        return syntax(p, p->pos, c < 0 ? "unexpected end of input" : "expected a value");
    return fail(p, JL_ERR_DECODE, "expected %s, got %s", expected, got);
}

static bool hex4(const uint8_t *s, size_t len, size_t i, uint32_t *out)
{
    uint32_t v = 0;
    if (len < 4 || i > len - 4)
        return false;
    for (size_t k = 0; k < 4; k++) {
        uint8_t c = s[i + k];
        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= (uint32_t)(c - '0');
        else if (c >= 'a' && c <= 'f')
            v |= (uint32_t)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            v |= (uint32_t)(c - 'A' + 10);
        else
            return false;
    }
    *out = v;
    return true;
}

/*
 * Check the string literal at p->pos and consume it; out_raw/out_n give its body, still escaped.
 * Everything that can be wrong with a string is found here, so decode_string() cannot fail.
 */
static jl_status scan_string(parser *p, const uint8_t **out_raw, size_t *out_n)
{
    const uint8_t *s = p->s;
    size_t i = p->pos + 1;

    assert(p->s[p->pos] == '"');
    for (;;) {
        if (i >= p->len)
            return syntax(p, p->pos, "unterminated string");
        uint8_t c = s[i];
        if (c == '"')
            break;
        if (c < 0x20)
            return syntax(p, i, "control character in string (must be escaped)");
        if (c >= 0x80) {
            size_t n = jl_utf8_seq_len(s + i, p->len - i);
            if (n == 0)
                return syntax(p, i, "invalid UTF-8 in string");
            i += n;
            continue;
        }
        if (c != '\\') {
            i++;
            continue;
        }
        if (i + 1 >= p->len)
            return syntax(p, p->pos, "unterminated string");
        c = s[i + 1];
        if (c != 'u') {
            if (c == '\0' || strchr("\"\\/bfnrt", c) == NULL)
                return syntax(p, i, "invalid escape in string");
            i += 2;
            continue;
        }
        uint32_t u = 0, lo = 0;
        if (!hex4(s, p->len, i + 2, &u))
            return syntax(p, i, "invalid \\u escape");
        if (u >= 0xDC00 && u <= 0xDFFF)
            return syntax(p, i, "unpaired surrogate in \\u escape");
        if (u >= 0xD800 && u <= 0xDBFF) {
            /* A high surrogate must be followed by its low half: UTF-8 cannot hold a lone one. */
            if (i + 7 >= p->len || s[i + 6] != '\\' || s[i + 7] != 'u' ||
                !hex4(s, p->len, i + 8, &lo) || lo < 0xDC00 || lo > 0xDFFF)
                return syntax(p, i, "unpaired surrogate in \\u escape");
            i += 6;
        }
        i += 6;
    }
    *out_raw = s + p->pos + 1;
    *out_n = i - (p->pos + 1);
    p->pos = i + 1;
    return JL_OK;
}

/* Decode a body checked by scan_string() into dst (n + 1 bytes); returns the decoded length. */
static size_t decode_string(const uint8_t *raw, size_t n, char *dst)
{
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        if (raw[i] != '\\') {
            dst[o++] = (char)raw[i++];
            continue;
        }
        uint8_t c = raw[i + 1];
        uint32_t u = 0, lo = 0;
        i += 2;
        switch (c) {
        case 'b':
            dst[o++] = '\b';
            continue;
        case 'f':
            dst[o++] = '\f';
            continue;
        case 'n':
            dst[o++] = '\n';
            continue;
        case 'r':
            dst[o++] = '\r';
            continue;
        case 't':
            dst[o++] = '\t';
            continue;
        case 'u':
            break;
        default: /* '"', '\\' and '/' stand for themselves */
            dst[o++] = (char)c;
            continue;
        }
        hex4(raw, n, i, &u);
        i += 4;
        if (u >= 0xD800 && u <= 0xDBFF) {
            hex4(raw, n, i + 2, &lo);
            i += 6;
            u = 0x10000 + ((u - 0xD800) << 10) + (lo - 0xDC00);
        }
        if (u < 0x80) {
            dst[o++] = (char)u;
        } else if (u < 0x800) {
            dst[o++] = (char)(0xC0 | (u >> 6));
            dst[o++] = (char)(0x80 | (u & 0x3F));
        } else if (u < 0x10000) {
            dst[o++] = (char)(0xE0 | (u >> 12));
            dst[o++] = (char)(0x80 | ((u >> 6) & 0x3F));
            dst[o++] = (char)(0x80 | (u & 0x3F));
        } else {
            dst[o++] = (char)(0xF0 | (u >> 18));
            dst[o++] = (char)(0x80 | ((u >> 12) & 0x3F));
            dst[o++] = (char)(0x80 | ((u >> 6) & 0x3F));
            dst[o++] = (char)(0x80 | (u & 0x3F));
        }
    }
    dst[o] = '\0';
    return o;
}

/* Parse a string literal into p->scratch; *out is valid until the next use of the scratch. */
static jl_status parse_string_scratch(parser *p, const char **out, size_t *out_len)
{
    const uint8_t *raw = NULL;
    size_t n = 0;
    uint8_t *dst = NULL;

    jl_status st = scan_string(p, &raw, &n);
    if (st == JL_OK) {
        jl_buf_reset(&p->scratch);
        /* Escapes only shrink text, so the raw length (capped by the input's) always suffices. */
        st = jl_buf_reserve(&p->scratch, n + 1, &dst);
        if (st != JL_OK)
            st = nomem(p);
    }
    if (st == JL_OK) {
        size_t k = decode_string(raw, n, (char *)dst);
        jl_buf_commit(&p->scratch, k);
        *out = (const char *)dst;
        *out_len = k;
    }
    return st;
}

/* Parse a string literal into a new malloc'd C string, as a string field needs it. */
static jl_status parse_string_alloc(parser *p, char **out)
{
    const uint8_t *raw = NULL;
    size_t n = 0;
    char *dst = NULL;

    jl_status st = scan_string(p, &raw, &n);
    if (st == JL_OK) {
        dst = malloc(n + 1);
        if (dst == NULL)
            st = nomem(p);
    }
    if (st == JL_OK) {
        size_t k = decode_string(raw, n, dst);
        /* protobuf-c strings are NUL-terminated: a U+0000 would silently cut the value short. */
        if (memchr(dst, '\0', k) != NULL) {
            st = fail(p, JL_ERR_INVALID,
                      "string contains U+0000, which a protobuf-c string cannot hold");
        } else {
            *out = dst;
            dst = NULL;
        }
    }
    free(dst);
    return st;
}

/*
 * Find the end of the JSON number (RFC 8259 grammar) starting at s[i]; out_integral is false
 * when it has a fraction or an exponent. Returns false when s[i] does not start a valid number.
 */
static bool scan_number(const uint8_t *s, size_t len, size_t i, size_t *out_end, bool *out_integral)
{
    bool integral = true;

    if (i < len && s[i] == '-')
        i++;
    if (i >= len || s[i] < '0' || s[i] > '9')
        return false;
    if (s[i] == '0') {
        i++;
    } else {
        while (i < len && s[i] >= '0' && s[i] <= '9')
            i++;
    }
    if (i < len && s[i] == '.') {
        integral = false;
        i++;
        if (i >= len || s[i] < '0' || s[i] > '9')
            return false;
        while (i < len && s[i] >= '0' && s[i] <= '9')
            i++;
    }
    if (i < len && (s[i] == 'e' || s[i] == 'E')) {
        integral = false;
        i++;
        if (i < len && (s[i] == '+' || s[i] == '-'))
            i++;
        if (i >= len || s[i] < '0' || s[i] > '9')
            return false;
        while (i < len && s[i] >= '0' && s[i] <= '9')
            i++;
    }
    *out_end = i;
    *out_integral = integral;
    return true;
}

/* Consume the number token at p->pos; out_tok and out_n point into the input. */
static jl_status parse_number_token(parser *p, const char **out_tok, size_t *out_n,
                                    bool *out_integral)
{
    size_t end = 0;
    if (!scan_number(p->s, p->len, p->pos, &end, out_integral))
        return syntax(p, p->pos, "invalid number");
    *out_tok = (const char *)p->s + p->pos;
    *out_n = end - p->pos;
    p->pos = end;
    return JL_OK;
}

/* At most this much of an offending token is quoted in an error message. */
#define TOKEN_SHOWN 40

static int shown(size_t n)
{
    return (int)(n < TOKEN_SHOWN ? n : TOKEN_SHOWN);
}

/* Decoded string text for an error message: at most TOKEN_SHOWN bytes cut on a character
 * boundary, control characters (and U+0000) masked as '?', "..." when cut; dst holds
 * TOKEN_SHOWN + 4 bytes. Keeps err one line of valid UTF-8, as render_path() does for keys. */
static const char *shown_text(char dst[TOKEN_SHOWN + 4], const char *s, size_t n)
{
    size_t k = n < TOKEN_SHOWN ? n : TOKEN_SHOWN;
    while (k < n && k > 0 && ((uint8_t)s[k] & 0xC0) == 0x80)
        k--;
    for (size_t i = 0; i < k; i++) {
        uint8_t c = (uint8_t)s[i];
        dst[i] = (c < 0x20 || c == 0x7F) ? '?' : (char)c;
    }
    memcpy(dst + k, k < n ? "..." : "", k < n ? 4 : 1);
    return dst;
}

/*
 * Convert an integer token (JSON number grammar, already checked) for a field of type t (ENUM:
 * an enum number, as int32). Exact for 64 bits: the digits go to strtoll/strtoull, never a double.
 */
static jl_status convert_integer(parser *p, ProtobufCType t, const char *tok, size_t n,
                                 bool integral, scalar *out)
{
    char buf[32];
    bool wide = is_64bit(t);
    bool range_ok = true;

    if (!integral)
        return fail(p, JL_ERR_INVALID, "expected an integer, got %.*s", shown(n), tok);
    /* No leading zeros in JSON, so a longer token is past 2^64 whatever its digits. */
    if (n >= sizeof(buf))
        return fail(p, JL_ERR_INVALID, "%.*s... is out of range for %s", shown(n), tok,
                    type_name(t));
    memcpy(buf, tok, n);
    buf[n] = '\0';
    errno = 0;
    if (is_signed_int(t)) {
        long long v = strtoll(buf, NULL, 10);
        range_ok = errno != ERANGE && (wide || (v >= INT32_MIN && v <= INT32_MAX));
        if (wide)
            out->i64 = (int64_t)v;
        else
            out->i32 = (int32_t)v;
    } else {
        unsigned long long v = 0;
        /* strtoull would wrap "-1" to 2^64-1; "-0" is the only negative spelling of a uint. */
        if (buf[0] == '-')
            range_ok = strcmp(buf, "-0") == 0;
        else
            v = strtoull(buf, NULL, 10);
        range_ok = range_ok && errno != ERANGE && (wide || v <= UINT32_MAX);
        if (wide)
            out->u64 = (uint64_t)v;
        else
            out->u32 = (uint32_t)v;
    }
    if (!range_ok)
        return fail(p, JL_ERR_INVALID, "%s is out of range for %s", buf, type_name(t));
    return JL_OK;
}

/* Convert a number token for a float or double field. */
static jl_status convert_floating(parser *p, ProtobufCType t, const char *tok, size_t n,
                                  scalar *out)
{
    char small[64];
    char *heap = NULL;
    char *buf = small;
    jl_status st = JL_OK;

    /* strtod needs a terminated copy: the input is not NUL-terminated. */
    if (n >= sizeof(small)) {
        heap = malloc(n + 1);
        if (heap == NULL)
            st = nomem(p);
        buf = heap;
    }
    if (st == JL_OK) {
        memcpy(buf, tok, n);
        buf[n] = '\0';
        errno = 0;
        bool overflow = false;
        if (t == PROTOBUF_C_TYPE_FLOAT) {
            /* strtof, not (float)strtod: rounding twice can miss the nearest float. */
            out->f = strtof(buf, NULL);
            overflow = errno == ERANGE && isinf(out->f);
        } else {
            out->d = strtod(buf, NULL);
            overflow = errno == ERANGE && isinf(out->d);
        }
        /* Underflow is not an error: the nearest representable value (maybe 0) is the answer. */
        if (overflow)
            st =
                fail(p, JL_ERR_INVALID, "%.*s is out of range for %s", shown(n), tok, type_name(t));
    }
    free(heap);
    return st;
}

/* base64 digit value, or -1. */
static int b64_value(uint8_t c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

/*
 * Decode standard base64 into dst (at least n / 4 * 3 + 2 bytes). Padding is optional, but when
 * present it must complete the last quantum. Leftover low bits are ignored, as most decoders do.
 */
static bool base64_decode(const char *in, size_t n, uint8_t *dst, size_t *out_len)
{
    size_t pad = 0, o = 0;
    uint32_t acc = 0;
    unsigned bits = 0;

    while (n > 0 && pad < 2 && in[n - 1] == '=') {
        n--;
        pad++;
    }
    if ((pad > 0 && (n + pad) % 4 != 0) || n % 4 == 1)
        return false;
    for (size_t i = 0; i < n; i++) {
        int v = b64_value((uint8_t)in[i]);
        if (v < 0)
            return false;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            dst[o++] = (uint8_t)(acc >> bits);
        }
    }
    *out_len = o;
    return true;
}

static jl_status parse_object(parser *p, const ProtobufCMessageDescriptor *d,
                              ProtobufCMessage *msg);

/* Parse a 64-bit integer given as a JSON string ("123"), which the JSON mapping allows. */
static jl_status parse_int_string(parser *p, ProtobufCType t, scalar *out)
{
    char txt[TOKEN_SHOWN + 4];
    const char *s = NULL;
    size_t n = 0, end = 0;
    bool integral = false;

    jl_status st = parse_string_scratch(p, &s, &n);
    if (st == JL_OK) {
        if (!scan_number((const uint8_t *)s, n, 0, &end, &integral) || end != n)
            st = fail(p, JL_ERR_INVALID, "expected an integer, got \"%s\"", shown_text(txt, s, n));
        else
            st = convert_integer(p, t, s, n, integral, out);
    }
    return st;
}

/* Parse one value of field f (never null) into *out; on failure nothing is left allocated. */
static jl_status parse_value(parser *p, const ProtobufCFieldDescriptor *f, scalar *out)
{
    char txt[TOKEN_SHOWN + 4];
    int c = peek(p);
    const char *tok = NULL, *s = NULL;
    size_t n = 0;
    bool integral = false;
    jl_status st = JL_OK;

    switch (f->type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        if (c == '"' && is_64bit(f->type)) {
            st = parse_int_string(p, f->type, out);
        } else if (c == '-' || (c >= '0' && c <= '9')) {
            st = parse_number_token(p, &tok, &n, &integral);
            if (st == JL_OK)
                st = convert_integer(p, f->type, tok, n, integral, out);
        } else {
            st = wrong_kind(p, "an integer");
        }
        break;
    case PROTOBUF_C_TYPE_FLOAT:
    case PROTOBUF_C_TYPE_DOUBLE:
        if (c == '"') {
            double v = 0;
            st = parse_string_scratch(p, &s, &n);
            if (st == JL_OK) {
                if (n == 3 && strcmp(s, "NaN") == 0)
                    v = NAN;
                else if (n == 8 && strcmp(s, "Infinity") == 0)
                    v = INFINITY;
                else if (n == 9 && strcmp(s, "-Infinity") == 0)
                    v = -INFINITY;
                else
                    st = fail(p, JL_ERR_INVALID, "expected a number, got \"%s\"",
                              shown_text(txt, s, n));
            }
            if (f->type == PROTOBUF_C_TYPE_FLOAT)
                out->f = (float)v;
            else
                out->d = v;
        } else if (c == '-' || (c >= '0' && c <= '9')) {
            st = parse_number_token(p, &tok, &n, &integral);
            if (st == JL_OK)
                st = convert_floating(p, f->type, tok, n, out);
        } else {
            st = wrong_kind(p, "a number");
        }
        break;
    case PROTOBUF_C_TYPE_BOOL:
        if (at_literal(p, "true")) {
            p->pos += 4;
            out->b = 1;
        } else if (at_literal(p, "false")) {
            p->pos += 5;
            out->b = 0;
        } else {
            st = wrong_kind(p, "true or false");
        }
        break;
    case PROTOBUF_C_TYPE_ENUM:
        if (c == '"') {
            const ProtobufCEnumDescriptor *ed = f->descriptor;
            const ProtobufCEnumValue *ev = NULL;
            st = parse_string_scratch(p, &s, &n);
            /* The length check keeps "RED\u0000x" from matching RED. */
            if (st == JL_OK && strlen(s) == n)
                ev = protobuf_c_enum_descriptor_get_value_by_name(ed, s);
            if (st == JL_OK && ev == NULL)
                st = fail(p, JL_ERR_INVALID, "unknown value \"%s\" for enum %s",
                          shown_text(txt, s, n), ed->name);
            if (st == JL_OK)
                out->e = ev->value;
        } else if (c == '-' || (c >= '0' && c <= '9')) {
            /* Any int32 is accepted: proto3 enums are open, unknown numbers are kept. */
            st = parse_number_token(p, &tok, &n, &integral);
            if (st == JL_OK)
                st = convert_integer(p, PROTOBUF_C_TYPE_ENUM, tok, n, integral, out);
        } else {
            st = wrong_kind(p, "an enum name or number");
        }
        break;
    case PROTOBUF_C_TYPE_STRING:
        if (c == '"')
            st = parse_string_alloc(p, &out->str);
        else
            st = wrong_kind(p, "a string");
        break;
    case PROTOBUF_C_TYPE_BYTES:
        out->bytes.len = 0;
        out->bytes.data = NULL;
        if (c != '"') {
            st = wrong_kind(p, "a base64 string");
            break;
        }
        st = parse_string_scratch(p, &s, &n);
        if (st == JL_OK && n > 0) {
            uint8_t *data = malloc(n / 4 * 3 + 2);
            if (data == NULL) {
                st = nomem(p);
            } else if (!base64_decode(s, n, data, &out->bytes.len)) {
                free(data);
                st = fail(p, JL_ERR_INVALID, "invalid base64");
            } else {
                out->bytes.data = data;
            }
        }
        break;
    case PROTOBUF_C_TYPE_MESSAGE: {
        const ProtobufCMessageDescriptor *md = f->descriptor;
        ProtobufCMessage *sub = NULL;
        if (c != '{') {
            st = wrong_kind(p, "an object");
            break;
        }
        sub = malloc(md->sizeof_message);
        if (sub == NULL) {
            st = nomem(p);
            break;
        }
        protobuf_c_message_init(md, sub);
        st = parse_object(p, md, sub);
        if (st == JL_OK)
            out->msg = sub;
        else
            protobuf_c_message_free_unpacked(sub, NULL);
        break;
    }
    }
    return st;
}

/* Store a parsed value at dst, laid out as protobuf-c lays out a field of type t. */
static void store(ProtobufCType t, void *dst, const scalar *v)
{
    switch (t) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
        *(int32_t *)dst = v->i32;
        break;
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
        *(uint32_t *)dst = v->u32;
        break;
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
        *(int64_t *)dst = v->i64;
        break;
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        *(uint64_t *)dst = v->u64;
        break;
    case PROTOBUF_C_TYPE_FLOAT:
        *(float *)dst = v->f;
        break;
    case PROTOBUF_C_TYPE_DOUBLE:
        *(double *)dst = v->d;
        break;
    case PROTOBUF_C_TYPE_BOOL:
        *(protobuf_c_boolean *)dst = v->b;
        break;
    case PROTOBUF_C_TYPE_ENUM:
        *(int *)dst = v->e;
        break;
    case PROTOBUF_C_TYPE_STRING:
        *(char **)dst = v->str;
        break;
    case PROTOBUF_C_TYPE_BYTES:
        *(ProtobufCBinaryData *)dst = v->bytes;
        break;
    case PROTOBUF_C_TYPE_MESSAGE:
        *(ProtobufCMessage **)dst = v->msg;
        break;
    }
}

/*
 * Parse a JSON array into repeated field f. The array grows by doubling; count and pointer in
 * msg are kept consistent at every step, so a failure halfway leaves a message that
 * protobuf_c_message_free_unpacked() frees completely.
 */
static jl_status parse_repeated(parser *p, const ProtobufCFieldDescriptor *f, ProtobufCMessage *msg)
{
    char *base = (char *)msg;
    size_t *count = (size_t *)(base + f->quantifier_offset);
    void **arr = (void **)(base + f->offset);
    size_t esize = elem_size(f->type);
    size_t cap = 0;
    bool more = true;

    jl_status st = peek(p) == '[' ? enter(p, '[') : wrong_kind(p, "an array");
    if (st == JL_OK && peek(p) == ']') {
        p->pos++;
        more = false;
    }
    while (st == JL_OK && more) {
        scalar v;
        if (*count == cap) {
            /* Elements take at least 2 input bytes each, so the input cap bounds this too. */
            size_t ncap = cap == 0 ? 4 : cap * 2;
            void *grown = realloc(*arr, ncap * esize);
            if (grown == NULL) {
                st = nomem(p);
                break;
            }
            *arr = grown;
            cap = ncap;
        }
        push_index(p, *count);
        if (peek(p) == 'n' && at_literal(p, "null"))
            st = fail(p, JL_ERR_DECODE, "null is not allowed as an element of a repeated field");
        else
            st = parse_value(p, f, &v);
        if (st != JL_OK)
            break;
        pop(p);
        store(f->type, (char *)*arr + *count * esize, &v);
        (*count)++;
        int c = peek(p);
        if (c == ',') {
            p->pos++;
        } else if (c == ']') {
            p->pos++;
            more = false;
        } else {
            st = syntax(p, p->pos, "expected ',' or ']'");
        }
    }
    if (st == JL_OK)
        p->depth--;
    return st;
}

/* The name of the oneof member of msg currently selected by case value id. */
static const char *oneof_member_name(const ProtobufCMessage *msg, uint32_t id)
{
    const ProtobufCFieldDescriptor *f =
        protobuf_c_message_descriptor_get_field(msg->descriptor, id);
    return f != NULL ? f->name : "?";
}

/* Parse the (non-null) value of the singular field f into msg. */
static jl_status parse_single(parser *p, const ProtobufCFieldDescriptor *f, ProtobufCMessage *msg)
{
    char *base = (char *)msg;
    uint32_t *oneof_case = NULL;
    jl_status st = JL_OK;
    scalar v;

    if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
        oneof_case = (uint32_t *)(base + f->quantifier_offset);
        /* Members share storage, so a second one would leak (or free) the first one's value. */
        if (*oneof_case != 0)
            st = fail(p, JL_ERR_INVALID, "another member of its oneof ('%s') is already set",
                      oneof_member_name(msg, *oneof_case));
    }
    if (st == JL_OK)
        st = parse_value(p, f, &v);
    if (st == JL_OK) {
        /* The slot holds its initial default (never malloc'd): duplicate keys are refused. */
        store(f->type, base + f->offset, &v);
        if (oneof_case != NULL)
            *oneof_case = f->id;
        else if (f->label == PROTOBUF_C_LABEL_OPTIONAL && f->type != PROTOBUF_C_TYPE_STRING &&
                 f->type != PROTOBUF_C_TYPE_MESSAGE)
            *(protobuf_c_boolean *)(base + f->quantifier_offset) = 1;
    }
    return st;
}

/* Per-field parse state of one object. */
enum { KEY_SEEN = 1, VALUE_SET = 2 };

static jl_status key_error(parser *p, jl_status st, const char *what, const char *key, size_t klen,
                           const ProtobufCMessageDescriptor *d)
{
    char path[256];
    render_path(p, key, klen, path, sizeof(path));
    if (d != NULL)
        return fail_plain(p, st, "%s '%s' in %s", what, path, d->name);
    return fail_plain(p, st, "%s '%s'", what, path);
}

/* Parse a JSON object into msg (initialised, of type d). On failure msg stays freeable. */
static jl_status parse_object(parser *p, const ProtobufCMessageDescriptor *d, ProtobufCMessage *msg)
{
    uint8_t *state = NULL;
    bool more = true;

    jl_status st = enter(p, '{');
    if (st == JL_OK) {
        state = calloc(d->n_fields + 1, 1);
        if (state == NULL)
            st = nomem(p);
    }
    if (st == JL_OK && peek(p) == '}') {
        p->pos++;
        more = false;
    }
    while (st == JL_OK && more) {
        const char *key = NULL;
        size_t klen = 0;
        const ProtobufCFieldDescriptor *f = NULL;

        if (peek(p) != '"') {
            st = syntax(p, p->pos, "expected a field name in double quotes");
            break;
        }
        st = parse_string_scratch(p, &key, &klen);
        if (st != JL_OK)
            break;
        /* The length check keeps "sku\u0000x" from matching sku. */
        if (strlen(key) == klen)
            f = protobuf_c_message_descriptor_get_field_by_name(d, key);
        if (f == NULL) {
            st = key_error(p, JL_ERR_INVALID, "unknown field", key, klen, d);
            break;
        }
        unsigned idx = (unsigned)(f - d->fields);
        /* RFC 8259 leaves duplicate names to the receiver; we refuse them, as last-wins would
         * silently drop data and merging would need rules nobody asked for. */
        if (state[idx] & KEY_SEEN) {
            st = key_error(p, JL_ERR_INVALID, "duplicate field", key, klen, NULL);
            break;
        }
        state[idx] |= KEY_SEEN;
        if (peek(p) != ':') {
            st = syntax(p, p->pos, "expected ':'");
            break;
        }
        p->pos++;
        push_name(p, f->name);
        if (peek(p) == 'n' && at_literal(p, "null")) {
            p->pos += 4;
        } else {
            if (f->label == PROTOBUF_C_LABEL_REPEATED)
                st = parse_repeated(p, f, msg);
            else
                st = parse_single(p, f, msg);
            state[idx] |= VALUE_SET;
        }
        if (st != JL_OK)
            break;
        pop(p);
        int c = peek(p);
        if (c == ',') {
            p->pos++;
        } else if (c == '}') {
            p->pos++;
            more = false;
        } else {
            st = syntax(p, p->pos, "expected ',' or '}'");
        }
    }
    for (unsigned i = 0; st == JL_OK && i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        if (f->label == PROTOBUF_C_LABEL_REQUIRED && !(state[i] & VALUE_SET) &&
            f->default_value == NULL)
            st = fail(p, JL_ERR_INVALID, "missing required field '%s'", f->name);
    }
    if (st == JL_OK)
        p->depth--;
    free(state);
    return st;
}

jl_status jl_json_to_pb(ProtobufCMessage **out_msg, const ProtobufCMessageDescriptor *desc,
                        const char *json, size_t len, char *err, size_t errlen)
{
    parser p;
    ProtobufCMessage *msg = NULL;
    jl_status st = JL_OK;

    assert(out_msg != NULL && desc != NULL && (json != NULL || len == 0));
    assert(desc->magic == PROTOBUF_C__MESSAGE_DESCRIPTOR_MAGIC);
    memset(&p, 0, sizeof(p));
    p.s = (const uint8_t *)json;
    p.len = len;
    p.err = err;
    p.errlen = errlen;
    jl_buf_init(&p.scratch, JL_JSON_MAX_INPUT);
    if (err != NULL && errlen > 0)
        err[0] = '\0';

    /* Checked before any work, so oversized input costs nothing. */
    if (len > JL_JSON_MAX_INPUT)
        st = fail(&p, JL_ERR_TOO_LARGE, "input of %zu bytes is over the limit of %d bytes", len,
                  JL_JSON_MAX_INPUT);
    if (st == JL_OK && peek(&p) != '{')
        st = wrong_kind(&p, "an object");
    if (st == JL_OK) {
        msg = malloc(desc->sizeof_message);
        if (msg == NULL)
            st = nomem(&p);
        else
            protobuf_c_message_init(desc, msg);
    }
    if (st == JL_OK)
        st = parse_object(&p, desc, msg);
    if (st == JL_OK && peek(&p) >= 0)
        st = syntax(&p, p.pos, "unexpected data after the JSON object");
    if (st == JL_OK) {
        *out_msg = msg;
        msg = NULL;
    }
    if (msg != NULL)
        protobuf_c_message_free_unpacked(msg, NULL);
    jl_buf_cleanup(&p.scratch);
    return st;
}
