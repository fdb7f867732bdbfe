"""LoRA adapters merged into the DiT before use (LongLive's `lora.pt`, spec-models §2.6): W += (alpha / r) B A."""
from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .keys import STRIP_PREFIXES, strip_infixes
from .read import SafetensorsFiles, SourceInfo, open_state_dict, tensors_only

_LORA_RE = re.compile(r"^(?P<layer>.+?)\.lora_(?P<ab>A|B|down|up)(?:\.[A-Za-z0-9_]+)?\.weight$")


def merge_lora(sd: dict[str, torch.Tensor], path: Path, alpha_override: float | None) -> tuple[list[str], list[str]]:
    """W += (alpha / r) * B @ A in fp32 for every LoRA pair (PEFT A: [r, in], B: [out, r]), in place in `sd`.

    Returns (notes, warnings)."""
    raw, info = open_state_dict(path)
    lora = _lora_entry(raw, path)
    alpha_file, rslora = _lora_alpha(raw, info)
    pairs: dict[str, dict[str, str]] = {}
    ignored = []
    for k in lora:
        c = strip_infixes(k).removeprefix("base_model.model.")
        m = _LORA_RE.match(c)
        if m:
            ab = {"down": "A", "up": "B"}.get(m["ab"], m["ab"])
            pairs.setdefault(m["layer"], {})[ab] = k
        elif c.endswith(".alpha"):
            pairs.setdefault(c.removesuffix(".alpha"), {})["alpha"] = k
        else:
            ignored.append(k)
    merged, unmatched, ranks = 0, [], set()
    for layer, ks in pairs.items():
        if "A" not in ks or "B" not in ks:
            raise ValueError(f"LoRA {path}: layer {layer!r} has only {sorted(ks)}; lora_A and lora_B are both needed")
        target = next((c + ".weight" for c in _lora_candidates(layer) if c + ".weight" in sd), None)
        if target is None:
            unmatched.append(layer)
            continue
        a, b = lora[ks["A"]].to(torch.float32), lora[ks["B"]].to(torch.float32)
        w = sd[target]
        r = a.shape[0]
        if a.ndim != 2 or b.ndim != 2 or b.shape[1] != r or (b.shape[0], a.shape[1]) != tuple(w.shape):
            raise ValueError(f"LoRA {path}: {layer} has A {tuple(a.shape)}, B {tuple(b.shape)} but the DiT weight "
                             f"{target} is {tuple(w.shape)}; the LoRA was trained for another model")
        alpha = alpha_override if alpha_override is not None else (
            float(lora[ks["alpha"]].item()) if "alpha" in ks else alpha_file if alpha_file is not None else r)
        scale = alpha / math.sqrt(r) if rslora else alpha / r
        sd[target] = (w.to(torch.float32) + scale * (b @ a)).to(w.dtype)
        merged += 1
        ranks.add((r, alpha, scale))
    if unmatched:
        raise ValueError(f"LoRA {path} targets {len(unmatched)} layers the DiT does not have, first: {unmatched[:5]}")
    if merged == 0:
        raise ValueError(f"LoRA {path} holds no lora_A/lora_B pairs (first keys: {list(lora)[:5]})")
    desc = ", ".join(f"rank {r} alpha {a:g} (scale {s:g})" for r, a, s in sorted(ranks))
    warnings = [f"LoRA {path.name}: ignored {len(ignored)} non-LoRA keys, first: {ignored[:3]}"] if ignored else []
    return [f"merged LoRA {path.name} into {merged} layers: {desc}"], warnings


def _lora_entry(raw: Any, path: Path) -> Mapping:
    if isinstance(raw, SafetensorsFiles):
        return raw
    if not isinstance(raw, Mapping):
        raise ValueError(f"LoRA {path} holds a {type(raw).__name__}, not a dict of tensors")
    for name in ("generator_lora", "lora", "model", "state_dict"):
        if isinstance(raw.get(name), Mapping):
            return tensors_only(raw[name])
    nested = [k for k, v in raw.items() if isinstance(v, Mapping)]
    if len(nested) == 1 and not any(isinstance(v, torch.Tensor) for v in raw.values()):
        return tensors_only(raw[nested[0]])
    return tensors_only(raw)


def _lora_alpha(raw: Any, info: SourceInfo) -> tuple[float | None, bool]:
    """alpha from the file ("lora_alpha"/"alpha" entry or metadata) or an adapter_config.json beside it."""
    cands: list[Mapping] = []
    if isinstance(raw, Mapping) and not isinstance(raw, SafetensorsFiles):
        cands += [raw] + [raw[k] for k in ("config", "lora_config", "peft_config") if isinstance(raw.get(k), Mapping)]
    cands.append(info.metadata)
    cfg_file = info.path.parent / "adapter_config.json"
    if cfg_file.is_file():
        try:
            cands.append(json.loads(cfg_file.read_text()))
        except (OSError, json.JSONDecodeError):
            pass
    for c in cands:
        for key in ("lora_alpha", "alpha"):
            v = c.get(key)
            if isinstance(v, torch.Tensor) and v.numel() == 1:
                v = v.item()
            try:
                if v is not None and not isinstance(v, Mapping):
                    return float(v), str(c.get("use_rslora", "false")).lower() == "true"
            except (TypeError, ValueError):
                continue
    return None, False


def _lora_candidates(layer: str) -> list[str]:
    out = [layer]
    for p in STRIP_PREFIXES:
        if layer.startswith(p):
            out.append(layer[len(p):])
    return out
