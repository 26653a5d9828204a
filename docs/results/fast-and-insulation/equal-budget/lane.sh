#!/usr/bin/env bash
# Equal-budget study, one seed, one lane: train (resumes), then evaluate every checkpoint.
set -euo pipefail
cd /work/exp/fi
SEED=$1; LANE=$2
export OMP_NUM_THREADS=1 PYTHONPATH=/work/code/src
COMMON=(--dataset data batch_size=32 augment=false num_workers=1 optim.peak_lr=2e-3 optim.end_lr=1e-4 max_fast_tokens=48 seed=$SEED keep_last=5)
MODEL='model_overrides={"image_keys": ["base_0_rgb"], "action_horizon": 10, "max_token_len": 40}'
R=runs/s$SEED
train() { vlaflow train "$@" "${COMMON[@]}" "$MODEL"; }
ev() { local run=$1 step=$2; local out=eval/s$SEED/${run}_$step
  [ -f $out/results.json ] || vlaflow eval metaworld --checkpoint $R/$run/checkpoints/step_$(printf %08d $step) \
    --tasks button-press-topdown-v3,door-close-v3,plate-slide-side-v3 --episodes-per-task 10 --workers 1 --output $out; }
if [ "$LANE" = a ]; then
  train --config pi05_tiny --output $R/flow --steps 900 --save-every 300
  train --config pi05_tiny --output $R/ki --steps 504 --save-every 168 model_overrides.fast_vocab_size=256 model_overrides.knowledge_insulation=true flow_weight=10
  for s in 900 300 600; do ev flow $s; done
  for s in 504 168 336; do ev ki $s; done
else
  train --config pi0fast_tiny --output $R/fast --steps 531 --save-every 177
  train --config pi05_ki_tiny_stage1 --output $R/stage1 --steps 266
  train --config pi05_ki_tiny_stage2 --output $R/stage2 --steps 252 --save-every 126 init=$R/stage1/checkpoints/step_00000266
  for s in 531 177 354; do ev fast $s; done
  ev stage2 252; ev stage1 266; ev stage2 126
fi
echo lane $LANE done
