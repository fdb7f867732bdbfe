"""The shapes world's data: a bank of rendered clips with their prompts, and the degradations that make the
reward model's negatives.

Clip i is `sample_scene(clip_seed + i)` rendered at the configured size: deterministic on every machine, so a
bank can be re-rendered anywhere and the cache (uint8, under `world.cache_dir`) is only a speed-up.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from kornia.filters import gaussian_blur2d
from torch import Tensor

from stream_r1.shapes import COLORS, MOTIONS, SHAPES, parse_prompt, render, sample_scene
from stream_r1.shapes.prompts import BACKGROUNDS, SceneAttrs, ShapeAttrs

from ..config import WorldConfig

log = logging.getLogger("training")


def _render_one(args: tuple) -> tuple[Tensor, str]:
    seed, frames, width, height, fps, supersample = args
    torch.set_num_threads(1)
    scene = sample_scene(seed, num_frames=frames, width=width, height=height, fps=fps)
    video = render(scene, supersample=supersample)                                     # [T, 3, H, W] in [0, 1]
    return (video * 255).round().clamp(0, 255).to(torch.uint8), scene.prompt_at(0)


def _bank_key(w: WorldConfig) -> str:
    fields = {k: v for k, v in asdict(w).items() if k not in ("cache_dir", "render_workers")}
    return hashlib.blake2b(json.dumps(fields, sort_keys=True).encode(), digest_size=6).hexdigest()


class ClipBank:
    """`videos` uint8 [N, T, 3, H, W] and `prompts` (N strings); `batch(idx, device)` -> float [B, T, 3, H, W] in [0, 1]."""

    def __init__(self, videos: Tensor, prompts: list[str], fps: int):
        if videos.dtype != torch.uint8 or videos.dim() != 5:
            raise ValueError(f"expected uint8 videos [N, T, 3, H, W], got {videos.dtype} {list(videos.shape)}")
        self.videos, self.prompts, self.fps = videos, prompts, fps

    def __len__(self) -> int:
        return len(self.prompts)

    def batch(self, idx: Tensor | list[int], device: torch.device) -> Tensor:
        idx = torch.as_tensor(idx, dtype=torch.long)
        return self.videos[idx.to(self.videos.device)].to(device, non_blocking=True).float() / 255.0

    @classmethod
    def build(cls, w: WorldConfig, progress: bool = True) -> "ClipBank":
        """Render (or read from the cache) `w.clips` clips."""
        cache = Path(w.cache_dir) / f"bank_{_bank_key(w)}.pt" if w.cache_dir else None
        if cache is not None and cache.is_file():
            data = torch.load(cache, weights_only=True)
            log.info("clip bank: %d clips from %s", len(data["prompts"]), cache)
            return cls(data["videos"], list(data["prompts"]), w.fps)
        jobs = [(w.clip_seed + i, w.frames, w.width, w.height, w.fps, w.supersample) for i in range(w.clips)]
        workers = min(32, w.render_workers or os.cpu_count() or 1, max(1, w.clips // 16))
        videos = torch.empty(w.clips, w.frames, 3, w.height, w.width, dtype=torch.uint8)
        prompts: list[str] = []
        bar = None
        if progress:
            try:
                from tqdm import tqdm
                bar = tqdm(total=w.clips, desc="render shapes clips", unit="clip", leave=False)
            except ImportError:
                pass
        t0 = time.perf_counter()
        if workers > 1:
            import multiprocessing as mp
            with mp.get_context("spawn").Pool(workers) as pool:
                results = pool.imap(_render_one, jobs, chunksize=8)
                for i, (v, p) in enumerate(results):
                    videos[i] = v
                    prompts.append(p)
                    if bar is not None:
                        bar.update(1)
        else:
            for i, job in enumerate(jobs):
                videos[i], p = _render_one(job)
                prompts.append(p)
                if bar is not None:
                    bar.update(1)
        if bar is not None:
            bar.close()
        log.info("clip bank: rendered %d clips of %d frames at %dx%d with %d processes in %.1f s", w.clips, w.frames,
                 w.width, w.height, workers, time.perf_counter() - t0)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(".tmp")
            torch.save({"videos": videos, "prompts": prompts}, tmp)
            os.replace(tmp, cache)
        return cls(videos, prompts, w.fps)


def shapes_prompts(count: int, seed: int = 0, frames: int = 45, size: int = 96) -> list[str]:
    """`count` prompts of the shapes world's distribution (the prompt file of the distillation recipes)."""
    return [sample_scene(seed + i, num_frames=frames, width=size, height=size).prompt_at(0) for i in range(count)]


# ---- negatives of the reward model --------------------------------------------------------------------------------
def _gaussian_blur(x: Tensor, sigma: Tensor) -> Tensor:
    """x [B, T, 3, H, W], sigma [B] (pixels) -> blurred x (11x11 separable Gaussian, reflect padding)."""
    b, t, c, h, w = x.shape
    y = gaussian_blur2d(x.reshape(b, t * c, h, w), (11, 11), sigma.to(x.dtype)[:, None].expand(b, 2))  # [B, T*C, H, W]
    return y.view(b, t, c, h, w)


def degrade_quality(x: Tensor, g: torch.Generator) -> Tensor:
    """VQ negatives: per clip one of blur, noise, blockiness, washed-out colours. x [B, T, 3, H, W] in [0, 1]."""
    b = x.shape[0]
    kind = torch.randint(0, 4, (b,), generator=g)
    out = x.clone()
    u = torch.rand(b, generator=g)
    blur = kind == 0
    if blur.any():
        out[blur] = _gaussian_blur(x[blur], (1.0 + 2.0 * u[blur]).to(x.device))
    noise = kind == 1
    if noise.any():
        # drawn on the clips' device from a seed of `g` (a CPU draw of 8 x 45 x 3 x 96^2 normals plus its copy to
        # the GPU cost more than the rest of the step); deterministic per device type
        gn = torch.Generator(x.device).manual_seed(int(torch.randint(0, 2**62, (1,), generator=g)))
        n = torch.randn(x[noise].shape, generator=gn, device=x.device, dtype=x.dtype)
        out[noise] = (x[noise] + (0.06 + 0.12 * u[noise]).to(x.device).view(-1, 1, 1, 1, 1) * n).clamp(0, 1)
    block = kind == 2
    if block.any():
        y = x[block]
        s = y.shape
        f = 4 if float(u[block][0]) < 0.5 else 6
        small = F.avg_pool2d(y.flatten(0, 1), f, ceil_mode=True)
        out[block] = F.interpolate(small, size=s[-2:], mode="nearest").view(s)
    wash = kind == 3
    if wash.any():
        y = x[wash]
        grey = y.mean(2, keepdim=True)
        a = (0.5 + 0.3 * u[wash]).to(x.device).view(-1, 1, 1, 1, 1)
        out[wash] = (a * grey + (1 - a) * y) * 0.8 + 0.1
    return out.clamp_(0.0, 1.0)                                     # the blur's float sums can pass 1 by an ulp


def degrade_motion(x: Tensor, g: torch.Generator) -> Tensor:
    """MQ negatives: per clip one of local frame shuffles, stutter (freeze then jump), a teleport (the second half
    shifted in space) or flicker. The frames themselves stay clean. x [B, T, 3, H, W].

    Batched: the draws (small, on the CPU generator) become one frame-index gather, one per-frame gain and one
    pair of row/column gathers for the teleported clips, whatever B (the first version looped over the clips).
    """
    b, t, _, h, w = x.shape
    dev = x.device
    kind = torch.randint(0, 4, (b,), generator=g)
    ar = torch.arange(t)
    # shuffle inside windows of 4 frames: sort random keys offset by the window number
    perm = (torch.rand(b, t, generator=g) + (ar // 4)).argsort(dim=1)
    ident = (perm == ar).all(1)                                     # every window drew the identity: swap 0, 1
    perm[ident, :2] = torch.tensor([1, 0])
    stutter = (ar // 3 * 3 * 2).clamp(max=t - 1)                    # hold each frame 3x, skipping ahead
    src = torch.where((kind == 0)[:, None], perm, torch.where((kind == 1)[:, None], stutter, ar))  # [B, T]
    out = x[torch.arange(b, device=dev)[:, None], src.to(dev)]      # [B, T, 3, H, W]
    gain = torch.ones(b, t)                                         # flicker: every other frame darkened
    gain[kind == 3, 1::2] = 0.45
    if bool((kind == 3).any()):
        out = out * gain.to(dev, x.dtype).view(b, t, 1, 1, 1)
    jump = (kind == 2).nonzero().flatten()                          # the second half moves by a random offset
    dy = torch.randint(h // 5, h // 2, (b,), generator=g)
    dx = torch.randint(w // 5, w // 2, (b,), generator=g)
    if len(jump):
        cut, j = t // 2, len(jump)
        rows = (torch.arange(h) - dy[jump, None]) % h               # torch.roll by +dy: out[r] = x[r - dy]
        cols = (torch.arange(w) - dx[jump, None]) % w
        y = x[jump.to(dev), cut:]                                   # [J, T - cut, 3, H, W]
        y = y.gather(-2, rows.to(dev).view(j, 1, 1, h, 1).expand(y.shape))
        y = y.gather(-1, cols.to(dev).view(j, 1, 1, 1, w).expand(y.shape))
        out[jump.to(dev), cut:] = y
    return out


def _swap(choices, current: str, g: torch.Generator) -> str:
    opts = [c for c in choices if c != current]
    return opts[int(torch.randint(0, len(opts), (1,), generator=g))]


def mismatched_prompt(prompt: str, g: torch.Generator) -> str:
    """TA negatives: the prompt with one attribute changed (colour, shape, motion or background)."""
    attrs = parse_prompt(prompt)
    shapes = list(attrs.shapes)
    i = int(torch.randint(0, len(shapes), (1,), generator=g))
    what = int(torch.randint(0, 4, (1,), generator=g))
    s = shapes[i]
    bg = attrs.background
    if what == 0:
        shapes[i] = ShapeAttrs(_swap([c for c in COLORS if c not in {x.color for x in shapes}], s.color, g), s.shape, s.motion)
    elif what == 1:
        shapes[i] = ShapeAttrs(s.color, _swap([k for k in SHAPES if k != "circle" or s.motion != "rotating"], s.shape, g),
                               s.motion)
    elif what == 2:
        # the new motion applies to every shape: never 'rotating' when one is a circle (a spinning disc is static)
        m = _swap([m for m in MOTIONS if not (m == "rotating" and any(x.shape == "circle" for x in shapes))],
                  s.motion, g)
        shapes = [ShapeAttrs(x.color, x.shape, m) for x in shapes]
    else:
        bg = _swap(list(BACKGROUNDS), bg, g)
    return SceneAttrs(tuple(shapes), bg, attrs.gradient).to_prompt()


def lr_at(step: int, base: float, warmup: int) -> float:
    """Linear warmup then constant."""
    return base * min(1.0, (step + 1) / max(1, warmup))


def cosine_lr(step: int, total: int, base: float, warmup: int, floor: float = 0.1) -> float:
    """Linear warmup, then cosine decay to `floor * base`."""
    if step < warmup:
        return base * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return base * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, p))))


def batch_indices(step: int, batch: int, n: int, seed: int, tag: str) -> list[int]:
    """Deterministic sample of `batch` clip indices for optimizer step `step` (epoch-wise permutation)."""
    from ..data import derive_seed
    start = step * batch
    out = []
    while len(out) < batch:
        epoch, i = divmod(start + len(out), n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed(seed, tag, epoch)))
        take = min(batch - len(out), n - i)
        out.extend(perm[i:i + take].tolist())
    return out
