#!/usr/bin/env bash
# Makes sure the nightly toolchain is installed (deploy/fuzz.sh and
# deploy/asan.sh need it); installs a minimal one when missing, and fails
# loudly if it cannot.
set -euo pipefail
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "deploy/nightly.sh: installing the nightly toolchain" >&2
  rustup toolchain install nightly --profile minimal >&2 || {
    echo "deploy/nightly.sh: could not install the nightly toolchain" >&2
    exit 1
  }
fi
