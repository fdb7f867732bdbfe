#!/usr/bin/env bash
# Issue #3, session 6 (2026-11-22): the measurements behind bench/RESULTS.md "VAE in NDHWC with a compact stream
# state, the FFN's GELU in the GEMM epilogue", as steps: bash bench/gpu_issue3_s6.sh [STEP ...] (default: all).
#   micro    conv-by-conv layouts + a profiled compiled decode per layout (bench/vae_conv_micro.py)
#   memory   decode memory per chunk per layout;  state: storage behind the compiled NDHWC stream state
#   head     the head conv with padded output channels, the middle block's attention
#   profile  profiled benches: NCDHW VAE, NDHWC VAE, cuDNN attention;  autotune: DiT max-autotune
#   gelu     the DiT alone, FFN GELU fused / unfused (3 repeats each)
#   rows     README rows: eager, --fp8, --overlap --skip-last-context-pass;  tests: pytest -m gpu
# (The side-by-side with the reference is bench/gpu_side_by_side.sh.) JSON under $OUT.
set -uo pipefail
source bench/gpu_env.sh
BEST="--compile --cudnn-benchmark --compile-vae"
for step in ${@:-micro memory state head profile autotune gelu rows tests}; do
  case $step in
    micro)    python3 bench/vae_conv_micro.py --json "$OUT/vae_conv_micro.json" 2>&1 | grep -v -i warn | tail -60 ;;
    memory)   python3 bench/vae_conv_micro.py --memory-only --json "$OUT/vae_decode_memory.json" 2>&1 | grep -v -i warn | tail -60 ;;
    head)     python3 bench/vae_conv_micro.py --head-only --json "$OUT/vae_head_micro.json" 2>&1 | grep -v -i warn | tail -3 ;;
    state)    python3 bench/probe_vae_state.py 2>&1 | grep -v -i warn | tail -30 ;;
    profile)  bench_run ncdhw81 $BEST --profile 30 --vae-layout ncdhw
              bench_run ndhwc81 $BEST --profile 30
              bench_run cudnn81 $BEST --profile 30 --attention cudnn ;;
    autotune) bench_run ma81 --compile max-autotune-no-cudagraphs --cudnn-benchmark --compile-vae --profile 30 --repeats 1 ;;
    gelu)     bench_run dit_fused $BEST --no-vae --repeats 3
              bench_run dit_unfused $BEST --no-vae --repeats 3 --unfused-gelu ;;
    rows)     bench_run ours_eager81
              bench_run ours_best81_fp8 $BEST --fp8
              bench_run ours_best81_overlap_skiplast $BEST --overlap --skip-last-context-pass ;;
    tests)    timeout 300 python3 -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider 2>&1 | tail -4 ;;
    *)        echo "unknown step $step" ;;
  esac
done
python3 bench/summarize.py "$OUT"/*.json
cd "$OUT" && tar czf logs.tgz log_*.txt 2>/dev/null && rm -f log_*.txt
