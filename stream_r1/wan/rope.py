"""3-D rotary position embedding of Wan2.1 (interleaved pairs, per-axis frequency tables).

The head dim d is split into (t, h, w) groups of real widths d - 4*(d//6), 2*(d//6), 2*(d//6)
(128 -> 44/42/42). Each axis has its own table omega_j = 10000^(-2j / d_axis); channels 2j and 2j+1
form one complex number (not the rotate-half convention).
"""
from __future__ import annotations

import functools

import torch
from torch import Tensor

THETA = 10000.0


@functools.lru_cache(maxsize=16)
def _axis_angles(width: int, positions: int) -> Tensor:
    """[positions, width/2] float64 angles p * theta^(-2j/width)."""
    j = torch.arange(0, width, 2, dtype=torch.float64) / width
    omega = 1.0 / THETA ** j
    return torch.outer(torch.arange(positions, dtype=torch.float64), omega)


def rope_angles(split: tuple[int, int, int], frames: range, height: int, width: int,
                positions: int = 1024) -> Tensor:
    """Angles for the tokens of `len(frames)` x height x width patches, in (f, h, w) row-major order.

    Returns float64 [F*H*W, d/2] (d/2 = sum(split)/2 complex pairs).
    """
    if frames.stop > positions:
        raise ValueError(
            f"temporal RoPE position {frames.stop - 1} exceeds the model's table of {positions} latent frames "
            "(absolute positions): use the window_sink cache policy (relative positions) for unbounded streams")
    at, ah, aw = (_axis_angles(w, positions) for w in split)
    f, h, w = len(frames), height, width
    t_part = at[frames.start:frames.stop]                                  # [F, dt/2]
    return torch.cat([
        t_part[:, None, None, :].expand(f, h, w, -1),
        ah[:h][None, :, None, :].expand(f, h, w, -1),
        aw[:w][None, None, :, :].expand(f, h, w, -1),
    ], dim=-1).reshape(f * h * w, -1)                                      # [F*H*W, d/2]


class RopeTable:
    """cos/sin of rope_angles, cached per (start frame, frames, grid) on one device."""

    def __init__(self, split: tuple[int, int, int], positions: int = 1024, max_entries: int = 64):
        self.split, self.positions, self.max_entries = split, positions, max_entries
        self._cache: dict[tuple, tuple[Tensor, Tensor]] = {}

    def get(self, start: int, frames: int, height: int, width: int,
            device: torch.device) -> tuple[Tensor, Tensor]:
        """(cos, sin), each float32 [frames*height*width, 1, d/2]."""
        key = (start, frames, height, width, str(device))
        hit = self._cache.get(key)
        if hit is None:
            ang = rope_angles(self.split, range(start, start + frames), height, width, self.positions)
            hit = (ang.cos().float()[:, None].to(device), ang.sin().float()[:, None].to(device))
            if len(self._cache) >= self.max_entries:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = hit
        return hit


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate interleaved channel pairs. x: [B, L, n, d]; cos/sin: [L, 1, d/2]. Math in fp32."""
    xf = x.float().unflatten(-1, (-1, 2))                                  # [B, L, n, d/2, 2]
    re, im = xf[..., 0], xf[..., 1]
    out = torch.stack([re * cos - im * sin, re * sin + im * cos], dim=-1)  # [B, L, n, d/2, 2]
    return out.flatten(-2).to(x.dtype)


def rotate_frames(k: Tensor, delta: int, split: tuple[int, int, int]) -> Tensor:
    """k [..., N, n, d] rotated by `delta` frames on the temporal RoPE channels only (the spatial channels keep
    their angle): R(p) then R(delta) = R(p + delta), so a key cached at frame p moves to frame p + delta.
    Math in fp32, result in k's dtype."""
    return _rotate(k, *_temporal_rotation(delta, tuple(split), str(k.device)))


@functools.lru_cache(maxsize=64)
def _temporal_rotation(delta: int, split: tuple[int, int, int], device: str) -> tuple[Tensor, Tensor]:
    """cos, sin [1, 1, d/2] of a rotation by `delta` frames on the temporal channels, kept on `device`: the rolls
    of a stream reuse a few deltas, and a fresh copy from pageable host memory would wait for the GPU each time."""
    ang_t = delta * _axis_angles(split[0], 2)[1]                                         # [dt/2]: delta * omega
    ang = torch.cat([ang_t, ang_t.new_zeros((sum(split) - split[0]) // 2)])              # spatial pairs: angle 0
    return ang.cos().float()[None, None].to(device), ang.sin().float()[None, None].to(device)


def _rotate(k: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """`apply_rope` over any leading dims: k [..., N, n, d], cos/sin [N or 1, 1, d/2]."""
    flat = k.reshape(-1, *k.shape[-3:])                                                  # [prod(lead), N, n, d]
    return apply_rope(flat, cos, sin).reshape(k.shape)
