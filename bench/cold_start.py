"""What a fresh process pays for `generate --compile`: the first-ever run (empty compile cache) and a second
process (the cache PyTorch kept on disk, `stream_r1.compile_cache`), each a whole command.

Writes a seeded random Wan2.1-T2V-1.3B student (bf16, our export layout), a random real-size Wan2.1 VAE and a
random [1, 512, 4096] prompt embedding to --work, empties the compile cache folder, then runs

    python -m stream_r1 generate --checkpoint S --vae V --context C --seconds 5 --compile --out o.mp4

twice and reads each run's whole-command time, its time to the first frames and its per-chunk times (the CLI's
"streamed ..." log line).

    python3 bench/cold_start.py --json out.json [--work /tmp/cold] [--seconds 5]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
ALLOCS = re.compile(r"device allocations per chunk \(cudaMalloc calls of the caching allocator\): ([\d, ]+)")
LINE = re.compile(r"streamed (\d+) chunks in ([\d.]+) s \(first frames after ([\d.]+) s; chunk seconds ([\d., ]+)\)")


def write_inputs(work: Path) -> tuple[Path, Path, Path]:
    import torch
    from safetensors.torch import save_file

    from stream_r1.checkpoint import save_dit_export
    from stream_r1.config import StreamConfig, WanConfig
    from stream_r1.loaders import random_student
    from stream_r1.vae import VAEConfig, WanVAE

    student, vae, context = work / "student.safetensors", work / "vae.safetensors", work / "context.safetensors"
    if not student.exists():
        cfg = WanConfig.wan_1_3b()
        save_dit_export(student, random_student(cfg, seed=0, dtype=torch.bfloat16).state_dict(), cfg,
                        StreamConfig.stream_r1())
    if not vae.exists():
        torch.manual_seed(0)
        save_file({k: v.to(torch.bfloat16).contiguous() for k, v in WanVAE(VAEConfig.wan21()).state_dict().items()},
                  str(vae))
    if not context.exists():
        save_file({"context": torch.randn(1, 512, 4096, generator=torch.Generator().manual_seed(0))}, str(context))
    return student, vae, context


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", required=True)
    ap.add_argument("--work", default="/tmp/cold")
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    student, vae, context = write_inputs(work)
    cache = work / "compile_cache"
    shutil.rmtree(cache, ignore_errors=True)
    env = {**os.environ, "STREAM_R1_COMPILE_CACHE": str(cache)}
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)
    runs = []
    for name in ("first_ever", "second_process"):
        cmd = [sys.executable, "-m", "stream_r1", "generate", "--checkpoint", str(student), "--vae", str(vae),
               "--context", str(context), "--seconds", str(args.seconds), "--compile", "--out",
               str(work / f"{name}.mp4")]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        m = LINE.search(proc.stderr + proc.stdout)
        run = {"run": name, "exit": proc.returncode, "command_seconds": round(wall, 2)}
        if m:
            chunks = [float(x) for x in m.group(4).split(",") if x.strip() not in ("", "...")]
            run.update(chunks=int(m.group(1)), stream_seconds=float(m.group(2)), first_frames=float(m.group(3)),
                       chunk_seconds=chunks, steady_chunk=round(sorted(chunks)[len(chunks) // 2], 3))
            a = ALLOCS.search(proc.stderr + proc.stdout)
            if a:
                run["device_allocations_per_chunk"] = [int(x) for x in a.group(1).split(",")]
        else:
            run["log_tail"] = (proc.stderr + proc.stdout)[-3000:]
        runs.append(run)
        print(json.dumps(run), flush=True)
    Path(args.json).write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "runs": runs,
                                           "cache_mib": round(sum(f.stat().st_size for f in cache.rglob("*")
                                                                  if f.is_file()) / 2**20, 1)}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
