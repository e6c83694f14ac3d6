/*
 * The sales_dashboard read model, built from two streams: ORDERS and INVENTORY.
 *
 * Tables:
 *   orders (order_id, status): one row per order, its latest status (open, placed, confirmed,
 *     cancelled);
 *   order_counts (status, n): how many orders are at each status, kept by triggers on orders,
 *     so that OrderCounts reads four rows rather than every order there ever was;
 *   order_lines (order_id, sku, quantity, unit_price_cents): the lines of each placed order that
 *     is not confirmed or cancelled yet, as its OrderPlaced listed them;
 *   daily_sales (day, sku, units, revenue_cents): sales of confirmed orders; when an order is
 *     confirmed its lines are added on the UTC day of the OrderConfirmed event (its occurred_at)
 *     and then dropped from order_lines;
 *   products (sku, name): from ProductRegistered.
 *
 * Why it stays correct when the two streams are consumed at different speeds. The runtime
 * applies each stream with its own consumer, checkpoint and transactions, so an order may be
 * confirmed here long before (or after) the registration of its products is applied. Events of
 * one stream therefore only ever write tables of that stream: orders, order_counts,
 * order_lines and daily_sales from ORDERS, products from INVENTORY; apply never reads what the
 * other stream wrote. The two meet only at query time, where TopProducts joins daily_sales to
 * products with a LEFT JOIN: a product whose registration has not been applied yet shows an empty
 * name, and its units and revenue are right all the same; once the registration is applied, the
 * name appears with no other change. Within ORDERS the events of one order come in the order they
 * were decided (one subject, one stream), which is all that OrderPlaced -> OrderConfirmed needs.
 *
 * Events the dashboard has no use for (ItemAdded, ItemRemoved, Restocked and the reservation
 * events) are accepted and ignored, so they do not land in the dead letters. An OrderPlaced
 * recorded before OrderPlaced carried its lines has none, and that order adds no sales when it
 * is confirmed. An OrderConfirmed for an order that is not placed (unknown, or confirmed
 * already) is refused and dead-lettered rather than counted twice.
 */
#include "projection.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dashboard/dashboard.pb-c.h"
#include "inventory/inventory.pb-c.h"
#include "orders/orders.pb-c.h"

/* The orders service's caps on a line: one line's revenue (at most 1e17 cents) fits an int64.
 * Sums of many lines may not: daily_sales refuses a sum SQLite could only hold as a REAL (the
 * event is dead-lettered, not counted wrong), and a query whose sum over several days or skus
 * overflows is answered "invalid", asking for a narrower range. */
#define MAX_QUANTITY 1000000
#define MAX_PRICE_CENTS 100000000000LL

#define DAY_LEN 10 /* "YYYY-MM-DD" */

static const char schema[] =
    "CREATE TABLE IF NOT EXISTS orders ("
    "  order_id TEXT PRIMARY KEY,"
    "  status TEXT NOT NULL);"
    "CREATE INDEX IF NOT EXISTS orders_by_status ON orders (status);"
    "CREATE TABLE IF NOT EXISTS order_counts ("
    "  status TEXT PRIMARY KEY,"
    "  n INTEGER NOT NULL CHECK (n >= 0));"
    "CREATE TRIGGER IF NOT EXISTS order_counted AFTER INSERT ON orders BEGIN"
    "  INSERT INTO order_counts (status, n) VALUES (new.status, 1)"
    "    ON CONFLICT (status) DO UPDATE SET n = n + 1;"
    "END;"
    "CREATE TRIGGER IF NOT EXISTS order_recounted AFTER UPDATE OF status ON orders"
    "  WHEN old.status IS NOT new.status BEGIN"
    "  UPDATE order_counts SET n = n - 1 WHERE status = old.status;"
    "  INSERT INTO order_counts (status, n) VALUES (new.status, 1)"
    "    ON CONFLICT (status) DO UPDATE SET n = n + 1;"
    "END;"
    "CREATE TRIGGER IF NOT EXISTS order_uncounted AFTER DELETE ON orders BEGIN"
    "  UPDATE order_counts SET n = n - 1 WHERE status = old.status;"
    "END;"
    "CREATE TABLE IF NOT EXISTS order_lines ("
    "  order_id TEXT NOT NULL,"
    "  sku TEXT NOT NULL,"
    "  quantity INTEGER NOT NULL,"
    "  unit_price_cents INTEGER NOT NULL,"
    "  PRIMARY KEY (order_id, sku));"
    "CREATE TABLE IF NOT EXISTS daily_sales ("
    "  day TEXT NOT NULL,"
    "  sku TEXT NOT NULL,"
    "  units INTEGER NOT NULL CONSTRAINT units_fit_int64 CHECK (typeof(units) = 'integer'),"
    "  revenue_cents INTEGER NOT NULL"
    "    CONSTRAINT revenue_fits_int64 CHECK (typeof(revenue_cents) = 'integer'),"
    "  PRIMARY KEY (day, sku));"
    "CREATE INDEX IF NOT EXISTS daily_sales_by_sku ON daily_sales (sku, day);"
    "CREATE TABLE IF NOT EXISTS products ("
    "  sku TEXT PRIMARY KEY,"
    "  name TEXT NOT NULL);";

/* The UTC calendar day of @p unix_ns as "YYYY-MM-DD". */
static void utc_day(char out[DAY_LEN + 1], int64_t unix_ns)
{
    /* Floor, not truncation: an instant before 1970 belongs to the day that started before it. */
    int64_t secs = unix_ns / 1000000000 - (unix_ns % 1000000000 < 0);
    time_t t = (time_t)secs;
    struct tm tm;
    if (gmtime_r(&t, &tm) == NULL || strftime(out, DAY_LEN + 1, "%Y-%m-%d", &tm) != DAY_LEN)
        snprintf(out, DAY_LEN + 1, "0000-00-00");
}

/* Set the status of the order of @p ev, which must exist (and with @p from, be in it). */
static jl_status set_status(jl_db *db, const jl_event *ev, const char *to, const char *from,
                            char *err, size_t n)
{
    sqlite3_stmt *st = jl_db_stmt(db, "UPDATE orders SET status = ?1 WHERE order_id = ?2 AND "
                                      "(?3 IS NULL OR status = ?3)");
    if (st == NULL)
        return JL_ERR_SQLITE;
    sqlite3_bind_text(st, 1, to, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, ev->aggregate_id, -1, SQLITE_STATIC);
    if (from != NULL)
        sqlite3_bind_text(st, 3, from, -1, SQLITE_STATIC);
    return jl_apply_step(db, st, ev, from ? "an order that is not placed:" : "unknown order", NULL,
                         err, n);
}

static jl_status drop_lines(jl_db *db, const jl_event *ev, char *err, size_t n)
{
    sqlite3_stmt *st = jl_db_stmt(db, "DELETE FROM order_lines WHERE order_id = ?");
    if (st == NULL)
        return JL_ERR_SQLITE;
    sqlite3_bind_text(st, 1, ev->aggregate_id, -1, SQLITE_STATIC);
    return jl_apply_step(db, st, ev, NULL, NULL, err, n);
}

static jl_status apply_created(jl_db *db, const jl_event *ev, char *err, size_t n)
{
    sqlite3_stmt *st = jl_db_stmt(db, "INSERT INTO orders (order_id, status) VALUES (?, 'open')");
    if (st == NULL)
        return JL_ERR_SQLITE;
    sqlite3_bind_text(st, 1, ev->aggregate_id, -1, SQLITE_STATIC);
    return jl_apply_step(db, st, ev, NULL, NULL, err, n);
}

static jl_status apply_placed(jl_db *db, const jl_event *ev, char *err, size_t n)
{
    const Orders__OrderPlaced *e = (const Orders__OrderPlaced *)ev->payload;
    jl_status s = set_status(db, ev, "placed", NULL, err, n);
    /* A refusal after some lines were written is fine: the runtime rolls the event back. */
    for (size_t i = 0; s == JL_OK && i < e->n_lines; i++) {
        const Orders__OrderLine *l = e->lines[i];
        if (l->quantity <= 0 || l->quantity > MAX_QUANTITY || l->unit_price_cents <= 0 ||
            l->unit_price_cents > MAX_PRICE_CENTS) {
            snprintf(err, n, "%s with quantity %d and price %" PRId64 " for sku %.64s",
                     ev->event_type, l->quantity, l->unit_price_cents, l->sku);
            return JL_ERR_INVALID;
        }
        sqlite3_stmt *st = jl_db_stmt(db, "INSERT INTO order_lines (order_id, sku, quantity, "
                                          "unit_price_cents) VALUES (?, ?, ?, ?)");
        if (st == NULL)
            return JL_ERR_SQLITE;
        sqlite3_bind_text(st, 1, ev->aggregate_id, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, l->sku, -1, SQLITE_STATIC);
        sqlite3_bind_int(st, 3, l->quantity);
        sqlite3_bind_int64(st, 4, l->unit_price_cents);
        s = jl_apply_step(db, st, ev, NULL, NULL, err, n);
    }
    return s;
}

static jl_status apply_confirmed(jl_db *db, const jl_event *ev, char *err, size_t n)
{
    char day[DAY_LEN + 1];
    utc_day(day, ev->occurred_at_ns);
    /* Only a placed order: a second OrderConfirmed must not count its sales twice. */
    jl_status s = set_status(db, ev, "confirmed", "placed", err, n);
    sqlite3_stmt *st = NULL;
    if (s == JL_OK) {
        /* The WHERE is required before ON CONFLICT: without it SQLite would read the ON as a
         * join constraint. */
        st = jl_db_stmt(db, "INSERT INTO daily_sales (day, sku, units, revenue_cents) SELECT ?1, "
                            "sku, quantity, quantity * unit_price_cents FROM order_lines WHERE "
                            "order_id = ?2 ON CONFLICT (day, sku) DO UPDATE SET units = units + "
                            "excluded.units, revenue_cents = revenue_cents + "
                            "excluded.revenue_cents");
        s = st ? JL_OK : JL_ERR_SQLITE;
    }
    if (s == JL_OK) {
        sqlite3_bind_text(st, 1, day, -1, SQLITE_TRANSIENT);
        sqlite3_bind_text(st, 2, ev->aggregate_id, -1, SQLITE_STATIC);
        s = jl_apply_step(db, st, ev, NULL, NULL, err, n);
    }
    /* The lines are counted: keeping them would only grow the table. */
    return s == JL_OK ? drop_lines(db, ev, err, n) : s;
}

static jl_status apply_cancelled(jl_db *db, const jl_event *ev, char *err, size_t n)
{
    jl_status s = set_status(db, ev, "cancelled", NULL, err, n);
    return s == JL_OK ? drop_lines(db, ev, err, n) : s;
}

static jl_status apply_product(jl_db *db, const jl_event *ev, char *err, size_t n)
{
    const Inventory__ProductRegistered *e = (const Inventory__ProductRegistered *)ev->payload;
    sqlite3_stmt *st = jl_db_stmt(db, "INSERT INTO products (sku, name) VALUES (?, ?) ON CONFLICT "
                                      "(sku) DO UPDATE SET name = excluded.name");
    if (st == NULL)
        return JL_ERR_SQLITE;
    sqlite3_bind_text(st, 1, e->sku, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, e->name, -1, SQLITE_STATIC);
    return jl_apply_step(db, st, ev, NULL, NULL, err, n);
}

/* Every event type of both streams; NULL: accepted and ignored. */
static const struct {
    const ProtobufCMessageDescriptor *type;
    jl_status (*fn)(jl_db *db, const jl_event *ev, char *err, size_t n);
} handlers[] = {
    {&orders__order_created__descriptor, apply_created},
    {&orders__item_added__descriptor, NULL},
    {&orders__item_removed__descriptor, NULL},
    {&orders__order_placed__descriptor, apply_placed},
    {&orders__order_confirmed__descriptor, apply_confirmed},
    {&orders__order_cancelled__descriptor, apply_cancelled},
    {&inventory__product_registered__descriptor, apply_product},
    {&inventory__restocked__descriptor, NULL},
    {&inventory__stock_reserved__descriptor, NULL},
    {&inventory__reservation_rejected__descriptor, NULL},
    {&inventory__reservation_released__descriptor, NULL},
    {&inventory__reservation_committed__descriptor, NULL},
};

#define N_HANDLERS (sizeof(handlers) / sizeof(handlers[0]))

static jl_status apply(jl_db *db, const jl_event *ev, char *err, size_t n)
{
    for (size_t i = 0; i < N_HANDLERS; i++) {
        if (ev->payload->descriptor == handlers[i].type)
            return handlers[i].fn ? handlers[i].fn(db, ev, err, n) : JL_OK;
    }
    snprintf(err, n, "sales_dashboard does not handle %s", ev->event_type);
    return JL_ERR_UNKNOWN_TYPE;
}

/* ---- queries ---- */

static bool is_leap(int y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

/* A real calendar day written "YYYY-MM-DD", so that comparing texts compares days. */
static bool is_day(const char *s)
{
    static const int days_in[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (strnlen(s, DAY_LEN + 1) != DAY_LEN || s[4] != '-' || s[7] != '-')
        return false;
    for (int i = 0; i < DAY_LEN; i++) {
        if (i != 4 && i != 7 && (s[i] < '0' || s[i] > '9'))
            return false;
    }
    int y = atoi(s), m = atoi(s + 5), d = atoi(s + 8);
    if (m < 1 || m > 12 || d < 1)
        return false;
    return d <= days_in[m - 1] + (m == 2 && is_leap(y));
}

/* The bounds of "day BETWEEN ?1 AND ?2": an empty from_day is "" (before every day), an
 * empty to_day one after every day (stored days run from "0000-00-00" to "9999-12-31"). One
 * text for all four cases: "(?1 = '' OR day >= ?1)" keeps SQLite from using an index on day,
 * and a short range would read every row while every other query waits. */
#define DAY_AFTER_ALL "9999-99-99"

static const char *upper_day(const char *to)
{
    return to[0] != 0 ? to : DAY_AFTER_ALL;
}

/* Check a from_day/to_day pair (each empty or a day, from <= to); reply INVALID if not. */
static bool check_range(jl_reply *out, const char *from, const char *to)
{
    if (from[0] != 0 && !is_day(from)) {
        jl_reply_error(out, JL_CODE_INVALID, "from_day '%.32s' is not a day YYYY-MM-DD", from);
        return false;
    }
    if (to[0] != 0 && !is_day(to)) {
        jl_reply_error(out, JL_CODE_INVALID, "to_day '%.32s' is not a day YYYY-MM-DD", to);
        return false;
    }
    if (from[0] != 0 && to[0] != 0 && strcmp(from, to) > 0) {
        jl_reply_error(out, JL_CODE_INVALID, "from_day %s is after to_day %s", from, to);
        return false;
    }
    return true;
}

/* A sum() past int64 makes SQLite fail the query with "integer overflow": not a fault of the
 * read model, an answer too large for the reply's int64 fields. Says so in @p out. */
static bool sum_overflowed(jl_db *db, int rc, const char *what, jl_reply *out)
{
    if (rc != SQLITE_ERROR || strstr(sqlite3_errmsg(jl_db_handle(db)), "integer overflow") == NULL)
        return false;
    jl_reply_error(out, JL_CODE_INVALID,
                   "%s: the revenue over this range exceeds a 64-bit count of cents; narrow "
                   "from_day and to_day (a series over every sku: or ask for one sku)",
                   what);
    return true;
}

static jl_status top_products(jl_db *db, const ProtobufCMessage *msg, jl_reply *out)
{
    const Dashboard__TopProducts *q = (const Dashboard__TopProducts *)msg;
    if (!check_range(out, q->from_day, q->to_day))
        return JL_OK;
    uint32_t limit =
        jl_query_limit(q->limit, SALES_DASHBOARD_DEFAULT_TOP, SALES_DASHBOARD_MAX_TOP, out);
    if (limit == 0)
        return JL_OK;

    /* LEFT JOIN: sales of a product whose registration is not applied yet still count. */
    sqlite3_stmt *st = jl_db_stmt(
        db, "SELECT s.sku, coalesce(p.name, ''), sum(s.units), sum(s.revenue_cents) AS revenue "
            "FROM daily_sales AS s LEFT JOIN products AS p ON p.sku = s.sku WHERE s.day BETWEEN "
            "?1 AND ?2 GROUP BY s.sku ORDER BY revenue DESC, s.sku LIMIT ?3");
    if (st == NULL)
        return JL_ERR_SQLITE;
    sqlite3_bind_text(st, 1, q->from_day, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, upper_day(q->to_day), -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, limit);

    Dashboard__ProductSales *rows = calloc(limit, sizeof(*rows));
    Dashboard__ProductSales **ptrs = calloc(limit, sizeof(*ptrs));
    size_t n = 0;
    jl_status s = (rows && ptrs) ? JL_OK : JL_ERR_NOMEM;
    int rc = SQLITE_DONE;
    while (s == JL_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        Dashboard__ProductSales *r = &rows[n];
        dashboard__product_sales__init(r);
        r->sku = jl_db_text_dup(st, 0);
        r->name = jl_db_text_dup(st, 1);
        r->units = sqlite3_column_int64(st, 2);
        r->revenue_cents = sqlite3_column_int64(st, 3);
        ptrs[n++] = r;
        if (r->sku == NULL || r->name == NULL)
            s = JL_ERR_NOMEM;
    }
    bool overflowed = s == JL_OK && sum_overflowed(db, rc, "TopProducts", out);
    if (s == JL_OK && rc != SQLITE_DONE && !overflowed)
        s = jl_db_fail(db, rc, "TopProducts");
    sqlite3_reset(st);
    if (s == JL_OK && !overflowed) {
        Dashboard__TopProductsResult res = DASHBOARD__TOP_PRODUCTS_RESULT__INIT;
        res.n_products = n;
        res.products = ptrs;
        jl_reply_set_result(out, &res.base);
    }
    for (size_t i = 0; i < n; i++) {
        free(rows[i].sku);
        free(rows[i].name);
    }
    free(rows);
    free(ptrs);
    return s;
}

static jl_status daily_series(jl_db *db, const ProtobufCMessage *msg, jl_reply *out)
{
    const Dashboard__DailySeries *q = (const Dashboard__DailySeries *)msg;
    if (strnlen(q->sku, SALES_DASHBOARD_MAX_SKU + 1) > SALES_DASHBOARD_MAX_SKU) {
        jl_reply_error(out, JL_CODE_INVALID, "sku is longer than %d bytes",
                       SALES_DASHBOARD_MAX_SKU);
        return JL_OK;
    }
    if (!check_range(out, q->from_day, q->to_day))
        return JL_OK;

    /* Two texts rather than "(?3 = '' OR sku = ?3)", so that one sku's series uses the
     * (sku, day) index instead of scanning every sku's days. */
    bool one = q->sku[0] != 0;
    sqlite3_stmt *st =
        one ? jl_db_stmt(db, "SELECT day, units, revenue_cents FROM daily_sales WHERE sku = ?3 "
                             "AND day BETWEEN ?1 AND ?2 ORDER BY day LIMIT ?4")
            : jl_db_stmt(db, "SELECT day, sum(units), sum(revenue_cents) FROM daily_sales WHERE "
                             "day BETWEEN ?1 AND ?2 GROUP BY day ORDER BY day LIMIT ?4");
    if (st == NULL)
        return JL_ERR_SQLITE;
    sqlite3_bind_text(st, 1, q->from_day, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, upper_day(q->to_day), -1, SQLITE_STATIC);
    if (one)
        sqlite3_bind_text(st, 3, q->sku, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, SALES_DASHBOARD_MAX_DAYS + 1); /* one more says "too many" */

    Dashboard__DayPoint *rows = calloc(SALES_DASHBOARD_MAX_DAYS + 1, sizeof(*rows));
    Dashboard__DayPoint **ptrs = calloc(SALES_DASHBOARD_MAX_DAYS + 1, sizeof(*ptrs));
    /* A day text is 10 bytes: kept in one array rather than a strdup per point. */
    char(*days)[DAY_LEN + 1] = calloc(SALES_DASHBOARD_MAX_DAYS + 1, sizeof(*days));
    size_t n = 0;
    jl_status s = (rows && ptrs && days) ? JL_OK : JL_ERR_NOMEM;
    int rc = SQLITE_DONE;
    while (s == JL_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        Dashboard__DayPoint *p = &rows[n];
        dashboard__day_point__init(p);
        const char *day = (const char *)sqlite3_column_text(st, 0); /* NULL: out of memory */
        snprintf(days[n], sizeof(days[n]), "%s", day ? day : "");
        p->day = days[n];
        p->units = sqlite3_column_int64(st, 1);
        p->revenue_cents = sqlite3_column_int64(st, 2);
        ptrs[n++] = p;
    }
    bool overflowed = s == JL_OK && sum_overflowed(db, rc, "DailySeries", out);
    if (s == JL_OK && rc != SQLITE_DONE && !overflowed)
        s = jl_db_fail(db, rc, "DailySeries");
    sqlite3_reset(st);
    if (overflowed) {
        /* answered above */
    } else if (s == JL_OK && n > SALES_DASHBOARD_MAX_DAYS) {
        jl_reply_error(out, JL_CODE_INVALID,
                       "the series holds more than %d days: narrow from_day and to_day",
                       SALES_DASHBOARD_MAX_DAYS);
    } else if (s == JL_OK) {
        Dashboard__DailySeriesResult res = DASHBOARD__DAILY_SERIES_RESULT__INIT;
        res.n_points = n;
        res.points = ptrs;
        jl_reply_set_result(out, &res.base);
    }
    free(rows);
    free(ptrs);
    free(days);
    return s;
}

static jl_status order_counts(jl_db *db, const ProtobufCMessage *msg, jl_reply *out)
{
    (void)msg;
    /* A file of version 2, which answers while its version rebuild runs, has no order_counts:
     * counted over its orders then, as version 2 did. Only then: another failure (out of
     * memory) is an error, not a count over every order ever placed. */
    sqlite3_stmt *st = jl_db_stmt(db, "SELECT status, n FROM order_counts");
    if (st == NULL && strstr(jl_db_errmsg(db), ": no such table: order_counts") != NULL)
        st = jl_db_stmt(db, "SELECT status, count(*) FROM orders GROUP BY status");
    if (st == NULL)
        return JL_ERR_SQLITE;
    int rc;
    Dashboard__OrderCountsResult res = DASHBOARD__ORDER_COUNTS_RESULT__INIT;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *status = (const char *)sqlite3_column_text(st, 0);
        int64_t count = sqlite3_column_int64(st, 1);
        if (status == NULL) { /* NOT NULL in the schema: out of memory */
            rc = SQLITE_NOMEM;
            break;
        }
        if (strcmp(status, "open") == 0)
            res.open = count;
        else if (strcmp(status, "placed") == 0)
            res.placed = count;
        else if (strcmp(status, "confirmed") == 0)
            res.confirmed = count;
        else if (strcmp(status, "cancelled") == 0)
            res.cancelled = count;
    }
    jl_status s = rc == SQLITE_DONE ? JL_OK : jl_db_fail(db, rc, "OrderCounts");
    sqlite3_reset(st);
    if (s == JL_OK)
        jl_reply_set_result(out, &res.base);
    return s;
}

/* The same types as handlers[]: the runtime decodes these and dead-letters any other. */
static const ProtobufCMessageDescriptor *const events[] = {
    &orders__order_created__descriptor,
    &orders__item_added__descriptor,
    &orders__item_removed__descriptor,
    &orders__order_placed__descriptor,
    &orders__order_confirmed__descriptor,
    &orders__order_cancelled__descriptor,
    &inventory__product_registered__descriptor,
    &inventory__restocked__descriptor,
    &inventory__stock_reserved__descriptor,
    &inventory__reservation_rejected__descriptor,
    &inventory__reservation_released__descriptor,
    &inventory__reservation_committed__descriptor,
};

_Static_assert(JL_COUNT(events) == N_HANDLERS, "events[] and handlers[] agree");

static const jl_source sources[] = {
    {"ORDERS", "orders.events.>"},
    {"INVENTORY", "inventory.events.>"},
};

static const jl_query_def queries[] = {
    {&dashboard__top_products__descriptor, top_products},
    {&dashboard__daily_series__descriptor, daily_series},
    {&dashboard__order_counts__descriptor, order_counts},
};

const jl_projector_def sales_dashboard_projector = {
    .name = "sales_dashboard",
    .sources = sources,
    .n_sources = JL_COUNT(sources),
    .version = 3, /* 2: daily_sales refuses sums past int64; 3: order_counts */
    .schema_sql = schema,
    .events = JL_TYPES(events),
    .apply = apply,
    .queries = queries,
    .n_queries = JL_COUNT(queries),
};
