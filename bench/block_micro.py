"""One DiT block's compiled stages at the stream's shape, kernel by kernel, against the bytes floor.

    python3 bench/block_micro.py --json $OUT/block_micro.json --code $OUT/block_code

The 2026-11-22 H200 profile (results/2026-11-22_h200_ndhwc_gelu_profile_new81.json) put ~270 ms of the 81-frame DiT in fused
elementwise kernels (LayerNorm + modulation, RoPE, RMSNorm), e.g. 78 us a call for a LayerNorm kernel whose bytes
floor is ~12 us. This runs `WanModel._pre` / `_post` compiled as `compile_blocks` does (1.3B block, bf16, B=1,
L = 3 frames x 30 x 52 = 4,680 queries, window keys Lk = 14,040), profiles them, and prints each kernel's mean time per
block call; `--code DIR` saves inductor's generated Triton code to compare each kernel's traffic with its time.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch

from stream_r1.bench import profile_run
from stream_r1.config import WanConfig
from stream_r1.wan.model import WanModel


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default=None)
    ap.add_argument("--code", default=None, help="folder for inductor's generated code of both stages")
    ap.add_argument("--iters", type=int, default=30)
    args = ap.parse_args()
    dev, dt = torch.device("cuda"), torch.bfloat16
    cfg = WanConfig(num_layers=1)
    model = WanModel(cfg, attention="auto").init_weights(0).to(dev, dt).eval()
    blk = model.blocks[0]
    f, h, w = 3, 30, 52
    lq, lk = f * h * w, 9 * h * w
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(1, lq, cfg.dim, device=dev, dtype=dt, generator=g)
    t = torch.full((1, f), 500.0, device=dev)
    _, e0 = model.embed_time(t, dt)                                            # [1, F, 6, C]
    cos, sin = model.rope.get(6, f, h, w, dev)
    text = torch.randn(1, cfg.text_len, cfg.dim, device=dev, dtype=dt, generator=g)
    ck, cv = blk.cross_attn.context_kv(text)
    kc = torch.randn(1, lk, cfg.num_heads, cfg.head_dim, device=dev, dtype=dt, generator=g)
    vc = torch.randn_like(kc)
    model.compile_blocks()
    out: dict = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
                 "lq": lq, "lk": lk}

    def step():
        q, k, v = model._pre(blk, x, e0, cos, sin, True)
        att = model.attn_fn(q, torch.cat([kc[:, : lk - lq], k], 1), torch.cat([vc[:, : lk - lq], v], 1))
        return model._post(blk, x, att, e0, ck, cv, model.attn_fn)

    with torch.no_grad():
        if args.code:
            from torch._inductor.utils import run_and_get_code
            os.makedirs(args.code, exist_ok=True)
            _, codes = run_and_get_code(step)
            for i, c in enumerate(codes):
                with open(os.path.join(args.code, f"stage{i}.py"), "w") as fh:
                    fh.write(c)
        for _ in range(3):
            step()
        torch.cuda.synchronize()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(args.iters):
            step()
        b.record()
        torch.cuda.synchronize()
        out["block_ms"] = round(a.elapsed_time(b) / args.iters, 4)
        prof = profile_run(lambda: [step() for _ in range(args.iters)], top=40)
    for k in prof["kernels"]:
        k["us_per_call"] = round(k["ms"] * 1e3 / k["calls"], 1)
    out["profile"] = prof
    print(f"block {out['block_ms']} ms (Lq {lq}, Lk {lk}); x is {x.numel() * 2 / 1e6:.1f} MB bf16")
    for k in prof["kernels"][:25]:
        print(f"{k['us_per_call']:9.1f} us x{k['calls'] // args.iters:<3d} {k['cls']:18s} {k['name'][:95]}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
