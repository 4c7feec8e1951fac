# shellcheck shell=bash
# MinIO for scripts/services.sh (sourced by it; uses its helpers).
#
# Built from its Go module with `go install` at a pinned version, into a cache
# that outlives `down` and `rm -rf .services`, so only the first `up` on a
# machine builds (about 3.5 min) and every later one starts in seconds.
#
# Environment:
#   UNSFLOW_MINIO_PORT            S3 API on 127.0.0.1 (default 9000); the web console is off
#   UNSFLOW_MINIO_ROOT_USER       access key of the root user (default unsflow)
#   UNSFLOW_MINIO_ROOT_PASSWORD   its secret key (default unsflow-test-secret)
#   UNSFLOW_CACHE_DIR             where built binaries are kept (default ~/.cache/unsflow)

SERVICES+=(minio)

# `go install github.com/minio/minio@latest` resolves to this pseudo-version
# (MinIO tags releases as RELEASE.<date>, which Go does not take as semver).
# Pinned so that CI and every laptop build the same server; change both
# lines together.
MINIO_MODULE=github.com/minio/minio
MINIO_VERSION=v0.0.0-20260212201848-7aac2a2c5b7c
MINIO_GO_MIN=1.24 # the module's go.mod says go 1.24.0

UNSFLOW_CACHE=${UNSFLOW_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/unsflow}
case $UNSFLOW_CACHE in /*) ;; *) UNSFLOW_CACHE=$PWD/$UNSFLOW_CACHE ;; esac
# The version is part of the path: bumping MINIO_VERSION builds anew.
MINIO_BIN=$UNSFLOW_CACHE/minio/$MINIO_VERSION/minio
MINIO_HOST=127.0.0.1
MINIO_PORT=${UNSFLOW_MINIO_PORT:-9000}
MINIO_USER=${UNSFLOW_MINIO_ROOT_USER:-unsflow}
MINIO_PASSWORD=${UNSFLOW_MINIO_ROOT_PASSWORD:-unsflow-test-secret}
MINIO_REGION=us-east-1
MINIO_DIR=$SERVICES_DIR/minio
MINIO_PID=$MINIO_DIR/minio.pid
MINIO_LOG=$MINIO_DIR/minio.log
MINIO_START_TIMEOUT=60 # a first start formats the drive

# find_go : print the go command, looking where the official tarball puts it.
find_go() {
    if command -v go 2>/dev/null; then return 0; fi
    local candidate
    for candidate in /usr/local/go/bin/go "$HOME/go/bin/go" "$HOME/.local/go/bin/go"; do
        if [ -x "$candidate" ]; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

install_minio() {
    [ -x "$MINIO_BIN" ] && return 0
    local go goversion dir build_log start
    go=$(find_go) || die "minio: Go is not installed, and MinIO is built from its Go module" \
        "($MINIO_MODULE@$MINIO_VERSION). Install Go $MINIO_GO_MIN or newer (https://go.dev/dl/)" \
        "and run this again, or put a minio binary at $MINIO_BIN"
    goversion=$("$go" env GOVERSION 2>/dev/null || true)
    if ! printf '%s\n%s\n' "go$MINIO_GO_MIN" "$goversion" | sort -V -C; then
        die "minio: $MINIO_MODULE@$MINIO_VERSION needs Go $MINIO_GO_MIN or newer; $go is" \
            "${goversion:-of unknown version}. Install a newer Go (https://go.dev/dl/), or let" \
            "this Go fetch one with GOTOOLCHAIN=auto"
    fi
    dir=$(dirname "$MINIO_BIN")
    mkdir -p "$dir"
    # One build at a time per cache (parallel test sessions, CI jobs sharing
    # a cache): the others wait, then find the binary.
    if command -v flock >/dev/null 2>&1; then
        exec 8>"$dir/.build.lock"
        flock -w 1800 8 || die "minio: another build holds $dir/.build.lock for 30 min"
        if [ -x "$MINIO_BIN" ]; then
            exec 8>&-
            return 0
        fi
    fi
    build_log=$dir/build.log
    log "minio: building $MINIO_MODULE@$MINIO_VERSION with $goversion (a few minutes, once per machine; log $build_log)"
    start=$SECONDS
    # Into a temporary GOBIN, then renamed: an interrupted build leaves no
    # half-written binary that the next 'up' would take for a good one.
    # CGO_ENABLED=0: a static binary, and no C compiler needed.
    rm -rf "$dir/gobin.tmp"
    if ! GOBIN=$dir/gobin.tmp CGO_ENABLED=0 GOFLAGS=-buildvcs=false \
        "$go" install "$MINIO_MODULE@$MINIO_VERSION" </dev/null >"$build_log" 2>&1 8>&- 9>&-; then
        {
            echo "services: error: minio: go install $MINIO_MODULE@$MINIO_VERSION failed"
            echo "--- last 30 lines of $build_log"
            tail -n 30 "$build_log"
        } >&2
        exit 1
    fi
    mv -f "$dir/gobin.tmp/minio" "$MINIO_BIN"
    rm -rf "$dir/gobin.tmp"
    exec 8>&-
    log "minio: built $MINIO_BIN in $((SECONDS - start)) s"
}

minio_pid() { pid_alive "$MINIO_PID" "$MINIO_DIR/data"; }

write_minio_info() {
    local tmp=$MINIO_DIR/info.json.tmp
    cat >"$tmp" <<EOF
{
  "endpoint": "http://$MINIO_HOST:$MINIO_PORT",
  "host": "$MINIO_HOST",
  "port": $MINIO_PORT,
  "access_key": $(json_str "$MINIO_USER"),
  "secret_key": $(json_str "$MINIO_PASSWORD"),
  "region": "$MINIO_REGION",
  "version": "$MINIO_VERSION",
  "data_dir": $(json_str "$MINIO_DIR/data"),
  "log": $(json_str "$MINIO_LOG")
}
EOF
    mv "$tmp" "$MINIO_DIR/info.json"
}

minio_failed() {
    local why=$1 pid
    printf 'services: error: minio: %s\n' "$why" >&2
    if pid=$(minio_pid); then stop_pid minio "$pid"; fi
    if [ -s "$MINIO_LOG" ]; then
        echo "--- last 30 lines of $MINIO_LOG" >&2
        tail -n 30 "$MINIO_LOG" >&2
    fi
    exit 1
}

start_minio() {
    local pid
    if pid=$(minio_pid); then
        log "minio already running (pid $pid, data $MINIO_DIR)"
        [ -s "$MINIO_DIR/info.json" ] || write_minio_info
        return 0
    fi
    install_minio
    if port_open "$MINIO_HOST" "$MINIO_PORT"; then
        {
            echo "services: error: port $MINIO_PORT on $MINIO_HOST is in use by another process, not by the MinIO of $MINIO_DIR;"
            echo "  stop it or choose another port with UNSFLOW_MINIO_PORT"
            who_listens "$MINIO_PORT"
            other_data_dir "$MINIO_PORT" /minio/data
        } >&2
        exit 1
    fi
    mkdir -p "$MINIO_DIR/data"
    rm -f "$MINIO_PID" "$MINIO_DIR/info.json"
    if [ -f "$MINIO_LOG" ]; then mv -f "$MINIO_LOG" "$MINIO_LOG.1"; fi

    # setsid: its own session, so a test run's Ctrl-C does not reach it. The
    # shell writes its own pid and then becomes minio (exec). Output goes to a
    # file and the lock (fd 9) is not inherited, as for mosquitto.
    # shellcheck disable=SC2016 # expanded by the inner shell
    MINIO_ROOT_USER=$MINIO_USER MINIO_ROOT_PASSWORD=$MINIO_PASSWORD \
        MINIO_BROWSER=off MINIO_UPDATE=off MINIO_SITE_REGION=$MINIO_REGION \
        setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$MINIO_PID" \
        "$MINIO_BIN" server --address "$MINIO_HOST:$MINIO_PORT" "$MINIO_DIR/data" \
        </dev/null >"$MINIO_LOG" 2>&1 8>&- 9>&- &

    pid=""
    for _ in $(seq 1 $((MINIO_START_TIMEOUT * 10))); do
        if [ -s "$MINIO_PID" ] && ! kill -0 "$(tr -dc '0-9' <"$MINIO_PID")" 2>/dev/null; then
            minio_failed "exited during start"
        fi
        pid=$(minio_pid) || pid=""
        # live: the process serves HTTP; ready: the drive is formatted and
        # the object layer takes requests.
        if [ -n "$pid" ] && http_ok "http://$MINIO_HOST:$MINIO_PORT/minio/health/live" &&
            http_ok "http://$MINIO_HOST:$MINIO_PORT/minio/health/ready"; then
            break
        fi
        pid=""
        sleep 0.1
    done
    [ -n "$pid" ] || minio_failed "not ready on http://$MINIO_HOST:$MINIO_PORT within $MINIO_START_TIMEOUT s"
    write_minio_info
    log "minio running (pid $pid): http://$MINIO_HOST:$MINIO_PORT, info $MINIO_DIR/info.json"
}

stop_minio() {
    local pid
    if pid=$(minio_pid); then
        stop_pid minio "$pid"
    else
        log "minio not running"
    fi
}

status_minio() {
    local pid
    if pid=$(minio_pid); then
        printf '%-10s running  pid %-7s listeners %s  data %s\n' minio "$pid" "$MINIO_HOST:$MINIO_PORT" "$MINIO_DIR"
    else
        printf '%-10s stopped\n' minio
        return 3
    fi
}
