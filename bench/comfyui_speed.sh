#!/usr/bin/env bash
# The node path's speed in real ComfyUI 0.8.0 on the lent GPU, beside the CLI bench and the public reference,
# timed in the same device call. JSON and logs under $OUT (one archive, results.tgz).
#
#   bash bench/comfyui_speed.sh [STEP ...]        (default: setup ref cli comfy)
#   setup   install the Python packages ComfyUI needs that the GPU image lacks, from carried wheels (.gpu_comfy/whl,
#           .gpu_av/*.whl), into /tmp/comfy_site (kept while the machine stays warm)
#   ref     the public reference (Reward Forcing 944b3ca in .ref/, window 9 / sink 3) at 81 frames
#   cli     `python -m stream_r1 bench` as the engine runs fastest, 81 and 477 frames
#   comfy   bench/comfyui_speed.py: the shipped 5-second workflow (Generate to File; warm-up, then $RUNS runs, VRAM
#           and RSS each), the Generate node (Generate -> Create Video -> Save Video, $RUNS runs), the 30-second
#           Generate to File at 477 frames; compile on ($NODE_RUNS runs of the second graph, default $RUNS)
#   cold    `python -m stream_r1 generate --compile` twice, each a fresh process, with an empty compile cache
#           before the first: whole-command time, first frames and per-chunk times of the first-ever and the second
#   tests   pytest -m gpu tests/test_gpu.py
#
# Prepare here (ignored folders; list them in .git/info/exclude):
#   .gpu_comfy/ComfyUI        `git archive fc0cb10b` of a ComfyUI mirror (0.8.0), without tests/, tests-unit/, .github/,
#                             .ci/ and the tokenizer files over 300 kB (../shared/docs/gpu-comfyui.md)
#   .gpu_comfy/frontend/index.html   a placeholder page
#   .gpu_comfy/whl            pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp
#                             --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
#                             alembic Mako SQLAlchemy greenlet kornia kornia_rs pydantic pydantic_core pydantic-settings
#                             python-dotenv annotated-types typing-inspection spandrel torchsde trampoline websocket-client
#   .gpu_av                   the same for av (35 MB): carried in a call of its own just before (`setup` of that call
#                             installs it into /tmp/comfy_site, which stays while the machine is warm): the tree plus
#                             everything exceeds one call's 64 MiB
#   .ref/reward_forcing       the public reference's files (bench/reference_side_by_side.py lists them)
# The av wheel and the ComfyUI files together exceed one call's 64 MiB, and every step together its 600 s. Back to
# back on the warm machine (bench/RESULTS.md, 2026-12-07, calls K–M):
#   carry .gpu_av:             bash bench/comfyui_speed.sh setup [cold]                (installs av; cold ≈ 3.5 min)
#   carry .gpu_comfy .ref:     RUNS=20 NODE_RUNS=5 COMFY_TIMEOUT=390 bash bench/comfyui_speed.sh setup ref cli comfy
#                              (the reference, the CLI and the node path in one call: ≈ 7 min)
set -uo pipefail
cd "$(dirname "$0")/.."
source bench/gpu_env.sh
export COMFYUI_PATH=${COMFYUI_PATH:-$PWD/.gpu_comfy/ComfyUI} COMFYUI_FRONT_END_ROOT=${COMFYUI_FRONT_END_ROOT:-$PWD/.gpu_comfy/frontend}
export HF_HUB_OFFLINE=1 PYTHONPATH=${PYTHONPATH:-}:/tmp/comfy_site
BEST="--compile --compile-vae --cudnn-benchmark --overlap-priority --skip-last-context-pass"
for step in ${@:-setup ref cli comfy}; do
  case $step in
    setup) missing=$(python3 - <<'PY'
import glob, importlib.util, os
alias = {"websocket_client": "websocket", "pyyaml": "yaml", "pillow": "PIL", "python_dotenv": "dotenv",
         "typing_inspection": "typing_inspection", "annotated_types": "annotated_types"}
for w in sorted(glob.glob(".gpu_comfy/whl/*.whl") + glob.glob(".gpu_av/*.whl")):
    name = os.path.basename(w).split("-")[0].lower()
    if importlib.util.find_spec(alias.get(name, name)) is None:
        print(w)
PY
)
           [ -n "$missing" ] && python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/comfy_site $missing
           python3 -c "import av, sqlalchemy, alembic, pydantic, kornia, spandrel; print('ComfyUI packages: ok, av', av.__version__)" ;;
    ref)   timeout ${REF_TIMEOUT:-200} python3 bench/reference_side_by_side.py --refs reward_forcing --rf-frames 81 \
             --json "$OUT/reference.json" > "$OUT/reference.log" 2>&1 || echo "reference run failed or timed out"
           grep -v -i warn "$OUT/reference.log" | tail -4 ;;
    cli)   BENCH_TIMEOUT=200 bench_run cli81 $BEST
           BENCH_TIMEOUT=200 bench_run cli477 $BEST --frames 477 --repeats 1 ;;
    comfy) timeout ${COMFY_TIMEOUT:-540} python3 bench/comfyui_speed.py --runs ${RUNS:-20} --node-runs ${NODE_RUNS:-${RUNS:-20}} --json "$OUT/comfyui_speed.json" \
             2>&1 | grep -v -i warn | tail -30 ;;
    cold)  timeout ${COLD_TIMEOUT:-400} python3 bench/cold_start.py --json "$OUT/cold_start.json" 2>&1 | tail -12 ;;
    tests) timeout ${TESTS_TIMEOUT:-200} python3 -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider 2>&1 | tail -4 ;;
    *)     echo "unknown step $step" ;;
  esac
done
python3 bench/summarize.py "$OUT"/*.json 2>/dev/null | tail -20
cd "$OUT" && tar czf results.tgz --remove-files $(ls -A | grep -v '^results.tgz$') 2>/dev/null
