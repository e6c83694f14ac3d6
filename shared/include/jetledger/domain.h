/*
 * Types shared by pure domain code (decide/evolve, projections) and the jetledger runtime.
 *
 * Nothing here does I/O: a service's domain.c includes this header, its generated protobuf
 * types and, to check or make ids, jetledger/codec.h (jl_uuid_canonical(), JL_UUID_LEN), none
 * of which does I/O either, so its rules can be unit-tested without NATS or SQLite.
 */
#ifndef JETLEDGER_DOMAIN_H
#define JETLEDGER_DOMAIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

#include "jetledger/buf.h"
#include "jetledger/status.h"

/** The number of elements of array @p arr: `.n_commands = JL_COUNT(commands)`, and loops over
 * a domain's own tables. A pointer in its place does not compile (it would count 1). */
#define JL_COUNT(arr) (sizeof(arr) / sizeof((arr)[0]) + JL__MUST_BE_ARRAY(arr))
/* 0 for an array; a negative bit-field width, a compile error, for a pointer. */
#define JL__MUST_BE_ARRAY(a)                                                                       \
    (sizeof(struct {                                                                               \
         int jl_not_an_array : __builtin_types_compatible_p(__typeof__(a), __typeof__(&(a)[0]))    \
                               ? -1                                                                \
                               : 1;                                                                \
     }) *                                                                                          \
     0)

/**
 * Machine-readable outcome of a command or query, as sent in jetledger.Reply.code.
 * The numbers are those of the jetledger.ErrorCode protobuf enum.
 */
typedef enum jl_code {
    JL_CODE_OK = 0,
    JL_CODE_INVALID = 1,        /**< malformed request, missing or bad id, bad field value */
    JL_CODE_NOT_FOUND = 2,      /**< the aggregate (or row, or item) does not exist */
    JL_CODE_CONFLICT = 3,       /**< concurrent writers won every retry */
    JL_CODE_RULE_VIOLATION = 4, /**< a business rule refused the command */
    JL_CODE_INTERNAL = 5,       /**< a bug or an unexpected failure */
    JL_CODE_UNAVAILABLE = 6,    /**< the event store or read model cannot be reached */
    JL_CODE_TIMEOUT = 7,        /**< a query's min_sequence was not reached in time */
} jl_code;

/** Lower-case name of a code as used in JSON and logs: "ok", "invalid", "not_found", ... */
const char *jl_code_str(jl_code c);

/** Parse a name from jl_code_str(); JL_ERR_INVALID if unknown. */
jl_status jl_code_parse(jl_code *out_code, const char *name);

/**
 * One decoded event as given to evolve and apply functions. Every pointer is borrowed and valid
 * only during the call it is passed to.
 */
typedef struct jl_event {
    const char *event_id;       /**< UUID */
    const char *event_type;     /**< full protobuf name of the payload, e.g. "orders.ItemAdded" */
    const char *aggregate_type; /**< e.g. "order" */
    const char *aggregate_id;   /**< UUID */
    const char *correlation_id;
    const char *causation_id;
    uint64_t aggregate_version; /**< 1-based, dense per aggregate */
    int64_t occurred_at_ns;     /**< Unix time in nanoseconds */
    uint32_t schema_version;
    uint64_t stream_seq;             /**< stream sequence of the message holding it; 0 if unsaved */
    const ProtobufCMessage *payload; /**< the decoded event; payload->descriptor names its type */
} jl_event;

/** A validated command as given to decide. Borrowed for the duration of the call. */
typedef struct jl_command {
    const ProtobufCMessage *msg; /**< the decoded command */
    const char *aggregate_id; /**< validated canonical UUID (generated when the command allows) */
    const char *command_id;   /**< client-chosen or generated id */
    int64_t now_ns;           /**< the time to stamp on events: decide never reads a clock */
} jl_command;

#define JL_DECISION_MAX_EVENTS 32
/** Cap on the encoded events of one command (they are appended as one stream message). */
#define JL_DECISION_MAX_BYTES (256 * 1024)

/**
 * What decide returns: either events to append (code JL_CODE_OK) or a rejection. Events are
 * encoded when emitted, so decide may build them on its stack.
 * Caller-owned: jl_decision_init() / jl_decision_cleanup(); not thread-safe.
 */
typedef struct jl_decision {
    jl_code code;
    char message[256];
    size_t n_events;
    const ProtobufCMessageDescriptor *types[JL_DECISION_MAX_EVENTS];
    size_t offsets[JL_DECISION_MAX_EVENTS];
    size_t lens[JL_DECISION_MAX_EVENTS];
    jl_buf bytes; /**< the encoded events, back to back */
} jl_decision;

/** Initialise an empty accepting decision. */
void jl_decision_init(jl_decision *d);

/** Free what the decision holds. Safe on an initialised, used or cleaned-up decision. */
void jl_decision_cleanup(jl_decision *d);

/** Empty the decision for reuse (keeps its buffer). */
void jl_decision_reset(jl_decision *d);

/**
 * Encode @p event and add it to the decision. Emitting into a rejected decision does nothing.
 * More than JL_DECISION_MAX_EVENTS events or JL_DECISION_MAX_BYTES bytes turn the decision into
 * a JL_CODE_INVALID rejection, so decide needs no error path for it.
 */
void jl_decision_emit(jl_decision *d, const ProtobufCMessage *event);

/**
 * Reject the command: drops any emitted events, sets @p code (not JL_CODE_OK) and a message
 * (printf format, truncated to fit). The first rejection wins.
 */
void jl_decision_reject(jl_decision *d, jl_code code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/** True when the decision is a rejection. */
bool jl_decision_rejected(const jl_decision *d);

/* ---- text fields, for decide and evolve (pure, no allocation) ---- */

/**
 * Length of @p s, scanning at most @p cap + 1 bytes (so a result above @p cap means "too long");
 * NULL counts as empty (protobuf-c never gives NULL, a message built by hand may).
 */
size_t jl_text_len(const char *s, size_t cap);

/** @p s, or "" for NULL, as the char * protobuf-c takes even for fields it only reads. */
char *jl_text_or_empty(const char *s);

/**
 * Copy @p len (<= @p cap) bytes of @p src into @p dst and zero the rest of its @p cap + 1 bytes,
 * so equal states are equal byte for byte.
 */
void jl_text_copy(char *dst, size_t cap, const char *src, size_t len);

/** False, with @p out rejected as invalid ("<field> must not be empty" / "... is longer than
 * <cap> bytes" / "... is not valid UTF-8" / "... holds a control character"), unless @p s holds
 * 1 to @p cap bytes of UTF-8 text with no control characters. */
bool jl_check_text(jl_decision *out, const char *field, const char *s, size_t cap);

/** jl_check_text() for an optional field: empty (or NULL) passes. */
bool jl_check_optional_text(jl_decision *out, const char *field, const char *s, size_t cap);

#endif /* JETLEDGER_DOMAIN_H */
