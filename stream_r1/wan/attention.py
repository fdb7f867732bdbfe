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


_HOPPER: dict[int, bool] = {}
"""Per CUDA device index: cuDNN fused attention on sm90+, read once (attention calls are a hot path)."""


@torch.compiler.assume_constant_result             # a constant of a trace too (cross-attention is compiled)
def _hopper_cudnn(index: int) -> bool:
    """cuDNN's fused attention on an sm90+ GPU: there it runs ~1.8x FlashAttention-2 (bench/RESULTS.md)."""
    if index not in _HOPPER:
        _HOPPER[index] = torch.backends.cudnn.is_available() and torch.cuda.get_device_capability(index)[0] >= 9
    return _HOPPER[index]


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
    'cudnn' (SDPA preferring cuDNN's fused attention), 'flash' (FlashAttention-2), or a callable."""
    if callable(backend):
        return backend
    if backend == "sdpa":
        return sdpa_attention
    if backend == "cudnn":
        return _CUDNN
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
    raise ValueError(f"unknown attention backend {backend!r}; choose 'auto', 'sdpa', 'cudnn', 'flash' "
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
