/*
 * natsd.c - integration-test harness: nats-server and helper processes (see natsd.h).
 * Test code only; not part of libjetledger.
 */
#include "natsd.h"

#include <arpa/inet.h>
#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

#define ERR_LEN 2048
#define LOG_TAIL_LEN 1200
#define PORT_ATTEMPTS 5
/* One probe attempt (connect, INFO, $JS.API.INFO round trip) never takes longer than this. */
#define PROBE_ATTEMPT_MS 2000
/* INFO and a $JS.API.INFO reply are < 2 KiB; anything bigger than this is not a probe reply. */
#define PROBE_BUF_LEN 16384
/* After SIGKILL a process only survives in uninterruptible sleep: do not hang forever on it. */
#define KILL_REAP_TIMEOUT_MS 10000
#define READY_LINE "Server is ready"
#define ADDR_IN_USE "address already in use"
#define PROBE_INBOX "_INBOX.jl_harness_probe"

struct jl_natsd {
    pid_t pid; /* 0 when not running */
    int port;
    int cluster_port;
    bool jetstream;
    bool clustered;
    bool owns_store;
    bool keep_store;
    bool port_in_use; /* the last failed launch logged "address already in use" */
    int start_timeout_ms;
    int exit_status;
    off_t log_offset; /* where the current run's output starts in the log */
    char url[64];
    char store_dir[PATH_MAX];
    char conf_path[PATH_MAX];
    char log_path[PATH_MAX];
    char server_path[PATH_MAX];
    char err[ERR_LEN];
};

/* ---- small utilities --------------------------------------------------------------------- */

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int64_t ms)
{
    struct timespec ts;
    if (ms <= 0) {
        return;
    }
    ts.tv_sec = (time_t)(ms / 1000);
    ts.tv_nsec = (long)(ms % 1000) * 1000000L;
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR) {
    }
}

static int64_t min64(int64_t a, int64_t b)
{
    return a < b ? a : b;
}

static void set_err(jl_natsd *d, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(d->err, sizeof d->err, fmt, ap);
    va_end(ap);
}

static void append_err(jl_natsd *d, const char *fmt, ...)
{
    size_t used = strlen(d->err);
    va_list ap;
    if (used + 1 >= sizeof d->err) {
        return;
    }
    va_start(ap, fmt);
    vsnprintf(d->err + used, sizeof d->err - used, fmt, ap);
    va_end(ap);
}

/* Shell convention, so tests can compare one number: exit code, or 128 + signal. */
static int status_code(int st)
{
    if (WIFEXITED(st)) {
        return WEXITSTATUS(st);
    }
    if (WIFSIGNALED(st)) {
        return 128 + WTERMSIG(st);
    }
    return -1;
}

/* Values are written inside "..." in the config file; nats-server's parser has escapes, but
 * test paths and names never need them, so refusing is simpler than escaping correctly. */
static bool conf_safe(const char *s)
{
    return strpbrk(s, "\"\\\n\r") == NULL;
}

static int copy_str(char *out, size_t n, const char *s)
{
    if (strlen(s) >= n) {
        errno = ENAMETOOLONG;
        return -1;
    }
    memcpy(out, s, strlen(s) + 1);
    return 0;
}

/* ---- generic process helpers ------------------------------------------------------------- */

static int resolve_exe(char *out, size_t n, const char *name)
{
    const char *path = getenv("PATH");
    const char *seg;
    char cand[PATH_MAX];

    if (strchr(name, '/') != NULL) {
        return copy_str(out, n, name);
    }
    if (path == NULL || *path == '\0') {
        path = "/usr/local/bin:/usr/bin:/bin";
    }
    for (seg = path;; seg++) {
        size_t len = strcspn(seg, ":");
        /* An empty PATH element means the current directory. */
        int w = snprintf(cand, sizeof cand, "%.*s/%s", len ? (int)len : 1, len ? seg : ".", name);
        if (w > 0 && (size_t)w < sizeof cand && access(cand, X_OK) == 0) {
            return copy_str(out, n, cand);
        }
        seg += len;
        if (*seg == '\0') {
            break;
        }
    }
    errno = ENOENT;
    return -1;
}

static bool same_key(const char *a, const char *b)
{
    size_t ka = strcspn(a, "=");
    size_t kb = strcspn(b, "=");
    return ka == kb && memcmp(a, b, ka) == 0;
}

/* The environment is assembled before fork(): the child must not allocate. */
static char **build_env(const char *const extra[])
{
    size_t n_env = 0, n_extra = 0, k = 0;
    char **envp;

    while (environ != NULL && environ[n_env] != NULL) {
        n_env++;
    }
    while (extra != NULL && extra[n_extra] != NULL) {
        n_extra++;
    }
    envp = calloc(n_env + n_extra + 1, sizeof *envp);
    if (envp == NULL) {
        return NULL;
    }
    for (size_t i = 0; i < n_env; i++) {
        bool overridden = false;
        for (size_t j = 0; j < n_extra && !overridden; j++) {
            overridden = same_key(environ[i], extra[j]);
        }
        if (!overridden) {
            envp[k++] = environ[i];
        }
    }
    for (size_t j = 0; j < n_extra; j++) {
        envp[k++] = (char *)extra[j];
    }
    envp[k] = NULL;
    return envp;
}

/* Only async-signal-safe calls between fork() and execve(). */
static void close_fds_from_3_except(int keep)
{
#ifdef SYS_close_range
    bool ok = true;
    if (keep > 3 && syscall(SYS_close_range, 3U, (unsigned)keep - 1, 0U) != 0) {
        ok = false;
    }
    if (ok && syscall(SYS_close_range, (unsigned)keep + 1, ~0U, 0U) == 0) {
        return;
    }
#endif
    /* Kernel without close_range: a bounded sweep covers every descriptor a test opens. */
    for (int fd = 3; fd < 65536; fd++) {
        if (fd != keep) {
            close(fd);
        }
    }
}

static _Noreturn void exec_child(const char *exe, const char *const argv[], char **envp,
                                 int null_fd, int log_fd, int err_fd, pid_t parent)
{
    static const int reset[] = {SIGPIPE, SIGINT, SIGTERM, SIGQUIT, SIGHUP, SIGCHLD};
    struct sigaction dfl;
    sigset_t none;
    int e;

    /* If the test dies, so does this child: no nats-server outlives a crashed test. */
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) {
        goto fail;
    }
    /* The parent may have died before prctl() took effect; then nobody would kill us. */
    if (getppid() != parent) {
        _exit(127);
    }
    /* Ignored signals and the mask survive execve(): give the child a clean slate. */
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    for (size_t i = 0; i < sizeof reset / sizeof reset[0]; i++) {
        sigaction(reset[i], &dfl, NULL);
    }
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);

    if (dup2(null_fd, STDIN_FILENO) < 0) {
        goto fail;
    }
    if (log_fd >= 0 && (dup2(log_fd, STDOUT_FILENO) < 0 || dup2(log_fd, STDERR_FILENO) < 0)) {
        goto fail;
    }
    /* Inherited sockets (e.g. a test's listener) would otherwise live as long as the server. */
    close_fds_from_3_except(err_fd);
    execve(exe, (char *const *)argv, envp);
fail:
    e = errno;
    while (write(err_fd, &e, sizeof e) < 0 && errno == EINTR) {
    }
    _exit(127);
}

static int set_cloexec(int fd)
{
    int fl = fcntl(fd, F_GETFD);
    return fl < 0 ? -1 : fcntl(fd, F_SETFD, fl | FD_CLOEXEC);
}

int jl_proc_spawn(pid_t *out, const char *const argv[], const char *const env[],
                  const char *log_path)
{
    int rc = -1, err = 0;
    int log_fd = -1, null_fd = -1, pipefd[2] = {-1, -1};
    char **envp = NULL;
    char exe[PATH_MAX];
    pid_t parent = getpid();
    pid_t pid;
    int child_err = 0;
    ssize_t r;

    assert(out != NULL && argv != NULL && argv[0] != NULL);
    if (resolve_exe(exe, sizeof exe, argv[0]) != 0) {
        err = errno;
        goto done;
    }
    envp = build_env(env);
    if (envp == NULL) {
        err = ENOMEM;
        goto done;
    }
    if (log_path != NULL) {
        log_fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (log_fd < 0) {
            err = errno;
            goto done;
        }
    }
    null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (null_fd < 0) {
        err = errno;
        goto done;
    }
    /* A close-on-exec pipe tells the parent whether execve() succeeded. */
    if (pipe(pipefd) != 0 || set_cloexec(pipefd[0]) != 0 || set_cloexec(pipefd[1]) != 0) {
        err = errno;
        goto done;
    }
    pid = fork();
    if (pid < 0) {
        err = errno;
        goto done;
    }
    if (pid == 0) {
        exec_child(exe, argv, envp, null_fd, log_fd, pipefd[1], parent);
    }
    close(pipefd[1]);
    pipefd[1] = -1;
    do {
        r = read(pipefd[0], &child_err, sizeof child_err);
    } while (r < 0 && errno == EINTR);
    if (r == (ssize_t)sizeof child_err) {
        int st;
        while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
        }
        err = child_err;
        goto done;
    }
    *out = pid;
    rc = 0;
done:
    if (log_fd >= 0) {
        close(log_fd);
    }
    if (null_fd >= 0) {
        close(null_fd);
    }
    if (pipefd[0] >= 0) {
        close(pipefd[0]);
    }
    if (pipefd[1] >= 0) {
        close(pipefd[1]);
    }
    free(envp);
    if (rc != 0) {
        errno = err;
    }
    return rc;
}

/* Returns pid once reaped, 0 if still running at the deadline, -1 on error. */
static pid_t wait_bounded(pid_t pid, int *st, int timeout_ms)
{
    int64_t deadline = now_ms() + (timeout_ms > 0 ? timeout_ms : 0);
    int64_t nap = 1;

    for (;;) {
        pid_t r = waitpid(pid, st, WNOHANG);
        if (r == pid) {
            return r;
        }
        if (r < 0 && errno != EINTR) {
            return -1;
        }
        if (now_ms() >= deadline) {
            return 0;
        }
        sleep_ms(min64(nap, deadline - now_ms()));
        nap = min64(nap * 2, 20);
    }
}

int jl_proc_stop(pid_t pid, int sig, int timeout_ms, int *out_exit_status)
{
    siginfo_t si;
    int st = 0;
    pid_t r;

    if (pid <= 0) {
        errno = EINVAL;
        return -1;
    }
    /* Never signal a pid that is not our child: it may belong to an unrelated process. */
    memset(&si, 0, sizeof si);
    if (waitid(P_PID, (id_t)pid, &si, WEXITED | WNOHANG | WNOWAIT) != 0) {
        return -1;
    }
    if (sig != 0) {
        kill(pid, sig);
    }
    r = wait_bounded(pid, &st, timeout_ms);
    if (r == 0) {
        kill(pid, SIGKILL);
        r = wait_bounded(pid, &st, KILL_REAP_TIMEOUT_MS);
        if (r == 0) {
            errno = ETIMEDOUT;
            return -1;
        }
    }
    if (r < 0) {
        return -1;
    }
    if (out_exit_status != NULL) {
        *out_exit_status = status_code(st);
    }
    return 0;
}

/* The state letter of @p pid from /proc/<pid>/stat ("pid (comm) S ..."): 0 when it is gone,
 * '?' when it exists but its state cannot be read. */
static char proc_state(pid_t pid)
{
    char path[64], buf[512];
    const char *paren;
    ssize_t n;
    int fd;

    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return errno == ENOENT ? 0 : '?';
    }
    n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) {
        return 0;
    }
    buf[n] = '\0';
    paren = strrchr(buf, ')');
    if (paren == NULL || paren[1] == '\0' || paren[2] == '\0') {
        return '?';
    }
    return paren[2];
}

int jl_proc_alive(pid_t pid)
{
    siginfo_t si;
    char st;

    if (pid <= 0) {
        return 0;
    }
    memset(&si, 0, sizeof si);
    /* WNOWAIT: look without reaping, so jl_proc_stop() can still collect the status. */
    if (waitid(P_PID, (id_t)pid, &si, WEXITED | WNOHANG | WNOWAIT) == 0) {
        return si.si_pid == 0;
    }
    /* Not our child. kill(0) succeeds on a zombie, so read the state from /proc. */
    if (kill(pid, 0) != 0 && errno == ESRCH) {
        return 0;
    }
    st = proc_state(pid);
    return st != 0 && st != 'Z' && st != 'X';
}

int jl_proc_wait_blocked(pid_t pid, int sig, int timeout_ms)
{
    char path[64], line[256];
    struct timespec ts = {0, 2000000};

    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    for (int waited = 0; waited <= timeout_ms; waited += 2) {
        if (!jl_proc_alive(pid)) {
            return 1;
        }
        FILE *f = fopen(path, "r");
        unsigned long long mask = 0;
        while (f != NULL && fgets(line, sizeof line, f) != NULL) {
            if (sscanf(line, "SigBlk: %llx", &mask) == 1) {
                break;
            }
        }
        if (f != NULL) {
            fclose(f);
        }
        if (mask & (1ULL << (sig - 1))) {
            return 0;
        }
        nanosleep(&ts, NULL);
    }
    return -1;
}

int jl_proc_pause(pid_t pid)
{
    if (pid <= 0 || kill(pid, SIGSTOP) != 0) {
        return -1;
    }
    for (int i = 0; i < 2000; i++) {
        char st = proc_state(pid);
        if (st == 'T' || st == 't') {
            return 0;
        }
        if (st == 0 || st == 'Z' || st == 'X') {
            errno = ESRCH;
            return -1;
        }
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    errno = ETIMEDOUT;
    return -1;
}

int jl_tmpdir(char *out, size_t n)
{
    const char *base = getenv("TMPDIR");
    char tmpl[PATH_MAX];
    int w;

    assert(out != NULL);
    if (base == NULL || *base == '\0') {
        base = "/tmp";
    }
    w = snprintf(tmpl, sizeof tmpl, "%s/jetledger-XXXXXX", base);
    if (w < 0 || (size_t)w >= sizeof tmpl || (size_t)w >= n) {
        errno = ENAMETOOLONG;
        return -1;
    }
    if (mkdtemp(tmpl) == NULL) {
        return -1;
    }
    memcpy(out, tmpl, (size_t)w + 1);
    return 0;
}

static int rm_tree_at(int dirfd_, const char *name, int depth)
{
    struct stat st;
    struct dirent *e;
    DIR *dir;
    int fd, rc = 0, err = 0;

    if (fstatat(dirfd_, name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
        return errno == ENOENT ? 0 : -1;
    }
    if (!S_ISDIR(st.st_mode)) {
        return (unlinkat(dirfd_, name, 0) == 0 || errno == ENOENT) ? 0 : -1;
    }
    if (depth > 64) {
        errno = ELOOP;
        return -1;
    }
    fd = openat(dirfd_, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        return -1;
    }
    dir = fdopendir(fd);
    if (dir == NULL) {
        err = errno;
        close(fd);
        errno = err;
        return -1;
    }
    /* Keep going after a failure so as much as possible is removed; report the first error. */
    while ((e = readdir(dir)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) {
            continue;
        }
        if (rm_tree_at(fd, e->d_name, depth + 1) != 0 && rc == 0) {
            rc = -1;
            err = errno;
        }
    }
    closedir(dir);
    if (unlinkat(dirfd_, name, AT_REMOVEDIR) != 0 && errno != ENOENT && rc == 0) {
        rc = -1;
        err = errno;
    }
    if (rc != 0) {
        errno = err;
    }
    return rc;
}

int jl_rm_rf(const char *path)
{
    assert(path != NULL);
    if (path[0] == '\0' || strspn(path, "/") == strlen(path)) {
        errno = EINVAL;
        return -1;
    }
    return rm_tree_at(AT_FDCWD, path, 0);
}

int jl_free_port(int *out_port)
{
    struct sockaddr_in sa;
    socklen_t len = sizeof sa;
    int fd, rc = -1, err = 0;

    assert(out_port != NULL);
    fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return -1;
    }
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sa.sin_port = 0;
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0 &&
        getsockname(fd, (struct sockaddr *)&sa, &len) == 0) {
        *out_port = ntohs(sa.sin_port);
        rc = 0;
    } else {
        err = errno;
    }
    close(fd);
    if (rc != 0) {
        errno = err;
    }
    return rc;
}

/* ---- raw NATS protocol probe ------------------------------------------------------------- */

typedef struct rawconn {
    int fd;
    size_t len;
    char buf[PROBE_BUF_LEN];
} rawconn;

static int raw_connect(rawconn *c, int port, int64_t deadline)
{
    struct sockaddr_in sa;
    struct pollfd pfd;
    int fl, soerr = 0;
    socklen_t sl = sizeof soerr;

    c->len = 0;
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        return -1;
    }
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sa.sin_port = htons((uint16_t)port);
    /* Non-blocking, so a full accept backlog on a loaded machine cannot stall us unbounded. */
    fl = fcntl(c->fd, F_GETFL);
    if (fl < 0 || fcntl(c->fd, F_SETFL, fl | O_NONBLOCK) != 0) {
        return -1;
    }
    if (connect(c->fd, (struct sockaddr *)&sa, sizeof sa) == 0) {
        return 0;
    }
    if (errno != EINPROGRESS) {
        return -1;
    }
    pfd.fd = c->fd;
    pfd.events = POLLOUT;
    pfd.revents = 0;
    if (poll(&pfd, 1, (int)(deadline - now_ms() > 0 ? deadline - now_ms() : 0)) != 1) {
        errno = ETIMEDOUT;
        return -1;
    }
    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) != 0 || soerr != 0) {
        errno = soerr ? soerr : errno;
        return -1;
    }
    return 0;
}

static void raw_close(rawconn *c)
{
    if (c->fd >= 0) {
        close(c->fd);
        c->fd = -1;
    }
}

static int raw_fill(rawconn *c, int64_t deadline)
{
    struct pollfd pfd;
    ssize_t r;
    int64_t left = deadline - now_ms();

    if (c->len + 1 >= sizeof c->buf) {
        errno = EMSGSIZE;
        return -1;
    }
    pfd.fd = c->fd;
    pfd.events = POLLIN;
    pfd.revents = 0;
    if (left <= 0 || poll(&pfd, 1, (int)left) != 1) {
        errno = ETIMEDOUT;
        return -1;
    }
    r = recv(c->fd, c->buf + c->len, sizeof c->buf - 1 - c->len, 0);
    if (r <= 0) {
        errno = r == 0 ? ECONNRESET : errno;
        return -1;
    }
    c->len += (size_t)r;
    c->buf[c->len] = '\0';
    return 0;
}

static int raw_send(rawconn *c, const char *s)
{
    size_t len = strlen(s), off = 0;
    while (off < len) {
        ssize_t w = send(c->fd, s + off, len - off, MSG_NOSIGNAL);
        if (w < 0 && errno == EAGAIN) {
            /* Loopback with a few hundred bytes: the buffer frees up at once. */
            sleep_ms(1);
            continue;
        }
        if (w < 0) {
            return -1;
        }
        off += (size_t)w;
    }
    return 0;
}

static void consume(rawconn *c, size_t n)
{
    memmove(c->buf, c->buf + n, c->len - n);
    c->len -= n;
    c->buf[c->len] = '\0';
}

/*
 * One connection: read INFO (and check "jetstream":true if want_js), then if want_api send
 * $JS.API.INFO and wait for an account-info reply without an error. 0 = ready; -1 = not (yet)
 * ready, reason in why.
 */
static int nats_probe(int port, bool want_js, bool want_api, int64_t deadline, char *why,
                      size_t why_len)
{
    rawconn *c = calloc(1, sizeof *c);
    char *eol;
    int rc = -1;

    if (c == NULL) {
        snprintf(why, why_len, "out of memory");
        return -1;
    }
    c->fd = -1;
    if (raw_connect(c, port, deadline) != 0) {
        snprintf(why, why_len, "connect to 127.0.0.1:%d: %s", port, strerror(errno));
        goto done;
    }
    while ((eol = strstr(c->buf, "\r\n")) == NULL) {
        if (raw_fill(c, deadline) != 0) {
            snprintf(why, why_len, "no INFO line from 127.0.0.1:%d: %s", port, strerror(errno));
            goto done;
        }
    }
    *eol = '\0';
    if (strncmp(c->buf, "INFO {", 6) != 0) {
        snprintf(why, why_len, "not a NATS server on port %d: %.200s", port, c->buf);
        goto done;
    }
    if (want_js && strstr(c->buf, "\"jetstream\":true") == NULL) {
        snprintf(why, why_len, "INFO does not announce JetStream: %.300s", c->buf);
        goto done;
    }
    consume(c, (size_t)(eol - c->buf) + 2);
    if (!want_api) {
        rc = 0;
        goto done;
    }
    if (raw_send(c, "CONNECT {\"verbose\":false,\"pedantic\":false,\"protocol\":1,"
                    "\"name\":\"jl-harness-probe\"}\r\n"
                    "SUB " PROBE_INBOX " 1\r\n"
                    "PUB $JS.API.INFO " PROBE_INBOX " 0\r\n\r\n") != 0) {
        snprintf(why, why_len, "send to port %d: %s", port, strerror(errno));
        goto done;
    }
    for (;;) {
        eol = strstr(c->buf, "\r\n");
        if (eol == NULL) {
            if (raw_fill(c, deadline) != 0) {
                snprintf(why, why_len, "no $JS.API.INFO reply: %s", strerror(errno));
                goto done;
            }
            continue;
        }
        if (strncmp(c->buf, "MSG ", 4) == 0) {
            size_t hdr = (size_t)(eol - c->buf) + 2;
            const char *sp;
            long size;
            *eol = '\0';
            sp = strrchr(c->buf, ' ');
            size = sp ? strtol(sp + 1, NULL, 10) : -1;
            *eol = '\r';
            if (size < 0 || hdr + (size_t)size + 2 >= sizeof c->buf) {
                snprintf(why, why_len, "bad MSG line from port %d", port);
                goto done;
            }
            while (c->len < hdr + (size_t)size + 2) {
                if (raw_fill(c, deadline) != 0) {
                    snprintf(why, why_len, "truncated $JS.API.INFO reply: %s", strerror(errno));
                    goto done;
                }
            }
            c->buf[hdr + (size_t)size] = '\0';
            if (strstr(c->buf + hdr, "\"error\"") != NULL ||
                strstr(c->buf + hdr, "account_info_response") == NULL) {
                snprintf(why, why_len, "$JS.API.INFO: %.400s", c->buf + hdr);
                goto done;
            }
            rc = 0;
            goto done;
        }
        if (strncmp(c->buf, "-ERR", 4) == 0) {
            *eol = '\0';
            snprintf(why, why_len, "server error: %.300s", c->buf);
            goto done;
        }
        if (strncmp(c->buf, "PING", 4) == 0 && raw_send(c, "PONG\r\n") != 0) {
            snprintf(why, why_len, "send to port %d: %s", port, strerror(errno));
            goto done;
        }
        /* +OK, PONG, INFO updates (cluster topology): nothing to do. */
        consume(c, (size_t)(eol - c->buf) + 2);
    }
done:
    raw_close(c);
    free(c);
    return rc;
}

/* ---- the server log ---------------------------------------------------------------------- */

/* A marker line separates runs in a log that spans restarts; with set_offset, later searches
 * start after it so an old "Server is ready" never counts for a new run. */
static int log_mark(jl_natsd *d, const char *what, bool set_offset)
{
    char line[256];
    struct stat st;
    int n, rc = -1;
    int fd = open(d->log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);

    if (fd < 0) {
        return -1;
    }
    n = snprintf(line, sizeof line, "---- jetledger test harness: %s ----\n", what);
    if (n > 0 && write(fd, line, (size_t)n) == n && (!set_offset || fstat(fd, &st) == 0)) {
        if (set_offset) {
            d->log_offset = st.st_size;
        }
        rc = 0;
    }
    close(fd);
    return rc;
}

static bool log_has(const jl_natsd *d, const char *needle)
{
    char buf[8192 + 1];
    size_t keep = 0, nlen = strlen(needle);
    off_t pos = d->log_offset;
    bool found = false;
    int fd = open(d->log_path, O_RDONLY | O_CLOEXEC);

    if (fd < 0) {
        return false;
    }
    /* Chunked with an overlap, so a long log (many streams recovered) is scanned in full. */
    for (;;) {
        ssize_t r = pread(fd, buf + keep, sizeof buf - 1 - keep, pos);
        size_t len;
        if (r <= 0) {
            break;
        }
        pos += r;
        len = keep + (size_t)r;
        buf[len] = '\0';
        if (strstr(buf, needle) != NULL) {
            found = true;
            break;
        }
        keep = nlen - 1 < len ? nlen - 1 : len;
        memmove(buf, buf + len - keep, keep);
    }
    close(fd);
    return found;
}

/* The last lines of the current run's output, for error messages. */
static void log_tail(const jl_natsd *d, char *out, size_t n)
{
    struct stat st;
    off_t start;
    ssize_t r;
    char *p;
    int fd = open(d->log_path, O_RDONLY | O_CLOEXEC);

    out[0] = '\0';
    if (fd < 0) {
        return;
    }
    if (fstat(fd, &st) == 0) {
        start = st.st_size - (off_t)(n - 1);
        if (start < d->log_offset) {
            start = d->log_offset;
        }
        r = pread(fd, out, n - 1, start);
        out[r > 0 ? r : 0] = '\0';
        p = out;
        if (start > d->log_offset && (p = strchr(out, '\n')) != NULL) {
            p++;
        } else {
            p = out;
        }
        memmove(out, p, strlen(p) + 1);
        while (out[0] != '\0' && out[strlen(out) - 1] == '\n') {
            out[strlen(out) - 1] = '\0';
        }
    }
    close(fd);
}

/* ---- jl_natsd ---------------------------------------------------------------------------- */

void jl_natsd_opts_init(jl_natsd_opts *opts)
{
    assert(opts != NULL);
    memset(opts, 0, sizeof *opts);
    opts->jetstream = true;
    opts->start_timeout_ms = JL_NATSD_START_TIMEOUT_MS;
}

static int resolve_server(jl_natsd *d, const jl_natsd_opts *opts)
{
    const char *env = getenv("JL_NATS_SERVER");
    const char *path = opts->server_path;

    if (path == NULL && env != NULL && *env != '\0') {
        path = env;
    }
    if (path != NULL) {
        if (resolve_exe(d->server_path, sizeof d->server_path, path) != 0) {
            set_err(d, "nats-server '%s' not found: %s", path, strerror(errno));
            return -1;
        }
    } else if (resolve_exe(d->server_path, sizeof d->server_path, "nats-server") != 0) {
        /* /usr/sbin is often not on a non-root PATH. */
        copy_str(d->server_path, sizeof d->server_path, "/usr/sbin/nats-server");
    }
    if (access(d->server_path, X_OK) != 0) {
        set_err(d, "nats-server '%s' is not executable: %s (set JL_NATS_SERVER)", d->server_path,
                strerror(errno));
        return -1;
    }
    return 0;
}

static int setup_store(jl_natsd *d, const jl_natsd_opts *opts)
{
    char real[PATH_MAX];
    int w1, w2;

    if (opts->store_dir != NULL) {
        if (mkdir(opts->store_dir, 0700) != 0 && errno != EEXIST) {
            set_err(d, "cannot create store dir '%s': %s", opts->store_dir, strerror(errno));
            return -1;
        }
        /* Absolute, so the config does not depend on the server's working directory. */
        if (realpath(opts->store_dir, real) == NULL ||
            copy_str(d->store_dir, sizeof d->store_dir, real) != 0) {
            set_err(d, "bad store dir '%s': %s", opts->store_dir, strerror(errno));
            return -1;
        }
    } else {
        if (jl_tmpdir(d->store_dir, sizeof d->store_dir) != 0) {
            set_err(d, "cannot create a temp store dir: %s", strerror(errno));
            return -1;
        }
        d->owns_store = true;
    }
    if (!conf_safe(d->store_dir)) {
        set_err(d, "store dir '%s' contains a quote, backslash or newline", d->store_dir);
        return -1;
    }
    w1 = snprintf(d->conf_path, sizeof d->conf_path, "%s/natsd.conf", d->store_dir);
    w2 = snprintf(d->log_path, sizeof d->log_path, "%s/natsd.log", d->store_dir);
    if (w1 < 0 || (size_t)w1 >= sizeof d->conf_path || w2 < 0 || (size_t)w2 >= sizeof d->log_path) {
        set_err(d, "store dir path too long: %s", d->store_dir);
        return -1;
    }
    return 0;
}

static int check_opts(jl_natsd *d, const jl_natsd_opts *opts)
{
    if (opts->port < 0 || opts->port > 65535 || opts->cluster_port < 0 ||
        opts->cluster_port > 65535) {
        set_err(d, "port out of range");
        return -1;
    }
    if (opts->n_routes < 0 || (opts->n_routes > 0 && opts->routes == NULL)) {
        set_err(d, "n_routes is %d but routes is NULL", opts->n_routes);
        return -1;
    }
    if ((opts->server_name && !conf_safe(opts->server_name)) ||
        (opts->cluster_name && !conf_safe(opts->cluster_name))) {
        set_err(d, "server_name/cluster_name contains a quote, backslash or newline");
        return -1;
    }
    for (int i = 0; i < opts->n_routes; i++) {
        if (opts->routes[i] == NULL || !conf_safe(opts->routes[i])) {
            set_err(d, "route %d is NULL or contains a quote, backslash or newline", i);
            return -1;
        }
    }
    return 0;
}

static int pick_ports(jl_natsd *d, const jl_natsd_opts *opts)
{
    d->port = opts->port;
    d->cluster_port = d->clustered ? opts->cluster_port : 0;
    if (d->port == 0 && jl_free_port(&d->port) != 0) {
        set_err(d, "no free port: %s", strerror(errno));
        return -1;
    }
    /* Two bind(0) calls in a row can return the same port once the first socket is closed. */
    while (d->clustered && opts->cluster_port == 0 &&
           (d->cluster_port == 0 || d->cluster_port == d->port)) {
        if (jl_free_port(&d->cluster_port) != 0) {
            set_err(d, "no free cluster port: %s", strerror(errno));
            return -1;
        }
    }
    snprintf(d->url, sizeof d->url, "nats://127.0.0.1:%d", d->port);
    return 0;
}

static int write_config(jl_natsd *d, const jl_natsd_opts *opts)
{
    FILE *f = fopen(d->conf_path, "w");
    int ok;

    if (f == NULL) {
        set_err(d, "cannot write %s: %s", d->conf_path, strerror(errno));
        return -1;
    }
    fprintf(f, "# Generated by the jetledger test harness (tests/harness/natsd.c).\n");
    fprintf(f, "listen: \"127.0.0.1:%d\"\n", d->port);
    if (opts->server_name != NULL) {
        fprintf(f, "server_name: \"%s\"\n", opts->server_name);
    } else if (d->clustered) {
        fprintf(f, "server_name: \"jl-%d\"\n", d->port);
    }
    if (opts->jetstream) {
        fprintf(f, "jetstream {\n  store_dir: \"%s\"\n", d->store_dir);
        if (opts->extra_jetstream_config != NULL) {
            fprintf(f, "%s\n", opts->extra_jetstream_config);
        }
        fprintf(f, "}\n");
    }
    if (d->clustered) {
        fprintf(f, "cluster {\n  name: \"%s\"\n  listen: \"127.0.0.1:%d\"\n", opts->cluster_name,
                d->cluster_port);
        if (opts->n_routes > 0) {
            fprintf(f, "  routes: [\n");
            for (int i = 0; i < opts->n_routes; i++) {
                fprintf(f, "    \"%s\"\n", opts->routes[i]);
            }
            fprintf(f, "  ]\n");
        }
        fprintf(f, "}\n");
    }
    if (opts->extra_config != NULL) {
        fprintf(f, "# extra_config\n%s\n", opts->extra_config);
    }
    ok = !ferror(f);
    if (fclose(f) != 0 || !ok) {
        set_err(d, "cannot write %s: %s", d->conf_path, strerror(errno));
        return -1;
    }
    return 0;
}

static void reap_if_exited(jl_natsd *d)
{
    int st;
    if (d->pid != 0 && waitpid(d->pid, &st, WNOHANG) == d->pid) {
        d->exit_status = status_code(st);
        d->pid = 0;
    }
}

/*
 * "Server is ready" in our own log first: it proves that OUR process listens on the port (a
 * connect alone could reach another test's server that took the same port). Then the INFO line
 * and, for a standalone JetStream server, a $JS.API.INFO round trip.
 */
static int wait_ready(jl_natsd *d)
{
    int64_t deadline = now_ms() + d->start_timeout_ms;
    int64_t nap = 5;
    bool logged_ready = false;
    char why[512] = "server did not log \"" READY_LINE "\"";

    for (;;) {
        reap_if_exited(d);
        if (d->pid == 0) {
            set_err(d, "nats-server exited with status %d during startup (config %s)",
                    d->exit_status, d->conf_path);
            return -1;
        }
        if (!logged_ready) {
            logged_ready = log_has(d, READY_LINE);
        }
        if (logged_ready &&
            nats_probe(d->port, d->jetstream, d->jetstream && !d->clustered,
                       min64(deadline, now_ms() + PROBE_ATTEMPT_MS), why, sizeof why) == 0) {
            return 0;
        }
        if (now_ms() >= deadline) {
            set_err(d, "nats-server (pid %d, port %d) not ready within %d ms: %s", (int)d->pid,
                    d->port, d->start_timeout_ms, why);
            return -1;
        }
        sleep_ms(min64(nap, deadline - now_ms()));
        nap = min64(nap * 2, 50);
    }
}

/* Spawn the server with the existing config and wait for it; on failure nothing is left running
 * and d->err holds the reason plus the log tail. */
static int launch(jl_natsd *d)
{
    const char *argv[] = {d->server_path, "-c", d->conf_path, NULL};
    char tail[LOG_TAIL_LEN];
    pid_t pid;
    int st;

    d->port_in_use = false;
    if (log_mark(d, "start", true) != 0) {
        set_err(d, "cannot write log %s: %s", d->log_path, strerror(errno));
        return -1;
    }
    if (jl_proc_spawn(&pid, argv, NULL, d->log_path) != 0) {
        set_err(d, "cannot run %s: %s", d->server_path, strerror(errno));
        return -1;
    }
    d->pid = pid;
    if (wait_ready(d) == 0) {
        d->err[0] = '\0';
        return 0;
    }
    if (d->pid != 0) {
        if (jl_proc_stop(d->pid, SIGKILL, KILL_REAP_TIMEOUT_MS, &st) == 0) {
            d->exit_status = st;
            d->pid = 0;
        } else if (errno == ECHILD) {
            d->pid = 0;
        }
    }
    d->port_in_use = log_has(d, ADDR_IN_USE);
    log_tail(d, tail, sizeof tail);
    append_err(d, "; server log:\n%s", tail[0] ? tail : "(empty)");
    return -1;
}

int jl_natsd_start(jl_natsd **out, const jl_natsd_opts *opts)
{
    jl_natsd *d = NULL;
    bool any_auto_port;
    int rc = -1;

    assert(out != NULL && opts != NULL);
    d = calloc(1, sizeof *d);
    if (d == NULL) {
        goto done;
    }
    d->exit_status = -1;
    d->jetstream = opts->jetstream;
    d->clustered = opts->cluster_name != NULL;
    d->keep_store = opts->keep_store;
    d->start_timeout_ms =
        opts->start_timeout_ms > 0 ? opts->start_timeout_ms : JL_NATSD_START_TIMEOUT_MS;
    if (check_opts(d, opts) != 0 || resolve_server(d, opts) != 0 || setup_store(d, opts) != 0) {
        goto done;
    }
    any_auto_port = opts->port == 0 || (d->clustered && opts->cluster_port == 0);
    for (int attempt = 1;; attempt++) {
        if (pick_ports(d, opts) != 0 || write_config(d, opts) != 0) {
            goto done;
        }
        if (launch(d) == 0) {
            rc = 0;
            break;
        }
        /* Another process took a port between our probe and the server's bind: pick again. */
        if (!any_auto_port || !d->port_in_use || attempt >= PORT_ATTEMPTS) {
            break;
        }
    }
done:
    if (rc == 0) {
        *out = d;
    } else {
        const char *why = d != NULL ? d->err : "out of memory";
        if (opts->err_buf != NULL && opts->err_buf_len > 0) {
            snprintf(opts->err_buf, opts->err_buf_len, "%s", why);
        } else {
            fprintf(stderr, "jl_natsd_start: %s\n", why);
        }
        jl_natsd_destroy(d);
    }
    return rc;
}

const char *jl_natsd_url(const jl_natsd *d)
{
    assert(d != NULL);
    return d->url;
}

int jl_natsd_port(const jl_natsd *d)
{
    assert(d != NULL);
    return d->port;
}

int jl_natsd_cluster_port(const jl_natsd *d)
{
    assert(d != NULL);
    return d->cluster_port;
}

const char *jl_natsd_store_dir(const jl_natsd *d)
{
    assert(d != NULL);
    return d->store_dir;
}

const char *jl_natsd_log_path(const jl_natsd *d)
{
    assert(d != NULL);
    return d->log_path;
}

pid_t jl_natsd_pid(const jl_natsd *d)
{
    assert(d != NULL);
    return d->pid;
}

int jl_natsd_exit_status(const jl_natsd *d)
{
    assert(d != NULL);
    return d->exit_status;
}

const char *jl_natsd_errmsg(const jl_natsd *d)
{
    assert(d != NULL);
    return d->err;
}

int jl_natsd_wait_jetstream(jl_natsd *d, int timeout_ms)
{
    int64_t deadline = now_ms() + (timeout_ms > 0 ? timeout_ms : 0);
    char why[512] = "timeout";

    assert(d != NULL);
    for (;;) {
        reap_if_exited(d);
        if (d->pid == 0) {
            set_err(d, "nats-server on port %d is not running", d->port);
            return -1;
        }
        if (nats_probe(d->port, true, true, min64(deadline, now_ms() + PROBE_ATTEMPT_MS), why,
                       sizeof why) == 0) {
            return 0;
        }
        if (now_ms() >= deadline) {
            set_err(d, "JetStream on port %d not available within %d ms: %s", d->port, timeout_ms,
                    why);
            return -1;
        }
        sleep_ms(min64(100, deadline - now_ms()));
    }
}

static int end_process(jl_natsd *d, int sig, const char *what)
{
    int st;

    assert(d != NULL);
    reap_if_exited(d);
    if (d->pid == 0) {
        return 0;
    }
    log_mark(d, what, false);
    if (jl_proc_stop(d->pid, sig, JL_NATSD_STOP_TIMEOUT_MS, &st) != 0) {
        set_err(d, "cannot stop nats-server pid %d: %s", (int)d->pid, strerror(errno));
        if (errno == ECHILD) {
            d->pid = 0;
        }
        return -1;
    }
    d->exit_status = st;
    d->pid = 0;
    return 0;
}

int jl_natsd_stop(jl_natsd *d)
{
    return end_process(d, SIGTERM, "stop (SIGTERM)");
}

int jl_natsd_kill9(jl_natsd *d)
{
    return end_process(d, SIGKILL, "kill9 (SIGKILL)");
}

int jl_natsd_restart(jl_natsd *d)
{
    assert(d != NULL);
    if (jl_natsd_stop(d) != 0) {
        return -1;
    }
    return launch(d);
}

void jl_natsd_destroy(jl_natsd *d)
{
    if (d == NULL) {
        return;
    }
    end_process(d, SIGTERM, "destroy (SIGTERM)");
    /* JL_TEST_KEEP=1 keeps stores and logs for a post-mortem, as the tests' own dirs. */
    if (d->owns_store && !d->keep_store && getenv("JL_TEST_KEEP") == NULL &&
        d->store_dir[0] != '\0') {
        jl_rm_rf(d->store_dir);
    }
    free(d);
}

int jl_proc_spawn_tmpfs(pid_t *out, const char *const argv[], const char *const env[],
                        const char *log_path, const char *dir, const char *size)
{
    enum { MAX_ARGS = 32 };
    char script[200];
    const char *wrapped[MAX_ARGS + 12];
    int n = 0;
    snprintf(script, sizeof(script),
             "mount -t tmpfs -o size=%s jl-test \"$1\" && shift && exec \"$@\"", size);
    const char *const head[] = {"unshare", "-m", "--propagation", "private", "sh", "-c", script,
                                "sh",      dir};
    for (size_t i = 0; i < sizeof(head) / sizeof(head[0]); i++)
        wrapped[n++] = head[i];
    for (int i = 0; argv[i] != NULL; i++) {
        if (i == MAX_ARGS) {
            errno = E2BIG;
            return -1;
        }
        wrapped[n++] = argv[i];
    }
    wrapped[n] = NULL;
    return jl_proc_spawn(out, wrapped, env, log_path);
}

int jl_tmpfs_resize(pid_t pid, const char *dir, const char *size)
{
    char line[PATH_MAX + 200];
    snprintf(line, sizeof(line), "nsenter -t %d -m -r mount -o remount,size=%s '%s'", (int)pid,
             size, dir);
    return system(line) == 0 ? 0 : -1;
}
