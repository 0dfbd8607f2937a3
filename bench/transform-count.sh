#!/usr/bin/env bash
# Instructions per field transform, exact and independent of the machine's
# load: benches/transform_count.rs under valgrind --tool=callgrind, run with
# N1 and N2 iterations of one operation; per operation = difference / (N2 - N1),
# so config parsing and setup cancel out. Also prints allocator calls per
# operation (the bench's counting allocator).
#
#   bench/transform-count.sh            # encrypt and decrypt: 2 KB fixture, bench/request.json (load), 64 KB
#   OPS="encrypt" DOCS="2kb" N1=10 N2=210 bench/transform-count.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OPS=${OPS:-encrypt decrypt}
DOCS=${DOCS:-2kb load 64kb}
N1=${N1:-10}
N2=${N2:-210}
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 1; }
BIN=$(cargo bench --bench transform_count --no-run --message-format=json 2>/dev/null \
    | perl -ne 'print "$1\n" if /"executable":"([^"]+transform_count[^"]*)"/' | tail -1)
[ -x "$BIN" ] || { echo "no transform_count bench binary" >&2; exit 1; }
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
total() { valgrind --tool=callgrind --callgrind-out-file="$OUT/cg" "$BIN" "$@" 2>&1 >/dev/null \
    | perl -ne 'if (/Collected : (\d+)/) { print $1 }'; }
echo "| operation | document | instructions per operation |"
echo "|---|---|---:|"
for doc in $DOCS; do
    for op in $OPS; do
        a=$(total "$op" "$doc" "$N1")
        b=$(total "$op" "$doc" "$N2")
        echo "| $op | $doc | $(( (b - a) / (N2 - N1) )) |"
    done
done
"$BIN"
