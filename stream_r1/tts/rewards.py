"""Analytic rewards implementing the RewardModel protocol (tests, smoke runs, debugging the search)."""
from __future__ import annotations

from typing import Sequence

from torch import Tensor


class BrightnessReward:
    """Mean brightness of the frames, the same on every axis: score [B, T, 3, H, W] in [0, 1] -> [B, 3].
    normalize: (raw - mean) / std with given constants (default 0.5 / 0.1)."""

    axes = ("VQ", "MQ", "TA")
    differentiable = True

    def __init__(self, mean: float = 0.5, std: float = 0.1, sign: float = 1.0):
        self.mean, self.std, self.sign = mean, std, sign
        self.calls = 0

    def score(self, frames: Tensor, prompts: Sequence[str]) -> Tensor:
        self.calls += 1
        m = self.sign * frames.float().mean(dim=(1, 2, 3, 4))                    # [B]
        return m[:, None].expand(-1, len(self.axes)).contiguous()

    def normalize(self, raw: Tensor) -> Tensor:
        return (raw.float() - self.sign * self.mean) / self.std
