"""One saliency analysis of a clip, shared by the `saliency` CLI and the ComfyUI saliency node.

`analyse(model, frames, prompt)` runs the reward model once (1 forward + 3 backward passes) and returns the
scores, the per-axis maps on the latent grid and the Intra-Perplexity weights; the helpers turn them into
pictures (per-frame overlays, a mask, per-axis grids, the temporal profile chart).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from . import visualize as vis
from .model import RewardModel
from .saliency import AxisSaliency, gradient_saliency, latent_frames_for_video, latent_saliency
from .weights import IntraConfig, IntraWeights, intra_weights


@dataclass
class SaliencyReport:
    frames: Tensor
    """[T, 3, H, W] the analysed clip in [0, 1] (CPU, fp32)."""
    prompt: str
    saliency: AxisSaliency
    latent_maps: Tensor
    """[A, F, H/8, W/8] per-axis saliency on the causal latent grid (A follows saliency.axes)."""
    intra: IntraWeights
    intra_config: IntraConfig

    @property
    def axes(self) -> tuple[str, ...]:
        return self.saliency.axes

    @property
    def scores(self) -> dict:
        """Normalised VQ / MQ / TA and Overall (z-scores), plus raw values under 'raw'."""
        return self.saliency.scores.as_dicts()[0]

    def map_for(self, axis: str = "combined") -> Tensor:
        """[F, H/8, W/8]: `combined` = W_intra (the training weight), or one axis' saliency."""
        if axis == "combined":
            return self.intra.w_intra[0, :, 0]
        if axis not in self.axes:
            raise ValueError(f"axis must be 'combined' or one of {list(self.axes)}, got {axis!r}")
        return self.latent_maps[self.axes.index(axis)]

    def per_frame(self, axis: str = "combined") -> Tensor:
        """[T, H, W] the latent map of each frame's latent group, upsampled to the frame size, scaled to [0, 1]."""
        t, _, h, w = self.frames.shape
        m = vis.latent_to_frames(self.map_for(axis).float().cpu(), t, (h, w))
        return (m / m.max().clamp_min(1e-12)).clamp(0, 1)

    def overlays(self, axis: str = "combined", alpha: float = 0.55) -> Tensor:
        """[T, 3, H, W] heat map over every frame."""
        heat = vis.colorize(self.per_frame(axis), "jet")                         # [T, 3, H, W]
        return vis.overlay(self.frames, heat, alpha)

    def temporal_profile(self) -> Tensor:
        """[3, h, w] chart of the temporal weight per latent frame."""
        return vis.temporal_profile_image(self.intra.temporal[0].cpu())

    def summary(self) -> str:
        s = self.scores
        parts = [f"{a} {s[a]:+.3f}" for a in ("VQ", "MQ", "TA") if a in s]
        weights = ", ".join(f"{a} {w:.2f}" for a, w in zip(self.axes, self.intra.axis_weights[0].tolist()))
        return (f"{' | '.join(parts)} | Overall {s.get('Overall', float('nan')):+.3f} (z-scores); "
                f"saliency mix: {weights}; sampling {self.saliency.mode}")

    def as_json(self) -> dict:
        return {"prompt": self.prompt, "frames": int(self.frames.shape[0]), "sampling": self.saliency.mode,
                "target": self.saliency.target, "latent_shape": list(self.latent_maps.shape[1:]),
                "scores": self.scores, "axis_order": list(self.axes),
                "axis_weights": self.intra.axis_weights[0].tolist(),
                "axis_map_means": self.latent_maps.mean(dim=(1, 2, 3)).tolist(),
                "temporal_weights": self.intra.temporal[0].tolist(),
                "intra_config": dataclasses.asdict(self.intra_config)}


def analyse(model: RewardModel, frames: Tensor, prompt: str, *, intra_config: Optional[IntraConfig] = None,
            target: str = "patches", checkpointing: bool = True) -> SaliencyReport:
    """frames [T, 3, H, W] in [0, 1] (T >= 2) -> SaliencyReport (the reward model's own device and dtype)."""
    if frames.dim() != 4 or frames.shape[1] != 3:
        raise ValueError(f"frames must be [T, 3, H, W], got {list(frames.shape)}")
    if frames.shape[0] < 2:
        raise ValueError(f"the reward model needs at least 2 frames, got {frames.shape[0]}; pass a clip, not an image")
    cfg = intra_config or IntraConfig()
    t, _, h, w = frames.shape
    sal = gradient_saliency(model, frames[None], [prompt], target=target, checkpointing=checkpointing)
    latent_shape = (latent_frames_for_video(t), max(1, h // 8), max(1, w // 8))
    lat = latent_saliency(sal, latent_shape)[0]                                  # [A, F, H/8, W/8]
    intra = intra_weights(lat[None], sal.z(), cfg)
    return SaliencyReport(frames.detach().float().cpu(), prompt, sal, lat.detach().float().cpu(), intra, cfg)


def axis_grid(report: SaliencyReport, axis: str, thumb_width: int = 208, alpha: float = 0.55,
              cols: int = 7) -> Tensor:
    """[3, H', W'] one tile per latent frame (shown on its last pixel frame) with the axis' heat map."""
    t, _, h, w = report.frames.shape
    tile = (max(1, round(h * thumb_width / w)), thumb_width)
    f = report.latent_maps.shape[1]
    shown = torch.tensor([min(4 * k, t - 1) for k in range(f)])
    thumbs = vis.resize_maps(report.frames.index_select(0, shown).flatten(0, 1), tile).view(f, 3, *tile)
    cmap = "blues" if axis == "combined" else "jet"
    heat = vis.heatmaps(report.map_for(axis).float(), tile, cmap=cmap, per_map=False)
    images = heat if axis == "combined" else vis.overlay(thumbs, heat, alpha)
    return vis.grid_image(images, min(cols, f))
