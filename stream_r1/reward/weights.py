"""Reward weights of the DMD loss: W_intra (spec-algorithm §5.3-5.5) and W_inter with BalancedOverall (§4.3-4.5).

Pure functions on per-sample tensors (the reference handled sample 0 only, §8.2):

* `combine_axes`: S = sum_a w_a S_a with w = softmax(-z / T) (the weaker axis weighs more); by default each
  S_a is first divided by its own mean (§8.4 fix, a deviation from the public code), `normalize_axes=False`
  mixes raw maps like the public code and the paper.
* `intra_weights`: S -> temporal profile tau_f and per-frame spatial maps sigma_f with strengths and floors,
  W_intra = tau_f sigma_f / mean, shape [B, F, 1, H, W] fp32, mean 1 per sample.
* `inter_weight`: W_inter = exp(beta r), [B, 1, 1, 1, 1] fp32.
* `BalancedOverall`: r = mean_a z_a - lambda std_a(Delta_a) after warm-up, with a windowed history that can
  be shared by all ranks (`torch.distributed` all_reduce) and saved/restored.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import Tensor

Combine = Literal["adaptive", "max", "mean"]
_EPS = 1e-8


@dataclass(frozen=True)
class IntraConfig:
    """Knobs of W_intra; defaults are the shipped config (exp_stream_r1.yaml) plus the §8.4 fix."""

    combine: Combine = "adaptive"
    """How per-axis maps mix: softmax of -z (adaptive), element-wise max, or mean."""
    temperature: float = 1.0
    """T_s of the adaptive softmax."""
    normalize_axes: bool = True
    """Divide each axis map by its mean before mixing (§8.4 fix). A deviation from the public code and the paper,
    which mix the raw gradient maps (so the axis with the largest gradients dominates whatever the softmax says);
    False = their form (training: `reward.normalize_axes=false`, the `stream_r1_1.3b_reference` recipe)."""
    factorized: bool = True
    """Temporal x per-frame spatial factorisation (shipped); False = one global min-max (§5.5)."""
    spatial_strength: float = 1.0
    """alpha_s: 0 gives uniform spatial weights, 1 pure min-max saliency."""
    temporal_strength: float = 1.0
    """alpha_t: 0 gives uniform temporal weights."""
    spatial_floor: float = 0.15
    """sigma_min, applied before the per-frame mean normalisation."""
    temporal_floor: float = 0.2
    """tau_min, applied before the temporal mean normalisation."""
    flat_relative_range: float = 0.0
    """Treat a map as flat (weights 1) when (max - min) / mean is below this (§8.9); 0 = reference."""

    def __post_init__(self) -> None:
        if self.combine not in ("adaptive", "max", "mean"):
            raise ValueError(f"combine must be 'adaptive', 'max' or 'mean', got {self.combine!r}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        for name in ("spatial_strength", "temporal_strength", "spatial_floor", "temporal_floor"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")


@dataclass(frozen=True)
class IntraWeights:
    w_intra: Tensor
    """[B, F, 1, H, W] fp32, mean 1 per sample; broadcasts over latent channels."""
    temporal: Tensor
    """[B, F] tau after mean normalisation (all ones when not factorised)."""
    spatial: Tensor
    """[B, F, H, W] sigma, each frame mean 1 (factorised) or the global map (not factorised)."""
    axis_weights: Tensor
    """[B, A] mixing weights used."""


def axis_weights(z: Tensor, temperature: float = 1.0) -> Tensor:
    """[B, A] z-scores -> softmax(-z / T): the lowest (weakest) score gets the largest weight."""
    return torch.softmax(-z.float() / temperature, dim=-1)


def combine_axes(maps: Tensor, z: Tensor, cfg: IntraConfig = IntraConfig()) -> tuple[Tensor, Tensor]:
    """maps [B, A, F, H, W] >= 0, z [B, A] -> (S [B, F, H, W], weights [B, A])."""
    maps = maps.float()
    if cfg.normalize_axes:
        maps = maps / maps.mean(dim=(2, 3, 4), keepdim=True).clamp_min(_EPS)
    b, a = maps.shape[:2]
    if a == 1 or cfg.combine == "mean":
        w = torch.full((b, a), 1.0 / a, device=maps.device)
        return maps.mean(dim=1), w
    if cfg.combine == "max":
        return maps.amax(dim=1), torch.full((b, a), float("nan"), device=maps.device)
    w = axis_weights(z.to(maps.device), cfg.temperature)                      # [B, A]
    return torch.einsum("ba,bafhw->bfhw", w, maps), w


def _minmax(x: Tensor, dims: tuple[int, ...], flat_relative_range: float) -> Tensor:
    """(x - min) / (max - min) over dims; ones where the range is <= 1e-8 (or relatively flat)."""
    lo, hi = x.amin(dim=dims, keepdim=True), x.amax(dim=dims, keepdim=True)
    rng = hi - lo
    flat = (rng <= _EPS) | (rng < flat_relative_range * x.mean(dim=dims, keepdim=True).abs())
    return torch.where(flat, torch.ones_like(x), (x - lo) / rng.clamp_min(_EPS))


def factorize(s: Tensor, cfg: IntraConfig = IntraConfig()) -> tuple[Tensor, Tensor, Tensor]:
    """S [B, F, H, W] -> (W [B, F, H, W] mean 1, tau [B, F], sigma [B, F, H, W]) per spec-algorithm §5.4/§5.5."""
    s = s.float()
    if not cfg.factorized:
        sig = (1 - cfg.spatial_strength) + cfg.spatial_strength * _minmax(s, (1, 2, 3), cfg.flat_relative_range)
        sig = sig.clamp_min(cfg.spatial_floor)
        w = sig / sig.mean(dim=(1, 2, 3), keepdim=True).clamp_min(_EPS)
        return w, torch.ones(s.shape[:2], device=s.device), w
    q = s.mean(dim=(2, 3))                                                     # [B, F] temporal profile
    tau = (1 - cfg.temporal_strength) + cfg.temporal_strength * _minmax(q, (1,), cfg.flat_relative_range)
    tau = tau.clamp_min(cfg.temporal_floor)
    tau = tau / tau.mean(dim=1, keepdim=True)
    sig = (1 - cfg.spatial_strength) + cfg.spatial_strength * _minmax(s, (2, 3), cfg.flat_relative_range)
    sig = sig.clamp_min(cfg.spatial_floor)
    m = sig.mean(dim=(2, 3), keepdim=True)
    sig = torch.where(m > _EPS, sig / m.clamp_min(_EPS), sig)                 # each frame's spatial mean -> 1
    w = tau[:, :, None, None] * sig
    w = w / w.mean(dim=(1, 2, 3), keepdim=True).clamp_min(_EPS)                # no-op up to rounding
    return w, tau, sig


def intra_weights(latent_maps: Tensor, z: Tensor, cfg: IntraConfig = IntraConfig()) -> IntraWeights:
    """Per-axis latent-grid saliency [B, A, F, H, W] + z [B, A] (same axis order) -> W_intra [B, F, 1, H, W]."""
    s, w_axes = combine_axes(latent_maps, z, cfg)
    w, tau, sig = factorize(s, cfg)
    return IntraWeights(w.unsqueeze(2).contiguous(), tau, sig, w_axes)


def inter_weight(r: Tensor, beta: float = 2.0, clip: float | None = None) -> Tensor:
    """r [B] -> W_inter = exp(beta * r) as [B, 1, 1, 1, 1] fp32, detached; `clip` bounds |r| first (§8.6)."""
    r = r.detach().float()
    if clip is not None:
        r = r.clamp(-clip, clip)
    return torch.exp(beta * r).view(-1, 1, 1, 1, 1)


def normalize_inter(w_inter: Tensor, all_reduce: Callable[[Tensor], None] | None = None) -> Tensor:
    """W_inter / mean(W_inter) over the global batch (`all_reduce` sums a float64 [sum, count] over ranks in
    place; None = this batch only). Not in the paper (training `reward.inter_norm='batch'`).

    It cancels any factor shared by the whole batch, so BalancedOverall's penalty, exp(-beta lambda penalty) on
    every rollout alike (history synchronised over ranks), drops out exactly: under it BalancedOverall trains
    as Overall (tests/test_saliency_weights.py)."""
    tot = torch.tensor([float(w_inter.sum()), float(w_inter.numel())], dtype=torch.float64)
    if all_reduce is not None:
        all_reduce(tot)
    return w_inter * (tot[1] / tot[0]).item()


def effective_sample_size(w: Tensor) -> float:
    """Kish's effective sample size of weights w [B, ...] (one per rollout): (sum w)^2 / sum w^2, in [1, B]."""
    w = w.detach().double().flatten()
    return float(w.sum() ** 2 / (w ** 2).sum())


def beta_for_ess(r: Tensor, batch: int, fraction: float = 0.5, draws: int = 256, seed: int = 0,
                 lo: float = 0.0, hi: float = 64.0, iters: int = 40) -> float:
    """The beta at which W_inter = exp(beta r) keeps an effective sample size of `fraction` * `batch`, on average
    over `draws` batches of `batch` rewards drawn (without replacement) from the pool r [N] (e.g. the starting
    student's rollouts): bisection, since the mean ESS falls monotonically as beta grows. Returns `hi` when even
    that keeps more than the target (the rewards hardly differ)."""
    r = r.detach().double().flatten()
    if r.numel() < batch or batch < 2 or not 0 < fraction < 1:
        raise ValueError(f"need >= batch ({batch} >= 2) rewards and 0 < fraction < 1, got {r.numel()} and {fraction}")
    g = torch.Generator().manual_seed(seed)
    pick = torch.stack([torch.randperm(r.numel(), generator=g)[:batch] for _ in range(draws)])   # [draws, batch]
    rb = r[pick] - r[pick].max(dim=1, keepdim=True).values        # exp(beta (r - max)): same ESS, no overflow

    def mean_ess(beta: float) -> float:
        w = torch.exp(beta * rb)
        return float((w.sum(1) ** 2 / (w ** 2).sum(1)).mean())

    target = fraction * batch
    if mean_ess(hi) > target:
        return hi
    for _ in range(iters):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mean_ess(mid) > target else (lo, mid)
    return (lo + hi) / 2


def shuffled_control(w_inter: Tensor, w_intra: Tensor | None, g: torch.Generator) -> tuple[Tensor, Tensor | None]:
    """The uninformed control of a reward-weighted batch: the same weight values, detached from their rollouts.
    W_inter [B, 1, 1, 1, 1] permuted within the batch (a random derangement: no rollout keeps its own weight),
    W_intra [B, F, 1, H, W] maps moved one sample along (sample b gets sample b-1's map). B = 1 is unchanged."""
    b = w_inter.shape[0]
    if b < 2:
        return w_inter, w_intra
    while True:                                                     # rejection: 1/e of permutations qualify
        perm = torch.randperm(b, generator=g)
        if not bool((perm == torch.arange(b)).any()):
            break
    return w_inter[perm.to(w_inter.device)], (None if w_intra is None else w_intra.roll(1, dims=0))


RewardMode = Literal["VQ", "MQ", "TA", "Overall", "BalancedOverall"]


def reward_signal(z: Tensor, axes: Sequence[str], mode: RewardMode,
                  balancer: "BalancedOverall | None" = None) -> Tensor:
    """r [B] from z-scores [B, A] (§4.3). BalancedOverall needs `balancer` and records z in its history."""
    if mode in axes:
        return z[:, list(axes).index(mode)].float()
    if mode == "Overall":
        return z.float().mean(dim=1)
    if mode == "BalancedOverall":
        if balancer is None:
            raise ValueError("reward_mode 'BalancedOverall' needs a BalancedOverall instance (balancer=...)")
        return balancer.update(z)
    raise ValueError(f"reward_mode must be one of {list(axes)}, 'Overall' or 'BalancedOverall', got {mode!r}")


class BalancedOverall:
    """r = mean_a z_a - lambda * std_a(Delta_a), Delta_a = mean(newer half) - mean(older half) of a window.

    One history entry per `update` call: the batch mean of z, averaged over all ranks (all_reduce) when
    torch.distributed is initialised and `sync` is on, so every rank holds the same history and penalty.
    `reference=True` reproduces the released code: sample 0 of the local batch only, never synchronised.
    """

    def __init__(self, axes: Sequence[str] = ("VQ", "MQ", "TA"), window: int = 50, warmup: int = 50,
                 lam: float = 0.5, sync: bool = True, reference: bool = False) -> None:
        if window < 4:
            raise ValueError(f"window must be >= 4 (the penalty needs 4 entries), got {window}")
        self.axes, self.window, self.warmup, self.lam = tuple(axes), window, warmup, lam
        self.sync, self.reference = sync and not reference, reference
        self.step = 0
        self.history: dict[str, deque[float]] = {a: deque(maxlen=window) for a in self.axes}

    def synchronize(self, z: Tensor) -> Tensor:
        """[B, A] -> [A] history entry: the batch mean over all ranks (one all_reduce of sums and counts, so
        batch sizes may differ per rank); this rank's sample 0 in reference mode; the local mean without a group."""
        z = z.detach().float()
        if self.reference:
            return z[0].cpu()
        total = torch.cat([z.sum(dim=0), z.new_tensor([z.shape[0]])])        # [A + 1]: sums and count
        if self.sync and dist.is_available() and dist.is_initialized():
            if dist.get_backend() == "nccl":
                total = total.cuda()
            dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return (total[:-1] / total[-1]).cpu()

    def penalty(self) -> float:
        """std (unbiased, over axes) of the per-axis improvements; 0 during warm-up or with < 4 entries."""
        if self.step < self.warmup or any(len(h) < 4 for h in self.history.values()):
            return 0.0
        deltas = []
        for h in self.history.values():
            v = torch.tensor(list(h), dtype=torch.float64)
            half = len(v) // 2
            deltas.append(v[half:].mean() - v[:half].mean())
        return float(torch.stack(deltas).std()) if len(deltas) > 1 else 0.0

    def update(self, z: Tensor) -> Tensor:
        """z [B, A] (this rank's batch, `axes` order) -> r [B]; appends one entry, then applies the penalty."""
        if z.dim() != 2 or z.shape[1] != len(self.axes):
            raise ValueError(f"z must be [B, {len(self.axes)}] in order {self.axes}, got {list(z.shape)}")
        self.step += 1
        for a, v in zip(self.axes, self.synchronize(z).tolist()):
            self.history[a].append(v)
        return z.detach().float().mean(dim=1) - self.lam * self.penalty()

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "history": {a: list(h) for a, h in self.history.items()},
                "window": self.window, "axes": list(self.axes)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if list(state["axes"]) != list(self.axes):
            raise ValueError(f"balance state is for axes {state['axes']}, this instance uses {list(self.axes)}")
        self.step = int(state["step"])
        self.history = {a: deque((float(v) for v in state["history"][a]), maxlen=self.window) for a in self.axes}
