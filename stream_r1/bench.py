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
    """FLOPs (2*MAC) of all DiT passes of a stream: per chunk len(steps) denoise + 1 context pass."""
    d, L, f = cfg.dim, cfg.num_layers, sc.frames_per_block
    nq = f * fs
    total = 0.0
    for b in range(chunks_for_frames(latent_frames, f)):
        seen = min((b + 1) * f, sc.cache_frames)
        nkv = seen * fs
        per_pass = 2 * nq * L * (6 * d * d + 2 * d * cfg.ffn_dim)        # q,k,v,o + cross q,o + ffn
        per_pass += 4 * nq * cfg.text_len * d * L + 4 * nq * nkv * d * L  # cross core + self core
        total += per_pass * (len(sc.denoising_steps) + 1)
    return total / 1e12


def run_once(model, sc, context, height, width, latent_frames, decoder, seed=0, overlap=False):
    dev = context.device
    sess = StreamSession(model, sc, context, height=height, width=width, seed=seed, decoder=decoder,
                         timing_sync=not overlap, overlap_decode=overlap)
    n = chunks_for_frames(latent_frames, sc.frames_per_block)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    first_frame = []

    def on_frames(piece):                     # time to the first decoded frame (synchronised once)
        if not first_frame:
            sync()
            first_frame.append(time.perf_counter() - t0)

    sess.on_frames = on_frames
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
    return dict(peak_after_chunk_gib=peak_after, total_s=total, ttff_s=first_frame[0] if first_frame else per_chunk[0], first_chunk_s=per_chunk[0], chunk_s=per_chunk, dit_s=sess.stats.dit_seconds,
                decode_s=sess.stats.decode_seconds)


def main(argv=None) -> None:
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
    ap.add_argument("--compile", nargs="?", const="default", default=None,
                    help="torch.compile the DiT's per-block stages (optional mode, e.g. max-autotune-no-cudagraphs)")
    ap.add_argument("--compile-vae", nargs="?", const="default", default=None,
                    help="torch.compile the VAE decoder (optional mode)")
    ap.add_argument("--vae-channels-last", action="store_true", help="VAE weights in channels_last_3d")
    ap.add_argument("--fp8", action="store_true", help="fp8 (e4m3) block linears")
    ap.add_argument("--taehv", default=None, metavar="PATH|random",
                    help="decode with the TAEHV preview decoder instead of the Wan VAE: a taew2_1 file, or 'random' "
                         "for seeded random weights at real size (speed does not depend on values)")
    ap.add_argument("--overlap", action="store_true", help="decode chunk k on a side stream during chunk k+1")
    ap.add_argument("--cudnn-benchmark", action="store_true", help="torch.backends.cudnn.benchmark = True")
    ap.add_argument("--label", default=None)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--warmup-frames", type=int, default=None,
                    help="video frames of the warm-up run (default: the timed length)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype)
    cfg = WanConfig.preset(args.model)
    sc = StreamConfig.for_policy(args.policy)
    lat = latent_frames_for(args.frames)
    if sc.cache_policy == "full":
        sc = sc.replace(full_cache_frames=max(sc.full_cache_frames, chunks_for_frames(lat, 3) * 3))
    torch.manual_seed(0)
    model = random_student(cfg, seed=0, device=dev, dtype=dtype, attention=args.attention)
    if args.fp8:
        from .wan.fp8 import quantize_fp8_
        quantize_fp8_(model)
    if args.compile:
        model.compile_blocks(None if args.compile == "default" else args.compile)
    context = torch.randn(1, cfg.text_len, cfg.text_dim, device=dev, dtype=dtype)
    decoder = taehv = None
    if args.taehv:
        from .taehv import TAEHVStreamingDecoder, load_taehv, random_taehv
        taehv = (random_taehv(0, dev, dtype) if args.taehv == "random" else load_taehv(args.taehv, dev, dtype))
        if args.compile_vae:
            taehv.decoder.compile(**({} if args.compile_vae == "default" else {"mode": args.compile_vae}))
        decoder = TAEHVStreamingDecoder(taehv)
    elif not args.no_vae:
        from stream_r1.vae import StreamingDecoder, VAEConfig, WanVAE
        vae = WanVAE(VAEConfig.wan21()).to(dev, dtype).eval()
        if args.vae_channels_last:                 # NDHWC weights for the 3-D convs (tensor-core layout)
            for m in vae.modules():
                if isinstance(m, torch.nn.Conv3d):
                    m.to(memory_format=torch.channels_last_3d)
        if args.compile_vae:
            vae.decoder.compile(**({} if args.compile_vae == "default" else {"mode": args.compile_vae}))
        decoder = StreamingDecoder(vae)

    results = []
    for r in range(args.repeats + 1):                 # first run = warm-up
        if decoder is not None:
            decoder.reset()
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        n_lat = latent_frames_for(args.warmup_frames) if (r == 0 and args.warmup_frames) else lat
        res = run_once(model, sc, context, args.height, args.width, n_lat, decoder, overlap=args.overlap)
        if dev.type == "cuda":
            res["peak_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30
        if r > 0:
            results.append(res)
    best = min(results, key=lambda x: x["total_s"])
    video_frames = 1 + 4 * (lat - 1)
    fs = cfg.tokens_per_frame(args.height, args.width)
    tflop = dit_tflop(cfg, sc, fs, lat)
    if taehv is not None:
        vae_tflop = taehv.flop_per_video_frame(args.height, args.width) * video_frames / 1e12
    else:
        vae_tflop = 0 if args.no_vae else VAE_DECODE_TFLOP_PER_FRAME * video_frames * (args.height * args.width) / (480 * 832)
    out = dict(
        device=torch.cuda.get_device_name() if dev.type == "cuda" else "cpu", date=time.strftime("%Y-%m-%d"),
        command="python -m stream_r1 bench " + " ".join(argv if argv is not None else sys.argv[1:]),
        label=args.label, model=args.model, policy=sc.cache_policy, frames=video_frames,
        size=f"{args.width}x{args.height}", dtype=args.dtype, attention=args.attention,
        attention_fn=model.attn_fn.__name__, vae=not args.no_vae,
        decoder="taehv" if taehv is not None else (None if args.no_vae else "wan_vae"), compile=args.compile,
        compile_vae=args.compile_vae, overlap=args.overlap, fp8=args.fp8, vae_channels_last=args.vae_channels_last, cudnn_benchmark=args.cudnn_benchmark,
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
        all_totals=[round(r["total_s"], 4) for r in results],
    )
    if args.overlap:            # stages run concurrently: their split is not measurable
        for k in ("dit_s", "decode_s", "fps_dit_only", "vae_share", "mfu_dit_at_800"):
            out[k] = None
    print(json.dumps(out, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
