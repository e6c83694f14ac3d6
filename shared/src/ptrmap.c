/* Internal: see ptrmap.h. */
#include "ptrmap.h"

#include <stdint.h>
#include <stdlib.h>

/* Fibonacci hashing: the top bits of the product mix every bit of the pointer (allocations
 * share their low bits, which a mask alone would keep). */
static size_t slot(const jl__ptrmap *m, const void *k)
{
    uint64_t h = (uint64_t)(uintptr_t)k * 0x9E3779B97F4A7C15ULL;
    return (size_t)(h >> 32) & (m->cap - 1);
}

static void place(jl__ptrmap *m, void *k, void *v)
{
    size_t i = slot(m, k);
    while (m->keys[i] != NULL)
        i = (i + 1) & (m->cap - 1);
    m->keys[i] = k;
    m->vals[i] = v;
}

static jl_status alloc_table(jl__ptrmap *m, size_t cap)
{
    void **keys = calloc(cap, sizeof(*keys));
    void **vals = calloc(cap, sizeof(*vals));
    if (keys == NULL || vals == NULL) {
        free(keys);
        free(vals);
        return JL_ERR_NOMEM;
    }
    m->keys = keys;
    m->vals = vals;
    m->cap = cap;
    return JL_OK;
}

jl_status jl__ptrmap_init(jl__ptrmap *m, size_t hint)
{
    size_t cap = 16;
    while (cap / 2 < hint && cap <= SIZE_MAX / 2 / sizeof(void *))
        cap *= 2; /* a hint past what can be had: the allocation below says so */
    m->keys = m->vals = NULL;
    m->cap = m->n = 0;
    return alloc_table(m, cap);
}

jl_status jl__ptrmap_put(jl__ptrmap *m, void *k, void *v)
{
    if (m->cap == 0 && alloc_table(m, 16) != JL_OK)
        return JL_ERR_NOMEM;
    if (m->n + 1 > m->cap / 2) {
        jl__ptrmap old = *m;
        if (old.cap > SIZE_MAX / 2 / sizeof(void *) || alloc_table(m, old.cap * 2) != JL_OK)
            return JL_ERR_NOMEM; /* *m is untouched: alloc_table sets it only on success */
        for (size_t i = 0; i < old.cap; i++)
            if (old.keys[i] != NULL)
                place(m, old.keys[i], old.vals[i]);
        free(old.keys);
        free(old.vals);
    }
    place(m, k, v);
    m->n++;
    return JL_OK;
}

void *jl__ptrmap_take(jl__ptrmap *m, const void *k)
{
    if (m->cap == 0)
        return NULL;
    size_t i = slot(m, k);
    while (m->keys[i] != NULL && m->keys[i] != k)
        i = (i + 1) & (m->cap - 1);
    if (m->keys[i] == NULL)
        return NULL;
    void *v = m->vals[i];
    m->keys[i] = NULL;
    m->n--;
    /* Re-place the rest of the run, so that a lookup never stops at the hole. */
    for (size_t j = (i + 1) & (m->cap - 1); m->keys[j] != NULL; j = (j + 1) & (m->cap - 1)) {
        void *rk = m->keys[j], *rv = m->vals[j];
        m->keys[j] = NULL;
        place(m, rk, rv);
    }
    return v;
}

void jl__ptrmap_free(jl__ptrmap *m)
{
    free(m->keys);
    free(m->vals);
    m->keys = m->vals = NULL;
    m->cap = m->n = 0;
}
