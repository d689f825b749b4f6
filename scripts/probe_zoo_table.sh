#!/usr/bin/env bash
# The probe table of docs/probe.md: linear probes on zoo hidden states, causal vs --unmasked.
# Two sets from data/zoo/eval, items 0..99 to train and 100..199 to evaluate:
#   task: which task a prompt belongs to (add 0 / rev 1 / sort 2);
#   addition: whether "a+b=c" is right (label 1) or off by 1, 2, 10 or 100 (label 0), balanced.
# Usage: scripts/probe_zoo_table.sh [AMALGAM] [WORKDIR]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
amalgam="${1:-$root/build/amalgam}"
work="${2:-$(mktemp -d)}"
zoo="$root/data/zoo"
mkdir -p "$work"
python3 - "$zoo/eval" "$work" <<'PY'
import json, sys
ev, out = sys.argv[1], sys.argv[2]
tasks = {t: json.load(open(f"{ev}/{t}.json")) for t in ("add", "rev", "sort")}
for name, lo, hi in (("train", 0, 100), ("test", 100, 200)):
    with open(f"{out}/task-{name}.jsonl", "w") as f:
        for label, t in enumerate(("add", "rev", "sort")):
            for it in tasks[t][lo:hi]:
                f.write(json.dumps({"text": it["prompt"], "label": label}) + "\n")
    with open(f"{out}/addition-{name}.jsonl", "w") as f:
        for i, it in enumerate(tasks["add"][lo:hi]):
            wrong = str(int(it["answer"]) + (1, 2, 10, 100)[i % 4])
            f.write(json.dumps({"text": it["prompt"] + it["answer"], "label": 1}) + "\n")
            f.write(json.dumps({"text": it["prompt"] + wrong, "label": 0}) + "\n")
PY
probe() {  # set models pool layer flag -> eval accuracy
  local set=$1 models=$2 pool=$3 layer=$4 flag=$5
  for s in train test; do
    "$amalgam" -q embed "$models" --file "$work/$set-$s.jsonl" -o "$work/f-$s.safetensors" \
      --pool "$pool" $layer $flag
  done
  "$amalgam" probe "$work/f-train.safetensors" --eval "$work/f-test.safetensors" |
    sed -n 's/.*eval accuracy \([0-9.]*\).*/\1/p'
}
printf '| features | attention | task, final, mean | task, final, last | addition correct, final, last | addition correct, final, mean |\n'
printf '|---|---|---|---|---|---|\n'
for m in base add-expert rev-expert sort-expert all; do
  models="$zoo/$m"
  [[ $m == all ]] && models="$zoo/base,$zoo/add-expert,$zoo/rev-expert,$zoo/sort-expert"
  for flag in "" --unmasked; do
    printf '| %s | %s | %s | %s | %s | %s |\n' "$m" "${flag:-causal}" \
      "$(probe task "$models" mean "" "$flag")" "$(probe task "$models" last "" "$flag")" \
      "$(probe addition "$models" last "" "$flag")" "$(probe addition "$models" mean "" "$flag")"
  done
done
