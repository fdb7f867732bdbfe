"""Load any supported DiT file as one validated `{Wan key: tensor}` dict plus its `WanConfig` and family settings:
the steps of spec-models §6.4 in order (entry, names, quantisation, config, validation, family), then a LoRA
merged as W += (alpha / r) B A (LongLive's `lora.pt`, §2.6)."""
from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import StreamConfig, WanConfig
from .formats import UNKNOWN_FAMILY_NOTE, detect_family, detect_format, export_extra
from .keys import (OTHER_KINDS, STRIP_PREFIXES, check_finite, classify, from_diffusers, normalise_names, refuse_extras,
                   resolve_config, strip_infixes, validate)
from .read import (SafetensorsFiles, SourceInfo, dominant_float, dtype_counts, materialise, open_state_dict,
                   plan_quant, select_entry, tensors_only)

log = logging.getLogger(__name__)


@dataclass
class LoadedCheckpoint:
    """A DiT state dict with Wan key names, ready for `WanModel(config).load_state_dict(state_dict)`."""

    state_dict: dict[str, torch.Tensor]
    config: WanConfig
    format: str
    """wan-ai, wan-ai-sharded, comfy-repack, comfy-fp8, comfy-fp8-scaled, diffusers, self-forcing-pt,
    reward-forcing-pt, longlive-pt, torch-pt or stream-r1-export."""
    family: str
    """Model family (FAMILIES) from metadata and names (`formats.detect_family`); decides `stream_config`."""
    stream_config: StreamConfig
    """Runtime settings the family was trained with (cache policy, window, sink)."""
    path: Path
    source_dtype: str
    """Dtype holding most parameters in the file, e.g. "bfloat16" or "float8_e4m3fn"."""
    source_dtypes: dict[str, int] = field(default_factory=dict)
    """Parameters per stored dtype."""
    entry: str | None = None
    """Entry used from a dict-of-dicts file (generator_ema / generator / model / state_dict)."""
    entries: tuple[str, ...] = ()
    """Entries the file offered."""
    config_source: str = "inferred from shapes"
    metadata: dict[str, str] = field(default_factory=dict)
    """Extra metadata of our own exports."""
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def cache_policy(self) -> str:
        return self.stream_config.cache_policy

    @property
    def num_parameters(self) -> int:
        return sum(t.numel() for t in self.state_dict.values())


def load_dit_checkpoint(path: str | os.PathLike, entry: str | None = None, num_heads: int | None = None,
                        lora: str | os.PathLike | None = None, dtype: torch.dtype | str | None = None,
                        lora_alpha: float | None = None) -> LoadedCheckpoint:
    """Load any supported DiT file as Wan-named tensors (spec-models §6.4), validated and NaN-checked.

    entry: pick an entry of a dict-of-dicts `.pt` (default generator_ema -> generator -> model -> state_dict).
    num_heads: needed only when neither our metadata nor a config.json says it and dim is not a multiple of 128.
    lora: a PEFT LoRA file merged as W += (alpha / r) B A in fp32 (LongLive); lora_alpha overrides the
    alpha found in the file / adapter_config.json (default alpha = r, scale 1).
    dtype: cast every floating tensor; None keeps the stored dtypes (fp8 is dequantised to the file's
    dominant 16/32-bit dtype).
    """
    raw, info = open_state_dict(path)
    ckpt = build(raw, info, entry=entry, num_heads=num_heads, dtype=_as_dtype(dtype), meta=False)
    del raw
    if lora is not None:                             # a LoRA on the base: LongLive, its only family with one
        notes, warnings = merge_lora(ckpt.state_dict, Path(lora).expanduser(), lora_alpha)
        ckpt.notes = [n for n in ckpt.notes if n != UNKNOWN_FAMILY_NOTE] + notes
        ckpt.warnings += warnings
        ckpt.family, ckpt.stream_config = "longlive", StreamConfig.longlive()
        if ckpt.format in ("self-forcing-pt", "torch-pt", "reward-forcing-pt"):
            ckpt.format = "longlive-pt"
    check_finite(ckpt.state_dict, ckpt.path, with_lora=lora is not None)
    if UNKNOWN_FAMILY_NOTE in ckpt.notes:
        log.warning("%s: %s", ckpt.path.name, UNKNOWN_FAMILY_NOTE)
    log.info("loaded %s: %s, family %s, %s params, %s", ckpt.path.name, ckpt.format, ckpt.family,
             f"{ckpt.num_parameters:,}", ckpt.source_dtype)
    return ckpt


def _as_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    names = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
             "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
    if dtype not in names:
        raise ValueError(f"dtype must be one of {sorted(names)} or a torch.dtype, got {dtype!r}")
    return names[dtype]


def build(raw: Any, info: SourceInfo, *, entry: str | None, num_heads: int | None,
           dtype: torch.dtype | None, meta: bool) -> LoadedCheckpoint:
    """Steps 2-7 of spec §6.4 on an opened file; with meta=True nothing is read (for inspect)."""
    path = info.path
    flat, used, entries = select_entry(raw, entry, path)
    names, prefix, notes = normalise_names(list(flat), path)
    kind = classify(names)
    if kind in OTHER_KINDS:
        looks, belongs = OTHER_KINDS[kind]
        raise ValueError(f"{path} looks like {looks}, not a Wan2.1 DiT; {belongs}")
    if kind == "unknown":
        raise ValueError(f"{path} is not a recognised Wan2.1 DiT checkpoint (no 'head.modulation' or "
                         f"'blocks.0.self_attn.q.weight'); first keys: {list(names)[:8]}")
    refuse_extras(names, path)
    if kind == "diffusers":
        names = from_diffusers(names)
        notes.append("renamed diffusers keys (condition_embedder.*, attn1/attn2, scale_shift_table, proj_out) "
                     "to Wan names")
    quant = plan_quant(names, flat, info.metadata, path)
    source_dtypes = dtype_counts(names, flat, quant)
    target = dtype or dominant_float(source_dtypes)
    sd = materialise(names, flat, quant, dtype, target, meta)
    if quant["fp8"]:
        notes.append(f"dequantised {len(quant['fp8'])} fp8 tensors to {str(target).removeprefix('torch.')}"
                     + (f" ({len(quant['scale'])} with scales)" if quant["scale"] else ""))
    config, config_source = resolve_config(sd, num_heads, info)
    validate(sd, config, path, config_source)
    fmt = detect_format(info, used, prefix, quant, kind, config_source)
    family, stream_config, fam_notes = detect_family(info, kind, config_source)
    warnings = []
    if config.in_dim != 16:
        warnings.append(f"in_dim {config.in_dim} != 16: not a Wan2.1 T2V model (Wan2.2 TI2V-5B uses 48); "
                        f"the Wan2.1 VAE will not fit it")
    return LoadedCheckpoint(
        state_dict=sd, config=config, format=fmt, family=family, stream_config=stream_config, path=path,
        source_dtype=max(source_dtypes, key=source_dtypes.get) if source_dtypes else "unknown",
        source_dtypes=source_dtypes, entry=used, entries=tuple(entries), config_source=config_source,
        metadata=export_extra(info.metadata), notes=notes + fam_notes, warnings=warnings)


# ---- LoRA (LongLive) ---------------------------------------------------------------------------------------------
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
