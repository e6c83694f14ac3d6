/* Fault injection for the crash and liveness tests (fault.c). Internal. */
#ifndef JL_FAULT_H
#define JL_FAULT_H

/* Kill the process (or, with JL_FAULT_ACTION=hang, block the calling thread for good) at the
 * point named @p name when JL_FAULT_POINT names it; else nothing. */
void jl__fault(const char *name);

#endif
