/*
 * Helpers for integration tests: a real nats-server per test (tests/harness), a connection,
 * and typed command/query calls over NATS request-reply. Test code only.
 */
#ifndef JETLEDGER_TEST_SUPPORT_H
#define JETLEDGER_TEST_SUPPORT_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include <check.h>

#include "jetledger/codec.h"
#include "jetledger/config.h"
#include "jetledger/conn.h"
#include "jetledger/db.h"
#include "jetledger/admin.pb-c.h"
#include "natsd.h"
#include "orders/orders.pb-c.h"

typedef struct tenv {
    jl_natsd *natsd;
    jl_config cfg; /* points at the server, data_dir in a temp dir */
    jl_conn *conn;
    char dir[256]; /* temp dir for databases and logs */
} tenv;

/** Start a JetStream server, connect, make a temp dir. Fails the test on error. */
void tenv_start(tenv *e);

/** tenv_start() with @p extra_config appended to the server's config (e.g. "max_payload: 65536").
 */
void tenv_start_with(tenv *e, const char *extra_config);

/** Disconnect, stop the server, remove the temp dir. */
void tenv_stop(tenv *e);

/** A second connection to the same server (another "process"). */
jl_conn *tenv_connect(tenv *e);

/**
 * Send @p msg to "<service>.cmd.<short name>" (or "<service>.query.<...>" when @p query) with an
 * optional command id, wait for the reply and decode it into @p out (jl_reply_init'ed).
 * Returns the NATS status of the request.
 */
natsStatus tsend(jl_conn *c, const char *service, bool query, const ProtobufCMessage *msg,
                 const char *command_id, jl_reply *out);

/** Same with a raw body on an explicit subject. */
natsStatus tsend_raw(jl_conn *c, const char *subject, const void *data, size_t len, jl_reply *out);

/**
 * The command-id record of @p cmd_id in KV bucket @p bucket (e.g. "jl_commands_ORDERS"), its key
 * into @p key_out (64 bytes) when not NULL; NULL when there is none (or the bucket cannot be
 * read). Free it with jetledger__command_record__free_unpacked().
 */
Jetledger__CommandRecord *tcommand_record(jl_conn *c, const char *bucket, const char *cmd_id,
                                          char *key_out);

/**
 * Send projector administration request @p m (NULL: an empty body) on @p subject (e.g.
 * "order_summary.admin.Rebuild") and return the RebuildStatus it answers (caller frees with
 * jetledger__rebuild_status__free_unpacked). With @p out_code NULL the reply must be ok; else
 * its code (and, with @p out_msg, its message) are set and NULL is returned unless ok.
 */
Jetledger__RebuildStatus *tadmin(jl_conn *c, const char *subject, const ProtobufCMessage *m,
                                 jl_code *out_code, char *out_msg, size_t n);

/** Publish @p data on @p subject of a stream, bypassing every producer. */
void tpublish_raw(jl_conn *c, const char *subject, const void *data, size_t len);

/**
 * Publish on @p subject a commit of aggregate "order" @p id holding one event of type @p type
 * with payload @p payload (@p n bytes), bypassing every producer.
 */
void tpublish_commit(jl_conn *c, const char *subject, const char *id,
                     const ProtobufCMessageDescriptor *type, const void *payload, size_t n);

/** Number of messages in a stream (0 if it does not exist). */
uint64_t tstream_msgs(jl_conn *c, const char *stream);

/**
 * Append @p n orders to the ORDERS stream as fast as JetStream takes them (asynchronous
 * publishes, no producer): each one commit of OrderCreated + @p items ItemAdded.
 */
void tseed_orders(jl_conn *c, int n, int items);

/**
 * Ask the orders producer for an order's state (GetState, as of @p at_seq / @p at_time_ns /
 * @p at_version, 0 for now). On JL_CODE_OK @p out_state (caller frees with
 * orders__order_state__free_unpacked) and @p out_version are set. Returns the reply's code.
 */
jl_code torder_state(jl_conn *c, const char *id, uint64_t at_seq, int64_t at_time_ns,
                     uint64_t at_version, Orders__OrderState **out_state, uint64_t *out_version);

/** Last sequence of a stream (fails the test if it does not exist). */
uint64_t tstream_last_seq(jl_conn *c, const char *stream);

/** Path of the live database file of projector @p proj in @p dir (follows its pointer file,
 * which a rebuild writes). */
void tlive_file(const char *dir, const char *proj, char *out, size_t n);

/**
 * Open the database at @p path read-only and step @p sql to its first row (failing the test
 * when there is none). Read its columns, sqlite3_step() on for more, then tdb_done().
 */
sqlite3_stmt *tdb_row(const char *path, const char *sql);

/** Events of type @p type (full name) in @p stream under @p filter whose payload, as JSON,
 * contains @p needle (NULL: all), read with an ordered consumer up to the stream's last
 * sequence. */
int tcount_events(jl_conn *c, const char *stream, const char *filter, const char *type,
                  const char *needle);

/** The first column of the first row of @p sql on the database at @p path, as an integer. */
int64_t tdb_int(const char *path, const char *sql);

/** Finalize a statement of tdb_row() and close its database. */
void tdb_done(sqlite3_stmt *st);

/** How many lines of @p text hold both @p a and @p b (a log's, say). */
int tlines_with(const char *text, const char *a, const char *b);

/** Run @p sql on the database at @p path (writing; waits for its writer's locks). */
void tdb_exec(const char *path, const char *sql);

/** Canonical dump of a read-model database file (malloc'd, caller frees). */
char *tdump(const char *db_path);

/**
 * Run a suite with Check's normal output, every temp dir under one root removed at the end
 * (kept with JL_TEST_KEEP=1); returns the process exit status (0 when all passed).
 */
int trun(Suite *s);

/** Milliseconds since an arbitrary start. */
int64_t tnow_ms(void);

/** From here the library's logs at warn and above go to a temporary file (see tlog_read()). */
FILE *tlog_capture(void);

/** What was logged since tlog_capture() into @p out (@p n bytes, NUL-terminated; @p log is
 * closed); the library logs nowhere again. */
void tlog_read(FILE *log, char *out, size_t n);

#endif /* JETLEDGER_TEST_SUPPORT_H */
