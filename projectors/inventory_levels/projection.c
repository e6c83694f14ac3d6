/*
 * The inventory_levels read model. apply() turns each inventory event into SQL; GetStock and
 * ListLowStock read it.
 *
 * Tables:
 *   stock (sku, name, on_hand, reserved, available): one row per registered sku; available is
 *     on_hand - reserved, kept in the row (and checked by a CHECK constraint) so that
 *     ListLowStock walks an index on (available, sku) instead of computing it for every row;
 *   reservation_lines (reservation_id, sku, quantity): the lines of the open reservations.
 *
 * A release or commit takes off the units the reservation holds here, not the lines its event
 * lists, exactly as the warehouse aggregate's evolve does: so a release or commit of a
 * reservation that is not open (or a second one) is refused and dead-lettered rather than
 * counted twice, and the CHECK constraints (0 <= reserved <= on_hand) turn any event that would
 * break the stock's invariants into a dead letter too. The whole model lives in one stream, so
 * its events arrive in the order the warehouse decided them.
 */
#include "projection.h"

#include <ctype.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "inventory/inventory.pb-c.h"

/* Units in one restock or reservation line (the inventory service's cap): keeps sums exact. */
#define MAX_QUANTITY 1000000000LL

static const char schema[] =
    "CREATE TABLE IF NOT EXISTS stock ("
    "  sku TEXT PRIMARY KEY,"
    "  name TEXT NOT NULL,"
    "  on_hand INTEGER NOT NULL DEFAULT 0,"
    "  reserved INTEGER NOT NULL DEFAULT 0,"
    "  available INTEGER NOT NULL DEFAULT 0,"
    "  CHECK (reserved >= 0 AND reserved <= on_hand AND available = on_hand - reserved));"
    "CREATE INDEX IF NOT EXISTS stock_by_available ON stock (available, sku);"
    "CREATE TABLE IF NOT EXISTS reservation_lines ("
    "  reservation_id TEXT NOT NULL,"
    "  sku TEXT NOT NULL,"
    "  quantity INTEGER NOT NULL CHECK (quantity > 0),"
    "  PRIMARY KEY (reservation_id, sku));";

static jl_status check_quantity(const jl_event *ev, const char *sku, int64_t q, char *err, size_t n)
{
    if (q > 0 && q <= MAX_QUANTITY)
        return JL_OK;
    snprintf(err, n, "%s with quantity %" PRId64 " for sku %.64s", ev->event_type, q, sku);
    return JL_ERR_INVALID;
}

static jl_status apply_registered(jl_db *db, const jl_event *ev, char *err, size_t n)
{
    const Inventory__ProductRegistered *e = (const Inventory__ProductRegistered *)ev->payload;
    if (e->sku[0] == 0) {
        snprintf(err, n, "%s with an empty sku", ev->event_type);
        return JL_ERR_INVALID;
    }
    /* Past the queries' own limit, a sku could be neither asked for nor paged past. */
    if (strnlen(e->sku, INVENTORY_LEVELS_MAX_SKU + 1) > INVENTORY_LEVELS_MAX_SKU) {
        snprintf(err, n, "%s with a sku longer than %d bytes", ev->event_type,
                 INVENTORY_LEVELS_MAX_SKU);
        return JL_ERR_INVALID;
    }
    /* A second registration of a sku breaks the primary key: a dead letter, never a reset. */
    sqlite3_stmt *st = jl_db_stmt(db, "INSERT INTO stock (sku, name) VALUES (?, ?)");
    if (st == NULL)
        return JL_ERR_SQLITE;
    sqlite3_bind_text(st, 1, e->sku, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, e->name, -1, SQLITE_STATIC);
    return jl_apply_step(db, st, ev, NULL, NULL, err, n);
}

static jl_status apply_restocked(jl_db *db, const jl_event *ev, char *err, size_t n)
{
    const Inventory__Restocked *e = (const Inventory__Restocked *)ev->payload;
    jl_status s = check_quantity(ev, e->sku, e->quantity, err, n);
    if (s != JL_OK)
        return s;
    sqlite3_stmt *st = jl_db_stmt(db, "UPDATE stock SET on_hand = on_hand + ?2, available = "
                                      "available + ?2 WHERE sku = ?1");
    if (st == NULL)
        return JL_ERR_SQLITE;
    sqlite3_bind_text(st, 1, e->sku, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, e->quantity);
    return jl_apply_step(db, st, ev, "unknown sku", e->sku, err, n);
}

static jl_status apply_reserved(jl_db *db, const jl_event *ev, char *err, size_t n)
{
    const Inventory__StockReserved *e = (const Inventory__StockReserved *)ev->payload;
    jl_status s = JL_OK;
    if (e->n_lines == 0) {
        snprintf(err, n, "%s %.64s has no line", ev->event_type, e->reservation_id);
        return JL_ERR_INVALID;
    }
    /* A refusal after some lines were written is fine: the runtime rolls the event back. */
    for (size_t i = 0; s == JL_OK && i < e->n_lines; i++) {
        const Inventory__ReservationLine *l = e->lines[i];
        s = check_quantity(ev, l->sku, l->quantity, err, n);
        sqlite3_stmt *st = NULL;
        if (s == JL_OK) {
            st = jl_db_stmt(db, "UPDATE stock SET reserved = reserved + ?2, available = "
                                "available - ?2 WHERE sku = ?1");
            s = st ? JL_OK : JL_ERR_SQLITE;
        }
        if (s == JL_OK) {
            sqlite3_bind_text(st, 1, l->sku, -1, SQLITE_STATIC);
            sqlite3_bind_int64(st, 2, l->quantity);
            s = jl_apply_step(db, st, ev, "unknown sku", l->sku, err, n);
        }
        if (s == JL_OK) {
            st = jl_db_stmt(db, "INSERT INTO reservation_lines (reservation_id, sku, quantity) "
                                "VALUES (?, ?, ?)");
            s = st ? JL_OK : JL_ERR_SQLITE;
        }
        if (s == JL_OK) {
            sqlite3_bind_text(st, 1, e->reservation_id, -1, SQLITE_STATIC);
            sqlite3_bind_text(st, 2, l->sku, -1, SQLITE_STATIC);
            sqlite3_bind_int64(st, 3, l->quantity);
            s = jl_apply_step(db, st, ev, NULL, NULL, err, n);
        }
    }
    return s;
}

/* ReservationReleased (@p commit false) or ReservationCommitted: take the reservation's stored
 * units off reserved, and for a commit off on_hand as well, then forget the reservation. */
static jl_status apply_closed(jl_db *db, const jl_event *ev, const char *reservation_id,
                              bool commit, char *err, size_t n)
{
    sqlite3_stmt *st =
        commit ? jl_db_stmt(db, "UPDATE stock SET reserved = stock.reserved - r.quantity, on_hand "
                                "= stock.on_hand - r.quantity FROM reservation_lines AS r WHERE "
                                "r.reservation_id = ?1 AND r.sku = stock.sku")
               : jl_db_stmt(db, "UPDATE stock SET reserved = stock.reserved - r.quantity, "
                                "available = stock.available + r.quantity FROM reservation_lines "
                                "AS r WHERE r.reservation_id = ?1 AND r.sku = stock.sku");
    if (st == NULL)
        return JL_ERR_SQLITE;
    sqlite3_bind_text(st, 1, reservation_id, -1, SQLITE_STATIC);
    jl_status s = jl_apply_step(db, st, ev, "unknown open reservation", reservation_id, err, n);
    if (s == JL_OK) {
        st = jl_db_stmt(db, "DELETE FROM reservation_lines WHERE reservation_id = ?");
        s = st ? JL_OK : JL_ERR_SQLITE;
    }
    if (s == JL_OK) {
        sqlite3_bind_text(st, 1, reservation_id, -1, SQLITE_STATIC);
        s = jl_apply_step(db, st, ev, NULL, NULL, err, n);
    }
    return s;
}

static jl_status apply(jl_db *db, const jl_event *ev, char *err, size_t n)
{
    const ProtobufCMessageDescriptor *d = ev->payload->descriptor;
    if (d == &inventory__product_registered__descriptor)
        return apply_registered(db, ev, err, n);
    if (d == &inventory__restocked__descriptor)
        return apply_restocked(db, ev, err, n);
    if (d == &inventory__stock_reserved__descriptor)
        return apply_reserved(db, ev, err, n);
    if (d == &inventory__reservation_rejected__descriptor)
        return JL_OK; /* nothing was reserved */
    if (d == &inventory__reservation_released__descriptor)
        return apply_closed(db, ev,
                            ((const Inventory__ReservationReleased *)ev->payload)->reservation_id,
                            false, err, n);
    if (d == &inventory__reservation_committed__descriptor)
        return apply_closed(db, ev,
                            ((const Inventory__ReservationCommitted *)ev->payload)->reservation_id,
                            true, err, n);
    snprintf(err, n, "inventory_levels does not handle %s", ev->event_type);
    return JL_ERR_UNKNOWN_TYPE;
}

/* ---- queries ---- */

#define ROW_COLUMNS "sku, name, on_hand, reserved, available"

/* Copy the current row into @p l; strings are strdup'ed (freed by free_level). */
static jl_status read_level(sqlite3_stmt *st, Inventory__StockLevel *l)
{
    inventory__stock_level__init(l);
    l->sku = jl_db_text_dup(st, 0);
    l->name = jl_db_text_dup(st, 1);
    l->on_hand = sqlite3_column_int64(st, 2);
    l->reserved = sqlite3_column_int64(st, 3);
    l->available = sqlite3_column_int64(st, 4);
    return (l->sku && l->name) ? JL_OK : JL_ERR_NOMEM;
}

static void free_level(Inventory__StockLevel *l)
{
    free(l->sku);
    free(l->name);
}

static bool check_sku(jl_reply *out, const char *sku)
{
    size_t len = strnlen(sku, INVENTORY_LEVELS_MAX_SKU + 1);
    if (len == 0)
        jl_reply_error(out, JL_CODE_INVALID, "sku must not be empty");
    else if (len > INVENTORY_LEVELS_MAX_SKU)
        jl_reply_error(out, JL_CODE_INVALID, "sku is longer than %d bytes",
                       INVENTORY_LEVELS_MAX_SKU);
    return len > 0 && len <= INVENTORY_LEVELS_MAX_SKU;
}

static jl_status get_stock(jl_db *db, const ProtobufCMessage *msg, jl_reply *out)
{
    const Inventory__GetStock *q = (const Inventory__GetStock *)msg;
    if (!check_sku(out, q->sku))
        return JL_OK;
    sqlite3_stmt *st = jl_db_stmt(db, "SELECT " ROW_COLUMNS " FROM stock WHERE sku = ?");
    if (st == NULL)
        return JL_ERR_SQLITE;
    sqlite3_bind_text(st, 1, q->sku, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    jl_status s = JL_OK;
    if (rc == SQLITE_ROW) {
        Inventory__StockLevel level;
        Inventory__GetStockResult res = INVENTORY__GET_STOCK_RESULT__INIT;
        s = read_level(st, &level);
        res.level = &level;
        if (s == JL_OK)
            jl_reply_set_result(out, &res.base);
        free_level(&level);
    } else if (rc == SQLITE_DONE) {
        jl_reply_error(out, JL_CODE_NOT_FOUND, "sku %s not found", q->sku);
    } else {
        s = jl_db_fail(db, rc, "GetStock");
    }
    sqlite3_reset(st);
    return s;
}

/*
 * The cursor is "<available>:<sku>" of the last row of a page. Both are needed: rows are in
 * (available, sku) order, and the last sku's available may have changed by the time the next
 * page is asked for; the pair keeps each page starting right after where the previous ended.
 */
static bool parse_cursor(const char *c, int64_t *out_available, const char **out_sku)
{
    const char *colon = strchr(c, ':');
    if (colon == NULL || colon == c || colon - c > 18) /* 18 digits cannot overflow */
        return false;
    int64_t v = 0;
    for (const char *p = c; p < colon; p++) {
        if (!isdigit((unsigned char)*p))
            return false;
        v = v * 10 + (*p - '0');
    }
    size_t sku_len = strnlen(colon + 1, INVENTORY_LEVELS_MAX_SKU + 1);
    if (sku_len == 0 || sku_len > INVENTORY_LEVELS_MAX_SKU)
        return false;
    *out_available = v;
    *out_sku = colon + 1;
    return true;
}

/* jl_db_page() reads and frees rows through untyped pointers. */
static jl_status read_level_any(sqlite3_stmt *st, void *row)
{
    return read_level(st, row);
}

static void free_level_any(void *row)
{
    free_level(row);
}

static jl_status list_low_stock(jl_db *db, const ProtobufCMessage *msg, jl_reply *out)
{
    const Inventory__ListLowStock *q = (const Inventory__ListLowStock *)msg;
    int64_t after_available = 0;
    const char *after_sku = "";
    if (q->threshold < 0) {
        jl_reply_error(out, JL_CODE_INVALID, "threshold %" PRId64 " is negative", q->threshold);
        return JL_OK;
    }
    uint32_t limit =
        jl_query_limit(q->limit, INVENTORY_LEVELS_DEFAULT_LIMIT, INVENTORY_LEVELS_MAX_LIMIT, out);
    if (limit == 0)
        return JL_OK;
    if (q->cursor[0] != 0 && !parse_cursor(q->cursor, &after_available, &after_sku)) {
        jl_reply_error(out, JL_CODE_INVALID, "cursor '%.80s' is not one this service issued",
                       q->cursor);
        return JL_OK;
    }
    int64_t threshold = q->threshold ? q->threshold : INVENTORY_LEVELS_DEFAULT_THRESHOLD;

    /* Two texts, not "(?2 = 0 OR (available, sku) > ...)": with that, SQLite cannot start
     * the index scan at the cursor, and each page reads every row before it. */
    sqlite3_stmt *st =
        q->cursor[0] != 0
            ? jl_db_stmt(db, "SELECT " ROW_COLUMNS " FROM stock WHERE available < ?1 AND "
                             "(available, sku) > (?2, ?3) ORDER BY available, sku LIMIT ?4")
            : jl_db_stmt(db, "SELECT " ROW_COLUMNS " FROM stock WHERE available < ?1 "
                             "ORDER BY available, sku LIMIT ?4"); /* ?2, ?3 unused */
    if (st == NULL)
        return JL_ERR_SQLITE;
    sqlite3_bind_int64(st, 1, threshold);
    sqlite3_bind_int64(st, 2, after_available);
    sqlite3_bind_text(st, 3, after_sku, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, (sqlite3_int64)limit + 1); /* one more says there is a next page */

    void *rows = NULL, **ptrs = NULL;
    size_t n = 0;
    bool more = false;
    jl_status s = jl_db_page(db, st, limit, sizeof(Inventory__StockLevel), read_level_any,
                             free_level_any, &rows, &ptrs, &n, &more);
    if (s == JL_OK) {
        Inventory__StockLevel *last = n > 0 ? ptrs[n - 1] : NULL;
        /* 19 digits, a colon, the sku and a NUL. */
        char next[20 + 1 + INVENTORY_LEVELS_MAX_SKU + 1] = "";
        if (more)
            snprintf(next, sizeof(next), "%" PRId64 ":%s", last->available, last->sku);
        Inventory__ListLowStockResult res = INVENTORY__LIST_LOW_STOCK_RESULT__INIT;
        res.n_levels = n;
        res.levels = (Inventory__StockLevel **)ptrs;
        res.next_cursor = next;
        jl_reply_set_result(out, &res.base);
    }
    jl_db_page_free(rows, ptrs, n, free_level_any);
    return s;
}

static const ProtobufCMessageDescriptor *const events[] = {
    &inventory__product_registered__descriptor,   &inventory__restocked__descriptor,
    &inventory__stock_reserved__descriptor,       &inventory__reservation_rejected__descriptor,
    &inventory__reservation_released__descriptor, &inventory__reservation_committed__descriptor,
};

static const jl_query_def queries[] = {
    {&inventory__get_stock__descriptor, get_stock},
    {&inventory__list_low_stock__descriptor, list_low_stock},
};

const jl_projector_def inventory_levels_projector = {
    .name = "inventory_levels",
    .stream = "INVENTORY",
    .filter_subject = "inventory.events.>",
    .version = 1,
    .schema_sql = schema,
    .events = JL_TYPES(events),
    .apply = apply,
    .queries = queries,
    .n_queries = JL_COUNT(queries),
};
