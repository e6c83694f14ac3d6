/*
 * Internal to libjetledger (and its tests): a way to make decoding run out of memory.
 */
#ifndef JETLEDGER_CODEC_INT_H
#define JETLEDGER_CODEC_INT_H

/** Make the next allocation of a message being unpacked on this thread fail, as malloc would
 * with no memory left (tests: the outcome is JL_ERR_NOMEM, never a malformed message). */
void jl__unpack_fail_next(void);

#endif /* JETLEDGER_CODEC_INT_H */
