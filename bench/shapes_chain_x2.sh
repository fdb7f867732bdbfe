#!/usr/bin/env bash
# The shapes-world students in one device call on 2 GPUs (`nvidia-h200-x2`): GPU 0 runs ode_init then dmd; GPU 1
# trains the reward model, waits for ode_init's export, then runs stream_r1 (which needs both). Needs
# runs/shapes/vae and runs/shapes/teacher (carry them; the teacher may be an fp16 copy, bench/half_weights.py).
# Returns at most 8 files: the students (fp16, in parts), the reward model row-packed (reward_packed.tar, ~3 MB),
# one tar of metrics/configs, one log.
#
#   bash bench/shapes_chain_x2.sh                  # SHAPES_EXTRA / BUDGET_<stage> as for bench/shapes_train.sh
#   GPUS="0 0" CHAIN0=dmd bash bench/shapes_chain_x2.sh   # one GPU, both chains side by side (the shapes models are
#                                                  # launch-bound: two processes share a GPU well); ode_init carried
set -uo pipefail
cd "$(dirname "$0")/.."
[ -f bench/gpu_env.sh ] && [ -n "${OUT:-}" ] && source bench/gpu_env.sh
OUT=${OUT:-/tmp/shapes_chain}; mkdir -p "$OUT"
export OUT
ODE=runs/shapes/ode_init/exports/student_latest.safetensors
read -r G0 G1 <<< "${GPUS:-0 1}"
CHAIN0=${CHAIN0:-ode_init dmd}
STAGE=/tmp/shapes_chain_stage; rm -rf "$STAGE"; mkdir -p "$STAGE"
[[ " $CHAIN0 " == *" ode_init "* ]] && rm -f "$ODE"           # else the carried ODE student is used
[ -f "$ODE" ] || [[ " $CHAIN0 " == *" ode_init "* ]] || { echo "CHAIN0 has no ode_init and $ODE is missing"; exit 2; }
t0=$(date +%s)
(CUDA_VISIBLE_DEVICES=$G0 COPY_TO=$STAGE/gpu0 bash bench/shapes_train.sh $CHAIN0; echo "gpu0 rc $? at $(( $(date +%s) - t0 )) s") \
  > "$STAGE/gpu0.log" 2>&1 &
(CUDA_VISIBLE_DEVICES=$G1 COPY_TO=$STAGE/gpu1 bash bench/shapes_train.sh reward || { echo "gpu1 rc $? (reward)"; exit 6; }
 until [ -f "$ODE" ]; do                                  # the export appears atomically when ode_init ends
   pgrep -f "recipe shapes_ode_init" >/dev/null || [ -f "$ODE" ] || { echo "ode_init ended without an export"; exit 5; }
   sleep 2
 done
 CUDA_VISIBLE_DEVICES=$G1 COPY_TO=$STAGE/gpu1s bash bench/shapes_train.sh stream_r1; echo "gpu1 rc $? at $(( $(date +%s) - t0 )) s") \
  > "$STAGE/gpu1.log" 2>&1 &
wait
mv "$STAGE"/gpu*/*.safetensors* "$STAGE"/gpu*/reward_packed.tar "$OUT"/ 2>/dev/null
tar -C "$STAGE" -cf "$OUT/small.tar" $(cd "$STAGE" && ls -d gpu*/*.tar 2>/dev/null)
cat "$STAGE/gpu0.log" <(echo "==== GPU 1 ====") "$STAGE/gpu1.log" > "$OUT/chain.log"
grep -hE "^stage |rc [0-9]+ at" "$OUT/chain.log"
ls -la "$OUT"
