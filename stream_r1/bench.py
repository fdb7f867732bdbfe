"""Streaming benchmark at real dimensions with seeded random weights (speed does not depend on values).

    python -m stream_r1 bench --frames 81 --policy window_sink --json out.json
    (bench/bench_stream.py is the same entry point)

Reports, per configuration: time to first frame (first chunk's DiT + its decode), DiT-only and end-to-end
FPS, VAE share, peak GPU memory, and MFU against the FLOP count of spec-models §8 (text encoding excluded:
the context is a random [1, 512, 4096] tensor).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from .config import StreamConfig, WanConfig, latent_frames_for
from .loaders import random_student
from .stream import StreamSession, chunks_for_frames

VAE_DECODE_TFLOP_PER_FRAME = 3.39          # Wan VAE at 832x480 (spec-models §8.3), scaled by pixel count


def dit_tflop(cfg: WanConfig, sc: StreamConfig, fs: int, latent_frames: int) -> float:
    """FLOPs (2*MAC) of all DiT passes of a stream: per chunk len(steps) denoise + 1 context pass (none after the
    final chunk with `skip_last_context_pass`)."""
    d, L, f = cfg.dim, cfg.num_layers, sc.frames_per_block
    nq = f * fs
    total = 0.0
    chunks = chunks_for_frames(latent_frames, f)
    for b in range(chunks):
        seen = min((b + 1) * f, sc.cache_frames)
        nkv = seen * fs
        per_pass = 2 * nq * L * (6 * d * d + 2 * d * cfg.ffn_dim)        # q,k,v,o + cross q,o + ffn
        per_pass += 4 * nq * cfg.text_len * d * L + 4 * nq * nkv * d * L  # cross core + self core
        context = not (b == chunks - 1 and sc.skip_last_context_pass)
        total += per_pass * (len(sc.denoising_steps) + int(context))
    return total / 1e12


def run_once(model, sc, context, height, width, latent_frames, decoder, seed=0, overlap=False, split_times=True,
             overlap_priority=False):
    """One timed stream. `split_times`: synchronise around the decode so DiT and decode time are measured apart
    (3 extra host syncs per chunk; off, the run is timed as a user runs it: one sync per chunk, and the split
    reads 0). `overlap` decodes on a side stream (`overlap_priority`: that, with the DiT on a high-priority stream)."""
    dev = context.device
    overlap = overlap or overlap_priority
    sess = StreamSession(model, sc, context, height=height, width=width, seed=seed, decoder=decoder,
                         timing_sync=split_times and not overlap, overlap_decode=overlap,
                         overlap_priority=overlap_priority)
    n = chunks_for_frames(latent_frames, sc.frames_per_block)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    first_frame = []

    def on_frames(piece):                     # time to the first decoded frame (synchronised once)
        if not first_frame:
            sync()
            first_frame.append(time.perf_counter() - t0)

    sess.on_frames = on_frames
    alloc = lambda: {k: v for k, v in torch.cuda.memory_stats().items()       # noqa: E731 cudaMalloc/Free: syncs
                     if k in ("num_alloc_retries", "num_device_alloc", "num_device_free")} if dev.type == "cuda" else {}
    before = alloc()
    sync()
    t0 = prev = time.perf_counter()
    per_chunk = []
    peak_after = []
    for _ in sess.run(n):
        sync()
        now = time.perf_counter()
        per_chunk.append(now - prev)
        prev = now
        if dev.type == "cuda":
            peak_after.append(torch.cuda.max_memory_allocated() / 2 ** 30)
    sync()
    total = time.perf_counter() - t0
    after = alloc()
    return dict(allocator={k: after[k] - before[k] for k in after}, peak_after_chunk_gib=peak_after,
                total_s=total, ttff_s=first_frame[0] if first_frame else per_chunk[0], first_chunk_s=per_chunk[0],
                chunk_s=per_chunk, dit_s=sess.stats.dit_seconds, decode_s=sess.stats.decode_seconds)


KERNEL_CLASSES = (  # (class, name fragments), first match wins; lower-case
    ("fused elementwise", ("triton",)),  # inductor's kernels (their names may mention "convolution")
    ("attention", ("flash", "fmha", "attention", "sdpa", "cudnn_generated_fort_native_sdpa")),
    ("conv", ("fprop", "conv", "nchwtonhwc", "nhwctonchw")),
    ("gemm", ("gemm", "nvjet", "cutlass", "xmma", "scaled_mm")),
)


def kernel_class(name: str) -> str:
    low = name.lower()
    return next((cls for cls, frags in KERNEL_CLASSES if any(f in low for f in frags)), "other")


def idle_gaps(events, top: int = 8) -> dict:
    """GPU span (first kernel start -> last kernel end), time with no kernel running, and the longest gaps with the
    kernels around them: where the GPU waits on the host."""
    spans = sorted((e.time_range.start, e.time_range.end, e.name) for e in events
                   if e.device_type.name in ("CUDA", "PrivateUse1") and e.time_range.end > e.time_range.start)
    if not spans:
        return dict(span_ms=0.0, idle_ms=0.0, gaps=[])
    gaps, end, before = [], spans[0][1], spans[0][2]
    for start, stop, name in spans[1:]:
        if start > end:
            gaps.append((start - end, before, name))
        if stop > end:
            end, before = stop, name
    span = end - spans[0][0]
    gaps.sort(key=lambda g: -g[0])
    bins = ((0, 10), (10, 100), (100, 1000), (1000, float("inf")))       # microseconds: launch gaps vs host stalls
    hist = {f"{lo}-{hi}us" if hi != float("inf") else f">{lo}us":
            dict(n=sum(lo <= g[0] < hi for g in gaps), ms=round(sum(g[0] for g in gaps if lo <= g[0] < hi) / 1e3, 3))
            for lo, hi in bins}
    return dict(span_ms=round(span / 1e3, 3), idle_ms=round(sum(g[0] for g in gaps) / 1e3, 3), idle_by_gap=hist,
                gaps=[dict(us=round(g, 1), after=a[:70], before=b[:70]) for g, a, b in gaps[:top]])


def profile_run(fn, top: int) -> dict:
    """One run under torch.profiler: the `top` costliest GPU kernels and the GPU time per kernel class."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    rows = [(e.key, e.self_device_time_total / 1e3, e.count) for e in prof.key_averages()
            if e.self_device_time_total > 0]
    total = sum(ms for _, ms, _ in rows) or 1.0
    classes: dict[str, float] = {}
    for name, ms, _ in rows:
        classes[kernel_class(name)] = classes.get(kernel_class(name), 0.0) + ms
    rows.sort(key=lambda r: -r[1])
    return dict(gpu_ms=round(total, 2), **idle_gaps(prof.events()),
                classes={k: dict(ms=round(v, 2), share=round(v / total, 3)) for k, v in sorted(classes.items(), key=lambda kv: -kv[1])},
                kernels=[dict(name=n[:120], cls=kernel_class(n), ms=round(ms, 3), calls=c, share=round(ms / total, 4))
                         for n, ms, c in rows[:top]])


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m stream_r1 bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="1.3b")
    ap.add_argument("--frames", type=int, default=81, help="video frames (4k+1)")
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--policy", default="window_sink")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--attention", default="auto")
    ap.add_argument("--no-vae", action="store_true")
    ap.add_argument("--compile", action="store_true", help="torch.compile the DiT's per-block stages")
    ap.add_argument("--compile-vae", action="store_true", help="torch.compile the VAE decoder")
    ap.add_argument("--vae-layout", choices=("auto", "ndhwc", "ncdhw"), default="auto",
                    help="memory layout of the Wan VAE's 3-D convs (auto: channels-last NDHWC on CUDA, and on the CPU in "
                    "float32)")
    ap.add_argument("--fp8", action="store_true", help="fp8 (e4m3) block linears")
    ap.add_argument("--taehv", default=None, metavar="PATH|random",
                    help="decode with the TAEHV preview decoder instead of the Wan VAE: a taew2_1 file, or 'random' "
                         "for seeded random weights at real size (speed does not depend on values)")
    ap.add_argument("--overlap", action="store_true", help="decode chunk k on a side stream during chunk k+1")
    ap.add_argument("--overlap-priority", action="store_true",
                    help="with --overlap: the DiT on a high-priority stream, so the decode only fills its idle SMs")
    ap.add_argument("--cudnn-benchmark", action="store_true", help="torch.backends.cudnn.benchmark = True")
    ap.add_argument("--cudnn-benchmark-limit", type=int, default=None, metavar="N",
                    help="with --cudnn-benchmark: cuDNN engines tried per conv shape (torch's default 10; 0 = all)")
    ap.add_argument("--label", default=None)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--warmup-frames", type=int, default=None,
                    help="video frames of the warm-up run (default: the timed length)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--skip-last-context-pass", action="store_true",
                    help="skip the clean cache pass after the final chunk (same frames; the reference runs it)")
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="after the timed runs, profile one more with torch.profiler and report the N costliest "
                         "GPU kernels and the time per kernel class (attention, GEMM, conv, fused elementwise)")
    return ap


def build(args: argparse.Namespace) -> argparse.Namespace:
    """Model, decoder, context and stream settings of a bench run (shared with bench/ab.py)."""
    if args.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
        if args.cudnn_benchmark_limit is not None:
            torch.backends.cudnn.benchmark_limit = args.cudnn_benchmark_limit

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype)
    cfg = WanConfig.preset(args.model)
    sc = StreamConfig.for_policy(args.policy).replace(skip_last_context_pass=args.skip_last_context_pass)
    lat = latent_frames_for(args.frames)
    if sc.cache_policy == "full":
        sc = sc.replace(full_cache_frames=max(sc.full_cache_frames, chunks_for_frames(lat, 3) * 3))
    torch.manual_seed(0)
    model = random_student(cfg, seed=0, device=dev, dtype=dtype, attention=args.attention)
    if args.fp8:
        from .wan.fp8 import quantize_fp8_
        quantize_fp8_(model)
    if args.compile:
        model.compile_blocks()
    context = torch.randn(1, cfg.text_len, cfg.text_dim, device=dev, dtype=dtype)
    decoder = taehv = vae = None
    if args.taehv:
        from .taehv import TAEHVStreamingDecoder, load_taehv, random_taehv
        taehv = (random_taehv(0, dev, dtype) if args.taehv == "random" else load_taehv(args.taehv, dev, dtype))
        if args.compile_vae:
            taehv.decoder.compile()
        decoder = TAEHVStreamingDecoder(taehv)
    elif not args.no_vae:
        from stream_r1.vae import StreamingDecoder, VAEConfig, WanVAE, channels_last_pays
        vae = WanVAE(VAEConfig.wan21()).to(dev, dtype).eval()
        if args.vae_layout == "ndhwc" or (args.vae_layout == "auto" and channels_last_pays(dev, dtype)):
            vae.to_channels_last()
        if args.compile_vae:
            vae.decoder.compile()
        decoder = StreamingDecoder(vae)
    return argparse.Namespace(dev=dev, dtype=dtype, cfg=cfg, sc=sc, lat=lat, model=model, context=context,
                              decoder=decoder, taehv=taehv, vae=vae)


def main(argv=None) -> None:
    args = parser().parse_args(argv)
    args.overlap = args.overlap or args.overlap_priority
    b = build(args)
    dev, cfg, sc, lat, model, context, decoder, taehv, vae = (
        b.dev, b.cfg, b.sc, b.lat, b.model, b.context, b.decoder, b.taehv, b.vae)

    results = []
    for r in range(args.repeats + 1):                 # first run = warm-up
        if decoder is not None:
            decoder.reset()
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        n_lat = latent_frames_for(args.warmup_frames) if (r == 0 and args.warmup_frames) else lat
        res = run_once(model, sc, context, args.height, args.width, n_lat, decoder, overlap=args.overlap,
                       overlap_priority=args.overlap_priority)
        if dev.type == "cuda":
            res["peak_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30
        if r > 0:
            results.append(res)
    best = min(results, key=lambda x: x["total_s"])
    profile = None
    if args.profile and dev.type == "cuda":
        if decoder is not None:
            decoder.reset()
        profile = profile_run(lambda: run_once(model, sc, context, args.height, args.width, lat, decoder,
                                               overlap=args.overlap, overlap_priority=args.overlap_priority),
                              args.profile)
    video_frames = 1 + 4 * (lat - 1)
    fs = cfg.tokens_per_frame(args.height, args.width)
    tflop = dit_tflop(cfg, sc, fs, lat)
    if taehv is not None:
        vae_tflop = taehv.flop_per_video_frame(args.height, args.width) * video_frames / 1e12
    else:
        pixels = args.height * args.width / (480 * 832)
        vae_tflop = 0 if args.no_vae else VAE_DECODE_TFLOP_PER_FRAME * video_frames * pixels
    out = dict(
        device=torch.cuda.get_device_name() if dev.type == "cuda" else "cpu", date=time.strftime("%Y-%m-%d"),
        command="python -m stream_r1 bench " + " ".join(argv if argv is not None else sys.argv[1:]),
        label=args.label, model=args.model, policy=sc.cache_policy, frames=video_frames,
        size=f"{args.width}x{args.height}", dtype=args.dtype, attention=args.attention,
        attention_fn=model.attn_fn.__name__, vae=not args.no_vae,
        decoder="taehv" if taehv is not None else (None if args.no_vae else "wan_vae"), compile=args.compile,
        compile_vae=args.compile_vae, overlap=args.overlap, overlap_priority=args.overlap_priority, fp8=args.fp8,
        vae_channels_last=vae is not None and vae.memory_format == torch.channels_last_3d,
        cudnn_benchmark=args.cudnn_benchmark,
        cudnn_benchmark_limit=torch.backends.cudnn.benchmark_limit if args.cudnn_benchmark else None,
        skip_last_context_pass=args.skip_last_context_pass,
        ttff_s=round(best["ttff_s"], 4), first_chunk_s=round(best["first_chunk_s"], 4), total_s=round(best["total_s"], 4),
        dit_s=round(best["dit_s"], 4), decode_s=round(best["decode_s"], 4),
        fps_end_to_end=round(video_frames / best["total_s"], 2),
        fps_dit_only=round(video_frames / best["dit_s"], 2),
        vae_share=round(best["decode_s"] / best["total_s"], 3),
        peak_gib=round(best.get("peak_gib", float("nan")), 2),
        dit_tflop=round(tflop, 1), mfu_dit_at_800=round(tflop / best["dit_s"] / 800, 3),
        tflops_sustained=round((tflop + vae_tflop) / best["total_s"], 1),
        chunk_s=[round(c, 4) for c in best["chunk_s"]],
        peak_after_chunk_gib=[round(m, 3) for m in best["peak_after_chunk_gib"]],
        all_totals=[round(r["total_s"], 4) for r in results], allocator=best["allocator"],
    )
    if profile is not None:
        out["profile"] = profile
    if args.overlap:            # stages run concurrently: their split is not measurable
        for k in ("dit_s", "decode_s", "fps_dit_only", "vae_share", "mfu_dit_at_800"):
            out[k] = None
    print(json.dumps(out, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
