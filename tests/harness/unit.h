/*
 * Helpers for Check suites that need no server: a scratch directory for SQLite files, and the
 * runner of main(). Header-only, so that a unit suite links nothing more than what it tests.
 */
#ifndef JETLEDGER_TEST_UNIT_H
#define JETLEDGER_TEST_UNIT_H

#include <check.h>
#include <stdio.h>
#include <stdlib.h>

#include "jetledger/db.h"

/* A fresh private directory "/tmp/<tag>.XXXXXX" into @p dir (n bytes). */
static inline void jl_ck_scratch_dir(char *dir, size_t n, const char *tag)
{
    snprintf(dir, n, "/tmp/%s.XXXXXX", tag);
    ck_assert_ptr_nonnull(mkdtemp(dir));
}

/* SQLite file @p file in @p dir, opened, with @p schema_sql run; without fsyncs (a scratch
 * file gains nothing from them, and they make a suite slow). Close with jl_db_close(). */
static inline jl_db *jl_ck_scratch_db(const char *dir, const char *file, const char *schema_sql)
{
    char path[600], err[256];
    jl_db *db = NULL;
    snprintf(path, sizeof(path), "%s/%s", dir, file);
    ck_assert_msg(jl_db_open(&db, path, false, err, sizeof(err)) == JL_OK, "%s", err);
    ck_assert_int_eq(jl_db_exec(db, schema_sql), JL_OK);
    ck_assert_int_eq(jl_db_exec(db, "PRAGMA synchronous = OFF"), JL_OK);
    return db;
}

static inline int jl_ck__count_step(void *ctx)
{
    (*(long *)ctx)++;
    return 0;
}

/* Count the SQLite virtual machine steps @p db runs into *@p steps (from 0) until
 * jl_ck_steps_end(): how much a query reads, as a number a test can bound (never a time). */
static inline void jl_ck_steps_begin(jl_db *db, long *steps)
{
    *steps = 0;
    sqlite3_progress_handler(jl_db_handle(db), 1, jl_ck__count_step, steps);
}

static inline void jl_ck_steps_end(jl_db *db)
{
    sqlite3_progress_handler(jl_db_handle(db), 0, NULL, NULL);
}

/* Remove @p dir and everything in it. */
static inline void jl_ck_scratch_remove(const char *dir)
{
    char cmd[600];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    ck_assert_int_eq(system(cmd), 0);
}

/* Run suite @p s (CK_NORMAL: its counts show in the log); the exit status of main(). */
static inline int jl_ck_run(Suite *s)
{
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

#endif /* JETLEDGER_TEST_UNIT_H */
