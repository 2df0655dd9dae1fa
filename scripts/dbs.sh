#!/usr/bin/env bash
# Throwaway database servers for the test suite: a PostgreSQL cluster and a MariaDB server, both on
# loopback only, on fixed non-default ports, with their files under one directory.
#
#   scripts/dbs.sh start    install the Debian packages if missing (as root), create and start both servers,
#                           create the `imgaudit` users; a no-op for a server that is already running
#   scripts/dbs.sh stop     shut both down cleanly (their data stays until you delete the directory)
#   scripts/dbs.sh status   say what is running
#   scripts/dbs.sh env      print the admin URLs the tests read:  eval "$(scripts/dbs.sh env)"
#
# No init system is needed: the servers are started by hand (pg_ctl, mariadbd), never through the
# packages' own services, which are kept from starting while the packages are installed.
#
# Environment: IMGAUDIT_DB_DIR (default /tmp/imgaudit-dbs; must be reachable by the postgres and mysql
# users when run as root), IMGAUDIT_PG_PORT (55432), IMGAUDIT_MYSQL_PORT (53306),
# IMGAUDIT_DB_TIMEOUT (seconds to wait for a server, 60).
set -euo pipefail

BASE=$(realpath -m "${IMGAUDIT_DB_DIR:-/tmp/imgaudit-dbs}")
PG_PORT=${IMGAUDIT_PG_PORT:-55432}
MY_PORT=${IMGAUDIT_MYSQL_PORT:-53306}
TIMEOUT=${IMGAUDIT_DB_TIMEOUT:-60}

PG_DIR=$BASE/pg
PG_DATA=$PG_DIR/data
PG_LOG=$PG_DIR/server.log
MY_DIR=$BASE/mariadb
MY_DATA=$MY_DIR/data
MY_SOCK=$MY_DIR/mysqld.sock
MY_PID=$MY_DIR/mysqld.pid
MY_LOG=$MY_DIR/server.log

log() { echo "dbs.sh: $*" >&2; }
die() {
    echo "dbs.sh: error: $*" >&2
    exit 1
}
is_root() { [[ $EUID -eq 0 ]]; }

# Run a command as a service user when we are root (the servers refuse to run as root), else as ourselves.
as_user() {
    local user=$1
    shift
    if is_root; then
        # From /, so the server user never trips over a working directory it may not enter.
        (cd / && runuser -u "$user" -- "$@")
    else
        "$@"
    fi
}

pg_bindir() {
    local d
    d=$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d 2>/dev/null |
        sort -V | tail -n 1) || true
    [[ -n $d && -x $d/initdb && -x $d/pg_ctl ]] && echo "$d"
}

first_of() {
    local p
    for p in "$@"; do
        if [[ -x $p ]]; then
            echo "$p"
            return 0
        fi
    done
    return 1
}
mariadbd_bin() { first_of /usr/sbin/mariadbd /usr/sbin/mysqld; }
mariadb_install_db_bin() { first_of /usr/bin/mariadb-install-db /usr/bin/mysql_install_db; }
mariadb_bin() { first_of /usr/bin/mariadb /usr/bin/mysql; }
mariadb_admin_bin() { first_of /usr/bin/mariadb-admin /usr/bin/mysqladmin; }

# -- packages ------------------------------------------------------------------------------------------

install_packages() {
    local need=()
    pg_bindir >/dev/null || need+=(postgresql)
    { mariadbd_bin && mariadb_install_db_bin && mariadb_bin && mariadb_admin_bin; } >/dev/null ||
        need+=(mariadb-server)
    ((${#need[@]})) || return 0
    is_root || die "missing Debian packages ${need[*]}: run this as root, or sudo apt-get install ${need[*]}"
    command -v apt-get >/dev/null || die "missing ${need[*]} and no apt-get to install them"
    log "installing ${need[*]} ..."
    export DEBIAN_FRONTEND=noninteractive
    # The packages' own services must not start (there is no init system; we run our own servers).
    local policy=/usr/sbin/policy-rc.d
    local own_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        own_policy=1
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    local install=(apt-get install -y -q -o DPkg::Lock::Timeout=300 --no-install-recommends "${need[@]}")
    local rc=0
    {
        # The package lists are fetched once: when there are none yet, or too old to install from.
        if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
            apt-get update -q
        fi
        "${install[@]}" || { apt-get update -q && "${install[@]}"; }
    } >"${TMPDIR:-/tmp}/imgaudit-dbs-apt.log" 2>&1 || rc=$?
    if ((own_policy)); then
        rm -f "$policy"
        trap - EXIT
    fi
    if ((rc)); then
        tail -n 30 "${TMPDIR:-/tmp}/imgaudit-dbs-apt.log" >&2
        die "apt-get install ${need[*]} failed (full log: ${TMPDIR:-/tmp}/imgaudit-dbs-apt.log)"
    fi
    pg_bindir >/dev/null || die "postgresql installed but no /usr/lib/postgresql/*/bin/initdb found"
    mariadbd_bin >/dev/null || die "mariadb-server installed but no mariadbd found"
}

# A live (not zombie) process with one of the given command names: a pid file left behind by a killed
# server, or its pid since reused by another program, must not count as a running server.
proc_is() {
    local pid=$1 comm state
    shift
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
    state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) || return 1
    [[ $state != Z ]] || return 1
    local name
    for name in "$@"; do
        [[ $comm == "$name" ]] && return 0
    done
    return 1
}

# -- PostgreSQL ----------------------------------------------------------------------------------------

pg_pid() { [[ -s $PG_DATA/postmaster.pid ]] && head -n 1 "$PG_DATA/postmaster.pid"; }
pg_running() {
    local pid
    pid=$(pg_pid) || return 1
    proc_is "$pid" postgres
}

pg_admin() {
    "$(pg_bindir)/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres "$@"
}

start_pg() {
    local bin
    bin=$(pg_bindir)
    mkdir -p "$PG_DIR"
    if is_root; then
        chown postgres:postgres "$PG_DIR"
        runuser -u postgres -- test -w "$PG_DIR" ||
            die "the postgres user cannot reach $PG_DIR: choose an IMGAUDIT_DB_DIR outside private folders"
    fi
    if [[ ! -s $PG_DATA/PG_VERSION ]]; then
        rm -rf "$PG_DATA"
        as_user postgres "$bin/initdb" -D "$PG_DATA" -U postgres --auth=trust --no-locale -E UTF8 --no-sync \
            >"$PG_DIR/initdb.log" 2>&1 || die "initdb failed (log: $PG_DIR/initdb.log)"
        cat >>"$PG_DATA/postgresql.conf" <<'EOF'

# imgaudit test cluster (scripts/dbs.sh): throwaway, loopback only, speed over durability.
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
max_connections = 200
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
    fi
    if pg_running; then
        log "PostgreSQL already running ($PG_DATA)"
    else
        log "starting PostgreSQL on 127.0.0.1:$PG_PORT ($PG_DATA)"
        # Left by a server that was killed (its pid may be a zombie or reused by now): PostgreSQL would
        # refuse to start while that pid exists, though it is not a PostgreSQL server.
        rm -f "$PG_DATA/postmaster.pid"
        as_user postgres "$bin/pg_ctl" -D "$PG_DATA" -l "$PG_LOG" -w -t "$TIMEOUT" -o "-p $PG_PORT" start \
            </dev/null >/dev/null 2>&1 9>&- || {
            tail -n 20 "$PG_LOG" >&2 || true
            die "PostgreSQL did not start on 127.0.0.1:$PG_PORT (log: $PG_LOG)"
        }
    fi
    local deadline=$((SECONDS + TIMEOUT))
    until "$bin/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -t 2; do
        ((SECONDS < deadline)) ||
            die "PostgreSQL is not accepting connections on 127.0.0.1:$PG_PORT (log: $PG_LOG)"
        sleep 0.2
    done
    if [[ $(pg_admin -tAc "SELECT 1 FROM pg_roles WHERE rolname = 'imgaudit'") != 1 ]]; then
        pg_admin -c "CREATE ROLE imgaudit LOGIN SUPERUSER" >/dev/null
    fi
    [[ $("$bin/psql" -X -tA -h 127.0.0.1 -p "$PG_PORT" -U imgaudit -d postgres -c "SELECT 1" 2>&1) == 1 ]] ||
        die "cannot connect to PostgreSQL as imgaudit on 127.0.0.1:$PG_PORT (another server on that port?)"
}

stop_pg() {
    if pg_running; then
        log "stopping PostgreSQL"
        as_user postgres "$(pg_bindir)/pg_ctl" -D "$PG_DATA" -m fast -w -t "$TIMEOUT" stop >/dev/null ||
            die "PostgreSQL did not stop (log: $PG_LOG)"
    fi
}

# -- MariaDB -------------------------------------------------------------------------------------------

my_pid() { [[ -s $MY_PID ]] && cat "$MY_PID"; }
my_running() {
    local pid
    pid=$(my_pid) || return 1
    proc_is "$pid" mariadbd mysqld
}

my_root() { "$(mariadb_bin)" --no-defaults --protocol=socket --socket="$MY_SOCK" -uroot "$@"; }

start_mariadb() {
    local user_opt=()
    ((${#MY_SOCK} < 100)) || die "socket path too long: $MY_SOCK (use a shorter IMGAUDIT_DB_DIR)"
    mkdir -p "$MY_DIR"
    if is_root; then
        chown mysql:mysql "$MY_DIR"
        runuser -u mysql -- test -w "$MY_DIR" ||
            die "the mysql user cannot reach $MY_DIR: choose an IMGAUDIT_DB_DIR outside private folders"
        user_opt=(--user=mysql)
    fi
    if [[ ! -d $MY_DATA/mysql ]]; then
        rm -rf "$MY_DATA"
        "$(mariadb_install_db_bin)" --no-defaults --datadir="$MY_DATA" "${user_opt[@]}" \
            --auth-root-authentication-method=normal --skip-test-db --skip-name-resolve \
            >"$MY_DIR/install.log" 2>&1 || die "mariadb-install-db failed (log: $MY_DIR/install.log)"
    fi
    if my_running; then
        log "MariaDB already running ($MY_DATA)"
    else
        log "starting MariaDB on 127.0.0.1:$MY_PORT ($MY_DATA)"
        rm -f "$MY_PID" "$MY_SOCK"
        # setsid and no inherited descriptors: the server must not hold the caller's terminal or pipes.
        setsid "$(mariadbd_bin)" --no-defaults --datadir="$MY_DATA" --socket="$MY_SOCK" --pid-file="$MY_PID" \
            --port="$MY_PORT" --bind-address=127.0.0.1 --log-error="$MY_LOG" "${user_opt[@]}" \
            --skip-name-resolve --max-connections=200 --character-set-server=utf8mb4 \
            --collation-server=utf8mb4_unicode_ci --innodb-flush-log-at-trx-commit=0 \
            --innodb-doublewrite=0 --innodb-buffer-pool-size=128M --skip-log-bin \
            </dev/null >/dev/null 2>&1 9>&- &
        local deadline=$((SECONDS + TIMEOUT))
        until "$(mariadb_admin_bin)" --no-defaults --protocol=socket --socket="$MY_SOCK" -uroot \
            --connect-timeout=2 ping >/dev/null 2>&1; do
            if ((SECONDS >= deadline)); then
                tail -n 20 "$MY_LOG" >&2 || true
                die "MariaDB did not start on 127.0.0.1:$MY_PORT within ${TIMEOUT}s (log: $MY_LOG)"
            fi
            sleep 0.2
        done
    fi
    my_root -e "
        CREATE USER IF NOT EXISTS 'imgaudit'@'%' IDENTIFIED BY 'imgaudit';
        CREATE USER IF NOT EXISTS 'imgaudit'@'localhost' IDENTIFIED BY 'imgaudit';
        GRANT ALL PRIVILEGES ON *.* TO 'imgaudit'@'%' WITH GRANT OPTION;
        GRANT ALL PRIVILEGES ON *.* TO 'imgaudit'@'localhost' WITH GRANT OPTION;" ||
        die "could not create the imgaudit user in MariaDB"
    [[ $("$(mariadb_bin)" --no-defaults --protocol=tcp -h 127.0.0.1 -P "$MY_PORT" -uimgaudit -pimgaudit \
        -N -B -e "SELECT 1" 2>&1) == 1 ]] ||
        die "cannot connect to MariaDB as imgaudit on 127.0.0.1:$MY_PORT (another server on that port?)"
}

stop_mariadb() {
    my_running || return 0
    local pid
    pid=$(my_pid)
    log "stopping MariaDB"
    kill -TERM "$pid"
    local deadline=$((SECONDS + TIMEOUT))
    while proc_is "$pid" mariadbd mysqld; do
        ((SECONDS < deadline)) || die "MariaDB (pid $pid) did not stop within ${TIMEOUT}s (log: $MY_LOG)"
        sleep 0.2
    done
}

# -- commands ------------------------------------------------------------------------------------------

print_env() {
    echo "export IMGAUDIT_TEST_PG_URL=postgresql+psycopg://imgaudit@127.0.0.1:$PG_PORT/postgres"
    echo "export IMGAUDIT_TEST_MYSQL_URL=mysql+pymysql://imgaudit:imgaudit@127.0.0.1:$MY_PORT/mysql"
}

lock() {
    mkdir -p "$BASE"
    chmod 755 "$BASE"
    exec 9>"$BASE/.lock" # held until we exit; the servers started below must not inherit it (9>&-)
    flock -w "$((TIMEOUT * 3))" 9 || die "another dbs.sh is still working on $BASE"
}

case "${1:-}" in
start)
    lock
    install_packages
    started=$SECONDS
    start_pg
    start_mariadb
    log "ready in $((SECONDS - started))s: PostgreSQL 127.0.0.1:$PG_PORT, MariaDB 127.0.0.1:$MY_PORT ($BASE)"
    ;;
stop)
    [[ -d $BASE ]] || exit 0
    lock
    stop_pg
    stop_mariadb
    ;;
restart-pg)
    # For tests of database outages: PostgreSQL goes away (fast shutdown drops every connection) and
    # comes back after ${2:-1} seconds with its data intact.
    lock
    stop_pg
    sleep "${2:-1}"
    start_pg
    ;;
status)
    rc=0
    if pg_running; then
        echo "PostgreSQL: running on 127.0.0.1:$PG_PORT"
    else
        echo "PostgreSQL: stopped"
        rc=3
    fi
    if my_running; then
        echo "MariaDB: running on 127.0.0.1:$MY_PORT"
    else
        echo "MariaDB: stopped"
        rc=3
    fi
    exit $rc
    ;;
env)
    print_env
    ;;
*)
    echo "usage: $0 start|stop|restart-pg [SECONDS]|status|env" >&2
    exit 2
    ;;
esac
