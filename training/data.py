"""Prompts (the only data of data-free distillation) and their embeddings.

Sample placement is a pure function of the global sample position, so any process layout sees the same
prompts: optimizer step k consumes positions [p, p + global_batch) per role (generator, then critic), and rank
r at accumulation micro-step m takes `micro_batch` consecutive positions starting at
p + (m * world + r) * micro_batch (DistributedSampler-like contiguous shards, deterministic, reshuffled per epoch).
"""
from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from .config import TextConfig

log = logging.getLogger(__name__)

BUILTIN_PROMPTS: tuple[str, ...] = (
    "a red circle moving right on a black background", "a blue square bouncing up and down",
    "a green triangle rotating slowly in the centre", "two yellow circles drifting apart",
    "a white square shrinking on a grey background", "a purple circle growing from a dot",
    "an orange triangle sliding left", "a cyan square moving diagonally",
    "a pink circle orbiting a blue square", "three small red squares falling",
    "a large green circle fading in", "a yellow triangle spinning fast",
    "a blue circle and a red square swapping places", "a white triangle moving in a zigzag",
    "a black square on a white background moving down", "a magenta circle pulsing in place",
)
"""Shapes-world prompts of the tiny recipes (no prompt file needed)."""


def read_prompts(path: str | Path) -> list[str]:
    """One prompt per line (UTF-8, no empty lines; a final newline is fine). Errors name the line."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"prompt file {path} does not exist (data.prompt_file)")
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    prompts = []
    for i, line in enumerate(lines, 1):
        line = line.removesuffix(b"\r")
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}: line {i} is not valid UTF-8 (byte {e.start} of the line: "
                             f"{line[e.start:e.start + 4]!r}); re-encode the file as UTF-8") from None
        if not text.strip():
            raise ValueError(f"{path}: line {i} is empty; remove empty lines (one prompt per line)")
        prompts.append(text.strip())
    if not prompts:
        raise ValueError(f"prompt file {path} holds no prompts")
    return prompts


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from any tuple of ints/strings, stable across processes and runs."""
    h = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


class PromptSampler:
    """Maps a global sample position to a prompt: epoch = pos // N, permuted per epoch."""

    def __init__(self, prompts: list[str], seed: int = 0, shuffle: bool = True):
        self.prompts, self.seed, self.shuffle = list(prompts), seed, shuffle
        self._perm: Optional[tuple[int, Tensor]] = None

    def __len__(self) -> int:
        return len(self.prompts)

    def index(self, pos: int) -> int:
        n = len(self.prompts)
        epoch, i = divmod(pos, n)
        if not self.shuffle:
            return i
        if self._perm is None or self._perm[0] != epoch:
            g = torch.Generator().manual_seed(derive_seed(self.seed, "prompts", epoch))
            self._perm = (epoch, torch.randperm(n, generator=g))
        return int(self._perm[1][i])

    def take(self, start: int, count: int) -> list[str]:
        return [self.prompts[self.index(p)] for p in range(start, start + count)]


def shard_positions(block_start: int, micro: int, rank: int, world: int, micro_batch: int) -> list[int]:
    """Global positions of rank `rank` at accumulation micro-step `micro` of a block starting at block_start."""
    first = block_start + (micro * world + rank) * micro_batch
    return list(range(first, first + micro_batch))


class TextEmbedder:
    """Prompts -> context [B, L, text_dim] on `device` in `dtype`: umT5 (replicated, LRU-cached) or hashed."""

    def __init__(self, cfg: TextConfig, text_dim: int, device: torch.device, dtype: torch.dtype):
        self.cfg, self.text_dim, self.device, self.dtype = cfg, text_dim, device, dtype
        self.encoder = None
        if cfg.encoder != "hash":
            from stream_r1.text_encoder import load_text_encoder
            self.encoder = load_text_encoder(cfg.encoder, tokenizer=cfg.tokenizer or None, device=device,
                                             dtype=dtype, cache_size=cfg.cache_size)
            self.encoder.model.requires_grad_(False).eval()
            if self.encoder.dim != text_dim:
                raise ValueError(f"text encoder {cfg.encoder} gives width {self.encoder.dim} but the DiTs take "
                                 f"text_dim {text_dim}")
        self._cache: OrderedDict[str, Tensor] = OrderedDict()
        self._negative = self._encode([cfg.negative_prompt])

    def _hashed(self, prompt: str) -> Tensor:
        if prompt not in self._cache:
            from stream_r1.loaders import prompt_embedding
            self._cache[prompt] = prompt_embedding(prompt, self.text_dim, self.cfg.hash_tokens)[0]
            while len(self._cache) > self.cfg.cache_size:
                self._cache.popitem(last=False)
        return self._cache[prompt]

    @torch.no_grad()
    def _encode(self, prompts: list[str]) -> Tensor:
        if self.encoder is not None:
            out = self.encoder.encode(list(prompts))
        else:
            out = torch.stack([self._hashed(p) for p in prompts])
        return out.to(self.device, self.dtype)

    def __call__(self, prompts: list[str]) -> Tensor:
        return self._encode(prompts)

    def negative(self, batch: int) -> Tensor:
        """The negative prompt's context, [batch, L, text_dim]."""
        return self._negative.expand(batch, -1, -1)
