#!/usr/bin/env bash
# Train several shapes-world VAE variants at once on one GPU and keep the best as runs/shapes/vae/.
#
#   BUDGET=240 bench/shapes_vae_sweep.sh          # every variant stops (SIGTERM: saves, then evaluates) after N s
#
# The VAE step is launch-bound (per-frame causal loops over 45 frames, tiny convs), so concurrent processes share
# one GPU at little cost each. "Best" = highest colour score of its reconstructions through the analytic checker
# (`reconstruction_check` in metrics.json), then motion score. All variants' checks go to runs/shapes/vae/sweep.json.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
BUDGET=${BUDGET:-240}
SWEEP=runs/shapes/vae_sweep
declare -A VARIANTS=(
  [d12]=""                                                                    # the recipe (dim 12, lr 3e-4)
  [d16]="--set pretrain.vae_dim=16"                                           # 3.5 M parameters
  [d12_lr1e3]="--set optim.lr=1e-3"
  [d12_fg3]="--set pretrain.vae_fg_weight=3 --set pretrain.vae_latent_noise=0"
)
EXTRA=(${SHAPES_EXTRA:-})                          # e.g. a small world for a CPU check: "--set world.clips=64 ..."
python3 -c "if True:                              # render the bank once, before the racers (-c: spawn-safe)
    import sys
    from training.config import apply_overrides
    from training.recipes import get_recipe
    from training.shapes.world import ClipBank
    cfg = get_recipe('shapes_vae')
    apply_overrides(cfg, [a for a in sys.argv[1:] if a != '--set'])
    ClipBank.build(cfg.world, progress=False)" "${EXTRA[@]}"
mkdir -p "$SWEEP"
for name in "${!VARIANTS[@]}"; do
  timeout -s TERM -k 90 "$BUDGET" python3 -m training.run --recipe shapes_vae --set log.progress=false \
    --set output_dir="$SWEEP/$name" "${EXTRA[@]}" ${VARIANTS[$name]} > "$SWEEP/$name.log" 2>&1 &
done
wait || true
python3 - "$SWEEP" <<'PY'
import json, shutil, sys
from pathlib import Path
sweep = Path(sys.argv[1])
got = {}
for d in sorted(p for p in sweep.iterdir() if p.is_dir()):
    m = d / "metrics.json"
    if m.is_file():
        r = json.loads(m.read_text())
        got[d.name] = {"reconstruction_check": r["reconstruction_check"], "steps": r["history"][-1]["step"] + 1,
                       "train_psnr_last_50": round(r["final_mean_last_50"].get("psnr", 0.0), 2),
                       "whole_clip_psnr_per_frame": r["whole_clip_psnr_per_frame"][::8]}
    else:
        got[d.name] = {"error": (sweep / f"{d.name}.log").read_text()[-600:]}
ok = {k: v for k, v in got.items() if "reconstruction_check" in v}
if not ok:
    print(json.dumps(got, indent=1)); sys.exit("no VAE variant finished")
best = max(ok, key=lambda k: (ok[k]["reconstruction_check"]["color"], ok[k]["reconstruction_check"]["motion"]))
dst = sweep.parent / "vae"
if dst.exists():
    shutil.rmtree(dst)
shutil.copytree(sweep / best, dst, ignore=shutil.ignore_patterns("tensorboard"))
(dst / "sweep.json").write_text(json.dumps({"best": best, "variants": got}, indent=1))
print(json.dumps({"best": best, "variants": got}, indent=1))
PY
