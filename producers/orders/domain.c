#include "domain.h"

#include <assert.h>
#include <stdbool.h>
#include <string.h>

#include "jetledger/codec.h"

/* Index of the line holding @p sku, or s->n_items when there is none. */
static size_t find_item(const orders_state *s, const char *sku)
{
    size_t i = 0;
    while (i < s->n_items && strcmp(s->items[i].sku, sku) != 0)
        i++;
    return i;
}

const char *orders_status_str(orders_status s)
{
    switch (s) {
    case ORDERS_STATUS_NONE:
        return "none";
    case ORDERS_STATUS_OPEN:
        return "open";
    case ORDERS_STATUS_PLACED:
        return "placed";
    case ORDERS_STATUS_CONFIRMED:
        return "confirmed";
    case ORDERS_STATUS_CANCELLED:
        return "cancelled";
    }
    return "unknown";
}

void orders_state_init(void *state)
{
    assert(state != NULL);
    /* memset rather than a compound literal: padding must be zero too for memcmp. */
    memset(state, 0, sizeof(orders_state));
}

/* ---- decide ---- */

/*
 * Each handler runs after the dispatcher has checked that the order exists (or, for
 * CreateOrder, that it does not). Checks go field values, then status, then lines, and the first
 * failure wins, so a client sees the most basic problem with its command first.
 */

static bool check_open(const orders_state *s, jl_decision *out)
{
    if (s->status == ORDERS_STATUS_OPEN)
        return true;
    jl_decision_reject(out, JL_CODE_RULE_VIOLATION, "order is %s: items can no longer change",
                       orders_status_str(s->status));
    return false;
}

static void decide_create(const orders_state *s, const jl_command *cmd, jl_decision *out)
{
    const Orders__CreateOrder *c = (const Orders__CreateOrder *)cmd->msg;
    (void)s;
    if (!jl_check_text(out, "customer_id", c->customer_id, ORDERS_MAX_TEXT))
        return;
    Orders__OrderCreated e = ORDERS__ORDER_CREATED__INIT;
    e.order_id = (char *)cmd->aggregate_id;
    e.customer_id = c->customer_id;
    jl_decision_emit(out, &e.base);
}

static void decide_add_item(const orders_state *s, const jl_command *cmd, jl_decision *out)
{
    const Orders__AddItem *c = (const Orders__AddItem *)cmd->msg;
    if (!jl_check_text(out, "sku", c->sku, ORDERS_MAX_TEXT))
        return;
    if (c->quantity <= 0) {
        jl_decision_reject(out, JL_CODE_INVALID, "quantity must be positive");
        return;
    }
    if (c->quantity > ORDERS_MAX_QUANTITY) {
        jl_decision_reject(out, JL_CODE_INVALID, "quantity must be at most %d",
                           ORDERS_MAX_QUANTITY);
        return;
    }
    if (c->unit_price_cents <= 0) {
        jl_decision_reject(out, JL_CODE_INVALID, "price must be positive");
        return;
    }
    if (c->unit_price_cents > ORDERS_MAX_PRICE_CENTS) {
        jl_decision_reject(out, JL_CODE_INVALID, "price must be at most %lld cents",
                           ORDERS_MAX_PRICE_CENTS);
        return;
    }
    if (!check_open(s, out))
        return;

    size_t at = find_item(s, c->sku);
    if (at < s->n_items) {
        const orders_item *line = &s->items[at];
        /* One price per line: a second price would make the line's total ambiguous. */
        if (line->unit_price_cents != c->unit_price_cents) {
            jl_decision_reject(out, JL_CODE_RULE_VIOLATION,
                               "sku %s is already on the order at another price", c->sku);
            return;
        }
        /* int64: both terms may be near INT32_MAX when the state was built by hand. */
        if ((int64_t)line->quantity + c->quantity > ORDERS_MAX_QUANTITY) {
            jl_decision_reject(out, JL_CODE_INVALID,
                               "sku %s would reach %lld units: at most %d per line", c->sku,
                               (long long)line->quantity + c->quantity, ORDERS_MAX_QUANTITY);
            return;
        }
    } else if (s->n_items >= ORDERS_MAX_ITEMS) {
        jl_decision_reject(out, JL_CODE_RULE_VIOLATION, "an order holds at most %d distinct skus",
                           ORDERS_MAX_ITEMS);
        return;
    }

    Orders__ItemAdded e = ORDERS__ITEM_ADDED__INIT;
    e.order_id = (char *)cmd->aggregate_id;
    e.sku = c->sku;
    e.quantity = c->quantity;
    e.unit_price_cents = c->unit_price_cents;
    jl_decision_emit(out, &e.base);
}

static void decide_remove_item(const orders_state *s, const jl_command *cmd, jl_decision *out)
{
    const Orders__RemoveItem *c = (const Orders__RemoveItem *)cmd->msg;
    if (!jl_check_text(out, "sku", c->sku, ORDERS_MAX_TEXT))
        return;
    if (!check_open(s, out))
        return;
    if (find_item(s, c->sku) == s->n_items) {
        jl_decision_reject(out, JL_CODE_NOT_FOUND, "sku %s is not on the order", c->sku);
        return;
    }
    Orders__ItemRemoved e = ORDERS__ITEM_REMOVED__INIT;
    e.order_id = (char *)cmd->aggregate_id;
    e.sku = c->sku;
    jl_decision_emit(out, &e.base);
}

static void decide_place(const orders_state *s, const jl_command *cmd, jl_decision *out)
{
    if (s->status == ORDERS_STATUS_CANCELLED) {
        jl_decision_reject(out, JL_CODE_RULE_VIOLATION, "a cancelled order cannot be placed");
        return;
    }
    if (s->status == ORDERS_STATUS_PLACED) {
        jl_decision_reject(out, JL_CODE_RULE_VIOLATION, "order is already placed");
        return;
    }
    if (s->status == ORDERS_STATUS_CONFIRMED) {
        jl_decision_reject(out, JL_CODE_RULE_VIOLATION, "order is already confirmed");
        return;
    }
    if (s->n_items == 0) {
        jl_decision_reject(out, JL_CODE_RULE_VIOLATION, "an empty order cannot be placed");
        return;
    }

    /*
     * The caps make overflow impossible for a state built by evolve (50 lines * 1e6 units *
     * 1e11 cents < INT64_MAX); the checked arithmetic covers a state built any other way, so
     * decide has no undefined behaviour on any input.
     */
    int64_t total = 0;
    int32_t count = 0;
    Orders__OrderLine lines[ORDERS_MAX_ITEMS];
    Orders__OrderLine *ptrs[ORDERS_MAX_ITEMS];
    for (size_t i = 0; i < s->n_items; i++) {
        const orders_item *it = &s->items[i];
        /* The lines travel with the event so that consumers (the fulfilment process manager,
         * the sales dashboard) need not rebuild the order from its ItemAdded/ItemRemoved. */
        orders__order_line__init(&lines[i]);
        lines[i].sku = (char *)it->sku;
        lines[i].quantity = it->quantity;
        lines[i].unit_price_cents = it->unit_price_cents;
        ptrs[i] = &lines[i];
        int64_t line_total;
        if (__builtin_mul_overflow((int64_t)it->quantity, it->unit_price_cents, &line_total) ||
            __builtin_add_overflow(total, line_total, &total) ||
            __builtin_add_overflow(count, it->quantity, &count)) {
            jl_decision_reject(out, JL_CODE_INTERNAL, "order total overflows");
            return;
        }
    }

    Orders__OrderPlaced e = ORDERS__ORDER_PLACED__INIT;
    e.order_id = (char *)cmd->aggregate_id;
    e.total_cents = total;
    e.item_count = count;
    e.n_lines = s->n_items;
    e.lines = ptrs;
    jl_decision_emit(out, &e.base);
}

static void decide_cancel(const orders_state *s, const jl_command *cmd, jl_decision *out)
{
    const Orders__CancelOrder *c = (const Orders__CancelOrder *)cmd->msg;
    if (!jl_check_optional_text(out, "reason", c->reason, ORDERS_MAX_REASON))
        return;
    /*
     * Accepted without an event, as a second confirmation is: cancelled is what was asked. A
     * process manager that aborts an order its customer cancelled meanwhile (it had not read
     * that yet) must not see a refusal it would take for a failed step.
     */
    if (s->status == ORDERS_STATUS_CANCELLED)
        return;
    /* Its stock is committed to it: undoing that is a return, not a cancellation. */
    if (s->status == ORDERS_STATUS_CONFIRMED) {
        jl_decision_reject(out, JL_CODE_RULE_VIOLATION, "a confirmed order cannot be cancelled");
        return;
    }
    Orders__OrderCancelled e = ORDERS__ORDER_CANCELLED__INIT;
    e.order_id = (char *)cmd->aggregate_id;
    e.reason = jl_text_or_empty(c->reason);
    jl_decision_emit(out, &e.base);
}

static void decide_confirm(const orders_state *s, const jl_command *cmd, jl_decision *out)
{
    const Orders__ConfirmOrder *c = (const Orders__ConfirmOrder *)cmd->msg;
    char rid[JL_UUID_LEN + 1];
    if (jl_text_len(c->reservation_id, JL_UUID_LEN) == 0) {
        jl_decision_reject(out, JL_CODE_INVALID, "reservation_id must not be empty");
        return;
    }
    if (jl_uuid_canonical(rid, c->reservation_id) != JL_OK) {
        jl_decision_reject(out, JL_CODE_INVALID, "reservation_id '%.64s' is not a UUID",
                           c->reservation_id);
        return;
    }
    /*
     * Accepted without an event: the process manager that confirms may send the command again
     * after a restart, and the second one must change nothing rather than fail.
     */
    if (s->status == ORDERS_STATUS_CONFIRMED)
        return;
    if (s->status == ORDERS_STATUS_CANCELLED) {
        jl_decision_reject(out, JL_CODE_RULE_VIOLATION, "a cancelled order cannot be confirmed");
        return;
    }
    if (s->status != ORDERS_STATUS_PLACED) {
        jl_decision_reject(out, JL_CODE_RULE_VIOLATION,
                           "order is %s: only a placed order can be confirmed",
                           orders_status_str(s->status));
        return;
    }
    Orders__OrderConfirmed e = ORDERS__ORDER_CONFIRMED__INIT;
    e.order_id = (char *)cmd->aggregate_id;
    e.reservation_id = rid;
    jl_decision_emit(out, &e.base);
}

typedef void (*decide_fn)(const orders_state *s, const jl_command *cmd, jl_decision *out);

static const struct {
    const ProtobufCMessageDescriptor *type;
    bool creates; /* valid only on an order that does not exist yet */
    decide_fn fn;
} commands[] = {
    {&orders__create_order__descriptor, true, decide_create},
    {&orders__add_item__descriptor, false, decide_add_item},
    {&orders__remove_item__descriptor, false, decide_remove_item},
    {&orders__place_order__descriptor, false, decide_place},
    {&orders__cancel_order__descriptor, false, decide_cancel},
    {&orders__confirm_order__descriptor, false, decide_confirm},
};

void orders_decide(const void *state, const jl_command *cmd, jl_decision *out)
{
    assert(state != NULL && cmd != NULL && out != NULL);
    assert(cmd->msg != NULL && cmd->msg->descriptor != NULL && cmd->aggregate_id != NULL);
    const orders_state *s = state;
    assert(s->n_items <= ORDERS_MAX_ITEMS);

    for (size_t i = 0; i < JL_COUNT(commands); i++) {
        if (cmd->msg->descriptor != commands[i].type)
            continue;
        /* Existence is checked here once, so no handler can forget it. */
        if (commands[i].creates && s->status != ORDERS_STATUS_NONE) {
            jl_decision_reject(out, JL_CODE_RULE_VIOLATION, "order %s already exists",
                               cmd->aggregate_id);
            return;
        }
        if (!commands[i].creates && s->status == ORDERS_STATUS_NONE) {
            jl_decision_reject(out, JL_CODE_NOT_FOUND, "order %s does not exist",
                               cmd->aggregate_id);
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
 * bounded and unique lines, positive capped numbers, NONE until created); business transitions
 * such as "no items after placing" are decide's to enforce and are not checked again here.
 */

static jl_status evolve_created(orders_state *s, const ProtobufCMessage *m)
{
    const Orders__OrderCreated *e = (const Orders__OrderCreated *)m;
    size_t n = jl_text_len(e->customer_id, ORDERS_MAX_TEXT);
    if (s->status != ORDERS_STATUS_NONE || n > ORDERS_MAX_TEXT)
        return JL_ERR_INVALID;
    s->status = ORDERS_STATUS_OPEN;
    jl_text_copy(s->customer_id, ORDERS_MAX_TEXT, e->customer_id, n);
    return JL_OK;
}

static jl_status evolve_item_added(orders_state *s, const ProtobufCMessage *m)
{
    const Orders__ItemAdded *e = (const Orders__ItemAdded *)m;
    size_t n = jl_text_len(e->sku, ORDERS_MAX_TEXT);
    if (s->status == ORDERS_STATUS_NONE || n == 0 || n > ORDERS_MAX_TEXT)
        return JL_ERR_INVALID;
    /* The caps on lines are what keep decide's totals from overflowing. */
    if (e->quantity <= 0 || e->quantity > ORDERS_MAX_QUANTITY || e->unit_price_cents <= 0 ||
        e->unit_price_cents > ORDERS_MAX_PRICE_CENTS)
        return JL_ERR_INVALID;

    size_t at = find_item(s, e->sku);
    if (at < s->n_items) {
        orders_item *line = &s->items[at];
        if (line->unit_price_cents != e->unit_price_cents ||
            (int64_t)line->quantity + e->quantity > ORDERS_MAX_QUANTITY)
            return JL_ERR_INVALID;
        line->quantity += e->quantity;
        return JL_OK;
    }
    if (s->n_items >= ORDERS_MAX_ITEMS)
        return JL_ERR_INVALID;
    orders_item *line = &s->items[s->n_items++];
    jl_text_copy(line->sku, ORDERS_MAX_TEXT, e->sku, n);
    line->quantity = e->quantity;
    line->unit_price_cents = e->unit_price_cents;
    return JL_OK;
}

static jl_status evolve_item_removed(orders_state *s, const ProtobufCMessage *m)
{
    const Orders__ItemRemoved *e = (const Orders__ItemRemoved *)m;
    if (s->status == ORDERS_STATUS_NONE)
        return JL_ERR_INVALID;
    size_t i = find_item(s, jl_text_or_empty(e->sku));
    /* Removing an absent line leaves the state as the event says it should be: nothing to do. */
    if (i == s->n_items)
        return JL_OK;
    /* memmove, not swap-with-last: lines keep the order they were added in. */
    memmove(&s->items[i], &s->items[i + 1], (s->n_items - i - 1) * sizeof(s->items[0]));
    s->n_items--;
    memset(&s->items[s->n_items], 0, sizeof(s->items[0]));
    return JL_OK;
}

static jl_status evolve_placed(orders_state *s, const ProtobufCMessage *m)
{
    (void)m;
    if (s->status == ORDERS_STATUS_NONE)
        return JL_ERR_INVALID;
    s->status = ORDERS_STATUS_PLACED;
    return JL_OK;
}

static jl_status evolve_confirmed(orders_state *s, const ProtobufCMessage *m)
{
    (void)m;
    if (s->status == ORDERS_STATUS_NONE)
        return JL_ERR_INVALID;
    s->status = ORDERS_STATUS_CONFIRMED;
    return JL_OK;
}

static jl_status evolve_cancelled(orders_state *s, const ProtobufCMessage *m)
{
    (void)m;
    if (s->status == ORDERS_STATUS_NONE)
        return JL_ERR_INVALID;
    s->status = ORDERS_STATUS_CANCELLED;
    return JL_OK;
}

typedef jl_status (*evolve_fn)(orders_state *s, const ProtobufCMessage *m);

static const struct {
    const ProtobufCMessageDescriptor *type;
    evolve_fn fn;
} events[] = {
    {&orders__order_created__descriptor, evolve_created},
    {&orders__item_added__descriptor, evolve_item_added},
    {&orders__item_removed__descriptor, evolve_item_removed},
    {&orders__order_placed__descriptor, evolve_placed},
    {&orders__order_cancelled__descriptor, evolve_cancelled},
    {&orders__order_confirmed__descriptor, evolve_confirmed},
};

jl_status orders_evolve(void *state, const jl_event *ev)
{
    assert(state != NULL && ev != NULL && ev->payload != NULL);
    orders_state *s = state;
    assert(s->n_items <= ORDERS_MAX_ITEMS);

    for (size_t i = 0; i < JL_COUNT(events); i++) {
        if (ev->payload->descriptor == events[i].type)
            return events[i].fn(s, ev->payload);
    }
    return JL_ERR_UNKNOWN_TYPE;
}

/* ---- the state as protobuf (snapshots and GetState) ---- */

jl_status orders_state_pack(const void *state, jl_buf *out)
{
    const orders_state *s = state;
    Orders__OrderState m = ORDERS__ORDER_STATE__INIT;
    Orders__OrderLine lines[ORDERS_MAX_ITEMS];
    Orders__OrderLine *ptrs[ORDERS_MAX_ITEMS];
    assert(s->n_items <= ORDERS_MAX_ITEMS);
    m.status = (char *)orders_status_str(s->status);
    m.customer_id = (char *)s->customer_id;
    for (size_t i = 0; i < s->n_items; i++) {
        orders__order_line__init(&lines[i]);
        lines[i].sku = (char *)s->items[i].sku;
        lines[i].quantity = s->items[i].quantity;
        lines[i].unit_price_cents = s->items[i].unit_price_cents;
        ptrs[i] = &lines[i];
    }
    m.n_lines = s->n_items;
    m.lines = ptrs;
    jl_buf_reset(out);
    return jl_buf_pack(out, &m.base);
}

jl_status orders_state_unpack(void *state, const void *data, size_t len)
{
    orders_state *s = state;
    jl_status st = JL_OK;
    Orders__OrderState *m = orders__order_state__unpack(NULL, len, data);
    if (m == NULL)
        return JL_ERR_DECODE;
    orders_state_init(s);
    /* CANCELLED is the last status. A name no status has (a damaged snapshot, or one written by
     * code that knew more statuses) is refused, never read as "no order": the producer then
     * replays the events instead, and a CreateOrder cannot slip in on an existing order. */
    int k = ORDERS_STATUS_NONE;
    while (k <= ORDERS_STATUS_CANCELLED && strcmp(m->status, orders_status_str((orders_status)k)))
        k++;
    size_t clen = jl_text_len(m->customer_id, ORDERS_MAX_TEXT);
    if (k > ORDERS_STATUS_CANCELLED || clen > ORDERS_MAX_TEXT || m->n_lines > ORDERS_MAX_ITEMS) {
        st = JL_ERR_INVALID;
        goto done;
    }
    s->status = (orders_status)k;
    jl_text_copy(s->customer_id, ORDERS_MAX_TEXT, m->customer_id, clen);
    for (size_t i = 0; i < m->n_lines; i++) {
        const Orders__OrderLine *l = m->lines[i];
        size_t slen = jl_text_len(l->sku, ORDERS_MAX_TEXT);
        /* What evolve accepts, no more: decide's overflow bounds rest on it. */
        if (slen == 0 || slen > ORDERS_MAX_TEXT || l->quantity <= 0 ||
            l->quantity > ORDERS_MAX_QUANTITY || l->unit_price_cents <= 0 ||
            l->unit_price_cents > ORDERS_MAX_PRICE_CENTS || find_item(s, l->sku) < s->n_items) {
            st = JL_ERR_INVALID;
            goto done;
        }
        jl_text_copy(s->items[i].sku, ORDERS_MAX_TEXT, l->sku, slen);
        s->items[i].quantity = l->quantity;
        s->items[i].unit_price_cents = l->unit_price_cents;
        s->n_items = i + 1; /* find_item() looks at the lines so far */
    }
done:
    if (st != JL_OK)
        orders_state_init(s);
    orders__order_state__free_unpacked(m, NULL);
    return st;
}
