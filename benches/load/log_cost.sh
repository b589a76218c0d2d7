#!/usr/bin/env bash
# What tollgate's access log costs per request (BENCHMARKS.md, "The access log").
#
#   benches/load/log_cost.sh [--rounds N] [--duration S] [BINARY...]
#
# Starts a static upstream (nginx returning a small JSON body) and, for each BINARY (default:
# the release build, built first), tollgate with one open route in front of it, three ways:
# the access log off (--log-level warn), JSON lines into a pipe (read by cat), and JSON lines
# into a file. wrk (2 threads, 64 connections) loads each in turn, round after round, and the
# script prints the user and system CPU time tollgate used per request (from /proc/PID/stat).
# Pass two binaries to compare builds; runs alternate between them. Needs nginx, wrk and curl
# (see run.sh). Everything it starts is stopped and its temporary directory removed at the end.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
rounds=2 duration=8 bins=()
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) rounds=$2; shift ;;
        --duration) duration=$2; shift ;;
        -h|--help) awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"; exit 0 ;;
        *) bins+=("$1") ;;
    esac
    shift
done
if [ ${#bins[@]} = 0 ]; then
    (cd "$repo" && cargo build --release --quiet)
    bins=("${CARGO_TARGET_DIR:-$repo/target}/release/tollgate")
fi
PATH=$PATH:/usr/sbin

tmp=$(mktemp -d "${TMPDIR:-/tmp}/tollgate-logcost.XXXXXX")
upstream_pid=""
cleanup() {
    pkill -TERM -f "$tmp/gateway.yaml" 2>/dev/null || true
    [ -z "$upstream_pid" ] || { kill -TERM "$upstream_pid" 2>/dev/null || true; wait "$upstream_pid" 2>/dev/null || true; }
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
up=$(free_port) gw=$(free_port) admin=$(free_port)
cat >"$tmp/upstream.conf" <<EOF
worker_processes 1;
pid $tmp/upstream.pid;
error_log $tmp/upstream.log;
events { worker_connections 1024; }
http {
  access_log off;
  server { listen 127.0.0.1:$up; keepalive_requests 1000000;
           location / { default_type application/json; return 200 '{"ok":true}'; } }
}
EOF
cat >"$tmp/gateway.yaml" <<EOF
listeners: [{ bind: "127.0.0.1:$gw" }]
admin: { bind: "127.0.0.1:$admin" }
upstreams:
  app: { targets: ["http://127.0.0.1:$up"] }
routes:
  - { route: "ANY /{proxy+}", upstream: app }
EOF
nginx -c "$tmp/upstream.conf" -g 'daemon off;' &
upstream_pid=$!

tick=$(getconf CLK_TCK)
measure() { # binary mode
    local bin=$1 mode=$2 pid u0 s0 u1 s1 n
    case "$mode" in
        off) "$bin" run -c "$tmp/gateway.yaml" --log-level warn 2>"$tmp/log" & ;;
        pipe) "$bin" run -c "$tmp/gateway.yaml" --log-format json 2> >(cat >/dev/null) & ;;
        file) "$bin" run -c "$tmp/gateway.yaml" --log-format json 2>"$tmp/log" & ;;
    esac
    pid=$!
    for _ in $(seq 1 100); do
        curl -s -o /dev/null "http://127.0.0.1:$gw/x" && break
        sleep 0.1
    done
    wrk -t2 -c64 -d2s "http://127.0.0.1:$gw/x" >/dev/null
    read -r u0 s0 < <(sed 's/^.*) //' "/proc/$pid/stat" | awk '{print $12, $13}')
    n=$(wrk -t2 -c64 -d"${duration}s" "http://127.0.0.1:$gw/x" | awk '/requests in/ {print $1}')
    read -r u1 s1 < <(sed 's/^.*) //' "/proc/$pid/stat" | awk '{print $12, $13}')
    kill -TERM "$pid"
    wait "$pid" 2>/dev/null || true
    awk -v b="$bin" -v m="$mode" -v n="$n" -v t="$tick" -v u=$((u1 - u0)) -v s=$((s1 - s0)) 'BEGIN {
        printf "%-40s %-4s %9d req  user %5.1f  sys %5.1f  total %5.1f µs/req\n",
            b, m, n, u / t * 1e6 / n, s / t * 1e6 / n, (u + s) / t * 1e6 / n }'
}
for _ in $(seq 1 "$rounds"); do
    for mode in off pipe file; do
        for bin in "${bins[@]}"; do
            measure "$bin" "$mode"
        done
    done
done
