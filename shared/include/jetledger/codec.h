/*
 * Encoding and decoding of what jetledger puts on the wire: commits (the events of one command,
 * one stream message) and replies. The generated protobuf code for the envelope stays behind
 * this module (house rule 17); callers see jl_event, jl_decision and jl_reply.
 */
#ifndef JETLEDGER_CODEC_H
#define JETLEDGER_CODEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

#include "jetledger/buf.h"
#include "jetledger/domain.h"
#include "jetledger/status.h"

#define JL_UUID_LEN 36
/** Hard cap on one stream message (a commit); JetStream's default max payload is 1 MiB. */
#define JL_MAX_COMMIT_BYTES (1024 * 1024)

/** Write a new random (version 4) UUID, lower case, into @p out (37 bytes): a per-thread
 * generator seeded from libuuid, seeded again in a forked child. */
void jl_uuid_new(char out[JL_UUID_LEN + 1]);

/** Write the name-based (version 5, SHA-1) UUID of the @p len bytes at @p name in jetledger's
 * namespace into @p out (37 bytes): the same name gives the same id, on any host, at any time. */
void jl_uuid_named(char out[JL_UUID_LEN + 1], const char *name, size_t len);

/**
 * Check that @p s is a UUID and write its canonical lower-case form to @p out (37 bytes).
 * @return JL_OK or JL_ERR_INVALID.
 */
jl_status jl_uuid_canonical(char out[JL_UUID_LEN + 1], const char *s);

/** True when @p s is a UUID already in canonical (lower-case) form, e.g. a cursor we issued. */
bool jl_uuid_is_canonical(const char *s);

/** A set of event (or other message) descriptors a component understands. */
typedef struct jl_types {
    const ProtobufCMessageDescriptor *const *list;
    size_t n;
} jl_types;

/** Initialiser of a jl_types from an array of descriptors, counted: `.events = JL_TYPES(events)`.
 */
#define JL_TYPES(arr)                                                                              \
    {                                                                                              \
        (arr), JL_COUNT(arr)                                                                       \
    }

/** The descriptor named @p full_name in @p types, or NULL. */
const ProtobufCMessageDescriptor *jl_types_find(const jl_types *types, const char *full_name);

/** What a commit says beyond its events. Strings are borrowed. */
typedef struct jl_commit_meta {
    const char *aggregate_type;
    const char *aggregate_id;
    const char *correlation_id; /**< "" = the command id */
    const char *causation_id;   /**< "" = the command id */
    const char *command_id;
    const char *command_type;
    uint64_t first_version; /**< aggregate version of the first event */
    int64_t occurred_at_ns;
    uint32_t schema_version;
    uint64_t prev_seq; /**< the aggregate's last stream sequence it is appended after (0: none) */
    /** The ids to give the events, one per event of the decision; NULL: new random ones. */
    const char (*event_ids)[JL_UUID_LEN + 1];
} jl_commit_meta;

/**
 * Event @p i of @p d as jl_commit_event() reads it back from the commit that
 * jl_commit_encode(@p m, @p d) wrote, with id @p event_id, but for stream_seq and payload
 * (left 0 and NULL). Strings are borrowed from @p m, @p d and @p event_id. This is how a
 * producer evolves its cached state after an append without decoding what it just encoded.
 */
void jl_commit_meta_event(const jl_commit_meta *m, const jl_decision *d, size_t i,
                          const char *event_id, jl_event *ev);

/**
 * Encode the events of @p d as one commit into @p out (reset first), each with a new random
 * event id (or the one meta->event_ids gives it). A retry of the same append must resend
 * these same bytes, so that JetStream's de-duplication recognises it.
 * @param out_first_event_id receives the first event's id (the message's Nats-Msg-Id).
 * @return JL_OK; JL_ERR_INVALID when @p d has no events; JL_ERR_TOO_LARGE over
 *         JL_MAX_COMMIT_BYTES; JL_ERR_NOMEM.
 */
jl_status jl_commit_encode(jl_buf *out, char out_first_event_id[JL_UUID_LEN + 1],
                           const jl_commit_meta *meta, const jl_decision *d);

/** A decoded commit (opaque); free with jl_commit_free(). Not thread-safe. */
typedef struct jl_commit jl_commit;

/**
 * Decode a commit message body. @p stream_seq is stamped on every event it yields.
 * @return JL_OK; JL_ERR_DECODE for a body that is not a commit (reason in @p err);
 *         JL_ERR_TOO_LARGE over JL_MAX_COMMIT_BYTES.
 */
jl_status jl_commit_decode(jl_commit **out_commit, const void *data, size_t len,
                           uint64_t stream_seq, char *err, size_t errlen);

/** Free a commit and every payload decoded from it. NULL is a no-op. */
void jl_commit_free(jl_commit *c);

/** Number of events in the commit. */
size_t jl_commit_count(const jl_commit *c);

/** The command id the commit records ("" if none). Borrowed from @p c. */
const char *jl_commit_command_id(const jl_commit *c);

/** The full protobuf name of the command the commit records ("" if none). Borrowed. */
const char *jl_commit_command_type(const jl_commit *c);

/** The aggregate's stream sequence the commit was appended after (0: its first commit, or a
 * commit written before commits said so). */
uint64_t jl_commit_prev_seq(const jl_commit *c);

/**
 * Fill @p out_ev with event @p i, decoding its payload with the descriptor named by its
 * event_type, looked up in @p types (NULL: every schema in the registry). Pointers in
 * @p out_ev stay valid until jl_commit_free().
 * On JL_ERR_UNKNOWN_TYPE or JL_ERR_DECODE, @p out_ev still carries the envelope fields (id,
 * type, aggregate, version) with payload NULL, so the caller can say which event failed.
 * JL_ERR_NOMEM when memory ran out decoding it (a valid event: try again, never park it).
 */
jl_status jl_commit_event(jl_commit *c, size_t i, const jl_types *types, jl_event *out_ev,
                          char *err, size_t errlen);

/** The raw payload bytes of event @p i (borrowed from @p c). */
void jl_commit_event_payload(const jl_commit *c, size_t i, const uint8_t **out_data,
                             size_t *out_len);

/**
 * Append one event as a JSON object: seq, event_id, event_type, occurred_at (RFC 3339, UTC,
 * nanoseconds), aggregate_type, aggregate_id, aggregate_version, correlation_id, causation_id,
 * schema_version and payload (the decoded event as JSON; null when ev->payload is NULL).
 */
jl_status jl_event_to_json(jl_buf *out, const jl_event *ev);

/** Format Unix nanoseconds as RFC 3339 UTC ("2026-11-26T12:00:00.123456789Z") into @p out. */
void jl_format_time(char *out, size_t n, int64_t unix_ns);

/** A reply to a command or query (jetledger.Reply). Caller-owned: init/cleanup. */
typedef struct jl_reply {
    jl_code code;
    char message[512];
    char aggregate_id[JL_UUID_LEN + 1];
    uint64_t aggregate_version;
    uint64_t stream_seq;
    bool duplicate;
    char result_type[128]; /**< full protobuf name of the result, "" = none */
    jl_buf result;         /**< encoded result message */
} jl_reply;

#define JL_MAX_REPLY_BYTES (4 * 1024 * 1024)

void jl_reply_init(jl_reply *r);
void jl_reply_cleanup(jl_reply *r);
/** Back to an empty OK reply, keeping the result buffer's memory. */
void jl_reply_reset(jl_reply *r);

/** Set an error code and message (printf format). The first error wins. */
void jl_reply_error(jl_reply *r, jl_code code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/**
 * Encode @p msg as the reply's result. JL_ERR_TOO_LARGE when it exceeds the reply cap (the
 * reply then becomes an error saying so).
 */
jl_status jl_reply_set_result(jl_reply *r, const ProtobufCMessage *msg);

/** Encode @p r as a jetledger.Reply into @p out (reset first). */
jl_status jl_reply_encode(jl_buf *out, const jl_reply *r);

/**
 * Decode a jetledger.Reply. JL_ERR_DECODE if @p data is not one, or its aggregate id or result
 * type is longer than jl_reply holds (cut, it would name another). A code this build does not
 * know becomes JL_CODE_INTERNAL, the number kept in the message.
 */
jl_status jl_reply_decode(jl_reply *out, const void *data, size_t len);

/**
 * Whether every string field, at any depth, of the protobuf @p data (a @p desc message that
 * protobuf_c_message_unpack() accepted) is UTF-8 without a NUL byte. protobuf-c keeps a string
 * as a C string: one with a NUL inside would be cut there without a word, and the rest lost.
 * @return false when a string is not; the name of its field in @p out_field (may be NULL).
 * Pure; thread-safe.
 */
bool jl_pb_strings_valid(const ProtobufCMessageDescriptor *desc, const void *data, size_t len,
                         const char **out_field);

/**
 * Whether the protobuf @p data (a @p desc message) holds a field, at any depth, numbered above
 * every field its message type knows: written with a newer schema (new fields get new numbers;
 * one numbered below is a field since removed). Also true for bytes that cannot be walked.
 * Pure; thread-safe.
 */
bool jl_pb_has_newer_fields(const ProtobufCMessageDescriptor *desc, const void *data, size_t len);

/**
 * Unpack the body of a request (a command or a query) as a @p desc message, in one walk over
 * its bytes beside protobuf-c's.
 * @param out_newer where to say whether it holds fields of a newer schema, as
 * jl_pb_has_newer_fields() says; NULL: such a request is refused, "unavailable" (a newer
 * client's filter or option, left out, would change the answer: a newer replica can answer).
 * @return the message (free with protobuf_c_message_free_unpacked()); NULL with an "invalid"
 * error in @p r saying why: not a valid @p desc, or a string field not UTF-8 or holding a NUL
 * (see jl_pb_strings_valid()); or "unavailable" when memory ran out or (@p out_newer NULL)
 * for fields of a newer schema.
 */
ProtobufCMessage *jl_request_unpack(const ProtobufCMessageDescriptor *desc, const void *data,
                                    size_t len, jl_reply *r, bool *out_newer);

#endif /* JETLEDGER_CODEC_H */
