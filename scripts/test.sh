#!/usr/bin/env bash
# Installs dependencies, builds in ./build and runs every test; then builds again in ./build-asan
# with AddressSanitizer + UndefinedBehaviorSanitizer (and LeakSanitizer) and runs the suite a
# second time there (docs/reliability.md). AMALGAM_SANITIZE_STAGE=0 skips the second stage.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
launcher=()
if command -v ccache >/dev/null; then launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache); fi
jobs="$(nproc)"

cmake -S . -B build -DCMAKE_BUILD_TYPE=Release "${launcher[@]}"
cmake --build build -j"$jobs"
ctest --test-dir build --output-on-failure -j"$jobs"

echo "== first stage (build/): ${SECONDS} s"

if [ "${AMALGAM_SANITIZE_STAGE:-1}" = 0 ]; then exit 0; fi
echo "== second stage: the suite under AddressSanitizer + UBSan + LeakSanitizer (build-asan)"
stage_start=$SECONDS
# clang compiles this build a third faster than g++; -O1 keeps the instrumented tests quick and
# -g1 (line tables) gives stack traces with file:line. Any UBSan report fails the test that
# triggered it; SIGBUS is left to amalgam's own handler (the truncated-input fault test checks
# it). Leaks are reported and fail the process; the suppressions name library code only.
export ASAN_OPTIONS="detect_leaks=1:handle_sigbus=0"
export LSAN_OPTIONS="suppressions=$PWD/scripts/lsan.supp:print_suppressions=0"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
CC=clang CXX=clang++ cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -g1" -DAMALGAM_SANITIZE=ON -DAMALGAM_BENCHMARKS=OFF \
  "${launcher[@]}"
cmake --build build-asan -j"$jobs"
echo "== second stage built: $((SECONDS - stage_start)) s"
# Left out here, each run by the first stage: llama.cpp's own build and the conformance tests
# that drive its tools (minutes of uninstrumented llama.cpp; amalgam's GGUF writer and engine are
# covered here by gguf_*_test and the other conformance suites).
asan_exclude='^(llama_cpp_build|LlamaCpp)'
ctest --test-dir build-asan --output-on-failure -j"$jobs" -E "$asan_exclude"
echo "== second stage: $((SECONDS - stage_start)) s; both stages: ${SECONDS} s"
