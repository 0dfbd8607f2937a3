#!/usr/bin/env bash
# Instructions per request of subject-scoped sealing beside deployment-scoped
# sealing, under valgrind --tool=callgrind: load-independent, unlike
# criterion's times. Each case of benches/subject.rs runs N1 and then N2
# times (SUBJECT_COUNT="CASE N"); (Ir(N2) - Ir(N1)) / (N2 - N1) is the cost
# of one request, with setup (key generation, the first write, the first
# token verification) cancelled out.
#
#   bench/subject-count.sh   # N1=200 N2=1200; COLD_N1=20 COLD_N2=120; JWT_N1=20 JWT_N2=120
#   SUBJECT_BIN=path/to/subject-HASH bench/subject-count.sh
#   WARM_ONLY=1 bench/subject-count.sh   # the warm cases only (skips the
#                                        # uncached token and the cold write)
#
# Needs valgrind (apt-get install valgrind). Builds the bench binary with the
# bench profile (cargo bench --no-run) if it is not built.
set -euo pipefail
cd "$(dirname "$0")/.."
N1=${N1:-200}
N2=${N2:-1200}
COLD_N1=${COLD_N1:-20}
COLD_N2=${COLD_N2:-120}
JWT_N1=${JWT_N1:-20}
JWT_N2=${JWT_N2:-120}
command -v valgrind >/dev/null || { echo "valgrind is not installed (apt-get install valgrind)" >&2; exit 1; }
# SUBJECT_BIN=path: count that (already built) bench binary, e.g. a copy
# kept from before a change.
BIN=${SUBJECT_BIN:-$(cargo bench --bench subject --no-run --message-format=json 2>/dev/null |
    sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)}
[ -x "$BIN" ] || { echo "bench binary not found" >&2; exit 1; }
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

ir() { # case n -> total instructions
    SUBJECT_COUNT="$1 $2" valgrind --tool=callgrind --callgrind-out-file="$OUT/cg.$1.$2" \
        "$BIN" --bench >/dev/null 2>"$OUT/log.$1.$2"
    sed -n 's/^summary: *\([0-9]*\).*/\1/p' "$OUT/cg.$1.$2"
}

per() { # case n1 n2 -> instructions per request
    local a b
    a=$(ir "$1" "$2")
    b=$(ir "$1" "$3")
    echo $(((b - a) / ($3 - $2)))
}

dep=$(per deployment_seal "$N1" "$N2")
depjwt=$(per deployment_seal_jwt "$N1" "$N2")
sub=$(per subject_seal_warm "$N1" "$N2")
sub1=$(per subject_seal_warm_one_task "$N1" "$N2")
jwt=$(per jwt_verify_cached "$N1" "$N2")
if [ -z "${WARM_ONLY:-}" ]; then
    jwt_full=$(per jwt_verify_uncached "$JWT_N1" "$JWT_N2")
    cold=$(per cold_first_write_new_subject "$COLD_N1" "$COLD_N2")
else
    jwt_full="not run (WARM_ONLY)"
    cold="not run (WARM_ONLY)"
fi
echo "| case | instructions per request |"
echo "|---|---:|"
echo "| deployment_seal | $dep |"
echo "| deployment_seal_jwt (the same cached token verified, as a deployment route does) | $depjwt |"
echo "| subject_seal_warm | $sub |"
echo "| subject_seal_warm_one_task (verification and key lookup in one future, as the proxy runs them) | $sub1 |"
echo "| jwt_verify_cached | $jwt |"
echo "| jwt_verify_uncached (ES256, a token not seen before) | $jwt_full |"
echo "| cold_first_write_new_subject (user space only; fsync wait not counted) | $cold |"
awk -v d="$dep" -v s="$sub" 'BEGIN { printf "subject_seal_warm / deployment_seal = %.4f (+%.2f%%)\n", s / d, (s / d - 1) * 100 }'
awk -v d="$depjwt" -v s="$sub" 'BEGIN { printf "subject_seal_warm / deployment_seal_jwt = %.4f (+%.2f%%)\n", s / d, (s / d - 1) * 100 }'
awk -v d="$depjwt" -v s="$sub1" 'BEGIN { printf "subject_seal_warm_one_task / deployment_seal_jwt = %.4f (+%.2f%%)\n", s / d, (s / d - 1) * 100 }'
