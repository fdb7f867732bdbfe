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
    g.add_argument("--prompt", action="append", default=None,
                   help="the prompt; repeat with times for a timeline: --prompt '0: a fox' --prompt '12.5 [flush]: it "
                        "runs' (transitions recache, flush, none; '@N:' = chunk N)")
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
    g.add_argument("--preview-decoder", default=None, metavar="PATH", help="decode with the TAEHV tiny decoder "
                   "(taew2_1.pth / .safetensors from madebyollin/taehv) instead of the Wan VAE: lower quality, much "
                   "faster (~26x fewer FLOPs); --vae is then not needed (except for --init with an image or clip)")
    g.add_argument("--text-encoder", default=None, help="umT5 file (Wan .pth, HF or ComfyUI safetensors)")
    g.add_argument("--tokenizer", default=None, help="spiece.model or google/umt5-xxl folder (ComfyUI files carry it)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--width", type=int, default=None, help="multiple of 16 (default 832; 128 for the demo model)")
    g.add_argument("--height", type=int, default=None, help="multiple of 16 (default 480; 128 for the demo model)")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    g.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    g.add_argument("--attention", default="auto", choices=["auto", "sdpa", "cudnn", "split", "flash"])
    g.add_argument("--compile", action="store_true", help="torch.compile the DiT blocks and the VAE decoder "
                   "(GPU; ~1 min of compilation, then ~1.6x faster)")
    g.add_argument("--no-overlap", action="store_true", help="decode each chunk after its DiT instead of on a side "
                   "CUDA stream during the next chunk's DiT (the overlap is on by default on a GPU: same frames, ~2 %% "
                   "faster; it is off with --save-state-every, --telemetry and test-time scaling)")
    g.add_argument("--conv-search", choices=["default", "all"], default="default",
                   help="GPU: 'all' lets cuDNN time every engine for each VAE conv shape (about 25 s once per run; "
                        "-28 %% on the decoder's 96-channel convs, +3 %% end to end on an H100: pays back after "
                        "about half an hour of video); default: torch's first 10")
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
    g.add_argument("--timeline", default=None, help="prompt timeline file: JSON or 'seconds: prompt' lines "
                   "(format in stream_r1/timeline.py)")
    g.add_argument("--transition", choices=["recache", "flush", "none"], default="recache",
                   help="how a prompt switch treats the KV cache when the entry names none (default recache)")
    g.add_argument("--save-state", default=None, help="stream state file (safetensors) to continue from later; "
                   "written at the end, on Ctrl-C and every --save-state-every chunks (default "
                   "<out>.state.safetensors)")
    g.add_argument("--save-state-every", type=int, default=0, help="also save the stream state every N chunks")
    g.add_argument("--resume", default=None, help="continue a saved stream state up to the requested total length "
                   "(bit-identical on the same device and dtype); with a new --prompt/--timeline: a branch. The "
                   "video and latents written hold only the new frames")
    g.add_argument("--init", default=None, help="start from an image (.png/.jpg/.webp), a clip (.mp4/.mkv/.webm, "
                   "its last frames) or latents (.safetensors 'latents' [1, F, 16, H/8, W/8]): image-to-video / "
                   "extension (approximate: T2V students were not trained on it). The video starts with these "
                   "frames; the length flags count them")
    g.add_argument("--telemetry", default=None, help="write per-chunk drift metrics (JSON) and a plot (.png) here")
    g.add_argument("--drift-refresh", type=float, default=None, help="refresh the sink when colour drift (see "
                   "--telemetry) exceeds this value, e.g. 0.08")
    t = g.add_argument_group("test-time scaling (Stream-T1; README 'Test-time scaling')")
    t.add_argument("--tts-beams", type=int, default=None, help="survivors per chunk (default 2 once a --tts-* flag "
                   "or --reward-model is given); 1 = greedy, streams live; > 1 delays output by up to 2 chunks")
    t.add_argument("--tts-children", type=int, default=None, help="candidates per survivor per chunk (default 2); "
                   "cost ~ beams*children x (DiT + decode + reward) per chunk")
    t.add_argument("--tts-rho", type=float, default=None, help="correlation of a candidate's noise with its "
                   "parent's, in [-1, 1] (default -0.1)")
    t.add_argument("--tts-window", type=int, default=None, help="long-reward window in chunks (default 10)")
    t.add_argument("--tts-sinking", choices=["auto", "on", "off"], default="auto",
                   help="memory sinking (auto: on for the longlive cache policy, off otherwise)")
    t.add_argument("--reward-model", default=None, help="VideoReward folder (or model.pth) scoring the candidates; "
                   "required when beams*children > 1. 'brightness' = an analytic demo reward (mean brightness)")
    t.add_argument("--tts-short-reward", default=None, metavar="PATH", help="HPSv3 (HPSv3.safetensors or its "
                   "folder, with Qwen2-VL-7B-Instruct's tokenizer in tokenizer/) for the short reward on each "
                   "candidate's own frames (~16 GB bf16); default: the --reward-model")
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


DEFAULT_PROMPT = "a red circle moving right on a black background"


def _timeline(args):
    """The prompt timeline of the run: --timeline, or the --prompt values (None on --resume without prompts)."""
    from .timeline import Timeline

    timed = [p for p in args.prompt or [] if Timeline.from_prompts([p]).entries]
    if args.timeline:
        if timed:
            raise SystemExit("error: give the timeline with --timeline or with timed --prompt values, not both")
        tl = Timeline.load(args.timeline, args.transition)
        plain = [p for p in args.prompt or []]
        if plain:
            import dataclasses
            tl = dataclasses.replace(tl, base_prompt=plain[0])
        return tl
    if args.resume and not args.prompt:
        return None
    return Timeline.from_prompts(args.prompt or [DEFAULT_PROMPT], args.transition)


def _init_latents(path: str, vae, height: int, width: int, max_latents: int) -> torch.Tensor:
    """--init file -> clean normalised latents [1, F, 16, H/8, W/8] (images and clips through the VAE)."""
    import numpy as np
    import torch.nn.functional as F

    p = Path(path)
    if not p.is_file():
        raise SystemExit(f"error: {path} does not exist")
    if p.suffix.lower() in (".safetensors", ".sft"):
        return _load_tensor(path, "latents").float()
    if vae is None:
        raise SystemExit("error: --init with an image or a video needs the VAE (--vae) to encode it")
    if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp", ".bmp"):
        from PIL import Image
        frames = np.asarray(Image.open(p).convert("RGB"))[None]                      # [1, H, W, 3]
    else:
        from .video_io import read_video
        frames = read_video(p)
        keep = 1 + 4 * ((min(len(frames), 1 + 4 * (max_latents - 1)) - 1) // 4)      # the last 1 + 4k frames
        frames = frames[len(frames) - keep:]
    x = torch.from_numpy(np.array(frames)).permute(0, 3, 1, 2).float() / 127.5 - 1.0   # [T, 3, h0, w0]
    h0, w0 = x.shape[-2:]
    scale = max(height / h0, width / w0)                                              # cover, then centre-crop
    x = F.interpolate(x, size=(max(height, round(h0 * scale)), max(width, round(w0 * scale))), mode="bilinear",
                      antialias=True, align_corners=False)
    top, left = (x.shape[-2] - height) // 2, (x.shape[-1] - width) // 2
    x = x[..., top:top + height, left:left + width].clamp(-1, 1)
    with torch.no_grad():
        z = vae.encode(x.permute(1, 0, 2, 3)[None])                                  # [1, 16, F, h, w]
    return z.permute(0, 2, 1, 3, 4)


def cmd_generate(args) -> int:
    from .loaders import load_student, prompt_embedding, random_student
    from .stream import StreamSession, chunks_for_frames

    device, dtype = _device_dtype(args.device, args.dtype)
    demo = args.checkpoint is None
    bundle = None
    if demo:
        from .shapes import bundle as shapes_bundle
        if shapes_bundle.available():
            bundle = shapes_bundle.load_bundle(device=device, dtype=dtype, attention=args.attention)
            model, sc = bundle.model, bundle.info.stream_config
            height, width = args.height or bundle.height, args.width or bundle.width
            log.info("no --checkpoint given: the embedded shapes-world model (%s)", bundle.root)
        else:
            log.warning("no --checkpoint given and no shapes-world bundle at %s: running a seeded random tiny Wan "
                        "model to show the pipeline (its output is noise; pass a real checkpoint for real video)",
                        shapes_bundle.bundle_dir())
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
    _cudnn_setup(device, args.compile, args.conv_search)
    if args.compile:
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

    # text context: every prompt of the timeline encoded once
    saved = None
    if args.resume:
        from .stream_state import load_stream_state
        saved = load_stream_state(args.resume)
        sc = _resumed_config(saved, sc, changes, args)
    if _state_path(args) is None:            # nothing continues this stream: its final clean cache pass is unused
        sc = sc.replace(skip_last_context_pass=True)
    timeline = _timeline(args)
    prompts = timeline.prompts if timeline is not None else []
    contexts = {}
    if args.context:
        if len(prompts) > 1:
            raise SystemExit("error: --context holds one prompt embedding; a timeline needs --text-encoder")
        context = _load_tensor(args.context, "context")
        contexts = {p: context for p in prompts}
    elif not prompts:
        context = saved.tensors["context"]
    elif args.text_encoder:
        from .text_encoder import load_text_encoder
        enc = load_text_encoder(args.text_encoder, tokenizer=args.tokenizer, device=device, dtype=dtype)
        contexts = {p: enc.encode([p]) for p in prompts}
        del enc
    elif bundle is not None:
        contexts = {p: bundle.text_encoder.encode([p]) for p in prompts}
    elif demo:
        contexts = {p: prompt_embedding(p, model.cfg.text_dim) for p in prompts}
    else:
        raise SystemExit("error: pass --text-encoder (umt5-xxl file) or --context (precomputed embeddings)")
    if contexts:
        context = contexts[prompts[0]]
    if context.dim() != 3 or context.shape[-1] != model.cfg.text_dim:
        raise SystemExit(f"error: context must be [1, L, {model.cfg.text_dim}], got {list(context.shape)}")

    # decoder
    decoder = vae = None
    init_image = args.init is not None and not args.init.lower().endswith((".safetensors", ".sft"))
    if args.preview_decoder and not args.no_decode:
        from .taehv import TAEHVStreamingDecoder, load_taehv
        decoder = TAEHVStreamingDecoder(load_taehv(args.preview_decoder, device=device, dtype=dtype))
    if (not args.no_decode and decoder is None) or init_image:
        from .vae import StreamingDecoder, VAEConfig, WanVAE, load_vae
        if args.vae:
            vae = load_vae(args.vae, device=device, dtype=dtype)
        elif bundle is not None:
            vae = bundle.vae
        elif demo:
            with torch.random.fork_rng(devices=[]):                # seeded: runs and resumed runs decode alike
                torch.manual_seed(0)
                vae = WanVAE(VAEConfig.tiny())
            vae = vae.to(device=device, dtype=dtype).eval()
        else:
            raise SystemExit("error: pass --vae (Wan2.1 VAE file) or --no-decode")
        if device.type == "cuda":
            vae.to_channels_last()                          # cuDNN's NDHWC kernels: -25 % decode time on Hopper
        if args.compile:
            vae.decoder.compile()
        if decoder is None and not args.no_decode:
            decoder = StreamingDecoder(vae)

    if saved is not None:
        if args.init:
            raise SystemExit("error: --init starts a new stream; it cannot be combined with --resume")
        session = StreamSession.from_state(model, saved, decoder=decoder, device=device,
                                           config=sc if sc != saved.config() else None)
        height, width = session.height, session.width
        if not prompts and args.context:
            session.set_context(context, args.transition)
    else:
        session = StreamSession(model, sc, context, height=height, width=width, seed=args.seed, noise=noise,
                                decoder=decoder, device=device, dtype=dtype)
    init_frames = None
    if args.init:
        z = _init_latents(args.init, vae, height, width, sc.cache_frames)
        init_frames = session.prefill(z)
        log.info("prefilled %d latent frames from %s", z.shape[1], args.init)
    gen_frames = latent_frames - session.frame_offset          # the length flags count the init frames too
    if gen_frames <= 0:
        raise SystemExit(f"error: --init gives {session.frame_offset} latent frames already; ask for a longer video")
    n_total = chunks_for_frames(gen_frames, sc.frames_per_block)
    n_chunks = n_total - session.chunk_index
    new_latents = gen_frames - session.chunk_index * sc.frames_per_block        # latent frames this run adds
    if n_chunks <= 0:
        raise SystemExit(f"error: the resumed stream already has {session.chunk_index} chunks; ask for a longer "
                         f"stream than {n_total} chunks (--seconds / --frames give the total length)")
    if timeline is not None:
        from .timeline import PromptSchedule
        session.set_timeline(PromptSchedule.build(timeline, sc.frames_per_block, n_total, contexts=contexts))
    video_frames = 1 + 4 * (latent_frames - 1)
    telemetry, state_path = _telemetry(args, session, saved), _state_path(args)
    tts_run = _tts(args, session, device, dtype)
    run = tts_run or session.run
    if not args.no_overlap:
        why_not = _overlap_blocker(args, tts_run is not None)
        if why_not is not None:
            if device.type == "cuda":
                log.info("decode not overlapped with the DiT: %s", why_not)
        elif session.enable_overlap(priority=True):
            log.info("decoding each chunk on a side CUDA stream during the next chunk's DiT (--no-overlap: off)")
    log.info("%dx%d, %d latent frames (%d video frames, %.2f s) in %d chunks, policy %s, %s on %s",
             width, height, latent_frames, video_frames, video_frames / 16, n_chunks, sc.cache_policy, dtype, device)

    writer = None
    if decoder is not None:
        from .video_io import VideoWriter
        writer = VideoWriter(args.out, fps=16)
    latents = []
    written = written0 = 1 + 4 * (session.frames_done - 1) if session.frames_done and init_frames is None else 0
    if writer is not None and init_frames is not None:
        writer.write(init_frames[0], layout="tchw")
        written += init_frames.shape[1]
    stop = _StopOnSignal()
    completed = False
    try:
        from tqdm import tqdm
        bar = tqdm(total=n_chunks, unit="chunk", disable=args.quiet, file=sys.stderr)
        t0 = time.perf_counter()
        with stop:
            for chunk in run(n_chunks, should_stop=stop, on_chunk=telemetry.on_chunk if telemetry else None):
                latents.append(chunk.latents.float().cpu())
                if writer is not None and chunk.frames is not None:
                    frames = chunk.frames[0]
                    frames = frames[: max(0, video_frames - written)]
                    writer.write(frames, layout="tchw")
                    written += frames.shape[0]
                bar.update(1)
                fps = max(written - written0, 1) / (time.perf_counter() - t0)
                bar.set_postfix(fps=f"{fps:.1f}" if writer else None)
                if state_path and args.save_state_every and session.chunk_index % args.save_state_every == 0:
                    _save_state(session, state_path, telemetry)
        bar.close()
        completed = True
    except KeyboardInterrupt:
        log.warning("interrupted inside chunk %d; the video written so far stays playable%s", session.chunk_index,
                    "; the last saved state is kept" if state_path else "")
    finally:
        if writer is not None:
            writer.close()
        if completed and state_path:
            _save_state(session, state_path, telemetry)
            if session.interrupted:
                log.warning("stopped after %d chunks; continue with --resume %s", session.chunk_index, state_path)
        if telemetry is not None and telemetry.records:
            telemetry.save(args.telemetry)
            log.info("telemetry -> %s (+ .png)", args.telemetry)
    if args.latents_out and latents:
        from safetensors.torch import save_file
        lat = torch.cat(latents, dim=1)[:, :new_latents].contiguous()
        tmp = Path(args.latents_out).with_name(Path(args.latents_out).name + ".partial")
        save_file({"latents": lat}, str(tmp))
        tmp.replace(args.latents_out)                       # never a half-written file under the final name
        log.info("latents %s -> %s", list(lat.shape), args.latents_out)
    st = session.stats
    if writer is not None:
        log.info("wrote %d frames to %s (DiT %.2f s, decode %.2f s)", written, args.out, st.dit_seconds,
                 st.decode_seconds)
    return 0


def _cudnn_setup(device: torch.device, compile: bool, conv_search: str) -> None:
    """On a GPU, with --compile or --conv-search all: cuDNN times its engines once per conv shape and keeps the
    fastest (`all`: every engine, not torch's first 10; the VAE decoder's 96-channel convs then get a 128x128 tile
    instead of 256x64 on an H100, 2.61 -> 1.88 ms per 4-frame call, bench/RESULTS.md session 11)."""
    if device.type == "cuda" and (compile or conv_search == "all"):
        torch.backends.cudnn.benchmark = True
        if conv_search == "all":
            torch.backends.cudnn.benchmark_limit = 0


def _overlap_blocker(args, tts: bool) -> Optional[str]:
    """Why this run cannot decode on a side stream (None: it can). Overlapped, `run` yields chunk k once chunk k+1's
    DiT is enqueued, so anything reading the session at a yield would see it one chunk ahead of the frames."""
    if tts:
        return "test-time scaling decodes its candidates itself"
    if args.save_state_every:
        return "--save-state-every saves the session at chunk boundaries"
    if args.telemetry:
        return "--telemetry (and --drift-refresh) act on the session per decoded chunk"
    return None


def _tts(args, session, device, dtype):
    """Stream-T1 when a --tts-* flag or --reward-model is given: its `run` (same interface as session.run)."""
    flags = (args.tts_beams, args.tts_children, args.tts_rho, args.tts_window, args.reward_model,
             args.tts_short_reward)
    if all(f is None for f in flags) and args.tts_sinking == "auto":
        return None
    from .tts import BrightnessReward, StreamT1, T1Config
    if session.decoder is None:
        raise SystemExit("error: test-time scaling scores decoded frames; drop --no-decode")
    if args.drift_refresh is not None or args.save_state_every:
        raise SystemExit("error: --drift-refresh and --save-state-every do not combine with test-time scaling")
    d = T1Config()
    kw = dict(beams=args.tts_beams or d.beams, children=args.tts_children or d.children,
              sinking={"auto": None, "on": True, "off": False}[args.tts_sinking])
    if args.tts_rho is not None:
        kw["rho"] = args.tts_rho
    if args.tts_window is not None:
        kw["window_chunks"] = args.tts_window
    cfg = T1Config(**kw)
    sinking = session.cfg.cache_policy == "longlive" if cfg.sinking is None else cfg.sinking
    if args.reward_model is None:
        if cfg.beams * cfg.children > 1 or (sinking and args.tts_sinking == "on"):
            raise SystemExit("error: test-time scaling with beams*children > 1 (or --tts-sinking on) needs "
                             "--reward-model (a VideoReward folder; 'brightness' for the demo)")
        cfg = cfg.replace(sinking=False)                     # nothing to choose: the reward would only steer sinking
        reward = BrightnessReward()
    elif args.reward_model == "brightness":
        log.warning("--reward-model brightness: an analytic demo reward (mean brightness), not a quality score")
        reward = BrightnessReward()
    else:
        from .reward import load_video_reward
        reward = load_video_reward(args.reward_model, device=device, dtype=dtype)
    short = None
    if args.tts_short_reward == "brightness":
        short = BrightnessReward()
    elif args.tts_short_reward is not None:
        from .reward.hpsv3 import load_hpsv3
        short = load_hpsv3(args.tts_short_reward, device=device, dtype=dtype)
    t1 = StreamT1(session, reward, cfg, short_reward=short)
    n = cfg.beams * cfg.children
    log.info("Stream-T1: %d beam(s) x %d children = %d candidates per chunk (~%dx DiT + decode + reward), "
             "sinking %s; %s", cfg.beams, cfg.children, n, n, "on" if t1.sinking else "off",
             "output is live (greedy)" if cfg.beams == 1 else
             f"output lags the search by up to {cfg.max_delay} chunks (bounded delay)")
    return t1.run


def _resumed_config(saved, sc, changes: dict, args) -> StreamConfig:
    """The config of a resumed run: the state's, with the sampling flags given on this command line."""
    cfg = saved.config()
    if args.cache_policy is not None and args.cache_policy != cfg.cache_policy:
        raise SystemExit(f"error: {args.resume} is a {cfg.cache_policy} stream; it cannot continue as "
                         f"{args.cache_policy}")
    keep = {k: v for k, v in changes.items() if k != "full_cache_frames" or v > cfg.full_cache_frames}
    return cfg.replace(**keep)


def _state_path(args) -> Optional[str]:
    if args.save_state:
        return args.save_state
    if args.save_state_every:
        return str(Path(args.out).with_suffix(".state.safetensors"))
    return None


def _save_state(session, path: str, telemetry) -> None:
    tensors, meta = telemetry.state_dict() if telemetry is not None else ({}, None)
    session.save_state(path, extra_tensors={f"telemetry.{k}": v for k, v in tensors.items()},
                       extra_meta={"telemetry": meta} if meta is not None else None)


def _telemetry(args, session, saved):
    if args.drift_refresh is not None and not args.telemetry:
        raise SystemExit("error: --drift-refresh needs --telemetry (the drift is measured on the decoded frames)")
    if not args.telemetry:
        return None
    if session.decoder is None:
        raise SystemExit("error: --telemetry measures decoded frames; drop --no-decode")
    from .telemetry import DriftPolicy, DriftTelemetry
    tel = DriftTelemetry(session=session)
    if saved is not None and saved.extra.get("telemetry"):
        tel.load_state_dict({k[len("telemetry."):]: v for k, v in saved.extra_tensors.items()
                             if k.startswith("telemetry.")}, saved.extra["telemetry"])
    if args.drift_refresh is not None:
        tel.callbacks.append(DriftPolicy(session, threshold=args.drift_refresh, telemetry=tel))
    return tel


class _StopOnSignal:
    """First Ctrl-C (or SIGTERM): stop after the current chunk (the state is saved); a second one aborts now."""

    def __init__(self):
        self.flag, self._old = False, {}

    def __call__(self) -> bool:
        return self.flag

    def _handle(self, signum, frame):
        if self.flag:
            raise KeyboardInterrupt
        self.flag = True
        log.warning("stopping after this chunk (press Ctrl-C again to abort at once)")

    def __enter__(self):
        import signal
        import threading
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        import signal
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}


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
