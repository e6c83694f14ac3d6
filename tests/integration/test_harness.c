/*
 * test_harness.c - self-test of the integration-test harness (tests/harness/natsd.h).
 *
 * Runs real nats-server processes (JL_NATS_SERVER, else PATH, else /usr/sbin/nats-server). The
 * server is checked with an independent raw NATS protocol client written here (plain TCP, the
 * INFO line, $JS.API requests), so the harness is not used to check itself.
 */
#include "natsd.h"

#include <arpa/inet.h>
#include <check.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define IO_TIMEOUT_S 5
#define REPLY_CAP 65536
#define TEST_TIMEOUT_S 60

/* ---- tiny raw NATS client (independent of the harness) ----------------------------------- */

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void nap_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Blocking socket with send/receive timeouts, so every read below is bounded. */
static int tcp_connect(int port)
{
    struct sockaddr_in sa;
    struct timeval tv = {IO_TIMEOUT_S, 0};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    if (fd < 0) {
        return -1;
    }
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sa.sin_port = htons((uint16_t)port);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

/* Reads one protocol line (without CRLF); byte by byte keeps it simple and never over-reads. */
static int read_line(int fd, char *out, size_t n)
{
    size_t len = 0;
    while (len + 1 < n) {
        char ch;
        if (recv(fd, &ch, 1, 0) != 1) {
            return -1;
        }
        out[len++] = ch;
        if (len >= 2 && out[len - 2] == '\r' && out[len - 1] == '\n') {
            out[len - 2] = '\0';
            return 0;
        }
    }
    return -1;
}

static int read_exact(int fd, char *out, size_t n)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = recv(fd, out + got, n - got, 0);
        if (r <= 0) {
            return -1;
        }
        got += (size_t)r;
    }
    return 0;
}

static int send_all(int fd, const char *s)
{
    size_t len = strlen(s), off = 0;
    while (off < len) {
        ssize_t w = send(fd, s + off, len - off, MSG_NOSIGNAL);
        if (w <= 0) {
            return -1;
        }
        off += (size_t)w;
    }
    return 0;
}

/* The server's first line: "INFO {...}". */
static int fetch_info(int port, char *out, size_t n)
{
    int fd = tcp_connect(port);
    int rc;
    if (fd < 0) {
        return -1;
    }
    rc = read_line(fd, out, n);
    close(fd);
    return rc;
}

/* Request/reply over the raw protocol; the reply payload lands in out (NUL-terminated). */
static int nats_request(int port, const char *subject, const char *payload, char *out, size_t n)
{
    char line[REPLY_CAP];
    char *cmd = NULL;
    size_t cmd_len;
    int64_t deadline = mono_ms() + 10000;
    int fd = tcp_connect(port), rc = -1;

    if (fd < 0) {
        return -1;
    }
    if (read_line(fd, line, sizeof line) != 0 || strncmp(line, "INFO ", 5) != 0) {
        goto done;
    }
    cmd_len = strlen(subject) + strlen(payload) + 256;
    cmd = malloc(cmd_len);
    if (cmd == NULL) {
        goto done;
    }
    snprintf(cmd, cmd_len,
             "CONNECT {\"verbose\":false,\"pedantic\":false,\"protocol\":1}\r\n"
             "SUB _INBOX.test_harness 1\r\nPUB %s _INBOX.test_harness %zu\r\n%s\r\n",
             subject, strlen(payload), payload);
    if (send_all(fd, cmd) != 0) {
        goto done;
    }
    while (mono_ms() < deadline) {
        const char *sp;
        long size;
        if (read_line(fd, line, sizeof line) != 0) {
            goto done;
        }
        if (strncmp(line, "PING", 4) == 0) {
            send_all(fd, "PONG\r\n");
            continue;
        }
        if (strncmp(line, "MSG ", 4) != 0) {
            continue;
        }
        sp = strrchr(line, ' ');
        size = strtol(sp + 1, NULL, 10);
        if (size < 0 || (size_t)size + 2 > n || read_exact(fd, out, (size_t)size + 2) != 0) {
            goto done;
        }
        out[size] = '\0';
        rc = 0;
        break;
    }
done:
    free(cmd);
    close(fd);
    return rc;
}

static bool path_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

static bool file_contains(const char *path, const char *needle)
{
    static char buf[1 << 20];
    FILE *f = fopen(path, "r");
    size_t n;
    if (f == NULL) {
        return false;
    }
    n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    return strstr(buf, needle) != NULL;
}

/* In Check's fork mode each test runs in its own process: no child at all means none leaked. */
static bool no_children_left(void)
{
    int st;
    return waitpid(-1, &st, WNOHANG) == -1 && errno == ECHILD;
}

static jl_natsd *start_with(jl_natsd_opts *o)
{
    static char err[4096];
    jl_natsd *d = NULL;
    o->err_buf = err;
    o->err_buf_len = sizeof err;
    ck_assert_msg(jl_natsd_start(&d, o) == 0, "jl_natsd_start failed: %s", err);
    ck_assert_ptr_nonnull(d);
    return d;
}

static jl_natsd *start_default(void)
{
    jl_natsd_opts o;
    jl_natsd_opts_init(&o);
    return start_with(&o);
}

static void create_stream_with_one_message(int port)
{
    static char reply[REPLY_CAP];
    ck_assert_int_eq(nats_request(port, "$JS.API.STREAM.CREATE.HARNESS",
                                  "{\"name\":\"HARNESS\",\"subjects\":[\"harness.>\"],"
                                  "\"storage\":\"file\"}",
                                  reply, sizeof reply),
                     0);
    ck_assert_msg(strstr(reply, "stream_create_response") && !strstr(reply, "\"error\""), "%s",
                  reply);
    ck_assert_int_eq(nats_request(port, "harness.one", "hello", reply, sizeof reply), 0);
    ck_assert_msg(strstr(reply, "\"stream\":\"HARNESS\"") && strstr(reply, "\"seq\":1"), "%s",
                  reply);
}

static void assert_stream_has_one_message(int port)
{
    static char reply[REPLY_CAP];
    ck_assert_int_eq(nats_request(port, "$JS.API.STREAM.INFO.HARNESS", "", reply, sizeof reply), 0);
    ck_assert_msg(strstr(reply, "\"messages\":1,") != NULL, "%s", reply);
}

/* ---- jl_natsd ---------------------------------------------------------------------------- */

START_TEST(start_serves_info_with_jetstream_and_version)
{
    char info[8192], expect[64], path[4200];
    static char reply[REPLY_CAP];
    jl_natsd *d = start_default();
    int port = jl_natsd_port(d);

    ck_assert_int_gt(port, 0);
    snprintf(expect, sizeof expect, "nats://127.0.0.1:%d", port);
    ck_assert_str_eq(jl_natsd_url(d), expect);
    ck_assert_int_gt(jl_natsd_pid(d), 0);
    ck_assert_int_eq(jl_proc_alive(jl_natsd_pid(d)), 1);
    ck_assert(path_exists(jl_natsd_store_dir(d)));
    snprintf(path, sizeof path, "%s/natsd.conf", jl_natsd_store_dir(d));
    ck_assert(path_exists(path));
    ck_assert(file_contains(jl_natsd_log_path(d), "Server is ready"));

    ck_assert_int_eq(fetch_info(port, info, sizeof info), 0);
    ck_assert_msg(strncmp(info, "INFO {", 6) == 0, "%s", info);
    ck_assert_msg(strstr(info, "\"jetstream\":true") != NULL, "%s", info);
    ck_assert_msg(strstr(info, "\"version\":\"") != NULL, "%s", info);
    snprintf(expect, sizeof expect, "\"port\":%d,", port);
    ck_assert_msg(strstr(info, expect) != NULL, "%s", info);

    ck_assert_int_eq(jl_natsd_wait_jetstream(d, 5000), 0);
    ck_assert_int_eq(nats_request(port, "$JS.API.INFO", "", reply, sizeof reply), 0);
    ck_assert_msg(strstr(reply, "account_info_response") != NULL, "%s", reply);
    jl_natsd_destroy(d);
    ck_assert(no_children_left());
}
END_TEST

START_TEST(stop_then_restart_keeps_port_store_and_data)
{
    char dir[4096], info[8192];
    jl_natsd *d = start_default();
    int port = jl_natsd_port(d);
    pid_t old_pid = jl_natsd_pid(d);

    snprintf(dir, sizeof dir, "%s", jl_natsd_store_dir(d));
    create_stream_with_one_message(port);

    ck_assert_int_eq(jl_natsd_stop(d), 0);
    ck_assert_int_eq(jl_natsd_pid(d), 0);
    ck_assert_int_eq(jl_proc_alive(old_pid), 0);
    ck_assert_int_ge(jl_natsd_exit_status(d), 0);
    ck_assert_int_lt(jl_natsd_exit_status(d), 128); /* exited on SIGTERM, not killed */
    ck_assert_int_eq(tcp_connect(port), -1);
    ck_assert_int_eq(jl_natsd_stop(d), 0); /* stopping a stopped server is a no-op */
    ck_assert(path_exists(dir));

    ck_assert_msg(jl_natsd_restart(d) == 0, "%s", jl_natsd_errmsg(d));
    ck_assert_int_eq(jl_natsd_port(d), port);
    ck_assert_str_eq(jl_natsd_store_dir(d), dir);
    ck_assert_int_gt(jl_natsd_pid(d), 0);
    ck_assert_int_ne(jl_natsd_pid(d), old_pid);
    ck_assert_int_eq(fetch_info(port, info, sizeof info), 0);
    ck_assert_msg(strstr(info, "\"jetstream\":true") != NULL, "%s", info);
    assert_stream_has_one_message(port);
    jl_natsd_destroy(d);
    ck_assert(no_children_left());
}
END_TEST

START_TEST(kill9_then_restart_recovers_store)
{
    jl_natsd *d = start_default();
    int port = jl_natsd_port(d);
    pid_t old_pid = jl_natsd_pid(d);

    create_stream_with_one_message(port);
    ck_assert_int_eq(jl_natsd_kill9(d), 0);
    ck_assert_int_eq(jl_natsd_exit_status(d), 128 + SIGKILL);
    ck_assert_int_eq(jl_natsd_pid(d), 0);
    ck_assert_int_eq(jl_proc_alive(old_pid), 0);
    ck_assert_int_eq(tcp_connect(port), -1);

    ck_assert_msg(jl_natsd_restart(d) == 0, "%s", jl_natsd_errmsg(d));
    ck_assert_int_eq(jl_natsd_port(d), port);
    assert_stream_has_one_message(port);
    /* restart on a running server stops it first */
    old_pid = jl_natsd_pid(d);
    ck_assert_msg(jl_natsd_restart(d) == 0, "%s", jl_natsd_errmsg(d));
    ck_assert_int_ne(jl_natsd_pid(d), old_pid);
    ck_assert_int_eq(jl_proc_alive(old_pid), 0);
    jl_natsd_destroy(d);
    ck_assert(no_children_left());
}
END_TEST

START_TEST(two_servers_get_distinct_ports_and_dirs)
{
    char info[8192], expect[64];
    jl_natsd *a = start_default();
    jl_natsd *b = start_default();

    ck_assert_int_ne(jl_natsd_port(a), jl_natsd_port(b));
    ck_assert_str_ne(jl_natsd_store_dir(a), jl_natsd_store_dir(b));
    ck_assert_int_ne(jl_natsd_pid(a), jl_natsd_pid(b));
    ck_assert_int_eq(fetch_info(jl_natsd_port(b), info, sizeof info), 0);
    snprintf(expect, sizeof expect, "\"port\":%d,", jl_natsd_port(b));
    ck_assert_msg(strstr(info, expect) != NULL, "%s", info);
    ck_assert_int_eq(fetch_info(jl_natsd_port(a), info, sizeof info), 0);
    snprintf(expect, sizeof expect, "\"port\":%d,", jl_natsd_port(a));
    ck_assert_msg(strstr(info, expect) != NULL, "%s", info);
    jl_natsd_destroy(a);
    jl_natsd_destroy(b);
    jl_natsd_destroy(NULL);
    ck_assert(no_children_left());
}
END_TEST

START_TEST(destroy_removes_temp_store_unless_kept_or_given)
{
    char dir[4096], log[4200], given[4096];
    jl_natsd_opts o;
    jl_natsd *d = start_default();

    snprintf(dir, sizeof dir, "%s", jl_natsd_store_dir(d));
    ck_assert(path_exists(dir));
    jl_natsd_destroy(d);
    ck_assert(!path_exists(dir));

    jl_natsd_opts_init(&o);
    o.keep_store = true;
    d = start_with(&o);
    snprintf(dir, sizeof dir, "%s", jl_natsd_store_dir(d));
    snprintf(log, sizeof log, "%s", jl_natsd_log_path(d));
    jl_natsd_destroy(d);
    ck_assert(file_contains(log, "Server is ready"));
    ck_assert_int_eq(jl_rm_rf(dir), 0);
    ck_assert(!path_exists(dir));

    ck_assert_int_eq(jl_tmpdir(given, sizeof given), 0);
    jl_natsd_opts_init(&o);
    o.store_dir = given;
    d = start_with(&o);
    ck_assert_str_eq(jl_natsd_store_dir(d), given);
    jl_natsd_destroy(d);
    ck_assert(path_exists(given));
    ck_assert_int_eq(jl_rm_rf(given), 0);
    ck_assert(no_children_left());
}
END_TEST

/* The failure message names the config file; its directory must be gone afterwards. */
static void assert_temp_dir_of_message_removed(const char *msg)
{
    char dir[4096];
    const char *p = strstr(msg, "(config ");
    const char *end;
    ck_assert_msg(p != NULL, "%s", msg);
    p += strlen("(config ");
    end = strstr(p, "/natsd.conf)");
    ck_assert_msg(end != NULL && (size_t)(end - p) < sizeof dir, "%s", msg);
    snprintf(dir, sizeof dir, "%.*s", (int)(end - p), p);
    ck_assert_msg(!path_exists(dir), "temp dir %s leaked", dir);
}

START_TEST(bad_extra_config_fails_with_message_and_no_process)
{
    static const struct {
        const char *config;
        const char *server_says;
    } cases[] = {
        {"this is { not valid", "Parse error"},
        {"no_such_option: 1", "unknown field"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char err[4096] = "";
        jl_natsd_opts o;
        jl_natsd *d = NULL;
        int64_t t0 = mono_ms();

        jl_natsd_opts_init(&o);
        o.extra_config = cases[i].config;
        o.err_buf = err;
        o.err_buf_len = sizeof err;
        ck_assert_int_eq(jl_natsd_start(&d, &o), -1);
        ck_assert_ptr_null(d);
        ck_assert_msg(strstr(err, "exited with status 1") != NULL, "%s", err);
        ck_assert_msg(strstr(err, cases[i].server_says) != NULL, "%s", err);
        /* detected by the exit, not by waiting out the readiness bound */
        ck_assert_int_lt(mono_ms() - t0, JL_NATSD_START_TIMEOUT_MS / 2);
        ck_assert(no_children_left());
        assert_temp_dir_of_message_removed(err);
    }
}
END_TEST

START_TEST(busy_explicit_port_fails_instead_of_reaching_the_other_listener)
{
    struct sockaddr_in sa;
    socklen_t len = sizeof sa;
    char err[4096] = "";
    jl_natsd_opts o;
    jl_natsd *d = NULL;
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    ck_assert_int_eq(listen(fd, 16), 0);
    ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&sa, &len), 0);

    jl_natsd_opts_init(&o);
    o.port = ntohs(sa.sin_port);
    o.err_buf = err;
    o.err_buf_len = sizeof err;
    ck_assert_int_eq(jl_natsd_start(&d, &o), -1);
    ck_assert_ptr_null(d);
    ck_assert_msg(strstr(err, "address already in use") != NULL, "%s", err);
    ck_assert(no_children_left());
    close(fd);
}
END_TEST

START_TEST(jetstream_off_server_does_not_announce_jetstream)
{
    char info[8192];
    jl_natsd_opts o;
    jl_natsd *d;

    jl_natsd_opts_init(&o);
    o.jetstream = false;
    d = start_with(&o);
    ck_assert_int_eq(fetch_info(jl_natsd_port(d), info, sizeof info), 0);
    ck_assert_msg(strncmp(info, "INFO {", 6) == 0, "%s", info);
    ck_assert_msg(strstr(info, "\"jetstream\":true") == NULL, "%s", info);
    ck_assert_int_eq(jl_natsd_wait_jetstream(d, 1000), -1);
    ck_assert_msg(strstr(jl_natsd_errmsg(d), "JetStream") != NULL, "%s", jl_natsd_errmsg(d));
    jl_natsd_destroy(d);
}
END_TEST

START_TEST(server_dies_when_the_test_process_crashes)
{
    char dir[4096];
    int fds[2], st;
    pid_t child, server = 0;
    int64_t deadline;

    ck_assert_int_eq(jl_tmpdir(dir, sizeof dir), 0);
    ck_assert_int_eq(pipe(fds), 0);
    child = fork();
    ck_assert_int_ge(child, 0);
    if (child == 0) {
        jl_natsd_opts o;
        jl_natsd *d = NULL;
        pid_t p = 0;
        jl_natsd_opts_init(&o);
        o.store_dir = dir;
        if (jl_natsd_start(&d, &o) == 0) {
            p = jl_natsd_pid(d);
        }
        if (write(fds[1], &p, sizeof p) != (ssize_t)sizeof p) {
            _exit(1);
        }
        raise(SIGKILL); /* a crash: no destroy, no atexit */
        _exit(1);
    }
    close(fds[1]);
    ck_assert_int_eq(read(fds[0], &server, sizeof server), (ssize_t)sizeof server);
    close(fds[0]);
    ck_assert_int_gt(server, 0);
    ck_assert_int_eq(waitpid(child, &st, 0), child);
    ck_assert(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);

    deadline = mono_ms() + 5000;
    while (jl_proc_alive(server) && mono_ms() < deadline) {
        nap_ms(20);
    }
    ck_assert_msg(!jl_proc_alive(server), "nats-server %d outlived its parent", (int)server);
    ck_assert_int_eq(jl_rm_rf(dir), 0);
}
END_TEST

/* ---- 3-node cluster ---------------------------------------------------------------------- */

START_TEST(three_node_cluster_elects_a_jetstream_leader)
{
    enum { N = 3 };
    int cport[N];
    char route_buf[N][64];
    const char *routes[N];
    jl_natsd *node[N] = {NULL};
    char name[N][16];

    for (int i = 0; i < N; i++) {
        bool distinct;
        do {
            ck_assert_int_eq(jl_free_port(&cport[i]), 0);
            distinct = true;
            for (int j = 0; j < i; j++) {
                distinct = distinct && cport[j] != cport[i];
            }
        } while (!distinct);
        snprintf(route_buf[i], sizeof route_buf[i], "nats-route://127.0.0.1:%d", cport[i]);
        routes[i] = route_buf[i];
    }
    for (int i = 0; i < N; i++) {
        jl_natsd_opts o;
        jl_natsd_opts_init(&o);
        snprintf(name[i], sizeof name[i], "n%d", i + 1);
        o.server_name = name[i];
        o.cluster_name = "jl-harness";
        o.cluster_port = cport[i];
        o.routes = routes;
        o.n_routes = N;
        node[i] = start_with(&o);
        ck_assert_int_eq(jl_natsd_cluster_port(node[i]), cport[i]);
    }
    for (int i = 0; i < N; i++) {
        ck_assert_msg(jl_natsd_wait_jetstream(node[i], 30000) == 0, "node %d: %s", i,
                      jl_natsd_errmsg(node[i]));
    }
    /* Checked by a raw client, not the harness's own probe: a stream of three replicas is
     * placed only once all three nodes are in the JetStream group (tried again meanwhile). */
    static char reply[REPLY_CAP];
    bool placed = false;
    for (int64_t until = mono_ms() + 30000; !placed && mono_ms() < until;) {
        placed = nats_request(jl_natsd_port(node[0]), "$JS.API.STREAM.CREATE.R3",
                              "{\"name\":\"R3\",\"subjects\":[\"r3.>\"],\"storage\":"
                              "\"file\",\"num_replicas\":3}",
                              reply, sizeof reply) == 0 &&
                 strstr(reply, "\"error\"") == NULL;
        if (!placed)
            nap_ms(200);
    }
    ck_assert_msg(placed, "no stream of 3 replicas on the cluster: %s", reply);
    ck_assert_msg(strstr(reply, "\"name\":\"jl-harness\"") != NULL &&
                      strstr(reply, "\"leader\"") != NULL,
                  "%s", reply);
    for (int i = 0; i < N; i++) {
        jl_natsd_destroy(node[i]);
    }
    ck_assert(no_children_left());
}
END_TEST

/* ---- generic process helpers ------------------------------------------------------------- */

START_TEST(spawn_and_stop_sleep_returns_signal_status)
{
    const char *const argv[] = {"/bin/sleep", "30", NULL};
    pid_t pid = 0;
    int status = -1;

    ck_assert_int_eq(jl_proc_spawn(&pid, argv, NULL, NULL), 0);
    ck_assert_int_gt(pid, 0);
    ck_assert_int_eq(jl_proc_alive(pid), 1);
    ck_assert_int_eq(jl_proc_stop(pid, SIGTERM, 5000, &status), 0);
    ck_assert_int_eq(status, 128 + SIGTERM);
    ck_assert_int_eq(jl_proc_alive(pid), 0);
    ck_assert(no_children_left());
}
END_TEST

START_TEST(spawn_passes_env_and_appends_output_to_log)
{
    const char *const argv[] = {"sh", "-c", "echo \"v=$JL_HARNESS_VAR\"; echo oops >&2; exit 3",
                                NULL};
    const char *const env[] = {"JL_HARNESS_VAR=hello", NULL};
    char dir[4096], log[4200];
    pid_t pid = 0;
    int status = -1;
    int64_t deadline;

    ck_assert_int_eq(jl_tmpdir(dir, sizeof dir), 0);
    snprintf(log, sizeof log, "%s/out.log", dir);
    ck_assert_int_eq(jl_proc_spawn(&pid, argv, env, log), 0);
    deadline = mono_ms() + 5000;
    while (jl_proc_alive(pid) && mono_ms() < deadline) {
        nap_ms(10);
    }
    ck_assert_int_eq(jl_proc_alive(pid), 0); /* exited: a zombie is not alive */
    ck_assert_int_eq(jl_proc_stop(pid, 0, 5000, &status), 0);
    ck_assert_int_eq(status, 3);
    ck_assert(file_contains(log, "v=hello\n"));
    ck_assert(file_contains(log, "oops\n"));
    ck_assert_int_eq(jl_rm_rf(dir), 0);
}
END_TEST

START_TEST(stop_escalates_to_sigkill_when_term_is_ignored)
{
    const char *const argv[] = {"/bin/sh", "-c", "trap '' TERM; echo ready; exec sleep 30", NULL};
    char dir[4096], log[4200];
    pid_t pid = 0;
    int status = -1;
    int64_t deadline, t0;

    ck_assert_int_eq(jl_tmpdir(dir, sizeof dir), 0);
    snprintf(log, sizeof log, "%s/out.log", dir);
    ck_assert_int_eq(jl_proc_spawn(&pid, argv, NULL, log), 0);
    deadline = mono_ms() + 5000;
    while (!file_contains(log, "ready") && mono_ms() < deadline) {
        nap_ms(10);
    }
    ck_assert(file_contains(log, "ready"));
    t0 = mono_ms();
    ck_assert_int_eq(jl_proc_stop(pid, SIGTERM, 300, &status), 0);
    ck_assert_int_eq(status, 128 + SIGKILL);
    ck_assert_int_ge(mono_ms() - t0, 300);
    ck_assert_int_lt(mono_ms() - t0, 5000);
    ck_assert(no_children_left());
    ck_assert_int_eq(jl_rm_rf(dir), 0);
}
END_TEST

START_TEST(spawn_of_missing_program_fails_without_child)
{
    const char *const abs_argv[] = {"/nonexistent/jl-no-such-program", NULL};
    const char *const path_argv[] = {"jl-no-such-program-on-path", NULL};
    pid_t pid = 0;

    ck_assert_int_eq(jl_proc_spawn(&pid, abs_argv, NULL, NULL), -1);
    ck_assert_int_eq(errno, ENOENT);
    ck_assert_int_eq(jl_proc_spawn(&pid, path_argv, NULL, NULL), -1);
    ck_assert_int_eq(errno, ENOENT);
    ck_assert_int_eq(pid, 0);
    ck_assert(no_children_left());
    ck_assert_int_eq(jl_proc_stop(12345678, SIGTERM, 10, NULL), -1); /* not our child */
    ck_assert_int_eq(errno, ECHILD);
}
END_TEST

START_TEST(rm_rf_removes_tree_without_following_symlinks)
{
    char dir[4096], outside[4096], p[4300];
    FILE *f;

    ck_assert_int_eq(jl_tmpdir(dir, sizeof dir), 0);
    ck_assert_int_eq(jl_tmpdir(outside, sizeof outside), 0);
    snprintf(p, sizeof p, "%s/keep.txt", outside);
    f = fopen(p, "w");
    ck_assert_ptr_nonnull(f);
    fclose(f);
    snprintf(p, sizeof p, "%s/a", dir);
    ck_assert_int_eq(mkdir(p, 0700), 0);
    snprintf(p, sizeof p, "%s/a/b", dir);
    ck_assert_int_eq(mkdir(p, 0700), 0);
    snprintf(p, sizeof p, "%s/a/b/file", dir);
    f = fopen(p, "w");
    ck_assert_ptr_nonnull(f);
    fclose(f);
    snprintf(p, sizeof p, "%s/a/link", dir);
    ck_assert_int_eq(symlink(outside, p), 0);

    ck_assert_int_eq(jl_rm_rf(dir), 0);
    ck_assert(!path_exists(dir));
    snprintf(p, sizeof p, "%s/keep.txt", outside);
    ck_assert(path_exists(p));
    ck_assert_int_eq(jl_rm_rf(dir), 0); /* missing is fine */
    ck_assert_int_eq(jl_rm_rf(outside), 0);
    ck_assert_int_eq(jl_rm_rf("/"), -1);
    ck_assert_int_eq(errno, EINVAL);
    ck_assert_int_eq(jl_rm_rf(""), -1);
}
END_TEST

static Suite *harness_suite(void)
{
    Suite *s = suite_create("harness");
    TCase *natsd = tcase_create("natsd");
    TCase *cluster = tcase_create("cluster");
    TCase *proc = tcase_create("proc");

    tcase_set_timeout(natsd, TEST_TIMEOUT_S);
    tcase_add_test(natsd, start_serves_info_with_jetstream_and_version);
    tcase_add_test(natsd, stop_then_restart_keeps_port_store_and_data);
    tcase_add_test(natsd, kill9_then_restart_recovers_store);
    tcase_add_test(natsd, two_servers_get_distinct_ports_and_dirs);
    tcase_add_test(natsd, destroy_removes_temp_store_unless_kept_or_given);
    tcase_add_test(natsd, bad_extra_config_fails_with_message_and_no_process);
    tcase_add_test(natsd, busy_explicit_port_fails_instead_of_reaching_the_other_listener);
    tcase_add_test(natsd, jetstream_off_server_does_not_announce_jetstream);
    tcase_add_test(natsd, server_dies_when_the_test_process_crashes);
    suite_add_tcase(s, natsd);

    tcase_set_timeout(cluster, TEST_TIMEOUT_S);
    tcase_add_test(cluster, three_node_cluster_elects_a_jetstream_leader);
    suite_add_tcase(s, cluster);

    tcase_set_timeout(proc, TEST_TIMEOUT_S);
    tcase_add_test(proc, spawn_and_stop_sleep_returns_signal_status);
    tcase_add_test(proc, spawn_passes_env_and_appends_output_to_log);
    tcase_add_test(proc, stop_escalates_to_sigkill_when_term_is_ignored);
    tcase_add_test(proc, spawn_of_missing_program_fails_without_child);
    tcase_add_test(proc, rm_rf_removes_tree_without_following_symlinks);
    suite_add_tcase(s, proc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(harness_suite());
    int failed;

    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
