#include "jetledger/store.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "deadline.h"
#include "jetledger/codec.h"
#include "jetledger/log.h"

#define NS_PER_S 1000000000LL

struct jl_store {
    jl_conn *conn;
    jsCtx *js;
    char stream[64];
    int replicas; /* the stream's, as ensure_stream left it */
    char err[512];
};

void jl_store_cfg_init(jl_store_cfg *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->replicas = 0;
    cfg->max_bytes = -1;
    cfg->max_age_s = 0;
    cfg->duplicate_window_s = 120;
    cfg->max_msg_size = JL_MAX_COMMIT_BYTES;
}

void jl_store_cfg_apply(jl_store_cfg *cfg, const jl_config *c)
{
    cfg->replicas = c->replicas;
    cfg->max_bytes = c->max_bytes;
    cfg->max_age_s = c->max_age_s;
    cfg->duplicate_window_s = c->duplicate_window_s;
}

static void set_err(jl_store *st, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void set_err(jl_store *st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(st->err, sizeof(st->err), fmt, ap);
    va_end(ap);
}

const char *jl_store_errmsg(const jl_store *st)
{
    return st->err;
}

const char *jl_store_stream(const jl_store *st)
{
    return st->stream;
}

static jl_status fail_into(char *err, size_t errlen, const char *what, natsStatus ns,
                           jsErrCode jerr)
{
    const char *detail = nats_GetLastError(NULL);
    /* "No responders" alone misleads: say what it can mean. */
    bool js_off = jl_js_off(ns, jerr);
    snprintf(err, errlen, "%s: %s (JetStream error %d)%s%s%s", what, natsStatus_GetText(ns),
             (int)jerr, detail && *detail ? ": " : "", detail ? detail : "",
             js_off ? "; nothing answered: JetStream off on the server (nats-server -js), or no "
                      "server of the stream reachable"
                    : "");
    return jl_status_from_nats(ns);
}

static jl_status nats_fail(jl_store *st, const char *what, natsStatus ns, jsErrCode jerr)
{
    return fail_into(st->err, sizeof(st->err), what, ns, jerr);
}

/* The stream config jetledger wants. Discard "new": an event store must refuse new events when
 * full rather than silently delete its history. Direct get lets any replica serve aggregate
 * loads. Deleting single events is denied: history is append-only. */
static void fill_stream_config(jsStreamConfig *sc, const jl_store_cfg *cfg, const char **subjects)
{
    jsStreamConfig_Init(sc);
    sc->Name = cfg->stream;
    sc->Subjects = subjects;
    sc->SubjectsLen = 1;
    sc->Storage = js_FileStorage;
    sc->Retention = js_LimitsPolicy;
    sc->Discard = js_DiscardNew;
    sc->Replicas = cfg->replicas;
    sc->MaxBytes = cfg->max_bytes;
    sc->MaxAge = cfg->max_age_s * NS_PER_S;
    sc->Duplicates = cfg->duplicate_window_s * NS_PER_S;
    sc->MaxMsgSize = cfg->max_msg_size;
    sc->AllowDirect = true;
    sc->DenyDelete = true;
}

/* The settings jetledger manages on an existing stream, in one list for the comparison and the
 * copy (a field added to one only would be updated for ever, or never). */
#define MANAGED_STREAM_FIELDS(X)                                                                   \
    X(Replicas)                                                                                    \
    X(MaxBytes) X(MaxAge) X(Duplicates) X(MaxMsgSize) X(AllowDirect) X(Discard) X(DenyDelete)

/* Copied into the stream's own config, so that what an operator set besides (placement, a
 * description, deny purge, metadata, ...) stays as it is. (A field the client library does not
 * know is still lost in an update.) */
static void manage_stream_config(jsStreamConfig *sc, const jsStreamConfig *want)
{
#define COPY_FIELD(f) sc->f = want->f;
    MANAGED_STREAM_FIELDS(COPY_FIELD)
#undef COPY_FIELD
}

static bool config_differs(const jsStreamConfig *have, const jsStreamConfig *want)
{
#define FIELD_DIFFERS(f) have->f != want->f ||
    return MANAGED_STREAM_FIELDS(FIELD_DIFFERS) false;
#undef FIELD_DIFFERS
}

/* A stream that would delete events on its own, or take none: not an event store, and no
 * update of ours may change that (retention, a mirror and sealing cannot be changed at all). */
static const char *unfit_stream(const jsStreamConfig *have)
{
    if (have->Retention != js_LimitsPolicy)
        return "its retention is not 'limits' (interest or work-queue retention deletes events "
               "once consumed)";
    if (have->MaxMsgsPerSubject > 0)
        return "it keeps a limited number of messages per subject (an aggregate's oldest events "
               "would be deleted)";
    if (have->Mirror != NULL)
        return "it is a mirror (it takes no publishes)";
    if (have->Sealed)
        return "it is sealed (it takes no publishes)";
    return NULL;
}

static jl_status ensure_stream(jl_store *st, const jl_store_cfg *cfg);

/* Replicas of one service start together: when another created the stream between our look and
 * our create, look again (once). */
static jl_status ensure_stream_once(jl_store *st, const jl_store_cfg *cfg, bool *out_raced);

static jl_status ensure_stream(jl_store *st, const jl_store_cfg *cfg)
{
    bool raced = false;
    jl_status s = ensure_stream_once(st, cfg, &raced);
    return raced ? ensure_stream_once(st, cfg, &raced) : s;
}

/* A single server takes an update to more replicas and goes on with one copy: refuse it. */
static jl_status not_clustered(jl_store *st, const char *stream, int64_t replicas)
{
    set_err(st,
            "refusing stream %s with %" PRId64
            " replicas: the NATS server is not part of a JetStream "
            "cluster, so there would be one copy; use --replicas 1 (or 0: 3 on a cluster of "
            "three or more servers, else 1)",
            stream, replicas);
    return JL_ERR_INVALID;
}

/* @p cfg's replicas may be 0 (auto): decided here, by jl_conn_replicas() for a new stream and
 * jl_conn_replicas_of_existing() for one that exists (auto never scales a stream down). */
static jl_status ensure_stream_once(jl_store *st, const jl_store_cfg *cfg, bool *out_raced)
{
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    jsStreamConfig want;
    const char *subjects[1] = {cfg->subjects};
    jl_status s = JL_OK;
    char verr[512];
    jl_store_cfg resolved = *cfg;

    natsStatus ns = js_GetStreamInfo(&si, st->js, cfg->stream, NULL, &jerr);
    if (ns == NATS_NOT_FOUND || jerr == JSStreamNotFoundErr) {
        resolved.replicas = jl_conn_replicas(st->conn, cfg->replicas);
        fill_stream_config(&want, &resolved, subjects);
        s = jl_conn_check_replicas(st->conn, resolved.replicas, verr, sizeof(verr));
        if (s != JL_OK) {
            set_err(st, "%s", verr);
            return s;
        }
        ns = js_AddStream(NULL, st->js, &want, NULL, &jerr);
        if (ns != NATS_OK && jerr == JSStreamNameExistErr) {
            *out_raced = true;
            set_err(st, "stream %s was made by another process while this one made it; try again",
                    cfg->stream);
            return JL_ERR_CONFLICT;
        }
        if (ns != NATS_OK && jerr == JSStreamReplicasNotSupportedErr)
            return not_clustered(st, cfg->stream, resolved.replicas);
        if (ns != NATS_OK)
            return nats_fail(st, "cannot create stream", ns, jerr);
        jl_log(JL_LOG_INFO, "stream created", "\"stream\":\"%s\",\"replicas\":%d", cfg->stream,
               resolved.replicas);
        st->replicas = resolved.replicas;
        return JL_OK;
    }
    if (ns != NATS_OK)
        return nats_fail(st, "cannot read stream info", ns, jerr);
    if (si->Config == NULL) { /* not from a nats-server: one always sends it */
        jsStreamInfo_Destroy(si);
        set_err(st, "the stream info of %s came without its config", cfg->stream);
        return JL_ERR_NATS;
    }

    jsStreamConfig *have = si->Config;
    const char *unfit = unfit_stream(have);
    resolved.replicas = jl_conn_replicas_of_existing(st->conn, cfg->replicas, have->Replicas);
    fill_stream_config(&want, &resolved, subjects);
    if (have->SubjectsLen != 1 || strcmp(have->Subjects[0], cfg->subjects) != 0) {
        set_err(st, "stream %s exists with other subjects (%s); expected exactly %s", cfg->stream,
                have->SubjectsLen > 0 ? have->Subjects[0] : "none", cfg->subjects);
        s = JL_ERR_INVALID;
    } else if (have->Storage != js_FileStorage) {
        set_err(st, "stream %s uses memory storage; an event store needs file storage",
                cfg->stream);
        s = JL_ERR_INVALID;
    } else if (unfit != NULL) {
        set_err(st, "stream %s cannot be an event store: %s", cfg->stream, unfit);
        s = JL_ERR_INVALID;
    }
    if (s == JL_OK && resolved.replicas > 1 &&
        (si->Cluster == NULL || si->Cluster->Name == NULL || si->Cluster->Name[0] == 0))
        s = not_clustered(st, cfg->stream, resolved.replicas);
    if (s == JL_OK) {
        int64_t r = have->Replicas > resolved.replicas ? have->Replicas : resolved.replicas;
        s = jl_conn_check_replicas(st->conn, (int)r, verr, sizeof(verr));
        if (s != JL_OK)
            set_err(st, "%s", verr);
    }
    if (s == JL_OK && want.MaxBytes > 0 && have->MaxBytes != want.MaxBytes &&
        si->State.Bytes > (uint64_t)want.MaxBytes) {
        /* JetStream deletes nothing to meet a lower cap (discard "new"): it would refuse every
         * new event instead, a producer answering "unavailable" for ever. */
        set_err(st,
                "stream %s holds %" PRIu64 " bytes, more than --max-bytes %" PRId64
                ": under that cap it would take no new event; raise --max-bytes above what it "
                "holds (it was %" PRId64 ")",
                cfg->stream, si->State.Bytes, (int64_t)want.MaxBytes, (int64_t)have->MaxBytes);
        s = JL_ERR_INVALID;
    }
    if (s == JL_OK && want.MaxAge > 0 && (have->MaxAge == 0 || want.MaxAge < have->MaxAge) &&
        si->State.Msgs > 0 && si->State.FirstTime < jl__now_ns() - want.MaxAge)
        /* What the operator asked for, and for good: said before it happens. */
        jl_log(JL_LOG_WARN, "stream max age shortened: its oldest events are removed now",
               "\"stream\":\"%s\",\"max_age_s\":%" PRId64 ",\"was_max_age_s\":%" PRId64,
               cfg->stream, (int64_t)(want.MaxAge / NS_PER_S), (int64_t)(have->MaxAge / NS_PER_S));
    st->replicas = (int)have->Replicas;
    if (s == JL_OK && config_differs(have, &want)) {
        int64_t was = have->Replicas;
        manage_stream_config(have, &want);
        ns = js_UpdateStream(NULL, st->js, have, NULL, &jerr);
        if (ns != NATS_OK)
            s = nats_fail(st, "cannot update stream", ns, jerr);
        else {
            st->replicas = resolved.replicas;
            jl_log(was > resolved.replicas ? JL_LOG_WARN : JL_LOG_INFO, "stream updated",
                   "\"stream\":\"%s\",\"replicas\":%d,\"was_replicas\":%" PRId64, cfg->stream,
                   resolved.replicas, was);
        }
    }
    jsStreamInfo_Destroy(si);
    return s;
}

bool jl_js_wrong_last_seq(int err_code)
{
    return err_code == JSStreamWrongLastSequenceErr || err_code == JL_JS_WRONG_LAST_SEQ_CONST;
}

jl_status jl_store_open(jl_store **out_store, jl_conn *conn, const jl_store_cfg *cfg, char *err,
                        size_t errlen)
{
    jl_status s = JL_OK;
    jl_store *st = NULL;

    if (cfg->stream == NULL || cfg->subjects == NULL || strlen(cfg->stream) >= sizeof(st->stream)) {
        snprintf(err, errlen, "store config needs a stream name (< 64 bytes) and subjects");
        return JL_ERR_INVALID;
    }
    st = calloc(1, sizeof(*st));
    if (st == NULL)
        return JL_ERR_NOMEM;
    st->conn = conn;
    st->js = jl_conn_js(conn);
    snprintf(st->stream, sizeof(st->stream), "%s", cfg->stream);
    s = ensure_stream(st, cfg);
    if (s != JL_OK) {
        snprintf(err, errlen, "%s", st->err);
        free(st);
        return s;
    }
    *out_store = st;
    return JL_OK;
}

void jl_store_close(jl_store *st)
{
    free(st);
}

typedef enum own_copy { OWN_FOUND, OWN_NOT_STORED, OWN_UNKNOWN } own_copy;

/* After a resend of append @p a was answered "wrong last sequence": whether a copy of it is
 * stored. It expected the subject's last message to be its predecessor, so stored, it is the
 * subject's first message after that one (its sequence into *@p out_seq). Another there means
 * another writer won; nothing readable (a replica behind, a leader moving), unknown. */
static own_copy find_own(jl_store *st, const jl_append *a, uint64_t *out_seq)
{
    natsMsg *m = NULL;
    const char *id = NULL;
    jsDirectGetMsgOptions o;
    jsDirectGetMsgOptions_Init(&o);
    uint64_t expected = a->expect_empty ? 0 : a->expected_last_seq;
    o.Sequence = expected + 1;
    o.NextBySubject = a->subject;
    natsStatus ns = js_DirectGetMsg(&m, st->js, st->stream, NULL, &o);
    if (ns == NATS_NOT_FOUND) {
        /* Nothing on the subject past the expected sequence here. The leader, which refused the
         * append, tells a subject short of what was expected (no copy of ours can be there)
         * from a replica a moment behind it (the message it has may be ours). */
        uint64_t head = 0;
        char why[256];
        if (jl_store_subject_head(st, a->subject, &head, why, sizeof(why)) != JL_OK)
            return OWN_UNKNOWN;
        return head > expected ? OWN_UNKNOWN : OWN_NOT_STORED;
    }
    if (ns != NATS_OK)
        return OWN_UNKNOWN;
    own_copy got = natsMsgHeader_Get(m, "Nats-Msg-Id", &id) == NATS_OK && id != NULL &&
                           strcmp(id, a->msg_id) == 0
                       ? OWN_FOUND
                       : OWN_NOT_STORED;
    if (got == OWN_FOUND)
        *out_seq = natsMsg_GetSequence(m);
    natsMsg_Destroy(m);
    return got;
}

jl_status jl_store_append(jl_store *st, const jl_append *a, uint64_t *out_seq, bool *out_duplicate)
{
    natsMsg *msg = NULL;
    jsPubAck *pa = NULL;
    jsErrCode jerr = 0;
    jsPubOptions po;
    jl_status s = JL_OK;
    natsStatus ns;
    int64_t wait = a->deadline_ms > 0 ? a->deadline_ms : jl_conn_timeout_ms(st->conn);
    int64_t deadline = jl__mono_ms() + wait;

    ns = natsMsg_Create(&msg, a->subject, NULL, a->data, (int)a->len);
    for (size_t i = 0; ns == NATS_OK && i < a->n_headers; i++)
        ns = natsMsgHeader_Set(msg, a->headers[2 * i], a->headers[2 * i + 1]);
    if (ns != NATS_OK) {
        s = nats_fail(st, "cannot build message", ns, 0);
        goto done;
    }
    jsPubOptions_Init(&po);
    po.MsgId = a->msg_id;
    if (a->expect_empty)
        po.ExpectNoMessage = true; /* ExpectLastSubjectSeq = 0 would mean "no check" */
    else
        po.ExpectLastSubjectSeq = a->expected_last_seq;
    for (int attempt = 0;; attempt++) {
        int64_t left = deadline - jl__mono_ms();
        if (left <= 0) {
            s = JL_ERR_TIMEOUT;
            set_err(st,
                    "append to %s not confirmed within %" PRId64
                    " ms (%d attempts; it may or may not be stored): %s",
                    a->subject, wait, attempt, natsStatus_GetText(ns));
            break;
        }
        /* Without a message id a resend could store a second copy: one wait to the deadline. */
        po.MaxWait = a->msg_id != NULL && left > JL_APPEND_ATTEMPT_MS ? JL_APPEND_ATTEMPT_MS : left;
        jerr = 0;
        jsPubAck_Destroy(pa);
        pa = NULL;
        ns = js_PublishMsg(&pa, st->js, msg, &po, &jerr);
        if ((ns == NATS_OK && pa->Duplicate && pa->Sequence == 0) ||
            jerr == JL_JS_DUPLICATE_IN_PROCESS) {
            /* An earlier copy still being stored (a clustered stream): not stored yet, and it
             * may yet be lost to a leader election. Ask again until it has a sequence. */
            ns = NATS_TIMEOUT; /* what the deadline's message says of it */
            nats_Sleep(attempt < 5 ? 50 : 250);
            continue;
        }
        if (ns == NATS_OK) {
            *out_seq = pa->Sequence;
            *out_duplicate = pa->Duplicate;
            break;
        }
        /* A clustered stream answers a resend of a stored message "wrong last sequence" (it
         * checks the sequence before the id): our copy may be there, sent by an earlier
         * attempt of this call or by an earlier call that timed out (retried with the same id,
         * as the header says). */
        own_copy own = jl_js_wrong_last_seq(jerr) && a->msg_id != NULL ? find_own(st, a, out_seq)
                                                                       : OWN_NOT_STORED;
        if (own == OWN_FOUND) {
            *out_duplicate = true; /* as a single server says of a resend it had stored */
            ns = NATS_OK;
            break;
        }
        if (own == OWN_UNKNOWN) { /* asked again until the deadline: "may or may not" then */
            ns = NATS_TIMEOUT;
            nats_Sleep(attempt < 5 ? 50 : 250);
            continue;
        }
        if (jl_js_wrong_last_seq(jerr)) {
            set_err(st, "%s changed since it was read (expected last sequence %" PRIu64 ")",
                    a->subject, a->expected_last_seq);
            s = JL_ERR_CONFLICT;
            break;
        }
        /* Timeouts and missing responders happen while a stream leader moves or a server
         * restarts: resend the same message (same Nats-Msg-Id) until the deadline. Without a
         * message id only where nobody took it (no responders): a publish made while the
         * connection is down may still go out from the library's buffer. */
        bool transient = ns == NATS_TIMEOUT || ns == NATS_NO_RESPONDERS ||
                         ns == NATS_CONNECTION_DISCONNECTED || ns == NATS_NOT_YET_CONNECTED ||
                         (ns == NATS_ERR && jerr == 0);
        if (transient && a->msg_id == NULL && ns != NATS_NO_RESPONDERS) {
            set_err(st,
                    "append to %s not confirmed (it may or may not be stored; without a message "
                    "id it is not sent again): %s",
                    a->subject, natsStatus_GetText(ns));
            s = JL_ERR_TIMEOUT;
            break;
        }
        if (transient) {
            jl_log(JL_LOG_DEBUG, "append retry", "\"subject\":\"%s\",\"status\":\"%s\"", a->subject,
                   natsStatus_GetText(ns));
            nats_Sleep(attempt < 5 ? 50 : 250);
            continue;
        }
        if (ns == NATS_MAX_PAYLOAD) {
            set_err(st, "message of %zu bytes exceeds the server's max payload", a->len);
            s = JL_ERR_TOO_LARGE;
            break;
        }
        s = nats_fail(st, "append failed", ns, jerr);
        if (s == JL_ERR_TIMEOUT || s == JL_ERR_UNAVAILABLE)
            s = JL_ERR_NATS;
        break;
    }
done:
    jsPubAck_Destroy(pa);
    natsMsg_Destroy(msg);
    if (s == JL_ERR_TIMEOUT && (ns == NATS_NO_RESPONDERS || ns == NATS_CONNECTION_DISCONNECTED))
        s = JL_ERR_UNAVAILABLE;
    return s;
}

jl_status jl_store_read_subject(jl_store *st, const char *subject, uint64_t after_seq,
                                size_t max_msgs, jl_store_msg_fn fn, void *closure,
                                uint64_t *out_last_seq, char *err, size_t errlen)
{
    jl_status s = JL_OK;
    uint64_t last = after_seq;
    size_t count = 0;
    jsDirectGetMsgOptions o;

    if (err == NULL) {
        err = st->err;
        errlen = sizeof(st->err);
    }
    while (s == JL_OK && (max_msgs == 0 || count < max_msgs)) {
        natsMsg *m = NULL;
        jsDirectGetMsgOptions_Init(&o);
        o.Sequence = last + 1;
        o.NextBySubject = subject;
        natsStatus ns = js_DirectGetMsg(&m, st->js, st->stream, NULL, &o);
        if (ns == NATS_NOT_FOUND)
            break; /* no message after `last` on this subject */
        if (ns != NATS_OK) {
            s = fail_into(err, errlen, "cannot read events", ns, 0);
            break;
        }
        uint64_t seq = natsMsg_GetSequence(m);
        if (seq <= last) {
            snprintf(err, errlen, "direct get returned sequence %" PRIu64 " after %" PRIu64, seq,
                     last);
            s = JL_ERR_INTERNAL;
        } else {
            s = fn(seq, natsMsg_GetTime(m), natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m),
                   closure);
            last = seq;
            count++;
        }
        natsMsg_Destroy(m);
    }
    if (s == JL_OK || s == JL_ERR_STOPPED)
        *out_last_seq = last;
    return s;
}

jl_status jl_store_read_last(jl_store *st, const char *subject, uint64_t after_seq,
                             jl_store_msg_fn fn, void *closure, uint64_t *out_last_seq, char *err,
                             size_t errlen)
{
    jsDirectGetMsgOptions o;
    natsMsg *m = NULL;
    jl_status s = JL_OK;

    if (err == NULL) {
        err = st->err;
        errlen = sizeof(st->err);
    }
    *out_last_seq = after_seq;
    jsDirectGetMsgOptions_Init(&o);
    o.LastBySubject = subject;
    natsStatus ns = js_DirectGetMsg(&m, st->js, st->stream, NULL, &o);
    if (ns == NATS_NOT_FOUND)
        return JL_OK; /* nothing on this subject */
    if (ns != NATS_OK)
        return fail_into(err, errlen, "cannot read events", ns, 0);
    uint64_t seq = natsMsg_GetSequence(m);
    if (seq > after_seq) {
        s = fn == NULL ? JL_OK
                       : fn(seq, natsMsg_GetTime(m), natsMsg_GetData(m),
                            (size_t)natsMsg_GetDataLength(m), closure);
        if (s == JL_OK)
            *out_last_seq = seq;
    }
    natsMsg_Destroy(m);
    return s;
}

jl_status jl_store_subject_head(jl_store *st, const char *subject, uint64_t *out_seq, char *err,
                                size_t errlen)
{
    natsMsg *m = NULL;
    jsErrCode jerr = 0;
    *out_seq = 0;
    natsStatus ns = js_GetLastMsg(&m, st->js, st->stream, subject, NULL, &jerr);
    if (ns != NATS_OK && jerr == JSNoMessageFoundErr)
        return JL_OK; /* nothing on this subject */
    if (ns != NATS_OK)
        return fail_into(err, errlen, "cannot read the last sequence", ns, jerr);
    *out_seq = natsMsg_GetSequence(m);
    natsMsg_Destroy(m);
    return JL_OK;
}

int jl_store_replicas(const jl_store *st)
{
    return st->replicas;
}

jl_status jl_store_info_get(jl_store *st, jl_store_info *out, char *err, size_t errlen)
{
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    if (err == NULL) {
        err = st->err;
        errlen = sizeof(st->err);
    }
    natsStatus ns = js_GetStreamInfo(&si, st->js, st->stream, NULL, &jerr);
    if (ns != NATS_OK)
        return fail_into(err, errlen, "cannot read stream info", ns, jerr);
    if (si->Config == NULL) { /* not from a nats-server: one always sends it */
        jsStreamInfo_Destroy(si);
        snprintf(err, errlen, "the stream info of %s came without its config", st->stream);
        return JL_ERR_NATS;
    }
    out->msgs = si->State.Msgs;
    out->bytes = si->State.Bytes;
    out->first_seq = si->State.FirstSeq;
    out->last_seq = si->State.LastSeq;
    out->replicas = (int)si->Config->Replicas;
    out->drops_old =
        si->Config->MaxAge > 0 || (si->Config->Discard == js_DiscardOld &&
                                   (si->Config->MaxMsgs > 0 || si->Config->MaxBytes > 0));
    jsStreamInfo_Destroy(si);
    return JL_OK;
}
