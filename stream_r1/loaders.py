"""Build ready-to-run modules from files: the causal student, plus seeded random stand-ins.

Used by the CLI, the nodes and the benchmarks; paths arrive resolved, devices and dtypes as arguments.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import torch

from .config import StreamConfig, WanConfig
from .wan.model import WanModel

log = logging.getLogger(__name__)


@dataclass
class StudentInfo:
    config: WanConfig
    stream_config: StreamConfig
    """Cache policy and knobs of the checkpoint's family (what it was trained with)."""
    format: str
    family: str
    source: str


def load_student(path: str, *, device: "torch.device | str" = "cpu", dtype: torch.dtype = torch.float32,
                 attention: str = "auto", entry: Optional[str] = None, num_heads: Optional[int] = None,
                 lora: Optional[str] = None) -> tuple[WanModel, StudentInfo]:
    """Load any supported DiT file strictly into a `WanModel` (eval mode, on `device` in `dtype`)."""
    from .checkpoint import load_dit_checkpoint

    ck = load_dit_checkpoint(path, entry=entry, num_heads=num_heads, lora=lora)
    with torch.device("meta"):
        model = WanModel(ck.config, attention=attention)
    model.load_state_dict(ck.state_dict, strict=True, assign=True)
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    policy = getattr(ck, "cache_policy", None) or "window_sink"
    info = StudentInfo(ck.config, getattr(ck, "stream_config", None) or StreamConfig.for_policy(policy),
                       ck.format, ck.family, str(path))
    log.info("loaded %s (%s, %s): %s", path, ck.format, ck.family, ck.config)
    return model, info


def random_student(cfg: WanConfig, *, seed: int = 0, device: "torch.device | str" = "cpu",
                   dtype: torch.dtype = torch.float32, attention: str = "auto") -> WanModel:
    """A seeded random model at any size (speed does not depend on weight values)."""
    model = WanModel(cfg, attention=attention).init_weights(seed=seed)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def prompt_embedding(prompt: str, text_dim: int, tokens: int = 16) -> torch.Tensor:
    """Deterministic stand-in context [1, tokens, text_dim] for models without a text encoder (demo only)."""
    import hashlib

    seed = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:8], "little")
    return torch.randn(1, tokens, text_dim, generator=torch.Generator().manual_seed(seed))
