"""Where the Wan VAE decoder's time goes, conv by conv (GPU only).

Times the causal 3x3x3 convs of the decoder at 832x480 in the layouts cuDNN offers, and a time-folded 2-D form
(frames t-2, t-1, t stacked on channels, one 3x3 conv2d over the frames), with the peak memory each takes above its
input and output. Then profiles one compiled streaming decode of a 3-latent-frame chunk per layout.

    python3 bench/vae_conv_micro.py --json $OUT/vae_conv_micro.json
"""
from __future__ import annotations

import argparse
import json
import statistics

import torch
import torch.nn.functional as F


def timed(fn, reps=20, warm=5):
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) / 1e3)
    return statistics.median(times)


def peak_above(fn):
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = fn()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base - out.numel() * out.element_size()
    del out
    return extra / 2**20


SHAPES = [  # name, C_in, C_out, output frames, H, W (decoder at 832x480, one latent frame per call)
    ("s3_96@480x832", 96, 96, 4, 480, 832),
    ("s2_192@240x416", 192, 192, 4, 240, 416),
    ("s1_384@120x208", 384, 384, 2, 120, 208),
    ("s1in_192to384@120x208", 192, 384, 2, 120, 208),
    ("s0_384@60x104", 384, 384, 1, 60, 104),
]


def conv_rows(dtype):
    rows = []
    dev = "cuda"
    for name, ci, co, t, h, w in SHAPES:
        flop = 2 * 27 * ci * co * t * h * w
        x = torch.randn(1, ci, t + 2, h, w, device=dev, dtype=dtype)
        wt = torch.randn(co, ci, 3, 3, 3, device=dev, dtype=dtype) * 0.02
        row = dict(shape=name, gflop=round(flop / 1e9, 1), dtype=str(dtype).split(".")[-1])

        def c3(x=x, wt=wt):
            return F.conv3d(x, wt, padding=(0, 1, 1))
        xl, wl = x.to(memory_format=torch.channels_last_3d), wt.to(memory_format=torch.channels_last_3d)

        def c3l(x=xl, wt=wl):
            return F.conv3d(x, wt, padding=(0, 1, 1))
        # fold: [1, C, T+2, H, W] -> [T, 3C, H, W] (frames t, t+1, t+2 on channels), weights [Co, 3C, 3, 3]
        w2 = wt.permute(0, 2, 1, 3, 4).reshape(co, 3 * ci, 3, 3).contiguous(memory_format=torch.channels_last)

        def fold(x=xl):
            return torch.cat([x[:, :, k : k + t] for k in range(3)], dim=1)[0].transpose(0, 1).contiguous(
                memory_format=torch.channels_last)  # [T, 3C, H, W] NHWC
        xf = fold()

        def c2f(xf=xf, w2=w2):
            return F.conv2d(xf, w2, padding=1)
        ref = c3().float()
        got = c2f()  # [T, Co, H, W]
        err = ((got.float().transpose(0, 1)[None] - ref).norm() / ref.norm()).item()
        for key, fn in (("conv3d_ncdhw", c3), ("conv3d_ndhwc", c3l), ("conv2d_fold_nhwc", c2f), ("fold_copy", fold)):
            s = timed(fn)
            row[key + "_ms"] = round(s * 1e3, 3)
            if key != "fold_copy":
                row[key + "_tflops"] = round(flop / s / 1e12, 1)
                row[key + "_extra_mib"] = round(peak_above(fn), 1)
        row["fold_rel_err"] = err
        rows.append(row)
        print(json.dumps(row), flush=True)
        del x, xl, xf, wt, wl, w2, ref, got
        torch.cuda.empty_cache()
    return rows


def _real_vae(channels_last: bool):
    """The real-size Wan VAE, seeded, bf16 on CUDA; channels_last: its Conv3d weights NDHWC (as measured in bench/RESULTS.md, 2026-11-22, VAE in NDHWC,
    before `WanVAE.to_channels_last` also took the Conv2d weights)."""
    from stream_r1.vae import VAEConfig, WanVAE
    torch.manual_seed(0)
    vae = WanVAE(VAEConfig.wan21()).to("cuda", torch.bfloat16).eval()
    if channels_last:
        for m in vae.modules():
            if isinstance(m, torch.nn.Conv3d):
                m.to(memory_format=torch.channels_last_3d)
    return vae


def profile_decode(channels_last: bool, compiled: bool):
    from stream_r1.vae import StreamingDecoder
    vae = _real_vae(channels_last)
    if compiled:
        vae.decoder.compile()
    dec = StreamingDecoder(vae)
    lat = torch.randn(1, 16, 3, 60, 104, device="cuda")
    with torch.no_grad():
        for _ in range(3):
            dec.decode(lat)
        torch.cuda.synchronize()
        s = timed(lambda: dec.decode(lat), reps=5, warm=1)
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        dec.decode(lat)
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**30
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            dec.decode(lat)
            torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=18, max_name_column_width=90)
    state_gib = sum(t.numel() * t.element_size() for t in dec.cache if t is not None) / 2**30
    return dict(channels_last=channels_last, compiled=compiled, chunk_s=round(s, 4), ms_per_frame=round(s / 12 * 1e3, 2),
                peak_above_base_gib=round(peak, 3), state_gib=round(state_gib, 3)), table


def decode_memory(channels_last: bool, chunks: int = 4):
    """Peak memory of each chunk's decode above what was allocated before it, from a fresh stream."""
    from stream_r1.vae import StreamingDecoder
    vae = _real_vae(channels_last)
    vae.decoder.compile()
    dec = StreamingDecoder(vae)
    lat = torch.randn(1, 16, 3, 60, 104, device="cuda")
    rows = []
    with torch.no_grad():
        for rep in range(2):  # the first pass compiles
            dec.reset()
            torch.cuda.empty_cache()
            for c in range(chunks):
                torch.cuda.synchronize()
                before = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
                out = dec.decode(lat)
                torch.cuda.synchronize()
                if rep == 1:
                    cl = sum(bool(t.is_contiguous(memory_format=torch.channels_last_3d)) for t in dec.cache if t is not None)
                    rows.append(dict(chunk=c, peak_above_gib=round((torch.cuda.max_memory_allocated() - before) / 2**30, 3),
                                     after_gib=round((torch.cuda.memory_allocated() - before) / 2**30, 3),
                                     state_channels_last=cl, out_channels_last=bool(out.is_contiguous(memory_format=torch.channels_last_3d))))
                del out
    return dict(channels_last=channels_last, chunks=rows)


def head_and_attention():
    """The decoder's head conv (96 -> 3 channels at 480x832) with its output channels padded, and the middle
    block's single-head attention (6240 tokens, d = 384) by SDPA and by explicit matmul + softmax."""
    dev, dt = "cuda", torch.bfloat16
    x = torch.randn(1, 96, 6, 480, 832, device=dev, dtype=dt).to(memory_format=torch.channels_last_3d)
    rows = {}
    for cout in (3, 4, 8, 16, 32):
        w = (torch.randn(cout, 96, 3, 3, 3, device=dev, dtype=dt) * 0.02).to(memory_format=torch.channels_last_3d)
        rows[f"head_conv_cout{cout}_ms"] = round(timed(lambda w=w: F.conv3d(x, w, padding=(0, 1, 1))[:, :3]) * 1e3, 3)
    q, k, v = (torch.randn(1, 1, 6240, 384, device=dev, dtype=dt) for _ in range(3))
    rows["mid_attn_sdpa_ms"] = round(timed(lambda: F.scaled_dot_product_attention(q, k, v)) * 1e3, 3)

    def explicit():
        s = torch.matmul(q, k.transpose(-1, -2)) * 384 ** -0.5
        return torch.matmul(torch.softmax(s.float(), -1).to(dt), v)
    rows["mid_attn_explicit_ms"] = round(timed(explicit) * 1e3, 3)
    rows["mid_attn_explicit_rel_err"] = ((explicit().float() - F.scaled_dot_product_attention(q, k, v).float()).norm()
                                         / F.scaled_dot_product_attention(q, k, v).float().norm()).item()
    print(json.dumps(rows), flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default=None)
    ap.add_argument("--skip-profile", action="store_true")
    ap.add_argument("--memory-only", action="store_true")
    ap.add_argument("--head-only", action="store_true")
    args = ap.parse_args()
    torch.backends.cudnn.benchmark = True
    out = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, cudnn=torch.backends.cudnn.version())
    if args.head_only:
        out["head_and_attention"] = head_and_attention()
        args.skip_profile = True
    elif args.memory_only:
        out["decode_memory"] = [decode_memory(False), decode_memory(True)]
        print(json.dumps(out["decode_memory"], indent=1))
        args.skip_profile = True
    else:
        out["convs_bf16"] = conv_rows(torch.bfloat16)
    if not args.skip_profile:
        out["decode"] = []
        for cl in (False, True):
            row, table = profile_decode(cl, compiled=True)
            print(json.dumps(row), flush=True)
            print(table, flush=True)
            out["decode"].append(row)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
