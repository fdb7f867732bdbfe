"""Open, normalise, validate and export Wan2.1 DiT checkpoints (spec-models §1.2, §6).

Every released layout ends as one flat `{Wan key: tensor}` dict plus a `WanConfig`:

    Wan-AI safetensors (single or sharded + index.json, fp32, config.json beside)
    Comfy-Org repacks (bare or `model.diffusion_model.` keys; fp16/bf16, fp8, fp8 "scaled")
    Self-Forcing-family trainer `.pt` ({generator, critic, generator_ema}, FSDP infixes, `model.` prefix)
    Reward Forcing flat `model.*` `.pt`, LongLive base `.pt` + PEFT LoRA, diffusers names (renamed)
    our own export (safetensors + {"format": "stream_r1", "wan_config": ..., "stream_config": ...})

`.pt` files are read with `torch.load(weights_only=True)` only; anything that needs arbitrary unpickling
is refused. Safetensors are read lazily (one tensor at a time), `.pt` files through mmap, so a load never
holds two full copies of the weights.
"""
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
from safetensors import safe_open
from safetensors.torch import save_file

from .config import StreamConfig, WanConfig
from .weights_io import read_safetensors_header, regular_file
from .weights_io import torch_load as _torch_load

log = logging.getLogger(__name__)

EXPORT_FORMAT = "stream_r1"
"""Value of the safetensors metadata key "format" in our own exports."""
EXPORT_FORMAT_VERSION = "1"
ENTRY_ORDER: tuple[str, ...] = ("generator_ema", "generator", "model", "state_dict")
"""Entries of a dict-of-dicts checkpoint, in the order they are preferred ("critic" is never chosen)."""
WRAPPER_INFIXES: tuple[str, ...] = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")
STRIP_PREFIXES: tuple[str, ...] = ("model.diffusion_model.", "diffusion_model.", "model.")
PREFIX_MIN_KEYS = 5
"""A prefix is stripped only when more than this many keys carry it (ComfyUI's rule)."""
HEAD_DIM = 128
"""head_dim of every released Wan2.1 model: num_heads = dim / 128 unless told otherwise."""

FP8_DTYPES: tuple[torch.dtype, ...] = tuple(
    getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz")
    if hasattr(torch, n))
_QUANT_SIDE_SUFFIXES = (".scale_weight", ".weight_scale", ".scale_input", ".input_scale", ".comfy_quant",
                        ".weight_scale_2")
_QUANT_ROOT_KEYS = ("scaled_fp8",)
_SHARD_RE = re.compile(r"^(?P<stem>.+)-(?P<i>\d{5})-of-(?P<n>\d{5})\.safetensors$")
_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.")

# Family -> default runtime settings (spec-models §2.10). "wan-base" is the bidirectional teacher.
FAMILIES: tuple[str, ...] = ("wan-base", "self-forcing", "reward-forcing", "stream-r1", "longlive", "unknown")
_FAMILY_STREAM = {
    "stream-r1": StreamConfig.stream_r1, "reward-forcing": StreamConfig.reward_forcing,
    "self-forcing": StreamConfig.self_forcing, "longlive": StreamConfig.longlive,
    "unknown": StreamConfig, "wan-base": StreamConfig.self_forcing,
}
_FAMILY_HINTS = (  # squashed lower-case file name fragment -> family
    ("streamr1", "stream-r1"), ("rewardforcing", "reward-forcing"), ("longlive", "longlive"),
    ("selfforcing", "self-forcing"), ("causvid", "unknown"), ("causal", "unknown"))
_GENERIC_STEMS = ("model", "generator", "generator_ema", "checkpoint", "diffusion_pytorch_model", "lora")

# diffusers WanTransformer3DModel -> Wan names (inverse of diffusers' scripts/convert_wan_to_diffusers.py).
_DIFFUSERS_TO_WAN: tuple[tuple[str, str], ...] = (
    (r"^condition_embedder\.time_embedder\.linear_1\.", "time_embedding.0."),
    (r"^condition_embedder\.time_embedder\.linear_2\.", "time_embedding.2."),
    (r"^condition_embedder\.text_embedder\.linear_1\.", "text_embedding.0."),
    (r"^condition_embedder\.text_embedder\.linear_2\.", "text_embedding.2."),
    (r"^condition_embedder\.time_proj\.", "time_projection.1."),
    (r"^scale_shift_table$", "head.modulation"),
    (r"^proj_out\.", "head.head."),
    (r"^(blocks\.\d+)\.scale_shift_table$", r"\1.modulation"),
    (r"^(blocks\.\d+)\.attn1\.to_out\.0\.", r"\1.self_attn.o."),
    (r"^(blocks\.\d+)\.attn1\.to_([qkv])\.", r"\1.self_attn.\2."),
    (r"^(blocks\.\d+)\.attn1\.norm_([qk])\.", r"\1.self_attn.norm_\2."),
    (r"^(blocks\.\d+)\.attn2\.to_out\.0\.", r"\1.cross_attn.o."),
    (r"^(blocks\.\d+)\.attn2\.to_([qkv])\.", r"\1.cross_attn.\2."),
    (r"^(blocks\.\d+)\.attn2\.norm_([qk])\.", r"\1.cross_attn.norm_\2."),
    (r"^(blocks\.\d+)\.norm2\.", r"\1.norm3."),  # diffusers' affine cross-attn norm is Wan's norm3
    (r"^(blocks\.\d+)\.ffn\.net\.0\.proj\.", r"\1.ffn.0."),
    (r"^(blocks\.\d+)\.ffn\.net\.2\.", r"\1.ffn.2."),
)

# Things that are not a T2V DiT: kind -> (what it looks like, where it belongs).
_OTHER_KINDS = {
    "wan-vae": ("the Wan2.1 VAE (key decoder.middle.0.residual.0.gamma)",
                "load it as the VAE (ComfyUI: Load VAE; CLI: --vae), not as the DiT checkpoint"),
    "wan2.2-vae": ("the Wan2.2 VAE (key decoder.upsamples.0.upsamples.0.residual.2.weight)",
                   "Stream-R1 uses the Wan2.1 VAE (wan_2.1_vae.safetensors / Wan2.1_VAE.pth)"),
    "umt5 text encoder (wan layout)": ("the umT5-XXL text encoder in Wan's layout (token_embedding.weight)",
                                       "load it as the text encoder (ComfyUI: Load CLIP, type wan; "
                                       "CLI: --text-encoder), not as the DiT checkpoint"),
    "umt5 text encoder (hf layout)": ("the umT5-XXL text encoder in Hugging Face layout (shared.weight, "
                                      "encoder.block.*)", "load it as the text encoder (CLI: --text-encoder), not as the DiT checkpoint"),
    "umt5 text encoder (comfy layout)": ("the umT5-XXL text encoder in ComfyUI layout (shared.weight + "
                                         "spiece_model)", "load it as the text encoder (ComfyUI: Load CLIP, "
                                         "type wan), not as the DiT checkpoint"),
    "videoreward": ("the VideoReward (Qwen2-VL) reward model (rm_head / visual.* keys)",
                    "load it as the reward model (the reward-model loader), "
                    "not as the DiT checkpoint"),
    "lora": ("a LoRA adapter (lora_A/lora_B keys)",
             "pass it with --lora (lora=) together with the base DiT checkpoint (e.g. longlive_base.pt + lora.pt)"),
}


# ---- the Wan2.1 DiT parameter table ------------------------------------------------------------------
def expected_dit_shapes(cfg: WanConfig) -> dict[str, tuple[int, ...]]:
    """Every state-dict tensor of a Wan2.1 T2V DiT with its shape, in the model's own order.

    1.3B: 825 tensors (15 top-level + 30 blocks x 27), 1,418,996,800 parameters (= cfg.num_parameters()).
    """
    d, f, t = cfg.dim, cfg.ffn_dim, cfg.text_dim
    pt, ph, pw = cfg.patch_size
    head_out = cfg.out_dim * pt * ph * pw  # 16 * 1*2*2 = 64
    shapes: dict[str, tuple[int, ...]] = {
        "patch_embedding.weight": (d, cfg.in_dim, pt, ph, pw),  # [1536, 16, 1, 2, 2]
        "patch_embedding.bias": (d,),
        "text_embedding.0.weight": (d, t),  # [1536, 4096]
        "text_embedding.0.bias": (d,),
        "text_embedding.2.weight": (d, d),
        "text_embedding.2.bias": (d,),
        "time_embedding.0.weight": (d, cfg.freq_dim),  # [1536, 256]
        "time_embedding.0.bias": (d,),
        "time_embedding.2.weight": (d, d),
        "time_embedding.2.bias": (d,),
        "time_projection.1.weight": (6 * d, d),  # [9216, 1536]
        "time_projection.1.bias": (6 * d,),
    }
    for i in range(cfg.num_layers):
        p = f"blocks.{i}."
        shapes[p + "modulation"] = (1, 6, d)
        for attn in ("self_attn", "cross_attn"):
            for proj in "qkvo":
                shapes[f"{p}{attn}.{proj}.weight"] = (d, d)
                shapes[f"{p}{attn}.{proj}.bias"] = (d,)
            shapes[f"{p}{attn}.norm_q.weight"] = (d,)
            shapes[f"{p}{attn}.norm_k.weight"] = (d,)
            if attn == "self_attn":  # norm3 sits between the two attentions in Wan's module order
                shapes[p + "norm3.weight"] = (d,)
                shapes[p + "norm3.bias"] = (d,)
        shapes[p + "ffn.0.weight"] = (f, d)  # [8960, 1536]
        shapes[p + "ffn.0.bias"] = (f,)
        shapes[p + "ffn.2.weight"] = (d, f)
        shapes[p + "ffn.2.bias"] = (d,)
    shapes["head.modulation"] = (1, 2, d)
    shapes["head.head.weight"] = (head_out, d)
    shapes["head.head.bias"] = (head_out,)
    return shapes


# ---- opening files -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class SourceInfo:
    """Where a state dict came from."""

    path: Path
    """The file (or index) that was opened."""
    container: str
    """"safetensors", "safetensors-sharded" or "torch"."""
    files: tuple[Path, ...]
    metadata: dict[str, str] = field(default_factory=dict)
    """safetensors `__metadata__` (of the first shard); empty for torch files."""
    size_bytes: int = 0


class SafetensorsFiles(Mapping):
    """Read-only `{name: tensor}` over one or more safetensors files; a tensor is read when indexed."""

    def __init__(self, headers: dict[Path, dict[str, tuple[torch.dtype, tuple[int, ...]]]]):
        self._file = {name: f for f, h in headers.items() for name in h}
        self._spec = {name: spec for h in headers.values() for name, spec in h.items()}
        self._handles: dict[Path, Any] = {}

    def __getitem__(self, name: str) -> torch.Tensor:
        f = self._file[name]
        if f not in self._handles:
            self._handles[f] = safe_open(str(f), framework="pt", device="cpu")
        return self._handles[f].get_tensor(name)

    def __iter__(self):
        return iter(self._file)

    def __len__(self) -> int:
        return len(self._file)

    def meta(self, name: str) -> torch.Tensor:
        """A data-less tensor with the stored dtype and shape (reads nothing)."""
        dtype, shape = self._spec[name]
        return torch.empty(shape, dtype=dtype, device="meta")


def open_state_dict(path: str | os.PathLike) -> tuple[Any, SourceInfo]:
    """Open a checkpoint without interpreting it.

    path: a `.safetensors` file, a sharded set (its `*.safetensors.index.json`, any shard, or the folder),
    or a torch `.pt/.pth/.ckpt/.bin` file (read with weights_only=True, mmap). Returns (raw, info): raw is
    a lazy `SafetensorsFiles` mapping or whatever torch.load returned (a dict of tensors or of dicts).
    """
    path = Path(path).expanduser()
    container, files = _resolve_files(path)
    size = sum(f.stat().st_size for f in files)
    if container == "torch":
        return _torch_load(files[0]), SourceInfo(files[0], container, files, {}, size)
    headers, metadata = {}, {}
    for f in files:
        headers[f], meta = read_safetensors_header(f)
        metadata = metadata or meta
    main = path if path.name.endswith(".index.json") else files[0]
    if container == "safetensors-sharded":
        _check_index_complete(path, files, headers)
        main = _index_for(files[0]) or files[0]
    return SafetensorsFiles(headers), SourceInfo(main, container, files, metadata, size)


def _resolve_files(path: Path) -> tuple[str, tuple[Path, ...]]:
    if not path.exists():
        near = ""
        if path.parent.is_dir():
            cands = sorted(p.name for p in path.parent.iterdir() if _looks_like_weights(p))[:8]
            near = f"; weight files in {path.parent}: {cands}" if cands else f"; {path.parent} holds no weight files"
        raise FileNotFoundError(f"checkpoint not found: {path}{near}")
    if path.is_dir():
        return _resolve_folder(path)
    regular_file(path)
    if path.name.endswith(".index.json"):
        return "safetensors-sharded", _index_shards(path)
    m = _SHARD_RE.match(path.name)
    if m:
        index = _index_for(path)
        if index is not None:
            return "safetensors-sharded", _index_shards(index)
        n = int(m["n"])
        shards = [path.with_name(f"{m['stem']}-{i:05d}-of-{n:05d}.safetensors") for i in range(1, n + 1)]
        missing = [s.name for s in shards if not s.exists()]
        if missing:
            raise FileNotFoundError(f"{path.name} is one shard of {n} and no index.json was found; missing "
                                    f"shards: {missing}. Download all shards (and the index) into {path.parent}")
        return ("safetensors-sharded" if n > 1 else "safetensors"), tuple(shards)
    with open(path, "rb") as fh:
        magic = fh.read(9)
    # a safetensors file starts with an 8-byte little-endian header length and then '{': check that first,
    # since a header length of 128 mod 256 also starts with 0x80, the first byte of a legacy pickle
    if len(magic) == 9 and magic[8:9] == b"{":
        return "safetensors", (path,)
    if magic[:4] == b"PK\x03\x04" or magic[:1] == b"\x80":
        return "torch", (path,)
    if path.suffix in (".pt", ".pth", ".ckpt", ".bin") and len(magic) < 9:
        raise ValueError(f"{path} is incomplete ({path.stat().st_size} bytes); download it again")
    return "safetensors", (path,)


def _resolve_folder(folder: Path) -> tuple[str, tuple[Path, ...]]:
    indexes = sorted(folder.glob("*.safetensors.index.json"))
    if len(indexes) > 1:
        pref = [p for p in indexes if p.name.startswith("diffusion_pytorch_model")]
        indexes = pref if len(pref) == 1 else indexes
    if len(indexes) == 1:
        return "safetensors-sharded", _index_shards(indexes[0])
    singles = sorted(p for p in folder.iterdir() if _looks_like_weights(p))
    if len(singles) == 1 and not indexes:
        return _resolve_files(singles[0])
    names = [p.name for p in (indexes or singles)][:10]
    what = "no weight files" if not names else f"several candidates {names}"
    raise ValueError(f"cannot choose a checkpoint in folder {folder}: {what}; pass the file itself")


def _looks_like_weights(p: Path) -> bool:
    return p.is_file() and (p.suffix in (".safetensors", ".pt", ".pth", ".ckpt", ".bin") or
                            p.name.endswith(".index.json"))


def _index_for(shard: Path) -> Path | None:
    for idx in sorted(shard.parent.glob("*.safetensors.index.json")):
        try:
            if shard.name in _read_index(idx).values():
                return idx
        except (OSError, ValueError):
            continue
    return None


def _read_index(index: Path) -> dict[str, str]:
    regular_file(index)
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        if not all(isinstance(f, str) and Path(f).name == f for f in weight_map.values()):
            raise TypeError("its values must be shard file names in the same folder")
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{index} is not a safetensors index (needs a 'weight_map' object): {e}") from None
    return weight_map


def _index_shards(index: Path) -> tuple[Path, ...]:
    shards = tuple(index.parent / n for n in sorted(set(_read_index(index).values())))
    missing = [s.name for s in shards if not s.exists()]
    if missing:
        raise FileNotFoundError(f"{index.name} lists {len(shards)} shards but {len(missing)} are missing in "
                                f"{index.parent}: {missing[:5]}; download them next to the index")
    return shards


def _check_index_complete(path: Path, files: tuple[Path, ...], headers: dict) -> None:
    index = path if path.name.endswith(".index.json") else _index_for(files[0])
    if index is None:
        return
    missing = [(k, f) for k, f in _read_index(index).items() if k not in headers.get(index.parent / f, {})]
    if missing:
        raise ValueError(f"shards do not hold what {index.name} lists, e.g. {missing[:3]}; the shards are "
                         f"incomplete or from another model — download them again")


# ---- the loaded result -----------------------------------------------------------------------------------
@dataclass
class LoadedCheckpoint:
    """A DiT state dict with Wan key names, ready for `WanModel(config).load_state_dict(state_dict)`."""

    state_dict: dict[str, torch.Tensor]
    config: WanConfig
    format: str
    """wan-ai, wan-ai-sharded, comfy-repack, comfy-fp8, comfy-fp8-scaled, diffusers, self-forcing-pt,
    reward-forcing-pt, longlive-pt, torch-pt or stream-r1-export."""
    family: str
    """Best guess of the model family (FAMILIES); decides the default `stream_config`."""
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
    ckpt = _build(raw, info, entry=entry, num_heads=num_heads, dtype=_as_dtype(dtype), meta=False)
    del raw
    if lora is not None:
        _merge_lora(ckpt, Path(lora).expanduser(), lora_alpha)
    _check_finite(ckpt.state_dict, ckpt.path, with_lora=lora is not None)
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


def _build(raw: Any, info: SourceInfo, *, entry: str | None, num_heads: int | None,
           dtype: torch.dtype | None, meta: bool) -> LoadedCheckpoint:
    """Steps 2-7 of spec §6.4 on an opened file; with meta=True nothing is read (for inspect)."""
    path = info.path
    flat, used, entries = _select_entry(raw, entry, path)
    names, prefix, notes = _normalise_names(list(flat), path)
    kind = _classify(names)
    if kind in _OTHER_KINDS:
        looks, belongs = _OTHER_KINDS[kind]
        raise ValueError(f"{path} looks like {looks}, not a Wan2.1 DiT; {belongs}")
    if kind == "unknown":
        raise ValueError(f"{path} is not a recognised Wan2.1 DiT checkpoint (no 'head.modulation' or "
                         f"'blocks.0.self_attn.q.weight'); first keys: {list(names)[:8]}")
    _refuse_extras(names, path)
    if kind == "diffusers":
        names = _from_diffusers(names)
        notes.append("renamed diffusers keys (condition_embedder.*, attn1/attn2, scale_shift_table, proj_out) "
                     "to Wan names")
    quant = _plan_quant(names, flat, info.metadata, path)
    source_dtypes = _dtype_counts(names, flat, quant)
    target = dtype or _dominant_float(source_dtypes)
    sd = _materialise(names, flat, quant, dtype, target, meta)
    if quant["fp8"]:
        notes.append(f"dequantised {len(quant['fp8'])} fp8 tensors to {str(target).removeprefix('torch.')}"
                     + (f" ({len(quant['scale'])} with scales)" if quant["scale"] else ""))
    config, config_source = _resolve_config(sd, num_heads, info)
    _validate(sd, config, path, config_source)
    fmt = _detect_format(info, used, prefix, quant, kind, config_source)
    family, stream_config, fam_notes = _detect_family(path, fmt, info.metadata)
    warnings = []
    if config.in_dim != 16:
        warnings.append(f"in_dim {config.in_dim} != 16: not a Wan2.1 T2V model (Wan2.2 TI2V-5B uses 48); "
                        f"the Wan2.1 VAE will not fit it")
    return LoadedCheckpoint(
        state_dict=sd, config=config, format=fmt, family=family, stream_config=stream_config, path=path,
        source_dtype=max(source_dtypes, key=source_dtypes.get) if source_dtypes else "unknown",
        source_dtypes=source_dtypes, entry=used, entries=tuple(entries), config_source=config_source,
        metadata=_export_extra(info.metadata), notes=notes + fam_notes, warnings=warnings)


# ---- step 2: entry selection ---------------------------------------------------------------------------
def _select_entry(raw: Any, entry: str | None, path: Path) -> tuple[Mapping, str | None, list[str]]:
    if isinstance(raw, SafetensorsFiles):
        if entry is not None:
            raise ValueError(f"entry={entry!r} was given but {path} is a flat safetensors file with no entries")
        return raw, None, []
    if not isinstance(raw, Mapping):
        raise ValueError(f"{path} holds a {type(raw).__name__}, not a dict of tensors")
    nested = [k for k, v in raw.items() if isinstance(v, Mapping) and
              any(isinstance(x, torch.Tensor) for x in v.values())]
    tensors = {k: v for k, v in raw.items() if isinstance(v, torch.Tensor)}
    if entry is not None:
        if entry not in nested:
            have = nested or "none (it is a flat state dict)"
            raise ValueError(f"entry {entry!r} is not in {path}; available entries: {have}")
        return _tensors_only(raw[entry]), entry, nested
    if nested and len(tensors) <= PREFIX_MIN_KEYS:
        for name in ENTRY_ORDER:
            if name in nested:
                return _tensors_only(raw[name]), name, nested
        others = [n for n in nested if n != "critic"]
        if len(others) == 1:
            return _tensors_only(raw[others[0]]), others[0], nested
        hint = " ('critic' is the DMD fake score, not a generator; pass entry='critic' to load it anyway)" \
            if nested == ["critic"] else ""
        raise ValueError(f"{path} has entries {nested} but none of {list(ENTRY_ORDER)}; pass entry=NAME{hint}")
    if not tensors:
        raise ValueError(f"{path} holds no tensors (top-level keys: {list(raw)[:8]})")
    return tensors, None, nested


def _tensors_only(d: Mapping) -> dict[str, torch.Tensor]:
    return {k: v for k, v in d.items() if isinstance(v, torch.Tensor)}


# ---- steps 3-4: names ------------------------------------------------------------------------------------
def _normalise_names(keys: list[str], path: Path) -> tuple[dict[str, str], str, list[str]]:
    """-> ({clean name: stored name}, stripped prefix, notes)."""
    notes, found = [], set()
    cleaned: dict[str, str] = {}
    for k in keys:
        c = k
        for inf in WRAPPER_INFIXES:
            if inf in c:
                found.add(inf)
                c = c.replace(inf, "")
        cleaned[c] = k
    if found:
        notes.append(f"removed wrapper infixes {sorted(found)}")
    prefix = ""
    for p in STRIP_PREFIXES:
        if sum(c.startswith(p) for c in cleaned) > PREFIX_MIN_KEYS:
            prefix = p
            notes.append(f"stripped key prefix {p!r}")
            break
    names: dict[str, str] = {}
    for c, k in cleaned.items():
        n = c[len(prefix):] if prefix and c.startswith(prefix) else c
        if n in names:
            raise ValueError(f"{path}: keys {names[n]!r} and {k!r} both map to {n!r} after removing wrapper "
                             f"prefixes; the file mixes two copies of the model")
        names[n] = k
    if len(names) != len(keys):
        raise ValueError(f"{path}: {len(keys) - len(names)} keys collide after removing wrapper infixes")
    return names, prefix, notes


def _classify(names: Mapping[str, str]) -> str:
    """Which model a (normalised) key set belongs to."""
    keys = list(names)
    has = lambda s: any(s in k for k in keys)  # noqa: E731
    if has("rm_head.") or has("visual.merger.") or has("visual.patch_embed."):
        return "videoreward"
    if has(".lora_A") or has(".lora_B") or has(".lora_down.") or has(".lora_up."):
        return "lora"
    if "token_embedding.weight" in names:
        return "umt5 text encoder (wan layout)"
    if "shared.weight" in names or any(k.startswith("encoder.block.") for k in keys):
        return "umt5 text encoder (comfy layout)" if "spiece_model" in names else "umt5 text encoder (hf layout)"
    if any(k.endswith("decoder.upsamples.0.upsamples.0.residual.2.weight") for k in keys):
        return "wan2.2-vae"
    if any(k.endswith("decoder.middle.0.residual.0.gamma") for k in keys):
        return "wan-vae"
    if has("condition_embedder.") or any(k.startswith("proj_out.") for k in keys) or has(".attn1.to_q."):
        return "diffusers"
    if "head.modulation" in names or "patch_embedding.weight" in names or has("self_attn.q.weight"):
        return "dit"
    return "unknown"


def _refuse_extras(names: Mapping[str, str], path: Path) -> None:
    keys = list(names)
    checks = (
        (("img_emb.", ".k_img.", ".v_img.", "image_embedder.", ".add_k_proj."),
         "image-to-video (i2v / flf2v) extras (img_emb.*, k_img, v_img)"),
        (("vace_",), "VACE control extras (vace_blocks.*, vace_patch_embedding)"),
        (("control_adapter.", "camera"), "camera-control extras (control_adapter.*)"),
    )
    for needles, what in checks:
        hit = next((k for k in keys if any(n in k for n in needles)), None)
        if hit is not None:
            raise ValueError(f"{path} is a Wan2.1 DiT with {what}, e.g. {hit!r}; Stream-R1 streams text-to-video "
                             f"only — use a T2V checkpoint (Wan2.1-T2V-1.3B or a causal student)")


def _from_diffusers(names: dict[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for n, k in names.items():
        for pat, rep in _DIFFUSERS_TO_WAN:
            new, hits = re.subn(pat, rep, n)
            if hits:
                n = new
                break
        out[n] = k
    return out


# ---- step 5: quantisation --------------------------------------------------------------------------------
def _stored(flat: Mapping, key: str) -> torch.Tensor:
    """Meta view of a stored tensor (reads nothing for safetensors)."""
    if isinstance(flat, SafetensorsFiles):
        return flat.meta(key)
    t = flat[key]
    return torch.empty(t.shape, dtype=t.dtype, device="meta")


def _plan_quant(names: dict[str, str], flat: Mapping, metadata: dict, path: Path) -> dict[str, Any]:
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
    fp8 = {n for n in names if n not in side and _stored(flat, names[n]).dtype in FP8_DTYPES}
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


def _dtype_counts(names: dict[str, str], flat: Mapping, quant: dict) -> dict[str, int]:
    counts: dict[str, int] = {}
    for n, k in names.items():
        if n in quant["side"]:
            continue
        t = _stored(flat, k)
        name = str(t.dtype).removeprefix("torch.")
        counts[name] = counts.get(name, 0) + t.numel()
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def _dominant_float(counts: dict[str, int]) -> torch.dtype:
    for name in counts:  # sorted by parameter count
        dt = getattr(torch, name, None)
        if isinstance(dt, torch.dtype) and dt.is_floating_point and dt not in FP8_DTYPES:
            return dt
    return torch.bfloat16


def _materialise(names: dict[str, str], flat: Mapping, quant: dict, dtype: torch.dtype | None,
                 fp8_target: torch.dtype, meta: bool) -> dict[str, torch.Tensor]:
    """Read tensors one at a time, dequantise fp8 (W = fp8 * scale in fp32) and cast."""
    sd: dict[str, torch.Tensor] = {}
    for n, k in names.items():
        if n in quant["side"]:
            continue
        t = _stored(flat, k) if meta else flat[k]
        if n in quant["fp8"]:
            w = t.to(torch.float32)
            if n in quant["scale"]:
                s = (_stored(flat, names[quant["scale"][n]]) if meta else flat[names[quant["scale"][n]]])
                s = s.to(torch.float32)
                if s.numel() > 1 and s.ndim == 1 and s.numel() == w.shape[0]:  # per-row scale [out]
                    s = s.reshape(-1, *([1] * (w.ndim - 1)))
                w = w * s
            t = w.to(fp8_target)
        elif dtype is not None and t.is_floating_point() and t.dtype != dtype:
            t = t.to(dtype)
        sd[n] = t
    return sd


# ---- step 7: config and validation -----------------------------------------------------------------------
def infer_dit_fields(shapes: Mapping[str, Any]) -> dict[str, Any]:
    """Architecture fields readable from tensor shapes (everything except num_heads, text_len, eps).

    shapes: {Wan key: tensor or shape}. 1.3B -> dim 1536, ffn_dim 8960, num_layers 30, text_dim 4096, ...
    """
    def shape(k: str) -> tuple[int, ...]:
        if k not in shapes:
            raise ValueError(f"cannot read the architecture: key {k!r} is missing (is this one shard of a "
                             f"sharded checkpoint, or a partial file?)")
        v = shapes[k]
        return tuple(v.shape) if hasattr(v, "shape") else tuple(v)

    pe = shape("patch_embedding.weight")  # [dim, in_dim, pt, ph, pw]
    patch = tuple(pe[2:5])
    blocks = {int(m.group(1)) for k in shapes if (m := _BLOCK_RE.match(k))}
    return {
        "dim": shape("head.modulation")[-1],
        "ffn_dim": shape("blocks.0.ffn.0.weight")[0],
        "num_layers": max(blocks) + 1 if blocks else 0,
        "text_dim": shape("text_embedding.0.weight")[1],
        "freq_dim": shape("time_embedding.0.weight")[1],
        "in_dim": pe[1],
        "out_dim": shape("head.head.weight")[0] // math.prod(patch),
        "patch_size": patch,
    }


def _declared_config(info: SourceInfo) -> tuple[dict[str, Any], str]:
    """Config written next to / inside the file: our metadata, else a Wan-AI (or diffusers) config.json."""
    names = set(WanConfig.__dataclass_fields__)
    if info.metadata.get("format") == EXPORT_FORMAT and "wan_config" in info.metadata:
        d = json.loads(info.metadata["wan_config"])
        return {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in names}, \
            "stream_r1 export metadata"
    cfg_file = info.path.parent / "config.json"
    if not cfg_file.is_file():
        return {}, ""
    try:
        d = json.loads(cfg_file.read_text())
    except (OSError, json.JSONDecodeError):
        return {}, ""
    if not isinstance(d, dict):
        return {}, ""
    if d.get("_class_name") == "WanTransformer3DModel":  # diffusers names
        ren = {"num_attention_heads": "num_heads", "in_channels": "in_dim", "out_channels": "out_dim"}
        d = {ren.get(k, k): v for k, v in d.items()}
    elif d.get("_class_name") != "WanModel" and not {"dim", "num_layers"} <= d.keys():
        return {}, ""
    if d.get("model_type", "t2v") != "t2v":
        raise ValueError(f"{cfg_file} declares model_type {d['model_type']!r}; Stream-R1 needs a t2v model")
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in names}, str(cfg_file)


def _resolve_config(sd: Mapping[str, torch.Tensor], num_heads: int | None,
                    info: SourceInfo) -> tuple[WanConfig, str]:
    fields = infer_dit_fields(sd)
    declared, source = _declared_config(info)
    for k, v in declared.items():
        if k in fields and fields[k] != v:
            raise ValueError(f"{source} says {k}={v} but the weights in {info.path.name} have {k}={fields[k]}; "
                             f"that config belongs to another model — remove or fix it")
    merged = {**declared, **fields}
    if num_heads is not None:
        if "num_heads" in declared and declared["num_heads"] != num_heads:
            raise ValueError(f"num_heads={num_heads} contradicts {source} (num_heads={declared['num_heads']}); "
                             f"drop the num_heads argument")
        merged["num_heads"] = num_heads
    elif "num_heads" not in declared:
        merged["num_heads"] = _default_heads(fields["dim"])
    try:
        cfg = WanConfig.from_dict(merged)
    except ValueError as e:
        raise ValueError(f"num_heads={merged['num_heads']} does not fit these weights: {e}; "
                         f"{_heads_hint(fields['dim'])}") from None
    return cfg, source or "inferred from shapes"


class HeadsUnknownError(ValueError):
    """num_heads cannot be read from the weights and nothing declares it."""


def _default_heads(dim: int) -> int:
    if dim % HEAD_DIM:
        raise HeadsUnknownError(f"cannot infer num_heads: dim {dim} is not a multiple of {HEAD_DIM} (the head_dim "
                                f"of every released Wan2.1 model) and no config says it; pass num_heads=N — "
                                f"{_heads_hint(dim)}")
    return dim // HEAD_DIM


def _heads_hint(dim: int) -> str:
    ok = [h for h in range(1, dim + 1) if dim % h == 0 and (dim // h) % 2 == 0 and dim // h >= 6]
    pref = sorted(ok, key=lambda h: abs(math.log2(dim // h) - math.log2(HEAD_DIM)))[:3]
    return "valid choices for dim {}: {}".format(dim, ", ".join(f"num_heads={h} (head_dim {dim // h})"
                                                                for h in sorted(pref)) or "none")


def _validate(sd: Mapping[str, torch.Tensor], cfg: WanConfig, path: Path, source: str) -> None:
    exp = expected_dit_shapes(cfg)
    missing = [k for k in exp if k not in sd]
    unexpected = [k for k in sd if k not in exp]
    wrong = [f"{k} {tuple(sd[k].shape)} != {exp[k]}" for k in exp if k in sd and tuple(sd[k].shape) != exp[k]]
    if missing or unexpected or wrong:
        parts = [f"{len(v)} {label} (first: {v[:5]})" for label, v in
                 (("missing", missing), ("unexpected", unexpected), ("mis-shaped", wrong)) if v]
        raise ValueError(f"{path} does not match a Wan2.1 DiT with dim {cfg.dim}, ffn_dim {cfg.ffn_dim}, "
                         f"{cfg.num_layers} layers, text_dim {cfg.text_dim} (config {source}): " + "; ".join(parts))


def _is_finite(t: torch.Tensor) -> bool:
    """min/max propagate NaN and +-Inf: one fast reduction (isfinite(t).all() is ~50x slower on bf16)."""
    if not t.is_floating_point() or t.device.type == "meta" or t.numel() == 0:
        return True
    lo, hi = torch.aminmax(t.reshape(-1))
    return bool(torch.isfinite(lo) & torch.isfinite(hi))


def _check_finite(sd: Mapping[str, torch.Tensor], path: Path, with_lora: bool = False) -> None:
    bad = [k for k, t in sd.items() if not _is_finite(t)]
    if bad:
        after = " after merging the LoRA" if with_lora else ""
        raise ValueError(f"{path}: {len(bad)} tensors contain NaN or Inf{after}, first: {bad[:5]}; the file is "
                         f"corrupt or was saved from a diverged run — use another checkpoint")


# ---- format and family ----------------------------------------------------------------------------------
def _detect_format(info: SourceInfo, entry: str | None, prefix: str, quant: dict, kind: str,
                   config_source: str) -> str:
    if info.metadata.get("format") == EXPORT_FORMAT:
        return "stream-r1-export"
    sharded = info.container == "safetensors-sharded"
    if kind == "diffusers":
        return "diffusers-sharded" if sharded else "diffusers"
    if sharded:
        return "wan-ai-sharded"
    if info.container == "torch":
        if entry is not None:
            return "longlive-pt" if _family_hint(info.path) == "longlive" else "self-forcing-pt"
        if _family_hint(info.path) == "longlive":
            return "longlive-pt"
        return "reward-forcing-pt" if prefix == "model." else "torch-pt"
    if quant["fp8"]:
        return "comfy-fp8-scaled" if quant["scale"] else "comfy-fp8"
    wan_ai = info.path.name.startswith("diffusion_pytorch_model") or config_source.endswith("config.json")
    return "wan-ai" if wan_ai else "comfy-repack"


def _family_hint(path: Path) -> str | None:
    """Family named by the file (or, for generic names like model.pt, by its folder)."""
    stem = re.sub(r"(-\d{5}-of-\d{5})?\.(safetensors|pt|pth|ckpt|bin)(\.index\.json)?$", "", path.name.lower())
    generic = stem in _GENERIC_STEMS or stem.startswith("checkpoint")
    text = stem + " " + path.parent.name.lower() if generic else stem
    squashed = re.sub(r"[^a-z0-9]", "", text)
    return next((fam for frag, fam in _FAMILY_HINTS if frag in squashed), None)


def _detect_family(path: Path, fmt: str, metadata: dict) -> tuple[str, StreamConfig, list[str]]:
    notes = []
    if fmt == "stream-r1-export":
        family = metadata.get("family", "stream-r1")
        family = family if family in FAMILIES else "unknown"
        if "stream_config" in metadata:
            d = json.loads(metadata["stream_config"])
            names = set(StreamConfig.__dataclass_fields__)
            sc = StreamConfig(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in names})
            return family, sc, notes
        return family, _FAMILY_STREAM[family](), notes
    family = _family_hint(path)
    if family is None:
        family = {"reward-forcing-pt": "reward-forcing", "longlive-pt": "longlive",
                  "self-forcing-pt": "unknown", "torch-pt": "unknown"}.get(fmt, "wan-base")
        if family == "unknown":
            notes.append("family not recognised from the file name: assuming a Reward-Forcing-style causal student "
                         "(cache policy window_sink); use cache_policy='full' for Self-Forcing checkpoints")
        elif family == "wan-base":
            notes.append("bidirectional Wan2.1 base weights (teacher / critic / student init), not a distilled "
                         "causal student: streamed output will not be good")
    return family, _FAMILY_STREAM[family](), notes


# ---- LoRA (LongLive) ----------------------------------------------------------------------------------------
_LORA_RE = re.compile(r"^(?P<layer>.+?)\.lora_(?P<ab>A|B|down|up)(?:\.[A-Za-z0-9_]+)?\.weight$")


def _merge_lora(ckpt: LoadedCheckpoint, path: Path, alpha_override: float | None) -> None:
    """W += (alpha / r) * B @ A in fp32 for every LoRA pair (PEFT A: [r, in], B: [out, r])."""
    raw, info = open_state_dict(path)
    lora = _lora_entry(raw, path)
    alpha_file, rslora = _lora_alpha(raw, info)
    pairs: dict[str, dict[str, str]] = {}
    ignored = []
    for k in lora:
        c = k
        for inf in WRAPPER_INFIXES:
            c = c.replace(inf, "")
        c = c.removeprefix("base_model.model.")
        m = _LORA_RE.match(c)
        if m:
            ab = {"down": "A", "up": "B"}.get(m["ab"], m["ab"])
            pairs.setdefault(m["layer"], {})[ab] = k
        elif c.endswith(".alpha"):
            pairs.setdefault(c.removesuffix(".alpha"), {})["alpha"] = k
        else:
            ignored.append(k)
    sd, merged, unmatched, ranks = ckpt.state_dict, 0, [], set()
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
    ckpt.notes.append(f"merged LoRA {path.name} into {merged} layers: {desc}")
    if ignored:
        ckpt.warnings.append(f"LoRA {path.name}: ignored {len(ignored)} non-LoRA keys, first: {ignored[:3]}")
    ckpt.family, ckpt.stream_config = "longlive", StreamConfig.longlive()
    ckpt.format = "longlive-pt" if ckpt.format in ("self-forcing-pt", "torch-pt", "reward-forcing-pt") else ckpt.format


def _lora_entry(raw: Any, path: Path) -> Mapping:
    if isinstance(raw, SafetensorsFiles):
        return raw
    if not isinstance(raw, Mapping):
        raise ValueError(f"LoRA {path} holds a {type(raw).__name__}, not a dict of tensors")
    for name in ("generator_lora", "lora", "model", "state_dict"):
        if isinstance(raw.get(name), Mapping):
            return _tensors_only(raw[name])
    nested = [k for k, v in raw.items() if isinstance(v, Mapping)]
    if len(nested) == 1 and not any(isinstance(v, torch.Tensor) for v in raw.values()):
        return _tensors_only(raw[nested[0]])
    return _tensors_only(raw)


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


# ---- our export ---------------------------------------------------------------------------------------------
def to_wan_state_dict(state_dict: Mapping[str, torch.Tensor],
                      config: WanConfig | None = None) -> dict[str, torch.Tensor]:
    """Our module names are Wan's: drop wrapper infixes (torch.compile / FSDP / activation checkpointing),
    keep names and values, and (with a config) check the result against the Wan table."""
    out = {}
    for k, v in state_dict.items():
        for inf in WRAPPER_INFIXES:
            k = k.replace(inf, "")
        out[k] = v.detach()
    if config is not None:
        _validate(out, config, Path("<state_dict>"), "given")
        out = {k: out[k] for k in expected_dit_shapes(config)}
    return out


def save_dit_export(path: str | os.PathLike, state_dict: Mapping[str, torch.Tensor], config: WanConfig,
                    stream_config: StreamConfig | None = None, extra: Mapping[str, Any] | None = None) -> Path:
    """Write Wan-named weights + config metadata as one safetensors file, atomically (tmp + rename).

    extra: more metadata (values that are not str are JSON-encoded); a "family" entry sets the family
    that load_dit_checkpoint reports.
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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _export_extra(metadata: dict[str, str]) -> dict[str, str]:
    if metadata.get("format") != EXPORT_FORMAT:
        return {}
    return {k: v for k, v in metadata.items() if k not in ("format", "format_version", "wan_config")}


# ---- inspection ------------------------------------------------------------------------------------------
def inspect_checkpoint(path: str | os.PathLike, entry: str | None = None,
                       num_heads: int | None = None) -> dict[str, Any]:
    """Describe any checkpoint (DiT, VAE, text encoder, reward model, LoRA) without reading its weights."""
    raw, info = open_state_dict(path)
    out: dict[str, Any] = {"path": str(info.path), "container": info.container, "files": len(info.files),
                           "size_bytes": info.size_bytes}
    try:
        flat, used, entries = _select_entry(raw, entry, info.path)
    except ValueError as e:
        return {**out, "kind": "unknown", "error": str(e)}
    names, _, _ = _normalise_names(list(flat), info.path)
    kind = _classify(names)
    counts = _dtype_counts(names, flat, {"side": set()})
    out.update(kind="wan2.1 dit" if kind in ("dit", "diffusers") else kind, entry=used, entries=entries,
               tensors=len(names), parameters=sum(counts.values()), dtypes=counts, notes=[])
    if kind in _OTHER_KINDS:
        out["notes"].append(f"looks like {_OTHER_KINDS[kind][0]}; {_OTHER_KINDS[kind][1]}")
        return out
    if kind == "unknown":
        out["notes"].append(f"unrecognised key layout; first keys: {list(names)[:8]}")
        return out
    heads_unknown = None
    try:
        try:
            ckpt = _build(raw, info, entry=entry, num_heads=num_heads, dtype=None, meta=True)
        except HeadsUnknownError as e:  # report everything else; heads stay unknown
            heads_unknown = str(e)
            ckpt = _build(raw, info, entry=entry, num_heads=1, dtype=None, meta=True)
    except ValueError as e:
        out["error"] = str(e)
        try:  # still report what the shapes say
            fields = infer_dit_fields({n: _stored(flat, k) for n, k in
                                       (_from_diffusers(names) if kind == "diffusers" else names).items()})
            out["config"] = {**fields, "patch_size": list(fields["patch_size"]), "num_heads": num_heads}
        except ValueError:
            pass
        return out
    out.update(format=ckpt.format, family=ckpt.family, cache_policy=ckpt.cache_policy,
               config=ckpt.config.to_dict(), config_source=ckpt.config_source, parameters=ckpt.num_parameters,
               source_dtype=ckpt.source_dtype, dtypes=ckpt.source_dtypes, stream_config=ckpt.stream_config.to_dict(),
               metadata=ckpt.metadata, notes=ckpt.notes, warnings=ckpt.warnings)
    if heads_unknown:
        out["config"]["num_heads"] = None
        out["warnings"] = [heads_unknown, *ckpt.warnings]
    return out


def format_inspection(d: Mapping[str, Any]) -> str:
    """Human-readable report of `inspect_checkpoint`'s dict."""
    size = d.get("size_bytes", 0)
    size_s = f"{size / 1e9:.2f} GB" if size >= 1e9 else f"{size / 1e6:.1f} MB"
    lines = [f"file        {d['path']} ({size_s}, {d.get('container')}, {d.get('files', 1)} file(s))",
             f"kind        {d.get('kind')}"]
    if "format" in d:
        lines.append(f"format      {d['format']}")
    if "family" in d:
        lines.append(f"family      {d['family']} (default cache policy {d.get('cache_policy')})")
    if d.get("config"):
        c = d["config"]
        heads = c.get("num_heads")
        hd = f" (head_dim {c['dim'] // heads})" if heads else " (unknown: pass num_heads)"
        source = f"  [{d['config_source']}]" if d.get("config_source") else ""
        lines.append(f"config      dim {c['dim']}, ffn_dim {c['ffn_dim']}, num_heads {heads}{hd}, "
                     f"num_layers {c['num_layers']}, text_dim {c['text_dim']}, in/out {c['in_dim']}/{c['out_dim']}, "
                     f"patch {tuple(c['patch_size'])}{source}")
    if "parameters" in d:
        lines.append(f"parameters  {d['parameters']:,} ({d.get('tensors', '?')} tensors)")
    if d.get("dtypes"):
        total = sum(d["dtypes"].values()) or 1
        lines.append("dtypes      " + ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in d["dtypes"].items()))
    if d.get("entries"):
        lines.append(f"entry       {d.get('entry')} (available: {', '.join(d['entries'])})")
    for k, v in (d.get("metadata") or {}).items():
        lines.append(f"metadata    {k}: {v[:120]}")
    for n in d.get("notes", []):
        lines.append(f"note        {n}")
    for w in d.get("warnings", []):
        lines.append(f"warning     {w}")
    if d.get("error"):
        lines.append(f"error       {d['error']}")
    return "\n".join(lines)
