#!/usr/bin/env bash
# The trainer's step at real size (speed and memory) with seeded random weights (speed and memory do not depend on
# weight values): one generator step (which also runs a critic micro-step) and one critic-only step of the
# stream_r1_1.3b recipe on 2 GPUs through torchrun + FSDP2 - 1.3B causal student and 1.3B critic (fp32 master
# weights, bf16 compute, activation checkpointing), 14B teacher (bf16, sharded), Qwen2-VL-2B-size VideoReward
# (bf16, replicated, checkpointed saliency), Wan2.1 VAE, 512-token hashed prompt embeddings, 21 latent frames
# at 480x832, global batch 2 (one rollout per GPU), EMA on. Prints one JSON object: seconds per step and the
# peak memory of every GPU per step.
#
#   bench/train_step.sh                       # 14B teacher
#   bench/train_step.sh --teacher 1.3b        # if the 14B teacher does not fit
#   bench/train_step.sh --nproc 4 -- --set rollout.latent_frames=12    # extra training.run arguments
#   bench/train_step.sh --nproc 2 --global-batch 4 --steps 6           # same global batch on fewer GPUs
#   bench/train_step.sh --nproc 2 --global-batch 4 --micro-batch 2     # ... as 2 rollouts per micro-step
#   bench/train_step.sh --nproc 4 --steps 7 --checkpoint DIR --tag a   # save to DIR at the end / on SIGTERM
#   bench/train_step.sh --nproc 4 --steps 7 --resume DIR --tag b       # go on from DIR's newest checkpoint
#                                                                            # (without saving again)
set -euo pipefail
cd "$(dirname "$0")/.."

TEACHER=14b
NPROC=2
GLOBAL_BATCH=
MICRO_BATCH=1
STEPS=2
CKPT_DIR=
RESUME_DIR=
TAG=
OUT_DIR=${OUT:-/tmp/train_gpu_smoke}
EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --teacher) TEACHER="$2"; shift 2 ;;
    --nproc) NPROC="$2"; shift 2 ;;
    --global-batch) GLOBAL_BATCH="$2"; shift 2 ;;
    --micro-batch) MICRO_BATCH="$2"; shift 2 ;;
    --steps) STEPS="$2"; shift 2 ;;
    --checkpoint) CKPT_DIR="$2"; shift 2 ;;
    --resume) RESUME_DIR="$2"; shift 2 ;;
    --tag) TAG="_$2"; shift 2 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) echo "unknown argument $1 (use --teacher 14b|1.3b, --nproc N, --global-batch N, --micro-batch N, --steps N," \
            "--checkpoint DIR, --resume DIR, --tag NAME, -- <training.run args>)" >&2; exit 2 ;;
  esac
done
GLOBAL_BATCH=${GLOBAL_BATCH:-$NPROC}
mkdir -p "$OUT_DIR"
SUMMARY="$OUT_DIR/summary_${TEACHER}_${NPROC}gpu${TAG}.json"
if [[ -n "$CKPT_DIR" ]]; then     # full training state at the end and on SIGTERM; resume=auto picks it up next time
  CKPT=(--set output_dir="$CKPT_DIR" --set checkpoint.enabled=true --set checkpoint.interval=0)
elif [[ -n "$RESUME_DIR" ]]; then
  CKPT=(--set output_dir="$RESUME_DIR" --set checkpoint.enabled=false)   # resume=auto: newest under DIR
  ls -d "$RESUME_DIR"/checkpoints/step_* >/dev/null 2>&1 || { echo "--resume $RESUME_DIR: no checkpoint there" >&2; exit 2; }
else
  CKPT=(--set output_dir="$OUT_DIR/run" --set checkpoint.enabled=false)
fi
export OMP_NUM_THREADS=8 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True

python3 -m torch.distributed.run --standalone --nproc_per_node "$NPROC" -m training.run --recipe stream_r1_1.3b \
  "${CKPT[@]}" \
  --set model.student=random --set model.critic=random --set model.teacher=random \
  --set model.teacher_arch="$TEACHER" --set model.vae=random --set model.vae_arch=wan21 \
  --set text.encoder=hash --set text.hash_tokens=512 --set data.prompt_file= \
  --set reward.path=synthetic-2b \
  --set schedule.steps="$STEPS" --set schedule.global_batch="$GLOBAL_BATCH" --set schedule.micro_batch="$MICRO_BATCH" \
  --set schedule.ema_start_step=0 \
  --set log.tensorboard=false --set log.progress=false --set log.interval=1 \
  --set log.summary_json="$SUMMARY" ${EXTRA[@]+"${EXTRA[@]}"} 1>&2

python3 - "$SUMMARY" "$TEACHER" <<'EOF'
import json, sys
import torch
s = json.load(open(sys.argv[1]))
steps = [{"step": int(m["step"]), "kind": "generator+critic" if m["generator_step"] else "critic",
          "seconds": round(m["seconds"], 3), "peak_mem_gib_per_gpu": [round(v, 2) for v in m["peak_mem_gib"]],
          **{k: m[k] for k in ("gen_loss", "critic_loss", "w_inter") if k in m}} for m in s["steps"]]
print(json.dumps({"what": "training step, stream_r1_1.3b, random weights, 21x480x832", "teacher": sys.argv[2],
                  "world_size": s["world_size"], "accumulation": s["accumulation"],
                  "micro_batch": s["global_batch"] // (s["world_size"] * s["accumulation"]), "device": torch.cuda.get_device_name(0) if torch.cuda.is_available()
                  else "cpu", "torch": torch.__version__, "steps": steps}, indent=1))
EOF
