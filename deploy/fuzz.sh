#!/usr/bin/env bash
# cargo-fuzz targets of receiptd (fuzz/): the JSON and bincode decoders, the
# HTTP request handling, a message's stored form read back, and a partition
# restored from any stored entities. Needs the nightly toolchain and
# cargo-fuzz; this script installs both when missing, and fails loudly if it
# cannot.
#
#   deploy/fuzz.sh smoke [SECONDS]        every target for SECONDS (default 20),
#                                         seeded from the committed corpora,
#                                         which it leaves untouched (CI)
#   deploy/fuzz.sh run TARGET [SECONDS]   one target (default 600 s), growing
#                                         its committed corpus under fuzz/corpus
#
# Builds go to $HOME/.cache/receiptd/fuzz-target (reused across runs).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../fuzz"
targets=(decode_json decode_bincode http_api stored_message restored_partition)
target_dir="${RECEIPTD_FUZZ_TARGET_DIR:-$HOME/.cache/receiptd/fuzz-target}"

die() { echo "deploy/fuzz.sh: $*" >&2; exit 1; }

../deploy/nightly.sh # (run from fuzz/)
if ! command -v cargo-fuzz >/dev/null; then
  echo "deploy/fuzz.sh: installing cargo-fuzz" >&2
  cargo +stable install cargo-fuzz --locked >&2 || die "could not install cargo-fuzz"
fi

fuzz() { # target seconds corpus-dirs...
  local t="$1" s="$2"; shift 2
  cargo +nightly fuzz run "$t" --target-dir "$target_dir" "$@" -- -max_total_time="$s" -print_final_stats=1 \
    > "$log_dir/$t.log" 2>&1 || { tail -n 40 "$log_dir/$t.log" >&2; die "$t failed (log above; crash input under fuzz/artifacts/$t)"; }
  grep -h "Done .* runs" "$log_dir/$t.log" | sed "s/^/deploy\/fuzz.sh: $t: /" >&2
}

log_dir="$(mktemp -d -t receiptd-fuzz.XXXXXX)"
case "${1:-}" in
  smoke)
    seconds="${2:-20}"
    cargo +nightly fuzz build --target-dir "$target_dir" >&2 || die "building the fuzz targets failed"
    for t in "${targets[@]}"; do
      scratch="$(mktemp -d -t "receiptd-fuzz-$t.XXXXXX")"
      fuzz "$t" "$seconds" "$scratch" "corpus/$t"
      rm -rf "$scratch"
    done ;;
  run)
    t="${2:?usage: deploy/fuzz.sh run TARGET [SECONDS]}"
    fuzz "$t" "${3:-600}" "corpus/$t" ;;
  *) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
rm -rf "$log_dir"
