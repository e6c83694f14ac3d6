#include "jetledger/app.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "conn_int.h"
#include "deadline.h"
#include "jetledger/conn.h"
#include "jetledger/log.h"

static pthread_mutex_t stop_mu = PTHREAD_MUTEX_INITIALIZER;
/* Both conditions below wait on CLOCK_MONOTONIC (clocks_init()): the watch's tick and the
 * connect watchdog's must not stop for as long as the wall clock steps back. */
static pthread_cond_t stop_cv;
static pthread_cond_t watchdog_cv; /* see connect_watchdog() */
static pthread_once_t clocks_once = PTHREAD_ONCE_INIT;

static void clocks_init(void)
{
    jl__cond_init_monotonic(&stop_cv);
    jl__cond_init_monotonic(&watchdog_cv);
}

static bool stop_requested = false;
static bool started = false; /* the service holds work (connected and open) */
static void (*stop_fn)(void *) = NULL;
static void *stop_closure = NULL;
static bool conn_lost = false; /* the NATS connection closed for good: exit 1 */

/* The readiness file (JL_READY_FILE), "" for none: removed on every way out. */
static char ready_path[512];
/* The liveness file (JL_ALIVE_FILE), "" for none: rewritten while the service's work goes on
 * (see conn_watch), so that a probe of its age finds a stuck service. */
static char alive_path[512];

/*
 * Whether a probe's file (@p path, given as @p flag) can be what the service makes of it: a
 * name it may remove (absent, or an empty regular file as it writes them: a mistyped path must
 * not delete another file; so too "<path>.tmp", written and renamed over it) in a directory it
 * can write (else the service would run and never be ready, saying so only at warn once it
 * answers).
 */
static bool probe_file_usable(const char *path, const char *flag, char *err, size_t errlen)
{
    struct stat st;
    char tmp[600];
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    const char *const names[2] = {path, tmp};
    for (int i = 0; i < 2; i++) {
        if (lstat(names[i], &st) == 0 && (!S_ISREG(st.st_mode) || st.st_size != 0)) {
            snprintf(err, errlen,
                     "%s %s: %s exists and is not an empty file (the service writes and "
                     "removes an empty one): refusing to remove it",
                     flag, path, names[i]);
            return false;
        }
    }
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW, 0644);
    if (fd < 0) {
        snprintf(err, errlen, "cannot write %s %s: %s", flag, path, strerror(errno));
        return false;
    }
    close(fd);
    unlink(tmp);
    return true;
}

/* On a way out: neither file outlives the service (async-signal-safe). */
static void remove_probe_files(void)
{
    if (ready_path[0] != 0)
        unlink(ready_path);
    if (alive_path[0] != 0)
        unlink(alive_path);
}

/* Write (an empty file, whole or not at all: a probe never sees a half-made one) or remove
 * @p path, when set; false when it could not be written (errno says why). */
static bool probe_file(const char *path, bool up)
{
    char tmp[600];
    if (path[0] == 0)
        return true;
    if (!up) {
        unlink(path);
        return true;
    }
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW, 0644);
    if (fd < 0 || close(fd) != 0 || rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        errno = e;
        return false;
    }
    return true;
}

void jl_app_config(jl_config *cfg, const char *service, const char *usage_line, int argc,
                   char **argv)
{
    char err[512] = "";
    jl_config_init(cfg);
    jl_status s = jl_config_load(cfg, argc, argv, NULL, 0, NULL, err, sizeof(err));
    if (s == JL_ERR_STOPPED) {
        printf("%s\n\n%s", usage_line, jl_config_usage());
        /* Help that could not be written (a full disk, a closed pipe) is no success. */
        if (fflush(stdout) != 0 || ferror(stdout)) {
            fprintf(stderr, "%s: cannot write the help: %s\n", service, strerror(errno));
            exit(JL_EXIT_FAILURE);
        }
        exit(JL_EXIT_OK);
    }
    if (s != JL_OK) {
        fprintf(stderr, "%s: %s\n\n%s\n\n%s", service, err, usage_line, jl_config_usage());
        exit(JL_EXIT_USAGE);
    }
    jl_log_open(stderr, cfg->log_level, cfg->name[0] ? cfg->name : service);
    /* One left by a run that was killed (the directory outlives a container's restart): not
     * ready until this one answers. */
    snprintf(ready_path, sizeof(ready_path), "%s", cfg->ready_file);
    snprintf(alive_path, sizeof(alive_path), "%s", cfg->alive_file);
    char why[1200];
    if ((ready_path[0] != 0 && !probe_file_usable(ready_path, "--ready-file", why, sizeof(why))) ||
        (alive_path[0] != 0 && !probe_file_usable(alive_path, "--alive-file", why, sizeof(why)))) {
        ready_path[0] = alive_path[0] = 0; /* not ours: left alone */
        fprintf(stderr, "%s: %s\n", service, why);
        exit(JL_EXIT_USAGE);
    }
    /* A liveness file left by an earlier run is gone until this one's work goes on (a probe
     * takes no file for a service starting). */
    probe_file(ready_path, false);
    probe_file(alive_path, false);
}

/* Request the stop: called with stop_mu held, which it releases. The service's stop function
 * runs under it, so that it never runs on what main() has freed once it cleared stop_fn (it is
 * a flag store: jl_projector_stop). */
static void stop_locked(void)
{
    stop_requested = true;
    pthread_cond_broadcast(&stop_cv);
    if (stop_fn != NULL)
        stop_fn(stop_closure);
    pthread_mutex_unlock(&stop_mu);
}

/* A line the signal thread logs, written by a thread of its own: a log sink that blocks (a
 * full pipe nobody reads) must hold up neither a stop nor an exit. Freed by the last of the two
 * to let go of it. */
typedef struct sig_line {
    jl_log_level level;
    const char *msg; /* static */
    char fields[96]; /* JSON members, or "" */
    atomic_int refs;
    atomic_bool written;
} sig_line;

static void sig_line_drop(sig_line *l)
{
    if (atomic_fetch_sub(&l->refs, 1) == 1)
        free(l);
}

static void *sig_line_write(void *arg)
{
    sig_line *l = arg;
    if (l->fields[0] != 0)
        jl_log(l->level, l->msg, "%s", l->fields);
    else
        jl_log(l->level, l->msg, NULL);
    atomic_store(&l->written, true);
    sig_line_drop(l);
    return NULL;
}

/* Log @p msg with @p fields from the signal thread, waiting at most @p wait_ms for the line to
 * be written (an exit that follows would cut it). */
static void sig_log(jl_log_level level, const char *msg, const char *fields, int wait_ms)
{
    pthread_t t;
    sig_line *l = calloc(1, sizeof(*l));
    if (l == NULL)
        return;
    l->level = level;
    l->msg = msg;
    snprintf(l->fields, sizeof(l->fields), "%s", fields);
    atomic_init(&l->refs, 2);
    atomic_init(&l->written, false);
    if (pthread_create(&t, NULL, sig_line_write, l) != 0) {
        free(l);
        return;
    }
    pthread_detach(t);
    for (int waited = 0; waited < wait_ms && !atomic_load(&l->written); waited++)
        usleep(1000);
    sig_line_drop(l);
}

/* The stop's bound whatever began it (signal_thread starts its own from the signal): a
 * connection closed for good, a projector's run that failed. A close step stuck (the client
 * library in a handshake that never ends) must not keep the process for ever. */
static void *stop_bound(void *arg)
{
    (void)arg;
    struct timespec ts = {.tv_sec = JL_APP_SHUTDOWN_MS / 1000,
                          .tv_nsec = (long)(JL_APP_SHUTDOWN_MS % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
    char f[64];
    snprintf(f, sizeof(f), "\"bound_ms\":%d", JL_APP_SHUTDOWN_MS);
    remove_probe_files();
    sig_log(JL_LOG_ERROR, "graceful stop took too long: exiting now", f, 100);
    _exit(JL_EXIT_FAILURE);
    return NULL;
}

/* Set by the first of signal_thread and stop_bound_start to bound the stop: one bound, one
 * "took too long" line. */
static atomic_bool stop_bounded;

static void stop_bound_start(void)
{
    pthread_t t;
    if (!atomic_exchange(&stop_bounded, true) && pthread_create(&t, NULL, stop_bound, NULL) == 0)
        pthread_detach(t);
}

static void *signal_thread(void *arg)
{
    sigset_t *set = arg;
    int sig = 0, first = 0;
    int count = 0;
    int64_t first_at = 0;
    for (;;) {
        if (count == 0) {
            if (sigwait(set, &sig) != 0)
                continue;
        } else {
            /* Stopping: each step of the close has its own bound, and together they could
             * exceed the one promised (a frozen server, appends in flight). Past it, out. */
            int64_t left = first_at + JL_APP_SHUTDOWN_MS - jl__mono_ms();
            struct timespec ts = {.tv_sec = left > 0 ? left / 1000 : 0,
                                  .tv_nsec = left > 0 ? (long)(left % 1000) * 1000000L : 0};
            sig = sigtimedwait(set, NULL, &ts);
            if (sig < 0 && errno == EINTR)
                continue;
            if (sig < 0) {
                char f[64];
                snprintf(f, sizeof(f), "\"bound_ms\":%d", JL_APP_SHUTDOWN_MS);
                remove_probe_files();
                sig_log(JL_LOG_ERROR, "graceful stop took too long: exiting now", f, 100);
                _exit(JL_EXIT_FAILURE);
            }
        }
        if (count > 0 && sig == SIGTERM && first == SIGTERM && jl__mono_ms() - first_at < 1000) {
            /* One stop sent twice: `timeout` and some supervisors signal the process, then
             * its group. Not a second request to hurry. */
            sig_log(JL_LOG_INFO, "repeated SIGTERM within a second ignored", "", 0);
            continue;
        }
        if (count == 0) {
            first = sig;
            first_at = jl__mono_ms();
            atomic_store(&stop_bounded, true); /* bounded here, from now */
        }
        char f[64];
        if (++count > 1) {
            snprintf(f, sizeof(f), "\"signal\":%d", sig);
            remove_probe_files();
            sig_log(JL_LOG_WARN, "second signal: exiting now", f, 100);
            _exit(130);
        }
        snprintf(f, sizeof(f), "\"signal\":\"%s\"", sig == SIGTERM ? "SIGTERM" : "SIGINT");
        sig_log(JL_LOG_INFO, "stopping", f, 100);
        pthread_mutex_lock(&stop_mu);
        if (!started) {
            /* Still waiting for NATS: nothing is in hand, so a stop is an exit. */
            sig_log(JL_LOG_INFO, "stopped before start", "", 100);
            _exit(JL_EXIT_OK);
        }
        stop_locked();
    }
    return NULL;
}

void jl_app_signals(void (*on_stop)(void *closure), void *closure)
{
    static sigset_t set;
    pthread_t t;
    pthread_once(&clocks_once, clocks_init);
    pthread_mutex_lock(&stop_mu);
    stop_fn = on_stop;
    stop_closure = closure;
    pthread_mutex_unlock(&stop_mu);
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    /* A peer closing a socket must not kill the service. */
    signal(SIGPIPE, SIG_IGN);
    if (pthread_create(&t, NULL, signal_thread, &set) == 0)
        pthread_detach(t);
}

void jl_app_wait_for_stop(void)
{
    pthread_mutex_lock(&stop_mu);
    while (!stop_requested)
        pthread_cond_wait(&stop_cv, &stop_mu);
    pthread_mutex_unlock(&stop_mu);
}

typedef struct watched {
    jl_conn *conn;
    jl_producer *producer;       /* NULL for a projector: its connection is the one above */
    jl_projector *projector;     /* NULL for a producer */
    bool not_ready;              /* not answering at start: made ready once it does */
    int64_t stall_limit_ms;      /* no progress for longer: stuck (see alive()) */
    bool stuck;                  /* said so */
    bool write_failed;           /* said so */
    const jl_projector_def *def; /* the projector's, for its streams' names */
    int64_t stats_every_ns;      /* 0: no stats lines */
    int64_t stats_at_ns;         /* jl__mono_ns() of the last one */
} watched;

/*
 * One "stats" line at info: the service's counters since it started (monotonic, so that a log
 * pipeline can make rates of them), for operators without another way to see them. A producer:
 * its commands and what became of them; a projector: each stream's checkpoint, and what it set
 * aside or lost on the way.
 */
static void log_stats(watched *w)
{
    if (w->producer != NULL) {
        jl_producer_stats st;
        jl_producer_get_stats(w->producer, &st);
        jl_log(JL_LOG_INFO, "stats",
               "\"commands\":%" PRIu64 ",\"accepted\":%" PRIu64 ",\"conflicts\":%" PRIu64
               ",\"expired\":%" PRIu64 ",\"overloaded\":%" PRIu64 ",\"in_progress\":%" PRIu64
               ",\"cache_hits\":%" PRIu64 ",\"loads\":%" PRIu64 ",\"snapshots_saved\":%" PRIu64
               ",\"verified_stale\":%" PRIu64,
               st.commands, st.accepted, st.conflicts, st.expired, st.overloaded, st.in_progress,
               st.cache_hits, st.loads, st.snapshots_saved, st.verified_stale);
        return;
    }
    char cps[JL_MAX_SOURCES * 96] = "";
    size_t n = 0, count = w->def->n_sources > 0 ? w->def->n_sources : 1;
    for (size_t i = 0; i < count && i < JL_MAX_SOURCES; i++) {
        const char *stream = w->def->n_sources > 0 ? w->def->sources[i].stream : w->def->stream;
        int m = snprintf(cps + n, sizeof(cps) - n, "%s\"%.63s\":%" PRIu64, i > 0 ? "," : "", stream,
                         jl_projector_checkpoint_of(w->projector, stream));
        if (m < 0 || (size_t)m >= sizeof(cps) - n)
            break;
        n += (size_t)m;
    }
    jl_log(JL_LOG_INFO, "stats",
           "\"checkpoints\":{%s},\"dead_letters\":%" PRIu64 ",\"lost_deliveries\":%" PRIu64, cps,
           jl_projector_dead_letters(w->projector), jl_projector_lost_deliveries(w->projector));
}

static bool ready(bool up);

/* The longest a service may show no progress and be alive: each of its waits is bounded by the
 * request timeout (a command's append, then a read after it), its retries back off 5 s at
 * most. */
static int64_t stall_limit_ms(const jl_config *cfg)
{
    return 2 * cfg->request_timeout_ms + 10000;
}

/* Renew the liveness file while the service's work goes on: a producer made progress on its
 * commands lately or holds none, a projector's stream loops turn. A call that blocks (a deadlock on
 * the producer's lock) renews nothing either: the probe then finds the file old and restarts the
 * service. */
static void alive(watched *w)
{
    if (alive_path[0] == 0)
        return;
    int64_t stalled = w->producer != NULL ? jl_producer_stalled_ms(w->producer)
                                          : jl_projector_stalled_ms(w->projector);
    if (stalled > w->stall_limit_ms) {
        if (!w->stuck)
            jl_log(JL_LOG_ERROR, "stuck: the liveness file is no longer renewed",
                   "\"stalled_ms\":%" PRId64 ",\"limit_ms\":%" PRId64
                   ",\"hint\":\"no command finished (producer) or a stream loop did not turn "
                   "(projector) for that long; a liveness probe restarts the service\"",
                   stalled, w->stall_limit_ms);
        w->stuck = true;
        return;
    }
    if (w->stuck)
        jl_log(JL_LOG_WARN, "going on again: the liveness file is renewed", NULL);
    w->stuck = false;
    if (!probe_file(alive_path, true) && !w->write_failed) {
        char esc[600];
        w->write_failed = true;
        jl_log(JL_LOG_WARN, "cannot write the liveness file", "\"file\":\"%s\",\"error\":\"%s\"",
               jl_log_str(esc, sizeof(esc), alive_path), strerror(errno));
    }
}

/*
 * Watches the connection while the service runs. It reconnects forever, except where the client
 * library closes it for good (the server refused its credentials twice: a rotated or expired
 * credential, an authorization change reloaded by the server). A service left with a closed
 * connection would answer nothing while it still looked ready: it stops instead, not ready,
 * with status 1, for its supervisor to start it again.
 */
static void *conn_watch(void *arg)
{
    watched *w = arg;
    natsConnection *nc = jl_conn_nats(w->conn);
    pthread_mutex_lock(&stop_mu);
    while (!stop_requested) {
        struct timespec until = jl__monotonic_in(500);
        pthread_cond_timedwait(&stop_cv, &stop_mu, &until);
        if (stop_requested)
            break;
        /* Not under stop_mu: the connection's lock may be held by a reconnect attempt (up to
         * its connect timeout), and a signal must not wait for that. */
        pthread_mutex_unlock(&stop_mu);
        if (w->not_ready && (w->projector == NULL || jl_projector_serving(w->projector)) &&
            jl_conn_settle(w->conn)) {
            w->not_ready = !ready(true); /* caught up, subscribed: it answers now */
        }
        alive(w);
        if (w->stats_every_ns > 0 && jl__mono_ns() - w->stats_at_ns >= w->stats_every_ns) {
            w->stats_at_ns = jl__mono_ns();
            log_stats(w);
        }
        bool closed = natsConnection_IsClosed(nc) ||
                      (w->producer != NULL && jl_producer_conn_closed(w->producer));
        pthread_mutex_lock(&stop_mu);
        if (stop_requested || !closed)
            continue;
        conn_lost = true;
        pthread_mutex_unlock(&stop_mu);
        /* Bounded from here, as a signal's stop is: a projector's stream loop stuck in an
         * apply would otherwise keep jl_projector_run() from returning, not ready, for ever. */
        stop_bound_start();
        jl_log(JL_LOG_ERROR, "nats connection closed for good: stopping",
               "\"hint\":\"the server refused this client (check its credentials); the "
               "service exits 1 to be started again\"");
        remove_probe_files();
        pthread_mutex_lock(&stop_mu);
        stop_locked();
        return NULL;
    }
    pthread_mutex_unlock(&stop_mu);
    return NULL;
}

/* Start conn_watch on @p w (which outlives it); false when no thread could be made (then
 * there is none). */
static bool watch_start(pthread_t *t, watched *w)
{
    pthread_once(&clocks_once, clocks_init);
    return pthread_create(t, NULL, conn_watch, w) == 0;
}

/* Make conn_watch return (a stop is under way or done) and wait for it. */
static void watch_stop(pthread_t t, bool running)
{
    if (!running)
        return;
    pthread_mutex_lock(&stop_mu);
    stop_requested = true;
    pthread_cond_broadcast(&stop_cv);
    pthread_mutex_unlock(&stop_mu);
    pthread_join(t, NULL);
}

static void fail(const char *what, jl_status s, const char *err)
{
    char esc[1200];
    jl_log(JL_LOG_ERROR, what, "\"status\":\"%s\",\"error\":\"%s\"", jl_status_str(s),
           jl_log_str(esc, sizeof(esc), err));
}

/* The readiness file: there while the service answers (a Kubernetes readiness probe tests it,
 * so that a rollout stops an old pod only once a new one has subscribed). Written (@p up) or
 * removed; false when it could not be written, which the watch tries again (a moment without
 * space or descriptors must not leave a service that answers unready for good). Said once
 * until it works. */
static bool ready(bool up)
{
    static atomic_bool failing;
    if (probe_file(ready_path, up)) {
        atomic_store(&failing, false);
        return true;
    }
    if (!atomic_exchange(&failing, true)) {
        char esc[600];
        jl_log(JL_LOG_WARN, "cannot write the readiness file, trying again",
               "\"file\":\"%s\",\"error\":\"%s\"", jl_log_str(esc, sizeof(esc), ready_path),
               strerror(errno));
    }
    return false;
}

static pthread_mutex_t watchdog_mu = PTHREAD_MUTEX_INITIALIZER;
static bool connect_done;

/* Exit 1, saying so, once a connect attempt has run past its bound (@p arg: ms): libnats would
 * spin on it for ever, and a service that neither starts nor exits is worse than a restart. */
static void *connect_watchdog(void *arg)
{
    int64_t bound_ns = (int64_t)(intptr_t)arg * 1000000LL;
    pthread_mutex_lock(&watchdog_mu);
    while (!connect_done) {
        int64_t since = jl__conn_connecting_since_ns();
        if (since != 0 && jl__mono_ns() - since > bound_ns) {
            fail("cannot start", JL_ERR_UNAVAILABLE, JL_CONN_STUCK_MSG);
            remove_probe_files();
            _exit(JL_EXIT_FAILURE);
        }
        /* Woken at once by watchdog_stop(): the start goes on without waiting for a tick. */
        struct timespec at = jl__monotonic_in(250);
        pthread_cond_timedwait(&watchdog_cv, &watchdog_mu, &at);
    }
    pthread_mutex_unlock(&watchdog_mu);
    return NULL;
}

static pthread_t watchdog;
static bool watchdog_running;

/* Start connect_watchdog() for the service's start (every connection it opens, a producer's
 * second one too), each attempt bounded by jl_conn_stuck_after_ms(). */
static void watchdog_start(const jl_config *cfg)
{
    pthread_mutex_lock(&watchdog_mu);
    connect_done = false;
    pthread_mutex_unlock(&watchdog_mu);
    pthread_once(&clocks_once, clocks_init);
    watchdog_running = pthread_create(&watchdog, NULL, connect_watchdog,
                                      (void *)(intptr_t)jl_conn_stuck_after_ms(cfg)) == 0;
}

static void watchdog_stop(void)
{
    pthread_mutex_lock(&watchdog_mu);
    connect_done = true;
    pthread_cond_signal(&watchdog_cv);
    pthread_mutex_unlock(&watchdog_mu);
    if (watchdog_running)
        pthread_join(watchdog, NULL);
    watchdog_running = false;
}

/* Close the connection and let the library's threads finish with it before the process exits
 * (jl_conn_release_library): milliseconds as a rule, 1 s at most, within the shutdown bound. */
static void close_and_release(jl_conn *conn, int64_t timeout_ms)
{
    jl_conn_close(conn, timeout_ms);
    jl_conn_release_library(1000);
}

/*
 * The end of a service's run: "stopped", and its exit status (@p ok: 0, else 1). A service
 * whose close gave up on a handler still running (!@p closed: its producer or projector left
 * allocated) did not finish the work in hand: 1, and at once, with _exit(): the exit()
 * handlers (the TLS library's clean-up among them) would run under the client library's
 * threads, which go on.
 */
static int stopped(bool closed, bool ok)
{
    jl_log(JL_LOG_INFO, "stopped", NULL);
    if (!closed) {
        fflush(NULL);
        _exit(JL_EXIT_FAILURE);
    }
    return ok ? JL_EXIT_OK : JL_EXIT_FAILURE;
}

int jl_app_run_producer(const jl_service_def *def, int argc, char **argv)
{
    jl_config cfg;
    jl_conn *conn = NULL;
    jl_producer *p = NULL;
    char err[1024] = "";
    char usage[256];

    snprintf(usage, sizeof(usage), "usage: %s [options]  (answers %s.cmd.* on NATS)", def->name,
             def->name);
    jl_app_config(&cfg, def->name, usage, argc, argv);
    jl_app_signals(NULL, NULL);
    watchdog_start(&cfg);
    jl_status s = jl_conn_open(&conn, &cfg, cfg.name[0] ? cfg.name : def->name,
                               JL_APP_CONNECT_WAIT_MS, err, sizeof(err));
    /* A cluster that is electing leaders (all nodes starting, a rolling restart) answers
     * JetStream calls late or not at all for a few seconds: keep trying, within bounds. */
    int64_t deadline = jl__mono_ms() + JL_APP_CONNECT_WAIT_MS;
    while (s == JL_OK) {
        s = jl_producer_open(&p, conn, def, &cfg, err, sizeof(err));
        /* (A cluster still forming also refuses with JetStream errors: "no suitable peers for
         * placement".) Bad configuration is JL_ERR_INVALID or JL_ERR_VERSION: no retry. */
        if ((s != JL_ERR_TIMEOUT && s != JL_ERR_UNAVAILABLE && s != JL_ERR_NATS) ||
            jl__mono_ms() >= deadline)
            break;
        char esc[1200];
        jl_log(JL_LOG_WARN, "start delayed, retrying", "\"status\":\"%s\",\"error\":\"%s\"",
               jl_status_str(s), jl_log_str(esc, sizeof(esc), err));
        nats_Sleep(1000);
        s = JL_OK;
    }
    watchdog_stop();
    if (s != JL_OK) {
        fail("cannot start", s, err);
        close_and_release(conn, 0);
        return JL_EXIT_FAILURE;
    }
    pthread_mutex_lock(&stop_mu);
    started = true;
    pthread_mutex_unlock(&stop_mu);
    /* Ready once the server holds its subscriptions (a connection reconnecting now keeps them in
     * its buffer, and a rolling update would stop the pod it replaces while nobody answers). */
    bool shown = jl_conn_settle(conn) && ready(true);
    pthread_t watch;
    watched w = {.conn = conn,
                 .producer = p,
                 .not_ready = !shown,
                 .stall_limit_ms = stall_limit_ms(&cfg),
                 .stats_every_ns = cfg.stats_interval_s * 1000000000LL,
                 .stats_at_ns = jl__mono_ns()};
    bool watching = watch_start(&watch, &w);
    jl_app_wait_for_stop();
    stop_bound_start();
    watch_stop(watch, watching); /* before: the watch may be making it ready */
    ready(false);
    probe_file(alive_path, false);
    /* Not freed: a handler may still use the connection, which then stays open until exit. */
    bool closed = jl_producer_close(p, JL_APP_SHUTDOWN_MS / 2);
    if (closed)
        close_and_release(conn, JL_APP_SHUTDOWN_MS / 2);
    return stopped(closed, !conn_lost);
}

static void stop_projector(void *closure)
{
    jl_projector_stop(closure);
}

int jl_app_run_projector(const jl_projector_def *def, int argc, char **argv)
{
    jl_config cfg;
    jl_conn *conn = NULL;
    jl_projector *p = NULL;
    char err[1024] = "";
    char usage[256];

    snprintf(usage, sizeof(usage),
             "usage: %s [options]  (builds <data-dir>/%s.db, answers %s.query.* on NATS)",
             def->name, def->name, def->name);
    jl_app_config(&cfg, def->name, usage, argc, argv);
    /* The stop callback needs the projector: block signals now, hand it over once open. */
    jl_app_signals(NULL, NULL);
    watchdog_start(&cfg);
    jl_status s = jl_conn_open(&conn, &cfg, cfg.name[0] ? cfg.name : def->name,
                               JL_APP_CONNECT_WAIT_MS, err, sizeof(err));
    if (s == JL_OK)
        s = jl_projector_open(&p, conn, def, &cfg, err, sizeof(err));
    watchdog_stop();
    if (s != JL_OK) {
        fail("cannot start", s, err);
        close_and_release(conn, 0);
        return JL_EXIT_FAILURE;
    }
    pthread_mutex_lock(&stop_mu);
    stop_fn = stop_projector;
    stop_closure = p;
    started = true;
    bool already = stop_requested;
    pthread_mutex_unlock(&stop_mu);
    if (already)
        jl_projector_stop(p);
    /* Far behind its streams, it answers (and is ready) once it has caught up. */
    bool shown = jl_projector_serving(p) && jl_conn_settle(conn) && ready(true);
    pthread_t watch;
    watched w = {.conn = conn,
                 .projector = p,
                 .not_ready = !shown,
                 .stall_limit_ms = stall_limit_ms(&cfg),
                 .def = def,
                 .stats_every_ns = cfg.stats_interval_s * 1000000000LL,
                 .stats_at_ns = jl__mono_ns()};
    bool watching = watch_start(&watch, &w);
    s = jl_projector_run(p);
    stop_bound_start();
    watch_stop(watch, watching); /* before: the watch may be making it ready */
    ready(false);
    probe_file(alive_path, false);
    if (s != JL_OK)
        fail("cannot run", s, jl_projector_errmsg(p));
    /* A signal from now on must not reach the projector the close frees (a second one still
     * exits at once). */
    pthread_mutex_lock(&stop_mu);
    stop_fn = NULL;
    stop_closure = NULL;
    pthread_mutex_unlock(&stop_mu);
    bool closed = jl_projector_close(p, JL_APP_SHUTDOWN_MS / 2);
    if (closed)
        close_and_release(conn, JL_APP_SHUTDOWN_MS / 2);
    return stopped(closed, s == JL_OK && !conn_lost);
}
