# shellcheck shell=bash
# The core Kafka cluster for scripts/services.sh, which sources this file: the
# data-lake cluster of the factory-to-core topology (docs/components/edge-to-core.md).
#
# The same broker as the `kafka` service (the factory cluster), run by kafka.sh's
# own functions with their variables pointed at another data dir and ports: KRaft,
# one node, the jars of the shared cache, SASL_SSL with SCRAM-SHA-512 (user
# "unsflow", same password variable), a server certificate from the test CA.
#
#   PLAINTEXT  127.0.0.1:${UNSFLOW_KAFKA_CORE_PORT:-9192}
#   CONTROLLER 127.0.0.1:${UNSFLOW_KAFKA_CORE_CONTROLLER_PORT:-9193}
#   SASL_SSL   127.0.0.1:${UNSFLOW_KAFKA_CORE_SASL_PORT:-9194}
#
# Environment (besides kafka.sh's UNSFLOW_KAFKA_VERSION, UNSFLOW_KAFKA_TEST_PASSWORD):
#   UNSFLOW_KAFKA_CORE_HEAP   JVM heap options (default: kafka.sh's)
#
# Data: $SERVICES_DIR/kafka-core (info.json, server.log, data/). Docs: docs/services.md

SERVICES+=(kafka-core)

KAFKA_CORE_PORT=${UNSFLOW_KAFKA_CORE_PORT:-9192}
KAFKA_CORE_CONTROLLER_PORT=${UNSFLOW_KAFKA_CORE_CONTROLLER_PORT:-9193}
KAFKA_CORE_SASL_PORT=${UNSFLOW_KAFKA_CORE_SASL_PORT:-9194}
KAFKA_CORE_DIR=$SERVICES_DIR/kafka-core

# Point kafka.sh's variables at the core cluster; call in a subshell only.
kafka_core_env() {
    KAFKA_NAME=kafka-core
    KAFKA_ENV=UNSFLOW_KAFKA_CORE
    KAFKA_PORT=$KAFKA_CORE_PORT
    KAFKA_SASL_PORT=$KAFKA_CORE_SASL_PORT
    KAFKA_CONTROLLER_PORT=$KAFKA_CORE_CONTROLLER_PORT
    KAFKA_HEAP=${UNSFLOW_KAFKA_CORE_HEAP:-$KAFKA_HEAP}
    KAFKA_DIR=$KAFKA_CORE_DIR
    KAFKA_CONF=$KAFKA_DIR/server.properties
    KAFKA_PID=$KAFKA_DIR/kafka.pid
    KAFKA_LOG=$KAFKA_DIR/server.log
}

install_kafka-core() { install_kafka; }
start_kafka-core() { (kafka_core_env && start_kafka); }
stop_kafka-core() { (kafka_core_env && stop_kafka); }
status_kafka-core() { (kafka_core_env && status_kafka); }
