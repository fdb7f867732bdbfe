"""What a file is: its format (how it was packed) and its model family (which runtime settings it was trained with).

The family decides the default `StreamConfig`. It comes from the weights' metadata and names, never from the
container, so one set of weights streams the same from a trainer `.pt`, a bare or prefixed `.safetensors` or our
export. Rules, first match wins (`detect_family`):

1. metadata: `stream_r1.family` in any safetensors header, or `family` in our export (an export without one was
   written by this pack's Stream-R1 trainer); our export's `stream_config` gives the exact settings;
2. a released file's name, or its folder's for generic names like `model.pt`: stream_r1 / rewardforcing /
   longlive / self_forcing (self_forcing_dmd.pt -> Self-Forcing, cache policy full);
3. Wan's own release of the bidirectional base model: the Wan-AI layout (diffusion_pytorch_model*, a config.json
   beside), diffusers key names, or a Comfy-Org repack name (wan2.1_t2v_*);
4. anything else is "unknown" and streams with Stream-R1's defaults (window_sink), said in a note: a Self-Forcing
   checkpoint under another name needs cache_policy full set explicitly.
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..config import StreamConfig
from .read import SourceInfo

EXPORT_FORMAT = "stream_r1"
"""Value of the safetensors metadata key "format" in our own exports."""
EXPORT_FORMAT_VERSION = "1"
FAMILY_KEY = "stream_r1.family"
"""Metadata key naming the family in any safetensors file (our exports write "family" beside "format")."""
FAMILIES: tuple[str, ...] = ("wan-base", "self-forcing", "reward-forcing", "stream-r1", "longlive", "unknown")
_FAMILY_STREAM = {  # family -> the settings it was trained with (spec-models §2.10); wan-base: the teacher
    "stream-r1": StreamConfig.stream_r1, "reward-forcing": StreamConfig.reward_forcing,
    "self-forcing": StreamConfig.self_forcing, "longlive": StreamConfig.longlive,
    "unknown": StreamConfig.stream_r1, "wan-base": StreamConfig.self_forcing,
}
_FAMILY_HINTS = (  # squashed lower-case file name fragment -> family
    ("streamr1", "stream-r1"), ("rewardforcing", "reward-forcing"), ("longlive", "longlive"),
    ("selfforcing", "self-forcing"), ("causvid", "unknown"), ("causal", "unknown"))
_GENERIC_STEMS = ("model", "generator", "generator_ema", "checkpoint", "diffusion_pytorch_model", "lora")
UNKNOWN_FAMILY_NOTE = ("family not recognised from the metadata or file name: streaming with Stream-R1's defaults "
                       "(cache policy window_sink); for a Self-Forcing checkpoint set cache_policy full")


def metadata_json(metadata: Mapping[str, str], key: str, path: Path) -> dict[str, Any]:
    """The JSON object stored under metadata `key` of file `path`; a ValueError naming both when it is not one."""
    try:
        d = json.loads(metadata[key])
    except ValueError as e:
        raise ValueError(f"{path}: metadata {key!r} is not JSON ({e}); re-export the file") from None
    if not isinstance(d, dict):
        raise ValueError(f"{path}: metadata {key!r} must be a JSON object, got {type(d).__name__}; re-export the file")
    return d


def dataclass_kwargs(cls: type, d: dict[str, Any]) -> dict[str, Any]:
    """The entries of `d` that are fields of dataclass `cls`, JSON lists back as tuples."""
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in cls.__dataclass_fields__}


def detect_format(info: SourceInfo, entry: str | None, prefix: str, quant: dict, kind: str,
                  config_source: str) -> str:
    """How the file was packed: wan-ai(-sharded), diffusers(-sharded), comfy-repack, comfy-fp8(-scaled),
    self-forcing-pt, reward-forcing-pt, longlive-pt, torch-pt or stream-r1-export (a label; it decides nothing)."""
    if info.metadata.get("format") == EXPORT_FORMAT:
        return "stream-r1-export"
    sharded = info.container == "safetensors-sharded"
    if kind == "diffusers":
        return "diffusers-sharded" if sharded else "diffusers"
    if sharded:
        return "wan-ai-sharded"
    if info.container == "torch":
        if family_hint(info.path) == "longlive":
            return "longlive-pt"
        if entry is not None:
            return "self-forcing-pt"
        return "reward-forcing-pt" if prefix == "model." else "torch-pt"
    if quant["fp8"]:
        return "comfy-fp8-scaled" if quant["scale"] else "comfy-fp8"
    return "wan-ai" if _wan_ai_layout(info.path, config_source) else "comfy-repack"


def family_hint(path: Path) -> str | None:
    """Family named by the file (or, for generic names like model.pt, by its folder)."""
    stem = re.sub(r"(-\d{5}-of-\d{5})?\.(safetensors|pt|pth|ckpt|bin)(\.index\.json)?$", "", path.name.lower())
    generic = stem in _GENERIC_STEMS or stem.startswith("checkpoint")
    text = stem + " " + path.parent.name.lower() if generic else stem
    squashed = re.sub(r"[^a-z0-9]", "", text)
    return next((fam for frag, fam in _FAMILY_HINTS if frag in squashed), None)


def _wan_ai_layout(path: Path, config_source: str) -> bool:
    return path.name.startswith("diffusion_pytorch_model") or config_source.endswith("config.json")


def detect_family(info: SourceInfo, kind: str, config_source: str) -> tuple[str, StreamConfig, list[str]]:
    """(family, its StreamConfig, notes) by the rules of the module docstring."""
    meta, ours = info.metadata, info.metadata.get("format") == EXPORT_FORMAT
    family = meta.get(FAMILY_KEY) or (meta.get("family", "stream-r1") if ours else None)
    if family is None:
        family = family_hint(info.path)
    if family is None and (kind == "diffusers" or _wan_ai_layout(info.path, config_source)
                           or info.path.name.lower().startswith("wan2.1_t2v_")):
        family = "wan-base"
    family = family if family in FAMILIES else "unknown"
    if ours and "stream_config" in meta:
        declared = metadata_json(meta, "stream_config", info.path)
        return family, StreamConfig(**dataclass_kwargs(StreamConfig, declared)), []
    notes = {"unknown": [UNKNOWN_FAMILY_NOTE], "wan-base": [
        "bidirectional Wan2.1 base weights (teacher / critic / student init), not a distilled causal student: "
        "streamed output will not be good"]}.get(family, [])
    return family, _FAMILY_STREAM[family](), notes


def family_for_policy(policy: str) -> str:
    """The family our exports record for a student trained with this cache policy."""
    return {"window_sink": "stream-r1", "full": "self-forcing", "longlive": "longlive"}[policy]


def export_extra(metadata: dict[str, str]) -> dict[str, str]:
    """Our export's metadata beyond what the loader itself reads (step, recipe, family, ...); {} for other files."""
    if metadata.get("format") != EXPORT_FORMAT:
        return {}
    return {k: v for k, v in metadata.items() if k not in ("format", "format_version", "wan_config")}
