/*
 * Catch-up, raw (b): the SQLite side of the projector alone. The events of ORDERS are decoded
 * into rows first (not timed), then applied with the order_summary projection's own SQL
 * (projectors/order_summary/projection.c: the orders insert, the order_items upsert and the
 * recompute of the order's totals) and a checkpoint row update per transaction, in transactions
 * of the projector's batch size, WAL mode, synchronous=NORMAL, on disk, statements prepared once.
 * The SQL is copied here on purpose: this is the reference the projector is measured against,
 * so it must not change when the projector does.
 */
#include "bench.h"

#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sqlite3.h>

#include "jetledger/conn.h"
#include "jetledger/db.h"
#include "orders/orders.pb-c.h"

#define MAX_ROWS (8u * 1000u * 1000u)
#define DECODE_TIMEOUT_NS (900 * 1000000000LL)
#define SAMPLE_EVERY_NS (100 * 1000000LL)

enum { ROW_CREATED, ROW_ADDED, ROW_REMOVED, ROW_PLACED, ROW_CANCELLED };

typedef struct row {
    uint64_t seq;
    uint64_t version;
    int64_t at_ns;
    int64_t price;
    int32_t qty;
    uint8_t kind;
    char order_id[BENCH_ID_LEN];
    char text[65]; /* customer id or sku (ORDERS_MAX_TEXT is 64) */
} row;

typedef struct rows {
    row *v;
    size_t n;
    size_t cap;
    atomic_uint_fast64_t msgs;
    atomic_int fail; /* set by the callback: rows are incomplete */
    char err[512];   /* written once, before fail is set */
    uint64_t target;
} rows;

static bool add_row(rows *rs, const jl_event *ev, uint64_t seq)
{
    const ProtobufCMessageDescriptor *d = ev->payload->descriptor;
    if (rs->n == rs->cap) {
        size_t cap = rs->cap ? rs->cap * 2 : 1u << 16;
        if (cap > MAX_ROWS)
            cap = MAX_ROWS;
        if (cap == rs->cap)
            return false;
        row *v = realloc(rs->v, cap * sizeof(*v));
        if (v == NULL)
            return false;
        rs->v = v;
        rs->cap = cap;
    }
    row *r = &rs->v[rs->n];
    memset(r, 0, sizeof(*r));
    r->seq = seq;
    r->version = ev->aggregate_version;
    r->at_ns = ev->occurred_at_ns;
    snprintf(r->order_id, sizeof(r->order_id), "%s", ev->aggregate_id);
    if (d == &orders__order_created__descriptor) {
        r->kind = ROW_CREATED;
        snprintf(r->text, sizeof(r->text), "%s",
                 ((const Orders__OrderCreated *)ev->payload)->customer_id);
    } else if (d == &orders__item_added__descriptor) {
        const Orders__ItemAdded *a = (const Orders__ItemAdded *)ev->payload;
        r->kind = ROW_ADDED;
        snprintf(r->text, sizeof(r->text), "%s", a->sku);
        r->qty = a->quantity;
        r->price = a->unit_price_cents;
    } else if (d == &orders__item_removed__descriptor) {
        r->kind = ROW_REMOVED;
        snprintf(r->text, sizeof(r->text), "%s", ((const Orders__ItemRemoved *)ev->payload)->sku);
    } else if (d == &orders__order_placed__descriptor) {
        r->kind = ROW_PLACED;
    } else if (d == &orders__order_cancelled__descriptor) {
        r->kind = ROW_CANCELLED;
    } else {
        return false;
    }
    rs->n++;
    return true;
}

static void decode_fail(rows *rs, const char *fmt, uint64_t seq, const char *why)
{
    if (atomic_load(&rs->fail))
        return;
    snprintf(rs->err, sizeof(rs->err), fmt, seq, why);
    atomic_store(&rs->fail, 1);
}

/* NATS thread (the only writer of @p closure's rows until msgs reaches the target). */
static void on_msg(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    rows *rs = closure;
    jsMsgMetaData *meta = NULL;
    jl_commit *c = NULL;
    char err[256] = "";
    uint64_t seq = 0;
    (void)nc;
    (void)sub;
    if (natsMsg_GetMetaData(&meta, msg) == NATS_OK) {
        seq = meta->Sequence.Stream;
        jsMsgMetaData_Destroy(meta);
    }
    if (!atomic_load(&rs->fail)) {
        if (jl_commit_decode(&c, natsMsg_GetData(msg), (size_t)natsMsg_GetDataLength(msg), seq, err,
                             sizeof(err)) != JL_OK) {
            decode_fail(rs, "message %" PRIu64 " is not a commit: %s", seq, err);
        } else {
            for (size_t i = 0; i < jl_commit_count(c); i++) {
                jl_event ev;
                if (jl_commit_event(c, i, NULL, &ev, err, sizeof(err)) != JL_OK) {
                    decode_fail(rs, "event in message %" PRIu64 ": %s", seq, err);
                    break;
                }
                if (!add_row(rs, &ev, seq)) {
                    decode_fail(rs, "message %" PRIu64 ": %s", seq,
                                "unknown event type or too many rows");
                    break;
                }
            }
        }
        jl_commit_free(c);
    }
    atomic_fetch_add(&rs->msgs, 1);
    natsMsg_Destroy(msg);
}

static jl_status load_rows(bench *b, rows *rs, uint64_t last_seq)
{
    natsSubscription *sub = NULL;
    jsSubOptions so;
    jsErrCode jerr = 0;
    jl_status s = JL_OK;
    int64_t t0 = bench_now_ns();

    rs->target = last_seq;
    jsSubOptions_Init(&so);
    so.Ordered = true;
    natsStatus ns =
        js_Subscribe(&sub, b->js_bulk, BENCH_ORDERS_SUBJECTS, on_msg, rs, NULL, &so, &jerr);
    if (ns == NATS_OK)
        ns = natsSubscription_SetPendingLimits(sub, -1, -1);
    if (ns != NATS_OK)
        s = bench_fail(b, JL_ERR_NATS, "ordered consumer on %s: %s (JetStream error %d)",
                       BENCH_ORDERS_STREAM, natsStatus_GetText(ns), (int)jerr);
    while (s == JL_OK && atomic_load(&rs->msgs) < last_seq) {
        bench_sleep_ms(50);
        if (bench_stopping())
            s = bench_fail(b, JL_ERR_STOPPED, "interrupted");
        else if (bench_now_ns() - t0 > DECODE_TIMEOUT_NS)
            s = bench_fail(b, JL_ERR_TIMEOUT, "decoded %" PRIu64 " of %" PRIu64 " messages",
                           (uint64_t)atomic_load(&rs->msgs), last_seq);
    }
    /* Unsubscribe first: no callback runs on the rows after this. */
    jl_nats_sub_destroy(b->nc_bulk, sub);
    if (s == JL_OK && atomic_load(&rs->fail))
        s = bench_fail(b, JL_ERR_DECODE, "decoding %s: %s", BENCH_ORDERS_STREAM, rs->err);
    return s;
}

/* ---- the SQL of projectors/order_summary/projection.c, and the runtime's checkpoint row ---- */

static const char schema[] =
    "CREATE TABLE IF NOT EXISTS orders ("
    "  order_id TEXT PRIMARY KEY,"
    "  customer_id TEXT NOT NULL,"
    "  status TEXT NOT NULL,"
    "  item_count INTEGER NOT NULL DEFAULT 0,"
    "  total_cents INTEGER NOT NULL DEFAULT 0,"
    "  version INTEGER NOT NULL,"
    "  updated_at_ns INTEGER NOT NULL);"
    "CREATE INDEX IF NOT EXISTS orders_by_status ON orders (status, order_id);"
    "CREATE TABLE IF NOT EXISTS order_items ("
    "  order_id TEXT NOT NULL,"
    "  sku TEXT NOT NULL,"
    "  quantity INTEGER NOT NULL,"
    "  unit_price_cents INTEGER NOT NULL,"
    "  PRIMARY KEY (order_id, sku));"
    "CREATE TABLE IF NOT EXISTS jl_state ("
    "  id INTEGER PRIMARY KEY CHECK (id = 1),"
    "  projector TEXT NOT NULL,"
    "  stream TEXT NOT NULL,"
    "  version INTEGER NOT NULL,"
    "  last_seq INTEGER NOT NULL,"
    "  updated_at_ns INTEGER NOT NULL);"
    "INSERT INTO jl_state VALUES (1, 'bench_raw', 'ORDERS', 1, 0, 0);";

enum { ST_CREATE, ST_ADD, ST_REMOVE, ST_TOUCH, ST_STATE, ST_BEGIN, ST_COMMIT, ST_COUNT };

static const char *const sql[ST_COUNT] = {
    [ST_CREATE] = "INSERT INTO orders (order_id, customer_id, status, version, updated_at_ns) "
                  "VALUES (?, ?, 'open', ?, ?)",
    [ST_ADD] = "INSERT INTO order_items (order_id, sku, quantity, unit_price_cents) SELECT ?1, "
               "?2, ?3, ?4 WHERE EXISTS (SELECT 1 FROM orders WHERE order_id = ?1) ON CONFLICT "
               "(order_id, sku) DO UPDATE SET quantity = quantity + excluded.quantity, "
               "unit_price_cents = excluded.unit_price_cents",
    [ST_REMOVE] = "DELETE FROM order_items WHERE order_id = ? AND sku = ?",
    [ST_TOUCH] = "UPDATE orders SET status = coalesce(?1, status), item_count = (SELECT "
                 "coalesce(sum(quantity), 0) FROM order_items WHERE order_id = ?2), total_cents "
                 "= (SELECT coalesce(sum(quantity * unit_price_cents), 0) FROM order_items WHERE "
                 "order_id = ?2), version = ?3, updated_at_ns = ?4 WHERE order_id = ?2",
    [ST_STATE] = "UPDATE jl_state SET last_seq = ?, updated_at_ns = ? WHERE id = 1",
    [ST_BEGIN] = "BEGIN IMMEDIATE",
    [ST_COMMIT] = "COMMIT",
};

/* Step a statement whose parameters are bound to completion and reset it. */
static bool step(sqlite3_stmt *st)
{
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return rc == SQLITE_DONE;
}

static bool touch(sqlite3_stmt *st, sqlite3 *db, const row *r, const char *status, uint64_t *misses)
{
    if (status != NULL)
        sqlite3_bind_text(st, 1, status, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, r->order_id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, (sqlite3_int64)r->version);
    sqlite3_bind_int64(st, 4, r->at_ns);
    if (!step(st))
        return false;
    if (sqlite3_changes(db) == 0)
        (*misses)++;
    return true;
}

static bool apply_row(sqlite3_stmt *const *st, sqlite3 *db, const row *r, uint64_t *misses)
{
    switch (r->kind) {
    case ROW_CREATED:
        sqlite3_bind_text(st[ST_CREATE], 1, r->order_id, -1, SQLITE_STATIC);
        sqlite3_bind_text(st[ST_CREATE], 2, r->text, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st[ST_CREATE], 3, (sqlite3_int64)r->version);
        sqlite3_bind_int64(st[ST_CREATE], 4, r->at_ns);
        return step(st[ST_CREATE]);
    case ROW_ADDED:
        sqlite3_bind_text(st[ST_ADD], 1, r->order_id, -1, SQLITE_STATIC);
        sqlite3_bind_text(st[ST_ADD], 2, r->text, -1, SQLITE_STATIC);
        sqlite3_bind_int(st[ST_ADD], 3, r->qty);
        sqlite3_bind_int64(st[ST_ADD], 4, r->price);
        if (!step(st[ST_ADD]))
            return false;
        if (sqlite3_changes(db) == 0)
            (*misses)++;
        return touch(st[ST_TOUCH], db, r, NULL, misses);
    case ROW_REMOVED:
        sqlite3_bind_text(st[ST_REMOVE], 1, r->order_id, -1, SQLITE_STATIC);
        sqlite3_bind_text(st[ST_REMOVE], 2, r->text, -1, SQLITE_STATIC);
        return step(st[ST_REMOVE]) && touch(st[ST_TOUCH], db, r, NULL, misses);
    case ROW_PLACED:
        return touch(st[ST_TOUCH], db, r, "placed", misses);
    case ROW_CANCELLED:
        return touch(st[ST_TOUCH], db, r, "cancelled", misses);
    }
    return false;
}

static double thread_cpu_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static jl_status apply_rows(bench *b, const rows *rs, double *out_rate, double *out_cpu_s)
{
    char path[PATH_MAX + 32], err[512] = "";
    jl_db *jdb = NULL;
    sqlite3 *db = NULL;
    sqlite3_stmt *st[ST_COUNT] = {NULL};
    jl_status s = JL_OK;
    uint64_t misses = 0;
    size_t batch = b->o.batch > 0 ? (size_t)b->o.batch : 1;

    snprintf(path, sizeof(path), "%s/raw-sqlite.db", b->work);
    /* Opened as the projector opens its read model (jl_db_open: WAL, synchronous NORMAL, the
     * connection's mode, checkpoints on a background thread), so that the limit differs from
     * the pipeline by NATS alone, not by how SQLite is set up. */
    if (jl_db_open(&jdb, path, false, err, sizeof(err)) != JL_OK)
        return bench_fail(b, JL_ERR_SQLITE, "%s: %s", path, err);
    db = jl_db_handle(jdb);
    int rc = sqlite3_exec(db, schema, NULL, NULL, NULL);
    for (int i = 0; i < ST_COUNT && rc == SQLITE_OK; i++)
        rc = sqlite3_prepare_v3(db, sql[i], -1, SQLITE_PREPARE_PERSISTENT, &st[i], NULL);
    if (rc != SQLITE_OK)
        s = bench_fail(b, JL_ERR_SQLITE, "%s: %s", path, sqlite3_errmsg(db));

    int64_t t0 = bench_now_ns(), last_sample = t0, shown = t0;
    double cpu0 = thread_cpu_s();
    size_t in_batch = 0;
    bench_curve_add(&b->catchup_raw_sql, 0, 0);
    if (s == JL_OK && !step(st[ST_BEGIN]))
        s = bench_fail(b, JL_ERR_SQLITE, "BEGIN: %s", sqlite3_errmsg(db));
    for (size_t i = 0; i < rs->n && s == JL_OK; i++) {
        const row *r = &rs->v[i];
        if (!apply_row(st, db, r, &misses)) {
            s = bench_fail(b, JL_ERR_SQLITE, "applying row %zu (sequence %" PRIu64 "): %s", i,
                           r->seq, sqlite3_errmsg(db));
            break;
        }
        /* A batch is so many messages; a message's events never straddle two. */
        bool msg_end = i + 1 == rs->n || rs->v[i + 1].seq != r->seq;
        if (msg_end)
            in_batch++;
        if (msg_end && (in_batch == batch || i + 1 == rs->n)) {
            sqlite3_bind_int64(st[ST_STATE], 1, (sqlite3_int64)r->seq);
            sqlite3_bind_int64(st[ST_STATE], 2, bench_now_ns());
            if (!step(st[ST_STATE]) || !step(st[ST_COMMIT]) ||
                (i + 1 < rs->n && !step(st[ST_BEGIN]))) {
                s = bench_fail(b, JL_ERR_SQLITE, "commit: %s", sqlite3_errmsg(db));
                break;
            }
            in_batch = 0;
            int64_t t = bench_now_ns();
            if (t - last_sample >= SAMPLE_EVERY_NS) {
                bench_curve_add(&b->catchup_raw_sql, (double)(t - t0) / 1e9, (double)(i + 1));
                last_sample = t;
            }
            if (t - shown >= 5000000000LL) {
                bench_progress("  %zu/%zu events (%.0f events/s)", i + 1, rs->n,
                               (double)(i + 1) / ((double)(t - t0) / 1e9));
                shown = t;
            }
            if (bench_stopping())
                s = bench_fail(b, JL_ERR_STOPPED, "interrupted");
        }
    }
    int64_t t1 = bench_now_ns();
    if (s == JL_OK) {
        bench_curve_add(&b->catchup_raw_sql, (double)(t1 - t0) / 1e9, (double)rs->n);
        *out_rate = (double)rs->n / ((double)(t1 - t0) / 1e9);
        *out_cpu_s = thread_cpu_s() - cpu0;
    }
    /* Every event applies to an order created before it: a miss is a bug in this benchmark. */
    if (s == JL_OK && misses > 0)
        s = bench_fail(b, JL_ERR_INTERNAL, "raw SQLite: %" PRIu64 " events found no order", misses);
    for (int i = 0; i < ST_COUNT; i++)
        sqlite3_finalize(st[i]);
    jl_db_close(jdb);
    return s;
}

jl_status bench_raw_sqlite(bench *b, uint64_t last_seq, double *out_rate, double *out_cpu_s)
{
    rows *rs = calloc(1, sizeof(*rs));
    if (rs == NULL)
        return bench_fail(b, JL_ERR_NOMEM, "out of memory");
    atomic_init(&rs->msgs, 0);
    atomic_init(&rs->fail, 0);
    jl_status s = load_rows(b, rs, last_seq);
    if (s == JL_OK)
        bench_progress("  decoded %zu events; applying them to SQLite in batches of %d", rs->n,
                       b->o.batch);
    if (s == JL_OK)
        s = apply_rows(b, rs, out_rate, out_cpu_s);
    free(rs->v);
    free(rs);
    return s;
}
