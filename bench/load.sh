#!/usr/bin/env bash
# Side-by-side load benchmark: fieldseal vs nginx and HAProxy as TLS-terminating
# reverse proxies in front of the same backend, in one run on one machine.
#
#   bench/load.sh            # from the repository root (or anywhere: it cds there)
#
# Cases (same 2 KB JSON POST, keep-alive connections):
#   HTTP/1.1, load tool wrk:
#   a  backend direct (plain HTTP: no proxy, no TLS)
#   b  nginx, TLS, passing through
#   c  fieldseal, TLS, passing through            (route "plain")
#   d  fieldseal, TLS, encrypting 4 request fields and decrypting 4 response fields (route "sealed")
#   e  HAProxy, TLS, passing through (http-reuse always)
#   f  fieldseal, TLS, passing through with a local rate limit  (route "limited")
#   g  fieldseal, TLS, passing through with a Redis-shared rate limit (route "shared"):
#      one EVALSHA per request to a redis-server on this machine; f and g's limits
#      are too high to refuse anything, so (g) - (f) is the cost of the Redis stage
#   j  fieldseal, TLS, encrypting 4 request fields under the deployment key, with a verified JWT (route "jwt-deployment")
#   k  the same with key_scope: subject (route "jwt-subject"): (k) / (j) is the cost of per-subject keys, warm cache
#   HTTP/2 (TLS, ALPN h2), load tool h2load; the upstream side stays HTTP/1.1:
#   b2 nginx, c2 fieldseal passing through, d2 fieldseal encrypting + decrypting, e2 HAProxy
# All cases take turns for ROUNDS rounds (noise on a shared machine hits all alike).
# Then: p50/p99 of the HTTP/1.1 cases at a fixed rate of half of (RATE_OF)'s peak
# (h2load --h1 --rps; by default half of nginx's peak), idle RSS, and RSS holding
# HOLD_CONNS keep-alive TLS connections (fresh processes).
#
# Knobs (environment): ROUNDS=3 DURATION=5 WARMUP=2 CONNS=64 WRK_THREADS=2 WORKERS=$(nproc)
#   H2_CONNS=16 H2_STREAMS=4 H2_THREADS=2 (HTTP/2: connections x concurrent streams each)
#   BACKEND_WORKERS=1 HOLD_CONNS=1000 HOLD_DURATION=10 RATE_OF=b RATE_CLIENTS=16 RATE_ROUNDS=3 RATE_DURATION=5
#   H2=1 (0: leave out the HTTP/2 cases) HAPROXY=1 (0: leave out HAProxy) REDIS=1 (0: leave out (g))
#   BASE_PORT=18400 FIELDSEAL=target/release/fieldseal BUILD=0 (1: cargo build --release first)
#   MEMORY_ONLY=0 (1: only the idle and HOLD_CONNS memory measurements, fresh processes, no load rounds)
# Output: a Markdown report on stdout and in bench/out/results-<date>.md; the
# run's configs, certificates and logs in bench/out/run-<date>/.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-2}
CONNS=${CONNS:-64}
WRK_THREADS=${WRK_THREADS:-2}
H2_CONNS=${H2_CONNS:-16}
H2_STREAMS=${H2_STREAMS:-4}
H2_THREADS=${H2_THREADS:-2}
H2=${H2:-1}
HAPROXY=${HAPROXY:-1}
REDIS=${REDIS:-1}
WORKERS=${WORKERS:-$(nproc)}
BACKEND_WORKERS=${BACKEND_WORKERS:-1}
HOLD_CONNS=${HOLD_CONNS:-1000}
HOLD_DURATION=${HOLD_DURATION:-10}
RATE_OF=${RATE_OF:-b}
RATE_CLIENTS=${RATE_CLIENTS:-16}
RATE_ROUNDS=${RATE_ROUNDS:-3}
RATE_DURATION=${RATE_DURATION:-5}
BASE_PORT=${BASE_PORT:-18400}
FIELDSEAL=${FIELDSEAL:-$ROOT/target/release/fieldseal}
BUILD=${BUILD:-0}
MEMORY_ONLY=${MEMORY_ONLY:-0}

BACKEND_PORT=$BASE_PORT
NGINX_PORT=$((BASE_PORT + 1))
FIELDSEAL_PORT=$((BASE_PORT + 2))
ADMIN_PORT=$((BASE_PORT + 3))
HAPROXY_PORT=$((BASE_PORT + 4))
NGINX_H2_PORT=$((BASE_PORT + 5))
REDIS_PORT=$((BASE_PORT + 6))

STAMP=$(date +%Y-%m-%d-%H%M%S)
OUT=$ROOT/bench/out
RUN=$OUT/run-$STAMP
RESULTS=$OUT/results-$STAMP.md
BODY=$ROOT/bench/request.json
HZ=$(getconf CLK_TCK)
NCPU=$(nproc)

log() { printf '[bench %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------- processes
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do
        kill -TERM "$p" 2>/dev/null || true
    done
    for p in "${PIDS[@]}"; do
        wait "$p" 2>/dev/null || true
    done
    PIDS=()
}
trap cleanup EXIT
trap 'exit 130' INT TERM

stop() { # pid: stop one process we started and forget it
    local p=$1 q keep=()
    kill -TERM "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
    for q in "${PIDS[@]}"; do [ "$q" = "$p" ] || keep+=("$q"); done
    PIDS=("${keep[@]+"${keep[@]}"}")
}

forget() { # pid: a process that has ended by itself
    local q keep=()
    for q in "${PIDS[@]}"; do [ "$q" = "$1" ] || keep+=("$q"); done
    PIDS=("${keep[@]+"${keep[@]}"}")
}

wait_http() { # url [curl args]: until it answers at all, 15 s at most
    local url=$1; shift
    local i
    for i in $(seq 150); do
        if curl -sk -o /dev/null --max-time 1 "$@" "$url"; then return 0; fi
        sleep 0.1
    done
    die "$url did not come up"
}

# --------------------------------------------------------------- /proc reads
ticks() { # pids...: utime+stime summed, in clock ticks (threads included)
    local t=0 p s
    for p in "$@"; do
        s=$(cat "/proc/$p/stat" 2>/dev/null) || continue
        s=${s##*) }
        # after "pid (comm) ": field 1 is state, so utime/stime are 12/13
        t=$((t + $(echo "$s" | awk '{print $12 + $13}')))
    done
    echo "$t"
}
status_kb() { # field pids...: sum of a /proc/PID/status field, kB
    local f=$1; shift
    local t=0 p v
    for p in "$@"; do
        v=$(awk -v f="$f:" '$1 == f {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
        t=$((t + ${v:-0}))
    done
    echo "$t"
}
machine_busy() { # busy and total jiffies of the whole machine
    awk '/^cpu / {b = $2 + $3 + $4 + $7 + $8 + $9; t = b + $5 + $6; print b, t}' /proc/stat
}
child_ticks() { # CPU of this shell's reaped children (wrk, once it has exited), in ticks
    local s
    s=$(cat "/proc/$$/stat"); s=${s##*) }
    echo "$s" | awk '{print $14 + $15}'
}
nginx_workers() { pgrep -P "$1" | tr '\n' ' '; }
mb() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }

# -------------------------------------------------------------------- tools
missing=()
command -v nginx >/dev/null || missing+=(nginx)
command -v wrk >/dev/null || missing+=(wrk)
command -v h2load >/dev/null || missing+=(nghttp2-client)
command -v curl >/dev/null || missing+=(curl)
[ "$HAPROXY" = 1 ] && { command -v haproxy >/dev/null || missing+=(haproxy); }
[ "$REDIS" = 1 ] && { command -v redis-server >/dev/null || missing+=(redis-server); }
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]} (Debian packages)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}" >/dev/null \
        || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}" >/dev/null; } \
        || die "cannot install ${missing[*]}"
fi
if [ "$BUILD" = 1 ] || [ ! -x "$FIELDSEAL" ]; then
    log "building fieldseal (cargo build --release)"
    cargo build --release >&2
fi
[ -x "$FIELDSEAL" ] || die "no fieldseal binary at $FIELDSEAL"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
[ "$(ulimit -n)" -gt $((HOLD_CONNS * 2 + 100)) ] || die "open-file limit $(ulimit -n) too low for $HOLD_CONNS connections"

for p in $BACKEND_PORT $NGINX_PORT $FIELDSEAL_PORT $ADMIN_PORT $HAPROXY_PORT $NGINX_H2_PORT $REDIS_PORT; do
    if ss -Hltn "sport = :$p" | grep -q .; then die "port $p is in use (set BASE_PORT)"; fi
done

mkdir -p "$RUN/tmp-backend" "$RUN/tmp-proxy"
log "run directory: $RUN"

# ---------------------------------------------------------- certs, keys, body
"$FIELDSEAL" cert --self-signed --out "$RUN" --name localhost --name 127.0.0.1 >/dev/null
SEALED=1
if ! "$FIELDSEAL" keygen --out "$RUN/k1.key" >"$RUN/keygen.log" 2>&1; then
    SEALED=0
    log "WARNING: 'fieldseal keygen' failed ($(tail -1 "$RUN/keygen.log")): the crypto module is missing; case (d) is skipped"
fi

# The token of cases (j) and (k): HS256 under a secret made for this run.
b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
if [ "$SEALED" = 1 ]; then
    (umask 077; openssl rand -hex 32 >"$RUN/jwt.secret")
    NOW=$(date +%s)
    JWT_SIGNED="$(printf '{"alg":"HS256","typ":"JWT"}' | b64url).$(printf '{"iss":"fieldseal-bench","aud":"fieldseal-bench","sub":"bench-subject","iat":%d,"exp":%d}' "$NOW" $((NOW + 86400)) | b64url)"
    BENCH_TOKEN_VALUE="$JWT_SIGNED.$(printf '%s' "$JWT_SIGNED" | openssl dgst -sha256 -mac HMAC -macopt "key:$(tr -d '\n' <"$RUN/jwt.secret")" -binary | b64url)"
fi

render() { # template output: replace @NAME@ with $NAME
    perl -pe 's/\@([A-Z0-9_]+)\@/exists $ENV{$1} ? $ENV{$1} : die "unset template variable $1\n"/ge' "$1" >"$2"
}
cat "$RUN/server.crt" "$RUN/server.key" >"$RUN/server.pem" # HAProxy wants both in one file
chmod 600 "$RUN/server.pem"
export RUN BACKEND_PORT NGINX_PORT NGINX_H2_PORT FIELDSEAL_PORT ADMIN_PORT HAPROXY_PORT REDIS_PORT WORKERS BACKEND_WORKERS

cp "$ROOT/bench/fieldseal.yaml.in" "$RUN/fieldseal.yaml.in"
strip() { # block: drop the #BLOCK-BEGIN .. #BLOCK-END lines of the template
    perl -i -ne "print unless /^#$1-BEGIN/ .. /^#$1-END/" "$RUN/fieldseal.yaml.in"
}
[ "$SEALED" = 1 ] || strip SEALED
[ "$REDIS" = 1 ] || strip REDIS
render "$RUN/fieldseal.yaml.in" "$RUN/fieldseal.yaml"
if [ "$REDIS" = 1 ]; then
    # No persistence, loopback only: a cache for the buckets of case (g).
    mkdir -p "$RUN/redis"
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$RUN/redis" \
        >"$RUN/redis.log" 2>&1 &
    REDIS_PID=$!
    PIDS+=("$REDIS_PID")
fi
"$FIELDSEAL" check --config "$RUN/fieldseal.yaml" --load >&2 || die "fieldseal config rejected"

# The backend's one answer: the request document as the legacy system would
# store it, i.e. with the 4 fields sealed by `fieldseal encrypt` (same code as
# the proxy). Every case gets this body; only (d) decrypts it.
if [ "$SEALED" = 1 ]; then
    "$FIELDSEAL" encrypt --config "$RUN/fieldseal.yaml" --route sealed <"$BODY" >"$RUN/response.json" 2>"$RUN/encrypt.log"
    n=$(grep -o '"fs1:' "$RUN/response.json" | wc -l)
    [ "$n" = 4 ] || die "expected 4 envelopes in the backend's answer, found $n"
else
    cp "$BODY" "$RUN/response.json"
fi
RESPONSE=$(tr -d '\n' <"$RUN/response.json")
case $RESPONSE in *"'"* | *'$'* | *'\'*) die "response.json has a ' \$ or \\ that nginx's return string can't hold" ;; esac
export RESPONSE
render "$ROOT/bench/nginx-backend.conf.in" "$RUN/nginx-backend.conf"
render "$ROOT/bench/nginx-proxy.conf.in" "$RUN/nginx-proxy.conf"
nginx -t -q -e "$RUN/nginx-t.log" -p "$RUN" -c "$RUN/nginx-backend.conf" || die "backend nginx config: $(cat "$RUN/nginx-t.log")"
nginx -t -q -e "$RUN/nginx-t.log" -p "$RUN" -c "$RUN/nginx-proxy.conf" || die "proxy nginx config: $(cat "$RUN/nginx-t.log")"
if [ "$HAPROXY" = 1 ]; then
    render "$ROOT/bench/haproxy-proxy.cfg.in" "$RUN/haproxy-proxy.cfg"
    haproxy -c -q -f "$RUN/haproxy-proxy.cfg" >"$RUN/haproxy-c.log" 2>&1 || die "HAProxy config: $(cat "$RUN/haproxy-c.log")"
fi

start_backend() {
    nginx -e "$RUN/nginx-backend.startup.log" -p "$RUN" -c "$RUN/nginx-backend.conf" &
    BACKEND_PID=$!
    PIDS+=("$BACKEND_PID")
    wait_http "http://127.0.0.1:$BACKEND_PORT/"
}
start_nginx() {
    nginx -e "$RUN/nginx-proxy.startup.log" -p "$RUN" -c "$RUN/nginx-proxy.conf" &
    NGINX_PID=$!
    PIDS+=("$NGINX_PID")
    wait_http "https://127.0.0.1:$NGINX_PORT/"
    sleep 0.5
}
start_haproxy() {
    haproxy -db -f "$RUN/haproxy-proxy.cfg" >"$RUN/haproxy-$1.log" 2>&1 &
    HAPROXY_PID=$!
    PIDS+=("$HAPROXY_PID")
    wait_http "https://127.0.0.1:$HAPROXY_PORT/"
    sleep 0.5
}
start_fieldseal() { # tag
    TOKIO_WORKER_THREADS=$WORKERS "$FIELDSEAL" run --config "$RUN/fieldseal.yaml" \
        >"$RUN/fieldseal-$1.log" 2>&1 &
    FIELDSEAL_PID=$!
    PIDS+=("$FIELDSEAL_PID")
    wait_http "http://127.0.0.1:$ADMIN_PORT/readyz"
    wait_http "https://127.0.0.1:$FIELDSEAL_PORT/plain"
    sleep 0.5
}
metric() { # name{labels} -> value from fieldseal's admin /metrics (0 when absent)
    curl -s --max-time 2 "http://127.0.0.1:$ADMIN_PORT/metrics" \
        | awk -v m="$1" 'index($0, m) == 1 {v = $NF} END {print v + 0}'
}

# ---------------------------------------------------------------- load runs
wrk_run() { # url seconds conns threads outfile
    BENCH_BODY=$BODY wrk -t"$4" -c"$3" -d"$2"s --timeout 10s -s "$ROOT/bench/wrk-post.lua" "$1" >"$5" 2>&1 || true
    grep -q '^BENCH ' "$5" || die "wrk failed against $1: $(tail -3 "$5")"
}
h2_run() { # url seconds conns streams threads outfile: h2load over TLS with ALPN h2
    local url=$1 secs=$2 conns=$3 streams=$4 threads=$5 f=$6
    h2load -t "$threads" -c "$conns" -m "$streams" -D "$secs" \
        -H 'content-type: application/json' -H 'accept: application/json' -H 'user-agent: fieldseal-bench/h2load' \
        -d "$BODY" --log-file "$f.log" "$url" >"$f" 2>&1 || true
    grep -q '^finished in' "$f" || die "h2load failed against $url: $(tail -3 "$f")"
    grep -q 'Application protocol: h2' "$f" || die "h2load against $url did not negotiate h2: $(grep -i protocol "$f")"
}
h2_bench() { # outfile of h2_run: append a BENCH line in wrk-post.lua's format
    # (percentiles from h2load's per-request log), so both tools read alike.
    # Called after the CPU reads: sorting the log is not the load tool's work.
    local f=$1
    awk -F'\t' '{print $3}' "$f.log" | sort -n >"$f.sorted"
    perl -e '
        my ($out, $sorted) = @ARGV;
        open my $o, "<", $out or die; my $t = do { local $/; <$o> };
        my ($secs) = $t =~ /^finished in ([\d.]+)(m?s)/m or die "no duration";
        my $us = $t =~ /^finished in [\d.]+ms/m ? $secs * 1000 : $secs * 1e6;
        my ($done, $ok, $failed, $errored, $timeout) =
            $t =~ /^requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout/m or die "no counts";
        # non-2xx answers (h2load counts a status as soon as the headers are in)
        my ($s3, $s4, $s5) = $t =~ /^status codes: \d+ 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx/m or die "no status codes";
        open my $s, "<", $sorted or die; my @v = map { $_ + 0 } <$s>;
        my $pct = sub { my $r = @v * $_[0] / 100; my $i = int($r); $i++ if $i < $r; $i = 1 if $i < 1; @v ? $v[$i - 1] : 0 };
        printf "BENCH requests=%d duration_us=%d bytes=0 err_connect=0 err_read=%d err_write=0 err_timeout=%d err_status=%d p50_us=%d p90_us=%d p99_us=%d max_us=%d mean_us=0\n",
            $done, $us, $failed + $errored, $timeout, $s3 + $s4 + $s5, $pct->(50), $pct->(90), $pct->(99), @v ? $v[-1] : 0;
    ' "$f" "$f.sorted" >>"$f"
    rm -f "$f.sorted"
}
field() { # key file -> value from the BENCH line
    grep '^BENCH ' "$2" | tr ' ' '\n' | awk -F= -v k="$1" '$1 == k {print $2}'
}

declare -A R # results: R[case.key]
declare -A A # accumulators over rounds: A[case.key]
add() { A[$1]=$(( ${A[$1]:-0} + $2 )); }
load_run() { # case url seconds outfile: HTTP/2 cases (b2, c2, ...) with h2load, the others with wrk
    case $1 in
        *2) h2_run "$2" "$3" "$H2_CONNS" "$H2_STREAMS" "$H2_THREADS" "$4" ;;
        *) wrk_run "$2" "$3" "$CONNS" "$WRK_THREADS" "$4" ;;
    esac
}
measure() { # case url proxy-pid-function round
    local c=$1 url=$2 pidsf=$3 r=$4 f=$RUN/wrk-$1-r$4.txt how="$CONNS connections, $WRK_THREADS wrk threads"
    case $c in *2) f=$RUN/h2load-$c-r$r.txt how="h2load, $H2_CONNS connections x $H2_STREAMS streams, $H2_THREADS threads" ;; esac
    log "case $c, round $r/$ROUNDS: warm-up ${WARMUP}s, then ${DURATION}s, $how: $url"
    case $c in j | k) export BENCH_TOKEN=$BENCH_TOKEN_VALUE ;; *) unset BENCH_TOKEN ;; esac
    load_run "$c" "$url" "$WARMUP" "${f%.txt}-warmup.txt"
    local pp q b0 b1 p0 p1 m0 m1 w0 w1 e0=0 e1=0 d0=0 d1=0
    pp=$($pidsf)
    for q in $($pidsf hwm); do echo 5 >"/proc/$q/clear_refs" 2>/dev/null || true; done # VmHWM := VmRSS
    if [ "${c%2}" = d ]; then
        e0=$(metric 'fieldseal_fields_encrypted_total{route="sealed"}'); d0=$(metric 'fieldseal_fields_decrypted_total{route="sealed"}')
    fi
    # shellcheck disable=SC2086
    p0=$(ticks $pp); b0=$(ticks "$BACKEND_PID" $(nginx_workers "$BACKEND_PID")); m0=$(machine_busy); w0=$(child_ticks)
    load_run "$c" "$url" "$DURATION" "$f"
    # shellcheck disable=SC2086
    p1=$(ticks $pp); b1=$(ticks "$BACKEND_PID" $(nginx_workers "$BACKEND_PID")); m1=$(machine_busy); w1=$(child_ticks)
    case $c in *2) h2_bench "$f" ;; esac
    if [ "${c%2}" = d ]; then
        e1=$(metric 'fieldseal_fields_encrypted_total{route="sealed"}'); d1=$(metric 'fieldseal_fields_decrypted_total{route="sealed"}')
    fi
    local n us errs hwm=0
    [ -n "$pp" ] && hwm=$(status_kb VmHWM $($pidsf hwm))
    n=$(field requests "$f"); us=$(field duration_us "$f")
    errs=$(( $(field err_connect "$f") + $(field err_read "$f") + $(field err_write "$f") + $(field err_timeout "$f") + $(field err_status "$f") ))
    add "$c.n" "$n"; add "$c.us" "$us"; add "$c.errors" "$errs"
    add "$c.proxy" $((p1 - p0)); add "$c.backend" $((b1 - b0)); add "$c.wrk" $((w1 - w0))
    add "$c.busy" "$(echo "$m0 $m1" | awk '{print $3 - $1}')"; add "$c.total" "$(echo "$m0 $m1" | awk '{print $4 - $2}')"
    add "$c.enc" $((e1 - e0)); add "$c.dec" $((d1 - d0))
    [ "$hwm" -gt "${A[$c.hwm]:-0}" ] && A[$c.hwm]=$hwm
    A[$c.p50s]="${A[$c.p50s]:-} $(field p50_us "$f")"
    A[$c.p99s]="${A[$c.p99s]:-} $(field p99_us "$f")"
    A[$c.rpss]="${A[$c.rpss]:-} $(awk -v n="$n" -v us="$us" 'BEGIN {printf "%.0f", n / (us / 1e6)}')"
    [ "$errs" = 0 ] || log "WARNING: case $c: $errs errors (see $f)"
    log "case $c, round $r: $(awk -v n="$n" -v us="$us" 'BEGIN {printf "%.0f", n / (us / 1e6)}') req/s, p50 $(field p50_us "$f") us, p99 $(field p99_us "$f") us, errors $errs"
}
median_ms() { echo "$1" | tr ' ' '\n' | grep . | sort -n | awk '{v[NR] = $1} END {printf "%.2f", v[int((NR + 1) / 2)] / 1000}'; }
finalize() { # case: turn the accumulators into the reported figures
    local c=$1
    [ -n "${A[$c.n]:-}" ] || return 0
    local n=${A[$c.n]}
    R[$c.requests]=$n
    R[$c.errors]=${A[$c.errors]}
    R[$c.rps]=$(awk -v n="$n" -v us="${A[$c.us]}" 'BEGIN {printf "%.0f", n / (us / 1e6)}')
    R[$c.rounds]=$(echo "${A[$c.rpss]}" | sed 's/^ //; s/ /, /g')
    R[$c.p50]=$(median_ms "${A[$c.p50s]}")
    R[$c.p99]=$(median_ms "${A[$c.p99s]}")
    R[$c.cpu]=$(awk -v d="${A[$c.proxy]}" -v hz="$HZ" -v n="$n" 'BEGIN {printf "%.3f", n ? d / hz / n * 10000 : 0}')
    R[$c.bcpu]=$(awk -v d="${A[$c.backend]}" -v hz="$HZ" -v n="$n" 'BEGIN {printf "%.3f", n ? d / hz / n * 10000 : 0}')
    R[$c.busy]=$(awk -v b="${A[$c.busy]}" -v t="${A[$c.total]}" 'BEGIN {printf "%.0f", t ? 100 * b / t : 0}')
    [ "${A[$c.hwm]:-0}" -gt 0 ] && R[$c.hwm]=${A[$c.hwm]}
    # cores used during the measured runs by: proxy, backend, wrk, everything else on the machine
    R[$c.split]=$(awk -v p="${A[$c.proxy]}" -v b="${A[$c.backend]}" -v w="${A[$c.wrk]}" -v busy="${A[$c.busy]}" -v t="${A[$c.total]}" -v ncpu="$NCPU" 'BEGIN {
        wall = t / ncpu; o = busy - p - b - w; if (o < 0) o = 0
        printf "%.2f | %.2f | %.2f | %.2f", p / wall, b / wall, w / wall, o / wall}')
    log "case $c: ${R[$c.rps]} req/s (rounds: ${R[$c.rounds]}), p50 ${R[$c.p50]} ms, p99 ${R[$c.p99]} ms, proxy CPU ${R[$c.cpu]} s/10k"
}
# "pids_x": processes whose CPU counts; "pids_x hwm": processes whose peak RSS counts
pids_none() { echo; }
pids_nginx() { if [ "${1:-}" = hwm ]; then nginx_workers "$NGINX_PID"; else echo "$NGINX_PID $(nginx_workers "$NGINX_PID")"; fi; }
pids_fieldseal() { echo "$FIELDSEAL_PID"; }
pids_haproxy() { echo "$HAPROXY_PID"; }
hwm_nginx() { status_kb VmHWM $(nginx_workers "$NGINX_PID"); }
rss_nginx() { status_kb VmRSS $(nginx_workers "$NGINX_PID"); }

check_post() { # url expect-substring forbid-substring [curl args]
    local url=$1 want=$2 forbid=$3 out code
    shift 3
    out=$(curl -sk --max-time 5 -w '\n%{http_code}' -H 'Content-Type: application/json' --data-binary "@$BODY" "$@" "$url")
    code=${out##*$'\n'}
    [ "$code" = 200 ] || die "POST $url answered $code: ${out:0:300}"
    [[ $out == *"$want"* ]] || die "POST $url: answer lacks $want"
    if [ -n "$forbid" ] && [[ $out == *"$forbid"* ]]; then die "POST $url: answer still holds $forbid"; fi
}

# ------------------------------------------------------------------- go
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
log "load average before: $LOAD_BEFORE (on a shared machine, figures are only comparable within one run)"
start_backend
if [ "$MEMORY_ONLY" != 1 ]; then

start_nginx
R[b.idle]=$(rss_nginx)
start_fieldseal main
R[c.idle]=$(status_kb VmRSS "$FIELDSEAL_PID")
if [ "$HAPROXY" = 1 ]; then
    start_haproxy main
    R[e.idle]=$(status_kb VmRSS "$HAPROXY_PID")
fi
check_post "http://127.0.0.1:$BACKEND_PORT/sealed" '"ssn"' ''
check_post "https://127.0.0.1:$NGINX_PORT/plain" '"ssn"' ''
check_post "https://127.0.0.1:$FIELDSEAL_PORT/plain" '"ssn"' ''
[ "$HAPROXY" = 1 ] && check_post "https://127.0.0.1:$HAPROXY_PORT/plain" '"ssn"' ''
if [ "$H2" = 1 ]; then
    check_post "https://127.0.0.1:$NGINX_H2_PORT/plain" '"ssn"' '' --http2
    check_post "https://127.0.0.1:$FIELDSEAL_PORT/plain" '"ssn"' '' --http2
    [ "$HAPROXY" = 1 ] && check_post "https://127.0.0.1:$HAPROXY_PORT/plain" '"ssn"' '' --http2
fi
# (d) and (d2) run only when the crypto module is there; HAProxy and HTTP/2 can be left out.
CASES="a b c"
[ "$SEALED" = 1 ] && CASES="$CASES d"
[ "$HAPROXY" = 1 ] && CASES="$CASES e"
CASES="$CASES f"
[ "$REDIS" = 1 ] && CASES="$CASES g"
[ "$SEALED" = 1 ] && CASES="$CASES j k"
if [ "$H2" = 1 ]; then
    CASES="$CASES b2 c2"
    [ "$SEALED" = 1 ] && CASES="$CASES d2"
    [ "$HAPROXY" = 1 ] && CASES="$CASES e2"
fi
if [ "$SEALED" = 1 ]; then
    # the answer to the client holds the plaintext again, no envelope left
    check_post "https://127.0.0.1:$FIELDSEAL_PORT/sealed" '"ssn":"123-45-6789"' '"fs1:'
    [ "$H2" = 1 ] && check_post "https://127.0.0.1:$FIELDSEAL_PORT/sealed" '"ssn":"123-45-6789"' '"fs1:' --http2
fi

# The cases take turns, ROUNDS times, so that bursts of other load on a shared
# machine fall on all of them alike.
for round in $(seq "$ROUNDS"); do
    for c in $CASES; do
        case $c in
            a) measure a "http://127.0.0.1:$BACKEND_PORT/sealed" pids_none "$round" ;;
            b) measure b "https://127.0.0.1:$NGINX_PORT/plain" pids_nginx "$round" ;;
            c) measure c "https://127.0.0.1:$FIELDSEAL_PORT/plain" pids_fieldseal "$round" ;;
            d) measure d "https://127.0.0.1:$FIELDSEAL_PORT/sealed" pids_fieldseal "$round" ;;
            e) measure e "https://127.0.0.1:$HAPROXY_PORT/plain" pids_haproxy "$round" ;;
            f) measure f "https://127.0.0.1:$FIELDSEAL_PORT/limited" pids_fieldseal "$round" ;;
            g) measure g "https://127.0.0.1:$FIELDSEAL_PORT/shared" pids_fieldseal "$round" ;;
            j) measure j "https://127.0.0.1:$FIELDSEAL_PORT/jwt-deployment" pids_fieldseal "$round" ;;
            k) measure k "https://127.0.0.1:$FIELDSEAL_PORT/jwt-subject" pids_fieldseal "$round" ;;
            b2) measure b2 "https://127.0.0.1:$NGINX_H2_PORT/plain" pids_nginx "$round" ;;
            c2) measure c2 "https://127.0.0.1:$FIELDSEAL_PORT/plain" pids_fieldseal "$round" ;;
            d2) measure d2 "https://127.0.0.1:$FIELDSEAL_PORT/sealed" pids_fieldseal "$round" ;;
            e2) measure e2 "https://127.0.0.1:$HAPROXY_PORT/plain" pids_haproxy "$round" ;;
        esac
    done
done
for c in $CASES; do finalize "$c"; done
fields_check() { # case: what /metrics counted against the requests wrk or h2load completed
    [ -n "${R[$1.requests]:-}" ] || return 0
    R[$1.fields]="${A[$1.enc]} fields encrypted and ${A[$1.dec]} decrypted for the ${R[$1.requests]} measured requests ($(awk -v e="${A[$1.enc]}" -v d="${A[$1.dec]}" -v n="${R[$1.requests]}" 'BEGIN {printf "%.2f and %.2f", e / n, d / n}') per request)"
}
if [ "$SEALED" = 1 ]; then
    fields_check d
    fields_check d2
fi
sleep 2
R[c.idle_after]=$(status_kb VmRSS "$FIELDSEAL_PID")
# p99 at a fixed rate: half of RATE_OF's peak (nginx's by default; (c)'s when
# RATE_OF=d and there is no crypto), for every HTTP/1.1 case, against the
# processes warmed up by the rounds above.
RATE_CASE=$RATE_OF
[ "$RATE_CASE" = d ] && [ "$SEALED" != 1 ] && RATE_CASE=c
[ -n "${R[$RATE_CASE.rps]:-}" ] || die "RATE_OF=$RATE_OF: no such case in this run"
RATE=$(( ${R[$RATE_CASE.rps]} / 2 ))
PER_CLIENT=$(awk -v r="$RATE" -v c="$RATE_CLIENTS" 'BEGIN {printf "%.2f", r / c}')
pct() { # sorted-file count percentile -> ms (nearest rank)
    awk -v n="$2" -v p="$3" 'BEGIN {r = n * p / 100; i = int(r); if (i < r) i++; if (i < 1) i = 1} NR == i {printf "%.3f", $1 / 1000; exit}' "$1"
}
rate_run() { # tag url round: one h2load run, its per-request log appended to the case's pool
    local f=$RUN/h2load-$1-r$3.log
    h2load --h1 -t 1 -c "$RATE_CLIENTS" --rps "$PER_CLIENT" -D "$RATE_DURATION" --warm-up-time 2 \
        -H 'content-type: application/json' -d "$BODY" --log-file "$f" "$2" >"$RUN/h2load-$1-r$3.txt" 2>&1 \
        || die "h2load failed: $(tail -3 "$RUN/h2load-$1-r$3.txt")"
    # columns: start (us since epoch), status, us to end of response; only the
    # measured duration is logged (h2load leaves the warm-up out)
    cat "$f" >>"$RUN/h2load-$1.pool"
    log "fixed rate $1, round $3: $(wc -l <"$f") requests, p99 $(cut -f3 "$f" | sort -n | pct /dev/stdin "$(wc -l <"$f")" 99) ms"
}
rate_summary() { # tag
    local f=$RUN/h2load-$1.pool n
    n=$(wc -l <"$f")
    [ "$n" -gt 0 ] || die "h2load logged no requests for $1"
    cut -f3 "$f" | sort -n >"$f.sorted"
    R[$1.n]=$n
    R[$1.bad]=$(awk -F'\t' '$2 != 200' "$f" | wc -l)
    R[$1.rate]=$(awk -v n="$n" -v d=$((RATE_DURATION * RATE_ROUNDS)) 'BEGIN {printf "%.0f", n / d}')
    R[$1.p50]=$(pct "$f.sorted" "$n" 50)
    R[$1.p99]=$(pct "$f.sorted" "$n" 99)
    R[$1.p999]=$(pct "$f.sorted" "$n" 99.9)
    log "fixed rate $1: ${R[$1.rate]} req/s achieved, p50 ${R[$1.p50]} ms, p99 ${R[$1.p99]} ms"
}
log "fixed rate: $RATE req/s ($RATE_CLIENTS clients x $PER_CLIENT), $RATE_ROUNDS rounds of ${RATE_DURATION}s (+2s warm-up) per case, cases in turn"
RATE_TAGS="ra rb rc"
[ "$SEALED" = 1 ] && RATE_TAGS="$RATE_TAGS rd"
[ "$HAPROXY" = 1 ] && RATE_TAGS="$RATE_TAGS re"
for round in $(seq "$RATE_ROUNDS"); do
    for t in $RATE_TAGS; do
        case $t in
            ra) rate_run ra "http://127.0.0.1:$BACKEND_PORT/sealed" "$round" ;;
            rb) rate_run rb "https://127.0.0.1:$NGINX_PORT/plain" "$round" ;;
            rc) rate_run rc "https://127.0.0.1:$FIELDSEAL_PORT/plain" "$round" ;;
            rd) rate_run rd "https://127.0.0.1:$FIELDSEAL_PORT/sealed" "$round" ;;
            re) rate_run re "https://127.0.0.1:$HAPROXY_PORT/plain" "$round" ;;
        esac
    done
done
for t in $RATE_TAGS; do rate_summary "$t"; done
stop "$FIELDSEAL_PID"
stop "$NGINX_PID"
[ "$HAPROXY" = 1 ] && stop "$HAPROXY_PID"
fi # MEMORY_ONLY

# Memory holding HOLD_CONNS keep-alive TLS connections (fresh processes).
HOLD_PATH=/plain
[ "$SEALED" = 1 ] && HOLD_PATH=/sealed
log "memory: $HOLD_CONNS keep-alive TLS connections for ${HOLD_DURATION}s, fieldseal $HOLD_PATH, then nginx and HAProxy passing through"
start_fieldseal hold
R[f.idle]=$(status_kb VmRSS "$FIELDSEAL_PID")
[ "$MEMORY_ONLY" = 1 ] && R[c.idle]=${R[f.idle]}
BENCH_BODY=$BODY wrk -t"$WRK_THREADS" -c"$HOLD_CONNS" -d"$HOLD_DURATION"s --timeout 10s -s "$ROOT/bench/wrk-post.lua" \
    "https://127.0.0.1:$FIELDSEAL_PORT$HOLD_PATH" >"$RUN/wrk-hold-fieldseal.txt" 2>&1 &
WRK_PID=$!
PIDS+=("$WRK_PID")
sleep $(( HOLD_DURATION > 3 ? HOLD_DURATION - 2 : 1 ))
R[f.open]=$(metric fieldseal_open_connections)
wait "$WRK_PID" || true
forget "$WRK_PID"
R[f.hold]=$(status_kb VmHWM "$FIELDSEAL_PID")
R[f.hold_rps]=$(awk -v n="$(field requests "$RUN/wrk-hold-fieldseal.txt")" -v us="$(field duration_us "$RUN/wrk-hold-fieldseal.txt")" 'BEGIN {printf "%.0f", n / (us / 1e6)}')
R[f.hold_err]=$(( $(field err_connect "$RUN/wrk-hold-fieldseal.txt") + $(field err_status "$RUN/wrk-hold-fieldseal.txt") + $(field err_read "$RUN/wrk-hold-fieldseal.txt") + $(field err_timeout "$RUN/wrk-hold-fieldseal.txt") ))
sleep 2
R[f.after]=$(status_kb VmRSS "$FIELDSEAL_PID")
stop "$FIELDSEAL_PID"

start_nginx
[ "$MEMORY_ONLY" = 1 ] && R[b.idle]=$(rss_nginx)
BENCH_BODY=$BODY wrk -t"$WRK_THREADS" -c"$HOLD_CONNS" -d"$HOLD_DURATION"s --timeout 10s -s "$ROOT/bench/wrk-post.lua" \
    "https://127.0.0.1:$NGINX_PORT/plain" >"$RUN/wrk-hold-nginx.txt" 2>&1 || true
R[n.hold]=$(hwm_nginx)
R[n.hold_rps]=$(awk -v n="$(field requests "$RUN/wrk-hold-nginx.txt")" -v us="$(field duration_us "$RUN/wrk-hold-nginx.txt")" 'BEGIN {printf "%.0f", n / (us / 1e6)}')
stop "$NGINX_PID"

if [ "$HAPROXY" = 1 ]; then
    start_haproxy hold
    [ "$MEMORY_ONLY" = 1 ] && R[e.idle]=$(status_kb VmRSS "$HAPROXY_PID")
    BENCH_BODY=$BODY wrk -t"$WRK_THREADS" -c"$HOLD_CONNS" -d"$HOLD_DURATION"s --timeout 10s -s "$ROOT/bench/wrk-post.lua" \
        "https://127.0.0.1:$HAPROXY_PORT/plain" >"$RUN/wrk-hold-haproxy.txt" 2>&1 || true
    R[h.hold]=$(status_kb VmHWM "$HAPROXY_PID")
    R[h.hold_rps]=$(awk -v n="$(field requests "$RUN/wrk-hold-haproxy.txt")" -v us="$(field duration_us "$RUN/wrk-hold-haproxy.txt")" 'BEGIN {printf "%.0f", n / (us / 1e6)}')
    stop "$HAPROXY_PID"
fi

LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
cleanup

# ---------------------------------------------------------------- report
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (a + 0 == 0 || b + 0 == 0) print "n/a"; else printf "%.2f", a / b}'; }
verdict() { # value threshold ge|gt|le
    if [ "$1" = n/a ]; then echo "-"; return; fi
    if awk -v v="$1" -v t="$2" -v op="$3" 'BEGIN {exit !(op == "ge" ? v >= t : op == "gt" ? v > t : v <= t)}'; then echo "**met**"; else echo "**missed**"; fi
}
row() { # case label
    local c=$1
    if [ -z "${R[$c.rps]:-}" ]; then echo "| $2 | skipped | | | | | | | | |"; return; fi
    local cpu=${R[$c.cpu]} hwm=n/a
    [ -n "${R[$c.hwm]:-}" ] && hwm=$(mb "${R[$c.hwm]}")
    [ "$c" = a ] && cpu=n/a
    echo "| $2 | ${R[$c.rps]} | ${R[$c.rounds]} | ${R[$c.p50]} | ${R[$c.p99]} | $cpu | $hwm | ${R[$c.bcpu]} | ${R[$c.busy]}% | ${R[$c.errors]} |"
}
ratios() { # title, then pairs "x/y": one ratio table
    local title=$1 p x y head="|" sep="|---|"
    shift
    echo "$title"
    echo
    for p in "$@"; do head="$head ($p) |"; sep="$sep---:|"; done
    echo "$head" | sed 's|^|\| |; s|(\([a-z0-9]*\)/\([a-z0-9]*\))|(\1) / (\2)|g'
    echo "$sep"
    local what key
    for what in "req/s:rps" "p99 latency:p99" "CPU per request:cpu" "peak RSS:hwm"; do
        key=${what#*:}
        local line="| ${what%:*} |"
        for p in "$@"; do
            x=${p%/*} y=${p#*/}
            line="$line $(ratio "${R[$x.$key]:-0}" "${R[$y.$key]:-0}") |"
        done
        echo "$line"
    done
    echo
}
{
    echo "# fieldseal vs nginx and HAProxy load benchmark, $(date '+%Y-%m-%d %H:%M %Z')"
    echo
    echo "- Machine: $NCPU CPUs, $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo), $(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo) RAM, kernel $(uname -r)"
    echo "- Load average before / after: $LOAD_BEFORE / $LOAD_AFTER"
    HAPROXY_VERSION=
    [ "$HAPROXY" = 1 ] && HAPROXY_VERSION=", HAProxy $(haproxy -v | awk 'NR == 1 {print $3}') ($WORKERS threads)"
    echo "- fieldseal $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?') ($WORKERS tokio worker threads), $(nginx -v 2>&1 | sed 's/.*: //') ($WORKERS workers)$HAPROXY_VERSION as proxies, nginx ($BACKEND_WORKERS worker) as backend, $(wrk -v 2>&1 | head -1 | awk '{print $1, $2}'), h2load $(h2load --version | awk '{print $2}')"
    MIENV=$(env | grep -E '^MIMALLOC_' | tr '\n' ' ' || true)
    [ -n "$MIENV" ] && echo "- fieldseal started with: $MIENV"
    echo "- Load: HTTP/1.1 wrk, $WRK_THREADS threads, $CONNS keep-alive connections; HTTP/2 h2load, $H2_THREADS threads, $H2_CONNS connections x $H2_STREAMS concurrent streams; the cases take turns, $ROUNDS rounds of ${WARMUP}s warm-up + ${DURATION}s measured each; POST of the same $(wc -c <"$BODY")-byte JSON; backend answers $(wc -c <"$RUN/response.json") bytes of JSON with 4 envelopes"
    echo "- (a) is plain HTTP to the backend (no proxy, no TLS); the others are HTTPS (TLS 1.3), HTTP/1.1 or HTTP/2 (ALPN h2) from the client, HTTP/1.1 keep-alive to the backend"
    echo
    if [ "$MEMORY_ONLY" != 1 ]; then
    echo "| case | req/s | req/s per round | p50 ms | p99 ms | proxy CPU s / 10k req | proxy peak RSS MB | backend CPU s / 10k req | machine CPU busy | errors |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    row a "(a) backend direct, HTTP"
    row b "(b) nginx pass-through"
    row c "(c) fieldseal pass-through"
    row d "(d) fieldseal encrypt 4 + decrypt 4"
    [ "$HAPROXY" = 1 ] && row e "(e) HAProxy pass-through"
    row f "(f) fieldseal pass-through, local rate limit"
    [ "$REDIS" = 1 ] && row g "(g) fieldseal pass-through, Redis-shared rate limit"
    if [ "$SEALED" = 1 ]; then
        row j "(j) fieldseal encrypt 4, JWT, deployment key"
        row k "(k) fieldseal encrypt 4, JWT, per-subject key (warm)"
    fi
    if [ "$H2" = 1 ]; then
        row b2 "(b2) nginx pass-through, HTTP/2"
        row c2 "(c2) fieldseal pass-through, HTTP/2"
        row d2 "(d2) fieldseal encrypt 4 + decrypt 4, HTTP/2"
        [ "$HAPROXY" = 1 ] && row e2 "(e2) HAProxy pass-through, HTTP/2"
    fi
    echo
    echo "CPU cores used during each measured run (of $NCPU): proxy | backend | load tool (wrk or h2load) | everything else on the machine (other users' builds and tests):"
    echo
    echo "| case | proxy | backend | load tool | others |"
    echo "|---|---:|---:|---:|---:|"
    for c in a b c d e f g j k b2 c2 d2 e2; do [ -n "${R[$c.split]:-}" ] && echo "| ($c) | ${R[$c.split]} |"; done
    echo
    echo "req/s: all measured requests / all measured time. p50, p99: wrk's (HTTP/2: nearest rank over h2load's per-request log), median over the rounds. Proxy CPU: utime+stime deltas from /proc/PID/stat over the measured runs (nginx: master + workers). Peak RSS: VmHWM, reset before each measured run (clear_refs 5), largest over the rounds (nginx: sum over workers). (c), (d), (c2) and (d2) are routes of one fieldseal process."
    [ -n "${R[d.fields]:-}" ] && echo "Check of (d): fieldseal's /metrics counted ${R[d.fields]}."
    [ -n "${R[d2.fields]:-}" ] && echo "Check of (d2): fieldseal's /metrics counted ${R[d2.fields]}."
    echo
    echo "## Ratios fieldseal / nginx"
    echo
    if [ "$HAPROXY" = 1 ]; then
        ratios "HTTP/1.1:" c/b d/b e/b c/e
    else
        ratios "HTTP/1.1:" c/b d/b
    fi
    if [ "$H2" = 1 ]; then
        if [ "$HAPROXY" = 1 ]; then
            ratios "HTTP/2:" c2/b2 d2/b2 e2/b2 c2/e2
        else
            ratios "HTTP/2:" c2/b2 d2/b2
        fi
    fi
    if [ "$REDIS" = 1 ]; then
        ratios "Rate limits, the Redis stage beside the local one and pass-through:" g/f f/c g/c
        awk -v f="${R[f.cpu]:-0}" -v g="${R[g.cpu]:-0}" 'BEGIN {if (f > 0 && g > 0) printf "Redis stage: %+.3f proxy CPU s / 10k req over the local limiter (redis-server CPU not included).\n\n", g - f}'
    fi
    if [ "$SEALED" = 1 ]; then
        ratios "Per-subject keys on a warm cache beside the deployment key (same token, same 4 fields sealed):" k/j j/c k/c
    fi
    fi
    echo "## Memory"
    echo
    echo "| | fieldseal | nginx (workers) | HAProxy |"
    echo "|---|---:|---:|---:|"
    HI=; HH=
    [ -n "${R[e.idle]:-}" ] && HI="$(mb "${R[e.idle]}") MB"
    [ -n "${R[h.hold]:-}" ] && HH="$(mb "${R[h.hold]}") MB (${R[h.hold_rps]} req/s)"
    echo "| idle RSS, fresh process | $(mb "${R[c.idle]}") MB | $(mb "${R[b.idle]}") MB | $HI |"
    [ "$MEMORY_ONLY" = 1 ] || echo "| RSS idle again after the load runs | $(mb "${R[c.idle_after]}") MB | | |"
    echo "| peak RSS, $HOLD_CONNS keep-alive TLS connections under load (${HOLD_DURATION}s) | $(mb "${R[f.hold]}") MB ($HOLD_PATH, ${R[f.hold_rps]} req/s, open_connections gauge ${R[f.open]}, errors ${R[f.hold_err]}) | $(mb "${R[n.hold]}") MB (/plain, ${R[n.hold_rps]} req/s) | $HH |"
    echo "| RSS 2 s after those connections closed | $(mb "${R[f.after]}") MB | | |"
    echo
    if [ "$MEMORY_ONLY" != 1 ]; then
    echo "## Latency at a fixed rate: $RATE req/s = half of ($RATE_CASE)'s peak"
    echo
    echo "h2load --h1, $RATE_CLIENTS keep-alive connections x $PER_CLIENT req/s; the cases take turns, $RATE_ROUNDS rounds of 2s warm-up + ${RATE_DURATION}s each, against the same processes as above. Percentiles (nearest rank) over all the case's requests, from h2load's per-request log."
    echo
    echo "| | achieved req/s | p50 ms | p99 ms | p99.9 ms | non-200 |"
    echo "|---|---:|---:|---:|---:|---:|"
    rrow() { [ -n "${R[$1.n]:-}" ] && echo "| $2 | ${R[$1.rate]} | ${R[$1.p50]} | ${R[$1.p99]} | ${R[$1.p999]} | ${R[$1.bad]} |"; }
    rrow ra "(a) backend direct, HTTP"
    rrow rb "(b) nginx pass-through, HTTPS"
    rrow rc "(c) fieldseal pass-through, HTTPS"
    rrow rd "(d) fieldseal encrypt + decrypt, HTTPS"
    rrow re "(e) HAProxy pass-through, HTTPS"
    FC=d
    [ "$SEALED" = 1 ] || FC=c
    ADDED=$(awk -v a="${R[r$FC.p99]:-0}" -v b="${R[ra.p99]:-0}" 'BEGIN {printf "%.3f", a - b}')
    ADDED_NGINX=$(awk -v a="${R[rb.p99]:-0}" -v b="${R[ra.p99]:-0}" 'BEGIN {printf "%.3f", a - b}')
    echo
    echo "p99 added over direct at this rate: fieldseal ($FC) **$ADDED ms**; nginx (b), for comparison, $ADDED_NGINX ms."
    echo
    echo "## Targets"
    echo
    echo "| target | measured | verdict |"
    echo "|---|---|---|"
    if [ -n "${R[d.rps]:-}" ]; then
        T1=$(ratio "${R[d.rps]}" "${R[b.rps]}")
        T1C=$(ratio "${R[d.cpu]}" "${R[b.cpu]}")
        echo "| encrypting + decrypting >= 1.0x nginx pass-through req/s | ${T1}x | $(verdict "$T1" 1.0 ge) |"
        echo "| encrypting + decrypting CPU per request <= 1.0x nginx pass-through | ${T1C}x | $(verdict "$T1C" 1.0 le) |"
    else
        echo "| encrypting + decrypting >= 1.0x nginx pass-through req/s | not measured (no crypto module) | - |"
    fi
    T2=$(ratio "${R[c.rps]}" "${R[b.rps]}")
    echo "| fieldseal pass-through >= 1.2x nginx pass-through req/s | ${T2}x | $(verdict "$T2" 1.2 ge) |"
    if [ -n "${R[e.rps]:-}" ]; then
        T2H=$(ratio "${R[c.rps]}" "${R[e.rps]}")
        echo "| fieldseal pass-through ahead of HAProxy pass-through (req/s ratio > 1) | ${T2H}x | $(verdict "$T2H" 1.0 gt) |"
    fi
    if [ "$RATE_CASE" = b ] && [ -n "${R[r$FC.p99]:-}" ]; then
        echo "| p99 of ($FC) <= nginx's p99 at half of nginx's peak | ${R[r$FC.p99]} ms vs ${R[rb.p99]} ms | $(verdict "$(ratio "${R[r$FC.p99]}" "${R[rb.p99]}")" 1.0 le) |"
    fi
    echo "| p99 added over direct at half of ($RATE_CASE)'s peak <= 1 ms | $ADDED ms | $(verdict "$ADDED" 1.0 le) |"
    else
        echo "## Targets (memory only)"
        echo
        echo "| target | measured | verdict |"
        echo "|---|---|---|"
    fi
    echo "| RSS holding $HOLD_CONNS keep-alive TLS connections <= nginx's | $(mb "${R[f.hold]}") MB vs $(mb "${R[n.hold]}") MB | $(verdict "$(ratio "${R[f.hold]}" "${R[n.hold]}")" 1.0 le) |"
    echo "| RSS idle <= 10 MB | $(mb "${R[c.idle]}") MB | $(verdict "$(mb "${R[c.idle]}")" 10 le) |"
    echo "| RSS idle <= 20 MB | $(mb "${R[c.idle]}") MB | $(verdict "$(mb "${R[c.idle]}")" 20 le) |"
    echo "| RSS holding $HOLD_CONNS keep-alive TLS connections <= 100 MB | $(mb "${R[f.hold]}") MB | $(verdict "$(mb "${R[f.hold]}")" 100 le) |"
    echo
    echo "Raw outputs: bench/out/run-$STAMP/"
} | tee "$RESULTS"
log "results: $RESULTS"
