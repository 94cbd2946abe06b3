#!/usr/bin/env bash
# Hot paths counted, not timed: instructions and simulated cache misses per
# item, under valgrind's callgrind. Shared machines steal CPU time
# unpredictably; these counts do not move with it, so they compare two
# builds where wall-clock medians cannot.
#
#   benches/counted.sh fold [hot|uniform|mix|mix_config|mix_long_msg_ids|
#                            mix_read_batch|ten_per_read|one_per_read|churn|
#                            switching|churn_switching|big_messages ...]
#     (default: all)
#     the fold: `counted_fold` in benches/fold.rs, 200,000 reads into 100,000
#     live messages in groups of 32 (hot or uniform), or 200,000 events of
#     the drain's mix after 300,000 of warm-up (mix_config: with the app's
#     config and a user with receipts off; mix_long_msg_ids: with 38-byte
#     message ids; mix_read_batch: group reads naming up to ten messages;
#     ten_per_read and one_per_read: the same hot message reads ten to an
#     event or one; churn: a group of 100,000 whose members leave and join
#     every 100th event while its 100 messages are read; switching: the same
#     with a member switching receipts instead; churn_switching: both;
#     big_messages: 4 messages of
#     that group each read by 50,000 members); receipts taken
#     every 1,000 message reads; any case with
#     `_prefetched` (`mix_prefetched`): its events' messages looked up in runs
#     before they are folded, as the worker folds
#   benches/counted.sh stage [mix|mix_written|mix_read_batch|big_messages ...]
#     (default: the first three)
#     the flush's staging: `counted_stage` in benches/fold.rs, the drain's
#     mix folded in windows of 50,000 events and each window's changed
#     entities encoded into a RocksDB write batch, receipts taken; the fold
#     itself is not counted; per event of the 200,000 folded (mix_written:
#     and each batch written into a store, `counted_stage_write`;
#     mix_read_batch: group reads naming up to ten messages; big_messages:
#     the fold case of that name in windows of 1,000 reads, each batch
#     written into a store, per read)
#   benches/counted.sh decode [fast|serde|fast_read_batch ...]
#     (default: all)
#     decoding: `counted_decodes` in benches/decode.rs, the bench mix's
#     100,000 JSON records once each, key check and validation included
#     (fast_read_batch: the fast path, group reads naming up to ten messages)
#
# Needs valgrind (apt-get install valgrind); about a minute per case.
# COUNTED_BENCH_BIN=<path> counts another build's bench binary (A/B).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
command -v valgrind >/dev/null || { echo "counted.sh: valgrind is not installed" >&2; exit 1; }
bench="${1:-}"
shift || true
case "$bench" in
  fold) env_var=RECEIPTD_FOLD_COUNTED; counted='*counted_fold*'; per=200000; unit=event; default="hot uniform mix mix_config mix_long_msg_ids mix_read_batch ten_per_read one_per_read churn switching churn_switching big_messages" ;;
  stage) env_var=RECEIPTD_STAGE_COUNTED; counted='*counted_stage*'; per=200000; unit=event; default="mix mix_written mix_read_batch" ;;
  decode) env_var=RECEIPTD_DECODE_COUNTED; counted='*counted_decodes*'; per=100000; unit=record; default="fast serde fast_read_batch" ;;
  *) echo "usage: benches/counted.sh fold|stage|decode [cases...]" >&2; exit 2 ;;
esac
# The staging's counted case lives in the fold bench.
target="$bench"
[ "$bench" = stage ] && target=fold
bin="${COUNTED_BENCH_BIN:-$(cargo bench --bench "$target" --no-run 2>&1 | grep -o "(/[^)]*$target-[0-9a-f]*)" | tr -d '()' | tail -1)}"
[ -x "$bin" ] || { echo "counted.sh: could not build the $target bench" >&2; exit 1; }
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
for c in ${*:-$default}; do
  env "$env_var=$c" valgrind --tool=callgrind --cache-sim=yes --collect-atstart=no \
    --toggle-collect="$counted" --callgrind-out-file="$out/$c.out" "$bin" >/dev/null 2>"$out/$c.log" \
    || { cat "$out/$c.log" >&2; exit 1; }
  # Events: Ir I1mr ILmr Dr D1mr DLmr Dw D1mw DLmw
  totals="$(callgrind_annotate "$out/$c.out" 2>/dev/null | grep 'PROGRAM TOTALS' | tr -d ',' | grep -oE '^[ 0-9]+( \([^)]*\))?( +[0-9]+( \([^)]*\))?)*' | sed -E 's/\([^)]*\)//g')"
  read -r ir _i1 _il _dr d1r llr _dw d1w llw <<<"$totals"
  awk -v c="$c" -v n="$per" -v u="$unit" -v ir="$ir" -v d1="$((d1r + d1w))" -v ll="$((llr + llw))" 'BEGIN {
    printf "%-8s %8.0f instructions/%s  %6.2f L1d misses/%s  %6.2f LL misses/%s\n", c, ir / n, u, d1 / n, u, ll / n, u }'
done
