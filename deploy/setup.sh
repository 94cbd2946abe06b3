#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks to build and test receiptd:
# libclang (the rocksdb crate's bindgen needs it). Rust, Java 17, Maven and
# Python are expected on the machine. Idempotent; quiet when all is there.
set -euo pipefail

need=()
# Ask dpkg: a machine may carry libclang-cpp (which bindgen cannot use)
# without libclang itself.
if ! dpkg-query -W -f='${Status}' libclang-dev 2>/dev/null | grep -q "install ok installed"; then
  need+=(libclang-dev)
fi
for tool in cc c++ make cmake; do
  command -v "$tool" >/dev/null || need+=(build-essential cmake)
done
if [ ${#need[@]} -gt 0 ]; then
  echo "deploy/setup.sh: installing ${need[*]}" >&2
  if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >&2
fi
for tool in cargo java mvn python3; do
  command -v "$tool" >/dev/null || { echo "deploy/setup.sh: $tool is required but not installed" >&2; exit 1; }
done
