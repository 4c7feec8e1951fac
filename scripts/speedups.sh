#!/usr/bin/env bash
# Build and install unsflow's optional compiled hot paths (speedups/: Rust, PyO3, maturin).
#
#   scripts/speedups.sh [PYTHON]
#
# PYTHON defaults to this checkout's .venv (or UNSFLOW_PYTHON), as setup.sh picks it.
# Without a Rust toolchain (cargo) it says so and does nothing: unsflow then runs the
# same steps in pure Python. With one, it installs the unsflow-speedups package when
# its sources changed since the last install into PYTHON (a stamp beside PYTHON's
# packages holds their hash), so a second run costs a second. Cargo's build output is
# kept in ~/.cache/unsflow/cargo-target (CARGO_TARGET_DIR), shared by every clone, so
# a fresh clone rebuilds in seconds, not minutes. A failed build is a warning, not an
# error (unsflow works without it; tests/unit/test_speedups.py fails where cargo exists
# and the module is missing). UNSFLOW_SPEEDUPS_BUILD=0 skips it on purpose.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO_ROOT=$PWD
log() { printf 'speedups: %s\n' "$*" >&2; }

PYTHON=${1:-${UNSFLOW_PYTHON:-$REPO_ROOT/.venv/bin/python}}
if [ "${UNSFLOW_SPEEDUPS_BUILD:-1}" = 0 ]; then
    log "UNSFLOW_SPEEDUPS_BUILD=0: not building; the pure-Python paths run"
    exit 0
fi
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
    PATH=$HOME/.cargo/bin:$PATH
fi
if ! command -v cargo >/dev/null 2>&1; then
    log "no Rust toolchain (cargo): unsflow runs its pure-Python paths (install Rust from" \
        "https://rustup.rs or Debian's cargo package and re-run for the compiled ones)"
    exit 0
fi

HASH=$(cd speedups && cat Cargo.toml Cargo.lock pyproject.toml src/*.rs | sha256sum | cut -d' ' -f1)
STAMP=$("$PYTHON" -c 'import sys; print(sys.prefix)')/unsflow-speedups.stamp
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$HASH" ] &&
    "$PYTHON" -c 'import unsflow_speedups' >/dev/null 2>&1; then
    exit 0
fi
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/unsflow/cargo-target}
log "building unsflow-speedups ($(cargo --version)); cached in $CARGO_TARGET_DIR"
if "$PYTHON" -m pip install -q ./speedups; then
    echo "$HASH" >"$STAMP"
    log "installed: the MQTT decoder and JSON -> Arrow columns are compiled"
else
    log "warning: building unsflow-speedups failed; unsflow runs its pure-Python paths"
fi
