/*
 * When a request delivered now had already arrived, at the latest.
 *
 * A subscription's messages wait in the client library's queue while its handler is busy (a
 * producer's handler waits for room in its own pipeline under a burst), and the library does
 * not say since when. A command's deadline counts from its arrival: counted from its delivery
 * instead, one that waited out its requester's timeout in that queue would still be run, and a
 * requester that sent it again would see it take effect twice.
 *
 * So at each delivery the handler notes how many messages are still queued behind it: all of
 * them had arrived by then. A later delivery is then known to have arrived no later than the
 * first such mark that counted it. The estimate errs late (a request is taken for younger
 * than it is, never older), by at most JL_ARRIVAL_MARK_NS plus the queue's wait before the
 * first mark that counted it.
 *
 * One thread only: the subscription's handler (a subscription's handler calls never overlap).
 */
#ifndef JETLEDGER_ARRIVALS_H
#define JETLEDGER_ARRIVALS_H

#include <stddef.h>
#include <stdint.h>

#define JL_ARRIVAL_MARKS 1024
/* A new mark at most this often (a queue draining slowly needs few). */
#define JL_ARRIVAL_MARK_NS (10 * 1000000LL)

typedef struct jl__arrivals {
    int64_t at_ns[JL_ARRIVAL_MARKS]; /* when marked (the caller's clock) */
    uint64_t upto[JL_ARRIVAL_MARKS]; /* deliveries counted by then, and those queued then */
    size_t head, n;                  /* a ring, oldest first */
    uint64_t delivered;              /* deliveries so far */
} jl__arrivals;

/* A delivery at @p now_ns with @p queued messages still waiting behind it: returns when it had
 * arrived at the latest (<= @p now_ns). Zero-initialise @p a first. */
int64_t jl__arrivals_note(jl__arrivals *a, int64_t now_ns, uint64_t queued);

#endif /* JETLEDGER_ARRIVALS_H */
