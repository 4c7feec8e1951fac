#!/usr/bin/env bash
# Set up unsflow on a fresh Debian or Ubuntu machine (or re-run it: idempotent).
#
#   scripts/setup.sh [--extras LIST] [--no-services]
#
#   1. system packages for the broker (scripts/services.sh install mosquitto)
#   2. pip install -e '.[LIST]' (default LIST: all) into this checkout's own
#      virtual environment, .venv (made on first run), never into a Python
#      that other checkouts or users share
#   3. scripts/speedups.sh: the optional compiled hot paths (Rust), where a Rust
#      toolchain exists; without one unsflow runs the same steps in pure Python
#   4. scripts/services.sh up mosquitto
#
# --no-services skips steps 1 and 4. UNSFLOW_PYTHON names another interpreter
# to install into instead of .venv (at your own risk: it is shared).
# Afterwards `. .venv/bin/activate` puts `unsflow` on PATH; without it, run
# .venv/bin/unsflow. The project's scripts find .venv either way.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO_ROOT=$PWD
VENV=$REPO_ROOT/.venv
EXTRAS=all
SERVICES=1

log() { printf 'setup: %s\n' "$*" >&2; }
die() {
    printf 'setup: error: %s\n' "$*" >&2
    exit 1
}

while [ $# -gt 0 ]; do
    case $1 in
    --extras) EXTRAS=${2:?--extras needs a value, e.g. dev}; shift 2 ;;
    --extras=*) EXTRAS=${1#--extras=}; shift ;;
    --no-services) SERVICES=0; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (see scripts/setup.sh --help)" ;;
    esac
done

# as_root, apt_install
# shellcheck source=scripts/lib.sh
. "$REPO_ROOT/scripts/lib.sh"

# The interpreter to install into: the one asked for, else this checkout's .venv.
# scripts/test.sh and scripts/quickstart.sh pick it the same way.
pick_python() {
    if [ -n "${UNSFLOW_PYTHON:-}" ]; then
        echo "$UNSFLOW_PYTHON"
    else
        echo "$VENV/bin/python"
    fi
}

make_venv() {
    if [ ! -x "$VENV/bin/python" ]; then
        # Debian's python3 has the venv module but not ensurepip without python3-venv.
        if ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
            apt_install python3-venv
        fi
        log "creating a virtual environment at $VENV"
        python3 -m venv "$VENV"
        "$VENV/bin/python" -m pip install -q --upgrade pip
    fi
}

if [ "$SERVICES" = 1 ]; then
    bash scripts/services.sh install mosquitto
fi

PYTHON=$(pick_python)
if [ "$PYTHON" = "$VENV/bin/python" ]; then
    command -v python3 >/dev/null 2>&1 || die "python3 not found; install python3 (3.11 or newer)"
    python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
        die "unsflow needs Python 3.11 or newer; python3 is $(python3 -V 2>&1)"
    make_venv
else
    command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found"
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
        die "unsflow needs Python 3.11 or newer; $PYTHON is $("$PYTHON" -V 2>&1)"
fi

log "pip install -e '.[$EXTRAS]' with $PYTHON"
"$PYTHON" -m pip install -q -e ".[$EXTRAS]" || die "pip install -e '.[$EXTRAS]' failed"
bash scripts/speedups.sh "$PYTHON"

if [ "$SERVICES" = 1 ]; then
    bash scripts/services.sh up mosquitto
fi

log "unsflow installed for $("$PYTHON" -c 'import sys; print(sys.executable)')"
if [ "$PYTHON" = "$VENV/bin/python" ] && [ "${VIRTUAL_ENV:-}" != "$VENV" ]; then
    log "put unsflow on your PATH with: . .venv/bin/activate   (or run .venv/bin/unsflow)"
fi
log "run the tests with: scripts/test.sh"
