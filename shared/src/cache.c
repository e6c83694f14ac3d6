#include "cache.h"

#include <stdlib.h>
#include <string.h>

#include "hash.h"

/*
 * Every entry is in the hash; only unpinned ones are in the LRU list, so eviction takes the
 * tail without walking past entries in use (a producer under load pins thousands).
 */
struct jl__cache {
    size_t capacity;
    size_t state_size;
    size_t size; /* entries, pinned or not */
    size_t n_buckets;
    jl__cache_entry **buckets;
    jl__cache_entry *head, *tail; /* unpinned: most / least recently used */
    jl__cache_entry *spare;       /* an evicted entry kept for reuse */
    jl__cache_evict_fn on_evict;
    void *evict_ctx;
};

jl__cache *jl__cache_create(size_t capacity, size_t state_size)
{
    jl__cache *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    c->capacity = capacity;
    c->state_size = state_size;
    c->n_buckets = 16;
    while (c->n_buckets < capacity * 2)
        c->n_buckets *= 2;
    c->buckets = calloc(c->n_buckets, sizeof(*c->buckets));
    if (c->buckets == NULL) {
        free(c);
        return NULL;
    }
    return c;
}

void jl__cache_on_evict(jl__cache *c, jl__cache_evict_fn fn, void *ctx)
{
    c->on_evict = fn;
    c->evict_ctx = ctx;
}

void jl__cache_each(jl__cache *c, bool (*fn)(void *ctx, jl__cache_entry *e), void *ctx)
{
    for (jl__cache_entry *e = c->head; e != NULL; e = e->next) {
        if (!fn(ctx, e))
            break;
    }
}

void jl__cache_destroy(jl__cache *c)
{
    if (c == NULL)
        return;
    for (size_t i = 0; i < c->n_buckets; i++) {
        for (jl__cache_entry *e = c->buckets[i], *n = NULL; e != NULL; e = n) {
            n = e->chain;
            free(e);
        }
    }
    free(c->spare);
    free(c->buckets);
    free(c);
}

static void unlink_lru(jl__cache *c, jl__cache_entry *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else
        c->head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        c->tail = e->prev;
    e->prev = e->next = NULL;
}

static void push_front(jl__cache *c, jl__cache_entry *e)
{
    e->prev = NULL;
    e->next = c->head;
    if (c->head)
        c->head->prev = e;
    c->head = e;
    if (c->tail == NULL)
        c->tail = e;
}

static jl__cache_entry **slot_of(jl__cache *c, const char *id)
{
    jl__cache_entry **pp = &c->buckets[jl__fnv1a64_str(id) & (c->n_buckets - 1)];
    while (*pp != NULL && strcmp((*pp)->id, id) != 0)
        pp = &(*pp)->chain;
    return pp;
}

jl__cache_entry *jl__cache_get(jl__cache *c, const char *id)
{
    jl__cache_entry *e = *slot_of(c, id);
    if (e != NULL && e->pins == 0 && c->head != e) {
        unlink_lru(c, e);
        push_front(c, e);
    }
    return e;
}

/* Evict least recently used unpinned entries until the cache is within its capacity. */
static void shrink(jl__cache *c, size_t keep_free)
{
    while (c->size + keep_free > c->capacity && c->tail != NULL) {
        jl__cache_entry *e = c->tail;
        if (c->on_evict != NULL)
            c->on_evict(c->evict_ctx, e);
        jl__cache_entry **pp = slot_of(c, e->id);
        *pp = e->chain;
        unlink_lru(c, e);
        c->size--;
        free(c->spare);
        c->spare = e;
    }
}

jl__cache_entry *jl__cache_put(jl__cache *c, const char *id)
{
    jl__cache_entry *e = NULL;
    shrink(c, 1);
    if (c->spare != NULL) {
        e = c->spare;
        c->spare = NULL;
    } else {
        e = malloc(sizeof(*e) + c->state_size);
        if (e == NULL)
            return NULL;
    }
    memset(e, 0, sizeof(*e) + c->state_size);
    memcpy(e->id, id, strnlen(id, JL_UUID_LEN));
    jl__cache_entry **pp = slot_of(c, e->id);
    e->chain = *pp;
    *pp = e;
    push_front(c, e);
    c->size++;
    return e;
}

void jl__cache_pin(jl__cache *c, jl__cache_entry *e)
{
    if (e->pins++ == 0)
        unlink_lru(c, e);
}

void jl__cache_unpin(jl__cache *c, jl__cache_entry *e)
{
    if (e->pins == 0 || --e->pins > 0)
        return;
    push_front(c, e);
    if (c->size > c->capacity)
        shrink(c, 0);
}
