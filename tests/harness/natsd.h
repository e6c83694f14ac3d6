/*
 * natsd.h - integration-test harness: real nats-server processes and helper child processes.
 *
 * TEST CODE ONLY. This is not part of libjetledger and is linked only into test executables
 * (static library `jl_test_harness`). It does not link libnats: readiness is checked with the
 * raw NATS text protocol over TCP.
 *
 * Conventions (test code, so simpler than the library's jl_status):
 * - Fallible functions return int: 0 on success, -1 on failure. The jl_natsd_* functions put a
 *   message on the object (jl_natsd_errmsg()); jl_natsd_start() has no object on failure and
 *   reports through jl_natsd_opts.err_buf (or stderr). The jl_proc_*, jl_tmpdir, jl_rm_rf and
 *   jl_free_port helpers set errno.
 * - Out-params come first and are written only on success.
 * - No global state. A jl_natsd is not thread-safe: use each object from one thread at a time.
 *
 * Leak protection: every child (nats-server or jl_proc_spawn) is started with
 * prctl(PR_SET_PDEATHSIG, SIGKILL), so when the test process dies (crash, failed Check assertion
 * in fork mode, ctest timeout) its servers and helpers die with it. On Linux the "parent" is the
 * THREAD that forked: start children from a thread that outlives them (e.g. the test's main
 * thread), never from a short-lived worker thread.
 *
 * Children are reaped with waitpid(): do not set SIGCHLD to SIG_IGN in a test that uses this.
 */
#ifndef JETLEDGER_TESTS_NATSD_H
#define JETLEDGER_TESTS_NATSD_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/** Default bound on jl_natsd_start()/jl_natsd_restart() waiting for readiness, in ms. */
#define JL_NATSD_START_TIMEOUT_MS 10000
/** How long jl_natsd_stop() waits after SIGTERM before it sends SIGKILL, in ms. */
#define JL_NATSD_STOP_TIMEOUT_MS 5000

/** A running (or stopped, restartable) nats-server child process. Opaque. */
typedef struct jl_natsd jl_natsd;

/**
 * Options for jl_natsd_start(). Plain data: call jl_natsd_opts_init() first, then set fields.
 * All pointers are borrowed for the duration of jl_natsd_start() only (nothing is kept).
 */
typedef struct jl_natsd_opts {
    /** Enable JetStream (a `jetstream { store_dir: ... }` block). Default true. */
    bool jetstream;
    /**
     * Directory holding the generated config (natsd.conf), the server log (natsd.log) and the
     * JetStream store (<store_dir>/jetstream). NULL (default): a fresh mkdtemp() directory under
     * $TMPDIR or /tmp, owned by the harness and removed on jl_natsd_destroy() unless keep_store.
     * A caller-given directory is created if missing (one level) and is never removed.
     * Must not contain '"', '\\' or a newline (it is quoted in the config file).
     */
    const char *store_dir;
    /** Keep the harness-created temp directory on destroy (to inspect logs). Default false. */
    bool keep_store;
    /**
     * Client port on 127.0.0.1. 0 (default): pick a free loopback port; if the server then fails
     * with "address already in use" (another process took the port), start retries with a new one.
     * A non-zero port is used as is (no retry).
     */
    int port;
    /**
     * server_name. NULL (default): the server's own default (its ID), or "jl-<port>" when
     * cluster_name is set (clustered JetStream requires a name).
     */
    const char *server_name;
    /** Cluster name. NULL (default): no `cluster {}` block (cluster_port and routes ignored). */
    const char *cluster_name;
    /** Cluster (route) port on 127.0.0.1. 0 (default): a free port (retried like `port`). */
    int cluster_port;
    /**
     * Route URLs, e.g. "nats-route://127.0.0.1:6222" (listing the node itself is harmless).
     * For a 3-node cluster, reserve the cluster ports first with jl_free_port(). Default NULL/0.
     */
    const char **routes;
    int n_routes;
    /** Lines inserted inside the generated `jetstream {}` block, e.g. "sync_interval: always". */
    const char *extra_jetstream_config;
    /**
     * Text appended verbatim to the generated config file. Note that a repeated top-level key
     * replaces the generated one: a second `jetstream {}` block drops the generated store_dir
     * (use extra_jetstream_config instead).
     */
    const char *extra_config;
    /**
     * nats-server executable. NULL (default): $JL_NATS_SERVER if set and non-empty, else
     * `nats-server` found on $PATH, else /usr/sbin/nats-server.
     */
    const char *server_path;
    /** Readiness bound for start and restart, in ms. Default JL_NATSD_START_TIMEOUT_MS. */
    int start_timeout_ms;
    /**
     * Optional caller buffer that receives a message (with the tail of the server log) when
     * jl_natsd_start() fails. NULL (default): the message is written to stderr instead.
     */
    char *err_buf;
    size_t err_buf_len;
} jl_natsd_opts;

/**
 * Set every field of *opts to its default (see the field comments).
 * @param opts caller-owned struct; must not be NULL.
 */
void jl_natsd_opts_init(jl_natsd_opts *opts);

/**
 * Write a config file into the store directory and start nats-server on 127.0.0.1 with it
 * (`nats-server -c <store_dir>/natsd.conf`, stdout+stderr appended to <store_dir>/natsd.log),
 * then wait, bounded by opts->start_timeout_ms, until it is ready:
 *   1. the server logged "Server is ready" (this proves it is OUR process on the port),
 *   2. a TCP connection to the client port receives an `INFO {...}` line (with
 *      "jetstream":true when JetStream is on),
 *   3. JetStream without a cluster: a `$JS.API.INFO` request gets an account-info reply.
 *      A clustered node is not checked this way (its meta group needs the other nodes): start
 *      all nodes, then call jl_natsd_wait_jetstream() on each.
 * If the server exits early or the bound passes, the process is killed and reaped, a temp store
 * is removed (unless keep_store), and the message goes to opts->err_buf or stderr.
 *
 * @param out  receives the new server on success (free with jl_natsd_destroy()); untouched on
 *             failure.
 * @param opts options, borrowed; must not be NULL.
 * @return 0 if the server is running and ready, -1 otherwise.
 */
int jl_natsd_start(jl_natsd **out, const jl_natsd_opts *opts);

/**
 * Client URL, "nats://127.0.0.1:PORT". Owned by d, valid until jl_natsd_destroy(d); stays the
 * same across stop/restart.
 */
const char *jl_natsd_url(const jl_natsd *d);

/** Client port (same across stop/restart). */
int jl_natsd_port(const jl_natsd *d);

/** Cluster port, or 0 when the server was started without cluster_name. */
int jl_natsd_cluster_port(const jl_natsd *d);

/** Store directory (absolute if it was generated). Owned by d, valid until destroy. */
const char *jl_natsd_store_dir(const jl_natsd *d);

/** Path of the server log file (<store_dir>/natsd.log). Owned by d, valid until destroy. */
const char *jl_natsd_log_path(const jl_natsd *d);

/** Process id of the running server, or 0 when it is stopped. */
pid_t jl_natsd_pid(const jl_natsd *d);

/**
 * Exit status of the last server process that ended (as a shell reports it: the exit code, or
 * 128+signal number when killed by a signal), or -1 if none has ended yet. nats-server 2.10
 * exits with 1 after a clean SIGTERM shutdown; jl_natsd_kill9() gives 137.
 */
int jl_natsd_exit_status(const jl_natsd *d);

/**
 * Message about the last failure on d (bounded, includes the log tail where useful), or "".
 * Owned by d; overwritten by the next failing call and cleared by a successful (re)start.
 */
const char *jl_natsd_errmsg(const jl_natsd *d);

/**
 * Wait until `$JS.API.INFO` on this server returns account info without an error, bounded by
 * timeout_ms. Use it after starting all nodes of a cluster (a meta leader must be elected), or
 * after a restart of a clustered node.
 * @return 0 when JetStream answers, -1 on timeout or when the server is not running (message
 *         on d).
 */
int jl_natsd_wait_jetstream(jl_natsd *d, int timeout_ms);

/**
 * Stop the server: SIGTERM, wait up to JL_NATSD_STOP_TIMEOUT_MS, then SIGKILL; reap it.
 * The port, config and store directory are kept for jl_natsd_restart(). Stopping a stopped
 * server is a no-op.
 * @return 0 when no server process remains, -1 if it could not be reaped (message on d).
 */
int jl_natsd_stop(jl_natsd *d);

/**
 * Simulate a crash: SIGKILL the server and reap it (no clean JetStream shutdown). The server can
 * be restarted with jl_natsd_restart(). A no-op on a stopped server.
 * @return 0 when no server process remains, -1 otherwise (message on d).
 */
int jl_natsd_kill9(jl_natsd *d);

/**
 * Start the server again with the same config file, port and store directory (stopping it first
 * if it is still running) and wait for readiness as jl_natsd_start() does. There is no port
 * retry here: if another process took the port meanwhile, restart fails.
 * @return 0 if running and ready, -1 otherwise (message on d; the server is then stopped).
 */
int jl_natsd_restart(jl_natsd *d);

/**
 * Stop the server if running, remove the store directory if the harness created it (unless
 * keep_store) and free d. NULL is a no-op.
 */
void jl_natsd_destroy(jl_natsd *d);

/* ---- generic helpers for integration tests ---------------------------------------------- */

/**
 * Spawn a child process (fork + execve) with PR_SET_PDEATHSIG=SIGKILL, stdin from /dev/null
 * and file descriptors above 2 closed.
 * @param out      receives the child's pid on success; reap it with jl_proc_stop().
 * @param argv     NULL-terminated; argv[0] is a path, or a name searched on $PATH.
 * @param env      NULL or a NULL-terminated list of "KEY=VALUE" added to (or replacing in) the
 *                 current environment.
 * @param log_path NULL: inherit stdout/stderr; else both are appended to this file (created
 *                 0644 if missing).
 * @return 0 once the exec succeeded, -1 with errno set if the log cannot be opened, the fork
 *         fails or the exec fails (the failed child is reaped).
 */
int jl_proc_spawn(pid_t *out, const char *const argv[], const char *const env[],
                  const char *log_path);

/**
 * jl_proc_spawn() of @p argv in a mount namespace of its own (unshare -m, private propagation)
 * where directory @p dir (which must exist) is a tmpfs of @p size ("400k", "64m"): a small disk
 * the test can fill, and grow with jl_tmpfs_resize(). The pid is the program's (sh execs it).
 * Needs root, as the integration tests run. Returns as jl_proc_spawn().
 */
int jl_proc_spawn_tmpfs(pid_t *out, const char *const argv[], const char *const env[],
                        const char *log_path, const char *dir, const char *size);

/** Resize the tmpfs that jl_proc_spawn_tmpfs() gave @p pid at @p dir. 0, or -1. */
int jl_tmpfs_resize(pid_t pid, const char *dir, const char *size);

/**
 * Send sig to a child started by this process, wait up to timeout_ms for it to exit, then
 * SIGKILL it if needed; reap it. A child that already exited is just reaped.
 * @param out_exit_status NULL, or receives the exit code, or 128+signal if killed by a signal
 *                        (so /bin/sleep stopped with SIGTERM gives 143, a SIGKILL gives 137).
 * @param sig             signal to send first; 0 sends none (just wait, then SIGKILL).
 * @return 0 once reaped, -1 with errno set (ECHILD: not our child or already reaped; no
 *         signal is sent then).
 */
int jl_proc_stop(pid_t pid, int sig, int timeout_ms, int *out_exit_status);

/**
 * @return 1 if pid is running (an exited but unreaped child, i.e. a zombie, counts as not
 *         running; the child is not reaped), 0 otherwise.
 */
int jl_proc_alive(pid_t pid);

/**
 * Wait until @p pid blocks signal @p sig (as a jetledger service does from the start of main, to
 * take SIGTERM and SIGINT on its own thread): from then on the signal starts its stop instead of
 * killing it. Polls /proc/<pid>/status.
 * @return 0 once blocked, 1 if the process exited first, -1 after @p timeout_ms.
 */
int jl_proc_wait_blocked(pid_t pid, int sig, int timeout_ms);

/**
 * SIGSTOP @p pid and wait (up to 2 s) until it is stopped: kill() only queues the signal, and a
 * test whose next request got through before it took effect would see an answer it does not
 * expect. SIGCONT resumes it.
 * @return 0 once stopped, -1 with errno set (ESRCH: it is gone; ETIMEDOUT).
 */
int jl_proc_pause(pid_t pid);

/**
 * Create a fresh private directory (mkdtemp) "$TMPDIR/jetledger-XXXXXX" ($TMPDIR unset or
 * empty: /tmp).
 * @param out receives the path, NUL-terminated; caller-owned buffer of n bytes.
 * @return 0 on success, -1 with errno set (ENAMETOOLONG if n is too small).
 */
int jl_tmpdir(char *out, size_t n);

/**
 * Remove path recursively (like `rm -rf`; symlinks are removed, not followed). A missing path is
 * success. Refuses "" and "/" (EINVAL).
 * @return 0 on success, -1 with errno set.
 */
int jl_rm_rf(const char *path);

/**
 * Pick a currently free TCP port on 127.0.0.1 (bind port 0, read it, close). Another process
 * may take it before you bind it: be ready to retry.
 * @param out_port receives the port on success.
 * @return 0 on success, -1 with errno set.
 */
int jl_free_port(int *out_port);

#ifdef __cplusplus
}
#endif

#endif /* JETLEDGER_TESTS_NATSD_H */
