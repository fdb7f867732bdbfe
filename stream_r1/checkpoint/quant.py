"""Stored dtypes and fp8: plan which tensors are fp8 weights, scales or side keys (Comfy-Org's scaled and
`comfy_quant` forms, spec-models §6.2), then read tensors one at a time, dequantising W = fp8 * scale in fp32."""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .read import stored_meta

FP8_DTYPES: tuple[torch.dtype, ...] = tuple(
    getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz")
    if hasattr(torch, n))
_QUANT_SIDE_SUFFIXES = (".scale_weight", ".weight_scale", ".scale_input", ".input_scale", ".comfy_quant",
                        ".weight_scale_2")
_QUANT_ROOT_KEYS = ("scaled_fp8",)


def plan_quant(names: dict[str, str], flat: Mapping, metadata: dict, path: Path) -> dict[str, Any]:
    """-> {"side": clean names to drop, "fp8": fp8 weights, "scale": {weight: scale name}}."""
    side = {n for n in names if n in _QUANT_ROOT_KEYS or n.endswith(_QUANT_SIDE_SUFFIXES)}
    if any(n.endswith(".weight_scale_2") for n in side):
        raise ValueError(f"{path} is NVFP4-quantised (weight_scale_2 keys); only fp8 files are supported — use "
                         f"the bf16/fp16 or fp8 version of the model")
    for n in (n for n in side if n.endswith(".comfy_quant")):
        fmt = _comfy_quant_format(flat[names[n]])
        if fmt and "float8" not in fmt:
            raise ValueError(f"{path}: layer {n[:-12]} is quantised as {fmt!r}; only float8 files are supported")
    qmeta = metadata.get("_quantization_metadata")
    if qmeta:
        try:
            formats = {str(v.get("format", v)) if isinstance(v, dict) else str(v)
                       for v in json.loads(qmeta).get("layers", {}).values()}
        except (json.JSONDecodeError, AttributeError):
            formats = set()
        bad = sorted(f for f in formats if "float8" not in f)
        if bad:
            raise ValueError(f"{path} uses quantisation formats {bad}; only float8 files are supported")
    fp8 = {n for n in names if n not in side and stored_meta(flat, names[n]).dtype in FP8_DTYPES}
    scale = {}
    for n in fp8:
        layer = n.removesuffix(".weight")
        for s in (layer + ".scale_weight", layer + ".weight_scale"):
            if s in names:
                scale[n] = s
                break
    return {"side": side, "fp8": fp8, "scale": scale}


def _comfy_quant_format(t: torch.Tensor) -> str | None:
    try:
        return str(json.loads(bytes(t.to(torch.uint8).flatten().tolist()).decode()).get("format"))
    except (ValueError, AttributeError, RuntimeError):
        return None


def dtype_counts(names: dict[str, str], flat: Mapping, quant: dict) -> dict[str, int]:
    counts: dict[str, int] = {}
    for n, k in names.items():
        if n in quant["side"]:
            continue
        t = stored_meta(flat, k)
        name = str(t.dtype).removeprefix("torch.")
        counts[name] = counts.get(name, 0) + t.numel()
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def dominant_float(counts: dict[str, int]) -> torch.dtype:
    for name in counts:  # sorted by parameter count
        dt = getattr(torch, name, None)
        if isinstance(dt, torch.dtype) and dt.is_floating_point and dt not in FP8_DTYPES:
            return dt
    return torch.bfloat16


def materialise(names: dict[str, str], flat: Mapping, quant: dict, dtype: torch.dtype | None,
                 fp8_target: torch.dtype, meta: bool) -> dict[str, torch.Tensor]:
    """Read tensors one at a time, dequantise fp8 (W = fp8 * scale in fp32) and cast."""
    sd: dict[str, torch.Tensor] = {}
    for n, k in names.items():
        if n in quant["side"]:
            continue
        t = stored_meta(flat, k) if meta else flat[k]
        if n in quant["fp8"]:
            w = t.to(torch.float32)
            if n in quant["scale"]:
                s = (stored_meta(flat, names[quant["scale"][n]]) if meta else flat[names[quant["scale"][n]]])
                s = s.to(torch.float32)
                if s.numel() > 1 and s.ndim == 1 and s.numel() == w.shape[0]:  # per-row scale [out]
                    s = s.reshape(-1, *([1] * (w.ndim - 1)))
                w = w * s
            t = w.to(fp8_target)
        elif dtype is not None and t.is_floating_point() and t.dtype != dtype:
            t = t.to(dtype)
        sd[n] = t
    return sd
