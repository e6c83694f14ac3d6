#include "domain.h"

#include <assert.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The producer copies the state with memcpy on every command: keep it a size that is cheap. */
_Static_assert(sizeof(inventory_state) <= 256 * 1024, "inventory_state grew past 256 KiB");
/* Stored line quantities are uint32_t. */
_Static_assert(INVENTORY_MAX_QUANTITY <= UINT32_MAX, "line quantity does not fit its field");

#define UUID_TEXT 36

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/*
 * The 36-character hyphenated form, either case, as the runtime accepts aggregate ids. Ids are
 * kept as 16 bytes: the closed-id ring is the largest part of the state.
 */
static bool uuid_parse(const char *s, uint8_t out[16])
{
    uint8_t u[16];
    size_t k = 0;
    if (jl_text_len(s, UUID_TEXT) != UUID_TEXT)
        return false;
    for (size_t i = 0; i < UUID_TEXT;) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (s[i] != '-')
                return false;
            i++;
            continue;
        }
        int hi = hex_value(s[i]), lo = hex_value(s[i + 1]);
        if (hi < 0 || lo < 0)
            return false;
        u[k++] = (uint8_t)(hi << 4 | lo);
        i += 2;
    }
    memcpy(out, u, sizeof(u));
    return true;
}

static void uuid_format(const uint8_t u[16], char out[UUID_TEXT + 1])
{
    static const char digits[] = "0123456789abcdef";
    size_t o = 0;
    for (size_t k = 0; k < 16; k++) {
        if (k == 4 || k == 6 || k == 8 || k == 10)
            out[o++] = '-';
        out[o++] = digits[u[k] >> 4];
        out[o++] = digits[u[k] & 15];
    }
    out[o] = 0;
}

/* Index of the product of @p sku, or s->n_products when there is none. */
static uint32_t find_product(const inventory_state *s, const char *sku)
{
    uint32_t i = 0;
    while (i < s->n_products && strcmp(s->products[i].sku, sku) != 0)
        i++;
    return i;
}

/* Index of the open reservation @p id, or s->n_open when there is none. */
static uint32_t find_open(const inventory_state *s, const uint8_t id[16])
{
    uint32_t i = 0;
    while (i < s->n_open && memcmp(s->open[i].id, id, 16) != 0)
        i++;
    return i;
}

/* How @p id was closed, or 0 when the ring does not remember it. */
static int find_closed(const inventory_state *s, const uint8_t id[16])
{
    /* Slots 0..n_closed-1 are the used ones whether or not the ring has wrapped. */
    for (uint32_t i = 0; i < s->n_closed; i++) {
        if (memcmp(s->closed_ids[i], id, 16) == 0)
            return s->closed_outcomes[i];
    }
    return 0;
}

static int64_t available(const inventory_product *p)
{
    return p->on_hand - p->reserved;
}

const char *inventory_outcome_str(inventory_outcome o)
{
    switch (o) {
    case INVENTORY_REJECTED:
        return "rejected";
    case INVENTORY_RELEASED:
        return "released";
    case INVENTORY_COMMITTED:
        return "committed";
    }
    return "unknown";
}

void inventory_state_init(void *state)
{
    assert(state != NULL);
    /* memset rather than a compound literal: padding must be zero too for memcmp. */
    memset(state, 0, sizeof(inventory_state));
}

/* ---- decide ---- */

/*
 * Each handler runs after the dispatcher has checked the command type and the warehouse.
 * Checks go field values, then the state, and the first failure wins, so a client sees the most
 * basic problem with its command first.
 */

static bool check_quantity(jl_decision *out, const char *field, int64_t q)
{
    if (q <= 0) {
        jl_decision_reject(out, JL_CODE_INVALID, "%s must be positive", field);
        return false;
    }
    if (q > INVENTORY_MAX_QUANTITY) {
        jl_decision_reject(out, JL_CODE_INVALID, "%s must be at most %lld", field,
                           INVENTORY_MAX_QUANTITY);
        return false;
    }
    return true;
}

static bool check_uuid(jl_decision *out, const char *field, const char *s, uint8_t id[16])
{
    if (jl_text_len(s, UUID_TEXT) == 0) {
        jl_decision_reject(out, JL_CODE_INVALID, "%s must not be empty", field);
        return false;
    }
    if (!uuid_parse(s, id)) {
        jl_decision_reject(out, JL_CODE_INVALID, "%s '%.64s' is not a UUID", field, s);
        return false;
    }
    return true;
}

static void decide_register(const inventory_state *s, const jl_command *cmd, jl_decision *out)
{
    const Inventory__RegisterProduct *c = (const Inventory__RegisterProduct *)cmd->msg;
    if (!jl_check_text(out, "sku", c->sku, INVENTORY_MAX_SKU) ||
        !jl_check_text(out, "name", c->name, INVENTORY_MAX_NAME))
        return;
    if (find_product(s, c->sku) < s->n_products) {
        jl_decision_reject(out, JL_CODE_RULE_VIOLATION, "sku %s is already registered", c->sku);
        return;
    }
    if (s->n_products >= INVENTORY_MAX_PRODUCTS) {
        jl_decision_reject(out, JL_CODE_RULE_VIOLATION, "the warehouse holds at most %d skus",
                           INVENTORY_MAX_PRODUCTS);
        return;
    }
    Inventory__ProductRegistered e = INVENTORY__PRODUCT_REGISTERED__INIT;
    e.sku = c->sku;
    e.name = c->name;
    jl_decision_emit(out, &e.base);
}

static void decide_restock(const inventory_state *s, const jl_command *cmd, jl_decision *out)
{
    const Inventory__Restock *c = (const Inventory__Restock *)cmd->msg;
    if (!jl_check_text(out, "sku", c->sku, INVENTORY_MAX_SKU) ||
        !check_quantity(out, "quantity", c->quantity))
        return;
    uint32_t at = find_product(s, c->sku);
    if (at == s->n_products) {
        jl_decision_reject(out, JL_CODE_NOT_FOUND, "sku %s is not registered", c->sku);
        return;
    }
    /* No overflow: on_hand <= INVENTORY_MAX_ON_HAND and quantity <= INVENTORY_MAX_QUANTITY. */
    if (s->products[at].on_hand + c->quantity > INVENTORY_MAX_ON_HAND) {
        jl_decision_reject(out, JL_CODE_INVALID, "sku %s would hold %lld units: at most %lld",
                           c->sku, (long long)(s->products[at].on_hand + c->quantity),
                           INVENTORY_MAX_ON_HAND);
        return;
    }
    Inventory__Restocked e = INVENTORY__RESTOCKED__INIT;
    e.sku = c->sku;
    e.quantity = c->quantity;
    jl_decision_emit(out, &e.base);
}

static void emit_rejected(const Inventory__ReserveStock *c, const char *rid, const char *oid,
                          const char *reason, jl_decision *out)
{
    Inventory__ReservationRejected e = INVENTORY__RESERVATION_REJECTED__INIT;
    e.reservation_id = (char *)rid;
    e.order_id = (char *)oid;
    e.reason = (char *)reason;
    e.n_lines = c->n_lines;
    e.lines = c->lines;
    jl_decision_emit(out, &e.base);
}

/* True when open reservation @p r is for order @p oid with exactly the lines of @p c (in any
 * order; @p c has no sku twice). */
static bool same_reservation(const inventory_state *s, const inventory_reservation *r,
                             const uint8_t oid[16], const Inventory__ReserveStock *c)
{
    if (memcmp(r->order_id, oid, 16) != 0 || r->n_lines != c->n_lines)
        return false;
    for (size_t i = 0; i < c->n_lines; i++) {
        uint32_t k = 0;
        while (k < r->n_lines) {
            const inventory_line *l = &s->lines[r->first_line + k];
            if (strcmp(s->products[l->product].sku, c->lines[i]->sku) == 0 &&
                (int64_t)l->quantity == (int64_t)c->lines[i]->quantity)
                break;
            k++;
        }
        if (k == r->n_lines)
            return false;
    }
    return true;
}

static void decide_reserve(const inventory_state *s, const jl_command *cmd, jl_decision *out)
{
    const Inventory__ReserveStock *c = (const Inventory__ReserveStock *)cmd->msg;
    uint8_t rid[16], oid[16];
    char rid_text[UUID_TEXT + 1], oid_text[UUID_TEXT + 1];
    char reason[256];

    if (!check_uuid(out, "reservation_id", c->reservation_id, rid) ||
        !check_uuid(out, "order_id", c->order_id, oid))
        return;
    if (c->n_lines == 0) {
        jl_decision_reject(out, JL_CODE_INVALID, "a reservation needs at least one line");
        return;
    }
    if (c->n_lines > INVENTORY_MAX_LINES) {
        jl_decision_reject(out, JL_CODE_INVALID, "a reservation holds at most %d lines",
                           INVENTORY_MAX_LINES);
        return;
    }
    for (size_t i = 0; i < c->n_lines; i++) {
        const Inventory__ReservationLine *l = c->lines[i];
        char field[48]; /* "lines[<size_t>].quantity" */
        snprintf(field, sizeof(field), "lines[%zu].sku", i);
        if (!jl_check_text(out, field, l->sku, INVENTORY_MAX_SKU))
            return;
        snprintf(field, sizeof(field), "lines[%zu].quantity", i);
        if (!check_quantity(out, field, l->quantity))
            return;
        /* One line per sku: two would make "available" ambiguous and double-count. */
        for (size_t j = 0; j < i; j++) {
            if (strcmp(c->lines[j]->sku, l->sku) == 0) {
                jl_decision_reject(out, JL_CODE_INVALID, "sku %s appears twice in the reservation",
                                   l->sku);
                return;
            }
        }
    }

    /* Reserved before, whatever came of it: no second effect. But an open id asked for another
     * order or other lines is a mistake, not a repeat: "ok" would say stock is held that is
     * not. (A closed id's order and lines are not kept: it is taken as a repeat.) */
    uint32_t held = find_open(s, rid);
    if (held < s->n_open && !same_reservation(s, &s->open[held], oid, c)) {
        uuid_format(rid, rid_text);
        jl_decision_reject(out, JL_CODE_RULE_VIOLATION,
                           "reservation %s is already held, for another order or other lines",
                           rid_text);
        return;
    }
    if (held < s->n_open || find_closed(s, rid) != 0)
        return;

    uuid_format(rid, rid_text);
    uuid_format(oid, oid_text);
    for (size_t i = 0; i < c->n_lines; i++) {
        const Inventory__ReservationLine *l = c->lines[i];
        uint32_t at = find_product(s, l->sku);
        if (at == s->n_products) {
            snprintf(reason, sizeof(reason), "unknown sku %s", l->sku);
            emit_rejected(c, rid_text, oid_text, reason, out);
            return;
        }
        if (available(&s->products[at]) < l->quantity) {
            snprintf(reason, sizeof(reason),
                     "insufficient stock for sku %s: available %lld, requested %lld", l->sku,
                     (long long)available(&s->products[at]), (long long)l->quantity);
            emit_rejected(c, rid_text, oid_text, reason, out);
            return;
        }
    }
    /* Capacity is the state's bound, not an outcome of the order: a rejection (an event, the
     * id closed for good) would cancel an order for stock that is there, because others had
     * not been committed yet. "Not now" instead: no event, the id stays free, and the sender
     * tries again (a process manager's outbox does, behind nothing but that order's own
     * commands) once commits and releases have made room. */
    if (s->n_open >= INVENTORY_MAX_OPEN) {
        jl_decision_reject(out, JL_CODE_UNAVAILABLE,
                           "the warehouse holds %d open reservations, its maximum: try again "
                           "once some are committed or released",
                           INVENTORY_MAX_OPEN);
        return;
    }
    if (s->n_open_lines + c->n_lines > INVENTORY_MAX_OPEN_LINES) {
        jl_decision_reject(out, JL_CODE_UNAVAILABLE,
                           "open reservations would hold more than %d lines, the warehouse's "
                           "maximum: try again once some are committed or released",
                           INVENTORY_MAX_OPEN_LINES);
        return;
    }

    Inventory__StockReserved e = INVENTORY__STOCK_RESERVED__INIT;
    e.reservation_id = rid_text;
    e.order_id = oid_text;
    e.n_lines = c->n_lines;
    e.lines = c->lines;
    jl_decision_emit(out, &e.base);
}

/* The stored lines of open reservation @p r as protobuf lines (pointing into @p s). */
static size_t stored_lines(const inventory_state *s, const inventory_reservation *r,
                           Inventory__ReservationLine lines[INVENTORY_MAX_LINES],
                           Inventory__ReservationLine *ptrs[INVENTORY_MAX_LINES])
{
    assert(r->n_lines <= INVENTORY_MAX_LINES);
    for (uint32_t i = 0; i < r->n_lines; i++) {
        const inventory_line *l = &s->lines[r->first_line + i];
        inventory__reservation_line__init(&lines[i]);
        lines[i].sku = (char *)s->products[l->product].sku;
        lines[i].quantity = l->quantity;
        ptrs[i] = &lines[i];
    }
    return r->n_lines;
}

/*
 * Release and Commit share their lookup: which of open / closed (how) / unknown the reservation
 * is. Returns the open index, or s->n_open after having answered (rejected or accepted with no
 * event).
 */
static uint32_t open_or_answer(const inventory_state *s, const uint8_t rid[16], const char *text,
                               inventory_outcome wanted, jl_decision *out)
{
    uint32_t at = find_open(s, rid);
    if (at < s->n_open)
        return at;
    int how = find_closed(s, rid);
    if (how == 0) {
        jl_decision_reject(out, JL_CODE_NOT_FOUND, "reservation %s does not exist", text);
    } else if ((inventory_outcome)how == wanted ||
               (wanted == INVENTORY_RELEASED && how == INVENTORY_REJECTED)) {
        /* Done before (or nothing was held): the same end state, no second effect. */
    } else {
        jl_decision_reject(out, JL_CODE_RULE_VIOLATION, "reservation %s is %s: it cannot be %s",
                           text, inventory_outcome_str((inventory_outcome)how),
                           wanted == INVENTORY_RELEASED ? "released" : "committed");
    }
    return s->n_open;
}

static void decide_release(const inventory_state *s, const jl_command *cmd, jl_decision *out)
{
    const Inventory__ReleaseReservation *c = (const Inventory__ReleaseReservation *)cmd->msg;
    uint8_t rid[16];
    char rid_text[UUID_TEXT + 1], oid_text[UUID_TEXT + 1];
    Inventory__ReservationLine lines[INVENTORY_MAX_LINES];
    Inventory__ReservationLine *ptrs[INVENTORY_MAX_LINES];

    if (!check_uuid(out, "reservation_id", c->reservation_id, rid))
        return;
    if (!jl_check_optional_text(out, "reason", c->reason, INVENTORY_MAX_REASON))
        return;
    uuid_format(rid, rid_text);
    uint32_t at = open_or_answer(s, rid, rid_text, INVENTORY_RELEASED, out);
    if (at == s->n_open)
        return;
    const inventory_reservation *r = &s->open[at];
    uuid_format(r->order_id, oid_text);
    Inventory__ReservationReleased e = INVENTORY__RESERVATION_RELEASED__INIT;
    e.reservation_id = rid_text;
    e.order_id = oid_text;
    e.n_lines = stored_lines(s, r, lines, ptrs);
    e.lines = ptrs;
    e.reason = jl_text_or_empty(c->reason);
    jl_decision_emit(out, &e.base);
}

static void decide_commit(const inventory_state *s, const jl_command *cmd, jl_decision *out)
{
    const Inventory__CommitReservation *c = (const Inventory__CommitReservation *)cmd->msg;
    uint8_t rid[16];
    char rid_text[UUID_TEXT + 1], oid_text[UUID_TEXT + 1];
    Inventory__ReservationLine lines[INVENTORY_MAX_LINES];
    Inventory__ReservationLine *ptrs[INVENTORY_MAX_LINES];

    if (!check_uuid(out, "reservation_id", c->reservation_id, rid))
        return;
    uuid_format(rid, rid_text);
    uint32_t at = open_or_answer(s, rid, rid_text, INVENTORY_COMMITTED, out);
    if (at == s->n_open)
        return;
    const inventory_reservation *r = &s->open[at];
    uuid_format(r->order_id, oid_text);
    Inventory__ReservationCommitted e = INVENTORY__RESERVATION_COMMITTED__INIT;
    e.reservation_id = rid_text;
    e.order_id = oid_text;
    e.n_lines = stored_lines(s, r, lines, ptrs);
    e.lines = ptrs;
    jl_decision_emit(out, &e.base);
}

typedef void (*decide_fn)(const inventory_state *s, const jl_command *cmd, jl_decision *out);

static const struct {
    const ProtobufCMessageDescriptor *type;
    decide_fn fn;
} commands[] = {
    {&inventory__register_product__descriptor, decide_register},
    {&inventory__restock__descriptor, decide_restock},
    {&inventory__reserve_stock__descriptor, decide_reserve},
    {&inventory__release_reservation__descriptor, decide_release},
    {&inventory__commit_reservation__descriptor, decide_commit},
};

void inventory_decide(const void *state, const jl_command *cmd, jl_decision *out)
{
    assert(state != NULL && cmd != NULL && out != NULL);
    assert(cmd->msg != NULL && cmd->msg->descriptor != NULL && cmd->aggregate_id != NULL);
    const inventory_state *s = state;
    assert(s->n_products <= INVENTORY_MAX_PRODUCTS && s->n_open <= INVENTORY_MAX_OPEN &&
           s->n_open_lines <= INVENTORY_MAX_OPEN_LINES && s->n_closed <= INVENTORY_MAX_CLOSED);

    for (size_t i = 0; i < JL_COUNT(commands); i++) {
        if (cmd->msg->descriptor != commands[i].type)
            continue;
        /* One warehouse holds all the stock (see domain.h): another id would silently start a
         * second, empty one that no read model expects. */
        if (strcmp(cmd->aggregate_id, INVENTORY_WAREHOUSE_ID) != 0) {
            jl_decision_reject(out, JL_CODE_NOT_FOUND,
                               "warehouse %.64s does not exist: the only one is %s",
                               cmd->aggregate_id, INVENTORY_WAREHOUSE_ID);
            return;
        }
        commands[i].fn(s, cmd, out);
        return;
    }
    jl_decision_reject(out, JL_CODE_INVALID, "unknown command %s", cmd->msg->descriptor->name);
}

/* ---- evolve ---- */

/*
 * Every handler validates before it writes anything, so a refused event leaves the state as it
 * was. Handlers refuse only events that would break the state's own invariants (bounded text,
 * unique skus and ids, 0 <= reserved <= on_hand <= INVENTORY_MAX_ON_HAND, reserved = the sum of
 * the open lines, the caps); business rules such as "a name is required" are decide's.
 */

/* Remember @p id as closed with @p how, forgetting the oldest when the ring is full. */
static void remember_closed(inventory_state *s, const uint8_t id[16], inventory_outcome how)
{
    memcpy(s->closed_ids[s->closed_next], id, 16);
    s->closed_outcomes[s->closed_next] = (uint8_t)how;
    s->closed_next = (s->closed_next + 1) % INVENTORY_MAX_CLOSED;
    if (s->n_closed < INVENTORY_MAX_CLOSED)
        s->n_closed++;
}

/* Take open reservation @p at out, its units off reserved (and off on_hand for a commit). */
static void close_open(inventory_state *s, uint32_t at, inventory_outcome how)
{
    inventory_reservation r = s->open[at];
    for (uint32_t i = 0; i < r.n_lines; i++) {
        const inventory_line *l = &s->lines[r.first_line + i];
        inventory_product *p = &s->products[l->product];
        assert(p->reserved >= l->quantity && p->on_hand >= l->quantity);
        p->reserved -= l->quantity;
        if (how == INVENTORY_COMMITTED)
            p->on_hand -= l->quantity;
    }
    /* Lines and reservations stay back to back, in order, with zeroed vacated slots, so the
     * state equals, byte for byte, one that never held this reservation. */
    uint32_t tail = s->n_open_lines - r.first_line - r.n_lines;
    memmove(&s->lines[r.first_line], &s->lines[r.first_line + r.n_lines],
            tail * sizeof(s->lines[0]));
    s->n_open_lines -= r.n_lines;
    memset(&s->lines[s->n_open_lines], 0, r.n_lines * sizeof(s->lines[0]));
    memmove(&s->open[at], &s->open[at + 1], (s->n_open - at - 1) * sizeof(s->open[0]));
    s->n_open--;
    memset(&s->open[s->n_open], 0, sizeof(s->open[0]));
    for (uint32_t i = at; i < s->n_open; i++)
        s->open[i].first_line -= r.n_lines;
    remember_closed(s, r.id, how);
}

static jl_status evolve_registered(inventory_state *s, const ProtobufCMessage *m)
{
    const Inventory__ProductRegistered *e = (const Inventory__ProductRegistered *)m;
    size_t sn = jl_text_len(e->sku, INVENTORY_MAX_SKU);
    size_t nn = jl_text_len(e->name, INVENTORY_MAX_NAME);
    if (sn == 0 || sn > INVENTORY_MAX_SKU || nn > INVENTORY_MAX_NAME ||
        s->n_products >= INVENTORY_MAX_PRODUCTS || find_product(s, e->sku) < s->n_products)
        return JL_ERR_INVALID;
    inventory_product *p = &s->products[s->n_products++];
    jl_text_copy(p->sku, INVENTORY_MAX_SKU, e->sku, sn);
    jl_text_copy(p->name, INVENTORY_MAX_NAME, e->name, nn);
    p->on_hand = 0;
    p->reserved = 0;
    return JL_OK;
}

static jl_status evolve_restocked(inventory_state *s, const ProtobufCMessage *m)
{
    const Inventory__Restocked *e = (const Inventory__Restocked *)m;
    uint32_t at = find_product(s, jl_text_or_empty(e->sku));
    if (at == s->n_products || e->quantity <= 0 || e->quantity > INVENTORY_MAX_QUANTITY ||
        s->products[at].on_hand + e->quantity > INVENTORY_MAX_ON_HAND)
        return JL_ERR_INVALID;
    s->products[at].on_hand += e->quantity;
    return JL_OK;
}

/*
 * Check @p n lines against the state as one reservation would take them: known distinct skus,
 * quantities in range and available. Writes the product indexes to @p idx.
 */
static bool lines_fit(const inventory_state *s, Inventory__ReservationLine *const *lines, size_t n,
                      uint32_t idx[INVENTORY_MAX_LINES])
{
    if (n == 0 || n > INVENTORY_MAX_LINES)
        return false;
    for (size_t i = 0; i < n; i++) {
        uint32_t at = find_product(s, jl_text_or_empty(lines[i]->sku));
        int64_t q = lines[i]->quantity;
        if (at == s->n_products || q <= 0 || q > INVENTORY_MAX_QUANTITY ||
            available(&s->products[at]) < q)
            return false;
        for (size_t j = 0; j < i; j++) {
            if (idx[j] == at)
                return false;
        }
        idx[i] = at;
    }
    return true;
}

static jl_status evolve_reserved(inventory_state *s, const ProtobufCMessage *m)
{
    const Inventory__StockReserved *e = (const Inventory__StockReserved *)m;
    uint8_t rid[16], oid[16];
    uint32_t idx[INVENTORY_MAX_LINES];
    if (!uuid_parse(e->reservation_id, rid) || !uuid_parse(e->order_id, oid) ||
        find_open(s, rid) < s->n_open || find_closed(s, rid) != 0 ||
        s->n_open >= INVENTORY_MAX_OPEN ||
        e->n_lines > INVENTORY_MAX_OPEN_LINES - s->n_open_lines ||
        !lines_fit(s, e->lines, e->n_lines, idx))
        return JL_ERR_INVALID;
    inventory_reservation *r = &s->open[s->n_open++];
    memcpy(r->id, rid, 16);
    memcpy(r->order_id, oid, 16);
    r->first_line = s->n_open_lines;
    r->n_lines = (uint32_t)e->n_lines;
    for (size_t i = 0; i < e->n_lines; i++) {
        inventory_line *l = &s->lines[s->n_open_lines++];
        l->product = idx[i];
        l->quantity = (uint32_t)e->lines[i]->quantity;
        s->products[idx[i]].reserved += e->lines[i]->quantity;
    }
    return JL_OK;
}

static jl_status evolve_rejected(inventory_state *s, const ProtobufCMessage *m)
{
    const Inventory__ReservationRejected *e = (const Inventory__ReservationRejected *)m;
    uint8_t rid[16];
    if (!uuid_parse(e->reservation_id, rid) || find_open(s, rid) < s->n_open ||
        find_closed(s, rid) != 0)
        return JL_ERR_INVALID;
    remember_closed(s, rid, INVENTORY_REJECTED);
    return JL_OK;
}

static jl_status evolve_close(inventory_state *s, const char *reservation_id, inventory_outcome how)
{
    uint8_t rid[16];
    if (!uuid_parse(reservation_id, rid))
        return JL_ERR_INVALID;
    uint32_t at = find_open(s, rid);
    if (at == s->n_open)
        return JL_ERR_INVALID;
    close_open(s, at, how);
    return JL_OK;
}

static jl_status evolve_released(inventory_state *s, const ProtobufCMessage *m)
{
    const Inventory__ReservationReleased *e = (const Inventory__ReservationReleased *)m;
    return evolve_close(s, e->reservation_id, INVENTORY_RELEASED);
}

static jl_status evolve_committed(inventory_state *s, const ProtobufCMessage *m)
{
    const Inventory__ReservationCommitted *e = (const Inventory__ReservationCommitted *)m;
    return evolve_close(s, e->reservation_id, INVENTORY_COMMITTED);
}

typedef jl_status (*evolve_fn)(inventory_state *s, const ProtobufCMessage *m);

static const struct {
    const ProtobufCMessageDescriptor *type;
    evolve_fn fn;
} events[] = {
    {&inventory__product_registered__descriptor, evolve_registered},
    {&inventory__restocked__descriptor, evolve_restocked},
    {&inventory__stock_reserved__descriptor, evolve_reserved},
    {&inventory__reservation_rejected__descriptor, evolve_rejected},
    {&inventory__reservation_released__descriptor, evolve_released},
    {&inventory__reservation_committed__descriptor, evolve_committed},
};

jl_status inventory_evolve(void *state, const jl_event *ev)
{
    assert(state != NULL && ev != NULL && ev->payload != NULL);
    inventory_state *s = state;
    assert(s->n_products <= INVENTORY_MAX_PRODUCTS && s->n_open <= INVENTORY_MAX_OPEN &&
           s->n_open_lines <= INVENTORY_MAX_OPEN_LINES && s->n_closed <= INVENTORY_MAX_CLOSED);

    for (size_t i = 0; i < JL_COUNT(events); i++) {
        if (ev->payload->descriptor == events[i].type)
            return events[i].fn(s, ev->payload);
    }
    return JL_ERR_UNKNOWN_TYPE;
}

/* ---- the state as protobuf (snapshots and GetState) ---- */

/* Too large for the stack (about 700 KiB): allocated for one pack and freed after it. */
typedef struct pack_scratch {
    Inventory__ProductStock products[INVENTORY_MAX_PRODUCTS];
    Inventory__ProductStock *product_ptrs[INVENTORY_MAX_PRODUCTS];
    Inventory__OpenReservation open[INVENTORY_MAX_OPEN];
    Inventory__OpenReservation *open_ptrs[INVENTORY_MAX_OPEN];
    Inventory__ReservationLine lines[INVENTORY_MAX_OPEN_LINES];
    Inventory__ReservationLine *line_ptrs[INVENTORY_MAX_OPEN_LINES];
    Inventory__ClosedReservation closed[INVENTORY_MAX_CLOSED];
    Inventory__ClosedReservation *closed_ptrs[INVENTORY_MAX_CLOSED];
    char open_ids[INVENTORY_MAX_OPEN][UUID_TEXT + 1];
    char order_ids[INVENTORY_MAX_OPEN][UUID_TEXT + 1];
    char closed_ids[INVENTORY_MAX_CLOSED][UUID_TEXT + 1];
} pack_scratch;

jl_status inventory_state_pack(const void *state, jl_buf *out)
{
    const inventory_state *s = state;
    Inventory__WarehouseState m = INVENTORY__WAREHOUSE_STATE__INIT;
    assert(s->n_products <= INVENTORY_MAX_PRODUCTS && s->n_open <= INVENTORY_MAX_OPEN &&
           s->n_open_lines <= INVENTORY_MAX_OPEN_LINES && s->n_closed <= INVENTORY_MAX_CLOSED);
    jl_buf_reset(out);
    pack_scratch *x = malloc(sizeof(*x));
    if (x == NULL)
        return JL_ERR_NOMEM;

    for (uint32_t i = 0; i < s->n_products; i++) {
        const inventory_product *p = &s->products[i];
        inventory__product_stock__init(&x->products[i]);
        x->products[i].sku = (char *)p->sku;
        x->products[i].name = (char *)p->name;
        x->products[i].on_hand = p->on_hand;
        x->products[i].reserved = p->reserved;
        x->product_ptrs[i] = &x->products[i];
    }
    m.n_products = s->n_products;
    m.products = x->product_ptrs;

    for (uint32_t i = 0; i < s->n_open_lines; i++) {
        inventory__reservation_line__init(&x->lines[i]);
        x->lines[i].sku = (char *)s->products[s->lines[i].product].sku;
        x->lines[i].quantity = s->lines[i].quantity;
        x->line_ptrs[i] = &x->lines[i];
    }
    for (uint32_t i = 0; i < s->n_open; i++) {
        const inventory_reservation *r = &s->open[i];
        inventory__open_reservation__init(&x->open[i]);
        uuid_format(r->id, x->open_ids[i]);
        uuid_format(r->order_id, x->order_ids[i]);
        x->open[i].reservation_id = x->open_ids[i];
        x->open[i].order_id = x->order_ids[i];
        x->open[i].n_lines = r->n_lines;
        x->open[i].lines = &x->line_ptrs[r->first_line];
        x->open_ptrs[i] = &x->open[i];
    }
    m.n_open_reservations = s->n_open;
    m.open_reservations = x->open_ptrs;

    /* Oldest first, so unpacking refills the ring in the order it forgets. */
    uint32_t start = (s->closed_next + INVENTORY_MAX_CLOSED - s->n_closed) % INVENTORY_MAX_CLOSED;
    for (uint32_t k = 0; k < s->n_closed; k++) {
        uint32_t slot = (start + k) % INVENTORY_MAX_CLOSED;
        inventory__closed_reservation__init(&x->closed[k]);
        uuid_format(s->closed_ids[slot], x->closed_ids[k]);
        x->closed[k].reservation_id = x->closed_ids[k];
        x->closed[k].outcome =
            (char *)inventory_outcome_str((inventory_outcome)s->closed_outcomes[slot]);
        x->closed_ptrs[k] = &x->closed[k];
    }
    m.n_closed_reservations = s->n_closed;
    m.closed_reservations = x->closed_ptrs;

    jl_status st = jl_buf_pack(out, &m.base);
    free(x);
    return st;
}

static int compare_ids(const void *a, const void *b)
{
    return memcmp(a, b, 16);
}

/* The products of @p m into @p s; checks text, duplicates and 0 <= reserved <= on_hand. */
static jl_status unpack_products(inventory_state *s, const Inventory__WarehouseState *m)
{
    if (m->n_products > INVENTORY_MAX_PRODUCTS)
        return JL_ERR_INVALID;
    for (size_t i = 0; i < m->n_products; i++) {
        const Inventory__ProductStock *p = m->products[i];
        size_t sn = jl_text_len(p->sku, INVENTORY_MAX_SKU);
        size_t nn = jl_text_len(p->name, INVENTORY_MAX_NAME);
        if (sn == 0 || sn > INVENTORY_MAX_SKU || nn > INVENTORY_MAX_NAME ||
            find_product(s, p->sku) < s->n_products || p->on_hand < 0 ||
            p->on_hand > INVENTORY_MAX_ON_HAND || p->reserved < 0 || p->reserved > p->on_hand)
            return JL_ERR_INVALID;
        inventory_product *q = &s->products[s->n_products++];
        jl_text_copy(q->sku, INVENTORY_MAX_SKU, p->sku, sn);
        jl_text_copy(q->name, INVENTORY_MAX_NAME, p->name, nn);
        q->on_hand = p->on_hand;
        q->reserved = p->reserved;
    }
    return JL_OK;
}

/*
 * The open reservations of @p m into @p s. Their lines must account for exactly each product's
 * reserved units, so the state stays one that evolve could have built.
 */
static jl_status unpack_open(inventory_state *s, const Inventory__WarehouseState *m)
{
    int64_t held[INVENTORY_MAX_PRODUCTS] = {0};
    if (m->n_open_reservations > INVENTORY_MAX_OPEN)
        return JL_ERR_INVALID;
    for (size_t i = 0; i < m->n_open_reservations; i++) {
        const Inventory__OpenReservation *o = m->open_reservations[i];
        inventory_reservation *r = &s->open[i];
        uint32_t idx[INVENTORY_MAX_LINES];
        if (!uuid_parse(o->reservation_id, r->id) || !uuid_parse(o->order_id, r->order_id) ||
            o->n_lines == 0 || o->n_lines > INVENTORY_MAX_LINES ||
            o->n_lines > INVENTORY_MAX_OPEN_LINES - s->n_open_lines)
            return JL_ERR_INVALID;
        for (size_t k = 0; k < o->n_lines; k++) {
            const Inventory__ReservationLine *l = o->lines[k];
            uint32_t at = find_product(s, jl_text_or_empty(l->sku));
            if (at == s->n_products || l->quantity <= 0 || l->quantity > INVENTORY_MAX_QUANTITY)
                return JL_ERR_INVALID;
            for (size_t j = 0; j < k; j++) {
                if (idx[j] == at)
                    return JL_ERR_INVALID;
            }
            idx[k] = at;
            held[at] += l->quantity;
            s->lines[s->n_open_lines + k].product = at;
            s->lines[s->n_open_lines + k].quantity = (uint32_t)l->quantity;
        }
        r->first_line = s->n_open_lines;
        r->n_lines = (uint32_t)o->n_lines;
        s->n_open_lines += r->n_lines;
        s->n_open++;
    }
    for (uint32_t i = 0; i < s->n_products; i++) {
        if (held[i] != s->products[i].reserved)
            return JL_ERR_INVALID;
    }
    return JL_OK;
}

static jl_status unpack_closed(inventory_state *s, const Inventory__WarehouseState *m)
{
    if (m->n_closed_reservations > INVENTORY_MAX_CLOSED)
        return JL_ERR_INVALID;
    for (size_t i = 0; i < m->n_closed_reservations; i++) {
        const Inventory__ClosedReservation *c = m->closed_reservations[i];
        uint8_t id[16];
        int how = 0;
        for (int k = INVENTORY_REJECTED; k <= INVENTORY_COMMITTED; k++) {
            if (strcmp(jl_text_or_empty(c->outcome), inventory_outcome_str((inventory_outcome)k)) ==
                0)
                how = k;
        }
        if (how == 0 || !uuid_parse(c->reservation_id, id))
            return JL_ERR_INVALID;
        remember_closed(s, id, (inventory_outcome)how);
    }
    return JL_OK;
}

/* No id twice among open and remembered reservations: sorted, then neighbours compared. */
static jl_status check_unique_ids(const inventory_state *s)
{
    size_t n = 0;
    uint8_t(*ids)[16] = malloc((INVENTORY_MAX_OPEN + INVENTORY_MAX_CLOSED) * sizeof(*ids));
    if (ids == NULL)
        return JL_ERR_NOMEM;
    for (uint32_t i = 0; i < s->n_open; i++)
        memcpy(ids[n++], s->open[i].id, 16);
    for (uint32_t i = 0; i < s->n_closed; i++)
        memcpy(ids[n++], s->closed_ids[i], 16);
    qsort(ids, n, sizeof(*ids), compare_ids);
    jl_status st = JL_OK;
    for (size_t i = 1; i < n && st == JL_OK; i++) {
        if (memcmp(ids[i - 1], ids[i], 16) == 0)
            st = JL_ERR_INVALID;
    }
    free(ids);
    return st;
}

jl_status inventory_state_unpack(void *state, const void *data, size_t len)
{
    inventory_state *s = state;
    Inventory__WarehouseState *m = inventory__warehouse_state__unpack(NULL, len, data);
    if (m == NULL)
        return JL_ERR_DECODE;
    inventory_state_init(s);
    jl_status st = unpack_products(s, m);
    if (st == JL_OK)
        st = unpack_open(s, m);
    if (st == JL_OK)
        st = unpack_closed(s, m);
    if (st == JL_OK)
        st = check_unique_ids(s);
    if (st != JL_OK)
        inventory_state_init(s);
    inventory__warehouse_state__free_unpacked(m, NULL);
    return st;
}
