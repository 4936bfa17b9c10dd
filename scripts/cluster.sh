#!/usr/bin/env bash
# A local cluster for trials (SPEC §12, docs/DEPLOYMENT.md): N runsignal
# nodes on loopback, all on this machine's PostgreSQL (a schema of their own)
# and Redis, with messaging.transport=redis and FirstSignal.Cache.Backend=redis,
# behind nginx as a plain round-robin load balancer (no sticky sessions).
#
#   scripts/cluster.sh 3          # start 3 nodes + nginx, print the balancer's URL
#   scripts/cluster.sh stop       # stop them all (SIGTERM, then SIGKILL after 20 s)
#   scripts/cluster.sh status     # what runs, and where
#
# Environment (all optional):
#   RUNSIGNAL_CLUSTER_DATABASE_URL  PostgreSQL server    (postgres://postgres@127.0.0.1:5432/test)
#   RUNSIGNAL_CLUSTER_SCHEMA        schema of the nodes  (runsignal_cluster; created if missing, kept on stop)
#   RUNSIGNAL_CLUSTER_REDIS_URL     Redis                (redis://127.0.0.1:6379)
#   RUNSIGNAL_CLUSTER_PORT          the balancer's port  (8080; the nodes take the next N ports; 0: free ports)
#   RUNSIGNAL_CLUSTER_DIR           pid files and logs   (.cluster/ in the repository, gitignored)
#   RUNSIGNAL_BIN                   the binary           (else `cargo build`: the debug binary)
# Any other RUNSIGNAL__Section__Key variable reaches every node unchanged.
#
# Built-in packs (`demo`) run on every node: the executor cannot be switched
# off by configuration, and the store's lease decides which node runs a job,
# so each runs once. But start-up recovery still assumes one server per
# database: a node that starts ends the built-in leases the others hold.
# This script therefore starts and stops all nodes together; do not restart
# one node alone while built-in jobs run (ADR 0035).
#
# Needs bash, curl, python3, psql and nginx (Debian package nginx-light;
# installed with apt-get when missing and we may). Exit 0 when all is up.
set -euo pipefail

cd "$(dirname "$0")/.."                      # repo root: config/packs/
ROOT="$PWD"
DIR="${RUNSIGNAL_CLUSTER_DIR:-$ROOT/.cluster}"
DB="${RUNSIGNAL_CLUSTER_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}"
SCHEMA="${RUNSIGNAL_CLUSTER_SCHEMA:-runsignal_cluster}"
REDIS="${RUNSIGNAL_CLUSTER_REDIS_URL:-redis://127.0.0.1:6379}"
LB_PORT="${RUNSIGNAL_CLUSTER_PORT:-8080}"
STOP_WAIT=20                                 # > Server.ShutdownTimeoutSeconds (10)

say() { echo "cluster: $*"; }
die() { echo "cluster: $*" >&2; exit 1; }

# running PID: the process exists and has not exited (a zombie whose parent
# never reaps it counts as gone).
running() {
  kill -0 "$1" 2>/dev/null || return 1
  [[ -r "/proc/$1/stat" ]] || return 0
  [[ "$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)" != Z ]]
}

# alive PIDFILE: the recorded process still runs and is ours (runsignal or
# nginx), not another that reused the pid.
alive() {
  local pid
  pid="$(cat "$1" 2>/dev/null)" || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] && running "$pid" || return 1
  [[ -r "/proc/$pid/cmdline" ]] || return 0
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -Eq 'runsignal|nginx'
}

# The pid files in $DIR: the balancer's first, then the nodes'.
pidfiles() {
  local f
  for f in "$DIR"/nginx.pid "$DIR"/node*.pid; do [[ -e "$f" ]] && echo "$f"; done
  return 0
}

# Stop every process with a pid file in $DIR: the balancer first (no new
# requests), then the nodes (SIGTERM ends their streams first), each given
# $STOP_WAIT seconds before SIGKILL.
stop_all() {
  local f pid stopped=0 files
  mapfile -t files < <(pidfiles)
  for f in "${files[@]}"; do
    if alive "$f"; then
      pid="$(cat "$f")"
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq $((STOP_WAIT * 10))); do running "$pid" || break; sleep 0.1; done
      if running "$pid"; then
        say "$(basename "$f" .pid) (pid $pid) did not stop in ${STOP_WAIT}s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
      fi
      say "stopped $(basename "$f" .pid) (pid $pid)"
      stopped=$((stopped + 1))
    fi
    rm -f "$f"
  done
  [[ $stopped -gt 0 ]] || say "nothing was running (in $DIR)"
}

status() {
  local f any=0 files
  mapfile -t files < <(pidfiles)
  for f in "${files[@]}"; do
    if alive "$f"; then echo "$(basename "$f" .pid): pid $(cat "$f")"; any=1
    else echo "$(basename "$f" .pid): not running (stale pid file)"; fi
  done
  [[ -f "$DIR/urls" ]] && [[ $any -eq 1 ]] && cat "$DIR/urls"
  [[ $any -eq 1 ]] || { say "not running"; return 1; }
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# wait_ready URL SECONDS: until /readyz answers 200; prints its status.
wait_ready() {
  local body
  for _ in $(seq $(($2 * 10))); do
    if body="$(curl -sf "$1/readyz" 2>/dev/null)"; then
      python3 -c 'import json,sys; print(json.loads(sys.argv[1]).get("status","?"))' "$body"
      return 0
    fi
    sleep 0.1
  done
  return 1
}

find_nginx() {
  command -v nginx 2>/dev/null && return 0
  [[ -x /usr/sbin/nginx ]] && { echo /usr/sbin/nginx; return 0; }
  return 1
}

install_nginx() {
  command -v apt-get >/dev/null || return 1
  local sudo=()
  if [[ "$(id -u)" != 0 ]]; then sudo -n true 2>/dev/null || return 1; sudo=(sudo -n); fi
  say "installing nginx-light with apt-get"
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq nginx-light >/dev/null \
    || { "${sudo[@]}" apt-get update -qq >/dev/null \
         && DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq nginx-light >/dev/null; }
}

start() {
  local n="$1" f
  [[ "$n" =~ ^[0-9]+$ ]] && ((n >= 1 && n <= 32)) || die "N must be 1..32, got '$n'"
  [[ "$SCHEMA" =~ ^[a-z_][a-z0-9_]{0,62}$ ]] || die "RUNSIGNAL_CLUSTER_SCHEMA must be a plain lower-case identifier"
  [[ "$LB_PORT" =~ ^[0-9]+$ ]] || die "RUNSIGNAL_CLUSTER_PORT must be a port number"
  mkdir -p "$DIR"
  local files
  mapfile -t files < <(pidfiles)
  for f in "${files[@]}"; do
    alive "$f" && die "already running ($(basename "$f" .pid), pid $(cat "$f"), in $DIR): scripts/cluster.sh stop first"
    rm -f "$f"                               # stale: its process is gone
  done
  command -v psql >/dev/null || die "psql is needed to create the schema (Debian: postgresql-client)"
  local nginx
  nginx="$(find_nginx)" || { install_nginx && nginx="$(find_nginx)"; } \
    || die "nginx is not installed and could not be (Debian: apt-get install nginx-light)"

  # The binary: the debug build of `cargo build` unless RUNSIGNAL_BIN names one.
  local bin
  if [[ -n "${RUNSIGNAL_BIN:-}" ]]; then bin="$RUNSIGNAL_BIN"; else
    cargo build --quiet --bin runsignal
    bin="${CARGO_TARGET_DIR:-$ROOT/target}/debug/runsignal"
  fi
  [[ -x "$bin" ]] || die "no runsignal binary at $bin"

  # The database: a schema of its own, migrated once before any node starts.
  psql "$DB" -v ON_ERROR_STOP=1 -qc "SET client_min_messages = warning; CREATE SCHEMA IF NOT EXISTS $SCHEMA" >/dev/null \
    || die "cannot create schema $SCHEMA on $DB (is PostgreSQL running?)"
  local sep='?'; [[ "$DB" == *\?* ]] && sep='&'
  local url="${DB}${sep}options=-c%20search_path%3D${SCHEMA}&application_name=${SCHEMA}"
  RUNSIGNAL__Database__Url="$url" "$bin" migrate >"$DIR/migrate.log" 2>&1 \
    || { cat "$DIR/migrate.log" >&2; die "migrating schema $SCHEMA failed"; }

  # Ports: the balancer's, then one per node.
  local ports=() i
  if [[ "$LB_PORT" == 0 ]]; then
    LB_PORT="$(free_port)"
    for i in $(seq "$n"); do ports+=("$(free_port)"); done
  else
    for i in $(seq "$n"); do ports+=($((LB_PORT + i))); done
  fi

  # From here on, a failure stops whatever was started.
  trap 'echo "cluster: start failed; stopping what was started" >&2; stop_all >&2' ERR
  for i in $(seq "$n"); do
    mkdir -p "$DIR/node$i"
    RUNSIGNAL__Server__Bind="127.0.0.1:${ports[$((i - 1))]}" \
    RUNSIGNAL__Database__Url="$url" \
    RUNSIGNAL__messaging__transport=redis \
    RUNSIGNAL__Redis__Url="$REDIS" \
    RUNSIGNAL__FirstSignal__Cache__Backend=redis \
    RUNSIGNAL__FirstSignal__Cache__KeyPrefix="runsignal:${SCHEMA}:" \
    RUNSIGNAL__Executor__WorkspaceDir="$DIR/node$i/workspaces" \
    RUNSIGNAL__Artifacts__Dir="$DIR/artifacts" \
      "$bin" </dev/null >"$DIR/node$i.log" 2>&1 &
    echo $! >"$DIR/node$i.pid"
  done
  local status
  for i in $(seq "$n"); do
    status="$(wait_ready "http://127.0.0.1:${ports[$((i - 1))]}" 60)" || {
      tail -n 20 "$DIR/node$i.log" >&2; false; }
    [[ "$status" == ready ]] || say "node$i is $status (is Redis at $REDIS running?)"
  done

  # The balancer: round robin, no stickiness; streams unbuffered, long
  # timeouts, WebSocket upgrades passed on.
  mkdir -p "$DIR/nginx/tmp"
  {
    echo "worker_processes 1;"
    echo "pid \"$DIR/nginx.pid\";"
    echo "error_log \"$DIR/nginx/error.log\" warn;"
    echo "events { worker_connections 4096; }"
    echo "http {"
    echo "  access_log \"$DIR/nginx/access.log\";"
    for t in client_body proxy fastcgi uwsgi scgi; do echo "  ${t}_temp_path \"$DIR/nginx/tmp/$t\";"; done
    echo "  map \$http_upgrade \$connection_upgrade { default upgrade; '' ''; }"
    echo "  upstream runsignal {"
    for p in "${ports[@]}"; do echo "    server 127.0.0.1:$p;"; done
    echo "    keepalive 32;"
    echo "  }"
    cat <<'NGINX'
  server {
NGINX
    echo "    listen 127.0.0.1:$LB_PORT;"
    cat <<'NGINX'
    # runsignal answers oversized bodies itself (413 problem+json).
    client_max_body_size 0;
    location / {
      proxy_pass http://runsignal;
      proxy_http_version 1.1;
      proxy_set_header Host $http_host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      # SSE: pass every event on at once; streams live up to
      # Streams.MaxDurationSeconds (3600) with a heartbeat every 15 s.
      proxy_buffering off;
      proxy_request_buffering off;
      proxy_read_timeout 3700s;
      proxy_send_timeout 3700s;
      # Which node answered (for trials; no client needs it).
      add_header X-Upstream $upstream_addr always;
    }
  }
}
NGINX
  } >"$DIR/nginx/nginx.conf"
  "$nginx" -p "$DIR/nginx" -e "$DIR/nginx/error.log" -c "$DIR/nginx/nginx.conf" \
    </dev/null >>"$DIR/nginx/error.log" 2>&1 || { cat "$DIR/nginx/error.log" >&2 || true; false; }
  local lb="http://127.0.0.1:$LB_PORT"
  status="$(wait_ready "$lb" 20)" || { cat "$DIR/nginx/error.log" >&2 || true; false; }
  trap - ERR

  {
    echo "load balancer: $lb"
    for i in $(seq "$n"); do echo "node$i: http://127.0.0.1:${ports[$((i - 1))]} (log $DIR/node$i.log)"; done
  } >"$DIR/urls"
  say "$n node(s) on PostgreSQL schema $SCHEMA and Redis $REDIS, binary $bin"
  cat "$DIR/urls"
  echo "stop with: scripts/cluster.sh stop"
}

case "${1:-}" in
  stop) stop_all ;;
  status) status ;;
  ''|-h|--help) sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//'; [[ -n "${1:-}" ]] ;;
  *) start "$1" ;;
esac
