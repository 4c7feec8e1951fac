# shellcheck shell=bash
# Debezium for scripts/services.sh (sourced by it; uses its helpers and the variables
# of kafka.sh and postgres.sh): change data capture of the line database into the
# factory Kafka cluster.
#
# Kafka Connect (org.apache.kafka:connect-runtime; connect.sh says which version) in standalone
# mode, one JVM, running Debezium's PostgreSQL connector
# (io.debezium:debezium-connector-postgres, in a plugin dir of its own); both from
# Maven Central, resolved once into a cache dir. The connector reads the database
# "line" through a logical replication slot (pgoutput) and writes one topic per
# table, `<prefix>.public.<table>`, JSON with or without schemas, over SASL_SSL
# with SCRAM-SHA-512. Source offsets (the LSN confirmed) are kept in a file of the
# data dir: a restart goes on from there (at least once: duplicates, never a gap).
#
#   REST API  http://127.0.0.1:${UNSFLOW_DEBEZIUM_PORT:-8093}   connector "line-db"
#
# Environment:
#   UNSFLOW_DEBEZIUM_PORT          Connect's REST port on 127.0.0.1 (default 8093)
#   UNSFLOW_DEBEZIUM_TOPIC_PREFIX  topic.prefix of the connector (default line)
#   UNSFLOW_DEBEZIUM_SCHEMAS       true: JSON envelopes with schemas (default); false: without
#   UNSFLOW_DEBEZIUM_KAFKA         factory bootstrap (default 127.0.0.1:<kafka's SASL_SSL port>)
#   UNSFLOW_DEBEZIUM_HEAP          JVM options, heap and others (default -Xmx384m -Xms128m)
#   UNSFLOW_DEBEZIUM_VERSION       Debezium version (default below)
#
# The factory Kafka and PostgreSQL must be up first (scripts/services.sh up kafka
# postgres). Docs: docs/services.md

SERVICES_LAST+=(debezium)

DBZ_VERSION=${UNSFLOW_DEBEZIUM_VERSION:-3.6.1.Final}
DBZ_CACHE_ROOT=${UNSFLOW_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/unsflow}
case $DBZ_CACHE_ROOT in /*) ;; *) DBZ_CACHE_ROOT=$PWD/$DBZ_CACHE_ROOT ;; esac
DBZ_CACHE=$DBZ_CACHE_ROOT/debezium-$DBZ_VERSION
DBZ_HOST=127.0.0.1
DBZ_PORT=${UNSFLOW_DEBEZIUM_PORT:-8093}
DBZ_PREFIX=${UNSFLOW_DEBEZIUM_TOPIC_PREFIX:-line}
DBZ_SCHEMAS=${UNSFLOW_DEBEZIUM_SCHEMAS:-true}
DBZ_HEAP=${UNSFLOW_DEBEZIUM_HEAP:--Xmx384m -Xms128m}
DBZ_CONNECTOR=line-db
DBZ_TABLES=public.work_orders,public.maintenance_events,public.quality_results
DBZ_DIR=$SERVICES_DIR/debezium
DBZ_WORKER=$DBZ_DIR/worker.properties
DBZ_PID=$DBZ_DIR/connect.pid
DBZ_LOG=$DBZ_DIR/connect.log
DBZ_START_TIMEOUT=120 # seconds from `java` to the connector's task running

dbz_kafka() { echo "${UNSFLOW_DEBEZIUM_KAFKA:-$KAFKA_HOST:$KAFKA_SASL_PORT}"; }

install_debezium() {
    command -v curl >/dev/null 2>&1 || apt_install curl
    install_connect
    # The connector's own jars only: Connect's API, the Kafka clients and SLF4J come
    # from the worker (two copies of them in one JVM would clash).
    maven_libs "$DBZ_CACHE" "io.debezium:debezium-connector-postgres:$DBZ_VERSION" "
    <dependency><groupId>io.debezium</groupId><artifactId>debezium-connector-postgres</artifactId><version>$DBZ_VERSION</version></dependency>" \
        -DexcludeGroupIds=org.apache.kafka,org.slf4j
    [ -d "$DBZ_CACHE/plugins/debezium-connector-postgres" ] || {
        mkdir -p "$DBZ_CACHE/plugins"
        ln -s ../libs "$DBZ_CACHE/plugins/debezium-connector-postgres"
    }
}

dbz_pid() { pid_alive "$DBZ_PID" "$DBZ_WORKER"; }

write_debezium_conf() {
    local sec jaas
    jaas="org.apache.kafka.common.security.scram.ScramLoginModule required username=\"$KAFKA_USER\" password=\"$KAFKA_PASSWORD\";"
    sec="security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=$jaas
ssl.truststore.type=PEM
ssl.truststore.location=$SERVICES_DIR/ca/ca.crt"
    {
        cat <<PROPS
# Written by scripts/services.d/debezium.sh: the Kafka Connect worker. Rewritten on start.
bootstrap.servers=$(dbz_kafka)
listeners=http://$DBZ_HOST:$DBZ_PORT
plugin.path=$DBZ_CACHE/plugins
key.converter=org.apache.kafka.connect.json.JsonConverter
value.converter=org.apache.kafka.connect.json.JsonConverter
key.converter.schemas.enable=$DBZ_SCHEMAS
value.converter.schemas.enable=$DBZ_SCHEMAS
offset.storage.file.filename=$DBZ_DIR/connect.offsets
# Source offsets (the LSN that PostgreSQL may then release) every second: what a
# restarted connector sends again.
offset.flush.interval.ms=1000
# The worker's own clients (topic creation) and the connector's producer.
$sec
PROPS
        sed 's/^/producer./' <<<"$sec"
        sed 's/^/admin./' <<<"$sec"
        cat <<PROPS
# Batches of up to 256 KiB, lz4, several in flight (idempotence keeps their order): with
# Connect's defaults (16 KiB, one in flight) the producer caps capture at a few
# thousand events/s, and Debezium's queue, then its reading of the WAL, backs up.
producer.compression.type=lz4
producer.linger.ms=10
producer.batch.size=262144
producer.acks=all
producer.enable.idempotence=true
producer.max.in.flight.requests.per.connection=5
PROPS
    } >"$DBZ_WORKER"
    cat >"$DBZ_DIR/$DBZ_CONNECTOR.properties" <<PROPS
# Written by scripts/services.d/debezium.sh: Debezium's PostgreSQL connector.
name=$DBZ_CONNECTOR
connector.class=io.debezium.connector.postgresql.PostgresConnector
tasks.max=1
plugin.name=pgoutput
database.hostname=$PG_HOST
database.port=$PG_PORT
database.user=$PG_USER
database.password=$PG_PASSWORD
database.dbname=$PG_DB
topic.prefix=$DBZ_PREFIX
table.include.list=$DBZ_TABLES
slot.name=unsflow_${DBZ_PREFIX//[^a-z0-9_]/_}
publication.name=unsflow_${DBZ_PREFIX//[^a-z0-9_]/_}
publication.autocreate.mode=filtered
# An initial snapshot of the rows already there, then the stream of changes.
snapshot.mode=initial
# A delete is followed by a tombstone (null value), for compacted topics.
tombstones.on.delete=true
# Confirms the LSN to PostgreSQL regularly even when the captured tables are quiet.
heartbeat.interval.ms=10000
# Events handed to Connect per poll, and held between the WAL reader and Connect.
max.batch.size=4096
max.queue.size=16384
poll.interval.ms=100
PROPS
    connect_log4j "$DBZ_DIR/log4j2.properties" "$DBZ_LOG"
}

write_debezium_info() {
    local tmp=$DBZ_DIR/info.json.tmp
    cat >"$tmp" <<JSON
{
  "debezium_version": "$DBZ_VERSION",
  "connect_version": "$CONNECT_VERSION",
  "rest": "http://$DBZ_HOST:$DBZ_PORT",
  "connector": "$DBZ_CONNECTOR",
  "kafka": "$(dbz_kafka)",
  "topic_prefix": "$DBZ_PREFIX",
  "topics": ["$DBZ_PREFIX.public.work_orders", "$DBZ_PREFIX.public.maintenance_events", "$DBZ_PREFIX.public.quality_results"],
  "schemas": $DBZ_SCHEMAS,
  "slot": "unsflow_${DBZ_PREFIX//[^a-z0-9_]/_}",
  "pid_file": $(json_str "$DBZ_PID"),
  "log": $(json_str "$DBZ_LOG")
}
JSON
    mv "$tmp" "$DBZ_DIR/info.json"
}

dbz_failed() {
    local why=$1 pid
    printf 'services: error: debezium: %s\n' "$why" >&2
    if pid=$(dbz_pid); then stop_pid debezium "$pid"; fi
    if [ -s "$DBZ_DIR/connect.stderr" ]; then
        echo "--- last 20 lines of $DBZ_DIR/connect.stderr" >&2
        tail -n 20 "$DBZ_DIR/connect.stderr" >&2
    fi
    if [ -s "$DBZ_LOG" ]; then
        echo "--- last 30 ERROR lines of $DBZ_LOG" >&2
        grep -A3 -E '\] ERROR ' "$DBZ_LOG" | tail -n 30 >&2
    fi
    exit 1
}

# The connector's and its task's states, e.g. "RUNNING RUNNING"; empty while unknown.
dbz_states() {
    curl -fsS --max-time 2 "http://$DBZ_HOST:$DBZ_PORT/connectors/$DBZ_CONNECTOR/status" 2>/dev/null |
        grep -o '"state":"[A-Z_]*"' | cut -d'"' -f4 | tr '\n' ' ' || true
}

start_debezium() {
    local pid java started=$SECONDS states="" kafka
    if pid=$(dbz_pid); then
        log "debezium already running (pid $pid, data $DBZ_DIR)"
        [ -s "$DBZ_DIR/info.json" ] || write_debezium_info
        return 0
    fi
    install_debezium
    java=$(kafka_java) || die "java not found"
    kafka=$(dbz_kafka)
    port_open "${kafka%:*}" "${kafka##*:}" ||
        die "debezium: the factory Kafka ($kafka) is not answering; start it first: scripts/services.sh up kafka"
    port_open "$PG_HOST" "$PG_PORT" ||
        die "debezium: PostgreSQL ($PG_HOST:$PG_PORT) is not answering; start it first: scripts/services.sh up postgres"
    if port_open "$DBZ_HOST" "$DBZ_PORT"; then
        {
            echo "services: error: port $DBZ_PORT on $DBZ_HOST is in use by another process, not by the Connect worker of $DBZ_DIR;"
            echo "  stop it or choose another port with UNSFLOW_DEBEZIUM_PORT"
            who_listens "$DBZ_PORT"
        } >&2
        exit 1
    fi
    mkdir -p "$DBZ_DIR"
    rm -f "$DBZ_PID" "$DBZ_DIR/info.json"
    if [ -f "$DBZ_LOG" ]; then mv -f "$DBZ_LOG" "$DBZ_LOG.1"; fi
    write_debezium_conf
    # shellcheck disable=SC2086 # DBZ_HEAP is a list of JVM options
    setsid "$java" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 $DBZ_HEAP \
        -Djava.awt.headless=true -Dlog4j2.configurationFile="$DBZ_DIR/log4j2.properties" \
        -cp "$CONNECT_LIBS/*" org.apache.kafka.connect.cli.ConnectStandalone \
        "$DBZ_WORKER" "$DBZ_DIR/$DBZ_CONNECTOR.properties" \
        </dev/null >"$DBZ_DIR/connect.stderr" 2>&1 9>&- 8>&- 7>&- &
    echo $! >"$DBZ_PID"

    while [ $((SECONDS - started)) -lt "$DBZ_START_TIMEOUT" ]; do
        dbz_pid >/dev/null || dbz_failed "Kafka Connect exited during start"
        states=$(dbz_states)
        case $states in
        "RUNNING RUNNING ") break ;;
        *FAILED*) dbz_failed "connector $DBZ_CONNECTOR: $states" ;;
        esac
        sleep 0.5
    done
    [ "$states" = "RUNNING RUNNING " ] ||
        dbz_failed "connector $DBZ_CONNECTOR not running after ${DBZ_START_TIMEOUT} s (states: ${states:-no answer})"
    pid=$(dbz_pid)
    write_debezium_info
    log "debezium $DBZ_VERSION (Kafka Connect $CONNECT_VERSION) running (pid $pid): database $PG_DB on $PG_HOST:$PG_PORT -> $kafka, topics $DBZ_PREFIX.public.*, REST http://$DBZ_HOST:$DBZ_PORT (started in $((SECONDS - started)) s)"
}

stop_debezium() {
    local pid
    if pid=$(dbz_pid); then
        stop_pid debezium "$pid"
    else
        log "debezium not running"
    fi
}

status_debezium() {
    local pid
    if pid=$(dbz_pid); then
        printf '%-10s running  pid %-7s REST http://%s:%s  connector %s: %s data %s\n' debezium "$pid" \
            "$DBZ_HOST" "$DBZ_PORT" "$DBZ_CONNECTOR" "$(dbz_states)" "$DBZ_DIR"
    else
        printf '%-10s stopped\n' debezium
        return 3
    fi
}
