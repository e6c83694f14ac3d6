/*
 * Internal: absolute times for pthread_cond_timedwait(): jl__realtime_in() for conditions on
 * the default clock, jl__monotonic_in() for those made with jl__cond_init_monotonic() (which a
 * step of the wall clock does not stretch or cut short); jl__mono_ns() and jl__mono_ms() for
 * backoffs and deadlines.
 */
#ifndef JETLEDGER_DEADLINE_H
#define JETLEDGER_DEADLINE_H

#include <pthread.h>
#include <stdint.h>
#include <time.h>

static inline struct timespec jl__clock_in(clockid_t clock, int64_t ms)
{
    struct timespec t;
    clock_gettime(clock, &t);
    int64_t ns = (int64_t)t.tv_nsec + (ms > 0 ? ms : 0) % 1000 * 1000000LL;
    t.tv_sec += (time_t)((ms > 0 ? ms : 0) / 1000 + ns / 1000000000LL);
    t.tv_nsec = (long)(ns % 1000000000LL);
    return t;
}

static inline struct timespec jl__realtime_in(int64_t ms)
{
    return jl__clock_in(CLOCK_REALTIME, ms);
}

static inline struct timespec jl__monotonic_in(int64_t ms)
{
    return jl__clock_in(CLOCK_MONOTONIC, ms);
}

/* The wall clock, in ns since the epoch: for times stored or compared with the server's. */
static inline int64_t jl__now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return (int64_t)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static inline int64_t jl__mono_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000LL + t.tv_nsec;
}

/* Milliseconds on the monotonic clock, for deadlines (libnats' nats_Now() is the wall clock). */
static inline int64_t jl__mono_ms(void)
{
    return jl__mono_ns() / 1000000LL;
}

/* pthread_cond_init() on CLOCK_MONOTONIC: wait with jl__monotonic_in(). */
static inline int jl__cond_init_monotonic(pthread_cond_t *cv)
{
    pthread_condattr_t a;
    int rc = pthread_condattr_init(&a);
    if (rc == 0)
        rc = pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    if (rc == 0)
        rc = pthread_cond_init(cv, &a);
    pthread_condattr_destroy(&a);
    return rc;
}

#endif
