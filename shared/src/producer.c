#include "jetledger/producer.h"

#include <inttypes.h>
#include <stdatomic.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cache.h"
#include "codec_int.h"
#include "deadline.h"
#include "fault.h"
#include "arrivals.h"
#include "hash.h"
#include "late.h"
#include "ordered.h"
#include "ptrmap.h"
#include "jetledger/admin.pb-c.h"
#include "jetledger/log.h"
#include "jetledger/store.h"

#define SUBJECT_MAX 256
#define HISTORY_MAX 1000
/* Appends in flight at once; more commands wait in a backlog. */
#define JL_PRODUCER_MAX_INFLIGHT 4096
/* The least a command-id record's put waits for its ack, however little of its command's time
 * is left. */
#define JL_RECORD_MIN_WAIT_MS 250
/* An append refused for no responders (no stream leader yet) is sent again this long after it
 * was sent. */
#define JL_NO_RESPONDERS_PAUSE_MS 20
/* An earlier copy still in process: resent after 20 ms, then 40, 80, at most this (the pause
 * holds the acknowledgement thread: kept short). */
#define JL_IN_PROCESS_PAUSE_MAX_MS 160
/* Reads of an aggregate's newer commits when checking a refusal, before giving up. */
#define VERIFY_READS 5
/* How long a close waits for a handler still running before it leaves the memory allocated. */
#define HANDLER_WAIT_MS 10000
/* What a close keeps, at its end, for the command-id records still kept in memory (one put each
 * in most cases): the appends' wait may take the rest of its time, and a record not put by close
 * is lost (a repeat past JetStream's window would then be decided again). At most a quarter of
 * the close's time. */
#define JL_CLOSE_LATE_MS 1000
/* Room for a command's full protobuf name read back from a commit (a longer one is compared by
 * its first JL_TYPE_NAME_MAX - 1 bytes). */
#define JL_TYPE_NAME_MAX 256

/* Commands in progress (appends in flight, or requests waiting to be read) from which appends
 * and replies go through the batching connection. */
#define JL_BURST_AT 16

/* Snapshot writes awaiting their ack at most; more are skipped (they only shorten replays). */
#define JL_MAX_SNAPSHOTS_INFLIGHT 64

/* Command-id lookups in parallel, and requests waiting in order for them. */
#define JL_LOOKUP_WORKERS 16
#define JL_LOOKUP_QUEUE 1024
/* A lookup holds up the requests behind it (they are decided in arrival order): at most this
 * long, even with the KV stream's leader moving, where the JetStream timeout would stall them
 * all. A lookup that fails is answered "unavailable", never taken for an unknown id. */
#define JL_LOOKUP_WAIT_MS 2000

/* Aggregates the cache lacks, read in parallel (a round trip per read), and commands waiting
 * for them. */
#define JL_LOAD_WORKERS 64
/* Request timeouts in a row a worker's item may wait out before its worker counts as stuck
 * (see jl_producer_stalled_ms()). */
#define JL_WORKER_TIMEOUTS 4
/* Command structs kept for reuse, and the largest decision buffer one keeps. */
#define JL_FREE_CMDS 4096
#define JL_FREE_CMD_BYTES (64 * 1024)
#define JL_LOAD_QUEUE 1024

typedef struct cmd cmd;

struct jl_producer {
    const jl_service_def *def;
    jl_conn *conn;
    jl_store *store;
    jsCtx *js;          /* our own context: its async-publish ack handler is ours */
    jl_conn *bulk;      /* batches its writes: appends and replies of a burst */
    jsCtx *bulk_js;     /* as js, on bulk */
    kvStore *snapshots; /* NULL when snapshots are off */
    kvStore *commands;  /* client command ids -> first reply; NULL when off */
    jsCtx *lookup_js;   /* with JL_LOOKUP_WAIT_MS: reads of p->lookups */
    kvStore *lookups;   /* the bucket of p->commands, for lookups */
    jl__late *late;     /* records not written in time, put again (late.h); NULL when off */
    natsSubscription *sub;
    natsSubscription *qsub;
    jl__ordered *incoming; /* requests in arrival order; command-id lookups in parallel */
    jl__ordered *loads;    /* commands whose aggregate is being read (attach_entry, on_ack) */
    int retries;
    int64_t append_timeout_ms;
    uint64_t snapshot_every;
    /* One lock for everything below, held while deciding and on acks, but not while reading an
     * aggregate the cache lacks, one left stale (an append of unknown outcome, a failed read)
     * or the commits after a lost race (p->loads), or a command-id record (p->incoming). */
    pthread_mutex_t mu;
    jl__cache *cache;
    jl__ptrmap inflight; /* natsMsg -> cmd: commands in flight, found by what on_ack gets back */
    size_t n_inflight;
    size_t max_inflight;
    size_t snapshots_inflight;        /* snapshot writes not yet acked (not in n_inflight) */
    size_t n_loading;                 /* commands in p->loads (not in n_inflight) */
    cmd *to_load_head, *to_load_tail; /* for p->loads once the lock is let go (defer_load) */
    bool closing;                     /* past the close's wait: no command is started now */
    atomic_int replicas;              /* of the stream, as found at open or since */
    jl__cache_entry *just_read;       /* in load_done: the entry read to the stream's head */
    cmd *backlog_head, *backlog_tail; /* started when an in-flight slot frees */
    cmd *free_cmds;
    size_t n_free; /* on free_cmds: at most JL_FREE_CMDS */
    /* Commands held at once, in flight or waiting (for their aggregate, a read, a slot): beyond
     * cfg->max_commands a command is answered unavailable at once instead of queued without
     * bound. */
    size_t max_cmds;
    size_t n_cmds; /* taken from cmd_new() and not freed: at most max_cmds (+ the one refused) */
    size_t held_bytes; /* their bodies: at most JL_MAX_HELD_COMMAND_BYTES */
    /* mono_ns: a command finished, the first taken after none, or a commit read for one (a
     * load reads without the lock, one commit at a time): see jl_producer_stalled_ms(). */
    _Atomic int64_t progress_ns;
    jl_buf commit;
    jl_buf kv_value;   /* a snapshot or a command-id record on its way to KV */
    jl_buf snap_state; /* the state packed for a snapshot */
    jl_buf reply_bytes;
    jl_reply reply;
    jl_producer_stats stats;
    _Atomic uint64_t record_gen; /* command-id records stored so far (see submit) */
    uint64_t evicted_mark;       /* under mu: the highest mark of an entry evicted (see submit) */
    _Atomic int64_t close_by_ms; /* jl__mono_ms() the close must end by; 0: not closing */
    atomic_int acking;           /* on_ack calls running: close waits for them before freeing */
    jl__arrivals arrivals;       /* on_command's alone (a subscription's calls never overlap) */
};

/* Where a replay stops: after a sequence, a time or a version (0 = no limit). */
typedef struct limit {
    uint64_t seq;
    int64_t time_ns;
    uint64_t version;
} limit;

typedef struct replay_ctx {
    jl_producer *p;
    void *state;
    uint64_t version;
    uint64_t last_seq;
    int64_t last_time;
    uint64_t events;
    limit lim;
    bool reached;                      /* the limit was met: stop reading */
    const char *agg_id;                /* whose commits (to delete its snapshot), or NULL */
    bool full;                         /* replayed from the first event after a divergence */
    bool diverged;                     /* a commit went back to a version already applied */
    bool aged_gap;                     /* commits aged out between two read: prev_seq not checked */
    uint64_t diverged_prev;            /* the prev_seq that did not follow on (diverged) */
    bool next_only;                    /* apply a commit only if it follows on from version */
    bool gap;                          /* next_only refused one: commits lie between */
    const char *watch_cmd_id;          /* when set: note the commit recording this command id */
    uint64_t watch_seq;                /* its sequence (0: not seen) */
    uint64_t watch_version;            /* the version of its last event */
    char watch_type[JL_TYPE_NAME_MAX]; /* the command type it records ("": not recorded) */
    int64_t deadline_ns;               /* mono_ns: a query's replay stops there (0: none) */
    bool over_time;                    /* ... and did */
    char err[256];
} replay_ctx;

/* One command from receipt to reply. */
struct cmd {
    cmd *next;    /* entry queue, backlog or free list */
    natsMsg *req; /* the request (owned), NULL for a direct call */
    size_t held;  /* its body's bytes, counted in p->held_bytes */
    struct sync_call *sync;
    const jl_command_def *cd;
    ProtobufCMessage *msg;
    jl__cache_entry *entry; /* pinned while the command lives */
    int attempts;
    int64_t received_ns; /* mono_ns: when received (on_command), else submitted */
    int64_t deadline_ns; /* mono_ns: received_ns + the append timeout (0: not tried yet) */
    int64_t sent_ns;     /* mono_ns: when its last message was published (publish_tracked) */
    uint64_t first_version;
    bool fresh;             /* a new aggregate under a random generated id: nothing to load */
    bool generated;         /* its aggregate id was made here (random, or from its command id) */
    bool resolve;           /* its id's record is a marker (outcome_unknown): look after ... */
    uint64_t resolve_after; /* ... this sequence of the aggregate's subject for its commit */
    bool timed_out;         /* an attempt of its append timed out: it may be stored */
    int in_process;         /* acknowledgements "an earlier copy in process" so far */
    bool client_id;         /* the command id came from the client: remembered, deduplicated */
    bool recording;         /* stored; its command-id record is in flight, then the reply */
    bool snapshot_due;      /* a snapshot of the entry waits for the record (see advance) */
    bool appended;          /* its own append was acked (not a repeat found stored) */
    /* A refusal or a no-op on a cached state is checked against the stream's head first: */
    bool verifying;       /* on p->loads, reading the head and what the cache lacks */
    uint64_t verify_from; /* the entry's last sequence when the check began */
    /* Its aggregate as read by a worker of p->loads (load_read), for load_done: */
    bool catching_up; /* only the commits after the entry's (a lost race), else all */
    replay_ctx load;
    jl_status load_status;
    bool load_checked; /* ... to the head the stream's leader gave (verify_read) */
    bool load_from_snapshot;
    uint64_t load_snap_seq;
    uint64_t stored_version, stored_seq; /* the reply's, while recording */
    bool stored_duplicate;               /* ... and it answers a repeat */
    /* JetStream took its append for a repeat of the message at dup_seq: load_read reads that
     * one (its aggregate and version) for load_done, off the lock. */
    uint64_t dup_seq, dup_version;
    char dup_id[JL_UUID_LEN + 1];
    char dup_type[JL_TYPE_NAME_MAX];
    jl_decision d;
    /* The ids of d's events, as appended (d.n_events of them; kept with the command's buffer
     * for the next one), and their occurred-at: what advance() evolves with. */
    char (*ids)[JL_UUID_LEN + 1];
    size_t ids_cap;
    int64_t occurred_ns;
    char agg_id[JL_UUID_LEN + 1];
    char cmd_id[JL_MAX_ID_LEN + 1];
    char corr[JL_MAX_ID_LEN + 1];
    char cause[JL_MAX_ID_LEN + 1];
    char name[72];
    char subject[256];
};

/* A caller of jl_producer_handle() waiting for its reply. */
typedef struct sync_call {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool done;
    jl_reply *out;
} sync_call;

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

/* For deadlines and waits: a clock that a step of the wall clock (NTP) does not move. */
static int64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Least time left for a first append attempt (request timeouts are at least 100 ms). */
#define JL_APPEND_MIN_LEFT_MS 50

/* Milliseconds left before @p deadline_ns (mono_ns), at most @p cap_ms; at least 1. */
static int64_t left_ms(int64_t deadline_ns, int64_t cap_ms)
{
    int64_t left = (deadline_ns - mono_ns()) / 1000000;
    return left < 1 ? 1 : left < cap_ms ? left : cap_ms;
}

/* ---- replaying an aggregate's commits ---- */

static jl_status replay_commit(uint64_t seq, int64_t time_ns, const void *data, size_t len,
                               void *closure)
{
    replay_ctx *rc = closure;
    const jl_service_def *def = rc->p->def;
    jl_commit *c = NULL;
    jl_event ev;
    char why[256] = "";
    (void)time_ns;
    int64_t now = mono_ns();
    /* A long load is work going on, not a stall (relaxed: a gauge, read every 0.5 s). */
    atomic_store_explicit(&rc->p->progress_ns, now, memory_order_relaxed);
    jl__ordered_beat(); /* and its worker's own */
    if (rc->deadline_ns != 0 && now > rc->deadline_ns) {
        rc->over_time = true;
        return JL_ERR_TIMEOUT;
    }

    if (rc->lim.seq != 0 && seq > rc->lim.seq) {
        rc->reached = true;
        return JL_ERR_STOPPED;
    }
    uint64_t applied = 0;
    jl_status s = jl_commit_decode(&c, data, len, seq, why, sizeof(why));
    uint64_t prev = s == JL_OK ? jl_commit_prev_seq(c) : 0;
    if (s == JL_OK && !rc->full && !rc->aged_gap && rc->last_seq != 0 && prev != 0 &&
        prev != rc->last_seq) {
        /* Not appended after the commit read last: others lie between (reading the last
         * commit only), or the history read so far is not the stream's (a snapshot or the
         * cache of a stream since restored from an older backup and written to again). */
        if (rc->next_only) {
            rc->gap = true;
        } else {
            rc->diverged = true;
            rc->diverged_prev = prev;
        }
        s = JL_ERR_STOPPED;
    }
    for (size_t i = 0; s == JL_OK && i < jl_commit_count(c); i++) {
        s = jl_commit_event(c, i, &def->events, &ev, why, sizeof(why));
        if (s != JL_OK)
            break;
        if (i == 0 && !rc->full && rc->version > 0 && ev.aggregate_version <= rc->version) {
            /* Versions restart: the history read so far (a snapshot, the cache) is not the
             * stream's (restored from an older backup, then written to again). */
            rc->diverged = true;
            s = JL_ERR_STOPPED;
            break;
        }
        if (i == 0 && rc->next_only && ev.aggregate_version != rc->version + 1) {
            rc->gap = true; /* not the next commit: nothing applied, read them in order */
            s = JL_ERR_STOPPED;
            break;
        }
        if ((rc->lim.version != 0 && ev.aggregate_version > rc->lim.version) ||
            (rc->lim.time_ns != 0 && ev.occurred_at_ns > rc->lim.time_ns)) {
            rc->reached = true;
            s = JL_ERR_STOPPED;
            break;
        }
        s = def->evolve(rc->state, &ev);
        if (s != JL_OK) {
            snprintf(why, sizeof(why), "evolve refused event %s (%s): %s", ev.event_id,
                     ev.event_type, jl_status_str(s));
            break;
        }
        rc->version = ev.aggregate_version;
        rc->last_time = ev.occurred_at_ns;
        rc->events++;
        applied++;
    }
    if (s == JL_OK || (s == JL_ERR_STOPPED && applied > 0))
        rc->last_seq = seq;
    if (s == JL_OK && rc->watch_cmd_id != NULL &&
        strcmp(jl_commit_command_id(c), rc->watch_cmd_id) == 0) {
        rc->watch_seq = seq;
        rc->watch_version = rc->version;
        snprintf(rc->watch_type, sizeof(rc->watch_type), "%s", jl_commit_command_type(c));
    }
    if (s != JL_OK && s != JL_ERR_STOPPED)
        snprintf(rc->err, sizeof(rc->err), "stream sequence %" PRIu64 ": %.200s", seq, why);
    jl_commit_free(c);
    return s;
}

static bool snapshots_on(const jl_producer *p)
{
    return p->snapshots != NULL;
}

static void snapshot_key(char *out, size_t n, const jl_producer *p, const char *id)
{
    snprintf(out, n, "%s.%s", p->def->aggregate_type, id);
}

static jl_status read_commits(jl_producer *p, const char *subject, replay_ctx *rc);

/*
 * What was read of @p subject into @p rc (a snapshot, the cache) is not what the stream holds:
 * restored from an older backup, or created again (@p why says how it showed). What the stream
 * holds is the aggregate: replay it from its first event, and delete its snapshot, which would
 * mislead the next load and GetState too (the entry is snapshotted again, right). Without this,
 * every append would expect a sequence the aggregate no longer has, and be answered "conflict"
 * for good, or a refusal decided on a state the stream never had would stand.
 */
static jl_status replay_again(jl_producer *p, const char *subject, replay_ctx *rc, const char *why)
{
    jl_log(JL_LOG_WARN, "aggregate ahead of the stream, replayed from its first event",
           "\"subject\":\"%s\",\"read_to_seq\":%" PRIu64 ",\"why\":\"%s\",\"hint\":\"the "
           "stream was restored from an older backup, created again or purged\"",
           subject, rc->last_seq, why);
    replay_ctx fresh = {.p = p,
                        .state = rc->state,
                        .lim = rc->lim,
                        .agg_id = rc->agg_id,
                        .watch_cmd_id = rc->watch_cmd_id,
                        .deadline_ns = rc->deadline_ns,
                        .full = true};
    *rc = fresh;
    p->def->state_init(rc->state);
    if (snapshots_on(p) && rc->agg_id != NULL) {
        char key[128];
        snapshot_key(key, sizeof(key), p, rc->agg_id);
        (void)kvStore_Delete(p->snapshots, key); /* kept, it only costs this again */
    }
    return read_commits(p, subject, rc);
}

/* Fold the commits of @p subject after rc->last_seq into rc->state; on failure rc->err says
 * why. Needs no lock: rc and its state must be the caller's alone. */
static jl_status read_commits(jl_producer *p, const char *subject, replay_ctx *rc)
{
    uint64_t last = 0;
    char why[256] = "";
    jl_status s = jl_store_read_subject(p->store, subject, rc->last_seq, 0, replay_commit, rc,
                                        &last, why, sizeof(why));
    if (s == JL_ERR_STOPPED && rc->diverged && rc->diverged_prev != 0) {
        /* The commit it follows is not the one read last: gone by --max-age (the stream no
         * longer holds it), or another history. */
        jl_store_info info;
        s = jl_store_info_get(p->store, &info, rc->err, sizeof(rc->err));
        if (s != JL_OK)
            return s;
        if (info.first_seq > rc->diverged_prev) {
            jl_log(JL_LOG_WARN, "commits aged out between those read",
                   "\"subject\":\"%s\",\"after_seq\":%" PRIu64 ",\"next_follows\":%" PRIu64,
                   subject, rc->last_seq, rc->diverged_prev);
            rc->diverged = false;
            rc->diverged_prev = 0;
            rc->aged_gap = true; /* read on as before: what aged out is lost to the state */
            s = jl_store_read_subject(p->store, subject, rc->last_seq, 0, replay_commit, rc, &last,
                                      why, sizeof(why));
            rc->aged_gap = false;
        } else {
            s = JL_ERR_STOPPED;
        }
    }
    if (s == JL_ERR_STOPPED && rc->diverged)
        return replay_again(p, subject, rc, "a commit does not follow on from those read");
    if (s == JL_OK || (s == JL_ERR_STOPPED && rc->reached))
        return JL_OK;
    if (rc->err[0] == 0)
        snprintf(rc->err, sizeof(rc->err), "%s", why);
    return s;
}

/*
 * After a lost race: fold in what the other writer added, usually one commit, which is then the
 * subject's last message: one read instead of two (that commit, and a read that finds nothing
 * after it). When the last commit does not follow on from rc's version, read them all in order.
 * Needs no lock, as read_commits().
 */
static jl_status read_newer_commits(jl_producer *p, const char *subject, replay_ctx *rc)
{
    uint64_t last = 0;
    char why[256] = "";
    rc->next_only = true;
    jl_status s = jl_store_read_last(p->store, subject, rc->last_seq, replay_commit, rc, &last, why,
                                     sizeof(why));
    rc->next_only = false;
    if (s == JL_OK)
        return JL_OK; /* replay_commit moved rc to it, or nothing is newer */
    if (s == JL_ERR_STOPPED && rc->diverged)
        return replay_again(p, subject, rc, "a commit went back to a version already read");
    if (!(s == JL_ERR_STOPPED && rc->gap)) {
        if (rc->err[0] == 0)
            snprintf(rc->err, sizeof(rc->err), "%s", why);
        return s;
    }
    rc->gap = false;
    return read_commits(p, subject, rc);
}

/* Turn read_commits()'s status @p s into reply @p r; returns @p s. */
static jl_status read_result(const char *subject, const replay_ctx *rc, jl_status s, jl_reply *r)
{
    if (s == JL_OK)
        return JL_OK;
    if (s == JL_ERR_UNAVAILABLE || s == JL_ERR_TIMEOUT || s == JL_ERR_NATS || s == JL_ERR_NOMEM) {
        /* Not decided, and may well be next time: a client or process manager sends it again
         * (JL_ERR_NATS: a status reply or a broken response while the cluster changes). What
         * stays "internal" is history that cannot be replayed: that needs an operator. */
        jl_reply_error(r, JL_CODE_UNAVAILABLE, "event store unavailable: %s", rc->err);
    } else if (s == JL_ERR_UNKNOWN_TYPE) {
        /* A newer version of the service wrote it (a rolling upgrade, this replica not yet
         * replaced, or rolled back): not decided here, and a replica that knows the type can
         * decide it; "internal" would be final to a process manager's outbox. */
        jl_reply_error(r, JL_CODE_UNAVAILABLE,
                       "%s holds an event of a type this version of the service does not know "
                       "(written by a newer version?); not decided: try again: %s",
                       subject, rc->err);
        jl_log(JL_LOG_WARN, "aggregate holds an unknown event type",
               "\"subject\":\"%s\",\"hint\":\"upgrade every replica of the service\"", subject);
    } else {
        jl_reply_error(r, JL_CODE_INTERNAL, "cannot rebuild %s: %s", subject, rc->err);
        jl_log(JL_LOG_ERROR, "aggregate load failed", "\"subject\":\"%s\",\"status\":\"%s\"",
               subject, jl_status_str(s));
    }
    return s;
}

/* As read_result(), counting what a load or catch-up read. Under p->mu. */
static jl_status replayed(jl_producer *p, const char *subject, const replay_ctx *rc, jl_status s,
                          jl_reply *r)
{
    p->stats.events_replayed += rc->events;
    p->stats.last_load_events = rc->events;
    return read_result(subject, rc, s, r);
}

/* ---- snapshots ---- */

/* Start @p rc from the aggregate's snapshot when there is a usable one (then true). Touches no
 * counter: GetState runs it without the lock. */
static bool load_snapshot(jl_producer *p, const char *id, replay_ctx *rc)
{
    bool used = false;
    char key[128];
    kvEntry *e = NULL;
    snapshot_key(key, sizeof(key), p, id);
    if (kvStore_Get(&e, p->snapshots, key) != NATS_OK)
        return false; /* none yet, or the bucket is unreachable: replay from the start */
    Jetledger__Snapshot *snap = jetledger__snapshot__unpack(NULL, (size_t)kvEntry_ValueLen(e),
                                                            (const uint8_t *)kvEntry_Value(e));
    if (snap != NULL && snap->state_version == p->def->state_version &&
        strcmp(snap->state_type, p->def->state_type->name) == 0 &&
        /* Fields this state type lacks: a newer version's, its state_version not bumped;
         * loaded, they would be lost. */
        !jl_pb_has_newer_fields(p->def->state_type, snap->state.data, snap->state.len) &&
        p->def->state_unpack(rc->state, snap->state.data, snap->state.len) == JL_OK) {
        rc->version = snap->aggregate_version;
        rc->last_seq = snap->stream_sequence;
        used = true;
    } else {
        p->def->state_init(rc->state); /* another version's snapshot: ignore it, replay */
    }
    if (snap != NULL)
        jetledger__snapshot__free_unpacked(snap, NULL);
    kvEntry_Destroy(e);
    return used;
}

static void snapshot_lost(const char *key, const char *why)
{
    char esc[300];
    jl_log(JL_LOG_WARN, "snapshot not saved", "\"key\":\"%s\",\"status\":\"%s\"",
           jl_log_str(esc, sizeof(esc), key), why);
}

static natsStatus kv_put_async(jl_producer *p, kvStore *kv, const char *key, cmd *c);

/* Write a snapshot of @p v asynchronously; false when it was not sent (too many in flight, or
 * an error, logged). Under p->mu. */
static bool save_snapshot(jl_producer *p, const char *id, const jl__cache_entry *v)
{
    Jetledger__Snapshot snap = JETLEDGER__SNAPSHOT__INIT;
    jl_buf *state = &p->snap_state;
    char key[128];
    bool sent = false;
    if (p->snapshots_inflight >= JL_MAX_SNAPSHOTS_INFLIGHT)
        return false;
    /* A commit whose command id is not recorded yet must stay after the aggregate's snapshot,
     * where a load looks for command ids (see not_remembered). */
    if (p->late != NULL && jl__late_holds(p->late, id, v->last_seq))
        return false;
    jl_buf_reset(state);
    if (p->def->state_pack(v->state, state) == JL_OK) {
        snap.state_version = p->def->state_version;
        snap.aggregate_version = v->version;
        snap.stream_sequence = v->last_seq;
        snap.state_type = (char *)p->def->state_type->name;
        snap.state.data = state->data;
        snap.state.len = state->len;
        jl_buf_reset(&p->kv_value);
        snapshot_key(key, sizeof(key), p, id);
        if (jl_buf_pack(&p->kv_value, &snap.base) == JL_OK) {
            /* Its ack comes to on_ack, where no command waits for it. A lost snapshot costs
             * only a longer replay: log it, never fail the command. */
            natsStatus ns = kv_put_async(p, p->snapshots, key, NULL);
            if (ns != NATS_OK)
                snapshot_lost(key, natsStatus_GetText(ns));
            sent = ns == NATS_OK;
            p->snapshots_inflight += sent;
        }
    }
    return sent;
}

/* Whether @p e holds commits its newest snapshot lacks (and can be written: settled). */
static bool unsaved(const jl__cache_entry *e)
{
    return !e->stale && !e->busy && e->last_seq > e->snap_seq;
}

/*
 * An entry leaves the cache: snapshot it if it moved past its snapshot, so that loading it
 * again reads one snapshot and no events instead of up to snapshot_every of them, a round trip
 * each (a cache smaller than the aggregates in use, or a restart, would otherwise pay that on
 * every miss). Under p->mu (every cache call is).
 */
static void on_evict(void *ctx, const jl__cache_entry *e)
{
    jl_producer *p = ctx;
    if (snapshots_on(p) && unsaved(e) && save_snapshot(p, e->id, e))
        p->stats.snapshots_on_evict++;
    /* Its mark goes on in the entries made after it (see submit). */
    if (e->mark > p->evicted_mark)
        p->evicted_mark = e->mark;
}

/* ---- aggregate states ---- */

/*
 * Pin command @p c's aggregate in c->entry. True when it can be decided on at once: the cache
 * holds it, or it is new (c->fresh: nothing to read). False when it must be read first: the
 * entry is then busy, so later commands of the aggregate queue behind @p c, and the caller
 * hands @p c to p->loads. Under p->mu. JL_ERR_NOMEM (reply @p r set) leaves c->entry NULL.
 */
static jl_status attach_entry(jl_producer *p, cmd *c, bool *out_ready, jl_reply *r)
{
    jl__cache_entry *e = jl__cache_get(p->cache, c->agg_id);
    *out_ready = true;
    if (e != NULL && !e->stale) {
        p->stats.cache_hits++;
        p->stats.last_load_events = 0;
    } else if (e == NULL && (e = jl__cache_put(p->cache, c->agg_id)) == NULL) {
        jl_reply_error(r, JL_CODE_UNAVAILABLE, "out of memory; not decided: try again");
        return JL_ERR_NOMEM;
    } else {
        if (e->mark < p->evicted_mark) /* a new entry may be one evicted before (see submit) */
            e->mark = p->evicted_mark;
        if (c->fresh) {
            p->def->state_init(e->state); /* a zeroed entry: version 0, nothing stored */
        } else {
            e->busy = true;
            *out_ready = false;
        }
    }
    jl__cache_pin(p->cache, e);
    c->entry = e;
    return JL_OK;
}

/* Drop what the cache holds of @p e: the next command reads the aggregate again from its
 * snapshot (or its start). Under p->mu. */
static void forget_entry(jl_producer *p, jl__cache_entry *e)
{
    p->def->state_init(e->state);
    e->version = e->last_seq = e->snap_seq = 0;
    e->stale = true;
}

/* What command @p c's commit says beyond its events (but the sequence it follows). */
static jl_commit_meta meta_of(const jl_producer *p, const cmd *c)
{
    jl_commit_meta m = {
        .aggregate_type = p->def->aggregate_type,
        .aggregate_id = c->agg_id,
        .correlation_id = c->corr,
        .causation_id = c->cause,
        .command_id = c->cmd_id,
        .command_type = c->cd->descriptor->name,
        .first_version = c->first_version,
        .occurred_at_ns = c->occurred_ns,
        .schema_version = p->def->schema_version,
        .event_ids = (const char(*)[JL_UUID_LEN + 1]) c->ids,
    };
    return m;
}

/* New ids for the events of @p c's decision, into c->ids. */
static jl_status new_ids(cmd *c)
{
    if (c->ids_cap < c->d.n_events) {
        void *ids = realloc(c->ids, c->d.n_events * sizeof(*c->ids));
        if (ids == NULL)
            return JL_ERR_NOMEM;
        c->ids = ids;
        c->ids_cap = c->d.n_events;
    }
    for (size_t i = 0; i < c->d.n_events; i++)
        jl_uuid_new(c->ids[i]);
    return JL_OK;
}

/*
 * The events of @p c are stored at @p seq: evolve the entry's state with them, so the cache
 * stays current, and snapshot it when a multiple of snapshot_every was crossed. evolve sees
 * the events a replay decodes from the commit (their ids, time, schema version: an upcaster may
 * branch on them), built from what the commit was encoded from (jl_commit_meta_event) instead
 * of decoding it again (measured: a tenth of the producer's time per command): so a cached
 * state is the one a replay builds. Their text was checked before the append (start_one), as a
 * replay checks it. A state evolve refuses is dropped (the next command reloads it). Under
 * p->mu.
 */
static void advance(jl_producer *p, cmd *c, uint64_t seq)
{
    const jl_decision *d = &c->d;
    jl__cache_entry *e = c->entry;
    jl_commit_meta meta = meta_of(p, c);
    jl_status s = JL_OK;
    size_t i = 0;
    /* In place: a state left halfway by a refusal is dropped below. */
    for (; i < d->n_events; i++) {
        jl_event ev;
        bool oom = false;
        jl_commit_meta_event(&meta, d, i, c->ids[i], &ev);
        ev.stream_seq = seq;
        ProtobufCMessage *pl =
            jl__unpack(d->types[i], d->bytes.data + d->offsets[i], d->lens[i], &oom);
        ev.payload = pl;
        /* What decide packed unpacks, but for want of memory (or a proto2 required field left
         * unset: a replay refuses it too). */
        s = pl == NULL ? (oom ? JL_ERR_NOMEM : JL_ERR_DECODE) : p->def->evolve(e->state, &ev);
        if (pl != NULL)
            protobuf_c_message_free_unpacked(pl, NULL);
        if (s != JL_OK)
            break;
    }
    if (s != JL_OK) {
        /* The cached state no longer follows the stream: the next command reads the aggregate
         * again from its start (catching up from here would skip these events). Names are a
         * descriptor's and ids canonical: nothing to escape. */
        jl_log(JL_LOG_WARN, "cached state dropped after an append",
               "\"subject\":\"%s\",\"seq\":%" PRIu64 ",\"event_type\":\"%s\",\"event_id\":"
               "\"%s\",\"aggregate_version\":%" PRIu64 ",\"error\":\"%s\"",
               c->subject, seq, d->types[i]->name, c->ids[i], c->first_version + i,
               jl_status_str(s));
        forget_entry(p, e);
        return;
    }
    uint64_t before = e->version;
    e->version = c->first_version + d->n_events - 1;
    e->last_seq = seq;
    bool due = snapshots_on(p) && e->version / p->snapshot_every > before / p->snapshot_every;
    if (due && c->client_id && p->commands != NULL) {
        /* Its command-id record is written next: the snapshot waits for its ack. Written now
         * and the record then lost (or the process killed between the two), the snapshot would
         * hide this commit, and its command id, from the next load (see not_remembered). */
        c->snapshot_due = true;
    } else if (due && save_snapshot(p, c->agg_id, e)) {
        e->snap_seq = e->last_seq;
    }
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

bool jl_valid_id(const char *s)
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

/* Field @p field of @p d when it is a singular string (what an aggregate id field must be). */
static const ProtobufCFieldDescriptor *string_field(const ProtobufCMessageDescriptor *d,
                                                    const char *field)
{
    const ProtobufCFieldDescriptor *f = protobuf_c_message_descriptor_get_field_by_name(d, field);
    return f != NULL && f->type == PROTOBUF_C_TYPE_STRING && f->label != PROTOBUF_C_LABEL_REPEATED
               ? f
               : NULL;
}

static const char *field_string(const ProtobufCMessage *msg, const char *field)
{
    const ProtobufCFieldDescriptor *f = string_field(msg->descriptor, field);
    if (f == NULL)
        return NULL;
    return *(const char *const *)(const void *)((const uint8_t *)msg + f->offset);
}

/* ---- command idempotency ----
 * A command sent with a client-chosen id is answered once: its reply is kept in the KV bucket
 * "jl_commands_<stream>" for cfg->command_ttl_s, and a repeat gets that reply again with no
 * second event. Its commit carries Nats-Msg-Id "<service>:<command id>", so JetStream drops a
 * concurrent repeat (another replica, a retry) within its duplicate window; and a producer that
 * loads or catches up an aggregate notices a commit recording the command id, which covers a
 * crash between the append and the KV write. */

static void command_key(char out[40], const char *cmd_id)
{
    /* 128 bits: FNV-1a 64 and a second, differently mixed pass, so two ids a client picks
     * collide only with negligible chance (the record also keeps the id and is checked). */
    uint64_t a = jl__fnv1a64_str(cmd_id), b = 0x9e3779b97f4a7c15ULL;
    for (const unsigned char *q = (const unsigned char *)cmd_id; *q; q++)
        b = (b ^ *q) * JL__FNV64_PRIME + (b >> 29);
    snprintf(out, 40, "c%016" PRIx64 "%016" PRIx64, a, b);
}

/* recall() could not tell (a timeout, no KV leader): not an entry, never destroyed. */
static int lookup_failed_mark;
#define LOOKUP_FAILED ((kvEntry *)(void *)&lookup_failed_mark)

/* The record of client command id @p cmd_id, NULL when there is none, LOOKUP_FAILED when the
 * bucket did not answer. Read before the lock is taken: the round trip would hold up every
 * other command's ack. */
static kvEntry *recall(jl_producer *p, const char *cmd_id)
{
    char key[40];
    kvEntry *e = NULL;
    if (p->lookups == NULL || cmd_id == NULL || !jl_valid_id(cmd_id))
        return NULL;
    command_key(key, cmd_id);
    natsStatus ns = kvStore_Get(&e, p->lookups, key);
    return ns == NATS_OK ? e : ns == NATS_NOT_FOUND ? NULL : LOOKUP_FAILED;
}

/*
 * recall() from the bucket's leader, into *@p out (malloc'd, the caller frees it; NULL: no
 * record) and @p out_len. A lookup is a direct get, which any replica of the bucket may answer,
 * one that has not yet applied a record just stored among them; the leader has applied it.
 * False when it could not tell.
 */
static bool recall_stored(jl_producer *p, const char *cmd_id, void **out, size_t *out_len)
{
    char key[40], stream[160], subject[200];
    natsMsg *m = NULL;
    jsErrCode jerr = 0;
    const char *op = NULL;
    *out = NULL;
    *out_len = 0;
    if (p->lookups == NULL)
        return true; /* no records kept: none to find */
    command_key(key, cmd_id);
    snprintf(stream, sizeof(stream), "KV_%s", kvStore_Bucket(p->lookups));
    snprintf(subject, sizeof(subject), "$KV.%s.%s", kvStore_Bucket(p->lookups), key);
    natsStatus ns = js_GetLastMsg(&m, p->lookup_js, stream, subject, NULL, &jerr);
    if (ns != NATS_OK)
        return jerr == JSNoMessageFoundErr;
    /* A deleted or purged key ("KV-Operation: DEL"/"PURGE") holds no record. */
    if (natsMsgHeader_Get(m, "KV-Operation", &op) != NATS_OK && natsMsg_GetDataLength(m) > 0) {
        *out_len = (size_t)natsMsg_GetDataLength(m);
        *out = malloc(*out_len);
        if (*out != NULL)
            memcpy(*out, natsMsg_GetData(m), *out_len);
    }
    natsMsg_Destroy(m);
    return *out_len == 0 || *out != NULL;
}

static void known_free(kvEntry *k)
{
    if (k != LOOKUP_FAILED)
        kvEntry_Destroy(k);
}

/* True, with @p r an INVALID reply, when the command stored under @p c's command id was of
 * another type (@p type; "" from a commit that does not say), on aggregate @p on: the id was
 * reused, and that command's success is not this one's. */
static bool used_for_another(const cmd *c, const char *type, const char *on, jl_reply *r)
{
    if (type[0] == 0 || strncmp(type, c->cd->descriptor->name, JL_TYPE_NAME_MAX - 1) == 0)
        return false;
    jl_reply_error(r, JL_CODE_INVALID, "command id '%s' was already used for %s on %s", c->cmd_id,
                   type, on);
    return true;
}

/* @p r: "unavailable", memory having run out reading the record of @p c. A record not read is
 * not taken for none: the command may have been carried out already. */
static void record_unread(cmd *c, jl_reply *r)
{
    jl_reply_reset(r);
    snprintf(r->aggregate_id, sizeof(r->aggregate_id), "%s", c->agg_id);
    jl_reply_error(r, JL_CODE_UNAVAILABLE,
                   "out of memory reading the record of command id '%s'; try again", c->cmd_id);
}

/* True when @p c was answered before, by the record @p value (@p len bytes; NULL: none):
 * @p r then holds that reply (or why the id is refused, or that the record could not be read
 * for lack of memory). */
static bool remembered(cmd *c, const void *value, size_t len, jl_reply *r)
{
    bool seen = false, oom = false;
    if (value == NULL)
        return false;
    Jetledger__CommandRecord *rec = (Jetledger__CommandRecord *)jl__unpack(
        &jetledger__command_record__descriptor, value, len, &oom);
    if (oom) {
        record_unread(c, r);
        return true;
    }
    if (rec != NULL && strcmp(rec->command_id, c->cmd_id) == 0) {
        seen = true;
        /* A creation under a generated id repeated: its id is the one the first got (derived
         * from the command id as this one's, or random, from a producer before ids were). */
        if (!c->generated && strcmp(rec->aggregate_id, c->agg_id) != 0) {
            jl_reply_error(r, JL_CODE_INVALID, "command id '%s' was already used for %s on %s",
                           c->cmd_id, rec->command_type, rec->aggregate_id);
        } else if (rec->unsettled && strcmp(rec->aggregate_id, c->agg_id) == 0) {
            /* Its first copy's outcome was never known: read where its commit would be. */
            seen = false;
            /* Two markers (the bucket's and one kept here, or one met on a lookup made again):
             * the later one is where the latest copy would be; the earlier copies were read as
             * not stored before it was written. */
            if (!c->resolve || rec->after_seq > c->resolve_after)
                c->resolve_after = rec->after_seq;
            c->resolve = true;
        } else if (!used_for_another(c, rec->command_type, rec->aggregate_id, r)) {
            jl_status ds = jl_reply_decode(r, rec->reply.data, rec->reply.len);
            seen = ds == JL_OK || ds == JL_ERR_NOMEM;
            r->duplicate = ds == JL_OK; /* unreadable record: handle the command as new */
            if (ds == JL_ERR_NOMEM)
                record_unread(c, r);
        }
    }
    if (rec != NULL)
        jetledger__command_record__free_unpacked(rec, NULL);
    return seen;
}

/* The record of @p c's command id and reply @p r (with @p marker, a marker: see
 * outcome_unknown(); its commit after @p after_seq), into p->kv_value (p->reply_bytes is its
 * scratch: no allocation per command). Under p->mu. */
static jl_status encode_record(jl_producer *p, const cmd *c, const jl_reply *r, bool marker,
                               uint64_t after_seq)
{
    Jetledger__CommandRecord rec = JETLEDGER__COMMAND_RECORD__INIT;
    jl_reply copy = *r;
    copy.duplicate = false;
    jl_buf_reset(&p->kv_value);
    jl_status s = jl_reply_encode(&p->reply_bytes, &copy);
    if (s == JL_OK) {
        rec.command_id = (char *)c->cmd_id;
        rec.command_type = (char *)c->cd->descriptor->name;
        rec.aggregate_id = (char *)c->agg_id;
        rec.reply.data = p->reply_bytes.data;
        rec.reply.len = p->reply_bytes.len;
        rec.unsettled = marker;
        rec.after_seq = after_seq;
        s = jl_buf_pack(&p->kv_value, &rec.base);
    }
    return s;
}

/*
 * The record of stored command @p c's id could not be written in the command's time. It is
 * kept in p->late and put again in the background until it is stored; meanwhile a repeat of the
 * id is answered from there, and this producer writes no snapshot of the aggregate past the
 * commit, so the cached state can stay. A repeat that reaches another replica (or this one
 * after a restart that lost p->late) is told only by a load's look for the id in the
 * aggregate's commits, from a snapshot older than the commit; a replica that already holds the
 * commit in its cache, or wrote a snapshot past it, decides such a repeat again (README,
 * "Sending a command twice"). Under p->mu.
 */
static void not_remembered(jl_producer *p, cmd *c, const char *why)
{
    char id[2 * JL_MAX_ID_LEN + 8]; /* a client's text: escaped */
    jl_log(JL_LOG_WARN, "command id not recorded in time, written again in the background",
           "\"command_id\":\"%s\",\"status\":\"%s\"", jl_log_str(id, sizeof(id), c->cmd_id), why);
    c->snapshot_due = false;
    bool kept = false;
    if (p->late != NULL && c->stored_seq != 0) {
        jl_reply stored;
        jl_reply_init(&stored);
        snprintf(stored.aggregate_id, sizeof(stored.aggregate_id), "%s", c->agg_id);
        stored.aggregate_version = c->stored_version;
        stored.stream_seq = c->stored_seq;
        char key[40];
        command_key(key, c->cmd_id);
        kept = encode_record(p, c, &stored, false, 0) == JL_OK &&
               jl__late_add(p->late, key, c->cmd_id, c->agg_id, c->stored_seq, p->kv_value.data,
                            p->kv_value.len);
        jl_reply_cleanup(&stored);
    }
    /* Not kept (too many wait, no memory): the cached state holds the commit while nothing
     * records its id, and a repeat past the duplicate window would be decided again on it.
     * Forgotten, the aggregate is read again for the next command, and the read finds the
     * commit by its id (also when this was a repeat whose commit a read just found). */
    if (!kept && c->entry != NULL)
        forget_entry(p, c->entry);
}

/*
 * Command @p c's append ended with its outcome unknown ("may or may not be stored"), or stored
 * but unread: its entry is stale (the next command reads whether it was), and @p after_seq is
 * where the subject was when it was sent (a stored copy is the first commit after it; every
 * earlier copy was read as not stored, or expected the same). Nothing records its id: a repeat past
 * JetStream's duplicate window, after a later command of the aggregate (or a snapshot) folded
 * a stored copy in, would be decided again. A marker is recorded instead, put in the
 * background (p->late) and never over a record: a repeat that finds it reads the subject's
 * first commit after after_seq, where a stored copy must be (its append expected that
 * sequence), and answers from it, or decides the command if another's is there or none
 * (start_one, load_read). Under p->mu.
 */
static void outcome_unknown_after(jl_producer *p, cmd *c, uint64_t after_seq)
{
    c->entry->stale = true;
    if (!c->client_id || p->late == NULL || p->commands == NULL)
        return;
    jl_reply told; /* what a producer that does not know markers answers a repeat */
    jl_reply_init(&told);
    snprintf(told.aggregate_id, sizeof(told.aggregate_id), "%s", c->agg_id);
    jl_reply_error(&told, JL_CODE_UNAVAILABLE,
                   "command id '%s' was sent before and its outcome is not known yet; try again",
                   c->cmd_id);
    char key[40];
    command_key(key, c->cmd_id);
    if (encode_record(p, c, &told, true, after_seq) == JL_OK)
        jl__late_add_marker(p->late, key, c->cmd_id, c->agg_id, after_seq + 1, p->kv_value.data,
                            p->kv_value.len);
    jl_reply_cleanup(&told);
}

/* As outcome_unknown_after(), where the entry's last sequence is the one its append expected. */
static void outcome_unknown(jl_producer *p, cmd *c)
{
    outcome_unknown_after(p, c, c->entry->last_seq);
}

static bool record_async(jl_producer *p, cmd *c, const jl_reply *r);

/*
 * @p c is stored already, at @p seq: the reply of its first copy, as a repeat. With a client
 * command id its record is written first, asynchronously (true: the record's ack sends the
 * reply; a synchronous write here, under the lock, could wait out a leader election with every
 * other command); false: reply with @p r now.
 */
static bool duplicate_reply(jl_producer *p, cmd *c, uint64_t seq, uint64_t version, jl_reply *r)
{
    jl_reply_reset(r);
    snprintf(r->aggregate_id, sizeof(r->aggregate_id), "%s", c->agg_id);
    r->aggregate_version = version;
    r->stream_seq = seq;
    /* After a timed-out attempt of ours, what is found may be that attempt: then it is the
     * only copy, not the repeat of an earlier command. */
    r->duplicate = !c->timed_out;
    /* Never appended (its commit was found by a read): the record's resends need a deadline
     * all the same, the one an append would have had. */
    if (c->deadline_ns == 0)
        c->deadline_ns = c->received_ns + p->append_timeout_ms * 1000000LL;
    if (!c->client_id || p->commands == NULL)
        return false;
    if (p->closing) {
        /* No record's ack is waited for now (a read finished by the close's last loads): the
         * record is kept for jl__late_close() to put, which also keeps the close's snapshot of
         * the aggregate from passing the commit until then. Replied to without it, a repeat
         * after the restart would find neither the record nor, past that snapshot, the commit. */
        c->stored_version = version;
        c->stored_seq = seq;
        c->stored_duplicate = r->duplicate;
        not_remembered(p, c, "closing");
        return false;
    }
    return record_async(p, c, r);
}

/* Version of the last event of the commit stored at @p seq (with @p first_on, of the first
 * commit on that subject from @p seq on; its sequence into @p out_seq) (0 when it cannot be
 * read; with @p out_ns, why: NATS_NOT_FOUND for no such commit, NATS_OK for one that cannot be
 * decoded), its aggregate id into @p out_id (empty when it cannot be read), the command type it
 * records into @p out_type and, with @p out_cmd_id (JL_MAX_ID_LEN + 1 bytes), its command id,
 * and with @p out_time, the event's occurred-at. */
static uint64_t version_at(jl_producer *p, uint64_t seq, const char *first_on, uint64_t *out_seq,
                           char out_id[JL_UUID_LEN + 1], char out_type[JL_TYPE_NAME_MAX],
                           char *out_cmd_id, int64_t *out_time, natsStatus *out_ns)
{
    natsMsg *m = NULL;
    jl_commit *cm = NULL;
    jsDirectGetMsgOptions o;
    char why[128];
    uint64_t v = 0;
    out_id[0] = 0;
    out_type[0] = 0;
    jsDirectGetMsgOptions_Init(&o);
    o.Sequence = seq;
    o.NextBySubject = first_on;
    natsStatus ns = js_DirectGetMsg(&m, jl_conn_js(p->conn), p->def->stream, NULL, &o);
    if (out_ns != NULL)
        *out_ns = ns;
    if (ns != NATS_OK)
        return 0;
    seq = natsMsg_GetSequence(m);
    if (out_seq != NULL)
        *out_seq = seq;
    if (jl_commit_decode(&cm, natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m), seq, why,
                         sizeof(why)) == JL_OK) {
        jl_event ev;
        if (jl_commit_event(cm, jl_commit_count(cm) - 1, &p->def->events, &ev, why, sizeof(why)) ==
                JL_OK ||
            ev.aggregate_version != 0) {
            v = ev.aggregate_version;
            if (out_time != NULL)
                *out_time = ev.occurred_at_ns;
            snprintf(out_id, JL_UUID_LEN + 1, "%s", ev.aggregate_id ? ev.aggregate_id : "");
            snprintf(out_type, JL_TYPE_NAME_MAX, "%s", jl_commit_command_type(cm));
            if (out_cmd_id != NULL)
                snprintf(out_cmd_id, JL_MAX_ID_LEN + 1, "%s", jl_commit_command_id(cm));
        }
        jl_commit_free(cm);
    }
    natsMsg_Destroy(m);
    return v;
}

/* ---- the command pipeline ----
 *
 * A command is validated, its aggregate found in the cache (or read by a worker of p->loads),
 * decided, and its events published asynchronously with the expected last subject sequence; the
 * reply is sent from the ack. Commands for one aggregate go one at a time (the others wait on
 * its entry's queue), so a producer never races itself; commands for different aggregates are
 * in flight together, up to max_inflight (beyond that they wait in the backlog). Everything but
 * those reads runs under p->mu, which is never held while waiting for the server except to catch
 * up an entry left stale: publishes never stall because fewer than the library's MaxPending
 * messages are ever in flight.
 */

static void cmd_destroy(cmd *c)
{
    jl_decision_cleanup(&c->d);
    free(c->ids);
    free(c);
}

static cmd *cmd_new(jl_producer *p)
{
    cmd *c = p->free_cmds;
    if (c != NULL) {
        p->free_cmds = c->next;
        p->n_free--;
        jl_buf keep = c->d.bytes;
        char(*ids)[JL_UUID_LEN + 1] = c->ids;
        size_t ids_cap = c->ids_cap;
        memset(c, 0, sizeof(*c));
        c->d.bytes = keep;
        c->ids = ids;
        c->ids_cap = ids_cap;
        jl_decision_reset(&c->d);
    } else if ((c = calloc(1, sizeof(*c))) != NULL) {
        jl_decision_init(&c->d);
    }
    if (c != NULL) {
        c->received_ns = mono_ns();
        if (p->n_cmds++ == 0)
            atomic_store(&p->progress_ns, c->received_ns);
    }
    return c;
}

static void cmd_free(jl_producer *p, cmd *c)
{
    if (c->msg != NULL)
        protobuf_c_message_free_unpacked(c->msg, NULL);
    natsMsg_Destroy(c->req);
    c->msg = NULL;
    c->req = NULL;
    p->n_cmds--;
    p->held_bytes -= c->held;
    c->held = 0;
    atomic_store(&p->progress_ns, mono_ns());
    /* Kept for the next command, as many as run at once in steady state: a burst up to
     * max_cmds is given back, and so is a decision buffer grown past the
     * usual. */
    if (p->n_free >= JL_FREE_CMDS) {
        cmd_destroy(c);
        return;
    }
    if (c->d.bytes.alloc > JL_FREE_CMD_BYTES)
        jl_buf_cleanup(&c->d.bytes); /* keeps its cap */
    c->next = p->free_cmds;
    p->free_cmds = c;
    p->n_free++;
}

/*
 * Whether the next append or reply belongs to a burst. Every message on the main connection is
 * written at once, a system call each, for the server too; under load that is most of the
 * cost of a command (measured: 18,000 commands/s so, 26,000-30,000 with batched writes). The
 * batching connection waits up to a millisecond for company, which only a command that would
 * queue anyway can afford. Under p->mu.
 */
static bool bursting(jl_producer *p)
{
    int waiting = 0;
    if (p->bulk == NULL)
        return false;
    if (p->n_inflight >= JL_BURST_AT)
        return true;
    return p->sub != NULL && natsSubscription_GetPending(p->sub, &waiting, NULL) == NATS_OK &&
           waiting >= JL_BURST_AT;
}

/*
 * Publish *@p m asynchronously on @p js; its ack comes to on_ack, for command @p c (registered
 * in flight: the message is its key) or, when @p c is NULL, for no one (a snapshot). The one way
 * anything is published with an ack to wait for. On failure nothing stays registered and *@p m
 * is still the caller's. Under p->mu.
 */
static natsStatus publish_tracked(jl_producer *p, jsCtx *js, natsMsg **m, jsPubOptions *po, cmd *c)
{
    natsMsg *key = *m;
    if (c != NULL) {
        if (jl__ptrmap_put(&p->inflight, key, c) != JL_OK)
            return NATS_NO_MEMORY;
        p->n_inflight++;
        c->sent_ns = mono_ns();
    }
    natsStatus ns = js_PublishMsgAsync(js, m, po);
    if (ns != NATS_OK && c != NULL) {
        jl__ptrmap_take(&p->inflight, key);
        p->n_inflight--;
    }
    return ns;
}

/*
 * Put p->kv_value under @p key of bucket @p kv without waiting for it: a synchronous put would
 * hold every other command up for a round trip. Its ack is for @p c (see publish_tracked).
 * Under p->mu.
 */
static natsStatus kv_put_async(jl_producer *p, kvStore *kv, const char *key, cmd *c)
{
    char subject[200];
    natsMsg *m = NULL;
    snprintf(subject, sizeof(subject), "$KV.%s.%s", kvStore_Bucket(kv), key);
    natsStatus ns =
        natsMsg_Create(&m, subject, NULL, (const char *)p->kv_value.data, (int)p->kv_value.len);
    if (ns != NATS_OK)
        return ns;
    jsPubOptions po;
    jsPubOptions_Init(&po);
    /* A command's record: not much past its deadline, where its reply waits for it; yet not
     * so short that a record stored in time is given up on (its command then forgotten, as
     * one whose record was lost) just as the server is slow. */
    int64_t wait = c != NULL ? left_ms(c->deadline_ns, JL_APPEND_ATTEMPT_MS) : JL_APPEND_ATTEMPT_MS;
    po.MaxWait = wait > JL_RECORD_MIN_WAIT_MS ? wait : JL_RECORD_MIN_WAIT_MS;
    ns = publish_tracked(p, bursting(p) ? p->bulk_js : p->js, &m, &po, c);
    if (ns != NATS_OK)
        natsMsg_Destroy(m);
    return ns;
}

/* In on_ack, under p->mu: send *@p msg, an append or a record of @p c that timed out or found
 * no responders (@p err), again, as built (a second copy of an append is stored once, by its
 * Nats-Msg-Id; of a record, it writes the same value). NATS_OK: it is in flight again, and
 * *@p msg now the library's. Closing past its wait, the context may be going: no resend then. */
static natsStatus resend(jl_producer *p, jsCtx *js, natsMsg **msg, cmd *c, natsStatus err)
{
    /* 20 ms, doubled for each "in process" answer after the first, at most the cap. */
    int doublings = c->in_process > 1 ? c->in_process - 1 : 0;
    int64_t pause = doublings >= 8 ? JL_IN_PROCESS_PAUSE_MAX_MS
                                   : (int64_t)JL_NO_RESPONDERS_PAUSE_MS << doublings;
    if (pause > JL_IN_PROCESS_PAUSE_MAX_MS)
        pause = JL_IN_PROCESS_PAUSE_MAX_MS;
    int64_t pause_ms = (c->sent_ns + pause * 1000000LL - mono_ns()) / 1000000;
    if (err == NATS_NO_RESPONDERS && pause_ms > 0) {
        /* No leader yet: give it a moment since this message was sent, without the lock
         * (every command would wait); counted in flight meanwhile, so a close waits for it.
         * A burst refused at once waits about one pause in all, not one per message: this
         * thread handles every ack, and the later ones have waited while it slept. */
        p->n_inflight++;
        pthread_mutex_unlock(&p->mu);
        nats_Sleep(pause_ms);
        pthread_mutex_lock(&p->mu);
        p->n_inflight--;
    }
    jl_reply_reset(&p->reply); /* the shared reply was others' meanwhile */
    snprintf(p->reply.aggregate_id, sizeof(p->reply.aggregate_id), "%s", c->agg_id);
    if (!c->recording && err == NATS_TIMEOUT)
        c->timed_out = true;
    if (p->closing)
        return NATS_CONNECTION_CLOSED;
    if (mono_ns() >= c->deadline_ns)
        return NATS_TIMEOUT; /* the pause took the rest of its time */
    jsPubOptions again;
    jsPubOptions_Init(&again);
    again.MaxWait = left_ms(c->deadline_ns, JL_APPEND_ATTEMPT_MS); /* none past the deadline */
    return publish_tracked(p, js, msg, &again, c);
}

/* Hand @p r to a jl_producer_handle() caller waiting for it (its result buffer is kept). */
static void answer_sync(sync_call *s, const jl_reply *r)
{
    pthread_mutex_lock(&s->mu);
    jl_reply_reset(s->out);
    jl_buf keep = s->out->result;
    *s->out = *r;
    s->out->result = keep;
    s->done = true;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

/* Send the reply (to the requester or the waiting caller), count it, free the command. */
static void finish(jl_producer *p, cmd *c, jl_reply *r)
{
    p->stats.commands++;
    /* A creation refused under the id generated for it: that aggregate does not exist, and a
     * client taking the reply's id would go looking for it. */
    if (c->generated && (r->code == JL_CODE_INVALID || r->code == JL_CODE_RULE_VIOLATION))
        r->aggregate_id[0] = 0;
    if (r->code == JL_CODE_OK) {
        p->stats.accepted++;
        jl_log(JL_LOG_DEBUG, "command accepted",
               "\"command\":\"%s\",\"aggregate_id\":\"%s\",\"version\":%" PRIu64
               ",\"seq\":%" PRIu64,
               c->name, r->aggregate_id, r->aggregate_version, r->stream_seq);
    } else {
        char esc[600];
        jl_log(r->code == JL_CODE_INTERNAL || r->code == JL_CODE_UNAVAILABLE ? JL_LOG_ERROR
                                                                             : JL_LOG_INFO,
               "command rejected", "\"command\":\"%s\",\"code\":\"%s\",\"error\":\"%s\"", c->name,
               jl_code_str(r->code), jl_log_str(esc, sizeof(esc), r->message));
    }
    if (c->sync != NULL) {
        answer_sync(c->sync, r);
    } else if (c->req != NULL) {
        /* Not sent: the client times out; a retry with the same command id gets this reply. */
        (void)jl_reply_send(jl_conn_nats(bursting(p) ? p->bulk : p->conn), natsMsg_GetReply(c->req),
                            r, &p->reply_bytes);
    }
    cmd_free(p, c);
}

/* @p c is stored (@p r is its reply): answer the commands queued on its aggregate that repeat
 * it (a client's retries of the same command id, arrived while it was in flight) with that
 * reply too, then @p c. Deciding a repeat again could reject what was accepted (PlaceOrder on
 * the order it just placed). */
static void finish_stored(jl_producer *p, cmd *c, jl_reply *r)
{
    jl__cache_entry *e = c->entry;
    cmd *prev = NULL, *next = NULL;
    bool duplicate = r->duplicate;
    for (cmd *q = c->client_id ? e->qhead : NULL; q != NULL; q = next) {
        next = q->next;
        if (!q->client_id || q->cd != c->cd || strcmp(q->cmd_id, c->cmd_id) != 0) {
            prev = q;
            continue;
        }
        if (prev != NULL)
            prev->next = next;
        else
            e->qhead = next;
        if (e->qtail == q)
            e->qtail = prev;
        r->duplicate = true;
        finish(p, q, r);
        jl__cache_unpin(p->cache, e); /* its pin; @p c still holds one */
    }
    r->duplicate = duplicate;
    finish(p, c, r);
}

static bool start_one(jl_producer *p, cmd *c);
static void defer_load(jl_producer *p, cmd *c);

/* The entry's append is over: unpin it and start the next command waiting for it, and the one
 * after while they end at once (rejected, say). A loop, not a recursion through start(): a
 * queue of thousands of commands that each end at once would overflow the stack. */
static void release_entry(jl_producer *p, jl__cache_entry *e)
{
    for (;;) {
        e->busy = false;
        cmd *next = e->qhead;
        if (next != NULL) {
            e->qhead = next->next;
            if (e->qhead == NULL)
                e->qtail = NULL;
            next->next = NULL;
        }
        jl__cache_unpin(p->cache, e); /* the next command holds its own pin */
        if (next == NULL || !start_one(p, next))
            return;
    }
}

/* A command that has its aggregate (pinned, not busy): decide and publish, or answer. True when
 * it was answered without an append: its entry is then to be released (release_entry()). */
static bool start_one(jl_producer *p, cmd *c)
{
    const jl_service_def *def = p->def;
    jl__cache_entry *e = c->entry;
    jl_reply *r = &p->reply;
    jl_reply_reset(r);
    snprintf(r->aggregate_id, sizeof(r->aggregate_id), "%s", c->agg_id);

    if (p->closing) {
        /* Past the close's wait: an append now would outlive the contexts that track it. */
        jl_reply_error(r, JL_CODE_UNAVAILABLE, "the producer is shutting down; try again");
        finish(p, c, r);
        return true;
    }
    if (c->resolve)
        forget_entry(p, e); /* its id's marker: read, and the commit looked for where it would be */
    if (e->stale) {
        /* Read it again on a worker, not here under the lock: a read may wait out a stream
         * leader election, and every other aggregate's commands with it. From its last
         * sequence when the state is still that of it (an append of unknown outcome), else
         * from its snapshot (a failed read or evolve left it reset). */
        e->busy = true;
        c->catching_up = e->last_seq != 0;
        defer_load(p, c);
        return false;
    }
    if (p->n_inflight >= p->max_inflight) {
        /* Keep the entry busy so later commands of this aggregate queue behind this one. */
        e->busy = true;
        c->next = NULL;
        if (p->backlog_tail != NULL)
            p->backlog_tail->next = c;
        else
            p->backlog_head = c;
        p->backlog_tail = c;
        return false;
    }
    jl_command in = {
        .msg = c->msg, .aggregate_id = c->agg_id, .command_id = c->cmd_id, .now_ns = now_ns()};
    int64_t mono = mono_ns();
    /* An append needs a moment: one started with a few ms left would almost surely end "may or
     * may not be stored", the worst answer. Under JL_APPEND_MIN_LEFT_MS left it is not run. */
    if (c->deadline_ns == 0 &&
        mono - c->received_ns > (p->append_timeout_ms - JL_APPEND_MIN_LEFT_MS) * 1000000LL) {
        /* Waited out its deadline for its turn (a hot aggregate, a full backlog, a slow read):
         * its requester has given up, and one without a command id may have sent it again.
         * Run now, it could take effect twice: it is not run. */
        jl_reply_error(r, JL_CODE_UNAVAILABLE,
                       "the command waited %" PRId64 " ms for its turn, past its deadline of "
                       "%" PRId64 " ms, and was not run; try again",
                       (mono - c->received_ns) / 1000000, p->append_timeout_ms);
        p->stats.expired++;
        finish(p, c, r);
        return true;
    }
    if (c->deadline_ns != 0 && mono >= c->deadline_ns - JL_APPEND_MIN_LEFT_MS * 1000000LL) {
        /* Lost a race, and the read of what the other writer wrote took it to (or within
         * JL_APPEND_MIN_LEFT_MS of) its deadline: deciding it again now could outlive its
         * requester as above, or time out while stored. None of its appends was
         * stored, unless one timed out: that copy may still be (a clustered leader that was
         * slow to store it refuses its resend as a conflict while the copy is in process). */
        jl_reply_error(r, JL_CODE_UNAVAILABLE,
                       "%s %s was changed concurrently and the command's deadline of %" PRId64
                       " ms was reached before it could be decided again; %s; try again",
                       p->def->aggregate_type, c->agg_id, p->append_timeout_ms,
                       c->timed_out ? "an attempt timed out, and its events may or may not be "
                                      "stored"
                                    : "it was not stored");
        if (c->timed_out)
            outcome_unknown(p, c);
        p->stats.expired++;
        finish(p, c, r);
        return true;
    }
    jl_decision_reset(&c->d);
    jl__fault("command.decide");
    def->decide(e->state, &in, &c->d);
    r->aggregate_version = e->version;
    r->stream_seq = e->last_seq;
    if ((jl_decision_rejected(&c->d) || c->d.n_events == 0) && !c->fresh && e != p->just_read) {
        /* An append is checked by its expected last sequence; a refusal or a no-op appends
         * nothing, so nothing checks the state it was decided on. This producer's cache lacks
         * what another replica stored since (a queue group spreads an aggregate's commands):
         * refused on it, a step of a workflow would be lost for good. Ask the stream's leader
         * for the aggregate's last sequence, on a worker, read what is newer, decide again. */
        e->busy = true;
        c->verifying = c->catching_up = true;
        c->verify_from = e->last_seq;
        defer_load(p, c);
        return false;
    }
    if (jl_decision_rejected(&c->d) || c->d.n_events == 0) {
        if (jl_decision_rejected(&c->d))
            jl_reply_error(r, c->d.code, "%s", c->d.message);
        finish(p, c, r);
        return true;
    }
    for (size_t i = 0; i < c->d.n_events; i++) {
        const ProtobufCMessageDescriptor *listed = jl_types_find(&def->events, c->d.types[i]->name);
        if (listed == NULL) {
            /* Stored, it could not be replayed by this very service (which would take it for
             * a newer version's): a mistake in the service, refused before it is stored. */
            jl_reply_error(r, JL_CODE_INTERNAL,
                           "decide emitted %s, which is not in the events of service %s",
                           c->d.types[i]->name, def->name);
            jl_log(JL_LOG_ERROR, "decide emitted an event type the service does not list",
                   "\"event_type\":\"%s\"", c->d.types[i]->name);
            finish(p, c, r);
            return true;
        }
        /* Replays decode it with the service's own descriptor: so do the check and advance()
         * (one of the same name from another copy of the generated code may differ). */
        c->d.types[i] = listed;
        const char *field = NULL;
        if (!jl_pb_strings_valid(c->d.types[i], c->d.bytes.data + c->d.offsets[i], c->d.lens[i],
                                 &field)) {
            /* Stored, every projector would set it aside (jl_commit_event refuses it) and no
             * replay of the aggregate would pass it: refused before it is stored. */
            jl_reply_error(r, JL_CODE_INTERNAL,
                           "decide emitted %s with field %s holding a NUL byte or text that is "
                           "not UTF-8; nothing was stored",
                           c->d.types[i]->name, field != NULL ? field : "?");
            jl_log(JL_LOG_ERROR, "decide emitted text that is not UTF-8",
                   "\"event_type\":\"%s\",\"field\":\"%s\"", c->d.types[i]->name,
                   field != NULL ? field : "?");
            finish(p, c, r);
            return true;
        }
    }
    c->first_version = e->version + 1;
    c->occurred_ns = in.now_ns;
    char first_id[JL_UUID_LEN + 1], vbuf[24], types[512];
    natsMsg *out = NULL;
    jl_status s = new_ids(c);
    jl_commit_meta meta = meta_of(p, c);
    meta.prev_seq = e->last_seq; /* as the append's expected last subject sequence */
    if (s == JL_OK)
        s = jl_commit_encode(&p->commit, first_id, &meta, &c->d);
    if (s != JL_OK) {
        /* Too large is the command's; out of memory passes (not decided: sent again). */
        jl_reply_error(r,
                       s == JL_ERR_TOO_LARGE ? JL_CODE_INVALID
                       : s == JL_ERR_NOMEM   ? JL_CODE_UNAVAILABLE
                                             : JL_CODE_INTERNAL,
                       "cannot encode the events: %s", jl_status_str(s));
        finish(p, c, r);
        return true;
    }
    snprintf(vbuf, sizeof(vbuf), "%" PRIu64, e->version + c->d.n_events);
    size_t o = 0;
    types[0] = 0;
    for (size_t i = 0; i < c->d.n_events && o < sizeof(types); i++)
        o += (size_t)snprintf(types + o, sizeof(types) - o, "%s%s", i ? "," : "",
                              c->d.types[i]->short_name);
    natsStatus ns =
        natsMsg_Create(&out, c->subject, NULL, (const char *)p->commit.data, (int)p->commit.len);
    /* Two headers only, for operators reading a stream without decoding it: every header
     * costs the library three allocations per message (measured: headers and malloc were a
     * fifth of a producer's time). Type and id are in the subject, the rest in the body. */
    if (ns == NATS_OK)
        ns = natsMsgHeader_Set(out, "Jl-Aggregate-Version", vbuf);
    if (ns == NATS_OK)
        ns = natsMsgHeader_Set(out, "Jl-Event-Types", types);
    jsPubOptions po;
    jsPubOptions_Init(&po);
    char msg_id[JL_MAX_ID_LEN + 72];
    if (c->client_id)
        snprintf(msg_id, sizeof(msg_id), "%s:%s", def->name, c->cmd_id);
    po.MsgId = c->client_id ? msg_id : first_id;
    /* The deadline counts from the command's arrival, as its requester's wait does: no
     * attempt outlives it (its turn was checked against it, above). A short wait per attempt:
     * an append lost with a dying server is sent again (same Nats-Msg-Id) well before it. */
    if (c->deadline_ns == 0)
        c->deadline_ns = c->received_ns + p->append_timeout_ms * 1000000LL;
    po.MaxWait = left_ms(c->deadline_ns, JL_APPEND_ATTEMPT_MS);
    if (e->last_seq == 0)
        po.ExpectNoMessage = true; /* ExpectLastSubjectSeq = 0 would mean "no check" */
    else
        po.ExpectLastSubjectSeq = e->last_seq;
    e->busy = true;
    jl_conn *via = p->conn;
    if (ns == NATS_OK) {
        bool burst = bursting(p);
        p->stats.burst_appends += burst;
        via = burst ? p->bulk : p->conn;
        ns = publish_tracked(p, burst ? p->bulk_js : p->js, &out, &po, c);
    }
    if (ns == NATS_MAX_PAYLOAD) {
        /* Never sent, and never will be: the server's max_payload is below the commit. */
        natsMsg_Destroy(out);
        jl_reply_error(r, JL_CODE_INVALID,
                       "the command's events (%zu bytes) exceed the server's max_payload "
                       "(%" PRId64 " bytes) and were not stored",
                       p->commit.len, natsConnection_GetMaxPayload(jl_conn_nats(via)));
        finish(p, c, r);
        return true;
    }
    if (ns != NATS_OK) {
        natsMsg_Destroy(out);
        jl_reply_error(r, JL_CODE_UNAVAILABLE, "cannot publish the events: %s",
                       natsStatus_GetText(ns));
        finish(p, c, r);
        return true;
    }
    return false;
}

/* start_one(), releasing the entry when @p c ended at once. */
static void start(jl_producer *p, cmd *c)
{
    jl__cache_entry *e = c->entry;
    if (start_one(p, c))
        release_entry(p, e);
}

/* Start backlogged commands while in-flight slots are free. */
static void drain_backlog(jl_producer *p)
{
    while (p->backlog_head != NULL && p->n_inflight < p->max_inflight) {
        cmd *c = p->backlog_head;
        p->backlog_head = c->next;
        if (p->backlog_head == NULL)
            p->backlog_tail = NULL;
        c->next = NULL;
        start(p, c);
    }
}

/*
 * @p c is stored with reply @p r: write the record of its client command id asynchronously;
 * its ack (on_ack) sends the reply. A synchronous write here would hold every other command up
 * for a round trip. The aggregate stays busy meanwhile, so a repeat arriving now queues behind
 * @p c and gets its reply. False when the record could not be sent: reply at once then (a
 * repeat still finds the commit by its Nats-Msg-Id or in the aggregate's history).
 */
static bool record_async(jl_producer *p, cmd *c, const jl_reply *r)
{
    char key[40];
    c->stored_version = r->aggregate_version;
    c->stored_seq = r->stream_seq;
    c->stored_duplicate = r->duplicate;
    jl_status s = encode_record(p, c, r, false, 0);
    if (s != JL_OK) {
        not_remembered(p, c, jl_status_str(s));
        return false;
    }
    command_key(key, c->cmd_id);
    c->recording = true;
    natsStatus ns = kv_put_async(p, p->commands, key, c);
    if (ns != NATS_OK) {
        c->recording = false;
        not_remembered(p, c, natsStatus_GetText(ns));
        return false;
    }
    return true;
}

/* Queue @p c for p->loads, under p->mu; unlock_and_load() hands it over once the lock is let
 * go (a push may wait for room, and the workers' load_done takes the lock). Counted in
 * n_loading from now, so a close waits for it. */
static void defer_load(jl_producer *p, cmd *c)
{
    p->n_loading++;
    c->next = NULL;
    if (p->to_load_tail != NULL)
        p->to_load_tail->next = c;
    else
        p->to_load_head = c;
    p->to_load_tail = c;
}

/* Release p->mu, then push what defer_load() queued meanwhile. Every path that may start a
 * command (start_one) leaves the lock this way. */
static void unlock_and_load(jl_producer *p)
{
    cmd *c = p->to_load_head;
    p->to_load_head = p->to_load_tail = NULL;
    pthread_mutex_unlock(&p->mu);
    while (c != NULL) {
        cmd *next = c->next;
        c->next = NULL;
        jl__ordered_push(p->loads, c, 0, true);
        c = next;
    }
}

/*
 * Whether the stream lost the commits of @p subject that @p rc read (a snapshot, the cache):
 * its leader has the subject at @p head, before rc->last_seq, and the stream still holds that
 * sequence or ends before it. (Aged out by max-age, they are not lost: the snapshot or the
 * cache is then all that is left of them, and stays.) If so, the aggregate is replayed.
 */
static jl_status replay_if_lost(jl_producer *p, const char *subject, replay_ctx *rc, uint64_t head)
{
    jl_store_info info;
    if (head >= rc->last_seq)
        return JL_OK;
    jl_status s = jl_store_info_get(p->store, &info, rc->err, sizeof(rc->err));
    if (s == JL_OK && (info.last_seq < rc->last_seq || info.first_seq <= rc->last_seq))
        s = replay_again(p, subject, rc, "the stream's leader has it at an older sequence");
    else if (s == JL_OK && head == 0 && !info.drops_old)
        /* Nothing ages out of this stream: its commits were deleted by hand (a purge), and
         * with them the aggregate, which the snapshot or the cache must not keep alive. */
        s = replay_again(p, subject, rc, "its events were removed from the stream (a purge)");
    else if (s == JL_OK && head == 0) {
        /* All its commits aged out (--max-age): what the snapshot or the cache holds cannot be
         * checked against the stream, which no longer says what the last commit was (a later
         * one may have aged out too). Written on, the history could fork: refused instead. */
        snprintf(rc->err, sizeof(rc->err),
                 "its events aged out of the stream (--max-age) after sequence %" PRIu64
                 ": its state can no longer be checked against the stream, so no command is "
                 "taken on it",
                 rc->last_seq);
        s = JL_ERR_INTERNAL;
    }
    return s;
}

/*
 * For load_read(), a refusal's check: the aggregate's last sequence from the stream's leader
 * (older than rc's: the stream lost what rc holds, see replay_if_lost), then what is newer than
 * rc's. A direct get may come from a replica that lags the leader by a moment: read again
 * briefly, then give up ("unavailable": the command was not decided).
 */
static jl_status verify_read(jl_producer *p, cmd *c, replay_ctx *rc)
{
    uint64_t head = 0;
    jl_status s = jl_store_subject_head(p->store, c->subject, &head, rc->err, sizeof(rc->err));
    if (s == JL_OK)
        s = replay_if_lost(p, c->subject, rc, head);
    for (int i = 0; s == JL_OK && rc->last_seq < head; i++) {
        if (i == VERIFY_READS) {
            snprintf(rc->err, sizeof(rc->err),
                     "the stream's leader has this aggregate at sequence %" PRIu64
                     ", the replica read only at %" PRIu64,
                     head, rc->last_seq);
            return JL_ERR_UNAVAILABLE;
        }
        if (i > 0)
            nats_Sleep(10);
        s = read_newer_commits(p, c->subject, rc);
    }
    return s;
}

/* Past the close's time, reads for requests and commands still queued are not made (the
 * command-id store or the stream not answering, each would wait out its timeout): they are
 * answered unavailable, to be sent again. */
static bool past_close(jl_producer *p)
{
    int64_t by = atomic_load(&p->close_by_ms);
    return by != 0 && jl__mono_ms() > by;
}

/*
 * Where command @p c's commit must be if it is stored, which the read may not have shown (a
 * snapshot had folded it in): the first commit on its aggregate's subject from @p from_seq on.
 * A creation under an id derived from its command id (from 1: the id is the command id's
 * alone, and its first commit that command's, unless it aged out of the stream), or a command
 * whose record is a marker (outcome_unknown). Found, it is noted as the watch's: a repeat,
 * answered as one. JL_ERR_UNAVAILABLE (why in rc->err) when that commit cannot be read: then
 * whether the command is stored is not known, and it must not be decided.
 */
static jl_status find_own_commit(jl_producer *p, const cmd *c, replay_ctx *rc, uint64_t from_seq)
{
    char id[JL_UUID_LEN + 1], type[JL_TYPE_NAME_MAX], cmd_id[JL_MAX_ID_LEN + 1] = "";
    uint64_t seq = 0;
    natsStatus ns = NATS_OK;
    uint64_t v = version_at(p, from_seq, c->subject, &seq, id, type, cmd_id, NULL, &ns);
    /* Not found where the read met a commit: a replica behind the read answered the get (with
     * one replica, the commits were removed since, and the answer stands; unless the stream
     * has been given more since open, as a rolling update raising its replicas does: asked). */
    if (ns == NATS_NOT_FOUND && rc->last_seq < from_seq)
        return JL_OK; /* no commit there: not stored */
    if (ns == NATS_NOT_FOUND && atomic_load(&p->replicas) <= 1) {
        jl_store_info info;
        char err[256];
        /* Not known: "cannot read", below. */
        if (jl_store_info_get(p->store, &info, err, sizeof(err)) == JL_OK) {
            atomic_store(&p->replicas, info.replicas);
            if (info.replicas <= 1)
                return JL_OK; /* removed since: not stored */
        }
    }
    if (v == 0) {
        char why[96];
        snprintf(why, sizeof(why), "none found, though the aggregate's read reached %" PRIu64,
                 rc->last_seq);
        snprintf(rc->err, sizeof(rc->err),
                 "cannot read where the commit of command id '%s' would be (from sequence "
                 "%" PRIu64 "): %s",
                 c->cmd_id, from_seq,
                 ns == NATS_OK          ? "it cannot be decoded"
                 : ns == NATS_NOT_FOUND ? why
                                        : natsStatus_GetText(ns));
        return JL_ERR_UNAVAILABLE;
    }
    if (strcmp(cmd_id, c->cmd_id) == 0 && strcmp(id, c->agg_id) == 0) {
        rc->watch_seq = seq;
        rc->watch_version = v;
        snprintf(rc->watch_type, sizeof(rc->watch_type), "%s", type);
    }
    return JL_OK;
}

/*
 * A worker of p->loads: read command @p item's aggregate into its entry's state, without the
 * lock: its snapshot and the commits after it, or when catching up after a lost race the
 * commits after the entry's. The entry is pinned and busy meanwhile, which keeps everyone else
 * off it (eviction, the flush at close, the aggregate's other commands).
 */
static void *load_read(void *ctx, void *item)
{
    jl_producer *p = ctx;
    cmd *c = item;
    jl__cache_entry *e = c->entry;
    replay_ctx *rc = &c->load;
    jl__fault("command.load"); /* on a reading thread, the lock not held */
    if (c->dup_seq != 0)       /* and the entry, stale, is caught up below */
        c->dup_version =
            version_at(p, c->dup_seq, NULL, NULL, c->dup_id, c->dup_type, NULL, NULL, NULL);
    memset(rc, 0, sizeof(*rc));
    rc->p = p;
    rc->state = e->state;
    c->load_checked = false;
    if (past_close(p)) { /* read as failed: answered unavailable */
        c->load_from_snapshot = false;
        c->load_snap_seq = 0;
        c->load_status = JL_ERR_UNAVAILABLE;
        snprintf(rc->err, sizeof(rc->err), "the producer is shutting down; try again");
        return NULL;
    }
    /* Also a generated id: our own earlier copy, stored but unacknowledged and sent again
     * after the duplicate window, is then found here instead of decided again. */
    rc->watch_cmd_id = c->cmd_id;
    rc->agg_id = c->agg_id;
    c->load_from_snapshot = false;
    if (c->catching_up) {
        rc->version = e->version;
        rc->last_seq = e->last_seq;
    } else {
        p->def->state_init(rc->state);
        c->load_from_snapshot = snapshots_on(p) && load_snapshot(p, c->agg_id, rc);
    }
    c->load_snap_seq = c->load_from_snapshot ? rc->last_seq : e->snap_seq;
    if (c->catching_up && c->timed_out && jl__fault("command.reread")) {
        c->load_status = JL_ERR_UNAVAILABLE; /* the fault tests' failed read */
        snprintf(rc->err, sizeof(rc->err), "fault injected at command.reread");
    } else if (c->verifying) {
        c->load_status = verify_read(p, c, rc);
        c->load_checked = true;
    } else {
        c->load_status = c->catching_up ? read_newer_commits(p, c->subject, rc)
                                        : read_commits(p, c->subject, rc);
        /* Direct gets of a replicated stream may come from a replica a moment behind its
         * leader; what is decided on this read may be a refusal, which nothing else checks.
         * And an append that found another last sequence, with nothing newer to read, met an
         * older one: the leader says whether the stream lost what the entry holds. */
        if (c->load_status == JL_OK &&
            (atomic_load(&p->replicas) > 1 || (c->catching_up && rc->last_seq == e->last_seq))) {
            c->load_status = verify_read(p, c, rc);
            c->load_checked = true;
        }
    }
    if (rc->full) { /* replayed: its snapshot is gone */
        c->load_from_snapshot = false;
        c->load_snap_seq = 0;
    }
    if (c->load_status == JL_OK && rc->watch_seq == 0 &&
        (c->resolve || (c->generated && rc->version > 0)))
        c->load_status = find_own_commit(p, c, rc, c->resolve ? c->resolve_after + 1 : 1);
    c->resolve = false; /* looked (or answered unavailable): decided on what was read */
    return NULL;
}

/* Under p->mu: answer @p c, which waited for a read of its aggregate that is not to be made,
 * "unavailable", and let the next command of its aggregate start (it may be deferred in turn). */
static void answer_unread(jl_producer *p, cmd *c)
{
    c->next = NULL;
    p->n_loading--;
    c->catching_up = false;
    jl__cache_entry *e = c->entry;
    jl_reply *r = &p->reply;
    jl_reply_reset(r);
    snprintf(r->aggregate_id, sizeof(r->aggregate_id), "%s", c->agg_id);
    jl_reply_error(r, JL_CODE_UNAVAILABLE,
                   "event store unavailable: %s %s could not be read; try again",
                   p->def->aggregate_type, c->agg_id);
    finish(p, c, r);
    release_entry(p, e);
}

/*
 * The end of load_done(), under p->mu, which it lets go. What start_one() deferred meanwhile
 * (defer_load) is on a worker of p->loads, where a push that waits for room could wait for
 * ever (room is made only by the workers, and every one may be here). After a failed read
 * (@p read_failed), those are the commands queued behind it: answered "unavailable", as the
 * read was, not read again one by one into the same failure. Else (the aggregate was left
 * stale by a command whose timed-out append may yet be stored) they are handed to p->loads
 * where there is room, and only those that find none are answered so.
 */
static void unlock_after_load(jl_producer *p, bool read_failed)
{
    while (p->to_load_head != NULL) {
        cmd *c = p->to_load_head;
        p->to_load_head = p->to_load_tail = NULL;
        cmd *unread = NULL, **tail = &unread;
        if (!read_failed) {
            pthread_mutex_unlock(&p->mu);
            for (cmd *next = NULL; c != NULL; c = next) {
                next = c->next;
                c->next = NULL;
                if (!jl__ordered_try_push(p->loads, c, 0, true)) {
                    *tail = c;
                    tail = &c->next;
                }
            }
            pthread_mutex_lock(&p->mu);
            c = unread;
        }
        for (cmd *next = NULL; c != NULL; c = next) {
            next = c->next;
            answer_unread(p, c); /* may defer the next one of its aggregate: the loop goes on */
        }
    }
    pthread_mutex_unlock(&p->mu);
}

/*
 * Under p->mu: @p c's append was a repeat, by its client command id, of the message at
 * c->dup_seq, read by load_read (c->dup_id, c->dup_version). That message is this command's
 * own earlier copy (a retry of ours, or a replica's), whatever the aggregate: the same reply.
 * Or, for a creation under a generated id, it names the aggregate. On another aggregate it is
 * not this command's, and must not pass for its success.
 */
static void settle_duplicate(jl_producer *p, cmd *c, jl_reply *r)
{
    jl__cache_entry *e = c->entry;
    uint64_t seq = c->dup_seq;
    c->dup_seq = 0;
    jl_reply_reset(r);
    snprintf(r->aggregate_id, sizeof(r->aggregate_id), "%s", c->agg_id);
    if (c->dup_id[0] == 0 && c->load.watch_seq == seq) {
        /* Not read by its sequence (a replica a moment behind answered), but the same load's
         * read of this aggregate met that very commit, recording this command id. */
        snprintf(c->dup_id, sizeof(c->dup_id), "%s", c->agg_id);
        snprintf(c->dup_type, sizeof(c->dup_type), "%s", c->load.watch_type);
        c->dup_version = c->load.watch_version;
    }
    if (c->dup_id[0] != 0 && c->generated) {
        snprintf(c->agg_id, sizeof(c->agg_id), "%s", c->dup_id);
        jl_aggregate_subject(c->subject, sizeof(c->subject), p->def->name, p->def->aggregate_type,
                             c->agg_id);
    }
    if (c->dup_id[0] == 0) {
        /* The original could not be read (a leader moving): its version, even its aggregate,
         * unknown. Not a reply to record for the command-id TTL: sent again, it is settled, by
         * a marker past the duplicate window (the commit, when on this aggregate, is at seq). */
        outcome_unknown_after(p, c, seq - 1);
        jl_reply_error(r, JL_CODE_UNAVAILABLE,
                       "command id '%s' was stored before (stream sequence %" PRIu64
                       ") but cannot be read now; try again",
                       c->cmd_id, seq);
        finish(p, c, r);
        release_entry(p, e);
    } else if (strcmp(c->dup_id, c->agg_id) != 0) {
        jl_reply_error(r, JL_CODE_INVALID,
                       "command id '%s' was already used on %s (stream sequence %" PRIu64 ")",
                       c->cmd_id, c->dup_id, seq);
        finish(p, c, r);
        release_entry(p, e);
    } else if (used_for_another(c, c->dup_type, c->agg_id, r)) {
        finish(p, c, r);
        release_entry(p, e);
    } else if (!duplicate_reply(p, c, seq, c->dup_version, r)) {
        finish_stored(p, c, r);
        release_entry(p, e);
    }
}

/* p->loads: @p item's aggregate is read; settle its entry and go on with the command. */
static void load_done(void *ctx, void *item, void *prepared, uint64_t tag, int64_t pushed_ns)
{
    jl_producer *p = ctx;
    cmd *c = item;
    jl__cache_entry *e = c->entry;
    const replay_ctx *rc = &c->load;
    jl_reply *r = &p->reply;
    (void)prepared;
    (void)tag;
    (void)pushed_ns;
    pthread_mutex_lock(&p->mu);
    p->n_loading--;
    jl_reply_reset(r);
    snprintf(r->aggregate_id, sizeof(r->aggregate_id), "%s", c->agg_id);
    uint64_t sent_after = e->last_seq; /* what a timed-out append of c expected (busy since) */
    p->stats.loads += !c->catching_up;
    p->stats.snapshot_loads += c->load_from_snapshot;
    e->version = rc->version;
    e->last_seq = rc->last_seq;
    e->snap_seq = c->load_snap_seq;
    e->stale = replayed(p, c->subject, rc, c->load_status, r) != JL_OK;
    bool read_failed = e->stale;
    c->catching_up = false;
    if (c->verifying) {
        c->verifying = false;
        p->stats.verified++;
        p->stats.verified_stale += !e->stale && e->last_seq != c->verify_from;
    }
    /* Read to the stream's head, as its leader has it, just now: what is decided on it here,
     * this command and those queued behind it (release_entry), needs no check (nor could one
     * be queued from here). Not so a read unchecked, of a stream found with one replica at
     * open: another instance (replicas 0, auto) or an operator may have raised its replicas
     * since, and a direct get answered by a replica a moment behind would go unchecked. */
    if (!e->stale && c->load_checked)
        p->just_read = e;
    if (e->stale) {
        /* Half read: the commands queued behind are answered unavailable with it
         * (unlock_after_load); the next one to come reads it again from its snapshot. */
        p->def->state_init(e->state);
        e->version = e->last_seq = e->snap_seq = 0;
    }
    if (c->dup_seq != 0) {
        settle_duplicate(p, c, r);
    } else if (e->stale) {
        if (c->timed_out) {
            /* The read that was to tell whether the timed-out attempt was stored failed. */
            char why[sizeof(r->message)];
            jl_code code = r->code;
            snprintf(why, sizeof(why), "%s", r->message);
            outcome_unknown_after(p, c, sent_after);
            jl_reply_reset(r);
            snprintf(r->aggregate_id, sizeof(r->aggregate_id), "%s", c->agg_id);
            jl_reply_error(
                r, code, "an attempt timed out, and its events may or may not be stored: %s", why);
        }
        finish(p, c, r);
        release_entry(p, e);
    } else if (rc->watch_seq != 0 && used_for_another(c, rc->watch_type, c->agg_id, r)) {
        finish(p, c, r);
        release_entry(p, e);
    } else if (rc->watch_seq != 0) {
        /* Its commit is in the history already (the KV record was lost): same reply. */
        if (!duplicate_reply(p, c, rc->watch_seq, rc->watch_version, r)) {
            finish_stored(p, c, r);
            release_entry(p, e);
        }
    } else {
        e->busy = false;
        start(p, c);
    }
    p->just_read = NULL;
    unlock_after_load(p, read_failed);
}

static void on_ack(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *closure)
{
    jl_producer *p = closure;
    cmd *to_read = NULL; /* handed to p->loads once the rest is done */
    atomic_fetch_add(&p->acking, 1);
    pthread_mutex_lock(&p->mu);
    cmd *c = jl__ptrmap_take(&p->inflight, msg);
    if (c == NULL) { /* a snapshot's (see save_snapshot): no command waits for it */
        if (p->snapshots_inflight > 0)
            p->snapshots_inflight--;
        if (pa != NULL)
            p->stats.snapshots_saved++;
        else
            snapshot_lost(natsMsg_GetSubject(msg), natsStatus_GetText(pae->Err));
        pthread_mutex_unlock(&p->mu);
        natsMsg_Destroy(msg);
        atomic_fetch_sub(&p->acking, 1);
        return;
    }
    p->n_inflight--;
    jl__cache_entry *e = c->entry;
    jl_reply *r = &p->reply;
    jl_reply_reset(r);
    snprintf(r->aggregate_id, sizeof(r->aggregate_id), "%s", c->agg_id);

    bool retryable = pa == NULL && (pae->Err == NATS_TIMEOUT || pae->Err == NATS_NO_RESPONDERS) &&
                     mono_ns() < c->deadline_ns;
    if (c->recording && retryable && resend(p, js, &msg, c, pae->Err) == NATS_OK) {
        /* The record is what stops a repeat past the duplicate window from taking effect a
         * second time: put it again (the same value) while the command has time. */
    } else if (c->recording) {
        /* The command-id record of a stored command: now the reply. */
        if (pa == NULL)
            not_remembered(p, c, natsStatus_GetText(pae->Err));
        else if (c->snapshot_due && save_snapshot(p, c->agg_id, e))
            e->snap_seq = e->last_seq; /* the entry is still this commit's: busy till now */
        c->snapshot_due = false;
        c->recording = false;
        e->mark = atomic_fetch_add(&p->record_gen, 1) + 1;
        r->aggregate_version = c->stored_version;
        r->stream_seq = c->stored_seq;
        r->duplicate = c->stored_duplicate;
        finish_stored(p, c, r);
        release_entry(p, e);
    } else if ((pa != NULL && pa->Duplicate && pa->Sequence == 0) ||
               (pa == NULL && pae->ErrCode == JL_JS_DUPLICATE_IN_PROCESS)) {
        /* No sequence means not stored (yet): an earlier copy of this very message is still
         * being stored, or, on older servers, was dropped by a leader election and
         * blocks its id (newer servers say the first as error 10158). Never an OK, nor "not
         * stored": ask again (the pause lets the copy land) until the deadline, then say the
         * outcome is unknown. Pausing longer each time: the leader is busy. */
        c->in_process++;
        jl_log(c->in_process == 1 ? JL_LOG_INFO : JL_LOG_DEBUG,
               "earlier copy in process, resending", "\"subject\":\"%s\",\"times\":%d", c->subject,
               c->in_process);
        natsStatus ns = resend(p, js, &msg, c, NATS_NO_RESPONDERS);
        if (ns != NATS_OK) {
            outcome_unknown(p, c);
            jl_reply_error(r, JL_CODE_UNAVAILABLE,
                           "event store reports an earlier copy of the events in process and "
                           "did not confirm it (they may or may not be stored): %s",
                           natsStatus_GetText(ns));
            finish(p, c, r);
            release_entry(p, e);
        }
    } else if (pa != NULL && pa->Duplicate && c->client_id) {
        /* The client's command id was stored before, by a retry of ours or by a replica: the
         * same reply, and our cached state may lack that commit. (Without a client id the
         * message id is this attempt's own: a duplicate is our earlier copy, stored as built,
         * which the next branch takes like any ack, reading nothing under the lock.) The
         * message id is the command id, whatever the aggregate: the commit found must be of
         * this one, or, for a creation under a generated id, it names the aggregate. */
        e->stale = true;
        if (p->closing) {
            /* Past the close's wait: no more reads. Stored, but its reply is not known here;
             * a retry (same id) gets it from the next producer, past the duplicate window by
             * the marker (p->late is written at close). */
            outcome_unknown_after(p, c, pa->Sequence - 1);
            jl_reply_error(r, JL_CODE_UNAVAILABLE, "the producer is shutting down; try again");
            finish(p, c, r);
            release_entry(p, e);
        } else {
            /* What it is a repeat of is read on a worker, not here under the lock (settle_
             * duplicate): during a leader election that read may wait out the JetStream
             * timeout, and every other command with it. */
            c->dup_seq = pa->Sequence;
            c->catching_up = e->last_seq != 0;
            to_read = c;
        }
    } else if (pa != NULL) {
        c->appended = true;
        advance(p, c, pa->Sequence);
        r->aggregate_version = c->first_version + c->d.n_events - 1;
        r->stream_seq = pa->Sequence;
        if (!c->client_id || p->commands == NULL || !record_async(p, c, r)) {
            finish_stored(p, c, r);
            release_entry(p, e);
        }
    } else if (jl_js_wrong_last_seq(pae->ErrCode) && p->closing) {
        /* Past the close's wait: no more reads (p->loads is going away). */
        e->stale = true;
        if (c->timed_out)
            outcome_unknown(p, c);
        jl_reply_error(r, JL_CODE_UNAVAILABLE, "the producer is shutting down; try again%s",
                       c->timed_out ? " (the events may or may not be stored)" : "");
        finish(p, c, r);
        release_entry(p, e);
    } else if (jl_js_wrong_last_seq(pae->ErrCode) &&
               c->attempts++ < p->retries + (c->timed_out || c->client_id ? 1 : 0)) {
        /* Another writer got there first: read what it wrote on a worker, without the lock
         * (another replica writing the same aggregates makes this common), then decide again,
         * unless what it wrote is this very command, sent twice (load_done). A clustered
         * stream answers a resend of a stored message so, not as a duplicate (it checks the
         * sequence first): after a timed-out attempt, or for a command with a client's id
         * (another replica may have stored a copy sent to it), one read more than the retries
         * allow finds that copy rather than answer "conflict" for what is stored. */
        p->stats.conflicts++;
        jl_log(JL_LOG_DEBUG, "conflict, catching up", "\"subject\":\"%s\",\"attempt\":%d",
               c->subject, c->attempts);
        c->catching_up = true;
        to_read = c;
    } else if (jl_js_wrong_last_seq(pae->ErrCode)) {
        p->stats.conflicts++;
        e->stale = true;    /* behind the stream: the next command reads what it missed */
        if (c->timed_out) { /* that copy may still be stored: never "conflict", not stored */
            outcome_unknown(p, c);
            jl_reply_error(r, JL_CODE_UNAVAILABLE,
                           "%s %s was changed concurrently %d time%s in a row after an attempt "
                           "timed out: the events may or may not be stored; try again",
                           p->def->aggregate_type, c->agg_id, c->attempts,
                           c->attempts == 1 ? "" : "s");
        } else {
            jl_reply_error(
                r, JL_CODE_CONFLICT, "%s %s was changed concurrently %d time%s in a row; try again",
                p->def->aggregate_type, c->agg_id, c->attempts, c->attempts == 1 ? "" : "s");
        }
        finish(p, c, r);
        release_entry(p, e);
    } else if (retryable) {
        /* A stream leader moving, a server restarting: send the same message again. Its
         * Nats-Msg-Id makes JetStream store it once even if the first copy got through. */
        natsStatus ns = resend(p, js, &msg, c, pae->Err);
        if (ns != NATS_OK) {
            outcome_unknown(p, c); /* stored or not */
            jl_reply_error(r, JL_CODE_UNAVAILABLE, "event store did not confirm the events: %s",
                           natsStatus_GetText(ns));
            finish(p, c, r);
            release_entry(p, e);
        }
    } else if (pae->ErrCode != 0 && !c->timed_out) {
        /* The stream said no: full under --max-bytes (discard new), a commit over its maximum
         * message size, the server out of resources. Reload before the next use all the same. */
        e->stale = true;
        jl_reply_error(r,
                       pae->ErrCode == JSStreamMessageExceedsMaximumErr ? JL_CODE_INVALID
                                                                        : JL_CODE_UNAVAILABLE,
                       "the event store refused the events, which were not stored: %s "
                       "(JetStream error %d)",
                       pae->ErrText ? pae->ErrText : natsStatus_GetText(pae->Err),
                       (int)pae->ErrCode);
        finish(p, c, r);
        release_entry(p, e);
    } else {
        outcome_unknown(p, c); /* reload before the next use */
        jl_reply_error(r, JL_CODE_UNAVAILABLE,
                       "event store did not confirm the events within %" PRId64
                       " ms (they may or may not be stored): %s%s%s",
                       p->append_timeout_ms, natsStatus_GetText(pae->Err),
                       pae->ErrText ? ", then refused a resend: " : "",
                       pae->ErrText ? pae->ErrText : "");
        finish(p, c, r);
        release_entry(p, e);
    }
    drain_backlog(p);
    if (to_read != NULL)
        defer_load(p, to_read);
    unlock_and_load(p);
    natsMsg_Destroy(msg);
    atomic_fetch_sub(&p->acking, 1);
}

/* A request, with the record of its command id (@p known, from recall(), read after record
 * generation @p gen): read before submit() takes the lock. */
typedef struct request {
    const char *command;
    const void *data;
    size_t len;
    const char *command_id, *correlation_id, *causation_id;
    natsMsg *req;
    sync_call *sync;
    kvEntry *known;
    uint64_t gen;
    int64_t received_ns; /* mono_ns (0: now); its deadline counts from then */
} request;

/* Validate a request and hand it to its aggregate. Takes ownership of rq->req (may be NULL) and
 * rq->known. */
static void submit(jl_producer *p, const request *rq)
{
    const jl_service_def *def = p->def;
    jl_reply *r = &p->reply;
    const char *command = rq->command, *command_id = rq->command_id;
    const char *correlation_id = rq->correlation_id, *causation_id = rq->causation_id;
    const void *data = rq->data;
    size_t len = rq->len;
    natsMsg *req = rq->req;
    uint64_t gen = rq->gen;
    kvEntry *known = rq->known;
    pthread_mutex_lock(&p->mu);
    cmd *c = cmd_new(p);
    if (c == NULL) {
        /* Out of memory: not decided, to be sent again (the reply needs no more memory than
         * the shared one). */
        jl_reply_reset(r);
        jl_reply_error(r, JL_CODE_UNAVAILABLE, "out of memory; not decided: try again");
        if (rq->sync != NULL) /* a direct caller waits for an answer */
            answer_sync(rq->sync, r);
        else if (req != NULL)
            (void)jl_reply_send(jl_conn_nats(p->conn), natsMsg_GetReply(req), r, &p->reply_bytes);
        pthread_mutex_unlock(&p->mu);
        known_free(known);
        natsMsg_Destroy(req);
        return;
    }
    c->req = req;
    c->sync = rq->sync;
    if (rq->received_ns != 0)
        c->received_ns = rq->received_ns;
    /* A subject token, the client's: made safe for logs and replies (command names are ASCII
     * identifiers, so nothing of a real one is lost, and no UTF-8 is cut). */
    snprintf(c->name, sizeof(c->name), "%.64s", command);
    for (char *q = c->name; *q; q++) {
        if ((unsigned char)*q < 0x20 || (unsigned char)*q >= 0x7f || *q == '"' || *q == '\\')
            *q = '?';
    }
    jl_reply_reset(r);

    if (p->n_cmds > p->max_cmds) {
        jl_reply_error(r, JL_CODE_UNAVAILABLE,
                       "the producer holds %zu commands, its limit (--max-commands); try again "
                       "later",
                       p->max_cmds);
        p->stats.overloaded++;
        goto reject;
    }
    c->cd = find_command(def, command);
    if (c->cd == NULL) {
        jl_reply_error(r, JL_CODE_INVALID, "unknown command '%s' for service %s", c->name,
                       def->name);
        goto reject;
    }
    if (len > JL_MAX_COMMAND_BYTES) {
        jl_reply_error(r, JL_CODE_INVALID, "command of %zu bytes exceeds the %d-byte limit", len,
                       JL_MAX_COMMAND_BYTES);
        goto reject;
    }
    if (p->held_bytes + len > JL_MAX_HELD_COMMAND_BYTES) {
        jl_reply_error(r, JL_CODE_UNAVAILABLE,
                       "the producer holds %zu MiB of commands, its limit; try again later",
                       p->held_bytes >> 20);
        p->stats.overloaded++;
        goto reject;
    }
    c->held = len;
    p->held_bytes += len;
    /* Fields of a newer schema (a newer client, or a newer replica's process manager, during a
     * rolling upgrade) are refused: decided here, they would be dropped from its events for
     * good. A replica that knows them can decide it. */
    c->msg = jl_request_unpack(c->cd->descriptor, data, len, r, NULL);
    if (c->msg == NULL)
        goto reject;
    const char *id = field_string(c->msg, c->cd->id_field);
    if (id == NULL) {
        jl_reply_error(r, JL_CODE_INTERNAL, "%s has no string field '%s'", c->cd->descriptor->name,
                       c->cd->id_field);
        goto reject;
    }
    if (*id == 0 && !c->cd->may_create_id && def->default_aggregate_id != NULL)
        id = def->default_aggregate_id; /* the service's one well-known aggregate */
    if (*id == 0 && c->cd->may_create_id) {
        jl_uuid_new(c->agg_id); /* from the client's command id instead, below, if it has one */
        c->fresh = true;        /* a random new id: the aggregate cannot have history */
        c->generated = true;
    } else if (*id == 0) {
        jl_reply_error(r, JL_CODE_INVALID, "%s is required", c->cd->id_field);
        goto reject;
    } else if (jl_uuid_canonical(c->agg_id, id) != JL_OK) {
        jl_reply_error(r, JL_CODE_INVALID, "%s '%.64s' is not a UUID", c->cd->id_field, id);
        goto reject;
    }
    snprintf(r->aggregate_id, sizeof(r->aggregate_id), "%s", c->agg_id);
    if (command_id != NULL && *command_id != 0) {
        if (!jl_valid_id(command_id)) {
            jl_reply_error(r, JL_CODE_INVALID,
                           "command id must be 1 to %d printable characters without spaces",
                           JL_MAX_ID_LEN);
            goto reject;
        }
        snprintf(c->cmd_id, sizeof(c->cmd_id), "%s", command_id);
        c->client_id = true;
        if (c->generated) {
            /* A creation's id derived from its command id: a repeat, on any replica and after
             * any time, names the same aggregate, and its load finds the first copy's commit
             * by the id it records, also when that copy's outcome was never known (its ack
             * lost until the deadline) and so nothing recorded the id. (A random id would
             * create a second aggregate once JetStream's duplicate window has passed.) */
            char name[JL_MAX_ID_LEN + 256];
            int n = snprintf(name, sizeof(name), "%s:%s", def->name, c->cmd_id);
            jl_uuid_named(c->agg_id, name, n < (int)sizeof(name) ? (size_t)n : sizeof(name) - 1);
            c->fresh = false;
            snprintf(r->aggregate_id, sizeof(r->aggregate_id), "%s", c->agg_id);
        }
    } else {
        jl_uuid_new(c->cmd_id);
    }
    if ((correlation_id && *correlation_id && !jl_valid_id(correlation_id)) ||
        (causation_id && *causation_id && !jl_valid_id(causation_id))) {
        jl_reply_error(r, JL_CODE_INVALID,
                       "correlation and causation ids must be 1 to %d printable characters "
                       "without spaces",
                       JL_MAX_ID_LEN);
        goto reject;
    }
    snprintf(c->corr, sizeof(c->corr), "%s", correlation_id ? correlation_id : "");
    snprintf(c->cause, sizeof(c->cause), "%s", causation_id ? causation_id : "");
    if (jl_aggregate_subject(c->subject, sizeof(c->subject), def->name, def->aggregate_type,
                             c->agg_id) != JL_OK) {
        jl_reply_error(r, JL_CODE_INTERNAL, "aggregate subject too long");
        goto reject;
    }
    void *stored = NULL; /* the record as read again */
    size_t stored_len = 0;
    while (c->client_id && known == NULL && stored == NULL) {
        /* Looked up before this producer stored a record for the aggregate, the lookup may
         * have missed it: read it again, without the lock (the ack thread goes on meanwhile;
         * requests are submitted one at a time, so their order holds). An entry evicted since
         * is not seen, and the state read again (from a snapshot past the commit) would not
         * show the command either: an entry's mark goes on in the entries made after it. */
        const jl__cache_entry *seen = jl__cache_get(p->cache, c->agg_id);
        if ((seen != NULL ? seen->mark : p->evicted_mark) <= gen)
            break;
        gen = atomic_load(&p->record_gen);
        p->stats.records_read_again++;
        pthread_mutex_unlock(&p->mu);
        bool told = recall_stored(p, c->cmd_id, &stored, &stored_len);
        pthread_mutex_lock(&p->mu);
        if (!told)
            known = LOOKUP_FAILED;
        jl_reply_reset(r); /* the shared reply was others' meanwhile */
        snprintf(r->aggregate_id, sizeof(r->aggregate_id), "%s", c->agg_id);
    }
    bool answered = c->client_id && known != NULL && known != LOOKUP_FAILED &&
                    remembered(c, kvEntry_Value(known), (size_t)kvEntry_ValueLen(known), r);
    if (!answered && stored != NULL)
        answered = remembered(c, stored, stored_len, r);
    free(stored);
    if (!answered && c->client_id && p->late != NULL) {
        /* Stored, and answered, while its record could not be written: it waits here (most
         * likely while the bucket does not answer lookups either). */
        size_t vlen = 0;
        void *value = NULL;
        if (jl__late_find(p->late, c->cmd_id, &value, &vlen) == JL_ERR_NOMEM) {
            record_unread(c, r); /* kept here, not read: not to be taken for none */
            answered = true;
        } else {
            answered = remembered(c, value, vlen, r);
        }
        free(value);
    }
    if (!answered && c->client_id && known == LOOKUP_FAILED) {
        /* Deciding it now could repeat a command stored long ago (past JetStream's window). */
        jl_reply_error(r, JL_CODE_UNAVAILABLE,
                       "command id '%s' could not be looked up (the command-id store did not "
                       "answer within %d ms); try again",
                       c->cmd_id, JL_LOOKUP_WAIT_MS);
        goto reject;
    }
    known_free(known);
    known = NULL;
    if (answered)
        goto reject; /* answered before: the same reply again */
    jl__cache_entry *e = jl__cache_get(p->cache, c->agg_id);
    if (e != NULL && (e->busy || e->qhead != NULL)) {
        /* Its aggregate has an append in flight: wait for it, in order. */
        jl__cache_pin(p->cache, e);
        c->entry = e;
        if (e->qtail != NULL)
            ((cmd *)e->qtail)->next = c;
        else
            e->qhead = c;
        e->qtail = c;
        p->stats.cache_hits++;
        pthread_mutex_unlock(&p->mu);
        return;
    }
    bool ready = false;
    if (attach_entry(p, c, &ready, r) != JL_OK)
        goto reject;
    if (!ready) {
        /* Read on a worker, without the lock: other aggregates' commands go on meanwhile. */
        defer_load(p, c);
        unlock_and_load(p);
        return;
    }
    start(p, c);
    unlock_and_load(p);
    return;
reject:
    known_free(known);
    finish(p, c, r);
    pthread_mutex_unlock(&p->mu);
}

void jl_producer_handle(jl_producer *p, const char *command, const void *data, size_t len,
                        const char *command_id, const char *correlation_id,
                        const char *causation_id, jl_reply *out)
{
    sync_call call = {.done = false, .out = out};
    pthread_mutex_init(&call.mu, NULL);
    pthread_cond_init(&call.cv, NULL);
    request rq = {.command = command,
                  .data = data,
                  .len = len,
                  .command_id = command_id,
                  .correlation_id = correlation_id,
                  .causation_id = causation_id,
                  .sync = &call,
                  .gen = atomic_load(&p->record_gen)};
    rq.known = recall(p, command_id);
    submit(p, &rq);
    pthread_mutex_lock(&call.mu);
    while (!call.done)
        pthread_cond_wait(&call.cv, &call.mu);
    pthread_mutex_unlock(&call.mu);
    pthread_cond_destroy(&call.cv);
    pthread_mutex_destroy(&call.mu);
}

/* ---- audit trail and temporal state ---- */

typedef struct history_ctx {
    uint64_t from_version;
    uint32_t limit;
    size_t budget; /* bytes of events a page holds at most: the reply must fit in a message */
    size_t bytes;
    size_t n;
    uint64_t next_version, next_sequence;
    bool hinted; /* reading starts at the client's from_sequence: checked on the first commit */
    bool misled; /* it did not hold from_version: read again from the aggregate's first event */
    size_t seen; /* commits read */
    int64_t deadline_ns; /* mono_ns: the read stops there */
    bool over_time;      /* ... and did */
    Jetledger__StoredEvent *items;
    Jetledger__StoredEvent **ptrs;
    Jetledger__Commit **commits; /* kept until the reply is encoded: items point into them */
    size_t n_commits;
    size_t cap_commits;
} history_ctx;

static jl_status history_commit(uint64_t seq, int64_t time_ns, const void *data, size_t len,
                                void *closure)
{
    history_ctx *h = closure;
    (void)time_ns;
    if (mono_ns() > h->deadline_ns) {
        h->over_time = true;
        return JL_ERR_TIMEOUT;
    }
    Jetledger__Commit *c = jetledger__commit__unpack(NULL, len, data);
    if (c == NULL)
        return JL_ERR_DECODE;
    if (h->n_commits == h->cap_commits) {
        size_t cap = h->cap_commits ? h->cap_commits * 2 : 64;
        Jetledger__Commit **nc = realloc(h->commits, cap * sizeof(*nc));
        if (nc == NULL) {
            jetledger__commit__free_unpacked(c, NULL);
            return JL_ERR_NOMEM;
        }
        h->commits = nc;
        h->cap_commits = cap;
    }
    size_t kept = 0;
    jl_status s = JL_OK;
    if (h->seen++ == 0 && h->hinted &&
        (c->n_events == 0 || c->events[0]->aggregate_version > h->from_version)) {
        h->misled = true; /* versions before it would be missed */
        jetledger__commit__free_unpacked(c, NULL);
        return JL_ERR_STOPPED;
    }
    for (size_t i = 0; i < c->n_events; i++) {
        Jetledger__Envelope *e = c->events[i];
        if (e->aggregate_version < h->from_version)
            continue;
        /* A page ends at its limit or its size (never empty: one event always fits, a commit
         * being smaller than a message); the client asks on from next_version. */
        size_t size = jetledger__envelope__get_packed_size(e) + 32;
        if (h->n == h->limit || (h->n > 0 && h->bytes + size > h->budget)) {
            h->next_version = e->aggregate_version;
            h->next_sequence = seq;
            s = JL_ERR_STOPPED;
            break;
        }
        jetledger__stored_event__init(&h->items[h->n]);
        h->items[h->n].stream_sequence = seq;
        h->items[h->n].envelope = e;
        h->ptrs[h->n] = &h->items[h->n];
        h->n++;
        h->bytes += size;
        kept++;
    }
    if (kept > 0)
        h->commits[h->n_commits++] = c;
    else
        jetledger__commit__free_unpacked(c, NULL); /* before from_version: not held */
    return s;
}

/* Bytes of events one history page may hold: three quarters of what the server carries in a
 * message (and of a reply's own limit), the rest left to the reply around them. */
static size_t history_budget(jl_producer *p)
{
    int64_t max = natsConnection_GetMaxPayload(jl_conn_nats(p->conn));
    if (max <= 0 || max > JL_MAX_REPLY_BYTES)
        max = JL_MAX_REPLY_BYTES;
    return (size_t)max / 4 * 3;
}

/* How long a history page or a past state may read: four fifths of --request-timeout, so that
 * a client waiting as long gets the "timeout" reply rather than none. */
static int64_t query_budget_ms(const jl_producer *p)
{
    return p->append_timeout_ms * 4 / 5;
}

static void query_history(jl_producer *p, const Jetledger__GetHistory *q, const char *subject,
                          jl_reply *r)
{
    /* Bounded: a long history read from its start (no from_sequence) would hold up every
     * other query on this thread, and go on after the client gave up. */
    history_ctx h = {.from_version = q->from_version ? q->from_version : 1,
                     .limit = q->limit && q->limit < HISTORY_MAX ? q->limit : HISTORY_MAX,
                     .budget = history_budget(p),
                     .deadline_ns = mono_ns() + query_budget_ms(p) * 1000000LL};
    uint64_t last = 0;
    char why[256] = "";
    h.items = calloc(h.limit, sizeof(*h.items));
    h.ptrs = calloc(h.limit, sizeof(*h.ptrs));
    jl_status s = (h.items && h.ptrs) ? JL_OK : JL_ERR_NOMEM;
    /* Past 2^63 - 1 the server refuses the number as a bad request: no hint, like any wrong
     * one, not "unavailable". */
    h.hinted = q->from_sequence > 0 && q->from_sequence <= INT64_MAX;
    if (s == JL_OK)
        s = jl_store_read_subject(p->store, subject, h.hinted ? q->from_sequence - 1 : 0, 0,
                                  history_commit, &h, &last, why, sizeof(why));
    if ((s == JL_OK || s == JL_ERR_STOPPED) && h.hinted && (h.misled || h.seen == 0)) {
        /* A from_sequence past from_version's commit (or past the end): from the start. */
        h.hinted = h.misled = false;
        h.seen = 0;
        s = jl_store_read_subject(p->store, subject, 0, 0, history_commit, &h, &last, why,
                                  sizeof(why));
    }
    if ((s == JL_OK || s == JL_ERR_STOPPED) && last == 0) {
        jl_reply_error(r, JL_CODE_NOT_FOUND, "%s %s has no events", p->def->aggregate_type,
                       r->aggregate_id); /* as GetState says it */
    } else if (s == JL_OK || s == JL_ERR_STOPPED) {
        Jetledger__HistoryResult res = JETLEDGER__HISTORY_RESULT__INIT;
        res.n_events = h.n;
        res.events = h.ptrs;
        res.next_version = h.next_version;
        res.next_sequence = h.next_sequence;
        jl_reply_set_result(r, &res.base);
    } else if (s == JL_ERR_DECODE) {
        jl_reply_error(r, JL_CODE_INTERNAL, "a commit of %s is not decodable", subject);
    } else if (h.over_time) {
        jl_reply_error(r, JL_CODE_TIMEOUT,
                       "reading the history of %s took over %" PRId64 " ms (%zu commits read): "
                       "give from_sequence (next_sequence of the previous page) to start there",
                       subject, query_budget_ms(p), h.seen);
    } else {
        jl_reply_error(r, JL_CODE_UNAVAILABLE, "cannot read the history: %s", why);
    }
    for (size_t i = 0; i < h.n_commits; i++)
        jetledger__commit__free_unpacked(h.commits[i], NULL);
    free(h.commits);
    free(h.items);
    free(h.ptrs);
}

static void query_state(jl_producer *p, const Jetledger__GetState *q, const char *id,
                        const char *subject, jl_reply *r)
{
    const jl_service_def *def = p->def;
    if (def->state_type == NULL) {
        jl_reply_error(r, JL_CODE_INVALID, "service %s does not expose its state", def->name);
        return;
    }
    int set = (q->at_seq != 0) + (q->at_time_ns != 0) + (q->at_version != 0);
    if (set > 1) {
        jl_reply_error(r, JL_CODE_INVALID, "give at most one of at_seq, at_time_ns, at_version");
        return;
    }
    /* A point not reached yet has no state: later events may still land before it. */
    if (q->at_time_ns > now_ns()) {
        jl_reply_error(r, JL_CODE_INVALID, "at_time is in the future");
        return;
    }
    if (q->at_seq != 0) {
        jl_store_info info;
        char why[256] = "";
        if (jl_store_info_get(p->store, &info, why, sizeof(why)) != JL_OK) {
            jl_reply_error(r, JL_CODE_UNAVAILABLE, "cannot read the stream's head: %s", why);
            return;
        }
        if (q->at_seq > info.last_seq) {
            jl_reply_error(r, JL_CODE_INVALID,
                           "at_seq %" PRIu64 " is past the stream's last sequence %" PRIu64,
                           q->at_seq, info.last_seq);
            return;
        }
    }
    void *at = calloc(1, def->state_size);
    if (at == NULL) {
        jl_reply_error(r, JL_CODE_UNAVAILABLE, "out of memory: try again");
        return;
    }
    /* Bounded, as a history is: a past state is replayed from the first event. */
    replay_ctx rc = {
        .p = p, .state = at, .deadline_ns = mono_ns() + query_budget_ms(p) * 1000000LL};
    rc.lim = (limit){.seq = q->at_seq, .time_ns = q->at_time_ns, .version = q->at_version};
    def->state_init(at);
    /* A snapshot helps only when the point asked for is at or after it. */
    rc.agg_id = id;
    bool snap = snapshots_on(p) && set == 0 && load_snapshot(p, id, &rc);
    uint64_t snap_seq = rc.last_seq, head = 0;
    jl_status s = read_commits(p, subject, &rc);
    /* Nothing after the snapshot: unless the stream lost what it says. Its last commit is
     * the snapshot's when all is well (one direct get); else the leader says. Best effort:
     * when it cannot, the snapshot answers. */
    if (s == JL_OK && snap && rc.last_seq == snap_seq &&
        jl_store_read_last(p->store, subject, 0, NULL, NULL, &head, rc.err, sizeof(rc.err)) ==
            JL_OK &&
        head != snap_seq &&
        jl_store_subject_head(p->store, subject, &head, rc.err, sizeof(rc.err)) == JL_OK) {
        jl_status ls = replay_if_lost(p, subject, &rc, head);
        if (rc.full)
            s = ls; /* replayed: its read counts */
    }
    if (rc.over_time) {
        jl_reply_error(r, JL_CODE_TIMEOUT,
                       "replaying %s took over %" PRId64 " ms (%" PRIu64 " events read); a past "
                       "state is replayed from the first event",
                       subject, query_budget_ms(p), rc.events);
        free(at);
        return;
    }
    if (read_result(subject, &rc, s, r) != JL_OK) {
        free(at);
        return;
    }
    if (rc.last_time == 0 && rc.last_seq != 0) {
        /* Nothing replayed after the snapshot, which keeps no time: its commit's. */
        char cid[JL_UUID_LEN + 1], ctype[JL_TYPE_NAME_MAX];
        (void)version_at(p, rc.last_seq, NULL, NULL, cid, ctype, NULL, &rc.last_time, NULL);
    }
    if (rc.version == 0) {
        jl_reply_error(r, JL_CODE_NOT_FOUND, "%s %s has no events%s", def->aggregate_type, id,
                       set ? " at that point" : "");
        free(at);
        return;
    }
    if (q->at_version > rc.version) {
        jl_reply_error(r, JL_CODE_NOT_FOUND,
                       "%s %s is at version %" PRIu64 ": version %" PRIu64 " is not written yet",
                       def->aggregate_type, id, rc.version, q->at_version);
        free(at);
        return;
    }
    jl_buf state;
    jl_buf_init(&state, JL_MAX_REPLY_BYTES / 2);
    if (def->state_pack(at, &state) == JL_OK) {
        Jetledger__StateResult res = JETLEDGER__STATE_RESULT__INIT;
        res.aggregate_id = (char *)id;
        res.version = rc.version;
        res.stream_sequence = rc.last_seq;
        res.occurred_at_ns = rc.last_time;
        res.state_type = (char *)def->state_type->name;
        res.state.data = state.data;
        res.state.len = state.len;
        jl_reply_set_result(r, &res.base);
        r->aggregate_version = rc.version;
        r->stream_seq = rc.last_seq;
    } else {
        jl_reply_error(r, JL_CODE_INTERNAL, "cannot encode the state of %s", id);
    }
    jl_buf_cleanup(&state);
    free(at);
}

void jl_producer_query(jl_producer *p, const char *query, const void *data, size_t len,
                       jl_reply *out)
{
    char id[JL_UUID_LEN + 1], subject[SUBJECT_MAX];
    const ProtobufCMessageDescriptor *d = NULL;
    jl_reply_reset(out);
    if (strcmp(query, "GetHistory") == 0)
        d = &jetledger__get_history__descriptor;
    else if (strcmp(query, "GetState") == 0)
        d = &jetledger__get_state__descriptor;
    if (d == NULL) {
        jl_reply_error(out, JL_CODE_INVALID, "unknown query '%.64s' for service %s", query,
                       p->def->name);
        return;
    }
    if (len > JL_MAX_COMMAND_BYTES) {
        jl_reply_error(out, JL_CODE_INVALID, "query of %zu bytes exceeds the %d-byte limit", len,
                       JL_MAX_COMMAND_BYTES);
        return;
    }
    ProtobufCMessage *m = jl_request_unpack(d, data, len, out, NULL);
    if (m == NULL)
        return;
    /* Both requests start with aggregate_id. */
    const char *raw = field_string(m, "aggregate_id");
    if (jl_uuid_canonical(id, raw) != JL_OK) {
        jl_reply_error(out, JL_CODE_INVALID, "aggregate_id '%.64s' is not a UUID", raw);
    } else {
        jl_aggregate_subject(subject, sizeof(subject), p->def->name, p->def->aggregate_type, id);
        snprintf(out->aggregate_id, sizeof(out->aggregate_id), "%s", id);
        /* Without the lock: the reads are the store's thread-safe ones, the state our own. */
        if (d == &jetledger__get_history__descriptor)
            query_history(p, (const Jetledger__GetHistory *)m, subject, out);
        else
            query_state(p, (const Jetledger__GetState *)m, id, subject, out);
    }
    protobuf_c_message_free_unpacked(m, NULL);
}

/* ---- NATS wiring ---- */

static const char *last_token(const char *subject)
{
    const char *dot = strrchr(subject, '.');
    return dot ? dot + 1 : subject;
}

static const char *command_id_of(natsMsg *msg)
{
    const char *id = NULL;
    natsMsgHeader_Get(msg, "Jl-Command-Id", &id);
    return id != NULL && *id != 0 ? id : NULL;
}

/* A worker of p->incoming: the record of the request's command id (a KV read). */
static void *lookup_request(void *ctx, void *item)
{
    jl_producer *p = ctx;
    const char *id = command_id_of(item);
    return id != NULL && past_close(p) ? LOOKUP_FAILED : recall(p, id);
}

/* p->incoming, in arrival order: the request, with its record when it was looked up. */
static void submit_request(void *ctx, void *item, void *prepared, uint64_t gen, int64_t pushed_ns)
{
    natsMsg *msg = item;
    const char *corr = NULL, *cause = NULL;
    natsMsgHeader_Get(msg, "Jl-Correlation-Id", &corr);
    natsMsgHeader_Get(msg, "Jl-Causation-Id", &cause);
    /* The message owns the strings and goes along with the command. */
    request rq = {.command = last_token(natsMsg_GetSubject(msg)),
                  .data = natsMsg_GetData(msg),
                  .len = (size_t)natsMsg_GetDataLength(msg),
                  .command_id = command_id_of(msg),
                  .correlation_id = corr,
                  .causation_id = cause,
                  .req = msg,
                  .known = prepared,
                  .gen = gen,
                  .received_ns = pushed_ns};
    submit(ctx, &rq);
}

/* Requests are taken in order; the KV reads of command ids (a round trip each) overlap on
 * p->incoming's workers instead of queueing on this one thread. */
static void on_command(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    jl_producer *p = closure;
    (void)nc;
    bool lookup = p->commands != NULL && command_id_of(msg) != NULL;
    /* Its deadline counts from its arrival: a request that waited in the library's queue
     * while this handler waited for room (a burst) has used up that much of it. */
    int queued = 0;
    if (natsSubscription_GetPending(sub, &queued, NULL) != NATS_OK || queued < 0)
        queued = 0;
    int64_t arrived = jl__arrivals_note(&p->arrivals, mono_ns(), (uint64_t)queued);
    jl__ordered_push_at(p->incoming, msg, atomic_load(&p->record_gen), lookup, arrived);
}

static void on_query(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    jl_producer *p = closure;
    jl_reply r;
    (void)sub;
    jl_reply_init(&r);
    jl_producer_query(p, last_token(natsMsg_GetSubject(msg)), natsMsg_GetData(msg),
                      (size_t)natsMsg_GetDataLength(msg), &r);
    jl_reply_send(nc, natsMsg_GetReply(msg), &r, NULL);
    jl_reply_cleanup(&r);
    natsMsg_Destroy(msg);
}

/* Bind to (creating if needed) the KV bucket named @p fmt with the stream name. */
/*
 * A bucket made before gets the replicas (and, @p ttl_ns >= 0, the TTL) asked for now, as the
 * stream does: moving a service from one replica to three must not leave its command ids and
 * snapshots on one node. @p replicas 0 (auto) never scales a bucket down
 * (jl_conn_replicas_of_existing). One that jetledger did not make (another @p description) is left
 * as it is, with a warning: an update through this client could drop settings it does not know.
 */
static jl_status settle_bucket(jl_producer *p, const char *bucket, const char *description,
                               int replicas, int64_t ttl_ns, char *err, size_t errlen)
{
    char name[128];
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    jsCtx *js = jl_conn_js(p->conn);
    snprintf(name, sizeof(name), "KV_%s", bucket);
    natsStatus ns = js_GetStreamInfo(&si, js, name, NULL, &jerr);
    if (ns != NATS_OK) {
        snprintf(err, errlen, "cannot read KV bucket %s: %s (JetStream error %d)", bucket,
                 natsStatus_GetText(ns), (int)jerr);
        return jl_status_from_nats(ns);
    }
    if (si->Config == NULL) { /* not from a nats-server: one always sends it */
        jsStreamInfo_Destroy(si);
        snprintf(err, errlen, "the stream info of KV bucket %s came without its config", bucket);
        return JL_ERR_NATS;
    }
    jsStreamConfig *c = si->Config;
    jl_status s = JL_OK;
    if (ttl_ns < 0)
        ttl_ns = c->MaxAge;
    bool ours = c->Description != NULL && strcmp(c->Description, description) == 0;
    replicas = jl_conn_replicas_of_existing(p->conn, replicas, c->Replicas);
    if ((c->Replicas != replicas || c->MaxAge != ttl_ns) && !ours) {
        jl_log(JL_LOG_WARN,
               "KV bucket not made by jetledger: its replicas and TTL are left as they are",
               "\"bucket\":\"%s\",\"replicas\":%" PRId64 ",\"wanted_replicas\":%d", bucket,
               c->Replicas, replicas);
    } else if (c->Replicas != replicas || c->MaxAge != ttl_ns) {
        int64_t was_replicas = c->Replicas, was_ttl = c->MaxAge;
        c->Replicas = replicas;
        c->MaxAge = ttl_ns;
        if (ttl_ns > 0 && c->Duplicates > ttl_ns)
            c->Duplicates = ttl_ns; /* JetStream's rule: no longer than the max age */
        ns = js_UpdateStream(NULL, js, c, NULL, &jerr);
        if (ns != NATS_OK) {
            snprintf(err, errlen,
                     "cannot update KV bucket %s to %d replicas and a TTL of %" PRId64
                     " s: %s (JetStream error %d)",
                     bucket, replicas, ttl_ns / (int64_t)1000000000, natsStatus_GetText(ns),
                     (int)jerr);
            s = jl_status_from_nats(ns);
        } else {
            jl_log(JL_LOG_INFO, "KV bucket updated",
                   "\"bucket\":\"%s\",\"replicas\":%d,\"was_replicas\":%" PRId64
                   ",\"ttl_s\":%" PRId64 ",\"was_ttl_s\":%" PRId64,
                   bucket, replicas, was_replicas, ttl_ns / (int64_t)1000000000,
                   was_ttl / (int64_t)1000000000);
        }
    }
    jsStreamInfo_Destroy(si);
    return s;
}

static jl_status open_bucket(jl_producer *p, const jl_config *cfg, const char *fmt,
                             const char *description, int64_t ttl_s, kvStore **out, char *err,
                             size_t errlen)
{
    char bucket[96];
    kvConfig kc;
    snprintf(bucket, sizeof(bucket), fmt, p->def->stream);
    natsStatus ns = js_KeyValue(out, jl_conn_js(p->conn), bucket);
    if (ns == NATS_NOT_FOUND) {
        kvConfig_Init(&kc);
        kc.Bucket = bucket;
        kc.Description = description;
        kc.History = 1;
        kc.StorageType = js_FileStorage;
        kc.Replicas = jl_conn_replicas(p->conn, cfg->replicas);
        kc.MaxValueSize = JL_MAX_COMMIT_BYTES;
        kc.TTL = ttl_s * 1000000000LL;
        ns = js_CreateKeyValue(out, jl_conn_js(p->conn), &kc);
        if (ns != NATS_OK) /* another replica may have just created it */
            ns = js_KeyValue(out, jl_conn_js(p->conn), bucket);
    }
    if (ns != NATS_OK) {
        snprintf(err, errlen, "cannot open KV bucket %s: %s", bucket, natsStatus_GetText(ns));
        *out = NULL;
        return jl_status_from_nats(ns);
    }
    /* No TTL asked (the snapshots): whatever an operator set stays. */
    jl_status s = settle_bucket(p, bucket, description, cfg->replicas,
                                ttl_s > 0 ? ttl_s * 1000000000LL : -1, err, errlen);
    if (s != JL_OK) {
        kvStore_Destroy(*out);
        *out = NULL;
    }
    return s;
}

/*
 * What a service definition must hold, checked once at open rather than found command by
 * command (a typo in an id field would answer every such command "internal"; a count that
 * disagrees with its array reads past it, or leaves a command unknown). False with the reason.
 */
static bool check_def(const jl_service_def *def, char *err, size_t errlen)
{
    const char *agg = def->aggregate_type;
    /* The type goes into subjects and snapshot keys: a bounded name, so that a key is never
     * cut short into another aggregate's. */
    if (def->stream == NULL || !jl_valid_name(def->stream) || agg == NULL || !jl_valid_name(agg)) {
        snprintf(err, errlen,
                 "service %s needs a stream name and an aggregate type of 1 to %d letters, "
                 "digits, '_' and '-'",
                 def->name, JL_NAME_MAX - 1);
        return false;
    }
    if (def->state_size == 0 || def->state_init == NULL || def->evolve == NULL ||
        def->decide == NULL) {
        snprintf(err, errlen, "service %s needs state_size, state_init, evolve and decide",
                 def->name);
        return false;
    }
    if ((def->state_type == NULL) != (def->state_pack == NULL) ||
        (def->state_type == NULL) != (def->state_unpack == NULL)) {
        snprintf(err, errlen, "service %s: state_type, state_pack and state_unpack go together",
                 def->name);
        return false;
    }
    if (def->commands == NULL || def->n_commands == 0 || def->events.list == NULL ||
        def->events.n == 0) {
        snprintf(err, errlen, "service %s lists no commands or no events", def->name);
        return false;
    }
    for (size_t i = 0; i < def->events.n; i++) {
        if (def->events.list[i] == NULL) {
            snprintf(err, errlen, "service %s: event %zu of %zu is NULL (a count past the array?)",
                     def->name, i + 1, def->events.n);
            return false;
        }
    }
    for (size_t i = 0; i < def->n_commands; i++) {
        const jl_command_def *cd = &def->commands[i];
        if (cd->descriptor == NULL || cd->id_field == NULL) {
            snprintf(err, errlen,
                     "service %s: command %zu of %zu has no descriptor or id field (a count past "
                     "the array?)",
                     def->name, i + 1, def->n_commands);
            return false;
        }
        if (string_field(cd->descriptor, cd->id_field) == NULL) {
            snprintf(err, errlen, "service %s: %s has no string field '%s' for the aggregate id",
                     def->name, cd->descriptor->name, cd->id_field);
            return false;
        }
        for (size_t k = 0; k < i; k++) {
            if (strcmp(def->commands[k].descriptor->short_name, cd->descriptor->short_name) == 0) {
                snprintf(err, errlen, "service %s lists command %s twice", def->name,
                         cd->descriptor->short_name);
                return false;
            }
        }
    }
    char canon[JL_UUID_LEN + 1];
    if (def->default_aggregate_id != NULL &&
        jl_uuid_canonical(canon, def->default_aggregate_id) != JL_OK) {
        snprintf(err, errlen, "service %s: default_aggregate_id '%s' is not a UUID", def->name,
                 def->default_aggregate_id);
        return false;
    }
    return true;
}

jl_status jl_producer_open(jl_producer **out_producer, jl_conn *conn, const jl_service_def *def,
                           const jl_config *cfg, char *err, size_t errlen)
{
    jl_status s = JL_OK;
    jl_producer *p = calloc(1, sizeof(*p));
    char subjects[SUBJECT_MAX], cmd_subject[SUBJECT_MAX], query_subject[SUBJECT_MAX];
    jl_store_cfg sc;

    if (p == NULL) {
        snprintf(err, errlen, "out of memory");
        return JL_ERR_NOMEM;
    }
    /* The name makes subjects ("<name>.cmd.*", "<name>.events.>") and the queue group. */
    if (def->name == NULL || !jl_valid_name(def->name)) {
        snprintf(err, errlen,
                 "service name '%s' must be 1 to %d letters, digits, '_' and '-' (it goes into "
                 "subjects)",
                 def->name ? def->name : "", JL_NAME_MAX - 1);
        free(p);
        return JL_ERR_INVALID;
    }
    if (!check_def(def, err, errlen)) {
        free(p);
        return JL_ERR_INVALID;
    }
    p->def = def;
    p->conn = conn;
    p->retries = cfg->command_retries;
    p->snapshot_every = (uint64_t)cfg->snapshot_every;
    pthread_mutex_init(&p->mu, NULL);
    jl_buf_init(&p->commit, JL_MAX_COMMIT_BYTES);
    jl_buf_init(&p->reply_bytes, JL_MAX_REPLY_BYTES + 4096);
    jl_reply_init(&p->reply);
    p->append_timeout_ms = cfg->request_timeout_ms;
    p->max_inflight = JL_PRODUCER_MAX_INFLIGHT;
    /* Appends are at most max_inflight; command-id records written for repeats (see the
     * MaxPending below) come on top, up to max_cmds: the map grows for those. */
    jl_status ms = jl__ptrmap_init(&p->inflight, 2 * JL_PRODUCER_MAX_INFLIGHT);
    jl_buf_init(&p->kv_value, JL_MAX_COMMIT_BYTES + 1024);
    jl_buf_init(&p->snap_state, JL_MAX_COMMIT_BYTES);
    p->max_cmds = (size_t)(cfg->max_commands > 0 ? cfg->max_commands : JL_MAX_COMMANDS_DEFAULT);
    p->cache = jl__cache_create((size_t)cfg->cache_size, def->state_size);
    if (p->cache != NULL)
        jl__cache_on_evict(p->cache, on_evict, p);
    if (p->cache == NULL || ms != JL_OK) {
        snprintf(err, errlen, "out of memory");
        s = JL_ERR_NOMEM;
        goto done;
    }
    snprintf(subjects, sizeof(subjects), "%s.events.>", def->name);
    jl_store_cfg_init(&sc);
    jl_store_cfg_apply(&sc, cfg);
    sc.stream = def->stream;
    sc.subjects = subjects;
    s = jl_store_open(&p->store, conn, &sc, err, errlen);
    if (s == JL_OK) {
        atomic_store(&p->replicas, jl_store_replicas(p->store));
        /* Our own JetStream context: its asynchronous publishes report to on_ack, and it
         * allows more in flight than we ever put there, so a publish never stalls (under
         * p->mu, a stall would run out its whole wait: the acks that make room need the
         * lock). Appends are at most max_inflight, but a command-id record written for a
         * repeat found by a read (load_done) holds no append slot: each held command may
         * have one such record in flight. */
        jsOptions jo;
        jsOptions_Init(&jo);
        jo.Wait = cfg->request_timeout_ms;
        jo.PublishAsync.AckHandler = on_ack;
        jo.PublishAsync.AckHandlerClosure = p;
        jo.PublishAsync.MaxPending =
            (int64_t)(p->max_inflight + p->max_cmds + JL_MAX_SNAPSHOTS_INFLIGHT) + 64;
        natsStatus jns = natsConnection_JetStream(&p->js, jl_conn_nats(conn), &jo);
        char name[128];
        snprintf(name, sizeof(name), "%s-burst", cfg->name[0] ? cfg->name : def->name);
        if (jns == NATS_OK) {
            s = jl_conn_open_flags(&p->bulk, cfg, name, jl_conn_timeout_ms(conn),
                                   JL_CONN_BATCH_WRITES, err, errlen);
            if (s == JL_OK)
                jns = natsConnection_JetStream(&p->bulk_js, jl_conn_nats(p->bulk), &jo);
        }
        if (s == JL_OK && jns != NATS_OK) {
            snprintf(err, errlen, "cannot create a JetStream context: %s", natsStatus_GetText(jns));
            s = JL_ERR_NATS;
        }
    }
    if (s == JL_OK && def->state_type != NULL && cfg->snapshot_every > 0)
        s = open_bucket(p, cfg, "jl_snapshots_%s", "jetledger aggregate snapshots", 0,
                        &p->snapshots, err, errlen);
    if (s == JL_OK && cfg->command_ttl_s > 0)
        s = open_bucket(p, cfg, "jl_commands_%s", "jetledger command ids and their replies",
                        cfg->command_ttl_s, &p->commands, err, errlen);
    if (s == JL_OK && p->commands != NULL) {
        jsOptions lo;
        jsOptions_Init(&lo);
        lo.Wait = cfg->request_timeout_ms < JL_LOOKUP_WAIT_MS ? cfg->request_timeout_ms
                                                              : JL_LOOKUP_WAIT_MS;
        /* The same bucket through a context that waits less (JL_LOOKUP_WAIT_MS). */
        const char *bucket = kvStore_Bucket(p->commands);
        natsStatus lns = natsConnection_JetStream(&p->lookup_js, jl_conn_nats(conn), &lo);
        if (lns == NATS_OK)
            lns = js_KeyValue(&p->lookups, p->lookup_js, bucket);
        if (lns != NATS_OK) {
            snprintf(err, errlen, "cannot open KV bucket %s for lookups: %s", bucket,
                     natsStatus_GetText(lns));
            s = JL_ERR_NATS;
        } else if (jl__late_open(&p->late, p->lookups) != JL_OK) {
            snprintf(err, errlen, "cannot start the writer of late command-id records");
            s = JL_ERR_NOMEM;
        }
    }
    if (s != JL_OK)
        goto done;
    s = jl__ordered_create(&p->incoming, p->commands != NULL ? JL_LOOKUP_WORKERS : 0,
                           JL_LOOKUP_QUEUE, true, lookup_request, submit_request, p);
    /* Loads finish in any order: one slow read holds up no other aggregate's. */
    if (s == JL_OK)
        s = jl__ordered_create(&p->loads, JL_LOAD_WORKERS, JL_LOAD_QUEUE, false, load_read,
                               load_done, p);
    if (s != JL_OK) {
        snprintf(err, errlen, "cannot start the producer's worker threads: %s", jl_status_str(s));
        goto done;
    }
    snprintf(cmd_subject, sizeof(cmd_subject), "%s.cmd.*", def->name);
    snprintf(query_subject, sizeof(query_subject), "%s.query.*", def->name);
    natsStatus ns = jl_conn_subscribe(conn, &p->sub, cmd_subject, def->name, on_command, p);
    if (ns == NATS_OK)
        ns = natsSubscription_SetPendingLimits(p->sub, 65536, JL_MAX_HELD_COMMAND_BYTES);
    if (ns == NATS_OK)
        ns = jl_conn_subscribe(conn, &p->qsub, query_subject, def->name, on_query, p);
    if (ns != NATS_OK) {
        snprintf(err, errlen, "cannot subscribe to %s: %s", cmd_subject, natsStatus_GetText(ns));
        s = JL_ERR_NATS;
        goto done;
    }
    jl_log(JL_LOG_INFO, "producer ready",
           "\"subject\":\"%s\",\"queue\":\"%s\",\"stream\":\"%s\",\"replicas\":%d,"
           "\"cache_size\":%d,\"snapshot_every\":%d,\"max_commands\":%zu",
           cmd_subject, def->name, def->stream, jl_store_replicas(p->store), cfg->cache_size,
           p->snapshots ? cfg->snapshot_every : 0, p->max_cmds);
done:
    if (s != JL_OK) {
        jl_producer_close(p, 0);
        return s;
    }
    *out_producer = p;
    return JL_OK;
}

typedef struct flush_ctx {
    jl_producer *p;
    int64_t deadline_ms;
    size_t saved;
} flush_ctx;

static bool flush_entry(void *ctx, jl__cache_entry *e)
{
    flush_ctx *f = ctx;
    jl_producer *p = f->p;
    if (!unsaved(e))
        return true;
    while (p->snapshots_inflight >= JL_MAX_SNAPSHOTS_INFLIGHT) {
        if (jl__mono_ms() >= f->deadline_ms)
            return false;
        pthread_mutex_unlock(&p->mu); /* for on_ack; nothing else touches the cache now */
        nats_Sleep(1);
        pthread_mutex_lock(&p->mu);
    }
    if (save_snapshot(p, e->id, e)) {
        e->snap_seq = e->last_seq;
        f->saved++;
    }
    return true;
}

/*
 * Snapshot every cached aggregate that moved past its snapshot, before @p deadline_ms, so the
 * next producer (a restart, a rolling update) loads each in two reads instead of replaying up
 * to snapshot_every events. Only once no append is in flight: then nothing else changes the
 * cache. Returns the snapshots sent.
 */
static size_t flush_snapshots(jl_producer *p, int64_t deadline_ms)
{
    flush_ctx f = {.p = p, .deadline_ms = deadline_ms};
    pthread_mutex_lock(&p->mu);
    if (snapshots_on(p) && p->n_inflight == 0)
        jl__cache_each(p->cache, flush_entry, &f);
    pthread_mutex_unlock(&p->mu);
    return f.saved;
}

/* Wait until the asynchronous publishes of both contexts are acked, or @p deadline_ms. */
static void await_acks(jl_producer *p, int64_t deadline_ms)
{
    jsCtx *ctxs[2] = {p->js, p->bulk_js};
    for (int i = 0; i < 2; i++) {
        jsPubOptions po;
        jsPubOptions_Init(&po);
        po.MaxWait = deadline_ms - jl__mono_ms() > 0 ? deadline_ms - jl__mono_ms() : 1;
        if (ctxs[i] != NULL)
            js_PublishAsyncComplete(ctxs[i], &po);
    }
}

/* Drain *@p slot (no new requests are taken, the ones already received are answered), then
 * clear it under the lock before destroying it: acks still arriving look at the command
 * subscription (bursting). False when a handler (a long history query, say) may still be
 * running at the deadline. */
static bool close_sub(jl_producer *p, natsSubscription **slot, int64_t timeout_ms)
{
    natsSubscription *sub = *slot;
    if (sub == NULL)
        return true;
    bool done = jl_conn_sub_stop(p->conn, sub, timeout_ms, HANDLER_WAIT_MS);
    pthread_mutex_lock(&p->mu);
    *slot = NULL;
    pthread_mutex_unlock(&p->mu);
    jl_conn_sub_destroy(p->conn, sub);
    return done;
}

/* The producer's memory is left allocated rather than freed under a handler still running. */
static void not_freed(const char *why)
{
    jl_log(JL_LOG_ERROR, "producer not freed",
           "\"why\":\"%s\",\"hint\":\"its memory is left allocated rather than freed under "
           "it\"",
           why);
}

/* Free @p c, left unanswered at close. A jl_producer_handle() caller, which would wait for
 * ever, gets its answer; a requester over NATS gets none (the batching connection is closed by
 * now): it times out. */
static void drop(jl_producer *p, cmd *c)
{
    if (c->sync != NULL) {
        jl_reply_reset(&p->reply);
        jl_reply_error(&p->reply, JL_CODE_UNAVAILABLE,
                       "the producer closed before the command was confirmed; try again");
        answer_sync(c->sync, &p->reply);
    }
    cmd_free(p, c);
}

/* At close, past its wait: the commands whose appends were never confirmed, those queued behind
 * them and the backlog get no reply any more (their requesters time out, as the warning about
 * unconfirmed appends says): drop them. */
static void drop_unanswered(jl_producer *p)
{
    cmd *heads = NULL; /* the in-flight commands, then the backlog's, with their queues */
    for (size_t i = 0; i < p->inflight.cap; i++) {
        cmd *c = p->inflight.keys[i] != NULL ? p->inflight.vals[i] : NULL; /* vals go stale */
        p->inflight.keys[i] = NULL;
        p->inflight.n -= c != NULL;
        if (c != NULL) { /* NULL: a snapshot's put, no command */
            c->next = heads;
            heads = c;
        }
    }
    for (cmd *c = p->backlog_head, *next = NULL; c != NULL; c = next) {
        next = c->next;
        c->next = heads;
        heads = c;
    }
    p->backlog_head = p->backlog_tail = NULL;
    for (cmd *c = heads, *next = NULL; c != NULL; c = next) {
        next = c->next;
        if (c->entry != NULL) {
            for (cmd *q = c->entry->qhead, *qn = NULL; q != NULL; q = qn) {
                qn = q->next;
                drop(p, q);
            }
            c->entry->qhead = c->entry->qtail = NULL;
        }
        drop(p, c);
    }
}

/* Until no on_ack call is running. False, said in the log, when one still is after 10 s (it
 * never blocks that long unless the process is starved): the caller then leaves everything
 * allocated rather than free it under the handler. */
static bool wait_for_ack_handlers(jl_producer *p)
{
    for (int i = 0; i < HANDLER_WAIT_MS && atomic_load(&p->acking) > 0; i++)
        nats_Sleep(1);
    if (atomic_load(&p->acking) == 0)
        return true;
    not_freed("an ack handler is still running");
    return false;
}

bool jl_producer_close(jl_producer *p, int64_t timeout_ms)
{
    if (p == NULL)
        return true;
    /* One deadline for the whole close (a service's stop is bounded, and past its bound it
     * exits in the middle of it): the drains, the requests they hand on, the appends in
     * flight; what is left of it goes to the command-id records kept (late). */
    int64_t deadline = jl__mono_ms() + (timeout_ms > 0 ? timeout_ms : 1);
    int64_t late_ms = timeout_ms <= 0                     ? 0
                      : timeout_ms / 4 < JL_CLOSE_LATE_MS ? timeout_ms / 4
                                                          : JL_CLOSE_LATE_MS;
    atomic_store(&p->close_by_ms, deadline);
    bool subs_done = close_sub(p, &p->sub, deadline - jl__mono_ms());
    subs_done = close_sub(p, &p->qsub, deadline - jl__mono_ms()) && subs_done;
    if (!subs_done) {
        not_freed("a command or query handler is still running");
        return false;
    }
    jl__ordered_destroy(p->incoming); /* every request taken is submitted */
    p->incoming = NULL;
    /* Let the appends in flight be confirmed and answered before freeing their state. An ack
     * on one context may publish on the other (a command-id record): wait until none is left.
     * (js_PublishAsyncGetPendingList crashes in libnats 3.4.1 when nothing was ever published:
     * what is still unconfirmed at the deadline goes with the context.) */
    for (bool left = true; left && jl__mono_ms() < deadline - late_ms;) {
        await_acks(p, deadline - late_ms);
        pthread_mutex_lock(&p->mu);
        left = p->n_inflight > 0 || p->n_loading > 0;
        pthread_mutex_unlock(&p->mu);
        if (left)
            nats_Sleep(1);
    }
    /* A command still being read at the deadline is answered "unavailable", not started; an
     * ack handler that saw closing unset may still be handing a command to p->loads. */
    pthread_mutex_lock(&p->mu);
    p->closing = true;
    pthread_mutex_unlock(&p->mu);
    if (!wait_for_ack_handlers(p))
        return false;
    jl__ordered_destroy(p->loads);
    p->loads = NULL;
    size_t flushed = flush_snapshots(p, deadline - late_ms);
    if (flushed > 0)
        await_acks(p, deadline - late_ms);
    pthread_mutex_lock(&p->mu);
    size_t unconfirmed = p->n_inflight;
    uint64_t saved = p->stats.snapshots_saved;
    pthread_mutex_unlock(&p->mu);
    if (flushed > 0)
        jl_log(JL_LOG_INFO, "snapshots written at close",
               "\"sent\":%zu,\"confirmed_total\":%" PRIu64, flushed, saved);
    if (unconfirmed > 0)
        jl_log(JL_LOG_WARN, "closing with appends unconfirmed",
               "\"in_flight\":%zu,\"hint\":\"each is answered when confirmed or timed out (a "
               "few seconds); a client retrying with the same command id gets the right reply\"",
               unconfirmed);
    /* Every append and snapshot sent gets its handler called once: its ack, or a timeout
     * within JL_APPEND_ATTEMPT_MS (closing, nothing is sent again). Until then a handler may
     * start at any moment, even once the contexts are destroyed, before it can say so
     * (acking): wait for them all, or leave the memory allocated. */
    int64_t last_call = jl__mono_ms() + 2 * JL_APPEND_ATTEMPT_MS;
    for (size_t left = unconfirmed + 1; left > 0;) {
        pthread_mutex_lock(&p->mu);
        left = p->n_inflight + p->snapshots_inflight;
        pthread_mutex_unlock(&p->mu);
        if (left > 0 && jl__mono_ms() > last_call) {
            not_freed("appends are unconfirmed: their handlers may still run");
            return false;
        }
        if (left > 0)
            nats_Sleep(5);
    }
    /* Destroyed once their connections close: an ack may still come late to their reply
     * subscriptions. Nothing is waited for on them now, so their handler, given p, is called
     * no more (an ack for no publish in wait is dropped). */
    jl_conn_js_destroy(p->conn, p->js);
    jl_conn_js_destroy(p->bulk, p->bulk_js);
    /* A handler may still be finishing (pausing before a resend, say): it must be out before
     * what it uses (the bulk connection, the state) is closed or freed. */
    if (!wait_for_ack_handlers(p))
        return false;
    /* Writes what it holds: replies of the last burst (given a moment even when the appends
     * took the time: a drain of a connection that answers is quick). */
    int64_t left_ms = deadline - late_ms - jl__mono_ms();
    jl_conn_close(p->bulk, left_ms > 200 ? left_ms : 200);
    drop_unanswered(p);
    /* No ack handler is left to add a record; what is left of the close's time is theirs, and
     * at least what was kept for them (no more: a service's stop is bounded, and past its bound
     * it exits in the middle of it). */
    left_ms = deadline - jl__mono_ms();
    jl__late_close(p->late, left_ms > late_ms ? left_ms : late_ms);
    kvStore_Destroy(p->snapshots);
    kvStore_Destroy(p->commands);
    kvStore_Destroy(p->lookups);
    jsCtx_Destroy(p->lookup_js);
    jl_store_close(p->store);
    jl_buf_cleanup(&p->commit);
    jl_buf_cleanup(&p->kv_value);
    jl_buf_cleanup(&p->snap_state);
    jl_buf_cleanup(&p->reply_bytes);
    jl_reply_cleanup(&p->reply);
    for (cmd *c = p->free_cmds, *n = NULL; c != NULL; c = n) {
        n = c->next;
        cmd_destroy(c);
    }
    jl__ptrmap_free(&p->inflight);
    jl__cache_destroy(p->cache);
    pthread_mutex_destroy(&p->mu);
    free(p);
    return true;
}

bool jl_producer_conn_closed(jl_producer *p)
{
    return p->bulk != NULL && natsConnection_IsClosed(jl_conn_nats(p->bulk));
}

int64_t jl_producer_stalled_ms(jl_producer *p)
{
    pthread_mutex_lock(&p->mu);
    int64_t ms = p->n_cmds > 0 ? (mono_ns() - atomic_load(&p->progress_ns)) / 1000000 : 0;
    pthread_mutex_unlock(&p->mu);
    /* One worker that never comes back (a read blocked for good, an evolve that loops) while
     * the others go on: its item may wait out several request timeouts in a row (a snapshot,
     * a stream's last sequence, a leader's answer during an election), which are allowed it. */
    int64_t busy = jl__ordered_busy_ms(p->loads);
    int64_t lookup = jl__ordered_busy_ms(p->incoming);
    busy = (lookup > busy ? lookup : busy) - JL_WORKER_TIMEOUTS * p->append_timeout_ms;
    return busy > ms ? busy : ms;
}

void jl_producer_get_stats(jl_producer *p, jl_producer_stats *out)
{
    pthread_mutex_lock(&p->mu);
    *out = p->stats;
    out->in_progress = p->n_cmds;
    pthread_mutex_unlock(&p->mu);
}
