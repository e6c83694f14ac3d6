/*
 * Instances of one durable consumer find each other, and one of them stops.
 *
 * Two processes pulling from one durable take each other's deliveries: each finds its own
 * missing, resets the consumer at its checkpoint, and the other's fetches then fail. No event is
 * skipped (the checkpoint, and the check that the first deliveries after an attach come from
 * the consumer attached to, see to that), but neither keeps up for long, and the process manager
 * sends each command twice (answered once). It happens when a projector is scaled out without a
 * durable of its own per instance (JL_DURABLE), or when a second one is started by hand with
 * another data dir.
 *
 * Every instance answers "<name>.admin.<durable>.Hello" (jl__jobs_open() subscribes it; the
 * durable of its first stream) with its
 * Instance, and asks the same at open, once subscribed (of two that open together, the later
 * question finds the earlier subscription), and whenever a delivery goes missing (a cluster may
 * not yet have carried the other's subscription to the server asked). Of two that meet, by the
 * answer or by the question, one still opening yields to one running, whatever their clocks
 * say; otherwise (both opening, or both running: started together) the one that started later
 * yields. The one that yields stops: its open fails, or its run ends, with JL_ERR_CONFLICT and
 * a message naming the other. Each side decides on the same facts (the other's message carries
 * the opening flag its own decision used, and both compare the same pair of started_at_ns and
 * instance_id), so exactly one of them yields.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "deadline.h"
#include "jetledger/admin.pb-c.h"
#include "jetledger/log.h"
#include "projector_int.h"

/* The longest wait for answers; and at least this long after our own answer came back (others
 * on the same server answer about as fast, those on another server one route hop later). */
#define TWINS_WAIT_MS 1000
#define TWINS_AFTER_OWN_MS 50

void jl__twins_init(jl_projector *p)
{
    jl_uuid_new(p->instance_id);
    if (gethostname(p->host, sizeof(p->host)) != 0)
        snprintf(p->host, sizeof(p->host), "unknown");
    p->host[sizeof(p->host) - 1] = 0;
    p->started_ns = jl__now_ns();
    atomic_init(&p->yielded, false);
    atomic_init(&p->yield_claimed, false);
    atomic_init(&p->opening, true);
    atomic_init(&p->twins_asked_ns, 0);
}

static Jetledger__Instance self(jl_projector *p, bool opening)
{
    Jetledger__Instance me = JETLEDGER__INSTANCE__INIT;
    me.instance_id = (char *)p->instance_id;
    me.host = (char *)p->host;
    me.pid = (int64_t)getpid();
    me.started_at_ns = p->started_ns;
    me.durable = (char *)p->src[0].durable;
    me.opening = opening;
    return me;
}

/* Whether @p o can be another instance's: one a stray or garbled message (an empty one unpacks
 * as instance "" started at 0, which would have every running instance stop for it) is not. */
static bool is_instance(const Jetledger__Instance *o, char *why, size_t n)
{
    char canon[JL_UUID_LEN + 1];
    if (jl_uuid_canonical(canon, o->instance_id) != JL_OK || strcmp(canon, o->instance_id) != 0)
        snprintf(why, n, "instance_id must be a UUID in canonical form");
    else if (o->started_at_ns <= 0 || o->pid <= 0)
        snprintf(why, n, "started_at_ns and pid must be positive");
    else if (!jl_valid_name(o->durable))
        snprintf(why, n, "durable must be a consumer name");
    else
        return true;
    return false;
}

/* Whether @p o started before this instance (ties: the smaller instance id). */
static bool started_first(const jl_projector *p, const Jetledger__Instance *o)
{
    if (o->started_at_ns != p->started_ns)
        return o->started_at_ns < p->started_ns;
    return strcmp(o->instance_id, p->instance_id) < 0;
}

/* @p o is another instance on this durable: one opening stops for one running, else the later
 * of the two stops. @p opening: whether this one is, as @p o was told (or will be). */
static void met(jl_projector *p, const Jetledger__Instance *o, bool opening)
{
    char host[200], id[80], started[48];
    jl_log_str(host, sizeof(host), o->host);
    jl_log_str(id, sizeof(id), o->instance_id);
    jl_format_time(started, sizeof(started), o->started_at_ns);
    bool yield = opening != o->opening ? opening : started_first(p, o);
    if (!yield) {
        jl_log(JL_LOG_WARN, "another instance consumes this durable: it started later and stops",
               "\"durable\":\"%s\",\"other\":\"%s\",\"host\":\"%s\",\"pid\":%" PRId64
               ",\"started\":\"%s\"",
               p->src[0].durable, id, host, o->pid, started);
        return;
    }
    bool first = false;
    if (!atomic_compare_exchange_strong(&p->yield_claimed, &first, true))
        return; /* yielding already */
    snprintf(p->yield_msg, sizeof(p->yield_msg),
             "durable consumer %s is also consumed by instance %s on host %s (pid %" PRId64
             ", started %s), which started first: this instance stops. Two processes on one "
             "durable take each other's deliveries; give each instance its own --durable "
             "(JL_DURABLE) and --data-dir, or run one",
             p->src[0].durable, id, host, o->pid, started);
    atomic_store(&p->yielded, true);
    atomic_store(&p->stopping, true); /* its loops, a rebuild, the outbox: all of it stops */
    jl_log(JL_LOG_ERROR, "another instance consumes this durable: this one stops",
           "\"durable\":\"%s\",\"other\":\"%s\",\"host\":\"%s\",\"pid\":%" PRId64
           ",\"started\":\"%s\",\"hint\":\"each instance needs its own --durable (JL_DURABLE) "
           "and --data-dir\"",
           p->src[0].durable, id, host, o->pid, started);
}

bool jl__twins_yielded(jl_projector *p)
{
    return atomic_load(&p->yielded);
}

jl_status jl__twins_opened(jl_projector *p, char *err, size_t errlen)
{
    atomic_store(&p->opening, false);
    if (!jl__twins_yielded(p))
        return JL_OK;
    snprintf(err, errlen, "%s", p->yield_msg); /* met while opening, after it asked */
    return JL_ERR_CONFLICT;
}

void jl__twins_hello(jl_projector *p, const void *data, size_t len, jl_reply *r)
{
    bool newer; /* a newer version's fields: instances of two versions meet all the same */
    Jetledger__Instance *o = (Jetledger__Instance *)jl_request_unpack(
        &jetledger__instance__descriptor, data, len, r, &newer);
    char why[80];
    if (o == NULL)
        return; /* r says why */
    if (!is_instance(o, why, sizeof(why))) {
        jl_reply_error(r, JL_CODE_INVALID, "not an instance's Hello: %s", why);
        protobuf_c_message_free_unpacked(&o->base, NULL);
        return;
    }
    bool opening = atomic_load(&p->opening); /* one reading: the decision and the answer */
    if (strcmp(o->durable, p->src[0].durable) == 0 && strcmp(o->instance_id, p->instance_id) != 0)
        met(p, o, opening);
    protobuf_c_message_free_unpacked(&o->base, NULL);
    Jetledger__Instance me = self(p, opening);
    jl_reply_set_result(r, &me.base);
}

/* One answer to our Hello (sent with @p opening): true when it is our own. */
static bool answer(jl_projector *p, natsMsg *m, bool opening)
{
    jl_reply r;
    bool own = false;
    jl_reply_init(&r);
    if (jl_reply_decode(&r, natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m)) == JL_OK &&
        r.code == JL_CODE_OK && strcmp(r.result_type, "jetledger.Instance") == 0) {
        Jetledger__Instance *o = jetledger__instance__unpack(NULL, r.result.len, r.result.data);
        char why[80];
        if (o != NULL && is_instance(o, why, sizeof(why))) {
            own = strcmp(o->instance_id, p->instance_id) == 0;
            if (!own && strcmp(o->durable, p->src[0].durable) == 0)
                met(p, o, opening);
        }
        if (o != NULL)
            jetledger__instance__free_unpacked(o, NULL);
    }
    jl_reply_cleanup(&r);
    return own;
}

jl_status jl__twins_ask(jl_projector *p, char *err, size_t errlen)
{
    natsConnection *nc = jl_conn_nats(p->conn);
    natsInbox *inbox = NULL;
    natsSubscription *sub = NULL;
    char subject[256];
    uint8_t body[512];
    bool opening = atomic_load(&p->opening);
    Jetledger__Instance me = self(p, opening);
    size_t n = jetledger__instance__get_packed_size(&me);

    snprintf(subject, sizeof(subject), "%s.admin.%s.Hello", p->def->name, p->src[0].durable);
    natsStatus ns = n <= sizeof(body) ? natsInbox_Create(&inbox) : NATS_INSUFFICIENT_BUFFER;
    if (ns == NATS_OK)
        ns = natsConnection_SubscribeSync(&sub, nc, inbox);
    if (ns == NATS_OK) {
        jetledger__instance__pack(&me, body);
        ns = natsConnection_PublishRequest(nc, subject, inbox, body, (int)n);
    }
    if (ns == NATS_OK)
        ns = natsConnection_FlushTimeout(nc, TWINS_WAIT_MS);
    int64_t t0 = jl__mono_ns(), until = t0 + TWINS_WAIT_MS * NS_PER_MS;
    for (int64_t now = t0; ns == NATS_OK && now < until; now = jl__mono_ns()) {
        natsMsg *m = NULL;
        int64_t left_ms = (until - now + NS_PER_MS - 1) / NS_PER_MS;
        if (natsSubscription_NextMsg(&m, sub, left_ms) != NATS_OK)
            break; /* the time is up */
        if (answer(p, m, opening)) {
            int64_t after = 3 * (jl__mono_ns() - t0);
            if (after < TWINS_AFTER_OWN_MS * NS_PER_MS)
                after = TWINS_AFTER_OWN_MS * NS_PER_MS;
            if (jl__mono_ns() + after < until)
                until = jl__mono_ns() + after;
        }
        natsMsg_Destroy(m);
    }
    if (ns != NATS_OK) /* not known: the next missing delivery asks again */
        jl_log(JL_LOG_DEBUG, "cannot ask for other instances of this durable",
               "\"durable\":\"%s\",\"error\":\"%s\"", p->src[0].durable, natsStatus_GetText(ns));
    jl_conn_sub_destroy(p->conn, sub); /* a late answer may be on its way */
    natsInbox_Destroy(inbox);
    if (!jl__twins_yielded(p))
        return JL_OK;
    snprintf(err, errlen, "%s", p->yield_msg);
    return JL_ERR_CONFLICT;
}

void jl__twins_ask_now_and_then(jl_projector *p)
{
    int_fast64_t last = atomic_load(&p->twins_asked_ns), now = jl__mono_ns();
    /* Claimed: sources losing deliveries together ask once. */
    if ((last != 0 && now - last < JL_TWINS_ASK_EVERY_MS * NS_PER_MS) ||
        !atomic_compare_exchange_strong(&p->twins_asked_ns, &last, now))
        return;
    char err[8];
    jl__twins_ask(p, err, sizeof(err));
}
