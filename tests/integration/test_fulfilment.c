/*
 * The two services, the fulfilment process manager and the three projectors together, against
 * a real nats-server: one order confirmed and one cancelled for lack of stock end in the right
 * state in every read model; the process manager killed at each step of its work and restarted
 * ends in the same states with no second reservation; the dashboard equals one computed
 * directly from the two streams; a command id sent twice to two replicas has one effect.
 */
#include <check.h>
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <sqlite3.h>

#include "dashboard/dashboard.pb-c.h"
#include "fulfilment/fulfilment.pb-c.h"
#include "inventory/inventory.pb-c.h"
#include "jetledger/admin.pb-c.h"
#include "jetledger/producer.h"
#include "jetledger/projector.h"
#include "jetledger/registry.h"
#include "jetledger/json.h"
#include "orders/orders.pb-c.h"
#include "support.h"

/* Both services have a service.h and a projection.h: name what is needed here instead. */
extern const jl_service_def orders_service;
extern const jl_service_def inventory_service;
extern const jl_projector_def order_summary_projector;
extern const jl_projector_def inventory_levels_projector;
extern const jl_projector_def sales_dashboard_projector;
extern const jl_projector_def fulfilment_process;

static tenv env;
static jl_producer *orders_p, *inventory_p;

typedef struct runner {
    jl_projector *p;
    pthread_t t;
} runner;

static runner summary, levels, dashboard, process;

static void *run_thread(void *arg)
{
    jl_projector_run(arg);
    return NULL;
}

static void runner_start(runner *r, const jl_projector_def *def)
{
    jl_config cfg = env.cfg;
    char err[1024] = "";
    ck_assert_msg(jl_projector_open(&r->p, env.conn, def, &cfg, err, sizeof(err)) == JL_OK,
                  "%s: %s", def->name, err);
    pthread_create(&r->t, NULL, run_thread, r->p);
}

static void runner_stop(runner *r)
{
    if (r->p == NULL)
        return;
    jl_projector_stop(r->p);
    pthread_join(r->t, NULL);
    jl_projector_close(r->p, 1000);
    r->p = NULL;
}

static void open_inventory(void)
{
    char err[1024] = "";
    ck_assert_msg(jl_producer_open(&inventory_p, env.conn, &inventory_service, &env.cfg, err,
                                   sizeof(err)) == JL_OK,
                  "%s", err);
}

static void setup(void)
{
    char err[1024] = "";
    tenv_start(&env);
    ck_assert_msg(
        jl_producer_open(&orders_p, env.conn, &orders_service, &env.cfg, err, sizeof(err)) == JL_OK,
        "%s", err);
    open_inventory();
    runner_start(&summary, &order_summary_projector);
    runner_start(&levels, &inventory_levels_projector);
    runner_start(&dashboard, &sales_dashboard_projector);
}

static void teardown(void)
{
    runner_stop(&process);
    runner_stop(&dashboard);
    runner_stop(&levels);
    runner_stop(&summary);
    jl_producer_close(inventory_p, 1000);
    jl_producer_close(orders_p, 1000);
    tenv_stop(&env);
}

/* ---- commands and queries ---- */

static void ok(const char *service, const ProtobufCMessage *m, jl_reply *out)
{
    jl_reply r;
    jl_reply_init(&r);
    ck_assert_int_eq(tsend(env.conn, service, false, m, NULL, &r), NATS_OK);
    ck_assert_msg(r.code == JL_CODE_OK, "%s %s: %s", service, m->descriptor->short_name, r.message);
    if (out != NULL) {
        jl_reply_reset(out);
        snprintf(out->aggregate_id, sizeof(out->aggregate_id), "%s", r.aggregate_id);
        out->stream_seq = r.stream_seq;
    }
    jl_reply_cleanup(&r);
}

static void register_product(const char *sku, const char *name, int64_t qty)
{
    Inventory__RegisterProduct reg = INVENTORY__REGISTER_PRODUCT__INIT;
    reg.sku = (char *)sku;
    reg.name = (char *)name;
    ok("inventory", &reg.base, NULL);
    Inventory__Restock rs = INVENTORY__RESTOCK__INIT;
    rs.sku = (char *)sku;
    rs.quantity = qty;
    ok("inventory", &rs.base, NULL);
}

typedef struct line {
    const char *sku;
    int qty;
    int64_t price;
} line;

/* Create and place an order; its id in @p out_id. */
static void place_order(const char *customer, const line *lines, int n,
                        char out_id[JL_UUID_LEN + 1])
{
    jl_reply r;
    jl_reply_init(&r);
    Orders__CreateOrder c = ORDERS__CREATE_ORDER__INIT;
    c.customer_id = (char *)customer;
    ok("orders", &c.base, &r);
    snprintf(out_id, JL_UUID_LEN + 1, "%s", r.aggregate_id);
    for (int i = 0; i < n; i++) {
        Orders__AddItem a = ORDERS__ADD_ITEM__INIT;
        a.order_id = out_id;
        a.sku = (char *)lines[i].sku;
        a.quantity = lines[i].qty;
        a.unit_price_cents = lines[i].price;
        ok("orders", &a.base, NULL);
    }
    Orders__PlaceOrder pl = ORDERS__PLACE_ORDER__INIT;
    pl.order_id = out_id;
    ok("orders", &pl.base, NULL);
    jl_reply_cleanup(&r);
}

/* A query's decoded result (caller frees with protobuf_c_message_free_unpacked), or NULL when
 * the reply is an error. */
/* A query's result (NULL unless ok), its code and (@p out_seq not NULL) the stream sequence the
 * answer reflects. */
static ProtobufCMessage *query_seq(const char *projector, const ProtobufCMessage *q,
                                   jl_code *out_code, uint64_t *out_seq)
{
    jl_reply r;
    jl_reply_init(&r);
    ck_assert_int_eq(tsend(env.conn, projector, true, q, NULL, &r), NATS_OK);
    *out_code = r.code;
    if (out_seq != NULL)
        *out_seq = r.stream_seq;
    ProtobufCMessage *m = NULL;
    if (r.code == JL_CODE_OK) {
        const ProtobufCMessageDescriptor *d = jl_registry_find(r.result_type);
        ck_assert_ptr_nonnull(d);
        m = protobuf_c_message_unpack(d, NULL, r.result.len, r.result.data);
        ck_assert_ptr_nonnull(m);
    }
    jl_reply_cleanup(&r);
    return m;
}

static ProtobufCMessage *query(const char *projector, const ProtobufCMessage *q, jl_code *out_code)
{
    return query_seq(projector, q, out_code, NULL);
}

static bool order_status_is(const char *id, const char *status)
{
    Orders__GetOrder q = ORDERS__GET_ORDER__INIT;
    q.order_id = (char *)id;
    jl_code code;
    Orders__GetOrderResult *res = (Orders__GetOrderResult *)query("order_summary", &q.base, &code);
    bool is = res != NULL && strcmp(res->order->status, status) == 0;
    if (res != NULL)
        protobuf_c_message_free_unpacked(&res->base, NULL);
    return is;
}

static void wait_status(const char *id, const char *status, int timeout_ms)
{
    int64_t deadline = tnow_ms() + timeout_ms;
    while (!order_status_is(id, status)) {
        ck_assert_msg(tnow_ms() < deadline, "order %s never became %s", id, status);
        nats_Sleep(50);
    }
}

static Inventory__StockLevel *stock(const char *sku)
{
    Inventory__GetStock q = INVENTORY__GET_STOCK__INIT;
    q.sku = (char *)sku;
    q.min_sequence = tstream_last_seq(env.conn, "INVENTORY");
    jl_code code;
    Inventory__GetStockResult *res =
        (Inventory__GetStockResult *)query("inventory_levels", &q.base, &code);
    ck_assert_ptr_nonnull(res);
    Inventory__StockLevel *lv = res->level;
    res->level = NULL;
    protobuf_c_message_free_unpacked(&res->base, NULL);
    return lv;
}

static void expect_stock(const char *sku, int64_t on_hand, int64_t reserved)
{
    int64_t deadline = tnow_ms() + 10000;
    for (;;) {
        Inventory__StockLevel *lv = stock(sku);
        bool same = (int64_t)lv->on_hand == on_hand && (int64_t)lv->reserved == reserved;
        char got[128];
        snprintf(got, sizeof(got), "on_hand %" PRId64 " reserved %" PRId64, (int64_t)lv->on_hand,
                 (int64_t)lv->reserved);
        protobuf_c_message_free_unpacked(&lv->base, NULL);
        if (same)
            return;
        ck_assert_msg(tnow_ms() < deadline, "%s: %s, want on_hand %" PRId64 " reserved %" PRId64,
                      sku, got, on_hand, reserved);
        nats_Sleep(50);
    }
}

/* ---- tests ---- */

/* Apples in stock, then the inventory service replaced by @p answer for ReserveStock (in its
 * queue group); unsubscribe and destroy what is returned to take it away. */
/* A stand-in answering ReserveStock with @p answer, subscribed by the time it returns. */
static natsSubscription *answer_reservations(natsMsgHandler answer)
{
    natsSubscription *sub = NULL;
    ck_assert_int_eq(natsConnection_QueueSubscribe(&sub, jl_conn_nats(env.conn),
                                                   "inventory.cmd.ReserveStock", "inventory",
                                                   answer, NULL),
                     NATS_OK);
    ck_assert_int_eq(natsConnection_Flush(jl_conn_nats(env.conn)), NATS_OK);
    return sub;
}

static natsSubscription *stand_in_inventory(natsMsgHandler answer)
{
    register_product("apple", "Apple", 10);
    jl_producer_close(inventory_p, 1000);
    inventory_p = NULL;
    return answer_reservations(answer);
}

/* The stand-in @p fake taken away and the real inventory service back in its place. */
static void inventory_back(natsSubscription *fake)
{
    jl_conn_sub_destroy(env.conn, fake);
    open_inventory();
}

/* The process manager started with the inventory replaced by @p answer, and an order of two
 * apples placed by @p customer (its id in @p out_id). Returns the stand-in. */
static natsSubscription *order_to_stand_in(natsMsgHandler answer, const char *customer,
                                           char out_id[JL_UUID_LEN + 1])
{
    natsSubscription *fake = stand_in_inventory(answer);
    runner_start(&process, &fulfilment_process);
    line la[] = {{"apple", 2, 150}};
    place_order(customer, la, 1, out_id);
    return fake;
}

/* Wait (up to 30 s) until a stand-in counted @p n calls in @p calls. */
static void wait_calls(atomic_int *calls, int n)
{
    int64_t deadline = tnow_ms() + 30000;
    while (atomic_load(calls) < n && tnow_ms() < deadline)
        nats_Sleep(20);
    ck_assert_int_ge(atomic_load(calls), n);
}

/* A stand-in for the inventory service mid-restart: "not now" to every ReserveStock. */
static atomic_int not_now_calls;

/* Answer request @p m as a producer would: "ok" (@p code JL_CODE_OK) or an error. Destroys m. */
static void stand_in_reply(natsConnection *nc, natsMsg *m, jl_code code, const char *message)
{
    jl_reply r;
    jl_buf out;
    jl_reply_init(&r);
    jl_buf_init(&out, 1 << 16);
    if (code != JL_CODE_OK)
        jl_reply_error(&r, code, "%s", message);
    else
        jl_uuid_new(r.aggregate_id); /* a producer names the aggregate it changed */
    if (jl_reply_encode(&out, &r) == JL_OK)
        natsConnection_Publish(nc, natsMsg_GetReply(m), out.data, (int)out.len);
    jl_buf_cleanup(&out);
    jl_reply_cleanup(&r);
    natsMsg_Destroy(m);
}

static void answer_not_now(natsConnection *nc, natsSubscription *sub, natsMsg *m, void *closure)
{
    (void)sub;
    (void)closure;
    atomic_fetch_add(&not_now_calls, 1);
    stand_in_reply(nc, m, JL_CODE_UNAVAILABLE, "the producer is shutting down; try again");
}

/* The process manager started with an inventory that answers "not now", and an order placed
 * (its id in @p out_id) whose ReserveStock got that answer. Returns the stand-in. */
static natsSubscription *order_answered_not_now(char out_id[JL_UUID_LEN + 1])
{
    atomic_store(&not_now_calls, 0);
    natsSubscription *fake = order_to_stand_in(answer_not_now, "carol", out_id);
    wait_calls(&not_now_calls, 1);
    return fake;
}

START_TEST(a_command_answered_not_now_is_sent_again)
{
    /* The process manager's ReserveStock reaches an inventory service that is going away and
     * answers "unavailable, try again": the step must be sent again once the service is
     * back, not recorded as done. */
    char a[JL_UUID_LEN + 1];
    natsSubscription *fake = order_answered_not_now(a);
    inventory_back(fake);
    wait_status(a, "confirmed", 20000);
    expect_stock("apple", 8, 0);
}
END_TEST

/* The warning of a row that holds back every later one, logged since tlog_capture() gave
 * @p log: it names the inventory, how long the row waited, @p behind and @p why. */
static void expect_holding_warning(FILE *log, const char *behind, const char *why)
{
    char text[8192];
    nats_Sleep(200);
    tlog_read(log, text, sizeof(text));
    const char *warned = strstr(text, "outbox: no reply, will retry");
    ck_assert_msg(warned != NULL, "%s", text);
    ck_assert_msg(strstr(warned, "\"service\":\"inventory\"") != NULL &&
                      strstr(warned, "\"waiting_s\":") != NULL && strstr(warned, behind) != NULL &&
                      strstr(warned, why) != NULL,
                  "%s", warned);
}

START_TEST(a_row_without_a_key_answered_not_now_is_reported_as_holding_the_rest)
{
    /* A row queued before rows had keys, answered "not now", holds back every later row: an
     * operator hears of it as of a row without a reply (service, how long, how many rows
     * behind), not only from the "not decided" line logged ever more rarely. */
    char a[JL_UUID_LEN + 1], path[1024];
    natsSubscription *fake = order_answered_not_now(a);
    runner_stop(&process);
    snprintf(path, sizeof(path), "%s/fulfilment.db", env.cfg.data_dir);
    tdb_exec(path, "UPDATE jl_outbox SET order_key = ''");
    int before = atomic_load(&not_now_calls);
    FILE *log = tlog_capture();
    runner_start(&process, &fulfilment_process);
    wait_calls(&not_now_calls, before + 1);
    expect_holding_warning(log, "\"rows_behind\":0", "answered unavailable: the producer is");
    inventory_back(fake);
    wait_status(a, "confirmed", 20000);
}
END_TEST

/* Order @p id cancelled by its customer. */
static void cancel_order(const char *id, const char *reason)
{
    Orders__CancelOrder c = ORDERS__CANCEL_ORDER__INIT;
    c.order_id = (char *)id;
    c.reason = (char *)reason;
    ok("orders", &c.base, NULL);
}

static void outbox_reply(const char *id, const char *command, char *out, size_t n);
static void expect_waiting(const char *id, const char *command);

START_TEST(a_reservation_overtaken_by_a_cancellation_is_withdrawn)
{
    /* The inventory answers "not now" (at capacity, say) and the customer cancels meanwhile:
     * the ReserveStock waiting to be sent again is withdrawn, not sent until the inventory
     * takes it and then released. It was sent on for as long as the inventory refused it. */
    char a[JL_UUID_LEN + 1], got[32] = "";
    natsSubscription *fake = order_answered_not_now(a);
    int64_t deadline;
    cancel_order(a, "changed my mind");
    deadline = tnow_ms() + 20000;
    do {
        nats_Sleep(50);
        outbox_reply(a, "ReserveStock", got, sizeof(got));
    } while (strcmp(got, "withdrawn") != 0 && tnow_ms() < deadline);
    ck_assert_str_eq(got, "withdrawn");
    /* One request may have been on its way; none after it (the backoff is under 1 s here). */
    int calls = atomic_load(&not_now_calls);
    nats_Sleep(2500);
    ck_assert_int_le(atomic_load(&not_now_calls), calls + 1);
    outbox_reply(a, "ReserveStock", got, sizeof(got));
    ck_assert_str_eq(got, "withdrawn"); /* a late "not now" did not put it back */

    /* The inventory back: nothing is reserved for the cancelled order. */
    inventory_back(fake);
    char b[JL_UUID_LEN + 1];
    line lb[] = {{"apple", 1, 150}};
    place_order("dave", lb, 1, b);
    wait_status(b, "confirmed", 20000);
    expect_stock("apple", 9, 0);
    ck_assert(order_status_is(a, "cancelled"));
    /* Not reserved and then released either (which would end at the same stock): never
     * reserved. The same count finds the other order's one reservation. */
    char needle[64];
    snprintf(needle, sizeof(needle), "\"order_id\":\"%s\"", a);
    ck_assert_int_eq(tcount_events(env.conn, "INVENTORY", "inventory.events.>",
                                   "inventory.StockReserved", needle),
                     0);
    snprintf(needle, sizeof(needle), "\"order_id\":\"%s\"", b);
    ck_assert_int_eq(tcount_events(env.conn, "INVENTORY", "inventory.events.>",
                                   "inventory.StockReserved", needle),
                     1);
    outbox_reply(a, "ReserveStock", got, sizeof(got));
    ck_assert_str_eq(got, "withdrawn");
}
END_TEST

/* A stand-in inventory whose first answer is not a reply at all (a garbled message), and
 * every later one a final refusal. */
static atomic_int garbled_calls;

static void answer_garbled_then_refuse(natsConnection *nc, natsSubscription *sub, natsMsg *m,
                                       void *closure)
{
    (void)sub;
    (void)closure;
    if (atomic_fetch_add(&garbled_calls, 1) == 0) {
        natsConnection_Publish(nc, natsMsg_GetReply(m), "\xff\xfe not a reply", 13);
        natsMsg_Destroy(m);
        return;
    }
    stand_in_reply(nc, m, JL_CODE_RULE_VIOLATION, "sku apple is discontinued");
}

START_TEST(an_undecodable_reply_is_sent_again_and_a_refusal_is_final)
{
    /* A reply the process manager cannot read says nothing of the command's outcome: it is
     * sent again (same command id). A refusal is an outcome: recorded once, never sent again,
     * and the order, which would otherwise wait for its stock for ever, is cancelled with the
     * refusal as its reason. */
    char a[JL_UUID_LEN + 1], got[32] = "";
    atomic_store(&garbled_calls, 0);
    natsSubscription *fake = order_to_stand_in(answer_garbled_then_refuse, "erin", a);
    int64_t deadline = tnow_ms() + 20000;
    do {
        nats_Sleep(50);
        outbox_reply(a, "ReserveStock", got, sizeof(got));
    } while (strcmp(got, "rule_violation") != 0 && tnow_ms() < deadline);
    ck_assert_str_eq(got, "rule_violation");
    ck_assert_int_eq(atomic_load(&garbled_calls), 2);
    nats_Sleep(2500); /* longer than the outbox's backoff here: a resend would have come */
    ck_assert_int_eq(atomic_load(&garbled_calls), 2);
    wait_status(a, "cancelled", 20000);
    outbox_reply(a, "CancelOrder", got, sizeof(got));
    ck_assert_str_eq(got, "ok");
    Fulfilment__GetFulfilment gf = FULFILMENT__GET_FULFILMENT__INIT;
    gf.order_id = a;
    gf.min_sequence = tstream_last_seq(env.conn, "ORDERS");
    jl_code code;
    Fulfilment__GetFulfilmentResult *fr =
        (Fulfilment__GetFulfilmentResult *)query("fulfilment", &gf.base, &code);
    ck_assert_ptr_nonnull(fr);
    ck_assert_str_eq(fr->step, "cancelled");
    ck_assert_msg(strstr(fr->reason, "stock reservation refused: sku apple is discontinued") !=
                      NULL,
                  "%s", fr->reason);
    protobuf_c_message_free_unpacked(&fr->base, NULL);
    jl_conn_sub_destroy(env.conn, fake);
}
END_TEST

static void outbox_select(const char *id, const char *command, const char *expr, char *out,
                          size_t n);

/* Ask the process manager's admin request @p name with @p m (NULL: an empty body). Returns the
 * result unpacked as @p type when the reply is ok, else NULL, with its code in *out_code and its
 * message in @p msg (@p n bytes). */
static ProtobufCMessage *outbox_admin(const char *name, const ProtobufCMessage *m,
                                      const ProtobufCMessageDescriptor *type, jl_code *out_code,
                                      char *msg, size_t n)
{
    char subject[128];
    uint8_t body[512];
    size_t len = m != NULL ? protobuf_c_message_get_packed_size(m) : 0;
    ck_assert_uint_le(len, sizeof(body));
    if (m != NULL)
        protobuf_c_message_pack(m, body);
    snprintf(subject, sizeof(subject), "fulfilment.admin.%s", name);
    jl_reply r;
    jl_reply_init(&r);
    ck_assert_int_eq(tsend_raw(env.conn, subject, body, len, &r), NATS_OK);
    *out_code = r.code;
    snprintf(msg, n, "%s", r.message);
    ProtobufCMessage *res = NULL;
    if (r.code == JL_CODE_OK) {
        ck_assert_str_eq(r.result_type, type->name);
        res = protobuf_c_message_unpack(type, NULL, r.result.len, r.result.data);
        ck_assert_ptr_nonnull(res);
    }
    jl_reply_cleanup(&r);
    return res;
}

/* The process manager's outbox as an operator reads it (GetOutbox, @p all rows or not). */
static Jetledger__Outbox *get_outbox(bool all)
{
    Jetledger__GetOutbox get = JETLEDGER__GET_OUTBOX__INIT;
    get.all = all;
    jl_code code;
    char msg[512];
    ProtobufCMessage *res = outbox_admin("GetOutbox", &get.base, &jetledger__outbox__descriptor,
                                         &code, msg, sizeof(msg));
    ck_assert_msg(res != NULL, "%s", msg);
    return (Jetledger__Outbox *)res;
}

/* DismissOutbox of @p command_id answered @p want (and, not ok, a message holding @p says). */
static void expect_dismissal(const char *command_id, jl_code want, const char *says)
{
    Jetledger__DismissOutbox d = JETLEDGER__DISMISS_OUTBOX__INIT;
    d.command_id = (char *)command_id;
    jl_code code;
    char msg[512];
    Jetledger__OutboxRow *row = (Jetledger__OutboxRow *)outbox_admin(
        "DismissOutbox", &d.base, &jetledger__outbox_row__descriptor, &code, msg, sizeof(msg));
    ck_assert_msg(code == want, "%s: code %d, %s", command_id, (int)code, msg);
    if (row != NULL) {
        ck_assert_str_eq(row->command_id, command_id);
        ck_assert_str_eq(row->state, "refused");
        jetledger__outbox_row__free_unpacked(row, NULL);
    } else {
        ck_assert_msg(strstr(msg, says) != NULL, "'%s' lacks '%s'", msg, says);
    }
}

/* Run `jetledger outbox fulfilment @p args` (words without shell metacharacters); its output
 * (stdout and stderr) into @p out. Returns its exit status. */
static int cli_outbox(const char *args, char *out, size_t n)
{
    const char *bindir = getenv("JL_BIN_DIR");
    ck_assert_ptr_nonnull(bindir);
    char cmd[2048];
    snprintf(cmd, sizeof(cmd), "NATS_URL='%s' '%s/jetledger' outbox fulfilment %s 2>&1",
             env.cfg.nats_url, bindir, args);
    FILE *f = popen(cmd, "r");
    ck_assert_ptr_nonnull(f);
    size_t len = fread(out, 1, n - 1, f);
    out[len] = 0;
    int st = pclose(f);
    ck_assert_msg(st != -1 && WIFEXITED(st), "%s: %d", cmd, st);
    return WEXITSTATUS(st);
}

/* A stand-in inventory that refuses every ReserveStock for good. */
static void answer_refused(natsConnection *nc, natsSubscription *sub, natsMsg *m, void *closure)
{
    (void)sub;
    (void)closure;
    stand_in_reply(nc, m, JL_CODE_RULE_VIOLATION, "no apples today");
}

START_TEST(an_operator_lists_the_outbox_and_dismisses_a_refusal)
{
    /* jetledger outbox: what the process manager still waits for (a ReserveStock answered "not
     * now", with its last reply and attempts), then, once it is refused for good, that refusal,
     * which stays until an operator dismisses it; nothing but a refusal can be dismissed. */
    char a[JL_UUID_LEN + 1], first[JL_UUID_LEN + 1], key[JL_UUID_LEN + 1], got[32] = "";
    /* First an order confirmed: three rows answered ok, decided before the one to deal with. */
    register_product("apple", "Apple", 10);
    runner_start(&process, &fulfilment_process);
    line l1[] = {{"apple", 1, 150}};
    place_order("ivy", l1, 1, first);
    wait_status(first, "confirmed", 20000);
    Jetledger__Outbox *o = NULL;
    for (int64_t until = tnow_ms() + 20000;; nats_Sleep(50)) {
        o = get_outbox(true);
        if (o->answered == 3 || tnow_ms() > until)
            break;
        jetledger__outbox__free_unpacked(o, NULL);
    }
    ck_assert_uint_eq(o->answered, 3); /* reserve, confirm, commit */
    ck_assert_uint_eq(o->n_rows, 3);
    jetledger__outbox__free_unpacked(o, NULL);
    o = get_outbox(false); /* neither listed nor counted unless asked for */
    ck_assert_uint_eq(o->answered, 0);
    ck_assert_uint_eq(o->n_rows, 0);
    jetledger__outbox__free_unpacked(o, NULL);
    /* Then an inventory answering "not now". */
    jl_producer_close(inventory_p, 1000);
    inventory_p = NULL;
    atomic_store(&not_now_calls, 0);
    natsSubscription *fake = answer_reservations(answer_not_now);
    line la[] = {{"apple", 2, 150}};
    place_order("carol", la, 1, a);
    wait_calls(&not_now_calls, 2); /* sent again: the first answer is recorded */
    for (int i = 0; a[i]; i++)
        key[i] = (char)tolower((unsigned char)a[i]);
    key[JL_UUID_LEN] = 0;
    o = get_outbox(false);
    ck_assert_uint_eq(o->waiting, 1);
    ck_assert_uint_eq(o->refused, 0);
    ck_assert_uint_eq(o->n_rows, 1);
    ck_assert_str_eq(o->rows[0]->command, "ReserveStock");
    ck_assert_str_eq(o->rows[0]->service, "inventory");
    ck_assert_str_eq(o->rows[0]->state, "waiting");
    ck_assert_str_eq(o->rows[0]->reply_code, "unavailable");
    ck_assert_str_eq(o->rows[0]->order_key, key);
    ck_assert_int_ge(o->rows[0]->attempts, 1);
    ck_assert_int_eq(o->rows[0]->replied_at_ns, 0);
    ck_assert_int_gt(o->rows[0]->created_at_ns, 0);
    char reserve_id[128];
    snprintf(reserve_id, sizeof(reserve_id), "%s", o->rows[0]->command_id);
    ck_assert_ptr_nonnull(strstr(reserve_id, key));
    jetledger__outbox__free_unpacked(o, NULL);
    expect_dismissal(reserve_id, JL_CODE_RULE_VIOLATION, "is waiting");

    /* The inventory now refuses it: recorded, the order cancelled for it. */
    jl_conn_sub_destroy(env.conn, fake);
    fake = answer_reservations(answer_refused);
    wait_status(a, "cancelled", 20000);
    int64_t deadline = tnow_ms() + 20000;
    do {
        nats_Sleep(50);
        outbox_reply(a, "CancelOrder", got, sizeof(got));
    } while (strcmp(got, "ok") != 0 && tnow_ms() < deadline);
    ck_assert_str_eq(got, "ok");
    o = get_outbox(false);
    ck_assert_uint_eq(o->waiting, 0);
    ck_assert_uint_eq(o->refused, 1);
    ck_assert_uint_eq(o->n_rows, 1);
    ck_assert_str_eq(o->rows[0]->command_id, reserve_id);
    ck_assert_str_eq(o->rows[0]->state, "refused");
    ck_assert_str_eq(o->rows[0]->reply_code, "rule_violation");
    ck_assert_str_eq(o->rows[0]->reply_message, "no apples today");
    ck_assert_int_gt(o->rows[0]->replied_at_ns, 0);
    jetledger__outbox__free_unpacked(o, NULL);
    /* All of them: the refusal first, then the answered ones in the order they were decided
     * (the first order's before it). */
    o = get_outbox(true);
    ck_assert_uint_eq(o->answered, 4); /* the first order's and the CancelOrder */
    ck_assert_uint_eq(o->n_rows, 5);
    ck_assert_str_eq(o->rows[0]->command_id, reserve_id);
    for (size_t i = 1; i < 5; i++) {
        ck_assert_str_eq(o->rows[i]->state, "ok");
        ck_assert_int_gt(o->rows[i]->id, i > 1 ? o->rows[i - 1]->id : 0);
    }
    ck_assert_int_lt(o->rows[1]->id, o->rows[0]->id);
    ck_assert_str_eq(o->rows[4]->command, "CancelOrder");
    char cancel_id[128];
    snprintf(cancel_id, sizeof(cancel_id), "%s", o->rows[4]->command_id);
    jetledger__outbox__free_unpacked(o, NULL);

    expect_dismissal(cancel_id, JL_CODE_RULE_VIOLATION, "is ok");
    expect_dismissal("no-such-command", JL_CODE_NOT_FOUND, "no outbox row");
    expect_dismissal("", JL_CODE_INVALID, "command_id");
    jl_reply r;
    jl_reply_init(&r);
    ck_assert_int_eq(tsend_raw(env.conn, "fulfilment.admin.DismissOutbox", "\xff\xff", 2, &r),
                     NATS_OK);
    ck_assert_int_eq(r.code, JL_CODE_INVALID);
    ck_assert_ptr_nonnull(strstr(r.message, "malformed"));
    jl_reply_cleanup(&r);

    /* The CLI: the counts always said, the refusal listed; then dismissed. */
    char out[8192], args[256];
    ck_assert_int_eq(cli_outbox("", out, sizeof(out)), 0);
    ck_assert_msg(strstr(out, "{\"waiting\":0,\"refused\":1,\"instance\":") == out &&
                      strstr(out, reserve_id) != NULL &&
                      strstr(out, "\"state\":\"refused\"") != NULL &&
                      strstr(out, "\"reply_message\":\"no apples today\"") != NULL &&
                      strstr(out, "CancelOrder") == NULL,
                  "%s", out);
    ck_assert_int_eq(cli_outbox("--all", out, sizeof(out)), 0);
    ck_assert_msg(strstr(out, "{\"waiting\":0,\"refused\":1,\"answered\":4,\"instance\":") == out &&
                      strstr(out, "\"command\":\"CancelOrder\"") != NULL,
                  "%s", out);
    snprintf(args, sizeof(args), "dismiss %s --all", reserve_id);
    ck_assert_int_eq(cli_outbox(args, out, sizeof(out)), 2);
    snprintf(args, sizeof(args), "dismiss %s", cancel_id);
    ck_assert_int_eq(cli_outbox(args, out, sizeof(out)), 1);
    ck_assert_msg(strstr(out, "was not refused") != NULL, "%s", out);
    snprintf(args, sizeof(args), "dismiss %s", reserve_id);
    ck_assert_int_eq(cli_outbox(args, out, sizeof(out)), 0);
    ck_assert_msg(strstr(out, "{\"dismissed\":{") == out && strstr(out, reserve_id) != NULL, "%s",
                  out);
    o = get_outbox(true);
    ck_assert_uint_eq(o->refused, 0);
    ck_assert_uint_eq(o->answered, 4);
    ck_assert_uint_eq(o->n_rows, 4);
    ck_assert_str_eq(o->rows[3]->command_id, cancel_id);
    jetledger__outbox__free_unpacked(o, NULL);
    outbox_select(a, "ReserveStock", "count(*)", got, sizeof(got));
    ck_assert_str_eq(got, "0");
    expect_dismissal(reserve_id, JL_CODE_NOT_FOUND, "no outbox row");
    ck_assert_int_eq(cli_outbox(args, out, sizeof(out)), 1);
    jl_conn_sub_destroy(env.conn, fake);
}
END_TEST

/* A stand-in inventory that cannot read its own history: "internal" to every ReserveStock. */
static atomic_int internal_calls;

static void answer_internal(natsConnection *nc, natsSubscription *sub, natsMsg *m, void *closure)
{
    (void)sub;
    (void)closure;
    atomic_fetch_add(&internal_calls, 1);
    stand_in_reply(nc, m, JL_CODE_INTERNAL, "warehouse history cannot be replayed");
}

START_TEST(a_command_answered_internal_is_sent_again_until_decided)
{
    /* "internal" decides nothing (the service needs an operator): the ReserveStock is sent
     * again, backed off, and once the service is back the order goes on to be confirmed. */
    char a[JL_UUID_LEN + 1];
    atomic_store(&internal_calls, 0);
    natsSubscription *fake = order_to_stand_in(answer_internal, "grace", a);
    wait_calls(&internal_calls, 2);
    expect_waiting(a, "ReserveStock"); /* not final */
    inventory_back(fake);
    wait_status(a, "confirmed", 20000);
    expect_stock("apple", 8, 0);
}
END_TEST

/* A stand-in inventory: "ok" to the ReserveStock of order passing_order, "not now" to others,
 * counting the distinct orders it held (under stand_in_mu: callbacks run on other threads). */
enum { MAX_SEEN = 512 };
static pthread_mutex_t stand_in_mu = PTHREAD_MUTEX_INITIALIZER;
static char passing_order[JL_UUID_LEN + 1];
static char seen_orders[MAX_SEEN][JL_UUID_LEN + 1];
static int n_seen;
static atomic_int held_calls, passed_calls;

static int held_orders(void)
{
    pthread_mutex_lock(&stand_in_mu);
    int n = n_seen;
    pthread_mutex_unlock(&stand_in_mu);
    return n;
}

static void answer_not_now_but_one(natsConnection *nc, natsSubscription *sub, natsMsg *m,
                                   void *closure)
{
    Inventory__ReserveStock *c = inventory__reserve_stock__unpack(
        NULL, (size_t)natsMsg_GetDataLength(m), (const uint8_t *)natsMsg_GetData(m));
    pthread_mutex_lock(&stand_in_mu);
    bool passes = c != NULL && strcasecmp(c->order_id, passing_order) == 0, known = false;
    for (int i = 0; c != NULL && !passes && i < n_seen && !known; i++)
        known = strcasecmp(seen_orders[i], c->order_id) == 0;
    if (c != NULL && !passes && !known && n_seen < MAX_SEEN)
        snprintf(seen_orders[n_seen++], JL_UUID_LEN + 1, "%s", c->order_id);
    pthread_mutex_unlock(&stand_in_mu);
    if (c != NULL)
        inventory__reserve_stock__free_unpacked(c, NULL);
    if (!passes) {
        atomic_fetch_add(&held_calls, 1);
        answer_not_now(nc, sub, m, closure);
        return;
    }
    atomic_fetch_add(&passed_calls, 1);
    stand_in_reply(nc, m, JL_CODE_OK, NULL);
}

/* Outbox rows of order @p id. */
static int outbox_count(const char *id)
{
    char path[1024], sql[200];
    tlive_file(env.cfg.data_dir, "fulfilment", path, sizeof(path));
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM jl_outbox WHERE order_key = lower('%s')", id);
    sqlite3_stmt *st = tdb_row(path, sql);
    int n = sqlite3_column_int(st, 0);
    tdb_done(st);
    return n;
}

/* @p expr over the outbox rows of order @p id's command @p command, as text in @p out. */
static void outbox_select(const char *id, const char *command, const char *expr, char *out,
                          size_t n)
{
    char path[1024], sql[400];
    tlive_file(env.cfg.data_dir, "fulfilment", path, sizeof(path));
    snprintf(sql, sizeof(sql),
             "SELECT %s FROM jl_outbox WHERE command = '%s' AND order_key = lower('%s')", expr,
             command, id);
    sqlite3_stmt *st = tdb_row(path, sql);
    snprintf(out, n, "%s", (const char *)sqlite3_column_text(st, 0));
    tdb_done(st);
}

/* The reply recorded for order @p id's command @p command ("" while none is final). */
static void outbox_reply(const char *id, const char *command, char *out, size_t n)
{
    outbox_select(id, command,
                  "coalesce(max(CASE WHEN replied_at_ns IS NOT NULL THEN reply_code END), '')", out,
                  n);
}

/* Order @p id's command @p command is in the outbox, without a final reply. */
static void expect_waiting(const char *id, const char *command)
{
    char got[32];
    outbox_select(id, command, "count(*) || ' rows, replied ' || count(replied_at_ns)", got,
                  sizeof(got));
    ck_assert_msg(strcmp(got, "1 rows, replied 0") == 0, "%s %s: %s", command, id, got);
}

START_TEST(a_reservation_answered_not_now_holds_back_only_its_own_order)
{
    /* The inventory refuses reservations "not now" (at its capacity, say): those orders'
     * commands wait and are sent again, while other orders' commands go on, one of which may
     * be what makes room (a commit). It was: every command behind the first waited. Many held
     * orders, over several batches of rows: none stops the pass. */
    enum { HELD = 300 }; /* over any cap a pass could have had */
    atomic_store(&held_calls, 0);
    atomic_store(&passed_calls, 0);
    pthread_mutex_lock(&stand_in_mu);
    passing_order[0] = 0;
    n_seen = 0;
    pthread_mutex_unlock(&stand_in_mu);
    natsSubscription *fake = stand_in_inventory(answer_not_now_but_one);
    static char a[HELD][JL_UUID_LEN + 1];
    char b[JL_UUID_LEN + 1], got[32] = "";
    line la[] = {{"apple", 1, 100}};
    for (int i = 0; i < HELD; i++)
        place_order("held", la, 1, a[i]);
    env.cfg.outbox_keep_s = 1; /* and answered rows past the held ones are pruned */
    runner_start(&process, &fulfilment_process);
    int64_t deadline = tnow_ms() + 30000;
    while (held_orders() < HELD && tnow_ms() < deadline)
        nats_Sleep(20);
    ck_assert_int_eq(held_orders(), HELD);
    place_order("passes", la, 1, b); /* decided after every held reservation */
    pthread_mutex_lock(&stand_in_mu);
    snprintf(passing_order, sizeof(passing_order), "%s", b);
    pthread_mutex_unlock(&stand_in_mu);
    deadline = tnow_ms() + 30000;
    do {
        nats_Sleep(50);
        outbox_reply(b, "ReserveStock", got, sizeof(got));
    } while (strcmp(got, "ok") != 0 && tnow_ms() < deadline);
    ck_assert_msg(strcmp(got, "ok") == 0, "b's reservation not sent past the held ones: '%s'", got);
    outbox_reply(a[0], "ReserveStock", got, sizeof(got));
    ck_assert_str_eq(got, ""); /* still waiting, sent again */
    deadline = tnow_ms() + 15000;
    while (outbox_count(b) > 0 && tnow_ms() < deadline)
        nats_Sleep(100);
    ck_assert_int_eq(outbox_count(b), 0);
    ck_assert_int_eq(outbox_count(a[0]), 1);
    int before = atomic_load(&held_calls);
    deadline = tnow_ms() + 20000;
    while (atomic_load(&held_calls) == before && tnow_ms() < deadline)
        nats_Sleep(20);
    ck_assert_int_gt(atomic_load(&held_calls), before);
    /* The inventory back: the first held reservation goes through, the order is confirmed. */
    inventory_back(fake);
    wait_status(a[0], "confirmed", 30000);
}
END_TEST

/* The fulfilment's on_refused, failing for order refusal_fails_for (as on a damaged row of its
 * own) and counting those calls. */
static char refusal_fails_for[JL_UUID_LEN + 1];
static atomic_int failed_refusals;

static jl_status refusal_failing_for_one_order(jl_db *db, const jl_outbox_refusal *f, char *err,
                                               size_t errlen)
{
    if (strcmp(f->order_key, refusal_fails_for) == 0) {
        atomic_fetch_add(&failed_refusals, 1);
        snprintf(err, errlen, "the fulfilment row of order %s is damaged", f->order_key);
        return JL_ERR_INTERNAL;
    }
    return fulfilment_process.on_refused(db, f, err, errlen);
}

START_TEST(a_refusal_its_handler_cannot_take_holds_back_only_its_own_order)
{
    /* The refusal of one order's reservation cannot be taken by the process manager (its
     * handler fails, and will at every attempt): that order waits, sent again with a backoff,
     * and the others' commands go on. They used to wait behind it for good. */
    static jl_projector_def def;
    def = fulfilment_process;
    def.on_refused = refusal_failing_for_one_order;
    atomic_store(&failed_refusals, 0);
    char a[JL_UUID_LEN + 1], b[JL_UUID_LEN + 1], got[32] = "";
    natsSubscription *fake = stand_in_inventory(answer_refused);
    line la[] = {{"apple", 1, 100}};
    place_order("damaged", la, 1, a);
    snprintf(refusal_fails_for, sizeof(refusal_fails_for), "%s", a);
    place_order("fine", la, 1, b); /* its reservation is decided after a's */
    env.cfg.outbox_keep_s = 1;     /* b's refusal outlives it, its ok rows do not */
    runner_start(&process, &def);
    wait_status(b, "cancelled", 30000);
    outbox_reply(b, "CancelOrder", got, sizeof(got));
    ck_assert_str_eq(got, "ok");
    int64_t deadline = tnow_ms() + 20000;
    while (atomic_load(&failed_refusals) < 2 && tnow_ms() < deadline)
        nats_Sleep(20);
    ck_assert_int_ge(atomic_load(&failed_refusals), 2); /* sent again, refused again */
    expect_waiting(a, "ReserveStock"); /* its refusal is not recorded while it cannot be taken */
    /* Past the keep time b's CancelOrder (ok) is deleted; its refused ReserveStock, which
     * nothing else acts on, stays for an operator. */
    deadline = tnow_ms() + 20000;
    do {
        nats_Sleep(100);
        outbox_reply(b, "CancelOrder", got, sizeof(got));
    } while (got[0] != 0 && tnow_ms() < deadline);
    outbox_select(b, "CancelOrder", "count(*)", got, sizeof(got));
    ck_assert_str_eq(got, "0");
    outbox_reply(b, "ReserveStock", got, sizeof(got));
    ck_assert_str_eq(got, "rule_violation");
    jl_conn_sub_destroy(env.conn, fake);
}
END_TEST

/* A stand-in for an inventory service that takes requests and never answers. */
static atomic_int silent_calls;

static void answer_nothing(natsConnection *nc, natsSubscription *sub, natsMsg *m, void *closure)
{
    (void)nc;
    (void)sub;
    (void)closure;
    atomic_fetch_add(&silent_calls, 1);
    natsMsg_Destroy(m);
}

START_TEST(a_command_without_a_reply_is_counted_and_does_not_hold_up_a_stop)
{
    /* The inventory takes the ReserveStock and never answers: the process manager waits for a
     * reply as long as a producer may take (twice the request timeout, plus a second), counts
     * the attempt in the row and sends it again; stopping does not wait for the reply, and
     * after a restart the step is carried out. */
    atomic_store(&silent_calls, 0);
    natsSubscription *fake = stand_in_inventory(answer_nothing);
    int64_t saved_timeout = env.cfg.request_timeout_ms;
    env.cfg.request_timeout_ms = 3000; /* a reply is waited for 7 s */
    runner_start(&process, &fulfilment_process);
    env.cfg.request_timeout_ms = saved_timeout;
    FILE *log = tlog_capture();
    char a[JL_UUID_LEN + 1];
    line la[] = {{"apple", 2, 150}};
    place_order("carol", la, 1, a);
    wait_calls(&silent_calls, 1);
    int64_t first = tnow_ms();
    wait_calls(&silent_calls, 2);
    ck_assert_int_ge(tnow_ms() - first, 6000); /* not sent again before the wait was out */
    /* Every later row waits for it: the warning says which service, for how long, and how
     * many rows wait behind it. */
    expect_holding_warning(log, "\"rows_behind\":0", "no reply in time");

    char path[1024];
    snprintf(path, sizeof(path), "%s/fulfilment.db", env.cfg.data_dir);
    sqlite3_stmt *st = tdb_row(path, "SELECT attempts, reply_message, replied_at_ns IS NULL "
                                     "FROM jl_outbox WHERE command = 'ReserveStock'");
    ck_assert_int_ge(sqlite3_column_int(st, 0), 1);
    ck_assert_str_eq((const char *)sqlite3_column_text(st, 1), "no reply: no reply in time");
    ck_assert_int_eq(sqlite3_column_int(st, 2), 1);
    tdb_done(st);

    /* Stopped 7 s before its wait is out: the stop does not wait for it. */
    int64_t t0 = tnow_ms();
    runner_stop(&process);
    ck_assert_int_lt(tnow_ms() - t0, 5000);
    inventory_back(fake);
    runner_start(&process, &fulfilment_process);
    wait_status(a, "confirmed", 20000);
    expect_stock("apple", 8, 0);
}
END_TEST

/* Attempts recorded for order @p id's command @p command (0 while it is not decided). */
static int outbox_attempts(const char *id, const char *command)
{
    char v[32];
    outbox_select(id, command, "coalesce(max(attempts), 0)", v, sizeof(v));
    return atoi(v);
}

/* A stand-in whose answer to ReserveStock is an empty message: "ok" with every field unset, to
 * a reader that does not look closer. */
static atomic_int empty_calls;

static void answer_empty(natsConnection *nc, natsSubscription *sub, natsMsg *m, void *closure)
{
    (void)sub;
    (void)closure;
    atomic_fetch_add(&empty_calls, 1);
    natsConnection_Publish(nc, natsMsg_GetReply(m), NULL, 0);
    natsMsg_Destroy(m);
}

START_TEST(an_empty_reply_is_not_taken_for_an_acceptance)
{
    /* Recorded as "ok", the reservation would never be sent again and the order would wait at
     * "reserving" for good: it is sent again, and the real inventory carries it out. */
    char a[JL_UUID_LEN + 1], got[32] = "";
    atomic_store(&empty_calls, 0);
    natsSubscription *fake = order_to_stand_in(answer_empty, "fay", a);
    wait_calls(&empty_calls, 1);
    int64_t deadline = tnow_ms() + 20000; /* the answer read and dealt with */
    while (outbox_attempts(a, "ReserveStock") == 0 && tnow_ms() < deadline)
        nats_Sleep(20);
    ck_assert_int_ge(outbox_attempts(a, "ReserveStock"), 1);
    expect_waiting(a, "ReserveStock");
    inventory_back(fake);
    wait_status(a, "confirmed", 20000);
    expect_stock("apple", 8, 0);
    outbox_reply(a, "ReserveStock", got, sizeof(got));
    ck_assert_str_eq(got, "ok");
}
END_TEST

START_TEST(a_command_without_a_reply_waits_its_backoff_whatever_commits_meanwhile)
{
    /* The inventory gone (no responders), its ReserveStock is sent again after a backoff (200
     * ms, doubling to 5 s). Other orders' events keep the process manager committing, and each
     * commit wakes the sender: a wake must not cut the backoff, or the command would be sent
     * again, and logged, once per commit. */
    register_product("apple", "Apple", 10);
    jl_producer_close(inventory_p, 1000);
    inventory_p = NULL;
    runner_start(&process, &fulfilment_process);
    char a[JL_UUID_LEN + 1];
    line la[] = {{"apple", 2, 150}};
    place_order("gus", la, 1, a);
    int64_t deadline = tnow_ms() + 20000;
    while (outbox_attempts(a, "ReserveStock") == 0 && tnow_ms() < deadline)
        nats_Sleep(20);
    ck_assert_int_ge(outbox_attempts(a, "ReserveStock"), 1);
    int64_t t0 = tnow_ms();
    int created = 0;
    while (tnow_ms() - t0 < 5000) { /* orders created one after another: many small batches */
        Orders__CreateOrder c = ORDERS__CREATE_ORDER__INIT;
        c.customer_id = "busy";
        ok("orders", &c.base, NULL);
        created++;
        nats_Sleep(5);
    }
    int attempts = outbox_attempts(a, "ReserveStock");
    printf("backoff under traffic: %d orders created in 5 s, ReserveStock sent %d times\n", created,
           attempts);
    /* 200 + 400 + 800 + 1600 + 3200 ms: about 6 in 5 s, with room for slow machines. */
    ck_assert_int_ge(attempts, 2);
    ck_assert_int_le(attempts, 10);
    /* Well over the bound in commits, or a wake per commit would pass for the backoff. */
    ck_assert_int_gt(created, 20);
    open_inventory();
    wait_status(a, "confirmed", 20000);
    expect_stock("apple", 8, 0);
}
END_TEST

/* Outbox rows of the process manager: how many are answered, how many wait for a reply. */
static void outbox_rows(int *out_answered, int *out_waiting)
{
    char path[1024];
    tlive_file(env.cfg.data_dir, "fulfilment", path, sizeof(path)); /* after a rebuild too */
    sqlite3_stmt *st = tdb_row(path, "SELECT count(replied_at_ns), count(*) - "
                                     "count(replied_at_ns) FROM jl_outbox");
    *out_answered = sqlite3_column_int(st, 0);
    *out_waiting = sqlite3_column_int(st, 1);
    tdb_done(st);
}

START_TEST(answered_outbox_rows_are_deleted_after_the_keep_time)
{
    /* A process manager's outbox would grow with every command it ever sent: answered rows
     * go once older than --outbox-keep, rows still waiting for a reply stay. */
    register_product("pear", "Pear", 10);
    env.cfg.outbox_keep_s = 1;
    runner_start(&process, &fulfilment_process);
    char a[JL_UUID_LEN + 1], b[JL_UUID_LEN + 1];
    line la[] = {{"pear", 2, 90}};
    place_order("erin", la, 1, a);
    wait_status(a, "confirmed", 20000);
    int answered = 0, waiting = 0;
    outbox_rows(&answered, &waiting);
    ck_assert_int_ge(answered + waiting, 2); /* reserve, confirm, commit */

    jl_producer_close(inventory_p, 1000); /* the next reservation gets no reply */
    inventory_p = NULL;
    place_order("frank", la, 1, b);
    int64_t deadline = tnow_ms() + 20000;
    do {
        nats_Sleep(100);
        outbox_rows(&answered, &waiting);
    } while ((answered > 0 || waiting != 1) && tnow_ms() < deadline);
    ck_assert_msg(answered == 0 && waiting == 1, "answered %d, waiting %d", answered, waiting);
    nats_Sleep(1500); /* older than the keep time, but never answered: kept */
    outbox_rows(&answered, &waiting);
    ck_assert_int_eq(waiting, 1);

    open_inventory();
    wait_status(b, "confirmed", 20000);
    expect_stock("pear", 6, 0);
}
END_TEST

/* Start job @p name ("Rebuild" or "Verify") of projector @p projector; follow it to its end. */
static Jetledger__RebuildStatus *run_admin_job(const char *projector, const char *name,
                                               const ProtobufCMessage *msg)
{
    char subject[128];
    snprintf(subject, sizeof(subject), "%s.admin.%s", projector, name);
    Jetledger__RebuildStatus *st = tadmin(env.conn, subject, msg, NULL, NULL, 0);
    int64_t deadline = tnow_ms() + 60000;
    snprintf(subject, sizeof(subject), "%s.admin.GetRebuildStatus", projector);
    while (strcmp(st->state, "running") == 0 && tnow_ms() < deadline) {
        jetledger__rebuild_status__free_unpacked(st, NULL);
        nats_Sleep(20);
        Jetledger__GetRebuildStatus q = JETLEDGER__GET_REBUILD_STATUS__INIT;
        st = tadmin(env.conn, subject, &q.base, NULL, NULL, 0);
    }
    return st;
}

static uint64_t commands_handled(void)
{
    jl_producer_stats o, i;
    jl_producer_get_stats(orders_p, &o);
    jl_producer_get_stats(inventory_p, &i);
    return o.commands + i.commands;
}

START_TEST(a_rebuilt_process_manager_keeps_its_outbox_and_sends_nothing_again)
{
    /* Rebuilding a process manager replays every event into a new file, which decides every
     * command again: the outbox of the live file, with what was answered, goes over at the
     * switch, so that nothing already sent is sent once more, and what comes next is sent
     * from the new file. */
    register_product("plum", "Plum", 10);
    runner_start(&process, &fulfilment_process);
    char a[JL_UUID_LEN + 1], b[JL_UUID_LEN + 1], c[JL_UUID_LEN + 1];
    line la[] = {{"plum", 2, 70}};
    place_order("gina", la, 1, a);
    place_order("hank", la, 1, b);
    wait_status(a, "confirmed", 20000);
    wait_status(b, "confirmed", 20000);
    int answered = 0, waiting = 0;
    int64_t deadline = tnow_ms() + 20000;
    do { /* confirmed: the commit of the reservation may still be on its way */
        nats_Sleep(50);
        outbox_rows(&answered, &waiting);
    } while ((answered != 6 || waiting != 0) && tnow_ms() < deadline);
    ck_assert_msg(answered == 6 && waiting == 0, "answered %d, waiting %d", answered, waiting);
    uint64_t before = commands_handled();

    Jetledger__Rebuild rb = JETLEDGER__REBUILD__INIT;
    Jetledger__RebuildStatus *st = run_admin_job("fulfilment", "Rebuild", &rb.base);
    ck_assert_msg(strcmp(st->state, "done") == 0, "rebuild %s: %s", st->state, st->error);
    jetledger__rebuild_status__free_unpacked(st, NULL);
    outbox_rows(&answered, &waiting);
    ck_assert_int_eq(answered, 6);
    ck_assert_int_eq(waiting, 0);

    place_order("ivan", la, 1, c);
    wait_status(c, "confirmed", 20000);
    deadline = tnow_ms() + 20000;
    do {
        nats_Sleep(50);
        outbox_rows(&answered, &waiting);
    } while ((answered != 9 || waiting != 0) && tnow_ms() < deadline);
    ck_assert_msg(answered == 9 && waiting == 0, "answered %d, waiting %d", answered, waiting);
    /* Three commands for the new order (and its placing and creation by the test), none of
     * the first two orders' again. */
    ck_assert_uint_eq(commands_handled() - before, 3 + 3);
    expect_stock("plum", 4, 0);
}
END_TEST

START_TEST(a_rebuild_reads_a_second_stream_made_only_later)
{
    /* The dashboard reads orders and inventory. Before the inventory service ever ran, its
     * stream is missing: the live dashboard goes on with orders, and so must a rebuild (a
     * version rebuild would otherwise hold live applying for ever); once the stream exists,
     * both read it. */
    runner_stop(&dashboard);
    runner_stop(&levels);
    jl_producer_close(inventory_p, 1000);
    inventory_p = NULL;
    ck_assert_int_eq(js_DeleteStream(jl_conn_js(env.conn), "INVENTORY", NULL, NULL), NATS_OK);
    struct timespec before;
    clock_gettime(CLOCK_REALTIME, &before);
    runner_start(&dashboard, &sales_dashboard_projector);
    char a[JL_UUID_LEN + 1];
    line la[] = {{"fig", 1, 30}};
    place_order("jo", la, 1, a);
    uint64_t orders_last = tstream_last_seq(env.conn, "ORDERS");
    int64_t deadline = tnow_ms() + 20000;
    while (jl_projector_checkpoint(dashboard.p) < orders_last && tnow_ms() < deadline)
        nats_Sleep(10);
    ck_assert_uint_eq(jl_projector_checkpoint(dashboard.p), orders_last);

    Jetledger__Rebuild rb = JETLEDGER__REBUILD__INIT;
    Jetledger__RebuildStatus *st = run_admin_job("sales_dashboard", "Rebuild", &rb.base);
    ck_assert_msg(strcmp(st->state, "done") == 0, "rebuild %s: %s", st->state, st->error);
    /* The instance is named by its durable as configured (here none: the projector's name),
     * not by one of its streams' durables ("sales_dashboard_ORDERS"), and answers on it: the
     * name `jetledger --instance` takes. */
    ck_assert_str_eq(st->instance, "sales_dashboard");
    jetledger__rebuild_status__free_unpacked(st, NULL);
    Jetledger__GetRebuildStatus get = JETLEDGER__GET_REBUILD_STATUS__INIT;
    st = tadmin(env.conn, "sales_dashboard.admin.sales_dashboard.GetRebuildStatus", &get.base, NULL,
                NULL, 0);
    ck_assert_str_eq(st->state, "done");
    jetledger__rebuild_status__free_unpacked(st, NULL);
    /* From a time, as a projector of several streams is rebuilt from a point. */
    rb.from_time_ns = (int64_t)before.tv_sec * 1000000000LL + before.tv_nsec;
    st = run_admin_job("sales_dashboard", "Rebuild", &rb.base);
    ck_assert_msg(strcmp(st->state, "done") == 0, "rebuild from a time %s: %s", st->state,
                  st->error);
    jetledger__rebuild_status__free_unpacked(st, NULL);
    rb.from_time_ns = 0;
    Jetledger__Verify v = JETLEDGER__VERIFY__INIT;
    st = run_admin_job("sales_dashboard", "Verify", &v.base);
    ck_assert_msg(strcmp(st->state, "done") == 0 && st->match, "verify %s: %s", st->state,
                  st->error);
    jetledger__rebuild_status__free_unpacked(st, NULL);

    open_inventory();
    register_product("fig", "Fig", 5);
    runner_stop(&dashboard); /* it reads a source found missing again only when started */
    runner_start(&dashboard, &sales_dashboard_projector);
    uint64_t inventory_last = tstream_last_seq(env.conn, "INVENTORY");
    ck_assert_uint_gt(inventory_last, 0);
    deadline = tnow_ms() + 20000;
    while (jl_projector_checkpoint_of(dashboard.p, "INVENTORY") < inventory_last &&
           tnow_ms() < deadline)
        nats_Sleep(10);
    ck_assert_uint_eq(jl_projector_checkpoint_of(dashboard.p, "INVENTORY"), inventory_last);
    st = run_admin_job("sales_dashboard", "Verify", &v.base);
    ck_assert_msg(strcmp(st->state, "done") == 0 && st->match, "verify %s: %s", st->state,
                  st->error);
    jetledger__rebuild_status__free_unpacked(st, NULL);
}
END_TEST

START_TEST(one_order_confirmed_one_cancelled_for_lack_of_stock)
{
    runner_start(&process, &fulfilment_process);
    register_product("apple", "Apple", 10);
    register_product("pear", "Pear", 2);
    char a[JL_UUID_LEN + 1], b[JL_UUID_LEN + 1];
    line la[] = {{"apple", 3, 150}, {"pear", 1, 400}};
    line lb[] = {{"pear", 5, 400}};
    place_order("alice", la, 2, a);
    wait_status(a, "confirmed", 20000);
    place_order("bob", lb, 1, b);
    wait_status(b, "cancelled", 20000);

    /* Inventory: A's reservation committed (taken off the shelf), B's never held stock. */
    expect_stock("apple", 7, 0);
    expect_stock("pear", 1, 0);

    /* The process manager's view of both, once it has read both streams to their ends: A's
     * reservation committed, B cancelled for lack of stock. */
    Fulfilment__GetFulfilment gf = FULFILMENT__GET_FULFILMENT__INIT;
    gf.order_id = a;
    gf.min_sequence = tstream_last_seq(env.conn, "ORDERS");
    jl_code code;
    Fulfilment__GetFulfilmentResult *fr =
        (Fulfilment__GetFulfilmentResult *)query("fulfilment", &gf.base, &code);
    ck_assert_ptr_nonnull(fr);
    protobuf_c_message_free_unpacked(&fr->base, NULL);
    gf.min_sequence = tstream_last_seq(env.conn, "INVENTORY");
    gf.min_sequence_stream = "INVENTORY";
    fr = (Fulfilment__GetFulfilmentResult *)query("fulfilment", &gf.base, &code);
    ck_assert_ptr_nonnull(fr);
    ck_assert_str_eq(fr->step, "committed");
    protobuf_c_message_free_unpacked(&fr->base, NULL);
    gf.order_id = b;
    fr = (Fulfilment__GetFulfilmentResult *)query("fulfilment", &gf.base, &code);
    ck_assert_ptr_nonnull(fr);
    ck_assert_str_eq(fr->step, "cancelled_out_of_stock");
    ck_assert_msg(strstr(fr->reason, "insufficient stock for sku pear") != NULL, "%s", fr->reason);
    protobuf_c_message_free_unpacked(&fr->base, NULL);

    /* Dashboard: counts by status, and the sales of the confirmed order only. */
    Dashboard__OrderCounts oc = DASHBOARD__ORDER_COUNTS__INIT;
    oc.min_sequence = tstream_last_seq(env.conn, "ORDERS");
    Dashboard__OrderCountsResult *cr =
        (Dashboard__OrderCountsResult *)query("sales_dashboard", &oc.base, &code);
    ck_assert_ptr_nonnull(cr);
    ck_assert_int_eq(cr->confirmed, 1);
    ck_assert_int_eq(cr->cancelled, 1);
    protobuf_c_message_free_unpacked(&cr->base, NULL);
    Dashboard__TopProducts tp = DASHBOARD__TOP_PRODUCTS__INIT;
    tp.min_sequence = tstream_last_seq(env.conn, "INVENTORY");
    tp.min_sequence_stream = "INVENTORY";
    uint64_t at = 0;
    Dashboard__TopProductsResult *top =
        (Dashboard__TopProductsResult *)query_seq("sales_dashboard", &tp.base, &code, &at);
    ck_assert_ptr_nonnull(top);
    /* The answer says how far it is in the stream asked about, not in the first one. */
    ck_assert_uint_ge(at, tp.min_sequence);
    ck_assert_uint_le(at, tstream_last_seq(env.conn, "INVENTORY"));
    ck_assert_uint_eq(top->n_products, 2);
    ck_assert_str_eq(top->products[0]->sku, "apple");
    ck_assert_str_eq(top->products[0]->name, "Apple");
    ck_assert_int_eq(top->products[0]->units, 3);
    ck_assert_int_eq(top->products[0]->revenue_cents, 450);
    ck_assert_str_eq(top->products[1]->sku, "pear");
    ck_assert_int_eq(top->products[1]->units, 1);
    protobuf_c_message_free_unpacked(&top->base, NULL);
}
END_TEST

/* Units and revenue per sku of confirmed orders, computed from the ORDERS stream itself. */
typedef struct sales {
    char sku[16][32];
    int64_t units[16], revenue[16];
    int n;
} sales;

static void add_sale(sales *s, const char *sku, int64_t units, int64_t revenue)
{
    int i = 0;
    while (i < s->n && strcmp(s->sku[i], sku) != 0)
        i++;
    if (i == s->n)
        snprintf(s->sku[s->n++], sizeof(s->sku[0]), "%s", sku);
    s->units[i] += units;
    s->revenue[i] += revenue;
}

static void sales_from_stream(sales *out)
{
    /* Lines of placed orders, counted when the order is confirmed. */
    static char ids[256][JL_UUID_LEN + 1];
    static Orders__OrderPlaced *placed[256];
    int n = 0;
    natsSubscription *sub = NULL;
    jsSubOptions so;
    jsSubOptions_Init(&so);
    so.Stream = "ORDERS";
    so.Ordered = true;
    ck_assert_int_eq(
        js_SubscribeSync(&sub, jl_conn_js(env.conn), "orders.events.>", NULL, &so, NULL), NATS_OK);
    uint64_t last = tstream_last_seq(env.conn, "ORDERS"), seq = 0;
    memset(out, 0, sizeof(*out));
    while (seq < last) {
        natsMsg *m = NULL;
        ck_assert_int_eq(natsSubscription_NextMsg(&m, sub, 5000), NATS_OK);
        jsMsgMetaData *meta = NULL;
        natsMsg_GetMetaData(&meta, m);
        seq = meta->Sequence.Stream;
        jsMsgMetaData_Destroy(meta);
        jl_commit *c = NULL;
        char why[256];
        ck_assert_int_eq(jl_commit_decode(&c, natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m),
                                          seq, why, sizeof(why)),
                         JL_OK);
        for (size_t i = 0; i < jl_commit_count(c); i++) {
            jl_event ev;
            ck_assert_int_eq(jl_commit_event(c, i, NULL, &ev, why, sizeof(why)), JL_OK);
            if (strcmp(ev.event_type, "orders.OrderPlaced") == 0 && n < 256) {
                const Orders__OrderPlaced *p = (const Orders__OrderPlaced *)ev.payload;
                size_t len = protobuf_c_message_get_packed_size(&p->base);
                uint8_t *buf = malloc(len + 1);
                protobuf_c_message_pack(&p->base, buf);
                placed[n] = orders__order_placed__unpack(NULL, len, buf);
                free(buf);
                snprintf(ids[n++], JL_UUID_LEN + 1, "%s", ev.aggregate_id);
            } else if (strcmp(ev.event_type, "orders.OrderConfirmed") == 0) {
                for (int k = 0; k < n; k++) {
                    if (strcmp(ids[k], ev.aggregate_id) != 0)
                        continue;
                    for (size_t l = 0; l < placed[k]->n_lines; l++)
                        add_sale(out, placed[k]->lines[l]->sku, placed[k]->lines[l]->quantity,
                                 placed[k]->lines[l]->quantity *
                                     placed[k]->lines[l]->unit_price_cents);
                }
            }
        }
        jl_commit_free(c);
        natsMsg_Destroy(m);
    }
    for (int k = 0; k < n; k++)
        orders__order_placed__free_unpacked(placed[k], NULL);
    jl_conn_sub_destroy(env.conn, sub);
}

START_TEST(dashboard_equals_the_sales_computed_from_the_streams)
{
    runner_start(&process, &fulfilment_process);
    register_product("apple", "Apple", 50);
    register_product("pear", "Pear", 5);
    register_product("plum", "Plum", 20);
    char id[JL_UUID_LEN + 1];
    for (int i = 0; i < 8; i++) {
        line l[] = {{"apple", 1 + i % 3, 150}, {i % 2 ? "pear" : "plum", 2, 99 + i}};
        place_order("many", l, 2, id);
    }
    /* Wait for the process manager to settle every order. */
    int64_t deadline = tnow_ms() + 30000;
    for (;;) {
        Dashboard__OrderCounts oc = DASHBOARD__ORDER_COUNTS__INIT;
        oc.min_sequence = tstream_last_seq(env.conn, "ORDERS");
        jl_code code;
        Dashboard__OrderCountsResult *cr =
            (Dashboard__OrderCountsResult *)query("sales_dashboard", &oc.base, &code);
        bool settled = cr != NULL && cr->confirmed + cr->cancelled == 8;
        if (cr != NULL)
            protobuf_c_message_free_unpacked(&cr->base, NULL);
        if (settled)
            break;
        ck_assert_msg(tnow_ms() < deadline, "orders not settled");
        nats_Sleep(100);
    }
    sales want;
    sales_from_stream(&want);
    ck_assert_int_gt(want.n, 0);
    /* The products' names come from the other stream: the dashboard has applied it first. */
    Dashboard__TopProducts tp = DASHBOARD__TOP_PRODUCTS__INIT;
    tp.min_sequence = tstream_last_seq(env.conn, "INVENTORY");
    tp.min_sequence_stream = "INVENTORY";
    jl_code code;
    Dashboard__TopProductsResult *top =
        (Dashboard__TopProductsResult *)query("sales_dashboard", &tp.base, &code);
    ck_assert_ptr_nonnull(top);
    protobuf_c_message_free_unpacked(&top->base, NULL);
    tp.min_sequence = tstream_last_seq(env.conn, "ORDERS");
    tp.min_sequence_stream = "";
    tp.limit = 100;
    top = (Dashboard__TopProductsResult *)query("sales_dashboard", &tp.base, &code);
    ck_assert_ptr_nonnull(top);
    ck_assert_uint_eq(top->n_products, (size_t)want.n);
    for (size_t i = 0; i < top->n_products; i++) {
        const char *sku = top->products[i]->sku;
        ck_assert_str_eq(top->products[i]->name, strcmp(sku, "apple") == 0  ? "Apple"
                                                 : strcmp(sku, "pear") == 0 ? "Pear"
                                                                            : "Plum");
        int k = 0;
        while (k < want.n && strcmp(want.sku[k], top->products[i]->sku) != 0)
            k++;
        ck_assert_int_lt(k, want.n);
        ck_assert_int_eq(top->products[i]->units, want.units[k]);
        ck_assert_int_eq(top->products[i]->revenue_cents, want.revenue[k]);
    }
    protobuf_c_message_free_unpacked(&top->base, NULL);
}
END_TEST

/* ---- the process manager killed at each step ---- */

/* The process manager as a process (build/bin/fulfilment) with its data in @p dir, killing
 * itself at @p fault_point (NULL: none); with @p tmpfs_size, @p dir is a tmpfs of that size in
 * a mount namespace of its own. */
static pid_t spawn_process_in(const char *fault_point, const char *log, const char *dir,
                              const char *tmpfs_size)
{
    char path[PATH_MAX], e_url[1100], e_dir[600], e_fault[128];
    const char *bindir = getenv("JL_BIN_DIR");
    ck_assert_ptr_nonnull(bindir);
    snprintf(path, sizeof(path), "%s/fulfilment", bindir);
    snprintf(e_url, sizeof(e_url), "NATS_URL=%s", env.cfg.nats_url);
    snprintf(e_dir, sizeof(e_dir), "JL_DATA_DIR=%s", dir);
    snprintf(e_fault, sizeof(e_fault), "JL_FAULT_POINT=%s", fault_point ? fault_point : "");
    const char *const envv[] = {
        e_url, e_dir, e_fault, "JL_FAULT_AFTER=1", "JL_DURABLE=", "JL_LOG_LEVEL=info", NULL};
    const char *const argv[] = {path, NULL};
    pid_t pid = 0;
    int rc = tmpfs_size != NULL ? jl_proc_spawn_tmpfs(&pid, argv, envv, log, dir, tmpfs_size)
                                : jl_proc_spawn(&pid, argv, envv, log);
    ck_assert_msg(rc == 0, "spawn: %s", strerror(errno));
    return pid;
}

static pid_t spawn_process(const char *fault_point, const char *log)
{
    char dir[600];
    snprintf(dir, sizeof(dir), "%s/pm", env.dir);
    return spawn_process_in(fault_point, log, dir, NULL);
}

START_TEST(process_manager_killed_at_each_step_reserves_once)
{
    /* Decided (its row in the batch's transaction), not committed; committed, not sent; sent,
     * its reply not recorded. Each checked in the file the process manager left. */
    static const char *const points[] = {"outbox.added", "outbox.before_send", "outbox.after_send"};
    char log[600];
    snprintf(log, sizeof(log), "%s/fulfilment.log", env.dir);
    register_product("apple", "Apple", 100);
    int64_t expect_on_hand = 100;
    for (size_t k = 0; k < sizeof(points) / sizeof(points[0]); k++) {
        pid_t pid = spawn_process(points[k], log);
        char id[JL_UUID_LEN + 1];
        line l[] = {{"apple", 2 + (int)k, 150}};
        place_order("crash", l, 1, id);
        int status = 0;
        /* It dies at that point... */
        ck_assert_int_eq(jl_proc_stop(pid, 0, 20000, &status), 0);
        ck_assert_msg(status == 137, "the process manager did not die at %s (status %d)", points[k],
                      status);
        char path[1024], dir[700], sql[300];
        snprintf(dir, sizeof(dir), "%s/pm", env.dir);
        tlive_file(dir, "fulfilment", path, sizeof(path));
        snprintf(sql, sizeof(sql),
                 "SELECT count(*), count(replied_at_ns) FROM jl_outbox WHERE order_key = "
                 "lower('%s') AND command = 'ReserveStock'",
                 id);
        sqlite3_stmt *st = tdb_row(path, sql);
        ck_assert_int_eq(sqlite3_column_int(st, 0), k == 0 ? 0 : 1); /* rolled back, or kept */
        ck_assert_int_eq(sqlite3_column_int(st, 1), 0);              /* no reply recorded */
        tdb_done(st);
        printf("killed the process manager at %s; restarting it\n", points[k]);
        /* ...and, restarted, finishes the work exactly once. */
        pid = spawn_process(NULL, log);
        wait_status(id, "confirmed", 30000);
        expect_on_hand -= 2 + (int64_t)k;
        expect_stock("apple", expect_on_hand, 0);
        char needle[64];
        snprintf(needle, sizeof(needle), "\"order_id\":\"%s\"", id);
        ck_assert_int_eq(tcount_events(env.conn, "INVENTORY", "inventory.events.>",
                                       "inventory.StockReserved", needle),
                         1);
        ck_assert_int_eq(tcount_events(env.conn, "INVENTORY", "inventory.events.>",
                                       "inventory.ReservationCommitted", needle),
                         1);
        ck_assert_int_eq(
            tcount_events(env.conn, "ORDERS", "orders.events.>", "orders.OrderConfirmed", needle),
            1);
        ck_assert_int_eq(jl_proc_stop(pid, SIGTERM, 10000, &status), 0);
        ck_assert_int_eq(status, 0);
    }
}
END_TEST

/* Whether the file at @p path contains @p needle. */
static bool file_mentions(const char *path, const char *needle)
{
    FILE *f = fopen(path, "r");
    char text[4096];
    bool found = false;
    while (f != NULL && !found && fgets(text, sizeof(text), f) != NULL)
        found = strstr(text, needle) != NULL;
    if (f != NULL)
        fclose(f);
    return found;
}

/* Wait until @p stream holds @p want events of @p type; false after 60 s. */
static bool wait_events(const char *stream, const char *filter, const char *type, int want)
{
    int64_t deadline = tnow_ms() + 60000;
    while (tcount_events(env.conn, stream, filter, type, NULL) < want) {
        if (tnow_ms() >= deadline)
            return false;
        nats_Sleep(250);
    }
    return true;
}

START_TEST(a_full_disk_holds_the_process_manager_and_loses_no_step)
{
    /* The disk under the process manager's database fills while orders keep being placed: it
     * cannot commit its decisions, and must neither send what it could not commit nor lose a
     * step. Once there is room it carries every order through, each step exactly once. */
    char dir[600], log[700];
    snprintf(dir, sizeof(dir), "%s/pm-small", env.dir);
    snprintf(log, sizeof(log), "%s/fulfilment-full.log", env.dir);
    ck_assert_int_eq(mkdir(dir, 0755), 0);
    register_product("apple", "Apple", 1000000);
    pid_t pid = spawn_process_in(NULL, log, dir, "400k");
    line l[] = {{"apple", 1, 150}};
    char id[JL_UUID_LEN + 1];
    int placed = 0;
    int64_t deadline = tnow_ms() + 90000;
    while (!file_mentions(log, "JL_ERR_DISK_FULL")) {
        ck_assert_msg(tnow_ms() < deadline && placed < 3000, "the disk never filled (%d orders)",
                      placed);
        place_order("full", l, 1, id);
        placed++;
    }
    int full_at = placed;
    for (int i = 0; i < 10; i++, placed++) /* more while it is full */
        place_order("full", l, 1, id);
    nats_Sleep(1000);
    int reserved =
        tcount_events(env.conn, "INVENTORY", "inventory.events.>", "inventory.StockReserved", NULL);
    ck_assert_int_lt(reserved, placed); /* held: the last ones were not decided */
    printf("process manager on a 400 KiB tmpfs: full after %d orders; %d of %d reserved\n", full_at,
           reserved, placed);
    /* The steps left (each of the three commands an order needs, not yet taken effect), and
     * the commands the services have handled so far: what comes after the resize is those
     * steps, and again at most the few that were sent while their replies could not be
     * recorded, not every step sent once more. (Counted first: whatever is handled while the
     * events are counted is then in both.) */
    uint64_t before = commands_handled();
    int confirmed =
        tcount_events(env.conn, "ORDERS", "orders.events.>", "orders.OrderConfirmed", NULL);
    int committed = tcount_events(env.conn, "INVENTORY", "inventory.events.>",
                                  "inventory.ReservationCommitted", NULL);
    reserved =
        tcount_events(env.conn, "INVENTORY", "inventory.events.>", "inventory.StockReserved", NULL);
    uint64_t left = (uint64_t)(3 * placed - reserved - confirmed - committed);

    ck_assert_int_eq(jl_tmpfs_resize(pid, dir, "64m"), 0);
    ck_assert_msg(wait_events("ORDERS", "orders.events.>", "orders.OrderConfirmed", placed),
                  "not every order was confirmed once there was room");
    ck_assert(
        wait_events("INVENTORY", "inventory.events.>", "inventory.ReservationCommitted", placed));
    nats_Sleep(1000); /* a step sent twice would show now */
    ck_assert_int_eq(
        tcount_events(env.conn, "INVENTORY", "inventory.events.>", "inventory.StockReserved", NULL),
        placed);
    ck_assert_int_eq(tcount_events(env.conn, "INVENTORY", "inventory.events.>",
                                   "inventory.ReservationCommitted", NULL),
                     placed);
    ck_assert_int_eq(
        tcount_events(env.conn, "ORDERS", "orders.events.>", "orders.OrderConfirmed", NULL),
        placed);
    expect_stock("apple", 1000000 - placed, 0);
    uint64_t sent = commands_handled() - before;
    printf("grown to 64 MiB: %d orders confirmed, each reserved, committed and confirmed once; "
           "%" PRIu64 " commands for the %" PRIu64 " steps left\n",
           placed, sent, left);
    ck_assert_uint_ge(sent, left);
    ck_assert_msg(sent <= left + 10, "%" PRIu64 " commands for %" PRIu64 " steps left", sent, left);
    int status = 0;
    ck_assert_int_eq(jl_proc_stop(pid, SIGTERM, 10000, &status), 0);
    ck_assert_int_eq(status, 0);
}
END_TEST

START_TEST(same_reservation_command_to_two_replicas_has_one_effect)
{
    register_product("apple", "Apple", 10);
    jl_conn *c2 = tenv_connect(&env);
    jl_producer *second = NULL;
    char err[512];
    ck_assert_int_eq(jl_producer_open(&second, c2, &inventory_service, &env.cfg, err, sizeof(err)),
                     JL_OK);
    char rid[JL_UUID_LEN + 1], oid[JL_UUID_LEN + 1];
    jl_uuid_new(rid);
    jl_uuid_new(oid);
    Inventory__ReservationLine ln = INVENTORY__RESERVATION_LINE__INIT;
    Inventory__ReservationLine *lines[] = {&ln};
    ln.sku = "apple";
    ln.quantity = 4;
    Inventory__ReserveStock rs = INVENTORY__RESERVE_STOCK__INIT;
    rs.reservation_id = rid;
    rs.order_id = oid;
    rs.n_lines = 1;
    rs.lines = lines;
    uint8_t buf[512];
    size_t n = inventory__reserve_stock__pack(&rs, buf);
    jl_reply r1, r2;
    jl_reply_init(&r1);
    jl_reply_init(&r2);
    jl_producer_handle(inventory_p, "ReserveStock", buf, n, "two-replicas-1", NULL, NULL, &r1);
    jl_producer_handle(second, "ReserveStock", buf, n, "two-replicas-1", NULL, NULL, &r2);
    ck_assert_int_eq(r1.code, JL_CODE_OK);
    ck_assert_int_eq(r2.code, JL_CODE_OK);
    ck_assert(r2.duplicate);
    ck_assert_uint_eq(r1.stream_seq, r2.stream_seq);
    expect_stock("apple", 10, 4);
    char needle[64];
    snprintf(needle, sizeof(needle), "\"reservation_id\":\"%s\"", rid);
    ck_assert_int_eq(tcount_events(env.conn, "INVENTORY", "inventory.events.>",
                                   "inventory.StockReserved", needle),
                     1);
    jl_reply_cleanup(&r1);
    jl_reply_cleanup(&r2);
    jl_producer_close(second, 1000);
    jl_conn_close(c2, 0);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("fulfilment");
    TCase *tc = tcase_create("fulfilment");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 240);
    tcase_add_test(tc, one_order_confirmed_one_cancelled_for_lack_of_stock);
    tcase_add_test(tc, a_command_answered_not_now_is_sent_again);
    tcase_add_test(tc, a_row_without_a_key_answered_not_now_is_reported_as_holding_the_rest);
    tcase_add_test(tc, a_reservation_overtaken_by_a_cancellation_is_withdrawn);
    tcase_add_test(tc, an_undecodable_reply_is_sent_again_and_a_refusal_is_final);
    tcase_add_test(tc, an_operator_lists_the_outbox_and_dismisses_a_refusal);
    tcase_add_test(tc, a_command_answered_internal_is_sent_again_until_decided);
    tcase_add_test(tc, a_reservation_answered_not_now_holds_back_only_its_own_order);
    tcase_add_test(tc, a_refusal_its_handler_cannot_take_holds_back_only_its_own_order);
    tcase_add_test(tc, a_command_without_a_reply_is_counted_and_does_not_hold_up_a_stop);
    tcase_add_test(tc, an_empty_reply_is_not_taken_for_an_acceptance);
    tcase_add_test(tc, a_command_without_a_reply_waits_its_backoff_whatever_commits_meanwhile);
    tcase_add_test(tc, answered_outbox_rows_are_deleted_after_the_keep_time);
    tcase_add_test(tc, a_rebuilt_process_manager_keeps_its_outbox_and_sends_nothing_again);
    tcase_add_test(tc, a_rebuild_reads_a_second_stream_made_only_later);
    tcase_add_test(tc, dashboard_equals_the_sales_computed_from_the_streams);
    tcase_add_test(tc, process_manager_killed_at_each_step_reserves_once);
    tcase_add_test(tc, a_full_disk_holds_the_process_manager_and_loses_no_step);
    tcase_add_test(tc, same_reservation_command_to_two_replicas_has_one_effect);
    suite_add_tcase(s, tc);
    return trun(s);
}
