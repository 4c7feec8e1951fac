# shellcheck shell=bash
# Apache Kafka (KRaft, one node) for scripts/services.sh, which sources this file.
#
# The broker is the official jars from Maven Central (org.apache.kafka:kafka_2.13
# and its runtime dependencies, resolved by Maven once into a cache dir that
# survives 'down' and 'rm -rf .services'), run with `java`: no tarball, no
# Docker. One process is broker and controller.
#
#   PLAINTEXT  127.0.0.1:${UNSFLOW_KAFKA_PORT:-9092}       no authentication (inter-broker too)
#   SASL_SSL   127.0.0.1:${UNSFLOW_KAFKA_SASL_PORT:-9094}  SCRAM-SHA-512, user "unsflow"; server
#                                                        certificate from the test CA
#   CONTROLLER 127.0.0.1:${UNSFLOW_KAFKA_CONTROLLER_PORT:-9093}
#
# Environment:
#   UNSFLOW_KAFKA_VERSION        Kafka version from Maven Central (default below)
#   UNSFLOW_CACHE_DIR            download cache (default ~/.cache/unsflow); jars in kafka-<version>/libs
#   UNSFLOW_KAFKA_TEST_PASSWORD  SCRAM password of user "unsflow"
#   UNSFLOW_KAFKA_HEAP           JVM heap options (default -Xmx512m -Xms256m)
#
# Docs: docs/services.md

SERVICES+=(kafka)

KAFKA_VERSION=${UNSFLOW_KAFKA_VERSION:-4.4.0}
# Kafka 4.x logs through SLF4J 1.7; this binding sends it to Kafka's own log4j2.
KAFKA_LOG4J_VERSION=2.25.5
KAFKA_HOST=127.0.0.1
KAFKA_PORT=${UNSFLOW_KAFKA_PORT:-9092}
KAFKA_SASL_PORT=${UNSFLOW_KAFKA_SASL_PORT:-9094}
KAFKA_CONTROLLER_PORT=${UNSFLOW_KAFKA_CONTROLLER_PORT:-9093}
KAFKA_USER=unsflow
KAFKA_PASSWORD=${UNSFLOW_KAFKA_TEST_PASSWORD:-unsflow-test-password}
KAFKA_HEAP=${UNSFLOW_KAFKA_HEAP:--Xmx512m -Xms256m}
KAFKA_START_TIMEOUT=60 # seconds from `java` to both listeners answering
KAFKA_CACHE=${UNSFLOW_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/unsflow}/kafka-$KAFKA_VERSION
case $KAFKA_CACHE in /*) ;; *) KAFKA_CACHE=$PWD/$KAFKA_CACHE ;; esac
KAFKA_LIBS=$KAFKA_CACHE/libs
KAFKA_DIR=$SERVICES_DIR/kafka
KAFKA_CONF=$KAFKA_DIR/server.properties
KAFKA_PID=$KAFKA_DIR/kafka.pid
KAFKA_LOG=$KAFKA_DIR/server.log
# Test-only keystore password; the keystore holds the test CA's server key.
KAFKA_KEYSTORE_PASSWORD=unsflow-test-keystore
# The service's name in messages and the prefix of its port variables: kafka-core.sh
# runs these same functions for the core cluster with its own values.
KAFKA_NAME=kafka
KAFKA_ENV=UNSFLOW_KAFKA

kafka_java() {
    if [ -n "${JAVA_HOME:-}" ] && [ -x "$JAVA_HOME/bin/java" ]; then
        echo "$JAVA_HOME/bin/java"
    else
        command -v java
    fi
}

# java_major JAVA : the feature version (17 for "17.0.15", 8 for "1.8.0_x").
java_major() {
    "$1" -version 2>&1 | sed -n 's/.* version "\([0-9.]*\).*/\1/p' | head -n 1 |
        awk -F. '{ print ($1 == 1) ? $2 : $1 }'
}

kafka_javac() {
    if [ -n "${JAVA_HOME:-}" ] && [ -x "$JAVA_HOME/bin/javac" ]; then
        echo "$JAVA_HOME/bin/javac"
    else
        command -v javac
    fi
}

install_kafka() {
    local java missing=()
    java=$(kafka_java || true)
    # Kafka 4 brokers need Java 17+; javac compiles the readiness probe.
    if [ -z "$java" ] || [ "$(java_major "$java")" -lt 17 ] || ! kafka_javac >/dev/null; then
        missing+=(openjdk-17-jdk-headless)
    fi
    command -v mvn >/dev/null 2>&1 || missing+=(maven)
    command -v openssl >/dev/null 2>&1 || missing+=(openssl)
    [ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"

    # kafka.Kafka (broker + controller), kafka.tools.StorageTool, SCRAM (kafka-clients);
    # Kafka 4.x logs through SLF4J 1.7, sent to log4j2 by the binding.
    maven_libs "$KAFKA_CACHE" "org.apache.kafka:kafka_2.13:$KAFKA_VERSION" "
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>$KAFKA_VERSION</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>$KAFKA_LOG4J_VERSION</version>
    </dependency>"
    [ -f "$KAFKA_LIBS/kafka_2.13-$KAFKA_VERSION.jar" ] ||
        die "$KAFKA_LIBS has no kafka_2.13-$KAFKA_VERSION.jar; remove $KAFKA_CACHE and try again"
    kafka_compile_probe
}

# The readiness probe, compiled against the cached jars; again when its source changed.
kafka_compile_probe() {
    local src=$REPO_ROOT/scripts/services.d/KafkaProbe.java
    [ -f "$KAFKA_CACHE/probe/KafkaProbe.class" ] && [ ! "$src" -nt "$KAFKA_CACHE/probe/KafkaProbe.class" ] &&
        return 0
    mkdir -p "$KAFKA_CACHE/probe"
    "$(kafka_javac)" -nowarn -d "$KAFKA_CACHE/probe" -cp "$KAFKA_LIBS/*" "$src" ||
        die "javac could not compile $src"
}

kafka_pid() { pid_alive "$KAFKA_PID" "$KAFKA_CONF"; }

write_kafka_conf() {
    cat >"$KAFKA_CONF" <<EOF
# Written by scripts/services.d/kafka.sh: the test Kafka. Edits are overwritten on start.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$KAFKA_HOST:$KAFKA_CONTROLLER_PORT
controller.listener.names=CONTROLLER
listeners=PLAINTEXT://$KAFKA_HOST:$KAFKA_PORT,SASL_SSL://$KAFKA_HOST:$KAFKA_SASL_PORT,CONTROLLER://$KAFKA_HOST:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$KAFKA_HOST:$KAFKA_PORT,SASL_SSL://$KAFKA_HOST:$KAFKA_SASL_PORT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT
# Inter-broker traffic stays on the plain loopback listener, so no admin SCRAM user is needed.
inter.broker.listener.name=PLAINTEXT

# SASL_SSL: SCRAM-SHA-512 users live in the metadata log (added when the storage was formatted).
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
ssl.keystore.type=PKCS12
ssl.keystore.location=$KAFKA_DIR/certs/server.p12
ssl.keystore.password=$KAFKA_KEYSTORE_PASSWORD
ssl.client.auth=none

log.dirs=$KAFKA_DIR/data
num.partitions=1
auto.create.topics.enable=true
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
# Few partitions for the internal topics: made on first use, 50 each would take seconds.
transaction.state.log.num.partitions=5
share.coordinator.state.topic.num.partitions=5
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# Tests start many short-lived consumer groups: no 3 s wait before the first assignment.
group.initial.rebalance.delay.ms=0
# A test broker keeps a day of data, at most ~1 GiB per partition.
log.retention.hours=24
log.retention.bytes=1073741824
log.segment.bytes=134217728
EOF
    cat >"$KAFKA_DIR/log4j2.properties" <<EOF
# Written by scripts/services.d/kafka.sh.
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = $KAFKA_LOG
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.state.name = state.change.logger
logger.state.level = WARN
EOF
}

write_kafka_info() {
    local tmp=$KAFKA_DIR/info.json.tmp
    cat >"$tmp" <<EOF
{
  "version": "$KAFKA_VERSION",
  "host": "$KAFKA_HOST",
  "port": $KAFKA_PORT,
  "sasl_port": $KAFKA_SASL_PORT,
  "controller_port": $KAFKA_CONTROLLER_PORT,
  "bootstrap": "$KAFKA_HOST:$KAFKA_PORT",
  "sasl_bootstrap": "$KAFKA_HOST:$KAFKA_SASL_PORT",
  "security_protocol": "SASL_SSL",
  "mechanism": "SCRAM-SHA-512",
  "ca_file": $(json_str "$SERVICES_DIR/ca/ca.crt"),
  "username": "$KAFKA_USER",
  "password": $(json_str "$KAFKA_PASSWORD"),
  "log": $(json_str "$KAFKA_LOG")
}
EOF
    mv "$tmp" "$KAFKA_DIR/info.json"
}

kafka_failed() {
    local why=$1 pid
    printf 'services: error: %s: %s\n' "$KAFKA_NAME" "$why" >&2
    if pid=$(kafka_pid); then stop_pid "$KAFKA_NAME" "$pid"; fi
    if [ -s "$KAFKA_DIR/kafka.stderr" ]; then
        echo "--- last 30 lines of $KAFKA_DIR/kafka.stderr" >&2
        tail -n 30 "$KAFKA_DIR/kafka.stderr" >&2
    fi
    if [ -s "$KAFKA_LOG" ]; then
        echo "--- last 40 lines of $KAFKA_LOG" >&2
        tail -n 40 "$KAFKA_LOG" >&2
    fi
    exit 1
}

# The storage holds the SCRAM users, so it is formatted again (and its test
# data dropped) when the user or password asked for differs from the one it
# was formatted with.
kafka_format() {
    local java=$1 stamp want cluster_id
    stamp=$KAFKA_DIR/format.stamp
    want="$KAFKA_USER $(printf '%s' "$KAFKA_PASSWORD" | sha256sum | cut -c1-16)"
    if [ -s "$KAFKA_DIR/data/meta.properties" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
        return 0
    fi
    if [ -d "$KAFKA_DIR/data" ]; then
        log "$KAFKA_NAME: the SCRAM user changed; formatting the storage in $KAFKA_DIR/data again"
    fi
    rm -rf "$KAFKA_DIR/data" "$stamp"
    # A cluster id is 16 random bytes, URL-safe base64 without padding; like Kafka's own
    # Uuid.randomUuid, never one that starts with '-' (it would read as an option).
    cluster_id=-
    while [ "${cluster_id#-}" != "$cluster_id" ]; do
        cluster_id=$(openssl rand -base64 16 | tr '+/' '-_' | tr -d '=\n')
    done
    "$java" -Xmx256m -cp "$KAFKA_LIBS/*" -Dlog4j2.configurationFile="$KAFKA_DIR/log4j2.properties" \
        kafka.tools.StorageTool format --cluster-id="$cluster_id" -c "$KAFKA_CONF" \
        --add-scram "SCRAM-SHA-512=[name=$KAFKA_USER,password=$KAFKA_PASSWORD]" \
        </dev/null >"$KAFKA_DIR/format.log" 2>&1 9>&- 8>&- || {
        cat "$KAFKA_DIR/format.log" >&2
        kafka_failed "kafka.tools.StorageTool format failed"
    }
    echo "$want" >"$stamp"
}

start_kafka() {
    local pid port java probe_rc=0 started=$SECONDS
    if pid=$(kafka_pid); then
        log "$KAFKA_NAME already running (pid $pid, data $KAFKA_DIR)"
        port=$(sed -n 's/^listeners=//p' "$KAFKA_CONF")
        case $port in *":$KAFKA_PORT,"*":$KAFKA_SASL_PORT,"*":$KAFKA_CONTROLLER_PORT") ;; *)
            log "note: it listens on $port, not the ports asked for; 'down' then 'up' to change" ;;
        esac
        [ -s "$KAFKA_DIR/info.json" ] || write_kafka_info
        return 0
    fi
    install_kafka
    kafka_compile_probe
    java=$(kafka_java) || die "java not found"
    for port in "$KAFKA_PORT" "$KAFKA_SASL_PORT" "$KAFKA_CONTROLLER_PORT"; do
        if port_open "$KAFKA_HOST" "$port"; then
            {
                echo "services: error: port $port on $KAFKA_HOST is in use by another process, not by the Kafka of $KAFKA_DIR;"
                echo "  stop it or choose other ports with ${KAFKA_ENV}_PORT / ${KAFKA_ENV}_SASL_PORT / ${KAFKA_ENV}_CONTROLLER_PORT"
                who_listens "$port"
                other_data_dir "$port" "/${KAFKA_DIR##*/}/server.properties"
            } >&2
            exit 1
        fi
    done

    mkdir -p "$KAFKA_DIR/certs"
    ensure_ca
    issue_cert "$KAFKA_DIR/certs" server localhost serverAuth "DNS:localhost,IP:127.0.0.1"
    if [ ! -s "$KAFKA_DIR/certs/server.p12" ] || [ "$KAFKA_DIR/certs/server.crt" -nt "$KAFKA_DIR/certs/server.p12" ]; then
        (umask 077 && openssl pkcs12 -export -name server -in "$KAFKA_DIR/certs/server.crt" \
            -inkey "$KAFKA_DIR/certs/server.key" -certfile "$SERVICES_DIR/ca/ca.crt" \
            -passout "pass:$KAFKA_KEYSTORE_PASSWORD" -out "$KAFKA_DIR/certs/server.p12.tmp") ||
            die "openssl could not write the Kafka keystore"
        mv "$KAFKA_DIR/certs/server.p12.tmp" "$KAFKA_DIR/certs/server.p12"
    fi
    rm -f "$KAFKA_PID" "$KAFKA_DIR/info.json"
    if [ -f "$KAFKA_LOG" ]; then mv -f "$KAFKA_LOG" "$KAFKA_LOG.1"; fi
    write_kafka_conf
    kafka_format "$java"

    # setsid: the broker leaves the caller's process group (a Ctrl-C in pytest
    # does not reach it); output to files so no caller's pipe stays open; the
    # locks (fd 8, 9) are not inherited.
    # shellcheck disable=SC2086 # KAFKA_HEAP is a list of JVM options
    setsid "$java" $KAFKA_HEAP -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
        -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent \
        -Djava.awt.headless=true -Dlog4j2.configurationFile="$KAFKA_DIR/log4j2.properties" \
        -cp "$KAFKA_LIBS/*" kafka.Kafka "$KAFKA_CONF" \
        </dev/null >"$KAFKA_DIR/kafka.stderr" 2>&1 9>&- 8>&- &
    echo $! >"$KAFKA_PID"

    "$java" -Xmx64m -XX:TieredStopAtLevel=1 -Dorg.apache.logging.log4j.level=OFF \
        -cp "$KAFKA_LIBS/*:$KAFKA_CACHE/probe" KafkaProbe "$((KAFKA_START_TIMEOUT * 1000))" \
        "$KAFKA_HOST:$KAFKA_PORT" "$KAFKA_HOST:$KAFKA_SASL_PORT" "$SERVICES_DIR/ca/ca.crt" \
        "$KAFKA_USER" "$KAFKA_PASSWORD" </dev/null 2>"$KAFKA_DIR/probe.log" 9>&- 8>&- || probe_rc=$?
    pid=$(kafka_pid) || kafka_failed "the broker exited during start; $(cat "$KAFKA_DIR/probe.log")"
    case $probe_rc in
    0) ;;
    1) kafka_failed "not answering on $KAFKA_HOST:$KAFKA_PORT after ${KAFKA_START_TIMEOUT} s: $(cat "$KAFKA_DIR/probe.log")" ;;
    *) kafka_failed "$(cat "$KAFKA_DIR/probe.log")" ;;
    esac

    write_kafka_info
    log "$KAFKA_NAME $KAFKA_VERSION running (pid $pid): PLAINTEXT $KAFKA_HOST:$KAFKA_PORT, SASL_SSL $KAFKA_HOST:$KAFKA_SASL_PORT, info $KAFKA_DIR/info.json (started in $((SECONDS - started)) s)"
}

stop_kafka() {
    local pid
    if pid=$(kafka_pid); then
        # A controlled shutdown of one node takes a few seconds; stop_pid waits 10.
        stop_pid "$KAFKA_NAME" "$pid"
    else
        log "$KAFKA_NAME not running"
    fi
}

status_kafka() {
    local pid
    if pid=$(kafka_pid); then
        printf '%-10s running  pid %-7s listeners %s  data %s\n' "$KAFKA_NAME" "$pid" \
            "$(sed -n 's/^listeners=//p' "$KAFKA_CONF")" "$KAFKA_DIR"
    else
        printf '%-10s stopped\n' "$KAFKA_NAME"
        return 3
    fi
}
