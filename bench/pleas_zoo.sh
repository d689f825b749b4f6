#!/usr/bin/env bash
# The table of docs/pleas.md: zoo/rev-expert (original init) and zoo/initb/sort-expert (another
# init) merged by naive averaging, permutation-aligned averaging and PLeaS at several widths,
# against each expert and their logit ensemble. Accuracy on items 100-199 of rev and sort (the
# calibration text uses items 0-99), held-out nll on the first 64 rows of zoo/eval/heldout.txt
# (the calibration text uses only the second half of that file).
#
#   bench/pleas_zoo.sh [WORK_DIR]   (default bench/.cache/pleas; run from the repository root)
set -euo pipefail
root=$(pwd)
amalgam=${AMALGAM:-$root/build/amalgam}
zoo=$root/data/zoo
work=${1:-$root/bench/.cache/pleas}
mkdir -p "$work"
a=$zoo/rev-expert
b=$zoo/initb/sort-expert

python3 - "$zoo" "$work" <<'PY'
import json, random, sys
zoo, work = sys.argv[1], sys.argv[2]
docs = []
for task in ("rev", "sort"):
    items = json.load(open(f"{zoo}/eval/{task}.json"))
    json.dump(items[100:200], open(f"{work}/{task}-100-199.json", "w"), indent=0)
    docs += [it["prompt"] + it["answer"] for it in items[:100]]
random.Random(0).shuffle(docs)
text = open(f"{zoo}/eval/heldout.txt").read()
cut = text.index("\n\n", len(text) // 2) + 2
open(f"{work}/calibration.txt", "w").write("\n\n".join(docs) + "\n\n" + text[cut:])
PY

timed() {  # timed LOG CMD...: wall seconds and peak RSS of one command into LOG
  /usr/bin/time -f "%e %M" -o "$1.time" "${@:2}" > "$1" 2>&1
  read -r secs kb < "$1.time"
  printf "%s s, %s MB" "$secs" $((kb / 1024))
}

linear() {  # linear RECIPE MODEL_B
  cat > "$1" <<YAML
merge_method: linear
dtype: float32
models:
  - model: $a
    parameters:
      weight: 0.5
  - model: $2
    parameters:
      weight: 0.5
YAML
}

declare -A cost
cost[wm]=$(timed "$work/align-weight.log" "$amalgam" align "$a" "$b" -o "$work/b-weight" --force)
cost[am]=$(timed "$work/align-activation.log" "$amalgam" align "$a" "$b" -o "$work/b-activation" \
  --method activation --data "$work/calibration.txt" --rows 64 --force)
linear "$work/naive.yaml" "$b"
linear "$work/aligned-weight.yaml" "$work/b-weight"
linear "$work/aligned-activation.yaml" "$work/b-activation"
for w in 1.0 1.25 1.5 2.0; do
  cost[p$w]=$(timed "$work/pleas-$w.log" "$amalgam" pleas "$a" "$b" --data "$work/calibration.txt" \
    --rows 64 --width "$w" -o "$work/pleas-$w" --force)
  cost[s$w]=$(timed "$work/pleas-seq-$w.log" "$amalgam" pleas "$a" "$b" \
    --data "$work/calibration.txt" --rows 64 --width "$w" --sequential -o "$work/pleas-seq-$w" --force)
done

tasks=(-t "$work/rev-100-199.json" -t "$work/sort-100-199.json" -t "$zoo/eval/heldout.txt")
row() {  # row LABEL SIZE COST EVAL_ARGS...
  local out
  out=$("$amalgam" -q eval "${@:4}" "${tasks[@]}")
  local rev sort nll
  rev=$(awk '$1 ~ /^rev/ && $2=="exact_match"{print $3}' <<< "$out")
  sort=$(awk '$1 ~ /^sort/ && $2=="exact_match"{print $3}' <<< "$out")
  nll=$(awk '$1=="heldout" && $2=="nll"{print $3}' <<< "$out")
  printf "| %s | %s | %.2f | %.2f | %.3f | %s |\n" "$1" "$2" "$rev" "$sort" "$nll" "$3"
}
params() { python3 -c "import json,sys; c=json.load(open(sys.argv[1]+'/config.json')); \
print(f\"{c['hidden_size']} / {c['intermediate_size']} / {c['num_attention_heads']}:{c['num_key_value_heads']}\")" "$1"; }

echo "| model | hidden / intermediate / heads:kv | rev 100-199 | sort 100-199 | held-out nll | time, peak RSS of the command |"
echo "|---|---|---|---|---|---|"
row "zoo/rev-expert (A)" "$(params "$a")" "-" "$a"
row "initb/sort-expert (B)" "$(params "$b")" "-" "$b"
row "naive average (A+B)/2" "$(params "$a")" "-" "$work/naive.yaml"
row "weight-matched average (A+P(B))/2" "$(params "$a")" "align: ${cost[wm]}" \
  "$work/aligned-weight.yaml"
row "activation-matched average" "$(params "$a")" "align: ${cost[am]}" \
  "$work/aligned-activation.yaml"
for w in 1.0 1.25 1.5 2.0; do
  row "PLeaS, width $w" "$(params "$work/pleas-$w")" "pleas: ${cost[p$w]}" "$work/pleas-$w"
done
for w in 1.0 1.25 1.5 2.0; do
  row "PLeaS --sequential, width $w" "$(params "$work/pleas-seq-$w")" "pleas: ${cost[s$w]}" \
    "$work/pleas-seq-$w"
done
row "logit ensemble (A+B)/2 (2 models)" "2 x $(params "$a")" "-" "$a" \
  --proxy-expert "$b" --proxy-anti "$a" --proxy-alpha 0.5
