"""Self-attention micro-benchmark at the stream's shapes: cuDNN vs split-KV, the wave staircase.

    python3 bench/attn_micro.py --json $OUT/attn_micro.json

Shapes: B=1, 12 heads, d=128, bf16, q/k/v in the model's [B, L, n, d] layout (the KV from a [B, S, n, d] cache).
For each (Lq, Lk): cuDNN through SDPA, cuDNN with its log-sum-exp (`attention_with_lse`), the wave split
(`split_kv_attention` with `wave_plan`: whole waves plain, the partial wave over key ranges; compiled merge), all
queries over 2 key ranges (the first split, bench/RESULTS.md, 2026-12-07, keys rotated once), FlashAttention-2 through SDPA; TFLOP/s = 4 Lq Lk n d / t.
"""
from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from stream_r1.wan.attention import attention_with_lse, sdpa_attention, split_kv_attention, wave_plan


def timed(fn, iters=20, trials=3) -> float:
    """Best of `trials` means over `iters` calls, seconds."""
    for _ in range(3):
        fn()
    best = float("inf")
    for _ in range(trials):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(iters):
            fn()
        b.record()
        torch.cuda.synchronize()
        best = min(best, a.elapsed_time(b) / 1e3 / iters)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    dev, dt, n, d = "cuda", torch.bfloat16, 12, 128
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    cases = [(4680, lk) for lk in (4680, 9360, 14040)]
    cases += [(lq, 14040) for lq in (4224, 5632)]
    rows = []
    for lq, lk in cases:
        q = torch.randn(1, lq, n, d, device=dev, dtype=dt)
        cache = torch.randn(2, 1, 14040, n, d, device=dev, dtype=dt)
        k, v = cache[0, :, :lk], cache[1, :, :lk]
        flop = 4 * lq * lk * n * d
        ref = sdpa_attention(q, k, v).float()
        row = {"lq": lq, "lk": lk, "plan": wave_plan(lq, lk, n, 1, sms)}

        def cudnn():
            with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
                return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))

        def fa2():
            with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
                return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))

        variants = {"cudnn": cudnn, "cudnn_lse": lambda: attention_with_lse(q, k, v), "fa2": fa2}
        variants["wave_split"] = lambda: split_kv_attention(q, k, v)
        variants["split_all2"] = lambda: split_kv_attention(q, k, v, splits=2)
        for name, fn in variants.items():
            try:
                t = timed(fn)
                row[name] = {"ms": round(t * 1e3, 4), "tflops": round(flop / t / 1e12, 1)}
                if "split" in name:
                    row[name]["max_rel_err"] = float(((fn().float() - ref).abs().max() / ref.abs().max()))
            except Exception as e:                      # a backend that refuses a shape is reported, not fatal
                row[name] = {"error": f"{type(e).__name__}: {e}"[:200]}
        rows.append(row)
        print(lq, lk, {k2: (v2.get("ms"), v2.get("tflops")) for k2, v2 in row.items() if isinstance(v2, dict)},
              "plan", row["plan"], flush=True)
    out = {"device": torch.cuda.get_device_name(0), "sms": sms, "torch": torch.__version__,
           "date": time.strftime("%Y-%m-%d"), "rows": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
