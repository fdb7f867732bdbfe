"""Attention backends and the block-causal training mask.

All backends take q, k, v as [B, L, n, d] and return [B, Lq, n, d]. PyTorch SDPA is always there; 'auto' runs
cuDNN's fused attention for inference on Hopper and newer, and flash-attn elsewhere when installed (CUDA,
fp16/bf16, no mask); any callable with the same signature can be injected (the ComfyUI adapter passes ComfyUI's
own attention this way).
"""
from __future__ import annotations

import importlib.util
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

AttentionFn = Callable[..., Tensor]
"""fn(q, k, v, mask=None) -> out, all [B, L, n, d]; mask: bool [Lq, Lk] (True = attend) or None."""


def sdpa_attention(q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor] = None) -> Tensor:
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         attn_mask=mask)                  # [B, n, Lq, d]
    return out.transpose(1, 2)


def _sdpa_with(backends) -> AttentionFn:
    """SDPA restricted to the given backends in priority order (e.g. cuDNN first on Hopper)."""
    from torch.nn.attention import sdpa_kernel

    def attn(q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        if q.device.type != "cuda":
            return sdpa_attention(q, k, v, mask)
        with sdpa_kernel(backends, set_priority=True):
            return sdpa_attention(q, k, v, mask)

    return attn


def _cudnn_first() -> AttentionFn:
    from torch.nn.attention import SDPBackend
    return _sdpa_with([SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION,
                       SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


_CUDNN = _cudnn_first()


def _flash_attention() -> Optional[AttentionFn]:
    if importlib.util.find_spec("flash_attn") is None:
        return None
    try:
        from flash_attn import flash_attn_func  # type: ignore
    except Exception:  # a broken install must never stop loading
        return None

    def flash(q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        if mask is not None or q.device.type != "cuda" or q.dtype not in (torch.float16, torch.bfloat16):
            return sdpa_attention(q, k, v, mask)
        out = flash_attn_func(q, k, v)
        return out[0] if isinstance(out, tuple) else out

    return flash


# ---- wave-split attention (wave quantization on many-SM GPUs) ------------------------------------------
# cuDNN's Hopper kernel runs one CTA per (128-query tile, head, batch), one CTA per SM. At 832x480 a chunk has
# Lq = 3 x 1560 = 4680 queries -> 37 tiles x 12 heads = 444 CTAs = 3.36 waves on 132 SMs, and the 4th wave costs
# a whole wave: measured on an H100 (bench/RESULTS.md, session 7, Lk = 14,040), 0.556 ms at Lq = 4224 (exactly
# 3 waves), 0.735 ms at 4608, 0.735 at 5120 and 0.744 at 5632 (4 waves); 0.748 ms at the stream's 4680.
# The plan (`wave_plan`): the query tiles that fill whole waves run as one plain call; only the rest (here 4
# tiles x 12 heads = 48 CTAs) runs over S key ranges as the batch of ONE call (S = 2: 96 CTAs, each with half the
# keys, so the partial wave takes half as long), merged exactly with the log-sum-exp, o = sum_i exp(lse_i - lse)
# o_i, and appended to the main rows. Predicted 3.5 instead of 4 wave-times (-12 %). Measured (H100, session 8):
# -7.8 % at Lk = 14,040 (0.692 against 0.751 ms), but slower at Lk = 9,360 and 4,680, where the GPU work is
# shorter than the split's host-side cost (two launches, the compiled merge's guards), and the 81-frame stream
# ran 6 % slower with it (2.619 against 2.467 s). So it is opt-in ('split'), not 'auto'. Splitting ALL queries
# (session 7: q repeated, 888 CTAs = 6.73 waves) gained nothing either. Separate launches per range never help
# (each launch keeps the partial wave).

Q_TILE = 128
"""Query rows per CTA of cuDNN's Hopper forward kernel at d = 128 (the measured wave staircase fits 128)."""


def attention_with_lse(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """q [B, Lq, n, d], k/v [B, Lk, n, d] -> out [B, Lq, n, d], lse fp32 [B, n, Lq] (natural log).

    cuDNN's fused kernel on CUDA (bf16/fp16); a plain fp32 computation elsewhere (tests, CPU).
    """
    b, lq, n, _ = q.shape
    if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        out, lse = torch.ops.aten._scaled_dot_product_cudnn_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), None, True)[:2]   # [B, n, Lq, d]
        return out.transpose(1, 2), lse.reshape(b, n, lq).float()
    qf, kf, vf = (t.transpose(1, 2).float() for t in (q, k, v))                     # [B, n, L, d]
    s = qf @ kf.transpose(-1, -2) * q.shape[-1] ** -0.5                              # [B, n, Lq, Lk]
    lse = torch.logsumexp(s, dim=-1)                                                 # [B, n, Lq]
    out = torch.exp(s - lse[..., None]) @ vf                                         # [B, n, Lq, d]
    return out.transpose(1, 2).to(q.dtype), lse


def merge_partials(outs: list[Tensor], lses: list[Tensor], head: Optional[Tensor] = None) -> Tensor:
    """Exact merge of attention over disjoint key sets: outs [B, Lt, n, d], lses fp32 [B, n, Lt] -> [B, Lt, n, d].
    `head` [B, Lm, n, d] (rows computed whole) is put before them: -> [B, Lm + Lt, n, d]."""
    lse = torch.logsumexp(torch.stack(lses), dim=0)                                  # [B, n, Lt]
    acc = sum(o.float() * torch.exp(l - lse).transpose(1, 2)[..., None]              # [B, Lt, n, 1]
              for o, l in zip(outs, lses))
    merged = acc.to(outs[0].dtype)
    return merged if head is None else torch.cat([head, merged], dim=1)


def wave_plan(lq: int, lk: int, heads: int, batch: int, sms: int, max_splits: int = 4,
              min_keys: int = 1024) -> tuple[int, int]:
    """(main_rows, splits): queries [0, main_rows) in one plain call whose CTAs fill whole waves, the rest over
    `splits` equal key ranges. Cost in wave-times of Lk keys: ceil(main CTAs / sms) + ceil(rest CTAs * S / sms) / S.
    (lq, 1), i.e. one plain call, unless a split saves >= 5 % (the merge and the extra launch cost a little);
    a range keeps >= `min_keys` keys and S divides Lk."""
    hb = heads * batch
    tiles = -(-lq // Q_TILE)                                    # query tiles per (batch, head)
    main_tiles = (tiles * hb // sms) * sms // hb                # the tiles inside whole waves (0: under one wave)
    rest = tiles - main_tiles
    plain = -(-tiles * hb // sms)
    best, best_cost = 1, float(plain)
    for s in range(2, max_splits + 1):
        if rest == 0 or lk % s or lk // s < min_keys:
            continue
        cost = -(-main_tiles * hb // sms) + -(-rest * hb * s // sms) / s
        if cost < 0.95 * best_cost:
            best, best_cost = s, cost
    return (lq, 1) if best == 1 else (main_tiles * Q_TILE, best)


def split_kv_attention(q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor] = None, *,
                       splits: Optional[int] = None, main_rows: int = 0,
                       merge: Optional[Callable[..., Tensor]] = None) -> Tensor:
    """Attention with the partial wave's queries computed over key ranges (`wave_plan` for the GPU when `splits`
    is None; otherwise queries [0, main_rows) whole and the rest over `splits` ranges, as the CPU tests ask).

    q [B, Lq, n, d], k/v [B, Lk, n, d] -> [B, Lq, n, d]. Equal ranges run as the batch of one fused call (q rows
    repeated per range); unequal ranges run one call each. SDPA with a mask, with autograd, or off CUDA unless
    `splits` is given."""
    if mask is not None or (splits is None and not q.is_cuda) or _training(q):
        return sdpa_attention(q, k, v, mask)
    b, lq, n, _ = q.shape
    lk = k.shape[1]
    if splits is None:
        main_rows, splits = wave_plan(lq, lk, n, b, _sm_count(q.device.index or 0))
    if splits <= 1 or main_rows >= lq:
        return _CUDNN(q, k, v)                                 # (plain SDPA off CUDA)
    merge = merge or _merge_fn(q)
    head = _CUDNN(q[:, :main_rows], k, v) if main_rows > 0 else None       # [B, Lm, n, d]
    tail = q[:, main_rows:]                                                # [B, Lt, n, d]
    if lk % splits == 0:                                       # one launch: ranges as the batch (split-major)
        as_batch = lambda t: t.unflatten(1, (splits, lk // splits)).transpose(0, 1).flatten(0, 1)  # noqa: E731
        out, lse = attention_with_lse(tail.repeat(splits, 1, 1, 1), as_batch(k), as_batch(v))
        # out [S*B, Lt, n, d], lse [S*B, n, Lt] -> S parts of B rows each
        return merge(list(out.unflatten(0, (splits, b)).unbind(0)), list(lse.unflatten(0, (splits, b)).unbind(0)),
                     head)
    bounds = [lk * i // splits for i in range(splits + 1)]
    parts = [attention_with_lse(tail, k[:, lo:hi], v[:, lo:hi]) for lo, hi in zip(bounds, bounds[1:])]
    return merge([o for o, _ in parts], [l for _, l in parts], head)


_MERGE_COMPILED: Optional[Callable[..., Tensor]] = None


def _merge_fn(q: Tensor) -> Callable[..., Tensor]:
    """The merge (and the append to the main rows) compiled into one kernel on CUDA; eager it is ~6 passes."""
    global _MERGE_COMPILED
    if not q.is_cuda:
        return merge_partials
    if _MERGE_COMPILED is None:
        _MERGE_COMPILED = torch.compile(merge_partials)      # shapes change rarely (window fill, size)
    return _MERGE_COMPILED


_GPU_FACTS: dict[int, tuple[int, bool]] = {}
"""Per CUDA device index: (SM count, cuDNN fused attention on sm90+), read once (attention calls are a hot path)."""


def _gpu_facts(index: int) -> tuple[int, bool]:
    facts = _GPU_FACTS.get(index)
    if facts is None:
        hopper = torch.backends.cudnn.is_available() and torch.cuda.get_device_capability(index)[0] >= 9
        facts = _GPU_FACTS[index] = (torch.cuda.get_device_properties(index).multi_processor_count, hopper)
    return facts


# constants of a trace too (the cross-attention runs inside the compiled block stage)
@torch.compiler.assume_constant_result
def _sm_count(index: int) -> int:
    return _gpu_facts(index)[0]


@torch.compiler.assume_constant_result
def _hopper_cudnn(index: int) -> bool:
    """cuDNN's fused attention on an sm90+ GPU: there it runs ~1.8x FlashAttention-2 (bench/RESULTS.md)."""
    return _gpu_facts(index)[1]


def _training(q: Tensor) -> bool:
    """Autograd will differentiate this call (the fused inference paths are not used then)."""
    return torch.is_grad_enabled() and q.requires_grad


_FLASH: Optional[AttentionFn] = None
"""flash-attn's function when installed (set when 'auto' is first resolved)."""


def auto_attention(q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor] = None) -> Tensor:
    """'auto': inference on Hopper and newer runs cuDNN's fused attention first (540 TFLOP/s at the stream's shapes
    on an H100 against FlashAttention-2's 300, bench/RESULTS.md); training, masks and other devices use flash-attn
    when installed, else SDPA's own choice."""
    if q.is_cuda and mask is None and not _training(q) and _hopper_cudnn(q.device.index or 0):
        return _CUDNN(q, k, v)
    return (_FLASH or sdpa_attention)(q, k, v, mask)


def resolve_attention(backend: "str | AttentionFn" = "auto") -> AttentionFn:
    """'auto' (inference on Hopper and newer: 'cudnn'; otherwise flash-attn when installed, else SDPA), 'sdpa',
    'cudnn' (SDPA preferring cuDNN's fused attention), 'split' (cuDNN, with the partial wave's queries over key
    ranges merged by log-sum-exp: `split_kv_attention`), 'flash' (FlashAttention-2), or a callable."""
    if callable(backend):
        return backend
    if backend == "sdpa":
        return sdpa_attention
    if backend == "cudnn":
        return _CUDNN
    if backend == "split":
        return split_kv_attention
    if backend == "auto":
        global _FLASH
        _FLASH = _FLASH or _flash_attention()
        return auto_attention
    if backend == "flash":
        flash = _flash_attention()
        if flash is None:
            raise ValueError("attention backend 'flash' needs the flash-attn package: pip install flash-attn, "
                             "or choose 'sdpa'")
        return flash
    raise ValueError(f"unknown attention backend {backend!r}; choose 'auto', 'sdpa', 'cudnn', 'split', 'flash' "
                     "or pass a callable")


def block_causal_mask(num_frames: int, frame_seqlen: int, frames_per_block: int, *,
                      window_frames: Optional[int] = None, sink_frames: int = 0,
                      device: "torch.device | str | None" = None) -> Tensor:
    """bool [L, L], L = num_frames * frame_seqlen; True where query token may attend key token.

    Every token sees all earlier blocks and its whole own block (kv < end of its block). With a window of
    W frames it sees only kv >= end - W*frame_seqlen, plus the first `sink_frames` frames.
    """
    frame = torch.arange(num_frames * frame_seqlen, device=device) // frame_seqlen      # [L] frame index
    block_end = (frame // frames_per_block + 1) * frames_per_block                      # [L] in frames
    q_end, kv = block_end[:, None], frame[None, :]
    allowed = kv < q_end                                                                 # [L, L]
    if window_frames is not None:
        allowed &= (kv >= q_end - window_frames) | (kv < sink_frames)
    return allowed
