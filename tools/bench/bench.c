/*
 * jetledger-bench: measures the jetledger pipeline (the orders producer and the order_summary
 * projector, run as processes) against the raw limits of what it is made of (JetStream publish
 * and consume, SQLite upserts), each figure as a ratio to a limit measured in the same run on the
 * same machine. See `jetledger-bench --help` and README "Performance".
 *
 * Phases, in this order (each prints progress lines on stderr):
 *   setup      nats-server in a temp dir, the producer
 *   creates    the round-robin orders; a projector ("live") catches up on them; memory
 *              baselines (producer, live projector); the raw stream's first event per subject
 *   figure 3   read-your-writes, and raw publish -> pull consumer; then the live projector stops
 *   figure 1   command throughput, and raw async publishes
 *   figure 2   command latency at a fixed rate, and raw sync publishes
 *   fill       commands until the stream holds --events events less what figure 5 adds
 *              (bounded in time)
 *   figure 5   latency on a long aggregate vs on fresh ones
 *   memory     producer memory; the stream seeded to --events if the commands fell short
 *   figure 4   catch-up of a fresh projector, then the raw ordered consumer and raw SQLite;
 *              projector memory
 *   rebuild    order_summary.admin.Rebuild over the whole stream
 */
#include "bench.h"

#include <errno.h>
#include <inttypes.h>
#include <libgen.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "jetledger/admin.pb-c.h"
#include "jetledger/conn.h"
#include "jetledger/config.h"
#include "orders/orders.pb-c.h"

#define REQUEST_TIMEOUT_MS 10000
#define CATCHUP_POLL_MS 100
#define CATCHUP_TIMEOUT_S 1800
#define REBUILD_POLL_MS 200
#define REBUILD_TIMEOUT_S 1800
#define LIVE_CATCHUP_TIMEOUT_S 600
#define FILL_CHUNK 50000

/* Set by the signal handler, read everywhere: the only mutable global (house rules). */
static volatile sig_atomic_t stop_signal;

static void on_signal(int sig)
{
    (void)sig;
    if (stop_signal) /* a second signal: stop waiting for a clean shutdown */
        _exit(130);
    stop_signal = 1;
}

bool bench_stopping(void)
{
    return stop_signal != 0;
}

jl_status bench_fail(bench *b, jl_status s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(b->err, sizeof(b->err), fmt, ap);
    va_end(ap);
    return s;
}

void bench_progress(const char *fmt, ...)
{
    char when[16] = "";
    time_t now = time(NULL);
    struct tm tm;
    va_list ap;
    if (localtime_r(&now, &tm) != NULL)
        strftime(when, sizeof(when), "%H:%M:%S", &tm);
    fprintf(stderr, "[%s] ", when);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    fflush(stderr);
}

void bench_note(bench *b, const char *fmt, ...)
{
    char text[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    size_t used = strlen(b->notes);
    snprintf(b->notes + used, sizeof(b->notes) - used, "%s%s", used ? "; " : "", text);
    bench_progress("note: %s", text);
}

int64_t bench_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

void bench_sleep_until(int64_t t_ns)
{
    struct timespec ts = {.tv_sec = (time_t)(t_ns / 1000000000LL),
                          .tv_nsec = (long)(t_ns % 1000000000LL)};
    if (t_ns <= bench_now_ns())
        return;
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR &&
           !bench_stopping()) {
    }
}

void bench_sleep_ms(int ms)
{
    bench_sleep_until(bench_now_ns() + (int64_t)ms * 1000000);
}

/* ---- options ---- */

static const char usage[] =
    "usage: jetledger-bench [--quick] [--out DIR] [options]\n"
    "\n"
    "Starts its own nats-server and the services (orders, order_summary from the directory of\n"
    "this binary), measures the pipeline against raw JetStream and SQLite in the same run, and\n"
    "prints a table; writes DIR/latest.json, DIR/latency.png, DIR/catchup.png and their data.\n"
    "\n"
    "  --quick            a small run (well under a minute): the smoke test\n"
    "  --out DIR          output directory (default bench-results)\n"
    "  --keep             keep the work directory (stores, databases, service logs)\n"
    "  --aggregates N     orders the commands go round-robin over (10000; quick 1000)\n"
    "  --window N         commands or raw publishes in flight (2000; quick 500)\n"
    "  --throughput N     AddItem commands timed for the throughput (200000; quick 10000)\n"
    "  --events N         stream length for catch-up, memory, rebuild (1000000; quick 20000)\n"
    "  --fill-seconds N   bound on filling the stream with commands, the rest is seeded\n"
    "                     (600; quick 30)\n"
    "  --batch N          projector batch, passed as JL_BATCH (default: the projector's own)\n"
    "  --nats-server PATH nats-server binary (default $JL_NATS_SERVER, PATH, /usr/sbin)\n"
    "\n"
    "Exit status: 0 when every figure was measured and is sane (whether or not targets are\n"
    "met), 1 when a phase failed, a command failed or a figure is not sane, 2 bad usage.\n";

static void opts_defaults(bench_opts *o, bool quick)
{
    jl_config cfg;
    char err[256];
    char *argv0[] = {"jetledger-bench", NULL};
    o->quick = quick;
    o->aggregates = quick ? 1000 : 10000;
    o->window = quick ? 500 : 2000;
    o->tput_commands = quick ? 10000 : 200000;
    o->lat_rate = 500;
    o->lat_samples = quick ? 500 : 5000;
    o->ryw_rate = 200;
    o->ryw_samples = quick ? 200 : 2000;
    o->long_events = quick ? 1000 : 10000;
    o->long_samples = quick ? 200 : 1000;
    o->events = quick ? 20000 : 1000000;
    o->fill_max_s = quick ? 30 : 600;
    /* The projector's batch as it will run: its default, or JL_BATCH from our environment. */
    jl_config_init(&cfg);
    if (jl_config_load(&cfg, 1, argv0, NULL, 0, NULL, err, sizeof(err)) != JL_OK)
        jl_config_init(&cfg);
    o->batch = cfg.batch;
}

static int parse_long(const char *flag, const char *v, long min, long max, long *out)
{
    char *end = NULL;
    errno = 0;
    long n = v ? strtol(v, &end, 10) : 0;
    if (v == NULL || errno != 0 || end == v || *end != 0 || n < min || n > max) {
        fprintf(stderr, "jetledger-bench: %s needs a number from %ld to %ld\n", flag, min, max);
        return -1;
    }
    *out = n;
    return 0;
}

/* 0 ok, 1 help printed, -1 bad usage (printed). */
static int parse_args(bench_opts *o, int argc, char **argv)
{
    bool quick = false;
    for (int i = 1; i < argc; i++)
        quick = quick || strcmp(argv[i], "--quick") == 0;
    opts_defaults(o, quick);
    snprintf(o->out_dir, sizeof(o->out_dir), "bench-results");
    for (int i = 1; i < argc; i++) {
        char flag[64];
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        const char *eq = strchr(a, '=');
        bool inline_value = strncmp(a, "--", 2) == 0 && eq != NULL;
        long n = 0;
        /* "--flag=value" as the services take it: the value is not the next argument. */
        if (inline_value) {
            snprintf(flag, sizeof(flag), "%.*s", (int)(eq - a), a);
            a = flag;
            v = eq + 1;
        }
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            fputs(usage, stdout);
            return 1;
        } else if (strcmp(a, "--quick") == 0) {
            continue;
        } else if (strcmp(a, "--keep") == 0) {
            o->keep = true;
            continue;
        } else if (strcmp(a, "--out") == 0 || strcmp(a, "--nats-server") == 0) {
            if (v == NULL || strlen(v) >= sizeof(o->out_dir) - 64) {
                fprintf(stderr, "jetledger-bench: %s needs a path\n", a);
                return -1;
            }
            snprintf(strcmp(a, "--out") == 0 ? o->out_dir : o->server_path, sizeof(o->out_dir),
                     "%s", v);
        } else if (strcmp(a, "--aggregates") == 0) {
            if (parse_long(a, v, 10, 1000000, &n) != 0)
                return -1;
            o->aggregates = (int)n;
        } else if (strcmp(a, "--window") == 0) {
            if (parse_long(a, v, 1, 100000, &n) != 0)
                return -1;
            o->window = (int)n;
        } else if (strcmp(a, "--throughput") == 0) {
            if (parse_long(a, v, 100, 100000000, &n) != 0)
                return -1;
            o->tput_commands = n;
        } else if (strcmp(a, "--events") == 0) {
            if (parse_long(a, v, 1000, 100000000, &n) != 0)
                return -1;
            o->events = n;
        } else if (strcmp(a, "--fill-seconds") == 0) {
            if (parse_long(a, v, 0, 86400, &n) != 0)
                return -1;
            o->fill_max_s = (int)n;
        } else if (strcmp(a, "--batch") == 0) {
            if (parse_long(a, v, 1, 1000000, &n) != 0)
                return -1;
            o->batch = (int)n;
            o->batch_given = true;
        } else {
            fprintf(stderr, "jetledger-bench: unknown argument '%s'\n\n%s", a, usage);
            return -1;
        }
        if (!inline_value)
            i++; /* the value was the next argument */
    }
    return 0;
}

static int mkdir_p(const char *dir)
{
    char tmp[PATH_MAX];
    snprintf(tmp, sizeof(tmp), "%s", dir);
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = 0;
        if (mkdir(tmp, 0755) != 0 && errno != EEXIST)
            return -1;
        *p = '/';
    }
    return mkdir(tmp, 0755) != 0 && errno != EEXIST ? -1 : 0;
}

/* ---- what the phases measure ---- */

typedef struct results {
    bool tput;
    double tput_pipe, tput_raw;
    bool lat, ryw, agg;
    bool catchup;
    double catchup_pipe, catchup_read, catchup_sql;
    double catchup_pipe_cpu_s, catchup_sql_cpu_s; /* CPU of the projector, of the raw apply */
    bool mem_prod, mem_proj;
    long prod_small_kb, prod_big_kb, proj_small_kb, proj_big_kb;
    uint64_t prod_small_events, prod_big_events, proj_small_events, proj_big_events;
    bool rebuild;
    double rebuild_rate;
} results;

static void path_in(const bench *b, char *out, size_t n, const char *name)
{
    snprintf(out, n, "%s/%s", b->work, name);
}

static jl_status start_orders(bench *b)
{
    char dir[PATH_MAX + 32];
    path_in(b, dir, sizeof(dir), "orders-data");
    char env_dir[PATH_MAX + 64];
    snprintf(env_dir, sizeof(env_dir), "JL_DATA_DIR=%s", dir);
    const char *env[] = {env_dir, "JL_NAME=orders", NULL};
    jl_status s = bench_spawn(b, &b->orders_pid, "orders", env, b->orders_log);
    if (s == JL_OK) {
        char id[JL_UUID_LEN + 1];
        Jetledger__GetState q = JETLEDGER__GET_STATE__INIT;
        jl_uuid_new(id);
        q.aggregate_id = id;
        s = bench_wait_ready(b, "orders.query.GetState", &q.base, b->orders_pid, b->orders_log);
    }
    return s;
}

/* A projector process with its own data dir and durable; waits until it answers queries. */
static jl_status start_projector(bench *b, pid_t *pid, const char *name, const char *durable,
                                 const char *log_path, bool wait_ready)
{
    char dir[PATH_MAX + 32], env_dir[PATH_MAX + 64], env_name[96], env_durable[96], env_batch[48];
    const char *env[6];
    size_t n = 0;
    path_in(b, dir, sizeof(dir), name);
    snprintf(env_dir, sizeof(env_dir), "JL_DATA_DIR=%s", dir);
    snprintf(env_name, sizeof(env_name), "JL_NAME=%s", name);
    snprintf(env_durable, sizeof(env_durable), "JL_DURABLE=%s", durable);
    snprintf(env_batch, sizeof(env_batch), "JL_BATCH=%d", b->o.batch);
    env[n++] = env_dir;
    env[n++] = env_name;
    env[n++] = env_durable;
    if (b->o.batch_given)
        env[n++] = env_batch;
    env[n] = NULL;
    jl_status s = bench_spawn(b, pid, "order_summary", env, log_path);
    if (s == JL_OK && wait_ready) {
        char id[JL_UUID_LEN + 1];
        Orders__GetOrder q = ORDERS__GET_ORDER__INIT;
        jl_uuid_new(id);
        q.order_id = id;
        s = bench_wait_ready(b, "order_summary.query.GetOrder", &q.base, *pid, log_path);
    }
    return s;
}

/* Async commands: on the bulk connection for throughput, on the fast one for latency. */
static jl_status run_async(bench *b, const char *what, bool bulk, size_t n, double rate,
                           bench_make_fn make, bench_series *lat, bench_run_result *out)
{
    char why[sizeof(b->err)];
    jl_status s =
        bench_rpc_run(b, bulk ? b->rpc_bulk : b->rpc, n, b->o.window, rate, make, b, lat, out);
    if (s != JL_OK) {
        snprintf(why, sizeof(why), "%s", b->err);
        return bench_fail(b, s, "%s: %s", what, why);
    }
    return JL_OK;
}

/* CPU accounting around each measurement: another workload on the machine skews it. */
static void cpu_begin(const bench *b, bench_cpu *from)
{
    bench_cpu_sample(b, from);
}

/* @p name: a string literal; a phase measured in rounds shows its worst round. */
static void cpu_end(bench *b, const char *name, const bench_cpu *from)
{
    bench_cpu to;
    bench_cpu_sample(b, &to);
    double share = bench_cpu_foreign(b, from, &to);
    size_t i = 0;
    while (i < b->n_foreign && strcmp(b->foreign[i].name, name) != 0)
        i++;
    if (i == b->n_foreign && i < BENCH_MAX_FIGURES) {
        b->foreign[i].name = name;
        b->foreign[i].share = 0;
        b->n_foreign++;
    }
    if (i < b->n_foreign && share > b->foreign[i].share)
        b->foreign[i].share = share;
    size_t used = 0;
    b->foreign_cpu[0] = 0;
    for (size_t k = 0; k < b->n_foreign && used < sizeof(b->foreign_cpu); k++) {
        int w = snprintf(b->foreign_cpu + used, sizeof(b->foreign_cpu) - used, "%s%s %.0f%%",
                         k ? ", " : "", b->foreign[k].name, b->foreign[k].share * 100);
        used += w > 0 ? (size_t)w : 0;
    }
    if (share > b->foreign_cpu_max)
        b->foreign_cpu_max = share;
    if (share > 0.10)
        bench_progress("  warning: other processes or the hypervisor took %.0f%% of the machine's "
                       "CPU during %s: the figure is skewed",
                       share * 100, name);
}

/* The orders, and the memory baselines: producer after as many events, a fresh projector after
 * catching up on them (it stays, as the live projector of figure 3); the raw stream with as many
 * subjects. */
static jl_status phase_creates(bench *b, results *res)
{
    bench_run_result rr;
    char live_dir[PATH_MAX + 32];
    uint64_t last = 0;
    bench_progress("creating %d orders (CreateOrder, %d in flight)", b->o.aggregates, b->o.window);
    jl_status s =
        run_async(b, "CreateOrder", true, (size_t)b->o.aggregates, 0, bench_make_create, NULL, &rr);
    if (s == JL_OK)
        s = bench_stream_last_seq(b, BENCH_ORDERS_STREAM, &last);
    if (s == JL_OK) {
        res->prod_small_events = last;
        s = bench_vmhwm_kb(b, b->orders_pid, &res->prod_small_kb);
    }
    /* Started now, the projector catches up on exactly these events as the one of figure 4
     * catches up on the whole stream: the two peaks compare like with like. */
    if (s == JL_OK) {
        bench_progress("starting order_summary (live): it catches up on %" PRIu64 " events", last);
        s = start_projector(b, &b->live_pid, "live", "order_summary", b->live_log, true);
    }
    path_in(b, live_dir, sizeof(live_dir), "live");
    if (s == JL_OK)
        s = bench_wait_checkpoint(b, live_dir, last, LIVE_CATCHUP_TIMEOUT_S, b->live_pid,
                                  b->live_log);
    if (s == JL_OK) {
        res->proj_small_events = last;
        s = bench_vmhwm_kb(b, b->live_pid, &res->proj_small_kb);
    }
    if (s == JL_OK)
        bench_progress("  %" PRIu64 " events; peak RSS: producer %.1f MiB, projector %.1f MiB",
                       last, res->prod_small_kb / 1024.0, res->proj_small_kb / 1024.0);
    if (s == JL_OK) {
        bench_progress("raw stream %s: the first event of %d subjects (not timed)",
                       BENCH_RAW_STREAM, b->o.aggregates);
        s = bench_raw_open(b);
    }
    return s;
}

/* Raw and pipeline are measured in alternating rounds, so that a change in the machine's speed
 * during the run (a neighbour on the host, frequency) weighs on both sides of a ratio alike
 * instead of on whichever ran at the time. */
static int rounds(const bench *b)
{
    return b->o.quick ? 2 : 4;
}

/* Adds @p sign times the CPU seconds so far of the server, of this process and of the
 * producer to @p acc[0..2]: called with -1 before a run and 1 after it. */
static void proc_cpu_add(const bench *b, double acc[3], int sign)
{
    acc[0] += sign * bench_proc_cpu_s(jl_natsd_pid(b->natsd));
    acc[1] += sign * bench_proc_cpu_s(getpid());
    acc[2] += sign * bench_proc_cpu_s(b->orders_pid);
}

/* Round @p i's part of @p total, the parts adding up to it. */
static long part(long total, int i, int n)
{
    return total * (i + 1) / n - total * i / n;
}

static jl_status phase_throughput(bench *b, results *res)
{
    double raw_secs = 0, pipe_secs = 0;
    uint64_t pipe_ok = 0, first_seq = 0, last_seq = 0;
    /* Each accepted AddItem appends one message: the stream says whether they all did (an ok
     * for a command that stored nothing would flatter the rate). */
    jl_status s = bench_stream_last_seq(b, BENCH_ORDERS_STREAM, &first_seq);
    /* CPU seconds per process, raw [0] and pipeline [1]: the server, this program, the producer.
     * Per command they move much less than rates when something else loads the machine. */
    double cpu_s[2][3] = {{0}};
    bench_progress("figure 1, in %d rounds, raw and pipeline going first in turn: raw, %ld async "
                   "publishes over %d "
                   "subjects (expected last subject sequence + Nats-Msg-Id, %d in flight); "
                   "pipeline, %ld AddItem commands round-robin over %d orders, %d in flight",
                   rounds(b), b->o.tput_commands, b->o.aggregates, b->o.window, b->o.tput_commands,
                   b->o.aggregates, b->o.window);
    for (int i = 0; i < rounds(b) && s == JL_OK; i++) {
        long m = part(b->o.tput_commands, i, rounds(b));
        bench_run_result rr;
        double secs = 0;
        bench_cpu cpu;
        /* Raw first in even rounds, the pipeline in odd ones: what the side before leaves
         * behind (the server's writes to disk, its caches) weighs on both alike. */
        for (int k = 0; k < 2 && s == JL_OK; k++) {
            bool raw = (k == 0) == (i % 2 == 0);
            cpu_begin(b, &cpu);
            proc_cpu_add(b, cpu_s[raw ? 0 : 1], -1);
            if (raw) {
                s = bench_raw_throughput(b, m, &secs);
            } else {
                s = run_async(b, "throughput", true, (size_t)m, 0, bench_make_additem, NULL, &rr);
                b->rr_next += (uint64_t)m;
            }
            if (s != JL_OK)
                break;
            proc_cpu_add(b, cpu_s[raw ? 0 : 1], 1);
            cpu_end(b, raw ? "throughput raw" : "throughput pipeline", &cpu);
        }
        if (s != JL_OK)
            break;
        raw_secs += secs;
        double psecs = (double)(rr.t_last_reply_ns - rr.t_first_send_ns) / 1e9;
        pipe_secs += psecs;
        pipe_ok += rr.ok;
        bench_progress("  round %d: raw %.0f msgs/s, pipeline %.0f commands/s (%" PRIu64
                       " ok, %" PRIu64 " failed)",
                       i + 1, secs > 0 ? (double)m / secs : 0,
                       psecs > 0 ? (double)rr.ok / psecs : 0, rr.ok, rr.failed);
    }
    if (s == JL_OK)
        s = bench_stream_last_seq(b, BENCH_ORDERS_STREAM, &last_seq);
    if (s == JL_OK && last_seq - first_seq != pipe_ok)
        s = bench_fail(b, JL_ERR_INTERNAL,
                       "the throughput phase's %" PRIu64 " accepted commands appended %" PRIu64
                       " messages to %s",
                       pipe_ok, last_seq - first_seq, BENCH_ORDERS_STREAM);
    if (s != JL_OK)
        return s;
    res->tput_raw = raw_secs > 0 ? (double)b->o.tput_commands / raw_secs : 0;
    res->tput_pipe = pipe_secs > 0 ? (double)pipe_ok / pipe_secs : 0;
    res->tput = true;
    bench_progress("  raw: %.0f msgs/s; pipeline: %.0f commands/s (%.1f s)", res->tput_raw,
                   res->tput_pipe, pipe_secs);
    double n = (double)b->o.tput_commands;
    bench_note(b,
               "throughput CPU per command: nats-server %.1f us, producer %.1f us, load "
               "generator %.1f us; per raw publish: nats-server %.1f us, publisher %.1f us",
               cpu_s[1][0] * 1e6 / n, cpu_s[1][2] * 1e6 / n, cpu_s[1][1] * 1e6 / n,
               cpu_s[0][0] * 1e6 / n, cpu_s[0][1] * 1e6 / n);
    return JL_OK;
}

static jl_status phase_latency(bench *b, results *res)
{
    bench_progress("figure 2, context: %d requests at %d/s to an echo responder (one hop)",
                   b->o.lat_samples, b->o.lat_rate);
    jl_status s = bench_raw_echo(b);
    if (s != JL_OK)
        return s;
    bench_progress("figure 2, in %d rounds, raw and pipeline going first in turn: %d synchronous "
                   "publishes, %d "
                   "AddItem commands, at %d/s",
                   rounds(b), b->o.lat_samples, b->o.lat_samples, b->o.lat_rate);
    for (int i = 0; i < rounds(b) && s == JL_OK; i++) {
        int n = (int)part(b->o.lat_samples, i, rounds(b));
        size_t pipe_from = b->lat_cmd.n, raw_from = b->lat_cmd_raw.n;
        bench_run_result rr;
        bench_cpu cpu;
        for (int k = 0; k < 2 && s == JL_OK; k++) { /* who goes first: as in figure 1 */
            bool raw = (k == 0) == (i % 2 == 0);
            cpu_begin(b, &cpu);
            if (raw) {
                s = bench_raw_latency(b, n);
            } else {
                s = run_async(b, "latency", false, (size_t)n, b->o.lat_rate, bench_make_additem,
                              &b->lat_cmd, &rr);
                b->rr_next += (uint64_t)n;
            }
            if (s == JL_OK)
                cpu_end(b, raw ? "latency raw" : "latency pipeline", &cpu);
        }
        if (s != JL_OK)
            break;
        bench_progress("  round %d: p50 %.3f ms (raw %.3f ms)", i + 1,
                       bench_series_pct_ms_since(&b->lat_cmd, pipe_from, 0.5),
                       bench_series_pct_ms_since(&b->lat_cmd_raw, raw_from, 0.5));
    }
    if (s != JL_OK)
        return s;
    res->lat = true;
    bench_progress("  p50 %.3f ms (raw %.3f ms), p99 %.3f ms (raw %.3f ms)",
                   bench_series_pct_ms(&b->lat_cmd, 0.5), bench_series_pct_ms(&b->lat_cmd_raw, 0.5),
                   bench_series_pct_ms(&b->lat_cmd, 0.99),
                   bench_series_pct_ms(&b->lat_cmd_raw, 0.99));
    return JL_OK;
}

static void count_failure(bench *b, uint64_t *failed, const char *what, const char *why)
{
    if (*failed == 0)
        bench_progress("  %s failed: %s", what, why);
    (*failed)++;
    b->failed_commands++;
}

/* One AddItem then GetOrder with min_sequence = the command's stream sequence. */
static jl_status ryw_one(bench *b, jl_reply *cmd, jl_reply *q, uint64_t *failed)
{
    char sku[16];
    uint64_t k = b->rr_next++;
    Orders__AddItem a = ORDERS__ADD_ITEM__INIT;
    a.order_id = b->ids[k % (uint64_t)b->o.aggregates];
    bench_sku(k, b->o.aggregates, sku, &a.unit_price_cents);
    a.sku = sku;
    a.quantity = 1;
    int64_t t0 = bench_now_ns();
    jl_status s = bench_request(b, "orders.cmd.AddItem", &a.base, REQUEST_TIMEOUT_MS, cmd);
    if (s != JL_OK)
        return s;
    if (cmd->code != JL_CODE_OK || cmd->stream_seq == 0) {
        count_failure(b, failed, "AddItem", cmd->message);
        return JL_OK;
    }
    Orders__GetOrder g = ORDERS__GET_ORDER__INIT;
    g.order_id = a.order_id;
    g.min_sequence = cmd->stream_seq;
    int64_t tq = bench_now_ns();
    s = bench_request(b, "order_summary.query.GetOrder", &g.base, REQUEST_TIMEOUT_MS, q);
    int64_t t1 = bench_now_ns();
    if (s != JL_OK)
        return s;
    if (q->code != JL_CODE_OK) {
        count_failure(b, failed, "GetOrder", q->message);
        return JL_OK;
    }
    Orders__GetOrderResult *r =
        orders__get_order_result__unpack(NULL, q->result.len, q->result.data);
    bool visible = r != NULL && r->order != NULL && r->order->version >= cmd->aggregate_version;
    if (r != NULL)
        orders__get_order_result__free_unpacked(r, NULL);
    if (!visible)
        count_failure(b, failed, "GetOrder", "the answer does not show the command's event");
    else {
        bench_series_add(&b->lat_ryw, t1 - t0);
        bench_series_add(&b->lat_ryw_query, t1 - tq);
    }
    return JL_OK;
}

static jl_status phase_ryw(bench *b, results *res)
{
    char live_dir[PATH_MAX + 32];
    uint64_t last = 0, failed = 0;
    jl_reply cmd, q;
    /* The live projector has applied everything so far (phase_creates): a query waits only for
     * the command's own event. */
    jl_status s = bench_stream_last_seq(b, BENCH_ORDERS_STREAM, &last);
    path_in(b, live_dir, sizeof(live_dir), "live");
    if (s == JL_OK)
        s = bench_wait_checkpoint(b, live_dir, last, LIVE_CATCHUP_TIMEOUT_S, b->live_pid,
                                  b->live_log);
    if (s != JL_OK)
        return s;
    bench_progress("figure 3, in %d rounds, raw and pipeline going first in turn: %d publishes -> "
                   "pull consumer, "
                   "%d AddItem + GetOrder(min_sequence), at %d/s",
                   rounds(b), b->o.ryw_samples, b->o.ryw_samples, b->o.ryw_rate);
    jl_reply_init(&cmd);
    jl_reply_init(&q);
    for (int r = 0; r < rounds(b) && s == JL_OK; r++) {
        int n = (int)part(b->o.ryw_samples, r, rounds(b));
        size_t pipe_from = b->lat_ryw.n, raw_from = b->lat_ryw_raw.n;
        bench_cpu cpu;
        for (int k = 0; k < 2 && s == JL_OK; k++) { /* who goes first: as in figure 1 */
            bool raw = (k == 0) == (r % 2 == 0);
            cpu_begin(b, &cpu);
            if (raw) {
                s = bench_raw_ryw(b, n);
            } else {
                int64_t start = bench_now_ns();
                for (int i = 0; i < n && s == JL_OK; i++) {
                    bench_sleep_until(start + (int64_t)((double)i * 1e9 / b->o.ryw_rate));
                    s = bench_stopping() ? bench_fail(b, JL_ERR_STOPPED, "interrupted")
                                         : ryw_one(b, &cmd, &q, &failed);
                }
            }
            if (s == JL_OK)
                cpu_end(b, raw ? "read-your-writes raw" : "read-your-writes pipeline", &cpu);
        }
        if (s != JL_OK)
            break;
        bench_progress("  round %d: p99 %.3f ms (raw %.3f ms)", r + 1,
                       bench_series_pct_ms_since(&b->lat_ryw, pipe_from, 0.99),
                       bench_series_pct_ms_since(&b->lat_ryw_raw, raw_from, 0.99));
    }
    jl_reply_cleanup(&cmd);
    jl_reply_cleanup(&q);
    if (s == JL_OK) {
        res->ryw = true;
        bench_progress(
            "  p50 %.3f ms (raw %.3f ms), p99 %.3f ms (raw %.3f ms)",
            bench_series_pct_ms(&b->lat_ryw, 0.5), bench_series_pct_ms(&b->lat_ryw_raw, 0.5),
            bench_series_pct_ms(&b->lat_ryw, 0.99), bench_series_pct_ms(&b->lat_ryw_raw, 0.99));
        bench_progress("  of which the query (reply received -> query answered): p50 %.3f ms, "
                       "p99 %.3f ms",
                       bench_series_pct_ms(&b->lat_ryw_query, 0.5),
                       bench_series_pct_ms(&b->lat_ryw_query, 0.99));
        /* From here on nothing queries it: stopped, it takes no CPU from figures 1-2. */
        s = bench_stop_proc(b, &b->live_pid, "order_summary (live)");
    }
    return s;
}

/* A synchronous command; @p lat (may be NULL) gets its latency when accepted. */
static jl_status command(bench *b, const ProtobufCMessage *msg, bench_series *lat, bool *out_ok)
{
    char subject[128];
    jl_reply r;
    jl_reply_init(&r);
    bench_cmd_subject(subject, sizeof(subject), msg);
    int64_t t0 = bench_now_ns();
    jl_status s = bench_request(b, subject, msg, REQUEST_TIMEOUT_MS, &r);
    int64_t t1 = bench_now_ns();
    *out_ok = s == JL_OK && r.code == JL_CODE_OK && r.stream_seq > 0;
    if (s == JL_OK && !*out_ok) {
        uint64_t once = 0;
        count_failure(b, &once, subject, r.message);
    }
    if (*out_ok && lat != NULL)
        bench_series_add(lat, t1 - t0);
    jl_reply_cleanup(&r);
    return s;
}

/* Add (or remove, when @p remove) sku "line" on @p id. */
static jl_status item_command(bench *b, const char *id, bool remove, bench_series *lat,
                              bool *out_ok)
{
    if (remove) {
        Orders__RemoveItem m = ORDERS__REMOVE_ITEM__INIT;
        m.order_id = (char *)id;
        m.sku = "line";
        return command(b, &m.base, lat, out_ok);
    }
    Orders__AddItem m = ORDERS__ADD_ITEM__INIT;
    m.order_id = (char *)id;
    m.sku = "line";
    m.quantity = 1;
    m.unit_price_cents = 250;
    return command(b, &m.base, lat, out_ok);
}

static jl_status create_order(bench *b, const char *id, bool *out_ok)
{
    Orders__CreateOrder c = ORDERS__CREATE_ORDER__INIT;
    c.order_id = (char *)id;
    c.customer_id = "bench";
    return command(b, &c.base, NULL, out_ok);
}

static jl_status phase_long(bench *b, results *res)
{
    char long_id[JL_UUID_LEN + 1];
    int n_fresh = b->o.long_samples / 2 + 1;
    char(*fresh)[BENCH_ID_LEN] = calloc((size_t)n_fresh, sizeof(*fresh));
    bool ok = false, has_item = false;
    int events = 1;
    jl_status s = fresh ? JL_OK : bench_fail(b, JL_ERR_NOMEM, "out of memory");

    bench_progress("figure 5: one order with %d events (AddItem/RemoveItem alternately, one at "
                   "a time)",
                   b->o.long_events);
    jl_uuid_new(long_id);
    if (s == JL_OK)
        s = create_order(b, long_id, &ok);
    int64_t shown = bench_now_ns();
    while (s == JL_OK && ok && events < b->o.long_events) {
        s = item_command(b, long_id, has_item, NULL, &ok);
        if (ok) {
            events++;
            has_item = !has_item;
        }
        if (bench_now_ns() - shown > 5000000000LL) {
            bench_progress("  %d/%d events", events, b->o.long_events);
            shown = bench_now_ns();
        }
        if (bench_stopping())
            s = bench_fail(b, JL_ERR_STOPPED, "interrupted");
    }
    for (int i = 0; i < n_fresh && s == JL_OK && ok; i++) {
        jl_uuid_new(fresh[i]);
        s = create_order(b, fresh[i], &ok);
    }
    if (s == JL_OK && !ok)
        s = bench_fail(b, JL_ERR_REJECTED, "figure 5: a command was refused (see above)");
    /* Interleaved, so both series see the same conditions: a command on the long aggregate,
     * then one on a fresh aggregate (an AddItem, then a RemoveItem on the same fresh order). */
    bench_progress("figure 5: %d timed commands on it, interleaved with as many on fresh orders",
                   b->o.long_samples);
    bench_cpu cpu;
    cpu_begin(b, &cpu);
    bool fresh_has_item = false;
    for (int j = 0; j < b->o.long_samples && s == JL_OK; j++) {
        bool ok1 = false, ok2 = false;
        s = item_command(b, long_id, has_item, &b->lat_long, &ok1);
        if (ok1)
            has_item = !has_item;
        if (s == JL_OK)
            s = item_command(b, fresh[j / 2], fresh_has_item, &b->lat_fresh, &ok2);
        if (ok2)
            fresh_has_item = !fresh_has_item;
        if (s == JL_OK && bench_stopping())
            s = bench_fail(b, JL_ERR_STOPPED, "interrupted");
    }
    free(fresh);
    if (s == JL_OK) {
        cpu_end(b, "aggregate length", &cpu);
        res->agg = true;
        bench_progress("  p50 on the long aggregate %.3f ms, on fresh ones %.3f ms",
                       bench_series_pct_ms(&b->lat_long, 0.5),
                       bench_series_pct_ms(&b->lat_fresh, 0.5));
    }
    return s;
}

/* Commands until the stream holds o.events events or the time bound passes; producer memory. */
/* Events figure 5 appends when every command is accepted: the long order, the fresh orders,
 * and one event per timed command on each. */
static uint64_t long_phase_events(const bench_opts *o)
{
    return (uint64_t)o->long_events + (uint64_t)(o->long_samples / 2 + 1) +
           2 * (uint64_t)o->long_samples;
}

/* AddItem commands round-robin until the stream holds what figure 5 leaves room for, bounded in
 * time. Before figure 5 on purpose: its extra aggregates would push the round-robin working set
 * past the producer's default cache (10,000), and a cyclic scan of an LRU one entry too small
 * misses every time (measured: ~250 commands/s instead of ~10,000 for one round). */
static jl_status phase_fill(bench *b)
{
    uint64_t last = 0;
    bench_run_result rr;
    jl_status s = bench_stream_last_seq(b, BENCH_ORDERS_STREAM, &last);
    int64_t t0 = bench_now_ns(), deadline = t0 + (int64_t)b->o.fill_max_s * 1000000000LL;
    uint64_t after = long_phase_events(&b->o);
    uint64_t target = (uint64_t)b->o.events > after ? (uint64_t)b->o.events - after : 0;
    uint64_t start = last;
    if (s == JL_OK && last < target)
        bench_progress("filling %s to %" PRIu64 " events with AddItem commands (%d in flight, at "
                       "most %d s)",
                       BENCH_ORDERS_STREAM, target, b->o.window, b->o.fill_max_s);
    while (s == JL_OK && last < target && bench_now_ns() < deadline) {
        uint64_t n = target - last < FILL_CHUNK ? target - last : FILL_CHUNK;
        s = run_async(b, "fill", true, (size_t)n, 0, bench_make_additem, NULL, &rr);
        b->rr_next += n;
        if (s == JL_OK)
            s = bench_stream_last_seq(b, BENCH_ORDERS_STREAM, &last);
        double secs = (double)(bench_now_ns() - t0) / 1e9;
        if (s == JL_OK)
            bench_progress("  %" PRIu64 "/%" PRIu64 " events (%.0f commands/s)", last, target,
                           secs > 0 ? (double)(last - start) / secs : 0);
    }
    if (s == JL_OK && last < target)
        bench_note(b,
                   "the producer reached %" PRIu64 " events within the %d s allowed for filling "
                   "(--fill-seconds); the rest of the stream was seeded",
                   last, b->o.fill_max_s);
    return s;
}

/* Producer memory after all its commands, then the stream completed by seeding if needed. */
static jl_status phase_producer_memory(bench *b, results *res)
{
    uint64_t last = 0;
    jl_status s = bench_stream_last_seq(b, BENCH_ORDERS_STREAM, &last);
    if (s == JL_OK) {
        res->prod_big_events = last;
        s = bench_vmhwm_kb(b, b->orders_pid, &res->prod_big_kb);
    }
    if (s == JL_OK) {
        res->mem_prod = true;
        bench_progress("producer peak RSS %.1f MiB after %" PRIu64 " events (%.1f MiB after "
                       "%" PRIu64 ")",
                       res->prod_big_kb / 1024.0, last, res->prod_small_kb / 1024.0,
                       res->prod_small_events);
        /* It has no more work: stopping it leaves the CPU to the projector and checks that it
         * shuts down cleanly. */
        s = bench_stop_proc(b, &b->orders_pid, "orders");
    }
    if (s == JL_OK && last < (uint64_t)b->o.events)
        s = bench_seed(b, (uint64_t)b->o.events);
    return s;
}

static jl_status phase_catchup(bench *b, results *res)
{
    char dir[PATH_MAX + 32];
    uint64_t last = 0, cp = 0;
    jl_status s = bench_stream_last_seq(b, BENCH_ORDERS_STREAM, &last);
    if (s != JL_OK)
        return s;
    bench_progress("figure 4: a fresh order_summary catches up on %" PRIu64 " events", last);
    path_in(b, dir, sizeof(dir), "catchup");
    bench_cpu cpu;
    cpu_begin(b, &cpu);
    struct timespec real0;
    clock_gettime(CLOCK_REALTIME, &real0);
    int64_t t0 = bench_now_ns(), shown = t0, t1 = 0;
    int64_t t0_real = (int64_t)real0.tv_sec * 1000000000LL + real0.tv_nsec;
    s = start_projector(b, &b->catchup_pid, "catchup", "bench_catchup", b->catchup_log, false);
    bench_curve_add(&b->catchup, 0, 0);
    while (s == JL_OK) {
        bench_sleep_ms(CATCHUP_POLL_MS);
        int64_t t = bench_now_ns(), committed = 0;
        cp = bench_checkpoint(dir, &committed);
        bench_curve_add(&b->catchup, (double)(t - t0) / 1e9, (double)cp);
        if (cp >= last) {
            /* The end is when the projector committed the last event (its own clock), not this
             * poll's: up to CATCHUP_POLL_MS later, much of a short run. */
            t1 = committed > t0_real && committed - t0_real <= t - t0 ? t0 + (committed - t0_real)
                                                                      : t;
            break;
        }
        if (t - shown > 5000000000LL) {
            bench_progress("  checkpoint %" PRIu64 "/%" PRIu64 " (%.0f events/s)", cp, last,
                           (double)cp / ((double)(t - t0) / 1e9));
            shown = t;
        }
        s = bench_check_alive(b, b->catchup_pid, "order_summary (catch-up)", b->catchup_log);
        if (s == JL_OK && bench_stopping())
            s = bench_fail(b, JL_ERR_STOPPED, "interrupted");
        if (s == JL_OK && t - t0 > (int64_t)CATCHUP_TIMEOUT_S * 1000000000LL)
            s = bench_fail(b, JL_ERR_TIMEOUT,
                           "the catch-up projector is at %" PRIu64 " of %" PRIu64 " after %d s", cp,
                           last, CATCHUP_TIMEOUT_S);
    }
    if (s != JL_OK)
        return s;
    cpu_end(b, "catch-up pipeline", &cpu);
    res->catchup_pipe = (double)last / ((double)(t1 - t0) / 1e9);
    bench_progress("  pipeline: %.0f events/s (%.2f s, from the projector's start to its last "
                   "commit)",
                   res->catchup_pipe, (double)(t1 - t0) / 1e9);
    res->proj_big_events = last;
    res->catchup_pipe_cpu_s = bench_proc_cpu_s(b->catchup_pid);
    s = bench_vmhwm_kb(b, b->catchup_pid, &res->proj_big_kb);
    if (s != JL_OK)
        return s;
    /* Idle now: stopped, so that nothing of it (its WAL checkpoints) runs during the raw
     * limits' measurement. */
    s = bench_stop_proc(b, &b->catchup_pid, "order_summary (catch-up)");
    if (s != JL_OK)
        return s;
    res->mem_proj = true;
    bench_progress(
        "  projector peak RSS %.1f MiB after %" PRIu64 " events (%.1f MiB after %" PRIu64 ")",
        res->proj_big_kb / 1024.0, last, res->proj_small_kb / 1024.0, res->proj_small_events);
    bench_progress("figure 4, raw (a): an ordered consumer reads the stream, no apply");
    cpu_begin(b, &cpu);
    s = bench_raw_read(b, last, &res->catchup_read);
    if (s != JL_OK)
        return s;
    cpu_end(b, "catch-up raw read", &cpu);
    bench_progress("  %.0f events/s", res->catchup_read);
    bench_progress("figure 4, raw (b): SQLite batched upserts of the same events, no NATS");
    cpu_begin(b, &cpu);
    s = bench_raw_sqlite(b, last, &res->catchup_sql, &res->catchup_sql_cpu_s);
    if (s != JL_OK)
        return s;
    cpu_end(b, "catch-up raw sqlite (with its decode pass)", &cpu);
    bench_progress("  %.0f events/s", res->catchup_sql);
    res->catchup = true;
    bench_note(b,
               "catch-up raw limit = min(ordered consumer %.0f events/s, SQLite %.0f events/s, "
               "batch %d)",
               res->catchup_read, res->catchup_sql, b->o.batch);
    /* CPU per event moves much less than wall time when something else loads the machine. */
    bench_note(b,
               "catch-up CPU per event: projector process %.1f us (all of it: NATS, decode, "
               "SQLite), raw SQLite apply %.1f us",
               res->catchup_pipe_cpu_s * 1e6 / (double)last,
               res->catchup_sql_cpu_s * 1e6 / (double)last);
    return JL_OK;
}

static Jetledger__RebuildStatus *admin(bench *b, const char *subject, const ProtobufCMessage *msg,
                                       jl_status *out_s)
{
    jl_reply r;
    Jetledger__RebuildStatus *st = NULL;
    jl_reply_init(&r);
    *out_s = bench_request(b, subject, msg, REQUEST_TIMEOUT_MS, &r);
    if (*out_s == JL_OK && r.code != JL_CODE_OK)
        *out_s =
            bench_fail(b, JL_ERR_REJECTED, "%s: %s: %s", subject, jl_code_str(r.code), r.message);
    if (*out_s == JL_OK) {
        st = jetledger__rebuild_status__unpack(NULL, r.result.len, r.result.data);
        if (st == NULL)
            *out_s = bench_fail(b, JL_ERR_DECODE, "%s: result is not a RebuildStatus", subject);
    }
    jl_reply_cleanup(&r);
    return st;
}

static jl_status phase_rebuild(bench *b, results *res)
{
    Jetledger__Rebuild req = JETLEDGER__REBUILD__INIT;
    Jetledger__GetRebuildStatus get = JETLEDGER__GET_REBUILD_STATUS__INIT;
    char subject[256];
    jl_status s = JL_OK;
    bench_progress("rebuild: order_summary.admin.Rebuild over the whole stream");
    /* The catch-up projector, stopped while the raw limits were measured, answers it. */
    if (b->catchup_pid == 0) {
        s = start_projector(b, &b->catchup_pid, "catchup", "bench_catchup", b->catchup_log, true);
        if (s != JL_OK)
            return s;
    }
    bench_cpu cpu;
    cpu_begin(b, &cpu);
    Jetledger__RebuildStatus *st = admin(b, "order_summary.admin.Rebuild", &req.base, &s);
    if (st == NULL)
        return s;
    int64_t started = st->started_at_ns, t0 = bench_now_ns(), shown = t0;
    snprintf(subject, sizeof(subject), "order_summary.admin.%s.GetRebuildStatus", st->instance);
    protobuf_c_message_free_unpacked(&st->base, NULL);
    st = NULL;
    for (;;) {
        bench_sleep_ms(REBUILD_POLL_MS);
        st = admin(b, subject, &get.base, &s);
        if (st == NULL)
            break;
        bool ours = st->started_at_ns == started;
        if (ours && (strcmp(st->state, "done") == 0 || strcmp(st->state, "failed") == 0 ||
                     strcmp(st->state, "cancelled") == 0))
            break;
        if (bench_now_ns() - shown > 5000000000LL) {
            bench_progress("  %s: %" PRIu64 "/%" PRIu64 " messages", st->state, st->applied,
                           st->total);
            shown = bench_now_ns();
        }
        protobuf_c_message_free_unpacked(&st->base, NULL);
        st = NULL;
        if (bench_stopping())
            return bench_fail(b, JL_ERR_STOPPED, "interrupted");
        if (bench_now_ns() - t0 > (int64_t)REBUILD_TIMEOUT_S * 1000000000LL)
            return bench_fail(b, JL_ERR_TIMEOUT, "rebuild not finished after %d s",
                              REBUILD_TIMEOUT_S);
    }
    if (st == NULL)
        return s;
    if (strcmp(st->state, "done") != 0) {
        s = bench_fail(b, JL_ERR_INTERNAL, "rebuild %s: %s", st->state, st->error);
    } else if (st->finished_at_ns <= st->started_at_ns || st->events == 0) {
        s = bench_fail(b, JL_ERR_INTERNAL,
                       "rebuild done with %" PRIu64 " events, started %" PRId64
                       ", finished %" PRId64,
                       st->events, st->started_at_ns, st->finished_at_ns);
    } else {
        double secs = (double)(st->finished_at_ns - st->started_at_ns) / 1e9;
        res->rebuild_rate = (double)st->events / secs;
        res->rebuild = true;
        cpu_end(b, "rebuild", &cpu);
        bench_progress("  %" PRIu64 " events in %.1f s: %.0f events/s", st->events, secs,
                       res->rebuild_rate);
    }
    protobuf_c_message_free_unpacked(&st->base, NULL);
    return s;
}

static jl_status phase_fill_res(bench *b, results *res)
{
    (void)res;
    return phase_fill(b);
}

static jl_status run_phases(bench *b, results *res)
{
    jl_status s = bench_env_start(b);
    if (s == JL_OK) {
        bench_machine_read(b);
        bench_print_machine(b);
        s = bench_rpc_open(b, b->nc, &b->rpc);
    }
    if (s == JL_OK)
        s = bench_rpc_open(b, b->nc_bulk, &b->rpc_bulk);
    if (s == JL_OK) {
        bench_progress("starting orders (logs in %s)", b->work);
        s = start_orders(b);
    }
    static const struct {
        const char *name;
        jl_status (*fn)(bench *, results *);
    } phases[] = {
        {"creates", phase_creates},        {"read-your-writes", phase_ryw},
        {"throughput", phase_throughput},  {"latency", phase_latency},
        {"fill", phase_fill_res},          {"aggregate length", phase_long},
        {"memory", phase_producer_memory}, {"catch-up", phase_catchup},
        {"rebuild", phase_rebuild},
    };
    for (size_t i = 0; i < sizeof(phases) / sizeof(phases[0]) && s == JL_OK; i++)
        s = phases[i].fn(b, res);
    return s;
}

/* The figures in the order of the table, whether measured or not. */
static void add_figures(bench *b, results *res)
{
    bench_figure *f;
    f = bench_figure_add(b, "command throughput", res->tput_pipe, "cmd/s", true, res->tput_raw,
                         ">= 0.5");
    if (f != NULL) {
        f->measured = res->tput;
        snprintf(f->raw_unit, sizeof(f->raw_unit), "msg/s");
    }
    const struct {
        const char *name;
        bench_series *pipe, *raw;
        double p;
        const char *target;
        bool ok;
    } lat[] = {
        {"command latency p50", &b->lat_cmd, &b->lat_cmd_raw, 0.5, "<= 2", res->lat},
        {"command latency p99", &b->lat_cmd, &b->lat_cmd_raw, 0.99, "", res->lat},
        {"request-reply hop p50", &b->lat_echo, &b->lat_cmd_raw, 0.5, "", res->lat},
        {"read-your-writes p99", &b->lat_ryw, &b->lat_ryw_raw, 0.99, "<= 3", res->ryw},
        {"read-your-writes p50", &b->lat_ryw, &b->lat_ryw_raw, 0.5, "", res->ryw},
    };
    for (size_t i = 0; i < sizeof(lat) / sizeof(lat[0]); i++) {
        f = bench_figure_add(b, lat[i].name, bench_series_pct_ms(lat[i].pipe, lat[i].p), "ms", true,
                             bench_series_pct_ms(lat[i].raw, lat[i].p), lat[i].target);
        if (f != NULL)
            f->measured = lat[i].ok;
    }
    double raw = fmin(res->catchup_read, res->catchup_sql);
    f = bench_figure_add(b, "projector catch-up", res->catchup_pipe, "ev/s", true, raw, ">= 0.6");
    if (f != NULL)
        f->measured = res->catchup;
    f = bench_figure_add(b, "aggregate length (p50)", bench_series_pct_ms(&b->lat_long, 0.5), "ms",
                         true, bench_series_pct_ms(&b->lat_fresh, 0.5), "<= 1.5");
    if (f != NULL)
        f->measured = res->agg;
    f = bench_figure_add(b, "producer peak RSS", res->prod_big_kb / 1024.0, "MiB", true,
                         res->prod_small_kb / 1024.0, "<= 1.3");
    if (f != NULL)
        f->measured = res->mem_prod;
    f = bench_figure_add(b, "projector peak RSS", res->proj_big_kb / 1024.0, "MiB", true,
                         res->proj_small_kb / 1024.0, "<= 1.3");
    if (f != NULL)
        f->measured = res->mem_proj;
    f = bench_figure_add(b, "rebuild rate", res->rebuild_rate, "ev/s", false, 0, "");
    if (f != NULL)
        f->measured = res->rebuild;
}

static void explain(const bench *b, const results *res)
{
    printf("\nraw limits: async publish with expected last subject sequence + Nats-Msg-Id "
           "(window %d); sync publish; publish -> durable pull consumer; catch-up = min(ordered "
           "consumer %.0f ev/s, SQLite upserts %.0f ev/s in batches of %d)\n",
           b->o.window, res->catchup_read, res->catchup_sql, b->o.batch);
    printf("aggregate length: p50 on an order with %d events / p50 on fresh orders\n",
           b->o.long_events);
    printf("memory (VmHWM): producer after %" PRIu64 " vs %" PRIu64 " events of commands; "
           "projector after applying %" PRIu64 " (fresh process) vs %" PRIu64 " (fresh process)\n",
           res->prod_big_events, res->prod_small_events, res->proj_big_events,
           res->proj_small_events);
    if (b->notes[0])
        printf("notes: %s\n", b->notes);
    if (b->foreign_cpu[0])
        printf("CPU taken by other processes and the hypervisor (steal), per phase: %s%s\n",
               b->foreign_cpu,
               b->foreign_cpu_max > 0.10 ? " (over 10%: those figures are skewed; rerun on an "
                                           "idle machine)"
                                         : "");
}

/* Stop whatever still runs; a service that does not exit 0 on SIGTERM is reported. */
static int stop_all(bench *b)
{
    int problems = 0;
    struct {
        pid_t *pid;
        const char *what;
    } procs[] = {{&b->orders_pid, "orders"},
                 {&b->live_pid, "order_summary (live)"},
                 {&b->catchup_pid, "order_summary (catch-up)"}};
    for (size_t i = 0; i < sizeof(procs) / sizeof(procs[0]); i++) {
        if (bench_stop_proc(b, procs[i].pid, procs[i].what) != JL_OK) {
            fprintf(stderr, "error: %s\n", b->err);
            problems++;
        }
    }
    return problems;
}

static void report_logs(bench *b)
{
    const char *logs[] = {b->orders_log, b->live_log, b->catchup_log};
    const char *names[] = {"orders", "order_summary (live)", "order_summary (catch-up)"};
    for (size_t i = 0; i < 3; i++) {
        char first[600];
        long n = bench_log_errors(logs[i], first, sizeof(first));
        if (n > 0) {
            fprintf(stderr, "warning: %s logged %ld error lines; first: %s\n", names[i], n, first);
            bench_note(b, "%s logged %ld error lines", names[i], n);
        }
    }
}

static int run(bench *b, int argc, char **argv);

int main(int argc, char **argv)
{
    bench *b = calloc(1, sizeof(*b));
    if (b == NULL) {
        fprintf(stderr, "jetledger-bench: out of memory\n");
        return 1;
    }
    int rc = run(b, argc, argv);
    free(b);
    jl_conn_release_library(2000); /* every connection is closed by now */
    return rc;
}

static int run(bench *b, int argc, char **argv)
{
    results res;
    struct sigaction sa;
    char self[PATH_MAX];
    int rc = parse_args(&b->o, argc, argv);
    if (rc != 0)
        return rc > 0 ? 0 : 2;
    memset(&res, 0, sizeof(res));
    if (b->o.window > b->o.aggregates) {
        b->o.window = b->o.aggregates;
        bench_note(b, "window lowered to %d, the number of aggregates", b->o.window);
    }

    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (n <= 0) {
        fprintf(stderr, "jetledger-bench: cannot read /proc/self/exe: %s\n", strerror(errno));
        return 1;
    }
    self[n] = 0;
    snprintf(b->bin_dir, sizeof(b->bin_dir), "%s", dirname(self));
    if (mkdir_p(b->o.out_dir) != 0) {
        fprintf(stderr, "jetledger-bench: cannot create %s: %s\n", b->o.out_dir, strerror(errno));
        return 1;
    }
    if (b->o.out_dir[0] != '/') {
        char cwd[PATH_MAX], abs_out[PATH_MAX];
        if (getcwd(cwd, sizeof(cwd)) != NULL &&
            snprintf(abs_out, sizeof(abs_out), "%s/%s", cwd, b->o.out_dir) < (int)sizeof(abs_out))
            snprintf(b->o.out_dir, sizeof(b->o.out_dir), "%s", abs_out);
    }
    if (jl_tmpdir(b->work, sizeof(b->work)) != 0) {
        fprintf(stderr, "jetledger-bench: cannot create a temp directory: %s\n", strerror(errno));
        return 1;
    }
    path_in(b, b->orders_log, sizeof(b->orders_log), "orders.log");
    path_in(b, b->live_log, sizeof(b->live_log), "order_summary-live.log");
    path_in(b, b->catchup_log, sizeof(b->catchup_log), "order_summary-catchup.log");

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    b->ids = calloc((size_t)b->o.aggregates, sizeof(*b->ids));
    if (b->ids == NULL) {
        fprintf(stderr, "jetledger-bench: out of memory\n");
        jl_rm_rf(b->work);
        return 1;
    }
    for (int i = 0; i < b->o.aggregates; i++)
        jl_uuid_new(b->ids[i]);

    bench_progress(
        "jetledger-bench %s run: %d aggregates, window %d, %ld timed commands, %ld-event "
        "stream, projector batch %d; work dir %s",
        b->o.quick ? "quick" : "full", b->o.aggregates, b->o.window, b->o.tput_commands,
        b->o.events, b->o.batch, b->work);
    int64_t t0 = bench_now_ns();
    jl_status s = run_phases(b, &res);
    if (s != JL_OK)
        fprintf(stderr, "error: %s\n", b->err);
    int problems = stop_all(b);
    bench_rpc_close(b->rpc);
    bench_rpc_close(b->rpc_bulk);
    b->rpc = b->rpc_bulk = NULL;
    bench_raw_close(b);
    bench_env_stop(b);
    report_logs(b);
    double secs = (double)(bench_now_ns() - t0) / 1e9;

    add_figures(b, &res);
    if (b->machine.libnats[0] == 0)
        bench_machine_read(b);
    bench_print_table(b);
    explain(b, &res);
    /* A run that did not finish, or whose figures are not sane, must not replace the last
     * complete latest.json. */
    if (s == JL_OK)
        problems += bench_sanity(b);
    const char *json = s == JL_OK && problems == 0 ? "latest.json" : "failed.json";
    if (bench_write_json(b, json, secs) != JL_OK) {
        fprintf(stderr, "error: %s\n", b->err);
        problems++;
    }
    if (s == JL_OK && bench_write_charts(b) != JL_OK) {
        fprintf(stderr, "error: %s\n", b->err);
        problems++;
    }
    printf("\n%s run %s after %.0f s; results in %s/%s\n", b->o.quick ? "quick" : "full",
           bench_stopping() ? "interrupted"
           : s == JL_OK     ? "finished"
                            : "failed",
           secs, b->o.out_dir, json);
    bool failed = s != JL_OK || problems > 0;
    /* Kept after a failure, for the services' logs; an interrupted run is simply cleaned up. */
    if (b->o.keep || (failed && !bench_stopping()))
        fprintf(stderr, "work directory kept: %s\n", b->work);
    else
        jl_rm_rf(b->work);

    bench_series *series[] = {&b->lat_cmd,  &b->lat_cmd_raw, &b->lat_ryw,       &b->lat_ryw_raw,
                              &b->lat_long, &b->lat_fresh,   &b->lat_ryw_query, &b->lat_echo};
    for (size_t i = 0; i < sizeof(series) / sizeof(series[0]); i++)
        bench_series_free(series[i]);
    bench_curve_free(&b->catchup);
    bench_curve_free(&b->catchup_raw_read);
    bench_curve_free(&b->catchup_raw_sql);
    free(b->ids);
    if (bench_stopping())
        return 130;
    return failed ? 1 : 0;
}
