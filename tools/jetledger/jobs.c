/* `jetledger rebuild` and `jetledger verify`: start a projector's job over
 * "<projector>.admin.*", follow its status (GetRebuildStatus every 200 ms) with a progress line
 * on stderr until it ends, and report on stdout. Ctrl-C or SIGTERM cancels the job. */
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "jetledger/admin.pb-c.h"
#include "jetledger/json.h"
#include "jetledger/producer.h"

#define POLL_MS 200
/* How long the status may show another job than ours before we give up on it. */
#define LOST_LIMIT_NS (10 * 1000000000LL)

/* Signals counted by the handler, read by the polling loop: the first cancels, a second stops
 * waiting for the cancellation. */
static volatile sig_atomic_t interrupted;

static volatile sig_atomic_t first_sig;
static volatile int64_t first_at_ms;

static void on_signal(int sig)
{
    /* One SIGTERM sent twice (`timeout` and some supervisors signal the process, then its
     * group) is one request to cancel, not a second one to stop waiting for it. */
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts); /* async-signal-safe */
    int64_t now = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    if (interrupted > 0 && sig == SIGTERM && first_sig == SIGTERM && now - first_at_ms < 1000)
        return;
    if (interrupted == 0) {
        first_sig = sig;
        first_at_ms = now;
    }
    interrupted = interrupted + 1;
}

typedef struct job {
    const cli_ctx *ctx;
    jl_conn *conn;
    const char *projector;
    const char *kind;      /* "rebuild" or "verify" */
    int64_t started_at_ns; /* the job's identity, from the reply that started it */
    char instance[128];    /* the projector instance running it ("" = any instance) */
    bool tty;
    int64_t last_line_ns;
} job;

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Whether a reply's instance (a durable name) can go into a subject: shorter than @p size,
 * letters, digits, '_' and '-' only (jl_valid_name()'s characters; not its length: a projector
 * of several streams is "<durable>_<STREAM>"). A tab, a line break or a '.' from a wrong reply
 * would reach another subject, or write into the NATS protocol itself. */
static bool instance_name(const char *s, size_t size)
{
    size_t n = s != NULL ? strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                     "0123456789_-")
                         : 0;
    return n > 0 && s[n] == 0 && n < size;
}

/* "<projector>.admin.[<instance>.]<request>": on the instance running the job once known. */
static const char *admin_subject(const job *j, const char *request, char *out, size_t n)
{
    snprintf(out, n, "%s.admin.%s%s%s", j->projector, j->instance, j->instance[0] ? "." : "",
             request);
    return out;
}

/* Send an admin request; its ok reply holds the projector's RebuildStatus. */
static Jetledger__RebuildStatus *admin(job *j, const char *request, const ProtobufCMessage *msg,
                                       int *rc)
{
    char subject[512];
    admin_subject(j, request, subject, sizeof(subject));
    return (Jetledger__RebuildStatus *)cli_ask(j->ctx, j->conn, "projector", j->projector, subject,
                                               msg, &jetledger__rebuild_status__descriptor, rc);
}

static void free_status(Jetledger__RebuildStatus *st)
{
    if (st != NULL)
        protobuf_c_message_free_unpacked(&st->base, NULL);
}

static bool finished(const Jetledger__RebuildStatus *st)
{
    return strcmp(st->state, "done") == 0 || strcmp(st->state, "failed") == 0 ||
           strcmp(st->state, "cancelled") == 0;
}

/* Seconds the job ran (so far, or in all once finished), by the projector's clock when it can. */
static double job_seconds(const Jetledger__RebuildStatus *st)
{
    int64_t end = st->finished_at_ns != 0 ? st->finished_at_ns : now_ns();
    /* In doubles: a wrong reply's times must not overflow a subtraction. */
    double s = ((double)end - (double)st->started_at_ns) / 1e9;
    return st->started_at_ns > 0 && s > 0 ? s : 0.0;
}

static void format_eta(char *out, size_t n, double secs)
{
    if (!(secs < 1e9)) { /* 30 years, or not a number: a wrong reply, not a wait to show */
        snprintf(out, n, "?");
        return;
    }
    long s = (long)(secs + 0.5);
    if (s < 60)
        snprintf(out, n, "%lds", s);
    else if (s < 3600)
        snprintf(out, n, "%ldm%02lds", s / 60, s % 60);
    else
        snprintf(out, n, "%ldh%02ldm", s / 3600, (s % 3600) / 60);
}

/* "rebuild order_summary: 123456/200000 messages  61.7%  45210 msg/s  ETA 2s" (stream messages,
 * as the job counts them: a commit holds one or more events): on a terminal one line redrawn
 * in place, elsewhere a line a second (and the last one). */
static void show_progress(job *j, const Jetledger__RebuildStatus *st, bool last)
{
    int64_t t = now_ns();
    if (!j->tty && !last && t - j->last_line_ns < 1000000000LL)
        return;
    double secs = job_seconds(st);
    double rate = secs > 0 ? (double)st->applied / secs : 0.0;
    double pct = st->total > 0 ? 100.0 * (double)st->applied / (double)st->total : 0.0;
    char eta[32] = "?";
    if (rate > 0 && st->total >= st->applied)
        format_eta(eta, sizeof(eta), (double)(st->total - st->applied) / rate);
    char text[512];
    snprintf(text, sizeof(text),
             "%s %s: %" PRIu64 "/%" PRIu64 " messages  %.1f%%  %.0f msg/s  ETA %s", j->kind,
             j->projector, st->applied, st->total, pct, rate, eta);
    if (j->tty) {
        cli_progress(text);
    } else {
        fprintf(stderr, "%s\n", text);
        fflush(stderr);
    }
    j->last_line_ns = t;
}

static void sleep_poll(void)
{
    /* A signal cuts the sleep short, which is what we want: react at once. */
    struct timespec ts = {.tv_sec = 0, .tv_nsec = POLL_MS * 1000000L};
    nanosleep(&ts, NULL);
}

/* Cancel our job (by its start time: not one started after it ended). One that had ended is
 * no failure: the next poll tells its outcome. */
static int cancel_job(job *j)
{
    char subject[512];
    Jetledger__CancelRebuild cancel = JETLEDGER__CANCEL_REBUILD__INIT;
    cancel.started_at_ns = j->started_at_ns;
    admin_subject(j, "CancelRebuild", subject, sizeof(subject));
    jl_reply r;
    jl_reply_init(&r);
    int rc = cli_request(j->ctx, j->conn, "projector", j->projector, subject, &cancel.base, &r);
    if (rc == CLI_OK && r.code == JL_CODE_NOT_FOUND)
        cli_error("the %s was no longer running when the cancel reached it", j->kind);
    else if (rc == CLI_OK && r.code == JL_CODE_CONFLICT)
        cli_error("%s: following it to its end", r.message); /* switching: it ends soon */
    else if (rc == CLI_OK)
        rc = cli_reply_status(&r);
    jl_reply_cleanup(&r);
    return rc;
}

/* Poll until our job has finished; its last status in *out_final. */
static int follow(job *j, Jetledger__RebuildStatus **out_final)
{
    Jetledger__GetRebuildStatus get = JETLEDGER__GET_REBUILD_STATUS__INIT;
    bool cancel_sent = false;
    int64_t other_since = 0, unanswered_since = 0;
    int rc = CLI_OK;
    while (rc == CLI_OK) {
        /* The cancel goes out first, even when two signals came at once. */
        if (interrupted > 0 && !cancel_sent) {
            cli_error("cancelling the %s...", j->kind);
            rc = cancel_job(j);
            cancel_sent = true;
            continue;
        }
        if (interrupted > 1) {
            cli_error(
                "stopped waiting for the %s to be cancelled (the projector's log says when it "
                "stopped)",
                j->kind);
            rc = CLI_REJECTED;
            break;
        }
        sleep_poll();
        cli_quiet_unanswered(true);
        Jetledger__RebuildStatus *st = admin(j, "GetRebuildStatus", &get.base, &rc);
        cli_quiet_unanswered(false);
        if (st == NULL && rc == CLI_UNAVAILABLE && !cli_request_timed_out()) {
            /* Nothing answers: the projector reconnecting (a NATS server restarting) or
             * restarting. One poll is not the end of the job: for a while, ask again. */
            if (unanswered_since == 0)
                unanswered_since = now_ns();
            if (now_ns() - unanswered_since < LOST_LIMIT_NS) {
                rc = CLI_OK;
                continue;
            }
            cli_error("nothing has answered about the %s on %s for %lld s (the projector stopped, "
                      "or lost NATS): its outcome is unknown; the projector's log says it",
                      j->kind, j->projector, (long long)(LOST_LIMIT_NS / 1000000000LL));
        }
        if (st == NULL)
            break;
        unanswered_since = 0;
        if (st->started_at_ns == j->started_at_ns) {
            other_since = 0;
            bool last = finished(st);
            show_progress(j, st, last);
            if (last) {
                *out_final = st;
                break;
            }
        } else if (st->started_at_ns > j->started_at_ns) {
            cli_error("another %s started on %s after ours: its outcome is unknown",
                      st->job[0] ? st->job : "job", j->projector);
            rc = CLI_REJECTED; /* ours did not finish (README: exit 1) */
        } else if (other_since == 0) {
            /* An older job: the status has not caught up with ours yet. */
            other_since = now_ns();
        } else if (now_ns() - other_since > LOST_LIMIT_NS) {
            cli_error("%s no longer reports our %s (was it restarted, or does another instance "
                      "answer?)",
                      j->projector, j->kind);
            rc = CLI_REJECTED;
        }
        free_status(st);
    }
    cli_progress_clear();
    return rc;
}

/* The result as one JSON object on stdout: a finished verify's comparison, else the summary. */
static int print_result(const Jetledger__RebuildStatus *st, bool verify)
{
    jl_buf b;
    jl_buf_init(&b, CLI_JSON_MAX);
    jl_buf_addf(&b, "{\"job\":\"%s\"", verify ? "verify" : "rebuild");
    if (verify && strcmp(st->state, "done") == 0) {
        jl_buf_addf(&b, ",\"match\":%s,\"sequence\":%" PRIu64 ",\"live_digest\":",
                    st->match ? "true" : "false", st->verified_seq);
        jl_json_add_string(&b, st->live_digest, strlen(st->live_digest));
        jl_buf_adds(&b, ",\"rebuilt_digest\":");
        jl_json_add_string(&b, st->rebuilt_digest, strlen(st->rebuilt_digest));
        const struct {
            const char *name;
            char **rows;
            size_t n;
        } lists[] = {{"only_live", st->only_live, st->n_only_live},
                     {"only_rebuilt", st->only_rebuilt, st->n_only_rebuilt}};
        for (size_t l = 0; l < 2; l++) {
            jl_buf_addf(&b, ",\"%s\":[", lists[l].name);
            for (size_t i = 0; i < lists[l].n; i++) {
                if (i > 0)
                    jl_buf_adds(&b, ",");
                jl_json_add_string(&b, lists[l].rows[i], strlen(lists[l].rows[i]));
            }
            jl_buf_adds(&b, "]");
        }
    } else {
        double secs = job_seconds(st);
        jl_buf_adds(&b, ",\"state\":");
        jl_json_add_string(&b, st->state, strlen(st->state)); /* the projector's text */
        jl_buf_addf(&b,
                    ",\"events\":%" PRIu64 ",\"messages\":%" PRIu64
                    ",\"seconds\":%.3f,\"events_per_second\":%.0f,\"checkpoint\":%" PRIu64
                    ",\"file\":",
                    st->events, st->applied, secs, secs > 0 ? (double)st->events / secs : 0.0,
                    st->checkpoint);
        jl_json_add_string(&b, st->file, strlen(st->file));
        if (st->error[0] != 0) {
            jl_buf_adds(&b, ",\"error\":");
            jl_json_add_string(&b, st->error, strlen(st->error));
        }
    }
    jl_buf_adds(&b, "}\n");
    int rc = cli_print_json(&b, verify ? "verify result" : "rebuild result");
    jl_buf_cleanup(&b);
    return rc;
}

/* Rows of a verify difference for one line of stderr: "a; b; c" or "none". */
static void join_rows(char *out, size_t n, char **rows, size_t n_rows)
{
    size_t w = 0;
    out[0] = 0;
    for (size_t i = 0; i < n_rows && w < n; i++) {
        int k = snprintf(out + w, n - w, "%s%s", i ? "; " : "", rows[i]);
        w += k > 0 ? (size_t)k : 0;
    }
    if (n_rows == 0)
        snprintf(out, n, "none");
}

/* The exit status of a finished job, with what went wrong on stderr. */
static int outcome(const Jetledger__RebuildStatus *st, bool verify)
{
    if (strcmp(st->state, "done") != 0) {
        /* The projector's reason may start with the state itself ("cancelled: ..."). */
        const char *why = st->error;
        size_t n = strlen(st->state);
        if (strncmp(why, st->state, n) == 0 && strncmp(why + n, ": ", 2) == 0)
            why += n + 2;
        cli_error("%s %s: %s", verify ? "verify" : "rebuild", st->state,
                  why[0] ? why : "(no reason given)");
        return CLI_REJECTED;
    }
    if (verify && !st->match) {
        char live[1400], rebuilt[1400];
        join_rows(live, sizeof(live), st->only_live, st->n_only_live);
        join_rows(rebuilt, sizeof(rebuilt), st->only_rebuilt, st->n_only_rebuilt);
        cli_error("read model differs at sequence %" PRIu64
                  "; first rows only in the live model: %s / only in the rebuilt model: %s",
                  st->verified_seq, live, rebuilt);
        return CLI_REJECTED;
    }
    return CLI_OK;
}

/* Start a job with @p request (@p start), follow it, report it. */
static int run(cli_ctx *ctx, const char *kind, const char *request, const ProtobufCMessage *start)
{
    bool verify = strcmp(kind, "verify") == 0;
    job j = {.ctx = ctx, .projector = ctx->argv[0], .kind = kind, .tty = isatty(2) != 0};
    Jetledger__RebuildStatus *st = NULL, *final = NULL;
    int rc = CLI_OK;
    /* --instance: that one of the projector's instances from the start, not any one. */
    if (ctx->opts.instance != NULL)
        snprintf(j.instance, sizeof(j.instance), "%s", ctx->opts.instance);

    /* Before the request: a Ctrl-C from now on cancels the job instead of orphaning it. */
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaddset(&sa.sa_mask, SIGINT); /* one handler at a time: the count and the first signal */
    sigaddset(&sa.sa_mask, SIGTERM);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    /* The client library's threads are made with the signals blocked (they inherit this
     * mask), so the handler runs on this thread only, one signal at a time: also the thread
     * that delivers replies, made at the first request. A signal meanwhile waits for it. */
    sigset_t both;
    sigemptyset(&both);
    sigaddset(&both, SIGINT);
    sigaddset(&both, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &both, NULL);
    j.conn = cli_connect(ctx, &rc);
    int64_t asked_ns = now_ns();
    if (rc == CLI_OK)
        st = admin(&j, request, start, &rc);
    pthread_sigmask(SIG_UNBLOCK, &both, NULL);
    if (st == NULL && j.conn != NULL && cli_request_timed_out()) {
        /* No reply in time is not "not started": a busy projector may have taken it, and may
         * even have finished it (a Ctrl-C meanwhile then cancels it if it still runs). */
        Jetledger__GetRebuildStatus get = JETLEDGER__GET_REBUILD_STATUS__INIT;
        int rc2 = CLI_OK;
        Jetledger__RebuildStatus *now = admin(&j, "GetRebuildStatus", &get.base, &rc2);
        /* Ours if it started after we asked (by the projector's clock, give or take 5 s for a
         * running one) and was requested: not another operator's job, nor a version rebuild
         * an instance started by itself (a rollout), which Ctrl-C here would cancel. An ended
         * one that started before we asked is another's, and ours may still start. */
        if (now != NULL && strcmp(now->job, kind) == 0 && strcmp(now->reason, "requested") == 0 &&
            now->started_at_ns >= asked_ns - (finished(now) ? 0 : 5000000000LL)) {
            if (finished(now))
                cli_error("the %s started on %s after all, and has ended", kind, j.projector);
            else
                cli_error("a %s is running on %s after all: following it (Ctrl-C cancels it)", kind,
                          j.projector);
            st = now;
            rc = CLI_OK;
        } else {
            free_status(now);
            /* The request may still be waiting in a busy (or paused) projector: say so, rather
             * than leave the operator to believe nothing will happen. */
            cli_error("the %s may still start on %s once it reads the request (its log says "
                      "\"%s started\"); running it again meanwhile is refused while one runs",
                      kind, j.projector, kind);
            /* A Ctrl-C during the request waited for it, and has nothing to cancel yet. */
            if (interrupted > 0)
                cli_error("nothing was cancelled: once it runs, `jetledger status` shows it and "
                          "%s.admin.CancelRebuild cancels it",
                          j.projector);
        }
    }
    if (st != NULL) {
        j.started_at_ns = st->started_at_ns;
        /* Several instances share "<projector>.admin.<Request>": ask the one running the job,
         * or a status or a cancel could land on another. */
        if (instance_name(st->instance, sizeof(j.instance)))
            snprintf(j.instance, sizeof(j.instance), "%s", st->instance);
        if (finished(st)) { /* found ended above */
            final = st;
            st = NULL;
        } else {
            show_progress(&j, st, false);
            rc = follow(&j, &final);
        }
    }
    if (final != NULL) {
        int printed = print_result(final, verify);
        rc = outcome(final, verify);
        if (rc == CLI_OK) /* a match nobody could read is no success */
            rc = printed;
    }
    free_status(st);
    free_status(final);
    jl_conn_close(j.conn, 0);
    return rc;
}

int cli_rebuild(cli_ctx *ctx)
{
    if (ctx->argc != 1) {
        cli_error("usage: jetledger rebuild <projector> [--from-seq N | --from-time RFC3339] "
                  "[--keep-old] [--instance NAME]");
        return CLI_USAGE;
    }
    Jetledger__Rebuild m = JETLEDGER__REBUILD__INIT;
    m.from_seq = ctx->opts.from_seq;
    /* No message is older than 1970: an earlier time is its first instant, not 0, which
     * would mean no time given (and the start refused as such were messages removed). */
    m.from_time_ns = !ctx->opts.has_from_time     ? 0
                     : ctx->opts.from_time_ns > 0 ? ctx->opts.from_time_ns
                                                  : 1;
    m.keep_old = ctx->opts.keep_old;
    return run(ctx, "rebuild", "Rebuild", &m.base);
}

int cli_verify(cli_ctx *ctx)
{
    if (ctx->argc != 1 || ctx->opts.from_seq != 0 || ctx->opts.has_from_time ||
        ctx->opts.keep_old) {
        cli_error("usage: jetledger verify <projector> [--instance NAME] (it always compares the "
                  "whole stream)");
        return CLI_USAGE;
    }
    Jetledger__Verify m = JETLEDGER__VERIFY__INIT;
    return run(ctx, "verify", "Verify", &m.base);
}

/* Ask projector argv[0] (or its instance --instance) the admin request @p request; the reply's
 * result (a @p result_type, to free) or NULL, said, with the exit status in *out_rc. */
static ProtobufCMessage *admin_ask(cli_ctx *ctx, jl_conn **out_conn, const char *request,
                                   const ProtobufCMessage *m,
                                   const ProtobufCMessageDescriptor *result_type, int *out_rc)
{
    const char *projector = ctx->argv[0];
    char subject[256];
    snprintf(subject, sizeof(subject), "%s.admin.%s%s%s", projector,
             ctx->opts.instance ? ctx->opts.instance : "", ctx->opts.instance ? "." : "", request);
    *out_rc = CLI_OK;
    *out_conn = cli_connect(ctx, out_rc);
    return *out_rc == CLI_OK
               ? cli_ask(ctx, *out_conn, "projector", projector, subject, m, result_type, out_rc)
               : NULL;
}

/* Append @p m's JSON to @p b with @p first (a field always said, e.g. "\"event_index\":0")
 * written before the rest, which is @p m without it (its default is left out). */
static jl_status add_json_with(jl_buf *b, const char *first, const ProtobufCMessage *m)
{
    jl_status s = jl_buf_addf(b, "{%s", first);
    size_t at = b->len;
    if (s == JL_OK)
        s = jl_pb_to_json(b, m);
    if (s == JL_OK && b->len - at > 2) { /* "{...}": its '{' becomes the ',' */
        b->data[at] = ',';
    } else if (s == JL_OK) { /* "{}" */
        b->data[at] = '}';
        b->len = at + 1;
        b->data[b->len] = 0;
    }
    return s;
}

int cli_dead_letters(cli_ctx *ctx)
{
    if (ctx->argc != 1) {
        cli_error("usage: jetledger dead-letters <projector> [--instance NAME]");
        return CLI_USAGE;
    }
    Jetledger__GetDeadLetters m = JETLEDGER__GET_DEAD_LETTERS__INIT;
    m.limit = 500;
    int rc;
    jl_conn *conn;
    ProtobufCMessage *res =
        admin_ask(ctx, &conn, "GetDeadLetters", &m.base, &jetledger__dead_letters__descriptor, &rc);
    if (res != NULL) {
        /* Written out field by field: a count of 0 and no letters are said, not left out. */
        const Jetledger__DeadLetters *dl = (const Jetledger__DeadLetters *)res;
        jl_buf b;
        jl_buf_init(&b, CLI_JSON_MAX);
        jl_status s = jl_buf_addf(&b, "{\"count\":%" PRIu64 ",\"instance\":", dl->count);
        if (s == JL_OK)
            s = jl_json_add_string(&b, dl->instance, strlen(dl->instance));
        if (s == JL_OK)
            s = jl_buf_adds(&b, ",\"letters\":[");
        for (size_t i = 0; s == JL_OK && i < dl->n_letters; i++) {
            if (i > 0)
                s = jl_buf_adds(&b, ",");
            /* event_index 0 (the first event of its message) is a value here, not a default
             * to leave out: written first, then the rest without it. */
            Jetledger__DeadLetter rest = *dl->letters[i];
            rest.event_index = 0;
            char first[32];
            snprintf(first, sizeof(first), "\"event_index\":%d", (int)dl->letters[i]->event_index);
            if (s == JL_OK)
                s = add_json_with(&b, first, &rest.base);
        }
        if (s == JL_OK)
            s = jl_buf_adds(&b, "]}\n");
        if (s == JL_OK) {
            fputs(jl_buf_str(&b), stdout);
        } else {
            cli_error("the dead letters are too large to print");
            rc = CLI_FAILED;
        }
        jl_buf_cleanup(&b);
        protobuf_c_message_free_unpacked(res, NULL);
    }
    jl_conn_close(conn, 0);
    return rc;
}

int cli_outbox(cli_ctx *ctx)
{
    bool dismiss = ctx->argc == 3 && strcmp(ctx->argv[1], "dismiss") == 0;
    if ((ctx->argc != 1 && !dismiss) || (dismiss && ctx->opts.all)) {
        cli_error("usage: jetledger outbox <projector> [--all] [--instance NAME] | jetledger "
                  "outbox <projector> dismiss <command-id> [--instance NAME]");
        return CLI_USAGE;
    }
    if (dismiss && !jl_valid_id(ctx->argv[2])) {
        cli_error("a command id is 1 to %d printable ASCII characters without spaces, not '%s'",
                  JL_MAX_ID_LEN, ctx->argv[2]);
        return CLI_USAGE;
    }
    Jetledger__GetOutbox get = JETLEDGER__GET_OUTBOX__INIT;
    get.limit = 500;
    get.all = ctx->opts.all;
    Jetledger__DismissOutbox dis = JETLEDGER__DISMISS_OUTBOX__INIT;
    dis.command_id = dismiss ? ctx->argv[2] : NULL;
    int rc;
    jl_conn *conn;
    ProtobufCMessage *res = dismiss ? admin_ask(ctx, &conn, "DismissOutbox", &dis.base,
                                                &jetledger__outbox_row__descriptor, &rc)
                                    : admin_ask(ctx, &conn, "GetOutbox", &get.base,
                                                &jetledger__outbox__descriptor, &rc);
    if (res != NULL) {
        jl_buf b;
        jl_buf_init(&b, CLI_JSON_MAX);
        jl_status s = JL_OK;
        if (dismiss) {
            s = jl_buf_adds(&b, "{\"dismissed\":");
            if (s == JL_OK)
                s = jl_pb_to_json(&b, res);
        } else {
            /* The counts always said, 0 too (answered: with --all); each row as protobuf's JSON. */
            const Jetledger__Outbox *o = (const Jetledger__Outbox *)res;
            s = jl_buf_addf(&b, "{\"waiting\":%" PRIu64 ",\"refused\":%" PRIu64, o->waiting,
                            o->refused);
            if (s == JL_OK && ctx->opts.all) /* counted only then */
                s = jl_buf_addf(&b, ",\"answered\":%" PRIu64, o->answered);
            if (s == JL_OK)
                s = jl_buf_adds(&b, ",\"instance\":");
            if (s == JL_OK)
                s = jl_json_add_string(&b, o->instance, strlen(o->instance));
            if (s == JL_OK)
                s = jl_buf_adds(&b, ",\"rows\":[");
            for (size_t i = 0; s == JL_OK && i < o->n_rows; i++) {
                /* attempts 0 (not sent yet) is said, as the counts are. */
                Jetledger__OutboxRow rest = *o->rows[i];
                rest.attempts = 0;
                char first[48];
                snprintf(first, sizeof(first), "\"attempts\":%" PRId64, o->rows[i]->attempts);
                if (i > 0)
                    s = jl_buf_adds(&b, ",");
                if (s == JL_OK)
                    s = add_json_with(&b, first, &rest.base);
            }
            if (s == JL_OK)
                s = jl_buf_adds(&b, "]");
        }
        if (s == JL_OK)
            s = jl_buf_adds(&b, "}\n");
        if (s == JL_OK) {
            rc = cli_print_json(&b, "outbox");
        } else {
            cli_error("the outbox is too large to print as JSON (%s)", jl_status_str(s));
            rc = CLI_FAILED;
        }
        jl_buf_cleanup(&b);
        protobuf_c_message_free_unpacked(res, NULL);
    }
    jl_conn_close(conn, 0);
    return rc;
}
