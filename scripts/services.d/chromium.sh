# shellcheck shell=bash
# Chromium for scripts/services.sh (sourced by it; uses its helpers): the real
# browser of the dashboard's browser tests (Playwright for Python drives it
# through `executable_path`; Playwright's own browser downloads are not used).
#
# Not a daemon: each test session launches its own headless browser. `up`
# installs Debian's `chromium` package when missing (apt-get update first) and
# writes info.json with the executable's path and version; `down` does
# nothing; `status` says whether it is installed. No ports.
#
# Environment:
#   UNSFLOW_CHROMIUM   a Chromium executable to use instead of Debian's package

SERVICES+=(chromium)

CHROMIUM_DIR=$SERVICES_DIR/chromium

chromium_bin() {
    if [ -n "${UNSFLOW_CHROMIUM:-}" ]; then
        [ -x "$UNSFLOW_CHROMIUM" ] && echo "$UNSFLOW_CHROMIUM" && return 0
        return 1
    fi
    command -v chromium 2>/dev/null || { [ -x /usr/bin/chromium ] && echo /usr/bin/chromium; }
}

install_chromium() {
    if chromium_bin >/dev/null; then return 0; fi
    if [ -n "${UNSFLOW_CHROMIUM:-}" ]; then
        die "chromium: UNSFLOW_CHROMIUM=$UNSFLOW_CHROMIUM is not an executable"
    fi
    apt_install chromium fonts-liberation ||
        die "chromium: apt-get install chromium failed; install Debian's chromium package by hand"
    chromium_bin >/dev/null || die "chromium: installed, but no chromium executable on PATH"
}

start_chromium() {
    local bin version tmp
    install_chromium
    bin=$(chromium_bin)
    # --version reads no profile and opens no window; it proves the binary runs.
    version=$("$bin" --version 2>/dev/null | head -n 1) ||
        die "chromium: $bin --version failed; is the package complete? (apt-get install --reinstall chromium)"
    mkdir -p "$CHROMIUM_DIR"
    tmp=$CHROMIUM_DIR/info.json.tmp
    cat >"$tmp" <<EOF
{
  "executable": $(json_str "$bin"),
  "version": $(json_str "$version")
}
EOF
    mv "$tmp" "$CHROMIUM_DIR/info.json"
    log "chromium ready: $version ($bin), info $CHROMIUM_DIR/info.json"
}

stop_chromium() { :; }

status_chromium() {
    local bin
    if bin=$(chromium_bin); then
        printf '%-10s installed %s\n' chromium "$bin"
    else
        printf '%-10s not installed\n' chromium
        return 3
    fi
}
