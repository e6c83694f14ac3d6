/*
 * jl_db: an SQLite database as jetledger uses it for read models.
 *
 * WAL mode (readers never block the writer), synchronous=NORMAL (a commit survives a process
 * crash; the last transactions may be lost on power loss, and are then replayed from the stream
 * because the checkpoint is in the same transaction), a busy timeout, and a cache of prepared
 * statements so apply functions pay for parsing SQL once. A writer's WAL checkpoints (where
 * SQLite fsyncs) run on a thread of the connection's own, not in the committing thread: a commit
 * never waits for a disk flush (the writer checkpoints itself only if that thread falls 16,000
 * pages behind).
 *
 * One jl_db per thread (SQLite connections are not shared here).
 */
#ifndef JETLEDGER_DB_H
#define JETLEDGER_DB_H

#include <stdbool.h>
#include <stdint.h>
#include <stddef.h>

#include <sqlite3.h>

#include "jetledger/buf.h"
#include "jetledger/status.h"

typedef struct jl_db jl_db;

/** Distinct SQL texts one connection keeps prepared; jl_db_stmt() fails beyond this. */
#define JL_DB_STMT_CACHE 256

/** How long a connection of jl_db_open() waits on a lock another one holds (its busy timeout). */
#define JL_DB_BUSY_MS 5000

/**
 * Open (creating if @p readonly is false) the database at @p path.
 * @return JL_OK; JL_ERR_IO when the file or its directory cannot be opened; JL_ERR_INVALID
 *         for a path of 1024 bytes or more;
 *         JL_ERR_DISK_FULL; JL_ERR_SQLITE. The reason is in @p err.
 */
jl_status jl_db_open(jl_db **out_db, const char *path, bool readonly, char *err, size_t errlen);

/** Finalize cached statements and close. NULL is a no-op. */
void jl_db_close(jl_db *db);

/**
 * Make every committed transaction durable (fsync the database file and its WAL): with
 * synchronous=NORMAL the last commits survive a crash of the process but not of the machine.
 * For a step that must not be undone by a power loss, such as naming this file the live one.
 * JL_ERR_IO (the message in jl_db_errmsg()) when a sync fails.
 */
jl_status jl_db_sync(jl_db *db);

/** WAL checkpoints the connection's own thread has completed into @p out_background, and those
 * the writer ran itself in a commit into @p out_inline: only when that thread fell far behind
 * (16,000 pages of WAL) or could not be started. Both 0 for a read-only connection. */
void jl_db_checkpoints(jl_db *db, uint64_t *out_background, uint64_t *out_inline);

/** The SQLite handle (borrowed). */
sqlite3 *jl_db_handle(jl_db *db);

/** Path the database was opened with. */
const char *jl_db_path(const jl_db *db);

/** Last error on this connection: our text plus sqlite3_errmsg(). Never NULL. */
const char *jl_db_errmsg(const jl_db *db);

/** Run one or more SQL statements with no results. */
jl_status jl_db_exec(jl_db *db, const char *sql);

/**
 * A prepared statement for @p sql, from the cache (reset, bindings cleared) or newly prepared
 * and cached. The statement belongs to @p db and lives until jl_db_close(): do not finalize it.
 * NULL on error (see jl_db_errmsg()), including more than JL_DB_STMT_CACHE distinct texts.
 */
sqlite3_stmt *jl_db_stmt(jl_db *db, const char *sql);

/** Step @p st to completion (expects SQLITE_DONE), then reset it. */
jl_status jl_db_step_done(jl_db *db, sqlite3_stmt *st);

/** Map an SQLite result code: SQLITE_FULL -> JL_ERR_DISK_FULL, I/O and CANTOPEN -> JL_ERR_IO... */
jl_status jl_status_from_sqlite(int rc);

/** Record @p rc and sqlite3_errmsg() with a prefix; returns the mapped status. */
jl_status jl_db_fail(jl_db *db, int rc, const char *what);

/**
 * Append a canonical text dump of every read-model table to @p out: tables by name, rows ordered
 * by all their columns, values in SQL literal form ("orders|'id'|'alice'|3\n"). Tables named
 * jl_* (checkpoint, dead letters) and sqlite_* are left out. Two read models built from the same
 * events have equal dumps: this is what `verify` and the tests compare.
 */
jl_status jl_db_dump(jl_db *db, jl_buf *out);

/**
 * A malloc'ed copy of the text of column @p i of @p st's current row ("" for an SQL NULL), for a
 * query's reply; NULL only when out of memory (where sqlite3_column_text() would give NULL
 * too, which strdup() must not be given).
 */
char *jl_db_text_dup(sqlite3_stmt *st, int i);

/** The rows of jl_db_dump() one at a time, in the same order, in bounded memory. */
typedef struct jl_db_dump_cursor jl_db_dump_cursor;

/** Start a dump of @p db; close with jl_db_dump_close(). */
jl_status jl_db_dump_open(jl_db *db, jl_db_dump_cursor **out);

/**
 * The next row: its table's name and its text ("'id'|'alice'|3", @p out_len bytes), both valid
 * until the next call; or *out_end true past the last. An error (message on the database) ends
 * the dump.
 */
jl_status jl_db_dump_next(jl_db_dump_cursor *c, const char **out_table, const char **out_row,
                          size_t *out_len, bool *out_end);

/** Release @p c (NULL is fine). */
void jl_db_dump_close(jl_db_dump_cursor *c);

/**
 * One page of a paged query. Step @p st, whose LIMIT is bound to @p limit + 1 (one row more than
 * the page says whether a next page exists), reading each row with @p read into an array of
 * @p row_size-byte rows (protobuf-c messages, typically), and an array of pointers to them (the
 * form of a repeated message field).
 * @param out_rows, out_ptrs  calloc'ed; release with jl_db_page_free().
 * @param out_n     rows in the page (at most @p limit)
 * @param out_more  true when a row beyond the page exists: rows[n - 1] is the cursor
 * @p free_row frees what @p read put in a row (also used here on the extra row).
 * @return JL_OK; JL_ERR_NOMEM; the mapped SQLite error (message on @p db); what @p read returns.
 * The arrays are returned (to be freed) whatever the status.
 */
jl_status jl_db_page(jl_db *db, sqlite3_stmt *st, uint32_t limit, size_t row_size,
                     jl_status (*read)(sqlite3_stmt *st, void *row), void (*free_row)(void *row),
                     void **out_rows, void ***out_ptrs, size_t *out_n, bool *out_more);

/** Free what jl_db_page() returned, calling @p free_row on each of the @p n rows of the page. */
void jl_db_page_free(void *rows, void **ptrs, size_t n, void (*free_row)(void *row));

/** Begin (IMMEDIATE when @p write), commit, rollback. */
jl_status jl_db_begin(jl_db *db, bool write);
jl_status jl_db_commit(jl_db *db);
void jl_db_rollback(jl_db *db);

#endif /* JETLEDGER_DB_H */
