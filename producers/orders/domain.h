/*
 * The orders aggregate: its state and the two pure functions that are its business rules.
 *
 * decide(state, command) -> events or a rejection; evolve(state, event) -> state.
 * No I/O, no clock, no allocation that outlives a call: unit-tested in tests/unit/test_orders_domain.c.
 */
#ifndef JETLEDGER_ORDERS_DOMAIN_H
#define JETLEDGER_ORDERS_DOMAIN_H

#include <stddef.h>
#include <stdint.h>

#include "jetledger/domain.h"
#include "orders/orders.pb-c.h"

#define ORDERS_MAX_ITEMS 50           /**< distinct skus on one order */
#define ORDERS_MAX_TEXT 64            /**< bytes in a customer id, sku or reason */
#define ORDERS_MAX_QUANTITY 1000000   /**< per line, after merging */
#define ORDERS_MAX_PRICE_CENTS 100000000000LL /**< per unit: keeps totals far from overflow */

typedef enum orders_status {
    ORDERS_STATUS_NONE = 0, /**< no such order yet */
    ORDERS_STATUS_OPEN,
    ORDERS_STATUS_PLACED,
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

/** "open", "placed", "cancelled" (or "none"). */
const char *orders_status_str(orders_status s);

/** Set @p state (an orders_state) to "no order". */
void orders_state_init(void *state);

/**
 * Apply one event to @p state (an orders_state).
 * @return JL_OK; JL_ERR_UNKNOWN_TYPE for an event type this aggregate does not know;
 *         JL_ERR_INVALID for an event that cannot follow the current state (e.g. too many items).
 */
jl_status orders_evolve(void *state, const jl_event *ev);

/**
 * Decide what command @p cmd does to @p state (an orders_state): emit events into @p out, or
 * reject with a code and message. @p cmd->msg is one of the five orders commands.
 */
void orders_decide(const void *state, const jl_command *cmd, jl_decision *out);

#endif /* JETLEDGER_ORDERS_DOMAIN_H */
