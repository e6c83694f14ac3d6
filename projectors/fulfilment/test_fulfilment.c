/*
 * Unit tests of the fulfilment process manager (process.c), without NATS:
 *   - the state machine: every transition of the table in process.h, the live races
 *     (OrderCancelled before or after the reservation's outcome), the replays in which one
 *     stream runs ahead of the other, and, over every interleaving of each scenario's two
 *     streams, that the final state is the same and no command kind is decided twice;
 *   - the reservation id (FNV-1a 128 as a version-8 UUID, checked against vectors computed
 *     independently) and the command ids;
 *   - apply against a scratch SQLite file with the runtime's outbox table: the row, the outbox
 *     rows (service, command, body, ids), events that are ignored, and equal read models for
 *     different interleavings; the queries.
 */
#include "process.h"

#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fulfilment/fulfilment.pb-c.h"
#include "inventory/inventory.pb-c.h"
#include "jetledger/buf.h"
#include "jetledger/db.h"
#include "jetledger/producer.h"
#include "orders/orders.pb-c.h"
#include "unit.h"

#define ORDER "9b2f1d3e-4c5a-4b6c-8d7e-0f1a2b3c4d5e"
#define ORDER_RID "180ad408-b7eb-8922-a41a-f6ba11de93e9" /* python3, see the test */
#define ORDER2 "00000000-0000-4000-8000-000000000001"
#define ORDER2_RID "24b06edb-1b49-8ef4-88a4-033395d944d0"
#define FOREIGN_RID "0b7d8c1e-2f3a-4b5c-8d9e-0f1a2b3c4d5e"

enum {
    U = FULFILMENT_ORDER_UNSEEN,
    P = FULFILMENT_ORDER_PLACED,
    F = FULFILMENT_ORDER_CONFIRMED,
    C = FULFILMENT_ORDER_CANCELLED
};
enum {
    N = FULFILMENT_STOCK_NONE,
    R = FULFILMENT_STOCK_RESERVED,
    X = FULFILMENT_STOCK_REJECTED,
    L = FULFILMENT_STOCK_RELEASED,
    M = FULFILMENT_STOCK_COMMITTED
};

static fulfilment_state mk(int o, int s)
{
    fulfilment_state st = {(fulfilment_order_status)o, (fulfilment_stock_status)s};
    return st;
}

/* ================================ ids ================================ */

START_TEST(reservation_id_is_fnv1a_128_of_the_order_id_as_a_uuid_v8)
{
    /* Expected values from an independent implementation:
     *   h = 0x6c62272e07bb014262b821756295c58d
     *   for b in ("fulfilment:" + order_id).encode(): h = ((h ^ b) * (2**88 + 0x13b)) % 2**128
     *   bytes = h.to_bytes(16, "big"); bytes[6] = bytes[6] & 0x0f | 0x80;
     *   bytes[8] = bytes[8] & 0x3f | 0x80 */
    char out[JL_UUID_LEN + 1];
    ck_assert_int_eq(fulfilment_reservation_id(out, ORDER), JL_OK);
    ck_assert_str_eq(out, ORDER_RID);
    ck_assert_int_eq(fulfilment_reservation_id(out, ORDER2), JL_OK);
    ck_assert_str_eq(out, ORDER2_RID);
    ck_assert_int_eq(out[14], '8');
    ck_assert_ptr_nonnull(strchr("89ab", out[19]));
}
END_TEST

START_TEST(reservation_id_ignores_the_case_of_the_order_id)
{
    char out[JL_UUID_LEN + 1];
    ck_assert_int_eq(fulfilment_reservation_id(out, "9B2F1D3E-4C5A-4B6C-8D7E-0F1A2B3C4D5E"), JL_OK);
    ck_assert_str_eq(out, ORDER_RID);
}
END_TEST

START_TEST(reservation_id_refuses_what_is_not_a_uuid)
{
    static const char *const bad[] = {"", "order-1", "9b2f1d3e4c5a4b6c8d7e0f1a2b3c4d5e", ORDER "0",
                                      "9b2f1d3e-4c5a-4b6c-8d7e-0f1a2b3c4d5g"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char out[JL_UUID_LEN + 1] = "untouched";
        ck_assert_int_eq(fulfilment_reservation_id(out, bad[i]), JL_ERR_INVALID);
        ck_assert_str_eq(out, "untouched");
    }
}
END_TEST

static int cmp_id(const void *a, const void *b)
{
    return strcmp(a, b);
}

START_TEST(reservation_ids_are_stable_and_distinct_across_orders)
{
    enum { K = 2000 };
    static char ids[K][JL_UUID_LEN + 1];
    for (int i = 0; i < K; i++) {
        char order[JL_UUID_LEN + 1], again[JL_UUID_LEN + 1];
        jl_uuid_new(order);
        ck_assert_int_eq(fulfilment_reservation_id(ids[i], order), JL_OK);
        ck_assert_int_eq(fulfilment_reservation_id(again, order), JL_OK);
        ck_assert_str_eq(ids[i], again);
        ck_assert_str_ne(ids[i], order);
        char canon[JL_UUID_LEN + 1];
        ck_assert_int_eq(jl_uuid_canonical(canon, ids[i]), JL_OK);
        ck_assert_str_eq(canon, ids[i]);
    }
    qsort(ids, K, sizeof(ids[0]), cmp_id);
    for (int i = 1; i < K; i++)
        ck_assert_str_ne(ids[i - 1], ids[i]);
}
END_TEST

START_TEST(command_ids_name_the_order_and_the_kind)
{
    static const struct {
        fulfilment_command c;
        const char *id;
    } want[] = {
        {FULFILMENT_CMD_RESERVE, "fulfilment:" ORDER ":reserve"},
        {FULFILMENT_CMD_CONFIRM, "fulfilment:" ORDER ":confirm"},
        {FULFILMENT_CMD_CANCEL, "fulfilment:" ORDER ":cancel"},
        {FULFILMENT_CMD_COMMIT, "fulfilment:" ORDER ":commit"},
        {FULFILMENT_CMD_RELEASE, "fulfilment:" ORDER ":release"},
    };
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        char id[FULFILMENT_COMMAND_ID_MAX];
        fulfilment_command_id(id, ORDER, want[i].c);
        ck_assert_str_eq(id, want[i].id);
        ck_assert_uint_le(strlen(id), 64); /* the producers' limit on a command id */
    }
}
END_TEST

/* ================================ the state machine ================================ */

static const struct transition {
    const char *why;
    int o, s;
    fulfilment_event ev;
    int want_o, want_s;
    const char *step;
    fulfilment_command cmd;
} transitions[] = {
    /* the live paths */
    {"placed: reserve", U, N, FULFILMENT_EV_ORDER_PLACED, P, N, "reserving",
     FULFILMENT_CMD_RESERVE},
    {"reserved: confirm", P, N, FULFILMENT_EV_STOCK_RESERVED, P, R, "reserved",
     FULFILMENT_CMD_CONFIRM},
    {"rejected: cancel", P, N, FULFILMENT_EV_RESERVATION_REJECTED, P, X, "rejected",
     FULFILMENT_CMD_CANCEL},
    {"confirmed: commit", P, R, FULFILMENT_EV_ORDER_CONFIRMED, F, R, "confirmed",
     FULFILMENT_CMD_COMMIT},
    {"committed: done", F, R, FULFILMENT_EV_RESERVATION_COMMITTED, F, M, "committed",
     FULFILMENT_CMD_NONE},
    {"our cancel after rejection", P, X, FULFILMENT_EV_ORDER_CANCELLED, C, X,
     "cancelled_out_of_stock", FULFILMENT_CMD_NONE},
    /* the race: a customer's cancellation against the reservation's outcome */
    {"cancelled after StockReserved: release", P, R, FULFILMENT_EV_ORDER_CANCELLED, C, R,
     "released", FULFILMENT_CMD_RELEASE},
    {"released: done", C, R, FULFILMENT_EV_RESERVATION_RELEASED, C, L, "released",
     FULFILMENT_CMD_NONE},
    {"cancelled before the outcome: wait", P, N, FULFILMENT_EV_ORDER_CANCELLED, C, N, "cancelled",
     FULFILMENT_CMD_NONE},
    {"StockReserved after the cancellation: release", C, N, FULFILMENT_EV_STOCK_RESERVED, C, R,
     "released", FULFILMENT_CMD_RELEASE},
    {"rejected after the cancellation: nothing held, no CancelOrder", C, N,
     FULFILMENT_EV_RESERVATION_REJECTED, C, X, "cancelled_out_of_stock", FULFILMENT_CMD_NONE},
    {"cancelled after confirmation: noted only", F, R, FULFILMENT_EV_ORDER_CANCELLED, F, R,
     "confirmed", FULFILMENT_CMD_NONE},
    {"cancelled after commit: noted only", F, M, FULFILMENT_EV_ORDER_CANCELLED, F, M, "committed",
     FULFILMENT_CMD_NONE},
    /* replays with the inventory stream ahead: the row starts from the inventory event */
    {"StockReserved before OrderPlaced", U, N, FULFILMENT_EV_STOCK_RESERVED, U, R, "reserved",
     FULFILMENT_CMD_CONFIRM},
    {"OrderPlaced after StockReserved: no second reservation", U, R, FULFILMENT_EV_ORDER_PLACED, P,
     R, "reserved", FULFILMENT_CMD_NONE},
    {"ReservationRejected before OrderPlaced", U, N, FULFILMENT_EV_RESERVATION_REJECTED, U, X,
     "rejected", FULFILMENT_CMD_CANCEL},
    {"OrderPlaced after ReservationRejected", U, X, FULFILMENT_EV_ORDER_PLACED, P, X, "rejected",
     FULFILMENT_CMD_NONE},
    {"committed before OrderPlaced", U, R, FULFILMENT_EV_RESERVATION_COMMITTED, U, M, "committed",
     FULFILMENT_CMD_NONE},
    {"OrderPlaced after the commit", U, M, FULFILMENT_EV_ORDER_PLACED, P, M, "committed",
     FULFILMENT_CMD_NONE},
    {"OrderConfirmed after the commit", P, M, FULFILMENT_EV_ORDER_CONFIRMED, F, M, "committed",
     FULFILMENT_CMD_NONE},
    {"committed before OrderConfirmed", P, R, FULFILMENT_EV_RESERVATION_COMMITTED, P, M,
     "committed", FULFILMENT_CMD_NONE},
    {"released before OrderPlaced", U, R, FULFILMENT_EV_RESERVATION_RELEASED, U, L, "released",
     FULFILMENT_CMD_NONE},
    {"OrderPlaced after the release", U, L, FULFILMENT_EV_ORDER_PLACED, P, L, "released",
     FULFILMENT_CMD_NONE},
    {"released before OrderCancelled", P, R, FULFILMENT_EV_RESERVATION_RELEASED, P, L, "released",
     FULFILMENT_CMD_NONE},
    {"OrderCancelled after the release: nothing more", P, L, FULFILMENT_EV_ORDER_CANCELLED, C, L,
     "released", FULFILMENT_CMD_NONE},
    /* the orders stream ahead (a replay), or an order confirmed by hand while reserving */
    {"confirmed while reserving: commit (sent after the reserve)", P, N,
     FULFILMENT_EV_ORDER_CONFIRMED, F, N, "confirmed", FULFILMENT_CMD_COMMIT},
    {"StockReserved after OrderConfirmed: no ConfirmOrder", F, N, FULFILMENT_EV_STOCK_RESERVED, F,
     R, "confirmed", FULFILMENT_CMD_NONE},
    {"rejected after a confirmation by hand", F, N, FULFILMENT_EV_RESERVATION_REJECTED, F, X,
     "rejected", FULFILMENT_CMD_NONE},
    /* repeats and events that cannot follow: no change, no command */
    {"OrderPlaced again", P, N, FULFILMENT_EV_ORDER_PLACED, P, N, "reserving", FULFILMENT_CMD_NONE},
    {"StockReserved again", P, R, FULFILMENT_EV_STOCK_RESERVED, P, R, "reserved",
     FULFILMENT_CMD_NONE},
    {"OrderConfirmed after the cancellation", C, N, FULFILMENT_EV_ORDER_CONFIRMED, C, N,
     "cancelled", FULFILMENT_CMD_NONE},
    {"OrderCancelled again", C, X, FULFILMENT_EV_ORDER_CANCELLED, C, X, "cancelled_out_of_stock",
     FULFILMENT_CMD_NONE},
    {"released before reserved", P, N, FULFILMENT_EV_RESERVATION_RELEASED, P, N, "reserving",
     FULFILMENT_CMD_NONE},
    {"committed after rejected", P, X, FULFILMENT_EV_RESERVATION_COMMITTED, P, X, "rejected",
     FULFILMENT_CMD_NONE},
    {"StockReserved after the release", C, L, FULFILMENT_EV_STOCK_RESERVED, C, L, "released",
     FULFILMENT_CMD_NONE},
    {"OrderConfirmed of an unplaced order", U, N, FULFILMENT_EV_ORDER_CONFIRMED, U, N, "",
     FULFILMENT_CMD_NONE},
    {"OrderCancelled of an unplaced order", U, N, FULFILMENT_EV_ORDER_CANCELLED, U, N, "",
     FULFILMENT_CMD_NONE},
};

START_TEST(transition_follows_the_table)
{
    const struct transition *t = &transitions[_i];
    fulfilment_state out;
    fulfilment_command cmd = (fulfilment_command)99;
    fulfilment_next(&out, &cmd, mk(t->o, t->s), t->ev);
    ck_assert_msg(out.order == (fulfilment_order_status)t->want_o &&
                      out.stock == (fulfilment_stock_status)t->want_s,
                  "%s: got order %s stock %s", t->why, fulfilment_order_status_str(out.order),
                  fulfilment_stock_status_str(out.stock));
    ck_assert_msg(strcmp(fulfilment_step(out), t->step) == 0, "%s: step %s, want %s", t->why,
                  fulfilment_step(out), t->step);
    ck_assert_msg(cmd == t->cmd, "%s: command '%s', want '%s'", t->why, fulfilment_command_str(cmd),
                  fulfilment_command_str(t->cmd));
}
END_TEST

START_TEST(news_from_the_other_stream_or_a_cancellation_overtakes_a_command)
{
    static const struct {
        const char *why;
        int o, s;
        fulfilment_event ev;
        fulfilment_command want;
    } cases[] = {
        {"cancelled while reserving", P, N, FULFILMENT_EV_ORDER_CANCELLED, FULFILMENT_CMD_RESERVE},
        {"its own outcome: reserved", P, N, FULFILMENT_EV_STOCK_RESERVED, FULFILMENT_CMD_NONE},
        {"its own outcome: rejected", P, N, FULFILMENT_EV_RESERVATION_REJECTED,
         FULFILMENT_CMD_NONE},
        {"released before the confirmation (a replay)", P, R, FULFILMENT_EV_RESERVATION_RELEASED,
         FULFILMENT_CMD_CONFIRM},
        {"cancelled by the customer while reserved", P, R, FULFILMENT_EV_ORDER_CANCELLED,
         FULFILMENT_CMD_CONFIRM}, /* its own service, which would only refuse it now */
        {"its own outcome: confirmed", P, R, FULFILMENT_EV_ORDER_CONFIRMED, FULFILMENT_CMD_NONE},
        {"cancelled by the customer while rejected", P, X, FULFILMENT_EV_ORDER_CANCELLED,
         FULFILMENT_CMD_CANCEL},
        {"its own outcome: committed", F, R, FULFILMENT_EV_RESERVATION_COMMITTED,
         FULFILMENT_CMD_NONE},
        {"its own outcome: released", C, R, FULFILMENT_EV_RESERVATION_RELEASED,
         FULFILMENT_CMD_NONE},
        {"a repeat moves nothing", C, N, FULFILMENT_EV_ORDER_CANCELLED, FULFILMENT_CMD_NONE},
        {"placed: nothing decided before", U, N, FULFILMENT_EV_ORDER_PLACED, FULFILMENT_CMD_NONE},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        fulfilment_command got = fulfilment_overtaken(mk(cases[i].o, cases[i].s), cases[i].ev);
        ck_assert_msg(got == cases[i].want, "%s: '%s', want '%s'", cases[i].why,
                      fulfilment_command_str(got), fulfilment_command_str(cases[i].want));
    }
}
END_TEST

static bool orders_event(fulfilment_event ev)
{
    return ev == FULFILMENT_EV_ORDER_PLACED || ev == FULFILMENT_EV_ORDER_CONFIRMED ||
           ev == FULFILMENT_EV_ORDER_CANCELLED;
}

START_TEST(each_event_moves_only_its_own_side_and_never_back)
{
    for (int o = U; o <= C; o++) {
        for (int s = N; s <= M; s++) {
            for (int e = FULFILMENT_EV_ORDER_PLACED; e <= FULFILMENT_EV_RESERVATION_COMMITTED;
                 e++) {
                fulfilment_state out;
                fulfilment_command cmd;
                fulfilment_next(&out, &cmd, mk(o, s), (fulfilment_event)e);
                if (orders_event((fulfilment_event)e))
                    ck_assert_int_eq(out.stock, s);
                else
                    ck_assert_int_eq(out.order, o);
                /* Forward only, to a next step: a sibling (rejected and reserved, confirmed and
                 * cancelled) is never reached from the other. */
                static const bool order_to[4][4] = {
                    /* U */ {1, 1, 1, 1},
                    /* P */ {0, 1, 1, 1},
                    /* F */ {0, 0, 1, 0},
                    /* C */ {0, 0, 0, 1},
                };
                static const bool stock_to[5][5] = {
                    /* N */ {1, 1, 1, 1, 1},
                    /* R */ {0, 1, 0, 1, 1},
                    /* X */ {0, 0, 1, 0, 0},
                    /* L */ {0, 0, 0, 1, 0},
                    /* M */ {0, 0, 0, 0, 1},
                };
                ck_assert_msg(order_to[o][out.order] && stock_to[s][out.stock],
                              "order %d stock %d, event %d: to order %d stock %d", o, s, e,
                              (int)out.order, (int)out.stock);
                if (out.order == (fulfilment_order_status)o &&
                    out.stock == (fulfilment_stock_status)s)
                    ck_assert_int_eq(cmd, FULFILMENT_CMD_NONE);
                if (out.order != FULFILMENT_ORDER_UNSEEN || out.stock != FULFILMENT_STOCK_NONE)
                    ck_assert(fulfilment_step_known(fulfilment_step(out)));
            }
        }
    }
    ck_assert_str_eq(fulfilment_step(mk(U, N)), "");
    ck_assert(!fulfilment_step_known(""));
    ck_assert(!fulfilment_step_known("shipped"));
}
END_TEST

/* A scenario: one order's events as each stream holds them, and where it must end. */
static const struct scenario {
    const char *name;
    fulfilment_event orders[3];
    int n_orders;
    fulfilment_event inventory[3];
    int n_inventory;
    const char *final_step;
} scenarios[] = {
    {"confirmed and committed",
     {FULFILMENT_EV_ORDER_PLACED, FULFILMENT_EV_ORDER_CONFIRMED},
     2,
     {FULFILMENT_EV_STOCK_RESERVED, FULFILMENT_EV_RESERVATION_COMMITTED},
     2,
     "committed"},
    {"out of stock",
     {FULFILMENT_EV_ORDER_PLACED, FULFILMENT_EV_ORDER_CANCELLED},
     2,
     {FULFILMENT_EV_RESERVATION_REJECTED},
     1,
     "cancelled_out_of_stock"},
    {"cancelled by the customer, stock released",
     {FULFILMENT_EV_ORDER_PLACED, FULFILMENT_EV_ORDER_CANCELLED},
     2,
     {FULFILMENT_EV_STOCK_RESERVED, FULFILMENT_EV_RESERVATION_RELEASED},
     2,
     "released"},
    {"cancelled by the customer, release on its way",
     {FULFILMENT_EV_ORDER_PLACED, FULFILMENT_EV_ORDER_CANCELLED},
     2,
     {FULFILMENT_EV_STOCK_RESERVED},
     1,
     "released"},
    {"reserved, confirmation on its way",
     {FULFILMENT_EV_ORDER_PLACED},
     1,
     {FULFILMENT_EV_STOCK_RESERVED},
     1,
     "reserved"},
    {"confirmed, commit on its way",
     {FULFILMENT_EV_ORDER_PLACED, FULFILMENT_EV_ORDER_CONFIRMED},
     2,
     {FULFILMENT_EV_STOCK_RESERVED},
     1,
     "confirmed"},
    {"reserving", {FULFILMENT_EV_ORDER_PLACED}, 1, {0}, 0, "reserving"},
};

START_TEST(every_interleaving_of_the_two_streams_ends_in_the_same_state)
{
    const struct scenario *sc = &scenarios[_i];
    int n = sc->n_orders + sc->n_inventory, runs = 0;
    fulfilment_state first = mk(U, N);
    /* Bit k of mask set: the k-th event applied comes from the inventory stream. */
    for (unsigned mask = 0; mask < (1u << n); mask++) {
        if (__builtin_popcount(mask) != sc->n_inventory)
            continue;
        fulfilment_state st = mk(U, N);
        int oi = 0, ii = 0, seen[FULFILMENT_CMD_RELEASE + 1] = {0};
        for (int k = 0; k < n; k++) {
            fulfilment_event ev = (mask >> k) & 1u ? sc->inventory[ii++] : sc->orders[oi++];
            fulfilment_command cmd;
            fulfilment_next(&st, &cmd, st, ev);
            ck_assert_msg(seen[cmd] == 0 || cmd == FULFILMENT_CMD_NONE,
                          "%s: command %s decided twice (interleaving %x)", sc->name,
                          fulfilment_command_str(cmd), mask);
            seen[cmd]++;
        }
        if (runs++ == 0)
            first = st;
        ck_assert_msg(st.order == first.order && st.stock == first.stock,
                      "%s: interleaving %x ends %s/%s, another %s/%s", sc->name, mask,
                      fulfilment_order_status_str(st.order), fulfilment_stock_status_str(st.stock),
                      fulfilment_order_status_str(first.order),
                      fulfilment_stock_status_str(first.stock));
        ck_assert_str_eq(fulfilment_step(st), sc->final_step);
    }
    ck_assert_int_gt(runs, 0);
}
END_TEST

/* The live order of each path (commands before the events they cause) and what it sends. */
START_TEST(live_paths_send_each_command_once_in_order)
{
    static const struct {
        fulfilment_event evs[5];
        int n;
        fulfilment_command cmds[4];
        int n_cmds;
    } paths[] = {
        {{FULFILMENT_EV_ORDER_PLACED, FULFILMENT_EV_STOCK_RESERVED, FULFILMENT_EV_ORDER_CONFIRMED,
          FULFILMENT_EV_RESERVATION_COMMITTED},
         4,
         {FULFILMENT_CMD_RESERVE, FULFILMENT_CMD_CONFIRM, FULFILMENT_CMD_COMMIT},
         3},
        {{FULFILMENT_EV_ORDER_PLACED, FULFILMENT_EV_RESERVATION_REJECTED,
          FULFILMENT_EV_ORDER_CANCELLED},
         3,
         {FULFILMENT_CMD_RESERVE, FULFILMENT_CMD_CANCEL},
         2},
        {{FULFILMENT_EV_ORDER_PLACED, FULFILMENT_EV_ORDER_CANCELLED, FULFILMENT_EV_STOCK_RESERVED,
          FULFILMENT_EV_RESERVATION_RELEASED},
         4,
         {FULFILMENT_CMD_RESERVE, FULFILMENT_CMD_RELEASE},
         2},
        {{FULFILMENT_EV_ORDER_PLACED, FULFILMENT_EV_STOCK_RESERVED, FULFILMENT_EV_ORDER_CANCELLED,
          FULFILMENT_EV_RESERVATION_RELEASED},
         4,
         {FULFILMENT_CMD_RESERVE, FULFILMENT_CMD_CONFIRM, FULFILMENT_CMD_RELEASE},
         3},
        {{FULFILMENT_EV_ORDER_PLACED, FULFILMENT_EV_ORDER_CANCELLED,
          FULFILMENT_EV_RESERVATION_REJECTED},
         3,
         {FULFILMENT_CMD_RESERVE},
         1},
    };
    for (size_t p = 0; p < sizeof(paths) / sizeof(paths[0]); p++) {
        fulfilment_state st = mk(U, N);
        fulfilment_command got[8];
        int n_got = 0;
        for (int k = 0; k < paths[p].n; k++) {
            fulfilment_command cmd;
            fulfilment_next(&st, &cmd, st, paths[p].evs[k]);
            if (cmd != FULFILMENT_CMD_NONE)
                got[n_got++] = cmd;
        }
        ck_assert_int_eq(n_got, paths[p].n_cmds);
        for (int k = 0; k < n_got; k++)
            ck_assert_str_eq(fulfilment_command_str(got[k]),
                             fulfilment_command_str(paths[p].cmds[k]));
    }
}
END_TEST

/* ================================ apply, on SQLite ================================ */

static char dir[256];
static jl_db *db;
static int n_dbs;

static jl_db *open_db(void)
{
    char file[32];
    snprintf(file, sizeof(file), "f%d.db", n_dbs++);
    jl_db *d = jl_ck_scratch_db(dir, file, fulfilment_process.schema_sql);
    ck_assert_int_eq(jl_db_exec(d, jl_projector_runtime_schema()), JL_OK); /* the outbox */
    return d;
}

static void db_setup(void)
{
    jl_ck_scratch_dir(dir, sizeof(dir), "test_fulfilment");
    db = open_db();
}

static void db_teardown(void)
{
    jl_db_close(db);
    db = NULL;
    jl_ck_scratch_remove(dir);
}

/* One event as apply sees it, with its payload alongside (filled in place, never copied). */
typedef struct tev {
    jl_event ev;
    char event_id[JL_UUID_LEN + 1];
    char aggregate_id[JL_UUID_LEN + 1];
    union {
        Orders__OrderCreated created;
        Orders__OrderPlaced placed;
        Orders__OrderConfirmed confirmed;
        Orders__OrderCancelled cancelled;
        Inventory__ProductRegistered registered;
        Inventory__StockReserved reserved;
        Inventory__ReservationRejected rejected;
        Inventory__ReservationReleased released;
        Inventory__ReservationCommitted committed;
    } m;
    Orders__OrderLine lines[3];
    Orders__OrderLine *line_ptrs[3];
} tev;

static void base(tev *t, const char *type, const char *agg_type, const char *agg_id, int64_t at)
{
    memset(&t->ev, 0, sizeof(t->ev));
    jl_uuid_new(t->event_id);
    snprintf(t->aggregate_id, sizeof(t->aggregate_id), "%.36s", agg_id);
    t->ev.event_id = t->event_id;
    t->ev.event_type = type;
    t->ev.aggregate_type = agg_type;
    t->ev.aggregate_id = t->aggregate_id;
    t->ev.correlation_id = "corr-1";
    t->ev.causation_id = "cause-1";
    t->ev.aggregate_version = 1;
    t->ev.occurred_at_ns = at;
    t->ev.payload = &t->m.created.base;
}

static void ev_placed(tev *t, const char *order, int n_lines, int64_t at)
{
    static const char *const skus[] = {"apple", "pear", "plum"};
    base(t, "orders.OrderPlaced", "order", order, at);
    orders__order_placed__init(&t->m.placed);
    t->m.placed.order_id = t->aggregate_id;
    for (int i = 0; i < n_lines; i++) {
        orders__order_line__init(&t->lines[i]);
        t->lines[i].sku = (char *)skus[i];
        t->lines[i].quantity = i + 2;
        t->lines[i].unit_price_cents = 100;
        t->line_ptrs[i] = &t->lines[i];
    }
    t->m.placed.n_lines = (size_t)n_lines;
    t->m.placed.lines = t->line_ptrs;
}

static void ev_confirmed(tev *t, const char *order, const char *rid, int64_t at)
{
    base(t, "orders.OrderConfirmed", "order", order, at);
    orders__order_confirmed__init(&t->m.confirmed);
    t->m.confirmed.order_id = t->aggregate_id;
    t->m.confirmed.reservation_id = (char *)rid;
}

static void ev_cancelled(tev *t, const char *order, const char *reason, int64_t at)
{
    base(t, "orders.OrderCancelled", "order", order, at);
    orders__order_cancelled__init(&t->m.cancelled);
    t->m.cancelled.order_id = t->aggregate_id;
    t->m.cancelled.reason = (char *)reason;
}

static void ev_created(tev *t, const char *order, int64_t at)
{
    base(t, "orders.OrderCreated", "order", order, at);
    orders__order_created__init(&t->m.created);
    t->m.created.order_id = t->aggregate_id;
    t->m.created.customer_id = "alice";
}

static void ev_registered(tev *t, int64_t at)
{
    base(t, "inventory.ProductRegistered", "warehouse", ORDER2, at);
    inventory__product_registered__init(&t->m.registered);
    t->m.registered.sku = "apple";
    t->m.registered.name = "Apple";
}

static void ev_reserved(tev *t, const char *order, const char *rid, int64_t at)
{
    base(t, "inventory.StockReserved", "warehouse", ORDER2, at);
    inventory__stock_reserved__init(&t->m.reserved);
    t->m.reserved.order_id = (char *)order;
    t->m.reserved.reservation_id = (char *)rid;
}

static void ev_rejected(tev *t, const char *order, const char *rid, const char *reason, int64_t at)
{
    base(t, "inventory.ReservationRejected", "warehouse", ORDER2, at);
    inventory__reservation_rejected__init(&t->m.rejected);
    t->m.rejected.order_id = (char *)order;
    t->m.rejected.reservation_id = (char *)rid;
    t->m.rejected.reason = (char *)reason;
}

static void ev_released(tev *t, const char *order, const char *rid, int64_t at)
{
    base(t, "inventory.ReservationReleased", "warehouse", ORDER2, at);
    inventory__reservation_released__init(&t->m.released);
    t->m.released.order_id = (char *)order;
    t->m.released.reservation_id = (char *)rid;
    t->m.released.reason = "order cancelled";
}

static void ev_committed(tev *t, const char *order, const char *rid, int64_t at)
{
    base(t, "inventory.ReservationCommitted", "warehouse", ORDER2, at);
    inventory__reservation_committed__init(&t->m.committed);
    t->m.committed.order_id = (char *)order;
    t->m.committed.reservation_id = (char *)rid;
}

static jl_status apply_to(jl_db *d, const tev *t)
{
    char err[512] = "";
    jl_status s = fulfilment_process.apply(d, &t->ev, err, sizeof(err));
    ck_assert_msg(s == JL_OK, "apply %s: %s (%s)", t->ev.event_type, jl_status_str(s), err);
    return s;
}

/* The row's step and reason, "-" when there is no row. */
static void row_of(jl_db *d, const char *order, char *step, char *reason, char *rid)
{
    sqlite3_stmt *st = jl_db_stmt(d, "SELECT step, reason, reservation_id FROM fulfilments "
                                     "WHERE order_id = ?");
    ck_assert_ptr_nonnull(st);
    sqlite3_bind_text(st, 1, order, -1, SQLITE_STATIC);
    if (sqlite3_step(st) == SQLITE_ROW) {
        snprintf(step, 64, "%s", sqlite3_column_text(st, 0));
        snprintf(reason, 512, "%s", sqlite3_column_text(st, 1));
        snprintf(rid, JL_UUID_LEN + 1, "%s", sqlite3_column_text(st, 2));
    } else {
        snprintf(step, 64, "-");
        reason[0] = rid[0] = 0;
    }
    sqlite3_reset(st);
}

static const char *step_of(jl_db *d, const char *order)
{
    static char step[64];
    char reason[512], rid[JL_UUID_LEN + 1];
    row_of(d, order, step, reason, rid);
    return step;
}

static int64_t count(jl_db *d, const char *sql)
{
    sqlite3_stmt *st = jl_db_stmt(d, sql);
    ck_assert_ptr_nonnull(st);
    ck_assert_int_eq(sqlite3_step(st), SQLITE_ROW);
    int64_t n = sqlite3_column_int64(st, 0);
    sqlite3_reset(st);
    return n;
}

typedef struct outrow {
    char command_id[128], service[64], command[64], correlation[128], causation[128];
    uint8_t body[4096];
    int len;
} outrow;

/* Outbox row @p k (0-based, in decision order). */
static void outbox_row(jl_db *d, int k, outrow *o)
{
    sqlite3_stmt *st = jl_db_stmt(d, "SELECT command_id, service, command, correlation_id, "
                                     "causation_id, body FROM jl_outbox ORDER BY id LIMIT 1 "
                                     "OFFSET ?");
    ck_assert_ptr_nonnull(st);
    sqlite3_bind_int(st, 1, k);
    ck_assert_int_eq(sqlite3_step(st), SQLITE_ROW);
    snprintf(o->command_id, sizeof(o->command_id), "%s", sqlite3_column_text(st, 0));
    snprintf(o->service, sizeof(o->service), "%s", sqlite3_column_text(st, 1));
    snprintf(o->command, sizeof(o->command), "%s", sqlite3_column_text(st, 2));
    snprintf(o->correlation, sizeof(o->correlation), "%s", sqlite3_column_text(st, 3));
    snprintf(o->causation, sizeof(o->causation), "%s", sqlite3_column_text(st, 4));
    o->len = sqlite3_column_bytes(st, 5);
    ck_assert_int_le(o->len, (int)sizeof(o->body));
    memcpy(o->body, sqlite3_column_blob(st, 5), (size_t)o->len);
    sqlite3_reset(st);
}

START_TEST(outbox_refuses_ids_it_would_have_to_cut)
{
    /* An id longer than producers accept is refused, not cut: two ids cut alike would go out
     * as one command, and the second would be answered as a repeat of the first. */
    Orders__ConfirmOrder c = ORDERS__CONFIRM_ORDER__INIT;
    c.order_id = ORDER;
    c.reservation_id = ORDER;
    char id[JL_MAX_ID_LEN + 2];
    memset(id, 'x', sizeof(id) - 1);
    id[sizeof(id) - 1] = 0; /* JL_MAX_ID_LEN + 1 characters */
    ck_assert_int_eq(jl_outbox_add(db, "orders", &c.base, id, NULL, NULL), JL_ERR_INVALID);
    ck_assert_int_eq(jl_outbox_add(db, "orders", &c.base, "", NULL, NULL), JL_ERR_INVALID);
    ck_assert_int_eq(jl_outbox_add(db, "orders", &c.base, "ok-id", id, NULL), JL_ERR_INVALID);
    ck_assert_int_eq(count(db, "SELECT count(*) FROM jl_outbox"), 0);
    id[JL_MAX_ID_LEN] = 0; /* exactly the limit */
    ck_assert_int_eq(jl_outbox_add(db, "orders", &c.base, id, NULL, NULL), JL_OK);
    ck_assert_int_eq(count(db, "SELECT count(*) FROM jl_outbox"), 1);
}
END_TEST

START_TEST(apply_happy_path_reserves_confirms_and_commits)
{
    tev t;
    ev_created(&t, ORDER, 10);
    apply_to(db, &t);
    ck_assert_str_eq(step_of(db, ORDER), "-");

    tev placed;
    ev_placed(&placed, ORDER, 2, 20);
    apply_to(db, &placed);
    ck_assert_str_eq(step_of(db, ORDER), "reserving");

    outrow o;
    outbox_row(db, 0, &o);
    ck_assert_str_eq(o.command_id, "fulfilment:" ORDER ":reserve");
    ck_assert_str_eq(o.service, "inventory");
    ck_assert_str_eq(o.command, "ReserveStock");
    ck_assert_str_eq(o.correlation, "corr-1");
    ck_assert_str_eq(o.causation, placed.event_id);
    Inventory__ReserveStock *rs = inventory__reserve_stock__unpack(NULL, (size_t)o.len, o.body);
    ck_assert_ptr_nonnull(rs);
    ck_assert_str_eq(rs->reservation_id, ORDER_RID);
    ck_assert_str_eq(rs->order_id, ORDER);
    ck_assert_str_eq(rs->warehouse_id, "");
    ck_assert_uint_eq(rs->n_lines, 2);
    ck_assert_str_eq(rs->lines[0]->sku, "apple");
    ck_assert_int_eq(rs->lines[0]->quantity, 2);
    ck_assert_str_eq(rs->lines[1]->sku, "pear");
    ck_assert_int_eq(rs->lines[1]->quantity, 3);
    inventory__reserve_stock__free_unpacked(rs, NULL);

    ev_reserved(&t, ORDER, ORDER_RID, 30);
    apply_to(db, &t);
    ck_assert_str_eq(step_of(db, ORDER), "reserved");
    outbox_row(db, 1, &o);
    ck_assert_str_eq(o.command_id, "fulfilment:" ORDER ":confirm");
    ck_assert_str_eq(o.service, "orders");
    ck_assert_str_eq(o.command, "ConfirmOrder");
    ck_assert_str_eq(o.causation, t.event_id);
    Orders__ConfirmOrder *co = orders__confirm_order__unpack(NULL, (size_t)o.len, o.body);
    ck_assert_ptr_nonnull(co);
    ck_assert_str_eq(co->order_id, ORDER);
    ck_assert_str_eq(co->reservation_id, ORDER_RID);
    orders__confirm_order__free_unpacked(co, NULL);

    ev_confirmed(&t, ORDER, ORDER_RID, 40);
    apply_to(db, &t);
    ck_assert_str_eq(step_of(db, ORDER), "confirmed");
    outbox_row(db, 2, &o);
    ck_assert_str_eq(o.command_id, "fulfilment:" ORDER ":commit");
    ck_assert_str_eq(o.service, "inventory");
    ck_assert_str_eq(o.command, "CommitReservation");
    Inventory__CommitReservation *cr =
        inventory__commit_reservation__unpack(NULL, (size_t)o.len, o.body);
    ck_assert_ptr_nonnull(cr);
    ck_assert_str_eq(cr->reservation_id, ORDER_RID);
    inventory__commit_reservation__free_unpacked(cr, NULL);

    ev_committed(&t, ORDER, ORDER_RID, 50);
    apply_to(db, &t);
    ck_assert_str_eq(step_of(db, ORDER), "committed");
    ck_assert_int_eq(count(db, "SELECT count(*) FROM jl_outbox"), 3);
    ck_assert_int_eq(count(db, "SELECT updated_at_ns FROM fulfilments"), 50);
}
END_TEST

START_TEST(a_refused_reservation_cancels_the_order_also_from_a_row_without_a_key)
{
    /* A ReserveStock refused for good (say the service ruled it invalid) aborts the order: a
     * CancelOrder, "fulfilment:<order>:abort", caused by the refused command. Rows queued before
     * outbox rows had keys have "" there: the order id is then read from the command id. */
    static const char *const keys[] = {ORDER, ""};
    for (int k = 0; k < 2; k++) {
        ck_assert_int_eq(jl_db_exec(db, "DELETE FROM jl_outbox; DELETE FROM fulfilments"), JL_OK);
        tev t;
        ev_placed(&t, ORDER, 1, 20);
        apply_to(db, &t);
        jl_reply r;
        jl_reply_init(&r);
        jl_reply_error(&r, JL_CODE_INVALID, "no such warehouse");
        jl_outbox_refusal f = {.service = "inventory",
                               .command = "ReserveStock",
                               .command_id = "fulfilment:" ORDER ":reserve",
                               .correlation_id = "corr-1",
                               .order_key = keys[k],
                               .reply = &r};
        char err[256] = "";
        ck_assert_int_eq(fulfilment_process.on_refused(db, &f, err, sizeof(err)), JL_OK);
        jl_reply_cleanup(&r);
        ck_assert_int_eq(count(db, "SELECT count(*) FROM jl_outbox"), 2);
        outrow o;
        outbox_row(db, 1, &o);
        ck_assert_str_eq(o.command_id, "fulfilment:" ORDER ":abort");
        ck_assert_str_eq(o.command, "CancelOrder");
        ck_assert_str_eq(o.causation, "fulfilment:" ORDER ":reserve");
        Orders__CancelOrder *co = orders__cancel_order__unpack(NULL, (size_t)o.len, o.body);
        ck_assert_ptr_nonnull(co);
        ck_assert_str_eq(co->order_id, ORDER);
        ck_assert_msg(strstr(co->reason, "no such warehouse") != NULL, "%s", co->reason);
        orders__cancel_order__free_unpacked(co, NULL);
    }
}
END_TEST

START_TEST(apply_rejection_cancels_the_order_with_the_reason)
{
    tev t;
    ev_placed(&t, ORDER, 1, 20);
    apply_to(db, &t);
    ev_rejected(&t, ORDER, ORDER_RID, "insufficient stock for sku apple: available 1, requested 2",
                30);
    apply_to(db, &t);
    char step[64], reason[512], rid[JL_UUID_LEN + 1];
    row_of(db, ORDER, step, reason, rid);
    ck_assert_str_eq(step, "rejected");
    ck_assert_str_eq(reason, "insufficient stock for sku apple: available 1, requested 2");
    ck_assert_str_eq(rid, ORDER_RID);

    outrow o;
    outbox_row(db, 1, &o);
    ck_assert_str_eq(o.command_id, "fulfilment:" ORDER ":cancel");
    ck_assert_str_eq(o.service, "orders");
    ck_assert_str_eq(o.command, "CancelOrder");
    Orders__CancelOrder *c = orders__cancel_order__unpack(NULL, (size_t)o.len, o.body);
    ck_assert_ptr_nonnull(c);
    ck_assert_str_eq(c->order_id, ORDER);
    ck_assert_str_eq(c->reason,
                     "out of stock: insufficient stock for sku apple: available 1, requested 2");
    orders__cancel_order__free_unpacked(c, NULL);

    ev_cancelled(&t, ORDER, "out of stock: insufficient stock for sku apple", 40);
    apply_to(db, &t);
    row_of(db, ORDER, step, reason, rid);
    ck_assert_str_eq(step, "cancelled_out_of_stock");
    ck_assert_str_eq(reason, "insufficient stock for sku apple: available 1, requested 2");
    ck_assert_int_eq(count(db, "SELECT count(*) FROM jl_outbox"), 2);
}
END_TEST

START_TEST(apply_cancel_reason_sent_is_cut_to_the_orders_limit)
{
    char longer[600];
    memset(longer, 'x', sizeof(longer) - 3);
    /* A two-byte UTF-8 character straddling the cut must not be split. */
    memcpy(longer + FULFILMENT_MAX_REASON - 15, "\xc3\xa9", 2);
    longer[sizeof(longer) - 3] = 0;
    tev t;
    ev_placed(&t, ORDER, 1, 20);
    apply_to(db, &t);
    ev_rejected(&t, ORDER, ORDER_RID, longer, 30);
    apply_to(db, &t);
    outrow o;
    outbox_row(db, 1, &o);
    Orders__CancelOrder *c = orders__cancel_order__unpack(NULL, (size_t)o.len, o.body);
    ck_assert_ptr_nonnull(c);
    /* "out of stock: " is 14 bytes: the é starts at byte 255 and would end past 256. */
    ck_assert_uint_eq(strlen(c->reason), FULFILMENT_MAX_REASON - 1);
    ck_assert(strncmp(c->reason, "out of stock: xxx", 17) == 0);
    orders__cancel_order__free_unpacked(c, NULL);
}
END_TEST

START_TEST(outbox_withdraws_only_a_command_without_a_final_reply)
{
    Orders__ConfirmOrder c = ORDERS__CONFIRM_ORDER__INIT;
    c.order_id = ORDER;
    c.reservation_id = ORDER;
    ck_assert_int_eq(jl_outbox_add(db, "orders", &c.base, "one", NULL, NULL), JL_OK);
    ck_assert_int_eq(jl_outbox_add(db, "orders", &c.base, "two", NULL, NULL), JL_OK);
    ck_assert_int_eq(jl_db_exec(db, "UPDATE jl_outbox SET replied_at_ns = 5, reply_code = 'ok' "
                                    "WHERE command_id = 'two'"),
                     JL_OK);
    ck_assert_int_eq(jl_outbox_withdraw(db, "one", "not needed"), JL_OK);
    ck_assert_int_eq(jl_outbox_withdraw(db, "two", "not needed"), JL_OK);
    ck_assert_int_eq(jl_outbox_withdraw(db, "no such id", "not needed"), JL_OK);
    ck_assert_int_eq(jl_outbox_withdraw(db, NULL, "not needed"), JL_ERR_INVALID);
    ck_assert_int_eq(count(db, "SELECT count(*) FROM jl_outbox WHERE command_id = 'one' AND "
                               "reply_code = 'withdrawn' AND reply_message = 'not needed' AND "
                               "replied_at_ns > 0"),
                     1);
    ck_assert_int_eq(count(db, "SELECT count(*) FROM jl_outbox WHERE command_id = 'two' AND "
                               "reply_code = 'ok' AND replied_at_ns = 5"),
                     1);
    /* Withdrawn once: a second withdrawal changes nothing. */
    ck_assert_int_eq(jl_outbox_withdraw(db, "one", "again"), JL_OK);
    ck_assert_int_eq(count(db, "SELECT count(*) FROM jl_outbox WHERE reply_message = 'again'"), 0);
}
END_TEST

START_TEST(apply_cancel_before_the_reservation_releases_it_when_reserved)
{
    tev t;
    ev_placed(&t, ORDER, 1, 20);
    apply_to(db, &t);
    ev_cancelled(&t, ORDER, "changed my mind", 30);
    apply_to(db, &t);
    char step[64], reason[512], rid[JL_UUID_LEN + 1];
    row_of(db, ORDER, step, reason, rid);
    ck_assert_str_eq(step, "cancelled");
    ck_assert_str_eq(reason, "changed my mind");
    ck_assert_int_eq(count(db, "SELECT count(*) FROM jl_outbox"), 1);
    /* The reservation not sent yet is withdrawn: answered, so never sent. */
    ck_assert_int_eq(count(db, "SELECT count(*) FROM jl_outbox WHERE reply_code = 'withdrawn' "
                               "AND replied_at_ns IS NOT NULL AND reply_message = 'overtaken by "
                               "orders.OrderCancelled'"),
                     1);

    ev_reserved(&t, ORDER, ORDER_RID, 25); /* occurred before the cancellation */
    apply_to(db, &t);
    ck_assert_str_eq(step_of(db, ORDER), "released");
    outrow o;
    outbox_row(db, 1, &o);
    ck_assert_str_eq(o.command_id, "fulfilment:" ORDER ":release");
    ck_assert_str_eq(o.service, "inventory");
    ck_assert_str_eq(o.command, "ReleaseReservation");
    Inventory__ReleaseReservation *r =
        inventory__release_reservation__unpack(NULL, (size_t)o.len, o.body);
    ck_assert_ptr_nonnull(r);
    ck_assert_str_eq(r->reservation_id, ORDER_RID);
    ck_assert_str_eq(r->reason, "order cancelled");
    inventory__release_reservation__free_unpacked(r, NULL);
    ck_assert_int_eq(count(db, "SELECT count(*) FROM jl_outbox"), 2);
    ck_assert_int_eq(count(db, "SELECT updated_at_ns FROM fulfilments"), 30);

    ev_released(&t, ORDER, ORDER_RID, 40);
    apply_to(db, &t);
    ck_assert_str_eq(step_of(db, ORDER), "released");
    ck_assert_int_eq(count(db, "SELECT count(*) FROM jl_outbox"), 2);
}
END_TEST

/* The outbox rows whose command id starts "fulfilment:<order>:rel-", each checked to release
 * @p rid; how many. */
static int releases_again(const char *order, const char *rid)
{
    char like[128];
    snprintf(like, sizeof(like), "fulfilment:%s:rel-%%", order);
    sqlite3_stmt *st = jl_db_stmt(db, "SELECT command_id, command, body FROM jl_outbox WHERE "
                                      "command_id LIKE ?1 ORDER BY id");
    ck_assert_ptr_nonnull(st);
    sqlite3_bind_text(st, 1, like, -1, SQLITE_TRANSIENT);
    int n = 0;
    while (sqlite3_step(st) == SQLITE_ROW) {
        const char *id = (const char *)sqlite3_column_text(st, 0);
        ck_assert_uint_eq(strlen(id), 63); /* within the producers' 64 bytes with its NUL */
        ck_assert_str_eq((const char *)sqlite3_column_text(st, 1), "ReleaseReservation");
        Inventory__ReleaseReservation *r = inventory__release_reservation__unpack(
            NULL, (size_t)sqlite3_column_bytes(st, 2), sqlite3_column_blob(st, 2));
        ck_assert_ptr_nonnull(r);
        ck_assert_str_eq(r->reservation_id, rid);
        inventory__release_reservation__free_unpacked(r, NULL);
        n++;
    }
    sqlite3_reset(st);
    return n;
}

/* The inventory forgets closed reservation ids after a while: a ReserveStock sent again then
 * (by this process manager replaying its streams after losing its database) reserves anew. A
 * StockReserved of ours after the reservation was committed, released or rejected is released,
 * once per such event, and moves nothing else. */
START_TEST(a_reservation_made_again_after_it_closed_is_released)
{
    static const char *const orders[3] = {"00000000-0000-4000-8000-0000000000a1",
                                          "00000000-0000-4000-8000-0000000000a2",
                                          "00000000-0000-4000-8000-0000000000a3"};
    static const char *const steps[3] = {"committed", "released", "cancelled_out_of_stock"};
    tev t;
    for (int k = 0; k < 3; k++) {
        char rid[JL_UUID_LEN + 1];
        ck_assert_int_eq(fulfilment_reservation_id(rid, orders[k]), JL_OK);
        ev_placed(&t, orders[k], 1, 20);
        apply_to(db, &t);
        if (k == 0) {
            ev_reserved(&t, orders[k], rid, 30);
            apply_to(db, &t);
            ev_confirmed(&t, orders[k], rid, 40);
            apply_to(db, &t);
            ev_committed(&t, orders[k], rid, 50);
            apply_to(db, &t);
        } else if (k == 1) {
            ev_reserved(&t, orders[k], rid, 30);
            apply_to(db, &t);
            ev_cancelled(&t, orders[k], "changed my mind", 40);
            apply_to(db, &t);
            ev_released(&t, orders[k], rid, 50);
            apply_to(db, &t);
        } else {
            ev_rejected(&t, orders[k], rid, "no pears", 30);
            apply_to(db, &t);
            ev_cancelled(&t, orders[k], "out of stock: no pears", 40);
            apply_to(db, &t);
        }
        ck_assert_str_eq(step_of(db, orders[k]), steps[k]);
        int rows = count(db, "SELECT count(*) FROM jl_outbox");
        ck_assert_int_eq(releases_again(orders[k], rid), 0);

        ev_reserved(&t, orders[k], rid, 60);
        apply_to(db, &t);
        ck_assert_int_eq(releases_again(orders[k], rid), 1);
        ck_assert_int_eq(count(db, "SELECT count(*) FROM jl_outbox"), rows + 1);
        /* Another one (another event): another release, under an id of its own. */
        ev_reserved(&t, orders[k], rid, 70);
        apply_to(db, &t);
        ck_assert_int_eq(releases_again(orders[k], rid), 2);
        ck_assert_str_eq(step_of(db, orders[k]), steps[k]);
        ck_assert_int_eq(count(db, "SELECT count(*) FROM fulfilments WHERE updated_at_ns > 50"), 0);
    }
}
END_TEST

START_TEST(apply_cancel_after_the_reservation_releases_it_at_once)
{
    tev t;
    ev_placed(&t, ORDER, 1, 20);
    apply_to(db, &t);
    ev_reserved(&t, ORDER, ORDER_RID, 30);
    apply_to(db, &t);
    ev_cancelled(&t, ORDER, "changed my mind", 40);
    apply_to(db, &t);
    ck_assert_str_eq(step_of(db, ORDER), "released");
    outrow o;
    outbox_row(db, 2, &o);
    ck_assert_str_eq(o.command_id, "fulfilment:" ORDER ":release");
    ck_assert_int_eq(count(db, "SELECT count(*) FROM jl_outbox"), 3);
}
END_TEST

START_TEST(apply_ignores_foreign_reservations_unknown_orders_and_other_events)
{
    tev t;
    ev_registered(&t, 5);
    apply_to(db, &t);
    ev_cancelled(&t, ORDER2, "never placed", 6); /* an order cancelled while open */
    apply_to(db, &t);
    ev_confirmed(&t, ORDER2, ORDER2_RID, 7);
    apply_to(db, &t);
    ev_reserved(&t, ORDER2, FOREIGN_RID, 8); /* somebody else's reservation */
    apply_to(db, &t);
    ev_rejected(&t, "not-a-uuid", ORDER2_RID, "x", 9);
    apply_to(db, &t);
    ev_committed(&t, ORDER2, "", 9);
    apply_to(db, &t);
    ck_assert_int_eq(count(db, "SELECT count(*) FROM fulfilments"), 0);

    ev_placed(&t, ORDER, 1, 20);
    apply_to(db, &t);
    ev_reserved(&t, ORDER, FOREIGN_RID, 30);
    apply_to(db, &t);
    ev_rejected(&t, ORDER, ORDER2_RID, "another order's id", 31);
    apply_to(db, &t);
    ck_assert_str_eq(step_of(db, ORDER), "reserving");
    ck_assert_int_eq(count(db, "SELECT count(*) FROM fulfilments"), 1);
    ck_assert_int_eq(count(db, "SELECT count(*) FROM jl_outbox"), 1);
    ck_assert_int_eq(count(db, "SELECT updated_at_ns FROM fulfilments"), 20);
}
END_TEST

START_TEST(apply_matches_our_reservation_whatever_the_case_of_its_ids)
{
    tev t;
    ev_placed(&t, ORDER, 1, 20);
    apply_to(db, &t);
    ev_reserved(&t, "9B2F1D3E-4C5A-4B6C-8D7E-0F1A2B3C4D5E", "180AD408-B7EB-8922-A41A-F6BA11DE93E9",
                30);
    apply_to(db, &t);
    ck_assert_str_eq(step_of(db, ORDER), "reserved");
}
END_TEST

START_TEST(apply_refuses_an_order_placed_without_lines)
{
    tev t;
    ev_placed(&t, ORDER, 0, 20);
    char err[512] = "";
    ck_assert_int_eq(fulfilment_process.apply(db, &t.ev, err, sizeof(err)), JL_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(err, "no lines"));
    ck_assert_int_eq(count(db, "SELECT count(*) FROM fulfilments"), 0);
    ck_assert_int_eq(count(db, "SELECT count(*) FROM jl_outbox"), 0);
    /* Also when the inventory's events came first (no reservation would be decided): refused
     * either way, or a rebuild interleaving the streams the other way would differ. */
    ev_reserved(&t, ORDER, ORDER_RID, 30);
    apply_to(db, &t);
    char was[64];
    snprintf(was, sizeof(was), "%s", step_of(db, ORDER));
    int64_t rows = count(db, "SELECT count(*) FROM jl_outbox");
    ev_placed(&t, ORDER, 0, 20);
    err[0] = 0;
    ck_assert_int_eq(fulfilment_process.apply(db, &t.ev, err, sizeof(err)), JL_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(err, "no lines"));
    ck_assert_str_eq(step_of(db, ORDER), was);
    ck_assert_int_eq(count(db, "SELECT count(*) FROM jl_outbox"), rows);
}
END_TEST

START_TEST(apply_decides_a_command_once_when_an_event_is_applied_again)
{
    tev t;
    ev_placed(&t, ORDER, 1, 20);
    apply_to(db, &t);
    apply_to(db, &t);
    ck_assert_int_eq(count(db, "SELECT count(*) FROM jl_outbox"), 1);
    /* A redecision from scratch (the row lost, the outbox not) is the same outbox row. */
    ck_assert_int_eq(jl_db_exec(db, "DELETE FROM fulfilments"), JL_OK);
    apply_to(db, &t);
    ck_assert_str_eq(step_of(db, ORDER), "reserving");
    ck_assert_int_eq(count(db, "SELECT count(*) FROM jl_outbox"), 1);
}
END_TEST

START_TEST(apply_after_the_inventory_ran_ahead_sends_no_second_reservation)
{
    /* A replay in which INVENTORY is consumed before ORDERS. */
    tev t;
    ev_reserved(&t, ORDER, ORDER_RID, 30);
    apply_to(db, &t);
    ck_assert_str_eq(step_of(db, ORDER), "reserved");
    ev_placed(&t, ORDER, 1, 20);
    apply_to(db, &t);
    ck_assert_str_eq(step_of(db, ORDER), "reserved");
    ck_assert_int_eq(count(db, "SELECT count(*) FROM jl_outbox WHERE command = 'ReserveStock'"), 0);
    ck_assert_int_eq(count(db, "SELECT count(*) FROM jl_outbox WHERE command = 'ConfirmOrder'"), 1);
    ck_assert_int_eq(count(db, "SELECT updated_at_ns FROM fulfilments"), 30);
}
END_TEST

/* Several orders' events as the two streams hold them (each stream in its own order). */
typedef struct streams {
    tev orders[16];
    int n_orders;
    tev inventory[16];
    int n_inventory;
} streams;

#define O3 "3c1f0a2b-7d6e-4f5a-9b8c-1d2e3f4a5b6c"
static char o3_rid[JL_UUID_LEN + 1];

static void fill_streams(streams *s)
{
    ck_assert_int_eq(fulfilment_reservation_id(o3_rid, O3), JL_OK);
    memset(s, 0, sizeof(*s));
    int o = 0, i = 0;
    /* ORDER: reserved, confirmed, committed; ORDER2: out of stock; O3: cancelled while
     * reserving, released. */
    ev_placed(&s->orders[o++], ORDER, 2, 100);
    ev_placed(&s->orders[o++], ORDER2, 1, 101);
    ev_placed(&s->orders[o++], O3, 3, 102);
    ev_cancelled(&s->orders[o++], O3, "changed my mind", 103);
    ev_confirmed(&s->orders[o++], ORDER, ORDER_RID, 104);
    ev_cancelled(&s->orders[o++], ORDER2, "out of stock: insufficient stock", 105);
    ev_registered(&s->inventory[i++], 50);
    ev_reserved(&s->inventory[i++], ORDER, ORDER_RID, 110);
    ev_rejected(&s->inventory[i++], ORDER2, ORDER2_RID, "insufficient stock", 111);
    ev_reserved(&s->inventory[i++], O3, o3_rid, 112);
    ev_released(&s->inventory[i++], O3, o3_rid, 113);
    ev_committed(&s->inventory[i++], ORDER, ORDER_RID, 114);
    s->n_orders = o;
    s->n_inventory = i;
}

/* Apply the streams interleaved: bit k of @p mask set takes the next inventory event. */
static void dump_after(const streams *s, uint64_t mask, jl_buf *out)
{
    jl_db *d = open_db();
    int o = 0, i = 0, placed_first = 0;
    for (int k = 0; k < s->n_orders + s->n_inventory; k++) {
        bool inv = ((mask >> k) & 1u) != 0;
        if ((inv && i < s->n_inventory) || o == s->n_orders) {
            apply_to(d, &s->inventory[i++]);
        } else {
            /* orders[n] (n < 3) places the order whose first inventory event is
             * inventory[n + 1]: placed first when that is still to come. */
            placed_first += o < 3 && i <= o + 1;
            apply_to(d, &s->orders[o++]);
        }
    }
    ck_assert_str_eq(step_of(d, ORDER), "committed");
    ck_assert_str_eq(step_of(d, ORDER2), "cancelled_out_of_stock");
    ck_assert_str_eq(step_of(d, O3), "released");
    /* A reservation asked for each order placed before the inventory said anything of it, and
     * for no other: none twice, none for what the inventory already decided. */
    ck_assert_int_eq(count(d, "SELECT count(*) FROM jl_outbox WHERE command = 'ReserveStock'"),
                     placed_first);
    jl_buf_reset(out);
    ck_assert_int_eq(jl_db_dump(d, out), JL_OK);
    jl_db_close(d);
}

START_TEST(apply_builds_the_same_model_whatever_the_interleaving)
{
    static streams s;
    fill_streams(&s);
    jl_buf want, got;
    jl_buf_init(&want, 1 << 20);
    jl_buf_init(&got, 1 << 20);
    dump_after(&s, 0, &want); /* all of ORDERS first */
    ck_assert_ptr_nonnull(strstr((const char *)want.data, "insufficient stock"));
    dump_after(&s, ~(uint64_t)0, &got); /* all of INVENTORY first */
    ck_assert_str_eq((const char *)got.data, (const char *)want.data);
    uint64_t x = 88172645463325252ULL; /* xorshift: reproducible mixes */
    for (int r = 0; r < 40; r++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        dump_after(&s, x, &got);
        ck_assert_msg(strcmp((const char *)got.data, (const char *)want.data) == 0,
                      "interleaving %llx differs:\n%s\nwant:\n%s", (unsigned long long)x,
                      (const char *)got.data, (const char *)want.data);
    }
    jl_buf_cleanup(&want);
    jl_buf_cleanup(&got);
}
END_TEST

/* ================================ queries ================================ */

static const jl_query_def *query(const ProtobufCMessageDescriptor *d)
{
    for (size_t i = 0; i < fulfilment_process.n_queries; i++) {
        if (fulfilment_process.queries[i].request == d)
            return &fulfilment_process.queries[i];
    }
    ck_abort_msg("no query %s", d->name);
    return NULL;
}

static void ask(const ProtobufCMessage *req, jl_reply *r)
{
    jl_reply_reset(r);
    ck_assert_int_eq(jl_db_begin(db, false), JL_OK);
    ck_assert_int_eq(query(req->descriptor)->handle(db, req, r), JL_OK);
    jl_db_rollback(db);
}

START_TEST(get_fulfilment_answers_the_row_or_not_found)
{
    tev t;
    ev_placed(&t, ORDER, 1, 20);
    apply_to(db, &t);
    ev_rejected(&t, ORDER, ORDER_RID, "unknown sku apple", 30);
    apply_to(db, &t);

    jl_reply r;
    jl_reply_init(&r);
    Fulfilment__GetFulfilment q = FULFILMENT__GET_FULFILMENT__INIT;
    q.order_id = "9B2F1D3E-4C5A-4B6C-8D7E-0F1A2B3C4D5E";
    ask(&q.base, &r);
    ck_assert_int_eq(r.code, JL_CODE_OK);
    ck_assert_str_eq(r.result_type, "fulfilment.GetFulfilmentResult");
    Fulfilment__GetFulfilmentResult *res =
        fulfilment__get_fulfilment_result__unpack(NULL, r.result.len, r.result.data);
    ck_assert_ptr_nonnull(res);
    ck_assert_str_eq(res->order_id, ORDER);
    ck_assert_str_eq(res->reservation_id, ORDER_RID);
    ck_assert_str_eq(res->step, "rejected");
    ck_assert_str_eq(res->reason, "unknown sku apple");
    ck_assert_int_eq(res->updated_at_ns, 30);
    ck_assert_str_eq(res->order_status, "placed");
    ck_assert_str_eq(res->stock_status, "rejected");
    fulfilment__get_fulfilment_result__free_unpacked(res, NULL);

    q.order_id = ORDER2;
    ask(&q.base, &r);
    ck_assert_int_eq(r.code, JL_CODE_NOT_FOUND);
    q.order_id = "nope";
    ask(&q.base, &r);
    ck_assert_int_eq(r.code, JL_CODE_INVALID);
    jl_reply_cleanup(&r);
}
END_TEST

START_TEST(list_fulfilments_filters_by_step_and_pages)
{
    char ids[5][JL_UUID_LEN + 1];
    for (int i = 0; i < 5; i++) {
        tev t;
        snprintf(ids[i], sizeof(ids[i]), "00000000-0000-4000-8000-00000000001%d", i);
        ev_placed(&t, ids[i], 1, 20 + i);
        apply_to(db, &t);
        if (i % 2 == 1) {
            char rid[JL_UUID_LEN + 1];
            ck_assert_int_eq(fulfilment_reservation_id(rid, ids[i]), JL_OK);
            ev_reserved(&t, ids[i], rid, 40);
            apply_to(db, &t);
        }
    }
    jl_reply r;
    jl_reply_init(&r);
    Fulfilment__ListFulfilments q = FULFILMENT__LIST_FULFILMENTS__INIT;
    q.step = "reserving";
    q.limit = 2;
    ask(&q.base, &r);
    ck_assert_int_eq(r.code, JL_CODE_OK);
    Fulfilment__ListFulfilmentsResult *res =
        fulfilment__list_fulfilments_result__unpack(NULL, r.result.len, r.result.data);
    ck_assert_ptr_nonnull(res);
    ck_assert_uint_eq(res->n_fulfilments, 2);
    ck_assert_str_eq(res->fulfilments[0]->order_id, ids[0]);
    ck_assert_str_eq(res->fulfilments[1]->order_id, ids[2]);
    ck_assert_str_eq(res->next_cursor, ids[2]);
    char cursor[JL_UUID_LEN + 1];
    snprintf(cursor, sizeof(cursor), "%s", res->next_cursor);
    fulfilment__list_fulfilments_result__free_unpacked(res, NULL);

    q.cursor = cursor;
    ask(&q.base, &r);
    res = fulfilment__list_fulfilments_result__unpack(NULL, r.result.len, r.result.data);
    ck_assert_ptr_nonnull(res);
    ck_assert_uint_eq(res->n_fulfilments, 1);
    ck_assert_str_eq(res->fulfilments[0]->order_id, ids[4]);
    ck_assert_str_eq(res->next_cursor, "");
    fulfilment__list_fulfilments_result__free_unpacked(res, NULL);

    q.step = "";
    q.cursor = "";
    q.limit = 0;
    ask(&q.base, &r);
    res = fulfilment__list_fulfilments_result__unpack(NULL, r.result.len, r.result.data);
    ck_assert_ptr_nonnull(res);
    ck_assert_uint_eq(res->n_fulfilments, 5);
    ck_assert_str_eq(res->fulfilments[1]->step, "reserved");
    fulfilment__list_fulfilments_result__free_unpacked(res, NULL);

    q.step = "shipped";
    ask(&q.base, &r);
    ck_assert_int_eq(r.code, JL_CODE_INVALID);
    q.step = "";
    q.limit = FULFILMENT_MAX_LIMIT + 1;
    ask(&q.base, &r);
    ck_assert_int_eq(r.code, JL_CODE_INVALID);
    q.limit = 0;
    q.cursor = "page-2";
    ask(&q.base, &r);
    ck_assert_int_eq(r.code, JL_CODE_INVALID);
    jl_reply_cleanup(&r);
}
END_TEST

/* A page of a rare step reads that step's rows by its index, not every row: queries are
 * answered one at a time, and a scan of a large table would hold up every other one. Counted
 * in SQLite's virtual machine steps, not timed. */
START_TEST(list_fulfilments_of_a_rare_step_reads_only_that_step)
{
    sqlite3 *h = jl_db_handle(db);
    ck_assert_int_eq(
        sqlite3_exec(
            h,
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5000) "
            "INSERT INTO fulfilments SELECT printf('00000000-0000-4000-8000-%012d', i), "
            "'', 'placed', 'none', '', '', 'reserving', '', 0 FROM n;"
            "INSERT INTO fulfilments VALUES ('ffffffff-0000-4000-8000-000000000000', '', "
            "'placed', 'rejected', '', 'no stock', 'rejected', 'no stock', 0);",
            NULL, NULL, NULL),
        SQLITE_OK);
    jl_reply r;
    jl_reply_init(&r);
    Fulfilment__ListFulfilments q = FULFILMENT__LIST_FULFILMENTS__INIT;
    q.step = "rejected";
    q.limit = 10;
    long steps;
    jl_ck_steps_begin(db, &steps);
    ask(&q.base, &r);
    jl_ck_steps_end(db);
    ck_assert_int_eq(r.code, JL_CODE_OK);
    Fulfilment__ListFulfilmentsResult *res =
        fulfilment__list_fulfilments_result__unpack(NULL, r.result.len, r.result.data);
    ck_assert_ptr_nonnull(res);
    ck_assert_uint_eq(res->n_fulfilments, 1);
    ck_assert_str_eq(res->fulfilments[0]->order_id, "ffffffff-0000-4000-8000-000000000000");
    fulfilment__list_fulfilments_result__free_unpacked(res, NULL);
    ck_assert_msg(steps < 1000, "%ld virtual machine steps for one row of 5,001", steps);
    /* Without a step, a page still stops at its limit. */
    q.step = "";
    jl_ck_steps_begin(db, &steps);
    ask(&q.base, &r);
    jl_ck_steps_end(db);
    ck_assert_int_eq(r.code, JL_CODE_OK);
    res = fulfilment__list_fulfilments_result__unpack(NULL, r.result.len, r.result.data);
    ck_assert_ptr_nonnull(res);
    ck_assert_uint_eq(res->n_fulfilments, 10); /* a whole page, and more to come */
    ck_assert_str_eq(res->fulfilments[0]->order_id, "00000000-0000-4000-8000-000000000001");
    ck_assert_str_ne(res->next_cursor, "");
    fulfilment__list_fulfilments_result__free_unpacked(res, NULL);
    ck_assert_msg(steps < 1000, "%ld virtual machine steps for a page of 10", steps);
    jl_reply_cleanup(&r);
}
END_TEST

START_TEST(definition_lists_every_event_type_of_both_streams)
{
    static const ProtobufCMessageDescriptor *const all[] = {
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
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
        ck_assert_ptr_eq(jl_types_find(&fulfilment_process.events, all[i]->name), all[i]);
    ck_assert_str_eq(fulfilment_process.name, "fulfilment");
    ck_assert(fulfilment_process.outbox);
    ck_assert_uint_eq(fulfilment_process.n_sources, 2);
    ck_assert_str_eq(fulfilment_process.sources[0].stream, "ORDERS");
    ck_assert_str_eq(fulfilment_process.sources[0].filter_subject, "orders.events.>");
    ck_assert_str_eq(fulfilment_process.sources[1].stream, "INVENTORY");
    ck_assert_str_eq(fulfilment_process.sources[1].filter_subject, "inventory.events.>");
}
END_TEST

/* ================================ main ================================ */

static Suite *fulfilment_suite(void)
{
    Suite *s = suite_create("fulfilment");
    TCase *tc = tcase_create("ids");
    tcase_add_test(tc, reservation_id_is_fnv1a_128_of_the_order_id_as_a_uuid_v8);
    tcase_add_test(tc, reservation_id_ignores_the_case_of_the_order_id);
    tcase_add_test(tc, reservation_id_refuses_what_is_not_a_uuid);
    tcase_add_test(tc, reservation_ids_are_stable_and_distinct_across_orders);
    tcase_add_test(tc, command_ids_name_the_order_and_the_kind);
    suite_add_tcase(s, tc);

    tc = tcase_create("state machine");
    tcase_add_loop_test(tc, transition_follows_the_table, 0,
                        (int)(sizeof(transitions) / sizeof(transitions[0])));
    tcase_add_test(tc, each_event_moves_only_its_own_side_and_never_back);
    tcase_add_loop_test(tc, every_interleaving_of_the_two_streams_ends_in_the_same_state, 0,
                        (int)(sizeof(scenarios) / sizeof(scenarios[0])));
    tcase_add_test(tc, live_paths_send_each_command_once_in_order);
    tcase_add_test(tc, news_from_the_other_stream_or_a_cancellation_overtakes_a_command);
    suite_add_tcase(s, tc);

    tc = tcase_create("apply");
    tcase_add_checked_fixture(tc, db_setup, db_teardown);
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, apply_happy_path_reserves_confirms_and_commits);
    tcase_add_test(tc, outbox_refuses_ids_it_would_have_to_cut);
    tcase_add_test(tc, a_refused_reservation_cancels_the_order_also_from_a_row_without_a_key);
    tcase_add_test(tc, outbox_withdraws_only_a_command_without_a_final_reply);
    tcase_add_test(tc, apply_rejection_cancels_the_order_with_the_reason);
    tcase_add_test(tc, apply_cancel_reason_sent_is_cut_to_the_orders_limit);
    tcase_add_test(tc, apply_cancel_before_the_reservation_releases_it_when_reserved);
    tcase_add_test(tc, apply_cancel_after_the_reservation_releases_it_at_once);
    tcase_add_test(tc, apply_ignores_foreign_reservations_unknown_orders_and_other_events);
    tcase_add_test(tc, apply_matches_our_reservation_whatever_the_case_of_its_ids);
    tcase_add_test(tc, apply_refuses_an_order_placed_without_lines);
    tcase_add_test(tc, apply_decides_a_command_once_when_an_event_is_applied_again);
    tcase_add_test(tc, apply_after_the_inventory_ran_ahead_sends_no_second_reservation);
    tcase_add_test(tc, apply_builds_the_same_model_whatever_the_interleaving);
    tcase_add_test(tc, get_fulfilment_answers_the_row_or_not_found);
    tcase_add_test(tc, list_fulfilments_filters_by_step_and_pages);
    tcase_add_test(tc, a_reservation_made_again_after_it_closed_is_released);
    tcase_add_test(tc, list_fulfilments_of_a_rare_step_reads_only_that_step);
    tcase_add_test(tc, definition_lists_every_event_type_of_both_streams);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return jl_ck_run(fulfilment_suite());
}
