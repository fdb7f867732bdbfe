#!/usr/bin/env bash
# Issue #3, sessions 7 to 10 (2026-12-06/07): the reference and ours side by side, the rotated-key cache, split-KV attention.
#   RF_FRAMES=81 bash bench/gpu_issue3_s7.sh [STEP ...]   (default: ref r81 micro r477; carry .ref)   JSON under $OUT.
#   ref    the public reference (Reward Forcing, window 9 / sink 3) at $RF_FRAMES (default 81,477) frames
#          ($REF_ARGS added, at most $REF_TIMEOUT s; a second ref step in one call writes reference2.json, ...)
#   r81    81 frames, compiled: default; --rotate-keys-once; --attention split; --skip-last-context-pass
#          (V81="name flags;name flags;..." replaces that list; V477 likewise for r477)
#   micro  bench/attn_micro.py: cuDNN vs split-KV (2-4 key ranges, LSE merge) vs FA2 over a query-length staircase
#   r477   477 frames: default; --attention split
#   block  bench/block_micro.py: one block's compiled stages kernel by kernel, with inductor's code
#   prof   81 frames as users run it (skip-last), profiled: with the VAE and DiT only (idle gaps by size)
#   blocktune  the same with inductor's coordinate-descent tuning of its Triton kernels
#   ab     bench/ab.py: $AB ("name:flags;...") interleaved in one process, $AB_ROUNDS rounds, 81 frames, skip-last
#          ($AB_BUILD: more build flags, e.g. --cudnn-benchmark-limit 0; $AB_NAME: the JSON's name, default ab)
#   algos  bench/conv_algos.py: the decoder's conv shapes with cudnn.benchmark_limit 10 and 0 (every engine)
#   tests  pytest -m gpu tests/test_gpu.py
#   ten    a 10-minute stream (9597 frames; $TEN_FLAGS added): flat cost and peak memory
# Session 7's run (H100, 2026-12-07) used the first version of this script: its rows "rerot81" and "once81" are
# today's default and --rotate-keys-once (the default was briefly the other way round).
set -uo pipefail
source bench/gpu_env.sh
BEST="--compile --cudnn-benchmark --compile-vae"
for step in ${@:-ref r81 micro r477}; do
  case $step in
    ref)   n=$(ls "$OUT"/reference*.json 2>/dev/null | wc -l); r=reference$([ "$n" -gt 0 ] && echo $((n + 1)))
           timeout ${REF_TIMEOUT:-240} python3 bench/reference_side_by_side.py --refs reward_forcing --rf-frames ${RF_FRAMES:-81,477} \
             ${REF_ARGS:-} --json "$OUT/$r.json" > "$OUT/$r.log" 2>&1 || echo "reference run failed or timed out"
           grep -v -i warn "$OUT/$r.log" | tail -6 ;;
    r81)   IFS=';' read -ra rows <<< "${V81:-base81;once81 --rotate-keys-once;split81 --attention split;skiplast81 --skip-last-context-pass}"
           for v in "${rows[@]}"; do BENCH_TIMEOUT=150 bench_run $v $BEST; done ;;
    micro) timeout 240 python3 bench/attn_micro.py --json "$OUT/attn_micro.json" 2>&1 | grep -v -i warn | tail -12 ;;
    r477)  IFS=';' read -ra rows <<< "${V477:-base477;split477 --attention split}"
           for v in "${rows[@]}"; do BENCH_TIMEOUT=150 bench_run $v $BEST --frames 477 --repeats 1; done ;;
    block) timeout 200 python3 bench/block_micro.py --json "$OUT/block_micro.json" --code "$OUT/block_code" 2>&1 \
             | grep -v -i warn | tail -28 ;;
    prof)  BENCH_TIMEOUT=200 bench_run prof81 $BEST --skip-last-context-pass --repeats 1 --profile 15
           BENCH_TIMEOUT=150 bench_run profdit81 $BEST --skip-last-context-pass --repeats 1 --profile 15 --no-vae
           python3 -c "import json,sys;[print(f, {k: v for k, v in json.load(open(f)).get('profile', {}).items() if k != 'kernels'}) for f in sys.argv[1:]]" "$OUT"/prof*.json ;;
    blocktune) timeout 300 python3 bench/block_micro.py --inductor-tuning --json "$OUT/block_micro_tuned.json" 2>&1 \
             | grep -v -i warn | tail -14 ;;
    ab)    timeout ${AB_TIMEOUT:-300} python3 bench/ab.py --variants "${AB:-base:;rot:--rotate-keys-once}" \
             --rounds ${AB_ROUNDS:-6} $BEST --skip-last-context-pass ${AB_BUILD:-} --json "$OUT/${AB_NAME:-ab}.json" 2>&1 | grep -v -i warn | tail -8 ;;
    algos) for lim in 10 0; do timeout 150 python3 bench/conv_algos.py --limit $lim --json "$OUT/algos$lim.json" 2>&1 \
             | grep -v -i warn | tail -6; done ;;
    tests) timeout ${TESTS_TIMEOUT:-300} python3 -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider ${TESTS_K:+-k "$TESTS_K"} 2>&1 | tail -4 ;;
    ten)   BENCH_TIMEOUT=560 bench_run ours_10min $BEST ${TEN_FLAGS:-} --frames 9597 --repeats 1 --warmup-frames 81 ;;
    *)     echo "unknown step $step" ;;
  esac
done
python3 bench/summarize.py "$OUT"/*.json
# one archive: the device tool brings back only a few files per call
cd "$OUT" && tar czf results.tgz --remove-files $(ls -A | grep -v '^results.tgz$') 2>/dev/null
