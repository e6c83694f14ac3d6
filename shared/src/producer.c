#include "jetledger/producer.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "jetledger/log.h"
#include "jetledger/store.h"

#define SUBJECT_MAX 256

struct jl_producer {
    const jl_service_def *def;
    jl_conn *conn;
    jl_store *store;
    natsSubscription *sub;
    int retries;
    pthread_mutex_t mu; /* one command at a time: the scratch state below is shared */
    void *state;
    jl_decision decision;
    jl_buf commit;
    uint64_t handled;
};

jl_status jl_aggregate_subject(char *out, size_t n, const char *service, const char *aggregate_type,
                               const char *aggregate_id)
{
    int w = snprintf(out, n, "%s.events.%s.%s", service, aggregate_type, aggregate_id);
    return (w < 0 || (size_t)w >= n) ? JL_ERR_TOO_LARGE : JL_OK;
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* ---- loading an aggregate ---- */

typedef struct load_ctx {
    jl_producer *p;
    uint64_t version;
    char err[256];
} load_ctx;

static jl_status load_commit(uint64_t seq, int64_t time_ns, const void *data, size_t len,
                             void *closure)
{
    load_ctx *lc = closure;
    const jl_service_def *def = lc->p->def;
    jl_commit *c = NULL;
    jl_event ev;
    (void)time_ns;

    jl_status s = jl_commit_decode(&c, data, len, seq, lc->err, sizeof(lc->err));
    for (size_t i = 0; s == JL_OK && i < jl_commit_count(c); i++) {
        s = jl_commit_event(c, i, &def->events, &ev, lc->err, sizeof(lc->err));
        if (s == JL_OK)
            s = def->evolve(lc->p->state, &ev);
        if (s == JL_OK)
            lc->version = ev.aggregate_version;
        else if (lc->err[0] == 0)
            snprintf(lc->err, sizeof(lc->err), "evolve refused event %s (%s): %s", ev.event_id,
                     ev.event_type, jl_status_str(s));
    }
    if (s != JL_OK) {
        char tmp[256];
        snprintf(tmp, sizeof(tmp), "%s", lc->err);
        snprintf(lc->err, sizeof(lc->err), "stream sequence %" PRIu64 ": %.200s", seq, tmp);
    }
    jl_commit_free(c);
    return s;
}

/* Replay the aggregate's subject into p->state. */
static jl_status load_aggregate(jl_producer *p, const char *subject, uint64_t *out_version,
                                uint64_t *out_last_seq, jl_reply *r)
{
    load_ctx lc = {.p = p, .version = 0, .err = ""};
    p->def->state_init(p->state);
    jl_status s = jl_store_read_subject(p->store, subject, 0, 0, load_commit, &lc, out_last_seq);
    if (s == JL_OK) {
        *out_version = lc.version;
    } else if (s == JL_ERR_UNAVAILABLE || s == JL_ERR_TIMEOUT) {
        jl_reply_error(r, JL_CODE_UNAVAILABLE, "event store unavailable: %s",
                       jl_store_errmsg(p->store));
    } else {
        jl_reply_error(r, JL_CODE_INTERNAL, "cannot rebuild %s: %s", subject,
                       lc.err[0] ? lc.err : jl_store_errmsg(p->store));
        jl_log(JL_LOG_ERROR, "aggregate load failed", "\"subject\":\"%s\",\"status\":\"%s\"",
               subject, jl_status_str(s));
    }
    return s;
}

/* ---- validating a request ---- */

static const jl_command_def *find_command(const jl_service_def *def, const char *name)
{
    for (size_t i = 0; i < def->n_commands; i++) {
        if (strcmp(def->commands[i].descriptor->short_name, name) == 0)
            return &def->commands[i];
    }
    return NULL;
}

static bool valid_id_text(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > JL_MAX_ID_LEN)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch <= 0x20 || ch >= 0x7f)
            return false;
    }
    return true;
}

static const char *field_string(const ProtobufCMessage *msg, const char *field)
{
    const ProtobufCFieldDescriptor *f =
        protobuf_c_message_descriptor_get_field_by_name(msg->descriptor, field);
    if (f == NULL || f->type != PROTOBUF_C_TYPE_STRING || f->label == PROTOBUF_C_LABEL_REPEATED)
        return NULL;
    return *(const char *const *)(const void *)((const uint8_t *)msg + f->offset);
}

/* ---- handling ---- */

static void handle_locked(jl_producer *p, const char *command, const void *data, size_t len,
                          const char *command_id, const char *correlation_id,
                          const char *causation_id, jl_reply *r)
{
    const jl_service_def *def = p->def;
    ProtobufCMessage *msg = NULL;
    char agg_id[JL_UUID_LEN + 1];
    char cmd_id[JL_MAX_ID_LEN + 1];
    char subject[SUBJECT_MAX];
    char types[512];

    const jl_command_def *cd = find_command(def, command);
    if (cd == NULL) {
        jl_reply_error(r, JL_CODE_INVALID, "unknown command '%.64s' for service %s", command,
                       def->name);
        goto done;
    }
    if (len > JL_MAX_COMMAND_BYTES) {
        jl_reply_error(r, JL_CODE_INVALID, "command of %zu bytes exceeds the %d-byte limit", len,
                       JL_MAX_COMMAND_BYTES);
        goto done;
    }
    msg = protobuf_c_message_unpack(cd->descriptor, NULL, len, data);
    if (msg == NULL) {
        jl_reply_error(r, JL_CODE_INVALID, "malformed protobuf: the body is not a valid %s",
                       cd->descriptor->name);
        goto done;
    }
    const char *id = field_string(msg, cd->id_field);
    if (id == NULL) {
        jl_reply_error(r, JL_CODE_INTERNAL, "%s has no string field '%s'", cd->descriptor->name,
                       cd->id_field);
        goto done;
    }
    if (*id == 0 && cd->may_create_id) {
        jl_uuid_new(agg_id);
    } else if (*id == 0) {
        jl_reply_error(r, JL_CODE_INVALID, "%s is required", cd->id_field);
        goto done;
    } else if (jl_uuid_canonical(agg_id, id) != JL_OK) {
        jl_reply_error(r, JL_CODE_INVALID, "%s '%.64s' is not a UUID", cd->id_field, id);
        goto done;
    }
    snprintf(r->aggregate_id, sizeof(r->aggregate_id), "%s", agg_id);
    if (command_id != NULL && *command_id != 0) {
        if (!valid_id_text(command_id)) {
            jl_reply_error(r, JL_CODE_INVALID,
                           "command id must be 1 to %d printable characters without spaces",
                           JL_MAX_ID_LEN);
            goto done;
        }
        snprintf(cmd_id, sizeof(cmd_id), "%s", command_id);
    } else {
        jl_uuid_new(cmd_id);
    }
    if ((correlation_id && *correlation_id && !valid_id_text(correlation_id)) ||
        (causation_id && *causation_id && !valid_id_text(causation_id))) {
        jl_reply_error(r, JL_CODE_INVALID,
                       "correlation and causation ids must be 1 to %d "
                       "printable characters without spaces",
                       JL_MAX_ID_LEN);
        goto done;
    }
    if (jl_aggregate_subject(subject, sizeof(subject), def->name, def->aggregate_type, agg_id) !=
        JL_OK) {
        jl_reply_error(r, JL_CODE_INTERNAL, "aggregate subject too long");
        goto done;
    }

    for (int attempt = 0;; attempt++) {
        uint64_t version = 0, last_seq = 0;
        if (load_aggregate(p, subject, &version, &last_seq, r) != JL_OK)
            goto done;
        jl_command cmd = {
            .msg = msg, .aggregate_id = agg_id, .command_id = cmd_id, .now_ns = now_ns()};
        jl_decision_reset(&p->decision);
        def->decide(p->state, &cmd, &p->decision);
        r->aggregate_version = version;
        r->stream_seq = last_seq;
        if (jl_decision_rejected(&p->decision)) {
            jl_reply_error(r, p->decision.code, "%s", p->decision.message);
            goto done;
        }
        if (p->decision.n_events == 0)
            goto done; /* accepted, nothing to record */

        jl_commit_meta meta = {
            .aggregate_type = def->aggregate_type,
            .aggregate_id = agg_id,
            .correlation_id = correlation_id,
            .causation_id = causation_id,
            .command_id = cmd_id,
            .command_type = cd->descriptor->name,
            .first_version = version + 1,
            .occurred_at_ns = cmd.now_ns,
            .schema_version = def->schema_version,
        };
        char first_id[JL_UUID_LEN + 1];
        jl_status s = jl_commit_encode(&p->commit, first_id, &meta, &p->decision);
        if (s != JL_OK) {
            jl_reply_error(r, s == JL_ERR_TOO_LARGE ? JL_CODE_INVALID : JL_CODE_INTERNAL,
                           "cannot encode the events: %s", jl_status_str(s));
            goto done;
        }
        uint64_t last_version = version + p->decision.n_events;
        char vbuf[24];
        snprintf(vbuf, sizeof(vbuf), "%" PRIu64, last_version);
        size_t o = 0;
        types[0] = 0;
        for (size_t i = 0; i < p->decision.n_events && o < sizeof(types); i++)
            o += (size_t)snprintf(types + o, sizeof(types) - o, "%s%s", i ? "," : "",
                                  p->decision.types[i]->short_name);
        const char *headers[] = {
            "Jl-Aggregate-Type",    def->aggregate_type,
            "Jl-Aggregate-Id",      agg_id,
            "Jl-Aggregate-Version", vbuf,
            "Jl-Event-Types",       types,
            "Jl-Command-Id",        cmd_id,
        };
        jl_append a = {
            .subject = subject,
            .data = p->commit.data,
            .len = p->commit.len,
            .msg_id = first_id,
            .expected_last_seq = last_seq,
            .expect_empty = last_seq == 0,
            .headers = headers,
            .n_headers = sizeof(headers) / sizeof(headers[0]) / 2,
        };
        uint64_t seq = 0;
        bool dup = false;
        s = jl_store_append(p->store, &a, &seq, &dup);
        if (s == JL_OK) {
            r->aggregate_version = last_version;
            r->stream_seq = seq;
            r->duplicate = dup;
            goto done;
        }
        if (s == JL_ERR_CONFLICT && attempt < p->retries) {
            jl_log(JL_LOG_DEBUG, "conflict, retrying", "\"subject\":\"%s\",\"attempt\":%d", subject,
                   attempt + 1);
            continue;
        }
        if (s == JL_ERR_CONFLICT)
            jl_reply_error(r, JL_CODE_CONFLICT,
                           "%s %s was changed concurrently %d times in a row; try again",
                           def->aggregate_type, agg_id, attempt + 1);
        else if (s == JL_ERR_TOO_LARGE)
            jl_reply_error(r, JL_CODE_INVALID, "%s", jl_store_errmsg(p->store));
        else
            jl_reply_error(r, JL_CODE_UNAVAILABLE, "event store did not store the events: %s",
                           jl_store_errmsg(p->store));
        goto done;
    }
done:
    if (msg != NULL)
        protobuf_c_message_free_unpacked(msg, NULL);
}

void jl_producer_handle(jl_producer *p, const char *command, const void *data, size_t len,
                        const char *command_id, const char *correlation_id,
                        const char *causation_id, jl_reply *out)
{
    jl_reply_reset(out);
    pthread_mutex_lock(&p->mu);
    handle_locked(p, command, data, len, command_id, correlation_id, causation_id, out);
    p->handled++;
    pthread_mutex_unlock(&p->mu);
    if (out->code == JL_CODE_OK)
        jl_log(JL_LOG_DEBUG, "command accepted",
               "\"command\":\"%.64s\",\"aggregate_id\":\"%s\",\"version\":%" PRIu64
               ",\"seq\":%" PRIu64,
               command, out->aggregate_id, out->aggregate_version, out->stream_seq);
    else {
        char esc[600];
        jl_log(out->code == JL_CODE_INTERNAL || out->code == JL_CODE_UNAVAILABLE ? JL_LOG_ERROR
                                                                                 : JL_LOG_INFO,
               "command rejected", "\"command\":\"%.64s\",\"code\":\"%s\",\"error\":\"%s\"",
               command, jl_code_str(out->code), jl_log_str(esc, sizeof(esc), out->message));
    }
}

static void on_command(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    jl_producer *p = closure;
    const char *subject = natsMsg_GetSubject(msg);
    const char *reply = natsMsg_GetReply(msg);
    const char *dot = strrchr(subject, '.');
    const char *cmd_id = NULL, *corr = NULL, *cause = NULL;
    jl_reply r;
    (void)sub;

    natsMsgHeader_Get(msg, "Jl-Command-Id", &cmd_id);
    natsMsgHeader_Get(msg, "Jl-Correlation-Id", &corr);
    natsMsgHeader_Get(msg, "Jl-Causation-Id", &cause);
    jl_reply_init(&r);
    jl_producer_handle(p, dot ? dot + 1 : subject, natsMsg_GetData(msg),
                       (size_t)natsMsg_GetDataLength(msg), cmd_id, corr, cause, &r);
    if (reply != NULL && *reply != 0) {
        jl_buf out;
        jl_buf_init(&out, JL_MAX_REPLY_BYTES + 1024);
        if (jl_reply_encode(&out, &r) == JL_OK)
            natsConnection_Publish(nc, reply, out.data, (int)out.len);
        jl_buf_cleanup(&out);
    }
    jl_reply_cleanup(&r);
    natsMsg_Destroy(msg);
}

jl_status jl_producer_open(jl_producer **out_producer, jl_conn *conn, const jl_service_def *def,
                           const jl_config *cfg, char *err, size_t errlen)
{
    jl_status s = JL_OK;
    jl_producer *p = calloc(1, sizeof(*p));
    char subjects[SUBJECT_MAX], cmd_subject[SUBJECT_MAX];
    jl_store_cfg sc;

    if (p == NULL)
        return JL_ERR_NOMEM;
    p->def = def;
    p->conn = conn;
    p->retries = cfg->command_retries;
    pthread_mutex_init(&p->mu, NULL);
    jl_decision_init(&p->decision);
    jl_buf_init(&p->commit, JL_MAX_COMMIT_BYTES);
    p->state = calloc(1, def->state_size);
    if (p->state == NULL) {
        s = JL_ERR_NOMEM;
        goto done;
    }
    snprintf(subjects, sizeof(subjects), "%s.events.>", def->name);
    jl_store_cfg_init(&sc);
    jl_store_cfg_apply(&sc, cfg);
    sc.stream = def->stream;
    sc.subjects = subjects;
    s = jl_store_open(&p->store, conn, &sc, err, errlen);
    if (s != JL_OK)
        goto done;
    snprintf(cmd_subject, sizeof(cmd_subject), "%s.cmd.*", def->name);
    natsStatus ns = natsConnection_QueueSubscribe(&p->sub, jl_conn_nats(conn), cmd_subject,
                                                  def->name, on_command, p);
    if (ns == NATS_OK)
        ns = natsSubscription_SetPendingLimits(p->sub, 65536, 256 * 1024 * 1024);
    if (ns != NATS_OK) {
        snprintf(err, errlen, "cannot subscribe to %s: %s", cmd_subject, natsStatus_GetText(ns));
        s = JL_ERR_NATS;
        goto done;
    }
    jl_log(JL_LOG_INFO, "producer ready",
           "\"subject\":\"%s\",\"queue\":\"%s\",\"stream\":\"%s\",\"replicas\":%d", cmd_subject,
           def->name, def->stream, cfg->replicas);
done:
    if (s != JL_OK) {
        jl_producer_close(p, 0);
        return s;
    }
    *out_producer = p;
    return JL_OK;
}

void jl_producer_close(jl_producer *p, int64_t timeout_ms)
{
    if (p == NULL)
        return;
    if (p->sub != NULL) {
        /* Drain: no new commands are taken, the ones already received are answered. */
        if (timeout_ms > 0 && natsSubscription_Drain(p->sub) == NATS_OK)
            natsSubscription_WaitForDrainCompletion(p->sub, timeout_ms);
        else
            natsSubscription_Unsubscribe(p->sub);
        natsSubscription_Destroy(p->sub);
    }
    jl_store_close(p->store);
    jl_decision_cleanup(&p->decision);
    jl_buf_cleanup(&p->commit);
    free(p->state);
    pthread_mutex_destroy(&p->mu);
    free(p);
}

uint64_t jl_producer_handled(const jl_producer *p)
{
    return p->handled;
}
