#!/usr/bin/env bash
# Install, start, stop and report the real services that unsflow's tests talk to.
#
#   scripts/services.sh install [name...]   install the system packages only
#   scripts/services.sh up      [name...]   install if missing, configure, start (idempotent)
#   scripts/services.sh down    [name...]   stop
#   scripts/services.sh status  [name...]   running/stopped, pid, ports; exit 3 if any is stopped
#
# Names: mosquitto, and those in scripts/services.d/*.sh (kafka, minio, moto; their
# variables are listed at the top of each file). Without names, every service.
# Each service has install_X, start_X, stop_X and status_X; add a service by
# writing those four functions and adding its name to SERVICES.
#
# Environment:
#   UNSFLOW_SERVICES_DIR          data dir (default: <repo>/.services)
#   UNSFLOW_MQTT_PORT             plain MQTT listener, anonymous (default 1883)
#   UNSFLOW_MQTTS_PORT            TLS + password listener (default 8883)
#   UNSFLOW_MQTT_TEST_PASSWORD    password of user "unsflow" on the TLS listener
#   UNSFLOW_MQTT_EXTRA_CONF       extra general mosquitto.conf lines (benchmarks)
#
# Docs: docs/services.md
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SERVICES_DIR=${UNSFLOW_SERVICES_DIR:-$REPO_ROOT/.services}
case $SERVICES_DIR in /*) ;; *) SERVICES_DIR=$PWD/$SERVICES_DIR ;; esac
SERVICES=(mosquitto)
START_TIMEOUT=10 # seconds a service may take to accept connections

log() { printf 'services: %s\n' "$*" >&2; }
die() {
    printf 'services: error: %s\n' "$*" >&2
    exit 1
}

# ---------------------------------------------------------------- helpers

# as_root, apt_install
# shellcheck source=scripts/lib.sh
. "$REPO_ROOT/scripts/lib.sh"

# find_bin NAME : print the path of a program, looking in sbin too
# (/usr/sbin is not on a non-root user's PATH on Debian, and mosquitto lives there).
find_bin() {
    local name=$1 dir
    if command -v "$name" 2>/dev/null; then return 0; fi
    for dir in /usr/sbin /usr/local/sbin /sbin; do
        if [ -x "$dir/$name" ]; then
            echo "$dir/$name"
            return 0
        fi
    done
    return 1
}

# port_open HOST PORT : true when something accepts TCP connections there.
port_open() {
    if command -v timeout >/dev/null 2>&1; then
        timeout 2 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null
    else
        (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
    fi
}

# who_listens PORT : what listens on a TCP port, when ss can tell; and when it
# is another checkout's test broker, which UNSFLOW_SERVICES_DIR would share it.
who_listens() {
    local line pid conf
    command -v ss >/dev/null 2>&1 || return 0
    line=$(ss -H -ltnp "sport = :$1" 2>/dev/null | head -n 1 || true)
    [ -n "$line" ] || return 0
    echo "  $line"
    pid=$(sed -n 's/.*pid=\([0-9]*\).*/\1/p' <<<"$line")
    [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 0
    conf=$(tr '\0' '\n' <"/proc/$pid/cmdline" | grep -m1 '/mosquitto/mosquitto\.conf$' || true)
    if [ -n "$conf" ]; then
        echo "  that is the test broker of another data dir; to use it: UNSFLOW_SERVICES_DIR=${conf%/mosquitto/mosquitto.conf}"
    fi
}

# pid_alive PIDFILE NEEDLE : print the pid when the process in PIDFILE is alive
# and its command line contains NEEDLE (so a reused pid is not mistaken for ours).
pid_alive() {
    local pidfile=$1 needle=$2 pid cmdline
    [ -s "$pidfile" ] || return 1
    pid=$(tr -dc '0-9' <"$pidfile")
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    if [ -r "/proc/$pid/cmdline" ]; then
        cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline")
    else
        cmdline=$(ps -p "$pid" -o command= 2>/dev/null || true)
    fi
    case $cmdline in *"$needle"*) echo "$pid" ;; *) return 1 ;; esac
}

# stop_pid NAME PID : SIGTERM, wait up to 10 s, then SIGKILL.
stop_pid() {
    local name=$1 pid=$2
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || {
            log "$name stopped (pid $pid)"
            return 0
        }
        sleep 0.1
    done
    log "$name (pid $pid) did not stop within 10 s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
}

json_str() { # a JSON string literal
    local s=${1//\\/\\\\}
    s=${s//\"/\\\"}
    printf '"%s"' "$s"
}

# ---------------------------------------------------------------- certificates
# One test CA under $SERVICES_DIR/ca, made once and kept; every service that
# speaks TLS gets a certificate signed by it, so tests trust one ca.crt.
# ECDSA P-256 keys: generated in milliseconds (RSA takes a good fraction of a
# second each), and every TLS stack we meet (OpenSSL, Java, Go) takes them.
KEY_ARGS=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)

ensure_ca() {
    local dir=$SERVICES_DIR/ca
    [ -s "$dir/ca.crt" ] && [ -s "$dir/ca.key" ] && return 0
    mkdir -p "$dir"
    log "creating the test CA in $dir"
    # Critical basicConstraints and keyUsage: Python 3.13+ verifies with
    # VERIFY_X509_STRICT and rejects a CA without them.
    cat >"$dir/ca.cnf" <<'EOF'
[req]
distinguished_name = dn
x509_extensions = v3_ca
prompt = no
[dn]
CN = unsflow test CA
[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
EOF
    (umask 077 && openssl req -x509 -new -config "$dir/ca.cnf" "${KEY_ARGS[@]}" \
        -sha256 -days 3650 -keyout "$dir/ca.key.tmp" -out "$dir/ca.crt.tmp" 2>/dev/null) ||
        die "openssl could not create the test CA"
    chmod 644 "$dir/ca.crt.tmp"
    mv "$dir/ca.key.tmp" "$dir/ca.key"
    mv "$dir/ca.crt.tmp" "$dir/ca.crt"
}

# issue_cert DIR NAME CN USAGE [SAN] : DIR/NAME.crt + DIR/NAME.key signed by the
# test CA, kept while it still verifies against the CA (and has not expired).
issue_cert() {
    local dir=$1 name=$2 cn=$3 usage=$4 san=${5:-} ca=$SERVICES_DIR/ca
    if [ -s "$dir/$name.crt" ] && [ -s "$dir/$name.key" ] &&
        openssl verify -CAfile "$ca/ca.crt" "$dir/$name.crt" >/dev/null 2>&1; then
        return 0
    fi
    mkdir -p "$dir"
    log "issuing $dir/$name.crt (CN=$cn)"
    {
        echo "basicConstraints = CA:FALSE"
        echo "keyUsage = critical, digitalSignature"
        echo "extendedKeyUsage = $usage"
        echo "subjectKeyIdentifier = hash"
        echo "authorityKeyIdentifier = keyid, issuer"
        [ -z "$san" ] || echo "subjectAltName = $san"
    } >"$dir/$name.ext"
    (umask 077 && openssl req -new "${KEY_ARGS[@]}" -subj "/CN=$cn" \
        -keyout "$dir/$name.key.tmp" -out "$dir/$name.csr" 2>/dev/null) ||
        die "openssl could not create a key for $name"
    openssl x509 -req -in "$dir/$name.csr" -CA "$ca/ca.crt" -CAkey "$ca/ca.key" \
        -set_serial "0x$(openssl rand -hex 16)" -sha256 -days 3650 \
        -extfile "$dir/$name.ext" -out "$dir/$name.crt.tmp" 2>/dev/null ||
        die "openssl could not sign the certificate for $name"
    rm -f "$dir/$name.csr" "$dir/$name.ext"
    mv "$dir/$name.key.tmp" "$dir/$name.key"
    mv "$dir/$name.crt.tmp" "$dir/$name.crt"
}

# ---------------------------------------------------------------- mosquitto

MQTT_HOST=127.0.0.1
MQTT_PORT=${UNSFLOW_MQTT_PORT:-1883}
MQTTS_PORT=${UNSFLOW_MQTTS_PORT:-8883}
MQTT_USER=unsflow
MQTT_PASSWORD=${UNSFLOW_MQTT_TEST_PASSWORD:-unsflow-test-password}
MOSQ_DIR=$SERVICES_DIR/mosquitto
MOSQ_CONF=$MOSQ_DIR/mosquitto.conf
MOSQ_PID=$MOSQ_DIR/mosquitto.pid
MOSQ_LOG=$MOSQ_DIR/mosquitto.log

install_mosquitto() {
    local missing=()
    find_bin mosquitto >/dev/null || missing+=(mosquitto)
    find_bin mosquitto_passwd >/dev/null || missing+=(mosquitto)
    { find_bin mosquitto_sub && find_bin mosquitto_pub; } >/dev/null || missing+=(mosquitto-clients)
    find_bin openssl >/dev/null || missing+=(openssl)
    [ ${#missing[@]} -eq 0 ] && return 0
    # shellcheck disable=SC2207 # package names have no spaces
    missing=($(printf '%s\n' "${missing[@]}" | sort -u))
    apt_install "${missing[@]}"
    # The Debian package starts a system-wide broker on port 1883, which would
    # take the port our test broker needs. We installed it just now for the
    # tests, so stop that system service again.
    if [ -d /run/systemd/system ] && systemctl is-active --quiet mosquitto 2>/dev/null; then
        log "stopping and disabling the system mosquitto service that apt-get just started"
        as_root systemctl disable --now mosquitto >/dev/null 2>&1 || true
    fi
}

mosquitto_pid() { pid_alive "$MOSQ_PID" "$MOSQ_CONF"; }

write_mosquitto_conf() {
    local user_line=""
    # Run as root, mosquitto switches to user "mosquitto", which may not be
    # allowed to write the data dir inside someone's checkout. Stay root then.
    if [ "$(id -u)" -eq 0 ]; then user_line="user root"; fi
    cat >"$MOSQ_CONF" <<EOF
# Written by scripts/services.sh: the test broker. Edits are overwritten on start.
# Every option here is documented in mosquitto.conf(5) of Mosquitto 2.0.11.
$user_line
pid_file $MOSQ_PID
log_dest file $MOSQ_LOG
log_timestamp_format %Y-%m-%dT%H:%M:%S

# Authentication is configured per listener: anonymous on the plain port,
# a password on the TLS port.
per_listener_settings true

# The default (1000) silently drops QoS 1/2 messages queued for an offline
# persistent session beyond 1000; the kill -9 test publishes 20,000 while the
# pipeline is down and asserts that none is lost.
max_queued_messages 1000000

# Unacknowledged QoS 1/2 messages in flight per client: the window towards an
# MQTT 3.1.1 subscriber (and an MQTT 5 one that sends no receive-maximum), and
# the receive-maximum this broker announces to MQTT 5 publishers. The default
# 20 caps a subscriber that acknowledges only after durable acceptance
# (deferred acks) at 20 messages per commit round trip.
max_inflight_messages 1000

# Sessions and queued messages survive a broker restart (the fault tests stop
# and start the broker); saved every second rather than every 30 minutes, so a
# broker killed hard loses at most about a second of queue state.
persistence true
# (Mosquitto 1.x appends the file name without a slash; 2.0 adds one, harmlessly.)
persistence_location $MOSQ_DIR/data/
autosave_interval 1

# Extra general options from UNSFLOW_MQTT_EXTRA_CONF (one per line); the
# benchmarks set queue_qos0_messages to queue a QoS 0 backlog.
${UNSFLOW_MQTT_EXTRA_CONF:-}

# Plain MQTT, anonymous, loopback only.
listener $MQTT_PORT $MQTT_HOST
allow_anonymous true

# MQTT over TLS with user name and password. The client certificate is not
# required here; certs/client.crt exists for mutual-TLS tests.
listener $MQTTS_PORT $MQTT_HOST
allow_anonymous false
password_file $MOSQ_DIR/passwd
cafile $SERVICES_DIR/ca/ca.crt
certfile $MOSQ_DIR/certs/server.crt
keyfile $MOSQ_DIR/certs/server.key
EOF
}

write_mosquitto_info() {
    local tmp=$MOSQ_DIR/info.json.tmp
    cat >"$tmp" <<EOF
{
  "host": "$MQTT_HOST",
  "port": $MQTT_PORT,
  "tls_port": $MQTTS_PORT,
  "ca_file": $(json_str "$SERVICES_DIR/ca/ca.crt"),
  "client_cert": $(json_str "$MOSQ_DIR/certs/client.crt"),
  "client_key": $(json_str "$MOSQ_DIR/certs/client.key"),
  "username": "$MQTT_USER",
  "password": $(json_str "$MQTT_PASSWORD"),
  "log": $(json_str "$MOSQ_LOG")
}
EOF
    mv "$tmp" "$MOSQ_DIR/info.json"
}

mosquitto_failed() {
    local why=$1 pid
    printf 'services: error: mosquitto: %s\n' "$why" >&2
    # A half-started broker would pass for a running one on the next 'up'.
    if pid=$(mosquitto_pid); then stop_pid mosquitto "$pid"; fi
    if [ -s "$MOSQ_DIR/mosquitto.stderr" ]; then
        echo "--- $MOSQ_DIR/mosquitto.stderr" >&2
        tail -n 30 "$MOSQ_DIR/mosquitto.stderr" >&2
    fi
    if [ -s "$MOSQ_LOG" ]; then
        echo "--- last 30 lines of $MOSQ_LOG" >&2
        tail -n 30 "$MOSQ_LOG" >&2
    fi
    exit 1
}

start_mosquitto() {
    local pid port bin
    if pid=$(mosquitto_pid); then
        log "mosquitto already running (pid $pid, data $MOSQ_DIR)"
        port=$(awk '$1 == "listener" { printf "%s%s", sep, $2; sep = " " }' "$MOSQ_CONF")
        if [ "$port" != "$MQTT_PORT $MQTTS_PORT" ]; then
            log "note: it listens on ports $port, not $MQTT_PORT $MQTTS_PORT as asked; 'down' then 'up' to change"
        fi
        return 0
    fi
    install_mosquitto
    bin=$(find_bin mosquitto) || die "mosquitto is not installed"
    for port in "$MQTT_PORT" "$MQTTS_PORT"; do
        if port_open "$MQTT_HOST" "$port"; then
            {
                echo "services: error: port $port on $MQTT_HOST is in use by another process, not by the broker of $MOSQ_DIR;"
                echo "  stop it (a system broker: sudo systemctl stop mosquitto) or choose other ports with UNSFLOW_MQTT_PORT / UNSFLOW_MQTTS_PORT"
                who_listens "$port"
            } >&2
            exit 1
        fi
    done

    mkdir -p "$MOSQ_DIR/data" "$MOSQ_DIR/certs"
    ensure_ca
    issue_cert "$MOSQ_DIR/certs" server localhost serverAuth "DNS:localhost,IP:127.0.0.1"
    issue_cert "$MOSQ_DIR/certs" client "$MQTT_USER" clientAuth
    (umask 077 && rm -f "$MOSQ_DIR/passwd" &&
        "$(find_bin mosquitto_passwd)" -b -c "$MOSQ_DIR/passwd" "$MQTT_USER" "$MQTT_PASSWORD") ||
        die "mosquitto_passwd could not write $MOSQ_DIR/passwd"
    write_mosquitto_conf
    rm -f "$MOSQ_PID" "$MOSQ_DIR/info.json"
    if [ -f "$MOSQ_LOG" ]; then mv -f "$MOSQ_LOG" "$MOSQ_LOG.1"; fi

    # Output goes to files so that no caller's pipe is held open by the daemon
    # (a pytest fixture reading our output would otherwise never see EOF).
    "$bin" -c "$MOSQ_CONF" -d </dev/null >"$MOSQ_DIR/mosquitto.stderr" 2>&1 ||
        mosquitto_failed "$bin -c $MOSQ_CONF -d exited with status $?"

    for _ in $(seq 1 $((START_TIMEOUT * 10))); do
        # Both listeners open before the broker serves anyone, so the plain
        # port answering means the TLS one is up too.
        if pid=$(mosquitto_pid) && port_open "$MQTT_HOST" "$MQTT_PORT"; then
            break
        fi
        pid=""
        sleep 0.1
    done
    [ -n "$pid" ] || mosquitto_failed "not accepting connections on $MQTT_HOST:$MQTT_PORT and :$MQTTS_PORT after ${START_TIMEOUT} s"

    # One real round trip through the TLS listener: proves certificate, host
    # name and password together.
    # shellcheck disable=SC2016 # $SYS is a topic, not a variable
    "$(find_bin mosquitto_sub)" -h "$MQTT_HOST" -p "$MQTTS_PORT" --cafile "$SERVICES_DIR/ca/ca.crt" \
        -u "$MQTT_USER" -P "$MQTT_PASSWORD" -t '$SYS/broker/version' -C 1 -W 5 >/dev/null 2>&1 ||
        mosquitto_failed "TLS listener on port $MQTTS_PORT refused user $MQTT_USER or the test CA"

    write_mosquitto_info
    log "mosquitto running (pid $pid): mqtt://$MQTT_HOST:$MQTT_PORT, mqtts://$MQTT_HOST:$MQTTS_PORT, info $MOSQ_DIR/info.json"
}

stop_mosquitto() {
    local pid
    if pid=$(mosquitto_pid); then
        stop_pid mosquitto "$pid"
    else
        log "mosquitto not running"
    fi
}

status_mosquitto() {
    local pid ports
    if pid=$(mosquitto_pid); then
        ports=$(awk '$1 == "listener" { printf "%s%s:%s", sep, $3, $2; sep = " " }' "$MOSQ_CONF")
        printf '%-10s running  pid %-7s listeners %s  data %s\n' mosquitto "$pid" "$ports" "$MOSQ_DIR"
    else
        printf '%-10s stopped\n' mosquitto
        return 3
    fi
}

# ---------------------------------------------------------------- dispatcher

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//' >&2
    exit 2
}

main() {
    [ $# -ge 1 ] || usage
    local cmd=$1 name rc=0
    shift
    local names=("$@") i
    if [ ${#names[@]} -eq 0 ]; then
        names=("${SERVICES[@]}")
        # Without names, 'down' stops in reverse order: the services that need others first.
        if [ "$cmd" = down ]; then
            names=()
            for ((i = ${#SERVICES[@]} - 1; i >= 0; i--)); do names+=("${SERVICES[i]}"); done
        fi
    fi
    for name in "${names[@]}"; do
        declare -F "start_$name" >/dev/null || die "unknown service '$name' (known: ${SERVICES[*]})"
    done
    case $cmd in
    install | up | down | status) ;;
    -h | --help | help) usage ;;
    *) die "unknown command '$cmd' (install, up, down, status)" ;;
    esac
    if [ -z "${UNSFLOW_SERVICES_LOCKED:-}" ] && command -v flock >/dev/null 2>&1 &&
        { [ "$cmd" = up ] || { [ "$cmd" = down ] && [ -d "$SERVICES_DIR" ]; }; }; then
        # One 'up' or 'down' at a time per data dir: parallel test sessions
        # (pytest-xdist workers, two terminals) all run 'up' at start. The
        # script runs again under flock; -o keeps the lock's descriptor out of
        # the daemons it starts, which would otherwise hold the lock forever.
        mkdir -p "$SERVICES_DIR"
        UNSFLOW_SERVICES_LOCKED=1 flock -o -w 300 -E 75 "$SERVICES_DIR/.lock" \
            bash "${BASH_SOURCE[0]}" "$cmd" "${names[@]}" || rc=$?
        [ "$rc" -ne 75 ] || die "another services.sh held $SERVICES_DIR/.lock for 300 s"
        return "$rc"
    fi
    for name in "${names[@]}"; do
        case $cmd in
        install) "install_$name" ;;
        up) "start_$name" ;;
        down) "stop_$name" ;;
        status) "status_$name" || rc=$? ;;
        esac
    done
    return "$rc"
}

# Services defined in scripts/services.d/*.sh; each adds its name to SERVICES, or to
# SERVICES_LAST when it needs others running (they come after the rest).
SERVICES_LAST=()
for service_file in "$REPO_ROOT"/scripts/services.d/*.sh; do
    # shellcheck source=/dev/null
    . "$service_file"
done
SERVICES+=("${SERVICES_LAST[@]}")

main "$@"
