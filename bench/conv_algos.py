"""Does cuDNN have faster kernels for the Wan decoder's convs than the ones `cudnn.benchmark` picks by
default? (GPU only.)

PyTorch's `torch.backends.cudnn.benchmark_limit` (default 10) caps how many cuDNN engines the benchmark tries per
conv shape; 0 tries all. The profile (bench/RESULTS.md, 2026-12-07, where the GPU idles) shows the full-resolution 96-channel 3x3x3 convs
running a 256x64 tile at 392 TFLOP/s: 96 output channels in two 64-wide tiles, the second half empty. This times each
decoder conv shape in NDHWC at a given limit and names the kernel that runs, plus the same conv over 12 output frames
(3 latent frames per decoder call instead of 1) and the 96 -> 3 head conv.

    python3 bench/conv_algos.py --limit 10 --json $OUT/algos10.json
    python3 bench/conv_algos.py --limit 0 --json $OUT/algos0.json     # a fresh process: the choice is cached
"""
from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from vae_conv_micro import timed

SHAPES = [  # name, C_in, C_out, output frames, H, W
    ("s3_96@480x832_t4", 96, 96, 4, 480, 832),
    ("s3_96@480x832_t12", 96, 96, 12, 480, 832),
    ("s2_192@240x416_t4", 192, 192, 4, 240, 416),
    ("s1_384@120x208_t2", 384, 384, 2, 120, 208),
    ("head_96to3@480x832_t4", 96, 3, 4, 480, 832),
]


def kernel_names(fn) -> list[str]:
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    names = {}
    for e in prof.events():
        if e.device_type.name == "CUDA":
            names[e.name] = names.get(e.name, 0.0) + (e.time_range.end - e.time_range.start)
    return [n[:110] for n, _ in sorted(names.items(), key=lambda kv: -kv[1])[:2]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=10, help="torch.backends.cudnn.benchmark_limit (0 = every engine)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.benchmark_limit = args.limit
    dt = torch.bfloat16
    rows = []
    for name, ci, co, t, h, w in SHAPES:
        x = torch.randn(1, ci, t + 2, h, w, device="cuda", dtype=dt).contiguous(memory_format=torch.channels_last_3d)
        wt = (torch.randn(co, ci, 3, 3, 3, device="cuda", dtype=dt) * 0.02).contiguous(
            memory_format=torch.channels_last_3d)
        b = torch.zeros(co, device="cuda", dtype=dt)
        fn = lambda: F.conv3d(x, wt, b, padding=(0, 1, 1))  # noqa: E731  [1, ci, t+2, h, w] -> [1, co, t, h, w]
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        first = time.perf_counter() - t0                          # includes the engine search
        s = timed(fn)
        flop = 2 * 27 * ci * co * t * h * w
        rows.append(dict(shape=name, ms=round(s * 1e3, 3), tflops=round(flop / s / 1e12, 1),
                         search_s=round(first, 2), kernels=kernel_names(fn)))
        print(rows[-1], flush=True)
        del x, wt
        torch.cuda.empty_cache()
    out = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, date=time.strftime("%Y-%m-%d"),
               limit=args.limit, cudnn=torch.backends.cudnn.version(), rows=rows)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
