"""Our own export: Wan-named weights in one safetensors file whose metadata carries the model config, the stream
settings and the family ({"format": "stream_r1", "wan_config", "stream_config", "family", ...})."""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..config import StreamConfig, WanConfig
from .formats import EXPORT_FORMAT, EXPORT_FORMAT_VERSION, family_for_policy
from .keys import expected_dit_shapes, strip_infixes, validate


def to_wan_state_dict(state_dict: Mapping[str, torch.Tensor],
                      config: WanConfig | None = None) -> dict[str, torch.Tensor]:
    """Our module names are Wan's: drop wrapper infixes (torch.compile / FSDP / activation checkpointing),
    keep names and values, and (with a config) check the result against the Wan table."""
    out = {strip_infixes(k): v.detach() for k, v in state_dict.items()}
    if config is not None:
        validate(out, config, Path("<state_dict>"), "given")
        out = {k: out[k] for k in expected_dit_shapes(config)}
    return out


def save_dit_export(path: str | os.PathLike, state_dict: Mapping[str, torch.Tensor], config: WanConfig,
                    stream_config: StreamConfig | None = None, extra: Mapping[str, Any] | None = None) -> Path:
    """Write Wan-named weights + config metadata as one safetensors file, atomically (tmp + rename).

    extra: more metadata (values that are not str are JSON-encoded); a "family" entry sets the family
    that load_dit_checkpoint reports, else it is the one trained with `stream_config`'s cache policy
    (window_sink: stream-r1; none given: stream-r1).
    """
    path = Path(path).expanduser()
    sd = to_wan_state_dict(state_dict, config)
    tensors = {k: v.to("cpu").contiguous() for k, v in sd.items()}
    metadata = {"format": EXPORT_FORMAT, "format_version": EXPORT_FORMAT_VERSION, "wan_config": config.to_json()}
    if stream_config is not None:
        metadata["stream_config"] = json.dumps(stream_config.to_dict(), sort_keys=True)
    for k, v in (extra or {}).items():
        if k in metadata or k == "stream_config":
            raise ValueError(f"extra metadata key {k!r} is reserved; rename it")
        metadata[k] = v if isinstance(v, str) else json.dumps(v)
    metadata.setdefault("family", family_for_policy(stream_config.cache_policy if stream_config else "window_sink"))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        from safetensors.torch import save_file      # here: importing the node pack reads no file
        save_file(tensors, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path

