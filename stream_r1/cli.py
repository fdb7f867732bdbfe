"""Command line: `python -m stream_r1 generate | inspect | download`.

`generate` streams a video chunk by chunk: each chunk is denoised, decoded and appended to the output
file at once, so memory stays flat and an interrupted run leaves a playable file. For exact comparisons
with other implementations it takes the initial noise and the text context from files and can write the
latents instead of (or beside) the video.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Optional

import torch

from .config import CACHE_POLICIES, StreamConfig, WanConfig, check_resolution, latent_frames_for

log = logging.getLogger("stream_r1")

DEMO_SIZE = (128, 128)          # (height, width) of the demo model when no checkpoint is given


def _parse_steps(text: str) -> tuple[float, ...]:
    try:
        steps = tuple(float(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--denoising-steps takes comma-separated numbers, e.g. 1000,750,500,250; "
                                         f"got {text!r}") from None
    if not steps:
        raise argparse.ArgumentTypeError("--denoising-steps needs at least one step")
    return steps


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m stream_r1", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="stream a video from a causal Wan student")
    g.add_argument("--prompt", default="a red circle moving right on a black background")
    length = g.add_mutually_exclusive_group()
    length.add_argument("--seconds", type=float, default=None, help="video length at 16 fps (default 5)")
    length.add_argument("--frames", type=int, default=None, help="video frames, 4k+1 (81 = 5 s)")
    g.add_argument("--out", default="stream_r1.mp4", help=".mp4 (fragmented), .mkv or .webm")
    g.add_argument("--checkpoint", default=None,
                   help="DiT file: Wan-AI, Comfy-Org, Self-Forcing/Reward Forcing/Stream-R1/LongLive .pt, or our export")
    g.add_argument("--entry", default=None, help="entry of a trainer .pt (default generator_ema, then generator)")
    g.add_argument("--lora", default=None, help="LongLive LoRA file merged into the checkpoint")
    g.add_argument("--num-heads", type=int, default=None, help="attention heads when the file has no config "
                   "(default dim/128)")
    g.add_argument("--vae", default=None, help="Wan2.1 VAE (.pth or .safetensors)")
    g.add_argument("--text-encoder", default=None, help="umT5 file (Wan .pth, HF or ComfyUI safetensors)")
    g.add_argument("--tokenizer", default=None, help="spiece.model or google/umt5-xxl folder (ComfyUI files carry it)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--width", type=int, default=None, help="multiple of 16 (default 832; 128 for the demo model)")
    g.add_argument("--height", type=int, default=None, help="multiple of 16 (default 480; 128 for the demo model)")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    g.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    g.add_argument("--attention", default="auto", choices=["auto", "sdpa", "cudnn", "flash"])
    g.add_argument("--compile", action="store_true", help="torch.compile the DiT blocks and the VAE decoder "
                   "(GPU; ~1 min of compilation, then ~1.6x faster)")
    g.add_argument("--fp8", action="store_true", help="fp8 block weights (half the DiT memory; Hopper/Ada fp8 GEMMs)")
    g.add_argument("--noise", default=None, help="safetensors with key 'noise' [1, F, 16, H/8, W/8]")
    g.add_argument("--context", default=None, help="safetensors with key 'context' [1, L, text_dim] (skips the "
                   "text encoder)")
    g.add_argument("--denoising-steps", type=_parse_steps, default=None, help="e.g. 1000,750,500,250 (warped "
                   "with shift 5)")
    g.add_argument("--cache-policy", choices=CACHE_POLICIES, default=None,
                   help="default: the checkpoint family's (window_sink for Stream-R1 / Reward Forcing)")
    g.add_argument("--window", type=int, default=None, help="KV window in latent frames (sink included)")
    g.add_argument("--sink", type=int, default=None, help="sink frames")
    g.add_argument("--sink-ema-source", choices=["evicted", "newest"], default=None,
                   help="window_sink: EMA the frames leaving the window (Reward Forcing today) or the newest "
                        "finished chunk (its code before 2025-12-15)")
    g.add_argument("--latents-out", default=None, help="write latents [1, F, 16, H/8, W/8] (key 'latents')")
    g.add_argument("--no-decode", action="store_true", help="skip the VAE (no video written)")
    g.add_argument("--quiet", action="store_true")

    sub.add_parser("bench", help="speed benchmark at real size with random weights (see --help)", add_help=False)

    from .reward.cli import add_saliency_parser
    add_saliency_parser(sub)

    from .download import add_parser as add_download_parser
    add_download_parser(sub)

    i = sub.add_parser("inspect", help="describe a checkpoint file")
    i.add_argument("file")
    i.add_argument("--num-heads", type=int, default=None)
    return p


def _device_dtype(device: str, dtype: str) -> tuple[torch.device, torch.dtype]:
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but no CUDA GPU is visible; use --device cpu")
    if dtype == "auto":
        dt = torch.bfloat16 if dev.type == "cuda" else torch.float32
    else:
        dt = getattr(torch, dtype)
    return dev, dt


def _load_tensor(path: str, key: str) -> torch.Tensor:
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise SystemExit(f"error: {path} does not exist")
    d = load_file(path)
    if key not in d:
        raise SystemExit(f"error: {path} has no key {key!r} (found {sorted(d)[:5]})")
    return d[key]


def _latent_frames(args, noise: Optional[torch.Tensor], fpb: int) -> int:
    from .stream import latent_frames_for_seconds

    if args.frames is not None:
        return latent_frames_for(args.frames)
    if args.seconds is not None:
        return latent_frames_for_seconds(args.seconds, 16, fpb)
    if noise is not None:
        return noise.shape[1]
    return latent_frames_for_seconds(5.0, 16, fpb)


def cmd_generate(args) -> int:
    from .loaders import load_student, prompt_embedding, random_student
    from .stream import StreamSession, chunks_for_frames

    device, dtype = _device_dtype(args.device, args.dtype)
    demo = args.checkpoint is None
    if demo:
        log.warning("no --checkpoint given: running a seeded random tiny Wan model to show the pipeline "
                    "(its output is noise; pass a real checkpoint for real video)")
        model = random_student(WanConfig.tiny(), seed=0, device=device, dtype=dtype, attention=args.attention)
        sc = StreamConfig.stream_r1()
        height, width = args.height or DEMO_SIZE[0], args.width or DEMO_SIZE[1]
    else:
        model, info = load_student(args.checkpoint, device=device, dtype=dtype, attention=args.attention,
                                   entry=args.entry, num_heads=args.num_heads, lora=args.lora)
        sc = info.stream_config
        height, width = args.height or 480, args.width or 832
        log.info("checkpoint: %s / %s, default cache policy %s", info.format, info.family, sc.cache_policy)
    check_resolution(height, width, model.cfg.pixel_multiple)
    if args.fp8:
        from .wan.fp8 import quantize_fp8_
        quantize_fp8_(model)
    if args.compile:
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        model.compile_blocks()
    if args.cache_policy is not None:
        sc = StreamConfig.for_policy(args.cache_policy).replace(
            denoising_steps=sc.denoising_steps) if args.cache_policy != sc.cache_policy else sc
    changes = {}
    if args.denoising_steps is not None:
        changes["denoising_steps"] = args.denoising_steps
    if args.window is not None:
        changes["window_frames"] = args.window
    if args.sink is not None:
        changes["sink_frames"] = args.sink
    if args.sink_ema_source is not None:
        changes["sink_ema_source"] = args.sink_ema_source

    noise = _load_tensor(args.noise, "noise") if args.noise else None
    latent_frames = _latent_frames(args, noise, sc.frames_per_block)
    if sc.cache_policy == "full":
        changes["full_cache_frames"] = max(sc.full_cache_frames,
                                           chunks_for_frames(latent_frames, sc.frames_per_block) * sc.frames_per_block)
    sc = sc.replace(**changes)

    # text context
    if args.context:
        context = _load_tensor(args.context, "context")
    elif args.text_encoder:
        from .text_encoder import load_text_encoder
        enc = load_text_encoder(args.text_encoder, tokenizer=args.tokenizer, device=device, dtype=dtype)
        context = enc.encode([args.prompt])
        del enc
    elif demo:
        context = prompt_embedding(args.prompt, model.cfg.text_dim)
    else:
        raise SystemExit("error: pass --text-encoder (umt5-xxl file) or --context (precomputed embeddings)")
    if context.dim() != 3 or context.shape[-1] != model.cfg.text_dim:
        raise SystemExit(f"error: context must be [1, L, {model.cfg.text_dim}], got {list(context.shape)}")

    # decoder
    decoder = None
    if not args.no_decode:
        from .vae import StreamingDecoder, VAEConfig, WanVAE, load_vae
        if args.vae:
            vae = load_vae(args.vae, device=device, dtype=dtype)
        elif demo:
            vae = WanVAE(VAEConfig.tiny()).to(device=device, dtype=dtype).eval()
        else:
            raise SystemExit("error: pass --vae (Wan2.1 VAE file) or --no-decode")
        if args.compile:
            vae.decoder.compile()
        decoder = StreamingDecoder(vae)

    session = StreamSession(model, sc, context, height=height, width=width, seed=args.seed, noise=noise,
                            decoder=decoder, device=device, dtype=dtype)
    n_chunks = chunks_for_frames(latent_frames, sc.frames_per_block)
    video_frames = 1 + 4 * (latent_frames - 1)
    log.info("%dx%d, %d latent frames (%d video frames, %.2f s) in %d chunks, policy %s, %s on %s",
             width, height, latent_frames, video_frames, video_frames / 16, n_chunks, sc.cache_policy, dtype, device)

    writer = None
    if decoder is not None:
        from .video_io import VideoWriter
        writer = VideoWriter(args.out, fps=16)
    latents, written = [], 0
    try:
        from tqdm import tqdm
        bar = tqdm(total=n_chunks, unit="chunk", disable=args.quiet, file=sys.stderr)
        t0 = time.perf_counter()
        for chunk in session.run(n_chunks):
            latents.append(chunk.latents.float().cpu())
            if writer is not None and chunk.frames is not None:
                frames = chunk.frames[0]
                frames = frames[: max(0, video_frames - written)]
                writer.write(frames, layout="tchw")
                written += frames.shape[0]
            bar.update(1)
            bar.set_postfix(fps=f"{max(written, 1) / (time.perf_counter() - t0):.1f}" if writer else None)
        bar.close()
    except KeyboardInterrupt:
        log.warning("interrupted after %d chunks; the video written so far stays playable", session.chunk_index)
    finally:
        if writer is not None:
            writer.close()
    if args.latents_out and latents:
        from safetensors.torch import save_file
        lat = torch.cat(latents, dim=1)[:, :latent_frames].contiguous()
        tmp = Path(args.latents_out).with_name(Path(args.latents_out).name + ".partial")
        save_file({"latents": lat}, str(tmp))
        tmp.replace(args.latents_out)                       # never a half-written file under the final name
        log.info("latents %s -> %s", list(lat.shape), args.latents_out)
    st = session.stats
    if writer is not None:
        log.info("wrote %d frames to %s (DiT %.2f s, decode %.2f s)", written, args.out, st.dit_seconds,
                 st.decode_seconds)
    return 0


def cmd_inspect(args) -> int:
    from .checkpoint import format_inspection, inspect_checkpoint

    print(format_inspection(inspect_checkpoint(args.file)))
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        from .bench import main as bench_main
        bench_main(argv[1:])
        return 0
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if getattr(args, "quiet", False) else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "saliency":
            from .reward.cli import run_saliency
            return run_saliency(args)
        if args.command == "download":
            from .download import run as run_download
            return run_download(args)
        return {"generate": cmd_generate, "inspect": cmd_inspect}[args.command](args)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
