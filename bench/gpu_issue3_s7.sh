#!/usr/bin/env bash
# Issue #3, session 7 (2026-12-06): split-KV self-attention (waves) and what it gives end to end, as steps:
#   bash bench/gpu_issue3_s7.sh [STEP ...] (default: all).  JSON under $OUT.
#   micro    bench/attn_micro.py: cuDNN vs split-KV (2-4 key ranges, LSE merge) vs FA2 at the stream's shapes
#   tests    pytest -m gpu tests/test_gpu.py
#   ab81     81 frames, compiled, same call: before (--rerotate-window), keys rotated once (the new default),
#            + --attention split; then the split run profiled
#   ab477    477 frames, the same three (window full for almost every chunk)
#   ref      the public reference (Reward Forcing, window 9 / sink 3) at 81 and 477 frames, for the ratio
#   r81      81 frames, compiled, same call: before (--rerotate-window), keys rotated once, + --attention split
#   r477     477 frames: keys rotated once, + --attention split
#   ten      a 10-minute stream (9597 frames) with the best default flags: flat cost and peak memory
# (The side-by-side with the public reference is bench/gpu_side_by_side.sh.)
set -uo pipefail
source bench/gpu_env.sh
BEST="--compile --cudnn-benchmark --compile-vae"
for step in ${@:-micro tests ab81 ab477}; do
  case $step in
    micro) timeout 240 python3 bench/attn_micro.py --json "$OUT/attn_micro.json" 2>&1 | grep -v -i warn | tail -12 ;;
    tests) timeout 300 python3 -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider 2>&1 | tail -4 ;;
    ab81)  BENCH_TIMEOUT=200 bench_run rerot81 $BEST --rerotate-window
           BENCH_TIMEOUT=200 bench_run once81 $BEST
           BENCH_TIMEOUT=200 bench_run split81 $BEST --attention split
           BENCH_TIMEOUT=200 bench_run split81_prof $BEST --attention split --profile 30 --repeats 1 ;;
    ab477) for v in "rerot477 --rerotate-window" "once477" "split477 --attention split"; do
             BENCH_TIMEOUT=200 bench_run $v $BEST --frames 477 --repeats 1; done ;;
    ref)   timeout 240 python3 bench/reference_side_by_side.py --refs reward_forcing --rf-frames ${RF_FRAMES:-81,477} \
             --json "$OUT/reference.json" > "$OUT/reference.log" 2>&1 || echo "reference run failed or timed out"
           grep -v -i warn "$OUT/reference.log" | tail -6 ;;
    r81)   for v in "once81" "rerot81 --rerotate-window" "split81 --attention split"; do
             BENCH_TIMEOUT=150 bench_run $v $BEST; done ;;
    r477)  for v in "once477" "split477 --attention split"; do
             BENCH_TIMEOUT=150 bench_run $v $BEST --frames 477 --repeats 1; done ;;
    ten)   BENCH_TIMEOUT=560 bench_run ours_10min $BEST ${TEN_FLAGS:-} --frames 9597 --repeats 1 --warmup-frames 81 ;;
    *)     echo "unknown step $step" ;;
  esac
done
python3 bench/summarize.py "$OUT"/*.json
cd "$OUT" && tar czf logs.tgz log_*.txt 2>/dev/null && rm -f log_*.txt
