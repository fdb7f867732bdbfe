#!/usr/bin/env bash
# GPU smoke test of the trainer at real size with seeded random weights (speed and memory do not depend on
# weight values): one generator step (which also runs a critic micro-step) and one critic-only step of the
# stream_r1_1.3b recipe on 2 GPUs through torchrun + FSDP2 - 1.3B causal student and 1.3B critic (fp32 master
# weights, bf16 compute, activation checkpointing), 14B teacher (bf16, sharded), Qwen2-VL-2B-size VideoReward
# (bf16, replicated, checkpointed saliency), Wan2.1 VAE, 512-token hashed prompt embeddings, 21 latent frames
# at 480x832, global batch 2 (one rollout per GPU), EMA on. Prints one JSON object: seconds per step and the
# peak memory of every GPU per step.
#
#   bench/train_gpu_smoke.sh                       # 14B teacher
#   bench/train_gpu_smoke.sh --teacher 1.3b        # if the 14B teacher does not fit
#   bench/train_gpu_smoke.sh --nproc 4 -- --set rollout.latent_frames=12    # extra training.run arguments
set -euo pipefail
cd "$(dirname "$0")/.."

TEACHER=14b
NPROC=2
OUT_DIR=${OUT:-/tmp/train_gpu_smoke}
EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --teacher) TEACHER="$2"; shift 2 ;;
    --nproc) NPROC="$2"; shift 2 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) echo "unknown argument $1 (use --teacher 14b|1.3b, --nproc N, -- <training.run args>)" >&2; exit 2 ;;
  esac
done
mkdir -p "$OUT_DIR"
SUMMARY="$OUT_DIR/summary_${TEACHER}_${NPROC}gpu.json"
export OMP_NUM_THREADS=8 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True

python3 -m torch.distributed.run --standalone --nproc_per_node "$NPROC" -m training.run --recipe stream_r1_1.3b \
  --set output_dir="$OUT_DIR/run" \
  --set model.student=random --set model.critic=random --set model.teacher=random \
  --set model.teacher_arch="$TEACHER" --set model.vae=random --set model.vae_arch=wan21 \
  --set text.encoder=hash --set text.hash_tokens=512 --set data.prompt_file= \
  --set reward.path=synthetic-2b \
  --set schedule.steps=2 --set schedule.global_batch="$NPROC" --set schedule.micro_batch=1 \
  --set schedule.ema_start_step=0 \
  --set checkpoint.enabled=false --set log.tensorboard=false --set log.progress=false \
  --set log.summary_json="$SUMMARY" ${EXTRA[@]+"${EXTRA[@]}"} 1>&2

python3 - "$SUMMARY" "$TEACHER" <<'EOF'
import json, sys
import torch
s = json.load(open(sys.argv[1]))
steps = [{"step": int(m["step"]), "kind": "generator+critic" if m["generator_step"] else "critic",
          "seconds": round(m["seconds"], 3), "peak_mem_gib_per_gpu": [round(v, 2) for v in m["peak_mem_gib"]],
          **{k: m[k] for k in ("gen_loss", "critic_loss", "w_inter") if k in m}} for m in s["steps"]]
print(json.dumps({"what": "training step, stream_r1_1.3b, random weights, 21x480x832", "teacher": sys.argv[2],
                  "world_size": s["world_size"], "device": torch.cuda.get_device_name(0) if torch.cuda.is_available()
                  else "cpu", "torch": torch.__version__, "steps": steps}, indent=1))
EOF
