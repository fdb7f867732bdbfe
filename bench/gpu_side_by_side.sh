#!/usr/bin/env bash
# Issue #3: the public reference and ours in ONE GPU run (same machine, same session).
# Needs .ref/ (reference code, git-ignored) and .whl/ carried. JSON under $OUT.
set -uo pipefail
source bench/gpu_env.sh
timeout 240 python3 bench/reference_side_by_side.py --refs reward_forcing --rf-frames 81,477 \
  --json "$OUT/reference.json" > "$OUT/reference.log" 2>&1 || echo "reference run failed or timed out"
grep -v -i warn "$OUT/reference.log" | tail -8
# EXTRA: flags added to every "ours" run (e.g. EXTRA="--attention split"); ROWS: which rows (default all four)
BEST="--compile --cudnn-benchmark --compile-vae ${EXTRA:-}"
BENCH_TIMEOUT=150
for row in ${ROWS:-best81 skiplast81 overlap81 best477}; do
  case $row in
    best81)     bench_run ours_best81 $BEST ;;
    skiplast81) bench_run ours_best81_skiplast $BEST --skip-last-context-pass ;;
    overlap81)  bench_run ours_best81_overlap $BEST --overlap ;;
    best477)    bench_run ours_best477 $BEST --frames 477 --repeats 1 ;;
  esac
done
python3 bench/summarize.py "$OUT"/ours_*.json
cd "$OUT" && tar czf logs.tgz log_*.txt reference.log && rm log_*.txt
