#!/usr/bin/env bash
# One batched GPU session: environment, GPU tests, then the streaming benchmarks (JSON under $OUT).
#   bash bench/gpu_run.sh            (on the lent GPU machine, from the repository root)
set -uo pipefail
source bench/gpu_env.sh
python3 -c "import torch, importlib.util as u; print('torch', torch.__version__, 'flash_attn', bool(u.find_spec('flash_attn')))"
python3 -m pytest -m gpu tests/test_gpu.py -q -p no:cacheprovider 2>&1 | tail -4
run() { name=$1; shift; python3 bench/bench_stream.py "$@" --json "$OUT/$name.json" > "$OUT/$name.log" 2>&1 \
        || { echo "FAILED $name"; tail -20 "$OUT/$name.log"; }; }
run ws81 --policy window_sink
run full81 --policy full
run ll81 --policy longlive
run ws81_dit --policy window_sink --no-vae
run ws477 --policy window_sink --frames 477 --repeats 1
python3 - "$OUT" <<'PY'
import json, sys, pathlib
rows = [json.loads(p.read_text()) for p in sorted(pathlib.Path(sys.argv[1]).glob("*.json"))]
print(f"{'policy':12} {'frames':>6} {'vae':>4} {'ttff s':>7} {'e2e fps':>8} {'dit fps':>8} {'vae %':>6} {'peak GiB':>8} {'MFU':>5}  first/last chunk s")
for r in rows:
    print(f"{r['policy']:12} {r['frames']:>6} {str(r['vae']):>4} {r['ttff_s']:>7} {r['fps_end_to_end']:>8} {r['fps_dit_only']:>8} "
          f"{100*r['vae_share']:>6.1f} {r['peak_gib']:>8} {r['mfu_dit_at_800']:>5}  {r['chunk_s'][1]}/{r['chunk_s'][-1]}")
print("device:", rows[0]["device"], "attention:", rows[0]["attention_fn"])
PY
