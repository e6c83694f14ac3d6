/*
 * Internal: FNV-1a 64, the one hash the library uses for in-memory tables (SQL statement cache,
 * aggregate cache), idempotency keys and read-model fingerprints. Not cryptographic: callers that
 * need to tell values apart still compare the values themselves.
 */
#ifndef JETLEDGER_HASH_H
#define JETLEDGER_HASH_H

#include <stddef.h>
#include <stdint.h>

/* Not the published offset basis (14695981039346656037, one digit longer): kept, because
 * hashes made with it are stored (a projector's last-applied message hash, the producer's
 * command-id keys, verify digests operators may have noted); any nonzero basis serves. */
#define JL__FNV64_BASIS 1469598103934665603ULL
#define JL__FNV64_PRIME 1099511628211ULL

/** Folds @p n bytes of @p p into the running hash @p h (start with JL__FNV64_BASIS). */
static inline uint64_t jl__fnv1a64_more(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * JL__FNV64_PRIME;
    return h;
}

/** FNV-1a 64 of the NUL-terminated string @p s. */
static inline uint64_t jl__fnv1a64_str(const char *s)
{
    uint64_t h = JL__FNV64_BASIS;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * JL__FNV64_PRIME;
    return h;
}

#endif
