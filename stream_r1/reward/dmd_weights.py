"""One call from decoded rollouts to the two reward weights of the Stream-R1 DMD loss.

    L_G = 1/2 * W_inter * mean(W_intra * (x - sg(x - g))^2)        (spec-algorithm §5.6)

`reward_weights` runs one gradient-enabled reward forward (whose scores also give W_inter, so the reward
model is not run twice, §8.7), one backward per saliency axis, maps the saliency onto the latent grid and
returns detached fp32 weights for every sample of the batch (§8.2).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor

from .model import RewardModel, RewardScores
from .preprocess import PatchOrder
from .saliency import SALIENCY_AXES, SaliencyTarget, gradient_saliency, latent_saliency
from .weights import BalancedOverall, IntraConfig, IntraWeights, RewardMode, inter_weight, intra_weights, \
    reward_signal


@dataclass(frozen=True)
class RewardWeights:
    w_inter: Tensor
    """[B, 1, 1, 1, 1] fp32 = exp(beta * r)."""
    w_intra: Tensor
    """[B, F_lat, 1, H_lat, W_lat] fp32, mean 1 per sample."""
    r: Tensor
    """[B] reward signal (after the balance penalty for BalancedOverall)."""
    scores: RewardScores
    intra: IntraWeights
    sampling: str
    """Frame-sampling record of the reward input (e.g. 'all/pad-last', 'fps=2')."""


def reward_weights(model: RewardModel, frames: Tensor, prompts: Sequence[str], latent_shape: tuple[int, int, int],
                   intra: IntraConfig = IntraConfig(), reward_mode: RewardMode = "BalancedOverall",
                   balancer: BalancedOverall | None = None, beta: float = 2.0, clip: float | None = None,
                   target: SaliencyTarget = "patches", axes: Sequence[str] = SALIENCY_AXES,
                   temporal_stride: int = 4, checkpointing: bool = False,
                   order: PatchOrder = "image") -> RewardWeights:
    """frames [B, T, 3, H, W] in [0, 1] (decoded rollouts), latent_shape (F_lat, H_lat, W_lat) -> weights.
    order: patch order of the saliency maps ("reference" = the public code's row-major view, see
    `gradient_saliency`)."""
    sal = gradient_saliency(model, frames, prompts, axes=axes, target=target, checkpointing=checkpointing,
                            order=order)
    iw = intra_weights(latent_saliency(sal, latent_shape, temporal_stride), sal.z(), intra)
    r = reward_signal(sal.scores.normalized, sal.scores.axes, reward_mode, balancer)
    return RewardWeights(inter_weight(r, beta, clip), iw.w_intra, r, sal.scores, iw, sal.mode)
