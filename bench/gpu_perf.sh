#!/usr/bin/env bash
# Issue #3 performance variants in one GPU call; JSON + logs under $OUT, a table at the end.
#   bash bench/gpu_perf.sh [quick]
set -uo pipefail
source bench/gpu_env.sh
B="python3 -m stream_r1 bench"
run() { name=$1; shift; $B --label "$name" "$@" --json "$OUT/$name.json" > "$OUT/logs_$name.txt" 2>&1 \
        || { echo "FAILED $name"; tail -15 "$OUT/logs_$name.txt"; }; }
run a_base --attention sdpa
run b_cudnn --attention cudnn
run c_cudnn_compile --attention cudnn --compile
run e_plus_compile_vae --attention cudnn --compile --cudnn-benchmark --compile-vae
run f_plus_overlap --attention cudnn --compile --cudnn-benchmark --compile-vae --overlap
run g_dit_only --attention cudnn --compile --no-vae
run h_477 --attention cudnn --compile --cudnn-benchmark --compile-vae --overlap --frames 477 --repeats 1
timeout 100 python3 -m pytest -m gpu tests/test_gpu.py -q -p no:cacheprovider 2>&1 | tail -4
python3 - "$OUT" <<'PY'
import json, sys, pathlib
rows = [json.loads(p.read_text()) for p in sorted(pathlib.Path(sys.argv[1]).glob("*.json"))]
print(f"{'label':22} {'frames':>6} {'ttff':>6} {'e2e fps':>7} {'dit fps':>7} {'vae%':>5} {'peak':>6} {'MFU':>5} chunk2/last")
for r in rows:
    f = lambda k: "-" if r.get(k) is None else r[k]
    print(f"{r['label']:22} {r['frames']:>6} {r['ttff_s']:>6} {r['fps_end_to_end']:>7} {f('fps_dit_only'):>7} "
          f"{f('vae_share'):>5} {r['peak_gib']:>6} {f('mfu_dit_at_800'):>5} {r['chunk_s'][2]}/{r['chunk_s'][-1]}")
PY
cd "$OUT" && tar czf logs.tgz logs_*.txt && rm logs_*.txt
