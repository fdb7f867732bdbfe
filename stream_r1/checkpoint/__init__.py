"""Open, normalise, validate and export Wan2.1 DiT checkpoints (spec-models §1.2, §6).

Every released layout ends as one flat `{Wan key: tensor}` dict plus a `WanConfig` and the family's `StreamConfig`:

    Wan-AI safetensors (single or sharded + index.json, fp32, config.json beside)
    Comfy-Org repacks (bare or `model.diffusion_model.` keys; fp16/bf16, fp8, fp8 "scaled")
    Self-Forcing-family trainer `.pt` ({generator, critic, generator_ema}, FSDP infixes, `model.` prefix)
    Reward Forcing flat `model.*` `.pt`, LongLive base `.pt` + PEFT LoRA, diffusers names (renamed)
    our own export (safetensors + {"format": "stream_r1", "wan_config", "stream_config", "family", ...})

`.pt` files are read with `torch.load(weights_only=True)` only; anything that needs arbitrary unpickling is refused.
Safetensors are read lazily (one tensor at a time), `.pt` files through mmap, so a load never holds two full copies
of the weights. Modules: read (files, entries, fp8), keys (names, shapes, config), formats (format, family), load
(+ LoRA), export, inspect.
"""
from .export import save_dit_export, to_wan_state_dict
from .formats import EXPORT_FORMAT, EXPORT_FORMAT_VERSION, FAMILIES, FAMILY_KEY, UNKNOWN_FAMILY_NOTE
from .inspect import format_inspection, inspect_checkpoint
from .keys import (HEAD_DIM, PREFIX_MIN_KEYS, STRIP_PREFIXES, WRAPPER_INFIXES, HeadsUnknownError, expected_dit_shapes,
                   infer_dit_fields)
from .load import LoadedCheckpoint, load_dit_checkpoint
from .read import ENTRY_ORDER, FP8_DTYPES, SafetensorsFiles, SourceInfo, open_state_dict
