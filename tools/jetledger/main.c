/*
 * jetledger: the command-line client. Sends commands and queries as JSON (converted to and
 * from protobuf through the generated descriptors, so new messages need no CLI code), prints
 * the events of a stream, an aggregate's history and past states, the state of every stream
 * and consumer, and drives a projector's rebuild and verify jobs.
 */
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "jetledger/json.h"
#include "jetledger/log.h"
#include "jetledger/producer.h"

static const char usage[] =
    "usage: jetledger [options] <subcommand> ...\n"
    "\n"
    "  command <service> <Command> '<json>' [--command-id ID] [--correlation-id ID]\n"
    "      send a command, e.g. command orders CreateOrder '{\"customer_id\":\"c1\"}'\n"
    "  query <projector> <Query> '<json>' [--correlation-id ID]\n"
    "      ask a read model, e.g. query order_summary ListOrders '{\"status\":\"placed\"}'\n"
    "  events <service> [--aggregate ID] [--from-seq N]\n"
    "      print the stored events, one JSON object a line\n"
    "  history <service> <aggregate-id>\n"
    "      print every event of one aggregate, one JSON object a line (the audit trail)\n"
    "  state <service> <aggregate-id> [--at-seq N | --at-time RFC3339 | --at-version V]\n"
    "      print an aggregate's state, now or as of a stream sequence, a time or a version\n"
    "  rebuild <projector> [--from-seq N | --from-time RFC3339] [--keep-old] [--instance NAME]\n"
    "      rebuild the read model into a new file and switch to it; shows progress, prints a\n"
    "      summary; Ctrl-C cancels (the live model stays as it was); --keep-old keeps the\n"
    "      replaced file. From N (or a time) the new model holds only the events from there\n"
    "      on: what came before is left out of it\n"
    "  verify <projector> [--instance NAME]\n"
    "      rebuild into a scratch file and compare it with the live read model\n"
    "  dead-letters <projector> [--instance NAME]\n"
    "      the events the read model set aside (undecodable, unknown types, refused by\n"
    "      apply), newest first, at most 500, and how many in all: one JSON object\n"
    "      --instance: on that instance of the projector (its durable, JL_DURABLE), not on\n"
    "      any one of them: with a durable per instance, each has a read model of its own\n"
    "  outbox <projector> [--all] [--instance NAME]\n"
    "      a process manager's commands still waiting for a final reply and those refused for\n"
    "      good, in the order they are sent, at most 500, and how many of each: one JSON\n"
    "      object; --all: the answered ones too (until pruned)\n"
    "  outbox <projector> dismiss <command-id> [--instance NAME]\n"
    "      delete a command refused for good once you have dealt with it (only such a one)\n"
    "  bench [--quick] [--out DIR] ...\n"
    "      run the benchmark (jetledger-bench beside this binary; bench --help lists its\n"
    "      options); it starts its own nats-server and services\n"
    "  status [--json]\n"
    "      every stream (messages, bytes, sequences, replicas: leader, current or lagging) and\n"
    "      every consumer (delivered, ack floor, ack pending, pending = lag, redelivered,\n"
    "      waiting); KV buckets show as kind kv. --json: one object {\"streams\":[...]}\n"
    "  ping\n"
    "      whether JetStream answers (a meta leader elected): exit 0 and one JSON line; 3 when\n"
    "      NATS or JetStream does not answer, 4 when it answers with an error (permissions),\n"
    "      2 for bad settings; what a script (or a pod's init container) waits for\n"
    "\n"
    "  --timeout MS   how long to wait for a reply (default 15000: longer than a service's own "
    "deadline)\n"
    "  ids (--command-id, --correlation-id): 1 to 64 printable ASCII characters, no spaces\n"
    "  <Command>/<Query>: a short name, or a full one (orders.CreateOrder) when several\n"
    "  packages use it\n"
    "  times are RFC 3339, e.g. 2026-11-26T12:00:00Z or 2026-11-26T12:00:00.123456789+01:00\n"
    "\n"
    "Exit status: 0 ok; 1 the service refused (the error is printed; any code but unavailable\n"
    "and timeout), a rebuild or verify failed or was cancelled, or verify found a difference;\n"
    "2 bad usage; 3 NATS or the service unreachable, or a reply coded unavailable or timeout\n"
    "(status: also when some stream or consumer did not answer; what did is printed); 4 other\n"
    "failure.\n";

void cli_safe(char *out, size_t n, const char *in)
{
    /* A UTF-8 sequence whole and well formed passes, but for C1 (U+0080..U+009F); any other
     * byte from 0x80 is escaped too: an 8-bit terminal reads 0x9b as CSI. */
    size_t w = 0;
    for (const unsigned char *c = (const unsigned char *)in; *c && w + 7 < n; c++) {
        size_t len = *c < 0x80 ? 1 : *c >= 0xf0 ? 4 : *c >= 0xe0 ? 3 : *c >= 0xc0 ? 2 : 0;
        if (*c < 0x20 || *c == 0x7f) {
            w += (size_t)snprintf(out + w, n - w, "\\x%02x", *c);
        } else if (c[0] == 0xc2 && c[1] >= 0x80 && c[1] <= 0x9f) {
            w += (size_t)snprintf(out + w, n - w, "\\u%04x", *++c);
        } else if (len > 1 && strnlen((const char *)c, len) == len &&
                   jl_utf8_valid((const char *)c, len)) {
            memcpy(out + w, c, len);
            w += len;
            c += len - 1;
        } else if (len == 1) {
            out[w++] = (char)*c;
        } else {
            w += (size_t)snprintf(out + w, n - w, "\\x%02x", *c);
        }
    }
    if (n > 0)
        out[w < n ? w : n - 1] = 0;
}

/* A progress line is on stderr, redrawn in place: the next message must wipe it first. */
static bool progress_shown;

void cli_progress(const char *text)
{
    fprintf(stderr, "\r%s\033[K", text);
    fflush(stderr);
    progress_shown = true;
}

void cli_progress_clear(void)
{
    if (progress_shown)
        fputs("\r\033[K", stderr);
    progress_shown = false;
}

void cli_error(const char *fmt, ...)
{
    /* What is echoed (arguments, a service's reply) may hold control characters: shown as
     * \xHH (C1 ones as \u00HH), so that none reaches the terminal as an escape sequence. */
    char msg[4096], safe[4 * 4096 + 8];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    cli_safe(safe, sizeof(safe), msg);
    cli_progress_clear();
    fprintf(stderr, "jetledger: %s%s\n", safe, n >= (int)sizeof(msg) ? "..." : "");
}

int cli_print_json(const jl_buf *b, const char *what)
{
    if (b->err != JL_OK) {
        cli_error("the %s is too large to print as JSON (%s)", what, jl_status_str(b->err));
        return CLI_FAILED;
    }
    fputs(jl_buf_str(b), stdout);
    fflush(stdout);
    return CLI_OK;
}

void cli_stream_name(char *out, size_t n, const char *service)
{
    size_t i = 0;
    for (; service[i] && i + 1 < n; i++)
        out[i] = (char)toupper((unsigned char)service[i]);
    out[i] = 0;
}

static void on_connect_stuck(int sig)
{
    (void)sig;
    static const char msg[] = "jetledger: " JL_CONN_STUCK_MSG "\n";
    ssize_t w = write(STDERR_FILENO, msg, sizeof(msg) - 1);
    (void)w;
    _exit(CLI_UNAVAILABLE);
}

jl_conn *cli_connect(const cli_ctx *ctx, int *out_rc)
{
    jl_conn *c = NULL;
    char err[1024] = "";
    /* libnats 3.4.1 never gives up on a server that sent its INFO and then stopped answering
     * (it polls without end, at full CPU): an alarm past the longest honest connect says so
     * and exits. (The CLI connects once, with no retries: one attempt's bound is the whole.) */
    struct sigaction sa, old;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_connect_stuck;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGALRM, &sa, &old);
    alarm((unsigned)((jl_conn_stuck_after_ms(&ctx->cfg) + 999) / 1000));
    jl_status s = jl_conn_open(&c, &ctx->cfg, "jetledger-cli", 0, err, sizeof(err));
    alarm(0);
    sigaction(SIGALRM, &old, NULL);
    *out_rc = s == JL_OK ? CLI_OK : s == JL_ERR_INVALID ? CLI_USAGE : CLI_UNAVAILABLE;
    if (s != JL_OK) {
        cli_error("%s", err);
        return NULL;
    }
    return c;
}

static int parse_u64(const char *s, uint64_t *out)
{
    char *end = NULL;
    /* strtoull skips leading blanks and then accepts a sign: " -1" would wrap to 2^64-1. */
    if (s[0] < '0' || s[0] > '9')
        return -1;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0 || end == s || *end != 0 || s[0] == '-')
        return -1;
    *out = v;
    return 0;
}

enum cli_flag {
    F_AGGREGATE,
    F_FROM_SEQ,
    F_FROM_TIME,
    F_KEEP_OLD,
    F_AT_SEQ,
    F_AT_TIME,
    F_AT_VERSION,
    F_COMMAND_ID,
    F_CORRELATION_ID,
    F_TIMEOUT,
    F_JSON,
    F_INSTANCE,
    F_ALL,
    F_COUNT
};

static const char *const flag_names[F_COUNT] = {
    "--aggregate", "--from-seq",   "--from-time",  "--keep-old",       "--at-seq",
    "--at-time",   "--at-version", "--command-id", "--correlation-id", "--timeout",
    "--json",      "--instance",   "--all"};

/* Store the value of one flag; 0 or -1 after printing why. */
static int set_flag(cli_opts *o, enum cli_flag which, const char *val)
{
    char why[128];
    uint64_t n = 0;
    int rc = 0;
    switch (which) {
    case F_AGGREGATE:
    case F_COMMAND_ID:
    case F_CORRELATION_ID:
        /* An empty id would be no id: a retry with "$ID" unset would then take effect twice. */
        if (*val == 0) {
            cli_error("%s needs a value, not an empty string", flag_names[which]);
            return -1;
        }
        if (which != F_AGGREGATE && !jl_valid_id(val)) {
            cli_error("%s must be 1 to %d printable ASCII characters without spaces, not '%s'",
                      flag_names[which], JL_MAX_ID_LEN, val);
            return -1;
        }
        *(which == F_AGGREGATE    ? &o->aggregate
          : which == F_COMMAND_ID ? &o->command_id
                                  : &o->correlation_id) = val;
        break;
    case F_KEEP_OLD:
        o->keep_old = true;
        break;
    case F_JSON:
        o->json = true;
        break;
    case F_ALL:
        o->all = true;
        break;
    case F_INSTANCE:
        /* It goes into a subject: a '.' or a space would reach another one. */
        if (!jl_valid_name(val)) {
            cli_error("--instance needs a projector instance's durable name, 1 to %d letters, "
                      "digits, '_' and '-', not '%s'",
                      JL_NAME_MAX - 1, val);
            return -1;
        }
        o->instance = val;
        break;
    case F_TIMEOUT:
        rc = parse_u64(val, &n) != 0 || n == 0 || n > 600000 ? -1 : 0;
        if (rc != 0)
            cli_error("--timeout needs milliseconds from 1 to 600000, not '%s'", val);
        else
            o->timeout_ms = (int64_t)n;
        break;
    case F_FROM_TIME:
    case F_AT_TIME:
        rc = cli_parse_time(which == F_AT_TIME ? &o->at_time_ns : &o->from_time_ns, val, why,
                            sizeof(why));
        if (rc != 0)
            cli_error("%s '%s' is not an RFC 3339 time (%s); e.g. 2026-11-26T12:00:00Z or "
                      "2026-11-26T13:00:00.5+01:00",
                      flag_names[which], val, why);
        else if (which == F_AT_TIME)
            o->has_at_time = true;
        else
            o->has_from_time = true;
        break;
    case F_FROM_SEQ:
    case F_AT_SEQ:
    case F_AT_VERSION:
        /* 0 means "not set" in the requests: --at-* need 1 or more, --from-seq 0 is the start. */
        /* Past 2^63 - 1 the server refuses the number itself (a bad request, not "nothing
         * there"); no stream gets that far. */
        rc = parse_u64(val, &n) != 0 || (n == 0 && which != F_FROM_SEQ) || n > INT64_MAX ? -1 : 0;
        if (rc != 0)
            cli_error("%s needs a whole number from %d to %" PRId64 ", not '%s'", flag_names[which],
                      which == F_FROM_SEQ ? 0 : 1, INT64_MAX, val);
        else
            *(which == F_FROM_SEQ ? &o->from_seq
              : which == F_AT_SEQ ? &o->at_seq
                                  : &o->at_version) = n;
        break;
    case F_COUNT:
        break;
    }
    if (rc == 0)
        o->given |= 1u << which;
    if (rc == 0 && (which == F_AT_SEQ || which == F_AT_TIME || which == F_AT_VERSION))
        o->n_at++;
    return rc;
}

/* Take the CLI's own flags out of argv (they are not service configuration). */
static int take_cli_flags(cli_opts *o, int *argc, char **argv)
{
    int w = 1;
    for (int r = 1; r < *argc; r++) {
        const char *a = argv[r];
        int which = -1;
        const char *val = NULL;
        for (int k = 0; k < F_COUNT; k++) {
            size_t n = strlen(flag_names[k]);
            if (strncmp(a, flag_names[k], n) == 0 && (a[n] == 0 || a[n] == '=')) {
                which = k;
                val = a[n] == '=' ? a + n + 1 : NULL;
            }
        }
        if (which < 0) {
            /* A setting's flag ("--nats-url"), whose value is the next argument, even one that
             * looks like a flag of ours ("--nats-url --json status"): the configuration then
             * refuses it, naming the flag, rather than taking "status" for the URL. */
            if (strncmp(a, "--", 2) == 0 && a[2] != 0 && strchr(a, '=') == NULL &&
                strcmp(a, "--help") != 0 && r + 1 < *argc)
                argv[w++] = argv[r++];
            argv[w++] = argv[r];
            continue;
        }
        bool is_switch = which == F_KEEP_OLD || which == F_JSON || which == F_ALL;
        if (is_switch && val != NULL) {
            cli_error("%s takes no value", flag_names[which]);
            return -1;
        }
        if ((o->given & (1u << which)) != 0) {
            /* Which one was meant? A retry's --command-id replaced by another would run twice.
             * A switch twice is harmless, but refused alike: one rule, as documented. */
            cli_error("%s given twice", flag_names[which]);
            return -1;
        }
        if (val == NULL && !is_switch) {
            if (r + 1 >= *argc) {
                cli_error("%s needs a value", flag_names[which]);
                return -1;
            }
            val = argv[++r];
            if (strncmp(val, "--", 2) == 0) {
                /* "--command-id --json": a forgotten value ("--command-id=--x" is one). */
                cli_error("%s needs a value, not the flag '%s'", flag_names[which], val);
                return -1;
            }
        }
        if (set_flag(o, (enum cli_flag)which, val) != 0)
            return -1;
    }
    *argc = w;
    argv[w] = NULL;
    return 0;
}

/* `jetledger bench ...` is jetledger-bench from the same directory, with the same arguments. */
static int exec_bench(char **argv)
{
    char self[PATH_MAX], path[PATH_MAX + 32];
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (n <= 0) {
        cli_error("cannot find this binary's directory (/proc/self/exe): %s", strerror(errno));
        return CLI_FAILED;
    }
    self[n] = 0;
    char *slash = strrchr(self, '/');
    if (slash != NULL)
        *slash = 0;
    snprintf(path, sizeof(path), "%s/jetledger-bench", self);
    /* argv[1] ("bench") becomes the program name; argv stays NULL-terminated. */
    argv[1] = path;
    execv(path, argv + 1);
    cli_error("cannot run %s: %s (build it: cmake --build build --target jetledger-bench)", path,
              strerror(errno));
    return CLI_FAILED;
}

int main(int argc, char **argv)
{
#define B(f) (1u << (f))
    static const struct {
        const char *name;
        int (*fn)(cli_ctx *);
        unsigned flags; /* the CLI flags this subcommand reads (--timeout: all) */
    } subs[] = {
        {"command", cli_command, B(F_COMMAND_ID) | B(F_CORRELATION_ID)},
        {"query", cli_query, B(F_CORRELATION_ID)},
        {"events", cli_events, B(F_AGGREGATE) | B(F_FROM_SEQ)},
        {"history", cli_history, 0},
        {"state", cli_state, B(F_AT_SEQ) | B(F_AT_TIME) | B(F_AT_VERSION)},
        {"rebuild", cli_rebuild, B(F_FROM_SEQ) | B(F_FROM_TIME) | B(F_KEEP_OLD) | B(F_INSTANCE)},
        {"verify", cli_verify, B(F_INSTANCE)},
        {"dead-letters", cli_dead_letters, B(F_INSTANCE)},
        {"outbox", cli_outbox, B(F_ALL) | B(F_INSTANCE)},
        {"status", cli_status, B(F_JSON)},
        {"ping", cli_ping, 0},
    };
    cli_ctx ctx;
    char err[512];
    int pos[16], npos = 0;

    if (argc >= 2 && strcmp(argv[1], "bench") == 0)
        return exec_bench(argv);
    /* A closed pipe (`jetledger events orders | head -1`) is an output that cannot be written:
     * exit 4 and say so rather than die of SIGPIPE (a rebuild being followed is then still
     * followed to its end). Set after the bench branch: an ignored signal stays ignored across
     * execv. */
    signal(SIGPIPE, SIG_IGN);
    memset(&ctx, 0, sizeof(ctx));
    ctx.opts.timeout_ms = 15000;
    jl_config_init(&ctx.cfg);
    if (take_cli_flags(&ctx.opts, &argc, argv) != 0)
        return CLI_USAGE;
    if (ctx.opts.n_at > 1) {
        cli_error("give at most one of --at-seq, --at-time and --at-version");
        return CLI_USAGE;
    }
    if ((ctx.opts.given & (1u << F_FROM_SEQ)) && ctx.opts.has_from_time) {
        cli_error("give --from-seq or --from-time, not both");
        return CLI_USAGE;
    }
    /* Only what the CLI uses: the services' settings are refused, not taken and ignored. */
    static const char *const settings[] = {"nats-url",     "creds",           "tls-ca",
                                           "tls-hostname", "request-timeout", NULL};
    jl_status s =
        jl_config_load_only(&ctx.cfg, settings, argc, argv, pos, 16, &npos, err, sizeof(err));
    /* "help" whatever else is wrong (a bad variable in the environment): it says what is right. */
    if (s == JL_ERR_STOPPED || (npos > 0 && strcmp(argv[pos[0]], "help") == 0)) {
        char opts[1024];
        jl_config_usage_into(opts, sizeof(opts), settings);
        printf("%s\n%s", usage, opts);
        if (fflush(stdout) != 0 || ferror(stdout)) {
            cli_error("cannot write the output: %s", strerror(errno));
            return CLI_FAILED;
        }
        return CLI_OK;
    }
    if (s != JL_OK) {
        cli_error("%s", err);
        return CLI_USAGE;
    }
    /* Settings that cannot work are usage errors (2), not an unreachable server (3). */
    if (ctx.cfg.nats_url[0] == 0) {
        cli_error("--nats-url is empty");
        return CLI_USAGE;
    }
    if (ctx.cfg.creds[0] != 0 && access(ctx.cfg.creds, R_OK) != 0) {
        cli_error("cannot read the credentials file %s (--creds, JL_CREDS): %s", ctx.cfg.creds,
                  strerror(errno));
        return CLI_USAGE;
    }
    /* Else the library's "cannot load CA certificates from ...: SSL Error" says no more. */
    if (ctx.cfg.tls_ca[0] != 0) {
        struct stat ca;
        const char *bad = NULL;
        if (stat(ctx.cfg.tls_ca, &ca) != 0 || access(ctx.cfg.tls_ca, R_OK) != 0)
            bad = strerror(errno);
        else if (!S_ISREG(ca.st_mode))
            bad = "not a regular file";
        if (bad != NULL) {
            cli_error("cannot read the CA certificates file %s (--tls-ca, JL_TLS_CA): %s",
                      ctx.cfg.tls_ca, bad);
            return CLI_USAGE;
        }
    }
    if (npos == 0) {
        fputs(usage, stderr);
        return CLI_USAGE;
    }
    /* Logs from the library would mix with the output: only errors, on stderr. */
    jl_log_open(stderr, JL_LOG_ERROR, "jetledger");
    static char *args[16];
    for (int i = 1; i < npos; i++)
        args[i - 1] = argv[pos[i]];
    ctx.argc = npos - 1;
    ctx.argv = args;
    for (size_t i = 0; i < sizeof(subs) / sizeof(subs[0]); i++) {
        if (strcmp(argv[pos[0]], subs[i].name) != 0)
            continue;
        /* Every subcommand but status names a service or projector first, which goes into
         * NATS subjects: a blank would split the protocol line, a '.' or wildcard reach other
         * subjects. */
        if (subs[i].fn != cli_status && ctx.argc > 0 && !jl_valid_name(ctx.argv[0])) {
            cli_error("'%s' is not a service or projector name (1 to %d letters, digits, '_', "
                      "'-')",
                      ctx.argv[0], JL_NAME_MAX - 1);
            return CLI_USAGE;
        }
        unsigned extra = ctx.opts.given & ~(subs[i].flags | B(F_TIMEOUT));
        for (int k = 0; k < F_COUNT; k++) {
            if (extra & (1u << k)) {
                cli_error("%s does not apply to %s (see jetledger help)", flag_names[k],
                          subs[i].name);
                return CLI_USAGE;
            }
        }
        int rc = subs[i].fn(&ctx);
        jl_conn_release_library(1000); /* its connection is closed */
        /* Output lost (a full disk, a closed pipe) is a failure, whatever was read. */
        int e = fflush(stdout) != 0 ? errno : 0;
        if (e != 0 || ferror(stdout)) {
            cli_error("cannot write the output%s%s", e ? ": " : "", e ? strerror(e) : "");
            if (rc == CLI_OK)
                rc = CLI_FAILED;
        }
        return rc;
    }
    if (strcmp(argv[pos[0]], "bench") == 0)
        cli_error("bench comes first, with its own options: jetledger bench [--quick] ... (it "
                  "starts its own nats-server; see jetledger bench --help)");
    else
        cli_error("unknown subcommand '%s' (see jetledger help)", argv[pos[0]]);
    return CLI_USAGE;
}
