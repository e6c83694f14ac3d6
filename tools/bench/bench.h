/*
 * jetledger-bench internals: what the files of the benchmark share.
 *
 * The benchmark is a program, not part of libjetledger: it prints, handles SIGINT/SIGTERM and
 * exits. It drives the real services (build/bin/orders, build/bin/order_summary) as processes
 * over NATS, and measures the raw limits (JetStream publish and consume, SQLite upserts) itself,
 * in the same run, on the same machine. Every fallible function returns jl_status and leaves the
 * reason in bench->err (bench_fail()). Nothing here is thread-safe unless it says so: the main
 * thread runs the phases, NATS threads run the callbacks that say so.
 */
#ifndef JETLEDGER_BENCH_H
#define JETLEDGER_BENCH_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <nats/nats.h>
#include <protobuf-c/protobuf-c.h>

#include "jetledger/codec.h"
#include "jetledger/status.h"
#include "natsd.h"

#define BENCH_ID_LEN (JL_UUID_LEN + 1)
/** Skus an order cycles through (ORDERS_MAX_ITEMS is 50 distinct skus per order). */
#define BENCH_SKUS 20
/** Hard cap on the samples of one latency series and on a progress curve. */
#define BENCH_MAX_SAMPLES 1000000
#define BENCH_MAX_POINTS 100000
/** Stream names and subjects of the raw measurements (the services never see them). */
#define BENCH_RAW_STREAM "RAW"
#define BENCH_RAW_SUBJECTS "raw.>"
#define BENCH_ORDERS_STREAM "ORDERS"
#define BENCH_ORDERS_SUBJECTS "orders.events.>"

/** Sizes and rates of one run; bench_opts_defaults() fills them for --quick or the full run. */
typedef struct bench_opts {
    bool quick;
    bool keep;              /**< keep the work directory (servers' stores, logs, databases) */
    char out_dir[PATH_MAX]; /**< where latest.json, the charts and their data go */
    int aggregates;         /**< orders created first; commands go round-robin over them */
    int window;             /**< commands (or raw publishes) in flight */
    long tput_commands;     /**< AddItem commands timed for the throughput figure */
    int lat_rate;           /**< commands/s of the latency figure */
    int lat_samples;        /**< commands of the latency figure */
    int ryw_rate;           /**< command+query pairs/s of the read-your-writes figure */
    int ryw_samples;        /**< pairs of the read-your-writes figure */
    int long_events;        /**< events of the long aggregate */
    int long_samples;       /**< timed commands on the long aggregate (as many on fresh ones) */
    long events;            /**< stream length for catch-up, memory and rebuild */
    int fill_max_s;         /**< bound on filling the stream with commands; the rest is seeded */
    int batch;              /**< the projector's batch (its default unless --batch) */
    bool batch_given;       /**< --batch was given: passed to the projectors as JL_BATCH */
    char server_path[PATH_MAX]; /**< nats-server ("" = $JL_NATS_SERVER, PATH, /usr/sbin) */
} bench_opts;

/** One line of the result table and of latest.json. */
typedef struct bench_figure {
    char name[64];
    double value;
    char unit[16];
    char raw_unit[16]; /**< unit of the raw value in the table ("" = unit) */
    bool has_raw;
    double raw;
    bool has_ratio;
    double ratio;
    char target[16]; /**< ">= 0.5", "<= 2", or "" for none */
    bool measured;   /**< false: the phase did not run or failed */
} bench_figure;

#define BENCH_MAX_FIGURES 24

/** A latency series (nanoseconds), bounded by BENCH_MAX_SAMPLES. */
typedef struct bench_series {
    int64_t *v;
    size_t n;
    size_t cap;
} bench_series;

/** A progress curve: (seconds, count) points, bounded by BENCH_MAX_POINTS. */
typedef struct bench_curve {
    double *t;
    double *y;
    size_t n;
    size_t cap;
} bench_curve;

/** What is printed as "machine" and goes into latest.json. */
typedef struct bench_machine {
    long nproc;
    char cpu_model[128];
    long ram_mb;
    char kernel[160];
    char nats_server[64];
    char libnats[32];
    char sqlite[32];
    char loadavg[64]; /**< /proc/loadavg at the start: other load skews every figure */
} bench_machine;

typedef struct bench_rpc bench_rpc;
typedef struct bench_raw bench_raw;

/** Everything one run holds. Owned by main(); one per process. */
typedef struct bench {
    bench_opts o;
    char err[2048];
    char work[512];         /**< temp directory of this run */
    char bin_dir[PATH_MAX]; /**< where jetledger-bench and the services are */
    bench_machine machine;
    jl_natsd *natsd;
    /* Two connections, each used the same way for a pipeline figure and its raw limit: "fast"
     * writes every message at once (SendAsap, as the services do) for the latency figures;
     * "bulk" lets the library batch its writes for the throughput figures. */
    natsConnection *nc;      /**< fast: requests, queries, sync publishes, stream admin */
    jsCtx *js;               /**< on nc */
    natsConnection *nc_bulk; /**< bulk: async commands, async publishes, ordered consumers */
    jsCtx *js_bulk;          /**< on nc_bulk */
    bench_rpc *rpc;          /**< async requests on nc */
    bench_rpc *rpc_bulk;     /**< async requests on nc_bulk */
    bench_raw *raw;          /**< the raw stream's subjects and their last sequences */
    pid_t orders_pid;        /**< the producer */
    pid_t live_pid;          /**< a projector answering queries (figures 3 and 6) */
    pid_t catchup_pid;       /**< the fresh projector of figure 4 (and the rebuild) */
    char orders_log[PATH_MAX];
    char live_log[PATH_MAX];
    char catchup_log[PATH_MAX];
    char (*ids)[BENCH_ID_LEN]; /**< the round-robin orders, o.aggregates of them */
    uint64_t rr_next;          /**< next command index of the round-robin (all phases) */
    uint64_t failed_commands;  /**< commands answered with a code other than ok */
    uint64_t producer_events;  /**< events written by the producer's commands */
    /* results */
    bench_figure figs[BENCH_MAX_FIGURES];
    size_t n_figs;
    bench_series lat_cmd, lat_cmd_raw, lat_ryw, lat_ryw_raw, lat_long, lat_fresh;
    bench_series lat_echo;      /* context of figure 2: one request-reply hop through a responder */
    bench_series lat_ryw_query; /* of lat_ryw: from the command's reply to the query's */
    bench_curve catchup, catchup_raw_read, catchup_raw_sql;
    char notes[4096]; /**< choices made during the run (printed and stored in the JSON) */
    struct {
        const char *name; /* static */
        double share;     /* the largest over the phase's rounds */
    } foreign[BENCH_MAX_FIGURES];
    size_t n_foreign;
    char foreign_cpu[1024]; /**< "phase 3%, ...": CPU other processes took during each phase */
    double foreign_cpu_max; /**< the largest of those shares */
} bench;

/** Processes other than ours a CPU sample counts one by one (more are ignored). */
#define BENCH_MAX_PROCS 2048

/** CPU time counters at one moment (bench_cpu_sample()). */
typedef struct bench_cpu {
    int64_t t_ns;
    uint64_t busy_ticks;  /**< all CPUs, /proc/stat, not idle or iowait */
    uint64_t steal_ticks; /**< of those, taken by the hypervisor for other machines */
    uint64_t mine_ticks;  /**< this process, its reaped children and its running services */
    size_t n_others;
    struct {
        int pid;
        uint64_t ticks;
    } others[BENCH_MAX_PROCS]; /**< every other process, by pid */
} bench_cpu;

/* ---- bench.c ---- */

/** True once SIGINT or SIGTERM arrived. Async-signal-safe flag; thread-safe. */
bool bench_stopping(void);

/** Record why the current step failed (printf format); returns @p s. */
jl_status bench_fail(bench *b, jl_status s, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/** Print a progress line on stderr ("[  12.3s] ..."). */
void bench_progress(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/** Append a note (a choice the run made) to bench->notes and print it. */
void bench_note(bench *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/** Monotonic time in nanoseconds. */
int64_t bench_now_ns(void);

/** Sleep until monotonic time @p t_ns (returns at once when it has passed). */
void bench_sleep_until(int64_t t_ns);

/** Sleep @p ms milliseconds. */
void bench_sleep_ms(int ms);

/* ---- env.c: processes, machine, files ---- */

/** Fill bench->machine (nats_server once the server runs). */
void bench_machine_read(bench *b);

/** Start nats-server in <work>/nats and connect bench->nc, js, nc_bulk, js_bulk. */
jl_status bench_env_start(bench *b);

/**
 * Connect to @p url with a JetStream context; @p send_asap writes every message at once instead
 * of leaving it to the library's flusher (what the services do, for latency).
 */
natsStatus bench_connect(natsConnection **nc, jsCtx **js, const char *url, const char *name,
                         bool send_asap);

/** Disconnect and stop the server (idempotent). */
void bench_env_stop(bench *b);

/**
 * Spawn a service binary from bench->bin_dir with NATS_URL and @p extra_env ("K=V", NULL-ended),
 * its output appended to @p log_path.
 */
jl_status bench_spawn(bench *b, pid_t *out_pid, const char *binary, const char *const *extra_env,
                      const char *log_path);

/**
 * Stop a spawned service with SIGTERM (SIGKILL after 10 s) and reap it; *pid becomes 0. A
 * non-zero exit status is a failure (the service misbehaved) with the status in bench->err.
 */
jl_status bench_stop_proc(bench *b, pid_t *pid, const char *what);

/** Fail unless @p pid is still running (with the tail of @p log_path in the message). */
jl_status bench_check_alive(bench *b, pid_t pid, const char *what, const char *log_path);

/** Sample the machine's and our own CPU time (all zero where /proc cannot be read). */
void bench_cpu_sample(const bench *b, bench_cpu *out);

/**
 * Share (0..1) of the machine's CPU capacity between @p from and @p to that other processes used,
 * plus steal time: another workload skews every figure measured meanwhile. Kernel work that no
 * process is charged for (interrupts, waking idle CPUs) is not in it: our own traffic causes
 * most of it.
 */
double bench_cpu_foreign(const bench *b, const bench_cpu *from, const bench_cpu *to);

/** CPU time (user + system) a running process has used so far, in seconds. */
double bench_proc_cpu_s(pid_t pid);

/** Peak RSS (VmHWM) of a process in KiB. */
jl_status bench_vmhwm_kb(bench *b, pid_t pid, long *out_kb);

/**
 * The projector checkpoint (jl_state.last_seq) of the read model in @p data_dir (the file named
 * by order_summary.current, else order_summary.db), read-only. 0 while it does not exist yet.
 * @param out_updated_ns NULL, or receives when the projector committed it (jl_state.updated_at_ns,
 *                       CLOCK_REALTIME ns; 0 with the checkpoint 0).
 */
uint64_t bench_checkpoint(const char *data_dir, int64_t *out_updated_ns);

/** Last sequence of a stream (stream info). */
jl_status bench_stream_last_seq(bench *b, const char *stream, uint64_t *out_seq);

/** Count lines of @p log_path with "level":"error" and copy the first one into @p first. */
long bench_log_errors(const char *log_path, char *first, size_t n);

/** Copy the last @p n - 1 bytes of a file into @p out (for error messages). */
void bench_file_tail(const char *path, char *out, size_t n);

/* ---- load.c: commands and queries through the services ---- */

/** Builds request @p i of a run: its subject and protobuf body. */
typedef jl_status (*bench_make_fn)(void *closure, size_t i, char *subject, size_t subject_len,
                                   const ProtobufCMessage **out_msg, void *scratch);

/** Create an async request engine on @p nc (one wildcard inbox subscription). */
jl_status bench_rpc_open(bench *b, natsConnection *nc, bench_rpc **out);

/** Free the engine. NULL-safe. */
void bench_rpc_close(bench_rpc *r);

/** Result of one async run. */
typedef struct bench_run_result {
    uint64_t ok;
    uint64_t failed;
    int64_t t_first_send_ns;
    int64_t t_last_reply_ns;
} bench_run_result;

/**
 * Send @p n requests through the engine with at most @p window in flight, at @p rate per second
 * (0: as fast as the window allows), each built by @p make. Replies are jetledger.Reply; a reply
 * counts as ok when its code is ok and (commands) it carries a stream sequence. Latencies (send
 * to reply) go to @p lat when not NULL. Fails when no reply comes for 30 s, on NATS errors and
 * on a stop signal; failed commands do not fail the run (they are counted in the result and in
 * bench->failed_commands, and the first reason is printed).
 */
jl_status bench_rpc_run(bench *b, bench_rpc *r, size_t n, int window, double rate,
                        bench_make_fn make, void *closure, bench_series *lat,
                        bench_run_result *out);

/** A synchronous request: pack @p msg, send to @p subject, decode the jetledger.Reply. */
jl_status bench_request(bench *b, const char *subject, const ProtobufCMessage *msg, int timeout_ms,
                        jl_reply *out);

/** The command subject "orders.cmd.<Name>" of a message. */
void bench_cmd_subject(char *out, size_t n, const ProtobufCMessage *msg);

/** Sku and unit price of round-robin command @p i (orders stay within the domain's caps). */
void bench_sku(uint64_t i, int n_aggregates, char sku[16], int64_t *out_price);

/** Request builder: CreateOrder for bench->ids[i] (closure: bench). */
jl_status bench_make_create(void *closure, size_t i, char *subject, size_t subject_len,
                            const ProtobufCMessage **out_msg, void *scratch);

/** Request builder: AddItem number bench->rr_next + i of the round-robin (closure: bench). */
jl_status bench_make_additem(void *closure, size_t i, char *subject, size_t subject_len,
                             const ProtobufCMessage **out_msg, void *scratch);

/** Bytes of scratch a request builder may use. */
#define BENCH_SCRATCH 512

/** Wait until the projector of @p data_dir has applied @p seq (bounded by @p timeout_s). */
jl_status bench_wait_checkpoint(bench *b, const char *data_dir, uint64_t seq, int timeout_s,
                                pid_t pid, const char *log_path);

/**
 * Wait until a service answers @p msg on @p subject (any jetledger.Reply will do: ask about an
 * order that does not exist), bounded to 30 s, failing early when @p pid exits.
 */
jl_status bench_wait_ready(bench *b, const char *subject, const ProtobufCMessage *msg, pid_t pid,
                           const char *log_path);

/* ---- raw.c: the raw limits, and seeding ---- */

/**
 * Create stream RAW (file storage, like ORDERS) with one subject per aggregate and append the
 * first event of each (async, not timed): bench->raw.
 */
jl_status bench_raw_open(bench *b);

/** Free bench->raw. */
void bench_raw_close(bench *b);

/**
 * Figure 1 raw: @p m async publishes over bench->o.aggregates subjects of stream RAW; the
 * seconds from the first publish to the last ack.
 */
jl_status bench_raw_throughput(bench *b, long m, double *out_secs);

/**
 * Context of figure 2: requests at the latency rate to a responder on its own connection that
 * answers at once, written with the same client library as the services (no JetStream), into
 * bench->lat_echo. A command is one such hop plus one append.
 */
jl_status bench_raw_echo(bench *b);

/** Figure 2 raw: @p n synchronous publishes at the latency rate, into bench->lat_cmd_raw. */
jl_status bench_raw_latency(bench *b, int n);

/**
 * Figure 3 raw: @p n publishes -> received by a durable pull consumer (made for this call), at
 * the read-your-writes rate, into bench->lat_ryw_raw.
 */
jl_status bench_raw_ryw(bench *b, int n);

/** Figure 4 raw (a): an ordered consumer reads ORDERS to @p last_seq; events/s. */
jl_status bench_raw_read(bench *b, uint64_t last_seq, double *out_rate);

/** Append events to ORDERS (1 per message) until its last sequence is @p target. */
jl_status bench_seed(bench *b, uint64_t target);

/* ---- sqlraw.c ---- */

/**
 * Figure 4 raw (b): decode ORDERS up to @p last_seq into rows (not timed), then apply them with
 * the projection's SQL to a new SQLite file in WAL mode, synchronous=NORMAL, in transactions of
 * bench->o.batch messages with a checkpoint row update each (timed); events/s, and the CPU
 * seconds the applying took (a figure other load on the machine does not change much).
 */
jl_status bench_raw_sqlite(bench *b, uint64_t last_seq, double *out_rate, double *out_cpu_s);

/* ---- report.c ---- */

/** Append a latency sample (dropped beyond BENCH_MAX_SAMPLES). */
void bench_series_add(bench_series *s, int64_t v);
void bench_series_free(bench_series *s);
/** Percentile @p p (0..1, nearest rank) in ms; sorts the series. 0 when empty. */
double bench_series_pct_ms(bench_series *s, double p);
/** Percentile @p p in ms of the samples from index @p from on (sorting only those). */
double bench_series_pct_ms_since(bench_series *s, size_t from, double p);

/** Append a point (dropped beyond BENCH_MAX_POINTS). */
void bench_curve_add(bench_curve *c, double t, double y);
void bench_curve_free(bench_curve *c);

/** Add a figure; @p target "" for none; has_raw false gives raw and ratio "-". */
bench_figure *bench_figure_add(bench *b, const char *name, double value, const char *unit,
                               bool has_raw, double raw, const char *target);

/** Print the machine block. */
void bench_print_machine(const bench *b);

/** Print the table of figures. */
void bench_print_table(const bench *b);

/** Write <out>/<name> (latest.json, or failed.json for a run that did not finish). */
jl_status bench_write_json(bench *b, const char *name, double run_seconds);

/** Write the chart data files and, when gnuplot is there, latency.png and catchup.png. */
jl_status bench_write_charts(bench *b);

/**
 * The smoke checks: every figure measured, positive and finite, no failed command. Prints each
 * problem; returns the number of problems.
 */
int bench_sanity(const bench *b);

#endif /* JETLEDGER_BENCH_H */
