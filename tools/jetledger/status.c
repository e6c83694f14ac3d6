/* `jetledger status`: every stream of the account with its replicas, and every consumer of each
 * stream with its lag, as a table or as one JSON object. It knows JetStream, not the services:
 * a new service's stream and projector consumers show up with no code here.
 *
 * Names first, then one info request per stream and per consumer (rather than the server's
 * list calls): during a leader election a list silently leaves out what has no leader, where
 * a request of its own says so, and that is exactly when someone runs `status`. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "jetledger/json.h"

/* A bound for one row of the table and the text of one error: both are shown whole. */
#define ST_ERR_LEN 200
#define ST_CELL_LEN 512
#define ST_MAX_COLS 10

typedef struct st_consumer {
    char *name;
    jsConsumerInfo *info; /* NULL when it could not be read: err says why */
    char err[ST_ERR_LEN];
} st_consumer;

typedef struct st_stream {
    char *name;
    jsStreamInfo *info; /* NULL when it could not be read: err says why */
    char err[ST_ERR_LEN];
    st_consumer *consumers;
    int n_consumers;
    char consumers_err[ST_ERR_LEN]; /* the consumer names could not be listed */
} st_stream;

typedef struct st_all {
    st_stream *streams;
    int n_streams;
    bool unavailable; /* some part did not answer (timeout, no leader) */
    bool failed;      /* some part failed otherwise */
} st_all;

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Say why a JetStream request failed, with the server's own words when it gave any; and
 * remember whether it was a "nobody answered" kind of failure. */
static void describe(st_all *all, char *out, size_t n, natsStatus ns, jsErrCode jerr)
{
    const char *detail = nats_GetLastError(NULL);
    /* The library prefixes its text with where it was set: "(jsm.c:2065): ". */
    if (detail != NULL && detail[0] == '(') {
        const char *end = strstr(detail, "): ");
        detail = end != NULL ? end + 3 : detail;
    }
    bool unavail = ns == NATS_TIMEOUT || ns == NATS_NO_RESPONDERS || ns == NATS_CONNECTION_CLOSED ||
                   ns == NATS_CONNECTION_DISCONNECTED || jerr == JSClusterNotAvailErr ||
                   jerr == JSStreamOfflineErr || jerr == JSConsumerOfflineErr;
    if (jl_js_off(ns, jerr))
        snprintf(out, n,
                 "nothing answers the JetStream API: JetStream is not enabled on the "
                 "server (nats-server -js), or not ready yet");
    else if (ns == NATS_TIMEOUT)
        snprintf(out, n, "no answer in time (no leader elected yet?)");
    else if (jerr != 0 && detail != NULL && detail[0] != 0)
        snprintf(out, n, "%s (JetStream error %d)", detail, (int)jerr);
    else
        snprintf(out, n, "%s", natsStatus_GetText(ns));
    if (unavail)
        all->unavailable = true;
    else
        all->failed = true;
}

/* Copy a names list into a sorted array of heap strings (the list is destroyed by the caller). */
static char **sorted_copy(char **names, int n)
{
    char **out = calloc(n > 0 ? (size_t)n : 1, sizeof(char *));
    for (int i = 0; out != NULL && i < n; i++) {
        out[i] = strdup(names[i]);
        if (out[i] == NULL) {
            for (int j = 0; j < i; j++)
                free(out[j]);
            free(out);
            out = NULL;
        }
    }
    if (out != NULL)
        qsort(out, (size_t)n, sizeof(char *), cmp_str);
    return out;
}

static void read_consumers(st_all *all, st_stream *st, jsCtx *js, jsOptions *o)
{
    jsConsumerNamesList *names = NULL;
    jsErrCode jerr = 0;
    natsStatus ns = js_ConsumerNames(&names, js, st->name, o, &jerr);
    if (ns == NATS_NOT_FOUND && jerr == 0)
        return; /* no consumers: the client library says so with NOT_FOUND */
    if (ns != NATS_OK) {
        describe(all, st->consumers_err, sizeof(st->consumers_err), ns, jerr);
        return;
    }
    char **sorted = sorted_copy(names->List, names->Count);
    st->consumers = sorted ? calloc((size_t)names->Count + 1, sizeof(st_consumer)) : NULL;
    if (st->consumers == NULL) {
        snprintf(st->consumers_err, sizeof(st->consumers_err), "out of memory");
        all->failed = true;
        if (sorted != NULL)
            for (int i = 0; i < names->Count; i++)
                free(sorted[i]);
    } else {
        for (int i = 0; i < names->Count; i++) {
            st_consumer *c = &st->consumers[st->n_consumers++];
            c->name = sorted[i];
            jerr = 0;
            ns = js_GetConsumerInfo(&c->info, js, st->name, c->name, o, &jerr);
            if (ns != NATS_OK && (jerr == JSConsumerNotFoundErr || jerr == JSStreamNotFoundErr)) {
                /* Gone since it was listed (a catch-up reader, a CLI's ordered consumer): not
                 * an error, and not a row. */
                free(sorted[i]);
                memset(c, 0, sizeof(*c));
                st->n_consumers--;
                continue;
            }
            if (ns != NATS_OK)
                describe(all, c->err, sizeof(c->err), ns, jerr);
        }
    }
    free(sorted);
    jsConsumerNamesList_Destroy(names);
}

/* Read every stream and its consumers. Only a failure to list the streams is returned (as a
 * CLI status, printed); the failure of one stream or consumer is kept on it. */
static int read_all(st_all *all, jsCtx *js, jsOptions *o)
{
    jsStreamNamesList *names = NULL;
    jsErrCode jerr = 0;
    char why[ST_ERR_LEN];
    natsStatus ns = js_StreamNames(&names, js, o, &jerr);
    if (ns == NATS_NOT_FOUND && jerr == 0)
        return CLI_OK; /* an account without streams */
    if (ns != NATS_OK) {
        describe(all, why, sizeof(why), ns, jerr);
        cli_error("cannot list the streams: %s", why);
        return all->unavailable ? CLI_UNAVAILABLE : CLI_FAILED;
    }
    int rc = CLI_OK;
    char **sorted = sorted_copy(names->List, names->Count);
    all->streams = sorted ? calloc((size_t)names->Count + 1, sizeof(st_stream)) : NULL;
    if (all->streams == NULL) {
        cli_error("out of memory");
        rc = CLI_FAILED;
        if (sorted != NULL)
            for (int i = 0; i < names->Count; i++)
                free(sorted[i]);
    } else {
        for (int i = 0; i < names->Count; i++) {
            st_stream *st = &all->streams[all->n_streams++];
            st->name = sorted[i];
            jerr = 0;
            ns = js_GetStreamInfo(&st->info, js, st->name, o, &jerr);
            if (ns != NATS_OK && jerr == JSStreamNotFoundErr) {
                free(sorted[i]); /* deleted since it was listed */
                memset(st, 0, sizeof(*st));
                all->n_streams--;
                continue;
            }
            if (ns != NATS_OK)
                describe(all, st->err, sizeof(st->err), ns, jerr);
            read_consumers(all, st, js, o);
        }
    }
    free(sorted);
    jsStreamNamesList_Destroy(names);
    return rc;
}

static void free_all(st_all *all)
{
    for (int i = 0; i < all->n_streams; i++) {
        st_stream *st = &all->streams[i];
        for (int j = 0; j < st->n_consumers; j++) {
            free(st->consumers[j].name);
            jsConsumerInfo_Destroy(st->consumers[j].info);
        }
        free(st->consumers);
        free(st->name);
        jsStreamInfo_Destroy(st->info);
    }
    free(all->streams);
}

/* KV buckets and object stores are streams with a reserved prefix; the rest are plain. */
static const char *stream_kind(const char *name)
{
    if (strncmp(name, "KV_", 3) == 0)
        return "kv";
    if (strncmp(name, "OBJ_", 4) == 0)
        return "object_store";
    return "stream";
}

/* ---- JSON ------------------------------------------------------------------------------- */

static void json_str(jl_buf *b, const char *key, const char *val)
{
    jl_buf_addf(b, ",\"%s\":", key);
    if (val == NULL)
        jl_buf_adds(b, "null");
    else
        jl_json_add_string(b, val, strlen(val));
}

static void json_cluster(jl_buf *b, const jsClusterInfo *ci)
{
    if (ci == NULL) {
        jl_buf_adds(b, ",\"cluster\":null");
        return;
    }
    jl_buf_adds(b, ",\"cluster\":{\"name\":");
    if (ci->Name != NULL)
        jl_json_add_string(b, ci->Name, strlen(ci->Name));
    else
        jl_buf_adds(b, "null");
    json_str(b, "leader", ci->Leader);
    jl_buf_adds(b, ",\"replicas\":[");
    for (int i = 0; i < ci->ReplicasLen; i++) {
        const jsPeerInfo *p = ci->Replicas[i];
        jl_buf_adds(b, i > 0 ? ",{\"name\":" : "{\"name\":");
        jl_json_add_string(b, p->Name ? p->Name : "", p->Name ? strlen(p->Name) : 0);
        jl_buf_addf(b,
                    ",\"current\":%s,\"offline\":%s,\"lag\":%" PRIu64 ",\"active_ms\":%" PRId64 "}",
                    p->Current ? "true" : "false", p->Offline ? "true" : "false", p->Lag,
                    p->Active / 1000000);
    }
    jl_buf_adds(b, "]}");
}

static void json_consumer(jl_buf *b, const st_consumer *c)
{
    jl_buf_adds(b, "{\"name\":");
    jl_json_add_string(b, c->name, strlen(c->name));
    const jsConsumerInfo *ci = c->info;
    if (ci == NULL) {
        json_str(b, "error", c->err);
        jl_buf_adds(b, "}");
        return;
    }
    const jsConsumerConfig *cc = ci->Config;
    json_str(b, "durable", cc && cc->Durable ? cc->Durable : NULL);
    json_str(b, "filter_subject", cc && cc->FilterSubject ? cc->FilterSubject : NULL);
    jl_buf_addf(b,
                ",\"delivered_stream_seq\":%" PRIu64 ",\"delivered_consumer_seq\":%" PRIu64
                ",\"ack_floor_stream_seq\":%" PRIu64 ",\"ack_pending\":%" PRId64
                ",\"num_pending\":%" PRIu64 ",\"redelivered\":%" PRId64 ",\"waiting\":%" PRId64,
                ci->Delivered.Stream, ci->Delivered.Consumer, ci->AckFloor.Stream,
                ci->NumAckPending, ci->NumPending, ci->NumRedelivered, ci->NumWaiting);
    json_cluster(b, ci->Cluster);
    jl_buf_adds(b, "}");
}

static void json_stream(jl_buf *b, const st_stream *st)
{
    const char *kind = stream_kind(st->name);
    jl_buf_adds(b, "{\"name\":");
    jl_json_add_string(b, st->name, strlen(st->name));
    json_str(b, "kind", kind);
    if (strcmp(kind, "stream") != 0)
        json_str(b, "bucket", strchr(st->name, '_') + 1);
    const jsStreamInfo *si = st->info;
    if (si == NULL) {
        json_str(b, "error", st->err);
    } else {
        const jsStreamConfig *sc = si->Config;
        jl_buf_adds(b, ",\"subjects\":[");
        for (int i = 0; sc != NULL && i < sc->SubjectsLen; i++) {
            if (i > 0)
                jl_buf_adds(b, ",");
            jl_json_add_string(b, sc->Subjects[i], strlen(sc->Subjects[i]));
        }
        jl_buf_addf(b,
                    "],\"storage\":\"%s\",\"replicas\":%" PRId64 ",\"messages\":%" PRIu64
                    ",\"bytes\":%" PRIu64 ",\"first_seq\":%" PRIu64 ",\"last_seq\":%" PRIu64,
                    sc && sc->Storage == js_MemoryStorage ? "memory" : "file",
                    sc ? sc->Replicas : 0, si->State.Msgs, si->State.Bytes, si->State.FirstSeq,
                    si->State.LastSeq);
        json_cluster(b, si->Cluster);
    }
    jl_buf_adds(b, ",\"consumers\":[");
    for (int i = 0; i < st->n_consumers; i++) {
        if (i > 0)
            jl_buf_adds(b, ",");
        json_consumer(b, &st->consumers[i]);
    }
    jl_buf_adds(b, "]");
    if (st->consumers_err[0] != 0)
        json_str(b, "consumers_error", st->consumers_err);
    jl_buf_adds(b, "}");
}

static int print_json(const st_all *all)
{
    jl_buf b;
    jl_buf_init(&b, CLI_JSON_MAX);
    jl_buf_adds(&b, "{\"streams\":[");
    for (int i = 0; i < all->n_streams; i++) {
        if (i > 0)
            jl_buf_adds(&b, ",");
        json_stream(&b, &all->streams[i]);
    }
    jl_buf_adds(&b, "]}");
    jl_status s = b.err; /* any append: a part left out would be JSON of something else */
    if (s == JL_OK)
        puts(jl_buf_str(&b));
    else
        cli_error("the status is too large to print as JSON (%s)", jl_status_str(s));
    jl_buf_cleanup(&b);
    return s == JL_OK ? CLI_OK : CLI_FAILED;
}

/* ---- table ------------------------------------------------------------------------------ */

/* A text table: every cell is formatted first, so the columns fit their widest cell. */
typedef struct table {
    int ncols;
    const char *const *head;
    const char *align; /* per column: 'l' or 'r' */
    char (*rows)[ST_MAX_COLS][ST_CELL_LEN];
    int nrows, cap;
} table;

/* Add a row: the cells as printf formats would be awkward, so as ready strings. */
static int table_add(table *t, const char *const *cells)
{
    if (t->nrows == t->cap) {
        int cap = t->cap ? t->cap * 2 : 16;
        void *p = realloc(t->rows, (size_t)cap * sizeof(*t->rows));
        if (p == NULL)
            return -1;
        t->rows = p;
        t->cap = cap;
    }
    for (int c = 0; c < t->ncols; c++)
        cli_safe(t->rows[t->nrows][c], ST_CELL_LEN, cells[c] ? cells[c] : ""); /* names, errors */
    t->nrows++;
    return 0;
}

static void table_print(const table *t)
{
    int w[ST_MAX_COLS];
    for (int c = 0; c < t->ncols; c++) {
        w[c] = (int)strlen(t->head[c]);
        for (int r = 0; r < t->nrows; r++) {
            int len = (int)strlen(t->rows[r][c]);
            w[c] = len > w[c] ? len : w[c];
        }
    }
    for (int r = -1; r < t->nrows; r++) {
        for (int c = 0; c < t->ncols; c++) {
            const char *v = r < 0 ? t->head[c] : t->rows[r][c];
            bool last = c == t->ncols - 1;
            if (t->align[c] == 'r')
                printf("%*s", w[c], v);
            else
                printf("%-*s", last ? 0 : w[c], v);
            fputs(last ? "\n" : "  ", stdout);
        }
    }
}

static void fmt_bytes(char *out, size_t n, uint64_t v)
{
    static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    double d = (double)v;
    int u = 0;
    while (d >= 1024 && u < 4) {
        d /= 1024;
        u++;
    }
    if (u == 0)
        snprintf(out, n, "%" PRIu64 " B", v);
    else
        snprintf(out, n, "%.1f %s", d, units[u]);
}

/* "n1 current, n3 lag 12 (seen 2.5s ago)", or "-" when the stream is not replicated. */
static void fmt_peers(char *out, size_t n, const jsClusterInfo *ci)
{
    size_t len = 0;
    out[0] = 0;
    for (int i = 0; ci != NULL && i < ci->ReplicasLen && len < n; i++) {
        const jsPeerInfo *p = ci->Replicas[i];
        const char *name = p->Name ? p->Name : "?";
        const char *sep = i > 0 ? ", " : "";
        int k;
        if (p->Offline)
            k = snprintf(out + len, n - len, "%s%s offline", sep, name);
        else if (p->Current)
            k = snprintf(out + len, n - len, "%s%s current", sep, name);
        else
            k = snprintf(out + len, n - len, "%s%s lag %" PRIu64 " (seen %.1fs ago)", sep, name,
                         p->Lag, (double)p->Active / 1e9);
        len += k > 0 ? (size_t)k : 0;
    }
    if (out[0] == 0)
        snprintf(out, n, "-");
}

static const char *leader_of(const jsClusterInfo *ci)
{
    return ci != NULL && ci->Leader != NULL && ci->Leader[0] != 0 ? ci->Leader : "none";
}

static int print_table(const st_all *all)
{
    static const char *const shead[] = {"STREAM", "KIND", "R",      "MESSAGES", "BYTES",
                                        "FIRST",  "LAST", "LEADER", "REPLICAS"};
    static const char *const chead[] = {"STREAM",      "CONSUMER",    "DELIVERED",
                                        "ACK FLOOR",   "ACK PENDING", "PENDING",
                                        "REDELIVERED", "WAITING",     "LEADER"};
    table ts = {.ncols = 9, .head = shead, .align = "llrrrrrll"};
    table tc = {.ncols = 9, .head = chead, .align = "llrrrrrrl"};
    int rc = CLI_OK;
    for (int i = 0; i < all->n_streams && rc == CLI_OK; i++) {
        const st_stream *st = &all->streams[i];
        const jsStreamInfo *si = st->info;
        char r[24] = "-", msgs[24] = "-", bytes[24] = "-", first[24] = "-", last[24] = "-";
        char peers[ST_CELL_LEN];
        const char *leader = "-";
        if (si != NULL) {
            snprintf(r, sizeof(r), "%" PRId64, si->Config ? si->Config->Replicas : 0);
            snprintf(msgs, sizeof(msgs), "%" PRIu64, si->State.Msgs);
            fmt_bytes(bytes, sizeof(bytes), si->State.Bytes);
            snprintf(first, sizeof(first), "%" PRIu64, si->State.FirstSeq);
            snprintf(last, sizeof(last), "%" PRIu64, si->State.LastSeq);
            leader = leader_of(si->Cluster);
            fmt_peers(peers, sizeof(peers), si->Cluster);
        } else {
            snprintf(peers, sizeof(peers), "error: %s", st->err);
        }
        const char *row[] = {st->name, stream_kind(st->name), r, msgs, bytes, first, last, leader,
                             peers};
        if (table_add(&ts, row) != 0)
            rc = CLI_FAILED;
        if (st->consumers_err[0] != 0) {
            char why[ST_CELL_LEN];
            snprintf(why, sizeof(why), "error: %s", st->consumers_err);
            const char *crow[] = {st->name, "?", "", "", "", "", "", "", why};
            if (table_add(&tc, crow) != 0)
                rc = CLI_FAILED;
        }
        for (int j = 0; j < st->n_consumers && rc == CLI_OK; j++) {
            const st_consumer *c = &st->consumers[j];
            const jsConsumerInfo *ci = c->info;
            char d[24] = "-", af[24] = "-", ap[24] = "-", np[24] = "-", rd[24] = "-", wt[24] = "-",
                 cl[ST_CELL_LEN];
            if (ci != NULL) {
                snprintf(d, sizeof(d), "%" PRIu64, ci->Delivered.Stream);
                snprintf(af, sizeof(af), "%" PRIu64, ci->AckFloor.Stream);
                snprintf(ap, sizeof(ap), "%" PRId64, ci->NumAckPending);
                snprintf(np, sizeof(np), "%" PRIu64, ci->NumPending);
                snprintf(rd, sizeof(rd), "%" PRId64, ci->NumRedelivered);
                snprintf(wt, sizeof(wt), "%" PRId64, ci->NumWaiting);
                /* A single server reports no cluster for a consumer: its stream's server. */
                snprintf(cl, sizeof(cl), "%s",
                         ci->Cluster != NULL && ci->Cluster->Leader != NULL ? leader_of(ci->Cluster)
                                                                            : leader);
            } else {
                snprintf(cl, sizeof(cl), "error: %s", c->err);
            }
            const char *crow[] = {st->name, c->name, d, af, ap, np, rd, wt, cl};
            if (table_add(&tc, crow) != 0)
                rc = CLI_FAILED;
        }
    }
    if (rc != CLI_OK) {
        cli_error("out of memory");
    } else if (all->n_streams == 0) {
        puts("no streams");
    } else {
        table_print(&ts);
        putchar('\n');
        if (tc.nrows > 0)
            table_print(&tc);
        else
            puts("no consumers");
    }
    free(ts.rows);
    free(tc.rows);
    return rc;
}

int cli_status(cli_ctx *ctx)
{
    if (ctx->argc != 0) {
        cli_error("usage: jetledger status [--json]");
        return CLI_USAGE;
    }
    st_all all;
    memset(&all, 0, sizeof(all));
    jsOptions o;
    jsOptions_Init(&o);
    o.Wait = ctx->opts.timeout_ms;

    int rc = CLI_OK;
    jl_conn *conn = cli_connect(ctx, &rc);
    if (rc == CLI_OK)
        rc = read_all(&all, jl_conn_js(conn), &o);
    if (rc == CLI_OK)
        rc = ctx->opts.json ? print_json(&all) : print_table(&all);
    fflush(stdout);
    /* What was read is printed; the status still says that part of it could not be. */
    if (rc == CLI_OK && all.unavailable)
        rc = CLI_UNAVAILABLE;
    else if (rc == CLI_OK && all.failed)
        rc = CLI_FAILED;
    free_all(&all);
    jl_conn_close(conn, 0);
    return rc;
}

int cli_ping(cli_ctx *ctx)
{
    if (ctx->argc != 0) {
        cli_error("usage: jetledger ping");
        return CLI_USAGE;
    }
    int rc = CLI_OK;
    jl_conn *conn = cli_connect(ctx, &rc);
    if (rc == CLI_OK) {
        jsOptions o;
        jsOptions_Init(&o);
        o.Wait = ctx->opts.timeout_ms;
        jsAccountInfo *ai = NULL;
        jsErrCode jerr = 0;
        natsStatus ns = js_GetAccountInfo(&ai, jl_conn_js(conn), &o, &jerr);
        if (ns == NATS_OK) {
            printf("{\"jetstream\":true,\"streams\":%" PRId64 ",\"consumers\":%" PRId64
                   ",\"store_bytes\":%" PRIu64 "}\n",
                   ai->Streams, ai->Consumers, ai->Store); /* written out by main */
        } else {
            st_all all;
            char why[ST_ERR_LEN];
            memset(&all, 0, sizeof(all));
            describe(&all, why, sizeof(why), ns, jerr);
            cli_error("JetStream does not answer: %s", why);
            rc = all.unavailable || jl_js_off(ns, jerr) ? CLI_UNAVAILABLE : CLI_FAILED;
        }
        jsAccountInfo_Destroy(ai);
    }
    jl_conn_close(conn, 0);
    return rc;
}
