/*
 * jl_store: a service's event store, one JetStream stream.
 *
 * Each aggregate has its own subject (e.g. "orders.events.order.<uuid>"); a message is a commit
 * (all events of one command). Appends carry Nats-Expected-Last-Subject-Sequence, so of two
 * writers racing on one aggregate only one wins; the other gets JL_ERR_CONFLICT. Reads of one
 * aggregate go through direct get (any replica answers, no consumer to create).
 *
 * A store is not thread-safe (its error message is per object): use one per thread. The
 * exception is jl_store_read_subject() given its own error buffer: reads may run on any number
 * of threads at once. The connection a store uses may be shared.
 */
#ifndef JETLEDGER_STORE_H
#define JETLEDGER_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "jetledger/config.h"
#include "jetledger/conn.h"
#include "jetledger/status.h"

/** JetStream's "wrong last sequence" without the sequence (err_code 10164): newer servers
 * answer so on a clustered stream while an earlier write to the subject is in process. libnats
 * 3.4.1 has no name for it. */
#define JL_JS_WRONG_LAST_SEQ_CONST 10164
/** JetStream's "duplicate message id is in process" (err_code 10158): an earlier copy of the
 * message may yet be stored. */
#define JL_JS_DUPLICATE_IN_PROCESS 10158

/** Whether @p err_code says an expected last subject sequence did not match (10071, or
 * JL_JS_WRONG_LAST_SEQ_CONST): another writer got there first. */
bool jl_js_wrong_last_seq(int err_code);

/** Stream settings. Plain data; jl_store_cfg_init() sets the defaults. */
typedef struct jl_store_cfg {
    const char *stream;         /**< e.g. "ORDERS" (required) */
    const char *subjects;       /**< e.g. "orders.events.>" (required) */
    int replicas;               /**< 1 .. 5; 0 (default) = 3 on a cluster of 3+, else 1 */
    int64_t max_bytes;          /**< -1 = unlimited (default); when set, new events are refused */
    int64_t max_age_s;          /**< 0 = keep forever (default) */
    int64_t duplicate_window_s; /**< Nats-Msg-Id memory, default 120 */
    int32_t max_msg_size;       /**< default JL_MAX_COMMIT_BYTES */
} jl_store_cfg;

void jl_store_cfg_init(jl_store_cfg *cfg);

/** Copy replicas and limits from a service configuration. */
void jl_store_cfg_apply(jl_store_cfg *cfg, const jl_config *c);

typedef struct jl_store jl_store;

/**
 * Make sure the stream exists with @p cfg (create it, or update replicas and limits of an
 * existing one: idempotent) and open the store on it. Refuses replicas > 1 on servers older than
 * JL_MIN_CLUSTER_SERVER_VERSION.
 * @param conn borrowed; must outlive the store.
 * @param err  the reason on failure (also kept: jl_store_errmsg() is not available on failure).
 * @return JL_OK; JL_ERR_VERSION; JL_ERR_INVALID (a stream of that name with other subjects or
 *         storage); JL_ERR_UNAVAILABLE / JL_ERR_TIMEOUT; JL_ERR_NATS.
 */
jl_status jl_store_open(jl_store **out_store, jl_conn *conn, const jl_store_cfg *cfg, char *err,
                        size_t errlen);

/** Free the store (the stream stays). NULL is a no-op. */
void jl_store_close(jl_store *st);

/** Why the last failed call on @p st failed (never NULL). */
const char *jl_store_errmsg(const jl_store *st);

/** The stream name (borrowed). */
const char *jl_store_stream(const jl_store *st);

/** How long one attempt of an append waits for its ack before the same message is sent again. */
#define JL_APPEND_ATTEMPT_MS 1500

/** One append: a message for one subject with an optimistic-concurrency expectation. */
typedef struct jl_append {
    const char *subject;
    const void *data;
    size_t len;
    const char *msg_id;         /**< Nats-Msg-Id: a retry with the same id is not stored twice */
    uint64_t expected_last_seq; /**< stream sequence of the subject's last message */
    bool expect_empty;          /**< the subject must have no message (first commit) */
    const char *const *headers; /**< extra headers as name, value pairs; may be NULL */
    size_t n_headers;           /**< number of pairs */
    int64_t deadline_ms;        /**< give up after this long; 0 = the connection's timeout */
} jl_append;

/**
 * Append one message. Publish timeouts (with a msg_id each attempt waits JL_APPEND_ATTEMPT_MS at
 * most; without one the first waits to the deadline) and "no responders" (a stream leader
 * moving) are retried with the same message and id until the deadline, so a retry with a
 * msg_id never stores a second copy.
 * @param out_seq       stream sequence of the stored message.
 * @param out_duplicate true when JetStream had already stored this id (an earlier call's copy,
 *                      or this call's own first attempt, stored though its acknowledgement was
 *                      lost); @p out_seq is then the original's sequence. A clustered stream
 *                      answers such a resend "wrong last sequence": the subject's first message
 *                      after the expected one is then looked up, and carrying this id it is
 *                      taken the same way (unreadable, the append is tried again).
 * @return JL_OK; JL_ERR_CONFLICT when the subject's last sequence is not the expected one;
 *         JL_ERR_TOO_LARGE; JL_ERR_UNAVAILABLE or JL_ERR_TIMEOUT when nothing could be confirmed
 *         in time (the message may or may not be stored: retry with the same msg_id);
 *         JL_ERR_NATS for a JetStream error (see jl_store_errmsg()).
 */
jl_status jl_store_append(jl_store *st, const jl_append *a, uint64_t *out_seq, bool *out_duplicate);

/** Called for each message read: return JL_OK to go on, anything else stops the read. */
typedef jl_status (*jl_store_msg_fn)(uint64_t seq, int64_t time_ns, const void *data, size_t len,
                                     void *closure);

/**
 * Read the messages of @p subject with sequence above @p after_seq, in order, calling @p fn for
 * each; stops early when fn returns non-OK (that status is returned) or after @p max_msgs
 * (0 = no limit).
 * @param out_last_seq sequence of the last message read (@p after_seq when none).
 * @param err, errlen where the reason of a failure goes; NULL for jl_store_errmsg(). Thread-safe
 *        with a buffer of the caller's own.
 * @return JL_OK; fn's status; JL_ERR_UNAVAILABLE / JL_ERR_TIMEOUT; JL_ERR_NATS.
 */
jl_status jl_store_read_subject(jl_store *st, const char *subject, uint64_t after_seq,
                                size_t max_msgs, jl_store_msg_fn fn, void *closure,
                                uint64_t *out_last_seq, char *err, size_t errlen);

/**
 * Read the last message of @p subject with one direct get and, when its sequence is above
 * @p after_seq, call @p fn (may be NULL: only the sequence is wanted) with it. @p out_last_seq
 * gets that sequence, or @p after_seq when nothing newer is there. Errors as
 * jl_store_read_subject(); thread-safe with its own @p err.
 */
jl_status jl_store_read_last(jl_store *st, const char *subject, uint64_t after_seq,
                             jl_store_msg_fn fn, void *closure, uint64_t *out_last_seq, char *err,
                             size_t errlen);

/**
 * The sequence of @p subject's last message as the stream's leader knows it (not a direct get,
 * which any replica may answer, one lagging behind included): what a decision that wrote
 * nothing must be checked against. 0 when the subject has no message.
 * @return JL_OK; JL_ERR_UNAVAILABLE / JL_ERR_TIMEOUT; JL_ERR_NATS. Thread-safe with its own @p err.
 */
jl_status jl_store_subject_head(jl_store *st, const char *subject, uint64_t *out_seq, char *err,
                                size_t errlen);

/** The stream's replicas, as opening the store found or made it. */
int jl_store_replicas(const jl_store *st);

/** Stream state, for status output and progress. */
typedef struct jl_store_info {
    uint64_t msgs;
    uint64_t bytes;
    uint64_t first_seq;
    uint64_t last_seq;
    int replicas;
    /** Whether the stream drops its oldest messages itself: a max age, or a message or byte
     * limit with the "discard old" policy. If not, what is gone was deleted by hand (a purge). */
    bool drops_old;
} jl_store_info;

/**
 * Current state of the stream, as its leader knows it. Thread-safe with its own @p err (NULL:
 * the store's, jl_store_errmsg()).
 * @return JL_OK; JL_ERR_UNAVAILABLE / JL_ERR_TIMEOUT; JL_ERR_NATS.
 */
jl_status jl_store_info_get(jl_store *st, jl_store_info *out_info, char *err, size_t errlen);

#endif /* JETLEDGER_STORE_H */
