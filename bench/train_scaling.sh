#!/usr/bin/env bash
# In one device call: the full Stream-R1 training step at real size on N GPUs (default 4, one rollout
# per GPU), stopped by SIGTERM part-way and resumed, then the same global batch on fewer GPUs (default 2, with
# N/SMALL rollouts per GPU per micro-step) for the scaling figure and as the reference losses of the resumed
# run: the trainer's draws depend on the global sample position and the micro-step index, not on the rank, so
# both layouts compute the same losses up to bf16 reduction order (tests/test_training_run.py checks it in fp32). Everything lands in $OUT: logs, one JSON per launch, and scaling.json (the summary).
#
#   bash bench/train_scaling.sh                          # 4 GPUs, then 2, global batch 4, 7 optimizer steps
#   NPROC=8 SMALL=4 GLOBAL_BATCH=8 bash bench/train_scaling.sh
#   STOP_AFTER=3 STEPS=7 ... (SIGTERM once step STOP_AFTER/STEPS is logged; the run saves after the step it is in)
#   SMOKE_ARGS="--teacher 1.3b -- --set rollout.latent_frames=6" ...   (extra bench/train_step.sh arguments)
set -uo pipefail
cd "$(dirname "$0")/.."
source bench/gpu_env.sh
NPROC=${NPROC:-4}
SMALL=${SMALL:-2}
GLOBAL_BATCH=${GLOBAL_BATCH:-$NPROC}
STEPS=${STEPS:-7}
STOP_AFTER=${STOP_AFTER:-3}
CK=${CKPT_ROOT:-/tmp/train_scaling_ckpt}
read -r -a SMOKE <<< "${SMOKE_ARGS:-}"
rm -rf "$CK"
now() { date +%s.%N; }
declare -A WALL

launch() {   # name, then bench/train_step.sh arguments; JSON to $OUT/name.json, log to $OUT/name.log
  local name=$1; shift
  LAUNCH_T0=$(now)
  bash bench/train_step.sh "$@" > "$OUT/$name.json" 2> "$OUT/$name.log" &
  LAUNCH_PID=$!
}
finish() {   # name: wait for the launch, record its wall time and return code
  local name=$1 rc
  wait "$LAUNCH_PID"; rc=$?
  WALL[$name]=$(python3 -c "print(round($(now) - $LAUNCH_T0, 1))")
  echo "$name: rc $rc, wall ${WALL[$name]} s"; [[ $rc == 0 ]] || tail -25 "$OUT/$name.log"
  return $rc
}

# 1. N GPUs with checkpointing on; SIGTERM to every worker (as a cluster's preemption does) once step
#    STOP_AFTER has been logged: the trainer finishes the step it is in, saves and leaves.
launch stop --nproc "$NPROC" --global-batch "$GLOBAL_BATCH" --steps "$STEPS" --checkpoint "$CK" --tag stop "${SMOKE[@]}"
while kill -0 "$LAUNCH_PID" 2>/dev/null; do
  if grep -q "step $STOP_AFTER/$STEPS " "$OUT/stop.log"; then
    echo "step $STOP_AFTER logged at $(date +%T): SIGTERM to the workers"
    pkill -TERM -f -- "-u -m training.run"; break
  fi
  sleep 0.5
done
finish stop || exit 1
grep -E "stop requested|checkpoint /|exported" "$OUT/stop.log"

# 2. Resume on the same N GPUs from the newest checkpoint, to the end (no second save).
launch resume --nproc "$NPROC" --global-batch "$GLOBAL_BATCH" --steps "$STEPS" --resume "$CK" --tag resume "${SMOKE[@]}"
finish resume || exit 1
grep -E "resumed from" "$OUT/resume.log" || { echo "the resumed run did not load a checkpoint"; exit 1; }
rm -rf "$CK"

# 3. The same global batch on SMALL GPUs, uninterrupted: scaling, and the resumed run's reference losses.
export CUDA_VISIBLE_DEVICES; CUDA_VISIBLE_DEVICES=$(seq -s, 0 $((SMALL - 1)))
launch ref --nproc "$SMALL" --global-batch "$GLOBAL_BATCH" --micro-batch $((NPROC / SMALL)) --steps "$STEPS" --tag ref "${SMOKE[@]}"
finish ref || exit 1

echo "{\"stop\": ${WALL[stop]}, \"resume\": ${WALL[resume]}, \"ref\": ${WALL[ref]}}" > "$OUT/walls.json"
python3 bench/train_scaling_summary.py "$OUT"
