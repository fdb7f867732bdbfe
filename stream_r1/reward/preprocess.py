"""Differentiable Qwen2-VL video preprocessing in torch: frames in [0, 1] -> `pixel_values_videos` + grid.

Same steps as VideoAlign / the transformers Qwen2-VL video processor, without NumPy or PIL, so gradients
reach the decoded pixels (spec-algorithm §9 "Differentiable pixel -> reward path"):

1. frame sampling: every frame (Stream-R1's reference) or uniform `fps` sampling (VideoAlign's training
   regime: 2 fps, at least 4 frames, an even count, indices `linspace(0, T-1, n).round()`);
2. smart resize to multiples of 28 under `max_pixels` (480x832 -> 336x588), bicubic + antialias, clamp;
3. CLIP normalisation;
4. odd frame counts padded by repeating the last frame (transformers 5.x) or the last frame dropped
   (Stream-R1 reference, transformers 4.45);
5. patchify in the model's order (t, h/2, w/2, 2, 2 | C, T_p, P, P) -> [B * t*h*w, 1176].

`patch_values_to_grid` is the inverse map of per-patch values back to (t, h, w); see spec-algorithm §8.1
for the scrambled row-major view of the reference, which this replaces.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from .qwen2vl_config import CLIP_MEAN, CLIP_STD

FrameMode = Literal["all", "fps"]


@dataclass(frozen=True)
class VideoInputConfig:
    """How decoded frames become reward-model input."""

    frames: FrameMode = "all"
    """`all`: every frame (Stream-R1 reference: 81 frames -> 41 temporal patches); `fps`: uniform sampling at
    `fps` (VideoReward's training regime, ~10 frames for 5 s; spec-algorithm §8.3)."""
    fps: float = 2.0
    """Target rate of `frames="fps"` (VideoAlign data_config.fps)."""
    source_fps: float = 16.0
    """Frame rate of the input video (Wan2.1: 16)."""
    min_frames: int = 4
    """`frames="fps"` never samples fewer frames than this (VideoAlign FPS_MIN_FRAMES)."""
    max_frames: int = 768
    """`frames="fps"` never samples more frames than this (VideoAlign FPS_MAX_FRAMES)."""
    odd_frames: Literal["pad", "drop"] = "pad"
    """Odd frame counts: repeat the last frame (transformers 5.x) or drop it (Stream-R1 with transformers 4.45)."""
    max_pixels: int = 200704
    """Pixel budget per frame (448^2, VideoAlign data_config.max_frame_pixels)."""
    min_pixels: int = 100352
    """Lower pixel bound of smart resize (128 * 28^2, qwen-vl-utils VIDEO_MIN_PIXELS)."""
    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2

    def __post_init__(self) -> None:
        if self.frames not in ("all", "fps"):
            raise ValueError(f"frames must be 'all' or 'fps', got {self.frames!r}")
        if self.odd_frames not in ("pad", "drop"):
            raise ValueError(f"odd_frames must be 'pad' or 'drop', got {self.odd_frames!r}")
        if self.fps <= 0 or self.source_fps <= 0:
            raise ValueError(f"fps and source_fps must be > 0, got {self.fps} and {self.source_fps}")

    @property
    def factor(self) -> int:  # 14 * 2 -> 28
        return self.patch_size * self.merge_size


@dataclass(frozen=True)
class VideoPatches:
    """Model-ready video input plus the record of how it was made."""

    pixel_values: Tensor
    """[B * t*h*w, 3 * T_p * P * P] CLIP-normalised patches (80 frames at 336x588: [B * 40,320, 1176])."""
    grid_thw: Tensor
    """[B, 3] long: (t, h, w) patch grid of each video (40, 24, 42)."""
    frame_indices: tuple[int, ...]
    """Source-frame index of every slot fed to the model (t * T_p entries; padding repeats the last)."""
    num_source_frames: int
    """Frames of the input video."""
    resized_hw: tuple[int, int]
    """Frame size the model saw (336, 588)."""
    mode: str
    """Sampling record, e.g. 'all', 'all/drop-last', 'fps=2.0'."""
    merge_size: int = 2

    @property
    def grid(self) -> tuple[int, int, int]:
        t, h, w = (int(v) for v in self.grid_thw[0].tolist())
        return t, h, w

    @property
    def tokens_per_video(self) -> int:  # 40 * 24 * 42 / 4 -> 10,080
        t, h, w = self.grid
        return t * h * w // self.merge_size**2

    def frame_sets(self) -> tuple[tuple[int, ...], ...]:
        """Distinct source frames covered by each temporal patch: ((0, 1), (2, 3), ..., (80,))."""
        tp = len(self.frame_indices) // self.grid[0]
        return tuple(tuple(sorted(set(self.frame_indices[j * tp:(j + 1) * tp]))) for j in range(self.grid[0]))


def smart_resize(height: int, width: int, factor: int = 28, min_pixels: int = 100352,
                 max_pixels: int = 200704) -> tuple[int, int]:
    """Qwen2-VL's target size: sides multiples of `factor`, area within [min, max], aspect kept (480x832 -> 336x588)."""
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"aspect ratio must be below 200, got {height}x{width}")
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


def sample_frame_indices(num_frames: int, cfg: VideoInputConfig) -> tuple[list[int], str]:
    """Source frames fed to the model (before temporal padding) and the mode record."""
    if num_frames < 2:
        raise ValueError(f"the reward model needs a video of at least 2 frames, got {num_frames}; pass a clip "
                         f"with more frames (Wan2.1 writes 1 + 4k: 5, 9, ..., 81)")
    if cfg.frames == "all":
        n = num_frames - (num_frames % cfg.temporal_patch_size if cfg.odd_frames == "drop" else 0)
        return list(range(n)), "all" + ("/drop-last" if n < num_frames else "")
    # VideoAlign smart_nframes: n = T / fps_in * fps, clamped to [min_frames, T], rounded to an even count
    tp = cfg.temporal_patch_size
    lo = math.ceil(cfg.min_frames / tp) * tp
    hi = math.floor(min(cfg.max_frames, num_frames) / tp) * tp
    n = round(min(max(num_frames / cfg.source_fps * cfg.fps, lo), hi) / tp) * tp
    n = max(tp, min(n, num_frames))
    idx = torch.linspace(0, num_frames - 1, n).round().long().tolist()
    return idx, f"fps={cfg.fps:g}"


def patchify(video: Tensor, patch_size: int = 14, temporal_patch_size: int = 2, merge_size: int = 2) -> Tensor:
    """video: [B, T, C, H, W] (T a multiple of T_p, H and W of P*merge). Returns [B*t*h*w, C*T_p*P*P].

    Row order is Qwen2-VL's: (t, h/m, w/m, m, m), so each 2x2 merge block is 4 consecutive rows.
    """
    return rearrange(video, "b (t tp) c (hb mh ph) (wb mw pw) -> (b t hb wb mh mw) (c tp ph pw)",
                     tp=temporal_patch_size, mh=merge_size, mw=merge_size, ph=patch_size, pw=patch_size)


PatchOrder = Literal["image", "reference"]


def patch_values_to_grid(values: Tensor, grid_thw: Tensor, merge_size: int = 2, order: PatchOrder = "image") -> Tensor:
    """Per-patch values [B*t*h*w, ...] -> [B, t, h, w, ...].

    order="image" (default): image order, the inverse of `patchify`'s merge-block-major rows (t, h/2, w/2, 2, 2).
    order="reference": the public code's plain row-major `values.view(t, h, w)` (`compute_pixel_spatial_saliency`),
    which scrambles space (spec-algorithm §8.1) but is what the released checkpoint was trained with. The two
    differ by one permutation within each frame: reference[t].flatten() == image[t] read as (h/2, w/2, 2, 2),
    i.e. rearrange(image, "b t (hb mh) (wb mw) -> b t (hb wb mh mw)") viewed as (h, w); per-frame sums agree.
    Every video of the batch must have the same grid.
    """
    t, h, w = (int(v) for v in grid_thw[0].tolist())
    if not bool((grid_thw == grid_thw[0]).all()):
        raise ValueError(f"all videos of a batch must share one patch grid, got {grid_thw.tolist()}")
    if order == "reference":
        return rearrange(values, "(b t h w) ... -> b t h w ...", t=t, h=h, w=w)
    if order != "image":
        raise ValueError(f"order must be 'image' or 'reference', got {order!r}")
    return rearrange(values, "(b t hb wb mh mw) ... -> b t (hb mh) (wb mw) ...",
                     t=t, hb=h // merge_size, wb=w // merge_size, mh=merge_size, mw=merge_size)


def preprocess_video(frames: Tensor, cfg: VideoInputConfig = VideoInputConfig()) -> VideoPatches:
    """frames: [B, T, 3, H, W] in [0, 1] (any float dtype). Differentiable w.r.t. frames."""
    from kornia.enhance import normalize                          # here, not at import: the pack imports this

    if frames.dim() != 5 or frames.shape[2] != 3:
        raise ValueError(f"frames must be [B, T, 3, H, W] RGB in [0, 1], got shape {list(frames.shape)}")
    b, t_src, _, height, width = frames.shape
    idx, mode = sample_frame_indices(t_src, cfg)
    tp = cfg.temporal_patch_size
    if len(idx) % tp:                                             # pad: repeat the last frame
        idx = idx + [idx[-1]] * (tp - len(idx) % tp)
        mode += "/pad-last"
    x = frames.float()
    if idx != list(range(t_src)):
        x = x.index_select(1, torch.tensor(idx, device=frames.device))  # [B, T', 3, H, W]
    rh, rw = smart_resize(height, width, cfg.factor, cfg.min_pixels, cfg.max_pixels)
    flat = rearrange(x, "b t c h w -> (b t) c h w")
    if (rh, rw) != (height, width):                               # torch's antialias, not kornia's: docs/kornia.md
        flat = F.interpolate(flat, size=(rh, rw), mode="bicubic", align_corners=False, antialias=True)
    flat = normalize(flat.clamp(0.0, 1.0), flat.new_tensor(CLIP_MEAN), flat.new_tensor(CLIP_STD))
    x = rearrange(flat, "(b t) c h w -> b t c h w", b=b)          # [B, T', 3, rh, rw]
    pixel_values = patchify(x, cfg.patch_size, tp, cfg.merge_size)  # [B * t*h*w, 1176]
    grid = torch.tensor([[len(idx) // tp, rh // cfg.patch_size, rw // cfg.patch_size]] * b, device=frames.device)
    return VideoPatches(pixel_values, grid, tuple(idx), t_src, (rh, rw), mode, cfg.merge_size)
