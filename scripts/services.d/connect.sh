# shellcheck shell=bash
# Kafka Connect's jars for scripts/services.sh (sourced by it): the runtime that
# MirrorMaker 2 (mm2.sh) and Debezium (debezium.sh) run on. No service of its own.
#
# org.apache.kafka:connect-runtime, connect-mirror, connect-json and
# connect-transforms from Maven Central, resolved once with Maven into
# ${UNSFLOW_CACHE_DIR:-~/.cache/unsflow}/kafka-connect-<version>/libs.
#
# The version is 4.3.1, not the brokers' 4.4.0: connect-mirror 4.4.0 is not on
# Maven Central (as of 2026-12-01), and Debezium 3.6 is built against Kafka 4.3
# (it calls org.apache.kafka.common.utils.Sanitizer, which kafka-clients 4.4.0
# moved to ...utils.internals: its tasks fail with NoClassDefFoundError on a
# 4.4.0 worker). 4.3 clients talk to the 4.4.0 brokers as any 4.x client does.
#
# Environment:
#   UNSFLOW_CONNECT_VERSION   Kafka Connect version (default 4.3.1)

CONNECT_VERSION=${UNSFLOW_CONNECT_VERSION:-4.3.1}
CONNECT_CACHE=${UNSFLOW_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/unsflow}/kafka-connect-$CONNECT_VERSION
case $CONNECT_CACHE in /*) ;; *) CONNECT_CACHE=$PWD/$CONNECT_CACHE ;; esac
CONNECT_LIBS=$CONNECT_CACHE/libs

install_connect() {
    install_kafka # java 17+, javac, maven, openssl
    local a deps=""
    for a in connect-runtime connect-mirror connect-json connect-transforms; do
        deps+="
    <dependency><groupId>org.apache.kafka</groupId><artifactId>$a</artifactId><version>$CONNECT_VERSION</version></dependency>"
    done
    maven_libs "$CONNECT_CACHE" "Kafka Connect $CONNECT_VERSION (runtime, mirror, json, transforms)" "$deps
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>$KAFKA_LOG4J_VERSION</version></dependency>"
    connect_compile_probe
}

# MirrorProbe (readiness of MirrorMaker), compiled against these jars; again when its source changed.
connect_compile_probe() {
    local src=$REPO_ROOT/scripts/services.d/MirrorProbe.java
    [ -f "$CONNECT_CACHE/probe/MirrorProbe.class" ] && [ ! "$src" -nt "$CONNECT_CACHE/probe/MirrorProbe.class" ] &&
        return 0
    mkdir -p "$CONNECT_CACHE/probe"
    "$(kafka_javac)" -nowarn -d "$CONNECT_CACHE/probe" -cp "$CONNECT_LIBS/*" "$src" ||
        die "javac could not compile $src"
}

# connect_log4j FILE LOG : a log4j2 config writing to LOG (client chatter at WARN).
connect_log4j() {
    cat >"$1" <<PROPS
# Written by scripts/services.d (connect_log4j).
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = $2
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.clients.name = org.apache.kafka.clients
logger.clients.level = WARN
PROPS
}
