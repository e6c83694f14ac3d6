/*
 * The fulfilment process manager: its state machine (pure functions), apply (the order's row and
 * the commands it decides, in the batch transaction) and the queries GetFulfilment and
 * ListFulfilments. The design, and why it is safe with two streams, is in process.h.
 */
#include "process.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fulfilment/fulfilment.pb-c.h"
#include "inventory/inventory.pb-c.h"
#include "orders/orders.pb-c.h"

/* ---- the state machine ---- */

static const char *const order_names[] = {"unseen", "placed", "confirmed", "cancelled"};
static const char *const stock_names[] = {"none", "reserved", "rejected", "released", "committed"};
static const char *const command_names[] = {"",       "reserve", "confirm",
                                            "cancel", "commit",  "release"};
static const char *const step_names[] = {
    "reserving", "reserved",  "rejected", "confirmed",
    "committed", "cancelled", "released", "cancelled_out_of_stock"};

const char *fulfilment_order_status_str(fulfilment_order_status s)
{
    return (size_t)s < JL_COUNT(order_names) ? order_names[s] : "?";
}

const char *fulfilment_stock_status_str(fulfilment_stock_status s)
{
    return (size_t)s < JL_COUNT(stock_names) ? stock_names[s] : "?";
}

const char *fulfilment_command_str(fulfilment_command c)
{
    return (size_t)c < JL_COUNT(command_names) ? command_names[c] : "";
}

bool fulfilment_step_known(const char *step)
{
    for (size_t i = 0; step != NULL && i < JL_COUNT(step_names); i++) {
        if (strcmp(step, step_names[i]) == 0)
            return true;
    }
    return false;
}

fulfilment_state fulfilment_effective(fulfilment_state st)
{
    fulfilment_state e = st;
    bool early = st.order == FULFILMENT_ORDER_UNSEEN || st.order == FULFILMENT_ORDER_PLACED;
    /* We commit a reservation only once its order is confirmed and release it only once its
     * order is cancelled; the inventory holds an outcome of our reservation only because we
     * sent ReserveStock on OrderPlaced. So the inventory side may run ahead of the orders side
     * (a replay), never the other way round, and its news tells what the orders stream will. */
    if (st.stock == FULFILMENT_STOCK_COMMITTED && early)
        e.order = FULFILMENT_ORDER_CONFIRMED;
    else if (st.stock == FULFILMENT_STOCK_RELEASED && early)
        e.order = FULFILMENT_ORDER_CANCELLED;
    else if (st.order == FULFILMENT_ORDER_UNSEEN && st.stock != FULFILMENT_STOCK_NONE)
        e.order = FULFILMENT_ORDER_PLACED;
    /* An order is confirmed only on StockReserved (ours), whichever stream is behind. */
    if (e.order == FULFILMENT_ORDER_CONFIRMED && e.stock == FULFILMENT_STOCK_NONE)
        e.stock = FULFILMENT_STOCK_RESERVED;
    return e;
}

const char *fulfilment_step(fulfilment_state st)
{
    fulfilment_state e = fulfilment_effective(st);
    switch (e.stock) {
    case FULFILMENT_STOCK_NONE:
        if (e.order == FULFILMENT_ORDER_PLACED)
            return "reserving";
        return e.order == FULFILMENT_ORDER_CANCELLED ? "cancelled" : "";
    case FULFILMENT_STOCK_RESERVED:
        if (e.order == FULFILMENT_ORDER_CONFIRMED)
            return "confirmed";
        /* Cancelled with the stock held: the release is decided, on its way. */
        return e.order == FULFILMENT_ORDER_CANCELLED ? "released" : "reserved";
    case FULFILMENT_STOCK_REJECTED:
        return e.order == FULFILMENT_ORDER_CANCELLED ? "cancelled_out_of_stock" : "rejected";
    case FULFILMENT_STOCK_RELEASED:
        return "released";
    case FULFILMENT_STOCK_COMMITTED:
        return "committed";
    }
    return "";
}

/* The command that drives an effective state forward, if it calls for one. */
static fulfilment_command command_of(fulfilment_state e)
{
    if (e.order == FULFILMENT_ORDER_PLACED) {
        if (e.stock == FULFILMENT_STOCK_NONE)
            return FULFILMENT_CMD_RESERVE;
        if (e.stock == FULFILMENT_STOCK_RESERVED)
            return FULFILMENT_CMD_CONFIRM;
        if (e.stock == FULFILMENT_STOCK_REJECTED)
            return FULFILMENT_CMD_CANCEL;
    }
    if (e.order == FULFILMENT_ORDER_CONFIRMED && e.stock == FULFILMENT_STOCK_RESERVED)
        return FULFILMENT_CMD_COMMIT;
    if (e.order == FULFILMENT_ORDER_CANCELLED && e.stock == FULFILMENT_STOCK_RESERVED)
        return FULFILMENT_CMD_RELEASE;
    return FULFILMENT_CMD_NONE;
}

void fulfilment_next(fulfilment_state *out_state, fulfilment_command *out_command,
                     fulfilment_state st, fulfilment_event ev)
{
    fulfilment_state n = st;
    switch (ev) {
    case FULFILMENT_EV_ORDER_PLACED:
        if (st.order == FULFILMENT_ORDER_UNSEEN)
            n.order = FULFILMENT_ORDER_PLACED;
        break;
    case FULFILMENT_EV_ORDER_CONFIRMED:
        if (st.order == FULFILMENT_ORDER_PLACED)
            n.order = FULFILMENT_ORDER_CONFIRMED;
        break;
    case FULFILMENT_EV_ORDER_CANCELLED:
        if (st.order == FULFILMENT_ORDER_PLACED)
            n.order = FULFILMENT_ORDER_CANCELLED;
        break;
    case FULFILMENT_EV_STOCK_RESERVED:
        if (st.stock == FULFILMENT_STOCK_NONE)
            n.stock = FULFILMENT_STOCK_RESERVED;
        break;
    case FULFILMENT_EV_RESERVATION_REJECTED:
        if (st.stock == FULFILMENT_STOCK_NONE)
            n.stock = FULFILMENT_STOCK_REJECTED;
        break;
    case FULFILMENT_EV_RESERVATION_RELEASED:
        if (st.stock == FULFILMENT_STOCK_RESERVED)
            n.stock = FULFILMENT_STOCK_RELEASED;
        break;
    case FULFILMENT_EV_RESERVATION_COMMITTED:
        if (st.stock == FULFILMENT_STOCK_RESERVED)
            n.stock = FULFILMENT_STOCK_COMMITTED;
        break;
    }
    fulfilment_state before = fulfilment_effective(st), after = fulfilment_effective(n);
    bool moved = before.order != after.order || before.stock != after.stock;
    *out_state = n;
    *out_command = moved ? command_of(after) : FULFILMENT_CMD_NONE;
}

static bool is_orders_event(fulfilment_event k)
{
    return k == FULFILMENT_EV_ORDER_PLACED || k == FULFILMENT_EV_ORDER_CONFIRMED ||
           k == FULFILMENT_EV_ORDER_CANCELLED;
}

fulfilment_command fulfilment_overtaken(fulfilment_state st, fulfilment_event ev)
{
    fulfilment_state n;
    fulfilment_command ignored;
    fulfilment_next(&n, &ignored, st, ev);
    fulfilment_state before = fulfilment_effective(st), after = fulfilment_effective(n);
    if (before.order == after.order && before.stock == after.stock)
        return FULFILMENT_CMD_NONE;
    fulfilment_command old = command_of(before);
    bool to_orders = old == FULFILMENT_CMD_CONFIRM || old == FULFILMENT_CMD_CANCEL;
    /* News from the other stream; or a cancellation by the customer, after which the orders
     * service would only refuse a ConfirmOrder or CancelOrder. */
    bool pointless =
        to_orders != is_orders_event(ev) || (to_orders && ev == FULFILMENT_EV_ORDER_CANCELLED);
    return old != FULFILMENT_CMD_NONE && pointless ? old : FULFILMENT_CMD_NONE;
}

/* ---- ids ---- */

/* FNV-1a 128: h = (h ^ byte) * (2^88 + 0x13b) mod 2^128, on two 64-bit halves, from the
 * offset basis below. */
#define FNV128_BASIS_HI 0x6c62272e07bb0142ULL
#define FNV128_BASIS_LO 0x62b821756295c58dULL

static void fnv1a_128(uint64_t *io_hi, uint64_t *io_lo, const char *s)
{
    uint64_t hi = *io_hi, lo = *io_lo;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        lo ^= *p;
        /* h * 0x13b: the low half in 32-bit pieces so that its carry into the high half is
         * exact; then + h * 2^88, which only shifts the low half into the high one. */
        uint64_t a = (lo >> 32) * 0x13bULL, b = (lo & 0xffffffffULL) * 0x13bULL;
        uint64_t new_lo = b + (a << 32);
        uint64_t carry = (a >> 32) + (new_lo < b);
        hi = hi * 0x13bULL + carry + (lo << 24);
        lo = new_lo;
    }
    *io_hi = hi;
    *io_lo = lo;
}

jl_status fulfilment_reservation_id(char out[JL_UUID_LEN + 1], const char *order_id)
{
    char canon[JL_UUID_LEN + 1];
    if (jl_uuid_canonical(canon, order_id) != JL_OK)
        return JL_ERR_INVALID;
    uint64_t hi = FNV128_BASIS_HI, lo = FNV128_BASIS_LO;
    fnv1a_128(&hi, &lo, "fulfilment:");
    fnv1a_128(&hi, &lo, canon);
    uint8_t u[16];
    for (int i = 0; i < 8; i++) {
        u[i] = (uint8_t)(hi >> (56 - 8 * i));
        u[8 + i] = (uint8_t)(lo >> (56 - 8 * i));
    }
    u[6] = (uint8_t)((u[6] & 0x0f) | 0x80); /* version 8 */
    u[8] = (uint8_t)((u[8] & 0x3f) | 0x80); /* variant 10 (RFC 9562) */
    snprintf(out, JL_UUID_LEN + 1,
             "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", u[0], u[1],
             u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13], u[14],
             u[15]);
    return JL_OK;
}

/* Every command id of ours: "fulfilment:<order id>:<kind>". */
#define COMMAND_ID_PREFIX "fulfilment:"

void fulfilment_command_id(char out[FULFILMENT_COMMAND_ID_MAX], const char *order_id,
                           fulfilment_command c)
{
    snprintf(out, FULFILMENT_COMMAND_ID_MAX, COMMAND_ID_PREFIX "%.36s:%s", order_id,
             fulfilment_command_str(c));
}

/* The id of the CancelOrder that aborts an order whose step was refused (on_refused()). */
static void abort_command_id(char out[FULFILMENT_COMMAND_ID_MAX], const char *order_id)
{
    snprintf(out, FULFILMENT_COMMAND_ID_MAX, COMMAND_ID_PREFIX "%.36s:abort", order_id);
}

/* The order id a command id of ours names, canonical, into @p out; JL_ERR_INVALID for another's. */
static jl_status order_of_command_id(char out[JL_UUID_LEN + 1], const char *command_id)
{
    size_t pre = strlen(COMMAND_ID_PREFIX);
    char id[JL_UUID_LEN + 1];
    if (strncmp(command_id, COMMAND_ID_PREFIX, pre) != 0 ||
        strlen(command_id) <= pre + JL_UUID_LEN || command_id[pre + JL_UUID_LEN] != ':')
        return JL_ERR_INVALID;
    snprintf(id, sizeof(id), "%.*s", JL_UUID_LEN, command_id + pre);
    return jl_uuid_canonical(out, id);
}

/* ---- apply ---- */

static const char schema[] =
    "CREATE TABLE IF NOT EXISTS fulfilments ("
    "  order_id TEXT PRIMARY KEY,"
    "  reservation_id TEXT NOT NULL,"
    "  order_status TEXT NOT NULL CHECK (order_status IN ('unseen', 'placed', 'confirmed', "
    "'cancelled')),"
    "  stock_status TEXT NOT NULL CHECK (stock_status IN ('none', 'reserved', 'rejected', "
    "'released', 'committed')),"
    "  cancel_reason TEXT NOT NULL,"
    "  reject_reason TEXT NOT NULL,"
    "  step TEXT NOT NULL,"
    "  reason TEXT NOT NULL,"
    "  updated_at_ns INTEGER NOT NULL);"
    "CREATE INDEX IF NOT EXISTS fulfilments_by_step ON fulfilments (step, order_id);";

/* Copy at most FULFILMENT_MAX_REASON bytes of @p src, cut before a UTF-8 continuation byte. */
static void copy_reason(char dst[FULFILMENT_MAX_REASON + 1], const char *src)
{
    size_t n = src ? strnlen(src, FULFILMENT_MAX_REASON + 1) : 0;
    if (n > FULFILMENT_MAX_REASON) {
        n = FULFILMENT_MAX_REASON;
        while (n > 0 && ((unsigned char)src[n] & 0xc0) == 0x80)
            n--;
    }
    memcpy(dst, src ? src : "", n);
    dst[n] = 0;
}

/* One order's row as read and written by apply. */
typedef struct row {
    bool exists;
    fulfilment_state st;
    char cancel_reason[FULFILMENT_MAX_REASON + 1]; /* from ORDERS only */
    char reject_reason[FULFILMENT_MAX_REASON + 1]; /* from INVENTORY only */
    int64_t updated_at_ns;
} row;

/* What an event means to the process manager. */
typedef struct reaction {
    fulfilment_event kind;
    char order_id[JL_UUID_LEN + 1];
    const char *reason;                /* OrderCancelled's or ReservationRejected's */
    const Orders__OrderPlaced *placed; /* the lines to reserve */
} reaction;

/*
 * Whether an inventory event is about a reservation we started: its reservation id is the one
 * derived from its order id. Anything else (another client's reservation, ids that are not
 * UUIDs) is none of our business.
 */
static bool ours(reaction *r, const char *order_id, const char *reservation_id)
{
    char rid[JL_UUID_LEN + 1], mine[JL_UUID_LEN + 1];
    if (jl_uuid_canonical(r->order_id, order_id) != JL_OK ||
        jl_uuid_canonical(rid, reservation_id) != JL_OK ||
        fulfilment_reservation_id(mine, r->order_id) != JL_OK)
        return false;
    return strcmp(rid, mine) == 0;
}

/* Fill @p r from @p ev; false for an event the process manager does not react to. */
static bool classify(const jl_event *ev, reaction *r)
{
    const ProtobufCMessageDescriptor *d = ev->payload->descriptor;
    memset(r, 0, sizeof(*r));
    if (d == &orders__order_placed__descriptor || d == &orders__order_confirmed__descriptor ||
        d == &orders__order_cancelled__descriptor) {
        /* The aggregate id is the order id, checked by the producer that appended it. */
        if (jl_uuid_canonical(r->order_id, ev->aggregate_id) != JL_OK)
            return false;
        if (d == &orders__order_placed__descriptor) {
            r->kind = FULFILMENT_EV_ORDER_PLACED;
            r->placed = (const Orders__OrderPlaced *)ev->payload;
        } else if (d == &orders__order_confirmed__descriptor) {
            r->kind = FULFILMENT_EV_ORDER_CONFIRMED;
        } else {
            r->kind = FULFILMENT_EV_ORDER_CANCELLED;
            r->reason = ((const Orders__OrderCancelled *)ev->payload)->reason;
        }
        return true;
    }
    if (d == &inventory__stock_reserved__descriptor) {
        const Inventory__StockReserved *e = (const Inventory__StockReserved *)ev->payload;
        r->kind = FULFILMENT_EV_STOCK_RESERVED;
        return ours(r, e->order_id, e->reservation_id);
    }
    if (d == &inventory__reservation_rejected__descriptor) {
        const Inventory__ReservationRejected *e =
            (const Inventory__ReservationRejected *)ev->payload;
        r->kind = FULFILMENT_EV_RESERVATION_REJECTED;
        r->reason = e->reason;
        return ours(r, e->order_id, e->reservation_id);
    }
    if (d == &inventory__reservation_released__descriptor) {
        const Inventory__ReservationReleased *e =
            (const Inventory__ReservationReleased *)ev->payload;
        r->kind = FULFILMENT_EV_RESERVATION_RELEASED;
        return ours(r, e->order_id, e->reservation_id);
    }
    if (d == &inventory__reservation_committed__descriptor) {
        const Inventory__ReservationCommitted *e =
            (const Inventory__ReservationCommitted *)ev->payload;
        r->kind = FULFILMENT_EV_RESERVATION_COMMITTED;
        return ours(r, e->order_id, e->reservation_id);
    }
    return false; /* the other listed types: nothing to do */
}

static int parse_name(const char *const *names, size_t n, const char *s)
{
    for (size_t i = 0; s != NULL && i < n; i++) {
        if (strcmp(s, names[i]) == 0)
            return (int)i;
    }
    return -1;
}

static jl_status load_row(jl_db *db, const char *order_id, row *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof(*out));
    sqlite3_stmt *st = jl_db_stmt(db, "SELECT order_status, stock_status, cancel_reason, "
                                      "reject_reason, updated_at_ns FROM fulfilments WHERE "
                                      "order_id = ?");
    if (st == NULL)
        return JL_ERR_SQLITE;
    sqlite3_bind_text(st, 1, order_id, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    jl_status s = JL_OK;
    if (rc == SQLITE_ROW) {
        int o = parse_name(order_names, JL_COUNT(order_names),
                           (const char *)sqlite3_column_text(st, 0));
        int k = parse_name(stock_names, JL_COUNT(stock_names),
                           (const char *)sqlite3_column_text(st, 1));
        out->exists = true;
        out->st.order = (fulfilment_order_status)o;
        out->st.stock = (fulfilment_stock_status)k;
        copy_reason(out->cancel_reason, (const char *)sqlite3_column_text(st, 2));
        copy_reason(out->reject_reason, (const char *)sqlite3_column_text(st, 3));
        out->updated_at_ns = sqlite3_column_int64(st, 4);
        if (o < 0 || k < 0) {
            /* The CHECK constraints make this a damaged file, not a bad event. */
            snprintf(err, errlen, "fulfilments row of order %s has an unknown status", order_id);
            s = JL_ERR_INTERNAL;
        }
    } else if (rc != SQLITE_DONE) {
        s = jl_db_fail(db, rc, "reading a fulfilment");
    }
    sqlite3_reset(st);
    return s;
}

static jl_status save_row(jl_db *db, const char *order_id, const char *reservation_id, const row *r)
{
    /* The reason shown: the stock's when it was short, else the cancellation's. */
    const char *reason =
        r->st.stock == FULFILMENT_STOCK_REJECTED ? r->reject_reason : r->cancel_reason;
    sqlite3_stmt *st = jl_db_stmt(
        db, "INSERT INTO fulfilments (order_id, reservation_id, order_status, stock_status, "
            "cancel_reason, reject_reason, step, reason, updated_at_ns) VALUES (?1, ?2, ?3, ?4, "
            "?5, ?6, ?7, ?8, ?9) ON CONFLICT (order_id) DO UPDATE SET order_status = ?3, "
            "stock_status = ?4, cancel_reason = ?5, reject_reason = ?6, step = ?7, reason = ?8, "
            "updated_at_ns = ?9");
    if (st == NULL)
        return JL_ERR_SQLITE;
    sqlite3_bind_text(st, 1, order_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, reservation_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, fulfilment_order_status_str(r->st.order), -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, fulfilment_stock_status_str(r->st.stock), -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 5, r->cancel_reason, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 6, r->reject_reason, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 7, fulfilment_step(r->st), -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 8, reason, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 9, r->updated_at_ns);
    return jl_db_step_done(db, st);
}

/* Queue the command @p c decided for the order (see jl_outbox_add). */
/*
 * Queue @p msg for @p service under command id @p id, caused by @p ev. Keyed by order: a
 * command answered "not now" holds back only its own order's. A command the outbox cannot
 * take (too large, ids too long for producers) refuses the event (dead-lettered, with why).
 */
static jl_status add_command(jl_db *db, const char *service, const ProtobufCMessage *msg,
                             const char *id, const reaction *re, const jl_event *ev, char *err,
                             size_t errlen)
{
    jl_status s =
        jl_outbox_add_keyed(db, service, msg, id, ev->correlation_id, ev->event_id, re->order_id);
    if (s == JL_ERR_TOO_LARGE) {
        snprintf(err, errlen, "%s for order %s is over the command size limit",
                 msg->descriptor->short_name, re->order_id);
        s = JL_ERR_INVALID;
    } else if (s == JL_ERR_INVALID) {
        snprintf(err, errlen,
                 "%s for order %s cannot be sent: the event's correlation id or event id is "
                 "longer than producers accept",
                 msg->descriptor->short_name, re->order_id);
    }
    return s;
}

static jl_status queue_command(jl_db *db, fulfilment_command c, const reaction *re,
                               const char *reservation_id, const row *r, const jl_event *ev,
                               char *err, size_t errlen)
{
    Inventory__ReserveStock reserve = INVENTORY__RESERVE_STOCK__INIT;
    Orders__ConfirmOrder confirm = ORDERS__CONFIRM_ORDER__INIT;
    Orders__CancelOrder cancel = ORDERS__CANCEL_ORDER__INIT;
    Inventory__CommitReservation commit = INVENTORY__COMMIT_RESERVATION__INIT;
    Inventory__ReleaseReservation release = INVENTORY__RELEASE_RESERVATION__INIT;
    Inventory__ReservationLine *lines = NULL, **ptrs = NULL;
    char reason[FULFILMENT_MAX_REASON + 1];
    char id[FULFILMENT_COMMAND_ID_MAX];
    const ProtobufCMessage *msg = NULL;
    const char *service = "inventory";
    jl_status s = JL_OK;

    switch (c) {
    case FULFILMENT_CMD_RESERVE: {
        /* Checked by apply before anything was written. */
        size_t n = re->placed->n_lines;
        lines = calloc(n, sizeof(*lines));
        ptrs = calloc(n, sizeof(*ptrs));
        if (lines == NULL || ptrs == NULL) {
            s = JL_ERR_NOMEM;
            break;
        }
        for (size_t i = 0; i < n; i++) {
            inventory__reservation_line__init(&lines[i]);
            lines[i].sku = re->placed->lines[i]->sku;
            lines[i].quantity = re->placed->lines[i]->quantity;
            ptrs[i] = &lines[i];
        }
        reserve.reservation_id = (char *)reservation_id;
        reserve.order_id = (char *)re->order_id;
        reserve.n_lines = n;
        reserve.lines = ptrs;
        msg = &reserve.base;
        break;
    }
    case FULFILMENT_CMD_CONFIRM:
        confirm.order_id = (char *)re->order_id;
        confirm.reservation_id = (char *)reservation_id;
        msg = &confirm.base;
        service = "orders";
        break;
    case FULFILMENT_CMD_CANCEL: {
        char full[FULFILMENT_MAX_REASON + 32];
        snprintf(full, sizeof(full), "out of stock: %s", r->reject_reason);
        copy_reason(reason, full);
        cancel.order_id = (char *)re->order_id;
        cancel.reason = reason;
        msg = &cancel.base;
        service = "orders";
        break;
    }
    case FULFILMENT_CMD_COMMIT:
        commit.reservation_id = (char *)reservation_id;
        msg = &commit.base;
        break;
    case FULFILMENT_CMD_RELEASE:
        release.reservation_id = (char *)reservation_id;
        release.reason = "order cancelled";
        msg = &release.base;
        break;
    case FULFILMENT_CMD_NONE:
        break;
    }
    if (s == JL_OK && msg != NULL) {
        fulfilment_command_id(id, re->order_id, c);
        s = add_command(db, service, msg, id, re, ev, err, errlen);
    }
    free(lines);
    free(ptrs);
    return s;
}

/*
 * Our reservation reserved again after it was closed (committed, released, or rejected before):
 * the inventory forgets closed reservation ids after a while, so a ReserveStock sent again (by
 * this process manager replaying its streams after losing its database, or by anyone) reserves
 * anew, and nothing of the saga would ever commit or release that stock. Released, under an id
 * of its own per such event: "fulfilment:<order id>:rel-<11 hex digits of the event id's hash>".
 */
static jl_status release_again(jl_db *db, const reaction *re, const char *reservation_id,
                               const jl_event *ev, char *err, size_t errlen)
{
    uint64_t hi = FNV128_BASIS_HI, lo = FNV128_BASIS_LO;
    fnv1a_128(&hi, &lo, ev->event_id);
    char id[FULFILMENT_COMMAND_ID_MAX];
    snprintf(id, sizeof(id), COMMAND_ID_PREFIX "%.36s:rel-%011" PRIx64, re->order_id, hi >> 20);
    Inventory__ReleaseReservation release = INVENTORY__RELEASE_RESERVATION__INIT;
    release.reservation_id = (char *)reservation_id;
    release.reason = "reserved again after it was closed";
    return add_command(db, "inventory", &release.base, id, re, ev, err, errlen);
}

static jl_status apply(jl_db *db, const jl_event *ev, char *err, size_t errlen)
{
    reaction re;
    if (!classify(ev, &re))
        return JL_OK;
    row old, cur;
    jl_status s = load_row(db, re.order_id, &old, err, errlen);
    if (s != JL_OK)
        return s;
    /* An order cancelled (or anything else) before it was placed is no fulfilment of ours. */
    if (!old.exists && is_orders_event(re.kind) && re.kind != FULFILMENT_EV_ORDER_PLACED)
        return JL_OK;
    /* Refused whatever the row holds: refused only when it would decide a ReserveStock, it
     * would be taken when the inventory's events came first, and a rebuild (interleaving the
     * streams its own way) could differ from the live model. */
    if (re.kind == FULFILMENT_EV_ORDER_PLACED && re.placed->n_lines == 0) {
        snprintf(err, errlen, "OrderPlaced of order %s has no lines: nothing to reserve",
                 re.order_id);
        return JL_ERR_INVALID;
    }

    if (re.kind == FULFILMENT_EV_STOCK_RESERVED && old.exists &&
        (old.st.stock == FULFILMENT_STOCK_COMMITTED || old.st.stock == FULFILMENT_STOCK_RELEASED ||
         old.st.stock == FULFILMENT_STOCK_REJECTED)) {
        char rid[JL_UUID_LEN + 1];
        s = fulfilment_reservation_id(rid, re.order_id);
        return s == JL_OK ? release_again(db, &re, rid, ev, err, errlen) : s;
    }

    fulfilment_command cmd;
    cur = old;
    fulfilment_next(&cur.st, &cmd, old.st, re.kind);
    if (re.kind == FULFILMENT_EV_ORDER_CANCELLED && cur.st.order != old.st.order) {
        copy_reason(cur.cancel_reason, re.reason);
    } else if (re.kind == FULFILMENT_EV_ORDER_CANCELLED &&
               old.st.order == FULFILMENT_ORDER_CONFIRMED && old.cancel_reason[0] == 0) {
        /* The orders service refuses this; should it ever happen, the stock stays committed
         * (undoing that is a return) and the cancellation is only noted. */
        char note[FULFILMENT_MAX_REASON + 40];
        snprintf(note, sizeof(note), "cancelled after confirmation%s%s", re.reason[0] ? ": " : "",
                 re.reason);
        copy_reason(cur.cancel_reason, note);
    } else if (re.kind == FULFILMENT_EV_RESERVATION_REJECTED && cur.st.stock != old.st.stock) {
        copy_reason(cur.reject_reason, re.reason);
    }
    bool changed = cur.st.order != old.st.order || cur.st.stock != old.st.stock ||
                   strcmp(cur.cancel_reason, old.cancel_reason) != 0 ||
                   strcmp(cur.reject_reason, old.reject_reason) != 0;
    if (!changed)
        return JL_OK;
    /* The latest occurred-at recorded: a maximum, so the same whatever the interleaving (a new
     * row's first, even one before 1970 from a clock set wrong, not the 0 it starts at). */
    if (!old.exists || ev->occurred_at_ns > cur.updated_at_ns)
        cur.updated_at_ns = ev->occurred_at_ns;

    char rid[JL_UUID_LEN + 1];
    s = fulfilment_reservation_id(rid, re.order_id);
    if (s == JL_OK)
        s = save_row(db, re.order_id, rid, &cur);
    fulfilment_command stale = fulfilment_overtaken(old.st, re.kind);
    char id[FULFILMENT_COMMAND_ID_MAX], why[160];
    snprintf(why, sizeof(why), "overtaken by %s", ev->event_type);
    if (s == JL_OK && stale != FULFILMENT_CMD_NONE) {
        fulfilment_command_id(id, re.order_id, stale);
        s = jl_outbox_withdraw(db, id, why);
    }
    if (s == JL_OK && re.kind == FULFILMENT_EV_ORDER_CANCELLED) {
        /* An abort not sent yet (a refused ConfirmOrder racing the customer's cancel): the
         * orders service would only refuse it now. */
        abort_command_id(id, re.order_id);
        s = jl_outbox_withdraw(db, id, why);
    }
    if (s == JL_OK && cmd != FULFILMENT_CMD_NONE)
        s = queue_command(db, cmd, &re, rid, &cur, ev, err, errlen);
    if (s == JL_ERR_INVALID && err[0] == 0)
        snprintf(err, errlen, "%s rejected by the read model: %s", ev->event_type,
                 jl_db_errmsg(db));
    return s;
}

/*
 * A command refused for good (jl_projector_def.on_refused). A refused ReserveStock or
 * ConfirmOrder would leave the order placed for ever, waiting for an outcome that will not
 * come, and its stock perhaps reserved: the order is cancelled instead, with the refusal as
 * its reason ("fulfilment:<order id>:abort"), and the OrderCancelled that follows releases
 * what was reserved, as a customer's cancellation does. A refused commit, release or
 * cancellation has nothing to fall back on: the runtime logs it for an operator.
 */
static jl_status on_refused(jl_db *db, const jl_outbox_refusal *f, char *err, size_t errlen)
{
    bool reserve = strcmp(f->command, "ReserveStock") == 0;
    char order_id[JL_UUID_LEN + 1], id[FULFILMENT_COMMAND_ID_MAX];
    char full[sizeof(f->reply->message) + 32], reason[FULFILMENT_MAX_REASON + 1];
    if (!reserve && strcmp(f->command, "ConfirmOrder") != 0)
        return JL_OK;
    /* Keyed by order id; a row queued before rows had keys names it in its command id. */
    if (jl_uuid_canonical(order_id, f->order_key) != JL_OK &&
        order_of_command_id(order_id, f->command_id) != JL_OK)
        return JL_OK; /* not one of ours: the runtime logs the refusal */
    /* Cancelled (by its customer, racing a ConfirmOrder) or confirmed already: nothing to
     * abort, and the orders service would only refuse a CancelOrder. */
    row cur;
    jl_status s = load_row(db, order_id, &cur, err, errlen);
    if (s != JL_OK || (cur.exists && fulfilment_effective(cur.st).order != FULFILMENT_ORDER_PLACED))
        return s;
    snprintf(full, sizeof(full), "%s refused: %s", reserve ? "stock reservation" : "confirmation",
             f->reply->message);
    copy_reason(reason, full);
    Orders__CancelOrder cancel = ORDERS__CANCEL_ORDER__INIT;
    cancel.order_id = order_id;
    cancel.reason = reason;
    abort_command_id(id, order_id);
    s = jl_outbox_add_keyed(db, "orders", &cancel.base, id, f->correlation_id, f->command_id,
                            order_id);
    if (s != JL_OK)
        snprintf(err, errlen, "cannot queue the CancelOrder of order %s: %s", order_id,
                 jl_status_str(s));
    return s;
}

/* ---- queries ---- */

#define ROW_COLUMNS                                                                                \
    "order_id, reservation_id, step, reason, updated_at_ns, order_status, stock_status"

/* Copy the current row into @p f; strings are strdup'ed (freed by free_fulfilment). */
static jl_status read_row(sqlite3_stmt *st, Fulfilment__Fulfilment *f)
{
    fulfilment__fulfilment__init(f);
    f->order_id = jl_db_text_dup(st, 0);
    f->reservation_id = jl_db_text_dup(st, 1);
    f->step = jl_db_text_dup(st, 2);
    f->reason = jl_db_text_dup(st, 3);
    f->updated_at_ns = sqlite3_column_int64(st, 4);
    f->order_status = jl_db_text_dup(st, 5);
    f->stock_status = jl_db_text_dup(st, 6);
    return (f->order_id && f->reservation_id && f->step && f->reason && f->order_status &&
            f->stock_status)
               ? JL_OK
               : JL_ERR_NOMEM;
}

static void free_fulfilment(Fulfilment__Fulfilment *f)
{
    free(f->order_id);
    free(f->reservation_id);
    free(f->step);
    free(f->reason);
    free(f->order_status);
    free(f->stock_status);
}

static jl_status get_fulfilment(jl_db *db, const ProtobufCMessage *msg, jl_reply *out)
{
    const Fulfilment__GetFulfilment *q = (const Fulfilment__GetFulfilment *)msg;
    char id[JL_UUID_LEN + 1];
    if (jl_uuid_canonical(id, q->order_id) != JL_OK) {
        jl_reply_error(out, JL_CODE_INVALID, "order_id '%.64s' is not a UUID", q->order_id);
        return JL_OK;
    }
    sqlite3_stmt *st = jl_db_stmt(db, "SELECT " ROW_COLUMNS " FROM fulfilments WHERE order_id = ?");
    if (st == NULL)
        return JL_ERR_SQLITE;
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    jl_status s = JL_OK;
    if (rc == SQLITE_ROW) {
        Fulfilment__Fulfilment f;
        s = read_row(st, &f);
        if (s == JL_OK) {
            Fulfilment__GetFulfilmentResult res = FULFILMENT__GET_FULFILMENT_RESULT__INIT;
            res.order_id = f.order_id;
            res.reservation_id = f.reservation_id;
            res.step = f.step;
            res.reason = f.reason;
            res.updated_at_ns = f.updated_at_ns;
            res.order_status = f.order_status;
            res.stock_status = f.stock_status;
            jl_reply_set_result(out, &res.base);
        }
        free_fulfilment(&f);
    } else if (rc == SQLITE_DONE) {
        jl_reply_error(out, JL_CODE_NOT_FOUND, "no fulfilment for order %s", id);
    } else {
        s = jl_db_fail(db, rc, "GetFulfilment");
    }
    sqlite3_reset(st);
    return s;
}

/* jl_db_page() reads and frees rows through untyped pointers. */
static jl_status read_row_any(sqlite3_stmt *st, void *r)
{
    return read_row(st, r);
}

static void free_fulfilment_any(void *r)
{
    free_fulfilment(r);
}

static jl_status list_fulfilments(jl_db *db, const ProtobufCMessage *msg, jl_reply *out)
{
    const Fulfilment__ListFulfilments *q = (const Fulfilment__ListFulfilments *)msg;
    if (q->step[0] != 0 && !fulfilment_step_known(q->step)) {
        jl_reply_error(out, JL_CODE_INVALID,
                       "step '%.32s' is not one of reserving, reserved, rejected, confirmed, "
                       "committed, cancelled, released, cancelled_out_of_stock (or empty)",
                       q->step);
        return JL_OK;
    }
    uint32_t limit = jl_query_limit(q->limit, FULFILMENT_DEFAULT_LIMIT, FULFILMENT_MAX_LIMIT, out);
    if (limit == 0)
        return JL_OK;
    if (q->cursor[0] != 0 && !jl_uuid_is_canonical(q->cursor)) {
        jl_reply_error(out, JL_CODE_INVALID, "cursor '%.64s' is not one this service issued",
                       q->cursor);
        return JL_OK;
    }

    /* Two texts, not "(?1 = '' OR step = ?1)": SQLite cannot use fulfilments_by_step for that
     * one, and a page of a rare step would read the whole table while every other query
     * waits. */
    sqlite3_stmt *st =
        q->step[0] != 0
            ? jl_db_stmt(db, "SELECT " ROW_COLUMNS " FROM fulfilments WHERE step = ?1 AND "
                             "order_id > ?2 ORDER BY order_id LIMIT ?3")
            : jl_db_stmt(db, "SELECT " ROW_COLUMNS " FROM fulfilments WHERE order_id > ?2 "
                             "ORDER BY order_id LIMIT ?3");
    if (st == NULL)
        return JL_ERR_SQLITE;
    if (q->step[0] != 0)
        sqlite3_bind_text(st, 1, q->step, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, q->cursor, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, (sqlite3_int64)limit + 1); /* one more says there is a next page */

    void *rows = NULL, **ptrs = NULL;
    size_t n = 0;
    bool more = false;
    jl_status s = jl_db_page(db, st, limit, sizeof(Fulfilment__Fulfilment), read_row_any,
                             free_fulfilment_any, &rows, &ptrs, &n, &more);
    if (s == JL_OK) {
        Fulfilment__Fulfilment *last = n > 0 ? ptrs[n - 1] : NULL;
        Fulfilment__ListFulfilmentsResult res = FULFILMENT__LIST_FULFILMENTS_RESULT__INIT;
        res.n_fulfilments = n;
        res.fulfilments = (Fulfilment__Fulfilment **)ptrs;
        res.next_cursor = more ? last->order_id : "";
        jl_reply_set_result(out, &res.base);
    }
    jl_db_page_free(rows, ptrs, n, free_fulfilment_any);
    return s;
}

/* Every event type of both streams, so that none is dead-lettered: classify() ignores the
 * ones that do not concern fulfilment. */
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

static const jl_source sources[] = {
    {"ORDERS", "orders.events.>"},
    {"INVENTORY", "inventory.events.>"},
};

static const jl_query_def queries[] = {
    {&fulfilment__get_fulfilment__descriptor, get_fulfilment},
    {&fulfilment__list_fulfilments__descriptor, list_fulfilments},
};

const jl_projector_def fulfilment_process = {
    .name = "fulfilment",
    .sources = sources,
    .n_sources = JL_COUNT(sources),
    .version = 1,
    .schema_sql = schema,
    .events = JL_TYPES(events),
    .apply = apply,
    .queries = queries,
    .n_queries = JL_COUNT(queries),
    .outbox = true,
    .on_refused = on_refused,
};
