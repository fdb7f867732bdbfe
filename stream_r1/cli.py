"""Command line: `python -m stream_r1 generate | inspect | download`.

`generate` streams a video chunk by chunk: each chunk is denoised, decoded and appended to the output
file at once, so memory stays flat and an interrupted run leaves a playable file. For exact comparisons
with other implementations it takes the initial noise and the text context from files and can write the
latents instead of (or beside) the video.

Exit status: 0; 2 for a user error, printed as one line `error: ...` (--debug: the traceback), found before any model
loads where it can be (outputs, sizes, lengths, memory); 128 + N when signal N cut a stream short (Ctrl-C: 130).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Optional

import torch

from .config import CACHE_POLICIES, StreamConfig, WanConfig, check_resolution, latent_frames_for
from .host_copy import HostCopier, uint8_thwc

log = logging.getLogger("stream_r1")

DEMO_SIZE = (128, 128)          # (height, width) of the demo model when no checkpoint is given


class UsageError(ValueError):
    """A bad command line; `main` prints it as one line and returns 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: `error: <what> (see <prog> --help)` instead of the usage block, exit status 2."""

    def error(self, message: str):
        raise UsageError(f"{message} (see {self.prog} --help)")


def _number(text: str, kind: type, what: str):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None


def _positive_int(text: str) -> int:
    v = _number(text, int, "a positive integer")
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return v


def _count(text: str) -> int:
    v = _number(text, int, "an integer >= 0")
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text}")
    return v


def _finite_float(text: str) -> float:
    v = _number(text, float, "a number")
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return v


def _positive_float(text: str) -> float:
    v = _number(text, float, "a positive number")
    if not math.isfinite(v) or v <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive, finite number, got {text}")
    return v


def _seconds(text: str) -> float:
    v = _number(text, float, "a number of seconds")
    if not math.isfinite(v) or v <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive, finite number of seconds, got {text}")
    return v


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
    p = _Parser(prog="python -m stream_r1", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="stream a video from a causal Wan student")
    g.add_argument("--prompt", action="append", default=None,
                   help="the prompt; repeat with times for a timeline: --prompt '0: a fox' --prompt '12.5 [flush]: it "
                        "runs' (transitions recache, flush, none; '@N:' = chunk N)")
    length = g.add_mutually_exclusive_group()
    length.add_argument("--seconds", type=_seconds, default=None, help="video length at 16 fps (default 5)")
    length.add_argument("--frames", type=_positive_int, default=None, help="video frames, 4k+1 (81 = 5 s)")
    g.add_argument("--out", default="stream_r1.mp4", help=".mp4 (fragmented), .mkv or .webm")
    g.add_argument("--checkpoint", default=None,
                   help="DiT file: Wan-AI, Comfy-Org, Self-Forcing/Reward Forcing/Stream-R1/LongLive .pt, or our "
                        "export (default: the embedded shapes-world model, a tiny model trained on coloured shapes that runs "
                        "on the CPU in seconds, with its own text encoder and VAE)")
    g.add_argument("--entry", default=None, help="entry of a trainer .pt (default generator_ema, then generator)")
    g.add_argument("--lora", default=None, help="LongLive LoRA file merged into the checkpoint")
    g.add_argument("--num-heads", type=_positive_int, default=None, help="attention heads when the file has no "
                   "config (default dim/128)")
    g.add_argument("--vae", default=None, help="Wan2.1 VAE (.pth or .safetensors)")
    g.add_argument("--preview-decoder", default=None, metavar="PATH", help="decode with the TAEHV tiny decoder "
                   "(taew2_1.pth / .safetensors from madebyollin/taehv) instead of the Wan VAE: lower quality, much "
                   "faster (~26x fewer FLOPs); --vae is then not needed (except for --init with an image or clip)")
    g.add_argument("--text-encoder", default=None, help="umT5 file (Wan .pth, HF or ComfyUI safetensors)")
    g.add_argument("--tokenizer", default=None, help="spiece.model or google/umt5-xxl folder (ComfyUI files carry it)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--width", type=_positive_int, default=None,
                   help="multiple of 16 (default 832; 96 for the shapes-world model)")
    g.add_argument("--height", type=_positive_int, default=None,
                   help="multiple of 16 (default 480; 96 for the shapes-world model)")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    g.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    g.add_argument("--attention", default="auto", choices=["auto", "sdpa", "cudnn", "flash"])
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
    g.add_argument("--window", type=_positive_int, default=None, help="KV window in latent frames (sink included)")
    g.add_argument("--sink", type=_count, default=None, help="sink frames")
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
    g.add_argument("--save-state-every", type=_count, default=0, help="also save the stream state every N chunks")
    g.add_argument("--resume", default=None, help="continue a saved stream state up to the requested total length "
                   "(bit-identical on the same device and dtype); with a new --prompt/--timeline: a branch. The "
                   "video and latents written hold only the new frames")
    g.add_argument("--init", default=None, help="start from an image (.png/.jpg/.webp), a clip (.mp4/.mkv/.webm, "
                   "its last frames) or latents (.safetensors 'latents' [1, F, 16, H/8, W/8]): image-to-video / "
                   "extension (approximate: T2V students were not trained on it). The video starts with these "
                   "frames; the length flags count them")
    g.add_argument("--telemetry", default=None, help="write per-chunk drift metrics (JSON) and a plot (.png) here")
    g.add_argument("--drift-refresh", type=_positive_float, default=None, help="refresh the sink when colour drift "
                   "(see --telemetry) exceeds this value, e.g. 0.08")
    t = g.add_argument_group("test-time scaling (Stream-T1; docs/test-time-scaling.md)")
    t.add_argument("--tts-beams", type=_positive_int, default=None, help="survivors per chunk (default 2 once a "
                   "--tts-* flag or --reward-model is given); 1 = greedy, streams live; > 1 delays output by up to 2 "
                   "chunks")
    t.add_argument("--tts-children", type=_positive_int, default=None, help="candidates per survivor per chunk "
                   "(default 2); cost ~ beams*children x (DiT + decode + reward) per chunk")
    t.add_argument("--tts-rho", type=_finite_float, default=None, help="correlation of a candidate's noise with its "
                   "parent's, in [-1, 1] (default -0.1)")
    t.add_argument("--tts-window", type=_positive_int, default=None, help="long-reward window in chunks (default 10)")
    t.add_argument("--tts-sinking", choices=["auto", "on", "off"], default="auto",
                   help="memory sinking (auto: on for the longlive cache policy, off otherwise)")
    t.add_argument("--reward-model", default=None, help="VideoReward folder (or model.pth) scoring the candidates; "
                   "required when beams*children > 1. 'brightness' = an analytic demo reward (mean brightness)")
    t.add_argument("--tts-short-reward", default=None, metavar="PATH", help="HPSv3 (HPSv3.safetensors or its "
                   "folder, with Qwen2-VL-7B-Instruct's tokenizer in tokenizer/) for the short reward on each "
                   "candidate's own frames (~16 GB bf16); default: the --reward-model")
    g.add_argument("--no-memory-check", action="store_true", help="run even when the memory estimate (weights + KV "
                   "cache + activations + VAE decode) exceeds the device's memory")
    g.add_argument("--quiet", action="store_true")

    sub.add_parser("bench", help="speed benchmark at real size with random weights (see --help)", add_help=False)

    from .reward.cli import add_saliency_parser
    add_saliency_parser(sub)

    from .download import add_parser as add_download_parser
    add_download_parser(sub)

    i = sub.add_parser("inspect", help="describe a checkpoint file")
    i.add_argument("file")
    i.add_argument("--num-heads", type=_positive_int, default=None)
    for name, sp in sub.choices.items():
        if name != "bench":                     # bench parses its own flags; main strips --debug for it
            sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                            help="show the traceback of an error")
    return p


def _device_dtype(device: str, dtype: str) -> tuple[torch.device, torch.dtype]:
    try:
        dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                           ("cpu" if device == "auto" else device))
    except RuntimeError:
        raise UsageError(f"--device {device!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but no CUDA GPU is visible; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UsageError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    if dtype == "auto":
        dt = torch.bfloat16 if dev.type == "cuda" else torch.float32
    else:
        dt = getattr(torch, dtype)
    return dev, dt


def _load_tensor(path: str, key: str) -> torch.Tensor:
    from .weights_io import read_tensors

    if not Path(path).is_file():
        raise SystemExit(f"error: {path} does not exist")
    d = read_tensors(path)                          # header validated first
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

    if any(not p.strip() for p in args.prompt or []):
        raise UsageError(f"--prompt is empty: give the text of the video, e.g. --prompt '{DEFAULT_PROMPT}' (what "
                         "runs when --prompt is left out)")
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
    """Check the request (outputs, sizes, lengths, memory) before loading anything, load the models and the text
    context, open the stream, then run it chunk by chunk (`_stream`)."""
    device, dtype = _device_dtype(args.device, args.dtype)
    _check_outputs(args)
    noise = _load_tensor(args.noise, "noise") if args.noise else None
    saved = _load_saved(args)
    timeline = _timeline(args)
    _check_plan(args, noise, saved, device, dtype)
    model, sc, bundle, (height, width) = _prepare_model(args, device, dtype)
    sc, latent_frames = _run_config(args, sc, noise, saved)
    prompts = timeline.prompts if timeline is not None else []
    context, contexts = _contexts(args, model, prompts, saved, bundle, device, dtype)
    decoder, vae = _decoder(args, bundle, device, dtype)
    session, init_frames = _open_session(args, model, sc, context, prompts, saved, noise, decoder, vae, height,
                                         width, device, dtype)
    n_total, n_chunks, new_latents = _chunk_plan(session, sc, latent_frames)
    if timeline is not None:
        from .timeline import PromptSchedule
        session.set_timeline(PromptSchedule.build(timeline, sc.frames_per_block, n_total, contexts=contexts))
    video_frames = 1 + 4 * (latent_frames - 1)
    telemetry = _telemetry(args, session, saved)
    tts_run = _tts(args, session, device, dtype)
    _overlap(args, session, tts_run is not None, device)
    log.info("%dx%d, %d latent frames (%d video frames, %.2f s) in %d chunks, policy %s, %s on %s", session.width,
             session.height, latent_frames, video_frames, video_frames / 16, n_chunks, sc.cache_policy, dtype, device)
    return _stream(args, session, tts_run or session.run, n_chunks=n_chunks, video_frames=video_frames,
                   new_latents=new_latents, init_frames=init_frames, decode=decoder is not None, telemetry=telemetry)


# ---- checks before anything is loaded ----------------------------------------------------------------------------
def _check_outputs(args) -> None:
    """Refuse an output that cannot be written now, not after the models load or the first chunk."""
    if not args.no_decode:
        from .video_io import VideoWriter
        VideoWriter(args.out, fps=16)           # refuses an unknown extension or a missing folder; opens no file
        _check_writable(args.out, "--out")
    if args.latents_out:
        _check_writable(args.latents_out, "--latents-out")
    for flag, path in (("--save-state", _state_path(args)), ("--telemetry", args.telemetry)):
        if path:
            _check_writable(path, flag, make_parents=True)        # both create their folder


def _check_writable(path: str, flag: str, make_parents: bool = False) -> None:
    """Open `path` for appending (an existing file is left as it is, a new one removed again), or with
    `make_parents` create a temporary file in the nearest existing folder above it."""
    import tempfile

    p = Path(path)
    if p.is_dir():
        raise UsageError(f"{flag} {path} is a folder; give a file name")
    if p.exists() and not p.is_file():
        raise UsageError(f"{flag} {path} is not a regular file")
    folder = p.parent
    while make_parents and not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise FileNotFoundError(f"{flag} {path}: folder {p.parent} does not exist; create it first")
    try:
        if folder == p.parent:
            existed = p.exists()
            with open(p, "ab"):
                pass
            if not existed:
                p.unlink()
        else:
            tempfile.TemporaryFile(dir=folder).close()
    except OSError as e:
        raise PermissionError(f"{flag} {path} cannot be written ({e.strerror or e})") from None


def _load_saved(args):
    """The --resume state (CPU tensors), read before the models so that its sizes can be checked first."""
    if not args.resume:
        return None
    from .stream_state import load_stream_state
    return load_stream_state(args.resume)


_MEMORY_HINTS = {
    "weights": "use --fp8 or --dtype bfloat16",
    "kv_cache": "use a smaller --window or --width/--height",
    "activations": "use a smaller --width/--height",
    "decode": "use a smaller --width/--height, --preview-decoder or --no-decode",
}


def _check_plan(args, noise: Optional[torch.Tensor], saved, device: torch.device, dtype: torch.dtype) -> None:
    """Refuse sizes, lengths and caches that cannot run before any weights are loaded or caches allocated: the model's
    config from its file header, the flags applied as `_load_model` and `_stream_config` will, the memory this needs
    (limits.py) against the device's."""
    from .limits import device_memory, estimate_stream_memory, format_bytes

    mc, sc, default_size, vae_dim = _describe_model(args)
    if mc is None:                                   # no config in the header: loading the file will say why
        return
    height, width = _size(args, default_size)
    check_resolution(height, width, mc.pixel_multiple)
    sc, changes, _ = _stream_config(args, sc, noise)
    if saved is not None:
        from .stream_state import check_state_model
        check_state_model(saved, mc)                 # another model's state: say so, not "context must be ..."
        sc = _resumed_config(saved, sc, changes, args)
        height, width = int(saved.session["height"]), int(saved.session["width"])
    if args.no_memory_check:
        return
    taehv = bool(args.preview_decoder) and not args.no_decode
    est = estimate_stream_memory(mc, sc, height, width, dtype=dtype, fp8=args.fp8, taehv=taehv,
                                 vae_dim=None if args.no_decode or taehv else vae_dim)
    have = device_memory(device)
    if have is None or est.total <= have[0]:
        return
    hint = _MEMORY_HINTS[est.largest]
    if est.largest == "kv_cache" and sc.cache_policy == "full":
        hint = "the full cache holds the whole video: ask for a shorter one or use --cache-policy window_sink"
    raise UsageError(f"{width}x{height} with a {sc.cache_frames}-frame KV cache ({sc.cache_policy}) needs about "
                     f"{format_bytes(est.total)} ({est.describe()}) but {have[1]}; {hint} (--no-memory-check runs it "
                     "anyway)")


def _describe_model(args) -> tuple[Optional[WanConfig], Optional[StreamConfig], tuple[int, int], int]:
    """What `_load_model` will load, read from the file headers without the weights: (model config and the family's
    stream config, both None when the header does not give them; default (height, width); the Wan VAE's width)."""
    from .checkpoint import inspect_checkpoint
    from .shapes import bundle as shapes_bundle
    from .vae import VAEConfig

    def header(path, **kw) -> dict:
        try:
            return inspect_checkpoint(path, **kw)
        except Exception as e:                        # loading the file reports the problem, with its own message
            log.debug("no config from the header of %s: %s", path, e)
            return {}

    vae_file = args.vae
    if args.checkpoint is not None:
        d, size = header(args.checkpoint, entry=args.entry, num_heads=args.num_heads), (480, 832)
    elif shapes_bundle.available():
        files, manifest = shapes_bundle.paths(), shapes_bundle.manifest()
        d = header(files["student"])
        size, vae_file = (int(manifest.get("height", 96)), int(manifest.get("width", 96))), vae_file or files["vae"]
    else:
        vae_dim = _vae_width(vae_file) if vae_file else VAEConfig.tiny().dim
        return WanConfig.tiny(), StreamConfig.stream_r1(), DEMO_SIZE, vae_dim
    config = d.get("config") or {}
    mc = WanConfig.from_dict(config) if "error" not in d and config.get("num_heads") else None
    if mc is None:
        return None, None, size, VAEConfig().dim
    names = {f.name for f in dataclasses.fields(StreamConfig)}
    stream = {k: (tuple(v) if isinstance(v, list) else v) for k, v in (d.get("stream_config") or {}).items()
              if k in names}
    sc = StreamConfig(**stream) if stream else StreamConfig.for_policy(d.get("cache_policy") or "window_sink")
    return mc, sc, size, _vae_width(vae_file) if vae_file else VAEConfig().dim


def _vae_width(path) -> int:
    """The `dim` of a Wan VAE file from its safetensors header (96, the released VAE's, when it cannot be read)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            key = next((k for k in f.keys() if k.endswith("decoder.head.0.gamma")), None)
            if key is not None:
                return int(f.get_slice(key).get_shape()[0])
    except Exception:                                 # a .pth or a damaged file: loading it reports the problem
        pass
    return 96


# ---- loading ------------------------------------------------------------------------------------------------------
def _load_model(args, device: torch.device, dtype: torch.dtype):
    """The DiT: (model, its family's stream config, the shapes-world bundle or None, default (height, width)).
    Without --checkpoint: the embedded shapes-world bundle, else a seeded random tiny model."""
    from .loaders import load_student, random_student

    if args.checkpoint is not None:
        model, info = load_student(args.checkpoint, device=device, dtype=dtype, attention=args.attention,
                                   entry=args.entry, num_heads=args.num_heads, lora=args.lora)
        log.info("checkpoint: %s / %s, default cache policy %s", info.format, info.family,
                 info.stream_config.cache_policy)
        return model, info.stream_config, None, (480, 832)
    from .shapes import bundle as shapes_bundle
    if shapes_bundle.available():
        bundle = shapes_bundle.load_bundle(device=device, dtype=dtype, attention=args.attention)
        log.info("no --checkpoint given: the embedded shapes-world model (%s)", bundle.root)
        return bundle.model, bundle.info.stream_config, bundle, (bundle.height, bundle.width)
    log.warning("no --checkpoint given and no shapes-world bundle at %s: running a seeded random tiny Wan "
                "model to show the pipeline (its output is noise; pass a real checkpoint for real video)",
                shapes_bundle.bundle_dir())
    model = random_student(WanConfig.tiny(), seed=0, device=device, dtype=dtype, attention=args.attention)
    return model, StreamConfig.stream_r1(), None, DEMO_SIZE


def _size(args, default: tuple[int, int]) -> tuple[int, int]:
    """(height, width): the flags, else the model's default."""
    return (args.height if args.height is not None else default[0],
            args.width if args.width is not None else default[1])


def _prepare_model(args, device: torch.device, dtype: torch.dtype):
    """The DiT ready to stream: loaded (`_load_model`), fp8 and compiled as asked; (model, its family's stream config,
    the shapes-world bundle or None, (height, width))."""
    model, sc, bundle, default_size = _load_model(args, device, dtype)
    height, width = _size(args, default_size)
    check_resolution(height, width, model.cfg.pixel_multiple)
    if args.fp8:
        from .wan.fp8 import quantize_fp8_
        quantize_fp8_(model)
    _cudnn_setup(device, args.compile, args.conv_search)
    if args.compile:
        from .compile_cache import use_compile_cache
        use_compile_cache()                             # a second process reuses what the first compiled
        model.compile_blocks()
    return model, sc, bundle, (height, width)


def _run_config(args, sc: StreamConfig, noise: Optional[torch.Tensor], saved) -> tuple[StreamConfig, int]:
    """The stream config of this run (the flags on the family's or the resumed state's) and its latent frames."""
    sc, changes, latent_frames = _stream_config(args, sc, noise)
    if saved is not None:
        sc = _resumed_config(saved, sc, changes, args)
    if _state_path(args) is None:            # nothing continues this stream: its final clean cache pass is unused
        sc = sc.replace(skip_last_context_pass=True)
    return sc, latent_frames


def _decoder(args, bundle, device: torch.device, dtype: torch.dtype):
    """(the streaming decoder or None, the Wan VAE or None): --preview-decoder, --vae, the bundle's VAE, or without
    --checkpoint a seeded tiny VAE; the VAE is loaded for --init with an image or clip even with --no-decode."""
    decoder = vae = None
    init_image = args.init is not None and not args.init.lower().endswith((".safetensors", ".sft"))
    if args.preview_decoder and not args.no_decode:
        from .taehv import TAEHVStreamingDecoder, load_taehv
        decoder = TAEHVStreamingDecoder(load_taehv(args.preview_decoder, device=device, dtype=dtype))
    if (args.no_decode or decoder is not None) and not init_image:
        return decoder, vae
    from .vae import StreamingDecoder, VAEConfig, WanVAE, channels_last_pays, load_vae
    if args.vae:
        vae = load_vae(args.vae, device=device, dtype=dtype)
    elif bundle is not None:
        vae = bundle.vae
    elif args.checkpoint is None:
        with torch.random.fork_rng(devices=[]):                # seeded: runs and resumed runs decode alike
            torch.manual_seed(0)
            vae = WanVAE(VAEConfig.tiny())
        vae = vae.to(device=device, dtype=dtype).eval()
    else:                                               # a trainer export's own, else one line saying what to pass
        from .loaders import checkpoint_vae
        vae = checkpoint_vae(args.checkpoint, device=device, dtype=dtype)
    if channels_last_pays(device, vae.dtype):
        vae.to_channels_last()                          # cuDNN's / oneDNN's NDHWC kernels
    if args.compile:
        vae.decoder.compile()
    if decoder is None and not args.no_decode:
        decoder = StreamingDecoder(vae)
    return decoder, vae


def _open_session(args, model, sc: StreamConfig, context: torch.Tensor, prompts: list[str], saved, noise, decoder,
                  vae, height: int, width: int, device: torch.device, dtype: torch.dtype):
    """The stream: a new one, or the --resume state continued; prefilled from --init. Returns (session, the --init
    frames [1, T, 3, H, W] or None)."""
    from .stream import StreamSession

    if saved is not None:
        if args.init:
            raise SystemExit("error: --init starts a new stream; it cannot be combined with --resume")
        session = StreamSession.from_state(model, saved, decoder=decoder, device=device,
                                           config=sc if sc != saved.config() else None)
        if not prompts and args.context:
            session.set_context(context, args.transition)
    else:
        session = StreamSession(model, sc, context, height=height, width=width, seed=args.seed, noise=noise,
                                decoder=decoder, device=device, dtype=dtype)
    init_frames = None
    if args.init:
        z = _init_latents(args.init, vae, session.height, session.width, sc.cache_frames)
        init_frames = session.prefill(z)
        log.info("prefilled %d latent frames from %s", z.shape[1], args.init)
    return session, init_frames


def _chunk_plan(session, sc: StreamConfig, latent_frames: int) -> tuple[int, int, int]:
    """(chunks of the whole stream, chunks this run generates, latent frames this run adds)."""
    from .stream import chunks_for_frames

    gen_frames = latent_frames - session.frame_offset          # the length flags count the init frames too
    if gen_frames <= 0:
        raise SystemExit(f"error: --init gives {session.frame_offset} latent frames already; ask for a longer video")
    n_total = chunks_for_frames(gen_frames, sc.frames_per_block)
    n_chunks = n_total - session.chunk_index
    if n_chunks <= 0:
        raise SystemExit(f"error: the resumed stream already has {session.chunk_index} chunks; ask for a longer "
                         f"stream than {n_total} chunks (--seconds / --frames give the total length)")
    return n_total, n_chunks, gen_frames - session.chunk_index * sc.frames_per_block


def _stream_config(args, sc: StreamConfig, noise: Optional[torch.Tensor]) -> tuple[StreamConfig, dict, int]:
    """The family's stream config with the sampling flags applied: (config, the changed fields, latent frames)."""
    from .stream import chunks_for_frames

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
    latent_frames = _latent_frames(args, noise, sc.frames_per_block)
    if sc.cache_policy == "full":
        changes["full_cache_frames"] = max(sc.full_cache_frames,
                                           chunks_for_frames(latent_frames, sc.frames_per_block) * sc.frames_per_block)
    return sc.replace(**changes), changes, latent_frames


def _contexts(args, model, prompts: list[str], saved, bundle, device: torch.device,
              dtype: torch.dtype) -> tuple[torch.Tensor, dict]:
    """The text context of the first prompt and {prompt: context} for the timeline (each prompt encoded once)."""
    from .loaders import prompt_embedding

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
        from .shapes import unknown_words
        for p in prompts:
            unknown = unknown_words(p)
            if unknown:
                log.warning("the shapes-world model does not know %s in %r: it draws coloured shapes (words it knows: "
                            "README, 'Shapes-world vocabulary'); pass --checkpoint for a real model",
                            ", ".join(repr(w) for w in unknown), p)
        contexts = {p: bundle.text_encoder.encode([p]) for p in prompts}
    elif args.checkpoint is None:
        contexts = {p: prompt_embedding(p, model.cfg.text_dim) for p in prompts}
    else:                                               # a trainer export's own, else one line saying what to pass
        from .loaders import checkpoint_text_encoder
        enc = checkpoint_text_encoder(args.checkpoint, model.cfg.text_dim, device=device, dtype=dtype)
        contexts = {p: enc.encode([p]) for p in prompts}
    if contexts:
        context = contexts[prompts[0]]
    if context.dim() != 3 or context.shape[-1] != model.cfg.text_dim:
        raise SystemExit(f"error: context must be [1, L, {model.cfg.text_dim}], got {list(context.shape)}")
    return context, contexts


def _overlap(args, session, tts: bool, device: torch.device) -> None:
    """Decode on a side CUDA stream unless --no-overlap or something in this run needs chunk-boundary access."""
    if args.no_overlap:
        return
    why_not = _overlap_blocker(args, tts)
    if why_not is not None:
        if device.type == "cuda":
            log.info("decode not overlapped with the DiT: %s", why_not)
    elif session.enable_overlap(priority=True):
        log.info("decoding each chunk on a side CUDA stream during the next chunk's DiT (--no-overlap: off)")


# ---- the stream ---------------------------------------------------------------------------------------------------
def _stream(args, session, run, *, n_chunks: int, video_frames: int, new_latents: int,
            init_frames: Optional[torch.Tensor], decode: bool, telemetry) -> int:
    """Run the chunks, appending each to the video (and the latents file) at once; memory stays flat.

    Returns the exit status: 0, or 128 + the signal number (Ctrl-C: 130, SIGTERM: 143) when a signal cut the stream
    short; the video, latents and state written up to then stay readable.
    """
    state_path = _state_path(args)
    out = _Outputs(args, session, new_latents, init_frames, decode)
    stop = _StopOnSignal()
    delivered, completed, aborted = 0, False, False
    try:
        delivered = _run_chunks(args, session, run, out, n_chunks, video_frames, stop, telemetry, state_path)
        completed = True
    except KeyboardInterrupt:
        aborted = True
        log.warning("interrupted inside chunk %d; the video written so far stays playable%s", session.chunk_index,
                    "; the last saved state is kept" if state_path else "")
    finally:
        out.close(keep_latents=completed or aborted)    # an error mid-stream leaves no latents file, as before
        if completed and state_path:
            _save_state(session, state_path, telemetry)
            if session.interrupted:
                log.warning("stopped after %d chunks; continue with --resume %s", session.chunk_index, state_path)
        if telemetry is not None and telemetry.records:
            telemetry.save(args.telemetry)
            log.info("telemetry -> %s (+ .png)", args.telemetry)
    out.report(session.stats)
    if aborted or (stop.signum is not None and delivered < n_chunks):
        return 128 + (stop.signum or signal.SIGINT)
    return 0


def _run_chunks(args, session, run, out: "_Outputs", n_chunks: int, video_frames: int, stop: "_StopOnSignal",
                telemetry, state_path: Optional[str]) -> int:
    """The streaming loop: each chunk handed to the outputs as it comes, the state saved every --save-state-every
    chunks, progress on stderr. Returns the chunks delivered."""
    from tqdm import tqdm

    delivered = 0
    bar = tqdm(total=n_chunks, unit="chunk", disable=args.quiet, file=sys.stderr)
    t0 = last = time.perf_counter()
    first, gaps = None, []                      # the first 16 chunk periods (a bounded log line)
    allocs = _DeviceAllocations()
    with stop:
        for chunk in run(n_chunks, should_stop=stop, on_chunk=telemetry.on_chunk if telemetry else None):
            now, delivered = time.perf_counter(), delivered + 1
            first = now - t0 if first is None else first
            if len(gaps) < 16:
                gaps.append(now - last)
                allocs.mark()
            last = now
            out.put(chunk, video_frames)
            bar.update(1)
            fps = max(out.written - out.written0, 1) / (time.perf_counter() - t0)
            bar.set_postfix(fps=f"{fps:.1f}" if out.writer else None)
            if state_path and args.save_state_every and session.chunk_index % args.save_state_every == 0:
                _save_state(session, state_path, telemetry)
    out.copier.close()
    bar.close()
    if delivered:
        log.info("streamed %d chunks in %.2f s (first frames after %.3f s; chunk seconds %s%s)", delivered,
                 last - t0, first, ", ".join(f"{g:.3f}" for g in gaps), ", ..." if delivered > len(gaps) else "")
        if allocs.counts:
            log.info("device allocations per chunk (cudaMalloc calls of the caching allocator): %s",
                     ", ".join(map(str, allocs.counts)))
    return delivered


class _DeviceAllocations:
    """How many times the CUDA caching allocator asked the driver for memory during each chunk (nothing on a CPU):
    a chunk slower than its neighbours for no compile may be paying for new device memory."""

    def __init__(self) -> None:
        import torch
        self._on = torch.cuda.is_available() and torch.cuda.is_initialized()
        self._last = self._read() if self._on else 0
        self.counts: list[int] = []

    @staticmethod
    def _read() -> int:
        import torch
        return int(torch.cuda.memory_stats().get("num_device_alloc", 0))

    def mark(self) -> None:
        if self._on:
            now = self._read()
            self.counts.append(now - self._last)
            self._last = now


class _Outputs:
    """The run's video file (frames encoded by a `HostCopier` worker, in order) and --latents-out file.

    `written` counts the stream's video frames up to the last chunk put (a resumed stream starts at its saved
    length, `written0`); the video file holds `written - written0` frames (--init frames included)."""

    def __init__(self, args, session, new_latents: int, init_frames: Optional[torch.Tensor], decode: bool):
        self.out, self.latents_path = args.out, args.latents_out
        self.writer = None
        if decode:
            from .video_io import VideoWriter
            self.writer = VideoWriter(args.out, fps=16)
        self.latents = _LatentsOut(args.latents_out, new_latents) if args.latents_out else None
        resumed = session.frames_done and init_frames is None
        self.written = self.written0 = 1 + 4 * (session.frames_done - 1) if resumed else 0
        if self.writer is not None and init_frames is not None:
            self.writer.write(init_frames[0], layout="tchw")
            self.written += init_frames.shape[1]
        self.copier = HostCopier(self._consume, convert=uint8_thwc, preview_size=0)   # the loop never waits

    def _consume(self, frames, start, *latents):    # the copy worker (a GPU's frames): encode and store, in order
        if frames.shape[1]:
            self.writer.write(frames[0])
        if latents:
            self.latents.write(latents[0])

    def put(self, chunk, video_frames: int) -> None:
        """Queue a chunk's frames (up to the stream's `video_frames`) and latents for writing."""
        if self.writer is not None and chunk.frames is not None:
            frames = chunk.frames[:, : max(0, video_frames - self.written)]     # [B, T, 3, H, W]
            self.copier.put(frames, *([chunk.latents] if self.latents is not None else []))
            self.written += frames.shape[1]
        elif self.latents is not None:
            self.latents.write(chunk.latents)

    def close(self, keep_latents: bool) -> None:
        """What was streamed reaches the files, then they are finished (the latents file kept or removed)."""
        self.copier.close(raise_errors=False)
        if self.writer is not None:
            self.writer.close()
        if self.latents is not None:
            self.latents.close(keep=keep_latents)

    def report(self, stats) -> None:
        if self.latents is not None and self.latents.shape is not None:
            log.info("latents %s -> %s", self.latents.shape, self.latents_path)
        if self.writer is not None:
            log.info("wrote %d frames to %s (DiT %.2f s, decode %.2f s)", self.written - self.written0, self.out,
                     stats.dit_seconds, stats.decode_seconds)


class _LatentsOut:
    """--latents-out written as the chunks come, so memory stays flat however long the stream: float32 frames are
    appended to `<path>.partial` behind a header slot of fixed size; `close` writes the safetensors header (key
    'latents', [1, F, 16, h, w]) for the frames written and renames the file: the final name never holds a half-written
    file. A batch above 1 is kept in memory and written at the end (frames of one batch entry are not contiguous)."""

    HEADER = 1024           # bytes for the JSON header, padded with spaces as safetensors pads it (a multiple of 8)

    def __init__(self, path: str, max_frames: int):
        self.path, self.max_frames = Path(path), max_frames
        self.tmp = self.path.with_name(self.path.name + ".partial")
        self.frames = 0
        self.shape: Optional[list[int]] = None
        """[B, F, C, h, w] of the file once closed."""
        self._chunk_shape: Optional[list[int]] = None
        self._file = None
        self._held: list[torch.Tensor] = []

    def write(self, latents: torch.Tensor) -> None:
        """latents: [B, f, C, h, w]; frames past `max_frames` (the last chunk's overshoot) are dropped."""
        take = min(latents.shape[1], self.max_frames - self.frames)
        if take <= 0:
            return
        x = latents[:, :take].float().cpu().contiguous()
        if self._chunk_shape is None:
            self._chunk_shape = list(x.shape)
            if x.shape[0] == 1:
                self._file = open(self.tmp, "wb")
                self._file.write(b"\0" * (8 + self.HEADER))
        if self._file is not None:
            self._file.write(x.numpy().tobytes())
        else:
            self._held.append(x)
        self.frames += take

    def close(self, keep: bool = True) -> None:
        """Finish the file (keep) or remove it."""
        f, self._file = self._file, None
        if not keep or self._chunk_shape is None:
            if f is not None:
                f.close()
                self.tmp.unlink(missing_ok=True)
            return
        self.shape = [self._chunk_shape[0], self.frames, *self._chunk_shape[2:]]
        if f is None:
            from safetensors.torch import save_file
            save_file({"latents": torch.cat(self._held, dim=1)}, str(self.tmp))
            self._held = []
        else:
            nbytes = 4 * math.prod(self.shape)
            header = json.dumps({"latents": {"dtype": "F32", "shape": self.shape, "data_offsets": [0, nbytes]}},
                                separators=(",", ":")).encode()
            f.seek(0)
            f.write(len(header.ljust(self.HEADER)).to_bytes(8, "little") + header.ljust(self.HEADER))
            f.truncate(8 + self.HEADER + nbytes)                # a chunk cut off mid-write is not counted
            f.close()
        os.replace(self.tmp, self.path)


def _cudnn_setup(device: torch.device, compile: bool, conv_search: str) -> None:
    """On a GPU, with --compile or --conv-search all: cuDNN times its engines once per conv shape and keeps the
    fastest (`all`: every engine, not torch's first 10; the VAE decoder's 96-channel convs then get a 128x128 tile
    instead of 256x64 on an H100, 2.61 -> 1.88 ms per 4-frame call, bench/RESULTS.md, 2026-12-07, "cuDNN's full
    engine search")."""
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
    """First Ctrl-C (or SIGTERM): stop after the current chunk (the state is saved); a second one aborts now.
    `signum` is the first signal received (None: none)."""

    def __init__(self):
        self.flag, self._old = False, {}
        self.signum: Optional[int] = None

    def __call__(self) -> bool:
        return self.flag

    def _handle(self, signum, frame):
        if self.flag:
            raise KeyboardInterrupt
        self.flag, self.signum = True, signum
        log.warning("stopping after this chunk (press Ctrl-C again to abort at once)")

    def __enter__(self):
        import threading
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}


def cmd_inspect(args) -> int:
    from .checkpoint import format_inspection, inspect_checkpoint

    print(format_inspection(inspect_checkpoint(args.file)))
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    """Run a command; returns its exit status: 0; 2 for a user error (bad flags, missing or invalid files, a run that
    cannot fit: one line `error: ...` on stderr, the traceback with --debug); 128 + N when signal N cut a stream
    short (Ctrl-C: 130, SIGTERM: 143; the partial video stays playable); `download` also uses 3 and 4.
    An internal `SystemExit("error: ...")` is printed the same way and re-raised with code 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv if argv[:1] == ["bench"] else False
    try:
        if argv[:1] == ["bench"]:
            from .bench import main as bench_main
            bench_main([a for a in argv[1:] if a != "--debug"])
            return 0
        args = build_parser().parse_args(argv)
        debug = args.debug
        logging.basicConfig(level=logging.WARNING if getattr(args, "quiet", False) else logging.INFO,
                            format="%(levelname)s %(name)s: %(message)s")
        if args.command == "saliency":
            from .reward.cli import run_saliency
            return run_saliency(args)
        if args.command == "download":
            from .download import run as run_download
            return run_download(args)
        return {"generate": cmd_generate, "inspect": cmd_inspect}[args.command](args)
    except KeyboardInterrupt:
        if debug:
            raise
        print("interrupted", file=sys.stderr)
        return 128 + signal.SIGINT
    except _user_errors() as e:
        if debug:
            raise
        print(_error_line(e), file=sys.stderr)
        return 2
    except SystemExit as e:
        if isinstance(e.code, str):             # raise SystemExit("error: ..."): a user error too
            if debug:
                import traceback
                traceback.print_exc()
            print(_error_line(e.code), file=sys.stderr)
            e.code = 2
        raise


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input (flags, files, sizes): one line, exit status 2. Anything else is a bug and keeps
    its traceback."""
    from safetensors import SafetensorError

    return ValueError, OSError, SafetensorError


def _error_line(e: "BaseException | str") -> str:
    text = e if isinstance(e, str) else (str(e) or type(e).__name__)
    if isinstance(e, OSError) and e.strerror and e.filename and text.startswith("[Errno"):
        text = f"{e.filename}: {e.strerror}"
    text = " ".join(text.split())                                     # one line
    return text if text.startswith("error:") else f"error: {text}"
