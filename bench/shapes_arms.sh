#!/usr/bin/env bash
# The paired test of reward weighting in the shapes world (bench/SHAPES.md, 2026-12-07, "Does reward weighting
# help?"): plain DMD, Stream-R1 and the shuffled control, each from the same ODE student with the same seeds and
# prompts (recipes shapes_arm_*), then every student on the same held-out prompts, compared prompt by prompt.
#
#   bash bench/shapes_arms.sh [STEP ...]          (default: start gate arms eval)
#   start   the shapes VAE, teacher and ODE student (bench/shapes_train.sh vae teacher ode_init), skipped when
#           runs/shapes already has their files (carry them in: the device machine starts bare)
#   gate    python -m training.shapes.gate --runs runs/shapes: 64 rollouts of the ODE student, Spearman(analytic r,
#           checker) >= 0.3 or the steps after it do not run (GATE=off skips it); its beta_half_ess (the beta at which
#           W_inter keeps an effective sample size of half the batch on these rollouts) becomes the reward arms' beta
#   arms    for each training seed in $SEEDS (default "0 1") and arm in $ARMS (default "dmd stream_r1 shuffled"):
#           python -m training.run --recipe shapes_arm_<arm> --set schedule.seed=<seed>
#           --set output_dir=runs/shapes/arms/<arm>_s<seed>; $PARALLEL runs at once on one GPU (default 3); a run
#           that already finished is left as it is, a stopped one resumes
#   eval    python -m training.shapes.arms --only <arm>_s<seed> for every run, $PARALLEL at once on the GPU (each
#           student's scored videos are kept beside it), then python -m training.shapes.arms --seeds <SEEDS,
#           comma-separated> --prompts $PROMPTS (default 128) merges them into the paired comparison
#   time    seconds per step of each arm run in the logs (the trainer's `s/step` at its last log line)
# $STEPS (optional) overrides the recipes' 1,000 steps (a short timing run); MPS=1 starts CUDA's multi-process
# service first, so the runs that share the GPU run their kernels side by side instead of taking turns.
# $ARMS_TIMEOUT (seconds, optional) sends each run SIGTERM after that long: it saves a checkpoint and stops, and the
# next `arms` (a later device call on the warm machine) resumes it. Set it below the call's limit minus the eval.
# $ARMS_DEADLINE (seconds since the epoch, optional) does the same at that time, however long the steps before took.
# With $OUT set (the lent GPU machine), one archive goes there, arms_return.tar (in parts of 15 MiB when larger; the
# device returns at most 8 files), laid out as runs/shapes so that `cat arms_return.tar* | tar -x -C runs/shapes`
# restores it: the gate, the logs, the evaluation, every run's metrics.jsonl, config.json and scored videos, and the
# students named in $STUDENTS (e.g. "stream_r1_s0", or all) as fp16 exports at arms/<run>/exports/.
set -uo pipefail
cd "$(dirname "$0")/.."
[ -n "${OUT:-}" ] && source bench/gpu_env.sh                   # $OUT, PYTHONPATH
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
SEEDS=${SEEDS:-0 1}; ARMS=${ARMS:-dmd stream_r1 shuffled}; PARALLEL=${PARALLEL:-3}
R=runs/shapes
mps_on() {     # MPS=1: CUDA's multi-process service, so the processes that share the GPU run side by side
  [ "${MPS:-0}" = 1 ] || return 0
  if command -v nvidia-cuda-mps-control >/dev/null; then
    export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps_pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps_log
    mkdir -p /tmp/mps_pipe /tmp/mps_log && nvidia-cuda-mps-control -d && echo "MPS: started"
  else
    echo "MPS: nvidia-cuda-mps-control not found, the runs take turns on the GPU"
  fi
}
mps_off() { [ "${MPS:-0}" = 1 ] && command -v nvidia-cuda-mps-control >/dev/null && echo quit | nvidia-cuda-mps-control; true; }
all_runs() { for seed in $SEEDS; do for arm in $ARMS; do echo "$arm $seed"; done; done; }
wait_slot() { while [ "$(jobs -rp | wc -l)" -ge "$PARALLEL" ]; do sleep 2; done; }   # $PARALLEL jobs at once
for step in ${@:-start gate arms eval}; do
  case $step in
    start) need=()
           [ -f $R/vae/vae.safetensors ] || need+=(vae)
           [ -f $R/teacher/teacher.safetensors ] || need+=(teacher)
           [ -f $R/ode_init/exports/student_latest.safetensors ] || need+=(ode_init)
           [ ${#need[@]} -gt 0 ] && bash bench/shapes_train.sh "${need[@]}" ;;
    gate)  [ "${GATE:-on}" = off ] && { echo "gate: skipped (GATE=off)"; continue; }
           python3 -m training.shapes.gate --runs $R --rollouts ${GATE_ROLLOUTS:-64} --json $R/gate.json | grep -v rollouts
           [ "${PIPESTATUS[0]}" = 0 ] || { echo "gate failed: the analytic reward does not rank the ODE student's rollouts"\
             "like the checker (Spearman < 0.3, $R/gate.json); no arm is trained on it (GATE=off to go on anyway)"; break; } ;;
    arms)  beta=$(python3 -c "import json; print(json.load(open('$R/gate.json'))['beta_half_ess']['beta'])" 2>/dev/null)
           echo "reward arms: beta ${beta:-as in the recipes (no $R/gate.json)}"
           mps_on
           limit=${ARMS_TIMEOUT:-}
           [ -n "${ARMS_DEADLINE:-}" ] && limit=$(( ARMS_DEADLINE - $(date +%s) ))
           [ -n "$limit" ] && [ "$limit" -lt 30 ] && { echo "arms: only ${limit} s left before ARMS_DEADLINE; not started"; break; }
           mapfile -t jobs < <(all_runs)
           for job in "${jobs[@]}"; do
             set -- $job
             extra=()
             [ -n "$beta" ] && [ "$1" != dmd ] && extra=(--set "reward.beta=$beta")        # plain DMD has no reward
             wait_slot
             ${limit:+timeout -s TERM $limit} python3 -m training.run --recipe "shapes_arm_$1" --set "schedule.seed=$2" ${STEPS:+--set schedule.steps=$STEPS} \
               --set "output_dir=$R/arms/$1_s$2" --set log.progress=false "${extra[@]}" > "$R/arms_$1_s$2.log" 2>&1 &
           done
           wait
           mps_off
           for job in "${jobs[@]}"; do set -- $job; echo "== $1 seed $2"; tail -2 "$R/arms_$1_s$2.log"; done ;;
    time)  for f in $R/arms_*.log; do echo "$(basename "$f" .log): $(grep -o '[0-9.]* s/step' "$f" | tail -1)"; done ;;
    eval)  mps_on
           while read -r arm seed; do
             wait_slot
             python3 -m training.shapes.arms --runs $R --only "${arm}_s$seed" --prompts ${PROMPTS:-128} \
               > "$R/eval_${arm}_s$seed.log" 2>&1 &
           done < <(all_runs)
           wait
           mps_off
           python3 -m training.shapes.arms --runs $R --seeds "$(echo $SEEDS | tr ' ' ',')" --prompts ${PROMPTS:-128} ;;
    *)     echo "unknown step $step" ;;
  esac
done
if [ -n "${OUT:-}" ]; then     # the device returns at most 8 files of 16 MiB: one archive, in parts of 15 MiB
  stage=$(mktemp -d)
  (cd $R && find arms gate.json *.log -maxdepth 2 \( -name metrics.jsonl -o -name config.json -o -name 'eval.*' \
      -o -name eval_rows.json -o -name gate.json -o -name '*.log' \) -print0 2>/dev/null | tar --null -T - -cf - ) \
    | tar -C "$stage" -xf -
  names=${STUDENTS:-}
  [ "$names" = all ] && names=$(all_runs | while read -r arm seed; do echo "${arm}_s$seed"; done)
  for n in $names; do                           # e.g. STUDENTS="stream_r1_s0" or all: fp16 exports
    f=$R/arms/$n/exports/student_latest.safetensors
    [ -f "$f" ] || { echo "no student $n"; continue; }
    mkdir -p "$stage/arms/$n/exports" && python3 bench/half_weights.py "$f" "$stage/arms/$n/exports/student_latest.safetensors"
  done
  tar -C "$stage" -cf "$OUT/arms_return.tar" . && rm -rf "$stage"
  if [ "$(stat -c %s "$OUT/arms_return.tar")" -gt 15728640 ]; then
    split -b 15M -d "$OUT/arms_return.tar" "$OUT/arms_return.tar.part" && rm "$OUT/arms_return.tar"
  fi
  ls -la "$OUT"
fi
