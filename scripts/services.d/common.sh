# shellcheck shell=bash
# Helpers shared by the services in scripts/services.d (sourced by scripts/services.sh).

# http_ok URL : true when URL answers 2xx.
http_ok() {
    if command -v curl >/dev/null 2>&1; then
        curl -fsS -o /dev/null --max-time 2 "$1" 2>/dev/null
    else
        local rest=${1#http://} hostport path status
        hostport=${rest%%/*}
        path=/${rest#*/}
        # shellcheck disable=SC2016 # expanded by the inner shell
        status=$(timeout 2 bash -c 'exec 3<>"/dev/tcp/${1%:*}/${1##*:}" &&
            printf "GET %s HTTP/1.0\r\nHost: %s\r\n\r\n" "$2" "$1" >&3 && head -n 1 <&3' \
            _ "$hostport" "$path" 2>/dev/null) || return 1
        case $status in "HTTP/1."?" 2"*) return 0 ;; *) return 1 ;; esac
    fi
}

# other_data_dir PORT SUFFIX : when the process listening on PORT has an
# argument ending in SUFFIX (e.g. /minio/data), print the services data dir it
# belongs to: another checkout's service, which UNSFLOW_SERVICES_DIR would share.
other_data_dir() {
    local line pid arg
    command -v ss >/dev/null 2>&1 || return 0
    line=$(ss -H -ltnp "sport = :$1" 2>/dev/null | head -n 1 || true)
    pid=$(sed -n 's/.*pid=\([0-9]*\).*/\1/p' <<<"$line")
    [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 0
    arg=$(tr '\0' '\n' <"/proc/$pid/cmdline" | grep -m1 -- "$2\$" || true)
    if [ -n "$arg" ]; then
        echo "  that is the service of another data dir; to use it: UNSFLOW_SERVICES_DIR=${arg%"$2"}"
    fi
}
