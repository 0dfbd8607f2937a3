#!/usr/bin/env bash
# Where the per-request cost goes, in counts that don't depend on how busy
# the machine is: packets and TLS records on the wire, syscalls and wake-ups,
# instructions and allocations. nginx, HAProxy and fieldseal side by side.
#
#   bench/count.sh [wire] [sys] [instr]      # default: all three
#
# Needs a run directory from bench/load.sh (newest bench/out/run-*/, or RUN=...):
# its backend, nginx, HAProxy and fieldseal configs, certificate and key.
#   wire   tcpdump on loopback during WIRE_SECS of load after a warm-up, read
#          with tshark: per request, TCP segments with data, pure ACKs and bytes
#          on each leg (client <-> proxy, proxy <-> backend), TLS records per
#          message, upstream connections used and opened (SYNs).
#   sys    perf stat with syscall tracepoints and the context-switch counter,
#          attached to the proxy, the backend and the load tool, SYS_ROUNDS
#          rounds of SYS_SECS with the cases taking turns: syscalls, epoll
#          waits, futex calls and context switches per request, for all three.
#   instr  each proxy under valgrind --tool=callgrind (nginx and HAProxy with
#          one worker, fieldseal with its WORKERS): the counters are zeroed,
#          N1 requests run, dumped, zeroed, N2 requests, dumped; the difference
#          over N2 - N1 requests is per request with the TLS handshakes of the
#          fresh connections cancelled out. Instructions by component and
#          allocator calls per request (bench/callgrind-summary.pl).
# Cases: HTTP/1.1 (wrk, CONNS connections; h2load --h1 for instr) and HTTP/2
# (h2load, H2_CONNS x H2_STREAMS) through nginx, HAProxy and fieldseal passing
# through (/plain) and fieldseal sealing 4 + opening 4 fields (/sealed).
#
# Knobs: CONNS=64 H2_CONNS=16 H2_STREAMS=4 WIRE_SECS=1 SYS_SECS=3 SYS_ROUNDS=3
#   N1=1000 N2=3000 INSTR_CONNS=16 WORKERS=$(nproc) FIELDSEAL=target/release/fieldseal
#   INSTR_OTHERS=1 (0: instr counts fieldseal only, not nginx and HAProxy)
# instr also counts the rate-limited routes of bench/load.sh's (f) and (g) when
# the run's config has them (for (g) it starts a redis-server on the config's port).
# Output: Markdown on stdout and in bench/out/count-<date>.md; captures,
# perf and callgrind files in bench/out/count-<date>/.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PHASES=${*:-wire sys instr}
CONNS=${CONNS:-64}
H2_CONNS=${H2_CONNS:-16}
H2_STREAMS=${H2_STREAMS:-4}
WIRE_SECS=${WIRE_SECS:-1}
SYS_SECS=${SYS_SECS:-3}
SYS_ROUNDS=${SYS_ROUNDS:-3}
N1=${N1:-1000}
N2=${N2:-3000}
INSTR_CONNS=${INSTR_CONNS:-16}
INSTR_OTHERS=${INSTR_OTHERS:-1}
WORKERS=${WORKERS:-$(nproc)}
FIELDSEAL=${FIELDSEAL:-$ROOT/target/release/fieldseal}
RUN=${RUN:-$(ls -d "$ROOT"/bench/out/run-* 2>/dev/null | tail -1)}
[ -n "$RUN" ] && [ -f "$RUN/fieldseal.yaml" ] && [ -f "$RUN/haproxy-proxy.cfg" ] || { echo "run bench/load.sh first (with HAProxy)" >&2; exit 1; }
STAMP=$(date +%Y-%m-%d-%H%M%S)
OUT=$ROOT/bench/out/count-$STAMP
REPORT=$ROOT/bench/out/count-$STAMP.md
mkdir -p "$OUT"
BODY=$ROOT/bench/request.json

log() { printf '[count %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

missing=()
command -v nginx >/dev/null || missing+=(nginx)
command -v haproxy >/dev/null || missing+=(haproxy)
command -v wrk >/dev/null || missing+=(wrk)
command -v h2load >/dev/null || missing+=(nghttp2-client)
command -v tcpdump >/dev/null || missing+=(tcpdump)
command -v tshark >/dev/null || missing+=(tshark)
command -v valgrind >/dev/null || missing+=(valgrind)
command -v perf >/dev/null || missing+=(linux-perf)
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]} (Debian packages)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}" >/dev/null \
        || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}" >/dev/null; } \
        || die "cannot install ${missing[*]}"
fi
[ -x "$FIELDSEAL" ] || die "no fieldseal binary at $FIELDSEAL (cargo build --release)"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

port() { perl -ne "print \$1 if /$1.*127\\.0\\.0\\.1:(\\d+)/" "$2" | head -c 5; }
BPORT=$(port 'url:' "$RUN/fieldseal.yaml")
FPORT=$(port 'listen:' "$RUN/fieldseal.yaml")
NPORT=$(perl -ne 'print $1 if /listen 127\.0\.0\.1:(\d+) ssl reuseport/' "$RUN/nginx-proxy.conf")
N2PORT=$(perl -ne 'print $1 if /listen 127\.0\.0\.1:(\d+) ssl http2/' "$RUN/nginx-proxy.conf")
HPORT=$(perl -ne 'print $1 if /bind 127\.0\.0\.1:(\d+)/' "$RUN/haproxy-proxy.cfg")
for p in $BPORT $FPORT $NPORT $N2PORT $HPORT; do
    if ss -Hltn "sport = :$p" | grep -q .; then die "port $p is in use"; fi
done

PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    PIDS=()
}
trap cleanup EXIT
trap 'exit 130' INT TERM
up() { local i; for i in $(seq 300); do curl -sk -o /dev/null --max-time 1 "$1" && return 0; sleep 0.1; done; die "$1 did not come up"; }
children() { echo "$1 $(pgrep -P "$1" | tr '\n' ' ')"; }

start_backend() {
    nginx -e "$OUT/backend.startup.log" -p "$RUN" -c "$RUN/nginx-backend.conf" &
    BACKEND=$!
    PIDS+=("$BACKEND")
    up "http://127.0.0.1:$BPORT/"
}
start_proxies() { # nginx, HAProxy, fieldseal as bench/load.sh runs them
    nginx -e "$OUT/nginx.startup.log" -p "$RUN" -c "$RUN/nginx-proxy.conf" &
    NGINX=$!
    PIDS+=("$NGINX")
    haproxy -db -f "$RUN/haproxy-proxy.cfg" >"$OUT/haproxy.log" 2>&1 &
    HAPROXY=$!
    PIDS+=("$HAPROXY")
    TOKIO_WORKER_THREADS=$WORKERS "$FIELDSEAL" run --config "$RUN/fieldseal.yaml" >"$OUT/fieldseal.log" 2>&1 &
    FS=$!
    PIDS+=("$FS")
    up "https://127.0.0.1:$NPORT/"
    up "https://127.0.0.1:$HPORT/"
    up "https://127.0.0.1:$FPORT/plain"
}
# case -> "url proto proxy-pids-function"
case_url() {
    case $1 in
        nginx) echo "https://127.0.0.1:$NPORT/plain" ;;
        haproxy) echo "https://127.0.0.1:$HPORT/plain" ;;
        plain) echo "https://127.0.0.1:$FPORT/plain" ;;
        sealed) echo "https://127.0.0.1:$FPORT/sealed" ;;
        nginx-h2) echo "https://127.0.0.1:$N2PORT/plain" ;;
        haproxy-h2) echo "https://127.0.0.1:$HPORT/plain" ;;
        plain-h2) echo "https://127.0.0.1:$FPORT/plain" ;;
        sealed-h2) echo "https://127.0.0.1:$FPORT/sealed" ;;
        limited) echo "https://127.0.0.1:$FPORT/limited" ;;
        shared) echo "https://127.0.0.1:$FPORT/shared" ;;
    esac
}
case_pids() {
    case ${1%-h2} in
        nginx) children "$NGINX" ;;
        haproxy) echo "$HAPROXY" ;;
        *) echo "$FS" ;;
    esac
}
case_port() { local u; u=$(case_url "$1"); u=${u#https://127.0.0.1:}; echo "${u%%/*}"; }
CASES="nginx haproxy plain sealed nginx-h2 haproxy-h2 plain-h2 sealed-h2"
label() {
    case $1 in
        nginx) echo "nginx pass-through, HTTP/1.1" ;;
        haproxy) echo "HAProxy pass-through, HTTP/1.1" ;;
        plain) echo "fieldseal pass-through, HTTP/1.1" ;;
        sealed) echo "fieldseal seal 4 + open 4, HTTP/1.1" ;;
        nginx-h2) echo "nginx pass-through, HTTP/2" ;;
        haproxy-h2) echo "HAProxy pass-through, HTTP/2" ;;
        plain-h2) echo "fieldseal pass-through, HTTP/2" ;;
        sealed-h2) echo "fieldseal seal 4 + open 4, HTTP/2" ;;
        limited) echo "fieldseal pass-through, local rate limit, HTTP/1.1" ;;
        shared) echo "fieldseal pass-through, Redis-shared rate limit, HTTP/1.1" ;;
    esac
}
# load case seconds outfile [perf-stat-prefix...]: prints the requests completed
load() {
    local c=$1 secs=$2 f=$3 url
    shift 3
    url=$(case_url "$c")
    if [ "${c%-h2}" = "$c" ]; then
        BENCH_BODY=$BODY "$@" wrk -t2 -c"$CONNS" -d"$secs"s --timeout 10s -s "$ROOT/bench/wrk-post.lua" "$url" >"$f" 2>&1 || true
        grep -q '^BENCH ' "$f" || die "wrk failed against $url: $(tail -3 "$f")"
        grep '^BENCH ' "$f" | tr ' ' '\n' | awk -F= '$1 == "requests" {print $2}'
    else
        "$@" h2load -t 2 -c "$H2_CONNS" -m "$H2_STREAMS" -D "$secs" -H 'content-type: application/json' \
            -H 'accept: application/json' -H 'user-agent: fieldseal-bench/h2load' -d "$BODY" "$url" >"$f" 2>&1 || true
        grep -q 'Application protocol: h2' "$f" || die "h2load against $url: no h2 ($(tail -3 "$f"))"
        awk '/^requests:/ {print $6}' "$f"
    fi
}

{
echo "# Per-request counts, $(date '+%Y-%m-%d %H:%M %Z')"
echo
echo "- fieldseal $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?') ($WORKERS tokio workers), $(nginx -v 2>&1 | sed 's/.*: //') ($WORKERS workers), HAProxy $(haproxy -v | awk 'NR == 1 {print $3}') ($WORKERS threads); backend nginx (1 worker); configs of $(basename "$RUN")"
echo "- Load: HTTP/1.1 wrk, 2 threads, $CONNS connections; HTTP/2 h2load, 2 threads, $H2_CONNS x $H2_STREAMS streams; POST of the $(wc -c <"$BODY")-byte body, $(wc -c <"$RUN/response.json")-byte answer"
echo "- Load average at the start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
} >"$REPORT"

# ---------------------------------------------------------------- wire
if [[ " $PHASES " == *" wire "* ]]; then
    log "wire: tcpdump + tshark, ${WIRE_SECS}s per case"
    start_backend
    start_proxies
    {
        echo "## On the wire, per request"
        echo
        echo "tcpdump -i lo during ${WIRE_SECS}s of load after 2s of warm-up on the same processes; tshark decodes the client leg as TLS. Segments: TCP segments with payload; ACKs: segments with neither payload nor SYN/FIN/RST. Records: TLS application-data records (the TLS 1.3 outer type). Upstream: distinct proxy-side ports that sent data to the backend, and SYNs to the backend during the capture."
        echo
        echo "| case | client→proxy segments / records | proxy→client segments / records / ACKs | proxy→backend segments / ACKs | backend→proxy segments | bytes c→p / p→c / p→b / b→p | upstream connections used / opened |"
        echo "|---|---:|---:|---:|---:|---:|---:|"
    } >>"$REPORT"
    for c in $CASES; do
        p=$(case_port "$c")
        load "$c" 2 "$OUT/wire-$c-warmup.txt" >/dev/null
        tcpdump -i lo -B 262144 -s 0 -w "$OUT/wire-$c.pcap" "tcp port $p or tcp port $BPORT" 2>"$OUT/wire-$c.tcpdump" &
        TD=$!
        sleep 1
        n=$(load "$c" "$WIRE_SECS" "$OUT/wire-$c.txt")
        sleep 0.5
        kill -INT "$TD"; wait "$TD" 2>/dev/null || true
        grep -q '^0 packets dropped by kernel' "$OUT/wire-$c.tcpdump" || log "WARNING: $c: tcpdump dropped packets: $(grep dropped "$OUT/wire-$c.tcpdump")"
        tshark -r "$OUT/wire-$c.pcap" -d "tcp.port==$p,tls" -T fields -e tcp.srcport -e tcp.dstport -e tcp.len \
            -e tcp.flags -e tls.record.opaque_type -e tls.record.length 2>/dev/null \
            | perl -e '
                my ($p, $b, $n, $label) = @ARGV;
                my (%c, %up);
                while (<STDIN>) {
                    chomp;
                    my ($sp, $dp, $len, $flags, $types) = split /\t/;
                    my $leg = $dp == $p ? "cp" : $sp == $p ? "pc" : $dp == $b ? "pb" : $sp == $b ? "bp" : next;
                    my $f = hex $flags;
                    if ($f & 0x02) { $c{"$leg syn"}++ unless $f & 0x10; next }
                    if ($len > 0) { $c{"$leg seg"}++; $c{"$leg bytes"} += $len; $up{$sp} = 1 if $leg eq "pb" }
                    elsif (!($f & 0x05)) { $c{"$leg ack"}++ }
                    $c{"$leg rec"} += grep { $_ == 23 } split /,/, ($types // "");
                }
                my $r = sub { sprintf "%.2f", ($c{$_[0]} // 0) / $n };
                printf "| %s | %s / %s | %s / %s / %s | %s / %s | %s | %.0f / %.0f / %.0f / %.0f | %d / %d |\n", $label,
                    $r->("cp seg"), $r->("cp rec"), $r->("pc seg"), $r->("pc rec"), $r->("pc ack"), $r->("pb seg"), $r->("pb ack"),
                    $r->("bp seg"), map({ ($c{"$_ bytes"} // 0) / $n } qw(cp pc pb bp)), scalar(keys %up), $c{"pb syn"} // 0;
            ' "$p" "$BPORT" "$n" "$(label "$c")" >>"$REPORT"
        rm -f "$OUT/wire-$c.pcap"
        log "wire $c: $n requests"
    done
    echo >>"$REPORT"
    cleanup
fi

# ----------------------------------------------------------------- sys
if [[ " $PHASES " == *" sys "* ]]; then
    log "sys: perf stat, $SYS_ROUNDS rounds of ${SYS_SECS}s per case"
    SC="read write readv writev recvfrom sendto recvmsg sendmsg epoll_wait epoll_pwait futex"
    EV="task-clock,context-switches,raw_syscalls:sys_enter$(for s in $SC; do printf ',syscalls:sys_enter_%s' "$s"; done)"
    start_backend
    start_proxies
    for r in $(seq "$SYS_ROUNDS"); do
        for c in $CASES; do
            load "$c" 2 "$OUT/sys-$c-r$r-warmup.txt" >/dev/null
            perf stat -x, -e "$EV" -p "$(case_pids "$c" | tr ' ' ',' | sed 's/,$//')" -o "$OUT/sys-$c-r$r.proxy" &
            PA=$!
            perf stat -x, -e "$EV" -p "$(children "$BACKEND" | tr ' ' ',' | sed 's/,$//')" -o "$OUT/sys-$c-r$r.backend" &
            PB=$!
            sleep 0.3
            n=$(load "$c" "$SYS_SECS" "$OUT/sys-$c-r$r.txt" perf stat -x, -e "$EV" -o "$OUT/sys-$c-r$r.tool" --)
            kill -INT "$PA" "$PB"; wait "$PA" "$PB" 2>/dev/null || true
            echo "$n" >"$OUT/sys-$c-r$r.n"
            log "sys $c round $r: $n requests"
        done
    done
    cleanup
    LABELS=$(for c in $CASES; do printf '%s=%s|' "$c" "$(label "$c")"; done) SYS_SECS=$SYS_SECS perl -e '
        my ($out, $rounds, @cases) = @ARGV;
        my %label = map { split /=/, $_, 2 } split /\|/, $ENV{LABELS};
        my @keys = (["task-clock", "CPU µs"], ["context-switches", "context switches"], ["ALL", "syscalls"],
            ["rw", "reads + writes"], ["epoll", "epoll waits"], ["futex", "futex"]);
        my %v;
        for my $c (@cases) {
            for my $r (1 .. $rounds) {
                open my $nf, "<", "$out/sys-$c-r$r.n" or next; my $n = <$nf>; chomp $n; next unless $n;
                for my $who (qw(proxy backend tool)) {
                    open my $f, "<", "$out/sys-$c-r$r.$who" or next;
                    my %e;
                    while (<$f>) {
                        my @x = split /,/; next unless @x > 3 && $x[0] =~ /^[\d.]+$/;
                        (my $name = $x[2]) =~ s/^syscalls:sys_enter_//; $name =~ s/^raw_syscalls:sys_enter$/ALL/;
                        $e{$name} = $x[0];
                    }
                    my %m = ("task-clock" => ($e{"task-clock"} // 0) * 1000 / $n, "context-switches" => ($e{"context-switches"} // 0) / $n,
                        ALL => ($e{ALL} // 0) / $n, rw => rw(\%e) / $n,
                        epoll => (($e{epoll_wait} // 0) + ($e{epoll_pwait} // 0)) / $n, futex => ($e{futex} // 0) / $n);
                    push @{$v{$c}{$who}{$_}}, $m{$_} for keys %m;
                }
            }
        }
        sub rw { my ($e) = @_; my $s = 0; $s += $e->{$_} // 0 for qw(read write readv writev recvfrom sendto recvmsg sendmsg); return $s }
        sub med { my @s = sort { $a <=> $b } @_; return @s ? $s[int($#s / 2)] : 0 }
        sub cell { my @s = sort { $a <=> $b } @{$_[0] // []}; return "" unless @s; my $f = $_[1];
            return @s > 1 ? sprintf("%s (%s–%s)", sprintf($f, med(@s)), sprintf($f, $s[0]), sprintf($f, $s[-1])) : sprintf($f, $s[0]) }
        print "## Syscalls and wake-ups, per request\n\n";
        print "perf stat (syscall tracepoints, context-switches) attached to each process for ${\ $ENV{SYS_SECS}}s of load after 2s of warm-up, $rounds rounds with the cases in turn; median (min–max) over the rounds. CPU µs is perf'"'"'s task-clock: it moves with the machine'"'"'s load, the counts much less. reads + writes: read, write, readv, writev, recvfrom, sendto, recvmsg, sendmsg. epoll waits: epoll_wait + epoll_pwait. The load tool is wrk (HTTP/1.1) or h2load (HTTP/2).\n\n";
        for my $who (["proxy", "the proxy"], ["backend", "the backend (nginx, 1 worker), behind each proxy"], ["tool", "the load tool, in front of each proxy"]) {
            print "Counted in $who->[1]:\n\n| case | ", join(" | ", map { $_->[1] } @keys), " |\n|---|", "---:|" x @keys, "\n";
            for my $c (@cases) {
                print "| $label{$c} | ", join(" | ", map { cell($v{$c}{$who->[0]}{$_->[0]}, $_->[0] eq "task-clock" ? "%.1f" : "%.2f") } @keys), " |\n";
            }
            print "\n";
        }
    ' "$OUT" "$SYS_ROUNDS" $CASES >>"$REPORT"
fi

# --------------------------------------------------------------- instr
if [[ " $PHASES " == *" instr "* ]]; then
    log "instr: callgrind, $N1 then $N2 requests per case"
    start_backend
    VG="valgrind --tool=callgrind --callgrind-out-file=$OUT/cg.%p"
    # one worker each for nginx and HAProxy (valgrind runs threads one at a time anyway)
    sed "s/worker_processes [0-9]*;/worker_processes 1; master_process off;/; s|^pid .*;|pid $OUT/nginx-vg.pid;|" "$RUN/nginx-proxy.conf" >"$OUT/nginx-vg.conf"
    sed 's/nbthread [0-9]*/nbthread 1/' "$RUN/haproxy-proxy.cfg" >"$OUT/haproxy-vg.cfg"
    {
        echo "## Instructions and allocations per request (callgrind)"
        echo
        echo "User-space instructions only (the kernel's TCP work is not in them). Each proxy under callgrind; counters zeroed after a warm-up, $N1 requests, dump, zeroed, $N2 requests, dump; per request = difference / $((N2 - N1)). h2load, $INSTR_CONNS connections (HTTP/2: $((INSTR_CONNS / 4)) x 4 streams). Components by the function the instructions ran in (inlined code counts where it was inlined); allocator calls are calls of malloc, free, realloc, posix_memalign."
        echo
    } >>"$REPORT"
    instr_case() { # tag url h2load-proto-args... ; proxy already under valgrind as $VPID
        local tag=$1 url=$2
        shift 2
        h2load "$@" -n 500 -d "$BODY" -H 'content-type: application/json' "$url" >"$OUT/cg-$tag-warmup.txt" 2>&1
        callgrind_control -z "$VPID" >/dev/null
        h2load "$@" -n "$N1" -d "$BODY" -H 'content-type: application/json' "$url" >"$OUT/cg-$tag-1.txt" 2>&1
        callgrind_control -d "$tag-1" "$VPID" >/dev/null
        callgrind_control -z "$VPID" >/dev/null
        h2load "$@" -n "$N2" -d "$BODY" -H 'content-type: application/json' "$url" >"$OUT/cg-$tag-2.txt" 2>&1
        callgrind_control -d "$tag-2" "$VPID" >/dev/null
        grep -q "^status codes: $N2 2xx" "$OUT/cg-$tag-2.txt" || die "callgrind run $tag: not all $N2 answers were 2xx"
        local a b
        a=$(grep -lx "desc: Trigger: dump $tag-1" "$OUT"/cg.* | head -1)
        b=$(grep -lx "desc: Trigger: dump $tag-2" "$OUT"/cg.* | head -1)
        [ -n "$a" ] && [ -n "$b" ] || die "callgrind run $tag: dumps not found"
        {
            echo "### $(label "$tag")"
            echo
            echo '```text'
            perl "$ROOT/bench/callgrind-summary.pl" "$a" "$N1" "$b" "$N2"
            echo '```'
            echo
        } >>"$REPORT"
        TOP=40 perl "$ROOT/bench/callgrind-summary.pl" "$a" "$N1" "$b" "$N2" >"$OUT/cg-$tag-top.txt"
        log "instr $tag: $(grep -m1 'instructions per request' "$OUT/cg-$tag-top.txt")"
    }
    H1=(--h1 -c "$INSTR_CONNS")
    H2=(-c "$((INSTR_CONNS / 4))" -m 4)
    if [ "$INSTR_OTHERS" = 1 ]; then
        $VG nginx -p "$RUN" -c "$OUT/nginx-vg.conf" -e "$OUT/nginx-vg.err" >"$OUT/nginx-vg.log" 2>&1 &
        VPID=$!
        PIDS+=("$VPID")
        up "https://127.0.0.1:$NPORT/"
        instr_case nginx "https://127.0.0.1:$NPORT/plain" "${H1[@]}"
        instr_case nginx-h2 "https://127.0.0.1:$N2PORT/plain" "${H2[@]}"
        cleanup
        start_backend
        $VG haproxy -db -f "$OUT/haproxy-vg.cfg" >"$OUT/haproxy-vg.log" 2>&1 &
        VPID=$!
        PIDS+=("$VPID")
        up "https://127.0.0.1:$HPORT/"
        instr_case haproxy "https://127.0.0.1:$HPORT/plain" "${H1[@]}"
        instr_case haproxy-h2 "https://127.0.0.1:$HPORT/plain" "${H2[@]}"
        cleanup
        start_backend
    fi
    # The rate-limited routes of bench/load.sh's cases (f) and (g), when the
    # run's config has them; (g) needs the Redis that bench/load.sh starts.
    LIMITED=0 SHARED=0
    grep -q 'path_prefix: /limited' "$RUN/fieldseal.yaml" && LIMITED=1
    REDIS_URL_PORT=$(sed -n 's|^redis: { url: "redis://127.0.0.1:\([0-9]*\)/.*|\1|p' "$RUN/fieldseal.yaml")
    if [ -n "$REDIS_URL_PORT" ] && command -v redis-server >/dev/null; then
        mkdir -p "$OUT/redis"
        redis-server --port "$REDIS_URL_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$OUT/redis" \
            >"$OUT/redis.log" 2>&1 &
        PIDS+=("$!")
        SHARED=1
        sleep 0.5
    fi
    # Under valgrind the proxy runs tens of times slower: the Redis call's
    # time budget is widened so the shared case measures calls, not timeouts.
    sed 's|^\(redis: {.*\)timeout: [0-9a-z]*|\1timeout: 1s, connect_timeout: 5s|' "$RUN/fieldseal.yaml" >"$RUN/fieldseal-vg.yaml"
    TOKIO_WORKER_THREADS=$WORKERS $VG "$FIELDSEAL" run --config "$RUN/fieldseal-vg.yaml" >"$OUT/fieldseal-vg.log" 2>&1 &
    VPID=$!
    PIDS+=("$VPID")
    up "https://127.0.0.1:$FPORT/plain"
    instr_case plain "https://127.0.0.1:$FPORT/plain" "${H1[@]}"
    instr_case sealed "https://127.0.0.1:$FPORT/sealed" "${H1[@]}"
    instr_case plain-h2 "https://127.0.0.1:$FPORT/plain" "${H2[@]}"
    instr_case sealed-h2 "https://127.0.0.1:$FPORT/sealed" "${H2[@]}"
    [ "$LIMITED" = 1 ] && instr_case limited "https://127.0.0.1:$FPORT/limited" "${H1[@]}"
    [ "$SHARED" = 1 ] && instr_case shared "https://127.0.0.1:$FPORT/shared" "${H1[@]}"
    cleanup
fi

echo "Raw files: bench/out/count-$STAMP/" >>"$REPORT"
cat "$REPORT"
log "report: $REPORT"
