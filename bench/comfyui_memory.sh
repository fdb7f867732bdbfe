#!/usr/bin/env bash
# ComfyUI's memory over repeated runs, in the real application on a GPU host: ComfyUI (a checkout in .gpu_comfy/ComfyUI, or
# $COMFYUI_PATH) with this pack, twenty runs of the 5-second workflow at 832x480 on a seeded random 1.3B student,
# VRAM and RSS per run -> $OUT/comfyui_vram.json (tests/test_comfyui_server.py::
# test_twenty_runs_at_real_size_keep_vram_flat). The lent GPU machine has no internet: ComfyUI's Python
# requirements that its image lacks are installed from the wheels in .gpu_comfy/whl (cp312), and the frontend
# is served from a placeholder folder (the API run does not need it).
#
#   prepare here:  .gpu_comfy/ComfyUI (a ComfyUI 0.8.0 tree), .gpu_comfy/whl/*.whl (pip download --no-deps
#                  --python-version 3.12 ...), .gpu_comfy/frontend/index.html; then carry .gpu_comfy
#   on the GPU:    bash bench/comfyui_memory.sh
set -uo pipefail
cd "$(dirname "$0")/.."
source bench/gpu_env.sh
export COMFYUI_PATH=${COMFYUI_PATH:-$PWD/.gpu_comfy/ComfyUI}
export COMFYUI_FRONT_END_ROOT=${COMFYUI_FRONT_END_ROOT:-$PWD/.gpu_comfy/frontend}
export COMFYUI_MEM_JSON=$OUT/comfyui_vram.json HF_HUB_OFFLINE=1
if ls .gpu_comfy/whl/*.whl >/dev/null 2>&1; then
  # only the wheels whose module the image lacks (the image's own packages stay in charge)
  missing=$(python3 - <<'PY'
import glob, importlib.util, os
alias = {"websocket_client": "websocket", "pyyaml": "yaml", "pillow": "PIL"}
for w in sorted(glob.glob(".gpu_comfy/whl/*.whl")):
    name = os.path.basename(w).split("-")[0].lower()
    if importlib.util.find_spec(alias.get(name, name)) is None:
        print(w)
PY
)
  if [ -n "$missing" ]; then
    echo "installing: $missing"
    python3 -m pip install -q --no-index --no-deps --target /tmp/comfy_site $missing
    export PYTHONPATH=$PYTHONPATH:/tmp/comfy_site
  fi
fi
python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_comfyui_server.py -k twenty_runs_at_real_size -rs
