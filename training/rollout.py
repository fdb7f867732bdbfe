"""Self-forcing rollout of the causal student (spec-algorithm §2.3-2.5) and the teacher's ODE trajectories.

The rollout runs the inference sampler chunk by chunk on the student's own outputs: for chunk b, steps
0..e-1 run under no_grad with fresh re-noising, step e (the exit step, shared by all chunks) runs with
gradient and its x0 is the chunk's output, then a no_grad context pass writes the chunk's clean K/V.

The K/V store is `RolloutCache`: append-only over the rollout's frames (the training cache never evicts, so
the EMA sink never runs, as in the reference), attended with the inference pattern of the stream config
(sink + window, window-relative RoPE for window_sink). The gradient-carrying exit step does not write into
it: it runs through a `FrozenCacheView` that concatenates the detached prefix with the call's own K/V and
recomputes the text K/V with gradient. That view is pure (spec §8 item 15), so activation checkpointing may
re-run a block in backward after the store has moved on; earlier slots are never written again.

Text (cross-attention) K/V and their gradient, `text_kv_grad`:

* "every_call" (default): every exit forward recomputes the text K/V with gradient, so the cross-attention
  `k`, `v`, `norm_k` weights (and the text embedding) get gradient from every rollout, whatever the exit step.
* "reference": as the public code (Self-Forcing `CausalWanCrossAttention`, unchanged in Reward Forcing /
  Stream-R1): the crossattn cache is *assigned* the K/V of the rollout's first model call (chunk 0, step 0) and
  every later call reads that same tensor. With exit step e > 0 that call runs under no_grad, so the text K/V
  are constants of the rollout and those weights get no generator gradient (3 rollouts in 4); with e = 0 it is
  chunk 0's exit forward, and all chunks back-propagate into that one shared tensor, which gives the same
  gradient as "every_call". Values (and so the rollout) are identical in both modes; only the gradient differs.
"""
from __future__ import annotations

from typing import Callable, Iterable, Literal, Optional, Sequence

import torch
from einops import rearrange
from torch import Tensor

from stream_r1.config import StreamConfig, WanConfig
from stream_r1.schedule import FlowMatchSchedule

TextKVGrad = Literal["every_call", "reference"]
NoiseFn = Callable[[int, int], Tensor]
"""noise(chunk, draw) -> [B, f, C, h, w]: draw 0 is the chunk's initial noise, draw i in 1..S-1 the re-noise
before step i, draw S the context-pass noise (S = number of denoising steps)."""


class RolloutCache:
    """K/V [num_layers, B, frames * frame_seqlen, n, d] written once per frame slot, plus the text K/V.

    Implements the cache protocol of `WanModel.forward` (plan / query_start_frame / update / commit / cross).
    """

    def __init__(self, cfg: WanConfig, sc: StreamConfig, *, batch: int, frames: int, frame_seqlen: int,
                 device: torch.device, dtype: torch.dtype):
        self.sc, self.fs, self.frames = sc, frame_seqlen, frames
        shape = (cfg.num_layers, batch, frames * frame_seqlen, cfg.num_heads, cfg.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        cshape = (cfg.num_layers, batch, cfg.text_len, cfg.num_heads, cfg.head_dim)
        self.cross_k = torch.zeros(cshape, device=device, dtype=dtype)
        self.cross_v = torch.zeros(cshape, device=device, dtype=dtype)
        self.cross_valid = [False] * cfg.num_layers
        self.relative_rope = sc.relative_rope
        self._plan: Optional[tuple[int, int, list[range]]] = None

    def key_frames(self, start: int, num: int) -> list[range]:
        """Earlier frames a call over [start, start + num) attends (the call's own frames come last).

        window_sink / longlive: the sink plus the newest `window - sink` frames incl. the call's own (so chunk
        b >= 2 of a 3/9/3 stream sees chunks {0, b-1, b}); full: everything before `start`.
        """
        if self.sc.cache_policy == "full":
            return [range(0, start)] if start else []
        end, sink = start + num, self.sc.sink_frames
        recent = end - (self.sc.window_frames - sink)
        if recent <= sink:
            return [range(0, start)] if start else []
        return [r for r in (range(0, sink), range(recent, start)) if len(r)]

    def make_plan(self, start_token: int, num_tokens: int) -> tuple[int, int, list[range]]:
        if start_token % self.fs or num_tokens % self.fs:
            raise ValueError("rollout cache calls must cover whole latent frames")
        s, n = start_token // self.fs, num_tokens // self.fs
        if s + n > self.frames:
            raise ValueError(f"call over frames [{s}, {s + n}) exceeds the rollout's {self.frames} frames")
        return s, n, self.key_frames(s, n)

    # ---- the WanModel cache protocol -----------------------------------------------------------------------
    def plan(self, start: int, num_new: int):
        self._plan = self.make_plan(start, num_new)
        return self._plan

    def query_start_frame(self) -> int:
        s, _, ranges = self._plan
        return sum(len(r) for r in ranges) if self.relative_rope else s

    def gather(self, layer: int, ranges: Sequence[range], k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """[prefix frames ; the call's K/V] along tokens, [B, S, n, d]; the prefix is detached storage."""
        if not ranges:
            return k, v
        ks = [self.k[layer, :, r.start * self.fs:r.stop * self.fs] for r in ranges]
        vs = [self.v[layer, :, r.start * self.fs:r.stop * self.fs] for r in ranges]
        return torch.cat([*ks, k], dim=1), torch.cat([*vs, v], dim=1)

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        s, n, ranges = self._plan
        with torch.no_grad():
            self.k[layer, :, s * self.fs:(s + n) * self.fs] = k
            self.v[layer, :, s * self.fs:(s + n) * self.fs] = v
        return self.gather(layer, ranges, k, v)

    def commit(self) -> None:
        self._plan = None

    def cross(self, layer: int) -> Optional[tuple[Tensor, Tensor]]:
        return (self.cross_k[layer], self.cross_v[layer]) if self.cross_valid[layer] else None

    def set_cross(self, layer: int, k: Tensor, v: Tensor) -> None:
        with torch.no_grad():
            self.cross_k[layer].copy_(k)
            self.cross_v[layer].copy_(v)
        self.cross_valid[layer] = True

    def frozen(self, reuse_text_kv: bool = False) -> "FrozenCacheView":
        return FrozenCacheView(self, reuse_text_kv)


class FrozenCacheView:
    """Read-only view of a `RolloutCache` for one gradient-carrying call: writes nothing, keeps no state that
    a later call changes, and leaves the text K/V to be recomputed (so they carry gradient) unless
    `reuse_text_kv`, which reads the cache's detached text K/V (text_kv_grad="reference", exit step > 0)."""

    def __init__(self, cache: RolloutCache, reuse_text_kv: bool = False):
        self.cache = cache
        self.reuse_text_kv = reuse_text_kv
        self.relative_rope = cache.relative_rope
        self.cross_valid = [False] * len(cache.cross_valid)
        self._plan: Optional[tuple[int, int, list[range]]] = None

    def plan(self, start: int, num_new: int):
        if self._plan is not None:
            raise RuntimeError("a FrozenCacheView serves exactly one model call; take a new one")
        self._plan = self.cache.make_plan(start, num_new)
        return self._plan

    def query_start_frame(self) -> int:
        s, _, ranges = self._plan
        return sum(len(r) for r in ranges) if self.relative_rope else s

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        return self.cache.gather(layer, self._plan[2], k, v)

    def commit(self) -> None:
        pass

    def cross(self, layer: int) -> Optional[tuple[Tensor, Tensor]]:
        return self.cache.cross(layer) if self.reuse_text_kv else None

    def set_cross(self, layer: int, k: Tensor, v: Tensor) -> None:
        pass


# ---- noise ----------------------------------------------------------------------------------------------------
class PerSampleNoise:
    """One generator per sample, seeded from the sample's global position: draws do not depend on the layout."""

    def __init__(self, seeds: Sequence[int], shape: tuple[int, ...], device: torch.device, dtype: torch.dtype):
        self.shape, self.device, self.dtype = shape, device, dtype
        self.gens = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]

    def draw(self, shape: Optional[tuple[int, ...]] = None) -> Tensor:
        shape = shape or self.shape
        return torch.stack([torch.randn(shape, generator=g, device=self.device, dtype=torch.float32)
                            for g in self.gens]).to(self.dtype)

    def __call__(self, chunk: int, draw: int) -> Tensor:
        return self.draw()


# ---- the rollout ----------------------------------------------------------------------------------------------
def denoise(model, x: Tensor, t: float, context: Tensor, cache, start: int, schedule: FlowMatchSchedule) -> Tensor:
    """One student call on [B, f, C, h, w] at timestep t through `cache`; returns the x0 prediction."""
    b, f = x.shape[:2]
    tt = torch.full((b, f), float(t), device=x.device, dtype=torch.float32)
    flow = model(rearrange(x, "b f c h w -> b c f h w"), tt, context, cache=cache, start_frame=start)
    return schedule.x0_from_flow(x, rearrange(flow, "b c f h w -> b f c h w"), t)


def frame_seqlen(cfg: WanConfig, latent_hw: tuple[int, int]) -> int:  # 60x104 latent -> 30*52 = 1560 tokens
    return (latent_hw[0] // cfg.patch_size[1]) * (latent_hw[1] // cfg.patch_size[2])


def self_forcing_rollout(model, context: Tensor, sc: StreamConfig, *, num_frames: int, latent_hw: tuple[int, int],
                         noise: NoiseFn, exit_step: int, grad: bool = True,
                         grad_chunks: Optional[Iterable[int]] = None, context_pass_noise: bool = True,
                         dtype: Optional[torch.dtype] = None, text_kv_grad: TextKVGrad = "every_call") -> Tensor:
    """Roll the causal student out over `num_frames` latent frames; returns x [B, F, C, h, w].

    exit_step e: chunks use steps 0..e (all but e under no_grad); with `grad`, step e of every chunk in
    `grad_chunks` (default all) carries gradient. context_pass_noise: Self-Forcing's training quirk (the clean
    pass input gets noise at the grid sigma nearest to context_noise while the model is told context_noise).
    text_kv_grad: which exit forwards back-propagate into the text K/V (module docstring).
    """
    if text_kv_grad not in ("every_call", "reference"):
        raise ValueError(f"text_kv_grad must be 'every_call' or 'reference', got {text_kv_grad!r}")
    cfg: WanConfig = model.cfg
    fpb = sc.frames_per_block
    schedule = FlowMatchSchedule.from_config(sc)
    ts = schedule.sampling_timesteps(sc.denoising_steps, sc.warp_denoising_step)
    if not 0 <= exit_step < len(ts):
        raise ValueError(f"exit_step {exit_step} outside 0..{len(ts) - 1}")
    dtype = dtype or context.dtype
    b = context.shape[0]
    cache = RolloutCache(cfg, sc, batch=b, frames=num_frames, frame_seqlen=frame_seqlen(cfg, latent_hw),
                         device=context.device, dtype=dtype)
    chunks = num_frames // fpb
    with_grad = set(range(chunks) if grad_chunks is None else grad_chunks) if grad else set()
    reuse_text_kv = text_kv_grad == "reference" and exit_step > 0   # chunk 0 step 0 filled them under no_grad
    out = []
    for c in range(chunks):
        start = c * fpb
        x = noise(c, 0).to(dtype)                                          # [B, f, C, h, w]
        for i in range(exit_step + 1):
            if i == exit_step and c in with_grad:
                x0 = denoise(model, x, ts[i], context, cache.frozen(reuse_text_kv), start, schedule)
                break
            with torch.no_grad():
                x0 = denoise(model, x, ts[i], context, cache, start, schedule)
                if i < exit_step:
                    x = schedule.add_noise(x0, noise(c, i + 1).to(dtype), ts[i + 1])
        out.append(x0)
        if c + 1 < chunks:                                                 # the last chunk's K/V are never read
            with torch.no_grad():
                xc = x0.detach()
                if context_pass_noise:
                    xc = schedule.add_noise(xc, noise(c, len(ts)).to(dtype), sc.context_noise)
                denoise(model, xc, sc.context_noise, context, cache, start, schedule)
    return torch.cat(out, dim=1)


# ---- teacher ODE (ODE initialisation) -------------------------------------------------------------------------
def cfg_flow(teacher, x: Tensor, t: Tensor, cond: Tensor, uncond: Tensor, guidance: float) -> Tensor:
    """Teacher flow with CFG as cond + g * (cond - uncond); x [B, C, F, h, w], t [B, F]. One batched call."""
    b = x.shape[0]
    if guidance == 0:
        return teacher(x, t, cond)
    both = teacher(torch.cat([x, x]), torch.cat([t, t]), torch.cat([cond, uncond]))
    c, u = both[:b], both[b:]
    return c + guidance * (c - u)


@torch.no_grad()
def teacher_ode_trajectory(teacher, noise: Tensor, cond: Tensor, uncond: Tensor, targets: Sequence[float], *,
                           steps: int, guidance: float, shift: float = 5.0) -> tuple[list[Tensor], Tensor]:
    """Euler on the probability-flow ODE dx/dsigma = v from sigma 1 to 0 (noise [B, F, C, h, w]).

    The sigma path is a shifted `steps`-point grid with the target timesteps' sigmas (t / 1000) inserted; returns
    (x at each target timestep, in order, [B, F, C, h, w] each) and the final x0.
    """
    u = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    grid = shift * u / (1 + (shift - 1) * u)
    tgt = torch.tensor([t / 1000.0 for t in targets], dtype=torch.float64)
    sig = torch.unique(torch.cat([grid, tgt])).flip(0)                          # descending, 1 ... 0
    x = noise.float()
    b, f = x.shape[:2]
    states: dict[int, Tensor] = {}
    for j in range(len(sig) - 1):
        s, s_next = float(sig[j]), float(sig[j + 1])
        for k, ts in enumerate(tgt.tolist()):
            if abs(ts - s) < 1e-12:
                states[k] = x.clone()
        t = torch.full((b, f), s * 1000.0, device=x.device, dtype=torch.float32)
        v = cfg_flow(teacher, rearrange(x, "b f c h w -> b c f h w").to(noise.dtype), t, cond, uncond, guidance)
        x = x + (s_next - s) * rearrange(v, "b c f h w -> b f c h w").float()
    return [states[k].to(noise.dtype) for k in range(len(targets))], x.to(noise.dtype)
