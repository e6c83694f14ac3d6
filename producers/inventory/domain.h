/*
 * The inventory aggregate, the warehouse: its state and the two pure functions that are its
 * business rules.
 *
 * decide(state, command) -> events or a rejection; evolve(state, event) -> state.
 * No I/O, no clock, no allocation that outlives a call: unit-tested in
 * tests/unit/test_inventory_domain.c.
 *
 * Why one aggregate for all the stock. The rules are: a reservation succeeds for all its lines
 * or for none; stock never goes negative; a reservation is released or committed once; the same
 * reservation id reserved twice has no second effect. A reservation touches several skus, and
 * jetledger appends atomically and checks concurrency per aggregate (one subject each), so
 * all-or-none over several skus needs one aggregate holding every sku's stock. Every command
 * therefore targets the warehouse INVENTORY_WAREHOUSE_ID (the service makes it the default for
 * an empty warehouse_id, and decide refuses any other id). The price is that inventory commands
 * are serialised: one writer at a time, which is the consistency the rules ask for.
 *
 * The state is bounded plain data (sizeof(inventory_state), about 200 KiB, copied with memcpy
 * by the producer's cache), and its encoding (snapshots, GetState) stays under 700 KiB:
 * - at most INVENTORY_MAX_PRODUCTS skus, never removed;
 * - at most INVENTORY_MAX_OPEN open reservations holding together at most
 *   INVENTORY_MAX_OPEN_LINES lines (one shared pool, so a few large reservations do not cost
 *   every slot the room of the largest); a ReserveStock beyond them is refused "unavailable"
 *   (no event, the id not used up), to be sent again once commits and releases made room;
 * - the ids of the last INVENTORY_MAX_CLOSED closed reservations (rejected, released or
 *   committed), a ring: the oldest is forgotten first.
 *
 * Idempotency, from the state alone: a ReserveStock whose id is open or remembered as closed is
 * accepted with no event; a second Release of a released (or rejected) reservation and a second
 * Commit of a committed one likewise. Its limit: an id that has dropped out of the ring (more
 * than INVENTORY_MAX_CLOSED closures later) is unknown again, so a ReserveStock repeated that
 * late reserves anew. Command ids (the runtime's de-duplication) cover exact repeats besides.
 */
#ifndef JETLEDGER_INVENTORY_DOMAIN_H
#define JETLEDGER_INVENTORY_DOMAIN_H

#include <stddef.h>
#include <stdint.h>

#include "jetledger/domain.h"
#include "inventory/inventory.pb-c.h"

/** The one warehouse: the aggregate id every inventory command maps to. */
#define INVENTORY_WAREHOUSE_ID "00000000-0000-4000-8000-000000000001"

#define INVENTORY_MAX_PRODUCTS 256               /**< registered skus */
#define INVENTORY_MAX_SKU 64                     /**< bytes in a sku */
#define INVENTORY_MAX_NAME 128                   /**< bytes in a product name */
#define INVENTORY_MAX_REASON 256                 /**< bytes in a release reason (not stored) */
#define INVENTORY_MAX_QUANTITY 1000000000LL      /**< units in one restock or reservation line */
#define INVENTORY_MAX_ON_HAND 1000000000000000LL /**< units of one sku: far from overflow */
#define INVENTORY_MAX_LINES 64        /**< lines of one reservation (an order has at most 50) */
#define INVENTORY_MAX_OPEN 1024       /**< open reservations */
#define INVENTORY_MAX_OPEN_LINES 4096 /**< lines over all open reservations */
#define INVENTORY_MAX_CLOSED 4096     /**< closed reservation ids remembered */

typedef struct inventory_product {
    char sku[INVENTORY_MAX_SKU + 1];
    char name[INVENTORY_MAX_NAME + 1];
    int64_t on_hand;  /**< units in the warehouse, reserved ones included */
    int64_t reserved; /**< units held by open reservations: 0 <= reserved <= on_hand */
} inventory_product;

/** One reserved line: a product (index into products) and its units. */
typedef struct inventory_line {
    uint32_t product;
    uint32_t quantity; /**< 1..INVENTORY_MAX_QUANTITY */
} inventory_line;

typedef struct inventory_reservation {
    uint8_t id[16];       /**< reservation id, binary UUID */
    uint8_t order_id[16]; /**< binary UUID */
    uint32_t first_line;  /**< its lines are lines[first_line .. first_line + n_lines) */
    uint32_t n_lines;
} inventory_reservation;

/** How a reservation was closed. */
typedef enum inventory_outcome {
    INVENTORY_REJECTED = 1,
    INVENTORY_RELEASED = 2,
    INVENTORY_COMMITTED = 3,
} inventory_outcome;

/**
 * Plain data: copied with memcpy, no pointers, bounded size. Open reservations are kept in the
 * order they were made and their lines in the same order in the pool, back to back, so closing
 * one is two memmoves.
 */
typedef struct inventory_state {
    uint32_t n_products;
    uint32_t n_open;
    uint32_t n_open_lines;
    uint32_t n_closed;    /**< ids in the ring, <= INVENTORY_MAX_CLOSED */
    uint32_t closed_next; /**< ring slot the next closed id goes to (the oldest when full) */
    inventory_product products[INVENTORY_MAX_PRODUCTS];
    inventory_reservation open[INVENTORY_MAX_OPEN];
    inventory_line lines[INVENTORY_MAX_OPEN_LINES];
    uint8_t closed_ids[INVENTORY_MAX_CLOSED][16];
    uint8_t closed_outcomes[INVENTORY_MAX_CLOSED]; /**< inventory_outcome */
} inventory_state;

/** "rejected", "released" or "committed" ("unknown" out of range). Static, never NULL. */
const char *inventory_outcome_str(inventory_outcome o);

/** Set @p state (an inventory_state) to an empty warehouse: all zero bytes, padding included. */
void inventory_state_init(void *state);

/**
 * Apply one event to @p state (an inventory_state).
 *
 * ProductRegistered appends a product with no stock; Restocked adds to its on_hand;
 * StockReserved opens a reservation and adds its lines to the products' reserved units;
 * ReservationRejected remembers the id as closed; ReservationReleased and ReservationCommitted
 * close an open reservation (its lines as stored, not as the event lists them) and take its
 * units off reserved, and a commit off on_hand too. A closed id enters the ring of
 * INVENTORY_MAX_CLOSED, pushing out the oldest when it is full.
 *
 * Evolve refuses only events that would break the state's invariants: text that is empty (a sku)
 * or over its cap, a sku registered twice or more than INVENTORY_MAX_PRODUCTS, a restock of an
 * unknown sku or one taking on_hand past INVENTORY_MAX_ON_HAND, ids that are not UUIDs, a
 * reservation id already open or remembered, a reservation with no line, too many lines, a
 * repeated or unknown sku, a quantity outside 1..INVENTORY_MAX_QUANTITY or more than is
 * available, or beyond INVENTORY_MAX_OPEN / INVENTORY_MAX_OPEN_LINES; a release or commit of a
 * reservation that is not open. Business rules that leave the state sound (e.g. a name
 * required) are decide's and are not checked again.
 *
 * @return JL_OK; JL_ERR_UNKNOWN_TYPE for an event type this aggregate does not know;
 *         JL_ERR_INVALID for an event that cannot follow the current state. On error the state
 *         is left unchanged.
 * @p ev is borrowed for the call. Pure; thread-safe on distinct states.
 */
jl_status inventory_evolve(void *state, const jl_event *ev);

/**
 * Decide what command @p cmd does to @p state (an inventory_state): emit events into @p out, or
 * reject with a code and message. @p state is never modified; no clock is read.
 *
 * Checks run in this order and the first failure wins: command type (anything but the five
 * inventory commands: JL_CODE_INVALID), warehouse (an aggregate id other than
 * INVENTORY_WAREHOUSE_ID: JL_CODE_NOT_FOUND), field values (JL_CODE_INVALID), then the state.
 * Text fields must be UTF-8 with no control characters (jl_check_text()).
 *
 * - RegisterProduct: sku 1..INVENTORY_MAX_SKU bytes, name 1..INVENTORY_MAX_NAME bytes; sku not
 *   registered yet (else RULE_VIOLATION); fewer than INVENTORY_MAX_PRODUCTS skus (else
 *   RULE_VIOLATION). Emits ProductRegistered.
 * - Restock: sku as above, quantity 1..INVENTORY_MAX_QUANTITY; sku registered (else
 *   NOT_FOUND); on_hand stays <= INVENTORY_MAX_ON_HAND (else INVALID). Emits Restocked.
 * - ReserveStock: reservation_id and order_id UUIDs (either case), 1..INVENTORY_MAX_LINES
 *   lines, each with a sku as above and quantity 1..INVENTORY_MAX_QUANTITY, no sku twice (all
 *   INVALID). A reservation id open for the same order and lines, or remembered as closed:
 *   accepted with no event; open for another order or other lines: RULE_VIOLATION. No room
 *   for another open reservation or its lines: UNAVAILABLE, no event, the id not used up (to
 *   be sent again). Otherwise the outcome is an event, never a rejection, so a process manager
 *   reads it from the stream: ReservationRejected with a reason (the first line whose sku is
 *   unknown, "unknown sku X", or short, "insufficient stock for sku X: available N, requested
 *   M"), else StockReserved.
 * - ReleaseReservation: reservation_id a UUID, reason 0..INVENTORY_MAX_REASON bytes. Open: emits
 *   ReservationReleased with the stored order id and lines. Released or rejected (nothing held):
 *   accepted with no event. Committed: RULE_VIOLATION. Unknown: NOT_FOUND.
 * - CommitReservation: reservation_id a UUID. Open: emits ReservationCommitted with the stored
 *   order id and lines. Committed: accepted with no event. Released or rejected:
 *   RULE_VIOLATION. Unknown: NOT_FOUND.
 *
 * Ids in events are in canonical lower-case form. @p cmd is borrowed; @p out must be an
 * initialised, accepting decision. Pure; thread-safe on distinct decisions.
 */
void inventory_decide(const void *state, const jl_command *cmd, jl_decision *out);

/**
 * Encode @p state (an inventory_state) as an inventory.WarehouseState into @p out (reset first).
 * @return JL_OK, or the buffer's JL_ERR_TOO_LARGE / JL_ERR_NOMEM; JL_ERR_NOMEM also when the
 *         temporary message cannot be allocated.
 */
jl_status inventory_state_pack(const void *state, jl_buf *out);

/**
 * Decode an inventory.WarehouseState into @p state (an inventory_state).
 * @return JL_OK; JL_ERR_DECODE for bytes that are not one; JL_ERR_INVALID for values the state
 *         cannot hold or that break its invariants (over the caps, duplicate skus or ids, lines
 *         of unknown skus, reserved units not matching the open reservations, an unknown
 *         outcome). On failure @p state is an empty warehouse.
 */
jl_status inventory_state_unpack(void *state, const void *data, size_t len);

#endif /* JETLEDGER_INVENTORY_DOMAIN_H */
