"""Memory a streaming run needs, estimated from the configs before anything is loaded, against the device's memory.

The estimate is a rough upper bound: DiT weights + KV cache (self- and cross-attention) + one chunk's DiT activations +
the streaming VAE decoder (its causal cache and the working set of one latent frame). It is meant to refuse what cannot
run (8192x8192, a million-frame window, a full cache for a day of video) in one line before a model is loaded, not to
predict the peak to the megabyte.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from .config import StreamConfig, WanConfig

VAE_CACHE_PER_PIXEL = 25
"""Wan VAE decoder: its causal cache holds ~24.6 x `dim` values per output pixel (944 M at 832x480, dim 96)."""
VAE_WORK_PER_PIXEL = 32
"""Wan VAE decoder: transient values per output pixel (x `dim`) while decoding one latent frame into 4 video frames
(measured on the CPU in float32: 32.3)."""
TAEHV_PER_PIXEL = 64 * 4 * 4
"""TAEHV preview decoder: 64 channels x 4 frames x ~4 live tensors at the output size."""


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes of each part of a run (see the module docstring)."""

    weights: int
    kv_cache: int
    activations: int
    decode: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.activations + self.decode

    @property
    def largest(self) -> str:
        """Name of the biggest part: 'weights', 'kv_cache', 'activations' or 'decode'."""
        parts = {"weights": self.weights, "kv_cache": self.kv_cache, "activations": self.activations,
                 "decode": self.decode}
        return max(parts, key=parts.get)

    def describe(self) -> str:
        parts = (("weights", self.weights), ("KV cache", self.kv_cache), ("one chunk's activations", self.activations),
                 ("VAE decode", self.decode))
        return " + ".join(f"{name} {format_bytes(b)}" for name, b in parts if b)


def format_bytes(n: int) -> str:
    return f"{n / 2 ** 30:,.1f} GiB" if n >= 2 ** 30 else f"{n / 2 ** 20:,.0f} MiB"


def estimate_stream_memory(model: WanConfig, cfg: StreamConfig, height: int, width: int, *, dtype: torch.dtype,
                           fp8: bool = False, vae_dim: Optional[int] = None, taehv: bool = False,
                           batch: int = 1) -> MemoryEstimate:
    """Estimate a run of `model` with `cfg` at height x width pixels.

    vae_dim: width of the Wan VAE that decodes (96 for the released one); None with taehv=False: no decoding.
    The formula for the KV cache and the activations is nodes/state.py::stream_memory's.
    """
    size = torch.empty((), dtype=dtype).element_size()
    tokens = model.tokens_per_frame(height, width)                                   # 832x480 -> 1560
    weights = model.num_parameters() * (1 if fp8 else size)
    kv = 2 * model.num_layers * batch * (cfg.cache_frames * tokens + model.text_len) * model.dim * size
    activations = 2 * batch * cfg.frames_per_block * tokens * (model.ffn_dim + 6 * model.dim) * size
    pixels = batch * height * width
    if taehv:
        decode = TAEHV_PER_PIXEL * pixels * size
    elif vae_dim:
        decode = (VAE_CACHE_PER_PIXEL + VAE_WORK_PER_PIXEL) * vae_dim * pixels * size
    else:
        decode = 0
    return MemoryEstimate(weights, kv, activations, decode)


def device_memory(device: torch.device) -> Optional[tuple[int, str]]:
    """(bytes a run may use, a phrase naming them) for `device`: free GPU memory on CUDA, physical RAM (or the
    cgroup's limit when lower) on the CPU; None for other devices."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return free, f"{device} has {format_bytes(free)} free (of {format_bytes(total)})"
    if device.type != "cpu":
        return None
    ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    limit = _cgroup_limit()
    if limit is not None and limit < ram:
        return limit, f"this process may use {format_bytes(limit)} of memory (cgroup limit)"
    return ram, f"the machine has {format_bytes(ram)} of RAM"


def _cgroup_limit() -> Optional[int]:
    for p in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(p).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            return int(text)
    return None
