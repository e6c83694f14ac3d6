/*
 * Internal: the projector object, shared by projector.c (live consumption, queries) and
 * rebuild.c (rebuild and verify jobs, administration requests).
 *
 * Threads and locks:
 *   - the consuming thread (run/step) applies live batches into `db`, holding `apply_mu`;
 *   - the query subscription thread reads through `qdb`, holding `switch_lock` for reading;
 *   - a rebuild or verify job runs on its own thread with its own connection to a new file; to
 *     finish it takes `apply_mu` (live applying pauses) and, to swap files, `switch_lock` for
 *     writing (queries wait for the swap, which is a pointer exchange);
 *   - `mu` guards checkpoint and counters, and signals `advanced` for min_sequence waits;
 *   - `outbox_mu` (a process manager's): the outbox sender's send-and-record of one command,
 *     and a rebuild's finish, from before it pauses live applying to the switch; taken before
 *     `apply_mu` (the sender holds it for a request: live applying must not wait on that). An
 *     operator's dismissal of a refused row takes `apply_mu` alone and deletes through `db`.
 */
#ifndef JETLEDGER_PROJECTOR_INT_H
#define JETLEDGER_PROJECTOR_INT_H

#include <pthread.h>
#include <stdatomic.h>

#include "deadline.h"
#include "fault.h"
#include "jetledger/projector.h"

#define NS_PER_MS 1000000LL

typedef struct jl__job jl__job;

/* An ephemeral pull consumer with no acks reading one source from a point, in bounded batches:
 * what catch-up and rebuild jobs use. No server state outlives it, nothing is acked, and the
 * memory it holds is one batch (an ordered push consumer buffered the whole backlog client-side
 * while the apply lagged: measured 50 MiB after 1,000,000 events against 14 after 10,000). */
typedef struct jl__reader {
    natsSubscription *sub;
    natsMsgList list; /* the batch being handed out */
    int next;         /* index of the next message in list */
    /* To open again after a lost delivery (see jl__reader_next). */
    jl_projector *p;
    int si;
    uint64_t start_seq; /* where it starts; with a start time, where the stream reached it */
    uint64_t first_seq; /* the stream's first sequence when opened (0: not known) */
    int64_t start_time_ns;
    uint64_t next_cseq; /* consumer sequence the next delivery must carry */
    uint64_t last_seq;  /* stream sequence of the last message handed out (0: none yet) */
    /* The first sequence of the first gap in what was handed out not yet checked (0: none): a
     * message the stream's limits removed before it was read, or one of a subject not read
     * or deleted (see jl__reader_check_gap). */
    uint64_t gap_from, gap_to;
    /* Which stream is read: its creation time when opened, and the jl__msg_hash() of a message
     * handed out (the last of a batch, at hash_seq). Opened again, a reader checks that the
     * stream is still the one it read (reader_reopen). */
    int64_t created;
    uint64_t hash_seq, hash;
    /* Idle, the consumer is asked now and then how far it delivered (see jl__idle_lost()). */
    int64_t last_probe_ns;
    uint64_t probe_cseq;
} jl__reader;

/* JL_ERR_INVALID, saying which in @p err, when the stream no longer holds the start of the
 * first gap in what @p r handed out since the last call (removed by its limits or a purge
 * before it was read: a model built from what was read would lack it); JL_OK otherwise: also
 * a gap past the live model's checkpoint (it lacks those too), a gap a filter that does not
 * take in the whole stream may explain, and a stream that cannot be asked. */
jl_status jl__reader_check_gap(jl__reader *r, char *err, size_t errlen);

/* Note that nothing after what @p r handed out (or before what it expects first: sequence 1
 * when not known) up to @p to came, nor will: a gap, unless one is noted already, for
 * jl__reader_check_gap(). */
void jl__reader_note_gap(jl__reader *r, uint64_t to);

/* Start reading source @p si of @p p at @p start_seq (or @p start_time_ns when non-zero; both 0:
 * from the first message). */
jl_status jl__reader_open(jl__reader *r, jl_projector *p, int si, uint64_t start_seq,
                          int64_t start_time_ns, char *err, size_t errlen);

/* The next message (the caller destroys it): from the batch in hand, else from a new fetch of
 * up to @p batch, waiting up to @p wait_ms when nothing is there. NATS_TIMEOUT when none came.
 * Messages come in stream order with none missing: a delivery lost in transit (a route or a
 * server going down) shows as a jump in the consumer sequence, and the reader then opens again
 * after the last message it handed out. */
natsStatus jl__reader_next(jl__reader *r, int batch, int wait_ms, natsMsg **out);

/* Stop reading (the ephemeral consumer goes); a zeroed reader is fine. */
/* Whether @p r's consumer delivered everything it has for its filter, and @p r received it
 * all (false when it cannot be asked). */
bool jl__reader_drained(jl__reader *r);

void jl__reader_close(jl__reader *r);

/* One consumed stream. checkpoint is guarded by p->mu (written by its consuming thread). */
typedef struct jl__source {
    const char *stream;
    const char *filter;
    char durable[96];
    natsSubscription *pull; /* the durable pull consumer */
    jl__reader catchup;     /* while far behind (catchup.sub != NULL), else zeroed */
    uint64_t checkpoint;
    int64_t created_ns; /* the stream's creation time, once check_stream() found it ours */
    uint64_t next_cseq; /* the durable's consumer sequence the next delivery must carry */
    /* The durable attached to, by its creation time: until a delivery of it is checked to be
     * from that very consumer (verify_consumer), one made again meanwhile by another process
     * on this durable, at its own checkpoint, would number its deliveries alike. */
    int64_t consumer_created;
    bool verify_consumer;
    int64_t last_probe_ns; /* idle: when the consumer was last asked how far it delivered */
    uint64_t probe_cseq;   /* next_cseq at that probe when the consumer was ahead of us, or 0 */
    /* The last delivery said nothing followed it in the stream: the next fetch waits for the
     * next event at once instead of first asking for a batch that is not there (a round trip
     * and a thread wake-up per event when events come one at a time). */
    bool drained;
    int64_t last_attach_log_ns;
    uint64_t warned_from; /* checkpoint + 1 when messages from it were last said to be gone */
    bool covers;          /* its filter takes in every message of the stream (last read) */
    /* A catch-up reader found nothing past the checkpoint for the filter: the head is far only
     * in others' messages (a filter that leaves subjects out) or in removed ones. The next
     * step attaches the durable instead of reading again. */
    bool nothing_to_catch_up;
    pthread_t thread; /* sources after the first run on their own thread */
    bool has_thread;
    /* Within serve_lag of the stream's head once (or the stream empty or missing): set for
     * good by the source's own thread, read by the others (see serve_if_current()). */
    atomic_bool current;
    /* jl__mono_ns() when run_source() last turned (0: not running): see
     * jl_projector_stalled_ms(). */
    _Atomic int64_t beat_ns;
    char err[512]; /* the last failure of this source's steps (each source has a thread) */
} jl__source;

struct jl_projector {
    const jl_projector_def *def;
    jl_conn *conn;
    jsCtx *js;
    int batch;
    int64_t timeout_ms;
    int64_t rebuild_max_bytes;
    char data_dir[512];
    char file[256];     /* current database file name within data_dir */
    char replaced[256]; /* at start: the file the pointer says the live one replaced, or "" */
    char keep_as[256];  /* and the name it is to be kept under (--keep-old), or "" */
    char db_path[1024]; /* data_dir/file */
    jl_db *db;          /* writer: the consuming thread (or a finishing job) */
    jl_db *qdb;         /* reader: the query thread, under switch_lock */
    jl__source src[JL_MAX_SOURCES];
    int n_src;
    /* Queries are subscribed at open when every source is within serve_lag events of its
     * head (or serve_lag < 0), else by the first source thread to find all of them current:
     * a model still far behind (a new replica, a lost volume) does not answer from half its
     * events. qsub is set once, before serving, and read after the source threads ended. */
    int64_t serve_lag;
    atomic_bool serve_claimed; /* a thread is subscribing (or did) */
    atomic_bool serving;       /* subscribed: queries are answered */
    char qsubject[256];        /* "<name>.query.*" */
    natsSubscription *qsub;
    /* jl__mono_ns() since the query handler [0] and the waiter [1] have been at an answer, 0:
     * not (see jl_projector_stalled_ms()). */
    _Atomic int64_t answering_ns[2];
    natsSubscription *asub;      /* admin, any instance (queue group) */
    natsSubscription *asub_own;  /* admin, this instance: "<name>.admin.<src[0].durable>.*" */
    natsSubscription *asub_inst; /* ... and by its instance name, where that differs */
    pthread_mutex_t apply_mu;
    pthread_rwlock_t switch_lock;
    pthread_mutex_t mu;
    pthread_cond_t advanced;
    /* Queries waiting for a min_sequence, under mu: answered by the waiter thread, so that one
     * waiting holds up no other query (the subscription has one thread). */
    struct jl__parked *parked;
    size_t n_parked;
    size_t parked_bytes; /* of their requests */
    pthread_t waiter;
    bool has_waiter;
    int lock_fd; /* <data-dir>/<name>.lock, flock()ed while open: one process per data dir */
    pthread_mutex_t query_mu; /* qdb's statements: the query thread or the waiter */
    uint64_t dead_letters;
    atomic_bool stopping;
    atomic_bool paused; /* live applying suspended until a version rebuild switches */
    atomic_uint_fast64_t lost_deliveries; /* deliveries lost in transit, read again */
    int db_version;                       /* projection version of the current file */
    int64_t last_version_try_ns;
    jl__job *job;
    pthread_t outbox_thread;
    bool has_outbox_thread;
    pthread_cond_t outbox_cv; /* with mu: a batch committed, the sender may have work */
    bool outbox_wake;
    int64_t outbox_keep_ns; /* answered outbox rows older than this are deleted; 0 = kept */
    /* Held by the sender from a command's request to the record of its reply, and by a
     * rebuild's finish through the copy of the outbox into the new file and the swap: a reply
     * is never recorded in a file the copy has already left behind (its command would be sent
     * once more). */
    pthread_mutex_t outbox_mu;
    uint64_t outbox_gen;     /* switches so far, under outbox_mu: the sender's file is stale */
    atomic_int outbox_yield; /* threads waiting for outbox_mu (jl__outbox_lock): sender lets go */
    /* This instance, for others on the same durable (twins.c). */
    char instance_id[JL_UUID_LEN + 1];
    /* Its name: the durable as configured (JL_DURABLE, else the projector's name), without the
     * "_<STREAM>" of a projector of several streams. It names the instance in admin replies,
     * and its own admin subjects "<name>.admin.<instance>.<Req>" (jetledger --instance). */
    char instance[JL_NAME_MAX];
    char host[64];
    int64_t started_ns;                 /* Unix ns, at open */
    atomic_bool yield_claimed;          /* met an older instance: yield_msg being written */
    atomic_bool yielded;                /* ... and written: this instance stops */
    atomic_bool opening;                /* until jl_projector_open() is done */
    char yield_msg[1024];               /* why, once yielded */
    atomic_int_fast64_t twins_asked_ns; /* jl__mono_ns() of a lost delivery's question, 0: none */
    char err[1024];
};

/* How long a close waits for a request handler still running before it leaves the memory
 * allocated rather than free it under the handler. */
#define JL_HANDLER_WAIT_MS 10000

/* Tables every read model has, created with the projection's own schema. */
extern const char *const jl__state_sql;

/* Create the jl_* tables and the projection's schema in a new file with checkpoints 0. */
jl_status jl__proj_create_schema(jl_projector *p, jl_db *db, char *err, size_t errlen);

/* An event dead-lettered by a batch, logged once the batch is committed (not before: a batch
 * rolled back and tried again would log it again, or log what no file holds). */
typedef struct jl__dead_note {
    uint64_t seq;
    int index; /* of the event in its commit, -1 for a message that could not be decoded */
    char type[128];
    char reason[256];
} jl__dead_note;

#define JL__DEAD_NOTES 8 /* a batch's dead letters logged one by one; the rest counted */

/* Counters of one batch application. */
typedef struct jl__batch_result {
    int source;          /* index of the stream the messages come from */
    uint64_t checkpoint; /* in: the file's checkpoint of that stream; out: the new one */
    uint64_t events;     /* events applied */
    uint64_t dead;       /* events dead-lettered */
    bool quiet;          /* a rebuild's or a verify's: dead letters counted in its summary, not
                            logged one by one (the live model logged them) */
    int n_notes;         /* of this batch's, in notes (jl__proj_apply_batch() logs them) */
    jl__dead_note notes[JL__DEAD_NOTES];
    size_t applied;   /* messages applied (not skipped as at or below the checkpoint) */
    uint64_t pending; /* the last message's count of messages after it in the stream */
    int highest;      /* index of the message of the highest sequence: the one to ack
                         (AckAll), where the last may be a redelivery of an older one */
} jl__batch_result;

/* Apply @p n JetStream messages to @p db in one transaction with the new checkpoint, skipping
 * those at or below io->checkpoint; bad events are dead-lettered. Used by live batches and by
 * rebuild jobs. On failure nothing is written and the reason is in @p err. */
jl_status jl__proj_apply_batch(jl_projector *p, jl_db *db, natsMsg **msgs, int n,
                               jl__batch_result *io, char *err, size_t errlen);

/* Stream sequence and pending count of a JetStream message, from its reply subject (no
 * allocation); @p out_cseq (may be NULL) gets its consumer sequence. False when the message has
 * none. */
bool jl__msg_seq(natsMsg *m, uint64_t *out_seq, uint64_t *out_cseq, uint64_t *out_pending);

/* What identifies a message's content: FNV-1a 64 of its data, never 0. */
uint64_t jl__msg_hash(natsMsg *m);

/* Set the checkpoint of source @p source in @p db (inside a transaction), with @p hash the
 * jl__msg_hash() of the message at @p seq, or 0 to keep the hash recorded before (and the
 * sequence it was at). */
jl_status jl__proj_save_checkpoint(jl_projector *p, jl_db *db, int source, uint64_t seq,
                                   uint64_t hash);

/* Give @p to (inside a transaction) the stream creation time the live file recorded for source
 * @p source: a rebuilt file stands at the live checkpoints, on the stream live checked. Under
 * apply_mu (it reads p->db). */
jl_status jl__proj_copy_stream_created(jl_projector *p, jl_db *to, int source);

/* Checkpoint of source @p i, read under p->mu. */
uint64_t jl__proj_checkpoint(jl_projector *p, int i);

/* Make @p file (already open as @p db, checkpoints equal to the live ones) the live model: write
 * the pointer file, swap the connections, close and (unless @p keep_old) delete the old file.
 * Called with apply_mu held and, for a process manager, outbox_mu (taken before apply_mu).
 * Takes ownership of @p db. */
jl_status jl__proj_switch(jl_projector *p, jl_db *db, const char *file, bool keep_old, char *err,
                          size_t errlen);

/* JL_ERR_INVALID, saying why in @p err, when a rebuild from time @p t (Unix ns) could miss
 * messages of source @p si's stream that its limits or a purge removed (t at or before its
 * first retained message, that not sequence 1); JL_OK when none can be. */
jl_status jl__proj_check_from_time(jl_projector *p, int si, int64_t t, char *err, size_t errlen);

/* Delete a database file with its -wal and -shm companions. */
void jl__proj_remove_db(const char *path);

/* A rebuild finishing holds apply_mu, and the live loops wait for it (seconds, 30 s at most,
 * then the switch): its progress is theirs for jl_projector_stalled_ms(). */
void jl__proj_hold_beat(jl_projector *p);

/* outbox.c */
jl_status jl__outbox_start(jl_projector *p, char *err, size_t errlen);
void jl__outbox_stop(jl_projector *p);
void jl__outbox_wake(jl_projector *p);
/* Copy the outbox of the file at @p from_path into @p to (a rebuilt file, before its switch). */
jl_status jl__outbox_carry_over(jl_db *to, const char *from_path, char *err, size_t errlen);
/* An outbox row's state, in SQL: one text for the indexes, the queries and pruning. Waiting:
 * no final reply yet ("not now" leaves replied_at_ns NULL); answered: ok, or withdrawn before
 * it was sent; refused: any other final reply, kept for an operator. */
#define JL_OUTBOX_WAITING_SQL "replied_at_ns IS NULL"
#define JL_OUTBOX_ANSWERED_SQL "replied_at_ns IS NOT NULL AND reply_code IN ('ok', 'withdrawn')"
#define JL_OUTBOX_REFUSED_SQL                                                                      \
    "replied_at_ns IS NOT NULL AND coalesce(reply_code, '') NOT IN ('ok', 'withdrawn')"
/* Take outbox_mu, having the sender let go of it at once rather than after its request. */
void jl__outbox_lock(jl_projector *p);
/* Admin requests: GetOutbox (@p all: answered rows too; at most @p limit rows) and
 * DismissOutbox; each fills @p r (a jetledger.Outbox, or the OutboxRow deleted). */
void jl__outbox_list(jl_projector *p, bool all, unsigned limit, jl_reply *r);
void jl__outbox_dismiss(jl_projector *p, const char *command_id, jl_reply *r);

/* projector.c: the newest @p limit dead letters (and the count of all) into @p r's result, a
 * jetledger.DeadLetters; read on the query connection, as a query is. */
void jl__proj_dead_letters(jl_projector *p, unsigned limit, jl_reply *r);
/* Read the live model as a query does: take the query connection for one read transaction
 * (begun only when *io_s is JL_OK, which then says whether it began), the file not switched
 * under it, until jl__proj_read_end(), which answers @p r with the failure @p s (not JL_OK:
 * "<what>: <why>", unavailable when it may pass, else internal). */
jl_db *jl__proj_read_begin(jl_projector *p, jl_status *io_s);
/* The code of a reply to a request the database failed (@p s): unavailable for what may pass
 * (busy, no room, no memory: ask again), else internal. */
jl_code jl__proj_failure_code(jl_status s);
void jl__proj_read_end(jl_projector *p, jl_db *qdb, jl_status s, const char *what, jl_reply *r);

/* rebuild.c */
/* Subscribe the admin requests: this instance's own (with Hello), then, once no other instance
 * of the durable was found that this one yields to (JL_ERR_CONFLICT, see twins.c), any one's. */
jl_status jl__jobs_open(jl_projector *p, char *err, size_t errlen);
/* Stop taking admin requests, cancel and join a running job. False when a request handler may
 * still be running at the deadline: the projector must then not be freed. */
bool jl__jobs_close(jl_projector *p);
/* Start a rebuild from the first sequence because the file's version is older than the code. */
void jl__jobs_start_version_rebuild(jl_projector *p);
bool jl__jobs_running(jl_projector *p);
/* Whether the job running was asked to stop (cancelled, or the projector stopping): for its
 * long steps outside rebuild.c to check. */
bool jl__jobs_cancelled(jl_projector *p);

/* twins.c: other instances on this projector's durable (see there). */
/* How often, at most, a missing delivery has other instances looked for. */
#define JL_TWINS_ASK_EVERY_MS 5000
/* Fill in this instance's identity (at open, before anything can ask for it). */
void jl__twins_init(jl_projector *p);
/* Answer a Hello (a jetledger.Instance) with this instance's own; yield to an asker on the same
 * durable that started first. */
void jl__twins_hello(jl_projector *p, const void *data, size_t len, jl_reply *r);
/* Ask the instances of this durable (waits up to a second): JL_ERR_CONFLICT with the reason in
 * @p err when one started first (this one has yielded), else JL_OK, also when none could be
 * asked. */
jl_status jl__twins_ask(jl_projector *p, char *err, size_t errlen);
/* jl__twins_ask() unless asked within JL_TWINS_ASK_EVERY_MS. */
void jl__twins_ask_now_and_then(jl_projector *p);
/* Whether this instance met an older one on its durable and stops. */
bool jl__twins_yielded(jl_projector *p);
/* The open is done: from now on this instance is running to others. JL_ERR_CONFLICT (the reason
 * in @p err) when it yielded meanwhile. */
jl_status jl__twins_opened(jl_projector *p, char *err, size_t errlen);

#endif /* JETLEDGER_PROJECTOR_INT_H */
