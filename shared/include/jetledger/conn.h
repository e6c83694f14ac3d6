/*
 * jl_conn: one NATS connection with JetStream, as every jetledger service opens it.
 *
 * It connects to the whole server list (reconnecting on its own, forever), reads the version of
 * the server it reached (the server's INFO line), and knows how to refuse clustered streams on
 * servers whose expected-sequence checks fail on them (before 2.10.19).
 */
#ifndef JETLEDGER_CONN_H
#define JETLEDGER_CONN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <nats/nats.h>

#include "jetledger/codec.h"
#include "jetledger/config.h"
#include "jetledger/status.h"

typedef struct jl_conn jl_conn;

/**
 * Oldest server whose Nats-Expected-Last-Subject-Sequence holds on replicated streams: before
 * 2.9.21 two racing writers could both win; before 2.10.19 a publish expecting sequence 0 (an
 * aggregate's first commit) was checked on the leader only and could leave replicas different.
 */
#define JL_MIN_CLUSTER_SERVER_VERSION "2.10.19"

/**
 * Connect to cfg->nats_url (comma-separated list) as client @p client_name.
 *
 * Retries for up to @p connect_wait_ms when no server answers yet (services starting before
 * NATS), then fails. Once connected, the connection reconnects by itself forever.
 * Descriptors 0, 1 or 2 found closed are first opened on /dev/null (stdout read-only, so that
 * output to it fails): the socket must not take one of them and receive what is printed.
 * @param out_conn set on success; close with jl_conn_close().
 * @param err      reason on failure, e.g. "cannot reach NATS at nats://...: No server available".
 * @return JL_OK; JL_ERR_UNAVAILABLE when no server could be reached; JL_ERR_INVALID for a bad
 *         URL or credentials file; JL_ERR_NATS for other failures.
 */
jl_status jl_conn_open(jl_conn **out_conn, const jl_config *cfg, const char *client_name,
                       int64_t connect_wait_ms, char *err, size_t errlen);

/**
 * How long one connect attempt to cfg->nats_url's servers may run before it is taken for
 * stuck: 2 s a server (the client's timeout) and 10 s more (the version probe, a slow name
 * lookup, which has no timeout of its own). libnats 3.4.1 never returns from an attempt whose
 * server greeted and then stopped answering: a program watches for that and gives up, saying
 * JL_CONN_STUCK_MSG.
 */
int64_t jl_conn_stuck_after_ms(const jl_config *cfg);

#define JL_CONN_STUCK_MSG                                                                          \
    "no connection to NATS in time: a server that greeted but never finished the handshake (one "  \
    "that stopped answering, or not NATS at NATS_URL?), or a host name that did not resolve"

/** jl_conn_open_flags(): writes wait for the library's flusher (about a millisecond), so that
 * one system call carries many messages. For traffic that comes in bursts only. */
#define JL_CONN_BATCH_WRITES 0x1u

/**
 * jl_conn_open() with @p flags (JL_CONN_BATCH_WRITES or 0). Without JL_CONN_BATCH_WRITES every
 * publish is written at once (the services' default: latency first).
 */
jl_status jl_conn_open_flags(jl_conn **out_conn, const jl_config *cfg, const char *client_name,
                             int64_t connect_wait_ms, unsigned flags, char *err, size_t errlen);

/**
 * Drain the connection (finish in-flight messages of every subscription) for up to
 * @p timeout_ms, then close it and free everything. NULL is a no-op. The jl_conn itself is
 * freed once the client library's last callback for it ran (waited for up to 2 s more; past
 * that, as after nats_Close(), it is left allocated rather than freed under the callback).
 */
void jl_conn_close(jl_conn *c, int64_t timeout_ms);

/**
 * Fetch up to @p batch messages from JetStream pull subscription @p sub, waiting up to
 * @p wait_ms (with @p no_wait, the server answers at once when it has none):
 * natsSubscription_FetchRequest() made safe on libnats 3.4.1. That version writes past its
 * array of @p batch messages when the subscription already holds more than half a batch
 * (messages of an earlier request that came after its fetch had returned, as happens to a
 * process slower than its own expiry) and more come: it then collects until it has batch
 * minus those, counted from those on. When the subscription holds messages, more are asked
 * for, 2 x (held + @p batch), so that the held ones stay below half and the fetch stops
 * where it should; the caller gets them all (up to that many).
 * @return as natsSubscription_FetchRequest().
 */
natsStatus jl_fetch(natsSubscription *sub, natsMsgList *list, int batch, int64_t wait_ms,
                    bool no_wait);

/**
 * Before a process exits, once every connection is closed: wait up to @p timeout_ms for the
 * client library's threads to finish releasing them. They free a connection's TLS context
 * (set up for nats:// URLs too, see jl_conn_open()) in the background, and exit running
 * OpenSSL's cleanup under them crashes the process now and then (status 139). Not from a
 * NATS callback; no jetledger or NATS call may follow.
 */
void jl_conn_release_library(int64_t timeout_ms);

/**
 * Subscribe @p cb to @p subject (in queue group @p queue, or none when NULL) and watch it from
 * the start, so that jl_conn_sub_stop() knows when its handler returned for the last time even
 * once the connection has closed (libnats refuses to watch a closed subscription). Use it for
 * every subscription whose handler uses memory the caller frees after jl_conn_sub_stop().
 * @return the client library's status (*@p out is set on NATS_OK).
 */
natsStatus jl_conn_subscribe(jl_conn *c, natsSubscription **out, const char *subject,
                             const char *queue, natsMsgHandler cb, void *closure);

/**
 * Stop an asynchronous subscription: drain it for up to @p drain_ms (the messages it holds are
 * handled; 0: unsubscribe at once), then wait up to @p wait_ms for its handler to return for
 * the last time (nats.c's on-complete callback; unsubscribing alone does not wait for a
 * handler already running), and jl_conn_settle(). The caller still destroys @p sub, with
 * jl_conn_sub_destroy(). NULL is a no-op.
 * @return true when the handler can no longer run; false when it may still be running at the
 *         deadline (or, for a subscription not made by jl_conn_subscribe(), when the closed
 *         connection closed it first): the caller must then leave what the handler uses
 *         allocated.
 */
bool jl_conn_sub_stop(jl_conn *c, natsSubscription *sub, int64_t drain_ms, int64_t wait_ms);

/**
 * Wait (a flush, at most 2 s) until every message the server sent before now has been read,
 * so that a subscription unsubscribed before the call can be destroyed: libnats before 3.6
 * could crash its read loop on a message for a subscription destroyed right after it was
 * unsubscribed (nats.c issue 637). Returns at once when not connected (nothing is read then).
 * True when the flush was answered: the server then also holds every subscription made
 * before the call (a service is ready once it does).
 */
bool jl_conn_settle(jl_conn *c);

/**
 * Unsubscribe and destroy @p sub (NULL: no-op), one of @p c's (not NULL). Use it for every
 * subscription, never natsSubscription_Destroy(): libnats before 3.6 (Debian 12 has 3.4.1)
 * looks a subscription up for a message coming in and uses it after letting go of the lock
 * that kept it alive (nats.c issue 637), so destroying one while a message for it comes in (the
 * rest of a pull request whose fetch returned, a reply given up on, a flood) crashes the
 * process now and then. This unsubscribes first (what comes later finds no subscription; an
 * ephemeral consumer the library made is deleted, a bound one stays), then waits for a flush
 * (jl_conn_settle()) and only then destroys. When no flush is answered (the connection down,
 * closed, or the server silent for 2 s), @p sub is destroyed after the next answered one that
 * a later call starts (a flush begun before would not cover it) or by jl_conn_close().
 * Thread-safe.
 */
void jl_conn_sub_destroy(jl_conn *c, natsSubscription *sub);

/**
 * jl_conn_sub_destroy() for a connection made without jl_conn (the benchmark's own): when no
 * flush is answered, @p sub stays allocated (unsubscribed).
 * @return true when @p sub was destroyed (or NULL).
 */
bool jl_nats_sub_destroy(natsConnection *nc, natsSubscription *sub);

/** The underlying connection (borrowed; valid until jl_conn_close). Thread-safe. */
natsConnection *jl_conn_nats(jl_conn *c);

/** The JetStream context (borrowed), with the configured request timeout. Thread-safe. */
jsCtx *jl_conn_js(jl_conn *c);

/**
 * Destroy @p js, a JetStream context made on @p c's connection (NULL: no-op), once that
 * connection is closed: by jl_conn_close(), or at once when it is closed already. Ownership of
 * @p js passes to @p c. For a context that published asynchronously: jsCtx_Destroy() destroys
 * its reply subscription at once, and an ack coming in meanwhile (late, for a publish that gave
 * up waiting for it) crashes libnats before 3.6 now and then (see jl_conn_sub_destroy()); the
 * closed connection's reader reads no more. Until then @p js (and its subscription) stays: a
 * connection that outlives many producers holds one per producer closed. Thread-safe.
 */
void jl_conn_js_destroy(jl_conn *c, jsCtx *js);

/** Version of the server reached at connect, e.g. "2.10.27" ("" if it could not be read). */
const char *jl_conn_server_version(const jl_conn *c);

/** Request timeout in milliseconds used for JetStream API calls. */
int64_t jl_conn_timeout_ms(const jl_conn *c);

/**
 * Whether a JetStream API call failed for want of JetStream: nothing answers its API subjects
 * (no responders), or the server or account has it off.
 */
bool jl_js_off(natsStatus ns, jsErrCode jerr);

/**
 * Refuse a stream of @p replicas replicas when a known server is older than
 * JL_MIN_CLUSTER_SERVER_VERSION. Every server the connection knows (configured and discovered)
 * is asked for its version; servers that cannot be reached are skipped. R1 always passes.
 * @return JL_OK or JL_ERR_VERSION with the offending server and version in @p err.
 */
jl_status jl_conn_check_replicas(jl_conn *c, int replicas, char *err, size_t errlen);

/**
 * Read a server's version from its INFO line by a plain TCP connection to @p url
 * ("nats://[user[:pass]@]host[:port]"), waiting up to @p timeout_ms.
 * @return JL_OK with the version in @p out; JL_ERR_UNAVAILABLE; JL_ERR_INVALID for a bad URL.
 */
jl_status jl_server_version_probe(const char *url, int timeout_ms, char *out, size_t outlen);

/** True when dotted version @p v ("2.10.27", "v2.9.21-beta") is at least @p min ("2.9.21"). */
bool jl_version_at_least(const char *v, const char *min);

/**
 * Replicas to give a stream when @p configured is 0 ("auto"): 3 when the connection knows three
 * or more servers (a cluster: configured and discovered URLs), else 1. A non-zero @p configured
 * is returned as is.
 */
int jl_conn_replicas(jl_conn *c, int configured);

/**
 * Replicas to give a stream (or KV bucket) that exists with @p existing: @p configured when
 * non-zero, else ("auto") the larger of @p existing and jl_conn_replicas(). Auto never scales
 * down: a service that starts while a node is down knows fewer servers, and would otherwise
 * take the stream's copies away.
 */
int jl_conn_replicas_of_existing(jl_conn *c, int configured, int64_t existing);

/**
 * Answer a request: encode @p r and publish it to @p reply_to (nothing when NULL or empty). A
 * reply larger than the server takes in one message (max_payload) would never arrive and leave
 * the requester waiting out its timeout: it is replaced in @p r by an "invalid" error that says
 * so, and that is sent instead.
 * @param scratch where to encode it (reused by callers answering often), or NULL for a
 *                buffer of its own.
 * @return JL_OK when a reply went out (or none was asked for); else why not (also logged).
 */
jl_status jl_reply_send(natsConnection *nc, const char *reply_to, jl_reply *r, jl_buf *scratch);

/** Map a NATS status to a jetledger status (timeouts, no responders, closed ...). */
jl_status jl_status_from_nats(natsStatus ns);

#endif /* JETLEDGER_CONN_H */
