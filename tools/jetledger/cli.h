/*
 * Internals shared by the jetledger CLI's subcommands (one file per group of subcommands).
 */
#ifndef JETLEDGER_CLI_H
#define JETLEDGER_CLI_H

#include <stdbool.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

#include "jetledger/buf.h"
#include "jetledger/codec.h"
#include "jetledger/config.h"
#include "jetledger/conn.h"

/** Exit statuses of the CLI (documented in `jetledger help`). */
enum {
    CLI_OK = 0,
    CLI_REJECTED = 1,    /**< the service answered with an error code, or a job failed */
    CLI_USAGE = 2,       /**< bad arguments */
    CLI_UNAVAILABLE = 3, /**< NATS or the service could not be reached */
    CLI_FAILED = 4,      /**< anything else went wrong */
};

/** Options shared by all subcommands, parsed from flags the config does not know. */
typedef struct cli_opts {
    const char *aggregate;      /**< --aggregate ID */
    uint64_t from_seq;          /**< --from-seq N */
    bool has_from_time;         /**< --from-time given */
    int64_t from_time_ns;       /**< --from-time RFC3339, as Unix ns */
    bool keep_old;              /**< --keep-old */
    bool json;                  /**< --json (status) */
    bool all;                   /**< --all (outbox) */
    int n_at;                   /**< how many --at-* flags were given */
    uint64_t at_seq;            /**< --at-seq N */
    bool has_at_time;           /**< --at-time given */
    int64_t at_time_ns;         /**< --at-time RFC3339, as Unix ns */
    uint64_t at_version;        /**< --at-version V */
    const char *command_id;     /**< --command-id ID */
    const char *correlation_id; /**< --correlation-id ID */
    const char *instance;       /**< --instance NAME (rebuild, verify, dead-letters, outbox) */
    int64_t timeout_ms;         /**< --timeout MS (requests) */
    unsigned given;             /**< bit (1 << flag) for every CLI flag given */
} cli_opts;

/** Everything a subcommand gets: config, positional arguments (after the subcommand). */
typedef struct cli_ctx {
    jl_config cfg;
    cli_opts opts;
    int argc;
    char **argv;
} cli_ctx;

/* Connect; NULL on failure, said, with the exit status in @p out_rc: CLI_USAGE for settings
 * that cannot work (a bad URL, credentials file, credentials the server refused),
 * CLI_UNAVAILABLE for a server not reached. */
jl_conn *cli_connect(const cli_ctx *ctx, int *out_rc);

/** Print "jetledger: <msg>" on stderr, on a line of its own (a progress line is wiped first). */
void cli_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/** Draw @p text as the progress line on stderr (a terminal), in place of the last one. */
void cli_progress(const char *text);

/** Wipe the progress line, if one is shown (cli_error() does it too). */
void cli_progress_clear(void);

/** Cap of a buffer holding one JSON output (a reply is at most 4 MiB; escaping multiplies). */
#define CLI_JSON_MAX (64 * 1024 * 1024)

/**
 * Print @p b, a JSON text, on stdout when every append to it succeeded; else print nothing
 * (a part left out would make JSON of something else) and say that the @p what is too large.
 * @return CLI_OK or CLI_FAILED.
 */
int cli_print_json(const jl_buf *b, const char *what);

/** Stream name of a service: its name in upper case ("orders" -> "ORDERS"). */
void cli_stream_name(char *out, size_t n, const char *service);

/**
 * Parse an RFC 3339 date-time ("2026-11-26T12:00:00Z", "2026-11-26T12:00:00.123456789+01:00")
 * into Unix nanoseconds. Strict: the full form with seconds, 'T' (or 't'), an optional fraction
 * of 1 to 9 digits, then 'Z' (or 'z') or a +hh:mm / -hh:mm offset; nothing before or after.
 * @return 0 and *out_ns set; -1 with a reason in @p err (the value then unset) for anything
 *         else, including dates that do not exist and times outside 1677..2262 (int64 ns).
 */
int cli_parse_time(int64_t *out_ns, const char *s, char *err, size_t errlen);

/**
 * Send @p msg to @p subject and wait up to ctx->opts.timeout_ms for the jetledger.Reply, decoded
 * into @p out (initialised by the caller). The --command-id and --correlation-id options go
 * along as headers. @p kind and @p name ("service", "orders") word the message when nothing
 * answers. Failures are printed.
 * @return CLI_OK when a reply came, whatever its code (see cli_reply_status()); CLI_UNAVAILABLE
 *         when nothing answered in time; CLI_FAILED for a reply that is not a jetledger.Reply.
 */
int cli_request(const cli_ctx *ctx, jl_conn *conn, const char *kind, const char *name,
                const char *subject, const ProtobufCMessage *msg, jl_reply *out);

/** While @p on, a cli_request() that nothing answers (no responders) returns CLI_UNAVAILABLE
 * without saying so: for a caller that asks again (a projector reconnecting). */
void cli_quiet_unanswered(bool on);

/** Whether the last cli_request() went unanswered for its whole timeout (not "nobody there"). */
bool cli_request_timed_out(void);

/**
 * cli_request() for a request whose ok reply carries a @p want result: that result, or NULL
 * with the failure printed. @p rc receives the exit status (CLI_OK with a result). Free the
 * result with protobuf_c_message_free_unpacked().
 */
ProtobufCMessage *cli_ask(const cli_ctx *ctx, jl_conn *conn, const char *kind, const char *name,
                          const char *subject, const ProtobufCMessage *msg,
                          const ProtobufCMessageDescriptor *want, int *rc);

/**
 * The exit status a reply's code means: CLI_OK for ok; otherwise prints
 * "jetledger: <code>: <message>" and returns CLI_UNAVAILABLE (unavailable, timeout) or
 * CLI_REJECTED.
 */
int cli_reply_status(const jl_reply *r);

/**
 * Decode @p len bytes as the message type named @p type (full protobuf name) through the
 * registry. NULL when the type is unknown or the bytes are not one; *out_status (may be NULL)
 * then says which (JL_ERR_UNKNOWN_TYPE, JL_ERR_DECODE). Free the result with
 * protobuf_c_message_free_unpacked().
 */
ProtobufCMessage *cli_unpack(const char *type, const uint8_t *data, size_t len,
                             jl_status *out_status);

/**
 * The result of an ok reply as a @p want message, or NULL after printing why (another
 * result_type, undecodable). Free with protobuf_c_message_free_unpacked().
 */
ProtobufCMessage *cli_reply_result(const jl_reply *r, const ProtobufCMessageDescriptor *want);

/**
 * Print @p ev as one JSON line on stdout (the format of `jetledger events`), using @p line as
 * scratch. @p s is the status of decoding its payload: when not JL_OK the payload is null and
 * an "error" member names the status.
 * @return JL_OK when the line is whole; else the status its "error" names.
 */
jl_status cli_print_event(jl_buf *line, const jl_event *ev, jl_status s);

/**
 * Say on stderr that @p n printed lines could not show their event whole (each says why in its
 * "error"): the output is not the whole trail, which a script must be told.
 * @return CLI_FAILED.
 */
int cli_unreadable(size_t n);

/**
 * Copy @p in into @p out (@p n bytes, NUL-terminated, cut at a whole character) with control
 * characters, C1 ones and bytes of no valid UTF-8 sequence shown as \xHH or \u00HH, so that
 * what a server or an argument says never reaches the terminal as an escape sequence.
 */
void cli_safe(char *out, size_t n, const char *in);

int cli_command(cli_ctx *ctx);
int cli_query(cli_ctx *ctx);
int cli_events(cli_ctx *ctx);
int cli_history(cli_ctx *ctx);
int cli_state(cli_ctx *ctx);
int cli_rebuild(cli_ctx *ctx);
int cli_verify(cli_ctx *ctx);
int cli_dead_letters(cli_ctx *ctx);
int cli_outbox(cli_ctx *ctx);
int cli_status(cli_ctx *ctx);
int cli_ping(cli_ctx *ctx);

#endif /* JETLEDGER_CLI_H */
