/*
 * jl_producer: the command-handling runtime of a service (a "producer").
 *
 * A service supplies a jl_service_def (its commands, its event types and two pure functions,
 * decide and evolve); the runtime does the rest:
 *   - listens on "<service>.cmd.<Command>" in queue group "<service>" (replicas share the load);
 *   - validates the request (size, type, protobuf, aggregate id);
 *   - loads the aggregate by replaying its subject "<service>.events.<aggregate_type>.<id>";
 *   - decides, appends the events as one commit with the expected last subject sequence, and on
 *     a lost race reloads and decides again, at most cfg->command_retries times;
 *   - replies with a jetledger.Reply (accepted with version and sequence, or a coded error).
 *
 * Request headers: Jl-Command-Id (client-chosen id, default a new UUID), Jl-Correlation-Id and
 * Jl-Causation-Id (default: the command id).
 *
 * Loading is cheap on hot and on long aggregates: a bounded LRU cache (cfg->cache_size entries)
 * keeps the state, version and last sequence of recently used aggregates, so a command on one
 * reads nothing from the stream (a lost race reads only the commits after the cached one); and
 * every cfg->snapshot_every events a snapshot of the state goes to the KV bucket
 * "jl_snapshots_<stream>", so a cold load reads the snapshot and at most that many events.
 * An aggregate that leaves the cache, and at close every cached one, is snapshotted too if it
 * moved past its snapshot: loading it again (a miss, a restarted producer) then reads the
 * snapshot and finds no event after it. At most 64 snapshot writes are in flight; beyond that
 * one is skipped, which only makes a later load longer.
 * Snapshots carry the service's state_version: one written by another version is ignored.
 *
 * The producer also answers "<service>.query.GetHistory" (the audit trail of one aggregate) and
 * "<service>.query.GetState" (its state now or as of a sequence, time or version, computed with
 * the service's own evolve).
 */
#ifndef JETLEDGER_PRODUCER_H
#define JETLEDGER_PRODUCER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

#include "jetledger/codec.h"
#include "jetledger/config.h"
#include "jetledger/conn.h"
#include "jetledger/domain.h"
#include "jetledger/status.h"

/** Largest accepted command body. */
#define JL_MAX_COMMAND_BYTES (64 * 1024)
/** The bodies of the commands a producer holds at once, together (besides --max-commands):
 * beyond, a command is answered unavailable at once. Bounds memory when commands are large. */
#define JL_MAX_HELD_COMMAND_BYTES (64 * 1024 * 1024)
/** Longest accepted Jl-Command-Id / Jl-Correlation-Id / Jl-Causation-Id. */
#define JL_MAX_ID_LEN 64

/** Whether @p s can be a command, correlation or causation id: 1 to JL_MAX_ID_LEN printable
 * ASCII characters, no spaces (what a producer accepts; clients check the same). */
bool jl_valid_id(const char *s);

/** One command a service accepts. */
typedef struct jl_command_def {
    const ProtobufCMessageDescriptor *descriptor;
    const char *id_field; /**< the string field holding the aggregate id, e.g. "order_id" */
    bool may_create_id;   /**< an empty id is replaced by a new UUID (creation commands) */
} jl_command_def;

/** Everything the runtime needs to know about a service. Static data; borrowed. */
typedef struct jl_service_def {
    const char *name;           /**< "orders": subjects orders.cmd.*, orders.events.> */
    const char *stream;         /**< "ORDERS" */
    const char *aggregate_type; /**< "order": 1 to 63 letters, digits, '_', '-' */
    uint32_t schema_version;    /**< stamped on every event */
    size_t state_size;          /**< bytes of the aggregate state (plain data) */
    void (*state_init)(void *state);
    jl_status (*evolve)(void *state, const jl_event *ev);
    void (*decide)(const void *state, const jl_command *cmd, jl_decision *out);
    const jl_command_def *commands;
    size_t n_commands;
    jl_types events; /**< every event type evolve understands */
    /** The state as protobuf, for snapshots and GetState. All three or none. */
    const ProtobufCMessageDescriptor *state_type;
    jl_status (*state_pack)(const void *state, jl_buf *out);
    jl_status (*state_unpack)(void *state, const void *data, size_t len);
    /** Bump whenever evolve or the state changes meaning: older snapshots are then ignored. */
    uint32_t state_version;
    /**
     * Optional (NULL: none). The aggregate a command targets when its id field is empty, for a
     * service with one well-known aggregate (inventory's warehouse). Checked like any id (a
     * UUID, made canonical). A command with may_create_id still gets a new UUID instead.
     * A member of the service rather than of jl_command_def so that existing positional
     * command tables stay complete initialisers.
     */
    const char *default_aggregate_id;
} jl_service_def;

typedef struct jl_producer jl_producer;

/**
 * Ensure the service's stream exists (replicas and limits from @p cfg) and start answering
 * commands on @p conn (borrowed, must outlive the producer).
 *
 * The producer also opens a second connection of its own, with the same configuration, whose
 * writes are batched (appends and replies of a burst go through it); 64 threads that read the
 * aggregates the cache lacks, in parallel and without holding up commands on cached ones; and,
 * when command ids are remembered (cfg->command_ttl_s > 0), 16 threads that look them up.
 * @return JL_OK; the jl_store_open() and jl_conn_open() errors; JL_ERR_NATS when the
 *         subscription fails; JL_ERR_NOMEM or JL_ERR_INTERNAL when a thread cannot start.
 */
jl_status jl_producer_open(jl_producer **out_producer, jl_conn *conn, const jl_service_def *def,
                           const jl_config *cfg, char *err, size_t errlen);

/**
 * Stop taking commands, finish and answer the ones taken and the appends in flight (up to
 * @p timeout_ms each), close the second connection, and free the producer. NULL is a no-op.
 * Returns false when a handler or an append's callback could still run at the deadline: the
 * producer is then left allocated (and logged), and what it uses, the connection, must not be
 * freed either.
 */
bool jl_producer_close(jl_producer *p, int64_t timeout_ms);

/**
 * Handle one command synchronously, exactly as a request on "<service>.cmd.<command>" would be
 * (used by the subscription, and by tests and tools).
 * @param command  short name of the command type, e.g. "CreateOrder".
 * @param command_id, correlation_id, causation_id  may be NULL or "" for defaults.
 * @param out      receives the reply (caller-owned, jl_reply_init'ed).
 * Thread-safe with respect to other calls on the same producer (serialised internally).
 */
void jl_producer_handle(jl_producer *p, const char *command, const void *data, size_t len,
                        const char *command_id, const char *correlation_id,
                        const char *causation_id, jl_reply *out);

/** Counters of a producer (since open). */
typedef struct jl_producer_stats {
    uint64_t commands;           /**< handled, accepted or not */
    uint64_t accepted;           /**< answered JL_CODE_OK */
    uint64_t conflicts;          /**< appends that lost a race (each retried or answered) */
    uint64_t cache_hits;         /**< commands decided on a cached state */
    uint64_t loads;              /**< aggregates loaded from the store */
    uint64_t snapshot_loads;     /**< loads that started from a snapshot */
    uint64_t snapshots_saved;    /**< snapshots stored (counted as JetStream confirms them) */
    uint64_t snapshots_on_evict; /**< of those sent: of entries leaving the cache */
    uint64_t events_replayed;    /**< events read and evolved by loads and catch-ups */
    uint64_t last_load_events;   /**< events read by the most recent load or catch-up */
    uint64_t burst_appends;      /**< appends sent on the batching connection (under load) */
    uint64_t expired;            /**< not run: waited past their deadline for their turn */
    uint64_t overloaded;         /**< refused: the producer held its limit of commands */
    uint64_t verified;           /**< refusals and no-op answers checked with the stream */
    uint64_t verified_stale;     /**< of those: the cache was behind; decided again */
    uint64_t records_read_again; /**< command ids looked up again: their record was being
                                      written when the first lookup was made */
    uint64_t in_progress;        /**< a gauge: commands taken and not yet answered */
} jl_producer_stats;

/** Copy the counters. Thread-safe. */
void jl_producer_get_stats(jl_producer *p, jl_producer_stats *out);

/**
 * Milliseconds since the producer last made progress while it holds commands (0 when it holds
 * none): finished a command, or read a commit of an aggregate it loads (a load without a
 * snapshot reads every commit, however many). Its other waits are bounded by the request
 * timeout, so one that holds commands and shows no progress for much longer is stuck. Also
 * one of its reading threads that has been at one aggregate without progress for longer than
 * four request timeouts (the time past them is what counts), even while other commands
 * finish. Takes the producer's lock: a caller blocked here has found it stuck too.
 * Thread-safe.
 */
int64_t jl_producer_stalled_ms(jl_producer *p);

/**
 * True when the producer's own second connection (the one bursts are written on) was closed
 * for good by the client library (credentials refused twice), which leaves the producer unable
 * to answer bursts. The connection given to jl_producer_open() is the caller's to watch.
 * Thread-safe.
 */
bool jl_producer_conn_closed(jl_producer *p);

/** Answer a GetHistory or GetState request body (as the subscription does). Thread-safe. */
void jl_producer_query(jl_producer *p, const char *query, const void *data, size_t len,
                       jl_reply *out);

/**
 * Compose the subject of one aggregate: "<service>.events.<aggregate_type>.<id>" into @p out.
 * JL_ERR_TOO_LARGE when it does not fit.
 */
jl_status jl_aggregate_subject(char *out, size_t n, const char *service, const char *aggregate_type,
                               const char *aggregate_id);

#endif /* JETLEDGER_PRODUCER_H */
