# shellcheck shell=bash
# Helpers shared by scripts/setup.sh, scripts/services.sh and scripts/image.sh (sourced;
# the sourcing script defines log and die with its own prefix).

# Run a command as root: directly when we are root, else through sudo.
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root to run '$*' and sudo is not installed"
    fi
}

# apt_install PACKAGE... : install the packages with apt-get.
apt_install() {
    command -v apt-get >/dev/null 2>&1 ||
        die "apt-get not found; install these packages by hand: $*"
    log "installing $* (apt-get)"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
}
