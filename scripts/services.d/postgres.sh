# shellcheck shell=bash
# PostgreSQL for scripts/services.sh (sourced by it; uses its helpers): the plant's
# line database of the factory-to-core topology, captured by the debezium service.
#
# The server of the Debian package (postgresql; any major version, the newest under
# /usr/lib/postgresql), run from its binaries with a cluster of our own: initdb
# into the data dir, our own port and socket dir, wal_level=logical for Debezium.
# Run as root, the server runs as the package's "postgres" user (PostgreSQL
# refuses root), so the data dir's parents must let that user through (o+x).
#
#   127.0.0.1:${UNSFLOW_POSTGRES_PORT:-5442}  user unsflow (LOGIN REPLICATION), database "line"
#   unix socket in $SERVICES_DIR/postgres      superuser "postgres", trusted (local only)
#
# Environment:
#   UNSFLOW_POSTGRES_PORT           TCP port on 127.0.0.1 (default 5442)
#   UNSFLOW_POSTGRES_TEST_PASSWORD  password of user unsflow
#
# The database "line" holds work orders, maintenance events and quality results
# (scripts/services.d/linedb.sql); `python -m unsflow.testing.linedb` runs
# transactions against it at a given rate. Docs: docs/services.md

SERVICES+=(postgres)

PG_HOST=127.0.0.1
PG_PORT=${UNSFLOW_POSTGRES_PORT:-5442}
PG_USER=unsflow
PG_PASSWORD=${UNSFLOW_POSTGRES_TEST_PASSWORD:-unsflow-test-password}
PG_DB=line
PG_DIR=$SERVICES_DIR/postgres
PG_DATA=$PG_DIR/data
PG_LOG=$PG_DIR/postgres.log
PG_START_TIMEOUT=60

# The directory of the newest installed server's binaries (initdb, pg_ctl, postgres).
pg_bindir() {
    local dir
    dir=$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin 2>/dev/null | sort -V | tail -n 1)
    if [ -n "$dir" ] && [ -x "$dir/pg_ctl" ]; then
        echo "$dir"
    elif command -v pg_ctl >/dev/null 2>&1; then
        dirname "$(command -v pg_ctl)"
    else
        return 1
    fi
}

install_postgres() {
    if pg_bindir >/dev/null && command -v psql >/dev/null 2>&1; then return 0; fi
    apt_install postgresql postgresql-client
    # The package starts a cluster of its own on 5432; ours is separate, on $PG_PORT.
}

# as_pg CMD... : run a server command as the user that owns the cluster.
as_pg() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# The postmaster's pid: the first line of postmaster.pid (pid_alive wants a file of one line).
pg_pid() {
    [ -s "$PG_DATA/postmaster.pid" ] || return 1
    head -n 1 "$PG_DATA/postmaster.pid" >"$PG_DIR/postmaster.pid.1" 2>/dev/null || return 1
    pid_alive "$PG_DIR/postmaster.pid.1" "$PG_DATA"
}

# psql as the superuser over the cluster's own socket.
pg_psql() {
    as_pg "$(pg_bindir)/psql" -X -q -v ON_ERROR_STOP=1 -h "$PG_DIR" -p "$PG_PORT" -U postgres "$@"
}

pg_failed() {
    printf 'services: error: postgres: %s\n' "$1" >&2
    if [ -s "$PG_LOG" ]; then
        echo "--- last 30 lines of $PG_LOG" >&2
        tail -n 30 "$PG_LOG" >&2
    fi
    exit 1
}

write_postgres_conf() {
    cat >"$PG_DATA/unsflow.conf" <<CONF
# Written by scripts/services.d/postgres.sh (included from postgresql.conf); rewritten on start.
listen_addresses = '$PG_HOST'
port = $PG_PORT
unix_socket_directories = '$PG_DIR'
# Logical decoding for Debezium (pgoutput): a slot and a WAL sender per connector.
wal_level = logical
max_wal_senders = 10
max_replication_slots = 10
# A test server on a shared 2-core machine: small, but durable (fsync and
# synchronous_commit stay on: a committed transaction survives a restart).
shared_buffers = 128MB
max_connections = 60
log_min_messages = warning
log_line_prefix = '%m [%p] '
CONF
}

write_postgres_info() {
    local tmp=$PG_DIR/info.json.tmp
    cat >"$tmp" <<JSON
{
  "host": "$PG_HOST",
  "port": $PG_PORT,
  "user": "$PG_USER",
  "password": $(json_str "$PG_PASSWORD"),
  "database": "$PG_DB",
  "dsn": $(json_str "host=$PG_HOST port=$PG_PORT dbname=$PG_DB user=$PG_USER password=$PG_PASSWORD"),
  "socket_dir": $(json_str "$PG_DIR"),
  "log": $(json_str "$PG_LOG")
}
JSON
    mv "$tmp" "$PG_DIR/info.json"
}

start_postgres() {
    local pid bin started=$SECONDS
    if pid=$(pg_pid); then
        log "postgres already running (pid $pid, data $PG_DATA)"
        [ -s "$PG_DIR/info.json" ] || write_postgres_info
        return 0
    fi
    install_postgres
    bin=$(pg_bindir) || die "PostgreSQL's server binaries (pg_ctl) not found after install"
    if port_open "$PG_HOST" "$PG_PORT"; then
        {
            echo "services: error: port $PG_PORT on $PG_HOST is in use by another process, not by the PostgreSQL of $PG_DATA;"
            echo "  stop it or choose another port with UNSFLOW_POSTGRES_PORT"
            who_listens "$PG_PORT"
            other_data_dir "$PG_PORT" /postgres/data
        } >&2
        exit 1
    fi
    mkdir -p "$PG_DIR"
    if [ "$(id -u)" -eq 0 ]; then
        id postgres >/dev/null 2>&1 || die "postgres: running as root needs the 'postgres' user of the Debian package (PostgreSQL refuses to run as root)"
        chown postgres: "$PG_DIR"
        runuser -u postgres -- test -x "$PG_DIR" ||
            die "postgres: user 'postgres' cannot enter $PG_DIR (a parent directory lacks o+x); choose another UNSFLOW_SERVICES_DIR"
    fi
    if [ ! -s "$PG_DATA/PG_VERSION" ]; then
        log "postgres: initdb $PG_DATA"
        rm -rf "$PG_DATA"
        as_pg "$bin/initdb" -D "$PG_DATA" -U postgres -E UTF8 --locale=C.UTF-8 \
            --auth-local=trust --auth-host=scram-sha-256 >"$PG_DIR/initdb.log" 2>&1 || {
            cat "$PG_DIR/initdb.log" >&2
            die "postgres: initdb failed"
        }
        echo "include_if_exists = 'unsflow.conf'" | as_pg tee -a "$PG_DATA/postgresql.conf" >/dev/null
    fi
    write_postgres_conf
    [ "$(id -u)" -ne 0 ] || chown postgres: "$PG_DATA/unsflow.conf"
    if [ -f "$PG_LOG" ]; then mv -f "$PG_LOG" "$PG_LOG.1"; fi
    as_pg touch "$PG_LOG"
    # pg_ctl -w returns when the server accepts connections; it detaches the server.
    as_pg "$bin/pg_ctl" -D "$PG_DATA" -l "$PG_LOG" -w -t "$PG_START_TIMEOUT" start \
        </dev/null >"$PG_DIR/pg_ctl.log" 2>&1 9>&- 8>&- ||
        pg_failed "pg_ctl start failed: $(tail -n 3 "$PG_DIR/pg_ctl.log")"
    pid=$(pg_pid) || pg_failed "the server exited during start"

    # The user, the database and its tables (idempotent).
    pg_psql -d postgres -v user="$PG_USER" -v password="$PG_PASSWORD" -v db="$PG_DB" <<'SQL' ||
SELECT format('CREATE ROLE %I', :'user') WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'user')\gexec
SELECT format('ALTER ROLE %I LOGIN REPLICATION PASSWORD %L', :'user', :'password')\gexec
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'user') WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db')\gexec
SQL
        pg_failed "could not create user $PG_USER and database $PG_DB"
    as_pg "$bin/psql" -X -q -v ON_ERROR_STOP=1 -h "$PG_DIR" -p "$PG_PORT" -U "$PG_USER" -d "$PG_DB" \
        -f - <"$REPO_ROOT/scripts/services.d/linedb.sql" >/dev/null ||
        pg_failed "could not create the line database's tables (scripts/services.d/linedb.sql)"
    # One login the way clients log in: TCP and password.
    PGPASSWORD=$PG_PASSWORD "$bin/psql" -X -q -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d "$PG_DB" \
        -c 'SELECT 1' >/dev/null 2>&1 ||
        pg_failed "user $PG_USER cannot log in over TCP on $PG_HOST:$PG_PORT"

    write_postgres_info
    log "postgres $("$bin/postgres" --version | awk '{print $3}') running (pid $pid): $PG_HOST:$PG_PORT, database $PG_DB, user $PG_USER, info $PG_DIR/info.json (started in $((SECONDS - started)) s)"
}

stop_postgres() {
    local bin
    if pg_pid >/dev/null; then
        bin=$(pg_bindir) || die "pg_ctl not found"
        # fast: roll back open transactions, write a checkpoint, stop (no data lost).
        as_pg "$bin/pg_ctl" -D "$PG_DATA" -m fast -w -t 30 stop >/dev/null ||
            die "postgres: pg_ctl stop failed (log: $PG_LOG)"
        log "postgres stopped"
    else
        log "postgres not running"
    fi
}

status_postgres() {
    local pid
    if pid=$(pg_pid); then
        printf '%-10s running  pid %-7s listeners %s:%s  data %s\n' postgres "$pid" "$PG_HOST" "$PG_PORT" "$PG_DATA"
    else
        printf '%-10s stopped\n' postgres
        return 3
    fi
}
