#include "jetledger/conn.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "conn_int.h"
#include "deadline.h"
#include "jetledger/log.h"

/* A server's URL as the client library gives it, credentials included (a token in the URL):
 * as long as the setting may be (it answers nothing into a buffer too small). */
#define URL_MAX (sizeof(((jl_config *)0)->nats_url) + 64)

/* Connects in progress, and when the run of them began (see jl__conn_connecting_since_ns). */
static pthread_mutex_t connecting_mu = PTHREAD_MUTEX_INITIALIZER;
static int n_connecting;
static int64_t connecting_since;

static void connecting(bool begin)
{
    pthread_mutex_lock(&connecting_mu);
    if (begin && n_connecting++ == 0)
        connecting_since = jl__mono_ns();
    else if (!begin && --n_connecting == 0)
        connecting_since = 0;
    pthread_mutex_unlock(&connecting_mu);
}

int64_t jl__conn_connecting_since_ns(void)
{
    pthread_mutex_lock(&connecting_mu);
    int64_t since = connecting_since;
    pthread_mutex_unlock(&connecting_mu);
    return since;
}

#define MAX_SERVERS 16

/* Shared by jl_conn_sub_stop() and the on-complete callback, which may come after the close
 * gave up waiting: the last of the two frees it. */
typedef struct sub_done {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool done;
    int refs;
} sub_done;

/* A subscription watched since jl_conn_subscribe() made it. */
typedef struct sub_watch {
    natsSubscription *sub;
    sub_done *d;
    struct sub_watch *next;
} sub_watch;

static void sub_done_unref(sub_done *d);

/* A subscription unsubscribed and waiting to be destroyed. */
typedef struct sub_grave {
    natsSubscription *sub;
    uint64_t n; /* its number: graves are numbered in the order they were dug */
    struct sub_grave *next;
} sub_grave;

/* A JetStream context waiting for its connection to close (jl_conn_js_destroy()). */
typedef struct js_grave {
    jsCtx *js;
    struct js_grave *next;
} js_grave;

/* Destroy the subscriptions of list @p g and free the list. */
static void bury(sub_grave *g)
{
    while (g != NULL) {
        sub_grave *next = g->next;
        natsSubscription_Destroy(g->sub);
        free(g);
        g = next;
    }
}

struct jl_conn {
    natsConnection *nc;
    jsCtx *js;
    int64_t timeout_ms;
    char version[32];
    /* The library's callbacks get this connection: jl_conn_close() says it is closing (a
     * disconnect then is no news), and frees it only once the closed callback, the last one
     * the library's callback thread delivers, has run. */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool closing, closed;
    sub_watch *watches; /* jl_conn_subscribe()'s, until jl_conn_sub_stop() (under mu) */
    /* Subscriptions jl_conn_sub_destroy() unsubscribed but could not yet destroy safely (no
     * flush answered since): destroyed after the next answered one, or by jl_conn_close(). */
    struct sub_grave *graves; /* newest first */
    uint64_t graves_dug;      /* the number of the newest (under mu) */
    js_grave *js_graves;      /* jl_conn_js_destroy()'s, till the close (under mu) */
    /* Replicas of a stream jl_conn_check_replicas() passed (0: none over 1): a server reached
     * later, by a reconnect, has its version checked too. */
    atomic_int checked_replicas;
};

jl_status jl_status_from_nats(natsStatus ns)
{
    switch (ns) {
    case NATS_OK:
        return JL_OK;
    case NATS_TIMEOUT:
        return JL_ERR_TIMEOUT;
    case NATS_NO_SERVER:
    case NATS_NO_RESPONDERS:
    case NATS_CONNECTION_CLOSED:
    case NATS_CONNECTION_DISCONNECTED:
    case NATS_NOT_YET_CONNECTED:
    case NATS_STALE_CONNECTION:
    case NATS_IO_ERROR:
        return JL_ERR_UNAVAILABLE;
    case NATS_NOT_FOUND:
        return JL_ERR_NOT_FOUND;
    case NATS_NO_MEMORY:
        return JL_ERR_NOMEM;
    case NATS_INVALID_ARG:
        return JL_ERR_INVALID;
    case NATS_MAX_PAYLOAD:
        return JL_ERR_TOO_LARGE;
    default:
        return JL_ERR_NATS;
    }
}

static void on_disconnected(natsConnection *nc, void *closure)
{
    (void)nc;
    jl_conn *c = closure;
    pthread_mutex_lock(&c->mu);
    bool closing = c->closing;
    pthread_mutex_unlock(&c->mu);
    if (!closing)
        jl_log(JL_LOG_WARN, "nats disconnected", NULL);
}

static void on_closed(natsConnection *nc, void *closure)
{
    (void)nc;
    jl_conn *c = closure;
    pthread_mutex_lock(&c->mu);
    c->closed = true;
    pthread_cond_signal(&c->cv);
    pthread_mutex_unlock(&c->mu);
}

/* @p in (one URL or a list) with each user:password@ written "***@", into @p out: what is
 * logged or said of a URL never shows a password. The text between two "://" (or the start or
 * the end) holds at most one URL's credentials, up to its last '@': a password holding a ',' or
 * a ' ', which split the list, is hidden whole. Returns @p out. */
static const char *redact(const char *in, char *out, size_t n)
{
    size_t o = 0;
    for (const char *from = in;;) {
        const char *next = strstr(from, "://");
        const char *stop = next != NULL ? next : from + strlen(from);
        const char *at = NULL;
        for (const char *q = from; q < stop; q++)
            if (*q == '@')
                at = q;
        int w = at != NULL ? snprintf(out + o, n - o, "***%.*s%s", (int)(stop - at), at,
                                      next != NULL ? "://" : "")
                           : snprintf(out + o, n - o, "%.*s%s", (int)(stop - from), from,
                                      next != NULL ? "://" : "");
        o = w < 0 ? o : (o + (size_t)w < n ? o + (size_t)w : n - 1);
        if (next == NULL || o + 1 >= n)
            break;
        from = next + 3;
    }
    out[o < n ? o : n - 1] = 0;
    return out;
}

static void on_reconnected(natsConnection *nc, void *closure)
{
    jl_conn *c = closure;
    char url[URL_MAX] = "", safe[256], esc[300], v[32], ev[80];
    natsConnection_GetConnectedUrl(nc, url, sizeof(url));
    jl_log(JL_LOG_INFO, "nats reconnected", "\"url\":\"%s\"",
           jl_log_str(esc, sizeof(esc), redact(url, safe, sizeof(safe))));
    /* One that could not be asked at start (down then), or joined the cluster since. Nothing
     * can be refused now: said as loudly as it matters. */
    int replicas = atomic_load(&c->checked_replicas);
    if (replicas > 1 && jl_server_version_probe(url, 1000, v, sizeof(v)) == JL_OK &&
        !jl_version_at_least(v, JL_MIN_CLUSTER_SERVER_VERSION))
        jl_log(JL_LOG_ERROR, "reconnected to a NATS server too old for a replicated stream",
               "\"url\":\"%s\",\"version\":\"%s\",\"replicas\":%d,\"need\":\"%s\",\"hint\":"
               "\"racing writers could both win, replicas differ: upgrade every server\"",
               esc, jl_log_str(ev, sizeof(ev), v), replicas, JL_MIN_CLUSTER_SERVER_VERSION);
}

/*
 * Posted by the library's callback thread, maybe after @p sub was destroyed: libnats 3.4.1 does
 * not hold the subscription for the callback (fixed upstream in 2023, nats.c pull request 659).
 * Its subject is read only from a subscription jl_conn_subscribe() watches, under c->mu, which
 * jl_conn_sub_stop() takes before the subscription can be destroyed (its slow consumer, the
 * error it can have, is what an operator needs to see: which subscription lags).
 */
static void on_async_error(natsConnection *nc, natsSubscription *sub, natsStatus err, void *closure)
{
    (void)nc;
    jl_conn *c = closure;
    char subj[256] = "", esc[300];
    pthread_mutex_lock(&c->mu);
    for (const sub_watch *w = c->watches; sub != NULL && w != NULL; w = w->next) {
        if (w->sub == sub) {
            const char *s = natsSubscription_GetSubject(sub);
            snprintf(subj, sizeof(subj), "%s", s != NULL ? s : "");
            break;
        }
    }
    pthread_mutex_unlock(&c->mu);
    jl_log(JL_LOG_ERROR, "nats async error", "\"status\":\"%s\",\"subject\":\"%s\"",
           natsStatus_GetText(err), jl_log_str(esc, sizeof(esc), subj));
}

/* Split a comma-separated server list in place; returns how many, -1 for more than
 * MAX_SERVERS (not some of them silently). */
static int split_urls(char *list, const char *urls[MAX_SERVERS])
{
    int n = 0;
    for (char *save = NULL, *tok = strtok_r(list, ", ", &save); tok != NULL;
         tok = strtok_r(NULL, ", ", &save)) {
        if (n == MAX_SERVERS)
            return -1;
        urls[n++] = tok;
    }
    return n;
}

int64_t jl_conn_stuck_after_ms(const jl_config *cfg)
{
    char list[sizeof(cfg->nats_url)];
    const char *urls[MAX_SERVERS];
    snprintf(list, sizeof(list), "%s", cfg->nats_url);
    int n = split_urls(list, urls);
    return (int64_t)(n > 0 ? n : MAX_SERVERS) * 2000 + 10000;
}

/* Split @p url into host (may be empty) and port ("4222" when none or empty), as nats.c reads
 * it. JL_ERR_INVALID only for an unclosed '['. */
static jl_status parse_host_port(const char *url, char *host, size_t hostlen, char *port,
                                 size_t portlen)
{
    const char *p = strstr(url, "://");
    p = p ? p + 3 : url;
    const char *at = strrchr(p, '@'); /* the last: a password may hold one (as nats.c reads it) */
    if (at != NULL)
        p = at + 1;
    const char *end = p + strcspn(p, "/?");
    const char *colon = NULL;
    if (*p == '[') { /* [ipv6]:port */
        const char *rb = memchr(p, ']', (size_t)(end - p));
        if (rb == NULL)
            return JL_ERR_INVALID;
        snprintf(host, hostlen, "%.*s", (int)(rb - p - 1), p + 1);
        colon = (rb + 1 < end && rb[1] == ':') ? rb + 1 : NULL;
    } else {
        colon = memchr(p, ':', (size_t)(end - p));
        snprintf(host, hostlen, "%.*s", (int)((colon ? colon : end) - p), p);
    }
    if (colon != NULL && colon + 1 < end)
        snprintf(port, portlen, "%.*s", (int)(end - colon - 1), colon + 1);
    else
        snprintf(port, portlen, "4222"); /* none, or empty: the default, as nats.c */
    return JL_OK;                        /* the host may be empty (nats.c then uses localhost) */
}

/*
 * How a message names server URL @p u, number @p i of @p list: as itself, or, when the list
 * holds credentials, by its place in the list with the list's hidden (a ',' or ' ' in a
 * password splits it, and a piece could show part of one).
 */
static const char *url_name(const char *u, int i, const char *list, char *out, size_t n)
{
    char safe[512];
    if (strchr(list, '@') == NULL)
        snprintf(out, n, "'%.200s'", u);
    else
        snprintf(out, n, "#%d of '%.200s'", i + 1, redact(list, safe, sizeof(safe)));
    return out;
}

/* Whether server URL @p u (number @p i of @p list) can be used: a nats:// or tls:// scheme (or
 * none) and, if a port is given, 1-65535 (an empty host or port is nats.c's default). Else why
 * not in @p why: the client library would only say "no server". */
static bool url_usable(const char *u, int i, const char *list, char *why, size_t n)
{
    char host[256], port[16], name[300];
    const char *sep = strstr(u, "://");
    if (sep != NULL && !((sep - u == 4 && strncasecmp(u, "nats", 4) == 0) ||
                         (sep - u == 3 && strncasecmp(u, "tls", 3) == 0))) {
        snprintf(why, n, "server URL %s has a scheme other than nats:// or tls://",
                 url_name(u, i, list, name, sizeof(name)));
        return false;
    }
    if (sep == NULL && strchr(u, '/') != NULL) {
        /* "nats:/host:4222" (a slash short): the library would take all of it for a host. */
        snprintf(why, n, "server URL %s cannot be read (nats://host:port?)",
                 url_name(u, i, list, name, sizeof(name)));
        return false;
    }
    if (parse_host_port(u, host, sizeof(host), port, sizeof(port)) != JL_OK) {
        snprintf(why, n, "server URL %s cannot be read", url_name(u, i, list, name, sizeof(name)));
        return false;
    }
    char *end = NULL;
    long v = strtol(port, &end, 10);
    if (port[0] < '0' || port[0] > '9' || *end != 0 || v < 1 || v > 65535) {
        snprintf(why, n, "server URL %s has no port 1-65535",
                 url_name(u, i, list, name, sizeof(name)));
        return false;
    }
    return true;
}

/* Once per process, before the first connection: the client library spins up to 2,000 times on
 * a busy mutex before it blocks, which on a small machine takes the time the holder needs
 * (measured: 12% of a producer's CPU with many threads; throughput up without it). */
static void open_library(void)
{
    (void)nats_Open(0);
}

jl_status jl_conn_open(jl_conn **out_conn, const jl_config *cfg, const char *client_name,
                       int64_t connect_wait_ms, char *err, size_t errlen)
{
    return jl_conn_open_flags(out_conn, cfg, client_name, connect_wait_ms, 0, err, errlen);
}

/*
 * A process started with descriptor 0, 1 or 2 closed would give it to the next file opened: the
 * NATS socket, which would then receive what is printed for the terminal or the log (and the
 * server drop the connection for it). Each closed one gets /dev/null: stdin and stderr as usual,
 * stdout read-only, so that writing output fails (the CLI then says so, exit 4) rather than
 * vanishing.
 */
static void guard_stdio(void)
{
    for (int fd = 0; fd <= 2; fd++) {
        if (fcntl(fd, F_GETFD) != -1 || errno != EBADF)
            continue;
        int got = open("/dev/null", fd == 2 ? O_WRONLY : O_RDONLY);
        if (got >= 0 && got != fd) { /* another thread took it meanwhile */
            dup2(got, fd);
            close(got);
        }
    }
}

/*
 * "tls://" means TLS or nothing (the library would otherwise speak plain text to a server that
 * does not ask for TLS), for every server then. Each server's certificate must chain to a CA of
 * the system's or of cfg->tls_ca, and carry one name: cfg->tls_hostname, else the host the
 * URLs share (the library checks one name on every connection; without one it checks none,
 * and any certificate a trusted CA signed for any name would do). The same checks are set for
 * nats:// URLs: a server that requires TLS gets it from the library all the same.
 */
static jl_status set_tls(natsOptions *opts, const jl_config *cfg, const char **urls, int nurls,
                         char *err, size_t errlen)
{
    char host[256] = "", other[256], port[16];
    bool tls = false, differ = false;
    for (int i = 0; i < nurls; i++)
        tls = tls || strncasecmp(urls[i], "tls://", 6) == 0;
    for (int i = 0; i < nurls && !differ; i++) {
        if (parse_host_port(urls[i], other, sizeof(other), port, sizeof(port)) != JL_OK)
            continue; /* url_usable() said why already */
        if (other[0] == 0)
            snprintf(other, sizeof(other), "localhost"); /* as the library reads it */
        if (i > 0 && strcasecmp(host, other) != 0)
            differ = true;
        else
            snprintf(host, sizeof(host), "%s", other);
    }
    if (tls && cfg->tls_hostname[0] == 0 && differ) {
        snprintf(err, errlen,
                 "the tls:// server list names hosts '%s' and '%s': the client checks one name "
                 "on every server's certificate; give --tls-hostname (JL_TLS_HOSTNAME), a name "
                 "each server's certificate carries",
                 host, other);
        return JL_ERR_INVALID;
    }
    /* Without a name to check (nats:// URLs of several hosts), a server that requires TLS is
     * checked for its CA only: say --tls-hostname to have its name checked too. */
    const char *expect = cfg->tls_hostname[0] != 0 ? cfg->tls_hostname : differ ? NULL : host;
    natsStatus ns = tls ? natsOptions_SetSecure(opts, true) : NATS_OK;
    if (ns == NATS_OK && cfg->tls_ca[0] != 0) {
        ns = natsOptions_LoadCATrustedCertificates(opts, cfg->tls_ca);
        if (ns != NATS_OK) {
            snprintf(err, errlen, "cannot load CA certificates from %s (--tls-ca): %s", cfg->tls_ca,
                     natsStatus_GetText(ns));
            return JL_ERR_INVALID;
        }
    }
    if (ns == NATS_OK && expect != NULL && expect[0] != 0)
        ns = natsOptions_SetExpectedHostname(opts, expect);
    if (ns != NATS_OK) {
        snprintf(err, errlen, "cannot set up TLS: %s", natsStatus_GetText(ns));
        return JL_ERR_INVALID;
    }
    return JL_OK;
}

jl_status jl_conn_open_flags(jl_conn **out_conn, const jl_config *cfg, const char *client_name,
                             int64_t connect_wait_ms, unsigned flags, char *err, size_t errlen)
{
    jl_status s = JL_OK;
    natsStatus ns = NATS_OK;
    natsOptions *opts = NULL;
    jl_conn *c = calloc(1, sizeof(*c));
    char list[sizeof(cfg->nats_url)], safe_urls[sizeof(cfg->nats_url)];
    const char *urls[MAX_SERVERS];
    int nurls = 0;

    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, open_library);
    guard_stdio();
    if (c == NULL) {
        snprintf(err, errlen, "cannot connect: out of memory");
        return JL_ERR_NOMEM;
    }
    pthread_mutex_init(&c->mu, NULL);
    if (jl__cond_init_monotonic(&c->cv) != 0) {
        pthread_mutex_destroy(&c->mu);
        free(c);
        snprintf(err, errlen, "cannot connect: out of memory");
        return JL_ERR_NOMEM;
    }
    c->timeout_ms = cfg->request_timeout_ms;
    snprintf(list, sizeof(list), "%s", cfg->nats_url);
    nurls = split_urls(list, urls);
    if (nurls <= 0) {
        snprintf(err, errlen,
                 nurls == 0 ? "the server list (NATS_URL or --nats-url) names no server"
                            : "the server list (NATS_URL or --nats-url) names more than %d servers",
                 MAX_SERVERS);
        s = JL_ERR_INVALID;
        goto done;
    }
    for (int i = 0; i < nurls; i++) {
        if (!url_usable(urls[i], i, cfg->nats_url, err, errlen)) {
            s = JL_ERR_INVALID;
            goto done;
        }
    }
    ns = natsOptions_Create(&opts);
    if (ns == NATS_OK)
        ns = natsOptions_SetServers(opts, urls, nurls);
    if (ns == NATS_OK)
        ns = natsOptions_SetName(opts, client_name);
    if (ns == NATS_OK && (s = set_tls(opts, cfg, urls, nurls, err, errlen)) != JL_OK)
        goto done;
    /* Services must outlive any server restart: reconnect forever, with jitter. */
    if (ns == NATS_OK)
        ns = natsOptions_SetMaxReconnect(opts, -1);
    if (ns == NATS_OK)
        ns = natsOptions_SetReconnectWait(opts, 250);
    if (ns == NATS_OK)
        ns = natsOptions_SetReconnectJitter(opts, 100, 1000);
    if (ns == NATS_OK)
        ns = natsOptions_SetTimeout(opts, 2000);
    /* A server cut off by the network sends nothing and closes nothing: without short pings a
     * connection to it would look alive for minutes (the default is 2 min x 2). */
    if (ns == NATS_OK)
        ns = natsOptions_SetPingInterval(opts, 2000);
    if (ns == NATS_OK)
        ns = natsOptions_SetMaxPingsOut(opts, 2);
    /* Without it the library holds published data for its flusher (about a millisecond):
     * replies and appends would each wait for it. Latency is what a service is judged on,
     * unless the caller asked for batched writes (a burst: one write for many messages). */
    if (ns == NATS_OK)
        ns = natsOptions_SetSendAsap(opts, (flags & JL_CONN_BATCH_WRITES) == 0);
    /* Keep published messages across a short disconnect instead of failing them at once. */
    if (ns == NATS_OK)
        ns = natsOptions_SetReconnectBufSize(opts, 8 * 1024 * 1024);
    if (ns == NATS_OK)
        ns = natsOptions_SetDisconnectedCB(opts, on_disconnected, c);
    if (ns == NATS_OK)
        ns = natsOptions_SetClosedCB(opts, on_closed, c);
    if (ns == NATS_OK)
        ns = natsOptions_SetReconnectedCB(opts, on_reconnected, c);
    if (ns == NATS_OK)
        ns = natsOptions_SetErrorHandler(opts, on_async_error, c);
    if (ns == NATS_OK && cfg->creds[0] != 0) {
        /* The library reads the file only when a server asks for credentials: a wrong path
         * would pass unnoticed against a server without authorization, and fail later. */
        struct stat cst;
        const char *bad = NULL;
        if (stat(cfg->creds, &cst) != 0)
            bad = strerror(errno);
        else if (!S_ISREG(cst.st_mode))
            bad = "not a regular file";
        else if (access(cfg->creds, R_OK) != 0)
            bad = strerror(errno);
        if (bad != NULL) {
            snprintf(err, errlen, "cannot use credentials file %s: %s", cfg->creds, bad);
            s = JL_ERR_INVALID;
            goto done;
        }
        ns = natsOptions_SetUserCredentialsFromFiles(opts, cfg->creds, NULL);
        if (ns != NATS_OK) {
            snprintf(err, errlen, "cannot use credentials file %s: %s", cfg->creds,
                     natsStatus_GetText(ns));
            s = JL_ERR_INVALID;
            goto done;
        }
    }
    if (ns != NATS_OK) {
        snprintf(err, errlen, "bad NATS options (NATS_URL '%s'?): %s",
                 redact(cfg->nats_url, safe_urls, sizeof(safe_urls)), natsStatus_GetText(ns));
        s = JL_ERR_INVALID;
        goto done;
    }

    int64_t deadline = jl__mono_ms() + connect_wait_ms;
    for (int attempt = 0;; attempt++) {
        connecting(true);
        ns = natsConnection_Connect(&c->nc, opts);
        connecting(false);
        if (ns == NATS_OK || jl__mono_ms() >= deadline)
            break;
        if (ns != NATS_NO_SERVER && ns != NATS_TIMEOUT && ns != NATS_IO_ERROR)
            break;
        if (attempt == 0 && connect_wait_ms >= 5000) {
            /* A service waits for NATS to come up: say so at once, not only when it gives up. */
            char e1[600];
            jl_log(JL_LOG_WARN, "waiting for NATS",
                   "\"url\":\"%s\",\"error\":\"%s\",\"retrying_for_s\":%" PRId64,
                   jl_log_str(e1, sizeof(e1), redact(cfg->nats_url, safe_urls, sizeof(safe_urls))),
                   natsStatus_GetText(ns), connect_wait_ms / 1000);
        }
        nats_Sleep(250);
    }
    if (ns != NATS_OK) {
        /* The last error often only repeats the status text: add it when it says more. */
        const char *text = natsStatus_GetText(ns);
        const char *detail = nats_GetLastError(NULL);
        if (detail != NULL && detail[0] == '(' && strstr(detail, "): ") != NULL)
            detail = strstr(detail, "): ") + 3; /* drop "(conn.c:123): " */
        bool more = detail != NULL && *detail != 0 && strcmp(detail, text) != 0;
        /* libnats 3.10 gives up on a handshake that does not finish (3.4.1 waits for ever,
         * and a watchdog says JL_CONN_STUCK_MSG): the same words for both. */
        /* A server that answered and refused the credentials was reached: say which it is. */
        bool refused = ns == NATS_CONNECTION_AUTH_FAILED;
        snprintf(err, errlen, "%s NATS at %s: %s%s%s%s",
                 refused ? "credentials refused by" : "cannot reach",
                 redact(cfg->nats_url, safe_urls, sizeof(safe_urls)), text, more ? ": " : "",
                 more ? detail : "", ns == NATS_TIMEOUT ? "; " JL_CONN_STUCK_MSG : "");
        /* A URL the library cannot use, (with a credentials file) a file it cannot read a
         * user from, or credentials the server refused, is a setting to correct, not a server
         * to wait for. */
        bool bad_creds = ns == NATS_ERR && cfg->creds[0] != 0 && detail != NULL &&
                         (strstr(detail, "seed") != NULL || strstr(detail, "jwt") != NULL ||
                          strstr(detail, "JWT") != NULL);
        if (ns == NATS_INVALID_ARG || bad_creds || refused)
            s = JL_ERR_INVALID;
        else if (jl_status_from_nats(ns) == JL_ERR_UNAVAILABLE || ns == NATS_TIMEOUT)
            s = JL_ERR_UNAVAILABLE;
        else
            s = JL_ERR_NATS;
        goto done;
    }

    jsOptions jo;
    jsOptions_Init(&jo);
    jo.Wait = cfg->request_timeout_ms;
    ns = natsConnection_JetStream(&c->js, c->nc, &jo);
    if (ns != NATS_OK) {
        snprintf(err, errlen, "cannot create JetStream context: %s", natsStatus_GetText(ns));
        s = JL_ERR_NATS;
        goto done;
    }

    char url[URL_MAX] = "";
    natsConnection_GetConnectedUrl(c->nc, url, sizeof(url));
    if (jl_server_version_probe(url, 2000, c->version, sizeof(c->version)) != JL_OK)
        c->version[0] = 0;
    char e1[300];
    char e2[80];
    jl_log(JL_LOG_INFO, "connected", "\"url\":\"%s\",\"server_version\":\"%s\",\"batch_writes\":%s",
           jl_log_str(e1, sizeof(e1), redact(url, safe_urls, sizeof(safe_urls))),
           jl_log_str(e2, sizeof(e2), c->version),
           (flags & JL_CONN_BATCH_WRITES) ? "true" : "false");

done:
    natsOptions_Destroy(opts);
    if (s != JL_OK) {
        jl_conn_close(c, 0);
        return s;
    }
    *out_conn = c;
    return JL_OK;
}

void jl_conn_close(jl_conn *c, int64_t timeout_ms)
{
    if (c == NULL)
        return;
    pthread_mutex_lock(&c->mu);
    c->closing = true;
    pthread_mutex_unlock(&c->mu);
    if (c->nc != NULL && timeout_ms > 0 && !natsConnection_IsClosed(c->nc)) {
        /* Drain lets every subscription finish what it holds before the close. */
        if (natsConnection_DrainTimeout(c->nc, timeout_ms) == NATS_OK) {
            int64_t deadline = jl__mono_ms() + timeout_ms + 500;
            while (!natsConnection_IsClosed(c->nc) && jl__mono_ms() < deadline)
                nats_Sleep(10);
        }
    }
    bool callbacks_done = true;
    if (c->nc != NULL) {
        natsConnection_Close(c->nc);
        natsConnection_Destroy(c->nc);
        /* A connection that never connected has no callback to wait for. */
        struct timespec until = jl__monotonic_in(2000);
        pthread_mutex_lock(&c->mu);
        while (!c->closed && pthread_cond_timedwait(&c->cv, &c->mu, &until) == 0)
            ;
        callbacks_done = c->closed;
        pthread_mutex_unlock(&c->mu);
    }
    if (!callbacks_done)
        return; /* the library's callback thread may still use it: left allocated */
    /* The closed connection's reader has stopped: nothing can come for these now. */
    bury(c->graves);
    jsCtx_Destroy(c->js);
    while (c->js_graves != NULL) {
        js_grave *g = c->js_graves;
        c->js_graves = g->next;
        jsCtx_Destroy(g->js);
        free(g);
    }
    /* Watches of subscriptions never stopped (an on-complete callback yet to come holds a
     * reference of its own). */
    while (c->watches != NULL) {
        sub_watch *w = c->watches;
        c->watches = w->next;
        sub_done_unref(w->d);
        free(w);
    }
    pthread_cond_destroy(&c->cv);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

natsConnection *jl_conn_nats(jl_conn *c)
{
    return c->nc;
}

jsCtx *jl_conn_js(jl_conn *c)
{
    return c->js;
}

void jl_conn_js_destroy(jl_conn *c, jsCtx *js)
{
    if (js == NULL)
        return;
    js_grave *g = c->nc == NULL || natsConnection_IsClosed(c->nc) ? NULL : malloc(sizeof(*g));
    if (g == NULL) { /* closed (nothing is read any more), or no memory: now, as before */
        jsCtx_Destroy(js);
        return;
    }
    g->js = js;
    pthread_mutex_lock(&c->mu);
    g->next = c->js_graves;
    c->js_graves = g;
    pthread_mutex_unlock(&c->mu);
}

const char *jl_conn_server_version(const jl_conn *c)
{
    return c->version;
}

int64_t jl_conn_timeout_ms(const jl_conn *c)
{
    return c->timeout_ms;
}

bool jl_js_off(natsStatus ns, jsErrCode jerr)
{
    return ns == NATS_NO_RESPONDERS || jerr == JSNotEnabledErr || jerr == JSNotEnabledForAccountErr;
}

/* Compare dotted numeric versions, a leading 'v' ignored; with the same numbers, a
 * pre-release ("2.10.19-RC.1", "-beta") comes before the release (semantic versioning): it may
 * predate the fix the release carries. Build metadata ("+abc") is ignored. */
static int version_cmp(const char *a, const char *b)
{
    if (*a == 'v')
        a++;
    if (*b == 'v')
        b++;
    for (int i = 0; i < 3; i++) {
        long x = strtol(a, (char **)&a, 10);
        long y = strtol(b, (char **)&b, 10);
        if (x != y)
            return x < y ? -1 : 1;
        if (i < 2 && *a == '.')
            a++;
        if (i < 2 && *b == '.')
            b++;
    }
    bool pre_a = *a == '-', pre_b = *b == '-';
    return pre_a == pre_b ? 0 : pre_a ? -1 : 1;
}

bool jl_version_at_least(const char *v, const char *min)
{
    return v != NULL && *v != 0 && version_cmp(v, min) >= 0;
}

/* Read the server's INFO line at address @p ai into @p buf (n bytes), by @p deadline (ms). */
static bool read_info(const struct addrinfo *ai, int64_t deadline, char *buf, size_t n)
{
    size_t got = 0;
    bool ok = false;
    /* Non-blocking connect, so the deadline also bounds a server that never accepts. */
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, ai->ai_protocol);
    if (fd < 0)
        return false;
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
        struct pollfd cp = {.fd = fd, .events = POLLOUT};
        int soerr = 0;
        socklen_t slen = sizeof(soerr);
        int64_t left = deadline - jl__mono_ms();
        if (errno != EINPROGRESS || left <= 0 || poll(&cp, 1, (int)left) <= 0 ||
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &slen) != 0 || soerr != 0)
            goto done;
    }
    /* The server speaks first: "INFO {...}\r\n" before any authentication. */
    while (got < n - 1) {
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        int64_t left = deadline - jl__mono_ms();
        if (left <= 0 || poll(&pfd, 1, (int)left) <= 0)
            goto done;
        ssize_t r = read(fd, buf + got, n - 1 - got);
        if (r <= 0)
            goto done;
        got += (size_t)r;
        buf[got] = 0;
        /* The whole line, or as far as the version: a large cluster's greeting (its list of
         * connect URLs, after the version) may not fit in @p buf. */
        const char *v = strstr(buf, "\"version\":\"");
        if (strstr(buf, "\r\n") != NULL ||
            (v != NULL && strchr(v + strlen("\"version\":\""), '"') != NULL)) {
            ok = true;
            break;
        }
    }
done:
    close(fd);
    return ok;
}

natsStatus jl_fetch(natsSubscription *sub, natsMsgList *list, int batch, int64_t wait_ms,
                    bool no_wait)
{
    jsFetchRequest fr;
    int held = 0;
    jsFetchRequest_Init(&fr);
    /* What came late sits in the subscription's queue: the fetch takes those first. */
    if (natsSubscription_GetPending(sub, &held, NULL) == NATS_OK && held > 0)
        batch = held > (INT_MAX / 2 - batch) ? INT_MAX / 2 : 2 * (held + batch);
    fr.Batch = batch;
    fr.NoWait = no_wait;
    fr.Expires = wait_ms * 1000000;
    return natsSubscription_FetchRequest(list, sub, &fr);
}

void jl_conn_release_library(int64_t timeout_ms)
{
    (void)nats_CloseAndWait(timeout_ms > 0 ? timeout_ms : 1);
}

jl_status jl_server_version_probe(const char *url, int timeout_ms, char *out, size_t outlen)
{
    char host[256], port[16];
    struct addrinfo hints, *res = NULL;
    char buf[4096];

    if (parse_host_port(url, host, sizeof(host), port, sizeof(port)) != JL_OK || host[0] == 0)
        return JL_ERR_INVALID;
    memset(&hints, 0, sizeof(hints));
    hints.ai_socktype = SOCK_STREAM;
    if (getaddrinfo(host, port, &hints, &res) != 0)
        return JL_ERR_UNAVAILABLE;
    int64_t deadline = jl__mono_ms() + timeout_ms;
    /* Every address the name has, as the client library tries them ("localhost" may give ::1
     * first, where a server listening on 0.0.0.0 is not). */
    bool got = false;
    for (const struct addrinfo *ai = res; ai != NULL && !got && jl__mono_ms() < deadline;
         ai = ai->ai_next)
        got = read_info(ai, deadline, buf, sizeof(buf));
    freeaddrinfo(res);
    const char *v = got ? strstr(buf, "\"version\":\"") : NULL;
    if (v == NULL || strncmp(buf, "INFO ", 5) != 0)
        return JL_ERR_UNAVAILABLE;
    v += strlen("\"version\":\"");
    size_t n = strcspn(v, "\"");
    snprintf(out, outlen, "%.*s", (int)n, v);
    return JL_OK;
}

int jl_conn_replicas(jl_conn *c, int configured)
{
    char **servers = NULL;
    int count = 0;
    if (configured > 0)
        return configured;
    if (natsConnection_GetServers(c->nc, &servers, &count) != NATS_OK)
        return 1;
    for (int i = 0; i < count; i++)
        free(servers[i]);
    free(servers);
    return count >= 3 ? 3 : 1;
}

int jl_conn_replicas_of_existing(jl_conn *c, int configured, int64_t existing)
{
    if (configured > 0)
        return configured;
    int r = jl_conn_replicas(c, 0);
    return existing > r ? (int)existing : r;
}

jl_status jl_conn_check_replicas(jl_conn *c, int replicas, char *err, size_t errlen)
{
    char **servers = NULL;
    int count = 0;
    jl_status s = JL_OK;

    if (replicas <= 1)
        return JL_OK;
    if (c->version[0] == 0) {
        /* Not read at connect (a busy server, a cluster forming): once more, then "not now",
         * never "too old" for want of an answer. */
        char url[URL_MAX] = "", safe[256];
        natsConnection_GetConnectedUrl(c->nc, url, sizeof(url));
        if (jl_server_version_probe(url, (int)c->timeout_ms, c->version, sizeof(c->version)) !=
            JL_OK) {
            c->version[0] = 0;
            snprintf(err, errlen,
                     "cannot read the version of the NATS server at %s, needed for a stream with "
                     "%d replicas (older than %s is refused)",
                     redact(url, safe, sizeof(safe)), replicas, JL_MIN_CLUSTER_SERVER_VERSION);
            return JL_ERR_UNAVAILABLE;
        }
    }
    if (!jl_version_at_least(c->version, JL_MIN_CLUSTER_SERVER_VERSION)) {
        snprintf(err, errlen,
                 "refusing a stream with %d replicas: the connected NATS server is version %s, "
                 "older than %s, whose Nats-Expected-Last-Subject-Sequence checks can let two "
                 "racing writers both win or replicas differ on a clustered stream; upgrade "
                 "nats-server",
                 replicas, c->version[0] ? c->version : "(unknown)", JL_MIN_CLUSTER_SERVER_VERSION);
        return JL_ERR_VERSION;
    }
    /* The connected server passed; the others are asked now, and a server that cannot be (down
     * now) is checked when this client reconnects to it (on_reconnected). */
    atomic_store(&c->checked_replicas, replicas);
    if (natsConnection_GetServers(c->nc, &servers, &count) != NATS_OK)
        return JL_OK;
    for (int i = 0; i < count && s == JL_OK; i++) {
        char v[32], safe[256];
        if (jl_server_version_probe(servers[i], 1000, v, sizeof(v)) != JL_OK) {
            char esc[300];
            jl_log(JL_LOG_WARN, "cannot read a NATS server's version now",
                   "\"url\":\"%s\",\"hint\":\"checked when this client reconnects to it\"",
                   jl_log_str(esc, sizeof(esc), redact(servers[i], safe, sizeof(safe))));
            continue;
        }
        if (!jl_version_at_least(v, JL_MIN_CLUSTER_SERVER_VERSION)) {
            snprintf(
                err, errlen,
                "refusing a stream with %d replicas: NATS server %s is version %s, older "
                "than %s (racing writers could both win, replicas differ); upgrade every server",
                replicas, redact(servers[i], safe, sizeof(safe)), v, JL_MIN_CLUSTER_SERVER_VERSION);
            s = JL_ERR_VERSION;
        }
    }
    for (int i = 0; i < count; i++)
        free(servers[i]);
    free(servers);
    return s;
}

/* ---- closing a subscription ---- */

static sub_done *sub_done_new(void)
{
    sub_done *d = calloc(1, sizeof(*d));
    if (d != NULL) {
        pthread_mutex_init(&d->mu, NULL);
        pthread_cond_init(&d->cv, NULL);
        d->refs = 1;
    }
    return d;
}

static void sub_done_unref(sub_done *d)
{
    pthread_mutex_lock(&d->mu);
    int left = --d->refs;
    pthread_mutex_unlock(&d->mu);
    if (left == 0) {
        pthread_cond_destroy(&d->cv);
        pthread_mutex_destroy(&d->mu);
        free(d);
    }
}

static void on_sub_complete(void *closure)
{
    sub_done *d = closure;
    pthread_mutex_lock(&d->mu);
    d->done = true;
    pthread_cond_broadcast(&d->cv);
    pthread_mutex_unlock(&d->mu);
    sub_done_unref(d);
}

/* Watch @p sub's last handler return: true when the library took the callback (it is refused on
 * a closed or synchronous subscription). @p d gains the callback's reference. */
static bool sub_done_watch(sub_done *d, natsSubscription *sub)
{
    d->refs++;
    if (natsSubscription_SetOnCompleteCB(sub, on_sub_complete, d) == NATS_OK)
        return true;
    d->refs--; /* no callback will come */
    return false;
}

natsStatus jl_conn_subscribe(jl_conn *c, natsSubscription **out, const char *subject,
                             const char *queue, natsMsgHandler cb, void *closure)
{
    natsStatus ns = queue != NULL
                        ? natsConnection_QueueSubscribe(out, c->nc, subject, queue, cb, closure)
                        : natsConnection_Subscribe(out, c->nc, subject, cb, closure);
    if (ns != NATS_OK)
        return ns;
    /* Without memory for it, jl_conn_sub_stop() watches it then, as best it can. */
    sub_watch *w = calloc(1, sizeof(*w));
    sub_done *d = w != NULL ? sub_done_new() : NULL;
    if (d == NULL || !sub_done_watch(d, *out)) {
        if (d != NULL)
            sub_done_unref(d);
        free(w);
        return NATS_OK;
    }
    w->sub = *out;
    w->d = d;
    pthread_mutex_lock(&c->mu);
    w->next = c->watches;
    c->watches = w;
    pthread_mutex_unlock(&c->mu);
    return NATS_OK;
}

/* The watch jl_conn_subscribe() made of @p sub, taken off the list (its reference with it), or
 * NULL. */
static sub_done *take_watch(jl_conn *c, natsSubscription *sub)
{
    sub_done *d = NULL;
    pthread_mutex_lock(&c->mu);
    for (sub_watch **pw = &c->watches; *pw != NULL; pw = &(*pw)->next) {
        if ((*pw)->sub == sub) {
            sub_watch *w = *pw;
            *pw = w->next;
            d = w->d;
            free(w);
            break;
        }
    }
    pthread_mutex_unlock(&c->mu);
    return d;
}

/* jl_conn_settle() of a bare connection. */
static bool settle(natsConnection *nc)
{
    return nc != NULL && natsConnection_Status(nc) == NATS_CONN_STATUS_CONNECTED &&
           natsConnection_FlushTimeout(nc, 2000) == NATS_OK;
}

bool jl_conn_settle(jl_conn *c)
{
    return settle(c != NULL ? jl_conn_nats(c) : NULL);
}

bool jl_nats_sub_destroy(natsConnection *nc, natsSubscription *sub)
{
    if (sub == NULL)
        return true;
    /* Out of the connection's table first: what comes later finds no subscription. A bound
     * consumer stays; an ephemeral one the library made is deleted. */
    (void)natsSubscription_Unsubscribe(sub);
    if (!settle(nc))
        return false;
    natsSubscription_Destroy(sub); /* the reader is past every message that came before */
    return true;
}

void jl_conn_sub_destroy(jl_conn *c, natsSubscription *sub)
{
    if (sub == NULL)
        return;
    /* Watched still (never stopped): no longer, so that on_async_error() does not read it. */
    sub_done *d = take_watch(c, sub);
    if (d != NULL)
        sub_done_unref(d);
    /* The ones waiting now were unsubscribed before the flush below starts; those another
     * thread adds meanwhile perhaps after it: they wait for a later one. */
    pthread_mutex_lock(&c->mu);
    uint64_t before = c->graves_dug;
    pthread_mutex_unlock(&c->mu);
    if (jl_nats_sub_destroy(c->nc, sub)) {
        pthread_mutex_lock(&c->mu);
        sub_grave **pg = &c->graves;
        while (*pg != NULL && (*pg)->n > before)
            pg = &(*pg)->next;
        sub_grave *settled = *pg; /* this one and all older */
        *pg = NULL;
        pthread_mutex_unlock(&c->mu);
        bury(settled);
        return;
    }
    sub_grave *g = malloc(sizeof(*g));
    if (g == NULL)
        return; /* left allocated: memory lost rather than a crash */
    g->sub = sub;
    pthread_mutex_lock(&c->mu);
    g->n = ++c->graves_dug;
    g->next = c->graves;
    c->graves = g;
    pthread_mutex_unlock(&c->mu);
}

bool jl_conn_sub_stop(jl_conn *c, natsSubscription *sub, int64_t drain_ms, int64_t wait_ms)
{
    if (sub == NULL)
        return true;
    sub_done *d = take_watch(c, sub);
    bool watched = d != NULL;
    if (d == NULL && (d = sub_done_new()) != NULL)
        watched = sub_done_watch(d, sub);
    /* Not watched: a synchronous subscription (no handler), or one the closed connection closed
     * before it could be watched, whose handler may be running still (unknown: not done). */
    bool done = !watched && d != NULL && !natsConnection_IsClosed(c->nc);
    /* A drain that did not finish in time would go on handling what it holds: cut it. */
    if (drain_ms <= 0 || natsSubscription_Drain(sub) != NATS_OK ||
        natsSubscription_WaitForDrainCompletion(sub, drain_ms) != NATS_OK)
        natsSubscription_Unsubscribe(sub);
    if (watched) {
        struct timespec until = jl__realtime_in(wait_ms);
        pthread_mutex_lock(&d->mu);
        while (!d->done && pthread_cond_timedwait(&d->cv, &d->mu, &until) == 0)
            ;
        done = d->done;
        pthread_mutex_unlock(&d->mu);
    }
    if (d != NULL)
        sub_done_unref(d);
    (void)jl_conn_settle(c);
    return done;
}

jl_status jl_reply_send(natsConnection *nc, const char *reply_to, jl_reply *r, jl_buf *scratch)
{
    if (reply_to == NULL || *reply_to == 0)
        return JL_OK;
    jl_buf own, *out = scratch;
    if (out == NULL) {
        jl_buf_init(&own, JL_MAX_REPLY_BYTES + 4096);
        out = &own;
    }
    int64_t max = natsConnection_GetMaxPayload(nc);
    jl_status s = jl_reply_encode(out, r);
    if (s == JL_OK && max > 0 && (int64_t)out->len > max) {
        size_t n = out->len;
        jl_reply_error(r, JL_CODE_INVALID,
                       "the reply of %zu bytes exceeds the %" PRId64 " bytes NATS carries in one "
                       "message (the server's max_payload)",
                       n, max);
        s = jl_reply_encode(out, r);
    } else if (s != JL_OK) {
        jl_reply_error(r, s == JL_ERR_NOMEM ? JL_CODE_UNAVAILABLE : JL_CODE_INTERNAL,
                       "the reply could not be encoded: %s", jl_status_str(s));
        s = jl_reply_encode(out, r);
    }
    natsStatus ns =
        s == JL_OK ? natsConnection_Publish(nc, reply_to, out->data, (int)out->len) : NATS_ERR;
    if (ns != NATS_OK) {
        jl_log(JL_LOG_WARN, "reply not sent",
               "\"code\":\"%s\",\"status\":\"%s\",\"hint\":\"the requester times out\"",
               jl_code_str(r->code), s == JL_OK ? natsStatus_GetText(ns) : jl_status_str(s));
        if (s == JL_OK)
            s = jl_status_from_nats(ns);
    }
    if (out == &own)
        jl_buf_cleanup(&own);
    return s;
}
