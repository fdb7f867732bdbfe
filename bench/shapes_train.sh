#!/usr/bin/env bash
# Train the shapes world (the embedded default model) on one GPU, stage by stage, and assemble the bundle.
#
#   bench/shapes_train.sh                          # every stage, then the evaluation + bundle
#   bench/shapes_train.sh vae teacher ode_init     # some stages (the later ones read runs/shapes/<stage>/)
#   BUDGET_teacher=240 bench/shapes_train.sh teacher   # a stage stops cleanly (SIGTERM: saves) after N seconds
#   SHAPES_EXTRA_teacher="--set schedule.steps=1800" bench/shapes_train.sh teacher ode_init   # one stage's settings
#
# Stages: vae teacher reward ode_init dmd stream_r1 bundle. Outputs under runs/shapes/; with $OUT set (the lent
# GPU machine) the weights of the stages run here are copied to $OUT as <stage>_<file> (fp16 when over 15 MiB, and
# then in parts if still over: rejoin with `cat NAME.part* > NAME`; the reward model stays), plus metrics, configs
# and evaluation as small_<first stage>.tar. Times per stage are printed as `stage <name>: <seconds> s`.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f bench/gpu_env.sh ] && [ -n "${OUT:-}" ] && source bench/gpu_env.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
copy_out() {     # the device returns at most 8 files of 16 MiB: the weights of the stages run here, then the small files
  if [ -n "${OUT:-}" ] && [ -d runs/shapes ]; then
    local r=runs/shapes stage f dest=${COPY_TO:-$OUT}          # COPY_TO: a staging folder (shapes_chain_x2.sh)
    mkdir -p "$dest"
    for stage in "${STAGES[@]}"; do
      case "$stage" in
        vae) files=(vae/vae.safetensors) ;;
        teacher) files=(teacher/teacher.safetensors teacher/umt5.safetensors) ;;
        ode_init|dmd|stream_r1) files=("$stage/exports/student_latest.safetensors") ;;
        *) files=() ;;                         # reward: returned row-packed as reward_packed.tar (below)
      esac
      for f in "${files[@]}"; do
        [ -f "$r/$f" ] || continue
        weights_out "$r/$f" "$dest/${stage}_$(basename "$f")"      # fp16 / in parts when over 15 MiB (gpu_env.sh)
      done
    done
    if [[ " ${STAGES[*]} " == *" reward "* ]] && [ -d "$r/reward/reward" ]; then   # 80 MB -> ~3 MB, loads the same
      python3 -c "from pathlib import Path; from training.shapes.bundle import pack_reward; \
pack_reward(Path('$r/reward/reward'), Path('/tmp/reward_packed/reward'))" \
        && tar -C /tmp/reward_packed -cf "$dest/reward_packed.tar" reward && rm -rf /tmp/reward_packed
    fi
    (cd "$r" && find . -type f \( -name '*.json' -o -name '*.md' -o -name '*.png' -o -name 'spiece.model' \) \
        -not -path '*/checkpoints/*' -not -path './reward/reward/*' -print0 | tar --null -T - -cf "$dest/small_${STAGES[0]}.tar")
    if [[ " ${STAGES[*]} " == *" bundle "* ]] && [ -d stream_r1/shapes/bundle ]; then
      tar -C stream_r1/shapes --exclude bundle/student.safetensors -cf "$dest/bundle.tar" bundle   # student: as <stage>_…
    fi
    ls -la "$dest"
  fi
}
STAGES=("$@")
[ ${#STAGES[@]} -eq 0 ] && STAGES=(vae teacher reward ode_init dmd stream_r1 bundle)
trap copy_out EXIT
EXTRA=(${SHAPES_EXTRA:-})                     # every stage, e.g. SHAPES_EXTRA="--set log.interval=100"

for stage in "${STAGES[@]}"; do
  t0=$(date +%s)
  budget_var="BUDGET_${stage}"
  budget=${!budget_var:-0}
  stage_var="SHAPES_EXTRA_${stage}"
  STAGE_EXTRA=("${EXTRA[@]}" ${!stage_var:-})  # then this stage's own (a later --set wins)
  if [ "$stage" = bundle ]; then
    python3 -m training.shapes.bundle ${BUNDLE_ARGS:-}
  elif [ "$budget" -gt 0 ]; then
    timeout -s TERM -k 60 "$budget" python3 -m training.run --recipe "shapes_${stage}" --set log.progress=false \
      "${STAGE_EXTRA[@]}" || [ $? -eq 124 ]
  else
    python3 -m training.run --recipe "shapes_${stage}" --set log.progress=false "${STAGE_EXTRA[@]}"
  fi
  echo "stage ${stage}: $(( $(date +%s) - t0 )) s"
  if [ "$stage" = vae ] && [ -z "${SKIP_VAE_GATE:-}" ]; then   # do not spend GPU time on a VAE that loses the shapes
    python3 -c "import json,sys; r=json.load(open('runs/shapes/vae/metrics.json'))['reconstruction_check']; \
print('VAE gate', r); sys.exit(0 if r['color'] >= 0.8 * r['color_original'] and r['shape'] >= 0.8 * r['shape_original'] else 3)" \
      || { echo "VAE gate failed: reconstructions lose the shapes' colours or outlines (checker colour below 0.8 x" \
                "the originals', or shape below 0.8 x theirs; SKIP_VAE_GATE=1 to go on anyway)"; exit 3; }
  fi
  if [ "$stage" = teacher ] && [ -z "${SKIP_TEACHER_GATE:-}" ]; then   # nor on distilling a teacher that fails the checker
    python3 -c "import json,sys; r=json.load(open('runs/shapes/teacher/metrics.json'))['teacher_check']; \
print('teacher gate', json.dumps(r)); sys.exit(0 if r['checker']['color'] >= 0.5 else 4)" \
      || { echo "teacher gate failed: its samples do not show the colour asked for (SKIP_TEACHER_GATE=1 to go on anyway)"; exit 4; }
  fi
done

