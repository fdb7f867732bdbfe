"""A differentiable analytic reward for the shapes world, implementing `stream_r1.reward.model.RewardModel`.

The learned shapes reward (Qwen2-VL tiny) turned out unrelated to what the checker measures (Spearman -0.03 … 0.10,
TA at chance), so Stream-R1's W_inter = exp(beta r) and its saliency weights had nothing to follow. This scorer
reads the prompt through the shapes vocabulary (`parse_prompt`) and measures three things directly from pixels,
every step differentiable w.r.t. the frames (so `gradient_saliency(..., target="pixels")` works):

* foreground  fg(x) = sigmoid((|x - bg| - thr) / soft), bg = per-row median of the border columns over all frames
  (detached; the checker's background estimate), i.e. a soft mask of "not background";
* TA  (prompt adherence, colour): per prompted shape k, pixels are softly assigned among the prompt's colours;
  TA = mean over k, t of presence_k(t) * exp(-|mean colour_k(t) - c_k|^2 / 2 sigma^2)  in [0, 1];
* MQ  (motion): circular (wrap-safe, like the renderer) soft centroid of each prompted shape's mass; its velocity
  between frames is compared with the prompted motion: tanh(v . d / s) - 0.5 tanh(|v x d| / s) for "moving <dir>",
  speed for "bouncing", a still centroid for "rotating", growing mass for "growing"  in [-1.5, 1];
* VQ  (temporal stability): soft IoU of consecutive foreground masks x stability of the foreground area x presence
  (a shape that flickers or vanishes scores low)  in [0, 1].

It is a surrogate, not the checker: the checker (`stream_r1.shapes.check`) stays the evaluator and its shape,
background and drift scores are not modelled here (they are the collateral metrics of `training.shapes.gate`).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from stream_r1.shapes.prompts import COLORS, MOTIONS, parse_prompt

AXES = ("VQ", "MQ", "TA")
# raw -> z constants: mean / std of the raw axes over 24 rollouts of the bundle's student (21 frames, scene seeds
# 800000+, disjoint from the gate's 700000+; no checker labels used). They set the weight of each axis in the
# 'Overall' signal and W_inter's scale (reward.inter_norm=batch makes the latter rank-only).
NORM_MEAN = (0.73, 0.2, 0.32)
NORM_STD = (0.1, 0.3, 0.16)


def background_rows(frames: Tensor) -> Tensor:
    """frames [T, 3, H, W] -> [3, H, 1] per-row median of the two outer columns on each side over all frames."""
    border = torch.cat([frames[..., :2], frames[..., -2:]], dim=-1)                  # [T, 3, H, 4]
    t, c, h, _ = border.shape
    return border.permute(1, 2, 0, 3).reshape(c, h, -1).median(dim=2).values[..., None]


class AnalyticShapesReward:
    """`score(frames [B, T, 3, H, W] in [0, 1], prompts) -> raw [B, 3]` (VQ, MQ, TA), differentiable w.r.t. frames."""

    axes: tuple[str, ...] = AXES
    differentiable = True

    def __init__(self, fg_threshold: float = 0.2, fg_softness: float = 0.025, color_sigma: float = 0.2,
                 assign_temperature: float = 0.02, speed_scale: float = 1.0, presence_area: float = 30.0,
                 norm_mean: Sequence[float] = NORM_MEAN, norm_std: Sequence[float] = NORM_STD):
        self.fg_threshold, self.fg_softness = fg_threshold, fg_softness
        self.color_sigma, self.assign_temperature = color_sigma, assign_temperature
        self.speed_scale = speed_scale          # px / frame at 96 px (scaled with the frame size)
        self.presence_area = presence_area      # px at 96 x 96 where presence = 1/2
        self.norm_mean = torch.tensor(list(norm_mean), dtype=torch.float32)
        self.norm_std = torch.tensor(list(norm_std), dtype=torch.float32)

    # ---- RewardModel protocol -----------------------------------------------------------------------------------
    def score(self, frames: Tensor, prompts: Sequence[str]) -> Tensor:
        if frames.dim() != 5 or frames.shape[2] != 3:
            raise ValueError(f"frames must be [B, T, 3, H, W], got {list(frames.shape)}")
        if len(prompts) != frames.shape[0]:
            raise ValueError(f"got {len(prompts)} prompts for {frames.shape[0]} videos; pass one per video")
        return torch.stack([self.score_one(v, p) for v, p in zip(frames.float(), prompts)])

    def normalize(self, raw: Tensor) -> Tensor:
        return (raw.float() - self.norm_mean.to(raw.device)) / self.norm_std.to(raw.device)

    # ---- one video ------------------------------------------------------------------------------------------------
    def foreground(self, v: Tensor) -> Tensor:
        """v [T, 3, H, W] -> soft foreground mask [T, H, W]."""
        bg = background_rows(v.detach())
        dist = ((v - bg) ** 2).sum(1).add(1e-6).sqrt()
        return torch.sigmoid((dist - self.fg_threshold) / self.fg_softness)

    def score_one(self, v: Tensor, prompt: str) -> Tensor:
        """v [T, 3, H, W] -> raw (VQ, MQ, TA) [3]."""
        want = parse_prompt(prompt)
        t, _, h, w = v.shape
        s = min(h, w) / 96
        a0 = self.presence_area * s * s
        fg = self.foreground(v)                                                           # [T, H, W]
        cols = torch.tensor([COLORS[x.color] for x in want.shapes], dtype=v.dtype, device=v.device)   # [K, 3]
        d2 = ((v[:, None] - cols[None, :, :, None, None]) ** 2).sum(2)                   # [T, K, H, W]
        resp = torch.softmax(-d2 / self.assign_temperature, dim=1)                      # among prompted colours
        wk = fg[:, None] * resp                                                           # [T, K, H, W]
        mass = wk.sum((2, 3))                                                             # [T, K]
        presence = mass / (mass + a0)
        mean_rgb = (wk[:, :, None] * v[:, None]).sum((3, 4)) / (mass[..., None] + 1e-3)  # [T, K, 3]
        match = torch.exp(-((mean_rgb - cols[None]) ** 2).sum(-1) / (2 * self.color_sigma ** 2))
        ta = (presence * match).mean()
        mq = self._motion(wk, mass, presence, [x.motion for x in want.shapes], s)
        vq = self._stability(fg, a0)
        return torch.stack([vq, mq, ta])

    def _motion(self, wk: Tensor, mass: Tensor, presence: Tensor, motions: list[str], s: float) -> Tensor:
        t, k, h, w = wk.shape
        if t < 2:
            return wk.new_zeros(())
        p = wk / (mass[..., None, None] + 0.1 * self.presence_area * s * s)              # ~0 when the shape is absent
        vel = []
        for n, dim in ((w, 3), (h, 2)):                                                   # x, then y
            ang = 2 * math.pi * (torch.arange(n, dtype=wk.dtype, device=wk.device) + 0.5) / n
            marg = p.sum(dim=5 - dim)                                                     # [T, K, n]
            zc, zs = (marg * ang.cos()).sum(-1), (marg * ang.sin()).sum(-1)               # circular moments
            # sin of the phase step between frames (wrap-safe, no atan2 at an empty frame): px / frame
            cross = zs[1:] * zc[:-1] - zc[1:] * zs[:-1]
            norm = ((zc[1:] ** 2 + zs[1:] ** 2) * (zc[:-1] ** 2 + zs[:-1] ** 2) + 1e-4).sqrt()
            vel.append(cross / norm * n / (2 * math.pi))                                  # [T-1, K]
        vx, vy = vel
        conf = presence[1:] * presence[:-1]                                               # [T-1, K]
        sc = self.speed_scale * s
        speed = (vx ** 2 + vy ** 2 + 1e-6).sqrt()
        lmass = torch.log(mass + 1.0)
        out = []
        for j, m in enumerate(motions):
            if m.startswith("moving"):
                dx, dy = MOTIONS[m]
                along = vx[:, j] * dx + vy[:, j] * dy
                perp = ((vx[:, j] * dy - vy[:, j] * dx) ** 2 + 1e-6).sqrt()
                per_t = torch.tanh(along / sc) - 0.5 * torch.tanh(perp / sc)
            elif m == "bouncing":
                per_t = torch.tanh(speed[:, j] / (2 * sc))
            elif m == "growing":
                per_t = torch.tanh((lmass[1:, j] - lmass[:-1, j]) / 0.02)
            else:                                                                         # rotating: stays in place
                per_t = torch.exp(-(speed[:, j] / sc) ** 2)
            out.append((conf[:, j] * per_t).mean())
        return torch.stack(out).mean()

    def _stability(self, fg: Tensor, a0: float) -> Tensor:
        if fg.shape[0] < 2:
            return (fg.sum((1, 2)) / (fg.sum((1, 2)) + a0)).mean()
        area = fg.sum((1, 2))                                                             # [T]
        iou = torch.minimum(fg[1:], fg[:-1]).sum((1, 2)) / (torch.maximum(fg[1:], fg[:-1]).sum((1, 2)) + a0 * 0.1)
        dl = torch.log((area[1:] + a0) / (area[:-1] + a0))
        steady = torch.exp(-(dl ** 2 + 1e-6).sqrt() / 0.25)
        presence = area / (area + a0)
        return (iou * steady).mean() * presence.mean()
