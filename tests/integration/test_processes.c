/*
 * The real binaries (build/bin/orders, order_summary, jetledger) as separate processes against
 * a real nats-server started per test: a projector killed with SIGKILL between batches resumes
 * from its checkpoint and ends with the same read model as an uninterrupted one; services stop
 * on SIGTERM with status 0 (a projector having committed and acked the batch in hand) and at
 * once on a second signal; a missing or wrong server is reported clearly; the CLI round-trips
 * commands, queries and events with its documented exit codes; producer replicas share the
 * commands of their queue group.
 *
 * Every spawned process is recorded and killed in the teardown (and, in fork mode, dies with
 * the test through PR_SET_PDEATHSIG). Every wait is bounded. All temporary directories live
 * under one root that main() removes, so even a failed fork-mode test leaves nothing behind.
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "jetledger/app.h"
#include "jetledger/projector.h"
#include "orders/orders.pb-c.h"
#include "projection.h"
#include "jetledger/admin.pb-c.h"
#include "support.h"

extern char **environ;

/* How long a service may take to answer its first request after being spawned. */
#define READY_MS 20000
/* Bound on a CLI call (its own request timeout is 5 s). */
#define CLI_MS 20000
/* The graceful shutdown bound the services document (JL_APP_SHUTDOWN_MS). */
#define SHUTDOWN_MS 10000
#define MAX_PROCS 8
#define CLI_OUT_MAX 65536

static tenv env;
static pid_t procs[MAX_PROCS]; /* spawned and not yet reaped; the teardown kills these */

/* ---- small utilities ------------------------------------------------------------------- */

static void sleep_ms(int ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR) {
    }
}

/* Read up to n-1 bytes of a file into out (empty when missing). */
static void read_text(const char *path, char *out, size_t n)
{
    FILE *f = fopen(path, "r");
    size_t got = 0;
    if (f != NULL) {
        got = fread(out, 1, n - 1, f);
        fclose(f);
    }
    out[got] = '\0';
}

/* The whole file, malloc'd ("" when missing); caller frees. */
static char *slurp(const char *path)
{
    FILE *f = fopen(path, "r");
    char *text = NULL;
    long len = 0;
    if (f != NULL && fseek(f, 0, SEEK_END) == 0 && (len = ftell(f)) >= 0 &&
        fseek(f, 0, SEEK_SET) == 0) {
        text = malloc((size_t)len + 1);
        ck_assert_ptr_nonnull(text);
        len = (long)fread(text, 1, (size_t)len, f);
        text[len] = '\0';
    }
    if (f != NULL)
        fclose(f);
    return text != NULL ? text : strdup("");
}

/* The last bytes of a log, for failure messages. */
static const char *log_tail(const char *path, char *buf, size_t n)
{
    char *all = slurp(path);
    size_t len = strlen(all);
    snprintf(buf, n, "%s", len >= n ? all + len - (n - 1) : all);
    free(all);
    return buf;
}

static int count_occurrences(const char *text, const char *needle)
{
    int n = 0;
    for (const char *p = strstr(text, needle); p != NULL; p = strstr(p + 1, needle))
        n++;
    return n;
}

static int file_count(const char *path, const char *needle)
{
    char *text = slurp(path);
    int n = count_occurrences(text, needle);
    free(text);
    return n;
}

static bool wait_log(const char *path, const char *needle, int timeout_ms)
{
    int64_t deadline = tnow_ms() + timeout_ms;
    for (;;) {
        if (file_count(path, needle) > 0)
            return true;
        if (tnow_ms() >= deadline)
            return false;
        sleep_ms(10);
    }
}

/* A line of a JSON log holding both fragments (e.g. a level and a msg). */
static bool log_has_line(const char *path, const char *a, const char *b)
{
    char *text = slurp(path);
    bool found = tlines_with(text, a, b) > 0;
    free(text);
    return found;
}

static void bin_path(char *out, size_t n, const char *name)
{
    const char *dir = getenv("JL_BIN_DIR");
    ck_assert_msg(dir != NULL && *dir != '\0', "JL_BIN_DIR is not set (run through ctest)");
    snprintf(out, n, "%s/%s", dir, name);
    ck_assert_msg(access(out, X_OK) == 0, "%s is not executable: build it first", out);
}

/* ---- spawned services ------------------------------------------------------------------ */

typedef struct svc {
    pid_t pid;
    char log[PATH_MAX];
} svc;

static void record(pid_t pid)
{
    for (int i = 0; i < MAX_PROCS; i++) {
        if (procs[i] == 0) {
            procs[i] = pid;
            return;
        }
    }
    ck_abort_msg("more than %d processes in one test", MAX_PROCS);
}

static void forget(pid_t pid)
{
    for (int i = 0; i < MAX_PROCS; i++) {
        if (procs[i] == pid)
            procs[i] = 0;
    }
}

/*
 * Spawn build/bin/<bin> with stdout+stderr appended to <test dir>/<log_name>, connected to
 * nats_url, with the other settings a test uses. Settings a developer may have exported are
 * overridden, so the test sees only what it asked for.
 */
static void svc_start_in(svc *s, const char *bin, const char *log_name, const char *nats_url,
                         const char *data_dir, int batch, const char *level,
                         const char *tmpfs_size);

static void svc_start(svc *s, const char *bin, const char *log_name, const char *nats_url,
                      const char *data_dir, int batch, const char *level)
{
    svc_start_in(s, bin, log_name, nats_url, data_dir, batch, level, NULL);
}

/* svc_start; with @p tmpfs_size, in a mount namespace of its own where @p data_dir is a tmpfs
 * of that size (a small disk the test can fill, and grow with remount_tmpfs). */
/* JL_FAULT_POINT for the services started next ("" none): see shared/src/fault.c. */
static char svc_fault_point[64] = "";
/* Further settings ("NAME=value") for the services started next, up to a NULL; the teardown
 * clears them. */
static const char *svc_extra[4];

static void svc_start_in(svc *s, const char *bin, const char *log_name, const char *nats_url,
                         const char *data_dir, int batch, const char *level, const char *tmpfs_size)
{
    char path[PATH_MAX], e_url[1100], e_dir[600], e_batch[32], e_level[32], e_ready[700];
    char e_fault[96], e_alive[700];
    snprintf(e_fault, sizeof(e_fault), "JL_FAULT_POINT=%s", svc_fault_point);
    snprintf(e_url, sizeof(e_url), "NATS_URL=%s", nats_url);
    snprintf(e_dir, sizeof(e_dir), "JL_DATA_DIR=%s", data_dir != NULL ? data_dir : "");
    snprintf(e_batch, sizeof(e_batch), "JL_BATCH=%d", batch > 0 ? batch : 256);
    snprintf(e_level, sizeof(e_level), "JL_LOG_LEVEL=%s", level != NULL ? level : "info");
    snprintf(e_ready, sizeof(e_ready), "JL_READY_FILE=%s/%s.ready", env.dir, log_name);
    snprintf(e_alive, sizeof(e_alive), "JL_ALIVE_FILE=%s/%s.alive", env.dir, log_name);
    const char *envv[24] = {e_url,
                            e_ready,
                            e_alive,
                            e_dir,
                            e_batch,
                            e_level,
                            "JL_DURABLE=",
                            "JL_NAME=",
                            "JL_CREDS=",
                            "JL_REPLICAS=",
                            "JL_MAX_AGE=",
                            "JL_MAX_BYTES=",
                            "JL_REQUEST_TIMEOUT=",
                            "JL_DUPLICATE_WINDOW=",
                            "JL_COMMAND_RETRIES=",
                            "JL_SERVE_LAG=",
                            "JL_FAULT_ACTION=",
                            e_fault,
                            NULL};
    for (size_t i = 0; i < 4 && svc_extra[i] != NULL; i++) {
        size_t k = 0, key = strcspn(svc_extra[i], "=") + 1;
        while (envv[k] != NULL && strncmp(envv[k], svc_extra[i], key) != 0)
            k++;
        envv[k] = svc_extra[i]; /* in place of the same name's, else added */
    }
    bin_path(path, sizeof(path), bin);
    snprintf(s->log, sizeof(s->log), "%s/%s", env.dir, log_name);
    const char *const argv[] = {path, NULL};
    int rc = tmpfs_size != NULL
                 ? jl_proc_spawn_tmpfs(&s->pid, argv, envv, s->log, data_dir, tmpfs_size)
                 : jl_proc_spawn(&s->pid, argv, envv, s->log);
    ck_assert_msg(rc == 0, "spawn %s: %s", path, strerror(errno));
    record(s->pid);
    /* From here a SIGTERM is a stop, not death by signal (143), even on a slow machine; a
     * service that exits at once (bad settings) is not waited for. */
    ck_assert_msg(jl_proc_wait_blocked(s->pid, SIGTERM, 10000) >= 0,
                  "%s did not set up its signals in 10 s", bin);
}

/* Signal (0: none), wait up to timeout_ms, SIGKILL if needed; returns the exit status. */
static int svc_stop(svc *s, int sig, int timeout_ms)
{
    int status = -1;
    ck_assert_msg(jl_proc_stop(s->pid, sig, timeout_ms, &status) == 0, "stop pid %d: %s",
                  (int)s->pid, strerror(errno));
    forget(s->pid);
    s->pid = 0;
    return status;
}

static void setup(void)
{
    memset(procs, 0, sizeof(procs));
    tenv_start(&env);
}

static void teardown(void)
{
    memset(svc_extra, 0, sizeof(svc_extra));
    svc_fault_point[0] = 0;
    for (int i = 0; i < MAX_PROCS; i++) {
        if (procs[i] != 0)
            jl_proc_stop(procs[i], SIGKILL, 5000, NULL);
        procs[i] = 0;
    }
    tenv_stop(&env);
}

/* ---- requests -------------------------------------------------------------------------- */

static jl_code cmd(const ProtobufCMessage *m, jl_reply *r)
{
    jl_reply_reset(r);
    natsStatus ns = tsend(env.conn, "orders", false, m, NULL, r);
    ck_assert_msg(ns == NATS_OK, "%s: %s", m->descriptor->short_name, natsStatus_GetText(ns));
    return r->code;
}

/* Send until something answers (any reply code), bounded; false on timeout. */
static bool answers(const char *service, bool query, const ProtobufCMessage *m, jl_reply *r,
                    int timeout_ms)
{
    int64_t deadline = tnow_ms() + timeout_ms;
    for (;;) {
        jl_reply_reset(r);
        if (tsend(env.conn, service, query, m, NULL, r) == NATS_OK)
            return true;
        if (tnow_ms() >= deadline)
            return false;
        sleep_ms(20);
    }
}

/* A command that appends nothing (the order does not exist) proves the producer serves. */
static void wait_orders_answer(const svc *s)
{
    char tail[1500];
    jl_reply r;
    Orders__PlaceOrder m = ORDERS__PLACE_ORDER__INIT;
    m.order_id = "6f1c2a8e-0000-4000-8000-00000000abcd";
    jl_reply_init(&r);
    ck_assert_msg(answers("orders", false, &m.base, &r, READY_MS), "orders does not answer: %s",
                  log_tail(s->log, tail, sizeof(tail)));
    ck_assert_int_eq(r.code, JL_CODE_NOT_FOUND);
    jl_reply_cleanup(&r);
}

static void wait_summary_answers(const svc *s)
{
    char tail[1500];
    jl_reply r;
    Orders__GetOrder m = ORDERS__GET_ORDER__INIT;
    m.order_id = "6f1c2a8e-0000-4000-8000-00000000abcd";
    jl_reply_init(&r);
    ck_assert_msg(answers("order_summary", true, &m.base, &r, READY_MS),
                  "order_summary does not answer: %s", log_tail(s->log, tail, sizeof(tail)));
    ck_assert_int_eq(r.code, JL_CODE_NOT_FOUND);
    jl_reply_cleanup(&r);
}

static uint64_t stream_last_seq(void)
{
    return tstream_last_seq(env.conn, "ORDERS");
}

/*
 * Orders first..first+n-1: each created with three items; every fourth loses one, every third
 * is placed and the next one cancelled (about five events an order). Returns the stream
 * sequence of the last event.
 */
static uint64_t make_orders(int first, int n)
{
    static const char *const skus[] = {"apple", "pear", "fig"};
    uint64_t last = 0;
    jl_reply r;
    jl_reply_init(&r);
    for (int i = first; i < first + n; i++) {
        char customer[32], id[JL_UUID_LEN + 1];
        Orders__CreateOrder c = ORDERS__CREATE_ORDER__INIT;
        snprintf(customer, sizeof(customer), "customer-%d", i);
        c.customer_id = customer;
        ck_assert_msg(cmd(&c.base, &r) == JL_CODE_OK, "CreateOrder: %s", r.message);
        snprintf(id, sizeof(id), "%s", r.aggregate_id);
        for (int k = 0; k < 3; k++) {
            Orders__AddItem a = ORDERS__ADD_ITEM__INIT;
            a.order_id = id;
            a.sku = (char *)skus[k];
            a.quantity = 1 + (i + k) % 4;
            a.unit_price_cents = 100 + 10 * i + k;
            ck_assert_msg(cmd(&a.base, &r) == JL_CODE_OK, "AddItem: %s", r.message);
        }
        if (i % 4 == 0) {
            Orders__RemoveItem m = ORDERS__REMOVE_ITEM__INIT;
            m.order_id = id;
            m.sku = "pear";
            ck_assert_msg(cmd(&m.base, &r) == JL_CODE_OK, "RemoveItem: %s", r.message);
        }
        if (i % 3 == 0) {
            Orders__PlaceOrder m = ORDERS__PLACE_ORDER__INIT;
            m.order_id = id;
            ck_assert_msg(cmd(&m.base, &r) == JL_CODE_OK, "PlaceOrder: %s", r.message);
        } else if (i % 3 == 1) {
            Orders__CancelOrder m = ORDERS__CANCEL_ORDER__INIT;
            m.order_id = id;
            m.reason = "changed mind";
            ck_assert_msg(cmd(&m.base, &r) == JL_CODE_OK, "CancelOrder: %s", r.message);
        }
        last = r.stream_seq;
    }
    jl_reply_cleanup(&r);
    return last;
}

/* ---- read models ----------------------------------------------------------------------- */

/* The projector's checkpoint read from its database (read-only); -1 if not readable yet. */
static int db_last_seq(const char *path, uint64_t *out_seq)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    int rc = -1;
    if (access(path, F_OK) == 0 &&
        sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK) {
        sqlite3_busy_timeout(db, 2000);
        if (sqlite3_prepare_v2(db, "SELECT last_seq FROM jl_state WHERE id = 1", -1, &st, NULL) ==
                SQLITE_OK &&
            sqlite3_step(st) == SQLITE_ROW) {
            *out_seq = (uint64_t)sqlite3_column_int64(st, 0);
            rc = 0;
        }
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
    return rc;
}

static int64_t db_count(const char *path, const char *sql)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    int64_t n = -1;
    ck_assert_int_eq(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    sqlite3_busy_timeout(db, 2000);
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
        n = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return n;
}

static void wait_db_at(const char *db_path, const svc *s, uint64_t seq, int timeout_ms)
{
    int64_t deadline = tnow_ms() + timeout_ms;
    uint64_t at = 0;
    char tail[1500];
    for (;;) {
        if (db_last_seq(db_path, &at) == 0 && at >= seq)
            break;
        ck_assert_msg(tnow_ms() < deadline, "read model at %" PRIu64 ", want %" PRIu64 ": %s", at,
                      seq, log_tail(s->log, tail, sizeof(tail)));
        sleep_ms(20);
    }
    ck_assert_uint_eq(at, seq);
}

/* The durable has delivered and had acked everything up to seq. */
static void wait_consumer_at(const char *durable, uint64_t seq, int timeout_ms)
{
    int64_t deadline = tnow_ms() + timeout_ms;
    uint64_t delivered = 0, ack_floor = 0;
    int64_t pending = -1;
    for (;;) {
        jsConsumerInfo *ci = NULL;
        jsErrCode jerr = 0;
        natsStatus ns =
            js_GetConsumerInfo(&ci, jl_conn_js(env.conn), "ORDERS", durable, NULL, &jerr);
        if (ns == NATS_OK) {
            delivered = ci->Delivered.Stream;
            ack_floor = ci->AckFloor.Stream;
            pending = ci->NumAckPending;
            jsConsumerInfo_Destroy(ci);
            if (delivered == seq && ack_floor == seq && pending == 0)
                return;
        }
        ck_assert_msg(tnow_ms() < deadline,
                      "consumer %s: delivered %" PRIu64 ", ack floor %" PRIu64
                      ", ack pending %" PRId64 ", want %" PRIu64 " (%s, JetStream error %d)",
                      durable, delivered, ack_floor, pending, seq, natsStatus_GetText(ns),
                      (int)jerr);
        sleep_ms(20);
    }
}

/* An uninterrupted in-process projector of its own (data dir and durable), caught up to seq. */
static void build_reference(const char *data_dir, uint64_t seq)
{
    jl_projector *p = NULL;
    jl_config cfg = env.cfg;
    char err[1024] = "";
    snprintf(cfg.data_dir, sizeof(cfg.data_dir), "%s", data_dir);
    snprintf(cfg.durable, sizeof(cfg.durable), "reference");
    cfg.batch = 64;
    ck_assert_msg(
        jl_projector_open(&p, env.conn, &order_summary_projector, &cfg, err, sizeof(err)) == JL_OK,
        "reference projector: %s", err);
    int64_t deadline = tnow_ms() + 30000;
    while (jl_projector_checkpoint(p) < seq) {
        jl_status s = jl_projector_step(p, 200, NULL);
        ck_assert_msg(s == JL_OK, "step: %s: %s", jl_status_str(s), jl_projector_errmsg(p));
        ck_assert_msg(tnow_ms() < deadline, "reference stuck at %" PRIu64 ", want %" PRIu64,
                      jl_projector_checkpoint(p), seq);
    }
    ck_assert_uint_eq(jl_projector_checkpoint(p), seq);
    jl_projector_close(p, 1000);
}

/* ---- 1. a projector killed between batches ----------------------------------------------- */

/*
 * Fill the stream, run order_summary with small batches, SIGKILL it while its checkpoint is
 * partway, (optionally append more while it is dead), restart it, and compare its read model
 * with an uninterrupted reference built from the same stream.
 */
static void kill_and_resume(bool more_while_dead)
{
    enum { ORDERS = 40, MORE = 10 };
    char dir_a[400], db_a[500], dir_ref[400], db_ref[500], tail[1500], ready[96];
    svc prod, proj;
    uint64_t last, at = 0, after_kill = 0;

    snprintf(dir_a, sizeof(dir_a), "%s/a", env.dir);
    snprintf(db_a, sizeof(db_a), "%s/order_summary.db", dir_a);
    snprintf(dir_ref, sizeof(dir_ref), "%s/ref", env.dir);
    snprintf(db_ref, sizeof(db_ref), "%s/order_summary.db", dir_ref);

    svc_start(&prod, "orders", "orders.log", env.cfg.nats_url, NULL, 0, NULL);
    wait_orders_answer(&prod);
    last = make_orders(0, ORDERS);
    ck_assert_uint_eq(stream_last_seq(), last);
    ck_assert_uint_ge(last, 150);

    /*
     * The whole stream takes the projector a few dozen batches (tens of ms): poll tightly. If
     * the test process was descheduled long enough to miss the window, start over from an
     * empty read model and a deleted durable (at most three tries).
     */
    for (int attempt = 1;; attempt++) {
        char log_name[32];
        ck_assert_int_eq(jl_rm_rf(dir_a), 0);
        js_DeleteConsumer(jl_conn_js(env.conn), "ORDERS", "order_summary", NULL, NULL);
        snprintf(log_name, sizeof(log_name), "summary-1-%d.log", attempt);
        svc_start(&proj, "order_summary", log_name, env.cfg.nats_url, dir_a, 5, NULL);
        int64_t deadline = tnow_ms() + 30000;
        for (;;) {
            if (db_last_seq(db_a, &at) == 0 && at > 0)
                break;
            ck_assert_msg(tnow_ms() < deadline, "projector never committed a batch: %s",
                          log_tail(proj.log, tail, sizeof(tail)));
            sleep_ms(1);
        }
        ck_assert_int_eq(svc_stop(&proj, SIGKILL, 5000), 137);
        ck_assert_int_eq(db_last_seq(db_a, &after_kill), 0);
        ck_assert_uint_ge(after_kill, at);
        if (after_kill < last)
            break;
        ck_assert_msg(attempt < 3,
                      "the projector applied all %" PRIu64 " events before it could be killed",
                      last);
    }
    ck_assert_msg(after_kill > 0 && after_kill < last,
                  "checkpoint after the kill is %" PRIu64 ", want partway (0, %" PRIu64 ")",
                  after_kill, last);

    if (more_while_dead) {
        uint64_t more = make_orders(ORDERS, MORE);
        ck_assert_uint_gt(more, last);
        last = more;
        ck_assert_uint_eq(stream_last_seq(), last);
    }
    ck_assert_int_eq(db_last_seq(db_a, &at), 0);
    ck_assert_uint_eq(at, after_kill);

    svc_start(&proj, "order_summary", "summary-2.log", env.cfg.nats_url, dir_a, 5, NULL);
    wait_db_at(db_a, &proj, last, 30000);
    /* It resumed from its checkpoint, not from the start of the stream. */
    snprintf(ready, sizeof(ready), "\"checkpoint\":%" PRIu64 ",", after_kill);
    ck_assert_msg(log_has_line(proj.log, "\"msg\":\"projector ready\"", ready),
                  "restart did not open at checkpoint %" PRIu64 ": %s", after_kill,
                  log_tail(proj.log, tail, sizeof(tail)));
    wait_consumer_at("order_summary", last, 10000);

    build_reference(dir_ref, last);
    char *got = tdump(db_a);
    char *want = tdump(db_ref);
    ck_assert_int_eq(count_occurrences(want, "orders|"), more_while_dead ? ORDERS + MORE : ORDERS);
    ck_assert_str_eq(got, want);
    free(got);
    free(want);
    ck_assert_int_eq(db_count(db_a, "SELECT COUNT(*) FROM jl_dead_letters"), 0);

    ck_assert_int_eq(svc_stop(&proj, SIGTERM, SHUTDOWN_MS), 0);
    ck_assert_int_eq(svc_stop(&prod, SIGTERM, SHUTDOWN_MS), 0);
}

START_TEST(projector_killed_between_batches_ends_equal_to_uninterrupted)
{
    kill_and_resume(false);
}
END_TEST

START_TEST(projector_killed_then_restarted_applies_events_appended_while_dead)
{
    kill_and_resume(true);
}
END_TEST

/* ---- a full disk ------------------------------------------------------------------------ */

/* Resize the tmpfs a service got from svc_start_in, from inside its mount namespace. */
static void remount_tmpfs(pid_t pid, const char *dir, const char *size)
{
    ck_assert_msg(jl_tmpfs_resize(pid, dir, size) == 0, "resizing %s of pid %d to %s failed", dir,
                  (int)pid, size);
}

/* A consistent copy of a read model that only the service's mount namespace sees (SQLite
 * resolves /proc/<pid>/root to our own root, so it cannot be opened from here). */
static void copy_out(pid_t pid, const char *db, const char *copy)
{
    char line[PATH_MAX * 2 + 200];
    unlink(copy);
    snprintf(line, sizeof(line), "nsenter -t %d -m -r sqlite3 -readonly '%s' \".backup '%s'\"",
             (int)pid, db, copy);
    ck_assert_msg(system(line) == 0, "%s failed", line);
}

/* The durable's ack floor: what the projector says it has committed. */
static uint64_t ack_floor(void)
{
    jsConsumerInfo *ci = NULL;
    ck_assert_int_eq(
        js_GetConsumerInfo(&ci, jl_conn_js(env.conn), "ORDERS", "order_summary", NULL, NULL),
        NATS_OK);
    uint64_t floor = ci->AckFloor.Stream;
    jsConsumerInfo_Destroy(ci);
    return floor;
}

/*
 * The disk under the read model fills while events keep coming. The projector says so in its
 * log, goes on answering queries from what it has, acks nothing it could not commit, and once
 * there is room again applies everything: it ends equal to a projector that never ran out.
 */
START_TEST(a_full_disk_holds_the_projector_and_loses_nothing)
{
    char dir[400], db[500], copy[500], dir_ref[400], db_ref[500], tail[1500];
    svc prod, proj;
    uint64_t at = 0;
    snprintf(dir, sizeof(dir), "%s/small", env.dir);
    snprintf(db, sizeof(db), "%s/order_summary.db", dir);
    snprintf(copy, sizeof(copy), "%s/copy.db", env.dir);
    snprintf(dir_ref, sizeof(dir_ref), "%s/ref", env.dir);
    snprintf(db_ref, sizeof(db_ref), "%s/order_summary.db", dir_ref);
    ck_assert_int_eq(mkdir(dir, 0755), 0);
    svc_start(&prod, "orders", "orders.log", env.cfg.nats_url, NULL, 0, NULL);
    wait_orders_answer(&prod);
    uint64_t last = make_orders(0, 10);

    svc_start_in(&proj, "order_summary", "summary.log", env.cfg.nats_url, dir, 5, NULL, "480k");
    wait_consumer_at("order_summary", last, 30000);

    int made = 10;
    int64_t deadline = tnow_ms() + 60000;
    while (file_count(proj.log, "JL_ERR_DISK_FULL") == 0) {
        ck_assert_msg(tnow_ms() < deadline && made < 3000, "the disk never filled (%d orders): %s",
                      made, log_tail(proj.log, tail, sizeof(tail)));
        last = make_orders(made, 10);
        made += 10;
        sleep_ms(20);
    }
    last = make_orders(made, 10); /* more while it is full */
    made += 10;
    wait_summary_answers(&proj);
    sleep_ms(1000);
    uint64_t acked = ack_floor();
    copy_out(proj.pid, db, copy);
    ck_assert_int_eq(db_last_seq(copy, &at), 0);
    ck_assert_uint_lt(at, last);
    ck_assert_uint_le(acked, at); /* nothing acked past what was committed */
    printf("read model on a 480 KiB tmpfs: full after %d orders; held at %" PRIu64
           " (acked %" PRIu64 ") with the stream at %" PRIu64 "\n",
           made - 10, at, acked, last);

    remount_tmpfs(proj.pid, dir, "64m");
    wait_consumer_at("order_summary", last, 30000);
    copy_out(proj.pid, db, copy);
    ck_assert_int_eq(db_last_seq(copy, &at), 0);
    ck_assert_uint_eq(at, last);
    build_reference(dir_ref, last);
    char *got = tdump(copy);
    char *want = tdump(db_ref);
    ck_assert_int_eq(count_occurrences(want, "orders|"), made);
    ck_assert_str_eq(got, want);
    free(got);
    free(want);
    ck_assert_int_eq(db_count(copy, "SELECT COUNT(*) FROM jl_dead_letters"), 0);
    printf("grown to 64 MiB: applied to %" PRIu64 ", equal to a reference model (%d orders)\n", at,
           made);
    ck_assert_int_eq(svc_stop(&proj, SIGTERM, SHUTDOWN_MS), 0);
    ck_assert_int_eq(svc_stop(&prod, SIGTERM, SHUTDOWN_MS), 0);
}
END_TEST

/* ---- 2. signals ------------------------------------------------------------------------ */

START_TEST(sigterm_stops_services_with_status_0)
{
    char data[600], tail[1500], tail2[1500];
    svc prod, proj;
    jl_reply r;
    jl_reply_init(&r);
    snprintf(data, sizeof(data), "%s/p", env.dir);
    svc_extra[0] = "JL_STATS_INTERVAL=1";
    svc_start(&prod, "orders", "orders.log", env.cfg.nats_url, NULL, 0, NULL);
    wait_orders_answer(&prod); /* the stream is there: the projector has nothing to wait for */
    svc_start(&proj, "order_summary", "summary.log", env.cfg.nats_url, data, 0, NULL);
    wait_summary_answers(&proj);

    /* Both serve: a command round trip and a read-your-write query through the projector. */
    Orders__CreateOrder c = ORDERS__CREATE_ORDER__INIT;
    c.customer_id = "sig";
    ck_assert_int_eq(cmd(&c.base, &r), JL_CODE_OK);
    Orders__GetOrder q = ORDERS__GET_ORDER__INIT;
    char id[JL_UUID_LEN + 1];
    snprintf(id, sizeof(id), "%s", r.aggregate_id);
    q.order_id = id;
    q.min_sequence = r.stream_seq;
    jl_reply_reset(&r);
    ck_assert_int_eq(tsend(env.conn, "order_summary", true, &q.base, NULL, &r), NATS_OK);
    ck_assert_msg(r.code == JL_CODE_OK, "GetOrder: %s", r.message);
    /* Their counters, in the log every second here. */
    char cp[64];
    snprintf(cp, sizeof(cp), "\"checkpoints\":{\"ORDERS\":%" PRIu64 "}", r.stream_seq);
    int64_t until = tnow_ms() + 5000;
    while ((!log_has_line(prod.log, "\"msg\":\"stats\"", "\"accepted\":1,") ||
            !log_has_line(proj.log, "\"msg\":\"stats\"", cp)) &&
           tnow_ms() < until)
        nats_Sleep(100);
    ck_assert_msg(log_has_line(prod.log, "\"msg\":\"stats\"", "\"accepted\":1,"), "%s",
                  log_tail(prod.log, tail, sizeof(tail)));
    ck_assert_msg(log_has_line(proj.log, "\"msg\":\"stats\"", cp), "%s",
                  log_tail(proj.log, tail, sizeof(tail)));

    /* Both at once, as an orchestrator stops a deployment; each must be gone in the bound. */
    int64_t t0 = tnow_ms();
    ck_assert_int_eq(kill(prod.pid, SIGTERM), 0);
    ck_assert_int_eq(kill(proj.pid, SIGTERM), 0);
    int st_prod = svc_stop(&prod, 0, SHUTDOWN_MS);
    int st_proj = svc_stop(&proj, 0, SHUTDOWN_MS);
    ck_assert_msg(st_prod == 0, "orders exited with %d: %s", st_prod,
                  log_tail(prod.log, tail, sizeof(tail)));
    ck_assert_msg(st_proj == 0, "order_summary exited with %d: %s", st_proj,
                  log_tail(proj.log, tail, sizeof(tail)));
    ck_assert_int_lt(tnow_ms() - t0, SHUTDOWN_MS);
    ck_assert(log_has_line(prod.log, "\"level\":\"info\"", "\"msg\":\"stopping\""));
    ck_assert(log_has_line(prod.log, "\"level\":\"info\"", "\"msg\":\"stopped\""));
    ck_assert(log_has_line(proj.log, "\"msg\":\"stopping\"", "\"signal\":\"SIGTERM\""));
    ck_assert(log_has_line(proj.log, "\"level\":\"info\"", "\"msg\":\"stopped\""));
    /* A stop asked for is no incident: no warning (a connection "disconnected" by its own
     * close was one), no error. */
    ck_assert_msg(!log_has_line(prod.log, "\"level\":\"warn\"", "") &&
                      !log_has_line(prod.log, "\"level\":\"error\"", "") &&
                      !log_has_line(proj.log, "\"level\":\"warn\"", "") &&
                      !log_has_line(proj.log, "\"level\":\"error\"", ""),
                  "a warning or an error in a graceful stop: %s | %s",
                  log_tail(prod.log, tail, sizeof(tail)), log_tail(proj.log, tail2, sizeof(tail2)));
    jl_reply_cleanup(&r);
}
END_TEST

/*
 * README: SIGTERM finishes and commits the batch in hand. So after a stop in the middle of a
 * catch-up the durable has delivered and had acked exactly what the database holds, and a
 * restart resumes without resetting its consumer.
 */
START_TEST(sigterm_mid_catch_up_commits_and_acks_the_batch_in_hand)
{
    char dir[400], db[500], tail[1500], ready[96];
    svc prod, proj;
    uint64_t last, at = 0;
    snprintf(dir, sizeof(dir), "%s/a", env.dir);
    snprintf(db, sizeof(db), "%s/order_summary.db", dir);
    svc_start(&prod, "orders", "orders.log", env.cfg.nats_url, NULL, 0, NULL);
    wait_orders_answer(&prod);
    last = make_orders(0, 300); /* ~1,500 events, ~300 batches of 5: the stop lands mid-way */

    svc_start(&proj, "order_summary", "summary-1.log", env.cfg.nats_url, dir, 5, NULL);
    int64_t deadline = tnow_ms() + 30000;
    while (db_last_seq(db, &at) != 0 || at == 0) {
        ck_assert_msg(tnow_ms() < deadline, "projector never committed a batch: %s",
                      log_tail(proj.log, tail, sizeof(tail)));
        sleep_ms(1);
    }
    int st = svc_stop(&proj, SIGTERM, SHUTDOWN_MS);
    ck_assert_msg(st == 0, "exit status %d: %s", st, log_tail(proj.log, tail, sizeof(tail)));
    ck_assert_int_eq(db_last_seq(db, &at), 0);
    ck_assert_uint_gt(at, 0);
    ck_assert_msg(at < last, "the stop came after the catch-up (%" PRIu64 " of %" PRIu64 ")", at,
                  last);
    wait_consumer_at("order_summary", at, 5000);

    svc_start(&proj, "order_summary", "summary-2.log", env.cfg.nats_url, dir, 5, NULL);
    /* Had the first one applied everything before the stop, the model would be there already:
     * its log is waited for, not taken as written. */
    ck_assert_msg(wait_log(proj.log, "\"msg\":\"projector ready\"", 15000), "%s",
                  log_tail(proj.log, tail, sizeof(tail)));
    wait_db_at(db, &proj, last, 30000);
    snprintf(ready, sizeof(ready), "\"checkpoint\":%" PRIu64 ",", at);
    ck_assert_msg(log_has_line(proj.log, "\"msg\":\"projector ready\"", ready), "%s",
                  log_tail(proj.log, tail, sizeof(tail)));
    ck_assert_msg(file_count(proj.log, "\"msg\":\"consumer reset\"") == 0, "%s",
                  log_tail(proj.log, tail, sizeof(tail)));
    wait_consumer_at("order_summary", last, 10000);
    ck_assert_int_eq(svc_stop(&proj, SIGTERM, SHUTDOWN_MS), 0);
    ck_assert_int_eq(svc_stop(&prod, SIGTERM, SHUTDOWN_MS), 0);
}
END_TEST

/* Start orders and order_summary (data in <env dir>/p) and wait until both answer. */
static void start_orders_and_summary(svc s[2])
{
    char data[600];
    snprintf(data, sizeof(data), "%s/p", env.dir);
    svc_start(&s[0], "orders", "orders.log", env.cfg.nats_url, NULL, 0, NULL);
    svc_start(&s[1], "order_summary", "summary.log", env.cfg.nats_url, data, 0, NULL);
    wait_orders_answer(&s[0]);
    wait_summary_answers(&s[1]);
}

/*
 * app.c: the first signal starts a graceful stop, a second one _exit(130)s at once. Two
 * signals sent back to back may merge into one pending signal, so a clean 0 is accepted too;
 * but when the log says the second one was seen, the status must be 130.
 */
/* Ctrl-C twice in a row (as an impatient user does): the service ends within 3 s either way. The
 * two may reach it as one (a signal pending is not queued twice): a graceful stop, status 0; or
 * as two: 130, said. The second surely arriving mid-stop is the next test's. */
START_TEST(two_sigints_in_a_row_end_services_promptly)
{
    char tail[1500];
    svc s[2];
    start_orders_and_summary(s);
    for (int i = 0; i < 2; i++) {
        ck_assert_int_eq(kill(s[i].pid, SIGINT), 0);
        ck_assert_int_eq(kill(s[i].pid, SIGINT), 0);
        int64_t t0 = tnow_ms();
        int st = svc_stop(&s[i], 0, 3000);
        ck_assert_msg(st == 130 || st == 0, "%s exited with %d: %s", i ? "order_summary" : "orders",
                      st, log_tail(s[i].log, tail, sizeof(tail)));
        ck_assert_int_lt(tnow_ms() - t0, 3000);
        ck_assert(log_has_line(s[i].log, "\"msg\":\"stopping\"", "\"signal\":\"SIGINT\""));
        if (file_count(s[i].log, "second signal: exiting now") > 0)
            ck_assert_int_eq(st, 130);
    }
}
END_TEST

/* The same with the second signal surely while the graceful stop is under way, for a producer
 * and a projector: the server is paused, so the stop's drain waits on it (bounded, seconds); a
 * second signal then cuts it short with exactly 130, at once. */
START_TEST(second_signal_during_graceful_stop_exits_130)
{
    char data[600], tail[1500];
    snprintf(data, sizeof(data), "%s/p", env.dir);
    const char *const names[] = {"orders", "order_summary"};
    for (int i = 0; i < 2; i++) {
        svc s;
        char log[32];
        snprintf(log, sizeof(log), "%s.log", names[i]);
        svc_start(&s, names[i], log, env.cfg.nats_url, i == 1 ? data : NULL, 0, NULL);
        if (i == 1)
            wait_summary_answers(&s);
        else
            wait_orders_answer(&s);
        pid_t server = jl_natsd_pid(env.natsd);
        ck_assert_int_eq(jl_proc_pause(server), 0);
        ck_assert_int_eq(kill(s.pid, SIGINT), 0);
        bool stopping = wait_log(s.log, "\"msg\":\"stopping\"", 5000);
        bool alive = jl_proc_alive(s.pid);
        ck_assert_int_eq(kill(s.pid, SIGINT), 0);
        int64_t t0 = tnow_ms();
        int st = svc_stop(&s, 0, 3000);
        int64_t took = tnow_ms() - t0;
        kill(server, SIGCONT); /* before any assertion: the server outlives this test */
        ck_assert_msg(stopping, "%s: no 'stopping': %s", names[i],
                      log_tail(s.log, tail, sizeof(tail)));
        ck_assert_msg(alive, "%s: the graceful stop ended with the server paused: %s", names[i],
                      log_tail(s.log, tail, sizeof(tail)));
        ck_assert_msg(st == 130 && file_count(s.log, "second signal: exiting now") == 1,
                      "%s: status %d: %s", names[i], st, log_tail(s.log, tail, sizeof(tail)));
        ck_assert_int_lt(took, 1500);
    }
}
END_TEST

/* The graceful stop's steps each have a bound; with the server frozen they used to add up past
 * the one promised (11.5 s measured). The service ends within it all the same, saying so when
 * it had to cut the stop short. */
START_TEST(a_graceful_stop_with_the_server_frozen_ends_within_its_bound)
{
    char tail[1500];
    svc s[2];
    start_orders_and_summary(s);
    pid_t server = jl_natsd_pid(env.natsd);
    ck_assert_int_eq(jl_proc_pause(server), 0);
    int64_t t0 = tnow_ms();
    for (int i = 0; i < 2; i++)
        kill(s[i].pid, SIGTERM);
    int st[2];
    for (int i = 0; i < 2; i++)
        st[i] = svc_stop(&s[i], 0, SHUTDOWN_MS + 3000);
    int64_t took = tnow_ms() - t0;
    kill(server, SIGCONT);
    for (int i = 0; i < 2; i++) {
        /* Cut short, or a close that gave up on a handler still waiting for the server. */
        bool cut = file_count(s[i].log, "graceful stop took too long: exiting now") == 1 ||
                   file_count(s[i].log, " not freed\"") == 1;
        ck_assert_msg(st[i] == 0 || (st[i] == JL_EXIT_FAILURE && cut), "status %d: %s", st[i],
                      log_tail(s[i].log, tail, sizeof(tail)));
    }
    ck_assert_msg(took < SHUTDOWN_MS + 1000, "took %" PRId64 " ms", took);
    printf("stop with the server frozen: %" PRId64 " ms, status %d and %d\n", took, st[0], st[1]);
}
END_TEST

/* `timeout` and some supervisors send one SIGTERM to the process and again to its group: one
 * stop, graceful (exit 0), not a second signal that cuts it short. */
START_TEST(a_sigterm_sent_twice_at_once_is_one_graceful_stop)
{
    char tail[1500];
    svc s[2];
    start_orders_and_summary(s);
    int seconds_sent = 0;
    for (int i = 0; i < 2; i++) {
        ck_assert_int_eq(kill(s[i].pid, SIGTERM), 0);
        /* The second once the first is being handled (back to back, the two could merge into
         * one pending signal): still well within a second of it. */
        ck_assert_msg(wait_log(s[i].log, "\"msg\":\"stopping\"", 5000), "no 'stopping': %s",
                      log_tail(s[i].log, tail, sizeof(tail)));
        bool second = jl_proc_alive(s[i].pid);
        if (second)
            ck_assert_int_eq(kill(s[i].pid, SIGTERM), 0);
        seconds_sent += second;
        int st = svc_stop(&s[i], 0, 15000);
        ck_assert_msg(st == 0 && file_count(s[i].log, "second signal") == 0, "status %d: %s", st,
                      log_tail(s[i].log, tail, sizeof(tail)));
    }
    /* A service gone before its second signal tests nothing: at least one got both. */
    ck_assert_int_ge(seconds_sent, 1);
}
END_TEST

/* JL_READY_FILE: there while a service answers (a readiness probe tests it), gone once it
 * stopped. */
/* Wait up to @p ms for @p path to exist (@p want) or not; whether it did. */
static bool wait_file(const char *path, bool want, int ms)
{
    int64_t deadline = tnow_ms() + ms;
    while ((access(path, F_OK) == 0) != want && tnow_ms() < deadline)
        nats_Sleep(20);
    return (access(path, F_OK) == 0) == want;
}

/* The modification time of @p path in ns, 0 when it does not exist. */
static int64_t mtime_ns(const char *path)
{
    struct stat st;
    if (stat(path, &st) != 0)
        return 0;
    return (int64_t)st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec;
}

/* Whether @p path is renewed (its time moves, once it exists) within @p ms. */
static bool renewed_within(const char *path, int ms)
{
    int64_t deadline = tnow_ms() + ms, first = 0;
    while (tnow_ms() < deadline) {
        int64_t t = mtime_ns(path);
        if (first == 0)
            first = t;
        else if (t > first)
            return true;
        nats_Sleep(100);
    }
    return false;
}

/* A file @p name in the test's directory holding data, where orders started with log @p log
 * would write its ready file: it must refuse to start (exit 2), leaving the file as it was. */
static void probe_file_kept(const char *log, const char *name)
{
    svc dead;
    char path[700], tail[1500], line[64] = "";
    snprintf(path, sizeof(path), "%s/%s", env.dir, name);
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs("keep me\n", f);
    fclose(f);
    svc_start(&dead, "orders", log, "nats://127.0.0.1:1", NULL, 0, NULL);
    int st = svc_stop(&dead, 0, 10000);
    ck_assert_msg(st == JL_EXIT_USAGE, "exit %d: %s", st, log_tail(dead.log, tail, sizeof(tail)));
    ck_assert_msg(strstr(log_tail(dead.log, tail, sizeof(tail)), "refusing to remove it") != NULL,
                  "%s", tail);
    f = fopen(path, "r");
    ck_assert_ptr_nonnull(f);
    ck_assert_ptr_nonnull(fgets(line, sizeof(line), f));
    fclose(f);
    ck_assert_str_eq(line, "keep me\n");
}

START_TEST(a_ready_file_is_there_while_a_service_answers)
{
    svc s[2], dead;
    char ready[2][700], stale[700];
    const char *logs[2] = {"orders.log", "summary.log"};
    start_orders_and_summary(s);
    for (int i = 0; i < 2; i++) {
        snprintf(ready[i], sizeof(ready[i]), "%s/%s.ready", env.dir, logs[i]);
        /* Written just after the service answers: soon, not necessarily yet. */
        ck_assert_msg(wait_file(ready[i], true, 5000), "%s missing", ready[i]);
        /* The liveness file too, renewed while it runs, and gone with it. */
        char alive[700];
        snprintf(alive, sizeof(alive), "%s/%s.alive", env.dir, logs[i]);
        ck_assert_msg(renewed_within(alive, 3000), "%s not renewed", alive);
        ck_assert_int_eq(svc_stop(&s[i], SIGTERM, 15000), 0);
        ck_assert_msg(access(ready[i], F_OK) != 0, "%s left behind", ready[i]);
        ck_assert_msg(access(alive, F_OK) != 0, "%s left behind", alive);
    }
    /* One left by a killed run is not taken for this one's: removed at start, and not
     * written while the service cannot reach NATS. */
    snprintf(stale, sizeof(stale), "%s/dead.log.ready", env.dir);
    FILE *f = fopen(stale, "w");
    ck_assert_ptr_nonnull(f);
    fclose(f);
    svc_start(&dead, "orders", "dead.log", "nats://127.0.0.1:1", NULL, 0, NULL);
    ck_assert_msg(wait_file(stale, false, 5000), "a stale %s stayed", stale);
    nats_Sleep(500);
    ck_assert_int_ne(access(stale, F_OK), 0);
    ck_assert_int_eq(svc_stop(&dead, SIGTERM, 15000), 0);
    /* A file that is not one it wrote (a mistyped path) is not removed: bad usage, exit 2;
     * nor the "<file>.tmp" it writes and renames over the file. */
    probe_file_kept("other.log", "other.log.ready");
    probe_file_kept("tmp.log", "tmp.log.ready.tmp");
}
END_TEST

/* An AddItem to an order no service has cached, sent without waiting for its reply. */
/* Send command @p m to orders.cmd.<@p name>, its reply read by nobody. */
static void send_unanswered(const char *name, const ProtobufCMessage *m)
{
    uint8_t body[128];
    char subject[64];
    ck_assert_uint_le(protobuf_c_message_get_packed_size(m), sizeof(body));
    size_t len = protobuf_c_message_pack(m, body);
    snprintf(subject, sizeof(subject), "orders.cmd.%s", name);
    ck_assert_int_eq(natsConnection_PublishRequest(jl_conn_nats(env.conn), subject,
                                                   "nobody.listens", body, (int)len),
                     NATS_OK);
}

static void send_add_item(void)
{
    Orders__AddItem m = ORDERS__ADD_ITEM__INIT;
    m.order_id = "6f1c2a8e-0000-4000-8000-0000000051c4";
    m.sku = "fig";
    m.quantity = 1;
    m.unit_price_cents = 5;
    send_unanswered("AddItem", &m.base);
}

/* A CreateOrder whose reply nobody reads: a new aggregate, decided with no read. */
static void send_create_order(void)
{
    Orders__CreateOrder m = ORDERS__CREATE_ORDER__INIT;
    m.customer_id = "busy";
    send_unanswered("CreateOrder", &m.base);
}

/*
 * JL_ALIVE_FILE: renewed while a service's work goes on, for a liveness probe of its age, also
 * when it is idle for longer than its limit (2 x the request timeout + 10 s: 10.2 s here). A
 * stuck service renews it no more: a producer whose thread blocked for good holding its lock
 * (as a deadlock would), one whose read of an aggregate blocked for good (outside the lock,
 * found by that reading thread's lack of progress, while other commands go on finishing), a
 * projector whose stream loop blocked in a batch; the last two say so.
 */
START_TEST(a_stuck_service_stops_renewing_its_liveness_file)
{
    svc locked, s[2];
    char alive[3][700], data[600], tail[1500];
    const char *logs[3] = {"locked.log", "orders.log", "summary.log"};
    for (int i = 0; i < 3; i++)
        snprintf(alive[i], sizeof(alive[i]), "%s/%s.alive", env.dir, logs[i]);
    snprintf(data, sizeof(data), "%s/p", env.dir);
    svc_extra[0] = "JL_FAULT_ACTION=hang";
    snprintf(svc_fault_point, sizeof(svc_fault_point), "command.decide");
    svc_start(&locked, "orders", logs[0], env.cfg.nats_url, NULL, 0, NULL);
    ck_assert_msg(wait_file(alive[0], true, 15000), "%s", log_tail(locked.log, tail, sizeof(tail)));
    ck_assert(renewed_within(alive[0], 3000));
    printf("injecting: a producer thread blocks for good deciding, holding the lock\n");
    send_add_item();
    ck_assert_msg(wait_log(locked.log, "\"msg\":\"fault point reached: this thread hangs\"", 15000),
                  "%s", log_tail(locked.log, tail, sizeof(tail)));
    nats_Sleep(600); /* a renewal already past the lock when the thread hung: done by now */
    ck_assert_msg(!renewed_within(alive[0], 2000), "a stuck producer renewed %s", alive[0]);
    /* Stuck, not gone: its file is there, not renewed, and it runs until killed (137). */
    ck_assert_int_eq(access(alive[0], F_OK), 0);
    ck_assert_int_eq(svc_stop(&locked, SIGKILL, 5000), 137);

    svc_extra[1] = "JL_REQUEST_TIMEOUT=100";
    snprintf(svc_fault_point, sizeof(svc_fault_point), "command.load");
    svc_start(&s[0], "orders", logs[1], env.cfg.nats_url, NULL, 0, NULL);
    snprintf(svc_fault_point, sizeof(svc_fault_point), "apply.before_commit");
    svc_start(&s[1], "order_summary", logs[2], env.cfg.nats_url, data, 0, NULL);
    svc_fault_point[0] = 0;
    for (int i = 0; i < 2; i++)
        ck_assert_msg(wait_file(alive[i + 1], true, 15000), "%s",
                      log_tail(s[i].log, tail, sizeof(tail)));
    nats_Sleep(11000); /* idle past the limit */
    for (int i = 0; i < 2; i++) {
        ck_assert_msg(renewed_within(alive[i + 1], 3000), "an idle service stopped renewing %s",
                      alive[i + 1]);
        ck_assert_int_eq(file_count(s[i].log, "stuck"), 0);
    }
    printf("injecting: the producer's read of an aggregate and the projector's batch block for "
           "good\n");
    send_add_item();
    tseed_orders(env.conn, 1, 0);
    /* Other aggregates' commands go on meanwhile: the producer is not stuck as a whole. */
    int64_t until = tnow_ms() + 30000;
    while (file_count(s[0].log, "stuck: the liveness file") == 0 && tnow_ms() < until) {
        send_create_order();
        nats_Sleep(200);
    }
    ck_assert_msg(file_count(s[0].log, "stuck: the liveness file") > 0,
                  "a producer with a reading thread blocked for good was not found stuck while "
                  "other commands went on: %s",
                  log_tail(s[0].log, tail, sizeof(tail)));
    for (int i = 0; i < 2; i++) {
        ck_assert_msg(
            wait_log(s[i].log, "\"msg\":\"stuck: the liveness file is no longer renewed\"", 30000),
            "%s", log_tail(s[i].log, tail, sizeof(tail)));
        ck_assert_msg(!renewed_within(alive[i + 1], 2000), "a stuck service renewed %s",
                      alive[i + 1]);
    }
    printf("verified: each renewed it while idle, none once stuck\n");
    for (int i = 0; i < 2; i++) {
        ck_assert_int_eq(access(alive[i + 1], F_OK), 0);
        ck_assert_int_eq(svc_stop(&s[i], SIGKILL, 5000), 137);
    }
}
END_TEST

/* A query handler that never returns leaves every later query unanswered (the subscription
 * has one thread) while the stream loop goes on: the projector is stuck all the same, and
 * stops renewing its liveness file. */
START_TEST(a_projector_whose_query_never_ends_stops_renewing_its_liveness_file)
{
    svc s;
    char alive[700], data[600], tail[1500];
    snprintf(alive, sizeof(alive), "%s/query.log.alive", env.dir);
    snprintf(data, sizeof(data), "%s/q", env.dir);
    svc_extra[0] = "JL_FAULT_ACTION=hang";
    svc_extra[1] = "JL_REQUEST_TIMEOUT=100"; /* stuck past 10.2 s */
    snprintf(svc_fault_point, sizeof(svc_fault_point), "query.answer");
    svc_start(&s, "order_summary", "query.log", env.cfg.nats_url, data, 0, NULL);
    svc_fault_point[0] = 0;
    ck_assert_msg(wait_file(alive, true, 15000), "%s", log_tail(s.log, tail, sizeof(tail)));
    ck_assert_msg(wait_log(s.log, "\"msg\":\"projector ready\"", 15000), "%s",
                  log_tail(s.log, tail, sizeof(tail)));
    printf("injecting: the projector's query handler blocks for good (its stream loop goes "
           "on)\n");
    ck_assert_int_eq(
        natsConnection_PublishString(jl_conn_nats(env.conn), "order_summary.query.GetOrder", ""),
        NATS_OK);
    ck_assert_msg(wait_log(s.log, "\"msg\":\"fault point reached: this thread hangs\"", 15000),
                  "%s", log_tail(s.log, tail, sizeof(tail)));
    ck_assert_msg(
        wait_log(s.log, "\"msg\":\"stuck: the liveness file is no longer renewed\"", 30000), "%s",
        log_tail(s.log, tail, sizeof(tail)));
    ck_assert_msg(!renewed_within(alive, 2000), "a stuck projector renewed %s", alive);
    printf("verified: its liveness file is no longer renewed\n");
    ck_assert_int_eq(access(alive, F_OK), 0);
    /* Stuck, not gone; and stopped, it gives up on that query: exit 1 (not 0, the work in
     * hand unfinished), within the stop's bound (cut short there, or its close gave up). */
    ck_assert(jl_proc_alive(s.pid));
    int st = svc_stop(&s, SIGTERM, 15000);
    ck_assert_msg(st == JL_EXIT_FAILURE &&
                      (file_count(s.log, "graceful stop took too long: exiting now") == 1 ||
                       file_count(s.log, "projector not freed") == 1),
                  "status %d: %s", st, log_tail(s.log, tail, sizeof(tail)));
}
END_TEST

/* The server starts to require credentials these services do not have (an authorization
 * change, reloaded): the client library closes their connections for good after two refusals.
 * A service left so would answer nothing while it looked ready: each stops, not ready, with
 * status 1 (for its supervisor to start it again) and says why. */
START_TEST(a_connection_closed_for_good_stops_the_service_with_status_1)
{
    svc s[2];
    char ready[2][700], conf[700], tail[1500];
    const char *logs[2] = {"orders.log", "summary.log"};
    start_orders_and_summary(s);
    for (int i = 0; i < 2; i++) {
        snprintf(ready[i], sizeof(ready[i]), "%s/%s.ready", env.dir, logs[i]);
        ck_assert_msg(wait_file(ready[i], true, 5000), "%s missing", ready[i]);
    }
    snprintf(conf, sizeof(conf), "%s/natsd.conf", jl_natsd_store_dir(env.natsd));
    FILE *f = fopen(conf, "a");
    ck_assert_ptr_nonnull(f);
    fprintf(f, "\nauthorization { user: someone_else, password: not_theirs }\n");
    fclose(f);
    printf("injecting: authorization the services lack, reloaded (SIGHUP)\n");
    ck_assert_int_eq(kill(jl_natsd_pid(env.natsd), SIGHUP), 0);
    for (int i = 0; i < 2; i++) {
        int st = svc_stop(&s[i], 0, 30000);
        ck_assert_msg(st == 1, "%s exited with %d: %s", logs[i], st,
                      log_tail(s[i].log, tail, sizeof(tail)));
        ck_assert_int_eq(file_count(s[i].log, "nats connection closed for good: stopping"), 1);
        ck_assert_msg(access(ready[i], F_OK) != 0, "%s left behind", ready[i]);
    }
}
END_TEST

/* ---- 3. no server, or not a NATS server ---------------------------------------------------- */

/*
 * With no server on the port, a service keeps retrying for JL_APP_CONNECT_WAIT_MS (30 s) before
 * "cannot start": it is alive after a second and has logged neither success nor failure; a
 * signal then ends the wait at once, with status 0 and "stopped before start".
 */
START_TEST(dead_server_keeps_service_retrying_until_a_signal)
{
    char url[64], data[600], tail[1500];
    int port = 0;
    svc proj;
    ck_assert_int_eq(jl_free_port(&port), 0);
    snprintf(url, sizeof(url), "nats://127.0.0.1:%d", port);
    snprintf(data, sizeof(data), "%s/p", env.dir);
    svc_start(&proj, "order_summary", "summary.log", url, data, 0, NULL);
    sleep_ms(1000);
    ck_assert_msg(jl_proc_alive(proj.pid), "exited within 1 s: %s",
                  log_tail(proj.log, tail, sizeof(tail)));
    ck_assert_int_eq(file_count(proj.log, "\"msg\":\"connected\""), 0);
    ck_assert_int_eq(file_count(proj.log, "cannot start"), 0);
    ck_assert_int_eq(kill(proj.pid, SIGTERM), 0);
    int64_t t0 = tnow_ms();
    ck_assert_int_eq(svc_stop(&proj, 0, 3000), 0);
    ck_assert_int_lt(tnow_ms() - t0, 3000);
    ck_assert_int_eq(file_count(proj.log, "stopped before start"), 1);
}
END_TEST

/* A service still waiting for NATS at start has nothing in hand: SIGTERM ends it at once, 0.
 * (It used to wait out the 30 s connect wait and exit 1.) */
START_TEST(sigterm_during_connect_wait_exits_0_promptly)
{
    char url[64], data[600];
    int port = 0;
    svc proj;
    ck_assert_int_eq(jl_free_port(&port), 0);
    snprintf(url, sizeof(url), "nats://127.0.0.1:%d", port);
    snprintf(data, sizeof(data), "%s/p", env.dir);
    svc_start(&proj, "order_summary", "summary.log", url, data, 0, NULL);
    sleep_ms(500);
    ck_assert_int_eq(kill(proj.pid, SIGTERM), 0);
    int64_t t0 = tnow_ms();
    ck_assert_int_eq(svc_stop(&proj, 0, SHUTDOWN_MS), 0);
    ck_assert_int_lt(tnow_ms() - t0, SHUTDOWN_MS);
}
END_TEST

/* A TCP server that answers every connection with an HTTP error, like a wrong port would; or,
 * holding, with a NATS greeting and then silence, like a server that stopped answering. */
typedef struct not_nats {
    int fd;
    int port;
    bool hold;
    int held[64]; /* more than the services open in their 30 s of trying */
    int n_held;
    atomic_bool stop;
    pthread_t thread;
} not_nats;

static void *not_nats_loop(void *arg)
{
    not_nats *s = arg;
    static const char http[] = "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n";
    static const char info[] = "INFO {\"server_id\":\"mute\",\"version\":\"2.10.0\",\"proto\":1,"
                               "\"headers\":true,\"max_payload\":1048576}\r\n";
    while (!atomic_load(&s->stop)) {
        struct pollfd pfd = {.fd = s->fd, .events = POLLIN};
        if (poll(&pfd, 1, 50) <= 0)
            continue;
        int c = accept(s->fd, NULL, NULL);
        if (c < 0)
            continue;
        const char *answer = s->hold ? info : http;
        ssize_t w = write(c, answer, strlen(answer));
        (void)w;
        if (s->hold && s->n_held < (int)(sizeof(s->held) / sizeof(s->held[0])))
            s->held[s->n_held++] = c;
        else
            close(c);
    }
    for (int i = 0; i < s->n_held; i++)
        close(s->held[i]);
    return NULL;
}

static void not_nats_start(not_nats *s, bool hold)
{
    struct sockaddr_in sa;
    socklen_t len = sizeof(sa);
    memset(s, 0, sizeof(*s));
    s->hold = hold;
    atomic_init(&s->stop, false);
    s->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ck_assert_int_ge(s->fd, 0);
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ck_assert_int_eq(bind(s->fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    ck_assert_int_eq(listen(s->fd, 16), 0);
    ck_assert_int_eq(getsockname(s->fd, (struct sockaddr *)&sa, &len), 0);
    s->port = ntohs(sa.sin_port);
    ck_assert_int_eq(pthread_create(&s->thread, NULL, not_nats_loop, s), 0);
}

static void not_nats_stop(not_nats *s)
{
    atomic_store(&s->stop, true);
    pthread_join(s->thread, NULL);
    close(s->fd);
}

START_TEST(services_exit_1_with_cannot_start_when_the_port_is_not_nats)
{
    char url[64], data[600], tail[1500], where[128];
    not_nats fake;
    svc s[2];
    not_nats_start(&fake, false);
    snprintf(url, sizeof(url), "nats://127.0.0.1:%d", fake.port);
    snprintf(data, sizeof(data), "%s/p", env.dir);
    snprintf(where, sizeof(where), "cannot reach NATS at %s", url);
    svc_start(&s[0], "orders", "orders.log", url, NULL, 0, NULL);
    svc_start(&s[1], "order_summary", "summary.log", url, data, 0, NULL);
    for (int i = 0; i < 2; i++) {
        int st = svc_stop(&s[i], 0, 10000);
        ck_assert_msg(st == JL_EXIT_FAILURE, "exit status %d: %s", st,
                      log_tail(s[i].log, tail, sizeof(tail)));
        ck_assert_msg(log_has_line(s[i].log, "\"level\":\"error\"", "\"msg\":\"cannot start\""),
                      "%s", log_tail(s[i].log, tail, sizeof(tail)));
        ck_assert_msg(log_has_line(s[i].log, "\"msg\":\"cannot start\"", where), "%s",
                      log_tail(s[i].log, tail, sizeof(tail)));
        ck_assert_msg(log_has_line(s[i].log, "\"msg\":\"cannot start\"", "INFO"), "%s",
                      log_tail(s[i].log, tail, sizeof(tail)));
    }
    not_nats_stop(&fake);
}
END_TEST

/* A projector scaled out without a durable of its own per instance: the second process finds
 * the first on the durable, says so and exits 1; the first goes on and stops cleanly. */
START_TEST(a_second_projector_process_on_one_durable_exits_1_naming_the_first)
{
    char data[2][600], tail[1500];
    const char *url = env.cfg.nats_url;
    svc s[2];
    for (int i = 0; i < 2; i++)
        snprintf(data[i], sizeof(data[i]), "%s/twin%d", env.dir, i);
    svc_start(&s[0], "order_summary", "first.log", url, data[0], 0, NULL);
    ck_assert_msg(wait_log(s[0].log, "\"msg\":\"projector ready\"", 15000), "%s",
                  log_tail(s[0].log, tail, sizeof(tail)));
    svc_start(&s[1], "order_summary", "second.log", url, data[1], 0, NULL);
    int st = svc_stop(&s[1], 0, 15000);
    ck_assert_msg(st == JL_EXIT_FAILURE, "exit status %d: %s", st,
                  log_tail(s[1].log, tail, sizeof(tail)));
    char pid[64];
    snprintf(pid, sizeof(pid), "(pid %d, started", (int)s[0].pid);
    ck_assert_msg(log_has_line(s[1].log, "\"msg\":\"cannot start\"",
                               "durable consumer order_summary is also consumed by instance"),
                  "%s", log_tail(s[1].log, tail, sizeof(tail)));
    ck_assert_msg(log_has_line(s[1].log, "\"msg\":\"cannot start\"", pid), "%s",
                  log_tail(s[1].log, tail, sizeof(tail)));
    ck_assert_msg(!log_has_line(s[1].log, "\"msg\":\"projector ready\"", "order_summary"), "%s",
                  log_tail(s[1].log, tail, sizeof(tail)));
    st = svc_stop(&s[0], SIGTERM, 10000);
    ck_assert_msg(st == JL_EXIT_OK, "first: exit status %d: %s", st,
                  log_tail(s[0].log, tail, sizeof(tail)));
}
END_TEST

START_TEST(services_exit_1_when_the_server_greets_and_goes_silent)
{
    /* libnats 3.4.1 waits for such a server's PONG for ever: the service says so and exits
     * (to be started again), rather than hang at start doing nothing. libnats 3.10 times the
     * handshake out: the service waits for a server as for one that is down (30 s), then
     * exits with the same words. */
    char url[64], data[600], tail[1500];
    not_nats mute;
    svc s[2];
    not_nats_start(&mute, true);
    snprintf(url, sizeof(url), "nats://127.0.0.1:%d", mute.port);
    snprintf(data, sizeof(data), "%s/p", env.dir);
    svc_start(&s[0], "orders", "orders.log", url, NULL, 0, NULL);
    svc_start(&s[1], "order_summary", "summary.log", url, data, 0, NULL);
    for (int i = 0; i < 2; i++) {
        int st = svc_stop(&s[i], 0, 45000);
        ck_assert_msg(st == JL_EXIT_FAILURE, "exit status %d: %s", st,
                      log_tail(s[i].log, tail, sizeof(tail)));
        ck_assert_msg(
            log_has_line(s[i].log, "\"msg\":\"cannot start\"", "never finished the handshake"),
            "%s", log_tail(s[i].log, tail, sizeof(tail)));
    }
    not_nats_stop(&mute);
}
END_TEST

/* ---- 4. the CLI -------------------------------------------------------------------------- */

typedef struct cli_result {
    int status;
    char out[CLI_OUT_MAX];
    char err[8192];
} cli_result;

/* Where the CLI's stdout goes. */
typedef enum { OUT_FILE, OUT_CLOSED, OUT_BROKEN_PIPE } cli_out;

/* Run `jetledger --nats-url url args...` with stdout (as @p out says) and stderr in files;
 * bounded. */
static void run_cli_out(cli_result *r, const char *url, const char *const args[], cli_out out)
{
    char path[PATH_MAX], out_path[PATH_MAX], err_path[PATH_MAX];
    const char *argv[16];
    int n = 0;
    pid_t pid = 0;
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    sigset_t none, dfl;

    bin_path(path, sizeof(path), "jetledger");
    argv[n++] = path;
    argv[n++] = "--nats-url";
    argv[n++] = url;
    for (int i = 0; args[i] != NULL && n < 15; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    snprintf(out_path, sizeof(out_path), "%s/cli.out", env.dir);
    snprintf(err_path, sizeof(err_path), "%s/cli.err", env.dir);
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    int pipe_fds[2] = {-1, -1};
    if (out == OUT_BROKEN_PIPE) {
        /* A pipe whose reader has gone (`| head -1` after its line). */
        ck_assert_int_eq(pipe(pipe_fds), 0);
        close(pipe_fds[0]);
        posix_spawn_file_actions_adddup2(&fa, pipe_fds[1], 1);
        posix_spawn_file_actions_addclose(&fa, pipe_fds[1]);
    } else if (out == OUT_CLOSED)
        posix_spawn_file_actions_addclose(&fa, 1);
    else
        posix_spawn_file_actions_addopen(&fa, 1, out_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_addopen(&fa, 2, err_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    /* A clean signal state, whatever the test runner set up. */
    posix_spawnattr_init(&attr);
    sigemptyset(&none);
    sigemptyset(&dfl);
    sigaddset(&dfl, SIGPIPE);
    sigaddset(&dfl, SIGINT);
    sigaddset(&dfl, SIGTERM);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setsigdefault(&attr, &dfl);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    int rc = posix_spawn(&pid, path, &fa, &attr, (char *const *)argv, environ);
    posix_spawnattr_destroy(&attr);
    posix_spawn_file_actions_destroy(&fa);
    if (pipe_fds[1] >= 0)
        close(pipe_fds[1]);
    ck_assert_msg(rc == 0, "spawn %s: %s", path, strerror(rc));
    record(pid);
    ck_assert_int_eq(jl_proc_stop(pid, 0, CLI_MS, &r->status), 0);
    forget(pid);
    if (out != OUT_FILE)
        r->out[0] = 0;
    else
        read_text(out_path, r->out, sizeof(r->out));
    read_text(err_path, r->err, sizeof(r->err));
}

static void run_cli(cli_result *r, const char *url, const char *const args[])
{
    run_cli_out(r, url, args, OUT_FILE);
}

#define CLI(r, url, ...)                                                                           \
    do {                                                                                           \
        const char *const cli_args_[] = {__VA_ARGS__, NULL};                                       \
        run_cli((r), (url), cli_args_);                                                            \
    } while (0)

#define ASSERT_CLI(r, want)                                                                        \
    ck_assert_msg((r)->status == (want), "exit %d, want %d; stdout: %s; stderr: %s", (r)->status,  \
                  (want), (r)->out, (r)->err)

/* The string value of "key":"..." in a JSON text, into out. */
static bool json_str(const char *json, const char *key, char *out, size_t n)
{
    char pat[64];
    snprintf(pat, sizeof(pat), "\"%s\":\"", key);
    const char *p = strstr(json, pat);
    if (p == NULL)
        return false;
    p += strlen(pat);
    size_t len = strcspn(p, "\"");
    if (len >= n)
        return false;
    memcpy(out, p, len);
    out[len] = '\0';
    return true;
}

static bool json_u64(const char *json, const char *key, uint64_t *out)
{
    char pat[64];
    snprintf(pat, sizeof(pat), "\"%s\":", key);
    const char *p = strstr(json, pat);
    if (p == NULL)
        return false;
    *out = strtoull(p + strlen(pat), NULL, 10);
    return true;
}

/* What the fake service below answers (fake_mode), and the aggregate it is asked about. */
enum {
    FAKE_EMPTY_PAGE,
    FAKE_OTHER_AGGREGATE,
    FAKE_NOT_ADVANCING,
    FAKE_NO_ENVELOPE,
    FAKE_GAP,
    FAKE_STATE
};
static int fake_mode;
static const char fake_id[] = "c28aa361-5d3c-4f43-9a43-0e7c6b1f2a10";
static const char other_id[] = "11111111-1111-4111-8111-111111111111";

/* A "service" answering GetHistory and GetState with replies that do not fit the question. */
static void fake_history(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    (void)sub;
    (void)closure;
    Jetledger__GetHistory *q = jetledger__get_history__unpack(
        NULL, (size_t)natsMsg_GetDataLength(msg), (const uint8_t *)natsMsg_GetData(msg));
    uint64_t from = q != NULL && q->from_version ? q->from_version : 1;
    Jetledger__Envelope env_ = JETLEDGER__ENVELOPE__INIT;
    env_.event_id = (char *)other_id;
    env_.event_type = "orders.OrderCreated";
    env_.aggregate_type = "order";
    env_.aggregate_id = (char *)(fake_mode == FAKE_OTHER_AGGREGATE ? other_id : fake_id);
    /* FAKE_NOT_ADVANCING: the first event on every page; FAKE_GAP: versions 1 and 2 gone. */
    env_.aggregate_version = fake_mode == FAKE_GAP ? 3 : 1;
    Jetledger__StoredEvent ev = JETLEDGER__STORED_EVENT__INIT, *evs[1] = {&ev};
    ev.stream_sequence = 5;
    ev.envelope = fake_mode == FAKE_NO_ENVELOPE ? NULL : &env_;
    Jetledger__HistoryResult res = JETLEDGER__HISTORY_RESULT__INIT;
    res.n_events = fake_mode == FAKE_EMPTY_PAGE ? 0 : 1;
    res.events = evs;
    res.next_version =
        fake_mode == FAKE_EMPTY_PAGE || fake_mode == FAKE_NOT_ADVANCING ? from + 1 : 0;
    Jetledger__StateResult st = JETLEDGER__STATE_RESULT__INIT;
    st.aggregate_id = (char *)other_id;
    st.version = 3;
    st.state_type = "orders.OrderState";
    jl_reply r;
    jl_reply_init(&r);
    jl_reply_set_result(&r, fake_mode == FAKE_STATE ? &st.base : &res.base);
    jl_reply_send(nc, natsMsg_GetReply(msg), &r, NULL);
    jl_reply_cleanup(&r);
    if (q != NULL)
        jetledger__get_history__free_unpacked(q, NULL);
    natsMsg_Destroy(msg);
}

/* A projector answering every admin request with a finished verify that matched, whose live
 * digest is 900,000 control bytes: six times as long once escaped in JSON. */
static void fake_admin(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    (void)sub;
    (void)closure;
    static char digest[900001];
    memset(digest, 1, sizeof(digest) - 1);
    Jetledger__RebuildStatus st = JETLEDGER__REBUILD_STATUS__INIT;
    st.job = "verify";
    st.state = "done";
    st.match = true;
    st.verified_seq = 7;
    st.live_digest = digest;
    st.rebuilt_digest = "x";
    st.started_at_ns = 1;
    jl_reply r;
    jl_reply_init(&r);
    jl_reply_set_result(&r, &st.base);
    jl_reply_send(nc, natsMsg_GetReply(msg), &r, NULL);
    jl_reply_cleanup(&r);
    natsMsg_Destroy(msg);
}

START_TEST(cli_refuses_replies_that_do_not_fit_the_question)
{
    /* A wrong or broken service must not make the CLI loop for ever, or print another
     * aggregate's trail or state as this one's, or exit 0 on a trail it could not show whole. */
    const char *url = jl_natsd_url(env.natsd);
    natsSubscription *sub = NULL;
    ck_assert_int_eq(
        natsConnection_Subscribe(&sub, jl_conn_nats(env.conn), "fake.query.*", fake_history, NULL),
        NATS_OK);
    ck_assert_int_eq(natsConnection_Flush(jl_conn_nats(env.conn)), NATS_OK);
    cli_result *r = calloc(1, sizeof(*r));
    struct {
        int mode;
        const char *cmd, *says;
    } cases[] = {
        {FAKE_EMPTY_PAGE, "history", "empty history page that says there is more"},
        {FAKE_OTHER_AGGREGATE, "history", "an event of another aggregate"},
        {FAKE_NOT_ADVANCING, "history", "sent version 1 out of order on a page from 2"},
        {FAKE_NO_ENVELOPE, "history", "1 event could not be shown whole"},
        {FAKE_GAP, "history", "versions 1 to 2 of c28aa361-5d3c-4f43-9a43-0e7c6b1f2a10 are not in"},
        {FAKE_GAP, "history", "2 versions missing: the trail is not whole"},
        {FAKE_STATE, "state", "not one of the aggregate asked for"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        fake_mode = cases[i].mode;
        int64_t t0 = tnow_ms();
        CLI(r, url, cases[i].cmd, "fake", fake_id);
        ASSERT_CLI(r, 4);
        ck_assert_msg(strstr(r->err, cases[i].says) != NULL, "case %zu: %s", i, r->err);
        ck_assert_int_lt(tnow_ms() - t0, 15000);
    }
    /* Only the first page of the one that does not advance was printed, once. */
    fake_mode = FAKE_NOT_ADVANCING;
    CLI(r, url, "history", "fake", fake_id);
    int printed = 0;
    for (const char *q = r->out; (q = strstr(q, "\"aggregate_version\":1")) != NULL; q++)
        printed++;
    ck_assert_msg(printed == 1, "%d times: %s", printed, r->out);
    /* A flag twice, or a flag where a value belongs: which was meant is not guessed. */
    CLI(r, url, "events", "orders", "--aggregate", fake_id, "--aggregate", other_id);
    ASSERT_CLI(r, 2);
    ck_assert_msg(strstr(r->err, "--aggregate given twice") != NULL, "%s", r->err);
    CLI(r, url, "status", "--json", "--json"); /* a switch too: one rule for every flag */
    ASSERT_CLI(r, 2);
    ck_assert_msg(strstr(r->err, "--json given twice") != NULL, "%s", r->err);
    CLI(r, url, "command", "orders", "CreateOrder", "{}", "--command-id", "--json");
    ASSERT_CLI(r, 2);
    ck_assert_msg(strstr(r->err, "--command-id needs a value, not the flag '--json'") != NULL, "%s",
                  r->err);
    /* A setting's flag without its value does not take the subcommand for it ("status" as the
     * credentials file) once a flag of the CLI's own is taken out from between them. */
    CLI(r, url, "--creds", "--json", "status");
    ASSERT_CLI(r, 2);
    ck_assert_msg(strstr(r->err, "--creds needs a value, not the flag '--json'") != NULL, "%s",
                  r->err);

    /* A result whose JSON is megabytes long is printed whole, never as JSON with a value
     * left out (and exit 0 for it). */
    natsSubscription *asub = NULL;
    ck_assert_int_eq(
        natsConnection_Subscribe(&asub, jl_conn_nats(env.conn), "fakep.admin.>", fake_admin, NULL),
        NATS_OK);
    ck_assert_int_eq(natsConnection_Flush(jl_conn_nats(env.conn)), NATS_OK);
    CLI(r, url, "verify", "fakep");
    ASSERT_CLI(r, 0);
    char out_path[PATH_MAX], tail[8] = "";
    snprintf(out_path, sizeof(out_path), "%s/cli.out", env.dir);
    FILE *f = fopen(out_path, "r");
    ck_assert_ptr_nonnull(f);
    ck_assert_int_eq(fseek(f, -3, SEEK_END), 0);
    long size = ftell(f) + 3;
    ck_assert_uint_eq(fread(tail, 1, 3, f), 3);
    fclose(f);
    ck_assert_msg(strstr(r->out, "\"live_digest\":\"\\u0001\\u0001") != NULL, "%.200s", r->out);
    ck_assert_msg(size > 900000 * 6, "%ld bytes", size);
    ck_assert_str_eq(tail, "]}\n");
    jl_conn_sub_destroy(env.conn, asub);

    /* A command larger than the server takes is the caller's to change (2), not a server
     * out of reach (3) that a script would retry for ever. */
    jl_natsd *small = NULL;
    jl_natsd_opts o;
    jl_natsd_opts_init(&o);
    o.extra_config = "max_payload: 2048\n";
    ck_assert_int_eq(jl_natsd_start(&small, &o), 0);
    char big[3100] = "{\"customer_id\":\"";
    size_t at = strlen(big);
    memset(big + at, 'a', 3000);
    snprintf(big + at + 3000, sizeof(big) - at - 3000, "\"}");
    CLI(r, jl_natsd_url(small), "command", "orders", "CreateOrder", big);
    ASSERT_CLI(r, 2);
    ck_assert_msg(strstr(r->err, "more than the server accepts (its max_payload: 2048") != NULL,
                  "%s", r->err);
    jl_natsd_destroy(small);

    /* Credentials the server refuses are a setting to change too (2), and said as such: a
     * script that retries 3 would retry a wrong password for ever. */
    jl_natsd *guarded = NULL;
    jl_natsd_opts_init(&o);
    ck_assert_int_eq(jl_natsd_start(&guarded, &o), 0);
    /* Authorization reloaded into it (the harness's readiness check has no credentials). */
    char conf[700];
    snprintf(conf, sizeof(conf), "%s/natsd.conf", jl_natsd_store_dir(guarded));
    FILE *cf = fopen(conf, "a");
    ck_assert_ptr_nonnull(cf);
    fprintf(cf, "\nauthorization { user: ann, password: right }\n");
    fclose(cf);
    ck_assert_int_eq(kill(jl_natsd_pid(guarded), SIGHUP), 0);
    char wrong[96], right[96];
    snprintf(wrong, sizeof(wrong), "nats://ann:wrong@127.0.0.1:%d", jl_natsd_port(guarded));
    snprintf(right, sizeof(right), "nats://ann:right@127.0.0.1:%d", jl_natsd_port(guarded));
    for (int i = 0; i < 50; i++) { /* until the reload has taken effect (at most 5 s) */
        CLI(r, wrong, "status");
        if (r->status != 0)
            break;
        sleep_ms(100);
    }
    ASSERT_CLI(r, 2);
    ck_assert_msg(strstr(r->err, "credentials refused by NATS at nats://***@127.0.0.1:") != NULL &&
                      strstr(r->err, "wrong") == NULL,
                  "%s", r->err);
    CLI(r, right, "status");
    ASSERT_CLI(r, 0);
    jl_natsd_destroy(guarded);
    free(r);
    jl_conn_sub_destroy(env.conn, sub);
}
END_TEST

/* SIGTERM @p n services; each must stop with status 0 within the bound. */
static void stop_gracefully(svc *s, int n)
{
    for (int i = 0; i < n; i++)
        ck_assert_int_eq(svc_stop(&s[i], SIGTERM, SHUTDOWN_MS), 0);
}

/* Start orders and order_summary and create @p n orders with the CLI; the CLI result to reuse
 * (free it). */
static cli_result *started_with_orders(svc s[2], int n)
{
    cli_result *r = calloc(1, sizeof(*r));
    ck_assert_ptr_nonnull(r);
    start_orders_and_summary(s);
    for (int i = 0; i < n; i++) {
        CLI(r, env.cfg.nats_url, "command", "orders", "CreateOrder", "{\"customer_id\":\"cli\"}");
        ASSERT_CLI(r, 0);
    }
    return r;
}

START_TEST(cli_rebuild_and_verify_report_their_outcome_and_exit_status)
{
    /* The CLI drives a rebuild and a verify on a running projector and says how each ended,
     * as its exit status and as one JSON object; a projector that is not running is exit 3, a
     * producer service named instead of a projector exit 2. */
    const char *url = env.cfg.nats_url;
    svc s[2];
    cli_result *r = started_with_orders(s, 5);
    CLI(r, url, "rebuild", "order_summary");
    ASSERT_CLI(r, 0);
    ck_assert_msg(strstr(r->out, "{\"job\":\"rebuild\",\"state\":\"done\"") != NULL, "%s", r->out);
    ck_assert_msg(strstr(r->err, "rebuild order_summary:") != NULL, "%s", r->err); /* progress */
    CLI(r, url, "verify", "order_summary");
    ASSERT_CLI(r, 0);
    ck_assert_msg(strstr(r->out, "{\"job\":\"verify\",\"match\":true") != NULL, "%s", r->out);
    CLI(r, url, "rebuild", "order_summary", "--from-seq", "999999");
    ASSERT_CLI(r, 1);
    ck_assert_msg(strstr(r->err, "past the stream's last sequence") != NULL, "%s", r->err);
    CLI(r, url, "verify", "nobody");
    ASSERT_CLI(r, 3);
    ck_assert_msg(strstr(r->err, "no projector named nobody is running") != NULL, "%s", r->err);
    /* A producer service where a projector belongs never answers there: bad usage (2), not
     * unreachable (3), which a script would retry. */
    const char *const on_service[] = {"rebuild", "verify", "dead-letters", "outbox"};
    for (size_t i = 0; i < sizeof(on_service) / sizeof(on_service[0]); i++) {
        CLI(r, url, on_service[i], "orders");
        ASSERT_CLI(r, 2);
        ck_assert_msg(strstr(r->err, "orders is a producer service") != NULL, "%s: %s",
                      on_service[i], r->err);
    }
    /* A time before 1970 is the first instant there is, not "no time given": with the stream's
     * first messages removed, the refusal is about the time asked for. */
    jsOptions o;
    jsOptions_Init(&o);
    o.Stream.Purge.Sequence = 3; /* keep from sequence 3 */
    ck_assert_int_eq(js_PurgeStream(jl_conn_js(env.conn), "ORDERS", &o, NULL), NATS_OK);
    CLI(r, url, "rebuild", "order_summary", "--from-time", "1969-12-31T23:00:00Z");
    ASSERT_CLI(r, 1);
    ck_assert_msg(strstr(r->err, "no longer holds sequences 1 to 2") != NULL &&
                      strstr(r->err, "from-time may fall among them") != NULL,
                  "%s", r->err);
    /* An event the projector cannot use, the first (index 0) of its message: listed with its
     * index, which is a value here and not a default to leave out. */
    char id[JL_UUID_LEN + 1], subject[128];
    jl_uuid_new(id);
    snprintf(subject, sizeof(subject), "orders.events.order.%s", id);
    tpublish_commit(env.conn, subject, id, &orders__get_order__descriptor, "", 0);
    for (int64_t until = tnow_ms() + 10000;; usleep(100000)) {
        CLI(r, url, "dead-letters", "order_summary");
        ASSERT_CLI(r, 0);
        if (strstr(r->out, "\"count\":1,") != NULL || tnow_ms() >= until)
            break;
    }
    ck_assert_msg(strstr(r->out, "\"count\":1,") != NULL && strstr(r->out, subject) != NULL &&
                      strstr(r->out, "{\"event_index\":0,\"stream\":\"ORDERS\",") != NULL &&
                      strstr(r->out, "unknown event type 'orders.GetOrder'") != NULL,
                  "%s", r->out);
    /* A projector that is no process manager has no outbox to show or change, and says so;
     * the subcommand's usage is checked first. */
    CLI(r, url, "outbox", "order_summary");
    ASSERT_CLI(r, 1);
    ck_assert_msg(strstr(r->err, "order_summary is not a process manager: it has no outbox") !=
                      NULL,
                  "%s", r->err);
    ck_assert_str_eq(r->out, "");
    CLI(r, url, "outbox", "order_summary", "dismiss", "fulfilment:x:reserve");
    ASSERT_CLI(r, 1);
    ck_assert_msg(strstr(r->err, "not a process manager") != NULL, "%s", r->err);
    const char *const bad[][5] = {{"outbox", "order_summary", "dismiss", NULL},
                                  {"outbox", "order_summary", "dismiss", "a b"},
                                  {"outbox", "order_summary", "drop", "x"},
                                  {"outbox", "order_summary", "--all=yes", NULL},
                                  {"outbox", "order_summary", "dismiss", "x"}};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (i == 4)
            CLI(r, url, bad[i][0], bad[i][1], bad[i][2], bad[i][3], "--all");
        else
            run_cli(r, url, bad[i]);
        ASSERT_CLI(r, 2);
        ck_assert_msg(r->out[0] == 0, "%s", r->out);
    }
    free(r);
    stop_gracefully(s, 2);
}
END_TEST

START_TEST(cli_instance_sends_a_job_to_that_instance_of_a_projector)
{
    /* Two instances of order_summary, each with a durable and a read model of its own (as
     * scaled out on Kubernetes): `--instance` reaches the one named, where plain `rebuild`
     * would reach either; an instance that is not running is said as such (exit 3), a name
     * that cannot be one is bad usage (2), and only the admin subcommands take the flag. */
    const char *url = env.cfg.nats_url;
    char data_b[600], tail[1500];
    svc s[3];
    cli_result *r = started_with_orders(s, 3);
    snprintf(data_b, sizeof(data_b), "%s/b", env.dir);
    svc_extra[0] = "JL_DURABLE=summary-b";
    svc_start(&s[2], "order_summary", "summary-b.log", url, data_b, 0, NULL);
    svc_extra[0] = NULL;
    ck_assert_msg(wait_log(s[2].log, "\"msg\":\"projector ready\"", READY_MS), "%s",
                  log_tail(s[2].log, tail, sizeof(tail)));

    const char *const names[] = {"summary-b", "order_summary"};
    for (int i = 0; i < 2; i++) {
        char want[96];
        snprintf(want, sizeof(want), "\"instance\":\"%s\"", names[i]);
        CLI(r, url, "dead-letters", "order_summary", "--instance", names[i]);
        ASSERT_CLI(r, 0);
        ck_assert_msg(strstr(r->out, want) != NULL, "%s: %s", names[i], r->out);
    }
    CLI(r, url, "rebuild", "order_summary", "--instance", "summary-b");
    ASSERT_CLI(r, 0);
    ck_assert_msg(strstr(r->out, "\"state\":\"done\"") != NULL, "%s", r->out);
    CLI(r, url, "verify", "order_summary", "--instance=summary-b");
    ASSERT_CLI(r, 0);
    ck_assert_msg(strstr(r->out, "\"match\":true") != NULL, "%s", r->out);
    ck_assert_msg(wait_log(s[2].log, "\"msg\":\"rebuild started\"", 1000), "%s",
                  log_tail(s[2].log, tail, sizeof(tail)));
    ck_assert_msg(wait_log(s[2].log, "\"msg\":\"verify started\"", 1000), "%s",
                  log_tail(s[2].log, tail, sizeof(tail)));
    ck_assert_msg(!wait_log(s[1].log, "\"msg\":\"rebuild started\"", 0) &&
                      !wait_log(s[1].log, "\"msg\":\"verify started\"", 0),
                  "the other instance ran a job: %s", log_tail(s[1].log, tail, sizeof(tail)));

    CLI(r, url, "rebuild", "order_summary", "--instance", "summary-c");
    ASSERT_CLI(r, 3);
    ck_assert_msg(strstr(r->err, "no instance summary-c of projector order_summary is running") !=
                      NULL,
                  "%s", r->err);
    CLI(r, url, "dead-letters", "order_summary", "--instance", "summary.b");
    ASSERT_CLI(r, 2);
    ck_assert_msg(strstr(r->err, "--instance needs a projector instance's durable name") != NULL,
                  "%s", r->err);
    CLI(r, url, "query", "order_summary", "ListOrders", "{}", "--instance", "summary-b");
    ASSERT_CLI(r, 2);
    free(r);
    stop_gracefully(s, 3);
}
END_TEST

/* Files in @p dir whose names start with @p prefix and end in .db. */
static int count_files(const char *dir, const char *prefix)
{
    char cmdline[PATH_MAX + 64];
    snprintf(cmdline, sizeof(cmdline), "ls %s | grep -c '^%s.*[.]db$' || true", dir, prefix);
    FILE *f = popen(cmdline, "r");
    int n = 0;
    if (f != NULL) {
        if (fscanf(f, "%d", &n) != 1)
            n = 0;
        pclose(f);
    }
    return n;
}

/* Start orders and order_summary on a stream of 60,000 events, and `jetledger rebuild
 * order_summary` in the background (its output in @p log), once its rebuild has started. */
static pid_t cli_following_a_rebuild(svc s[2], char *log, size_t n)
{
    char path[PATH_MAX], tail[1500];
    start_orders_and_summary(s);
    tseed_orders(env.conn, 60000, 0);
    bin_path(path, sizeof(path), "jetledger");
    snprintf(log, n, "%s/cli-rebuild.log", env.dir);
    const char *const argv[] = {path,      "--nats-url",    env.cfg.nats_url,
                                "rebuild", "order_summary", NULL};
    pid_t cli = 0;
    ck_assert_int_eq(jl_proc_spawn(&cli, argv, NULL, log), 0);
    record(cli);
    ck_assert_msg(wait_log(s[1].log, "\"msg\":\"rebuild started\"", 15000), "%s",
                  log_tail(s[1].log, tail, sizeof(tail)));
    /* Following it: the projector logs the start before it replies, and the reply is what
     * makes the CLI follow (its first progress line). */
    ck_assert_msg(wait_log(log, "rebuild order_summary: ", 15000), "%s",
                  log_tail(log, tail, sizeof(tail)));
    return cli;
}

/* A projector started far behind its stream (a new instance, a lost volume) answers no query
 * and is not ready until it has caught up (within JL_SERVE_LAG, 1,000 events): a readiness
 * probe and the other instances' queue group see it only then, and the CLI says why nothing
 * answers meanwhile. */
START_TEST(a_projector_far_behind_is_ready_once_it_has_caught_up)
{
    svc s[2];
    char data[600], ready[700], tail[1500];
    cli_result *r = calloc(1, sizeof(*r));
    ck_assert_ptr_nonnull(r);
    svc_start(&s[0], "orders", "orders.log", env.cfg.nats_url, NULL, 0, NULL);
    wait_orders_answer(&s[0]);
    tseed_orders(env.conn, 50000, 0);
    snprintf(data, sizeof(data), "%s/behind", env.dir);
    snprintf(ready, sizeof(ready), "%s/behind.log.ready", env.dir);
    /* Batches of 10: thousands of transactions to catch up, seconds at least. */
    svc_start(&s[1], "order_summary", "behind.log", env.cfg.nats_url, data, 10, NULL);
    ck_assert_msg(wait_log(s[1].log, "\"msg\":\"catching up before answering queries\"", 15000),
                  "%s", log_tail(s[1].log, tail, sizeof(tail)));
    ck_assert_int_eq(jl_proc_pause(s[1].pid), 0);
    ck_assert_msg(file_count(s[1].log, "\"msg\":\"answering queries\"") == 0,
                  "caught up too soon to test: %s", log_tail(s[1].log, tail, sizeof(tail)));
    ck_assert_int_ne(access(ready, F_OK), 0);
    CLI(r, env.cfg.nats_url, "query", "order_summary", "ListOrders", "{}");
    ASSERT_CLI(r, 3);
    ck_assert_msg(strstr(r->err, "still catching up") != NULL, "%s", r->err);
    ck_assert_int_eq(kill(s[1].pid, SIGCONT), 0);
    ck_assert_msg(wait_file(ready, true, 60000), "not ready: %s",
                  log_tail(s[1].log, tail, sizeof(tail)));
    ck_assert(file_count(s[1].log, "\"msg\":\"answering queries\"") == 1);
    /* From at most JL_SERVE_LAG (1,000) events behind the 50,000, not from further. */
    char *log = slurp(s[1].log);
    const char *line = strstr(log, "\"msg\":\"answering queries\"");
    uint64_t at = 0;
    ck_assert_msg(line != NULL && json_u64(line, "checkpoint", &at), "%s", log);
    ck_assert_msg(at >= 49000, "answered from checkpoint %" PRIu64, at);
    free(log);
    CLI(r, env.cfg.nats_url, "query", "order_summary", "ListOrders", "{\"limit\":1}");
    ASSERT_CLI(r, 0);
    ck_assert_int_eq(svc_stop(&s[1], SIGTERM, 15000), 0);
    ck_assert_int_ne(access(ready, F_OK), 0);
    ck_assert_int_eq(svc_stop(&s[0], SIGTERM, 15000), 0);
    free(r);
}
END_TEST

START_TEST(cli_ctrl_c_cancels_its_rebuild_and_exits_1)
{
    /* Ctrl-C while the CLI follows a rebuild cancels that rebuild (named by its start), waits
     * for it to stop and says so: exit 1, the live model untouched. */
    svc s[2];
    char log[700], tail[1500];
    char data[600], live[PATH_MAX], after[PATH_MAX];
    snprintf(data, sizeof(data), "%s/p", env.dir);
    pid_t cli = cli_following_a_rebuild(s, log, sizeof(log));
    tlive_file(data, "order_summary", live, sizeof(live));
    ck_assert_int_eq(kill(cli, SIGINT), 0);
    int st = -1;
    ck_assert_int_eq(jl_proc_stop(cli, 0, 30000, &st), 0);
    forget(cli);
    ck_assert_msg(st == 1, "exit %d: %s", st, log_tail(log, tail, sizeof(tail)));
    ck_assert_msg(file_count(log, "cancelling the rebuild") == 1 &&
                      file_count(log, "rebuild cancelled") == 1,
                  "%s", log_tail(log, tail, sizeof(tail)));
    ck_assert_msg(log_has_line(s[1].log, "\"msg\":\"rebuild failed\"", "cancelled"), "%s",
                  log_tail(s[1].log, tail, sizeof(tail)));
    /* The live model is the one it was, still answering; the rebuild's file is gone. */
    tlive_file(data, "order_summary", after, sizeof(after));
    ck_assert_str_eq(after, live);
    ck_assert_int_eq(count_files(data, "order_summary.rebuild-"), 0);
    wait_summary_answers(&s[1]);
    stop_gracefully(s, 2);
}
END_TEST

START_TEST(cli_following_a_rebuild_outlasts_a_poll_nothing_answers)
{
    /* The projector dies under a rebuild the CLI follows: one unanswered poll is not the end
     * of it (a reconnect looks the same), but nothing answering for 10 s is: exit 3, saying
     * the outcome is unknown. */
    svc s[2];
    char log[700], tail[1500];
    pid_t cli = cli_following_a_rebuild(s, log, sizeof(log));
    ck_assert_int_eq(svc_stop(&s[1], SIGKILL, 5000), 137);
    int64_t t0 = tnow_ms();
    int st = -1;
    ck_assert_int_eq(jl_proc_stop(cli, 0, 30000, &st), 0);
    forget(cli);
    int64_t took = tnow_ms() - t0;
    ck_assert_msg(st == 3, "exit %d: %s", st, log_tail(log, tail, sizeof(tail)));
    ck_assert_msg(file_count(log, "its outcome is unknown") == 1 &&
                      file_count(log, "no projector named") == 0,
                  "%s", log_tail(log, tail, sizeof(tail)));
    ck_assert_msg(took >= 9000 && took < 20000, "gave up after %" PRId64 " ms", took);
    stop_gracefully(s, 1);
}
END_TEST

START_TEST(cli_status_shows_streams_consumers_and_lag)
{
    /* `jetledger status`: every stream and consumer, with what it holds, its lag and where it
     * lives (on a single server, that server: never "none"), as a table and as JSON. */
    const char *url = env.cfg.nats_url;
    svc s[2];
    cli_result *r = started_with_orders(s, 3);
    int64_t deadline = tnow_ms() + 15000;
    do {
        CLI(r, url, "status", "--json");
        ASSERT_CLI(r, 0);
        if (strstr(r->out, "\"num_pending\":0,") != NULL)
            break;
        nats_Sleep(100);
    } while (tnow_ms() < deadline);
    ck_assert_msg(strstr(r->out, "{\"name\":\"ORDERS\",\"kind\":\"stream\"") != NULL, "%s", r->out);
    ck_assert_msg(strstr(r->out, "\"messages\":3,") != NULL, "%s", r->out);
    ck_assert_msg(strstr(r->out, "\"durable\":\"order_summary\"") != NULL, "%s", r->out);
    ck_assert_msg(strstr(r->out, "\"num_pending\":0,") != NULL, "not caught up: %s", r->out);
    /* The stream's and the consumer's leader: named, the one server. */
    const char *leader = strstr(r->out, "\"leader\":\"");
    ck_assert_msg(leader != NULL && leader[10] != '"', "%s", r->out);
    ck_assert_msg(strstr(leader + 10, "\"leader\":\"") != NULL, "%s", r->out);
    CLI(r, url, "status");
    ASSERT_CLI(r, 0);
    ck_assert_msg(strstr(r->out, "ORDERS") != NULL && strstr(r->out, "order_summary") != NULL, "%s",
                  r->out);
    ck_assert_msg(strstr(r->out, "none") == NULL, "%s", r->out);
    CLI(r, url, "status", "--keep-old");
    ASSERT_CLI(r, 2);
    /* ping: whether JetStream answers (what a pod waits for before starting a service); a
     * server with no JetStream, or none, is unreachable (3), said. */
    CLI(r, url, "ping");
    ASSERT_CLI(r, 0);
    ck_assert_msg(strstr(r->out, "{\"jetstream\":true,\"streams\":") == r->out, "%s", r->out);
    CLI(r, url, "ping", "now");
    ASSERT_CLI(r, 2);
    int port = 0;
    ck_assert_int_eq(jl_free_port(&port), 0);
    char plain[64];
    snprintf(plain, sizeof(plain), "nats://127.0.0.1:%d", port);
    CLI(r, plain, "ping");
    ASSERT_CLI(r, 3);
    ck_assert_msg(strstr(r->err, "cannot reach NATS") != NULL, "%s", r->err);
    jl_natsd *no_js = NULL;
    jl_natsd_opts o;
    jl_natsd_opts_init(&o);
    o.jetstream = false;
    ck_assert_int_eq(jl_natsd_start(&no_js, &o), 0);
    CLI(r, jl_natsd_url(no_js), "ping");
    jl_natsd_destroy(no_js);
    ASSERT_CLI(r, 3);
    ck_assert_msg(strstr(r->err, "JetStream does not answer") != NULL, "%s", r->err);
    /* Started with stdout closed, the NATS socket would take descriptor 1 and the table would
     * be written into it: the output cannot be written, and the CLI says so. */
    const char *const args[] = {"status", NULL};
    run_cli_out(r, url, args, OUT_CLOSED);
    ASSERT_CLI(r, 4);
    ck_assert_msg(strstr(r->err, "cannot write the output") != NULL, "%s", r->err);
    /* A pipe whose reader has gone: the same, not death by SIGPIPE, also before the client
     * library (which ignores SIGPIPE once connected) is in use. */
    run_cli_out(r, url, args, OUT_BROKEN_PIPE);
    ASSERT_CLI(r, 4);
    ck_assert_msg(strstr(r->err, "cannot write the output") != NULL, "%s", r->err);
    const char *const help[] = {"help", NULL};
    run_cli_out(r, url, help, OUT_BROKEN_PIPE);
    ASSERT_CLI(r, 4);
    ck_assert_msg(strstr(r->err, "cannot write the output") != NULL, "%s", r->err);
    /* A bad variable in the environment: help still answers (and says what is right); any
     * other subcommand is refused, naming it. */
    setenv("JL_REQUEST_TIMEOUT", "5", 1);
    CLI(r, url, "help");
    ASSERT_CLI(r, 0);
    ck_assert_msg(strstr(r->out, "JL_REQUEST_TIMEOUT") != NULL, "%s", r->out);
    CLI(r, url, "ping");
    unsetenv("JL_REQUEST_TIMEOUT");
    ASSERT_CLI(r, 2);
    ck_assert_msg(strstr(r->err, "JL_REQUEST_TIMEOUT") != NULL, "%s", r->err);
    free(r);
}
END_TEST

START_TEST(cli_round_trip_and_exit_codes)
{
    const char *url = env.cfg.nats_url;
    char data[600], id[JL_UUID_LEN + 1], body[256], got[64], dead[64];
    svc prod, proj;
    cli_result *r = calloc(1, sizeof(*r));
    ck_assert_ptr_nonnull(r);
    snprintf(data, sizeof(data), "%s/p", env.dir);
    svc_start(&prod, "orders", "orders.log", url, NULL, 0, NULL);
    svc_start(&proj, "order_summary", "summary.log", url, data, 0, NULL);
    wait_orders_answer(&prod);
    wait_summary_answers(&proj);

    CLI(r, url, "command", "orders", "CreateOrder", "{\"customer_id\":\"cli\"}");
    ASSERT_CLI(r, 0);
    ck_assert_msg(strstr(r->out, "\"code\":\"ok\"") != NULL, "%s", r->out);
    ck_assert_msg(json_str(r->out, "aggregate_id", id, sizeof(id)), "%s", r->out);
    ck_assert_int_eq(jl_uuid_canonical(got, id), JL_OK);

    snprintf(body, sizeof(body),
             "{\"order_id\":\"%s\",\"sku\":\"apple\",\"quantity\":3,\"unit_price_cents\":150}", id);
    CLI(r, url, "command", "orders", "AddItem", body);
    ASSERT_CLI(r, 0);
    ck_assert_msg(strstr(r->out, "\"code\":\"ok\"") != NULL, "%s", r->out);
    snprintf(body, sizeof(body),
             "{\"order_id\":\"%s\",\"sku\":\"pear\",\"quantity\":1,\"unit_price_cents\":99}", id);
    CLI(r, url, "command", "orders", "AddItem", body);
    ASSERT_CLI(r, 0);

    snprintf(body, sizeof(body), "{\"order_id\":\"%s\"}", id);
    CLI(r, url, "command", "orders", "PlaceOrder", body);
    ASSERT_CLI(r, 0);
    ck_assert_msg(strstr(r->out, "\"code\":\"ok\"") != NULL, "%s", r->out);
    uint64_t placed_seq = 0;
    ck_assert_msg(json_u64(r->out, "stream_sequence", &placed_seq) && placed_seq > 0, "%s", r->out);

    /* A refused command: exit 1, the reply still printed, the code on stderr. */
    snprintf(body, sizeof(body),
             "{\"order_id\":\"%s\",\"sku\":\"fig\",\"quantity\":1,\"unit_price_cents\":5}", id);
    CLI(r, url, "command", "orders", "AddItem", body);
    ASSERT_CLI(r, 1);
    ck_assert_msg(strstr(r->err, "rule_violation") != NULL, "%s", r->err);
    ck_assert_msg(strstr(r->out, "\"code\":\"rule_violation\"") != NULL, "%s", r->out);

    /* Read your write through the projector process. */
    snprintf(body, sizeof(body), "{\"order_id\":\"%s\",\"min_sequence\":%" PRIu64 "}", id,
             placed_seq);
    CLI(r, url, "query", "order_summary", "GetOrder", body);
    ASSERT_CLI(r, 0);
    ck_assert_msg(strstr(r->out, "\"status\":\"placed\"") != NULL, "%s", r->out);
    ck_assert_msg(strstr(r->out, "\"code\":\"ok\"") != NULL, "%s", r->out);

    /* The aggregate's events, one JSON object a line, versions 1..4 in order. */
    CLI(r, url, "events", "orders", "--aggregate", id);
    ASSERT_CLI(r, 0);
    {
        int lines = 0;
        char *save = NULL;
        for (char *line = strtok_r(r->out, "\n", &save); line != NULL;
             line = strtok_r(NULL, "\n", &save)) {
            char want[64];
            uint64_t version = 0;
            lines++;
            ck_assert_msg(line[0] == '{' && line[strlen(line) - 1] == '}', "line %d: %s", lines,
                          line);
            ck_assert_msg(json_u64(line, "aggregate_version", &version), "line %d: %s", lines,
                          line);
            ck_assert_uint_eq(version, (uint64_t)lines);
            snprintf(want, sizeof(want), "\"aggregate_id\":\"%s\"", id);
            ck_assert_msg(strstr(line, want) != NULL, "line %d: %s", lines, line);
        }
        ck_assert_int_eq(lines, 4);
    }

    CLI(r, url, "command", "orders", "CreateOrder", "{\"customer_id\":");
    ASSERT_CLI(r, 2);
    ck_assert_msg(strstr(r->err, "bad JSON for orders.CreateOrder") != NULL, "%s", r->err);
    CLI(r, url, "command", "orders", "CreateOrder", "{\"customer\":\"x\"}");
    ASSERT_CLI(r, 2);
    ck_assert_msg(strstr(r->err, "customer") != NULL, "%s", r->err);

    CLI(r, url, "command", "orders", "ShipOrder", "{}");
    ASSERT_CLI(r, 2);
    ck_assert_msg(strstr(r->err, "ShipOrder") != NULL, "%s", r->err);

    int port = 0;
    ck_assert_int_eq(jl_free_port(&port), 0);
    snprintf(dead, sizeof(dead), "nats://127.0.0.1:%d", port);
    CLI(r, dead, "command", "orders", "CreateOrder", "{\"customer_id\":\"cli\"}");
    ASSERT_CLI(r, 3);
    ck_assert_msg(strstr(r->err, dead) != NULL, "%s", r->err);

    /* What the CLI echoes reaches a terminal: control characters are shown, not sent. */
    CLI(r, url, "frob\x1b[2J\xc2\x9b\x9b\xe2\x82\xac");
    ASSERT_CLI(r, 2);
    ck_assert_msg(strstr(r->err, "unknown subcommand 'frob\\x1b[2J\\u009b\\x9b\xe2\x82\xac'") !=
                      NULL,
                  "%s", r->err);
    ck_assert_msg(strchr(r->err, 0x1b) == NULL && strstr(r->err, "\xc2\x9b") == NULL, "%s", r->err);

    /* A server that greets and then says nothing more: libnats 3.4.1 would wait for its PONG
     * for ever; the CLI gives up, says so, and is unreachable (3). */
    not_nats mute;
    char mute_url[64];
    not_nats_start(&mute, true);
    snprintf(mute_url, sizeof(mute_url), "nats://127.0.0.1:%d", mute.port);
    int64_t t0 = tnow_ms();
    CLI(r, mute_url, "status");
    not_nats_stop(&mute);
    ASSERT_CLI(r, 3);
    ck_assert_msg(strstr(r->err, "never finished the handshake") != NULL, "%s", r->err);
    ck_assert_int_lt(tnow_ms() - t0, 20000);

    /* A URL the client cannot use, or a credentials file without a user in it: settings to
     * correct (2), not a server to wait for (3). */
    const char *bad_urls[] = {"nats://127.0.0.1:notaport", "bogus://127.0.0.1:4222",
                              "nats://127.0.0.1:99999", "nats://127.0.0.1:4222,http://x:1",
                              "nats://ann:s3cr3t@127.0.0.1:99999", "nats:/127.0.0.1:4222",
                              /* a ',' or ' ' in a password splits the list: no piece shown */
                              "nats://ann:s3,cr3t@127.0.0.1:4222",
                              "nats://127.0.0.1:4222,nats://ann:s3 cr3t@127.0.0.1:4222"};
    for (size_t i = 0; i < sizeof(bad_urls) / sizeof(bad_urls[0]); i++) {
        CLI(r, bad_urls[i], "status");
        ASSERT_CLI(r, 2);
        ck_assert_msg(strstr(r->err, "server URL") != NULL, "%s: %s", bad_urls[i], r->err);
        ck_assert_msg(strstr(r->err, "s3cr3t") == NULL && strstr(r->err, "cr3t") == NULL &&
                          strstr(r->err, "ann:") == NULL,
                      "a user or password in: %s", r->err);
    }
    CLI(r, "nats://ann:s3,cr3t@127.0.0.1:4222", "status");
    ck_assert_msg(strstr(r->err, "server URL #1 of 'nats://***@127.0.0.1:4222' has no port") !=
                      NULL,
                  "%s", r->err);
    /* What nats.c reads as a default is no error: an empty host is localhost (nothing listens
     * on this free port: unreachable, 3, not bad usage), and a password is never shown. */
    int free_port = 0;
    char no_host[96];
    ck_assert_int_eq(jl_free_port(&free_port), 0);
    snprintf(no_host, sizeof(no_host), "nats://ann:s3cr3t@:%d", free_port);
    CLI(r, no_host, "status");
    ck_assert_msg(r->status == 3 && strstr(r->err, "s3cr3t") == NULL, "exit %d: %s", r->status,
                  r->err);
    char junk_creds[700];
    snprintf(junk_creds, sizeof(junk_creds), "%s/junk.creds", env.dir);
    FILE *jf = fopen(junk_creds, "w");
    ck_assert_ptr_nonnull(jf);
    fputs("not a credentials file\n", jf);
    fclose(jf);
    CLI(r, url, "status", "--creds", junk_creds);
    ASSERT_CLI(r, 2);
    /* A directory: the library would read it only once a server asks for credentials. */
    CLI(r, url, "status", "--creds", env.dir);
    ASSERT_CLI(r, 2);
    ck_assert_msg(strstr(r->err, "not a regular file") != NULL, "%s", r->err);
    /* A CA file it cannot read is named, with why (the library says only "SSL Error"). */
    char no_ca[700];
    snprintf(no_ca, sizeof(no_ca), "%s/missing-ca.pem", env.dir);
    CLI(r, url, "status", "--tls-ca", no_ca);
    ASSERT_CLI(r, 2);
    ck_assert_msg(strstr(r->err, "cannot read the CA certificates file") != NULL &&
                      strstr(r->err, "missing-ca.pem") != NULL &&
                      strstr(r->err, "No such file") != NULL,
                  "%s", r->err);
    CLI(r, url, "status", "--tls-ca", env.dir);
    ASSERT_CLI(r, 2);
    ck_assert_msg(strstr(r->err, "not a regular file") != NULL, "%s", r->err);

    CLI(r, url, "events", "nobody");
    ASSERT_CLI(r, 3);
    ck_assert_msg(strstr(r->err, "there is no stream NOBODY") != NULL, "%s", r->err);
    CLI(r, url, "events", "orders", "--from-seq", "999999");
    ASSERT_CLI(r, 0);
    ck_assert_msg(strstr(r->err, "nothing from sequence 999999 on") != NULL, "%s", r->err);

    CLI(r, url, "query", "nobody", "GetOrder", "{}");
    ASSERT_CLI(r, 3);
    ck_assert_msg(strstr(r->err, "nothing answers") != NULL, "%s", r->err);

    /* A name goes into NATS subjects: a blank, a '.' or a wildcard would reach others. */
    const char *bad_names[] = {"order summary", "orders.>", "*", ""};
    for (size_t i = 0; i < sizeof(bad_names) / sizeof(bad_names[0]); i++) {
        CLI(r, url, "query", bad_names[i], "ListOrders", "{}");
        ASSERT_CLI(r, 2);
        ck_assert_msg(strstr(r->err, "is not a service or projector name") != NULL, "%s", r->err);
    }

    CLI(r, url, "events", "orders", "--aggregate", "not-a-uuid");
    ASSERT_CLI(r, 2);
    ck_assert_msg(strstr(r->err, "not-a-uuid") != NULL, "%s", r->err);

    /* Numbers are whole and unsigned, blanks and signs included; a flag is for the
     * subcommands that read it, not silently ignored by the others. */
    CLI(r, url, "events", "orders", "--from-seq", " -1");
    ASSERT_CLI(r, 2);
    ck_assert_msg(strstr(r->err, "--from-seq") != NULL, "%s", r->err);
    /* Past 2^63 - 1 the server would refuse the number as a bad request: refused here. */
    CLI(r, url, "events", "orders", "--from-seq", "9223372036854775808");
    ASSERT_CLI(r, 2);
    ck_assert_msg(strstr(r->err, "from 0 to 9223372036854775807") != NULL, "%s", r->err);
    CLI(r, url, "history", "orders", id, "--at-seq", "2");
    ASSERT_CLI(r, 2);
    ck_assert_msg(strstr(r->err, "--at-seq does not apply to history") != NULL, "%s", r->err);
    CLI(r, url, "events", "orders", "--from-time", "2099-01-01T00:00:00Z");
    ASSERT_CLI(r, 2);
    ck_assert_msg(strstr(r->err, "--from-time does not apply to events") != NULL, "%s", r->err);
    /* An empty command id ("$ID" unset) would make a retry take effect twice. */
    CLI(r, url, "command", "orders", "CreateOrder", "{\"customer_id\":\"cli\"}", "--command-id",
        "");
    ASSERT_CLI(r, 2);
    ck_assert_msg(strstr(r->err, "--command-id needs a value") != NULL, "%s", r->err);

    /* Nothing refused or malformed reached the stream: 4 events in all. */
    ck_assert_uint_eq(tstream_msgs(env.conn, "ORDERS"), 4);

    /* Something that is not a commit, on a subject with JSON's special characters, is still
     * shown as one valid JSON line; and a script is told the output is not the whole trail
     * (exit 4), as for history. */
    ck_assert_int_eq(
        js_Publish(NULL, jl_conn_js(env.conn), "orders.events.a\"b\\c", "junk", 4, NULL, NULL),
        NATS_OK);
    CLI(r, url, "events", "orders", "--from-seq", "5");
    ASSERT_CLI(r, 4);
    ck_assert_msg(strstr(r->out, "\"subject\":\"orders.events.a\\\"b\\\\c\",\"error\":\"") != NULL,
                  "%s", r->out);
    ck_assert_msg(strstr(r->err, "1 event could not be shown whole") != NULL, "%s", r->err);
    CLI(r, url, "events", "orders", "--from-seq", "1", "--aggregate", id); /* the good ones */
    ASSERT_CLI(r, 0);
    free(r);
    ck_assert_int_eq(svc_stop(&proj, SIGTERM, SHUTDOWN_MS), 0);
    ck_assert_int_eq(svc_stop(&prod, SIGTERM, SHUTDOWN_MS), 0);
}
END_TEST

/* ---- 5. producer replicas ------------------------------------------------------------------ */

START_TEST(producer_replicas_share_commands_in_a_queue_group)
{
    enum { ORDERS = 10, ITEMS = 3 };
    char tail[1500];
    svc a, b;
    jl_reply r;
    jl_reply_init(&r);
    svc_start(&a, "orders", "orders-a.log", env.cfg.nats_url, NULL, 0, "debug");
    svc_start(&b, "orders", "orders-b.log", env.cfg.nats_url, NULL, 0, "debug");
    ck_assert_msg(wait_log(a.log, "\"msg\":\"producer ready\"", READY_MS), "a: %s",
                  log_tail(a.log, tail, sizeof(tail)));
    ck_assert_msg(wait_log(b.log, "\"msg\":\"producer ready\"", READY_MS), "b: %s",
                  log_tail(b.log, tail, sizeof(tail)));
    wait_orders_answer(&a);

    int ok = 0;
    for (int i = 0; i < ORDERS; i++) {
        char id[JL_UUID_LEN + 1];
        Orders__CreateOrder c = ORDERS__CREATE_ORDER__INIT;
        c.customer_id = "replicas";
        ok += cmd(&c.base, &r) == JL_CODE_OK;
        snprintf(id, sizeof(id), "%s", r.aggregate_id);
        for (int k = 0; k < ITEMS; k++) {
            char sku[16];
            Orders__AddItem m = ORDERS__ADD_ITEM__INIT;
            snprintf(sku, sizeof(sku), "sku-%d", k);
            m.order_id = id;
            m.sku = sku;
            m.quantity = 1;
            m.unit_price_cents = 10;
            ok += cmd(&m.base, &r) == JL_CODE_OK;
        }
    }
    ck_assert_int_eq(ok, ORDERS * (1 + ITEMS));
    ck_assert_uint_eq(tstream_msgs(env.conn, "ORDERS"), ORDERS * (1 + ITEMS));

    /* Each accepted command is logged once, by the replica that handled it. */
    int na = file_count(a.log, "\"msg\":\"command accepted\"");
    int nb = file_count(b.log, "\"msg\":\"command accepted\"");
    ck_assert_int_eq(na + nb, ORDERS * (1 + ITEMS));
    ck_assert_msg(na > 0 && nb > 0, "one replica handled everything: a %d, b %d", na, nb);
    ck_assert_int_eq(svc_stop(&a, SIGTERM, SHUTDOWN_MS), 0);
    ck_assert_int_eq(svc_stop(&b, SIGTERM, SHUTDOWN_MS), 0);
    jl_reply_cleanup(&r);
}
END_TEST

/* ---- 6. a rebuild killed halfway ------------------------------------------------------ */

static Jetledger__RebuildStatus *admin_req(const char *subject, const ProtobufCMessage *m)
{
    return tadmin(env.conn, subject, m, NULL, NULL, 0);
}

/* Start a rebuild; poll until @p stop_when_applied messages are applied (0: until the end). */
static Jetledger__RebuildStatus *rebuild_until(uint64_t stop_when_applied)
{
    Jetledger__Rebuild rb = JETLEDGER__REBUILD__INIT;
    Jetledger__RebuildStatus *st = admin_req("order_summary.admin.Rebuild", &rb.base);
    char subject[160];
    snprintf(subject, sizeof(subject), "order_summary.admin.%s.GetRebuildStatus", st->instance);
    int64_t deadline = tnow_ms() + 120000;
    while (strcmp(st->state, "running") == 0 &&
           (stop_when_applied == 0 || st->applied < stop_when_applied)) {
        ck_assert(tnow_ms() < deadline);
        jetledger__rebuild_status__free_unpacked(st, NULL);
        Jetledger__GetRebuildStatus q = JETLEDGER__GET_REBUILD_STATUS__INIT;
        st = admin_req(subject, &q.base);
    }
    return st;
}

static void live_db(const char *dir, char *out, size_t n)
{
    char ptr[PATH_MAX], name[256] = "order_summary.db\n";
    snprintf(ptr, sizeof(ptr), "%s/order_summary.current", dir);
    read_text(ptr, name, sizeof(name));
    if (name[0] == 0)
        snprintf(name, sizeof(name), "order_summary.db");
    name[strcspn(name, "\n")] = 0;
    snprintf(out, n, "%s/%s", dir, name);
}

START_TEST(rebuild_killed_halfway_leaves_the_live_model_as_it_was)
{
    const char *url = jl_natsd_url(env.natsd);
    char data[600], db[PATH_MAX];
    svc orders, proj;
    svc_start(&orders, "orders", "orders.log", url, NULL, 0, NULL);
    wait_orders_answer(&orders);
    tseed_orders(env.conn, 60000, 1);
    uint64_t last = stream_last_seq();
    snprintf(data, sizeof(data), "%s/rk", env.dir);
    svc_start(&proj, "order_summary", "summary.log", url, data, 1024, NULL);
    snprintf(db, sizeof(db), "%s/order_summary.db", data);
    wait_db_at(db, &proj, last, 60000);
    char *before = tdump(db);

    Jetledger__RebuildStatus *st = rebuild_until(last / 10);
    ck_assert_msg(strcmp(st->state, "running") == 0,
                  "the rebuild ended (%s) before it could be killed", st->state);
    printf("killing the projector with the rebuild at %" PRIu64 " of %" PRIu64 " messages\n",
           st->applied, st->total);
    jetledger__rebuild_status__free_unpacked(st, NULL);
    ck_assert_int_eq(svc_stop(&proj, SIGKILL, 5000), 137);

    /* The live file is what it was, and still the one named live; the partial file is there. */
    char live[PATH_MAX];
    live_db(data, live, sizeof(live));
    ck_assert_str_eq(live, db);
    char *after = tdump(db);
    ck_assert_str_eq(before, after);
    free(after);
    ck_assert_int_eq(count_files(data, "order_summary.rebuild-"), 1);

    /* Restarted, it serves the same model, removes the partial file, and can rebuild again. */
    svc_start(&proj, "order_summary", "summary2.log", url, data, 1024, NULL);
    wait_summary_answers(&proj);
    ck_assert_int_eq(count_files(data, "order_summary.rebuild-"), 0);
    st = rebuild_until(0);
    ck_assert_msg(strcmp(st->state, "done") == 0, "%s: %s", st->state, st->error);
    jetledger__rebuild_status__free_unpacked(st, NULL);
    live_db(data, live, sizeof(live));
    ck_assert_str_ne(live, db);
    after = tdump(live);
    ck_assert_str_eq(before, after);
    free(after);
    free(before);
    ck_assert_int_eq(svc_stop(&proj, SIGTERM, 10000), 0);
    ck_assert_int_eq(svc_stop(&orders, SIGTERM, 10000), 0);
}
END_TEST

START_TEST(a_projector_killed_in_a_keep_old_switch_keeps_both_models)
{
    /* Killed at each step of a --keep-old switch, the projector restarts on one whole model,
     * the old or the new, and the replaced one is kept whole (or, stopped before the pointer
     * moved, nothing was replaced and nothing is kept). */
    const char *url = jl_natsd_url(env.natsd);
    const char *points[] = {"switch.linked", "switch.pointer", "switch.swapped"};
    svc orders, proj;
    svc_start(&orders, "orders", "orders.log", url, NULL, 0, NULL);
    wait_orders_answer(&orders);
    tseed_orders(env.conn, 300, 1);
    uint64_t last = stream_last_seq();
    for (int i = 0; i < 3; i++) {
        char data[600], db[PATH_MAX], live[PATH_MAX], log_name[64];
        snprintf(data, sizeof(data), "%s/sw%d", env.dir, i);
        snprintf(db, sizeof(db), "%s/order_summary.db", data);
        snprintf(log_name, sizeof(log_name), "sw%d.log", i);
        snprintf(svc_fault_point, sizeof(svc_fault_point), "%s", points[i]);
        svc_start(&proj, "order_summary", log_name, url, data, 0, NULL);
        svc_fault_point[0] = 0;
        wait_db_at(db, &proj, last, 60000);
        char *before = tdump(db);
        Jetledger__Rebuild rb = JETLEDGER__REBUILD__INIT;
        rb.keep_old = true;
        jetledger__rebuild_status__free_unpacked(admin_req("order_summary.admin.Rebuild", &rb.base),
                                                 NULL);
        ck_assert_int_eq(svc_stop(&proj, 0, 60000), 137); /* killed itself at the point */
        printf("injected: the projector killed at %s in a --keep-old switch\n", points[i]);

        snprintf(log_name, sizeof(log_name), "sw%d-again.log", i);
        svc_start(&proj, "order_summary", log_name, url, data, 0, NULL);
        wait_summary_answers(&proj);
        live_db(data, live, sizeof(live));
        ck_assert_msg((i == 0) == (strcmp(live, db) == 0), "%s live after %s", live, points[i]);
        char *now = tdump(live);
        ck_assert_str_eq(before, now);
        free(now);
        ck_assert_int_eq(count_files(data, "order_summary.replaced-"), i == 0 ? 0 : 1);
        ck_assert_int_eq(count_files(data, "order_summary.rebuild-"), i == 0 ? 0 : 1);
        if (i > 0) {
            char cmd[PATH_MAX + 64], kept[PATH_MAX] = "";
            snprintf(cmd, sizeof(cmd), "ls %s/order_summary.replaced-*.db", data);
            FILE *f = popen(cmd, "r");
            ck_assert_ptr_nonnull(f);
            ck_assert_ptr_nonnull(fgets(kept, sizeof(kept), f));
            pclose(f);
            kept[strcspn(kept, "\n")] = 0;
            char *old = tdump(kept);
            ck_assert_str_eq(before, old);
            free(old);
            ck_assert_int_ne(access(db, F_OK), 0); /* its old name is gone */
        }
        free(before);
        ck_assert_int_eq(svc_stop(&proj, SIGTERM, 10000), 0);
    }
    ck_assert_int_eq(svc_stop(&orders, SIGTERM, 10000), 0);
}
END_TEST

START_TEST(a_cancel_that_comes_while_a_rebuild_switches_is_refused_as_too_late)
{
    /* Past its last check for a cancel the rebuild replaces the live model whatever comes:
     * a cancel then must be refused as too late, not answered ok (which the CLI would report
     * as "cancelled, the live model untouched") and overtaken by the switch. The switch is held
     * at its first step. */
    const char *url = jl_natsd_url(env.natsd);
    char data[600], db[PATH_MAX], msg[512] = "", tail[1500];
    svc orders, proj;
    svc_start(&orders, "orders", "orders.log", url, NULL, 0, NULL);
    wait_orders_answer(&orders);
    tseed_orders(env.conn, 50, 1);
    uint64_t last = stream_last_seq();
    snprintf(data, sizeof(data), "%s/late", env.dir);
    snprintf(db, sizeof(db), "%s/order_summary.db", data);
    svc_extra[0] = "JL_FAULT_ACTION=hang";
    snprintf(svc_fault_point, sizeof(svc_fault_point), "switch.linked");
    svc_start(&proj, "order_summary", "late.log", url, data, 0, NULL);
    svc_fault_point[0] = 0;
    wait_db_at(db, &proj, last, 60000);
    Jetledger__Rebuild rb = JETLEDGER__REBUILD__INIT;
    rb.keep_old = true;
    Jetledger__RebuildStatus *st = admin_req("order_summary.admin.Rebuild", &rb.base);
    ck_assert_msg(wait_log(proj.log, "\"msg\":\"fault point reached: this thread hangs\"", 30000),
                  "%s", log_tail(proj.log, tail, sizeof(tail)));
    printf("injected: a cancel while the rebuild's switch is under way\n");
    Jetledger__CancelRebuild cancel = JETLEDGER__CANCEL_REBUILD__INIT;
    cancel.started_at_ns = st->started_at_ns;
    jl_code code = JL_CODE_OK;
    ck_assert_ptr_null(tadmin(env.conn, "order_summary.admin.CancelRebuild", &cancel.base, &code,
                              msg, sizeof(msg)));
    ck_assert_msg(code == JL_CODE_CONFLICT, "code %d: %s", (int)code, msg);
    ck_assert_msg(strstr(msg, "too late to cancel") != NULL, "%s", msg);
    Jetledger__GetRebuildStatus q = JETLEDGER__GET_REBUILD_STATUS__INIT;
    Jetledger__RebuildStatus *now = admin_req("order_summary.admin.GetRebuildStatus", &q.base);
    ck_assert_str_eq(now->state, "running");
    printf("verified: refused as too late (%s), the job still running\n", msg);
    jetledger__rebuild_status__free_unpacked(now, NULL);
    jetledger__rebuild_status__free_unpacked(st, NULL);
    svc_stop(&proj, SIGKILL, 5000);
    ck_assert_int_eq(svc_stop(&orders, SIGTERM, 10000), 0);
}
END_TEST

Suite *processes_suite(void)
{
    Suite *s = suite_create("processes");
    TCase *tc = tcase_create("processes");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 180);
    tcase_add_test(tc, projector_killed_between_batches_ends_equal_to_uninterrupted);
    tcase_add_test(tc, projector_killed_then_restarted_applies_events_appended_while_dead);
    tcase_add_test(tc, sigterm_stops_services_with_status_0);
    tcase_add_test(tc, sigterm_mid_catch_up_commits_and_acks_the_batch_in_hand);
    tcase_add_test(tc, two_sigints_in_a_row_end_services_promptly);
    tcase_add_test(tc, second_signal_during_graceful_stop_exits_130);
    tcase_add_test(tc, a_connection_closed_for_good_stops_the_service_with_status_1);
    tcase_add_test(tc, a_sigterm_sent_twice_at_once_is_one_graceful_stop);
    tcase_add_test(tc, a_graceful_stop_with_the_server_frozen_ends_within_its_bound);
    tcase_add_test(tc, a_ready_file_is_there_while_a_service_answers);
    tcase_add_test(tc, a_stuck_service_stops_renewing_its_liveness_file);
    tcase_add_test(tc, a_projector_whose_query_never_ends_stops_renewing_its_liveness_file);
    tcase_add_test(tc, a_projector_far_behind_is_ready_once_it_has_caught_up);
    tcase_add_test(tc, dead_server_keeps_service_retrying_until_a_signal);
    tcase_add_test(tc, sigterm_during_connect_wait_exits_0_promptly);
    tcase_add_test(tc, services_exit_1_with_cannot_start_when_the_port_is_not_nats);
    tcase_add_test(tc, a_second_projector_process_on_one_durable_exits_1_naming_the_first);
    tcase_add_test(tc, services_exit_1_when_the_server_greets_and_goes_silent);
    tcase_add_test(tc, cli_round_trip_and_exit_codes);
    tcase_add_test(tc, cli_refuses_replies_that_do_not_fit_the_question);
    tcase_add_test(tc, cli_status_shows_streams_consumers_and_lag);
    tcase_add_test(tc, cli_ctrl_c_cancels_its_rebuild_and_exits_1);
    tcase_add_test(tc, cli_following_a_rebuild_outlasts_a_poll_nothing_answers);
    tcase_add_test(tc, cli_rebuild_and_verify_report_their_outcome_and_exit_status);
    tcase_add_test(tc, cli_instance_sends_a_job_to_that_instance_of_a_projector);
    tcase_add_test(tc, producer_replicas_share_commands_in_a_queue_group);
    tcase_add_test(tc, rebuild_killed_halfway_leaves_the_live_model_as_it_was);
    tcase_add_test(tc, a_projector_killed_in_a_keep_old_switch_keeps_both_models);
    tcase_add_test(tc, a_cancel_that_comes_while_a_rebuild_switches_is_refused_as_too_late);
    suite_add_tcase(s, tc);
    /* Needs root (a mount namespace with a tmpfs), as the fault tests need it for nft. */
    TCase *disk = tcase_create("disk");
    tcase_add_checked_fixture(disk, setup, teardown);
    tcase_set_timeout(disk, 180);
    tcase_add_test(disk, a_full_disk_holds_the_projector_and_loses_nothing);
    suite_add_tcase(s, disk);
    return s;
}

int main(void)
{
    return trun(processes_suite());
}
