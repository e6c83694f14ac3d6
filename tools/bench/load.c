/*
 * Commands and queries through the services, as a client sends them: async requests with many
 * in flight (one wildcard inbox subscription, a reply subject per request), and synchronous
 * request-reply.
 */
#include "bench.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jetledger/conn.h"
#include "orders/orders.pb-c.h"

/* A run fails when no reply arrives for this long while requests are in flight. */
#define STALL_MS 30000
#define WAIT_SLICE_MS 100
#define READY_TIMEOUT_MS 30000

enum { SLOT_FREE = 0, SLOT_SENT = 1, SLOT_DONE = 2 };

struct bench_rpc {
    natsConnection *nc;
    natsSubscription *sub;
    char prefix[128]; /* "<inbox>": replies come on "<inbox>.<run>.<i>" */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    /* the current run, guarded by mu */
    uint32_t run;
    size_t n;
    int64_t *sent_ns;
    uint8_t *state;
    bench_series *lat;
    size_t in_flight;
    size_t answered;
    uint64_t ok;
    uint64_t failed;
    uint64_t stray; /* replies to no request of the current run */
    int64_t last_reply_ns;
    char first_error[600];
};

/* Whether a decoded reply means an accepted command; @p why receives the reason if not. */
static bool reply_ok(const jl_reply *r, bool is_command, char *why, size_t n)
{
    if (r->code != JL_CODE_OK) {
        snprintf(why, n, "%s: %.400s", jl_code_str(r->code), r->message);
        return false;
    }
    if (is_command && r->stream_seq == 0) {
        snprintf(why, n, "ok reply without a stream sequence");
        return false;
    }
    return true;
}

/* Decode a reply message; an empty body (no responders, or not a reply at all) is an error, not
 * the all-defaults Reply (whose code would read as ok). */
static jl_status decode_reply(natsMsg *msg, jl_reply *out, char *why, size_t n)
{
    int len = natsMsg_GetDataLength(msg);
    if (natsMsg_IsNoResponders(msg)) {
        snprintf(why, n, "no responders");
        return JL_ERR_UNAVAILABLE;
    }
    if (len <= 0) {
        snprintf(why, n, "empty reply");
        return JL_ERR_DECODE;
    }
    if (jl_reply_decode(out, natsMsg_GetData(msg), (size_t)len) != JL_OK) {
        snprintf(why, n, "reply is not a jetledger.Reply (%d bytes)", len);
        return JL_ERR_DECODE;
    }
    return JL_OK;
}

/* NATS thread: one reply of the current run. */
static void on_reply(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    bench_rpc *r = closure;
    int64_t t = bench_now_ns();
    const char *subject = natsMsg_GetSubject(msg);
    size_t plen = strlen(r->prefix);
    unsigned long run = 0;
    unsigned long long i = 0;
    char why[512] = "";
    jl_reply rep;
    bool good = false;
    (void)nc;
    (void)sub;

    jl_reply_init(&rep);
    if (decode_reply(msg, &rep, why, sizeof(why)) == JL_OK)
        good = reply_ok(&rep, true, why, sizeof(why));
    bool parsed = strncmp(subject, r->prefix, plen) == 0 && subject[plen] == '.' &&
                  sscanf(subject + plen + 1, "%lu.%llu", &run, &i) == 2;
    pthread_mutex_lock(&r->mu);
    if (parsed && run == r->run && r->state != NULL && i < r->n && r->state[i] == SLOT_SENT) {
        r->state[i] = SLOT_DONE;
        r->in_flight--;
        r->answered++;
        r->last_reply_ns = t;
        /* A latency is an accepted command's: a refusal answered at once is no command done. */
        if (r->lat != NULL && good)
            bench_series_add(r->lat, t - r->sent_ns[i]);
        if (good) {
            r->ok++;
        } else {
            r->failed++;
            if (r->first_error[0] == 0)
                snprintf(r->first_error, sizeof(r->first_error), "%s", why);
        }
        pthread_cond_signal(&r->cv);
    } else {
        r->stray++;
    }
    pthread_mutex_unlock(&r->mu);
    jl_reply_cleanup(&rep);
    natsMsg_Destroy(msg);
}

jl_status bench_rpc_open(bench *b, natsConnection *nc, bench_rpc **out)
{
    natsInbox *inbox = NULL;
    char subject[160];
    bench_rpc *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return bench_fail(b, JL_ERR_NOMEM, "out of memory");
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
    r->nc = nc;
    natsStatus ns = natsInbox_Create(&inbox);
    if (ns == NATS_OK) {
        snprintf(r->prefix, sizeof(r->prefix), "%s", (const char *)inbox);
        snprintf(subject, sizeof(subject), "%s.*.*", r->prefix);
        ns = natsConnection_Subscribe(&r->sub, nc, subject, on_reply, r);
    }
    if (ns == NATS_OK)
        ns = natsSubscription_SetPendingLimits(r->sub, 1000000, 512 * 1024 * 1024);
    natsInbox_Destroy(inbox);
    if (ns != NATS_OK) {
        bench_rpc_close(r);
        return bench_fail(b, JL_ERR_NATS, "cannot subscribe to the reply inbox: %s",
                          natsStatus_GetText(ns));
    }
    *out = r;
    return JL_OK;
}

void bench_rpc_close(bench_rpc *r)
{
    if (r == NULL)
        return;
    jl_nats_sub_destroy(r->nc, r->sub);
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
    free(r->sent_ns);
    free(r->state);
    free(r);
}

/* Wait (mu held) until at most @p max_in_flight requests are unanswered, failing after STALL_MS
 * without a reply. */
static jl_status wait_replies(bench *b, bench_rpc *r, size_t max_in_flight)
{
    while (r->in_flight > max_in_flight) {
        if (bench_stopping())
            return bench_fail(b, JL_ERR_STOPPED, "interrupted");
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_nsec += WAIT_SLICE_MS * 1000000L;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&r->cv, &r->mu, &until);
        if (r->in_flight > max_in_flight &&
            bench_now_ns() - r->last_reply_ns > (int64_t)STALL_MS * 1000000)
            return bench_fail(b, JL_ERR_TIMEOUT,
                              "no reply for %d s with %zu requests in flight (%zu of %zu "
                              "answered): the service stalled or dropped requests",
                              STALL_MS / 1000, r->in_flight, r->answered, r->n);
    }
    return JL_OK;
}

jl_status bench_rpc_run(bench *b, bench_rpc *r, size_t n, int window, double rate,
                        bench_make_fn make, void *closure, bench_series *lat, bench_run_result *out)
{
    jl_status s = JL_OK;
    uint8_t body[8192];
    uint8_t scratch[BENCH_SCRATCH];
    char subject[256], reply[200];
    int64_t t0 = 0;

    if (window < 1)
        window = 1;
    int64_t *sent = calloc(n ? n : 1, sizeof(*sent));
    uint8_t *state = calloc(n ? n : 1, 1);
    if (sent == NULL || state == NULL) {
        free(sent);
        free(state);
        return bench_fail(b, JL_ERR_NOMEM, "out of memory for %zu requests", n);
    }
    pthread_mutex_lock(&r->mu);
    r->run++;
    r->n = n;
    r->sent_ns = sent;
    r->state = state;
    r->lat = lat;
    r->in_flight = r->answered = 0;
    r->ok = r->failed = 0;
    r->first_error[0] = 0;
    r->last_reply_ns = bench_now_ns();
    uint32_t run = r->run;
    pthread_mutex_unlock(&r->mu);

    t0 = bench_now_ns();
    for (size_t i = 0; i < n && s == JL_OK; i++) {
        const ProtobufCMessage *msg = NULL;
        if (rate > 0)
            bench_sleep_until(t0 + (int64_t)((double)i * 1e9 / rate));
        pthread_mutex_lock(&r->mu);
        s = wait_replies(b, r, (size_t)window - 1);
        pthread_mutex_unlock(&r->mu);
        if (s != JL_OK)
            break;
        s = make(closure, i, subject, sizeof(subject), &msg, scratch);
        if (s != JL_OK)
            break;
        size_t len = protobuf_c_message_get_packed_size(msg);
        if (len > sizeof(body)) {
            s = bench_fail(b, JL_ERR_TOO_LARGE, "request of %zu bytes", len);
            break;
        }
        protobuf_c_message_pack(msg, body);
        snprintf(reply, sizeof(reply), "%s.%" PRIu32 ".%zu", r->prefix, run, i);
        pthread_mutex_lock(&r->mu);
        r->state[i] = SLOT_SENT;
        r->sent_ns[i] = bench_now_ns();
        if (r->in_flight == 0)
            r->last_reply_ns = r->sent_ns[i]; /* the stall clock starts with the first in flight */
        r->in_flight++;
        pthread_mutex_unlock(&r->mu);
        natsStatus ns = natsConnection_PublishRequest(r->nc, subject, reply, body, (int)len);
        if (ns != NATS_OK)
            s = bench_fail(b, JL_ERR_NATS, "cannot send request %zu to %s: %s", i, subject,
                           natsStatus_GetText(ns));
    }
    pthread_mutex_lock(&r->mu);
    if (s == JL_OK)
        s = wait_replies(b, r, 0);
    out->ok = r->ok;
    out->failed = r->failed;
    out->t_first_send_ns = t0;
    out->t_last_reply_ns = r->last_reply_ns;
    if (r->failed > 0)
        bench_progress("  %" PRIu64 " of %zu commands failed; first: %s", r->failed, n,
                       r->first_error);
    b->failed_commands += r->failed;
    /* Late replies of this run find no slots and count as strays. */
    r->run++;
    r->sent_ns = NULL;
    r->state = NULL;
    r->lat = NULL;
    r->n = 0;
    r->in_flight = 0;
    pthread_mutex_unlock(&r->mu);
    free(sent);
    free(state);
    return s;
}

jl_status bench_request(bench *b, const char *subject, const ProtobufCMessage *msg, int timeout_ms,
                        jl_reply *out)
{
    uint8_t body[8192];
    natsMsg *rep = NULL;
    char why[512] = "";
    size_t len = protobuf_c_message_get_packed_size(msg);
    if (len > sizeof(body))
        return bench_fail(b, JL_ERR_TOO_LARGE, "request of %zu bytes", len);
    protobuf_c_message_pack(msg, body);
    natsStatus ns = natsConnection_Request(&rep, b->nc, subject, body, (int)len, timeout_ms);
    if (ns != NATS_OK)
        return bench_fail(b, ns == NATS_TIMEOUT ? JL_ERR_TIMEOUT : JL_ERR_UNAVAILABLE,
                          "request to %s: %s", subject, natsStatus_GetText(ns));
    jl_reply_reset(out);
    jl_status s = decode_reply(rep, out, why, sizeof(why));
    natsMsg_Destroy(rep);
    if (s != JL_OK)
        return bench_fail(b, s, "request to %s: %s", subject, why);
    return JL_OK;
}

void bench_cmd_subject(char *out, size_t n, const ProtobufCMessage *msg)
{
    snprintf(out, n, "orders.cmd.%s", msg->descriptor->short_name);
}

void bench_sku(uint64_t i, int n_aggregates, char sku[16], int64_t *out_price)
{
    uint64_t round = i / (uint64_t)n_aggregates;
    int k = (int)(round % BENCH_SKUS);
    snprintf(sku, 16, "sku-%d", k);
    *out_price = 100 + k;
}

typedef struct create_scratch {
    Orders__CreateOrder m;
} create_scratch;

typedef struct additem_scratch {
    Orders__AddItem m;
    char sku[16];
} additem_scratch;

_Static_assert(sizeof(create_scratch) <= BENCH_SCRATCH, "scratch too small");
_Static_assert(sizeof(additem_scratch) <= BENCH_SCRATCH, "scratch too small");

jl_status bench_make_create(void *closure, size_t i, char *subject, size_t subject_len,
                            const ProtobufCMessage **out_msg, void *scratch)
{
    bench *b = closure;
    create_scratch *c = scratch;
    orders__create_order__init(&c->m);
    c->m.order_id = b->ids[i % (size_t)b->o.aggregates];
    c->m.customer_id = "bench";
    bench_cmd_subject(subject, subject_len, &c->m.base);
    *out_msg = &c->m.base;
    return JL_OK;
}

jl_status bench_make_additem(void *closure, size_t i, char *subject, size_t subject_len,
                             const ProtobufCMessage **out_msg, void *scratch)
{
    bench *b = closure;
    additem_scratch *a = scratch;
    uint64_t k = b->rr_next + i;
    orders__add_item__init(&a->m);
    a->m.order_id = b->ids[k % (uint64_t)b->o.aggregates];
    bench_sku(k, b->o.aggregates, a->sku, &a->m.unit_price_cents);
    a->m.sku = a->sku;
    a->m.quantity = 1;
    bench_cmd_subject(subject, subject_len, &a->m.base);
    *out_msg = &a->m.base;
    return JL_OK;
}

jl_status bench_wait_checkpoint(bench *b, const char *data_dir, uint64_t seq, int timeout_s,
                                pid_t pid, const char *log_path)
{
    int64_t deadline = bench_now_ns() + (int64_t)timeout_s * 1000000000LL;
    uint64_t at = 0;
    for (;;) {
        at = bench_checkpoint(data_dir, NULL);
        if (at >= seq)
            return JL_OK;
        if (bench_stopping())
            return bench_fail(b, JL_ERR_STOPPED, "interrupted");
        jl_status s = bench_check_alive(b, pid, "order_summary", log_path);
        if (s != JL_OK)
            return s;
        if (bench_now_ns() > deadline)
            return bench_fail(b, JL_ERR_TIMEOUT,
                              "order_summary (%s) is at checkpoint %" PRIu64 " and did not reach "
                              "%" PRIu64 " within %d s",
                              data_dir, at, seq, timeout_s);
        bench_sleep_ms(50);
    }
}

jl_status bench_wait_ready(bench *b, const char *subject, const ProtobufCMessage *msg, pid_t pid,
                           const char *log_path)
{
    int64_t deadline = bench_now_ns() + (int64_t)READY_TIMEOUT_MS * 1000000;
    jl_status s = JL_OK;
    uint8_t body[1024];
    size_t len = protobuf_c_message_get_packed_size(msg);
    if (len > sizeof(body))
        return bench_fail(b, JL_ERR_TOO_LARGE, "probe of %zu bytes", len);
    protobuf_c_message_pack(msg, body);
    for (;;) {
        natsMsg *rep = NULL;
        natsStatus ns = natsConnection_Request(&rep, b->nc, subject, body, (int)len, 500);
        bool answered =
            ns == NATS_OK && !natsMsg_IsNoResponders(rep) && natsMsg_GetDataLength(rep) > 0;
        natsMsg_Destroy(rep);
        if (answered)
            break;
        s = bench_check_alive(b, pid, subject, log_path);
        if (s != JL_OK)
            break;
        if (bench_stopping()) {
            s = bench_fail(b, JL_ERR_STOPPED, "interrupted");
            break;
        }
        if (bench_now_ns() > deadline) {
            s = bench_fail(b, JL_ERR_TIMEOUT, "nothing answers %s after %d s", subject,
                           READY_TIMEOUT_MS / 1000);
            break;
        }
        bench_sleep_ms(50);
    }
    return s;
}
