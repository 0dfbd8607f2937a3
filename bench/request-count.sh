#!/usr/bin/env bash
# What one proxied request costs outside the field transform, in counts that
# don't depend on how busy the machine is. benches/request_count.rs runs the
# real proxy in-process (TLS on 127.0.0.1:0, the bench routes /plain and
# /sealed, a local backend answering with the 4-envelope document) and a
# keep-alive TLS client sending bench/request.json.
#
#   bench/request-count.sh                    # alloc, then strace, then callgrind
#   bench/request-count.sh alloc              # allocations per request, client-side records
#   bench/request-count.sh strace             # syscalls per request, by thread and socket leg
#   bench/request-count.sh callgrind          # instructions per request, top inclusive costs
#
# strace and callgrind run the harness twice, with N1 and N2 counted
# requests after the same warm-up; per request = difference / (N2 - N1), so
# start-up, config loading and the TLS handshakes cancel out.
# Knobs: ROUTES="plain sealed" N1=100 N2=1100 CG_N1=100 CG_N2=600 TOP=30
#   CONNS=1 (client connections) WORKERS=2 (proxy worker threads)
set -euo pipefail
cd "$(dirname "$0")/.."
PHASES=${*:-alloc strace callgrind}
ROUTES=${ROUTES:-plain sealed}
N1=${N1:-100}
N2=${N2:-1100}
CG_N1=${CG_N1:-100}
CG_N2=${CG_N2:-600}
TOP=${TOP:-30}
# BIN=path runs an already built harness (e.g. a copy kept from before a change).
BIN=${BIN:-$(cargo bench --bench request_count --no-run --message-format=json 2>/dev/null \
    | perl -ne 'print "$1\n" if /"executable":"([^"]+request_count[^"]*)"/' | tail -1)}
[ -x "$BIN" ] || { echo "no request_count bench binary" >&2; exit 1; }
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

if [[ " $PHASES " == *" alloc "* ]]; then
    echo "### Allocations and the client's socket, per request"
    echo
    "$BIN"
    echo
fi

if [[ " $PHASES " == *" strace "* ]]; then
    command -v strace >/dev/null || { echo "needs strace (apt-get install strace)" >&2; exit 1; }
    echo "### Syscalls per request (strace -f, N2 - N1 = $((N2 - N1)) requests)"
    echo
    echo "| route | thread | leg | syscall | per request |"
    echo "|---|---|---|---|---:|"
    for r in $ROUTES; do
        for n in $N1 $N2; do
            TID_MAP=$OUT/tids.$r.$n strace -f -qq -yy -o "$OUT/st.$r.$n" \
                -e trace=read,write,readv,writev,recvfrom,sendto,recvmsg,sendmsg,epoll_wait,epoll_pwait,futex,sched_yield \
                "$BIN" "$r" "$n" >/dev/null
        done
        perl -e '
            my ($route, $n1, $n2, @files) = @ARGV;
            my %c;
            for my $i (0, 1) {
                my ($trace, $map) = @files[2 * $i, 2 * $i + 1];
                my (%role, $pport, $bport);
                open my $m, "<", $map or die "$map: $!";
                while (<$m>) {
                    $pport = $1 if /^proxy_port (\d+)/;
                    $bport = $1 if /^backend_port (\d+)/;
                    $role{$1} = $2 if /^tid (\d+) (\w+)/;
                }
                open my $t, "<", $trace or die "$trace: $!";
                while (<$t>) {
                    next if /resumed>/;
                    my ($tid, $call) = /^(\d+)\s+(\w+)\(/ or next;
                    my $who = $role{$tid} // "proxy"; # untagged threads: the per_core runtimes
                    my $leg = "-";
                    if (/TCP:\[[\d.]+:(\d+)->[\d.]+:(\d+)\]/) {
                        my ($l, $p) = ($1, $2);
                        $leg = $who eq "proxy" ? ($l == $pport ? "client" : $p == $bport ? "upstream" : "other")
                             : $who eq "client" ? "proxy" : $who eq "backend" ? "proxy" : "other";
                    }
                    $c{"$who\t$leg\t$call"} += $i ? 1 : -1;
                }
            }
            for my $k (sort keys %c) {
                my ($who, $leg, $call) = split /\t/, $k;
                my $v = $c{$k} / ($n2 - $n1);
                printf "| %s | %s | %s | %s | %.2f |\n", $route, $who, $leg, $call, $v if abs($v) >= 0.005;
            }
        ' "$r" "$N1" "$N2" "$OUT/st.$r.$N1" "$OUT/tids.$r.$N1" "$OUT/st.$r.$N2" "$OUT/tids.$r.$N2"
    done
    echo
fi

if [[ " $PHASES " == *" callgrind "* ]]; then
    command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 1; }
    for r in $ROUTES; do
        for n in $CG_N1 $CG_N2; do
            valgrind --tool=callgrind --callgrind-out-file="$OUT/cg.$r.$n" "$BIN" "$r" "$n" >/dev/null 2>&1
        done
        echo "### Callgrind, /$r (whole process: proxy, client and backend; N2 - N1 = $((CG_N2 - CG_N1)) requests)"
        echo
        echo '```text'
        perl bench/callgrind-summary.pl "$OUT/cg.$r.$CG_N1" "$CG_N1" "$OUT/cg.$r.$CG_N2" "$CG_N2"
        echo
        echo "Top inclusive costs per request:"
        for n in $CG_N1 $CG_N2; do
            callgrind_annotate --inclusive=yes --threshold=100 "$OUT/cg.$r.$n" 2>/dev/null >"$OUT/incl.$r.$n"
        done
        perl -e '
            my ($n1, $n2, $top, $fa, $fb) = @ARGV;
            my %v;
            for ([$fa, -1], [$fb, 1]) {
                my ($f, $sign) = @$_;
                open my $h, "<", $f or die "$f: $!";
                while (<$h>) {
                    next unless /^\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+(\S.*?)\s*$/;
                    my ($count, $fn) = ($1, $2);
                    next if $fn =~ /PROGRAM TOTALS/;
                    $count =~ tr/,//d;
                    $fn =~ s/^[^:]*:(?=[^:])//;   # drop the file name
                    $fn =~ s/ \[[^\]]*\]$//;       # and the object
                    $v{$fn} += $sign * $count;
                }
            }
            my $i = 0;
            for my $fn (sort { $v{$b} <=> $v{$a} } keys %v) {
                last if ++$i > $top;
                printf "%10.0f  %s\n", $v{$fn} / ($n2 - $n1), substr($fn, 0, 160);
            }
        ' "$CG_N1" "$CG_N2" "$TOP" "$OUT/incl.$r.$CG_N1" "$OUT/incl.$r.$CG_N2"
        echo '```'
        echo
    done
fi
