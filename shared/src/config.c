#include "jetledger/config.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef enum { K_STR, K_INT, K_I64, K_LEVEL } kind;

typedef struct key {
    const char *flag; /* without the leading "--" */
    const char *env;
    kind kind;
    size_t offset;
    size_t size;      /* K_STR: buffer size */
    int64_t min, max; /* K_INT / K_I64 */
    const char *help;
} key;

#define STR(f, e, m, h)                                                                            \
    {                                                                                              \
        f, e, K_STR, offsetof(jl_config, m), sizeof(((jl_config *)0)->m), 0, 0, h                  \
    }
#define INT(f, e, m, lo, hi, h)                                                                    \
    {                                                                                              \
        f, e, K_INT, offsetof(jl_config, m), 0, lo, hi, h                                          \
    }
#define I64(f, e, m, lo, hi, h)                                                                    \
    {                                                                                              \
        f, e, K_I64, offsetof(jl_config, m), 0, lo, hi, h                                          \
    }

static const key keys[] = {
    STR("nats-url", "NATS_URL", nats_url, "NATS servers, comma-separated"),
    STR("creds", "JL_CREDS", creds, "NATS credentials file"),
    STR("tls-ca", "JL_TLS_CA", tls_ca,
        "CA certificates (PEM file) to trust for TLS servers, besides the system's"),
    STR("tls-hostname", "JL_TLS_HOSTNAME", tls_hostname,
        "name every TLS server's certificate must carry (default: the URLs' host)"),
    STR("data-dir", "JL_DATA_DIR", data_dir, "directory of read-model databases"),
    STR("name", "JL_NAME", name, "instance name (logs, connection name)"),
    STR("durable", "JL_DURABLE", durable, "projector's durable consumer name"),
    STR("ready-file", "JL_READY_FILE", ready_file,
        "file written once the service answers, removed when it stops (readiness probes)"),
    STR("alive-file", "JL_ALIVE_FILE", alive_file,
        "file rewritten every 0.5 s while the service's work goes on (liveness probes)"),
    INT("replicas", "JL_REPLICAS", replicas, 0, 5,
        "stream replicas, 0 = 3 on a cluster of 3+, else 1"),
    {"log-level", "JL_LOG_LEVEL", K_LEVEL, offsetof(jl_config, log_level), 0, 0, 0,
     "debug, info, warn or error"},
    I64("duplicate-window", "JL_DUPLICATE_WINDOW", duplicate_window_s, 1, 7 * 24 * 3600,
        "seconds JetStream remembers Nats-Msg-Id"),
    I64("max-age", "JL_MAX_AGE", max_age_s, 0, INT64_MAX / 1000000000, "seconds, 0 = forever"),
    I64("max-bytes", "JL_MAX_BYTES", max_bytes, -1, INT64_MAX, "stream size cap, -1 (or 0) = none"),
    INT("batch", "JL_BATCH", batch, 1, 8192, "projector fetch batch size"),
    INT("command-retries", "JL_COMMAND_RETRIES", command_retries, 0, 100,
        "retries of a command that lost a concurrency race"),
    I64("request-timeout", "JL_REQUEST_TIMEOUT", request_timeout_ms, 100, 600000,
        "milliseconds for JetStream calls"),
    INT("cache-size", "JL_CACHE_SIZE", cache_size, 0, 10000000,
        "aggregate states a producer keeps in memory"),
    INT("max-commands", "JL_MAX_COMMANDS", max_commands, 1, 10000000,
        "commands a producer holds at once; beyond, answered unavailable"),
    INT("snapshot-every", "JL_SNAPSHOT_EVERY", snapshot_every, 0, 1000000,
        "events between aggregate snapshots, 0 = none"),
    I64("rebuild-max-mb", "JL_REBUILD_MAX_MB", rebuild_max_mb, 0, 1 << 30,
        "size cap of a rebuild's new file in MiB, 0 = none"),
    I64("command-ttl", "JL_COMMAND_TTL", command_ttl_s, 0, 365LL * 24 * 3600,
        "seconds a producer remembers client command ids, 0 = off"),
    I64("outbox-keep", "JL_OUTBOX_KEEP", outbox_keep_s, 0, 10 * 365LL * 24 * 3600,
        "seconds a process manager keeps answered outbox rows, 0 = forever"),
    I64("serve-lag", "JL_SERVE_LAG", serve_lag, -1, INT64_MAX,
        "events a projector may be behind its streams at start and still answer queries; "
        "further behind it catches up first; -1 = answer at once"),
    I64("stats-interval", "JL_STATS_INTERVAL", stats_interval_s, 0, 24 * 3600,
        "seconds between a service's \"stats\" log lines (its counters, info), 0 = none"),
};
#define N_KEYS (sizeof(keys) / sizeof(keys[0]))

void jl_config_init(jl_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    snprintf(cfg->nats_url, sizeof(cfg->nats_url), "nats://127.0.0.1:4222");
    snprintf(cfg->data_dir, sizeof(cfg->data_dir), "./data");
    cfg->replicas = 0;
    cfg->log_level = JL_LOG_INFO;
    cfg->duplicate_window_s = 120;
    cfg->max_age_s = 0;
    cfg->max_bytes = -1;
    cfg->batch = 256;
    cfg->command_retries = 5;
    cfg->request_timeout_ms = 10000;
    cfg->cache_size = 10000;
    cfg->max_commands = JL_MAX_COMMANDS_DEFAULT;
    cfg->snapshot_every = 100;
    cfg->command_ttl_s = 7 * 24 * 3600;
    cfg->outbox_keep_s = 7 * 24 * 3600;
    cfg->serve_lag = 1000;
    cfg->stats_interval_s = 60;
}

static jl_status set_value(jl_config *cfg, const key *k, const char *v, const char *origin,
                           char *err, size_t errlen)
{
    char *base = (char *)cfg + k->offset;
    switch (k->kind) {
    case K_STR:
        if (strlen(v) >= k->size) {
            snprintf(err, errlen, "%s: value longer than %zu bytes", origin, k->size - 1);
            return JL_ERR_INVALID;
        }
        /* Checked here, as bad usage at once, not once NATS has been reached (or waited for
         * 30 s): what goes into subjects. (No value is empty: the caller refuses that.) */
        if (k->offset == offsetof(jl_config, durable) && !jl_valid_name(v)) {
            snprintf(err, errlen,
                     "%s: '%.64s' must be 1 to %d letters, digits, '_' and '-' (it goes into "
                     "subjects)",
                     origin, v, JL_NAME_MAX - 1);
            return JL_ERR_INVALID;
        }
        /* The client library writes the connection name into its CONNECT JSON unescaped: a
         * quote or a backslash there has the server refuse every connect ("cannot reach"). */
        if (k->offset == offsetof(jl_config, name) && strpbrk(v, "\"\\") != NULL) {
            snprintf(err, errlen,
                     "%s: '%.64s' must not hold '\"' or '\\' (it names the connection)", origin, v);
            return JL_ERR_INVALID;
        }
        for (const unsigned char *q = (const unsigned char *)v;
             k->offset == offsetof(jl_config, name) && *q; q++) {
            if (*q < 0x20 || *q == 0x7f) {
                snprintf(err, errlen, "%s: the name holds a control character", origin);
                return JL_ERR_INVALID;
            }
        }
        memcpy(base, v, strlen(v) + 1);
        return JL_OK;
    case K_LEVEL:
        if (jl_log_level_parse((jl_log_level *)(void *)base, v) != JL_OK) {
            snprintf(err, errlen, "%s: '%s' is not one of debug, info, warn, error", origin, v);
            return JL_ERR_INVALID;
        }
        return JL_OK;
    case K_INT:
    case K_I64: {
        char *end = NULL;
        errno = 0;
        /* Digits, with a minus sign at most: strtoll would also take blanks and a '+'. */
        bool digits = isdigit((unsigned char)v[0]) || (v[0] == '-' && isdigit((unsigned char)v[1]));
        long long n = digits ? strtoll(v, &end, 10) : 0;
        if (!digits || errno != 0 || end == v || *end != 0 || n < k->min || n > k->max) {
            snprintf(err, errlen, "%s: '%s' is not a whole number from %" PRId64 " to %" PRId64,
                     origin, v, k->min, k->max);
            return JL_ERR_INVALID;
        }
        /* JetStream takes 0 for "no cap" and reports -1: kept as 0, the stream would be
         * updated at every start. */
        if (k->offset == offsetof(jl_config, max_bytes) && n == 0)
            n = -1;
        if (k->kind == K_INT)
            *(int *)(void *)base = (int)n;
        else
            *(int64_t *)(void *)base = (int64_t)n;
        return JL_OK;
    }
    }
    return JL_ERR_INTERNAL;
}

bool jl_valid_name(const char *s)
{
    size_t n = s != NULL ? strlen(s) : 0;
    if (n == 0 || n >= JL_NAME_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        if (!isalnum((unsigned char)s[i]) && s[i] != '_' && s[i] != '-')
            return false;
    }
    return true;
}

/* Whether @p k is among @p only (flag names; NULL: every key is). */
static bool in_scope(const key *k, const char *const *only)
{
    for (; only != NULL && *only != NULL; only++) {
        if (strcmp(*only, k->flag) == 0)
            return true;
    }
    return only == NULL;
}

jl_status jl_config_load(jl_config *cfg, int argc, char **argv, int *out_positional,
                         int max_positional, int *out_n_positional, char *err, size_t errlen)
{
    return jl_config_load_only(cfg, NULL, argc, argv, out_positional, max_positional,
                               out_n_positional, err, errlen);
}

jl_status jl_config_load_only(jl_config *cfg, const char *const *only, int argc, char **argv,
                              int *out_positional, int max_positional, int *out_n_positional,
                              char *err, size_t errlen)
{
    jl_status s = JL_OK;
    int npos = 0;
    char origin[96];

    bool by_flag[N_KEYS] = {false};

    /* The flags first, then the environment for what no flag set: --help (and a CLI's "help")
     * answers whatever the environment holds, and a flag overrides a bad variable. */
    for (int a = 1; a < argc && s == JL_OK; a++) {
        const char *arg = argv[a];
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            s = JL_ERR_STOPPED;
            break;
        }
        if (strncmp(arg, "--", 2) != 0 || arg[2] == 0) {
            if (npos >= max_positional || out_positional == NULL) {
                snprintf(err, errlen, "unexpected argument '%s'", arg);
                s = JL_ERR_INVALID;
                break;
            }
            out_positional[npos++] = a;
            continue;
        }
        const char *name = arg + 2;
        const char *eq = strchr(name, '=');
        size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
        const key *k = NULL;
        for (size_t i = 0; i < N_KEYS; i++) {
            if (strlen(keys[i].flag) == nlen && strncmp(keys[i].flag, name, nlen) == 0)
                k = &keys[i];
        }
        if (k == NULL) {
            snprintf(err, errlen, "unknown flag '%.*s' (see --help)", (int)(nlen + 2), arg);
            s = JL_ERR_INVALID;
            break;
        }
        if (!in_scope(k, only)) {
            snprintf(err, errlen,
                     "--%s is a setting of the services, not of this program (see --help)",
                     k->flag);
            s = JL_ERR_INVALID;
            break;
        }
        const char *v = eq ? eq + 1 : (a + 1 < argc ? argv[++a] : NULL);
        if (v == NULL) {
            snprintf(err, errlen, "flag --%s needs a value", k->flag);
            s = JL_ERR_INVALID;
            break;
        }
        if (eq == NULL && strncmp(v, "--", 2) == 0) {
            /* "--name --log-level=debug": a forgotten value, not a name ("--name=--x" is). */
            snprintf(err, errlen, "flag --%s needs a value, not the flag '%.64s'", k->flag, v);
            s = JL_ERR_INVALID;
            break;
        }
        if (*v == 0) {
            /* "--durable $INSTANCE" with it unset: the default, shared with another instance,
             * would be a quiet surprise. (An empty environment variable is unset.) */
            snprintf(err, errlen, "flag --%s needs a value, not an empty one", k->flag);
            s = JL_ERR_INVALID;
            break;
        }
        snprintf(origin, sizeof(origin), "flag --%s", k->flag);
        s = set_value(cfg, k, v, origin, err, errlen);
        by_flag[k - keys] = true;
    }
    for (size_t i = 0; i < N_KEYS && s == JL_OK; i++) {
        if (by_flag[i] || !in_scope(&keys[i], only))
            continue; /* set by a flag, or another program's setting left for it */
        const char *v = getenv(keys[i].env);
        if (v != NULL && *v != 0) {
            snprintf(origin, sizeof(origin), "environment variable %s", keys[i].env);
            s = set_value(cfg, &keys[i], v, origin, err, errlen);
        }
    }
    if (s == JL_OK && cfg->max_age_s > 0 && cfg->duplicate_window_s > cfg->max_age_s) {
        /* JetStream refuses such a stream; a service would retry its creation for ever. */
        snprintf(err, errlen,
                 "the duplicate window (%" PRId64 " s, --duplicate-window) must not be longer "
                 "than the stream's max age (%" PRId64 " s, --max-age)",
                 cfg->duplicate_window_s, cfg->max_age_s);
        s = JL_ERR_INVALID;
    }
    if (out_n_positional != NULL)
        *out_n_positional = npos;
    return s;
}

const char *jl_config_usage(void)
{
    static char text[4096];
    static int built = 0;
    if (!built) {
        jl_config_usage_into(text, sizeof(text), NULL);
        built = 1;
    }
    return text;
}

void jl_config_usage_into(char *text, size_t size, const char *const *only)
{
    jl_config d;
    jl_config_init(&d);
    size_t o = 0;
    if (size == 0)
        return;
    text[0] = 0;
    o += (size_t)snprintf(text + o, size - o, "Options (flag, environment variable, default):\n");
    for (size_t i = 0; i < N_KEYS && o < size; i++) {
        const key *k = &keys[i];
        char def[128] = "";
        const char *base = (const char *)&d + k->offset;
        if (!in_scope(k, only))
            continue;
        if (k->kind == K_STR)
            snprintf(def, sizeof(def), "%s", base);
        else if (k->kind == K_INT)
            snprintf(def, sizeof(def), "%d", *(const int *)(const void *)base);
        else if (k->kind == K_I64)
            snprintf(def, sizeof(def), "%" PRId64, *(const int64_t *)(const void *)base);
        else
            snprintf(def, sizeof(def), "info");
        o += (size_t)snprintf(text + o, size - o, "  --%-18s %-20s %-24s %s\n", k->flag, k->env,
                              def[0] ? def : "(none)", k->help);
    }
}
