#!/usr/bin/env bash
# The unit tests of the crates whose unsafe code stands on its own, under
# AddressSanitizer: receiptd-core (a reader list's vector, the maps' reads
# without their locks, the lookups ahead) and receiptd-wire (ids). The other
# crates' unsafe code calls librdkafka and mimalloc, which this build does
# not instrument. Needs the nightly toolchain (installed when missing).
#
#   deploy/asan.sh
#
# Builds go to $HOME/.cache/receiptd/asan-target (reused across runs).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here/.."
"$here/nightly.sh"
target_dir="${RECEIPTD_ASAN_TARGET_DIR:-$HOME/.cache/receiptd/asan-target}"
# `--target` (this machine's): the sanitizer flags then reach the crates'
# code only, not build scripts and proc macros, which cargo builds apart.
host="$(rustc +nightly -vV | sed -n 's/^host: //p')"
RUSTFLAGS="-Zsanitizer=address" cargo +nightly test --target "$host" --target-dir "$target_dir" \
  -p receiptd-core -p receiptd-wire --lib || {
  echo "deploy/asan.sh: the unit tests failed under AddressSanitizer (report above)" >&2
  exit 1
}
