"""Per-axis reward saliency and its exact mapping onto the causal latent grid (spec-algorithm §5.1-5.2).

`gradient_saliency` takes one gradient-enabled forward and one backward per axis:

* `target="patches"` (reference granularity, VideoRewardModel only): s_a = ||d rho_a / d P||_2 per ViT
  patch row (3 channels x 2 frames x 14 x 14 values), put back on the (t, h, w) patch grid in the right
  order (`preprocess.patch_values_to_grid`; `order="reference"` reproduces the public code's scrambled
  row-major view, which the released checkpoint was trained with);
* `target="pixels"` (any differentiable `RewardModel`): s_a = ||d rho_a / d x||_2 over RGB per source pixel,
  on the frames the model actually reads.

`to_latent_grid` maps a saliency volume to latent frames with the VAE's causal grouping (latent 0 <- frame 0,
latent k >= 1 <- frames 4k-3..4k) through an overlap matrix whose rows sum to 1, and resizes space with an
antialiased bilinear filter. Everything returned is detached fp32.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from .model import RewardModel, RewardScores
from .preprocess import PatchOrder, VideoInputConfig, patch_values_to_grid, sample_frame_indices

SaliencyTarget = Literal["patches", "pixels"]
SALIENCY_AXES: tuple[str, ...] = ("MQ", "VQ", "TA")
"""Axis order of the reference's `spatial_reward_metrics`."""


@dataclass(frozen=True)
class AxisSaliency:
    """Gradient magnitudes per axis on the grid the reward model saw."""

    maps: Tensor
    """[B, A, T_s, h, w] fp32, >= 0; A follows `axes`."""
    frame_sets: tuple[tuple[int, ...], ...]
    """Source frames covered by each of the T_s temporal slices."""
    num_source_frames: int
    axes: tuple[str, ...]
    scores: RewardScores
    """Scores from the same forward (columns in the model's own axis order)."""
    target: str
    mode: str
    """Frame-sampling record of the reward input (e.g. 'all/pad-last', 'fps=2')."""

    def z(self) -> Tensor:
        """[B, A] normalised scores in `axes` order."""
        cols = [self.scores.axes.index(a) for a in self.axes]
        return self.scores.normalized[:, cols]


def gradient_saliency(model: RewardModel, frames: Tensor, prompts: Sequence[str],
                      axes: Sequence[str] = SALIENCY_AXES, target: SaliencyTarget = "patches",
                      checkpointing: bool = False, order: PatchOrder = "image") -> AxisSaliency:
    """frames [B, T, 3, H, W] in [0, 1] -> per-axis saliency. Runs 1 forward + len(axes) backward passes.

    order (target="patches" only): "image" puts each patch row back where it is in the frame; "reference" reads
    the rows row-major like the public code (spec-algorithm §5.1 step 5, §8.1), for exact reproduction runs.

    checkpointing: recompute activations in backward (models with `activation_checkpointing()`); trades
    about one extra forward per axis for most of the activation memory.
    """
    if not getattr(model, "differentiable", False):
        raise ValueError(f"{type(model).__name__} is not differentiable; saliency needs a gradient-capable reward")
    unknown = [a for a in axes if a not in model.axes]
    if unknown or not axes:
        raise ValueError(f"axes must be a non-empty subset of {model.axes}, got {list(axes)}")
    cols = [list(model.axes).index(a) for a in axes]
    ckpt = model.activation_checkpointing(checkpointing) if hasattr(model, "activation_checkpointing") else \
        contextlib.nullcontext()
    with torch.enable_grad(), ckpt:
        if target == "patches":
            if not hasattr(model, "forward_patches"):
                raise ValueError(f"target='patches' needs a VideoRewardModel; use target='pixels' for "
                                 f"{type(model).__name__}")
            video = model.preprocess(frames.detach())
            pv = video.pixel_values.detach().requires_grad_(True)        # [B*N, 1176]
            raw = model.forward_patches(pv, video.grid_thw, model.encode_prompts(prompts, video))
            grads = _per_axis_grads(raw, cols, pv)                        # A x [B*N, 1176]
            maps = torch.stack([patch_values_to_grid(g.float().norm(dim=-1), video.grid_thw, video.merge_size,
                                                     order) for g in grads], dim=1)   # [B, A, t, h, w]
            sets, n_src, mode = video.frame_sets(), video.num_source_frames, video.mode
        elif target == "pixels":
            if order != "image":
                raise ValueError("order='reference' applies to target='patches' (the public code's patch rows)")
            x = frames.detach().float().requires_grad_(True)              # [B, T, 3, H, W]
            raw = model.score(x, prompts)
            grads = _per_axis_grads(raw, cols, x)                         # A x [B, T, 3, H, W]
            n_src = frames.shape[1]
            used = sorted(set(model.frame_indices(n_src))) if hasattr(model, "frame_indices") else range(n_src)
            idx = torch.tensor(list(used), device=x.device)
            maps = torch.stack([g.float().norm(dim=2).index_select(1, idx) for g in grads], dim=1)  # [B, A, T', H, W]
            video_cfg = getattr(model, "video", None)
            mode = sample_frame_indices(n_src, video_cfg)[1] if isinstance(video_cfg, VideoInputConfig) else "all"
            sets = tuple((i,) for i in used)
        else:
            raise ValueError(f"target must be 'patches' or 'pixels', got {target!r}")
    raw = raw.detach().float()
    scores = RewardScores(raw, model.normalize(raw).float(), tuple(model.axes))
    return AxisSaliency(maps.detach(), tuple(sets), n_src, tuple(axes), scores, target, str(mode))


def _per_axis_grads(raw: Tensor, cols: Sequence[int], wrt: Tensor) -> list[Tensor]:
    """d raw[:, c] / d wrt for each column; samples are independent, so summing over the batch is per-sample."""
    out = []
    for i, c in enumerate(cols):
        (g,) = torch.autograd.grad(raw[:, c].sum(), wrt, retain_graph=i < len(cols) - 1)
        out.append(g)
    return out


# ---- pixel frames -> causal latent frames -----------------------------------------------------------------------
def latent_frames_for_video(num_frames: int, temporal_stride: int = 4) -> int:
    """Latent frames covering `num_frames` pixel frames (81 -> 21; a partial last group still gets a latent)."""
    return 1 + math.ceil(max(num_frames - 1, 0) / temporal_stride)


def latent_frame_sets(num_latent: int, temporal_stride: int = 4) -> list[tuple[int, ...]]:
    """Pixel frames of each latent frame: latent 0 <- (0,), latent k >= 1 <- (4k-3, ..., 4k)."""
    return [(0,)] + [tuple(range(temporal_stride * (k - 1) + 1, temporal_stride * k + 1)) for k in range(1, num_latent)]


def temporal_overlap_matrix(frame_sets: Sequence[Sequence[int]], num_latent: int,
                            temporal_stride: int = 4) -> Tensor:
    """[F_lat, T_s] fp32, rows sum to 1.

    Row k weights slice j by |frames(k) & frame_sets[j]| (80 frames in 40 patches: 1/4, 1/2, 1/4 on patches
    2k-2, 2k-1, 2k; latent 20 -> patches 38/39 with 1/3, 2/3). A latent frame that no slice covers (sparse
    `fps` sampling) is linearly interpolated between the slices' time centres, clamped at the ends.
    """
    if not frame_sets:
        raise ValueError("frame_sets is empty")
    sets = [set(s) for s in frame_sets]
    centres = torch.tensor([sum(s) / len(s) for s in frame_sets], dtype=torch.float64)
    a = torch.zeros(num_latent, len(sets), dtype=torch.float64)
    for k, frames in enumerate(latent_frame_sets(num_latent, temporal_stride)):
        counts = torch.tensor([len(s.intersection(frames)) for s in sets], dtype=torch.float64)
        if counts.sum() > 0:
            a[k] = counts / counts.sum()
            continue
        c = sum(frames) / len(frames)
        right = int(torch.searchsorted(centres, torch.tensor([c], dtype=torch.float64)).item())
        if right == 0 or right == len(sets):
            a[k, min(right, len(sets) - 1)] = 1.0
        else:
            lo, hi = centres[right - 1].item(), centres[right].item()
            t = 0.0 if hi == lo else (c - lo) / (hi - lo)
            a[k, right - 1], a[k, right] = 1.0 - t, t
    return a.float()


def to_latent_grid(maps: Tensor, frame_sets: Sequence[Sequence[int]], latent_shape: tuple[int, int, int],
                   temporal_stride: int = 4) -> Tensor:
    """maps [..., T_s, h, w] -> [..., F_lat, H_lat, W_lat] fp32 (causal temporal overlap, bilinear+antialias space)."""
    f_lat, h_lat, w_lat = latent_shape
    lead = maps.shape[:-3]
    x = maps.float().reshape(-1, *maps.shape[-3:])                             # [N, T_s, h, w]
    if x.shape[-2:] != (h_lat, w_lat):
        x = F.interpolate(x, size=(h_lat, w_lat), mode="bilinear", align_corners=False, antialias=True)
    a = temporal_overlap_matrix(frame_sets, f_lat, temporal_stride).to(x.device)  # [F_lat, T_s]
    x = torch.einsum("ft,nthw->nfhw", a, x)                                   # [N, F_lat, H_lat, W_lat]
    return x.reshape(*lead, f_lat, h_lat, w_lat)


def latent_saliency(sal: AxisSaliency, latent_shape: tuple[int, int, int], temporal_stride: int = 4) -> Tensor:
    """[B, A, F_lat, H_lat, W_lat] per-axis saliency on the latent grid."""
    return to_latent_grid(sal.maps, sal.frame_sets, latent_shape, temporal_stride)


def pixel_to_latent_index(frame: int, temporal_stride: int = 4) -> int:
    """Latent frame holding pixel frame `frame`: ceil(i / 4) (0 -> 0, 1..4 -> 1, 77..80 -> 20)."""
    return -(-frame // temporal_stride)

