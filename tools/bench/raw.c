/*
 * The raw limits the pipeline is compared with, measured with libnats directly on the same
 * server in the same run: JetStream async and sync publishes of the commits the producer writes
 * (the same encoding, the same two headers, stream RAW, subjects "raw.order.<id>"), a durable
 * pull consumer, an ordered consumer; and the seeding of the ORDERS stream when commands did
 * not fill it.
 */
#include "bench.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "jetledger/conn.h"
#include "jetledger/domain.h"
#include "orders/orders.pb-c.h"

#define STALL_WAIT_MS 1000
#define STALL_LIMIT_NS (60 * 1000000000LL)
#define COMPLETE_WAIT_MS 120000
#define RYW_DURABLE "bench_ryw"
#define RYW_RING 1024
#define RYW_WAIT_NS (10 * 1000000000LL)
#define RYW_FETCH_BATCH 256
#define RYW_FETCH_WAIT_MS 500
#define READ_TIMEOUT_NS (900 * 1000000000LL)
#define SEED_WINDOW 4000
#define SEED_CREATE_EVERY 10 /* one event in ten creates an order, the rest add items */
#define RAW_PREFIX "raw.order."

/* Per-subject state of stream RAW. The subject of aggregate k is "raw.order.<id>" with the
 * first 8 hex digits of the id replaced by k, so the ack handler finds k without a lookup. */
struct bench_raw {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int n;
    char (*subjects)[64];
    uint64_t *last;    /* stream sequence of the last acked message per subject; guarded */
    uint8_t *pending;  /* a publish on it awaits its ack; guarded */
    uint64_t *version; /* aggregate version per subject; main thread only */
    uint64_t acked;    /* guarded */
    uint64_t errors;   /* guarded */
    char first_err[300];
    uint64_t next; /* next publish of the round-robin (all raw phases) */
};

/* Encodes events as the producer does: one commit per message (jl_commit_encode). */
typedef struct encoder {
    jl_decision d;
    jl_buf buf;
    char msg_id[JL_UUID_LEN + 1];
    char command_id[JL_UUID_LEN + 1];
    uint64_t version; /* of the last event encoded: the Jl-Aggregate-Version header */
} encoder;

static void encoder_init(encoder *e)
{
    jl_decision_init(&e->d);
    jl_buf_init(&e->buf, JL_MAX_COMMIT_BYTES);
}

static void encoder_cleanup(encoder *e)
{
    jl_decision_cleanup(&e->d);
    jl_buf_cleanup(&e->buf);
}

static int64_t wall_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* As the producer encodes a commit of one event at @p version, whose append expects
 * @p prev_seq as the subject's last sequence (0: a new aggregate). */
static jl_status encode(bench *b, encoder *e, const ProtobufCMessage *ev, const char *command_type,
                        const char *aggregate_id, uint64_t version, uint64_t prev_seq)
{
    jl_decision_reset(&e->d);
    jl_decision_emit(&e->d, ev);
    if (jl_decision_rejected(&e->d))
        return bench_fail(b, JL_ERR_INVALID, "cannot encode %s: %s", ev->descriptor->name,
                          e->d.message);
    jl_uuid_new(e->command_id);
    jl_commit_meta meta = {.aggregate_type = "order",
                           .aggregate_id = aggregate_id,
                           .correlation_id = "",
                           .causation_id = "",
                           .command_id = e->command_id,
                           .command_type = command_type,
                           .first_version = version,
                           .occurred_at_ns = wall_ns(),
                           .schema_version = 1,
                           .prev_seq = prev_seq};
    e->version = version;
    jl_status s = jl_commit_encode(&e->buf, e->msg_id, &meta, &e->d);
    if (s != JL_OK)
        return bench_fail(b, s, "cannot encode a commit: %s", jl_status_str(s));
    return JL_OK;
}

static jl_status encode_created(bench *b, encoder *e, const char *id)
{
    Orders__OrderCreated c = ORDERS__ORDER_CREATED__INIT;
    c.order_id = (char *)id;
    c.customer_id = "bench";
    return encode(b, e, &c.base, "orders.CreateOrder", id, 1, 0);
}

static jl_status encode_item(bench *b, encoder *e, const char *id, uint64_t i, int n_aggregates,
                             uint64_t version)
{
    char sku[16];
    Orders__ItemAdded a = ORDERS__ITEM_ADDED__INIT;
    a.order_id = (char *)id;
    bench_sku(i, n_aggregates, sku, &a.unit_price_cents);
    a.sku = sku;
    a.quantity = 1;
    /* Its subject's last sequence is about i on a round-robin stream: as many bytes. */
    return encode(b, e, &a.base, "orders.AddItem", id, version, i + 1);
}

/* ---- per-subject tracking ---- */

static int subject_index(const bench_raw *r, const char *subject)
{
    size_t plen = strlen(RAW_PREFIX);
    char hex[9];
    if (strncmp(subject, RAW_PREFIX, plen) != 0 || strlen(subject) < plen + 8)
        return -1;
    memcpy(hex, subject + plen, 8);
    hex[8] = 0;
    long k = strtol(hex, NULL, 16);
    return k >= 0 && k < r->n ? (int)k : -1;
}

/* NATS thread: the ack (or failure) of one async publish to RAW. Owns @p msg. */
static void on_raw_ack(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *closure)
{
    bench_raw *r = closure;
    int k = subject_index(r, natsMsg_GetSubject(msg));
    (void)js;
    pthread_mutex_lock(&r->mu);
    if (pa != NULL && k >= 0) {
        r->last[k] = pa->Sequence;
        r->acked++;
    } else {
        r->errors++;
        if (r->first_err[0] == 0)
            snprintf(r->first_err, sizeof(r->first_err), "%s: %s (JetStream error %d: %s)",
                     natsMsg_GetSubject(msg), pae ? natsStatus_GetText(pae->Err) : "no ack",
                     pae ? (int)pae->ErrCode : 0, pae && pae->ErrText ? pae->ErrText : "");
    }
    if (k >= 0)
        r->pending[k] = 0;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    natsMsg_Destroy(msg);
}

void bench_raw_close(bench *b)
{
    bench_raw *r = b->raw;
    if (r == NULL)
        return;
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
    free(r->subjects);
    free(r->last);
    free(r->pending);
    free(r->version);
    free(r);
    b->raw = NULL;
}

static jl_status raw_stream(bench *b)
{
    jsStreamConfig sc;
    jsErrCode jerr = 0;
    const char *subjects[] = {BENCH_RAW_SUBJECTS};
    int n = b->o.aggregates;
    bench_raw *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return bench_fail(b, JL_ERR_NOMEM, "out of memory");
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
    r->n = n;
    r->subjects = calloc((size_t)n, sizeof(*r->subjects));
    r->last = calloc((size_t)n, sizeof(*r->last));
    r->pending = calloc((size_t)n, 1);
    r->version = calloc((size_t)n, sizeof(*r->version));
    b->raw = r;
    if (r->subjects == NULL || r->last == NULL || r->pending == NULL || r->version == NULL)
        return bench_fail(b, JL_ERR_NOMEM, "out of memory for %d subjects", n);
    for (int k = 0; k < n; k++)
        snprintf(r->subjects[k], sizeof(r->subjects[k]), RAW_PREFIX "%08x%s", (unsigned)k,
                 b->ids[k] + 8);
    /* Like ORDERS as the producer creates it: file storage, one replica, default duplicate
     * window (every message carries a Nats-Msg-Id). */
    jsStreamConfig_Init(&sc);
    sc.Name = BENCH_RAW_STREAM;
    sc.Subjects = subjects;
    sc.SubjectsLen = 1;
    sc.Storage = js_FileStorage;
    sc.Replicas = 1;
    sc.Discard = js_DiscardNew;
    sc.AllowDirect = true;
    natsStatus ns = js_AddStream(NULL, b->js, &sc, NULL, &jerr);
    if (ns != NATS_OK)
        return bench_fail(b, JL_ERR_NATS, "cannot create stream %s: %s (JetStream error %d)",
                          BENCH_RAW_STREAM, natsStatus_GetText(ns), (int)jerr);
    return JL_OK;
}

/* One async publish; NATS_TIMEOUT means the window stayed full for StallWait: retry. */
/* A message of commit @p data at aggregate @p version, with the producer's two headers. */
static natsStatus make_msg(natsMsg **out, const char *subject, const jl_buf *data, uint64_t version,
                           const char *types)
{
    char vbuf[24];
    snprintf(vbuf, sizeof(vbuf), "%" PRIu64, version);
    natsStatus ns = natsMsg_Create(out, subject, NULL, (const char *)data->data, (int)data->len);
    if (ns == NATS_OK)
        ns = natsMsgHeader_Set(*out, "Jl-Aggregate-Version", vbuf);
    if (ns == NATS_OK)
        ns = natsMsgHeader_Set(*out, "Jl-Event-Types", types);
    return ns;
}

static jl_status publish_async(bench *b, jsCtx *js, const char *subject, const jl_buf *data,
                               uint64_t version, const char *types, jsPubOptions *po)
{
    int64_t since = bench_now_ns();
    natsMsg *msg = NULL;
    natsStatus ns = make_msg(&msg, subject, data, version, types);
    jl_status s = JL_OK;
    for (; ns == NATS_OK;) {
        ns = js_PublishMsgAsync(js, &msg, po);
        if (ns != NATS_TIMEOUT)
            break;
        ns = NATS_OK;
        if (bench_stopping()) {
            s = bench_fail(b, JL_ERR_STOPPED, "interrupted");
            break;
        }
        if (bench_now_ns() - since > STALL_LIMIT_NS) {
            s = bench_fail(b, JL_ERR_TIMEOUT, "no publish ack for 60 s (window full)");
            break;
        }
    }
    natsMsg_Destroy(msg); /* NULL once the library took it */
    if (s == JL_OK && ns != NATS_OK)
        s = bench_fail(b, JL_ERR_NATS, "async publish to %s: %s", subject, natsStatus_GetText(ns));
    return s;
}

static jl_status complete(bench *b, jsCtx *js, const char *what)
{
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MaxWait = COMPLETE_WAIT_MS;
    natsStatus ns = js_PublishAsyncComplete(js, &po);
    if (ns != NATS_OK)
        return bench_fail(b, JL_ERR_TIMEOUT, "%s: outstanding acks not received: %s", what,
                          natsStatus_GetText(ns));
    return JL_OK;
}

/* Wait until subject k has no publish in flight, then mark it in flight; its last sequence. */
static jl_status claim_subject(bench *b, bench_raw *r, int k, uint64_t *out_last)
{
    jl_status s = JL_OK;
    int64_t since = bench_now_ns();
    pthread_mutex_lock(&r->mu);
    while (r->pending[k] && s == JL_OK) {
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += 1;
        pthread_cond_timedwait(&r->cv, &r->mu, &until);
        if (bench_stopping())
            s = bench_fail(b, JL_ERR_STOPPED, "interrupted");
        else if (bench_now_ns() - since > STALL_LIMIT_NS)
            s = bench_fail(b, JL_ERR_TIMEOUT, "no ack for %s after 60 s", r->subjects[k]);
    }
    if (s == JL_OK) {
        r->pending[k] = 1;
        *out_last = r->last[k];
    }
    pthread_mutex_unlock(&r->mu);
    return s;
}

static jl_status raw_errors(bench *b, bench_raw *r, const char *what)
{
    pthread_mutex_lock(&r->mu);
    uint64_t errors = r->errors;
    char first[sizeof(r->first_err)];
    snprintf(first, sizeof(first), "%s", r->first_err);
    pthread_mutex_unlock(&r->mu);
    if (errors > 0)
        return bench_fail(b, JL_ERR_NATS, "%s: %" PRIu64 " publishes rejected; first: %s", what,
                          errors, first);
    return JL_OK;
}

jl_status bench_raw_open(bench *b)
{
    jsCtx *js = NULL;
    jsOptions jo;
    jsPubOptions po;
    encoder e;
    jl_status s = raw_stream(b);
    bench_raw *r = b->raw;

    encoder_init(&e);
    if (s == JL_OK) {
        jsOptions_Init(&jo);
        jo.Wait = 10000;
        jo.PublishAsync.MaxPending = b->o.window;
        jo.PublishAsync.AckHandler = on_raw_ack;
        jo.PublishAsync.AckHandlerClosure = r;
        jo.PublishAsync.StallWait = STALL_WAIT_MS;
        natsStatus ns = natsConnection_JetStream(&js, b->nc_bulk, &jo);
        if (ns != NATS_OK)
            s = bench_fail(b, JL_ERR_NATS, "cannot create a JetStream context: %s",
                           natsStatus_GetText(ns));
    }
    /* The first event of each subject, as CreateOrder writes it. */
    for (int k = 0; k < r->n && s == JL_OK; k++) {
        uint64_t last = 0;
        s = claim_subject(b, r, k, &last);
        if (s == JL_OK)
            s = encode_created(b, &e, b->ids[k]);
        if (s == JL_OK) {
            r->version[k] = 1;
            jsPubOptions_Init(&po);
            po.MsgId = e.msg_id;
            po.ExpectNoMessage = true;
            s = publish_async(b, js, r->subjects[k], &e.buf, e.version, "OrderCreated", &po);
        }
    }
    if (s == JL_OK)
        s = complete(b, js, "raw creates");
    if (s == JL_OK)
        s = raw_errors(b, r, "raw creates");
    if (js != NULL)
        jsCtx_Destroy(js);
    encoder_cleanup(&e);
    return s;
}

/* Commits encoded ahead of the timed publishes, back to back. */
typedef struct encoded {
    uint8_t *data;
    size_t len, cap;
    size_t *off;
    char (*msg_id)[JL_UUID_LEN + 1];
    uint64_t *version;
    size_t n;
} encoded;

#define ENCODED_MAX_BYTES ((size_t)4 << 30)

/* The next @p m events of the round-robin, as the producer would encode them. */
static jl_status encode_ahead(bench *b, encoder *e, encoded *out, size_t m)
{
    bench_raw *r = b->raw;
    jl_status s = JL_OK;
    out->off = calloc(m + 1, sizeof(*out->off));
    out->msg_id = calloc(m ? m : 1, sizeof(*out->msg_id));
    out->version = calloc(m ? m : 1, sizeof(*out->version));
    if (out->off == NULL || out->msg_id == NULL || out->version == NULL)
        return bench_fail(b, JL_ERR_NOMEM, "out of memory for %zu messages", m);
    for (size_t i = 0; i < m && s == JL_OK; i++) {
        uint64_t idx = r->next + i;
        int k = (int)(idx % (uint64_t)r->n);
        s = encode_item(b, e, b->ids[k], idx, r->n, ++r->version[k]);
        if (s == JL_OK && out->len + e->buf.len > out->cap) {
            size_t cap = out->cap ? out->cap * 2 : (size_t)1 << 20;
            while (cap < out->len + e->buf.len)
                cap *= 2;
            uint8_t *nd = cap <= ENCODED_MAX_BYTES ? realloc(out->data, cap) : NULL;
            if (nd == NULL)
                s = bench_fail(b, JL_ERR_NOMEM, "out of memory for %zu encoded messages", m);
            else {
                out->data = nd;
                out->cap = cap;
            }
        }
        if (s == JL_OK) {
            memcpy(out->data + out->len, e->buf.data, e->buf.len);
            out->off[i] = out->len;
            out->len += e->buf.len;
            out->off[i + 1] = out->len;
            memcpy(out->msg_id[i], e->msg_id, sizeof(out->msg_id[i]));
            out->version[i] = e->version;
            out->n = i + 1;
        }
    }
    return s;
}

static void encoded_free(encoded *x)
{
    free(x->data);
    free(x->off);
    free(x->msg_id);
    free(x->version);
    memset(x, 0, sizeof(*x));
}

jl_status bench_raw_throughput(bench *b, long m, double *out_secs)
{
    jsCtx *js = NULL;
    jsOptions jo;
    jsPubOptions po;
    encoder e;
    encoded pre = {0};
    jl_status s = JL_OK;
    bench_raw *r = b->raw;
    int n = r->n;

    encoder_init(&e);
    if (s == JL_OK) {
        jsOptions_Init(&jo);
        jo.Wait = 10000;
        jo.PublishAsync.MaxPending = b->o.window;
        jo.PublishAsync.AckHandler = on_raw_ack;
        jo.PublishAsync.AckHandlerClosure = r;
        jo.PublishAsync.StallWait = STALL_WAIT_MS;
        natsStatus ns = natsConnection_JetStream(&js, b->nc_bulk, &jo);
        if (ns != NATS_OK)
            s = bench_fail(b, JL_ERR_NATS, "cannot create a JetStream context: %s",
                           natsStatus_GetText(ns));
    }
    /* The bytes are encoded before the clock starts: the limit is JetStream's, not our
     * encoder's. Expected sequences are headers, so they are set at publish time. */
    if (s == JL_OK)
        s = encode_ahead(b, &e, &pre, (size_t)m);
    /* Timed: one event per publish, round-robin over the subjects, each with the expected last
     * subject sequence (from the acks) and a Nats-Msg-Id, as the producer appends. */
    int64_t t0 = bench_now_ns();
    for (long i = 0; i < m && s == JL_OK; i++) {
        uint64_t idx = r->next++;
        int k = (int)(idx % (uint64_t)n);
        uint64_t last = 0;
        s = claim_subject(b, r, k, &last);
        if (s == JL_OK) {
            jl_buf msg = {.data = pre.data + pre.off[i],
                          .len = pre.off[i + 1] - pre.off[i],
                          .alloc = 0,
                          .cap = 0};
            jsPubOptions_Init(&po);
            po.MsgId = pre.msg_id[i];
            po.ExpectLastSubjectSeq = last;
            s = publish_async(b, js, r->subjects[k], &msg, pre.version[i], "ItemAdded", &po);
        }
    }
    if (s == JL_OK)
        s = complete(b, js, "raw publishes");
    int64_t t1 = bench_now_ns();
    if (s == JL_OK)
        s = raw_errors(b, r, "raw publishes");
    if (s == JL_OK)
        *out_secs = (double)(t1 - t0) / 1e9;
    if (js != NULL)
        jsCtx_Destroy(js);
    encoder_cleanup(&e);
    encoded_free(&pre);
    return s;
}

/* A synchronous publish of the next round-robin event to RAW; its stream sequence. */
static jl_status publish_sync(bench *b, encoder *e, int64_t *out_t0, uint64_t *out_seq)
{
    bench_raw *r = b->raw;
    jsPubAck *pa = NULL;
    jsErrCode jerr = 0;
    jsPubOptions po;
    uint64_t idx = r->next++;
    int k = (int)(idx % (uint64_t)r->n);
    uint64_t last = 0;
    jl_status s = claim_subject(b, r, k, &last);
    if (s == JL_OK)
        s = encode_item(b, e, b->ids[k], idx, r->n, ++r->version[k]);
    if (s != JL_OK)
        return s;
    jsPubOptions_Init(&po);
    po.MsgId = e->msg_id;
    po.ExpectLastSubjectSeq = last;
    *out_t0 = bench_now_ns();
    natsMsg *msg = NULL;
    natsStatus ns = make_msg(&msg, r->subjects[k], &e->buf, e->version, "ItemAdded");
    if (ns == NATS_OK)
        ns = js_PublishMsg(&pa, b->js, msg, &po, &jerr);
    natsMsg_Destroy(msg);
    pthread_mutex_lock(&r->mu);
    if (ns == NATS_OK)
        r->last[k] = pa->Sequence;
    r->pending[k] = 0;
    pthread_mutex_unlock(&r->mu);
    if (ns != NATS_OK)
        return bench_fail(b, JL_ERR_NATS, "publish to %s: %s (JetStream error %d)", r->subjects[k],
                          natsStatus_GetText(ns), (int)jerr);
    *out_seq = pa->Sequence;
    jsPubAck_Destroy(pa);
    return JL_OK;
}

jl_status bench_raw_latency(bench *b, int n)
{
    encoder e;
    jl_status s = JL_OK;
    int64_t start = bench_now_ns(), prev_end = start;
    encoder_init(&e);
    for (int i = 0; i < n && s == JL_OK; i++) {
        int64_t t0 = 0;
        uint64_t seq = 0;
        int64_t sched = start + (int64_t)((double)i * 1e9 / b->o.lat_rate);
        bench_sleep_until(sched);
        if (bench_stopping())
            s = bench_fail(b, JL_ERR_STOPPED, "interrupted");
        if (s == JL_OK)
            s = publish_sync(b, &e, &t0, &seq);
        /* The pipeline sends on schedule whatever is in flight; a sync publish waits for the
         * one before. The time this one was held back by that (its slow ack, a stall) counts
         * too, as it would in the pipeline (no coordinated omission). */
        int64_t end = bench_now_ns(), held = prev_end > sched ? prev_end - sched : 0;
        if (s == JL_OK)
            bench_series_add(&b->lat_cmd_raw, end - t0 + held);
        prev_end = end;
    }
    encoder_cleanup(&e);
    return s;
}

/* ---- context of figure 2: one request-reply hop through a responder ---- */

static void echo_reply(natsConnection *nc, natsSubscription *sub, natsMsg *m, void *closure)
{
    (void)sub;
    (void)closure;
    const char *to = natsMsg_GetReply(m);
    if (to != NULL)
        natsConnection_Publish(nc, to, natsMsg_GetData(m), natsMsg_GetDataLength(m));
    natsMsg_Destroy(m);
}

jl_status bench_raw_echo(bench *b)
{
    natsConnection *rc = NULL;
    jsCtx *rjs = NULL;
    natsSubscription *sub = NULL;
    jl_status s = JL_OK;
    encoder e;
    encoder_init(&e);
    natsStatus ns = bench_connect(&rc, &rjs, jl_natsd_url(b->natsd), "jetledger-bench-echo", true);
    if (ns == NATS_OK)
        ns = natsConnection_Subscribe(&sub, rc, "bench.echo", echo_reply, NULL);
    if (ns == NATS_OK)
        ns = natsConnection_Flush(rc);
    if (ns != NATS_OK)
        s = bench_fail(b, JL_ERR_NATS, "echo responder: %s", natsStatus_GetText(ns));
    /* The body of an event, as a command's request is about that size. */
    if (s == JL_OK)
        s = encode_item(b, &e, b->ids[0], 0, 1, 1);
    int64_t start = bench_now_ns();
    for (int i = 0; i < b->o.lat_samples && s == JL_OK; i++) {
        natsMsg *rep = NULL;
        bench_sleep_until(start + (int64_t)((double)i * 1e9 / b->o.lat_rate));
        if (bench_stopping()) {
            s = bench_fail(b, JL_ERR_STOPPED, "interrupted");
            break;
        }
        int64_t t0 = bench_now_ns();
        ns = natsConnection_Request(&rep, b->nc, "bench.echo", e.buf.data, (int)e.buf.len, 5000);
        if (ns == NATS_OK)
            bench_series_add(&b->lat_echo, bench_now_ns() - t0);
        else
            s = bench_fail(b, JL_ERR_NATS, "echo request: %s", natsStatus_GetText(ns));
        natsMsg_Destroy(rep);
    }
    jl_nats_sub_destroy(rc, sub);
    jsCtx_Destroy(rjs);
    if (rc != NULL)
        natsConnection_Close(rc);
    natsConnection_Destroy(rc);
    encoder_cleanup(&e);
    return s;
}

/* ---- read-your-writes, raw: a durable pull consumer fetching in its own thread ---- */

typedef struct ryw_consumer {
    natsConnection *nc;
    jsCtx *js;
    natsSubscription *sub;
    pthread_t thread;
    bool has_thread;
    atomic_bool stop;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct {
        uint64_t seq;
        int64_t t_ns;
    } ring[RYW_RING]; /* guarded */
    char err[256];    /* guarded */
} ryw_consumer;

static natsStatus ryw_fetch(ryw_consumer *c, natsMsgList *list, int batch, bool no_wait)
{
    return jl_fetch(c->sub, list, batch, RYW_FETCH_WAIT_MS, no_wait);
}

/* The consumer thread: the projector's fetch pattern (take what is there at once, else wait for
 * one), stamping each message with the time its fetch returned. */
static void *ryw_loop(void *arg)
{
    ryw_consumer *c = arg;
    while (!atomic_load(&c->stop)) {
        natsMsgList list = {0};
        natsStatus ns = ryw_fetch(c, &list, RYW_FETCH_BATCH, true);
        if (ns == NATS_NOT_FOUND || (ns == NATS_TIMEOUT && list.Count == 0)) {
            natsMsgList_Destroy(&list);
            memset(&list, 0, sizeof(list));
            ns = ryw_fetch(c, &list, 1, false);
        }
        int64_t t = bench_now_ns();
        if (ns == NATS_OK && list.Count > 0) {
            pthread_mutex_lock(&c->mu);
            for (int i = 0; i < list.Count; i++) {
                jsMsgMetaData *meta = NULL;
                if (natsMsg_GetMetaData(&meta, list.Msgs[i]) == NATS_OK) {
                    uint64_t seq = meta->Sequence.Stream;
                    c->ring[seq % RYW_RING].seq = seq;
                    c->ring[seq % RYW_RING].t_ns = t;
                    jsMsgMetaData_Destroy(meta);
                }
            }
            pthread_cond_broadcast(&c->cv);
            pthread_mutex_unlock(&c->mu);
            natsMsg_Ack(list.Msgs[list.Count - 1], NULL); /* AckAll: the last acks the batch */
        } else if (ns != NATS_OK && ns != NATS_TIMEOUT && ns != NATS_NOT_FOUND) {
            pthread_mutex_lock(&c->mu);
            if (c->err[0] == 0)
                snprintf(c->err, sizeof(c->err), "fetch: %s", natsStatus_GetText(ns));
            pthread_mutex_unlock(&c->mu);
            nats_Sleep(10);
        }
        natsMsgList_Destroy(&list);
    }
    return NULL;
}

static jl_status ryw_open(bench *b, ryw_consumer *c)
{
    jsConsumerConfig cc;
    jsSubOptions so;
    jsErrCode jerr = 0;
    /* Its own connection, sending at once like the projector's. */
    natsStatus ns =
        bench_connect(&c->nc, &c->js, jl_natsd_url(b->natsd), "jetledger-bench-consumer", true);
    if (ns != NATS_OK)
        return bench_fail(b, JL_ERR_NATS, "consumer connection: %s", natsStatus_GetText(ns));
    /* As the projector configures its consumer: durable, AckAll, MaxAckPending above the batch;
     * only what is published from now on. */
    jsConsumerConfig_Init(&cc);
    cc.Durable = RYW_DURABLE;
    cc.FilterSubject = BENCH_RAW_SUBJECTS;
    cc.AckPolicy = js_AckAll;
    cc.DeliverPolicy = js_DeliverNew;
    cc.AckWait = 60LL * 1000000000LL;
    cc.MaxDeliver = -1;
    cc.MaxAckPending = 4096;
    ns = js_AddConsumer(NULL, c->js, BENCH_RAW_STREAM, &cc, NULL, &jerr);
    if (ns == NATS_OK) {
        jsSubOptions_Init(&so);
        so.Stream = BENCH_RAW_STREAM;
        so.Consumer = RYW_DURABLE;
        ns = js_PullSubscribe(&c->sub, c->js, BENCH_RAW_SUBJECTS, RYW_DURABLE, NULL, &so, &jerr);
    }
    if (ns != NATS_OK)
        return bench_fail(b, JL_ERR_NATS, "pull consumer %s: %s (JetStream error %d)", RYW_DURABLE,
                          natsStatus_GetText(ns), (int)jerr);
    if (pthread_create(&c->thread, NULL, ryw_loop, c) != 0)
        return bench_fail(b, JL_ERR_INTERNAL, "cannot start the consumer thread");
    c->has_thread = true;
    return JL_OK;
}

static void ryw_close(ryw_consumer *c)
{
    atomic_store(&c->stop, true);
    if (c->has_thread)
        pthread_join(c->thread, NULL);
    if (c->sub != NULL)
        jl_nats_sub_destroy(c->nc, c->sub);
    if (c->js != NULL) {
        js_DeleteConsumer(c->js, BENCH_RAW_STREAM, RYW_DURABLE, NULL, NULL);
        jsCtx_Destroy(c->js);
    }
    if (c->nc != NULL) {
        natsConnection_Close(c->nc);
        natsConnection_Destroy(c->nc);
    }
}

/* Wait until the consumer has received @p seq; the time it did. */
static jl_status ryw_wait(bench *b, ryw_consumer *c, uint64_t seq, int64_t *out_t)
{
    jl_status s = JL_OK;
    int64_t since = bench_now_ns();
    pthread_mutex_lock(&c->mu);
    while (c->ring[seq % RYW_RING].seq != seq && s == JL_OK) {
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_nsec += 100 * 1000000L;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&c->cv, &c->mu, &until);
        if (bench_stopping())
            s = bench_fail(b, JL_ERR_STOPPED, "interrupted");
        else if (c->ring[seq % RYW_RING].seq != seq && bench_now_ns() - since > RYW_WAIT_NS)
            s = bench_fail(b, JL_ERR_TIMEOUT,
                           "pull consumer did not receive sequence %" PRIu64 " within 10 s%s%s",
                           seq, c->err[0] ? ": " : "", c->err);
    }
    if (s == JL_OK)
        *out_t = c->ring[seq % RYW_RING].t_ns;
    pthread_mutex_unlock(&c->mu);
    return s;
}

jl_status bench_raw_ryw(bench *b, int n)
{
    ryw_consumer *c = calloc(1, sizeof(*c));
    encoder e;
    jl_status s = JL_OK;
    if (c == NULL)
        return bench_fail(b, JL_ERR_NOMEM, "out of memory");
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv, NULL);
    atomic_init(&c->stop, false);
    encoder_init(&e);
    s = ryw_open(b, c);
    /* One untimed first: the new consumer's first pull may still be on its way. */
    int64_t w0 = 0, w1 = 0;
    uint64_t wseq = 0;
    if (s == JL_OK)
        s = publish_sync(b, &e, &w0, &wseq);
    if (s == JL_OK)
        s = ryw_wait(b, c, wseq, &w1);
    int64_t start = bench_now_ns();
    for (int i = 0; i < n && s == JL_OK; i++) {
        int64_t t0 = 0, t1 = 0;
        uint64_t seq = 0;
        bench_sleep_until(start + (int64_t)((double)i * 1e9 / b->o.ryw_rate));
        s = publish_sync(b, &e, &t0, &seq);
        if (s == JL_OK)
            s = ryw_wait(b, c, seq, &t1);
        if (s == JL_OK)
            bench_series_add(&b->lat_ryw_raw, t1 - t0);
    }
    ryw_close(c);
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->cv);
    free(c);
    encoder_cleanup(&e);
    return s;
}

/* ---- catch-up, raw (a): an ordered consumer with no apply ---- */

typedef struct reader {
    atomic_uint_fast64_t count;
    atomic_int_fast64_t t_done_ns;
    uint64_t target;
} reader;

/* NATS thread: count, nothing else. */
static void on_read(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    reader *rd = closure;
    (void)nc;
    (void)sub;
    if (atomic_fetch_add(&rd->count, 1) + 1 == rd->target)
        atomic_store(&rd->t_done_ns, bench_now_ns());
    natsMsg_Destroy(msg);
}

jl_status bench_raw_read(bench *b, uint64_t last_seq, double *out_rate)
{
    natsSubscription *sub = NULL;
    jsSubOptions so;
    jsErrCode jerr = 0;
    jl_status s = JL_OK;
    reader rd;
    atomic_init(&rd.count, 0);
    atomic_init(&rd.t_done_ns, 0);
    rd.target = last_seq;

    jsSubOptions_Init(&so);
    so.Ordered = true;
    int64_t t0 = bench_now_ns();
    natsStatus ns =
        js_Subscribe(&sub, b->js_bulk, BENCH_ORDERS_SUBJECTS, on_read, &rd, NULL, &so, &jerr);
    if (ns == NATS_OK)
        ns = natsSubscription_SetPendingLimits(sub, -1, -1);
    if (ns != NATS_OK)
        s = bench_fail(b, JL_ERR_NATS, "ordered consumer on %s: %s (JetStream error %d)",
                       BENCH_ORDERS_STREAM, natsStatus_GetText(ns), (int)jerr);
    bench_curve_add(&b->catchup_raw_read, 0, 0);
    while (s == JL_OK) {
        bench_sleep_ms(100);
        int64_t t = bench_now_ns();
        if (atomic_load(&rd.t_done_ns) != 0)
            break; /* the last point is the exact end, below */
        bench_curve_add(&b->catchup_raw_read, (double)(t - t0) / 1e9,
                        (double)atomic_load(&rd.count));
        if (bench_stopping())
            s = bench_fail(b, JL_ERR_STOPPED, "interrupted");
        else if (t - t0 > READ_TIMEOUT_NS)
            s = bench_fail(b, JL_ERR_TIMEOUT,
                           "ordered consumer read %" PRIu64 " of %" PRIu64 " messages in %lld s",
                           (uint64_t)atomic_load(&rd.count), last_seq,
                           (long long)(READ_TIMEOUT_NS / 1000000000LL));
    }
    if (s == JL_OK) {
        int64_t t1 = atomic_load(&rd.t_done_ns);
        bench_curve_add(&b->catchup_raw_read, (double)(t1 - t0) / 1e9, (double)last_seq);
        *out_rate = (double)last_seq / ((double)(t1 - t0) / 1e9);
    }
    jl_nats_sub_destroy(b->nc_bulk, sub);
    return s;
}

/* ---- seeding ORDERS ---- */

typedef struct seed_acks {
    atomic_uint_fast64_t errors;
    pthread_mutex_t mu;
    char first_err[300]; /* guarded */
} seed_acks;

static void on_seed_ack(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *closure)
{
    seed_acks *a = closure;
    (void)js;
    if (pa == NULL) {
        atomic_fetch_add(&a->errors, 1);
        pthread_mutex_lock(&a->mu);
        if (a->first_err[0] == 0)
            snprintf(a->first_err, sizeof(a->first_err), "%s: %s", natsMsg_GetSubject(msg),
                     pae ? natsStatus_GetText(pae->Err) : "no ack");
        pthread_mutex_unlock(&a->mu);
    }
    natsMsg_Destroy(msg);
}

static uint64_t xorshift(uint64_t *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return *x;
}

jl_status bench_seed(bench *b, uint64_t target)
{
    jsCtx *js = NULL;
    jsOptions jo;
    jsPubOptions po;
    encoder e;
    seed_acks acks;
    uint64_t last = 0, rng = 0x9E3779B97F4A7C15ULL;
    char subject[128];
    jl_status s = bench_stream_last_seq(b, BENCH_ORDERS_STREAM, &last);
    if (s != JL_OK || last >= target)
        return s;
    uint64_t remaining = target - last;
    size_t cap = (size_t)(remaining / SEED_CREATE_EVERY) * 2 + 16, n_orders = 0;
    char(*ids)[BENCH_ID_LEN] = calloc(cap, sizeof(*ids));
    uint64_t *versions = calloc(cap, sizeof(*versions));
    atomic_init(&acks.errors, 0);
    pthread_mutex_init(&acks.mu, NULL);
    acks.first_err[0] = 0;
    encoder_init(&e);
    if (ids == NULL || versions == NULL)
        s = bench_fail(b, JL_ERR_NOMEM, "out of memory for seeding");
    if (s == JL_OK) {
        jsOptions_Init(&jo);
        jo.PublishAsync.MaxPending = SEED_WINDOW;
        jo.PublishAsync.AckHandler = on_seed_ack;
        jo.PublishAsync.AckHandlerClosure = &acks;
        jo.PublishAsync.StallWait = STALL_WAIT_MS;
        natsStatus ns = natsConnection_JetStream(&js, b->nc_bulk, &jo);
        if (ns != NATS_OK)
            s = bench_fail(b, JL_ERR_NATS, "JetStream context: %s", natsStatus_GetText(ns));
    }
    bench_progress("seeding %" PRIu64 " events into %s (1 in %d an OrderCreated, the rest "
                   "ItemAdded on earlier seeded orders)",
                   remaining, BENCH_ORDERS_STREAM, SEED_CREATE_EVERY);
    /* Like tests' tseed_orders: commits as the producer would write them, published async
     * without expectations (nothing else writes meanwhile). */
    for (uint64_t i = 0; i < remaining && s == JL_OK; i++) {
        size_t j;
        if (n_orders == 0 || (xorshift(&rng) % SEED_CREATE_EVERY == 0 && n_orders < cap)) {
            j = n_orders++;
            jl_uuid_new(ids[j]);
            versions[j] = 1;
            s = encode_created(b, &e, ids[j]);
        } else {
            j = (size_t)(xorshift(&rng) % n_orders);
            versions[j]++;
            s = encode_item(b, &e, ids[j], versions[j] * (uint64_t)b->o.aggregates, b->o.aggregates,
                            versions[j]);
        }
        snprintf(subject, sizeof(subject), "orders.events.order.%s", ids[j]);
        if (s == JL_OK) {
            jsPubOptions_Init(&po);
            po.MsgId = e.msg_id;
            s = publish_async(b, js, subject, &e.buf, e.version,
                              versions[j] == 1 ? "OrderCreated" : "ItemAdded", &po);
        }
        if (s == JL_OK && (i + 1) % 200000 == 0)
            bench_progress("  seeded %" PRIu64 "/%" PRIu64, i + 1, remaining);
    }
    if (s == JL_OK)
        s = complete(b, js, "seeding");
    if (s == JL_OK && atomic_load(&acks.errors) > 0)
        s = bench_fail(b, JL_ERR_NATS, "seeding: %" PRIu64 " publishes failed; first: %s",
                       (uint64_t)atomic_load(&acks.errors), acks.first_err);
    if (s == JL_OK)
        s = bench_stream_last_seq(b, BENCH_ORDERS_STREAM, &last);
    if (s == JL_OK && last != target)
        s = bench_fail(b, JL_ERR_INTERNAL, "after seeding, %s ends at %" PRIu64 ", not %" PRIu64,
                       BENCH_ORDERS_STREAM, last, target);
    if (js != NULL)
        jsCtx_Destroy(js);
    pthread_mutex_destroy(&acks.mu);
    encoder_cleanup(&e);
    free(ids);
    free(versions);
    return s;
}
