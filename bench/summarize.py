"""One line per `python -m stream_r1 bench` JSON (and, where it was profiled, its kernel classes, idle gaps and
costliest kernels). Used by the bench/gpu_*.sh scripts:  python3 bench/summarize.py $OUT/ours_*.json"""
import json
import sys
from pathlib import Path


def main(paths: list[str]) -> None:
    for path in sorted(paths):
        r = json.loads(Path(path).read_text())
        if "fps_end_to_end" not in r:
            continue
        print(f"{r['label'] or Path(path).stem:30} {r['frames']:>4}f e2e {r['fps_end_to_end']} dit {r['fps_dit_only']} "
              f"dit_s {r['dit_s']} dec_s {r['decode_s']} ttff {r['ttff_s']} peak {r['peak_gib']} GiB "
              f"all {r['all_totals']}")
        prof = r.get("profile")
        if prof:
            print(f"    gpu {prof['gpu_ms']} ms, span {prof.get('span_ms')} ms, idle {prof.get('idle_ms')} ms:",
                  {k: v["ms"] for k, v in prof["classes"].items()})
            for g in prof.get("gaps", [])[:4]:
                print(f"      gap {g['us']} us after {g['after'][:50]} before {g['before'][:50]}")
            for k in prof["kernels"][:12]:
                print(f"      {k['ms']:8.1f} ms {k['calls']:5d} {k['cls']:18} {k['name'][:80]}")


if __name__ == "__main__":
    main(sys.argv[1:])
