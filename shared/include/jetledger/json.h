/*
 * JSON <-> protobuf conversion driven by protobuf-c descriptors, so that any message in
 * schemas/ can be written and read as JSON with no per-type code (the CLI's and logs' format).
 *
 * Mapping (a pragmatic subset of the proto3 JSON mapping):
 * - object keys are the proto field names (snake_case); unknown keys are an error;
 * - strings <-> string; bytes <-> base64 (standard alphabet, padding optional on input);
 * - int32/uint32/sint32/(s)fixed32 <-> JSON numbers; 64-bit integers are written as JSON numbers
 *   (exact: never through a double) and read from a number or a decimal string;
 * - float/double <-> numbers; bool <-> true/false; enums <-> value name (a number is accepted);
 * - nested messages <-> objects; repeated fields <-> arrays; null leaves a field at its default;
 * - output omits fields equal to their proto3 default (empty string, 0, false, empty repeated).
 * Limits: input at most JL_JSON_MAX_INPUT bytes and JL_JSON_MAX_DEPTH levels of nesting.
 */
#ifndef JETLEDGER_JSON_H
#define JETLEDGER_JSON_H

#include <stddef.h>

#include <protobuf-c/protobuf-c.h>

#include "jetledger/buf.h"
#include "jetledger/status.h"

#define JL_JSON_MAX_INPUT (1024 * 1024)
#define JL_JSON_MAX_DEPTH 32

/**
 * Parse @p json (@p len bytes, need not be NUL-terminated) into a new message of type @p desc.
 *
 * @param out_msg  set on success to a message the caller frees with
 *                 protobuf_c_message_free_unpacked(msg, NULL) (all its parts are malloc'd).
 * @param err      receives a one-line reason on failure, e.g. "field 'quantity': expected a
 *                 number" or "unknown field 'qty' in orders.AddItem" (may be NULL).
 * @return JL_OK; JL_ERR_DECODE for malformed JSON or a value of the wrong kind;
 *         JL_ERR_INVALID for unknown fields or out-of-range numbers; JL_ERR_TOO_LARGE over the
 *         limits; JL_ERR_NOMEM.
 * Thread-safe (no shared state).
 */
jl_status jl_json_to_pb(ProtobufCMessage **out_msg, const ProtobufCMessageDescriptor *desc,
                        const char *json, size_t len, char *err, size_t errlen);

/**
 * Append @p msg as one line of compact JSON (no newline) to @p out.
 * @return JL_OK, or JL_ERR_TOO_LARGE / JL_ERR_NOMEM from the buffer (its contents are then
 *         unspecified but valid). Thread-safe.
 */
jl_status jl_pb_to_json(jl_buf *out, const ProtobufCMessage *msg);

/**
 * Append @p s as a JSON string literal, quotes included, escaping as JSON requires (control
 * characters as \u00XX; invalid UTF-8 bytes are replaced by U+FFFD).
 */
jl_status jl_json_add_string(jl_buf *out, const char *s, size_t len);

/** Append @p data as a JSON string holding its base64 encoding. */
jl_status jl_json_add_base64(jl_buf *out, const uint8_t *data, size_t len);

#endif /* JETLEDGER_JSON_H */
