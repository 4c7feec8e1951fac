# shellcheck shell=bash
# MirrorMaker 2 for scripts/services.sh (sourced by it; uses its helpers and the
# variables of kafka.sh and kafka-core.sh): replicates the factory cluster's UNS
# and CDC topics to the core cluster, with checkpoints and consumer group offset
# sync, over SASL_SSL with SCRAM-SHA-512 on both sides.
#
# Apache Kafka's own MirrorMaker (org.apache.kafka:connect-mirror from Maven
# Central, resolved once into a cache dir by connect.sh) in dedicated mode:
# `org.apache.kafka.connect.mirror.MirrorMaker mm2.properties --clusters core`,
# one JVM whose Connect workers run only against the core cluster (its internal
# topics, checkpoints, heartbeats and offset syncs all live there; the factory
# cluster is only read). No listening port (dedicated mode has no REST API).
#
# Environment:
#   UNSFLOW_MM2_TOPICS    regex of the factory topics to replicate (default uns|line\..*)
#   UNSFLOW_MM2_GROUPS    regex of the consumer groups whose offsets are synced (default .*)
#   UNSFLOW_MM2_SOURCE    factory bootstrap (default 127.0.0.1:<kafka's SASL_SSL port>)
#   UNSFLOW_MM2_TARGET    core bootstrap (default 127.0.0.1:<kafka-core's SASL_SSL port>)
#   UNSFLOW_MM2_HEAP      JVM options, heap and others (default -Xmx384m -Xms128m)
#   UNSFLOW_MM2_TASKS     tasks.max of the source connector (default 2)
#
# Both clusters must be up first (scripts/services.sh up kafka kafka-core), with the
# same SCRAM user and the test CA of this data dir. Replicated topics are named
# `factory.<topic>` on core (DefaultReplicationPolicy). Docs: docs/services.md

SERVICES_LAST+=(mm2)

MM2_DIR=$SERVICES_DIR/mm2
MM2_CONF=$MM2_DIR/mm2.properties
MM2_PID=$MM2_DIR/mm2.pid
MM2_LOG=$MM2_DIR/mm2.log
MM2_TOPICS=${UNSFLOW_MM2_TOPICS:-uns|line\\..*}
MM2_GROUPS=${UNSFLOW_MM2_GROUPS:-.*}
MM2_HEAP=${UNSFLOW_MM2_HEAP:--Xmx384m -Xms128m}
MM2_TASKS=${UNSFLOW_MM2_TASKS:-2}
MM2_START_TIMEOUT=120 # seconds from `java` to the first heartbeat on core

mm2_source() { echo "${UNSFLOW_MM2_SOURCE:-$KAFKA_HOST:$KAFKA_SASL_PORT}"; }
mm2_target() { echo "${UNSFLOW_MM2_TARGET:-$KAFKA_HOST:$KAFKA_CORE_SASL_PORT}"; }

install_mm2() { install_connect; }

mm2_pid() { pid_alive "$MM2_PID" "$MM2_CONF"; }

# SASL_SSL client settings for one cluster alias of mm2.properties.
mm2_cluster_security() {
    local alias=$1
    cat <<PROPS
$alias.security.protocol=SASL_SSL
$alias.sasl.mechanism=SCRAM-SHA-512
$alias.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="$KAFKA_USER" password="$KAFKA_PASSWORD";
$alias.ssl.truststore.type=PEM
$alias.ssl.truststore.location=$SERVICES_DIR/ca/ca.crt
PROPS
}

write_mm2_conf() {
    {
        cat <<PROPS
# Written by scripts/services.d/mm2.sh: MirrorMaker 2, factory -> core. Rewritten on start.
clusters=factory, core
factory.bootstrap.servers=$(mm2_source)
core.bootstrap.servers=$(mm2_target)
PROPS
        mm2_cluster_security factory
        mm2_cluster_security core
        cat <<PROPS

factory->core.enabled=true
core->factory.enabled=false
# (Backslashes doubled: a properties file drops a single one.)
factory->core.topics=${MM2_TOPICS//\\/\\\\}
factory->core.groups=${MM2_GROUPS//\\/\\\\}
tasks.max=$MM2_TASKS

# One-node clusters.
replication.factor=1
checkpoints.topic.replication.factor=1
heartbeats.topic.replication.factor=1
offset-syncs.topic.replication.factor=1
offset.storage.replication.factor=1
status.storage.replication.factor=1
config.storage.replication.factor=1

# Offset syncs on the target: MirrorMaker writes nothing to the factory cluster.
offset-syncs.topic.location=target
# Checkpoints and group offsets translated every 5 s (default 60), so a consumer
# group moves from factory to core with little to read again.
emit.checkpoints.enabled=true
emit.checkpoints.interval.seconds=5
sync.group.offsets.enabled=true
sync.group.offsets.interval.seconds=5
# New topics (and groups) are found within 5 s (default 10 min).
refresh.topics.interval.seconds=5
refresh.groups.interval.seconds=5
emit.heartbeats.interval.seconds=1
# The brokers run no authorizer: nothing to copy, and trying fails.
sync.topic.acls.enabled=false
# Records to core in batches of up to 256 KiB, lz4 (Connect's producer defaults: 16 KiB,
# no compression), read from the factory up to 2,000 per poll.
core.producer.linger.ms=10
core.producer.batch.size=262144
core.producer.compression.type=lz4
factory.consumer.max.poll.records=2000
# Source offsets committed every second (default 60 s): what a killed MirrorMaker
# replicates again after its restart (duplicates on core, never a gap).
offset.flush.interval.ms=1000
PROPS
    } >"$MM2_CONF"
    connect_log4j "$MM2_DIR/log4j2.properties" "$MM2_LOG"
}

write_mm2_info() {
    local tmp=$MM2_DIR/info.json.tmp
    cat >"$tmp" <<JSON
{
  "version": "$CONNECT_VERSION",
  "source": "$(mm2_source)",
  "target": "$(mm2_target)",
  "source_alias": "factory",
  "target_alias": "core",
  "topics": $(json_str "$MM2_TOPICS"),
  "groups": $(json_str "$MM2_GROUPS"),
  "pid_file": $(json_str "$MM2_PID"),
  "config": $(json_str "$MM2_CONF"),
  "log": $(json_str "$MM2_LOG")
}
JSON
    mv "$tmp" "$MM2_DIR/info.json"
}

mm2_failed() {
    local why=$1 pid
    printf 'services: error: mm2: %s\n' "$why" >&2
    if pid=$(mm2_pid); then stop_pid mm2 "$pid"; fi
    if [ -s "$MM2_DIR/mm2.stderr" ]; then
        echo "--- last 20 lines of $MM2_DIR/mm2.stderr" >&2
        tail -n 20 "$MM2_DIR/mm2.stderr" >&2
    fi
    if [ -s "$MM2_LOG" ]; then
        echo "--- last 30 ERROR/WARN lines of $MM2_LOG" >&2
        grep -E '\] (ERROR|WARN) ' "$MM2_LOG" | tail -n 30 >&2
    fi
    exit 1
}

start_mm2() {
    local pid java since started=$SECONDS addr probe_rc=0
    if pid=$(mm2_pid); then
        log "mm2 already running (pid $pid, data $MM2_DIR)"
        [ -s "$MM2_DIR/info.json" ] || write_mm2_info
        return 0
    fi
    install_mm2
    java=$(kafka_java) || die "java not found"
    for addr in "factory $(mm2_source) kafka" "core $(mm2_target) kafka-core"; do
        set -- $addr
        port_open "${2%:*}" "${2##*:}" ||
            die "mm2: the $1 cluster ($2) is not answering; start it first: scripts/services.sh up $3"
    done
    [ -s "$SERVICES_DIR/ca/ca.crt" ] || die "mm2: no test CA in $SERVICES_DIR/ca (start the clusters of this data dir first)"
    mkdir -p "$MM2_DIR"
    rm -f "$MM2_PID" "$MM2_DIR/info.json"
    if [ -f "$MM2_LOG" ]; then mv -f "$MM2_LOG" "$MM2_LOG.1"; fi
    write_mm2_conf
    since=$(($(date +%s) * 1000))
    # shellcheck disable=SC2086 # MM2_HEAP is a list of JVM options
    setsid "$java" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 $MM2_HEAP \
        -Djava.awt.headless=true -Dlog4j2.configurationFile="$MM2_DIR/log4j2.properties" \
        -cp "$CONNECT_LIBS/*" org.apache.kafka.connect.mirror.MirrorMaker "$MM2_CONF" --clusters core \
        </dev/null >"$MM2_DIR/mm2.stderr" 2>&1 9>&- 8>&- 7>&- &
    echo $! >"$MM2_PID"

    "$java" -Xmx64m -XX:TieredStopAtLevel=1 -Dorg.apache.logging.log4j.level=OFF \
        -cp "$CONNECT_LIBS/*:$CONNECT_CACHE/probe" MirrorProbe "$((MM2_START_TIMEOUT * 1000))" \
        "$(mm2_target)" "$SERVICES_DIR/ca/ca.crt" "$KAFKA_USER" "$KAFKA_PASSWORD" heartbeats "$since" \
        </dev/null 2>"$MM2_DIR/probe.log" 9>&- 8>&- 7>&- || probe_rc=$?
    pid=$(mm2_pid) || mm2_failed "MirrorMaker exited during start; $(cat "$MM2_DIR/probe.log")"
    [ "$probe_rc" -eq 0 ] ||
        mm2_failed "no heartbeat on core within ${MM2_START_TIMEOUT} s: $(cat "$MM2_DIR/probe.log")"
    write_mm2_info
    log "mm2 $CONNECT_VERSION running (pid $pid): factory $(mm2_source) -> core $(mm2_target), topics '$MM2_TOPICS', info $MM2_DIR/info.json (started in $((SECONDS - started)) s)"
}

stop_mm2() {
    local pid
    if pid=$(mm2_pid); then
        stop_pid mm2 "$pid"
    else
        log "mm2 not running"
    fi
}

status_mm2() {
    local pid
    if pid=$(mm2_pid); then
        printf '%-10s running  pid %-7s factory %s -> core %s  data %s\n' mm2 "$pid" "$(mm2_source)" "$(mm2_target)" "$MM2_DIR"
    else
        printf '%-10s stopped\n' mm2
        return 3
    fi
}
