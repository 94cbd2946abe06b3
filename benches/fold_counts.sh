#!/usr/bin/env bash
# The fold's reads counted, not timed: instructions and simulated cache
# misses per read, under valgrind's callgrind. Shared machines steal CPU
# time unpredictably; these counts do not move with it, so they compare two
# builds where wall-clock medians cannot. Only `counted_reads` in
# benches/fold.rs is counted (200,000 reads into 100,000 live messages in
# groups of 32, receipts taken every 1,000).
#
#   benches/fold_counts.sh [hot|uniform ...]    (default: both)
#
# Needs valgrind (apt-get install valgrind); about a minute per case.
# FOLD_BENCH_BIN=<path> counts another build's bench binary (A/B).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
command -v valgrind >/dev/null || { echo "fold_counts.sh: valgrind is not installed" >&2; exit 1; }
bin="${FOLD_BENCH_BIN:-$(cargo bench --bench fold --no-run 2>&1 | grep -o '(/[^)]*fold-[0-9a-f]*)' | tr -d '()' | tail -1)}"
[ -x "$bin" ] || { echo "fold_counts.sh: could not build the fold bench" >&2; exit 1; }
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
reads=200000
for case in "${@:-hot uniform}"; do
  for c in $case; do
    RECEIPTD_FOLD_COUNTED="$c" valgrind --tool=callgrind --cache-sim=yes --collect-atstart=no \
      --toggle-collect='*counted_reads*' --callgrind-out-file="$out/$c.out" "$bin" >/dev/null 2>"$out/$c.log" \
      || { cat "$out/$c.log" >&2; exit 1; }
    # Events: Ir I1mr ILmr Dr D1mr DLmr Dw D1mw DLmw
    totals="$(callgrind_annotate "$out/$c.out" 2>/dev/null | grep 'PROGRAM TOTALS' | tr -d ',' | grep -oE '^[ 0-9]+( \([^)]*\))?( +[0-9]+( \([^)]*\))?)*' | sed -E 's/\([^)]*\)//g')"
    read -r ir _i1 _il _dr d1r llr _dw d1w llw <<<"$totals"
    awk -v c="$c" -v n="$reads" -v ir="$ir" -v d1="$((d1r + d1w))" -v ll="$((llr + llw))" 'BEGIN {
      printf "%-8s %8.0f instructions/read  %6.2f L1d misses/read  %6.2f LL misses/read\n", c, ir / n, d1 / n, ll / n }'
  done
done
