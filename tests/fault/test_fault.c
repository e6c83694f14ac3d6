/*
 * Fault tests on a 3-node JetStream cluster (real nats-server processes on loopback, streams
 * with 3 replicas, services as processes): under a steady load of commands, a stream leader is
 * killed, a projector is killed mid-batch, every server and service is restarted in turn, and a
 * node is cut off from the others; every command that got an accepted reply must be in the stream
 * and in the read model exactly once. Each test prints what it injected and what it verified.
 *
 * The load sends CreateOrder commands, each with a client-chosen order id and the same value as
 * its command id; a command that gets an error or no reply is retried with the same id until it
 * is accepted (that is what the command id is for), bounded in time.
 */
#include <check.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "jetledger/admin.pb-c.h"
#include "jetledger/projector.h"
#include "jetledger/store.h"
#include "orders/orders.pb-c.h"
#include "projection.h"
#include "support.h"

#define NODES 3
#define MAX_CMDS 20000
#define MAX_SVCS 4

/* ---- the cluster ---- */

typedef struct cluster {
    jl_natsd *node[NODES];
    int client_port[NODES];
    int route_port[NODES];
    char urls[512];
    char dir[256];
} cluster;

static cluster cl;
static jl_conn *conn;
static jl_config cfg;

/* Start the three nodes; false when the cluster could not place an R3 stream in time. */
static bool cluster_try_start(void)
{
    char err[2048], routes[NODES][64], name[16];
    memset(&cl, 0, sizeof(cl));
    ck_assert_int_eq(jl_tmpdir(cl.dir, sizeof(cl.dir)), 0);
    for (int i = 0; i < NODES; i++) {
        ck_assert_int_eq(jl_free_port(&cl.route_port[i]), 0);
        snprintf(routes[i], sizeof(routes[i]), "nats-route://127.0.0.1:%d", cl.route_port[i]);
    }
    for (int i = 0; i < NODES; i++) {
        /* Full mesh: every node lists every route (itself included, which is harmless). */
        const char *r[NODES];
        int nr = 0;
        for (int k = 0; k < NODES; k++)
            r[nr++] = routes[k];
        jl_natsd_opts o;
        jl_natsd_opts_init(&o);
        snprintf(name, sizeof(name), "n%d", i + 1);
        o.server_name = name;
        o.cluster_name = "jetledger";
        o.cluster_port = cl.route_port[i];
        o.routes = r;
        o.n_routes = nr;
        o.err_buf = err;
        o.err_buf_len = sizeof(err);
        ck_assert_msg(jl_natsd_start(&cl.node[i], &o) == 0, "node %d: %s", i + 1, err);
        cl.client_port[i] = jl_natsd_port(cl.node[i]);
    }
    for (int i = 0; i < NODES; i++)
        ck_assert_msg(jl_natsd_wait_jetstream(cl.node[i], 30000) == 0, "node %d: %s", i + 1,
                      jl_natsd_errmsg(cl.node[i]));
    size_t o = 0;
    for (int i = 0; i < NODES; i++)
        o += (size_t)snprintf(cl.urls + o, sizeof(cl.urls) - o, "%snats://127.0.0.1:%d",
                              i ? "," : "", cl.client_port[i]);
    jl_config_init(&cfg);
    snprintf(cfg.nats_url, sizeof(cfg.nats_url), "%s", cl.urls);
    snprintf(cfg.data_dir, sizeof(cfg.data_dir), "%s/ref", cl.dir);
    cfg.replicas = NODES;
    char cerr[1024];
    ck_assert_msg(jl_conn_open(&conn, &cfg, "fault-test", 10000, cerr, sizeof(cerr)) == JL_OK, "%s",
                  cerr);
    /* A meta leader answers before every peer has checked in: until then an R3 stream gets "no
     * suitable peers for placement". Start the services on a cluster that can place one. */
    int64_t deadline = tnow_ms() + 30000;
    for (;;) {
        jsStreamConfig sc;
        const char *subj[] = {"jl.ready.probe"};
        jsErrCode jerr = 0;
        jsStreamConfig_Init(&sc);
        sc.Name = "JL_READY_PROBE";
        sc.Subjects = subj;
        sc.SubjectsLen = 1;
        sc.Replicas = NODES;
        sc.Storage = js_MemoryStorage;
        natsStatus ns = js_AddStream(NULL, jl_conn_js(conn), &sc, NULL, &jerr);
        if (ns == NATS_OK) {
            js_DeleteStream(jl_conn_js(conn), "JL_READY_PROBE", NULL, NULL);
            break;
        }
        if (tnow_ms() >= deadline) {
            printf("cluster cannot place an R%d stream after 30 s (%s, %d): starting another\n",
                   NODES, natsStatus_GetText(ns), (int)jerr);
            return false;
        }
        nats_Sleep(500);
    }
    printf("cluster up: %s (%" PRId64 " ms until an R3 stream could be placed)\n", cl.urls,
           tnow_ms() - deadline + 30000);
    return true;
}

static void cluster_stop(void)
{
    jl_conn_close(conn, 0);
    conn = NULL;
    for (int i = 0; i < NODES; i++)
        jl_natsd_destroy(cl.node[i]);
    if (getenv("JL_TEST_KEEP") == NULL)
        jl_rm_rf(cl.dir);
}

/* On a loaded machine a fresh cluster sometimes never becomes able to place an R3 stream
 * ("no suitable peers for placement"); the services would wait for it forever, so try again. */
static void cluster_start(void)
{
    for (int attempt = 1;; attempt++) {
        if (cluster_try_start())
            return;
        ck_assert_msg(attempt < 3, "no working 3-node cluster after %d attempts", attempt);
        cluster_stop();
    }
}

/* Index of the node leading @p stream (by server name n1..n3) as seen on connection @p c, or
 * -1. */
static int stream_leader_on(jl_conn *c, const char *stream)
{
    jsStreamInfo *si = NULL;
    int leader = -1;
    if (js_GetStreamInfo(&si, jl_conn_js(c), stream, NULL, NULL) == NATS_OK) {
        if (si->Cluster != NULL && si->Cluster->Leader != NULL && si->Cluster->Leader[0] == 'n')
            leader = atoi(si->Cluster->Leader + 1) - 1;
        jsStreamInfo_Destroy(si);
    }
    return leader;
}

static int stream_leader(const char *stream)
{
    return stream_leader_on(conn, stream);
}

/* Wait until every replica of @p stream is current again (after a node came back). Rarely (about
 * one run in ten here) nats-server leaves a restarted follower behind for good; an operator
 * restarts that node, and so does this wait, once, half-way through its time (and says so). */
static void wait_replicas_current(const char *stream, int timeout_ms)
{
    int64_t start = tnow_ms(), deadline = start + timeout_ms;
    bool restarted = false;
    for (;;) {
        jsStreamInfo *si = NULL;
        bool ok = false;
        int behind = -1;
        if (js_GetStreamInfo(&si, jl_conn_js(conn), stream, NULL, NULL) == NATS_OK) {
            ok = si->Cluster != NULL && si->Cluster->Leader != NULL &&
                 si->Cluster->ReplicasLen == NODES - 1;
            for (int i = 0; ok && i < si->Cluster->ReplicasLen; i++) {
                ok = si->Cluster->Replicas[i]->Current;
                const char *name = si->Cluster->Replicas[i]->Name;
                if (!ok && name != NULL && name[0] == 'n')
                    behind = atoi(name + 1) - 1;
            }
            jsStreamInfo_Destroy(si);
        }
        if (ok)
            return;
        if (!restarted && behind >= 0 && behind < NODES && tnow_ms() - start > timeout_ms / 2) {
            printf("injecting: restart of n%d, whose replica of %s stayed behind for %d s\n",
                   behind + 1, stream, timeout_ms / 2000);
            fflush(stdout);
            ck_assert_int_eq(jl_natsd_stop(cl.node[behind]), 0);
            ck_assert_int_eq(jl_natsd_restart(cl.node[behind]), 0);
            ck_assert_int_eq(jl_natsd_wait_jetstream(cl.node[behind], 30000), 0);
            restarted = true;
        }
        ck_assert_msg(tnow_ms() < deadline, "replicas of %s not current in %d ms", stream,
                      timeout_ms);
        nats_Sleep(200);
    }
}

/* ---- services ---- */

typedef struct svc {
    pid_t pid;
    char bin[64];
    char log[PATH_MAX];
    char data[512];
    int batch;
    const char *fault;  /* NULL, or JL_FAULT_POINT for its next start (see shared/src/fault.c) */
    int fault_after;    /* JL_FAULT_AFTER with it */
    const char *url;    /* NULL: the whole cluster, else NATS_URL */
    const char *env[3]; /* NULL, or more NAME=value, taking precedence over the defaults */
} svc;

static svc svcs[MAX_SVCS];

static void svc_spawn(svc *s)
{
    char path[PATH_MAX], e_url[700], e_dir[600], e_batch[32], e_fault[96], e_after[48];
    const char *bindir = getenv("JL_BIN_DIR");
    ck_assert_msg(bindir != NULL, "JL_BIN_DIR is not set (run through ctest)");
    snprintf(path, sizeof(path), "%s/%s", bindir, s->bin);
    snprintf(e_url, sizeof(e_url), "NATS_URL=%s", s->url ? s->url : cl.urls);
    snprintf(e_dir, sizeof(e_dir), "JL_DATA_DIR=%s", s->data);
    snprintf(e_batch, sizeof(e_batch), "JL_BATCH=%d", s->batch ? s->batch : 256);
    snprintf(e_fault, sizeof(e_fault), "JL_FAULT_POINT=%s", s->fault ? s->fault : "");
    snprintf(e_after, sizeof(e_after), "JL_FAULT_AFTER=%d",
             s->fault_after > 0 ? s->fault_after : 1);
    /* The extras first: getenv() takes the first of a name. */
    const char *const envv[] = {s->env[0] ? s->env[0] : "JL_TEST_EXTRA_0=",
                                s->env[1] ? s->env[1] : "JL_TEST_EXTRA_1=",
                                s->env[2] ? s->env[2] : "JL_TEST_EXTRA_2=",
                                e_url,
                                e_dir,
                                e_batch,
                                "JL_REPLICAS=3",
                                "JL_LOG_LEVEL=info",
                                "JL_DURABLE=",
                                "JL_NAME=",
                                "JL_REQUEST_TIMEOUT=10000",
                                e_fault,
                                e_after,
                                NULL};
    const char *const argv[] = {path, NULL};
    ck_assert_msg(jl_proc_spawn(&s->pid, argv, envv, s->log) == 0, "spawn %s: %s", path,
                  strerror(errno));
}

static svc *svc_start(int slot, const char *bin, const char *name, int batch)
{
    svc *s = &svcs[slot];
    memset(s, 0, sizeof(*s));
    snprintf(s->bin, sizeof(s->bin), "%s", bin);
    snprintf(s->log, sizeof(s->log), "%s/%s.log", cl.dir, name);
    snprintf(s->data, sizeof(s->data), "%s/%s", cl.dir, name);
    s->batch = batch;
    svc_spawn(s);
    return s;
}

static int svc_stop(svc *s, int sig)
{
    int status = -1;
    if (s->pid != 0)
        jl_proc_stop(s->pid, sig, 15000, &status);
    s->pid = 0;
    return status;
}

static void stop_all_services(void)
{
    for (int i = 0; i < MAX_SVCS; i++)
        svc_stop(&svcs[i], SIGKILL);
}

/* ---- the load ---- */

typedef struct load {
    pthread_t thread;
    atomic_bool stop;
    jl_conn *conn;
    int n;      /* commands accepted: ids[0..n), adds[0..n) */
    int orders; /* of them, CreateOrder */
    /* The order of each: CreateOrder (command id: the order id) and AddItem of one item
     * ("add-<order id>") alternate. An AddItem applied twice changes the order's row, where a
     * second OrderCreated would be refused as a duplicate key and set aside, unseen by a dump;
     * and its command id is all that keeps a retry from appending it twice. */
    char ids[MAX_CMDS][JL_UUID_LEN + 1];
    bool adds[MAX_CMDS];
    uint64_t sent, errors, retried;
    int64_t last_ok_ms, longest_gap_ms;
    int gave_up;
    /* why commands failed: the first distinct reasons, with counts */
    char why[4][160];
    uint64_t why_n[4];
} load;

/* Count a failure under its reason (the first four distinct ones are kept). */
static void note_failure(load *l, const char *reason)
{
    for (int i = 0; i < 4; i++) {
        if (l->why[i][0] == 0)
            snprintf(l->why[i], sizeof(l->why[i]), "%s", reason);
        if (strcmp(l->why[i], reason) == 0) {
            l->why_n[i]++;
            return;
        }
    }
}

static load *ld;

/* The command id of the load's command on order @p id: @p add an AddItem, else CreateOrder. */
static void load_cmd_id(char out[64], const char *id, bool add)
{
    snprintf(out, 64, "%s%s", add ? "add-" : "", id);
}

/* Send CreateOrder, or (@p add) AddItem, of order @p id until accepted (same command id), or
 * give up after 60 s. */
static bool send_until_accepted(load *l, const char *id, bool add)
{
    Orders__CreateOrder m = ORDERS__CREATE_ORDER__INIT;
    Orders__AddItem item = ORDERS__ADD_ITEM__INIT;
    uint8_t buf[256];
    char cmd_id[64];
    m.order_id = (char *)id;
    m.customer_id = "fault";
    item.order_id = (char *)id;
    item.sku = "bolt";
    item.quantity = 3;
    item.unit_price_cents = 25;
    size_t n = add ? orders__add_item__pack(&item, buf) : orders__create_order__pack(&m, buf);
    load_cmd_id(cmd_id, id, add);
    int64_t deadline = tnow_ms() + 60000;
    for (int attempt = 0; tnow_ms() < deadline; attempt++) {
        natsMsg *req = NULL, *rep = NULL;
        natsMsg_Create(&req, add ? "orders.cmd.AddItem" : "orders.cmd.CreateOrder", NULL,
                       (const char *)buf, (int)n);
        natsMsgHeader_Set(req, "Jl-Command-Id", cmd_id);
        l->sent++;
        if (attempt > 0)
            l->retried++;
        natsStatus ns = natsConnection_RequestMsg(&rep, jl_conn_nats(l->conn), req, 5000);
        bool ok = false;
        char reason[160];
        snprintf(reason, sizeof(reason), "%s", natsStatus_GetText(ns));
        if (ns == NATS_OK) {
            jl_reply r;
            jl_reply_init(&r);
            ok = jl_reply_decode(&r, natsMsg_GetData(rep), (size_t)natsMsg_GetDataLength(rep)) ==
                     JL_OK &&
                 r.code == JL_CODE_OK;
            /* the message less its variable tail (ids, numbers) */
            snprintf(reason, sizeof(reason), "%s: %.60s", jl_code_str(r.code), r.message);
            jl_reply_cleanup(&r);
        }
        if (!ok)
            note_failure(l, reason);
        natsMsg_Destroy(req);
        natsMsg_Destroy(rep);
        if (ok)
            return true;
        l->errors++;
        nats_Sleep(100);
    }
    return false;
}

static void *load_thread(void *arg)
{
    load *l = arg;
    l->last_ok_ms = tnow_ms();
    char id[JL_UUID_LEN + 1] = "";
    bool add = false; /* the next command: AddItem on order id, else CreateOrder of a new one */
    while (!atomic_load(&l->stop) && l->n < MAX_CMDS) {
        if (!add)
            jl_uuid_new(id);
        bool accepted = send_until_accepted(l, id, add);
        if (accepted) {
            int64_t t = tnow_ms();
            if (t - l->last_ok_ms > l->longest_gap_ms)
                l->longest_gap_ms = t - l->last_ok_ms;
            l->last_ok_ms = t;
            memcpy(l->ids[l->n], id, sizeof(id));
            l->adds[l->n++] = add;
            l->orders += !add;
        } else {
            l->gave_up++;
        }
        add = !add && accepted; /* no AddItem on an order whose creation was given up */
        nats_Sleep(5);
    }
    return NULL;
}

static void load_start(void)
{
    ld = calloc(1, sizeof(*ld));
    atomic_init(&ld->stop, false);
    char err[1024];
    ck_assert_int_eq(jl_conn_open(&ld->conn, &cfg, "fault-load", 10000, err, sizeof(err)), JL_OK);
    pthread_create(&ld->thread, NULL, load_thread, ld);
}

static void load_stop(void)
{
    atomic_store(&ld->stop, true);
    pthread_join(ld->thread, NULL);
    jl_conn_close(ld->conn, 0);
}

static void wait_accepted(int more)
{
    int target = ld->n + more;
    int64_t deadline = tnow_ms() + 60000;
    while (ld->n < target) {
        ck_assert_msg(tnow_ms() < deadline, "the load made no progress (%d accepted)", ld->n);
        nats_Sleep(50);
    }
}

/* ---- verification ---- */

static int cmp_id(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Every accepted command is in the stream exactly once (one commit with its command id). */
static void verify_stream_once(void)
{
    natsSubscription *sub = NULL;
    jsSubOptions so;
    jsSubOptions_Init(&so);
    so.Stream = "ORDERS";
    so.Ordered = true;
    ck_assert_int_eq(js_SubscribeSync(&sub, jl_conn_js(conn), "orders.events.>", NULL, &so, NULL),
                     NATS_OK);
    uint64_t last = tstream_last_seq(conn, "ORDERS");
    size_t cap = (size_t)last + 1, n = 0;
    char **seen = calloc(cap, sizeof(*seen));
    uint64_t seq = 0;
    while (seq < last) {
        natsMsg *m = NULL;
        ck_assert_int_eq(natsSubscription_NextMsg(&m, sub, 10000), NATS_OK);
        jl_commit *c = NULL;
        char why[256];
        jsMsgMetaData *meta = NULL;
        ck_assert_int_eq(natsMsg_GetMetaData(&meta, m), NATS_OK);
        seq = meta->Sequence.Stream;
        jsMsgMetaData_Destroy(meta);
        ck_assert_int_eq(jl_commit_decode(&c, natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m),
                                          seq, why, sizeof(why)),
                         JL_OK);
        const char *cmd_id = jl_commit_command_id(c);
        ck_assert_msg(cmd_id != NULL && cmd_id[0] != 0, /* every command of the load has one */
                      "commit at %" PRIu64 " has no command id", seq);
        seen[n++] = strdup(cmd_id);
        jl_commit_free(c);
        natsMsg_Destroy(m);
    }
    jl_conn_sub_destroy(conn, sub);
    qsort(seen, n, sizeof(*seen), cmp_id);
    int dups = 0;
    for (size_t i = 1; i < n; i++)
        dups += strcmp(seen[i - 1], seen[i]) == 0;
    int missing = 0;
    for (int i = 0; i < ld->n; i++) {
        char cmd_id[64];
        load_cmd_id(cmd_id, ld->ids[i], ld->adds[i]);
        const char *key = cmd_id;
        if (bsearch(&key, seen, n, sizeof(*seen), cmp_id) == NULL)
            missing++;
    }
    printf("verified stream: %zu commits, %d accepted commands, duplicates %d, missing %d\n", n,
           ld->n, dups, missing);
    ck_assert_int_eq(dups, 0);
    ck_assert_int_eq(missing, 0);
    /* Each test asserts first that the load gave up on no command: then every command it sent
     * was accepted in the end, so the stream holds exactly the accepted ones (a retry of one that
     * got an error and was stored meanwhile is the same id, and no duplicate, as checked). */
    ck_assert_int_eq(ld->gave_up, 0);
    ck_assert_int_eq((int)n, ld->n);
    for (size_t i = 0; i < n; i++)
        free(seen[i]);
    free(seen);
}

static void db_path_of(const svc *s, char *out, size_t n)
{
    char ptr[700], name[256] = "order_summary.db";
    snprintf(ptr, sizeof(ptr), "%s/order_summary.current", s->data);
    FILE *f = fopen(ptr, "r");
    if (f != NULL) {
        if (fgets(name, sizeof(name), f) == NULL)
            snprintf(name, sizeof(name), "order_summary.db");
        name[strcspn(name, "\n")] = 0;
        fclose(f);
    }
    snprintf(out, n, "%s/%s", s->data, name);
}

static uint64_t db_checkpoint(const char *path)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    uint64_t v = 0;
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK &&
        sqlite3_prepare_v2(db, "SELECT last_seq FROM jl_state", -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW)
        v = (uint64_t)sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

/* The first line where two dumps differ, from each (bounded: check's messages are short). */
static void print_first_difference(const char *a, const char *b)
{
    size_t i = 0;
    while (a[i] != 0 && a[i] == b[i])
        i++;
    while (i > 0 && a[i - 1] != '\n')
        i--;
    printf("first difference: live '%.160s'\n                  rebuilt '%.160s'\n", a + i, b + i);
}

/* Lines of a service's log containing @p what or (when not NULL) @p or_what; the first
 * @p print_max of them are printed. */
static int scan_log(const char *log_path, const char *what, const char *or_what, int print_max)
{
    FILE *f = fopen(log_path, "r");
    char line[1024];
    int n = 0;
    if (f == NULL)
        return 0;
    while (fgets(line, sizeof(line), f) != NULL) {
        if (strstr(line, what) == NULL && (or_what == NULL || strstr(line, or_what) == NULL))
            continue;
        if (n++ < print_max)
            printf("  %s: %s", log_path, line);
    }
    fclose(f);
    return n;
}

/* The projector process has applied the whole stream, and its model equals one built from the
 * stream from scratch (a digest of every row): nothing lost, nothing applied twice. */
static void verify_read_model(const svc *proj)
{
    uint64_t last = tstream_last_seq(conn, "ORDERS");
    char path[1024];
    int64_t deadline = tnow_ms() + 60000;
    for (;;) {
        db_path_of(proj, path, sizeof(path));
        if (db_checkpoint(path) >= last)
            break;
        ck_assert_msg(tnow_ms() < deadline, "projector at %" PRIu64 " of %" PRIu64,
                      db_checkpoint(path), last);
        nats_Sleep(100);
    }
    jl_projector *ref = NULL;
    jl_config rc = cfg;
    char err[1024];
    snprintf(rc.durable, sizeof(rc.durable), "fault_reference");
    ck_assert_int_eq(jl_projector_open(&ref, conn, &order_summary_projector, &rc, err, sizeof(err)),
                     JL_OK);
    deadline = tnow_ms() + 60000;
    while (jl_projector_checkpoint(ref) < last) {
        ck_assert_int_eq(jl_projector_step(ref, 200, NULL), JL_OK);
        ck_assert(tnow_ms() < deadline);
    }
    jl_projector_close(ref, 0);
    char ref_path[1100];
    snprintf(ref_path, sizeof(ref_path), "%s/order_summary.db", rc.data_dir);
    char *a = tdump(path), *b = tdump(ref_path);
    int rows = 0, items = 0;
    for (const char *q = a; (q = strstr(q, "orders|")) != NULL; q++)
        rows++;
    for (const char *q = a; (q = strstr(q, "order_items|")) != NULL; q++)
        items++;
    bool equal = strcmp(a, b) == 0;
    printf("projector deliveries lost in transit and read again: %d\n",
           scan_log(proj->log, "delivery lost", NULL, 0));
    /* Nothing set aside either: an event applied twice that the model refuses (a second
     * creation) would be, and would leave the rows as they were. */
    int dead = tdb_int(path, "SELECT count(*) FROM jl_dead_letters"),
        ref_dead = tdb_int(ref_path, "SELECT count(*) FROM jl_dead_letters");
    printf("verified read model: %d orders, %d items, dead letters %d (rebuilt: %d), equal to a "
           "model rebuilt from the stream: %s\n",
           rows, items, dead, ref_dead, equal ? "yes" : "NO");
    if (!equal) {
        print_first_difference(a, b);
        scan_log(proj->log, "\"level\":\"warn\"", "\"level\":\"error\"", 40);
    }
    fflush(stdout);
    ck_assert_msg(equal, "the read model differs from one rebuilt from the stream (see above)");
    ck_assert_int_eq(rows, ld->orders);
    ck_assert_int_eq(items, ld->n - ld->orders);
    ck_assert_int_eq(dead, 0);
    ck_assert_int_eq(ref_dead, 0);
    free(a);
    free(b);
}

static void report(const char *test)
{
    printf("%s: sent %" PRIu64 ", accepted %d, errored %" PRIu64 " (retried %" PRIu64
           "), gave up %d, longest gap in accepted commands %" PRId64 " ms\n",
           test, ld->sent, ld->n, ld->errors, ld->retried, ld->gave_up, ld->longest_gap_ms);
    for (int i = 0; i < 4 && ld->why[i][0] != 0; i++)
        printf("  errors: %" PRIu64 " x %s\n", ld->why_n[i], ld->why[i]);
    fflush(stdout);
}

static svc *start_stack(int projector_batch)
{
    svc_start(0, "orders", "orders-1", 0);
    svc_start(1, "orders", "orders-2", 0);
    svc *proj = svc_start(2, "order_summary", "summary", projector_batch);
    /* Services are ready when a command is accepted. */
    load_start();
    wait_accepted(5);
    return proj;
}

static void setup(void)
{
    memset(svcs, 0, sizeof(svcs));
    cluster_start();
}

static void teardown(void)
{
    stop_all_services();
    cluster_stop();
    free(ld);
    ld = NULL;
}

/* ---- 1. the stream leader dies ---- */

START_TEST(stream_leader_killed_under_load_loses_and_doubles_nothing)
{
    svc *proj = start_stack(64);
    wait_accepted(100);
    int leader = stream_leader("ORDERS");
    ck_assert_int_ge(leader, 0);
    printf("injecting: kill -9 of n%d, leader of ORDERS, with %d commands accepted\n", leader + 1,
           ld->n);
    ck_assert_int_eq(jl_natsd_kill9(cl.node[leader]), 0);
    wait_accepted(200);
    printf("injecting: restart of n%d\n", leader + 1);
    ck_assert_int_eq(jl_natsd_restart(cl.node[leader]), 0);
    wait_accepted(100);
    wait_replicas_current("ORDERS", 60000);
    load_stop();
    report("leader kill");
    ck_assert_int_eq(ld->gave_up, 0);
    verify_stream_once();
    verify_read_model(proj);
}
END_TEST

/* ---- 2. a projector dies in the middle of a batch ---- */

/* Wait for @p s, started with a fault point, to kill itself there (exit status 137 with no
 * signal sent by the test: it died at that point and nowhere else). */
static void wait_fault_kill(svc *s, int timeout_ms)
{
    int64_t deadline = tnow_ms() + timeout_ms;
    while (jl_proc_alive(s->pid)) {
        ck_assert_msg(tnow_ms() < deadline, "%s did not reach its fault point %s in %d ms", s->bin,
                      s->fault, timeout_ms);
        nats_Sleep(20);
    }
    ck_assert_int_eq(svc_stop(s, 0), 137);
}

START_TEST(projector_killed_mid_batch_matches_the_stream)
{
    svc *proj = start_stack(8);
    /* Rounds 1 and 2: the projector kills itself with a batch applied in its open transaction,
     * not yet committed (the point a batch is most "in the middle"), on its 5th and 20th batch
     * after a start. Round 3: kill -9 from outside at whatever moment the load has reached. */
    static const int after[] = {5, 20};
    for (int round = 0; round < 2; round++) {
        wait_accepted(150);
        ck_assert_int_eq(svc_stop(proj, SIGTERM), 0); /* a graceful stop, then the fault */
        proj->fault = "apply.before_commit";
        proj->fault_after = after[round];
        svc_spawn(proj);
        wait_fault_kill(proj, 60000);
        printf("injected: the projector killed itself before committing its batch %d after a "
               "start (round %d, %d commands accepted)\n",
               after[round], round + 1, ld->n);
        proj->fault = NULL;
        svc_spawn(proj);
    }
    wait_accepted(150);
    printf("injecting: kill -9 of the projector (round 3, %d commands accepted)\n", ld->n);
    ck_assert_int_eq(svc_stop(proj, SIGKILL), 137);
    nats_Sleep(300);
    svc_spawn(proj);
    wait_accepted(100);
    load_stop();
    report("projector kill");
    ck_assert_int_eq(ld->gave_up, 0);
    verify_stream_once();
    verify_read_model(proj);
}
END_TEST

/* ---- 3. rolling restart of every server, then every service ---- */

START_TEST(rolling_restart_of_servers_and_services_loses_nothing)
{
    svc *proj = start_stack(64);
    wait_accepted(100);
    for (int i = 0; i < NODES; i++) {
        printf("injecting: restart of n%d (SIGTERM), %d accepted\n", i + 1, ld->n);
        ck_assert_int_eq(jl_natsd_stop(cl.node[i]), 0);
        ck_assert_int_eq(jl_natsd_restart(cl.node[i]), 0);
        ck_assert_int_eq(jl_natsd_wait_jetstream(cl.node[i], 30000), 0);
        wait_replicas_current("ORDERS", 60000);
        wait_accepted(50);
    }
    for (int i = 0; i < 3; i++) {
        printf("injecting: restart of %s (SIGTERM), %d accepted\n", svcs[i].bin, ld->n);
        ck_assert_int_eq(svc_stop(&svcs[i], SIGTERM), 0);
        svc_spawn(&svcs[i]);
        wait_accepted(50);
    }
    load_stop();
    report("rolling restart");
    ck_assert_int_eq(ld->gave_up, 0);
    verify_stream_once();
    verify_read_model(proj);
}
END_TEST

/* ---- 4. one node cut off from the others and from clients ---- */

/* Run `nft @p cmdline`; its output is printed when it fails, unless @p quiet. */
static int nft_run(const char *cmdline, bool quiet)
{
    char full[1024];
    snprintf(full, sizeof(full), "nft %s 2>&1", cmdline);
    FILE *f = popen(full, "r");
    char out[512] = "";
    if (f == NULL)
        return -1;
    size_t n = fread(out, 1, sizeof(out) - 1, f);
    out[n] = 0;
    int rc = pclose(f);
    if (rc != 0 && !quiet)
        fprintf(stderr, "nft %s: %s\n", cmdline, out);
    return rc;
}

static int nft(const char *cmdline)
{
    return nft_run(cmdline, false);
}

/* The table of this process's partition rules: its own, so that two runs on one machine do not
 * remove each other's. */
static char nft_table[32];

/* Remove the tables left by partition tests that died before healing (their process is gone):
 * their rules would go on dropping traffic on ports the next tests may be given. */
static void remove_dead_tables(void)
{
    FILE *f = popen("nft list tables 2>/dev/null", "r");
    char line[256], cmdline[128];
    int pid = 0;
    if (f == NULL)
        return;
    while (fgets(line, sizeof(line), f) != NULL) {
        if (sscanf(line, "table inet jl_fault_%d", &pid) == 1 && pid > 0 && kill(pid, 0) != 0) {
            snprintf(cmdline, sizeof(cmdline), "delete table inet jl_fault_%d", pid);
            nft(cmdline);
        }
    }
    pclose(f);
}

/* Cut node @p i off: drop everything to and from its client and route ports (its clients and
 * the routes others made to it), everything on the connections it made itself (found with ss by
 * its pid), and any new route connection while the cut lasts (its reconnect attempts). */
static void partition(int i)
{
    char rule[512];
    remove_dead_tables();
    snprintf(nft_table, sizeof(nft_table), "jl_fault_%d", (int)getpid());
    snprintf(rule, sizeof(rule), "delete table inet %s", nft_table);
    nft_run(rule, true); /* one left by an earlier test of this process, if any */
    snprintf(rule, sizeof(rule), "add table inet %s", nft_table);
    ck_assert_msg(nft(rule) == 0, "nft is needed (scripts/bootstrap)");
    snprintf(rule, sizeof(rule), "add chain inet %s in '{ type filter hook input priority -10; }'",
             nft_table);
    ck_assert_int_eq(nft(rule), 0);
    snprintf(rule, sizeof(rule), "add rule inet %s in tcp dport '{ %d, %d }' drop", nft_table,
             cl.client_port[i], cl.route_port[i]);
    ck_assert_int_eq(nft(rule), 0);
    snprintf(rule, sizeof(rule), "add rule inet %s in tcp sport '{ %d, %d }' drop", nft_table,
             cl.client_port[i], cl.route_port[i]);
    ck_assert_int_eq(nft(rule), 0);
    size_t o = 0;
    char others[64] = "";
    for (int k = 0; k < NODES; k++) {
        if (k != i)
            o += (size_t)snprintf(others + o, sizeof(others) - o, "%s%d", o ? ", " : "",
                                  cl.route_port[k]);
    }
    snprintf(rule, sizeof(rule), "add rule inet %s in ct state new tcp dport '{ %s }' drop",
             nft_table, others);
    ck_assert_int_eq(nft(rule), 0);
    char cmdline[128], line[512];
    snprintf(cmdline, sizeof(cmdline), "ss -tnpH state established 2>/dev/null");
    FILE *f = popen(cmdline, "r");
    ck_assert_ptr_nonnull(f);
    char pidtag[32];
    snprintf(pidtag, sizeof(pidtag), "pid=%d,", (int)jl_natsd_pid(cl.node[i]));
    int cut = 0;
    while (fgets(line, sizeof(line), f) != NULL) {
        if (strstr(line, pidtag) == NULL)
            continue;
        /* "0 0 127.0.0.1:LOCAL 127.0.0.1:PEER users:..." */
        char local[64], peer[64];
        if (sscanf(line, "%*s %*s %63s %63s", local, peer) != 2)
            continue;
        const char *lp = strrchr(local, ':');
        if (lp == NULL)
            continue;
        int port = atoi(lp + 1);
        if (port == cl.client_port[i] || port == cl.route_port[i])
            continue; /* covered above */
        snprintf(rule, sizeof(rule), "add rule inet %s in tcp sport %d drop", nft_table, port);
        ck_assert_int_eq(nft(rule), 0);
        snprintf(rule, sizeof(rule), "add rule inet %s in tcp dport %d drop", nft_table, port);
        ck_assert_int_eq(nft(rule), 0);
        cut++;
    }
    pclose(f);
    printf("injecting: partition of n%d (ports %d, %d and %d connections it made)\n", i + 1,
           cl.client_port[i], cl.route_port[i], cut);
}

START_TEST(partitioned_node_heals_and_nothing_is_lost)
{
    svc *proj = start_stack(64);
    wait_accepted(100);
    int victim = stream_leader("ORDERS");
    ck_assert_int_ge(victim, 0);
    /* A connection to another node only, to see the cut from the majority's side. */
    jl_conn *side = NULL;
    jl_config sc = cfg;
    char err[1024];
    int other = (victim + 1) % NODES;
    snprintf(sc.nats_url, sizeof(sc.nats_url), "nats://127.0.0.1:%d", cl.client_port[other]);
    sc.request_timeout_ms = 1000; /* polled: a short wait per look gives the time to a second */
    ck_assert_int_eq(jl_conn_open(&side, &sc, "fault-observer", 10000, err, sizeof(err)), JL_OK);
    partition(victim); /* the stream's leader: the worst node to lose */
    int64_t cut_at = tnow_ms();
    int before = ld->n;
    /* The cut took effect when the two others elected a leader of their own; the cut lasts 8 s,
     * or until then when that takes longer (bounded). */
    int leader = victim;
    while ((leader = stream_leader_on(side, "ORDERS")) == victim || leader < 0) {
        ck_assert_msg(tnow_ms() - cut_at < 30000, "n%d still leads ORDERS 30 s into its cut",
                      victim + 1);
        nats_Sleep(200);
    }
    printf("cut confirmed: n%d leads ORDERS, seen %" PRId64 " ms into the cut\n", leader + 1,
           tnow_ms() - cut_at);
    int64_t left = 8000 - (tnow_ms() - cut_at);
    if (left > 0)
        nats_Sleep((int)left);
    char heal[64];
    snprintf(heal, sizeof(heal), "delete table inet %s", nft_table);
    ck_assert_int_eq(nft(heal), 0);
    printf("healed after %" PRId64 " ms: %d commands accepted during the partition\n",
           tnow_ms() - cut_at, ld->n - before);
    jl_conn_close(side, 0);
    wait_accepted(100);
    wait_replicas_current("ORDERS", 60000);
    load_stop();
    report("partition");
    ck_assert_int_eq(ld->gave_up, 0);
    verify_stream_once();
    verify_read_model(proj);
}
END_TEST

/* ---- 5. an append stored after its acknowledgement timed out ---- */

/* Messages in @p stream, asked until a leader answers (bounded). */
static uint64_t stream_msgs_when_known(const char *stream)
{
    int64_t deadline = tnow_ms() + 30000;
    uint64_t n;
    while ((n = tstream_msgs(conn, stream)) == 0 && tnow_ms() < deadline)
        nats_Sleep(200);
    return n;
}

/* SIGSTOP both followers of @p stream for 4 s, saying what is done meanwhile (@p meanwhile):
 * the child process that resumes them (waitpid() it). */
static pid_t pause_followers(const char *stream, const char *meanwhile)
{
    int leader = stream_leader(stream);
    ck_assert_int_ge(leader, 0);
    for (int i = 0; i < NODES; i++)
        if (i != leader)
            ck_assert_int_eq(jl_proc_pause(jl_natsd_pid(cl.node[i])), 0);
    printf("injecting: SIGSTOP of both followers of %s for 4 s, %s\n", stream, meanwhile);
    fflush(stdout);
    pid_t child = fork();
    if (child == 0) { /* resumes them while the parent waits */
        sleep(4);
        for (int i = 0; i < NODES; i++)
            if (i != leader)
                kill(jl_natsd_pid(cl.node[i]), SIGCONT);
        _exit(0);
    }
    ck_assert_int_gt(child, 0);
    return child;
}

/*
 * The orders producer and a connection (returned) on the ORDERS stream's leader only, with an
 * order (@p id) holding one item: neither may wait in a paused server, or an append would meet
 * a healthy cluster after a pause of the followers and prove nothing. The stream and the order
 * first, by a producer on any node; then that producer again on the leader with @p env (up to
 * 3 NAME=value), *@p out_prod, url in @p url. @p ai: that item's AddItem, for more.
 */
static jl_conn *producer_on_leader(svc **out_prod, char id[JL_UUID_LEN + 1], char url[64],
                                   const char *const env[3], Orders__AddItem *ai)
{
    svc *prod = svc_start(0, "orders", "orders", 0);
    jl_uuid_new(id);
    Orders__CreateOrder co = ORDERS__CREATE_ORDER__INIT;
    co.order_id = id;
    co.customer_id = "fault";
    jl_reply r;
    jl_reply_init(&r);
    int64_t deadline = tnow_ms() + 60000; /* the producer is up when it answers */
    while (tsend(conn, "orders", false, &co.base, NULL, &r) != NATS_OK || r.code != JL_CODE_OK) {
        ck_assert_msg(tnow_ms() < deadline, "the orders producer never accepted a command");
        nats_Sleep(200);
    }
    int leader = stream_leader("ORDERS");
    ck_assert_int_ge(leader, 0);
    ck_assert_int_eq(svc_stop(prod, SIGTERM), 0);
    char err[1024];
    snprintf(url, 64, "nats://127.0.0.1:%d", cl.client_port[leader]);
    prod->url = url;
    for (int i = 0; i < 3; i++)
        prod->env[i] = env[i];
    svc_spawn(prod);
    jl_conn *lc = NULL;
    jl_config lcfg = cfg;
    snprintf(lcfg.nats_url, sizeof(lcfg.nats_url), "%s", url);
    ck_assert_msg(jl_conn_open(&lc, &lcfg, "fault-resend", 10000, err, sizeof(err)) == JL_OK, "%s",
                  err);
    /* Up again when it takes a first item, which also puts the order in its cache: loaded
     * during the pause, it would wait for the snapshot bucket, perhaps led by a paused node,
     * and append only after it, when nothing times out. */
    orders__add_item__init(ai);
    ai->order_id = id;
    ai->sku = "sku-0";
    ai->quantity = 1;
    ai->unit_price_cents = 100;
    deadline = tnow_ms() + 60000;
    while (tsend(lc, "orders", false, &ai->base, NULL, &r) != NATS_OK || r.code != JL_CODE_OK) {
        ck_assert_msg(tnow_ms() < deadline, "the orders producer never answered on n%d",
                      leader + 1);
        nats_Sleep(200);
    }
    jl_reply_cleanup(&r);
    *out_prod = prod;
    return lc;
}

/* A clustered stream answers a resend of a stored message "wrong last sequence", not
 * "duplicate" (it checks the expected sequence first): the producer must find its own stored
 * copy, not answer "conflict" for it, even with no retries of lost races left. */
START_TEST(append_stored_after_a_timeout_is_answered_as_stored)
{
    static const char *const env[3] = {"JL_COMMAND_RETRIES=0", "JL_LOG_LEVEL=debug", NULL};
    svc *prod = NULL;
    char id[JL_UUID_LEN + 1], url[64];
    Orders__AddItem ai;
    jl_conn *lc = producer_on_leader(&prod, id, url, env, &ai);
    jl_reply r;
    jl_reply_init(&r);
    pid_t child = pause_followers("ORDERS", "an AddItem sent meanwhile (no command id, no "
                                            "retries of lost races)");
    ai.sku = "sku-1";
    int64_t t0 = tnow_ms();
    natsStatus ns = tsend(lc, "orders", false, &ai.base, NULL, &r);
    waitpid(child, NULL, 0);
    jl_conn_close(lc, 0);
    printf("reply after %" PRId64 " ms: %s %s (version %" PRIu64 ", sequence %" PRIu64
           ", duplicate %d)\n",
           tnow_ms() - t0, ns == NATS_OK ? jl_code_str(r.code) : natsStatus_GetText(ns), r.message,
           r.aggregate_version, r.stream_seq, (int)r.duplicate);
    /* Three commits (the creation and two items), not four: counted from the stream's info,
     * asked until it answers (the cluster may still be electing leaders after the pause). */
    wait_replicas_current("ORDERS", 30000);
    uint64_t msgs = stream_msgs_when_known("ORDERS");
    printf("verified: %" PRIu64 " commits in the stream\n", msgs);
    ck_assert_uint_eq(msgs, 3);
    ck_assert_int_eq(ns, NATS_OK);
    ck_assert_msg(r.code == JL_CODE_OK, "stored, answered %s: %s", jl_code_str(r.code), r.message);
    ck_assert(!r.duplicate);
    ck_assert_uint_eq(r.aggregate_version, 3);
    jl_reply_cleanup(&r);
    /* The fault bit: the append timed out, and its resend met the stored copy. */
    ck_assert_msg(scan_log(prod->log, "\"msg\":\"conflict, catching up\"", NULL, 2) >= 1,
                  "the append never met its stored copy: see %s", prod->log);
}
END_TEST

/* Move @p stream's leader (stepdowns, bounded) until it is @p other's (NULL: node @p node):
 * pausing @p other's followers then leaves both leaders running. */
static void lead_with(const char *stream, const char *other, int node)
{
    char subject[128];
    snprintf(subject, sizeof(subject), "$JS.API.STREAM.LEADER.STEPDOWN.%s", stream);
    for (int i = 0; i < 30; i++) {
        int want = other != NULL ? stream_leader(other) : node, now = stream_leader(stream);
        if (want >= 0 && now == want)
            return;
        if (now >= 0) {
            natsMsg *reply = NULL;
            natsConnection_Request(&reply, jl_conn_nats(conn), subject, NULL, 0, 5000);
            natsMsg_Destroy(reply);
        }
        nats_Sleep(500); /* a new leader elected */
    }
    ck_abort_msg("%s's leader never moved to %s's", stream, other ? other : "the node");
}

/* A command with id @p cmd_id sent with both followers paused, to a producer on the leader
 * with @p env (a duplicate window of 1 s among them), is answered "may or may not be stored",
 * (and, when not NULL, @p says), with a marker for a record. Stored once the quorum is
 * back, a repeat past JetStream's duplicate window, after a later command of the aggregate, is
 * answered from that commit: no second effect. */
static void unknown_outcome_then_a_repeat(const char *const env[3], const char *cmd_id,
                                          const char *says)
{
    svc *prod = NULL;
    char id[JL_UUID_LEN + 1], url[64];
    Orders__AddItem ai;
    jl_conn *lc = producer_on_leader(&prod, id, url, env, &ai);
    int node = -1; /* the producer's and the test's server */
    for (int i = 0; i < NODES; i++)
        if (cl.client_port[i] == atoi(strrchr(url, ':') + 1))
            node = i;
    ck_assert_int_ge(node, 0);
    jl_reply r;
    jl_reply_init(&r);
    /* The command id is looked up first, by a direct get that any replica of its bucket may
     * answer, a paused one too: then nothing was appended, and the test tries again. And an
     * attempt that met a quorum all the same (ok: the pause did not take, the item stored under
     * that id) is one more commit, and the test tries again with another id. */
    natsStatus ns = NATS_OK;
    char try_id[64];
    const char *base = cmd_id;
    uint64_t stored = 0; /* commits of such attempts */
    ai.sku = "sku-1";
    for (int attempt = 0; attempt < 10; attempt++) {
        snprintf(try_id, sizeof(try_id), "%s-%d", base, attempt);
        cmd_id = try_id;
        /* The stream's leader may have moved in an earlier attempt's pause (a leader without
         * its quorum steps down): pausing its followers would then pause the producer's
         * server, and the command would simply wait for the pause to end. */
        lead_with("ORDERS", NULL, node);
        lead_with("KV_jl_commands_ORDERS", "ORDERS", -1);
        pid_t child = pause_followers("ORDERS", "an AddItem with a command id sent meanwhile");
        int64_t t0 = tnow_ms();
        ns = tsend(lc, "orders", false, &ai.base, cmd_id, &r);
        printf("reply after %" PRId64 " ms: %s %s\n", tnow_ms() - t0,
               ns == NATS_OK ? jl_code_str(r.code) : natsStatus_GetText(ns), r.message);
        fflush(stdout);
        waitpid(child, NULL, 0);
        stored += ns == NATS_OK && r.code == JL_CODE_OK;
        if (ns != NATS_OK ||
            (r.code != JL_CODE_OK && strstr(r.message, "could not be looked up") == NULL))
            break;
        wait_replicas_current("ORDERS", 30000);
    }
    ck_assert_int_eq(ns, NATS_OK);
    ck_assert_msg(r.code == JL_CODE_UNAVAILABLE && strstr(r.message, "may or may not") != NULL,
                  "%s: %s", jl_code_str(r.code), r.message);
    ck_assert_msg(says == NULL || strstr(r.message, says) != NULL, "%s, not: %s", r.message, says);
    /* The quorum back, the copy is stored, and the marker put by the producer. */
    wait_replicas_current("ORDERS", 30000);
    ck_assert_uint_eq(stream_msgs_when_known("ORDERS"), 3 + stored);
    Jetledger__CommandRecord *rec = NULL;
    int64_t deadline = tnow_ms() + 30000;
    while ((rec = tcommand_record(conn, "jl_commands_ORDERS", cmd_id, NULL)) == NULL &&
           tnow_ms() < deadline)
        nats_Sleep(200);
    ck_assert_msg(rec != NULL, "no record of %s: see %s", cmd_id, prod->log);
    printf("verified: the record of %s is a marker (unsettled %d, after sequence %" PRIu64 ")\n",
           cmd_id, (int)rec->unsettled, rec->after_seq);
    ck_assert(rec->unsettled);
    ck_assert_uint_eq(rec->after_seq, 2 + stored);
    jetledger__command_record__free_unpacked(rec, NULL);

    /* A later command folds the copy in; the repeat comes past the window. */
    ai.sku = "sku-2";
    deadline = tnow_ms() + 30000;
    while (tsend(lc, "orders", false, &ai.base, NULL, &r) != NATS_OK || r.code != JL_CODE_OK) {
        ck_assert_msg(tnow_ms() < deadline, "no later command accepted: %s", r.message);
        nats_Sleep(200);
    }
    nats_Sleep(1500);
    ai.sku = "sku-1";
    ck_assert_int_eq(tsend(lc, "orders", false, &ai.base, cmd_id, &r), NATS_OK);
    printf("repeat: %s, duplicate %d, sequence %" PRIu64 "\n", jl_code_str(r.code),
           (int)r.duplicate, r.stream_seq);
    ck_assert_msg(r.code == JL_CODE_OK && r.duplicate, "%s: %s", jl_code_str(r.code), r.message);
    ck_assert_uint_eq(r.stream_seq, 3 + stored);
    ck_assert_uint_eq(stream_msgs_when_known("ORDERS"), 4 + stored);
    printf("verified: %" PRIu64 " commits, the repeat answered from the stored copy\n", 4 + stored);
    jl_reply_cleanup(&r);
    jl_conn_close(lc, 0);
}

/* The ack does not come before the command's deadline (no quorum). */
START_TEST(unknown_outcome_leaves_a_marker_and_a_repeat_has_no_second_effect)
{
    /* A short command deadline and duplicate window. */
    static const char *const env[3] = {"JL_REQUEST_TIMEOUT=1500", "JL_DUPLICATE_WINDOW=1",
                                       "JL_LOG_LEVEL=debug"};
    unknown_outcome_then_a_repeat(env, "marker-1", NULL);
}
END_TEST

/* The append timed out, its resend met the stored copy ("wrong last sequence"), and the read
 * that was to tell whether the copy is this command's failed (injected). */
START_TEST(a_failed_read_after_a_timed_out_append_leaves_a_marker)
{
    static const char *const env[3] = {"JL_FAULT_POINT=command.reread", "JL_FAULT_ACTION=fail",
                                       "JL_DUPLICATE_WINDOW=1"};
    unknown_outcome_then_a_repeat(env, "marker-2",
                                  "an attempt timed out, and its events may or may not be stored: "
                                  "event store unavailable: fault injected at command.reread");
}
END_TEST

/* jl_store_append itself, on the same fault: it must find its own stored copy too. */
START_TEST(store_append_stored_after_a_timeout_is_found)
{
    jl_store *st = NULL;
    jl_store_cfg sc;
    char err[1024] = "";
    jl_store_cfg_init(&sc);
    sc.stream = "RESEND";
    sc.subjects = "resend.>";
    sc.replicas = 3;
    ck_assert_msg(jl_store_open(&st, conn, &sc, err, sizeof(err)) == JL_OK, "%s", err);
    pid_t child = pause_followers("RESEND", "one append meanwhile");
    jl_append a = {.subject = "resend.one",
                   .data = "x",
                   .len = 1,
                   .msg_id = "resend-1",
                   .expect_empty = true,
                   .deadline_ms = 12000};
    uint64_t seq = 0;
    bool dup = false;
    jl_status s = jl_store_append(st, &a, &seq, &dup);
    waitpid(child, NULL, 0);
    printf("append: %s, sequence %" PRIu64 ", duplicate %d (%s)\n", jl_status_str(s), seq, (int)dup,
           s == JL_OK ? "" : jl_store_errmsg(st));
    ck_assert_msg(s == JL_OK, "%s: %s", jl_status_str(s), jl_store_errmsg(st));
    ck_assert_uint_eq(seq, 1);
    /* The fault took: with no quorum the first attempt timed out, and only a resend that met
     * the stored copy could end it (a single clean attempt would not be a duplicate). */
    ck_assert_msg(dup, "the append was not held up by the paused followers");
    /* A caller whose call timed out retries with the same id, as the header says: a new call
     * that meets the stored copy ("wrong last sequence" on a clustered stream) finds it. */
    seq = 0;
    dup = false;
    s = jl_store_append(st, &a, &seq, &dup);
    printf("the same append again: %s, sequence %" PRIu64 ", duplicate %d\n", jl_status_str(s), seq,
           (int)dup);
    ck_assert_msg(s == JL_OK, "%s: %s", jl_status_str(s), jl_store_errmsg(st));
    ck_assert_uint_eq(seq, 1);
    ck_assert(dup);
    /* And one that lost a real race is still told so, quickly, not left to time out. */
    a.msg_id = "resend-2";
    int64_t t0 = tnow_ms();
    s = jl_store_append(st, &a, &seq, &dup);
    ck_assert_msg(s == JL_ERR_CONFLICT, "%s: %s", jl_status_str(s), jl_store_errmsg(st));
    ck_assert_int_lt(tnow_ms() - t0, a.deadline_ms); /* answered, not timed out */
    a.expect_empty = false;
    a.expected_last_seq = 7; /* past the subject's last: no copy of ours can be there either */
    s = jl_store_append(st, &a, &seq, &dup);
    ck_assert_msg(s == JL_ERR_CONFLICT, "%s: %s", jl_status_str(s), jl_store_errmsg(st));
    wait_replicas_current("RESEND", 30000);
    ck_assert_uint_eq(stream_msgs_when_known("RESEND"), 1);
    jl_store_close(st);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("fault");
    TCase *tc = tcase_create("cluster");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 420);
    tcase_add_test(tc, stream_leader_killed_under_load_loses_and_doubles_nothing);
    tcase_add_test(tc, projector_killed_mid_batch_matches_the_stream);
    tcase_add_test(tc, rolling_restart_of_servers_and_services_loses_nothing);
    tcase_add_test(tc, partitioned_node_heals_and_nothing_is_lost);
    suite_add_tcase(s, tc);
    TCase *resend = tcase_create("resend");
    tcase_add_checked_fixture(resend, setup, teardown);
    tcase_set_timeout(resend, 300);
    tcase_add_test(resend, append_stored_after_a_timeout_is_answered_as_stored);
    tcase_add_test(resend, store_append_stored_after_a_timeout_is_found);
    tcase_add_test(resend, unknown_outcome_leaves_a_marker_and_a_repeat_has_no_second_effect);
    tcase_add_test(resend, a_failed_read_after_a_timed_out_append_leaves_a_marker);
    suite_add_tcase(s, resend);
    return trun(s);
}
