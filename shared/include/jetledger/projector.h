/*
 * jl_projector: the runtime of a projector, a process that builds one SQLite read model from a
 * stream and answers queries on it.
 *
 * A projector supplies a jl_projector_def (its tables, an apply function per event, its queries);
 * the runtime:
 *   - keeps the read model in <data_dir>/<name>.db with a checkpoint row (jl_state.last_seq);
 *   - consumes the stream through a durable pull consumer (AckAll), in batches: all events of a
 *     batch and the new checkpoint are written in one transaction, acked only after the commit;
 *     an event at or below the checkpoint is skipped, so a redelivery is never applied twice;
 *   - on start, or after any failure, resumes from the checkpoint: the consumer is re-created at
 *     checkpoint + 1 whenever its delivered position disagrees with the database;
 *   - parks events it cannot decode or apply (unknown type, malformed payload, apply returning
 *     JL_ERR_INVALID / JL_ERR_DECODE / JL_ERR_UNKNOWN_TYPE / JL_ERR_REJECTED) in the table
 *     jl_dead_letters with the reason and the raw bytes, logs them at error level and goes on;
 *     any other failure (disk full, I/O) rolls the batch back and retries with a backoff;
 *   - answers "<name>.query.<Query>" requests (queue group "<name>") with jetledger.Reply; a
 *     request with a non-zero uint64 field "min_sequence" waits until the read model has applied
 *     that stream sequence (read-your-writes) or answers JL_CODE_TIMEOUT; with several sources,
 *     a string field "min_sequence_stream" names the stream (default: the first source).
 */
#ifndef JETLEDGER_PROJECTOR_H
#define JETLEDGER_PROJECTOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

#include "jetledger/codec.h"
#include "jetledger/config.h"
#include "jetledger/conn.h"
#include "jetledger/db.h"
#include "jetledger/domain.h"
#include "jetledger/status.h"

/** Largest accepted query body. */
#define JL_MAX_QUERY_BYTES (64 * 1024)
/** How long a query waits for its min_sequence before answering JL_CODE_TIMEOUT. */
#define JL_QUERY_WAIT_MS 3000

/** One query a projector answers. */
typedef struct jl_query_def {
    const ProtobufCMessageDescriptor *request;
    /**
     * Answer @p req from @p db (a read transaction is open) into @p out with
     * jl_reply_set_result() or jl_reply_error(). Return non-OK only for failures of the
     * database itself (the runtime then answers JL_CODE_INTERNAL with jl_db_errmsg()).
     */
    jl_status (*handle)(jl_db *db, const ProtobufCMessage *req, jl_reply *out);
} jl_query_def;

/**
 * The page size of a list query: @p asked, or @p dflt (> 0) when it is 0. Above @p max it is
 * refused: @p out then holds a JL_CODE_INVALID error and 0 is returned (the handler then
 * returns JL_OK).
 */
uint32_t jl_query_limit(uint32_t asked, uint32_t dflt, uint32_t max, jl_reply *out);

/** One stream a projector consumes. */
typedef struct jl_source {
    const char *stream;         /**< "ORDERS" */
    const char *filter_subject; /**< "orders.events.>" */
} jl_source;

/** Most sources a projector may have. */
#define JL_MAX_SOURCES 4

/** A command of a process manager's outbox that its service refused for good. Borrowed. */
typedef struct jl_outbox_refusal {
    const char *service;        /**< "inventory" */
    const char *command;        /**< short name: "ReserveStock" */
    const char *command_id;     /**< its deterministic id */
    const char *correlation_id; /**< "" for none */
    const char *order_key;      /**< "" for none */
    const jl_reply *reply;      /**< the refusal: code and message */
} jl_outbox_refusal;

/** Everything the runtime needs to know about a projector. Static data; borrowed. */
typedef struct jl_projector_def {
    const char *name;           /**< "order_summary": database, durable, query subjects */
    const char *stream;         /**< "ORDERS" (a projector of one stream) */
    const char *filter_subject; /**< "orders.events.>" (a projector of one stream) */
    /**
     * Or several streams (up to JL_MAX_SOURCES; then stream and filter_subject are unused).
     * Each has its own durable consumer ("<durable>_<stream>") and checkpoint, and is applied
     * in its own transactions: streams are consumed at their own speeds, so apply must not
     * depend on the order of events of different streams.
     */
    const jl_source *sources;
    size_t n_sources;
    int version;            /**< the projection's code version, stored in the database */
    const char *schema_sql; /**< creates the read-model tables (IF NOT EXISTS) */
    jl_types events;        /**< event types apply understands */
    /**
     * Apply one event to the read model (inside the batch transaction). Return JL_OK, a
     * "bad event" status (JL_ERR_INVALID, JL_ERR_DECODE, JL_ERR_UNKNOWN_TYPE, JL_ERR_REJECTED:
     * the event is dead-lettered with @p err as the reason) or any other status to fail the batch.
     * Apply must leave the transaction open: no ROLLBACK conflict clause (`INSERT OR ROLLBACK`,
     * `ON CONFLICT ROLLBACK`) and no `RAISE(ROLLBACK, ...)` in a trigger (ABORT, the default,
     * undoes the statement only: return a bad-event status then). A transaction that SQLite
     * ended fails the batch, to be tried again from the checkpoint (for a full disk, what is
     * wanted; for such a clause, the same event fails each time and the projector stalls).
     */
    jl_status (*apply)(jl_db *db, const jl_event *ev, char *err, size_t errlen);
    const jl_query_def *queries;
    size_t n_queries;
    /**
     * A process manager: apply may queue commands with jl_outbox_add(), and the runtime sends
     * them (see jl_outbox_add). Off for plain projectors.
     */
    bool outbox;
    /**
     * Optional, with outbox: a command was refused for good (invalid, not_found,
     * rule_violation; "internal" is sent again, as a "not now" is, until an operator has fixed
     * what the service lacked). Called on the outbox's thread, in the transaction that records
     * the reply, so that a saga is not left waiting for an outcome that will never come: it may
     * queue compensating commands there with jl_outbox_add_keyed() (a CancelOrder for an
     * order whose stock could not be reserved), and must write nothing else (the read model is
     * built from the streams alone, which a rebuild replays). A non-OK status rolls the record
     * back (logged with @p err): the command is sent again later and its refusal comes here
     * again, so what it queues must have deterministic ids.
     */
    jl_status (*on_refused)(jl_db *db, const jl_outbox_refusal *refusal, char *err, size_t errlen);
} jl_projector_def;

/**
 * Run @p st (from jl_db_stmt(), its parameters bound) for apply, as jl_db_step_done() does, and
 * tell an event the read model cannot take from a failing database: JL_ERR_INVALID, with the
 * reason in @p err (so that the event is dead-lettered), when the read model refused the row
 * (a constraint: "<type> rejected by the read model: <why>") or, with @p missing not NULL, when
 * the statement changed no row ("<type> for <missing> <what>"; @p what NULL: the event's
 * aggregate id). Other failures as jl_db_step_done().
 */
jl_status jl_apply_step(jl_db *db, sqlite3_stmt *st, const jl_event *ev, const char *missing,
                        const char *what, char *err, size_t errlen);

/**
 * Queue a command for sending (transactional outbox): called from apply, the row is written in
 * the batch's transaction, so it exists if and only if the events that decided it are applied.
 * After the commit a sender thread requests "<service>.cmd.<short name of @p cmd>" with header
 * Jl-Command-Id = @p command_id (and the correlation and causation ids) until some reply comes,
 * and records the reply's code and message in jl_outbox. A restart resends what has no reply
 * yet with the same command id, and producers answer a repeated id once: so a command has one
 * effect however often it is sent. @p command_id must therefore be deterministic (derived from
 * the event that decided it, e.g. "fulfilment:<order id>:reserve"); a second add with an id
 * already queued is ignored.
 * @return JL_OK; JL_ERR_INVALID for an id (command, correlation, causation) a producer would
 * refuse (see jl_valid_id(); empty correlation and causation ids are none), a service name
 * that is not one (jl_valid_name()) or a command name over 71 characters;
 * JL_ERR_TOO_LARGE over JL_MAX_COMMAND_BYTES; an SQLite failure.
 */
jl_status jl_outbox_add(jl_db *db, const char *service, const ProtobufCMessage *cmd,
                        const char *command_id, const char *correlation_id,
                        const char *causation_id);

/** Longest order key of jl_outbox_add_keyed(). */
#define JL_OUTBOX_KEY_MAX 64

/**
 * jl_outbox_add() with an order key (e.g. the order id of a saga's step; NULL or "": none). A
 * command answered "not now" (unavailable, conflict, timeout: not decided, sent again later)
 * holds back only the later commands of its key, and the others go on; without a key it holds
 * back every later one, as a command without a reply always does. Use a key when commands of
 * different keys do not depend on each other, and one may make room for another (a commit of
 * one order's reservation for the reservation of the next).
 * @return as jl_outbox_add(); JL_ERR_INVALID also for a key over JL_OUTBOX_KEY_MAX bytes.
 */
jl_status jl_outbox_add_keyed(jl_db *db, const char *service, const ProtobufCMessage *cmd,
                              const char *command_id, const char *correlation_id,
                              const char *causation_id, const char *order_key);

/**
 * Withdraw a queued command that has no final reply yet (called from apply, in the batch's
 * transaction, when a later event makes it pointless: an order cancelled before its
 * reservation went out). It is not sent (again); its row is recorded as answered with code
 * "withdrawn" and message @p why. A saving, not a guarantee: the command may be in flight or
 * already carried out with its reply lost, so the process manager must still handle its
 * effect (release a reservation that was made after all); a reply that comes is recorded.
 * @return JL_OK, also when no row has @p command_id or it was answered; JL_ERR_INVALID for a
 * NULL id; an SQLite failure.
 */
jl_status jl_outbox_withdraw(jl_db *db, const char *command_id, const char *why);

typedef struct jl_projector jl_projector;

/**
 * Open the read model (creating tables), read its checkpoint and start answering queries: at
 * once when every source stream is at most cfg->serve_lag events ahead of the checkpoint (or
 * serve_lag < 0, or the stream is missing, or a version rebuild is due: the old file answers
 * meanwhile), else once steps have seen each within that many (jl_projector_serving()): a
 * read model far behind, new or restored, does not answer from half its events while other
 * instances answer from all of theirs. Consuming starts
 * with jl_projector_run() or jl_projector_step(). The stream need not exist yet: the
 * projector waits for it.
 * @param conn borrowed, must outlive the projector.
 * @return JL_OK; JL_ERR_IO / JL_ERR_DISK_FULL / JL_ERR_SQLITE for the database;
 *         JL_ERR_INVALID for a database that belongs to another projector or stream;
 *         JL_ERR_NATS when the query subscription fails.
 */
jl_status jl_projector_open(jl_projector **out_projector, jl_conn *conn,
                            const jl_projector_def *def, const jl_config *cfg, char *err,
                            size_t errlen);

/**
 * Consume and apply until jl_projector_stop() is called; failures are logged and retried with
 * a backoff (they never end the loop). Returns JL_OK after a stop, having committed the batch
 * in hand; JL_ERR_NOMEM when a thread for a second stream could not be started (nothing was
 * applied; jl_projector_errmsg() says which stream).
 */
jl_status jl_projector_run(jl_projector *p);

/**
 * Fetch and apply one batch, waiting up to @p wait_ms for events.
 * @param out_applied number of messages applied (0 on timeout); may be NULL.
 * @return JL_OK (also when nothing arrived); the failure of attaching, fetching or applying.
 */
jl_status jl_projector_step(jl_projector *p, int wait_ms, size_t *out_applied);

/**
 * Apply @p n messages obtained from a consumer of the projector's stream exactly as a fetched
 * batch is applied: those at or below the checkpoint are skipped, the rest and the new
 * checkpoint are committed in one transaction, then the message of the highest sequence is
 * acked (AckAll: the batch). All of one source stream. Unlike a fetched batch, they are not
 * checked for deliveries lost on the way (a gap in the consumer's sequence): the caller hands
 * them whole and in order, or an event skipped is skipped for good (AckAll acks it too).
 * @param out_applied messages applied (not skipped); may be NULL.
 * @return JL_OK; JL_ERR_INVALID, nothing applied, for messages of no source stream of the
 *         projector or of two;
 *         JL_ERR_UNAVAILABLE, nothing applied, while a version rebuild has yet to switch (the
 *         new code never applies to the old file); the failure of applying.
 * Not thread-safe with jl_projector_step()/run(): call it from the consuming thread.
 */
jl_status jl_projector_apply(jl_projector *p, natsMsg **msgs, int n, size_t *out_applied);

/** Ask run() to return after the batch in hand. Thread-safe and async-signal-safe. */
void jl_projector_stop(jl_projector *p);

/** Stream sequence of the last applied message of the first source. Thread-safe. */
uint64_t jl_projector_checkpoint(jl_projector *p);

/** The checkpoint of source @p stream (0 when the projector has no such source). */
uint64_t jl_projector_checkpoint_of(jl_projector *p, const char *stream);

/**
 * While jl_projector_run() runs: milliseconds since the stream loop that turned least recently
 * last turned (0 otherwise). A turn is one step: a fetch waits 500 ms, JetStream calls the
 * request timeout, failures back off 5 s at most, and a rebuild finishing, which holds the loops
 * up to 30 s, counts its own progress as theirs; so a value far above those is a stuck loop.
 * Also the time a query has been answered for, when that is longer (an answer takes
 * milliseconds: one that does not end holds up every later query). Thread-safe, lock-free.
 */
int64_t jl_projector_stalled_ms(jl_projector *p);

/** Whether the projector answers queries (see jl_projector_open()). Thread-safe. */
bool jl_projector_serving(jl_projector *p);

/** Number of events parked in jl_dead_letters since open. Thread-safe. */
uint64_t jl_projector_dead_letters(jl_projector *p);

/**
 * Deliveries found lost in transit since open (a server or route went down mid-batch, or another
 * process pulls from the same durable). Each was noticed by a jump in the consumer sequence and
 * read again from the checkpoint, so nothing was skipped. Thread-safe.
 */
uint64_t jl_projector_lost_deliveries(jl_projector *p);

/**
 * The SQL creating the runtime's own tables (checkpoints, dead letters, the outbox that
 * jl_outbox_add() writes): to test an apply function on a bare database without a copy of it.
 */
const char *jl_projector_runtime_schema(void);

/** Why the last failed jl_projector_open(), _step() or _apply() failed (the threads of
 * jl_projector_run() log their failures instead). */
const char *jl_projector_errmsg(const jl_projector *p);

/**
 * Stop answering queries (in-flight ones finish, up to @p timeout_ms), release the consumer
 * subscription (the durable stays) and close the database. NULL is a no-op. Returns false when
 * a query was still being answered at the deadline: the projector is then left allocated (and
 * logged), and what the query may use, the connection, must not be freed either.
 */
bool jl_projector_close(jl_projector *p, int64_t timeout_ms);

#endif /* JETLEDGER_PROJECTOR_H */
