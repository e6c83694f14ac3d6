/*
 * Results: latency series and progress curves, the figures, the table on the terminal,
 * latest.json, the chart data files and the gnuplot charts, and the smoke checks.
 */
#include "bench.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define GNUPLOT_TIMEOUT_MS 60000

void bench_series_add(bench_series *s, int64_t v)
{
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 1024;
        if (cap > BENCH_MAX_SAMPLES)
            cap = BENCH_MAX_SAMPLES;
        if (cap == s->cap)
            return;
        int64_t *nv = realloc(s->v, cap * sizeof(*nv));
        if (nv == NULL)
            return;
        s->v = nv;
        s->cap = cap;
    }
    s->v[s->n++] = v;
}

void bench_series_free(bench_series *s)
{
    free(s->v);
    memset(s, 0, sizeof(*s));
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

double bench_series_pct_ms(bench_series *s, double p)
{
    if (s->n == 0)
        return 0;
    qsort(s->v, s->n, sizeof(*s->v), cmp_i64);
    size_t rank = (size_t)ceil(p * (double)s->n);
    size_t idx = rank > 0 ? rank - 1 : 0;
    if (idx >= s->n)
        idx = s->n - 1;
    return (double)s->v[idx] / 1e6;
}

double bench_series_pct_ms_since(bench_series *s, size_t from, double p)
{
    bench_series tail = {
        .v = s->v + (from < s->n ? from : s->n), .n = from < s->n ? s->n - from : 0, .cap = 0};
    return bench_series_pct_ms(&tail, p);
}

void bench_curve_add(bench_curve *c, double t, double y)
{
    if (c->n == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 256;
        if (cap > BENCH_MAX_POINTS)
            cap = BENCH_MAX_POINTS;
        if (cap == c->cap)
            return;
        double *nt = realloc(c->t, cap * sizeof(*nt));
        if (nt == NULL)
            return;
        c->t = nt;
        double *ny = realloc(c->y, cap * sizeof(*ny));
        if (ny == NULL)
            return;
        c->y = ny;
        c->cap = cap;
    }
    c->t[c->n] = t;
    c->y[c->n] = y;
    c->n++;
}

void bench_curve_free(bench_curve *c)
{
    free(c->t);
    free(c->y);
    memset(c, 0, sizeof(*c));
}

bench_figure *bench_figure_add(bench *b, const char *name, double value, const char *unit,
                               bool has_raw, double raw, const char *target)
{
    if (b->n_figs >= BENCH_MAX_FIGURES)
        return NULL;
    bench_figure *f = &b->figs[b->n_figs++];
    memset(f, 0, sizeof(*f));
    snprintf(f->name, sizeof(f->name), "%s", name);
    snprintf(f->unit, sizeof(f->unit), "%s", unit);
    snprintf(f->target, sizeof(f->target), "%s", target ? target : "");
    f->value = value;
    f->has_raw = has_raw;
    f->raw = raw;
    f->has_ratio = has_raw && raw != 0;
    f->ratio = f->has_ratio ? value / raw : 0;
    f->measured = true;
    return f;
}

/* 1 met, 0 missed, -1 no target. */
static int met(const bench_figure *f)
{
    double t;
    if (!f->measured || f->target[0] == 0 || !f->has_ratio || sscanf(f->target + 2, "%lf", &t) != 1)
        return -1;
    if (strncmp(f->target, ">=", 2) == 0)
        return f->ratio >= t;
    if (strncmp(f->target, "<=", 2) == 0)
        return f->ratio <= t;
    return -1;
}

static void fmt_num(char *out, size_t n, double v)
{
    if (!isfinite(v))
        snprintf(out, n, "%g", v);
    else if (fabs(v) >= 1000)
        snprintf(out, n, "%.0f", v);
    else if (fabs(v) >= 10)
        snprintf(out, n, "%.1f", v);
    else
        snprintf(out, n, "%.3f", v);
}

void bench_print_machine(const bench *b)
{
    const bench_machine *m = &b->machine;
    printf("machine: %ld cpus, %s, %ld MiB RAM, %s; nats-server %s, libnats %s, SQLite %s; "
           "load average %s at the start\n",
           m->nproc, m->cpu_model, m->ram_mb, m->kernel, m->nats_server, m->libnats, m->sqlite,
           m->loadavg[0] ? m->loadavg : "unknown");
    fflush(stdout);
}

void bench_print_table(const bench *b)
{
    char v[32], r[32], ratio[32];
    printf("\n%-32s %18s %18s %8s %10s\n", "figure", "pipeline", "raw limit", "target", "ratio");
    for (size_t i = 0; i < b->n_figs; i++) {
        const bench_figure *f = &b->figs[i];
        char vu[48], ru[48];
        fmt_num(v, sizeof(v), f->value);
        snprintf(vu, sizeof(vu), "%s %s", v, f->unit);
        if (f->has_raw && f->measured) {
            fmt_num(r, sizeof(r), f->raw);
            snprintf(ru, sizeof(ru), "%s %s", r, f->raw_unit[0] ? f->raw_unit : f->unit);
        } else {
            snprintf(ru, sizeof(ru), "-");
        }
        if (f->has_ratio && f->measured)
            snprintf(ratio, sizeof(ratio), "%.3f", f->ratio);
        else
            snprintf(ratio, sizeof(ratio), "-");
        int m = met(f);
        printf("%-32s %18s %18s %8s %10s%s\n", f->name, f->measured ? vu : "not measured", ru,
               f->target[0] ? f->target : "-", ratio,
               m == 1   ? "  met"
               : m == 0 ? "  missed"
                        : "");
    }
    fflush(stdout);
}

static void json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c < 0x20)
            fprintf(f, "\\u%04x", c);
        else
            fputc(c, f);
    }
    fputc('"', f);
}

static void json_num(FILE *f, double v)
{
    if (!isfinite(v))
        fputs("null", f);
    else
        fprintf(f, "%.6g", v);
}

jl_status bench_write_json(bench *b, const char *name, double run_seconds)
{
    char path[PATH_MAX + 64], tmp[PATH_MAX + 72];
    const bench_machine *m = &b->machine;
    snprintf(path, sizeof(path), "%s/%s", b->o.out_dir, name);
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (f == NULL)
        return bench_fail(b, JL_ERR_IO, "cannot write %s: %s", tmp, strerror(errno));
    fprintf(f, "{\n  \"machine\": {\"nproc\": %ld, \"cpu_model\": ", m->nproc);
    json_str(f, m->cpu_model);
    fprintf(f, ", \"ram_mb\": %ld, \"kernel\": ", m->ram_mb);
    json_str(f, m->kernel);
    fputs(", \"nats_server\": ", f);
    json_str(f, m->nats_server);
    fputs(", \"libnats\": ", f);
    json_str(f, m->libnats);
    fputs(", \"sqlite\": ", f);
    json_str(f, m->sqlite);
    fputs(", \"loadavg_at_start\": ", f);
    json_str(f, m->loadavg);
    fputs("},\n  \"figures\": [\n", f);
    for (size_t i = 0; i < b->n_figs; i++) {
        const bench_figure *g = &b->figs[i];
        int mt = met(g);
        fputs("    {\"name\": ", f);
        json_str(f, g->name);
        fputs(", \"value\": ", f);
        json_num(f, g->measured ? g->value : NAN);
        fputs(", \"unit\": ", f);
        json_str(f, g->unit);
        fputs(", \"raw\": ", f);
        json_num(f, g->has_raw && g->measured ? g->raw : NAN);
        fputs(", \"ratio\": ", f);
        json_num(f, g->has_ratio && g->measured ? g->ratio : NAN);
        fputs(", \"target\": ", f);
        if (g->target[0])
            json_str(f, g->target);
        else
            fputs("null", f);
        fprintf(f, ", \"met\": %s}%s\n",
                mt == 1   ? "true"
                : mt == 0 ? "false"
                          : "null",
                i + 1 < b->n_figs ? "," : "");
    }
    fprintf(f,
            "  ],\n  \"run\": {\"mode\": \"%s\", \"seconds\": %.1f, \"aggregates\": %d, "
            "\"window\": %d, \"throughput_commands\": %ld, \"latency_rate\": %d, "
            "\"latency_samples\": %d, \"ryw_rate\": %d, \"ryw_samples\": %d, "
            "\"long_events\": %d, \"long_samples\": %d, \"events\": %ld, "
            "\"projector_batch\": %d, \"notes\": ",
            b->o.quick ? "quick" : "full", run_seconds, b->o.aggregates, b->o.window,
            b->o.tput_commands, b->o.lat_rate, b->o.lat_samples, b->o.ryw_rate, b->o.ryw_samples,
            b->o.long_events, b->o.long_samples, b->o.events, b->o.batch);
    json_str(f, b->notes);
    fputs(", \"foreign_cpu\": ", f);
    json_str(f, b->foreign_cpu);
    fputs("}\n}\n", f);
    bool ok = !ferror(f);
    if (fclose(f) != 0 || !ok || rename(tmp, path) != 0)
        return bench_fail(b, JL_ERR_IO, "cannot write %s: %s", path, strerror(errno));
    return JL_OK;
}

/* A CDF: sorted latencies in ms against the fraction of samples at or below. */
static jl_status write_cdf(bench *b, const char *name, bench_series *s)
{
    char path[PATH_MAX + 64];
    snprintf(path, sizeof(path), "%s/%s", b->o.out_dir, name);
    FILE *f = fopen(path, "w");
    if (f == NULL)
        return bench_fail(b, JL_ERR_IO, "cannot write %s: %s", path, strerror(errno));
    if (s->n > 0)
        qsort(s->v, s->n, sizeof(*s->v), cmp_i64);
    fprintf(f, "# latency_ms fraction (%zu samples)\n", s->n);
    for (size_t i = 0; i < s->n; i++)
        fprintf(f, "%.4f %.6f\n", (double)s->v[i] / 1e6, (double)(i + 1) / (double)s->n);
    bool ok = !ferror(f);
    if (fclose(f) != 0 || !ok)
        return bench_fail(b, JL_ERR_IO, "cannot write %s", path);
    return JL_OK;
}

static jl_status write_curve(bench *b, const char *name, const bench_curve *c, const char *what)
{
    char path[PATH_MAX + 64];
    snprintf(path, sizeof(path), "%s/%s", b->o.out_dir, name);
    FILE *f = fopen(path, "w");
    if (f == NULL)
        return bench_fail(b, JL_ERR_IO, "cannot write %s: %s", path, strerror(errno));
    fprintf(f, "# seconds %s\n", what);
    for (size_t i = 0; i < c->n; i++)
        fprintf(f, "%.3f %.0f\n", c->t[i], c->y[i]);
    bool ok = !ferror(f);
    if (fclose(f) != 0 || !ok)
        return bench_fail(b, JL_ERR_IO, "cannot write %s", path);
    return JL_OK;
}

static bool find_program(const char *name, char *out, size_t n)
{
    const char *path = getenv("PATH");
    char dirs[4096];
    snprintf(dirs, sizeof(dirs), "%s:/usr/bin:/bin", path ? path : "");
    for (char *save = NULL, *d = strtok_r(dirs, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
        snprintf(out, n, "%s/%s", d, name);
        if (access(out, X_OK) == 0)
            return true;
    }
    return false;
}

static const char script[] =
    "set terminal pngcairo size 1100,650 noenhanced font 'sans,10'\n"
    "set grid\n"
    "set key bottom right\n"
    "set output '%1$s/latency.png'\n"
    "set title 'Latency distributions (%2$s run)'\n"
    "set logscale x\n"
    "set xlabel 'latency (ms, log scale)'\n"
    "set ylabel 'fraction of requests at or below'\n"
    "set yrange [0:1]\n"
    "plot '%1$s/lat_command.dat' using 1:2 with lines lw 2 title 'command sent -> accepted "
    "(orders producer)', \\\n"
    "     '%1$s/lat_command_raw.dat' using 1:2 with lines lw 2 title 'raw: sync JetStream "
    "publish', \\\n"
    "     '%1$s/lat_ryw.dat' using 1:2 with lines lw 2 title 'command sent -> visible to a "
    "query (order_summary)', \\\n"
    "     '%1$s/lat_ryw_raw.dat' using 1:2 with lines lw 2 title 'raw: publish -> received by "
    "a pull consumer'\n"
    "set output '%1$s/catchup.png'\n"
    "set title 'Catch-up from a %3$ld-event stream'\n"
    "unset logscale x\n"
    "set xlabel 'seconds'\n"
    "set ylabel 'events'\n"
    "set yrange [0:*]\n"
    "set key bottom right\n"
    "plot '%1$s/catchup_projector.dat' using 1:2 with linespoints lw 2 pt 7 ps 0.4 title "
    "'order_summary projector (checkpoint)', \\\n"
    "     '%1$s/catchup_raw_read.dat' using 1:2 with lines lw 2 title 'raw: ordered consumer, "
    "no apply', \\\n"
    "     '%1$s/catchup_raw_sqlite.dat' using 1:2 with lines lw 2 title 'raw: SQLite batched "
    "upserts, no NATS'\n";

jl_status bench_write_charts(bench *b)
{
    char gp[PATH_MAX + 64], exe[PATH_MAX], log[PATH_MAX + 64];
    jl_status s = write_cdf(b, "lat_command.dat", &b->lat_cmd);
    if (s == JL_OK)
        s = write_cdf(b, "lat_command_raw.dat", &b->lat_cmd_raw);
    if (s == JL_OK)
        s = write_cdf(b, "lat_ryw.dat", &b->lat_ryw);
    if (s == JL_OK)
        s = write_cdf(b, "lat_ryw_raw.dat", &b->lat_ryw_raw);
    if (s == JL_OK)
        s = write_cdf(b, "lat_long_aggregate.dat", &b->lat_long);
    if (s == JL_OK)
        s = write_cdf(b, "lat_fresh_aggregate.dat", &b->lat_fresh);
    if (s == JL_OK)
        s = write_curve(b, "catchup_projector.dat", &b->catchup, "checkpoint");
    if (s == JL_OK)
        s = write_curve(b, "catchup_raw_read.dat", &b->catchup_raw_read, "messages_read");
    if (s == JL_OK)
        s = write_curve(b, "catchup_raw_sqlite.dat", &b->catchup_raw_sql, "events_applied");
    if (s != JL_OK)
        return s;
    if (b->lat_cmd.n == 0 || b->lat_cmd_raw.n == 0 || b->lat_ryw.n == 0 || b->lat_ryw_raw.n == 0 ||
        b->catchup.n < 2 || b->catchup_raw_read.n < 2 || b->catchup_raw_sql.n < 2) {
        fprintf(stderr, "warning: the run is incomplete: no charts (data files in %s)\n",
                b->o.out_dir);
        return JL_OK;
    }
    if (!find_program("gnuplot", exe, sizeof(exe))) {
        fprintf(stderr,
                "warning: gnuplot not found (apt-get install gnuplot-nox): no charts, "
                "the data files are in %s\n",
                b->o.out_dir);
        return JL_OK;
    }
    if (strpbrk(b->o.out_dir, "'\n") != NULL) {
        fprintf(stderr, "warning: output path contains a quote: no charts\n");
        return JL_OK;
    }
    snprintf(gp, sizeof(gp), "%s/charts.gp", b->o.out_dir);
    snprintf(log, sizeof(log), "%s/charts.log", b->o.out_dir);
    FILE *f = fopen(gp, "w");
    if (f == NULL)
        return bench_fail(b, JL_ERR_IO, "cannot write %s: %s", gp, strerror(errno));
    fprintf(f, script, b->o.out_dir, b->o.quick ? "quick" : "full", b->o.events);
    bool ok = !ferror(f);
    if (fclose(f) != 0 || !ok)
        return bench_fail(b, JL_ERR_IO, "cannot write %s", gp);
    unlink(log);
    const char *argv[] = {exe, gp, NULL};
    pid_t pid;
    int st = 0;
    if (jl_proc_spawn(&pid, argv, NULL, log) != 0)
        return bench_fail(b, JL_ERR_IO, "cannot run %s: %s", exe, strerror(errno));
    if (jl_proc_stop(pid, 0, GNUPLOT_TIMEOUT_MS, &st) != 0 || st != 0) {
        char tail[600];
        bench_file_tail(log, tail, sizeof(tail));
        fprintf(stderr, "warning: gnuplot failed (status %d): %s\n", st, tail);
    }
    return JL_OK;
}

int bench_sanity(const bench *b)
{
    int problems = 0;
    for (size_t i = 0; i < b->n_figs; i++) {
        const bench_figure *f = &b->figs[i];
        bool bad = !f->measured || !isfinite(f->value) || f->value <= 0 ||
                   (f->has_raw && (!isfinite(f->raw) || f->raw <= 0)) ||
                   (f->has_ratio && (!isfinite(f->ratio) || f->ratio <= 0));
        if (bad) {
            fprintf(stderr,
                    "sanity: figure '%s' is not a positive finite measurement "
                    "(value %g, raw %g)\n",
                    f->name, f->value, f->raw);
            problems++;
        }
    }
    if (b->failed_commands > 0) {
        fprintf(stderr, "sanity: %llu commands or queries failed\n",
                (unsigned long long)b->failed_commands);
        problems++;
    }
    /* A percentile of fewer samples than asked for is of another measurement. */
    const struct {
        const char *name;
        const bench_series *s;
        long want;
    } series[] = {
        {"command latency", &b->lat_cmd, b->o.lat_samples},
        {"command latency (raw)", &b->lat_cmd_raw, b->o.lat_samples},
        {"read-your-writes", &b->lat_ryw, b->o.ryw_samples},
        {"read-your-writes (raw)", &b->lat_ryw_raw, b->o.ryw_samples},
        {"aggregate length (long)", &b->lat_long, b->o.long_samples},
        {"aggregate length (fresh)", &b->lat_fresh, b->o.long_samples},
    };
    for (size_t i = 0; i < sizeof(series) / sizeof(series[0]); i++) {
        if (series[i].s->n > 0 && (long)series[i].s->n != series[i].want) {
            fprintf(stderr, "sanity: %s has %zu samples, %ld were asked for\n", series[i].name,
                    series[i].s->n, series[i].want);
            problems++;
        }
    }
    /* A pipeline faster than the raw limit it is built on means the limit is not one. Not a
     * failure (noise on a short run can do it): a warning, in the output. */
    for (size_t i = 0; i < b->n_figs; i++) {
        const bench_figure *f = &b->figs[i];
        bool higher_better =
            strstr(f->name, "throughput") != NULL || strstr(f->name, "catch-up") != NULL;
        if (f->has_ratio && isfinite(f->ratio) && higher_better && f->ratio > 1.05)
            fprintf(stderr, "warning: %s is %.2f x its raw limit: the limit may be understated\n",
                    f->name, f->ratio);
        /* And a pipeline latency below the raw one it includes: the raw side measured slow. */
        bool a_latency = strstr(f->name, "command latency") != NULL ||
                         strstr(f->name, "read-your-writes") != NULL;
        if (f->has_ratio && isfinite(f->ratio) && a_latency && f->ratio < 0.95)
            fprintf(stderr, "warning: %s is %.2f x its raw limit: the limit may be overstated\n",
                    f->name, f->ratio);
    }
    return problems;
}
