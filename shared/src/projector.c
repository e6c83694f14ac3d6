#include "jetledger/projector.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#include <time.h>

#include "jetledger/admin.pb-c.h"
#include "jetledger/codec.h"
#include "jetledger/json.h"
#include "jetledger/log.h"
#include "deadline.h"
#include "hash.h"
#include "projector_int.h"

/* Messages behind the stream's head above which a projector catches up with an ordered
 * consumer instead of its durable. */
#define JL_CATCH_UP_THRESHOLD 5000
/* Idle, how often a consumer is asked whether it delivered what never arrived (lost_while_idle). */
#define JL_IDLE_PROBE_MS 3000

const char *const jl__state_sql =
    "CREATE TABLE IF NOT EXISTS jl_state ("
    "  id INTEGER PRIMARY KEY CHECK (id = 1),"
    "  projector TEXT NOT NULL,"
    "  stream TEXT NOT NULL,"
    "  version INTEGER NOT NULL,"
    "  last_seq INTEGER NOT NULL,"
    "  updated_at_ns INTEGER NOT NULL);"
    /* Besides the last sequence applied, which stream that was (stream_created_ns) and the
     * message last applied (at id_seq, id_hash: FNV-1a 64 of its data, 0 none): a stream
     * deleted and created again is told from the one the read model was built from
     * (check_stream). */
    "CREATE TABLE IF NOT EXISTS jl_checkpoints ("
    "  stream TEXT PRIMARY KEY,"
    "  last_seq INTEGER NOT NULL,"
    "  stream_created_ns INTEGER NOT NULL DEFAULT 0,"
    "  id_seq INTEGER NOT NULL DEFAULT 0,"
    "  id_hash INTEGER NOT NULL DEFAULT 0);"
    "CREATE TABLE IF NOT EXISTS jl_dead_letters ("
    "  stream TEXT NOT NULL,"
    "  seq INTEGER NOT NULL,"
    "  event_index INTEGER NOT NULL," /* -1: the whole message could not be decoded */
    "  event_id TEXT NOT NULL,"
    "  event_type TEXT NOT NULL,"
    "  subject TEXT NOT NULL,"
    "  reason TEXT NOT NULL,"
    "  data BLOB,"
    "  at_ns INTEGER NOT NULL,"
    "  PRIMARY KEY (stream, seq, event_index));"
    /* The newest first, by a walk of this index: sorting the table (never pruned, holding each
     * message's bytes) took 330 ms at 300,000 rows, holding up every query meanwhile. */
    "CREATE INDEX IF NOT EXISTS jl_dead_letters_by_time ON jl_dead_letters (at_ns, seq);"
    "CREATE TABLE IF NOT EXISTS jl_outbox ("
    "  id INTEGER PRIMARY KEY AUTOINCREMENT,"
    "  command_id TEXT NOT NULL UNIQUE,"
    "  service TEXT NOT NULL,"
    "  command TEXT NOT NULL,"
    "  body BLOB NOT NULL,"
    "  correlation_id TEXT NOT NULL,"
    "  causation_id TEXT NOT NULL,"
    "  created_at_ns INTEGER NOT NULL,"
    "  replied_at_ns INTEGER,"
    "  reply_code TEXT,"
    "  reply_message TEXT,"
    "  attempts INTEGER NOT NULL DEFAULT 0,"
    "  order_key TEXT NOT NULL DEFAULT '');"
    /* The sender reads the rows still to send after every batch: without it, a scan of every
     * row ever sent. */
    "CREATE INDEX IF NOT EXISTS jl_outbox_unsent ON jl_outbox (id) WHERE replied_at_ns IS NULL;";

/* A process manager's only (plain projectors never fill their outbox): pruning finds the
 * answered rows past the keep time through the first, not by a scan of them all; an operator's
 * list (jetledger outbox) the refusals through the second. */
static const char *const outbox_sql =
    "CREATE INDEX IF NOT EXISTS jl_outbox_replied ON jl_outbox (replied_at_ns) WHERE "
    "replied_at_ns IS NOT NULL;"
    "CREATE INDEX IF NOT EXISTS jl_outbox_refused ON jl_outbox (id) WHERE "
    " " JL_OUTBOX_REFUSED_SQL ";";

/* Why the last call failed: the projector's own (open, step, apply on the caller's thread),
 * or a source's (each source steps on a thread of its own). */
static void fmt_err(char *buf, size_t n, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void fmt_err(char *buf, size_t n, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, n, fmt, ap);
    va_end(ap);
}
#define set_err(p, ...) fmt_err((p)->err, sizeof((p)->err), __VA_ARGS__)
#define src_err(src, ...) fmt_err((src)->err, sizeof((src)->err), __VA_ARGS__)

const char *jl_projector_errmsg(const jl_projector *p)
{
    return p->err;
}

static jl_status mkdir_p(const char *dir, char *err, size_t errlen)
{
    char tmp[1024];
    snprintf(tmp, sizeof(tmp), "%s", dir);
    if (tmp[0] == 0) {
        snprintf(err, errlen, "the data directory is empty (--data-dir, JL_DATA_DIR)");
        return JL_ERR_INVALID;
    }
    for (char *s = tmp + 1; *s; s++) {
        if (*s == '/') {
            *s = 0;
            if (mkdir(tmp, 0755) != 0 && errno != EEXIST)
                goto fail;
            *s = '/';
        }
    }
    if (mkdir(tmp, 0755) != 0 && errno != EEXIST)
        goto fail;
    return JL_OK;
fail:
    snprintf(err, errlen, "cannot create data directory %s: %s", tmp, strerror(errno));
    return JL_ERR_IO;
}

/* ---- database ---- */

jl_status jl__proj_create_schema(jl_projector *p, jl_db *db, char *err, size_t errlen)
{
    jl_status s = jl_db_begin(db, true);
    if (s == JL_OK)
        s = jl_db_exec(db, jl__state_sql);
    if (s == JL_OK && p->def->outbox)
        s = jl_db_exec(db, outbox_sql);
    if (s == JL_OK && p->def->schema_sql != NULL)
        s = jl_db_exec(db, p->def->schema_sql);
    sqlite3_stmt *st = NULL;
    if (s == JL_OK) {
        st = jl_db_stmt(db, "INSERT INTO jl_state (id, projector, stream, version, last_seq, "
                            "updated_at_ns) VALUES (1, ?, ?, ?, 0, ?)");
        s = st != NULL ? JL_OK : JL_ERR_SQLITE;
    }
    if (s == JL_OK) {
        sqlite3_bind_text(st, 1, p->def->name, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, p->src[0].stream, -1, SQLITE_STATIC);
        sqlite3_bind_int(st, 3, p->def->version);
        sqlite3_bind_int64(st, 4, jl__now_ns());
        s = jl_db_step_done(db, st);
    }
    for (int i = 0; s == JL_OK && i < p->n_src; i++) {
        st = jl_db_stmt(db, "INSERT INTO jl_checkpoints (stream, last_seq) VALUES (?, 0)");
        s = st != NULL ? JL_OK : JL_ERR_SQLITE;
        if (s == JL_OK) {
            sqlite3_bind_text(st, 1, p->src[i].stream, -1, SQLITE_STATIC);
            s = jl_db_step_done(db, st);
        }
    }
    if (s == JL_OK)
        s = jl_db_commit(db);
    if (s != JL_OK) {
        snprintf(err, errlen, "cannot create the read model's tables: %s", jl_db_errmsg(db));
        jl_db_rollback(db);
    }
    return s;
}

/* A file written before jl_checkpoints said which stream it was: the columns start empty, and
 * the first attach fills them in. */
/* Add the columns of a newer version to @p table of a file made before them: @p add, ALTER
 * TABLE statements run in one transaction unless the table has column @p last (the last one
 * they add) already. The new columns go last, as in a file made with them. */
static jl_status add_columns(jl_db *db, const char *table, const char *last, const char *const *add,
                             size_t n_add)
{
    sqlite3_stmt *st = jl_db_stmt(db, "SELECT count(*) FROM pragma_table_info(?) WHERE name = ?");
    if (st == NULL)
        return JL_ERR_SQLITE;
    sqlite3_bind_text(st, 1, table, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, last, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    bool has = rc == SQLITE_ROW && sqlite3_column_int(st, 0) > 0;
    sqlite3_reset(st);
    if (rc != SQLITE_ROW)
        return jl_db_fail(db, rc, "cannot read a table's columns");
    jl_status s = has ? JL_OK : jl_db_begin(db, true);
    for (size_t i = 0; !has && s == JL_OK && i < n_add; i++)
        s = jl_db_exec(db, add[i]);
    if (!has && s == JL_OK)
        s = jl_db_commit(db);
    if (s != JL_OK)
        jl_db_rollback(db);
    return s;
}

static jl_status add_later_columns(jl_db *db)
{
    static const char *const checkpoints[] = {
        "ALTER TABLE jl_checkpoints ADD COLUMN stream_created_ns INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE jl_checkpoints ADD COLUMN id_seq INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE jl_checkpoints ADD COLUMN id_hash INTEGER NOT NULL DEFAULT 0"};
    static const char *const outbox[] = {
        "ALTER TABLE jl_outbox ADD COLUMN order_key TEXT NOT NULL DEFAULT ''"};
    jl_status s = add_columns(db, "jl_checkpoints", "id_hash", checkpoints,
                              sizeof(checkpoints) / sizeof(checkpoints[0]));
    return s == JL_OK ? add_columns(db, "jl_outbox", "order_key", outbox, 1) : s;
}

/* Open the current file: create its tables when new, else check whose it is and its version. */
static jl_status init_database(jl_projector *p)
{
    jl_db *db = p->db;
    sqlite3_stmt *st = NULL;
    int rc = SQLITE_DONE;
    jl_status s = jl_db_exec(db, "CREATE TABLE IF NOT EXISTS jl_state (id INTEGER PRIMARY KEY)");
    if (s == JL_OK) {
        st = jl_db_stmt(db, "SELECT count(*) FROM pragma_table_info('jl_state')");
        s = st != NULL ? JL_OK : JL_ERR_SQLITE;
    }
    if (s == JL_OK) {
        rc = sqlite3_step(st);
        bool fresh = rc == SQLITE_ROW && sqlite3_column_int(st, 0) <= 1;
        sqlite3_reset(st);
        if (rc != SQLITE_ROW) { /* busy, I/O: said as such, not as a table found wanting later */
            s = jl_db_fail(db, rc, "cannot read jl_state's columns");
        } else if (fresh) {
            s = jl_db_exec(db, "DROP TABLE jl_state");
            if (s == JL_OK)
                s = jl__proj_create_schema(p, db, p->err, sizeof(p->err));
        }
    }
    /* Tables and columns added by later versions of the runtime. */
    if (s == JL_OK)
        s = jl_db_exec(db, jl__state_sql);
    if (s == JL_OK && p->def->outbox)
        s = jl_db_exec(db, outbox_sql);
    if (s == JL_OK)
        s = add_later_columns(db);
    if (s == JL_OK) {
        st = jl_db_stmt(db,
                        "SELECT projector, stream, version, last_seq FROM jl_state WHERE id = 1");
        s = st != NULL ? JL_OK : JL_ERR_SQLITE;
    }
    if (s == JL_OK && (rc = sqlite3_step(st)) != SQLITE_ROW)
        s = jl_db_fail(db, rc, "jl_state has no row");
    if (s == JL_OK) {
        const char *proj = (const char *)sqlite3_column_text(st, 0);
        const char *stream = (const char *)sqlite3_column_text(st, 1);
        p->db_version = sqlite3_column_int(st, 2);
        if (proj == NULL || stream == NULL) { /* NOT NULL columns: out of memory */
            s = jl_db_fail(db, SQLITE_NOMEM, "cannot read jl_state");
        } else if (strcmp(proj, p->def->name) != 0 || strcmp(stream, p->src[0].stream) != 0) {
            set_err(p, "%s belongs to projector %s on stream %s, not %s on %s", p->db_path, proj,
                    stream, p->def->name, p->src[0].stream);
            s = JL_ERR_INVALID;
        } else if (p->db_version > p->def->version) {
            set_err(p,
                    "%s was built by version %d of projection %s; this program is version %d "
                    "and does not read it (to go back, move the file aside: this program then "
                    "replays the stream into a new one; a process manager's file also holds "
                    "its outbox, which a replay does not bring back)",
                    p->db_path, p->db_version, p->def->name, p->def->version);
            s = JL_ERR_VERSION;
        }
    }
    if (st != NULL)
        sqlite3_reset(st);
    for (int i = 0; s == JL_OK && i < p->n_src; i++) {
        st = jl_db_stmt(db, "SELECT last_seq FROM jl_checkpoints WHERE stream = ?");
        s = st != NULL ? JL_OK : JL_ERR_SQLITE;
        if (s == JL_OK) {
            sqlite3_bind_text(st, 1, p->src[i].stream, -1, SQLITE_STATIC);
            int rc2 = sqlite3_step(st);
            if (rc2 == SQLITE_ROW) {
                p->src[i].checkpoint = (uint64_t)sqlite3_column_int64(st, 0);
            } else if (rc2 == SQLITE_DONE) {
                set_err(p,
                        "%s has no checkpoint for stream %s: it was built for other sources (a "
                        "projection given a new source is not rebuilt by itself: move the file "
                        "aside, and this program replays every source into a new one; a "
                        "process manager's file also holds its outbox, which a replay does not "
                        "bring back)",
                        p->db_path, p->src[i].stream);
                s = JL_ERR_INVALID;
            } else {
                s = jl_db_fail(db, rc2, "cannot read jl_checkpoints");
            }
            sqlite3_reset(st);
        }
    }
    /* An older file keeps its schema until the rebuild replaces it: the new schema SQL may not
     * apply to it. */
    if (s == JL_OK && p->db_version == p->def->version && p->def->schema_sql != NULL)
        s = jl_db_exec(db, p->def->schema_sql);
    if (s == JL_OK && p->db_version < p->def->version)
        atomic_store(&p->paused, true);
    if (s != JL_OK && p->err[0] == 0)
        set_err(p, "cannot initialise read model: %s", jl_db_errmsg(db));
    return s;
}

void jl__proj_remove_db(const char *path)
{
    char side[1200];
    unlink(path);
    snprintf(side, sizeof(side), "%s-wal", path);
    unlink(side);
    snprintf(side, sizeof(side), "%s-shm", path);
    unlink(side);
}

static void pointer_path(const jl_projector *p, char *out, size_t n)
{
    snprintf(out, n, "%s/%s.current", p->data_dir, p->def->name);
}

/* What a file in the data dir is to the projector @p name: its first model "<name>.db", the
 * files rebuilds write ("<name>.rebuild-<digits>.db", "<name>.verify-<digits>.db"), a model a
 * switch kept ("<name>.replaced-<digits>.db"), or none of its own. */
typedef enum file_kind {
    OTHER_FILE,
    FIRST_FILE,
    REBUILD_FILE,
    VERIFY_FILE,
    REPLACED_FILE
} file_kind;
static file_kind file_kind_of(const char *file, const char *name);

/* Whether @p p's data dir holds a rebuild's file (a switched-to live file, without its
 * pointer, is one), its name into @p out. */
static bool has_rebuild_file(const jl_projector *p, char *out, size_t n)
{
    DIR *d = opendir(p->data_dir);
    struct dirent *e;
    bool found = false;
    if (d == NULL)
        return false;
    while (!found && (e = readdir(d)) != NULL) {
        /* A verify's scratch file is never live: it blocks nothing. */
        if ((found = file_kind_of(e->d_name, p->def->name) == REBUILD_FILE))
            snprintf(out, n, "%s", e->d_name);
    }
    closedir(d);
    return found;
}

/* Whether @p file could be one of @p p's read model files: "<name>...db", in the data dir. */
static bool ours(const jl_projector *p, const char *file)
{
    size_t nl = strlen(p->def->name), n = strlen(file);
    return strncmp(file, p->def->name, nl) == 0 && strchr(file, '/') == NULL && n > 3 &&
           strcmp(file + n - 3, ".db") == 0;
}

/*
 * Which file is live: the pointer file names it; without one, "<name>.db". What cannot be
 * read for sure stops the start rather than have it take another file for the live one (and
 * remove the real one as a rebuild's leftover, or build anew from the stream what may have
 * aged out of it): a pointer that cannot be read, holds no name of ours, or names a file that
 * is not there; no pointer and no "<name>.db" beside a rebuild's file.
 */
static jl_status read_pointer(jl_projector *p, char *err, size_t errlen)
{
    char path[1100], name[256] = "", other[256] = "";
    struct stat st;
    pointer_path(p, path, sizeof(path));
    FILE *f = fopen(path, "r");
    if (f == NULL && errno != ENOENT) {
        snprintf(err, errlen, "cannot read %s, which names the live read model: %s", path,
                 strerror(errno));
        return JL_ERR_IO;
    }
    if (f == NULL) {
        snprintf(p->file, sizeof(p->file), "%s.db", p->def->name);
        snprintf(p->db_path, sizeof(p->db_path), "%s/%s", p->data_dir, p->file);
        if (stat(p->db_path, &st) != 0 && errno == ENOENT &&
            has_rebuild_file(p, other, sizeof(other))) {
            snprintf(err, errlen,
                     "%s holds %s but neither %s nor %s.db: if %s is the live read model, "
                     "write its name into %s; to build anew, remove %s.* there",
                     p->data_dir, other, path, p->def->name, other, path, p->def->name);
            return JL_ERR_INVALID;
        }
        return JL_OK;
    }
    bool read = fgets(name, sizeof(name), f) != NULL;
    /* A second line names the file this one replaced, which a switch cut short after the
     * pointer was written may have left: "replaces <file>" (to remove) or "keeps <file>
     * <kept name>" (--keep-old, to rename); see jl__proj_switch. */
    char line[2 * sizeof(p->replaced) + 16] = "";
    p->replaced[0] = 0;
    p->keep_as[0] = 0;
    if (read && fgets(line, sizeof(line), f) != NULL) {
        line[strcspn(line, "\r\n")] = 0;
        char *old = NULL, *kept = NULL;
        if (strncmp(line, "replaces ", 9) == 0) {
            old = line + 9;
        } else if (strncmp(line, "keeps ", 6) == 0 && (kept = strchr(line + 6, ' ')) != NULL) {
            *kept++ = 0;
            old = line + 6;
        }
        /* Only "<name>.db" or a rebuild's file is ever replaced (never another projector's,
         * whose name "<name>" only begins), and kept as a replaced one. */
        file_kind was = old != NULL ? file_kind_of(old, p->def->name) : OTHER_FILE;
        if ((was == FIRST_FILE || was == REBUILD_FILE) && strlen(old) < sizeof(p->replaced) &&
            (kept == NULL || (file_kind_of(kept, p->def->name) == REPLACED_FILE &&
                              strlen(kept) < sizeof(p->keep_as)))) {
            snprintf(p->replaced, sizeof(p->replaced), "%s", old);
            if (kept != NULL)
                snprintf(p->keep_as, sizeof(p->keep_as), "%s", kept);
        }
    }
    bool failed = ferror(f);
    fclose(f);
    name[strcspn(name, "\r\n")] = 0;
    bool ok = read && !failed && ours(p, name);
    if (!ok) {
        snprintf(err, errlen, "%s does not name a read model file of %s (it holds '%.64s')", path,
                 p->def->name, name);
        return JL_ERR_INVALID;
    }
    snprintf(p->file, sizeof(p->file), "%s", name);
    snprintf(p->db_path, sizeof(p->db_path), "%s/%s", p->data_dir, p->file);
    if (stat(p->db_path, &st) != 0) {
        snprintf(err, errlen, "%s names %s, the live read model, which cannot be found: %s", path,
                 p->db_path, strerror(errno));
        return JL_ERR_IO;
    }
    return JL_OK;
}

/* Only these are ever removed or renamed by a start: the data dir may be shared with other
 * projectors (and before this naming, "<name>-<digits>.db", which "<name>-2"'s live file also
 * matches). */
static file_kind file_kind_of(const char *file, const char *name)
{
    static const struct {
        const char *infix;
        file_kind kind;
    } numbered[] = {
        {".rebuild-", REBUILD_FILE}, {".verify-", VERIFY_FILE}, {".replaced-", REPLACED_FILE}};
    size_t nl = strlen(name);
    if (strncmp(file, name, nl) != 0)
        return OTHER_FILE;
    const char *rest = file + nl;
    if (strcmp(rest, ".db") == 0)
        return FIRST_FILE;
    for (size_t i = 0; i < JL_COUNT(numbered); i++) {
        size_t il = strlen(numbered[i].infix);
        if (strncmp(rest, numbered[i].infix, il) != 0)
            continue;
        size_t digits = strspn(rest + il, "0123456789");
        return digits > 0 && strcmp(rest + il + digits, ".db") == 0 ? numbered[i].kind : OTHER_FILE;
    }
    return OTHER_FILE;
}

static bool sync_dir(const char *dir);

/* Whether @p file is "<file of ours>.db-wal" or "-shm" with no such database beside it: a
 * connection left them on a file removed while it was open, and was stopped before its close
 * took them away. */
static bool orphan_side_file(const jl_projector *p, const char *file)
{
    char base[300], path[1400];
    size_t n = strlen(file);
    if (n < 5 || n >= sizeof(base) ||
        (strcmp(file + n - 4, "-wal") != 0 && strcmp(file + n - 4, "-shm") != 0))
        return false;
    memcpy(base, file, n - 4);
    base[n - 4] = 0;
    snprintf(path, sizeof(path), "%s/%s", p->data_dir, base);
    return file_kind_of(base, p->def->name) != OTHER_FILE && access(path, F_OK) != 0 &&
           errno == ENOENT;
}

/*
 * Give the replaced model @p old (a file name in @p dir) its kept name @p kept: renamed, or,
 * linked there already, its old name removed. Its WAL goes with it (frames not yet folded in
 * are the kept model's: a process manager's outbox sender may have had the file open), its
 * -shm is removed. False with errno set when the rename fails.
 */
static bool keep_replaced(const char *dir, const char *old, const char *kept)
{
    char o[1100], k[1100], ow[1200], kw[1200];
    struct stat so, sk;
    snprintf(o, sizeof(o), "%s/%s", dir, old);
    snprintf(k, sizeof(k), "%s/%s", dir, kept);
    if (stat(o, &so) != 0) {
        /* Renamed already (a stop before its WAL followed, which it does now). */
    } else if (stat(k, &sk) == 0 && so.st_ino == sk.st_ino && so.st_dev == sk.st_dev) {
        if (unlink(o) != 0) /* still pending: a "<name>.db" left would never be settled */
            return false;
    } else if (rename(o, k) != 0) {
        return false;
    }
    snprintf(ow, sizeof(ow), "%s-wal", o);
    snprintf(kw, sizeof(kw), "%s-wal", k);
    if (rename(ow, kw) != 0 && errno != ENOENT) /* none (folded in) is the usual case */
        return false;
    snprintf(ow, sizeof(ow), "%s-shm", o);
    unlink(ow);
    return true;
}

/*
 * Settle the file the pointer (or this run's last switch) says the live one replaced, once
 * the directory is synced (a power loss must not bring back a pointer to a file gone):
 * removed, or with --keep-old given its kept name with its WAL. True when nothing is left to
 * settle (p->replaced is then cleared); false, logged, when it stays for a later try.
 */
static bool settle_replaced(jl_projector *p)
{
    char path[1100];
    bool done = true;
    if (p->replaced[0] != 0 && strcmp(p->replaced, p->file) != 0) {
        snprintf(path, sizeof(path), "%s/%s", p->data_dir, p->replaced);
        bool there = access(path, F_OK) == 0;
        if (!sync_dir(p->data_dir)) {
            done = !there;
            if (there)
                jl_log(JL_LOG_WARN,
                       "keeping the replaced read model: the directory cannot be synced",
                       "\"file\":\"%s\",\"error\":\"%s\"", p->replaced, strerror(errno));
        } else if (p->keep_as[0] != 0) {
            /* Also when only its WAL is left behind: it follows the file (said only when the
             * file itself was there: the pointer keeps its line until the next switch). */
            done = keep_replaced(p->data_dir, p->replaced, p->keep_as) && sync_dir(p->data_dir);
            if (there && done)
                jl_log(JL_LOG_INFO, "kept the read model a switch replaced",
                       "\"file\":\"%s\",\"kept\":\"%s\"", p->replaced, p->keep_as);
            else if (!done)
                jl_log(JL_LOG_WARN, "cannot rename the read model a switch replaced: kept as it is",
                       "\"file\":\"%s\",\"to\":\"%s\",\"error\":\"%s\"", p->replaced, p->keep_as,
                       strerror(errno));
        } else if (there) {
            jl_log(JL_LOG_INFO, "removing the read model a switch replaced", "\"file\":\"%s\"",
                   p->replaced);
            jl__proj_remove_db(path);
        }
    }
    if (done)
        p->replaced[0] = p->keep_as[0] = 0;
    return done;
}

/*
 * What a switch or rebuild cut short left. First the file the pointer says the live one
 * replaced, once the directory is synced (a power loss must not bring back a pointer to a
 * file gone): removed, or with --keep-old renamed to its kept name. Then rebuild files other
 * than the live one; a kept model's name that is still a link to the live file (the switch
 * stopped before the pointer moved: the live file is what it is); WAL files left without
 * their database.
 */
static void remove_leftovers(jl_projector *p)
{
    char path[1100], tmp[300];
    struct stat live, st;
    /* Left when it could not be settled: the file, its WAL (the kept model's frames) too. */
    bool pending = !settle_replaced(p);
    size_t pending_len = strlen(p->replaced);
    snprintf(tmp, sizeof(tmp), "%s.current.tmp", p->def->name);
    DIR *d = opendir(p->data_dir);
    struct dirent *e;
    if (d == NULL)
        return;
    bool have_live = stat(p->db_path, &live) == 0;
    while ((e = readdir(d)) != NULL) {
        file_kind kind = file_kind_of(e->d_name, p->def->name);
        if (strcmp(e->d_name, p->file) == 0 ||
            (pending && strncmp(e->d_name, p->replaced, pending_len) == 0))
            continue;
        snprintf(path, sizeof(path), "%s/%s", p->data_dir, e->d_name);
        if (strcmp(e->d_name, tmp) == 0) { /* a pointer being written when it stopped */
            unlink(path);
        } else if (orphan_side_file(p, e->d_name)) {
            jl_log(JL_LOG_INFO, "removing a WAL file without its database", "\"file\":\"%s\"",
                   e->d_name);
            unlink(path);
        } else if (kind == REBUILD_FILE || kind == VERIFY_FILE) {
            jl_log(JL_LOG_INFO, "removing an interrupted rebuild's file", "\"file\":\"%s\"",
                   e->d_name);
            jl__proj_remove_db(path);
        } else if (have_live && kind == REPLACED_FILE && stat(path, &st) == 0 &&
                   st.st_ino == live.st_ino && st.st_dev == live.st_dev) {
            jl_log(JL_LOG_INFO, "removing a second name of the live read model",
                   "\"file\":\"%s\",\"live\":\"%s\"", e->d_name, p->file);
            unlink(path); /* the name only: its WAL is the live file's, under the live name */
        }
    }
    closedir(d);
}

/*
 * Take <data-dir>/<name>.lock for as long as @p p is open. Each process skips events up to its
 * own checkpoint in memory: a second one on the same files would apply again what the first
 * committed, move the checkpoint back, and remove the first one's rebuild file as a leftover.
 * The lock goes with the process (flock), so a killed one leaves nothing to clean up.
 */
static jl_status lock_data_dir(jl_projector *p, char *err, size_t errlen)
{
    char path[1100], pid[32];
    snprintf(path, sizeof(path), "%s/%s.lock", p->data_dir, p->def->name);
    p->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (p->lock_fd < 0) {
        int e = errno;
        snprintf(err, errlen, "cannot open %s: %s", path, strerror(e));
        return e == ENOSPC ? JL_ERR_DISK_FULL : JL_ERR_IO;
    }
    if (flock(p->lock_fd, LOCK_EX | LOCK_NB) != 0) {
        int e = errno;
        ssize_t n = pread(p->lock_fd, pid, sizeof(pid) - 1, 0);
        pid[n > 0 ? n : 0] = 0;
        pid[strcspn(pid, "\n")] = 0;
        if (e == EWOULDBLOCK)
            snprintf(err, errlen,
                     "%s is in use by another %s process (pid %s holds %s): each instance "
                     "needs its own --data-dir",
                     p->data_dir, p->def->name, pid[0] ? pid : "unknown", path);
        else
            snprintf(err, errlen, "cannot lock %s: %s", path, strerror(e));
        return e == EWOULDBLOCK ? JL_ERR_INVALID : JL_ERR_IO;
    }
    /* Who holds it, for that message (best effort: the lock is what counts). */
    int n = snprintf(pid, sizeof(pid), "%ld\n", (long)getpid());
    if (ftruncate(p->lock_fd, 0) != 0 || pwrite(p->lock_fd, pid, (size_t)n, 0) != n)
        jl_log(JL_LOG_DEBUG, "cannot write the pid into the lock file", "\"file\":\"%s\"", path);
    return JL_OK;
}

/* fsync the directory @p dir, making a rename in it durable. False with errno set on failure. */
static bool sync_dir(const char *dir)
{
    int dfd = open(dir, O_RDONLY | O_DIRECTORY);
    if (dfd < 0)
        return false;
    bool ok = fsync(dfd) == 0;
    int saved = errno;
    close(dfd);
    errno = saved;
    return ok;
}

jl_status jl__proj_switch(jl_projector *p, jl_db *db, const char *file, bool keep_old, char *err,
                          size_t errlen)
{
    char path[1100], tmp[1200], new_path[1024];
    jl_db *qdb = NULL;
    snprintf(new_path, sizeof(new_path), "%s/%s", p->data_dir, file);
    /* What an earlier switch of this run could not settle first: the pointer's second line,
     * about to name another file, would forget it, and a start take it for debris. */
    if (!settle_replaced(p)) {
        snprintf(err, errlen,
                 "%s, which an earlier switch replaced, could not be settled yet (see the log); "
                 "the live read model is unchanged",
                 p->replaced);
        jl_db_close(db);
        return JL_ERR_IO;
    }
    jl_status s = p->def->outbox ? jl__outbox_carry_over(db, p->db_path, err, errlen) : JL_OK;
    /* Once the pointer names it, the new file must hold what it was built with even after a
     * power loss (a process manager's outbox above all): its last commits were not synced. */
    if (s == JL_OK && (s = jl_db_sync(db)) != JL_OK)
        snprintf(err, errlen, "%s; the live read model is unchanged", jl_db_errmsg(db));
    if (s == JL_OK && (s = jl_db_open(&qdb, new_path, true, err, errlen)) != JL_OK) {
        size_t used = strnlen(err, errlen);
        if (used + 1 < errlen)
            snprintf(err + used, errlen - used, "; the live read model is unchanged");
    }
    if (s != JL_OK) {
        jl_db_close(db);
        return s;
    }
    char old_path[1024], kept[1100] = "";
    snprintf(old_path, sizeof(old_path), "%s", p->db_path);
    bool linked = false;
    char kept_name[sizeof(p->keep_as)] = "";
    if (keep_old) {
        /* Kept under a name of its own before the pointer moves, so that no stop, however
         * abrupt, leaves it under its old name, which a start removes: a second link to the
         * file ("<name>.replaced-<ms>.db": not a rebuild file), after its WAL is folded in.
         * Live and the outbox are paused, so nothing writes it; queries are held off for the
         * checkpoint (the WAL holds what came since the last one, not the model), or one
         * reading an older snapshot would keep it from folding everything in. */
        int wal_frames = 0, folded = 0, rc = SQLITE_OK;
        sqlite3 *h = jl_db_handle(p->db);
        (void)sqlite3_wal_checkpoint_v2(h, NULL, SQLITE_CHECKPOINT_PASSIVE, NULL,
                                        NULL); /* the bulk, queries going on */
        /* Busy while the background checkpointer runs one of its own, or while a reader of
         * another process (a backup tool, an operator's shell) holds an older snapshot: tried
         * again for 2 s at most, each time without the busy handler's wait, which would hold
         * queries off 5 s an attempt with live applying paused. Everything folded in is
         * enough: the file then holds the whole model, only the WAL is not reset. */
        bool whole = false;
        sqlite3_busy_timeout(h, 0);
        for (int attempt = 0; attempt < 100; attempt++) {
            jl__proj_hold_beat(p); /* live applying paused on purpose: no stall */
            pthread_rwlock_wrlock(&p->switch_lock);
            rc = sqlite3_wal_checkpoint_v2(h, NULL, SQLITE_CHECKPOINT_TRUNCATE, &wal_frames,
                                           &folded);
            pthread_rwlock_unlock(&p->switch_lock);
            whole =
                rc == SQLITE_OK || (rc == SQLITE_BUSY && wal_frames >= 0 && folded == wal_frames);
            if (whole || rc != SQLITE_BUSY)
                break;
            nats_Sleep(20);
        }
        sqlite3_busy_timeout(h, JL_DB_BUSY_MS);
        if (!whole)
            jl_log(JL_LOG_WARN, "the kept read model may lack its last commits",
                   "\"file\":\"%s\",\"error\":\"%s\",\"wal_frames\":%d,\"folded\":%d", old_path,
                   sqlite3_errstr(rc), wal_frames, folded);
        /* A name no kept model has (a clock stepped back could give an earlier one's): never
         * linked or renamed over it. */
        int64_t ms = jl__now_ns() / 1000000;
        for (int tries = 0;; tries++, ms++) {
            snprintf(kept_name, sizeof(kept_name), "%s.replaced-%" PRId64 ".db", p->def->name, ms);
            snprintf(kept, sizeof(kept), "%s/%s", p->data_dir, kept_name);
            if (access(kept, F_OK) != 0 || tries == 1000)
                break;
        }
        linked = link(old_path, kept) == 0;
        if (!linked) /* a file system without hard links: the pointer says what to rename */
            jl_log(JL_LOG_DEBUG, "cannot link the kept read model, renaming it after the switch",
                   "\"file\":\"%s\",\"error\":\"%s\"", kept, strerror(errno));
        jl__fault("switch.linked");
    }
    /* The new file's entry (and the link) made durable before the pointer that relies on
     * them. */
    if (!sync_dir(p->data_dir)) {
        snprintf(err, errlen, "cannot sync %s: %s; the live read model is unchanged", p->data_dir,
                 strerror(errno));
        if (linked)
            unlink(kept);
        jl_db_close(qdb);
        jl_db_close(db);
        return JL_ERR_IO;
    }
    /* The pointer file decides which file a restart opens: replace it atomically. Its second
     * line names the file replaced, for a start to settle should this switch stop before it
     * does: remove it ("replaces") or give it its kept name ("keeps": see keep_replaced). */
    pointer_path(p, path, sizeof(path));
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    bool written = f != NULL && fprintf(f, "%s\n", file) > 0;
    if (written && keep_old)
        written = fprintf(f, "keeps %s %s\n", p->file, kept_name) > 0;
    else if (written)
        written = fprintf(f, "replaces %s\n", p->file) > 0;
    if (f != NULL)
        written = (fflush(f) == 0 && fsync(fileno(f)) == 0 && written);
    if (f != NULL)
        fclose(f);
    if (!written || rename(tmp, path) != 0) {
        snprintf(err, errlen, "cannot write %s: %s; the live read model is unchanged", path,
                 strerror(errno));
        unlink(tmp);
        if (linked)
            unlink(kept);
        jl_db_close(qdb);
        jl_db_close(db);
        return JL_ERR_IO;
    }
    /* A power loss could bring the old pointer back: it must then find its file, under its
     * own name. Left as it is then; a later start that reads the new pointer settles it once
     * the directory syncs (the pointer's second line). */
    bool synced = sync_dir(p->data_dir);
    if (!synced)
        jl_log(JL_LOG_ERROR, "the switch may not survive a power loss: keeping the old file",
               "\"dir\":\"%s\",\"error\":\"%s\"", p->data_dir, strerror(errno));
    jl__fault("switch.pointer");
    pthread_rwlock_wrlock(&p->switch_lock);
    jl_db *old_db = p->db, *old_qdb = p->qdb;
    p->db = db;
    p->qdb = qdb;
    snprintf(p->file, sizeof(p->file), "%s", file);
    snprintf(p->db_path, sizeof(p->db_path), "%s", new_path);
    p->db_version = p->def->version;
    p->outbox_gen++;
    pthread_rwlock_unlock(&p->switch_lock);
    jl_db_close(old_qdb);
    jl_db_close(old_db);
    jl__fault("switch.swapped");
    /* Left behind, the old file is remembered as the pointer names it: the next switch of
     * this run, or the next start, settles it. */
    const char *old_name = strrchr(old_path, '/') + 1;
    if (!synced) {
        snprintf(p->replaced, sizeof(p->replaced), "%s", old_name);
        snprintf(p->keep_as, sizeof(p->keep_as), "%s", keep_old ? kept_name : "");
        snprintf(kept, sizeof(kept), "%s", old_path);
        keep_old = true;
    } else if (!keep_old) {
        jl__proj_remove_db(old_path);
    } else if (!keep_replaced(p->data_dir, old_name, kept_name)) {
        jl_log(JL_LOG_WARN, "the replaced read model could not be renamed",
               "\"file\":\"%s\",\"to\":\"%s\",\"error\":\"%s\"", old_path, kept, strerror(errno));
        snprintf(p->replaced, sizeof(p->replaced), "%s", old_name);
        snprintf(p->keep_as, sizeof(p->keep_as), "%s", kept_name);
        snprintf(kept, sizeof(kept), "%s", old_path);
    } else if (!sync_dir(p->data_dir)) {
        jl_log(JL_LOG_WARN, "the replaced read model's new name may not survive a power loss",
               "\"file\":\"%s\",\"error\":\"%s\"", kept, strerror(errno));
    }
    jl_log(JL_LOG_INFO, "read model switched",
           "\"file\":\"%s\",\"checkpoint\":%" PRIu64 ",\"old\":\"%s\"", file,
           jl__proj_checkpoint(p, 0), keep_old ? kept : "(removed)");
    return JL_OK;
}

/* ---- consumer ---- */

/* Forget the subscriptions of source @p i: the next step attaches again from its checkpoint. */
static void detach(jl_projector *p, int i)
{
    jl__reader_close(&p->src[i].catchup);
    jl_conn_sub_destroy(p->conn, p->src[i].pull); /* bound to the durable, which stays */
    p->src[i].pull = NULL;
}

/* The ack settings of a projector's durable. Far above the time a batch takes to apply: a
 * batch is never redelivered while it is being applied (and one that is, is skipped by the
 * checkpoint). */
#define ACK_WAIT_NS (60 * 1000 * NS_PER_MS)

/* Above the batch size, or each fetch would wait out its timeout (NATS-NOTES). */
static int64_t max_ack_pending(const jl_projector *p)
{
    return p->batch * 4 > 4096 ? p->batch * 4 : 4096;
}

static jl_status create_consumer(jl_projector *p, int i)
{
    jl__source *src = &p->src[i];
    jsConsumerConfig cc;
    jsErrCode jerr = 0;
    jsConsumerConfig_Init(&cc);
    cc.Durable = src->durable;
    cc.FilterSubject = src->filter;
    cc.AckPolicy = js_AckAll; /* one ack per batch; the checkpoint makes redelivery harmless */
    cc.AckWait = ACK_WAIT_NS;
    cc.MaxDeliver = -1;
    cc.MaxAckPending = max_ack_pending(p);
    cc.MaxRequestBatch = 0;
    if (src->checkpoint > 0) {
        cc.DeliverPolicy = js_DeliverByStartSequence;
        cc.OptStartSeq = src->checkpoint + 1;
    } else {
        cc.DeliverPolicy = js_DeliverAll;
    }
    jsConsumerInfo *ci = NULL;
    natsStatus ns = js_AddConsumer(&ci, p->js, src->stream, &cc, NULL, &jerr);
    if (ns == NATS_OK)
        src->consumer_created = ci->Created;
    jsConsumerInfo_Destroy(ci);
    if (ns != NATS_OK) {
        src_err(src, "cannot create consumer %s on %s: %s (JetStream error %d)", src->durable,
                src->stream, natsStatus_GetText(ns), (int)jerr);
        return jerr == JSStreamNotFoundErr ? JL_ERR_NOT_FOUND : jl_status_from_nats(ns);
    }
    jl_log(JL_LOG_INFO, "consumer created",
           "\"durable\":\"%s\",\"stream\":\"%s\",\"start_seq\":%" PRIu64, src->durable, src->stream,
           src->checkpoint + 1);
    return JL_OK;
}

/* Bind to the durable, first re-creating it at checkpoint + 1 unless its delivered position is
 * exactly our checkpoint: the database, not the consumer, says what has been applied. */
static jl_status attach(jl_projector *p, int i)
{
    jl__source *src = &p->src[i];
    jsConsumerInfo *ci = NULL;
    jsErrCode jerr = 0;
    jl_status s = JL_OK;

    src->probe_cseq = 0;
    src->drained = false;
    natsStatus ns = js_GetConsumerInfo(&ci, p->js, src->stream, src->durable, NULL, &jerr);
    if (ns == NATS_OK) {
        /* A config left out (never by a nats-server) is no config of ours: made again. */
        bool same_filter = ci->Config != NULL && ci->Config->FilterSubject != NULL &&
                           strcmp(ci->Config->FilterSubject, src->filter) == 0;
        bool in_step = ci->Delivered.Stream == src->checkpoint && ci->NumAckPending == 0;
        /* Made for a smaller --batch, it would hold each fetch to its old limit, and each
         * would wait out its timeout: made again, as for a changed filter. */
        bool same_acks = same_filter && ci->Config->AckPolicy == js_AckAll &&
                         ci->Config->AckWait == ACK_WAIT_NS &&
                         ci->Config->MaxAckPending >= max_ack_pending(p);
        /* Made by another tool or version so that events would be lost or stall: a push
         * consumer, bodies left out (each event would be set aside as undecodable), deliveries
         * or fetches capped, a start that skips: made again too, as ours (create_consumer). */
        bool same_kind = same_filter && ci->Config->DeliverSubject == NULL &&
                         !ci->Config->HeadersOnly && ci->Config->MaxDeliver <= 0 &&
                         ci->Config->MaxRequestBatch == 0 &&
                         (ci->Config->DeliverPolicy == js_DeliverAll ||
                          ci->Config->DeliverPolicy == js_DeliverByStartSequence);
        src->next_cseq = ci->Delivered.Consumer + 1;
        src->consumer_created = ci->Created;
        if (!same_filter || !in_step || !same_acks || !same_kind) {
            src->next_cseq = 1; /* a new consumer numbers its deliveries from 1 */
            jl_log(JL_LOG_INFO, "consumer reset",
                   "\"durable\":\"%s\",\"delivered\":%" PRIu64 ",\"checkpoint\":%" PRIu64
                   ",\"why\":\"%s\"",
                   src->durable, ci->Delivered.Stream, src->checkpoint,
                   !same_filter ? "filter"
                   : !same_acks ? "ack settings"
                   : !same_kind ? "delivery settings"
                                : "position");
            ns = js_DeleteConsumer(p->js, src->stream, src->durable, NULL, &jerr);
            if (ns != NATS_OK && ns != NATS_NOT_FOUND) {
                src_err(src, "cannot reset consumer %s: %s", src->durable, natsStatus_GetText(ns));
                s = jl_status_from_nats(ns);
            } else {
                s = create_consumer(p, i);
            }
        }
        jsConsumerInfo_Destroy(ci);
    } else if (ns == NATS_NOT_FOUND || jerr == JSConsumerNotFoundErr) {
        src->next_cseq = 1;
        s = create_consumer(p, i);
    } else if (jerr == JSStreamNotFoundErr) {
        src_err(src, "stream %s does not exist yet", src->stream);
        s = JL_ERR_NOT_FOUND;
    } else {
        src_err(src, "cannot read consumer %s: %s (JetStream error %d)", src->durable,
                natsStatus_GetText(ns), (int)jerr);
        s = jl_status_from_nats(ns);
    }
    if (s != JL_OK)
        return s;

    jsSubOptions so;
    jsSubOptions_Init(&so);
    so.Stream = src->stream;
    so.Consumer = src->durable;
    ns = js_PullSubscribe(&src->pull, p->js, src->filter, src->durable, NULL, &so, &jerr);
    if (ns != NATS_OK) {
        src_err(src, "cannot bind to consumer %s: %s (JetStream error %d)", src->durable,
                natsStatus_GetText(ns), (int)jerr);
        src->pull = NULL;
        return jl_status_from_nats(ns);
    }
    src->verify_consumer = true;
    return JL_OK;
}

/* ---- applying ---- */

static bool is_bad_event(jl_status s)
{
    return s == JL_ERR_INVALID || s == JL_ERR_DECODE || s == JL_ERR_UNKNOWN_TYPE ||
           s == JL_ERR_REJECTED || s == JL_ERR_TOO_LARGE;
}

static jl_status dead_letter(jl_db *db, const char *stream, uint64_t seq, int index,
                             const char *event_id, const char *event_type, const char *subject,
                             const char *reason, const void *data, size_t len, jl__batch_result *io)
{
    sqlite3_stmt *st = jl_db_stmt(db, "INSERT OR REPLACE INTO jl_dead_letters (seq, "
                                      "event_index, event_id, event_type, subject, reason, "
                                      "data, at_ns, stream) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)");
    if (st == NULL)
        return JL_ERR_SQLITE;
    /* Read back into DeadLetters replies (protobuf strings): text, whatever the message held
     * (its bytes are kept whole in data). */
    char id[128], type[256], subj[512], why[600];
    snprintf(id, sizeof(id), "%s", event_id ? event_id : "");
    snprintf(type, sizeof(type), "%s", event_type ? event_type : "");
    snprintf(subj, sizeof(subj), "%s", subject);
    snprintf(why, sizeof(why), "%s", reason);
    jl_utf8_scrub(id);
    jl_utf8_scrub(type);
    jl_utf8_scrub(subj);
    jl_utf8_scrub(why);
    sqlite3_bind_text(st, 9, stream, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 1, (sqlite3_int64)seq);
    sqlite3_bind_int(st, 2, index);
    sqlite3_bind_text(st, 3, id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, type, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 5, subj, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 6, why, -1, SQLITE_STATIC);
    sqlite3_bind_blob(st, 7, data, (int)len, SQLITE_STATIC);
    sqlite3_bind_int64(st, 8, jl__now_ns());
    jl_status s = jl_db_step_done(db, st);
    if (s == JL_OK && io->n_notes < JL__DEAD_NOTES) {
        jl__dead_note *n = &io->notes[io->n_notes++];
        n->seq = seq;
        n->index = index;
        snprintf(n->type, sizeof(n->type), "%.*s", (int)sizeof(n->type) - 1, type);
        snprintf(n->reason, sizeof(n->reason), "%.*s", (int)sizeof(n->reason) - 1, why);
        jl_utf8_trim_end(n->type); /* cut whole characters */
        jl_utf8_trim_end(n->reason);
    }
    io->dead += s == JL_OK;
    return s;
}

/* Log the dead letters of a batch just committed: @p dead of them, the first in @p io's notes. */
static void log_dead_letters(const jl__batch_result *io, uint64_t dead)
{
    char esc[600], esc2[300];
    for (int i = 0; i < io->n_notes; i++) {
        const jl__dead_note *n = &io->notes[i];
        jl_log(JL_LOG_ERROR, "event dead-lettered",
               "\"seq\":%" PRIu64 ",\"event_index\":%d,\"event_type\":\"%s\",\"reason\":\"%s\"",
               n->seq, n->index, jl_log_str(esc2, sizeof(esc2), n->type),
               jl_log_str(esc, sizeof(esc), n->reason));
    }
    if (dead > (uint64_t)io->n_notes)
        jl_log(JL_LOG_ERROR, "more events dead-lettered in the same batch",
               "\"count\":%" PRIu64 ",\"hint\":\"jetledger dead-letters lists them\"",
               dead - (uint64_t)io->n_notes);
}

/* Status of a transaction SQLite ended itself, by its last error (a full disk says so). */
static jl_status ended_status(jl_db *db)
{
    jl_status s = jl_status_from_sqlite(sqlite3_extended_errcode(jl_db_handle(db)));
    return s == JL_OK ? JL_ERR_SQLITE : s;
}

/* Apply one message (a commit) inside the batch transaction. Bad events are parked; only
 * failures of the database come back as errors (with the reason in @p err). In fast mode there
 * are no savepoints: an apply that refuses an event after writing part of it sets
 * *out_need_careful, and the caller redoes the batch carefully (a savepoint per event). */
static jl_status apply_message(jl_projector *p, jl_db *db, uint64_t seq, const char *subject,
                               const void *data, size_t len, bool careful, bool *out_need_careful,
                               jl__batch_result *io, char *err, size_t errlen)
{
    jl_commit *c = NULL;
    char why[512] = "";
    jl_status s = jl_commit_decode(&c, data, len, seq, why, sizeof(why));
    if (s != JL_OK && !is_bad_event(s)) {
        /* Out of memory, not a bad message: the batch fails and is tried again, the message
         * is not parked for good. */
        snprintf(err, errlen, "decoding the message at sequence %" PRIu64 " failed: %s", seq,
                 why[0] ? why : jl_status_str(s));
        return s;
    }
    if (s != JL_OK)
        return dead_letter(db, p->src[io->source].stream, seq, -1, "", "", subject, why, data, len,
                           io);

    for (size_t i = 0; s == JL_OK && i < jl_commit_count(c); i++) {
        jl_event ev;
        why[0] = 0;
        jl_status es = jl_commit_event(c, i, &p->def->events, &ev, why, sizeof(why));
        if (es != JL_OK && !is_bad_event(es)) {
            snprintf(err, errlen, "decoding event %zu at sequence %" PRIu64 " failed: %s", i, seq,
                     why[0] ? why : jl_status_str(es));
            s = es;
            break;
        }
        if (es == JL_OK) {
            if (careful && (s = jl_db_exec(db, "SAVEPOINT jl_event")) != JL_OK)
                break;
            es = p->def->apply(db, &ev, why, sizeof(why));
            if (sqlite3_get_autocommit(jl_db_handle(db))) {
                /* SQLite ended the batch's transaction itself (disk full, I/O error) whatever
                 * apply said: nothing more may be written outside it, the checkpoint least of
                 * all, or the batch would be applied again on top of half of itself. */
                snprintf(err, errlen,
                         "applying %s at sequence %" PRIu64 " failed: the transaction was rolled "
                         "back (%s)",
                         ev.event_type, seq, why[0] ? why : sqlite3_errmsg(jl_db_handle(db)));
                s = ended_status(db);
                break;
            }
            if (es == JL_OK) {
                if (careful)
                    s = jl_db_exec(db, "RELEASE jl_event");
                io->events++;
                continue;
            }
            if (!is_bad_event(es)) {
                /* Say why before any rollback: SQLite may have ended the transaction itself
                 * (disk full), and a failing ROLLBACK TO would overwrite the cause. */
                snprintf(err, errlen, "applying %s at sequence %" PRIu64 " failed: %s",
                         ev.event_type, seq, why[0] ? why : jl_db_errmsg(db));
                s = es;
                break;
            }
            if (!careful) {
                *out_need_careful = true;
                s = JL_ERR_REJECTED;
                break;
            }
            /* Undo the event's partial writes. Should that fail, the event is not parked over
             * them: the batch fails (and is rolled back whole, or found ended by SQLite). */
            s = jl_db_exec(db, "ROLLBACK TO jl_event");
            if (s == JL_OK)
                s = jl_db_exec(db, "RELEASE jl_event");
            if (s == JL_OK && sqlite3_get_autocommit(jl_db_handle(db)))
                s = ended_status(db);
            if (s != JL_OK) {
                snprintf(err, errlen, "undoing the refused %s at sequence %" PRIu64 " failed: %s",
                         ev.event_type, seq, jl_db_errmsg(db));
                break;
            }
            if (why[0] == 0)
                snprintf(why, sizeof(why), "apply refused the event: %s", jl_status_str(es));
        }
        const uint8_t *pd = NULL;
        size_t pl = 0;
        jl_commit_event_payload(c, i, &pd, &pl);
        s = dead_letter(db, p->src[io->source].stream, seq, (int)i, ev.event_id, ev.event_type,
                        subject, why, pd, pl, io);
    }
    jl_commit_free(c);
    if (s != JL_OK && s != JL_ERR_REJECTED && err[0] == 0)
        snprintf(err, errlen, "%s", jl_db_errmsg(db));
    return s;
}

/* The tokens of @p m's JetStream reply subject: $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.
 * <cseq>.<ts>.<pending>, or with domain and account hash: $JS.ACK.<domain>.<hash>.<stream>.
 * <consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>.<token>. Returns where <stream> is (2 or
 * 4), or -1 for another subject. In place: natsMsg_GetMetaData allocates for every message. */
static int ack_tokens(natsMsg *m, const char *tok[16])
{
    const char *r = natsMsg_GetReply(m);
    int n = 0;
    if (r == NULL || strncmp(r, "$JS.ACK.", 8) != 0)
        return -1;
    for (const char *q = r; n < 16;) {
        tok[n++] = q;
        q = strchr(q, '.');
        if (q == NULL)
            break;
        q++;
    }
    return n == 9 ? 2 : n >= 11 ? 4 : -1;
}

bool jl__msg_seq(natsMsg *m, uint64_t *out_seq, uint64_t *out_cseq, uint64_t *out_pending)
{
    const char *tok[16];
    int at = ack_tokens(m, tok);
    if (at < 0)
        return false;
    *out_seq = strtoull(tok[at + 3], NULL, 10);
    if (out_cseq != NULL)
        *out_cseq = strtoull(tok[at + 4], NULL, 10);
    *out_pending = strtoull(tok[at + 6], NULL, 10);
    return *out_seq > 0;
}

static jl_status apply_pass(jl_projector *p, jl_db *db, natsMsg **msgs, int n, bool careful,
                            bool *out_need_careful, jl__batch_result *io, char *err, size_t errlen)
{
    jl_status s = jl_db_begin(db, true);
    int last = -1;
    uint64_t highest = 0;
    for (int i = 0; s == JL_OK && i < n; i++) {
        uint64_t seq = 0, pending = 0;
        if (!jl__msg_seq(msgs[i], &seq, NULL, &pending)) {
            snprintf(err, errlen, "message without JetStream metadata on %s",
                     natsMsg_GetSubject(msgs[i]));
            s = JL_ERR_NATS;
            break;
        }
        io->pending = pending;
        if (seq > highest) {
            highest = seq;
            io->highest = i;
        }
        if (seq <= io->checkpoint)
            continue; /* applied before: a redelivery */
        s = apply_message(p, db, seq, natsMsg_GetSubject(msgs[i]), natsMsg_GetData(msgs[i]),
                          (size_t)natsMsg_GetDataLength(msgs[i]), careful, out_need_careful, io,
                          err, errlen);
        io->checkpoint = seq;
        io->applied++;
        last = i;
    }
    if (s == JL_OK && sqlite3_get_autocommit(jl_db_handle(db))) {
        /* The batch's transaction is gone (SQLite ended it): its checkpoint must not be written
         * on its own, over events not in the file. */
        snprintf(err, errlen, "the batch's transaction ended early: %s", jl_db_errmsg(db));
        s = ended_status(db);
    }
    if (s == JL_OK && io->applied > 0)
        s = jl__proj_save_checkpoint(p, db, io->source, io->checkpoint, jl__msg_hash(msgs[last]));
    if (s == JL_OK && io->applied > 0)
        jl__fault("apply.before_commit");
    if (s == JL_OK)
        s = jl_db_commit(db);
    if (s != JL_OK) {
        if (s != JL_ERR_REJECTED && err[0] == 0)
            snprintf(err, errlen, "batch not committed: %s", jl_db_errmsg(db));
        jl_db_rollback(db);
    }
    return s;
}

jl_status jl__proj_apply_batch(jl_projector *p, jl_db *db, natsMsg **msgs, int n,
                               jl__batch_result *io, char *err, size_t errlen)
{
    io->n_notes = 0;
    jl__batch_result start = *io;
    bool need_careful = false;
    err[0] = 0;
    jl_status s = apply_pass(p, db, msgs, n, false, &need_careful, io, err, errlen);
    if (s == JL_ERR_REJECTED && need_careful) {
        /* A bad event with partial writes: redo the batch with a savepoint per event. */
        *io = start;
        err[0] = 0;
        s = apply_pass(p, db, msgs, n, true, &need_careful, io, err, errlen);
    }
    if (s != JL_OK)
        *io = start;
    else if (!io->quiet)
        log_dead_letters(io, io->dead - start.dead);
    return s;
}

uint64_t jl__msg_hash(natsMsg *m)
{
    uint64_t h =
        jl__fnv1a64_more(JL__FNV64_BASIS, natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m));
    return h != 0 ? h : 1;
}

jl_status jl__proj_save_checkpoint(jl_projector *p, jl_db *db, int source, uint64_t seq,
                                   uint64_t hash)
{
    sqlite3_stmt *st = jl_db_stmt(db, "UPDATE jl_checkpoints SET last_seq = ?1, id_seq = CASE "
                                      "WHEN ?3 = 0 THEN id_seq ELSE ?1 END, id_hash = CASE WHEN "
                                      "?3 = 0 THEN id_hash ELSE ?3 END WHERE stream = ?2");
    if (st == NULL)
        return JL_ERR_SQLITE;
    sqlite3_bind_int64(st, 1, (sqlite3_int64)seq);
    sqlite3_bind_text(st, 2, p->src[source].stream, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, (sqlite3_int64)hash);
    jl_status s = jl_db_step_done(db, st);
    if (s != JL_OK || source != 0)
        return s;
    /* jl_state.last_seq mirrors the first source, for queries and tools reading it. */
    st = jl_db_stmt(db, "UPDATE jl_state SET last_seq = ?, updated_at_ns = ? WHERE id = 1");
    if (st == NULL)
        return JL_ERR_SQLITE;
    sqlite3_bind_int64(st, 1, (sqlite3_int64)seq);
    sqlite3_bind_int64(st, 2, jl__now_ns());
    return jl_db_step_done(db, st);
}

/* Record in @p db that source @p source's stream is the one created at @p created (ns). */
static jl_status set_stream_created(jl_projector *p, jl_db *db, int source, int64_t created)
{
    sqlite3_stmt *st =
        jl_db_stmt(db, "UPDATE jl_checkpoints SET stream_created_ns = ? WHERE stream = ?");
    if (st == NULL)
        return JL_ERR_SQLITE;
    sqlite3_bind_int64(st, 1, created);
    sqlite3_bind_text(st, 2, p->src[source].stream, -1, SQLITE_STATIC);
    return jl_db_step_done(db, st);
}

/* Whether message @p seq of source @p si's stream is still the one whose jl__msg_hash() is
 * @p hash: MSG_GONE when the stream holds none there, MSG_UNREAD when it could not be read
 * (the status in *out_status, why in @p err). */
typedef enum { MSG_SAME, MSG_OTHER, MSG_GONE, MSG_UNREAD } msg_match;

static msg_match match_msg(jl_projector *p, int si, uint64_t seq, uint64_t hash,
                           jl_status *out_status, char *err, size_t errlen)
{
    natsMsg *m = NULL;
    jsErrCode jerr = 0;
    natsStatus ns = js_GetMsg(&m, p->js, p->src[si].stream, seq, NULL, &jerr);
    if (ns == NATS_OK) {
        bool same = jl__msg_hash(m) == hash;
        natsMsg_Destroy(m);
        return same ? MSG_SAME : MSG_OTHER;
    }
    if (jerr != JSStreamNotFoundErr && (ns == NATS_NOT_FOUND || jerr == JSNoMessageFoundErr))
        return MSG_GONE;
    fmt_err(err, errlen, "cannot read message %" PRIu64 " of %s: %s", seq, p->src[si].stream,
            jerr == JSStreamNotFoundErr ? "the stream does not exist" : natsStatus_GetText(ns));
    *out_status = jerr == JSStreamNotFoundErr ? JL_ERR_NOT_FOUND : jl_status_from_nats(ns);
    return MSG_UNREAD;
}

jl_status jl__proj_copy_stream_created(jl_projector *p, jl_db *to, int source)
{
    sqlite3_stmt *st = jl_db_stmt(p->db, "SELECT stream_created_ns FROM jl_checkpoints WHERE "
                                         "stream = ?");
    if (st == NULL)
        return JL_ERR_SQLITE;
    sqlite3_bind_text(st, 1, p->src[source].stream, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    int64_t created = rc == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
    sqlite3_reset(st);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE)
        return jl_db_fail(p->db, rc, "cannot read jl_checkpoints");
    return set_stream_created(p, to, source, created);
}

uint64_t jl__proj_checkpoint(jl_projector *p, int i)
{
    pthread_mutex_lock(&p->mu);
    uint64_t c = p->src[i].checkpoint;
    pthread_mutex_unlock(&p->mu);
    return c;
}

/* A batch is committed: tell waiting queries (min_sequence) and the counters. */
static void publish_progress(jl_projector *p, const jl__batch_result *io)
{
    pthread_mutex_lock(&p->mu);
    p->src[io->source].checkpoint = io->checkpoint;
    p->dead_letters += io->dead;
    pthread_cond_broadcast(&p->advanced);
    if (p->has_outbox_thread)
        jl__outbox_wake(p);
    pthread_mutex_unlock(&p->mu);
}

/* ---- serving queries ---- */

static void on_query(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure);

/* Subscribe the queries, once; @p out_now says whether this call did. */
static natsStatus subscribe_queries(jl_projector *p, bool *out_now)
{
    bool expected = false;
    *out_now = false;
    if (!atomic_compare_exchange_strong(&p->serve_claimed, &expected, true))
        return NATS_OK;
    natsStatus ns = jl_conn_subscribe(p->conn, &p->qsub, p->qsubject, p->def->name, on_query, p);
    if (ns != NATS_OK) {
        atomic_store(&p->serve_claimed, false);
        return ns;
    }
    atomic_store(&p->serving, true);
    *out_now = true;
    return NATS_OK;
}

/* Source @p i was seen @p pending events behind its stream's head: within serve_lag it is
 * current for good, and once every source is, queries are answered. */
static void serve_if_current(jl_projector *p, int i, uint64_t pending)
{
    if (atomic_load(&p->serving) || atomic_load(&p->stopping) || pending > (uint64_t)p->serve_lag)
        return;
    atomic_store(&p->src[i].current, true);
    for (int k = 0; k < p->n_src; k++) {
        if (!atomic_load(&p->src[k].current))
            return;
    }
    bool now = false;
    natsStatus ns = subscribe_queries(p, &now);
    if (ns != NATS_OK)
        jl_log(JL_LOG_WARN, "cannot answer queries yet",
               "\"subject\":\"%s\",\"status\":\"%s\",\"hint\":\"tried again after the next "
               "batch\"",
               p->qsubject, natsStatus_GetText(ns));
    else if (now)
        jl_log(JL_LOG_INFO, "answering queries",
               "\"queries\":\"%s\",\"checkpoint\":%" PRIu64 ",\"serve_lag\":%" PRId64, p->qsubject,
               jl__proj_checkpoint(p, 0), p->serve_lag);
}

void jl__proj_hold_beat(jl_projector *p)
{
    int64_t now = jl__mono_ns();
    for (int i = 0; i < p->n_src; i++) {
        int64_t beat = atomic_load(&p->src[i].beat_ns);
        /* Not a loop that has ended (0): compare-and-swap, as it may end meanwhile. */
        while (beat != 0 && !atomic_compare_exchange_weak(&p->src[i].beat_ns, &beat, now))
            ;
    }
}

int64_t jl_projector_stalled_ms(jl_projector *p)
{
    int64_t now = jl__mono_ns(), most = 0;
    for (int i = 0; i < p->n_src; i++) {
        int64_t beat = atomic_load(&p->src[i].beat_ns);
        if (beat != 0 && now - beat > most)
            most = now - beat;
    }
    /* A query being answered: one that never ends would leave every later one unanswered (the
     * subscription has one thread) while the streams go on and the service looks ready. */
    for (int i = 0; i < 2; i++) {
        int64_t since = atomic_load(&p->answering_ns[i]);
        if (since != 0 && now - since > most)
            most = now - since;
    }
    return most / NS_PER_MS;
}

bool jl_projector_serving(jl_projector *p)
{
    return atomic_load(&p->serving);
}

/* Apply a batch of source @p i under apply_mu; ack its highest message when @p ack. */
static jl_status apply_source(jl_projector *p, int i, natsMsg **msgs, int n, bool ack,
                              size_t *out_applied)
{
    pthread_mutex_lock(&p->apply_mu);
    jl__batch_result io = {.source = i, .checkpoint = jl__proj_checkpoint(p, i)};
    jl_status s =
        jl__proj_apply_batch(p, p->db, msgs, n, &io, p->src[i].err, sizeof(p->src[i].err));
    if (s == JL_OK)
        publish_progress(p, &io);
    pthread_mutex_unlock(&p->apply_mu);
    if (s != JL_OK)
        return s;
    if (n > 0)
        serve_if_current(p, i, io.pending);
    /* Ack only after the commit: a crash before this line replays the batch, never skips it.
     * With AckAll, acking the highest message acks the whole batch. A lost ack loses nothing
     * (the batch comes again after the ack wait and is skipped by the checkpoint), but say so. */
    natsStatus ns = ack && n > 0 ? natsMsg_Ack(msgs[io.highest], NULL) : NATS_OK;
    if (ns != NATS_OK)
        jl_log(JL_LOG_WARN, "ack not sent",
               "\"stream\":\"%s\",\"checkpoint\":%" PRIu64 ",\"status\":\"%s\"", p->src[i].stream,
               io.checkpoint, natsStatus_GetText(ns));
    if (out_applied != NULL)
        *out_applied = io.applied;
    return JL_OK;
}

static bool paused_wait(jl_projector *p, int wait_ms);

/* The source a JetStream message comes from, by the stream named in its reply subject. */
static int source_of(jl_projector *p, natsMsg *m)
{
    const char *tok[16];
    int at = ack_tokens(m, tok);
    if (at < 0)
        return -1;
    for (int i = 0; i < p->n_src; i++) {
        size_t n = strlen(p->src[i].stream);
        if (strncmp(tok[at], p->src[i].stream, n) == 0 && tok[at][n] == '.')
            return i;
    }
    return -1;
}

jl_status jl_projector_apply(jl_projector *p, natsMsg **msgs, int n, size_t *out_applied)
{
    int i = n > 0 ? source_of(p, msgs[0]) : 0;
    if (paused_wait(p, 0)) {
        /* This code's projection version is newer than the file's: it applies nothing to it
         * until its version rebuild switched (a failed one is started again every 10 s). */
        set_err(p, "projector %s waits for its version rebuild to switch: nothing applied",
                p->def->name);
        return JL_ERR_UNAVAILABLE;
    }
    for (int k = 1; i >= 0 && k < n; k++) {
        if (source_of(p, msgs[k]) != i) {
            set_err(p,
                    "a batch holds messages of two streams (or of none of projector %s); "
                    "apply each stream's on its own",
                    p->def->name);
            return JL_ERR_INVALID;
        }
    }
    if (i < 0) {
        set_err(p, "the messages do not come from a stream of projector %s", p->def->name);
        return JL_ERR_INVALID;
    }
    jl_status s = apply_source(p, i, msgs, n, true, out_applied);
    if (s != JL_OK)
        snprintf(p->err, sizeof(p->err), "%s", p->src[i].err);
    return s;
}

/* ---- reading from a point ---- */

/* The stored time (Unix ns) of the message at @p seq of source @p si's stream, or of the first
 * stored one after it before @p below; *@p out_seq gets its sequence. NATS_NOT_FOUND: none;
 * NATS_ILLEGAL_STATE: for a @p job's search, the job was cancelled meanwhile (a hole of many
 * deleted messages is walked one request at a time). */
static natsStatus stored_time(jl_projector *p, int si, uint64_t seq, uint64_t below, bool job,
                              int64_t *out_ns, uint64_t *out_seq)
{
    for (; seq < below; seq++) {
        if (job && jl__jobs_cancelled(p))
            return NATS_ILLEGAL_STATE;
        natsMsg *m = NULL;
        jsErrCode jerr = 0;
        natsStatus ns = js_GetMsg(&m, p->js, p->src[si].stream, seq, NULL, &jerr);
        if (ns == NATS_OK) {
            *out_ns = natsMsg_GetTime(m);
            *out_seq = seq;
            natsMsg_Destroy(m);
            return NATS_OK;
        }
        natsMsg_Destroy(m);
        if (ns != NATS_NOT_FOUND && jerr != JSNoMessageFoundErr)
            return ns; /* deleted (a hole) is passed over; anything else is an error */
    }
    return NATS_NOT_FOUND;
}

/*
 * The first sequence of source @p si's stream stored at or after @p t (Unix ns), by a binary
 * search over stored times (they grow with the sequence): the server's own start-by-time has
 * been seen (nats-server 2.10.27, about one time in four under load) to start past messages
 * after the time, and a rebuild from a time then ended "done" with none of them.
 */
static natsStatus seq_from_time(jl_projector *p, int si, int64_t t, uint64_t *out_seq)
{
    jsStreamInfo *info = NULL;
    natsStatus ns = js_GetStreamInfo(&info, p->js, p->src[si].stream, NULL, NULL);
    if (ns != NATS_OK)
        return ns;
    uint64_t lo = info->State.FirstSeq, hi = info->State.LastSeq + 1;
    jsStreamInfo_Destroy(info);
    if (lo == 0)
        lo = 1;
    while (lo < hi) {
        uint64_t mid = lo + (hi - lo) / 2, at = 0;
        int64_t ts = 0;
        ns = stored_time(p, si, mid, hi, true, &ts, &at);
        if (ns == NATS_NOT_FOUND) {
            hi = mid; /* nothing stored in [mid, hi) */
            continue;
        }
        if (ns != NATS_OK)
            return ns;
        if (ts >= t)
            hi = at;
        else
            lo = at + 1;
    }
    *out_seq = lo;
    return NATS_OK;
}

jl_status jl__proj_check_from_time(jl_projector *p, int si, int64_t t, char *err, size_t errlen)
{
    jsStreamInfo *info = NULL;
    jsErrCode jerr = 0;
    const char *stream = p->src[si].stream;
    natsStatus ns = js_GetStreamInfo(&info, p->js, stream, NULL, &jerr);
    if (ns != NATS_OK && jerr == JSStreamNotFoundErr)
        return JL_OK; /* nothing was ever removed from a stream not there (nothing to read) */
    if (ns != NATS_OK) {
        snprintf(err, errlen, "cannot read stream %s: %s", stream, natsStatus_GetText(ns));
        return jl_status_from_nats(ns);
    }
    uint64_t first = info->State.FirstSeq, last = info->State.LastSeq;
    jsStreamInfo_Destroy(info);
    if (first <= 1)
        return JL_OK;
    int64_t first_ns = 0;
    uint64_t at = 0;
    ns = stored_time(p, si, first, last + 1, false, &first_ns, &at);
    if (ns != NATS_OK && ns != NATS_NOT_FOUND) {
        snprintf(err, errlen, "cannot read stream %s: %s", stream, natsStatus_GetText(ns));
        return jl_status_from_nats(ns);
    }
    if (ns == NATS_OK && t > first_ns)
        return JL_OK; /* what was removed came before its first retained message */
    char when[48] = "";
    if (ns == NATS_OK)
        jl_format_time(when, sizeof(when), first_ns);
    snprintf(err, errlen,
             "stream %s no longer holds sequences 1 to %" PRIu64
             " (removed by its limits or a purge), and the from-time may fall among them: "
             "%s%s%s",
             stream, first - 1, ns == NATS_OK ? "give a time after " : "it holds no messages", when,
             ns == NATS_OK && p->n_src == 1 ? ", or a from-seq" : "");
    return JL_ERR_INVALID;
}

jl_status jl__reader_open(jl__reader *r, jl_projector *p, int si, uint64_t start_seq,
                          int64_t start_time_ns, char *err, size_t errlen)
{
    jsSubOptions so;
    jsErrCode jerr = 0;
    *r = (jl__reader){
        .p = p, .si = si, .start_seq = start_seq, .start_time_ns = start_time_ns, .next_cseq = 1};
    jsStreamInfo *info = NULL;
    if (js_GetStreamInfo(&info, p->js, p->src[si].stream, NULL, NULL) == NATS_OK) {
        r->created = info->Created;
        r->first_seq = info->State.FirstSeq;
        jsStreamInfo_Destroy(info);
    }
    jsSubOptions_Init(&so);
    so.Stream = p->src[si].stream;
    so.Config.AckPolicy = js_AckNone;
    so.Config.InactiveThreshold = 60 * 1000 * NS_PER_MS; /* left behind by a crash: removed */
    if (start_time_ns != 0) {
        /* A time is made a sequence here (see seq_from_time), not by the server. */
        natsStatus ts = seq_from_time(p, si, start_time_ns, &start_seq);
        if (ts == NATS_ILLEGAL_STATE && jl__jobs_cancelled(p)) {
            snprintf(err, errlen, "cancelled");
            return JL_ERR_STOPPED;
        }
        if (ts != NATS_OK) {
            snprintf(err, errlen, "cannot find where stream %s reaches the time: %s",
                     p->src[si].stream, natsStatus_GetText(ts));
            return jl_status_from_nats(ts);
        }
        r->start_seq = start_seq;
    }
    if (start_seq > 1) {
        so.Config.DeliverPolicy = js_DeliverByStartSequence;
        so.Config.OptStartSeq = start_seq;
    }
    natsStatus ns = js_PullSubscribe(&r->sub, p->js, p->src[si].filter, NULL, NULL, &so, &jerr);
    if (ns != NATS_OK) {
        snprintf(err, errlen, "cannot read stream %s: %s (JetStream error %d)", p->src[si].stream,
                 natsStatus_GetText(ns), (int)jerr);
        r->sub = NULL;
        return jerr == JSStreamNotFoundErr ? JL_ERR_NOT_FOUND : jl_status_from_nats(ns);
    }
    return JL_OK;
}

static bool idle_lost(jl_projector *p, const char *stream, const char *name, natsSubscription *sub,
                      int64_t created, uint64_t next_cseq, int64_t *last_probe_ns,
                      uint64_t *probe_cseq);

/* The stream sequence @p r hands out next when nothing is missing. */
static uint64_t reader_expected(const jl__reader *r)
{
    return r->last_seq != 0              ? r->last_seq + 1
           : r->start_seq > r->first_seq ? r->start_seq
                                         : r->first_seq;
}

/* Open @p r again after the last message it handed out: a delivery was lost, or (@p gone) its
 * consumer was removed, idle past its inactive threshold. */
static natsStatus reader_reopen(jl__reader *r, bool gone)
{
    jl_projector *p = r->p;
    int si = r->si;
    uint64_t start = r->last_seq != 0 ? r->last_seq + 1 : r->start_seq;
    int64_t start_time = r->last_seq != 0 ? 0 : r->start_time_ns;
    uint64_t last = r->last_seq, hash_seq = r->hash_seq, hash = r->hash;
    uint64_t gap_from = r->gap_from, gap_to = r->gap_to, first = r->first_seq;
    int64_t created = r->created;
    char err[256];
    if (!gone)
        atomic_fetch_add(&p->lost_deliveries, 1);
    jl_log(JL_LOG_WARN,
           gone ? "reader's consumer gone, reading again" : "delivery lost, reading again",
           "\"stream\":\"%s\",\"from_seq\":%" PRIu64, p->src[si].stream, start);
    natsMsgList_Destroy(&r->list);
    memset(&r->list, 0, sizeof(r->list));
    jl_conn_sub_destroy(p->conn, r->sub);
    r->sub = NULL;
    jl_status s = jl__reader_open(r, p, si, start, start_time, err, sizeof(err));
    r->last_seq = last;
    r->hash_seq = hash_seq;
    r->hash = hash;
    r->gap_from = gap_from;
    r->gap_to = gap_to;
    if (first != 0 && first < r->first_seq)
        r->first_seq = first; /* what it expects first, if nothing was read yet, stays */
    if (s == JL_OK && created != 0 && r->created != created && hash_seq != 0) {
        /* Created anew since (deleted and created again, or only its time changed: a restore,
         * a restart after an update): read on only if it still holds what was read. */
        msg_match at = match_msg(p, si, hash_seq, hash, &s, err, sizeof(err));
        if (at == MSG_OTHER || at == MSG_GONE) {
            snprintf(err, sizeof(err),
                     "the stream was created again while being read: message %" PRIu64 " is %s",
                     hash_seq, at == MSG_OTHER ? "not the one read" : "gone");
            s = JL_ERR_INVALID;
        }
        if (at != MSG_SAME) {
            jl_conn_sub_destroy(p->conn, r->sub);
            r->sub = NULL;
        }
    }
    if (s != JL_OK) {
        char esc[600];
        jl_log(JL_LOG_ERROR, "cannot read again", "\"stream\":\"%s\",\"error\":\"%s\"",
               p->src[si].stream, jl_log_str(esc, sizeof(esc), err));
    }
    return s == JL_OK ? NATS_OK : NATS_ERR;
}

natsStatus jl__reader_next(jl__reader *r, int batch, int wait_ms, natsMsg **out)
{
    /* Bounded: a reader that keeps losing deliveries gives up and its caller retries later. */
    for (int reopened = 0; reopened < 4; reopened++) {
        if (r->next >= r->list.Count) {
            natsMsgList_Destroy(&r->list);
            memset(&r->list, 0, sizeof(r->list));
            r->next = 0;
            natsStatus ns = jl_fetch(r->sub, &r->list, batch, wait_ms > 0 ? wait_ms : 1000, true);
            if (ns == NATS_NOT_FOUND || (ns == NATS_TIMEOUT && r->list.Count == 0)) {
                natsMsgList_Destroy(&r->list);
                memset(&r->list, 0, sizeof(r->list));
                ns = wait_ms > 0 ? jl_fetch(r->sub, &r->list, batch, wait_ms, false) : NATS_TIMEOUT;
            }
            if (ns == NATS_NO_RESPONDERS && r->list.Count == 0) {
                /* Nobody answers for the consumer: idle past its threshold (a source that
                 * stayed quiet while another was read), the server removed it. */
                ns = reader_reopen(r, true);
                if (ns != NATS_OK)
                    return ns;
                continue;
            }
            bool idle =
                r->list.Count == 0 && (ns == NATS_OK || ns == NATS_NOT_FOUND || ns == NATS_TIMEOUT);
            if (idle && idle_lost(r->p, NULL, NULL, r->sub, 0, r->next_cseq, &r->last_probe_ns,
                                  &r->probe_cseq)) {
                /* Its last deliveries never came: none after them would show the jump. */
                ns = reader_reopen(r, false);
                if (ns != NATS_OK)
                    return ns;
                continue;
            }
            if (ns == NATS_NOT_FOUND || r->list.Count == 0)
                return ns == NATS_OK || ns == NATS_NOT_FOUND ? NATS_TIMEOUT : ns;
            if (ns != NATS_OK && ns != NATS_TIMEOUT)
                return ns;
        }
        natsMsg *m = r->list.Msgs[r->next];
        uint64_t seq = 0, cseq = 0, pending = 0;
        bool meta = jl__msg_seq(m, &seq, &cseq, &pending);
        if (meta && cseq != r->next_cseq) {
            natsStatus ns = reader_reopen(r, false);
            if (ns != NATS_OK)
                return ns;
            continue;
        }
        if (meta) {
            /* From a sequence asked for, the first message must be that one; later ones follow
             * on: a gap is noted, for jl__reader_check_gap() to tell what made it. From the
             * start, the first message held when the reader opened (not known: sequence 1):
             * one removed since, before it was read, is a gap too. */
            if (seq > reader_expected(r))
                jl__reader_note_gap(r, seq - 1);
            r->next_cseq = cseq + 1;
            r->last_seq = seq;
            if (r->next == r->list.Count - 1) { /* where a reopen, after a fetch, goes on */
                r->hash_seq = seq;
                r->hash = jl__msg_hash(m);
            }
        }
        *out = m;
        r->list.Msgs[r->next++] = NULL; /* now the caller's */
        return NATS_OK;
    }
    return NATS_MISMATCH;
}

void jl__reader_note_gap(jl__reader *r, uint64_t to)
{
    uint64_t expected = reader_expected(r);
    if (expected < 1)
        expected = 1;
    if (to >= expected && r->gap_from == 0) {
        r->gap_from = expected;
        r->gap_to = to;
    }
}

/* Whether @p filter takes in every message of the stream @p si describes. */
static bool filter_covers(const jsStreamInfo *si, const char *filter)
{
    const jsStreamConfig *c = si->Config;
    if (filter == NULL || filter[0] == 0)
        return true;
    if (c == NULL || c->SubjectsLen <= 0)
        return false;
    for (int i = 0; i < c->SubjectsLen; i++) {
        if (c->Subjects[i] == NULL || strcmp(c->Subjects[i], filter) != 0)
            return false;
    }
    return true;
}

jl_status jl__reader_check_gap(jl__reader *r, char *err, size_t errlen)
{
    if (r->gap_from == 0)
        return JL_OK;
    jsStreamInfo *info = NULL;
    const char *stream = r->p->src[r->si].stream;
    if (js_GetStreamInfo(&info, r->p->js, stream, NULL, NULL) != NATS_OK)
        return JL_OK;
    uint64_t first = info->State.FirstSeq;
    bool covers = filter_covers(info, r->p->src[r->si].filter);
    jsStreamInfo_Destroy(info);
    uint64_t from = r->gap_from, to = r->gap_to < first - 1 ? r->gap_to : first - 1;
    r->gap_from = r->gap_to = 0;
    if (first <= from || !covers || from > jl__proj_checkpoint(r->p, r->si))
        return JL_OK; /* still held (deleted one by one), perhaps not ours, or lacking in live */
    snprintf(err, errlen,
             "stream %s no longer holds sequences %" PRIu64 " to %" PRIu64
             " (removed by its limits or a purge before they were read): a model built "
             "without them would lack what they built",
             stream, from, to);
    return JL_ERR_INVALID;
}

bool jl__reader_drained(jl__reader *r)
{
    jsConsumerInfo *ci = NULL;
    if (r->sub == NULL || natsSubscription_GetConsumerInfo(&ci, r->sub, NULL, NULL) != NATS_OK)
        return false;
    bool all =
        ci->NumPending == 0 && ci->NumAckPending == 0 && ci->Delivered.Consumer + 1 == r->next_cseq;
    jsConsumerInfo_Destroy(ci);
    return all;
}

void jl__reader_close(jl__reader *r)
{
    natsMsgList_Destroy(&r->list);
    if (r->sub != NULL)
        jl_conn_sub_destroy(r->p->conn, r->sub); /* deletes the ephemeral consumer */
    memset(r, 0, sizeof(*r));
}

/* ---- catching up ----
 * Far behind the stream (a new or restored read model), the durable's acked pulls are the slow
 * way: a reader from checkpoint + 1 fetches without acks. Once a message says nothing more is
 * pending, the reader goes and the durable takes over (re-created at the checkpoint by
 * attach()). */

/* Where the stream's head is from source @p i's checkpoint: far ahead (catch up first), or
 * behind it, which no stream that only grows can be. (A stream that cannot be read now is
 * taken as near: attaching says why.) */
typedef enum { HEAD_NEAR, HEAD_FAR, HEAD_BEHIND } head_at;

typedef struct stream_now {
    uint64_t first, last; /* sequences */
    int64_t created;      /* ns; 0: the stream could not be read */
    bool covers;          /* the source's filter takes in every message of the stream */
    /* Messages it holds past the checkpoint: those its limits or a purge removed are not
     * read, so not counted. Over a filter that leaves subjects out, others' count too. */
    uint64_t behind;
} stream_now;

/* Where source @p i's stream stands; JL_OK also when it does not exist (attaching says so),
 * else why it could not be read (in src->err). */
static jl_status stream_head(jl_projector *p, int i, head_at *out_at, stream_now *out)
{
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    memset(out, 0, sizeof(*out));
    *out_at = HEAD_NEAR;
    natsStatus ns = js_GetStreamInfo(&si, p->js, p->src[i].stream, NULL, &jerr);
    if (ns != NATS_OK) {
        if (ns == NATS_NOT_FOUND || jerr == JSStreamNotFoundErr)
            return JL_OK;
        src_err(&p->src[i], "cannot read stream %s: %s", p->src[i].stream, natsStatus_GetText(ns));
        return jl_status_from_nats(ns);
    }
    out->first = si->State.FirstSeq;
    out->last = si->State.LastSeq;
    out->created = si->Created;
    out->covers = filter_covers(si, p->src[i].filter);
    uint64_t from = p->src[i].checkpoint;
    if (out->first > from + 1)
        from = out->first - 1;
    out->behind = out->last > from ? out->last - from : 0;
    *out_at = si->State.LastSeq < p->src[i].checkpoint        ? HEAD_BEHIND
              : out->behind > (uint64_t)JL_CATCH_UP_THRESHOLD ? HEAD_FAR
                                                              : HEAD_NEAR;
    jsStreamInfo_Destroy(si);
    return JL_OK;
}

/*
 * Whether source @p i's stream, created at @p created, is still the one the read model was
 * built from. Deleted and created again (or replaced by another of the same name), a stream
 * numbers other events with the sequences already applied: reading on from the checkpoint would
 * skip as many of them without a word. The creation time tells at once. When it changed but the
 * message last applied is still at its sequence with the same content (its hash), the stream
 * holds the same events (a restore from a backup creates it anew; so does, for the time only, a
 * restart after an update): the new time is recorded and reading goes on.
 */
static jl_status check_stream(jl_projector *p, int i, const stream_now *now)
{
    jl__source *src = &p->src[i];
    int64_t created = now->created;
    if (created == src->created_ns)
        return JL_OK;
    int64_t was = 0;
    uint64_t id_seq = 0, last_seq = 0, id_hash = 0;
    pthread_mutex_lock(&p->apply_mu); /* p->db: a rebuild's switch replaces it */
    sqlite3_stmt *st = jl_db_stmt(p->db, "SELECT stream_created_ns, id_seq, id_hash, last_seq "
                                         "FROM jl_checkpoints WHERE stream = ?");
    jl_status s = st != NULL ? JL_OK : JL_ERR_SQLITE;
    if (s == JL_OK) {
        sqlite3_bind_text(st, 1, src->stream, -1, SQLITE_STATIC);
        int rc = sqlite3_step(st);
        if (rc == SQLITE_ROW) {
            was = sqlite3_column_int64(st, 0);
            id_seq = (uint64_t)sqlite3_column_int64(st, 1);
            id_hash = (uint64_t)sqlite3_column_int64(st, 2);
            last_seq = (uint64_t)sqlite3_column_int64(st, 3);
        } else {
            s = jl_db_fail(p->db, rc, "no checkpoint row");
        }
        sqlite3_reset(st);
    }
    if (s != JL_OK)
        src_err(src, "cannot read the checkpoint of %s: %s", src->stream, jl_db_errmsg(p->db));
    pthread_mutex_unlock(&p->apply_mu);
    if (s != JL_OK)
        return s;

    bool same = was == created || last_seq == 0, found = false;
    const char *unsure = NULL; /* why the stream is taken as it is, unchecked */
    if (!same && id_seq > 0 && id_hash != 0) {
        msg_match at = match_msg(p, i, id_seq, id_hash, &s, src->err, sizeof(src->err));
        if (at == MSG_UNREAD)
            return s;
        found = at != MSG_GONE;
        same = at == MSG_SAME;
        if (at == MSG_GONE && id_seq < now->first)
            unsure = "the message last applied has gone by the stream's limits";
    } else if (!same) {
        unsure = "nothing was recorded to compare"; /* a file from before, or none applied */
    }
    /* A stream's creation time can change without its messages (a restore; a server restart
     * after an update of a standalone stream): with nothing left to compare, it is taken as is,
     * and said. */
    if (unsure != NULL) {
        same = true;
        if (was != 0)
            jl_log(JL_LOG_WARN, "stream created anew, taken as the same unchecked",
                   "\"stream\":\"%s\",\"checkpoint\":%" PRIu64 ",\"why\":\"%s\"", src->stream,
                   last_seq, unsure);
    }
    if (!same) {
        src_err(src,
                "stream %s was created again after this read model applied it up to sequence "
                "%" PRIu64 " (the event applied at %" PRIu64 " is %s): its sequences now name "
                "other events, and none is applied; stop the projector, remove its files %s.* "
                "from %s and start it again to build the read model from the stream",
                src->stream, last_seq, id_seq, found ? "another one now" : "gone", p->def->name,
                p->data_dir);
        return JL_ERR_INVALID;
    }
    if (was != created) {
        pthread_mutex_lock(&p->apply_mu);
        s = set_stream_created(p, p->db, i, created);
        if (s != JL_OK)
            src_err(src, "cannot record which stream %s is: %s", src->stream, jl_db_errmsg(p->db));
        pthread_mutex_unlock(&p->apply_mu);
        if (s != JL_OK)
            return s;
        if (was != 0 && last_seq > 0 && unsure == NULL)
            jl_log(JL_LOG_INFO, "stream created anew with the same events",
                   "\"stream\":\"%s\",\"checkpoint\":%" PRIu64 ",\"event_seq\":%" PRIu64,
                   src->stream, last_seq, id_seq);
    }
    src->created_ns = created;
    return JL_OK;
}

/* stream_now.behind of source @p i (0 for a missing stream); false when it cannot be read now
 * (not an error of the source's: a later step tells). Over a filter that leaves subjects out,
 * a catch-up reader tells what is ours (nothing_to_catch_up). */
static bool stream_behind(jl_projector *p, int i, uint64_t *out)
{
    head_at at;
    stream_now now;
    if (stream_head(p, i, &at, &now) != JL_OK) {
        p->src[i].err[0] = 0;
        return false;
    }
    *out = now.behind;
    return true;
}

/* Source @p i read nothing: idle, or a fetch that expired unanswered (a slow or restarting
 * server, a reconnect, this process paused), which says nothing about how far behind it is. So
 * while queries wait for it, its consumer (or, before it has one, its stream) is asked. */
static void serve_if_idle(jl_projector *p, int i)
{
    jl__source *src = &p->src[i];
    if (atomic_load(&p->serving))
        return;
    if (atomic_load(&src->current)) {
        serve_if_current(p, i, 0); /* the queries' subscription failed: tried again */
        return;
    }
    uint64_t pending = 0;
    if (src->pull != NULL) {
        jsConsumerInfo *ci = NULL;
        if (js_GetConsumerInfo(&ci, p->js, src->stream, src->durable, NULL, NULL) != NATS_OK)
            return; /* asked again after the next step */
        /* Not yet delivered, and delivered but not applied (acked after the commit): some may
         * be on their way still, past a fetch that gave up. */
        pending = ci->NumPending + (uint64_t)ci->NumAckPending;
        jsConsumerInfo_Destroy(ci);
    } else {
        if (!stream_behind(p, i, &pending))
            return;
    }
    serve_if_current(p, i, pending);
}

static jl_status catch_up_step(jl_projector *p, int i, int wait_ms, size_t *out_applied)
{
    jl__source *src = &p->src[i];
    jl_status s = JL_OK;
    if (src->catchup.sub == NULL) {
        s = jl__reader_open(&src->catchup, p, i, src->checkpoint + 1, 0, src->err,
                            sizeof(src->err));
        if (s != JL_OK)
            return s;
        jl_log(JL_LOG_INFO, "catching up", "\"stream\":\"%s\",\"from_seq\":%" PRIu64, src->stream,
               src->checkpoint + 1);
    }
    natsMsg **msgs = calloc((size_t)p->batch, sizeof(*msgs));
    int n = 0;
    bool caught_up = false;
    if (msgs == NULL)
        return JL_ERR_NOMEM;
    while (n < p->batch) {
        natsMsg *m = NULL;
        natsStatus ns = jl__reader_next(&src->catchup, p->batch, n == 0 ? wait_ms : 0, &m);
        if (ns == NATS_TIMEOUT)
            break;
        if (ns != NATS_OK) {
            src_err(src, "catching up failed: %s", natsStatus_GetText(ns));
            s = jl_status_from_nats(ns);
            break;
        }
        msgs[n++] = m;
        uint64_t seq = 0, pending = 1;
        if (jl__msg_seq(m, &seq, NULL, &pending) && pending == 0) {
            caught_up = true;
            break;
        }
    }
    if (s == JL_OK && n > 0)
        s = apply_source(p, i, msgs, n, false, out_applied);
    for (int k = 0; k < n; k++)
        natsMsg_Destroy(msgs[k]);
    free(msgs);
    char why[512], esc[600];
    if (s == JL_OK && jl__reader_check_gap(&src->catchup, why, sizeof(why)) != JL_OK) {
        /* Trimmed while it read (a stream's limits catching up with a projector far behind):
         * as at attach, nothing to do but read on and say so. */
        jl_log(JL_LOG_WARN, "the stream no longer holds messages this read model has not applied",
               "\"stream\":\"%s\",\"detail\":\"%s\"", src->stream,
               jl_log_str(esc, sizeof(esc), why));
    }
    if (s == JL_OK && n == 0 && jl__reader_drained(&src->catchup)) {
        /* Nothing of the filter past the checkpoint: the head is far only in others' messages
         * or removed ones. Not behind, and the durable takes over for good (not another reader
         * every step, waiting out its fetch). */
        src->nothing_to_catch_up = true;
        serve_if_current(p, i, 0);
    } else if (s == JL_OK && n == 0) {
        serve_if_idle(p, i);
    }
    if (s != JL_OK || caught_up || n == 0) {
        /* Done (or failed, or idle): the durable takes over from the checkpoint. */
        jl__reader_close(&src->catchup);
        if (caught_up)
            jl_log(JL_LOG_INFO, "caught up", "\"stream\":\"%s\",\"checkpoint\":%" PRIu64,
                   src->stream, jl__proj_checkpoint(p, i));
    }
    return s;
}

/* A delivery of source @p i was lost: the consumer is re-created at the checkpoint (on the next
 * step), so the lost event comes again. */
static void lost_delivery(jl_projector *p, int i)
{
    atomic_fetch_add(&p->lost_deliveries, 1);
    jl_log(JL_LOG_WARN, "delivery lost, consumer reset",
           "\"durable\":\"%s\",\"checkpoint\":%" PRIu64
           ",\"hint\":\"a server or route went down, or another process pulls from this "
           "durable\"",
           p->src[i].durable, jl__proj_checkpoint(p, i));
    detach(p, i);
    jl__twins_ask_now_and_then(p); /* is another instance pulling? then one of us stops */
}

/*
 * A lost delivery shows when the next one comes, or (to the durable) when the ack wait (60 s)
 * sends it again: while idle, that may be long, or never (a reader's consumer acks nothing). So
 * every JL_IDLE_PROBE_MS of idleness the consumer is asked how far it delivered (@p stream's
 * consumer @p name, or the one @p sub reads); ahead of what we received (@p next_cseq is the
 * consumer sequence expected next) at two probes in a row, with nothing received in between
 * (nothing stays in transit that long), means lost. @p last_probe_ns and @p probe_cseq are the
 * caller's state, zeroed at first. A consumer not created at @p created (0: not asked) was made
 * again by another process (see verify_consumer): what it delivers next is not ours to trust.
 */
static bool idle_lost(jl_projector *p, const char *stream, const char *name, natsSubscription *sub,
                      int64_t created, uint64_t next_cseq, int64_t *last_probe_ns,
                      uint64_t *probe_cseq)
{
    jsConsumerInfo *ci = NULL;
    int64_t now = jl__mono_ns();
    if (now - *last_probe_ns < JL_IDLE_PROBE_MS * NS_PER_MS)
        return false;
    *last_probe_ns = now;
    natsStatus ns = sub != NULL ? natsSubscription_GetConsumerInfo(&ci, sub, NULL, NULL)
                                : js_GetConsumerInfo(&ci, p->js, stream, name, NULL, NULL);
    if (ns != NATS_OK)
        return false; /* unreachable: the fetch will say so */
    bool ahead = ci->Delivered.Consumer >= next_cseq;
    bool replaced = created != 0 && ci->Created != created;
    jsConsumerInfo_Destroy(ci);
    if (replaced) {
        *probe_cseq = 0;
        return true;
    }
    bool lost = ahead && *probe_cseq == next_cseq;
    *probe_cseq = ahead ? next_cseq : 0;
    return lost;
}

static bool lost_while_idle(jl_projector *p, int i)
{
    jl__source *src = &p->src[i];
    return idle_lost(p, src->stream, src->durable, NULL, src->consumer_created, src->next_cseq,
                     &src->last_probe_ns, &src->probe_cseq);
}

/* Say that source @p i's stream, which now starts at @p first, no longer holds messages past
 * the checkpoint (@p when they went), once: nothing to do about it but read on. With a filter
 * that leaves subjects out, the checkpoint is the last message of ours, and others' after it
 * may have gone: nothing to tell then. */
static void warn_removed(jl_projector *p, int i, uint64_t first, const char *when)
{
    jl__source *src = &p->src[i];
    if (!src->covers || first <= src->checkpoint + 1 || src->warned_from == src->checkpoint + 1)
        return;
    src->warned_from = src->checkpoint + 1;
    jl_log(JL_LOG_WARN, "the stream no longer holds messages this read model has not applied",
           "\"stream\":\"%s\",\"from_seq\":%" PRIu64 ",\"to_seq\":%" PRIu64
           ",\"detail\":\"removed by the stream's limits or a purge %s: the read model lacks "
           "what they built\"",
           src->stream, src->checkpoint + 1, first - 1, when);
}

/* The durable delivered past a hole after source @p i's checkpoint: messages deleted one by
 * one say nothing, but the stream's limits or a purge removing them before they were read (the
 * projector behind, the stream short of room or age) are said (warn_removed). */
static void warn_if_removed(jl_projector *p, int i)
{
    head_at at;
    stream_now now;
    if (stream_head(p, i, &at, &now) != JL_OK) {
        p->src[i].err[0] = 0; /* only a warning's: the batch goes on */
        return;
    }
    if (now.created != 0)
        warn_removed(p, i, now.first, "while the projector was behind");
}

/* How many of @p msgs, from the first, were delivered in order with none missing between them
 * (a delivery lost in transit shows as a jump in the consumer sequence). */
static int delivered_in_order(jl__source *src, natsMsg **msgs, int n)
{
    for (int k = 0; k < n; k++) {
        uint64_t seq = 0, cseq = 0, pending = 0;
        if (!jl__msg_seq(msgs[k], &seq, &cseq, &pending))
            continue; /* refused by the apply, with its own error */
        if (cseq != src->next_cseq)
            return k;
        src->next_cseq = cseq + 1;
        src->drained = pending == 0;
    }
    return n;
}

/*
 * The first deliveries after attaching to source @p i's durable: whether they came from the
 * consumer attached to. Another process on the same durable (a second instance, which twins.c
 * then stops) re-creates the consumer at its own checkpoint when it finds it out of step with
 * it; if that happens between our attach and our first fetch, the fetch is served by its
 * consumer, which numbers its deliveries from 1 as ours would: they look in order, and the
 * events between the two checkpoints would be skipped for good. Asked after the fetch, the
 * consumer's creation time tells (a consumer made again later numbers its deliveries from 1
 * again, behind ours: delivered_in_order sees that). JL_ERR_CONFLICT when replaced.
 */
static jl_status verify_consumer(jl_projector *p, int i)
{
    jl__source *src = &p->src[i];
    jsConsumerInfo *ci = NULL;
    jsErrCode jerr = 0;
    natsStatus ns = js_GetConsumerInfo(&ci, p->js, src->stream, src->durable, NULL, &jerr);
    if (ns != NATS_OK) {
        src_err(src, "cannot read consumer %s: %s (JetStream error %d)", src->durable,
                natsStatus_GetText(ns), (int)jerr);
        return jl_status_from_nats(ns);
    }
    bool same = ci->Created == src->consumer_created;
    jsConsumerInfo_Destroy(ci);
    if (!same) {
        lost_delivery(p, i); /* says so, and asks whether another instance pulls */
        src_err(src, "consumer %s was made again by another process: its deliveries are not read",
                src->durable);
        return JL_ERR_CONFLICT;
    }
    src->verify_consumer = false;
    return JL_OK;
}

/* Whether the batch @p list skips stream sequences after source @p i's checkpoint, where its
 * durable delivers every one: messages deleted or removed, or a consumer made again by another
 * process, further on (verify_consumer tells). */
static bool skipped(const jl__source *src, const natsMsgList *list)
{
    uint64_t first = 0, cseq = 0, pending = 0;
    return src->covers && list->Count > 0 && jl__msg_seq(list->Msgs[0], &first, &cseq, &pending) &&
           first > src->checkpoint + 1;
}

/* One batch of source @p i. */
static jl_status step_source(jl_projector *p, int i, int wait_ms, size_t *out_applied)
{
    jl__source *src = &p->src[i];
    natsMsgList list = {0};
    jl_status s = JL_OK;

    *out_applied = 0;
    src->err[0] = 0;
    if (jl__twins_yielded(p)) {
        src_err(src, "%s", p->yield_msg);
        return JL_ERR_CONFLICT;
    }
    head_at head = HEAD_NEAR;
    stream_now now = {0};
    if (src->catchup.sub == NULL && src->pull == NULL) {
        if ((s = stream_head(p, i, &head, &now)) != JL_OK)
            return s;
        if (now.created == 0)
            serve_if_current(p, i, 0); /* no stream yet: nothing to be behind */
        else
            src->covers = now.covers;
        if (head == HEAD_FAR && src->nothing_to_catch_up)
            head = HEAD_NEAR;
        src->nothing_to_catch_up = false;
    }
    if (head == HEAD_BEHIND) {
        /* Deleted and created again, or restored from an older backup: its sequences name
         * other events now, and reading on from the checkpoint would skip the new ones up to
         * it without a word. Nothing is applied (a rebuild would keep the checkpoint too). */
        src_err(src,
                "stream %s ends at sequence %" PRIu64
                ", before this read model's checkpoint %" PRIu64
                ": the stream was created again or restored, and its events are not applied; stop "
                "the projector, remove its files %s.* from %s and start it again to build the read "
                "model from the stream",
                src->stream, now.last, src->checkpoint, p->def->name, p->data_dir);
        return JL_ERR_INVALID;
    }
    if (now.created != 0 && (s = check_stream(p, i, &now)) != JL_OK)
        return s;
    if (now.created != 0)
        warn_removed(p, i, now.first, "while the projector was stopped (or before it first ran)");
    if (src->catchup.sub != NULL || head == HEAD_FAR)
        return catch_up_step(p, i, wait_ms, out_applied);
    if (src->pull == NULL) {
        s = attach(p, i);
        if (s != JL_OK)
            return s;
    }
    /* Take what is there at once (a full batch while catching up); when nothing is, wait for
     * the first event only, so a lone event is applied at once instead of after the timeout. */
    bool ask_first = !src->drained || wait_ms <= 0;
    natsStatus ns = ask_first
                        ? jl_fetch(src->pull, &list, p->batch, wait_ms > 0 ? wait_ms : 1000, true)
                        : NATS_NOT_FOUND;
    if (ns == NATS_NOT_FOUND || (ns == NATS_TIMEOUT && list.Count == 0)) {
        natsMsgList_Destroy(&list);
        memset(&list, 0, sizeof(list));
        ns = wait_ms > 0 ? jl_fetch(src->pull, &list, 1, wait_ms, false) : NATS_TIMEOUT;
    }
    bool skips = skipped(src, &list); /* before the batch moves the checkpoint */
    if (ns == NATS_TIMEOUT || ns == NATS_NOT_FOUND) {
        s = JL_OK;
        if (lost_while_idle(p, i))
            lost_delivery(p, i);
        else
            serve_if_idle(p, i);
    } else if (ns != NATS_OK) {
        src_err(src, "fetch from %s failed: %s", src->durable, natsStatus_GetText(ns));
        s = jl_status_from_nats(ns);
        detach(p, i); /* re-attach from the checkpoint on the next step */
    } else if ((src->verify_consumer || skips) && (s = verify_consumer(p, i)) != JL_OK) {
        detach(p, i); /* not applied, not acked: read again from the checkpoint */
    } else {
        int n = delivered_in_order(src, list.Msgs, list.Count);
        if (n > 0 && skips)
            warn_if_removed(p, i); /* the durable skipped some: deleted, or removed? */
        s = n > 0 ? apply_source(p, i, list.Msgs, n, true, out_applied) : JL_OK;
        if (s != JL_OK) {
            detach(p, i); /* the batch will come again from the re-created consumer */
        } else if (n < list.Count) {
            /* A delivery was lost: what followed it is not applied (nor acked, which with
             * AckAll would ack the lost one too). */
            lost_delivery(p, i);
        }
    }
    natsMsgList_Destroy(&list);
    return s;
}

/* While a version rebuild is under way the old file must not see the new code's apply. If the
 * rebuild failed (NATS down, disk full), start it again every 10 s. Returns true when paused. */
static bool paused_wait(jl_projector *p, int wait_ms)
{
    if (!atomic_load(&p->paused))
        return false;
    pthread_mutex_lock(&p->apply_mu);
    int64_t t = jl__mono_ns();
    if (!jl__jobs_running(p) && t - p->last_version_try_ns > 10000 * NS_PER_MS) {
        p->last_version_try_ns = t;
        jl__jobs_start_version_rebuild(p);
    }
    pthread_mutex_unlock(&p->apply_mu);
    for (int waited = 0; waited < wait_ms && atomic_load(&p->paused) && !atomic_load(&p->stopping);
         waited += 50)
        nats_Sleep(50);
    return true;
}

jl_status jl_projector_step(jl_projector *p, int wait_ms, size_t *out_applied)
{
    jl_status s = JL_OK;
    size_t total = 0;
    p->err[0] = 0;
    if (!paused_wait(p, wait_ms)) {
        for (int i = 0; i < p->n_src && s == JL_OK; i++) {
            size_t n = 0;
            /* Only the first source waits: one idle stream must not hold up the others. */
            s = step_source(p, i, i == 0 ? wait_ms : 0, &n);
            total += n;
            if (s != JL_OK)
                snprintf(p->err, sizeof(p->err), "%s", p->src[i].err);
        }
    }
    if (out_applied != NULL)
        *out_applied = total;
    return s;
}

/* Consume source @p i until stopped, retrying failures with a backoff. */
static void run_source(jl_projector *p, int i)
{
    int backoff_ms = 100;
    while (!atomic_load(&p->stopping)) {
        atomic_store(&p->src[i].beat_ns, jl__mono_ns());
        size_t n = 0;
        jl_status s = JL_OK;
        if (!paused_wait(p, 500))
            s = step_source(p, i, 500, &n);
        if (s == JL_OK) {
            backoff_ms = 100;
            continue;
        }
        if (atomic_load(&p->stopping))
            break; /* a fetch cut short by the stop is not a failure */
        char esc[1200];
        int64_t t = jl__mono_ns();
        /* Waiting for a stream that does not exist yet is normal at start: say it every 10 s. */
        if (s != JL_ERR_NOT_FOUND || t - p->src[i].last_attach_log_ns > 10000 * NS_PER_MS) {
            jl_log(s == JL_ERR_NOT_FOUND ? JL_LOG_WARN : JL_LOG_ERROR, "projector retrying",
                   "\"stream\":\"%s\",\"status\":\"%s\",\"error\":\"%s\",\"retry_ms\":%d",
                   p->src[i].stream, jl_status_str(s), jl_log_str(esc, sizeof(esc), p->src[i].err),
                   backoff_ms);
            p->src[i].last_attach_log_ns = t;
        }
        for (int waited = 0; waited < backoff_ms && !atomic_load(&p->stopping); waited += 50)
            nats_Sleep(50);
        backoff_ms = backoff_ms * 2 > 5000 ? 5000 : backoff_ms * 2;
    }
    atomic_store(&p->src[i].beat_ns, 0);
}

typedef struct source_arg {
    jl_projector *p;
    int i;
} source_arg;

static void *source_thread(void *arg)
{
    source_arg *a = arg;
    run_source(a->p, a->i);
    free(a);
    return NULL;
}

jl_status jl_projector_run(jl_projector *p)
{
    /* The first source runs here, the others on their own threads: each stream at its pace. */
    jl_status s = JL_OK;
    p->err[0] = 0;
    for (int i = 1; i < p->n_src && s == JL_OK; i++) {
        source_arg *a = malloc(sizeof(*a));
        if (a != NULL)
            *a = (source_arg){.p = p, .i = i};
        if (a == NULL || pthread_create(&p->src[i].thread, NULL, source_thread, a) != 0) {
            free(a);
            set_err(p, "cannot start the thread reading %s", p->src[i].stream);
            s = JL_ERR_NOMEM;
            break;
        }
        p->src[i].has_thread = true;
    }
    /* Without all its threads the projector does not run half its streams: the ones started
     * stop, and the caller closes it (it must not be freed under them). */
    if (s != JL_OK)
        atomic_store(&p->stopping, true);
    else
        run_source(p, 0);
    for (int i = 1; i < p->n_src; i++) {
        if (p->src[i].has_thread)
            pthread_join(p->src[i].thread, NULL);
        p->src[i].has_thread = false;
    }
    if (s == JL_OK && jl__twins_yielded(p)) {
        set_err(p, "%s", p->yield_msg);
        s = JL_ERR_CONFLICT;
    }
    return s;
}

void jl_projector_stop(jl_projector *p)
{
    atomic_store(&p->stopping, true);
}

uint64_t jl_projector_checkpoint(jl_projector *p)
{
    return jl__proj_checkpoint(p, 0);
}

uint64_t jl_projector_checkpoint_of(jl_projector *p, const char *stream)
{
    for (int i = 0; i < p->n_src; i++) {
        if (strcmp(p->src[i].stream, stream) == 0)
            return jl__proj_checkpoint(p, i);
    }
    return 0;
}

jl_db *jl__proj_read_begin(jl_projector *p, jl_status *io_s)
{
    pthread_mutex_lock(&p->query_mu);
    pthread_rwlock_rdlock(&p->switch_lock);
    if (*io_s == JL_OK)
        *io_s = jl_db_begin(p->qdb, false);
    return p->qdb;
}

jl_code jl__proj_failure_code(jl_status s)
{
    return s == JL_ERR_NOMEM || s == JL_ERR_TIMEOUT || s == JL_ERR_DISK_FULL ? JL_CODE_UNAVAILABLE
                                                                             : JL_CODE_INTERNAL;
}

void jl__proj_read_end(jl_projector *p, jl_db *qdb, jl_status s, const char *what, jl_reply *r)
{
    /* Out of memory is nothing the database said: its last message is another's. */
    if (s != JL_OK)
        jl_reply_error(r, jl__proj_failure_code(s), "%s: %s%s", what,
                       s == JL_ERR_NOMEM ? "out of memory" : jl_db_errmsg(qdb),
                       atomic_load(&p->paused) ? " (the read model is being rebuilt for a new "
                                                 "projection version)"
                                               : "");
    jl_db_rollback(qdb);
    pthread_rwlock_unlock(&p->switch_lock);
    pthread_mutex_unlock(&p->query_mu);
}

/* One row of the dead-letter listing (jl_db_page()'s reader); JL_ERR_NOMEM when a copy failed. */
static jl_status read_dead_letter(sqlite3_stmt *st, void *row)
{
    Jetledger__DeadLetter *d = row;
    jetledger__dead_letter__init(d);
    d->stream = jl_db_text_dup(st, 0);
    d->seq = (uint64_t)sqlite3_column_int64(st, 1);
    d->event_index = sqlite3_column_int(st, 2);
    d->event_id = jl_db_text_dup(st, 3);
    d->event_type = jl_db_text_dup(st, 4);
    d->subject = jl_db_text_dup(st, 5);
    d->reason = jl_db_text_dup(st, 6);
    d->at_ns = sqlite3_column_int64(st, 7);
    d->data_bytes = (uint64_t)sqlite3_column_int64(st, 8);
    return d->stream && d->event_id && d->event_type && d->subject && d->reason ? JL_OK
                                                                                : JL_ERR_NOMEM;
}

static void free_dead_letter(void *row)
{
    Jetledger__DeadLetter *d = row;
    free(d->stream);
    free(d->event_id);
    free(d->event_type);
    free(d->subject);
    free(d->reason);
}

void jl__proj_dead_letters(jl_projector *p, unsigned limit, jl_reply *r)
{
    Jetledger__DeadLetters out = JETLEDGER__DEAD_LETTERS__INIT;
    void *rows = NULL, **ptrs = NULL;
    size_t n = 0;
    bool more = false;
    jl_status s = JL_OK;
    jl_db *qdb = jl__proj_read_begin(p, &s);
    sqlite3_stmt *st = s == JL_OK ? jl_db_stmt(qdb, "SELECT count(*) FROM jl_dead_letters") : NULL;
    if (s == JL_OK && st == NULL)
        s = JL_ERR_SQLITE;
    if (st != NULL) {
        int rc = sqlite3_step(st);
        if (rc == SQLITE_ROW)
            out.count = (uint64_t)sqlite3_column_int64(st, 0);
        else
            s = jl_db_fail(qdb, rc, "cannot count dead letters");
        sqlite3_reset(st);
    }
    /* The newest first (by jl_dead_letters_by_time); the count says whether there are more. */
    st = s == JL_OK ? jl_db_stmt(qdb, "SELECT stream, seq, event_index, event_id, event_type, "
                                      "subject, reason, at_ns, length(data) FROM "
                                      "jl_dead_letters ORDER BY at_ns DESC, seq DESC LIMIT ?")
                    : NULL;
    if (s == JL_OK && st == NULL)
        s = JL_ERR_SQLITE;
    if (st != NULL) {
        sqlite3_bind_int64(st, 1, (sqlite3_int64)limit + 1);
        s = jl_db_page(qdb, st, limit, sizeof(Jetledger__DeadLetter), read_dead_letter,
                       free_dead_letter, &rows, &ptrs, &n, &more);
    }
    jl__proj_read_end(p, qdb, s, "cannot read the dead letters", r);
    out.n_letters = n;
    out.letters = (Jetledger__DeadLetter **)ptrs;
    out.instance = p->instance;
    if (s == JL_OK)
        (void)jl_reply_set_result(r, &out.base); /* else it says why */
    jl_db_page_free(rows, ptrs, n, free_dead_letter);
}

uint64_t jl_projector_dead_letters(jl_projector *p)
{
    pthread_mutex_lock(&p->mu);
    uint64_t c = p->dead_letters;
    pthread_mutex_unlock(&p->mu);
    return c;
}

const char *jl_projector_runtime_schema(void)
{
    return jl__state_sql;
}

uint64_t jl_projector_lost_deliveries(jl_projector *p)
{
    return (uint64_t)atomic_load(&p->lost_deliveries);
}

/* ---- queries ---- */

static const jl_query_def *find_query(const jl_projector_def *def, const char *name)
{
    for (size_t i = 0; i < def->n_queries; i++) {
        if (strcmp(def->queries[i].request->short_name, name) == 0)
            return &def->queries[i];
    }
    return NULL;
}

static uint64_t field_u64(const ProtobufCMessage *msg, const char *name)
{
    const ProtobufCFieldDescriptor *f =
        protobuf_c_message_descriptor_get_field_by_name(msg->descriptor, name);
    if (f == NULL || f->label == PROTOBUF_C_LABEL_REPEATED ||
        (f->type != PROTOBUF_C_TYPE_UINT64 && f->type != PROTOBUF_C_TYPE_FIXED64))
        return 0;
    return *(const uint64_t *)(const void *)((const uint8_t *)msg + f->offset);
}

static const char *field_str(const ProtobufCMessage *msg, const char *name)
{
    const ProtobufCFieldDescriptor *f =
        protobuf_c_message_descriptor_get_field_by_name(msg->descriptor, name);
    if (f == NULL || f->label == PROTOBUF_C_LABEL_REPEATED || f->type != PROTOBUF_C_TYPE_STRING)
        return NULL;
    return *(const char *const *)(const void *)((const uint8_t *)msg + f->offset);
}

/* Whether source @p i's checkpoint has reached @p min_seq; the checkpoint into @p out_seen. */
static bool reached(jl_projector *p, int i, uint64_t min_seq, uint64_t *out_seen)
{
    pthread_mutex_lock(&p->mu);
    *out_seen = p->src[i].checkpoint;
    pthread_mutex_unlock(&p->mu);
    return *out_seen >= min_seq;
}

jl_status jl_apply_step(jl_db *db, sqlite3_stmt *st, const jl_event *ev, const char *missing,
                        const char *what, char *err, size_t errlen)
{
    jl_status s = jl_db_step_done(db, st);
    if (s == JL_OK && missing != NULL && sqlite3_changes(jl_db_handle(db)) == 0) {
        snprintf(err, errlen, "%s for %s %s", ev->event_type, missing,
                 what != NULL ? what : ev->aggregate_id);
        return JL_ERR_INVALID;
    }
    if (s == JL_ERR_INVALID)
        snprintf(err, errlen, "%s rejected by the read model: %s", ev->event_type,
                 jl_db_errmsg(db));
    return s;
}

uint32_t jl_query_limit(uint32_t asked, uint32_t dflt, uint32_t max, jl_reply *out)
{
    if (asked > max) {
        jl_reply_error(out, JL_CODE_INVALID, "limit %u is above the maximum of %u", asked, max);
        return 0;
    }
    return asked ? asked : dflt;
}

/* A query waiting for its min_sequence. */
typedef struct jl__parked {
    natsMsg *msg;
    int si;
    uint64_t min_seq;
    int64_t deadline_ns;
    size_t bytes; /* the request's, counted in parked_bytes */
    struct jl__parked *next;
} jl__parked;

/* Queries parked at once, and the bytes of their requests (each up to JL_MAX_QUERY_BYTES: 4096
 * of the largest would hold 256 MiB). Beyond, a query that would wait is answered
 * "unavailable" at once: waiting on the query thread would hold up every other query. */
#define JL_MAX_PARKED 4096
#define JL_MAX_PARKED_BYTES (16 * 1024 * 1024)

typedef enum { PARK_REACHED, PARKED, PARK_NO_ROOM } park_result;

/* Park @p msg until source @p si reaches @p min_seq (the waiter owns it then), unless the
 * source is there already or there is no room (too many parked, no memory, stopping). The
 * source's checkpoint goes into @p out_seen. */
static park_result park(jl_projector *p, natsMsg *msg, int si, uint64_t min_seq, uint64_t *out_seen)
{
    jl__parked *w = p->has_waiter ? malloc(sizeof(*w)) : NULL;
    park_result got = PARK_NO_ROOM;
    size_t bytes = (size_t)natsMsg_GetDataLength(msg) + sizeof(*w) + 256; /* + subjects */
    pthread_mutex_lock(&p->mu);
    *out_seen = p->src[si].checkpoint;
    if (*out_seen >= min_seq) {
        got = PARK_REACHED;
    } else if (w != NULL && !atomic_load(&p->stopping) && p->n_parked < JL_MAX_PARKED &&
               p->parked_bytes + bytes <= JL_MAX_PARKED_BYTES) {
        *w = (jl__parked){.msg = msg,
                          .si = si,
                          .min_seq = min_seq,
                          .deadline_ns = jl__mono_ns() + JL_QUERY_WAIT_MS * 1000000LL,
                          .bytes = bytes,
                          .next = p->parked};
        p->parked = w;
        p->n_parked++;
        p->parked_bytes += bytes;
        got = PARKED;
        pthread_cond_broadcast(&p->advanced); /* the waiter's next deadline may be this one */
    }
    pthread_mutex_unlock(&p->mu);
    if (got != PARKED)
        free(w);
    return got;
}

/* Answer query @p name into @p r; with @p msg (its request, on the query thread) a query that
 * has to wait for its min_sequence is parked instead and true returned: no reply yet. */
static bool answer_query(jl_projector *p, const char *name, const void *data, size_t len,
                         natsMsg *msg, jl_reply *r)
{
    ProtobufCMessage *req = NULL;
    const jl_query_def *q = find_query(p->def, name);
    if (q == NULL) {
        bool audit = strcmp(name, "GetHistory") == 0 || strcmp(name, "GetState") == 0;
        jl_reply_error(
            r, JL_CODE_INVALID, "unknown query '%.64s' for projector %s%s", name, p->def->name,
            audit ? " (the history and state of an aggregate are asked of its service)" : "");
        return false;
    }
    if (len > JL_MAX_QUERY_BYTES) {
        jl_reply_error(r, JL_CODE_INVALID, "query of %zu bytes exceeds the %d-byte limit", len,
                       JL_MAX_QUERY_BYTES);
        return false;
    }
    req = jl_request_unpack(q->request, data, len, r, NULL);
    if (req == NULL)
        return false;
    uint64_t min_seq = field_u64(req, "min_sequence"), seen = 0;
    int si = 0;
    const char *on = field_str(req, "min_sequence_stream");
    if (on != NULL && *on != 0) {
        for (si = 0; si < p->n_src && strcmp(p->src[si].stream, on) != 0; si++)
            ;
        if (si == p->n_src) {
            jl_reply_error(r, JL_CODE_INVALID, "projector %s does not consume stream '%.64s'",
                           p->def->name, on);
            protobuf_c_message_free_unpacked(req, NULL);
            return false;
        }
    }
    /* On the query thread (msg set) a query that must wait is parked; the waiter's call
     * (msg NULL) is at its deadline or there: no more waiting. */
    park_result pr = min_seq == 0                     ? PARK_REACHED
                     : msg != NULL                    ? park(p, msg, si, min_seq, &seen)
                     : reached(p, si, min_seq, &seen) ? PARK_REACHED
                                                      : PARK_NO_ROOM;
    if (pr == PARKED) {
        protobuf_c_message_free_unpacked(req, NULL);
        return true;
    }
    if (pr == PARK_NO_ROOM) {
        if (atomic_load(&p->stopping))
            jl_reply_error(r, JL_CODE_UNAVAILABLE,
                           "read model %s is at sequence %" PRIu64 " of %s, short of %" PRIu64
                           ", and its projector is stopping; try again",
                           p->def->name, seen, p->src[si].stream, min_seq);
        else if (msg != NULL)
            jl_reply_error(r, JL_CODE_UNAVAILABLE,
                           "read model %s is at sequence %" PRIu64 " of %s, short of %" PRIu64
                           ", and cannot wait now (at most %d queries, %d MiB of them, wait at "
                           "once); try again",
                           p->def->name, seen, p->src[si].stream, min_seq, JL_MAX_PARKED,
                           JL_MAX_PARKED_BYTES / (1024 * 1024));
        else
            jl_reply_error(r, JL_CODE_TIMEOUT,
                           "read model %s is at sequence %" PRIu64 " of %s and did not reach "
                           "%" PRIu64 " within %d ms",
                           p->def->name, seen, p->src[si].stream, min_seq, JL_QUERY_WAIT_MS);
        r->stream_seq = seen;
        protobuf_c_message_free_unpacked(req, NULL);
        return false;
    }
    /* One read transaction: the answer and the sequence it reflects are one snapshot. The
     * read lock keeps a rebuild's switch from swapping the file under the query. */
    jl_status s = JL_OK;
    jl_db *qdb = jl__proj_read_begin(p, &s);
    /* The sequence reached in the stream the query named (by default the first source's). */
    sqlite3_stmt *st =
        s == JL_OK ? jl_db_stmt(qdb, "SELECT last_seq FROM jl_checkpoints WHERE stream = ?") : NULL;
    if (s == JL_OK && st == NULL)
        s = JL_ERR_SQLITE;
    if (st != NULL) {
        /* No row yet: nothing applied, sequence 0. A failed read is an error, never a 0 that
         * a client waiting for its write would take for "not there yet". */
        sqlite3_bind_text(st, 1, p->src[si].stream, -1, SQLITE_STATIC);
        int rc = sqlite3_step(st);
        if (rc == SQLITE_ROW)
            r->stream_seq = (uint64_t)sqlite3_column_int64(st, 0);
        else if (rc != SQLITE_DONE)
            s = jl_db_fail(qdb, rc, "cannot read the checkpoint");
        sqlite3_reset(st);
    }
    if (s == JL_OK)
        s = q->handle(qdb, req, r);
    jl__proj_read_end(p, qdb, s, "read model error", r);
    protobuf_c_message_free_unpacked(req, NULL);
    return false;
}

/* Send @p r, logging a failure; cleans up @p r and destroys @p msg. */
static void reply_query(natsConnection *nc, natsMsg *msg, jl_reply *r)
{
    jl_reply_send(nc, natsMsg_GetReply(msg), r, NULL);
    if (r->code != JL_CODE_OK) {
        char esc[600], subj[300]; /* the subject is the client's: escaped too */
        jl_log(r->code == JL_CODE_INTERNAL ? JL_LOG_ERROR : JL_LOG_DEBUG, "query failed",
               "\"subject\":\"%s\",\"code\":\"%s\",\"error\":\"%s\"",
               jl_log_str(subj, sizeof(subj), natsMsg_GetSubject(msg)), jl_code_str(r->code),
               jl_log_str(esc, sizeof(esc), r->message));
    }
    jl_reply_cleanup(r);
    natsMsg_Destroy(msg);
}

static void on_query(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    jl_projector *p = closure;
    const char *subject = natsMsg_GetSubject(msg);
    const char *dot = strrchr(subject, '.');
    jl_reply r;
    (void)sub;

    jl_reply_init(&r);
    atomic_store(&p->answering_ns[0], jl__mono_ns());
    jl__fault("query.answer");
    if (answer_query(p, dot ? dot + 1 : subject, natsMsg_GetData(msg),
                     (size_t)natsMsg_GetDataLength(msg), msg, &r)) {
        jl_reply_cleanup(&r); /* parked: the waiter answers */
    } else {
        reply_query(nc, msg, &r);
    }
    atomic_store(&p->answering_ns[0], 0);
}

/* The waiter: answers parked queries once their source reaches their min_sequence, at their
 * deadline, or at a close. */
static void *query_waiter(void *arg)
{
    jl_projector *p = arg;
    natsConnection *nc = jl_conn_nats(p->conn);
    pthread_mutex_lock(&p->mu);
    for (;;) {
        jl__parked *ready = NULL, **at = &p->parked;
        int64_t now = jl__mono_ns(), next = now + 1000 * 1000000LL;
        bool stopping = atomic_load(&p->stopping);
        while (*at != NULL) {
            jl__parked *w = *at;
            if (stopping || now >= w->deadline_ns || p->src[w->si].checkpoint >= w->min_seq) {
                *at = w->next;
                w->next = ready;
                ready = w;
                p->n_parked--;
                p->parked_bytes -= w->bytes;
            } else {
                next = w->deadline_ns < next ? w->deadline_ns : next;
                at = &w->next;
            }
        }
        if (ready == NULL && stopping)
            break;
        if (ready == NULL) {
            struct timespec until = {.tv_sec = (time_t)(next / 1000000000LL),
                                     .tv_nsec = (long)(next % 1000000000LL)};
            pthread_cond_timedwait(&p->advanced, &p->mu, &until);
            continue;
        }
        pthread_mutex_unlock(&p->mu);
        while (ready != NULL) {
            jl__parked *w = ready;
            ready = w->next;
            const char *subject = natsMsg_GetSubject(w->msg), *dot = strrchr(subject, '.');
            jl_reply r;
            jl_reply_init(&r);
            atomic_store(&p->answering_ns[1], jl__mono_ns());
            answer_query(p, dot ? dot + 1 : subject, natsMsg_GetData(w->msg),
                         (size_t)natsMsg_GetDataLength(w->msg), NULL, &r);
            reply_query(nc, w->msg, &r);
            atomic_store(&p->answering_ns[1], 0);
            free(w);
        }
        pthread_mutex_lock(&p->mu);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

/* ---- lifecycle ---- */

/* Whether every source's stream is at most serve_lag messages past its checkpoint (a missing
 * stream: none), the most it is behind in @p out_behind. A stream that cannot be read now is
 * taken as behind: a step tells. (Over a filter the count may include others' messages: the
 * projector then catches up first, and its steps count its own.) */
static bool sources_within_lag(jl_projector *p, uint64_t *out_behind)
{
    bool within = true;
    for (int i = 0; i < p->n_src; i++) {
        uint64_t behind = 0;
        if (!stream_behind(p, i, &behind)) {
            within = false;
            continue;
        }
        *out_behind = behind > *out_behind ? behind : *out_behind;
        if (behind > (uint64_t)p->serve_lag)
            within = false;
        else
            atomic_store(&p->src[i].current, true);
    }
    return within;
}

jl_status jl_projector_open(jl_projector **out_projector, jl_conn *conn,
                            const jl_projector_def *def, const jl_config *cfg, char *err,
                            size_t errlen)
{
    jl_status s = JL_OK;
    jl_projector *p = calloc(1, sizeof(*p));

    if (p == NULL)
        return JL_ERR_NOMEM;
    p->def = def;
    p->conn = conn;
    p->js = jl_conn_js(conn);
    p->lock_fd = -1;
    p->batch = cfg->batch;
    p->timeout_ms = cfg->request_timeout_ms;
    p->rebuild_max_bytes = cfg->rebuild_max_mb * 1024 * 1024;
    p->outbox_keep_ns = cfg->outbox_keep_s * 1000000000LL;
    p->serve_lag = cfg->serve_lag;
    atomic_init(&p->serve_claimed, false);
    atomic_init(&p->serving, false);
    atomic_init(&p->answering_ns[0], 0);
    atomic_init(&p->answering_ns[1], 0);
    snprintf(p->qsubject, sizeof(p->qsubject), "%s.query.*", def->name ? def->name : "");
    pthread_mutex_init(&p->mu, NULL);
    pthread_mutex_init(&p->apply_mu, NULL);
    pthread_rwlock_init(&p->switch_lock, NULL);
    pthread_mutex_init(&p->outbox_mu, NULL);
    pthread_mutex_init(&p->query_mu, NULL);
    atomic_init(&p->stopping, false);
    atomic_init(&p->paused, false);
    atomic_init(&p->lost_deliveries, 0);
    snprintf(p->data_dir, sizeof(p->data_dir), "%s", cfg->data_dir);
    const char *base = cfg->durable[0] ? cfg->durable : def->name;
    /* Waits by deadlines a clock step cannot move. */
    if (jl__cond_init_monotonic(&p->advanced) != 0) {
        pthread_cond_init(&p->advanced, NULL); /* for the close below */
        snprintf(err, errlen, "cannot create a condition variable");
        s = JL_ERR_NOMEM;
        goto done;
    }
    /* The name makes subjects ("<name>.query.*") and file names ("<name>.rebuild-<ms>.db"). */
    if (def->name == NULL || !jl_valid_name(def->name)) {
        snprintf(err, errlen,
                 "projector name '%s' must be 1 to %d letters, digits, '_' and '-' (it goes into "
                 "subjects and file names)",
                 def->name ? def->name : "", JL_NAME_MAX - 1);
        s = JL_ERR_INVALID;
        goto done;
    }
    if (!jl_valid_name(base)) {
        snprintf(err, errlen,
                 "durable name '%s' must be 1 to %d letters, digits, '_' and '-' (it goes into "
                 "subjects)",
                 base, JL_NAME_MAX - 1);
        s = JL_ERR_INVALID;
        goto done;
    }
    snprintf(p->instance, sizeof(p->instance), "%s", base);
    if (def->n_sources > JL_MAX_SOURCES || (def->n_sources == 0 && def->stream == NULL)) {
        snprintf(err, errlen, "projector %s needs 1 to %d source streams", def->name,
                 JL_MAX_SOURCES);
        s = JL_ERR_INVALID;
        goto done;
    }
    p->n_src = def->n_sources > 0 ? (int)def->n_sources : 1;
    for (int i = 0; i < p->n_src; i++) {
        jl__source *src = &p->src[i];
        src->stream = def->n_sources > 0 ? def->sources[i].stream : def->stream;
        src->filter = def->n_sources > 0 ? def->sources[i].filter_subject : def->filter_subject;
        if (src->stream == NULL || src->filter == NULL || src->filter[0] == 0) {
            snprintf(err, errlen, "projector %s: source %d needs a stream and a filter subject",
                     def->name, i + 1);
            s = JL_ERR_INVALID;
            goto done;
        }
        /* One durable per stream and instance: "<durable>" alone, "<durable>_<STREAM>" for
         * several sources. */
        int len = p->n_src == 1
                      ? snprintf(src->durable, sizeof(src->durable), "%s", base)
                      : snprintf(src->durable, sizeof(src->durable), "%s_%s", base, src->stream);
        if (len < 0 || (size_t)len >= sizeof(src->durable)) {
            /* Cut, two sources could share one consumer. */
            snprintf(err, errlen, "durable %s_%s is longer than %zu characters", base, src->stream,
                     sizeof(src->durable) - 1);
            s = JL_ERR_INVALID;
            goto done;
        }
    }
    jl__twins_init(p);
    s = mkdir_p(cfg->data_dir, err, errlen);
    if (s == JL_OK)
        s = lock_data_dir(p, err, errlen);
    if (s != JL_OK)
        goto done;
    s = read_pointer(p, err, errlen);
    if (s != JL_OK)
        goto done;
    remove_leftovers(p);
    s = jl_db_open(&p->db, p->db_path, false, err, errlen);
    if (s == JL_OK) {
        s = init_database(p);
        if (s != JL_OK)
            snprintf(err, errlen, "%s", p->err);
    }
    if (s == JL_OK)
        s = jl_db_open(&p->qdb, p->db_path, true, err, errlen);
    if (s != JL_OK)
        goto done;

    if (pthread_create(&p->waiter, NULL, query_waiter, p) != 0) {
        snprintf(err, errlen, "cannot start the query waiter thread");
        s = JL_ERR_INTERNAL;
        goto done;
    }
    p->has_waiter = true;
    /* Looks for another instance on the durable first (answering Hello before it asks, so
     * that of two opening together one finds the other). */
    s = jl__jobs_open(p, err, errlen);
    if (s != JL_OK)
        goto done;
    uint64_t behind = 0;
    /* A model rebuilt for a new version answers from the old file meanwhile, as it is. */
    if (p->serve_lag < 0 || atomic_load(&p->paused) || sources_within_lag(p, &behind)) {
        bool now = false;
        natsStatus ns = subscribe_queries(p, &now);
        if (ns != NATS_OK) {
            snprintf(err, errlen, "cannot subscribe to %s: %s", p->qsubject,
                     natsStatus_GetText(ns));
            s = JL_ERR_NATS;
            goto done;
        }
    }
    if (def->outbox)
        s = jl__outbox_start(p, err, errlen);
    if (s == JL_OK)
        s = jl__twins_opened(p, err, errlen);
    if (s != JL_OK)
        goto done;
    jl_log(JL_LOG_INFO, "projector ready",
           "\"db\":\"%s\",\"checkpoint\":%" PRIu64 ",\"durable\":\"%s\",\"queries\":\"%s\","
           "\"answering\":%s,\"version\":%d,\"db_version\":%d",
           p->db_path, p->src[0].checkpoint, p->src[0].durable, p->qsubject,
           atomic_load(&p->serving) ? "true" : "false", p->def->version, p->db_version);
    if (!atomic_load(&p->serving))
        jl_log(JL_LOG_INFO, "catching up before answering queries",
               "\"behind\":%" PRIu64 ",\"serve_lag\":%" PRId64
               ",\"hint\":\"other instances answer meanwhile; --serve-lag -1 answers at once\"",
               behind, p->serve_lag);
    if (atomic_load(&p->paused)) {
        p->last_version_try_ns = jl__mono_ns();
        jl__jobs_start_version_rebuild(p);
    }
done:
    if (s != JL_OK) {
        jl_projector_close(p, 0);
        return s;
    }
    *out_projector = p;
    return JL_OK;
}

bool jl_projector_close(jl_projector *p, int64_t timeout_ms)
{
    if (p == NULL)
        return true;
    atomic_store(&p->stopping, true);
    /* Queries waiting for a sequence answer now instead of at their timeout: the drain below
     * waits for them. (jl_projector_stop() cannot: it is async-signal-safe.) */
    pthread_mutex_lock(&p->mu);
    pthread_cond_broadcast(&p->advanced);
    pthread_mutex_unlock(&p->mu);
    /* An unfinished rebuild is abandoned: the live file stays. */
    bool handlers_done = jl__jobs_close(p);
    jl__outbox_stop(p);
    /* Drain: queries already received are answered. One the drain did not wait out may still
     * be answering: it reads the databases and the state freed below. */
    if (p->qsub != NULL) {
        handlers_done =
            jl_conn_sub_stop(p->conn, p->qsub, timeout_ms, JL_HANDLER_WAIT_MS) && handlers_done;
        jl_conn_sub_destroy(p->conn, p->qsub);
        p->qsub = NULL;
    }
    if (p->has_waiter) {
        /* Nothing parks now (stopping): it answers what is parked, then ends. */
        pthread_mutex_lock(&p->mu);
        pthread_cond_broadcast(&p->advanced);
        pthread_mutex_unlock(&p->mu);
        pthread_join(p->waiter, NULL);
        p->has_waiter = false;
    }
    if (!handlers_done) {
        jl_log(JL_LOG_ERROR, "projector not freed",
               "\"why\":\"a query or admin request is still being answered\",\"hint\":\"its "
               "memory is left allocated rather than freed under it\"");
        return false;
    }
    for (int i = 0; i < p->n_src; i++)
        detach(p, i);
    jl_db_close(p->qdb);
    jl_db_close(p->db);
    if (p->lock_fd >= 0)
        close(p->lock_fd); /* and the lock with it */
    pthread_cond_destroy(&p->advanced);
    pthread_mutex_destroy(&p->query_mu);
    pthread_mutex_destroy(&p->mu);
    pthread_mutex_destroy(&p->apply_mu);
    pthread_rwlock_destroy(&p->switch_lock);
    pthread_mutex_destroy(&p->outbox_mu);
    free(p);
    return true;
}
