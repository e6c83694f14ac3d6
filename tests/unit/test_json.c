/*
 * Unit tests of jl_json_to_pb / jl_pb_to_json (shared/src/json.c).
 *
 * Memory: every message a test gets from jl_json_to_pb() is released with
 * protobuf_c_message_free_unpacked(msg, NULL), and failures must free their partial messages;
 * run the suite in an ENABLE_SANITIZERS build so LeakSanitizer turns any leak into a failing test.
 */
#include <check.h>
#include <float.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "jetledger/buf.h"
#include "jetledger/json.h"
#include "jetledger/status.h"
#include "jetledger/envelope.pb-c.h"
#include "orders/orders.pb-c.h"
#include "unit.h"

/*
 * ---- test-only message types ----
 *
 * The shipped schemas have no float, double, sint, fixed, repeated scalar, oneof, proto2
 * optional/required or recursive fields. A test-only .proto would need build changes outside this
 * suite, so these descriptors are written by hand, laid out as protoc-c 1.4.1 generates them for:
 *
 *   syntax = "proto3"; package jltest;
 *   enum Color { COLOR_UNSET = 0; RED = 1; GREEN = 2; }
 *   message Inner { string name = 1; int32 n = 2; }
 *   message Kinds {
 *     int32 i32 = 1; sint32 s32 = 2; sfixed32 sf32 = 3; uint32 u32 = 4; fixed32 f32 = 5;
 *     int64 i64 = 6; sint64 s64 = 7; sfixed64 sf64 = 8; uint64 u64 = 9; fixed64 f64 = 10;
 *     float fl = 11; double db = 12; bool b = 13; Color color = 14; string s = 15; bytes by = 16;
 *     Inner inner = 17; repeated int32 r_i32 = 18; repeated string r_s = 19;
 *     repeated bytes r_by = 20; repeated Inner r_inner = 21; repeated Color r_color = 22;
 *     repeated uint64 r_u64 = 23; repeated double r_db = 24; repeated bool r_b = 25;
 *     oneof choice { string c_s = 26; int64 c_i64 = 27; Inner c_inner = 28; }
 *   }
 *   message Node { Node child = 1; int32 v = 2; repeated Node kids = 3; }
 *   // and, in a proto2 file:
 *   message Opt { optional int32 opt_i32 = 1; optional string opt_s = 2; optional bytes opt_by = 3;
 *                 optional bool opt_b = 4 [default = true]; optional string def_s = 5
 *                 [default = "hi"]; required int64 req = 6; optional Inner opt_inner = 7; }
 */

enum { COLOR_UNSET = 0, COLOR_RED = 1, COLOR_GREEN = 2 };

typedef struct Inner {
    ProtobufCMessage base;
    char *name;
    int32_t n;
} Inner;

typedef struct Kinds {
    ProtobufCMessage base;
    int32_t i32;
    int32_t s32;
    int32_t sf32;
    uint32_t u32;
    uint32_t f32;
    int64_t i64;
    int64_t s64;
    int64_t sf64;
    uint64_t u64;
    uint64_t f64;
    float fl;
    double db;
    protobuf_c_boolean b;
    int color;
    char *s;
    ProtobufCBinaryData by;
    Inner *inner;
    size_t n_r_i32;
    int32_t *r_i32;
    size_t n_r_s;
    char **r_s;
    size_t n_r_by;
    ProtobufCBinaryData *r_by;
    size_t n_r_inner;
    Inner **r_inner;
    size_t n_r_color;
    int *r_color;
    size_t n_r_u64;
    uint64_t *r_u64;
    size_t n_r_db;
    double *r_db;
    size_t n_r_b;
    protobuf_c_boolean *r_b;
    uint32_t choice_case;
    union {
        char *c_s;
        int64_t c_i64;
        Inner *c_inner;
    };
} Kinds;

typedef struct Node {
    ProtobufCMessage base;
    struct Node *child;
    int32_t v;
    size_t n_kids;
    struct Node **kids;
} Node;

typedef struct Opt {
    ProtobufCMessage base;
    protobuf_c_boolean has_opt_i32;
    int32_t opt_i32;
    char *opt_s;
    protobuf_c_boolean has_opt_by;
    ProtobufCBinaryData opt_by;
    protobuf_c_boolean has_opt_b;
    protobuf_c_boolean opt_b;
    char *def_s;
    int64_t req;
    Inner *opt_inner;
} Opt;

static const ProtobufCMessageDescriptor inner_desc;
static const ProtobufCMessageDescriptor kinds_desc;
static const ProtobufCMessageDescriptor node_desc;
static const ProtobufCMessageDescriptor opt_desc;

static void inner_init(ProtobufCMessage *m)
{
    Inner *x = (Inner *)m;
    memset(x, 0, sizeof(*x));
    x->base.descriptor = &inner_desc;
    x->name = (char *)protobuf_c_empty_string;
}

static void kinds_init(ProtobufCMessage *m)
{
    Kinds *x = (Kinds *)m;
    memset(x, 0, sizeof(*x));
    x->base.descriptor = &kinds_desc;
    x->s = (char *)protobuf_c_empty_string;
}

static void node_init(ProtobufCMessage *m)
{
    Node *x = (Node *)m;
    memset(x, 0, sizeof(*x));
    x->base.descriptor = &node_desc;
}

static char opt_def_s_default[] = "hi";
static const protobuf_c_boolean opt_b_default = 1;

static void opt_init(ProtobufCMessage *m)
{
    Opt *x = (Opt *)m;
    memset(x, 0, sizeof(*x));
    x->base.descriptor = &opt_desc;
    x->opt_b = 1;
    x->def_s = opt_def_s_default;
}

#define FD(name, id, label, type, q, off, desc, def, flags)                                        \
    {                                                                                              \
        name, id, PROTOBUF_C_LABEL_##label, PROTOBUF_C_TYPE_##type, q, off, desc, def, flags, 0,   \
            NULL, NULL                                                                             \
    }
#define MSG_DESC(full, sname, type, fields, by_name, ranges, init)                                 \
    {                                                                                              \
        PROTOBUF_C__MESSAGE_DESCRIPTOR_MAGIC, full, sname, sname, "jltest", sizeof(type),          \
            sizeof(fields) / sizeof(fields[0]), fields, by_name, 1, ranges, init, NULL, NULL, NULL \
    }

static const ProtobufCEnumValue color_values[] = {
    {"COLOR_UNSET", "COLOR_UNSET", 0}, {"RED", "RED", 1}, {"GREEN", "GREEN", 2}};
static const ProtobufCEnumValueIndex color_by_name[] = {
    {"COLOR_UNSET", 0}, {"GREEN", 2}, {"RED", 1}};
static const ProtobufCIntRange color_ranges[] = {{0, 0}, {0, 3}};
static const ProtobufCEnumDescriptor color_desc = {PROTOBUF_C__ENUM_DESCRIPTOR_MAGIC,
                                                   "jltest.Color",
                                                   "Color",
                                                   "Color",
                                                   "jltest",
                                                   3,
                                                   color_values,
                                                   3,
                                                   color_by_name,
                                                   1,
                                                   color_ranges,
                                                   NULL,
                                                   NULL,
                                                   NULL,
                                                   NULL};

static const ProtobufCFieldDescriptor inner_fields[] = {
    FD("name", 1, NONE, STRING, 0, offsetof(Inner, name), NULL, protobuf_c_empty_string, 0),
    FD("n", 2, NONE, INT32, 0, offsetof(Inner, n), NULL, NULL, 0),
};
static const unsigned inner_by_name[] = {1, 0};
static const ProtobufCIntRange inner_ranges[] = {{1, 0}, {0, 2}};
static const ProtobufCMessageDescriptor inner_desc =
    MSG_DESC("jltest.Inner", "Inner", Inner, inner_fields, inner_by_name, inner_ranges, inner_init);

#define KF(name, id, type) FD(#name, id, NONE, type, 0, offsetof(Kinds, name), NULL, NULL, 0)
#define KR(name, id, type, desc, flags)                                                            \
    FD(#name, id, REPEATED, type, offsetof(Kinds, n_##name), offsetof(Kinds, name), desc, NULL,    \
       flags)
#define KO(name, id, type, desc, def)                                                              \
    FD(#name, id, NONE, type, offsetof(Kinds, choice_case), offsetof(Kinds, name), desc, def,      \
       PROTOBUF_C_FIELD_FLAG_ONEOF)

static const ProtobufCFieldDescriptor kinds_fields[] = {
    KF(i32, 1, INT32),
    KF(s32, 2, SINT32),
    KF(sf32, 3, SFIXED32),
    KF(u32, 4, UINT32),
    KF(f32, 5, FIXED32),
    KF(i64, 6, INT64),
    KF(s64, 7, SINT64),
    KF(sf64, 8, SFIXED64),
    KF(u64, 9, UINT64),
    KF(f64, 10, FIXED64),
    KF(fl, 11, FLOAT),
    KF(db, 12, DOUBLE),
    KF(b, 13, BOOL),
    FD("color", 14, NONE, ENUM, 0, offsetof(Kinds, color), &color_desc, NULL, 0),
    FD("s", 15, NONE, STRING, 0, offsetof(Kinds, s), NULL, protobuf_c_empty_string, 0),
    KF(by, 16, BYTES),
    FD("inner", 17, NONE, MESSAGE, 0, offsetof(Kinds, inner), &inner_desc, NULL, 0),
    KR(r_i32, 18, INT32, NULL, PROTOBUF_C_FIELD_FLAG_PACKED),
    FD("r_s", 19, REPEATED, STRING, offsetof(Kinds, n_r_s), offsetof(Kinds, r_s), NULL,
       protobuf_c_empty_string, 0),
    KR(r_by, 20, BYTES, NULL, 0),
    KR(r_inner, 21, MESSAGE, &inner_desc, 0),
    KR(r_color, 22, ENUM, &color_desc, PROTOBUF_C_FIELD_FLAG_PACKED),
    KR(r_u64, 23, UINT64, NULL, PROTOBUF_C_FIELD_FLAG_PACKED),
    KR(r_db, 24, DOUBLE, NULL, PROTOBUF_C_FIELD_FLAG_PACKED),
    KR(r_b, 25, BOOL, NULL, PROTOBUF_C_FIELD_FLAG_PACKED),
    KO(c_s, 26, STRING, NULL, protobuf_c_empty_string),
    KO(c_i64, 27, INT64, NULL, NULL),
    KO(c_inner, 28, MESSAGE, &inner_desc, NULL),
};
/* Field indices in strcmp order of their names, as protoc-c emits them. */
static const unsigned kinds_by_name[] = {12, 15, 26, 27, 25, 13, 11, 4,  9, 10, 0, 5, 16, 24,
                                         19, 21, 23, 17, 20, 18, 22, 14, 1, 6,  2, 7, 3,  8};
static const ProtobufCIntRange kinds_ranges[] = {{1, 0}, {0, 28}};
static const ProtobufCMessageDescriptor kinds_desc =
    MSG_DESC("jltest.Kinds", "Kinds", Kinds, kinds_fields, kinds_by_name, kinds_ranges, kinds_init);

static const ProtobufCFieldDescriptor node_fields[] = {
    FD("child", 1, NONE, MESSAGE, 0, offsetof(Node, child), &node_desc, NULL, 0),
    FD("v", 2, NONE, INT32, 0, offsetof(Node, v), NULL, NULL, 0),
    FD("kids", 3, REPEATED, MESSAGE, offsetof(Node, n_kids), offsetof(Node, kids), &node_desc, NULL,
       0),
};
static const unsigned node_by_name[] = {0, 2, 1};
static const ProtobufCIntRange node_ranges[] = {{1, 0}, {0, 3}};
static const ProtobufCMessageDescriptor node_desc =
    MSG_DESC("jltest.Node", "Node", Node, node_fields, node_by_name, node_ranges, node_init);

static const ProtobufCFieldDescriptor opt_fields[] = {
    FD("opt_i32", 1, OPTIONAL, INT32, offsetof(Opt, has_opt_i32), offsetof(Opt, opt_i32), NULL,
       NULL, 0),
    FD("opt_s", 2, OPTIONAL, STRING, 0, offsetof(Opt, opt_s), NULL, NULL, 0),
    FD("opt_by", 3, OPTIONAL, BYTES, offsetof(Opt, has_opt_by), offsetof(Opt, opt_by), NULL, NULL,
       0),
    FD("opt_b", 4, OPTIONAL, BOOL, offsetof(Opt, has_opt_b), offsetof(Opt, opt_b), NULL,
       &opt_b_default, 0),
    FD("def_s", 5, OPTIONAL, STRING, 0, offsetof(Opt, def_s), NULL, opt_def_s_default, 0),
    FD("req", 6, REQUIRED, INT64, 0, offsetof(Opt, req), NULL, NULL, 0),
    FD("opt_inner", 7, OPTIONAL, MESSAGE, 0, offsetof(Opt, opt_inner), &inner_desc, NULL, 0),
};
static const unsigned opt_by_name[] = {4, 3, 2, 0, 6, 1, 5};
static const ProtobufCIntRange opt_ranges[] = {{1, 0}, {0, 7}};
static const ProtobufCMessageDescriptor opt_desc =
    MSG_DESC("jltest.Opt", "Opt", Opt, opt_fields, opt_by_name, opt_ranges, opt_init);

/* ---- helpers ---- */

/* Parse json (NUL-terminated) into a new message of type d, failing the test on error. */
static ProtobufCMessage *parse_ok(const ProtobufCMessageDescriptor *d, const char *json)
{
    char err[256] = "";
    ProtobufCMessage *m = NULL;
    jl_status st = jl_json_to_pb(&m, d, json, strlen(json), err, sizeof(err));
    ck_assert_msg(st == JL_OK, "parsing %s: %s (%s)", json, jl_status_str(st), err);
    ck_assert_ptr_nonnull(m);
    ck_assert_str_eq(err, "");
    return m;
}

/*
 * Parse len bytes of json expecting status want, an error text containing want_in_err (unless
 * NULL), and out_msg left untouched.
 */
static void parse_fails_n(const ProtobufCMessageDescriptor *d, const char *json, size_t len,
                          jl_status want, const char *want_in_err)
{
    char err[256] = "";
    ProtobufCMessage sentinel;
    ProtobufCMessage *m = &sentinel;
    jl_status st = jl_json_to_pb(&m, d, json, len, err, sizeof(err));
    ck_assert_msg(st == want, "parsing %s: got %s (%s), want %s", json, jl_status_str(st), err,
                  jl_status_str(want));
    ck_assert_msg(m == &sentinel, "parsing %s: out_msg was changed on failure", json);
    ck_assert_msg(err[0] != '\0', "parsing %s: no error text", json);
    ck_assert_msg(want_in_err == NULL || strstr(err, want_in_err) != NULL,
                  "parsing %s: error \"%s\" lacks \"%s\"", json, err, want_in_err);
}

static void parse_fails(const ProtobufCMessageDescriptor *d, const char *json, jl_status want,
                        const char *want_in_err)
{
    parse_fails_n(d, json, strlen(json), want, want_in_err);
}

/* The exact error text for json, which must fail with status want. */
static void parse_error_is(const ProtobufCMessageDescriptor *d, const char *json, jl_status want,
                           const char *want_err)
{
    char err[256] = "";
    ProtobufCMessage *m = NULL;
    jl_status st = jl_json_to_pb(&m, d, json, strlen(json), err, sizeof(err));
    ck_assert_int_eq(st, want);
    ck_assert_str_eq(err, want_err);
}

/* Write m as JSON and check the text is exactly want. */
static void assert_json(const ProtobufCMessage *m, const char *want)
{
    jl_buf b;
    jl_buf_init(&b, 1 << 20);
    ck_assert_int_eq(jl_pb_to_json(&b, m), JL_OK);
    ck_assert_str_eq(jl_buf_str(&b), want);
    jl_buf_cleanup(&b);
}

/* Both messages pack to the same protobuf bytes. */
static void assert_same_pack(const ProtobufCMessage *a, const ProtobufCMessage *b)
{
    size_t na = protobuf_c_message_get_packed_size(a);
    size_t nb = protobuf_c_message_get_packed_size(b);
    ck_assert_uint_eq(na, nb);
    uint8_t *pa = malloc(na + 1);
    uint8_t *pb = malloc(nb + 1);
    ck_assert_ptr_nonnull(pa);
    ck_assert_ptr_nonnull(pb);
    ck_assert_uint_eq(protobuf_c_message_pack(a, pa), na);
    ck_assert_uint_eq(protobuf_c_message_pack(b, pb), nb);
    int same = memcmp(pa, pb, na) == 0;
    free(pa);
    free(pb);
    ck_assert_msg(same, "packed bytes differ");
}

/* pb -> JSON -> pb gives a message that packs to the same bytes as m. */
static void assert_round_trip(const ProtobufCMessage *m)
{
    jl_buf b;
    jl_buf_init(&b, 1 << 20);
    ck_assert_int_eq(jl_pb_to_json(&b, m), JL_OK);
    ProtobufCMessage *back = parse_ok(m->descriptor, jl_buf_str(&b));
    assert_same_pack(m, back);
    protobuf_c_message_free_unpacked(back, NULL);
    jl_buf_cleanup(&b);
}

/* jl_json_add_string() output for len bytes of s, compared with want. */
static void assert_string_json(const char *s, size_t len, const char *want)
{
    jl_buf b;
    jl_buf_init(&b, 4096);
    ck_assert_int_eq(jl_json_add_string(&b, s, len), JL_OK);
    ck_assert_str_eq(jl_buf_str(&b), want);
    jl_buf_cleanup(&b);
}

/* ---- output and round trips over the shipped schemas ---- */

START_TEST(add_item_writes_compact_json_in_field_order)
{
    Orders__AddItem m = ORDERS__ADD_ITEM__INIT;
    m.order_id = "o-1";
    m.sku = "SKU-9";
    m.quantity = 3;
    m.unit_price_cents = 1999;
    assert_json(
        &m.base,
        "{\"order_id\":\"o-1\",\"sku\":\"SKU-9\",\"quantity\":3,\"unit_price_cents\":1999}");
    assert_round_trip(&m.base);
}
END_TEST

START_TEST(proto3_defaults_are_omitted_from_output)
{
    Orders__AddItem item = ORDERS__ADD_ITEM__INIT;
    assert_json(&item.base, "{}");
    item.sku = "";
    item.order_id = "x";
    assert_json(&item.base, "{\"order_id\":\"x\"}");

    Jetledger__Reply reply = JETLEDGER__REPLY__INIT;
    reply.code = JETLEDGER__ERROR_CODE__OK;
    reply.duplicate = 0;
    reply.result.len = 0;
    assert_json(&reply.base, "{}");
    reply.duplicate = 1;
    assert_json(&reply.base, "{\"duplicate\":true}");
}
END_TEST

START_TEST(repeated_messages_round_trip)
{
    Orders__OrderSummary a = ORDERS__ORDER_SUMMARY__INIT;
    Orders__OrderSummary b = ORDERS__ORDER_SUMMARY__INIT;
    Orders__OrderSummary c = ORDERS__ORDER_SUMMARY__INIT;
    Orders__OrderSummary *list[] = {&a, &b, &c};
    Orders__ListOrdersResult r = ORDERS__LIST_ORDERS_RESULT__INIT;
    a.order_id = "o-1";
    a.status = "open";
    a.item_count = 2;
    a.total_cents = 500;
    a.version = 3;
    c.customer_id = "c-9";
    c.updated_at_ns = 1700000000123456789;
    r.n_orders = 3;
    r.orders = list;
    r.next_cursor = "next";
    assert_json(&r.base, "{\"orders\":[{\"order_id\":\"o-1\",\"status\":\"open\",\"item_count\":2,"
                         "\"total_cents\":500,\"version\":3},{},{\"customer_id\":\"c-9\","
                         "\"updated_at_ns\":1700000000123456789}],\"next_cursor\":\"next\"}");
    assert_round_trip(&r.base);

    Orders__ListOrdersResult *back = (Orders__ListOrdersResult *)parse_ok(
        &orders__list_orders_result__descriptor,
        "{\"orders\":[{\"order_id\":\"o-1\"},{},{\"version\":7}],\"next_cursor\":\"n\"}");
    ck_assert_uint_eq(back->n_orders, 3);
    ck_assert_str_eq(back->orders[0]->order_id, "o-1");
    ck_assert_str_eq(back->orders[1]->order_id, "");
    ck_assert_uint_eq(back->orders[2]->version, 7);
    ck_assert_str_eq(back->next_cursor, "n");
    protobuf_c_message_free_unpacked(&back->base, NULL);
}
END_TEST

START_TEST(nested_message_is_kept_even_when_empty)
{
    Orders__OrderSummary s = ORDERS__ORDER_SUMMARY__INIT;
    Orders__GetOrderResult r = ORDERS__GET_ORDER_RESULT__INIT;
    assert_json(&r.base, "{}");
    r.order = &s;
    assert_json(&r.base, "{\"order\":{}}");
    assert_round_trip(&r.base);

    Orders__GetOrderResult *back =
        (Orders__GetOrderResult *)parse_ok(&orders__get_order_result__descriptor, "{\"order\":{}}");
    ck_assert_ptr_nonnull(back->order);
    protobuf_c_message_free_unpacked(&back->base, NULL);
    back = (Orders__GetOrderResult *)parse_ok(&orders__get_order_result__descriptor, "{}");
    ck_assert_ptr_null(back->order);
    protobuf_c_message_free_unpacked(&back->base, NULL);
}
END_TEST

START_TEST(commit_with_envelopes_and_payloads_round_trips)
{
    static const uint8_t payload[] = {0x00, 0xff, 0x10, 0x80, 0x7f};
    Jetledger__Envelope e1 = JETLEDGER__ENVELOPE__INIT;
    Jetledger__Envelope e2 = JETLEDGER__ENVELOPE__INIT;
    Jetledger__Envelope *events[] = {&e1, &e2};
    Jetledger__Commit c = JETLEDGER__COMMIT__INIT;
    e1.event_id = "6f1c0c1e-0000-4000-8000-000000000001";
    e1.event_type = "orders.OrderCreated";
    e1.occurred_at_ns = 1700000000000000001;
    e1.aggregate_type = "order";
    e1.aggregate_id = "a-1";
    e1.aggregate_version = 1;
    e1.correlation_id = "corr";
    e1.causation_id = "cause";
    e1.schema_version = 2;
    e1.payload.len = sizeof(payload);
    e1.payload.data = (uint8_t *)payload;
    e2.event_type = "orders.ItemAdded";
    e2.aggregate_version = UINT64_MAX;
    c.n_events = 2;
    c.events = events;
    c.command_id = "cmd-1";
    c.command_type = "orders.CreateOrder";
    assert_round_trip(&c.base);

    Jetledger__Commit *back = (Jetledger__Commit *)parse_ok(
        &jetledger__commit__descriptor,
        "{\"events\":[{\"payload\":\"AP8QgH8=\",\"schema_version\":2}],\"command_id\":\"x\"}");
    ck_assert_uint_eq(back->n_events, 1);
    ck_assert_uint_eq(back->events[0]->payload.len, sizeof(payload));
    ck_assert_mem_eq(back->events[0]->payload.data, payload, sizeof(payload));
    ck_assert_uint_eq(back->events[0]->schema_version, 2);
    protobuf_c_message_free_unpacked(&back->base, NULL);
}
END_TEST

START_TEST(enum_is_written_by_name_and_read_back)
{
    Jetledger__Reply r = JETLEDGER__REPLY__INIT;
    r.code = JETLEDGER__ERROR_CODE__CONFLICT;
    r.message = "lost the race";
    assert_json(&r.base, "{\"code\":\"CONFLICT\",\"message\":\"lost the race\"}");
    assert_round_trip(&r.base);

    Jetledger__Reply *back =
        (Jetledger__Reply *)parse_ok(&jetledger__reply__descriptor, "{\"code\":\"TIMEOUT\"}");
    ck_assert_int_eq(back->code, JETLEDGER__ERROR_CODE__TIMEOUT);
    protobuf_c_message_free_unpacked(&back->base, NULL);
}
END_TEST

START_TEST(enum_accepts_numbers_and_keeps_unknown_ones)
{
    Jetledger__Reply *r =
        (Jetledger__Reply *)parse_ok(&jetledger__reply__descriptor, "{\"code\":3}");
    ck_assert_int_eq(r->code, JETLEDGER__ERROR_CODE__CONFLICT);
    protobuf_c_message_free_unpacked(&r->base, NULL);

    r = (Jetledger__Reply *)parse_ok(&jetledger__reply__descriptor, "{\"code\":42}");
    ck_assert_int_eq(r->code, 42);
    assert_json(&r->base, "{\"code\":42}");
    protobuf_c_message_free_unpacked(&r->base, NULL);

    r = (Jetledger__Reply *)parse_ok(&jetledger__reply__descriptor, "{\"code\":-1}");
    /* The generated C enum has no negative values, so the compiler may make it unsigned. */
    ck_assert_int_eq((int)r->code, -1);
    assert_json(&r->base, "{\"code\":-1}");
    protobuf_c_message_free_unpacked(&r->base, NULL);
}
END_TEST

START_TEST(bad_enum_values_are_rejected)
{
    parse_error_is(&jetledger__reply__descriptor, "{\"code\":\"NOPE\"}", JL_ERR_INVALID,
                   "field 'code': unknown value \"NOPE\" for enum jetledger.ErrorCode");
    parse_fails(&jetledger__reply__descriptor, "{\"code\":\"conflict\"}", JL_ERR_INVALID,
                "unknown value");
    parse_fails(&jetledger__reply__descriptor, "{\"code\":\"CONFLICT\\u0000\"}", JL_ERR_INVALID,
                "unknown value");
    parse_fails(&jetledger__reply__descriptor, "{\"code\":1.5}", JL_ERR_INVALID,
                "expected an integer");
    parse_fails(&jetledger__reply__descriptor, "{\"code\":2147483648}", JL_ERR_INVALID,
                "out of range");
    parse_fails(&jetledger__reply__descriptor, "{\"code\":true}", JL_ERR_DECODE,
                "expected an enum name or number, got a boolean");
}
END_TEST

/* ---- 64-bit and integer handling ---- */

START_TEST(uint64_max_is_exact_both_ways)
{
    Jetledger__Reply r = JETLEDGER__REPLY__INIT;
    r.aggregate_version = UINT64_MAX;
    r.stream_sequence = UINT64_MAX - 1;
    assert_json(&r.base, "{\"aggregate_version\":18446744073709551615,"
                         "\"stream_sequence\":18446744073709551614}");

    Jetledger__Reply *back = (Jetledger__Reply *)parse_ok(
        &jetledger__reply__descriptor, "{\"aggregate_version\":18446744073709551615,\"stream_"
                                       "sequence\":\"18446744073709551615\"}");
    ck_assert_uint_eq(back->aggregate_version, UINT64_MAX);
    ck_assert_uint_eq(back->stream_sequence, UINT64_MAX);
    protobuf_c_message_free_unpacked(&back->base, NULL);
}
END_TEST

START_TEST(int64_extremes_are_exact_both_ways)
{
    Orders__OrderSummary s = ORDERS__ORDER_SUMMARY__INIT;
    s.total_cents = INT64_MIN;
    s.updated_at_ns = INT64_MAX;
    assert_json(&s.base, "{\"total_cents\":-9223372036854775808,"
                         "\"updated_at_ns\":9223372036854775807}");
    assert_round_trip(&s.base);

    Orders__OrderSummary *back = (Orders__OrderSummary *)parse_ok(
        &orders__order_summary__descriptor,
        "{\"total_cents\":\"-9223372036854775808\",\"updated_at_ns\":9007199254740993}");
    ck_assert(back->total_cents == INT64_MIN);
    /* 2^53 + 1: a parser going through double would give ...992. */
    ck_assert(back->updated_at_ns == 9007199254740993LL);
    protobuf_c_message_free_unpacked(&back->base, NULL);
}
END_TEST

START_TEST(int64_accepts_only_decimal_integer_strings)
{
    Orders__AddItem *m = (Orders__AddItem *)parse_ok(&orders__add_item__descriptor,
                                                     "{\"unit_price_cents\":\"-42\"}");
    ck_assert(m->unit_price_cents == -42);
    protobuf_c_message_free_unpacked(&m->base, NULL);

    parse_fails(&orders__add_item__descriptor, "{\"unit_price_cents\":\"12abc\"}", JL_ERR_INVALID,
                "field 'unit_price_cents': expected an integer, got \"12abc\"");
    parse_fails(&orders__add_item__descriptor, "{\"unit_price_cents\":\" 1\"}", JL_ERR_INVALID,
                "expected an integer");
    parse_fails(&orders__add_item__descriptor, "{\"unit_price_cents\":\"+1\"}", JL_ERR_INVALID,
                "expected an integer");
    parse_fails(&orders__add_item__descriptor, "{\"unit_price_cents\":\"1.5\"}", JL_ERR_INVALID,
                "expected an integer");
    parse_fails(&orders__add_item__descriptor, "{\"unit_price_cents\":\"\"}", JL_ERR_INVALID,
                "expected an integer");
}
END_TEST

START_TEST(out_of_range_64bit_values_are_invalid)
{
    parse_error_is(&orders__add_item__descriptor, "{\"unit_price_cents\":9223372036854775808}",
                   JL_ERR_INVALID,
                   "field 'unit_price_cents': 9223372036854775808 is out of range for int64");
    parse_fails(&orders__add_item__descriptor, "{\"unit_price_cents\":-9223372036854775809}",
                JL_ERR_INVALID, "out of range for int64");
    parse_fails(&orders__add_item__descriptor,
                "{\"unit_price_cents\":"
                "123456789012345678901234567890123456789012345678901234567890}",
                JL_ERR_INVALID, "out of range for int64");
    parse_fails(&jetledger__reply__descriptor, "{\"aggregate_version\":18446744073709551616}",
                JL_ERR_INVALID, "field 'aggregate_version': 18446744073709551616 is out of range");
    parse_fails(&jetledger__reply__descriptor, "{\"aggregate_version\":-1}", JL_ERR_INVALID,
                "-1 is out of range for uint64");
    parse_fails(&jetledger__reply__descriptor, "{\"aggregate_version\":\"-1\"}", JL_ERR_INVALID,
                "out of range for uint64");
}
END_TEST

START_TEST(int32_bounds_are_accepted_and_overflow_is_invalid)
{
    Orders__AddItem *m =
        (Orders__AddItem *)parse_ok(&orders__add_item__descriptor, "{\"quantity\":2147483647}");
    ck_assert_int_eq(m->quantity, INT32_MAX);
    protobuf_c_message_free_unpacked(&m->base, NULL);
    m = (Orders__AddItem *)parse_ok(&orders__add_item__descriptor, "{\"quantity\":-2147483648}");
    ck_assert_int_eq(m->quantity, INT32_MIN);
    protobuf_c_message_free_unpacked(&m->base, NULL);

    parse_error_is(&orders__add_item__descriptor, "{\"quantity\":2147483648}", JL_ERR_INVALID,
                   "field 'quantity': 2147483648 is out of range for int32");
    parse_fails(&orders__add_item__descriptor, "{\"quantity\":-2147483649}", JL_ERR_INVALID,
                "-2147483649 is out of range for int32");
}
END_TEST

START_TEST(uint32_rejects_negative_and_overflow)
{
    Orders__ListOrders *m =
        (Orders__ListOrders *)parse_ok(&orders__list_orders__descriptor, "{\"limit\":4294967295}");
    ck_assert_uint_eq(m->limit, UINT32_MAX);
    protobuf_c_message_free_unpacked(&m->base, NULL);
    m = (Orders__ListOrders *)parse_ok(&orders__list_orders__descriptor, "{\"limit\":-0}");
    ck_assert_uint_eq(m->limit, 0);
    protobuf_c_message_free_unpacked(&m->base, NULL);

    parse_fails(&orders__list_orders__descriptor, "{\"limit\":-1}", JL_ERR_INVALID,
                "field 'limit': -1 is out of range for uint32");
    parse_fails(&orders__list_orders__descriptor, "{\"limit\":4294967296}", JL_ERR_INVALID,
                "out of range for uint32");
}
END_TEST

START_TEST(integer_fields_reject_fractions_and_exponents)
{
    static const char *const cases[] = {
        "{\"quantity\":1.5}",          "{\"quantity\":1.0}",  "{\"quantity\":1e3}",
        "{\"quantity\":1E+2}",         "{\"quantity\":-0.0}", "{\"unit_price_cents\":2.5e-1}",
        "{\"unit_price_cents\":1e18}",
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        parse_fails(&orders__add_item__descriptor, cases[i], JL_ERR_INVALID,
                    "expected an integer, got ");
    parse_error_is(&orders__add_item__descriptor, "{\"quantity\":1.5}", JL_ERR_INVALID,
                   "field 'quantity': expected an integer, got 1.5");
}
END_TEST

START_TEST(int32_field_rejects_string)
{
    parse_error_is(&orders__add_item__descriptor, "{\"quantity\":\"3\"}", JL_ERR_DECODE,
                   "field 'quantity': expected an integer, got a string");
}
END_TEST

/* ---- wrong kinds, unknown and duplicate fields, null ---- */

START_TEST(values_of_the_wrong_kind_are_decode_errors)
{
    parse_fails(&orders__add_item__descriptor, "{\"sku\":5}", JL_ERR_DECODE,
                "field 'sku': expected a string, got a number");
    parse_fails(&orders__add_item__descriptor, "{\"sku\":[\"a\"]}", JL_ERR_DECODE,
                "expected a string, got an array");
    parse_fails(&orders__add_item__descriptor, "{\"quantity\":true}", JL_ERR_DECODE,
                "expected an integer, got a boolean");
    parse_fails(&orders__add_item__descriptor, "{\"quantity\":{}}", JL_ERR_DECODE,
                "expected an integer, got an object");
    parse_fails(&orders__list_orders_result__descriptor, "{\"orders\":{}}", JL_ERR_DECODE,
                "field 'orders': expected an array, got an object");
    parse_fails(&orders__list_orders_result__descriptor, "{\"orders\":[1]}", JL_ERR_DECODE,
                "field 'orders[0]': expected an object, got a number");
    parse_fails(&orders__get_order_result__descriptor, "{\"order\":[]}", JL_ERR_DECODE,
                "expected an object, got an array");
    parse_fails(&jetledger__reply__descriptor, "{\"duplicate\":\"yes\"}", JL_ERR_DECODE,
                "expected true or false, got a string");
    parse_fails(&jetledger__reply__descriptor, "{\"duplicate\":1}", JL_ERR_DECODE,
                "expected true or false, got a number");
    parse_fails(&jetledger__envelope__descriptor, "{\"payload\":5}", JL_ERR_DECODE,
                "expected a base64 string, got a number");
    parse_fails(&orders__add_item__descriptor, "[]", JL_ERR_DECODE,
                "expected an object, got an array");
    parse_fails(&orders__add_item__descriptor, "\"x\"", JL_ERR_DECODE,
                "expected an object, got a string");
    parse_fails(&orders__add_item__descriptor, "null", JL_ERR_DECODE,
                "expected an object, got null");
}
END_TEST

START_TEST(error_names_the_nested_field_path)
{
    parse_error_is(&orders__list_orders_result__descriptor,
                   "{\"orders\":[{},{},{\"item_count\":\"x\"}]}", JL_ERR_DECODE,
                   "field 'orders[2].item_count': expected an integer, got a string");
    parse_error_is(&jetledger__commit__descriptor, "{\"events\":[{\"payload\":\"@@\"}]}",
                   JL_ERR_INVALID, "field 'events[0].payload': invalid base64");
    parse_error_is(&kinds_desc, "{\"r_inner\":[{},{\"n\":1.5}]}", JL_ERR_INVALID,
                   "field 'r_inner[1].n': expected an integer, got 1.5");
    parse_error_is(&kinds_desc, "{\"r_s\":[\"a\",\"b\",7]}", JL_ERR_DECODE,
                   "field 'r_s[2]': expected a string, got a number");
}
END_TEST

START_TEST(unknown_fields_are_invalid_and_named)
{
    parse_error_is(&orders__add_item__descriptor, "{\"qty\":1}", JL_ERR_INVALID,
                   "unknown field 'qty' in orders.AddItem");
    parse_error_is(&orders__list_orders_result__descriptor, "{\"orders\":[{},{\"bogus\":1}]}",
                   JL_ERR_INVALID, "unknown field 'orders[1].bogus' in orders.OrderSummary");
    /* A NUL inside the key must not let it match the field named by its prefix. */
    parse_fails(&orders__add_item__descriptor, "{\"sku\\u0000x\":\"a\"}", JL_ERR_INVALID,
                "unknown field 'sku?x' in orders.AddItem");
    /* Keys are proto field names, not the lowerCamelCase JSON names. */
    parse_fails(&orders__add_item__descriptor, "{\"orderId\":\"a\"}", JL_ERR_INVALID,
                "unknown field 'orderId'");
}
END_TEST

START_TEST(an_error_cut_to_a_small_buffer_stays_utf8)
{
    /* A caller's buffer shorter than the message cuts it: never inside a character. */
    static const char json[] = "{\"sk\xc3\xbc\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac\xf0\x9f\x98\x80"
                               "\xe2\x82\xac\":1}";
    for (size_t n = 2; n < 64; n++) {
        char err[64];
        ProtobufCMessage *m = NULL;
        memset(err, 'x', sizeof(err));
        ck_assert_int_eq(
            jl_json_to_pb(&m, &orders__add_item__descriptor, json, strlen(json), err, n),
            JL_ERR_INVALID);
        ck_assert_ptr_null(m);
        ck_assert_uint_lt(strlen(err), n);
        ck_assert_msg(jl_utf8_valid(err, strlen(err)), "cut inside a character at %zu: %s", n, err);
    }
}
END_TEST

START_TEST(duplicate_keys_are_invalid)
{
    parse_error_is(&orders__add_item__descriptor, "{\"sku\":\"a\",\"sku\":\"b\"}", JL_ERR_INVALID,
                   "duplicate field 'sku'");
    parse_fails(&orders__add_item__descriptor, "{\"sku\":null,\"sku\":\"b\"}", JL_ERR_INVALID,
                "duplicate field 'sku'");
    parse_error_is(&orders__list_orders_result__descriptor,
                   "{\"orders\":[{\"version\":1,\"version\":2}]}", JL_ERR_INVALID,
                   "duplicate field 'orders[0].version'");
}
END_TEST

START_TEST(null_leaves_fields_at_their_default)
{
    Orders__AddItem *m = (Orders__AddItem *)parse_ok(
        &orders__add_item__descriptor,
        "{\"order_id\":null,\"sku\":null,\"quantity\":null,\"unit_price_cents\":null}");
    ck_assert_ptr_eq(m->sku, protobuf_c_empty_string);
    ck_assert_ptr_eq(m->order_id, protobuf_c_empty_string);
    ck_assert_int_eq(m->quantity, 0);
    ck_assert(m->unit_price_cents == 0);
    protobuf_c_message_free_unpacked(&m->base, NULL);

    Orders__GetOrderResult *g = (Orders__GetOrderResult *)parse_ok(
        &orders__get_order_result__descriptor, "{\"order\":null}");
    ck_assert_ptr_null(g->order);
    protobuf_c_message_free_unpacked(&g->base, NULL);

    Orders__ListOrdersResult *l = (Orders__ListOrdersResult *)parse_ok(
        &orders__list_orders_result__descriptor, "{\"orders\":null}");
    ck_assert_uint_eq(l->n_orders, 0);
    ck_assert_ptr_null(l->orders);
    protobuf_c_message_free_unpacked(&l->base, NULL);
}
END_TEST

START_TEST(null_array_elements_are_rejected)
{
    parse_error_is(&orders__list_orders_result__descriptor, "{\"orders\":[{},null]}", JL_ERR_DECODE,
                   "field 'orders[1]': null is not allowed as an element of a repeated field");
}
END_TEST

START_TEST(empty_array_gives_an_empty_repeated_field)
{
    Orders__ListOrdersResult *l = (Orders__ListOrdersResult *)parse_ok(
        &orders__list_orders_result__descriptor, "{\"orders\":[ ]}");
    ck_assert_uint_eq(l->n_orders, 0);
    ck_assert_ptr_null(l->orders);
    assert_json(&l->base, "{}");
    protobuf_c_message_free_unpacked(&l->base, NULL);
}
END_TEST

START_TEST(whitespace_between_tokens_is_accepted)
{
    Orders__AddItem *m = (Orders__AddItem *)parse_ok(
        &orders__add_item__descriptor,
        " \t\r\n{ \"sku\" : \"a\" ,\n\t\"quantity\" :\r\n 2 , \"unit_price_cents\": -7 } \n");
    ck_assert_str_eq(m->sku, "a");
    ck_assert_int_eq(m->quantity, 2);
    ck_assert(m->unit_price_cents == -7);
    protobuf_c_message_free_unpacked(&m->base, NULL);
}
END_TEST

/* ---- malformed JSON ---- */

static const char *const malformed[] = {
    "",
    "   ",
    "{",
    "{\"sku\"",
    "{\"sku\":",
    "{\"sku\":}",
    "{\"sku\" \"x\"}",
    "{\"sku\":\"x\" \"quantity\":1}",
    "{'sku':'x'}",
    "{sku:\"x\"}",
    "{\"sku\":\"x\",}",
    "{,}",
    "{\"sku\":\"x\"",
    "{\"sku\":\"abc",
    "{\"sku\":\"a\\\"}",
    "{\"sku\":\"\\x41\"}",
    "{\"sku\":\"\\u12g4\"}",
    "{\"sku\":\"\\u12\"}",
    "{\"quantity\":01}",
    "{\"quantity\":+1}",
    "{\"quantity\":.5}",
    "{\"quantity\":1.}",
    "{\"quantity\":1e}",
    "{\"quantity\":-}",
    "{\"quantity\":0x10}",
    "{\"quantity\":NaN}",
    "{\"quantity\":tru}",
    "{\"sku\":nul}",
    "{\"sku\":nullx}",
    "\xEF\xBB\xBF{}",
    "{\"sku\":\"a\"}}",
};

START_TEST(malformed_json_is_a_decode_error)
{
    parse_fails(&orders__add_item__descriptor, malformed[_i], JL_ERR_DECODE, NULL);
}
END_TEST

START_TEST(syntax_errors_give_the_byte_offset)
{
    parse_error_is(&orders__add_item__descriptor, "{\"sku\":\"x\",}", JL_ERR_DECODE,
                   "malformed JSON at byte 11: expected a field name in double quotes");
    parse_error_is(&orders__list_orders_result__descriptor, "{\"orders\":[{} {}]}", JL_ERR_DECODE,
                   "field 'orders': malformed JSON at byte 14: expected ',' or ']'");
}
END_TEST

START_TEST(trailing_garbage_is_a_decode_error)
{
    parse_fails(&orders__add_item__descriptor, "{} x", JL_ERR_DECODE,
                "unexpected data after the JSON object");
    parse_fails(&orders__add_item__descriptor, "{}{}", JL_ERR_DECODE, "unexpected data");
    parse_fails(&orders__add_item__descriptor, "{}]", JL_ERR_DECODE, "unexpected data");
    parse_fails(&orders__add_item__descriptor, "{},", JL_ERR_DECODE, "unexpected data");
    /* len counts the NUL: an embedded NUL after the object is garbage too. */
    parse_fails_n(&orders__add_item__descriptor, "{}\0", 3, JL_ERR_DECODE, "unexpected data");

    /* Only len bytes are read: what follows them in memory is not input. */
    ProtobufCMessage *m = NULL;
    ck_assert_int_eq(jl_json_to_pb(&m, &orders__add_item__descriptor, "{}garbage", 2, NULL, 0),
                     JL_OK);
    protobuf_c_message_free_unpacked(m, NULL);
}
END_TEST

/* ---- strings and unicode ---- */

START_TEST(string_escapes_are_decoded)
{
    Orders__AddItem *m = (Orders__AddItem *)parse_ok(
        &orders__add_item__descriptor,
        "{\"sku\":\"q\\\" b\\\\ s\\/ \\b\\f\\n\\r\\t \\u0041\\u00e9\\u20AC\\u001f\"}");
    ck_assert_str_eq(m->sku, "q\" b\\ s/ \b\f\n\r\t A\xC3\xA9\xE2\x82\xAC\x1F");
    protobuf_c_message_free_unpacked(&m->base, NULL);
}
END_TEST

START_TEST(surrogate_pairs_decode_to_four_byte_utf8)
{
    Orders__AddItem *m = (Orders__AddItem *)parse_ok(
        &orders__add_item__descriptor,
        "{\"sku\":\"\\ud83d\\ude00\",\"order_id\":\"\\uD834\\uDD1E!\"}");
    ck_assert_str_eq(m->sku, "\xF0\x9F\x98\x80");
    ck_assert_str_eq(m->order_id, "\xF0\x9D\x84\x9E!");
    /* Valid UTF-8 is written back unescaped. */
    assert_json(&m->base, "{\"order_id\":\"\xF0\x9D\x84\x9E!\",\"sku\":\"\xF0\x9F\x98\x80\"}");
    protobuf_c_message_free_unpacked(&m->base, NULL);
}
END_TEST

START_TEST(unpaired_surrogates_are_rejected)
{
    static const char *const cases[] = {
        "{\"sku\":\"\\ud83d\"}",        "{\"sku\":\"\\ude00\"}",        "{\"sku\":\"\\ud83dx\"}",
        "{\"sku\":\"\\ud83d\\u0041\"}", "{\"sku\":\"\\ud83d\\ud83d\"}", "{\"sku\":\"\\ud83d\\n\"}",
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        parse_fails(&orders__add_item__descriptor, cases[i], JL_ERR_DECODE, "unpaired surrogate");
}
END_TEST

START_TEST(raw_utf8_is_kept_and_invalid_utf8_is_rejected)
{
    Orders__AddItem *m = (Orders__AddItem *)parse_ok(
        &orders__add_item__descriptor, "{\"sku\":\"\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80\"}");
    ck_assert_str_eq(m->sku, "\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80");
    protobuf_c_message_free_unpacked(&m->base, NULL);

    static const char *const cases[] = {
        "{\"sku\":\"\xFF\"}",             /* never valid */
        "{\"sku\":\"\xC0\xAF\"}",         /* overlong '/' */
        "{\"sku\":\"\xE0\x80\xAF\"}",     /* overlong, 3 bytes */
        "{\"sku\":\"\xED\xA0\x80\"}",     /* encoded surrogate */
        "{\"sku\":\"\xF4\x90\x80\x80\"}", /* past U+10FFFF */
        "{\"sku\":\"\xE2\x82\"}",         /* truncated */
        "{\"sku\":\"\x80\"}",             /* lone continuation byte */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        parse_fails(&orders__add_item__descriptor, cases[i], JL_ERR_DECODE, "invalid UTF-8");
}
END_TEST

START_TEST(control_characters_must_be_escaped_in_input)
{
    parse_fails(&orders__add_item__descriptor, "{\"sku\":\"a\nb\"}", JL_ERR_DECODE,
                "control character");
    parse_fails(&orders__add_item__descriptor, "{\"sku\":\"a\tb\"}", JL_ERR_DECODE,
                "control character");
}
END_TEST

START_TEST(nul_in_a_string_value_is_invalid)
{
    parse_fails(&orders__add_item__descriptor, "{\"sku\":\"a\\u0000b\"}", JL_ERR_INVALID,
                "field 'sku': string contains U+0000");
}
END_TEST

START_TEST(output_escapes_quotes_backslashes_and_controls)
{
    assert_string_json("a\"b\\c\n\r\t\b\f\x01\x1F\x7F/", 14,
                       "\"a\\\"b\\\\c\\n\\r\\t\\b\\f\\u0001\\u001f\\u007f/\"");
    /* C1 controls too (0x9B is CSI to a terminal): the output is printed; U+00A0 is text. */
    assert_string_json("a\xC2\x9B[2Jb\xC2\x80\xC2\x9F\xC2\xA0", 13,
                       "\"a\\u009b[2Jb\\u0080\\u009f\xC2\xA0\"");
    assert_string_json("", 0, "\"\"");
    assert_string_json(NULL, 0, "\"\"");
    /* An embedded NUL is data when a length is given. */
    assert_string_json("a\0b", 3, "\"a\\u0000b\"");
}
END_TEST

START_TEST(output_replaces_each_invalid_utf8_byte_with_fffd)
{
#define R "\xEF\xBF\xBD"
    assert_string_json("a\xFF"
                       "b",
                       3, "\"a" R "b\"");
    assert_string_json("\xC0\xAF", 2, "\"" R R "\"");
    assert_string_json("\xED\xA0\x80", 3, "\"" R R R "\"");
    assert_string_json("x\xE2\x82", 3, "\"x" R R "\"");
    assert_string_json("\xF4\x90\x80\x80", 4, "\"" R R R R "\"");
    assert_string_json("\x80\xC3\xA9", 3, "\"" R "\xC3\xA9\"");
#undef R
}
END_TEST

START_TEST(string_over_the_buffer_cap_fails_and_leaves_the_buffer_unchanged)
{
    jl_buf b;
    jl_buf_init(&b, 12);
    ck_assert_int_eq(jl_buf_adds(&b, "ab"), JL_OK);
    /* The escapes push a 6-byte string past the cap partway through. */
    ck_assert_int_eq(jl_json_add_string(&b, "x\n\n\n\n\n", 6), JL_ERR_TOO_LARGE);
    ck_assert_str_eq(jl_buf_str(&b), "ab");
    ck_assert_int_eq(jl_json_add_base64(&b, (const uint8_t *)"abcdefgh", 8), JL_ERR_TOO_LARGE);
    ck_assert_str_eq(jl_buf_str(&b), "ab");
    jl_buf_cleanup(&b);
}
END_TEST

START_TEST(output_keeps_valid_multibyte_utf8)
{
    static const char s[] = "\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80\xEF\xBF\xBF\xF4\x8F\xBF\xBF";
    assert_string_json(s, sizeof(s) - 1,
                       "\"\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80\xEF\xBF\xBF"
                       "\xF4\x8F\xBF\xBF\"");
}
END_TEST

START_TEST(every_ascii_character_round_trips_through_a_string_field)
{
    char s[128];
    for (int i = 1; i < 128; i++)
        s[i - 1] = (char)i;
    s[127] = '\0';
    Jetledger__Envelope e = JETLEDGER__ENVELOPE__INIT;
    e.event_id = s;
    jl_buf b;
    jl_buf_init(&b, 4096);
    ck_assert_int_eq(jl_pb_to_json(&b, &e.base), JL_OK);
    Jetledger__Envelope *back =
        (Jetledger__Envelope *)parse_ok(&jetledger__envelope__descriptor, jl_buf_str(&b));
    ck_assert_str_eq(back->event_id, s);
    protobuf_c_message_free_unpacked(&back->base, NULL);
    jl_buf_cleanup(&b);
}
END_TEST

/* ---- base64 ---- */

START_TEST(base64_output_is_padded)
{
    static const struct {
        const char *in;
        const char *want;
    } cases[] = {{"", "\"\""},        {"A", "\"QQ==\""},        {"AB", "\"QUI=\""},
                 {"ABC", "\"QUJD\""}, {"ABCD", "\"QUJDRA==\""}, {"\xFB\xFF", "\"+/8=\""}};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        jl_buf b;
        jl_buf_init(&b, 64);
        ck_assert_int_eq(jl_json_add_base64(&b, (const uint8_t *)cases[i].in, strlen(cases[i].in)),
                         JL_OK);
        ck_assert_str_eq(jl_buf_str(&b), cases[i].want);
        jl_buf_cleanup(&b);
    }
}
END_TEST

START_TEST(base64_input_is_read_with_or_without_padding)
{
    static const struct {
        const char *json;
        const char *want;
    } cases[] = {
        {"{\"payload\":\"QUI=\"}", "AB"},       {"{\"payload\":\"QUI\"}", "AB"},
        {"{\"payload\":\"QQ==\"}", "A"},        {"{\"payload\":\"QQ\"}", "A"},
        {"{\"payload\":\"QUJD\"}", "ABC"},      {"{\"payload\":\"QUJDRA\"}", "ABCD"},
        {"{\"payload\":\"+/8=\"}", "\xFB\xFF"}, {"{\"payload\":\"\"}", ""},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        Jetledger__Envelope *e =
            (Jetledger__Envelope *)parse_ok(&jetledger__envelope__descriptor, cases[i].json);
        size_t n = strlen(cases[i].want);
        ck_assert_uint_eq(e->payload.len, n);
        if (n > 0)
            ck_assert_mem_eq(e->payload.data, cases[i].want, n);
        protobuf_c_message_free_unpacked(&e->base, NULL);
    }
}
END_TEST

START_TEST(invalid_base64_is_invalid)
{
    static const char *const cases[] = {
        "{\"payload\":\"QUI*\"}",  "{\"payload\":\"Q\"}",       "{\"payload\":\"QQ=\"}",
        "{\"payload\":\"QUJD=\"}", "{\"payload\":\"Q===\"}",    "{\"payload\":\"-_8\"}",
        "{\"payload\":\"QU I=\"}", "{\"payload\":\"=QUI\"}",    "{\"payload\":\"QQ==QQ==\"}",
        "{\"payload\":\"====\"}",  "{\"payload\":\"QUJD\\n\"}",
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        parse_fails(&jetledger__envelope__descriptor, cases[i], JL_ERR_INVALID,
                    "field 'payload': invalid base64");
}
END_TEST

START_TEST(bytes_with_every_byte_value_round_trip)
{
    uint8_t data[256];
    for (int i = 0; i < 256; i++)
        data[i] = (uint8_t)(255 - i);
    Jetledger__Reply r = JETLEDGER__REPLY__INIT;
    r.result.data = data;
    for (size_t n = 0; n <= 256; n += 1) {
        r.result.len = n;
        assert_round_trip(&r.base);
    }
}
END_TEST

/* ---- limits ---- */

START_TEST(input_over_the_size_limit_is_too_large)
{
    size_t len = JL_JSON_MAX_INPUT + 1;
    char *json = malloc(len);
    ck_assert_ptr_nonnull(json);
    memset(json, ' ', len);
    json[0] = '{';
    json[1] = '}';
    parse_fails_n(&orders__add_item__descriptor, json, len, JL_ERR_TOO_LARGE, "over the limit");
    free(json);
}
END_TEST

START_TEST(input_at_the_size_limit_is_accepted)
{
    size_t len = JL_JSON_MAX_INPUT;
    char *json = malloc(len);
    ck_assert_ptr_nonnull(json);
    memcpy(json, "{\"sku\":\"", 8);
    memset(json + 8, 'a', len - 10);
    memcpy(json + len - 2, "\"}", 2);
    ProtobufCMessage *m = NULL;
    char err[128] = "";
    ck_assert_int_eq(jl_json_to_pb(&m, &orders__add_item__descriptor, json, len, err, sizeof(err)),
                     JL_OK);
    ck_assert_uint_eq(strlen(((Orders__AddItem *)m)->sku), len - 10);
    protobuf_c_message_free_unpacked(m, NULL);
    free(json);
}
END_TEST

/* {"child":{"child":...innermost...}} with `levels` objects, the innermost one given. */
static char *nested_nodes(int levels, const char *innermost)
{
    static const char open[] = "{\"child\":";
    size_t n = (size_t)(levels - 1) * (sizeof(open) - 1) + strlen(innermost) + (size_t)levels;
    char *s = malloc(n);
    char *o = s;
    ck_assert_ptr_nonnull(s);
    for (int i = 1; i < levels; i++) {
        memcpy(o, open, sizeof(open) - 1);
        o += sizeof(open) - 1;
    }
    memcpy(o, innermost, strlen(innermost));
    o += strlen(innermost);
    for (int i = 1; i < levels; i++)
        *o++ = '}';
    *o = '\0';
    return s;
}

START_TEST(nesting_up_to_the_depth_limit_is_accepted)
{
    char *json = nested_nodes(JL_JSON_MAX_DEPTH, "{}");
    Node *n = (Node *)parse_ok(&node_desc, json);
    int levels = 1;
    for (const Node *p = n; p->child != NULL; p = p->child)
        levels++;
    ck_assert_int_eq(levels, JL_JSON_MAX_DEPTH);
    protobuf_c_message_free_unpacked(&n->base, NULL);
    free(json);

    /* An array is a level too: 30 objects, then an array holding a 32nd-level object. */
    json = nested_nodes(JL_JSON_MAX_DEPTH - 2, "{\"kids\":[{}]}");
    n = (Node *)parse_ok(&node_desc, json);
    protobuf_c_message_free_unpacked(&n->base, NULL);
    free(json);
}
END_TEST

START_TEST(nesting_past_the_depth_limit_is_too_large)
{
    char *json = nested_nodes(JL_JSON_MAX_DEPTH + 1, "{}");
    parse_fails(&node_desc, json, JL_ERR_TOO_LARGE, "nesting deeper than 32 levels");
    free(json);
    json = nested_nodes(JL_JSON_MAX_DEPTH - 1, "{\"kids\":[{}]}");
    parse_fails(&node_desc, json, JL_ERR_TOO_LARGE, "nesting deeper than 32 levels");
    free(json);
    /* The array itself at level 33 is refused before its contents are looked at. */
    json = nested_nodes(JL_JSON_MAX_DEPTH, "{\"kids\":[]}");
    parse_fails(&node_desc, json, JL_ERR_TOO_LARGE, "nesting deeper than 32 levels");
    free(json);
}
END_TEST

START_TEST(output_refuses_nesting_the_parser_would_refuse)
{
    Node nodes[JL_JSON_MAX_DEPTH + 1];
    for (int i = 0; i <= JL_JSON_MAX_DEPTH; i++) {
        node_init(&nodes[i].base);
        nodes[i].child = i < JL_JSON_MAX_DEPTH ? &nodes[i + 1] : NULL;
    }
    jl_buf b;
    jl_buf_init(&b, 1 << 16);
    ck_assert_int_eq(jl_buf_adds(&b, "kept"), JL_OK);
    /* 33 levels: refused, and the buffer is as it was. */
    ck_assert_int_eq(jl_pb_to_json(&b, &nodes[0].base), JL_ERR_TOO_LARGE);
    ck_assert_str_eq(jl_buf_str(&b), "kept");
    /* 32 levels: written, and read back. */
    jl_buf_reset(&b);
    ck_assert_int_eq(jl_pb_to_json(&b, &nodes[1].base), JL_OK);
    ProtobufCMessage *back = parse_ok(&node_desc, jl_buf_str(&b));
    assert_same_pack(&nodes[1].base, back);
    protobuf_c_message_free_unpacked(back, NULL);

    /* A repeated field is a level: 31 objects, an array, then the 33rd-level object. */
    Node *kid = &nodes[JL_JSON_MAX_DEPTH];
    nodes[JL_JSON_MAX_DEPTH - 2].child = NULL;
    nodes[JL_JSON_MAX_DEPTH - 2].n_kids = 1;
    nodes[JL_JSON_MAX_DEPTH - 2].kids = &kid;
    jl_buf_reset(&b);
    ck_assert_int_eq(jl_pb_to_json(&b, &nodes[0].base), JL_ERR_TOO_LARGE);
    ck_assert_str_eq(jl_buf_str(&b), "");
    ck_assert_int_eq(jl_pb_to_json(&b, &nodes[1].base), JL_OK);
    jl_buf_cleanup(&b);
}
END_TEST

START_TEST(output_over_the_buffer_cap_fails_and_leaves_the_buffer_unchanged)
{
    Orders__AddItem m = ORDERS__ADD_ITEM__INIT;
    m.order_id = "a-rather-long-order-id";
    jl_buf b;
    jl_buf_init(&b, 16);
    ck_assert_int_eq(jl_buf_adds(&b, "ab"), JL_OK);
    ck_assert_int_eq(jl_pb_to_json(&b, &m.base), JL_ERR_TOO_LARGE);
    ck_assert_str_eq(jl_buf_str(&b), "ab");
    ck_assert_uint_eq(b.len, 2);
    jl_buf_cleanup(&b);
}
END_TEST

/* ---- every field kind (hand-written descriptors) ---- */

START_TEST(every_field_kind_round_trips)
{
    static const uint8_t by[] = {0, 1, 2};
    static const uint8_t ff[] = {0xff};
    int32_t r_i32[] = {1, -2, 3};
    char *r_s[] = {"a", ""};
    ProtobufCBinaryData r_by[] = {{0, NULL}, {1, (uint8_t *)ff}};
    Inner in, e0, e1;
    Inner *r_inner[] = {&e0, &e1};
    int r_color[] = {COLOR_RED, COLOR_UNSET, 7};
    uint64_t r_u64[] = {UINT64_MAX, 0};
    double r_db[] = {0.5, -0.0};
    protobuf_c_boolean r_b[] = {1, 0};
    Kinds k;

    inner_init(&in.base);
    inner_init(&e0.base);
    inner_init(&e1.base);
    in.name = "in";
    in.n = 1;
    e1.name = "x";
    kinds_init(&k.base);
    k.i32 = -5;
    k.s32 = -6;
    k.sf32 = -7;
    k.u32 = 8;
    k.f32 = 9;
    k.i64 = -10;
    k.s64 = -11;
    k.sf64 = -12;
    k.u64 = 13;
    k.f64 = 14;
    k.fl = 1.5f;
    k.db = -2.25;
    k.b = 1;
    k.color = COLOR_GREEN;
    k.s = "str";
    k.by.len = sizeof(by);
    k.by.data = (uint8_t *)by;
    k.inner = &in;
    k.n_r_i32 = 3;
    k.r_i32 = r_i32;
    k.n_r_s = 2;
    k.r_s = r_s;
    k.n_r_by = 2;
    k.r_by = r_by;
    k.n_r_inner = 2;
    k.r_inner = r_inner;
    k.n_r_color = 3;
    k.r_color = r_color;
    k.n_r_u64 = 2;
    k.r_u64 = r_u64;
    k.n_r_db = 2;
    k.r_db = r_db;
    k.n_r_b = 2;
    k.r_b = r_b;
    k.choice_case = 26;
    k.c_s = "one";
    assert_json(&k.base,
                "{\"i32\":-5,\"s32\":-6,\"sf32\":-7,\"u32\":8,\"f32\":9,\"i64\":-10,\"s64\":-11,"
                "\"sf64\":-12,\"u64\":13,\"f64\":14,\"fl\":1.5,\"db\":-2.25,\"b\":true,"
                "\"color\":\"GREEN\",\"s\":\"str\",\"by\":\"AAEC\",\"inner\":{\"name\":\"in\","
                "\"n\":1},\"r_i32\":[1,-2,3],\"r_s\":[\"a\",\"\"],\"r_by\":[\"\",\"/w==\"],"
                "\"r_inner\":[{},{\"name\":\"x\"}],\"r_color\":[\"RED\",\"COLOR_UNSET\",7],"
                "\"r_u64\":[18446744073709551615,0],\"r_db\":[0.5,-0],\"r_b\":[true,false],"
                "\"c_s\":\"one\"}");
    assert_round_trip(&k.base);

    Kinds *back = (Kinds *)parse_ok(&kinds_desc, "{\"r_db\":[-0],\"r_color\":[\"GREEN\",2,-3]}");
    ck_assert_uint_eq(back->n_r_db, 1);
    ck_assert(signbit(back->r_db[0]));
    ck_assert_uint_eq(back->n_r_color, 3);
    ck_assert_int_eq(back->r_color[0], COLOR_GREEN);
    ck_assert_int_eq(back->r_color[1], COLOR_GREEN);
    ck_assert_int_eq(back->r_color[2], -3);
    protobuf_c_message_free_unpacked(&back->base, NULL);
}
END_TEST

START_TEST(extreme_values_of_every_numeric_kind_round_trip)
{
    Kinds k;
    kinds_init(&k.base);
    k.i32 = INT32_MIN;
    k.s32 = INT32_MIN;
    k.sf32 = INT32_MAX;
    k.u32 = UINT32_MAX;
    k.f32 = UINT32_MAX;
    k.i64 = INT64_MIN;
    k.s64 = INT64_MIN;
    k.sf64 = INT64_MAX;
    k.u64 = UINT64_MAX;
    k.f64 = UINT64_MAX;
    k.fl = FLT_MAX;
    k.db = DBL_MAX;
    assert_json(&k.base, "{\"i32\":-2147483648,\"s32\":-2147483648,\"sf32\":2147483647,"
                         "\"u32\":4294967295,\"f32\":4294967295,\"i64\":-9223372036854775808,"
                         "\"s64\":-9223372036854775808,\"sf64\":9223372036854775807,"
                         "\"u64\":18446744073709551615,\"f64\":18446744073709551615,"
                         "\"fl\":3.40282347e+38,\"db\":1.7976931348623157e+308}");
    assert_round_trip(&k.base);

    k.fl = FLT_TRUE_MIN;
    k.db = DBL_TRUE_MIN;
    assert_round_trip(&k.base);
    k.fl = -FLT_MIN;
    k.db = 1e300;
    assert_round_trip(&k.base);
}
END_TEST

START_TEST(floating_point_output_reads_back_exactly)
{
    Kinds k;
    kinds_init(&k.base);
    k.fl = 0.1f;
    k.db = 0.1;
    assert_json(&k.base, "{\"fl\":0.100000001,\"db\":0.10000000000000001}");
    Kinds *back = (Kinds *)parse_ok(&kinds_desc, "{\"fl\":0.100000001,\"db\":0.10000000000000001}");
    ck_assert(back->fl == 0.1f);
    ck_assert(back->db == 0.1);
    protobuf_c_message_free_unpacked(&back->base, NULL);

    /* Integers are accepted for floating fields, and exponents. */
    back = (Kinds *)parse_ok(&kinds_desc, "{\"fl\":3,\"db\":-2.5E-3}");
    ck_assert(back->fl == 3.0f);
    ck_assert(back->db == -2.5e-3);
    protobuf_c_message_free_unpacked(&back->base, NULL);
}
END_TEST

START_TEST(non_finite_floats_are_written_as_strings_and_read_back)
{
    double r_db[] = {INFINITY, -INFINITY, NAN};
    Kinds k;
    kinds_init(&k.base);
    k.fl = NAN;
    k.db = -INFINITY;
    k.n_r_db = 3;
    k.r_db = r_db;
    assert_json(&k.base, "{\"fl\":\"NaN\",\"db\":\"-Infinity\","
                         "\"r_db\":[\"Infinity\",\"-Infinity\",\"NaN\"]}");

    Kinds *back = (Kinds *)parse_ok(
        &kinds_desc, "{\"fl\":\"Infinity\",\"db\":\"NaN\",\"r_db\":[\"-Infinity\",1]}");
    ck_assert(isinf(back->fl) && back->fl > 0);
    ck_assert(isnan(back->db));
    ck_assert(isinf(back->r_db[0]) && back->r_db[0] < 0);
    ck_assert(back->r_db[1] == 1.0);
    protobuf_c_message_free_unpacked(&back->base, NULL);
}
END_TEST

START_TEST(floating_values_out_of_range_are_invalid)
{
    parse_error_is(&kinds_desc, "{\"fl\":1e39}", JL_ERR_INVALID,
                   "field 'fl': 1e39 is out of range for float");
    parse_fails(&kinds_desc, "{\"db\":-1e309}", JL_ERR_INVALID,
                "-1e309 is out of range for double");
    parse_fails(&kinds_desc, "{\"fl\":\"nan\"}", JL_ERR_INVALID, "expected a number, got \"nan\"");
    parse_fails(&kinds_desc, "{\"db\":\"1.5\"}", JL_ERR_INVALID, "expected a number");
    parse_fails(&kinds_desc, "{\"db\":true}", JL_ERR_DECODE, "expected a number, got a boolean");

    /* Underflow is not an error: the nearest representable value is. */
    Kinds *back = (Kinds *)parse_ok(&kinds_desc, "{\"fl\":1e-50,\"db\":1e-400}");
    ck_assert(back->fl == 0.0f);
    ck_assert(back->db == 0.0);
    protobuf_c_message_free_unpacked(&back->base, NULL);
}
END_TEST

START_TEST(long_number_tokens_are_parsed)
{
    char json[600];
    /* 0.000...0015 with 300 zeros: longer than any fixed-size token buffer. */
    strcpy(json, "{\"db\":0.");
    size_t n = strlen(json);
    memset(json + n, '0', 300);
    strcpy(json + n + 300, "15}");
    Kinds *back = (Kinds *)parse_ok(&kinds_desc, json);
    ck_assert(back->db == 1.5e-301);
    protobuf_c_message_free_unpacked(&back->base, NULL);

    strcpy(json, "{\"db\":1");
    n = strlen(json);
    memset(json + n, '0', 300);
    strcpy(json + n + 300, "}");
    back = (Kinds *)parse_ok(&kinds_desc, json);
    ck_assert(back->db == 1e300);
    protobuf_c_message_free_unpacked(&back->base, NULL);
}
END_TEST

START_TEST(oneof_member_sets_its_case_even_at_default_value)
{
    Kinds *k = (Kinds *)parse_ok(&kinds_desc, "{\"c_i64\":\"0\"}");
    ck_assert_uint_eq(k->choice_case, 27);
    ck_assert(k->c_i64 == 0);
    assert_json(&k->base, "{\"c_i64\":0}");
    protobuf_c_message_free_unpacked(&k->base, NULL);

    k = (Kinds *)parse_ok(&kinds_desc, "{\"c_inner\":{\"n\":4}}");
    ck_assert_uint_eq(k->choice_case, 28);
    ck_assert_int_eq(k->c_inner->n, 4);
    assert_json(&k->base, "{\"c_inner\":{\"n\":4}}");
    assert_round_trip(&k->base);
    protobuf_c_message_free_unpacked(&k->base, NULL);

    k = (Kinds *)parse_ok(&kinds_desc, "{\"c_s\":\"\"}");
    ck_assert_uint_eq(k->choice_case, 26);
    ck_assert_str_eq(k->c_s, "");
    assert_json(&k->base, "{\"c_s\":\"\"}");
    protobuf_c_message_free_unpacked(&k->base, NULL);

    /* null leaves the oneof unset, so another member may follow. */
    k = (Kinds *)parse_ok(&kinds_desc, "{\"c_s\":null,\"c_i64\":5}");
    ck_assert_uint_eq(k->choice_case, 27);
    ck_assert(k->c_i64 == 5);
    protobuf_c_message_free_unpacked(&k->base, NULL);
}
END_TEST

START_TEST(second_member_of_a_oneof_is_invalid)
{
    parse_error_is(&kinds_desc, "{\"c_s\":\"x\",\"c_i64\":1}", JL_ERR_INVALID,
                   "field 'c_i64': another member of its oneof ('c_s') is already set");
    parse_fails(&kinds_desc, "{\"c_inner\":{\"name\":\"n\"},\"c_s\":\"x\"}", JL_ERR_INVALID,
                "('c_inner') is already set");
}
END_TEST

START_TEST(optional_fields_are_written_when_their_has_flag_is_set)
{
    Opt o;
    opt_init(&o.base);
    /* Unset optionals, and def_s still pointing at its default, are not written. */
    assert_json(&o.base, "{\"req\":0}");
    o.has_opt_i32 = 1;
    o.has_opt_by = 1;
    o.has_opt_b = 1;
    o.opt_b = 0;
    assert_json(&o.base, "{\"opt_i32\":0,\"opt_by\":\"\",\"opt_b\":false,\"req\":0}");
    assert_round_trip(&o.base);

    Inner in;
    inner_init(&in.base);
    o.opt_s = "";
    o.def_s = "hi";
    o.opt_inner = &in;
    o.req = -1;
    assert_json(&o.base, "{\"opt_i32\":0,\"opt_s\":\"\",\"opt_by\":\"\",\"opt_b\":false,"
                         "\"def_s\":\"hi\",\"req\":-1,\"opt_inner\":{}}");
    assert_round_trip(&o.base);
}
END_TEST

START_TEST(optional_fields_read_from_json_set_their_has_flag)
{
    Opt *o = (Opt *)parse_ok(&opt_desc, "{\"req\":\"7\"}");
    ck_assert(!o->has_opt_i32 && !o->has_opt_by && !o->has_opt_b);
    ck_assert_int_eq(o->opt_b, 1);
    ck_assert_ptr_eq(o->def_s, opt_def_s_default);
    ck_assert_ptr_null(o->opt_s);
    ck_assert(o->req == 7);
    protobuf_c_message_free_unpacked(&o->base, NULL);

    o = (Opt *)parse_ok(&opt_desc, "{\"opt_i32\":0,\"opt_b\":false,\"opt_by\":\"\",\"opt_s\":\"s\","
                                   "\"def_s\":\"d\",\"req\":1,\"opt_inner\":{\"name\":\"i\"}}");
    ck_assert(o->has_opt_i32 && o->opt_i32 == 0);
    ck_assert(o->has_opt_b && !o->opt_b);
    ck_assert(o->has_opt_by && o->opt_by.len == 0);
    ck_assert_str_eq(o->opt_s, "s");
    ck_assert_str_eq(o->def_s, "d");
    ck_assert_str_eq(o->opt_inner->name, "i");
    assert_round_trip(&o->base);
    protobuf_c_message_free_unpacked(&o->base, NULL);
}
END_TEST

START_TEST(missing_required_field_is_invalid)
{
    parse_error_is(&opt_desc, "{}", JL_ERR_INVALID, "missing required field 'req'");
    parse_fails(&opt_desc, "{\"req\":null}", JL_ERR_INVALID, "missing required field 'req'");
}
END_TEST

/* ---- error reporting and ownership ---- */

START_TEST(error_text_is_optional_and_bounded_by_errlen)
{
    ProtobufCMessage *m = NULL;
    char err[8];
    memset(err, 'x', sizeof(err));
    ck_assert_int_eq(
        jl_json_to_pb(&m, &orders__add_item__descriptor, "{\"qty\":1}", 9, err, sizeof(err)),
        JL_ERR_INVALID);
    ck_assert_str_eq(err, "unknown");
    ck_assert_int_eq(jl_json_to_pb(&m, &orders__add_item__descriptor, "{\"qty\":1}", 9, NULL, 0),
                     JL_ERR_INVALID);
    ck_assert_int_eq(jl_json_to_pb(&m, &orders__add_item__descriptor, "{\"qty\":1}", 9, err, 0),
                     JL_ERR_INVALID);
    ck_assert_ptr_null(m);
}
END_TEST

START_TEST(long_unknown_keys_are_shortened_in_the_error)
{
    char json[300];
    strcpy(json, "{\"");
    memset(json + 2, 'k', 200);
    strcpy(json + 202, "\":1}");
    char err[512] = "";
    ProtobufCMessage *m = NULL;
    ck_assert_int_eq(
        jl_json_to_pb(&m, &orders__add_item__descriptor, json, strlen(json), err, sizeof(err)),
        JL_ERR_INVALID);
    ck_assert_msg(strlen(err) < 120, "error too long: %s", err);
    ck_assert_ptr_nonnull(strstr(err, "kkkk...' in orders.AddItem"));
}
END_TEST

/* An error message is one line of valid UTF-8 whatever the value it quotes: a value with line
 * breaks or terminal escapes must not forge log or terminal lines. */
static void error_text_is_clean(const char *json)
{
    char err[256] = "";
    ProtobufCMessage *m = NULL;
    ck_assert_int_ne(jl_json_to_pb(&m, &kinds_desc, json, strlen(json), err, sizeof(err)), JL_OK);
    ck_assert_ptr_null(m);
    size_t n = strlen(err);
    ck_assert_uint_gt(n, 0);
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)err[i];
        ck_assert_msg(c >= 0x20 && c != 0x7f, "control byte 0x%02x in the error for %s: %s", c,
                      json, err);
        size_t k = c < 0x80 ? 1 : c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC2 ? 2 : 0;
        ck_assert_msg(k > 0 && i + k <= n, "invalid UTF-8 at byte %zu of the error for %s", i,
                      json);
        for (size_t j = 1; j < k; j++)
            ck_assert_msg(((unsigned char)err[i + j] & 0xC0) == 0x80, "invalid UTF-8 at byte %zu",
                          i + j);
        i += k;
    }
}

START_TEST(quoted_values_in_errors_are_one_clean_line)
{
    error_text_is_clean("{\"color\":\"\\n\\u001b[31mRED\"}");
    error_text_is_clean("{\"i64\":\"\\r\\nforged line\"}");
    error_text_is_clean("{\"db\":\"\\u001b]0;title\\u0007\"}");
    /* 39 bytes and a two-byte character: a cut at 40 bytes would split it. */
    error_text_is_clean("{\"color\":\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\xc3\xa9\"}");
}
END_TEST

START_TEST(failures_after_allocations_free_the_partial_message)
{
    /* Each case fails after strings, bytes, arrays or sub-messages were allocated: run under
     * LeakSanitizer, any of them leaking fails this test. */
    parse_fails(&jetledger__commit__descriptor,
                "{\"command_id\":\"c\",\"events\":[{\"event_id\":\"a\",\"payload\":\"QUJD\"},"
                "{\"event_id\":\"b\",\"schema_version\":-1}]}",
                JL_ERR_INVALID, "field 'events[1].schema_version'");
    parse_fails(&orders__list_orders_result__descriptor,
                "{\"orders\":[{\"order_id\":\"x\"},{\"order_id\":\"y\"}],\"next_cursor\":5}",
                JL_ERR_DECODE, "field 'next_cursor'");
    parse_fails(&kinds_desc, "{\"r_s\":[\"a\",\"b\",\"c\",\"d\",\"e\",\"f\",\"g\",\"h\",\"i\",5]}",
                JL_ERR_DECODE, "field 'r_s[9]'");
    parse_fails(&kinds_desc, "{\"r_by\":[\"QQ\",\"QUI=\",\"*\"]}", JL_ERR_INVALID,
                "field 'r_by[2]'");
    parse_fails(&kinds_desc, "{\"s\":\"x\",\"inner\":{\"name\":\"y\",\"n\":\"bad\"}}",
                JL_ERR_DECODE, "field 'inner.n'");
    parse_fails(&kinds_desc, "{\"r_inner\":[{\"name\":\"a\"},{\"name\":\"b\",\"zzz\":1}]}",
                JL_ERR_INVALID, "unknown field 'r_inner[1].zzz'");
    parse_fails(&kinds_desc, "{\"c_inner\":{\"name\":\"a\"},\"by\":\"QUJD\",\"s\":\"s\"} x",
                JL_ERR_DECODE, "unexpected data");
    parse_fails(&opt_desc, "{\"opt_s\":\"a\",\"opt_inner\":{\"name\":\"b\"}}", JL_ERR_INVALID,
                "missing required field");
}
END_TEST

int main(void)
{
    Suite *s = suite_create("json");

    TCase *tc = tcase_create("output_and_round_trips");
    tcase_add_test(tc, add_item_writes_compact_json_in_field_order);
    tcase_add_test(tc, proto3_defaults_are_omitted_from_output);
    tcase_add_test(tc, repeated_messages_round_trip);
    tcase_add_test(tc, nested_message_is_kept_even_when_empty);
    tcase_add_test(tc, commit_with_envelopes_and_payloads_round_trips);
    tcase_add_test(tc, enum_is_written_by_name_and_read_back);
    tcase_add_test(tc, enum_accepts_numbers_and_keeps_unknown_ones);
    tcase_add_test(tc, bad_enum_values_are_rejected);
    suite_add_tcase(s, tc);

    tc = tcase_create("integers");
    tcase_add_test(tc, uint64_max_is_exact_both_ways);
    tcase_add_test(tc, int64_extremes_are_exact_both_ways);
    tcase_add_test(tc, int64_accepts_only_decimal_integer_strings);
    tcase_add_test(tc, out_of_range_64bit_values_are_invalid);
    tcase_add_test(tc, int32_bounds_are_accepted_and_overflow_is_invalid);
    tcase_add_test(tc, uint32_rejects_negative_and_overflow);
    tcase_add_test(tc, integer_fields_reject_fractions_and_exponents);
    tcase_add_test(tc, int32_field_rejects_string);
    suite_add_tcase(s, tc);

    tc = tcase_create("structure");
    tcase_add_test(tc, values_of_the_wrong_kind_are_decode_errors);
    tcase_add_test(tc, error_names_the_nested_field_path);
    tcase_add_test(tc, unknown_fields_are_invalid_and_named);
    tcase_add_test(tc, an_error_cut_to_a_small_buffer_stays_utf8);
    tcase_add_test(tc, duplicate_keys_are_invalid);
    tcase_add_test(tc, null_leaves_fields_at_their_default);
    tcase_add_test(tc, null_array_elements_are_rejected);
    tcase_add_test(tc, empty_array_gives_an_empty_repeated_field);
    tcase_add_test(tc, whitespace_between_tokens_is_accepted);
    tcase_add_loop_test(tc, malformed_json_is_a_decode_error, 0,
                        (int)(sizeof(malformed) / sizeof(malformed[0])));
    tcase_add_test(tc, syntax_errors_give_the_byte_offset);
    tcase_add_test(tc, trailing_garbage_is_a_decode_error);
    suite_add_tcase(s, tc);

    tc = tcase_create("strings");
    tcase_add_test(tc, string_escapes_are_decoded);
    tcase_add_test(tc, surrogate_pairs_decode_to_four_byte_utf8);
    tcase_add_test(tc, unpaired_surrogates_are_rejected);
    tcase_add_test(tc, raw_utf8_is_kept_and_invalid_utf8_is_rejected);
    tcase_add_test(tc, control_characters_must_be_escaped_in_input);
    tcase_add_test(tc, nul_in_a_string_value_is_invalid);
    tcase_add_test(tc, output_escapes_quotes_backslashes_and_controls);
    tcase_add_test(tc, output_replaces_each_invalid_utf8_byte_with_fffd);
    tcase_add_test(tc, string_over_the_buffer_cap_fails_and_leaves_the_buffer_unchanged);
    tcase_add_test(tc, output_keeps_valid_multibyte_utf8);
    tcase_add_test(tc, every_ascii_character_round_trips_through_a_string_field);
    suite_add_tcase(s, tc);

    tc = tcase_create("base64");
    tcase_add_test(tc, base64_output_is_padded);
    tcase_add_test(tc, base64_input_is_read_with_or_without_padding);
    tcase_add_test(tc, invalid_base64_is_invalid);
    tcase_add_test(tc, bytes_with_every_byte_value_round_trip);
    suite_add_tcase(s, tc);

    tc = tcase_create("limits");
    tcase_add_test(tc, input_over_the_size_limit_is_too_large);
    tcase_add_test(tc, input_at_the_size_limit_is_accepted);
    tcase_add_test(tc, nesting_up_to_the_depth_limit_is_accepted);
    tcase_add_test(tc, nesting_past_the_depth_limit_is_too_large);
    tcase_add_test(tc, output_refuses_nesting_the_parser_would_refuse);
    tcase_add_test(tc, output_over_the_buffer_cap_fails_and_leaves_the_buffer_unchanged);
    suite_add_tcase(s, tc);

    tc = tcase_create("field_kinds");
    tcase_add_test(tc, every_field_kind_round_trips);
    tcase_add_test(tc, extreme_values_of_every_numeric_kind_round_trip);
    tcase_add_test(tc, floating_point_output_reads_back_exactly);
    tcase_add_test(tc, non_finite_floats_are_written_as_strings_and_read_back);
    tcase_add_test(tc, floating_values_out_of_range_are_invalid);
    tcase_add_test(tc, long_number_tokens_are_parsed);
    tcase_add_test(tc, oneof_member_sets_its_case_even_at_default_value);
    tcase_add_test(tc, second_member_of_a_oneof_is_invalid);
    tcase_add_test(tc, optional_fields_are_written_when_their_has_flag_is_set);
    tcase_add_test(tc, optional_fields_read_from_json_set_their_has_flag);
    tcase_add_test(tc, missing_required_field_is_invalid);
    suite_add_tcase(s, tc);

    tc = tcase_create("errors_and_ownership");
    tcase_add_test(tc, error_text_is_optional_and_bounded_by_errlen);
    tcase_add_test(tc, long_unknown_keys_are_shortened_in_the_error);
    tcase_add_test(tc, quoted_values_in_errors_are_one_clean_line);
    tcase_add_test(tc, failures_after_allocations_free_the_partial_message);
    suite_add_tcase(s, tc);

    return jl_ck_run(s);
}
