/*
 * Rebuild and verify jobs of a projector, and the administration requests that drive them
 * ("<projector>.admin.Rebuild|Verify|GetRebuildStatus|CancelRebuild"), GetDeadLetters, and
 * a process manager's outbox (GetOutbox, DismissOutbox: outbox.c).
 *
 * A job builds a new read model in a new file "<name>-<ms>.db" beside the live one, from an
 * ordered consumer of its own (no server state, the fastest way to read a stream), while the live
 * projector goes on applying and answering. The job follows the live checkpoint: when it has
 * applied everything up to it, it pauses live applying (apply_mu), applies the few messages the
 * live side took meanwhile, so both stand at the same stream sequence, and then either
 *   - rebuild: makes the new file the live one (pointer file, then a pointer swap under the
 *     switch lock: a query sees the old file or the new one, and the new one is never behind),
 *   - verify: compares canonical dumps of both and deletes the scratch file.
 * Any failure (NATS, disk full, cancel, the process killed) leaves the live file as it was; the
 * new file is deleted, or removed at the next start.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "jetledger/admin.pb-c.h"
#include "deadline.h"
#include "hash.h"
#include "jetledger/log.h"
#include "projector_int.h"

#define APPLY_BATCH 1000
#define MAX_DIFFS 5
#define CATCH_UP_LIMIT_MS 30000

typedef enum { JOB_IDLE, JOB_RUNNING, JOB_DONE, JOB_FAILED, JOB_CANCELLED } job_state;
static const char *const state_names[] = {"idle", "running", "done", "failed", "cancelled"};

/* Everything a status reply says; guarded by jl__job.mu. */
typedef struct job_status {
    bool verify;
    job_state state;
    char reason[128];
    uint64_t from_seq;
    uint64_t checkpoint;
    uint64_t target_seq;
    uint64_t applied;
    uint64_t total;
    uint64_t events;
    int64_t started_ns;
    int64_t finished_ns;
    char error[1024];
    char file[256];
    bool match;
    uint64_t verified_seq;
    char live_digest[24];
    char rebuilt_digest[24];
    char only_live[MAX_DIFFS][256];
    char only_rebuilt[MAX_DIFFS][256];
    int n_only_live, n_only_rebuilt;
} job_status;

struct jl__job {
    pthread_mutex_t mu;
    pthread_mutex_t start_mu; /* one start_job() at a time: the admin subscriptions and the
                                 version check each run on their own thread */
    pthread_t thread;
    bool has_thread;
    atomic_bool cancel;
    bool switching; /* under mu: past the last cancel check, the live model being replaced */
    /* request */
    bool verify;
    bool keep_old;
    bool from_trimmed; /* from the start of a stream whose first messages are gone (allowed) */
    uint64_t from_seq;
    int64_t from_time_ns;
    job_status st;
};

static int64_t now_ns(void)
{
    return jl__now_ns();
}

/* ---- status ---- */

static void status_set(jl__job *j, job_state state, const char *error)
{
    pthread_mutex_lock(&j->mu);
    j->st.state = state;
    if (error != NULL)
        snprintf(j->st.error, sizeof(j->st.error), "%s", error);
    if (state != JOB_RUNNING)
        j->st.finished_ns = now_ns();
    pthread_mutex_unlock(&j->mu);
}

static void status_progress(jl__job *j, uint64_t checkpoint, uint64_t applied, uint64_t total,
                            uint64_t events, uint64_t target)
{
    pthread_mutex_lock(&j->mu);
    j->st.checkpoint = checkpoint;
    j->st.applied = applied;
    j->st.total = total > applied ? total : applied;
    j->st.events = events;
    j->st.target_seq = target;
    pthread_mutex_unlock(&j->mu);
}

static void status_to_reply(jl__job *j, const char *instance, jl_reply *r)
{
    Jetledger__RebuildStatus m = JETLEDGER__REBUILD_STATUS__INIT;
    char *live[MAX_DIFFS], *rebuilt[MAX_DIFFS];
    pthread_mutex_lock(&j->mu);
    job_status st = j->st;
    pthread_mutex_unlock(&j->mu);
    m.job = st.started_ns == 0 ? "" : (st.verify ? "verify" : "rebuild");
    m.state = (char *)state_names[st.state];
    m.reason = st.reason;
    m.from_seq = st.from_seq;
    m.checkpoint = st.checkpoint;
    m.target_seq = st.target_seq;
    m.applied = st.applied;
    m.total = st.total;
    m.events = st.events;
    m.started_at_ns = st.started_ns;
    m.finished_at_ns = st.finished_ns;
    m.error = st.error;
    m.file = st.file;
    m.match = st.match;
    m.verified_seq = st.verified_seq;
    m.live_digest = st.live_digest;
    m.rebuilt_digest = st.rebuilt_digest;
    for (int i = 0; i < st.n_only_live; i++)
        live[i] = st.only_live[i];
    for (int i = 0; i < st.n_only_rebuilt; i++)
        rebuilt[i] = st.only_rebuilt[i];
    m.n_only_live = (size_t)st.n_only_live;
    m.only_live = live;
    m.n_only_rebuilt = (size_t)st.n_only_rebuilt;
    m.only_rebuilt = rebuilt;
    m.instance = (char *)instance;
    jl_reply_set_result(r, &m.base);
}

/* ---- the job ---- */

/* What the job reads from one source stream. */
typedef struct run_src {
    jl__reader reader;
    natsMsg *held; /* the next message, beyond the current target */
    uint64_t checkpoint;
    uint64_t applied; /* messages */
    uint64_t total;   /* messages to apply (grows while new ones arrive) */
} run_src;

typedef struct run_ctx {
    jl_projector *p;
    jl__job *j;
    jl_db *db;
    run_src src[JL_MAX_SOURCES];
    uint64_t events, dead;
    char path[1100];
    char file[256];
    char err[512];
} run_ctx;

static void sums(const run_ctx *c, uint64_t *out_applied, uint64_t *out_total)
{
    *out_applied = *out_total = 0;
    for (int i = 0; i < c->p->n_src; i++) {
        *out_applied += c->src[i].applied;
        *out_total += c->src[i].total;
    }
}

static jl_status subscribe(run_ctx *c, int si);

/* Apply messages with sequence <= @p target, up to APPLY_BATCH in one transaction, waiting up to
 * @p wait_ms for the first. Sets *out_idle when no message came in time. */
static jl_status apply_upto(run_ctx *c, int si, uint64_t target, int64_t wait_ms, bool *out_idle)
{
    run_src *rs = &c->src[si];
    natsMsg *batch[APPLY_BATCH];
    int n = 0;
    jl_status s = JL_OK;
    *out_idle = false;
    if (rs->reader.sub == NULL) {
        /* Its stream was missing at the start (subscribe), and made since: the live side
         * applied some of it. */
        s = subscribe(c, si);
        if (s == JL_OK && rs->reader.sub == NULL) {
            snprintf(c->err, sizeof(c->err),
                     "stream %s is missing, yet the live read model applied it up to %" PRIu64,
                     c->p->src[si].stream, target);
            s = JL_ERR_NOT_FOUND;
        }
        if (s != JL_OK)
            return s;
    }
    while (n < APPLY_BATCH) {
        natsMsg *m = rs->held;
        rs->held = NULL;
        if (m == NULL) {
            natsStatus ns =
                jl__reader_next(&rs->reader, APPLY_BATCH, n == 0 ? (int)wait_ms : 0, &m);
            if (ns == NATS_TIMEOUT) {
                *out_idle = n == 0;
                if (n == 0 && (rs->checkpoint < target || rs->total > rs->applied) &&
                    jl__reader_drained(&rs->reader)) {
                    /* Nothing more comes, short of the target or of what the last message
                     * said was pending: sequences not ours (a filter, deleted ones), or
                     * removed (a purge, limits, a delete) after the live side applied them
                     * or since that message was delivered, which the stream's first sequence
                     * tells. Then what was counted to come never will (caught_up() would
                     * wait for it until a new event came). */
                    if (rs->checkpoint < target) {
                        jl__reader_note_gap(&rs->reader, target);
                        s = jl__reader_check_gap(&rs->reader, c->err, sizeof(c->err));
                        if (s != JL_OK)
                            return s;
                        rs->checkpoint = target;
                    }
                    rs->total = rs->applied;
                }
                break;
            }
            if (ns != NATS_OK) {
                snprintf(c->err, sizeof(c->err), "reading the stream failed: %s",
                         natsStatus_GetText(ns));
                s = jl_status_from_nats(ns);
                break;
            }
        }
        uint64_t seq = 0, pending = 0;
        if (!jl__msg_seq(m, &seq, NULL, &pending)) {
            natsMsg_Destroy(m);
            continue;
        }
        if (seq > target) {
            /* Beyond the target: keep it for when the target moves. Read in order, nothing at
             * or below the target is left to come (what the stream no longer holds, removed
             * by its limits or a purge, never will): the rebuild stands at the target. */
            rs->held = m;
            break;
        }
        batch[n++] = m;
        rs->total = rs->applied + (uint64_t)n + pending;
    }
    /* Messages removed before they were read (a stream's limits trim while a rebuild from
     * its first messages runs): the new model would lack them, and replace one that has. */
    if (s == JL_OK)
        s = jl__reader_check_gap(&rs->reader, c->err, sizeof(c->err));
    if (s == JL_OK && n > 0) {
        jl__batch_result io = {.source = si, .checkpoint = rs->checkpoint, .quiet = true};
        s = jl__proj_apply_batch(c->p, c->db, batch, n, &io, c->err, sizeof(c->err));
        if (s == JL_OK) {
            rs->checkpoint = io.checkpoint;
            rs->applied += io.applied;
            c->events += io.events;
            c->dead += io.dead;
        }
    }
    if (s == JL_OK && rs->held != NULL && rs->checkpoint < target)
        rs->checkpoint = target;
    for (int i = 0; i < n; i++)
        natsMsg_Destroy(batch[i]);
    return s;
}

/* A read transaction on the live file, begun now: what it reads stays as of this moment while
 * the live side goes on applying (WAL). Called with live paused, at the verified sequence. */
static jl_status open_snapshot(run_ctx *c, jl_db **out)
{
    jl_status s = jl_db_open(out, c->p->db_path, true, c->err, sizeof(c->err));
    if (s == JL_OK)
        s = jl_db_begin(*out, false);
    sqlite3_stmt *st = s == JL_OK ? jl_db_stmt(*out, "SELECT count(*) FROM sqlite_master") : NULL;
    int rc = SQLITE_ROW;
    if (s == JL_OK && (st == NULL || (rc = sqlite3_step(st)) != SQLITE_ROW)) /* it starts here */
        s = st == NULL ? JL_ERR_SQLITE : jl_db_fail(*out, rc, "cannot begin a read");
    if (st != NULL)
        sqlite3_reset(st);
    if (s != JL_OK && *out != NULL) {
        snprintf(c->err, sizeof(c->err), "cannot read the live model: %s", jl_db_errmsg(*out));
        jl_db_close(*out);
        *out = NULL;
    }
    return s;
}

/* One side of a comparison: a dump read a row at a time, and the digest of what was read. */
typedef struct dump_side {
    jl_db_dump_cursor *cur;
    const char *table, *row;
    size_t len;
    bool end;
    uint64_t digest; /* of the text jl_db_dump() gives: "<table>|<row>\n" a row */
} dump_side;

static jl_status side_next(dump_side *d)
{
    jl_status s = jl_db_dump_next(d->cur, &d->table, &d->row, &d->len, &d->end);
    if (s == JL_OK && !d->end) {
        d->digest = jl__fnv1a64_more(d->digest, d->table, strlen(d->table));
        d->digest = jl__fnv1a64_more(d->digest, "|", 1);
        d->digest = jl__fnv1a64_more(d->digest, d->row, d->len);
        d->digest = jl__fnv1a64_more(d->digest, "\n", 1);
    }
    return s;
}

/* Order of two rows as the dumps give them: by table name, then by the row's text. */
static int side_cmp(const dump_side *a, const dump_side *b)
{
    if (a->end || b->end)
        return a->end - b->end;
    int t = strcmp(a->table, b->table);
    if (t != 0)
        return t;
    size_t m = a->len < b->len ? a->len : b->len;
    int r = memcmp(a->row, b->row, m);
    return r != 0 ? r : (a->len > b->len) - (a->len < b->len);
}

/* Note @p d's row as one only its side has (the first MAX_DIFFS of them). */
static void side_only(const dump_side *d, char out[MAX_DIFFS][256], int *n)
{
    if (*n < MAX_DIFFS)
        snprintf(out[(*n)++], 256, "%s|%.*s", d->table, (int)(d->len < 200 ? d->len : 200), d->row);
}

/*
 * Compare the rebuilt model with @p live_db (a snapshot at the same sequence): both dumps are
 * read a row at a time and merged (each is in table, then row order), so that memory stays
 * bounded whatever the model's size; the digests are of the whole dumps.
 */
static jl_status compare(run_ctx *c, jl_db *live_db)
{
    dump_side live = {.digest = JL__FNV64_BASIS}, rebuilt = {.digest = JL__FNV64_BASIS};
    char only_live[MAX_DIFFS][256], only_rebuilt[MAX_DIFFS][256];
    int n_live = 0, n_rebuilt = 0;
    bool differ = false;
    jl_db *failed = live_db; /* the side a failure comes from */
    jl_status s = jl_db_dump_open(live_db, &live.cur);
    if (s == JL_OK && (s = jl_db_dump_open(c->db, &rebuilt.cur)) != JL_OK)
        failed = c->db;
    if (s == JL_OK && (s = side_next(&live)) == JL_OK && (s = side_next(&rebuilt)) != JL_OK)
        failed = c->db;
    /* A large model takes minutes: a cancel or a stop is not kept waiting for it (nor the live
     * file's WAL, which the snapshot keeps from being reset meanwhile). */
    for (uint64_t rows = 1; s == JL_OK && !(live.end && rebuilt.end); rows++) {
        if (rows % 1024 == 0 && jl__jobs_cancelled(c->p)) {
            snprintf(c->err, sizeof(c->err), "cancelled");
            s = JL_ERR_STOPPED;
            break;
        }
        int cmp = side_cmp(&live, &rebuilt);
        differ = differ || cmp != 0;
        if (cmp < 0)
            side_only(&live, only_live, &n_live);
        else if (cmp > 0)
            side_only(&rebuilt, only_rebuilt, &n_rebuilt);
        if (cmp <= 0)
            s = side_next(&live);
        if (s == JL_OK && cmp >= 0 && (s = side_next(&rebuilt)) != JL_OK)
            failed = c->db;
    }
    jl_db_dump_close(live.cur);
    jl_db_dump_close(rebuilt.cur);
    if (s != JL_OK && s != JL_ERR_STOPPED) {
        snprintf(c->err, sizeof(c->err), "cannot dump the %s read model: %s",
                 failed == live_db ? "live" : "rebuilt", jl_db_errmsg(failed));
        return s;
    }
    if (s != JL_OK)
        return s;
    jl__job *j = c->j;
    pthread_mutex_lock(&j->mu);
    j->st.verified_seq = c->src[0].checkpoint;
    snprintf(j->st.live_digest, sizeof(j->st.live_digest), "%016" PRIx64, live.digest);
    snprintf(j->st.rebuilt_digest, sizeof(j->st.rebuilt_digest), "%016" PRIx64, rebuilt.digest);
    j->st.match = !differ;
    memcpy(j->st.only_live, only_live, sizeof(only_live));
    memcpy(j->st.only_rebuilt, only_rebuilt, sizeof(only_rebuilt));
    j->st.n_only_live = n_live;
    j->st.n_only_rebuilt = n_rebuilt;
    pthread_mutex_unlock(&j->mu);
    return JL_OK;
}

/*
 * A rebuild from a time switches at the live checkpoint @p target of source @p si, and the live
 * side goes on from target + 1: nothing of the source's filter after the target may be older
 * than the time (the live model has not applied it yet, and would then apply it on top of a
 * model that starts later). Its first such message tells: messages are stored in time order.
 */
static jl_status check_time_start(run_ctx *c, int si, uint64_t target)
{
    /* The job's reader starts where the stream reached the time: at or before target + 1,
     * everything after the target is from the time on, and nothing needs reading. */
    if (c->src[si].reader.start_seq != 0 && c->src[si].reader.start_seq <= target + 1)
        return JL_OK;
    jl__reader r;
    natsMsg *m = NULL;
    jsConsumerInfo *ci = NULL;
    jsMsgMetaData *meta = NULL;
    jl_status s = jl__reader_open(&r, c->p, si, target + 1, 0, c->err, sizeof(c->err));
    if (s != JL_OK)
        return s;
    /* Nothing pending: none at all (without waiting out a fetch). */
    natsStatus ns = natsSubscription_GetConsumerInfo(&ci, r.sub, NULL, NULL);
    bool none = ns == NATS_OK && ci->NumPending == 0;
    jsConsumerInfo_Destroy(ci);
    if (ns == NATS_OK && !none)
        ns = jl__reader_next(&r, 1, 2000, &m);
    if (ns == NATS_OK && m != NULL)
        ns = natsMsg_GetMetaData(&meta, m);
    if (ns != NATS_OK) {
        snprintf(c->err, sizeof(c->err), "cannot read stream %s after sequence %" PRIu64 ": %s",
                 c->p->src[si].stream, target, natsStatus_GetText(ns));
        s = jl_status_from_nats(ns);
    } else if (meta != NULL && meta->Timestamp < c->j->from_time_ns) {
        snprintf(c->err, sizeof(c->err),
                 "stream %s: the live read model has not applied sequence %" PRIu64
                 ", older than the given time, yet (it stands at %" PRIu64
                 "); run the rebuild again once it has caught up",
                 c->p->src[si].stream, meta->Sequence.Stream, target);
        s = JL_ERR_INVALID;
    }
    jsMsgMetaData_Destroy(meta);
    natsMsg_Destroy(m);
    jl__reader_close(&r);
    return s;
}

static jl_status subscribe(run_ctx *c, int si)
{
    jl_projector *p = c->p;
    jl__job *j = c->j;
    run_src *rs = &c->src[si];
    jl_status s =
        jl__reader_open(&rs->reader, p, si, j->from_seq, j->from_time_ns, c->err, sizeof(c->err));
    if (s == JL_ERR_NOT_FOUND && si > 0) {
        /* A second source's stream not made yet (its service never ran): the live side reads
         * none of it either. Read once the live side has applied some (apply_upto). */
        c->err[0] = 0;
        return JL_OK;
    }
    if (s != JL_OK)
        return s;
    jsConsumerInfo *ci = NULL;
    if (natsSubscription_GetConsumerInfo(&ci, rs->reader.sub, NULL, NULL) == NATS_OK) {
        rs->total = ci->NumPending + ci->Delivered.Consumer;
        jsConsumerInfo_Destroy(ci);
    }
    return JL_OK;
}

/* Source @p si has applied everything up to @p target and nothing more is known to come. */
static bool caught_up(const run_src *rs, uint64_t target)
{
    return rs->checkpoint >= target && (rs->held != NULL || rs->total <= rs->applied);
}

static void run_job(jl_projector *p, jl__job *j)
{
    run_ctx c = {.p = p, .j = j};
    jl_status s = JL_OK;
    bool paused_live = false, held_outbox = false;

    /* "<name>.rebuild-<ms>.db": a projector's name has no '.', so no other projector's file
     * can look like it (a start removes these when they are not live). A name in use (the live
     * file's, after the clock stepped back) is not taken, as a failure removes the job's file:
     * the next millisecond is. Only this process makes these files in its data directory. */
    int64_t ms = now_ns() / 1000000;
    bool named = false;
    for (int tries = 0; tries < 1000 && !named; tries++, ms++) {
        snprintf(c.file, sizeof(c.file), "%s.%s-%" PRId64 ".db", p->def->name,
                 j->verify ? "verify" : "rebuild", ms);
        snprintf(c.path, sizeof(c.path), "%s/%s", p->data_dir, c.file);
        named = strcmp(c.path, p->db_path) != 0 && access(c.path, F_OK) != 0;
    }
    pthread_mutex_lock(&j->mu);
    snprintf(j->st.file, sizeof(j->st.file), "%s", c.file);
    pthread_mutex_unlock(&j->mu);

    if (!named) {
        /* Never one in use: a failure removes the job's file, which could be the live one. */
        snprintf(c.err, sizeof(c.err), "no free name for the new file in %.400s (1000 taken)",
                 p->data_dir);
        c.path[0] = 0;
        s = JL_ERR_INTERNAL;
    } else {
        s = jl_db_open(&c.db, c.path, false, c.err, sizeof(c.err));
    }
    if (s == JL_OK && p->rebuild_max_bytes > 0) {
        /* The page size in force (SQLite's default is a build setting, 4096 in Debian's). */
        char pragma[96];
        sqlite3_stmt *ps = jl_db_stmt(c.db, "PRAGMA page_size");
        int64_t page = 4096;
        if (ps != NULL && sqlite3_step(ps) == SQLITE_ROW && sqlite3_column_int64(ps, 0) > 0)
            page = sqlite3_column_int64(ps, 0);
        if (ps != NULL)
            sqlite3_reset(ps);
        snprintf(pragma, sizeof(pragma), "PRAGMA max_page_count=%" PRId64,
                 p->rebuild_max_bytes / page > 0 ? p->rebuild_max_bytes / page : 1);
        s = jl_db_exec(c.db, pragma);
    }
    if (s == JL_OK)
        s = jl__proj_create_schema(p, c.db, c.err, sizeof(c.err));
    for (int i = 0; s == JL_OK && i < p->n_src; i++)
        s = subscribe(&c, i);
    /* From the start: each stream held its first message when the job was checked (or the job
     * would not run), so its reader expects that one. A purge or trim since, before the reader
     * opened, is then a gap it tells, not a start further on. */
    for (int i = 0;
         s == JL_OK && j->from_seq == 0 && j->from_time_ns == 0 && !j->from_trimmed && i < p->n_src;
         i++) {
        if (c.src[i].reader.first_seq > 1)
            c.src[i].reader.first_seq = 1;
    }
    /* From a sequence, the same: the stream held it when the job was checked (a stream whose
     * limits trim it all the time may not by the time the reader opens). */
    if (s == JL_OK && j->from_seq > 0 && c.src[0].reader.first_seq > j->from_seq)
        c.src[0].reader.first_seq = j->from_seq;

    /* Follow each source's live checkpoint until every one is caught up with it. */
    int64_t last_progress = 0;
    uint64_t applied = 0, total = 0;
    while (s == JL_OK) {
        if (atomic_load(&j->cancel) || atomic_load(&p->stopping)) {
            s = JL_ERR_STOPPED;
            snprintf(c.err, sizeof(c.err), "cancelled");
            break;
        }
        bool all = true, idle = false;
        for (int i = 0; s == JL_OK && i < p->n_src; i++) {
            uint64_t target = jl__proj_checkpoint(p, i);
            if (i == 0 && j->from_seq > 0 && target < j->from_seq)
                target = j->from_seq - 1;
            if (caught_up(&c.src[i], target))
                continue;
            all = false;
            s = apply_upto(&c, i, target, p->n_src == 1 ? 250 : 50, &idle);
        }
        if (s != JL_OK)
            break;
        if (all) {
            /* Caught up with the live side: pause it and finish at exactly its checkpoints.
             * A process manager's outbox sender is shut out first, before live applying
             * pauses: it holds outbox_mu for a whole request, which must not hold up live
             * applying too (see jl__proj_switch). */
            held_outbox = !j->verify && p->def->outbox;
            if (held_outbox) /* the sender may be waiting for a reply: it lets go at once */
                jl__outbox_lock(p);
            pthread_mutex_lock(&p->apply_mu);
            paused_live = true;
            int64_t deadline = jl__mono_ns() + (int64_t)CATCH_UP_LIMIT_MS * 1000000;
            for (int i = 0; s == JL_OK && i < p->n_src; i++) {
                uint64_t target = jl__proj_checkpoint(p, i);
                while (s == JL_OK && c.src[i].checkpoint < target) {
                    if (atomic_load(&j->cancel) || atomic_load(&p->stopping)) {
                        s = JL_ERR_STOPPED; /* live applying waits: not for up to 30 s */
                        snprintf(c.err, sizeof(c.err), "cancelled");
                        break;
                    }
                    jl__proj_hold_beat(p);
                    s = apply_upto(&c, i, target, 1000, &idle);
                    if (s == JL_OK && idle && jl__mono_ns() > deadline) {
                        snprintf(c.err, sizeof(c.err),
                                 "stream %s ended at %" PRIu64
                                 " before the live checkpoint %" PRIu64,
                                 p->src[i].stream, c.src[i].checkpoint, target);
                        s = JL_ERR_INTERNAL;
                    }
                }
                /* (A source whose stream was never made has nothing before the time.) */
                if (s == JL_OK && j->from_time_ns != 0 && c.src[i].reader.sub != NULL)
                    s = check_time_start(&c, i, target);
                /* Messages the live side filtered out never come; both stand at target now. */
                c.src[i].checkpoint = target;
            }
            jl_status cs = s == JL_OK ? jl_db_begin(c.db, true) : s;
            for (int i = 0; cs == JL_OK && i < p->n_src; i++) {
                cs = jl__proj_save_checkpoint(p, c.db, i, c.src[i].checkpoint, 0);
                if (cs == JL_OK)
                    cs = jl__proj_copy_stream_created(p, c.db, i);
            }
            if (cs == JL_OK)
                cs = jl_db_commit(c.db);
            if (s == JL_OK && cs != JL_OK) {
                jl_db_rollback(c.db);
                snprintf(c.err, sizeof(c.err), "%s", jl_db_errmsg(c.db));
                s = cs;
            }
            break;
        }
        int64_t t = jl__mono_ns();
        if (t - last_progress > 100 * 1000000LL) {
            sums(&c, &applied, &total);
            status_progress(j, c.src[0].checkpoint, applied, total, c.events,
                            jl__proj_checkpoint(p, 0));
            last_progress = t;
        }
    }
    sums(&c, &applied, &total);
    status_progress(j, c.src[0].checkpoint, applied, total, c.events, c.src[0].checkpoint);

    if (s == JL_OK && j->verify) {
        /* Live waits only while its snapshot is taken, not for the two dumps. */
        jl_db *snap = NULL;
        s = open_snapshot(&c, &snap);
        if (paused_live) {
            pthread_mutex_unlock(&p->apply_mu);
            paused_live = false;
        }
        if (s == JL_OK)
            s = compare(&c, snap);
        if (snap != NULL) {
            jl_db_rollback(snap);
            jl_db_close(snap);
        }
    } else if (s == JL_OK) {
        /* The cap was the rebuild's: the connection becomes the live writer, which must not
         * inherit it (max_page_count belongs to the connection, not the file). */
        if (p->rebuild_max_bytes > 0)
            s = jl_db_exec(c.db, "PRAGMA max_page_count=4294967294");
        if (s != JL_OK)
            snprintf(c.err, sizeof(c.err), "%s", jl_db_errmsg(c.db));
        if (s == JL_OK) {
            /* The last point a cancel is taken: from here a cancel is refused as too late,
             * not answered "ok" and then overtaken by the switch. */
            pthread_mutex_lock(&j->mu);
            if (atomic_load(&j->cancel) || atomic_load(&p->stopping)) {
                s = JL_ERR_STOPPED;
                snprintf(c.err, sizeof(c.err), "cancelled");
            } else {
                j->switching = true;
            }
            pthread_mutex_unlock(&j->mu);
        }
        if (s == JL_OK) {
            jl__proj_hold_beat(p);
            s = jl__proj_switch(p, c.db, c.file, j->keep_old, c.err, sizeof(c.err));
            c.db = NULL; /* owned by the projector now (or closed on failure) */
        }
        if (s == JL_OK)
            atomic_store(&p->paused, false);
    }
    if (paused_live)
        pthread_mutex_unlock(&p->apply_mu);
    if (held_outbox)
        pthread_mutex_unlock(&p->outbox_mu);

    for (int i = 0; i < p->n_src; i++) {
        natsMsg_Destroy(c.src[i].held);
        jl__reader_close(&c.src[i].reader);
    }
    if (c.db != NULL || s != JL_OK || j->verify) {
        jl_db_close(c.db);
        if ((s != JL_OK || j->verify) && c.path[0] != 0)
            jl__proj_remove_db(c.path);
    }
    if (s == JL_OK) {
        status_set(j, JOB_DONE, NULL);
        jl_log(JL_LOG_INFO, j->verify ? "verify finished" : "rebuild finished",
               "\"checkpoint\":%" PRIu64 ",\"applied\":%" PRIu64 ",\"events\":%" PRIu64
               ",\"dead_letters\":%" PRIu64,
               c.src[0].checkpoint, applied, c.events, c.dead);
    } else {
        /* A switch's own errors say what became of the live model; the others are the new
         * file's (or reading the stream or the live model), before anything changed. */
        char msg[700];
        /* j->switching: written by this thread alone (read under mu by a cancel). */
        bool switching = j->switching;
        bool disk = !switching && (s == JL_ERR_DISK_FULL || s == JL_ERR_IO);
        snprintf(msg, sizeof(msg), "%s%s%s", c.err,
                 !disk                                               ? ""
                 : s == JL_ERR_DISK_FULL && p->rebuild_max_bytes > 0 ? " (the new file reached "
                                                                       "--rebuild-max-mb, or the "
                                                                       "disk is full)"
                 : s == JL_ERR_DISK_FULL ? " (no space for the new file)"
                                         : " (no space or no write access for the new file)",
                 switching ? "" : ": the live read model is untouched");
        status_set(j, s == JL_ERR_STOPPED ? JOB_CANCELLED : JOB_FAILED, msg);
        char esc[800];
        jl_log(JL_LOG_ERROR, j->verify ? "verify failed" : "rebuild failed",
               "\"status\":\"%s\",\"error\":\"%s\"", jl_status_str(s),
               jl_log_str(esc, sizeof(esc), msg));
    }
}

static void *job_thread(void *arg)
{
    jl_projector *p = arg;
    run_job(p, p->job);
    return NULL;
}

static jl_status start_job_locked(jl_projector *p, bool verify, uint64_t from_seq,
                                  int64_t from_time_ns, bool keep_old, bool automatic,
                                  const char *reason, char *err, size_t errlen);

/* Check that no job runs and start one, as one step: two requests at once start one job. With
 * @p r, the job's status into it in the same step: a job that fails at once and another
 * started next (by the other admin subscription, a version rebuild's retry) is not described
 * as this one. */
static jl_status start_job(jl_projector *p, bool verify, uint64_t from_seq, int64_t from_time_ns,
                           bool keep_old, bool automatic, const char *reason, char *err,
                           size_t errlen, jl_reply *r)
{
    pthread_mutex_lock(&p->job->start_mu);
    jl_status s = start_job_locked(p, verify, from_seq, from_time_ns, keep_old, automatic, reason,
                                   err, errlen);
    if (s == JL_OK && r != NULL)
        status_to_reply(p->job, p->instance, r);
    pthread_mutex_unlock(&p->job->start_mu);
    return s;
}

/* Check the request against the stream, then start the job's thread. Under start_mu.
 * @p automatic: a version rebuild (no one to refuse: it goes on where it can). */
static jl_status start_job_locked(jl_projector *p, bool verify, uint64_t from_seq,
                                  int64_t from_time_ns, bool keep_old, bool automatic,
                                  const char *reason, char *err, size_t errlen)
{
    jl__job *j = p->job;
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    bool from_trimmed = false;

    pthread_mutex_lock(&j->mu);
    bool busy = j->st.state == JOB_RUNNING;
    pthread_mutex_unlock(&j->mu);
    if (busy) {
        snprintf(err, errlen,
                 "a %s is already running (its progress: the projector's log, or a request on "
                 "%s.admin.GetRebuildStatus; %s.admin.CancelRebuild stops it)",
                 j->verify ? "verify" : "rebuild", p->def->name, p->def->name);
        return JL_ERR_CONFLICT;
    }
    if (from_seq != 0 && from_time_ns != 0) {
        snprintf(err, errlen, "give from_seq or from_time, not both");
        return JL_ERR_INVALID;
    }
    if (verify && atomic_load(&p->paused)) {
        /* The live file is of the older projection version: this code would rebuild it
         * differently, and a verify would report that, not a fault. */
        snprintf(err, errlen,
                 "projector %s waits for its version rebuild to switch: its read model is of "
                 "the older projection, which this code builds differently; verify once it has "
                 "switched",
                 p->def->name);
        return JL_ERR_CONFLICT;
    }
    if (from_seq != 0 && p->n_src > 1) {
        snprintf(err, errlen,
                 "projector %s reads %d streams: a sequence names a point in one; give a time",
                 p->def->name, p->n_src);
        return JL_ERR_INVALID;
    }
    natsStatus ns = js_GetStreamInfo(&si, p->js, p->src[0].stream, NULL, &jerr);
    if (ns != NATS_OK) {
        snprintf(err, errlen, "cannot read stream %s: %s", p->src[0].stream,
                 natsStatus_GetText(ns));
        return jerr == JSStreamNotFoundErr ? JL_ERR_NOT_FOUND : jl_status_from_nats(ns);
    }
    uint64_t first = si->State.FirstSeq, last = si->State.LastSeq;
    jsStreamInfo_Destroy(si);
    if (from_seq != 0 && last != 0 && from_seq > last) {
        snprintf(err, errlen, "from-seq %" PRIu64 " is past the stream's last sequence %" PRIu64,
                 from_seq, last);
        return JL_ERR_INVALID;
    }
    uint64_t live = jl__proj_checkpoint(p, 0);
    if (from_seq != 0 && from_seq > live + 1) {
        /* The switch happens at the live checkpoint: live would then apply the events before
         * from-seq that the request leaves out. */
        snprintf(err, errlen,
                 "from-seq %" PRIu64 " is past the live read model's checkpoint %" PRIu64
                 " + 1: a rebuild starts at or before where the live model stands",
                 from_seq, live);
        return JL_ERR_INVALID;
    }
    if (from_seq != 0 && from_seq < first) {
        snprintf(err, errlen,
                 "from-seq %" PRIu64 " is before the first retained sequence %" PRIu64
                 " of stream %s",
                 from_seq, first, p->src[0].stream);
        return JL_ERR_INVALID;
    }
    if (from_time_ns > now_ns()) {
        snprintf(err, errlen, "from-time is in the future");
        return JL_ERR_INVALID;
    }
    /* From a time before what the stream still holds: the new model would lack what the
     * removed messages after that time built, and replace the one that has it. */
    for (int i = 0; from_time_ns != 0 && i < p->n_src; i++) {
        jl_status cs = jl__proj_check_from_time(p, i, from_time_ns, err, errlen);
        if (cs != JL_OK)
            return cs;
    }
    /* From the start of a stream whose first messages are gone (its limits, a purge): the new
     * model would lack what they built, and replace the one that has it. */
    for (int i = 0; from_seq == 0 && from_time_ns == 0 && i < p->n_src; i++) {
        uint64_t fi = i == 0 ? first : 0;
        if (i > 0) {
            /* Unread is not untrimmed: no start then (a version rebuild tries again). */
            jerr = 0;
            ns = js_GetStreamInfo(&si, p->js, p->src[i].stream, NULL, &jerr);
            if (ns == NATS_OK) {
                fi = si->State.FirstSeq;
                jsStreamInfo_Destroy(si);
                si = NULL;
            } else if (jerr != JSStreamNotFoundErr) {
                snprintf(err, errlen, "cannot read stream %s: %s", p->src[i].stream,
                         natsStatus_GetText(ns));
                return jl_status_from_nats(ns);
            }
        }
        if (fi <= 1)
            continue;
        if (automatic) {
            /* The new version cannot run on the old file: go on, and keep the old one. */
            keep_old = true;
            from_trimmed = true;
            jl_log(JL_LOG_WARN, "stream no longer holds its first messages",
                   "\"stream\":\"%s\",\"first_seq\":%" PRIu64 ",\"detail\":\"the rebuilt model "
                   "lacks what messages 1 to %" PRIu64
                   " built; the old model is kept (<name>.replaced-<ms>.db)\"",
                   p->src[i].stream, fi, fi - 1);
            continue;
        }
        snprintf(err, errlen,
                 "stream %s no longer holds sequences 1 to %" PRIu64
                 " (removed by its limits or a purge): %s from its start would lack what they "
                 "built%s",
                 p->src[i].stream, fi - 1, verify ? "a verify" : "a rebuild",
                 verify ? "" : "; give --from-seq or --from-time to rebuild from what it holds");
        return JL_ERR_INVALID;
    }
    if (j->has_thread) {
        pthread_join(j->thread, NULL);
        j->has_thread = false;
    }
    pthread_mutex_lock(&j->mu);
    memset(&j->st, 0, sizeof(j->st));
    j->st.verify = verify;
    j->st.state = JOB_RUNNING;
    j->st.started_ns = now_ns();
    j->st.from_seq = from_seq;
    snprintf(j->st.reason, sizeof(j->st.reason), "%s", reason);
    j->verify = verify;
    j->keep_old = keep_old;
    j->from_trimmed = from_trimmed;
    j->from_seq = from_seq;
    j->from_time_ns = from_time_ns;
    j->switching = false;
    atomic_store(&j->cancel, false);
    pthread_mutex_unlock(&j->mu);
    if (pthread_create(&j->thread, NULL, job_thread, p) != 0) {
        status_set(j, JOB_FAILED, "cannot start a thread");
        snprintf(err, errlen, "cannot start a thread");
        return JL_ERR_NOMEM;
    }
    j->has_thread = true;
    jl_log(JL_LOG_INFO, verify ? "verify started" : "rebuild started",
           "\"from_seq\":%" PRIu64 ",\"from_time_ns\":%" PRId64 ",\"reason\":\"%s\"", from_seq,
           from_time_ns, reason);
    return JL_OK;
}

void jl__jobs_start_version_rebuild(jl_projector *p)
{
    char reason[128], err[512];
    snprintf(reason, sizeof(reason), "projection version %d -> %d", p->db_version, p->def->version);
    jl_status s = start_job(p, false, 0, 0, false, true, reason, err, sizeof(err), NULL);
    if (s != JL_OK)
        jl_log(JL_LOG_ERROR, "version rebuild not started", "\"error\":\"%s\"", err);
}

bool jl__jobs_running(jl_projector *p)
{
    pthread_mutex_lock(&p->job->mu);
    bool r = p->job->st.state == JOB_RUNNING;
    pthread_mutex_unlock(&p->job->mu);
    return r;
}

/* ---- administration requests ---- */

/* Cancel the job running, if it is the one started at @p started_ns (0: whichever): a cancel
 * meant for a job that ended must not stop the next one, someone else's. */
static jl_status cancel_job(jl__job *j, int64_t started_ns, char *err, size_t errlen)
{
    jl_status s = JL_OK;
    pthread_mutex_lock(&j->mu);
    if (j->st.state != JOB_RUNNING) {
        snprintf(err, errlen, "no rebuild or verify is running: nothing cancelled");
        s = JL_ERR_NOT_FOUND;
    } else if (started_ns != 0 && started_ns != j->st.started_ns) {
        snprintf(err, errlen,
                 "the %s running started at %" PRId64 " ns, not the job to cancel (started at "
                 "%" PRId64 "): nothing cancelled",
                 j->st.verify ? "verify" : "rebuild", j->st.started_ns, started_ns);
        s = JL_ERR_NOT_FOUND;
    } else if (j->switching) {
        snprintf(err, errlen,
                 "too late to cancel: the rebuild has caught up and is switching to its new "
                 "file");
        s = JL_ERR_CONFLICT;
    } else {
        atomic_store(&j->cancel, true);
    }
    pthread_mutex_unlock(&j->mu);
    return s;
}

/* Rows a listing request is answered with: @p asked, 100 for 0, at most 500 (admin.proto). */
static unsigned admin_page(uint32_t asked)
{
    return asked == 0 ? 100 : asked > 500 ? 500 : asked;
}

static void answer_admin(jl_projector *p, const char *name, const void *data, size_t len,
                         jl_reply *r)
{
    char err[512] = "";
    jl_status s = JL_OK;
    if (len > JL_MAX_QUERY_BYTES) {
        jl_reply_error(r, JL_CODE_INVALID, "request of %zu bytes is too large", len);
        return;
    }
    if (strcmp(name, "Rebuild") == 0) {
        Jetledger__Rebuild *m = (Jetledger__Rebuild *)jl_request_unpack(
            &jetledger__rebuild__descriptor, data, len, r, NULL);
        if (m == NULL)
            return; /* r says why */
        s = start_job(p, false, m->from_seq, m->from_time_ns, m->keep_old, false, "requested", err,
                      sizeof(err), r);
        jetledger__rebuild__free_unpacked(m, NULL);
    } else if (strcmp(name, "Verify") == 0) {
        s = start_job(p, true, 0, 0, false, false, "requested", err, sizeof(err), r);
    } else if (strcmp(name, "CancelRebuild") == 0) {
        Jetledger__CancelRebuild *m = (Jetledger__CancelRebuild *)jl_request_unpack(
            &jetledger__cancel_rebuild__descriptor, data, len, r, NULL);
        if (m == NULL)
            return;
        s = cancel_job(p->job, m->started_at_ns, err, sizeof(err));
        jetledger__cancel_rebuild__free_unpacked(m, NULL);
    } else if (strcmp(name, "GetDeadLetters") == 0) {
        Jetledger__GetDeadLetters *m = (Jetledger__GetDeadLetters *)jl_request_unpack(
            &jetledger__get_dead_letters__descriptor, data, len, r, NULL);
        if (m == NULL)
            return;
        unsigned limit = admin_page(m->limit);
        jetledger__get_dead_letters__free_unpacked(m, NULL);
        jl__proj_dead_letters(p, limit, r);
        r->stream_seq = jl_projector_checkpoint(p);
        return;
    } else if (strcmp(name, "GetOutbox") == 0) {
        Jetledger__GetOutbox *m = (Jetledger__GetOutbox *)jl_request_unpack(
            &jetledger__get_outbox__descriptor, data, len, r, NULL);
        if (m == NULL)
            return;
        unsigned limit = admin_page(m->limit);
        bool all = m->all;
        jetledger__get_outbox__free_unpacked(m, NULL);
        jl__outbox_list(p, all, limit, r);
        r->stream_seq = jl_projector_checkpoint(p);
        return;
    } else if (strcmp(name, "DismissOutbox") == 0) {
        Jetledger__DismissOutbox *m = (Jetledger__DismissOutbox *)jl_request_unpack(
            &jetledger__dismiss_outbox__descriptor, data, len, r, NULL);
        if (m == NULL)
            return;
        jl__outbox_dismiss(p, m->command_id, r);
        jetledger__dismiss_outbox__free_unpacked(m, NULL);
        return;
    } else if (strcmp(name, "Hello") == 0) {
        jl__twins_hello(p, data, len, r);
        return;
    } else if (strcmp(name, "GetRebuildStatus") != 0) {
        jl_reply_error(r, JL_CODE_INVALID,
                       "unknown request '%.64s' (Rebuild, Verify, GetRebuildStatus, "
                       "CancelRebuild, GetDeadLetters, GetOutbox, DismissOutbox, Hello)",
                       name);
        return;
    }
    if (s != JL_OK) {
        jl_reply_error(r,
                       s == JL_ERR_INVALID     ? JL_CODE_INVALID
                       : s == JL_ERR_CONFLICT  ? JL_CODE_CONFLICT
                       : s == JL_ERR_NOT_FOUND ? JL_CODE_NOT_FOUND
                                               : JL_CODE_UNAVAILABLE,
                       "%s", err);
        return;
    }
    if (strcmp(name, "Rebuild") != 0 && strcmp(name, "Verify") != 0)
        status_to_reply(p->job, p->instance, r); /* a start's: by start_job() */
    r->stream_seq = jl_projector_checkpoint(p);
}

static void on_admin(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    jl_projector *p = closure;
    const char *subject = natsMsg_GetSubject(msg);
    const char *reply = natsMsg_GetReply(msg);
    const char *dot = strrchr(subject, '.');
    jl_reply r;
    (void)sub;
    jl_reply_init(&r);
    answer_admin(p, dot ? dot + 1 : subject, natsMsg_GetData(msg),
                 (size_t)natsMsg_GetDataLength(msg), &r);
    jl_reply_send(nc, reply, &r, NULL);
    jl_reply_cleanup(&r);
    natsMsg_Destroy(msg);
}

bool jl__jobs_cancelled(jl_projector *p)
{
    return atomic_load(&p->stopping) || (p->job != NULL && atomic_load(&p->job->cancel));
}

jl_status jl__jobs_open(jl_projector *p, char *err, size_t errlen)
{
    char subject[256];
    p->job = calloc(1, sizeof(*p->job));
    if (p->job == NULL) {
        snprintf(err, errlen, "cannot start the rebuild jobs: out of memory");
        return JL_ERR_NOMEM;
    }
    pthread_mutex_init(&p->job->mu, NULL);
    pthread_mutex_init(&p->job->start_mu, NULL);
    atomic_init(&p->job->cancel, false);
    /* Any one instance answers "<name>.admin.<Req>"; its own subjects reach this one, so that
     * a job's progress is read where the job runs: "<name>.admin.<first stream's durable>.*",
     * which every version has answered (Hello among them: instances of two versions meeting
     * in a rollout find each other), and, where that differs (a projector of several streams,
     * "<durable>_<STREAM>"), "<name>.admin.<instance>.*" (jetledger --instance). These first,
     * with Hello: another instance on the durable is looked for before this one takes any
     * request. */
    snprintf(subject, sizeof(subject), "%s.admin.%s.*", p->def->name, p->src[0].durable);
    natsStatus ns = jl_conn_subscribe(p->conn, &p->asub_own, subject, NULL, on_admin, p);
    if (ns == NATS_OK && strcmp(p->instance, p->src[0].durable) != 0) {
        snprintf(subject, sizeof(subject), "%s.admin.%s.*", p->def->name, p->instance);
        ns = jl_conn_subscribe(p->conn, &p->asub_inst, subject, NULL, on_admin, p);
    }
    if (ns == NATS_OK) {
        jl_status s = jl__twins_ask(p, err, errlen);
        if (s != JL_OK)
            return s;
        snprintf(subject, sizeof(subject), "%s.admin.*", p->def->name);
        ns = jl_conn_subscribe(p->conn, &p->asub, subject, p->def->name, on_admin, p);
    }
    if (ns != NATS_OK) {
        snprintf(err, errlen, "cannot subscribe to %s: %s", subject, natsStatus_GetText(ns));
        return JL_ERR_NATS;
    }
    return JL_OK;
}

bool jl__jobs_close(jl_projector *p)
{
    /* Wait for a request being answered: it may be starting a job or reading its status. */
    bool done = true;
    natsSubscription *subs[3] = {p->asub, p->asub_own, p->asub_inst};
    for (int i = 0; i < 3; i++) {
        if (subs[i] != NULL) {
            done = jl_conn_sub_stop(p->conn, subs[i], 0, JL_HANDLER_WAIT_MS) && done;
            jl_conn_sub_destroy(p->conn, subs[i]);
        }
    }
    p->asub = p->asub_own = p->asub_inst = NULL;
    if (!done)
        return false; /* the job is left as it is, still in use */
    if (p->job == NULL)
        return true;
    atomic_store(&p->job->cancel, true);
    if (p->job->has_thread)
        pthread_join(p->job->thread, NULL);
    pthread_mutex_destroy(&p->job->mu);
    pthread_mutex_destroy(&p->job->start_mu);
    free(p->job);
    p->job = NULL;
    return true;
}
