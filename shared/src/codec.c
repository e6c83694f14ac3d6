#include "jetledger/codec.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <uuid/uuid.h>

#include "jetledger/envelope.pb-c.h"
#include "jetledger/json.h"
#include "jetledger/registry.h"

#include "codec_int.h"

/* libuuid's uuid_generate_random() makes several system calls per id (getrandom, getpid,
 * getuid, ...): measured at a few percent of a producer's time, two ids per command. Instead,
 * each thread seeds a xoshiro256** generator once from the kernel and draws 122 random bits per
 * version-4 UUID from it. */
static _Thread_local uint64_t rng[4];
static _Thread_local bool rng_seeded;

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static uint64_t rng_next(void)
{
    uint64_t r = rotl(rng[1] * 5, 7) * 9, t = rng[1] << 17;
    rng[2] ^= rng[0];
    rng[3] ^= rng[1];
    rng[1] ^= rng[2];
    rng[0] ^= rng[3];
    rng[2] ^= t;
    rng[3] = rotl(rng[3], 45);
    return r;
}

/* A forked child must not repeat its parent's ids: it seeds again. */
static void reseed_in_child(void)
{
    rng_seeded = false;
}

static void register_atfork(void)
{
    pthread_atfork(NULL, NULL, reseed_in_child);
}

void jl_uuid_new(char out[JL_UUID_LEN + 1])
{
    static const char hex[] = "0123456789abcdef";
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    if (!rng_seeded) {
        pthread_once(&once, register_atfork);
        uuid_t seed[2];
        uuid_generate_random(seed[0]); /* 32 bytes from the kernel, once per thread */
        uuid_generate_random(seed[1]);
        memcpy(rng, seed, sizeof(rng));
        rng_seeded = true;
    }
    uint64_t a = rng_next(), b = rng_next();
    uint8_t u[16];
    memcpy(u, &a, 8);
    memcpy(u + 8, &b, 8);
    u[6] = (uint8_t)((u[6] & 0x0f) | 0x40); /* version 4 */
    u[8] = (uint8_t)((u[8] & 0x3f) | 0x80); /* RFC 4122 variant */
    char *o = out;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            *o++ = '-';
        *o++ = hex[u[i] >> 4];
        *o++ = hex[u[i] & 15];
    }
    *o = 0;
}

void jl_uuid_named(char out[JL_UUID_LEN + 1], const char *name, size_t len)
{
    /* jetledger's namespace: fixed for good, or ids derived before would change. */
    static const uuid_t ns = {0xa3, 0xf1, 0xd6, 0xc2, 0x5b, 0x7e, 0x4c, 0x19,
                              0x9e, 0x2d, 0x8b, 0x4f, 0x0c, 0x6a, 0x1e, 0x57};
    uuid_t u;
    uuid_generate_sha1(u, ns, name, len);
    uuid_unparse_lower(u, out);
}

jl_status jl_uuid_canonical(char out[JL_UUID_LEN + 1], const char *s)
{
    /* Exactly what uuid_parse() accepts, the 36-character hyphenated form with hex digits in
     * either case, in lower case: checked here in one pass (libuuid's parse and unparse were
     * measured at 2% of a producer's time, an id per command). */
    char canon[JL_UUID_LEN + 1];
    if (s == NULL)
        return JL_ERR_INVALID;
    for (size_t i = 0; i < JL_UUID_LEN; i++) {
        char c = s[i]; /* a NUL (a short id) is refused as any other wrong character */
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (c != '-')
                return JL_ERR_INVALID;
        } else if (c >= 'A' && c <= 'F') {
            c = (char)(c - 'A' + 'a');
        } else if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) {
            return JL_ERR_INVALID;
        }
        canon[i] = c;
    }
    if (s[JL_UUID_LEN] != 0)
        return JL_ERR_INVALID;
    canon[JL_UUID_LEN] = 0;
    memcpy(out, canon, sizeof(canon));
    return JL_OK;
}

bool jl_uuid_is_canonical(const char *s)
{
    char canon[JL_UUID_LEN + 1];
    return jl_uuid_canonical(canon, s) == JL_OK && strcmp(canon, s) == 0;
}

const ProtobufCMessageDescriptor *jl_types_find(const jl_types *types, const char *full_name)
{
    if (types == NULL)
        return jl_registry_find(full_name);
    for (size_t i = 0; i < types->n; i++) {
        if (strcmp(types->list[i]->name, full_name) == 0)
            return types->list[i];
    }
    return NULL;
}

void jl_commit_meta_event(const jl_commit_meta *m, const jl_decision *d, size_t i,
                          const char *event_id, jl_event *ev)
{
    /* A string field left NULL is packed as nothing and read back as "". */
    memset(ev, 0, sizeof(*ev));
    ev->event_id = jl_text_or_empty(event_id);
    ev->event_type = d->types[i]->name;
    ev->aggregate_type = jl_text_or_empty(m->aggregate_type);
    ev->aggregate_id = jl_text_or_empty(m->aggregate_id);
    ev->correlation_id = jl_text_or_empty(
        m->correlation_id && *m->correlation_id ? m->correlation_id : m->command_id);
    ev->causation_id =
        jl_text_or_empty(m->causation_id && *m->causation_id ? m->causation_id : m->command_id);
    ev->aggregate_version = m->first_version + i;
    ev->occurred_at_ns = m->occurred_at_ns;
    ev->schema_version = m->schema_version;
}

jl_status jl_commit_encode(jl_buf *out, char out_first_event_id[JL_UUID_LEN + 1],
                           const jl_commit_meta *m, const jl_decision *d)
{
    Jetledger__Commit commit = JETLEDGER__COMMIT__INIT;
    Jetledger__Envelope envs[JL_DECISION_MAX_EVENTS];
    Jetledger__Envelope *ptrs[JL_DECISION_MAX_EVENTS];
    char ids[JL_DECISION_MAX_EVENTS][JL_UUID_LEN + 1];

    if (d->n_events == 0 || d->code != JL_CODE_OK)
        return JL_ERR_INVALID;
    for (size_t i = 0; i < d->n_events; i++) {
        Jetledger__Envelope *e = &envs[i];
        jl_event ev;
        jetledger__envelope__init(e);
        if (m->event_ids != NULL)
            memcpy(ids[i], m->event_ids[i], JL_UUID_LEN + 1);
        else
            jl_uuid_new(ids[i]);
        jl_commit_meta_event(m, d, i, ids[i], &ev);
        e->event_id = (char *)ev.event_id;
        e->event_type = (char *)ev.event_type;
        e->occurred_at_ns = ev.occurred_at_ns;
        e->aggregate_type = (char *)ev.aggregate_type;
        e->aggregate_id = (char *)ev.aggregate_id;
        e->aggregate_version = ev.aggregate_version;
        e->correlation_id = (char *)ev.correlation_id;
        e->causation_id = (char *)ev.causation_id;
        e->schema_version = ev.schema_version;
        e->payload.data = d->bytes.data + d->offsets[i];
        e->payload.len = d->lens[i];
        ptrs[i] = e;
    }
    commit.n_events = d->n_events;
    commit.events = ptrs;
    commit.command_id = (char *)m->command_id;
    commit.command_type = (char *)(m->command_type ? m->command_type : "");
    commit.prev_seq = m->prev_seq;

    /* Sized once (a walk of every event), per command: checked, then packed into it. */
    size_t n = jetledger__commit__get_packed_size(&commit);
    if (n > JL_MAX_COMMIT_BYTES)
        return JL_ERR_TOO_LARGE;
    jl_buf_reset(out);
    uint8_t *dst = NULL;
    jl_status s = jl_buf_reserve(out, n, &dst);
    if (s != JL_OK)
        return s;
    jl_buf_commit(out, jetledger__commit__pack(&commit, dst));
    memcpy(out_first_event_id, ids[0], JL_UUID_LEN + 1);
    return JL_OK;
}

struct jl_commit {
    Jetledger__Commit *pb;
    uint64_t stream_seq;
    ProtobufCMessage **payloads; /* decoded lazily, one slot per event */
};

/* ---- unpacking: a malformed message or no memory ----
 * protobuf-c returns NULL for both; told apart by an allocator that notes a failed malloc, so
 * that a valid event is never parked for good (dead-lettered) for lack of memory. What it
 * allocates is freed with free_unpacked(..., NULL), as the default allocator's is. */

static _Thread_local bool unpack_oom, fail_next;

void jl__unpack_fail_next(void)
{
    fail_next = true;
}

static void *noting_alloc(void *data, size_t size)
{
    (void)data;
    void *p = fail_next ? NULL : malloc(size);
    fail_next = false;
    if (p == NULL)
        unpack_oom = true;
    return p;
}

static void noting_free(void *data, void *p)
{
    (void)data;
    free(p);
}

static ProtobufCAllocator noting = {noting_alloc, noting_free, NULL};

/* protobuf_c_message_unpack(); NULL with *out_oom telling whether memory ran out. */
static ProtobufCMessage *unpack(const ProtobufCMessageDescriptor *d, size_t len,
                                const uint8_t *data, bool *out_oom)
{
    unpack_oom = false;
    ProtobufCMessage *m = protobuf_c_message_unpack(d, &noting, len, data);
    *out_oom = m == NULL && unpack_oom;
    return m;
}

ProtobufCMessage *jl__unpack(const ProtobufCMessageDescriptor *d, const void *data, size_t len,
                             bool *out_oom)
{
    return unpack(d, len, data, out_oom);
}

jl_status jl_commit_decode(jl_commit **out_commit, const void *data, size_t len,
                           uint64_t stream_seq, char *err, size_t errlen)
{
    jl_commit *c = NULL;
    if (len > JL_MAX_COMMIT_BYTES) {
        snprintf(err, errlen, "message of %zu bytes exceeds the %d-byte commit limit", len,
                 JL_MAX_COMMIT_BYTES);
        return JL_ERR_TOO_LARGE;
    }
    bool oom = false;
    Jetledger__Commit *pb =
        (Jetledger__Commit *)unpack(&jetledger__commit__descriptor, len, data, &oom);
    if (pb == NULL) {
        snprintf(err, errlen, "%s",
                 oom ? "out of memory decoding the commit"
                     : "message is not a jetledger.Commit (malformed protobuf)");
        return oom ? JL_ERR_NOMEM : JL_ERR_DECODE;
    }
    if (pb->n_events == 0) {
        snprintf(err, errlen, "commit holds no events");
        jetledger__commit__free_unpacked(pb, NULL);
        return JL_ERR_DECODE;
    }
    if (pb->n_events > JL_DECISION_MAX_EVENTS) {
        /* No producer writes more: a message that says so is dead-lettered once, not split
         * into as many dead letters as a megabyte of empty events makes. */
        snprintf(err, errlen, "commit holds %zu events, more than the %d a command may emit",
                 pb->n_events, JL_DECISION_MAX_EVENTS);
        jetledger__commit__free_unpacked(pb, NULL);
        return JL_ERR_DECODE;
    }
    /* No producer writes such text (commands are checked so): one that was would be applied
     * cut at a NUL, or passed on where other languages' protobuf refuses it. */
    const char *field = NULL;
    if (!jl_pb_strings_valid(&jetledger__commit__descriptor, data, len, &field)) {
        snprintf(err, errlen, "field %s of the commit holds a NUL byte or text that is not UTF-8",
                 field != NULL ? field : "?");
        jetledger__commit__free_unpacked(pb, NULL);
        return JL_ERR_DECODE;
    }
    c = calloc(1, sizeof(*c));
    if (c != NULL)
        c->payloads = calloc(pb->n_events, sizeof(*c->payloads));
    if (c == NULL || c->payloads == NULL) {
        free(c);
        snprintf(err, errlen, "out of memory decoding a commit of %zu events", pb->n_events);
        jetledger__commit__free_unpacked(pb, NULL);
        return JL_ERR_NOMEM;
    }
    c->pb = pb;
    c->stream_seq = stream_seq;
    *out_commit = c;
    return JL_OK;
}

void jl_commit_free(jl_commit *c)
{
    if (c == NULL)
        return;
    for (size_t i = 0; i < c->pb->n_events; i++) {
        if (c->payloads[i] != NULL)
            protobuf_c_message_free_unpacked(c->payloads[i], NULL);
    }
    free(c->payloads);
    jetledger__commit__free_unpacked(c->pb, NULL);
    free(c);
}

size_t jl_commit_count(const jl_commit *c)
{
    return c->pb->n_events;
}

const char *jl_commit_command_id(const jl_commit *c)
{
    return c->pb->command_id;
}

const char *jl_commit_command_type(const jl_commit *c)
{
    return c->pb->command_type;
}

uint64_t jl_commit_prev_seq(const jl_commit *c)
{
    return c->pb->prev_seq;
}

jl_status jl_commit_event(jl_commit *c, size_t i, const jl_types *types, jl_event *ev, char *err,
                          size_t errlen)
{
    const Jetledger__Envelope *e = c->pb->events[i];
    memset(ev, 0, sizeof(*ev));
    ev->event_id = e->event_id;
    ev->event_type = e->event_type;
    ev->aggregate_type = e->aggregate_type;
    ev->aggregate_id = e->aggregate_id;
    ev->correlation_id = e->correlation_id;
    ev->causation_id = e->causation_id;
    ev->aggregate_version = e->aggregate_version;
    ev->occurred_at_ns = e->occurred_at_ns;
    ev->schema_version = e->schema_version;
    ev->stream_seq = c->stream_seq;
    if (c->payloads[i] == NULL) {
        const ProtobufCMessageDescriptor *d = jl_types_find(types, e->event_type);
        if (d == NULL) {
            snprintf(err, errlen, "unknown event type '%s'", e->event_type);
            return JL_ERR_UNKNOWN_TYPE;
        }
        bool oom = false;
        c->payloads[i] = unpack(d, e->payload.len, e->payload.data, &oom);
        if (c->payloads[i] == NULL && oom) {
            snprintf(err, errlen, "out of memory decoding event %s", e->event_id);
            return JL_ERR_NOMEM;
        }
        if (c->payloads[i] == NULL) {
            snprintf(err, errlen, "payload of event %s is not a valid %s", e->event_id,
                     e->event_type);
            return JL_ERR_DECODE;
        }
        const char *field = NULL;
        if (!jl_pb_strings_valid(d, e->payload.data, e->payload.len, &field)) {
            protobuf_c_message_free_unpacked(c->payloads[i], NULL);
            c->payloads[i] = NULL;
            snprintf(err, errlen,
                     "payload of event %s: field %s of %s holds a NUL byte or text that is not "
                     "UTF-8",
                     e->event_id, field != NULL ? field : "?", e->event_type);
            return JL_ERR_DECODE;
        }
    }
    ev->payload = c->payloads[i];
    return JL_OK;
}

void jl_commit_event_payload(const jl_commit *c, size_t i, const uint8_t **out_data,
                             size_t *out_len)
{
    *out_data = c->pb->events[i]->payload.data;
    *out_len = c->pb->events[i]->payload.len;
}

void jl_reply_init(jl_reply *r)
{
    memset(r, 0, sizeof(*r));
    jl_buf_init(&r->result, JL_MAX_REPLY_BYTES);
}

void jl_reply_cleanup(jl_reply *r)
{
    jl_buf_cleanup(&r->result);
}

void jl_reply_reset(jl_reply *r)
{
    jl_buf keep = r->result;
    memset(r, 0, sizeof(*r));
    r->result = keep;
    jl_buf_reset(&r->result);
}

void jl_reply_error(jl_reply *r, jl_code code, const char *fmt, ...)
{
    if (r->code != JL_CODE_OK)
        return;
    r->code = code == JL_CODE_OK ? JL_CODE_INTERNAL : code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->message, sizeof(r->message), fmt, ap);
    va_end(ap);
    jl_utf8_scrub(r->message); /* a client's text in it may be cut mid-character, or not text */
}

jl_status jl_reply_set_result(jl_reply *r, const ProtobufCMessage *msg)
{
    jl_buf_reset(&r->result);
    jl_status s = jl_buf_pack(&r->result, msg);
    if (s == JL_ERR_NOMEM) {
        /* Out of memory now, not a bad request: the caller may ask again. */
        jl_reply_error(r, JL_CODE_UNAVAILABLE, "no memory for a result of %zu bytes; try again",
                       protobuf_c_message_get_packed_size(msg));
        return s;
    }
    if (s != JL_OK) {
        jl_reply_error(r, JL_CODE_INVALID, "result of %zu bytes exceeds the reply limit of %d",
                       protobuf_c_message_get_packed_size(msg), JL_MAX_REPLY_BYTES);
        return s;
    }
    snprintf(r->result_type, sizeof(r->result_type), "%s", msg->descriptor->name);
    return JL_OK;
}

jl_status jl_reply_encode(jl_buf *out, const jl_reply *r)
{
    Jetledger__Reply pb = JETLEDGER__REPLY__INIT;
    pb.code = (Jetledger__ErrorCode)r->code;
    pb.message = (char *)r->message;
    pb.aggregate_id = (char *)r->aggregate_id;
    pb.aggregate_version = r->aggregate_version;
    pb.stream_sequence = r->stream_seq;
    pb.duplicate = r->duplicate;
    if (r->code == JL_CODE_OK && r->result_type[0] != 0) {
        pb.result_type = (char *)r->result_type;
        pb.result.data = r->result.data;
        pb.result.len = r->result.len;
    }
    jl_buf_reset(out);
    return jl_buf_pack(out, &pb.base);
}

jl_status jl_reply_decode(jl_reply *out, const void *data, size_t len)
{
    bool oom = false;
    Jetledger__Reply *pb =
        (Jetledger__Reply *)unpack(&jetledger__reply__descriptor, len, data, &oom);
    if (pb == NULL)
        return oom ? JL_ERR_NOMEM : JL_ERR_DECODE;
    /* An id or type name cut to fit would name something else: refused, not cut. */
    if (strlen(pb->aggregate_id) >= sizeof(out->aggregate_id) ||
        strlen(pb->result_type) >= sizeof(out->result_type)) {
        jetledger__reply__free_unpacked(pb, NULL);
        return JL_ERR_DECODE;
    }
    jl_reply_reset(out);
    out->code = (jl_code)pb->code;
    if ((int)pb->code < (int)JL_CODE_OK || (int)pb->code > (int)JL_CODE_TIMEOUT) {
        /* A code this build does not know (a newer producer's): not success, not "try again";
         * kept in the message. */
        out->code = JL_CODE_INTERNAL;
        snprintf(out->message, sizeof(out->message), "reply code %d unknown here: %s",
                 (int)pb->code, pb->message);
    } else {
        snprintf(out->message, sizeof(out->message), "%s", pb->message);
    }
    /* Cut to the field, a long message may end mid-character (and another producer's may not
     * be text): it is shown, stored in an outbox row and sent on again (a remembered reply),
     * where it must be UTF-8. */
    jl_utf8_scrub(out->message);
    snprintf(out->aggregate_id, sizeof(out->aggregate_id), "%s", pb->aggregate_id);
    out->aggregate_version = pb->aggregate_version;
    out->stream_seq = pb->stream_sequence;
    out->duplicate = pb->duplicate;
    snprintf(out->result_type, sizeof(out->result_type), "%s", pb->result_type);
    jl_status s = jl_buf_add(&out->result, pb->result.data, pb->result.len);
    jetledger__reply__free_unpacked(pb, NULL);
    return s;
}

void jl_format_time(char *out, size_t n, int64_t unix_ns)
{
    time_t secs = (time_t)(unix_ns / 1000000000LL);
    long frac = (long)(unix_ns % 1000000000LL);
    if (frac < 0) {
        secs--;
        frac += 1000000000L;
    }
    struct tm tm;
    gmtime_r(&secs, &tm);
    snprintf(out, n, "%04d-%02d-%02dT%02d:%02d:%02d.%09ldZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, frac);
}

static jl_status add_str_field(jl_buf *out, const char *name, const char *v)
{
    jl_status s = jl_buf_addf(out, ",\"%s\":", name);
    return s == JL_OK ? jl_json_add_string(out, v ? v : "", v ? strlen(v) : 0) : s;
}

jl_status jl_event_to_json(jl_buf *out, const jl_event *ev)
{
    char when[48];
    jl_format_time(when, sizeof(when), ev->occurred_at_ns);
    jl_status s = jl_buf_addf(out, "{\"seq\":%" PRIu64, ev->stream_seq);
    if (s == JL_OK)
        s = add_str_field(out, "event_id", ev->event_id);
    if (s == JL_OK)
        s = add_str_field(out, "event_type", ev->event_type);
    if (s == JL_OK)
        s = jl_buf_addf(out, ",\"occurred_at\":\"%s\"", when);
    if (s == JL_OK)
        s = add_str_field(out, "aggregate_type", ev->aggregate_type);
    if (s == JL_OK)
        s = add_str_field(out, "aggregate_id", ev->aggregate_id);
    if (s == JL_OK)
        s = jl_buf_addf(out, ",\"aggregate_version\":%" PRIu64, ev->aggregate_version);
    if (s == JL_OK)
        s = add_str_field(out, "correlation_id", ev->correlation_id);
    if (s == JL_OK)
        s = add_str_field(out, "causation_id", ev->causation_id);
    if (s == JL_OK)
        s = jl_buf_addf(out, ",\"schema_version\":%u,\"payload\":", ev->schema_version);
    if (s == JL_OK)
        s = ev->payload != NULL ? jl_pb_to_json(out, ev->payload) : jl_buf_adds(out, "null");
    if (s == JL_OK)
        s = jl_buf_adds(out, "}");
    return s;
}

/* ---- strings inside protobuf ---- */

static bool wire_varint(const uint8_t *d, size_t len, size_t *io, uint64_t *out)
{
    uint64_t v = 0;
    for (unsigned shift = 0; shift < 64 && *io < len; shift += 7) {
        uint8_t b = d[(*io)++];
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *out = v;
            return true;
        }
    }
    return false;
}

#define JL_PB_MAX_DEPTH 64

/* What one walk over a protobuf message's wire bytes found. */
typedef struct pb_walk {
    const char *bad_string; /* a string field holding a NUL or not UTF-8 (its name), or NULL */
    bool newer;             /* a field numbered above all its message type knows */
} pb_walk;

/* The highest field number @p desc knows. */
static uint32_t top_field(const ProtobufCMessageDescriptor *desc)
{
    uint32_t top = 0;
    for (unsigned i = 0; i < desc->n_fields; i++)
        top = desc->fields[i].id > top ? desc->fields[i].id : top;
    return top;
}

/* Walk @p d (a @p desc message protobuf-c accepted) into @p w; false when the bytes end early
 * or a string is bad (then w->bad_string names it). */
static bool walk(const ProtobufCMessageDescriptor *desc, const uint8_t *d, size_t len,
                 unsigned depth, pb_walk *w)
{
    uint32_t top = top_field(desc);
    size_t i = 0;
    while (i < len) {
        uint64_t key = 0, n = 0;
        if (!wire_varint(d, len, &i, &key))
            return false;
        if ((key >> 3) > top)
            w->newer = true;
        switch (key & 7) {
        case 0: /* varint */
            if (!wire_varint(d, len, &i, &n))
                return false;
            break;
        case 1: /* 64-bit */
            if (len - i < 8)
                return false;
            i += 8;
            break;
        case 5: /* 32-bit */
            if (len - i < 4)
                return false;
            i += 4;
            break;
        case 2: { /* length-delimited: a string, bytes, a message or packed numbers */
            if (!wire_varint(d, len, &i, &n) || n > len - i)
                return false;
            const ProtobufCFieldDescriptor *f =
                (key >> 3) <= top
                    ? protobuf_c_message_descriptor_get_field(desc, (unsigned)(key >> 3))
                    : NULL;
            if (f != NULL && f->type == PROTOBUF_C_TYPE_STRING &&
                (memchr(d + i, 0, n) != NULL || !jl_utf8_valid((const char *)d + i, n))) {
                w->bad_string = f->name;
                return false;
            }
            if (f != NULL && f->type == PROTOBUF_C_TYPE_MESSAGE &&
                (depth >= JL_PB_MAX_DEPTH || !walk(f->descriptor, d + i, n, depth + 1, w)))
                return false;
            i += n;
            break;
        }
        default: /* groups: unpack took them; nothing of ours holds strings there */
            return true;
        }
    }
    return true;
}

bool jl_pb_strings_valid(const ProtobufCMessageDescriptor *desc, const void *data, size_t len,
                         const char **out_field)
{
    pb_walk w = {0};
    bool ok = walk(desc, data, len, 0, &w);
    if (out_field != NULL)
        *out_field = w.bad_string;
    return ok;
}

bool jl_pb_has_newer_fields(const ProtobufCMessageDescriptor *desc, const void *data, size_t len)
{
    pb_walk w = {0};
    bool ok = walk(desc, data, len, 0, &w);
    return !ok || w.newer; /* what cannot be walked is no state of this version either */
}

ProtobufCMessage *jl_request_unpack(const ProtobufCMessageDescriptor *desc, const void *data,
                                    size_t len, jl_reply *r, bool *out_newer)
{
    pb_walk w = {0};
    bool oom = false;
    ProtobufCMessage *m = unpack(desc, len, data, &oom);
    if (m == NULL && oom) {
        jl_reply_error(r, JL_CODE_UNAVAILABLE, "out of memory: try again");
    } else if (m == NULL) {
        jl_reply_error(r, JL_CODE_INVALID, "malformed protobuf: the body is not a valid %s",
                       desc->name);
    } else if (!walk(desc, data, len, 0, &w)) {
        jl_reply_error(r, JL_CODE_INVALID,
                       "field %s of %s holds a NUL byte or text that is not UTF-8",
                       w.bad_string ? w.bad_string : "?", desc->name);
        protobuf_c_message_free_unpacked(m, NULL);
        m = NULL;
    }
    if (out_newer != NULL) {
        *out_newer = w.newer;
    } else if (m != NULL && w.newer) {
        jl_reply_error(r, JL_CODE_UNAVAILABLE,
                       "%s has fields this version of the service does not know (written with a "
                       "newer schema?): try again once the service is upgraded",
                       desc->name);
        protobuf_c_message_free_unpacked(m, NULL);
        m = NULL;
    }
    return m;
}
