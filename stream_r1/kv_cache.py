"""Preallocated self-attention KV cache with the released checkpoints' cache policies, and the text cache.

One `KVCache` per stream holds, for every transformer layer, a K and a V buffer of `cache_frames`
latent frames plus the cross-attention K/V of the current prompt. All index bookkeeping is done on the
host with Python ints (no `.item()` syncs); the buffers never grow.

Policies (see `StreamConfig.cache_policy`), each reproducing the public code its checkpoints came from:

* ``full`` (Self-Forcing): keys stored rotated at absolute frame positions; no eviction; the stream
  may not exceed the buffer.
* ``longlive`` (LongLive base): keys rotated at absolute positions; when a new chunk does not fit, the
  oldest non-sink frames are dropped and the rest slides left, the first `sink_frames` stay fixed.
* ``window_sink`` (Reward Forcing / Stream-R1): keys stored un-rotated and re-rotated every call with
  window-relative positions 0..n-1 (so positions never exceed the window and streams are unbounded);
  on eviction the sink is blended with an EMA, ``sink <- a*sink + (1-a)*e``, where ``e`` is the block
  that leaves the window (the oldest non-sink frames), as in Reward Forcing since its "[fix] ema sink"
  commit (4317f5a, 2025-12-15). `sink_ema_source="newest"` reproduces the code before that fix, which
  blended the slice ``[sink + n_rolled, sink + n_rolled + n_evicted)`` of the buffer before it slides
  (in steady state the most recent finished chunk, which also stays in the window).

In every policy the current chunk attends to ``buffer[0 : local_end]`` (sink + window incl. itself).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from .config import StreamConfig


@dataclass(frozen=True)
class WritePlan:
    """Index algebra of one model call over `num_new` tokens starting at absolute token `start`."""

    start: int
    """Absolute token index (over the whole stream) of the call's first token."""
    num_new: int
    evict: int
    """Tokens dropped from the buffer by this call (0 unless a new chunk does not fit)."""
    rolled: int
    """Tokens that slide from [sink + evict, ...) down to [sink, ...)."""
    local_end: int
    """Buffer index just past the call's tokens after the write."""
    global_end: int

    @property
    def write_slice(self) -> slice:
        return slice(self.local_end - self.num_new, self.local_end)


class KVCache:
    """K/V buffers [num_layers, B, S, n, d] + cross-attention K/V [num_layers, B, text_len, n, d]."""

    def __init__(self, *, num_layers: int, batch: int, num_heads: int, head_dim: int, frame_seqlen: int,
                 cfg: StreamConfig, text_len: int = 512, device: "torch.device | str" = "cpu",
                 dtype: torch.dtype = torch.float32):
        self.cfg = cfg
        self.frame_seqlen = frame_seqlen                        # 480x832 -> 1560 tokens per latent frame
        self.capacity = cfg.cache_frames * frame_seqlen         # window 9 -> 14,040 tokens
        self.sink_tokens = (cfg.sink_frames if cfg.cache_policy != "full" else 0) * frame_seqlen
        shape = (num_layers, batch, self.capacity, num_heads, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        cshape = (num_layers, batch, text_len, num_heads, head_dim)
        self.cross_k = torch.zeros(cshape, device=device, dtype=dtype)
        self.cross_v = torch.zeros(cshape, device=device, dtype=dtype)
        self.cross_valid = [False] * num_layers
        self.global_end = 0
        self.local_end = 0
        self._plan: Optional[WritePlan] = None

    # ---- construction ---------------------------------------------------------------------------
    @classmethod
    def for_model(cls, model, cfg: StreamConfig, *, batch: int, height: int, width: int,
                  device=None, dtype=None) -> "KVCache":
        """Sizes from the model's config and the pixel grid (never the 1.3B/480p constants)."""
        p = next(model.parameters())
        mc = model.cfg
        return cls(num_layers=mc.num_layers, batch=batch, num_heads=mc.num_heads, head_dim=mc.head_dim,
                   frame_seqlen=mc.tokens_per_frame(height, width), cfg=cfg, text_len=mc.text_len,
                   device=device or p.device, dtype=dtype or p.dtype)

    @property
    def relative_rope(self) -> bool:
        return self.cfg.relative_rope

    @property
    def num_layers(self) -> int:
        return self.k.shape[0]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.k, self.v, self.cross_k, self.cross_v))

    # ---- verbs ----------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget the stream (buffers are kept allocated and zeroed)."""
        self.k.zero_()
        self.v.zero_()
        self.global_end = self.local_end = 0
        self._plan = None
        self.reset_cross()

    def reset_cross(self) -> None:
        """Invalidate the text K/V (a new prompt): recomputed at the next call of each layer."""
        self.cross_valid = [False] * self.num_layers

    def plan(self, start: int, num_new: int) -> WritePlan:
        """Compute the write/evict plan of a call (same for every layer); `commit()` after all layers."""
        cap, sink = self.capacity, self.sink_tokens
        end = start + num_new
        new_tokens = end - self.global_end          # > 0 for a new chunk, 0 for a re-run of the same chunk
        if start % self.frame_seqlen or num_new % self.frame_seqlen:
            raise ValueError("KV cache calls must cover whole latent frames")
        if start > self.global_end:
            raise ValueError(f"call starts at token {start} but the cache ends at {self.global_end}: "
                             "chunks must be generated in order")
        evict = rolled = 0
        if self.cfg.cache_policy != "full" and new_tokens > 0 and self.local_end + num_new > cap:
            evict = num_new + self.local_end - cap
            rolled = self.local_end - evict - sink
        local_end = self.local_end + new_tokens - evict
        if local_end > cap or local_end - num_new < 0:
            raise ValueError(
                f"the stream needs {end // self.frame_seqlen} latent frames but the '{self.cfg.cache_policy}' cache "
                f"holds {cap // self.frame_seqlen}; raise full_cache_frames or use the window_sink policy "
                "for long streams")
        self._plan = WritePlan(start, num_new, evict, rolled, local_end, max(end, self.global_end))
        return self._plan

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write this layer's new K/V [B, N, n, d] per the current plan (after this layer's eviction: the window rolls
        left, the sink is blended); return the attended K/V views [B, local_end, n, d].

        For absolute policies `k` must already be rotated; for window_sink it is un-rotated and the
        caller rotates the returned keys with positions 0..n-1.
        """
        p = self._plan
        assert p is not None, "call plan() before update()"
        kb, vb = self.k[layer], self.v[layer]                   # [B, S, n, d]
        if p.evict:
            sink, ev, ro = self.sink_tokens, p.evict, p.rolled
            blend = self.cfg.cache_policy == "window_sink" and sink > 0
            if blend:
                lo = sink if self.cfg.sink_ema_source == "evicted" else sink + ro     # pre-roll slice
                e_k, e_v = kb[:, lo: lo + ev].clone(), vb[:, lo: lo + ev].clone()
            kb[:, sink: sink + ro] = kb[:, sink + ev: sink + ev + ro].clone()     # slides left by ev tokens
            vb[:, sink: sink + ro] = vb[:, sink + ev: sink + ev + ro].clone()
            if blend:                                           # the sink [0, sink) lies before the write slice
                self._blend_sink(kb, vb, e_k, e_v)
        kb[:, p.write_slice].copy_(k)
        vb[:, p.write_slice].copy_(v)
        return kb[:, :p.local_end], vb[:, :p.local_end]

    def _blend_sink(self, kb: Tensor, vb: Tensor, e_k: Tensor, e_v: Tensor) -> None:
        sink, a = self.sink_tokens, self.cfg.sink_ema_alpha
        if e_k.shape[1] == sink:                                # steady state: EMA
            kb[:, :sink] = a * kb[:, :sink] + (1 - a) * e_k
            vb[:, :sink] = a * vb[:, :sink] + (1 - a) * e_v
        else:                                                   # other lengths: overwrite the first slots
            n = min(e_k.shape[1], sink)
            kb[:, :n] = e_k[:, :n]
            vb[:, :n] = e_v[:, :n]

    def commit(self) -> None:
        p = self._plan
        assert p is not None
        self.local_end, self.global_end = p.local_end, p.global_end
        self._plan = None

    def query_start_frame(self) -> int:
        """Temporal RoPE position of the current call's first frame (valid between plan and commit)."""
        p = self._plan
        assert p is not None
        if self.relative_rope:
            return (p.local_end - p.num_new) // self.frame_seqlen
        return p.start // self.frame_seqlen

    def cross(self, layer: int) -> Optional[tuple[Tensor, Tensor]]:
        return (self.cross_k[layer], self.cross_v[layer]) if self.cross_valid[layer] else None

    def set_cross(self, layer: int, k: Tensor, v: Tensor) -> None:
        self.cross_k[layer].copy_(k)
        self.cross_v[layer].copy_(v)
        self.cross_valid[layer] = True

    @property
    def frames_cached(self) -> int:
        return self.local_end // self.frame_seqlen

    @property
    def frames_seen(self) -> int:
        return self.global_end // self.frame_seqlen

    # ---- persistence (stream state files) -----------------------------------------------------------
    def state_dict(self) -> dict[str, Tensor]:
        """The stream's cache as tensors: the valid part of the K/V buffers [L, B, local_end, n, d], the indices
        [global_end, local_end, frame_seqlen, capacity, sink_tokens], when computed for every layer the text
        K/V. Nothing past local_end is ever read, so nothing else is needed to continue."""
        state = {"k": self.k[:, :, :self.local_end], "v": self.v[:, :, :self.local_end],
                 "index": torch.tensor([self.global_end, self.local_end, self.frame_seqlen, self.capacity,
                                        self.sink_tokens], dtype=torch.int64)}
        if all(self.cross_valid):
            state["cross_k"], state["cross_v"] = self.cross_k, self.cross_v
        return state

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Continue from `state_dict()` of a cache with the same layers, heads, frame size and sink (the capacity
        may be larger)."""
        if "index" not in state or "k" not in state or "v" not in state:
            raise ValueError(f"not a KV cache state: expected k, v, index; got {sorted(state)[:6]}")
        global_end, local_end, frame_seqlen, _, sink_tokens = (int(x) for x in state["index"].tolist())
        if frame_seqlen != self.frame_seqlen or sink_tokens != self.sink_tokens:
            raise ValueError(f"KV cache state has {frame_seqlen} tokens per frame and a {sink_tokens}-token sink; "
                             f"this cache has {self.frame_seqlen} and {self.sink_tokens}")
        want = (*self.k.shape[:2], local_end, *self.k.shape[3:])
        if local_end > self.capacity or tuple(state["k"].shape) != want or tuple(state["v"].shape) != want:
            raise ValueError(f"KV cache state of shape {list(state['k'].shape)} does not fit this cache "
                             f"{list(self.k.shape)}")
        self.k.zero_()
        self.v.zero_()
        self.k[:, :, :local_end] = state["k"].to(self.k.device, self.k.dtype)
        self.v[:, :, :local_end] = state["v"].to(self.v.device, self.v.dtype)
        self.global_end, self.local_end, self._plan = global_end, local_end, None
        self.reset_cross()
        if "cross_k" in state and "cross_v" in state:
            if state["cross_k"].shape != self.cross_k.shape:
                raise ValueError(f"text K/V state {list(state['cross_k'].shape)} does not fit "
                                 f"{list(self.cross_k.shape)}")
            self.cross_k.copy_(state["cross_k"])
            self.cross_v.copy_(state["cross_v"])
            self.cross_valid = [True] * self.num_layers

    def clone(self) -> "KVCache":
        """An independent copy (buffers copied)."""
        new = copy.copy(self)
        new.k, new.v = self.k.clone(), self.v.clone()
        new.cross_k, new.cross_v = self.cross_k.clone(), self.cross_v.clone()
        new.cross_valid = list(self.cross_valid)
        return new

    # ---- test-time search (stream_r1.tts) ------------------------------------------------------------
    def fork(self) -> "KVCache":
        """An independent copy for a search candidate: only the valid region [:local_end] of the K/V buffers is
        copied (the rest is never read before it is written), the text K/V are copied (small). Writing the fork
        never changes this cache and vice versa."""
        new = copy.copy(self)
        n = self.local_end
        new.k, new.v = torch.empty_like(self.k), torch.empty_like(self.v)
        new.k[:, :, :n] = self.k[:, :, :n]
        new.v[:, :, :n] = self.v[:, :, :n]
        new.cross_k, new.cross_v = self.cross_k.clone(), self.cross_v.clone()
        new.cross_valid = list(self.cross_valid)
        new._plan = None
        return new

    def read_tokens(self, lo: int, hi: int) -> tuple[Tensor, Tensor]:
        """K, V of buffer tokens [lo, hi) for every layer: [L, B, hi - lo, n, d] (views)."""
        return self.k[:, :, lo:hi], self.v[:, :, lo:hi]

    def write_tokens(self, lo: int, k: Tensor, v: Tensor) -> None:
        """Write K, V [L, B, n_tok, n, d] at buffer tokens [lo, lo + n_tok)."""
        self.k[:, :, lo:lo + k.shape[2]] = k
        self.v[:, :, lo:lo + v.shape[2]] = v

    @property
    def buffer_tokens(self) -> int:
        """Physical length of the K/V buffers (>= capacity once `reserve` made room for appended sink segments)."""
        return self.k.shape[2]

    def reserve(self, extra_tokens: int) -> None:
        """Make the buffers `extra_tokens` longer than the logical capacity (room for `append_sink`)."""
        want = self.capacity + extra_tokens
        if want <= self.buffer_tokens:
            return
        shape = (*self.k.shape[:2], want, *self.k.shape[3:])
        k, v = self.k.new_zeros(shape), self.v.new_zeros(shape)
        k[:, :, :self.local_end] = self.k[:, :, :self.local_end]
        v[:, :, :self.local_end] = self.v[:, :, :self.local_end]
        self.k, self.v = k, v

    def append_sink(self, tokens: int) -> None:
        """Turn the oldest `tokens` window tokens (buffer [sink, sink + tokens)) into sink: the sink and the logical
        capacity grow by `tokens`, so the window keeps its length and nothing rolls (absolute-position policies
        only: the keys keep their original RoPE positions). Needs `reserve` room."""
        if self.cfg.cache_policy != "longlive":
            raise ValueError("append_sink needs the longlive cache policy (absolute positions)")
        if self.capacity + tokens > self.buffer_tokens or self.sink_tokens + tokens > self.local_end:
            raise ValueError("append_sink: no room (call reserve) or not enough cached tokens")
        self.sink_tokens += tokens
        self.capacity += tokens

