/*
 * The orders aggregate: its state and the two pure functions that are its business rules.
 *
 * decide(state, command) -> events or a rejection; evolve(state, event) -> state.
 * No I/O, no clock, no allocation that outlives a call: unit-tested in
 * tests/unit/test_orders_domain.c.
 */
#ifndef JETLEDGER_ORDERS_DOMAIN_H
#define JETLEDGER_ORDERS_DOMAIN_H

#include <stddef.h>
#include <stdint.h>

#include "jetledger/domain.h"
#include "orders/orders.pb-c.h"

#define ORDERS_MAX_ITEMS 50         /**< distinct skus on one order */
#define ORDERS_MAX_TEXT 64          /**< bytes in a customer id or sku (stored in the state) */
#define ORDERS_MAX_REASON 256       /**< bytes in a cancellation reason (not stored) */
#define ORDERS_MAX_QUANTITY 1000000 /**< per line, after merging */
#define ORDERS_MAX_PRICE_CENTS 100000000000LL /**< per unit: keeps totals far from overflow */

typedef enum orders_status {
    ORDERS_STATUS_NONE = 0, /**< no such order yet */
    ORDERS_STATUS_OPEN,
    ORDERS_STATUS_PLACED,
    ORDERS_STATUS_CONFIRMED, /**< placed, and its stock reserved (ConfirmOrder) */
    ORDERS_STATUS_CANCELLED,
} orders_status;

typedef struct orders_item {
    char sku[ORDERS_MAX_TEXT + 1];
    int32_t quantity;
    int64_t unit_price_cents;
} orders_item;

/** Plain data: copied with memcpy, no pointers, bounded size. */
typedef struct orders_state {
    orders_status status;
    char customer_id[ORDERS_MAX_TEXT + 1];
    size_t n_items;
    orders_item items[ORDERS_MAX_ITEMS];
} orders_state;

/**
 * "none", "open", "placed", "confirmed" or "cancelled" ("unknown" out of range). Static, never
 * NULL.
 */
const char *orders_status_str(orders_status s);

/** Set @p state (an orders_state) to "no order": all zero bytes, padding included. */
void orders_state_init(void *state);

/**
 * Apply one event to @p state (an orders_state).
 *
 * OrderCreated opens the order and records the customer; ItemAdded adds to the line of its sku
 * (same unit price) or appends a line; ItemRemoved drops the whole line, keeping the order of the
 * rest (no-op if the sku is absent); OrderPlaced, OrderConfirmed and OrderCancelled set the
 * status (OrderPlaced's lines repeat the state's and are not read).
 *
 * Evolve refuses only events that would break the state's invariants, whatever their content:
 * any event but OrderCreated before the order exists, OrderCreated on an existing order, text over
 * ORDERS_MAX_TEXT, an empty sku, quantity or price outside 1..ORDERS_MAX_QUANTITY /
 * 1..ORDERS_MAX_PRICE_CENTS (per line after merging), a second price for a sku, more than
 * ORDERS_MAX_ITEMS lines. Business transitions (e.g. no items after OrderPlaced) are decide's
 * and are not checked again, so history written under older rules still loads.
 *
 * @return JL_OK; JL_ERR_UNKNOWN_TYPE for an event type this aggregate does not know;
 *         JL_ERR_INVALID for an event that cannot follow the current state. On error the state
 *         is left unchanged.
 * @p ev is borrowed for the call. Pure; thread-safe on distinct states.
 */
jl_status orders_evolve(void *state, const jl_event *ev);

/**
 * Decide what command @p cmd does to @p state (an orders_state): emit events into @p out, or
 * reject with a code and message. @p state is never modified; no clock is read.
 *
 * Checks run in this order and the first failure wins: command type (anything but the six
 * orders commands: JL_CODE_INVALID), existence (CreateOrder on an existing order:
 * JL_CODE_RULE_VIOLATION; anything else on a missing one: JL_CODE_NOT_FOUND), field values
 * (JL_CODE_INVALID), status (JL_CODE_RULE_VIOLATION), then the order's lines. Text fields
 * must be UTF-8 with no control characters (jl_check_text()).
 *
 * - CreateOrder: customer_id 1..ORDERS_MAX_TEXT bytes. Emits OrderCreated.
 * - AddItem: sku 1..ORDERS_MAX_TEXT bytes, quantity 1..ORDERS_MAX_QUANTITY, unit price
 *   1..ORDERS_MAX_PRICE_CENTS; order open. A sku already on the order must have the same price
 *   (else RULE_VIOLATION) and the merged quantity stays <= ORDERS_MAX_QUANTITY (else INVALID);
 *   a new sku needs fewer than ORDERS_MAX_ITEMS lines (else RULE_VIOLATION). Emits ItemAdded
 *   with the command's values.
 * - RemoveItem: sku 1..ORDERS_MAX_TEXT bytes; order open; sku on the order (else NOT_FOUND).
 *   Emits ItemRemoved (the whole line).
 * - PlaceOrder: not cancelled, placed or confirmed, at least one line. Emits OrderPlaced with
 *   total_cents = sum of quantity * unit price, item_count = sum of quantities and the lines
 *   (sku, quantity, unit price) in the order they were added.
 * - ConfirmOrder: reservation_id a UUID (either case; the event carries it in lower case);
 *   order placed (open or cancelled: RULE_VIOLATION). Emits OrderConfirmed. On an order already
 *   confirmed it is accepted with no event, whatever its reservation_id (the state does not keep
 *   it), so a process manager may send it again safely.
 * - CancelOrder: reason 0..ORDERS_MAX_REASON bytes; not confirmed (open and placed orders can
 *   be). Emits OrderCancelled. On an order already cancelled it is accepted with no event, so
 *   that a process manager's abort racing a customer's cancellation is no refusal.
 *
 * Events carry order_id = @p cmd->aggregate_id. @p cmd is borrowed; @p out must be an
 * initialised, accepting decision. Pure; thread-safe on distinct decisions.
 */
void orders_decide(const void *state, const jl_command *cmd, jl_decision *out);

/**
 * Encode @p state (an orders_state) as an orders.OrderState into @p out (reset first).
 * @return JL_OK, or the buffer's JL_ERR_TOO_LARGE / JL_ERR_NOMEM.
 */
jl_status orders_state_pack(const void *state, jl_buf *out);

/**
 * Decode an orders.OrderState into @p state (an orders_state).
 * @return JL_OK; JL_ERR_DECODE for bytes that are not one; JL_ERR_INVALID for values the state
 *         cannot hold (too many lines, over-long text). On failure @p state is "no order".
 */
jl_status orders_state_unpack(void *state, const void *data, size_t len);

#endif /* JETLEDGER_ORDERS_DOMAIN_H */
