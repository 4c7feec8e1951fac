# shellcheck shell=bash
# An OPC UA server for scripts/services.sh (sourced by it; uses its helpers).
#
# The server is scripts/services.d/OpcuaTestServer.java, built on Eclipse Milo's server SDK
# (org.eclipse.milo:sdk-server from Maven Central, resolved by Maven once into a cache dir
# that survives 'down' and 'rm -rf .services') and run with `java`. Milo, not asyncua's
# own server, so that the OPC UA source (asyncua) is tested against another implementation
# of the protocol.
#
#   opc.tcp://127.0.0.1:${UNSFLOW_OPCUA_PORT:-48410}/unsflow
#   security None, and Basic256Sha256 SignAndEncrypt (every client certificate accepted)
#   logins: anonymous, or user "unsflow" with the password below
#
# Environment:
#   UNSFLOW_OPCUA_PORT        TCP port (default 48410)
#   UNSFLOW_OPCUA_BENCH_NODES Double variables under Bench/ (default 100; benchmarks use more)
#   UNSFLOW_OPCUA_UPDATE_MS   how often every dynamic variable changes (default 100)
#   UNSFLOW_OPCUA_PASSWORD    password of user "unsflow"
#   UNSFLOW_CACHE_DIR         download cache (default ~/.cache/unsflow); jars in opcua-milo-<version>/libs
#
# Docs: docs/services.md, docs/components/opcua.md

SERVICES+=(opcua)

MILO_VERSION=${UNSFLOW_MILO_VERSION:-0.6.16}
OPCUA_HOST=127.0.0.1
OPCUA_PORT=${UNSFLOW_OPCUA_PORT:-48410}
OPCUA_BENCH_NODES=${UNSFLOW_OPCUA_BENCH_NODES:-100}
OPCUA_UPDATE_MS=${UNSFLOW_OPCUA_UPDATE_MS:-100}
OPCUA_USER=unsflow
OPCUA_PASSWORD=${UNSFLOW_OPCUA_PASSWORD:-unsflow-test-password}
OPCUA_START_TIMEOUT=60 # seconds from `java` to READY (a JVM on 2 busy cores)
OPCUA_CACHE=${UNSFLOW_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/unsflow}/opcua-milo-$MILO_VERSION
case $OPCUA_CACHE in /*) ;; *) OPCUA_CACHE=$PWD/$OPCUA_CACHE ;; esac
OPCUA_LIBS=$OPCUA_CACHE/libs
OPCUA_CLASSES=$OPCUA_CACHE/classes
OPCUA_DIR=$SERVICES_DIR/opcua
OPCUA_PID=$OPCUA_DIR/opcua.pid
OPCUA_LOG=$OPCUA_DIR/server.log

install_opcua() {
    local missing=()
    command -v java >/dev/null 2>&1 && command -v javac >/dev/null 2>&1 ||
        missing+=(openjdk-17-jdk-headless)
    command -v mvn >/dev/null 2>&1 || missing+=(maven)
    [ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"
    maven_libs "$OPCUA_CACHE" "org.eclipse.milo:sdk-server:$MILO_VERSION" "
    <dependency>
      <groupId>org.eclipse.milo</groupId>
      <artifactId>sdk-server</artifactId>
      <version>$MILO_VERSION</version>
    </dependency>
    <dependency>
      <groupId>org.slf4j</groupId>
      <artifactId>slf4j-simple</artifactId>
      <version>1.7.36</version>
    </dependency>"
    # One compile at a time per cache (several data dirs share it).
    exec 8>"$OPCUA_CACHE/.compile.lock"
    flock -w 900 8 || die "opcua: another install holds $OPCUA_CACHE/.compile.lock for 900 s"
    opcua_compile
    exec 8>&-
}

# The server, compiled against the cached jars; again when its source changed.
opcua_compile() {
    local src=$REPO_ROOT/scripts/services.d/OpcuaTestServer.java
    [ -f "$OPCUA_CLASSES/OpcuaTestServer.class" ] && [ ! "$src" -nt "$OPCUA_CLASSES/OpcuaTestServer.class" ] &&
        return 0
    rm -rf "$OPCUA_CLASSES.tmp"
    mkdir -p "$OPCUA_CLASSES.tmp"
    javac -nowarn -d "$OPCUA_CLASSES.tmp" -cp "$OPCUA_LIBS/*" "$src" >"$OPCUA_CACHE/javac.log" 2>&1 || {
        cat "$OPCUA_CACHE/javac.log" >&2
        exec 8>&-
        die "opcua: javac could not compile $src"
    }
    rm -rf "$OPCUA_CLASSES"
    mv "$OPCUA_CLASSES.tmp" "$OPCUA_CLASSES"
}

opcua_pid() { pid_alive "$OPCUA_PID" "OpcuaTestServer $OPCUA_PORT "; }

write_opcua_info() {
    local tmp=$OPCUA_DIR/info.json.tmp
    cat >"$tmp" <<EOF
{
  "endpoint": "opc.tcp://$OPCUA_HOST:$OPCUA_PORT/unsflow",
  "host": "$OPCUA_HOST",
  "port": $OPCUA_PORT,
  "namespace": "urn:unsflow:test-server",
  "username": "$OPCUA_USER",
  "password": $(json_str "$OPCUA_PASSWORD"),
  "bench_nodes": $OPCUA_BENCH_NODES,
  "update_ms": $OPCUA_UPDATE_MS,
  "log": $(json_str "$OPCUA_LOG")
}
EOF
    mv "$tmp" "$OPCUA_DIR/info.json"
}

opcua_failed() {
    local why=$1 pid
    printf 'services: error: opcua: %s\n' "$why" >&2
    if pid=$(opcua_pid); then stop_pid opcua "$pid"; fi
    if [ -s "$OPCUA_LOG" ]; then
        echo "--- last 30 lines of $OPCUA_LOG" >&2
        tail -n 30 "$OPCUA_LOG" >&2
    fi
    exit 1
}

start_opcua() {
    local pid
    if pid=$(opcua_pid); then
        log "opcua already running (pid $pid, data $OPCUA_DIR)"
        [ -s "$OPCUA_DIR/info.json" ] || write_opcua_info
        return 0
    fi
    command -v java >/dev/null 2>&1 || die "opcua: java not found; scripts/services.sh install opcua installs it"
    [ -f "$OPCUA_CLASSES/OpcuaTestServer.class" ] || install_opcua
    opcua_compile
    if port_open "$OPCUA_HOST" "$OPCUA_PORT"; then
        {
            echo "services: error: port $OPCUA_PORT on $OPCUA_HOST is in use by another process, not by the OPC UA server of $OPCUA_DIR;"
            echo "  stop it or choose another port with UNSFLOW_OPCUA_PORT"
            who_listens "$OPCUA_PORT"
        } >&2
        exit 1
    fi
    mkdir -p "$OPCUA_DIR"
    rm -f "$OPCUA_PID" "$OPCUA_DIR/info.json"
    if [ -f "$OPCUA_LOG" ]; then mv -f "$OPCUA_LOG" "$OPCUA_LOG.1"; fi
    # shellcheck disable=SC2016 # expanded by the inner shell
    setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$OPCUA_PID" \
        java -Xmx512m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Dorg.slf4j.simpleLogger.defaultLogLevel=warn \
        -cp "$OPCUA_CLASSES:$OPCUA_LIBS/*" OpcuaTestServer "$OPCUA_PORT" "$OPCUA_DIR/server" \
        "$OPCUA_USER" "$OPCUA_PASSWORD" "$OPCUA_BENCH_NODES" "$OPCUA_UPDATE_MS" \
        </dev/null >"$OPCUA_LOG" 2>&1 9>&- 8>&- &
    pid=""
    for _ in $(seq 1 $((OPCUA_START_TIMEOUT * 10))); do
        if [ -s "$OPCUA_PID" ] && ! kill -0 "$(tr -dc '0-9' <"$OPCUA_PID")" 2>/dev/null; then
            opcua_failed "exited during start"
        fi
        pid=$(opcua_pid) || pid=""
        if [ -n "$pid" ] && grep -q '^READY' "$OPCUA_LOG" 2>/dev/null && port_open "$OPCUA_HOST" "$OPCUA_PORT"; then
            break
        fi
        pid=""
        sleep 0.1
    done
    [ -n "$pid" ] || opcua_failed "not ready on $OPCUA_HOST:$OPCUA_PORT within $OPCUA_START_TIMEOUT s"
    write_opcua_info
    log "opcua running (pid $pid): opc.tcp://$OPCUA_HOST:$OPCUA_PORT/unsflow, info $OPCUA_DIR/info.json"
}

stop_opcua() {
    local pid
    if pid=$(opcua_pid); then
        stop_pid opcua "$pid"
    else
        log "opcua not running"
    fi
}

status_opcua() {
    local pid
    if pid=$(opcua_pid); then
        printf '%-10s running  pid %-7s listeners %s  data %s\n' opcua "$pid" "$OPCUA_HOST:$OPCUA_PORT" "$OPCUA_DIR"
    else
        printf '%-10s stopped\n' opcua
        return 3
    fi
}
