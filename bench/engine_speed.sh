#!/usr/bin/env bash
# The engine's speed on the lent GPU (`python -m stream_r1 bench`), side by side with the public reference code in
# the same device call, plus the micro-benchmarks behind it. Steps run in the order given; JSON under $OUT, packed at
# the end into one archive (results.tgz: the device tool brings back only a few files per call).
#
#   RF_FRAMES=81 bash bench/engine_speed.sh [STEP ...]    (default: ref r81 r477; carry .ref)
#
# Side by side (what bench/RESULTS.md's speed tables come from):
#   ref    the public reference (Reward Forcing 944b3ca in .ref/, window 9 / sink 3) at $RF_FRAMES (default 81,477)
#          frames ($REF_ARGS added, at most $REF_TIMEOUT s; a second ref step in one call writes reference2.json, ...)
#   r81    81 frames, compiled; V81="name flags;name flags;..." gives the rows (default: as users run it, and with the
#          final clean cache pass kept, as the reference does)
#   r477   the same at 477 frames (30 s); V477 likewise
#   ab     bench/ab.py: $AB ("name:flags;...") interleaved in one process, $AB_ROUNDS rounds, 81 frames, no final
#          clean cache pass ($AB_BUILD: more build flags, e.g. --cudnn-benchmark-limit 0; $AB_NAME: the JSON's name)
#   rows   eager (no compile), --fp8, --overlap: the other rows of the README's speed table
#   policies  bench/bench_stream.py with each cache policy (window_sink, full, longlive), 81 frames, and window_sink
#          DiT only and at 477 frames (eager)
#   ten    a 10-minute stream (9597 frames; $TEN_FLAGS added): flat cost and peak memory
# Where the time goes:
#   prof   81 frames as users run it, profiled: with the VAE and DiT only (idle gaps by length)
#   block  bench/block_micro.py: one block's compiled stages kernel by kernel, with inductor's code
#   vaeconv    bench/vae_conv_micro.py: the decoder's convs per memory layout, a profiled compiled decode per layout
#   vaemem     the decoder's memory per chunk per layout;  vaestate: storage behind the compiled NDHWC stream state
#   vaehead    the decoder's head conv with padded output channels, the middle block's attention
#   algos  bench/conv_algos.py: the decoder's conv shapes with cudnn.benchmark_limit 10 and 0 (every engine)
#   tests  pytest -m gpu tests/test_gpu.py ($TESTS_K: a -k filter)
# The speed of the ComfyUI node path is bench/comfyui_speed.sh.
set -uo pipefail
cd "$(dirname "$0")/.."
source bench/gpu_env.sh
BEST="--compile --cudnn-benchmark --compile-vae"
for step in ${@:-ref r81 r477}; do
  case $step in
    ref)   n=$(ls "$OUT"/reference*.json 2>/dev/null | wc -l); r=reference$([ "$n" -gt 0 ] && echo $((n + 1)))
           timeout ${REF_TIMEOUT:-240} python3 bench/reference_side_by_side.py --refs reward_forcing --rf-frames ${RF_FRAMES:-81,477} \
             ${REF_ARGS:-} --json "$OUT/$r.json" > "$OUT/$r.log" 2>&1 || echo "reference run failed or timed out"
           grep -v -i warn "$OUT/$r.log" | tail -6 ;;
    r81)   IFS=';' read -ra rows <<< "${V81:-users81 --skip-last-context-pass;withlast81}"
           for v in "${rows[@]}"; do BENCH_TIMEOUT=150 bench_run $v $BEST; done ;;
    r477)  IFS=';' read -ra rows <<< "${V477:-users477 --skip-last-context-pass}"
           for v in "${rows[@]}"; do BENCH_TIMEOUT=150 bench_run $v $BEST --frames 477 --repeats 1; done ;;
    ab)    timeout ${AB_TIMEOUT:-300} python3 bench/ab.py --variants "${AB:-base:;ovp:--overlap-priority}" \
             --rounds ${AB_ROUNDS:-6} $BEST --skip-last-context-pass ${AB_BUILD:-} --json "$OUT/${AB_NAME:-ab}.json" 2>&1 | grep -v -i warn | tail -8 ;;
    rows)  bench_run ours_eager81
           bench_run ours_best81_fp8 $BEST --fp8
           bench_run ours_best81_overlap_skiplast $BEST --overlap --skip-last-context-pass ;;
    policies) for p in "ws81 --policy window_sink" "full81 --policy full" "ll81 --policy longlive" \
                       "ws81_dit --policy window_sink --no-vae" "ws477 --policy window_sink --frames 477 --repeats 1"; do
                set -- $p; name=$1; shift
                python3 bench/bench_stream.py "$@" --json "$OUT/$name.json" > "$OUT/log_$name.txt" 2>&1 \
                  || { echo "FAILED $name"; tail -20 "$OUT/log_$name.txt"; }
              done ;;
    ten)   BENCH_TIMEOUT=560 bench_run ours_10min $BEST ${TEN_FLAGS:-} --frames 9597 --repeats 1 --warmup-frames 81 ;;
    prof)  BENCH_TIMEOUT=200 bench_run prof81 $BEST --skip-last-context-pass --repeats 1 --profile 15
           BENCH_TIMEOUT=150 bench_run profdit81 $BEST --skip-last-context-pass --repeats 1 --profile 15 --no-vae
           python3 -c "import json,sys;[print(f, {k: v for k, v in json.load(open(f)).get('profile', {}).items() if k != 'kernels'}) for f in sys.argv[1:]]" "$OUT"/prof*.json ;;
    block) timeout 200 python3 bench/block_micro.py --json "$OUT/block_micro.json" --code "$OUT/block_code" 2>&1 \
             | grep -v -i warn | tail -28 ;;
    vaeconv)  python3 bench/vae_conv_micro.py --json "$OUT/vae_conv_micro.json" 2>&1 | grep -v -i warn | tail -60 ;;
    vaemem)   python3 bench/vae_conv_micro.py --memory-only --json "$OUT/vae_decode_memory.json" 2>&1 | grep -v -i warn | tail -60 ;;
    vaestate) python3 bench/probe_vae_state.py 2>&1 | grep -v -i warn | tail -30 ;;
    vaehead)  python3 bench/vae_conv_micro.py --head-only --json "$OUT/vae_head_micro.json" 2>&1 | grep -v -i warn | tail -3 ;;
    algos) for lim in 10 0; do timeout 150 python3 bench/conv_algos.py --limit $lim --json "$OUT/algos$lim.json" 2>&1 \
             | grep -v -i warn | tail -6; done ;;
    tests) timeout ${TESTS_TIMEOUT:-300} python3 -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider ${TESTS_K:+-k "$TESTS_K"} 2>&1 | tail -4 ;;
    *)     echo "unknown step $step" ;;
  esac
done
python3 bench/summarize.py "$OUT"/*.json 2>/dev/null
cd "$OUT" && tar czf results.tgz --remove-files $(ls -A | grep -v '^results.tgz$') 2>/dev/null
