#!/usr/bin/env bash
# A replicate of the shapes world's headline comparison (DMD against Stream-R1): DMD and Stream-R1 distilled again from the
# same ODE student with another schedule seed, side by side on one GPU, then both evaluated on the same held-out
# prompts and seeds. Carry runs/shapes/{vae,teacher,ode_init/exports,reward/reward} (the reward row-packed, as the
# bundle ships it, so Stream-R1 is weighted by the same reward model as the first run). One `nvidia-h200` call:
#
#   SEED=1 PROMPTS=48 bash bench/shapes_replicate.sh     # -> $OUT/{dmd,stream_r1,eval}.log, eval.json, eval.md
set -uo pipefail
cd "$(dirname "$0")/.."
[ -f bench/gpu_env.sh ] && [ -n "${OUT:-}" ] && source bench/gpu_env.sh
OUT=${OUT:-/tmp/shapes_replicate}; mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 SHAPES_EXTRA="--set schedule.seed=${SEED:-1}"
t0=$(date +%s)
# students stay on the machine (COPY_TO outside $OUT): only logs and the evaluation come back
(COPY_TO=/tmp/replicate/dmd bash bench/shapes_train.sh dmd > "$OUT/dmd.log" 2>&1; echo "dmd rc $? at $(( $(date +%s) - t0 )) s") &
COPY_TO=/tmp/replicate/stream_r1 bash bench/shapes_train.sh stream_r1 > "$OUT/stream_r1.log" 2>&1
echo "stream_r1 rc $? at $(( $(date +%s) - t0 )) s"
wait
timeout "${EVAL_BUDGET:-170}" python3 -m training.shapes.bundle --prompts "${PROMPTS:-48}" --long-count 0 \
  --models dmd,stream_r1 --no-bundle > "$OUT/eval.log" 2>&1
echo "eval rc $? at $(( $(date +%s) - t0 )) s"
cp runs/shapes/eval.json runs/shapes/eval.md "$OUT"/ 2>/dev/null
grep -hE "^stage |step 500/" "$OUT"/dmd.log "$OUT"/stream_r1.log; grep -E "^\|" "$OUT/eval.log"
