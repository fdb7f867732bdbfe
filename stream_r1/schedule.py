"""Flow-matching schedule of the few-step students (shift 5, 1000-entry grid).

sigma_raw = linspace(1, 0, 1001)[:-1]; sigma = s*sigma_raw / (1 + (s-1)*sigma_raw); t = 1000*sigma.
Forward process x_t = (1 - sigma) x0 + sigma eps; the model predicts the flow v = eps - x0, so
x0 = x_t - sigma v. sigma for a timestep is looked up as the nearest grid entry (as the reference does).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor


class FlowMatchSchedule:
    def __init__(self, shift: float = 5.0, num_train_timesteps: int = 1000):
        self.shift, self.num_train_timesteps = shift, num_train_timesteps
        # computed in float32 like the reference (so warped steps are its exact values), kept as float64
        raw = torch.linspace(1.0, 0.0, num_train_timesteps + 1)[:-1]                           # [1000] f32
        sig = shift * raw / (1 + (shift - 1) * raw)
        self.sigmas = sig.double()                                                             # [1000]
        self.timesteps = (sig * num_train_timesteps).double()                                  # [1000]

    @classmethod
    def from_config(cls, cfg) -> "FlowMatchSchedule":
        return cls(cfg.timestep_shift, cfg.num_train_timesteps)

    def warp(self, steps: Sequence[float]) -> list[float]:
        """Configured steps s -> grid[1000 - s] (with a 0 appended): 1000/750/500/250 -> 1000/937.5/833.3/625."""
        ext = torch.cat([self.timesteps, torch.zeros(1, dtype=torch.float64)])
        out = []
        for s in steps:
            idx = self.num_train_timesteps - int(round(s))
            if not 0 <= idx <= self.num_train_timesteps:
                raise ValueError(f"denoising step {s} is outside [0, {self.num_train_timesteps}]")
            out.append(float(ext[idx]))
        return out

    def sampling_timesteps(self, steps: Sequence[float], warp: bool = True) -> list[float]:
        return self.warp(steps) if warp else [float(s) for s in steps]

    def sigma(self, t: "Tensor | float") -> Tensor:
        """Nearest-grid sigma (float64) for timestep(s) t."""
        t = torch.as_tensor(t, dtype=torch.float64)
        idx = (self.timesteps.to(t.device)[None, :] - t.reshape(-1, 1)).abs().argmin(dim=1)
        return self.sigmas.to(t.device)[idx].reshape(t.shape)

    def x0_from_flow(self, x_t: Tensor, flow: Tensor, t: float) -> Tensor:
        """x0 = x_t - sigma(t) * flow, computed in float64, returned in x_t's dtype."""
        s = float(self.sigma(t))
        return (x_t.double() - s * flow.double()).to(x_t.dtype)

    def flow_from_x0(self, x_t: Tensor, x0: Tensor, t: float) -> Tensor:
        s = float(self.sigma(t))
        return ((x_t.double() - x0.double()) / s).to(x_t.dtype)

    def add_noise(self, x0: Tensor, noise: Tensor, t: float) -> Tensor:
        """Re-noise a clean prediction to timestep t: (1 - sigma) x0 + sigma eps."""
        s = float(self.sigma(t))
        return (1 - s) * x0 + s * noise

    def sample_training_timesteps(self, n: int, *, min_t: float = 20.0, max_t: float = 980.0,
                                  generator: Optional[torch.Generator] = None) -> Tensor:
        """DMD score timesteps: uniform in [0, 1000), shifted, clamped to [min_t, max_t] (float64)."""
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        s = self.shift * u / (1 + (self.shift - 1) * u)
        return (s * self.num_train_timesteps).clamp(min_t, max_t)
