#!/usr/bin/env bash
# Recipe-search throughput: candidate evaluations per minute, the share of time spent merging,
# and the speedup of 2 MPI ranks over 1, on the small zoo and on zoo/mid (PS over add + rev + sort
# with dare_ties, 3 tasks x 40 items, likelihood fitness), measured side by side in one run.
#
#   bench/evolve.sh [ZOO_DIR] [EVALUATIONS]     (ZOO_DIR holds base/, *-expert/, eval/ and mid/)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
zoo="${1:-$root/../shared/zoo}"
evals="${2:-60}"
amalgam="$root/build/amalgam"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

config() {  # dir
  local d="$1"
  cat <<YAML
base_model: $d/base
models: [$d/add-expert, $d/rev-expert, $d/sort-expert]
search: ps
method: dare_ties
tasks:
  - {file: $zoo/eval/add.json, limit: 40, metric: likelihood}
  - {file: $zoo/eval/rev.json, limit: 40, metric: likelihood}
  - {file: $zoo/eval/sort.json, limit: 40, metric: likelihood}
budget: {evaluations: $evals}
population: 12
seed: 1
YAML
}

# run NAME DIR RANKS -> prints "evals/min merge-share seconds"
run() {
  local name="$1" dir="$2" ranks="$3" out="$work/$1-$3"
  config "$dir" > "$work/$name.yaml"
  if [ "$ranks" -gt 1 ]; then
    OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
      mpirun --oversubscribe -n "$ranks" "$amalgam" -q evolve "$work/$name.yaml" -o "$out" -t 1 \
      --no-best-model > /dev/null
  else
    "$amalgam" -q evolve "$work/$name.yaml" -o "$out" -t 1 --no-best-model > /dev/null
  fi
  python3 - "$out/summary.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
print(f"{60 * s['evaluations'] / s['seconds']:.1f} {100 * s['merge_seconds'] / s['seconds']:.0f}% {s['seconds']:.1f}")
PY
}

echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| zoo | ranks | evaluations/min | time merging | seconds |"
echo "|---|---|---|---|---|"
for z in small mid; do
  dir="$zoo"; [ "$z" = mid ] && dir="$zoo/mid"
  read -r rate share secs < <(run "$z" "$dir" 1)
  echo "| $z | 1 | $rate | $share | $secs |"
  if command -v mpirun > /dev/null; then
    read -r rate2 share2 secs2 < <(run "$z" "$dir" 2)
    echo "| $z | 2 | $rate2 | $share2 | $secs2 (speedup $(python3 -c "print(f'{$secs/$secs2:.2f}')")x) |"
  fi
done
echo
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
