/*
 * The benchmark's environment: the machine it runs on, its own nats-server, the service
 * processes it spawns, and what it reads from them (/proc, the projector's checkpoint, logs).
 */
#include "bench.h"

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <sqlite3.h>

#include "jetledger/conn.h"

#define STOP_TIMEOUT_MS 10000
#define CONNECT_TIMEOUT_MS 5000
#define TAIL_LEN 1500

static void read_line_value(const char *path, const char *key, char *out, size_t n)
{
    char line[512];
    FILE *f = fopen(path, "r");
    size_t klen = strlen(key);
    if (f == NULL)
        return;
    while (fgets(line, sizeof(line), f) != NULL) {
        if (strncmp(line, key, klen) != 0)
            continue;
        const char *v = strchr(line, ':');
        if (v == NULL)
            continue;
        v++;
        while (*v == ' ' || *v == '\t')
            v++;
        snprintf(out, n, "%s", v);
        out[strcspn(out, "\r\n")] = 0;
        break;
    }
    fclose(f);
}

void bench_machine_read(bench *b)
{
    bench_machine *m = &b->machine;
    char mem[64] = "";
    struct utsname u;

    m->nproc = sysconf(_SC_NPROCESSORS_ONLN);
    snprintf(m->cpu_model, sizeof(m->cpu_model), "unknown");
    read_line_value("/proc/cpuinfo", "model name", m->cpu_model, sizeof(m->cpu_model));
    read_line_value("/proc/meminfo", "MemTotal", mem, sizeof(mem));
    m->ram_mb = strtol(mem, NULL, 10) / 1024;
    snprintf(m->kernel, sizeof(m->kernel), "unknown");
    if (uname(&u) == 0)
        snprintf(m->kernel, sizeof(m->kernel), "%s %s", u.sysname, u.release);
    snprintf(m->libnats, sizeof(m->libnats), "%s", nats_GetVersion());
    snprintf(m->sqlite, sizeof(m->sqlite), "%s", sqlite3_libversion());
    FILE *f = fopen("/proc/loadavg", "r");
    if (f != NULL) {
        double l1 = 0, l5 = 0, l15 = 0;
        if (fscanf(f, "%lf %lf %lf", &l1, &l5, &l15) == 3)
            snprintf(m->loadavg, sizeof(m->loadavg), "%.2f %.2f %.2f", l1, l5, l15);
        fclose(f);
    }
    if (m->nats_server[0] == 0)
        snprintf(m->nats_server, sizeof(m->nats_server), "unknown");
}

natsStatus bench_connect(natsConnection **nc, jsCtx **js, const char *url, const char *name,
                         bool send_asap)
{
    natsOptions *opts = NULL;
    jsOptions jo;
    natsStatus ns = natsOptions_Create(&opts);
    if (ns == NATS_OK)
        ns = natsOptions_SetURL(opts, url);
    if (ns == NATS_OK)
        ns = natsOptions_SetName(opts, name);
    if (ns == NATS_OK)
        ns = natsOptions_SetTimeout(opts, CONNECT_TIMEOUT_MS);
    if (ns == NATS_OK)
        ns = natsOptions_SetSendAsap(opts, send_asap);
    if (ns == NATS_OK)
        ns = natsConnection_Connect(nc, opts);
    if (ns == NATS_OK) {
        jsOptions_Init(&jo);
        jo.Wait = 10000;
        ns = natsConnection_JetStream(js, *nc, &jo);
    }
    natsOptions_Destroy(opts);
    return ns;
}

jl_status bench_env_start(bench *b)
{
    char err[2048] = "", store[PATH_MAX + 16];
    jl_natsd_opts o;
    natsStatus ns;

    snprintf(store, sizeof(store), "%s/nats", b->work);
    jl_natsd_opts_init(&o);
    o.store_dir = store;
    o.server_path = b->o.server_path[0] ? b->o.server_path : NULL;
    o.err_buf = err;
    o.err_buf_len = sizeof(err);
    if (jl_natsd_start(&b->natsd, &o) != 0)
        return bench_fail(b, JL_ERR_UNAVAILABLE, "cannot start nats-server: %s", err);
    if (jl_server_version_probe(jl_natsd_url(b->natsd), 2000, b->machine.nats_server,
                                sizeof(b->machine.nats_server)) != JL_OK)
        snprintf(b->machine.nats_server, sizeof(b->machine.nats_server), "unknown");

    ns = bench_connect(&b->nc, &b->js, jl_natsd_url(b->natsd), "jetledger-bench", true);
    if (ns == NATS_OK)
        ns = bench_connect(&b->nc_bulk, &b->js_bulk, jl_natsd_url(b->natsd), "jetledger-bench-bulk",
                           false);
    if (ns != NATS_OK)
        return bench_fail(b, JL_ERR_NATS, "cannot connect to %s: %s", jl_natsd_url(b->natsd),
                          natsStatus_GetText(ns));
    return JL_OK;
}

static void disconnect(natsConnection **nc, jsCtx **js)
{
    if (*js != NULL)
        jsCtx_Destroy(*js);
    *js = NULL;
    if (*nc != NULL) {
        natsConnection_Close(*nc);
        natsConnection_Destroy(*nc);
    }
    *nc = NULL;
}

void bench_env_stop(bench *b)
{
    disconnect(&b->nc, &b->js);
    disconnect(&b->nc_bulk, &b->js_bulk);
    jl_natsd_destroy(b->natsd);
    b->natsd = NULL;
}

jl_status bench_spawn(bench *b, pid_t *out_pid, const char *binary, const char *const *extra_env,
                      const char *log_path)
{
    char exe[PATH_MAX + 64], url[128];
    const char *env[16];
    size_t n = 0;

    snprintf(exe, sizeof(exe), "%s/%s", b->bin_dir, binary);
    if (access(exe, X_OK) != 0)
        return bench_fail(b, JL_ERR_NOT_FOUND, "%s not found or not executable (build it first)",
                          exe);
    snprintf(url, sizeof(url), "NATS_URL=%s", jl_natsd_url(b->natsd));
    env[n++] = url;
    for (size_t i = 0; extra_env != NULL && extra_env[i] != NULL; i++) {
        if (n + 1 >= sizeof(env) / sizeof(env[0]))
            return bench_fail(b, JL_ERR_INVALID, "too many environment variables for %s", binary);
        env[n++] = extra_env[i];
    }
    env[n] = NULL;
    const char *argv[] = {exe, NULL};
    if (jl_proc_spawn(out_pid, argv, env, log_path) != 0)
        return bench_fail(b, JL_ERR_IO, "cannot start %s: %s", exe, strerror(errno));
    return JL_OK;
}

jl_status bench_stop_proc(bench *b, pid_t *pid, const char *what)
{
    int st = 0;
    if (*pid <= 0)
        return JL_OK;
    if (jl_proc_stop(*pid, SIGTERM, STOP_TIMEOUT_MS, &st) != 0) {
        int e = errno;
        *pid = 0;
        return bench_fail(b, JL_ERR_INTERNAL, "cannot stop %s: %s", what, strerror(e));
    }
    *pid = 0;
    /* Services exit 0 after SIGTERM (README): anything else is a crash or a hang we killed.
     * After Ctrl-C the terminal's SIGINT reached them too, and our SIGTERM is a second signal
     * (exit 130 by design). */
    if (st != 0 && !(st == 130 && bench_stopping()))
        return bench_fail(b, JL_ERR_INTERNAL,
                          "%s exited with status %d on SIGTERM (expected 0; 137 = killed after "
                          "%d ms)",
                          what, st, STOP_TIMEOUT_MS);
    return JL_OK;
}

void bench_file_tail(const char *path, char *out, size_t n)
{
    FILE *f;
    long size;
    size_t got;

    out[0] = 0;
    if (n < 2 || (f = fopen(path, "r")) == NULL)
        return;
    if (fseek(f, 0, SEEK_END) == 0 && (size = ftell(f)) >= 0) {
        long from = size > (long)(n - 1) ? size - (long)(n - 1) : 0;
        if (fseek(f, from, SEEK_SET) == 0) {
            got = fread(out, 1, n - 1, f);
            out[got] = 0;
        }
    }
    fclose(f);
}

jl_status bench_check_alive(bench *b, pid_t pid, const char *what, const char *log_path)
{
    char tail[TAIL_LEN];
    if (pid > 0 && jl_proc_alive(pid))
        return JL_OK;
    bench_file_tail(log_path, tail, sizeof(tail));
    return bench_fail(b, JL_ERR_UNAVAILABLE, "%s (pid %d) is not running; end of %s:\n%s", what,
                      (int)pid, log_path, tail);
}

/* utime + stime (+ cutime + cstime when @p with_children) of a process, in clock ticks. */
/* utime + stime (+ the reaped children's with @p with_children) of @p pid; its parent in
 * @p out_ppid (may be NULL). 0 when it cannot be read. */
static uint64_t proc_ticks_of(pid_t pid, bool with_children, pid_t *out_ppid)
{
    char path[64], buf[1024];
    uint64_t v[4] = {0};
    long ppid = 0;
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return 0;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = 0;
    /* Fields after the command name (which may hold spaces): state is field 3, ppid 4, utime
     * 14. */
    const char *p = strrchr(buf, ')');
    if (p == NULL)
        return 0;
    p++;
    for (int field = 3; field <= 17 && *p; field++) {
        while (*p == ' ')
            p++;
        if (field == 4)
            ppid = strtol(p, NULL, 10);
        if (field >= 14)
            v[field - 14] = strtoull(p, NULL, 10);
        while (*p && *p != ' ')
            p++;
    }
    if (out_ppid != NULL)
        *out_ppid = (pid_t)ppid;
    return v[0] + v[1] + (with_children ? v[2] + v[3] : 0);
}

static uint64_t proc_ticks(pid_t pid, bool with_children)
{
    return proc_ticks_of(pid, with_children, NULL);
}

static int cmp_pid(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

/* Every process but ours, our children and kernel threads, with its CPU ticks, by pid. */
static void sample_others(const pid_t *ours, size_t n_ours, bench_cpu *out)
{
    DIR *d = opendir("/proc");
    struct dirent *de;
    pid_t self = getpid();
    out->n_others = 0;
    while (d != NULL && (de = readdir(d)) != NULL && out->n_others < BENCH_MAX_PROCS) {
        char *end = NULL;
        long pid = strtol(de->d_name, &end, 10);
        if (end == de->d_name || *end != 0 || pid <= 0 || pid == self)
            continue;
        bool mine = false;
        for (size_t i = 0; i < n_ours && !mine; i++)
            mine = ours[i] == (pid_t)pid;
        pid_t ppid = 0;
        uint64_t t = proc_ticks_of((pid_t)pid, false, &ppid);
        /* Kernel threads (children of kthreadd, pid 2) mostly write back or serve what the
         * processes they run for asked: charged to no workload, ours included. */
        if (mine || ppid == self || pid == 2 || ppid == 2)
            continue;
        out->others[out->n_others].pid = (int)pid;
        out->others[out->n_others].ticks = t;
        out->n_others++;
    }
    if (d != NULL)
        closedir(d);
    qsort(out->others, out->n_others, sizeof(out->others[0]), cmp_pid);
}

void bench_cpu_sample(const bench *b, bench_cpu *out)
{
    char line[512];
    unsigned long long t[8] = {0};
    out->t_ns = bench_now_ns();
    out->busy_ticks = out->steal_ticks = out->mine_ticks = 0;
    FILE *f = fopen("/proc/stat", "r");
    if (f != NULL) {
        if (fgets(line, sizeof(line), f) != NULL &&
            sscanf(line, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &t[0], &t[1], &t[2], &t[3],
                   &t[4], &t[5], &t[6], &t[7]) == 8) {
            out->busy_ticks = t[0] + t[1] + t[2] + t[5] + t[6] + t[7];
            out->steal_ticks = t[7];
        }
        fclose(f);
    }
    /* Our reaped children count in cutime/cstime; running ones are read one by one. */
    pid_t running[] = {b->natsd ? jl_natsd_pid(b->natsd) : 0, b->orders_pid, b->live_pid,
                       b->catchup_pid};
    out->mine_ticks = proc_ticks(getpid(), true);
    for (size_t i = 0; i < sizeof(running) / sizeof(running[0]); i++) {
        if (running[i] > 0)
            out->mine_ticks += proc_ticks(running[i], false);
    }
    sample_others(running, sizeof(running) / sizeof(running[0]), out);
}

double bench_cpu_foreign(const bench *b, const bench_cpu *from, const bench_cpu *to)
{
    double secs = (double)(to->t_ns - from->t_ns) / 1e9;
    double capacity = secs * (double)sysconf(_SC_CLK_TCK) * (double)b->machine.nproc;
    if (capacity <= 0 || to->steal_ticks < from->steal_ticks)
        return 0;
    /* Both lists are sorted: a process in both counts its growth, one that started meanwhile
     * all of its time; one that ended meanwhile is lost to us. */
    double others = (double)(to->steal_ticks - from->steal_ticks);
    size_t i = 0;
    for (size_t j = 0; j < to->n_others; j++) {
        while (i < from->n_others && from->others[i].pid < to->others[j].pid)
            i++;
        bool seen = i < from->n_others && from->others[i].pid == to->others[j].pid;
        uint64_t before = seen ? from->others[i].ticks : 0;
        if (to->others[j].ticks > before)
            others += (double)(to->others[j].ticks - before);
    }
    double share = others / capacity;
    return share < 0 ? 0 : share > 1 ? 1 : share;
}

double bench_proc_cpu_s(pid_t pid)
{
    return (double)proc_ticks(pid, false) / (double)sysconf(_SC_CLK_TCK);
}

jl_status bench_vmhwm_kb(bench *b, pid_t pid, long *out_kb)
{
    char path[64], val[64] = "";
    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    read_line_value(path, "VmHWM", val, sizeof(val));
    long kb = strtol(val, NULL, 10);
    if (kb <= 0)
        return bench_fail(b, JL_ERR_IO, "cannot read VmHWM from %s", path);
    *out_kb = kb;
    return JL_OK;
}

uint64_t bench_checkpoint(const char *data_dir, int64_t *out_updated_ns)
{
    char ptr[PATH_MAX + 32], name[256] = "", db_path[PATH_MAX + 300];
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    uint64_t seq = 0;
    FILE *f;

    if (out_updated_ns != NULL)
        *out_updated_ns = 0;

    snprintf(ptr, sizeof(ptr), "%s/order_summary.current", data_dir);
    f = fopen(ptr, "r");
    if (f != NULL) {
        if (fgets(name, sizeof(name), f) == NULL)
            name[0] = 0;
        fclose(f);
    }
    name[strcspn(name, "\r\n")] = 0;
    if (name[0] == 0 || strchr(name, '/') != NULL)
        snprintf(name, sizeof(name), "order_summary.db");
    snprintf(db_path, sizeof(db_path), "%s/%s", data_dir, name);
    if (access(db_path, R_OK) != 0)
        return 0;
    /* Read-only, and no statement left open: the projector's writes must not wait on us. */
    if (sqlite3_open_v2(db_path, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK) {
        sqlite3_busy_timeout(db, 1000);
        if (sqlite3_prepare_v2(db, "SELECT last_seq, updated_at_ns FROM jl_state WHERE id = 1", -1,
                               &st, NULL) == SQLITE_OK &&
            sqlite3_step(st) == SQLITE_ROW) {
            seq = (uint64_t)sqlite3_column_int64(st, 0);
            if (out_updated_ns != NULL)
                *out_updated_ns = sqlite3_column_int64(st, 1);
        }
        sqlite3_finalize(st);
    }
    sqlite3_close(db);
    return seq;
}

jl_status bench_stream_last_seq(bench *b, const char *stream, uint64_t *out_seq)
{
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    natsStatus ns = js_GetStreamInfo(&si, b->js, stream, NULL, &jerr);
    if (ns != NATS_OK)
        return bench_fail(b, JL_ERR_NATS, "cannot read stream %s: %s (JetStream error %d)", stream,
                          natsStatus_GetText(ns), (int)jerr);
    *out_seq = si->State.LastSeq;
    jsStreamInfo_Destroy(si);
    return JL_OK;
}

long bench_log_errors(const char *log_path, char *first, size_t n)
{
    char line[4096];
    long count = 0;
    FILE *f = fopen(log_path, "r");
    if (n > 0)
        first[0] = 0;
    if (f == NULL)
        return 0;
    while (fgets(line, sizeof(line), f) != NULL) {
        if (strstr(line, "\"level\":\"error\"") == NULL)
            continue;
        if (count == 0 && n > 0) {
            snprintf(first, n, "%s", line);
            first[strcspn(first, "\n")] = 0;
        }
        count++;
    }
    fclose(f);
    return count;
}
