"""`python -m stream_r1 saliency`: VideoReward scores and saliency maps of one video, as PNGs and an MP4.

Writes into --out: scores.json (raw / normalised scores, Overall, axis mix, temporal weights, sampling record),
axis_<VQ|MQ|TA>.png (each axis's saliency over the frames, one tile per latent frame), w_intra.png (the
training weight W_intra per latent frame), temporal_profile.png (tau per latent frame; dotted line = 1) and
overlay.mp4 (W_intra upsampled onto every frame). Heat maps are display-normalised; scores.json holds numbers.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

import torch

log = logging.getLogger(__name__)

THUMB_WIDTH = 208
"""Width of one tile in the PNG contact sheets (832 / 4)."""


def add_saliency_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the `saliency` sub-command; its handler is `run_saliency` (also set as `handler` default)."""
    p = subparsers.add_parser("saliency", help="reward scores and saliency maps of a video (VideoReward)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--video", required=True, help="input video file (mp4, mkv, webm, ...)")
    p.add_argument("--prompt", default=None, help="text prompt of the video (default: the file name)")
    p.add_argument("--out", default="saliency_out", help="output folder (created)")
    p.add_argument("--reward-model", required=True,
                   help="VideoReward folder (model_config.json + checkpoint-*/model.pth) or its model.pth")
    p.add_argument("--frames", choices=["all", "fps"], default="all",
                   help="reward input: every frame (Stream-R1 training) or uniform --fps sampling (VideoReward's own)")
    p.add_argument("--fps", type=float, default=2.0, help="sampling rate for --frames fps")
    p.add_argument("--source-fps", type=float, default=None, help="frame rate of the video (default: from the file)")
    p.add_argument("--max-frames", type=int, default=81, help="read at most this many frames (81 = 5 s at 16 fps)")
    p.add_argument("--max-pixels", type=int, default=None,
                   help="pixel budget per frame (default: the checkpoint's max_frame_pixels, 448^2)")
    p.add_argument("--min-pixels", type=int, default=100352, help="smaller frames are upscaled to this (128 * 28^2)")
    p.add_argument("--target", choices=["patches", "pixels"], default="patches",
                   help="gradient w.r.t. ViT patches (reference) or decoded pixels")
    p.add_argument("--combine", choices=["adaptive", "max", "mean"], default="adaptive")
    p.add_argument("--temperature", type=float, default=1.0, help="softmax temperature of the adaptive mix")
    p.add_argument("--raw-axis-mix", action="store_true",
                   help="mix un-normalised axis maps like the reference (default: each divided by its mean)")
    p.add_argument("--spatial-floor", type=float, default=0.15)
    p.add_argument("--temporal-floor", type=float, default=0.2)
    p.add_argument("--spatial-strength", type=float, default=1.0)
    p.add_argument("--temporal-strength", type=float, default=1.0)
    p.add_argument("--position-mode", choices=["sequential", "mrope"], default="sequential",
                   help="LLM positions: sequential (what VideoReward was trained with) or 3-D M-RoPE")
    p.add_argument("--no-checkpointing", action="store_true",
                   help="keep all activations in the backward passes (faster, ~6x the memory at 81 frames)")
    p.add_argument("--alpha", type=float, default=0.55, help="heat-map opacity of the overlays")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(handler=run_saliency)
    return p


def _device_dtype(device: str, dtype: str) -> tuple[torch.device, torch.dtype]:
    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda but no CUDA GPU is visible; use --device cpu")
    if dtype == "auto":
        return dev, torch.bfloat16 if dev.type == "cuda" else torch.float32
    return dev, getattr(torch, dtype)


def run_saliency(args: argparse.Namespace) -> int:
    """Run the `saliency` sub-command; returns the exit code. Raises ValueError / FileNotFoundError on bad input."""
    from tqdm import tqdm

    from ..video_io import VideoWriter, probe, read_video
    from . import visualize as vis
    from .model import load_video_reward
    from .report import analyse, axis_grid
    from .weights import IntraConfig

    video_path, out = Path(args.video), Path(args.out)
    if not video_path.is_file():
        raise FileNotFoundError(f"{video_path} does not exist")
    device, dtype = _device_dtype(args.device, args.dtype)
    intra_cfg = IntraConfig(combine=args.combine, temperature=args.temperature, normalize_axes=not args.raw_axis_mix,
                            spatial_floor=args.spatial_floor, temporal_floor=args.temporal_floor,
                            spatial_strength=args.spatial_strength, temporal_strength=args.temporal_strength)
    source_fps = args.source_fps or probe(video_path)["fps"] or 16.0
    frames_u8 = torch.from_numpy(read_video(video_path)[: args.max_frames])   # [T, H, W, 3] uint8
    t, h, w, _ = frames_u8.shape
    prompt = args.prompt if args.prompt is not None else video_path.stem.replace("_", " ")
    out.mkdir(parents=True, exist_ok=True)

    bar = tqdm(total=4 + t, unit="step", disable=args.quiet, file=sys.stderr, desc="saliency")
    bar.set_postfix_str("loading reward model")
    model = load_video_reward(args.reward_model, device=device, dtype=dtype, position_mode=args.position_mode)
    model.video = dataclasses.replace(model.video, frames=args.frames, fps=args.fps, source_fps=source_fps,
                                      min_pixels=args.min_pixels, max_pixels=args.max_pixels or model.video.max_pixels)
    bar.update(1)
    bar.set_postfix_str("forward + 3 backward passes")
    frames = frames_u8.permute(0, 3, 1, 2).float() / 255.0                      # [T, 3, H, W]
    report = analyse(model, frames, prompt, intra_config=intra_cfg, target=args.target,
                     checkpointing=not args.no_checkpointing)
    bar.update(2)
    for name in report.axes:
        vis.write_png(out / f"axis_{name}.png", axis_grid(report, name, THUMB_WIDTH, args.alpha))
    vis.write_png(out / "w_intra.png", axis_grid(report, "combined", THUMB_WIDTH, args.alpha))
    vis.write_png(out / "temporal_profile.png", report.temporal_profile())
    scores = report.scores
    (out / "scores.json").write_text(json.dumps({"video": str(video_path), "source_fps": source_fps,
                                                 **report.as_json()}, indent=2))
    bar.update(1)

    bar.set_postfix_str("overlay video")
    with VideoWriter(out / "overlay.mp4", fps=source_fps) as writer:
        for i, frame in enumerate(report.overlays("combined", args.alpha)):
            writer.write(frame[None], layout="tchw")
            bar.update(1)
    bar.close()
    log.info("%s: VQ %.3f MQ %.3f TA %.3f (z), Overall %.3f -> %s", video_path.name, scores["VQ"], scores["MQ"],
             scores["TA"], scores["Overall"], out)
    return 0
