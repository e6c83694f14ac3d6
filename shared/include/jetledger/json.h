/*
 * JSON <-> protobuf conversion driven by protobuf-c descriptors, so that any message in
 * schemas/ can be written and read as JSON with no per-type code (the CLI's and logs' format).
 *
 * Mapping (a pragmatic subset of the proto3 JSON mapping):
 * - object keys are the proto field names (snake_case); unknown keys are an error, and so are
 *   duplicate keys (RFC 8259 leaves them to the receiver; last-wins would silently drop data);
 * - strings <-> string (valid UTF-8, no U+0000: protobuf-c strings are C strings);
 *   bytes <-> base64 (standard alphabet, padding optional on input);
 * - int32/uint32/sint32/(s)fixed32 <-> JSON numbers; 64-bit integers are written as JSON numbers
 *   (exact: never through a double) and read from a number or a decimal string; an integer
 *   field refuses fractions and exponents ("1.0", "1e3");
 * - float/double <-> numbers, written with 9 / 17 significant digits so they read back exactly;
 *   NaN and the infinities as the strings "NaN", "Infinity", "-Infinity";
 * - bool <-> true/false; enums <-> value name (any int32 number is accepted and kept, and a number
 *   with no name is written as the number);
 * - nested messages <-> objects; repeated fields <-> arrays; null leaves a field at its default
 *   (null inside an array is an error);
 * - oneofs: at most one member may be given; the selected member is written even at its default;
 * - output omits fields equal to their proto3 default (empty string, 0, false, empty repeated);
 *   proto2 optional fields are written when set (has_ flag), required ones always, and a required
 *   field missing from the input is an error. Unknown fields kept by protobuf-c are not written.
 * Limits: input at most JL_JSON_MAX_INPUT bytes and JL_JSON_MAX_DEPTH levels of nesting (the top
 * object is level 1; every nested object or array adds one), on input and on output alike.
 * Numbers go through the C library (strtod, printf): the LC_NUMERIC locale must be "C".
 */
#ifndef JETLEDGER_JSON_H
#define JETLEDGER_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

#include "jetledger/buf.h"
#include "jetledger/status.h"

#define JL_JSON_MAX_INPUT (1024 * 1024)
#define JL_JSON_MAX_DEPTH 32

/**
 * Parse @p json (@p len bytes, need not be NUL-terminated) into a new message of type @p desc.
 *
 * @param out_msg  set on success to a message the caller frees with
 *                 protobuf_c_message_free_unpacked(msg, NULL) (all its parts are malloc'd);
 *                 untouched on failure.
 * @param err      receives a one-line reason on failure, naming the field path, e.g.
 *                 "field 'orders[2].item_count': expected an integer, got a string" or
 *                 "unknown field 'qty' in orders.AddItem"; "" on success. May be NULL; the text
 *                 is truncated to @p errlen bytes including the NUL.
 * @return JL_OK; JL_ERR_DECODE for malformed JSON or a value of the wrong JSON kind (a string
 *         where a number belongs); JL_ERR_INVALID for a value of the right kind that is not
 *         acceptable: unknown or duplicate fields, out-of-range or fractional integers, unknown
 *         enum names, bad base64, U+0000 in a string, a second member of a oneof, a missing
 *         required field; JL_ERR_TOO_LARGE over the limits; JL_ERR_NOMEM.
 * Thread-safe (no shared state).
 */
jl_status jl_json_to_pb(ProtobufCMessage **out_msg, const ProtobufCMessageDescriptor *desc,
                        const char *json, size_t len, char *err, size_t errlen);

/**
 * Append @p msg as one line of compact JSON (no newline) to @p out, fields in descriptor order.
 * @return JL_OK, or JL_ERR_TOO_LARGE / JL_ERR_NOMEM from the buffer, or JL_ERR_TOO_LARGE when
 *         @p msg nests deeper than JL_JSON_MAX_DEPTH (its JSON would not read back). On failure
 *         @p out is restored to what it held before the call. Thread-safe.
 */
jl_status jl_pb_to_json(jl_buf *out, const ProtobufCMessage *msg);

/**
 * Append @p s as a JSON string literal, quotes included, escaping what JSON requires and what a
 * terminal would act on: control characters, DEL and the C1 controls (U+0080..U+009F) as
 * \u00XX; invalid UTF-8 bytes are replaced by U+FFFD, one per byte. @p s may be NULL when
 * @p len is 0. Errors as jl_buf_add(), the buffer then unchanged.
 */
jl_status jl_json_add_string(jl_buf *out, const char *s, size_t len);

/**
 * Append @p data as a JSON string holding its base64 encoding (standard alphabet, padded).
 * @p data may be NULL when @p len is 0. Errors as jl_buf_add(), the buffer then unchanged.
 */
jl_status jl_json_add_base64(jl_buf *out, const uint8_t *data, size_t len);

/** True when the @p len bytes at @p s are well-formed UTF-8 (the rules the parser applies). */
bool jl_utf8_valid(const char *s, size_t len);

/** Drop from the end of @p s a UTF-8 sequence left incomplete by a cut to a buffer's size (as
 * snprintf cuts), so that text cut to fit stays text. */
void jl_utf8_trim_end(char *s);

/** Make @p s UTF-8 in place: jl_utf8_trim_end(), then each byte that starts no well-formed
 * sequence replaced by '?' (a client's text cut mid-character inside a message, or not text). */
void jl_utf8_scrub(char *s);

/** Length (1 to 4) of the well-formed UTF-8 sequence at @p s, of which @p n >= 1 bytes may be
 * read; 0 when those bytes start none (overlong forms, surrogates, past U+10FFFF included). */
size_t jl_utf8_seq_len(const uint8_t *s, size_t n);

#endif /* JETLEDGER_JSON_H */
