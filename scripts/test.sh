#!/usr/bin/env bash
# Installs dependencies, builds in ./build and runs every test. With AMALGAM_SANITIZE_STAGE=1 it
# then builds again in ./build-asan with AddressSanitizer + UndefinedBehaviorSanitizer and runs
# the suite a second time there (docs/reliability.md; opt-in until one complete run is green).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
launcher=()
if command -v ccache >/dev/null; then launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache); fi
jobs="$(nproc)"

cmake -S . -B build -DCMAKE_BUILD_TYPE=Release "${launcher[@]}"
cmake --build build -j"$jobs"
ctest --test-dir build --output-on-failure -j"$jobs"

if [ "${AMALGAM_SANITIZE_STAGE:-0}" != 1 ]; then exit 0; fi
echo "== second stage: the suite under AddressSanitizer + UBSan (build-asan)"
# clang compiles this build a third faster than g++; -O1 keeps the instrumented tests quick and
# -g1 (line tables) gives stack traces with file:line. Any UBSan report fails the test that
# triggered it; SIGBUS is left to amalgam's own handler (the truncated-input fault test checks
# it). Leak checking is off until a run of the whole suite shows it leak-free (LeakSanitizer
# works on this machine; the suite has not been checked with it yet).
export ASAN_OPTIONS="detect_leaks=0:handle_sigbus=0"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
CC=clang CXX=clang++ cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -g1" -DAMALGAM_SANITIZE=ON -DAMALGAM_BENCHMARKS=OFF \
  "${launcher[@]}"
cmake --build build-asan -j"$jobs"
# Left out under the sanitizers (they run in the first stage): see docs/reliability.md.
asan_exclude='^$'
ctest --test-dir build-asan --output-on-failure -j"$jobs" -E "$asan_exclude"
