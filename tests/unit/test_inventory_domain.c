/*
 * Unit tests of the inventory domain (producers/inventory/domain.c): every rule of decide,
 * accepted and rejected, every event of evolve, the state's bounds, its protobuf form, and
 * sequences of both. No NATS, no clock.
 *
 * Each test starts from a fresh state `st` and decision `d` (checked fixture). Commands go
 * through decide_msg(), which also asserts that decide left the state byte-for-byte unchanged;
 * accept() then feeds the emitted events, decoded from their wire bytes, back into evolve.
 * States are about 200 KiB, so every one lives in static storage or on the heap.
 */
#include "domain.h"

#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jetledger/codec.h"

#define WH INVENTORY_WAREHOUSE_ID
#define R1 "11111111-1111-4111-8111-111111111111"
#define R2 "22222222-2222-4222-8222-222222222222"
#define R3 "33333333-3333-4333-8333-333333333333"
#define O1 "0a0a0a0a-0a0a-4a0a-8a0a-0a0a0a0a0a0a"
#define O2 "0b0b0b0b-0b0b-4b0b-8b0b-0b0b0b0b0b0b"

static inventory_state st;
static inventory_state before; /* scratch of decide_msg and evolve_expect */
static jl_decision d;

static void setup(void)
{
    inventory_state_init(&st);
    jl_decision_init(&d);
}

static void teardown(void)
{
    jl_decision_cleanup(&d);
}

/* ---- helpers ---- */

typedef struct line {
    const char *sku;
    int64_t quantity;
} line;

/* Fill @p buf with @p n copies of @p c and a NUL; @p buf must hold n + 1 bytes. */
static char *fill(char *buf, size_t n, char c)
{
    memset(buf, c, n);
    buf[n] = 0;
    return buf;
}

/* The i-th of a family of distinct UUIDs (family 0..15). */
static const char *nth_id(char out[JL_UUID_LEN + 1], unsigned family, unsigned i)
{
    snprintf(out, JL_UUID_LEN + 1, "%08x-0000-4000-8000-%012x", 0xa0000000u + family, i);
    return out;
}

static inventory_state *new_state(void)
{
    inventory_state *s = malloc(sizeof(*s));
    ck_assert_ptr_nonnull(s);
    inventory_state_init(s);
    return s;
}

static void decide_on(const inventory_state *s, const char *warehouse, const ProtobufCMessage *msg)
{
    memcpy(&before, s, sizeof(before));
    jl_command cmd = {.msg = msg, .aggregate_id = warehouse, .command_id = "cmd-1", .now_ns = 42};
    jl_decision_reset(&d);
    inventory_decide(s, &cmd, &d);
    ck_assert_msg(memcmp(&before, s, sizeof(before)) == 0, "decide modified the state");
}

static void decide_msg(const ProtobufCMessage *msg)
{
    decide_on(&st, WH, msg);
}

static void register_product(const char *sku, const char *name)
{
    Inventory__RegisterProduct m = INVENTORY__REGISTER_PRODUCT__INIT;
    m.sku = (char *)sku;
    m.name = (char *)name;
    decide_msg(&m.base);
}

static void restock(const char *sku, int64_t quantity)
{
    Inventory__Restock m = INVENTORY__RESTOCK__INIT;
    m.sku = (char *)sku;
    m.quantity = quantity;
    decide_msg(&m.base);
}

/* Protobuf lines of @p lines, in @p pl / @p pp (at least n each). */
static void to_lines(const line *lines, size_t n, Inventory__ReservationLine *pl,
                     Inventory__ReservationLine **pp)
{
    for (size_t i = 0; i < n; i++) {
        inventory__reservation_line__init(&pl[i]);
        pl[i].sku = (char *)lines[i].sku;
        pl[i].quantity = lines[i].quantity;
        pp[i] = &pl[i];
    }
}

static void reserve(const char *rid, const char *oid, const line *lines, size_t n)
{
    Inventory__ReservationLine pl[INVENTORY_MAX_LINES + 2];
    Inventory__ReservationLine *pp[INVENTORY_MAX_LINES + 2];
    ck_assert_uint_le(n, INVENTORY_MAX_LINES + 2);
    to_lines(lines, n, pl, pp);
    Inventory__ReserveStock m = INVENTORY__RESERVE_STOCK__INIT;
    m.reservation_id = (char *)rid;
    m.order_id = (char *)oid;
    m.n_lines = n;
    m.lines = pp;
    decide_msg(&m.base);
}

static void release(const char *rid, const char *reason)
{
    Inventory__ReleaseReservation m = INVENTORY__RELEASE_RESERVATION__INIT;
    m.reservation_id = (char *)rid;
    m.reason = (char *)reason;
    decide_msg(&m.base);
}

static void commit(const char *rid)
{
    Inventory__CommitReservation m = INVENTORY__COMMIT_RESERVATION__INIT;
    m.reservation_id = (char *)rid;
    decide_msg(&m.base);
}

static jl_status evolve_msg(inventory_state *s, const ProtobufCMessage *payload)
{
    jl_event ev = {
        .event_id = "00000000-0000-4000-8000-0000000000ee",
        .event_type = payload->descriptor->name,
        .aggregate_type = "warehouse",
        .aggregate_id = WH,
        .aggregate_version = 1,
        .payload = payload,
    };
    return inventory_evolve(s, &ev);
}

/* Evolve @p payload into st, expecting @p want; on failure st must be unchanged. */
static void evolve_expect(const ProtobufCMessage *payload, jl_status want)
{
    memcpy(&before, &st, sizeof(before));
    jl_status s = evolve_msg(&st, payload);
    ck_assert_msg(s == want, "evolve returned %s, want %s", jl_status_str(s), jl_status_str(want));
    if (want != JL_OK)
        ck_assert_msg(memcmp(&before, &st, sizeof(st)) == 0, "a refused event changed the state");
}

static jl_status ev_registered(inventory_state *s, const char *sku, const char *name)
{
    Inventory__ProductRegistered e = INVENTORY__PRODUCT_REGISTERED__INIT;
    e.sku = (char *)sku;
    e.name = (char *)name;
    return evolve_msg(s, &e.base);
}

static jl_status ev_restocked(inventory_state *s, const char *sku, int64_t quantity)
{
    Inventory__Restocked e = INVENTORY__RESTOCKED__INIT;
    e.sku = (char *)sku;
    e.quantity = quantity;
    return evolve_msg(s, &e.base);
}

static jl_status ev_reserved(inventory_state *s, const char *rid, const char *oid,
                             const line *lines, size_t n)
{
    Inventory__ReservationLine pl[INVENTORY_MAX_LINES + 2];
    Inventory__ReservationLine *pp[INVENTORY_MAX_LINES + 2];
    ck_assert_uint_le(n, INVENTORY_MAX_LINES + 2);
    to_lines(lines, n, pl, pp);
    Inventory__StockReserved e = INVENTORY__STOCK_RESERVED__INIT;
    e.reservation_id = (char *)rid;
    e.order_id = (char *)oid;
    e.n_lines = n;
    e.lines = pp;
    return evolve_msg(s, &e.base);
}

static jl_status ev_rejected(inventory_state *s, const char *rid)
{
    Inventory__ReservationRejected e = INVENTORY__RESERVATION_REJECTED__INIT;
    e.reservation_id = (char *)rid;
    e.order_id = O1;
    e.reason = "no";
    return evolve_msg(s, &e.base);
}

static jl_status ev_released(inventory_state *s, const char *rid)
{
    Inventory__ReservationReleased e = INVENTORY__RESERVATION_RELEASED__INIT;
    e.reservation_id = (char *)rid;
    return evolve_msg(s, &e.base);
}

static jl_status ev_committed(inventory_state *s, const char *rid)
{
    Inventory__ReservationCommitted e = INVENTORY__RESERVATION_COMMITTED__INIT;
    e.reservation_id = (char *)rid;
    return evolve_msg(s, &e.base);
}

/* "Given" steps: build st from events, as a replay would. */
static void given_product(const char *sku, int64_t on_hand)
{
    ck_assert_int_eq(ev_registered(&st, sku, "a product"), JL_OK);
    if (on_hand > 0)
        ck_assert_int_eq(ev_restocked(&st, sku, on_hand), JL_OK);
}

static void given_reserved(const char *rid, const line *lines, size_t n)
{
    ck_assert_int_eq(ev_reserved(&st, rid, O1, lines, n), JL_OK);
}

static const inventory_product *product_in(const inventory_state *in, const char *sku)
{
    for (uint32_t i = 0; i < in->n_products; i++) {
        if (strcmp(in->products[i].sku, sku) == 0)
            return &in->products[i];
    }
    ck_abort_msg("no product %s", sku);
    return NULL;
}

static void expect_stock_in(const inventory_state *in, const char *sku, int64_t on_hand,
                            int64_t reserved)
{
    const inventory_product *p = product_in(in, sku);
    ck_assert_int_eq(p->on_hand, on_hand);
    ck_assert_int_eq(p->reserved, reserved);
}

static void expect_stock(const char *sku, int64_t on_hand, int64_t reserved)
{
    expect_stock_in(&st, sku, on_hand, reserved);
}

/* Decode event @p i of d, checking its type; free with protobuf_c_message_free_unpacked. */
static ProtobufCMessage *unpack_event(size_t i, const ProtobufCMessageDescriptor *type)
{
    ck_assert_uint_gt(d.n_events, i);
    ck_assert_ptr_eq(d.types[i], type);
    ProtobufCMessage *m = protobuf_c_message_unpack(type, NULL, d.lens[i],
                                                    (const uint8_t *)d.bytes.data + d.offsets[i]);
    ck_assert_ptr_nonnull(m);
    return m;
}

/* The decision must be a rejection with @p code and exactly @p message, and hold no event. */
static void expect_rejected(jl_code code, const char *message)
{
    ck_assert_msg(d.code == code, "code %s, want %s (message: %s)", jl_code_str(d.code),
                  jl_code_str(code), d.message);
    ck_assert_str_eq(d.message, message);
    ck_assert_uint_eq(d.n_events, 0);
}

/* Same, when the message depends on a number the test does not want to spell out. */
static void expect_rejected_code(jl_code code)
{
    ck_assert_msg(d.code == code, "code %s, want %s (message: %s)", jl_code_str(d.code),
                  jl_code_str(code), d.message);
    ck_assert_str_ne(d.message, "");
    ck_assert_uint_eq(d.n_events, 0);
}

/* Accepted with no event: the command had already had its effect. */
static void expect_no_effect(void)
{
    ck_assert_msg(d.code == JL_CODE_OK, "rejected: %s: %s", jl_code_str(d.code), d.message);
    ck_assert_uint_eq(d.n_events, 0);
}

/* The decision must be accepted with one event; evolve st with it, decoded from its bytes. */
static void accept(void)
{
    ck_assert_msg(d.code == JL_CODE_OK, "rejected: %s: %s", jl_code_str(d.code), d.message);
    ck_assert_uint_eq(d.n_events, 1);
    ProtobufCMessage *m = unpack_event(0, d.types[0]);
    jl_status s = evolve_msg(&st, m);
    protobuf_c_message_free_unpacked(m, NULL);
    ck_assert_int_eq(s, JL_OK);
}

/* The decision must be one ReservationRejected with @p reason; evolve st with it. */
static void expect_reservation_rejected(const char *reason)
{
    Inventory__ReservationRejected *e = (Inventory__ReservationRejected *)unpack_event(
        0, &inventory__reservation_rejected__descriptor);
    ck_assert_str_eq(e->reason, reason);
    protobuf_c_message_free_unpacked(&e->base, NULL);
    accept();
}

/* The decision must be one StockReserved; evolve st with it. */
static void expect_reserved(void)
{
    ck_assert_msg(d.code == JL_CODE_OK, "rejected: %s: %s", jl_code_str(d.code), d.message);
    ck_assert_uint_eq(d.n_events, 1);
    ck_assert_ptr_eq(d.types[0], &inventory__stock_reserved__descriptor);
    accept();
}

/* Stock of @p n products "p000".., each with @p each units. */
static void given_products(size_t n, int64_t each)
{
    for (size_t i = 0; i < n; i++) {
        char sku[32]; /* room for any size_t: an unoptimised build cannot see i < 1000 */
        snprintf(sku, sizeof(sku), "p%03zu", i);
        given_product(sku, each);
    }
}

/* ---- names and sizes ---- */

START_TEST(outcome_str_names_every_outcome)
{
    ck_assert_str_eq(inventory_outcome_str(INVENTORY_REJECTED), "rejected");
    ck_assert_str_eq(inventory_outcome_str(INVENTORY_RELEASED), "released");
    ck_assert_str_eq(inventory_outcome_str(INVENTORY_COMMITTED), "committed");
    ck_assert_str_eq(inventory_outcome_str((inventory_outcome)0), "unknown");
    ck_assert_str_eq(inventory_outcome_str((inventory_outcome)99), "unknown");
}
END_TEST

START_TEST(state_init_is_empty_warehouse_and_all_zero)
{
    inventory_state *s = malloc(sizeof(*s));
    inventory_state *zero = calloc(1, sizeof(*zero));
    memset(s, 0xA5, sizeof(*s));
    inventory_state_init(s);
    ck_assert_uint_eq(s->n_products, 0);
    ck_assert_uint_eq(s->n_open, 0);
    ck_assert_uint_eq(s->n_closed, 0);
    ck_assert_mem_eq(s, zero, sizeof(*s));
    free(s);
    free(zero);
}
END_TEST

START_TEST(state_stays_within_the_documented_size)
{
    /* domain.h promises about 200 KiB: the producer memcpy's it on every command. */
    ck_assert_uint_le(sizeof(inventory_state), 210 * 1024);
    ck_assert_uint_ge(sizeof(inventory_state), 190 * 1024);
}
END_TEST

/* ---- dispatch ---- */

START_TEST(decide_rejects_unknown_command_type)
{
    Inventory__GetStock q = INVENTORY__GET_STOCK__INIT;
    q.sku = "apple";
    decide_msg(&q.base);
    expect_rejected(JL_CODE_INVALID, "unknown command inventory.GetStock");

    given_product("apple", 5);
    Inventory__Restocked e = INVENTORY__RESTOCKED__INIT;
    e.sku = "apple";
    e.quantity = 1;
    decide_msg(&e.base);
    expect_rejected(JL_CODE_INVALID, "unknown command inventory.Restocked");
}
END_TEST

START_TEST(decide_rejects_any_warehouse_but_the_one)
{
    Inventory__RegisterProduct m = INVENTORY__REGISTER_PRODUCT__INIT;
    m.sku = "apple";
    m.name = "Apple";
    decide_on(&st, R1, &m.base);
    expect_rejected(JL_CODE_NOT_FOUND, "warehouse " R1 " does not exist: the only one is " WH);

    /* Checked before the field values. */
    Inventory__Restock r = INVENTORY__RESTOCK__INIT;
    decide_on(&st, R2, &r.base);
    expect_rejected(JL_CODE_NOT_FOUND, "warehouse " R2 " does not exist: the only one is " WH);
}
END_TEST

/* ---- RegisterProduct ---- */

START_TEST(register_emits_product_registered)
{
    register_product("apple", "Apple, red");
    Inventory__ProductRegistered *e =
        (Inventory__ProductRegistered *)unpack_event(0, &inventory__product_registered__descriptor);
    ck_assert_str_eq(e->sku, "apple");
    ck_assert_str_eq(e->name, "Apple, red");
    protobuf_c_message_free_unpacked(&e->base, NULL);
    accept();
    ck_assert_uint_eq(st.n_products, 1);
    ck_assert_str_eq(st.products[0].name, "Apple, red");
    expect_stock("apple", 0, 0);
}
END_TEST

START_TEST(register_rejects_empty_or_null_text)
{
    register_product("", "Apple");
    expect_rejected(JL_CODE_INVALID, "sku must not be empty");
    register_product(NULL, "Apple");
    expect_rejected(JL_CODE_INVALID, "sku must not be empty");
    register_product("apple", "");
    expect_rejected(JL_CODE_INVALID, "name must not be empty");
    register_product("apple", NULL);
    expect_rejected(JL_CODE_INVALID, "name must not be empty");
}
END_TEST

START_TEST(register_accepts_text_of_max_length)
{
    char sku[INVENTORY_MAX_SKU + 1], name[INVENTORY_MAX_NAME + 1];
    register_product(fill(sku, INVENTORY_MAX_SKU, 's'), fill(name, INVENTORY_MAX_NAME, 'n'));
    accept();
    ck_assert_str_eq(st.products[0].sku, sku);
    ck_assert_str_eq(st.products[0].name, name);
}
END_TEST

START_TEST(register_rejects_text_over_max_length)
{
    char sku[INVENTORY_MAX_SKU + 2], name[INVENTORY_MAX_NAME + 2];
    register_product(fill(sku, INVENTORY_MAX_SKU + 1, 's'), "x");
    expect_rejected(JL_CODE_INVALID, "sku is longer than 64 bytes");
    register_product("x", fill(name, INVENTORY_MAX_NAME + 1, 'n'));
    expect_rejected(JL_CODE_INVALID, "name is longer than 128 bytes");
}
END_TEST

START_TEST(register_rejects_registered_sku)
{
    given_product("apple", 3);
    register_product("apple", "Another apple");
    expect_rejected(JL_CODE_RULE_VIOLATION, "sku apple is already registered");
    expect_stock("apple", 3, 0);
}
END_TEST

START_TEST(register_accepts_up_to_max_products_and_no_more)
{
    given_products(INVENTORY_MAX_PRODUCTS - 1, 0);
    register_product("last", "Last");
    accept();
    ck_assert_uint_eq(st.n_products, INVENTORY_MAX_PRODUCTS);
    register_product("one-more", "One more");
    expect_rejected(JL_CODE_RULE_VIOLATION, "the warehouse holds at most 256 skus");
    /* A registered sku is still answered as such when the warehouse is full. */
    register_product("last", "Last");
    expect_rejected(JL_CODE_RULE_VIOLATION, "sku last is already registered");
}
END_TEST

/* ---- Restock ---- */

START_TEST(restock_emits_restocked_and_adds_to_on_hand)
{
    given_product("apple", 0);
    restock("apple", 7);
    Inventory__Restocked *e =
        (Inventory__Restocked *)unpack_event(0, &inventory__restocked__descriptor);
    ck_assert_str_eq(e->sku, "apple");
    ck_assert_int_eq(e->quantity, 7);
    protobuf_c_message_free_unpacked(&e->base, NULL);
    accept();
    restock("apple", 3);
    accept();
    expect_stock("apple", 10, 0);
}
END_TEST

START_TEST(restock_rejects_unknown_sku)
{
    given_product("apple", 0);
    restock("pear", 1);
    expect_rejected(JL_CODE_NOT_FOUND, "sku pear is not registered");
}
END_TEST

START_TEST(restock_rejects_non_positive_quantity)
{
    given_product("apple", 0);
    restock("apple", 0);
    expect_rejected(JL_CODE_INVALID, "quantity must be positive");
    restock("apple", -1);
    expect_rejected(JL_CODE_INVALID, "quantity must be positive");
    restock("apple", INT64_MIN);
    expect_rejected(JL_CODE_INVALID, "quantity must be positive");
}
END_TEST

START_TEST(restock_accepts_max_quantity_and_rejects_more)
{
    given_product("apple", 0);
    restock("apple", INVENTORY_MAX_QUANTITY);
    accept();
    expect_stock("apple", INVENTORY_MAX_QUANTITY, 0);
    restock("apple", INVENTORY_MAX_QUANTITY + 1);
    expect_rejected(JL_CODE_INVALID, "quantity must be at most 1000000000");
    restock("apple", INT64_MAX);
    expect_rejected(JL_CODE_INVALID, "quantity must be at most 1000000000");
}
END_TEST

START_TEST(restock_checks_field_values_before_the_sku)
{
    restock("pear", 0);
    expect_rejected(JL_CODE_INVALID, "quantity must be positive");
    restock("", 1);
    expect_rejected(JL_CODE_INVALID, "sku must not be empty");
    char sku[INVENTORY_MAX_SKU + 2];
    restock(fill(sku, INVENTORY_MAX_SKU + 1, 's'), 1);
    expect_rejected(JL_CODE_INVALID, "sku is longer than 64 bytes");
}
END_TEST

START_TEST(restock_keeps_on_hand_within_its_cap)
{
    given_product("apple", 0);
    /* A million restocks would take too long: set the level as a replay would have. */
    st.products[0].on_hand = INVENTORY_MAX_ON_HAND - 5;
    restock("apple", 5);
    accept();
    ck_assert_int_eq(st.products[0].on_hand, INVENTORY_MAX_ON_HAND);
    restock("apple", 1);
    expect_rejected(JL_CODE_INVALID,
                    "sku apple would hold 1000000000000001 units: at most 1000000000000000");
}
END_TEST

/* ---- ReserveStock ---- */

START_TEST(reserve_emits_stock_reserved_with_canonical_ids)
{
    given_product("apple", 5);
    given_product("pear", 2);
    const line lines[] = {{"apple", 3}, {"pear", 2}};
    reserve("11111111-1111-4111-8111-11111111111A", "0A0A0A0A-0A0A-4A0A-8A0A-0A0A0A0A0A0A", lines,
            2);
    Inventory__StockReserved *e =
        (Inventory__StockReserved *)unpack_event(0, &inventory__stock_reserved__descriptor);
    ck_assert_str_eq(e->reservation_id, "11111111-1111-4111-8111-11111111111a");
    ck_assert_str_eq(e->order_id, O1);
    ck_assert_uint_eq(e->n_lines, 2);
    ck_assert_str_eq(e->lines[0]->sku, "apple");
    ck_assert_int_eq(e->lines[0]->quantity, 3);
    ck_assert_str_eq(e->lines[1]->sku, "pear");
    ck_assert_int_eq(e->lines[1]->quantity, 2);
    protobuf_c_message_free_unpacked(&e->base, NULL);
    accept();
    expect_stock("apple", 5, 3);
    expect_stock("pear", 2, 2);
    ck_assert_uint_eq(st.n_open, 1);
    ck_assert_uint_eq(st.n_open_lines, 2);
}
END_TEST

START_TEST(reserve_is_all_or_none_when_one_line_is_short)
{
    given_product("apple", 5);
    given_product("pear", 1);
    const line lines[] = {{"apple", 3}, {"pear", 2}};
    reserve(R1, O1, lines, 2);
    ck_assert_uint_eq(d.n_events, 1);
    Inventory__ReservationRejected *e = (Inventory__ReservationRejected *)unpack_event(
        0, &inventory__reservation_rejected__descriptor);
    ck_assert_str_eq(e->reservation_id, R1);
    ck_assert_str_eq(e->order_id, O1);
    ck_assert_uint_eq(e->n_lines, 2);
    ck_assert_str_eq(e->lines[1]->sku, "pear");
    ck_assert_int_eq(e->lines[1]->quantity, 2);
    protobuf_c_message_free_unpacked(&e->base, NULL);
    expect_reservation_rejected("insufficient stock for sku pear: available 1, requested 2");
    /* Nothing reserved, not even the line that would have fitted. */
    expect_stock("apple", 5, 0);
    expect_stock("pear", 1, 0);
    ck_assert_uint_eq(st.n_open, 0);
    ck_assert_uint_eq(st.n_closed, 1);
    ck_assert_uint_eq(st.closed_outcomes[0], INVENTORY_REJECTED);
}
END_TEST

START_TEST(reserve_rejects_unknown_sku_as_an_event)
{
    given_product("apple", 5);
    const line lines[] = {{"apple", 1}, {"durian", 1}};
    reserve(R1, O1, lines, 2);
    expect_reservation_rejected("unknown sku durian");
    expect_stock("apple", 5, 0);
}
END_TEST

START_TEST(reserve_reports_the_first_failing_line)
{
    given_product("apple", 1);
    const line lines[] = {{"durian", 1}, {"apple", 2}};
    reserve(R1, O1, lines, 2);
    expect_reservation_rejected("unknown sku durian");
    const line lines2[] = {{"apple", 2}, {"durian", 1}};
    reserve(R2, O1, lines2, 2);
    expect_reservation_rejected("insufficient stock for sku apple: available 1, requested 2");
}
END_TEST

START_TEST(reserve_takes_exactly_what_is_available_and_never_more)
{
    given_product("apple", 4);
    const line all[] = {{"apple", 4}};
    reserve(R1, O1, all, 1);
    expect_reserved();
    expect_stock("apple", 4, 4);
    const line one[] = {{"apple", 1}};
    reserve(R2, O1, one, 1);
    expect_reservation_rejected("insufficient stock for sku apple: available 0, requested 1");
    expect_stock("apple", 4, 4);
}
END_TEST

START_TEST(reserve_counts_units_held_by_other_reservations)
{
    given_product("apple", 10);
    const line six[] = {{"apple", 6}};
    given_reserved(R1, six, 1);
    const line five[] = {{"apple", 5}};
    reserve(R2, O2, five, 1);
    expect_reservation_rejected("insufficient stock for sku apple: available 4, requested 5");
    const line four[] = {{"apple", 4}};
    reserve(R3, O2, four, 1);
    expect_reserved();
    expect_stock("apple", 10, 10);
}
END_TEST

START_TEST(reserve_rejects_bad_ids)
{
    given_product("apple", 5);
    const line lines[] = {{"apple", 1}};
    reserve("", O1, lines, 1);
    expect_rejected(JL_CODE_INVALID, "reservation_id must not be empty");
    reserve(NULL, O1, lines, 1);
    expect_rejected(JL_CODE_INVALID, "reservation_id must not be empty");
    reserve("res-1", O1, lines, 1);
    expect_rejected(JL_CODE_INVALID, "reservation_id 'res-1' is not a UUID");
    reserve("11111111-1111-4111-8111-11111111111g", O1, lines, 1);
    expect_rejected(JL_CODE_INVALID,
                    "reservation_id '11111111-1111-4111-8111-11111111111g' is not a UUID");
    reserve("11111111x1111-4111-8111-111111111111", O1, lines, 1);
    expect_rejected_code(JL_CODE_INVALID);
    reserve(R1 "0", O1, lines, 1);
    expect_rejected_code(JL_CODE_INVALID);
    reserve(R1, "", lines, 1);
    expect_rejected(JL_CODE_INVALID, "order_id must not be empty");
    reserve(R1, "order-1", lines, 1);
    expect_rejected(JL_CODE_INVALID, "order_id 'order-1' is not a UUID");
}
END_TEST

START_TEST(reserve_rejects_bad_lines)
{
    given_product("apple", 5);
    reserve(R1, O1, NULL, 0);
    expect_rejected(JL_CODE_INVALID, "a reservation needs at least one line");
    const line empty_sku[] = {{"apple", 1}, {"", 1}};
    reserve(R1, O1, empty_sku, 2);
    expect_rejected(JL_CODE_INVALID, "lines[1].sku must not be empty");
    char sku[INVENTORY_MAX_SKU + 2];
    const line long_sku[] = {{fill(sku, INVENTORY_MAX_SKU + 1, 's'), 1}};
    reserve(R1, O1, long_sku, 1);
    expect_rejected(JL_CODE_INVALID, "lines[0].sku is longer than 64 bytes");
    const line zero[] = {{"apple", 0}};
    reserve(R1, O1, zero, 1);
    expect_rejected(JL_CODE_INVALID, "lines[0].quantity must be positive");
    const line negative[] = {{"apple", -3}};
    reserve(R1, O1, negative, 1);
    expect_rejected(JL_CODE_INVALID, "lines[0].quantity must be positive");
    const line huge[] = {{"apple", INVENTORY_MAX_QUANTITY + 1}};
    reserve(R1, O1, huge, 1);
    expect_rejected(JL_CODE_INVALID, "lines[0].quantity must be at most 1000000000");
    const line twice[] = {{"apple", 1}, {"pear", 1}, {"apple", 2}};
    reserve(R1, O1, twice, 3);
    expect_rejected(JL_CODE_INVALID, "sku apple appears twice in the reservation");
    /* None of these was remembered: the id is still free. */
    ck_assert_uint_eq(st.n_closed, 0);
    const line ok[] = {{"apple", 1}};
    reserve(R1, O1, ok, 1);
    expect_reserved();
}
END_TEST

START_TEST(reserve_accepts_max_lines_and_rejects_more)
{
    line lines[INVENTORY_MAX_LINES + 1];
    char skus[INVENTORY_MAX_LINES + 1][16];
    given_products(INVENTORY_MAX_LINES + 1, 1);
    for (size_t i = 0; i <= INVENTORY_MAX_LINES; i++) {
        snprintf(skus[i], sizeof(skus[i]), "p%03zu", i);
        lines[i] = (line){skus[i], 1};
    }
    reserve(R1, O1, lines, INVENTORY_MAX_LINES + 1);
    expect_rejected(JL_CODE_INVALID, "a reservation holds at most 64 lines");
    reserve(R1, O1, lines, INVENTORY_MAX_LINES);
    expect_reserved();
    ck_assert_uint_eq(st.n_open_lines, INVENTORY_MAX_LINES);
    expect_stock("p063", 1, 1);
    expect_stock("p064", 1, 0);
}
END_TEST

START_TEST(reserve_of_an_open_reservation_has_no_second_effect)
{
    given_product("apple", 10);
    const line two[] = {{"apple", 2}};
    reserve(R1, O1, two, 1);
    expect_reserved();
    reserve(R1, O1, two, 1);
    expect_no_effect();
    /* The same order and lines, the order id in upper case: a repeat. */
    reserve(R1, "0A0A0A0A-0A0A-4A0A-8A0A-0A0A0A0A0A0A", two, 1);
    expect_no_effect();
    /* Another order, other lines: not a repeat, and "ok" would claim stock not held. */
    reserve(R1, O2, two, 1);
    expect_rejected(JL_CODE_RULE_VIOLATION,
                    "reservation " R1 " is already held, for another order or other lines");
    const line five[] = {{"apple", 5}};
    reserve(R1, O1, five, 1);
    expect_rejected_code(JL_CODE_RULE_VIOLATION);
    const line unknown[] = {{"durian", 1}};
    reserve(R1, O1, unknown, 1);
    expect_rejected_code(JL_CODE_RULE_VIOLATION);
    const line more[] = {{"apple", 2}, {"durian", 1}};
    reserve(R1, O1, more, 2);
    expect_rejected_code(JL_CODE_RULE_VIOLATION);
    expect_stock("apple", 10, 2);
    ck_assert_uint_eq(st.n_open, 1);
}
END_TEST

START_TEST(reserve_repeated_with_its_lines_in_another_order_has_no_second_effect)
{
    given_product("apple", 10);
    given_product("pear", 10);
    const line ab[] = {{"apple", 2}, {"pear", 3}}, ba[] = {{"pear", 3}, {"apple", 2}};
    reserve(R1, O1, ab, 2);
    expect_reserved();
    reserve(R1, O1, ba, 2);
    expect_no_effect();
    expect_stock("apple", 10, 2);
    expect_stock("pear", 10, 3);
}
END_TEST

START_TEST(reserve_of_a_closed_reservation_has_no_second_effect)
{
    given_product("apple", 10);
    const line two[] = {{"apple", 2}};
    const line many[] = {{"apple", 99}};
    given_reserved(R1, two, 1);
    ck_assert_int_eq(ev_released(&st, R1), JL_OK);
    given_reserved(R2, two, 1);
    ck_assert_int_eq(ev_committed(&st, R2), JL_OK);
    ck_assert_int_eq(ev_rejected(&st, R3), JL_OK);
    expect_stock("apple", 8, 0);

    reserve(R1, O1, two, 1);
    expect_no_effect();
    reserve(R2, O1, two, 1);
    expect_no_effect();
    /* A rejected one stays rejected even when it would fit now, and vice versa. */
    reserve(R3, O1, two, 1);
    expect_no_effect();
    reserve(R1, O1, many, 1);
    expect_no_effect();
    expect_stock("apple", 8, 0);
    ck_assert_uint_eq(st.n_open, 0);
}
END_TEST

START_TEST(reserve_checks_field_values_before_idempotency)
{
    given_product("apple", 10);
    const line two[] = {{"apple", 2}};
    given_reserved(R1, two, 1);
    const line zero[] = {{"apple", 0}};
    reserve(R1, O1, zero, 1);
    expect_rejected(JL_CODE_INVALID, "lines[0].quantity must be positive");
}
END_TEST

START_TEST(reserve_beyond_max_open_reservations_is_not_now_and_burns_no_id)
{
    char rid[JL_UUID_LEN + 1];
    given_product("apple", INVENTORY_MAX_OPEN + 10);
    const line one[] = {{"apple", 1}};
    for (unsigned i = 0; i < INVENTORY_MAX_OPEN; i++)
        given_reserved(nth_id(rid, 1, i), one, 1);
    ck_assert_uint_eq(st.n_open, INVENTORY_MAX_OPEN);
    reserve(R1, O1, one, 1);
    expect_rejected(JL_CODE_UNAVAILABLE, "the warehouse holds 1024 open reservations, its "
                                         "maximum: try again once some are committed or released");
    /* Stock is checked first: a short line is the reason a client can act on. */
    const line short_line[] = {{"apple", 11}};
    reserve(R2, O1, short_line, 1);
    expect_reservation_rejected("insufficient stock for sku apple: available 10, requested 11");

    /* Closing one makes room again, and R1, not burned, goes through. */
    ck_assert_int_eq(ev_committed(&st, nth_id(rid, 1, 0)), JL_OK);
    reserve(R1, O1, one, 1);
    expect_reserved();
}
END_TEST

START_TEST(reserve_beyond_max_open_lines_is_not_now_and_burns_no_id)
{
    enum { PER = INVENTORY_MAX_LINES, N = INVENTORY_MAX_OPEN_LINES / INVENTORY_MAX_LINES };
    char rid[JL_UUID_LEN + 1];
    char skus[PER][16];
    line lines[PER];
    given_products(PER, N + 1);
    for (size_t i = 0; i < PER; i++) {
        snprintf(skus[i], sizeof(skus[i]), "p%03zu", i);
        lines[i] = (line){skus[i], 1};
    }
    for (unsigned i = 0; i + 1 < N; i++)
        given_reserved(nth_id(rid, 2, i), lines, PER);
    /* The last PER lines fill the pool exactly. */
    reserve(R1, O1, lines, PER);
    expect_reserved();
    ck_assert_uint_eq(st.n_open_lines, INVENTORY_MAX_OPEN_LINES);
    reserve(R2, O1, lines, 1);
    expect_rejected(JL_CODE_UNAVAILABLE, "open reservations would hold more than 4096 lines, the "
                                         "warehouse's maximum: try again once some are committed "
                                         "or released");
    ck_assert_int_eq(ev_released(&st, R1), JL_OK);
    reserve(R2, O1, lines, 1);
    expect_reserved();
}
END_TEST

/* ---- ReleaseReservation ---- */

START_TEST(release_emits_stored_lines_and_gives_the_units_back)
{
    given_product("apple", 5);
    given_product("pear", 3);
    const line lines[] = {{"pear", 2}, {"apple", 4}};
    ck_assert_int_eq(ev_reserved(&st, R1, O2, lines, 2), JL_OK);
    release("11111111-1111-4111-8111-111111111111", "order cancelled");
    Inventory__ReservationReleased *e = (Inventory__ReservationReleased *)unpack_event(
        0, &inventory__reservation_released__descriptor);
    ck_assert_str_eq(e->reservation_id, R1);
    ck_assert_str_eq(e->order_id, O2);
    ck_assert_str_eq(e->reason, "order cancelled");
    ck_assert_uint_eq(e->n_lines, 2);
    ck_assert_str_eq(e->lines[0]->sku, "pear");
    ck_assert_int_eq(e->lines[0]->quantity, 2);
    ck_assert_str_eq(e->lines[1]->sku, "apple");
    ck_assert_int_eq(e->lines[1]->quantity, 4);
    protobuf_c_message_free_unpacked(&e->base, NULL);
    accept();
    expect_stock("apple", 5, 0);
    expect_stock("pear", 3, 0);
    ck_assert_uint_eq(st.n_open, 0);
    ck_assert_uint_eq(st.n_open_lines, 0);
    ck_assert_uint_eq(st.closed_outcomes[0], INVENTORY_RELEASED);
}
END_TEST

START_TEST(release_twice_has_no_second_effect)
{
    given_product("apple", 5);
    const line lines[] = {{"apple", 4}};
    given_reserved(R1, lines, 1);
    release(R1, "");
    accept();
    release(R1, "again");
    expect_no_effect();
    expect_stock("apple", 5, 0);
}
END_TEST

START_TEST(release_of_a_rejected_reservation_has_no_effect)
{
    ck_assert_int_eq(ev_rejected(&st, R1), JL_OK);
    release(R1, "order cancelled");
    expect_no_effect();
}
END_TEST

START_TEST(release_of_a_committed_reservation_is_a_rule_violation)
{
    given_product("apple", 5);
    const line lines[] = {{"apple", 4}};
    given_reserved(R1, lines, 1);
    ck_assert_int_eq(ev_committed(&st, R1), JL_OK);
    release(R1, "");
    expect_rejected(JL_CODE_RULE_VIOLATION,
                    "reservation " R1 " is committed: it cannot be released");
    expect_stock("apple", 1, 0);
}
END_TEST

START_TEST(release_of_an_unknown_reservation_is_not_found)
{
    release(R1, "");
    expect_rejected(JL_CODE_NOT_FOUND, "reservation " R1 " does not exist");
}
END_TEST

START_TEST(release_rejects_bad_fields)
{
    release("", "");
    expect_rejected(JL_CODE_INVALID, "reservation_id must not be empty");
    release("nope", "");
    expect_rejected(JL_CODE_INVALID, "reservation_id 'nope' is not a UUID");
    char reason[INVENTORY_MAX_REASON + 2];
    release(R1, fill(reason, INVENTORY_MAX_REASON + 1, 'r'));
    expect_rejected(JL_CODE_INVALID, "reason is longer than 256 bytes");
}
END_TEST

START_TEST(release_accepts_null_or_max_length_reason)
{
    given_product("apple", 5);
    const line lines[] = {{"apple", 1}};
    given_reserved(R1, lines, 1);
    given_reserved(R2, lines, 1);
    release(R1, NULL);
    Inventory__ReservationReleased *e = (Inventory__ReservationReleased *)unpack_event(
        0, &inventory__reservation_released__descriptor);
    ck_assert_str_eq(e->reason, "");
    protobuf_c_message_free_unpacked(&e->base, NULL);
    accept();
    char reason[INVENTORY_MAX_REASON + 1];
    release(R2, fill(reason, INVENTORY_MAX_REASON, 'r'));
    accept();
}
END_TEST

/* ---- CommitReservation ---- */

START_TEST(commit_emits_stored_lines_and_takes_the_units_out)
{
    given_product("apple", 5);
    given_product("pear", 3);
    const line lines[] = {{"apple", 4}, {"pear", 1}};
    ck_assert_int_eq(ev_reserved(&st, R1, O2, lines, 2), JL_OK);
    commit(R1);
    Inventory__ReservationCommitted *e = (Inventory__ReservationCommitted *)unpack_event(
        0, &inventory__reservation_committed__descriptor);
    ck_assert_str_eq(e->reservation_id, R1);
    ck_assert_str_eq(e->order_id, O2);
    ck_assert_uint_eq(e->n_lines, 2);
    ck_assert_str_eq(e->lines[0]->sku, "apple");
    ck_assert_int_eq(e->lines[0]->quantity, 4);
    ck_assert_str_eq(e->lines[1]->sku, "pear");
    ck_assert_int_eq(e->lines[1]->quantity, 1);
    protobuf_c_message_free_unpacked(&e->base, NULL);
    accept();
    expect_stock("apple", 1, 0);
    expect_stock("pear", 2, 0);
    ck_assert_uint_eq(st.n_open, 0);
    ck_assert_uint_eq(st.closed_outcomes[0], INVENTORY_COMMITTED);
}
END_TEST

START_TEST(commit_twice_has_no_second_effect)
{
    given_product("apple", 5);
    const line lines[] = {{"apple", 4}};
    given_reserved(R1, lines, 1);
    commit(R1);
    accept();
    commit(R1);
    expect_no_effect();
    expect_stock("apple", 1, 0);
}
END_TEST

START_TEST(commit_after_release_or_rejection_is_a_rule_violation)
{
    given_product("apple", 5);
    const line lines[] = {{"apple", 4}};
    given_reserved(R1, lines, 1);
    ck_assert_int_eq(ev_released(&st, R1), JL_OK);
    commit(R1);
    expect_rejected(JL_CODE_RULE_VIOLATION,
                    "reservation " R1 " is released: it cannot be committed");
    ck_assert_int_eq(ev_rejected(&st, R2), JL_OK);
    commit(R2);
    expect_rejected(JL_CODE_RULE_VIOLATION,
                    "reservation " R2 " is rejected: it cannot be committed");
    expect_stock("apple", 5, 0);
}
END_TEST

START_TEST(commit_of_an_unknown_reservation_is_not_found)
{
    commit(R1);
    expect_rejected(JL_CODE_NOT_FOUND, "reservation " R1 " does not exist");
    commit("");
    expect_rejected(JL_CODE_INVALID, "reservation_id must not be empty");
    commit("123");
    expect_rejected(JL_CODE_INVALID, "reservation_id '123' is not a UUID");
}
END_TEST

/* ---- the ring of closed reservations ---- */

START_TEST(closed_ids_are_remembered_up_to_the_ring_size)
{
    char rid[JL_UUID_LEN + 1];
    given_product("apple", 5);
    const line one[] = {{"apple", 1}};
    given_reserved(R1, one, 1);
    ck_assert_int_eq(ev_released(&st, R1), JL_OK);
    /* MAX_CLOSED - 1 more closures: R1 is the oldest still remembered. */
    for (unsigned i = 0; i + 1 < INVENTORY_MAX_CLOSED; i++)
        ck_assert_int_eq(ev_rejected(&st, nth_id(rid, 3, i)), JL_OK);
    ck_assert_uint_eq(st.n_closed, INVENTORY_MAX_CLOSED);
    reserve(R1, O1, one, 1);
    expect_no_effect();
    release(R1, "");
    expect_no_effect();

    /* One more pushes R1 out: it is unknown again, the documented limit. */
    ck_assert_int_eq(ev_rejected(&st, R2), JL_OK);
    ck_assert_uint_eq(st.n_closed, INVENTORY_MAX_CLOSED);
    release(R1, "");
    expect_rejected(JL_CODE_NOT_FOUND, "reservation " R1 " does not exist");
    reserve(nth_id(rid, 3, 0), O1, one, 1);
    expect_no_effect();
    reserve(R1, O1, one, 1);
    expect_reserved();
    expect_stock("apple", 5, 1);
}
END_TEST

/* ---- purity ---- */

START_TEST(decide_never_mutates_state)
{
    char long_text[INVENTORY_MAX_NAME + 2];
    fill(long_text, INVENTORY_MAX_NAME + 1, 'x');
    const line ok[] = {{"p000", 1}, {"p001", 1}};
    const line short_line[] = {{"p000", 1000}};
    const line unknown[] = {{"zzz", 1}};
    Inventory__ReservationLine pl[3][2], *pp[3][2];
    to_lines(ok, 2, pl[0], pp[0]);
    to_lines(short_line, 1, pl[1], pp[1]);
    to_lines(unknown, 1, pl[2], pp[2]);

    Inventory__RegisterProduct g1 = INVENTORY__REGISTER_PRODUCT__INIT,
                               g2 = INVENTORY__REGISTER_PRODUCT__INIT;
    g1.sku = "new";
    g1.name = "New";
    g2.sku = "p000";
    g2.name = long_text;
    Inventory__Restock k1 = INVENTORY__RESTOCK__INIT, k2 = INVENTORY__RESTOCK__INIT;
    k1.sku = "p000";
    k1.quantity = 5;
    k2.sku = "zzz";
    k2.quantity = 5;
    Inventory__ReserveStock v[4];
    const char *rids[4] = {R1, R2, R3, "bad"};
    Inventory__ReservationLine **lines[4] = {pp[0], pp[1], pp[2], pp[0]};
    size_t n_lines[4] = {2, 1, 1, 2};
    for (size_t i = 0; i < 4; i++) {
        inventory__reserve_stock__init(&v[i]);
        v[i].reservation_id = (char *)rids[i];
        v[i].order_id = O1;
        v[i].lines = lines[i];
        v[i].n_lines = n_lines[i];
    }
    Inventory__ReleaseReservation e1 = INVENTORY__RELEASE_RESERVATION__INIT,
                                  e2 = INVENTORY__RELEASE_RESERVATION__INIT;
    e1.reservation_id = R1;
    e2.reservation_id = R2;
    Inventory__CommitReservation c1 = INVENTORY__COMMIT_RESERVATION__INIT,
                                 c2 = INVENTORY__COMMIT_RESERVATION__INIT;
    c1.reservation_id = R1;
    c2.reservation_id = R3;
    Inventory__GetStock q = INVENTORY__GET_STOCK__INIT;
    const ProtobufCMessage *cmds[] = {&g1.base,   &g2.base,   &k1.base,   &k2.base, &v[0].base,
                                      &v[1].base, &v[2].base, &v[3].base, &e1.base, &e2.base,
                                      &c1.base,   &c2.base,   &q.base};

    enum { N_STATES = 5 };
    inventory_state *states[N_STATES];
    for (size_t i = 0; i < N_STATES; i++)
        states[i] = new_state();
    for (size_t i = 1; i < N_STATES; i++) {
        ck_assert_int_eq(ev_registered(states[i], "p000", "P0"), JL_OK);
        ck_assert_int_eq(ev_registered(states[i], "p001", "P1"), JL_OK);
        ck_assert_int_eq(ev_restocked(states[i], "p000", 10), JL_OK);
        ck_assert_int_eq(ev_restocked(states[i], "p001", 10), JL_OK);
    }
    ck_assert_int_eq(ev_reserved(states[2], R1, O1, ok, 2), JL_OK);
    ck_assert_int_eq(ev_reserved(states[3], R1, O1, ok, 2), JL_OK);
    ck_assert_int_eq(ev_released(states[3], R1), JL_OK);
    ck_assert_int_eq(ev_rejected(states[3], R2), JL_OK);
    ck_assert_int_eq(ev_reserved(states[4], R3, O1, ok, 2), JL_OK);
    ck_assert_int_eq(ev_committed(states[4], R3), JL_OK);

    for (size_t s = 0; s < N_STATES; s++) {
        for (size_t c = 0; c < sizeof(cmds) / sizeof(cmds[0]); c++) {
            memcpy(&before, states[s], sizeof(before));
            jl_command cmd = {.msg = cmds[c], .aggregate_id = WH, .command_id = "x"};
            jl_decision_reset(&d);
            inventory_decide(states[s], &cmd, &d);
            ck_assert_msg(memcmp(&before, states[s], sizeof(before)) == 0,
                          "state %zu changed by command %zu", s, c);
        }
    }
    for (size_t i = 0; i < N_STATES; i++)
        free(states[i]);
}
END_TEST

START_TEST(decide_gives_identical_bytes_for_identical_input)
{
    jl_decision other;
    jl_decision_init(&other);
    given_product("apple", 5);
    const line lines[] = {{"apple", 2}};
    given_reserved(R1, lines, 1);
    release(R1, "why");
    Inventory__ReleaseReservation m = INVENTORY__RELEASE_RESERVATION__INIT;
    m.reservation_id = R1;
    m.reason = "why";
    jl_command cmd = {.msg = &m.base, .aggregate_id = WH, .command_id = "other", .now_ns = 7};
    inventory_decide(&st, &cmd, &other);
    ck_assert_int_eq(other.code, JL_CODE_OK);
    ck_assert_uint_eq(other.bytes.len, d.bytes.len);
    ck_assert_mem_eq(other.bytes.data, d.bytes.data, d.bytes.len);
    jl_decision_cleanup(&other);
}
END_TEST

/* ---- evolve ---- */

START_TEST(evolve_product_registered_appends_in_order)
{
    ck_assert_int_eq(ev_registered(&st, "b", "B"), JL_OK);
    ck_assert_int_eq(ev_registered(&st, "a", ""), JL_OK);
    ck_assert_uint_eq(st.n_products, 2);
    ck_assert_str_eq(st.products[0].sku, "b");
    ck_assert_str_eq(st.products[1].sku, "a");
    ck_assert_str_eq(st.products[1].name, "");
}
END_TEST

START_TEST(evolve_rejects_bad_product_registered)
{
    char sku[INVENTORY_MAX_SKU + 2], name[INVENTORY_MAX_NAME + 2];
    given_product("apple", 0);
    Inventory__ProductRegistered e = INVENTORY__PRODUCT_REGISTERED__INIT;
    e.sku = "apple";
    evolve_expect(&e.base, JL_ERR_INVALID);
    e.sku = "";
    evolve_expect(&e.base, JL_ERR_INVALID);
    e.sku = NULL;
    evolve_expect(&e.base, JL_ERR_INVALID);
    e.sku = fill(sku, INVENTORY_MAX_SKU + 1, 's');
    evolve_expect(&e.base, JL_ERR_INVALID);
    e.sku = "pear";
    e.name = fill(name, INVENTORY_MAX_NAME + 1, 'n');
    evolve_expect(&e.base, JL_ERR_INVALID);
    ck_assert_uint_eq(st.n_products, 1);
}
END_TEST

START_TEST(evolve_rejects_product_beyond_max_products)
{
    given_products(INVENTORY_MAX_PRODUCTS, 0);
    Inventory__ProductRegistered e = INVENTORY__PRODUCT_REGISTERED__INIT;
    e.sku = "one-more";
    evolve_expect(&e.base, JL_ERR_INVALID);
}
END_TEST

START_TEST(evolve_writes_text_zero_padded_over_stale_bytes)
{
    memset(st.products[0].sku, 'X', sizeof(st.products[0].sku));
    memset(st.products[0].name, 'Y', sizeof(st.products[0].name));
    ck_assert_int_eq(ev_registered(&st, "ab", "cd"), JL_OK);
    for (size_t i = 2; i < sizeof(st.products[0].sku); i++)
        ck_assert_int_eq(st.products[0].sku[i], 0);
    for (size_t i = 2; i < sizeof(st.products[0].name); i++)
        ck_assert_int_eq(st.products[0].name[i], 0);
}
END_TEST

START_TEST(evolve_rejects_bad_restocked)
{
    given_product("apple", 1);
    static const int64_t bad[] = {0, -1, INT64_MIN, INVENTORY_MAX_QUANTITY + 1, INT64_MAX};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        Inventory__Restocked e = INVENTORY__RESTOCKED__INIT;
        e.sku = "apple";
        e.quantity = bad[i];
        evolve_expect(&e.base, JL_ERR_INVALID);
    }
    Inventory__Restocked e = INVENTORY__RESTOCKED__INIT;
    e.sku = "pear";
    e.quantity = 1;
    evolve_expect(&e.base, JL_ERR_INVALID);
    e.sku = NULL;
    evolve_expect(&e.base, JL_ERR_INVALID);
    st.products[0].on_hand = INVENTORY_MAX_ON_HAND;
    e.sku = "apple";
    evolve_expect(&e.base, JL_ERR_INVALID);
}
END_TEST

START_TEST(evolve_rejects_stock_reserved_that_breaks_invariants)
{
    given_product("apple", 5);
    given_product("pear", 5);
    const line one[] = {{"apple", 1}};
    given_reserved(R1, one, 1);
    ck_assert_int_eq(ev_rejected(&st, R2), JL_OK);
    memcpy(&before, &st, sizeof(before));

    const line ok[] = {{"apple", 1}};
    const line too_many[] = {{"apple", 5}};
    const line unknown[] = {{"durian", 1}};
    const line twice[] = {{"pear", 1}, {"pear", 1}};
    const line zero[] = {{"pear", 0}};
    const line huge[] = {{"pear", INVENTORY_MAX_QUANTITY + 1}};
    ck_assert_int_eq(ev_reserved(&st, R1, O1, ok, 1), JL_ERR_INVALID);  /* open */
    ck_assert_int_eq(ev_reserved(&st, R2, O1, ok, 1), JL_ERR_INVALID);  /* closed */
    ck_assert_int_eq(ev_reserved(&st, "x", O1, ok, 1), JL_ERR_INVALID); /* not a UUID */
    ck_assert_int_eq(ev_reserved(&st, R3, "y", ok, 1), JL_ERR_INVALID); /* not a UUID */
    ck_assert_int_eq(ev_reserved(&st, R3, O1, ok, 0), JL_ERR_INVALID);  /* no line */
    ck_assert_int_eq(ev_reserved(&st, R3, O1, too_many, 1), JL_ERR_INVALID);
    ck_assert_int_eq(ev_reserved(&st, R3, O1, unknown, 1), JL_ERR_INVALID);
    ck_assert_int_eq(ev_reserved(&st, R3, O1, twice, 2), JL_ERR_INVALID);
    ck_assert_int_eq(ev_reserved(&st, R3, O1, zero, 1), JL_ERR_INVALID);
    ck_assert_int_eq(ev_reserved(&st, R3, O1, huge, 1), JL_ERR_INVALID);
    ck_assert_msg(memcmp(&before, &st, sizeof(st)) == 0, "a refused event changed the state");
    ck_assert_int_eq(ev_reserved(&st, R3, O1, ok, 1), JL_OK);
    expect_stock("apple", 5, 2);
}
END_TEST

START_TEST(evolve_rejects_stock_reserved_beyond_the_caps)
{
    char rid[JL_UUID_LEN + 1];
    given_product("apple", INVENTORY_MAX_OPEN + 1);
    const line one[] = {{"apple", 1}};
    for (unsigned i = 0; i < INVENTORY_MAX_OPEN; i++)
        given_reserved(nth_id(rid, 4, i), one, 1);
    memcpy(&before, &st, sizeof(before));
    ck_assert_int_eq(ev_reserved(&st, R1, O1, one, 1), JL_ERR_INVALID);
    ck_assert_msg(memcmp(&before, &st, sizeof(st)) == 0, "a refused event changed the state");

    line lines[INVENTORY_MAX_LINES + 1];
    char skus[INVENTORY_MAX_LINES + 1][16];
    inventory_state_init(&st);
    given_products(INVENTORY_MAX_LINES + 1, 100);
    for (size_t i = 0; i <= INVENTORY_MAX_LINES; i++) {
        snprintf(skus[i], sizeof(skus[i]), "p%03zu", i);
        lines[i] = (line){skus[i], 1};
    }
    ck_assert_int_eq(ev_reserved(&st, R1, O1, lines, INVENTORY_MAX_LINES + 1), JL_ERR_INVALID);
    for (unsigned i = 0; i < INVENTORY_MAX_OPEN_LINES / INVENTORY_MAX_LINES; i++)
        given_reserved(nth_id(rid, 5, i), lines, INVENTORY_MAX_LINES);
    memcpy(&before, &st, sizeof(before));
    ck_assert_int_eq(ev_reserved(&st, R1, O1, lines, 1), JL_ERR_INVALID);
    ck_assert_msg(memcmp(&before, &st, sizeof(st)) == 0, "a refused event changed the state");
}
END_TEST

START_TEST(evolve_rejects_closing_what_is_not_open)
{
    given_product("apple", 5);
    ck_assert_int_eq(ev_rejected(&st, R1), JL_OK);
    memcpy(&before, &st, sizeof(before));
    ck_assert_int_eq(ev_released(&st, R1), JL_ERR_INVALID);
    ck_assert_int_eq(ev_committed(&st, R1), JL_ERR_INVALID);
    ck_assert_int_eq(ev_released(&st, R2), JL_ERR_INVALID);
    ck_assert_int_eq(ev_committed(&st, R2), JL_ERR_INVALID);
    ck_assert_int_eq(ev_released(&st, "junk"), JL_ERR_INVALID);
    ck_assert_int_eq(ev_committed(&st, NULL), JL_ERR_INVALID);
    /* A rejected id cannot be rejected twice, nor an open one rejected. */
    ck_assert_int_eq(ev_rejected(&st, R1), JL_ERR_INVALID);
    ck_assert_int_eq(ev_rejected(&st, "junk"), JL_ERR_INVALID);
    ck_assert_msg(memcmp(&before, &st, sizeof(st)) == 0, "a refused event changed the state");
    const line one[] = {{"apple", 1}};
    given_reserved(R2, one, 1);
    ck_assert_int_eq(ev_rejected(&st, R2), JL_ERR_INVALID);
}
END_TEST

START_TEST(evolve_close_keeps_other_reservations_as_if_it_never_was)
{
    given_product("a", 10);
    given_product("b", 10);
    given_product("c", 10);
    const line l1[] = {{"a", 1}, {"b", 2}};
    const line l2[] = {{"b", 3}, {"c", 4}, {"a", 5}};
    const line l3[] = {{"c", 1}};
    given_reserved(R1, l1, 2);
    given_reserved(R2, l2, 3);
    given_reserved(R3, l3, 1);
    ck_assert_int_eq(ev_released(&st, R2), JL_OK);

    /* Equal, vacated slots included, to the state that reserved R1 and R3 and rejected R2. */
    inventory_state *want = new_state();
    ck_assert_int_eq(ev_registered(want, "a", "a product"), JL_OK);
    ck_assert_int_eq(ev_restocked(want, "a", 10), JL_OK);
    ck_assert_int_eq(ev_registered(want, "b", "a product"), JL_OK);
    ck_assert_int_eq(ev_restocked(want, "b", 10), JL_OK);
    ck_assert_int_eq(ev_registered(want, "c", "a product"), JL_OK);
    ck_assert_int_eq(ev_restocked(want, "c", 10), JL_OK);
    ck_assert_int_eq(ev_reserved(want, R1, O1, l1, 2), JL_OK);
    ck_assert_int_eq(ev_reserved(want, R3, O1, l3, 1), JL_OK);
    ck_assert_int_eq(ev_rejected(want, R2), JL_OK);
    want->closed_outcomes[0] = INVENTORY_RELEASED;
    ck_assert_mem_eq(&st, want, sizeof(st));
    free(want);

    /* The moved reservation's lines are still its own. */
    ck_assert_int_eq(ev_committed(&st, R3), JL_OK);
    expect_stock("c", 9, 0);
    expect_stock("a", 10, 1);
    expect_stock("b", 10, 2);
    ck_assert_int_eq(ev_committed(&st, R1), JL_OK);
    expect_stock("a", 9, 0);
    expect_stock("b", 8, 0);
    ck_assert_uint_eq(st.n_open_lines, 0);
}
END_TEST

START_TEST(evolve_rejects_unknown_event_type)
{
    given_product("apple", 5);
    Inventory__Restock c = INVENTORY__RESTOCK__INIT; /* a command, not an event */
    c.sku = "apple";
    c.quantity = 1;
    evolve_expect(&c.base, JL_ERR_UNKNOWN_TYPE);
    Inventory__StockLevel s = INVENTORY__STOCK_LEVEL__INIT;
    evolve_expect(&s.base, JL_ERR_UNKNOWN_TYPE);
    Inventory__WarehouseState w = INVENTORY__WAREHOUSE_STATE__INIT;
    evolve_expect(&w.base, JL_ERR_UNKNOWN_TYPE);

    inventory_state_init(&st);
    evolve_expect(&c.base, JL_ERR_UNKNOWN_TYPE);
}
END_TEST

/* ---- the state as protobuf ---- */

/* A state with a bit of everything: products, open reservations, closed of each outcome. */
static void given_varied_state(inventory_state *s)
{
    const line l1[] = {{"apple", 2}, {"pear", 1}};
    const line l2[] = {{"pear", 3}};
    const line l3[] = {{"apple", 1}};
    ck_assert_int_eq(ev_registered(s, "apple", "Apple"), JL_OK);
    ck_assert_int_eq(ev_registered(s, "pear", "Pear"), JL_OK);
    ck_assert_int_eq(ev_registered(s, "kiwi", ""), JL_OK);
    ck_assert_int_eq(ev_restocked(s, "apple", 10), JL_OK);
    ck_assert_int_eq(ev_restocked(s, "pear", 10), JL_OK);
    ck_assert_int_eq(ev_reserved(s, R1, O1, l1, 2), JL_OK);
    ck_assert_int_eq(ev_reserved(s, R2, O2, l2, 1), JL_OK);
    ck_assert_int_eq(ev_reserved(s, R3, O1, l3, 1), JL_OK);
    ck_assert_int_eq(ev_released(s, R1), JL_OK);
    ck_assert_int_eq(ev_rejected(s, "44444444-4444-4444-8444-444444444444"), JL_OK);
    ck_assert_int_eq(ev_committed(s, R3), JL_OK);
}

START_TEST(state_pack_unpack_round_trip)
{
    given_varied_state(&st);
    jl_buf b;
    jl_buf_init(&b, JL_MAX_COMMIT_BYTES);
    ck_assert_int_eq(inventory_state_pack(&st, &b), JL_OK);

    Inventory__WarehouseState *m = inventory__warehouse_state__unpack(NULL, b.len, b.data);
    ck_assert_ptr_nonnull(m);
    ck_assert_uint_eq(m->n_products, 3);
    ck_assert_str_eq(m->products[0]->sku, "apple");
    ck_assert_int_eq(m->products[0]->on_hand, 9);
    ck_assert_int_eq(m->products[0]->reserved, 0);
    ck_assert_int_eq(m->products[1]->reserved, 3);
    ck_assert_uint_eq(m->n_open_reservations, 1);
    ck_assert_str_eq(m->open_reservations[0]->reservation_id, R2);
    ck_assert_str_eq(m->open_reservations[0]->order_id, O2);
    ck_assert_uint_eq(m->open_reservations[0]->n_lines, 1);
    ck_assert_str_eq(m->open_reservations[0]->lines[0]->sku, "pear");
    ck_assert_uint_eq(m->n_closed_reservations, 3);
    ck_assert_str_eq(m->closed_reservations[0]->reservation_id, R1);
    ck_assert_str_eq(m->closed_reservations[0]->outcome, "released");
    ck_assert_str_eq(m->closed_reservations[1]->outcome, "rejected");
    ck_assert_str_eq(m->closed_reservations[2]->outcome, "committed");
    inventory__warehouse_state__free_unpacked(m, NULL);

    inventory_state *back = new_state();
    ck_assert_int_eq(inventory_state_unpack(back, b.data, b.len), JL_OK);
    ck_assert_mem_eq(back, &st, sizeof(st));
    free(back);

    /* The empty warehouse too. */
    inventory_state_init(&st);
    ck_assert_int_eq(inventory_state_pack(&st, &b), JL_OK);
    back = new_state();
    memset(back, 0x5A, sizeof(*back));
    ck_assert_int_eq(inventory_state_unpack(back, b.data, b.len), JL_OK);
    ck_assert_mem_eq(back, &st, sizeof(st));
    free(back);
    jl_buf_cleanup(&b);
}
END_TEST

START_TEST(state_pack_unpack_keeps_a_wrapped_ring_in_forgetting_order)
{
    char rid[JL_UUID_LEN + 1];
    for (unsigned i = 0; i < INVENTORY_MAX_CLOSED + 10; i++)
        ck_assert_int_eq(ev_rejected(&st, nth_id(rid, 6, i)), JL_OK);
    ck_assert_uint_eq(st.closed_next, 10);
    jl_buf b, b2;
    jl_buf_init(&b, JL_MAX_COMMIT_BYTES);
    jl_buf_init(&b2, JL_MAX_COMMIT_BYTES);
    ck_assert_int_eq(inventory_state_pack(&st, &b), JL_OK);
    inventory_state *back = new_state();
    ck_assert_int_eq(inventory_state_unpack(back, b.data, b.len), JL_OK);
    ck_assert_uint_eq(back->n_closed, INVENTORY_MAX_CLOSED);
    ck_assert_int_eq(inventory_state_pack(back, &b2), JL_OK);
    ck_assert_uint_eq(b.len, b2.len);
    ck_assert_mem_eq(b.data, b2.data, b.len);

    /* Both forget the same id next: the oldest remembered, number 10. */
    ck_assert_int_eq(ev_rejected(&st, R1), JL_OK);
    ck_assert_int_eq(ev_rejected(back, R1), JL_OK);
    ck_assert_int_eq(ev_rejected(&st, nth_id(rid, 6, 10)), JL_OK);
    ck_assert_int_eq(ev_rejected(back, nth_id(rid, 6, 10)), JL_OK);
    ck_assert_int_eq(ev_rejected(&st, nth_id(rid, 6, 12)), JL_ERR_INVALID);
    ck_assert_int_eq(ev_rejected(back, nth_id(rid, 6, 12)), JL_ERR_INVALID);
    free(back);
    jl_buf_cleanup(&b);
    jl_buf_cleanup(&b2);
}
END_TEST

START_TEST(state_pack_of_a_full_state_fits_a_snapshot)
{
    char rid[JL_UUID_LEN + 1];
    char skus[INVENTORY_MAX_PRODUCTS][INVENTORY_MAX_SKU + 1];
    char name[INVENTORY_MAX_NAME + 1];
    fill(name, INVENTORY_MAX_NAME, 'n');
    for (size_t i = 0; i < INVENTORY_MAX_PRODUCTS; i++) {
        fill(skus[i], INVENTORY_MAX_SKU, 's');
        snprintf(skus[i], 8, "%06zu", i);
        skus[i][6] = 's';
        ck_assert_int_eq(ev_registered(&st, skus[i], name), JL_OK);
        ck_assert_int_eq(ev_restocked(&st, skus[i], INVENTORY_MAX_QUANTITY), JL_OK);
    }
    enum { PER = INVENTORY_MAX_OPEN_LINES / INVENTORY_MAX_OPEN };
    for (unsigned i = 0; i < INVENTORY_MAX_OPEN; i++) {
        line lines[PER];
        for (unsigned k = 0; k < PER; k++)
            lines[k] = (line){skus[(i * PER + k) % INVENTORY_MAX_PRODUCTS], 1000000};
        given_reserved(nth_id(rid, 7, i), lines, PER);
    }
    for (unsigned i = 0; i < INVENTORY_MAX_CLOSED; i++)
        ck_assert_int_eq(ev_rejected(&st, nth_id(rid, 8, i)), JL_OK);
    ck_assert_uint_eq(st.n_open_lines, INVENTORY_MAX_OPEN_LINES);

    jl_buf b;
    jl_buf_init(&b, JL_MAX_COMMIT_BYTES);
    ck_assert_int_eq(inventory_state_pack(&st, &b), JL_OK);
    /* domain.h promises under 700 KiB: a snapshot and a GetState reply hold it. */
    ck_assert_uint_lt(b.len, 700 * 1024);
    inventory_state *back = new_state();
    ck_assert_int_eq(inventory_state_unpack(back, b.data, b.len), JL_OK);
    ck_assert_mem_eq(back, &st, sizeof(st));
    free(back);
    jl_buf_cleanup(&b);
}
END_TEST

/* Pack @p m, unpack it into st (pre-filled), and expect @p want; on failure st is empty. */
static void unpack_expect(const Inventory__WarehouseState *m, jl_status want)
{
    size_t n = inventory__warehouse_state__get_packed_size(m);
    uint8_t *buf = malloc(n + 1);
    inventory__warehouse_state__pack(m, buf);
    given_varied_state(&st);
    jl_status s = inventory_state_unpack(&st, buf, n);
    ck_assert_msg(s == want, "unpack returned %s, want %s", jl_status_str(s), jl_status_str(want));
    if (want != JL_OK) {
        inventory_state *empty = new_state();
        ck_assert_mem_eq(&st, empty, sizeof(st));
        free(empty);
    }
    free(buf);
    inventory_state_init(&st);
}

START_TEST(state_unpack_rejects_garbage)
{
    static const uint8_t junk[] = {0xff, 0xff, 0xff, 0xff, 0x0f};
    given_varied_state(&st);
    ck_assert_int_eq(inventory_state_unpack(&st, junk, sizeof(junk)), JL_ERR_DECODE);
}
END_TEST

START_TEST(state_unpack_rejects_states_that_break_invariants)
{
    Inventory__ProductStock p[2];
    Inventory__ProductStock *pp[2] = {&p[0], &p[1]};
    Inventory__ReservationLine l[2];
    Inventory__ReservationLine *lp[2] = {&l[0], &l[1]};
    Inventory__OpenReservation o;
    Inventory__OpenReservation *op[1] = {&o};
    Inventory__ClosedReservation c;
    Inventory__ClosedReservation *cp[1] = {&c};
    Inventory__WarehouseState m;

#define RESET()                                                                                    \
    do {                                                                                           \
        inventory__warehouse_state__init(&m);                                                      \
        for (int i_ = 0; i_ < 2; i_++) {                                                           \
            inventory__product_stock__init(&p[i_]);                                                \
            inventory__reservation_line__init(&l[i_]);                                             \
        }                                                                                          \
        p[0].sku = "apple";                                                                        \
        p[0].on_hand = 5;                                                                          \
        p[0].reserved = 2;                                                                         \
        p[1].sku = "pear";                                                                         \
        p[1].on_hand = 5;                                                                          \
        l[0].sku = "apple";                                                                        \
        l[0].quantity = 2;                                                                         \
        inventory__open_reservation__init(&o);                                                     \
        o.reservation_id = R1;                                                                     \
        o.order_id = O1;                                                                           \
        o.n_lines = 1;                                                                             \
        o.lines = lp;                                                                              \
        inventory__closed_reservation__init(&c);                                                   \
        c.reservation_id = R2;                                                                     \
        c.outcome = "committed";                                                                   \
        m.n_products = 2;                                                                          \
        m.products = pp;                                                                           \
        m.n_open_reservations = 1;                                                                 \
        m.open_reservations = op;                                                                  \
        m.n_closed_reservations = 1;                                                               \
        m.closed_reservations = cp;                                                                \
    } while (0)

    RESET();
    unpack_expect(&m, JL_OK);

    RESET();
    p[1].sku = "apple"; /* duplicate sku */
    unpack_expect(&m, JL_ERR_INVALID);
    RESET();
    p[1].sku = ""; /* empty sku */
    unpack_expect(&m, JL_ERR_INVALID);
    RESET();
    p[1].reserved = 6; /* reserved > on_hand */
    unpack_expect(&m, JL_ERR_INVALID);
    RESET();
    p[1].on_hand = -1;
    unpack_expect(&m, JL_ERR_INVALID);
    RESET();
    p[1].on_hand = INVENTORY_MAX_ON_HAND + 1;
    unpack_expect(&m, JL_ERR_INVALID);
    RESET();
    p[0].reserved = 1; /* does not match the open lines */
    unpack_expect(&m, JL_ERR_INVALID);
    RESET();
    l[0].sku = "durian"; /* unknown sku */
    unpack_expect(&m, JL_ERR_INVALID);
    RESET();
    o.n_lines = 2; /* the same sku twice (reserved matches the sum, so only that is wrong) */
    l[1].sku = "apple";
    l[1].quantity = 1;
    p[0].reserved = 3;
    unpack_expect(&m, JL_ERR_INVALID);
    RESET();
    o.n_lines = 0;
    unpack_expect(&m, JL_ERR_INVALID);
    RESET();
    o.order_id = "not-a-uuid";
    unpack_expect(&m, JL_ERR_INVALID);
    RESET();
    c.reservation_id = R1; /* open and closed at once */
    unpack_expect(&m, JL_ERR_INVALID);
    RESET();
    c.outcome = "lost";
    unpack_expect(&m, JL_ERR_INVALID);
    RESET();
    c.reservation_id = "nope";
    unpack_expect(&m, JL_ERR_INVALID);
#undef RESET
}
END_TEST

/* A state message built for the caps test: products p000.. (each with on_hand 1,000,000 and
 * the units its open reservations hold) and open reservations of the given lines. */
typedef struct caps_state {
    Inventory__WarehouseState m;
    Inventory__ProductStock *products;
    Inventory__ProductStock **pp;
    Inventory__OpenReservation *open;
    Inventory__OpenReservation **op;
    Inventory__ReservationLine *lines;
    Inventory__ReservationLine **lp;
    Inventory__ClosedReservation *closed;
    Inventory__ClosedReservation **cp;
    char (*skus)[24];
    char (*ids)[JL_UUID_LEN + 1];
} caps_state;

/* @p n_products skus; @p n_open reservations of @p per_open lines each (line k on sku
 * k % n_products, one unit); @p n_closed closed ids. All distinct. */
static void caps_build(caps_state *c, size_t n_products, size_t n_open, size_t per_open,
                       size_t n_closed)
{
    size_t n_lines = n_open * per_open, n_ids = 2 * n_open + n_closed;
    memset(c, 0, sizeof(*c));
    inventory__warehouse_state__init(&c->m);
    c->products = calloc(n_products + 1, sizeof(*c->products));
    c->pp = calloc(n_products + 1, sizeof(*c->pp));
    c->skus = calloc(n_products + 1, sizeof(*c->skus));
    c->open = calloc(n_open + 1, sizeof(*c->open));
    c->op = calloc(n_open + 1, sizeof(*c->op));
    c->lines = calloc(n_lines + 1, sizeof(*c->lines));
    c->lp = calloc(n_lines + 1, sizeof(*c->lp));
    c->closed = calloc(n_closed + 1, sizeof(*c->closed));
    c->cp = calloc(n_closed + 1, sizeof(*c->cp));
    c->ids = calloc(n_ids + 1, sizeof(*c->ids));
    ck_assert(c->products && c->pp && c->skus && c->open && c->op && c->lines && c->lp &&
              c->closed && c->cp && c->ids);
    for (size_t i = 0; i < n_products; i++) {
        inventory__product_stock__init(&c->products[i]);
        snprintf(c->skus[i], sizeof(c->skus[i]), "p%03zu", i);
        c->products[i].sku = c->skus[i];
        c->products[i].name = "";
        c->products[i].on_hand = 1000000;
        c->pp[i] = &c->products[i];
    }
    size_t id = 0;
    for (size_t r = 0; r < n_open; r++) {
        inventory__open_reservation__init(&c->open[r]);
        c->open[r].reservation_id = (char *)nth_id(c->ids[id++], 7, (unsigned)r);
        c->open[r].order_id = (char *)nth_id(c->ids[id++], 8, (unsigned)r);
        c->open[r].n_lines = per_open;
        c->open[r].lines = &c->lp[r * per_open];
        for (size_t k = 0; k < per_open; k++) {
            Inventory__ReservationLine *l = &c->lines[r * per_open + k];
            inventory__reservation_line__init(l);
            l->sku = c->skus[k % n_products];
            l->quantity = 1;
            c->products[k % n_products].reserved++;
            c->lp[r * per_open + k] = l;
        }
        c->op[r] = &c->open[r];
    }
    for (size_t i = 0; i < n_closed; i++) {
        inventory__closed_reservation__init(&c->closed[i]);
        c->closed[i].reservation_id = (char *)nth_id(c->ids[id++], 9, (unsigned)i);
        c->closed[i].outcome = "committed";
        c->cp[i] = &c->closed[i];
    }
    c->m.n_products = n_products;
    c->m.products = c->pp;
    c->m.n_open_reservations = n_open;
    c->m.open_reservations = c->op;
    c->m.n_closed_reservations = n_closed;
    c->m.closed_reservations = c->cp;
}

static void caps_free(caps_state *c)
{
    free(c->products);
    free(c->pp);
    free(c->skus);
    free(c->open);
    free(c->op);
    free(c->lines);
    free(c->lp);
    free(c->closed);
    free(c->cp);
    free(c->ids);
}

/* Each cap: exactly at it is a state evolve could build (JL_OK), one past it is refused, with
 * distinct skus and ids so that nothing but the cap refuses it (the state's arrays are sized
 * by the caps: one past would be written out of bounds). */
START_TEST(state_unpack_rejects_counts_over_the_caps)
{
    static const struct {
        const char *what;
        size_t products, open, per_open, closed;
        jl_status want;
    } cases[] = {
        {"products at the cap", INVENTORY_MAX_PRODUCTS, 0, 0, 0, JL_OK},
        {"one product over", INVENTORY_MAX_PRODUCTS + 1, 0, 0, 0, JL_ERR_INVALID},
        {"closed ids at the cap", 1, 0, 0, INVENTORY_MAX_CLOSED, JL_OK},
        {"one closed id over", 1, 0, 0, INVENTORY_MAX_CLOSED + 1, JL_ERR_INVALID},
        {"open reservations at the cap", 1, INVENTORY_MAX_OPEN, 1, 0, JL_OK},
        {"one open reservation over", 1, INVENTORY_MAX_OPEN + 1, 1, 0, JL_ERR_INVALID},
        {"lines of one reservation at the cap", INVENTORY_MAX_LINES, 1, INVENTORY_MAX_LINES, 0,
         JL_OK},
        {"one line over in one reservation", INVENTORY_MAX_LINES + 1, 1, INVENTORY_MAX_LINES + 1, 0,
         JL_ERR_INVALID},
        {"open lines at the pool's cap", INVENTORY_MAX_LINES,
         INVENTORY_MAX_OPEN_LINES / INVENTORY_MAX_LINES, INVENTORY_MAX_LINES, 0, JL_OK},
        {"one line over the pool", INVENTORY_MAX_LINES,
         INVENTORY_MAX_OPEN_LINES / INVENTORY_MAX_LINES + 1, INVENTORY_MAX_LINES, 0,
         JL_ERR_INVALID},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        caps_state c;
        caps_build(&c, cases[i].products, cases[i].open, cases[i].per_open, cases[i].closed);
        size_t n = inventory__warehouse_state__get_packed_size(&c.m);
        uint8_t *buf = malloc(n + 1);
        ck_assert_ptr_nonnull(buf);
        inventory__warehouse_state__pack(&c.m, buf);
        inventory_state *got = new_state();
        jl_status s = inventory_state_unpack(got, buf, n);
        ck_assert_msg(s == cases[i].want, "%s: %s, want %s", cases[i].what, jl_status_str(s),
                      jl_status_str(cases[i].want));
        free(got);
        free(buf);
        caps_free(&c);
    }
    /* Within the caps, the same closed id twice is refused too. */
    Inventory__ClosedReservation c1 = INVENTORY__CLOSED_RESERVATION__INIT, *cp[2] = {&c1, &c1};
    c1.reservation_id = R1;
    c1.outcome = "rejected";
    Inventory__WarehouseState m = INVENTORY__WAREHOUSE_STATE__INIT;
    m.n_closed_reservations = 2;
    m.closed_reservations = cp;
    unpack_expect(&m, JL_ERR_INVALID);
}
END_TEST

/* ---- sequences ---- */

START_TEST(fulfilment_lifecycle_through_decide_and_evolve)
{
    register_product("apple", "Apple");
    accept();
    register_product("pear", "Pear");
    accept();
    restock("apple", 10);
    accept();
    restock("pear", 2);
    accept();

    const line order1[] = {{"apple", 3}, {"pear", 2}};
    reserve(R1, O1, order1, 2);
    expect_reserved();
    const line order2[] = {{"apple", 1}, {"pear", 1}};
    reserve(R2, O2, order2, 2);
    expect_reservation_rejected("insufficient stock for sku pear: available 0, requested 1");
    commit(R1);
    accept();
    expect_stock("apple", 7, 0);
    expect_stock("pear", 0, 0);
    release(R1, "too late");
    expect_rejected(JL_CODE_RULE_VIOLATION,
                    "reservation " R1 " is committed: it cannot be released");
    release(R2, "order cancelled");
    expect_no_effect();

    restock("pear", 5);
    accept();
    reserve(R3, O2, order2, 2);
    expect_reserved();
    release(R3, "order cancelled");
    accept();
    commit(R3);
    expect_rejected(JL_CODE_RULE_VIOLATION,
                    "reservation " R3 " is released: it cannot be committed");
    expect_stock("apple", 7, 0);
    expect_stock("pear", 5, 0);
    ck_assert_uint_eq(st.n_open, 0);
    ck_assert_uint_eq(st.n_closed, 3);
}
END_TEST

START_TEST(replaying_emitted_events_rebuilds_the_same_state)
{
    /* Keep every accepted event's bytes, then replay them into a fresh state. */
    enum { MAX_LOG = 16 };
    uint8_t *log[MAX_LOG];
    size_t lens[MAX_LOG];
    const ProtobufCMessageDescriptor *types[MAX_LOG];
    size_t n = 0;
    const line l1[] = {{"apple", 3}, {"pear", 1}};
    const line l2[] = {{"pear", 9}};
    const line l3[] = {{"apple", 2}};

#define STEP(call)                                                                                 \
    do {                                                                                           \
        call;                                                                                      \
        ck_assert_uint_lt(n, MAX_LOG);                                                             \
        ck_assert_uint_eq(d.n_events, 1);                                                          \
        log[n] = malloc(d.lens[0]);                                                                \
        memcpy(log[n], (const uint8_t *)d.bytes.data + d.offsets[0], d.lens[0]);                   \
        lens[n] = d.lens[0];                                                                       \
        types[n] = d.types[0];                                                                     \
        n++;                                                                                       \
        accept();                                                                                  \
    } while (0)

    STEP(register_product("apple", "Apple"));
    STEP(register_product("pear", "Pear"));
    STEP(restock("apple", 5));
    STEP(restock("pear", 5));
    STEP(reserve(R1, O1, l1, 2));
    STEP(reserve(R2, O2, l2, 1));
    STEP(reserve(R3, O2, l3, 1));
    STEP(commit(R1));
    STEP(release(R3, "changed"));
#undef STEP

    inventory_state *replayed = new_state();
    for (size_t i = 0; i < n; i++) {
        ProtobufCMessage *m = protobuf_c_message_unpack(types[i], NULL, lens[i], log[i]);
        ck_assert_ptr_nonnull(m);
        ck_assert_int_eq(evolve_msg(replayed, m), JL_OK);
        protobuf_c_message_free_unpacked(m, NULL);
        free(log[i]);
    }
    ck_assert_mem_eq(replayed, &st, sizeof(st));
    /* And that state is the one the commands describe, worked out by hand (both sides above
     * come from the same bytes and the same evolve): R1 committed takes 3 apples and 1 pear,
     * R2 (9 pears) was refused, R3 released gives its 2 apples back. */
    expect_stock_in(replayed, "apple", 2, 0);
    expect_stock_in(replayed, "pear", 4, 0);
    ck_assert_uint_eq(replayed->n_closed, 3);
    free(replayed);
}
END_TEST

/* ---- runner ---- */

static TCase *tcase(const char *name)
{
    TCase *tc = tcase_create(name);
    tcase_add_checked_fixture(tc, setup, teardown);
    return tc;
}

static Suite *inventory_domain_suite(void)
{
    Suite *s = suite_create("inventory_domain");

    TCase *tc = tcase("names");
    tcase_add_test(tc, outcome_str_names_every_outcome);
    tcase_add_test(tc, state_init_is_empty_warehouse_and_all_zero);
    tcase_add_test(tc, state_stays_within_the_documented_size);
    suite_add_tcase(s, tc);

    tc = tcase("dispatch");
    tcase_add_test(tc, decide_rejects_unknown_command_type);
    tcase_add_test(tc, decide_rejects_any_warehouse_but_the_one);
    suite_add_tcase(s, tc);

    tc = tcase("register");
    tcase_add_test(tc, register_emits_product_registered);
    tcase_add_test(tc, register_rejects_empty_or_null_text);
    tcase_add_test(tc, register_accepts_text_of_max_length);
    tcase_add_test(tc, register_rejects_text_over_max_length);
    tcase_add_test(tc, register_rejects_registered_sku);
    tcase_add_test(tc, register_accepts_up_to_max_products_and_no_more);
    suite_add_tcase(s, tc);

    tc = tcase("restock");
    tcase_add_test(tc, restock_emits_restocked_and_adds_to_on_hand);
    tcase_add_test(tc, restock_rejects_unknown_sku);
    tcase_add_test(tc, restock_rejects_non_positive_quantity);
    tcase_add_test(tc, restock_accepts_max_quantity_and_rejects_more);
    tcase_add_test(tc, restock_checks_field_values_before_the_sku);
    tcase_add_test(tc, restock_keeps_on_hand_within_its_cap);
    suite_add_tcase(s, tc);

    tc = tcase("reserve");
    tcase_add_test(tc, reserve_emits_stock_reserved_with_canonical_ids);
    tcase_add_test(tc, reserve_is_all_or_none_when_one_line_is_short);
    tcase_add_test(tc, reserve_rejects_unknown_sku_as_an_event);
    tcase_add_test(tc, reserve_reports_the_first_failing_line);
    tcase_add_test(tc, reserve_takes_exactly_what_is_available_and_never_more);
    tcase_add_test(tc, reserve_counts_units_held_by_other_reservations);
    tcase_add_test(tc, reserve_rejects_bad_ids);
    tcase_add_test(tc, reserve_rejects_bad_lines);
    tcase_add_test(tc, reserve_accepts_max_lines_and_rejects_more);
    tcase_add_test(tc, reserve_of_an_open_reservation_has_no_second_effect);
    tcase_add_test(tc, reserve_repeated_with_its_lines_in_another_order_has_no_second_effect);
    tcase_add_test(tc, reserve_of_a_closed_reservation_has_no_second_effect);
    tcase_add_test(tc, reserve_checks_field_values_before_idempotency);
    tcase_add_test(tc, reserve_beyond_max_open_reservations_is_not_now_and_burns_no_id);
    tcase_add_test(tc, reserve_beyond_max_open_lines_is_not_now_and_burns_no_id);
    suite_add_tcase(s, tc);

    tc = tcase("release");
    tcase_add_test(tc, release_emits_stored_lines_and_gives_the_units_back);
    tcase_add_test(tc, release_twice_has_no_second_effect);
    tcase_add_test(tc, release_of_a_rejected_reservation_has_no_effect);
    tcase_add_test(tc, release_of_a_committed_reservation_is_a_rule_violation);
    tcase_add_test(tc, release_of_an_unknown_reservation_is_not_found);
    tcase_add_test(tc, release_rejects_bad_fields);
    tcase_add_test(tc, release_accepts_null_or_max_length_reason);
    suite_add_tcase(s, tc);

    tc = tcase("commit");
    tcase_add_test(tc, commit_emits_stored_lines_and_takes_the_units_out);
    tcase_add_test(tc, commit_twice_has_no_second_effect);
    tcase_add_test(tc, commit_after_release_or_rejection_is_a_rule_violation);
    tcase_add_test(tc, commit_of_an_unknown_reservation_is_not_found);
    suite_add_tcase(s, tc);

    tc = tcase("closed_ring");
    tcase_add_test(tc, closed_ids_are_remembered_up_to_the_ring_size);
    suite_add_tcase(s, tc);

    tc = tcase("purity");
    tcase_add_test(tc, decide_never_mutates_state);
    tcase_add_test(tc, decide_gives_identical_bytes_for_identical_input);
    suite_add_tcase(s, tc);

    tc = tcase("evolve");
    tcase_add_test(tc, evolve_product_registered_appends_in_order);
    tcase_add_test(tc, evolve_rejects_bad_product_registered);
    tcase_add_test(tc, evolve_rejects_product_beyond_max_products);
    tcase_add_test(tc, evolve_writes_text_zero_padded_over_stale_bytes);
    tcase_add_test(tc, evolve_rejects_bad_restocked);
    tcase_add_test(tc, evolve_rejects_stock_reserved_that_breaks_invariants);
    tcase_add_test(tc, evolve_rejects_stock_reserved_beyond_the_caps);
    tcase_add_test(tc, evolve_rejects_closing_what_is_not_open);
    tcase_add_test(tc, evolve_close_keeps_other_reservations_as_if_it_never_was);
    tcase_add_test(tc, evolve_rejects_unknown_event_type);
    suite_add_tcase(s, tc);

    tc = tcase("state_codec");
    tcase_add_test(tc, state_pack_unpack_round_trip);
    tcase_add_test(tc, state_pack_unpack_keeps_a_wrapped_ring_in_forgetting_order);
    tcase_add_test(tc, state_pack_of_a_full_state_fits_a_snapshot);
    tcase_add_test(tc, state_unpack_rejects_garbage);
    tcase_add_test(tc, state_unpack_rejects_states_that_break_invariants);
    tcase_add_test(tc, state_unpack_rejects_counts_over_the_caps);
    suite_add_tcase(s, tc);

    tc = tcase("sequences");
    tcase_add_test(tc, fulfilment_lifecycle_through_decide_and_evolve);
    tcase_add_test(tc, replaying_emitted_events_rebuilds_the_same_state);
    suite_add_tcase(s, tc);

    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(inventory_domain_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
