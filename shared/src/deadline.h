/*
 * Internal: the absolute CLOCK_REALTIME time @p ms milliseconds from now, for
 * pthread_cond_timedwait() (conditions here use the default clock).
 */
#ifndef JETLEDGER_DEADLINE_H
#define JETLEDGER_DEADLINE_H

#include <stdint.h>
#include <time.h>

static inline struct timespec jl__realtime_in(int64_t ms)
{
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    int64_t ns = (int64_t)t.tv_nsec + (ms > 0 ? ms : 0) % 1000 * 1000000LL;
    t.tv_sec += (time_t)((ms > 0 ? ms : 0) / 1000 + ns / 1000000000LL);
    t.tv_nsec = (long)(ns % 1000000000LL);
    return t;
}

#endif
