/*
 * The inventory_levels projection (projection.c) without NATS: apply against a scratch SQLite
 * file, then the queries. Bad queries get INVALID with their reason; events the model cannot
 * use are refused (the runtime parks them), never applied half.
 */
#include "projection.h"

#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "inventory/inventory.pb-c.h"
#include "jetledger/db.h"
#include "unit.h"

static char dir[256];
static jl_db *db;

static jl_status apply(const char *type, const ProtobufCMessage *payload, char *err, size_t n)
{
    char id[JL_UUID_LEN + 1];
    jl_uuid_new(id);
    jl_event ev = {.event_id = id,
                   .event_type = type,
                   .aggregate_type = "warehouse",
                   .aggregate_id = id,
                   .aggregate_version = 1,
                   .payload = payload};
    err[0] = 0;
    return inventory_levels_projector.apply(db, &ev, err, n);
}

static void register_sku(const char *sku, int64_t on_hand)
{
    char err[256];
    Inventory__ProductRegistered reg = INVENTORY__PRODUCT_REGISTERED__INIT;
    reg.sku = (char *)sku;
    reg.name = "thing";
    ck_assert_msg(apply("inventory.ProductRegistered", &reg.base, err, sizeof(err)) == JL_OK, "%s",
                  err);
    Inventory__Restocked re = INVENTORY__RESTOCKED__INIT;
    re.sku = (char *)sku;
    re.quantity = on_hand;
    ck_assert_msg(apply("inventory.Restocked", &re.base, err, sizeof(err)) == JL_OK, "%s", err);
}

static void db_setup(void)
{
    jl_ck_scratch_dir(dir, sizeof(dir), "test_inventory_levels");
    db = jl_ck_scratch_db(dir, "i.db", inventory_levels_projector.schema_sql);
    register_sku("apple", 1);
    register_sku("kiwi", 5);
    register_sku("pear", 20);
}

static void db_teardown(void)
{
    jl_db_close(db);
    db = NULL;
    jl_ck_scratch_remove(dir);
}

static jl_status ask(const ProtobufCMessage *req, jl_reply *r)
{
    for (size_t i = 0; i < inventory_levels_projector.n_queries; i++) {
        const jl_query_def *q = &inventory_levels_projector.queries[i];
        if (q->request == req->descriptor) {
            jl_reply_reset(r);
            ck_assert_int_eq(jl_db_begin(db, false), JL_OK);
            jl_status s = q->handle(db, req, r);
            jl_db_rollback(db);
            return s;
        }
    }
    ck_abort_msg("no query %s", req->descriptor->name);
    return JL_ERR_INTERNAL;
}

static void expect_invalid(const ProtobufCMessage *req, const char *why)
{
    jl_reply r;
    jl_reply_init(&r);
    ck_assert_int_eq(ask(req, &r), JL_OK);
    ck_assert_msg(r.code == JL_CODE_INVALID && strstr(r.message, why) != NULL,
                  "%s: %s '%s', want '%s'", req->descriptor->name, jl_code_str(r.code), r.message,
                  why);
    jl_reply_cleanup(&r);
}

START_TEST(get_stock_answers_a_sku_and_refuses_bad_ones)
{
    jl_reply r;
    jl_reply_init(&r);
    Inventory__GetStock q = INVENTORY__GET_STOCK__INIT;
    q.sku = "kiwi";
    ck_assert_int_eq(ask(&q.base, &r), JL_OK);
    ck_assert_msg(r.code == JL_CODE_OK, "%s", r.message);
    Inventory__GetStockResult *res =
        inventory__get_stock_result__unpack(NULL, r.result.len, r.result.data);
    ck_assert_ptr_nonnull(res);
    ck_assert_str_eq(res->level->sku, "kiwi");
    ck_assert_int_eq(res->level->on_hand, 5);
    ck_assert_int_eq(res->level->available, 5);
    inventory__get_stock_result__free_unpacked(res, NULL);

    q.sku = "plum";
    ck_assert_int_eq(ask(&q.base, &r), JL_OK);
    ck_assert_msg(r.code == JL_CODE_NOT_FOUND && strstr(r.message, "sku plum not found"), "%s",
                  r.message);
    jl_reply_cleanup(&r);

    q.sku = "";
    expect_invalid(&q.base, "sku must not be empty");
    char long_sku[INVENTORY_LEVELS_MAX_SKU + 2];
    memset(long_sku, 's', sizeof(long_sku) - 1);
    long_sku[sizeof(long_sku) - 1] = 0;
    q.sku = long_sku;
    expect_invalid(&q.base, "sku is longer than 64 bytes");
}
END_TEST

/* ListLowStock of at most @p limit after @p cursor (0 and "": the defaults), answered ok; free
 * it with inventory__list_low_stock_result__free_unpacked(). */
static Inventory__ListLowStockResult *list_low(uint32_t limit, const char *cursor, jl_reply *r)
{
    Inventory__ListLowStock q = INVENTORY__LIST_LOW_STOCK__INIT;
    q.limit = limit;
    q.cursor = (char *)cursor;
    ck_assert_int_eq(ask(&q.base, r), JL_OK);
    ck_assert_msg(r->code == JL_CODE_OK, "%s", r->message);
    Inventory__ListLowStockResult *res =
        inventory__list_low_stock_result__unpack(NULL, r->result.len, r->result.data);
    ck_assert_ptr_nonnull(res);
    return res;
}

START_TEST(list_low_stock_pages_and_refuses_bad_arguments)
{
    /* Below the default threshold (10): apple (1), then kiwi (5); a page of one at a time. */
    const char *want[] = {"apple", "kiwi"};
    char cursor[128] = "";
    jl_reply r;
    jl_reply_init(&r);
    for (int page = 0; page < 2; page++) {
        Inventory__ListLowStockResult *res = list_low(1, cursor, &r);
        ck_assert_uint_eq(res->n_levels, 1);
        ck_assert_str_eq(res->levels[0]->sku, want[page]);
        ck_assert_msg(page == 1 || res->next_cursor[0] != 0, "no next page after %s", want[page]);
        snprintf(cursor, sizeof(cursor), "%s", res->next_cursor);
        inventory__list_low_stock_result__free_unpacked(res, NULL);
    }
    ck_assert_msg(cursor[0] == 0, "a next page after the last one: %s", cursor);
    /* One page of the default size: both, and pear (20) is not low. */
    Inventory__ListLowStockResult *res = list_low(0, "", &r);
    ck_assert_uint_eq(res->n_levels, 2);
    ck_assert_str_eq(res->levels[0]->sku, "apple");
    ck_assert_str_eq(res->levels[1]->sku, "kiwi");
    ck_assert_str_eq(res->next_cursor, "");
    inventory__list_low_stock_result__free_unpacked(res, NULL);
    jl_reply_cleanup(&r);

    Inventory__ListLowStock q = INVENTORY__LIST_LOW_STOCK__INIT;
    q.threshold = -1;
    expect_invalid(&q.base, "threshold -1 is negative");
    q.threshold = 0;
    q.limit = INVENTORY_LEVELS_MAX_LIMIT + 1;
    expect_invalid(&q.base, "limit 501 is above the maximum of 500");
    q.limit = 0;
    char long_cursor[100];
    snprintf(long_cursor, sizeof(long_cursor), "5:%070d", 0);
    const char *bad[] = {
        "x", ":apple", "1a:apple", "5:", "-1:apple", "1234567890123456789:apple", long_cursor};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        q.cursor = (char *)bad[i];
        expect_invalid(&q.base, "is not one this service issued");
    }
}
END_TEST

START_TEST(events_the_model_cannot_use_are_refused)
{
    char err[256];
    Inventory__Restocked re = INVENTORY__RESTOCKED__INIT;
    re.sku = "plum"; /* never registered */
    re.quantity = 3;
    ck_assert_int_eq(apply("inventory.Restocked", &re.base, err, sizeof(err)), JL_ERR_INVALID);
    ck_assert_msg(strstr(err, "plum") != NULL, "%s", err);
    re.sku = "kiwi";
    re.quantity = 0;
    ck_assert_int_eq(apply("inventory.Restocked", &re.base, err, sizeof(err)), JL_ERR_INVALID);
    ck_assert_msg(strstr(err, "with quantity 0 for sku kiwi") != NULL, "%s", err);
    Inventory__ProductRegistered reg = INVENTORY__PRODUCT_REGISTERED__INIT;
    reg.sku = "";
    ck_assert_int_eq(apply("inventory.ProductRegistered", &reg.base, err, sizeof(err)),
                     JL_ERR_INVALID);
    ck_assert_msg(strstr(err, "with an empty sku") != NULL, "%s", err);
    /* One longer than the queries take could be neither asked for nor paged past. */
    char long_sku[INVENTORY_LEVELS_MAX_SKU + 2];
    memset(long_sku, 's', sizeof(long_sku) - 1);
    long_sku[sizeof(long_sku) - 1] = 0;
    reg.sku = long_sku;
    ck_assert_int_eq(apply("inventory.ProductRegistered", &reg.base, err, sizeof(err)),
                     JL_ERR_INVALID);
    ck_assert_msg(strstr(err, "with a sku longer than 64 bytes") != NULL, "%s", err);
    long_sku[INVENTORY_LEVELS_MAX_SKU] = 0; /* exactly the limit: taken */
    reg.name = "long";
    ck_assert_int_eq(apply("inventory.ProductRegistered", &reg.base, err, sizeof(err)), JL_OK);
    /* A second registration is refused as an event the model cannot use (dead-lettered, the
     * projector goes on), not a reset of its counts, nor a failure retried for ever. */
    reg.sku = "kiwi";
    reg.name = "again";
    ck_assert_int_eq(apply("inventory.ProductRegistered", &reg.base, err, sizeof(err)),
                     JL_ERR_INVALID);
    ck_assert_msg(strstr(err, "rejected by the read model") != NULL, "%s", err);
    jl_reply r;
    jl_reply_init(&r);
    Inventory__GetStock q = INVENTORY__GET_STOCK__INIT;
    q.sku = "kiwi";
    ck_assert_int_eq(ask(&q.base, &r), JL_OK);
    Inventory__GetStockResult *res =
        inventory__get_stock_result__unpack(NULL, r.result.len, r.result.data);
    ck_assert_ptr_nonnull(res);
    ck_assert_int_eq(res->level->on_hand, 5);
    ck_assert_str_eq(res->level->name, "thing");
    inventory__get_stock_result__free_unpacked(res, NULL);
    jl_reply_cleanup(&r);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("inventory_levels");
    TCase *tc = tcase_create("queries");
    tcase_add_checked_fixture(tc, db_setup, db_teardown);
    tcase_add_test(tc, get_stock_answers_a_sku_and_refuses_bad_ones);
    tcase_add_test(tc, list_low_stock_pages_and_refuses_bad_arguments);
    tcase_add_test(tc, events_the_model_cannot_use_are_refused);
    suite_add_tcase(s, tc);
    return jl_ck_run(s);
}
