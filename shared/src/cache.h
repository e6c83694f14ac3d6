/*
 * Internal: a bounded LRU cache of aggregate states, keyed by aggregate id (a canonical UUID).
 *
 * Each entry holds the state after the aggregate's last known commit, its version and that
 * commit's stream sequence, so a producer decides on a hot aggregate without reading the stream,
 * and after a lost race reads only the commits after last_seq. An entry with work in flight is
 * pinned: never evicted (the cache then holds more than its capacity until it is unpinned), and
 * its queue holds the commands waiting for that work, in arrival order. Not thread-safe.
 */
#ifndef JETLEDGER_CACHE_H
#define JETLEDGER_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "jetledger/codec.h"

typedef struct jl__cache_entry {
    char id[JL_UUID_LEN + 1];
    uint64_t version;    /**< aggregate version the state reflects */
    uint64_t last_seq;   /**< stream sequence of the last commit folded in (0: none) */
    unsigned pins;       /**< > 0: in use, not evictable */
    bool busy;           /**< an append of this aggregate is in flight */
    bool stale;          /**< state unknown (an append's outcome is): reload before use */
    uint64_t mark;       /**< the owner's (producer: generation of its last command record) */
    uint64_t snap_seq;   /**< the owner's (producer: last_seq of the newest snapshot it knows) */
    void *qhead, *qtail; /**< commands waiting for the one in flight (owner's type) */
    struct jl__cache_entry *prev, *next; /* LRU list, most recent first (unpinned only) */
    struct jl__cache_entry *chain;       /* hash bucket */
    unsigned char state[];               /* state_size bytes */
} jl__cache_entry;

typedef struct jl__cache jl__cache;

/** Called with an entry about to be evicted (never a pinned one), before it is freed. */
typedef void (*jl__cache_evict_fn)(void *ctx, const jl__cache_entry *e);

/**
 * A cache of at most @p capacity unpinned entries of @p state_size-byte states. With capacity 0
 * nothing outlives its pins: an entry goes as soon as it is unpinned.
 */
jl__cache *jl__cache_create(size_t capacity, size_t state_size);

/** Call @p fn (may be NULL: none) with each entry the cache evicts, from the evicting call. */
void jl__cache_on_evict(jl__cache *c, jl__cache_evict_fn fn, void *ctx);

/** Call @p fn with each unpinned entry, most recently used first, until it returns false. */
void jl__cache_each(jl__cache *c, bool (*fn)(void *ctx, jl__cache_entry *e), void *ctx);
void jl__cache_destroy(jl__cache *c);

/** The entry of @p id (now the most recently used), or NULL. */
jl__cache_entry *jl__cache_get(jl__cache *c, const char *id);

/**
 * A new zeroed entry for @p id (which must not be present), evicting the least recently used
 * unpinned entry if full. NULL when memory runs out.
 */
jl__cache_entry *jl__cache_put(jl__cache *c, const char *id);

/** Pin @p e (see above). */
void jl__cache_pin(jl__cache *c, jl__cache_entry *e);

/** Unpin @p e; with capacity 0 an entry no longer pinned is removed (freed). */
void jl__cache_unpin(jl__cache *c, jl__cache_entry *e);

#endif /* JETLEDGER_CACHE_H */
