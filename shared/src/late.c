/* Command-id records written after their command was answered: see late.h. */
#include "late.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "codec_int.h"
#include "deadline.h"
#include "fault.h"
#include "jetledger/admin.pb-c.h"
#include "jetledger/codec.h"
#include "jetledger/log.h"
#include "jetledger/producer.h"

/* The first retry after 250 ms, then twice as long each time, at most 10 s apart. */
#define LATE_FIRST_RETRY_MS 250
#define LATE_MAX_RETRY_MS 10000
/* A record stored is still found here this long: a repeat whose lookup missed it just before
 * (a lookup waits up to 2 s, and the request then waits its turn) is answered from here. */
#define LATE_KEEP_STORED_MS 60000

typedef struct late_record {
    struct late_record *next;
    char key[48];
    char cmd_id[JL_MAX_ID_LEN + 1];
    char agg_id[JL_UUID_LEN + 1];
    uint64_t seq;
    int64_t since_ns;    /* jl__mono_ns() when kept */
    int64_t next_try_ns; /* jl__mono_ns() */
    int64_t retry_ms;
    int tries;
    bool stored; /* put: kept until next_try_ns for late finds, no longer held */
    bool marker; /* put only where the key has no record but a marker (jl__late_add_marker) */
    size_t len;
    uint8_t value[]; /* len bytes */
} late_record;

struct jl__late {
    kvStore *kv;
    pthread_mutex_t mu;
    pthread_cond_t cv;  /* monotonic: a record added, or stop */
    late_record *head;  /* oldest first; only stored ones are unlinked, under mu */
    late_record **tail; /* &head, or the last record's next */
    size_t n;           /* records, stored or not */
    bool stop;
    bool has_thread;
    pthread_t thread;
};

static void log_record(jl_log_level level, const char *msg, const late_record *r, const char *why)
{
    char id[2 * JL_MAX_ID_LEN + 8];
    jl_log(level, msg,
           "\"command_id\":\"%s\",\"aggregate_id\":\"%s\",\"seq\":%" PRIu64
           ",\"tries\":%d,\"waited_ms\":%" PRId64 ",\"status\":\"%s\"",
           jl_log_str(id, sizeof(id), r->cmd_id), r->agg_id, r->seq, r->tries,
           (jl__mono_ns() - r->since_ns) / 1000000, why);
}

/* What is logged once @p r is stored. */
static const char *recorded_msg(const late_record *r)
{
    return r->marker ? "command id marked: outcome unknown, a repeat reads the stream"
                     : "command id recorded late";
}

/* Whether KV entry @p e holds a marker (CommandRecord.unsettled), not a command's record; its
 * sequence into @p after_seq. *@p out_oom: memory ran out reading it (neither is known). */
static bool is_marker(kvEntry *e, uint64_t *after_seq, bool *out_oom)
{
    Jetledger__CommandRecord *rec = (Jetledger__CommandRecord *)jl__unpack(
        &jetledger__command_record__descriptor, kvEntry_Value(e), (size_t)kvEntry_ValueLen(e),
        out_oom);
    bool marker = rec != NULL && rec->unsettled;
    *after_seq = marker ? rec->after_seq : 0;
    if (rec != NULL)
        jetledger__command_record__free_unpacked(rec, NULL);
    return marker;
}

/*
 * Put marker @p r where its key has no record or an earlier marker (of an earlier copy of the
 * command whose outcome was unknown too: this one says where the later copy would be), never
 * over a command's record (written by a repeat that settled it: what the marker stood in for)
 * nor over a later marker (this one's retries outlasted it, or another replica's). Compare-and-
 * set on the key's revision, so that what is written meanwhile is not overwritten.
 */
static natsStatus put_marker(jl__late *l, late_record *r)
{
    natsStatus ns = NATS_OK;
    for (int i = 0; i < 3; i++) {
        kvEntry *cur = NULL;
        uint64_t rev = 0, after = 0;
        bool oom = false, marker = false;
        ns = kvStore_Get(&cur, l->kv, r->key);
        if (ns == NATS_OK)
            marker = is_marker(cur, &after, &oom);
        if (ns == NATS_NOT_FOUND)
            ns = kvStore_Create(&rev, l->kv, r->key, r->value, (int)r->len);
        else if (ns == NATS_OK && oom)
            ns = NATS_NO_MEMORY; /* not known what is there: put again later */
        else if (ns == NATS_OK && (!marker || after + 1 > r->seq))
            ns = NATS_OK; /* a record, or a later marker: nothing to put */
        else if (ns == NATS_OK)
            ns = kvStore_Update(&rev, l->kv, r->key, r->value, (int)r->len, kvEntry_Revision(cur));
        kvEntry_Destroy(cur);
        const char *why = ns == NATS_ERR ? nats_GetLastError(NULL) : NULL;
        if (why == NULL || strstr(why, "wrong last sequence") == NULL)
            return ns;
        /* Written meanwhile (or a replica behind answered the get): read it again. */
    }
    return ns;
}

/* Put @p r once, without the lock (a record not stored is freed only by the thread). */
static natsStatus put(jl__late *l, late_record *r)
{
    uint64_t rev = 0;
    if (r->marker)
        return put_marker(l, r);
    return kvStore_Put(&rev, l->kv, r->key, r->value, (int)r->len);
}

/* Unlink the record *@p pp points to and free it. */
static void drop_record(jl__late *l, late_record **pp)
{
    late_record *r = *pp;
    *pp = r->next;
    if (l->tail == &r->next)
        l->tail = pp;
    l->n--;
    free(r);
}

static void *writer(void *arg)
{
    jl__late *l = arg;
    pthread_mutex_lock(&l->mu);
    while (!l->stop) {
        int64_t now = jl__mono_ns(), soonest = now + 1000 * 1000000LL;
        late_record *due = NULL;
        for (late_record **pp = &l->head; *pp != NULL && due == NULL;) {
            late_record *r = *pp;
            if (r->stored && r->next_try_ns <= now) {
                drop_record(l, pp); /* stored long enough ago: *pp is the next one */
                continue;
            }
            if (r->next_try_ns <= now)
                due = r;
            else if (r->next_try_ns < soonest)
                soonest = r->next_try_ns;
            pp = &r->next;
        }
        if (due == NULL) {
            struct timespec until = jl__monotonic_in((soonest - now) / 1000000 + 1);
            pthread_cond_timedwait(&l->cv, &l->mu, &until);
            continue;
        }
        pthread_mutex_unlock(&l->mu);
        natsStatus ns = put(l, due);
        /* Still not stored, so only this thread frees it; tries is this thread's alone. Logged
         * before the lock is taken again: a slow log sink holds up no submit. */
        due->tries++;
        if (ns == NATS_OK)
            log_record(JL_LOG_INFO, recorded_msg(due), due, "OK");
        else if ((due->tries & (due->tries - 1)) == 0) /* 1, 2, 4, 8, ... */
            log_record(JL_LOG_WARN, "command id still not recorded, trying again", due,
                       natsStatus_GetText(ns));
        pthread_mutex_lock(&l->mu);
        if (ns == NATS_OK) {
            due->stored = true;
            due->next_try_ns = jl__mono_ns() + LATE_KEEP_STORED_MS * 1000000LL;
            continue;
        }
        due->next_try_ns = jl__mono_ns() + due->retry_ms * 1000000LL;
        due->retry_ms =
            due->retry_ms * 2 > LATE_MAX_RETRY_MS ? LATE_MAX_RETRY_MS : due->retry_ms * 2;
    }
    pthread_mutex_unlock(&l->mu);
    return NULL;
}

jl_status jl__late_open(jl__late **out, kvStore *kv)
{
    jl__late *l = calloc(1, sizeof(*l));
    *out = NULL;
    if (l == NULL)
        return JL_ERR_NOMEM;
    l->kv = kv;
    l->tail = &l->head;
    pthread_mutex_init(&l->mu, NULL);
    if (jl__cond_init_monotonic(&l->cv) != 0) {
        pthread_mutex_destroy(&l->mu);
        free(l);
        return JL_ERR_NOMEM;
    }
    if (pthread_create(&l->thread, NULL, writer, l) != 0) {
        pthread_cond_destroy(&l->cv);
        pthread_mutex_destroy(&l->mu);
        free(l);
        return JL_ERR_NOMEM;
    }
    l->has_thread = true;
    *out = l;
    return JL_OK;
}

static bool add(jl__late *l, const char *key, const char *cmd_id, const char *agg_id, uint64_t seq,
                const void *value, size_t len, bool marker)
{
    late_record *r = NULL;
    bool fits = strlen(key) < sizeof(r->key) && strlen(cmd_id) < sizeof(r->cmd_id) &&
                strlen(agg_id) < sizeof(r->agg_id);
    if (fits)
        r = malloc(sizeof(*r) + len); /* outside the lock: the producer's lock may be held */
    pthread_mutex_lock(&l->mu);
    /* One stored already makes room (the oldest): only a record not stored holds a snapshot
     * back. The writer's record being put is not stored yet: never freed here. */
    for (late_record **pp = &l->head; l->n >= JL_LATE_RECORDS_MAX && *pp != NULL;
         pp = &(*pp)->next) {
        if ((*pp)->stored) {
            drop_record(l, pp);
            break;
        }
    }
    bool full = l->n >= JL_LATE_RECORDS_MAX;
    if (full) {
        free(r);
        r = NULL;
    }
    if (r != NULL) {
        memset(r, 0, sizeof(*r));
        snprintf(r->key, sizeof(r->key), "%s", key);
        snprintf(r->cmd_id, sizeof(r->cmd_id), "%s", cmd_id);
        snprintf(r->agg_id, sizeof(r->agg_id), "%s", agg_id);
        r->seq = seq;
        r->since_ns = jl__mono_ns();
        r->next_try_ns = r->since_ns + LATE_FIRST_RETRY_MS * 1000000LL;
        r->retry_ms = 2 * LATE_FIRST_RETRY_MS;
        r->marker = marker;
        r->len = len;
        memcpy(r->value, value, len);
        *l->tail = r;
        l->tail = &r->next;
        l->n++;
        pthread_cond_signal(&l->cv);
    }
    pthread_mutex_unlock(&l->mu);
    if (r == NULL) {
        char id[2 * JL_MAX_ID_LEN + 8];
        jl_log(JL_LOG_ERROR, "command id not remembered",
               "\"command_id\":\"%s\",\"aggregate_id\":\"%s\",\"seq\":%" PRIu64
               ",\"why\":\"%s\",\"hint\":\"a repeat of the id past the duplicate window is told "
               "only by a read of the aggregate's commits\"",
               jl_log_str(id, sizeof(id), cmd_id), agg_id, seq,
               full   ? "too many records wait to be written"
               : fits ? "out of memory"
                      : "an id longer than a record holds");
    }
    return r != NULL;
}

bool jl__late_add(jl__late *l, const char *key, const char *cmd_id, const char *agg_id,
                  uint64_t seq, const void *value, size_t len)
{
    return add(l, key, cmd_id, agg_id, seq, value, len, false);
}

bool jl__late_add_marker(jl__late *l, const char *key, const char *cmd_id, const char *agg_id,
                         uint64_t seq, const void *value, size_t len)
{
    return add(l, key, cmd_id, agg_id, seq, value, len, true);
}

jl_status jl__late_find(jl__late *l, const char *cmd_id, void **out, size_t *out_len)
{
    void *copy = NULL;
    const late_record *last = NULL;
    jl_status s = JL_ERR_NOT_FOUND;
    pthread_mutex_lock(&l->mu);
    /* The newest: a command's record kept after a marker of its id (which it settles), or a
     * later marker after an earlier one. */
    for (const late_record *r = l->head; r != NULL; r = r->next)
        if (strcmp(r->cmd_id, cmd_id) == 0)
            last = r;
    if (last != NULL &&
        (jl__fault("late.find") || (copy = malloc(last->len ? last->len : 1)) == NULL))
        s = JL_ERR_NOMEM;
    else if (last != NULL) {
        memcpy(copy, last->value, last->len);
        *out_len = last->len;
        s = JL_OK;
    }
    pthread_mutex_unlock(&l->mu);
    *out = copy;
    return s;
}

bool jl__late_holds(jl__late *l, const char *agg_id, uint64_t seq)
{
    bool holds = false;
    pthread_mutex_lock(&l->mu);
    for (late_record *r = l->head; r != NULL && !holds; r = r->next)
        holds = !r->stored && r->seq <= seq && strcmp(r->agg_id, agg_id) == 0;
    pthread_mutex_unlock(&l->mu);
    return holds;
}

void jl__late_close(jl__late *l, int64_t timeout_ms)
{
    if (l == NULL)
        return;
    pthread_mutex_lock(&l->mu);
    l->stop = true;
    pthread_cond_signal(&l->cv);
    pthread_mutex_unlock(&l->mu);
    if (l->has_thread)
        pthread_join(l->thread, NULL);
    int64_t deadline = jl__mono_ns() + timeout_ms * 1000000LL;
    for (late_record *r = l->head, *next = NULL; r != NULL; r = next) {
        next = r->next;
        if (r->stored) {
            free(r);
            continue;
        }
        natsStatus ns = jl__mono_ns() < deadline ? put(l, r) : NATS_TIMEOUT;
        r->tries++;
        if (ns == NATS_OK)
            log_record(JL_LOG_INFO, recorded_msg(r), r, "OK");
        else
            log_record(JL_LOG_ERROR, "command id not remembered: the producer stopped first", r,
                       natsStatus_GetText(ns));
        free(r);
    }
    pthread_cond_destroy(&l->cv);
    pthread_mutex_destroy(&l->mu);
    free(l);
}
