/*
 * jetledger status codes: the one return type of every fallible libjetledger function.
 *
 * JL_OK is 0. Detail (the NATS status, JetStream error code, sqlite3_errmsg, ...) lives on the
 * object that failed, e.g. jl_store_errmsg(); a status alone says only what kind of failure.
 */
#ifndef JETLEDGER_STATUS_H
#define JETLEDGER_STATUS_H

typedef enum jl_status {
    JL_OK = 0,
    JL_ERR_INVALID,      /**< bad argument or bad input (caller's fault) */
    JL_ERR_DECODE,       /**< malformed protobuf or JSON */
    JL_ERR_UNKNOWN_TYPE, /**< a message, command, query or event type nobody knows */
    JL_ERR_TOO_LARGE,    /**< a payload or buffer over its hard cap */
    JL_ERR_NOT_FOUND,    /**< no such stream, consumer, message, row or aggregate */
    JL_ERR_CONFLICT,     /**< optimistic concurrency: the expected last sequence was stale */
    JL_ERR_REJECTED,     /**< the domain refused a command (a business rule) */
    JL_ERR_TIMEOUT,      /**< an operation did not complete in time */
    JL_ERR_UNAVAILABLE,  /**< NATS or JetStream cannot be reached or has no responders */
    JL_ERR_NATS,         /**< another NATS or JetStream failure */
    JL_ERR_SQLITE,       /**< an SQLite failure (see the object's error message) */
    JL_ERR_DISK_FULL,    /**< no space left for the read model */
    JL_ERR_IO,           /**< a file or socket operation failed */
    JL_ERR_VERSION,      /**< a server or schema version we refuse to work with */
    JL_ERR_NOMEM,        /**< out of memory */
    JL_ERR_STOPPED,      /**< the object was asked to stop */
    JL_ERR_INTERNAL,     /**< a bug: an invariant did not hold */
} jl_status;

/**
 * Name of a status, e.g. "JL_ERR_CONFLICT". Never NULL; thread-safe; the string is static.
 */
const char *jl_status_str(jl_status s);

#endif /* JETLEDGER_STATUS_H */
