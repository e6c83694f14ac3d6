/*
 * The fulfilment process manager (saga): a projector of the ORDERS and INVENTORY streams with an
 * outbox. For every placed order it reserves the stock, then confirms the order (stock reserved)
 * or cancels it (stock short), commits the reservation once the order is confirmed, and releases
 * it when the order is cancelled in the meantime. Shared by main() and the tests.
 *
 * State. One row per order in the table `fulfilments`, written in the same transaction as the
 * commands it decides and as the checkpoints of both streams (the runtime does that), so a
 * restart at any point neither loses a step nor decides one twice. The row keeps what each
 * stream said last about the order, separately:
 *   - order_status, from ORDERS only:     unseen -> placed -> confirmed | cancelled
 *   - stock_status, from INVENTORY only:  none -> reserved -> released | committed
 *                                          none -> rejected
 * and the step is a function of the pair (fulfilment_step()). Each column moves only with its
 * own stream's events, which come in stream order; so the pair, and with it the step, the reason
 * and updated_at_ns (the latest occurred-at recorded), are the same whatever the interleaving of
 * the two streams. That is what makes the state safe when the streams are consumed at different
 * speeds, and what keeps a rebuild (which interleaves the sources its own way) equal to the live
 * model for `jetledger verify`.
 *
 * Live, the streams are also causally ordered wherever it matters: an inventory event about our
 * reservation comes after the ReserveStock we sent, which we sent after applying OrderPlaced;
 * OrderConfirmed after the ConfirmOrder we sent on StockReserved; ReservationCommitted and
 * ReservationReleased after the commands we sent on OrderConfirmed / OrderCancelled. The one
 * real race is a customer's OrderCancelled against the reservation's outcome:
 *   - cancelled before StockReserved is applied: step "cancelled"; StockReserved then releases;
 *   - cancelled after StockReserved: the step was "reserved" (ConfirmOrder decided: withdrawn
 *     if not sent yet; sent, the orders service refuses it on a cancelled order; or it won and
 *     then the cancel was refused): the release is sent now;
 *   - cancelled before or after ReservationRejected: both end "cancelled_out_of_stock" with the
 *     stock's reason; CancelOrder is sent only when the rejection came first.
 * Replayed from scratch (a lost database, a rebuild), an inventory event may come before its
 * OrderPlaced: the row is created from it (the reservation id proves we started it, see below)
 * and OrderPlaced later only fills in the order side, sending no second ReserveStock.
 *
 * Commands. A command is decided when the *effective* state (the pair with what each side
 * implies about the other, fulfilment_effective()) enters a state that calls for one:
 *   placed+none -> ReserveStock, placed+reserved -> ConfirmOrder, placed+rejected -> CancelOrder,
 *   confirmed+reserved -> CommitReservation, cancelled+reserved -> ReleaseReservation.
 * The effective state never goes back, so each kind is decided at most once per order; its
 * command id "fulfilment:<order id>:<kind>" is deterministic, so a redecision after a crash (or
 * a replay from scratch) is the same outbox row (ignored) or, once sent, a repeat the producer
 * answers once. One more, outside the table: a StockReserved of ours after the stock side was
 * committed, released or rejected is a reservation made again (a ReserveStock repeated after
 * the producers and the inventory forgot it), released with a ReleaseReservation of its own,
 * "fulfilment:<order id>:rel-<11 hex digits of its event id's FNV-1a 128>".
 *
 * The reservation id is derived from the order id (fulfilment_reservation_id()): the same on
 * every replay, and a way to tell our reservations from anybody else's without any state.
 * Inventory events of other reservations, orders events of orders never placed, and every other
 * event type of both streams are ignored (not dead-lettered). An OrderPlaced without lines (an
 * event older than the field) is dead-lettered: there is nothing to reserve.
 *
 * My calls, and limits:
 *   - A command its service refuses for good (invalid, not_found, rule_violation) is an outcome
 *     too, or the order would wait at its step for ever: a refused ReserveStock or ConfirmOrder
 *     cancels the order (on_refused(): "fulfilment:<order id>:abort", with the refusal as the
 *     reason), whose OrderCancelled then releases any reservation. A refused commit, release or
 *     cancellation has no fallback: logged (warn) and kept in jl_outbox for an operator. An
 *     "internal" reply is not final: sent again, backed off, until the service can decide.
 *   - An order cancelled after its rejection ends "cancelled_out_of_stock" (reason: the stock's),
 *     not "rejected": the step says the saga is over. A cancellation after confirmation (the
 *     orders service refuses it) would leave the step and the committed stock alone and only
 *     note the reason.
 *   - A rebuild decides commands into its new file, but the runtime carries the live outbox
 *     over at the switch, so a rebuild sends nothing. A database lost and replayed live does
 *     resend what it decides again: the producers answer a repeated command id once for their
 *     --command-ttl (7 days), and the inventory ignores a ReserveStock of a reservation it
 *     remembers (its last 4096 closed ones); beyond both, a resent ReserveStock would reserve
 *     anew.
 */
#ifndef JETLEDGER_FULFILMENT_PROCESS_H
#define JETLEDGER_FULFILMENT_PROCESS_H

#include <stdbool.h>
#include <stddef.h>

#include "jetledger/codec.h"
#include "jetledger/projector.h"

/** Rows per ListFulfilments page: default and maximum. */
#define FULFILMENT_DEFAULT_LIMIT 50
#define FULFILMENT_MAX_LIMIT 500

/**
 * Bytes kept of a reason (a cancellation's, a rejection's, the one sent with CancelOrder):
 * the orders service's cap on a cancellation reason. Longer ones are cut at a UTF-8 boundary.
 */
#define FULFILMENT_MAX_REASON 256

/** The projector: name "fulfilment", sources ORDERS and INVENTORY, outbox on. */
extern const jl_projector_def fulfilment_process;

/** What the ORDERS stream said last about an order. */
typedef enum fulfilment_order_status {
    FULFILMENT_ORDER_UNSEEN = 0, /**< no OrderPlaced applied yet (an inventory event came first) */
    FULFILMENT_ORDER_PLACED,
    FULFILMENT_ORDER_CONFIRMED,
    FULFILMENT_ORDER_CANCELLED,
} fulfilment_order_status;

/** What the INVENTORY stream said last about the order's reservation. */
typedef enum fulfilment_stock_status {
    FULFILMENT_STOCK_NONE = 0,
    FULFILMENT_STOCK_RESERVED,
    FULFILMENT_STOCK_REJECTED,
    FULFILMENT_STOCK_RELEASED,
    FULFILMENT_STOCK_COMMITTED,
} fulfilment_stock_status;

/** The state of one order's fulfilment: plain data, {UNSEEN, NONE} for an order with no row. */
typedef struct fulfilment_state {
    fulfilment_order_status order;
    fulfilment_stock_status stock;
} fulfilment_state;

/** The events the state machine reacts to. */
typedef enum fulfilment_event {
    FULFILMENT_EV_ORDER_PLACED,
    FULFILMENT_EV_ORDER_CONFIRMED,
    FULFILMENT_EV_ORDER_CANCELLED,
    FULFILMENT_EV_STOCK_RESERVED,
    FULFILMENT_EV_RESERVATION_REJECTED,
    FULFILMENT_EV_RESERVATION_RELEASED,
    FULFILMENT_EV_RESERVATION_COMMITTED,
} fulfilment_event;

/** The command a transition decides; its name is the last part of the command id. */
typedef enum fulfilment_command {
    FULFILMENT_CMD_NONE = 0,
    FULFILMENT_CMD_RESERVE, /**< inventory.ReserveStock, "reserve" */
    FULFILMENT_CMD_CONFIRM, /**< orders.ConfirmOrder, "confirm" */
    FULFILMENT_CMD_CANCEL,  /**< orders.CancelOrder, "cancel" */
    FULFILMENT_CMD_COMMIT,  /**< inventory.CommitReservation, "commit" */
    FULFILMENT_CMD_RELEASE, /**< inventory.ReleaseReservation, "release" */
} fulfilment_command;

/**
 * The state machine: the state after @p ev and the command it decides.
 *
 * Each side moves only with its own stream's events, forward only; an event that cannot follow
 * (a repeat, or out of the stream's order) leaves its side unchanged:
 *   order: UNSEEN -placed-> PLACED -confirmed-> CONFIRMED; PLACED -cancelled-> CANCELLED
 *          (a cancellation after confirmation is recorded as a reason only, see apply)
 *   stock: NONE -reserved-> RESERVED | -rejected-> REJECTED;
 *          RESERVED -released-> RELEASED | -committed-> COMMITTED
 * The command is that of the effective state entered (see the file comment), NONE when the
 * effective state did not change or calls for no command.
 * @param out_state the new state.
 * @param out_command the command to send, FULFILMENT_CMD_NONE for none.
 * Pure; thread-safe.
 */
void fulfilment_next(fulfilment_state *out_state, fulfilment_command *out_command,
                     fulfilment_state state, fulfilment_event ev);

/**
 * The command of the state before @p ev that @p ev overtakes: one decided earlier and not yet
 * carried out as far as this process manager knows, made pointless by news from the other
 * stream (an order cancelled while its stock was still being reserved: the ReserveStock), or a
 * ConfirmOrder or CancelOrder of an order its customer cancelled meanwhile,
 * which the orders service would only refuse. To be withdrawn if it has not gone out
 * (jl_outbox_withdraw()); should it have, its effect is handled as usual (a reservation made
 * after the cancellation is released). FULFILMENT_CMD_NONE for none: otherwise news from the
 * command's own service is its outcome, not an overtaking. Pure; thread-safe.
 */
fulfilment_command fulfilment_overtaken(fulfilment_state state, fulfilment_event ev);

/**
 * The state with what each side implies about the other: a committed reservation means a
 * confirmed order, a released one a cancelled order, a reservation outcome a placed order, a
 * confirmed order a reserved stock. Pure.
 */
fulfilment_state fulfilment_effective(fulfilment_state state);

/**
 * The step name of @p state (of its effective state): "reserving", "reserved", "rejected",
 * "confirmed", "committed", "cancelled", "released", "cancelled_out_of_stock"; "" for
 * {UNSEEN, NONE} (no row). Static, never NULL. Pure.
 */
const char *fulfilment_step(fulfilment_state state);

/** True when @p step is one of the names fulfilment_step() returns for a row. */
bool fulfilment_step_known(const char *step);

/** "unseen", "placed", "confirmed", "cancelled" ("?" out of range). Static. */
const char *fulfilment_order_status_str(fulfilment_order_status s);

/** "none", "reserved", "rejected", "released", "committed" ("?" out of range). Static. */
const char *fulfilment_stock_status_str(fulfilment_stock_status s);

/** "reserve", "confirm", "cancel", "commit", "release" ("" for NONE). Static. */
const char *fulfilment_command_str(fulfilment_command c);

/**
 * The reservation id of an order: FNV-1a 128 (offset basis 0x6c62272e07bb014262b821756295c58d,
 * prime 2^88 + 0x13b) of the bytes "fulfilment:" + the order id in canonical lower-case form,
 * taken big-endian as the 16 bytes of a UUID whose version nibble is set to 8 and variant bits
 * to 10 (RFC 9562 version 8, "custom"), written in lower case. The same on every replay and
 * every machine; distinct orders collide with probability about 2^-122.
 * @param out 37 bytes.
 * @return JL_OK; JL_ERR_INVALID when @p order_id is not a UUID (@p out untouched).
 * Pure; thread-safe.
 */
jl_status fulfilment_reservation_id(char out[JL_UUID_LEN + 1], const char *order_id);

/** Bytes of a command id buffer: "fulfilment:" + UUID + ":release" + NUL is 56. */
#define FULFILMENT_COMMAND_ID_MAX 64

/**
 * The command id of command @p c for order @p order_id (a canonical UUID):
 * "fulfilment:<order id>:<fulfilment_command_str(c)>", within the producers' 64-byte limit.
 * Pure; thread-safe.
 */
void fulfilment_command_id(char out[FULFILMENT_COMMAND_ID_MAX], const char *order_id,
                           fulfilment_command c);

#endif /* JETLEDGER_FULFILMENT_PROCESS_H */
