/*
 * Internal: an ordered pipeline. Items are pushed in order; the ones that need it are prepared
 * on a small pool of worker threads, in parallel and in any order (a blocking lookup, say); every
 * item is then finished strictly in push order, one at a time, on whichever thread completes the
 * head (the pusher's own thread when nothing is waiting: no hand-off then). Created unordered, it
 * is a plain worker pool instead: each item prepared and finished by the worker that took it.
 *
 * Bounded: push blocks while @p capacity items are waiting. Thread-safe.
 */
#ifndef JETLEDGER_ORDERED_H
#define JETLEDGER_ORDERED_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "jetledger/status.h"

/** Prepare @p item (a worker thread); the result goes to finish. */
typedef void *(*jl__ordered_prepare_fn)(void *ctx, void *item);
/** Finish @p item with what prepare returned (NULL when it was not prepared), its tag and when
 * it was pushed (CLOCK_MONOTONIC ns, taken before any wait for room: time spent waiting in the
 * pipeline counts against it). */
typedef void (*jl__ordered_finish_fn)(void *ctx, void *item, void *prepared, uint64_t tag,
                                      int64_t pushed_ns);

typedef struct jl__ordered jl__ordered;

/**
 * Start @p workers threads. Not @p ordered (and @p workers > 0): a plain worker pool, where every
 * item is prepared and then finished by the worker that took it, finishes overlapping and in any
 * order (one slow item holds up no other); @p capacity then bounds the items no worker has
 * taken yet. @return JL_OK, JL_ERR_NOMEM, or JL_ERR_INTERNAL (no thread).
 */
jl_status jl__ordered_create(jl__ordered **out, int workers, size_t capacity, bool ordered,
                             jl__ordered_prepare_fn prepare, jl__ordered_finish_fn finish,
                             void *ctx);

/** Queue @p item with @p tag; prepared first when @p prepare. May finish items before returning. */
void jl__ordered_push(jl__ordered *o, void *item, uint64_t tag, bool prepare);

/** jl__ordered_push(), for an item that had come at @p at_ns already (CLOCK_MONOTONIC ns, 0:
 * now; never later than now): finish is given that time instead of now. */
void jl__ordered_push_at(jl__ordered *o, void *item, uint64_t tag, bool prepare, int64_t at_ns);

/** jl__ordered_push(), but never waiting for room: false (nothing queued) when there is none.
 * What a worker of @p o may call (it cannot wait for room that only the workers make). */
bool jl__ordered_try_push(jl__ordered *o, void *item, uint64_t tag, bool prepare);

/**
 * Milliseconds the longest-working worker of @p o has been at its item (its prepare and, not
 * ordered, its finish) since it took it or last called jl__ordered_beat(); 0 when none works.
 * A worker that never comes back shows here, whatever the others do. NULL: 0. Thread-safe.
 */
int64_t jl__ordered_busy_ms(jl__ordered *o);

/** Called by a worker's prepare or finish: it is making progress (a long item is not a hung
 * one). A no-op on any other thread. */
void jl__ordered_beat(void);

/** Wait until every pushed item is finished, stop the workers, free. NULL is a no-op. */
void jl__ordered_destroy(jl__ordered *o);

#endif
