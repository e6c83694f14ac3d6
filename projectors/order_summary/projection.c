/*
 * The order_summary read model. apply() turns each orders event into SQL; the two queries
 * read it. Item lines are kept so that totals are recomputed, never accumulated: a replay
 * of the same events always yields the same rows.
 */
#include "projection.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "orders/orders.pb-c.h"

/* The orders service's caps on one ItemAdded (producers/orders/domain.h). An event past them
 * was not written by the service and is refused (checked here, at no cost). Lines within them
 * but past its other caps (50 lines, 1e6 units a line after merging) can take a total past
 * int64: SQLite's sum() then fails with "integer overflow", which refuses the event too; a
 * single line whose product alone overflows is summed as a real number by SQLite. */
#define MAX_QUANTITY 1000000
#define MAX_PRICE_CENTS 100000000000LL

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
    "  PRIMARY KEY (order_id, sku));";

static jl_status touch(jl_db *db, const jl_event *ev, const char *status, char *err, size_t n)
{
    sqlite3_stmt *st = jl_db_stmt(db, "UPDATE orders SET status = coalesce(?1, status), "
                                      "item_count = (SELECT coalesce(sum(quantity), 0) FROM "
                                      "order_items WHERE order_id = ?2), "
                                      "total_cents = (SELECT coalesce(sum(quantity * "
                                      "unit_price_cents), 0) FROM order_items WHERE order_id = "
                                      "?2), version = ?3, updated_at_ns = ?4 WHERE order_id = ?2");
    if (st == NULL)
        return JL_ERR_SQLITE;
    if (status != NULL)
        sqlite3_bind_text(st, 1, status, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, ev->aggregate_id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, (sqlite3_int64)ev->aggregate_version);
    sqlite3_bind_int64(st, 4, ev->occurred_at_ns);
    jl_status s = jl_apply_step(db, st, ev, "unknown order", NULL, err, n);
    if (s == JL_ERR_SQLITE && strstr(jl_db_errmsg(db), "integer overflow") != NULL) {
        /* Lines past the orders service's caps (it allows 50 of at most 1e6 units at 1e11
         * cents): an error of this event, not of the database, to park rather than retry. */
        snprintf(err, n, "%s takes order %s's total past 64-bit integers", ev->event_type,
                 ev->aggregate_id);
        return JL_ERR_INVALID;
    }
    return s;
}

static jl_status apply(jl_db *db, const jl_event *ev, char *err, size_t n)
{
    const ProtobufCMessageDescriptor *d = ev->payload->descriptor;
    sqlite3_stmt *st = NULL;
    jl_status s = JL_OK;

    if (d == &orders__order_created__descriptor) {
        const Orders__OrderCreated *e = (const Orders__OrderCreated *)ev->payload;
        st = jl_db_stmt(db, "INSERT INTO orders (order_id, customer_id, status, version, "
                            "updated_at_ns) VALUES (?, ?, 'open', ?, ?)");
        if (st == NULL)
            return JL_ERR_SQLITE;
        sqlite3_bind_text(st, 1, ev->aggregate_id, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, e->customer_id, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 3, (sqlite3_int64)ev->aggregate_version);
        sqlite3_bind_int64(st, 4, ev->occurred_at_ns);
        return jl_apply_step(db, st, ev, NULL, NULL, err, n);
    }
    if (d == &orders__item_added__descriptor) {
        const Orders__ItemAdded *e = (const Orders__ItemAdded *)ev->payload;
        if (e->quantity <= 0 || e->quantity > MAX_QUANTITY || e->unit_price_cents <= 0 ||
            e->unit_price_cents > MAX_PRICE_CENTS) {
            snprintf(err, n, "ItemAdded with quantity %d and price %" PRId64, e->quantity,
                     e->unit_price_cents);
            return JL_ERR_INVALID;
        }
        /* A line of the sku already there merges as the orders service's evolve merges it:
         * at the same price, up to MAX_QUANTITY units. Another event (not the service's) is
         * parked, not applied re-pricing the line. */
        st = jl_db_stmt(db, "INSERT INTO order_items (order_id, sku, quantity, unit_price_cents) "
                            "SELECT ?1, ?2, ?3, ?4 WHERE EXISTS (SELECT 1 FROM orders WHERE "
                            "order_id = ?1) ON CONFLICT (order_id, sku) DO UPDATE SET quantity "
                            "= quantity + excluded.quantity WHERE unit_price_cents = "
                            "excluded.unit_price_cents AND quantity + excluded.quantity <= "
                            "?5");
        if (st == NULL)
            return JL_ERR_SQLITE;
        sqlite3_bind_text(st, 1, ev->aggregate_id, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, e->sku, -1, SQLITE_STATIC);
        sqlite3_bind_int(st, 3, e->quantity);
        sqlite3_bind_int64(st, 4, e->unit_price_cents);
        sqlite3_bind_int(st, 5, MAX_QUANTITY);
        s = jl_apply_step(db, st, ev,
                          "unknown order, or for a line of another price or past 1000000 units "
                          "on order",
                          NULL, err, n);
        return s == JL_OK ? touch(db, ev, NULL, err, n) : s;
    }
    if (d == &orders__item_removed__descriptor) {
        const Orders__ItemRemoved *e = (const Orders__ItemRemoved *)ev->payload;
        st = jl_db_stmt(db, "DELETE FROM order_items WHERE order_id = ? AND sku = ?");
        if (st == NULL)
            return JL_ERR_SQLITE;
        sqlite3_bind_text(st, 1, ev->aggregate_id, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, e->sku, -1, SQLITE_STATIC);
        s = jl_apply_step(db, st, ev, NULL, NULL, err, n);
        return s == JL_OK ? touch(db, ev, NULL, err, n) : s;
    }
    if (d == &orders__order_placed__descriptor)
        return touch(db, ev, "placed", err, n);
    if (d == &orders__order_confirmed__descriptor)
        return touch(db, ev, "confirmed", err, n);
    if (d == &orders__order_cancelled__descriptor)
        return touch(db, ev, "cancelled", err, n);
    snprintf(err, n, "order_summary does not handle %s", ev->event_type);
    return JL_ERR_UNKNOWN_TYPE;
}

/* ---- queries ---- */

#define ROW_COLUMNS "order_id, customer_id, status, item_count, total_cents, version, updated_at_ns"

/* Copy the current row into @p o; strings are strdup'ed (freed by free_summary). */
static jl_status read_row(sqlite3_stmt *st, Orders__OrderSummary *o)
{
    orders__order_summary__init(o);
    o->order_id = jl_db_text_dup(st, 0);
    o->customer_id = jl_db_text_dup(st, 1);
    o->status = jl_db_text_dup(st, 2);
    o->item_count = sqlite3_column_int(st, 3);
    o->total_cents = sqlite3_column_int64(st, 4);
    o->version = (uint64_t)sqlite3_column_int64(st, 5);
    o->updated_at_ns = sqlite3_column_int64(st, 6);
    return (o->order_id && o->customer_id && o->status) ? JL_OK : JL_ERR_NOMEM;
}

static void free_summary(Orders__OrderSummary *o)
{
    free(o->order_id);
    free(o->customer_id);
    free(o->status);
}

static jl_status get_order(jl_db *db, const ProtobufCMessage *msg, jl_reply *out)
{
    const Orders__GetOrder *q = (const Orders__GetOrder *)msg;
    char id[JL_UUID_LEN + 1];
    if (jl_uuid_canonical(id, q->order_id) != JL_OK) {
        jl_reply_error(out, JL_CODE_INVALID, "order_id '%.64s' is not a UUID", q->order_id);
        return JL_OK;
    }
    sqlite3_stmt *st = jl_db_stmt(db, "SELECT " ROW_COLUMNS " FROM orders WHERE order_id = ?");
    if (st == NULL)
        return JL_ERR_SQLITE;
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    jl_status s = JL_OK;
    if (rc == SQLITE_ROW) {
        Orders__OrderSummary row;
        Orders__GetOrderResult res = ORDERS__GET_ORDER_RESULT__INIT;
        s = read_row(st, &row);
        res.order = &row;
        if (s == JL_OK)
            jl_reply_set_result(out, &res.base);
        free_summary(&row);
    } else if (rc == SQLITE_DONE) {
        jl_reply_error(out, JL_CODE_NOT_FOUND, "order %s not found", id);
    } else {
        s = jl_db_fail(db, rc, "GetOrder");
    }
    sqlite3_reset(st);
    return s;
}

/* jl_db_page() reads and frees rows through untyped pointers. */
static jl_status read_row_any(sqlite3_stmt *st, void *row)
{
    return read_row(st, row);
}

static void free_summary_any(void *row)
{
    free_summary(row);
}

static jl_status list_orders(jl_db *db, const ProtobufCMessage *msg, jl_reply *out)
{
    const Orders__ListOrders *q = (const Orders__ListOrders *)msg;
    static const char *const statuses[] = {"", "open", "placed", "confirmed", "cancelled"};
    bool known = false;
    for (size_t i = 0; i < sizeof(statuses) / sizeof(statuses[0]); i++)
        known = known || strcmp(q->status, statuses[i]) == 0;
    if (!known) {
        jl_reply_error(out, JL_CODE_INVALID,
                       "status '%.32s' is not one of open, placed, confirmed, cancelled (or empty)",
                       q->status);
        return JL_OK;
    }
    uint32_t limit =
        jl_query_limit(q->limit, ORDER_SUMMARY_DEFAULT_LIMIT, ORDER_SUMMARY_MAX_LIMIT, out);
    if (limit == 0)
        return JL_OK;
    if (q->cursor[0] != 0 && !jl_uuid_is_canonical(q->cursor)) {
        jl_reply_error(out, JL_CODE_INVALID, "cursor '%.64s' is not one this service issued",
                       q->cursor);
        return JL_OK;
    }

    /* Two texts, not "(?1 = '' OR status = ?1)": SQLite cannot use orders_by_status for that
     * one, and a page of a rare status would scan the whole table (1.35 s for 1M orders) while
     * every other query waits. */
    sqlite3_stmt *st =
        q->status[0] != 0
            ? jl_db_stmt(db, "SELECT " ROW_COLUMNS " FROM orders WHERE status = ?1 AND "
                             "order_id > ?2 ORDER BY order_id LIMIT ?3")
            : jl_db_stmt(db, "SELECT " ROW_COLUMNS " FROM orders WHERE order_id > ?2 "
                             "ORDER BY order_id LIMIT ?3");
    if (st == NULL)
        return JL_ERR_SQLITE;
    if (q->status[0] != 0)
        sqlite3_bind_text(st, 1, q->status, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, q->cursor, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, (sqlite3_int64)limit + 1); /* one more says there is a next page */

    void *rows = NULL, **ptrs = NULL;
    size_t n = 0;
    bool more = false;
    jl_status s = jl_db_page(db, st, limit, sizeof(Orders__OrderSummary), read_row_any,
                             free_summary_any, &rows, &ptrs, &n, &more);
    if (s == JL_OK) {
        Orders__OrderSummary *last = n > 0 ? ptrs[n - 1] : NULL;
        Orders__ListOrdersResult res = ORDERS__LIST_ORDERS_RESULT__INIT;
        res.n_orders = n;
        res.orders = (Orders__OrderSummary **)ptrs;
        res.next_cursor = more ? last->order_id : "";
        jl_reply_set_result(out, &res.base);
    }
    jl_db_page_free(rows, ptrs, n, free_summary_any);
    return s;
}

static const ProtobufCMessageDescriptor *const events[] = {
    &orders__order_created__descriptor,   &orders__item_added__descriptor,
    &orders__item_removed__descriptor,    &orders__order_placed__descriptor,
    &orders__order_cancelled__descriptor, &orders__order_confirmed__descriptor,
};

static const jl_query_def queries[] = {
    {&orders__get_order__descriptor, get_order},
    {&orders__list_orders__descriptor, list_orders},
};

const jl_projector_def order_summary_projector = {
    .name = "order_summary",
    .stream = "ORDERS",
    .filter_subject = "orders.events.>",
    .version = 1,
    .schema_sql = schema,
    .events = JL_TYPES(events),
    .apply = apply,
    .queries = queries,
    .n_queries = JL_COUNT(queries),
};
