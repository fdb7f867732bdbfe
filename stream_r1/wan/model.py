"""The Wan2.1 DiT, written once for every role.

* causal student at inference: `forward(..., cache=KVCache)` runs one chunk against the KV cache;
* causal student in training: `forward(..., mask=block_causal_mask(...))` runs all frames at once;
* bidirectional teacher / critic: `forward(...)` with neither.

Parameter names are the Wan checkpoints' own (`blocks.0.self_attn.q.weight`, `ffn.0.weight`, ...), so
every released file loads strictly. Timesteps are per frame ([B, F]); the head is modulated by e, the
blocks by e0 + modulation; cross-attention sees all `text_len` context rows (zero-padded), unmasked.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from ..config import WanConfig
from .attention import AttentionFn, resolve_attention
from .rope import RopeTable, apply_rope

if TYPE_CHECKING:                           # the cache imports the rope helpers of this package
    from ..kv_cache import KVCache


def sinusoidal_embedding(dim: int, t: Tensor) -> Tensor:
    """[N] timesteps -> [N, dim] float64 embedding [cos | sin] (cos first, as Wan)."""
    half = dim // 2
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device) / half)
    ang = torch.outer(t.to(torch.float64), freqs)                          # [N, half]
    return torch.cat([ang.cos(), ang.sin()], dim=1)


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32, cast back (Wan's WanLayerNorm)."""

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight.float() if self.weight is not None else None
        b = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).type_as(x)


class RMSNorm(nn.Module):
    """RMSNorm over the full width with fp32 statistics (Wan's WanRMSNorm)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class SelfAttention(nn.Module):
    def __init__(self, cfg: WanConfig):
        super().__init__()
        d = cfg.dim
        self.num_heads, self.head_dim = cfg.num_heads, cfg.head_dim
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.norm_q, self.norm_k = RMSNorm(d, cfg.eps), RMSNorm(d, cfg.eps)

    def heads(self, t: Tensor) -> Tensor:
        return t.unflatten(-1, (self.num_heads, self.head_dim))                 # [B, L, C] -> [B, L, n, d]

    def qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x [B, L, C] -> q, k, v [B, L, n, d] (q, k RMS-normalised over C before the head split)."""
        return self.heads(self.norm_q(self.q(x))), self.heads(self.norm_k(self.k(x))), self.heads(self.v(x))


class CrossAttention(SelfAttention):
    """Same projections and norms as self-attention; k, v come from the text context."""

    def context_kv(self, ctx: Tensor) -> tuple[Tensor, Tensor]:
        """ctx [B, text_len, C] -> k, v [B, text_len, n, d]."""
        return self.heads(self.norm_k(self.k(ctx))), self.heads(self.v(ctx))

    def forward(self, x: Tensor, k: Tensor, v: Tensor, attn: AttentionFn) -> Tensor:
        q = self.heads(self.norm_q(self.q(x)))                                   # [B, L, n, d]
        return self.o(attn(q, k, v).flatten(2))


class Block(nn.Module):
    def __init__(self, cfg: WanConfig):
        super().__init__()
        d = cfg.dim
        self.norm1 = LayerNorm(d, eps=cfg.eps, elementwise_affine=False)
        self.self_attn = SelfAttention(cfg)
        self.norm3 = LayerNorm(d, eps=cfg.eps, elementwise_affine=True)
        self.cross_attn = CrossAttention(cfg)
        self.norm2 = LayerNorm(d, eps=cfg.eps, elementwise_affine=False)
        self.ffn = nn.Sequential(nn.Linear(d, cfg.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.ffn_dim, d))
        self.modulation = nn.Parameter(torch.randn(1, 6, d) / d ** 0.5)

    def forward(self, fn: Callable[..., Tensor], *args: Any) -> Tensor:
        """Run `fn(self, *args)`. `WanModel` calls every block through here so that module hooks and wrappers
        (FSDP2 `fully_shard`, activation-checkpoint wrappers) see each block call."""
        return fn(self, *args)


class Head(nn.Module):
    def __init__(self, cfg: WanConfig):
        super().__init__()
        d = cfg.dim
        self.norm = LayerNorm(d, eps=cfg.eps, elementwise_affine=False)
        self.head = nn.Linear(d, math.prod(cfg.patch_size) * cfg.out_dim)
        self.modulation = nn.Parameter(torch.randn(1, 2, d) / d ** 0.5)


def ffn(mlp: nn.Sequential, h: Tensor) -> Tensor:
    """The block FFN, Linear -> GELU(tanh) -> Linear: [B, L, C] -> [B, L, C].

    Without autograd on CUDA (and plain nn.Linear layers: not fp8 or LoRA-wrapped) the bias and GELU are applied in
    the up-projection's cuBLASLt epilogue, which saves one write and one read of the [L, ffn_dim] hidden state: the
    separate GELU kernel was 3.4 % of the compiled DiT's GPU time at 832x480 (H200, bench/RESULTS.md, 2026-11-22,
    "the FFN's GELU in the GEMM epilogue").
    """
    up, _, down = mlp
    if h.is_cuda and type(up) is nn.Linear and not torch.is_grad_enabled():
        hidden = torch._addmm_activation(up.bias, h.flatten(0, 1), up.weight.t(), use_gelu=True)  # [B*L, ffn_dim]
        return down(hidden.unflatten(0, h.shape[:2]))                                            # [B, L, C]
    return mlp(h)


class WanModel(nn.Module):
    """Wan2.1 text-to-video DiT. Output: flow prediction v = noise - x0, same shape as the input latents."""

    def __init__(self, cfg: WanConfig, attention: "str | AttentionFn" = "auto"):
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        self.patch_embedding = nn.Conv3d(cfg.in_dim, d, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(cfg.text_dim, d), nn.GELU(approximate="tanh"), nn.Linear(d, d))
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, d), nn.SiLU(), nn.Linear(d, d))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.head = Head(cfg)
        self.rope = RopeTable(cfg.rope_split(), cfg.rope_positions)
        self.attn_fn = resolve_attention(attention)

    def set_attention(self, attention: "str | AttentionFn") -> None:
        self.attn_fn = resolve_attention(attention)

    @torch.no_grad()
    def init_weights(self, seed: Optional[int] = None) -> "WanModel":
        """Seeded random init in Wan's style (xavier linears, small embeddings); the head is NOT zeroed,
        so random models give non-trivial outputs for tests and speed runs."""
        dev = self.patch_embedding.weight.device
        g = torch.Generator(device=dev)
        g.manual_seed(seed if seed is not None else torch.seed())
        rand = lambda shape: torch.rand(shape, generator=g, device=dev)     # noqa: E731
        randn = lambda shape: torch.randn(shape, generator=g, device=dev)   # noqa: E731
        for m in self.modules():
            if isinstance(m, nn.Linear):
                bound = math.sqrt(6.0 / (m.in_features + m.out_features))
                m.weight.copy_(rand(m.weight.shape) * 2 * bound - bound)
                m.bias.copy_(randn(m.bias.shape) * 0.02)
        for name, p in self.named_parameters():
            if name.endswith("modulation"):
                p.copy_(randn(p.shape) / self.cfg.dim ** 0.5)
            elif name.endswith(("norm_q.weight", "norm_k.weight", "norm3.weight")):
                p.copy_(1 + 0.1 * randn(p.shape))
            elif name.endswith("norm3.bias"):
                p.copy_(0.02 * randn(p.shape))
        w = self.patch_embedding.weight
        fan = w[0].numel() + w.shape[0]
        w.copy_(randn(w.shape) * math.sqrt(2.0 / fan))
        self.patch_embedding.bias.copy_(randn(self.patch_embedding.bias.shape) * 0.02)
        return self

    # ---- pieces -----------------------------------------------------------------------------------
    def embed_text(self, context: Tensor) -> Tensor:
        """[B, L <= text_len, text_dim] umT5 output -> [B, text_len, dim]; rows >= L are zero before the MLP."""
        b, n, c = context.shape
        if n > self.cfg.text_len:
            raise ValueError(f"context has {n} tokens; the model takes at most {self.cfg.text_len}")
        if c != self.cfg.text_dim:
            raise ValueError(f"context width {c} does not match the model's text_dim {self.cfg.text_dim}")
        if n < self.cfg.text_len:
            context = torch.cat([context, context.new_zeros(b, self.cfg.text_len - n, c)], dim=1)
        return self.text_embedding(context.to(self.text_embedding[0].weight.dtype))

    def embed_time(self, t: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """t [B, F] -> e [B, F, C] (head) and e0 [B, F, 6, C] (blocks)."""
        b, f = t.shape
        e = self.time_embedding(sinusoidal_embedding(self.cfg.freq_dim, t.flatten()).to(dtype))   # [B*F, C]
        e0 = self.time_projection(e).unflatten(1, (6, self.cfg.dim))                               # [B*F, 6, C]
        return e.unflatten(0, (b, f)), e0.unflatten(0, (b, f))

    def patchify(self, x: Tensor) -> tuple[Tensor, tuple[int, int, int]]:
        """[B, C, F, H, W] -> tokens [B, F*h*w, dim] in (f, h, w) row-major order, grid (F, h, w)."""
        x = self.patch_embedding(x.to(self.patch_embedding.weight.dtype))     # [B, dim, F, h, w]
        grid = tuple(x.shape[2:])
        return rearrange(x, "b c f h w -> b (f h w) c"), grid

    def unpatchify(self, x: Tensor, grid: tuple[int, int, int]) -> Tensor:
        """[B, F*h*w, pt*ph*pw*C] (C fastest) -> [B, C, F*pt, h*ph, w*pw]."""
        pt, ph, pw = self.cfg.patch_size
        f, h, w = grid
        return rearrange(x, "b (f h w) (pt ph pw c) -> b c (f pt) (h ph) (w pw)",
                         f=f, h=h, w=w, pt=pt, ph=ph, pw=pw)

    # ---- forward ----------------------------------------------------------------------------------
    def forward(self, x: Tensor, t: Tensor, context: Tensor, *, cache: Optional[KVCache] = None,
                start_frame: int = 0, mask: Optional[Tensor] = None, text: Optional[Tensor] = None) -> Tensor:
        """Predict the flow.

        x: latents [B, 16, F, H/8, W/8] (normalised); t: [B, F] or [B] timesteps in [0, 1000];
        context: [B, L, text_dim] umT5 output (ignored where the cache already holds this prompt's text K/V;
        `text` may pass a precomputed `embed_text(context)`). With `cache`, the call covers frames
        [start_frame, start_frame + F) of the stream. `mask`: bool [L, L] for training without cache.
        """
        b, _, f, _, _ = x.shape
        if t.dim() == 1:
            t = t[:, None].expand(b, f)
        tokens, grid = self.patchify(x)                                      # [B, L, C], (F, h, w)
        dtype = tokens.dtype
        e, e0 = self.embed_time(t, dtype)
        fs = grid[1] * grid[2]                                               # tokens per latent frame

        need_text = cache is None or not all(cache.cross_valid)
        if need_text and text is None:
            text = self.embed_text(context)                                  # [B, text_len, C]

        if cache is not None:
            cache.plan(start_frame * fs, f * fs)
            q_start = cache.query_start_frame()
        else:
            q_start = start_frame
        cos_q, sin_q = self.rope.get(q_start, f, grid[1], grid[2], tokens.device)

        for i, blk in enumerate(self.blocks):
            tokens = blk(self._run_block, i, tokens, e0, text, cache, grid, cos_q, sin_q, mask)
        if cache is not None:
            cache.commit()

        # head: (shift, scale) = head.modulation + e, per frame
        shift, scale = (self.head.modulation[:, None] + e[:, :, None]).unbind(2)     # [B, F, C] each
        y = self.head.norm(tokens).unflatten(1, (f, fs))                              # [B, F, fs, C]
        y = self.head.head((y * (1 + scale[:, :, None]) + shift[:, :, None]).flatten(1, 2))
        return self.unpatchify(y, grid)

    def _run_block(self, blk: Block, i: int, *args: Any) -> Tensor:
        return self._block(i, blk, *args)

    def _block(self, i: int, blk: Block, x: Tensor, e0: Tensor, text: Optional[Tensor],
               cache: Optional[KVCache], grid: tuple[int, int, int], cos_q: Tensor, sin_q: Tensor,
               mask: Optional[Tensor]) -> Tensor:
        # 1. self-attention; window-relative keys are cached un-rotated and rotated here over the whole window
        rerotate = cache is not None and cache.relative_rope
        if cache is None:
            q, k, v = self._pre(blk, x, e0, cos_q, sin_q, True)
            att = self.attn_fn(q, k, v, mask) if mask is not None else self.attn_fn(q, k, v)
        else:
            q, k, v = self._pre(blk, x, e0, cos_q, sin_q, not rerotate)
            k_all, v_all = cache.update(i, k, v)                              # [B, S, n, d]
            if rerotate:                                                      # window-relative positions 0..n-1
                k_all = self._rotate_window(k_all, cache, grid, x.device)
            att = self.attn_fn(q, k_all, v_all)
        kv = cache.cross(i) if cache is not None else None                    # 2. text K/V (cached per prompt)
        if kv is None:
            kv = blk.cross_attn.context_kv(text)
            if cache is not None:
                cache.set_cross(i, *kv)
        return self._post(blk, x, att, e0, kv[0], kv[1], self.attn_fn)        # 2.-3. cross-attention, FFN

    def _rotate_window(self, k_all: Tensor, cache: KVCache, grid: tuple[int, int, int],
                       device: torch.device) -> Tensor:
        """Rotate the window's keys k_all [B, n, heads, d] to positions 0..n-1. Compiled, the rotation always sees
        the window's full capacity (zero keys appended while the window fills, then cut off), so its one static
        graph serves every chunk: n grows 3 -> 6 -> 9 frames over a stream's first chunks, and a graph per length
        cost a fresh process about 0.8 s in chunks 2-3; a symbolic length ran 1.7 % slower (bench/RESULTS.md)."""
        fs = grid[1] * grid[2]
        n = k_all.shape[1]
        full = max(n, getattr(cache, "capacity", n)) if self._rope_full_window else n
        full = n if full % fs else full                                      # (whole frames only)
        if full > n:
            k_all = F.pad(k_all, (0, 0, 0, 0, 0, full - n))                 # [B, capacity, heads, d]
        cos_k, sin_k = self.rope.get(0, full // fs, grid[1], grid[2], device)
        return self._rope(k_all, cos_k, sin_k)[:, :n]

    # ---- the pure stages of a block (what `compile_blocks` compiles) ------------------------------
    _rope = staticmethod(apply_rope)
    _rope_full_window = False                                                # set by compile_blocks

    @staticmethod
    def _pre(blk: Block, x: Tensor, e0: Tensor, cos: Tensor, sin: Tensor,
             rotate_k: bool) -> tuple[Tensor, Tensor, Tensor]:
        """adaLN + q/k/v + RoPE. x [B, L, C], e0 [B, F, 6, C] -> q, k, v [B, L, n, d]."""
        b, l, c = x.shape
        f = e0.shape[1]
        sh1, sc1 = (m[:, :, None] for m in (blk.modulation[:, None] + e0).unbind(2)[:2])   # [B, F, 1, C]
        h = (blk.norm1(x).unflatten(1, (f, l // f)) * (1 + sc1) + sh1).flatten(1, 2)     # [B, L, C]
        q, k, v = blk.self_attn.qkv(h)
        q = apply_rope(q, cos, sin)
        return q, (apply_rope(k, cos, sin) if rotate_k else k), v

    @staticmethod
    def _post(blk: Block, x: Tensor, att: Tensor, e0: Tensor, ck: Tensor, cv: Tensor,
              attn: AttentionFn) -> Tensor:
        """Gated self-attention output, cross-attention (no modulation), gated FFN. Returns new x [B, L, C]."""
        b, l, c = x.shape
        f = e0.shape[1]
        per_frame = lambda t: t.unflatten(1, (f, l // f))                        # noqa: E731 [B, L, C] -> [B, F, fs, C]
        mod = blk.modulation[:, None] + e0                                       # [B, F, 6, C]
        g1, sh2, sc2, g2 = (m[:, :, None] for m in mod.unbind(2)[2:])            # each [B, F, 1, C]
        x = x + (per_frame(blk.self_attn.o(att.flatten(2))) * g1).flatten(1, 2)
        x = x + blk.cross_attn(blk.norm3(x), ck, cv, attn)
        h = (per_frame(blk.norm2(x)) * (1 + sc2) + sh2).flatten(1, 2)
        return x + (per_frame(ffn(blk.ffn, h)) * g2).flatten(1, 2)

    def compile_blocks(self) -> "WanModel":
        """torch.compile the pure per-block stages (norms, modulation, projections, RoPE, FFN, cross-attention):
        one graph shared by all blocks; the KV-cache bookkeeping and self-attention stay eager.

        The window's key rotation always sees the window's capacity (`_rotate_window`), so it compiles once and a
        stream does not stop to compile again in its second and third chunks."""
        self._pre, self._post, self._rope = (torch.compile(f, dynamic=False)
                                             for f in (WanModel._pre, WanModel._post, apply_rope))
        self._rope_full_window = True
        return self
