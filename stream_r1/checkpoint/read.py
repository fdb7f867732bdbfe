"""Open a weights file and read its tensors: safetensors (single, or shards with their index) lazily, torch files
through `weights_only=True` and mmap; pick the generator's entry of a trainer's dict-of-dicts; read tensors one at a
time, dequantising fp8 (Comfy-Org's scaled and `comfy_quant` forms, spec-models §6.2) as W = fp8 * scale in fp32."""
from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..weights_io import read_safetensors_header, regular_file
from ..weights_io import torch_load as _torch_load

ENTRY_ORDER: tuple[str, ...] = ("generator_ema", "generator", "model", "state_dict")
"""Entries of a dict-of-dicts checkpoint, in the order they are preferred ("critic" is never chosen)."""
LOOSE_KEYS_MAX = 5
"""A dict-of-dicts may carry this many loose top-level tensors and still be read by its entries."""
_SHARD_RE = re.compile(r"^(?P<stem>.+)-(?P<i>\d{5})-of-(?P<n>\d{5})\.safetensors$")
FP8_DTYPES: tuple[torch.dtype, ...] = tuple(
    getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz")
    if hasattr(torch, n))
_QUANT_SIDE_SUFFIXES = (".scale_weight", ".weight_scale", ".scale_input", ".input_scale", ".comfy_quant",
                        ".weight_scale_2")
_QUANT_ROOT_KEYS = ("scaled_fp8",)


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
            from safetensors import safe_open        # here, not at import: loading the node pack reads no file
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


# ---- the entry of a trainer's checkpoint ---------------------------------------------------------------------
def select_entry(raw: Any, entry: str | None, path: Path) -> tuple[Mapping, str | None, list[str]]:
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
        return tensors_only(raw[entry]), entry, nested
    if nested and len(tensors) <= LOOSE_KEYS_MAX:
        for name in ENTRY_ORDER:
            if name in nested:
                return tensors_only(raw[name]), name, nested
        others = [n for n in nested if n != "critic"]
        if len(others) == 1:
            return tensors_only(raw[others[0]]), others[0], nested
        hint = " ('critic' is the DMD fake score, not a generator; pass entry='critic' to load it anyway)" \
            if nested == ["critic"] else ""
        raise ValueError(f"{path} has entries {nested} but none of {list(ENTRY_ORDER)}; pass entry=NAME{hint}")
    if not tensors:
        raise ValueError(f"{path} holds no tensors (top-level keys: {list(raw)[:8]})")
    return tensors, None, nested


def tensors_only(d: Mapping) -> dict[str, torch.Tensor]:
    return {k: v for k, v in d.items() if isinstance(v, torch.Tensor)}


def stored_meta(flat: Mapping, key: str) -> torch.Tensor:
    """Meta view of a stored tensor (reads nothing for safetensors)."""
    if isinstance(flat, SafetensorsFiles):
        return flat.meta(key)
    t = flat[key]
    return torch.empty(t.shape, dtype=t.dtype, device="meta")


# ---- dtypes and fp8 ---------------------------------------------------------------------------------------------
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
