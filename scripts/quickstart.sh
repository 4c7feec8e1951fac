#!/usr/bin/env bash
# See the main job work: UNS messages in, Parquet rows under ./datalake out.
# Runs after scripts/setup.sh; starts the broker if it is not running.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=python3
if [ -z "${VIRTUAL_ENV:-}" ] && [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; fi
bash scripts/services.sh up mosquitto >/dev/null
exec "$PYTHON" scripts/quickstart.py "$@"
