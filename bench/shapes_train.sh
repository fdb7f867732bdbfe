#!/usr/bin/env bash
# Train the shapes world (the embedded default model) on one GPU, stage by stage, and assemble the bundle.
#
#   bench/shapes_train.sh                          # every stage, then the evaluation + bundle
#   bench/shapes_train.sh vae teacher ode_init     # some stages (the later ones read runs/shapes/<stage>/)
#   BUDGET_teacher=240 bench/shapes_train.sh teacher   # a stage stops cleanly (SIGTERM: saves) after N seconds
#
# Stages: vae teacher reward ode_init dmd stream_r1 bundle. Outputs under runs/shapes/; with $OUT set (the lent
# GPU machine) the small outputs (weights, metrics, configs, eval) are copied to $OUT/shapes. Times per stage
# are printed as `stage <name>: <seconds> s`.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f bench/gpu_env.sh ] && [ -n "${OUT:-}" ] && source bench/gpu_env.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
copy_out() {     # the device returns at most 8 files of 16 MiB: weights one by one, the small files as one tar
  if [ -n "${OUT:-}" ] && [ -d runs/shapes ]; then
    local r=runs/shapes
    for f in vae/vae.safetensors teacher/teacher.safetensors teacher/umt5.safetensors ode_init/exports/student_latest.safetensors \
             dmd/exports/student_latest.safetensors stream_r1/exports/student_latest.safetensors; do
      [ -f "$r/$f" ] || continue
      local name; name="$(echo "$f" | cut -d/ -f1)_$(basename "$f")"
      if [ "$(stat -c %s "$r/$f")" -gt 15728640 ]; then   # over 15 MiB: in parts; rejoin with cat NAME.part* > NAME
        split -b 15M -d "$r/$f" "$OUT/$name.part"
      else
        cp "$r/$f" "$OUT/$name"
      fi
    done
    (cd "$r" && find . -type f \( -name '*.json' -o -name '*.md' -o -name '*.png' -o -name 'spiece.model' \) \
        -not -path '*/checkpoints/*' -not -path './reward/reward/*' -print0 | tar --null -T - -cf "$OUT/small.tar")
    [ -d stream_r1/shapes/bundle ] && tar -C stream_r1/shapes --exclude bundle/reward -cf "$OUT/bundle.tar" bundle
    ls -la "$OUT"     # at most 8 files come back with the caller's log: pass only the stages a call needs (a larger model's weights come in parts)
  fi
}
trap copy_out EXIT
STAGES=("$@")
[ ${#STAGES[@]} -eq 0 ] && STAGES=(vae teacher reward ode_init dmd stream_r1 bundle)
EXTRA=(${SHAPES_EXTRA:-})                     # e.g. SHAPES_EXTRA="--set log.interval=100"

for stage in "${STAGES[@]}"; do
  t0=$(date +%s)
  budget_var="BUDGET_${stage}"
  budget=${!budget_var:-0}
  if [ "$stage" = bundle ]; then
    python3 -m training.shapes.bundle ${BUNDLE_ARGS:-}
  elif [ "$budget" -gt 0 ]; then
    timeout -s TERM -k 60 "$budget" python3 -m training.run --recipe "shapes_${stage}" --set log.progress=false \
      "${EXTRA[@]}" || [ $? -eq 124 ]
  else
    python3 -m training.run --recipe "shapes_${stage}" --set log.progress=false "${EXTRA[@]}"
  fi
  echo "stage ${stage}: $(( $(date +%s) - t0 )) s"
  if [ "$stage" = vae ] && [ -z "${SKIP_VAE_GATE:-}" ]; then   # do not spend GPU time on a VAE that loses the shapes
    python3 -c "import json,sys; r=json.load(open('runs/shapes/vae/metrics.json'))['reconstruction_check']; \
print('VAE gate', r); sys.exit(0 if r['color'] >= 0.8 * r['color_original'] else 3)" \
      || { echo "VAE gate failed: reconstructions lose the shapes' colours (SKIP_VAE_GATE=1 to go on anyway)"; exit 3; }
  fi
  if [ "$stage" = teacher ] && [ -z "${SKIP_TEACHER_GATE:-}" ]; then   # nor on distilling a teacher that fails the checker
    python3 -c "import json,sys; r=json.load(open('runs/shapes/teacher/metrics.json'))['teacher_check']; \
print('teacher gate', json.dumps(r)); sys.exit(0 if r['checker']['color'] >= 0.5 else 4)" \
      || { echo "teacher gate failed: its samples do not show the colour asked for (SKIP_TEACHER_GATE=1 to go on anyway)"; exit 4; }
  fi
done

