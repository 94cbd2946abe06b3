#!/usr/bin/env bash
# The fold's reads counted under callgrind: see benches/counted.sh.
#   benches/fold_counts.sh [hot|uniform|mix ...]
# FOLD_BENCH_BIN=<path> counts another build's bench binary (A/B).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
COUNTED_BENCH_BIN="${FOLD_BENCH_BIN:-${COUNTED_BENCH_BIN:-}}" exec benches/counted.sh fold "$@"
