/*
 * Structured logs: one JSON object per line, e.g.
 *   {"ts":"2026-11-26T12:00:00.123Z","level":"info","svc":"orders","msg":"connected","server":"2.10.27"}
 *
 * The library only logs when the program has given it a sink with jl_log_open(); until then it
 * is silent, so libjetledger never prints on its own. Thread-safe: a line is written with one
 * fwrite under a lock, so lines from different threads never interleave.
 */
#ifndef JETLEDGER_LOG_H
#define JETLEDGER_LOG_H

#include <stdio.h>

#include "jetledger/status.h"

typedef enum jl_log_level {
    JL_LOG_DEBUG = 0,
    JL_LOG_INFO,
    JL_LOG_WARN,
    JL_LOG_ERROR,
    JL_LOG_OFF,
} jl_log_level;

/**
 * Send log lines at @p level or above to @p sink (borrowed; typically stderr), tagged with the
 * service name @p service (copied, truncated to 63 bytes). Call once from main() before threads.
 */
void jl_log_open(FILE *sink, jl_log_level level, const char *service);

/** Parse "debug", "info", "warn" or "error". JL_ERR_INVALID otherwise. */
jl_status jl_log_level_parse(jl_log_level *out_level, const char *name);

/** True when a line at @p level would be written (to skip building costly fields). */
int jl_log_enabled(jl_log_level level);

/**
 * Write one line. @p msg is the event ("connected"); @p fields_fmt, when not NULL, is a printf
 * format producing extra JSON members without braces, e.g. "\"seq\":%llu"; string values in it
 * must be escaped by the caller (jl_log_str() helps). The line is capped at 4 KiB.
 */
void jl_log(jl_log_level level, const char *msg, const char *fields_fmt, ...)
    __attribute__((format(printf, 3, 4)));

/**
 * Escape @p s for use inside a JSON string in a log field, into @p out (@p n bytes, always
 * NUL-terminated, truncated if need be). Returns @p out, so it can be used as a printf argument.
 */
const char *jl_log_str(char *out, size_t n, const char *s);

#define JL_LOG_STR_MAX 512

#endif /* JETLEDGER_LOG_H */
