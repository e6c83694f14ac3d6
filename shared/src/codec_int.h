/*
 * Internal to libjetledger (and its tests): a way to make decoding run out of memory.
 */
#ifndef JETLEDGER_CODEC_INT_H
#define JETLEDGER_CODEC_INT_H

#include <stdbool.h>
#include <stddef.h>

#include <protobuf-c/protobuf-c.h>

/** Make the next allocation of a message being unpacked on this thread fail, as malloc would
 * with no memory left (tests: the outcome is JL_ERR_NOMEM, never a malformed message). */
void jl__unpack_fail_next(void);

/** protobuf_c_message_unpack() with the default allocator (free with
 * protobuf_c_message_free_unpacked(m, NULL)); NULL with *@p out_oom telling whether memory ran
 * out or the bytes are not a @p d. */
ProtobufCMessage *jl__unpack(const ProtobufCMessageDescriptor *d, const void *data, size_t len,
                             bool *out_oom);

#endif /* JETLEDGER_CODEC_INT_H */
