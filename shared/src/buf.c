#include "jetledger/buf.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <protobuf-c/protobuf-c.h>

void jl_buf_init(jl_buf *b, size_t cap)
{
    assert(b != NULL);
    b->data = NULL;
    b->len = 0;
    b->alloc = 0;
    b->cap = cap;
    b->err = JL_OK;
}

void jl_buf_cleanup(jl_buf *b)
{
    if (b == NULL)
        return;
    free(b->data);
    b->data = NULL;
    b->len = 0;
    b->alloc = 0;
    b->err = JL_OK;
}

void jl_buf_reset(jl_buf *b)
{
    b->len = 0;
    b->err = JL_OK;
    if (b->data != NULL)
        b->data[0] = 0;
}

/* Note @p s as the buffer's first failure; return it. */
static jl_status failed(jl_buf *b, jl_status s)
{
    if (b->err == JL_OK)
        b->err = s;
    return s;
}

jl_status jl_buf_reserve(jl_buf *b, size_t n, uint8_t **out_p)
{
    /* Checked before any arithmetic can overflow: len <= cap always holds, and the +1 for the
     * trailing NUL must fit in a size_t too. */
    if (n > b->cap - b->len || n >= SIZE_MAX - b->len)
        return failed(b, JL_ERR_TOO_LARGE);
    size_t need = b->len + n + 1;
    if (need > b->alloc) {
        size_t a = b->alloc ? b->alloc : 64;
        while (a < need)
            a = (a > SIZE_MAX / 2) ? need : a * 2;
        if (b->cap < SIZE_MAX && a > b->cap + 1)
            a = b->cap + 1;
        uint8_t *p = realloc(b->data, a);
        if (p == NULL)
            return failed(b, JL_ERR_NOMEM);
        b->data = p;
        b->alloc = a;
    }
    *out_p = b->data + b->len;
    return JL_OK;
}

void jl_buf_commit(jl_buf *b, size_t n)
{
    assert(b->len + n < b->alloc);
    b->len += n;
    b->data[b->len] = 0;
}

jl_status jl_buf_add(jl_buf *b, const void *p, size_t n)
{
    uint8_t *dst = NULL;
    jl_status s = jl_buf_reserve(b, n, &dst);
    if (s != JL_OK)
        return s;
    if (n > 0)
        memcpy(dst, p, n);
    jl_buf_commit(b, n);
    return JL_OK;
}

jl_status jl_buf_adds(jl_buf *b, const char *s)
{
    return jl_buf_add(b, s, strlen(s));
}

jl_status jl_buf_vaddf(jl_buf *b, const char *fmt, va_list ap)
{
    va_list ap2;
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap2);
    va_end(ap2);
    if (n < 0)
        return failed(b, JL_ERR_INVALID);
    uint8_t *dst = NULL;
    jl_status s = jl_buf_reserve(b, (size_t)n, &dst);
    if (s != JL_OK)
        return s;
    vsnprintf((char *)dst, (size_t)n + 1, fmt, ap);
    jl_buf_commit(b, (size_t)n);
    return JL_OK;
}

jl_status jl_buf_addf(jl_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    jl_status s = jl_buf_vaddf(b, fmt, ap);
    va_end(ap);
    return s;
}

const char *jl_buf_str(const jl_buf *b)
{
    return b->data != NULL ? (const char *)b->data : "";
}

jl_status jl_buf_pack(jl_buf *b, const ProtobufCMessage *m)
{
    uint8_t *dst = NULL;
    jl_status s = jl_buf_reserve(b, protobuf_c_message_get_packed_size(m), &dst);
    if (s == JL_OK)
        jl_buf_commit(b, protobuf_c_message_pack(m, dst));
    return s;
}
