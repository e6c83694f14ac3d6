/*
 * Command-id records written after their command was answered.
 *
 * A stored command's record (command id -> reply, in the KV bucket) is what tells a repeat of
 * its id past JetStream's duplicate window from a new command. When it cannot be written while
 * the command has time (no KV leader, a timeout), the command is answered all the same, and
 * its record is kept here and put again in the background, backing off, until it is stored.
 * Meanwhile the producer answers a repeat of the id from here, and writes no snapshot of the
 * aggregate past the commit (a load after one would not see the commit's command id).
 *
 * Thread-safe: one mutex inside, never held while calling out (so it may be called under the
 * producer's lock), and one thread of its own for the puts.
 */
#ifndef JETLEDGER_LATE_H
#define JETLEDGER_LATE_H

#include <nats/nats.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "jetledger/status.h"

/* At most this many records are kept, those stored in the last minute (still found by
 * jl__late_find()) included; the oldest of those makes room for a new one, and a record beyond
 * this many waiting is not kept (logged at error). */
#define JL_LATE_RECORDS_MAX 4096

typedef struct jl__late jl__late;

/* Start the writer of bucket @p kv (borrowed: it must outlive jl__late_close()). */
jl_status jl__late_open(jl__late **out, kvStore *kv);

/*
 * Keep the record @p value (@p len bytes, copied) of command @p cmd_id, stored on aggregate
 * @p agg_id at stream sequence @p seq, under KV key @p key, until it is put. False when it could
 * not be kept (full, or out of memory: logged).
 */
bool jl__late_add(jl__late *l, const char *key, const char *cmd_id, const char *agg_id,
                  uint64_t seq, const void *value, size_t len);

/* As jl__late_add(), for a marker of a command whose outcome is unknown (@p seq: the first
 * sequence its commit could have): put where @p key has no record or an earlier marker, never
 * over a command's record. */
bool jl__late_add_marker(jl__late *l, const char *key, const char *cmd_id, const char *agg_id,
                         uint64_t seq, const void *value, size_t len);

/* A copy into @p out (malloc'd: the caller frees it) of the newest record of @p cmd_id kept here
 * (waiting, or stored in the last minute), its length in @p out_len: JL_OK;
 * JL_ERR_NOT_FOUND when none is, JL_ERR_NOMEM when one is but could not be copied (never to be
 * taken for none). @p out is NULL but on JL_OK. */
jl_status jl__late_find(jl__late *l, const char *cmd_id, void **out, size_t *out_len);

/* Whether a record of a command of aggregate @p agg_id, stored in the stream at or below
 * @p seq, waits to be put. */
bool jl__late_holds(jl__late *l, const char *agg_id, uint64_t seq);

/* Stop the writer: each record still waiting is put once more, within @p timeout_ms in all, and
 * one that is not is logged at error (its command id is remembered only by its commit). Frees
 * @p l; NULL is a no-op. */
void jl__late_close(jl__late *l, int64_t timeout_ms);

#endif /* JETLEDGER_LATE_H */
