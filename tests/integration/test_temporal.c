/*
 * The producer's audit trail (GetHistory), past states (GetState) and snapshots, against a real
 * nats-server: states as of a sequence, a time and a version; a cold command on an aggregate
 * with 10,000 events reads at most snapshot_every events; an aggregate evicted from the cache or
 * cached at close is snapshotted, so loading it again replays nothing; a snapshot from another
 * state_version is ignored.
 */
#include <check.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "jetledger/admin.pb-c.h"
#include "jetledger/producer.h"
#include "orders/orders.pb-c.h"
#include "service.h"
#include "support.h"

static tenv env;

static void setup(void)
{
    tenv_start(&env);
}

static void teardown(void)
{
    tenv_stop(&env);
}

/* A producer of @p def with the settings @p cfg (a copy of env.cfg, changed). */
static jl_producer *open_producer_with(const jl_service_def *def, const jl_config *cfg)
{
    jl_producer *p = NULL;
    char err[1024] = "";
    ck_assert_msg(jl_producer_open(&p, env.conn, def, cfg, err, sizeof(err)) == JL_OK, "%s", err);
    return p;
}

static jl_producer *open_producer(const jl_service_def *def, int snapshot_every, int cache)
{
    jl_config cfg = env.cfg;
    cfg.snapshot_every = snapshot_every;
    cfg.cache_size = cache;
    return open_producer_with(def, &cfg);
}

/* Run one command in-process and keep its whole reply (the caller cleans it up). */
static void attempt(jl_producer *p, const ProtobufCMessage *m, jl_reply *r)
{
    uint8_t buf[1024];
    size_t n = protobuf_c_message_pack(m, buf);
    jl_reply_init(r);
    jl_producer_handle(p, m->descriptor->short_name, buf, n, NULL, NULL, NULL, r);
}

/* Run one command in-process; returns the reply code, fills seq/version. */
static jl_code run(jl_producer *p, const ProtobufCMessage *m, char *io_id, uint64_t *out_seq)
{
    jl_reply r;
    attempt(p, m, &r);
    if (io_id != NULL && r.code == JL_CODE_OK)
        snprintf(io_id, JL_UUID_LEN + 1, "%s", r.aggregate_id);
    if (out_seq != NULL)
        *out_seq = r.stream_seq;
    jl_code c = r.code;
    ck_assert_msg(c == JL_CODE_OK, "%s: %s", m->descriptor->short_name, r.message);
    jl_reply_cleanup(&r);
    return c;
}

static void add(jl_producer *p, const char *id, const char *sku, int qty, uint64_t *seq)
{
    Orders__AddItem m = ORDERS__ADD_ITEM__INIT;
    m.order_id = (char *)id;
    m.sku = (char *)sku;
    m.quantity = qty;
    m.unit_price_cents = 100;
    run(p, &m.base, NULL, seq);
}

/* AddItem (one of @p sku at 100) in-process, its whole reply kept (the caller cleans it up). */
static void attempt_add(jl_producer *p, const char *id, const char *sku, jl_reply *r)
{
    Orders__AddItem m = ORDERS__ADD_ITEM__INIT;
    m.order_id = (char *)id;
    m.sku = (char *)sku;
    m.quantity = 1;
    m.unit_price_cents = 100;
    attempt(p, &m.base, r);
}

static void create(jl_producer *p, char id[JL_UUID_LEN + 1], uint64_t *seq)
{
    Orders__CreateOrder m = ORDERS__CREATE_ORDER__INIT;
    m.customer_id = "temporal";
    run(p, &m.base, id, seq);
}

/* GetState through NATS; returns the reply code and the decoded state when OK. */
static jl_code get_state(const char *id, uint64_t at_seq, int64_t at_time, uint64_t at_version,
                         Orders__OrderState **out_state, uint64_t *out_version)
{
    return torder_state(env.conn, id, at_seq, at_time, at_version, out_state, out_version);
}

START_TEST(state_as_of_sequence_time_and_version)
{
    jl_producer *p = open_producer(&orders_service, 100, 100);
    char id[JL_UUID_LEN + 1], other[JL_UUID_LEN + 1];
    uint64_t s1, s2, s3, s4, unused;
    create(p, id, &s1);
    create(p, other, &unused); /* interleaved: sequences of one aggregate are not dense */
    add(p, id, "apple", 2, &s2);
    add(p, other, "x", 1, &unused);
    add(p, id, "pear", 1, &s3);
    nats_Sleep(20);
    int64_t between_ns = 0;
    {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        between_ns = (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
    }
    nats_Sleep(20);
    Orders__PlaceOrder place = ORDERS__PLACE_ORDER__INIT;
    place.order_id = id;
    run(p, &place.base, NULL, &s4);

    Orders__OrderState *st = NULL;
    uint64_t v = 0;
    /* latest */
    ck_assert_int_eq(get_state(id, 0, 0, 0, &st, &v), JL_CODE_OK);
    ck_assert_uint_eq(v, 4);
    ck_assert_str_eq(st->status, "placed");
    ck_assert_uint_eq(st->n_lines, 2);
    orders__order_state__free_unpacked(st, NULL);
    /* as of version 2: created + apple */
    ck_assert_int_eq(get_state(id, 0, 0, 2, &st, &v), JL_CODE_OK);
    ck_assert_uint_eq(v, 2);
    ck_assert_str_eq(st->status, "open");
    ck_assert_uint_eq(st->n_lines, 1);
    ck_assert_str_eq(st->lines[0]->sku, "apple");
    orders__order_state__free_unpacked(st, NULL);
    /* as of a sequence between the aggregate's commits: the last one at or below it */
    ck_assert_int_eq(get_state(id, s3 - 1, 0, 0, &st, &v), JL_CODE_OK);
    ck_assert_uint_eq(v, 2);
    orders__order_state__free_unpacked(st, NULL);
    ck_assert_int_eq(get_state(id, s3, 0, 0, &st, &v), JL_CODE_OK);
    ck_assert_uint_eq(v, 3);
    ck_assert_uint_eq(st->n_lines, 2);
    orders__order_state__free_unpacked(st, NULL);
    /* as of a time between the third and fourth event */
    ck_assert_int_eq(get_state(id, 0, between_ns, 0, &st, &v), JL_CODE_OK);
    ck_assert_uint_eq(v, 3);
    ck_assert_str_eq(st->status, "open");
    orders__order_state__free_unpacked(st, NULL);
    /* two points at once is a bad request; a time before the first event finds nothing */
    ck_assert_int_eq(get_state(id, s4, 1, 0, &st, &v), JL_CODE_INVALID);
    ck_assert_int_eq(get_state(id, 0, 1, 0, &st, &v), JL_CODE_NOT_FOUND);
    /* a point not reached yet has no state: later events could still land before it */
    ck_assert_int_eq(get_state(id, 0, 0, 5, &st, &v), JL_CODE_NOT_FOUND);
    ck_assert_int_eq(get_state(id, s4 + 1000, 0, 0, &st, &v), JL_CODE_INVALID);
    ck_assert_int_eq(get_state(id, 0, between_ns + 3600 * 1000000000LL, 0, &st, &v),
                     JL_CODE_INVALID);
    /* the stream's last sequence is a point reached, even when another aggregate wrote it */
    ck_assert_int_eq(get_state(id, s4, 0, 0, &st, &v), JL_CODE_OK);
    ck_assert_uint_eq(v, 4);
    orders__order_state__free_unpacked(st, NULL);
    /* unknown aggregate, bad id */
    char nobody[JL_UUID_LEN + 1];
    jl_uuid_new(nobody);
    ck_assert_int_eq(get_state(nobody, 0, 0, 0, &st, &v), JL_CODE_NOT_FOUND);
    ck_assert_int_eq(get_state("nope", 0, 0, 0, &st, &v), JL_CODE_INVALID);
    ck_assert_uint_lt(s1, s2);
    jl_producer_close(p, 1000);
}
END_TEST

/* One page of GetHistory through NATS (@p from_seq, @p limit 0: none); free it with
 * jetledger__history_result__free_unpacked(). */
static Jetledger__HistoryResult *history_page(const char *id, uint64_t from, uint64_t from_seq,
                                              uint32_t limit)
{
    Jetledger__GetHistory q = JETLEDGER__GET_HISTORY__INIT;
    q.aggregate_id = (char *)id;
    q.from_version = from;
    q.from_sequence = from_seq;
    q.limit = limit;
    jl_reply r;
    jl_reply_init(&r);
    ck_assert_int_eq(tsend(env.conn, "orders", true, &q.base, NULL, &r), NATS_OK);
    ck_assert_msg(r.code == JL_CODE_OK, "%s", r.message);
    Jetledger__HistoryResult *h =
        jetledger__history_result__unpack(NULL, r.result.len, r.result.data);
    ck_assert_ptr_nonnull(h);
    jl_reply_cleanup(&r);
    return h;
}

START_TEST(history_lists_every_event_in_order_with_paging)
{
    jl_producer *p = open_producer(&orders_service, 100, 100);
    char id[JL_UUID_LEN + 1];
    uint64_t seq[5];
    create(p, id, &seq[0]);
    add(p, id, "a", 1, &seq[1]);
    add(p, id, "b", 1, &seq[2]);
    add(p, id, "c", 1, &seq[3]);
    add(p, id, "d", 1, &seq[4]);

    uint64_t from = 1;
    int total = 0, pages = 0;
    do {
        Jetledger__HistoryResult *h = history_page(id, from, 0, 2);
        for (size_t i = 0; i < h->n_events; i++) {
            Jetledger__Envelope *e = h->events[i]->envelope;
            ck_assert_uint_eq(e->aggregate_version, (uint64_t)total + 1);
            ck_assert_uint_eq(h->events[i]->stream_sequence, seq[total]);
            ck_assert_str_eq(e->aggregate_id, id);
            ck_assert_int_eq(strlen(e->event_id), JL_UUID_LEN);
            ck_assert_str_eq(e->event_type,
                             total == 0 ? "orders.OrderCreated" : "orders.ItemAdded");
            ck_assert_int_gt(strlen(e->correlation_id), 0); /* default: the command id */
            total++;
        }
        from = h->next_version;
        jetledger__history_result__free_unpacked(h, NULL);
        pages++;
    } while (from != 0 && pages < 10);
    ck_assert_int_eq(total, 5);
    ck_assert_int_eq(pages, 3);
    jl_producer_close(p, 1000);
}
END_TEST

START_TEST(history_pages_fit_in_what_the_server_carries)
{
    /* A page of 1000 events would be far above a 64 KiB max_payload: the reply could not be
     * sent and the client would wait out its timeout. Pages end at a size that fits. */
    tenv_stop(&env);
    tenv_start_with(&env, "max_payload: 65536\n");
    jl_producer *p = open_producer(&orders_service, 100, 100);
    char id[JL_UUID_LEN + 1], sku[32];
    create(p, id, NULL);
    for (int i = 0; i < 600; i++) {
        snprintf(sku, sizeof(sku), "sku-%02d", i % 50); /* an order holds 50 skus at most */
        add(p, id, sku, 1, NULL);
    }
    uint64_t from = 1, from_seq = 0, seq_of_300 = 0;
    int total = 0, pages = 0;
    do {
        /* Each page goes on from where the last one ended (next_sequence). */
        Jetledger__HistoryResult *h = history_page(id, from, from_seq, 0);
        ck_assert_uint_gt(h->n_events, 0);
        ck_assert_uint_eq(h->events[0]->stream_sequence, from_seq ? from_seq : 1);
        for (size_t i = 0; i < h->n_events; i++) {
            ck_assert_uint_eq(h->events[i]->envelope->aggregate_version, (uint64_t)++total);
            if (total == 300)
                seq_of_300 = h->events[i]->stream_sequence;
        }
        from = h->next_version;
        from_seq = h->next_sequence;
        ck_assert(from == 0 || from_seq > 0);
        jetledger__history_result__free_unpacked(h, NULL);
        pages++;
    } while (from != 0 && pages < 100);
    ck_assert_int_eq(total, 601);
    ck_assert_int_ge(pages, 3);
    /* A from_sequence before, after or past the end of from_version's commit: same page. */
    uint64_t hints[] = {1,         seq_of_300, seq_of_300 + 1, 1000000, (uint64_t)INT64_MAX + 1,
                        UINT64_MAX};
    for (size_t k = 0; k < sizeof(hints) / sizeof(hints[0]); k++) {
        Jetledger__HistoryResult *h = history_page(id, 300, hints[k], 5);
        ck_assert_uint_eq(h->n_events, 5);
        ck_assert_uint_eq(h->events[0]->envelope->aggregate_version, 300);
        ck_assert_uint_eq(h->events[0]->stream_sequence, seq_of_300);
        ck_assert_uint_eq(h->next_version, 305);
        jetledger__history_result__free_unpacked(h, NULL);
    }
    jl_producer_close(p, 1000);

    /* Any reply too large to send goes out as an error that says so, not as nothing. */
    natsConnection *nc = jl_conn_nats(env.conn);
    natsSubscription *sub = NULL;
    ck_assert_int_eq(natsConnection_SubscribeSync(&sub, nc, "big.reply"), NATS_OK);
    char *big = malloc(100000);
    memset(big, 'x', 99999);
    big[99999] = 0;
    Orders__CreateOrder m = ORDERS__CREATE_ORDER__INIT;
    m.customer_id = big;
    jl_reply r;
    jl_reply_init(&r);
    ck_assert_int_eq(jl_reply_set_result(&r, &m.base), JL_OK);
    ck_assert_int_eq(jl_reply_send(nc, "big.reply", &r, NULL), JL_OK);
    jl_reply_cleanup(&r);
    natsMsg *got = NULL;
    ck_assert_int_eq(natsSubscription_NextMsg(&got, sub, 5000), NATS_OK);
    jl_reply_init(&r);
    ck_assert_int_eq(jl_reply_decode(&r, natsMsg_GetData(got), (size_t)natsMsg_GetDataLength(got)),
                     JL_OK);
    ck_assert_int_eq(r.code, JL_CODE_INVALID);
    ck_assert_msg(strstr(r.message, "exceeds the 65536 bytes NATS carries in one message") != NULL,
                  "%s", r.message);
    jl_reply_cleanup(&r);
    natsMsg_Destroy(got);
    jl_conn_sub_destroy(env.conn, sub);
    free(big);
}
END_TEST

/* Snapshots saved by @p p once at least @p want are (they are confirmed asynchronously), or
 * what there are after 5 s. */
static uint64_t snapshots_saved(jl_producer *p, uint64_t want)
{
    jl_producer_stats st;
    int64_t deadline = tnow_ms() + 5000;
    for (;;) {
        jl_producer_get_stats(p, &st);
        if (st.snapshots_saved >= want || tnow_ms() >= deadline)
            return st.snapshots_saved;
        nats_Sleep(10);
    }
}

/* The aggregate's current state (GetState) is at @p version with @p lines lines. */
static void expect_state(const char *id, uint64_t version, size_t lines)
{
    Orders__OrderState *s = NULL;
    uint64_t v = 0;
    ck_assert_int_eq(get_state(id, 0, 0, 0, &s, &v), JL_CODE_OK);
    ck_assert_uint_eq(v, version);
    ck_assert_uint_eq(s->n_lines, lines);
    orders__order_state__free_unpacked(s, NULL);
}

START_TEST(cold_command_on_10000_events_reads_at_most_snapshot_every)
{
    enum { EVENTS = 10000, EVERY = 100 };
    jl_producer *p = open_producer(&orders_service, EVERY, 10);
    char id[JL_UUID_LEN + 1];
    create(p, id, NULL);
    for (int i = 1; i < EVENTS; i++) {
        if (i % 2 == 1) {
            add(p, id, "a", 1, NULL);
        } else {
            Orders__RemoveItem m = ORDERS__REMOVE_ITEM__INIT;
            m.order_id = id;
            m.sku = "a";
            run(p, &m.base, NULL, NULL);
        }
    }
    jl_producer_stats st;
    ck_assert_uint_ge(snapshots_saved(p, EVENTS / EVERY), EVENTS / EVERY - 1);
    jl_producer_close(p, 1000);

    /* A fresh producer (empty cache): the command loads the snapshot, then at most EVERY. */
    p = open_producer(&orders_service, EVERY, 10);
    add(p, id, "b", 1, NULL);
    jl_producer_get_stats(p, &st);
    ck_assert_uint_eq(st.loads, 1);
    ck_assert_uint_eq(st.snapshot_loads, 1);
    ck_assert_msg(st.last_load_events <= EVERY, "read %" PRIu64 " events", st.last_load_events);
    /* The next command on it is decided on the cached state: nothing read. */
    add(p, id, "c", 1, NULL);
    jl_producer_get_stats(p, &st);
    ck_assert_uint_eq(st.loads, 1);
    ck_assert_uint_eq(st.last_load_events, 0);
    jl_producer_close(p, 1000);

    /* Without snapshots the same load replays everything: the bound above is the snapshot's. */
    p = open_producer(&orders_service, 0, 10);
    add(p, id, "d", 1, NULL);
    jl_producer_get_stats(p, &st);
    ck_assert_uint_eq(st.last_load_events, EVENTS + 2);
    jl_producer_close(p, 1000);

    /* The state is right either way: events 2..10000 alternate add/remove of "a" and end on
     * an add, then b, c, d: four lines. */
    p = open_producer(&orders_service, EVERY, 10);
    expect_state(id, EVENTS + 3, 4);
    jl_producer_close(p, 1000);

    /* A past state, replayed from the first event, and a history page read from the start
     * are bounded by the request timeout (100 ms here): "timeout", not minutes on the one
     * query thread. */
    jl_config cfg = env.cfg;
    cfg.request_timeout_ms = 100;
    p = open_producer_with(&orders_service, &cfg);
    Orders__OrderState *past = NULL;
    uint64_t v = 0;
    ck_assert_int_eq(torder_state(env.conn, id, 0, 0, EVENTS, &past, &v), JL_CODE_TIMEOUT);
    Jetledger__GetHistory h = JETLEDGER__GET_HISTORY__INIT;
    h.aggregate_id = id;
    h.from_version = EVENTS;
    jl_reply r;
    jl_reply_init(&r);
    ck_assert_int_eq(tsend(env.conn, "orders", true, &h.base, NULL, &r), NATS_OK);
    ck_assert_msg(r.code == JL_CODE_TIMEOUT && strstr(r.message, "from_sequence") != NULL, "%s: %s",
                  jl_code_str(r.code), r.message);
    jl_reply_cleanup(&r);
    jl_producer_close(p, 1000);
}
END_TEST

/* What evolve was given for each aggregate version, by the path that gave it. */
typedef struct seen_event {
    char id[JL_UUID_LEN + 1], correlation[64], causation[64], type[64], agg[JL_UUID_LEN + 1];
    int64_t at_ns;
    uint32_t schema;
    uint64_t seq;
} seen_event;

static seen_event seen[2][8]; /* [0]: after an append (the cache), [1]: on a replay */
static int seen_path;

static jl_status spy_evolve(void *state, const jl_event *ev)
{
    if (ev->aggregate_version < 8) {
        seen_event *e = &seen[seen_path][ev->aggregate_version];
        snprintf(e->id, sizeof(e->id), "%s", ev->event_id ? ev->event_id : "");
        snprintf(e->correlation, sizeof(e->correlation), "%s",
                 ev->correlation_id ? ev->correlation_id : "");
        snprintf(e->causation, sizeof(e->causation), "%s",
                 ev->causation_id ? ev->causation_id : "");
        snprintf(e->type, sizeof(e->type), "%s/%s", ev->event_type ? ev->event_type : "",
                 ev->aggregate_type ? ev->aggregate_type : "");
        snprintf(e->agg, sizeof(e->agg), "%s", ev->aggregate_id ? ev->aggregate_id : "");
        e->at_ns = ev->occurred_at_ns;
        e->schema = ev->schema_version;
        e->seq = ev->stream_seq;
    }
    return orders_service.evolve(state, ev);
}

START_TEST(evolve_sees_the_same_event_after_an_append_as_on_a_replay)
{
    /* An upcaster branches on the schema version, and evolve may use the time: the state a
     * producer keeps after an append must be the one a replay builds. Evolve was given an
     * event without id, time, schema version or correlation after an append. */
    jl_service_def spy = orders_service;
    spy.evolve = spy_evolve;
    spy.schema_version = 7;
    memset(seen, 0, sizeof(seen));
    seen_path = 0;
    jl_producer *p = open_producer(&spy, 0, 10);
    char id[JL_UUID_LEN + 1];
    create(p, id, NULL);
    add(p, id, "a", 1, NULL);
    add(p, id, "b", 2, NULL); /* versions 1..3, each evolved after its append */
    jl_producer_close(p, 1000);
    seen_path = 1;
    p = open_producer(&spy, 0, 10);
    add(p, id, "c", 1, NULL); /* replays 1..3 */
    jl_producer_close(p, 1000);
    for (int v = 1; v <= 3; v++) {
        const seen_event *a = &seen[0][v], *r = &seen[1][v];
        ck_assert_msg(r->id[0] != 0, "version %d not replayed", v);
        ck_assert_msg(strcmp(a->id, r->id) == 0, "version %d: id '%s' vs '%s'", v, a->id, r->id);
        ck_assert_msg(strcmp(a->correlation, r->correlation) == 0, "version %d: correlation", v);
        ck_assert_msg(strcmp(a->causation, r->causation) == 0, "version %d: causation", v);
        ck_assert_msg(strcmp(a->type, r->type) == 0, "version %d: '%s' vs '%s'", v, a->type,
                      r->type);
        ck_assert_str_eq(a->agg, id);
        ck_assert_str_eq(r->agg, id);
        ck_assert_int_eq(a->at_ns, r->at_ns);
        ck_assert_uint_eq(a->schema, 7);
        ck_assert_uint_eq(r->schema, 7);
        ck_assert_uint_eq(a->seq, r->seq);
    }
}
END_TEST

/* A mistake in service @p def's decide, shown by AddItem of @p sku: refused as internal with
 * @p why in the message, nothing appended. */
static void refused_before_stored(const jl_service_def *def, const char *sku, const char *why)
{
    jl_producer *p = open_producer(def, 0, 10);
    char id[JL_UUID_LEN + 1];
    create(p, id, NULL);
    uint64_t msgs = tstream_msgs(env.conn, "ORDERS");
    jl_reply r;
    attempt_add(p, id, sku, &r);
    ck_assert_int_eq(r.code, JL_CODE_INTERNAL);
    ck_assert_msg(strstr(r.message, why) != NULL, "%s", r.message);
    ck_assert_uint_eq(tstream_msgs(env.conn, "ORDERS"), msgs);
    jl_reply_cleanup(&r);
    jl_producer_close(p, 1000);
}

START_TEST(an_event_type_missing_from_the_service_events_is_not_stored)
{
    /* decide emitting a type the service does not list would store an event that the service
     * itself cannot replay: refused as the mistake it is, nothing appended. */
    static const ProtobufCMessageDescriptor *const only_created[] = {
        &orders__order_created__descriptor};
    jl_service_def partial = orders_service;
    partial.events = (jl_types){only_created, 1};
    refused_before_stored(&partial, "a", "orders.ItemAdded, which is not in the events");
}
END_TEST

/* orders' decide, but text it puts in an event made not UTF-8 when the sku starts "bad-" (a
 * mistake in a service). */
static void bad_text_decide(const void *state, const jl_command *cmd, jl_decision *out)
{
    orders_service.decide(state, cmd, out);
    for (size_t i = 0; i + 4 <= out->bytes.len; i++) {
        if (memcmp(out->bytes.data + i, "bad-", 4) == 0)
            out->bytes.data[i + 3] = 0xff;
    }
}

START_TEST(an_event_with_text_that_is_not_utf8_is_not_stored)
{
    /* Every projector would set it aside, and replays of the aggregate would stop at it:
     * refused before it is stored. */
    jl_service_def bad = orders_service;
    bad.decide = bad_text_decide;
    refused_before_stored(&bad, "bad-sku", "field sku holding");
}
END_TEST

START_TEST(snapshot_of_another_state_version_is_ignored)
{
    jl_producer *p = open_producer(&orders_service, 2, 10);
    char id[JL_UUID_LEN + 1];
    create(p, id, NULL);
    add(p, id, "a", 1, NULL);
    add(p, id, "b", 2, NULL); /* version 3: a snapshot at version 2 exists */
    jl_producer_stats st;
    ck_assert_uint_ge(snapshots_saved(p, 1), 1);
    jl_producer_close(p, 1000);

    jl_service_def v2 = orders_service;
    v2.state_version = 2;
    p = open_producer(&v2, 100, 10); /* ignores the snapshot, writes its own at close */
    add(p, id, "c", 1, NULL);
    jl_producer_get_stats(p, &st);
    ck_assert_uint_eq(st.snapshot_loads, 0);
    ck_assert_uint_eq(st.last_load_events, 3);
    jl_producer_close(p, 1000);

    /* Back to version 1: version 2's snapshot is ignored the same way. */
    p = open_producer(&orders_service, 2, 10);
    Orders__RemoveItem rm = ORDERS__REMOVE_ITEM__INIT;
    rm.order_id = id;
    rm.sku = "b";
    run(p, &rm.base, NULL, NULL);
    jl_producer_get_stats(p, &st);
    ck_assert_uint_eq(st.snapshot_loads, 0);
    ck_assert_uint_eq(st.last_load_events, 4);
    expect_state(id, 5, 2); /* a and c */
    jl_producer_close(p, 1000);
}
END_TEST

START_TEST(snapshot_holding_fields_of_a_newer_state_is_ignored)
{
    /* A newer version added a field to the state and forgot to bump state_version: its
     * snapshots must not be loaded by this version, which would drop the field and decide on
     * a state folded from events it may not know. Replayed instead. */
    jl_producer *p = open_producer(&orders_service, 2, 10);
    char id[JL_UUID_LEN + 1], key[128];
    create(p, id, NULL);
    add(p, id, "a", 1, NULL); /* version 2: snapshotted */
    ck_assert_uint_ge(snapshots_saved(p, 1), 1);
    jl_producer_close(p, 1000);

    kvStore *kv = NULL;
    kvEntry *e = NULL;
    ck_assert_int_eq(js_KeyValue(&kv, jl_conn_js(env.conn), "jl_snapshots_ORDERS"), NATS_OK);
    snprintf(key, sizeof(key), "order.%s", id);
    ck_assert_int_eq(kvStore_Get(&e, kv, key), NATS_OK);
    Jetledger__Snapshot *snap = jetledger__snapshot__unpack(NULL, (size_t)kvEntry_ValueLen(e),
                                                            (const uint8_t *)kvEntry_Value(e));
    ck_assert_ptr_nonnull(snap);
    uint8_t state[4096], out[8192];
    ck_assert_uint_lt(snap->state.len + 3, sizeof(state));
    memcpy(state, snap->state.data, snap->state.len);
    memcpy(state + snap->state.len, "\x98\x06\x01", 3); /* field 99: the newer state's */
    ProtobufCBinaryData was = snap->state;
    snap->state.data = state;
    snap->state.len += 3;
    size_t n = jetledger__snapshot__pack(snap, out);
    snap->state = was; /* freed with the snapshot */
    jetledger__snapshot__free_unpacked(snap, NULL);
    kvEntry_Destroy(e);
    ck_assert_int_eq(kvStore_Put(NULL, kv, key, out, (int)n), NATS_OK);
    kvStore_Destroy(kv);

    p = open_producer(&orders_service, 100, 10);
    add(p, id, "b", 1, NULL);
    jl_producer_stats st;
    jl_producer_get_stats(p, &st);
    ck_assert_uint_eq(st.snapshot_loads, 0);
    ck_assert_uint_eq(st.last_load_events, 2);
    jl_producer_close(p, 1000);
}
END_TEST

START_TEST(an_evicted_or_closed_aggregate_loads_from_a_snapshot_alone)
{
    /* A cache of one: creating b evicts a, which is snapshotted on the way out (version 2 of
     * a snapshot_every of 100), so a miss on a reads the snapshot and no event. */
    jl_producer *p = open_producer(&orders_service, 100, 1);
    char a[JL_UUID_LEN + 1], b[JL_UUID_LEN + 1];
    create(p, a, NULL);
    add(p, a, "x", 1, NULL);
    create(p, b, NULL);
    ck_assert_uint_ge(snapshots_saved(p, 1), 1);
    add(p, a, "y", 2, NULL);
    jl_producer_stats st;
    jl_producer_get_stats(p, &st);
    ck_assert_uint_ge(st.snapshots_on_evict, 1);
    ck_assert_uint_eq(st.loads, 1);
    ck_assert_uint_eq(st.snapshot_loads, 1);
    ck_assert_uint_eq(st.last_load_events, 0);
    jl_producer_close(p, 1000); /* writes a's snapshot at version 3 */

    /* A restarted producer loads a from that snapshot: nothing to replay. */
    p = open_producer(&orders_service, 100, 10);
    struct timespec t0, t1;
    clock_gettime(CLOCK_REALTIME, &t0);
    add(p, a, "z", 3, NULL);
    clock_gettime(CLOCK_REALTIME, &t1);
    jl_producer_get_stats(p, &st);
    ck_assert_uint_eq(st.snapshot_loads, 1);
    ck_assert_uint_eq(st.last_load_events, 0);
    expect_state(a, 4, 3);
    jl_producer_close(p, 1000); /* a's snapshot at version 4, its last */

    /* Its state as of now, read from that snapshot alone (which keeps no time), is as old as
     * its last event: not of 1970. */
    p = open_producer(&orders_service, 100, 10);
    Jetledger__GetState q = JETLEDGER__GET_STATE__INIT;
    q.aggregate_id = a;
    jl_reply r;
    jl_reply_init(&r);
    ck_assert_int_eq(tsend(env.conn, "orders", true, &q.base, NULL, &r), NATS_OK);
    ck_assert_msg(r.code == JL_CODE_OK, "%s", r.message);
    Jetledger__StateResult *res =
        jetledger__state_result__unpack(NULL, r.result.len, r.result.data);
    ck_assert_ptr_nonnull(res);
    ck_assert_uint_eq(res->version, 4);
    int64_t from = (int64_t)t0.tv_sec * 1000000000LL + t0.tv_nsec;
    int64_t to = (int64_t)t1.tv_sec * 1000000000LL + t1.tv_nsec;
    ck_assert_msg(res->occurred_at_ns >= from && res->occurred_at_ns <= to,
                  "occurred at %" PRId64 ", its event between %" PRId64 " and %" PRId64,
                  res->occurred_at_ns, from, to);
    jetledger__state_result__free_unpacked(res, NULL);
    jl_reply_cleanup(&r);
    jl_producer_close(p, 1000);
}
END_TEST

/* The ORDERS stream as restored from an older backup: deleted, created again and given back
 * its first @p n messages (the snapshot bucket stays as it was). */
static void restore_first(uint64_t n)
{
    jsCtx *js = jl_conn_js(env.conn);
    natsMsg *msgs[16];
    ck_assert_uint_le(n, 16);
    for (uint64_t i = 0; i < n; i++)
        ck_assert_int_eq(js_GetMsg(&msgs[i], js, "ORDERS", i + 1, NULL, NULL), NATS_OK);
    ck_assert_int_eq(js_DeleteStream(js, "ORDERS", NULL, NULL), NATS_OK);
    jl_producer_close(open_producer(&orders_service, 100, 10), 1000); /* creates it */
    for (uint64_t i = 0; i < n; i++) {
        jsPubAck *pa = NULL;
        ck_assert_int_eq(js_Publish(&pa, js, natsMsg_GetSubject(msgs[i]), natsMsg_GetData(msgs[i]),
                                    natsMsg_GetDataLength(msgs[i]), NULL, NULL),
                         NATS_OK);
        ck_assert_uint_eq(pa->Sequence, i + 1);
        jsPubAck_Destroy(pa);
        natsMsg_Destroy(msgs[i]);
    }
}

START_TEST(an_aggregate_ahead_of_a_restored_stream_is_replayed_from_it)
{
    /* A stream restored from an older backup holds less of an aggregate than its snapshot, or
     * than a running producer's cache: commands are decided on what the stream holds, not
     * answered "conflict" (every append expecting the lost sequence) or refused for good. */
    jl_producer *p = open_producer(&orders_service, 100, 10);
    char x[JL_UUID_LEN + 1], z[JL_UUID_LEN + 1];
    create(p, x, NULL); /* sequence 1 */
    add(p, x, "a", 1, NULL);
    add(p, x, "b", 1, NULL);
    add(p, x, "c", 1, NULL);
    create(p, z, NULL);
    add(p, z, "a", 1, NULL);
    jl_producer_close(p, 1000); /* snapshots: x at version 4, z at 2 */
    restore_first(2);           /* x at version 2, no z */

    /* GetState finds nothing after z's snapshot, and the stream without z. */
    p = open_producer(&orders_service, 100, 10);
    Orders__OrderState *st = NULL;
    uint64_t v = 0;
    ck_assert_int_eq(get_state(z, 0, 0, 0, &st, &v), JL_CODE_NOT_FOUND);
    /* A cold load reads x's snapshot (version 4); its append finds x at version 2. */
    add(p, x, "d", 1, NULL);
    expect_state(x, 3, 2); /* a and d */

    /* Decided on the cache: placed (version 4), and the placement lost to a restore; an item
     * added then is refused on the cached state, which the stream's leader says is ahead. */
    Orders__PlaceOrder place = ORDERS__PLACE_ORDER__INIT;
    place.order_id = x;
    run(p, &place.base, NULL, NULL);
    restore_first(3);
    add(p, x, "e", 1, NULL);
    expect_state(x, 4, 3); /* a, d and e */
    jl_producer_close(p, 1000);
}
END_TEST

START_TEST(an_aggregate_written_again_after_a_restore_is_replayed_from_it)
{
    /* Restored, then written to again by another producer up to past the sequence this one
     * caches it at: its versions after that sequence start again below the cached one. */
    jl_producer *p = open_producer(&orders_service, 100, 10), *q = NULL;
    char x[JL_UUID_LEN + 1], y[JL_UUID_LEN + 1];
    create(p, x, NULL);
    add(p, x, "a", 1, NULL);
    add(p, x, "b", 1, NULL); /* p caches x at version 3, sequence 3 */
    restore_first(2);

    q = open_producer(&orders_service, 100, 10);
    for (int i = 0; i < 3; i++)
        create(q, y, NULL);  /* sequences 3..5 */
    add(q, x, "c", 1, NULL); /* version 3 again, at sequence 6 */
    add(q, x, "e", 1, NULL); /* version 4, at 7: what follows p's version 3, but not p's */
    jl_producer_close(q, 1000);
    /* Decided on p's history (a, b), b could be removed; the stream's has no b. */
    Orders__RemoveItem rm = ORDERS__REMOVE_ITEM__INIT;
    rm.order_id = x;
    rm.sku = "b";
    jl_reply r;
    attempt(p, &rm.base, &r);
    ck_assert_msg(r.code == JL_CODE_NOT_FOUND, "%s: %s", jl_code_str(r.code), r.message);
    jl_reply_cleanup(&r);
    add(p, x, "d", 1, NULL);
    expect_state(x, 5, 4); /* a, c, e and d */
    jl_producer_close(p, 1000);
}
END_TEST

START_TEST(a_full_stream_refuses_commands_saying_so)
{
    /* --max-bytes with discard "new": the server refuses the append at once. The reply says
     * so and that nothing was stored, not that it timed out; and the producer goes on. */
    jl_config cfg = env.cfg;
    cfg.max_bytes = 4096;
    cfg.snapshot_every = 0;
    cfg.request_timeout_ms = 20000; /* a refusal waited out would take this long */
    char id[JL_UUID_LEN + 1];
    jl_producer *p = open_producer_with(&orders_service, &cfg);
    Orders__CreateOrder m = ORDERS__CREATE_ORDER__INIT;
    m.customer_id = "full";
    jl_reply r;
    int accepted = 0, refused = 0;
    for (int i = 0; i < 200 && refused < 2; i++) {
        uint64_t before = tstream_msgs(env.conn, "ORDERS");
        int64_t started = tnow_ms();
        attempt(p, &m.base, &r);
        int64_t took = tnow_ms() - started;
        if (r.code == JL_CODE_OK) {
            accepted++;
            snprintf(id, sizeof(id), "%s", r.aggregate_id);
        } else {
            refused++;
            ck_assert_msg(r.code == JL_CODE_UNAVAILABLE && strstr(r.message, "refused") &&
                              strstr(r.message, "not stored") && strstr(r.message, "maximum"),
                          "%s: %s", jl_code_str(r.code), r.message);
            ck_assert_uint_eq(tstream_msgs(env.conn, "ORDERS"), before);
            /* Refused at once, not waited out. */
            ck_assert_int_lt(took, cfg.request_timeout_ms / 2);
        }
        jl_reply_cleanup(&r);
    }
    ck_assert_int_gt(accepted, 0);
    ck_assert_int_eq(refused, 2);
    /* A command on an aggregate already there is refused the same way. */
    Orders__AddItem a = ORDERS__ADD_ITEM__INIT;
    a.order_id = id;
    a.sku = "x";
    a.quantity = 1;
    a.unit_price_cents = 1;
    attempt(p, &a.base, &r);
    ck_assert_msg(r.code == JL_CODE_UNAVAILABLE && strstr(r.message, "refused"), "%s", r.message);
    jl_reply_cleanup(&r);
    expect_state(id, 1, 0);
    jl_producer_close(p, 1000);
}
END_TEST

START_TEST(events_over_the_server_max_payload_are_refused_as_invalid)
{
    /* A commit the server would not take in one message (max_payload) is never sent: the
     * command is refused as invalid, saying why, and its aggregate goes on as it was. */
    tenv_stop(&env);
    tenv_start_with(&env, "max_payload: 2048\n");
    jl_producer *p = open_producer(&orders_service, 0, 10);
    char id[JL_UUID_LEN + 1], sku[65]; /* 64 bytes: the most a sku may have */
    create(p, id, NULL);
    for (int i = 0; i < 30; i++) {
        snprintf(sku, sizeof(sku), "%02d-%061d", i, 0); /* 64 bytes */
        add(p, id, sku, 1, NULL);
    }
    uint64_t before = tstream_msgs(env.conn, "ORDERS");
    Orders__PlaceOrder m = ORDERS__PLACE_ORDER__INIT;
    m.order_id = id;
    jl_reply r;
    attempt(p, &m.base, &r); /* OrderPlaced carries the 30 lines: over 2 KiB */
    ck_assert_msg(r.code == JL_CODE_INVALID && strstr(r.message, "max_payload") &&
                      strstr(r.message, "not stored"),
                  "%s: %s", jl_code_str(r.code), r.message);
    jl_reply_cleanup(&r);
    ck_assert_uint_eq(tstream_msgs(env.conn, "ORDERS"), before);
    Orders__CancelOrder c = ORDERS__CANCEL_ORDER__INIT;
    c.order_id = id;
    run(p, &c.base, NULL, NULL);
    ck_assert_uint_eq(tstream_msgs(env.conn, "ORDERS"), before + 1);
    jl_producer_close(p, 1000);
}
END_TEST

START_TEST(an_aggregate_whose_events_all_aged_out_is_refused_with_why)
{
    /* Under --max-age an aggregate's events age out of the stream; its snapshot keeps its
     * state, which the stream can then no longer confirm (a later commit may have aged out
     * too): a command on it is refused, saying why, rather than forking its history. GetState
     * answers from the snapshot. */
    jl_config cfg = env.cfg;
    cfg.max_age_s = 1;
    cfg.duplicate_window_s = 1;
    cfg.snapshot_every = 100;
    cfg.cache_size = 10;
    char x[JL_UUID_LEN + 1];
    jl_producer *p = open_producer_with(&orders_service, &cfg);
    create(p, x, NULL);
    add(p, x, "a", 1, NULL);
    jl_producer_close(p, 1000); /* snapshot at version 2 */
    int64_t deadline = tnow_ms() + 15000;
    while (tstream_msgs(env.conn, "ORDERS") > 0 && tnow_ms() < deadline)
        nats_Sleep(100);
    ck_assert_uint_eq(tstream_msgs(env.conn, "ORDERS"), 0);

    p = open_producer_with(&orders_service, &cfg);
    jl_reply r;
    attempt_add(p, x, "b", &r);
    ck_assert_msg(r.code == JL_CODE_INTERNAL && strstr(r.message, "aged out") != NULL, "%s: %s",
                  jl_code_str(r.code), r.message);
    jl_reply_cleanup(&r);
    expect_state(x, 2, 1);
    jl_producer_close(p, 1000);
}
END_TEST

START_TEST(a_purged_aggregate_is_gone_not_kept_alive_by_its_snapshot)
{
    /* A stream with no max age loses nothing by itself: an aggregate whose every commit is
     * gone was purged by an operator. Its snapshot must not keep it alive (commands refused as
     * "aged out", a creation as "already exists", GetState answering a purged state): it is
     * replayed from the stream, where it does not exist. */
    jl_producer *p = open_producer(&orders_service, 100, 10);
    char x[JL_UUID_LEN + 1];
    create(p, x, NULL);
    add(p, x, "a", 1, NULL);
    jl_producer_close(p, 1000); /* snapshot at version 2 */
    ck_assert_int_eq(js_PurgeStream(jl_conn_js(env.conn), "ORDERS", NULL, NULL), NATS_OK);
    p = open_producer(&orders_service, 100, 10);
    Orders__OrderState *st = NULL;
    uint64_t v = 0;
    ck_assert_int_eq(torder_state(env.conn, x, 0, 0, 0, &st, &v), JL_CODE_NOT_FOUND);
    jl_reply r;
    attempt_add(p, x, "b", &r);
    ck_assert_msg(r.code == JL_CODE_NOT_FOUND, "%s: %s", jl_code_str(r.code), r.message);
    jl_reply_cleanup(&r);
    Orders__CreateOrder m = ORDERS__CREATE_ORDER__INIT;
    m.order_id = x;
    m.customer_id = "again";
    attempt(p, &m.base, &r);
    ck_assert_msg(r.code == JL_CODE_OK, "%s: %s", jl_code_str(r.code), r.message);
    ck_assert_uint_eq(r.aggregate_version, 1);
    jl_reply_cleanup(&r);
    expect_state(x, 1, 0);
    jl_producer_close(p, 1000);
}
END_TEST

START_TEST(commits_aged_out_after_a_snapshot_do_not_pass_for_another_history)
{
    /* A snapshot, then commits of which the first aged out (purged here): the one read next
     * does not follow on from the snapshot, as after a restore, but the stream no longer holds
     * what it follows. Read on from the snapshot as before, not replayed from what is left. */
    jl_producer *p = open_producer(&orders_service, 100, 10);
    char x[JL_UUID_LEN + 1];
    uint64_t d_seq = 0;
    create(p, x, NULL);
    add(p, x, "a", 1, NULL);
    jl_producer_close(p, 1000);                /* snapshot at version 2 */
    p = open_producer(&orders_service, 0, 10); /* writes no snapshot */
    add(p, x, "c", 1, NULL);
    add(p, x, "d", 1, &d_seq);
    jl_producer_close(p, 1000);
    jsOptions o;
    jsOptions_Init(&o);
    o.Stream.Purge.Sequence = d_seq; /* all before d: c as if aged out */
    ck_assert_int_eq(js_PurgeStream(jl_conn_js(env.conn), "ORDERS", &o, NULL), NATS_OK);
    p = open_producer(&orders_service, 100, 10);
    expect_state(x, 4, 2); /* a (the snapshot) and d; c is lost to it */
    jl_producer_close(p, 1000);
}
END_TEST

START_TEST(cached_state_catches_up_after_another_replica_wrote)
{
    /* Two replicas: each caches the aggregate, then the other writes; the stale one loses the
     * race once, reads only the new commit and succeeds. */
    jl_producer *a = open_producer(&orders_service, 100, 100);
    jl_producer *b = open_producer(&orders_service, 100, 100);
    char id[JL_UUID_LEN + 1];
    create(a, id, NULL);
    add(b, id, "x", 1, NULL); /* b loads (1 event) and writes */
    add(a, id, "y", 1, NULL); /* a's cache is stale: conflict, catch up 1 event, succeed */
    jl_producer_stats st;
    jl_producer_get_stats(a, &st);
    ck_assert_uint_eq(st.conflicts, 1);
    ck_assert_uint_eq(st.loads, 0); /* a CreateOrder under a generated id reads nothing */
    ck_assert_uint_eq(st.last_load_events, 1); /* the last commit, read alone */
    expect_state(id, 3, 2);

    /* b writes twice (losing once to a's y): a, two commits behind, cannot take the last one
     * alone and reads both in order. */
    add(b, id, "x", 1, NULL);
    add(b, id, "z", 1, NULL);
    add(a, id, "y", 1, NULL);
    jl_producer_get_stats(a, &st);
    ck_assert_uint_eq(st.conflicts, 2);
    ck_assert_uint_eq(st.last_load_events, 2);
    expect_state(id, 6, 3); /* x 2, y 2, z 1 */
    jl_producer_close(a, 1000);
    jl_producer_close(b, 1000);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("temporal");
    TCase *tc = tcase_create("producer");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 240);
    tcase_add_test(tc, state_as_of_sequence_time_and_version);
    tcase_add_test(tc, history_lists_every_event_in_order_with_paging);
    tcase_add_test(tc, history_pages_fit_in_what_the_server_carries);
    tcase_add_test(tc, cold_command_on_10000_events_reads_at_most_snapshot_every);
    tcase_add_test(tc, snapshot_of_another_state_version_is_ignored);
    tcase_add_test(tc, evolve_sees_the_same_event_after_an_append_as_on_a_replay);
    tcase_add_test(tc, snapshot_holding_fields_of_a_newer_state_is_ignored);
    tcase_add_test(tc, an_event_type_missing_from_the_service_events_is_not_stored);
    tcase_add_test(tc, an_event_with_text_that_is_not_utf8_is_not_stored);
    tcase_add_test(tc, an_evicted_or_closed_aggregate_loads_from_a_snapshot_alone);
    tcase_add_test(tc, cached_state_catches_up_after_another_replica_wrote);
    tcase_add_test(tc, an_aggregate_ahead_of_a_restored_stream_is_replayed_from_it);
    tcase_add_test(tc, an_aggregate_written_again_after_a_restore_is_replayed_from_it);
    tcase_add_test(tc, an_aggregate_whose_events_all_aged_out_is_refused_with_why);
    tcase_add_test(tc, a_full_stream_refuses_commands_saying_so);
    tcase_add_test(tc, events_over_the_server_max_payload_are_refused_as_invalid);
    tcase_add_test(tc, a_purged_aggregate_is_gone_not_kept_alive_by_its_snapshot);
    tcase_add_test(tc, commits_aged_out_after_a_snapshot_do_not_pass_for_another_history);
    suite_add_tcase(s, tc);
    return trun(s);
}
