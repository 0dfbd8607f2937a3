#!/usr/bin/env bash
# A/B two fieldseal binaries on one route under the benchmark's load, taking
# turns for ROUNDS rounds (so other load on the machine hits both alike).
#
#   bench/ab.sh BINARY_A BINARY_B [sealed|plain]
#   CONFIG_A=a.yaml CONFIG_B=b.yaml bench/ab.sh BIN BIN plain   # one binary, two configs
#
# Needs a run directory from bench/load.sh (newest bench/out/run-*/, or RUN=...).
# Prints req/s and CPU seconds per 10k requests for each binary: the proxy's,
# and what the backend and wrk spent per request with that proxy in front
# (a proxy that batches less makes them wake up more often).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
A=$1 B=$2 ROUTE=${3:-sealed}
ROUNDS=${ROUNDS:-3} DURATION=${DURATION:-5} WARMUP=${WARMUP:-2} CONNS=${CONNS:-64}
RUN=${RUN:-$(ls -d "$ROOT"/bench/out/run-* 2>/dev/null | tail -1)}
[ -f "$RUN/fieldseal.yaml" ] || { echo "run bench/load.sh first" >&2; exit 1; }
# Configs (default: the run's); a different one must keep the run's ports and
# sit in $RUN, as its relative paths (certificate, key) resolve there.
CONFIG_A=${CONFIG_A:-$RUN/fieldseal.yaml} CONFIG_B=${CONFIG_B:-$RUN/fieldseal.yaml}
HZ=$(getconf CLK_TCK)
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    PIDS=()
}
trap cleanup EXIT
trap 'exit 130' INT TERM
port() { perl -ne "print \$1 if /$1.*127\\.0\\.0\\.1:(\\d+)/" "$2" | head -c 5; }
FPORT=$(port 'listen:' "$RUN/fieldseal.yaml")
BPORT=$(port 'url:' "$RUN/fieldseal.yaml")
up() { local i; for i in $(seq 150); do curl -sk -o /dev/null --max-time 1 "$1" && return 0; sleep 0.1; done; echo "$1 did not come up" >&2; exit 1; }
ticks() { local t=0 p s; for p in "$@"; do s=$(cat "/proc/$p/stat" 2>/dev/null) || continue; s=${s##*) }; t=$((t + $(echo "$s" | awk '{print $12 + $13}'))); done; echo "$t"; }
child_ticks() { local s; s=$(cat "/proc/$$/stat"); s=${s##*) }; echo "$s" | awk '{print $14 + $15}'; }
busy() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9}' /proc/stat; }
field() { grep '^BENCH ' "$2" | tr ' ' '\n' | awk -F= -v k="$1" '$1 == k {print $2}'; }

nginx -e "$RUN/nginx-backend.startup.log" -p "$RUN" -c "$RUN/nginx-backend.conf" &
BACKEND=$!
PIDS+=("$BACKEND")
up "http://127.0.0.1:$BPORT/"
backend_pids() { echo "$BACKEND $(pgrep -P "$BACKEND" | tr '\n' ' ')"; }
declare -A N US T BT WT MB MT
for r in $(seq "$ROUNDS"); do
    for x in A B; do
        bin=$A cfg=$CONFIG_A; [ "$x" = B ] && bin=$B cfg=$CONFIG_B
        TOKIO_WORKER_THREADS=${WORKERS:-$(nproc)} "$bin" run --config "$cfg" >"$RUN/fieldseal-ab-$x.log" 2>&1 &
        pid=$!
        up "https://127.0.0.1:$FPORT/plain"
        BENCH_BODY=$ROOT/bench/request.json wrk -t2 -c"$CONNS" -d"$WARMUP"s -s "$ROOT/bench/wrk-post.lua" "https://127.0.0.1:$FPORT/$ROUTE" >/dev/null 2>&1
        # shellcheck disable=SC2046
        t0=$(ticks "$pid"); b0=$(ticks $(backend_pids)); w0=$(child_ticks); read -r m0 mt0 < <(busy)
        BENCH_BODY=$ROOT/bench/request.json wrk -t2 -c"$CONNS" -d"$DURATION"s -s "$ROOT/bench/wrk-post.lua" "https://127.0.0.1:$FPORT/$ROUTE" >"$RUN/wrk-ab-$x-$r.txt" 2>&1
        # shellcheck disable=SC2046
        t1=$(ticks "$pid"); b1=$(ticks $(backend_pids)); w1=$(child_ticks); read -r m1 mt1 < <(busy)
        kill -TERM "$pid"; wait "$pid" || true
        n=$(field requests "$RUN/wrk-ab-$x-$r.txt"); us=$(field duration_us "$RUN/wrk-ab-$x-$r.txt")
        N[$x]=$(( ${N[$x]:-0} + n )); US[$x]=$(( ${US[$x]:-0} + us )); T[$x]=$(( ${T[$x]:-0} + t1 - t0 ))
        BT[$x]=$(( ${BT[$x]:-0} + b1 - b0 )); WT[$x]=$(( ${WT[$x]:-0} + w1 - w0 )); MB[$x]=$(( ${MB[$x]:-0} + m1 - m0 )); MT[$x]=$(( ${MT[$x]:-0} + mt1 - mt0 ))
        echo "round $r $x: $(awk -v n="$n" -v us="$us" 'BEGIN {printf "%.0f", n / (us / 1e6)}') req/s, $(awk -v d=$((t1 - t0)) -v hz="$HZ" -v n="$n" 'BEGIN {printf "%.3f", d / hz / n * 10000}') CPU s / 10k req"
    done
done
for x in A B; do
    bin=$A; [ "$x" = B ] && bin=$B
    echo "$x ($bin) /$ROUTE: $(awk -v n="${N[$x]}" -v us="${US[$x]}" 'BEGIN {printf "%.0f", n / (us / 1e6)}') req/s, $(awk -v d="${T[$x]}" -v hz="$HZ" -v n="${N[$x]}" 'BEGIN {printf "%.3f", d / hz / n * 10000}') CPU s / 10k req; backend $(awk -v d="${BT[$x]}" -v hz="$HZ" -v n="${N[$x]}" 'BEGIN {printf "%.3f", d / hz / n * 10000}'), wrk $(awk -v d="${WT[$x]}" -v hz="$HZ" -v n="${N[$x]}" 'BEGIN {printf "%.3f", d / hz / n * 10000}') s / 10k req; other processes $(awk -v b="${MB[$x]}" -v t="${MT[$x]}" -v p="${T[$x]}" -v bt="${BT[$x]}" -v w="${WT[$x]}" -v c="$(nproc)" 'BEGIN {o = b - p - bt - w; if (o < 0) o = 0; printf "%.2f", t ? o / (t / c) : 0}') cores"
done
