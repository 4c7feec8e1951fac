#!/usr/bin/env bash
# See the main job work: UNS messages in, Parquet rows under ./datalake out.
# Runs after scripts/setup.sh; starts the broker if it is not running.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# This checkout's .venv (scripts/setup.sh), activated or not.
PYTHON=${UNSFLOW_PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || command -v "$PYTHON" >/dev/null 2>&1 ||
    { echo "quickstart: $PYTHON not found; run scripts/setup.sh first" >&2; exit 1; }
bash scripts/services.sh up mosquitto >/dev/null
exec "$PYTHON" scripts/quickstart.py "$@"
