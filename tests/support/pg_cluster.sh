#!/usr/bin/env bash
# Throwaway PostgreSQL cluster for tests and local runs.
#
#   pg_cluster.sh init DIR    initdb (once) and pick a free loopback port
#                             without starting; prints the port on stdout
#   pg_cluster.sh start DIR [-c NAME=VALUE ...]
#                             initdb (once) and start on a free loopback port
#                             (the one init picked, if any); prints the port.
#                             Server settings given after DIR win over the
#                             defaults below
#   pg_cluster.sh start-replica PRIMARY_DIR DIR [-c NAME=VALUE ...]
#                             a streaming replica of the running cluster in
#                             PRIMARY_DIR: pg_basebackup (once) through its
#                             own replication slot, then start as `start`
#                             does; prints the port. The replica's settings
#                             that PostgreSQL wants at least as large as the
#                             primary's (max_connections, ...) must be given
#                             again when the primary's were raised
#   pg_cluster.sh stop DIR    fast shutdown (a replica too)
#   pg_cluster.sh restart DIR fast restart on the same port
#   pg_cluster.sh port DIR    the port of a running cluster
#   pg_cluster.sh ssl DIR     turn TLS on in a running cluster, with a
#                             self-signed certificate (clients can then ask
#                             for sslmode=require)
#
# A stopped cluster started again keeps its port when it is still free. init
# lets a test configure a server for a database that does not exist yet.
#
# PostgreSQL refuses to run as root, so as root the cluster belongs to the
# `postgres` system user (created by Debian's postgresql package).
set -euo pipefail

usage="usage: pg_cluster.sh init|start|stop|restart|port|ssl DIR, or start-replica PRIMARY_DIR DIR"
cmd=${1:?$usage}
if [[ $cmd == start-replica ]]; then
  primary=$(realpath -m "${2:?$usage}")
  shift
fi
dir=$(realpath -m "${2:?$usage}")
bin=$(pg_config --bindir 2>/dev/null || true)
if [[ ! -x "$bin/initdb" ]]; then
  bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
fi
[[ -x "$bin/initdb" ]] || { echo "pg_cluster: PostgreSQL server binaries not found" >&2; exit 1; }

as_owner() {
  if [[ $(id -u) == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

make_dir() {
  mkdir -p "$dir"
  if [[ $(id -u) == 0 ]]; then
    chown postgres:postgres "$dir"
    runuser -u postgres -- test -x "$dir" || {
      echo "pg_cluster: user postgres cannot reach $dir; make its parents traversable (chmod o+x)" >&2
      exit 1
    }
  fi
}

create() {
  make_dir
  if [[ ! -f "$dir/data/PG_VERSION" ]]; then
    # --auth=trust also trusts the replication lines of the sample pg_hba
    # (local and 127.0.0.1), which start-replica connects through; wal_level
    # (replica) and max_wal_senders (10) are enough by default.
    as_owner "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 \
      --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 ||
      { cat "$dir/initdb.log" >&2; exit 1; }
  fi
}

clone() {
  make_dir
  if [[ ! -f "$dir/data/PG_VERSION" ]]; then
    local primary_port
    primary_port=$(cat "$primary/port" 2>/dev/null) ||
      { echo "pg_cluster: no cluster started in $primary" >&2; exit 1; }
    # A slot of its own keeps the WAL a stopped or lagging replica still
    # needs on the primary. Named after DIR, as the replica has no port yet.
    local slot
    slot=replica_$(printf %s "$dir" | md5sum | cut -c1-16)
    # -R writes standby.signal and primary_conninfo; -X stream carries the
    # WAL written during the copy, so the replica is consistent on its own.
    # No fsync of the copy: the clusters run with fsync=off anyway, and it
    # costs seconds.
    as_owner "$bin/pg_basebackup" -h 127.0.0.1 -p "$primary_port" -U postgres \
      -D "$dir/data" -R -X stream -C -S "$slot" -c fast --no-sync \
      >"$dir/basebackup.log" 2>&1 ||
      { cat "$dir/basebackup.log" >&2; rm -rf "$dir/data"; exit 1; }
  fi
}

# Starts the cluster in $dir on a free loopback port (the one it had, if
# any), with server settings from the arguments over the defaults; prints
# the port.
launch() {
  local extra="$*" previous port
  # A port can be taken between the probe and the bind; try a few.
  previous=$(cat "$dir/port" 2>/dev/null || true)
  for _ in 1 2 3 4 5; do
    port=${previous:-$(free_port)}
    previous=""
    if as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200${extra:+ $extra}" \
        start >/dev/null 2>&1; then
      echo "$port" >"$dir/port"
      echo "$port"
      return 0
    fi
  done
  tail -20 "$dir/server.log" >&2
  exit 1
}

case $cmd in
  init)
    create
    [[ -f "$dir/port" ]] || free_port >"$dir/port"
    cat "$dir/port"
    ;;
  start)
    create
    launch "${@:3}"
    ;;
  start-replica)
    clone
    launch "${@:3}"
    ;;
  stop)
    if [[ -f "$dir/data/postmaster.pid" ]]; then
      as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
    fi
    ;;
  restart)
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -m fast -w -t 60 restart >/dev/null
    ;;
  port)
    cat "$dir/port"
    ;;
  ssl)
    # PostgreSQL wants the key owned by its user and private; ssl can be
    # switched on with a reload.
    as_owner openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
      -nodes -days 2 -subj /CN=127.0.0.1 -keyout "$dir/data/server.key" \
      -out "$dir/data/server.crt" >/dev/null 2>&1
    as_owner chmod 600 "$dir/data/server.key"
    as_owner "$bin/psql" -X -q -h "$dir" -p "$(cat "$dir/port")" -U postgres \
      -d postgres -c "ALTER SYSTEM SET ssl = on" -c "SELECT pg_reload_conf()" >/dev/null
    ;;
  *)
    echo "pg_cluster: unknown command $cmd" >&2
    exit 2
    ;;
esac
