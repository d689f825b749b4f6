#!/usr/bin/env bash
# Installs the Debian 12 packages amalgam builds with. Idempotent.
set -euo pipefail
pkgs=(build-essential cmake g++ nlohmann-json3-dev libyaml-dev libcli11-dev libfmt-dev
      libgtest-dev libgmock-dev libbenchmark-dev libopenblas-dev libdnnl-dev libeigen3-dev libssl-dev
      libicu-dev libopenmpi-dev zlib1g-dev
      # the sanitizer stage of scripts/test.sh and the fuzz targets: clang, its OpenMP and
      # sanitizer runtimes
      clang libomp-dev libclang-rt-dev)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi
