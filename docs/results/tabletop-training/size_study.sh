#!/usr/bin/env bash
# Model size x precision on the tabletop mixture at equal CPU budgets (docs/results/tabletop-training.md).
#   [SIZES=FILE] bash size_study.sh DATA OUT [BUDGET_CPU_S [VARIANT...]]   (DATA: a `vlaflow generate tabletop` directory)
# Each run trains pi05_tabletop_tiny, one compute thread, batch 16, for BUDGET_CPU_S / (its CPU
# seconds per step) steps, the step costs measured on the machine in alternation by
#   python -m vlaflow.bench.train --dataset DATA --config pi05_tabletop_tiny batch_size=16 --variant ... --json FILE
# (SIZES, default sizes.json next to this script: the machine with native bf16 units; sizes_avx2.json:
# the AVX2-only machine). VARIANTs are names in that file (default: tiny_f32 x2_bf16 x4_bf16). 10% of
# the episodes are held out; the validation loss is computed 6 times per run. Runs go two at a time.
set -euo pipefail
DATA=$1; OUT=$2; BUDGET=${3:-720}; shift $(( $# < 3 ? $# : 3 ))
HERE=$(cd "$(dirname "$0")" && pwd)
SIZES=${SIZES:-$HERE/sizes.json}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
MODELS=$(python - "$SIZES" "$BUDGET" "${@:-tiny_f32 x2_bf16 x4_bf16}" <<'PY'
import json, sys
rows = {r["variant"]: r for r in json.load(open(sys.argv[1]))}
for name in " ".join(sys.argv[3:]).split():
    r = rows[name]
    steps = int(float(sys.argv[2]) / (r["data_s"] + r["step_s"]))
    overrides = [o for o in r["overrides"] if o != "batch_size=16"]
    print(name, steps, json.dumps(overrides))
PY
)
run() {  # run NAME STEPS OVERRIDES_JSON
  local name=$1 steps=$2 overrides=$3
  local every=$(( steps / 6 > 0 ? steps / 6 : 1 ))
  local args=(); while IFS= read -r o; do [ -n "$o" ] && args+=("$o"); done < <(python -c 'import json,sys; print("\n".join(json.loads(sys.argv[1])))' "$overrides")
  local resume=(); [ -d "$OUT/$name/checkpoints" ] && resume=(--resume)
  if [ ${#resume[@]} -gt 0 ]; then vlaflow train --output "$OUT/$name" --resume > "$OUT/$name.log" 2>&1; return; fi
  vlaflow train --config pi05_tabletop_tiny --dataset "$DATA" --output "$OUT/$name" --steps "$steps" \
    batch_size=16 num_workers=0 augment=false val_fraction=0.1 val_every=$every save_every=$every \
    keep_last=2 seed=0 "${args[@]}" > "$OUT/$name.log" 2>&1
}
mkdir -p "$OUT"
echo "$MODELS" > "$OUT/plan.txt"
pids=()
while read -r name steps overrides; do
  run "$name" "$steps" "$overrides" & pids+=($!)
  if [ ${#pids[@]} -ge 2 ]; then wait "${pids[0]}" || echo "$name: failed, see $OUT/$name.log"; pids=("${pids[@]:1}"); fi
done <<< "$MODELS"
wait
echo "done: $OUT"
