/*
 * jl_app: what every service's main() does, in one place (library "jetledger_app").
 *
 * Unlike libjetledger, this part may print, exit and handle signals: it is the program side.
 * A service's main.c is one call:
 *
 *     int main(int argc, char **argv) { return jl_app_run_producer(&orders_service, argc, argv); }
 *
 * Shutdown: the first SIGTERM or SIGINT stops taking new work, finishes and commits the work in
 * hand, drains the NATS connection and exits 0, within JL_APP_SHUTDOWN_MS of the signal (past
 * it, with the server frozen say, it logs so and exits 1); a second signal exits at once with
 * status 130.
 */
#ifndef JETLEDGER_APP_H
#define JETLEDGER_APP_H

#include "jetledger/config.h"
#include "jetledger/producer.h"
#include "jetledger/projector.h"

/** Upper bound on a graceful shutdown. */
#define JL_APP_SHUTDOWN_MS 10000

/** How long a service waits for NATS at start before giving up. */
#define JL_APP_CONNECT_WAIT_MS 30000

/** Exit codes of services. */
enum {
    JL_EXIT_OK = 0,
    JL_EXIT_FAILURE = 1, /**< a runtime failure (NATS, database) */
    JL_EXIT_USAGE = 2,   /**< bad flags or environment */
};

/**
 * Parse the configuration of @p service from the environment and @p argv and open the JSON log
 * on stderr. On --help, print usage (with @p usage_line first) to stdout and exit 0; on a bad
 * flag, print the reason and usage to stderr and exit JL_EXIT_USAGE.
 */
void jl_app_config(jl_config *cfg, const char *service, const char *usage_line, int argc,
                   char **argv);

/**
 * Block SIGINT and SIGTERM in every thread created afterwards (call before connecting) and start
 * a thread that calls @p on_stop(@p closure) at the first of them and exits the process with
 * status 130 at the second. @p on_stop must be thread-safe, and quick: it runs with the
 * runtime's stop lock held, so it must not block nor call jl_app_* (jl_projector_stop, a flag
 * store, is the model).
 */
void jl_app_signals(void (*on_stop)(void *closure), void *closure);

/** Block until a stop signal has arrived (for services whose work runs on NATS threads). */
void jl_app_wait_for_stop(void);

/** The whole life of a producer service; returns the process exit status. */
int jl_app_run_producer(const jl_service_def *def, int argc, char **argv);

/** The whole life of a projector service; returns the process exit status. */
int jl_app_run_projector(const jl_projector_def *def, int argc, char **argv);

#endif /* JETLEDGER_APP_H */
