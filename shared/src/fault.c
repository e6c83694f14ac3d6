/*
 * Fault injection for the crash tests: with JL_FAULT_POINT=<name> (and optionally
 * JL_FAULT_AFTER=<n>, default 1) in the environment, the process kills itself with SIGKILL the
 * n-th time it reaches that point, exactly as `kill -9` would at that instant. Without the
 * variable (every production run) a point costs one load of a cached flag.
 *
 * Points: "apply.before_commit" (a batch applied, its transaction not committed),
 * "outbox.added" (a command decided: its row inserted in the batch's transaction, not
 * committed), "outbox.before_send" (a command committed to the outbox, not yet requested),
 * "outbox.after_send" (a command answered, the reply not yet recorded); in a --keep-old
 * switch: "switch.linked" (the old file linked under its kept name, the pointer not moved),
 * "switch.pointer" (the pointer moved and synced, the connections not swapped),
 * "switch.swapped" (swapped and closed, the old name not yet given up); in a producer:
 * "command.decide" (a command about to be decided, the producer's lock held), "command.load"
 * (an aggregate about to be read for a command, on a reading thread, the lock not held).
 *
 * With JL_FAULT_ACTION=hang the thread that reaches the point blocks there for good instead
 * (holding what it holds), as a deadlock or a call that never returns would: the liveness
 * tests' stalled service. With JL_FAULT_ACTION=fail a point that can fail what follows it does,
 * every time from the n-th on: "command.reread" (in a producer, the read that is to tell
 * whether an append that timed out was stored), "late.find" (a command-id record kept in
 * memory found, and its copy failing as out of memory would).
 */
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "jetledger/log.h"
#include "projector_int.h"

static pthread_once_t once = PTHREAD_ONCE_INIT;
static const char *point = NULL;
static long after = 1;
static bool hang, fail;
static atomic_long hits;

static void load(void)
{
    point = getenv("JL_FAULT_POINT");
    const char *n = getenv("JL_FAULT_AFTER");
    if (n != NULL && atol(n) > 0)
        after = atol(n);
    const char *a = getenv("JL_FAULT_ACTION");
    hang = a != NULL && strcmp(a, "hang") == 0;
    fail = a != NULL && strcmp(a, "fail") == 0;
}

bool jl__fault(const char *name)
{
    pthread_once(&once, load);
    if (point == NULL || strcmp(point, name) != 0)
        return false;
    if (atomic_fetch_add(&hits, 1) + 1 < after)
        return false;
    if (fail) {
        jl_log(JL_LOG_WARN, "fault point reached: failing", "\"point\":\"%s\"", name);
        return true;
    }
    if (!hang)
        raise(SIGKILL);
    jl_log(JL_LOG_WARN, "fault point reached: this thread hangs", "\"point\":\"%s\"", name);
    for (;;)
        pause(); /* signals handled elsewhere: this thread has them blocked */
}
