/*
 * Unit tests of the orders domain (producers/orders/domain.c): every rule of decide, accepted
 * and rejected, every event of evolve, and sequences of both. No NATS, no clock.
 *
 * Each test starts from a fresh state `st` and decision `d` (checked fixture). Commands go
 * through decide_msg(), which also asserts that decide left the state byte-for-byte unchanged;
 * accept() then feeds the emitted events, decoded from their wire bytes, back into evolve.
 */
#include "domain.h"

#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define AGG "5f0c6a3e-8b1d-4c2e-9a7f-1d2e3f4a5b6c"
#define RES "0b7d8c1e-2f3a-4b5c-8d9e-0f1a2b3c4d5e"

static orders_state st;
static jl_decision d;

static void setup(void)
{
    orders_state_init(&st);
    jl_decision_init(&d);
}

static void teardown(void)
{
    jl_decision_cleanup(&d);
}

/* ---- helpers ---- */

/* Fill @p buf with @p n copies of @p c and a NUL; @p buf must hold n + 1 bytes. */
static char *fill(char *buf, size_t n, char c)
{
    memset(buf, c, n);
    buf[n] = 0;
    return buf;
}

static void decide_msg(const ProtobufCMessage *msg)
{
    orders_state before;
    memcpy(&before, &st, sizeof(st));
    jl_command cmd = {.msg = msg, .aggregate_id = AGG, .command_id = "cmd-1", .now_ns = 42};
    jl_decision_reset(&d);
    orders_decide(&st, &cmd, &d);
    ck_assert_msg(memcmp(&before, &st, sizeof(st)) == 0, "decide modified the state");
}

static void create(const char *customer)
{
    Orders__CreateOrder m = ORDERS__CREATE_ORDER__INIT;
    m.customer_id = (char *)customer;
    decide_msg(&m.base);
}

static void add(const char *sku, int32_t quantity, int64_t price)
{
    Orders__AddItem m = ORDERS__ADD_ITEM__INIT;
    m.order_id = AGG;
    m.sku = (char *)sku;
    m.quantity = quantity;
    m.unit_price_cents = price;
    decide_msg(&m.base);
}

static void remove_sku(const char *sku)
{
    Orders__RemoveItem m = ORDERS__REMOVE_ITEM__INIT;
    m.order_id = AGG;
    m.sku = (char *)sku;
    decide_msg(&m.base);
}

static void place(void)
{
    Orders__PlaceOrder m = ORDERS__PLACE_ORDER__INIT;
    m.order_id = AGG;
    decide_msg(&m.base);
}

static void cancel(const char *reason)
{
    Orders__CancelOrder m = ORDERS__CANCEL_ORDER__INIT;
    m.order_id = AGG;
    m.reason = (char *)reason;
    decide_msg(&m.base);
}

static void confirm(const char *reservation_id)
{
    Orders__ConfirmOrder m = ORDERS__CONFIRM_ORDER__INIT;
    m.order_id = AGG;
    m.reservation_id = (char *)reservation_id;
    decide_msg(&m.base);
}

static jl_status evolve_msg(orders_state *s, const ProtobufCMessage *payload)
{
    jl_event ev = {
        .event_id = "00000000-0000-4000-8000-000000000001",
        .event_type = payload->descriptor->name,
        .aggregate_type = "order",
        .aggregate_id = AGG,
        .aggregate_version = 1,
        .payload = payload,
    };
    return orders_evolve(s, &ev);
}

/* Evolve @p payload into st, expecting @p want; on failure st must be unchanged. */
static void evolve_expect(const ProtobufCMessage *payload, jl_status want)
{
    orders_state before;
    memcpy(&before, &st, sizeof(st));
    jl_status s = evolve_msg(&st, payload);
    ck_assert_msg(s == want, "evolve returned %s, want %s", jl_status_str(s), jl_status_str(want));
    if (want != JL_OK)
        ck_assert_msg(memcmp(&before, &st, sizeof(st)) == 0, "a refused event changed the state");
}

static jl_status ev_created(orders_state *s, const char *customer)
{
    Orders__OrderCreated e = ORDERS__ORDER_CREATED__INIT;
    e.order_id = AGG;
    e.customer_id = (char *)customer;
    return evolve_msg(s, &e.base);
}

static jl_status ev_item_added(orders_state *s, const char *sku, int32_t quantity, int64_t price)
{
    Orders__ItemAdded e = ORDERS__ITEM_ADDED__INIT;
    e.order_id = AGG;
    e.sku = (char *)sku;
    e.quantity = quantity;
    e.unit_price_cents = price;
    return evolve_msg(s, &e.base);
}

static jl_status ev_item_removed(orders_state *s, const char *sku)
{
    Orders__ItemRemoved e = ORDERS__ITEM_REMOVED__INIT;
    e.order_id = AGG;
    e.sku = (char *)sku;
    return evolve_msg(s, &e.base);
}

static jl_status ev_placed(orders_state *s)
{
    Orders__OrderPlaced e = ORDERS__ORDER_PLACED__INIT;
    e.order_id = AGG;
    return evolve_msg(s, &e.base);
}

static jl_status ev_confirmed(orders_state *s)
{
    Orders__OrderConfirmed e = ORDERS__ORDER_CONFIRMED__INIT;
    e.order_id = AGG;
    e.reservation_id = RES;
    return evolve_msg(s, &e.base);
}

static jl_status ev_cancelled(orders_state *s)
{
    Orders__OrderCancelled e = ORDERS__ORDER_CANCELLED__INIT;
    e.order_id = AGG;
    return evolve_msg(s, &e.base);
}

/* "Given" steps: build st from events, as a replay would. */
static void given_created(void)
{
    ck_assert_int_eq(ev_created(&st, "cust-1"), JL_OK);
}

static void given_item(const char *sku, int32_t quantity, int64_t price)
{
    ck_assert_int_eq(ev_item_added(&st, sku, quantity, price), JL_OK);
}

static void given_placed(void)
{
    ck_assert_int_eq(ev_placed(&st), JL_OK);
}

static void given_confirmed(void)
{
    ck_assert_int_eq(ev_confirmed(&st), JL_OK);
}

static void given_cancelled(void)
{
    ck_assert_int_eq(ev_cancelled(&st), JL_OK);
}

/* An order holding ORDERS_MAX_ITEMS lines "sku-00".."sku-49", 1 unit at 100 cents each. */
static void given_full_order(void)
{
    given_created();
    for (int i = 0; i < ORDERS_MAX_ITEMS; i++) {
        char sku[16];
        snprintf(sku, sizeof(sku), "sku-%02d", i);
        given_item(sku, 1, 100);
    }
    ck_assert_uint_eq(st.n_items, ORDERS_MAX_ITEMS);
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

/* Line @p i of state @p in: @p sku, @p quantity x @p price. */
static void expect_item(const orders_state *in, size_t i, const char *sku, int32_t quantity,
                        int64_t price)
{
    ck_assert_uint_lt(i, in->n_items);
    ck_assert_str_eq(in->items[i].sku, sku);
    ck_assert_int_eq(in->items[i].quantity, quantity);
    ck_assert_int_eq(in->items[i].unit_price_cents, price);
}

/* The decision must be accepted with one event; evolve st with it, decoded from its bytes. */
static void accept(void)
{
    ck_assert_msg(d.code == JL_CODE_OK, "rejected: %s: %s", jl_code_str(d.code), d.message);
    ck_assert_uint_eq(d.n_events, 1);
    for (size_t i = 0; i < d.n_events; i++) {
        ProtobufCMessage *m = unpack_event(i, d.types[i]);
        jl_status s = evolve_msg(&st, m);
        protobuf_c_message_free_unpacked(m, NULL);
        ck_assert_int_eq(s, JL_OK);
    }
}

/* ---- names ---- */

START_TEST(status_str_names_every_status)
{
    ck_assert_str_eq(orders_status_str(ORDERS_STATUS_NONE), "none");
    ck_assert_str_eq(orders_status_str(ORDERS_STATUS_OPEN), "open");
    ck_assert_str_eq(orders_status_str(ORDERS_STATUS_PLACED), "placed");
    ck_assert_str_eq(orders_status_str(ORDERS_STATUS_CONFIRMED), "confirmed");
    ck_assert_str_eq(orders_status_str(ORDERS_STATUS_CANCELLED), "cancelled");
    ck_assert_str_eq(orders_status_str((orders_status)99), "unknown");
}
END_TEST

START_TEST(state_init_is_no_order_and_all_zero)
{
    orders_state s;
    memset(&s, 0xA5, sizeof(s));
    orders_state_init(&s);
    ck_assert_int_eq(s.status, ORDERS_STATUS_NONE);
    ck_assert_uint_eq(s.n_items, 0);
    static const orders_state zero;
    ck_assert_mem_eq(&s, &zero, sizeof(s));
}
END_TEST

/* ---- dispatch and existence ---- */

START_TEST(decide_rejects_unknown_command_type)
{
    Orders__GetOrder q = ORDERS__GET_ORDER__INIT;
    q.order_id = AGG;
    decide_msg(&q.base);
    expect_rejected(JL_CODE_INVALID, "unknown command orders.GetOrder");

    /* An event is not a command either, and the answer does not depend on the state. */
    given_created();
    Orders__OrderPlaced e = ORDERS__ORDER_PLACED__INIT;
    decide_msg(&e.base);
    expect_rejected(JL_CODE_INVALID, "unknown command orders.OrderPlaced");
}
END_TEST

START_TEST(commands_on_missing_order_are_not_found)
{
    add("A", 1, 100);
    expect_rejected(JL_CODE_NOT_FOUND, "order " AGG " does not exist");
    remove_sku("A");
    expect_rejected(JL_CODE_NOT_FOUND, "order " AGG " does not exist");
    place();
    expect_rejected(JL_CODE_NOT_FOUND, "order " AGG " does not exist");
    cancel("changed my mind");
    expect_rejected(JL_CODE_NOT_FOUND, "order " AGG " does not exist");
    confirm(RES);
    expect_rejected(JL_CODE_NOT_FOUND, "order " AGG " does not exist");
}
END_TEST

START_TEST(missing_order_is_checked_before_field_values)
{
    add("", 0, 0);
    expect_rejected(JL_CODE_NOT_FOUND, "order " AGG " does not exist");
}
END_TEST

/* ---- CreateOrder ---- */

START_TEST(create_emits_order_created_with_aggregate_id_and_customer)
{
    create("cust-7");
    ck_assert_int_eq(d.code, JL_CODE_OK);
    ck_assert_uint_eq(d.n_events, 1);
    Orders__OrderCreated *e =
        (Orders__OrderCreated *)unpack_event(0, &orders__order_created__descriptor);
    ck_assert_str_eq(e->order_id, AGG);
    ck_assert_str_eq(e->customer_id, "cust-7");
    protobuf_c_message_free_unpacked(&e->base, NULL);
}
END_TEST

START_TEST(create_rejects_existing_order_in_every_status)
{
    given_created();
    create("cust-2");
    expect_rejected(JL_CODE_RULE_VIOLATION, "order " AGG " already exists");
    given_placed();
    create("cust-2");
    expect_rejected(JL_CODE_RULE_VIOLATION, "order " AGG " already exists");
    given_confirmed();
    create("cust-2");
    expect_rejected(JL_CODE_RULE_VIOLATION, "order " AGG " already exists");
    given_cancelled();
    create("cust-2");
    expect_rejected(JL_CODE_RULE_VIOLATION, "order " AGG " already exists");
}
END_TEST

START_TEST(create_checks_existence_before_field_values)
{
    given_created();
    create("");
    expect_rejected(JL_CODE_RULE_VIOLATION, "order " AGG " already exists");
}
END_TEST

START_TEST(create_rejects_empty_customer_id)
{
    create("");
    expect_rejected(JL_CODE_INVALID, "customer_id must not be empty");
}
END_TEST

START_TEST(create_treats_null_customer_id_as_empty)
{
    create(NULL);
    expect_rejected(JL_CODE_INVALID, "customer_id must not be empty");
}
END_TEST

START_TEST(create_accepts_customer_id_of_max_text_length)
{
    char customer[ORDERS_MAX_TEXT + 1];
    create(fill(customer, ORDERS_MAX_TEXT, 'c'));
    Orders__OrderCreated *e =
        (Orders__OrderCreated *)unpack_event(0, &orders__order_created__descriptor);
    ck_assert_str_eq(e->customer_id, customer);
    protobuf_c_message_free_unpacked(&e->base, NULL);
    accept();
    ck_assert_str_eq(st.customer_id, customer);
}
END_TEST

START_TEST(create_rejects_customer_id_over_max_text_length)
{
    char customer[ORDERS_MAX_TEXT + 2];
    create(fill(customer, ORDERS_MAX_TEXT + 1, 'c'));
    expect_rejected(JL_CODE_INVALID, "customer_id is longer than 64 bytes");
}
END_TEST

/* ---- AddItem ---- */

START_TEST(add_item_emits_item_added_with_command_values)
{
    given_created();
    add("SKU-1", 3, 1250);
    ck_assert_int_eq(d.code, JL_CODE_OK);
    ck_assert_uint_eq(d.n_events, 1);
    Orders__ItemAdded *e = (Orders__ItemAdded *)unpack_event(0, &orders__item_added__descriptor);
    ck_assert_str_eq(e->order_id, AGG);
    ck_assert_str_eq(e->sku, "SKU-1");
    ck_assert_int_eq(e->quantity, 3);
    ck_assert_int_eq(e->unit_price_cents, 1250);
    protobuf_c_message_free_unpacked(&e->base, NULL);
}
END_TEST

START_TEST(add_item_rejects_empty_sku)
{
    given_created();
    add("", 1, 100);
    expect_rejected(JL_CODE_INVALID, "sku must not be empty");
}
END_TEST

START_TEST(add_item_accepts_sku_of_max_text_length)
{
    char sku[ORDERS_MAX_TEXT + 1];
    given_created();
    add(fill(sku, ORDERS_MAX_TEXT, 's'), 1, 100);
    accept();
    ck_assert_str_eq(st.items[0].sku, sku);
}
END_TEST

START_TEST(add_item_rejects_sku_over_max_text_length)
{
    char sku[ORDERS_MAX_TEXT + 2];
    given_created();
    add(fill(sku, ORDERS_MAX_TEXT + 1, 's'), 1, 100);
    expect_rejected(JL_CODE_INVALID, "sku is longer than 64 bytes");
}
END_TEST

START_TEST(add_item_rejects_non_positive_quantity)
{
    given_created();
    add("A", 0, 100);
    expect_rejected(JL_CODE_INVALID, "quantity must be positive");
    add("A", -1, 100);
    expect_rejected(JL_CODE_INVALID, "quantity must be positive");
    add("A", INT32_MIN, 100);
    expect_rejected(JL_CODE_INVALID, "quantity must be positive");
}
END_TEST

START_TEST(add_item_accepts_max_quantity_on_a_new_line)
{
    given_created();
    add("A", ORDERS_MAX_QUANTITY, 1);
    accept();
    ck_assert_int_eq(st.items[0].quantity, ORDERS_MAX_QUANTITY);
}
END_TEST

START_TEST(add_item_rejects_quantity_over_max_on_a_new_line)
{
    given_created();
    add("A", ORDERS_MAX_QUANTITY + 1, 1);
    expect_rejected_code(JL_CODE_INVALID);
    add("A", INT32_MAX, 1);
    expect_rejected_code(JL_CODE_INVALID);
}
END_TEST

START_TEST(add_item_rejects_non_positive_price)
{
    given_created();
    add("A", 1, 0);
    expect_rejected(JL_CODE_INVALID, "price must be positive");
    add("A", 1, -1);
    expect_rejected(JL_CODE_INVALID, "price must be positive");
    add("A", 1, INT64_MIN);
    expect_rejected(JL_CODE_INVALID, "price must be positive");
}
END_TEST

START_TEST(add_item_accepts_max_price)
{
    given_created();
    add("A", 1, ORDERS_MAX_PRICE_CENTS);
    accept();
    ck_assert_int_eq(st.items[0].unit_price_cents, ORDERS_MAX_PRICE_CENTS);
}
END_TEST

START_TEST(add_item_rejects_price_over_max)
{
    given_created();
    add("A", 1, ORDERS_MAX_PRICE_CENTS + 1);
    expect_rejected_code(JL_CODE_INVALID);
    add("A", 1, INT64_MAX);
    expect_rejected_code(JL_CODE_INVALID);
}
END_TEST

START_TEST(add_item_rejects_placed_order)
{
    given_created();
    given_item("A", 1, 100);
    given_placed();
    add("B", 1, 100);
    expect_rejected(JL_CODE_RULE_VIOLATION, "order is placed: items can no longer change");
}
END_TEST

START_TEST(add_item_rejects_confirmed_order)
{
    given_created();
    given_item("A", 1, 100);
    given_placed();
    given_confirmed();
    add("B", 1, 100);
    expect_rejected(JL_CODE_RULE_VIOLATION, "order is confirmed: items can no longer change");
}
END_TEST

START_TEST(add_item_rejects_cancelled_order)
{
    given_created();
    given_cancelled();
    add("B", 1, 100);
    expect_rejected(JL_CODE_RULE_VIOLATION, "order is cancelled: items can no longer change");
}
END_TEST

START_TEST(add_item_checks_field_values_before_status)
{
    given_created();
    given_cancelled();
    add("B", 0, 100);
    expect_rejected(JL_CODE_INVALID, "quantity must be positive");
}
END_TEST

START_TEST(add_item_merges_quantities_of_a_sku_already_on_the_order)
{
    given_created();
    given_item("A", 2, 100);
    given_item("B", 1, 500);
    add("A", 3, 100);
    /* The event carries the command's quantity; the sum is evolve's business. */
    Orders__ItemAdded *e = (Orders__ItemAdded *)unpack_event(0, &orders__item_added__descriptor);
    ck_assert_int_eq(e->quantity, 3);
    protobuf_c_message_free_unpacked(&e->base, NULL);
    accept();
    ck_assert_uint_eq(st.n_items, 2);
    expect_item(&st, 0, "A", 5, 100);
}
END_TEST

START_TEST(add_item_accepts_merge_up_to_max_quantity)
{
    given_created();
    given_item("A", ORDERS_MAX_QUANTITY - 1, 100);
    add("A", 1, 100);
    accept();
    ck_assert_int_eq(st.items[0].quantity, ORDERS_MAX_QUANTITY);
}
END_TEST

START_TEST(add_item_rejects_merge_over_max_quantity)
{
    given_created();
    given_item("A", ORDERS_MAX_QUANTITY, 100);
    add("A", 1, 100);
    expect_rejected_code(JL_CODE_INVALID);
    ck_assert_ptr_nonnull(strstr(d.message, "sku A"));

    orders_state_init(&st);
    given_created();
    given_item("A", 600000, 100);
    add("A", 400001, 100);
    expect_rejected_code(JL_CODE_INVALID);
}
END_TEST

START_TEST(add_item_rejects_sku_already_on_the_order_at_another_price)
{
    given_created();
    given_item("A", 1, 100);
    add("A", 1, 101);
    expect_rejected(JL_CODE_RULE_VIOLATION, "sku A is already on the order at another price");
}
END_TEST

START_TEST(add_item_accepts_new_sku_up_to_max_items)
{
    given_created();
    for (int i = 0; i < ORDERS_MAX_ITEMS; i++) {
        char sku[16];
        snprintf(sku, sizeof(sku), "sku-%02d", i);
        add(sku, 1, 100);
        accept();
    }
    ck_assert_uint_eq(st.n_items, ORDERS_MAX_ITEMS);
    ck_assert_str_eq(st.items[ORDERS_MAX_ITEMS - 1].sku, "sku-49");
}
END_TEST

START_TEST(add_item_rejects_new_sku_beyond_max_items)
{
    given_full_order();
    add("one-too-many", 1, 100);
    expect_rejected(JL_CODE_RULE_VIOLATION, "an order holds at most 50 distinct skus");
}
END_TEST

START_TEST(add_item_merges_into_a_full_order)
{
    given_full_order();
    add("sku-49", 2, 100);
    accept();
    ck_assert_uint_eq(st.n_items, ORDERS_MAX_ITEMS);
    ck_assert_int_eq(st.items[ORDERS_MAX_ITEMS - 1].quantity, 3);
}
END_TEST

/* ---- RemoveItem ---- */

START_TEST(remove_item_emits_item_removed)
{
    given_created();
    given_item("A", 4, 100);
    remove_sku("A");
    ck_assert_int_eq(d.code, JL_CODE_OK);
    ck_assert_uint_eq(d.n_events, 1);
    Orders__ItemRemoved *e =
        (Orders__ItemRemoved *)unpack_event(0, &orders__item_removed__descriptor);
    ck_assert_str_eq(e->order_id, AGG);
    ck_assert_str_eq(e->sku, "A");
    protobuf_c_message_free_unpacked(&e->base, NULL);
    accept();
    ck_assert_uint_eq(st.n_items, 0);
}
END_TEST

START_TEST(remove_item_rejects_empty_sku)
{
    given_created();
    given_item("A", 1, 100);
    remove_sku("");
    expect_rejected(JL_CODE_INVALID, "sku must not be empty");
}
END_TEST

START_TEST(remove_item_rejects_sku_over_max_text_length)
{
    char sku[ORDERS_MAX_TEXT + 2];
    given_created();
    remove_sku(fill(sku, ORDERS_MAX_TEXT + 1, 's'));
    expect_rejected(JL_CODE_INVALID, "sku is longer than 64 bytes");
}
END_TEST

START_TEST(remove_item_rejects_placed_order)
{
    given_created();
    given_item("A", 1, 100);
    given_placed();
    remove_sku("A");
    expect_rejected(JL_CODE_RULE_VIOLATION, "order is placed: items can no longer change");
}
END_TEST

START_TEST(remove_item_rejects_confirmed_order)
{
    given_created();
    given_item("A", 1, 100);
    given_placed();
    given_confirmed();
    remove_sku("A");
    expect_rejected(JL_CODE_RULE_VIOLATION, "order is confirmed: items can no longer change");
}
END_TEST

START_TEST(remove_item_rejects_cancelled_order)
{
    given_created();
    given_item("A", 1, 100);
    given_cancelled();
    remove_sku("A");
    expect_rejected(JL_CODE_RULE_VIOLATION, "order is cancelled: items can no longer change");
}
END_TEST

START_TEST(remove_item_rejects_sku_not_on_the_order)
{
    given_created();
    given_item("A", 1, 100);
    remove_sku("B");
    expect_rejected(JL_CODE_NOT_FOUND, "sku B is not on the order");
}
END_TEST

/* ---- PlaceOrder ---- */

START_TEST(place_emits_total_and_item_count)
{
    given_created();
    given_item("A", 2, 150);
    given_item("B", 3, 1000);
    place();
    ck_assert_int_eq(d.code, JL_CODE_OK);
    ck_assert_uint_eq(d.n_events, 1);
    Orders__OrderPlaced *e =
        (Orders__OrderPlaced *)unpack_event(0, &orders__order_placed__descriptor);
    ck_assert_str_eq(e->order_id, AGG);
    ck_assert_int_eq(e->total_cents, 2 * 150 + 3 * 1000);
    ck_assert_int_eq(e->item_count, 5);
    ck_assert_uint_eq(e->n_lines, 2);
    protobuf_c_message_free_unpacked(&e->base, NULL);
    accept();
    ck_assert_int_eq(st.status, ORDERS_STATUS_PLACED);
}
END_TEST

START_TEST(place_carries_the_lines_of_the_state_in_the_order_added)
{
    given_created();
    given_item("A", 2, 150);
    given_item("B", 1, 999);
    given_item("C", 3, 1000);
    given_item("A", 4, 150);
    ck_assert_int_eq(ev_item_removed(&st, "B"), JL_OK);
    place();
    Orders__OrderPlaced *e =
        (Orders__OrderPlaced *)unpack_event(0, &orders__order_placed__descriptor);
    /* Merged quantities, removed lines gone, order of first addition kept. */
    ck_assert_uint_eq(e->n_lines, 2);
    ck_assert_str_eq(e->lines[0]->sku, "A");
    ck_assert_int_eq(e->lines[0]->quantity, 6);
    ck_assert_int_eq(e->lines[0]->unit_price_cents, 150);
    ck_assert_str_eq(e->lines[1]->sku, "C");
    ck_assert_int_eq(e->lines[1]->quantity, 3);
    ck_assert_int_eq(e->lines[1]->unit_price_cents, 1000);
    ck_assert_int_eq(e->total_cents, 6 * 150 + 3 * 1000);
    ck_assert_int_eq(e->item_count, 9);
    protobuf_c_message_free_unpacked(&e->base, NULL);
}
END_TEST

START_TEST(place_carries_every_line_of_a_full_order)
{
    given_full_order();
    place();
    Orders__OrderPlaced *e =
        (Orders__OrderPlaced *)unpack_event(0, &orders__order_placed__descriptor);
    ck_assert_uint_eq(e->n_lines, ORDERS_MAX_ITEMS);
    for (size_t i = 0; i < ORDERS_MAX_ITEMS; i++) {
        char sku[16];
        snprintf(sku, sizeof(sku), "sku-%02zu", i);
        ck_assert_str_eq(e->lines[i]->sku, sku);
        ck_assert_int_eq(e->lines[i]->quantity, 1);
        ck_assert_int_eq(e->lines[i]->unit_price_cents, 100);
    }
    protobuf_c_message_free_unpacked(&e->base, NULL);
}
END_TEST

START_TEST(place_rejects_confirmed_order)
{
    given_created();
    given_item("A", 1, 100);
    given_placed();
    given_confirmed();
    place();
    expect_rejected(JL_CODE_RULE_VIOLATION, "order is already confirmed");
}
END_TEST

START_TEST(place_rejects_empty_order)
{
    given_created();
    place();
    expect_rejected(JL_CODE_RULE_VIOLATION, "an empty order cannot be placed");
}
END_TEST

START_TEST(place_rejects_order_emptied_by_removals)
{
    given_created();
    given_item("A", 1, 100);
    remove_sku("A");
    accept();
    place();
    expect_rejected(JL_CODE_RULE_VIOLATION, "an empty order cannot be placed");
}
END_TEST

START_TEST(place_rejects_cancelled_order)
{
    given_created();
    given_item("A", 1, 100);
    given_cancelled();
    place();
    expect_rejected(JL_CODE_RULE_VIOLATION, "a cancelled order cannot be placed");
}
END_TEST

START_TEST(place_rejects_already_placed_order)
{
    given_created();
    given_item("A", 1, 100);
    given_placed();
    place();
    expect_rejected(JL_CODE_RULE_VIOLATION, "order is already placed");
}
END_TEST

START_TEST(place_totals_a_full_order_at_max_values_without_overflow)
{
    given_created();
    for (int i = 0; i < ORDERS_MAX_ITEMS; i++) {
        char sku[16];
        snprintf(sku, sizeof(sku), "sku-%02d", i);
        given_item(sku, ORDERS_MAX_QUANTITY, ORDERS_MAX_PRICE_CENTS);
    }
    place();
    Orders__OrderPlaced *e =
        (Orders__OrderPlaced *)unpack_event(0, &orders__order_placed__descriptor);
    ck_assert_int_eq(e->total_cents,
                     (int64_t)ORDERS_MAX_ITEMS * ORDERS_MAX_QUANTITY * ORDERS_MAX_PRICE_CENTS);
    ck_assert_int_eq(e->item_count, ORDERS_MAX_ITEMS * ORDERS_MAX_QUANTITY);
    protobuf_c_message_free_unpacked(&e->base, NULL);
}
END_TEST

START_TEST(place_rejects_hand_built_state_whose_total_overflows)
{
    /* evolve cannot build this state; decide must still not overflow on it. */
    given_created();
    st.n_items = 2;
    strcpy(st.items[0].sku, "A");
    st.items[0].quantity = INT32_MAX;
    st.items[0].unit_price_cents = INT64_MAX / 2;
    strcpy(st.items[1].sku, "B");
    st.items[1].quantity = 1;
    st.items[1].unit_price_cents = 1;
    place();
    expect_rejected(JL_CODE_INTERNAL, "order total overflows");
}
END_TEST

/* ---- CancelOrder ---- */

START_TEST(cancel_emits_order_cancelled_with_reason)
{
    given_created();
    cancel("changed my mind");
    ck_assert_int_eq(d.code, JL_CODE_OK);
    ck_assert_uint_eq(d.n_events, 1);
    Orders__OrderCancelled *e =
        (Orders__OrderCancelled *)unpack_event(0, &orders__order_cancelled__descriptor);
    ck_assert_str_eq(e->order_id, AGG);
    ck_assert_str_eq(e->reason, "changed my mind");
    protobuf_c_message_free_unpacked(&e->base, NULL);
    accept();
    ck_assert_int_eq(st.status, ORDERS_STATUS_CANCELLED);
}
END_TEST

START_TEST(cancel_accepts_placed_order)
{
    given_created();
    given_item("A", 1, 100);
    given_placed();
    cancel("out of stock");
    accept();
    ck_assert_int_eq(st.status, ORDERS_STATUS_CANCELLED);
}
END_TEST

START_TEST(cancel_accepts_empty_or_null_reason)
{
    given_created();
    cancel("");
    ck_assert_int_eq(d.code, JL_CODE_OK);
    cancel(NULL);
    ck_assert_int_eq(d.code, JL_CODE_OK);
    Orders__OrderCancelled *e =
        (Orders__OrderCancelled *)unpack_event(0, &orders__order_cancelled__descriptor);
    ck_assert_str_eq(e->reason, "");
    protobuf_c_message_free_unpacked(&e->base, NULL);
}
END_TEST

START_TEST(text_that_is_not_utf8_or_holds_control_characters_is_invalid)
{
    create("caf\xe9");
    expect_rejected(JL_CODE_INVALID, "customer_id is not valid UTF-8");
    given_created();
    add("SKU\t1", 1, 100);
    expect_rejected(JL_CODE_INVALID, "sku holds a control character (byte 0x09 at 3)");
    cancel("\xc0\x80"); /* an overlong NUL */
    expect_rejected(JL_CODE_INVALID, "reason is not valid UTF-8");
    cancel("chang\xc3\xa9 d'avis");
    ck_assert_int_eq(d.code, JL_CODE_OK);
}
END_TEST

START_TEST(cancel_of_cancelled_order_is_accepted_with_no_event)
{
    given_created();
    given_cancelled();
    cancel("again");
    ck_assert_msg(d.code == JL_CODE_OK, "rejected: %s", d.message);
    ck_assert_uint_eq(d.n_events, 0);
    ck_assert_int_eq(st.status, ORDERS_STATUS_CANCELLED);
}
END_TEST

START_TEST(cancel_accepts_reason_of_max_length)
{
    char reason[ORDERS_MAX_REASON + 1];
    given_created();
    cancel(fill(reason, ORDERS_MAX_REASON, 'r'));
    Orders__OrderCancelled *e =
        (Orders__OrderCancelled *)unpack_event(0, &orders__order_cancelled__descriptor);
    ck_assert_str_eq(e->reason, reason);
    protobuf_c_message_free_unpacked(&e->base, NULL);
}
END_TEST

START_TEST(cancel_rejects_reason_over_max_length)
{
    char reason[ORDERS_MAX_REASON + 2];
    given_created();
    cancel(fill(reason, ORDERS_MAX_REASON + 1, 'r'));
    expect_rejected(JL_CODE_INVALID, "reason is longer than 256 bytes");
}
END_TEST

START_TEST(cancel_rejects_confirmed_order)
{
    given_created();
    given_item("A", 1, 100);
    given_placed();
    given_confirmed();
    cancel("too late");
    expect_rejected(JL_CODE_RULE_VIOLATION, "a confirmed order cannot be cancelled");
}
END_TEST

START_TEST(cancel_checks_reason_length_before_confirmed_status)
{
    char reason[ORDERS_MAX_REASON + 2];
    given_created();
    given_placed();
    given_confirmed();
    cancel(fill(reason, ORDERS_MAX_REASON + 1, 'r'));
    expect_rejected(JL_CODE_INVALID, "reason is longer than 256 bytes");
}
END_TEST

/* ---- ConfirmOrder ---- */

START_TEST(confirm_emits_order_confirmed_with_reservation_id)
{
    given_created();
    given_item("A", 1, 100);
    given_placed();
    confirm(RES);
    ck_assert_int_eq(d.code, JL_CODE_OK);
    ck_assert_uint_eq(d.n_events, 1);
    Orders__OrderConfirmed *e =
        (Orders__OrderConfirmed *)unpack_event(0, &orders__order_confirmed__descriptor);
    ck_assert_str_eq(e->order_id, AGG);
    ck_assert_str_eq(e->reservation_id, RES);
    protobuf_c_message_free_unpacked(&e->base, NULL);
    accept();
    ck_assert_int_eq(st.status, ORDERS_STATUS_CONFIRMED);
    ck_assert_uint_eq(st.n_items, 1);
}
END_TEST

START_TEST(confirm_writes_reservation_id_in_lower_case)
{
    given_created();
    given_item("A", 1, 100);
    given_placed();
    confirm("0B7D8C1E-2F3A-4B5C-8D9E-0F1A2B3C4D5E");
    Orders__OrderConfirmed *e =
        (Orders__OrderConfirmed *)unpack_event(0, &orders__order_confirmed__descriptor);
    ck_assert_str_eq(e->reservation_id, RES);
    protobuf_c_message_free_unpacked(&e->base, NULL);
}
END_TEST

START_TEST(confirm_rejects_empty_or_null_reservation_id)
{
    given_created();
    given_item("A", 1, 100);
    given_placed();
    confirm("");
    expect_rejected(JL_CODE_INVALID, "reservation_id must not be empty");
    confirm(NULL);
    expect_rejected(JL_CODE_INVALID, "reservation_id must not be empty");
}
END_TEST

START_TEST(confirm_rejects_reservation_id_that_is_not_a_uuid)
{
    given_created();
    given_item("A", 1, 100);
    given_placed();
    confirm("res-1");
    expect_rejected(JL_CODE_INVALID, "reservation_id 'res-1' is not a UUID");
    confirm(RES "0");
    expect_rejected(JL_CODE_INVALID, "reservation_id '" RES "0' is not a UUID");
}
END_TEST

START_TEST(confirm_rejects_open_order)
{
    given_created();
    given_item("A", 1, 100);
    confirm(RES);
    expect_rejected(JL_CODE_RULE_VIOLATION, "order is open: only a placed order can be confirmed");
}
END_TEST

START_TEST(confirm_rejects_cancelled_order)
{
    given_created();
    given_item("A", 1, 100);
    given_cancelled();
    confirm(RES);
    expect_rejected(JL_CODE_RULE_VIOLATION, "a cancelled order cannot be confirmed");

    /* Placed, then cancelled (e.g. the reservation was rejected): still not confirmable. */
    orders_state_init(&st);
    given_created();
    given_item("A", 1, 100);
    given_placed();
    given_cancelled();
    confirm(RES);
    expect_rejected(JL_CODE_RULE_VIOLATION, "a cancelled order cannot be confirmed");
}
END_TEST

START_TEST(confirm_of_confirmed_order_is_accepted_with_no_event)
{
    given_created();
    given_item("A", 1, 100);
    given_placed();
    confirm(RES);
    accept();
    confirm(RES);
    ck_assert_msg(d.code == JL_CODE_OK, "rejected: %s", d.message);
    ck_assert_uint_eq(d.n_events, 0);
    ck_assert_int_eq(st.status, ORDERS_STATUS_CONFIRMED);
}
END_TEST

START_TEST(confirm_checks_field_values_before_status)
{
    given_created();
    given_item("A", 1, 100);
    given_placed();
    given_confirmed();
    confirm("not-a-uuid");
    expect_rejected(JL_CODE_INVALID, "reservation_id 'not-a-uuid' is not a UUID");
    orders_state_init(&st);
    given_created();
    confirm("");
    expect_rejected(JL_CODE_INVALID, "reservation_id must not be empty");
}
END_TEST

/* ---- purity ---- */

START_TEST(decide_never_mutates_state)
{
    char long_text[ORDERS_MAX_REASON + 2];
    fill(long_text, ORDERS_MAX_REASON + 1, 'x');

    Orders__CreateOrder c1 = ORDERS__CREATE_ORDER__INIT, c2 = ORDERS__CREATE_ORDER__INIT;
    c1.customer_id = "cust";
    c2.customer_id = long_text;
    Orders__AddItem a1 = ORDERS__ADD_ITEM__INIT, a2 = ORDERS__ADD_ITEM__INIT,
                    a3 = ORDERS__ADD_ITEM__INIT;
    a1.sku = "sku-00";
    a1.quantity = 1;
    a1.unit_price_cents = 100;
    a2.sku = "new";
    a2.quantity = 1;
    a2.unit_price_cents = 100;
    a3.sku = "sku-00";
    a3.quantity = 1;
    a3.unit_price_cents = 999;
    Orders__RemoveItem r1 = ORDERS__REMOVE_ITEM__INIT, r2 = ORDERS__REMOVE_ITEM__INIT;
    r1.sku = "sku-00";
    r2.sku = "absent";
    Orders__PlaceOrder p = ORDERS__PLACE_ORDER__INIT;
    Orders__CancelOrder k1 = ORDERS__CANCEL_ORDER__INIT, k2 = ORDERS__CANCEL_ORDER__INIT;
    k1.reason = "why not";
    k2.reason = long_text;
    Orders__ConfirmOrder f1 = ORDERS__CONFIRM_ORDER__INIT, f2 = ORDERS__CONFIRM_ORDER__INIT;
    f1.reservation_id = RES;
    f2.reservation_id = long_text;
    Orders__GetOrder q = ORDERS__GET_ORDER__INIT;
    const ProtobufCMessage *cmds[] = {&c1.base, &c2.base, &a1.base, &a2.base, &a3.base,
                                      &r1.base, &r2.base, &p.base,  &k1.base, &k2.base,
                                      &f1.base, &f2.base, &q.base};

    enum { N_STATES = 7 };
    orders_state states[N_STATES];
    for (size_t i = 0; i < N_STATES; i++)
        orders_state_init(&states[i]);
    ck_assert_int_eq(ev_created(&states[1], "cust"), JL_OK);
    ck_assert_int_eq(ev_created(&states[2], "cust"), JL_OK);
    ck_assert_int_eq(ev_item_added(&states[2], "sku-00", 2, 100), JL_OK);
    memcpy(&states[3], &states[2], sizeof(states[2]));
    ck_assert_int_eq(ev_placed(&states[3]), JL_OK);
    memcpy(&states[4], &states[2], sizeof(states[2]));
    ck_assert_int_eq(ev_cancelled(&states[4]), JL_OK);
    ck_assert_int_eq(ev_created(&states[5], "cust"), JL_OK);
    for (int i = 0; i < ORDERS_MAX_ITEMS; i++) {
        char sku[16];
        snprintf(sku, sizeof(sku), "sku-%02d", i);
        ck_assert_int_eq(ev_item_added(&states[5], sku, 1, 100), JL_OK);
    }
    memcpy(&states[6], &states[3], sizeof(states[3]));
    ck_assert_int_eq(ev_confirmed(&states[6]), JL_OK);

    for (size_t s = 0; s < N_STATES; s++) {
        for (size_t c = 0; c < sizeof(cmds) / sizeof(cmds[0]); c++) {
            orders_state before;
            memcpy(&before, &states[s], sizeof(before));
            jl_command cmd = {.msg = cmds[c], .aggregate_id = AGG, .command_id = "x"};
            jl_decision_reset(&d);
            orders_decide(&states[s], &cmd, &d);
            ck_assert_msg(memcmp(&before, &states[s], sizeof(before)) == 0,
                          "state %zu changed by command %zu", s, c);
        }
    }
}
END_TEST

START_TEST(decide_gives_identical_bytes_for_identical_input)
{
    jl_decision other;
    jl_decision_init(&other);
    given_created();
    given_item("A", 2, 150);
    place();
    Orders__PlaceOrder p = ORDERS__PLACE_ORDER__INIT;
    jl_command cmd = {.msg = &p.base, .aggregate_id = AGG, .command_id = "other", .now_ns = 7};
    orders_decide(&st, &cmd, &other);
    ck_assert_int_eq(other.code, JL_CODE_OK);
    ck_assert_uint_eq(other.bytes.len, d.bytes.len);
    ck_assert_mem_eq(other.bytes.data, d.bytes.data, d.bytes.len);
    jl_decision_cleanup(&other);
}
END_TEST

/* ---- evolve ---- */

START_TEST(evolve_order_created_opens_order_with_customer)
{
    ck_assert_int_eq(ev_created(&st, "cust-9"), JL_OK);
    ck_assert_int_eq(st.status, ORDERS_STATUS_OPEN);
    ck_assert_str_eq(st.customer_id, "cust-9");
    ck_assert_uint_eq(st.n_items, 0);
}
END_TEST

START_TEST(evolve_rejects_order_created_on_existing_order)
{
    given_created();
    Orders__OrderCreated e = ORDERS__ORDER_CREATED__INIT;
    e.customer_id = "someone-else";
    evolve_expect(&e.base, JL_ERR_INVALID);
}
END_TEST

START_TEST(evolve_rejects_over_long_customer_id)
{
    char customer[ORDERS_MAX_TEXT + 2];
    Orders__OrderCreated e = ORDERS__ORDER_CREATED__INIT;
    e.customer_id = fill(customer, ORDERS_MAX_TEXT + 1, 'c');
    evolve_expect(&e.base, JL_ERR_INVALID);
}
END_TEST

START_TEST(evolve_item_added_appends_line)
{
    given_created();
    ck_assert_int_eq(ev_item_added(&st, "A", 2, 150), JL_OK);
    ck_assert_int_eq(ev_item_added(&st, "B", 1, 99), JL_OK);
    ck_assert_uint_eq(st.n_items, 2);
    expect_item(&st, 0, "A", 2, 150);
    expect_item(&st, 1, "B", 1, 99);
}
END_TEST

START_TEST(evolve_writes_text_zero_padded_over_stale_bytes)
{
    /* States are compared with memcmp: text must not keep bytes of whatever held the slot. */
    memset(st.customer_id, 'Z', sizeof(st.customer_id));
    memset(st.items[0].sku, 'Z', sizeof(st.items[0].sku));
    given_created();
    given_item("A", 1, 100);
    char want[ORDERS_MAX_TEXT + 1] = "A";
    ck_assert_mem_eq(st.items[0].sku, want, sizeof(want));
    char want_customer[ORDERS_MAX_TEXT + 1] = "cust-1";
    ck_assert_mem_eq(st.customer_id, want_customer, sizeof(want_customer));
}
END_TEST

START_TEST(evolve_item_added_merges_line_of_same_sku)
{
    given_created();
    given_item("A", 2, 150);
    ck_assert_int_eq(ev_item_added(&st, "A", 5, 150), JL_OK);
    ck_assert_uint_eq(st.n_items, 1);
    ck_assert_int_eq(st.items[0].quantity, 7);
}
END_TEST

START_TEST(evolve_rejects_item_added_beyond_max_items)
{
    given_full_order();
    Orders__ItemAdded e = ORDERS__ITEM_ADDED__INIT;
    e.sku = "one-too-many";
    e.quantity = 1;
    e.unit_price_cents = 100;
    evolve_expect(&e.base, JL_ERR_INVALID);
    ck_assert_uint_eq(st.n_items, ORDERS_MAX_ITEMS);
}
END_TEST

START_TEST(evolve_rejects_over_long_sku_decoded_from_the_wire)
{
    /* A sku far over the cap, packed and unpacked as the runtime would give it to evolve. */
    size_t n = 100000;
    char *sku = malloc(n + 1);
    ck_assert_ptr_nonnull(sku);
    Orders__ItemAdded e = ORDERS__ITEM_ADDED__INIT;
    e.sku = fill(sku, n, 's');
    e.quantity = 1;
    e.unit_price_cents = 100;
    size_t len = protobuf_c_message_get_packed_size(&e.base);
    uint8_t *wire = malloc(len);
    ck_assert_ptr_nonnull(wire);
    protobuf_c_message_pack(&e.base, wire);
    ProtobufCMessage *m =
        protobuf_c_message_unpack(&orders__item_added__descriptor, NULL, len, wire);
    ck_assert_ptr_nonnull(m);

    given_created();
    evolve_expect(m, JL_ERR_INVALID);
    ck_assert_uint_eq(st.n_items, 0);

    char at_cap[ORDERS_MAX_TEXT + 2];
    e.sku = fill(at_cap, ORDERS_MAX_TEXT + 1, 's');
    evolve_expect(&e.base, JL_ERR_INVALID);

    protobuf_c_message_free_unpacked(m, NULL);
    free(wire);
    free(sku);
}
END_TEST

START_TEST(evolve_rejects_item_added_with_empty_sku)
{
    given_created();
    Orders__ItemAdded e = ORDERS__ITEM_ADDED__INIT;
    e.quantity = 1;
    e.unit_price_cents = 100;
    evolve_expect(&e.base, JL_ERR_INVALID);
    e.sku = NULL;
    evolve_expect(&e.base, JL_ERR_INVALID);
}
END_TEST

START_TEST(evolve_rejects_item_added_with_out_of_range_numbers)
{
    static const struct {
        int32_t quantity;
        int64_t price;
    } bad[] = {
        {0, 100}, {-1, 100}, {ORDERS_MAX_QUANTITY + 1, 100},  {INT32_MAX, 100},
        {1, 0},   {1, -1},   {1, ORDERS_MAX_PRICE_CENTS + 1}, {1, INT64_MAX},
    };
    given_created();
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        Orders__ItemAdded e = ORDERS__ITEM_ADDED__INIT;
        e.sku = "A";
        e.quantity = bad[i].quantity;
        e.unit_price_cents = bad[i].price;
        evolve_expect(&e.base, JL_ERR_INVALID);
    }
    ck_assert_uint_eq(st.n_items, 0);
}
END_TEST

START_TEST(evolve_rejects_item_added_merge_over_max_quantity)
{
    given_created();
    given_item("A", ORDERS_MAX_QUANTITY, 100);
    Orders__ItemAdded e = ORDERS__ITEM_ADDED__INIT;
    e.sku = "A";
    e.quantity = 1;
    e.unit_price_cents = 100;
    evolve_expect(&e.base, JL_ERR_INVALID);
    ck_assert_int_eq(st.items[0].quantity, ORDERS_MAX_QUANTITY);
}
END_TEST

START_TEST(evolve_rejects_item_added_at_another_price)
{
    given_created();
    given_item("A", 1, 100);
    Orders__ItemAdded e = ORDERS__ITEM_ADDED__INIT;
    e.sku = "A";
    e.quantity = 1;
    e.unit_price_cents = 200;
    evolve_expect(&e.base, JL_ERR_INVALID);
}
END_TEST

START_TEST(evolve_item_removed_keeps_order_of_remaining_lines)
{
    given_created();
    given_item("A", 1, 100);
    given_item("B", 2, 200);
    given_item("C", 3, 300);
    ck_assert_int_eq(ev_item_removed(&st, "B"), JL_OK);

    /* Equal, padding and vacated slot included, to the state that never had B. */
    orders_state want;
    orders_state_init(&want);
    ck_assert_int_eq(ev_created(&want, "cust-1"), JL_OK);
    ck_assert_int_eq(ev_item_added(&want, "A", 1, 100), JL_OK);
    ck_assert_int_eq(ev_item_added(&want, "C", 3, 300), JL_OK);
    ck_assert_mem_eq(&st, &want, sizeof(st));

    ck_assert_int_eq(ev_item_removed(&st, "C"), JL_OK);
    ck_assert_int_eq(ev_item_removed(&st, "A"), JL_OK);
    ck_assert_uint_eq(st.n_items, 0);
}
END_TEST

START_TEST(evolve_item_removed_of_absent_sku_changes_nothing)
{
    given_created();
    given_item("A", 1, 100);
    orders_state before;
    memcpy(&before, &st, sizeof(st));
    ck_assert_int_eq(ev_item_removed(&st, "B"), JL_OK);
    char sku[ORDERS_MAX_TEXT + 10];
    ck_assert_int_eq(ev_item_removed(&st, fill(sku, sizeof(sku) - 1, 'A')), JL_OK);
    ck_assert_int_eq(ev_item_removed(&st, ""), JL_OK);
    ck_assert_mem_eq(&st, &before, sizeof(st));
}
END_TEST

START_TEST(evolve_item_removed_frees_room_in_a_full_order)
{
    given_full_order();
    ck_assert_int_eq(ev_item_removed(&st, "sku-00"), JL_OK);
    ck_assert_uint_eq(st.n_items, ORDERS_MAX_ITEMS - 1);
    ck_assert_str_eq(st.items[0].sku, "sku-01");
    ck_assert_str_eq(st.items[ORDERS_MAX_ITEMS - 2].sku, "sku-49");
    ck_assert_str_eq(st.items[ORDERS_MAX_ITEMS - 1].sku, "");
    add("new", 1, 100);
    accept();
    ck_assert_str_eq(st.items[ORDERS_MAX_ITEMS - 1].sku, "new");
}
END_TEST

START_TEST(evolve_order_placed_sets_placed)
{
    given_created();
    given_item("A", 1, 100);
    ck_assert_int_eq(ev_placed(&st), JL_OK);
    ck_assert_int_eq(st.status, ORDERS_STATUS_PLACED);
    ck_assert_uint_eq(st.n_items, 1);
}
END_TEST

START_TEST(evolve_order_confirmed_sets_confirmed_and_keeps_lines)
{
    given_created();
    given_item("A", 2, 100);
    given_placed();
    orders_state before;
    memcpy(&before, &st, sizeof(st));
    ck_assert_int_eq(ev_confirmed(&st), JL_OK);
    ck_assert_int_eq(st.status, ORDERS_STATUS_CONFIRMED);
    before.status = ORDERS_STATUS_CONFIRMED;
    ck_assert_mem_eq(&st, &before, sizeof(st));
}
END_TEST

START_TEST(evolve_order_placed_ignores_the_lines_it_carries)
{
    /* The state already holds the lines: the event's copy must not add them a second time. */
    given_created();
    given_item("A", 2, 100);
    Orders__OrderLine line = ORDERS__ORDER_LINE__INIT;
    line.sku = "A";
    line.quantity = 2;
    line.unit_price_cents = 100;
    Orders__OrderLine *lines[] = {&line};
    Orders__OrderPlaced e = ORDERS__ORDER_PLACED__INIT;
    e.order_id = AGG;
    e.n_lines = 1;
    e.lines = lines;
    evolve_expect(&e.base, JL_OK);
    ck_assert_int_eq(st.status, ORDERS_STATUS_PLACED);
    ck_assert_uint_eq(st.n_items, 1);
    ck_assert_int_eq(st.items[0].quantity, 2);
}
END_TEST

START_TEST(evolve_order_cancelled_sets_cancelled_from_open_or_placed)
{
    given_created();
    ck_assert_int_eq(ev_cancelled(&st), JL_OK);
    ck_assert_int_eq(st.status, ORDERS_STATUS_CANCELLED);

    orders_state_init(&st);
    given_created();
    given_item("A", 1, 100);
    given_placed();
    ck_assert_int_eq(ev_cancelled(&st), JL_OK);
    ck_assert_int_eq(st.status, ORDERS_STATUS_CANCELLED);
}
END_TEST

START_TEST(evolve_rejects_events_before_order_created)
{
    Orders__ItemAdded a = ORDERS__ITEM_ADDED__INIT;
    a.sku = "A";
    a.quantity = 1;
    a.unit_price_cents = 100;
    Orders__ItemRemoved r = ORDERS__ITEM_REMOVED__INIT;
    r.sku = "A";
    Orders__OrderPlaced p = ORDERS__ORDER_PLACED__INIT;
    Orders__OrderCancelled c = ORDERS__ORDER_CANCELLED__INIT;
    Orders__OrderConfirmed f = ORDERS__ORDER_CONFIRMED__INIT;
    f.reservation_id = RES;
    evolve_expect(&f.base, JL_ERR_INVALID);
    evolve_expect(&a.base, JL_ERR_INVALID);
    evolve_expect(&r.base, JL_ERR_INVALID);
    evolve_expect(&p.base, JL_ERR_INVALID);
    evolve_expect(&c.base, JL_ERR_INVALID);
    ck_assert_int_eq(st.status, ORDERS_STATUS_NONE);
}
END_TEST

START_TEST(evolve_accepts_item_added_after_placed)
{
    /* Transitions are decide's rule: history written under other rules must still load. */
    given_created();
    given_placed();
    ck_assert_int_eq(ev_item_added(&st, "A", 1, 100), JL_OK);
    ck_assert_int_eq(st.status, ORDERS_STATUS_PLACED);
    ck_assert_uint_eq(st.n_items, 1);
}
END_TEST

START_TEST(evolve_rejects_unknown_event_type)
{
    given_created();
    given_item("A", 1, 100);
    Orders__CreateOrder c = ORDERS__CREATE_ORDER__INIT; /* a command, not an event */
    c.customer_id = "x";
    evolve_expect(&c.base, JL_ERR_UNKNOWN_TYPE);
    Orders__ConfirmOrder f = ORDERS__CONFIRM_ORDER__INIT;
    f.reservation_id = RES;
    evolve_expect(&f.base, JL_ERR_UNKNOWN_TYPE);
    Orders__OrderSummary s = ORDERS__ORDER_SUMMARY__INIT;
    evolve_expect(&s.base, JL_ERR_UNKNOWN_TYPE);

    orders_state_init(&st);
    evolve_expect(&c.base, JL_ERR_UNKNOWN_TYPE);
}
END_TEST

/* ---- sequences ---- */

START_TEST(order_lifecycle_through_decide_and_evolve)
{
    create("cust-1");
    accept();
    ck_assert_int_eq(st.status, ORDERS_STATUS_OPEN);
    ck_assert_str_eq(st.customer_id, "cust-1");

    add("A", 2, 150);
    accept();
    add("B", 1, 1000);
    accept();
    add("A", 1, 150);
    accept();
    add("C", 5, 10);
    accept();
    remove_sku("B");
    accept();
    ck_assert_uint_eq(st.n_items, 2);
    ck_assert_str_eq(st.items[0].sku, "A");
    ck_assert_int_eq(st.items[0].quantity, 3);
    ck_assert_str_eq(st.items[1].sku, "C");

    place();
    Orders__OrderPlaced *e =
        (Orders__OrderPlaced *)unpack_event(0, &orders__order_placed__descriptor);
    ck_assert_int_eq(e->total_cents, 3 * 150 + 5 * 10);
    ck_assert_int_eq(e->item_count, 8);
    protobuf_c_message_free_unpacked(&e->base, NULL);
    accept();
    ck_assert_int_eq(st.status, ORDERS_STATUS_PLACED);

    add("D", 1, 1);
    expect_rejected(JL_CODE_RULE_VIOLATION, "order is placed: items can no longer change");
    cancel("late");
    accept();
    ck_assert_int_eq(st.status, ORDERS_STATUS_CANCELLED);
    cancel("again");
    ck_assert_int_eq(d.code, JL_CODE_OK);
    ck_assert_uint_eq(d.n_events, 0);
    place();
    expect_rejected(JL_CODE_RULE_VIOLATION, "a cancelled order cannot be placed");
    ck_assert_uint_eq(st.n_items, 2);
}
END_TEST

START_TEST(confirmed_lifecycle_through_decide_and_evolve)
{
    create("cust-1");
    accept();
    add("A", 2, 150);
    accept();
    confirm(RES);
    expect_rejected(JL_CODE_RULE_VIOLATION, "order is open: only a placed order can be confirmed");
    place();
    accept();
    confirm(RES);
    accept();
    ck_assert_int_eq(st.status, ORDERS_STATUS_CONFIRMED);
    confirm(RES);
    ck_assert_int_eq(d.code, JL_CODE_OK);
    ck_assert_uint_eq(d.n_events, 0);
    cancel("changed my mind");
    expect_rejected(JL_CODE_RULE_VIOLATION, "a confirmed order cannot be cancelled");
    place();
    expect_rejected(JL_CODE_RULE_VIOLATION, "order is already confirmed");
    add("B", 1, 1);
    expect_rejected(JL_CODE_RULE_VIOLATION, "order is confirmed: items can no longer change");
    ck_assert_int_eq(st.status, ORDERS_STATUS_CONFIRMED);
    ck_assert_uint_eq(st.n_items, 1);
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

#define STEP(call)                                                                                 \
    do {                                                                                           \
        call;                                                                                      \
        ck_assert_uint_lt(n, MAX_LOG);                                                             \
        log[n] = malloc(d.lens[0]);                                                                \
        memcpy(log[n], (const uint8_t *)d.bytes.data + d.offsets[0], d.lens[0]);                   \
        lens[n] = d.lens[0];                                                                       \
        types[n] = d.types[0];                                                                     \
        n++;                                                                                       \
        accept();                                                                                  \
    } while (0)

    STEP(create("cust-1"));
    STEP(add("A", 1, 100));
    STEP(add("B", 2, 200));
    STEP(add("A", 4, 100));
    STEP(add("C", 1, 5));
    STEP(remove_sku("A"));
    STEP(place());
    STEP(confirm(RES));
#undef STEP

    orders_state replayed;
    orders_state_init(&replayed);
    for (size_t i = 0; i < n; i++) {
        ProtobufCMessage *m = protobuf_c_message_unpack(types[i], NULL, lens[i], log[i]);
        ck_assert_ptr_nonnull(m);
        ck_assert_int_eq(evolve_msg(&replayed, m), JL_OK);
        protobuf_c_message_free_unpacked(m, NULL);
        free(log[i]);
    }
    ck_assert_mem_eq(&replayed, &st, sizeof(st));
    /* And that state is the one the commands describe, worked out by hand (both sides above
     * come from the same bytes and the same evolve). */
    ck_assert_int_eq(replayed.status, ORDERS_STATUS_CONFIRMED);
    ck_assert_str_eq(replayed.customer_id, "cust-1");
    ck_assert_uint_eq(replayed.n_items, 2);
    expect_item(&replayed, 0, "B", 2, 200);
    expect_item(&replayed, 1, "C", 1, 5);
}
END_TEST

/* ---- the state as protobuf ---- */

/* Pack st, unpack it into a fresh state and require the two to be equal byte for byte. */
static void expect_round_trip(void)
{
    jl_buf buf;
    jl_buf_init(&buf, 1024 * 1024);
    ck_assert_int_eq(orders_state_pack(&st, &buf), JL_OK);
    orders_state back;
    memset(&back, 0x5A, sizeof(back));
    ck_assert_int_eq(orders_state_unpack(&back, buf.data, buf.len), JL_OK);
    ck_assert_mem_eq(&back, &st, sizeof(st));
    jl_buf_cleanup(&buf);
}

START_TEST(state_pack_round_trips_every_status)
{
    expect_round_trip();
    given_created();
    expect_round_trip();
    given_item("A", 2, 150);
    given_item("B", 1, 99);
    expect_round_trip();
    given_placed();
    expect_round_trip();
    given_confirmed();
    expect_round_trip();
    orders_state_init(&st);
    given_created();
    given_cancelled();
    expect_round_trip();
}
END_TEST

START_TEST(state_pack_names_confirmed_status_and_lines)
{
    given_created();
    given_item("A", 2, 150);
    given_placed();
    given_confirmed();
    jl_buf buf;
    jl_buf_init(&buf, 1024 * 1024);
    ck_assert_int_eq(orders_state_pack(&st, &buf), JL_OK);
    Orders__OrderState *m = orders__order_state__unpack(NULL, buf.len, buf.data);
    ck_assert_ptr_nonnull(m);
    ck_assert_str_eq(m->status, "confirmed");
    ck_assert_str_eq(m->customer_id, "cust-1");
    ck_assert_uint_eq(m->n_lines, 1);
    ck_assert_str_eq(m->lines[0]->sku, "A");
    ck_assert_int_eq(m->lines[0]->quantity, 2);
    ck_assert_int_eq(m->lines[0]->unit_price_cents, 150);
    orders__order_state__free_unpacked(m, NULL);
    jl_buf_cleanup(&buf);
}
END_TEST

START_TEST(state_unpack_reads_confirmed_status)
{
    Orders__OrderState m = ORDERS__ORDER_STATE__INIT;
    m.status = "confirmed";
    m.customer_id = "cust-3";
    uint8_t wire[256];
    ck_assert_uint_le(orders__order_state__get_packed_size(&m), sizeof(wire));
    size_t len = orders__order_state__pack(&m, wire);
    ck_assert_int_eq(orders_state_unpack(&st, wire, len), JL_OK);
    ck_assert_int_eq(st.status, ORDERS_STATUS_CONFIRMED);
    ck_assert_str_eq(st.customer_id, "cust-3");
    /* A confirmed order decoded from a snapshot behaves like one built by evolve. */
    cancel("late");
    expect_rejected(JL_CODE_RULE_VIOLATION, "a confirmed order cannot be cancelled");
}
END_TEST

START_TEST(state_unpack_rejects_bytes_that_are_not_a_state)
{
    static const uint8_t junk[] = {0xff, 0xff, 0xff};
    given_created();
    ck_assert_int_eq(orders_state_unpack(&st, junk, sizeof(junk)), JL_ERR_DECODE);
}
END_TEST

/* A snapshot with @p status and one line (@p quantity x @p price of "A"), or two lines of "A". */
static jl_status unpack_state_with(const char *status, int32_t quantity, int64_t price, bool twice)
{
    Orders__OrderLine l = ORDERS__ORDER_LINE__INIT, *lines[2] = {&l, &l};
    Orders__OrderState m = ORDERS__ORDER_STATE__INIT;
    m.status = (char *)status;
    m.customer_id = "cust-4";
    l.sku = "A";
    l.quantity = quantity;
    l.unit_price_cents = price;
    m.lines = lines;
    m.n_lines = twice ? 2 : 1;
    uint8_t wire[256];
    ck_assert_uint_le(orders__order_state__get_packed_size(&m), sizeof(wire));
    return orders_state_unpack(&st, wire, orders__order_state__pack(&m, wire));
}

START_TEST(state_unpack_refuses_what_evolve_could_not_have_built)
{
    ck_assert_int_eq(unpack_state_with("open", 2, 100, false), JL_OK);
    ck_assert_int_eq(st.n_items, 1);
    /* An unknown status is not "no order": CreateOrder must not be accepted on it. */
    ck_assert_int_eq(unpack_state_with("returned", 2, 100, false), JL_ERR_INVALID);
    ck_assert_int_eq(st.status, ORDERS_STATUS_NONE); /* left initialised */
    ck_assert_int_eq(unpack_state_with("open", 0, 100, false), JL_ERR_INVALID);
    ck_assert_int_eq(unpack_state_with("open", ORDERS_MAX_QUANTITY + 1, 100, false),
                     JL_ERR_INVALID);
    ck_assert_int_eq(unpack_state_with("open", 1, 0, false), JL_ERR_INVALID);
    ck_assert_int_eq(unpack_state_with("open", 1, ORDERS_MAX_PRICE_CENTS + 1, false),
                     JL_ERR_INVALID);
    ck_assert_int_eq(unpack_state_with("open", 1, 100, true), JL_ERR_INVALID); /* sku twice */
}
END_TEST

/* ---- runner ---- */

static TCase *tcase(const char *name)
{
    TCase *tc = tcase_create(name);
    tcase_add_checked_fixture(tc, setup, teardown);
    return tc;
}

static Suite *orders_domain_suite(void)
{
    Suite *s = suite_create("orders_domain");

    TCase *tc = tcase("names");
    tcase_add_test(tc, status_str_names_every_status);
    tcase_add_test(tc, state_init_is_no_order_and_all_zero);
    suite_add_tcase(s, tc);

    tc = tcase("dispatch");
    tcase_add_test(tc, decide_rejects_unknown_command_type);
    tcase_add_test(tc, commands_on_missing_order_are_not_found);
    tcase_add_test(tc, missing_order_is_checked_before_field_values);
    suite_add_tcase(s, tc);

    tc = tcase("create");
    tcase_add_test(tc, create_emits_order_created_with_aggregate_id_and_customer);
    tcase_add_test(tc, create_rejects_existing_order_in_every_status);
    tcase_add_test(tc, create_checks_existence_before_field_values);
    tcase_add_test(tc, create_rejects_empty_customer_id);
    tcase_add_test(tc, create_treats_null_customer_id_as_empty);
    tcase_add_test(tc, create_accepts_customer_id_of_max_text_length);
    tcase_add_test(tc, create_rejects_customer_id_over_max_text_length);
    suite_add_tcase(s, tc);

    tc = tcase("add_item");
    tcase_add_test(tc, add_item_emits_item_added_with_command_values);
    tcase_add_test(tc, add_item_rejects_empty_sku);
    tcase_add_test(tc, add_item_accepts_sku_of_max_text_length);
    tcase_add_test(tc, add_item_rejects_sku_over_max_text_length);
    tcase_add_test(tc, add_item_rejects_non_positive_quantity);
    tcase_add_test(tc, add_item_accepts_max_quantity_on_a_new_line);
    tcase_add_test(tc, add_item_rejects_quantity_over_max_on_a_new_line);
    tcase_add_test(tc, add_item_rejects_non_positive_price);
    tcase_add_test(tc, add_item_accepts_max_price);
    tcase_add_test(tc, add_item_rejects_price_over_max);
    tcase_add_test(tc, add_item_rejects_placed_order);
    tcase_add_test(tc, add_item_rejects_confirmed_order);
    tcase_add_test(tc, add_item_rejects_cancelled_order);
    tcase_add_test(tc, add_item_checks_field_values_before_status);
    tcase_add_test(tc, add_item_merges_quantities_of_a_sku_already_on_the_order);
    tcase_add_test(tc, add_item_accepts_merge_up_to_max_quantity);
    tcase_add_test(tc, add_item_rejects_merge_over_max_quantity);
    tcase_add_test(tc, add_item_rejects_sku_already_on_the_order_at_another_price);
    tcase_add_test(tc, add_item_accepts_new_sku_up_to_max_items);
    tcase_add_test(tc, add_item_rejects_new_sku_beyond_max_items);
    tcase_add_test(tc, add_item_merges_into_a_full_order);
    suite_add_tcase(s, tc);

    tc = tcase("remove_item");
    tcase_add_test(tc, remove_item_emits_item_removed);
    tcase_add_test(tc, remove_item_rejects_empty_sku);
    tcase_add_test(tc, remove_item_rejects_sku_over_max_text_length);
    tcase_add_test(tc, remove_item_rejects_placed_order);
    tcase_add_test(tc, remove_item_rejects_confirmed_order);
    tcase_add_test(tc, remove_item_rejects_cancelled_order);
    tcase_add_test(tc, remove_item_rejects_sku_not_on_the_order);
    suite_add_tcase(s, tc);

    tc = tcase("place");
    tcase_add_test(tc, place_emits_total_and_item_count);
    tcase_add_test(tc, place_carries_the_lines_of_the_state_in_the_order_added);
    tcase_add_test(tc, place_carries_every_line_of_a_full_order);
    tcase_add_test(tc, place_rejects_confirmed_order);
    tcase_add_test(tc, place_rejects_empty_order);
    tcase_add_test(tc, place_rejects_order_emptied_by_removals);
    tcase_add_test(tc, place_rejects_cancelled_order);
    tcase_add_test(tc, place_rejects_already_placed_order);
    tcase_add_test(tc, place_totals_a_full_order_at_max_values_without_overflow);
    tcase_add_test(tc, place_rejects_hand_built_state_whose_total_overflows);
    suite_add_tcase(s, tc);

    tc = tcase("cancel");
    tcase_add_test(tc, cancel_emits_order_cancelled_with_reason);
    tcase_add_test(tc, cancel_accepts_placed_order);
    tcase_add_test(tc, cancel_accepts_empty_or_null_reason);
    tcase_add_test(tc, text_that_is_not_utf8_or_holds_control_characters_is_invalid);
    tcase_add_test(tc, cancel_of_cancelled_order_is_accepted_with_no_event);
    tcase_add_test(tc, cancel_accepts_reason_of_max_length);
    tcase_add_test(tc, cancel_rejects_reason_over_max_length);
    tcase_add_test(tc, cancel_rejects_confirmed_order);
    tcase_add_test(tc, cancel_checks_reason_length_before_confirmed_status);
    suite_add_tcase(s, tc);

    tc = tcase("confirm");
    tcase_add_test(tc, confirm_emits_order_confirmed_with_reservation_id);
    tcase_add_test(tc, confirm_writes_reservation_id_in_lower_case);
    tcase_add_test(tc, confirm_rejects_empty_or_null_reservation_id);
    tcase_add_test(tc, confirm_rejects_reservation_id_that_is_not_a_uuid);
    tcase_add_test(tc, confirm_rejects_open_order);
    tcase_add_test(tc, confirm_rejects_cancelled_order);
    tcase_add_test(tc, confirm_of_confirmed_order_is_accepted_with_no_event);
    tcase_add_test(tc, confirm_checks_field_values_before_status);
    suite_add_tcase(s, tc);

    tc = tcase("purity");
    tcase_add_test(tc, decide_never_mutates_state);
    tcase_add_test(tc, decide_gives_identical_bytes_for_identical_input);
    suite_add_tcase(s, tc);

    tc = tcase("evolve");
    tcase_add_test(tc, evolve_order_created_opens_order_with_customer);
    tcase_add_test(tc, evolve_rejects_order_created_on_existing_order);
    tcase_add_test(tc, evolve_rejects_over_long_customer_id);
    tcase_add_test(tc, evolve_item_added_appends_line);
    tcase_add_test(tc, evolve_item_added_merges_line_of_same_sku);
    tcase_add_test(tc, evolve_writes_text_zero_padded_over_stale_bytes);
    tcase_add_test(tc, evolve_rejects_item_added_beyond_max_items);
    tcase_add_test(tc, evolve_rejects_over_long_sku_decoded_from_the_wire);
    tcase_add_test(tc, evolve_rejects_item_added_with_empty_sku);
    tcase_add_test(tc, evolve_rejects_item_added_with_out_of_range_numbers);
    tcase_add_test(tc, evolve_rejects_item_added_merge_over_max_quantity);
    tcase_add_test(tc, evolve_rejects_item_added_at_another_price);
    tcase_add_test(tc, evolve_item_removed_keeps_order_of_remaining_lines);
    tcase_add_test(tc, evolve_item_removed_of_absent_sku_changes_nothing);
    tcase_add_test(tc, evolve_item_removed_frees_room_in_a_full_order);
    tcase_add_test(tc, evolve_order_placed_sets_placed);
    tcase_add_test(tc, evolve_order_confirmed_sets_confirmed_and_keeps_lines);
    tcase_add_test(tc, evolve_order_placed_ignores_the_lines_it_carries);
    tcase_add_test(tc, evolve_order_cancelled_sets_cancelled_from_open_or_placed);
    tcase_add_test(tc, evolve_rejects_events_before_order_created);
    tcase_add_test(tc, evolve_accepts_item_added_after_placed);
    tcase_add_test(tc, evolve_rejects_unknown_event_type);
    suite_add_tcase(s, tc);

    tc = tcase("sequences");
    tcase_add_test(tc, order_lifecycle_through_decide_and_evolve);
    tcase_add_test(tc, confirmed_lifecycle_through_decide_and_evolve);
    tcase_add_test(tc, replaying_emitted_events_rebuilds_the_same_state);
    suite_add_tcase(s, tc);

    tc = tcase("state_codec");
    tcase_add_test(tc, state_pack_round_trips_every_status);
    tcase_add_test(tc, state_pack_names_confirmed_status_and_lines);
    tcase_add_test(tc, state_unpack_reads_confirmed_status);
    tcase_add_test(tc, state_unpack_rejects_bytes_that_are_not_a_state);
    tcase_add_test(tc, state_unpack_refuses_what_evolve_could_not_have_built);
    suite_add_tcase(s, tc);

    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(orders_domain_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
