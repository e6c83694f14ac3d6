/*
 * Internal: a map from pointers to pointers (open addressing, linear probing) that grows as it
 * fills, so that inserting never searches a full table. The producer keys its publishes in
 * flight by their message. Not thread-safe.
 */
#ifndef JETLEDGER_PTRMAP_H
#define JETLEDGER_PTRMAP_H

#include <stddef.h>

#include "jetledger/status.h"

typedef struct jl__ptrmap {
    void **keys; /* NULL: a free slot */
    void **vals;
    size_t cap; /* a power of two; 0 once freed (or when init failed) */
    size_t n;   /* keys held; kept at most half of cap */
} jl__ptrmap;

/** An empty map with room for @p hint keys before it first grows. JL_ERR_NOMEM: cap is 0. */
jl_status jl__ptrmap_init(jl__ptrmap *m, size_t hint);

/** Map @p k (not NULL, not held yet) to @p v (not NULL). JL_ERR_NOMEM when it could not grow:
 * the map is then as it was. */
jl_status jl__ptrmap_put(jl__ptrmap *m, void *k, void *v);

/** The value of @p k, removed; NULL when @p k is not held. */
void *jl__ptrmap_take(jl__ptrmap *m, const void *k);

/** Free the table (not what keys or values point to). The map is then empty with cap 0. */
void jl__ptrmap_free(jl__ptrmap *m);

#endif
