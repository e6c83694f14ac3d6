#include "jetledger/db.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "hash.h"

typedef struct cached {
    const char *key; /* the caller's pointer: a literal is found without hashing */
    uint64_t hash;   /* of the text */
    char *sql;       /* our copy of the text */
    sqlite3_stmt *st;
} cached;

/* WAL pages after which a checkpoint is due (SQLite's own default), and after which the writer
 * runs one itself because the background one fell behind (keeps the WAL bounded). */
#define CHECKPOINT_PAGES 1000
#define CHECKPOINT_INLINE_PAGES (16 * CHECKPOINT_PAGES)

/* Checkpoints off the writer's thread. With synchronous=NORMAL a checkpoint is where SQLite
 * fsyncs (the WAL, then the database): run by the committing thread, as SQLite does by default,
 * it stalled one commit in about three hundred for 5-40 ms, and every query waiting for that
 * commit (min_sequence) with it. A thread with its own connection runs them instead (PASSIVE:
 * it never blocks the writer or readers); the writer's WAL hook only wakes it. */
typedef struct checkpointer {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t thread;
    bool started, failed; /* failed: no thread, the writer checkpoints itself */
    bool due, stop;
    uint64_t runs;        /* checkpoints the thread ran */
    uint64_t inline_runs; /* checkpoints the writer ran itself (the thread behind, or none) */
} checkpointer;

struct jl_db {
    sqlite3 *h;
    char path[1024];
    char err[1536];
    cached *cache; /* grows up to JL_DB_STMT_CACHE entries */
    size_t n_cached;
    size_t n_alloc;
    checkpointer *ck; /* writers only */
};

static void *checkpoint_thread(void *arg)
{
    jl_db *db = arg;
    checkpointer *ck = db->ck;
    sqlite3 *h = NULL;
    pthread_mutex_lock(&ck->mu);
    for (;;) {
        while (!ck->due && !ck->stop)
            pthread_cond_wait(&ck->cv, &ck->mu);
        if (ck->stop)
            break;
        ck->due = false;
        pthread_mutex_unlock(&ck->mu);
        if (h == NULL) {
            if (sqlite3_open_v2(db->path, &h, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) ==
                SQLITE_OK) {
                sqlite3_busy_timeout(h, 1000);
                sqlite3_exec(h, "PRAGMA synchronous=NORMAL;", NULL, NULL, NULL);
            } else {
                sqlite3_close_v2(h); /* a failed open still allocates: try again next time */
                h = NULL;
            }
        }
        /* A failure (busy, disk full) is retried at the next commit that finds the WAL long. */
        int rc = h != NULL
                     ? sqlite3_wal_checkpoint_v2(h, NULL, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL)
                     : SQLITE_CANTOPEN;
        pthread_mutex_lock(&ck->mu);
        ck->runs += rc == SQLITE_OK;
    }
    pthread_mutex_unlock(&ck->mu);
    sqlite3_close_v2(h);
    return NULL;
}

static int wal_hook(void *arg, sqlite3 *h, const char *name, int pages)
{
    jl_db *db = arg;
    checkpointer *ck = db->ck;
    if (pages < CHECKPOINT_PAGES)
        return SQLITE_OK;
    pthread_mutex_lock(&ck->mu);
    if (!ck->started && !ck->failed) {
        ck->started = pthread_create(&ck->thread, NULL, checkpoint_thread, db) == 0;
        ck->failed = !ck->started;
    }
    ck->due = true;
    pthread_cond_signal(&ck->cv);
    bool inline_ck = ck->failed || pages >= CHECKPOINT_INLINE_PAGES;
    ck->inline_runs += inline_ck;
    pthread_mutex_unlock(&ck->mu);
    if (inline_ck)
        sqlite3_wal_checkpoint_v2(h, name, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
    return SQLITE_OK;
}

static jl_status start_checkpointer(jl_db *db)
{
    db->ck = calloc(1, sizeof(*db->ck));
    if (db->ck == NULL) {
        snprintf(db->err, sizeof(db->err), "cannot start the WAL checkpointer: out of memory");
        return JL_ERR_NOMEM;
    }
    pthread_mutex_init(&db->ck->mu, NULL);
    pthread_cond_init(&db->ck->cv, NULL);
    sqlite3_wal_hook(db->h, wal_hook, db); /* replaces SQLite's inline auto-checkpoint */
    return JL_OK;
}

static void stop_checkpointer(jl_db *db)
{
    checkpointer *ck = db->ck;
    if (ck == NULL)
        return;
    sqlite3_wal_hook(db->h, NULL, NULL);
    pthread_mutex_lock(&ck->mu);
    ck->stop = true;
    pthread_cond_signal(&ck->cv);
    pthread_mutex_unlock(&ck->mu);
    if (ck->started)
        pthread_join(ck->thread, NULL);
    pthread_cond_destroy(&ck->cv);
    pthread_mutex_destroy(&ck->mu);
    free(ck);
    db->ck = NULL;
}

jl_status jl_status_from_sqlite(int rc)
{
    switch (rc & 0xff) {
    case SQLITE_OK:
    case SQLITE_DONE:
    case SQLITE_ROW:
        return JL_OK;
    case SQLITE_FULL:
        return JL_ERR_DISK_FULL;
    case SQLITE_IOERR:
    case SQLITE_CANTOPEN:
    case SQLITE_READONLY:
    case SQLITE_PERM:
        return JL_ERR_IO;
    case SQLITE_NOMEM:
        return JL_ERR_NOMEM;
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
        return JL_ERR_TIMEOUT;
    case SQLITE_CONSTRAINT:
    case SQLITE_MISMATCH:
    case SQLITE_TOOBIG:
        return JL_ERR_INVALID;
    default:
        return JL_ERR_SQLITE;
    }
}

jl_status jl_db_fail(jl_db *db, int rc, const char *what)
{
    int primary = rc & 0xff;
    bool damaged = primary == SQLITE_CORRUPT || primary == SQLITE_NOTADB;
    /* The connection's message is of its last failure: @p rc may be another (a row missing is
     * SQLITE_DONE, which sets none). */
    bool own = db->h != NULL && sqlite3_extended_errcode(db->h) == rc;
    /* Retried, a damaged file fails the same way for ever: say what mends it. */
    snprintf(db->err, sizeof(db->err), "%s: %s (sqlite %d) [%s]%s", what,
             own ? sqlite3_errmsg(db->h) : sqlite3_errstr(rc), rc, db->path,
             damaged ? "; the file is damaged: rebuild the read model from the stream "
                       "(jetledger rebuild), or stop the service, move its files aside and start "
                       "it again"
                     : "");
    jl_status s = jl_status_from_sqlite(rc);
    return s == JL_OK ? JL_ERR_SQLITE : s;
}

/* WAL, or an error: queries beside the applying connection, and a rebuild or verify reading
 * beside it, rely on it. SQLite answers the mode in force, not an error, where it cannot be set
 * (a file system without shared memory, a rollback journal held by another connection). */
static jl_status wal_mode(jl_db *db)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db->h, "PRAGMA journal_mode=WAL", -1, &st, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_step(st);
    jl_status s = JL_OK;
    if (rc != SQLITE_ROW) {
        s = jl_db_fail(db, rc, "cannot set the journal mode");
    } else {
        const char *mode = (const char *)sqlite3_column_text(st, 0);
        if (mode == NULL || sqlite3_stricmp(mode, "wal") != 0) {
            snprintf(db->err, sizeof(db->err),
                     "%s: SQLite cannot use write-ahead logging there (journal mode stays %s): "
                     "put the data directory on a local file system",
                     db->path, mode ? mode : "unknown");
            s = JL_ERR_IO;
        }
    }
    sqlite3_finalize(st);
    return s;
}

jl_status jl_db_open(jl_db **out_db, const char *path, bool readonly, char *err, size_t errlen)
{
    jl_status s = JL_OK;
    if (strlen(path) >= sizeof(((jl_db *)NULL)->path)) {
        /* SQLite would open the whole path; the checkpointer and jl_db_sync() the cut one. */
        snprintf(err, errlen, "database path of %zu bytes is too long (at most %zu)", strlen(path),
                 sizeof(((jl_db *)NULL)->path) - 1);
        return JL_ERR_INVALID;
    }
    jl_db *db = calloc(1, sizeof(*db));
    if (db == NULL) {
        snprintf(err, errlen, "cannot open %s: out of memory", path);
        return JL_ERR_NOMEM;
    }
    snprintf(db->path, sizeof(db->path), "%s", path);
    int flags = readonly ? SQLITE_OPEN_READONLY : (SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE);
    int rc = sqlite3_open_v2(path, &db->h, flags | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        s = jl_db_fail(db, rc, "cannot open database");
        goto done;
    }
    sqlite3_extended_result_codes(db->h, 1);
    sqlite3_busy_timeout(db->h, JL_DB_BUSY_MS);
    if (!readonly)
        s = wal_mode(db);
    if (s == JL_OK && !readonly)
        s = jl_db_exec(db, "PRAGMA synchronous=NORMAL;");
    if (s == JL_OK && !readonly)
        s = start_checkpointer(db);
    if (s == JL_OK)
        s = jl_db_exec(db, "PRAGMA foreign_keys=ON;");
done:
    if (s != JL_OK) {
        snprintf(err, errlen, "%s", db->err);
        jl_db_close(db);
        return s;
    }
    *out_db = db;
    return JL_OK;
}

void jl_db_close(jl_db *db)
{
    if (db == NULL)
        return;
    stop_checkpointer(db); /* first: closing the last connection checkpoints and drops the WAL */
    for (size_t i = 0; i < db->n_cached; i++) {
        sqlite3_finalize(db->cache[i].st);
        free(db->cache[i].sql);
    }
    free(db->cache);
    sqlite3_close_v2(db->h);
    free(db);
}

void jl_db_checkpoints(jl_db *db, uint64_t *out_background, uint64_t *out_inline)
{
    *out_background = *out_inline = 0;
    if (db->ck == NULL)
        return;
    pthread_mutex_lock(&db->ck->mu);
    *out_background = db->ck->runs;
    *out_inline = db->ck->inline_runs;
    pthread_mutex_unlock(&db->ck->mu);
}

sqlite3 *jl_db_handle(jl_db *db)
{
    return db->h;
}

const char *jl_db_path(const jl_db *db)
{
    return db->path;
}

/* fsync @p path; a file that does not exist has nothing to sync. */
static bool sync_file(jl_db *db, const char *path)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0 && errno == ENOENT)
        return true;
    bool ok = fd >= 0 && fsync(fd) == 0;
    if (!ok)
        snprintf(db->err, sizeof(db->err), "cannot sync %s: %s", path, strerror(errno));
    if (fd >= 0)
        close(fd);
    return ok;
}

jl_status jl_db_sync(jl_db *db)
{
    char wal[1100];
    snprintf(wal, sizeof(wal), "%s-wal", db->path);
    /* The WAL first: it holds what the database file does not have yet. */
    return sync_file(db, wal) && sync_file(db, db->path) ? JL_OK : JL_ERR_IO;
}

const char *jl_db_errmsg(const jl_db *db)
{
    return db->err;
}

jl_status jl_db_exec(jl_db *db, const char *sql)
{
    char *msg = NULL;
    int rc = sqlite3_exec(db->h, sql, NULL, NULL, &msg);
    if (rc != SQLITE_OK) {
        snprintf(db->err, sizeof(db->err), "%s (sqlite %d) [%s]", msg ? msg : sqlite3_errstr(rc),
                 rc, db->path);
        sqlite3_free(msg);
        jl_status s = jl_status_from_sqlite(rc);
        return s == JL_OK ? JL_ERR_SQLITE : s;
    }
    return JL_OK;
}

static sqlite3_stmt *reuse(sqlite3_stmt *st)
{
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return st;
}

sqlite3_stmt *jl_db_stmt(jl_db *db, const char *sql)
{
    /* Apply functions pass the same literal for every event: match the pointer first (the
     * text is still compared, so a reused buffer with other SQL is never mistaken). */
    for (size_t i = 0; i < db->n_cached; i++) {
        if (db->cache[i].key == sql && strcmp(db->cache[i].sql, sql) == 0)
            return reuse(db->cache[i].st);
    }
    uint64_t h = jl__fnv1a64_str(sql);
    for (size_t i = 0; i < db->n_cached; i++) {
        if (db->cache[i].hash == h && strcmp(db->cache[i].sql, sql) == 0) {
            db->cache[i].key = sql;
            return reuse(db->cache[i].st);
        }
    }
    if (db->n_cached == JL_DB_STMT_CACHE) {
        snprintf(db->err, sizeof(db->err),
                 "more than %d distinct SQL statements on one connection [%s]", JL_DB_STMT_CACHE,
                 db->path);
        return NULL;
    }
    if (db->n_cached == db->n_alloc) {
        size_t n = db->n_alloc ? db->n_alloc * 2 : 16;
        cached *c = realloc(db->cache, n * sizeof(*c));
        if (c == NULL) {
            snprintf(db->err, sizeof(db->err), "out of memory [%s]", db->path);
            return NULL;
        }
        db->cache = c;
        db->n_alloc = n;
    }
    char *copy = strdup(sql);
    sqlite3_stmt *st = NULL;
    int rc = copy ? sqlite3_prepare_v3(db->h, sql, -1, SQLITE_PREPARE_PERSISTENT, &st, NULL)
                  : SQLITE_NOMEM;
    if (rc != SQLITE_OK) {
        free(copy);
        jl_db_fail(db, rc, "cannot prepare SQL");
        return NULL;
    }
    db->cache[db->n_cached].key = sql;
    db->cache[db->n_cached].hash = h;
    db->cache[db->n_cached].sql = copy;
    db->cache[db->n_cached].st = st;
    db->n_cached++;
    return st;
}

jl_status jl_db_step_done(jl_db *db, sqlite3_stmt *st)
{
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW)
        ;
    jl_status s = rc == SQLITE_DONE ? JL_OK : jl_db_fail(db, rc, "statement failed");
    sqlite3_reset(st);
    return s;
}

/* Transaction control runs once per batch and per query: prepared once, not parsed each time. */
static jl_status exec_cached(jl_db *db, const char *sql)
{
    sqlite3_stmt *st = jl_db_stmt(db, sql);
    return st != NULL ? jl_db_step_done(db, st) : jl_db_exec(db, sql);
}

jl_status jl_db_begin(jl_db *db, bool write)
{
    return exec_cached(db, write ? "BEGIN IMMEDIATE" : "BEGIN");
}

jl_status jl_db_commit(jl_db *db)
{
    return exec_cached(db, "COMMIT");
}

void jl_db_rollback(jl_db *db)
{
    if (!sqlite3_get_autocommit(db->h))
        (void)exec_cached(db, "ROLLBACK");
}

/* Build "SELECT quote(a)||'|'||quote(b) ... FROM t ORDER BY 1" for table @p t. */
static jl_status dump_query(jl_db *db, const char *table, jl_buf *sql)
{
    sqlite3_stmt *st = NULL;
    jl_buf cols;
    jl_buf_init(&cols, 64 * 1024);
    jl_buf_reset(sql);
    char *pragma = sqlite3_mprintf("PRAGMA table_info(\"%w\")", table);
    int rc = pragma ? sqlite3_prepare_v2(db->h, pragma, -1, &st, NULL) : SQLITE_NOMEM;
    sqlite3_free(pragma);
    if (rc != SQLITE_OK) {
        jl_buf_cleanup(&cols);
        return jl_db_fail(db, rc, "cannot list columns");
    }
    jl_status s = JL_OK;
    int n = 0;
    while (s == JL_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        char *q = sqlite3_mprintf("%squote(\"%w\")", n ? "||'|'||" : "",
                                  (const char *)sqlite3_column_text(st, 1));
        s = q ? jl_buf_adds(&cols, q) : JL_ERR_NOMEM;
        sqlite3_free(q);
        n++;
    }
    /* A list cut short (busy, I/O) would compare partial rows: an error, not a dump. */
    if (s == JL_OK && rc != SQLITE_DONE)
        s = jl_db_fail(db, rc, "cannot list columns");
    sqlite3_finalize(st);
    if (s == JL_OK) {
        /* Ordered by the row's own text: canonical whatever the table's keys. */
        char *q = sqlite3_mprintf("SELECT %s FROM \"%w\" ORDER BY 1", jl_buf_str(&cols), table);
        s = q ? jl_buf_adds(sql, q) : JL_ERR_NOMEM;
        sqlite3_free(q);
    }
    jl_buf_cleanup(&cols);
    return s;
}

char *jl_db_text_dup(sqlite3_stmt *st, int i)
{
    const unsigned char *t = sqlite3_column_text(st, i);
    if (t == NULL && sqlite3_column_type(st, i) != SQLITE_NULL)
        return NULL; /* a conversion that ran out of memory */
    return strdup(t != NULL ? (const char *)t : "");
}

struct jl_db_dump_cursor {
    jl_db *db;
    sqlite3_stmt *tables; /* the tables, by name */
    sqlite3_stmt *rows;   /* the current table's rows, or NULL between tables */
    const char *table;    /* the current table's name (owned by tables) */
    jl_buf sql;
};

jl_status jl_db_dump_open(jl_db *db, jl_db_dump_cursor **out)
{
    jl_db_dump_cursor *c = calloc(1, sizeof(*c));
    *out = NULL;
    if (c == NULL)
        return JL_ERR_NOMEM;
    c->db = db;
    jl_buf_init(&c->sql, 128 * 1024);
    int rc = sqlite3_prepare_v2(db->h,
                                "SELECT name FROM sqlite_master WHERE type = 'table' AND name "
                                "NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND name NOT LIKE 'jl\\_%' "
                                "ESCAPE '\\' ORDER BY name",
                                -1, &c->tables, NULL);
    if (rc != SQLITE_OK) {
        jl_db_dump_close(c);
        return jl_db_fail(db, rc, "cannot list tables");
    }
    *out = c;
    return JL_OK;
}

jl_status jl_db_dump_next(jl_db_dump_cursor *c, const char **out_table, const char **out_row,
                          size_t *out_len, bool *out_end)
{
    *out_end = false;
    for (;;) {
        if (c->rows != NULL) {
            int rc = sqlite3_step(c->rows);
            if (rc == SQLITE_ROW) {
                const char *row = (const char *)sqlite3_column_text(c->rows, 0);
                if (row == NULL) /* quote() of every column is never NULL: out of memory */
                    return jl_db_fail(c->db, SQLITE_NOMEM, "dump failed");
                *out_table = c->table;
                *out_row = row;
                *out_len = (size_t)sqlite3_column_bytes(c->rows, 0);
                return JL_OK;
            }
            sqlite3_finalize(c->rows);
            c->rows = NULL;
            if (rc != SQLITE_DONE) /* a table cut short would compare partial: an error */
                return jl_db_fail(c->db, rc, "dump failed");
        }
        int rc = sqlite3_step(c->tables);
        if (rc == SQLITE_DONE) {
            *out_end = true;
            return JL_OK;
        }
        if (rc != SQLITE_ROW)
            return jl_db_fail(c->db, rc, "cannot list tables");
        c->table = (const char *)sqlite3_column_text(c->tables, 0);
        if (c->table == NULL)
            return jl_db_fail(c->db, SQLITE_NOMEM, "cannot list tables");
        jl_status s = dump_query(c->db, c->table, &c->sql);
        if (s != JL_OK)
            return s;
        rc = sqlite3_prepare_v2(c->db->h, jl_buf_str(&c->sql), -1, &c->rows, NULL);
        if (rc != SQLITE_OK)
            return jl_db_fail(c->db, rc, "cannot dump table");
    }
}

void jl_db_dump_close(jl_db_dump_cursor *c)
{
    if (c == NULL)
        return;
    sqlite3_finalize(c->rows);
    sqlite3_finalize(c->tables);
    jl_buf_cleanup(&c->sql);
    free(c);
}

jl_status jl_db_dump(jl_db *db, jl_buf *out)
{
    jl_db_dump_cursor *c = NULL;
    jl_status s = jl_db_dump_open(db, &c);
    const char *table = NULL, *row = NULL;
    size_t len = 0;
    bool end = false;
    while (s == JL_OK && (s = jl_db_dump_next(c, &table, &row, &len, &end)) == JL_OK && !end)
        s = jl_buf_addf(out, "%s|%.*s\n", table, (int)len, row);
    jl_db_dump_close(c);
    return s;
}

jl_status jl_db_page(jl_db *db, sqlite3_stmt *st, uint32_t limit, size_t row_size,
                     jl_status (*read)(sqlite3_stmt *st, void *row), void (*free_row)(void *row),
                     void **out_rows, void ***out_ptrs, size_t *out_n, bool *out_more)
{
    uint8_t *rows = calloc((size_t)limit + 1, row_size);
    void **ptrs = calloc((size_t)limit + 1, sizeof(*ptrs));
    size_t n = 0;
    jl_status s = (rows && ptrs) ? JL_OK : JL_ERR_NOMEM;
    int rc = SQLITE_DONE;
    while (s == JL_OK && n <= limit && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        ptrs[n] = rows + n * row_size;
        s = read(st, ptrs[n]);
        n++; /* counted even when read failed: the row may hold parts to free */
    }
    if (s == JL_OK && rc != SQLITE_DONE && rc != SQLITE_ROW)
        s = jl_db_fail(db, rc, "paged query failed");
    sqlite3_reset(st);
    *out_more = s == JL_OK && n > limit;
    if (n > limit) { /* the extra row only said that there is more */
        free_row(ptrs[limit]);
        n = limit;
    }
    *out_rows = rows;
    *out_ptrs = ptrs;
    *out_n = n;
    return s;
}

void jl_db_page_free(void *rows, void **ptrs, size_t n, void (*free_row)(void *row))
{
    for (size_t i = 0; ptrs != NULL && i < n; i++)
        free_row(ptrs[i]);
    free(rows);
    free(ptrs);
}
