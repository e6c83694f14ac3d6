#include "support.h"

#include <check.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "jetledger/json.h"
#include "jetledger/log.h"
#include "jetledger/admin.pb-c.h"
#include "orders/orders.pb-c.h"

/* At exit, the client library's threads are let finish first: each connection holds an
 * OpenSSL context (expected host name), which a library thread freeing a connection at exit
 * would free after OpenSSL's own exit handler cleaned up (a crash under ASan). Registered
 * after the first connection, so it runs before OpenSSL's handler (registered by then). */
static void release_library_at_exit(void)
{
    jl_conn_release_library(2000);
}

static void register_release(void)
{
    atexit(release_library_at_exit);
}

void tenv_start(tenv *e)
{
    tenv_start_with(e, NULL);
}

void tenv_start_with(tenv *e, const char *extra_config)
{
    char err[1024] = "";
    jl_natsd_opts o;
    memset(e, 0, sizeof(*e));
    jl_natsd_opts_init(&o);
    o.extra_config = extra_config;
    o.err_buf = err;
    o.err_buf_len = sizeof(err);
    ck_assert_msg(jl_natsd_start(&e->natsd, &o) == 0, "nats-server: %s", err);
    ck_assert_int_eq(jl_tmpdir(e->dir, sizeof(e->dir)), 0);
    jl_config_init(&e->cfg);
    snprintf(e->cfg.nats_url, sizeof(e->cfg.nats_url), "%s", jl_natsd_url(e->natsd));
    snprintf(e->cfg.data_dir, sizeof(e->cfg.data_dir), "%s/data", e->dir);
    e->cfg.request_timeout_ms = 5000;
    if (getenv("JL_TEST_LOG") != NULL)
        jl_log_open(stderr, JL_LOG_DEBUG, "test");
    e->conn = tenv_connect(e);
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, register_release);
}

jl_conn *tenv_connect(tenv *e)
{
    jl_conn *c = NULL;
    char err[1024] = "";
    jl_status s = jl_conn_open(&c, &e->cfg, "test", 5000, err, sizeof(err));
    ck_assert_msg(s == JL_OK, "connect: %s", err);
    return c;
}

void tenv_stop(tenv *e)
{
    jl_conn_close(e->conn, 0);
    e->conn = NULL;
    jl_natsd_destroy(e->natsd);
    e->natsd = NULL;
    if (e->dir[0] != 0 && getenv("JL_TEST_KEEP") == NULL)
        jl_rm_rf(e->dir);
}

natsStatus tsend_raw(jl_conn *c, const char *subject, const void *data, size_t len, jl_reply *out)
{
    natsMsg *rep = NULL;
    natsStatus ns = natsConnection_Request(&rep, jl_conn_nats(c), subject, data, (int)len, 10000);
    if (ns == NATS_OK) {
        jl_status s =
            jl_reply_decode(out, natsMsg_GetData(rep), (size_t)natsMsg_GetDataLength(rep));
        ck_assert_msg(s == JL_OK, "reply on %s is not a jetledger.Reply", subject);
    }
    natsMsg_Destroy(rep);
    return ns;
}

Jetledger__RebuildStatus *tadmin(jl_conn *c, const char *subject, const ProtobufCMessage *m,
                                 jl_code *out_code, char *out_msg, size_t n)
{
    uint8_t buf[256];
    size_t len = m != NULL ? protobuf_c_message_get_packed_size(m) : 0;
    ck_assert_uint_le(len, sizeof(buf));
    if (m != NULL)
        protobuf_c_message_pack(m, buf);
    jl_reply r;
    jl_reply_init(&r);
    ck_assert_int_eq(tsend_raw(c, subject, buf, len, &r), NATS_OK);
    if (out_code == NULL)
        ck_assert_msg(r.code == JL_CODE_OK, "%s: %s", subject, r.message);
    else
        *out_code = r.code;
    if (out_msg != NULL)
        snprintf(out_msg, n, "%s", r.message);
    Jetledger__RebuildStatus *st = NULL;
    if (r.code == JL_CODE_OK) {
        st = jetledger__rebuild_status__unpack(NULL, r.result.len, r.result.data);
        ck_assert_ptr_nonnull(st);
    }
    jl_reply_cleanup(&r);
    return st;
}

natsStatus tsend(jl_conn *c, const char *service, bool query, const ProtobufCMessage *msg,
                 const char *command_id, jl_reply *out)
{
    char subject[256];
    size_t len = protobuf_c_message_get_packed_size(msg);
    uint8_t *body = malloc(len + 1);
    natsMsg *req = NULL, *rep = NULL;
    protobuf_c_message_pack(msg, body);
    snprintf(subject, sizeof(subject), "%s.%s.%s", service, query ? "query" : "cmd",
             msg->descriptor->short_name);
    natsStatus ns = natsMsg_Create(&req, subject, NULL, (const char *)body, (int)len);
    if (ns == NATS_OK && command_id != NULL)
        ns = natsMsgHeader_Set(req, "Jl-Command-Id", command_id);
    if (ns == NATS_OK)
        ns = natsConnection_RequestMsg(&rep, jl_conn_nats(c), req, 10000);
    if (ns == NATS_OK) {
        jl_status s =
            jl_reply_decode(out, natsMsg_GetData(rep), (size_t)natsMsg_GetDataLength(rep));
        ck_assert_msg(s == JL_OK, "reply on %s is not a jetledger.Reply", subject);
    }
    natsMsg_Destroy(req);
    natsMsg_Destroy(rep);
    free(body);
    return ns;
}

jl_code torder_state(jl_conn *c, const char *id, uint64_t at_seq, int64_t at_time_ns,
                     uint64_t at_version, Orders__OrderState **out_state, uint64_t *out_version)
{
    Jetledger__GetState q = JETLEDGER__GET_STATE__INIT;
    q.aggregate_id = (char *)id;
    q.at_seq = at_seq;
    q.at_time_ns = at_time_ns;
    q.at_version = at_version;
    jl_reply r;
    jl_reply_init(&r);
    ck_assert_int_eq(tsend(c, "orders", true, &q.base, NULL, &r), NATS_OK);
    jl_code code = r.code;
    if (code == JL_CODE_OK) {
        ck_assert_str_eq(r.result_type, "jetledger.StateResult");
        Jetledger__StateResult *res =
            jetledger__state_result__unpack(NULL, r.result.len, r.result.data);
        ck_assert_ptr_nonnull(res);
        ck_assert_str_eq(res->state_type, "orders.OrderState");
        *out_version = res->version;
        *out_state = orders__order_state__unpack(NULL, res->state.len, res->state.data);
        ck_assert_ptr_nonnull(*out_state);
        jetledger__state_result__free_unpacked(res, NULL);
    }
    jl_reply_cleanup(&r);
    return code;
}

uint64_t tstream_msgs(jl_conn *c, const char *stream)
{
    jsStreamInfo *si = NULL;
    uint64_t n = 0;
    if (js_GetStreamInfo(&si, jl_conn_js(c), stream, NULL, NULL) == NATS_OK) {
        n = si->State.Msgs;
        jsStreamInfo_Destroy(si);
    }
    return n;
}

void tlive_file(const char *dir, const char *proj, char *out, size_t n)
{
    char ptr[700], name[256];
    snprintf(name, sizeof(name), "%s.db", proj);
    snprintf(ptr, sizeof(ptr), "%s/%s.current", dir, proj);
    FILE *f = fopen(ptr, "r");
    if (f != NULL) {
        if (fgets(name, sizeof(name), f) == NULL)
            snprintf(name, sizeof(name), "%s.db", proj);
        name[strcspn(name, "\n")] = 0;
        fclose(f);
    }
    snprintf(out, n, "%s/%s", dir, name);
}

sqlite3_stmt *tdb_row(const char *path, const char *sql)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    ck_assert_msg(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK, "%s", path);
    sqlite3_busy_timeout(db, 5000);
    ck_assert_msg(sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK, "%s: %s", sql,
                  sqlite3_errmsg(db));
    ck_assert_msg(sqlite3_step(st) == SQLITE_ROW, "%s: no row in %s", sql, path);
    return st;
}

int64_t tdb_int(const char *path, const char *sql)
{
    sqlite3_stmt *st = tdb_row(path, sql);
    int64_t v = sqlite3_column_int64(st, 0);
    tdb_done(st);
    return v;
}

void tdb_exec(const char *path, const char *sql)
{
    sqlite3 *db = NULL;
    char *msg = NULL;
    ck_assert_msg(sqlite3_open(path, &db) == SQLITE_OK, "%s", path);
    sqlite3_busy_timeout(db, 5000);
    ck_assert_msg(sqlite3_exec(db, sql, NULL, NULL, &msg) == SQLITE_OK, "%s: %s", sql, msg);
    sqlite3_close(db);
}

void tdb_done(sqlite3_stmt *st)
{
    sqlite3 *db = sqlite3_db_handle(st);
    sqlite3_finalize(st);
    sqlite3_close(db);
}

char *tdump(const char *db_path)
{
    jl_db *db = NULL;
    jl_buf b;
    char err[512];
    jl_buf_init(&b, 256 * 1024 * 1024);
    ck_assert_msg(jl_db_open(&db, db_path, true, err, sizeof(err)) == JL_OK, "%s", err);
    ck_assert_msg(jl_db_dump(db, &b) == JL_OK, "dump: %s", jl_db_errmsg(db));
    jl_db_close(db);
    char *text = strdup(jl_buf_str(&b));
    jl_buf_cleanup(&b);
    return text;
}

int64_t tnow_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Append @p n orders, each one commit of OrderCreated + @p items ItemAdded: all of them, or
 * the test fails (an asynchronous publish the stream refuses says so only in its ack). */
void tseed_orders(jl_conn *conn, int n, int items)
{
    jsCtx *js = jl_conn_js(conn);
    uint64_t before = tstream_last_seq(conn, "ORDERS");
    jl_decision d;
    jl_buf b;
    jl_decision_init(&d);
    jl_buf_init(&b, 1 << 20);
    jsPubOptions po;
    jsPubOptions_Init(&po);
    for (int i = 0; i < n; i++) {
        char id[JL_UUID_LEN + 1], first[JL_UUID_LEN + 1], subject[128], sku[16];
        jl_uuid_new(id);
        jl_decision_reset(&d);
        Orders__OrderCreated c = ORDERS__ORDER_CREATED__INIT;
        c.order_id = id;
        c.customer_id = "seed";
        jl_decision_emit(&d, &c.base);
        for (int k = 0; k < items; k++) {
            Orders__ItemAdded a = ORDERS__ITEM_ADDED__INIT;
            snprintf(sku, sizeof(sku), "sku-%d", k);
            a.order_id = id;
            a.sku = sku;
            a.quantity = 1 + k;
            a.unit_price_cents = 100 + i % 7;
            jl_decision_emit(&d, &a.base);
        }
        jl_commit_meta meta = {.aggregate_type = "order",
                               .aggregate_id = id,
                               .command_id = "seed",
                               .first_version = 1,
                               .occurred_at_ns = 1700000000000000000LL + i};
        ck_assert_int_eq(jl_commit_encode(&b, first, &meta, &d), JL_OK);
        snprintf(subject, sizeof(subject), "orders.events.order.%s", id);
        natsStatus ns;
        while ((ns = js_PublishAsync(js, subject, b.data, (int)b.len, &po)) == NATS_TIMEOUT)
            ;
        ck_assert_int_eq(ns, NATS_OK);
    }
    jsPubOptions_Init(&po);
    po.MaxWait = 30000;
    ck_assert_int_eq(js_PublishAsyncComplete(js, &po), NATS_OK);
    jl_buf_cleanup(&b);
    jl_decision_cleanup(&d);
    uint64_t after = tstream_last_seq(conn, "ORDERS");
    ck_assert_msg(after - before >= (uint64_t)n, "%" PRIu64 " of %d seeded orders stored",
                  after - before, n);
}

uint64_t tstream_last_seq(jl_conn *c, const char *stream)
{
    jsStreamInfo *si = NULL;
    ck_assert_int_eq(js_GetStreamInfo(&si, jl_conn_js(c), stream, NULL, NULL), NATS_OK);
    uint64_t last = si->State.LastSeq;
    jsStreamInfo_Destroy(si);
    return last;
}

int trun(Suite *s)
{
    char root[256];
    /* One root for every temp dir of the suite (servers' stores included): a fork-mode test
     * that fails skips its teardown, and this removes what it left. */
    if (jl_tmpdir(root, sizeof(root)) != 0) {
        perror("temp dir");
        return 1;
    }
    setenv("TMPDIR", root, 1);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    if (getenv("JL_TEST_KEEP") == NULL)
        jl_rm_rf(root);
    else
        fprintf(stderr, "kept %s\n", root);
    return failed == 0 ? 0 : 1;
}

int tcount_events(jl_conn *c, const char *stream, const char *filter, const char *type,
                  const char *needle)
{
    natsSubscription *sub = NULL;
    jsSubOptions so;
    jsSubOptions_Init(&so);
    so.Stream = stream;
    so.Ordered = true;
    ck_assert_int_eq(js_SubscribeSync(&sub, jl_conn_js(c), filter, NULL, &so, NULL), NATS_OK);
    uint64_t last = tstream_last_seq(c, stream), seq = 0;
    int n = 0;
    while (seq < last) {
        natsMsg *m = NULL;
        ck_assert_int_eq(natsSubscription_NextMsg(&m, sub, 5000), NATS_OK);
        jsMsgMetaData *meta = NULL;
        ck_assert_int_eq(natsMsg_GetMetaData(&meta, m), NATS_OK);
        seq = meta->Sequence.Stream;
        jsMsgMetaData_Destroy(meta);
        jl_commit *cm = NULL;
        char why[256];
        if (jl_commit_decode(&cm, natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m), seq, why,
                             sizeof(why)) == JL_OK) {
            for (size_t i = 0; i < jl_commit_count(cm); i++) {
                jl_event ev;
                jl_buf b;
                jl_buf_init(&b, 1 << 20);
                if (jl_commit_event(cm, i, NULL, &ev, why, sizeof(why)) == JL_OK &&
                    strcmp(ev.event_type, type) == 0 && jl_pb_to_json(&b, ev.payload) == JL_OK &&
                    (needle == NULL || strstr(jl_buf_str(&b), needle) != NULL))
                    n++;
                jl_buf_cleanup(&b);
            }
            jl_commit_free(cm);
        }
        natsMsg_Destroy(m);
    }
    jl_conn_sub_destroy(c, sub);
    return n;
}

FILE *tlog_capture(void)
{
    FILE *log = tmpfile();
    ck_assert_ptr_nonnull(log);
    jl_log_open(log, JL_LOG_WARN, "test");
    return log;
}

void tlog_read(FILE *log, char *out, size_t n)
{
    jl_log_open(NULL, JL_LOG_OFF, NULL);
    rewind(log);
    out[fread(out, 1, n - 1, log)] = 0;
    fclose(log);
}

int tlines_with(const char *text, const char *a, const char *b)
{
    int n = 0;
    for (const char *l = text; *l != 0;) {
        const char *end = strchr(l, '\n');
        size_t len = end != NULL ? (size_t)(end - l) : strlen(l);
        const char *fa = strstr(l, a), *fb = strstr(l, b);
        n += fa != NULL && fa < l + len && fb != NULL && fb < l + len;
        l += len + (end != NULL);
    }
    return n;
}

Jetledger__CommandRecord *tcommand_record(jl_conn *c, const char *bucket, const char *cmd_id,
                                          char *key_out)
{
    kvStore *kv = NULL;
    Jetledger__CommandRecord *found = NULL;
    if (js_KeyValue(&kv, jl_conn_js(c), bucket) != NATS_OK)
        return NULL;
    kvKeysList keys = {0};
    if (kvStore_Keys(&keys, kv, NULL) == NATS_OK) {
        for (int i = 0; i < keys.Count && found == NULL; i++) {
            kvEntry *e = NULL;
            if (kvStore_Get(&e, kv, keys.Keys[i]) != NATS_OK)
                continue;
            Jetledger__CommandRecord *rec = jetledger__command_record__unpack(
                NULL, (size_t)kvEntry_ValueLen(e), kvEntry_Value(e));
            if (rec != NULL && strcmp(rec->command_id, cmd_id) == 0) {
                found = rec;
                if (key_out != NULL)
                    snprintf(key_out, 64, "%s", keys.Keys[i]);
            } else if (rec != NULL) {
                jetledger__command_record__free_unpacked(rec, NULL);
            }
            kvEntry_Destroy(e);
        }
        kvKeysList_Destroy(&keys);
    }
    kvStore_Destroy(kv);
    return found;
}

void tpublish_raw(jl_conn *c, const char *subject, const void *data, size_t len)
{
    jsPubAck *pa = NULL;
    ck_assert_int_eq(js_Publish(&pa, jl_conn_js(c), subject, data, (int)len, NULL, NULL), NATS_OK);
    jsPubAck_Destroy(pa);
}

void tpublish_commit(jl_conn *c, const char *subject, const char *id,
                     const ProtobufCMessageDescriptor *type, const void *payload, size_t n)
{
    jl_decision d;
    jl_buf b;
    char first[JL_UUID_LEN + 1];
    jl_decision_init(&d);
    jl_buf_init(&b, 1 << 20);
    ck_assert_int_eq(jl_buf_add(&d.bytes, payload, n), JL_OK);
    d.types[0] = type;
    d.offsets[0] = 0;
    d.lens[0] = n;
    d.n_events = 1;
    jl_commit_meta meta = {
        .aggregate_type = "order", .aggregate_id = id, .command_id = "test", .first_version = 1};
    ck_assert_int_eq(jl_commit_encode(&b, first, &meta, &d), JL_OK);
    tpublish_raw(c, subject, b.data, b.len);
    jl_buf_cleanup(&b);
    jl_decision_cleanup(&d);
}
