/*
 * Internals shared by the jetledger CLI's subcommands (one file per group of subcommands).
 */
#ifndef JETLEDGER_CLI_H
#define JETLEDGER_CLI_H

#include <stdbool.h>
#include <stdint.h>

#include "jetledger/config.h"
#include "jetledger/conn.h"

/** Exit statuses of the CLI (documented in `jetledger help`). */
enum {
    CLI_OK = 0,
    CLI_REJECTED = 1,    /**< the service answered with an error code */
    CLI_USAGE = 2,       /**< bad arguments */
    CLI_UNAVAILABLE = 3, /**< NATS or the service could not be reached */
    CLI_FAILED = 4,      /**< anything else went wrong */
};

/** Options shared by all subcommands, parsed from flags the config does not know. */
typedef struct cli_opts {
    const char *aggregate;      /**< --aggregate ID */
    uint64_t from_seq;          /**< --from-seq N */
    const char *command_id;     /**< --command-id ID */
    const char *correlation_id; /**< --correlation-id ID */
    int64_t timeout_ms;         /**< --timeout MS (requests) */
} cli_opts;

/** Everything a subcommand gets: config, positional arguments (after the subcommand). */
typedef struct cli_ctx {
    jl_config cfg;
    cli_opts opts;
    int argc;
    char **argv;
} cli_ctx;

/** Connect for a short-lived CLI call; prints the reason and returns NULL on failure. */
jl_conn *cli_connect(const cli_ctx *ctx);

/** Print "jetledger: <msg>" on stderr. */
void cli_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/** Stream name of a service: its name in upper case ("orders" -> "ORDERS"). */
void cli_stream_name(char *out, size_t n, const char *service);

int cli_command(cli_ctx *ctx);
int cli_query(cli_ctx *ctx);
int cli_events(cli_ctx *ctx);

#endif /* JETLEDGER_CLI_H */
