"""Optional fp8 (e4m3) weights for the DiT's block linears: half the weight memory, Hopper fp8 GEMMs.

Weights are quantised once with one scale per tensor; activations are quantised per tensor on the fly
(amax on the device, no host sync) and multiplied with `torch._scaled_mm` on GPUs that have fp8 matrix
units (compute capability >= 8.9). Elsewhere (CPU, older GPUs) the weight is de-quantised per call, so
results are the same function of the stored fp8 weights, only slower. Embeddings, the time MLP and the
head stay in the model dtype (as LongLive's fp8 recipe keeps them).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

E4M3_MAX = 448.0
BLOCK_LINEARS = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o",
                 "cross_attn.q", "cross_attn.k", "cross_attn.v", "cross_attn.o", "ffn.0", "ffn.2")


def _fp8_gemm_ok(x: Tensor, w: Tensor) -> bool:
    if not x.is_cuda or x.dtype not in (torch.bfloat16, torch.float16):
        return False
    major, minor = torch.cuda.get_device_capability(x.device)
    return (major, minor) >= (8, 9) and w.shape[0] % 16 == 0 and w.shape[1] % 16 == 0


class FP8Linear(nn.Module):
    """Drop-in for nn.Linear: weight_fp8 [out, in] e4m3 + weight_scale (fp32 scalar), bias in model dtype."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        w = linear.weight.detach().float()
        scale = (w.abs().amax() / E4M3_MAX).clamp(min=1e-12)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight_fp8", (w / scale).to(torch.float8_e4m3fn))
        self.register_buffer("weight_scale", scale.reshape(()))
        self.bias = linear.bias

    def dequantized_weight(self, dtype: torch.dtype) -> Tensor:
        return (self.weight_fp8.float() * self.weight_scale).to(dtype)

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)                                   # [M, in]
        if not _fp8_gemm_ok(x2, self.weight_fp8):
            return F.linear(x2, self.dequantized_weight(x.dtype), self.bias).reshape(*lead, self.out_features)
        m = x2.shape[0]
        pad = (-m) % 16                                                        # fp8 GEMM wants M % 16 == 0
        if pad:
            x2 = F.pad(x2, (0, 0, 0, pad))
        x_scale = (x2.abs().amax().float() / E4M3_MAX).clamp(min=1e-12)
        xq = (x2 / x_scale.to(x2.dtype)).to(torch.float8_e4m3fn)
        y = torch._scaled_mm(xq, self.weight_fp8.t(), scale_a=x_scale, scale_b=self.weight_scale,
                             bias=self.bias, out_dtype=x.dtype)                # [M + pad, out]
        return y[:m].reshape(*lead, self.out_features)


def quantize_fp8_(model: nn.Module) -> nn.Module:
    """Replace every block linear of a WanModel by an FP8Linear in place; returns the model."""
    for blk in model.blocks:
        for name in BLOCK_LINEARS:
            parent_name, _, child = name.rpartition(".")
            parent = blk.get_submodule(parent_name)
            lin = getattr(parent, child) if not child.isdigit() else parent[int(child)]
            if isinstance(lin, FP8Linear):
                continue
            q = FP8Linear(lin)
            if child.isdigit():
                parent[int(child)] = q
            else:
                setattr(parent, child, q)
    return model


def weight_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
