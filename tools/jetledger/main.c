/*
 * jetledger: the command-line client. Sends commands and queries as JSON (converted to and
 * from protobuf through the generated descriptors, so new messages need no CLI code) and
 * prints the events of a stream.
 */
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "jetledger/log.h"

static const char usage[] =
    "usage: jetledger [options] <subcommand> ...\n"
    "\n"
    "  command <service> <Command> '<json>' [--command-id ID] [--correlation-id ID]\n"
    "      send a command, e.g. command orders CreateOrder '{\"customer_id\":\"c1\"}'\n"
    "  query <projector> <Query> '<json>'\n"
    "      ask a read model, e.g. query order_summary ListOrders '{\"status\":\"placed\"}'\n"
    "  events <service> [--aggregate ID] [--from-seq N]\n"
    "      print the stored events, one JSON object a line\n"
    "\n"
    "  --timeout MS   how long to wait for a reply (default 5000)\n"
    "\n"
    "Exit status: 0 ok, 1 the service refused (the error is printed), 2 bad usage,\n"
    "3 NATS or the service unreachable, 4 other failure.\n";

void cli_error(const char *fmt, ...)
{
    va_list ap;
    fputs("jetledger: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

void cli_stream_name(char *out, size_t n, const char *service)
{
    size_t i = 0;
    for (; service[i] && i + 1 < n; i++)
        out[i] = (char)toupper((unsigned char)service[i]);
    out[i] = 0;
}

jl_conn *cli_connect(const cli_ctx *ctx)
{
    jl_conn *c = NULL;
    char err[1024];
    jl_status s = jl_conn_open(&c, &ctx->cfg, "jetledger-cli", 0, err, sizeof(err));
    if (s != JL_OK) {
        cli_error("%s", err);
        return NULL;
    }
    return c;
}

static int parse_u64(const char *s, uint64_t *out)
{
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0 || end == s || *end != 0 || s[0] == '-')
        return -1;
    *out = v;
    return 0;
}

/* Take the CLI's own flags out of argv (they are not service configuration). */
static int take_cli_flags(cli_opts *o, int *argc, char **argv)
{
    int w = 1;
    for (int r = 1; r < *argc; r++) {
        const char *a = argv[r];
        const char *names[] = {"--aggregate", "--from-seq", "--command-id", "--correlation-id",
                               "--timeout"};
        int which = -1;
        const char *val = NULL;
        for (int k = 0; k < 5; k++) {
            size_t n = strlen(names[k]);
            if (strncmp(a, names[k], n) == 0 && (a[n] == 0 || a[n] == '=')) {
                which = k;
                val = a[n] == '=' ? a + n + 1 : NULL;
            }
        }
        if (which < 0) {
            argv[w++] = argv[r];
            continue;
        }
        if (val == NULL) {
            if (r + 1 >= *argc) {
                cli_error("%s needs a value", names[which]);
                return -1;
            }
            val = argv[++r];
        }
        uint64_t n = 0;
        switch (which) {
        case 0:
            o->aggregate = val;
            break;
        case 1:
            if (parse_u64(val, &o->from_seq) != 0) {
                cli_error("--from-seq needs a whole number, not '%s'", val);
                return -1;
            }
            break;
        case 2:
            o->command_id = val;
            break;
        case 3:
            o->correlation_id = val;
            break;
        case 4:
            if (parse_u64(val, &n) != 0 || n == 0 || n > 600000) {
                cli_error("--timeout needs milliseconds from 1 to 600000, not '%s'", val);
                return -1;
            }
            o->timeout_ms = (int64_t)n;
            break;
        }
    }
    *argc = w;
    argv[w] = NULL;
    return 0;
}

int main(int argc, char **argv)
{
    static const struct {
        const char *name;
        int (*fn)(cli_ctx *);
    } subs[] = {
        {"command", cli_command},
        {"query", cli_query},
        {"events", cli_events},
    };
    cli_ctx ctx;
    char err[512];
    int pos[16], npos = 0;

    memset(&ctx, 0, sizeof(ctx));
    ctx.opts.timeout_ms = 5000;
    jl_config_init(&ctx.cfg);
    if (take_cli_flags(&ctx.opts, &argc, argv) != 0)
        return CLI_USAGE;
    jl_status s = jl_config_load(&ctx.cfg, argc, argv, pos, 16, &npos, err, sizeof(err));
    if (s == JL_ERR_STOPPED || (s == JL_OK && npos > 0 && strcmp(argv[pos[0]], "help") == 0)) {
        printf("%s\n%s", usage, jl_config_usage());
        return CLI_OK;
    }
    if (s != JL_OK) {
        cli_error("%s", err);
        return CLI_USAGE;
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
        if (strcmp(argv[pos[0]], subs[i].name) == 0)
            return subs[i].fn(&ctx);
    }
    cli_error("unknown subcommand '%s' (see jetledger help)", argv[pos[0]]);
    return CLI_USAGE;
}
