#!/usr/bin/env bash
# The accuracy table of docs/moe.md: MoEs of the zoo's MLP-only experts (hidden, cheap_embed and
# calibrated routers, one expert per token) next to each expert alone, on items 100..199 of each
# task; the routers' prompts and calibration text come from items 0..99.
# Usage: scripts/moe_zoo_table.sh [BUILD_DIR] [WORK_DIR]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
amalgam=${1:-$root/build}/amalgam
work=${2:-$(mktemp -d)}
mkdir -p "$work"
python3 - "$root/data/zoo/eval" "$work" <<'PY'
import json, sys
src, work = sys.argv[1], sys.argv[2]
for t in ["add", "rev", "sort"]:
    items = json.load(open(f"{src}/{t}.json"))
    json.dump(items[100:], open(f"{work}/{t}-test.json", "w"))
    with open(f"{work}/{t}-cal.jsonl", "w") as f:
        for it in items[:100]:
            f.write(json.dumps(it) + "\n")
    # Router prompts for hidden / cheap_embed: five calibration prompts (without answers).
    json.dump([it["prompt"] for it in items[:5]], open(f"{work}/{t}-prompts.json", "w"))
PY
write_config() {  # gate_mode extra-calibration-lines
  local mode=$1 extra=${2:-}
  echo "base_model: $root/data/zoo/base"
  echo "gate_mode: $mode"
  echo "experts_per_token: 1"
  if [ -n "$extra" ]; then printf '%b\n' "$extra"; fi
  echo "experts:"
  for t in add rev sort; do
    echo "  - source_model: $root/data/zoo/mlp-$t-expert"
    echo "    positive_prompts: $(cat "$work/$t-prompts.json")"
    if [ "$mode" = calibrated ]; then echo "    calibration_data: $work/$t-cal.jsonl"; fi
  done
}
tasks=(-t "$work/add-test.json" -t "$work/rev-test.json" -t "$work/sort-test.json")
row() {  # name model
  printf '| %s |' "$1"
  "$amalgam" -q eval "$2" "${tasks[@]}" | awk '$2 == "exact_match" {printf " %.2f |", $3}'
  echo
}
echo "| model | add | rev | sort |"
echo "|---|---|---|---|"
for t in add rev sort; do row "mlp-$t-expert alone" "$root/data/zoo/mlp-$t-expert"; done
write_config hidden > "$work/hidden.yaml"
write_config cheap_embed > "$work/cheap_embed.yaml"
write_config calibrated > "$work/calibrated.yaml"
write_config calibrated "calibration:\n  bos: auto" > "$work/calibrated-bos.yaml"
# BOS to a fourth expert mixing add's and sort's MLPs in layers 0-1, to rev above (docs/moe.md).
write_config calibrated "calibration:\n  bos: [3, 3, 1, 1]\n  bos_expert: [0.85, 0, 0.15]" \
  > "$work/calibrated-bos-mix.yaml"
for c in hidden cheap_embed calibrated calibrated-bos calibrated-bos-mix; do
  "$amalgam" -q moe "$work/$c.yaml" -o "$work/moe-$c" --force
  row "MoE, gate_mode $c" "$work/moe-$c"
done
