/*
 * The sales_dashboard projection (projection.c) without NATS: apply against a scratch SQLite
 * file, then the queries. Sums past int64: refused or answered as such, never counted wrong.
 */
#include "projection.h"

#include <check.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dashboard/dashboard.pb-c.h"
#include "jetledger/db.h"
#include "orders/orders.pb-c.h"
#include "unit.h"

#define MAX_QTY 1000000              /* ORDERS_MAX_QUANTITY */
#define MAX_PRICE 100000000000LL     /* ORDERS_MAX_PRICE_CENTS */
#define MAX_LINES 50                 /* ORDERS_MAX_ITEMS */
#define DAY_NS 1767225600000000000LL /* 2026-01-01T00:00:00Z */

static char dir[256];
static jl_db *db;

static void db_setup(void)
{
    jl_ck_scratch_dir(dir, sizeof(dir), "test_sales_dashboard");
    db = jl_ck_scratch_db(dir, "d.db", sales_dashboard_projector.schema_sql);
}

static void db_teardown(void)
{
    jl_db_close(db);
    db = NULL;
    jl_ck_scratch_remove(dir);
}

/* One orders event as apply sees it. */
typedef struct tev {
    jl_event ev;
    char event_id[JL_UUID_LEN + 1];
    char order[JL_UUID_LEN + 1];
    union {
        Orders__OrderCreated created;
        Orders__OrderPlaced placed;
        Orders__OrderConfirmed confirmed;
        Orders__OrderCancelled cancelled;
    } m;
    char skus[MAX_LINES][16];
    Orders__OrderLine lines[MAX_LINES];
    Orders__OrderLine *ptrs[MAX_LINES];
} tev;

static void base(tev *t, const char *type, const char *order, int64_t at)
{
    memset(&t->ev, 0, sizeof(t->ev));
    jl_uuid_new(t->event_id);
    snprintf(t->order, sizeof(t->order), "%s", order);
    t->ev.event_id = t->event_id;
    t->ev.event_type = type;
    t->ev.aggregate_type = "order";
    t->ev.aggregate_id = t->order;
    t->ev.aggregate_version = 1;
    t->ev.occurred_at_ns = at;
}

static char apply_err[512];

static jl_status apply(tev *t)
{
    apply_err[0] = 0;
    return sales_dashboard_projector.apply(db, &t->ev, apply_err, sizeof(apply_err));
}

static void apply_ok(tev *t)
{
    jl_status s = apply(t);
    ck_assert_msg(s == JL_OK, "apply %s: %s (%s)", t->ev.event_type, jl_status_str(s), apply_err);
}

/* Apply an OrderCreated of @p order for @p customer at @p at, through @p t. */
static void create_order(tev *t, const char *order, const char *customer, int64_t at)
{
    base(t, "orders.OrderCreated", order, at);
    orders__order_created__init(&t->m.created);
    t->m.created.order_id = t->order;
    t->m.created.customer_id = (char *)customer;
    t->ev.payload = &t->m.created.base;
    apply_ok(t);
}

/* An order of @p n lines (skus "s00", "s01", ...) at the orders service's caps, created and
 * placed at @p at; returns what applying its OrderConfirmed returned. */
static jl_status max_order(int n, int64_t at)
{
    static tev t; /* large */
    char order[JL_UUID_LEN + 1];
    jl_uuid_new(order);

    create_order(&t, order, "alice", at);

    base(&t, "orders.OrderPlaced", order, at);
    orders__order_placed__init(&t.m.placed);
    t.m.placed.order_id = t.order;
    for (int i = 0; i < n; i++) {
        snprintf(t.skus[i], sizeof(t.skus[i]), "s%02d", i);
        orders__order_line__init(&t.lines[i]);
        t.lines[i].sku = t.skus[i];
        t.lines[i].quantity = MAX_QTY;
        t.lines[i].unit_price_cents = MAX_PRICE;
        t.ptrs[i] = &t.lines[i];
    }
    t.m.placed.n_lines = (size_t)n;
    t.m.placed.lines = t.ptrs;
    t.ev.payload = &t.m.placed.base;
    apply_ok(&t);

    base(&t, "orders.OrderConfirmed", order, at);
    orders__order_confirmed__init(&t.m.confirmed);
    t.m.confirmed.order_id = t.order;
    t.m.confirmed.reservation_id = order;
    t.ev.payload = &t.m.confirmed.base;
    return apply(&t);
}

static const jl_query_def *query(const ProtobufCMessageDescriptor *d)
{
    for (size_t i = 0; i < sales_dashboard_projector.n_queries; i++) {
        if (sales_dashboard_projector.queries[i].request == d)
            return &sales_dashboard_projector.queries[i];
    }
    ck_abort_msg("no query %s", d->name);
    return NULL;
}

static jl_status ask(const ProtobufCMessage *req, jl_reply *r)
{
    jl_reply_reset(r);
    ck_assert_int_eq(jl_db_begin(db, false), JL_OK);
    jl_status s = query(req->descriptor)->handle(db, req, r);
    jl_db_rollback(db);
    return s;
}

/* Two orders the orders service accepts (50 lines at the caps: 5e18 cents each), confirmed the
 * same day: the day's revenue over all skus is 1e19 cents, past int64. DailySeries says so, as
 * an answer (not an internal error), and still answers for one sku. */
START_TEST(a_daily_sum_past_int64_is_answered_invalid)
{
    ck_assert_int_eq(max_order(MAX_LINES, DAY_NS + 1000), JL_OK);
    ck_assert_int_eq(max_order(MAX_LINES, DAY_NS + 2000), JL_OK);

    jl_reply r;
    jl_reply_init(&r);
    Dashboard__DailySeries q = DASHBOARD__DAILY_SERIES__INIT;
    ck_assert_int_eq(ask(&q.base, &r), JL_OK);
    ck_assert_int_eq(r.code, JL_CODE_INVALID);
    ck_assert_msg(strstr(r.message, "exceeds") && strstr(r.message, "narrow"), "%s", r.message);

    q.sku = "s07";
    ck_assert_int_eq(ask(&q.base, &r), JL_OK);
    ck_assert_int_eq(r.code, JL_CODE_OK);
    Dashboard__DailySeriesResult *res =
        dashboard__daily_series_result__unpack(NULL, r.result.len, r.result.data);
    ck_assert_ptr_nonnull(res);
    ck_assert_uint_eq(res->n_points, 1);
    ck_assert_int_eq(res->points[0]->units, 2LL * MAX_QTY);
    ck_assert_int_eq(res->points[0]->revenue_cents, 2LL * MAX_QTY * MAX_PRICE);
    dashboard__daily_series_result__free_unpacked(res, NULL);
    jl_reply_cleanup(&r);
}
END_TEST

/* 93 confirmed one-line orders of sku s00 at the caps on one day: 9.3e18 cents, past int64.
 * SQLite would turn the sum into a REAL and TopProducts report a clamped, wrong figure: the
 * confirmation that would overflow is refused instead (the runtime dead-letters it, with the
 * reason) and every figure stays exact. */
START_TEST(a_sale_that_would_overflow_the_day_is_refused_not_counted_wrong)
{
    for (int i = 0; i < 92; i++)
        ck_assert_int_eq(max_order(1, DAY_NS + i), JL_OK);
    ck_assert_int_eq(max_order(1, DAY_NS + 92), JL_ERR_INVALID);
    ck_assert_msg(strstr(apply_err, "revenue_fits_int64") != NULL, "%s", apply_err);

    sqlite3_stmt *st = jl_db_stmt(db, "SELECT typeof(revenue_cents), units FROM daily_sales");
    ck_assert_ptr_nonnull(st);
    ck_assert_int_eq(sqlite3_step(st), SQLITE_ROW);
    ck_assert_str_eq((const char *)sqlite3_column_text(st, 0), "integer");
    ck_assert_int_eq(sqlite3_column_int64(st, 1), 92LL * MAX_QTY);
    sqlite3_reset(st);

    jl_reply r;
    jl_reply_init(&r);
    Dashboard__TopProducts q = DASHBOARD__TOP_PRODUCTS__INIT;
    ck_assert_int_eq(ask(&q.base, &r), JL_OK);
    ck_assert_int_eq(r.code, JL_CODE_OK);
    Dashboard__TopProductsResult *res =
        dashboard__top_products_result__unpack(NULL, r.result.len, r.result.data);
    ck_assert_ptr_nonnull(res);
    ck_assert_uint_eq(res->n_products, 1);
    ck_assert_int_eq(res->products[0]->revenue_cents, 92LL * MAX_QTY * MAX_PRICE);
    dashboard__top_products_result__free_unpacked(res, NULL);
    jl_reply_cleanup(&r);
}
END_TEST

/* Days that are not days, a range backwards, a limit past the maximum: each an INVALID answer
 * saying which, from both queries that take a range (never an empty result that looks real). */
/* VM steps of one query; its reply in @p r (code OK asserted). */
static long steps_of(const ProtobufCMessage *req, jl_reply *r)
{
    long steps;
    jl_ck_steps_begin(db, &steps);
    jl_status s = ask(req, r);
    jl_ck_steps_end(db);
    ck_assert_int_eq(s, JL_OK);
    ck_assert_msg(r->code == JL_CODE_OK, "%s", r->message);
    return steps;
}

/* A year of 40 skus: a range of a day or two reads those days by the day index, not the
 * year (queries are answered one at a time); an open range still reads all. Counted in
 * SQLite's virtual machine steps, not timed. */
START_TEST(a_short_range_reads_only_its_days)
{
    ck_assert_int_eq(
        sqlite3_exec(
            jl_db_handle(db),
            "WITH RECURSIVE d(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM d WHERE i < 364),"
            " k(j) AS (SELECT 0 UNION ALL SELECT j + 1 FROM k WHERE j < 39) "
            "INSERT INTO daily_sales SELECT date('2025-01-01', '+' || i || ' days'), "
            "printf('k%02d', j), 1, 100 + j FROM d, k;",
            NULL, NULL, NULL),
        SQLITE_OK);
    jl_reply r;
    jl_reply_init(&r);

    Dashboard__TopProducts top = DASHBOARD__TOP_PRODUCTS__INIT;
    top.from_day = "2025-03-01";
    top.to_day = "2025-03-02";
    top.limit = 1;
    long steps = steps_of(&top.base, &r);
    Dashboard__TopProductsResult *tr =
        dashboard__top_products_result__unpack(NULL, r.result.len, r.result.data);
    ck_assert_ptr_nonnull(tr);
    ck_assert_uint_eq(tr->n_products, 1);
    ck_assert_str_eq(tr->products[0]->sku, "k39");
    ck_assert_int_eq(tr->products[0]->units, 2);
    ck_assert_int_eq(tr->products[0]->revenue_cents, 2 * 139);
    dashboard__top_products_result__free_unpacked(tr, NULL);
    ck_assert_msg(steps < 5000, "TopProducts over 2 of 365 days: %ld steps", steps);
    top.from_day = top.to_day = ""; /* the whole year */
    long all = steps_of(&top.base, &r);
    tr = dashboard__top_products_result__unpack(NULL, r.result.len, r.result.data);
    ck_assert_ptr_nonnull(tr);
    ck_assert_int_eq(tr->products[0]->units, 365);
    dashboard__top_products_result__free_unpacked(tr, NULL);
    ck_assert_msg(all > 10 * steps, "%ld steps for the year, %ld for 2 days", all, steps);

    Dashboard__DailySeries q = DASHBOARD__DAILY_SERIES__INIT;
    q.from_day = "2025-06-01";
    q.to_day = "2025-06-03";
    steps = steps_of(&q.base, &r);
    Dashboard__DailySeriesResult *dr =
        dashboard__daily_series_result__unpack(NULL, r.result.len, r.result.data);
    ck_assert_ptr_nonnull(dr);
    ck_assert_uint_eq(dr->n_points, 3);
    ck_assert_str_eq(dr->points[0]->day, "2025-06-01");
    ck_assert_int_eq(dr->points[0]->units, 40);
    dashboard__daily_series_result__free_unpacked(dr, NULL);
    ck_assert_msg(steps < 5000, "DailySeries over 3 of 365 days: %ld steps", steps);
    q.sku = "k07";
    steps = steps_of(&q.base, &r);
    dr = dashboard__daily_series_result__unpack(NULL, r.result.len, r.result.data);
    ck_assert_ptr_nonnull(dr);
    ck_assert_uint_eq(dr->n_points, 3); /* what it read: its three days, one unit of k07 each */
    for (size_t i = 0; i < dr->n_points; i++) {
        ck_assert_int_eq(dr->points[i]->units, 1);
        ck_assert_int_eq(dr->points[i]->revenue_cents, 107);
    }
    ck_assert_str_eq(dr->points[2]->day, "2025-06-03");
    dashboard__daily_series_result__free_unpacked(dr, NULL);
    ck_assert_msg(steps < 1000, "DailySeries of one sku over 3 days: %ld steps", steps);
    q.from_day = "2025-12-31"; /* to the end: the last day only */
    q.to_day = "";
    steps_of(&q.base, &r);
    dr = dashboard__daily_series_result__unpack(NULL, r.result.len, r.result.data);
    ck_assert_ptr_nonnull(dr);
    ck_assert_uint_eq(dr->n_points, 1);
    ck_assert_str_eq(dr->points[0]->day, "2025-12-31");
    dashboard__daily_series_result__free_unpacked(dr, NULL);
    jl_reply_cleanup(&r);
}
END_TEST

/* OrderCounts of the read model: open, placed, confirmed, cancelled. */
static void expect_counts(int64_t open, int64_t placed, int64_t confirmed, int64_t cancelled)
{
    Dashboard__OrderCounts q = DASHBOARD__ORDER_COUNTS__INIT;
    jl_reply r;
    jl_reply_init(&r);
    ck_assert_int_eq(ask(&q.base, &r), JL_OK);
    Dashboard__OrderCountsResult *res =
        dashboard__order_counts_result__unpack(NULL, r.result.len, r.result.data);
    ck_assert_ptr_nonnull(res);
    ck_assert_msg(res->open == open && res->placed == placed && res->confirmed == confirmed &&
                      res->cancelled == cancelled,
                  "open %" PRId64 ", placed %" PRId64 ", confirmed %" PRId64 ", cancelled %" PRId64,
                  res->open, res->placed, res->confirmed, res->cancelled);
    dashboard__order_counts_result__free_unpacked(res, NULL);
    jl_reply_cleanup(&r);
}

/* The count of @p status kept in order_counts (what OrderCounts reads), -1 when it has no row. */
static int64_t kept_count(const char *status)
{
    sqlite3_stmt *st = jl_db_stmt(db, "SELECT n FROM order_counts WHERE status = ?");
    ck_assert_ptr_nonnull(st);
    sqlite3_bind_text(st, 1, status, -1, SQLITE_STATIC);
    int64_t n = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int64(st, 0) : -1;
    sqlite3_reset(st);
    return n;
}

START_TEST(order_counts_follow_every_status_change)
{
    /* Kept as the statuses change (not counted over every order at each query): created,
     * placed, confirmed, cancelled; a refused event changes none. */
    static tev t;
    char a[JL_UUID_LEN + 1];
    jl_uuid_new(a);
    expect_counts(0, 0, 0, 0);
    create_order(&t, a, "bob", DAY_NS);
    expect_counts(1, 0, 0, 0);
    ck_assert_int_eq(max_order(1, DAY_NS), JL_OK);
    ck_assert_int_eq(max_order(2, DAY_NS), JL_OK);
    expect_counts(1, 0, 2, 0);
    base(&t, "orders.OrderConfirmed", a, DAY_NS); /* an open order: refused */
    orders__order_confirmed__init(&t.m.confirmed);
    t.m.confirmed.order_id = t.order;
    t.ev.payload = &t.m.confirmed.base;
    ck_assert_int_ne(apply(&t), JL_OK);
    expect_counts(1, 0, 2, 0);
    base(&t, "orders.OrderCancelled", a, DAY_NS);
    orders__order_cancelled__init(&t.m.cancelled);
    t.m.cancelled.order_id = t.order;
    t.ev.payload = &t.m.cancelled.base;
    apply_ok(&t);
    expect_counts(0, 0, 2, 1);
    /* What answered is the table the triggers keep, not a count over the orders. */
    ck_assert_int_eq(kept_count("open"), 0);
    ck_assert_int_eq(kept_count("confirmed"), 2);
    ck_assert_int_eq(kept_count("cancelled"), 1);
    ck_assert_int_eq(jl_db_exec(db, "UPDATE order_counts SET n = 7 WHERE status = 'cancelled'"),
                     JL_OK);
    expect_counts(0, 0, 2, 7);
    ck_assert_int_eq(jl_db_exec(db, "UPDATE order_counts SET n = 1 WHERE status = 'cancelled'"),
                     JL_OK);
    /* A file of version 2 (answering during its version rebuild) has no order_counts: the same
     * answer, counted over the orders. */
    ck_assert_int_eq(jl_db_exec(db, "DROP TABLE order_counts"), JL_OK);
    jl_db *v3 = db; /* a connection of its own, as a version 2 file is opened with */
    char path[512], err[256];
    snprintf(path, sizeof(path), "%s/d.db", dir);
    ck_assert_int_eq(jl_db_open(&db, path, true, err, sizeof(err)), JL_OK);
    expect_counts(0, 0, 2, 1);
    jl_db_close(db);
    db = v3;
}
END_TEST

START_TEST(bad_ranges_and_limits_are_answered_invalid)
{
    static const struct {
        const char *from, *to, *why;
    } bad[] = {
        {"2026-13-01", "", "from_day '2026-13-01' is not a day YYYY-MM-DD"},
        {"2026-02-29", "", "is not a day"}, /* 2026 is no leap year */
        {"2100-02-29", "", "is not a day"},
        {"2026-04-31", "", "is not a day"},
        {"2026-1-01", "", "is not a day"},
        {"26-01-01", "", "is not a day"},
        {"2026-01-01T00:00:00Z", "", "is not a day"},
        {"", "2026/01/02", "to_day '2026/01/02' is not a day YYYY-MM-DD"},
        {"", "2026-00-10", "to_day"},
        {"2026-03-02", "2026-03-01", "from_day 2026-03-02 is after to_day 2026-03-01"},
    };
    jl_reply r;
    jl_reply_init(&r);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        Dashboard__TopProducts top = DASHBOARD__TOP_PRODUCTS__INIT;
        top.from_day = (char *)bad[i].from;
        top.to_day = (char *)bad[i].to;
        Dashboard__DailySeries series = DASHBOARD__DAILY_SERIES__INIT;
        series.from_day = (char *)bad[i].from;
        series.to_day = (char *)bad[i].to;
        const ProtobufCMessage *qs[] = {&top.base, &series.base};
        for (int k = 0; k < 2; k++) {
            ck_assert_int_eq(ask(qs[k], &r), JL_OK);
            ck_assert_msg(r.code == JL_CODE_INVALID && strstr(r.message, bad[i].why) != NULL,
                          "%s %s..%s: %s '%s'", qs[k]->descriptor->name, bad[i].from, bad[i].to,
                          jl_code_str(r.code), r.message);
        }
    }
    /* A leap day, and a one-day range, are days. */
    Dashboard__DailySeries ok = DASHBOARD__DAILY_SERIES__INIT;
    ok.from_day = "2024-02-29";
    ok.to_day = "2024-02-29";
    ck_assert_int_eq(ask(&ok.base, &r), JL_OK);
    ck_assert_msg(r.code == JL_CODE_OK, "%s", r.message);
    Dashboard__TopProducts top = DASHBOARD__TOP_PRODUCTS__INIT;
    top.limit = 501;
    ck_assert_int_eq(ask(&top.base, &r), JL_OK);
    ck_assert_msg(r.code == JL_CODE_INVALID && strstr(r.message, "limit 501 is above the maximum"),
                  "%s", r.message);
    jl_reply_cleanup(&r);
}
END_TEST

static Suite *dashboard_suite(void)
{
    Suite *s = suite_create("sales_dashboard");
    TCase *tc = tcase_create("overflow");
    tcase_add_checked_fixture(tc, db_setup, db_teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, a_daily_sum_past_int64_is_answered_invalid);
    tcase_add_test(tc, a_sale_that_would_overflow_the_day_is_refused_not_counted_wrong);
    tcase_add_test(tc, bad_ranges_and_limits_are_answered_invalid);
    tcase_add_test(tc, a_short_range_reads_only_its_days);
    tcase_add_test(tc, order_counts_follow_every_status_change);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return jl_ck_run(dashboard_suite());
}
