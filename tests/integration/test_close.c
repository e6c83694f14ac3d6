/*
 * Closing a producer or a projector while requests keep arriving: a handler that is still
 * running when close returns must not find its memory freed. Each test floods the service
 * from a second connection, closes it, and goes again; under ASan (./scripts/test --asan) a
 * handler running on freed memory fails the test, and without it a crash does.
 */
#include <check.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jetledger/admin.pb-c.h"
#include "jetledger/producer.h"
#include "jetledger/projector.h"
#include "orders/orders.pb-c.h"
#include "projection.h"
#include "service.h"
#include "support.h"

enum { ROUNDS = 8, PROJECTOR_ROUNDS = 60 };

static tenv env;

/* Requests sent round-robin on a few subjects until stopped; replies are only counted (a
 * flood nothing answered would test no close under a running handler). */
typedef struct flood {
    jl_conn *c;
    const char *subjects[3];
    int n;
    const void *body;
    int len;
    atomic_bool stop;
    pthread_t t;
    natsSubscription *inbox;
    atomic_int replies;
} flood;

static void count_reply(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    (void)nc;
    (void)sub;
    atomic_fetch_add(&((flood *)closure)->replies, 1);
    natsMsg_Destroy(msg);
}

/* Connect @p f and subscribe to its replies. */
static void flood_open(flood *f)
{
    f->c = tenv_connect(&env);
    atomic_init(&f->replies, 0);
    ck_assert_int_eq(
        natsConnection_Subscribe(&f->inbox, jl_conn_nats(f->c), "_INBOX.flood", count_reply, f),
        NATS_OK);
    ck_assert_int_eq(natsConnection_Flush(jl_conn_nats(f->c)), NATS_OK);
}

/* How many replies came; then unsubscribe and close. */
static int flood_close(flood *f)
{
    nats_Sleep(200); /* the last replies on their way */
    int n = atomic_load(&f->replies);
    jl_conn_sub_destroy(f->c, f->inbox);
    jl_conn_close(f->c, 0);
    return n;
}

static void *flooder(void *arg)
{
    flood *f = arg;
    natsConnection *nc = jl_conn_nats(f->c);
    for (unsigned long i = 0; !atomic_load(&f->stop); i++) {
        natsConnection_PublishRequest(nc, f->subjects[i % (unsigned long)f->n], "_INBOX.flood",
                                      f->body, f->len);
        if (i % 64 == 63)
            nats_Sleep(1);
    }
    return NULL;
}

static void flood_start(flood *f)
{
    atomic_store(&f->stop, false);
    ck_assert_int_eq(pthread_create(&f->t, NULL, flooder, f), 0);
}

/* Wait (5 s at most) for a reply past the first @p before: the service answers the flood, so a
 * close now comes while its handlers run. */
static void wait_answering(flood *f, int before)
{
    int64_t until = tnow_ms() + 5000;
    while (atomic_load(&f->replies) <= before && tnow_ms() < until)
        nats_Sleep(5);
    ck_assert_msg(atomic_load(&f->replies) > before, "nothing answered the flood this round");
}

static void flood_stop(flood *f)
{
    atomic_store(&f->stop, true);
    pthread_join(f->t, NULL);
}

static void setup(void)
{
    tenv_start(&env);
}

static void teardown(void)
{
    tenv_stop(&env);
}

static void handle_ok(jl_producer *p, const char *command, const ProtobufCMessage *m, jl_reply *r)
{
    uint8_t buf[256];
    size_t n = protobuf_c_message_pack(m, buf);
    jl_reply_reset(r);
    jl_producer_handle(p, command, buf, n, NULL, NULL, NULL, r);
    ck_assert_msg(r->code == JL_CODE_OK, "%s: %s", command, r->message);
}

START_TEST(a_producer_closed_under_history_queries_frees_nothing_in_use)
{
    /* GetHistory of a 300-event order reads for a while: close comes in the middle. */
    char err[1024] = "", id[JL_UUID_LEN + 1];
    jl_producer *p = NULL;
    jl_reply r;
    jl_reply_init(&r);
    ck_assert_msg(jl_producer_open(&p, env.conn, &orders_service, &env.cfg, err, sizeof(err)) ==
                      JL_OK,
                  "%s", err);
    Orders__CreateOrder c = ORDERS__CREATE_ORDER__INIT;
    c.customer_id = "long";
    handle_ok(p, "CreateOrder", &c.base, &r);
    snprintf(id, sizeof(id), "%s", r.aggregate_id);
    for (int i = 0; i < 300; i++) {
        char sku[16];
        Orders__AddItem a = ORDERS__ADD_ITEM__INIT;
        snprintf(sku, sizeof(sku), "s%d", i % 40);
        a.order_id = id;
        a.sku = sku;
        a.quantity = 1;
        a.unit_price_cents = 1;
        handle_ok(p, "AddItem", &a.base, &r);
    }
    jl_reply_cleanup(&r);
    ck_assert(jl_producer_close(p, 1000)); /* nothing running: freed */

    Jetledger__GetHistory q = JETLEDGER__GET_HISTORY__INIT;
    uint8_t body[128];
    q.aggregate_id = id;
    flood f = {.subjects = {"orders.query.GetHistory"},
               .n = 1,
               .body = body,
               .len = (int)jetledger__get_history__pack(&q, body)};
    flood_open(&f);
    for (int k = 0; k < ROUNDS; k++) {
        ck_assert_msg(jl_producer_open(&p, env.conn, &orders_service, &env.cfg, err, sizeof(err)) ==
                          JL_OK,
                      "%s", err);
        int before = atomic_load(&f.replies);
        flood_start(&f);
        wait_answering(&f, before);
        nats_Sleep(50);
        /* Freed, not left allocated: the handlers finish within the close's wait. */
        ck_assert(jl_producer_close(p, k % 2 ? 100 : 0));
        flood_stop(&f);
        nats_Sleep(300); /* a query left running would touch the freed producer now */
    }
    int replies = flood_close(&f);
    printf("producer: %d history replies over %d rounds\n", replies, ROUNDS);
    ck_assert_int_gt(replies, 0);
}
END_TEST

START_TEST(a_projector_closed_under_admin_requests_frees_nothing_in_use)
{
    /* Rebuild, Verify and status requests may be starting a job when close comes. */
    char err[1024] = "";
    jl_producer *p = NULL;
    ck_assert_msg(jl_producer_open(&p, env.conn, &orders_service, &env.cfg, err, sizeof(err)) ==
                      JL_OK,
                  "%s", err);
    ck_assert(jl_producer_close(p, 1000)); /* the stream exists */
    flood f = {.subjects = {"order_summary.admin.GetRebuildStatus", "order_summary.admin.Verify",
                            "order_summary.query.GetOrder"},
               .n = 3};
    flood_open(&f);
    for (int k = 0; k < PROJECTOR_ROUNDS; k++) {
        jl_projector *pj = NULL;
        jl_config cfg = env.cfg;
        snprintf(cfg.data_dir, sizeof(cfg.data_dir), "%s/p%d", env.dir, k);
        ck_assert_msg(jl_projector_open(&pj, env.conn, &order_summary_projector, &cfg, err,
                                        sizeof(err)) == JL_OK,
                      "%s", err);
        int before = atomic_load(&f.replies);
        flood_start(&f);
        wait_answering(&f, before);
        ck_assert(jl_projector_close(pj, k % 2 ? 100 : 0));
        flood_stop(&f);
        nats_Sleep(100); /* a job left running would touch the freed projector now */
    }
    int replies = flood_close(&f);
    printf("projector: %d admin and query replies over %d rounds\n", replies, PROJECTOR_ROUNDS);
    ck_assert_int_gt(replies, 0);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("close");
    TCase *tc = tcase_create("close");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, a_producer_closed_under_history_queries_frees_nothing_in_use);
    tcase_add_test(tc, a_projector_closed_under_admin_requests_frees_nothing_in_use);
    suite_add_tcase(s, tc);
    return trun(s);
}
