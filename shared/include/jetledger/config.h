/*
 * Service configuration: defaults, then environment variables, then command-line flags.
 *
 * Every service reads the same keys (a key a service does not use is harmless), so operators
 * learn one set. `jl_config_usage()` lists them; README "Configuration" documents them.
 * jl_config is plain data: initialise with jl_config_init(), no cleanup needed.
 */
#ifndef JETLEDGER_CONFIG_H
#define JETLEDGER_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "jetledger/log.h"
#include "jetledger/status.h"

typedef struct jl_config {
    char nats_url[1024]; /**< NATS_URL / --nats-url: comma-separated server list */
    char creds[512];     /**< JL_CREDS / --creds: NATS credentials file, "" = none */
    char tls_ca[512];    /**< JL_TLS_CA / --tls-ca: CA certificates (PEM), besides the system's */
    char tls_hostname[256];     /**< JL_TLS_HOSTNAME / --tls-hostname: "" = the URLs' host */
    char data_dir[512];         /**< JL_DATA_DIR / --data-dir: where read models live */
    char name[64];              /**< JL_NAME / --name: instance name, e.g. the pod name */
    char durable[64];           /**< JL_DURABLE / --durable: projector consumer ("" = its name) */
    char ready_file[512];       /**< JL_READY_FILE / --ready-file: "" = none (see jl_app) */
    char alive_file[512];       /**< JL_ALIVE_FILE / --alive-file: "" = none (see jl_app) */
    int replicas;               /**< JL_REPLICAS / --replicas: 1..5; 0 = auto (3 on a cluster) */
    jl_log_level log_level;     /**< JL_LOG_LEVEL / --log-level */
    int64_t duplicate_window_s; /**< JL_DUPLICATE_WINDOW / --duplicate-window: seconds */
    int64_t max_age_s;          /**< JL_MAX_AGE / --max-age: seconds, 0 = keep forever */
    int64_t max_bytes;          /**< JL_MAX_BYTES / --max-bytes: stream bytes, -1 = no limit */
    int batch;                  /**< JL_BATCH / --batch: projector fetch batch size */
    int command_retries;        /**< JL_COMMAND_RETRIES / --command-retries: on conflicts */
    int64_t request_timeout_ms; /**< JL_REQUEST_TIMEOUT / --request-timeout: JetStream calls */
    int cache_size;             /**< JL_CACHE_SIZE / --cache-size: aggregates a producer caches */
    int max_commands;   /**< JL_MAX_COMMANDS / --max-commands: a producer holds at once (0: default)
                         */
    int snapshot_every; /**< JL_SNAPSHOT_EVERY / --snapshot-every: events, 0 = never */
    int64_t rebuild_max_mb;   /**< JL_REBUILD_MAX_MB / --rebuild-max-mb: new file cap, 0 = none */
    int64_t command_ttl_s;    /**< JL_COMMAND_TTL / --command-ttl: command ids kept, 0 = off */
    int64_t outbox_keep_s;    /**< JL_OUTBOX_KEEP / --outbox-keep: answered rows, 0 = forever */
    int64_t serve_lag;        /**< JL_SERVE_LAG / --serve-lag: events a projector may be behind its
                                 streams and answer queries (else it first catches up); -1 = at once */
    int64_t stats_interval_s; /**< JL_STATS_INTERVAL / --stats-interval: seconds between a
                                 service's "stats" log lines, 0 = none */
} jl_config;

/** Commands a producer holds at once unless configured (jl_config.max_commands). */
#define JL_MAX_COMMANDS_DEFAULT 65536

/** Longest name of a service, projector or durable consumer (JL_NAME_MAX - 1 characters). */
#define JL_NAME_MAX 64

/**
 * Whether @p s can name a service, a projector or a durable consumer: 1 to JL_NAME_MAX - 1
 * letters, digits, '_' and '-'. Such names go into NATS subjects ("<name>.query.*") and file
 * names ("<name>.rebuild-<ms>.db"), where a '.', a wildcard, a blank or a '/' would reach
 * something else. The services and the CLI check the same.
 */
bool jl_valid_name(const char *s);

/** Set the defaults (NATS_URL nats://127.0.0.1:4222, data dir ./data, replicas 0 = auto: 3 on a
 * cluster of three servers or more, else 1; info, ...). */
void jl_config_init(jl_config *cfg);

/**
 * Override @p cfg from @p argv (flags `--key value` or `--key=value`; argv[0] is skipped), then
 * from the environment for the keys no flag set: a flag wins over its variable, and a bad
 * variable a flag overrides is not read. Arguments that are not flags are left for the caller:
 * their indexes are stored in @p out_positional (up to @p max_positional, count in
 * @p out_n_positional, set even when a variable is refused; pass NULL and 0 to reject any).
 * @return JL_OK; JL_ERR_INVALID for an unknown flag, a missing value or a bad number, with the
 *         reason in @p err. "--help" gives JL_ERR_STOPPED, before any variable is read, so main
 *         can print jl_config_usage() whatever the environment holds.
 */
jl_status jl_config_load(jl_config *cfg, int argc, char **argv, int *out_positional,
                         int max_positional, int *out_n_positional, char *err, size_t errlen);

/**
 * jl_config_load() for a program that reads only some settings, the keys named in @p only
 * (flag names without "--", NULL-terminated; NULL: all). The others' environment variables are
 * not read (they may be there for services run from the same shell), and their flags are
 * refused as JL_ERR_INVALID, saying so, rather than taken and ignored.
 */
jl_status jl_config_load_only(jl_config *cfg, const char *const *only, int argc, char **argv,
                              int *out_positional, int max_positional, int *out_n_positional,
                              char *err, size_t errlen);

/** Text listing every flag, its variable and its default (static, do not free). */
const char *jl_config_usage(void);

/** jl_config_usage() of the keys in @p only (NULL: all) into @p text, cut to @p size. */
void jl_config_usage_into(char *text, size_t size, const char *const *only);

#endif /* JETLEDGER_CONFIG_H */
