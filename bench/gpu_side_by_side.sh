#!/usr/bin/env bash
# Issue #3: the public reference and ours in ONE GPU run (same machine, same session).
# Needs .ref/ (reference code, git-ignored) and .whl/ carried. JSON under $OUT.
set -uo pipefail
source bench/gpu_env.sh
python3 bench/reference_side_by_side.py --json "$OUT/reference.json" > "$OUT/reference.log" 2>&1 \
  || echo "reference run failed"; grep -v -i warn "$OUT/reference.log" | tail -12
B="python3 -m stream_r1 bench"
run() { name=$1; shift; $B --label "$name" "$@" --json "$OUT/$name.json" > "$OUT/log_$name.txt" 2>&1 \
        || { echo "FAILED $name"; tail -15 "$OUT/log_$name.txt"; }; }
BEST="--compile --cudnn-benchmark --compile-vae"
run ours_eager81
run ours_best81 $BEST
run ours_best81_fp8 $BEST --fp8
run ours_best477 $BEST --frames 477 --repeats 1
python3 - "$OUT" <<'PY'
import json, sys, pathlib
rows = [json.loads(p.read_text()) for p in sorted(pathlib.Path(sys.argv[1]).glob("ours_*.json"))]
for r in rows:
    print(f"{r['label']:16} {r['frames']:>4}f ttff {r['ttff_s']} e2e {r['fps_end_to_end']} fps dit {r['fps_dit_only']} "
          f"peak {r['peak_gib']} GiB chunk2/last {r['chunk_s'][2]}/{r['chunk_s'][-1]}")
PY
cd "$OUT" && tar czf logs.tgz log_*.txt reference.log && rm log_*.txt
