#!/usr/bin/env bash
# The whole test suite: installs build prerequisites, starts a real Apache
# Kafka broker (deploy/kafka.sh), runs every test in release mode against it,
# stops the broker whatever happens, checks that the benches compile, then runs
# a short smoke run of every fuzz target (deploy/fuzz.sh smoke) and the core's
# and the wire's unit tests under AddressSanitizer (deploy/asan.sh).
#
#   deploy/test.sh [extra cargo test args]
#
# RECEIPTD_TEST_BROKERS: reuse a running broker instead of starting one.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here/.."

"$here/setup.sh"

broker_dir=""
cleanup() {
  local status=$?
  if [ -n "$broker_dir" ]; then
    "$here/kafka.sh" stop "$broker_dir" || true
    # Its log is what to read after a failure; otherwise nothing needs it.
    if [ "$status" -eq 0 ]; then
      rm -rf "$broker_dir"
    else
      echo "deploy/test.sh: the broker's log and data are kept in $broker_dir" >&2
    fi
  fi
}
trap cleanup EXIT

if [ -z "${RECEIPTD_TEST_BROKERS:-}" ]; then
  broker_dir="$(mktemp -d -t receiptd-test-kafka.XXXXXX)"
  RECEIPTD_TEST_BROKERS="$("$here/kafka.sh" start "$broker_dir")" || {
    echo "deploy/test.sh: could not start the Kafka broker; the integration tests need it" >&2
    exit 1
  }
  export RECEIPTD_TEST_BROKERS
fi
echo "deploy/test.sh: Kafka broker at $RECEIPTD_TEST_BROKERS" >&2

cargo test --release --workspace "$@"
# The benches are not run here (timings are never tests), but they must keep
# compiling.
cargo bench --workspace --no-run
"$here/fuzz.sh" smoke "${RECEIPTD_FUZZ_SMOKE_SECONDS:-20}"
"$here/asan.sh"
