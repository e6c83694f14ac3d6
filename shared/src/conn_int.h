/*
 * Internal: what jl_conn_open() is doing, for the service runner's watchdog (app.c).
 */
#ifndef JETLEDGER_CONN_INT_H
#define JETLEDGER_CONN_INT_H

#include <stdint.h>

/* jl__mono_ns() when the natsConnection_Connect() in progress in this process began (with
 * several at once, since when one or another has been: the oldest), 0 when none is. libnats
 * 3.4.1 never returns from one whose server sent its INFO and then stopped answering: this is
 * how that is told. */
int64_t jl__conn_connecting_since_ns(void);

#endif
