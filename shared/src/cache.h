/*
 * Internal: a bounded LRU cache of aggregate states, keyed by aggregate id (a canonical UUID).
 *
 * Each entry holds the state after the aggregate's last known commit, its version and that
 * commit's stream sequence, so a producer decides on a hot aggregate without reading the stream,
 * and after a lost race reads only the commits after last_seq. Not thread-safe.
 */
#ifndef JETLEDGER_CACHE_H
#define JETLEDGER_CACHE_H

#include <stddef.h>
#include <stdint.h>

#include "jetledger/codec.h"

typedef struct jl__cache_entry {
    char id[JL_UUID_LEN + 1];
    uint64_t version;  /**< aggregate version the state reflects */
    uint64_t last_seq; /**< stream sequence of the last commit folded in (0: none) */
    struct jl__cache_entry *prev, *next; /* LRU list, most recent first */
    struct jl__cache_entry *chain;       /* hash bucket */
    unsigned char state[];               /* state_size bytes */
} jl__cache_entry;

typedef struct jl__cache jl__cache;

/** A cache of at most @p capacity entries (0 disables caching) of @p state_size-byte states. */
jl__cache *jl__cache_create(size_t capacity, size_t state_size);
void jl__cache_destroy(jl__cache *c);

/** The entry of @p id (now the most recently used), or NULL. */
jl__cache_entry *jl__cache_get(jl__cache *c, const char *id);

/**
 * An entry for @p id, evicting the least recently used one if full; its contents are whatever
 * was there (the caller fills them). NULL when the capacity is 0 or memory runs out.
 */
jl__cache_entry *jl__cache_put(jl__cache *c, const char *id);

/** Forget @p id (no-op when absent). */
void jl__cache_remove(jl__cache *c, const char *id);

/** Entries held. */
size_t jl__cache_size(const jl__cache *c);

#endif /* JETLEDGER_CACHE_H */
