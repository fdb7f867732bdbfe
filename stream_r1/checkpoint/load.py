"""Load any supported DiT file as one validated `{Wan key: tensor}` dict plus its `WanConfig` and family settings:
the steps of spec-models §6.4 in order (entry, names, quantisation, config, validation, family, LoRA)."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import StreamConfig, WanConfig
from .arch import check_finite, resolve_config, validate
from .formats import UNKNOWN_FAMILY_NOTE, detect_family, detect_format, export_extra
from .keys import OTHER_KINDS, classify, from_diffusers, normalise_names, refuse_extras
from .lora import merge_lora
from .quant import dominant_float, dtype_counts, materialise, plan_quant
from .read import SourceInfo, open_state_dict, select_entry

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
