#!/usr/bin/env bash
# Builds the libFuzzer targets (fuzz/*_fuzz.cc) with clang, ASan and UBSan in ./build-fuzz and runs
# each for SECONDS seconds (default 60) on a seed corpus made from the zoo and the test data.
# Crashing inputs are written to build-fuzz/crashes/<target>/; each one found goes to
# tests/data/fuzz/<target>/ (tests/yaml_test.cc runs the recipe ones) or a bad-input case.
#   scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
shift || true
CC=clang CXX=clang++ cmake -S . -B build-fuzz -DAMALGAM_FUZZ=ON -DBUILD_TESTING=OFF \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo ${CMAKE_CXX_COMPILER_LAUNCHER:+-DCMAKE_CXX_COMPILER_LAUNCHER=$CMAKE_CXX_COMPILER_LAUNCHER} >/dev/null
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(safetensors_fuzz index_fuzz config_fuzz tokenizer_fuzz recipe_fuzz task_fuzz)
fi
cmake --build build-fuzz -j"$(nproc)" --target "${targets[@]}"

# The targets write each input to a scratch file: on tmpfs that costs no disk I/O.
if [ -z "${TMPDIR:-}" ] && [ -d /dev/shm ] && [ -w /dev/shm ]; then export TMPDIR=/dev/shm; fi

seed() {  # seed <target> <files...>
  local dir="build-fuzz/corpus/$1"
  shift
  mkdir -p "$dir"
  for f in "$@"; do cp -f "$f" "$dir/$(echo "$f" | tr '/' '_')"; done
}
seed safetensors_fuzz tests/data/transformers/*/model.safetensors
mkdir -p build-fuzz/corpus/index_fuzz
echo '{"metadata": {"total_size": 8}, "weight_map": {"w": "model-00001-of-00001.safetensors"}}' \
  >build-fuzz/corpus/index_fuzz/index.json
seed config_fuzz data/zoo/*/config.json tests/data/transformers/*/config.json
seed tokenizer_fuzz data/zoo/base/tokenizer.json tests/data/transformers/qwen2/tokenizer.json
seed recipe_fuzz $(git ls-files '*.yaml' '*.yml' | head -50)
seed task_fuzz data/zoo/eval/*.json
# Every finding kept as a regression input (tests/data/fuzz/TARGET/) stays in its corpus.
for t in "${targets[@]}"; do
  if [ -d "tests/data/fuzz/$t" ]; then seed "$t" tests/data/fuzz/"$t"/*; fi
done

for t in "${targets[@]}"; do
  mkdir -p "build-fuzz/crashes/$t"
  echo "== $t: ${seconds}s"
  # -rss_limit_mb: a parser must refuse huge claims, not allocate them; -timeout: an input that
  # takes 20 s is a hang (a finding), not something to wait 20 minutes for.
  "build-fuzz/$t" "build-fuzz/corpus/$t" -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=20 \
    -max_len=65536 -artifact_prefix="build-fuzz/crashes/$t/" -print_final_stats=1 2>&1 |
    grep -E "^(#[0-9]+ +DONE|stat::number_of_executed_units|==[0-9]+==ERROR|SUMMARY)" || true
done
