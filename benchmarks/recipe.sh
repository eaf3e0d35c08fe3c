#!/usr/bin/env bash
# The CPU recipe for COMP5329 (docs/recipes.md), end to end in an empty RUNS folder, each make step timed.
#   benchmarks/recipe.sh DATA [RUNS]        (or: make bench-recipe DATA=... RUNS=...)
# Writes RUNS/comp5329/recipe_times.tsv (step, seconds) and ends with the submission's fully nested score.
set -euo pipefail
DATA=${1:?usage: benchmarks/recipe.sh DATA [RUNS]}
RUNS=${2:-runs/recipe}
if [ -e "$RUNS/comp5329" ]; then
    echo "$RUNS/comp5329 exists: the recipe is timed from scratch (caches included); pick an empty RUNS" >&2
    exit 2
fi
mkdir -p "$RUNS/comp5329"
times="$RUNS/comp5329/recipe_times.tsv"
common=(COMP=comp5329 "DATA=$DATA" "RUNS=$RUNS")
step() {
    local t0; t0=$(date +%s)
    make --no-print-directory "$@" "${common[@]}"
    printf '%s\t%s\n' "make $*" "$(( $(date +%s) - t0 ))" >> "$times"
}
start=$(date +%s)
step folds
step train MODEL=captions
step train MODEL=captions_minilm
# The two image members enter the 100 MB budget as full-data refits (9.4 MB each instead of 47 MB of folds).
step train MODEL=tf_efficientnet_lite2_cpu FULLFIT=1
step train MODEL=tf_efficientnet_lite2_cpu_bce FULLFIT=1
# Issue 21: the ASL member at 384 px with the attention head (its own trunk cache at 384 px, ~12 min here).
step train MODEL=tf_efficientnet_lite2_cpu NAME=lite2_attn_384 FULLFIT=1 IMG=384 SET=head=attention
step submit MODELS=captions,captions_minilm,tf_efficientnet_lite2_cpu,tf_efficientnet_lite2_cpu_bce,lite2_attn_384
printf '%s\t%s\n' "total" "$(( $(date +%s) - start ))" >> "$times"
column -t -s $'\t' "$times"
sidecar=$(ls -t "$RUNS"/comp5329/submissions/*.json | head -n 1)
python3 - "$sidecar" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
print(f"{sys.argv[1]}: fully nested micro-F1 {s['nested_score']:.4f}, in-sample {s['oof_score']:.4f}")
PY
