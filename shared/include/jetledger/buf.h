/*
 * jl_buf: a growable byte buffer with a hard size cap (after curl's dynbuf).
 *
 * Every buffer that grows from input in jetledger is a jl_buf, so no payload can make a service
 * allocate without bound: appends past the cap fail with JL_ERR_TOO_LARGE and leave the buffer
 * as it was. The contents are always followed by a NUL byte (not counted in len), so text built
 * here is a C string.
 *
 * A jl_buf is caller-owned (jl_buf_init / jl_buf_cleanup); it is not thread-safe.
 */
#ifndef JETLEDGER_BUF_H
#define JETLEDGER_BUF_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "jetledger/status.h"

typedef struct jl_buf {
    uint8_t *data; /**< NULL until the first append; NUL-terminated after it */
    size_t len;    /**< bytes used, excluding the trailing NUL */
    size_t alloc;  /**< bytes allocated */
    size_t cap;    /**< hard limit on len */
    /** The first failure of an append since init or reset (JL_OK: none). An append that fails
     * leaves the buffer as it was, and a smaller one after it may succeed: text built in many
     * appends is whole only when this is still JL_OK. */
    jl_status err;
} jl_buf;

/** Initialise an empty buffer that may hold at most @p cap bytes. Allocates nothing. */
void jl_buf_init(jl_buf *b, size_t cap);

/** Free the memory and return the buffer to its initial empty state (cap kept). */
void jl_buf_cleanup(jl_buf *b);

/** Forget the contents (and err) but keep the allocation for reuse. */
void jl_buf_reset(jl_buf *b);

/**
 * Append @p n bytes. JL_ERR_TOO_LARGE when len + n would exceed the cap, JL_ERR_NOMEM when
 * allocation fails; on either the buffer is unchanged.
 */
jl_status jl_buf_add(jl_buf *b, const void *p, size_t n);

/** Append a NUL-terminated string (without its NUL). Same errors as jl_buf_add(). */
jl_status jl_buf_adds(jl_buf *b, const char *s);

/** Append printf-formatted text. Same errors as jl_buf_add(). */
jl_status jl_buf_addf(jl_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/** va_list form of jl_buf_addf(). */
jl_status jl_buf_vaddf(jl_buf *b, const char *fmt, va_list ap);

/**
 * Make room for @p n more bytes without adding them, and return a pointer to the free space
 * in @p out_p; commit what was written with jl_buf_commit(). Errors as jl_buf_add().
 */
jl_status jl_buf_reserve(jl_buf *b, size_t n, uint8_t **out_p);

/** Account @p n bytes written into space obtained from jl_buf_reserve(). */
void jl_buf_commit(jl_buf *b, size_t n);

/** The contents as a C string ("" when empty). Valid until the next change to the buffer. */
const char *jl_buf_str(const jl_buf *b);

struct ProtobufCMessage;

/**
 * Append protobuf message @p m, packed (a state for a snapshot, a query's result, ...).
 * Same errors as jl_buf_add(); on either the buffer is unchanged.
 */
jl_status jl_buf_pack(jl_buf *b, const struct ProtobufCMessage *m);

#endif /* JETLEDGER_BUF_H */
