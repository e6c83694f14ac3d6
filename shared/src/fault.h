/* Fault injection for the crash and liveness tests (fault.c). Internal. */
#ifndef JL_FAULT_H
#define JL_FAULT_H

#include <stdbool.h>

/* Kill the process (or, with JL_FAULT_ACTION=hang, block the calling thread for good) at the
 * point named @p name when JL_FAULT_POINT names it; else nothing. With JL_FAULT_ACTION=fail,
 * true there instead: the caller fails what it was about to do (only where it says so). */
bool jl__fault(const char *name);

#endif
