# Shared by scripts/*: paths, logging, and the build every script starts with.
# shellcheck shell=bash
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# Absolute: scripts change directory into it.
BUILD_DIR=$(realpath -m -- "${JL_BUILD_DIR:-$ROOT/build}")
export BIN=$BUILD_DIR/bin
# Root's PATH without the sbin directories (su without -, cron): dpkg refuses to run without
# ldconfig and start-stop-daemon on it, and the tests run nft, ss, unshare and mount by name.
case ":$PATH:" in *:/usr/sbin:*) ;; *) export PATH="$PATH:/usr/sbin:/sbin" ;; esac

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Install what is missing, then configure and build (incrementally) into $BUILD_DIR. The tests
# run the nats-server bootstrap checked: given to cmake each time, as its cache would otherwise
# keep the one it found first (an older one on PATH, or one since replaced).
# Two scripts started together (a test run and the demo) build one at a time: two builds of one
# tree at once fail, or leave objects half written.
bootstrap_and_build() {
    local server
    "$ROOT/scripts/bootstrap"
    server=$(nats_server_bin) || die "no nats-server after scripts/bootstrap"
    mkdir -p "$BUILD_DIR"
    local lock=$BUILD_DIR/.build.lock
    # Read-only: a lock file made by root (scripts/test under sudo) serves a user's run too.
    : >>"$lock" 2>/dev/null || true
    (
        if ! flock -n 9; then
            say "waiting for another build of $BUILD_DIR to finish"
            flock -w 3600 9 || die "another build of $BUILD_DIR has held it for an hour"
        fi
        say "building into $BUILD_DIR"
        cmake -S "$ROOT" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE="${JL_BUILD_TYPE:-RelWithDebInfo}" \
            -DNATS_SERVER:FILEPATH="$server" "$@" >/dev/null
        cmake --build "$BUILD_DIR" -j "$(nproc)" >/dev/null || {
            cmake --build "$BUILD_DIR" -j 1 2>&1 | tail -40 || true # set -e: still say why
            die "build failed"
        }
    ) 9<"$lock"
}

# The environment variables the services read (their settings): those in shared/src/config.c.
config_env_names() {
    grep -o '"\(JL_[A-Z_]*\|NATS_URL\)"' "$ROOT/shared/src/config.c" | tr -d '"' | sort -u
}

# Unset what the services would take from the caller's environment, their settings and fault
# injection (shared/src/fault.c): a run chooses its own. Names in $@ are kept.
unset_service_env() {
    local v
    for v in $(config_env_names) JL_FAULT_POINT JL_FAULT_AFTER JL_FAULT_ACTION; do
        [[ " $* " == *" $v "* ]] || unset "$v"
    done
}

# The nats-server the scripts run: the one scripts/bootstrap installs, before any other on PATH
# (which may be older; bootstrap checks the same one).
nats_server_bin() {
    if [ -x /usr/sbin/nats-server ]; then echo /usr/sbin/nats-server; else command -v nats-server; fi
}

# A partition test that died before healing (a failed assertion ends its process at once,
# a signal, a ctest timeout) leaves its firewall table (jl_fault_<pid>), whose rules would go on
# dropping traffic on ports later tests and programs may be given: removed once its process is
# gone, before and after the run.
remove_dead_fault_tables() {
    command -v nft >/dev/null || return 0
    local pid
    for pid in $(nft list tables 2>/dev/null | sed -n 's/^table inet jl_fault_\([0-9][0-9]*\)$/\1/p'); do
        kill -0 "$pid" 2>/dev/null || nft delete table inet "jl_fault_$pid" 2>/dev/null || true
    done
}

# A private temporary directory for a run ($TMPDIR of what it starts), removed by
# end_run_tmpdir: the tests' servers keep their stores in mkdtemp dirs, which a run stopped by
# a signal or a timeout (Check kills the test with SIGKILL) would leave behind.
start_run_tmpdir() {
    RUN_TMPDIR=$(mktemp -d "${TMPDIR:-/tmp}/jetledger-run.XXXXXX")
    export TMPDIR=$RUN_TMPDIR
}
end_run_tmpdir() {
    [ -n "${RUN_TMPDIR:-}" ] && rm -rf "$RUN_TMPDIR"
    return 0
}

# in_own_group CMD...: run CMD in a session (process group) of its own and wait for it; a TERM,
# HUP or INT to the script goes to the whole group first (CMD's servers and services with it:
# ctest, say, does not stop its running test on SIGTERM), then the script exits 143, 129 or
# 130, and its EXIT trap cleans up once nothing of CMD runs (a temporary directory removed
# under a benchmark still running would leave its servers behind). Otherwise CMD's status. The
# traps are set before CMD starts, or a signal in between would leave it running unstopped. A
# background job starts with SIGINT ignored: CMD gets it back (Ctrl-C then stops CMD whole).
# What of the group does not stop within 30 s of the signal (CMD, or a process of its that
# ignores it and outlives it) is killed. Before CMD's setsid the group does not exist yet: the
# signal then goes to the process itself.
GROUP_PID=""
stop_group() { # $1: the signal to pass on
    if [ -n "$GROUP_PID" ]; then
        kill -"$1" -- -"$GROUP_PID" 2>/dev/null || kill -"$1" "$GROUP_PID" 2>/dev/null || true
        # No output of its own: a CI log read through a pipe must not wait for it.
        (
            sleep 30
            kill -KILL -- -"$GROUP_PID" 2>/dev/null || kill -KILL "$GROUP_PID" 2>/dev/null
        ) >/dev/null 2>&1 &
        local killer=$! i
        wait "$GROUP_PID" || true
        for i in $(seq 1 150); do # CMD reaped: what is left of its group (pgrep sees no zombie)
            pgrep -g "$GROUP_PID" >/dev/null 2>&1 || break
            sleep 0.2
        done
        kill "$killer" 2>/dev/null || true
    fi
}
in_own_group() {
    local status=0
    trap 'stop_group TERM; exit 143' TERM
    trap 'stop_group TERM; exit 129' HUP
    trap 'stop_group INT; say "interrupted"; exit 130' INT
    setsid env --default-signal=INT "$@" &
    GROUP_PID=$!
    wait "$GROUP_PID" || status=$?
    GROUP_PID=""
    trap - TERM HUP INT
    return "$status"
}

# A TCP port on loopback that nothing listens on, below the kernel's range of ephemeral ports
# (where an outgoing connection could take it between this check and its use).
free_port() {
    local p lo=32768 span
    read -r lo _ </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || true
    [[ $lo =~ ^[0-9]+$ ]] && [ "$lo" -gt 11024 ] || lo=32768
    span=$((lo - 10000 < 20000 ? lo - 10000 : 20000))
    for _ in $(seq 1 50); do
        p=$((lo - span + RANDOM % span))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return 0
        fi
    done
    die "no free port found"
}

# Wait until a TCP port accepts connections (up to $2 seconds).
wait_port() {

    for _ in $(seq 1 $(($2 * 10))); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}
