#!/usr/bin/env bash
# Set up unsflow on a fresh Debian or Ubuntu machine (or re-run it: idempotent).
#
#   scripts/setup.sh [--extras LIST] [--no-services]
#
#   1. system packages for the broker (scripts/services.sh install mosquitto)
#   2. pip install -e '.[LIST]' (default LIST: all), into a virtual environment
#      at .venv when the system Python refuses packages (PEP 668) or has no pip
#   3. scripts/services.sh up mosquitto
#
# --no-services skips steps 1 and 3. UNSFLOW_PYTHON names the interpreter to use.
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

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root to run '$*' and sudo is not installed"
    fi
}

# The interpreter to install into: the one asked for, the active virtual
# environment, this checkout's .venv once it exists, else python3.
# scripts/test.sh picks it the same way.
pick_python() {
    if [ -n "${UNSFLOW_PYTHON:-}" ]; then
        echo "$UNSFLOW_PYTHON"
    elif [ -z "${VIRTUAL_ENV:-}" ] && [ -x "$VENV/bin/python" ]; then
        echo "$VENV/bin/python"
    else
        echo python3
    fi
}

make_venv() {
    if [ ! -x "$VENV/bin/python" ]; then
        # Debian's python3 has the venv module but not ensurepip without python3-venv.
        if ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
            command -v apt-get >/dev/null 2>&1 || die "python3 cannot create a venv (no ensurepip); install python3-venv"
            log "installing python3-venv (apt-get)"
            as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
            as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv
        fi
        log "creating a virtual environment at $VENV"
        python3 -m venv "$VENV"
    fi
    "$VENV/bin/python" -m pip install -q --upgrade pip
}

if [ "$SERVICES" = 1 ]; then
    bash scripts/services.sh install mosquitto
fi

PYTHON=$(pick_python)
command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found; install python3 (3.11 or newer)"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    die "unsflow needs Python 3.11 or newer; $PYTHON is $("$PYTHON" -V 2>&1)"

log "pip install -e '.[$EXTRAS]' with $PYTHON"
pip_err=$(mktemp)
trap 'rm -f "$pip_err"' EXIT
if ! "$PYTHON" -m pip --version >/dev/null 2>&1; then
    [ "$PYTHON" = python3 ] || die "$PYTHON has no pip"
    log "python3 has no pip; using a virtual environment instead"
    make_venv
    PYTHON=$VENV/bin/python
    "$PYTHON" -m pip install -q -e ".[$EXTRAS]"
elif ! "$PYTHON" -m pip install -q -e ".[$EXTRAS]" 2>"$pip_err"; then
    if grep -q externally-managed-environment "$pip_err" && [ "$PYTHON" = python3 ]; then
        log "the system Python is externally managed (PEP 668); using a virtual environment instead"
        make_venv
        PYTHON=$VENV/bin/python
        "$PYTHON" -m pip install -q -e ".[$EXTRAS]"
    else
        cat "$pip_err" >&2
        die "pip install -e '.[$EXTRAS]' failed"
    fi
else
    cat "$pip_err" >&2 # warnings
fi

if [ "$SERVICES" = 1 ]; then
    bash scripts/services.sh up mosquitto
fi

log "unsflow installed for $("$PYTHON" -c 'import sys; print(sys.executable)')"
if [ "$PYTHON" = "$VENV/bin/python" ] && [ "${VIRTUAL_ENV:-}" != "$VENV" ]; then
    log "activate its environment with: . .venv/bin/activate"
fi
log "run the tests with: scripts/test.sh"
