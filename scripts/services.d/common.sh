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

# maven_libs CACHE DESCRIPTION DEPENDENCIES [MVN_ARGS...] : resolve the <dependency>
# elements DEPENDENCIES (XML) and their runtime dependencies with Maven, once, into
# CACHE/libs; CACHE/.complete marks a finished resolve, a lock keeps parallel
# installs apart (several data dirs share one cache). Extra MVN_ARGS go to
# dependency:copy-dependencies (e.g. -DexcludeGroupIds=...).
maven_libs() {
    local cache=$1 what=$2 deps=$3 tmp
    shift 3
    [ -f "$cache/.complete" ] && return 0
    command -v mvn >/dev/null 2>&1 || apt_install maven
    mkdir -p "$cache"
    exec 7>"$cache/.lock"
    flock -w 900 7 || die "another install holds $cache/.lock for 900 s"
    if [ -f "$cache/.complete" ]; then
        exec 7>&-
        return 0
    fi
    log "resolving $what and its runtime dependencies (mvn) into $cache/libs"
    cat >"$cache/pom.xml" <<POM
<?xml version="1.0" encoding="UTF-8"?>
<!-- Written by scripts/services.d (maven_libs): $what -->
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.unsflow</groupId>
  <artifactId>${cache##*/}</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
$deps
  </dependencies>
  <build>
    <plugins>
      <plugin>
        <groupId>org.apache.maven.plugins</groupId>
        <artifactId>maven-dependency-plugin</artifactId>
        <version>3.8.1</version>
      </plugin>
    </plugins>
  </build>
</project>
POM
    tmp=$cache/libs.tmp
    rm -rf "$tmp"
    (cd "$cache" && mvn -q -B dependency:copy-dependencies -DincludeScope=runtime \
        -DoutputDirectory="$tmp" "$@" </dev/null >"$cache/mvn.log" 2>&1) || {
        tail -n 40 "$cache/mvn.log" >&2
        die "mvn could not resolve $what (log: $cache/mvn.log)"
    }
    rm -rf "$cache/libs"
    mv "$tmp" "$cache/libs"
    touch "$cache/.complete"
    exec 7>&-
    log "$what: $(find "$cache/libs" -name '*.jar' | wc -l) jars in $cache/libs"
}
