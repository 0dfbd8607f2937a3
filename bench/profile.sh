#!/usr/bin/env bash
# Profile fieldseal under the benchmark's load: perf record (cpu-clock, call
# graphs) of the proxy process while wrk drives one route.
#
#   bench/profile.sh [sealed|plain] [seconds]
#
# Needs a run directory from bench/load.sh (configs, certificate, key, backend
# answer): the newest bench/out/run-*/ is used, or RUN=... . Writes
# perf.data and the flat and caller reports next to it, prints the top entries.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
ROUTE=${1:-sealed}
SECS=${2:-10}
CONNS=${CONNS:-64}
RUN=${RUN:-$(ls -d "$ROOT"/bench/out/run-* 2>/dev/null | tail -1)}
[ -n "$RUN" ] && [ -f "$RUN/fieldseal.yaml" ] || { echo "run bench/load.sh first" >&2; exit 1; }
FIELDSEAL=${FIELDSEAL:-$ROOT/target/release/fieldseal}
command -v perf >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y linux-perf >/dev/null
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port() { perl -ne "print \$1 if /$1.*127\\.0\\.0\\.1:(\\d+)/" "$2" | head -c 5; }
FPORT=$(port 'listen:' "$RUN/fieldseal.yaml")
BPORT=$(port 'url:' "$RUN/fieldseal.yaml")
up() { local i; for i in $(seq 150); do curl -sk -o /dev/null --max-time 1 "$1" && return 0; sleep 0.1; done; echo "$1 did not come up" >&2; exit 1; }

nginx -e "$RUN/nginx-backend.startup.log" -p "$RUN" -c "$RUN/nginx-backend.conf" &
PIDS+=($!)
up "http://127.0.0.1:$BPORT/"
TOKIO_WORKER_THREADS=${WORKERS:-$(nproc)} "$FIELDSEAL" run --config "$RUN/fieldseal.yaml" >"$RUN/fieldseal-profile.log" 2>&1 &
FPID=$!
PIDS+=("$FPID")
up "https://127.0.0.1:$FPORT/plain"

URL="https://127.0.0.1:$FPORT/$ROUTE"
BENCH_BODY=$ROOT/bench/request.json wrk -t2 -c"$CONNS" -d$((SECS + 4))s -s "$ROOT/bench/wrk-post.lua" "$URL" >"$RUN/wrk-profile-$ROUTE.txt" 2>&1 &
PIDS+=($!)
sleep 2
DATA=$RUN/perf-$ROUTE.data
perf record -q -e cpu-clock -F "${FREQ:-499}" --call-graph "${CALLGRAPH:-dwarf,16384}" -p "$FPID" -o "$DATA" -- sleep "$SECS" 2>/dev/null
wait "${PIDS[-1]}" || true
perf report -i "$DATA" --no-children --percent-limit 0.7 --stdio --sort symbol -g none 2>/dev/null >"$RUN/perf-$ROUTE-self.txt"
perf report -i "$DATA" --children --percent-limit 2 --stdio --sort symbol -g none 2>/dev/null >"$RUN/perf-$ROUTE-children.txt"
echo "== $URL: $(grep -o 'requests=[0-9]*' "$RUN/wrk-profile-$ROUTE.txt") in $((SECS + 4))s"
echo "== self time, top entries ($RUN/perf-$ROUTE-self.txt)"
tidy() { grep -v '^#' "$1" | grep -v '^$' | sed 's/  *-  *- *$//; s/ *$//' | cut -c1-220; }
tidy "$RUN/perf-$ROUTE-self.txt" | head -40
echo "== inclusive (children) time ($RUN/perf-$ROUTE-children.txt)"
tidy "$RUN/perf-$ROUTE-children.txt" | grep -v '\[k\]' | head -70
