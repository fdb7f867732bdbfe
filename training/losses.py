"""Losses as pure functions (spec-algorithm §3, §5.6), computed in fp32.

* `score_timesteps`: t ~ U{0..999}, tau = 1000 s u / (1 + (s-1) u), clamped to [20, 980] (§3.1, §13.2).
* `dmd_direction`: g = nan_to_num((D_fake - D_real) / mean_{F,C,H,W} |x - D_real|) per sample.
* `dmd_loss`: value 1/2 mean(W_inter W_intra g^2) = 1/2 mean(W (x - sg(x - g))^2), d/dx = W_inter W_intra g / N.
* `critic_loss`: mean((v_phi - (n - x))^2) on an independent no-grad rollout (§3.2).
* `ode_regression_loss`: mean((x0_student - x0_teacher)^2).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import Tensor

_NORM_EPS = 1e-8


def score_timesteps(generators: Sequence[torch.Generator], *, shift: float = 5.0, min_t: float = 20.0,
                    max_t: float = 980.0, num_train_timesteps: int = 1000) -> Tensor:
    """One DMD/critic timestep per sample (float64 [B]), each from its own generator (layout-independent)."""
    t = torch.stack([torch.randint(0, num_train_timesteps, (1,), generator=g, device=g.device).cpu()
                     for g in generators]).flatten().double()
    return shift_timesteps(t, shift, min_t, max_t, num_train_timesteps)


def shift_timesteps(t: Tensor, shift: float = 5.0, min_t: float = 20.0, max_t: float = 980.0,
                    num_train_timesteps: int = 1000) -> Tensor:
    """Integer draws t in [0, T) -> shifted, clamped float64 timesteps."""
    u = t.double() / num_train_timesteps
    return (num_train_timesteps * shift * u / (1 + (shift - 1) * u)).clamp(min_t, max_t)


def broadcast_sigma(sigma: Tensor, like: Tensor) -> Tensor:
    """[B] -> [B, 1, 1, 1, 1] in like's dtype/device."""
    return sigma.to(like.device, torch.float32).view(-1, *([1] * (like.dim() - 1))).to(like.dtype)


@dataclass
class DMDDirection:
    grad: Tensor
    """g [B, F, C, H, W] fp32 (finite)."""
    normalizer: Tensor
    """[B] mean |x - D_real| per sample."""
    nonfinite: int
    """Elements of g that were NaN/inf before nan_to_num (a health signal; the reference hid them)."""


def dmd_direction(x: Tensor, d_fake: Tensor, d_real: Tensor) -> DMDDirection:
    """All [B, F, C, H, W]; computed in fp32 without gradient."""
    with torch.no_grad():
        x, d_fake, d_real = x.detach().float(), d_fake.float(), d_real.float()
        norm = (x - d_real).abs().mean(dim=tuple(range(1, x.dim())), keepdim=True)       # [B, 1, 1, 1, 1]
        g = (d_fake - d_real) / norm.clamp_min(_NORM_EPS)
        bad = int((~torch.isfinite(g)).sum())
        g = torch.nan_to_num(g)
    return DMDDirection(g, norm.flatten(), bad)


def dmd_loss(x: Tensor, grad: Tensor, w_inter: Optional[Tensor] = None, w_intra: Optional[Tensor] = None) -> Tensor:
    """Weighted DMD generator loss (fp32); x [B, F, C, H, W] carries the rollout's graph.

    Value 1/2 mean(W g^2) = the reference's 1/2 mean(W (x - sg(x - g))^2); gradient W g / N exactly, where
    W = W_inter * W_intra (w_inter [B, 1, 1, 1, 1] or [B], w_intra [B, F, 1, H, W], both detached; None = 1).
    Written as the surrogate mean(x * sg(W g)) (spec §3.1) so the gradient does not suffer the cancellation in
    x - (x - g); with unit (or no) weights it is bit-for-bit the unweighted loss.
    """
    g = grad.detach().float()
    wg = g
    if w_intra is not None:
        wg = wg * w_intra.detach().float()
    if w_inter is not None:
        wg = wg * w_inter.detach().float().view(-1, *([1] * (x.dim() - 1)))
    s = (x.float() * wg).mean()
    return s - s.detach() + 0.5 * (wg * g).mean()


def critic_loss(flow_pred: Tensor, noise: Tensor, x0: Tensor) -> Tensor:
    """Flow-matching loss of the critic: mean((v - (n - x0))^2) in fp32 (all [B, F, C, H, W])."""
    return ((flow_pred.float() - (noise.float() - x0.float())) ** 2).mean()


def ode_regression_loss(x0_pred: Tensor, x0_target: Tensor) -> Tensor:
    return ((x0_pred.float() - x0_target.float()) ** 2).mean()
