# shellcheck shell=bash
# moto's server for scripts/services.sh (sourced by it; uses its helpers): a
# local endpoint that speaks the AWS APIs, used for AWS Secrets Manager.
#
# moto keeps everything in memory: a restart forgets every secret, so tests
# create the secrets they read. Any access key works; info.json names one.
#
# Environment:
#   UNSFLOW_MOTO_PORT   HTTP on 127.0.0.1 (default 5050)
#   UNSFLOW_PYTHON      interpreter that has moto[server] (default: as scripts/setup.sh picks)

SERVICES+=(moto)

MOTO_HOST=127.0.0.1
MOTO_PORT=${UNSFLOW_MOTO_PORT:-5050}
MOTO_REGION=us-east-1
MOTO_DIR=$SERVICES_DIR/moto
MOTO_PID=$MOTO_DIR/moto.pid
MOTO_LOG=$MOTO_DIR/moto.log

# The interpreter, chosen as scripts/setup.sh and scripts/test.sh choose it.
moto_python() {
    if [ -n "${UNSFLOW_PYTHON:-}" ]; then
        echo "$UNSFLOW_PYTHON"
    elif [ -z "${VIRTUAL_ENV:-}" ] && [ -x "$REPO_ROOT/.venv/bin/python" ]; then
        echo "$REPO_ROOT/.venv/bin/python"
    else
        echo python3
    fi
}

# moto[server] is a Python package of unsflow's dev extra, not a system
# package: 'install' only reports whether it is there.
install_moto() {
    local py
    py=$(moto_python)
    if ! "$py" -c 'import moto.server, flask, flask_cors' >/dev/null 2>&1; then
        log "moto: $py lacks moto[server]; scripts/setup.sh --extras dev (or pip install 'moto[server]') installs it"
    fi
}

moto_pid() { pid_alive "$MOTO_PID" "moto.server"; }

write_moto_info() {
    local tmp=$MOTO_DIR/info.json.tmp
    cat >"$tmp" <<EOF
{
  "endpoint": "http://$MOTO_HOST:$MOTO_PORT",
  "host": "$MOTO_HOST",
  "port": $MOTO_PORT,
  "access_key": "testing",
  "secret_key": "testing",
  "region": "$MOTO_REGION",
  "log": $(json_str "$MOTO_LOG")
}
EOF
    mv "$tmp" "$MOTO_DIR/info.json"
}

moto_failed() {
    local why=$1 pid
    printf 'services: error: moto: %s\n' "$why" >&2
    if pid=$(moto_pid); then stop_pid moto "$pid"; fi
    if [ -s "$MOTO_LOG" ]; then
        echo "--- last 30 lines of $MOTO_LOG" >&2
        tail -n 30 "$MOTO_LOG" >&2
    fi
    exit 1
}

start_moto() {
    local pid py
    if pid=$(moto_pid); then
        log "moto already running (pid $pid, data $MOTO_DIR)"
        [ -s "$MOTO_DIR/info.json" ] || write_moto_info
        return 0
    fi
    py=$(moto_python)
    command -v "$py" >/dev/null 2>&1 || die "moto: Python interpreter $py not found (set UNSFLOW_PYTHON)"
    "$py" -c 'import moto.server, flask, flask_cors' >/dev/null 2>&1 ||
        die "moto: $py cannot import moto's server; install unsflow's test dependencies" \
            "(scripts/setup.sh --extras dev, or: $py -m pip install 'moto[server]>=5')"
    if port_open "$MOTO_HOST" "$MOTO_PORT"; then
        {
            echo "services: error: port $MOTO_PORT on $MOTO_HOST is in use by another process, not by the moto server of $MOTO_DIR;"
            echo "  stop it or choose another port with UNSFLOW_MOTO_PORT"
            who_listens "$MOTO_PORT"
        } >&2
        exit 1
    fi
    mkdir -p "$MOTO_DIR"
    rm -f "$MOTO_PID" "$MOTO_DIR/info.json"
    if [ -f "$MOTO_LOG" ]; then mv -f "$MOTO_LOG" "$MOTO_LOG.1"; fi

    # As for minio: own session, own pid file, output to a file, no lock fd.
    # shellcheck disable=SC2016 # expanded by the inner shell
    setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$MOTO_PID" \
        "$py" -m moto.server -H "$MOTO_HOST" -p "$MOTO_PORT" \
        </dev/null >"$MOTO_LOG" 2>&1 9>&- &

    pid=""
    for _ in $(seq 1 $((START_TIMEOUT * 2 * 10))); do
        if [ -s "$MOTO_PID" ] && ! kill -0 "$(tr -dc '0-9' <"$MOTO_PID")" 2>/dev/null; then
            moto_failed "exited during start"
        fi
        pid=$(moto_pid) || pid=""
        if [ -n "$pid" ] && http_ok "http://$MOTO_HOST:$MOTO_PORT/moto-api/"; then
            break
        fi
        pid=""
        sleep 0.1
    done
    [ -n "$pid" ] || moto_failed "not answering on http://$MOTO_HOST:$MOTO_PORT within $((START_TIMEOUT * 2)) s"
    write_moto_info
    log "moto running (pid $pid): http://$MOTO_HOST:$MOTO_PORT, info $MOTO_DIR/info.json"
}

stop_moto() {
    local pid
    if pid=$(moto_pid); then
        stop_pid moto "$pid"
    else
        log "moto not running"
    fi
}

status_moto() {
    local pid
    if pid=$(moto_pid); then
        printf '%-10s running  pid %-7s listeners %s  data %s\n' moto "$pid" "$MOTO_HOST:$MOTO_PORT" "$MOTO_DIR"
    else
        printf '%-10s stopped\n' moto
        return 3
    fi
}
