#!/usr/bin/env bash
# The project's one test command (README, .ci/run):
#
#   scripts/test.sh [pytest arguments...]
#
# Installs unsflow with its test dependencies when they are missing or
# pyproject.toml changed, starts the services the tests talk to
# (scripts/services.sh), then runs pytest and exits with its status.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO_ROOT=$PWD
VENV=$REPO_ROOT/.venv
SERVICES_DIR=${UNSFLOW_SERVICES_DIR:-$REPO_ROOT/.services}

# Same choice as scripts/setup.sh: UNSFLOW_PYTHON, else this checkout's .venv
# (whether or not it is activated).
pick_python() {
    if [ -n "${UNSFLOW_PYTHON:-}" ]; then
        echo "$UNSFLOW_PYTHON"
    else
        echo "$VENV/bin/python"
    fi
}

# True when the test dependencies import and unsflow is this checkout's
# (another checkout's editable install would test the wrong code).
deps_ok() {
    "$PYTHON" - "$REPO_ROOT/src" >/dev/null 2>&1 <<'EOF'
import pathlib, sys
import unsflow, pytest, paho.mqtt, duckdb, hypothesis, xdist
here = pathlib.Path(sys.argv[1]).resolve()
sys.exit(0 if pathlib.Path(unsflow.__file__).resolve().is_relative_to(here) else 1)
EOF
}

stamp_fresh() {
    [ -f "$STAMP" ] && [ ! pyproject.toml -nt "$STAMP" ] &&
        [ "$(cat "$STAMP")" = "$("$PYTHON" -c 'import sys; print(sys.executable)')" ]
}

PYTHON=$(pick_python)
# Written after a successful install; holds the interpreter it was for. Kept
# beside that interpreter's packages, not in the services dir, which several
# checkouts may share (UNSFLOW_SERVICES_DIR).
if [ "$PYTHON" = "$VENV/bin/python" ]; then
    STAMP=$VENV/unsflow-dev.stamp
else
    STAMP=$SERVICES_DIR/python-dev.stamp
fi
if ! deps_ok || ! stamp_fresh; then
    bash scripts/setup.sh --extras dev --no-services
    PYTHON=$(pick_python)
    deps_ok || {
        echo "test: unsflow[dev] still does not import from $REPO_ROOT/src with $PYTHON" >&2
        exit 1
    }
    mkdir -p "$(dirname "$STAMP")"
    "$PYTHON" -c 'import sys; print(sys.executable)' >"$STAMP"
fi
# The compiled hot paths follow their sources (a second it is up to date).
bash scripts/speedups.sh "$PYTHON"

# Every service the suite talks to, started (and on a new machine installed or
# built: MinIO from its Go module, Kafka's jars from Maven Central) before
# pytest, so that no first-time build runs inside a test's timeout.
# A service that cannot start fails here, loudly, with its log tail.
bash scripts/services.sh up mosquitto minio moto kafka chromium
# The factory-to-core topology's jars (Kafka Connect, Debezium) and PostgreSQL: installed
# here, started by tests/e2e/test_edge_to_core.py in a data dir of its own.
bash scripts/services.sh install postgres debezium mm2
# The deployment tests' tools, for the same reason: kustomize and toxiproxy built from
# their Go modules, the pinned CRDs collected (once per machine, then cached).
bash scripts/tools.sh build

# The e2e tests run the `unsflow` command: take the one installed beside this Python.
PATH="$("$PYTHON" -c 'import os, sys; print(os.path.dirname(sys.executable))'):$PATH"
export PATH
# Test modules run in parallel worker processes (pytest-xdist; one module stays on one
# worker, so its module-scoped services start once): most tests wait on brokers,
# processes and disks more than they compute. UNSFLOW_TEST_WORKERS=0 runs them in this
# process, one after another.
# On CI (CI set, as .ci/run's callers do) nothing reuses the services afterwards: stop
# them when the suite ends. On a workstation they stay up for the next run.
case "${CI:-}" in
    ""|false|0)
        exec "$PYTHON" -m pytest -q -n "${UNSFLOW_TEST_WORKERS:-3}" --dist loadfile "$@" ;;
esac
status=0
"$PYTHON" -m pytest -q -n "${UNSFLOW_TEST_WORKERS:-3}" --dist loadfile "$@" || status=$?
bash scripts/services.sh down >/dev/null 2>&1 || echo "test: services.sh down failed" >&2
exit "$status"
