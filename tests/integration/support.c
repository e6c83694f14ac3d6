#include "support.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "jetledger/log.h"

void tenv_start(tenv *e)
{
    char err[1024] = "";
    jl_natsd_opts o;
    memset(e, 0, sizeof(*e));
    jl_natsd_opts_init(&o);
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
